//! `vouch agent explain --pid N`: why a process does or does not get an identity. The agent answers
//! on a private socket (`admin.sock` in its data directory, mode 0600, peer uid checked), one JSON
//! line per request: `{"explain": <pid>}`.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
pub use vouch_api::explain::{EntryVerdict, ExplainAnswer, ExplainRequest, Explanation};

use crate::attest::{attest_full, PeerProcess};
use crate::state::AgentState;

/// Attests `pid` as the Workload API would and explains each entry.
pub async fn explain(state: &AgentState, pid: i32) -> Explanation {
    let now = crate::clock::now();
    let result = match PeerProcess::of_pid(pid, state.unix.proc_root()) {
        Ok(p) => attest_full(&p, &state.unix, &state.runtime).await,
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
        agent_id: state.agent_id().to_string(),
        connected: state.connected(),
        error,
        selectors: selectors.iter().map(ToString::to_string).collect(),
        container,
        entries,
    }
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 1024;

/// Serves explanations on `listener` until the task is dropped.
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
            if reader.read_line(&mut line).await.is_err() {
                return;
            }
            let refused = |error: &str| ExplainAnswer::Refused { error: error.to_owned() };
            let answer = if !allowed {
                refused("only root or the agent's user may use the agent admin socket")
            } else {
                match serde_json::from_str::<ExplainRequest>(&line) {
                    Ok(ExplainRequest { explain: pid }) if pid > 0 => {
                        ExplainAnswer::Explanation(explain(&state, pid).await)
                    }
                    _ => refused("expected {\"explain\": <pid>} with a positive pid"),
                }
            };
            let Ok(mut out) = serde_json::to_vec(&answer) else { return };
            out.push(b'\n');
            let _ = wr.write_all(&out).await;
        });
    }
}

fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}
