//! Agent configuration: versioned TOML with unknown fields refused; every setting also from a
//! `VOUCH_AGENT_...` environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use vouch_core::TrustDomain;
use zeroize::Zeroizing;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("agent config: {0}")]
pub struct ConfigError(pub String);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    version: Option<u32>,
    trust_domain: Option<String>,
    /// One `host:port`, or a list of them (replicas, tried in turn).
    server: Option<toml::Value>,
    server_order: Option<String>,
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    join_token: Option<String>,
    bundle: Option<PathBuf>,
    k8s_psat_token: Option<PathBuf>,
    k8s_cluster: Option<String>,
    x509pop_cert: Option<PathBuf>,
    x509pop_key: Option<PathBuf>,
    docker_socket: Option<PathBuf>,
    podman_socket: Option<PathBuf>,
    containerd_socket: Option<PathBuf>,
    kubelet_url: Option<String>,
    kubelet_token_file: Option<PathBuf>,
    kubelet_ca: Option<PathBuf>,
    kubelet_insecure_skip_verify: Option<bool>,
    metrics_listen: Option<String>,
    log_format: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_uid: Option<usize>,
}

/// Which replica an agent tries first when several are configured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServerOrder {
    /// Each agent starts at a random place in the list (chosen once, at start), so a fleet
    /// sharing one configuration (a DaemonSet) spreads over the replicas instead of all syncing
    /// with the first.
    #[default]
    Spread,
    /// The list is a preference: the first replica that answers, in the order given (a nearby
    /// replica first, a remote one as a fallback).
    Listed,
}

impl std::str::FromStr for ServerOrder {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "spread" => Ok(Self::Spread),
            "listed" => Ok(Self::Listed),
            other => Err(ConfigError(format!(
                "server_order `{other}`: use spread (each agent starts at a random replica) or listed (the order given is a preference)"
            ))),
        }
    }
}

/// How the agent writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(ConfigError(format!("log_format `{other}`: use text or json"))),
        }
    }
}

/// How the agent proves its node to the server when it has no valid saved SVID. One method, chosen
/// when the configuration is loaded: a configuration naming two is refused there, not resolved by a
/// precedence rule nobody remembers.
#[derive(Clone)]
pub enum NodeAttestation {
    /// None configured: the agent starts only with a valid saved SVID.
    SavedOnly,
    /// A single-use join token (`vouch token create`).
    JoinToken(Zeroizing<String>),
    /// A Kubernetes projected service-account token, read at attestation time (the kubelet rotates
    /// the file).
    K8sPsat {
        /// The token file.
        token_file: PathBuf,
        /// The cluster name the server knows the token's issuer by.
        cluster: String,
    },
    /// A node certificate whose key the agent proves it holds.
    X509Pop {
        /// The node certificate chain (PEM).
        cert: PathBuf,
        /// The node key (PEM, EC P-256 or P-384).
        key: PathBuf,
    },
}

impl NodeAttestation {
    /// The method's name, as the server records it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SavedOnly => "none",
            Self::JoinToken(_) => "join_token",
            Self::K8sPsat { .. } => "k8s_psat",
            Self::X509Pop { .. } => "x509pop",
        }
    }

    fn from_settings(
        join_token: Option<String>,
        psat: Option<PathBuf>,
        cluster: Option<String>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let x509pop = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError("x509pop_cert needs x509pop_key: the node key (PEM)".into()))
            }
            (None, Some(_)) => {
                return Err(ConfigError(
                    "x509pop_key needs x509pop_cert: the node certificate chain (PEM)".into(),
                ))
            }
        };
        let given =
            usize::from(join_token.is_some()) + usize::from(psat.is_some()) + usize::from(x509pop.is_some());
        if given > 1 {
            return Err(ConfigError(
                "choose one node attestation method: join_token, k8s_psat_token (with k8s_cluster), or x509pop_cert with x509pop_key".into(),
            ));
        }
        Ok(match (join_token, psat, x509pop) {
            (Some(token), _, _) => Self::JoinToken(Zeroizing::new(token)),
            (_, Some(token_file), _) => Self::K8sPsat {
                token_file,
                cluster: cluster.ok_or_else(|| {
                    ConfigError(
                        "k8s_psat_token needs k8s_cluster: the cluster name configured on the server".into(),
                    )
                })?,
            },
            (_, _, Some((cert, key))) => Self::X509Pop { cert, key },
            _ => Self::SavedOnly,
        })
    }
}

impl std::fmt::Debug for NodeAttestation {
    // By hand: a join token is a credential and must never reach a log through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SavedOnly => f.write_str("SavedOnly"),
            Self::JoinToken(_) => f.write_str("JoinToken(<redacted>)"),
            Self::K8sPsat { token_file, cluster } => {
                f.debug_struct("K8sPsat").field("token_file", token_file).field("cluster", cluster).finish()
            }
            Self::X509Pop { cert, key } => {
                f.debug_struct("X509Pop").field("cert", cert).field("key", key).finish()
            }
        }
    }
}

/// The effective agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// The server's mTLS addresses, at least one, no two alike: replicas the agent fails over
    /// between, tried in this order (see [`crate::state::ServerLink`]).
    pub servers: Vec<ServerAddr>,
    /// Which of `servers` is tried first.
    pub server_order: ServerOrder,
    /// Where the agent keeps its key, SVID and bundle.
    pub data_dir: PathBuf,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// How the agent attests its node when it has no valid saved SVID.
    pub node_attestation: NodeAttestation,
    /// The bundle (PEM) that bootstraps trust in the server on first start.
    pub bundle: Option<PathBuf>,
    /// Docker Engine API socket (`off` to not use Docker).
    pub docker_socket: Option<PathBuf>,
    /// podman's Docker-compatible API socket (`off` to not use podman).
    pub podman_socket: Option<PathBuf>,
    /// containerd's gRPC API socket (`off` to not use containerd).
    pub containerd_socket: Option<PathBuf>,
    /// The node's kubelet, for `k8s:` selectors (None: not in Kubernetes).
    pub kubelet: Option<crate::attest::KubeletConfig>,
    /// Where to serve `GET /metrics` over plain HTTP (None: not served; the admin socket still
    /// answers `vouch agent metrics`). Meant for loopback or a node-local scraper: the metrics say
    /// nothing secret, but the listener has no authentication.
    pub metrics_listen: Option<SocketAddr>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Most open Workload API connections (None: from the descriptor limit, see
    /// [`crate::conn_limits::Limits::for_nofile`]).
    pub max_connections: Option<usize>,
    /// Most open Workload API connections from one uid (None: half the total).
    pub max_connections_per_uid: Option<usize>,
}

impl AgentConfig {
    /// The Workload API connection bounds: the configured ones, else from the process's current
    /// descriptor limit (which [`crate::Agent::start`] raises first). Reads the limit, changes
    /// nothing.
    pub fn connection_limits(&self) -> crate::conn_limits::Limits {
        let base = crate::conn_limits::Limits::from_process();
        let total = self.max_connections.unwrap_or(base.total);
        let per_uid = self.max_connections_per_uid.unwrap_or(if self.max_connections.is_some() {
            (total / 2).max(1)
        } else {
            base.per_uid
        });
        crate::conn_limits::Limits { total, per_uid: per_uid.min(total) }
    }

    /// Defaults, then the file (if any), then `VOUCH_AGENT_*` variables through `env`.
    pub fn load(path: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let file: FileConfig = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
                toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", p.display())))?
            }
            None => FileConfig::default(),
        };
        if file.version.is_some_and(|v| v != 1) {
            return Err(ConfigError("version must be 1".into()));
        }
        let kubelet = kubelet_setting(&file, env)?;
        let metrics_listen = env("VOUCH_AGENT_METRICS_LISTEN")
            .or(file.metrics_listen)
            .map(|v| {
                v.parse::<SocketAddr>().map_err(|e| {
                    ConfigError(format!(
                        "metrics_listen `{v}`: {e}; give an address and port, e.g. 127.0.0.1:9988"
                    ))
                })
            })
            .transpose()?;
        let log_format = env("VOUCH_AGENT_LOG_FORMAT")
            .or(file.log_format)
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or_default();
        let node_attestation = NodeAttestation::from_settings(
            env("VOUCH_AGENT_JOIN_TOKEN").or(file.join_token),
            env("VOUCH_AGENT_K8S_PSAT_TOKEN").map(PathBuf::from).or(file.k8s_psat_token),
            env("VOUCH_AGENT_K8S_CLUSTER").or(file.k8s_cluster),
            env("VOUCH_AGENT_X509POP_CERT").map(PathBuf::from).or(file.x509pop_cert),
            env("VOUCH_AGENT_X509POP_KEY").map(PathBuf::from).or(file.x509pop_key),
        )?;
        let count = |var: &str, name: &str, file: Option<usize>| -> Result<Option<usize>, ConfigError> {
            let n =
                match env(var) {
                    Some(v) => Some(v.parse::<usize>().map_err(|_| {
                        ConfigError(format!("{name} `{v}`: give a whole number of connections"))
                    })?),
                    None => file,
                };
            match n {
                Some(0) => Err(ConfigError(format!("{name} must be at least 1"))),
                n => Ok(n),
            }
        };
        let max_connections = count("VOUCH_AGENT_MAX_CONNECTIONS", "max_connections", file.max_connections)?;
        let max_connections_per_uid = count(
            "VOUCH_AGENT_MAX_CONNECTIONS_PER_UID",
            "max_connections_per_uid",
            file.max_connections_per_uid,
        )?;
        let td =
            env("VOUCH_AGENT_TRUST_DOMAIN").or(file.trust_domain).unwrap_or_else(|| "example.org".into());
        let trust_domain =
            TrustDomain::new(&td).map_err(|e| ConfigError(format!("trust_domain `{td}`: {e}")))?;
        let servers = match env("VOUCH_AGENT_SERVER") {
            Some(list) => ServerAddr::parse_list(list.split(',').map(str::trim), "VOUCH_AGENT_SERVER")?,
            None => server_setting(file.server)?,
        };
        let server_order = env("VOUCH_AGENT_SERVER_ORDER")
            .or(file.server_order)
            .map(|v| v.parse())
            .transpose()?
            .unwrap_or_default();
        let data_dir = env("VOUCH_AGENT_DATA_DIR")
            .map(PathBuf::from)
            .or(file.data_dir)
            .unwrap_or_else(|| "vouch-agent-data".into());
        let socket = env("VOUCH_AGENT_SOCKET")
            .map(PathBuf::from)
            .or(file.socket)
            .unwrap_or_else(|| data_dir.join("api.sock"));
        Ok(Self {
            trust_domain,
            servers,
            server_order,
            socket,
            node_attestation,
            bundle: env("VOUCH_AGENT_BUNDLE").map(PathBuf::from).or(file.bundle),
            docker_socket: socket_setting(
                env("VOUCH_AGENT_DOCKER_SOCKET").map(PathBuf::from).or(file.docker_socket),
                "/var/run/docker.sock",
            ),
            podman_socket: socket_setting(
                env("VOUCH_AGENT_PODMAN_SOCKET").map(PathBuf::from).or(file.podman_socket),
                "/run/podman/podman.sock",
            ),
            containerd_socket: socket_setting(
                env("VOUCH_AGENT_CONTAINERD_SOCKET").map(PathBuf::from).or(file.containerd_socket),
                "/run/containerd/containerd.sock",
            ),
            kubelet,
            metrics_listen,
            log_format,
            max_connections,
            max_connections_per_uid,
            data_dir,
        })
    }
}

/// A server address as configured: `host:port`, the host a name, an IPv4 address or a bracketed
/// IPv6 address. A name is resolved when the agent connects, and every address it resolves to
/// counts as one more replica.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    host: String,
    port: u16,
}

impl ServerAddr {
    /// The host: a name or an IP address (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Parses a non-empty list of distinct addresses; `what` names the setting in errors.
    fn parse_list<'a>(list: impl IntoIterator<Item = &'a str>, what: &str) -> Result<Vec<Self>, ConfigError> {
        let mut servers: Vec<Self> = Vec::new();
        for text in list {
            let addr: Self = text.parse().map_err(|ConfigError(e)| ConfigError(format!("{what}: {e}")))?;
            if servers.contains(&addr) {
                return Err(ConfigError(format!("{what}: `{addr}` is listed twice")));
            }
            servers.push(addr);
        }
        if servers.is_empty() {
            return Err(ConfigError(format!(
                "{what} is empty: give the server's mTLS address, e.g. 127.0.0.1:8443, or several"
            )));
        }
        Ok(servers)
    }
}

impl std::str::FromStr for ServerAddr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: &str| {
            ConfigError(format!(
                "server address `{s}`: {why}; give host:port, e.g. vouch.example.org:8443, 10.0.0.5:8443 or [fd00::5]:8443"
            ))
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port =
            port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port is not 1 to 65535"))?;
        let host = match host.strip_prefix('[') {
            Some(v6) => {
                let v6 = v6.strip_suffix(']').ok_or_else(|| bad("unclosed `[`"))?;
                v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad("not an IPv6 address in brackets"))?;
                v6
            }
            // An IPv6 address must be bracketed, else its colons are ambiguous with the port's.
            None if host.contains(':') => return Err(bad("an IPv6 address must be in brackets")),
            None => host,
        };
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
        if !name_ok {
            return Err(bad("the host is not a name or an IP address"));
        }
        Ok(Self { host: host.to_owned(), port })
    }
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The `server` setting of the file: one address or a list.
fn server_setting(value: Option<toml::Value>) -> Result<Vec<ServerAddr>, ConfigError> {
    let shape = || {
        ConfigError(
            "server: give the server's mTLS address, `server = \"vouch.example.org:8443\"`, or a list of replicas, `server = [\"a:8443\", \"b:8443\"]`"
                .into(),
        )
    };
    match value {
        None => Err(ConfigError(
            "server is required: the server's mTLS address, e.g. 127.0.0.1:8443 (or several, for replicas)"
                .into(),
        )),
        Some(toml::Value::String(one)) => ServerAddr::parse_list([one.as_str()], "server"),
        Some(toml::Value::Array(list)) => {
            let texts: Vec<&str> =
                list.iter().map(|v| v.as_str().ok_or_else(shape)).collect::<Result<_, _>>()?;
            ServerAddr::parse_list(texts, "server")
        }
        Some(_) => Err(shape()),
    }
}

fn kubelet_setting(
    file: &FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<crate::attest::KubeletConfig>, ConfigError> {
    let Some(url) = env("VOUCH_AGENT_KUBELET_URL").or_else(|| file.kubelet_url.clone()) else {
        return Ok(None);
    };
    let insecure = match env("VOUCH_AGENT_KUBELET_INSECURE_SKIP_VERIFY") {
        Some(v) => match v.as_str() {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                return Err(ConfigError(format!(
                    "VOUCH_AGENT_KUBELET_INSECURE_SKIP_VERIFY `{other}`: use true or false"
                )))
            }
        },
        None => file.kubelet_insecure_skip_verify.unwrap_or(false),
    };
    let config = crate::attest::KubeletConfig {
        url,
        token_file: env("VOUCH_AGENT_KUBELET_TOKEN_FILE")
            .map(PathBuf::from)
            .or_else(|| file.kubelet_token_file.clone()),
        ca_file: env("VOUCH_AGENT_KUBELET_CA").map(PathBuf::from).or_else(|| file.kubelet_ca.clone()),
        insecure_skip_verify: insecure,
    };
    // Checked now, so a typo stops the agent at start rather than refusing every pod later.
    crate::attest::KubeletClient::new(config.clone()).map_err(|e| ConfigError(e.to_string()))?;
    Ok(Some(config))
}

/// A runtime socket: the given path, `off` for none, or the runtime's usual path.
fn socket_setting(given: Option<PathBuf>, default: &str) -> Option<PathBuf> {
    match given {
        Some(p) if p.as_os_str() == "off" => None,
        Some(p) => Some(p),
        None => Some(PathBuf::from(default)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(file: &str, vars: &[(&str, &str)]) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().map_err(|e| ConfigError(e.to_string()))?;
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, file).map_err(|e| ConfigError(e.to_string()))?;
        let env = |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned());
        AgentConfig::load(Some(&path), &env)
    }

    #[test]
    fn metrics_listener_and_log_format_from_file_and_env() {
        let base = "version = 1\nserver = \"127.0.0.1:8443\"\n";
        let c = load(base, &[]).unwrap();
        assert_eq!((c.metrics_listen, c.log_format), (None, LogFormat::Text), "off and text by default");
        let c = load(&format!("{base}metrics_listen = \"127.0.0.1:9988\"\nlog_format = \"json\"\n"), &[])
            .unwrap();
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9988".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        let c = load(
            &format!("{base}metrics_listen = \"127.0.0.1:9988\"\n"),
            &[("VOUCH_AGENT_METRICS_LISTEN", "[::1]:7000"), ("VOUCH_AGENT_LOG_FORMAT", "json")],
        )
        .unwrap();
        assert_eq!(c.metrics_listen, Some("[::1]:7000".parse().unwrap()), "the variable wins");
        assert_eq!(c.log_format, LogFormat::Json);
        let err = load(&format!("{base}metrics_listen = \"localhost\"\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("metrics_listen `localhost`"), "{err}");
        let err = load(base, &[("VOUCH_AGENT_LOG_FORMAT", "xml")]).unwrap_err().to_string();
        assert!(err.contains("log_format `xml`: use text or json"), "{err}");
        let err = load(&format!("{base}log_fromat = \"json\"\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("unknown field"), "a typo is an error: {err}");
    }

    #[test]
    fn one_node_attestation_method_decided_at_load() {
        let base = "version = 1\nserver = \"127.0.0.1:8443\"\n";
        assert!(matches!(load(base, &[]).unwrap().node_attestation, NodeAttestation::SavedOnly));
        let c = load(base, &[("VOUCH_AGENT_JOIN_TOKEN", "s3cret-token")]).unwrap();
        assert!(matches!(&c.node_attestation, NodeAttestation::JoinToken(t) if t.as_str() == "s3cret-token"));
        assert!(!format!("{c:?}").contains("s3cret-token"), "the token never shows in Debug output");
        let c = load(&format!("{base}k8s_psat_token = \"/t\"\nk8s_cluster = \"prod\"\n"), &[]).unwrap();
        assert!(matches!(&c.node_attestation, NodeAttestation::K8sPsat { cluster, .. } if cluster == "prod"));
        let c = load(&format!("{base}x509pop_cert = \"/c\"\nx509pop_key = \"/k\"\n"), &[]).unwrap();
        assert_eq!(c.node_attestation.name(), "x509pop");
        let refused =
            |file: &str, vars: &[(&str, &str)]| load(&format!("{base}{file}"), vars).unwrap_err().to_string();
        let two =
            refused("k8s_psat_token = \"/t\"\nk8s_cluster = \"prod\"\n", &[("VOUCH_AGENT_JOIN_TOKEN", "x")]);
        assert!(two.contains("choose one node attestation method"), "{two}");
        assert!(refused("k8s_psat_token = \"/t\"\n", &[]).contains("needs k8s_cluster"));
        assert!(refused("x509pop_cert = \"/c\"\n", &[]).contains("needs x509pop_key"));
        assert!(refused("x509pop_key = \"/k\"\n", &[]).contains("needs x509pop_cert"));
    }

    #[test]
    fn one_server_or_several_from_file_and_env() {
        let servers = |c: AgentConfig| c.servers.iter().map(ToString::to_string).collect::<Vec<_>>();
        let one = load("version = 1\nserver = \"127.0.0.1:8443\"\n", &[]).unwrap();
        assert_eq!(servers(one), ["127.0.0.1:8443"], "the single string still works");
        let file = "version = 1\nserver = [\"a.example:8443\", \"10.0.0.2:8443\", \"[fd00::5]:8443\"]\n";
        let many = load(file, &[]).unwrap();
        assert_eq!(servers(many), ["a.example:8443", "10.0.0.2:8443", "[fd00::5]:8443"]);
        assert_eq!(load(file, &[]).unwrap().servers[2].host(), "fd00::5");
        let env = load(file, &[("VOUCH_AGENT_SERVER", "b:1, c:2")]).unwrap();
        assert_eq!(servers(env), ["b:1", "c:2"], "the variable wins, comma-separated");
        assert_eq!(load(file, &[]).unwrap().server_order, ServerOrder::Spread, "spread by default");
        let listed = load(file, &[("VOUCH_AGENT_SERVER_ORDER", "listed")]).unwrap();
        assert_eq!(listed.server_order, ServerOrder::Listed);
        let bad = load(file, &[("VOUCH_AGENT_SERVER_ORDER", "random")]).unwrap_err().to_string();
        assert!(bad.contains("server_order `random`") && bad.contains("spread"), "{bad}");

        let refused = |file: &str, vars: &[(&str, &str)]| load(file, vars).unwrap_err().to_string();
        let cases = [
            ("server = []", "server is empty"),
            ("server = [1]", "or a list of replicas"),
            ("server = 8443", "or a list of replicas"),
            ("server = \"a:8443\"\nserver = \"b:8443\"", "duplicate key"),
            ("server = [\"a:8443\", \"a:8443\"]", "`a:8443` is listed twice"),
            ("server = [\"a:8443\", \"\"]", "server address ``: empty"),
            ("server = \"a\"", "server address `a`: no port"),
            ("server = \"a:0\"", "the port is not 1 to 65535"),
            ("server = \"a:99999\"", "the port is not 1 to 65535"),
            ("server = \":8443\"", "not a name or an IP address"),
            ("server = \"a b:8443\"", "not a name or an IP address"),
            ("server = \"fd00::5:8443\"", "must be in brackets"),
            ("server = \"[fd00::5:8443\"", "unclosed"),
            ("server = \"[nope]:8443\"", "not an IPv6 address"),
            ("", "server is required"),
        ];
        for (line, expected) in cases {
            let err = refused(&format!("version = 1\n{line}\n"), &[]);
            assert!(err.contains(expected), "{line}: {err}");
        }
        for (var, expected) in [("a:1,,b:2", "server address ``: empty"), ("", "empty"), ("a:1,a:1", "twice")]
        {
            let err = refused("version = 1\n", &[("VOUCH_AGENT_SERVER", var)]);
            assert!(err.contains(expected) && err.contains("VOUCH_AGENT_SERVER"), "{var}: {err}");
        }
    }
}
