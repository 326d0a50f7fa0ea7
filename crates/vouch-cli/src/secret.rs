//! `vouch secret ...`: the server's secret store. Values are sealed by envelope encryption under
//! the server's key-encryption key; workloads read them through their agent by identity
//! (`vouch agent api secret get`), admins through this command.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Subcommand;
use vouch_api::secrets::{decode_value, encode_value, SecretMeta, SecretPut, VersionState, VersionsChanged};
use vouch_core::secret::MAX_VALUE_BYTES;
use vouch_core::SecretPath;
use zeroize::Zeroizing;

use crate::output::{self, Output};
use crate::{parse_flag, Connect};

/// Secret subcommands.
#[derive(Subcommand)]
pub enum SecretCommand {
    /// Write a new version of a secret, read from standard input (default) or from --file.
    ///
    /// The value is never taken from the command line: arguments are visible to every user of the
    /// machine in /proc/<pid>/cmdline and `ps`, and stay in shell history. The bytes are stored
    /// exactly as read (a trailing newline included: use `printf %s`, not `echo`), at most 64 KiB.
    ///
    ///   printf %s "$DB_PASSWORD" | vouch secret put payments/db/password --owner team-payments
    ///   vouch secret put payments/tls/key --file key.pem --rotation-due 90d
    Put {
        /// The secret's path: segments of letters, digits, `.`, `_`, `-`, separated by `/`.
        path: String,
        /// Read the value from this file instead of standard input.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Who answers for the secret (kept from the previous version when not given).
        #[arg(long)]
        owner: Option<String>,
        /// What the secret is for (kept from the previous version when not given).
        #[arg(long)]
        purpose: Option<String>,
        /// When the secret is due for rotation, as a duration from now (`90d`, `12h`); `0` clears it.
        #[arg(long)]
        rotation_due: Option<String>,
    },
    /// Print a secret's value (the latest live version, or --version) to standard output, byte for
    /// byte, or write it to a new 0600 file with --write.
    Get {
        /// The secret's path.
        path: String,
        /// The version to read.
        #[arg(long)]
        version: Option<u64>,
        /// Write the value to this file (created, mode 0600; an existing file is refused).
        #[arg(long)]
        write: Option<PathBuf>,
    },
    /// List secrets (metadata only, never values).
    List {
        /// Only secrets at or under this path.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Show a secret's metadata and versions (never values).
    Versions {
        /// The secret's path.
        path: String,
    },
    /// Soft-delete versions (the latest when no --version is given): they are no longer read, and
    /// `vouch secret undelete` brings them back.
    Delete {
        /// The secret's path.
        path: String,
        /// A version to delete (repeatable).
        #[arg(long = "version")]
        versions: Vec<u64>,
    },
    /// Undo soft deletes.
    Undelete {
        /// The secret's path.
        path: String,
        /// A version to undelete (repeatable, at least one).
        #[arg(long = "version", required = true)]
        versions: Vec<u64>,
    },
    /// Destroy versions: their sealed values are removed from the database for good (backups keep
    /// theirs). Cannot be undone.
    Destroy {
        /// The secret's path.
        path: String,
        /// A version to destroy (repeatable, at least one).
        #[arg(long = "version", required = true)]
        versions: Vec<u64>,
    },
}

/// Reads at most the largest value (and one byte more, to tell a value that is too big).
fn read_value(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>> {
    let mut value = Zeroizing::new(Vec::new());
    let limit = (MAX_VALUE_BYTES + 1) as u64;
    match file {
        Some(path) => {
            let f = std::fs::File::open(path).with_context(|| format!("--file {}", path.display()))?;
            f.take(limit).read_to_end(&mut value).with_context(|| format!("--file {}", path.display()))?;
        }
        None => {
            std::io::stdin()
                .take(limit)
                .read_to_end(&mut value)
                .context("reading the value from standard input")?;
        }
    }
    if value.len() > MAX_VALUE_BYTES {
        anyhow::bail!("the value is more than {MAX_VALUE_BYTES} bytes (64 KiB), the most a secret holds");
    }
    if value.is_empty() {
        anyhow::bail!("the value is empty (pipe it to standard input, or give --file)");
    }
    Ok(value)
}

/// `90d` from now as unix seconds; `0` as 0 (clears the due date).
fn rotation_due(text: &str) -> Result<i64> {
    let d = parse_flag("rotation-due", text, vouch_core::duration::parse)?;
    if d.is_zero() {
        return Ok(0);
    }
    // The CLI turns a relative time into an absolute one at the moment its user runs it.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    let due = now.checked_add(d).context("--rotation-due: too far in the future")?;
    Ok(vouch_core::ttl::unix_seconds(due))
}

fn path(text: &str) -> Result<SecretPath> {
    parse_flag("path", text, SecretPath::parse)
}

fn time(t: Option<i64>) -> String {
    t.map_or_else(|| "-".to_owned(), vouch_core::ttl::rfc3339)
}

fn print_meta(m: &SecretMeta) {
    let rows: [(&str, String); 6] = [
        ("path", m.path.to_string()),
        ("version", m.current_version.to_string()),
        ("owner", if m.owner.is_empty() { "-".into() } else { m.owner.clone() }),
        ("purpose", if m.purpose.is_empty() { "-".into() } else { m.purpose.clone() }),
        ("updated", time(Some(m.updated_at))),
        ("rotation_due", time(m.rotation_due)),
    ];
    for (k, v) in rows {
        println!("{k:<13} {v}");
    }
}

fn print_changed(output: Output, what: &str, changed: &VersionsChanged) -> Result<()> {
    match output {
        Output::Json => output::print_json(changed),
        Output::Table => {
            let list: Vec<String> = changed.changed.iter().map(u64::to_string).collect();
            if list.is_empty() {
                println!("{}: no version changed (already {what})", changed.path);
            } else {
                println!("{}: {what} version(s) {}", changed.path, list.join(", "));
            }
            Ok(())
        }
    }
}

/// Runs a secret subcommand.
pub async fn run(command: SecretCommand, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    let secrets = client.secrets();
    match command {
        SecretCommand::Put { path: p, file, owner, purpose, rotation_due: due } => {
            let p = path(&p)?;
            let rotation_due = due.as_deref().map(rotation_due).transpose()?;
            let value = read_value(file.as_deref())?;
            let put = SecretPut { value: encode_value(&value), owner, purpose, rotation_due };
            let written = secrets.put(p.as_str(), &put).await;
            drop(Zeroizing::new(put.value));
            let written = written?;
            match connect.output {
                Output::Json => output::print_json(&written)?,
                Output::Table => println!("wrote {} version {}", written.secret.path, written.version),
            }
        }
        SecretCommand::Get { path: p, version, write } => {
            let p = path(&p)?;
            let answer = secrets.get(p.as_str(), version).await?;
            let value = Zeroizing::new(decode_value(&answer.value).map_err(anyhow::Error::msg)?);
            if let Some(file) = write {
                vouch_fs::write_new_private(&file, &value)
                    .with_context(|| format!("--write {}", file.display()))?;
                eprintln!("wrote {} version {} to {}", answer.path, answer.version, file.display());
            } else if let Output::Json = connect.output {
                output::print_json(&answer)?;
            } else {
                use std::io::Write as _;
                let mut out = std::io::stdout().lock();
                out.write_all(&value)?;
                out.flush()?;
            }
            drop(Zeroizing::new(answer.value));
        }
        SecretCommand::List { prefix } => {
            let list = secrets.list(prefix.as_deref()).await?;
            if let Output::Json = connect.output {
                output::print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 5]> = list
                .secrets
                .iter()
                .map(|s| {
                    [
                        s.path.to_string(),
                        s.current_version.to_string(),
                        if s.owner.is_empty() { "-".into() } else { s.owner.clone() },
                        time(Some(s.updated_at)),
                        time(s.rotation_due),
                    ]
                })
                .collect();
            output::print_table(["PATH", "VERSION", "OWNER", "UPDATED", "ROTATION DUE"], &rows);
            if rows.is_empty() {
                eprintln!("(no secrets)");
            }
        }
        SecretCommand::Versions { path: p } => {
            let p = path(&p)?;
            let v = secrets.versions(p.as_str()).await?;
            if let Output::Json = connect.output {
                output::print_json(&v)?;
                return Ok(ExitCode::SUCCESS);
            }
            print_meta(&v.secret);
            println!();
            let rows: Vec<[String; 4]> = v
                .versions
                .iter()
                .map(|x| {
                    let state = match x.state {
                        VersionState::Live => "live",
                        VersionState::Deleted => "deleted",
                        VersionState::Destroyed => "destroyed",
                    };
                    [
                        x.version.to_string(),
                        state.to_owned(),
                        time(Some(x.created_at)),
                        time(x.deleted_at.or(x.destroyed_at)),
                    ]
                })
                .collect();
            output::print_table(["VERSION", "STATE", "CREATED", "DELETED/DESTROYED"], &rows);
        }
        SecretCommand::Delete { path: p, versions } => {
            let p = path(&p)?;
            print_changed(connect.output, "deleted", &secrets.delete(p.as_str(), &versions).await?)?;
        }
        SecretCommand::Undelete { path: p, versions } => {
            let p = path(&p)?;
            print_changed(connect.output, "undeleted", &secrets.undelete(p.as_str(), &versions).await?)?;
        }
        SecretCommand::Destroy { path: p, versions } => {
            let p = path(&p)?;
            print_changed(connect.output, "destroyed", &secrets.destroy(p.as_str(), &versions).await?)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
