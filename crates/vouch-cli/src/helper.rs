//! `vouch helper`: SVIDs delivered as files to an app that knows nothing of SPIFFE, like SPIRE's
//! spiffe-helper.
//!
//! The helper is a workload of the agent: it opens the Workload API's `FetchX509SVID` stream (each
//! message is the whole current state, so each one after the first is a rotation), writes the
//! X509-SVID's chain, key and bundle as PEM files, fetches JWT-SVIDs for configured audiences (the
//! clouds' token files among them, see [`cloud`]) and fetches them again at half their life. Every
//! file is replaced atomically (written beside, synced, renamed), so the app reads the old file or
//! the new one, never a part. After each X509 rotation it sends a signal to the app (a pid, or the
//! pid in a pid file) and/or runs a command. Secrets configured with `--secret`/`[[secret]]` are
//! followed on the agent's secret socket and their files rewritten at each new version, with the
//! same signal and command after each rewrite ([`secrets`]). Keys, tokens and secret values never
//! reach the log.
//!
//! Exit codes: 0 done (`--once`) or stopped by SIGINT/SIGTERM; 1 a configuration or file error;
//! 2 a usage error; 3 the agent refused (no identity for this process, or no grant for a
//! configured secret); 4 the agent could not be reached within `--retry-for`.

mod cloud;
mod config;
mod secrets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Args;
use serde::Deserialize;
use tonic::Code;
use vouch_proto::workload::{JwtsvidRequest, X509svidRequest, X509svidResponse};
use vouch_server::config::HumanDuration;

use crate::agent::{request, socket_path, split_der};
use config::{Notify, Plan, Target};

/// Where the Workload API is when neither `--socket` nor `SPIFFE_ENDPOINT_SOCKET` says.
pub const DEFAULT_SOCKET: &str = "vouch-agent-data/api.sock";
/// Exit code: the agent refused this process an identity.
pub const EXIT_NO_IDENTITY: u8 = 3;
/// Exit code: the agent could not be reached within `--retry-for`.
pub const EXIT_UNREACHABLE: u8 = 4;

/// `vouch helper` options; each also from a `VOUCH_HELPER_*` variable or the `--config` file.
#[derive(Args, Debug)]
#[command(after_long_help = HELP_EXAMPLES)]
pub struct HelperArgs {
    /// Configuration file (TOML; the same settings, plus `[[jwt]]`, `[aws]`, `[azure]`, `[gcp]`).
    #[arg(long, short = 'c', env = "VOUCH_HELPER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The agent's Workload API socket (also `SPIFFE_ENDPOINT_SOCKET`, e.g. unix:///run/vouch/api.sock).
    #[arg(long, env = "SPIFFE_ENDPOINT_SOCKET")]
    pub socket: Option<String>,
    /// Directory for the files (relative file names are under it; default: the current directory).
    #[arg(long, env = "VOUCH_HELPER_DIR")]
    pub dir: Option<PathBuf>,
    /// The X509-SVID certificate chain, leaf first (PEM, 0644; default svid.pem).
    #[arg(long, env = "VOUCH_HELPER_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// The X509-SVID's private key (PKCS#8 PEM, 0600; default svid.key).
    #[arg(long, env = "VOUCH_HELPER_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// The trust bundle's CA certificates (PEM, 0644; default bundle.pem).
    #[arg(long, env = "VOUCH_HELPER_BUNDLE_FILE")]
    pub bundle_file: Option<PathBuf>,
    /// Also put the bundles of the trust domains the workload federates with into the bundle file,
    /// so the app accepts their X509-SVIDs too.
    #[arg(long, env = "VOUCH_HELPER_INCLUDE_FEDERATED_BUNDLES")]
    pub include_federated_bundles: bool,
    /// Write no X509-SVID files (only JWT-SVIDs and cloud token files).
    #[arg(long, env = "VOUCH_HELPER_NO_X509")]
    pub no_x509: bool,
    /// A JWT-SVID for AUDIENCE kept fresh in FILE (0600), as AUDIENCE=FILE; repeatable, or several
    /// separated by commas.
    #[arg(long = "jwt", value_name = "AUDIENCE=FILE", env = "VOUCH_HELPER_JWT", value_delimiter = ',')]
    pub jwt: Vec<String>,
    /// A secret kept in FILE (its raw value bytes, 0600), rewritten when a new version is written,
    /// as PATH=FILE; repeatable, or several separated by commas. Modes and owners: `[[secret]]`
    /// in the --config file.
    #[arg(long = "secret", value_name = "PATH=FILE", env = "VOUCH_HELPER_SECRET", value_delimiter = ',')]
    pub secret: Vec<String>,
    /// After each X509 rotation or secret rewrite send this signal (SIGHUP, SIGUSR1, ...) to --pid or --pid-file.
    #[arg(long, env = "VOUCH_HELPER_SIGNAL")]
    pub signal: Option<String>,
    /// The process to signal.
    #[arg(long, env = "VOUCH_HELPER_PID")]
    pub pid: Option<i32>,
    /// A file holding the pid of the process to signal, read at every rotation (nginx's pid file).
    #[arg(long, env = "VOUCH_HELPER_PID_FILE")]
    pub pid_file: Option<PathBuf>,
    /// After each X509 rotation or secret rewrite run this command with `sh -c` (e.g. "nginx -s reload").
    #[arg(long, env = "VOUCH_HELPER_CMD")]
    pub cmd: Option<String>,
    /// How long --cmd may run before it is killed (default 1m).
    #[arg(long, env = "VOUCH_HELPER_CMD_TIMEOUT")]
    pub cmd_timeout: Option<HumanDuration>,
    /// Write the files once and exit (an init container); no signal, no command.
    #[arg(long, env = "VOUCH_HELPER_ONCE")]
    pub once: bool,
    /// Give up (exit 4) after this long without reaching the agent; default: retry for ever, or 1m
    /// with --once.
    #[arg(long, env = "VOUCH_HELPER_RETRY_FOR")]
    pub retry_for: Option<HumanDuration>,
}

const HELP_EXAMPLES: &str = "\
Examples:
  # nginx: certificate and key in /run/svid, nginx told to reload after each rotation
  vouch helper --socket unix:///run/vouch/api.sock --dir /run/svid \\
      --signal SIGHUP --pid-file /run/nginx.pid
  # an init container: write the files and exit
  vouch helper --dir /run/svid --once
  # a JWT-SVID for OpenBao, renewed at half life
  vouch helper --no-x509 --jwt openbao=/run/svid/openbao.jwt
  # libpq (psql, psycopg): no signal, it reads the files at each new connection; the entry's
  # --x509-common-name is mapped to a role in pg_ident.conf (docs/postgres-cert-login.md)
  vouch helper --dir /run/svid   # psql \"... sslcert=/run/svid/svid.pem sslkey=/run/svid/svid.key\"
  # a database password as a file, rewritten at each new version, the app told by SIGHUP
  vouch helper --no-x509 --dir /run/secrets --secret payments/db/password=db-password \\
      --signal SIGHUP --pid-file /run/app.pid

The cloud SDKs' token files (AWS, Azure, GCP) are configured in the --config file; see
docs/federation.md, \"vouch helper\".

Exit codes: 0 done (--once) or stopped; 1 bad configuration or a file could not be written;
2 usage; 3 the agent gives this process no identity (`vouch agent explain --pid <pid>` says
why) or no grant permits a configured secret; 4 the agent could not be reached within
--retry-for.";

/// Why a session with the agent ended.
enum Stop {
    /// The agent gave no identity (PermissionDenied): retrying does not help.
    Refused(String),
    /// The agent could not be reached, or the stream broke: retry.
    Unreachable(String),
    /// A file could not be written, or another local failure.
    Fatal(anyhow::Error),
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Self {
        Self::Fatal(e)
    }
}

fn status_stop(what: &str, s: &tonic::Status) -> Stop {
    if s.code() == Code::PermissionDenied {
        Stop::Refused(s.message().to_owned())
    } else {
        Stop::Unreachable(format!("{what}: {} ({:?})", s.message(), s.code()))
    }
}

/// Runs `vouch helper`.
pub async fn run(args: HelperArgs) -> Result<ExitCode> {
    let file = match &args.config {
        Some(path) => config::read_file(path)?,
        None => config::FileConfig::default(),
    };
    let plan = config::plan(&args, file)?;
    crate::init_logging("info", false);
    for (out, text) in &plan.static_files {
        write(out, text.as_bytes())?;
        tracing::info!(file = %out.path.display(), "wrote");
    }
    tokio::select! {
        code = everything(&plan) => code.map(ExitCode::from),
        r = crate::wait_for_signal() => {
            r?;
            tracing::info!("stopping");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The SVID files and the secret files, side by side: with `--once` until both are written (the
/// first failure's exit code), else until one of them fails for good.
async fn everything(plan: &Plan) -> Result<u8> {
    // The Workload API is only needed for SVID files; a helper of secrets alone does without.
    let svids = !(plan.x509.is_none() && plan.jwts.is_empty() && plan.static_files.is_empty());
    let svid_files = async {
        if svids {
            supervise(plan).await
        } else if plan.once {
            Ok(0)
        } else {
            std::future::pending().await
        }
    };
    let secret_files = async {
        if !plan.secrets.is_empty() {
            secrets::supervise(plan).await
        } else if plan.once {
            Ok(0)
        } else {
            std::future::pending().await
        }
    };
    if plan.once {
        let (a, b) = tokio::join!(svid_files, secret_files);
        let (a, b) = (a?, b?);
        return Ok(if a != 0 { a } else { b });
    }
    tokio::select! {
        code = svid_files => code,
        code = secret_files => code,
    }
}

/// Sessions with the agent, retried with backoff while it is unreachable.
async fn supervise(plan: &Plan) -> Result<u8> {
    let path = socket_path(&plan.socket);
    let mut unreachable_since = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        let (why, served) = match session(plan).await {
            Ok(()) => return Ok(0),
            Err((Stop::Fatal(e), _)) => return Err(e),
            Err((Stop::Refused(message), _)) => {
                eprintln!(
                    "error: the agent gives this process no identity: {message}. No entry matches it: \
                     `vouch agent explain --pid {}` on the node says which selectors are missing",
                    std::process::id()
                );
                return Ok(EXIT_NO_IDENTITY);
            }
            Err((Stop::Unreachable(why), served)) => (why, served),
        };
        if served {
            // The stream worked and then broke (the agent restarted, say): start again soon.
            backoff = Duration::from_millis(500);
            unreachable_since = tokio::time::Instant::now();
        }
        if let Some(limit) = plan.retry_for.filter(|l| unreachable_since.elapsed() >= *l) {
            eprintln!(
                "error: cannot reach the agent's Workload API at {} within {}: {why}. Check that \
                 `vouch agent run` is running on this node and serves that socket (--socket or \
                 SPIFFE_ENDPOINT_SOCKET), and that the socket is mounted into this container",
                path.display(),
                HumanDuration(limit)
            );
            return Ok(EXIT_UNREACHABLE);
        }
        tracing::warn!(
            socket = %path.display(),
            retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            "cannot reach the agent's Workload API: {why}; is `vouch agent run` running and serving this socket?"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// One connection to the agent: the first state written, then every rotation until the stream
/// ends. Returns whether files were written before it ended.
async fn session(plan: &Plan) -> Result<(), (Stop, bool)> {
    let path = socket_path(&plan.socket);
    if !path.exists() {
        return Err((Stop::Unreachable(format!("no socket at {}", path.display())), false));
    }
    let channel = vouch_proto::uds_channel(path.clone())
        .await
        .map_err(|e| (Stop::Unreachable(format!("cannot connect: {e}")), false))?;
    let mut client = vouch_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let mut stream = client
        .fetch_x509svid(request(X509svidRequest {}))
        .await
        .map_err(|s| (status_stop("FetchX509SVID", &s), false))?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(|s| (status_stop("FetchX509SVID", &s), false))?
        .ok_or_else(|| (Stop::Unreachable("the agent closed the stream".into()), false))?;
    write_x509(plan, &first).map_err(|e| (e, false))?;
    let mut jwt_due = fetch_jwts(plan, &mut client).await.map_err(|e| (e, false))?;
    if plan.once {
        return Ok(());
    }
    notify(&plan.notify).await;
    loop {
        let sleep = match jwt_due {
            Some(at) => {
                let left = at.duration_since(now()).unwrap_or_default();
                tokio::time::sleep(left)
            }
            None => tokio::time::sleep(Duration::from_secs(86_400 * 365)),
        };
        tokio::select! {
            msg = stream.message() => {
                let resp = msg
                    .map_err(|s| (status_stop("FetchX509SVID", &s), true))?
                    .ok_or_else(|| (Stop::Unreachable("the agent closed the stream".into()), true))?;
                write_x509(plan, &resp).map_err(|e| (e, true))?;
                notify(&plan.notify).await;
            }
            () = sleep => {
                jwt_due = fetch_jwts(plan, &mut client).await.map_err(|e| (e, true))?;
            }
        }
    }
}

/// The helper's one reading of the system clock; the arithmetic below takes times as parameters.
#[allow(clippy::disallowed_methods)] // the one allowed place
fn now() -> SystemTime {
    SystemTime::now()
}

fn write(out: &config::Out, data: &[u8]) -> Result<()> {
    if let Some(dir) = out.path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        vouch_fs::create_dir(dir, 0o755)?;
    }
    vouch_fs::replace(&out.path, data, out.mode)?;
    Ok(())
}

fn pem_certs(der: &[u8]) -> String {
    split_der(der).iter().map(|d| vouch_ca::pem::encode("CERTIFICATE", d)).collect()
}

/// The bundle file: the trust domain's own authorities, then, if given, those of each federated
/// trust domain in the order of their names (so an unchanged set writes the same file).
fn bundle_pem(own: &[u8], federated: Option<&std::collections::HashMap<String, Vec<u8>>>) -> String {
    let mut pem = pem_certs(own);
    if let Some(map) = federated {
        let mut bundles: Vec<(&String, &Vec<u8>)> = map.iter().collect();
        bundles.sort();
        for (_, der) in bundles {
            pem.push_str(&pem_certs(der));
        }
    }
    pem
}

/// Writes the default (first) X509-SVID of a stream message.
fn write_x509(plan: &Plan, resp: &X509svidResponse) -> Result<(), Stop> {
    let Some(svid) = resp.svids.first() else {
        return Err(Stop::Refused("the agent sent no X509-SVID".into()));
    };
    let chain = split_der(&svid.x509_svid);
    let leaf =
        chain.first().ok_or_else(|| Stop::Unreachable("the agent sent an empty certificate chain".into()))?;
    let info = vouch_ca::x509::cert_info(leaf)
        .map_err(|e| Stop::Unreachable(format!("the agent sent an unreadable certificate: {e}")))?;
    let Some(files) = &plan.x509 else {
        tracing::info!(spiffe_id = %svid.spiffe_id, "X509-SVID received (no files configured for it)");
        return Ok(());
    };
    let key_pem = zeroize::Zeroizing::new(vouch_ca::pem::encode("PRIVATE KEY", &svid.x509_svid_key));
    let cert_pem = pem_certs(&svid.x509_svid);
    let federated = files.include_federated.then_some(&resp.federated_bundles);
    let bundle = bundle_pem(&svid.bundle, federated);
    // All three written and synced first, then renamed back to back: an app that opens the
    // certificate and the key one after the other at each connection (libpq) can only pair two
    // generations in the microseconds between the renames. Key first, then the chain: an app that
    // reloads on the certificate's change finds its key.
    let outs = [
        (&files.key, key_pem.as_bytes()),
        (&files.cert, cert_pem.as_bytes()),
        (&files.bundle, bundle.as_bytes()),
    ];
    for (out, _) in &outs {
        if let Some(dir) = out.path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            vouch_fs::create_dir(dir, 0o755).map_err(anyhow::Error::from)?;
        }
    }
    let together: Vec<(&std::path::Path, &[u8], u32)> =
        outs.iter().map(|(out, data)| (out.path.as_path(), *data, out.mode)).collect();
    vouch_fs::replace_together(&together).map_err(anyhow::Error::from)?;
    tracing::info!(
        spiffe_id = %svid.spiffe_id,
        expires_at = %vouch_core::ttl::rfc3339(vouch_core::ttl::unix_seconds(info.not_after)),
        cert = %files.cert.path.display(),
        key = %files.key.path.display(),
        bundle = %files.bundle.path.display(),
        "wrote the X509-SVID"
    );
    Ok(())
}

/// The claims the helper reads from a JWT-SVID to know when to renew it (the agent vouched for
/// the token; the helper verifies nothing).
#[derive(Deserialize)]
struct Times {
    exp: i64,
    iat: Option<i64>,
}

/// When a token should be fetched again: at half its life (from `iat`, or from `fetched` when the
/// token has none), never before `fetched` + 1 s, never after its `exp`.
fn renew_at(times: &Times, fetched: i64) -> i64 {
    let issued = times.iat.unwrap_or(fetched).min(times.exp);
    let half = issued + (times.exp - issued) / 2;
    half.max(fetched + 1)
}

/// `exp` and `iat` of a compact JWT, unverified.
fn token_times(token: &str) -> Option<Times> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Fetches and writes every configured JWT-SVID; returns when the first is due for renewal.
async fn fetch_jwts(
    plan: &Plan,
    client: &mut vouch_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient<
        tonic::transport::Channel,
    >,
) -> Result<Option<SystemTime>, Stop> {
    let mut due: Option<i64> = None;
    for target in &plan.jwts {
        let req = JwtsvidRequest { audience: vec![target.audience.clone()], spiffe_id: String::new() };
        let resp = client.fetch_jwtsvid(request(req)).await.map_err(|s| status_stop("FetchJWTSVID", &s))?;
        let svids = resp.into_inner().svids;
        let svid = svids.first().ok_or_else(|| Stop::Refused("the agent sent no JWT-SVID".into()))?;
        let token = zeroize::Zeroizing::new(svid.svid.clone());
        let fetched = vouch_core::ttl::unix_seconds(now());
        // A token whose times cannot be read is fetched again in a minute.
        let at = token_times(&token).map_or(fetched + 60, |t| renew_at(&t, fetched));
        write(&target.out, token.as_bytes())?;
        tracing::info!(
            spiffe_id = %svid.spiffe_id,
            audience = %target.audience,
            file = %target.out.path.display(),
            renew_at = %vouch_core::ttl::rfc3339(at),
            "wrote a JWT-SVID"
        );
        due = Some(due.map_or(at, |d| d.min(at)));
    }
    Ok(due.map(|at| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at).unwrap_or(0))))
}

/// Tells the app: the signal, then the command. One at a time: an X509 rotation and a new secret
/// version at the same moment tell the app twice, one after the other, never at once.
async fn notify(n: &Notify) {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    if let Some((name, sig, target)) = &n.signal {
        let pid = match target {
            Target::Pid(p) => Some(*p),
            Target::PidFile(f) => match std::fs::read_to_string(f) {
                Ok(text) => match text.trim().parse::<i32>() {
                    Ok(p) if p > 0 => Some(p),
                    _ => {
                        tracing::warn!(pid_file = %f.display(), "the pid file holds no pid; nothing signalled");
                        None
                    }
                },
                Err(e) => {
                    tracing::info!(pid_file = %f.display(), "no pid to signal yet ({e}); the app reads the files when it starts");
                    None
                }
            },
        };
        if let Some(pid) = pid {
            match rustix::process::Pid::from_raw(pid).map(|p| rustix::process::kill_process(p, *sig)) {
                Some(Ok(())) => tracing::info!(pid, signal = %name, "signalled"),
                Some(Err(e)) => tracing::warn!(pid, signal = %name, "cannot signal the process: {e}"),
                None => tracing::warn!(pid, "not a process id"),
            }
        }
    }
    if let Some(cmd) = &n.cmd {
        let child = tokio::process::Command::new("sh").arg("-c").arg(cmd).kill_on_drop(true).status();
        match tokio::time::timeout(n.cmd_timeout, child).await {
            Ok(Ok(status)) if status.success() => tracing::info!(%cmd, "command ran"),
            Ok(Ok(status)) => tracing::warn!(%cmd, %status, "the command failed"),
            Ok(Err(e)) => tracing::warn!(%cmd, "cannot run the command: {e}"),
            Err(_) => {
                tracing::warn!(%cmd, "the command did not finish within {}; killed", HumanDuration(n.cmd_timeout))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notify_signals_the_pid_or_the_pid_file_and_runs_the_command_within_its_time() {
        use std::os::unix::process::ExitStatusExt as _;
        let dir = tempfile::tempdir().unwrap();
        let wait_signal = |mut child: std::process::Child| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status.signal();
                }
                assert!(std::time::Instant::now() < deadline, "the process was not signalled");
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        let ran = dir.path().join("ran");
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let n = Notify {
            signal: Some(("SIGTERM".into(), rustix::process::Signal::TERM, Target::Pid(pid))),
            cmd: Some(format!("echo ran >> {}", ran.display())),
            cmd_timeout: Duration::from_secs(10),
        };
        notify(&n).await;
        assert_eq!(wait_signal(child), Some(15));
        assert_eq!(std::fs::read_to_string(&ran).unwrap(), "ran\n");

        // Through a pid file, read at each signal; a missing or garbled one signals nobody.
        let pid_file = dir.path().join("app.pid");
        let n = Notify {
            signal: Some((
                "SIGUSR1".into(),
                rustix::process::Signal::USR1,
                Target::PidFile(pid_file.clone()),
            )),
            cmd: None,
            cmd_timeout: Duration::from_secs(10),
        };
        notify(&n).await;
        std::fs::write(&pid_file, "not a pid\n").unwrap();
        notify(&n).await;
        let child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        std::fs::write(&pid_file, format!("{}\n", child.id())).unwrap();
        notify(&n).await;
        assert_eq!(wait_signal(child), Some(10));

        // A command that overstays its time is killed, and the helper goes on.
        let n = Notify {
            signal: None,
            cmd: Some("exec sleep 30".into()),
            cmd_timeout: Duration::from_millis(200),
        };
        let started = std::time::Instant::now();
        notify(&n).await;
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_bundle_file_holds_federated_bundles_only_when_asked_in_a_stable_order() {
        // Three minimal DER "certificates" (SEQUENCEs), as split_der sees them.
        let (own, b, c) = (vec![0x30, 3, 1, 1, 1], vec![0x30, 3, 2, 2, 2], vec![0x30, 3, 3, 3, 3]);
        let fed: std::collections::HashMap<String, Vec<u8>> =
            [("spiffe://c.org".to_owned(), c.clone()), ("spiffe://b.org".to_owned(), b.clone())].into();
        assert_eq!(bundle_pem(&own, None), pem_certs(&own));
        let want = [pem_certs(&own), pem_certs(&b), pem_certs(&c)].concat();
        assert_eq!(bundle_pem(&own, Some(&fed)), want);
        assert_eq!(bundle_pem(&own, Some(&fed)).matches("BEGIN CERTIFICATE").count(), 3);
    }

    #[test]
    fn jwt_svids_are_renewed_at_half_life() {
        let t = |iat, exp| Times { exp, iat };
        for (times, fetched, want) in [
            (t(Some(1000), 1300), 1000, 1150),
            (t(Some(1000), 1300), 1100, 1150),
            (t(None, 1300), 1100, 1200),
            (t(Some(1000), 1300), 1200, 1201),
            (t(Some(1000), 1300), 1400, 1401),
            (t(Some(2000), 1300), 1000, 1300),
        ] {
            assert_eq!(renew_at(&times, fetched), want);
        }
    }

    #[test]
    fn token_times_read_the_payload_and_refuse_garbage() {
        use base64::Engine as _;
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!("{}.{}.sig", enc("{}"), enc(r#"{"exp":20,"iat":10,"sub":"spiffe://x/y"}"#));
        let times = token_times(&token).unwrap();
        assert_eq!((times.exp, times.iat), (20, Some(10)));
        for bad in ["", "a", "a.!!.c", &format!("a.{}.c", enc("{\"iat\":1}")), &format!("a.{}.c", enc("[]"))]
        {
            assert!(token_times(bad).is_none(), "{bad}");
        }
    }
}
