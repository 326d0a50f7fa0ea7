//! Grants: the policy admin API under `/v1/policies` and the decision API `POST /v1/authorize`.
//!
//! Policies are Cedar texts, one policy per document, validated against `vouch_policy::SCHEMA`
//! before anything is stored; each write is a new version (the store keeps every one), audited.
//!
//! Who may ask `POST /v1/authorize`: an admin, about any workload; an attested agent, about the
//! workloads it serves (an entry with the principal's SPIFFE ID is parented to the agent or to a
//! node group it belongs to), so a node can ask about its own workloads and learn nothing of the
//! grants of others. Every decision is audited (`authorize`), with the policies that decided.
//!
//! The compiled policy set is cached; it is read again after a write through this server, after a
//! change notice from another replica, and at the latest [`POLICY_CACHE_TTL`] after it was read
//! (the fallback for a missed notice). A stored policy that no longer loads makes decisions fail
//! (503) rather than be decided without it: dropping a `forbid` would allow what it forbids.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use vouch_api::paths;
use vouch_api::policy::{
    AccessRequest, AuthorizeResponse, PolicyHistory, PolicyInfo, PolicyList, PolicyPut, PolicyTest,
    ValidationReport,
};
use vouch_core::grant::Resource;
use vouch_core::{Entry, SpiffeId};
use vouch_policy::{Decision, Policies, PolicyDoc, PolicyError, Workloads};
use vouch_store::{EntryFilter, PolicyVersion, StoreError};

use crate::auth::{AdminScope, Caller};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::{AppState, Event};

type AppResult<T> = Result<T, ApiError>;

/// Most policies (current versions) one server keeps: each is evaluated by the requests its scope
/// may concern, and the set is sent to every agent.
pub const MAX_POLICIES: usize = 10_000;

/// Largest body of a policy request: a policy is at most `vouch_policy::MAX_POLICY_BYTES`; a test
/// may carry a few.
pub const MAX_POLICY_BODY: usize = 256 * 1024;

/// How long a compiled policy set is used without looking at the store (a missed change notice
/// of another replica is seen within this).
pub const POLICY_CACHE_TTL: Duration = Duration::from_secs(5);

/// The compiled policy set, cached.
#[derive(Default)]
pub struct PolicyCache {
    current: RwLock<Option<(SystemTime, Arc<Policies>)>>,
}

impl std::fmt::Debug for PolicyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyCache").finish_non_exhaustive()
    }
}

impl PolicyCache {
    /// Forgets the compiled set: the next decision reads the store.
    pub fn invalidate(&self) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The current policy set.
    pub async fn get(&self, state: &AppState) -> AppResult<Arc<Policies>> {
        let now = state.now();
        if let Some((at, p)) = &*self.current.read().unwrap_or_else(|p| p.into_inner()) {
            if now.duration_since(*at).unwrap_or(Duration::MAX) < POLICY_CACHE_TTL {
                return Ok(p.clone());
            }
        }
        let policies = Arc::new(load(&state.store.list_policies().await?)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some((now, policies.clone()));
        Ok(policies)
    }
}

/// Compiles stored policies; one that no longer loads is an error naming it.
pub(crate) fn load(stored: &[PolicyVersion]) -> AppResult<Policies> {
    let mut docs = Vec::with_capacity(stored.len());
    for p in stored {
        let Some(text) = &p.text else { continue };
        let doc = effective_doc(p, text).map_err(|e| {
            ApiError::unavailable(format!(
                "stored policy `{}` (version {}) no longer loads, so no decision is made without it: {e}; \
                 write a corrected version (`vouch policy put {}`) or delete it",
                p.id, p.version, p.id
            ))
        })?;
        docs.push(doc);
    }
    Ok(Policies::new(docs)?)
}

/// The policy that is evaluated for a stored version: its text, confined to its namespace
/// ([`vouch_policy::confine`]).
fn effective_doc(p: &PolicyVersion, text: &str) -> Result<PolicyDoc, PolicyError> {
    PolicyDoc::parse(&p.id, &effective_text(p, text)?)
}

/// The text that is evaluated for a stored version (what agents are sent, too).
pub(crate) fn effective_text(p: &PolicyVersion, text: &str) -> Result<String, PolicyError> {
    vouch_policy::confine(&p.id, text, &p.namespace)
}

/// Most principals [`PrincipalCache`] holds; when full it starts again empty (a bound on memory
/// that a caller naming many SPIFFE IDs cannot exceed).
pub const MAX_CACHED_PRINCIPALS: usize = 65_536;

/// What the policies know about principals, by SPIFFE ID, built from their entries: a workload's
/// secret reads and credentials requests are decided without reading its entries from the store
/// each time. Emptied on every entry change (this server's, or another replica's notice); an
/// answer older than [`POLICY_CACHE_TTL`] is read again, the fallback for a missed notice.
#[derive(Default)]
pub struct PrincipalCache {
    inner: RwLock<PrincipalCacheInner>,
}

#[derive(Default)]
struct PrincipalCacheInner {
    /// Counts invalidations: an answer read from the store is kept only if no change came in
    /// while it was read (else it could hold the entries from before the change).
    generation: u64,
    by_id: HashMap<SpiffeId, (SystemTime, Arc<Workloads>)>,
}

impl std::fmt::Debug for PrincipalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrincipalCache").finish_non_exhaustive()
    }
}

impl PrincipalCache {
    /// Forgets every principal: an entry changed.
    pub fn invalidate(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.generation += 1;
        inner.by_id.clear();
    }

    /// The workload `id` as the policies see it (unregistered if no entry names it).
    async fn get(&self, state: &AppState, id: &SpiffeId) -> AppResult<Arc<Workloads>> {
        let now = state.now();
        let generation = {
            let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
            if let Some((at, w)) = inner.by_id.get(id) {
                if now.duration_since(*at).unwrap_or(Duration::MAX) < POLICY_CACHE_TTL {
                    return Ok(w.clone());
                }
            }
            inner.generation
        };
        let filter = EntryFilter { spiffe_id: Some(id.clone()), ..Default::default() };
        let workloads = Arc::new(Workloads::from_entries(&state.store.list_entries(&filter).await?)?);
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if inner.generation == generation {
            if inner.by_id.len() >= MAX_CACHED_PRINCIPALS {
                inner.by_id.clear();
            }
            inner.by_id.insert(id.clone(), (now, workloads.clone()));
        }
        Ok(workloads)
    }
}

/// The policy routes of namespaces (the caller must be an admin, perhaps limited to namespaces;
/// `crate::routes` attaches the check, each handler checks the namespaces it touches).
pub(crate) fn namespace_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::POLICIES, get(list_policies))
        .route(paths::POLICIES_VALIDATE, post(validate_policy))
        .route(paths::POLICY, put(put_policy).get(show_policy).delete(delete_policy))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_POLICY_BODY))
}

/// The policy admin routes of all namespaces: a what-if test decides against every stored policy,
/// so it is for an admin of all namespaces (`crate::routes` attaches the check).
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::POLICIES_TEST, post(test_policy))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_POLICY_BODY))
}

/// The decision route (an admin, or an agent for its workloads: [`require_admin_or_agent`]).
pub(crate) fn authorize_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::AUTHORIZE, post(authorize))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_POLICY_BODY))
}

/// Who asked for a decision.
#[derive(Debug, Clone)]
enum Asker {
    Admin,
    Agent(vouch_core::SpiffeId),
}

/// Middleware of `POST /v1/authorize`: an admin, or else an attested agent (whose questions are
/// limited to its own workloads by the handler).
pub async fn require_admin_or_agent(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let caller = req.extensions().get::<Caller>().cloned().unwrap_or(Caller::Anonymous);
    let asker = match crate::auth::check(&state, &caller).await {
        Ok(()) => Ok(Asker::Admin),
        Err(admin_refusal) => match &caller {
            // Not an admin: an attested agent's current SVID, or the admin refusal.
            Caller::Svid { id, serial } => match state.store.authenticate_agent(id, serial).await {
                Ok(_) => Ok(Asker::Agent(id.clone())),
                Err(StoreError::AgentNotFound(_)) => Err(admin_refusal),
                Err(e) => Err(ApiError::from(e)),
            },
            _ => Err(admin_refusal),
        },
    };
    match asker {
        Ok(Asker::Admin) => {
            req.extensions_mut().insert(Asker::Admin);
            crate::audit::as_admin(next.run(req)).await
        }
        Ok(asker) => {
            req.extensions_mut().insert(asker);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn info(p: &PolicyVersion) -> PolicyInfo {
    let effect =
        p.text.as_deref().and_then(|t| PolicyDoc::parse(&p.id, t).ok()).map(|d| d.effect().to_owned());
    PolicyInfo {
        id: p.id.clone(),
        version: p.version,
        text: p.text.clone(),
        effect,
        created_at: p.created_at,
        author: p.author.clone(),
        namespace: p.namespace.clone(),
    }
}

fn decision_answer(d: &Decision) -> AuthorizeResponse {
    AuthorizeResponse {
        allow: d.allow,
        reasons: d.reasons.clone(),
        explanation: d.explanation(),
        errors: d.errors.clone(),
    }
}

async fn list_policies(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<AdminScope>,
) -> AppResult<Json<PolicyList>> {
    // An admin limited to namespaces sees the policies of its namespaces only.
    let policies = state
        .store
        .list_policies()
        .await?
        .iter()
        .filter(|p| scope.scope.allows(&p.namespace))
        .map(info)
        .collect();
    Ok(Json(PolicyList { policies }))
}

fn policy_label(id: &str) -> String {
    format!("policy `{id}`")
}

async fn show_policy(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<AdminScope>,
    Path(id): Path<String>,
) -> AppResult<Json<PolicyHistory>> {
    let history = state.store.policy_history(&id).await?;
    let Some(last) = history.last() else { return Err(StoreError::PolicyNotFound(id).into()) };
    scope.check_hidden(&last.namespace, &policy_label(&id))?;
    let versions: Vec<PolicyInfo> = history.iter().map(info).collect();
    let current = versions.last().filter(|v| v.text.is_some()).cloned();
    Ok(Json(PolicyHistory { id, current, versions }))
}

/// Whether `scope` may write a policy in `ns`: a policy of `default` decides for every namespace,
/// so only an admin of all namespaces writes one.
fn check_policy_namespace(scope: &AdminScope, ns: &vouch_core::Namespace, id: &str) -> AppResult<()> {
    scope.check(ns, &policy_label(id))?;
    if ns.is_default() && !scope.scope.is_all() {
        return Err(ApiError::forbidden(format!(
            "policy `{id}` is in namespace `default`, whose policies decide for every namespace: only an admin of all namespaces may change them; admin `{}` may write policies of namespace {} (`--namespace`)",
            scope.caller,
            NonDefault(&scope.scope)
        )));
    }
    Ok(())
}

/// A scope's namespaces other than `default`, for messages.
struct NonDefault<'a>(&'a vouch_core::NamespaceScope);

impl std::fmt::Display for NonDefault<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            vouch_core::NamespaceScope::All => f.write_str("all namespaces"),
            vouch_core::NamespaceScope::Only(set) => {
                let names: Vec<String> =
                    set.iter().filter(|n| !n.is_default()).map(|n| format!("`{n}`")).collect();
                if names.is_empty() {
                    f.write_str("none")
                } else {
                    f.write_str(&names.join(", "))
                }
            }
        }
    }
}

async fn put_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(scope): Extension<AdminScope>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PolicyPut>,
) -> AppResult<Json<PolicyInfo>> {
    let history = state.store.policy_history(&id).await?;
    // The policy's namespace now (a deleted one's too: its history is its namespace's).
    let previous = history.last().map(|p| p.namespace.clone());
    if let Some(ns) = &previous {
        scope.check_hidden(ns, &policy_label(&id))?;
    }
    let namespace = body.namespace.or(previous.clone()).unwrap_or_default();
    // A move needs the right to write in both namespaces.
    if let Some(ns) = previous.as_ref().filter(|ns| **ns != namespace) {
        check_policy_namespace(&scope, ns, &id)?;
    }
    check_policy_namespace(&scope, &namespace, &id)?;
    let doc = PolicyDoc::parse(&id, &body.text)?;
    let current = state.store.list_policies().await?;
    if current.len() >= MAX_POLICIES && !current.iter().any(|p| p.id == id) {
        return Err(ApiError::conflict(format!(
            "there are {MAX_POLICIES} policies already, the most one server keeps: delete some, or merge grants into fewer policies"
        )));
    }
    // Checked as it will be evaluated: the confined text must load too.
    vouch_policy::confine(&id, doc.text(), &namespace).and_then(|t| PolicyDoc::parse(&id, &t))?;
    let written =
        state.store.put_policy(&id, &namespace, doc.text(), &caller.to_string(), state.now_secs()).await?;
    changed(&state);
    tracing::info!(target: "vouch::audit", event = "policy.put", %caller, policy = %id, namespace = %namespace, version = written.version, effect = doc.effect());
    Ok(Json(info(&written)))
}

async fn delete_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(scope): Extension<AdminScope>,
    Path(id): Path<String>,
) -> AppResult<Json<PolicyInfo>> {
    if let Some(last) = state.store.policy_history(&id).await?.last() {
        scope.check_hidden(&last.namespace, &policy_label(&id))?;
        check_policy_namespace(&scope, &last.namespace, &id)?;
    }
    let written = state.store.delete_policy(&id, &caller.to_string(), state.now_secs()).await?;
    changed(&state);
    tracing::info!(target: "vouch::audit", event = "policy.delete", %caller, policy = %id, namespace = %written.namespace, version = written.version);
    Ok(Json(info(&written)))
}

/// After a policy write: this server's cache is read again, and synced agents get the new set.
fn changed(state: &AppState) {
    state.policies.invalidate();
    state.publish(Event::PoliciesChanged);
}

async fn validate_policy(ApiJson(body): ApiJson<PolicyPut>) -> Json<ValidationReport> {
    Json(match PolicyDoc::parse("candidate", &body.text) {
        Ok(_) => ValidationReport { valid: true, errors: Vec::new() },
        Err(PolicyError::Invalid { errors, .. }) => ValidationReport { valid: false, errors },
        Err(e) => ValidationReport { valid: false, errors: vec![e.to_string()] },
    })
}

/// The workloads a request is about (its principal, and a service resource), from their entries.
/// Also returns the principal's entries.
async fn workloads_of(state: &AppState, req: &AccessRequest) -> AppResult<(Workloads, Vec<Entry>)> {
    let by_id = |id: &vouch_core::SpiffeId| EntryFilter { spiffe_id: Some(id.clone()), ..Default::default() };
    let principal = state.store.list_entries(&by_id(&req.principal)).await?;
    let mut service = Vec::new();
    if let Resource::Service(id) = &req.resource {
        if *id != req.principal {
            service = state.store.list_entries(&by_id(id)).await?;
        }
    }
    Ok((Workloads::from_entries(principal.iter().chain(&service))?, principal))
}

async fn test_policy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<PolicyTest>,
) -> AppResult<Json<AuthorizeResponse>> {
    body.request.check().map_err(ApiError::bad_request)?;
    let mut stored = state.store.list_policies().await?;
    stored.retain(|p| !body.without.contains(&p.id) && !body.with.iter().any(|w| w.id == p.id));
    let mut policies = load(&stored)?.docs().to_vec();
    // A policy given here is tested as a policy of `default` (unconfined).
    for w in &body.with {
        policies.push(PolicyDoc::parse(&w.id, &w.text)?);
    }
    let policies = Policies::new(policies)?;
    let (workloads, _) = workloads_of(&state, &body.request).await?;
    let d = policies.decide(&body.request, &workloads);
    tracing::info!(target: "vouch::audit", event = "policy.test", %caller, principal = %body.request.principal, action = %body.request.action, resource = %body.request.resource, allow = d.allow, reasons = ?d.reasons);
    Ok(Json(decision_answer(&d)))
}

async fn authorize(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(asker): Extension<Asker>,
    ApiJson(req): ApiJson<AccessRequest>,
) -> AppResult<Json<AuthorizeResponse>> {
    req.check().map_err(ApiError::bad_request)?;
    let (workloads, entries) = workloads_of(&state, &req).await?;
    if let Asker::Agent(agent) = &asker {
        let served = crate::groups::Served::load(&state, agent).await?;
        if !entries.iter().any(|e| served.serves(&e.parent_id)) {
            return Err(ApiError::forbidden(format!(
                "agent `{agent}` may ask only about the workloads it serves, and no entry for `{}` is parented to it or to a node group it belongs to",
                req.principal
            )));
        }
    }
    let d = decide_for(&state, &req, &workloads).await?;
    tracing::info!(target: "vouch::audit", event = "authorize", %caller, principal = %req.principal, action = %req.action, resource = %req.resource, allow = d.allow, reasons = ?d.reasons, errors = d.errors.len());
    Ok(Json(decision_answer(&d)))
}

/// Decides `req` with the current policies about the workloads named in it (the server's other
/// decisions, such as a workload's secret read, ask here).
pub(crate) async fn decide(state: &AppState, req: &AccessRequest) -> AppResult<Decision> {
    let workloads = match &req.resource {
        // A service resource is a workload too: both are read (rare enough not to cache).
        Resource::Service(_) => Arc::new(workloads_of(state, req).await?.0),
        Resource::Secret(_) | Resource::DbRole(_) => state.principals.get(state, &req.principal).await?,
    };
    decide_for(state, req, &workloads).await
}

async fn decide_for(state: &AppState, req: &AccessRequest, workloads: &Workloads) -> AppResult<Decision> {
    Ok(state.policies.get(state).await?.decide(req, workloads))
}
