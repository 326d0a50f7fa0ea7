//! The conformance suite against SQLite (in memory and on disk), and SQLite-specific behaviour.

// A test fails by panicking: unwrap and expect are how it says what broke. End-to-end tests run
// real processes on the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::Arc;

use vouch_store::{conformance, EntryFilter, SqliteStore, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_in_memory_conforms() {
    conformance::run(Arc::new(SqliteStore::in_memory().unwrap())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_conforms_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vouch.db");
    conformance::run(Arc::new(SqliteStore::open(&path).unwrap())).await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    // Reopening sees what was written.
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(again.load_authority().await.unwrap().as_deref(), Some("{\"v\":2}"));
    assert!(again.list_entries(&EntryFilter::default()).await.unwrap().is_empty());
}

#[tokio::test]
async fn refuses_a_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vouch.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("newer than this vouch"), "{err}");
}

fn entry(id: &str, parent: &str) -> vouch_core::Entry {
    let spec: vouch_core::EntrySpec = serde_json::from_value(serde_json::json!({
        "id": id, "spiffe_id": format!("spiffe://example.org/{id}"), "parent_id": parent, "selectors": ["unix:uid:1"],
    }))
    .unwrap();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    vouch_core::Entry::create(spec, vouch_core::EntryId::new(id).unwrap(), &td, 1000).unwrap()
}

/// One damaged row must not take the whole listing (and with it every sync and admin check) down:
/// it is skipped, counted and reported by id, without its content.
#[tokio::test]
async fn damaged_rows_are_skipped_and_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vouch.db");
    let store = SqliteStore::open(&path).unwrap();
    let agent = "spiffe://example.org/agent/a";
    store
        .create_entries(&[entry("a", agent), entry("b", agent), entry("c", agent), entry("d", agent)])
        .await
        .unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    // Not JSON; JSON that is no entry (with a value that must not be echoed); a BLOB; another row's id.
    conn.execute("UPDATE entries SET data = '{not json' WHERE id = 'a'", []).unwrap();
    conn.execute(r#"UPDATE entries SET data = '{"id":"b","spiffe_id":"hunter2"}' WHERE id = 'b'"#, [])
        .unwrap();
    conn.execute("UPDATE entries SET data = x'00ff' WHERE id = 'c'", []).unwrap();
    conn.execute(r#"UPDATE entries SET data = replace(data, '"id":"d"', '"id":"zz"') WHERE id = 'd'"#, [])
        .unwrap();
    conn.execute(
        "INSERT INTO entries (id, spiffe_id, parent_id, revision, data) VALUES ('x','a','b',0,'{}')",
        [],
    )
    .unwrap();
    drop(conn);
    store.create_entries(&[entry("good", agent)]).await.unwrap();

    let listing = store.scan_entries(&EntryFilter::default()).await.unwrap();
    let ids: Vec<&str> = listing.entries.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["good"]);
    let damaged: Vec<(&str, &str)> =
        listing.damaged.iter().map(|d| (d.id.as_str(), d.reason.as_str())).collect();
    assert_eq!(damaged.len(), 5, "{damaged:?}");
    assert!(damaged[0].0 == "a" && damaged[0].1.starts_with("data is not valid JSON"), "{damaged:?}");
    assert!(damaged[1].0 == "b" && damaged[1].1.starts_with("data is not a valid entry"), "{damaged:?}");
    assert_eq!(damaged[2], ("c", "data is not text"));
    assert_eq!(damaged[3], ("d", "the data's id differs from the row's id"));
    assert_eq!(damaged[4].0, "x");
    assert!(!format!("{listing:?}").contains("hunter2"), "stored content is not echoed");
    assert_eq!(store.damaged_rows_skipped(), 5);

    // The plain listing and filtered listings (the sync path) skip them too.
    assert_eq!(store.list_entries(&EntryFilter::default()).await.unwrap().len(), 1);
    let by_parent = EntryFilter { parent_id: Some(agent.parse().unwrap()), ..Default::default() };
    assert_eq!(store.list_entries(&by_parent).await.unwrap().len(), 1);
    assert_eq!(store.damaged_rows_skipped(), 5 + 5 + 4);

    // Asking for the damaged entry itself says which and what to do; deleting it changes nothing.
    let id = vouch_core::EntryId::new("b").unwrap();
    let err = store.get_entry(&id).await.unwrap_err().to_string();
    assert!(err.contains("entry `b` is damaged") && err.contains("restore the database"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    assert!(store.delete_entry(&id).await.is_err());
    assert_eq!(store.scan_entries(&EntryFilter::default()).await.unwrap().damaged.len(), 5);
}
