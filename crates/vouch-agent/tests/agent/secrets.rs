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

    stack.admin.policies().put("reader-reads-app", READER_READS_APP).await.unwrap();
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
