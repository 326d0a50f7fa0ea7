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
//! A watch (`"watch": true`, optionally `"known_version": N`) keeps the connection open: a line for
//! the current version unless the workload holds it, then one for each change of the latest live
//! version, each attested and decided again; an error line ends it. The agent holds a long poll on
//! the server for each watch (`known_version` on `POST /v1/agent/secret`), so a new version arrives
//! as soon as it is written and a quiet secret costs nothing.
//!
//! The same socket hands out short-lived database credentials: `{"db_role": "orders/readonly"}`
//! (optional `"ttl"` in seconds and `"spiffe_id"`) is answered with the server's `DbCreds` (username,
//! password, lease), decided by the grant `issue` on `DbRole::"orders/readonly"`.
//!
//! Bounds: a request line of at most 1 KiB, sent within 5 s; at most 64 connections served at once
//! (more are closed at accept); watches apart: at most [`MAX_WATCHES`] in all and
//! [`MAX_WATCHES_PER_IDENTITY`] per SPIFFE ID (refused with an error line beyond), a line not
//! taken within [`WRITE_TIMEOUT`] ends its watch; the server limits each agent's reads and
//! watches.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
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
/// Most connections served at once (watches apart).
pub const MAX_CONNECTIONS: usize = 64;
/// Most watches (`"watch": true`) followed at once on the agent.
pub const MAX_WATCHES: usize = 256;
/// Most watches one identity (SPIFFE ID) may hold at once on the agent, so that one workload
/// cannot take every watch from the others.
pub const MAX_WATCHES_PER_IDENTITY: usize = 32;
/// How long a line to a watching workload may wait for it to be taken (its socket buffer full)
/// before the watch ends: a workload that stops reading holds nothing for long.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

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

/// The entry the workload reads as: its one identity, or the one it names among several.
async fn pick_entry(
    state: &AgentState,
    peer: &PeerInfo,
    wanted: Option<&vouch_api::SpiffeId>,
) -> Result<vouch_core::Entry, String> {
    let mut entries = match entitled(state, peer, crate::clock::now()).await {
        Ok(entries) => entries,
        Err(e) => return Err(tonic::Status::from(e).message().to_owned()),
    };
    if let Some(wanted) = wanted {
        entries.retain(|e| &e.spiffe_id == wanted);
    }
    // Several entries may give one SPIFFE ID: it is one identity.
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.spiffe_id.to_string()));
    match entries.len() {
        0 => Err(crate::workload_error::NO_IDENTITY.to_owned()),
        1 => entries.pop().ok_or_else(|| crate::workload_error::NO_IDENTITY.to_owned()),
        _ => {
            let ids: Vec<String> = entries.iter().map(|e| e.spiffe_id.to_string()).collect();
            Err(format!(
                "this workload has several identities ({}); say which with \"spiffe_id\"",
                ids.join(", ")
            ))
        }
    }
}

/// One request line: a secret read (or watch), or database credentials.
enum Request {
    Secret(WorkloadSecretRequest),
    Db(WorkloadDbCredsRequest),
}

fn parse_request(line: &str) -> Result<Request, String> {
    const EXPECTED: &str = "expected one JSON line {\"path\": \"<secret path>\"} or {\"db_role\": \"<connection>/<template>\"} (and \"spiffe_id\" to choose among several identities, \"watch\": true to follow new versions of a secret)";
    // Which request the line is, by its key, so the error says what is wrong with that one.
    let is_db = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line)
        .map(|m| m.contains_key("db_role"))
        .unwrap_or(false);
    if is_db {
        return serde_json::from_str(line).map(Request::Db).map_err(|e| format!("{EXPECTED}: {e}"));
    }
    let req: WorkloadSecretRequest = serde_json::from_str(line).map_err(|e| format!("{EXPECTED}: {e}"))?;
    if req.known_version.is_some() && !req.watch {
        return Err("\"known_version\" goes with \"watch\": true".into());
    }
    Ok(Request::Secret(req))
}

/// Database credentials for the workload, asked of the server as its entry.
async fn db_creds(state: &AgentState, peer: &PeerInfo, req: &WorkloadDbCredsRequest) -> AdminAnswer<DbCreds> {
    let entry = match pick_entry(state, peer, req.spiffe_id.as_ref()).await {
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
    req: &WorkloadSecretRequest,
) -> AdminAnswer<AgentSecretResponse> {
    let entry = match pick_entry(state, peer, req.spiffe_id.as_ref()).await {
        Ok(entry) => entry,
        Err(e) => return AdminAnswer::refused(e),
    };
    let request =
        &AgentSecretRequest { entry_id: entry.id.clone(), path: req.path.clone(), known_version: None };
    match state.link.call("secret read", |c| async move { c.agent_secret(request).await }).await {
        Ok(answer) => {
            tracing::info!(target: "vouch::audit", event = "workload.secret.read", spiffe_id = %answer.spiffe_id, path = %answer.path, version = answer.version);
            AdminAnswer::Answer(answer)
        }
        Err(e) => AdminAnswer::refused(server_refusal(&e)),
    }
}

/// Writes one answer line within [`WRITE_TIMEOUT`]; false when the workload did not take it (or
/// went away): the connection is then given up.
async fn send_line<T: serde::Serialize>(wr: &mut OwnedWriteHalf, answer: &AdminAnswer<T>) -> bool {
    let Ok(mut out) = serde_json::to_vec(answer) else { return false };
    out.push(b'\n');
    let sent = matches!(tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(&out)).await, Ok(Ok(())));
    zeroize::Zeroize::zeroize(&mut out);
    sent
}

/// The open watches: in all (a semaphore) and per identity.
#[derive(Default)]
struct Watches {
    per_identity: std::sync::Mutex<HashMap<String, usize>>,
}

/// One identity's hold on a watch, released on drop.
struct IdentitySlot<'a> {
    watches: &'a Watches,
    id: String,
}

impl Watches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.per_identity.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, id: &str) -> Option<IdentitySlot<'_>> {
        let mut map = self.lock();
        let count = map.entry(id.to_owned()).or_default();
        if *count >= MAX_WATCHES_PER_IDENTITY {
            return None;
        }
        *count += 1;
        Some(IdentitySlot { watches: self, id: id.to_owned() })
    }
}

impl Drop for IdentitySlot<'_> {
    fn drop(&mut self) {
        let mut map = self.watches.lock();
        if let Some(count) = map.get_mut(&self.id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.id);
            }
        }
    }
}

/// What a server error means to a watch.
enum WatchError {
    /// The read itself is refused (no grant, no such secret, a bad path, too many watches): the
    /// workload is told and the watch ends.
    Refused(String),
    /// The server cannot answer now: tried again after a pause.
    Transient,
}

fn watch_error(e: &AgentError) -> WatchError {
    match e {
        AgentError::Server(vouch_client::ClientError::Api {
            status: 400 | 403 | 404 | 429, message, ..
        }) => WatchError::Refused(message.clone()),
        other => {
            tracing::warn!(error = %other, "cannot watch a secret on the server; trying again");
            WatchError::Transient
        }
    }
}

/// Follows a secret for a workload: a line for each version (the current one first, unless the
/// workload holds it), until the workload closes the connection, does not take a line within
/// [`WRITE_TIMEOUT`], loses its identity or its grant. Every answer is attested and decided again.
async fn watch(
    state: &AgentState,
    peer: &PeerInfo,
    req: &WorkloadSecretRequest,
    watches: &Watches,
    all: &Arc<Semaphore>,
    rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
) {
    let entry = match pick_entry(state, peer, req.spiffe_id.as_ref()).await {
        Ok(entry) => entry,
        Err(e) => {
            send_line(&mut wr, &AdminAnswer::<AgentSecretResponse>::refused(e)).await;
            return;
        }
    };
    let id = entry.spiffe_id.to_string();
    let Ok(_all) = all.clone().try_acquire_owned() else {
        let e = format!("this agent already follows {MAX_WATCHES} secret watches, the most it serves; close some or read without \"watch\"");
        send_line(&mut wr, &AdminAnswer::<AgentSecretResponse>::refused(e)).await;
        return;
    };
    let Some(_mine) = watches.enter(&id) else {
        let e = format!("`{id}` already holds {MAX_WATCHES_PER_IDENTITY} secret watches on this agent, the most one identity may; close some");
        send_line(&mut wr, &AdminAnswer::<AgentSecretResponse>::refused(e)).await;
        return;
    };
    tracing::debug!(spiffe_id = %id, path = %req.path, "secret watch opened");
    let follow = follow(state, peer, req, entry, &mut wr);
    // The workload sends nothing after its request: anything it sends, or its closing the
    // connection, ends the watch (and the server's long poll with it).
    let closed = async {
        let mut rd = rd;
        let mut byte = [0u8; 1];
        let _ = rd.read(&mut byte).await;
    };
    tokio::select! {
        () = follow => {}
        () = closed => tracing::debug!(spiffe_id = %id, path = %req.path, "secret watch closed by the workload"),
    }
}

async fn follow(
    state: &AgentState,
    peer: &PeerInfo,
    req: &WorkloadSecretRequest,
    entry: vouch_core::Entry,
    wr: &mut OwnedWriteHalf,
) {
    // Version 0 is never a version: the current one is sent at once.
    let mut known = req.known_version.unwrap_or(0);
    let mut pause = Duration::from_millis(500);
    loop {
        let request = &AgentSecretRequest {
            entry_id: entry.id.clone(),
            path: req.path.clone(),
            known_version: Some(known),
        };
        let got =
            state.link.call("secret watch", |c| async move { c.agent_secret_watch(request).await }).await;
        let answer = match got {
            Ok(None) => {
                pause = Duration::from_millis(500);
                continue;
            }
            Ok(Some(answer)) => answer,
            Err(e) => match watch_error(&e) {
                WatchError::Refused(why) => {
                    send_line(wr, &AdminAnswer::<AgentSecretResponse>::refused(why)).await;
                    return;
                }
                WatchError::Transient => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(30));
                    continue;
                }
            },
        };
        pause = Duration::from_millis(500);
        // The workload must still be the one attested, with this identity.
        match pick_entry(state, peer, Some(&entry.spiffe_id)).await {
            Ok(now) if now.id == entry.id => {}
            Ok(_) | Err(_) => {
                send_line(
                    wr,
                    &AdminAnswer::<AgentSecretResponse>::refused(crate::workload_error::NO_IDENTITY),
                )
                .await;
                return;
            }
        }
        tracing::info!(target: "vouch::audit", event = "workload.secret.read", spiffe_id = %answer.spiffe_id, path = %answer.path, version = answer.version, watch = true);
        known = answer.version;
        if !send_line(wr, &AdminAnswer::Answer(answer)).await {
            tracing::info!(path = %req.path, "secret watch ended: the workload did not take a line within {} s", WRITE_TIMEOUT.as_secs());
            return;
        }
    }
}

/// Serves the secret socket on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, state: Arc<AgentState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let watch_slots = Arc::new(Semaphore::new(MAX_WATCHES));
    let watches = Arc::new(Watches::default());
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
        let peer = PeerInfo::new(PeerProcess::of_socket(&stream, state.unix.proc_root()));
        let (state, watch_slots, watches) = (state.clone(), watch_slots.clone(), watches.clone());
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(rd).take(MAX_REQUEST as u64);
            match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let req = match parse_request(&line) {
                Ok(Request::Secret(req)) => req,
                Ok(Request::Db(req)) => {
                    let _slot = slot;
                    send_line(&mut wr, &db_creds(&state, &peer, &req).await).await;
                    return;
                }
                Err(e) => {
                    send_line(&mut wr, &AdminAnswer::<AgentSecretResponse>::refused(e)).await;
                    return;
                }
            };
            if req.watch {
                // A watch is held by its own bound, not by one of the connection slots, which
                // stay free for reads.
                drop(slot);
                let rd = reader.into_inner().into_inner();
                watch(&state, &peer, &req, &watches, &watch_slots, rd, wr).await;
                return;
            }
            let _slot = slot;
            let answer = answer(&state, &peer, &req).await;
            send_line(&mut wr, &answer).await;
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
