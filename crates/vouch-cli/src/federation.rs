//! `vouch federation ...`: SPIFFE federation relationships with other trust domains. The server
//! fetches each one's bundle from its bundle endpoint, as its refresh hint says, and hands it to the
//! workloads whose entries federate with it (`vouch entry create --federates-with <trust domain>`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use vouch_api::federation::{Profile, Relationship, RelationshipPatch, RelationshipSpec};
use vouch_core::{SpiffeId, TrustDomain};

use crate::output::{self, Output};
use crate::{parse_flag, Connect};

/// The largest bootstrap bundle file read.
const MAX_BUNDLE_FILE: u64 = 1 << 20;

/// Federation subcommands.
#[derive(Subcommand)]
pub enum FederationCommand {
    /// Create a relationship with another trust domain: its bundle is fetched from its bundle
    /// endpoint at once, then as its refresh hint says, and served to the workloads whose entries
    /// federate with it.
    ///
    /// With another vouch server (its `[federation] bundle_endpoint_listen`, https_spiffe):
    ///
    ///   vouch federation create --trust-domain b.org --bundle-endpoint-url https://vouch.b.org:8443 \
    ///     --profile https_spiffe --endpoint-spiffe-id spiffe://b.org/vouch/server \
    ///     --bootstrap-bundle b-bundle.pem
    ///
    /// The bootstrap bundle is b.org's bundle now (`vouch bundle show --format pem` there, or its SPIFFE bundle JSON),
    /// obtained out of band: it authenticates the first fetch.
    Create {
        /// The other trust domain.
        #[arg(long)]
        trust_domain: String,
        /// Its bundle endpoint (https).
        #[arg(long)]
        bundle_endpoint_url: String,
        /// `https_spiffe` (the endpoint presents an X509-SVID of its trust domain) or `https_web`
        /// (a web-PKI certificate for its host name, checked against federation.web_ca_file).
        #[arg(long)]
        profile: String,
        #[command(flatten)]
        trust: EndpointTrust,
    },
    /// List relationships with when their bundles were last and will next be fetched.
    List,
    /// Show a relationship: settings, refresh state (last refresh, next, last error) and the
    /// bundle served.
    Show {
        /// The other trust domain.
        trust_domain: String,
    },
    /// Change a relationship; the bundle is fetched again at once. A new bootstrap bundle replaces
    /// the bundle served (to repair a lost chain of trust).
    Update {
        /// The other trust domain.
        trust_domain: String,
        /// New bundle endpoint URL.
        #[arg(long)]
        bundle_endpoint_url: Option<String>,
        /// New profile.
        #[arg(long)]
        profile: Option<String>,
        #[command(flatten)]
        trust: EndpointTrust,
    },
    /// Delete a relationship: its bundle is no longer served to any workload.
    Delete {
        /// The other trust domain.
        trust_domain: String,
    },
}

/// How an endpoint is trusted: its SPIFFE ID and the bundle that authenticates it first.
#[derive(Args)]
pub struct EndpointTrust {
    /// https_spiffe: the SPIFFE ID the endpoint presents (a vouch server's is
    /// spiffe://<trust domain>/vouch/server).
    #[arg(long)]
    endpoint_spiffe_id: Option<String>,
    /// A file with the other trust domain's bundle: PEM certificates or a SPIFFE bundle (JWKS).
    /// Required for https_spiffe; on update it replaces the bundle served.
    #[arg(long)]
    bootstrap_bundle: Option<PathBuf>,
}

impl EndpointTrust {
    /// The SPIFFE ID parsed and the bundle file read.
    fn read(self) -> Result<(Option<SpiffeId>, Option<String>)> {
        let id = self
            .endpoint_spiffe_id
            .map(|id| parse_flag("endpoint-spiffe-id", &id, SpiffeId::parse))
            .transpose()?;
        Ok((id, self.bootstrap_bundle.as_deref().map(read_bundle).transpose()?))
    }
}

fn read_bundle(path: &std::path::Path) -> Result<String> {
    let size =
        std::fs::metadata(path).with_context(|| format!("--bootstrap-bundle {}", path.display()))?.len();
    if size > MAX_BUNDLE_FILE {
        anyhow::bail!(
            "--bootstrap-bundle {}: {size} bytes, more than a bundle can be (1 MiB)",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("--bootstrap-bundle {}", path.display()))
}

fn profile(value: &str) -> Result<Profile> {
    parse_flag("profile", value, |v| v.parse::<Profile>())
}

fn time(t: Option<i64>) -> String {
    t.map_or_else(|| "-".to_owned(), vouch_core::ttl::rfc3339)
}

fn print_relationship(output: Output, r: &Relationship) -> Result<()> {
    if let Output::Json = output {
        return output::print_json(r);
    }
    let s = &r.state;
    let rows: [(&str, String); 10] = [
        ("trust_domain", r.trust_domain.to_string()),
        ("url", r.bundle_endpoint_url.clone()),
        ("profile", r.profile.as_str().to_owned()),
        ("endpoint_id", r.endpoint_spiffe_id.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)),
        ("last_refresh", time(s.last_refresh)),
        ("next_refresh", time(s.next_refresh)),
        (
            "last_error",
            s.last_error
                .clone()
                .map_or_else(|| "-".to_owned(), |e| format!("{e} (at {})", time(s.last_error_at))),
        ),
        ("sequence", s.bundle_sequence.map_or_else(|| "-".to_owned(), |n| n.to_string())),
        ("x509_roots", s.x509_authorities.to_string()),
        ("jwt_keys", s.jwt_authorities.to_string()),
    ];
    for (k, v) in rows {
        println!("{k:<13} {v}");
    }
    Ok(())
}

/// Runs a federation subcommand.
pub async fn run(command: FederationCommand, connect: &Connect) -> Result<ExitCode> {
    let client = connect.client()?;
    let federation = client.federation();
    match command {
        FederationCommand::Create { trust_domain, bundle_endpoint_url, profile: p, trust } => {
            let (endpoint_spiffe_id, bootstrap_bundle) = trust.read()?;
            let spec = RelationshipSpec {
                trust_domain: parse_flag("trust-domain", &trust_domain, TrustDomain::new)?,
                bundle_endpoint_url,
                profile: profile(&p)?,
                endpoint_spiffe_id,
                bootstrap_bundle,
            };
            print_relationship(connect.output, &federation.create(&spec).await?)?;
        }
        FederationCommand::List => {
            let list = federation.list().await?;
            if let Output::Json = connect.output {
                output::print_json(&list)?;
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<[String; 5]> = list
                .relationships
                .iter()
                .map(|r| {
                    [
                        r.trust_domain.to_string(),
                        r.profile.as_str().to_owned(),
                        time(r.state.last_refresh),
                        time(r.state.next_refresh),
                        r.state.last_error.clone().unwrap_or_else(|| "-".to_owned()),
                    ]
                })
                .collect();
            output::print_table(
                ["TRUST DOMAIN", "PROFILE", "LAST REFRESH", "NEXT REFRESH", "LAST ERROR"],
                &rows,
            );
            if rows.is_empty() {
                eprintln!("(no federation relationships)");
            }
        }
        FederationCommand::Show { trust_domain } => {
            let td = parse_flag("trust domain", &trust_domain, TrustDomain::new)?;
            print_relationship(connect.output, &federation.get(&td.to_string()).await?)?;
        }
        FederationCommand::Update { trust_domain, bundle_endpoint_url, profile: p, trust } => {
            let td = parse_flag("trust domain", &trust_domain, TrustDomain::new)?;
            let (endpoint_spiffe_id, bootstrap_bundle) = trust.read()?;
            let patch = RelationshipPatch {
                bundle_endpoint_url,
                profile: p.as_deref().map(profile).transpose()?,
                endpoint_spiffe_id,
                bootstrap_bundle,
            };
            print_relationship(connect.output, &federation.update(&td.to_string(), &patch).await?)?;
        }
        FederationCommand::Delete { trust_domain } => {
            let td = parse_flag("trust domain", &trust_domain, TrustDomain::new)?;
            let deleted = federation.delete(&td.to_string()).await?;
            match connect.output {
                Output::Json => output::print_json(&deleted)?,
                Output::Table => {
                    println!("deleted the federation relationship with {}", deleted.trust_domain)
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
