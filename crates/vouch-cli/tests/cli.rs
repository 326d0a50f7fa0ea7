//! End-to-end tests of the `vouch` binary: a real server process, driven by the real CLI.

// A test fails by panicking: unwrap and expect are how it says what broke. End-to-end tests run
// real processes on the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// Kept beside, not in tests/ (each file there would be a test binary of its own).
#[path = "cli/audit.rs"]
mod audit;
#[path = "cli/cloud.rs"]
mod cloud;
#[path = "cli/db_creds.rs"]
mod db_creds;
#[path = "cli/helper.rs"]
mod helper;
#[path = "cli/postgres.rs"]
mod postgres;

const VOUCH: &str = env!("CARGO_BIN_EXE_vouch");

struct ServerProcess {
    child: Child,
    dir: PathBuf,
}

impl ServerProcess {
    fn start(dir: &Path) -> Self {
        Self::start_configured(dir, "")
    }

    /// A server with `config` (TOML: `[ca]`, `[oidc]`, ...) in a file beside its data.
    fn start_configured(dir: &Path, config: &str) -> Self {
        let config_file = dir.join("server.toml");
        std::fs::write(&config_file, format!("version = 1\n{config}")).unwrap();
        let log = std::fs::File::create(dir.join("server.log")).unwrap();
        let child = Command::new(VOUCH)
            .args(["server", "run", "--config"])
            .arg(&config_file)
            .env("VOUCH_DATA_DIR", dir.join("data"))
            .env("VOUCH_LISTEN", "127.0.0.1:0")
            .env("VOUCH_TRUST_DOMAIN", "example.org")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let server = Self { child, dir: dir.to_owned() };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if server.vouch(&["healthcheck"]).status.success() {
                return server;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "server did not become ready: {}",
            std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
        );
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("data/admin.sock")
    }

    fn vouch(&self, args: &[&str]) -> Output {
        Command::new(VOUCH)
            .args(args)
            .env("VOUCH_ADMIN_SOCKET", self.socket())
            .env_remove("VOUCH_OUTPUT")
            .output()
            .unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.vouch(args);
        assert!(out.status.success(), "vouch {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit code 1; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.vouch(args);
        assert_eq!(out.status.code(), Some(1), "vouch {args:?}: {}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8(out.stderr).unwrap()
    }

    fn stop(mut self) {
        let st = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "server exit status {status}");
                break;
            }
            assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!self.socket().exists(), "socket removed on shutdown");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn entries_tokens_bundle_and_svids_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());

    let created = json(&server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/payments",
        "--parent-id",
        "spiffe://example.org/agent/n1",
        "-s",
        "docker:label:app:payments",
        "-s",
        "container:image-id:sha256:abc",
        "--x509-ttl",
        "10m",
        "--owner",
        "team-pay",
        "-o",
        "json",
    ]));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["x509_svid_ttl"], 600);
    assert_eq!(created["selectors"].as_array().unwrap().len(), 2);

    let table = server.ok(&["entry", "list"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("spiffe://example.org/payments") && table.contains(&id));
    let filtered =
        json(&server.ok(&["entry", "list", "--selector", "docker:label:app:payments", "-o", "json"]));
    assert_eq!(filtered["entries"].as_array().unwrap().len(), 1);
    let none =
        json(&server.ok(&["entry", "list", "--parent-id", "spiffe://example.org/agent/zz", "-o", "json"]));
    assert!(none["entries"].as_array().unwrap().is_empty());

    let updated = json(&server.ok(&["entry", "update", &id, "--hint", "primary", "-o", "json"]));
    assert_eq!((updated["hint"].as_str(), updated["revision"].as_u64()), (Some("primary"), Some(1)));
    assert_eq!(updated["owner"], "team-pay", "fields not given stay as they were");
    assert!(server.ok(&["entry", "show", &id]).contains("primary"));

    // Namespaces: an entry created in one, listed by it (a column of the table), moved.
    let in_ns = json(&server.ok(&[
        "entry",
        "create",
        "--namespace",
        "team-a",
        "--spiffe-id",
        "spiffe://example.org/team-a/web",
        "--parent-id",
        "spiffe://example.org/agent/n1",
        "-s",
        "unix:uid:77",
        "-o",
        "json",
    ]));
    assert_eq!(in_ns["namespace"], "team-a");
    let ns_id = in_ns["id"].as_str().unwrap().to_owned();
    let listed = json(&server.ok(&["entry", "list", "-n", "team-a", "-o", "json"]));
    assert_eq!(listed["entries"].as_array().unwrap().len(), 1);
    let table = server.ok(&["entry", "list"]);
    assert!(table.contains("NAMESPACE") && table.contains("team-a") && table.contains("default"), "{table}");
    let moved = json(&server.ok(&["entry", "update", &ns_id, "--namespace", "team-b", "-o", "json"]));
    assert_eq!(moved["namespace"], "team-b");
    assert!(server.fails(&["entry", "list", "-n", "Team_B"]).contains("namespace `Team_B` must be"));
    server.ok(&["entry", "delete", &ns_id]);

    // Errors: exit 1 and a message that names the rule.
    let err = server.fails(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/a/",
        "--parent-id",
        "spiffe://example.org/p",
        "-s",
        "unix:uid:1",
    ]);
    assert!(err.contains("path must not end with `/`"), "{err}");
    let err = server.fails(&["entry", "create", "--parent-id", "spiffe://example.org/p", "-s", "unix:uid:1"]);
    assert!(err.contains("--spiffe-id is required"), "{err}");
    let err = server.fails(&["entry", "show", "nope"]);
    assert!(err.contains("no entry with id `nope`"), "{err}");
    // Usage errors exit 2.
    assert_eq!(server.vouch(&["entry", "frobnicate"]).status.code(), Some(2));

    // Batch from a file, all or none.
    let batch = tmp.path().join("batch.json");
    std::fs::write(&batch, r#"{"entries":[{"spiffe_id":"spiffe://example.org/b1","parent_id":"spiffe://example.org/p","selectors":["unix:uid:1"]},{"spiffe_id":"spiffe://example.org/b2","parent_id":"spiffe://example.org/p","selectors":[]}]}"#).unwrap();
    let err = server.fails(&["entry", "create", "--file", batch.to_str().unwrap()]);
    assert!(err.contains("entries[1]: selectors"), "{err}");
    assert_eq!(json(&server.ok(&["entry", "list", "-o", "json"]))["entries"].as_array().unwrap().len(), 1);

    let token = server.ok(&["token", "create", "--ttl", "5m"]);
    assert_eq!(token.trim().len(), 32);

    let pem = server.ok(&["bundle", "show"]);
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let jwks = json(&server.ok(&["bundle", "show", "--format", "jwks"]));
    assert!(jwks["spiffe_sequence"].as_u64().unwrap() >= 1);

    // An X509-SVID written to files verifies with openssl against the written bundle.
    let out = tmp.path().join("svid");
    server.ok(&[
        "svid",
        "mint",
        "x509",
        "--spiffe-id",
        "spiffe://example.org/payments",
        "--dns",
        "pay.internal",
        "--write",
        out.to_str().unwrap(),
    ]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(out.join("svid.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let chain = std::fs::read_to_string(out.join("svid.pem")).unwrap();
    let split = chain.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    std::fs::write(out.join("leaf.pem"), &chain[..split]).unwrap();
    std::fs::write(out.join("intermediate.pem"), &chain[split..]).unwrap();
    let verify = Command::new("openssl")
        .current_dir(&out)
        .args(["verify", "-CAfile", "bundle.pem", "-untrusted", "intermediate.pem", "leaf.pem"])
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let json_out =
        json(&server.ok(&["svid", "mint", "x509", "--spiffe-id", "spiffe://example.org/x", "-o", "json"]));
    assert!(json_out.get("private_key_pem").is_none(), "private keys are never printed");

    let jwt = server.ok(&[
        "svid",
        "mint",
        "jwt",
        "--spiffe-id",
        "spiffe://example.org/payments",
        "-a",
        "db",
        "--ttl",
        "60",
    ]);
    assert_eq!(jwt.trim().split('.').count(), 3);

    // Remote administration over mTLS with an admin SVID.
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/admin/ops",
        "--parent-id",
        "spiffe://example.org/vouch/server",
        "-s",
        "vouch:admin:ops",
        "--admin",
        "true",
    ]);
    let adm = tmp.path().join("admin");
    server.ok(&[
        "svid",
        "mint",
        "x509",
        "--spiffe-id",
        "spiffe://example.org/admin/ops",
        "--write",
        adm.to_str().unwrap(),
    ]);
    let addr = std::fs::read_to_string(tmp.path().join("data/server.addr")).unwrap().trim().to_owned();
    let remote = |cert: &str, key: &str| {
        Command::new(VOUCH)
            .args(["entry", "list", "-o", "json", "--server", &addr])
            .arg("--bundle")
            .arg(adm.join("bundle.pem"))
            .arg("--cert")
            .arg(adm.join(cert))
            .arg("--key")
            .arg(adm.join(key))
            .output()
            .unwrap()
    };
    let out_remote = remote("svid.pem", "svid.key");
    assert!(out_remote.status.success(), "{}", String::from_utf8_lossy(&out_remote.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&out_remote.stdout))["entries"].as_array().unwrap().len(), 2);
    // A non-admin SVID is refused with the reason.
    let user = tmp.path().join("user");
    server.ok(&[
        "svid",
        "mint",
        "x509",
        "--spiffe-id",
        "spiffe://example.org/payments",
        "--write",
        user.to_str().unwrap(),
    ]);
    std::fs::copy(user.join("svid.pem"), adm.join("user.pem")).unwrap();
    std::fs::copy(user.join("svid.key"), adm.join("user.key")).unwrap();
    let refused = remote("user.pem", "user.key");
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is not an admin"));

    let deleted = server.ok(&["entry", "delete", &id]);
    assert!(deleted.contains("deleted entry"));

    // Restart: same bundle.
    let bundle_before = server.ok(&["bundle", "show", "--format", "jwks"]);
    server.stop();
    let unreachable = Command::new(VOUCH)
        .args(["healthcheck", "--socket"])
        .arg(tmp.path().join("data/admin.sock"))
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("is `vouch server run` running"));
    let server = ServerProcess::start(tmp.path());
    assert_eq!(server.ok(&["bundle", "show", "--format", "jwks"]), bundle_before);
    let log = std::fs::read_to_string(tmp.path().join("server.log")).unwrap();
    assert!(!log.contains(token.trim()), "the join token never reaches the log");
    assert!(!log.contains("PRIVATE KEY"));
    server.stop();
}

/// `vouch authority keys` lists the keys; `vouch authority prepare-root` publishes a successor
/// root (it enters the bundle at once) and is refused, saying why, when one is prepared already.
#[test]
fn authority_keys_and_a_root_prepared_ahead_of_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let keys = server.ok(&["authority", "keys"]);
    assert!(keys.contains("trust domain example.org"), "{keys}");
    for kind in ["root", "signing CA", "JWT key"] {
        assert!(keys.lines().any(|l| l.starts_with(kind) && l.contains("active")), "{kind}: {keys}");
    }
    let roots_before = server.ok(&["bundle", "show"]).matches("BEGIN CERTIFICATE").count();
    let after = json(&server.ok(&["authority", "prepare-root", "-o", "json"]));
    let prepared: Vec<_> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "root" && k["state"] == "prepared")
        .collect();
    assert_eq!(prepared.len(), 1, "{after}");
    assert_eq!(server.ok(&["bundle", "show"]).matches("BEGIN CERTIFICATE").count(), roots_before + 1);
    let err = server.fails(&["authority", "prepare-root"]);
    assert!(err.contains("already prepared"), "{err}");
    server.stop();
}

#[test]
fn bad_config_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("vouch.toml");
    std::fs::write(&cfg, "version = 1\ntrust_domian = \"example.org\"\n").unwrap();
    let out = Command::new(VOUCH).args(["server", "run", "--config"]).arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `trust_domian`"), "{err}");
    let out = Command::new(VOUCH)
        .args(["server", "run", "--config"])
        .arg(tmp.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn help_explains_commands() {
    let out = Command::new(VOUCH).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "server",
        "entry",
        "group",
        "federation",
        "authority",
        "token",
        "bundle",
        "svid",
        "healthcheck",
        "scan",
    ] {
        assert!(text.contains(cmd), "{text}");
    }
    let out = Command::new(VOUCH).args(["entry", "create", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("repeat for several, all must match"));
    let out = Command::new(VOUCH).args(["group", "create", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("entry create -node") && text.contains("k8s_psat:cluster:prod"), "{text}");
    let out = Command::new(VOUCH).args(["federation", "create", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--bootstrap-bundle") && text.contains("spiffe://b.org/vouch/server"), "{text}");
    let out = Command::new(VOUCH).args(["scan", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("deleted in a later layer") && text.contains("--baseline"), "{text}");
}

#[test]
fn agent_commands_explain_what_is_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(VOUCH)
        .args(["agent", "api", "fetch", "x509", "--socket"])
        .arg(format!("unix://{}", tmp.path().join("none.sock").display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `vouch agent run` running"));
    let out = Command::new(VOUCH)
        .args(["agent", "run", "--server", "127.0.0.1:1", "--data-dir"])
        .arg(tmp.path().join("agent"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no join token was given") && err.contains("vouch token create"), "{err}");
    let out = Command::new(VOUCH).args(["agent", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "api", "list", "evict", "ban"] {
        assert!(text.contains(cmd), "{text}");
    }
}

/// A reused join token and a banned agent are refused with the reason, and both refusals are in the
/// server's audit log.
#[test]
fn refused_attestations_are_explained_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let token =
        server.ok(&["token", "create", "--agent-id", "spiffe://example.org/agent/n1"]).trim().to_owned();
    std::fs::write(tmp.path().join("bundle.pem"), server.ok(&["bundle", "show"])).unwrap();
    let addr = std::fs::read_to_string(tmp.path().join("data/server.addr")).unwrap().trim().to_owned();
    let run_agent = |dir: &str, token: &str| {
        let mut child = Command::new(VOUCH)
            .args(["agent", "run", "--server", &addr, "--join-token", token])
            .arg("--bundle")
            .arg(tmp.path().join("bundle.pem"))
            .arg("--data-dir")
            .arg(tmp.path().join(dir))
            .env("VOUCH_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let socket = tmp.path().join(dir).join("api.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                return (Some(status), err);
            }
            if socket.exists() || Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return (None, String::new());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (status, _) = run_agent("a1", &token);
    assert!(status.is_none(), "the first use attests and the agent runs");
    let (status, err) = run_agent("a2", &token);
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert!(err.contains("already used"), "{err}");
    server.ok(&["agent", "ban", "spiffe://example.org/agent/n1"]);
    let fresh =
        server.ok(&["token", "create", "--agent-id", "spiffe://example.org/agent/n1"]).trim().to_owned();
    let (status, err) = run_agent("a3", &fresh);
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert!(err.contains("banned"), "{err}");
    let listing = server.ok(&["agent", "list"]);
    assert!(listing.contains("spiffe://example.org/agent/n1") && listing.contains("true"), "{listing}");
    let log = std::fs::read_to_string(tmp.path().join("server.log")).unwrap();
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("agent.attest.refused")).collect();
    assert!(refusals.iter().any(|l| l.contains("already used")), "{log}");
    assert!(refusals.iter().any(|l| l.contains("banned")), "{log}");
    assert!(log.contains("agent.ban"), "the ban itself is audited");
    assert!(!log.contains(&token) && !log.contains(&fresh), "tokens never reach the log");
    server.stop();
}

/// Starts `vouch agent run` for `agent_id`, attested with a fresh join token, with `extra` flags;
/// returns the process and its data directory once the Workload API socket is up. Its log goes to
/// `agent.log` in `tmp`.
fn start_agent(tmp: &Path, server: &ServerProcess, agent_id: &str, extra: &[&str]) -> (Child, PathBuf) {
    let token = server.ok(&["token", "create", "--agent-id", agent_id]).trim().to_owned();
    std::fs::write(tmp.join("bundle.pem"), server.ok(&["bundle", "show"])).unwrap();
    let addr = std::fs::read_to_string(tmp.join("data/server.addr")).unwrap().trim().to_owned();
    let agent_dir = tmp.join("agent");
    let agent = Command::new(VOUCH)
        .args(["agent", "run", "--server", &addr, "--join-token", &token])
        .arg("--bundle")
        .arg(tmp.join("bundle.pem"))
        .arg("--data-dir")
        .arg(&agent_dir)
        .args(extra)
        .env("VOUCH_LOG", "info")
        .stderr(std::fs::File::create(tmp.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent_dir.join("api.sock").exists() {
        assert!(
            Instant::now() < deadline,
            "agent did not start: {}",
            std::fs::read_to_string(tmp.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (agent, agent_dir)
}

/// Runs `cmd` with `stdin` fed to it and its stdout and stderr piped: its output once it exits, or
/// `None` if it has not exited within `limit` (it is killed then). The pipes are read meanwhile,
/// so a chatty child cannot block on a full pipe.
fn output_within(cmd: &mut Command, stdin: &[u8], limit: Duration) -> Option<Output> {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    if let Some(mut pipe) = child.stdin.take() {
        let _ = std::io::Write::write_all(&mut pipe, stdin);
    }
    fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    }
    let (out, err) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Some(Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() })
}

/// Creates an entry `spiffe_id` under `parent` for the `vouch` commands this test runs (their
/// user and binary, as a real agent attests them), with `extra` flags.
fn entry_for_vouch(server: &ServerProcess, spiffe_id: &str, parent: &str, extra: &[&str]) {
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let exe = std::fs::canonicalize(VOUCH).unwrap();
    let (by_uid, by_path) = (format!("unix:uid:{uid}"), format!("unix:path:{}", exe.display()));
    let args =
        ["entry", "create", "--spiffe-id", spiffe_id, "--parent-id", parent, "-s", &by_uid, "-s", &by_path];
    server.ok(&[&args[..], extra].concat());
}

/// A throwaway Docker daemon in a temp dir (no bridge, no iptables), stopped on drop.
struct Dockerd {
    dir: PathBuf,
    child: Child,
}

impl Dockerd {
    fn start(dir: &Path) -> Self {
        let dir = dir.to_owned();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none", "--ip-forward=false"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd is installed (Debian docker.io; .ci/run installs it)");
        let d = Self { dir, child };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not start: {}",
                std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("docker.sock")
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_BUILDKIT", "0") // the classic builder: no BuildKit daemon state to clean up
            .arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Cgroups docker made for its containers (rmdir only removes empty ones).
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join("docker"));
            }
        }
    }
}

fn build_image(dir: &Path, name: &str, marker: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build_image.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.join(format!("{marker}.tar")))
        .args([name, marker])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// What differs between runtimes in the label-and-image scenario.
struct Scenario<'a> {
    /// Selector prefix of the runtime: `docker`, `containerd`, `podman`.
    kind: &'a str,
    /// Agent flags that point it at this runtime (and only this one).
    agent_flags: Vec<String>,
    /// Loads an image archive.
    load: &'a dyn Fn(&str) -> Output,
    /// Runs `/vouch agent api fetch x509 -o json` in a container of `image` (tag) with `label`, the
    /// host's libraries and the vouch binary mounted read-only and the agent directory at /run/vouch.
    run: &'a dyn Fn(&str, Option<&str>, &Path) -> Output,
}

/// The mounts every scenario container gets: (host path, path inside, read-only).
fn scenario_mounts(agent_dir: &Path) -> Vec<(String, String, bool)> {
    let mut m: Vec<(String, String, bool)> =
        [("/usr/lib", "/usr/lib"), ("/usr/lib", "/lib"), ("/usr/lib64", "/lib64")]
            .iter()
            .map(|(h, i)| (h.to_string(), i.to_string(), true))
            .collect();
    m.push((VOUCH.to_owned(), "/vouch".to_owned(), true));
    m.push((agent_dir.display().to_string(), "/run/vouch".to_owned(), false));
    m
}

/// The container command and its environment.
const SCENARIO_ENV: &str = "SPIFFE_ENDPOINT_SOCKET=unix:///run/vouch/api.sock";
const SCENARIO_CMD: [&str; 7] = ["/vouch", "agent", "api", "fetch", "x509", "-o", "json"];

/// Real containers under a real runtime: a container with the registered label and image gets its
/// SVID through the agent socket mounted into it; the same label on another image, or the right image
/// without the label, get nothing. The workload is the `vouch` binary itself. Returns the good image's
/// ID (its config digest).
fn label_and_image_scenario(tmp: &Path, s: Scenario<'_>) -> String {
    let good_image = build_image(tmp, "vouch-test:payments", "payments");
    let rogue_image = build_image(tmp, "vouch-test:rogue", "rogue");
    assert_ne!(good_image, rogue_image);
    for t in ["payments", "rogue"] {
        let out = (s.load)(&tmp.join(format!("{t}.tar")).display().to_string());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let server = ServerProcess::start(tmp);
    let parent = format!("spiffe://example.org/agent/{}-node", s.kind);
    let flags: Vec<&str> = s.agent_flags.iter().map(String::as_str).collect();
    let (mut agent, agent_dir) = start_agent(tmp, &server, &parent, &flags);
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/payments",
        "--parent-id",
        &parent,
        "-s",
        &format!("{}:label:app:payments", s.kind),
        "-s",
        &format!("container:image-id:{good_image}"),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let agent_log = || std::fs::read_to_string(tmp.join("agent.log")).unwrap_or_default();
    let good = (s.run)("vouch-test:payments", Some("app=payments"), &agent_dir);
    assert!(
        good.status.success(),
        "{}: stdout {} stderr {} agent {}",
        s.kind,
        String::from_utf8_lossy(&good.stdout),
        String::from_utf8_lossy(&good.stderr),
        agent_log()
    );
    let v = json(&String::from_utf8_lossy(&good.stdout));
    assert_eq!(v["svids"][0]["spiffe_id"], "spiffe://example.org/payments");
    // The same label on another image: a rogue container copying labels gets nothing.
    let rogue = (s.run)("vouch-test:rogue", Some("app=payments"), &agent_dir);
    assert!(!rogue.status.success(), "{}: a copied label on another image gets nothing", s.kind);
    assert!(
        String::from_utf8_lossy(&rogue.stderr).contains("no identity issued"),
        "{}",
        String::from_utf8_lossy(&rogue.stderr)
    );
    // The right image without the label: nothing either.
    let unlabelled = (s.run)("vouch-test:payments", None, &agent_dir);
    assert!(!unlabelled.status.success());
    assert!(String::from_utf8_lossy(&unlabelled.stderr).contains("no identity issued"));
    // Forensics: the agent reported the delivery, and `vouch audit who` names the container, its
    // image and the node; the rogue containers, refused, are not among the holders.
    let deadline = Instant::now() + Duration::from_secs(20);
    let holders = loop {
        // Asked anew each time: "now" is whole seconds, and a delivery later in the same second
        // as an earlier "now" was not held yet at that time.
        let now = vouch_core::ttl::rfc3339(vouch_core::ttl::unix_seconds(std::time::SystemTime::now()));
        let answer = json(&server.ok(&[
            "audit",
            "who",
            "--spiffe-id",
            "spiffe://example.org/payments",
            "--at",
            &now,
            "-o",
            "json",
        ]));
        let holders = answer["holders"].as_array().unwrap().clone();
        if !holders.is_empty() {
            break holders;
        }
        assert!(Instant::now() < deadline, "{}: no holder reported: {}", s.kind, agent_log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(holders.len(), 1, "{}: {holders:?}", s.kind);
    assert_eq!(holders[0]["image_id"], good_image.as_str(), "{}", s.kind);
    assert_eq!(holders[0]["node"], parent.as_str(), "{}", s.kind);
    let container = holders[0]["container_id"].as_str().unwrap_or_default();
    // Docker and podman name containers by 64 hex digits; `ctr run` by the id the test gives it.
    assert!(
        !container.is_empty() && container.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        "{}: {container:?}",
        s.kind
    );
    let _ = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status();
    let _ = agent.wait();
    server.stop();
    good_image
}

/// Argument list of `docker run` / `podman run` (both take `-v host:inside[:ro]` and `-e`).
fn docker_like_run_args(image: &str, label: Option<&str>, agent_dir: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec!["run".into(), "--rm".into(), "--network".into(), "none".into()];
    if let Some(l) = label {
        args.extend(["--label".into(), l.into()]);
    }
    for (host, inside, ro) in scenario_mounts(agent_dir) {
        args.extend(["-v".into(), format!("{host}:{inside}{}", if ro { ":ro" } else { "" })]);
    }
    args.extend(["-e".into(), SCENARIO_ENV.into(), image.into()]);
    args.extend(SCENARIO_CMD.map(String::from));
    args
}

/// Real containers under a real Docker daemon; the image ID the agent matches is the one Docker
/// reports.
#[test]
fn docker_containers_get_identities_by_label_and_image_only() {
    if !std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
    {
        panic!("this test runs real containers and needs root");
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("docker")).unwrap();
    let docker = Dockerd::start(&tmp.path().join("docker"));
    let socket = docker.socket().display().to_string();
    let good_image = label_and_image_scenario(
        tmp.path(),
        Scenario {
            kind: "docker",
            agent_flags: vec!["--docker-socket".into(), socket],
            load: &|tar| docker.docker(&["load", "-i", tar]),
            run: &|image, label, agent_dir| {
                let args = docker_like_run_args(image, label, agent_dir);
                docker.docker(&args.iter().map(String::as_str).collect::<Vec<_>>())
            },
        },
    );
    let inspected = docker.docker(&["image", "inspect", "-f", "{{.Id}}", "vouch-test:payments"]);
    assert_eq!(
        String::from_utf8_lossy(&inspected.stdout).trim(),
        good_image,
        "the image ID is the config digest"
    );
}

/// A throwaway containerd (CRI disabled) in a temp dir, stopped on drop.
struct Containerd {
    dir: PathBuf,
    child: Child,
}

impl Containerd {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"{d}/debug.sock\"\n[metrics]\n  address = \"\"\n",
            d = dir.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd is installed (a dependency of Debian's docker.io)");
        let c = Self { dir: dir.to_owned(), child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !c.ctr(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr").arg("-a").arg(self.socket()).args(["-n", "vouch"]).args(args).output().unwrap()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let listed = self.ctr(&["containers", "ls", "-q"]);
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = self.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "rm", "-f", id]);
            let _ = self.ctr(&["containers", "rm", id]);
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join("vouch"));
            }
        }
    }
}

/// The same rules under containerd (through its API, namespace `vouch`): the runtime-neutral
/// `container:image-id` selector is the same image ID Docker reports.
#[test]
fn containerd_containers_get_identities_by_label_and_image_only() {
    let tmp = tempfile::tempdir().unwrap();
    let ctrd = Containerd::start(&tmp.path().join("containerd"));
    let socket = ctrd.socket().display().to_string();
    let names = std::sync::atomic::AtomicUsize::new(0);
    label_and_image_scenario(
        tmp.path(),
        Scenario {
            kind: "containerd",
            agent_flags: vec!["--docker-socket".into(), "off".into(), "--containerd-socket".into(), socket],
            load: &|tar| ctrd.ctr(&["images", "import", tar]),
            run: &|image, label, agent_dir| {
                let mut args: Vec<String> = vec!["run".into(), "--rm".into()];
                if let Some(l) = label {
                    args.extend(["--label".into(), l.into()]);
                }
                for (host, inside, ro) in scenario_mounts(agent_dir) {
                    let opts = if ro { "rbind:ro" } else { "rbind:rw" };
                    args.extend([
                        "--mount".into(),
                        format!("type=bind,src={host},dst={inside},options={opts}"),
                    ]);
                }
                let name = format!("c{}", names.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                args.extend([
                    "--env".into(),
                    SCENARIO_ENV.into(),
                    format!("docker.io/library/{image}"),
                    name,
                ]);
                args.extend(SCENARIO_CMD.map(String::from));
                ctrd.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>())
            },
        },
    );
}

/// `vouch scan` reads what real runtimes write: an image built by dockerd (a secret copied in and
/// deleted by a later RUN, a token that stays, a key in ENV), saved with `docker save`, then imported
/// into containerd and exported again with `ctr images export` (an OCI archive). Both give the same
/// findings, with the deleted key reported as deleted.
#[test]
fn images_saved_by_docker_and_exported_by_containerd_are_scanned() {
    const TOKEN: &str = "ghp_R8fK2mQ9xL4vN7pT1sW6yB3cD5hJ0gA2eZ8u";
    const STRIPE: &str = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("docker")).unwrap();
    let docker = Dockerd::start(&tmp.path().join("docker"));
    build_image(tmp.path(), "vouch-test:base", "base");
    let out = docker.docker(&["load", "-i", &tmp.path().join("base.tar").display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ctx = tmp.path().join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("app.env"), format!("APP=1\nGITHUB_TOKEN={TOKEN}\n")).unwrap();
    std::fs::write(
        ctx.join("deploy_key"),
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM vouch-test:base\nCOPY app.env /app/.env\nCOPY deploy_key /tmp/build/deploy_key\nRUN rm /tmp/build/deploy_key\nENV STRIPE_API_KEY={STRIPE}\n"
        ),
    )
    .unwrap();
    let out = docker.docker(&[
        "build",
        "--network",
        "none",
        "-t",
        "vouch-test:secrets",
        &ctx.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = tmp.path().join("saved.tar");
    let out = docker.docker(&["save", "-o", &saved.display().to_string(), "vouch-test:secrets"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(docker);

    let ctrd = Containerd::start(&tmp.path().join("containerd"));
    let out = ctrd.ctr(&["images", "import", &saved.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let exported = tmp.path().join("exported.tar");
    let out = ctrd.ctr(&[
        "images",
        "export",
        &exported.display().to_string(),
        "docker.io/library/vouch-test:secrets",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for archive in [&saved, &exported] {
        let out = Command::new(VOUCH).args(["scan", "-o", "json"]).arg(archive).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{text} {}", String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains(TOKEN) && !text.contains(STRIPE), "secrets are never printed whole");
        let r = json(&text);
        let mut seen: Vec<(String, String, String)> = r["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let loc = &f["location"];
                let place = loc["path"].as_str().or(loc["field"].as_str()).unwrap_or_default().to_owned();
                let status = loc["presence"]["status"].as_str().unwrap_or("config").to_owned();
                (f["rule_id"].as_str().unwrap().to_owned(), place, status)
            })
            .collect();
        seen.sort();
        let history = seen.iter().find(|(_, p, _)| p.starts_with("history[")).map(|(_, p, _)| p.clone());
        let mut want = vec![
            ("github-token".to_owned(), "app/.env".to_owned(), "present".to_owned()),
            ("private-key".to_owned(), "tmp/build/deploy_key".to_owned(), "deleted".to_owned()),
            ("stripe-key".to_owned(), "Env[1]".to_owned(), "config".to_owned()),
        ];
        if let Some(h) = history {
            // Docker records `ENV` in the history too; the key is in the image twice.
            want.push(("stripe-key".to_owned(), h, "config".to_owned()));
        }
        want.sort();
        assert_eq!(seen, want, "{}", archive.display());
    }
}

/// A podman API service (`podman system service`) with its own storage under a temp dir: runc,
/// cgroupfs, the vfs storage driver (no mounts to clean up) and lowered ulimits (no CAP_SYS_RESOURCE
/// in this environment).
struct Podman {
    dir: PathBuf,
    service: Child,
}

impl Podman {
    fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(
            dir.join("containers.conf"),
            "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\nnetns = \"none\"\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n",
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("podman.log")).unwrap();
        let service = Self::command(dir)
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", dir.join("podman.sock").display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("podman is installed (scripts/test installs it)");
        let p = Self { dir: dir.to_owned(), service };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !p.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "podman service did not start: {}",
                std::fs::read_to_string(dir.join("podman.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    fn command(dir: &Path) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", dir.join("containers.conf"))
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--runroot")
            .arg(dir.join("runroot"))
            .arg("--tmpdir")
            .arg(dir.join("tmp"))
            .args(["--storage-driver", "vfs"]);
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("podman.sock")
    }

    fn podman(&self, args: &[&str]) -> Output {
        Self::command(&self.dir).args(args).output().unwrap()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.podman(&["rm", "-af", "-t", "0"]);
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// Real containers under podman, attested through podman's Docker-compatible API.
#[test]
fn podman_containers_get_identities_by_label_and_image_only() {
    let tmp = tempfile::tempdir().unwrap();
    let podman = Podman::start(&tmp.path().join("podman"));
    let socket = podman.socket().display().to_string();
    label_and_image_scenario(
        tmp.path(),
        Scenario {
            kind: "podman",
            agent_flags: ["--docker-socket", "off", "--containerd-socket", "off", "--podman-socket", &socket]
                .map(String::from)
                .to_vec(),
            load: &|tar| podman.podman(&["load", "-i", tar]),
            run: &|image, label, agent_dir| {
                let args = docker_like_run_args(&format!("localhost/{image}"), label, agent_dir);
                podman.podman(&args.iter().map(String::as_str).collect::<Vec<_>>())
            },
        },
    );
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vouch agent healthcheck` and `vouch agent metrics` against a real agent process with JSON logs
/// and a metrics listener: ready and connected; metrics that move with a refused and a served
/// fetch; still ready, serving cached SVIDs, when the server stops; exit 1 once the agent stops.
/// Also `-o json` of the commands that gained it (server healthcheck, bundle show --format pem).
#[test]
fn agent_healthcheck_metrics_and_json_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let health = json(&server.ok(&["healthcheck", "-o", "json"]));
    assert_eq!(health["ready"], true, "{health}");
    let pem = json(&server.ok(&["bundle", "show", "-o", "json"]));
    assert!(pem["pem"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let agent_id = "spiffe://example.org/agent/ops";
    let (agent, agent_dir) =
        start_agent(tmp.path(), &server, agent_id, &["--log-format", "json", "--metrics-listen", &listen]);
    let mut agent = KillOnDrop(agent);
    let agent_cmd = |args: &[&str]| {
        Command::new(VOUCH)
            .args(["agent"])
            .args(args)
            .env("VOUCH_AGENT_ADMIN_SOCKET", agent_dir.join("admin.sock"))
            .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", agent_dir.join("api.sock").display()))
            .env_remove("VOUCH_OUTPUT")
            .output()
            .unwrap()
    };
    let stdout = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let stderr = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    // Ready once the first sync is through.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = agent_cmd(&["healthcheck"]);
        if out.status.success() && stdout(&out).contains("ready: connected to the server") {
            assert!(stdout(&out).contains(agent_id), "{}", stdout(&out));
            break;
        }
        assert!(Instant::now() < deadline, "agent not ready and connected: {}{}", stdout(&out), stderr(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = json(&stdout(&agent_cmd(&["healthcheck", "-o", "json"])));
    assert_eq!((h["ready"].as_bool(), h["sync"].as_str()), (Some(true), Some("connected")), "{h}");
    assert!(h["last_sync_at"].as_i64().is_some(), "{h}");

    let metric = |series: &str| -> f64 {
        let out = agent_cmd(&["metrics"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in {text}"))
            .parse()
            .unwrap()
    };
    let no_match = "vouch_agent_workload_refusals_total{reason=\"no_match\"}";
    let fetches = "vouch_agent_workload_api_request_seconds_count{rpc=\"FetchX509SVID\"}";
    assert_eq!(metric(no_match), 0.0);
    // `vouch` itself, as a workload with no entry: refused.
    let refused = agent_cmd(&["api", "fetch", "x509"]);
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
    assert!(stderr(&refused).contains("no identity issued"), "{}", stderr(&refused));
    assert_eq!(metric(no_match), 1.0);
    assert_eq!(metric(fetches), 1.0);
    // An entry for `vouch` run by this user: served.
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let exe = std::fs::canonicalize(VOUCH).unwrap();
    server.ok(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/cli",
        "--parent-id",
        agent_id,
        "-s",
        &format!("unix:uid:{uid}"),
        "-s",
        &format!("unix:path:{}", exe.display()),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = agent_cmd(&["api", "fetch", "x509", "-o", "json"]);
        if out.status.success() {
            assert_eq!(json(&stdout(&out))["svids"][0]["spiffe_id"], "spiffe://example.org/cli");
            break;
        }
        assert!(Instant::now() < deadline, "no SVID for vouch: {}", stderr(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric("vouch_agent_svids_held"), 1.0);
    assert!(metric(fetches) >= 2.0);
    let m = json(&stdout(&agent_cmd(&["metrics", "-o", "json"])));
    assert!(m["metrics"].as_str().unwrap().contains("\nvouch_agent_svids_held 1\n"), "{m}");

    // The HTTP listener: GET /metrics only.
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&listen).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    let answer = get("/metrics");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\nvouch_agent_svids_held 1\n"),
        "{answer}"
    );
    assert!(get("/healthz").starts_with("HTTP/1.1 404"));

    // Any local user may connect to the Workload API socket: clients that leave before the HTTP/2
    // preface, mid-preface, or after garbage must not leave the agent holding their connections
    // (socket, pidfd) open. Before the fix, each one leaked for good.
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", agent.0.id())).unwrap().count();
    let before = fds();
    let mut clients = Vec::new();
    for i in 0..90 {
        use std::io::Write;
        let mut c = std::os::unix::net::UnixStream::connect(agent_dir.join("api.sock")).unwrap();
        match i % 3 {
            0 => {}
            1 => c.write_all(b"PRI * HTTP/2.0\r\n").unwrap(),
            _ => c.write_all(&[0x42; 64]).unwrap(),
        }
        clients.push(c);
    }
    // Held long enough for the agent to accept and pin each caller, then all leave at once.
    std::thread::sleep(Duration::from_millis(700));
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(20);
    while fds() > before + 10 {
        assert!(
            Instant::now() < deadline,
            "the agent kept {} descriptors of 90 closed clients",
            fds() - before
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent_cmd(&["healthcheck"]).status.success(), "the agent still serves");

    // The server stops: still ready, serving cached SVIDs.
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = agent_cmd(&["healthcheck"]);
        assert!(out.status.success(), "still ready without the server: {}", stderr(&out));
        if stdout(&out).contains("serving cached SVIDs") {
            break;
        }
        assert!(Instant::now() < deadline, "agent did not notice the server stopped: {}", stdout(&out));
        std::thread::sleep(Duration::from_millis(100));
    }
    let h = json(&stdout(&agent_cmd(&["healthcheck", "-o", "json"])));
    assert_eq!((h["ready"].as_bool(), h["sync"].as_str()), (Some(true), Some("serving_cached")), "{h}");

    // The agent stops: not ready, exit 1, one line saying why.
    let st = Command::new("kill").args(["-TERM", &agent.0.id().to_string()]).status().unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = agent_cmd(&["healthcheck"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("not ready: cannot reach the agent admin socket") && err.lines().count() == 1,
        "{err}"
    );
    let out = agent_cmd(&["healthcheck", "-o", "json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&stdout(&out))["ready"], false);

    // Every log line of the agent is a JSON object.
    let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap();
    let lines: Vec<serde_json::Value> = log.lines().filter(|l| !l.trim().is_empty()).map(json).collect();
    assert!(lines.iter().all(serde_json::Value::is_object), "{log}");
    assert!(lines.iter().any(|l| l["fields"]["message"] == "vouch agent ready"), "{log}");
    assert!(lines.iter().any(|l| l["fields"]["message"] == "serving GET /metrics"), "{log}");
}

/// Node groups through the CLI, end to end: a real agent process serves a workload an SVID through an
/// entry parented to a group its node selectors match (shown by `vouch agent show`); bad groups are
/// refused with the rule, and a group with entries under it is not deleted.
#[test]
fn a_real_agent_serves_a_workload_through_a_node_group_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let agent_id = "spiffe://example.org/agent/grouped";
    let (agent, agent_dir) = start_agent(tmp.path(), &server, agent_id, &[]);
    let _agent = KillOnDrop(agent);

    // The agent's node selectors, as its attestation recorded them.
    let shown = json(&server.ok(&["agent", "show", agent_id, "-o", "json"]));
    let node_selector = shown["selectors"][0].as_str().unwrap().to_owned();
    assert!(node_selector.starts_with("join_token:"), "{shown}");
    assert_eq!(shown["groups"].as_array().unwrap().len(), 0);
    let err = server.fails(&["agent", "show", "spiffe://example.org/agent/nobody"]);
    assert!(err.contains("no agent `spiffe://example.org/agent/nobody`"), "{err}");

    // Bad groups: exit 1, the rule named, nothing created.
    for (args, want) in [
        (
            vec!["--spiffe-id", "spiffe://example.org/groups/edge", "-s", &node_selector],
            "is not a node group ID",
        ),
        (
            vec!["--spiffe-id", "spiffe://example.org/vouch/group/edge", "-s", "unix:uid:0"],
            "is not a node selector",
        ),
        (vec!["--spiffe-id", "spiffe://example.org/vouch/group/edge", "-s", "nocolon"], "type:value"),
    ] {
        let err = server.fails(&[&["group", "create"][..], &args].concat());
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(
        server
            .vouch(&["group", "create", "--spiffe-id", "spiffe://example.org/vouch/group/edge"])
            .status
            .code()
            == Some(2),
        "--selector is required"
    );
    assert!(json(&server.ok(&["group", "list", "-o", "json"]))["groups"].as_array().unwrap().is_empty());

    let created = json(&server.ok(&[
        "group",
        "create",
        "--spiffe-id",
        "spiffe://example.org/vouch/group/edge",
        "-s",
        &node_selector,
        "--owner",
        "ops",
        "-o",
        "json",
    ]));
    assert_eq!(created["members"], serde_json::json!([agent_id]), "{created}");
    entry_for_vouch(
        &server,
        "spiffe://example.org/edge-cli",
        "spiffe://example.org/vouch/group/edge",
        &["--id", "edge-cli"],
    );
    let table = server.ok(&["group", "list"]);
    assert!(
        table.starts_with("SPIFFE ID") && table.contains("spiffe://example.org/vouch/group/edge"),
        "{table}"
    );
    let show = server.ok(&["group", "show", "edge"]);
    assert!(show.contains(agent_id) && show.contains("entries     1"), "{show}");
    assert!(server.ok(&["agent", "list"]).contains("spiffe://example.org/vouch/group/edge"));

    // The workload (this `vouch` as this user) gets the group entry's SVID from the real agent.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(VOUCH)
            .args(["agent", "api", "fetch", "x509", "-o", "json"])
            .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", agent_dir.join("api.sock").display()))
            .env_remove("VOUCH_OUTPUT")
            .output()
            .unwrap();
        if out.status.success() {
            let answer = json(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(answer["svids"][0]["spiffe_id"], "spiffe://example.org/edge-cli");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no SVID through the group: {}; agent log: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Join tokens carry labels for groups; a label that is not key=value is refused.
    let err = server.fails(&["token", "create", "--label", "prod"]);
    assert!(err.contains("--label `prod`: write it as key=value"), "{err}");
    let err = server.fails(&["token", "create", "--label", "a:b=x"]);
    assert!(err.contains("key `a:b`"), "{err}");
    server.ok(&["token", "create", "--label", "env=prod", "--label", "rack=r1"]);

    // Not deleted while the entry is under it; deleted by name or ID once it is not.
    let err = server.fails(&["group", "delete", "edge"]);
    assert!(err.contains("has 1 entry parented to it"), "{err}");
    server.ok(&["entry", "delete", "edge-cli"]);
    let out = server.ok(&["group", "delete", "spiffe://example.org/vouch/group/edge"]);
    assert!(out.contains("deleted node group spiffe://example.org/vouch/group/edge"), "{out}");
    let err = server.fails(&["group", "show", "edge"]);
    assert!(err.contains("no node group"), "{err}");
    server.stop();
}

/// `vouch federation create|list|show|update|delete` against a real server: bad input exits 1 with
/// the reason and creates nothing; the refresh state (here: an unreachable endpoint's error, the
/// bootstrap bundle served) is shown.
#[test]
fn federation_relationships_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let pem = tmp.path().join("b.pem");
    let bundle = server.ok(&["bundle", "show"]);
    std::fs::write(&pem, &bundle).unwrap();
    let pem_arg = pem.display().to_string();
    let base =
        ["federation", "create", "--trust-domain", "b.org", "--bundle-endpoint-url", "https://127.0.0.1:1/"];
    for (extra, want) in [
        (vec!["--profile", "https"], "--profile `https`: profile `https`: use `https_web` or `https_spiffe`"),
        (vec!["--profile", "https_spiffe", "--bootstrap-bundle", &pem_arg], "needs endpoint_spiffe_id"),
        (
            vec!["--profile", "https_spiffe", "--endpoint-spiffe-id", "spiffe://b.org/vouch/server"],
            "needs bootstrap_bundle",
        ),
        (
            vec!["--profile", "https_web", "--bootstrap-bundle", "/nonexistent"],
            "--bootstrap-bundle /nonexistent",
        ),
    ] {
        let err = server.fails(&[&base[..], &extra].concat());
        assert!(err.contains(want), "{want}: {err}");
    }
    assert!(json(&server.ok(&["federation", "list", "-o", "json"]))["relationships"]
        .as_array()
        .unwrap()
        .is_empty());

    let created = json(
        &server.ok(&[
            &base[..],
            &[
                "--profile",
                "https_spiffe",
                "--endpoint-spiffe-id",
                "spiffe://b.org/vouch/server",
                "--bootstrap-bundle",
                &pem_arg,
                "-o",
                "json",
            ],
        ]
        .concat()),
    );
    assert_eq!(created["state"]["x509_authorities"], 1, "{created}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let shown = loop {
        let shown = server.ok(&["federation", "show", "b.org"]);
        if shown.contains("cannot reach") {
            break shown;
        }
        assert!(std::time::Instant::now() < deadline, "no refresh error shown: {shown}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        shown.contains("https_spiffe") && shown.contains("x509_roots    1") && shown.contains("next_refresh"),
        "{shown}"
    );
    let table = server.ok(&["federation", "list"]);
    assert!(table.contains("TRUST DOMAIN") && table.contains("b.org"), "{table}");
    let updated = json(&server.ok(&[
        "federation",
        "update",
        "b.org",
        "--bundle-endpoint-url",
        "https://127.0.0.1:2/",
        "-o",
        "json",
    ]));
    assert_eq!(updated["bundle_endpoint_url"], "https://127.0.0.1:2/");
    let err = server.fails(&["federation", "update", "b.org", "--bundle-endpoint-url", "http://x/"]);
    assert!(err.contains("must be https"), "{err}");
    let out = server.ok(&["federation", "delete", "b.org"]);
    assert!(out.contains("deleted the federation relationship with b.org"), "{out}");
    let err = server.fails(&["federation", "show", "b.org"]);
    assert!(err.contains("no federation relationship with `b.org`"), "{err}");
    server.stop();
}

/// `vouch secret ...` end to end: the value from standard input or a file (never argv), read back
/// byte for byte, versions, soft delete, destroy, and bad input with clear errors and exit code 1.
#[test]
fn secrets_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let put = |args: &[&str], stdin: &[u8]| {
        use std::io::Write as _;
        let mut child = Command::new(VOUCH)
            .args(["secret", "put"])
            .args(args)
            .env("VOUCH_ADMIN_SOCKET", server.socket())
            .env_remove("VOUCH_OUTPUT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = put(&["app/db", "--owner", "team-a", "--rotation-due", "90d"], b"s3cret\x00bytes\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "wrote app/db version 1");
    let file = tmp.path().join("value");
    std::fs::write(&file, b"second").unwrap();
    assert!(put(&["app/db", "--file", file.to_str().unwrap()], b"").status.success());

    let out = server.vouch(&["secret", "get", "app/db", "--version", "1"]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"s3cret\x00bytes\n", "stored and printed byte for byte");
    assert_eq!(server.vouch(&["secret", "get", "app/db"]).stdout, b"second");
    let written = tmp.path().join("out");
    server.ok(&["secret", "get", "app/db", "--write", written.to_str().unwrap()]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&written).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read(&written).unwrap(), b"second");

    let list = server.ok(&["secret", "list"]);
    assert!(list.contains("app/db") && list.contains("team-a") && !list.contains("second"), "{list}");
    let v = json(&server.ok(&["secret", "versions", "app/db", "-o", "json"]));
    assert_eq!(v["versions"].as_array().unwrap().len(), 2);
    assert!(v["secret"]["rotation_due"].as_i64().unwrap() > 0);
    assert!(server.ok(&["secret", "delete", "app/db"]).contains("deleted version(s) 2"));
    assert_eq!(server.vouch(&["secret", "get", "app/db"]).stdout, b"s3cret\x00bytes\n");
    assert!(server
        .ok(&["secret", "undelete", "app/db", "--version", "2"])
        .contains("undeleted version(s) 2"));
    assert!(server.ok(&["secret", "destroy", "app/db", "--version", "1"]).contains("destroyed version(s) 1"));
    assert!(server.fails(&["secret", "get", "app/db", "--version", "1"]).contains("version 1 was destroyed"));

    // Bad input: the path rule, the size limit, no value at all; argv never takes a value.
    assert!(server.fails(&["secret", "get", "a/../b"]).contains("`..` segment"));
    let err = put(&["app/big"], &vec![b'x'; 64 * 1024 + 1]);
    assert_eq!(err.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&err.stderr).contains("64 KiB"));
    let err = put(&["app/empty"], b"");
    assert!(String::from_utf8_lossy(&err.stderr).contains("the value is empty"));
    let err = server.vouch(&["secret", "put", "app/argv", "hunter2"]);
    assert_eq!(err.status.code(), Some(2), "no positional value");
    assert!(server.fails(&["secret", "get", "app/big"]).contains("no secret `app/big`"));
    let help = String::from_utf8_lossy(&server.vouch(&["secret", "put", "--help"]).stdout).into_owned();
    assert!(help.contains("/proc/<pid>/cmdline") && help.contains("printf %s"), "{help}");
    server.stop();
}

/// `vouch policy ...` end to end: a policy written from a file, listed and shown with its
/// versions; `validate` and `test` answer with exit codes (0 valid / allowed, 3 invalid /
/// denied); a what-if with `--with`/`--without` changes nothing stored; deny wins; a deletion
/// keeps the history; bad input is a clear error with exit code 1.
#[test]
fn grants_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let file = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let own = file(
        "own.cedar",
        "permit(principal, action == Action::\"read\", resource is Secret)\n  when { resource.dirs.contains(principal.path) };\n",
    );
    let forbid = file("forbid.cedar", "forbid(principal, action, resource == Secret::\"web/db\");\n");
    let typo =
        file("typo.cedar", "permit(principal, action, resource) when { principal.colour == \"red\" };\n");
    let code = |args: &[&str]| server.vouch(args).status.code();
    let ask = [
        "policy",
        "test",
        "--principal",
        "spiffe://example.org/web",
        "--action",
        "read",
        "--secret",
        "web/db",
    ];

    // Nothing stored: every request is denied.
    let out = server.vouch(&ask);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DENY: no policy permits"));

    assert!(server
        .ok(&["policy", "put", "own-path", "--file", &own])
        .contains("policy own-path version 1 in namespace default (permit)"));
    assert_eq!(code(&ask), Some(0));
    assert!(server.ok(&ask).contains("ALLOW: permitted by `own-path`"));
    let other: Vec<&str> = ask.iter().map(|a| if *a == "web/db" { "payments/db" } else { a }).collect();
    assert_eq!(code(&other), Some(3), "another team's secret");

    // What-if: a forbid added for the test only wins, and is not stored.
    let with = format!("no-web-db={forbid}");
    let out = server.vouch(&[&ask[..], &["--with", &with]].concat());
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("DENY: denied by `no-web-db`"));
    assert_eq!(code(&ask), Some(0), "the what-if stored nothing");
    assert_eq!(code(&[&ask[..], &["--without", "own-path"]].concat()), Some(3));

    // Validation against the schema: a misspelt attribute is refused, by validate and by put.
    assert_eq!(server.ok(&["policy", "validate", "--file", &own]).trim(), "valid");
    let out = server.vouch(&["policy", "validate", "--file", &typo]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("colour"));
    assert!(server.fails(&["policy", "put", "typo", "--file", &typo]).contains("colour"));

    // Versions and history; deny wins once the forbid is stored; a deletion keeps the history.
    server.ok(&["policy", "put", "own-path", "--file", &own]);
    server.ok(&["policy", "put", "no-web-db", "--file", &forbid]);
    assert_eq!(code(&ask), Some(3));
    let list = server.ok(&["policy", "list"]);
    assert!(list.contains("own-path") && list.contains("no-web-db") && list.contains("forbid"), "{list}");
    assert!(!list.contains("typo"), "a refused policy is not stored: {list}");
    let show = json(&server.ok(&["policy", "show", "own-path", "-o", "json"]));
    assert_eq!(show["versions"].as_array().unwrap().len(), 2);
    assert!(server.ok(&["policy", "delete", "no-web-db"]).contains("policy no-web-db deleted (version 2)"));
    assert_eq!(code(&ask), Some(0));
    assert!(server.ok(&["policy", "show", "no-web-db"]).contains("(deleted)"));

    // Bad input.
    assert!(server.fails(&["policy", "show", "none"]).contains("none"));
    assert!(server
        .fails(&[
            "policy",
            "test",
            "--principal",
            "spiffe://example.org/web",
            "--action",
            "fly",
            "--secret",
            "x"
        ])
        .contains("fly"));
    assert!(server
        .fails(&["policy", "test", "--principal", "spiffe://example.org/web", "--action", "read"])
        .contains("one of --secret, --db-role or --service"));
    assert!(server
        .fails(&["policy", "put", "x", "--file", "/nonexistent.cedar"])
        .contains("/nonexistent.cedar"));
    server.stop();
}
