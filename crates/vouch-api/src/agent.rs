//! The agent API: node attestation, renewal, the sync stream, batch signing, JWT-SVIDs.
//!
//! Certificates and CSRs travel as DER ([`Der`]): the agent hands them to the Workload API as DER,
//! so no PEM is written or parsed on this path.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use vouch_core::{Entry, EntryId, SpiffeId};

use crate::{Der, ErrorDetail};

/// Most CSRs in one signing batch.
pub const MAX_SIGN_BATCH: usize = 500;

/// `POST /v1/agent/attest/join-token`: the single-use token is the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenAttestation {
    /// The join token.
    pub token: String,
    /// CSR of the agent's own key.
    pub csr: Der,
}

/// `POST /v1/agent/attest/k8s-psat`: a projected service-account token of a configured cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PsatAttestation {
    /// The cluster name the server is configured with.
    pub cluster: String,
    /// The token.
    pub token: String,
    /// CSR of the agent's own key.
    pub csr: Der,
}

/// `POST /v1/agent/attest/x509pop/challenge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509PopChallengeRequest {
    /// The node certificate chain, PEM, leaf first (as the operator's file has it).
    pub cert_chain_pem: String,
}

/// A single-use challenge for a node certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct X509PopChallenge {
    /// What the node signs (see [`x509pop_message`]).
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `POST /v1/agent/attest/x509pop`: the challenge signed with the node key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct X509PopAttestation {
    /// The node certificate chain, PEM, leaf first.
    pub cert_chain_pem: String,
    /// The challenge.
    pub nonce: String,
    /// Base64 signature of [`x509pop_message`] with the node key.
    pub signature: String,
    /// CSR of the agent's own key.
    pub csr: Der,
}

/// What a node signs to prove possession of its key in x509pop attestation: a fixed prefix (so the
/// signature can serve no other purpose) and the server's single-use nonce.
pub fn x509pop_message(nonce: &str) -> Vec<u8> {
    format!("vouch x509pop v1 {nonce}").into_bytes()
}

/// `POST /v1/agent/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// CSR of the agent's new key.
    pub csr: Der,
}

/// An agent SVID and the bundle, as answered to attestation and renewal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentSvid {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates.
    pub cert_chain: Vec<Der>,
    /// The trust bundle, a SPIFFE bundle JWKS.
    pub bundle_jwks: serde_json::Value,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The bundles of federated trust domains on a sync line: SPIFFE bundle JWKS by trust domain name
/// (`b.org`). Absent on lines of servers without federation, and ignored by agents that predate it
/// (the line's other fields are unchanged).
pub type FederatedBundles = std::collections::BTreeMap<String, serde_json::Value>;

/// One line of the sync stream (`GET /v1/agent/sync`, newline-delimited JSON): first a snapshot of
/// the entries this agent may serve and the bundle, then each change as it happens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// A line is written or read one at a time, never stored in bulk: the size of the borrowed entry
// variant costs nothing, a box would cost an allocation per line.
#[allow(clippy::large_enum_variant)]
pub enum SyncLine<'a> {
    /// Everything the agent may serve now; replaces what it held.
    Snapshot {
        /// The entries.
        entries: Cow<'a, [Entry]>,
        /// The trust bundle (SPIFFE bundle JWKS).
        bundle: serde_json::Value,
        /// The bundles of federated trust domains.
        #[serde(default, skip_serializing_if = "FederatedBundles::is_empty")]
        federated_bundles: FederatedBundles,
    },
    /// An entry was created or changed.
    Upsert {
        /// The entry.
        entry: Cow<'a, Entry>,
    },
    /// An entry was deleted or moved to another agent.
    Delete {
        /// Its id.
        id: Cow<'a, EntryId>,
    },
    /// The bundle or a federated bundle changed (key rotation here, a refresh of another trust
    /// domain's bundle): the full state of both.
    Bundle {
        /// The trust bundle (SPIFFE bundle JWKS).
        bundle: serde_json::Value,
        /// The bundles of federated trust domains.
        #[serde(default, skip_serializing_if = "FederatedBundles::is_empty")]
        federated_bundles: FederatedBundles,
    },
    /// The whole policy set (grants), sent after the snapshot and after every policy change, only
    /// to agents that opened the stream with `?policies=true` ([`SyncQuery`]): older agents never
    /// ask, so they never meet a line they cannot read.
    Policies {
        /// Every current policy: its id and Cedar text (the agent validates them again).
        policies: Vec<crate::policy::PolicyText>,
    },
    /// Keep-alive.
    Ping,
    /// The last line: the server ends the stream because the agent may no longer be served (an admin
    /// banned or evicted it). New entries do not reach it; reconnecting is refused with the matching
    /// error code. An agent that does not know this line fails to read it and reconnects, which is
    /// refused the same way, so older agents keep their sense of the stream.
    Closed {
        /// Why, as a machine-readable reason.
        reason: CloseReason,
        /// For people: what happened and what the operator must do.
        message: String,
    },
}

/// The query of `GET /v1/agent/sync`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncQuery {
    /// Send the policy set ([`SyncLine::Policies`]) too.
    #[serde(default)]
    pub policies: bool,
}

/// Why the server closed an agent's sync stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// An admin banned the agent: it may not attest again under its SPIFFE ID.
    Banned,
    /// An admin evicted the agent: its SVID no longer works and it must attest again.
    Evicted,
}

/// `POST /v1/agent/sign`: CSRs for entries of the calling agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRequest {
    /// 1 to [`MAX_SIGN_BATCH`] items.
    pub requests: Vec<SignItem>,
}

/// One CSR to sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignItem {
    /// The entry.
    pub entry_id: EntryId,
    /// CSR of a key generated on the node.
    pub csr: Der,
}

/// The answer to a signing batch: one result per request, in the same order. Each item succeeds or
/// fails on its own (an entry deleted between sync and sign, a bad CSR), as SPIRE's
/// BatchNewX509SVID does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResponse {
    /// The results.
    pub results: Vec<SignResult>,
}

/// The result of one item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignResult {
    /// The entry it was for.
    pub entry_id: EntryId,
    /// The SVID, or why not.
    #[serde(flatten)]
    pub outcome: SignOutcome,
}

/// An SVID or an error, as `{"svid": ...}` or `{"error": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignOutcome {
    /// Signed.
    Svid(SignedSvid),
    /// Refused, with the code and message an API error would carry.
    Error(ErrorDetail),
}

/// A signed X509-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSvid {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates.
    pub cert_chain: Vec<Der>,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `POST /v1/agent/jwt`: a JWT-SVID for an entry (the agent never holds a JWT signing key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentJwtRequest {
    /// The entry.
    pub entry_id: EntryId,
    /// Audiences.
    pub audience: Vec<String>,
}

/// A JWT-SVID for an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentJwtResponse {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The compact JWS.
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Most records in one delivery report (`POST /v1/agent/delivered`).
pub const MAX_DELIVERY_BATCH: usize = 256;
/// Largest body of a delivery report, in bytes: [`MAX_DELIVERY_BATCH`] records of about 700
/// bytes each at their longest, with room to spare.
pub const MAX_DELIVERY_BODY: usize = 256 * 1024;
/// Longest text of one field of a delivered record (a container id, an image id, a serial, a
/// `jti`).
pub const MAX_DELIVERY_TEXT: usize = 256;

/// The kind of SVID a workload received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SvidKind {
    /// An X509-SVID (FetchX509SVID).
    X509,
    /// A JWT-SVID (FetchJWTSVID).
    Jwt,
}

impl SvidKind {
    /// Its name on the wire and in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::X509 => "x509",
            Self::Jwt => "jwt",
        }
    }
}

/// `POST /v1/agent/delivered`: what the agent's Workload API handed to which workload, batched.
/// The server records each as an `agent.delivered` audit event under the calling agent's SPIFFE
/// ID (from its mTLS SVID), never under a name from the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryReport {
    /// The reporting agent: must be the caller's SPIFFE ID, else the whole batch is refused.
    pub node: SpiffeId,
    /// Records the agent dropped since its last accepted report (its queue was full).
    #[serde(default)]
    pub dropped: u64,
    /// 1 to [`MAX_DELIVERY_BATCH`] records.
    pub records: Vec<Delivery>,
}

/// One SVID handed to one workload connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// X509-SVID or JWT-SVID.
    pub kind: SvidKind,
    /// The certificate's serial number (hex) of an X509-SVID, the `jti` of a JWT-SVID.
    pub svid_id: String,
    /// Validity start, unix seconds (a JWT-SVID's `iat`).
    pub not_before: i64,
    /// Validity end, unix seconds (a JWT-SVID's `exp`).
    pub not_after: i64,
    /// When the agent handed it over, unix milliseconds (the agent's clock).
    pub delivered_at_ms: i64,
    /// The workload's process id, as the agent's pid namespace sees it.
    pub pid: i32,
    /// The container id from the process's cgroup, when it runs in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container's image id (config digest), when the runtime named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The SHA-256 of the executable (hex), only when attestation computed it for an entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_sha256: Option<String>,
}

/// The answer to a delivery report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAccepted {
    /// Records taken into the audit log's queue.
    pub accepted: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_results_are_an_svid_or_an_error() {
        let ok = SignResult {
            entry_id: EntryId::new("e1").unwrap(),
            outcome: SignOutcome::Svid(SignedSvid {
                spiffe_id: SpiffeId::parse("spiffe://example.org/a").unwrap(),
                cert_chain: vec![Der(vec![1, 2])],
                expires_at: 5,
            }),
        };
        let failed = SignResult {
            entry_id: EntryId::new("e2").unwrap(),
            outcome: SignOutcome::Error(ErrorDetail { code: "not_found".into(), message: "gone".into() }),
        };
        let text =
            serde_json::to_string(&SignResponse { results: vec![ok.clone(), failed.clone()] }).unwrap();
        assert_eq!(
            text,
            r#"{"results":[{"entry_id":"e1","svid":{"spiffe_id":"spiffe://example.org/a","cert_chain":["AQI="],"expires_at":5}},{"entry_id":"e2","error":{"code":"not_found","message":"gone"}}]}"#
        );
        let back: SignResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(back.results, vec![ok, failed]);
    }

    #[test]
    fn sync_lines_are_tagged_by_type_and_unknown_types_are_errors() {
        let line: SyncLine = serde_json::from_str(r#"{"type":"delete","id":"e1"}"#).unwrap();
        assert_eq!(line, SyncLine::Delete { id: Cow::Owned(EntryId::new("e1").unwrap()) });
        assert_eq!(serde_json::to_string(&SyncLine::Ping).unwrap(), r#"{"type":"ping"}"#);
        assert!(serde_json::from_str::<SyncLine>(r#"{"type":"surprise"}"#).is_err());
        let closed: SyncLine =
            serde_json::from_str(r#"{"type":"closed","reason":"banned","message":"gone"}"#).unwrap();
        assert_eq!(closed, SyncLine::Closed { reason: CloseReason::Banned, message: "gone".into() });
        // A bundle line without its bundle is an error, not an empty bundle.
        assert!(serde_json::from_str::<SyncLine>(r#"{"type":"bundle"}"#).is_err());
        // Federated bundles are optional both ways: absent when there are none, and a line that
        // carries them reads the same without them (what an agent that predates them sees).
        let plain = SyncLine::Bundle {
            bundle: serde_json::json!({"keys": []}),
            federated_bundles: FederatedBundles::new(),
        };
        assert_eq!(serde_json::to_string(&plain).unwrap(), r#"{"type":"bundle","bundle":{"keys":[]}}"#);
        let with: SyncLine = serde_json::from_str(
            r#"{"type":"bundle","bundle":{"keys":[]},"federated_bundles":{"b.org":{"keys":[]}}}"#,
        )
        .unwrap();
        assert!(
            matches!(with, SyncLine::Bundle { federated_bundles, .. } if federated_bundles.contains_key("b.org"))
        );
    }

    #[test]
    fn a_jwt_answer_without_expiry_is_an_error() {
        let err =
            serde_json::from_str::<AgentJwtResponse>(r#"{"spiffe_id":"spiffe://example.org/a","token":"t"}"#)
                .unwrap_err()
                .to_string();
        assert!(err.contains("expires_at"), "{err}");
    }
}
