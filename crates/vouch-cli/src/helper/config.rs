//! What `vouch helper` writes and whom it tells: flags and a TOML file merged into one [`Plan`],
//! checked once at start (a typo or a missing value is an error naming the key, not a default).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use vouch_server::config::HumanDuration;

use super::cloud::{Aws, Azure, Gcp, Outputs};
use super::HelperArgs;

/// The `--config` file. Every key is optional; flags win over the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The format's version; 1 if given.
    version: Option<u32>,
    socket: Option<String>,
    dir: Option<PathBuf>,
    #[serde(default)]
    x509: Option<bool>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    bundle_file: Option<PathBuf>,
    cert_file_mode: Option<u32>,
    key_file_mode: Option<u32>,
    bundle_file_mode: Option<u32>,
    jwt_file_mode: Option<u32>,
    include_federated_bundles: Option<bool>,
    signal: Option<String>,
    pid: Option<i32>,
    pid_file: Option<PathBuf>,
    cmd: Option<String>,
    cmd_timeout: Option<HumanDuration>,
    retry_for: Option<HumanDuration>,
    #[serde(default)]
    jwt: Vec<JwtFile>,
    secret_file_mode: Option<u32>,
    #[serde(default)]
    secret: Vec<SecretFile>,
    aws: Option<Aws>,
    azure: Option<Azure>,
    gcp: Option<Gcp>,
}

/// One `[[jwt]]` table: a JWT-SVID for `audience` kept fresh in `file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    audience: String,
    file: PathBuf,
}

/// One `[[secret]]` table: the secret at `path` kept in `file`, its raw value bytes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretFile {
    path: String,
    file: PathBuf,
    mode: Option<u32>,
    /// `USER`, `USER:GROUP`, `:GROUP`, by name or number.
    owner: Option<String>,
    /// The identity to read as, when the workload has several.
    spiffe_id: Option<String>,
}

/// A secret kept in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretTarget {
    /// The secret.
    pub path: vouch_core::SecretPath,
    /// The file and its mode.
    pub out: Out,
    /// The file's owner and group, where given.
    pub owner: (Option<u32>, Option<u32>),
    /// The identity to read as.
    pub spiffe_id: Option<vouch_core::SpiffeId>,
}

/// The id of `name` in an `/etc/passwd`- or `/etc/group`-shaped `table` (`name:x:id:...`), or the
/// number itself.
fn id_of(kind: &str, name: &str, table: &Path) -> Result<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    let text = std::fs::read_to_string(table).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, id)| id.parse().ok())
        .with_context(|| {
            format!("no {kind} `{name}` in {}; give a name it lists or a number", table.display())
        })
}

/// `USER`, `USER:GROUP` or `:GROUP` (names or numbers) as uid and gid.
pub fn parse_owner(text: &str) -> Result<(Option<u32>, Option<u32>)> {
    let (user, group) = match text.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (text, None),
    };
    if user.is_empty() && group.is_none_or(str::is_empty) {
        bail!("owner `{text}`: write USER, USER:GROUP or :GROUP (names or numbers)");
    }
    let uid = (!user.is_empty()).then(|| id_of("user", user, Path::new("/etc/passwd"))).transpose()?;
    let gid =
        group.filter(|g| !g.is_empty()).map(|g| id_of("group", g, Path::new("/etc/group"))).transpose()?;
    Ok((uid, gid))
}

/// A signal the helper may send, by name.
pub const SIGNALS: [(&str, rustix::process::Signal); 8] = [
    ("HUP", rustix::process::Signal::HUP),
    ("INT", rustix::process::Signal::INT),
    ("QUIT", rustix::process::Signal::QUIT),
    ("USR1", rustix::process::Signal::USR1),
    ("USR2", rustix::process::Signal::USR2),
    ("TERM", rustix::process::Signal::TERM),
    ("WINCH", rustix::process::Signal::WINCH),
    ("ALRM", rustix::process::Signal::ALARM),
];

/// `SIGHUP`, `HUP` or `hup`.
pub fn parse_signal(name: &str) -> Result<(String, rustix::process::Signal)> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
    SIGNALS.iter().find(|(n, _)| *n == bare).map(|(n, s)| (format!("SIG{n}"), *s)).with_context(|| {
        let names: Vec<String> = SIGNALS.iter().map(|(n, _)| format!("SIG{n}")).collect();
        format!("signal `{name}` is not one the helper sends; use one of {}", names.join(", "))
    })
}

/// Which process a signal goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A fixed pid.
    Pid(i32),
    /// The pid in this file, read at every signal (the app may restart and write a new one).
    PidFile(PathBuf),
}

/// A file the helper writes, with its mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    /// Where.
    pub path: PathBuf,
    /// Its exact mode.
    pub mode: u32,
}

/// The X509-SVID's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Files {
    /// The certificate chain, leaf first (PEM).
    pub cert: Out,
    /// The private key (PKCS#8 PEM).
    pub key: Out,
    /// The trust bundle's X.509 authorities (PEM).
    pub bundle: Out,
    /// Whether the bundle file also holds the federated trust domains' authorities.
    pub include_federated: bool,
}

/// A JWT-SVID file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtTarget {
    /// The `aud` asked for.
    pub audience: String,
    /// Where the token goes.
    pub out: Out,
}

/// What happens after the X509-SVID's files change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// A signal to send, and to whom.
    pub signal: Option<(String, rustix::process::Signal, Target)>,
    /// A command run by `sh -c`.
    pub cmd: Option<String>,
    /// How long the command may run before it is killed.
    pub cmd_timeout: Duration,
}

/// Everything the helper does, resolved and checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The Workload API endpoint (`unix:///path` or a path).
    pub socket: String,
    /// The X509-SVID files, unless turned off.
    pub x509: Option<X509Files>,
    /// JWT-SVIDs kept fresh in files (the cloud token files among them).
    pub jwts: Vec<JwtTarget>,
    /// Secrets kept in files, each rewritten when a new version is written.
    pub secrets: Vec<SecretTarget>,
    /// Files written once at start whose content does not change (cloud SDK configuration).
    pub static_files: Vec<(Out, String)>,
    /// Whom to tell after a rotation.
    pub notify: Notify,
    /// Write once and exit.
    pub once: bool,
    /// Give up after this long without reaching the agent (None: never).
    pub retry_for: Option<Duration>,
}

/// Relative paths are under `dir`.
pub fn under(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        dir.join(p)
    }
}

fn mode(key: &str, value: Option<u32>, default: u32) -> Result<u32> {
    let m = value.unwrap_or(default);
    if m > 0o777 || m & 0o400 == 0 {
        bail!("`{key}` = {m:#o}: a file mode of at most 0o777 that its owner can read (write it as 0o640)");
    }
    Ok(m)
}

/// Reads the `--config` file.
pub fn read_file(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let config: FileConfig = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid helper configuration", path.display()))?;
    if let Some(v) = config.version.filter(|v| *v != 1) {
        bail!("{}: `version` = {v}; this vouch reads version 1", path.display());
    }
    Ok(config)
}

/// Merges flags over the file and checks the result.
pub fn plan(args: &HelperArgs, file: FileConfig) -> Result<Plan> {
    let dir = args.dir.clone().or(file.dir).unwrap_or_else(|| PathBuf::from("."));
    let socket = args.socket.clone().or(file.socket).unwrap_or_else(|| super::DEFAULT_SOCKET.to_owned());
    let jwt_mode = mode("jwt_file_mode", file.jwt_file_mode, 0o600)?;

    let x509 = if args.no_x509 || file.x509 == Some(false) {
        None
    } else {
        let pick = |flag: &Option<PathBuf>, key: &Option<PathBuf>, default: &str| {
            under(&dir, flag.as_ref().or(key.as_ref()).map_or(Path::new(default), PathBuf::as_path))
        };
        Some(X509Files {
            cert: Out {
                path: pick(&args.cert_file, &file.cert_file, "svid.pem"),
                mode: mode("cert_file_mode", file.cert_file_mode, 0o644)?,
            },
            key: Out {
                path: pick(&args.key_file, &file.key_file, "svid.key"),
                mode: mode("key_file_mode", file.key_file_mode, 0o600)?,
            },
            bundle: Out {
                path: pick(&args.bundle_file, &file.bundle_file, "bundle.pem"),
                mode: mode("bundle_file_mode", file.bundle_file_mode, 0o644)?,
            },
            include_federated: args.include_federated_bundles || file.include_federated_bundles == Some(true),
        })
    };

    let mut jwts = Vec::new();
    for spec in &args.jwt {
        let (audience, path) = spec.split_once('=').with_context(|| {
            format!("--jwt `{spec}`: write it as AUDIENCE=FILE (e.g. --jwt openbao=openbao.jwt)")
        })?;
        jwts.push(JwtTarget {
            audience: audience.to_owned(),
            out: Out { path: under(&dir, Path::new(path)), mode: jwt_mode },
        });
    }
    for j in &file.jwt {
        jwts.push(JwtTarget {
            audience: j.audience.clone(),
            out: Out { path: under(&dir, &j.file), mode: jwt_mode },
        });
    }
    let mut static_files = Vec::new();
    let mut to = Outputs { dir: &dir, mode: jwt_mode, jwts: &mut jwts, files: &mut static_files };
    if let Some(aws) = &file.aws {
        aws.add(&mut to)?;
    }
    if let Some(azure) = &file.azure {
        azure.add(&mut to)?;
    }
    if let Some(gcp) = &file.gcp {
        gcp.add(&mut to)?;
    }
    for j in &jwts {
        if j.audience.is_empty() || j.audience.chars().any(char::is_control) {
            bail!(
                "JWT audience `{}` for {}: empty or with control characters",
                j.audience.escape_debug(),
                j.out.path.display()
            );
        }
    }
    let secret_mode = mode("secret_file_mode", file.secret_file_mode, 0o600)?;
    let secret_path = |key: &str, text: &str| {
        vouch_core::SecretPath::parse(text).with_context(|| format!("{key}: secret path `{text}`"))
    };
    let mut secrets = Vec::new();
    for spec in &args.secret {
        let (path, out) = spec.split_once('=').with_context(|| {
            format!(
                "--secret `{spec}`: write it as PATH=FILE (e.g. --secret payments/db/password=db-password)"
            )
        })?;
        secrets.push(SecretTarget {
            path: secret_path("--secret", path)?,
            out: Out { path: under(&dir, Path::new(out)), mode: secret_mode },
            owner: (None, None),
            spiffe_id: None,
        });
    }
    for f in &file.secret {
        let owner = f.owner.as_deref().map(parse_owner).transpose()?.unwrap_or((None, None));
        let spiffe_id = f
            .spiffe_id
            .as_deref()
            .map(|t| vouch_core::SpiffeId::parse(t).with_context(|| format!("[[secret]] spiffe_id `{t}`")))
            .transpose()?;
        secrets.push(SecretTarget {
            path: secret_path("[[secret]] path", &f.path)?,
            out: Out {
                path: under(&dir, &f.file),
                mode: mode("[[secret]] mode", f.mode.or(file.secret_file_mode), 0o600)?,
            },
            owner,
            spiffe_id,
        });
    }
    let mut paths: Vec<&Path> = jwts.iter().map(|j| j.out.path.as_path()).collect();
    paths.extend(secrets.iter().map(|s| s.out.path.as_path()));
    paths.extend(static_files.iter().map(|(o, _)| o.path.as_path()));
    if let Some(x) = &x509 {
        paths.extend([x.cert.path.as_path(), x.key.path.as_path(), x.bundle.path.as_path()]);
    }
    if paths.is_empty() {
        bail!(
            "nothing to write: the X509-SVID is turned off and no JWT-SVID, cloud token file or secret is configured"
        );
    }
    paths.sort();
    if let Some(w) = paths.windows(2).find(|w| w[0] == w[1]) {
        bail!("{} is configured twice; give every file its own path", w[0].display());
    }

    let signal_name = args.signal.clone().or(file.signal);
    let target = match (args.pid.or(file.pid), args.pid_file.clone().or(file.pid_file)) {
        (Some(_), Some(_)) => bail!("--pid and --pid-file exclude each other: give one"),
        (Some(pid), None) if pid <= 0 => bail!("--pid {pid}: a process id is a positive number"),
        (Some(pid), None) => Some(Target::Pid(pid)),
        (None, Some(f)) => Some(Target::PidFile(f)),
        (None, None) => None,
    };
    let signal = match (signal_name, target) {
        (Some(name), Some(target)) => {
            let (name, sig) = parse_signal(&name)?;
            Some((name, sig, target))
        }
        (Some(_), None) => bail!("--signal needs --pid or --pid-file: which process is to be told?"),
        (None, Some(_)) => bail!("--pid/--pid-file need --signal (e.g. --signal SIGHUP)"),
        (None, None) => None,
    };
    let cmd = args.cmd.clone().or(file.cmd).filter(|c| !c.trim().is_empty());
    let cmd_timeout = args.cmd_timeout.or(file.cmd_timeout).map_or(Duration::from_secs(60), |d| d.0);
    let once = args.once;
    let retry_for =
        args.retry_for.or(file.retry_for).map(|d| d.0).or(once.then_some(Duration::from_secs(60)));
    Ok(Plan {
        socket,
        x509,
        jwts,
        secrets,
        static_files,
        notify: Notify { signal, cmd, cmd_timeout },
        once,
        retry_for,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: HelperArgs,
    }

    fn plan_of(flags: &[&str], toml: &str) -> Result<Plan> {
        let w = Wrap::try_parse_from([&["t"], flags].concat()).unwrap();
        let file: FileConfig = toml::from_str(toml)?;
        plan(&w.args, file)
    }

    #[test]
    fn defaults_flags_and_file_merge() {
        let p = plan_of(&["--dir", "/run/svid"], "").unwrap();
        let x = p.x509.unwrap();
        assert_eq!((x.cert.path.to_str(), x.cert.mode), (Some("/run/svid/svid.pem"), 0o644));
        assert_eq!((x.key.path.to_str(), x.key.mode), (Some("/run/svid/svid.key"), 0o600));
        assert_eq!(x.bundle.path.to_str(), Some("/run/svid/bundle.pem"));
        assert!(p.jwts.is_empty() && p.notify.signal.is_none() && !p.once && p.retry_for.is_none());

        let p = plan_of(
            &["--signal", "hup", "--pid-file", "/run/nginx.pid", "--jwt", "db=db.jwt", "--once"],
            "dir = \"/d\"\nkey_file = \"/keys/k.pem\"\nkey_file_mode = 0o640\n[[jwt]]\naudience = \"vault\"\nfile = \"v.jwt\"\n",
        )
        .unwrap();
        assert_eq!(p.x509.as_ref().unwrap().key, Out { path: "/keys/k.pem".into(), mode: 0o640 });
        let jwts: Vec<(&str, &str)> =
            p.jwts.iter().map(|j| (j.audience.as_str(), j.out.path.to_str().unwrap())).collect();
        assert_eq!(jwts, [("db", "/d/db.jwt"), ("vault", "/d/v.jwt")]);
        let (name, sig, target) = p.notify.signal.unwrap();
        assert_eq!(
            (name.as_str(), sig, target),
            ("SIGHUP", rustix::process::Signal::HUP, Target::PidFile("/run/nginx.pid".into()))
        );
        assert_eq!(p.retry_for, Some(Duration::from_secs(60)), "--once gives up after a minute by default");
    }

    #[test]
    fn secrets_come_from_flags_and_tables_with_modes_and_owners() {
        let p = plan_of(
            &["--no-x509", "--dir", "/run/s", "--secret", "app/db=db,app/key=/etc/k"],
            "secret_file_mode = 0o640\n[[secret]]\npath = \"app/tls\"\nfile = \"tls.pem\"\nmode = 0o600\nowner = \"0:0\"\n\
             spiffe_id = \"spiffe://example.org/app\"\n[[secret]]\npath = \"app/x\"\nfile = \"x\"\nowner = \":1234\"\n",
        )
        .unwrap();
        assert!(p.x509.is_none());
        type Owner = (Option<u32>, Option<u32>);
        let got: Vec<(&str, &str, u32, Owner)> = p
            .secrets
            .iter()
            .map(|s| (s.path.as_str(), s.out.path.to_str().unwrap(), s.out.mode, s.owner))
            .collect();
        assert_eq!(
            got,
            [
                ("app/db", "/run/s/db", 0o640, (None, None)),
                ("app/key", "/etc/k", 0o640, (None, None)),
                ("app/tls", "/run/s/tls.pem", 0o600, (Some(0), Some(0))),
                ("app/x", "/run/s/x", 0o640, (None, Some(1234))),
            ]
        );
        assert_eq!(
            p.secrets[2].spiffe_id.as_ref().map(|i| i.to_string()).as_deref(),
            Some("spiffe://example.org/app")
        );
        let p = plan_of(&["--no-x509", "--secret", "app/db=db"], "").unwrap();
        assert_eq!(p.secrets[0].out.mode, 0o600, "0600 by default");
        assert_eq!(parse_owner("root").unwrap(), (Some(0), None));
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        for (flags, toml, want) in [
            (&["--signal", "SIGFOO", "--pid", "1"][..], "", "signal `SIGFOO` is not one"),
            (&["--signal", "SIGHUP"][..], "", "--signal needs --pid or --pid-file"),
            (&["--pid", "7"][..], "", "need --signal"),
            (&["--pid", "7", "--pid-file", "p", "--signal", "HUP"][..], "", "exclude each other"),
            (&["--pid", "0", "--signal", "HUP"][..], "", "positive"),
            (&["--jwt", "nofile"][..], "", "AUDIENCE=FILE"),
            (&["--jwt", "=a.jwt"][..], "", "empty or with control characters"),
            (&["--no-x509"][..], "", "nothing to write"),
            (&["--jwt", "a=svid.pem"][..], "", "configured twice"),
            (&[][..], "key_file_mode = 0o1777", "key_file_mode"),
            (&[][..], "key_file_mode = 0o200", "key_file_mode"),
            (&["--secret", "app/db"][..], "", "PATH=FILE"),
            (&["--secret", "../etc=x"][..], "", "secret path `../etc`"),
            (&["--secret", "a=svid.pem"][..], "", "configured twice"),
            (&["--no-x509"][..], "[[secret]]\npath = \"a\"\nfile = \"a\"\nmode = 0o1600", "[[secret]] mode"),
            (
                &["--no-x509"][..],
                "[[secret]]\npath = \"a\"\nfile = \"a\"\nowner = \"no-such-user-here\"",
                "no user `no-such-user-here`",
            ),
            (&["--no-x509"][..], "[[secret]]\npath = \"a\"\nfile = \"a\"\nowner = \":\"", "USER:GROUP"),
        ] {
            let err = format!("{:#}", plan_of(flags, toml).unwrap_err());
            assert!(err.contains(want), "{flags:?} {toml}: {err}");
        }
        let err = toml::from_str::<FileConfig>("certfile = \"x\"").unwrap_err().to_string();
        assert!(err.contains("unknown field `certfile`"), "{err}");
    }
}
