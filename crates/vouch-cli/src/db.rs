//! `vouch db ...`: short-lived PostgreSQL credentials. The server makes a login role with a random
//! password and the grants of a role template configured under `[database.<connection>]`, and
//! drops it when its lease expires or is revoked (see docs/database-credentials.md).

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use vouch_api::db::DbLeaseView;
use zeroize::Zeroizing;

use crate::output::{self, Output};
use crate::{parse_flag, Connect};

/// Database credential subcommands.
#[derive(Subcommand)]
pub enum DbCommand {
    /// Issue credentials for a role template: a new login role, valid until its lease ends.
    ///
    /// The password is printed once, to standard output, and kept nowhere by vouch; the lease id
    /// and expiry go to standard error. With --output json the whole answer (lease, username,
    /// password) is printed as JSON.
    ///
    ///   vouch db creds orders/readonly --ttl 15m
    Creds {
        /// `<connection>/<template>`, as configured under [database.<connection>.roles.<template>].
        role: String,
        /// The lease's lifetime (`15m`, `1h`); the template's default_ttl when left out, at most its max_ttl.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List leases: role, connection, template, who asked, expiry (never passwords).
    Leases,
    /// Extend a lease: to --ttl from now (or the template's default), never past its max TTL.
    Renew {
        /// The lease id (from `vouch db creds` or `vouch db leases`).
        lease: String,
        /// The new lifetime from now.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Revoke a lease now: the role's sessions are ended and the role is dropped.
    Revoke {
        /// The lease id.
        lease: String,
    },
}

fn ttl(text: Option<&str>) -> Result<Option<u64>> {
    text.map(|t| parse_flag("ttl", t, vouch_core::duration::parse).map(|d| d.as_secs())).transpose()
}

fn print_lease(l: &DbLeaseView) {
    let rows: [(&str, String); 7] = [
        ("lease", l.id.clone()),
        ("role", l.role.clone()),
        ("connection", l.connection.clone()),
        ("template", l.template.clone()),
        ("identity", l.identity.clone()),
        ("expires", vouch_core::ttl::rfc3339(l.expires_at)),
        ("max_expires", vouch_core::ttl::rfc3339(l.max_expires_at)),
    ];
    for (k, v) in rows {
        println!("{k:<12} {v}");
    }
}

/// Runs a database credential subcommand.
pub async fn run(command: DbCommand, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    let db = client.db();
    match command {
        DbCommand::Creds { role, ttl: t } => {
            let creds = db.creds(&role, ttl(t.as_deref())?).await?;
            let password = Zeroizing::new(creds.password.clone());
            match connect.output {
                Output::Json => output::print_json(&creds)?,
                Output::Table => {
                    eprintln!(
                        "lease {} for {} on {}/{}, expires {}",
                        creds.lease.id,
                        creds.username,
                        creds.lease.connection,
                        creds.lease.template,
                        vouch_core::ttl::rfc3339(creds.lease.expires_at)
                    );
                    println!("username {}", creds.username);
                    println!("password {}", *password);
                }
            }
            drop(Zeroizing::new(creds.password));
        }
        DbCommand::Leases => {
            let list = db.leases().await?;
            if let Output::Json = connect.output {
                output::print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 6]> = list
                .leases
                .iter()
                .map(|l| {
                    [
                        l.id.clone(),
                        l.role.clone(),
                        format!("{}/{}", l.connection, l.template),
                        l.identity.clone(),
                        l.state.clone(),
                        vouch_core::ttl::rfc3339(l.expires_at),
                    ]
                })
                .collect();
            output::print_table(["LEASE", "ROLE", "TEMPLATE", "IDENTITY", "STATE", "EXPIRES"], &rows);
            if rows.is_empty() {
                eprintln!("(no leases)");
            }
        }
        DbCommand::Renew { lease, ttl: t } => {
            let l = db.renew(&lease, ttl(t.as_deref())?).await?;
            match connect.output {
                Output::Json => output::print_json(&l)?,
                Output::Table => print_lease(&l),
            }
        }
        DbCommand::Revoke { lease } => {
            let l = db.revoke(&lease).await?;
            match connect.output {
                Output::Json => output::print_json(&l)?,
                Output::Table => println!("revoked lease {}: role {} dropped", l.id, l.role),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
