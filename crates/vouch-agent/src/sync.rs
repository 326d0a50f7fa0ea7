//! The sync loop: one long-lived stream from the server carrying the entries this agent may serve,
//! first as a snapshot, then change by change. Reconnects with jittered exponential backoff; while
//! disconnected the agent keeps serving what it holds.

use std::sync::Arc;
use std::time::Duration;

use vouch_api::agent::SyncLine;
use vouch_ca::Bundle;

use crate::state::AgentState;
use crate::AgentError;

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Applies one line of the stream. A bundle the agent cannot read is an error: the stream is dropped
/// and started over from a snapshot, rather than the agent going on with a bundle it did not get.
pub fn apply_line(state: &AgentState, line: SyncLine<'_>) -> Result<(), AgentError> {
    let bundle = |v: &serde_json::Value| {
        Bundle::from_jwks(state.config.trust_domain.clone(), &v.to_string())
            .map_err(|e| AgentError::Protocol(format!("sync: the server's bundle is unreadable: {e}")))
    };
    match line {
        SyncLine::Snapshot { entries, bundle: b } => {
            state.apply_snapshot(entries.into_owned(), Some(bundle(&b)?))
        }
        SyncLine::Upsert { entry } => state.apply_upsert(entry.into_owned()),
        SyncLine::Delete { id } => state.apply_delete(&id),
        SyncLine::Bundle { bundle: b } => state.apply_bundle(bundle(&b)?),
        SyncLine::Ping => {}
    }
    Ok(())
}

/// Follows the stream until it ends or fails.
pub async fn sync_once(state: &AgentState) -> Result<(), AgentError> {
    let mut lines = state.link.client().sync().await?;
    while let Some(line) = lines.next().await {
        let line = line?;
        state.metrics.sync_line(crate::clock::now());
        apply_line(state, line)?;
        if !state.link.connected() {
            state.link.set_connected(true);
            tracing::info!(agent = %state.link.agent_id(), entries = state.registry.entries().len(), "synced with the server");
        }
    }
    Ok(())
}

/// Runs the sync loop until `shutdown` fires.
pub async fn run(state: Arc<AgentState>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let result = tokio::select! {
            r = sync_once(&state) => r,
            _ = shutdown.changed() => return,
        };
        let was_connected = state.link.connected();
        state.link.set_connected(false);
        state.metrics.reconnect();
        match result {
            Ok(()) => tracing::warn!("sync stream ended; reconnecting"),
            Err(e) => {
                state.metrics.server_error(crate::metrics::ServerOp::Sync);
                tracing::warn!(error = %e, retry_in = ?backoff, "sync with the server failed; serving cached SVIDs")
            }
        }
        if was_connected {
            backoff = Duration::from_millis(250);
        }
        let jitter = vouch_ca::keys::random_bytes::<1>().map(|b| u64::from(b[0])).unwrap_or(0);
        let wait = backoff + Duration::from_millis(jitter * backoff.as_millis() as u64 / 512);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
