//! A real server and agent in process; workloads are this test process (attested by uid and binary
//! path) talking to the agent's socket with the independent `spiffe` crate and a raw gRPC client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vouch_agent::{Agent, AgentConfig};
use vouch_client::AdminClient;
use vouch_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use vouch_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest, X509svidResponse};
use vouch_server::{Config, Server};

pub(crate) const AGENT_ID: &str = "spiffe://example.org/agent/test-node";

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_server(dir: &Path, port: u16) -> Server {
    start_server_with(dir, port, "").await
}

/// A server on `port` with `extra` configuration (node attestation sections).
async fn start_server_with(dir: &Path, port: u16, extra: &str) -> Server {
    start_server_clocked(dir, port, extra, Arc::new(vouch_server::SystemClock)).await
}

/// [`start_server_with`] on `clock`.
async fn start_server_clocked(
    dir: &Path,
    port: u16,
    extra: &str,
    clock: Arc<dyn vouch_server::Clock>,
) -> Server {
    start_server_in(dir, "example.org", port, extra, clock).await
}

/// [`start_server_clocked`] for trust domain `td`.
async fn start_server_in(
    dir: &Path,
    td: &str,
    port: u16,
    extra: &str,
    clock: Arc<dyn vouch_server::Clock>,
) -> Server {
    let text = format!(
        "version = 1\ntrust_domain = \"{td}\"\ndata_dir = \"{}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n{extra}",
        dir.display()
    );
    let config = Config::from_toml(&text, &|_| None).unwrap();
    Server::start(config, clock, None).await.unwrap()
}

pub(crate) struct Stack {
    _dir: tempfile::TempDir,
    pub(crate) server: Option<Server>,
    server_dir: PathBuf,
    port: u16,
    pub(crate) agent: Option<Agent>,
    pub(crate) agent_config: AgentConfig,
    pub(crate) admin: AdminClient,
    /// The trust domain of the server and agent.
    pub(crate) td: String,
}

impl Stack {
    pub(crate) async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A stack whose agent configuration `configure` adjusts first.
    pub(crate) async fn start_with(configure: impl FnOnce(&mut AgentConfig)) -> Self {
        Self::start_with_server("", configure).await
    }

    /// [`Stack::start_with`], the server with `server_extra` configuration (`[limits]`, say).
    pub(crate) async fn start_with_server(
        server_extra: &str,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        Self::start_with_server_clock(server_extra, Arc::new(vouch_server::SystemClock), configure).await
    }

    /// [`Stack::start_with_server`], the server on `clock` (a test clock that forces key rotation).
    pub(crate) async fn start_with_server_clock(
        server_extra: &str,
        clock: Arc<dyn vouch_server::Clock>,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        Self::start_in("example.org", server_extra, clock, configure).await
    }

    /// [`Stack::start_with_server_clock`] in trust domain `td`.
    pub(crate) async fn start_in(
        td: &str,
        server_extra: &str,
        clock: Arc<dyn vouch_server::Clock>,
        configure: impl FnOnce(&mut AgentConfig),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server_dir = dir.path().join("server");
        let port = free_port();
        let server = start_server_in(&server_dir, td, port, server_extra, clock).await;
        let admin = AdminClient::unix(&server.admin_socket);
        let agent_id = format!("spiffe://{td}/agent/test-node");
        let token: Value =
            admin.call("POST", "/v1/join-tokens", Some(&json!({"agent_id": agent_id}))).await.unwrap();
        let (_, pem) = admin.request("GET", "/v1/bundle?format=pem", None).await.unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, &pem).unwrap();
        let agent_dir = dir.path().join("agent");
        let env = |k: &str| match k {
            "VOUCH_AGENT_SERVER" => Some(format!("127.0.0.1:{port}")),
            "VOUCH_AGENT_DATA_DIR" => Some(agent_dir.display().to_string()),
            "VOUCH_AGENT_JOIN_TOKEN" => token["token"].as_str().map(str::to_owned),
            "VOUCH_AGENT_BUNDLE" => Some(bundle.display().to_string()),
            "VOUCH_AGENT_TRUST_DOMAIN" => Some(td.to_owned()),
            _ => None,
        };
        let mut agent_config = AgentConfig::load(None, &env).unwrap();
        configure(&mut agent_config);
        let agent = Agent::start(agent_config.clone()).await.unwrap();
        let stack = Self {
            _dir: dir,
            server: Some(server),
            server_dir,
            port,
            agent: Some(agent),
            agent_config,
            admin,
            td: td.to_owned(),
        };
        stack.wait_connected().await;
        stack
    }

    pub(crate) fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("unix:{}", self.agent().socket.display())
    }

    pub(crate) async fn wait_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.agent().state.link.connected() {
            assert!(Instant::now() < deadline, "agent did not sync with the server");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An entry for this very test process, parented to the agent.
    pub(crate) async fn entry_for_me(&self, id: &str, path: &str, extra: Value) -> Value {
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
        let exe = std::env::current_exe().unwrap();
        let td = &self.td;
        let mut body = json!({"id": id, "spiffe_id": format!("spiffe://{td}{path}"), "parent_id": format!("spiffe://{td}/agent/test-node"),
            "selectors": [format!("unix:uid:{uid}"), format!("unix:path:{}", exe.display())]});
        if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(x.clone());
        }
        self.admin.call("POST", "/v1/entries", Some(&body)).await.unwrap()
    }

    pub(crate) async fn wait_entries(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.agent().state.registry.entries().len() != n {
            assert!(Instant::now() < deadline, "agent did not receive the entries");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A raw gRPC client of the agent socket, to send requests the SPIFFE clients never would.
pub(crate) async fn raw_client(socket: &Path) -> SpiffeWorkloadApiClient<tonic::transport::Channel> {
    let channel = vouch_proto::uds_channel(socket).await.unwrap();
    SpiffeWorkloadApiClient::new(channel)
}

pub(crate) fn with_header<T>(body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.metadata_mut().insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

fn ids(resp: &X509svidResponse) -> Vec<String> {
    resp.svids.iter().map(|s| s.spiffe_id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_clients_get_identities_and_streams_follow_changes() {
    let stack = Stack::start().await;
    let client = spiffe::WorkloadApiClient::connect_to(stack.endpoint()).await.unwrap();

    // gRPC health answers on the same socket.
    let channel = vouch_proto::uds_channel(&stack.agent().socket).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "SpiffeWorkloadAPI"] {
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest { service: service.into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }

    // Nothing registered for this process yet.
    let err = client.fetch_x509_svid().await.unwrap_err().to_string();
    assert!(err.contains("no identity issued"), "{err}");

    // A request without the security header is refused as InvalidArgument.
    let mut raw = raw_client(&stack.agent().socket).await;
    let status = raw.fetch_x509svid(tonic::Request::new(X509svidRequest {})).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::PermissionDenied, "no identity issued"));

    stack.entry_for_me("a-web", "/web", json!({"hint": "primary"})).await;
    stack.wait_entries(1).await;

    // The independent Rust client: X509-SVID, bundles, JWT-SVID, validation.
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(svid.hint(), Some("primary"));
    assert_eq!(svid.cert_chain().len(), 2, "leaf and signing CA");
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("example.org").unwrap();
    assert_eq!(bundles.get(&td).unwrap().authorities().len(), 1);
    let jwt = client.fetch_jwt_svid(["db"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), "spiffe://example.org/web");
    assert_eq!(jwt.audience(), ["db"]);
    let validated = client.validate_jwt_token("db", jwt.token()).await.unwrap();
    assert_eq!(validated.spiffe_id().to_string(), "spiffe://example.org/web");
    assert!(client.validate_jwt_token("web", jwt.token()).await.is_err(), "wrong audience");

    // A client's own mistakes are INVALID_ARGUMENT with the reason, never UNAVAILABLE (which SPIFFE
    // clients retry forever), and cost the server nothing.
    for (audience, why) in [
        ((0..33).map(|i| format!("aud-{i}")).collect::<Vec<_>>(), "at most 32"),
        (vec![], "at least one audience"),
        (vec!["db\u{7}".to_owned()], "control character"),
    ] {
        let status = raw
            .fetch_jwtsvid(with_header(JwtsvidRequest { audience, spiffe_id: String::new() }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(why), "{status:?}");
    }
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&td).unwrap().jwt_authorities().count() >= 1);

    // The chain verifies against the bundle the agent hands out (webpki via our own check).
    let anchors: Vec<Vec<u8>> =
        bundles.get(&td).unwrap().authorities().iter().map(|c| c.as_ref().to_vec()).collect();
    let chain: Vec<rustls_pki_types::CertificateDer> = svid
        .cert_chain()
        .iter()
        .map(|c| rustls_pki_types::CertificateDer::from(c.as_ref().to_vec()))
        .collect();
    let id = vouch_tls::verify_svid(
        &vouch_tls::Anchors::from_der(&anchors),
        &chain[0],
        &chain[1..],
        rustls_pki_types::UnixTime::now(),
        false,
    )
    .unwrap();
    assert_eq!(id.to_string(), "spiffe://example.org/web");

    // A waiting stream receives a new entry at once: no poll interval.
    let mut stream = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(ids(&first), ["spiffe://example.org/web"]);
    let started = Instant::now();
    stack.entry_for_me("b-api", "/api", json!({})).await;
    let second =
        tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    let latency = started.elapsed();
    assert_eq!(ids(&second), ["spiffe://example.org/web", "spiffe://example.org/api"]);
    assert!(latency < Duration::from_secs(1), "new entry reached the stream in {latency:?}");
    assert_eq!(first.svids[0].x509_svid, second.svids[0].x509_svid, "unchanged SVIDs are not re-issued");

    // Deleting the entries ends the stream with PermissionDenied.
    let _: Value = stack.admin.call("DELETE", "/v1/entries/a-web", None).await.unwrap();
    let third =
        tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(ids(&third), ["spiffe://example.org/api"]);
    let _: Value = stack.admin.call("DELETE", "/v1/entries/b-api", None).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.unwrap().unwrap_err();
    assert_eq!(end.code(), tonic::Code::PermissionDenied);

    // A caller with no identity cannot use the agent as a JWT validator, even for a valid token.
    let status = raw
        .validate_jwtsvid(with_header(ValidateJwtsvidRequest {
            audience: "db".into(),
            svid: jwt.token().to_owned(),
        }))
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message()), (tonic::Code::PermissionDenied, "no identity issued"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_receive_rotated_svids_before_expiry() {
    let stack = Stack::start().await;
    stack.entry_for_me("rot", "/rotating", json!({"x509_svid_ttl": 60})).await;
    stack.wait_entries(1).await;
    let mut raw = raw_client(&stack.agent().socket).await;
    let mut stream = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let leaf = |r: &X509svidResponse| {
        let chain = &r.svids[0].x509_svid;
        vouch_ca::x509::cert_info(&chain[..cert_len(chain)]).unwrap()
    };
    let old = leaf(&first);
    // Half of 60 s (minus up to 10% jitter) later, the stream carries a new SVID.
    let next =
        tokio::time::timeout(Duration::from_secs(45), stream.message()).await.unwrap().unwrap().unwrap();
    let new = leaf(&next);
    assert_ne!(new.public_key, old.public_key, "a new key");
    assert!(std::time::SystemTime::now() < old.not_after, "rotated before the old SVID expired");
    assert!(new.not_after > old.not_after);
}

/// SVIDs nobody received for a whole lifetime are dropped at their renewal time instead of renewed;
/// SVIDs in use are renewed. (Time is a parameter of `rotate_due`: no waiting.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_svids_are_dropped_not_renewed() {
    let stack = Stack::start().await;
    stack.entry_for_me("idle", "/idle", json!({"x509_svid_ttl": 600})).await;
    stack.wait_entries(1).await;
    let mut raw = raw_client(&stack.agent().socket).await;
    let mut stream = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(ids(&stream.message().await.unwrap().unwrap()), ["spiffe://example.org/idle"]);
    drop(stream);
    let state = &stack.agent().state;
    assert_eq!(state.cache.x509_len(), 1);
    let t0 = std::time::SystemTime::now();
    let minutes = |m: u64| t0 + Duration::from_secs(60 * m);

    // In use: received again after its renewal time came; renewed.
    state.x509_svids(&state.registry.entries(), minutes(5)).await.unwrap();
    assert_eq!(state.rotate_due(minutes(6)).await.unwrap(), 1);
    assert_eq!(state.cache.x509_len(), 1);
    // Then nobody asks for longer than its lifetime: at the next renewal time it is dropped.
    assert_eq!(state.rotate_due(minutes(17)).await.unwrap(), 0);
    assert_eq!(state.cache.x509_len(), 0);
    // A workload that comes back gets a fresh one.
    let mut stream = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    assert_eq!(ids(&stream.message().await.unwrap().unwrap()), ["spiffe://example.org/idle"]);
    assert_eq!(state.cache.x509_len(), 1);
}

/// Length of the first DER element (the leaf) in a concatenated chain.
fn cert_len(der: &[u8]) -> usize {
    match der.get(1) {
        Some(&0x82) => 4 + ((der[2] as usize) << 8 | der[3] as usize),
        Some(&0x81) => 3 + der[2] as usize,
        Some(&n) => 2 + n as usize,
        None => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_svids_survive_a_server_outage_and_the_agent_reconnects_and_restarts() {
    let mut stack = Stack::start().await;
    stack.entry_for_me("c", "/cached", json!({})).await;
    stack.wait_entries(1).await;
    let client = spiffe::WorkloadApiClient::connect_to(stack.endpoint()).await.unwrap();
    let before = client.fetch_x509_svid().await.unwrap();

    stack.server.take().unwrap().shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.agent().state.link.connected() {
        assert!(Instant::now() < deadline, "agent did not notice the server went away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = client.fetch_x509_svid().await.unwrap();
    assert_eq!(during.cert_chain()[0].as_ref(), before.cert_chain()[0].as_ref(), "served from the cache");

    // Shutting down with a workload's stream open ends the stream; nothing holds the agent up.
    let mut raw = raw_client(&stack.agent().socket).await;
    let mut open = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    assert!(open.message().await.unwrap().is_some());
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), stack.agent.take().unwrap().shutdown())
        .await
        .expect("the agent stops with a stream open");
    assert!(started.elapsed() < vouch_agent::SHUTDOWN_GRACE, "streams end at once, not at the grace limit");
    let ended = tokio::time::timeout(Duration::from_secs(5), open.message()).await.expect("the stream ends");
    assert!(!matches!(ended, Ok(Some(_))), "no answer after shutdown: {ended:?}");

    // An agent restart reuses its saved SVID: no join token needed (the token was single use). With
    // the server still down it cannot know the entries: workloads are told to retry, not "no
    // identity", and health says why.
    let mut config = stack.agent_config.clone();
    config.node_attestation = vouch_agent::NodeAttestation::SavedOnly;
    stack.agent = Some(Agent::start(config).await.unwrap());
    let mut raw = raw_client(&stack.agent().socket).await;
    let status = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("has not synced"), "{status:?}");
    let channel = vouch_proto::uds_channel(&stack.agent().socket).await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let serving = || tonic_health::pb::HealthCheckRequest { service: "SpiffeWorkloadAPI".into() };
    assert_eq!(
        health.check(serving()).await.unwrap().into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );
    let admin = vouch_agent::admin::health(&stack.agent().state, std::time::SystemTime::now()).await;
    assert!(!admin.ready && admin.sync == vouch_api::explain::SyncStatus::NotYetSynced, "{admin:?}");
    assert!(admin.reason.contains("not synced with the server since start"), "{}", admin.reason);

    stack.server = Some(start_server(&stack.server_dir, stack.port).await);
    stack.wait_connected().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while health.check(serving()).await.unwrap().into_inner().status()
        != tonic_health::pb::health_check_response::ServingStatus::Serving
    {
        assert!(Instant::now() < deadline, "health did not turn SERVING after the first sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.wait_entries(1).await;
    let client = spiffe::WorkloadApiClient::connect_to(stack.endpoint()).await.unwrap();
    assert_eq!(
        client.fetch_x509_svid().await.unwrap().spiffe_id().to_string(),
        "spiffe://example.org/cached"
    );
    use std::os::unix::fs::PermissionsExt;
    let key = stack.agent_config.data_dir.join("agent.key");
    assert_eq!(std::fs::metadata(key).unwrap().permissions().mode() & 0o777, 0o600);

    // Its SVID expired in a long outage (simulated): a join token was single use, so the agent
    // cannot attest again by itself, and says what the operator must do.
    let state = &stack.agent().state;
    let mut expired = (*state.link.identity()).clone();
    expired.not_after = std::time::SystemTime::now() - Duration::from_secs(1);
    state.link.set_identity(expired).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(state.link.identity().not_after <= std::time::SystemTime::now(), "nothing to attest with");
    let health = vouch_agent::admin::health(state, std::time::SystemTime::now()).await;
    assert!(!health.ready && health.reason.contains("a join token is single use"), "{}", health.reason);
}

/// The real path of the python3 that runs py-spiffe (a `unix:path` selector names it).
pub(crate) fn python_path() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import os, sys; print(os.path.realpath(sys.executable))"])
        .output()
        .expect("python3 is installed");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs `tests/agent/<script>` with `python` as a workload of the agent on `socket` (with `env`
/// besides `SPIFFE_ENDPOINT_SOCKET`), within 60 s; the JSON it prints.
pub(crate) async fn run_py_spiffe(
    python: &str,
    script: &str,
    socket: &Path,
    env: &[(&str, String)],
) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agent").join(script);
    let run = tokio::process::Command::new(python)
        .arg(&script)
        .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", socket.display()))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("py-spiffe finished within 60 s")
        .unwrap();
    assert!(
        out.status.success(),
        "py-spiffe failed (is `pip install spiffe==0.3.2` done?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The independent Python client (py-spiffe from PyPI), unchanged, as a real workload process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_spiffe_client_gets_identities() {
    let stack = Stack::start().await;
    let python = python_path();
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let entry = json!({"id": "py", "spiffe_id": "spiffe://example.org/python", "parent_id": AGENT_ID,
        "selectors": [format!("unix:uid:{uid}"), format!("unix:path:{python}")]});
    let _: Value = stack.admin.call("POST", "/v1/entries", Some(&entry)).await.unwrap();
    stack.wait_entries(1).await;
    let v = run_py_spiffe(&python, "py_spiffe_client.py", &stack.agent().socket, &[]).await;
    assert_eq!(v["x509_spiffe_id"], "spiffe://example.org/python");
    assert_eq!(v["chain_length"], 2);
    assert_eq!(v["x509_bundle"], true);
    assert_eq!(v["jwt_spiffe_id"], "spiffe://example.org/python");
    assert_eq!(v["jwt_audience"], json!(["db"]));
    assert_eq!(v["validated_spiffe_id"], "spiffe://example.org/python");
    assert_eq!(v["jwt_bundle"], true);
    assert_eq!(v["wrong_audience_rejected"], true);
}

/// `explain` over the agent's admin socket: the selectors found and, per entry, why it matched or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_which_selector_is_missing() {
    let stack = Stack::start().await;
    stack.entry_for_me("yes", "/matching", json!({})).await;
    let payments = json!({"id": "no", "spiffe_id": "spiffe://example.org/payments", "parent_id": AGENT_ID,
        "selectors": ["docker:label:app:payments", format!("unix:uid:{}", std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap())]});
    let _: Value = stack.admin.call("POST", "/v1/entries", Some(&payments)).await.unwrap();
    stack.wait_entries(2).await;
    let ask = |pid: i64| {
        let socket = stack.agent_config.data_dir.join("admin.sock");
        async move {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
            let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
            s.write_all(format!("{{\"explain\": {pid}}}\n").as_bytes()).await.unwrap();
            let mut line = String::new();
            tokio::io::BufReader::new(s).read_line(&mut line).await.unwrap();
            serde_json::from_str::<Value>(&line).unwrap()
        }
    };
    let v = ask(std::process::id() as i64).await;
    assert!(v["error"].is_null(), "{v}");
    let exe = std::env::current_exe().unwrap();
    assert!(v["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == &json!(format!("unix:path:{}", exe.display()))));
    let outcome = |id: &str| {
        v["entries"].as_array().unwrap().iter().find(|e| e["id"] == id).unwrap()["outcome"].clone()
    };
    assert_eq!(outcome("yes"), "matched");
    assert_eq!(outcome("no"), "missing selector docker:label:app:payments");
    let gone = ask(i32::MAX as i64).await;
    assert!(gone["error"].as_str().unwrap().contains("no longer exists"), "{gone}");
    use std::os::unix::fs::PermissionsExt;
    let mode =
        std::fs::metadata(stack.agent_config.data_dir.join("admin.sock")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// An agent attested with a Kubernetes projected service-account token instead of a join token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_attests_with_a_kubernetes_psat() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = vouch_ca::testing::RsaJwtIssuer::new("k1");
    let jwks = dir.path().join("cluster.jwks");
    std::fs::write(&jwks, issuer.jwks()).unwrap();
    let port = free_port();
    let extra = format!(
        "[[node_attestation.k8s_psat]]\ncluster = \"prod\"\njwks_file = \"{}\"\nissuer = \"https://k8s.example\"\n\
         audience = \"vouch\"\nservice_accounts = [\"vouch-system:vouch-agent\"]\n",
        jwks.display()
    );
    let server = start_server_with(&dir.path().join("server"), port, &extra).await;
    let admin = AdminClient::unix(&server.admin_socket);
    let (_, pem) = admin.request("GET", "/v1/bundle?format=pem", None).await.unwrap();
    std::fs::write(dir.path().join("bundle.pem"), &pem).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let token = issuer.sign(&json!({"iss": "https://k8s.example", "aud": "vouch", "exp": now + 600,
        "kubernetes.io": {"namespace": "vouch-system", "serviceaccount": {"name": "vouch-agent"},
            "pod": {"name": "agent-abc", "uid": "0f1e2d3c-aaaa-bbbb-cccc-000000000001"}, "node": {"name": "n1", "uid": "node-uid-1"}}}));
    std::fs::write(dir.path().join("token"), token).unwrap();
    let agent_dir = dir.path().join("agent");
    let env = |k: &str| match k {
        "VOUCH_AGENT_SERVER" => Some(format!("127.0.0.1:{port}")),
        "VOUCH_AGENT_DATA_DIR" => Some(agent_dir.display().to_string()),
        "VOUCH_AGENT_BUNDLE" => Some(dir.path().join("bundle.pem").display().to_string()),
        "VOUCH_AGENT_K8S_PSAT_TOKEN" => Some(dir.path().join("token").display().to_string()),
        "VOUCH_AGENT_K8S_CLUSTER" => Some("prod".into()),
        _ => None,
    };
    let agent = Agent::start(AgentConfig::load(None, &env).unwrap()).await.unwrap();
    let agent_id = agent.state.link.agent_id().to_string();
    assert_eq!(agent_id, "spiffe://example.org/agent/k8s_psat/prod/node-uid-1");
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let entry = json!({"spiffe_id": "spiffe://example.org/k8s-workload", "parent_id": agent_id, "selectors": [format!("unix:uid:{uid}")]});
    let _: Value = admin.call("POST", "/v1/entries", Some(&entry)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.state.registry.entries().is_empty() {
        assert!(Instant::now() < deadline, "entry did not arrive");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client =
        spiffe::WorkloadApiClient::connect_to(format!("unix:{}", agent.socket.display())).await.unwrap();
    assert_eq!(
        client.fetch_x509_svid().await.unwrap().spiffe_id().to_string(),
        "spiffe://example.org/k8s-workload"
    );

    // A long outage let the agent's own SVID expire (simulated: the held one is marked expired).
    // A PSAT agent attests again by itself, with the token the node still has.
    let before = agent.state.link.identity();
    let mut expired = (*before).clone();
    expired.not_after = std::time::SystemTime::now() - Duration::from_secs(1);
    agent.state.link.set_identity(expired).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.state.link.identity().not_after <= std::time::SystemTime::now() {
        assert!(Instant::now() < deadline, "the PSAT agent did not attest again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(agent.state.link.identity().chain_pem, before.chain_pem, "a new agent SVID");
    assert_eq!(agent.state.link.agent_id().to_string(), agent_id, "the same agent");

    // Evicted by an admin: a PSAT agent attests again by itself and goes on serving.
    let id = vouch_core::SpiffeId::parse(&agent_id).unwrap();
    let before = agent.state.link.identity();
    admin.evict_agent(&id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.state.link.identity().chain_pem == before.chain_pem || !agent.state.link.connected() {
        assert!(Instant::now() < deadline, "the evicted PSAT agent did not attest again and resync");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client.fetch_x509_svid().await.unwrap().spiffe_id().to_string(),
        "spiffe://example.org/k8s-workload"
    );

    // Banned: the node is no longer trusted, and serves no identity, cached or not.
    admin.ban_agent(&id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.fetch_x509_svid().await {
            Err(e) if e.to_string().contains("no identity issued") => break,
            other => assert!(Instant::now() < deadline, "still served after the ban: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    agent.shutdown().await;
    server.shutdown().await;
}

/// An agent attested by proof of possession of a node key whose certificate a configured CA issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_attests_with_x509pop() {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    std::fs::write(dir.path().join("ca.pem"), ca_params.self_signed(&ca_key).unwrap().pem()).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let node_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut node = rcgen::CertificateParams::new(vec!["node-7.example".to_string()]).unwrap();
    node.distinguished_name.push(rcgen::DnType::CommonName, "node-7");
    std::fs::write(dir.path().join("node.pem"), node.signed_by(&node_key, &issuer).unwrap().pem()).unwrap();
    std::fs::write(dir.path().join("node.key"), node_key.serialize_pem()).unwrap();
    let port = free_port();
    let extra = format!(
        "[[node_attestation.x509pop]]\nname = \"rack\"\nca_bundle = \"{}\"\n",
        dir.path().join("ca.pem").display()
    );
    let server = start_server_with(&dir.path().join("server"), port, &extra).await;
    let admin = AdminClient::unix(&server.admin_socket);
    let (_, pem) = admin.request("GET", "/v1/bundle?format=pem", None).await.unwrap();
    std::fs::write(dir.path().join("bundle.pem"), &pem).unwrap();
    let env = |k: &str| match k {
        "VOUCH_AGENT_SERVER" => Some(format!("127.0.0.1:{port}")),
        "VOUCH_AGENT_DATA_DIR" => Some(dir.path().join("agent").display().to_string()),
        "VOUCH_AGENT_BUNDLE" => Some(dir.path().join("bundle.pem").display().to_string()),
        "VOUCH_AGENT_X509POP_CERT" => Some(dir.path().join("node.pem").display().to_string()),
        "VOUCH_AGENT_X509POP_KEY" => Some(dir.path().join("node.key").display().to_string()),
        _ => None,
    };
    let agent = Agent::start(AgentConfig::load(None, &env).unwrap()).await.unwrap();
    assert!(agent.state.link.agent_id().to_string().starts_with("spiffe://example.org/agent/x509pop/"));
    let agents: Value = admin.call("GET", "/v1/agents", None).await.unwrap();
    assert!(agents["agents"][0]["selectors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "x509pop:subject:cn:node-7"));
    agent.shutdown().await;
    server.shutdown().await;
}

/// `unix:sha256` entries work end to end: the agent hashes callers' executables once an entry
/// asks for it (and not before), and the hash must be the caller's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_on_the_executable_hash_match_only_that_binary() {
    let stack = Stack::start().await;
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mine =
        vouch_ca::keys::hex(&vouch_ca::keys::sha256_reader(std::fs::File::open(&exe).unwrap()).unwrap());
    stack.entry_for_me("p-path", "/by-path", json!({})).await;
    stack.wait_entries(1).await;
    let client = spiffe::WorkloadApiClient::connect_to(stack.endpoint()).await.unwrap();
    client.fetch_x509_svid().await.unwrap();
    assert_eq!(stack.agent().state.unix.hash_runs(), 0, "no entry uses a hash: none computed");

    let other = "0".repeat(64);
    for (id, hash) in [("q-other", other.as_str()), ("r-mine", mine.as_str())] {
        let body = json!({"id": id, "spiffe_id": format!("spiffe://example.org/{id}"), "parent_id": AGENT_ID,
            "selectors": [format!("unix:uid:{uid}"), format!("unix:sha256:{hash}")]});
        let _: Value = stack.admin.call("POST", "/v1/entries", Some(&body)).await.unwrap();
    }
    stack.wait_entries(3).await;
    let mut raw = raw_client(&stack.agent().socket).await;
    let answer =
        raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner().message().await;
    let ids = ids(&answer.unwrap().unwrap());
    assert_eq!(
        ids,
        ["spiffe://example.org/by-path", "spiffe://example.org/r-mine"],
        "not the other binary's"
    );
    assert_eq!(stack.agent().state.unix.hash_runs(), 1);
}

/// The server's per-agent limits (issue 9 §3): a 429 `rate_limited` with Retry-After makes the
/// agent wait that long before it asks the server again for that operation, instead of retrying at
/// once; meanwhile its calls fail fast without reaching the server; after the wait it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_waits_as_told_when_the_servers_rate_limit_refuses_it() {
    use std::sync::atomic::Ordering;
    use vouch_agent::ServerOp;
    let limits = "[limits]\nsign_per_second = 0.2\nsign_burst = 500\njwt_per_second = 0.5\njwt_burst = 1\n";
    let stack = Stack::start_with_server(limits, |_| {}).await;
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let entries: Vec<Value> = (0..501)
        .map(|i| json!({"spiffe_id": format!("spiffe://example.org/many/{i}"), "parent_id": AGENT_ID, "selectors": [format!("unix:uid:{uid}")]}))
        .collect();
    let _: Value =
        stack.admin.call("POST", "/v1/entries/batch", Some(&json!({"entries": entries}))).await.unwrap();
    stack.wait_entries(501).await;
    let state = &stack.agent().state;
    let server = stack.server.as_ref().unwrap().state.clone();
    let server_refusals = |i: usize| server.metrics.rate_limited[i].load(Ordering::Relaxed);
    let entries = state.registry.entries();
    let now = std::time::SystemTime::now();
    let within = Duration::from_secs(30);
    let retry_after = |r: Result<_, vouch_agent::AgentError>| match r {
        Err(vouch_agent::AgentError::Server(e)) => e.retry_after(),
        Err(e) => panic!("expected a rate-limit refusal, got {e}"),
        Ok(_) => panic!("expected a rate-limit refusal, got an answer"),
    };

    // Signing: the first batch (500, the smallest burst allowed) fits the burst; the next is refused,
    // Retry-After 5 s. (A token comes back every 5 s: signing 500 takes less, even on a loaded
    // machine, so the refusal is certain.)
    let first = tokio::time::timeout(within, state.x509_svids(&entries, now)).await.unwrap();
    assert_eq!(retry_after(first.map(|_| ())), Some(Duration::from_secs(5)));
    assert_eq!(state.cache.x509_len(), 500);
    assert_eq!((state.metrics.rate_limited_count(ServerOp::Sign), server_refusals(1)), (1, 1));
    // JWT: one fits, the next is refused.
    let entry = &entries[0];
    tokio::time::timeout(within, state.jwt(entry, &["a".into()], now)).await.unwrap().unwrap();
    let refused = tokio::time::timeout(within, state.jwt(entry, &["b".into()], now)).await.unwrap();
    assert_eq!(retry_after(refused.map(|_| ())), Some(Duration::from_secs(2)));
    // During the wait the agent does not call: each attempt fails at once, the server sees none.
    let asked = std::time::Instant::now();
    for i in 0..50 {
        let wait = retry_after(state.x509_svids(&entries, now).await.map(|_| ()));
        assert!(wait.is_some_and(|w| w <= Duration::from_secs(5)), "{wait:?}");
        let wait = retry_after(state.jwt(entry, &[format!("c{i}")], now).await.map(|_| ()));
        assert!(wait.is_some_and(|w| w <= Duration::from_secs(2)), "{wait:?}");
    }
    assert!(asked.elapsed() < Duration::from_secs(1), "refusals during the wait are local and fast");
    assert_eq!((server_refusals(1), server_refusals(2)), (1, 1), "the server was not asked during the wait");
    assert_eq!(state.metrics.rate_limited_count(ServerOp::Jwt), 1);
    // After the wait it asks again and is served.
    tokio::time::sleep(Duration::from_millis(5_100)).await;
    tokio::time::timeout(within, state.x509_svids(&entries, now)).await.unwrap().unwrap();
    assert_eq!(state.cache.x509_len(), 501);
    tokio::time::timeout(within, state.jwt(entry, &["d".into()], now)).await.unwrap().unwrap();
    assert_eq!((server_refusals(1), server_refusals(2)), (1, 1));
}

/// A caller of [`h2_fetch.py`](h2_fetch.py), `python` run as `uid`: with `wait`, it connects, says
/// "ready" and asks only when told. Dropping it kills it.
fn h2_caller(uid: u32, python: &Path, socket: &Path, wait: bool) -> tokio::process::Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/agent/h2_fetch.py");
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args([&format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups"])
        .arg(python)
        .arg(&script)
        .arg(socket);
    if wait {
        cmd.arg("--wait");
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("setpriv (util-linux) and python3 are installed")
}

/// The next line a caller prints, within `within`.
async fn line_of(out: &mut tokio::io::BufReader<tokio::process::ChildStdout>, within: Duration) -> String {
    let mut line = String::new();
    let read = tokio::io::AsyncBufReadExt::read_line(out, &mut line);
    tokio::time::timeout(within, read).await.expect("the caller answers in time").unwrap();
    line.trim().to_owned()
}

/// One uid that makes the agent hash many large executables (sparse copies of python, each a new
/// file identity: fresh, or touched, which the cache cannot tell from a new program) cannot delay
/// another uid whose entry needs `unix:sha256`: at most one hash per uid waits or runs, and the
/// attacker's other calls are refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_uid_rehashing_large_executables_cannot_delay_another_uids_hash() {
    if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap() != 0 {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    const ATTACKERS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("api.sock");
    let stack = Stack::start_with(|c| c.socket = socket.clone()).await;
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let digest = vouch_ca::keys::sha256_reader(std::fs::File::open(&python).unwrap()).unwrap();
    let legit = json!({"id": "legit", "spiffe_id": "spiffe://example.org/legit", "parent_id": AGENT_ID,
        "selectors": ["unix:uid:65533", format!("unix:sha256:{}", vouch_ca::keys::hex(&digest))]});
    let _: Value = stack.admin.call("POST", "/v1/entries", Some(&legit)).await.unwrap();
    stack.wait_entries(1).await;

    // The attacker's executables: python padded to 256 MiB with a hole (a few MiB on disk; half
    // the hash bound, enough to queue seconds of hashing without costing the other tests as much),
    // each touched before its caller starts.
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let exe = dir.path().join(format!("attacker-{i}"));
        std::fs::copy(&python, &exe).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&exe).unwrap();
        file.set_len(256 << 20).unwrap();
        file.set_modified(std::time::SystemTime::now()).unwrap();
        drop(file);
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut child = h2_caller(65534, &exe, &socket, true);
        let out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        attackers.push((child, out));
    }
    for (_, out) in &mut attackers {
        assert_eq!(line_of(out, Duration::from_secs(10)).await, "ready");
    }
    // All ask at once; then the agent has a moment to attest them and queue their hashes.
    for (child, _) in &mut attackers {
        tokio::io::AsyncWriteExt::write_all(child.stdin.as_mut().unwrap(), b"go\n").await.unwrap();
    }
    for (_, out) in &mut attackers {
        assert_eq!(line_of(out, Duration::from_secs(10)).await, "sent");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The legitimate caller, another uid, running the real python, gets its SVID soon.
    let mut legit = h2_caller(65533, &python, &socket, false);
    let mut out = tokio::io::BufReader::new(legit.stdout.take().unwrap());
    let answer = line_of(&mut out, Duration::from_secs(15)).await;
    let (outcome, secs) = answer.split_once(' ').unwrap();
    let secs: f64 = secs.parse().unwrap();
    assert_eq!(outcome, "svid", "{answer}");
    assert!(secs < 3.0, "the legitimate caller waited {secs} s for its SVID behind another uid's hashes");

    // The attacker's calls were refused at once (UNAVAILABLE, to retry), all but the one hashing
    // (and one more, should it have arrived after that hash was done).
    let busy = stack.agent().state.metrics.refusals(vouch_agent::Refusal::HashBusy);
    assert!(busy as usize >= ATTACKERS - 2, "{busy} attacker calls refused as busy");
    for (mut child, mut out) in attackers {
        let answer = line_of(&mut out, Duration::from_secs(15)).await;
        assert!(answer.starts_with("refused "), "an attacker got {answer}");
        let _ = child.kill().await;
    }
    let _ = legit.kill().await;
}
