//! The sync loop: one long-lived stream from the server carrying the entries this agent may serve,
//! first as a snapshot, then change by change. Reconnects with jittered exponential backoff; while
//! disconnected the agent keeps serving what it holds.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vouch_ca::Bundle;
use vouch_core::{Entry, EntryId};

use crate::state::AgentState;
use crate::AgentError;

/// Longest wait between reconnection attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Applies one line of the stream.
pub fn apply_line(state: &AgentState, line: &str) -> Result<(), AgentError> {
    let v: Value = serde_json::from_str(line).map_err(|e| AgentError::Protocol(format!("sync line: {e}")))?;
    let bundle = |v: &Value| Bundle::from_jwks(state.config.trust_domain.clone(), &v.to_string()).ok();
    match v["type"].as_str() {
        Some("snapshot") => {
            let entries: Vec<Entry> = serde_json::from_value(v["entries"].clone())
                .map_err(|e| AgentError::Protocol(format!("snapshot: {e}")))?;
            state.apply_snapshot(entries, bundle(&v["bundle"]));
        }
        Some("upsert") => {
            let entry: Entry = serde_json::from_value(v["entry"].clone())
                .map_err(|e| AgentError::Protocol(format!("upsert: {e}")))?;
            state.apply_upsert(entry);
        }
        Some("delete") => {
            let id: EntryId = serde_json::from_value(v["id"].clone())
                .map_err(|e| AgentError::Protocol(format!("delete: {e}")))?;
            state.apply_delete(&id);
        }
        Some("bundle") => {
            if let Some(b) = bundle(&v["bundle"]) {
                state.apply_bundle(b);
            }
        }
        Some("ping") => {}
        other => tracing::debug!(kind = ?other, "ignoring unknown sync line"),
    }
    Ok(())
}

/// Follows the stream until it ends or fails.
pub async fn sync_once(state: &AgentState) -> Result<(), AgentError> {
    let mut conn = state.client().connect().await?;
    let (status, mut lines) = conn.stream("GET", "/v1/agent/sync").await?;
    if status != 200 {
        let mut body = String::new();
        while let Some(Ok(l)) = lines.next_line().await {
            body.push_str(&l);
        }
        vouch_client::decode::<Value>(status, body.as_bytes())?;
        return Err(AgentError::Protocol(format!("sync answered {status}")));
    }
    while let Some(line) = lines.next_line().await {
        apply_line(state, &line?)?;
        if !state.connected() {
            state.set_connected(true);
            tracing::info!(agent = %state.agent_id(), entries = state.entries().len(), "synced with the server");
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
        let was_connected = state.connected();
        state.set_connected(false);
        match result {
            Ok(()) => tracing::warn!("sync stream ended; reconnecting"),
            Err(e) => {
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
