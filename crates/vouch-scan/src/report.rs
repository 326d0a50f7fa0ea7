//! Findings, their places, and the three output formats: a table for people, JSON for scripts and
//! baselines, SARIF 2.1.0 for code-scanning UIs. A secret value never leaves this module whole: a finding
//! keeps a redacted form and a fingerprint.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Where a finding is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Location {
    /// A file on disk (or an entry of a plain tar: `archive.tar!/path`).
    File {
        /// Path as given or found by the walk.
        path: String,
        /// 1-based line.
        line: u64,
        /// Last line (multi-line secrets).
        end_line: u64,
        /// 1-based column, in characters.
        column: usize,
    },
    /// A file inside an image layer.
    Layer {
        /// The image archive or layout directory.
        image: String,
        /// The image's name, where the archive records one.
        #[serde(skip_serializing_if = "Option::is_none")]
        image_ref: Option<String>,
        /// 1-based position of the layer in the image.
        layer: usize,
        /// Digest of the layer (blob digest, or the diff ID for legacy `docker save`).
        layer_digest: String,
        /// Path inside the layer.
        path: String,
        /// 1-based line.
        line: u64,
        /// Last line.
        end_line: u64,
        /// 1-based column.
        column: usize,
        /// Whether the file is in the image's final filesystem.
        presence: Presence,
    },
    /// A file in git history: the first commit that brought this content in at this path.
    Commit {
        /// The repository as given.
        repo: String,
        /// The commit id.
        commit: String,
        /// Path in the commit.
        path: String,
        /// 1-based line.
        line: u64,
        /// Last line.
        end_line: u64,
        /// 1-based column.
        column: usize,
    },
    /// A field of the image configuration (Env, Labels, history).
    Config {
        /// The image archive or layout directory.
        image: String,
        /// The image's name.
        #[serde(skip_serializing_if = "Option::is_none")]
        image_ref: Option<String>,
        /// Digest of the image config (the image ID).
        config_digest: String,
        /// `Env[1]`, `Labels[ci.token]`, `history[3].created_by`.
        field: String,
    },
}

/// Whether a file seen in a layer survives into the final filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Presence {
    /// Still there.
    Present,
    /// Removed by a whiteout (or an opaque directory) in a later layer; still in the image's blobs.
    Deleted {
        /// The layer that removed it.
        in_layer: usize,
    },
    /// Overwritten by a file at the same path in a later layer; the old content stays in the image.
    Replaced {
        /// The layer that overwrote it.
        in_layer: usize,
    },
}

impl Location {
    /// The place without line numbers: the fingerprint covers it, so moving a secret within a file keeps
    /// its fingerprint.
    pub fn place(&self) -> String {
        match self {
            // `./a/.env` and `a/.env` are one place, however the scan was started.
            Location::File { path, .. } => path.trim_start_matches("./").to_owned(),
            Location::Layer { layer_digest, path, .. } => format!("{layer_digest}:{path}"),
            // The path alone: the same secret in the same file is one finding across commits, and a
            // baseline written from a scan of the working tree applies to its history.
            Location::Commit { path, .. } => path.clone(),
            Location::Config { config_digest, field, .. } => format!("{config_digest}:{field}"),
        }
    }

    /// 1-based line, where there is one.
    pub fn line(&self) -> Option<(u64, u64, usize)> {
        match self {
            Location::File { line, end_line, column, .. }
            | Location::Layer { line, end_line, column, .. }
            | Location::Commit { line, end_line, column, .. } => Some((*line, *end_line, *column)),
            Location::Config { .. } => None,
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            Location::File { path, line, column, .. } => format!("{path}:{line}:{column}"),
            Location::Layer {
                image, image_ref, layer, layer_digest, path, line, column, presence, ..
            } => {
                let name = image_ref.as_deref().unwrap_or(image);
                let short = layer_digest.get(..19).unwrap_or(layer_digest);
                let state = match presence {
                    Presence::Present => "present".to_owned(),
                    Presence::Deleted { in_layer } => format!("deleted in layer {in_layer}"),
                    Presence::Replaced { in_layer } => format!("replaced in layer {in_layer}"),
                };
                format!("{name} layer {layer} ({short}) /{path}:{line}:{column} [{state}]")
            }
            Location::Config { image, image_ref, field, .. } => {
                format!("{} config {field}", image_ref.as_deref().unwrap_or(image))
            }
            Location::Commit { commit, path, line, column, .. } => {
                format!("{path}:{line}:{column} (commit {})", commit.get(..12).unwrap_or(commit))
            }
        }
    }
}

/// One secret found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The rule that found it.
    pub rule_id: String,
    /// What it is.
    pub description: String,
    /// Where it is.
    pub location: Location,
    /// The secret with most of it masked.
    pub redacted: String,
    /// Stable identifier: SHA-256 over rule, place and secret (baselines match on it).
    pub fingerprint: String,
    /// How to replace it with a workload identity.
    pub remediation: String,
}

impl Finding {
    /// Builds a finding; `secret` is only hashed and redacted, never kept.
    pub fn new(
        rule_id: &str,
        description: &str,
        remediation: &str,
        location: Location,
        secret: &str,
    ) -> Self {
        Finding {
            rule_id: rule_id.to_owned(),
            description: description.to_owned(),
            redacted: redact(secret),
            fingerprint: fingerprint(rule_id, &location.place(), secret),
            location,
            remediation: remediation.to_owned(),
        }
    }
}

/// SHA-256 over a domain tag, the rule, the place and the secret; 32 hex digits.
pub fn fingerprint(rule_id: &str, place: &str, secret: &str) -> String {
    let mut h = Sha256::new();
    for part in ["vouch-scan fingerprint v1", rule_id, place, secret] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().take(16).fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Masks a secret: a PEM block shows its header; tokens keep a short prefix (provider prefixes like
/// `ghp_` are not secret), short passwords keep nothing.
pub fn redact(secret: &str) -> String {
    if secret.starts_with("-----BEGIN") {
        return secret.split_inclusive("-----").take(2).collect();
    }
    let n = secret.chars().count();
    let keep = match n {
        20.. => 4,
        12..=19 => 2,
        _ => 0,
    };
    let shown: String = secret.chars().take(keep).collect();
    format!("{shown}{}", "*".repeat((n - keep).min(12)))
}

/// A problem that stopped part of a scan (the rest went on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScanIssue {
    /// What was being read: a path, an image, a layer, an entry.
    pub source: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// Counters for the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Files (and layer entries) scanned as text.
    pub files: u64,
    /// Bytes of text scanned.
    pub bytes: u64,
    /// Files skipped as binary.
    pub binary_files: u64,
    /// Images read.
    pub images: u64,
    /// Layers read.
    pub layers: u64,
    /// Findings dropped because the baseline lists them.
    pub suppressed_baseline: u64,
    /// Findings dropped by `vouch:allow` comments.
    pub suppressed_inline: u64,
    /// Findings dropped because they are in tests, fixtures or samples (`--include-test-data` keeps them).
    pub suppressed_test_data: u64,
}

impl Stats {
    /// Counts one file scanned as text: its bytes and the findings it suppressed.
    pub(crate) fn count_text(&mut self, bytes: u64, suppressed: &crate::detect::Suppressed) {
        self.files += 1;
        self.bytes += bytes;
        self.suppressed_inline += suppressed.inline as u64;
        self.suppressed_test_data += suppressed.test_data as u64;
    }
}

/// Everything a scan produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Format version of this JSON.
    pub version: u32,
    /// Findings, sorted by place.
    pub findings: Vec<Finding>,
    /// Parts that could not be read.
    pub errors: Vec<ScanIssue>,
    /// Counters.
    pub stats: Stats,
}

impl Report {
    /// Exit code for scripts: 0 clean, 1 findings, 2 when part of the input could not be scanned.
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            2
        } else if !self.findings.is_empty() {
            1
        } else {
            0
        }
    }

    /// Sorts findings and errors so output is the same on every run.
    pub fn sort(&mut self) {
        self.findings.sort_by(|a, b| (&a.location, &a.rule_id).cmp(&(&b.location, &b.rule_id)));
        self.errors.sort_by(|a, b| a.source.cmp(&b.source));
    }

    /// The table for people.
    pub fn to_table(&self, elapsed_secs: f64) -> String {
        let mut s = String::new();
        if !self.findings.is_empty() {
            let w = self.findings.iter().map(|f| f.rule_id.len()).max().unwrap_or(4).max(4);
            let ws = self.findings.iter().map(|f| f.redacted.chars().count()).max().unwrap_or(6).max(6);
            let _ = writeln!(s, "{:w$}  {:ws$}  LOCATION", "RULE", "SECRET");
            for f in &self.findings {
                let _ = writeln!(s, "{:w$}  {:ws$}  {}", f.rule_id, f.redacted, f.location.describe());
            }
            let mut hints: BTreeMap<&str, &str> = BTreeMap::new();
            for f in &self.findings {
                hints.entry(&f.rule_id).or_insert(&f.remediation);
            }
            let _ = writeln!(s, "\nHow to replace them:");
            for (rule, hint) in hints {
                let _ = writeln!(s, "  {rule}: {hint}");
            }
        }
        for e in &self.errors {
            let _ = writeln!(s, "error: {}: {}", e.source, e.message);
        }
        let st = &self.stats;
        let mb = st.bytes as f64 / 1_048_576.0;
        let _ = write!(
            s,
            "\n{} finding{} in {} files ({mb:.1} MB",
            self.findings.len(),
            if self.findings.len() == 1 { "" } else { "s" },
            st.files,
        );
        if st.images > 0 {
            let _ = write!(s, ", {} images, {} layers", st.images, st.layers);
        }
        let _ = write!(s, ") in {elapsed_secs:.2} s");
        if st.binary_files > 0 {
            let _ = write!(s, "; {} binary files skipped", st.binary_files);
        }
        if st.suppressed_baseline + st.suppressed_inline + st.suppressed_test_data > 0 {
            let _ = write!(
                s,
                "; suppressed: {} by baseline, {} by vouch:allow, {} in test data",
                st.suppressed_baseline, st.suppressed_inline, st.suppressed_test_data
            );
        }
        if !self.errors.is_empty() {
            let _ = write!(s, "; {} errors", self.errors.len());
        }
        s.push('\n');
        s
    }

    /// SARIF 2.1.0.
    pub fn to_sarif(&self, rules: &crate::rules::RuleSet) -> serde_json::Value {
        use serde_json::json;
        let used: std::collections::BTreeSet<&str> =
            self.findings.iter().map(|f| f.rule_id.as_str()).collect();
        let rule_defs: Vec<_> = rules
            .rules
            .iter()
            .filter(|r| used.contains(r.id.as_str()))
            .map(|r| {
                let (severity, precision) = sarif_rank(r);
                json!({
                    "id": r.id,
                    "name": rule_name(&r.id),
                    "shortDescription": { "text": r.description },
                    "fullDescription": { "text": format!("{}. {}", r.description, r.remediation) },
                    "help": { "text": r.remediation },
                    "defaultConfiguration": { "level": "error" },
                    "properties": {
                        "security-severity": severity,
                        "precision": precision,
                        "tags": ["security", "secret", "external/cwe/cwe-798"],
                    },
                })
            })
            .collect();
        let results: Vec<_> = self
            .findings
            .iter()
            .map(|f| {
                let (uri, region, extra) = match &f.location {
                    Location::File { path, line, end_line, column } => (
                        artifact_uri(path),
                        Some(json!({"startLine": line, "endLine": end_line, "startColumn": column})),
                        json!({}),
                    ),
                    Location::Layer {
                        image,
                        layer,
                        layer_digest,
                        path,
                        line,
                        end_line,
                        column,
                        presence,
                        ..
                    } => (
                        artifact_uri(image),
                        None,
                        json!({"layer": layer, "layerDigest": layer_digest, "pathInLayer": path,
                               "line": line, "endLine": end_line, "column": column, "presence": presence}),
                    ),
                    Location::Commit { repo, commit, path, line, end_line, column } => (
                        artifact_uri(path),
                        Some(json!({"startLine": line, "endLine": end_line, "startColumn": column})),
                        json!({"repository": repo, "commit": commit}),
                    ),
                    Location::Config { image, config_digest, field, .. } => {
                        (artifact_uri(image), None, json!({"configDigest": config_digest, "field": field}))
                    }
                };
                let mut physical = json!({ "artifactLocation": { "uri": uri } });
                if let Some(region) = region {
                    physical["region"] = region;
                }
                json!({
                    "ruleId": f.rule_id,
                    "level": "error",
                    "message": { "text": format!("{} ({}) at {}. {}", f.description, f.redacted,
                                                 f.location.describe(), f.remediation) },
                    "locations": [{ "physicalLocation": physical }],
                    "partialFingerprints": { "vouchFingerprint/v1": f.fingerprint },
                    "properties": extra,
                })
            })
            .collect();
        json!({
            "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
            "version": "2.1.0",
            "runs": [{
                "tool": { "driver": {
                    "name": "vouch-scan",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rule_defs,
                }},
                "columnKind": "unicodeCodePoints",
                "results": results,
                "invocations": [{
                    "executionSuccessful": self.errors.is_empty(),
                    "toolExecutionNotifications": self.errors.iter().map(|e| json!({
                        "level": "error", "message": { "text": format!("{}: {}", e.source, e.message) }
                    })).collect::<Vec<_>>(),
                }],
            }],
        })
    }
}

/// GitHub code scanning's `security-severity` (CVSS-like, 9.0 and up is critical) and CodeQL's
/// `precision`: a provider's own token shape or a private key (priority 85 and up) is critical and
/// very precise; URLs and headers with credentials are high; generic assignments are high but judged by
/// shape, so only of medium precision.
fn sarif_rank(rule: &crate::rules::Rule) -> (&'static str, &'static str) {
    match (rule.priority, rule.kind) {
        (_, crate::rules::RuleKind::Assignment) => ("7.5", "medium"),
        (85.., _) => ("9.0", "very-high"),
        (70.., _) => ("8.0", "high"),
        _ => ("7.5", "medium"),
    }
}

/// `generic-password` -> `GenericPassword`: SARIF's `name` is an identifier-like label.
fn rule_name(id: &str) -> String {
    id.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// A path as a SARIF `artifactLocation.uri` (RFC 3986, which code-scanning UIs resolve against the
/// repository root): relative paths stay relative without `./`; absolute paths become `file://` URIs;
/// every byte outside the unreserved set and `/` is percent-encoded (`my file#1.env` ->
/// `my%20file%231.env`), so names with spaces, `#`, `%` or non-ASCII letters still point at their file.
pub fn artifact_uri(path: &str) -> String {
    let mut rel = path;
    while let Some(rest) = rel.strip_prefix("./") {
        rel = rest.trim_start_matches('/');
    }
    let mut out = String::with_capacity(rel.len() + 8);
    if rel.starts_with('/') {
        out.push_str("file://");
    }
    for b in rel.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_uris_are_relative_and_percent_encoded() {
        for (path, uri) in [
            ("./a/.env", "a/.env"),
            ("././a.py", "a.py"),
            ("a b/c#1%.env", "a%20b/c%231%25.env"),
            ("dir/ünï.yaml", "dir/%C3%BCn%C3%AF.yaml"),
            ("/srv/app/config.json", "file:///srv/app/config.json"),
            ("img.tar", "img.tar"),
            ("a?b[c]@d", "a%3Fb%5Bc%5D%40d"),
        ] {
            assert_eq!(artifact_uri(path), uri, "{path}");
        }
        assert_eq!(rule_name("generic-password"), "GenericPassword");
    }

    #[test]
    fn redaction_never_shows_most_of_a_secret() {
        assert_eq!(redact("ghp_abcdefghijklmnopqrstuvwxyz0123456789"), "ghp_************");
        assert_eq!(redact("Summer_1234!"), "Su**********");
        assert_eq!(redact("Tiger42"), "*******");
        assert_eq!(redact("-----BEGIN RSA PRIVATE KEY-----MIIEow"), "-----BEGIN RSA PRIVATE KEY-----");
    }

    #[test]
    fn fingerprint_depends_on_rule_place_and_secret_not_line() {
        let a = fingerprint("github-token", "a/.env", "ghp_x");
        assert_eq!(a.len(), 32);
        assert_eq!(a, fingerprint("github-token", "a/.env", "ghp_x"));
        assert_ne!(a, fingerprint("github-token", "b/.env", "ghp_x"));
        assert_ne!(a, fingerprint("github-token", "a/.env", "ghp_y"));
        assert_ne!(a, fingerprint("slack-token", "a/.env", "ghp_x"));
    }
}
