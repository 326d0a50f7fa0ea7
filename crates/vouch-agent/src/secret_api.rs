//! The agent's secret socket, beside the Workload API socket (its path with `.secrets` appended,
//! world-connectable like it): a workload reads a secret by identity, attested exactly as for
//! SVIDs (peer pid from `SO_PEERCRED`, pinned with a pidfd at accept, selectors, matching entries).
//!
//! Protocol: one JSON line per connection ([`WorkloadSecretRequest`]: `{"path": "app/db"}`, with
//! `"spiffe_id"` when the workload has several identities), one JSON line back: the
//! [`AgentSecretResponse`] (value base64) or `{"error": "..."}`. The agent asks the server over its
//! mTLS link, naming the workload's entry; the server checks the agent serves that entry and decides
//! whether the workload's SPIFFE ID may read the secret. Nothing is cached on the node.
//!
//! The same socket hands out short-lived database credentials: `{"db_role": "orders/readonly"}`
//! (optional `"ttl"` in seconds and `"spiffe_id"`) is answered with the server's `DbCreds` (username,
//! password, lease), decided by the grant `issue` on `DbRole::"orders/readonly"`.
//!
//! Bounds: a request line of at most 1 KiB, sent within 5 s; at most 64 connections served at once
//! (more are closed at accept); the server limits each agent's reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use vouch_api::db::{AgentDbCredsRequest, DbCreds, WorkloadDbCredsRequest};
use vouch_api::explain::AdminAnswer;
use vouch_api::secrets::{AgentSecretRequest, AgentSecretResponse, WorkloadSecretRequest};

use crate::attest::PeerProcess;
use crate::state::AgentState;
use crate::workload_api::{entitled, PeerInfo};
use crate::AgentError;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1024;
/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// The secret socket of the Workload API socket at `workload_socket`.
pub fn socket_path(workload_socket: &Path) -> PathBuf {
    let mut name = workload_socket.as_os_str().to_owned();
    name.push(".secrets");
    PathBuf::from(name)
}

/// What the workload is told when the server refuses or fails: the server's reason for a refusal
/// of the read itself (no grant, no such secret, a bad path), a retry hint otherwise.
fn server_refusal(e: &AgentError) -> String {
    server_refusal_of(e, "read the secret")
}

fn server_refusal_of(e: &AgentError, what: &str) -> String {
    match e {
        AgentError::Server(vouch_client::ClientError::Api { status: 400 | 403 | 404, message, .. }) => {
            message.clone()
        }
        other => {
            tracing::warn!(error = %other, what, "the server did not answer a workload's request");
            format!("cannot {what} from the vouch server right now; retry")
        }
    }
}

/// One request line: a secret read or database credentials.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum WorkloadRequest {
    Secret(WorkloadSecretRequest),
    Db(WorkloadDbCredsRequest),
}

/// The answer to one request line, serialized (a secret or credentials, or a refusal).
async fn answer_line(state: &AgentState, peer: &PeerInfo, line: &str) -> Option<Vec<u8>> {
    match serde_json::from_str::<WorkloadRequest>(line) {
        Ok(WorkloadRequest::Secret(req)) => serde_json::to_vec(&answer(state, peer, req).await).ok(),
        Ok(WorkloadRequest::Db(req)) => serde_json::to_vec(&db_creds(state, peer, req).await).ok(),
        Err(_) => {
            // Say what is wrong with the request the line looks like (untagged enums lose it).
            let why = if line.contains("db_role") {
                serde_json::from_str::<WorkloadDbCredsRequest>(line).err()
            } else {
                serde_json::from_str::<WorkloadSecretRequest>(line).err()
            }
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
            serde_json::to_vec(&AdminAnswer::<AgentSecretResponse>::refused(format!(
                "expected one JSON line {{\"path\": \"<secret path>\"}} or {{\"db_role\": \"<connection>/<template>\"}} (and \"spiffe_id\" to choose among several identities){why}"
            )))
            .ok()
        }
    }
}

/// The workload's one entry (the one with `spiffe_id` when given), or why there is none.
async fn workload_entry(
    state: &AgentState,
    peer: &PeerInfo,
    spiffe_id: Option<&vouch_core::SpiffeId>,
) -> Result<vouch_core::Entry, String> {
    let mut entries = match entitled(state, peer, crate::clock::now()).await {
        Ok(entries) => entries,
        Err(e) => return Err(tonic::Status::from(e).message().to_owned()),
    };
    if let Some(wanted) = spiffe_id {
        entries.retain(|e| &e.spiffe_id == wanted);
    }
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.spiffe_id.to_string()));
    match entries.as_slice() {
        [] => Err(crate::workload_error::NO_IDENTITY.into()),
        [one] => Ok(one.clone()),
        several => {
            let ids: Vec<String> = several.iter().map(|e| e.spiffe_id.to_string()).collect();
            Err(format!(
                "this workload has several identities ({}); say which with \"spiffe_id\"",
                ids.join(", ")
            ))
        }
    }
}

/// Database credentials for the workload, asked of the server as its entry.
async fn db_creds(state: &AgentState, peer: &PeerInfo, req: WorkloadDbCredsRequest) -> AdminAnswer<DbCreds> {
    let entry = match workload_entry(state, peer, req.spiffe_id.as_ref()).await {
        Ok(entry) => entry,
        Err(why) => return AdminAnswer::refused(why),
    };
    let request =
        &AgentDbCredsRequest { entry_id: entry.id.clone(), role: req.db_role.clone(), ttl: req.ttl };
    match state.link.call("database credentials", |c| async move { c.agent_db_creds(request).await }).await {
        Ok(creds) => {
            tracing::info!(target: "vouch::audit", event = "workload.db.creds", spiffe_id = %entry.spiffe_id, role = %req.db_role, lease = %creds.lease.id);
            AdminAnswer::Answer(creds)
        }
        Err(e) => AdminAnswer::refused(server_refusal_of(&e, "get database credentials")),
    }
}

async fn answer(
    state: &AgentState,
    peer: &PeerInfo,
    req: WorkloadSecretRequest,
) -> AdminAnswer<AgentSecretResponse> {
    let mut entries = match entitled(state, peer, crate::clock::now()).await {
        Ok(entries) => entries,
        Err(e) => return AdminAnswer::refused(tonic::Status::from(e).message().to_owned()),
    };
    if let Some(wanted) = &req.spiffe_id {
        entries.retain(|e| &e.spiffe_id == wanted);
    }
    // Several entries may give one SPIFFE ID: it is one identity.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.spiffe_id.to_string()));
    let entry = match entries.as_slice() {
        [] => return AdminAnswer::refused(crate::workload_error::NO_IDENTITY),
        [one] => one,
        several => {
            let ids: Vec<String> = several.iter().map(|e| e.spiffe_id.to_string()).collect();
            return AdminAnswer::refused(format!(
                "this workload has several identities ({}); say which with \"spiffe_id\"",
                ids.join(", ")
            ));
        }
    };
    let request = &AgentSecretRequest { entry_id: entry.id.clone(), path: req.path.clone() };
    match state.link.call("secret read", |c| async move { c.agent_secret(request).await }).await {
        Ok(answer) => {
            tracing::info!(target: "vouch::audit", event = "workload.secret.read", spiffe_id = %answer.spiffe_id, path = %answer.path, version = answer.version);
            AdminAnswer::Answer(answer)
        }
        Err(e) => AdminAnswer::refused(server_refusal(&e)),
    }
}

/// Serves the secret socket on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, state: Arc<AgentState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "secret socket accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the bound: closed at once, so a flood holds no memory or descriptors.
            continue;
        };
        // Pinned at accept, as on the Workload API socket.
        let peer = PeerInfo(Arc::new(PeerProcess::of_socket(&stream, state.unix.proc_root())));
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(rd).take(MAX_REQUEST as u64);
            match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let Some(mut out) = answer_line(&state, &peer, &line).await else { return };
            out.push(b'\n');
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, wr.write_all(&out)).await;
            zeroize::Zeroize::zeroize(&mut out);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_socket_sits_beside_the_workload_socket() {
        assert_eq!(
            socket_path(Path::new("/run/vouch/agent.sock")),
            Path::new("/run/vouch/agent.sock.secrets")
        );
    }
}
