//! The tamper-evident audit log end to end: a real server records its audit events into SQLite,
//! `vouch audit search|export|verify|key` read them, and the database is edited behind the server's
//! back (while it runs, and in copies after it stopped) in every way the log must catch.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use vouch_ca::audit::{chain_hash, AuditSigner};
use vouch_core::audit::AuditFields;

use super::{json, ServerProcess};

/// Checkpoints every 4 records, so the early records are covered by one.
const CONFIG: &str = "[audit]\ncheckpoint_records = 4\n";

fn db(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join("data/vouch.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// `vouch audit verify` that must fail: its report (stderr).
fn tampered(server: &ServerProcess) -> String {
    let out = server.vouch(&["audit", "verify"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "verify must fail: {stderr}");
    stderr
}

/// Waits (at most 10 s) until the log holds at least `n` records.
fn wait_for_records(server: &ServerProcess, n: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = json(&server.ok(&["audit", "verify", "-o", "json"]));
        if report["records"].as_u64().unwrap() >= n {
            return report;
        }
        assert!(Instant::now() < deadline, "the log did not reach {n} records: {report}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A copy of the stopped server's data directory in a new directory, for one tampering.
fn copy_of(data: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    for f in std::fs::read_dir(data).unwrap() {
        let f = f.unwrap();
        if f.file_type().unwrap().is_file() {
            std::fs::copy(f.path(), dir.path().join("data").join(f.file_name())).unwrap();
        }
    }
    dir
}

type Row = (i64, i64, String, String, String);

fn row(conn: &Connection, seq: i64) -> Row {
    conn.query_row("SELECT seq, time_ms, event, fields, hash FROM audit_log WHERE seq = ?1", [seq], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .unwrap()
}

/// The hash of a stored row chained after `prev` (what an attacker without the key can compute).
fn rehash(prev: &str, (seq, time_ms, event, fields, _): &Row) -> String {
    let fields: AuditFields = serde_json::from_str(fields).unwrap();
    chain_hash(prev, *seq as u64, *time_ms, event, &fields)
}

#[test]
fn the_audit_log_records_every_event_and_catches_every_tampering() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_configured(tmp.path(), CONFIG);
    let spiffe = "spiffe://example.org/payments";
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        spiffe,
        "--parent-id",
        "spiffe://example.org/agent/join/n1",
        "-s",
        "unix:uid:1000",
        "--owner",
        "team-pay",
    ]);
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/orders",
        "--parent-id",
        "spiffe://example.org/agent/join/n1",
        "-s",
        "unix:uid:1001",
    ]);
    let jwt =
        server.ok(&["svid", "mint", "jwt", "--spiffe-id", spiffe, "--audience", "db"]).trim().to_owned();
    let token = server.ok(&["token", "create", "--ttl", "5m"]).trim().to_owned();
    let secret_value = "s3cr3t-audit-canary-value-4711";
    let mut put = std::process::Command::new(super::VOUCH)
        .args(["secret", "put", "app/db-password", "--owner", "team-pay", "--purpose", "tests"])
        .env("VOUCH_ADMIN_SOCKET", server.socket())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut put.stdin.take().unwrap(), secret_value.as_bytes()).unwrap();
    assert!(put.wait().unwrap().success());
    server.ok(&["secret", "get", "app/db-password"]);
    server.ok(&["svid", "mint", "x509", "--spiffe-id", spiffe]);
    server.ok(&["entry", "list"]);
    let report = wait_for_records(&server, 8);
    assert!(report["checkpoints"].as_u64().unwrap() >= 1, "{report}");
    assert!(report.get("problem").is_none(), "{report}");
    let ok = server.ok(&["audit", "verify"]);
    assert!(ok.starts_with("verified ") && ok.contains(" records, ") && ok.contains("checkpoints"), "{ok}");

    // No secret reaches the audit log (nor, for that matter, the database file).
    {
        let conn = db(tmp.path());
        let dump: Vec<String> = conn
            .prepare("SELECT event || ' ' || fields FROM audit_log")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let dump = dump.join("\n");
        assert!(
            dump.contains("secret.put") && dump.contains("secret.read") && dump.contains("svid.jwt.mint"),
            "{dump}"
        );
        for (what, value) in
            [("secret value", secret_value), ("JWT-SVID", jwt.as_str()), ("join token", token.as_str())]
        {
            assert!(!dump.contains(value), "the {what} is in the audit log");
        }
        let signature = jwt.rsplit('.').next().unwrap();
        assert!(!dump.contains(signature), "the JWT's signature is in the audit log");
    }

    // The checkpoint key is stored sealed: no Ed25519 PKCS#8 (its OID 1.3.101.112) in the clear.
    {
        let (id, sealed): (String, Vec<u8>) = db(tmp.path())
            .query_row("SELECT id, sealed_key FROM audit_keys", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        let oid = [0x06, 0x03, 0x2b, 0x65, 0x70];
        assert!(!sealed.windows(oid.len()).any(|w| w == oid), "the audit key is stored in the clear");
        let keys = json(&server.ok(&["audit", "key", "-o", "json"]));
        assert_eq!(keys["keys"][0]["key_id"], id.as_str());
    }

    // Search: by SPIFFE ID, event prefix, time; JSON lines; paging; bad input.
    let lines = server.ok(&["audit", "search", "--spiffe-id", spiffe, "--json"]);
    let records: Vec<serde_json::Value> = lines.lines().map(json).collect();
    let events: Vec<&str> = records.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert!(
        events.contains(&"entry.create")
            && events.contains(&"svid.jwt.mint")
            && events.contains(&"svid.x509.mint"),
        "{events:?}"
    );
    assert!(records
        .iter()
        .all(|r| r["fields"]["spiffe_id"] == spiffe && r["hash"].as_str().unwrap().len() == 64));
    let entries = server.ok(&["audit", "search", "--event", "entry.*", "--since", "1h", "-o", "json"]);
    assert_eq!(entries.lines().count(), 2, "{entries}");
    let human = server.ok(&["audit", "search", "--event", "secret.put"]);
    assert!(human.contains("secret.put") && human.contains("path=app/db-password"), "{human}");
    let none = server.vouch(&["audit", "search", "--until", "2000-01-01T00:00:00Z"]);
    assert!(none.status.success() && none.stdout.is_empty(), "nothing before 2000");
    let page = server.vouch(&["audit", "search", "--limit", "2"]);
    assert_eq!(String::from_utf8_lossy(&page.stdout).lines().count(), 2);
    assert!(String::from_utf8_lossy(&page.stderr).contains("--after 2"), "paging is told");
    let next = server.ok(&["audit", "search", "--limit", "2", "--after", "2", "--json"]);
    assert_eq!(json(next.lines().next().unwrap())["seq"], 3);
    let all = server.ok(&["audit", "search", "--all", "--json"]);
    assert!(all.lines().count() >= 8);
    let err = server.fails(&["audit", "search", "--since", "last tuesday"]);
    assert!(err.contains("--since") && err.contains("RFC 3339"), "{err}");
    let err = server.fails(&["audit", "search", "--limit", "5000"]);
    assert!(err.contains("limit") && err.contains("1..=1000"), "{err}");
    let err = server.fails(&[
        "audit",
        "search",
        "--since",
        "2026-01-02T00:00:00Z",
        "--until",
        "2026-01-01T00:00:00Z",
    ]);
    assert!(err.contains("since must be before until"), "{err}");

    // Edited behind the running server's back: found, and found no more once undone.
    let conn = db(tmp.path());
    let (_, _, _, original, _) = row(&conn, 3);
    let forged = original.replace("local:uid:0", "local:uid:4242");
    assert_ne!(forged, original);
    conn.execute("UPDATE audit_log SET fields = ?1 WHERE seq = 3", [&forged]).unwrap();
    let report = tampered(&server);
    assert!(report.contains("TAMPERED at seq 3") && report.contains("record 3 was edited"), "{report}");
    conn.execute("UPDATE audit_log SET fields = ?1 WHERE seq = 3", [&original]).unwrap();
    server.ok(&["audit", "verify"]);
    drop(conn);

    // Export, and verify offline with the key kept apart; a reordered export is caught too.
    let export = tmp.path().join("audit.jsonl");
    let key = tmp.path().join("audit-key.json");
    server.ok(&["audit", "export", "--file", export.to_str().unwrap()]);
    std::fs::write(&key, server.ok(&["audit", "key", "-o", "json"])).unwrap();
    let ok =
        server.ok(&["audit", "verify", "--file", export.to_str().unwrap(), "--key", key.to_str().unwrap()]);
    assert!(ok.starts_with("verified "), "{ok}");
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(text.lines().any(|l| json(l)["type"] == "checkpoint"), "checkpoints are exported");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(4, 5);
    let swapped = tmp.path().join("swapped.jsonl");
    std::fs::write(&swapped, lines.join("\n")).unwrap();
    let err = server.fails(&[
        "audit",
        "verify",
        "--file",
        swapped.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(err.contains("TAMPERED at seq 5") && err.contains("out of order"), "{err}");
    // Another key does not verify the checkpoints.
    let (other, _) = AuditSigner::generate().unwrap();
    let other_key = tmp.path().join("other-key.json");
    std::fs::write(&other_key, serde_json::to_string(&other.public_key()).unwrap()).unwrap();
    let err = server.fails(&[
        "audit",
        "verify",
        "--file",
        export.to_str().unwrap(),
        "--key",
        other_key.to_str().unwrap(),
    ]);
    assert!(err.contains("not a trusted audit key"), "{err}");

    server.stop();
    let data = tmp.path().join("data");

    // Each tampering in its own copy of the stopped server's database, then a server on the copy.
    let check = |name: &str, tamper: &dyn Fn(&Connection), want: &[&str]| {
        let copy = copy_of(&data);
        tamper(&db(copy.path()));
        let server = ServerProcess::start_configured(copy.path(), CONFIG);
        let report = tampered(&server);
        for w in want {
            assert!(report.contains(w), "{name}: want `{w}` in: {report}");
        }
        server.stop();
    };
    check(
        "a deleted record",
        &|c| assert_eq!(c.execute("DELETE FROM audit_log WHERE seq = 3", []).unwrap(), 1),
        &["TAMPERED at seq 3", "record 3 is missing: deleted"],
    );
    check(
        "two records swapped",
        &|c| {
            let (a, b) = (row(c, 3), row(c, 4));
            for (seq, (_, time, event, fields, hash)) in [(3, b), (4, a)] {
                c.execute(
                    "UPDATE audit_log SET time_ms = ?2, event = ?3, fields = ?4, hash = ?5 WHERE seq = ?1",
                    params![seq, time, event, fields, hash],
                )
                .unwrap();
            }
        },
        &["TAMPERED at seq 3", "records 3 and 4 were swapped"],
    );
    check(
        "a record inserted, its hash chained by the attacker",
        &|c| {
            c.execute("UPDATE audit_log SET seq = -seq - 1 WHERE seq >= 3", []).unwrap();
            c.execute("UPDATE audit_log SET seq = -seq WHERE seq < 0", []).unwrap();
            let prev = row(c, 2).4;
            let fake: Row =
                (3, row(c, 4).1, "entry.delete".into(), r#"{"caller":"local:uid:0"}"#.into(), String::new());
            let hash = rehash(&prev, &fake);
            c.execute(
                "INSERT INTO audit_log (seq, time_ms, event, fields, hash) VALUES (3, ?1, ?2, ?3, ?4)",
                params![fake.1, fake.2, fake.3, hash],
            )
            .unwrap();
        },
        &["TAMPERED at seq 3", "record 3 was inserted"],
    );
    check(
        "an edit with the whole chain recomputed",
        &|c| rewrite_from(c, 3, None),
        &["is not what the checkpoint signed", "were rewritten and their hashes recomputed"],
    );
    check(
        "an edit with the chain recomputed and the checkpoint re-signed with another key",
        &|c| {
            let (mallory, _) = AuditSigner::generate().unwrap();
            rewrite_from(c, 3, Some(&mallory));
        },
        &["signature does not verify", "forged or altered"],
    );
}

/// Edits record `from` and recomputes every hash after it (and the head), as an attacker with the
/// database but without the audit key can; with `resign`, also re-signs the checkpoints with that
/// key under the real key's id.
fn rewrite_from(c: &Connection, from: i64, resign: Option<&AuditSigner>) {
    let (_, _, _, fields, _) = row(c, from);
    let edited = fields.replace("local:uid:0", "local:uid:4242");
    assert_ne!(edited, fields);
    c.execute("UPDATE audit_log SET fields = ?1 WHERE seq = ?2", params![edited, from]).unwrap();
    let last: i64 = c.query_row("SELECT MAX(seq) FROM audit_log", [], |r| r.get(0)).unwrap();
    let mut prev = row(c, from - 1).4;
    for seq in from..=last {
        let hash = rehash(&prev, &row(c, seq));
        c.execute("UPDATE audit_log SET hash = ?1 WHERE seq = ?2", params![hash, seq]).unwrap();
        prev = hash;
    }
    c.execute("UPDATE audit_head SET hash = ?1 WHERE id = 1", [&prev]).unwrap();
    if let Some(mallory) = resign {
        let cps: Vec<(i64, i64, String)> = c
            .prepare("SELECT seq, time_ms, key_id FROM audit_checkpoints")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (seq, time, key_id) in cps {
            let hash = row(c, seq).4;
            // Signed by another key, but naming the real one: only the signature can give it away.
            let signed = mallory.checkpoint(seq as u64, &hash, time);
            assert_ne!(signed.key_id, key_id);
            c.execute(
                "UPDATE audit_checkpoints SET hash = ?1, signature = ?2 WHERE seq = ?3",
                params![hash, signed.signature, seq],
            )
            .unwrap();
        }
    }
}

/// With the store's write lock held behind the server's back, audit events pile up in the bounded
/// queue; requests are still answered at once, what does not fit is dropped and counted, and once
/// the store is writable again an `audit.lost` record says how many: every event is on the record
/// or counted, and the log verifies.
#[test]
fn a_full_audit_queue_never_blocks_requests_and_records_what_it_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_configured(tmp.path(), "[audit]\nqueue = 16\nbatch = 4\n");
    let before = json(&server.ok(&["audit", "verify", "-o", "json"]))["records"].as_u64().unwrap();
    let mut lock = db(tmp.path());
    let tx = lock.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    let started = Instant::now();
    let mints: Vec<_> = (0..40)
        .map(|_| {
            std::process::Command::new(super::VOUCH)
                .args(["svid", "mint", "jwt", "--spiffe-id", "spiffe://example.org/w", "--audience", "a"])
                .env("VOUCH_ADMIN_SOCKET", server.socket())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut m in mints {
        assert!(m.wait().unwrap().success());
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "requests waited on the audit log: {:?}",
        started.elapsed()
    );
    tx.rollback().unwrap();
    drop(lock);

    let deadline = Instant::now() + Duration::from_secs(20);
    let (minted, lost) = loop {
        let lines = server.ok(&["audit", "search", "--event", "svid.jwt.mint", "--all", "--json"]);
        let lost: i64 = server
            .ok(&["audit", "search", "--event", "audit.lost", "--json"])
            .lines()
            .map(|l| json(l)["fields"]["count"].as_i64().unwrap())
            .sum();
        let minted = lines.lines().count() as i64;
        if minted + lost >= 40 {
            break (minted, lost);
        }
        assert!(Instant::now() < deadline, "{minted} recorded and {lost} counted as lost of 40");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(minted + lost, 40, "every event is recorded or counted");
    assert!(lost > 0, "a queue of 16 cannot hold 40 events while the store is locked");
    let report = json(&server.ok(&["audit", "verify", "-o", "json"]));
    assert!(report.get("problem").is_none() && report["records"].as_u64().unwrap() > before, "{report}");
    server.stop();
}

/// Two replicas on one PostgreSQL record at once into one chain: requests through both, then
/// every event is in the log exactly once, in one gap-free chain that verifies from either.
#[test]
fn replicas_on_one_postgresql_append_to_one_chain() {
    let cluster = vouch_store::test_postgres::PgCluster::start();
    let config = format!("store = \"{}\"\n{CONFIG}", cluster.socket_url("postgres"));
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = ServerProcess::start_configured(a_dir.path(), &config);
    // The replicas share the key-encryption key (the store holds keys sealed under it).
    std::fs::create_dir_all(b_dir.path().join("data")).unwrap();
    std::fs::copy(a_dir.path().join("data/kek"), b_dir.path().join("data/kek")).unwrap();
    let b = ServerProcess::start_configured(b_dir.path(), &config);
    let mint = |s: &ServerProcess, i: usize| {
        std::process::Command::new(super::VOUCH)
            .args([
                "svid",
                "mint",
                "jwt",
                "--spiffe-id",
                &format!("spiffe://example.org/r{i}"),
                "--audience",
                "a",
            ])
            .env("VOUCH_ADMIN_SOCKET", s.socket())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mints: Vec<_> = (0..40).map(|i| mint(if i % 2 == 0 { &a } else { &b }, i)).collect();
    for mut m in mints {
        assert!(m.wait().unwrap().success());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let seen = loop {
        let lines = a.ok(&["audit", "search", "--event", "svid.jwt.mint", "--all", "--json"]);
        let ids: std::collections::BTreeSet<String> =
            lines.lines().map(|l| json(l)["fields"]["spiffe_id"].as_str().unwrap().to_owned()).collect();
        if lines.lines().count() >= 40 {
            break (lines.lines().count(), ids.len());
        }
        assert!(Instant::now() < deadline, "{} of 40 recorded", lines.lines().count());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(seen, (40, 40), "each event once");
    for s in [&a, &b] {
        let ok = s.ok(&["audit", "verify"]);
        assert!(ok.starts_with("verified "), "{ok}");
    }
    // Both replicas serve one key.
    assert_eq!(a.ok(&["audit", "key", "-o", "json"]), b.ok(&["audit", "key", "-o", "json"]));
    b.stop();
    a.stop();
}

/// Anyone who reaches the TLS port can cause refusals. With the store's write lock held, a flood
/// of failed handshakes (far more than the queue holds) comes first, then an admin issues a
/// JWT-SVID: the admin's record is not lost to the flood (refusals have their own lane of the
/// queue, and are recorded at most once per interval with a count), and the log verifies.
#[test]
fn a_flood_of_refusals_never_crowds_out_an_admins_record() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_configured(tmp.path(), "[audit]\nqueue = 16\nbatch = 4\n");
    let addr = std::fs::read_to_string(tmp.path().join("data/server.addr")).unwrap().trim().to_owned();
    let mut lock = db(tmp.path());
    let tx = lock.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).unwrap();
    for _ in 0..200 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // Not a TLS record: the handshake fails at once and the server closes the connection.
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let _ = s.read_to_end(&mut Vec::new());
    }
    let minted = server.ok(&[
        "svid",
        "mint",
        "jwt",
        "--spiffe-id",
        "spiffe://example.org/after-the-flood",
        "--audience",
        "a",
    ]);
    assert!(!minted.is_empty());
    tx.rollback().unwrap();
    drop(lock);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found =
            server.ok(&["audit", "search", "--spiffe-id", "spiffe://example.org/after-the-flood", "--json"]);
        if found.lines().any(|l| json(l)["event"] == "svid.jwt.mint") {
            break;
        }
        let lost = server.ok(&["audit", "search", "--event", "audit.lost", "--json"]);
        assert!(Instant::now() < deadline, "the admin's issuance is not on the record; lost: {lost}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let refused = server.ok(&["audit", "search", "--event", "tls.refused", "--json"]);
    assert!(refused.lines().count() >= 1, "the refusals are on the record too");
    let lost = server.ok(&["audit", "search", "--event", "audit.lost", "--json"]);
    for l in lost.lines() {
        assert!(json(l)["fields"].get("admin").is_none(), "no admin event was lost: {l}");
    }
    let report = json(&server.ok(&["audit", "verify", "-o", "json"]));
    assert!(report.get("problem").is_none(), "{report}");
    server.stop();
}

/// Mints a JWT-SVID through the CLI (one audit event); whether it succeeded.
fn mint(socket: &Path, spiffe_id: &str) -> bool {
    std::process::Command::new(super::VOUCH)
        .args(["svid", "mint", "jwt", "--spiffe-id", spiffe_id, "--audience", "a"])
        .env("VOUCH_ADMIN_SOCKET", socket)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// SQLite does not enforce column types: a row edited to hold a blob, invalid UTF-8, text in an
/// integer column or a hash of the wrong length is reported as an edited record (with its
/// sequence number), and searches still answer; the store's failure to read a row is not a 500.
#[test]
fn corrupt_rows_are_reported_as_edits_not_as_server_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_configured(tmp.path(), CONFIG);
    for _ in 0..6 {
        assert!(mint(&server.socket(), "spiffe://example.org/w"));
    }
    wait_for_records(&server, 6);
    let conn = db(tmp.path());
    let edits = [
        "UPDATE audit_log SET event = x'ff00fe' WHERE seq = 2",
        "UPDATE audit_log SET time_ms = 'not a time' WHERE seq = 2",
        "UPDATE audit_log SET fields = x'ff' WHERE seq = 2",
        "UPDATE audit_log SET hash = 'abc' WHERE seq = 2",
        "UPDATE audit_log SET hash = x'00ff' WHERE seq = 2",
    ];
    for edit in edits {
        let saved = row(&conn, 2);
        conn.execute(edit, []).unwrap();
        let report = tampered(&server);
        assert!(report.contains("record 2"), "{edit}: {report}");
        assert!(!report.contains("internal") && !report.contains("store failure"), "{edit}: {report}");
        server.ok(&["audit", "search", "--all", "--json"]);
        conn.execute(
            "UPDATE audit_log SET time_ms = ?1, event = ?2, fields = ?3, hash = ?4 WHERE seq = 2",
            params![saved.1, saved.2, saved.3, saved.4],
        )
        .unwrap();
        server.ok(&["audit", "verify"]);
    }
    conn.execute(
        "UPDATE audit_checkpoints SET signature = x'ff' WHERE seq = (SELECT MIN(seq) FROM audit_checkpoints)",
        [],
    )
    .unwrap();
    let report = tampered(&server);
    assert!(report.contains("checkpoint at seq"), "{report}");
    server.stop();
}

/// Verification while appends continue never reports tampering that is not there, and paging
/// with `after` across concurrent appends returns each record once, in order.
#[test]
fn verify_and_paging_while_appends_continue() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_configured(tmp.path(), "[audit]\ncheckpoint_records = 3\nbatch = 2\n");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let minters: Vec<_> = (0..3)
        .map(|_| {
            let (socket, stop) = (server.socket(), stop.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                    mint(&socket, "spiffe://example.org/busy");
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut verified = 0;
    // At least 4 s and 3 verifications: on a loaded machine one verification can take over a
    // second (the minters stop by themselves after 30 s).
    while (started.elapsed() < Duration::from_secs(4) || verified < 3)
        && started.elapsed() < Duration::from_secs(25)
    {
        let report = json(&server.ok(&["audit", "verify", "-o", "json"]));
        assert!(report.get("problem").is_none(), "a false report while appending: {report}");
        verified += 1;
        // Every record once, in order, without a gap, page after page.
        let mut after = 0u64;
        while after < 60 {
            let page =
                server.ok(&["audit", "search", "--json", "--limit", "7", "--after", &after.to_string()]);
            if page.is_empty() {
                break;
            }
            for line in page.lines() {
                let seq = json(line)["seq"].as_u64().unwrap();
                assert_eq!(seq, after + 1, "paging skipped or repeated a record");
                after = seq;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for m in minters {
        m.join().unwrap();
    }
    assert!(verified >= 3, "{verified}");
    let report = json(&server.ok(&["audit", "verify", "-o", "json"]));
    assert!(report.get("problem").is_none() && report["checkpoints"].as_u64().unwrap() >= 2, "{report}");
    server.stop();
}

/// `kill -9` of the server while it appends: after a restart the chain continues from the stored
/// head (no fork, no gap reported as tampering), and the whole log verifies.
#[test]
fn the_chain_survives_kill_9_during_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let config = "[audit]\ncheckpoint_records = 5\nbatch = 3\n";
    let mut server = ServerProcess::start_configured(tmp.path(), config);
    let minters: Vec<_> = (0..3)
        .map(|_| {
            let socket = server.socket();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline && mint(&socket, "spiffe://example.org/crash") {}
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for m in minters {
        m.join().unwrap();
    }
    let before = db(tmp.path()).query_row("SELECT seq FROM audit_head", [], |r| r.get::<_, i64>(0)).unwrap();
    assert!(before > 1, "appends happened before the kill: {before}");
    let signed = db(tmp.path())
        .query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_checkpoints", [], |r| r.get::<_, i64>(0))
        .unwrap();
    drop(server);

    let server = ServerProcess::start_configured(tmp.path(), config);
    for _ in 0..4 {
        assert!(mint(&server.socket(), "spiffe://example.org/after-crash"));
    }
    let report = wait_for_records(&server, before as u64 + 4);
    assert!(report.get("problem").is_none(), "{report}");
    let conn = db(tmp.path());
    let (n, max): (i64, i64) = conn
        .query_row("SELECT COUNT(*), MAX(seq) FROM audit_log", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap();
    assert_eq!(n, max, "no gap and no fork: one record per seq");
    // The kill is on the record: the log's head was past the last checkpoint.
    if before > signed {
        let resumed = server.ok(&["audit", "search", "--event", "audit.resume", "--json"]);
        let r = json(resumed.lines().next().unwrap_or("null"));
        assert_eq!(r["fields"]["head"].as_i64(), Some(before), "{resumed}");
        assert_eq!(r["fields"]["last_checkpoint"].as_i64(), Some(signed), "{resumed}");
    }
    server.stop();
}

/// One peer's flood of failed handshakes does not hide another peer's: `tls.refused` is recorded
/// once per interval per source address, with the count from that address.
#[test]
fn a_flood_from_one_address_does_not_hide_another_addresss_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let addr: std::net::SocketAddr =
        std::fs::read_to_string(tmp.path().join("data/server.addr")).unwrap().trim().parse().unwrap();
    // A connection from `source` (another loopback address) that fails its handshake.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refuse_from = |source: [u8; 4]| {
        rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(std::net::SocketAddr::from((source, 0))).unwrap();
            let mut s = tokio::time::timeout(Duration::from_secs(5), s.connect(addr)).await.unwrap().unwrap();
            let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut Vec::new())).await;
        })
    };
    for _ in 0..50 {
        refuse_from([127, 0, 0, 1]);
    }
    refuse_from([127, 0, 0, 2]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = server.ok(&["audit", "search", "--event", "tls.refused", "--json"]);
        let peers: Vec<String> = refused
            .lines()
            .map(|l| json(l)["fields"]["peer"].as_str().unwrap_or_default().to_owned())
            .collect();
        if peers.iter().any(|p| p.starts_with("127.0.0.2:")) {
            assert_eq!(peers.iter().filter(|p| p.starts_with("127.0.0.1:")).count(), 1, "{refused}");
            break;
        }
        assert!(Instant::now() < deadline, "the second address's refusal is not on the record: {refused}");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}

/// Runs `vouch agent api fetch <args>` against the agent at `socket`, as a workload: its pid and
/// output.
fn workload(socket: &str, args: &[&str]) -> (u32, std::process::Output) {
    let child = std::process::Command::new(super::VOUCH)
        .args(["agent", "api", "fetch"])
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", socket)
        .env_remove("VOUCH_OUTPUT")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (child.id(), child.wait_with_output().unwrap())
}

/// A delivery report as the test's agent client sends it, with `records` copies of one record.
fn report(node: &str, records: usize, svid_id: &str) -> vouch_api::agent::DeliveryReport {
    let record = vouch_api::agent::Delivery {
        spiffe_id: vouch_api::SpiffeId::parse("spiffe://example.org/forensic-cli").unwrap(),
        kind: vouch_api::agent::SvidKind::X509,
        svid_id: svid_id.to_owned(),
        not_before: 1,
        not_after: 2,
        delivered_at_ms: 1000,
        pid: 4242,
        container_id: Some("forged".into()),
        image_id: None,
        binary_sha256: None,
    };
    vouch_api::agent::DeliveryReport {
        node: vouch_api::SpiffeId::parse(node).unwrap(),
        dropped: 0,
        records: vec![record; records],
    }
}

/// Forensics end to end: a real agent serves a real workload process (this `vouch`, as a SPIFFE
/// client) and reports the delivery; `vouch audit who` names that process and the agent's node at a
/// time inside the SVID's validity, and nothing before it; the record is in the audit log and
/// verifies. Reports from the agent's own mTLS identity that name another node, hold too many
/// records or bytes, or a bad record are refused and record nothing.
#[test]
fn who_held_an_identity_is_answered_from_the_agents_reports() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let agent_id = "spiffe://example.org/agent/forensics";
    let spiffe = "spiffe://example.org/forensic-cli";
    let (agent, agent_dir) = super::start_agent(tmp.path(), &server, agent_id, &[]);
    let _agent = super::KillOnDrop(agent);
    super::entry_for_vouch(&server, spiffe, agent_id, &[]);
    let rfc3339 = |t: std::time::SystemTime| vouch_core::ttl::rfc3339(vouch_core::ttl::unix_seconds(t));
    let before = rfc3339(std::time::SystemTime::now() - Duration::from_secs(2));

    // The workload: `vouch agent api fetch x509` as this user; its pid is what the agent attests.
    let socket = format!("unix://{}", agent_dir.join("api.sock").display());
    let svid_dir = tmp.path().join("svid");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (pid, fetched) = loop {
        let (pid, out) =
            workload(&socket, &["x509", "-o", "json", "--write", &svid_dir.display().to_string()]);
        if out.status.success() {
            break (pid, json(&String::from_utf8_lossy(&out.stdout)));
        }
        assert!(Instant::now() < deadline, "no SVID: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(100));
    };
    let expires_at = fetched["svids"][0]["expires_at"].as_i64().unwrap();
    let leaf = vouch_ca::pem::decode_one(
        &std::fs::read_to_string(svid_dir.join("svid.pem")).unwrap(),
        &["CERTIFICATE"],
    )
    .unwrap();
    let serial = vouch_ca::x509::cert_info(&leaf).unwrap().serial;
    // A JWT-SVID for another process.
    let (jwt_pid, out) = workload(&socket, &["jwt", "-a", "db", "-o", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = json(&String::from_utf8_lossy(&out.stdout))["svids"][0]["token"].as_str().unwrap().to_owned();
    let claims = {
        use base64::Engine as _;
        let payload = token.split('.').nth(1).unwrap();
        json(
            &String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
                .unwrap(),
        )
    };

    // The agent reports within a few seconds; `who` at a time inside the validity names both.
    let now = rfc3339(std::time::SystemTime::now() + Duration::from_secs(1));
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = json(&server.ok(&["audit", "who", "--spiffe-id", spiffe, "--at", &now, "-o", "json"]));
        if answer["holders"].as_array().unwrap().len() >= 2 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "no holder reported: {answer}; agent log: {}",
            std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let holders = answer["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 2, "one holder per connection and SVID: {answer}");
    let h = &holders[0];
    assert_eq!(h["pid"], pid, "{h}");
    assert_eq!(h["node"], agent_id, "{h}");
    assert_eq!(h["kind"], "x509", "{h}");
    assert_eq!(h["svid_id"], serial.as_str(), "{h}");
    assert_eq!(h["not_after"], expires_at, "{h}");
    assert!(h.get("binary_sha256").is_none(), "no entry asked for a hash, so none was computed: {h}");
    let j = &holders[1];
    assert_eq!(
        (&j["pid"], &j["node"], &j["kind"]),
        (&serde_json::json!(jwt_pid), &serde_json::json!(agent_id), &serde_json::json!("jwt")),
        "{j}"
    );
    assert_eq!((&j["svid_id"], &j["not_after"]), (&claims["jti"], &claims["exp"]), "{j}");
    assert_eq!(answer["truncated"], false);

    // Before the workload ran, nobody held it; the table says so.
    let none = json(&server.ok(&["audit", "who", "--spiffe-id", spiffe, "--at", &before, "-o", "json"]));
    assert_eq!(none["holders"], serde_json::json!([]), "{none}");
    let out = server.vouch(&["audit", "who", "--spiffe-id", spiffe, "--at", &before]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no workload held"), "{out:?}");
    // A range, and durations ago; the table names the process and the node.
    let table = server.ok(&["audit", "who", "--spiffe-id", spiffe, "--from", "10m", "--to", "0s"]);
    assert!(
        table.starts_with("HELD FROM") && table.contains(agent_id) && table.contains(&pid.to_string()),
        "{table}"
    );
    assert!(table.contains(&format!("x509:{serial}")), "{table}");
    // Bad questions: a clear error, exit 1 (or 2 from the argument parser).
    let err = server.fails(&["audit", "who", "--spiffe-id", spiffe, "--at", "3 a.m."]);
    assert!(err.contains("--at") && err.contains("RFC 3339"), "{err}");
    let err = server.fails(&["audit", "who", "--spiffe-id", "payments", "--at", "1h"]);
    assert!(err.contains("spiffe_id"), "{err}");
    assert_eq!(
        server.vouch(&["audit", "who", "--spiffe-id", spiffe, "--at", "1h", "--from", "2h"]).status.code(),
        Some(2)
    );
    assert_eq!(server.vouch(&["audit", "who", "--spiffe-id", spiffe]).status.code(), Some(2));

    // Reports through the agent's own mTLS identity (its saved SVID).
    let addr = std::fs::read_to_string(tmp.path().join("data/server.addr")).unwrap().trim().to_owned();
    let td = vouch_core::TrustDomain::new("example.org").unwrap();
    let bundle = std::fs::read_to_string(tmp.path().join("bundle.pem")).unwrap();
    let (chain, key) = (
        std::fs::read_to_string(agent_dir.join("agent.pem")).unwrap(),
        std::fs::read_to_string(agent_dir.join("agent.key")).unwrap(),
    );
    let client = vouch_client::AdminClient::tls(&addr, &td, &bundle, Some((&chain, &key))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refused = |r: vouch_api::agent::DeliveryReport, status: u16| -> String {
        match rt.block_on(client.report_delivered(&r)) {
            Err(vouch_client::ClientError::Api { status: s, message, .. }) if s == status => message,
            other => panic!("expected {status}: {other:?}"),
        }
    };
    let other_node = refused(report("spiffe://example.org/agent/someone-else", 1, "f1"), 403);
    assert!(other_node.contains("is not the calling agent"), "{other_node}");
    let too_many = refused(report(agent_id, vouch_api::agent::MAX_DELIVERY_BATCH + 1, "f2"), 400);
    assert!(too_many.contains("1 to 256 records"), "{too_many}");
    let oversized = refused(report(agent_id, 1, &"f".repeat(vouch_api::agent::MAX_DELIVERY_BODY)), 400);
    assert!(oversized.contains("delivery report:") && oversized.contains("262144 bytes"), "{oversized}");
    let mut bad = report(agent_id, 3, "f3");
    bad.records[2].container_id = Some("two words".into());
    let bad = refused(bad, 400);
    assert!(bad.contains("records[2]: container_id"), "{bad}");
    // A good one is taken, under the caller's node.
    let taken = rt.block_on(client.report_delivered(&report(agent_id, 2, "f4"))).unwrap();
    assert_eq!(taken.accepted, 2);

    // The audit log holds the real delivery and the accepted report, none of the refused ones,
    // and verifies.
    let deadline = Instant::now() + Duration::from_secs(10);
    let delivered: Vec<serde_json::Value> = loop {
        let lines = server.ok(&["audit", "search", "--event", "agent.delivered", "--all", "--json"]);
        let records: Vec<serde_json::Value> = lines.lines().map(json).collect();
        if records.len() >= 4 {
            break records;
        }
        assert!(Instant::now() < deadline, "records: {records:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let ids: Vec<&str> = delivered
        .iter()
        .map(|r| r["fields"]["serial"].as_str().or(r["fields"]["jti"].as_str()).unwrap())
        .collect();
    assert_eq!(ids, [serial.as_str(), claims["jti"].as_str().unwrap(), "f4", "f4"], "{delivered:?}");
    assert!(!delivered.iter().any(|r| r.to_string().contains(&token)), "the token itself is not recorded");
    assert!(delivered.iter().all(|r| r["fields"]["agent"] == agent_id));
    let by_node =
        server.ok(&["audit", "search", "--node", agent_id, "--event", "agent.delivered.refused", "--json"]);
    assert!(by_node.contains("is not the calling agent"), "the refusal is on the record: {by_node}");
    let report = json(&server.ok(&["audit", "verify", "-o", "json"]));
    assert!(report.get("problem").is_none(), "{report}");
    let seq = h["seq"].as_u64().unwrap();
    assert!(report["records"].as_u64().unwrap() >= seq, "{report}");
    server.stop();
}
