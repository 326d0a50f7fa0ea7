//! The secret store: envelope encryption at rest, versions, soft delete and destroy, bad input,
//! and reads by attested workloads through their agent, decided by the grants.

use super::*;
use vouch_api::secrets::{decode_value, encode_value, SecretPut, VersionState};

/// A value no other test writes, so finding it anywhere is this test's leak.
const PLAIN_1: &[u8] = b"plaintext-7f3a9c1e-first-version-of-the-db-password";
const PLAIN_2: &[u8] = b"plaintext-b41d0e55-second-version-of-the-db-password";

fn put(value: &[u8]) -> SecretPut {
    SecretPut { value: encode_value(value), owner: None, purpose: None, rotation_due: None }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of the SQLite database files (db, -wal, -shm).
fn database_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for name in ["vouch.db", "vouch.db-wal", "vouch.db-shm"] {
        if let Ok(b) = std::fs::read(dir.join(name)) {
            bytes.extend(b);
        }
    }
    bytes
}

/// The admin path through a real server on SQLite: versions, metadata, soft delete and undelete,
/// destroy, bad input refused with reasons and nothing changed; then the database files and the
/// captured logs are searched byte by byte for the plaintexts (and their base64): absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_versioned_and_never_stored_or_logged_in_plaintext() {
    let logs = CapturedLogs::install();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let admin = AdminClient::unix(&server.admin_socket);
    let secrets = admin.secrets();

    let first = SecretPut {
        owner: Some("team-payments".into()),
        purpose: Some("payments database".into()),
        rotation_due: Some(4_000_000_000),
        ..put(PLAIN_1)
    };
    let w1 = secrets.put("payments/db/password", &first).await.unwrap();
    assert_eq!((w1.version, w1.secret.owner.as_str()), (1, "team-payments"));
    let w2 = secrets.put("payments/db/password", &put(PLAIN_2)).await.unwrap();
    assert_eq!(w2.version, 2);
    assert_eq!(
        (w2.secret.owner.as_str(), w2.secret.purpose.as_str(), w2.secret.rotation_due),
        ("team-payments", "payments database", Some(4_000_000_000)),
        "metadata not given is kept"
    );
    secrets.put("payments/api-key", &put(b"k")).await.unwrap();
    secrets.put("search/token", &put(b"t")).await.unwrap();

    let latest = secrets.get("payments/db/password", None).await.unwrap();
    assert_eq!((latest.version, decode_value(&latest.value).unwrap()), (2, PLAIN_2.to_vec()));
    let v1 = secrets.get("payments/db/password", Some(1)).await.unwrap();
    assert_eq!(decode_value(&v1.value).unwrap(), PLAIN_1);

    let listed = secrets.list(Some("payments")).await.unwrap();
    let paths: Vec<String> = listed.secrets.iter().map(|s| s.path.to_string()).collect();
    assert_eq!(paths, ["payments/api-key", "payments/db/password"]);
    assert_eq!(secrets.list(None).await.unwrap().secrets.len(), 3);
    assert!(secrets.list(Some("pay")).await.unwrap().secrets.is_empty(), "prefixes are whole segments");

    // Soft delete of the latest: reads fall back to the latest live version; undelete restores.
    let d = secrets.delete("payments/db/password", &[]).await.unwrap();
    assert_eq!(d.changed, [2]);
    assert_eq!(secrets.get("payments/db/password", None).await.unwrap().version, 1);
    let (code, msg) = refusal(secrets.get("payments/db/password", Some(2)).await, 404);
    assert!(code == "not_found" && msg.contains("version 2 is deleted") && msg.contains("undelete"), "{msg}");
    assert_eq!(secrets.undelete("payments/db/password", &[2]).await.unwrap().changed, [2]);
    assert_eq!(secrets.get("payments/db/password", None).await.unwrap().version, 2);

    // Destroy: the sealed value is gone; the version stays listed as destroyed.
    assert_eq!(secrets.destroy("payments/db/password", &[1]).await.unwrap().changed, [1]);
    let (_, msg) = refusal(secrets.get("payments/db/password", Some(1)).await, 404);
    assert!(msg.contains("version 1 was destroyed"), "{msg}");
    let versions = secrets.versions("payments/db/password").await.unwrap();
    let states: Vec<VersionState> = versions.versions.iter().map(|v| v.state).collect();
    assert_eq!(states, [VersionState::Destroyed, VersionState::Live]);
    assert!(secrets.undelete("payments/db/password", &[1]).await.unwrap().changed.is_empty());
    let stored = server.state.store.get_secret_version(&"payments/db/password".parse().unwrap(), 1).await;
    let stored = stored.unwrap().unwrap();
    assert_eq!((stored.sealed_key, stored.ciphertext), (None, None));

    // Bad input: a clear error, nothing changed.
    let (_, msg) = refusal(secrets.delete("payments/db/password", &[2, 7]).await, 404);
    assert!(msg.contains("has no version 7"), "{msg}");
    assert_eq!(secrets.get("payments/db/password", None).await.unwrap().version, 2, "version 2 not deleted");
    let writes = server.state.store.write_transactions();
    let too_big = vec![b'x'; 64 * 1024 + 1];
    let (code, msg) = refusal(secrets.put("payments/db/password", &put(&too_big)).await, 400);
    assert!(code == "invalid_request" && msg.contains("65537 bytes") && msg.contains("64 KiB"), "{msg}");
    for (path, why) in [
        ("a/../b", "`..` segment"),
        ("a//b", "empty segment"),
        ("/etc/passwd", "start or end"),
        ("a b", "only letters"),
    ] {
        let (_, msg) = refusal(secrets.put(path, &put(b"v")).await, 400);
        assert!(msg.contains(why), "{path}: {msg}");
    }
    let bad_b64 = SecretPut { value: "plaintext-not-base64!!".into(), ..put(b"") };
    let (_, msg) = refusal(secrets.put("payments/x", &bad_b64).await, 400);
    assert!(msg.contains("not valid base64") && !msg.contains("plaintext"), "the value is not echoed: {msg}");
    let (_, msg) = refusal(secrets.put("payments/x", &put(b"")).await, 400);
    assert!(msg.contains("is empty"), "{msg}");
    let long_owner = SecretPut { owner: Some("o".repeat(300)), ..put(b"v") };
    assert!(refusal(secrets.put("payments/x", &long_owner).await, 400).1.contains("owner"));
    let (_, msg) = refusal(secrets.destroy("payments/db/password", &[]).await, 400);
    assert!(msg.contains("name the versions to destroy"), "{msg}");
    let (_, msg) = refusal(secrets.get("nope/nothing", None).await, 404);
    assert!(msg.contains("no secret `nope/nothing`"), "{msg}");
    let (_, msg) = refusal(secrets.put("payments/db/password", &put(&too_big)).await, 400);
    assert!(!msg.contains("xxxxxxxx"));
    assert_eq!(server.state.store.write_transactions(), writes, "refusals write nothing");
    assert_eq!(secrets.versions("payments/db/password").await.unwrap().versions.len(), 2);
    assert!(secrets.list(Some("payments/x")).await.unwrap().secrets.is_empty());

    server.shutdown().await;
    let db = database_bytes(dir.path());
    assert!(db.len() > 4096);
    let text = logs.text();
    assert!(text.contains("secret.put") && text.contains("payments/db/password"), "audited");
    for plain in [PLAIN_1, PLAIN_2] {
        assert!(!contains(&db, plain), "plaintext in the database files");
        assert!(!contains(&db, encode_value(plain).as_bytes()), "base64 plaintext in the database files");
        assert!(!text.contains(std::str::from_utf8(plain).unwrap()), "plaintext in the logs");
        assert!(!text.contains(&encode_value(plain)), "base64 plaintext in the logs");
    }
}

/// Sealed values are bound to their path and version: rows moved in the database (swapped between
/// two secrets, or between two versions of one) are refused with an error that names the secret
/// and says what happened, never with another secret's value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_value_moved_to_another_path_or_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let secrets_client = AdminClient::unix(&server.admin_socket);
    let secrets = secrets_client.secrets();
    secrets.put("team/a", &put(b"value-of-a-0001")).await.unwrap();
    secrets.put("team/b", &put(b"value-of-b-0001")).await.unwrap();
    secrets.put("team/b", &put(b"value-of-b-0002")).await.unwrap();
    server.shutdown().await;

    let conn = rusqlite::Connection::open(dir.path().join("vouch.db")).unwrap();
    let row = |path: &str, version: i64| -> (Vec<u8>, Vec<u8>) {
        conn.query_row(
            "SELECT sealed_key, ciphertext FROM secret_versions WHERE path = ?1 AND version = ?2",
            rusqlite::params![path, version],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    };
    let set = |path: &str, version: i64, (key, ct): &(Vec<u8>, Vec<u8>)| {
        conn.execute(
            "UPDATE secret_versions SET sealed_key = ?3, ciphertext = ?4 WHERE path = ?1 AND version = ?2",
            rusqlite::params![path, version, key, ct],
        )
        .unwrap();
    };
    let (a1, b1, b2) = (row("team/a", 1), row("team/b", 1), row("team/b", 2));
    set("team/a", 1, &b1);
    set("team/b", 1, &a1);
    set("team/b", 2, &b1);
    // The value alone moved, with its own row's data key left behind.
    conn.execute(
        "INSERT INTO secrets (path, owner, purpose, created_at, updated_at, current_version) VALUES ('team/c', '', '', 1, 1, 1)",
        [],
    )
    .unwrap();
    conn.execute(
        "INSERT INTO secret_versions (path, version, created_at, sealed_key, ciphertext) VALUES ('team/c', 1, 1, ?1, ?2)",
        rusqlite::params![b2.0, a1.1],
    )
    .unwrap();
    drop(conn);

    let server = start(dir.path()).await;
    let admin = AdminClient::unix(&server.admin_socket);
    for (path, version) in [("team/a", 1), ("team/b", 1), ("team/b", 2), ("team/c", 1)] {
        let (code, msg) = refusal(admin.secrets().get(path, Some(version)).await, 500);
        assert_eq!(code, "internal");
        assert!(
            msg.contains(&format!("secret `{path}` version {version} cannot be decrypted"))
                && msg.contains("sealed for another path or version"),
            "{msg}"
        );
        assert!(!msg.contains("value-of"), "{msg}");
    }
    server.shutdown().await;
}

/// The grant of the tests: `spiffe://example.org/app` may read secrets under `app/`.
const APP_READS_APP: &str = r#"permit(principal == Workload::"spiffe://example.org/app", action == Action::"read", resource is Secret) when { resource.dirs.contains("app") };"#;

/// An agent reads a secret for a workload it serves, as that workload's SPIFFE ID: denied by
/// while no policy permits, with the reason; allowed once a Cedar grant permits;
/// refused for an entry the agent does not serve, for admins on the agent route, and for denied
/// paths, each with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_reads_through_the_agent_are_decided_by_grants() {
    let state = state_in_memory(ManualClock::new()).await;
    let svid = attest_in_app(&state, "spiffe://example.org/agent/join/n1").await.unwrap();
    let other = attest_in_app(&state, "spiffe://example.org/agent/join/n2").await.unwrap();
    for (id, spiffe_id, parent) in [
        ("app", "spiffe://example.org/app", "spiffe://example.org/agent/join/n1"),
        ("web", "spiffe://example.org/web", "spiffe://example.org/agent/join/n1"),
        ("elsewhere", "spiffe://example.org/app", "spiffe://example.org/agent/join/n2"),
    ] {
        let body =
            json!({"id": id, "spiffe_id": spiffe_id, "parent_id": parent, "selectors": ["unix:uid:1000"]});
        let (s, v) = call(&state, ROOT, "POST", "/v1/entries", Some(&body.to_string())).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    for (path, value) in [("app/db", "app-db-secret"), ("ops/root", "ops-secret")] {
        let body = serde_json::to_string(&put(value.as_bytes())).unwrap();
        let (s, v) =
            call(&state, ROOT, "PUT", &format!("/v1/secrets/{}", path.replace('/', "%2F")), Some(&body))
                .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    let read = |caller: Caller, entry: &str, path: &str| {
        let body = json!({"entry_id": entry, "path": path}).to_string();
        let state = state.clone();
        async move { call(&state, caller, "POST", "/v1/agent/secret", Some(&body)).await }
    };

    let (s, v) = read(agent_caller(&svid), "app", "app/db").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("`spiffe://example.org/app` may not read secret `app/db`")
            && msg.contains("no policy permits"),
        "{msg}"
    );

    let body = json!({ "text": APP_READS_APP }).to_string();
    let (s, v) = call(&state, ROOT, "PUT", "/v1/policies/app-reads-app", Some(&body)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = read(agent_caller(&svid), "app", "app/db").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["spiffe_id"], "spiffe://example.org/app");
    assert_eq!(v["version"], 1);
    assert_eq!(decode_value(v["value"].as_str().unwrap()).unwrap(), b"app-db-secret");
    // Deny wins: a forbid on the path beats the permit, and the refusal names it.
    let forbid = json!({ "text": r#"forbid(principal, action, resource == Secret::"app/db");"# }).to_string();
    let (s, v) = call(&state, ROOT, "PUT", "/v1/policies/no-app-db", Some(&forbid)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = read(agent_caller(&svid), "app", "app/db").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("denied by `no-app-db`"), "{v}");
    let (s, v) = call(&state, ROOT, "DELETE", "/v1/policies/no-app-db", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");

    let (s, v) = read(agent_caller(&svid), "app", "ops/root").await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("may not read secret `ops/root`: no policy permits"),
        "{v}"
    );
    // Facts from entries decide too, and a change to an entry counts at the next read (the
    // server keeps principals' facts between reads, and forgets them when an entry changes).
    let by_owner = json!({ "text": r#"permit(principal, action == Action::"read", resource == Secret::"ops/root") when { principal.owners.contains("team-ops") };"# }).to_string();
    let (s, v) = call(&state, ROOT, "PUT", "/v1/policies/ops-owners", Some(&by_owner)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    for (owner, allowed) in [("team-ops", true), ("team-web", false), ("team-ops", true)] {
        let (s, entry) = call(&state, ROOT, "GET", "/v1/entries/app", None).await;
        assert_eq!(s, StatusCode::OK, "{entry}");
        let patch = json!({"expected_revision": entry["revision"], "owner": owner}).to_string();
        let (s, v) = call(&state, ROOT, "PATCH", "/v1/entries/app", Some(&patch)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = read(agent_caller(&svid), "app", "ops/root").await;
        let want = if allowed { StatusCode::OK } else { StatusCode::FORBIDDEN };
        assert_eq!(s, want, "owner {owner}: {v}");
    }
    let (s, v) = call(&state, ROOT, "DELETE", "/v1/policies/ops-owners", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = read(agent_caller(&svid), "web", "app/db").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "another identity of the same agent: {v}");
    let (s, v) = read(agent_caller(&other), "app", "app/db").await;
    assert!(s == StatusCode::FORBIDDEN || s == StatusCode::NOT_FOUND, "{s}: {v}");
    assert!(!v.to_string().contains("app-db-secret"));
    let (s, v) = read(ROOT, "app", "app/db").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "admins use the admin API: {v}");
    let (s, v) = read(agent_caller(&svid), "app", "app/missing").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = read(agent_caller(&svid), "app", "app/../ops/root").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
}
