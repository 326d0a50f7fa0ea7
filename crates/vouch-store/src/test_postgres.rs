//! A private PostgreSQL cluster for tests (feature `test-postgres`): `initdb` and `pg_ctl` of
//! Debian's `postgresql-15` in a temporary directory, listening on a Unix socket in that directory
//! and on 127.0.0.1 at a free port, stopped and removed when the [`PgCluster`] is dropped (also when
//! a test panics). As root, the cluster runs as the `postgres` user (PostgreSQL refuses to run as
//! root), through `setpriv`.
//!
//! Local (socket) connections are trusted; TCP connections need the superuser's password, which
//! is random per cluster, so the password handling of the client is tested too. fsync is off: the
//! cluster is thrown away.

// A test helper: it panics to fail the test, with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian puts PostgreSQL's server programs; the newest version there is used.
const DEBIAN_PG_LIB: &str = "/usr/lib/postgresql";
/// The superuser of the cluster, and the user it runs as under root.
const OS_USER: &str = "postgres";

const HOW_TO_INSTALL: &str = "install them with `apt-get install -y postgresql-15` (scripts/test \
    installs it), or set VOUCH_TEST_PG_BIN to the directory holding initdb and pg_ctl";

/// A running throwaway cluster; dropping it stops it and removes its files.
pub struct PgCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    as_root: bool,
    port: u16,
    password: String,
}

impl std::fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCluster").field("dir", &self.dir.path()).field("port", &self.port).finish()
    }
}

/// The directory of initdb and pg_ctl: `VOUCH_TEST_PG_BIN`, else the newest Debian install.
fn find_bin() -> Result<PathBuf, String> {
    find_bin_in(std::env::var_os("VOUCH_TEST_PG_BIN").map(PathBuf::from), Path::new(DEBIAN_PG_LIB))
}

fn find_bin_in(configured: Option<PathBuf>, lib: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = configured {
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!("VOUCH_TEST_PG_BIN={} holds no initdb", dir.display()))
        };
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(lib)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        format!(
            "the PostgreSQL server programs (initdb, pg_ctl) are not under {}/*/bin: {HOW_TO_INSTALL}",
            lib.display()
        )
    })
}

/// The uid and gid of `name`, from /etc/passwd.
fn os_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.first() == Some(&name) && f.len() > 3).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Runs `cmd`, killing it after `limit`; the error holds its output.
fn run(mut cmd: Command, what: &str, limit: Duration) -> Result<(), String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("{what}: {e}"))? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut out);
    }
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("{what} failed ({s}):\n{out}")),
        None => Err(format!("{what} did not finish within {} s:\n{out}", limit.as_secs())),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Percent-encodes a socket directory for the host part of a URL.
fn url_path(path: &Path) -> String {
    path.display().to_string().replace('%', "%25").replace('/', "%2F")
}

impl PgCluster {
    /// Starts a new cluster. Panics with what to do when PostgreSQL is not installed, or with the
    /// server's log when it does not start.
    pub fn start() -> Self {
        Self::try_start().unwrap_or_else(|e| panic!("cannot start a test PostgreSQL cluster: {e}"))
    }

    fn try_start() -> Result<Self, String> {
        let bin = find_bin()?;
        let as_root = std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false);
        // Short, under /tmp: a Unix socket path has a limit of about 100 bytes.
        let dir =
            tempfile::Builder::new().prefix("vouch-pg.").tempdir_in("/tmp").map_err(|e| e.to_string())?;
        let password: String = {
            let mut raw = [0u8; 12];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut raw))
                .map_err(|e| e.to_string())?;
            raw.iter().map(|b| format!("{b:02x}")).collect()
        };
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, &password).map_err(|e| e.to_string())?;
        if as_root {
            let (uid, gid) = os_user(OS_USER).ok_or_else(|| {
                format!("there is no `{OS_USER}` user to run PostgreSQL as: {HOW_TO_INSTALL}")
            })?;
            for p in [dir.path(), &pwfile] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
        }
        let mut cluster = Self { bin, dir, as_root, port: 0, password };
        let data = cluster.data();
        let mut initdb = cluster.command("initdb");
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", OS_USER, "-E", "UTF8", "--no-locale", "--no-sync", "--auth-local=trust"])
            .args(["--auth-host=scram-sha-256", "--pwfile"])
            .arg(&pwfile);
        run(initdb, "initdb", Duration::from_secs(120))?;
        // A port taken between choosing and binding it fails the start: try another.
        let mut last = String::new();
        for _ in 0..3 {
            cluster.port = free_port();
            match cluster.run_server() {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    last = e;
                    cluster.stop();
                }
            }
        }
        Err(last)
    }

    /// Starts the server of the cluster on its port (pg_ctl waits until it accepts connections).
    fn run_server(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(start, "pg_ctl start", Duration::from_secs(70)).map_err(|e| {
            let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            format!("{e}\nserver log:\n{log}")
        })
    }

    /// Stops the server as an administrator would for a restart (`pg_ctl stop -m fast`: sessions
    /// are ended, committed transactions are on disk), keeping its files; [`PgCluster::resume`]
    /// starts it again on the same port.
    pub fn pause(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-m", "fast", "-w", "-t", "30", "stop"]);
        run(stop, "pg_ctl stop", Duration::from_secs(40)).unwrap();
    }

    /// Turns TLS on with this certificate chain and key (PEM), refuses plain TCP connections (so a
    /// client that connects uses TLS), and restarts the server for it.
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) {
        let data = self.data();
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            std::fs::write(&path, text).unwrap();
            // PostgreSQL refuses a key readable by others, and must own what it reads.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
            if self.as_root {
                let (uid, gid) = os_user(OS_USER).unwrap();
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("hostnossl all all all reject\n{text}")).unwrap();
        self.pause();
        self.resume();
    }

    /// Starts the server stopped by [`PgCluster::pause`] again, on the same port.
    pub fn resume(&self) {
        self.run_server().unwrap();
    }

    /// The cluster's directory (data, socket, log), removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command of the server's bin directory, as the `postgres` user under root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid", OS_USER, "--regid", OS_USER, "--clear-groups", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// A URL of database `db` over the Unix socket, as the superuser (trusted, no password).
    pub fn socket_url(&self, db: &str) -> String {
        format!("postgresql://{OS_USER}@{}:{}/{db}", url_path(self.dir.path()), self.port)
    }

    /// A URL of database `db` over TCP on 127.0.0.1, as the superuser with its password.
    pub fn tcp_url(&self, db: &str) -> String {
        format!("postgresql://{OS_USER}:{}@127.0.0.1:{}/{db}", self.password, self.port)
    }

    /// The superuser's password (for tests that check it is never shown).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Creates an empty database `name` (a fresh store for one test) and returns its socket URL.
    pub async fn create_database(&self, name: &str) -> String {
        let (client, connection) =
            tokio_postgres::connect(&self.socket_url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect");
        let driver = tokio::spawn(connection);
        client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await.expect("create database");
        drop(client);
        let _ = driver.await;
        self.socket_url(name)
    }

    fn stop(&self) {
        let pid_file = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap_or_default();
        let Some(pid) = pid_file.lines().next().and_then(|p| p.parse::<u32>().ok()) else { return };
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "-t", "20", "stop"]);
        if let Err(e) = run(stop, "pg_ctl stop", Duration::from_secs(30)) {
            eprintln!("{e}");
        }
        // pg_ctl returns when the pid file is gone, a moment before the process: wait for it, and
        // kill it as a last resort, so that no server outlives its test.
        if !gone_within(pid, Duration::from_secs(10)) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            gone_within(pid, Duration::from_secs(5));
        }
    }
}

/// Whether process `pid` has exited (or is a zombie) within `limit`.
fn gone_within(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let gone = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // The state follows the command name in parentheses.
            Ok(stat) => stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')),
        };
        if gone {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
        // The TempDir removes the files.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without PostgreSQL the tests fail and say how to install it; they are never skipped.
    #[test]
    fn missing_programs_are_an_error_that_says_how_to_install_them() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_bin_in(None, empty.path()).unwrap_err();
        assert!(err.contains("apt-get install -y postgresql-15") && err.contains("scripts/test"), "{err}");
        let err = find_bin_in(Some(empty.path().into()), Path::new(DEBIAN_PG_LIB)).unwrap_err();
        assert!(err.contains("VOUCH_TEST_PG_BIN"), "{err}");
        std::fs::create_dir_all(empty.path().join("9/bin")).unwrap();
        std::fs::create_dir_all(empty.path().join("15/bin")).unwrap();
        for v in ["9", "15"] {
            for p in ["initdb", "pg_ctl"] {
                std::fs::write(empty.path().join(v).join("bin").join(p), "").unwrap();
            }
        }
        assert_eq!(find_bin_in(None, empty.path()).unwrap(), empty.path().join("15/bin"), "the newest");
    }
}
