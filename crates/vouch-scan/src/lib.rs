//! vouch-scan: finds the hardcoded secrets that workload identity replaces, in source trees, files and
//! offline container images.
//!
//! Rules are data (`rules/default.toml`, extended or overridden by user files). Text is read in bounded
//! chunks; an Aho-Corasick keyword prefilter picks the lines and rules worth running; provider patterns,
//! generic assignments with entropy and placeholder checks, PEM blocks and Kubernetes env pairs find the
//! candidates. Images (OCI layout, OCI archive, `docker save` old and new) are read layer by layer with
//! compression told by magic bytes, and whiteouts decide whether each finding is still present in the
//! final filesystem. Reports never hold a secret whole: they redact it and fingerprint it.
//!
//! Git history (`--git`): every blob reachable from HEAD, once, each finding with the commit that
//! brought it in.
//!
//! The crate depends on nothing else of vouch.

pub mod cli;
pub mod detect;
pub mod git;
pub mod image;
pub mod report;
pub mod rules;
pub mod scan;
pub mod stream;
pub mod value;

pub use report::{Finding, Location, Presence, Report};
pub use rules::RuleSet;
pub use scan::{Input, ScanOptions, Scanner};

/// Errors that stop a scan before it starts (bad rules, bad options). Problems while scanning are
/// [`report::ScanIssue`]s instead: the rest of the scan goes on.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A rules file is invalid.
    #[error("rules: {0}")]
    Rules(String),
    /// An option is invalid.
    #[error("{0}")]
    Usage(String),
}
