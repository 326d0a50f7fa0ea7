//! Secrets by identity: the admin API's secret store and the agent's read on behalf of a workload.
//!
//! Values travel base64-encoded (standard alphabet, padded) so that any bytes fit; only
//! [`SecretValue`] and [`SecretPut`] carry one, and their `Debug` never shows it.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use vouch_core::{EntryId, SecretPath, SpiffeId};

/// A value as it travels: base64.
pub fn encode_value(value: &[u8]) -> String {
    STANDARD.encode(value)
}

/// A value from its wire form. The error does not quote the input (it is a secret).
pub fn decode_value(text: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(text.as_bytes())
        .map_err(|_| "value: not valid base64 (standard alphabet with padding)".into())
}

/// `PUT /v1/secrets/{path}`: writes a new version. Metadata fields left out keep their stored
/// value (empty for a new secret).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretPut {
    /// The value, base64.
    pub value: String,
    /// Who answers for the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// When it should be rotated, unix seconds; `0` clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_due: Option<i64>,
}

impl std::fmt::Debug for SecretPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretPut")
            .field("value", &"<redacted>")
            .field("owner", &self.owner)
            .field("purpose", &self.purpose)
            .field("rotation_due", &self.rotation_due)
            .finish()
    }
}

/// A secret's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretMeta {
    /// Its path.
    pub path: SecretPath,
    /// Who answers for it.
    pub owner: String,
    /// What it is for.
    pub purpose: String,
    /// When it should be rotated (unix seconds), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_due: Option<i64>,
    /// Unix seconds of the first version.
    pub created_at: i64,
    /// Unix seconds of the latest version.
    pub updated_at: i64,
    /// The highest version.
    pub current_version: u64,
}

/// The state of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionState {
    /// Readable.
    Live,
    /// Soft-deleted: not readable, can be undeleted.
    Deleted,
    /// Destroyed: the sealed value is gone.
    Destroyed,
}

/// One version, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersion {
    /// The version, from 1.
    pub version: u64,
    /// Its state.
    pub state: VersionState,
    /// Unix seconds of its writing.
    pub created_at: i64,
    /// Unix seconds of its soft deletion, if deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
    /// Unix seconds of its destruction, if destroyed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed_at: Option<i64>,
}

/// The answer to a write: the secret's metadata and the version written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretWritten {
    /// The metadata after the write.
    pub secret: SecretMeta,
    /// The new version.
    pub version: u64,
}

/// `GET /v1/secrets/{path}?version=N`: one version's value (the latest live one without `version`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValue {
    /// The path.
    pub path: SecretPath,
    /// The version read.
    pub version: u64,
    /// The value, base64.
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// `GET /v1/secrets/{path}?version=N` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretQuery {
    /// The version; the latest live one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// `GET /v1/secrets?prefix=...` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretListQuery {
    /// Only secrets at or under this path (whole segments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// `GET /v1/secrets`: metadata of every secret (no values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretList {
    /// Ordered by path.
    pub secrets: Vec<SecretMeta>,
}

/// `GET /v1/secrets/{path}/versions`: metadata and every version (no values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersions {
    /// The metadata.
    pub secret: SecretMeta,
    /// Ordered by version.
    pub versions: Vec<SecretVersion>,
}

/// `POST /v1/secrets/{path}/delete|undelete|destroy`: which versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsRequest {
    /// The versions. Delete with none means the latest version; undelete and destroy need them
    /// named (destroy cannot be undone).
    #[serde(default)]
    pub versions: Vec<u64>,
}

/// The answer to a delete, undelete or destroy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsChanged {
    /// The path.
    pub path: SecretPath,
    /// The versions whose state changed (versions already in that state are not listed).
    pub changed: Vec<u64>,
}

/// `POST /v1/agent/secret`: an agent reads a secret for a workload it attested, named by the entry
/// that gave the workload its identity (the server checks that the agent serves that entry).
///
/// With `known_version` the request is a long poll (a watch): the server answers as soon as the
/// latest live version is another one (a new version written, the latest deleted or undeleted),
/// and with `204 No Content` when none is within [`WATCH_WAIT_SECS`]; the caller then asks again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSecretRequest {
    /// The workload's entry.
    pub entry_id: EntryId,
    /// The secret.
    pub path: SecretPath,
    /// The version the caller holds: answer only when the latest live version is another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_version: Option<u64>,
}

/// How long the server holds a watch ([`AgentSecretRequest::known_version`]) before it answers
/// `204 No Content`: well within clients' 30 s call timeout, so a quiet watch is never mistaken
/// for a stuck server.
pub const WATCH_WAIT_SECS: u64 = 20;

/// A workload's request on the agent's secret socket (one JSON line): the secret, and which of the
/// workload's identities to read it as when it has several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSecretRequest {
    /// The secret.
    pub path: SecretPath,
    /// The identity to read as; may be left out when the workload has exactly one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeId>,
    /// Keep the connection open and send a line for the current version (unless it is
    /// `known_version`) and for every later one, until the workload closes the connection.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
    /// With `watch`: the version the workload already holds (not sent again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_version: Option<u64>,
}

/// The answer to [`AgentSecretRequest`] (and to the agent's own secret endpoint).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentSecretResponse {
    /// The identity the secret was read as.
    pub spiffe_id: SpiffeId,
    /// The path.
    pub path: SecretPath,
    /// The version read (the latest live one).
    pub version: u64,
    /// The value, base64.
    pub value: String,
}

impl std::fmt::Debug for AgentSecretResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSecretResponse")
            .field("spiffe_id", &self.spiffe_id)
            .field("path", &self.path)
            .field("version", &self.version)
            .field("value", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_never_in_debug_output() {
        let put = SecretPut { value: "aHVudGVyMg==".into(), owner: None, purpose: None, rotation_due: None };
        let value =
            SecretValue { path: SecretPath::parse("a").unwrap(), version: 1, value: "aHVudGVyMg==".into() };
        assert!(!format!("{put:?}{value:?}").contains("aHVudGVyMg"));
        assert!(serde_json::from_str::<SecretPut>(r#"{"value":"","valeu":1}"#).is_err());
        assert!(serde_json::from_str::<AgentSecretRequest>(r#"{"entry_id":"e","path":"../x"}"#).is_err());
    }
}
