//! One process of simulated agents for the scale benchmark (`vouch-bench scale-agents`, started by
//! `vouch-bench scale`, never by hand).
//!
//! Each simulated agent does what a `vouch agent` does on the wire and nothing else: it generates
//! its own P-256 key, attests with its own join token, keeps its own agent SVID, opens its own mTLS
//! connection to the server and follows the real sync stream, holding its entries in a
//! `HashMap<EntryId, Entry>` as the real agent's registry does. Thousands of them share one process
//! (and one thread) so that 10,000 agents fit on the machine that also runs the server; they are
//! spread over a few processes so that no process needs more than a few thousand descriptors and the
//! load generator's work is spread over the cores like the agents' would be.
//!
//! The coordinator talks to this process over its standard streams, one line per message.
//! Commands on stdin: `sync` (open every agent's stream), `mem` (report memory), end of input (exit:
//! so a coordinator that dies takes its workers with it). Lines on stdout:
//! - `attested <agents> <seconds>`: every agent has its SVID;
//! - `snap <agent> <entries> <unix ns>`: an agent's first snapshot arrived;
//! - `retry <agent> <reason>`: opening a stream failed and is retried (as a real agent would);
//! - `up <entry id> <unix ns>`: an agent's stream delivered a created or changed entry;
//! - `mem <rss at start KiB> <rss KiB> <rss with a copy of every entry map KiB> <entries>`;
//! - `err <message>`: the process stops; the coordinator fails the run.
//!
//! Times are wall-clock Unix nanoseconds, so the coordinator (another process) can subtract the time
//! it sent a change from the time an agent received it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use hyper::body::Bytes;
use vouch_api::agent::{AgentSvid, JoinTokenAttestation, SyncLine};
use vouch_api::{paths, Der, Entry, EntryId};
use vouch_client::AdminClient;

/// Attestations in flight per process (each on its own keep-alive connection).
const ATTEST_CONNECTIONS: usize = 4;
/// How long opening one stream and reading its snapshot may take before the agent retries.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an agent keeps retrying before the process gives up.
const OPEN_DEADLINE: Duration = Duration::from_secs(900);

/// One simulated agent's entries, as the real agent's registry holds them.
type Held = Arc<Mutex<HashMap<EntryId, Entry>>>;

struct Options {
    addr: String,
    bundle: PathBuf,
    tokens: PathBuf,
    concurrency: usize,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o =
        Options { addr: String::new(), bundle: PathBuf::new(), tokens: PathBuf::new(), concurrency: 64 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--addr" => o.addr = val()?,
            "--bundle" => o.bundle = PathBuf::from(val()?),
            "--tokens" => o.tokens = PathBuf::from(val()?),
            "--concurrency" => o.concurrency = val()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    if o.addr.is_empty() || o.tokens.as_os_str().is_empty() {
        bail!("--addr and --tokens are required");
    }
    Ok(o)
}

/// Wall-clock Unix nanoseconds.
pub(crate) fn unix_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// The `scale-agents` subcommand.
pub fn run(args: &[String]) -> Result<()> {
    let o = options(args)?;
    // One thread: the machine's cores belong to the server under test; the agents mostly wait.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    if let Err(e) = rt.block_on(work(o)) {
        println!("err {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
    Ok(())
}

/// Reads the coordinator's commands on a thread of its own (stdin is a blocking pipe); end of input
/// ends the process.
fn commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {
                    if tx.send(line.trim().to_owned()).is_err() {
                        std::process::exit(0);
                    }
                }
            }
        }
    });
    rx
}

async fn work(o: Options) -> Result<()> {
    let start_rss = crate::agent::rss_kib(std::process::id());
    let mut cmds = commands();
    let td = vouch_core::TrustDomain::new("example.org")?;
    let bundle_pem = std::fs::read_to_string(&o.bundle).context("bundle")?;
    let tokens: Vec<(usize, String)> = std::fs::read_to_string(&o.tokens)
        .context("tokens")?
        .lines()
        .filter_map(|l| l.split_once(' ').and_then(|(i, t)| Some((i.parse().ok()?, t.to_owned()))))
        .collect();

    // Attestation: each agent its own key and join token, over a few keep-alive connections (a
    // fresh connection per attestation would only measure the loopback's TIME_WAIT handling).
    let anon = AdminClient::tls(&o.addr, &td, &bundle_pem, None)?.with_timeout(OPEN_TIMEOUT);
    let started = Instant::now();
    let shares: Vec<Vec<(usize, String)>> = (0..ATTEST_CONNECTIONS)
        .map(|c| tokens.iter().skip(c).step_by(ATTEST_CONNECTIONS).cloned().collect())
        .collect();
    let mut tasks = Vec::new();
    for share in shares {
        let (anon, addr, td, bundle_pem) = (anon.clone(), o.addr.clone(), td.clone(), bundle_pem.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = anon.connect().await?;
            let mut out = Vec::with_capacity(share.len());
            for (idx, token) in share {
                let key = vouch_ca::WorkloadKey::generate()?;
                let body = Bytes::from(serde_json::to_vec(&JoinTokenAttestation {
                    token,
                    csr: Der(key.csr_der()?),
                })?);
                let answer = tokio::time::timeout(
                    OPEN_TIMEOUT,
                    conn.send_answer("POST", paths::ATTEST_JOIN_TOKEN, Some(body)),
                )
                .await
                .map_err(|_| anyhow!("attestation of agent {idx} timed out"))??;
                let svid: AgentSvid =
                    answer.decode().with_context(|| format!("attestation of agent {idx}"))?;
                let chain: String =
                    svid.cert_chain.iter().map(|d| vouch_ca::pem::encode("CERTIFICATE", &d.0)).collect();
                let client = AdminClient::tls(&addr, &td, &bundle_pem, Some((&chain, &key.pkcs8_pem())))?
                    .with_timeout(OPEN_TIMEOUT);
                out.push((idx, client));
            }
            Ok::<_, anyhow::Error>(out)
        }));
    }
    let mut agents = Vec::with_capacity(tokens.len());
    for t in tasks {
        agents.extend(t.await??);
    }
    println!("attested {} {:.3}", agents.len(), started.elapsed().as_secs_f64());

    wait_for(&mut cmds, "sync").await?;
    // Opening is bounded (`concurrency` streams opening at once per process), as a fleet's
    // reconnections are spread by their backoff; a failed open is retried with backoff, as the real
    // agent's sync loop does.
    let opening = Arc::new(tokio::sync::Semaphore::new(o.concurrency.max(1)));
    let (fail_tx, mut fail_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut held: Vec<Held> = Vec::with_capacity(agents.len());
    for (idx, client) in agents {
        let map: Held = Arc::default();
        held.push(map.clone());
        let (opening, fail_tx) = (opening.clone(), fail_tx.clone());
        tokio::spawn(async move {
            if let Err(e) = follow(idx, &client, &opening, &map).await {
                let _ = fail_tx.send(format!("agent {idx}: {e:#}"));
            }
        });
    }
    drop(fail_tx);
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd.as_deref() {
                Some("mem") => {
                    let rss = crate::agent::rss_kib(std::process::id());
                    // Copies of every map, laid out as the first (a clone keeps the table's size):
                    // what one adds to the RSS is what the entries cost, without the connections,
                    // SVIDs and runtime the first reading also holds. The first copy only fills the
                    // memory the allocator kept from freed buffers (the snapshots' text, say), which
                    // would hide part of the cost; the second is measured.
                    let copy = |held: &[Held]| -> Vec<HashMap<EntryId, Entry>> {
                        held.iter().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()).clone()).collect()
                    };
                    let first = copy(&held);
                    let before = crate::agent::rss_kib(std::process::id());
                    let second = copy(&held);
                    let after = crate::agent::rss_kib(std::process::id());
                    let entries: usize = second.iter().map(HashMap::len).sum();
                    println!("mem {start_rss} {rss} {} {entries}", rss + after.saturating_sub(before));
                    drop((first, second));
                }
                Some(other) => bail!("unknown command `{other}`"),
                None => return Ok(()),
            },
            failed = fail_rx.recv() => if let Some(why) = failed { bail!("{why}") },
        }
    }
}

async fn wait_for(cmds: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> Result<()> {
    match cmds.recv().await.as_deref() {
        Some(c) if c == what => Ok(()),
        other => bail!("expected `{what}`, got {other:?}"),
    }
}

/// Opens agent `idx`'s stream (retrying), reports its snapshot, then follows it: every upsert is
/// reported and applied, as the real agent applies it.
async fn follow(
    idx: usize,
    client: &AdminClient,
    opening: &tokio::sync::Semaphore,
    map: &Held,
) -> Result<()> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(250);
    let permit = opening.acquire().await?;
    let (mut stream, entries) = loop {
        let attempt = async {
            let mut stream = client.sync().await?;
            match stream.next().await {
                Some(Ok(SyncLine::Snapshot { entries, .. })) => Ok((stream, entries.into_owned())),
                Some(Ok(other)) => Err(anyhow!("the first line was not a snapshot: {other:?}")),
                Some(Err(e)) => Err(e.into()),
                None => Err(anyhow!("the stream ended before its snapshot")),
            }
        };
        match tokio::time::timeout(OPEN_TIMEOUT, attempt).await {
            Ok(Ok(opened)) => break opened,
            Ok(Err(e)) => println!("retry {idx} {}", format!("{e:#}").replace('\n', " ")),
            Err(_) => println!("retry {idx} no snapshot within {} s", OPEN_TIMEOUT.as_secs()),
        }
        if started.elapsed() > OPEN_DEADLINE {
            bail!("no snapshot within {} s", OPEN_DEADLINE.as_secs());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    };
    let at = unix_ns();
    drop(permit);
    let count = entries.len();
    *map.lock().unwrap_or_else(|p| p.into_inner()) = entries.into_iter().map(|e| (e.id.clone(), e)).collect();
    println!("snap {idx} {count} {at}");
    loop {
        let line = stream.next().await.ok_or_else(|| anyhow!("the server ended the stream"))??;
        match line {
            SyncLine::Upsert { entry } => {
                println!("up {} {}", entry.id, unix_ns());
                let entry = entry.into_owned();
                map.lock().unwrap_or_else(|p| p.into_inner()).insert(entry.id.clone(), entry);
            }
            SyncLine::Delete { id } => {
                map.lock().unwrap_or_else(|p| p.into_inner()).remove(&*id);
            }
            // The server starts over with a snapshot when a stream fell too far behind its events.
            SyncLine::Snapshot { entries, .. } => {
                println!("resnap {idx}");
                *map.lock().unwrap_or_else(|p| p.into_inner()) =
                    entries.into_owned().into_iter().map(|e| (e.id.clone(), e)).collect();
            }
            SyncLine::Bundle { .. } | SyncLine::Policies { .. } | SyncLine::Ping => {}
            SyncLine::Closed { reason, message } => bail!("closed by the server ({reason:?}): {message}"),
        }
    }
}
