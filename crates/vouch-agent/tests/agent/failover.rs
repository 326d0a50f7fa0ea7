//! Failover between server replicas: two real servers on one PostgreSQL, each in its own process
//! (so it can be killed with SIGKILL, as a crash or the OOM killer would), and one agent that knows
//! both addresses, serving a workload that holds an open FetchX509SVID stream.
//!
//! A replica process is this test binary run again with `VOUCH_TEST_REPLICA_CONFIG` set: the
//! `replica_process` test then starts the server from that configuration (`vouch server run` does
//! the same: `Server::start` with the loaded configuration) and keeps it up until its stdin closes,
//! so it never outlives the test that started it. Run without the variable, that test does nothing.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use vouch_agent::{Agent, AgentConfig};
use vouch_client::AdminClient;
use vouch_proto::workload::{JwtsvidRequest, X509svidRequest, X509svidResponse};

use crate::workload_api::{raw_client, with_header, AGENT_ID};

const REPLICA_VAR: &str = "VOUCH_TEST_REPLICA_CONFIG";
const READY: &str = "VOUCH_TEST_REPLICA_READY";

/// The server side of a replica process (see the module comment); a no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_process() {
    let Ok(path) = std::env::var(REPLICA_VAR) else { return };
    let text = std::fs::read_to_string(&path).unwrap();
    let config = vouch_server::Config::from_toml(&text, &|_| None).unwrap();
    let server = vouch_server::Server::start(config, std::sync::Arc::new(vouch_server::SystemClock), None)
        .await
        .unwrap();
    // On its own line: the harness may have written "test ... " before it.
    println!("\n{READY} {}", server.tcp_addr.unwrap());
    // Up until the test that started it closes our stdin (or dies): never an orphan.
    let _ = tokio::task::spawn_blocking(|| std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1])).await;
    server.shutdown().await;
}

/// A server replica in its own process.
struct Replica {
    child: tokio::process::Child,
    port: u16,
    admin: AdminClient,
}

impl Replica {
    /// Starts a replica on `port` over the PostgreSQL at `store`, with its own data directory under
    /// `dir` and the key-encryption key file all replicas share.
    async fn start(dir: &Path, name: &str, port: u16, store: &str, kek: &Path) -> Self {
        let data = dir.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let config = data.join("server.toml");
        std::fs::write(
            &config,
            format!(
                "version = 1\ntrust_domain = \"example.org\"\ndata_dir = \"{}\"\nstore = \"{store}\"\n\
                 [server]\nlisten = \"127.0.0.1:{port}\"\n[ca]\nkek_file = \"{}\"\n",
                data.display(),
                kek.display()
            ),
        )
        .unwrap();
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args(["failover::replica_process", "--exact", "--nocapture", "--test-threads=1"])
            .env(REPLICA_VAR, &config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains(READY) {
                    return;
                }
            }
            panic!("replica {name} exited before it was ready");
        };
        tokio::time::timeout(Duration::from_secs(30), ready).await.expect("replica ready in 30 s");
        // The rest of its output is drained, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, port, admin: AdminClient::unix(data.join("admin.sock")) }
    }

    /// Kills the replica with SIGKILL and waits until it is gone.
    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.expect("killed").unwrap();
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// An entry for this very test process (by uid and executable), parented to the agent.
    async fn entry_for_me(&self, id: &str) {
        let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
        let exe = std::env::current_exe().unwrap();
        let body = json!({"id": id, "spiffe_id": format!("spiffe://example.org/{id}"), "parent_id": AGENT_ID,
            "selectors": [format!("unix:uid:{uid}"), format!("unix:path:{}", exe.display())]});
        let _: Value = self.admin.call("POST", "/v1/entries", Some(&body)).await.unwrap();
    }
}

/// The process's log lines, captured for assertions. Installed by one test only (a process has one
/// global subscriber); lines of tests running alongside land here too, which the assertions allow.
#[derive(Clone, Default)]
struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLogs {
    fn install() -> Self {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn ids(resp: &X509svidResponse) -> Vec<String> {
    let mut ids: Vec<String> = resp.svids.iter().map(|s| s.spiffe_id.clone()).collect();
    ids.sort();
    ids
}

/// Waits until the agent's sync stream is up on `replica`; how long that took.
async fn wait_synced_with(agent: &Agent, replica: &Replica, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let link = &agent.state.link;
        if link.connected() && link.server().is_some_and(|s| s.addr.port() == replica.port) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "the agent did not sync with {} within {within:?}",
            replica.addr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next message on a workload's open stream, within `limit`; a stream that ended or failed
/// (the workload was interrupted) fails the test.
async fn next(stream: &mut tonic::Streaming<X509svidResponse>, limit: Duration) -> X509svidResponse {
    tokio::time::timeout(limit, stream.message())
        .await
        .expect("a message on the open stream in time")
        .expect("the workload's stream is not interrupted")
        .expect("the workload's stream did not end")
}

/// The agent knows both replicas; the one its sync stream is on is killed with SIGKILL. The
/// workload's open stream goes on, the agent moves to the other replica at once, which signs the
/// SVID of an entry created there, mints JWT-SVIDs and renews the agent's own SVID. Then that one
/// is killed too: the workload is served from the agent's cache. Then the first comes back, and
/// the agent syncs with it again (a dead replica is tried again later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fails_over_between_replicas_without_interrupting_workloads() {
    let logs = CapturedLogs::install();
    let cluster = vouch_store::test_postgres::PgCluster::start();
    cluster.create_database("vouch").await;
    let store = cluster.tcp_url("vouch");
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    let (port_a, port_b) = (free_port(), free_port());
    let a = Replica::start(dir.path(), "a", port_a, &store, &kek).await;
    // Started after the first has created the authority: both then serve the same one.
    let b = Replica::start(dir.path(), "b", port_b, &store, &kek).await;

    let token: Value =
        a.admin.call("POST", "/v1/join-tokens", Some(&json!({"agent_id": AGENT_ID}))).await.unwrap();
    let (_, pem) = a.admin.request("GET", "/v1/bundle?format=pem", None).await.unwrap();
    let (_, pem_b) = b.admin.request("GET", "/v1/bundle?format=pem", None).await.unwrap();
    assert_eq!(pem, pem_b, "one trust bundle for both replicas");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &pem).unwrap();
    let agent_dir: PathBuf = dir.path().join("agent");
    // The second by name: a name counts as every address it resolves to (here 127.0.0.1, and
    // ::1 where /etc/hosts has it, which refuses and is passed over).
    let servers = format!("{},localhost:{port_b}", a.addr());
    let env = |k: &str| match k {
        "VOUCH_AGENT_SERVER" => Some(servers.clone()),
        // The order given is a preference, so the test knows which replica the agent starts on.
        "VOUCH_AGENT_SERVER_ORDER" => Some("listed".into()),
        "VOUCH_AGENT_DATA_DIR" => Some(agent_dir.display().to_string()),
        "VOUCH_AGENT_JOIN_TOKEN" => token["token"].as_str().map(str::to_owned),
        "VOUCH_AGENT_BUNDLE" => Some(bundle.display().to_string()),
        _ => None,
    };
    let config = AgentConfig::load(None, &env).unwrap();
    assert_eq!(config.servers.len(), 2);
    let agent = Agent::start(config).await.unwrap();
    // The first address is tried first.
    wait_synced_with(&agent, &a, Duration::from_secs(15)).await;

    a.entry_for_me("first").await;
    // Until the entry has reached the agent, a fetch is refused ("no identity issued"), not opened.
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.state.registry.entries().is_empty() {
        assert!(Instant::now() < deadline, "the first entry did not reach the agent within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut raw = raw_client(&agent.socket).await;
    let mut stream = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    let mut first = next(&mut stream, Duration::from_secs(10)).await;
    // The entry may reach the agent just after the stream opened: the stream then says so.
    while ids(&first).is_empty() {
        first = next(&mut stream, Duration::from_secs(10)).await;
    }
    assert_eq!(ids(&first), ["spiffe://example.org/first"]);

    // SIGKILL: no goodbye, the connection is reset under the agent.
    a.kill().await;
    let took = wait_synced_with(&agent, &b, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(5), "reconnected to the other replica in {took:?}");
    assert!(agent.state.link.failovers() >= 1, "counted in vouch_agent_server_failovers_total");
    // A new workload connection is served from the agent's cache and by the surviving replica.
    let client =
        spiffe::WorkloadApiClient::connect_to(format!("unix:{}", agent.socket.display())).await.unwrap();
    let svid =
        tokio::time::timeout(Duration::from_secs(10), client.fetch_x509_svid()).await.unwrap().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/first");

    // An entry created on the surviving replica reaches the workload's open stream, with an SVID
    // that replica signed.
    b.entry_for_me("second").await;
    let mut got = next(&mut stream, Duration::from_secs(10)).await;
    while ids(&got).len() < 2 {
        got = next(&mut stream, Duration::from_secs(10)).await;
    }
    assert_eq!(ids(&got), ["spiffe://example.org/first", "spiffe://example.org/second"]);
    let first_again = got.svids.iter().find(|s| s.spiffe_id.ends_with("/first")).unwrap();
    assert_eq!(first_again.x509_svid, first.svids[0].x509_svid, "the held SVID is kept, not re-issued");

    // JWT-SVIDs are minted by the surviving replica, and the agent's own SVID renewed there.
    let jwt = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest { audience: vec!["db".into()], spiffe_id: String::new() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.svids.len(), 2);
    let state = &agent.state;
    let renewed = tokio::time::timeout(Duration::from_secs(10), state.link.renew()).await.unwrap().unwrap();
    assert_eq!(renewed.spiffe_id.to_string(), AGENT_ID);
    state.link.set_identity(renewed).unwrap();
    let jwt = raw
        .fetch_jwtsvid(with_header(JwtsvidRequest {
            audience: vec!["queue".into()],
            spiffe_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(jwt.svids.len(), 2, "the renewed SVID is accepted");

    // The other replica dies too: no server at all. Workloads are served what the agent holds.
    b.kill().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.link.connected() {
        assert!(Instant::now() < deadline, "the agent did not notice that both replicas are gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cached =
        tokio::time::timeout(Duration::from_secs(10), client.fetch_x509_context()).await.unwrap().unwrap();
    let mut held: Vec<String> = cached.svids().iter().map(|s| s.spiffe_id().to_string()).collect();
    held.sort();
    assert_eq!(held, ["spiffe://example.org/first", "spiffe://example.org/second"], "served from the cache");
    let health = vouch_agent::admin::health(state, std::time::SystemTime::now()).await;
    assert!(health.ready && health.sync == vouch_api::explain::SyncStatus::ServingCached, "{health:?}");

    // The first replica comes back: the agent finds it again (a dead replica is retried later).
    let a = Replica::start(dir.path(), "a", port_a, &store, &kek).await;
    wait_synced_with(&agent, &a, Duration::from_secs(15)).await;
    a.entry_for_me("third").await;
    let mut got = next(&mut stream, Duration::from_secs(10)).await;
    while ids(&got).len() < 3 {
        got = next(&mut stream, Duration::from_secs(10)).await;
    }
    assert_eq!(got.svids.len(), 3, "the workload's stream was never interrupted");

    // The log says which server the agent synced with, and after a switch which one it left and
    // why; the join token shows nowhere.
    let logs = logs.text();
    let (addr_a, addr_b) =
        (format!("127.0.0.1:{port_a}"), format!("localhost:{port_b} (127.0.0.1:{port_b})"));
    let synced =
        |line: &str, server: &str| line.contains("synced with") && line.contains(&format!("server={server}"));
    assert!(logs.lines().any(|l| synced(l, &addr_a) && l.contains("synced with the server")), "{logs}");
    let switched = logs
        .lines()
        .find(|l| synced(l, &addr_b) && l.contains(&format!("previous={addr_a}")))
        .unwrap_or_else(|| panic!("no line on the switch to {addr_b}:\n{logs}"));
    assert!(switched.contains("the previous one failed") && switched.contains("reason="), "{switched}");
    assert!(
        logs.lines().any(|l| synced(l, &addr_a) && l.contains(&format!("previous={addr_b}"))),
        "the switch back is logged too:\n{logs}"
    );
    let secret = token["token"].as_str().unwrap();
    assert!(!logs.contains(secret), "the join token is in the logs");

    drop(stream);
    tokio::time::timeout(Duration::from_secs(15), agent.shutdown()).await.expect("the agent stops");
    drop(a);
}
