//! The sync loop: one long-lived stream from the server carrying the entries this agent may serve,
//! first as a snapshot, then change by change. When the stream's replica dies (reset, killed, or
//! silent past [`SYNC_IDLE_LIMIT`]) the stream reconnects to another replica at once, and with
//! jittered exponential backoff while none answers; while disconnected the agent keeps serving
//! what it holds. When an admin bans the agent, the server ends the stream saying so, the agent
//! drops what it serves and the loop stops (retrying cannot help, and an operator must act); when
//! it evicts the agent, a PSAT or x509pop agent attests again by itself, and a join-token agent
//! says that it needs a new token and retries only slowly.

use std::sync::Arc;
use std::time::Duration;

use vouch_api::agent::{CloseReason, SyncLine};
use vouch_api::ErrorCode;
use vouch_ca::Bundle;
use vouch_client::ClientError;
use vouch_core::TrustDomain;

use crate::registry::FederatedBundles;
use crate::server_link::Endpoint;
use crate::state::AgentState;
use crate::AgentError;

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Wait between attempts of an evicted agent: reconnecting cannot work until it attests again, so
/// it only checks now and then (an admin may have undone a mistaken eviction by a new attestation).
pub const EVICTED_BACKOFF: Duration = Duration::from_secs(300);

/// Longest silence on the sync stream (no byte at all, so a long snapshot line still arriving is
/// not cut) before its replica is taken as gone: three of the server's keep-alive lines
/// (`vouch_server::agent_api::SYNC_PING`, 15 s). Without it a replica that stops
/// answering without closing the connection (a host that froze or dropped off the network) would
/// hold the stream until TCP gives up, many minutes later.
pub const SYNC_IDLE_LIMIT: Duration = Duration::from_secs(45);

/// How the sync stream ended, and what the loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Banned by an admin: stop, with what the operator must do.
    Banned(String),
    /// Evicted by an admin: the agent must attest again; retry rarely.
    Evicted(String),
}

impl Removal {
    /// The removal an ended stream or a refused reconnect means, if any.
    pub fn of(result: &Result<Option<Removal>, AgentError>) -> Option<Removal> {
        match result {
            Ok(removal) => removal.clone(),
            Err(AgentError::Server(ClientError::Api { code, message, .. })) => {
                match ErrorCode::from_wire(code) {
                    Some(ErrorCode::AgentBanned) => Some(Self::Banned(message.clone())),
                    Some(ErrorCode::AgentNotAttested) => Some(Self::Evicted(message.clone())),
                    _ => None,
                }
            }
            Err(_) => None,
        }
    }
}

/// The federated bundles of a sync line. One the agent cannot read is left out and logged (its
/// trust domain's workloads get no bundle for it, as if it were not federated) rather than failing
/// the stream: the server checked it, and dropping the stream would not make it readable.
fn federated(lines: &vouch_api::agent::FederatedBundles) -> FederatedBundles {
    let mut out = FederatedBundles::new();
    for (name, jwks) in lines {
        match TrustDomain::new(name).map_err(|e| e.to_string()).and_then(|td| {
            Bundle::from_jwks(td.clone(), &jwks.to_string()).map(|b| (td, b)).map_err(|e| e.to_string())
        }) {
            Ok((td, bundle)) => {
                out.insert(td, bundle);
            }
            Err(e) => {
                tracing::warn!(trust_domain = %name.chars().take(255).collect::<String>(), error = %e, "sync: a federated bundle is unreadable; left out")
            }
        }
    }
    out
}

/// Applies one line of the stream. A bundle the agent cannot read is an error: the stream is dropped
/// and started over from a snapshot, rather than the agent going on with a bundle it did not get.
pub fn apply_line(state: &AgentState, line: SyncLine<'_>) -> Result<(), AgentError> {
    let bundle = |v: &serde_json::Value| {
        Bundle::from_jwks(state.config.trust_domain.clone(), &v.to_string())
            .map_err(|e| AgentError::Protocol(format!("sync: the server's bundle is unreadable: {e}")))
    };
    match line {
        SyncLine::Snapshot { entries, bundle: b, federated_bundles } => {
            state.apply_snapshot(entries.into_owned(), Some((bundle(&b)?, federated(&federated_bundles))))
        }
        SyncLine::Upsert { entry } => state.apply_upsert(entry.into_owned()),
        SyncLine::Delete { id } => state.apply_delete(&id),
        SyncLine::Bundle { bundle: b, federated_bundles } => {
            state.apply_bundle(bundle(&b)?, federated(&federated_bundles))
        }
        SyncLine::Policies { policies } => state.policies.apply(&policies),
        SyncLine::Ping => {}
        // The stream's last line; `sync_once` acts on it before it gets here.
        SyncLine::Closed { reason, message } => {
            return Err(AgentError::Protocol(format!(
                "sync: the server closed the stream ({reason:?}): {message}"
            )))
        }
    }
    Ok(())
}

/// Follows the stream on a live replica until it ends or fails: the replica it was on (None when
/// none accepted it), and `Some` removal when the server ended it because the agent was removed.
pub async fn sync_once(state: &AgentState) -> (Option<Endpoint>, Result<Option<Removal>, AgentError>) {
    let (server, lines) = match state.link.open_sync().await {
        Ok(opened) => opened,
        Err(e) => return (None, Err(e)),
    };
    let mut lines = lines.with_idle_limit(SYNC_IDLE_LIMIT);
    let result = follow(state, &server, &mut lines).await;
    let why = match &result {
        Ok(Some(_)) => None,
        Ok(None) => Some("the server ended the stream".to_owned()),
        Err(e) => Some(e.to_string()),
    };
    state.link.stream_ended(&server, why);
    (Some(server), result)
}

async fn follow(
    state: &AgentState,
    server: &Endpoint,
    lines: &mut vouch_client::SyncStream,
) -> Result<Option<Removal>, AgentError> {
    while let Some(line) = lines.next().await {
        let line = line?;
        state.metrics.sync_line(crate::clock::now());
        if let SyncLine::Closed { reason, message } = line {
            return Ok(Some(match reason {
                CloseReason::Banned => Removal::Banned(message),
                CloseReason::Evicted => Removal::Evicted(message),
            }));
        }
        apply_line(state, line)?;
        if !state.link.connected() {
            state.link.set_connected(true);
            let entries = state.registry.entries().len();
            match state.link.take_left() {
                Some((previous, why)) if &previous != server => {
                    tracing::warn!(agent = %state.link.agent_id(), %server, %previous, reason = %why, entries, "synced with another server: the previous one failed")
                }
                _ => {
                    tracing::info!(agent = %state.link.agent_id(), %server, entries, "synced with the server")
                }
            }
        }
    }
    Ok(None)
}

/// Runs the sync loop until `shutdown` fires.
pub async fn run(state: Arc<AgentState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let (server, result) = tokio::select! {
            r = sync_once(&state) => r,
            _ = shutdown.changed() => return,
        };
        let was_connected = state.link.connected();
        state.link.set_connected(false);
        state.metrics.reconnect();
        // A server that refused with 429 said how long to wait: never reconnect sooner.
        let asked = match &result {
            Err(AgentError::Server(e)) => e.retry_after(),
            _ => None,
        };
        if asked.is_some() {
            state.metrics.rate_limited(crate::metrics::ServerOp::Sync);
        }
        match (Removal::of(&result), result) {
            (Some(Removal::Banned(reason)), _) => {
                // The node is no longer trusted: nothing more is served from it, cached or not.
                state.apply_snapshot(Vec::new(), None);
                tracing::error!(agent = %state.link.agent_id(), %reason, "this agent was banned by an admin; it stops syncing and serves no identity. An admin must lift the ban (`vouch agent evict <agent id>`), then restart this agent so that it attests again");
                return;
            }
            (Some(Removal::Evicted(reason)), _) if crate::can_reattest(&state.config.node_attestation) => {
                match crate::reattest(&state).await {
                    Ok(()) => {
                        tracing::warn!(agent = %state.link.agent_id(), %reason, "this agent was evicted by an admin; attested again")
                    }
                    Err(e) => {
                        tracing::warn!(%reason, error = %e, retry_in = ?backoff, "this agent was evicted by an admin, and attesting again failed; retrying");
                    }
                }
            }
            (Some(Removal::Evicted(reason)), _) => {
                tracing::error!(agent = %state.link.agent_id(), %reason, retry_in = ?EVICTED_BACKOFF, "this agent was evicted by an admin; its SVID no longer works. A join token is single use: restart it with a new one (`vouch token create`) so that it attests again");
                backoff = EVICTED_BACKOFF;
            }
            (None, Ok(_)) => {
                tracing::warn!(server = %describe(server.as_ref()), "sync stream ended; reconnecting")
            }
            (None, Err(e)) => {
                state.metrics.server_error(crate::metrics::ServerOp::Sync);
                tracing::warn!(server = %describe(server.as_ref()), error = %e, retry_in = ?backoff, "sync with the server failed; serving cached SVIDs, reconnecting")
            }
        }
        // A stream that was up starts the backoff over, unless the agent was evicted (set above).
        if was_connected && backoff < EVICTED_BACKOFF {
            backoff = Duration::from_millis(250);
        }
        let jitter = vouch_ca::keys::random_bytes::<1>().map(|b| u64::from(b[0])).unwrap_or(0);
        let wait = backoff + Duration::from_millis(jitter * backoff.as_millis() as u64 / 512);
        let wait = wait.max(asked.unwrap_or_default());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The replica a stream was on, for a log line.
fn describe(server: Option<&Endpoint>) -> String {
    server.map_or_else(|| "none reachable".to_owned(), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: &str) -> Result<Option<Removal>, AgentError> {
        Err(AgentError::Server(ClientError::Api { status: 403, code: code.into(), message: "why".into() }))
    }

    #[test]
    fn bans_and_evictions_are_told_apart_from_passing_failures() {
        assert_eq!(Removal::of(&refused("agent_banned")), Some(Removal::Banned("why".into())));
        assert_eq!(Removal::of(&refused("agent_not_attested")), Some(Removal::Evicted("why".into())));
        assert_eq!(Removal::of(&Ok(Some(Removal::Banned("b".into())))), Some(Removal::Banned("b".into())));
        // Everything else is retried with the usual backoff.
        for other in [refused("permission_denied"), refused("unavailable"), refused("surprise"), Ok(None)] {
            assert_eq!(Removal::of(&other), None);
        }
        assert_eq!(Removal::of(&Err(AgentError::Protocol("x".into()))), None);
    }
}
