//! `vouch helper` against a real server and agent: a real nginx from Debian serves TLS with the
//! X509-SVID the helper writes, and after a rotation (60 s SVIDs, renewed by half life) the helper's
//! SIGHUP makes the same nginx master serve the new certificate; `--once` writes the files and a
//! JWT-SVID and exits; a process without an identity and an unreachable agent get their own exit
//! codes and say what to check.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{entry_for_vouch, output_within, start_agent, KillOnDrop, ServerProcess, VOUCH};

/// The exit codes `vouch helper --help` documents.
const EXIT_NO_IDENTITY: i32 = 3;
const EXIT_UNREACHABLE: i32 = 4;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Runs `vouch helper args…` to its end (at most 60 s): exit code and stderr.
fn helper_once(socket: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(VOUCH);
    cmd.arg("helper").args(["--socket", socket]).args(args).env_remove("SPIFFE_ENDPOINT_SOCKET");
    let out = output_within(&mut cmd, b"", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("vouch helper {args:?} did not exit within 60 s"));
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `vouch helper --socket SOCKET args…` running until dropped, its log in `dir`/helper.log; and a
/// reader of that log.
pub(super) fn spawn_helper(dir: &Path, socket: &str, args: &[&str]) -> (KillOnDrop, impl Fn() -> String) {
    let log = dir.join("helper.log");
    let helper = Command::new(VOUCH)
        .args(["helper", "--socket", socket])
        .args(args)
        .env("VOUCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    (KillOnDrop(helper), move || std::fs::read_to_string(&log).unwrap_or_default())
}

/// The serial number of the first certificate in a PEM text, by `openssl x509`.
fn serial_of(pem: &str) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["x509", "-noout", "-serial"]);
    let out = output_within(&mut cmd, pem.as_bytes(), Duration::from_secs(10))
        .expect("openssl x509 finished within 10 s");
    assert!(out.status.success(), "openssl x509: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A new TLS handshake with `port`, verified against `bundle` by `openssl s_client` (10 s at most):
/// the serial of the certificate served, or why there was none.
fn handshake_serial(port: u16, bundle: &Path) -> Result<String, String> {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &format!("127.0.0.1:{port}"), "-verify_return_error", "-CAfile"])
        .arg(bundle);
    let Some(out) = output_within(&mut cmd, b"", Duration::from_secs(10)) else {
        return Err("openssl s_client did not finish within 10 s".into());
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || !text.contains("Verify return code: 0 (ok)") {
        return Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    let begin = text.find("-----BEGIN CERTIFICATE-----").ok_or("no certificate shown")?;
    Ok(serial_of(&text[begin..]))
}

/// A real nginx master (Debian's), stopped gracefully on drop (SIGTERM: the master takes its
/// workers down), killed if it does not stop within 5 s.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn binary() -> &'static str {
        if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        }
    }

    /// nginx serving TLS on `port` with `cert` and `key`, everything of its own under `dir`.
    fn start(dir: &Path, port: u16, cert: &Path, key: &Path) -> Self {
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\nevents {{ worker_connections 64; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 server {{\n    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n\
                 location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let child = Command::new(Self::binary())
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run nginx ({e}); scripts/test installs Debian's nginx-light"));
        Self { child, dir: dir.to_owned() }
    }

    fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }

    /// The master's pid as its pid file says, once it is written.
    fn pid_file(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("nginx.pid")).ok()?.trim().parse().ok()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn helper_feeds_a_real_nginx_and_its_sighup_brings_the_rotated_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let agent_id = "spiffe://example.org/agent/helper-node";
    let (agent, agent_dir) = start_agent(tmp.path(), &server, agent_id, &[]);
    let _agent = KillOnDrop(agent);
    let socket = format!("unix://{}", agent_dir.join("api.sock").display());
    let svid_dir = tmp.path().join("svid");
    let svid_dir_arg = svid_dir.to_str().unwrap();

    // No entry yet: the agent refuses, the helper exits 3 and says where to look.
    let (code, err) = helper_once(&socket, &["--once", "--dir", svid_dir_arg]);
    assert_eq!(code, Some(EXIT_NO_IDENTITY), "{err}");
    assert!(err.contains("no identity") && err.contains("vouch agent explain --pid"), "{err}");
    assert!(!svid_dir.join("svid.pem").exists(), "nothing written without an identity");

    // The helper (this `vouch` binary, as this user) gets 60 s X509-SVIDs, renewed at half life.
    entry_for_vouch(
        &server,
        "spiffe://example.org/web",
        agent_id,
        &["--x509-ttl", "60s", "--dns", "localhost"],
    );
    // Once the entry has reached the agent, --once writes the files and a JWT-SVID, and exits 0.
    let once_dir = tmp.path().join("once");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, err) =
            helper_once(&socket, &["--once", "--dir", once_dir.to_str().unwrap(), "--jwt", "db=db.jwt"]);
        if code == Some(0) {
            assert!(!err.contains("eyJ"), "no token in the log: {err}");
            break;
        }
        assert_eq!(code, Some(EXIT_NO_IDENTITY), "{err}");
        assert!(Instant::now() < deadline, "the entry did not reach the agent: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        [
            mode(&once_dir.join("svid.pem")),
            mode(&once_dir.join("svid.key")),
            mode(&once_dir.join("bundle.pem"))
        ],
        [0o644, 0o600, 0o644]
    );
    assert_eq!(mode(&once_dir.join("db.jwt")), 0o600);
    let jwt = std::fs::read_to_string(once_dir.join("db.jwt")).unwrap();
    let validated = Command::new(VOUCH)
        .args(["agent", "api", "validate", "-a", "db", jwt.trim(), "--socket", &socket])
        .output()
        .unwrap();
    assert!(validated.status.success(), "{}", String::from_utf8_lossy(&validated.stderr));
    assert!(String::from_utf8_lossy(&validated.stdout).contains("spiffe://example.org/web"));
    let leftovers: Vec<_> = std::fs::read_dir(&once_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // The helper as a daemon, told to SIGHUP whatever pid nginx's pid file names.
    let nginx_dir = tmp.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).unwrap();
    let pid_file = nginx_dir.join("nginx.pid");
    // And to run a command after each write: it appends the serial it finds in the file.
    let cmd_log = tmp.path().join("cmd.log");
    let cmd =
        format!("openssl x509 -noout -serial -in {}/svid.pem >> {}", svid_dir.display(), cmd_log.display());
    let args = [
        "--dir",
        svid_dir_arg,
        "--signal",
        "SIGHUP",
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--cmd",
        &cmd,
    ];
    let (_helper, helper_log) = spawn_helper(tmp.path(), &socket, &args);
    let (cert, key, bundle) =
        (svid_dir.join("svid.pem"), svid_dir.join("svid.key"), svid_dir.join("bundle.pem"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(cert.exists() && key.exists() && bundle.exists()) {
        assert!(Instant::now() < deadline, "the helper wrote no files: {}", helper_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!((mode(&cert), mode(&key), mode(&bundle)), (0o644, 0o600, 0o644));

    // nginx serves TLS with the SVID: a handshake verified against the bundle the helper wrote.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nginx = Nginx::start(&nginx_dir, port, &cert, &key);
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        match handshake_serial(port, &bundle) {
            Ok(serial) => break serial,
            Err(e) => {
                assert!(Instant::now() < deadline, "nginx does not serve the SVID: {e}\n{}", nginx.log())
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let master = nginx.pid_file().expect("nginx wrote its pid file");
    assert_eq!(master, nginx.child.id(), "the pid file names the master this test started");

    // The agent rotates the SVID at half life (by ~30 s); the helper rewrites the files and sends
    // SIGHUP; a new handshake with the same nginx master shows the new certificate.
    let deadline = Instant::now() + Duration::from_secs(75);
    let second = loop {
        if let Ok(serial) = handshake_serial(port, &bundle) {
            if serial != first {
                break serial;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nginx still serves {first} after 75 s\nhelper: {}\nnginx: {}",
            helper_log(),
            nginx.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        second,
        serial_of(&std::fs::read_to_string(&cert).unwrap()),
        "the new certificate is the file's"
    );
    assert_eq!(nginx.pid_file(), Some(master), "same master: nginx was reloaded, not restarted");
    assert!(Path::new(&format!("/proc/{master}")).exists(), "the master still runs");
    let log = nginx.log();
    assert!(log.contains("(SIGHUP) received") && log.contains("reconfiguring"), "{log}");
    let hlog = helper_log();
    assert!(hlog.contains("signalled") && hlog.contains(&master.to_string()), "{hlog}");
    // The command ran after the first write and after the rotation, each time seeing whole files.
    // (It runs after the signal, so it may still be running when nginx already serves the new one.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ran = std::fs::read_to_string(&cmd_log).unwrap_or_default();
        let serials: Vec<&str> = ran.lines().collect();
        if serials.contains(&first.as_str()) && serials.contains(&second.as_str()) {
            break;
        }
        assert!(Instant::now() < deadline, "the command did not run after both writes: {ran}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(hlog.matches("wrote the X509-SVID").count() >= 2, "a rotation on the same stream: {hlog}");
    // Key material never reaches the log.
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap();
    assert!(!hlog.contains(key_body) && !hlog.contains("PRIVATE KEY"), "{hlog}");
    drop(nginx);
    server.stop();
}

#[test]
fn helper_without_an_agent_retries_then_says_what_to_check() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = format!("unix://{}", tmp.path().join("none.sock").display());
    let started = Instant::now();
    let (code, err) =
        helper_once(&socket, &["--once", "--retry-for", "2s", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(code, Some(EXIT_UNREACHABLE), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(2), "it retried for the time given");
    assert!(
        err.contains("cannot reach the agent's Workload API") && err.contains("vouch agent run"),
        "{err}"
    );
    // Bad configuration: exit 1 with the reason; usage errors exit 2.
    let (code, err) = helper_once(&socket, &["--signal", "SIGHUP"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--signal needs --pid or --pid-file"), "{err}");
    let config = tmp.path().join("helper.toml");
    std::fs::write(&config, "cert_fille = \"x.pem\"\n").unwrap();
    let (code, err) = helper_once(&socket, &["--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("unknown field `cert_fille`"), "{err}");
    let (code, _) = helper_once(&socket, &["--frobnicate"]);
    assert_eq!(code, Some(2));
    let help = Command::new(VOUCH).args(["helper", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    for want in ["--signal", "--pid-file", "--once", "--jwt", "Exit codes", "vouch agent explain"] {
        assert!(text.contains(want), "{want}: {text}");
    }
}

/// Writes a new version of secret `path` through `vouch secret put` (the value on stdin, never
/// argv); returns once the command has returned.
fn put_secret(server: &ServerProcess, path: &str, value: &[u8]) {
    let mut cmd = Command::new(VOUCH);
    cmd.args(["secret", "put", path]).env("VOUCH_ADMIN_SOCKET", server.socket()).env_remove("VOUCH_OUTPUT");
    let out = output_within(&mut cmd, value, Duration::from_secs(30)).expect("vouch secret put within 30 s");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Waits (at most `limit`) until `file` holds `want`; how long that took.
fn until_file_holds(file: &Path, want: &[u8], limit: Duration, log: &dyn Fn() -> String) -> Duration {
    let started = Instant::now();
    loop {
        if std::fs::read(file).is_ok_and(|got| got == want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{} does not hold the new value after {limit:?}\n{}",
            file.display(),
            log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn helper_keeps_secret_files_current_and_tells_the_app_after_each_rewrite() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(tmp.path());
    let agent_id = "spiffe://example.org/agent/secret-node";
    let (agent, agent_dir) = start_agent(tmp.path(), &server, agent_id, &[]);
    let _agent = KillOnDrop(agent);
    let socket = format!("unix://{}", agent_dir.join("api.sock").display());
    entry_for_vouch(&server, "spiffe://example.org/app", agent_id, &[]);
    let values: Vec<String> = (1..=6).map(|n| format!("pa55-w0rd-{n}-{}", "z".repeat(n))).collect();
    put_secret(&server, "app/db", values[0].as_bytes());
    let dir = tmp.path().join("secrets");
    let dir_arg = dir.to_str().unwrap();
    let file = dir.join("db-password");
    let once = ["--once", "--no-x509", "--dir", dir_arg, "--secret", "app/db=db-password"];

    // No grant: exit 3 (refused), naming the secret and the missing grant; nothing written. (Until
    // the entry reaches the agent, the refusal is "no identity issued", also exit 3.)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, err) = helper_once(&socket, &once);
        assert_eq!(code, Some(EXIT_NO_IDENTITY), "{err}");
        if err.contains("may not read secret `app/db`: no policy permits") {
            assert!(err.contains("A grant must permit"), "{err}");
            break;
        }
        assert!(Instant::now() < deadline, "the entry did not reach the agent: {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!file.exists(), "nothing written without a grant");

    let grant = tmp.path().join("grant.cedar");
    std::fs::write(
        &grant,
        r#"permit(principal == Workload::"spiffe://example.org/app", action == Action::"read", resource == Secret::"app/db");"#,
    )
    .unwrap();
    server.ok(&["policy", "put", "app-reads-db", "--file", grant.to_str().unwrap()]);
    // --once: the raw value, 0600, and exit 0.
    let (code, err) = helper_once(&socket, &once);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!((std::fs::read(&file).unwrap(), mode(&file)), (values[0].clone().into_bytes(), 0o600));

    // As a daemon: the app is a shell that counts its SIGHUPs; a command records what the file
    // held when it ran.
    let hups = tmp.path().join("hups");
    let app = KillOnDrop(
        Command::new("sh")
            .arg("-c")
            .arg(format!("trap 'echo hup >> {}' HUP; while :; do sleep 0.05; done", hups.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let app_pid = app.0.id().to_string();
    let cmd_log = tmp.path().join("cmd.log");
    let cmd = format!("cat {} >> {}; echo >> {}", file.display(), cmd_log.display(), cmd_log.display());
    let config = tmp.path().join("helper.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\nx509 = false\ndir = \"{dir_arg}\"\nsignal = \"SIGHUP\"\npid = {app_pid}\n\n\
             [[secret]]\npath = \"app/db\"\nfile = \"db-password\"\nmode = 0o640\n"
        ),
    )
    .unwrap();
    let (_helper, helper_log) =
        spawn_helper(tmp.path(), &socket, &["--config", config.to_str().unwrap(), "--cmd", &cmd]);
    // The file as it was: the helper writes version 1 again and tells the app.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(helper_log().contains("wrote the secret") && mode(&file) == 0o640) {
        assert!(Instant::now() < deadline, "the helper did not write the file: {}", helper_log());
        std::thread::sleep(Duration::from_millis(20));
    }

    // Each new version reaches the file in well under a second, measured from the return of the
    // admin command that wrote it.
    let mut worst = Duration::ZERO;
    let hup_count = || std::fs::read_to_string(&hups).unwrap_or_default().lines().count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while hup_count() < 1 {
        assert!(Instant::now() < deadline, "no SIGHUP for the first write\n{}", helper_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    for (i, value) in values[1..4].iter().enumerate() {
        put_secret(&server, "app/db", value.as_bytes());
        let took = until_file_holds(&file, value.as_bytes(), Duration::from_secs(5), &helper_log);
        worst = worst.max(took);
        // The app is told of this version before the next is written: signals of one kind do
        // not queue, so two sent within the shell's sleep would count as one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(std::fs::read_to_string(&cmd_log).unwrap_or_default().lines().any(|l| l == value)
            && hup_count() >= i + 2)
        {
            assert!(
                Instant::now() < deadline,
                "{} SIGHUPs, no command for version {}\n{}",
                hup_count(),
                i + 2,
                helper_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    eprintln!(
        "helper: a new secret version reached the file at most {worst:?} after `vouch secret put` returned"
    );
    assert!(worst < Duration::from_secs(1), "{worst:?}");
    assert_eq!(mode(&file), 0o640);

    // After each rewrite the app got SIGHUP and the command saw the whole new value.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ran = std::fs::read_to_string(&cmd_log).unwrap_or_default();
        let seen: Vec<&str> = ran.lines().collect();
        let hup_count = std::fs::read_to_string(&hups).unwrap_or_default().lines().count();
        if values[..4].iter().all(|v| seen.contains(&v.as_str())) && hup_count >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "commands saw {seen:?}, {hup_count} SIGHUPs\n{}", helper_log());
        std::thread::sleep(Duration::from_millis(20));
    }

    // The grant deleted: updates stop, the file keeps the last value delivered, and the helper
    // says why (without the value) and keeps running.
    server.ok(&["policy", "delete", "app-reads-db"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !helper_log().contains("secret no longer delivered") {
        assert!(Instant::now() < deadline, "the helper did not report the revoked grant: {}", helper_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    put_secret(&server, "app/db", values[4].as_bytes());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(std::fs::read(&file).unwrap(), values[3].as_bytes(), "no update without the grant");
    let log = helper_log();
    assert!(log.contains("may not read secret `app/db`: no policy permits"), "{log}");
    for v in &values {
        assert!(!log.contains(v.as_str()), "a value reached the log: {log}");
    }
    drop(app);
    server.stop();
}
