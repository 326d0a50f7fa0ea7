//! `vouch`: run the server, manage entries and join tokens, read the bundle, mint SVIDs.
//!
//! Exit codes: 0 success, 1 the operation failed (refused, unreachable, invalid), 2 usage error.

#![forbid(unsafe_code)]

mod agent;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};
use vouch_client::AdminClient;
use vouch_core::TrustDomain;
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
    /// Manage join tokens for node attestation.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
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
    /// Agent or node group that may serve the entry.
    #[arg(long)]
    parent_id: Option<String>,
    /// Selector the workload must have (type:value); repeat for several, all must match.
    #[arg(long = "selector", short = 's')]
    selectors: Vec<String>,
    /// X509-SVID lifetime (e.g. 1h); server default when absent.
    #[arg(long)]
    x509_ttl: Option<HumanDuration>,
    /// JWT-SVID lifetime (e.g. 5m); server default when absent.
    #[arg(long)]
    jwt_ttl: Option<HumanDuration>,
    /// DNS name for the X509-SVID; repeatable.
    #[arg(long = "dns")]
    dns_names: Vec<String>,
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
}

impl EntryFields {
    /// Applies the given flags over `base` (a JSON entry spec).
    fn apply(&self, base: &mut serde_json::Map<String, Value>) {
        let mut set = |k: &str, v: Value| {
            base.insert(k.to_owned(), v);
        };
        if let Some(v) = &self.spiffe_id {
            set("spiffe_id", json!(v));
        }
        if let Some(v) = &self.parent_id {
            set("parent_id", json!(v));
        }
        if !self.selectors.is_empty() {
            set("selectors", json!(self.selectors));
        }
        if let Some(v) = self.x509_ttl {
            set("x509_svid_ttl", json!(v.0.as_secs()));
        }
        if let Some(v) = self.jwt_ttl {
            set("jwt_svid_ttl", json!(v.0.as_secs()));
        }
        if !self.dns_names.is_empty() {
            set("dns_names", json!(self.dns_names));
        }
        if let Some(v) = &self.hint {
            set("hint", json!(v));
        }
        if let Some(v) = self.admin {
            set("admin", json!(v));
        }
        if !self.federates_with.is_empty() {
            set("federates_with", json!(self.federates_with));
        }
        if let Some(v) = self.expires_at {
            set("expires_at", json!(v));
        }
        if let Some(v) = &self.owner {
            set("owner", json!(v));
        }
        if let Some(v) = &self.purpose {
            set("purpose", json!(v));
        }
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
    },
    /// Show one entry.
    Show {
        /// Entry id.
        id: String,
    },
    /// Change the given fields of an entry; the others stay as they are.
    Update {
        /// Entry id.
        id: String,
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
        /// Lifetime (e.g. 10m, 1h).
        #[arg(long, default_value = "10m")]
        ttl: HumanDuration,
        /// SPIFFE ID the agent will receive.
        #[arg(long)]
        agent_id: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum BundleFormat {
    Pem,
    Jwks,
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Print the trust bundle.
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
        Command::Token { command: TokenCommand::Create { ttl, agent_id }, connect } => {
            let body = json!({"ttl": ttl.0.as_secs(), "agent_id": agent_id});
            let v: Value = connect.client()?.call("POST", "/v1/join-tokens", Some(&body)).await?;
            match connect.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => {
                    println!("{}", v["token"].as_str().unwrap_or_default());
                    eprintln!("single use; expires at {} (unix seconds)", v["expires_at"]);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bundle { command: BundleCommand::Show { format }, connect } => {
            let path = match format {
                BundleFormat::Pem => "/v1/bundle?format=pem",
                BundleFormat::Jwks => "/v1/bundle?format=jwks",
            };
            let (status, body) = connect.client()?.request("GET", path, None).await?;
            if status != 200 {
                vouch_client::decode::<Value>(status, &body)?;
            }
            print!("{}", String::from_utf8_lossy(&body));
            Ok(ExitCode::SUCCESS)
        }
        Command::Svid { command: SvidCommand::Mint { kind }, connect } => mint(kind, &connect).await,
        Command::Agent { command, output } => agent::run(command, output).await,
        Command::Scan(args) => Ok(ExitCode::from(vouch_scan::cli::run(&args))),
        Command::Healthcheck { connect } => {
            let (status, body) = connect.client()?.request("GET", "/readyz", None).await?;
            let text = String::from_utf8_lossy(&body);
            if status == 200 {
                println!("{}", text.trim());
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("not ready: {}", text.trim());
                Ok(ExitCode::from(1))
            }
        }
    }
}

fn init_logging_for(config: &vouch_server::Config) {
    init_logging(&config.log_level, config.log_format == vouch_server::config::LogFormat::Json);
}

/// Logs to stderr, without colours when stderr is not a terminal.
pub(crate) fn init_logging(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let level = std::env::var("VOUCH_LOG").ok().filter(|l| !l.is_empty()).unwrap_or_else(|| level.to_owned());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
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
    match command {
        EntryCommand::Create { fields, id, file } => {
            if let Some(file) = file {
                let body: Value = serde_json::from_str(&read(&file)?)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                let v: Value = client.call("POST", "/v1/entries/batch", Some(&body)).await?;
                print_entries(connect.output, &v)?;
            } else {
                let mut spec = serde_json::Map::new();
                if let Some(id) = id {
                    spec.insert("id".into(), json!(id));
                }
                fields.apply(&mut spec);
                for required in ["spiffe_id", "parent_id", "selectors"] {
                    if !spec.contains_key(required) {
                        bail!(
                            "--{} is required (or use --file for a batch)",
                            required.replace('_', "-").trim_end_matches('s')
                        );
                    }
                }
                let v: Value = client.call("POST", "/v1/entries", Some(&Value::Object(spec))).await?;
                print_entry(connect.output, &v)?;
            }
        }
        EntryCommand::List { spiffe_id, parent_id, selector } => {
            let mut query = Vec::new();
            for (k, v) in [("spiffe_id", spiffe_id), ("parent_id", parent_id), ("selector", selector)] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", output::url_encode(&v)));
                }
            }
            let path = if query.is_empty() {
                "/v1/entries".to_owned()
            } else {
                format!("/v1/entries?{}", query.join("&"))
            };
            let v: Value = client.call("GET", &path, None).await?;
            print_entries(connect.output, &v)?;
        }
        EntryCommand::Show { id } => {
            let v: Value =
                client.call("GET", &format!("/v1/entries/{}", output::url_encode(&id)), None).await?;
            print_entry(connect.output, &v)?;
        }
        EntryCommand::Update { id, fields } => {
            let path = format!("/v1/entries/{}", output::url_encode(&id));
            let current: Value = client.call("GET", &path, None).await?;
            let mut spec = serde_json::Map::new();
            // The current entry's settable fields, then the flags over them.
            for k in output::SETTABLE_FIELDS {
                if let Some(v) = current.get(k).filter(|v| !v.is_null()) {
                    spec.insert(k.into(), v.clone());
                }
            }
            fields.apply(&mut spec);
            let v: Value = client.call("PUT", &path, Some(&Value::Object(spec))).await?;
            print_entry(connect.output, &v)?;
        }
        EntryCommand::Delete { id } => {
            let v: Value =
                client.call("DELETE", &format!("/v1/entries/{}", output::url_encode(&id)), None).await?;
            match connect.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => {
                    println!("deleted entry {id} ({})", v["spiffe_id"].as_str().unwrap_or_default())
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn mint(kind: MintKind, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    match kind {
        MintKind::X509 { spiffe_id, csr, ttl, dns_names, write } => {
            let mut body = json!({"spiffe_id": spiffe_id, "dns_names": dns_names});
            if let Some(csr) = csr {
                body["csr"] = json!(read(&csr)?);
            }
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl.0.as_secs());
            }
            let v: Value = client.call("POST", "/v1/svids/x509", Some(&body)).await?;
            if let Some(dir) = &write {
                output::write_svid_files(dir, &v)?;
                if matches!(connect.output, Output::Table) {
                    println!(
                        "wrote {}/svid.pem, svid.key and bundle.pem for {}",
                        dir.display(),
                        v["spiffe_id"].as_str().unwrap_or_default()
                    );
                }
            }
            match connect.output {
                Output::Json => {
                    let mut shown = v.clone();
                    // The private key is written to a file, never echoed.
                    if let Some(obj) = shown.as_object_mut() {
                        obj.remove("private_key_pem");
                    }
                    println!("{}", serde_json::to_string_pretty(&shown)?);
                }
                Output::Table => {
                    println!("spiffe_id   {}", v["spiffe_id"].as_str().unwrap_or_default());
                    println!("expires_at  {}", v["expires_at"]);
                    if v["capped"].as_bool() == Some(true) {
                        println!("note        lifetime was cut short by the signing CA's remaining life");
                    }
                    if v.get("private_key_pem").is_some() && write.is_none() {
                        println!("key         generated by the server (use --write DIR to save it)");
                    }
                }
            }
        }
        MintKind::Jwt { spiffe_id, audiences, ttl } => {
            let mut body = json!({"spiffe_id": spiffe_id, "audience": audiences});
            if let Some(ttl) = ttl {
                body["ttl"] = json!(ttl.0.as_secs());
            }
            let v: Value = client.call("POST", "/v1/svids/jwt", Some(&body)).await?;
            match connect.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                Output::Table => println!("{}", v["token"].as_str().unwrap_or_default()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
