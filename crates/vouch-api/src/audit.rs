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
