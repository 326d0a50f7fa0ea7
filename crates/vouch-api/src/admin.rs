//! The admin API: entries, node groups, join tokens, SVID minting, the authority's keys, agents.

use serde::{Deserialize, Serialize};
use vouch_core::{
    CommonName, DnsName, Entry, EntrySpec, Namespace, NodeGroup, Selector, SpiffeId, TrustDomain,
};

/// Most entries in one batch.
pub const MAX_ENTRY_BATCH: usize = 1000;

/// `GET /v1/entries`, `POST /v1/entries/batch` (answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryList {
    /// The entries.
    pub entries: Vec<Entry>,
    /// Stored rows the listing skipped because they cannot be read (`GET` only; absent when
    /// none). They are neither listed nor served to agents until repaired.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<DamagedEntry>,
    /// Listed entries that break the server's governance rule (`server.require_owner_and_purpose`),
    /// written before it was turned on (`GET` only; absent when none or the rule is off). They
    /// keep working; an update must supply what is missing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule_violations: Vec<RuleViolation>,
}

/// A stored entry that breaks a governance rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleViolation {
    /// The entry's id.
    pub id: String,
    /// What is missing (`owner`, `purpose` or both), as a sentence.
    pub reason: String,
}

/// A stored entry row that cannot be read back (disk fault, hand edit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedEntry {
    /// The entry id of the row.
    pub id: String,
    /// What is wrong with it (never its content).
    pub reason: String,
}

/// `POST /v1/entries/batch`: all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchCreateRequest {
    /// 1 to [`MAX_ENTRY_BATCH`] entries.
    pub entries: Vec<EntrySpec>,
}

/// `GET /v1/entries` filters; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryQuery {
    /// Only entries with this SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Only entries under this parent.
    pub parent_id: Option<String>,
    /// Only entries that require this selector.
    pub selector: Option<String>,
    /// Only entries of this namespace. An admin limited to namespaces sees only its own, with or
    /// without this filter.
    pub namespace: Option<String>,
}

/// `PATCH /v1/entries/{id}`: changes the given fields, leaves the others as they are, and only if the
/// entry is still at `expected_revision` (else 409 `revision_conflict`, nothing changed). An old client
/// that does not know a field can therefore never reset it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryPatch {
    /// The revision the change is based on.
    pub expected_revision: u64,
    /// New SPIFFE ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<SpiffeId>,
    /// New parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<SpiffeId>,
    /// New selectors (replace the old ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selectors: Option<Vec<Selector>>,
    /// New X509-SVID lifetime; `null` returns to the server default.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub x509_svid_ttl: Option<Option<u64>>,
    /// New JWT-SVID lifetime; `null` returns to the server default.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub jwt_svid_ttl: Option<Option<u64>>,
    /// New DNS names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_names: Option<Vec<DnsName>>,
    /// New X509-SVID subject common name; `null` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub x509_common_name: Option<Option<CommonName>>,
    /// New hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// New admin flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<bool>,
    /// New federated trust domains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federates_with: Option<Vec<TrustDomain>>,
    /// New expiry; `null` removes it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "nullable")]
    pub expires_at: Option<Option<i64>>,
    /// New owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// New purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// New namespace (moving an entry needs the right to both namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Namespace>,
    /// New admin namespaces (empty: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_namespaces: Option<Vec<Namespace>>,
}

impl EntryPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == Self { expected_revision: self.expected_revision, ..Default::default() }
    }

    /// The full spec of `current` with this patch applied; the caller checks the revision.
    pub fn apply(self, current: &Entry) -> EntrySpec {
        let c = current.clone();
        EntrySpec {
            id: Some(c.id),
            spiffe_id: self.spiffe_id.unwrap_or(c.spiffe_id),
            parent_id: self.parent_id.unwrap_or(c.parent_id),
            selectors: self.selectors.unwrap_or_else(|| c.selectors.iter().cloned().collect()),
            x509_svid_ttl: self.x509_svid_ttl.unwrap_or(c.x509_svid_ttl),
            jwt_svid_ttl: self.jwt_svid_ttl.unwrap_or(c.jwt_svid_ttl),
            dns_names: self.dns_names.unwrap_or(c.dns_names),
            x509_common_name: self.x509_common_name.unwrap_or(c.x509_common_name),
            hint: self.hint.unwrap_or(c.hint),
            admin: self.admin.unwrap_or(c.admin),
            federates_with: self.federates_with.unwrap_or(c.federates_with),
            expires_at: self.expires_at.unwrap_or(c.expires_at),
            owner: self.owner.unwrap_or(c.owner),
            purpose: self.purpose.unwrap_or(c.purpose),
            namespace: Some(self.namespace.unwrap_or(c.namespace)),
            admin_namespaces: self.admin_namespaces.unwrap_or(c.admin_namespaces),
        }
    }
}

/// `Option<Option<T>>` as "absent" / `null` / value.
mod nullable {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(v: &Option<Option<T>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

/// `POST /v1/join-tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    /// Lifetime in seconds; 600 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The agent ID the token will attest as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<SpiffeId>,
    /// Labels the attesting agent gets as node selectors `join_token:label:<key>:<value>`, so node
    /// groups can take in join-token agents (at most 16; keys of letters, digits, `.`, `_`, `-`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A new join token; shown once, only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    /// The token.
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// The agent ID it attests as, when chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<SpiffeId>,
}

/// `POST /v1/svids/x509`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintX509Request {
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// PEM (or DER) CSR; without it the server generates a key and returns it once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csr: Option<String>,
    /// Seconds; the server default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// DNS SANs.
    #[serde(default)]
    pub dns_names: Vec<DnsName>,
    /// A subject common name (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<CommonName>,
}

/// A minted X509-SVID, PEM for people. `Pem` is `String` for readers; the server writes the same
/// fields with pre-escaped JSON text (its issuance hot path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintX509Response<Pem = String> {
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// Leaf first, then intermediates.
    pub cert_chain_pem: Pem,
    /// Only when the server generated the key.
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<Pem>,
    /// The trust bundle's certificates.
    pub bundle_pem: Pem,
    /// Unix seconds.
    pub expires_at: i64,
    /// Whether the signing CA's remaining life cut the lifetime short.
    pub capped: bool,
}

/// `POST /v1/svids/jwt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MintJwtRequest {
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// At least one audience.
    pub audience: Vec<String>,
    /// Seconds; the server default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// A minted JWT-SVID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintJwtResponse {
    /// The identity.
    pub spiffe_id: SpiffeId,
    /// The compact JWS.
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// Whether the signing key's remaining life cut the lifetime short.
    pub capped: bool,
}

/// `POST /v1/svids/jwt/validate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateJwtRequest {
    /// The token.
    pub token: String,
    /// The audience it must carry.
    pub audience: String,
}

/// The claims of a valid JWT-SVID (`POST /v1/svids/jwt/validate`), as the domain defines them.
pub use vouch_core::JwtSvidClaims;

/// `GET /v1/authority/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityKeys {
    /// The trust domain.
    pub trust_domain: TrustDomain,
    /// Sequence number of the published bundle.
    pub bundle_sequence: u64,
    /// Every key with its state.
    pub keys: Vec<AuthorityKey>,
}

/// One key of the authority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityKey {
    /// What it signs.
    pub kind: KeyKind,
    /// Key id.
    pub id: String,
    /// Where it is in its life.
    pub state: KeyState,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
}

/// What an authority key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// A root CA.
    Root,
    /// A signing (intermediate) CA.
    Intermediate,
    /// A JWT-SVID signing key.
    Jwt,
}

/// Where a key is in its rotation, as the domain defines it.
pub use vouch_core::ttl::KeyState;

/// `GET /v1/agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentList {
    /// The agents.
    pub agents: Vec<AgentInfo>,
}

/// A node agent known to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Its SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// How it attested (`join_token`, `x509pop`, `k8s_psat`).
    pub attestation: String,
    /// Node selectors from attestation.
    pub selectors: Vec<Selector>,
    /// Unix seconds of first attestation.
    pub created_at: i64,
    /// Unix seconds of the last attestation or renewal.
    pub last_seen: i64,
    /// Expiry of its current SVID (unix seconds).
    pub svid_expires_at: i64,
    /// A banned agent may not attest again under this ID.
    pub banned: bool,
    /// The node groups it belongs to (their selectors are a subset of its node selectors): it also
    /// serves the entries parented to them.
    #[serde(default)]
    pub groups: Vec<SpiffeId>,
}

/// A node group with what it takes in: `POST /v1/groups` and `GET /v1/groups/{name}` answer one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group.
    #[serde(flatten)]
    pub group: NodeGroup,
    /// The attested agents that belong to it now (banned ones left out), ordered by SPIFFE ID.
    pub members: Vec<SpiffeId>,
    /// How many entries are parented to it.
    pub entries: u64,
}

/// `GET /v1/groups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupList {
    /// Every node group, ordered by SPIFFE ID.
    pub groups: Vec<GroupInfo>,
}

/// `POST /v1/agents/evict` and `/v1/agents/ban`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRef {
    /// The agent.
    pub spiffe_id: SpiffeId,
}

/// The answer to an eviction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evicted {
    /// The agent, which must attest again.
    pub evicted: SpiffeId,
}

/// The answer to a ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Banned {
    /// The agent, which may not attest again.
    pub banned: SpiffeId,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let spec: EntrySpec = serde_json::from_str(
            r#"{"spiffe_id":"spiffe://example.org/a","parent_id":"spiffe://example.org/agent",
                "selectors":["unix:uid:1"],"x509_svid_ttl":3600,"owner":"team","expires_at":4000000000}"#,
        )
        .unwrap();
        Entry::create(
            spec,
            vouch_core::EntryId::new("e1").unwrap(),
            &TrustDomain::new("example.org").unwrap(),
            0,
        )
        .unwrap()
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let patch: EntryPatch = serde_json::from_str(r#"{"expected_revision":0,"hint":"h"}"#).unwrap();
        assert!(!patch.is_empty());
        let spec = patch.apply(&entry());
        assert_eq!(spec.hint, "h");
        assert_eq!(spec.owner, "team");
        assert_eq!(spec.x509_svid_ttl, Some(3600));
        assert_eq!(spec.expires_at, Some(4_000_000_000));
    }

    #[test]
    fn null_clears_a_nullable_field_and_absence_keeps_it() {
        let patch: EntryPatch =
            serde_json::from_str(r#"{"expected_revision":0,"x509_svid_ttl":null,"expires_at":null}"#)
                .unwrap();
        assert_eq!(patch.x509_svid_ttl, Some(None));
        let spec = patch.clone().apply(&entry());
        assert_eq!((spec.x509_svid_ttl, spec.expires_at), (None, None));
        // The same patch round-trips with its nulls.
        let text = serde_json::to_string(&patch).unwrap();
        assert_eq!(text, r#"{"expected_revision":0,"x509_svid_ttl":null,"expires_at":null}"#);
        assert!(EntryPatch { expected_revision: 3, ..Default::default() }.is_empty());
    }

    #[test]
    fn a_patch_sets_clears_or_keeps_the_common_name() {
        let set: EntryPatch =
            serde_json::from_str(r#"{"expected_revision":0,"x509_common_name":"app_user"}"#).unwrap();
        let with = set.apply(&entry());
        assert_eq!(with.x509_common_name.as_ref().map(CommonName::as_str), Some("app_user"));
        let mut current = entry();
        current.x509_common_name = with.x509_common_name.clone();
        let keep: EntryPatch = serde_json::from_str(r#"{"expected_revision":0,"hint":"h"}"#).unwrap();
        assert_eq!(keep.apply(&current).x509_common_name, with.x509_common_name);
        let clear: EntryPatch =
            serde_json::from_str(r#"{"expected_revision":0,"x509_common_name":null}"#).unwrap();
        assert_eq!(clear.apply(&current).x509_common_name, None);
        let err = serde_json::from_str::<EntryPatch>(r#"{"expected_revision":0,"x509_common_name":""}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the common name must not be empty"), "{err}");
    }

    #[test]
    fn a_patch_without_revision_or_with_unknown_fields_is_refused() {
        let err = serde_json::from_str::<EntryPatch>(r#"{"hint":"h"}"#).unwrap_err().to_string();
        assert!(err.contains("expected_revision"), "{err}");
        let err = serde_json::from_str::<EntryPatch>(r#"{"expected_revision":1,"hnit":"h"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("hnit"), "{err}");
    }
}
