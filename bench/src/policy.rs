//! Grants: how long one decision takes, and decisions per second over the API against OpenBao.
//!
//! In process: 10,000 registered workloads and 1,000 Cedar policies, `Engine::decide` per request
//! including the entity lookup (the workload's facts by SPIFFE ID, the resource built from the
//! request); the median and p99 of single decisions, against Cedar alone deciding the same requests
//! with the same 1,000 policies in one set (no index), as the reference.
//!
//! Over HTTP (with `--vouch` and `--bao-addr`): `POST /v1/authorize` on a vouch server holding the
//! same entries and policies (admin Unix socket, plain HTTP) against OpenBao's `sys/capabilities`
//! (plain HTTP, a token with one ACL policy) with the same client: 8 keep-alive connections on one
//! thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hyper::body::Bytes;
use serde_json::json;
use vouch_core::grant::{AccessRequest, Action, Resource, SecretPath};
use vouch_core::{Entry, EntryId, EntrySpec, SpiffeId, TrustDomain};
use vouch_policy::{Engine, Policies, PolicyDoc, Workloads};

use crate::api::BaoConn;

const ENTRIES: usize = 10_000;
const POLICIES: usize = 1_000;

struct Options {
    vouch: Option<PathBuf>,
    bao_addr: Option<String>,
    bao_token: String,
    seconds: u64,
    clients: usize,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options { vouch: None, bao_addr: None, bao_token: "root".into(), seconds: 5, clients: 8 };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--vouch" => o.vouch = Some(PathBuf::from(val()?)),
            "--bao-addr" => o.bao_addr = Some(val()?),
            "--bao-token" => o.bao_token = val()?,
            "--seconds" => o.seconds = val()?.parse()?,
            "--clients" => o.clients = val()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(o)
}

/// Workload `i`: `spiffe://example.org/svc/<i>`, in Kubernetes namespace `ns-<i % 20>`, owned by
/// team `<i % 50>`.
fn entry_spec(i: usize) -> serde_json::Value {
    json!({
        "id": format!("e{i}"),
        "spiffe_id": format!("spiffe://example.org/svc/{i}"),
        "parent_id": format!("spiffe://example.org/vouch/agent/node-{}", i % 100),
        "selectors": [format!("k8s:ns:ns-{}", i % 20), format!("k8s:sa:sa-{i}")],
        "owner": format!("team-{}", i % 50),
    })
}

fn entries() -> Result<Vec<Entry>> {
    let td = TrustDomain::new("example.org")?;
    (0..ENTRIES)
        .map(|i| {
            let spec: EntrySpec = serde_json::from_value(entry_spec(i))?;
            Ok(Entry::create(spec, EntryId::new(&format!("e{i}"))?, &td, 1000)?)
        })
        .collect()
}

/// 1,000 policies of the kinds a deployment writes: grants of one workload to its own secrets
/// (600), grants of one shared secret to a team (300), rules by namespace with open scopes (80),
/// and forbids (20), one of them deny-wins across everything.
fn policy_texts() -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(POLICIES);
    for i in 0..600 {
        out.push((
            format!("svc-{i}-own"),
            format!(
                r#"permit(principal == Workload::"spiffe://example.org/svc/{i}", action in [Action::"read", Action::"write"], resource is Secret) when {{ resource.path like "svc/{i}/*" }};"#
            ),
        ));
    }
    for j in 0..300 {
        out.push((
            format!("shared-{j}"),
            format!(
                r#"permit(principal, action == Action::"read", resource == Secret::"shared/key-{j}") when {{ principal.owners.contains("team-{}") }};"#,
                j % 50
            ),
        ));
    }
    for k in 0..80 {
        out.push((
            format!("ns-rule-{k}"),
            format!(
                r#"permit(principal, action == Action::"{}", resource is Secret) when {{ principal.k8s_namespaces.contains("ns-{}") && resource.path like "ns-{}/*" }};"#,
                if k < 40 { "read" } else { "write" },
                k % 20,
                k % 20
            ),
        ));
    }
    for f in 0..19 {
        out.push((
            format!("forbid-{f}"),
            format!(r#"forbid(principal == Workload::"spiffe://example.org/svc/{f}", action, resource == Secret::"shared/key-{f}");"#),
        ));
    }
    out.push((
        "no-root-secrets".into(),
        r#"forbid(principal, action, resource is Secret) when { resource.path like "root/*" };"#.into(),
    ));
    out
}

/// Requests spread over workloads and resources: own secrets, shared keys, namespace paths, root.
fn requests(n: usize) -> Result<Vec<AccessRequest>> {
    let mut out = Vec::with_capacity(n);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..n {
        // xorshift: a fixed, reproducible spread.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = (x % ENTRIES as u64) as usize;
        let path = match (x >> 20) % 4 {
            0 => format!("svc/{}/db", w % 700),
            1 => format!("shared/key-{}", (x >> 30) % 320),
            2 => format!("ns-{}/config", (x >> 30) % 20),
            _ => "root/ca".to_owned(),
        };
        out.push(AccessRequest {
            principal: SpiffeId::parse(&format!("spiffe://example.org/svc/{w}"))?,
            action: if (x >> 40).is_multiple_of(5) { Action::Write } else { Action::Read },
            resource: Resource::Secret(SecretPath::parse(&path)?),
        });
    }
    Ok(out)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(idx).copied().unwrap_or_default()
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Times each decision of `decide` over `reqs`, after a warm-up; sorted latencies and allows.
fn time_each(
    reqs: &[AccessRequest],
    mut decide: impl FnMut(&AccessRequest) -> bool,
) -> (Vec<Duration>, usize) {
    for r in reqs.iter().take(2000) {
        decide(r);
    }
    let mut lat = Vec::with_capacity(reqs.len());
    let mut allowed = 0;
    for r in reqs {
        let t = Instant::now();
        let allow = decide(r);
        lat.push(t.elapsed());
        allowed += usize::from(allow);
    }
    lat.sort();
    (lat, allowed)
}

/// The in-process part.
fn in_process() -> Result<()> {
    let t = Instant::now();
    let entries = entries()?;
    let workloads = Arc::new(Workloads::from_entries(&entries)?);
    let docs =
        policy_texts().iter().map(|(id, text)| PolicyDoc::parse(id, text)).collect::<Result<Vec<_>, _>>()?;
    let policies = Arc::new(Policies::new(docs)?);
    let engine = Engine::new(policies, workloads.clone());
    println!(
        "Grants in process: {} workloads, {} policies (parsed, validated and indexed in {:.0} ms):",
        workloads.len(),
        engine.policies.docs().len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let reqs = requests(200_000)?;
    let (lat, allowed) = time_each(&reqs, |r| engine.decide(r).allow);
    let median = percentile(&lat, 0.5);
    println!(
        "  vouch Engine::decide (entity lookup + indexed Cedar)   median {:>6.2} us   p99 {:>6.2} us   ({} decisions, {} allowed)",
        micros(median),
        micros(percentile(&lat, 0.99)),
        lat.len(),
        allowed
    );

    // The reference: Cedar alone, every policy in one set, same requests and entities.
    let reqs_small = &reqs[..20_000];
    let (cedar_lat, cedar_allowed) =
        time_each(reqs_small, |r| engine.policies.decide_unindexed(r, &workloads).allow);
    // The same answers, or the index is wrong.
    let (_, indexed_allowed) = time_each(reqs_small, |r| engine.decide(r).allow);
    if indexed_allowed != cedar_allowed {
        bail!("the index changed answers: {indexed_allowed} allowed vs Cedar's {cedar_allowed}");
    }
    let cedar_median = percentile(&cedar_lat, 0.5);
    println!(
        "  Cedar alone, all {} policies in one set                median {:>6.2} us   p99 {:>6.2} us   ({} decisions, same answers)",
        engine.policies.docs().len(),
        micros(cedar_median),
        micros(percentile(&cedar_lat, 0.99)),
        cedar_lat.len()
    );
    println!("  index speed-up over Cedar alone: {:.1}x", cedar_median.as_secs_f64() / median.as_secs_f64());
    println!(
        "RESULT policy_decide_median_us={:.2} {}",
        micros(median),
        if median <= Duration::from_micros(5) { "PASS (target <= 5 us)" } else { "ABOVE TARGET (5 us)" }
    );
    Ok(())
}

/// `POST /v1/authorize` against OpenBao's `sys/capabilities`.
async fn over_http(o: &Options, vouch: &PathBuf, bao_addr: &str) -> Result<()> {
    let (proc, local, _data) = crate::api::start_vouch_with(vouch, &[]).await?;
    let _ = proc.pid();
    // 10,000 entries in batches, 1,000 policies one by one (each a version, audited).
    let specs: Vec<EntrySpec> =
        (0..ENTRIES).map(|i| serde_json::from_value(entry_spec(i))).collect::<Result<_, _>>()?;
    for chunk in specs.chunks(500) {
        local
            .entries()
            .create_batch(&vouch_api::admin::BatchCreateRequest { entries: chunk.to_vec() })
            .await?;
    }
    for (id, text) in policy_texts() {
        local.policies().put(&id, &text, None).await?;
    }
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        requests(4096)?.iter().map(|r| Ok(Bytes::from(serde_json::to_vec(r)?))).collect::<Result<_>>()?,
    );

    // OpenBao: one ACL policy on a token; the question is what that token may do on a path.
    let bao = bao_addr.trim_start_matches("http://").trim_end_matches('/').to_owned();
    let mut c = BaoConn::connect(&bao, None).await?;
    let policy = r#"path "secret/data/svc/1/*" { capabilities = ["read"] }"#;
    let (s, v) =
        c.call("PUT", "/v1/sys/policies/acl/bench-svc", &o.bao_token, &json!({"policy": policy})).await?;
    if !(200..300).contains(&s) {
        bail!("OpenBao policy write answered {s}: {}", String::from_utf8_lossy(&v));
    }
    let (s, v) = c
        .call("POST", "/v1/auth/token/create", &o.bao_token, &json!({"policies": ["bench-svc"], "ttl": "1h"}))
        .await?;
    if s != 200 {
        bail!("OpenBao token create answered {s}: {}", String::from_utf8_lossy(&v));
    }
    let answer: serde_json::Value = serde_json::from_slice(&v)?;
    let token = answer["auth"]["client_token"].as_str().ok_or_else(|| anyhow!("no client_token"))?.to_owned();
    let bao_body = Bytes::from(json!({"token": token, "paths": ["secret/data/svc/1/db"]}).to_string());

    println!(
        "Decisions over HTTP, {} clients (one thread), {} s each, plain HTTP on both sides:",
        o.clients, o.seconds
    );
    let budget = Duration::from_secs(o.seconds);
    let vouch_run = {
        let mut tasks = Vec::new();
        for w in 0..o.clients {
            let mut conn = local.connect().await?;
            let bodies = bodies.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let start = Instant::now();
                let mut i = w;
                while start.elapsed() < budget {
                    let body = bodies[i % bodies.len()].clone();
                    i += 7;
                    let t = Instant::now();
                    let (status, bytes) = conn.send("POST", vouch_api::paths::AUTHORIZE, Some(body)).await?;
                    if status != 200 {
                        bail!("vouch answered {status}: {}", String::from_utf8_lossy(&bytes));
                    }
                    lat.push(t.elapsed());
                }
                Ok(lat)
            }));
        }
        crate::api::gather(tasks).await?
    };
    let bao_run = {
        let mut tasks = Vec::new();
        for _ in 0..o.clients {
            let mut conn = BaoConn::connect(&bao, None).await?;
            let (body, root) = (bao_body.clone(), o.bao_token.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let start = Instant::now();
                while start.elapsed() < budget {
                    let t = Instant::now();
                    let (status, bytes) = conn
                        .call("POST", "/v1/sys/capabilities", &root, &serde_json::from_slice(&body)?)
                        .await?;
                    if status != 200 {
                        bail!("OpenBao answered {status}: {}", String::from_utf8_lossy(&bytes));
                    }
                    lat.push(t.elapsed());
                }
                Ok(lat)
            }));
        }
        crate::api::gather(tasks).await?
    };
    let report = |name: &str, mut lat: Vec<Duration>| {
        lat.sort();
        let rate = lat.len() as f64 / budget.as_secs_f64();
        println!(
            "  {name:<44} {rate:>8.0} decisions/s   p50 {:>6.3} ms   p99 {:>6.3} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3
        );
        rate
    };
    let v = report("vouch POST /v1/authorize (admin socket)", vouch_run);
    let b = report("OpenBao sys/capabilities", bao_run);
    println!("RESULT authorize_vs_openbao_capabilities={:.2}", v / b);
    Ok(())
}

/// The `policy` subcommand.
pub fn run(args: &[String]) -> Result<()> {
    let o = options(args)?;
    in_process()?;
    if let (Some(vouch), Some(bao)) = (&o.vouch, &o.bao_addr) {
        println!();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(over_http(&o, vouch, bao))?;
    }
    Ok(())
}
