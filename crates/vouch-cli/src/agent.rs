//! `vouch agent ...`: run the agent, call its Workload API as a workload would, and manage agents
//! on the server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vouch_api::explain::{AdminAnswer, AdminRequest, Explanation, Health, MetricsText, SyncStatus};
use vouch_core::SpiffeId;
use vouch_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use vouch_proto::workload::{JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest};

use crate::output::{self, Output};
use crate::Connect;

/// Agent subcommands.
#[derive(Subcommand)]
pub enum AgentCommand {
    /// Run the agent in the foreground until SIGINT or SIGTERM.
    Run(Box<AgentRun>),
    /// Call the Workload API on the agent socket, as a workload would.
    Api {
        #[command(subcommand)]
        command: ApiCommand,
        /// The agent socket (also `SPIFFE_ENDPOINT_SOCKET`, e.g. unix:///run/vouch/api.sock).
        #[arg(
            long,
            env = "SPIFFE_ENDPOINT_SOCKET",
            default_value = "vouch-agent-data/api.sock",
            global = true
        )]
        socket: String,
    },
    /// Why a process does or does not get an identity: the selectors the agent finds for it and, for
    /// every entry the agent knows, whether it matched or which selectors were missing.
    Explain {
        /// The process to explain.
        #[arg(long)]
        pid: i32,
        /// The agent's admin socket.
        #[arg(long, env = "VOUCH_AGENT_ADMIN_SOCKET", default_value = "vouch-agent-data/admin.sock")]
        admin_socket: PathBuf,
    },
    /// Decide on the node, from the policy set the agent synced from the server, whether a workload
    /// it serves may do an action to a resource (exit 0 allow, 3 deny). See docs/policy.md.
    Authorize {
        #[command(flatten)]
        request: crate::policy::RequestArgs,
        /// The agent's admin socket.
        #[arg(long, env = "VOUCH_AGENT_ADMIN_SOCKET", default_value = "vouch-agent-data/admin.sock")]
        admin_socket: PathBuf,
    },
    /// Exit 0 if the agent is up and ready (Workload API socket served, agent SVID valid), 1 if not
    /// or if it cannot be reached; one line says why and whether the agent is connected to the
    /// server or serving cached SVIDs (still ready: workloads keep their SVIDs until they expire).
    Healthcheck {
        /// The agent's admin socket.
        #[arg(long, env = "VOUCH_AGENT_ADMIN_SOCKET", default_value = "vouch-agent-data/admin.sock")]
        admin_socket: PathBuf,
    },
    /// Print the agent's Prometheus metrics (the same text as its `--metrics-listen` endpoint).
    Metrics {
        /// The agent's admin socket.
        #[arg(long, env = "VOUCH_AGENT_ADMIN_SOCKET", default_value = "vouch-agent-data/admin.sock")]
        admin_socket: PathBuf,
    },
    /// List the agents known to the server, with the node groups each belongs to.
    List {
        #[command(flatten)]
        connect: Connect,
    },
    /// Show one agent: how it attested, its node selectors (what node groups match on) and the node
    /// groups it belongs to.
    Show {
        /// The agent's SPIFFE ID.
        spiffe_id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Evict an agent: its SVID stops working and it must attest again.
    Evict {
        /// The agent's SPIFFE ID.
        spiffe_id: String,
        #[command(flatten)]
        connect: Connect,
    },
    /// Ban an agent: it may not attest again under this SPIFFE ID.
    Ban {
        /// The agent's SPIFFE ID.
        spiffe_id: String,
        #[command(flatten)]
        connect: Connect,
    },
}

/// `vouch agent run` options; each also from a `VOUCH_AGENT_*` variable or the config file.
#[derive(Args)]
pub struct AgentRun {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', env = "VOUCH_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The server's mTLS address (host:port), or several separated by commas: replicas on one
    /// PostgreSQL, the agent failing over when one dies. A name that resolves to several
    /// addresses counts as several.
    #[arg(long)]
    server: Option<String>,
    /// Which replica is tried first: `spread` (default: each agent starts at a random one, so a
    /// fleet with one configuration spreads over them) or `listed` (the order given is a
    /// preference).
    #[arg(long)]
    server_order: Option<String>,
    /// Trust domain.
    #[arg(long)]
    trust_domain: Option<String>,
    /// Where the agent keeps its key (0600), SVID and bundle.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The Workload API socket to serve.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Join token for the first attestation (from `vouch token create`).
    #[arg(long)]
    join_token: Option<String>,
    /// The server's bundle (PEM) to trust on first start (from `vouch bundle show`).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// In Kubernetes: a projected service-account token file for PSAT node attestation.
    #[arg(long)]
    k8s_psat_token: Option<PathBuf>,
    /// In Kubernetes: the cluster name the server is configured with.
    #[arg(long)]
    k8s_cluster: Option<String>,
    /// x509pop: the node certificate chain (PEM), issued by a CA the server is configured with.
    #[arg(long)]
    x509pop_cert: Option<PathBuf>,
    /// x509pop: the node's private key (PEM, EC P-256 or P-384).
    #[arg(long)]
    x509pop_key: Option<PathBuf>,
    /// Docker Engine API socket for container selectors (default /var/run/docker.sock; `off`).
    #[arg(long)]
    docker_socket: Option<PathBuf>,
    /// podman's Docker-compatible API socket (default /run/podman/podman.sock; `off`).
    #[arg(long)]
    podman_socket: Option<PathBuf>,
    /// containerd's API socket (default /run/containerd/containerd.sock; `off`).
    #[arg(long)]
    containerd_socket: Option<PathBuf>,
    /// In Kubernetes: the node's kubelet, for `k8s:` selectors (https://127.0.0.1:10250, or the
    /// read-only http://127.0.0.1:10255). Unset: no `k8s:` selectors.
    #[arg(long)]
    kubelet_url: Option<String>,
    /// Bearer token file for the kubelet (a service-account token allowed to read `nodes/proxy`).
    #[arg(long)]
    kubelet_token_file: Option<PathBuf>,
    /// CA (PEM) of the kubelet's serving certificate.
    #[arg(long)]
    kubelet_ca: Option<PathBuf>,
    /// Accept the kubelet's serving certificate unverified (kubelets often serve self-signed ones).
    #[arg(long)]
    kubelet_insecure_skip_verify: bool,
    /// Serve Prometheus `GET /metrics` over plain HTTP on this address (e.g. 127.0.0.1:9988); off
    /// by default. No authentication: bind it to loopback or a node-local address.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Log line format: text or json (one JSON object per line).
    #[arg(long)]
    log_format: Option<String>,
}

/// Workload API calls.
#[derive(Subcommand)]
pub enum ApiCommand {
    /// Fetch SVIDs.
    Fetch {
        #[command(subcommand)]
        kind: FetchKind,
    },
    /// Validate a JWT-SVID through the agent.
    Validate {
        /// The audience the token must carry.
        #[arg(long, short = 'a')]
        audience: String,
        /// The token.
        token: String,
    },
    /// Read secrets by identity, through the agent's secret socket (the Workload API socket's path
    /// with `.secrets` appended).
    Secret {
        #[command(subcommand)]
        command: SecretApiCommand,
    },
    /// Short-lived database credentials by identity, through the agent's secret socket.
    Db {
        #[command(subcommand)]
        command: DbApiCommand,
    },
}

/// Database credentials through the agent.
#[derive(Subcommand)]
pub enum DbApiCommand {
    /// Get credentials for a role template (`<connection>/<template>`): a new login role that the
    /// server drops when its lease ends. The agent attests this process as for SVIDs; a grant must
    /// permit its identity to `issue` on `DbRole::"<connection>/<template>"`. Prints the username
    /// and password once to standard output (the whole answer with --output json).
    Creds {
        /// `<connection>/<template>`, e.g. `orders/readonly`.
        role: String,
        /// The lease's lifetime (`15m`); the template's default when left out.
        #[arg(long)]
        ttl: Option<String>,
        /// Ask as this SPIFFE ID (when the workload has several identities).
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

/// Secret reads through the agent.
#[derive(Subcommand)]
pub enum SecretApiCommand {
    /// Print a secret's latest value to standard output, byte for byte (or write it to a new 0600
    /// file). The agent attests this process as for SVIDs; the server decides whether its identity
    /// may read the secret.
    Get {
        /// The secret's path, e.g. `payments/db/password`.
        name: String,
        /// Read as this SPIFFE ID (when the workload has several identities).
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Write the value to this file (created, mode 0600; an existing file is refused).
        #[arg(long)]
        write: Option<PathBuf>,
    },
}

/// What to fetch.
#[derive(Subcommand)]
pub enum FetchKind {
    /// X509-SVIDs (and the bundle).
    X509 {
        /// Write svid.pem, svid.key (0600) and bundle.pem of the default SVID here.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// A JWT-SVID.
    Jwt {
        /// Audience; repeatable.
        #[arg(long = "audience", short = 'a', required = true)]
        audiences: Vec<String>,
        /// Only this SPIFFE ID (when the workload has several).
        #[arg(long)]
        spiffe_id: Option<String>,
    },
}

/// Runs an agent subcommand.
pub async fn run(command: AgentCommand, output: Output) -> Result<ExitCode> {
    match command {
        AgentCommand::Run(args) => agent_run(*args).await,
        AgentCommand::Api { command, socket } => api(command, &socket, output).await,
        AgentCommand::Explain { pid, admin_socket } => explain(pid, &admin_socket, output).await,
        AgentCommand::Healthcheck { admin_socket } => healthcheck(&admin_socket, output).await,
        AgentCommand::Authorize { request, admin_socket } => {
            let answer: vouch_api::policy::AuthorizeResponse =
                ask(&admin_socket, &AdminRequest::Authorize(request.parse()?)).await?;
            crate::policy::print_decision(output, &answer)
        }
        AgentCommand::Metrics { admin_socket } => {
            let m: MetricsText = ask(&admin_socket, &AdminRequest::Metrics {}).await?;
            match output {
                Output::Json => output::print_json(&m)?,
                Output::Table => print!("{}", m.metrics),
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::List { connect } => {
            let list = connect.client()?.agents().await?;
            match connect.output {
                Output::Json => output::print_json(&list)?,
                Output::Table => {
                    let rows: Vec<[String; 6]> = list
                        .agents
                        .iter()
                        .map(|a| {
                            [
                                a.spiffe_id.to_string(),
                                a.attestation.clone(),
                                a.banned.to_string(),
                                vouch_core::ttl::rfc3339(a.last_seen),
                                vouch_core::ttl::rfc3339(a.svid_expires_at),
                                group_names(&a.groups),
                            ]
                        })
                        .collect();
                    output::print_table(
                        ["SPIFFE ID", "ATTESTATION", "BANNED", "LAST SEEN", "SVID EXPIRES", "GROUPS"],
                        &rows,
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Show { spiffe_id, connect } => {
            let id = crate::parse_flag("spiffe-id", &spiffe_id, SpiffeId::parse)?;
            let list = connect.client()?.agents().await?;
            let Some(a) = list.agents.into_iter().find(|a| a.spiffe_id == id) else {
                bail!("no agent `{id}` is known to the server (see `vouch agent list`)");
            };
            match connect.output {
                Output::Json => output::print_json(&a)?,
                Output::Table => {
                    let sels: Vec<String> = a.selectors.iter().map(ToString::to_string).collect();
                    let rows: [(&str, String); 8] = [
                        ("spiffe_id", a.spiffe_id.to_string()),
                        ("attestation", a.attestation.clone()),
                        ("selectors", if sels.is_empty() { "-".into() } else { sels.join(",") }),
                        ("groups", group_names(&a.groups)),
                        ("banned", a.banned.to_string()),
                        ("created_at", vouch_core::ttl::rfc3339(a.created_at)),
                        ("last_seen", vouch_core::ttl::rfc3339(a.last_seen)),
                        ("svid_expires", vouch_core::ttl::rfc3339(a.svid_expires_at)),
                    ];
                    for (k, v) in rows {
                        println!("{k:<12} {v}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Evict { spiffe_id, connect } => {
            let id = crate::parse_flag("spiffe-id", &spiffe_id, SpiffeId::parse)?;
            let evicted = connect.client()?.evict_agent(&id).await?;
            match connect.output {
                Output::Json => output::print_json(&evicted)?,
                Output::Table => println!("evicted {spiffe_id}; it must attest again"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AgentCommand::Ban { spiffe_id, connect } => {
            let id = crate::parse_flag("spiffe-id", &spiffe_id, SpiffeId::parse)?;
            let banned = connect.client()?.ban_agent(&id).await?;
            match connect.output {
                Output::Json => output::print_json(&banned)?,
                Output::Table => println!("banned {spiffe_id}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Node group IDs as a comma-separated list, `-` for none.
fn group_names(groups: &[SpiffeId]) -> String {
    if groups.is_empty() {
        return "-".into();
    }
    groups.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

async fn agent_run(args: AgentRun) -> Result<ExitCode> {
    let env = |k: &str| {
        let flag = match k {
            "VOUCH_AGENT_SERVER" => args.server.clone(),
            "VOUCH_AGENT_SERVER_ORDER" => args.server_order.clone(),
            "VOUCH_AGENT_TRUST_DOMAIN" => args.trust_domain.clone(),
            "VOUCH_AGENT_DATA_DIR" => args.data_dir.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_SOCKET" => args.socket.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_JOIN_TOKEN" => args.join_token.clone(),
            "VOUCH_AGENT_BUNDLE" => args.bundle.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_K8S_PSAT_TOKEN" => args.k8s_psat_token.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_K8S_CLUSTER" => args.k8s_cluster.clone(),
            "VOUCH_AGENT_X509POP_CERT" => args.x509pop_cert.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_X509POP_KEY" => args.x509pop_key.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_DOCKER_SOCKET" => args.docker_socket.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_PODMAN_SOCKET" => args.podman_socket.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_CONTAINERD_SOCKET" => {
                args.containerd_socket.as_ref().map(|p| p.display().to_string())
            }
            "VOUCH_AGENT_KUBELET_URL" => args.kubelet_url.clone(),
            "VOUCH_AGENT_KUBELET_TOKEN_FILE" => {
                args.kubelet_token_file.as_ref().map(|p| p.display().to_string())
            }
            "VOUCH_AGENT_KUBELET_CA" => args.kubelet_ca.as_ref().map(|p| p.display().to_string()),
            "VOUCH_AGENT_KUBELET_INSECURE_SKIP_VERIFY" => {
                args.kubelet_insecure_skip_verify.then(|| "true".into())
            }
            "VOUCH_AGENT_METRICS_LISTEN" => args.metrics_listen.clone(),
            "VOUCH_AGENT_LOG_FORMAT" => args.log_format.clone(),
            _ => None,
        };
        flag.or_else(|| std::env::var(k).ok().filter(|v| !v.is_empty()))
    };
    let config = vouch_agent::AgentConfig::load(args.config.as_deref(), &env)?;
    crate::init_logging("info", config.log_format == vouch_agent::config::LogFormat::Json);
    let agent = vouch_agent::Agent::start(config).await?;
    crate::wait_for_signal().await?;
    tracing::info!("shutting down");
    agent.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn socket_path(endpoint: &str) -> PathBuf {
    let p = endpoint.strip_prefix("unix://").or_else(|| endpoint.strip_prefix("unix:")).unwrap_or(endpoint);
    PathBuf::from(p)
}

async fn connect(endpoint: &str) -> Result<SpiffeWorkloadApiClient<tonic::transport::Channel>> {
    let path = socket_path(endpoint);
    if !path.exists() {
        bail!(
            "no agent socket at {} (is `vouch agent run` running? set --socket or SPIFFE_ENDPOINT_SOCKET)",
            path.display()
        );
    }
    let channel = vouch_proto::uds_channel(path).await.context("cannot connect to the agent socket")?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

pub(crate) fn request<T>(body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.metadata_mut()
        .insert(vouch_proto::SECURITY_HEADER, tonic::metadata::MetadataValue::from_static("true"));
    req
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("the agent refused: {} ({:?}); `vouch agent explain` will say why", s.message(), s.code())
}

/// Splits a concatenation of DER certificates.
pub(crate) fn split_der(mut der: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while der.len() > 4 && der[0] == 0x30 {
        let (len, hdr) = match der[1] {
            0x82 => ((der[2] as usize) << 8 | der[3] as usize, 4),
            0x81 => (der[2] as usize, 3),
            n if n < 0x80 => (n as usize, 2),
            _ => break,
        };
        let end = (hdr + len).min(der.len());
        out.push(der[..end].to_vec());
        der = &der[end..];
    }
    out
}

fn write_svid(dir: &Path, chain: &[u8], key: &[u8], bundle: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let pem =
        |ders: Vec<Vec<u8>>| ders.iter().map(|d| vouch_ca::pem::encode("CERTIFICATE", d)).collect::<String>();
    std::fs::write(dir.join("svid.pem"), pem(split_der(chain)))?;
    std::fs::write(dir.join("bundle.pem"), pem(split_der(bundle)))?;
    let key_pem = zeroize::Zeroizing::new(vouch_ca::pem::encode("PRIVATE KEY", key));
    output::write_private(&dir.join("svid.key"), key_pem.as_bytes())
}

/// An X509-SVID as `vouch agent api fetch x509 -o json` prints it (no key).
#[derive(Serialize)]
struct FetchedX509 {
    spiffe_id: String,
    hint: String,
    expires_at: i64,
}

/// A JWT-SVID as `vouch agent api fetch jwt -o json` prints it.
#[derive(Serialize)]
struct FetchedJwt<'a> {
    spiffe_id: &'a str,
    token: &'a str,
    hint: &'a str,
}

/// What `vouch agent api validate -o json` prints.
#[derive(Serialize)]
struct Validated<'a> {
    spiffe_id: &'a str,
}

/// What `fetch -o json` prints: `{"svids": [...]}`.
#[derive(Serialize)]
struct Fetched<T> {
    svids: Vec<T>,
}

/// `vouch agent api secret get`: one request on the agent's secret socket.
async fn secret_get(
    endpoint: &str,
    name: &str,
    spiffe_id: Option<&str>,
    write: Option<&Path>,
    output: Output,
) -> Result<ExitCode> {
    use vouch_api::secrets::{decode_value, AgentSecretResponse, WorkloadSecretRequest};
    let request = WorkloadSecretRequest {
        path: crate::parse_flag("name", name, vouch_core::SecretPath::parse)?,
        spiffe_id: spiffe_id.map(|id| crate::parse_flag("spiffe-id", id, SpiffeId::parse)).transpose()?,
        watch: false,
        known_version: None,
    };
    let socket = vouch_agent::secret_api::socket_path(&socket_path(endpoint));
    let answer: AgentSecretResponse = ask_on("secret", &socket, &request).await?;
    let value = zeroize::Zeroizing::new(decode_value(&answer.value).map_err(anyhow::Error::msg)?);
    if let Some(file) = write {
        vouch_fs::write_new_private(file, &value).with_context(|| format!("--write {}", file.display()))?;
        eprintln!(
            "wrote {} version {} (as {}) to {}",
            answer.path,
            answer.version,
            answer.spiffe_id,
            file.display()
        );
    } else if let Output::Json = output {
        output::print_json(&answer)?;
    } else {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        out.write_all(&value)?;
        out.flush()?;
    }
    drop(zeroize::Zeroizing::new(answer.value));
    Ok(ExitCode::SUCCESS)
}

/// `vouch agent api db creds`: one request on the agent's secret socket.
async fn db_creds(
    endpoint: &str,
    role: &str,
    ttl: Option<&str>,
    spiffe_id: Option<&str>,
    output: Output,
) -> Result<ExitCode> {
    use vouch_api::db::{DbCreds, WorkloadDbCredsRequest};
    let request = WorkloadDbCredsRequest {
        db_role: role.to_owned(),
        ttl: ttl
            .map(|t| crate::parse_flag("ttl", t, vouch_core::duration::parse).map(|d| d.as_secs()))
            .transpose()?,
        spiffe_id: spiffe_id.map(|id| crate::parse_flag("spiffe-id", id, SpiffeId::parse)).transpose()?,
    };
    let socket = vouch_agent::secret_api::socket_path(&socket_path(endpoint));
    let creds: DbCreds = ask_on("secret", &socket, &request).await?;
    match output {
        Output::Json => output::print_json(&creds)?,
        Output::Table => {
            eprintln!(
                "lease {} for {}, expires {}",
                creds.lease.id,
                creds.lease.identity,
                vouch_core::ttl::rfc3339(creds.lease.expires_at)
            );
            println!("username {}", creds.username);
            println!("password {}", creds.password);
        }
    }
    drop(zeroize::Zeroizing::new(creds.password));
    Ok(ExitCode::SUCCESS)
}

async fn api(command: ApiCommand, endpoint: &str, output: Output) -> Result<ExitCode> {
    let command = match command {
        ApiCommand::Db { command: DbApiCommand::Creds { role, ttl, spiffe_id } } => {
            return db_creds(endpoint, &role, ttl.as_deref(), spiffe_id.as_deref(), output).await;
        }
        ApiCommand::Secret { command: SecretApiCommand::Get { name, spiffe_id, write } } => {
            return secret_get(endpoint, &name, spiffe_id.as_deref(), write.as_deref(), output).await;
        }
        other => other,
    };
    let mut client = connect(endpoint).await?;
    match command {
        ApiCommand::Fetch { kind: FetchKind::X509 { write } } => {
            let mut stream =
                client.fetch_x509svid(request(X509svidRequest {})).await.map_err(status_error)?.into_inner();
            let resp =
                stream.message().await.map_err(status_error)?.context("the agent closed the stream")?;
            let first = resp.svids.first().context("the agent sent no SVID")?;
            if let Some(dir) = &write {
                write_svid(dir, &first.x509_svid, &first.x509_svid_key, &first.bundle)?;
            }
            let mut list = Vec::with_capacity(resp.svids.len());
            for s in &resp.svids {
                let leaf = split_der(&s.x509_svid).into_iter().next().unwrap_or_default();
                let info = vouch_ca::x509::cert_info(&leaf).with_context(|| {
                    format!("the agent sent an unreadable certificate for {}", s.spiffe_id)
                })?;
                list.push(FetchedX509 {
                    spiffe_id: s.spiffe_id.clone(),
                    hint: s.hint.clone(),
                    expires_at: vouch_core::ttl::unix_seconds(info.not_after),
                });
            }
            match output {
                Output::Json => output::print_json(&Fetched { svids: list })?,
                Output::Table => {
                    for s in &list {
                        let hint =
                            if s.hint.is_empty() { String::new() } else { format!("  hint {}", s.hint) };
                        println!(
                            "{}  expires_at {}{hint}",
                            s.spiffe_id,
                            vouch_core::ttl::rfc3339(s.expires_at)
                        );
                    }
                    if let Some(dir) = &write {
                        println!("wrote {}/svid.pem, svid.key and bundle.pem", dir.display());
                    }
                }
            }
        }
        ApiCommand::Fetch { kind: FetchKind::Jwt { audiences, spiffe_id } } => {
            let body = JwtsvidRequest { audience: audiences, spiffe_id: spiffe_id.unwrap_or_default() };
            let resp = client.fetch_jwtsvid(request(body)).await.map_err(status_error)?.into_inner();
            match output {
                Output::Json => {
                    let svids = resp
                        .svids
                        .iter()
                        .map(|s| FetchedJwt { spiffe_id: &s.spiffe_id, token: &s.svid, hint: &s.hint })
                        .collect();
                    output::print_json(&Fetched { svids })?;
                }
                Output::Table => {
                    for s in &resp.svids {
                        println!("{}", s.svid);
                    }
                }
            }
        }
        ApiCommand::Validate { audience, token } => {
            let resp = client
                .validate_jwtsvid(request(ValidateJwtsvidRequest { audience, svid: token }))
                .await
                .map_err(|s| anyhow::anyhow!("token rejected: {}", s.message()))?
                .into_inner();
            match output {
                Output::Json => output::print_json(&Validated { spiffe_id: &resp.spiffe_id })?,
                Output::Table => println!("valid: {}", resp.spiffe_id),
            }
        }
        // Answered above, on the secret socket.
        ApiCommand::Secret { .. } | ApiCommand::Db { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Sends one request on one of the agent's line sockets (`which`: "admin" or "secret") and reads
/// its answer, within 30 s.
async fn ask_on<T: DeserializeOwned>(which: &str, socket: &Path, request: &impl Serialize) -> Result<T> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket).await.with_context(|| {
            let who = if which == "admin" { " (run as root or the agent's user)" } else { "" };
            format!(
                "cannot reach the agent {which} socket {}: is `vouch agent run` running?{who}",
                socket.display()
            )
        })?;
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        stream.write_all(&line).await?;
        let mut answer = String::new();
        tokio::io::BufReader::new(stream).read_line(&mut answer).await?;
        serde_json::from_str::<AdminAnswer<T>>(&answer).context("unexpected answer from the agent")
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
        .await
        .context("the agent did not answer within 30 s")??
    {
        AdminAnswer::Answer(answer) => Ok(answer),
        AdminAnswer::Refused(r) => bail!("{}", r.error),
    }
}

/// [`ask_on`] the agent's admin socket.
async fn ask<T: DeserializeOwned>(socket: &Path, request: &impl Serialize) -> Result<T> {
    ask_on("admin", socket, request).await
}

/// What `vouch agent healthcheck -o json` prints when the agent cannot be asked.
#[derive(Serialize)]
struct Unreachable {
    ready: bool,
    reason: String,
}

async fn healthcheck(socket: &Path, output: Output) -> Result<ExitCode> {
    let health: Health = match ask(socket, &AdminRequest::Health {}).await {
        Ok(h) => h,
        Err(e) => {
            let reason = format!("{e:#}");
            match output {
                Output::Json => output::print_json(&Unreachable { ready: false, reason })?,
                Output::Table => eprintln!("not ready: {reason}"),
            }
            return Ok(ExitCode::from(1));
        }
    };
    match output {
        Output::Json => output::print_json(&health)?,
        Output::Table if health.ready => {
            let last_sync = health.last_sync_at.map_or_else(|| "never".to_owned(), vouch_core::ttl::rfc3339);
            let stale = if health.sync == SyncStatus::ServingCached { ", entries may be stale" } else { "" };
            println!(
                "{} ({}, {} SVIDs held, last sync {last_sync}{stale}, agent SVID expires {})",
                health.reason,
                health.agent_id,
                health.svids_held,
                vouch_core::ttl::rfc3339(health.agent_svid_expires_at)
            );
        }
        Output::Table => eprintln!("not ready: {}", health.reason),
    }
    Ok(if health.ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

async fn explain(pid: i32, socket: &Path, output: Output) -> Result<ExitCode> {
    let x: Explanation = ask(socket, &AdminRequest::Explain(pid)).await?;
    if let Output::Json = output {
        output::print_json(&x)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "process {pid} (agent {}{})",
        x.agent_id,
        if x.connected { "" } else { ", not connected to the server: entries may be stale" }
    );
    if let Some(e) = &x.error {
        println!("attestation failed: {e}");
        println!("=> no identity: fix the reason above");
        return Ok(ExitCode::from(1));
    }
    if let Some(c) = &x.container {
        println!("cgroup suggests container {c} (not confirmed with the runtime; gives no selectors yet)");
    }
    println!("selectors:");
    for s in &x.selectors {
        println!("  {s}");
    }
    println!("entries ({}):", x.entries.len());
    for e in &x.entries {
        println!("  {:<34} {:<45} {}", e.id, e.spiffe_id, e.outcome);
    }
    let matched = x.entries.iter().filter(|e| e.matched()).count();
    if matched == 0 {
        println!("=> no identity issued: no entry matched");
        return Ok(ExitCode::from(1));
    }
    println!("=> {matched} identit{}", if matched == 1 { "y" } else { "ies" });
    Ok(ExitCode::SUCCESS)
}
