//! The tamper-evident audit log as data: records, checkpoints, their canonical encodings, and the
//! report of a verification. No hashing and no signing here (that is `vouch-ca`'s job): only the
//! bytes that are hashed and signed, so every implementation agrees on them.
//!
//! A record's hash is `SHA-256(prev_hash || canonical(record))`, where `prev_hash` is the previous
//! record's hash as its 64 lowercase hex characters ([`GENESIS_HASH`] before the first record) and
//! `canonical` is [`AuditRecord::canonical`]: a length-prefixed binary encoding of the sequence
//! number, the time, the event name and the fields in key order, independent of how the record
//! was stored or exported (JSON formatting, key order or whitespace change nothing).

use std::collections::BTreeMap;

/// The hash before the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The value of one field of an audit record. Numbers that fit an `i64` are always [`Self::Int`],
/// so a value reads back as the same variant from JSON, whatever wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum AuditValue {
    /// A boolean.
    Bool(bool),
    /// A signed integer (every integer that fits).
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    Uint(u64),
    /// Text (strings, and everything recorded as `Display` or `Debug`).
    Text(String),
}

impl AuditValue {
    /// The value of an unsigned integer, [`Self::Int`] when it fits.
    pub fn from_u64(v: u64) -> Self {
        i64::try_from(v).map_or(Self::Uint(v), Self::Int)
    }

    /// The text, if this is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(s) => Some(s),
            _ => None,
        }
    }
}

impl std::fmt::Display for AuditValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Uint(u) => write!(f, "{u}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

/// The structured fields of a record, in key order.
pub type AuditFields = BTreeMap<String, AuditValue>;

/// An event about to be appended: what the server captured, before it has a place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unix milliseconds of the event.
    pub time_ms: i64,
    /// The event's name (`entry.create`, `svid.x509.mint`, ...).
    pub event: String,
    /// Its fields (never a secret value).
    pub fields: AuditFields,
}

/// One record of the audit log, in its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Its position: 1 for the first record, one more for each.
    pub seq: u64,
    /// Unix milliseconds of the event.
    pub time_ms: i64,
    /// The event's name.
    pub event: String,
    /// Its fields.
    pub fields: AuditFields,
    /// `SHA-256(previous hash || canonical encoding)`, lowercase hex.
    pub hash: String,
}

/// Appends `s` with a 4-byte big-endian length prefix.
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl AuditRecord {
    /// The bytes hashed after the previous hash (see the module documentation).
    pub fn canonical(&self) -> Vec<u8> {
        canonical(self.seq, self.time_ms, &self.event, &self.fields)
    }

    /// The SPIFFE ID the record is about (its `spiffe_id` field), for searching.
    pub fn spiffe_id(&self) -> Option<&str> {
        index_spiffe_id(&self.fields)
    }

    /// The node (agent SPIFFE ID) the record is about, for searching.
    pub fn node(&self) -> Option<&str> {
        index_node(&self.fields)
    }
}

/// The canonical encoding of a record's content.
pub fn canonical(seq: u64, time_ms: i64, event: &str, fields: &AuditFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + event.len() + fields.len() * 32);
    out.extend_from_slice(b"vouch-audit-record-v1\0");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    put_str(&mut out, event);
    out.extend_from_slice(&u32::try_from(fields.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (k, v) in fields {
        put_str(&mut out, k);
        match v {
            AuditValue::Bool(b) => out.extend_from_slice(&[b'b', u8::from(*b)]),
            AuditValue::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(&i.to_be_bytes());
            }
            AuditValue::Uint(u) => {
                out.push(b'u');
                out.extend_from_slice(&u.to_be_bytes());
            }
            AuditValue::Text(s) => {
                out.push(b's');
                put_str(&mut out, s);
            }
        }
    }
    out
}

/// The `spiffe_id` field, which names the workload identity an event is about.
pub fn index_spiffe_id(fields: &AuditFields) -> Option<&str> {
    fields.get("spiffe_id").and_then(AuditValue::as_text)
}

/// The node an event is about: its `agent` field, else a `caller` that is an agent's SPIFFE ID
/// (agents' IDs have a path under `/agent/`).
pub fn index_node(fields: &AuditFields) -> Option<&str> {
    if let Some(agent) = fields.get("agent").and_then(AuditValue::as_text) {
        return Some(agent);
    }
    fields.get("caller").and_then(AuditValue::as_text).filter(|c| {
        c.strip_prefix("spiffe://")
            .and_then(|r| r.split_once('/'))
            .is_some_and(|(_, p)| p.starts_with("agent/"))
    })
}

/// A signed statement that the chain's head was `hash` at sequence `seq`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditCheckpoint {
    /// The sequence number of the head record it covers.
    pub seq: u64,
    /// That record's hash.
    pub hash: String,
    /// Unix milliseconds of the checkpoint.
    pub time_ms: i64,
    /// The id of the audit key that signed it.
    pub key_id: String,
    /// The Ed25519 signature of [`AuditCheckpoint::signed_bytes`], base64 (standard, padded).
    pub signature: String,
}

impl AuditCheckpoint {
    /// The bytes the signature covers.
    pub fn signed_bytes(&self) -> Vec<u8> {
        checkpoint_bytes(&self.key_id, self.seq, &self.hash, self.time_ms)
    }
}

/// The bytes a checkpoint's signature covers.
pub fn checkpoint_bytes(key_id: &str, seq: u64, hash: &str, time_ms: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"vouch-audit-checkpoint-v1\0");
    put_str(&mut out, key_id);
    out.extend_from_slice(&seq.to_be_bytes());
    put_str(&mut out, hash);
    out.extend_from_slice(&time_ms.to_be_bytes());
    out
}

/// The public half of an audit key, as `vouch audit key` prints it and `vouch audit verify --file
/// --key` reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditPublicKey {
    /// The key's id, as checkpoints name it.
    pub key_id: String,
    /// Always `Ed25519`.
    pub algorithm: String,
    /// The 32-byte public key, base64 (standard, padded).
    pub public_key: String,
}

/// What is wrong at the first place a verification stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditProblemKind {
    /// A record's content does not match its hash, and the next record still chains from it.
    Edited,
    /// Sequence numbers are missing: records were deleted.
    Deleted,
    /// A record does not belong in the chain: the record after it chains from the one before it.
    Inserted,
    /// Records are out of order.
    Reordered,
    /// A record does not chain from the one before it (edited with a recomputed hash, or a record
    /// before it was removed and the rest renumbered).
    Broken,
    /// A checkpoint's signature does not verify, or it names an unknown key.
    BadCheckpoint,
    /// The chain differs from what a valid checkpoint signed: it was rewritten.
    Rewritten,
    /// A valid checkpoint covers records that are no longer there: the log was truncated.
    Truncated,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditProblem {
    /// The sequence number where it is.
    pub seq: u64,
    /// What it is.
    pub kind: AuditProblemKind,
    /// In words, with what to look at.
    pub message: String,
}

/// The result of walking the chain and its checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditVerifyReport {
    /// Records that verified (before the problem, if any).
    pub records: u64,
    /// Checkpoints that verified (before the problem, if any).
    pub checkpoints: u64,
    /// The first problem, or none: the log is intact.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<AuditProblem>,
}

impl AuditVerifyReport {
    /// Whether the log verified.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl std::fmt::Display for AuditVerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.problem {
            None => write!(f, "verified {} records, {} checkpoints", self.records, self.checkpoints),
            Some(p) => write!(
                f,
                "TAMPERED at seq {}: {} (verified {} records and {} checkpoints before it)",
                p.seq, p.message, self.records, self.checkpoints
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, AuditValue)]) -> AuditFields {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
    }

    #[test]
    fn canonical_encoding_separates_every_part() {
        let a = canonical(1, 2, "e", &fields(&[("k", AuditValue::Text("v".into()))]));
        // Moving bytes between parts changes the encoding (length prefixes).
        let b = canonical(1, 2, "ek", &fields(&[("", AuditValue::Text("v".into()))]));
        assert_ne!(a, b);
        assert_ne!(a, canonical(1, 2, "e", &fields(&[("k", AuditValue::Int(0))])));
        assert_ne!(a, canonical(2, 2, "e", &fields(&[("k", AuditValue::Text("v".into()))])));
    }

    #[test]
    fn values_read_back_as_the_same_variant() {
        let f = fields(&[
            ("a", AuditValue::from_u64(5)),
            ("b", AuditValue::from_u64(u64::MAX)),
            ("c", AuditValue::Int(-3)),
            ("d", AuditValue::Bool(true)),
            ("e", AuditValue::Text("5".into())),
        ]);
        let back: AuditFields = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert_eq!(canonical(1, 1, "x", &back), canonical(1, 1, "x", &f));
    }

    #[test]
    fn index_columns_come_from_the_fields() {
        let t = |s: &str| AuditValue::Text(s.into());
        let f = fields(&[
            ("caller", t("spiffe://example.org/agent/join/n1")),
            ("spiffe_id", t("spiffe://example.org/w")),
        ]);
        assert_eq!(index_node(&f), Some("spiffe://example.org/agent/join/n1"));
        assert_eq!(index_spiffe_id(&f), Some("spiffe://example.org/w"));
        assert_eq!(index_node(&fields(&[("caller", t("uid:0"))])), None);
        assert_eq!(index_node(&fields(&[("caller", t("spiffe://example.org/admin"))])), None);
        assert_eq!(
            index_node(&fields(&[("agent", t("spiffe://example.org/agent/x"))])),
            Some("spiffe://example.org/agent/x")
        );
    }
}
