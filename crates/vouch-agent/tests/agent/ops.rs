//! The agent's operability: health and metrics over the admin socket (the typed wire contract the
//! CLI uses), the values moving with real Workload API calls, and the `GET /metrics` listener
//! answering nothing else and refusing oversized requests.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vouch_api::explain::{AdminAnswer, AdminRequest, Health, MetricsText, SyncStatus};
use vouch_proto::workload::X509svidRequest;

use crate::workload_api::{raw_client, with_header, Stack};

/// Asks the agent's admin socket, as `vouch agent ...` does.
async fn ask<T: serde::de::DeserializeOwned>(socket: &Path, request: &AdminRequest) -> T {
    use tokio::io::AsyncBufReadExt;
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        let mut line = serde_json::to_vec(request).unwrap();
        line.push(b'\n');
        s.write_all(&line).await.unwrap();
        let mut answer = String::new();
        tokio::io::BufReader::new(s).read_line(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("admin socket answers");
    match serde_json::from_str::<AdminAnswer<T>>(&answer).unwrap() {
        AdminAnswer::Answer(a) => a,
        AdminAnswer::Refused(r) => panic!("refused: {}", r.error),
    }
}

/// The value of one series in a text exposition.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .parse()
        .unwrap()
}

/// Sends `request` as raw bytes to the metrics listener and reads until it closes the connection.
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The listener may close before reading all of an oversized request.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("metrics listener answers")
}

fn status_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_follow_workload_calls_and_the_server_link() {
    let mut stack = Stack::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let admin_socket = stack.agent_config.data_dir.join("admin.sock");
    let addr = stack.agent().metrics_addr.expect("metrics listener bound");

    let health: Health = ask(&admin_socket, &AdminRequest::Health {}).await;
    assert!(health.ready && health.workload_api && health.agent_svid_valid, "{health:?}");
    assert_eq!(health.sync, SyncStatus::Connected);
    assert!(health.reason.starts_with("ready: connected to the server at 127.0.0.1:"), "{}", health.reason);
    assert!(health.last_sync_at.is_some());
    assert_eq!(health.agent_id, crate::workload_api::AGENT_ID);

    let before: MetricsText = ask(&admin_socket, &AdminRequest::Metrics {}).await;
    let m = |text: &str, series: &str| value(text, series);
    let fetches = "vouch_agent_workload_api_request_seconds_count{rpc=\"FetchX509SVID\"}";
    let no_match = "vouch_agent_workload_refusals_total{reason=\"no_match\"}";
    let missing_header = "vouch_agent_workload_refusals_total{reason=\"missing_header\"}";
    assert_eq!(m(&before.metrics, "vouch_agent_sync_connected"), 1.0);
    assert_eq!(m(&before.metrics, "vouch_agent_workload_api_up"), 1.0);
    assert_eq!(m(&before.metrics, "vouch_agent_svids_held"), 0.0);

    // Refused: no entry matches this process yet; and a request without the security header.
    let mut raw = raw_client(&stack.agent().socket).await;
    let status = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    raw.fetch_x509svid(tonic::Request::new(X509svidRequest {})).await.unwrap_err();
    let refused: MetricsText = ask(&admin_socket, &AdminRequest::Metrics {}).await;
    assert_eq!(m(&refused.metrics, no_match), m(&before.metrics, no_match) + 1.0);
    assert_eq!(m(&refused.metrics, missing_header), m(&before.metrics, missing_header) + 1.0);
    assert_eq!(m(&refused.metrics, fetches), m(&before.metrics, fetches) + 2.0);

    // Served: the SVID is now held, the latency recorded once more, no new refusal.
    stack.entry_for_me("ops", "/ops", json!({})).await;
    stack.wait_entries(1).await;
    let mut stream = raw.fetch_x509svid(with_header(X509svidRequest {})).await.unwrap().into_inner();
    let first =
        tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(first.svids.len(), 1);
    let served: MetricsText = ask(&admin_socket, &AdminRequest::Metrics {}).await;
    assert_eq!(m(&served.metrics, "vouch_agent_svids_held"), 1.0);
    assert_eq!(m(&served.metrics, "vouch_agent_entries"), 1.0);
    assert_eq!(m(&served.metrics, fetches), m(&refused.metrics, fetches) + 1.0);
    assert_eq!(m(&served.metrics, no_match), m(&refused.metrics, no_match));
    let expiry = m(&served.metrics, "vouch_agent_svid_expiry_timestamp_seconds");
    assert_eq!(expiry, health.agent_svid_expires_at as f64);

    // The HTTP listener serves the same text, and nothing else.
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("content-type: text/plain; version=0.0.4"), "{answer}");
    assert!(answer.contains("\nvouch_agent_svids_held 1\n"), "{answer}");
    let answer = http(addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 404"), "{answer}");
    let answer = http(addr, b"GET /metrics/../debug HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 404"), "{answer}");
    let answer = http(addr, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi").await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("allow: GET"), "{answer}");
    // A request head over the bound is refused (431) or cut off, never read whole.
    let mut huge = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    huge.extend(b"\r\n\r\n");
    let answer = http(addr, &huge).await;
    assert!(answer.is_empty() || status_line(&answer).starts_with("HTTP/1.1 431"), "{answer}");
    // A body is never read: the answer comes at once, and the listener still serves afterwards.
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n").await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");
    let answer = http(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(status_line(&answer).starts_with("HTTP/1.1 200"), "{answer}");

    // The server goes away: still ready, serving what it holds, and the metrics say so.
    stack.server.take().unwrap().shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.agent().state.link.connected() {
        assert!(Instant::now() < deadline, "agent did not notice the server went away");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health: Health = ask(&admin_socket, &AdminRequest::Health {}).await;
    assert!(health.ready, "{health:?}");
    assert_eq!(health.sync, SyncStatus::ServingCached);
    assert!(health.reason.contains("serving cached SVIDs"), "{}", health.reason);
    assert_eq!(health.svids_held, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cut: MetricsText = ask(&admin_socket, &AdminRequest::Metrics {}).await;
        assert_eq!(m(&cut.metrics, "vouch_agent_sync_connected"), 0.0);
        if m(&cut.metrics, "vouch_agent_sync_reconnects_total") >= 1.0
            && m(&cut.metrics, "vouch_agent_server_errors_total{op=\"sync\"}") >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "no reconnect or sync error counted:\n{}", cut.metrics);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bad request line is refused with what the socket expects.
    let exchange = async {
        use tokio::io::AsyncBufReadExt;
        let mut s = tokio::net::UnixStream::connect(&admin_socket).await.unwrap();
        s.write_all(b"{\"reboot\": {}}\n").await.unwrap();
        let mut line = String::new();
        tokio::io::BufReader::new(s).read_line(&mut line).await.unwrap();
        line
    };
    let line = tokio::time::timeout(Duration::from_secs(10), exchange).await.unwrap();
    let refused: AdminAnswer<Health> = serde_json::from_str(&line).unwrap();
    assert!(matches!(&refused, AdminAnswer::Refused(r) if r.error.contains("{\"health\": {}}")), "{line}");

    // Stopped: the metrics listener no longer answers. (Open streams would hold a graceful stop.)
    drop((stream, raw));
    let agent = stack.agent.take().unwrap();
    tokio::time::timeout(Duration::from_secs(20), agent.shutdown()).await.expect("agent stops");
    let refused =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await.unwrap();
    assert!(refused.is_err(), "metrics listener closed with the agent");
}

/// Runs `script` in Python 3 as uid/gid 65534 and returns what it printed (bounded by a timeout).
fn python_as_nobody(script: &str) -> String {
    let child = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) and python3 are installed");
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A stack whose Workload API socket other uids can reach (in a directory they may enter), with
/// at most `total` connections and `per_uid` from one uid; the directory goes when dropped.
async fn stack_with_bounds(total: usize, per_uid: usize) -> (tempfile::TempDir, std::path::PathBuf, Stack) {
    let socket_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(socket_dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let socket = socket_dir.path().join("api.sock");
    let stack = Stack::start_with(|c| {
        c.socket = socket.clone();
        c.max_connections = Some(total);
        c.max_connections_per_uid = Some(per_uid);
    })
    .await;
    (socket_dir, socket, stack)
}

/// Any local user can connect to the Workload API, so connections are bounded per uid and in
/// total: one user holding its share cannot lock the others out, and a refused connection costs
/// nothing (closed before attestation, counted once, no leak).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_per_uid_and_one_user_cannot_lock_out_another() {
    let (_socket_dir, socket, stack) = stack_with_bounds(8, 3).await;
    stack.entry_for_me("held", "/held", json!({})).await;
    stack.wait_entries(1).await;
    let admin_socket = stack.agent_config.data_dir.join("admin.sock");

    // This uid (root) takes its share with connections that send nothing.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    // The next one from the same uid is closed at once.
    let mut over = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await.expect("closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "refused connection got {n:?}");

    // Another user is still served: the agent answers its HTTP/2 preface with SETTINGS.
    let script = format!(
        "import socket; s=socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect({:?}); \
         s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n' + bytes([0,0,0,4,0,0,0,0,0])); \
         d=s.recv(9); print('served' if len(d) == 9 and d[3] == 4 else 'closed')",
        socket.display().to_string()
    );
    let answer = tokio::task::spawn_blocking(move || python_as_nobody(&script)).await.unwrap();
    assert_eq!(answer, "served");

    let metrics: MetricsText = ask(&admin_socket, &AdminRequest::Metrics {}).await;
    assert!(
        value(&metrics.metrics, "vouch_agent_workload_refusals_total{reason=\"connection_limit\"}") >= 1.0
    );

    // Streams per connection are bounded too (each costs memory): the server's SETTINGS say so.
    drop(idle.pop());
    let settings = async {
        loop {
            // Slots are freed as the dropped connection's task ends: retry, but not in a busy loop.
            let Ok(mut c) = tokio::net::UnixStream::connect(&socket).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            hello.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
            let mut head = [0u8; 9];
            if c.write_all(&hello).await.is_err() || c.read_exact(&mut head).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let mut body = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
            c.read_exact(&mut body).await.unwrap();
            break (head[3], body);
        }
    };
    let (kind, body) = tokio::time::timeout(Duration::from_secs(10), settings).await.expect("SETTINGS");
    assert_eq!(kind, 4, "the server speaks first with SETTINGS");
    let params: Vec<(u16, u32)> = body
        .chunks_exact(6)
        .map(|p| (u16::from_be_bytes([p[0], p[1]]), u32::from_be_bytes([p[2], p[3], p[4], p[5]])))
        .collect();
    assert!(params.contains(&(3, vouch_agent::MAX_STREAMS_PER_CONNECTION)), "{params:?}");

    // Freed slots are reusable: once the idle connections go, this uid is served again.
    drop(idle);
    drop(over);
    let deadline = Instant::now() + Duration::from_secs(10);
    let svid = loop {
        let served = async {
            let client =
                spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display())).await.ok()?;
            client.fetch_x509_svid().await.ok()
        };
        if let Some(svid) = served.await {
            break svid;
        }
        assert!(Instant::now() < deadline, "slots were not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(svid.spiffe_id().to_string(), "spiffe://example.org/held");
}

/// A Python process as `uid` that opens `n` connections to `socket` and holds them until it is
/// killed (dropping the child kills it), with how many the agent kept open (a refused connection
/// is closed at once).
async fn hold_connections(uid: u32, socket: &Path, n: usize) -> (tokio::process::Child, usize) {
    // The agent speaks first on a connection it keeps (its SETTINGS) and closes one it refuses:
    // peeking at the first byte tells which, without a guess at how long the agent takes. The
    // alarm ends the holder should the test die.
    let script = format!(
        "import signal,socket,sys\nsignal.alarm(30)\nsocks=[]\nfor _ in range({n}):\n    \
         s=socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect({path:?}); socks.append(s)\n\
         held=sum(s.recv(1, socket.MSG_PEEK) != b'' for s in socks)\nprint(held, flush=True)\n\
         sys.stdin.readline()\n",
        path = socket.display().to_string()
    );
    let mut child = tokio::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("setpriv (util-linux) and python3 are installed");
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let read = tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line);
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("the holder reports").unwrap();
    let held = line.trim().parse().unwrap_or_else(|_| panic!("holder as uid {uid} said {line:?}"));
    (child, held)
}

/// Two unprivileged uids that together take every connection they can cannot lock out a third
/// uid or root: the last quarter of the slots is a reserve that only uids holding few connections
/// may use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uids_cannot_take_every_connection_slot() {
    if std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap() != 0 {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let (_socket_dir, socket, stack) = stack_with_bounds(64, 32).await;
    stack.entry_for_me("root", "/root-workload", json!({})).await;
    stack.wait_entries(1).await;

    // Idle connections are closed after FIRST_REQUEST_TIMEOUT (10 s): all of this happens well
    // within it, so every slot taken stays taken.
    let (_a, held_a) = hold_connections(65534, &socket, 40).await;
    let (_b, held_b) = hold_connections(65533, &socket, 40).await;
    // A third uid still gets connections, as many as the reserve grants one uid.
    let (_c, held_c) = hold_connections(65532, &socket, 6).await;
    // And root is served an SVID.
    let served = async {
        let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", socket.display())).await?;
        client.fetch_x509_svid().await
    };
    let svid = tokio::time::timeout(Duration::from_secs(10), served).await.expect("root is answered");
    assert_eq!(held_c, vouch_agent::conn_limits::RESERVE_PER_UID, "a third uid is served from the reserve");
    assert_eq!(
        svid.expect("root is served while two uids hold what they can").spiffe_id().to_string(),
        "spiffe://example.org/root-workload"
    );
    assert_eq!(held_a, 32, "the first uid holds its bound");
    assert_eq!(held_b, 64 - 16 - 32, "the second uid holds the rest of the shared part, not the reserve");
}
