//! The cost of the tamper-evident audit log: X509-SVID issuance over the admin socket with the
//! audit log off (`VOUCH_AUDIT_ENABLED=false`) against on, same binary, same run, as a ratio (the
//! target of issue 12: at most 10% slower). With it on, the log must hold a record of every
//! issuance, or an `audit.lost` record saying how many were dropped.

use anyhow::{bail, Result};
use vouch_api::audit::{AuditSearch, AuditValue};

use crate::api::{options, start_vouch_with, vouch_load, web_mint};

/// `vouch-bench audit --vouch BIN [--seconds N] [--clients N]`.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let o = options(args)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let body = web_mint()?;
        println!(
            "X509-SVID issuance over the admin socket, audit log off against on ({} clients, {} s each)",
            o.clients, o.seconds
        );
        let mut rates = Vec::new();
        for (name, enabled) in [("audit log off", "false"), ("audit log on", "true")] {
            let (proc, client, _) = start_vouch_with(&o.vouch, &[("VOUCH_AUDIT_ENABLED", enabled)]).await?;
            let run = vouch_load(&o, proc.pid(), &client, body.clone()).await?;
            run.print(name);
            rates.push(run.rate());
            if enabled == "true" {
                // Everything issued is on the record (or counted as lost) once the queue drains:
                // wait until the log stops growing, then verify it.
                let mut last = u64::MAX;
                let report = loop {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    let report = client.audit().verify().await?;
                    if let Some(p) = &report.problem {
                        bail!("the audit log does not verify after the run: {}", p.message);
                    }
                    // Each verification adds its own `audit.verify` record.
                    if last != u64::MAX && report.records <= last + 1 {
                        break report;
                    }
                    last = report.records;
                };
                let q =
                    AuditSearch { event: Some("audit.lost".into()), limit: Some(1000), ..Default::default() };
                let lost: i64 = client
                    .audit()
                    .search(&q)
                    .await?
                    .records
                    .iter()
                    .filter_map(|r| match r.fields.get("count") {
                        Some(AuditValue::Int(n)) => Some(*n),
                        _ => None,
                    })
                    .sum();
                println!("  {:<34} {} records verified, {lost} events lost", "", report.records);
            }
            drop(proc);
        }
        println!("  ratio on/off: {:.2} (target >= 0.90)", rates[1] / rates[0]);
        Ok(())
    })
}
