//! The tamper-evident audit log (admin API): search, checkpoints, the checkpoint keys, and the
//! server's verification of its own log. Records, checkpoints and reports are `vouch_core::audit`'s
//! types, so an export read back offline is the same data the server hashed.

use serde::{Deserialize, Serialize};
pub use vouch_core::audit::{
    AuditCheckpoint, AuditProblem, AuditProblemKind, AuditPublicKey, AuditRecord, AuditValue,
    AuditVerifyReport,
};

/// Most records in one page of `GET /v1/audit/records`.
pub const MAX_AUDIT_PAGE: u32 = 1000;
/// Records in a page when `limit` is not given.
pub const DEFAULT_AUDIT_PAGE: u32 = 100;

/// `GET /v1/audit/records`: the filters (all given ones must hold) and the page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSearch {
    /// Records about this SPIFFE ID (their `spiffe_id` field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    /// Records about this node (agent SPIFFE ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// This event (`entry.create`), or every event with a prefix (`entry.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// At or after this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Before this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Records after this sequence number (the `next_after` of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// At most this many (1..=1000, default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// A page of records, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// The records.
    pub records: Vec<AuditRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<u64>,
}

/// `GET /v1/audit/checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpointList {
    /// Every checkpoint, by sequence number.
    pub checkpoints: Vec<AuditCheckpoint>,
}

/// `GET /v1/audit/keys`: the public keys that sign checkpoints, the current one last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditKeyList {
    /// The keys.
    pub keys: Vec<AuditPublicKey>,
}

/// One line of `vouch audit export` (JSON lines): a record or a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuditExportLine {
    /// A record of the chain.
    Record(AuditRecord),
    /// A signed checkpoint.
    Checkpoint(AuditCheckpoint),
}

/// `GET /v1/audit/who`: which workloads held `spiffe_id` at `at`, or at any time in
/// `from..=to` (RFC 3339). Give `at`, or `from` and `to`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoQuery {
    /// The identity.
    pub spiffe_id: String,
    /// One instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The start of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The end of a range (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// Most delivery records one `who` question reads; beyond, the answer says it was cut short.
pub const MAX_WHO_SCAN: u64 = 100_000;
/// Most holders in one answer.
pub const MAX_WHO_HOLDERS: usize = 1000;

/// The answer of `GET /v1/audit/who`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAnswer {
    /// The identity asked about.
    pub spiffe_id: String,
    /// The start of the range asked about, unix milliseconds.
    pub from_ms: i64,
    /// Its end (inclusive), unix milliseconds.
    pub to_ms: i64,
    /// Each workload connection that held an SVID of the identity then, earliest first.
    pub holders: Vec<Holder>,
    /// Delivery records read to answer.
    pub scanned: u64,
    /// True when the answer is incomplete (more than [`MAX_WHO_SCAN`] records to read, or more
    /// than [`MAX_WHO_HOLDERS`] holders): ask about a narrower range.
    #[serde(default)]
    pub truncated: bool,
}

/// One workload that held an SVID: delivered at `delivered_at_ms` and valid until `not_after`, it
/// was held over that span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The node: the SPIFFE ID of the agent that delivered it (from its mTLS SVID).
    pub node: String,
    /// `x509` or `jwt`.
    pub kind: String,
    /// The X509-SVID's serial or the JWT-SVID's `jti`.
    pub svid_id: String,
    /// Validity start, unix seconds.
    pub not_before: i64,
    /// Validity end, unix seconds.
    pub not_after: i64,
    /// When the agent delivered it, unix milliseconds.
    pub delivered_at_ms: i64,
    /// The workload's process id.
    pub pid: i64,
    /// Its container id, if it runs in a container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container's image id (config digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The executable's SHA-256, when attestation computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<String>,
    /// The audit record that says so (its sequence number).
    pub seq: u64,
}
