//! What a replica hears of the others: the store's change notices ([`Store::changes`], PostgreSQL
//! only) republished as local [`Event`]s, so agents connected to this replica get a change made
//! through another one as they get a local one, and the authority followed when another replica
//! rotated it.
//!
//! [`Store::changes`]: vouch_store::Store::changes

use std::sync::Arc;

use tokio::sync::{broadcast, watch};
use vouch_api::agent::CloseReason;
use vouch_store::Change;

use crate::state::{AppState, Event};
use crate::StartError;

/// How often a change that could not be read waits for the store to answer again.
const STORE_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a starting replica waits for its store to start listening.
const LISTEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// `changes` once the store listens: its first message says so ([`Change::Resync`]). Nothing was
/// read or served before, so there is nothing to resync.
pub(crate) async fn listening(
    mut changes: broadcast::Receiver<Change>,
) -> Result<broadcast::Receiver<Change>, StartError> {
    match tokio::time::timeout(LISTEN_TIMEOUT, changes.recv()).await {
        Ok(Ok(Change::Resync)) => Ok(changes),
        Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => Ok(changes),
        Ok(Err(broadcast::error::RecvError::Closed)) => {
            Err(StartError::Store("the store stopped listening for other replicas' changes".into()))
        }
        Err(_) => Err(StartError::Store(format!(
            "cannot listen for other replicas' changes (LISTEN on PostgreSQL) within {} s; see the log for why",
            LISTEN_TIMEOUT.as_secs()
        ))),
    }
}

/// Republishes the changes of other replicas until shutdown.
pub(crate) async fn follow_changes(
    state: Arc<AppState>,
    mut changes: broadcast::Receiver<Change>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            _ = shutdown.changed() => return,
        };
        match change {
            // Applying may wait for the store to come back (see `apply`): shutdown interrupts it.
            Ok(change) => tokio::select! {
                _ = apply(&state, change) => {}
                _ = shutdown.changed() => return,
            },
            // Too far behind to replay: start over as after a lost connection.
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "fell behind the changes of other replicas; agents get a fresh snapshot"
                );
                apply(&state, Change::Resync).await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn apply(state: &AppState, change: Change) {
    match change {
        // The notice names the entry; its content is read now, as the agents must see it.
        Change::EntryUpserted { id, previous_parent } => match state.store.get_entry(&id).await {
            Ok(Some(entry)) => {
                state.publish(Event::EntryUpserted { entry: std::sync::Arc::new(entry), previous_parent })
            }
            // Deleted since (its own notice follows, naming its parent at deletion): the agent
            // under its parent before this change must drop it too.
            Ok(None) => {
                if let Some(parent) = previous_parent {
                    state.publish(Event::EntryDeleted { id, parent });
                }
            }
            Err(e) => {
                tracing::warn!(entry = %id, error = %e, "cannot read an entry another replica changed; agents get a fresh snapshot once the store answers");
                // A snapshot taken while the store is down would fail and end every stream.
                while state.store.ping().await.is_err() {
                    tokio::time::sleep(STORE_RETRY).await;
                }
                state.publish(Event::Resync);
            }
        },
        Change::EntryDeleted { id, parent } => state.publish(Event::EntryDeleted { id, parent }),
        Change::AgentRemoved { agent, banned } => {
            let reason = if banned { CloseReason::Banned } else { CloseReason::Evicted };
            state.publish(Event::AgentRemoved { agent, reason });
        }
        Change::AuthorityChanged { .. } => follow(state).await,
        // As for entries, the notice names the group or agent; what it is now is read now.
        Change::GroupChanged { id } => match state.store.get_group(&id).await {
            Ok(group) => state.publish(Event::GroupChanged { id, selectors: group.map(|g| g.selectors) }),
            Err(e) => {
                tracing::warn!(group = %id, error = %e, "cannot read a node group another replica changed; agents get a fresh snapshot");
                state.publish(Event::Resync);
            }
        },
        Change::AgentSelectorsChanged { agent } => match state.store.get_agent(&agent).await {
            Ok(Some(record)) => state.publish(Event::AgentAttested { agent, selectors: record.selectors }),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(agent = %agent, error = %e, "cannot read an agent another replica changed; agents get a fresh snapshot");
                state.publish(Event::Resync);
            }
        },
        Change::FederationChanged { .. } => state.federation.wake(),
        Change::PoliciesChanged { .. } => {
            state.policies.invalidate();
            state.publish(Event::PoliciesChanged);
        }
        Change::SecretChanged { path } => state.publish(Event::SecretChanged { path }),
        Change::Resync => {
            state.policies.invalidate();
            state.federation.wake();
            state.publish(Event::Resync);
            follow(state).await;
        }
    }
}

/// Loads the authority another replica stored; a failure is retried by the next tick.
async fn follow(state: &AppState) {
    if let Err(e) = state.follow_authority().await {
        tracing::warn!(error = %e, "cannot load the authority another replica stored; retrying on the next tick");
    }
}
