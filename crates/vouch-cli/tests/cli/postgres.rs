//! No password at all: a workload logs in to a real PostgreSQL (Debian's, a private cluster) with
//! the X509-SVID that `vouch helper` writes. The entry puts the subject common name `app_user` into
//! the SVID; PostgreSQL trusts vouch's bundle (`ssl_ca_file`), authenticates with `cert` and maps
//! the CN to the role through `pg_ident.conf`. `psql` connects with the helper's files; a
//! connection without a certificate, one with an SVID of another CN, one with a certificate of
//! another CA and one through a map on the SPIFFE ID are refused. With 60 s SVIDs, new connections
//! every 0.5 s across three rotations all succeed and show the new serials. Changing the entry's
//! common name makes the agent sign again at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vouch_store::test_postgres::PgCluster;

use super::helper::spawn_helper;
use super::{entry_for_vouch, json, output_within, start_agent, KillOnDrop, ServerProcess};

/// Runs a command (at most 30 s) that must succeed; its stdout.
pub(super) fn run_ok(cmd: &mut Command) -> String {
    let out = output_within(cmd, b"", Duration::from_secs(30)).expect("finished within 30 s");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `openssl x509 -noout args… -in pem`.
fn openssl_x509(pem: &Path, args: &[&str]) -> String {
    run_ok(
        Command::new("openssl")
            .args(["x509", "-noout", "-nameopt", "sep_comma_plus_space"])
            .args(args)
            .arg("-in")
            .arg(pem),
    )
}

/// The serial of the certificate in `pem` as a decimal number (as `pg_stat_ssl` shows it).
fn serial_decimal(pem: &Path) -> String {
    let text = openssl_x509(pem, &["-serial"]);
    let hex = text.trim().strip_prefix("serial=").expect("serial=…");
    u128::from_str_radix(hex, 16).expect("a 16-byte serial").to_string()
}

/// A test CA and a server certificate for 127.0.0.1 (PostgreSQL's own TLS identity, which the
/// client verifies with `sslmode=verify-full`), and a client certificate for CN `app_user` from the
/// same CA, which vouch's bundle does not hold. Returns (CA, server cert, server key, foreign
/// client cert, its key) paths.
fn test_ca(dir: &Path) -> [PathBuf; 5] {
    std::fs::create_dir_all(dir).unwrap();
    let p = |n: &str| dir.join(n);
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509"])
            .args(ec)
            .args(["-days", "1", "-subj", "/CN=vouch test PostgreSQL CA", "-keyout"])
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")),
    );
    let leaf = |name: &str, subject: &str, ext: &str| {
        run_ok(
            Command::new("openssl")
                .arg("req")
                .args(ec)
                .args(["-subj", subject, "-keyout"])
                .arg(p(&format!("{name}.key")))
                .arg("-out")
                .arg(p(&format!("{name}.csr"))),
        );
        std::fs::write(p(&format!("{name}.ext")), ext).unwrap();
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-set_serial", "7", "-in"])
                .arg(p(&format!("{name}.csr")))
                .arg("-CA")
                .arg(p("ca.pem"))
                .arg("-CAkey")
                .arg(p("ca.key"))
                .arg("-extfile")
                .arg(p(&format!("{name}.ext")))
                .arg("-out")
                .arg(p(&format!("{name}.pem"))),
        );
    };
    leaf("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    leaf("foreign", "/CN=app_user", "extendedKeyUsage=clientAuth\n");
    [p("ca.pem"), p("server.pem"), p("server.key"), p("foreign.pem"), p("foreign.key")]
}

/// How a `psql` run connects.
struct Conn<'a> {
    port: u16,
    user: &'a str,
    sslmode: &'a str,
    root: &'a Path,
    cert: &'a Path,
    key: &'a Path,
    home: &'a Path,
}

impl Conn<'_> {
    /// The libpq connection string, as the docs give it.
    fn conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} dbname=postgres user={} sslmode={} sslrootcert={} sslcert={} sslkey={} connect_timeout=5",
            self.port,
            self.user,
            self.sslmode,
            self.root.display(),
            self.cert.display(),
            self.key.display()
        )
    }

    /// `psql` (a new connection) running `sql`: its unaligned output, or its error.
    fn query(&self, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &self.conninfo(), "-c", sql])
            // No ~/.postgresql files or PG* settings of the machine take part.
            .env("HOME", self.home);
        for var in
            ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE", "PGSSLCERT", "PGSSLKEY", "PGPASSWORD"]
        {
            cmd.env_remove(var);
        }
        let out = output_within(&mut cmd, b"", Duration::from_secs(20))
            .ok_or_else(|| "psql did not finish within 20 s".to_owned())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

/// The port of a cluster, from its URL (`…:PORT/db`).
pub(super) fn port_of(cluster: &PgCluster) -> u16 {
    let url = cluster.socket_url("postgres");
    url.rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()).unwrap().parse().unwrap()
}

/// Runs `sql` as the superuser over the cluster's Unix socket (trusted, for the set-up).
pub(super) fn as_superuser(cluster: &PgCluster, sql: &str) {
    let conninfo =
        format!("host={} port={} dbname=postgres user=postgres", cluster.dir().display(), port_of(cluster));
    run_ok(Command::new("psql").args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", sql]));
}

#[test]
fn postgres_logs_a_workload_in_by_its_x509_svid_common_name_across_rotations() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let agent_id = "spiffe://example.org/agent/db-node";
    let (agent, agent_dir) = start_agent(tmp.path(), &server, agent_id, &[]);
    let _agent = KillOnDrop(agent);
    let socket = format!("unix://{}", agent_dir.join("api.sock").display());

    // Bad common names are refused with the reason, and change nothing.
    for (bad, want) in [
        ("app\tuser", "character 4 of the common name is a control character"),
        (&*"u".repeat(65), "has 65 characters, more than the 64"),
        (" app_user", "white space"),
    ] {
        let err = server.fails(&[
            "entry",
            "create",
            "--spiffe-id",
            "spiffe://example.org/bad",
            "--parent-id",
            agent_id,
            "-s",
            "unix:uid:1",
            "--x509-common-name",
            bad,
        ]);
        assert!(err.contains("--x509-common-name") && err.contains(want), "{err}");
    }
    assert_eq!(json(&server.ok(&["entry", "list", "-o", "json"]))["entries"], serde_json::json!([]));

    // The workload's entry: CN app_user, 60 s SVIDs (rotated at half life).
    entry_for_vouch(
        &server,
        "spiffe://example.org/db-client",
        agent_id,
        &["--id", "db-client", "--x509-ttl", "60s", "--x509-common-name", "app_user"],
    );
    let shown = server.ok(&["entry", "show", "db-client"]);
    assert!(shown.lines().any(|l| l.split_whitespace().eq(["x509_common_name", "app_user"])), "{shown}");
    assert_eq!(
        json(&server.ok(&["entry", "show", "db-client", "-o", "json"]))["x509_common_name"],
        "app_user"
    );

    // `vouch helper` writes the SVID files for the workload.
    let svid_dir = tmp.path().join("svid");
    let (_helper, helper_log) = spawn_helper(tmp.path(), &socket, &["--dir", svid_dir.to_str().unwrap()]);
    let (cert, key, bundle) =
        (svid_dir.join("svid.pem"), svid_dir.join("svid.key"), svid_dir.join("bundle.pem"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(cert.exists() && key.exists() && bundle.exists()) {
        assert!(Instant::now() < deadline, "the helper wrote no files: {}", helper_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let subject = openssl_x509(&cert, &["-subject"]);
    assert_eq!(subject.trim(), "subject=O=vouch, CN=app_user");
    let text = openssl_x509(&cert, &["-text"]);
    assert!(text.contains("URI:spiffe://example.org/db-client"), "the SPIFFE ID stays the URI SAN: {text}");

    // PostgreSQL with TLS (its own certificate from a test CA), trusting vouch's bundle for
    // client certificates, `cert` authentication, and the CN mapped to the role.
    let [pg_ca, server_cert, server_key, foreign_cert, foreign_key] = test_ca(&tmp.path().join("pg-ca"));
    let cluster = PgCluster::start();
    cluster.require_tls(
        &std::fs::read_to_string(&server_cert).unwrap(),
        &std::fs::read_to_string(&server_key).unwrap(),
    );
    let data = cluster.dir().join("data");
    let ca_file = cluster.dir().join("vouch-bundle.pem");
    std::fs::copy(&bundle, &ca_file).unwrap();
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str(&format!("ssl_ca_file = '{}'\nlog_connections = on\n", ca_file.display()));
    std::fs::write(data.join("postgresql.conf"), conf).unwrap();
    std::fs::write(
        data.join("pg_hba.conf"),
        "local   all  postgres                  trust\n\
         hostssl all  spiffe_user 127.0.0.1/32 cert map=spiffe\n\
         hostssl all  all         127.0.0.1/32 cert map=vouch\n",
    )
    .unwrap();
    std::fs::write(
        data.join("pg_ident.conf"),
        "# MAPNAME  SYSTEM-USERNAME                        PG-USERNAME\n\
         vouch      app_user                               app_user\n\
         spiffe     /^spiffe://example\\.org/db-client$    spiffe_user\n",
    )
    .unwrap();
    cluster.pause();
    cluster.resume();
    as_superuser(
        &cluster,
        "CREATE ROLE app_user LOGIN; CREATE ROLE spiffe_user LOGIN; \
         CREATE TABLE orders (id int PRIMARY KEY, item text); \
         INSERT INTO orders VALUES (1, 'tea'), (2, 'cake'); GRANT SELECT ON orders TO app_user;",
    );
    let port = port_of(&cluster);
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let svid_conn =
        |user| Conn { port, user, sslmode: "verify-full", root: &pg_ca, cert: &cert, key: &key, home: &home };
    let server_log = || std::fs::read_to_string(cluster.dir().join("server.log")).unwrap_or_default();

    // The workload logs in as app_user with the helper's files and no password, and reads.
    let who = "SELECT current_user || '|' || client_serial || '|' || client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // The serials the certificate file held, sampled before and after each connection below.
    let mut in_file: Vec<String> = vec![serial_decimal(&cert)];
    let first = svid_conn("app_user").query(who).unwrap_or_else(|e| panic!("{e}\n{}", server_log()));
    let parts: Vec<&str> = first.split('|').collect();
    assert_eq!(parts[0], "app_user", "{first}");
    assert!(parts[2].contains("CN=app_user"), "{first}");
    assert_eq!(
        svid_conn("app_user").query("SELECT string_agg(item, ',' ORDER BY id) FROM orders").unwrap(),
        "tea,cake"
    );

    // Refused: no certificate; no TLS; an SVID of another CN (minted by vouch, so trusted); a
    // certificate with CN app_user from a CA vouch's bundle does not hold.
    let none = tmp.path().join("none");
    let no_cert = Conn { cert: &none.join("c.pem"), key: &none.join("c.key"), ..svid_conn("app_user") };
    let err = no_cert.query("SELECT 1").unwrap_err();
    assert!(err.contains("connection requires a valid client certificate"), "{err}");
    let err = Conn { sslmode: "disable", ..svid_conn("app_user") }.query("SELECT 1").unwrap_err();
    assert!(err.contains("no pg_hba.conf entry") && err.contains("no encryption"), "{err}");
    let other = tmp.path().join("other");
    server.ok(&[
        "svid",
        "mint",
        "x509",
        "--spiffe-id",
        "spiffe://example.org/reporting",
        "--common-name",
        "reporting",
        "--ttl",
        "10m",
        "--write",
        other.to_str().unwrap(),
    ]);
    assert_eq!(openssl_x509(&other.join("svid.pem"), &["-subject"]).trim(), "subject=O=vouch, CN=reporting");
    let other_conn =
        Conn { cert: &other.join("svid.pem"), key: &other.join("svid.key"), ..svid_conn("app_user") };
    let err = other_conn.query("SELECT 1").unwrap_err();
    assert!(err.contains("certificate authentication failed for user \"app_user\""), "{err}");
    let foreign = Conn { cert: &foreign_cert, key: &foreign_key, ..svid_conn("app_user") };
    let err = foreign.query("SELECT 1").unwrap_err();
    assert!(err.contains("unknown ca") || err.contains("certificate verify failed"), "{err}");
    // A map on the SPIFFE ID cannot work: `cert` authentication compares the CN (or, with
    // clientname=DN, the subject DN), never the URI SAN, so the regex meets "app_user".
    let err = svid_conn("spiffe_user").query("SELECT 1").unwrap_err();
    assert!(err.contains("certificate authentication failed for user \"spiffe_user\""), "{err}");
    let log = server_log();
    assert!(
        log.contains("no match in usermap \"spiffe\" for user \"spiffe_user\" authenticated as \"app_user\""),
        "{log}"
    );

    // Rotation: a new connection every 0.5 s through three rotations (60 s SVIDs, back-dated by
    // 30 s, are renewed at half life with jitter: every 6 to 15 s); libpq reads the files at each
    // connection, so every one succeeds, and the serial changes.
    let mut seen: Vec<String> = vec![parts[1].to_owned()];
    let mut failures = Vec::new();
    let mut connections = 0;
    let deadline = Instant::now() + Duration::from_secs(150);
    while seen.len() < 4 || connections < 20 {
        assert!(
            Instant::now() < deadline,
            "fewer than three rotations in 150 s: serials {seen:?}\nhelper: {}",
            helper_log()
        );
        let before = serial_decimal(&cert);
        if in_file.last() != Some(&before) {
            in_file.push(before);
        }
        std::thread::sleep(Duration::from_millis(500));
        connections += 1;
        match svid_conn("app_user").query(who) {
            Ok(row) => {
                let serial = row.split('|').nth(1).unwrap_or_default().to_owned();
                assert!(row.starts_with("app_user|"), "{row}");
                if seen.last() != Some(&serial) {
                    seen.push(serial);
                }
            }
            Err(e) => failures.push(e),
        }
        // Sampled before and after the connection: the serial it used is one of the two.
        let now_in_file = serial_decimal(&cert);
        if in_file.last() != Some(&now_in_file) {
            in_file.push(now_in_file);
        }
    }
    assert!(failures.is_empty(), "{} of {connections} connections failed: {failures:?}", failures.len());
    for s in &seen {
        assert!(
            in_file.contains(s),
            "PostgreSQL saw serial {s}, which the helper's file never held: {in_file:?}"
        );
    }
    assert!(helper_log().matches("wrote the X509-SVID").count() >= 4, "{}", helper_log());

    // A new common name on the entry: the agent signs again at once, not at the next rotation.
    // Right after a rotation (the next is at least 6 s away), the entry changes, and within 4 s
    // the helper has written an SVID with the new CN; app_user's login is then refused.
    let rotated_from = serial_decimal(&cert);
    let deadline = Instant::now() + Duration::from_secs(30);
    while serial_decimal(&cert) == rotated_from {
        assert!(Instant::now() < deadline, "no rotation in 30 s: {}", helper_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.ok(&["entry", "update", "db-client", "--x509-common-name", "reporting"]);
    let deadline = Instant::now() + Duration::from_secs(4);
    while openssl_x509(&cert, &["-subject"]).trim() != "subject=O=vouch, CN=reporting" {
        assert!(
            Instant::now() < deadline,
            "the SVID still has the old CN 4 s after the change: {}",
            helper_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = svid_conn("app_user").query("SELECT 1").unwrap_err();
    assert!(err.contains("certificate authentication failed for user \"app_user\""), "{err}");
    // An empty value removes it.
    server.ok(&["entry", "update", "db-client", "--x509-common-name", ""]);
    let cleared = json(&server.ok(&["entry", "show", "db-client", "-o", "json"]));
    assert!(cleared.get("x509_common_name").is_none(), "{cleared}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while openssl_x509(&cert, &["-subject"]).trim() != "subject=O=vouch" {
        assert!(Instant::now() < deadline, "the SVID still has a CN after 15 s: {}", helper_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(cluster);
    server.stop();
}
