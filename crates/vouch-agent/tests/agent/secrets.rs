//! Secrets by identity through the agent's secret socket: this test process is the workload,
//! attested by uid and binary path as for SVIDs; the server decides by the grants (Cedar policies).

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use vouch_api::secrets::{decode_value, encode_value, SecretPut};

use crate::workload_api::Stack;

/// The test's grant: `/reader` may read secrets under `app/`.
const READER_READS_APP: &str = r#"permit(principal == Workload::"spiffe://example.org/reader", action == Action::"read", resource is Secret) when { resource.dirs.contains("app") };"#;

/// One request line on the secret socket; the answer line, within 10 s.
async fn ask(socket: &Path, line: &str) -> Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let mut answer = String::new();
        tokio::io::BufReader::new(s).read_line(&mut answer).await.unwrap();
        serde_json::from_str::<Value>(&answer).unwrap()
    };
    tokio::time::timeout(Duration::from_secs(10), exchange).await.expect("the agent answers within 10 s")
}

fn error(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_else(|| panic!("expected a refusal, got {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_reads_a_secret_by_identity_through_the_agent() {
    let stack = Stack::start().await;
    stack.entry_for_me("reader", "/reader", json!({})).await;
    stack.wait_entries(1).await;
    let put =
        SecretPut { value: encode_value(b"db-password-1"), owner: None, purpose: None, rotation_due: None };
    stack.admin.secrets().put("app/db", &put).await.unwrap();
    stack.admin.secrets().put("ops/root", &put).await.unwrap();
    let socket = vouch_agent::secret_api::socket_path(&stack.agent().socket);
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o777, "attestation decides, not file modes");

    // No policy permits: refused with the reason.
    let v = ask(&socket, r#"{"path": "app/db"}"#).await;
    let e = error(&v);
    assert!(
        e.contains("`spiffe://example.org/reader` may not read secret `app/db`")
            && e.contains("no policy permits"),
        "{e}"
    );

    stack.admin.policies().put("reader-reads-app", READER_READS_APP, None).await.unwrap();
    let v = ask(&socket, r#"{"path": "app/db"}"#).await;
    assert_eq!(v["spiffe_id"], "spiffe://example.org/reader", "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(decode_value(v["value"].as_str().unwrap()).unwrap(), b"db-password-1");

    // A new version is read at once (nothing cached on the node).
    let put2 = SecretPut { value: encode_value(b"db-password-2"), ..put.clone() };
    stack.admin.secrets().put("app/db", &put2).await.unwrap();
    let v = ask(&socket, r#"{"path": "app/db", "spiffe_id": "spiffe://example.org/reader"}"#).await;
    assert_eq!(
        (v["version"].as_u64(), decode_value(v["value"].as_str().unwrap()).unwrap()),
        (Some(2), b"db-password-2".to_vec())
    );

    assert!(error(&ask(&socket, r#"{"path": "ops/root"}"#).await)
        .contains("may not read secret `ops/root`: no policy permits"));
    assert!(error(&ask(&socket, r#"{"path": "app/missing"}"#).await).contains("no secret `app/missing`"));
    let other = ask(&socket, r#"{"path": "app/db", "spiffe_id": "spiffe://example.org/someone-else"}"#).await;
    assert_eq!(error(&other), "no identity issued");
    assert!(error(&ask(&socket, r#"{"path": "../etc"}"#).await).contains("expected one JSON line"));
    assert!(error(&ask(&socket, "not json").await).contains("expected one JSON line"));

    // Two identities: the workload says which.
    stack.entry_for_me("reader-2", "/reader-2", json!({})).await;
    stack.wait_entries(2).await;
    let e = ask(&socket, r#"{"path": "app/db"}"#).await;
    assert!(
        error(&e).contains("several identities") && error(&e).contains("spiffe://example.org/reader-2"),
        "{e}"
    );
    let v = ask(&socket, r#"{"path": "app/db", "spiffe_id": "spiffe://example.org/reader"}"#).await;
    assert_eq!(v["version"], 2, "{v}");
}

/// A watch on the secret socket: the request sent, lines read one at a time.
struct Watch {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>,
    // Kept open: closing it ends the watch.
    _wr: tokio::net::unix::OwnedWriteHalf,
}

impl Watch {
    async fn open(socket: &Path, line: &str) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let s = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (rd, mut wr) = s.into_split();
        wr.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        Self { lines: tokio::io::BufReader::new(rd).lines(), _wr: wr }
    }

    /// The next line within `limit`; `None` when the agent closed the connection.
    async fn next_within(&mut self, limit: Duration) -> Option<Value> {
        let line = tokio::time::timeout(limit, self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no line from the agent within {limit:?}"))
            .unwrap();
        line.map(|l| serde_json::from_str(&l).unwrap())
    }

    async fn next(&mut self) -> Value {
        self.next_within(Duration::from_secs(10)).await.expect("a line, not the end of the watch")
    }

    /// Nothing arrives within `quiet`.
    async fn quiet(&mut self, quiet: Duration) {
        if let Ok(line) = tokio::time::timeout(quiet, self.lines.next_line()).await {
            panic!("expected nothing, got {line:?}");
        }
    }
}

/// A new version of a secret, without metadata.
fn put(value: &[u8]) -> SecretPut {
    SecretPut { value: encode_value(value), owner: None, purpose: None, rotation_due: None }
}

/// A stack where this process is `/reader`, permitted to read under `app/`, and `app/db` holds
/// `v1`; and the agent's secret socket.
async fn reader_stack() -> (Stack, std::path::PathBuf) {
    let stack = Stack::start().await;
    stack.entry_for_me("reader", "/reader", json!({})).await;
    stack.wait_entries(1).await;
    stack.admin.secrets().put("app/db", &put(b"v1")).await.unwrap();
    stack.admin.policies().put("reader-reads-app", READER_READS_APP, None).await.unwrap();
    let socket = vouch_agent::secret_api::socket_path(&stack.agent().socket);
    (stack, socket)
}

fn version_and_value(v: &Value) -> (u64, Vec<u8>) {
    let version = v["version"].as_u64().unwrap_or_else(|| panic!("expected a version, got {v}"));
    (version, decode_value(v["value"].as_str().unwrap()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_brings_each_new_version_at_once_until_the_grant_is_revoked() {
    let (stack, socket) = reader_stack().await;
    let secrets = stack.admin.secrets();

    // The current version first, then each new one as soon as it is written.
    let mut watch = Watch::open(&socket, r#"{"path": "app/db", "watch": true}"#).await;
    assert_eq!(version_and_value(&watch.next().await), (1, b"v1".to_vec()));
    let mut worst = Duration::ZERO;
    for n in 2..=6u64 {
        let value = format!("v{n}");
        secrets.put("app/db", &put(value.as_bytes())).await.unwrap();
        let written = std::time::Instant::now();
        assert_eq!(version_and_value(&watch.next().await), (n, value.into_bytes()));
        worst = worst.max(written.elapsed());
    }
    eprintln!("watch: a new version reached the workload at most {worst:?} after the write returned");
    assert!(worst < Duration::from_millis(500), "{worst:?}");

    // A workload that holds version 6 hears nothing until a change; deleting the latest version
    // brings the one before (the latest live one).
    let mut known = Watch::open(&socket, r#"{"path": "app/db", "watch": true, "known_version": 6}"#).await;
    known.quiet(Duration::from_millis(300)).await;
    secrets.delete("app/db", &[6]).await.unwrap();
    assert_eq!(version_and_value(&known.next().await).0, 5);
    assert_eq!(version_and_value(&watch.next().await).0, 5);

    // Bad requests are refused before any watch.
    let mut bad = Watch::open(&socket, r#"{"path": "app/db", "known_version": 1}"#).await;
    assert!(error(&bad.next().await).contains("goes with"));

    // The grant deleted: every watch is told at once (not at the next version) and ends.
    let revoked = std::time::Instant::now();
    stack.admin.policies().delete("reader-reads-app").await.unwrap();
    for w in [&mut watch, &mut known] {
        let e = w.next().await;
        assert!(error(&e).contains("may not read secret `app/db`: no policy permits"), "{e}");
        assert!(w.next_within(Duration::from_secs(5)).await.is_none(), "the watch ends");
    }
    assert!(revoked.elapsed() < Duration::from_secs(2), "{:?}", revoked.elapsed());
    // And a new one is refused.
    let mut w = Watch::open(&socket, r#"{"path": "app/db", "watch": true}"#).await;
    assert!(error(&w.next().await).contains("no policy permits"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_are_bounded_per_identity_and_a_workload_that_stops_reading_is_dropped() {
    use vouch_agent::secret_api::MAX_WATCHES_PER_IDENTITY;
    let (stack, socket) = reader_stack().await;
    let secrets = stack.admin.secrets();
    let request = r#"{"path": "app/db", "watch": true}"#;

    let mut held = Vec::new();
    for _ in 0..MAX_WATCHES_PER_IDENTITY {
        let mut w = Watch::open(&socket, request).await;
        assert_eq!(version_and_value(&w.next().await).0, 1);
        held.push(w);
    }
    let mut over = Watch::open(&socket, request).await;
    let e = over.next().await;
    assert!(error(&e).contains(&format!("already holds {MAX_WATCHES_PER_IDENTITY} secret watches")), "{e}");
    assert!(over.next_within(Duration::from_secs(5)).await.is_none(), "refused and closed");
    // Plain reads are not held up by the watches.
    assert_eq!(ask(&socket, r#"{"path": "app/db"}"#).await["version"], 1);
    // A watch closed by its workload frees its place.
    held.pop();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut w = Watch::open(&socket, request).await;
        let v = w.next().await;
        if v["version"] == 1 {
            held.push(w);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the closed watch's place was not freed: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);

    // A workload that never reads: 64 KiB versions fill its socket; the agent gives up on it
    // after a line waited 5 s, and closes the connection.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stalled = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stalled.write_all(format!("{request}\n").as_bytes()).await.unwrap();
    let big = vec![b'x'; 64 * 1024];
    for _ in 0..8 {
        secrets.put("app/db", &put(&big)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Not a byte read until the agent's 5 s for a line are long past.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut sink = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stalled.read_to_end(&mut sink)).await;
    assert!(read.is_ok(), "the agent did not close the stalled watch within 20 s");
    let lines = sink.iter().filter(|b| **b == b'\n').count();
    assert!(lines < 9, "the stalled workload was not sent every version: {lines} lines");
}
