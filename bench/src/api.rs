//! Issuance over HTTP: vouch's admin API against OpenBao's `pki/issue`, each with a fresh P-256 key
//! and certificate per request, 8 concurrent keep-alive clients, same machine, same run.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use vouch_api::admin::MintX509Request;
use vouch_api::{paths, EntrySpec, SpiffeId};
use vouch_client::AdminClient;

use crate::procstat::{Costs, ProcStat};

pub(crate) struct Options {
    pub(crate) vouch: PathBuf,
    pub(crate) bao_addr: Option<String>,
    pub(crate) bao_tls_addr: Option<String>,
    pub(crate) bao_tls_ca: Option<PathBuf>,
    pub(crate) bao_token: String,
    pub(crate) seconds: u64,
    pub(crate) clients: usize,
    /// Process ids of the OpenBao servers, for their CPU time and context switches.
    pub(crate) bao_pid: Option<u32>,
    pub(crate) bao_tls_pid: Option<u32>,
}

pub(crate) fn options(args: &[String]) -> Result<Options> {
    let mut o = Options {
        vouch: PathBuf::new(),
        bao_addr: None,
        bao_tls_addr: None,
        bao_tls_ca: None,
        bao_token: "root".into(),
        seconds: 10,
        clients: 8,
        bao_pid: None,
        bao_tls_pid: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().ok_or_else(|| anyhow!("{a} needs a value"));
        match a.as_str() {
            "--vouch" => o.vouch = PathBuf::from(val()?),
            "--bao-addr" => o.bao_addr = Some(val()?),
            "--bao-tls-addr" => o.bao_tls_addr = Some(val()?),
            "--bao-tls-ca" => o.bao_tls_ca = Some(PathBuf::from(val()?)),
            "--bao-token" => o.bao_token = val()?,
            "--seconds" => o.seconds = val()?.parse()?,
            "--clients" => o.clients = val()?.parse()?,
            "--bao-pid" => o.bao_pid = Some(val()?.parse()?),
            "--bao-tls-pid" => o.bao_tls_pid = Some(val()?.parse()?),
            other => bail!("unknown option {other}"),
        }
    }
    if o.vouch.as_os_str().is_empty() {
        bail!("--vouch BIN is required");
    }
    Ok(o)
}

/// Latencies of one run.
pub(crate) struct Run {
    count: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// What the server process spent (when its pid is known).
    server: Option<ProcStat>,
    /// What the load generator (this process) spent.
    client: ProcStat,
}

impl Run {
    pub(crate) fn count(&self) -> usize {
        self.count
    }
    pub(crate) fn rate(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64()
    }
    fn percentile(&self, p: f64) -> Duration {
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(idx).copied().unwrap_or_default()
    }
    pub(crate) fn print(&self, name: &str) {
        self.print_as(name, "certs/s", "certificates");
    }
    /// [`Run::print`] for requests of another kind (`reads/s`, `reads`).
    pub(crate) fn print_as(&self, name: &str, unit: &str, items: &str) {
        self.print_for(name, unit, items, "server");
    }

    /// [`Run::print_as`], the measured process named `process` (`agent`, say).
    pub(crate) fn print_for(&self, name: &str, unit: &str, items: &str, process: &str) {
        println!(
            "  {name:<34} {:>8.0} {unit}   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} {items})",
            self.rate(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3,
            self.count
        );
        if let Some(server) = &self.server {
            println!("  {:<34} {process} {}", "", server.per_request(self.count));
        }
        println!("  {:<34} client {}", "", self.client.per_request(self.count));
    }
}

/// Runs `clients` workers (tasks on the one client thread), each calling `one` in a loop until the
/// deadline.
pub(crate) async fn load<F, Fut>(
    clients: usize,
    seconds: u64,
    server_pid: Option<u32>,
    make: impl Fn() -> F,
) -> Result<Run>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let costs = Costs::start(server_pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut one = make();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                one().await?;
                lat.push(t.elapsed());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut latencies = gather(tasks).await?;
    let elapsed = start.elapsed();
    let (server, client) = costs.finish();
    latencies.sort();
    Ok(Run { count: latencies.len(), elapsed, latencies, server, client })
}

/// Waits for every worker and gathers their latencies (unsorted); the first error stops it.
pub(crate) async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<Duration>>>>,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(latencies)
}

pub(crate) struct VouchProcess {
    child: Child,
    _dir: tempfile::TempDir,
}

impl VouchProcess {
    /// A started server whose files live in `dir` (removed when the process is).
    pub(crate) fn new(child: Child, dir: tempfile::TempDir) -> Self {
        Self { child, _dir: dir }
    }

    /// The server's process id (for its RSS).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for VouchProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_vouch(bin: &PathBuf) -> Result<(VouchProcess, AdminClient, PathBuf)> {
    start_vouch_with(bin, &[]).await
}

/// A `vouch server run` with extra environment (`VOUCH_LIMITS_*`, say); its admin client and data dir.
pub(crate) async fn start_vouch_with(
    bin: &PathBuf,
    env: &[(&str, &str)],
) -> Result<(VouchProcess, AdminClient, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let child = Command::new(bin)
        .args(["server", "run"])
        .envs(env.iter().copied())
        .env("VOUCH_DATA_DIR", &data)
        .env("VOUCH_LISTEN", "127.0.0.1:0")
        .env("VOUCH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let proc = VouchProcess { child, _dir: dir };
    let local = AdminClient::unix(data.join("admin.sock"));
    for _ in 0..400 {
        if local.ready().await.map(|r| r.0).unwrap_or(false) {
            return Ok((proc, local, data));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("vouch server did not become ready")
}

/// Sends requests through `client` for `o.seconds` from `o.clients` workers, one keep-alive
/// connection each: `request` gives each request's method, path and body (built per request, as
/// the OpenBao clients build theirs), `check` judges the answer.
pub(crate) async fn vouch_requests(
    o: &Options,
    pid: u32,
    client: &AdminClient,
    request: impl Fn() -> Result<(&'static str, String, Option<Bytes>)> + Send + Sync + 'static,
    check: fn(u16, &[u8]) -> Result<()>,
) -> Result<Run> {
    let request = Arc::new(request);
    load(o.clients, o.seconds, Some(pid), || {
        let client = client.clone();
        let request = request.clone();
        // Each worker calls its closure sequentially, so this lock is never contended.
        let conn = Arc::new(tokio::sync::Mutex::new(None::<vouch_client::Connection>));
        move || {
            let (client, request, conn) = (client.clone(), request.clone(), conn.clone());
            async move {
                let mut guard = conn.lock().await;
                if guard.is_none() {
                    *guard = Some(client.connect().await?);
                }
                let c = guard.as_mut().ok_or_else(|| anyhow!("no connection"))?;
                let (method, path, body) = request()?;
                let (status, bytes) = c.send(method, &path, body).await?;
                check(status, &bytes)
            }
        }
    })
    .await
}

/// Issues X509-SVIDs through `client`, one keep-alive connection per worker.
pub(crate) async fn vouch_load(
    o: &Options,
    pid: u32,
    client: &AdminClient,
    body: Arc<MintX509Request>,
) -> Result<Run> {
    let request =
        move || Ok(("POST", paths::MINT_X509.to_owned(), Some(Bytes::from(serde_json::to_vec(&*body)?))));
    vouch_requests(o, pid, client, request, check_vouch).await
}

/// An admin client over mTLS: an admin entry for the benchmark and an X509-SVID minted for it
/// over the local socket, presented to the server's TCP listener (address in `data`).
pub(crate) async fn admin_tls_client(local: &AdminClient, data: &std::path::Path) -> Result<AdminClient> {
    let id = "spiffe://example.org/admin/bench";
    let admin: EntrySpec = serde_json::from_value(
        json!({"spiffe_id": id, "parent_id": "spiffe://example.org/vouch/server", "selectors": ["vouch:admin:bench"], "admin": true}),
    )?;
    local.entries().create(&admin).await?;
    let req = MintX509Request {
        spiffe_id: SpiffeId::parse(id)?,
        csr: None,
        ttl: None,
        dns_names: vec![],
        common_name: None,
    };
    let svid = local.mint_x509(&req).await?;
    let addr = std::fs::read_to_string(data.join("server.addr"))?.trim().to_owned();
    let td = vouch_core::TrustDomain::new("example.org")?;
    let key = svid.private_key_pem.as_deref().ok_or_else(|| anyhow!("the server generated no key"))?;
    Ok(AdminClient::tls(&addr, &td, &svid.bundle_pem, Some((&svid.cert_chain_pem, key)))?)
}

/// The request both issuance benchmarks send: an X509-SVID for `/bench/web` with a key the
/// server generates.
pub(crate) fn web_mint() -> Result<Arc<MintX509Request>> {
    Ok(Arc::new(MintX509Request {
        spiffe_id: SpiffeId::parse("spiffe://example.org/bench/web")?,
        csr: None,
        ttl: None,
        dns_names: vec![],
        common_name: None,
    }))
}

async fn vouch_runs(o: &Options) -> Result<(Run, Run)> {
    let (proc, local, data) = start_vouch(&o.vouch).await?;
    let body = web_mint()?;
    let unix = vouch_load(o, proc.pid(), &local, body.clone()).await?;
    // Over mTLS with an admin SVID.
    let tls = admin_tls_client(&local, &data).await?;
    let mtls = vouch_load(o, proc.pid(), &tls, body).await?;
    Ok((unix, mtls))
}

fn check_vouch(status: u16, bytes: &[u8]) -> Result<()> {
    if status != 200 {
        bail!("vouch answered {status}: {}", String::from_utf8_lossy(bytes));
    }
    check_issued(bytes)
}

/// Both systems' answers get the same cheap check: a certificate and a private key are in the body.
fn check_issued(body: &[u8]) -> Result<()> {
    let has = |needle: &[u8]| memchr::memmem::find(body, needle).is_some();
    if !has(b"BEGIN CERTIFICATE") || !has(b"PRIVATE KEY") {
        bail!("answer lacks a certificate or key: {}", String::from_utf8_lossy(body));
    }
    Ok(())
}

/// An HTTP/1.1 keep-alive connection to OpenBao (or any HTTP server), plain or over TLS (`-dev-tls`).
pub(crate) struct BaoConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
}

impl BaoConn {
    pub(crate) async fn connect(addr: &str, tls: Option<&tokio_rustls::TlsConnector>) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let sender = match tls {
            None => http1(stream).await?,
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).to_owned();
                let name = rustls::pki_types::ServerName::try_from(host)?;
                http1(tls.connect(name, stream).await?).await?
            }
        };
        Ok(Self { sender, host: addr.to_owned() })
    }

    /// A JSON request with an OpenBao token.
    pub(crate) async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: &str,
        body: &Value,
    ) -> Result<(u16, Bytes)> {
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.request(method, path, Some(token), "application/json", body).await
    }

    /// A request without a token.
    pub(crate) async fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes)> {
        self.request(method, path, None, content_type, body).await
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Bytes,
    ) -> Result<(u16, Bytes)> {
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", content_type);
        if let Some(token) = token {
            req = req.header("x-vault-token", token);
        }
        let req = req.body(Full::new(body))?;
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status().as_u16();
        Ok((status, resp.into_body().collect().await?.to_bytes()))
    }
}

/// An HTTP/1.1 client handshake on `io`, its connection driven by a task of its own.
async fn http1<IO>(io: IO) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// An OpenBao server to measure: its address, TLS connector (for a `-dev-tls` server) and token.
#[derive(Clone)]
pub(crate) struct Bao {
    pub(crate) addr: String,
    pub(crate) tls: Option<Arc<tokio_rustls::TlsConnector>>,
    pub(crate) token: String,
}

impl Bao {
    /// The server at `url`; `ca` is the CA file of a `-dev-tls` server (then `url` is https).
    pub(crate) fn new(o: &Options, url: &str, ca: Option<&PathBuf>) -> Result<Self> {
        let addr =
            url.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/').to_owned();
        let tls = match ca {
            Some(ca) => Some(Arc::new(
                vouch_tls::tls_connector(&vouch_tls::Trust::CaFile(ca.clone())).map_err(|e| anyhow!(e))?,
            )),
            None => None,
        };
        Ok(Self { addr, tls, token: o.bao_token.clone() })
    }

    /// A new keep-alive connection.
    pub(crate) async fn connect(&self) -> Result<BaoConn> {
        BaoConn::connect(&self.addr, self.tls.as_deref()).await
    }

    /// Runs setup calls in order, each answered with 2xx.
    pub(crate) async fn setup(&self, calls: &[(&str, &str, Value)]) -> Result<()> {
        let mut c = self.connect().await?;
        for (method, path, body) in calls {
            let (status, v) = c.call(method, path, &self.token, body).await?;
            if !(200..300).contains(&status) {
                bail!("OpenBao {method} {path} answered {status}: {}", String::from_utf8_lossy(&v));
            }
        }
        Ok(())
    }

    /// Sends `method path` with `body` from `o.clients` workers for `o.seconds`, one keep-alive
    /// connection each; `check` judges each answer.
    pub(crate) async fn requests(
        &self,
        o: &Options,
        pid: Option<u32>,
        method: &'static str,
        path: &str,
        body: Value,
        check: fn(u16, &[u8]) -> Result<()>,
    ) -> Result<Run> {
        let (path, body) = (Arc::new(path.to_owned()), Arc::new(body));
        load(o.clients, o.seconds, pid, || {
            let (bao, path, body) = (self.clone(), path.clone(), body.clone());
            let shared = Arc::new(tokio::sync::Mutex::new(None::<BaoConn>));
            move || {
                let (bao, path, body, shared) = (bao.clone(), path.clone(), body.clone(), shared.clone());
                async move {
                    let mut guard = shared.lock().await;
                    if guard.is_none() {
                        *guard = Some(bao.connect().await?);
                    }
                    let c = guard.as_mut().ok_or_else(|| anyhow!("no connection"))?;
                    let (status, v) = c.call(method, &path, &bao.token, &body).await?;
                    check(status, &v)
                }
            }
        })
        .await
    }
}

/// Sets up OpenBao's PKI engine at `url` and measures `pki/issue`; `ca` is the CA file of a
/// `-dev-tls` server (then `url` is https).
async fn openbao_run(o: &Options, url: &str, ca: Option<&PathBuf>, pid: Option<u32>) -> Result<Run> {
    let bao = Bao::new(o, url, ca)?;
    // PKI engine with an EC P-256 root and a role that issues SPIFFE-style certificates without
    // storing them (vouch does not store issued certificates either).
    bao.setup(&[
        ("POST", "/v1/sys/mounts/pki", json!({"type": "pki"})),
        ("POST", "/v1/sys/mounts/pki/tune", json!({"max_lease_ttl": "87600h"})),
        (
            "POST",
            "/v1/pki/root/generate/internal",
            json!({"common_name": "example.org", "ttl": "8760h", "key_type": "ec", "key_bits": 256}),
        ),
        (
            "POST",
            "/v1/pki/roles/svid",
            json!({"allow_any_name": true, "allowed_uri_sans": "spiffe://*", "key_type": "ec", "key_bits": 256, "ttl": "1h", "no_store": true, "require_cn": false}),
        ),
    ])
    .await?;
    let body = json!({"uri_sans": "spiffe://example.org/bench/web", "ttl": "1h", "common_name": "web"});
    let check = |status: u16, v: &[u8]| {
        if status != 200 {
            bail!("OpenBao pki/issue answered {status}: {}", String::from_utf8_lossy(v));
        }
        check_issued(v)
    };
    bao.requests(o, pid, "POST", "/v1/pki/issue/svid", body, check).await
}

/// The `api` subcommand.
pub fn run(args: &[String]) -> Result<()> {
    let o = options(args)?;
    // One load-generator thread (like `wrk -t1 -c8`): the client should cost as little CPU as possible,
    // so the servers, not the client, are what is measured. Both systems get the same client.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        println!(
            "X509-SVID issuance over HTTP, fresh P-256 key + certificate per request, {} clients, {} s each:",
            o.clients, o.seconds
        );
        let (unix, mtls) = vouch_runs(&o).await?;
        mtls.print("vouch admin API (TCP + mTLS)");
        unix.print("vouch admin API (Unix socket)");
        let bao_tls = match (&o.bao_tls_addr, &o.bao_tls_ca) {
            (Some(url), Some(ca)) => Some(openbao_run(&o, url, Some(ca), o.bao_tls_pid).await?),
            (None, None) => None,
            _ => bail!("--bao-tls-addr and --bao-tls-ca go together"),
        };
        if let Some(bao) = &bao_tls {
            bao.print("OpenBao pki/issue (TLS)");
        }
        let bao_plain = match &o.bao_addr {
            Some(url) => Some(openbao_run(&o, url, None, o.bao_pid).await?),
            None => None,
        };
        if let Some(bao) = &bao_plain {
            bao.print("OpenBao pki/issue (plain HTTP)");
        }
        // The headline compares like with like: both servers behind TLS, as they would be deployed.
        let headline = match (&bao_tls, &bao_plain) {
            (Some(bao), _) => (mtls.rate() / bao.rate(), "mtls_vs_tls"),
            (None, Some(bao)) => (mtls.rate() / bao.rate(), "mtls_vs_plain"),
            (None, None) => {
                println!("  OpenBao not measured (no --bao-addr / --bao-tls-addr); bench/run starts both");
                return Ok(());
            }
        };
        println!("  ratios:");
        let ratio_line = |what: &str, r: f64| println!("    {what:<68} {r:>5.1}x");
        if let Some(bao) = &bao_plain {
            ratio_line(
                "vouch Unix socket / OpenBao plain HTTP (no TLS on either side)",
                unix.rate() / bao.rate(),
            );
        }
        if let Some(bao) = &bao_tls {
            ratio_line(
                "vouch mTLS / OpenBao TLS (TLS on both; OpenBao without client certs)",
                mtls.rate() / bao.rate(),
            );
        }
        if let Some(bao) = &bao_plain {
            ratio_line(
                "vouch mTLS / OpenBao plain HTTP (TLS on vouch's side only)",
                mtls.rate() / bao.rate(),
            );
        }
        let (ratio, what) = headline;
        println!(
            "RESULT api_vs_openbao={ratio:.2} ({what}) {}",
            if ratio >= 10.0 { "PASS (target >= 10x)" } else { "BELOW TARGET (10x)" }
        );
        Ok(())
    })
}
