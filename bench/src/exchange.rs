//! Token exchange against OpenBao's JWT login: the same kind of token (ES256, from one external
//! issuer whose public key both systems trust), the same client (8 keep-alive HTTP/1.1 connections on
//! one thread), the same number of requests, same run. vouch's `POST /v1/token` (RFC 8693, on its
//! OIDC listener, plain HTTP) verifies the token, matches a rule, records the token so it cannot be
//! presented again and mints a JWT-SVID; OpenBao's `auth/jwt/login` (plain HTTP, `-dev`) verifies
//! it against `jwt_validation_pubkeys`, checks the role's bound audience and subject and creates a
//! token. vouch refuses replays, so every request of both carries a fresh token, all minted before
//! the timed part.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _, Result};
use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::api::BaoConn;

const ISSUER: &str = "https://ci.bench.example";
const FORM: &str = "application/x-www-form-urlencoded";

struct Options {
    vouch: PathBuf,
    bao_addr: String,
    bao_token: String,
    count: usize,
    clients: usize,
}

fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        vouch: PathBuf::new(),
        bao_addr: String::new(),
        bao_token: "root".into(),
        count: 5000,
        clients: 8,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--vouch" => o.vouch = PathBuf::from(val()?),
            "--bao-addr" => o.bao_addr = val()?,
            "--bao-token" => o.bao_token = val()?,
            "--count" => o.count = val()?.parse()?,
            "--clients" => o.clients = val()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    if o.vouch.as_os_str().is_empty() || o.bao_addr.is_empty() {
        bail!("--vouch BIN and --bao-addr URL are required");
    }
    Ok(o)
}

/// `count` distinct tokens (own `jti`) for audience `vouch`, subject `bench`, valid 10 minutes.
fn mint_tokens(issuer: &vouch_ca::testing::EcJwtIssuer, count: usize, tag: &str) -> Vec<String> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    (0..count)
        .map(|i| {
            issuer.sign(&json!({"iss": ISSUER, "sub": "bench", "aud": "vouch", "iat": now, "exp": now + 600,
                "jti": format!("{tag}-{i}")}))
        })
        .collect()
}

/// One timed run: `clients` connections share the tokens; each request takes the next one.
struct Run {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn print(&self, name: &str) {
        let p = |q: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
            self.latencies.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
        };
        println!(
            "  {name:<40} {:>8.0} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} tokens)",
            self.rate(),
            p(0.5),
            p(0.99),
            self.count
        );
    }
}

/// Sends one request per token over `clients` keep-alive connections to `addr`; `request` makes a
/// token's path, content type and body, and every answer must be 200.
async fn run(
    addr: &str,
    clients: usize,
    tokens: Vec<String>,
    request: fn(&str) -> (&'static str, &'static str, Bytes),
) -> Result<Run> {
    let tokens = Arc::new(tokens);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (tokens, next) = (tokens.clone(), next.clone());
        let mut conn = BaoConn::connect(addr, None).await?;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(i) else { break };
                let (path, content_type, body) = request(token);
                let t = Instant::now();
                let (status, answer) = conn.send("POST", path, content_type, body).await?;
                if status != 200 {
                    bail!("{path} answered {status}: {}", String::from_utf8_lossy(&answer));
                }
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = crate::api::gather(tasks).await?;
    let elapsed = start.elapsed();
    latencies.sort();
    Ok(Run { count: latencies.len(), elapsed, latencies })
}

fn vouch_request(token: &str) -> (&'static str, &'static str, Bytes) {
    let body = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token={token}\
         &subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&audience=bao"
    );
    ("/v1/token", FORM, Bytes::from(body))
}

fn bao_request(token: &str) -> (&'static str, &'static str, Bytes) {
    let body = json!({"role": "bench", "jwt": token}).to_string();
    ("/v1/auth/jwt/login", "application/json", Bytes::from(body))
}

/// A vouch server trusting the issuer (its JWKS in a file), with the OIDC listener on plain HTTP
/// and the per-issuer limit off (the benchmark measures capacity, not the configured policy).
fn start_vouch(o: &Options, jwks: &str) -> Result<(crate::api::VouchProcess, String)> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let jwks_file = dir.join("issuer-jwks.json");
    std::fs::write(&jwks_file, jwks)?;
    let config = dir.join("vouch.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\ndata_dir = \"{data}\"\n[server]\nlisten = \"off\"\n[log]\nlevel = \"warn\"\n\
             [ca]\njwt_issuer = \"http://127.0.0.1:{port}\"\n[oidc]\nlisten = \"127.0.0.1:{port}\"\nallow_http_issuer = true\n\
             [token_exchange]\nper_second = 0\n\
             [[token_exchange.issuer]]\nissuer = \"{ISSUER}\"\njwks_file = \"{jwks}\"\n\
             [[token_exchange.rule]]\nname = \"bench\"\nissuer = \"{ISSUER}\"\naudience = \"vouch\"\nsubject = \"bench\"\n\
             spiffe_id = \"spiffe://example.org/bench/ci\"\n",
            data = dir.join("data").display(),
            jwks = jwks_file.display(),
        ),
    )?;
    let child = Command::new(&o.vouch)
        .args(["server", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", o.vouch.display()))?;
    Ok((crate::api::VouchProcess::new(child, tmp), format!("127.0.0.1:{port}")))
}

async fn wait_listening(addr: &str) -> Result<()> {
    for _ in 0..400 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listens on {addr}")
}

/// OpenBao's JWT auth with the issuer's public key and a role bound to the audience and subject.
async fn setup_openbao(o: &Options, addr: &str, public_pem: &str) -> Result<()> {
    let mut c = BaoConn::connect(addr, None).await?;
    let setup: [(&str, Value); 3] = [
        ("/v1/sys/auth/jwt", json!({"type": "jwt"})),
        (
            "/v1/auth/jwt/config",
            json!({"jwt_validation_pubkeys": [public_pem], "jwt_supported_algs": ["ES256"], "bound_issuer": ISSUER}),
        ),
        (
            "/v1/auth/jwt/role/bench",
            json!({"role_type": "jwt", "bound_audiences": ["vouch"], "bound_subject": "bench", "user_claim": "sub",
                "token_policies": ["default"], "token_ttl": "5m"}),
        ),
    ];
    for (path, body) in setup {
        let (status, v) = c.call("POST", path, &o.bao_token, &body).await?;
        // Run again against the same OpenBao, the mount is there already; config and role are rewritten.
        let mounted_before = status == 400 && memchr::memmem::find(&v, b"path is already in use").is_some();
        if !(200..300).contains(&status) && !mounted_before {
            bail!("OpenBao {path} answered {status}: {}", String::from_utf8_lossy(&v));
        }
    }
    Ok(())
}

/// The `exchange` subcommand.
pub fn run_exchange(args: &[String]) -> Result<()> {
    let o = options(args)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let issuer = vouch_ca::testing::EcJwtIssuer::new("bench-1");
        let (_vouch, vouch_addr) = start_vouch(&o, &issuer.jwks())?;
        let bao_addr = o.bao_addr.trim_start_matches("http://").trim_end_matches('/').to_owned();
        setup_openbao(&o, &bao_addr, &issuer.public_pem()).await?;
        wait_listening(&vouch_addr).await?;
        println!(
            "Token exchange: an ES256 token of an external issuer for a credential, {} fresh tokens each (minted before timing), {} clients, plain HTTP:",
            o.count, o.clients
        );
        // Warm both up with tokens of their own.
        run(&vouch_addr, o.clients, mint_tokens(&issuer, 200, "vouch-warm"), vouch_request).await?;
        run(&bao_addr, o.clients, mint_tokens(&issuer, 200, "bao-warm"), bao_request).await?;

        let vouch_tokens = mint_tokens(&issuer, o.count, "vouch");
        let replay = vouch_tokens.first().cloned().ok_or_else(|| anyhow!("--count must be at least 1"))?;
        let vouch = run(&vouch_addr, o.clients, vouch_tokens, vouch_request).await?;
        let bao = run(&bao_addr, o.clients, mint_tokens(&issuer, o.count, "bao"), bao_request).await?;
        vouch.print("vouch POST /v1/token (RFC 8693)");
        bao.print("OpenBao auth/jwt/login");

        // The same token presented again: vouch refuses it, OpenBao logs in again.
        let (path, ct, body) = vouch_request(&replay);
        let vouch_replay = BaoConn::connect(&vouch_addr, None).await?.send("POST", path, ct, body).await?.0;
        let (path, ct, body) = bao_request(&replay);
        let bao_replay = BaoConn::connect(&bao_addr, None).await?.send("POST", path, ct, body).await?.0;
        println!("  a replayed token: vouch answers {vouch_replay} (refused), OpenBao answers {bao_replay}");
        if vouch_replay == 200 {
            bail!("vouch accepted a replayed token");
        }
        let ratio = vouch.rate() / bao.rate();
        println!(
            "RESULT exchange_vs_openbao_jwt_login={ratio:.2} {}",
            if ratio >= 10.0 { "PASS (target >= 10x)" } else { "BELOW TARGET (10x)" }
        );
        Ok(())
    })
}
