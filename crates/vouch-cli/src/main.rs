//! `vouch`: run the server, manage entries and join tokens, read the bundle, mint SVIDs.
//!
//! Exit codes: 0 success, 1 the operation failed (refused, unreachable, invalid), 2 usage error.

mod agent;
mod audit;
mod authority;
mod db;
mod federation;
mod group;
mod helper;
mod output;
mod policy;
mod secret;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use vouch_api::admin::{
    BatchCreateRequest, EntryPatch, EntryQuery, JoinTokenRequest, MintJwtRequest, MintX509Request,
};
use vouch_client::AdminClient;
use vouch_core::{CommonName, DnsName, EntrySpec, Namespace, Selector, SpiffeId, TrustDomain};
use vouch_server::config::HumanDuration;

use crate::output::{print_entries, print_entry, Output};

#[derive(Parser)]
#[command(name = "vouch", version, about = "Container identity done right: SPIFFE identities instead of secrets.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub(crate) struct Connect {
    /// Admin socket of a local server.
    #[arg(long, env = "VOUCH_ADMIN_SOCKET", default_value = "vouch-data/admin.sock", global = true)]
    socket: PathBuf,
    /// Reach a remote server over mTLS instead (host:port); needs --bundle, --cert and --key.
    #[arg(long, env = "VOUCH_SERVER", global = true)]
    server: Option<String>,
    /// Trust domain of the remote server (its certificate must be spiffe://<td>/vouch/server).
    #[arg(long, env = "VOUCH_TRUST_DOMAIN", default_value = "example.org", global = true)]
    trust_domain: String,
    /// PEM trust bundle for --server (from `vouch bundle show --format pem`).
    #[arg(long, env = "VOUCH_BUNDLE", global = true)]
    bundle: Option<PathBuf>,
    /// Admin X509-SVID certificate chain (PEM) for --server.
    #[arg(long, env = "VOUCH_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Private key (PKCS#8 PEM) of --cert.
    #[arg(long, env = "VOUCH_KEY", global = true)]
    key: Option<PathBuf>,
    /// Output format.
    #[arg(long, short = 'o', env = "VOUCH_OUTPUT", value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

impl Connect {
    pub(crate) fn client(&self) -> Result<AdminClient> {
        let Some(addr) = &self.server else { return Ok(AdminClient::unix(&self.socket)) };
        let td = TrustDomain::new(&self.trust_domain)
            .with_context(|| format!("--trust-domain `{}`", self.trust_domain))?;
        let bundle_path = self.bundle.as_ref().context("--server needs --bundle (the trust bundle PEM)")?;
        let bundle = read(bundle_path)?;
        let client = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            (None, None) => None,
            _ => bail!("--cert and --key go together"),
        };
        let client_ref = client.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        Ok(AdminClient::tls(addr, &td, &bundle, client_ref)?)
    }
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Manage registration entries (who gets which SPIFFE ID).
    Entry {
        #[command(subcommand)]
        command: EntryCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Manage node groups (SPIRE's node aliases): entries parented to a group are served by every
    /// agent whose node selectors include the group's.
    Group {
        #[command(subcommand)]
        command: group::GroupCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Manage SPIFFE federation with other trust domains: their bundles are fetched from their
    /// bundle endpoints and served to workloads whose entries federate with them.
    Federation {
        #[command(subcommand)]
        command: federation::FederationCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Short-lived PostgreSQL credentials: `vouch db creds|leases|renew|revoke`. The server makes
    /// a login role per request and drops it when its lease ends (docs/database-credentials.md).
    Db {
        #[command(subcommand)]
        command: db::DbCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// The tamper-evident audit log: `vouch audit search|export|verify|key` (docs/audit.md).
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Manage secrets: values sealed under the server's key-encryption key, versioned, read by
    /// workloads through their agent by identity (`vouch agent api secret get`).
    Secret {
        #[command(subcommand)]
        command: secret::SecretCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Manage grants (Cedar policies) and ask what-if questions: `vouch policy put|list|show|
    /// delete|validate|test`. See docs/policy.md.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Manage join tokens for node attestation.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Show the authority's keys (roots, signing CAs, JWT keys), or publish a successor root now.
    Authority {
        #[command(subcommand)]
        command: authority::AuthorityCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Show the trust bundle.
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Mint SVIDs directly (for tests and workloads that cannot run an agent).
    Svid {
        #[command(subcommand)]
        command: SvidCommand,
        #[command(flatten)]
        connect: Connect,
    },
    /// Run the node agent, call its Workload API, manage agents.
    Agent {
        #[command(subcommand)]
        command: agent::AgentCommand,
        /// Output format.
        #[arg(long, short = 'o', env = "VOUCH_OUTPUT", value_enum, default_value_t = Output::Table, global = true)]
        output: Output,
    },
    /// Keep an app that knows nothing of SPIFFE supplied with its SVIDs as files (like
    /// spiffe-helper).
    ///
    /// Runs beside the app as a workload of the agent: writes the X509-SVID (certificate chain,
    /// private key 0600, trust bundle) and JWT-SVIDs for configured audiences (and the cloud SDKs'
    /// token files) atomically, rewrites them at every rotation (the Workload API's stream) and
    /// JWT-SVIDs at half life, and after each X509 rotation signals the app (--signal with --pid or
    /// --pid-file) or runs --cmd. With --once it writes the files and exits (init containers).
    Helper(Box<helper::HelperArgs>),
    /// Find hardcoded secrets in files, trees and container images (works offline, without a server).
    ///
    /// Inputs are told by content: a directory is walked (respecting .gitignore; hidden files such as
    /// .env are scanned), a directory with an `oci-layout` file is an OCI image layout, a tar (or a
    /// gzip/zstd-compressed tar) with manifest.json or index.json is an image (`docker save`, old and
    /// new, or an OCI archive), any other tar is scanned entry by entry, `-` reads standard input.
    /// Image findings say whether the file is still present or was deleted in a later layer.
    ///
    /// Exit code: 0 no findings, 1 findings, 2 part of the input could not be scanned (or bad options).
    /// See docs/scanning.md.
    Scan(Box<vouch_scan::cli::ScanArgs>),
    /// Exit 0 if the server is ready, 1 otherwise.
    Healthcheck {
        #[command(flatten)]
        connect: Connect,
    },
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Run the server in the foreground until SIGINT or SIGTERM.
    Run(ServerRun),
}

#[derive(Args)]
struct ServerRun {
    /// Configuration file (TOML); without one, defaults and VOUCH_* variables apply.
    #[arg(long, short = 'c', env = "VOUCH_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args, Default)]
struct EntryFields {
    /// SPIFFE ID the workload receives, e.g. spiffe://example.org/payments.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// Agent or node group that may serve the entry (an agent's SPIFFE ID, or a group's,
    /// spiffe://<td>/vouch/group/<name>, served by every member agent; see `vouch group`).
    #[arg(long)]
    parent_id: Option<String>,
    /// Selector the workload must have (type:value); repeat for several, all must match.
    #[arg(long = "selector", short = 's')]
    selectors: Vec<String>,
    /// X509-SVID lifetime (e.g. 1h, 1h30m, 600 seconds); server default when absent.
    #[arg(long)]
    x509_ttl: Option<HumanDuration>,
    /// JWT-SVID lifetime (e.g. 5m, 2m30s); server default when absent.
    #[arg(long)]
    jwt_ttl: Option<HumanDuration>,
    /// DNS name for the X509-SVID; repeatable.
    #[arg(long = "dns")]
    dns_names: Vec<String>,
    /// Subject common name for the X509-SVID (at most 64 printable characters), for relying
    /// parties that map a certificate's CN to a user, e.g. PostgreSQL's `cert` login
    /// (docs/postgres-cert-login.md). The SPIFFE ID stays the URI SAN. With `update`, an empty
    /// value removes it.
    #[arg(long, value_name = "CN")]
    x509_common_name: Option<String>,
    /// Hint for workloads with several SVIDs.
    #[arg(long)]
    hint: Option<String>,
    /// Allow the SVID to use the admin API.
    #[arg(long)]
    admin: Option<bool>,
    /// Trust domain whose bundle the workload also receives; repeatable.
    #[arg(long = "federates-with")]
    federates_with: Vec<String>,
    /// Unix seconds after which the entry stops matching.
    #[arg(long)]
    expires_at: Option<i64>,
    /// Who answers for this identity.
    #[arg(long)]
    owner: Option<String>,
    /// Why this identity exists.
    #[arg(long)]
    purpose: Option<String>,
    /// Namespace the entry belongs to (a lowercase DNS label; `default` when creating without
    /// it). An admin limited to namespaces may use only its own; with `update`, moves the entry
    /// (which needs the right to both namespaces). See docs/namespaces.md.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// With --admin true: a namespace the admin SVID is limited to; repeatable (the SVID may then
    /// manage entries and policies of these namespaces only). None: all namespaces and the whole
    /// admin API. With `update`, replaces the list; `--admin-namespace ''` clears it.
    #[arg(long = "admin-namespace")]
    admin_namespaces: Vec<String>,
}

/// A flag's value parsed into its domain type, or an error that names the flag.
fn parse_flag<T, E: std::fmt::Display>(
    flag: &str,
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> Result<T> {
    parse(value).map_err(|e| anyhow::anyhow!("--{flag} `{value}`: {e}"))
}

fn parse_all<T, E: std::fmt::Display>(
    flag: &str,
    values: &[String],
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>> {
    values.iter().map(|v| parse_flag(flag, v, &parse)).collect()
}

/// A `--selector` of an entry. SPIRE's spelling of a fact vouch has becomes vouch's spelling (said on
/// stderr, since the stored entry will show it); one of a fact vouch lacks is refused here, before the
/// server is asked. The server applies the same table (`vouch_core::spire`) to every entry it stores.
fn parse_selector(value: &str) -> Result<Selector, vouch_core::SelectorError> {
    let written = Selector::parse(value)?;
    let stored = vouch_core::spire::canonical(written.clone())?;
    if stored != written {
        eprintln!("note: SPIRE's selector `{written}` is vouch's `{stored}`; the entry stores the latter");
    }
    Ok(stored)
}

/// A repeatable flag given at least once.
fn non_empty(v: &[String]) -> Option<&[String]> {
    (!v.is_empty()).then_some(v)
}

impl EntryFields {
    /// The flags as a patch over the entry at `expected_revision`: only what was given changes.
    fn to_patch(&self, expected_revision: u64) -> Result<EntryPatch> {
        Ok(EntryPatch {
            expected_revision,
            spiffe_id: self
                .spiffe_id
                .as_deref()
                .map(|v| parse_flag("spiffe-id", v, SpiffeId::parse))
                .transpose()?,
            parent_id: self
                .parent_id
                .as_deref()
                .map(|v| parse_flag("parent-id", v, SpiffeId::parse))
                .transpose()?,
            selectors: non_empty(&self.selectors)
                .map(|v| parse_all("selector", v, parse_selector))
                .transpose()?,
            x509_svid_ttl: self.x509_ttl.map(|d| Some(d.0.as_secs())),
            jwt_svid_ttl: self.jwt_ttl.map(|d| Some(d.0.as_secs())),
            dns_names: non_empty(&self.dns_names).map(|v| parse_all("dns", v, DnsName::new)).transpose()?,
            x509_common_name: self
                .x509_common_name
                .as_deref()
                .map(|v| match v {
                    "" => Ok(None),
                    v => parse_flag("x509-common-name", v, CommonName::new).map(Some),
                })
                .transpose()?,
            hint: self.hint.clone(),
            admin: self.admin,
            federates_with: non_empty(&self.federates_with)
                .map(|v| parse_all("federates-with", v, TrustDomain::new))
                .transpose()?,
            expires_at: self.expires_at.map(Some),
            owner: self.owner.clone(),
            purpose: self.purpose.clone(),
            namespace: self
                .namespace
                .as_deref()
                .map(|v| parse_flag("namespace", v, Namespace::new))
                .transpose()?,
            admin_namespaces: non_empty(&self.admin_namespaces)
                .map(|v| {
                    let named: Vec<String> = v.iter().filter(|n| !n.is_empty()).cloned().collect();
                    parse_all("admin-namespace", &named, Namespace::new)
                })
                .transpose()?,
        })
    }

    /// The flags as a new entry; SPIFFE ID, parent and selectors are required.
    fn to_spec(&self, id: Option<String>) -> Result<EntrySpec> {
        let p = self.to_patch(0)?;
        let required = |what: &str| anyhow::anyhow!("--{what} is required (or use --file for a batch)");
        Ok(EntrySpec {
            id: id.as_deref().map(|v| parse_flag("id", v, vouch_core::EntryId::new)).transpose()?,
            spiffe_id: p.spiffe_id.ok_or_else(|| required("spiffe-id"))?,
            parent_id: p.parent_id.ok_or_else(|| required("parent-id"))?,
            selectors: p.selectors.ok_or_else(|| required("selector"))?,
            x509_svid_ttl: p.x509_svid_ttl.flatten(),
            jwt_svid_ttl: p.jwt_svid_ttl.flatten(),
            dns_names: p.dns_names.unwrap_or_default(),
            x509_common_name: p.x509_common_name.flatten(),
            hint: p.hint.unwrap_or_default(),
            admin: p.admin.unwrap_or_default(),
            federates_with: p.federates_with.unwrap_or_default(),
            expires_at: p.expires_at.flatten(),
            owner: p.owner.unwrap_or_default(),
            purpose: p.purpose.unwrap_or_default(),
            namespace: p.namespace,
            admin_namespaces: p.admin_namespaces.unwrap_or_default(),
        })
    }
}

#[derive(Subcommand)]
enum EntryCommand {
    /// Create an entry from flags, or several at once from a JSON file ({"entries": [...]}).
    Create {
        #[command(flatten)]
        fields: EntryFields,
        /// Chosen entry id (generated when absent).
        #[arg(long)]
        id: Option<String>,
        /// Batch file: {"entries": [ {spiffe_id, parent_id, selectors, ...}, ... ]}; all or none.
        #[arg(long, conflicts_with_all = ["spiffe_id", "parent_id", "selectors"])]
        file: Option<PathBuf>,
    },
    /// List entries.
    List {
        /// Only this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Only under this parent.
        #[arg(long)]
        parent_id: Option<String>,
        /// Only entries that require this selector.
        #[arg(long)]
        selector: Option<String>,
        /// Only entries of this namespace (an admin limited to namespaces sees only its own in
        /// any case).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Show one entry.
    Show {
        /// Entry id.
        id: String,
    },
    /// Change the given fields of an entry; the others stay as they are.
    ///
    /// The change applies only if nobody changed the entry since it was read: the revision read
    /// (or given with --revision) goes with it, and a concurrent change is refused (exit 1), never
    /// silently overwritten.
    Update {
        /// Entry id.
        id: String,
        /// Apply only if the entry is still at this revision (from `vouch entry show`); default:
        /// the revision read just before.
        #[arg(long)]
        revision: Option<u64>,
        #[command(flatten)]
        fields: EntryFields,
    },
    /// Delete an entry.
    Delete {
        /// Entry id.
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a single-use join token; it is shown once.
    Create {
        /// Lifetime (e.g. 10m, 1h30m, 2d, 600 seconds).
        #[arg(long, default_value = "10m")]
        ttl: HumanDuration,
        /// SPIFFE ID the agent will receive.
        #[arg(long)]
        agent_id: Option<String>,
        /// A label (key=value) the agent gets as the node selector `join_token:label:<key>:<value>`,
        /// for node groups (`vouch group create -s join_token:label:env:prod`); repeatable.
        #[arg(long = "label")]
        labels: Vec<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BundleFormat {
    Pem,
    Jwks,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Print the trust bundle (with -o json: the JWKS document, or `{"pem": ...}` for --format pem).
    Show {
        /// PEM certificates or SPIFFE bundle JWKS.
        #[arg(long, value_enum, default_value_t = BundleFormat::Pem)]
        format: BundleFormat,
    },
}

#[derive(Subcommand)]
enum SvidCommand {
    /// Mint an SVID.
    Mint {
        #[command(subcommand)]
        kind: MintKind,
    },
}

#[derive(Subcommand)]
enum MintKind {
    /// An X509-SVID; the server generates the key unless --csr is given.
    X509 {
        /// SPIFFE ID to mint for.
        #[arg(long)]
        spiffe_id: String,
        /// PKCS#10 CSR (PEM); its subject and extensions are ignored.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Lifetime (server default when absent).
        #[arg(long)]
        ttl: Option<HumanDuration>,
        /// DNS SAN; repeatable.
        #[arg(long = "dns")]
        dns_names: Vec<String>,
        /// Subject common name (at most 64 printable characters).
        #[arg(long, value_name = "CN")]
        common_name: Option<String>,
        /// Write svid.pem, svid.key (0600) and bundle.pem into this directory.
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// A JWT-SVID.
    Jwt {
        /// SPIFFE ID to mint for.
        #[arg(long)]
        spiffe_id: String,
        /// Audience; repeatable.
        #[arg(long = "audience", short = 'a', required = true)]
        audiences: Vec<String>,
        /// Lifetime (server default when absent).
        #[arg(long)]
        ttl: Option<HumanDuration>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Scan(args) = &cli.command {
        // The scanner is synchronous and uses its own threads: no runtime.
        return ExitCode::from(vouch_scan::cli::run(args));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Server { command: ServerCommand::Run(args) } => server_run(args).await,
        Command::Entry { command, connect } => entry(command, &connect).await,
        Command::Group { command, connect } => group::run(command, &connect).await,
        Command::Authority { command, connect } => authority::run(command, &connect).await,
        Command::Federation { command, connect } => federation::run(command, &connect).await,
        Command::Secret { command, connect } => secret::run(command, &connect).await,
        Command::Db { command, connect } => db::run(command, &connect).await,
        Command::Audit { command, connect } => audit::run(command, &connect).await,
        Command::Policy { command, connect } => policy::run(command, &connect).await,
        Command::Token { command: TokenCommand::Create { ttl, agent_id, labels }, connect } => {
            let agent_id =
                agent_id.as_deref().map(|v| parse_flag("agent-id", v, SpiffeId::parse)).transpose()?;
            let labels = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("--label `{l}`: write it as key=value"))
                })
                .collect::<Result<_>>()?;
            let req = JoinTokenRequest { ttl: Some(ttl.0.as_secs()), agent_id, labels };
            let t = connect.client()?.create_join_token(&req).await?;
            match connect.output {
                Output::Json => output::print_json(&t)?,
                Output::Table => {
                    println!("{}", t.token);
                    eprintln!("single use; expires at {}", vouch_core::ttl::rfc3339(t.expires_at));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bundle { command: BundleCommand::Show { format }, connect } => {
            let client = connect.client()?;
            match (format, connect.output) {
                (BundleFormat::Pem, Output::Table) => print!("{}", client.bundle_pem().await?),
                (BundleFormat::Pem, Output::Json) => {
                    output::print_json(&PemBundle { pem: client.bundle_pem().await? })?
                }
                // The SPIFFE bundle is a JSON document already.
                (BundleFormat::Jwks, _) => print!("{}", client.bundle_jwks().await?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Svid { command: SvidCommand::Mint { kind }, connect } => mint(kind, &connect).await,
        Command::Agent { command, output } => agent::run(command, output).await,
        Command::Helper(args) => helper::run(*args).await,
        Command::Scan(args) => Ok(ExitCode::from(vouch_scan::cli::run(&args))),
        Command::Healthcheck { connect } => {
            let (ready, reason) = match connect.client() {
                Ok(client) => client.ready().await.unwrap_or_else(|e| (false, e.to_string())),
                Err(e) => (false, format!("{e:#}")),
            };
            match (connect.output, ready) {
                (Output::Json, _) => output::print_json(&ServerHealth { ready, reason })?,
                (Output::Table, true) => println!("{reason}"),
                (Output::Table, false) => eprintln!("not ready: {reason}"),
            }
            Ok(if ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// What `vouch bundle show --format pem -o json` prints.
#[derive(serde::Serialize)]
struct PemBundle {
    pem: String,
}

/// What `vouch healthcheck -o json` prints.
#[derive(serde::Serialize)]
struct ServerHealth {
    ready: bool,
    reason: String,
}

fn init_logging_for(config: &vouch_server::Config) {
    // The server's audit events go to its audit log as well as to the log output (whatever the
    // log level), unless `[audit] enabled = false`.
    let audit = config
        .audit
        .enabled
        .then(|| vouch_server::audit::layer(Arc::new(vouch_server::SystemClock), config.audit.queue));
    init_logging_with(&config.log_level, config.log_format == vouch_server::config::LogFormat::Json, audit);
}

/// Logs to stderr, without colours when stderr is not a terminal.
pub(crate) fn init_logging(level: &str, json: bool) {
    init_logging_with::<tracing_subscriber::layer::Identity>(level, json, None);
}

/// [`init_logging`] with a further layer beside the log output, which the log level does not
/// filter (it brings its own filter).
fn init_logging_with<L>(level: &str, json: bool, extra: Option<L>)
where
    L: tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{EnvFilter, Layer as _};
    let level = std::env::var("VOUCH_LOG").ok().filter(|l| !l.is_empty()).unwrap_or_else(|| level.to_owned());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let fmt = if json { fmt.json().with_filter(filter).boxed() } else { fmt.with_filter(filter).boxed() };
    tracing_subscriber::registry().with(extra).with(fmt).init();
}

/// Waits for SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

async fn server_run(args: ServerRun) -> Result<ExitCode> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let config = vouch_server::Config::load(args.config.as_deref(), &env)?;
    init_logging_for(&config);
    let kek = env("VOUCH_KEK");
    let server =
        vouch_server::Server::start(config, Arc::new(vouch_server::SystemClock), kek.as_deref()).await?;
    wait_for_signal().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

async fn entry(command: EntryCommand, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    let entries = client.entries();
    match command {
        EntryCommand::Create { fields, id, file } => {
            if let Some(file) = file {
                let batch: BatchCreateRequest = serde_json::from_str(&read(&file)?).with_context(|| {
                    format!("{} is not a batch of entries ({{\"entries\": [{{spiffe_id, parent_id, selectors, ...}}]}})", file.display())
                })?;
                print_entries(connect.output, &entries.create_batch(&batch).await?)?;
            } else {
                print_entry(connect.output, &entries.create(&fields.to_spec(id)?).await?)?;
            }
        }
        EntryCommand::List { spiffe_id, parent_id, selector, namespace } => {
            let list = entries.list(&EntryQuery { spiffe_id, parent_id, selector, namespace }).await?;
            print_entries(connect.output, &list)?;
        }
        EntryCommand::Show { id } => print_entry(connect.output, &entries.get(&id).await?)?,
        EntryCommand::Update { id, revision, fields } => {
            let revision = match revision {
                Some(r) => r,
                None => entries.get(&id).await?.revision,
            };
            let patch = fields.to_patch(revision)?;
            if patch.is_empty() {
                bail!("nothing to change: give at least one field flag (see `vouch entry update --help`)");
            }
            print_entry(connect.output, &entries.update(&id, &patch).await?)?;
        }
        EntryCommand::Delete { id } => {
            let entry = entries.delete(&id).await?;
            match connect.output {
                Output::Json => output::print_json(&entry)?,
                Output::Table => println!("deleted entry {id} ({})", entry.spiffe_id),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn mint(kind: MintKind, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    match kind {
        MintKind::X509 { spiffe_id, csr, ttl, dns_names, common_name, write } => {
            let req = MintX509Request {
                spiffe_id: parse_flag("spiffe-id", &spiffe_id, SpiffeId::parse)?,
                csr: csr.as_ref().map(read).transpose()?,
                ttl: ttl.map(|t| t.0.as_secs()),
                dns_names: parse_all("dns", &dns_names, DnsName::new)?,
                common_name: common_name
                    .as_deref()
                    .map(|v| parse_flag("common-name", v, CommonName::new))
                    .transpose()?,
            };
            let mut svid = client.mint_x509(&req).await?;
            if let Some(dir) = &write {
                output::write_svid_files(dir, &svid)?;
                if matches!(connect.output, Output::Table) {
                    println!(
                        "wrote {}/svid.pem, svid.key and bundle.pem for {}",
                        dir.display(),
                        svid.spiffe_id
                    );
                }
            }
            // The private key is written to a file, never printed.
            let generated_key = svid.private_key_pem.take().is_some();
            match connect.output {
                Output::Json => output::print_json(&svid)?,
                Output::Table => {
                    println!("spiffe_id   {}", svid.spiffe_id);
                    println!("expires_at  {}", vouch_core::ttl::rfc3339(svid.expires_at));
                    if svid.capped {
                        println!("note        lifetime was cut short by the signing CA's remaining life");
                    }
                    if generated_key && write.is_none() {
                        println!("key         generated by the server (use --write DIR to save it)");
                    }
                }
            }
        }
        MintKind::Jwt { spiffe_id, audiences, ttl } => {
            let req = MintJwtRequest {
                spiffe_id: parse_flag("spiffe-id", &spiffe_id, SpiffeId::parse)?,
                audience: audiences,
                ttl: ttl.map(|t| t.0.as_secs()),
            };
            let jwt = client.mint_jwt(&req).await?;
            match connect.output {
                Output::Json => output::print_json(&jwt)?,
                Output::Table => println!("{}", jwt.token),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
