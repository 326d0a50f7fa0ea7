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

#[tokio::test]
async fn corrupt_rows_are_reported_not_panicked_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vouch.db");
    let store = SqliteStore::open(&path).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO entries (id, spiffe_id, parent_id, revision, data) VALUES ('x','a','b',0,'{not json')",
        [],
    )
    .unwrap();
    let err = store.list_entries(&EntryFilter::default()).await.unwrap_err().to_string();
    assert!(err.contains("stored data is unreadable"), "{err}");
}
