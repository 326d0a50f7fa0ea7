//! `vouch audit ...`: the tamper-evident audit log. Search it, export it as JSON lines, and verify
//! it: on the server (`vouch audit verify`), or offline from an export with the checkpoint key
//! kept apart from the server (`vouch audit verify --file export.jsonl --key audit-key.json`).
//! `vouch audit who` answers which workloads held an identity, from the agents' delivery records.

use std::io::{BufRead as _, BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use vouch_api::audit::{
    AuditCheckpoint, AuditExportLine, AuditKeyList, AuditPublicKey, AuditRecord, AuditSearch,
    AuditVerifyReport, WhoAnswer, WhoQuery, MAX_AUDIT_PAGE,
};
use vouch_ca::audit::ChainVerifier;

use crate::output::{self, Output};
use crate::Connect;

/// Audit log subcommands.
#[derive(Subcommand)]
pub enum AuditCommand {
    /// Search records (oldest first): by SPIFFE ID, node, event, time range.
    ///
    ///   vouch audit search --spiffe-id spiffe://example.org/payments --since 1h
    ///   vouch audit search --event 'entry.*' --since 2026-11-29T00:00:00Z --json
    Search {
        /// Records about this SPIFFE ID.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Records about this node (the agent's SPIFFE ID).
        #[arg(long)]
        node: Option<String>,
        /// This event (`svid.x509.mint`), or a prefix ending in `*` (`entry.*`).
        #[arg(long)]
        event: Option<String>,
        /// From this time on: RFC 3339 (`2026-11-29T03:00:00Z`) or a duration ago (`1h`, `2d`).
        #[arg(long)]
        since: Option<String>,
        /// Before this time: RFC 3339 or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// At most this many records (1..=1000); the next page starts at `--after` the last one.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Records after this sequence number (paging).
        #[arg(long)]
        after: Option<u64>,
        /// Follow every page instead of stopping at --limit.
        #[arg(long)]
        all: bool,
        /// JSON lines, one record per line (as `--output json`).
        #[arg(long)]
        json: bool,
    },
    /// Export the whole log as JSON lines: every record, then every signed checkpoint.
    Export {
        /// Write to this file instead of standard output.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Verify the chain and its checkpoints: on the server, or offline with --file and --key.
    /// Exit code 1 when the log was tampered with; the report says where.
    Verify {
        /// An export (`vouch audit export`) to verify offline.
        #[arg(long, requires = "key")]
        file: Option<PathBuf>,
        /// The checkpoint key (`vouch audit key -o json`), kept apart from the server.
        #[arg(long, requires = "file")]
        key: Option<PathBuf>,
    },
    /// Show the public keys that sign checkpoints (save `-o json` for offline verification).
    Key,
    /// Forensics: which workloads held an identity at a time, or at any time in a range (node,
    /// pid, container id, image id, binary hash, serial, validity), from what the agents reported
    /// delivering. An SVID delivered at t0 and valid until t1 was held over [t0, t1].
    ///
    ///   vouch audit who --spiffe-id spiffe://example.org/payments --at 2026-11-30T03:00:00Z
    ///   vouch audit who --spiffe-id spiffe://example.org/payments --from 3h --to 1h -o json
    Who {
        /// The identity.
        #[arg(long)]
        spiffe_id: String,
        /// At this time: RFC 3339 or a duration ago (`1h`).
        #[arg(long, conflicts_with_all = ["from", "to"], required_unless_present = "from")]
        at: Option<String>,
        /// From this time (with --to): RFC 3339 or a duration ago.
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// To this time, inclusive (with --from): RFC 3339 or a duration ago.
        #[arg(long, requires = "from")]
        to: Option<String>,
    },
}

/// A time flag as RFC 3339: given so, or a duration before `now`.
fn time_flag(name: &str, text: &str, now: std::time::SystemTime) -> Result<String> {
    if vouch_core::ttl::parse_rfc3339_ms(text).is_ok() {
        return Ok(text.to_owned());
    }
    match vouch_core::duration::parse(text) {
        Ok(ago) => {
            let at = now.checked_sub(ago).unwrap_or(std::time::UNIX_EPOCH);
            Ok(vouch_core::ttl::rfc3339(vouch_core::ttl::unix_seconds(at)))
        }
        Err(_) => bail!(
            "--{name}: `{text}` is neither an RFC 3339 time (2026-11-29T03:18:06Z) nor a duration ago (90s, 1h, 2d)"
        ),
    }
}

fn print_record(r: &AuditRecord) {
    let fields: Vec<String> = r.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let secs = r.time_ms.div_euclid(1000);
    println!("{:>8}  {}  {:<24} {}", r.seq, vouch_core::ttl::rfc3339(secs), r.event, fields.join(" "));
}

fn json_line<T: serde::Serialize>(out: &mut impl std::io::Write, v: &T) -> Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Runs an audit subcommand.
pub async fn run(command: AuditCommand, connect: &Connect) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify { file: Some(file), key: Some(key) } => {
            return verify_file(&file, &key, connect.output)
        }
        AuditCommand::Verify { .. } => {
            let report = connect.client()?.audit().verify().await?;
            return print_report(&report, connect.output);
        }
        _ => {}
    }
    let client = connect.client()?;
    let audit = client.audit();
    match command {
        AuditCommand::Search { spiffe_id, node, event, since, until, limit, after, all, json } => {
            #[allow(clippy::disallowed_methods)]
            // "1h ago" is relative to the wall clock of the one running it
            let now = std::time::SystemTime::now();
            let mut q = AuditSearch {
                spiffe_id,
                node,
                event,
                since: since.map(|t| time_flag("since", &t, now)).transpose()?,
                until: until.map(|t| time_flag("until", &t, now)).transpose()?,
                after,
                limit: Some(if all { MAX_AUDIT_PAGE } else { limit }),
            };
            let json = json || matches!(connect.output, Output::Json);
            let stdout = std::io::stdout();
            let mut out = BufWriter::new(stdout.lock());
            let mut shown = 0usize;
            loop {
                let page = audit.search(&q).await?;
                for r in &page.records {
                    if json {
                        json_line(&mut out, r)?;
                    } else {
                        out.flush()?;
                        print_record(r);
                    }
                }
                shown += page.records.len();
                match page.next_after {
                    Some(next) if all => q.after = Some(next),
                    Some(next) => {
                        out.flush()?;
                        eprintln!("(more records: add --after {next}, or --all)");
                        break;
                    }
                    None => break,
                }
            }
            out.flush()?;
            if shown == 0 && !json {
                eprintln!("(no records)");
            }
        }
        AuditCommand::Export { file } => {
            let sink: Box<dyn std::io::Write> = match &file {
                Some(path) => Box::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot create {}", path.display()))?,
                ),
                None => Box::new(std::io::stdout().lock()),
            };
            let mut out = BufWriter::new(sink);
            let mut q = AuditSearch { limit: Some(MAX_AUDIT_PAGE), ..Default::default() };
            let mut records = 0u64;
            loop {
                let page = audit.search(&q).await?;
                for r in page.records {
                    json_line(&mut out, &AuditExportLine::Record(r))?;
                    records += 1;
                }
                match page.next_after {
                    Some(next) => q.after = Some(next),
                    None => break,
                }
            }
            let checkpoints = audit.checkpoints().await?.checkpoints;
            let n = checkpoints.len();
            for c in checkpoints {
                json_line(&mut out, &AuditExportLine::Checkpoint(c))?;
            }
            out.flush()?;
            if let Some(path) = &file {
                eprintln!("exported {records} records and {n} checkpoints to {}", path.display());
            }
        }
        AuditCommand::Key => {
            let keys = audit.keys().await?;
            match connect.output {
                Output::Json => output::print_json(&keys)?,
                Output::Table => {
                    let rows: Vec<[String; 3]> = keys
                        .keys
                        .iter()
                        .map(|k| [k.key_id.clone(), k.algorithm.clone(), k.public_key.clone()])
                        .collect();
                    output::print_table(["KEY ID", "ALGORITHM", "PUBLIC KEY"], &rows);
                }
            }
        }
        AuditCommand::Who { spiffe_id, at, from, to } => {
            #[allow(clippy::disallowed_methods)]
            // "1h ago" is relative to the wall clock of the one running it
            let now = std::time::SystemTime::now();
            let q = WhoQuery {
                spiffe_id,
                at: at.map(|t| time_flag("at", &t, now)).transpose()?,
                from: from.map(|t| time_flag("from", &t, now)).transpose()?,
                to: to.map(|t| time_flag("to", &t, now)).transpose()?,
            };
            print_who(&audit.who(&q).await?, connect.output)?;
        }
        AuditCommand::Verify { .. } => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// At most the first `n` characters of `s` (ids shortened as `docker ps` does), `-` for none.
fn short(s: Option<&str>, n: usize) -> String {
    s.map_or_else(|| "-".to_owned(), |s| s.chars().take(n).collect())
}

fn print_who(answer: &WhoAnswer, output: Output) -> Result<()> {
    if let Output::Json = output {
        return output::print_json(answer);
    }
    let time = |ms: i64| vouch_core::ttl::rfc3339(ms.div_euclid(1000));
    let rows: Vec<[String; 8]> = answer
        .holders
        .iter()
        .map(|h| {
            let image = h.image_id.as_deref().map(|i| i.strip_prefix("sha256:").unwrap_or(i));
            [
                time(h.delivered_at_ms),
                vouch_core::ttl::rfc3339(h.not_after),
                h.node.clone(),
                h.pid.to_string(),
                short(h.container_id.as_deref(), 12),
                short(image, 12),
                short(h.binary_sha256.as_deref(), 12),
                format!("{}:{}", h.kind, h.svid_id),
            ]
        })
        .collect();
    output::print_table(["HELD FROM", "UNTIL", "NODE", "PID", "CONTAINER", "IMAGE", "BINARY", "SVID"], &rows);
    if rows.is_empty() {
        eprintln!(
            "(no workload held {} between {} and {})",
            answer.spiffe_id,
            time(answer.from_ms),
            time(answer.to_ms)
        );
    }
    if answer.truncated {
        eprintln!("(incomplete: too many records; ask about a narrower range)");
    }
    Ok(())
}

fn print_report(report: &AuditVerifyReport, output: Output) -> Result<ExitCode> {
    match output {
        Output::Json => output::print_json(report)?,
        Output::Table if report.ok() => println!("{report}"),
        Output::Table => eprintln!("{report}"),
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The trusted keys from a key file: `vouch audit key -o json` (a list) or one key.
fn read_keys(path: &Path) -> Result<Vec<AuditPublicKey>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if let Ok(list) = serde_json::from_str::<AuditKeyList>(&text) {
        return Ok(list.keys);
    }
    let one: AuditPublicKey = serde_json::from_str(&text).with_context(|| {
        format!("{} is not an audit key file (the output of `vouch audit key -o json`)", path.display())
    })?;
    Ok(vec![one])
}

/// The records and checkpoints of an export, in file order; a line that is neither is an error
/// naming it.
fn export_lines(file: &Path) -> Result<impl Iterator<Item = Result<AuditExportLine>> + '_> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
    );
    Ok(reader.lines().enumerate().filter_map(move |(n, line)| match line {
        Err(e) => Some(Err(e.into())),
        Ok(l) if l.trim().is_empty() => None,
        Ok(l) => Some(serde_json::from_str(&l).with_context(|| {
            format!("{} line {}: not a record or checkpoint of `vouch audit export`", file.display(), n + 1)
        })),
    }))
}

/// Walks an export offline: the checkpoints first (a first pass), then the records in file order.
fn verify_file(file: &Path, key: &Path, output: Output) -> Result<ExitCode> {
    let keys = read_keys(key)?;
    let mut checkpoints: Vec<AuditCheckpoint> = Vec::new();
    for line in export_lines(file)? {
        if let AuditExportLine::Checkpoint(c) = line? {
            checkpoints.push(c);
        }
    }
    let mut v = ChainVerifier::new(&keys, checkpoints).with_context(|| format!("{}", key.display()))?;
    let mut page = Vec::with_capacity(1024);
    for line in export_lines(file)? {
        if let AuditExportLine::Record(r) = line? {
            page.push(r);
            if page.len() == 1024 {
                v.feed(std::mem::take(&mut page));
            }
        }
    }
    v.feed(page);
    print_report(&v.finish(None), output)
}
