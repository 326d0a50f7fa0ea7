//! `vouch policy ...`: grants as Cedar policies (see docs/policy.md), versioned on the server, and
//! what-if decisions.
//!
//! Exit codes of `validate` and `test`: 0 valid / allowed, 3 invalid / denied, 1 the call failed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use vouch_api::policy::{AccessRequest, AuthorizeResponse, PolicyInfo, PolicyTest, PolicyText};
use vouch_core::grant::{Action, Resource};
use vouch_core::SpiffeId;

use crate::output::{self, Output};
use crate::{parse_flag, Connect};

/// The largest policy file read (the server accepts at most 16 KiB of text).
const MAX_POLICY_FILE: u64 = 64 * 1024;

/// Exit code of a deny or of an invalid policy.
const DENIED: u8 = 3;

/// Policy subcommands.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Write a new version of a policy from a file (`-` for standard input). It must be one Cedar
    /// policy that validates against the schema, or nothing is stored.
    ///
    ///   vouch policy put own-path --file own-path.cedar
    ///   vouch policy put team-a-read --namespace team-a --file read.cedar
    Put {
        /// The policy's id (A-Z a-z 0-9 . _ -).
        id: String,
        /// The Cedar policy.
        #[arg(long)]
        file: PathBuf,
        /// The policy's namespace (default: where the policy is, `default` for a new one). A
        /// policy of a namespace other than `default` decides only about that namespace's
        /// workloads and resources; `default`'s decide for all (docs/namespaces.md).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// List the current version of every policy.
    List,
    /// Show a policy's current text and every version.
    Show {
        /// The policy's id.
        id: String,
    },
    /// Delete a policy (its history is kept).
    Delete {
        /// The policy's id.
        id: String,
    },
    /// Check a policy file against the schema without storing it (exit 3 if invalid).
    Validate {
        /// The Cedar policy (`-` for standard input).
        #[arg(long)]
        file: PathBuf,
    },
    /// Decide a request against the stored policies, optionally with policies added or replaced
    /// (`--with ID=FILE`) or left out (`--without ID`); nothing is stored. Exit 3 on deny.
    ///
    ///   vouch policy test --principal spiffe://example.org/web --action read --secret web/db \
    ///     --with own-path=own-path.cedar
    Test {
        #[command(flatten)]
        request: RequestArgs,
        /// A policy to add or replace, as ID=FILE (repeatable).
        #[arg(long = "with")]
        with: Vec<String>,
        /// A stored policy to leave out (repeatable).
        #[arg(long = "without")]
        without: Vec<String>,
    },
}

/// The question: a principal, an action and one resource.
#[derive(Args)]
pub struct RequestArgs {
    /// The workload's SPIFFE ID.
    #[arg(long)]
    principal: String,
    /// read, write, connect or issue.
    #[arg(long)]
    action: String,
    /// A secret, by path.
    #[arg(long)]
    secret: Option<String>,
    /// A database role, by name.
    #[arg(long)]
    db_role: Option<String>,
    /// A service, by SPIFFE ID.
    #[arg(long)]
    service: Option<String>,
}

impl RequestArgs {
    pub(crate) fn parse(&self) -> Result<AccessRequest> {
        let principal = parse_flag("principal", &self.principal, SpiffeId::parse)?;
        let action = parse_flag("action", &self.action, |v| v.parse::<Action>())?;
        let resource = match (&self.secret, &self.db_role, &self.service) {
            (Some(s), None, None) => parse_flag("secret", s, |v| Resource::parse("secret", v))?,
            (None, Some(r), None) => parse_flag("db-role", r, |v| Resource::parse("db_role", v))?,
            (None, None, Some(s)) => parse_flag("service", s, |v| Resource::parse("service", v))?,
            _ => anyhow::bail!("name the resource with one of --secret, --db-role or --service"),
        };
        Ok(AccessRequest { principal, action, resource })
    }
}

fn read_policy(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        use std::io::Read as _;
        let mut text = String::new();
        std::io::stdin().take(MAX_POLICY_FILE + 1).read_to_string(&mut text).context("standard input")?;
        if text.len() as u64 > MAX_POLICY_FILE {
            anyhow::bail!("standard input: more than a policy can be (64 KiB)");
        }
        return Ok(text);
    }
    let size = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?.len();
    if size > MAX_POLICY_FILE {
        anyhow::bail!("{}: {size} bytes, more than a policy can be (64 KiB)", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))
}

fn time(t: i64) -> String {
    vouch_core::ttl::rfc3339(t)
}

fn print_info(output: Output, p: &PolicyInfo) -> Result<()> {
    match output {
        Output::Json => output::print_json(p),
        Output::Table => {
            match &p.text {
                Some(_) => println!(
                    "policy {} version {} in namespace {} ({}) written by {} at {}",
                    p.id,
                    p.version,
                    p.namespace,
                    p.effect.as_deref().unwrap_or("-"),
                    p.author,
                    time(p.created_at)
                ),
                None => println!(
                    "policy {} deleted (version {}) by {} at {}",
                    p.id,
                    p.version,
                    p.author,
                    time(p.created_at)
                ),
            }
            Ok(())
        }
    }
}

pub(crate) fn print_decision(output: Output, d: &AuthorizeResponse) -> Result<ExitCode> {
    match output {
        Output::Json => output::print_json(d)?,
        Output::Table => {
            println!("{}: {}", if d.allow { "ALLOW" } else { "DENY" }, d.explanation);
            for e in &d.errors {
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if d.allow { ExitCode::SUCCESS } else { ExitCode::from(DENIED) })
}

/// Runs a policy subcommand.
pub async fn run(command: PolicyCommand, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    let policies = client.policies();
    match command {
        PolicyCommand::Put { id, file, namespace } => {
            let namespace = namespace
                .as_deref()
                .map(|v| parse_flag("namespace", v, vouch_core::Namespace::new))
                .transpose()?;
            let text = read_policy(&file)?;
            print_info(connect.output, &policies.put(&id, &text, namespace.as_ref()).await?)?;
        }
        PolicyCommand::List => {
            let list = policies.list().await?;
            if let Output::Json = connect.output {
                output::print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 6]> = list
                .policies
                .iter()
                .map(|p| {
                    [
                        p.id.clone(),
                        p.namespace.to_string(),
                        p.version.to_string(),
                        p.effect.clone().unwrap_or_else(|| "-".into()),
                        p.author.clone(),
                        time(p.created_at),
                    ]
                })
                .collect();
            output::print_table(["ID", "NAMESPACE", "VERSION", "EFFECT", "AUTHOR", "WRITTEN"], &rows);
            if rows.is_empty() {
                eprintln!("(no policies: every request is denied)");
            }
        }
        PolicyCommand::Show { id } => {
            let h = policies.get(&id).await?;
            if let Output::Json = connect.output {
                output::print_json(&h)?;
                return Ok(ExitCode::SUCCESS);
            }
            match &h.current {
                Some(c) => println!("{}", c.text.as_deref().unwrap_or_default().trim_end()),
                None => println!("(deleted)"),
            }
            println!();
            for v in &h.versions {
                print_info(Output::Table, v)?;
            }
        }
        PolicyCommand::Delete { id } => print_info(connect.output, &policies.delete(&id).await?)?,
        PolicyCommand::Validate { file } => {
            let report = policies.validate(&read_policy(&file)?).await?;
            match connect.output {
                Output::Json => output::print_json(&report)?,
                Output::Table if report.valid => println!("valid"),
                Output::Table => {
                    for e in &report.errors {
                        println!("invalid: {e}");
                    }
                }
            }
            return Ok(if report.valid { ExitCode::SUCCESS } else { ExitCode::from(DENIED) });
        }
        PolicyCommand::Test { request, with, without } => {
            let mut added = Vec::new();
            for w in &with {
                let (id, file) =
                    w.split_once('=').ok_or_else(|| anyhow::anyhow!("--with `{w}`: write it as ID=FILE"))?;
                added.push(PolicyText { id: id.to_owned(), text: read_policy(Path::new(file))? });
            }
            let test = PolicyTest { request: request.parse()?, with: added, without };
            return print_decision(connect.output, &policies.test(&test).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
