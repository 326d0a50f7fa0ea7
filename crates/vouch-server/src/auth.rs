//! Who is calling, and whether they may. Two doors lead to the admin API:
//!
//! - the local Unix socket (mode 0600): the peer's uid, read from the kernel (SO_PEERCRED), must be
//!   root, the server's own uid, or listed in `server.admin_uids`;
//! - TCP with mTLS: the client's X509-SVID must chain to the bundle, and its SPIFFE ID must belong to
//!   an entry marked `admin = true`.
//!
//! An admin entry may limit its SVID to namespaces (`admin_namespaces`): such an admin passes
//! [`require_namespace_admin`] (entries and policies, each handler checks the namespace of what it
//! touches against the [`AdminScope`] set here) and is refused by [`require_admin`] (everything
//! else: authority, agents, groups, federation, secrets, audit). The local socket is always an
//! admin of every namespace.
//!
//! Which routes need which caller is decided where the routes are declared: the server's router puts
//! [`require_admin`] on the admin routes and [`require_agent`] on the agent routes; probes, the
//! bundle, the OpenAPI document and node attestation need no caller (nothing secret, or the evidence
//! in the body is the credential). Refusals say which condition failed.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use vouch_core::{Namespace, NamespaceScope, SpiffeId};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a request, set by the listener that accepted the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A local process on the admin socket, with its uid as the kernel reports it.
    Local {
        /// Peer uid.
        uid: u32,
    },
    /// A TLS client that presented a valid X509-SVID.
    Svid {
        /// Its SPIFFE ID.
        id: SpiffeId,
        /// Its serial number (lowercase hex): agents are known by their current SVID, not by their
        /// SPIFFE ID alone.
        serial: String,
    },
    /// A TLS client without a certificate.
    Anonymous,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Local { uid } => write!(f, "local:uid:{uid}"),
            Caller::Svid { id, .. } => write!(f, "{id}"),
            Caller::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// The namespaces the admin of a request may manage, put into the request by
/// [`require_namespace_admin`] for the handlers of entries and policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminScope {
    /// Who is calling (for messages).
    pub caller: String,
    /// What it may manage.
    pub scope: NamespaceScope,
}

impl AdminScope {
    /// Ok if `ns` is inside the scope; else 403 naming the namespaces the caller may use. `what`
    /// says what was asked for (`entry \`x\``), without naming the namespace it is in.
    pub fn check(&self, ns: &Namespace, what: &str) -> Result<(), ApiError> {
        if self.scope.allows(ns) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{what} is in namespace `{ns}`, which admin `{}` may not manage; it may manage entries and policies of namespace {}",
            self.caller, self.scope
        )))
    }

    /// [`AdminScope::check`] for a thing whose namespace the caller is not told (an existing
    /// entry or policy of another namespace).
    pub fn check_hidden(&self, ns: &Namespace, what: &str) -> Result<(), ApiError> {
        if self.scope.allows(ns) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "{what} is not in a namespace admin `{}` may manage; it may manage entries and policies of namespace {}",
            self.caller, self.scope
        )))
    }
}

/// Middleware of the admin routes outside namespaces: lets a request through only if its caller
/// is an admin of every namespace.
pub async fn require_admin(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let caller = caller_of(&req);
    let decision = check(&state, &caller).await;
    // What an admin request records takes the admin lane of the audit queue, which no flood of
    // refusals or issuance can fill.
    decide(&state, caller, decision, req, next, true).await
}

/// Middleware of the entry and policy routes: lets an admin through, limited or not, with its
/// [`AdminScope`] in the request's extensions.
pub async fn require_namespace_admin(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = caller_of(&req);
    let decision = scope(&state, &caller).await.map(|scope| {
        req.extensions_mut().insert(AdminScope { caller: caller.to_string(), scope });
    });
    decide(&state, caller, decision, req, next, true).await
}

/// Middleware of the agent routes (renew, sync, sign, JWT): lets a request through only if its caller
/// is an attested agent that is not banned.
pub async fn require_agent(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let caller = caller_of(&req);
    let decision = check_agent(&state, &caller).await;
    decide(&state, caller, decision, req, next, false).await
}

fn caller_of(req: &Request) -> Caller {
    req.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anonymous)
}

async fn decide(
    state: &AppState,
    caller: Caller,
    decision: Result<(), ApiError>,
    req: Request,
    next: Next,
    admin: bool,
) -> Response {
    match decision {
        Ok(()) if admin => crate::audit::as_admin(next.run(req)).await,
        Ok(()) => next.run(req).await,
        Err(e) => {
            state.metrics.auth_denied.fetch_add(1, Ordering::Relaxed);
            // Counted always, logged at most once per interval per kind of caller: anyone can
            // send requests without a certificate, and a line for each is a flood of its own.
            let kind = match caller {
                Caller::Local { .. } => "auth: local",
                Caller::Svid { .. } => "auth: svid",
                Caller::Anonymous => "auth: anonymous",
            };
            crate::agent_api::log_refusal(state, kind, |count| {
                tracing::warn!(target: "vouch::audit", event = "admin.denied", %caller, path = %req.uri().path(), reason = %e.message, count);
            });
            e.into_response()
        }
    }
}

/// Whether `caller` is an admin of every namespace (403 naming its namespaces if it is limited).
pub(crate) async fn check(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    match scope(state, caller).await? {
        NamespaceScope::All => Ok(()),
        limited => Err(ApiError::forbidden(format!(
            "admin `{caller}` is limited to namespace {limited}: this route needs an admin of all namespaces; it may manage entries and policies of namespace {limited} only"
        ))),
    }
}

/// What `caller` may administer, or why it is no admin at all.
pub(crate) async fn scope(state: &AppState, caller: &Caller) -> Result<NamespaceScope, ApiError> {
    match caller {
        Caller::Local { uid } => {
            if *uid == 0 || *uid == state.own_uid || state.config.admin_uids.contains(uid) {
                Ok(NamespaceScope::All)
            } else {
                Err(ApiError::forbidden(format!(
                    "uid {uid} may not use the admin socket: run as root or as the server's user (uid {}), or add {uid} to server.admin_uids",
                    state.own_uid
                )))
            }
        }
        Caller::Svid { id, .. } => {
            // Reserved IDs are never admins, even if an entry written before they were reserved
            // says so: an agent's or the server's certificate must not open the admin API.
            let scope = match crate::reserved::namespace_of(id) {
                None => state.admin_scope(id).await?,
                Some(_) => None,
            };
            if let Some(scope) = scope {
                Ok(scope)
            } else {
                Err(ApiError::forbidden(format!(
                    "`{id}` is not an admin: no entry for this SPIFFE ID has admin = true"
                )))
            }
        }
        Caller::Anonymous => Err(ApiError::unauthenticated(
            "a client certificate is required: present the X509-SVID of an entry with admin = true",
        )),
    }
}

/// An agent call: the caller's SVID must be the current SVID of an attested agent that is not
/// banned. An evicted agent has no record, so its still-valid SVID no longer works and it must attest
/// again; a copy of an older SVID of the agent (before a renewal or a new attestation) is refused.
async fn check_agent(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    let Caller::Svid { id, serial } = caller else {
        return Err(ApiError::unauthenticated(
            "agent calls need the agent's X509-SVID as client certificate",
        ));
    };
    state.store.authenticate_agent(id, serial).await?;
    Ok(())
}

/// Middleware: counts answers by status class.
pub async fn count_statuses(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if status.is_client_error() {
        state.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
    } else if status.is_server_error() {
        state.metrics.server_errors.fetch_add(1, Ordering::Relaxed);
    }
    resp
}
