//! Decisions on the node: the policy set synced from the server (the sync stream's `policies`
//! line), decided locally for the workloads this agent serves, with the facts of its own entries.
//! The same engine and the same answers as the server's `POST /v1/authorize`.

use std::sync::{Arc, RwLock};

use vouch_api::policy::{AccessRequest, AuthorizeResponse, PolicyText};
use vouch_core::grant::Resource;
use vouch_policy::{Policies, PolicyDoc, Workloads};

/// The policy set as the agent holds it.
#[derive(Debug, Default)]
enum Held {
    /// None received yet (just started, or the server predates policies).
    #[default]
    NotSynced,
    /// Compiled and in use.
    Ready(Arc<Policies>),
    /// The last set received did not load: no decision is made without it (fail closed).
    Broken(String),
}

/// The agent's policy set.
#[derive(Debug, Default)]
pub struct LocalPolicies {
    held: RwLock<Held>,
}

impl LocalPolicies {
    /// Replaces the set with `texts` (a sync line). A set that does not load is held as broken:
    /// decisions are refused until a good set arrives, since a `forbid` left out would allow.
    pub fn apply(&self, texts: &[PolicyText]) {
        let compiled = texts
            .iter()
            .map(|p| PolicyDoc::parse(&p.id, &p.text))
            .collect::<Result<Vec<_>, _>>()
            .and_then(Policies::new);
        let held = match compiled {
            Ok(p) => {
                tracing::info!(policies = p.docs().len(), "policy set synced");
                Held::Ready(Arc::new(p))
            }
            Err(e) => {
                tracing::warn!(error = %e, "the synced policy set does not load; local decisions are refused until it does");
                Held::Broken(e.to_string())
            }
        };
        *self.held.write().unwrap_or_else(|p| p.into_inner()) = held;
    }

    /// Whether a set is held and usable.
    pub fn ready(&self) -> bool {
        matches!(*self.held.read().unwrap_or_else(|p| p.into_inner()), Held::Ready(_))
    }

    fn current(&self) -> Result<Arc<Policies>, String> {
        match &*self.held.read().unwrap_or_else(|p| p.into_inner()) {
            Held::Ready(p) => Ok(p.clone()),
            Held::NotSynced => Err("this agent has received no policy set from the server yet (not synced, or the server predates policies): nothing is permitted".into()),
            Held::Broken(e) => Err(format!("the policy set synced from the server does not load ({e}): nothing is permitted until a corrected set arrives")),
        }
    }
}

/// Decides `req` on the node, for a workload this agent serves. `Err` says why no decision is
/// made (a request the agent may not answer, or no usable policy set).
pub fn authorize(state: &crate::state::AgentState, req: &AccessRequest) -> Result<AuthorizeResponse, String> {
    req.check()?;
    let entries = state.registry.entries();
    if !entries.iter().any(|e| e.spiffe_id == req.principal) {
        return Err(format!(
            "`{}` is not a workload this agent serves: ask the server (`POST /v1/authorize`) or the agent of its node",
            req.principal
        ));
    }
    let policies = state.policies.current()?;
    let about = |e: &&vouch_core::Entry| {
        e.spiffe_id == req.principal || matches!(&req.resource, Resource::Service(s) if *s == e.spiffe_id)
    };
    let workloads = Workloads::from_entries(entries.iter().filter(about)).map_err(|e| e.to_string())?;
    let d = policies.decide(req, &workloads);
    tracing::info!(target: "vouch::audit", event = "authorize.local", principal = %req.principal, action = %req.action, resource = %req.resource, allow = d.allow, reasons = ?d.reasons);
    Ok(AuthorizeResponse {
        allow: d.allow,
        explanation: d.explanation(),
        reasons: d.reasons,
        errors: d.errors,
    })
}
