//! `vouch group ...`: node groups, SPIRE's node aliases. A group is a SPIFFE ID under
//! `spiffe://<td>/vouch/group/` with node selectors; every agent whose node selectors (`vouch agent
//! show`) include all of them serves the entries parented to the group.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use vouch_api::admin::GroupInfo;
use vouch_core::{GroupName, NodeGroupSpec, SpiffeId};

use crate::output::{self, Output};
use crate::{parse_all, parse_flag, parse_selector, Connect};

/// Group subcommands.
#[derive(Subcommand)]
pub enum GroupCommand {
    /// Create a node group: every agent whose node selectors include all of --selector belongs to it
    /// and serves the entries parented to its SPIFFE ID (`vouch entry create --parent-id <group ID>`).
    ///
    /// Like SPIRE's `entry create -node`: for example, every node of Kubernetes cluster prod:
    ///
    ///   vouch group create --spiffe-id spiffe://example.org/vouch/group/prod -s k8s_psat:cluster:prod
    ///
    /// Selectors must be node selectors: `k8s_psat:` (cluster, agent_ns, agent_sa, agent_pod_name,
    /// agent_pod_uid, agent_node_name, agent_node_uid), `x509pop:` (ca:<CA set>, subject:cn:,
    /// san:dns:, san:uri:, fingerprint:) or `join_token:` (label:<key>:<value> from `vouch token
    /// create --label key=value`).
    Create {
        /// The group's SPIFFE ID: spiffe://<trust domain>/vouch/group/<name>.
        #[arg(long)]
        spiffe_id: String,
        /// A node selector every member must have (type:value); repeat for several.
        #[arg(long = "selector", short = 's', required = true)]
        selectors: Vec<String>,
        /// Who answers for this group.
        #[arg(long)]
        owner: Option<String>,
        /// Why this group exists.
        #[arg(long)]
        purpose: Option<String>,
    },
    /// List node groups with their member and entry counts.
    List,
    /// Show a node group, its selectors and its current members.
    Show {
        /// The group's name or SPIFFE ID.
        group: String,
    },
    /// Delete a node group. Refused while entries are parented to it: delete them or give them
    /// another parent first (`vouch entry list --parent-id <group ID>`).
    Delete {
        /// The group's name or SPIFFE ID.
        group: String,
    },
}

/// A group given by name (`prod`) or SPIFFE ID (`spiffe://example.org/vouch/group/prod`).
fn group_name(value: &str) -> Result<GroupName> {
    if value.starts_with("spiffe://") {
        let id = parse_flag("group", value, SpiffeId::parse)?;
        return parse_flag("group", value, |_| GroupName::from_id("group", &id, id.trust_domain()));
    }
    parse_flag("group", value, GroupName::new)
}

fn print_group(output: Output, g: &GroupInfo) -> Result<()> {
    if let Output::Json = output {
        return output::print_json(g);
    }
    let or_dash = |s: &str| if s.is_empty() { "-".to_owned() } else { s.to_owned() };
    let joined = |items: Vec<String>| if items.is_empty() { "-".to_owned() } else { items.join(",") };
    let rows: [(&str, String); 8] = [
        ("name", g.group.name.to_string()),
        ("spiffe_id", g.group.spiffe_id.to_string()),
        ("selectors", joined(g.group.selectors.iter().map(ToString::to_string).collect())),
        ("members", joined(g.members.iter().map(ToString::to_string).collect())),
        ("entries", g.entries.to_string()),
        ("owner", or_dash(&g.group.owner)),
        ("purpose", or_dash(&g.group.purpose)),
        ("created_at", vouch_core::ttl::rfc3339(g.group.created_at)),
    ];
    for (k, v) in rows {
        println!("{k:<11} {v}");
    }
    Ok(())
}

/// Runs a group subcommand.
pub async fn run(command: GroupCommand, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    let groups = client.groups();
    match command {
        GroupCommand::Create { spiffe_id, selectors, owner, purpose } => {
            let spec = NodeGroupSpec {
                spiffe_id: parse_flag("spiffe-id", &spiffe_id, SpiffeId::parse)?,
                selectors: parse_all("selector", &selectors, parse_selector)?,
                owner: owner.unwrap_or_default(),
                purpose: purpose.unwrap_or_default(),
            };
            print_group(connect.output, &groups.create(&spec).await?)?;
        }
        GroupCommand::List => {
            let list = groups.list().await?;
            if let Output::Json = connect.output {
                output::print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 4]> = list
                .groups
                .iter()
                .map(|g| {
                    [
                        g.group.spiffe_id.to_string(),
                        g.members.len().to_string(),
                        g.entries.to_string(),
                        g.group.selectors.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                    ]
                })
                .collect();
            output::print_table(["SPIFFE ID", "MEMBERS", "ENTRIES", "SELECTORS"], &rows);
            if rows.is_empty() {
                eprintln!("(no node groups)");
            }
        }
        GroupCommand::Show { group } => {
            print_group(connect.output, &groups.get(group_name(&group)?.as_str()).await?)?;
        }
        GroupCommand::Delete { group } => {
            let deleted = groups.delete(group_name(&group)?.as_str()).await?;
            match connect.output {
                Output::Json => output::print_json(&deleted)?,
                Output::Table => println!("deleted node group {}", deleted.spiffe_id),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
