//! `vouch agent explain --pid N`: why a process does or does not get an identity. Asked on the
//! agent's admin socket (see [`crate::admin`]) as `{"explain": <pid>}`.

pub use vouch_api::explain::{EntryVerdict, Explanation};

use crate::attest::{attest_full, ExeHash, PeerProcess};
use crate::state::AgentState;

/// Attests `pid` as the Workload API would and explains each entry.
pub async fn explain(state: &AgentState, pid: i32) -> Explanation {
    let now = crate::clock::now();
    let result = match PeerProcess::of_pid(pid, state.unix.proc_root()) {
        Ok(p) => attest_full(&p, &state.unix, &state.runtime, ExeHash::Compute).await,
        Err(e) => Err(e),
    };
    let (error, selectors, container) = match &result {
        Ok(a) => (
            None,
            a.selectors.clone(),
            a.container.as_ref().map(|c| {
                format!(
                    "{}:{}{}",
                    c.runtime,
                    c.namespace.as_deref().map(|n| format!("{n}/")).unwrap_or_default(),
                    c.id
                )
            }),
        ),
        Err(e) => (Some(e.to_string()), Default::default(), None),
    };
    let now_s = vouch_core::ttl::unix_seconds(now);
    let entries = state
        .registry
        .entries()
        .iter()
        .map(|e| EntryVerdict {
            id: e.id.to_string(),
            spiffe_id: e.spiffe_id.to_string(),
            outcome: if error.is_some() {
                "not evaluated: attestation failed".into()
            } else {
                e.explain(&selectors, now_s).to_string()
            },
        })
        .collect();
    Explanation {
        pid,
        agent_id: state.link.agent_id().to_string(),
        connected: state.link.connected(),
        error,
        selectors: selectors.iter().map(ToString::to_string).collect(),
        container,
        entries,
    }
}
