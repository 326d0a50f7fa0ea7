//! The IdP-DDoS case (issue 9 §3): a legitimate agent's signing latency (p99) while a flood of
//! 10,000 bogus node attestations arrives from one address, sent as fast as the load generator can
//! from a few tasks, against the same agent's latency without the flood, on a real `vouch server`.
//!
//! The server runs with its default limits, except the per-agent signing limit, which is turned
//! off so the measuring agent can sign in a closed loop (as fast as one client can) for the whole
//! window; the flood meets the default per-source attestation limit (10/s, burst 20).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hyper::body::Bytes;
use vouch_api::admin::JoinTokenRequest;
use vouch_api::agent::{JoinTokenAttestation, SignItem, SignRequest};
use vouch_api::{paths, Der, EntrySpec, SpiffeId};
use vouch_client::AdminClient;

const AGENT_ID: &str = "spiffe://example.org/agent/bench-flood";
const BOGUS: usize = 10_000;
const FLOOD_TASKS: usize = 4;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Signs one CSR per request on one keep-alive connection until `stop` is set (or `max` requests
/// are done); the latencies, sorted.
async fn sign_loop(agent: &AdminClient, body: Bytes, stop: &AtomicBool, max: usize) -> Result<Vec<Duration>> {
    let mut conn = agent.connect().await?;
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) && lat.len() < max {
        let t = Instant::now();
        let answer = conn.send_answer("POST", paths::AGENT_SIGN, Some(body.clone())).await?;
        lat.push(t.elapsed());
        if answer.status != 200 || memchr::memmem::find(&answer.body, b"\"svid\"").is_none() {
            bail!("signing answered {}: {}", answer.status, String::from_utf8_lossy(&answer.body));
        }
    }
    lat.sort();
    Ok(lat)
}

/// The `flood` subcommand.
pub fn run(args: &[String]) -> Result<()> {
    let mut vouch = PathBuf::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--vouch" => vouch = PathBuf::from(it.next().ok_or_else(|| anyhow!("--vouch needs a value"))?),
            other => bail!("unknown option {other}"),
        }
    }
    if vouch.as_os_str().is_empty() {
        bail!("--vouch BIN is required");
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(measure(&vouch))
}

async fn measure(vouch: &PathBuf) -> Result<()> {
    let (_proc, local, data) =
        crate::api::start_vouch_with(vouch, &[("VOUCH_LIMITS_SIGN_PER_SECOND", "0")]).await?;
    let addr = std::fs::read_to_string(data.join("server.addr"))?.trim().to_owned();
    let td = vouch_core::TrustDomain::new("example.org")?;
    let bundle = local.bundle_pem().await?;
    let anon = AdminClient::tls(&addr, &td, &bundle, None)?;

    // The legitimate agent: attested with a join token, one entry, one CSR signed per request.
    let agent_id = SpiffeId::parse(AGENT_ID)?;
    let token = local
        .create_join_token(&JoinTokenRequest { agent_id: Some(agent_id.clone()), ..Default::default() })
        .await?;
    let key = vouch_ca::WorkloadKey::generate()?;
    let svid = anon
        .attest_join_token(&JoinTokenAttestation { token: token.token, csr: Der(key.csr_der()?) })
        .await?;
    let chain: String = svid.cert_chain.iter().map(|d| vouch_ca::pem::encode("CERTIFICATE", &d.0)).collect();
    let key_pem = vouch_ca::pem::encode("PRIVATE KEY", &key.pkcs8);
    let agent = AdminClient::tls(&addr, &td, &bundle, Some((&chain, &key_pem)))?;
    let entry: EntrySpec = serde_json::from_value(serde_json::json!({
        "id": "flood-web", "spiffe_id": "spiffe://example.org/bench/flood-web", "parent_id": AGENT_ID,
        "selectors": ["unix:uid:1000"]
    }))?;
    local.entries().create(&entry).await?;
    let workload = vouch_ca::WorkloadKey::generate()?;
    let sign = SignRequest {
        requests: vec![SignItem {
            entry_id: vouch_api::EntryId::new("flood-web")?,
            csr: Der(workload.csr_der()?),
        }],
    };
    let body = Bytes::from(serde_json::to_vec(&sign)?);

    // Warm-up, then the baseline: the same closed loop without a flood.
    let never = AtomicBool::new(false);
    sign_loop(&agent, body.clone(), &never, 200).await?;
    let quiet = sign_loop(&agent, body.clone(), &never, 3_000).await?;

    // The flood: 10,000 bogus join tokens from FLOOD_TASKS keep-alive connections, while the agent
    // signs in its closed loop until the flood is over.
    let stop = Arc::new(AtomicBool::new(false));
    let (limited, refused, other) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let bogus = Bytes::from(serde_json::to_vec(&JoinTokenAttestation {
        token: "bogus-token-0123456789abcdef".into(),
        csr: Der(workload.csr_der()?),
    })?);
    let measuring = {
        let (agent, body, stop) = (agent.clone(), body.clone(), stop.clone());
        tokio::spawn(async move { sign_loop(&agent, body, &stop, usize::MAX).await })
    };
    let flood_started = Instant::now();
    let mut flooders = Vec::new();
    for t in 0..FLOOD_TASKS {
        let (anon, bogus) = (anon.clone(), bogus.clone());
        let (limited, refused, other) = (limited.clone(), refused.clone(), other.clone());
        let share = BOGUS * (t + 1) / FLOOD_TASKS - BOGUS * t / FLOOD_TASKS;
        flooders.push(tokio::spawn(async move {
            let mut conn = anon.connect().await?;
            for _ in 0..share {
                let answer = conn.send_answer("POST", paths::ATTEST_JOIN_TOKEN, Some(bogus.clone())).await?;
                match answer.status {
                    429 => limited.fetch_add(1, Ordering::Relaxed),
                    401 => refused.fetch_add(1, Ordering::Relaxed),
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for f in flooders {
        f.await??;
    }
    let flood_took = flood_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let flooded = measuring.await??;
    let (text_status, metrics) = local.request("GET", paths::METRICS, None).await?;
    let metrics =
        if text_status == 200 { String::from_utf8_lossy(&metrics).into_owned() } else { String::new() };
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or("?")
            .to_owned()
    };

    println!("Signing under an attestation flood ({BOGUS} bogus join tokens from one address, {FLOOD_TASKS} keep-alive connections):");
    println!(
        "  flood: {:.2} s, {:.0} attempts/s; answers: {} x 429 rate_limited, {} x 401, {} other",
        flood_took.as_secs_f64(),
        BOGUS as f64 / flood_took.as_secs_f64(),
        limited.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed)
    );
    println!(
        "  server: store writes {}, refusal log lines suppressed {}",
        metric("vouch_store_write_transactions_total"),
        metric("vouch_log_lines_suppressed_total")
    );
    println!(
        "  legitimate agent, no flood:     p50 {:>6.2} ms  p99 {:>6.2} ms  ({} signatures)",
        ms(percentile(&quiet, 0.5)),
        ms(percentile(&quiet, 0.99)),
        quiet.len()
    );
    println!(
        "  legitimate agent, during flood: p50 {:>6.2} ms  p99 {:>6.2} ms  ({} signatures)",
        ms(percentile(&flooded, 0.5)),
        ms(percentile(&flooded, 0.99)),
        flooded.len()
    );
    let ratio = percentile(&flooded, 0.99).as_secs_f64() / percentile(&quiet, 0.99).as_secs_f64().max(1e-9);
    println!("RESULT flood sign_p99_ratio={ratio:.2} (p99 during the flood / p99 without)");
    Ok(())
}
