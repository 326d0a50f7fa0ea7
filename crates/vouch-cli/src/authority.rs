//! `vouch authority ...`: the trust domain's signing keys (roots, signing CAs, JWT keys) and their
//! life cycle, and a root rotation started ahead of schedule.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use vouch_api::admin::{AuthorityKeys, KeyKind};
use vouch_core::ttl::{rfc3339, KeyState};

use crate::output::{self, Output};
use crate::Connect;

/// Authority subcommands.
#[derive(Subcommand)]
pub enum AuthorityCommand {
    /// List the authority's keys: roots, signing CAs and JWT keys, each prepared (published, not
    /// signing yet), active or retired (kept published until what it signed has expired).
    Keys,
    /// Publish a successor root now, like SPIRE's `localauthority x509 prepare`.
    ///
    /// The new root enters the trust bundle at once, so agents, workloads and federated trust
    /// domains learn it before anything chains to it; it takes over on the usual schedule. Use it
    /// before a planned rotation, or to give federated domains time to fetch the new bundle.
    /// Refused (exit 1) when a successor is already prepared, or when the root is an upstream CA
    /// (rotate that by replacing ca.upstream_cert and ca.upstream_key).
    PrepareRoot,
}

fn print_keys(output: Output, keys: &AuthorityKeys) -> Result<()> {
    if let Output::Json = output {
        return output::print_json(keys);
    }
    let rows: Vec<[String; 5]> = keys
        .keys
        .iter()
        .map(|k| {
            let kind = match k.kind {
                KeyKind::Root => "root",
                KeyKind::Intermediate => "signing CA",
                KeyKind::Jwt => "JWT key",
            };
            let state = match k.state {
                KeyState::Prepared => "prepared",
                KeyState::Active => "active",
                KeyState::Retired => "retired",
            };
            [kind.to_owned(), state.to_owned(), k.id.clone(), rfc3339(k.not_before), rfc3339(k.not_after)]
        })
        .collect();
    println!("trust domain {}, bundle sequence {}", keys.trust_domain, keys.bundle_sequence);
    output::print_table(["KIND", "STATE", "ID", "NOT BEFORE", "NOT AFTER"], &rows);
    Ok(())
}

/// Runs an authority subcommand.
pub async fn run(command: AuthorityCommand, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    let keys = match command {
        AuthorityCommand::Keys => client.authority_keys().await?,
        AuthorityCommand::PrepareRoot => client.prepare_root().await?,
    };
    print_keys(connect.output, &keys)?;
    Ok(ExitCode::SUCCESS)
}
