//! Tables for people, JSON for scripts. JSON output is the API's own types, numbers stay numbers;
//! tables show times as RFC 3339.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use serde::Serialize;
use vouch_api::admin::{EntryList, MintX509Response};
use vouch_core::ttl::rfc3339;
use vouch_core::Entry;

/// How results are printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

/// Prints a value as pretty JSON.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows under headers, columns padded to their widest cell; the last column is not padded.
pub fn print_table<const N: usize>(headers: [&str; N], rows: &[[String; N]]) {
    let mut widths = headers.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; N]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers);
    for r in rows {
        line(r.each_ref().map(String::as_str));
    }
}

fn joined<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")
}

/// Prints a list answer.
pub fn print_entries(output: Output, list: &EntryList) -> Result<()> {
    if let Output::Json = output {
        return print_json(list);
    }
    let rows: Vec<[String; 5]> = list
        .entries
        .iter()
        .map(|e| {
            [
                e.id.to_string(),
                e.namespace.to_string(),
                e.spiffe_id.to_string(),
                e.parent_id.to_string(),
                joined(e.selectors.iter()),
            ]
        })
        .collect();
    print_table(["ID", "NAMESPACE", "SPIFFE ID", "PARENT", "SELECTORS"], &rows);
    if rows.is_empty() {
        eprintln!("(no entries)");
    }
    // On stderr, so the table stays parseable; the JSON output carries the same list.
    for d in &list.damaged {
        eprintln!(
            "warning: entry `{}` is damaged in the database and was skipped: {} (see docs/operations.md, \"Damaged entry rows\")",
            d.id, d.reason
        );
    }
    for v in &list.rule_violations {
        eprintln!(
            "warning: entry `{}` breaks this server's rule that every entry has an owner and a purpose: {} (set them with `vouch entry update {} --owner ... --purpose ...`)",
            v.id, v.reason, v.id
        );
    }
    Ok(())
}

/// Prints one entry.
pub fn print_entry(output: Output, e: &Entry) -> Result<()> {
    if let Output::Json = output {
        return print_json(e);
    }
    let or_dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
    let secs = |v: Option<u64>| {
        v.map_or_else(
            || "-".to_owned(),
            |s| vouch_core::duration::Compound(std::time::Duration::from_secs(s)).to_string(),
        )
    };
    let admin_namespaces = if e.admin && e.admin_namespaces.is_empty() {
        "all".to_owned()
    } else {
        or_dash(joined(&e.admin_namespaces))
    };
    let rows: [(&str, String); 18] = [
        ("id", e.id.to_string()),
        ("namespace", e.namespace.to_string()),
        ("spiffe_id", e.spiffe_id.to_string()),
        ("parent_id", e.parent_id.to_string()),
        ("selectors", joined(e.selectors.iter())),
        ("x509_svid_ttl", secs(e.x509_svid_ttl)),
        ("jwt_svid_ttl", secs(e.jwt_svid_ttl)),
        ("dns_names", or_dash(joined(e.dns_names.iter().map(vouch_core::DnsName::as_str)))),
        ("x509_common_name", e.x509_common_name.as_ref().map_or_else(|| "-".to_owned(), ToString::to_string)),
        ("hint", or_dash(e.hint.clone())),
        ("admin", e.admin.to_string()),
        ("admin_namespaces", admin_namespaces),
        ("federates_with", or_dash(joined(&e.federates_with))),
        ("expires_at", e.expires_at.map_or_else(|| "-".to_owned(), rfc3339)),
        ("owner", or_dash(e.owner.clone())),
        ("purpose", or_dash(e.purpose.clone())),
        ("revision", e.revision.to_string()),
        ("created_at", rfc3339(e.created_at)),
    ];
    for (k, v) in rows {
        println!("{k:<16} {v}");
    }
    Ok(())
}

/// Writes svid.pem (chain), svid.key (0600, when the server generated it) and bundle.pem.
pub fn write_svid_files(dir: &Path, svid: &MintX509Response) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("svid.pem"), &svid.cert_chain_pem)?;
    std::fs::write(dir.join("bundle.pem"), &svid.bundle_pem)?;
    if let Some(key) = &svid.private_key_pem {
        write_private(&dir.join("svid.key"), key.as_bytes())?;
    }
    Ok(())
}

/// Writes a file only its owner can read (0600), replacing any file there atomically.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    Ok(vouch_fs::replace_private(path, data)?)
}
