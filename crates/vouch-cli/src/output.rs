//! Tables for people, JSON for scripts.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::ValueEnum;
use serde_json::Value;

/// How results are printed.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON.
    Json,
}

fn selectors(e: &Value) -> String {
    e["selectors"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

/// Prints a list answer (`{"entries": [...]}`).
pub fn print_entries(output: Output, v: &Value) -> Result<()> {
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(v)?);
        return Ok(());
    }
    let entries = v["entries"].as_array().cloned().unwrap_or_default();
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            [
                e["id"].as_str().unwrap_or_default().to_owned(),
                e["spiffe_id"].as_str().unwrap_or_default().to_owned(),
                e["parent_id"].as_str().unwrap_or_default().to_owned(),
                selectors(e),
            ]
        })
        .collect();
    let headers = ["ID", "SPIFFE ID", "PARENT", "SELECTORS"];
    let mut widths = headers.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 4]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 3 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3]]);
    }
    if rows.is_empty() {
        eprintln!("(no entries)");
    }
    Ok(())
}

/// The fields of an entry an administrator sets (the API's `EntrySpec`, less the id).
pub const SETTABLE_FIELDS: [&str; 12] = [
    "spiffe_id",
    "parent_id",
    "selectors",
    "x509_svid_ttl",
    "jwt_svid_ttl",
    "dns_names",
    "hint",
    "admin",
    "federates_with",
    "expires_at",
    "owner",
    "purpose",
];

/// Prints one entry.
pub fn print_entry(output: Output, e: &Value) -> Result<()> {
    if let Output::Json = output {
        println!("{}", serde_json::to_string_pretty(e)?);
        return Ok(());
    }
    let field = |k: &str| match &e[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.is_empty() => "-".to_owned(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_owned).unwrap_or_else(|| x.to_string()))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    let fields = std::iter::once("id").chain(SETTABLE_FIELDS).chain(["revision", "created_at"]);
    for k in fields {
        println!("{k:<15} {}", field(k));
    }
    Ok(())
}

/// Writes svid.pem (chain), svid.key (0600, when the server generated it) and bundle.pem.
pub fn write_svid_files(dir: &Path, v: &Value) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    std::fs::write(dir.join("svid.pem"), text("cert_chain_pem"))?;
    std::fs::write(dir.join("bundle.pem"), text("bundle_pem"))?;
    if let Some(key) = v["private_key_pem"].as_str() {
        let path = dir.join("svid.key");
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        f.write_all(key.as_bytes())?;
    }
    Ok(())
}

/// Percent-encodes a query or path value.
pub fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
