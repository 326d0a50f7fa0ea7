//! Short-lived PostgreSQL credentials against a real PostgreSQL (Debian's, a private cluster),
//! through the CLI and the real `vouch server` process: the privileged role is a CREATEROLE role
//! (not a superuser) that owns the tables it grants on. Issued credentials log in with `psql`;
//! the template's grant holds (SELECT works, INSERT is refused); renew moves `VALID UNTIL`;
//! revoke ends a live session and drops the role; expiry drops the role; bad input is refused
//! with the reason and changes nothing; neither password reaches the server's log. A role left
//! by a crash is dropped at start, and a server killed (SIGKILL) in the middle of an issue leaves
//! no role and no lease once it has started again.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vouch_store::test_postgres::PgCluster;

use super::postgres::{as_superuser, port_of, run_ok};
use super::{json, output_within, ServerProcess};

/// Runs `sql` as the superuser over the cluster's socket; its unaligned output.
fn query(cluster: &PgCluster, sql: &str) -> String {
    let conninfo =
        format!("host={} port={} dbname=postgres user=postgres", cluster.dir().display(), port_of(cluster));
    run_ok(Command::new("psql").args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", sql]))
        .trim()
        .to_owned()
}

/// `psql` over TCP as `user` with `password`, running `sql`: its output or its error.
fn as_user(cluster: &PgCluster, user: &str, password: &str, sql: &str) -> Result<String, String> {
    let conninfo =
        format!("host=127.0.0.1 port={} dbname=postgres user={user} connect_timeout=5", port_of(cluster));
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", sql])
        .env("PGPASSWORD", password);
    let out =
        output_within(&mut cmd, b"", Duration::from_secs(20)).ok_or("psql did not finish within 20 s")?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The roles named like vouch's dynamic roles.
fn vouch_roles(cluster: &PgCluster) -> String {
    query(cluster, "SELECT string_agg(rolname, ',' ORDER BY rolname) FROM pg_roles WHERE rolname ~ '^vouch_[0-9a-f]{32}$'")
}

/// Polls `check` every 100 ms for at most `limit`.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn config(cluster: &PgCluster, pw_file: &std::path::Path) -> String {
    format!(
        r#"
[database.orders]
url = "postgres://vouch_admin@127.0.0.1:{port}/postgres"
password_file = "{pw}"

[database.orders.roles.readonly]
statements = ["GRANT SELECT ON orders TO {{{{name}}}}"]
default_ttl = "10m"
max_ttl = "1h"

[database.orders.roles.short]
statements = ["GRANT SELECT ON orders TO {{{{name}}}}"]
default_ttl = "2s"

[database.orders.roles.gated]
statements = ["GRANT SELECT ON orders TO {{{{name}}}}", "SELECT 1 FROM gate"]
"#,
        port = port_of(cluster),
        pw = pw_file.display()
    )
}

#[test]
fn short_lived_postgres_credentials_are_issued_renewed_revoked_and_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = PgCluster::start();
    let admin_pw = "adminpw-9f3e1c7b2a";
    as_superuser(
        &cluster,
        &format!(
            "CREATE ROLE vouch_admin LOGIN CREATEROLE PASSWORD '{admin_pw}';
             GRANT pg_signal_backend TO vouch_admin;
             CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2);
             ALTER TABLE orders OWNER TO vouch_admin;
             CREATE TABLE gate (); ALTER TABLE gate OWNER TO vouch_admin;
             CREATE ROLE vouch_0123456789abcdef0123456789abcdef LOGIN;
             CREATE ROLE vouch_keepme;"
        ),
    );
    let pw_file = tmp.path().join("admin.pw");
    std::fs::write(&pw_file, format!("{admin_pw}\n")).unwrap();
    let config = config(&cluster, &pw_file);
    let server = ServerProcess::start_configured(tmp.path(), &config);

    // A role named like vouch's that no lease accounts for (a crash's leftover) is dropped at
    // start; a role that only starts with the prefix is not vouch's and stays.
    wait_for("the unaccounted role is dropped", Duration::from_secs(15), || vouch_roles(&cluster).is_empty());
    assert_eq!(query(&cluster, "SELECT count(*) FROM pg_roles WHERE rolname = 'vouch_keepme'"), "1");

    // Issue: the table output prints the username and password once, to stdout.
    let out = server.ok(&["db", "creds", "orders/readonly"]);
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{out}"))
            .to_owned()
    };
    let (user, password) = (field("username"), field("password"));
    assert!(user.starts_with("vouch_") && password.len() == 32, "{out}");
    assert_eq!(as_user(&cluster, &user, &password, "SELECT count(*) FROM orders").unwrap(), "2");
    let err = as_user(&cluster, &user, &password, "INSERT INTO orders VALUES (3)").unwrap_err();
    assert!(err.contains("permission denied"), "{err}");
    assert!(as_user(&cluster, &user, "wrong", "SELECT 1").is_err());

    // Renew moves VALID UNTIL later.
    let leases = json(&server.ok(&["db", "leases", "-o", "json"]));
    let lease = leases["leases"][0].clone();
    assert_eq!((lease["role"].as_str(), lease["state"].as_str()), (Some(&*user), Some("active")));
    assert_eq!(lease["identity"].as_str().map(|s| s.starts_with("local:uid:")), Some(true), "{lease}");
    let id = lease["id"].as_str().unwrap().to_owned();
    let until = |role: &str| -> i64 {
        query(
            &cluster,
            &format!(
                "SELECT extract(epoch FROM rolvaliduntil)::bigint FROM pg_roles WHERE rolname = '{role}'"
            ),
        )
        .parse()
        .unwrap()
    };
    let before = until(&user);
    assert_eq!(before, lease["expires_at"].as_i64().unwrap());
    let renewed = json(&server.ok(&["db", "renew", &id, "--ttl", "30m", "-o", "json"]));
    assert!(until(&user) >= before + 1100, "VALID UNTIL moved by about 20 minutes");
    assert_eq!(until(&user), renewed["expires_at"].as_i64().unwrap());
    let err = server.fails(&["db", "renew", &id, "--ttl", "2h"]);
    assert!(err.contains("over the max TTL"), "{err}");

    // Revoke ends a live session and drops the role.
    let conninfo = format!("host=127.0.0.1 port={} dbname=postgres user={user}", port_of(&cluster));
    let mut session = Command::new("psql")
        .args(["-X", "-d", &conninfo, "-c", "SELECT pg_sleep(60)"])
        .env("PGPASSWORD", &password)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the session is open", Duration::from_secs(10), || {
        query(&cluster, &format!("SELECT count(*) FROM pg_stat_activity WHERE usename = '{user}'")) == "1"
    });
    let out = server.ok(&["db", "revoke", &id]);
    assert!(out.contains(&format!("role {user} dropped")), "{out}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = session.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the session outlived its revoked role");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    assert_eq!(query(&cluster, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{user}'")), "0");
    assert!(as_user(&cluster, &user, &password, "SELECT 1").is_err());
    assert_eq!(json(&server.ok(&["db", "leases", "-o", "json"]))["leases"], serde_json::json!([]));

    // Expiry drops the role (2 s lease).
    let creds = json(&server.ok(&["db", "creds", "orders/short", "-o", "json"]));
    let short = creds["username"].as_str().unwrap().to_owned();
    assert!(as_user(&cluster, &short, creds["password"].as_str().unwrap(), "SELECT 1").is_ok());
    wait_for("the expired role is dropped", Duration::from_secs(20), || {
        query(&cluster, &format!("SELECT count(*) FROM pg_roles WHERE rolname = '{short}'")) == "0"
    });
    wait_for("the expired lease is gone", Duration::from_secs(5), || {
        json(&server.ok(&["db", "leases", "-o", "json"]))["leases"] == serde_json::json!([])
    });

    // Bad input is refused with the reason and changes nothing.
    for (args, want) in [
        (&["db", "creds", "orders/nope"][..], "has no role template `nope`"),
        (&["db", "creds", "nope/readonly"], "no database connection `nope`"),
        (&["db", "creds", "orders/readonly", "--ttl", "2h"], "over the max TTL"),
        (&["db", "creds", "orders"], "<connection>/<template>"),
        (&["db", "creds", "orders/../x"], "role"),
        (&["db", "renew", "00ff"], "no database lease `00ff`"),
        (&["db", "revoke", "00ff"], "no database lease `00ff`"),
    ] {
        let err = server.fails(args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    assert_eq!(json(&server.ok(&["db", "leases", "-o", "json"]))["leases"], serde_json::json!([]));
    assert_eq!(vouch_roles(&cluster), "");

    // No password reached the server's log.
    let log = std::fs::read_to_string(tmp.path().join("server.log")).unwrap();
    for secret in [admin_pw, &password, creds["password"].as_str().unwrap()] {
        assert!(!log.contains(secret), "a password is in the server log");
    }
    assert!(log.contains("db.creds.issue") && log.contains("db.lease.revoke"), "audited");

    // A server killed in the middle of an issue: the template's second statement waits on a lock
    // the test holds, the lease is `creating`, and the server gets SIGKILL.
    let mut lock = Command::new("psql")
        .args(["-X", "-q", "-d"])
        .arg(format!(
            "host={} port={} dbname=postgres user=postgres",
            cluster.dir().display(),
            port_of(&cluster)
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    lock.stdin.as_mut().unwrap().write_all(b"BEGIN; LOCK TABLE gate IN ACCESS EXCLUSIVE MODE;\n").unwrap();
    wait_for("the test holds the lock", Duration::from_secs(10), || {
        query(&cluster, "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'gate' AND l.granted") == "1"
    });
    let mut issuing = Command::new(super::VOUCH)
        .args(["db", "creds", "orders/gated"])
        .env("VOUCH_ADMIN_SOCKET", server.socket())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the issue is under way", Duration::from_secs(10), || {
        let l = json(&server.ok(&["db", "leases", "-o", "json"]));
        l["leases"][0]["state"] == "creating"
    });
    drop(server); // SIGKILL
    drop(lock.stdin.take());
    let _ = lock.kill();
    let _ = lock.wait();
    let _ = issuing.wait();
    let server = ServerProcess::start_configured(tmp.path(), &config);
    wait_for("no lease and no role after the restart", Duration::from_secs(20), || {
        json(&server.ok(&["db", "leases", "-o", "json"]))["leases"] == serde_json::json!([])
            && vouch_roles(&cluster).is_empty()
    });
    // And credentials are issued again as before.
    let creds = json(&server.ok(&["db", "creds", "orders/gated", "-o", "json"]));
    assert!(as_user(
        &cluster,
        creds["username"].as_str().unwrap(),
        creds["password"].as_str().unwrap(),
        "SELECT 1"
    )
    .is_ok());
    server.ok(&["db", "revoke", creds["lease"]["id"].as_str().unwrap()]);
    assert_eq!(vouch_roles(&cluster), "");

    // A workload (this test's `vouch`) through its agent's secret socket: refused without the
    // grant, with the reason; issued once a grant permits `issue` on the role.
    let agent_id = "spiffe://example.org/agent/db-node";
    let (agent, agent_dir) = super::start_agent(tmp.path(), &server, agent_id, &[]);
    let _agent = super::KillOnDrop(agent);
    let socket = format!("unix://{}", agent_dir.join("api.sock").display());
    super::entry_for_vouch(&server, "spiffe://example.org/db-client", agent_id, &["--id", "db-client"]);
    let ask = |role: &str| {
        let mut cmd = Command::new(super::VOUCH);
        cmd.args(["agent", "api", "db", "creds", role, "-o", "json", "--socket", &socket]);
        output_within(&mut cmd, b"", Duration::from_secs(30)).expect("finished within 30 s")
    };
    let mut refused = None;
    wait_for("the agent serves the entry", Duration::from_secs(20), || {
        let out = ask("orders/readonly");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let done = !err.contains("no identity issued");
        refused = Some((out.status.success(), err));
        done
    });
    let (ok, err) = refused.unwrap();
    assert!(
        !ok && err.contains(
            "may not have credentials issued for database role `orders/readonly`: no policy permits"
        ),
        "{err}"
    );
    let grant = tmp.path().join("grant.cedar");
    std::fs::write(&grant, r#"permit(principal == Workload::"spiffe://example.org/db-client", action == Action::"issue", resource == DbRole::"orders/readonly");"#).unwrap();
    server.ok(&["policy", "put", "db-client", "--file", grant.to_str().unwrap()]);
    let out = ask("orders/readonly");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let creds = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(creds["lease"]["identity"], "spiffe://example.org/db-client");
    let (user, password) = (creds["username"].as_str().unwrap(), creds["password"].as_str().unwrap());
    assert_eq!(as_user(&cluster, user, password, "SELECT count(*) FROM orders").unwrap(), "2");
    server.ok(&["db", "revoke", creds["lease"]["id"].as_str().unwrap()]);
    assert_eq!(vouch_roles(&cluster), "");
}
