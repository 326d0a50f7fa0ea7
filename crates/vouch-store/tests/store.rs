//! The conformance suite against SQLite (in memory and on disk) and PostgreSQL (a private cluster),
//! migrations, and backend-specific behaviour.

// A test fails by panicking: unwrap and expect are how it says what broke. End-to-end tests run
// real processes on the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::sync::Arc;

use vouch_store::test_postgres::PgCluster;
use vouch_store::{
    conformance, AuthorityWrite, Change, EntryFilter, PgUrl, PostgresStore, SqliteStore, SqliteSynchronous,
    Store,
};

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

/// The schema of the builds before `schema_version` (steps counted in `user_version` only),
/// written as they wrote it.
fn create_legacy_database(path: &std::path::Path, steps: u32) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    // Step 1 as those builds created it (kept here, frozen, apart from the code's own list).
    conn.execute_batch(
        "CREATE TABLE entries (id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, parent_id TEXT NOT NULL, revision INTEGER NOT NULL, data TEXT NOT NULL);
        CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
        CREATE INDEX entries_parent_id ON entries (parent_id);
        CREATE TABLE join_tokens (hash TEXT PRIMARY KEY, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, agent_id TEXT, used_at INTEGER);
        CREATE TABLE authority (singleton INTEGER PRIMARY KEY CHECK (singleton = 1), state TEXT NOT NULL);
        PRAGMA user_version = 1;",
    )
    .unwrap();
    if steps >= 2 {
        conn.execute_batch(
            "CREATE TABLE agents (spiffe_id TEXT PRIMARY KEY, data TEXT NOT NULL); PRAGMA user_version = 2;",
        )
        .unwrap();
    }
    let e = entry("old", "spiffe://example.org/agent/a");
    conn.execute(
        "INSERT INTO entries (id, spiffe_id, parent_id, revision, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        rusqlite::params![
            e.id.as_str(),
            e.spiffe_id.to_string(),
            e.parent_id.to_string(),
            e.revision,
            serde_json::to_string(&e).unwrap()
        ],
    )
    .unwrap();
    conn.execute("INSERT INTO authority (singleton, state) VALUES (1, '{\"v\":0}')", []).unwrap();
}

fn schema_versions(path: &std::path::Path) -> (Vec<(u32, String)>, u32) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT version, name FROM schema_version ORDER BY version").unwrap();
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect();
    let user_version = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    (rows, user_version)
}

/// Databases written before `schema_version` existed are recognised by their `user_version` and
/// upgraded in place, keeping their data; a step they lack runs.
#[tokio::test]
async fn databases_of_earlier_builds_are_recognised_and_upgraded_in_place() {
    let want = vec![
        (1, "entries, join tokens, authority".to_owned()),
        (2, "agents".to_owned()),
        (3, "authority version".to_owned()),
        (4, "node groups, join token labels".to_owned()),
        (5, "x509pop challenges".to_owned()),
        (6, "federation relationships".to_owned()),
        (7, "exchanged subject tokens".to_owned()),
        (8, "secrets".to_owned()),
        (9, "policies".to_owned()),
        (10, "db_leases".to_owned()),
        (11, "audit_log".to_owned()),
        (12, "namespaces".to_owned()),
    ];
    for steps in [2, 1] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vouch.db");
        create_legacy_database(&path, steps);
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(schema_versions(&path), (want.clone(), 12), "from {steps} step(s)");
        let old = vouch_core::EntryId::new("old").unwrap();
        assert_eq!(store.get_entry(&old).await.unwrap().unwrap().id, old, "data kept");
        let in_default =
            EntryFilter { namespace: Some(vouch_core::Namespace::default()), ..Default::default() };
        let listed = store.list_entries(&in_default).await.unwrap();
        assert_eq!(listed.len(), 1, "an entry from before namespaces is in `default`");
        assert!(listed[0].namespace.is_default());
        assert_eq!(store.load_authority().await.unwrap().as_deref(), Some("{\"v\":0}"));
        assert!(store.list_agents().await.unwrap().is_empty(), "the agents table exists");
        store.delete_entry(&old).await.unwrap();
        drop(store);
        // Opening again changes nothing, and the upgraded database passes the whole contract.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(schema_versions(&path), (want.clone(), 12));
        store.save_authority("{}").await.unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("DELETE FROM authority", []).unwrap();
        drop(conn);
        conformance::run(Arc::new(store)).await;
    }
}

/// A database from a newer vouch is refused by its `schema_version`, and by `user_version` for the
/// builds that knew only that; a failed step leaves the database as it was.
#[tokio::test]
async fn newer_schema_versions_are_refused_and_failed_steps_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vouch.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'from the future')", []).unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, vouch_store::StoreError::SchemaTooNew { found: 99, supported: 12 }), "{err}");
    assert!(err.to_string().contains("newer than this vouch"), "{err}");

    // A step that fails (here: a table in the way of step 2) rolls back the whole upgrade.
    let path = dir.path().join("half.db");
    create_legacy_database(&path, 1);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE agents (x INTEGER);").unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err().to_string();
    assert!(err.contains("schema migration 2 (`agents`) failed"), "{err}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let has_table: bool = conn
        .query_row("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'schema_version')", [], |r| {
            r.get(0)
        })
        .unwrap();
    let user_version: u32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!((has_table, user_version), (false, 1), "nothing of the failed upgrade stays");
}

#[tokio::test]
async fn sqlite_durability_is_configurable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vouch.db");
    assert_eq!(SqliteStore::open(&path).unwrap().synchronous_level().await.unwrap(), 1, "normal by default");
    let full = SqliteStore::open_with(&path, SqliteSynchronous::Full).unwrap();
    assert_eq!(full.synchronous_level().await.unwrap(), 2);
    assert_eq!("full".parse::<SqliteSynchronous>().unwrap(), SqliteSynchronous::Full);
    assert!("off".parse::<SqliteSynchronous>().unwrap_err().contains("use `normal` or `full`"));
}

/// The same contract, on a real PostgreSQL: over the Unix socket, and over TCP with a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conforms_and_migrates() {
    let cluster = PgCluster::start();
    let url = PgUrl::parse(&cluster.create_database("conformance").await).unwrap();
    let store = PostgresStore::connect(&url).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 12);
    conformance::run(Arc::new(store)).await;

    // Reopening finds the schema in place; a second store on the same database (a replica) sees
    // the same data.
    let tcp = cluster.tcp_url("conformance");
    let replica = PostgresStore::connect(&PgUrl::parse(&tcp).unwrap()).await.unwrap();
    assert_eq!(replica.load_authority().await.unwrap().as_deref(), Some("{\"v\":2}"));
    assert_eq!(replica.schema_version().await.unwrap(), 12);

    // Replicas starting together on an empty database migrate once, one after the other.
    let url = PgUrl::parse(&cluster.create_database("together").await).unwrap();
    let (a, b) = tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
    assert_eq!(
        (a.unwrap().schema_version().await.unwrap(), b.unwrap().schema_version().await.unwrap()),
        (12, 12)
    );

    // A database from a newer vouch is refused.
    let (client, conn) =
        tokio_postgres::connect(&cluster.socket_url("together"), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("INSERT INTO schema_version (version, name) VALUES (99, 'from the future')")
        .await
        .unwrap();
    let err = PostgresStore::connect(&url).await.unwrap_err();
    assert!(matches!(err, vouch_store::StoreError::SchemaTooNew { found: 99, supported: 12 }), "{err}");
}

/// The password in a store URL never shows: not in its Display or Debug form, not in the error of
/// a failed connection, not in a parse error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passwords_never_show() {
    let cluster = PgCluster::start();
    let good = cluster.tcp_url("postgres");
    let url = PgUrl::parse(&good).unwrap();
    let secret = cluster.password();
    for shown in [url.to_string(), format!("{url:?}")] {
        assert!(!shown.contains(secret) && shown.contains(":***@127.0.0.1:"), "{shown}");
    }
    let store = PostgresStore::connect(&url).await.unwrap();
    assert!(!format!("{store:?}").contains(secret));

    let wrong = good.replace(secret, "hunter2-wrong");
    let err = PostgresStore::connect(&PgUrl::parse(&wrong).unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("password authentication failed") && !err.contains("hunter2"), "{err}");
    assert!(err.contains("postgres://postgres:***@127.0.0.1:"), "the error says where: {err}");

    for bad in [
        "postgres://u:hunter2@h:notaport/db",
        "postgres://u:hunter2@h/db?nosuchoption=1",
        "postgres://u:hunter2@h/db?password=hunter3&port=x",
        "host=h password=hunter2",
    ] {
        let err = PgUrl::parse(bad).unwrap_err().to_string();
        assert!(!err.contains("hunter"), "{bad}: {err}");
    }
    let in_query = PgUrl::parse("postgres://u@h/db?password=hunter2").unwrap();
    assert_eq!(in_query.to_string(), "postgres://u:***@h:5432/db");
}

/// A test that panics still stops its cluster and removes its files.
#[test]
fn a_test_cluster_is_stopped_and_removed_when_its_test_panics() {
    let seen = std::sync::Mutex::new(None);
    let failed = std::panic::catch_unwind(|| {
        let cluster = PgCluster::start();
        let pid = std::fs::read_to_string(cluster.dir().join("data/postmaster.pid")).unwrap();
        let pid = pid.lines().next().unwrap().to_owned();
        *seen.lock().unwrap() = Some((cluster.dir().to_owned(), pid));
        panic!("a failing test");
    });
    assert!(failed.is_err());
    let (dir, pid) = seen.into_inner().unwrap().unwrap();
    assert!(!dir.exists(), "{} removed", dir.display());
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(state.is_empty() || state.contains(") Z"), "postmaster {pid} stopped: {state}");
}

/// The next change `rx` hears within a few seconds.
async fn heard(rx: &mut tokio::sync::broadcast::Receiver<Change>) -> Change {
    tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("a change within 5 s")
        .expect("the change channel is open")
}

/// Replicas on one PostgreSQL hear each other's committed changes (not their own, and nothing of a
/// write that rolled back), and one of them at a time holds the lead, which passes to another when
/// its holder goes away. SQLite has no one else to hear, and its only process always leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_hear_each_others_changes_and_share_one_lead() {
    let sqlite = SqliteStore::in_memory().unwrap();
    assert!(sqlite.changes().is_none());
    assert!(sqlite.try_lead().await.unwrap());

    let cluster = PgCluster::start();
    let url = PgUrl::parse(&cluster.create_database("replicas").await).unwrap();
    let a = PostgresStore::connect(&url).await.unwrap();
    let b = PostgresStore::connect(&PgUrl::parse(&cluster.tcp_url("replicas")).unwrap()).await.unwrap();
    let mut at_a = a.changes().unwrap();
    let mut at_b = b.changes().unwrap();
    // Listening starts with a resync: what committed before was not heard.
    assert_eq!(heard(&mut at_a).await, Change::Resync);
    assert_eq!(heard(&mut at_b).await, Change::Resync);

    let (n1, n2) = ("spiffe://example.org/agent/n1", "spiffe://example.org/agent/n2");
    let id = vouch_core::EntryId::new("e1").unwrap();
    a.create_entries(&[entry("e1", n1)]).await.unwrap();
    assert_eq!(heard(&mut at_b).await, Change::EntryUpserted { id: id.clone(), previous_parent: None });
    // A batch that fails (a taken id) rolls back, notices included.
    assert!(a.create_entries(&[entry("e2", n1), entry("e1", n1)]).await.is_err());
    let mut moved = entry("e1", n2);
    moved.revision = 1;
    b.update_entry(&moved).await.unwrap();
    assert_eq!(
        heard(&mut at_a).await,
        Change::EntryUpserted { id: id.clone(), previous_parent: Some(n1.parse().unwrap()) }
    );
    a.delete_entry(&id).await.unwrap();
    assert_eq!(heard(&mut at_b).await, Change::EntryDeleted { id, parent: n2.parse().unwrap() });
    let agent: vouch_core::SpiffeId = n1.parse().unwrap();
    a.ban_agent(&agent, 5).await.unwrap();
    assert_eq!(heard(&mut at_b).await, Change::AgentRemoved { agent: agent.clone(), banned: true });
    assert!(a.delete_agent(&agent).await.unwrap());
    assert_eq!(heard(&mut at_b).await, Change::AgentRemoved { agent, banned: false });
    assert_eq!(a.write_authority(None, "{}").await.unwrap(), AuthorityWrite::Written(1));
    assert_eq!(heard(&mut at_b).await, Change::AuthorityChanged { version: 1 });
    // Federation relationships: created, refreshed, deleted; a refresh that no longer lands is
    // not announced.
    let td = vouch_core::TrustDomain::new("b.org").unwrap();
    let row = vouch_store::FederationRow {
        trust_domain: td.clone(),
        relationship: "{}".into(),
        state: "{}".into(),
        revision: 1,
    };
    a.create_federation(&row).await.unwrap();
    assert_eq!(heard(&mut at_b).await, Change::FederationChanged { trust_domain: td.clone() });
    assert!(a.save_federation_state(&td, 1, "{\"n\":1}").await.unwrap());
    assert_eq!(heard(&mut at_b).await, Change::FederationChanged { trust_domain: td.clone() });
    assert!(!a.save_federation_state(&td, 7, "{}").await.unwrap());
    a.delete_federation(&td).await.unwrap();
    assert_eq!(heard(&mut at_b).await, Change::FederationChanged { trust_domain: td });
    // Nothing of a's own writes came back to a, and b heard nothing of the failed batch.
    assert!(at_a.try_recv().is_err(), "a store does not hear its own changes");
    assert!(at_b.try_recv().is_err(), "nothing more: the failed batch sent nothing");

    // One lead at a time; it stays with its holder and passes on when the holder is gone.
    assert!(a.try_lead().await.unwrap());
    assert!(!b.try_lead().await.unwrap());
    assert!(a.try_lead().await.unwrap(), "the holder keeps it");
    drop((a, at_a));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !b.try_lead().await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "the lead did not pass on within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A CA, and a certificate and key for 127.0.0.1 signed by it; all PEM.
fn tls_material() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "vouch test database CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// TLS to PostgreSQL: with `sslmode=verify-full` and the CA file the store connects (pool, listener
/// and lead sessions alike) to a server that refuses plain connections; a server whose certificate
/// another CA signed is refused; a URL that asks for TLS without a CA file, or for verify-ca, is an
/// error that says what to write. The password shows nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verifies_the_server() {
    let (ca, cert, key) = tls_material();
    let (other_ca, _, _) = tls_material();
    let files = tempfile::tempdir().unwrap();
    let (ca_file, other_file) = (files.path().join("ca.pem"), files.path().join("other.pem"));
    std::fs::write(&ca_file, ca).unwrap();
    std::fs::write(&other_file, other_ca).unwrap();
    let cluster = PgCluster::start();
    cluster.require_tls(&cert, &key);
    let tcp = cluster.tcp_url("postgres");

    // Plain TCP is refused by this server: what works below works over TLS.
    let err = PostgresStore::connect(&PgUrl::parse(&tcp).unwrap()).await.unwrap_err().to_string();
    assert!(err.contains("no encryption"), "{err}");

    let url = PgUrl::parse(&format!("{tcp}?sslmode=verify-full&sslrootcert={}", ca_file.display())).unwrap();
    assert!(url.to_string().ends_with("/postgres?sslmode=verify-full"), "{url}");
    let a = PostgresStore::connect(&url).await.unwrap();
    let b = PostgresStore::connect(
        &PgUrl::parse(&format!("{tcp}?sslmode=require&sslrootcert={}", ca_file.display())).unwrap(),
    )
    .await
    .unwrap();
    let mut at_b = b.changes().unwrap();
    assert_eq!(heard(&mut at_b).await, Change::Resync);
    assert_eq!(a.write_authority(None, "{}").await.unwrap(), AuthorityWrite::Written(1));
    assert_eq!(heard(&mut at_b).await, Change::AuthorityChanged { version: 1 });
    assert!(a.try_lead().await.unwrap());
    assert!(!b.try_lead().await.unwrap());

    // Another CA's server certificate is refused.
    let wrong =
        PgUrl::parse(&format!("{tcp}?sslmode=verify-full&sslrootcert={}", other_file.display())).unwrap();
    let err = PostgresStore::connect(&wrong).await.unwrap_err().to_string();
    assert!(err.contains("certificate") && !err.contains(cluster.password()), "{err}");
    // A CA file that is not there names itself.
    let missing =
        PgUrl::parse(&format!("{tcp}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")).unwrap();
    let err = PostgresStore::connect(&missing).await.unwrap_err().to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");

    for (params, want) in [
        ("sslmode=require", "add sslrootcert="),
        ("sslmode=verify-ca&sslrootcert=/x", "use sslmode=verify-full"),
        ("sslmode=maybe", "sslmode `maybe`"),
        ("sslrootcert=/x", "add sslmode=verify-full"),
    ] {
        let err = PgUrl::parse(&format!("{tcp}?{params}")).unwrap_err().to_string();
        assert!(err.contains(want) && !err.contains(cluster.password()), "{params}: {err}");
    }
}
