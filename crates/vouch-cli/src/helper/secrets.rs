//! Secrets as files: each configured secret is followed on the agent's secret socket with a watch
//! (`{"path": ..., "watch": true, "known_version": N}`), and its file rewritten atomically, holding
//! the raw value bytes, at each new version; then the app is told (signal, command) as after an
//! X509 rotation. The agent answers a watch as soon as the server has a new version (a long poll
//! woken by the write), so a new version reaches the file in well under a second.
//!
//! Values never reach the log, an error or a command line: the log names the secret, its version
//! and the file.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use vouch_api::explain::AdminAnswer;
use vouch_api::secrets::{decode_value, AgentSecretResponse, WorkloadSecretRequest};
use zeroize::Zeroizing;

use super::config::{Plan, SecretTarget};
use super::Stop;

/// Longest answer line read from the agent: a 64 KiB value in base64, with room to spare.
const MAX_LINE: u64 = 256 * 1024;

/// How long the agent may take to answer a one-time read (`--once`).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// What ended one connection to the secret socket.
enum Ended {
    /// The agent refused the read (no identity, no grant, no such secret).
    Refused(String),
    /// The agent could not be reached, or closed the connection.
    Unreachable(String),
    /// `--once`: the file is written.
    Done,
}

/// Follows every configured secret until one fails for good (its exit code); with `--once`, reads
/// each once (0 when all are written).
pub(super) async fn supervise(plan: &Plan) -> Result<u8, anyhow::Error> {
    let socket = vouch_agent::secret_api::socket_path(&crate::agent::socket_path(&plan.socket));
    let plan = std::sync::Arc::new(plan.clone());
    // Each secret on its own task; dropping the set (the helper stopping) aborts them all.
    let mut set = tokio::task::JoinSet::new();
    for index in 0..plan.secrets.len() {
        let (plan, socket) = (plan.clone(), socket.clone());
        set.spawn(async move {
            match plan.secrets.get(index) {
                Some(target) => follow(&plan, &socket, target).await,
                None => Ok(0),
            }
        });
    }
    while let Some(done) = set.join_next().await {
        let code = done.map_err(|e| anyhow::anyhow!("a secret's task failed: {e}"))??;
        if code != 0 {
            return Ok(code);
        }
    }
    Ok(0)
}

/// One secret, for as long as the helper runs: an exit code when it must stop.
async fn follow(plan: &Plan, socket: &Path, target: &SecretTarget) -> Result<u8, anyhow::Error> {
    let mut known: Option<u64> = None;
    let mut unreachable_since = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        let before = known;
        let ended = match session(plan, socket, target, &mut known).await {
            Ok(ended) => ended,
            Err(Stop::Fatal(e)) => return Err(e),
            Err(Stop::Refused(why)) => Ended::Refused(why),
            Err(Stop::Unreachable(why)) => Ended::Unreachable(why),
        };
        if known != before {
            // Versions arrived on this connection: whatever ended it, start the next soon.
            backoff = Duration::from_millis(500);
            unreachable_since = tokio::time::Instant::now();
        }
        match ended {
            Ended::Done => return Ok(0),
            Ended::Refused(why) if known.is_none() => {
                eprintln!(
                    "error: secret `{}` for {}: the agent refused: {why}. A grant must permit this \
                     workload's SPIFFE ID to `read` the secret (docs/secrets.md, \"Who may read what\"); \
                     for \"no identity issued\", `vouch agent explain --pid {}` on the node says why",
                    target.path,
                    target.out.path.display(),
                    std::process::id()
                );
                return Ok(super::EXIT_NO_IDENTITY);
            }
            Ended::Refused(why) => {
                // The file keeps the last version delivered; the app goes on with it.
                tracing::error!(
                    secret = %target.path,
                    file = %target.out.path.display(),
                    version = known,
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "secret no longer delivered: {why}; the file is left as it is"
                );
                unreachable_since = tokio::time::Instant::now();
            }
            Ended::Unreachable(why) => {
                if let Some(limit) = plan.retry_for.filter(|l| unreachable_since.elapsed() >= *l) {
                    eprintln!(
                        "error: cannot reach the agent's secret socket at {} within {}: {why}. Check that \
                         `vouch agent run` is running on this node and serves that socket (beside the \
                         Workload API socket, --socket or SPIFFE_ENDPOINT_SOCKET, with `.secrets` \
                         appended), and that it is mounted into this container",
                        socket.display(),
                        vouch_server::config::HumanDuration(limit)
                    );
                    return Ok(super::EXIT_UNREACHABLE);
                }
                tracing::warn!(
                    secret = %target.path,
                    socket = %socket.display(),
                    retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                    "cannot reach the agent's secret socket: {why}; is `vouch agent run` running and serving it?"
                );
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One connection: the request, then a line per version (one with `--once`).
async fn session(
    plan: &Plan,
    socket: &Path,
    target: &SecretTarget,
    known: &mut Option<u64>,
) -> Result<Ended, Stop> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| Stop::Unreachable(format!("cannot connect: {e}")))?;
    let (rd, mut wr) = stream.into_split();
    let request = WorkloadSecretRequest {
        path: target.path.clone(),
        spiffe_id: target.spiffe_id.clone(),
        watch: !plan.once,
        known_version: if plan.once { None } else { *known },
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| Stop::Fatal(e.into()))?;
    line.push(b'\n');
    wr.write_all(&line).await.map_err(|e| Stop::Unreachable(format!("cannot send the request: {e}")))?;
    // The write half stays open: closing it would end the watch.
    let mut reader = BufReader::new(rd);
    loop {
        let mut text = Zeroizing::new(String::new());
        let mut bounded = (&mut reader).take(MAX_LINE);
        let read = bounded.read_line(&mut text);
        let n = if plan.once {
            tokio::time::timeout(READ_TIMEOUT, read).await.map_err(|_| {
                Stop::Unreachable(format!("the agent did not answer within {} s", READ_TIMEOUT.as_secs()))
            })?
        } else {
            read.await
        }
        .map_err(|e| Stop::Unreachable(format!("reading the answer: {e}")))?;
        if n == 0 {
            return Err(Stop::Unreachable("the agent closed the connection".into()));
        }
        if !text.ends_with('\n') {
            return Err(Stop::Unreachable(format!("an answer longer than {MAX_LINE} bytes")));
        }
        // Only the error's kind is shown: serde quotes the input it stumbled on.
        let answer: AdminAnswer<AgentSecretResponse> = serde_json::from_str(&text).map_err(|e| {
            Stop::Unreachable(format!("an answer that is not the agent's protocol ({:?})", e.classify()))
        })?;
        let answer = match answer {
            AdminAnswer::Answer(a) => a,
            AdminAnswer::Refused(r) => return Err(Stop::Refused(r.error)),
        };
        let value = Zeroizing::new(
            decode_value(&answer.value)
                .map_err(|_| Stop::Unreachable("the agent sent a value that is not base64".into()))?,
        );
        write(target, &value)?;
        tracing::info!(
            secret = %answer.path,
            version = answer.version,
            spiffe_id = %answer.spiffe_id,
            file = %target.out.path.display(),
            "wrote the secret"
        );
        *known = Some(answer.version);
        if plan.once {
            return Ok(Ended::Done);
        }
        super::notify(&plan.notify).await;
    }
}

fn write(target: &SecretTarget, value: &[u8]) -> Result<(), Stop> {
    let path = &target.out.path;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        vouch_fs::create_dir(dir, 0o755).map_err(|e| Stop::Fatal(e.into()))?;
    }
    let (uid, gid) = target.owner;
    vouch_fs::replace_owned(path, value, target.out.mode, uid, gid).map_err(|e| Stop::Fatal(e.into()))
}
