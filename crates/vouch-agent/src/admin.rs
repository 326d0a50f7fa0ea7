//! The agent's private admin socket (`admin.sock` in its data directory, mode 0600, peer uid
//! checked): one JSON line per request ([`AdminRequest`]), one per answer. It answers
//! `vouch agent explain` (`explain`), `vouch agent healthcheck` ([`health`]) and
//! `vouch agent metrics` (`metrics`) and `vouch agent authorize` (`authorize`: a decision from the
//! policy set synced from the server, see [`crate::grants`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
pub use vouch_api::explain::{AdminAnswer, AdminRequest, Health, MetricsText, SyncStatus};
use vouch_core::ttl::{rfc3339, unix_seconds};

use crate::state::AgentState;

/// Longest request line accepted.
const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the agent is ready at `now`: the Workload API socket is served, the agent's own SVID
/// is valid, and it has synced with the server once since it started. Losing the server later does
/// not make it unready: workloads keep receiving the
/// SVIDs it holds until they expire, so the answer says "serving cached SVIDs" instead.
pub async fn health(state: &AgentState, now: SystemTime) -> Health {
    let socket = &state.config.socket;
    let workload_api = state.metrics.workload_api_up() && socket_present(socket);
    let id = state.link.identity();
    let agent_svid_valid = id.not_before <= now && now < id.not_after;
    let sync = if state.link.connected() {
        SyncStatus::Connected
    } else if state.registry.synced() {
        SyncStatus::ServingCached
    } else {
        SyncStatus::NotYetSynced
    };
    let synced_once = sync != SyncStatus::NotYetSynced;
    let reason = if !workload_api {
        format!("the Workload API socket {} is not served", socket.display())
    } else if !agent_svid_valid {
        format!(
            "the agent SVID is not valid now (valid {} to {}); {}",
            rfc3339(unix_seconds(id.not_before)),
            rfc3339(unix_seconds(id.not_after)),
            match state.config.node_attestation {
                crate::NodeAttestation::K8sPsat { .. } | crate::NodeAttestation::X509Pop { .. } =>
                    "the agent attests again by itself once the server answers",
                _ => "a join token is single use: restart the agent with a new one (`vouch token create`)",
            }
        )
    } else if !synced_once {
        format!(
            "{}: workloads are told to retry until the first sync with {}",
            sync.describe(),
            state.config.servers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        )
    } else {
        match state.link.server().filter(|_| sync == SyncStatus::Connected) {
            Some(server) => format!("ready: {} at {server}", sync.describe()),
            None => format!("ready: {}", sync.describe()),
        }
    };
    Health {
        ready: workload_api && agent_svid_valid && synced_once,
        reason,
        agent_id: id.spiffe_id.to_string(),
        socket: socket.display().to_string(),
        workload_api,
        agent_svid_valid,
        agent_svid_expires_at: unix_seconds(id.not_after),
        sync,
        last_sync_at: state.metrics.last_sync_at(),
        svids_held: u64::try_from(state.cache.x509_len()).unwrap_or(u64::MAX),
        entries: u64::try_from(state.registry.entries().len()).unwrap_or(u64::MAX),
    }
}

/// Whether `socket` is still a Unix socket on disk (someone may have removed or replaced it).
///
/// Not probed with a connection: the health check should not cost the Workload API a connection
/// (and an attestation) each time it runs.
fn socket_present(socket: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket())
}

/// The answer line to one request line.
async fn answer(state: &AgentState, line: &str) -> Result<Vec<u8>, serde_json::Error> {
    let request = match serde_json::from_str::<AdminRequest>(line) {
        Ok(AdminRequest::Explain(pid)) if pid <= 0 => Err("explain needs a positive pid"),
        Ok(r) => Ok(r),
        Err(_) => Err("expected one of {\"explain\": <pid>}, {\"health\": {}}, {\"metrics\": {}}, {\"authorize\": {\"principal\": ..., \"action\": ..., \"resource\": {\"type\": ..., \"id\": ...}}}"),
    };
    match request {
        Ok(AdminRequest::Explain(pid)) => {
            serde_json::to_vec(&AdminAnswer::Answer(crate::explain::explain(state, pid).await))
        }
        Ok(AdminRequest::Health {}) => {
            serde_json::to_vec(&AdminAnswer::Answer(health(state, crate::clock::now()).await))
        }
        Ok(AdminRequest::Metrics {}) => {
            serde_json::to_vec(&AdminAnswer::Answer(MetricsText { metrics: crate::metrics::render(state) }))
        }
        Ok(AdminRequest::Authorize(req)) => match crate::grants::authorize(state, &req) {
            Ok(answer) => serde_json::to_vec(&AdminAnswer::Answer(answer)),
            Err(refusal) => serde_json::to_vec(&AdminAnswer::<()>::refused(refusal)),
        },
        Err(error) => serde_json::to_vec(&AdminAnswer::<()>::refused(error)),
    }
}

/// Serves the admin socket on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, state: Arc<AgentState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        // Only root or the agent's own user may ask (the socket is 0600 as well).
        let allowed = stream.peer_cred().map(|c| c.uid() == 0 || c.uid() == own_uid()).unwrap_or(false);
        let state = state.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut reader = BufReader::new(rd).take(MAX_REQUEST as u64);
            match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let out = if allowed {
                answer(&state, &line).await
            } else {
                serde_json::to_vec(&AdminAnswer::<()>::refused(
                    "only root or the agent's user may use the agent admin socket",
                ))
            };
            let Ok(mut out) = out else { return };
            out.push(b'\n');
            let _ = wr.write_all(&out).await;
        });
    }
}

fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}
