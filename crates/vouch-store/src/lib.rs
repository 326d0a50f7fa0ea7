//! Persistence for vouch.
//!
//! [`Store`] is the one interface the server uses. It speaks in domain types and makes no SQLite
//! assumptions (no rowids, no SQL in its signatures). [`SqliteStore`] is the embedded default (one
//! file, one server); [`PostgresStore`] is the store that several server replicas share. Both keep
//! a versioned schema (numbered migrations applied at open, recorded in a `schema_version` table; a
//! database from a newer vouch is refused). The [`conformance`] suite (feature `conformance`)
//! states the contract every implementation must meet; the tests run it against both, PostgreSQL
//! in a private cluster (feature `test-postgres`).
//!
//! Secrets never reach the store in plaintext: join tokens are kept as SHA-256 hashes, and the
//! authority's private keys arrive already sealed.

mod codec;
#[cfg(feature = "conformance")]
pub mod conformance;
mod migrate;
mod pg_tls;
mod postgres;
mod sqlite;
#[cfg(feature = "test-postgres")]
pub mod test_postgres;

use async_trait::async_trait;
use vouch_core::audit::{AuditCheckpoint, AuditRecord};
use vouch_core::{
    Entry, EntryId, Namespace, NodeGroup, SecretPath, Selector, Selectors, SpiffeId, TrustDomain,
};

pub use postgres::{
    redact_passwords, PgConn, PgPool, PgUrl, PgUrlError, PoolRole, PostgresStore, DEFAULT_POOL_SIZE,
    MAX_POOL_SIZE,
};
pub use sqlite::{SqliteStore, SqliteSynchronous};

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An entry with this id already exists.
    #[error("an entry with id `{0}` already exists")]
    EntryExists(String),
    /// No entry with this id.
    #[error("no entry with id `{0}`")]
    EntryNotFound(String),
    /// The entry changed since it was read (optimistic concurrency).
    #[error("entry `{id}` was changed concurrently (expected revision {expected}); read it again and retry")]
    RevisionConflict {
        /// Entry id.
        id: String,
        /// The revision the caller based its change on.
        expected: u64,
    },
    /// A join token with this hash already exists.
    #[error("join token already exists")]
    TokenExists,
    /// One entry's row cannot be decoded: the entry exists but cannot be used until it is deleted
    /// or restored.
    #[error("entry `{id}` is damaged in the database ({reason}); restore the database from a backup, or stop the server and remove the row (`DELETE FROM entries WHERE id = '{id}'` in sqlite3 vouch.db or psql) and create the entry again")]
    DamagedEntry {
        /// The entry id.
        id: String,
        /// What is wrong, without the row's content.
        reason: String,
    },
    /// The agent is banned: it may neither attest again nor renew nor call the agent API.
    #[error(
        "agent `{0}` is banned; an admin must lift the ban (`vouch agent evict`) before it may attest again"
    )]
    AgentBanned(String),
    /// No agent record with this SPIFFE ID (evicted, or never attested).
    #[error("`{0}` is not an attested agent (evicted, or never attested): attest again")]
    AgentNotFound(String),
    /// The agent presented an X509-SVID that is not its current one.
    #[error("agent `{0}` presented an X509-SVID that is no longer its current one (it was renewed, or the agent attested again); a copied older SVID is refused: use the agent's current SVID, or attest again")]
    StaleSvid(String),
    /// A node group with this SPIFFE ID already exists.
    #[error("node group `{0}` already exists")]
    GroupExists(String),
    /// No node group with this SPIFFE ID.
    #[error("no node group `{0}`")]
    GroupNotFound(String),
    /// The node group still has entries parented to it: deleting it would silently take their
    /// identities from every workload on every member node.
    #[error("node group `{id}` has {entries} entr{plural} parented to it; delete them or give them another parent first (`vouch entry list --parent-id {id}`), then delete the group", plural = if *entries == 1 { "y" } else { "ies" })]
    GroupInUse {
        /// The group's SPIFFE ID.
        id: String,
        /// How many entries are parented to it.
        entries: u64,
    },
    /// A federation relationship with this trust domain already exists.
    #[error("a federation relationship with `{0}` already exists; change it with `vouch federation update`")]
    FederationExists(String),
    /// No federation relationship with this trust domain.
    #[error("no federation relationship with `{0}`")]
    FederationNotFound(String),
    /// The relationship was changed concurrently.
    #[error("the federation relationship with `{0}` was changed concurrently; read it again and retry")]
    FederationConflict(String),
    /// No current version of a policy with this id (never written, or deleted).
    #[error("no policy `{0}`")]
    PolicyNotFound(String),
    /// No secret at this path.
    #[error("no secret `{0}`")]
    SecretNotFound(String),
    /// The secret has no such version.
    #[error("secret `{path}` has no version {version}")]
    SecretVersionNotFound {
        /// The secret's path.
        path: String,
        /// The version asked for.
        version: u64,
    },
    /// No database credential lease with this id (revoked, expired, or never issued).
    #[error("no database lease `{0}` (revoked, expired, or never issued; see `vouch db leases`)")]
    LeaseNotFound(String),
    /// Another version of the secret was written concurrently.
    #[error("secret `{0}` was written concurrently; write again")]
    SecretConflict(String),
    /// The database was upgraded by a newer vouch: its schema has steps this build does not know.
    #[error("the database schema is version {found}, newer than this vouch knows ({supported}): a newer vouch has upgraded it; run that version or a newer one, or restore a backup taken before the upgrade")]
    SchemaTooNew {
        /// The database's schema version.
        found: u32,
        /// The newest version this build knows.
        supported: u32,
    },
    /// Stored data could not be decoded (corruption or a newer schema).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The database reported an error.
    #[error("database error: {0}")]
    Backend(String),
}

/// An entry row that could not be read back (disk fault, a hand edit, a downgrade). Listings skip it
/// so that one bad row cannot take every listing, sync and admin check down with it; they report
/// it here so an admin can repair it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedEntry {
    /// The row's entry id (`rowid <n>` when even the id is unreadable).
    pub id: String,
    /// What is wrong, without the row's content.
    pub reason: String,
}

/// The answer of [`Store::scan_entries`]: the readable entries passing the filter and the damaged
/// rows met on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryListing {
    /// Entries passing the filter, ordered by id.
    pub entries: Vec<Entry>,
    /// Rows in the scanned range that could not be decoded, ordered by id. A damaged row cannot
    /// be matched against the filter's selector, so every damaged row of the range is listed.
    pub damaged: Vec<DamagedEntry>,
}

/// Filters for listing entries; all given conditions must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryFilter {
    /// Only entries with this SPIFFE ID.
    pub spiffe_id: Option<SpiffeId>,
    /// Only entries under this parent.
    pub parent_id: Option<SpiffeId>,
    /// Only entries that require this selector.
    pub selector: Option<Selector>,
    /// Only entries of this namespace.
    pub namespace: Option<Namespace>,
}

impl EntryFilter {
    /// Whether `entry` passes the filter.
    pub fn accepts(&self, entry: &Entry) -> bool {
        self.spiffe_id.as_ref().is_none_or(|id| &entry.spiffe_id == id)
            && self.parent_id.as_ref().is_none_or(|id| &entry.parent_id == id)
            && self.selector.as_ref().is_none_or(|s| entry.selectors.iter().any(|x| x == s))
            && self.namespace.as_ref().is_none_or(|ns| &entry.namespace == ns)
    }
}

/// A join token as stored: only its hash, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinTokenRecord {
    /// Hex SHA-256 of the token.
    pub hash: String,
    /// Unix seconds of creation.
    pub created_at: i64,
    /// Unix seconds after which it is refused.
    pub expires_at: i64,
    /// The agent SPIFFE ID the token was made for, when one was chosen.
    pub agent_id: Option<SpiffeId>,
    /// Unix seconds of its single use.
    pub used_at: Option<i64>,
    /// Labels chosen at creation; the agent that attests with the token gets them as node
    /// selectors (`join_token:label:<key>:<value>`), so node groups can take in join-token agents.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A node agent known to the server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentRecord {
    /// The agent's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// How it attested (`join_token`, `x509pop`, `k8s_psat`).
    pub attestation: String,
    /// Node selectors from attestation.
    pub selectors: Selectors,
    /// Unix seconds of first attestation.
    pub created_at: i64,
    /// Unix seconds of the last attestation or renewal.
    pub last_seen: i64,
    /// Expiry of its current SVID (unix seconds).
    pub svid_expires_at: i64,
    /// A banned agent may not attest again under this ID.
    pub banned: bool,
    /// Serial (lowercase hex) of the agent's current X509-SVID, recorded at attestation and renewal:
    /// the agent API accepts this SVID and no older one. `None` only in records written before
    /// serials were kept (accepted once, then pinned) and in the placeholder of a ban.
    #[serde(default)]
    pub svid_serial: Option<String>,
    /// Serial of the SVID issued by the last renewal, until the agent first presents it. As in
    /// SPIRE, the previous SVID keeps working until then, so an agent whose renewal answer was lost
    /// is not locked out; the first call with the new one retires the old one.
    #[serde(default)]
    pub new_svid_serial: Option<String>,
}

/// A renewal of an agent's SVID, as [`Store::renew_agent`] records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRenewal {
    /// The agent.
    pub spiffe_id: SpiffeId,
    /// Serial of the SVID the agent authenticated with.
    pub presented_serial: String,
    /// Serial of the SVID just issued.
    pub new_serial: String,
    /// Unix seconds of the renewal.
    pub now: i64,
    /// Expiry of the new SVID (unix seconds).
    pub svid_expires_at: i64,
}

/// A rule of [`agent_rules`] bound to its arguments, for [`Store::apply_agent_rule`].
pub type AgentRule = Box<dyn FnOnce(Option<AgentRecord>) -> agent_rules::Outcome + Send>;

/// The state changes of an agent record, as pure functions of the stored record (if any). Every
/// store runs them inside one atomic read-and-write (a transaction or a compare-and-swap), so a ban
/// or an eviction committed by an admin is never overwritten by an agent's attestation or renewal
/// that read the record before it. Each returns the record as it must be written, or `None` when
/// nothing changes, and the record as the caller sees it.
pub mod agent_rules {
    use super::{AgentRecord, AgentRenewal, StoreError};
    use vouch_core::SpiffeId;

    /// What a store does after a rule: the record to write (if it changed) and the answer.
    pub type Outcome = Result<(Option<AgentRecord>, AgentRecord), StoreError>;

    /// Which of the agent's SVIDs a presented serial is.
    fn presented(agent: &AgentRecord, serial: &str) -> Result<Option<AgentRecord>, StoreError> {
        let id = || agent.spiffe_id.to_string();
        if agent.banned {
            return Err(StoreError::AgentBanned(id()));
        }
        match (&agent.svid_serial, &agent.new_svid_serial) {
            (Some(current), _) if current == serial => Ok(None),
            // The renewed SVID's first use retires the previous one.
            (_, Some(new)) if new == serial => Ok(Some(AgentRecord {
                svid_serial: Some(new.clone()),
                new_svid_serial: None,
                ..agent.clone()
            })),
            // A record from before serials were kept: pin the SVID it is used with.
            (None, None) => Ok(Some(AgentRecord { svid_serial: Some(serial.to_owned()), ..agent.clone() })),
            _ => Err(StoreError::StaleSvid(id())),
        }
    }

    /// A call of the agent API with the SVID of serial `serial`.
    pub fn authenticate(stored: Option<AgentRecord>, id: &SpiffeId, serial: &str) -> Outcome {
        let agent = stored.ok_or_else(|| StoreError::AgentNotFound(id.to_string()))?;
        let write = presented(&agent, serial)?;
        let seen = write.clone().unwrap_or(agent);
        Ok((write, seen))
    }

    /// A successful node attestation: `attested` replaces the record (its first-attestation time
    /// kept) unless the agent is banned. The previous SVIDs stop working.
    pub fn attest(stored: Option<AgentRecord>, attested: &AgentRecord) -> Outcome {
        if stored.as_ref().is_some_and(|a| a.banned) {
            return Err(StoreError::AgentBanned(attested.spiffe_id.to_string()));
        }
        let record = AgentRecord {
            created_at: stored.map(|a| a.created_at).unwrap_or(attested.created_at),
            banned: false,
            new_svid_serial: None,
            ..attested.clone()
        };
        Ok((Some(record.clone()), record))
    }

    /// A renewal: only of an existing, not banned agent presenting its current (or just renewed)
    /// SVID. Never creates a record, so it cannot undo an eviction.
    pub fn renew(stored: Option<AgentRecord>, renewal: &AgentRenewal) -> Outcome {
        let agent = stored.ok_or_else(|| StoreError::AgentNotFound(renewal.spiffe_id.to_string()))?;
        let agent = presented(&agent, &renewal.presented_serial)?.unwrap_or(agent);
        let record = AgentRecord {
            last_seen: renewal.now,
            svid_expires_at: renewal.svid_expires_at,
            new_svid_serial: Some(renewal.new_serial.clone()),
            ..agent
        };
        Ok((Some(record.clone()), record))
    }

    /// A ban: of a known agent, or of an ID that never attested (a placeholder record).
    pub fn ban(stored: Option<AgentRecord>, id: &SpiffeId, now: i64) -> Outcome {
        let record = match stored {
            Some(a) => AgentRecord { banned: true, ..a },
            None => AgentRecord {
                spiffe_id: id.clone(),
                attestation: "none".into(),
                selectors: Default::default(),
                created_at: now,
                last_seen: now,
                svid_expires_at: 0,
                banned: true,
                svid_serial: None,
                new_svid_serial: None,
            },
        };
        Ok((Some(record.clone()), record))
    }
}

/// A federation relationship as stored: its settings and its refresh state (with the last good
/// bundle), each as JSON the server writes and parses; the store keeps them opaque.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationRow {
    /// The other trust domain: the key.
    pub trust_domain: TrustDomain,
    /// The settings (JSON).
    pub relationship: String,
    /// The refresh state and the last good bundle (JSON).
    pub state: String,
    /// Grows by one with every change of the settings; a refresh result is stored only under the
    /// revision it was fetched with, so an admin's change is never undone by a refresh in flight.
    pub revision: u64,
}

/// A secret's metadata as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRecord {
    /// The secret's path: the key.
    pub path: SecretPath,
    /// Who answers for it.
    pub owner: String,
    /// What it is for.
    pub purpose: String,
    /// When it should be rotated (unix seconds), if that was said.
    pub rotation_due: Option<i64>,
    /// Unix seconds of the first version.
    pub created_at: i64,
    /// Unix seconds of the latest version.
    pub updated_at: i64,
    /// The highest version written (versions count from 1).
    pub current_version: u64,
}

/// One version of a secret, without its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretVersionRecord {
    /// The version, from 1.
    pub version: u64,
    /// Unix seconds of its writing.
    pub created_at: i64,
    /// Unix seconds of its soft deletion (undone by an undelete), if deleted.
    pub deleted_at: Option<i64>,
    /// Unix seconds of its destruction (the sealed value is gone for good), if destroyed.
    pub destroyed_at: Option<i64>,
}

/// A secret version with its sealed value: the data key sealed under the key-encryption key and
/// the value encrypted under the data key, both opaque to the store. `None` once destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecretVersion {
    /// The version's record.
    pub record: SecretVersionRecord,
    /// The sealed data key.
    pub sealed_key: Option<Vec<u8>>,
    /// The encrypted value.
    pub ciphertext: Option<Vec<u8>>,
}

/// A secret and the version a read serves, read together by [`Store::read_secret`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRead {
    /// The secret's metadata.
    pub secret: SecretRecord,
    /// The version asked for (in whatever state), or the latest live one; `None` when the version
    /// asked for does not exist or, asked for none, when no version is live.
    pub version: Option<SealedSecretVersion>,
}

/// A new secret version for [`Store::put_secret_version`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSecretVersion {
    /// The metadata as it must be after the write (`current_version` is the new version;
    /// `created_at` is kept if the secret exists).
    pub secret: SecretRecord,
    /// The sealed data key.
    pub sealed_key: Vec<u8>,
    /// The encrypted value.
    pub ciphertext: Vec<u8>,
}

/// A change of secret versions for [`Store::change_secret_versions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionChange {
    /// Soft delete at this time: the version is no longer read, but can be undeleted.
    Delete(i64),
    /// Undo a soft delete.
    Undelete,
    /// Destroy at this time: the sealed value is removed for good.
    Destroy(i64),
}

/// Where a database credential lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Recorded before its role is created: a lease left in this state by a crash names a role
    /// that may or may not exist, and is cleaned up (role dropped, lease removed).
    Creating,
    /// The role exists and may log in until `expires_at`.
    Active,
}

impl LeaseState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Creating => "creating",
            LeaseState::Active => "active",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "creating" => Ok(LeaseState::Creating),
            "active" => Ok(LeaseState::Active),
            other => Err(StoreError::Corrupt(format!("database lease state `{other}`"))),
        }
    }
}

/// A lease on a dynamic database role as stored. It never holds the role's password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbLease {
    /// The lease id (hex, generated by the server).
    pub id: String,
    /// The role created for it (generated from the id, a safe identifier).
    pub role: String,
    /// The configured connection the role lives on.
    pub connection: String,
    /// The role template that said what it is granted.
    pub template: String,
    /// Who asked for it (an admin caller or a workload's SPIFFE ID).
    pub identity: String,
    /// Where it stands.
    pub state: LeaseState,
    /// Unix seconds of its issue.
    pub created_at: i64,
    /// Unix seconds at which the role is dropped unless renewed.
    pub expires_at: i64,
    /// Unix seconds past which no renewal extends it (issue time plus the template's max TTL).
    pub max_expires_at: i64,
}

/// One version of a policy document as stored. The store keeps every version (a deletion is a
/// version without text), so the history of a grant can be shown; the policy text is kept opaque
/// (the server parses and validates it before it is written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    /// The policy's id.
    pub id: String,
    /// 1 for the first version, one more for each change.
    pub version: u64,
    /// The Cedar text; `None` for a deletion.
    pub text: Option<String>,
    /// Unix seconds of the change.
    pub created_at: i64,
    /// Who made it (the admin caller).
    pub author: String,
    /// The namespace the policy belongs to (a deletion keeps the namespace of the version it
    /// deletes).
    pub namespace: Namespace,
}

/// The authority state as stored, with the version the store gave it. The version grows by one
/// with every write, so replicas sharing a store tell a changed state by a cheap read of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAuthority {
    /// 1 for the first state, one more for each replacement.
    pub version: u64,
    /// The state (JSON with sealed keys).
    pub state: String,
}

/// What [`Store::write_authority`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorityWrite {
    /// The state was written; its new version.
    Written(u64),
    /// Another writer came first: the state stored now (`None` if there is none), unchanged.
    Conflict(Option<StoredAuthority>),
}

/// A change committed by one process sharing the store, as the other processes hear of it
/// ([`Store::changes`]). It names what changed, not the new content: the listener reads that
/// from the store, which is never older than the change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Change {
    /// An entry was created or updated.
    EntryUpserted {
        /// Its id.
        id: EntryId,
        /// Its parent before an update (`None` for a creation).
        previous_parent: Option<SpiffeId>,
    },
    /// An entry was deleted.
    EntryDeleted {
        /// Its id.
        id: EntryId,
        /// Its parent.
        parent: SpiffeId,
    },
    /// The authority state was replaced (keys rotated, bundle changed).
    AuthorityChanged {
        /// Its new version.
        version: u64,
    },
    /// An agent was banned or evicted.
    AgentRemoved {
        /// The agent.
        agent: SpiffeId,
        /// Banned (else evicted).
        banned: bool,
    },
    /// A node group was created or deleted (its members get a fresh snapshot).
    GroupChanged {
        /// The group's SPIFFE ID.
        id: SpiffeId,
    },
    /// An agent's node selectors changed (it re-attested): its node groups are decided again.
    AgentSelectorsChanged {
        /// The agent.
        agent: SpiffeId,
    },
    /// A federation relationship was created, changed, refreshed or deleted: the federated bundles
    /// served are read again.
    FederationChanged {
        /// The other trust domain.
        trust_domain: TrustDomain,
    },
    /// A policy was written or deleted: the policy set is read again.
    PoliciesChanged {
        /// The policy's id.
        id: String,
    },
    /// A secret's versions changed (written, deleted, undeleted, destroyed): its watches look again.
    SecretChanged {
        /// The secret's path.
        path: SecretPath,
    },
    /// Changes may have been missed (the listening connection was down, or a change was too large
    /// to describe): re-read what is derived from the store.
    Resync,
}

/// The head of the audit chain: the last record's sequence number and hash (0 and
/// [`vouch_core::audit::GENESIS_HASH`] before the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    /// The last record's sequence number.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// Builds the records of one append from the head they follow: numbered from `head.seq + 1`,
/// each chained to the one before. Run inside the store's write transaction, so appends by any
/// number of writers (replicas) make one chain.
pub type AuditSeal = Box<dyn FnOnce(&AuditHead) -> Vec<AuditRecord> + Send>;

/// Which audit records to list; all given conditions must hold. Ordered by sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only records whose `spiffe_id` field is this.
    pub spiffe_id: Option<String>,
    /// Only records about this node (agent SPIFFE ID).
    pub node: Option<String>,
    /// Only this event; a trailing `*` matches every event with the prefix before it.
    pub event: Option<String>,
    /// Only records at or after this time (unix milliseconds).
    pub since_ms: Option<i64>,
    /// Only records before this time (unix milliseconds).
    pub until_ms: Option<i64>,
    /// Only records after this sequence number (paging).
    pub after_seq: u64,
    /// At most this many.
    pub limit: u32,
}

impl AuditQuery {
    /// The event filter as `(text, is_prefix)`.
    pub fn event_match(&self) -> Option<(&str, bool)> {
        self.event.as_deref().map(|e| match e.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (e, false),
        })
    }
}

/// A checkpoint key as stored: its public half and its private key sealed under the
/// key-encryption key (opaque to the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditKeyRecord {
    /// The key's id.
    pub id: String,
    /// The algorithm (`Ed25519`).
    pub algorithm: String,
    /// The public key (base64).
    pub public_key: String,
    /// The sealed PKCS#8 private key.
    pub sealed_key: Vec<u8>,
    /// Unix seconds of its creation.
    pub created_at: i64,
}

/// What happened when a join token was presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenUse {
    /// Valid: it is now marked used.
    Consumed(JoinTokenRecord),
    /// No such token.
    Unknown,
    /// The token expired (it stays unused).
    Expired,
    /// The token was already used once.
    AlreadyUsed,
}

/// Most outstanding x509pop challenges of one node certificate: issuing another takes out the
/// oldest of its, so that requests for one certificate (public, so anyone may send them) cannot
/// take the store-wide bound from every other node. The newest request is always kept.
pub const MAX_CHALLENGES_PER_CERTIFICATE: u32 = 4;

/// An outstanding x509pop challenge as stored: the hash of its nonce (never the nonce itself, so a
/// copy of the database cannot answer one), the node certificate it was issued for and its expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeRecord {
    /// Hex SHA-256 of the nonce.
    pub nonce_hash: String,
    /// Fingerprint (hex SHA-256) of the node certificate the challenge was issued for.
    pub fingerprint: String,
    /// Unix seconds from which it is refused.
    pub expires_at: i64,
}

/// What [`Store::issue_challenge`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeIssue {
    /// The challenge is stored; it can be consumed once.
    Issued,
    /// Nothing was stored: `limit` challenges are outstanding and unexpired (expired ones were
    /// purged first).
    Full {
        /// The bound that was reached.
        limit: u32,
    },
}

/// What happened when an x509pop challenge was answered ([`Store::consume_challenge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeUse {
    /// It was outstanding and unexpired; it is now gone. The fingerprint it was issued for.
    Consumed {
        /// Fingerprint of the node certificate the challenge was issued for.
        fingerprint: String,
    },
    /// No such challenge: never issued, already answered, or purged after expiry.
    Unknown,
    /// It had expired; it is now gone.
    Expired,
}

/// The persistence interface of the server.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Creates entries atomically: all or none. Fails with [`StoreError::EntryExists`] if any id
    /// is taken.
    async fn create_entries(&self, entries: &[Entry]) -> Result<(), StoreError>;

    /// One entry by id.
    async fn get_entry(&self, id: &EntryId) -> Result<Option<Entry>, StoreError>;

    /// Entries passing `filter`, ordered by id, and the damaged rows of the scanned range. A row
    /// that cannot be decoded is skipped, counted (see [`Store::damaged_rows_skipped`]) and
    /// reported, never an error for the whole listing.
    async fn scan_entries(&self, filter: &EntryFilter) -> Result<EntryListing, StoreError>;

    /// Entries passing `filter`, ordered by id; damaged rows are skipped (see
    /// [`Store::scan_entries`]).
    async fn list_entries(&self, filter: &EntryFilter) -> Result<Vec<Entry>, StoreError> {
        Ok(self.scan_entries(filter).await?.entries)
    }

    /// How many times a listing has skipped a damaged row since the store was opened (a counter
    /// for alerting).
    fn damaged_rows_skipped(&self) -> u64;

    /// How many writes (each taking the database's write lock) the store has started since it was
    /// opened: a counter for operators, and how tests show that refusals (a bogus join token) write
    /// nothing.
    fn write_transactions(&self) -> u64;

    /// Replaces an entry whose stored revision is `entry.revision - 1`.
    async fn update_entry(&self, entry: &Entry) -> Result<(), StoreError>;

    /// Deletes an entry and returns it.
    async fn delete_entry(&self, id: &EntryId) -> Result<Entry, StoreError>;

    /// Stores a new join token.
    async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;

    /// Atomically checks and uses a join token: a token can be consumed exactly once.
    async fn consume_join_token(&self, hash: &str, now: i64) -> Result<TokenUse, StoreError>;

    /// Stores an x509pop challenge, unless `limit` unexpired challenges are outstanding already
    /// ([`ChallengeIssue::Full`]). Expired challenges are purged first. The count and the insert
    /// are one atomic step across every process sharing the store, so the bound holds however many
    /// replicas issue at once: an unauthenticated flood cannot grow the table past `limit`.
    async fn issue_challenge(
        &self,
        challenge: &ChallengeRecord,
        now: i64,
        limit: u32,
    ) -> Result<ChallengeIssue, StoreError>;

    /// Takes the challenge whose nonce hashes to `nonce_hash` out of the store, atomically: of
    /// several callers (on any replica) presenting it, at most one gets [`ChallengeUse::Consumed`].
    /// A challenge whose expiry is at or before `now` is removed and refused. An unknown hash is
    /// refused without a write.
    async fn consume_challenge(&self, nonce_hash: &str, now: i64) -> Result<ChallengeUse, StoreError>;

    /// Records that a subject token was exchanged (RFC 8693): `key` names it (a hash of its issuer
    /// and `jti`, or of the token), kept until `expires_at` (unix seconds). `true` if the key was
    /// new; `false` if it is recorded and unexpired, i.e. the token is presented again. Of several
    /// callers (on any replica) recording one key at once, exactly one gets `true`. Keys whose
    /// expiry is at or before `now` are purged first, so an expired key never refuses anything.
    async fn record_exchanged_token(&self, key: &str, expires_at: i64, now: i64) -> Result<bool, StoreError> {
        let fresh = self.record_exchanged_tokens(&[(key.to_owned(), expires_at)], now).await?;
        Ok(fresh.first().copied().unwrap_or(false))
    }

    /// [`Store::record_exchanged_token`] for several tokens in one write transaction (group commit
    /// of concurrent exchanges), each `(key, expires_at)`; the answers in the same order. A key
    /// given twice is new only the first time.
    async fn record_exchanged_tokens(
        &self,
        tokens: &[(String, i64)],
        now: i64,
    ) -> Result<Vec<bool>, StoreError>;

    // Agent records change only through the rules of [`agent_rules`], each applied atomically: there
    // is no plain "write this record", because writing back a record read earlier is how a ban or
    // an eviction got lost.

    /// Applies `rule` to the record of agent `id` in one read-decide-write transaction, so that no
    /// other change to the agent can fall between the read and the write: the one thing a backend
    /// implements for agent records; the four methods below are the same for every backend.
    async fn apply_agent_rule(&self, id: &SpiffeId, rule: AgentRule) -> Result<AgentRecord, StoreError>;

    /// Records a node attestation ([`agent_rules::attest`]); [`StoreError::AgentBanned`] if banned.
    async fn attest_agent(&self, agent: &AgentRecord) -> Result<AgentRecord, StoreError> {
        let agent = agent.clone();
        self.apply_agent_rule(
            &agent.spiffe_id.clone(),
            Box::new(move |stored| agent_rules::attest(stored, &agent)),
        )
        .await
    }

    /// Records a renewal ([`agent_rules::renew`]): [`StoreError::AgentNotFound`] if evicted,
    /// [`StoreError::AgentBanned`], or [`StoreError::StaleSvid`] if the presented SVID is not current.
    async fn renew_agent(&self, renewal: &AgentRenewal) -> Result<AgentRecord, StoreError> {
        let renewal = renewal.clone();
        self.apply_agent_rule(
            &renewal.spiffe_id.clone(),
            Box::new(move |stored| agent_rules::renew(stored, &renewal)),
        )
        .await
    }

    /// Checks that the agent `id` may call with the SVID of serial `serial`
    /// ([`agent_rules::authenticate`]), retiring its previous SVID on the first use of a renewed one.
    async fn authenticate_agent(&self, id: &SpiffeId, serial: &str) -> Result<AgentRecord, StoreError> {
        // Every agent call lands here: decide on a plain read, which takes no write lock, and only
        // when the rule changes the record (the first use of a renewed SVID) decide again inside a
        // write transaction.
        let (write, seen) = agent_rules::authenticate(self.get_agent(id).await?, id, serial)?;
        if write.is_none() {
            return Ok(seen);
        }
        let (who, serial) = (id.clone(), serial.to_owned());
        self.apply_agent_rule(id, Box::new(move |stored| agent_rules::authenticate(stored, &who, &serial)))
            .await
    }

    /// Bans an agent, known or not ([`agent_rules::ban`]).
    async fn ban_agent(&self, id: &SpiffeId, now: i64) -> Result<AgentRecord, StoreError> {
        let who = id.clone();
        self.apply_agent_rule(id, Box::new(move |stored| agent_rules::ban(stored, &who, now))).await
    }

    /// One agent.
    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError>;

    /// Every agent, ordered by SPIFFE ID.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Removes an agent (eviction: it must attest again); returns whether it existed.
    async fn delete_agent(&self, id: &SpiffeId) -> Result<bool, StoreError>;

    /// Creates a node group; [`StoreError::GroupExists`] if its SPIFFE ID is taken.
    async fn create_group(&self, group: &NodeGroup) -> Result<(), StoreError>;

    /// One node group by SPIFFE ID.
    async fn get_group(&self, id: &SpiffeId) -> Result<Option<NodeGroup>, StoreError>;

    /// Every node group, ordered by SPIFFE ID. A row that cannot be decoded is skipped and logged.
    async fn list_groups(&self) -> Result<Vec<NodeGroup>, StoreError>;

    /// Deletes a node group and returns it: [`StoreError::GroupNotFound`] if there is none, and
    /// [`StoreError::GroupInUse`] (nothing deleted) while entries are parented to it. The check
    /// and the deletion are one transaction.
    async fn delete_group(&self, id: &SpiffeId) -> Result<NodeGroup, StoreError>;

    /// Creates a federation relationship at revision 1; [`StoreError::FederationExists`] if there
    /// is one with its trust domain.
    async fn create_federation(&self, row: &FederationRow) -> Result<(), StoreError>;

    /// One federation relationship by trust domain.
    async fn get_federation(&self, trust_domain: &TrustDomain) -> Result<Option<FederationRow>, StoreError>;

    /// Every federation relationship, ordered by trust domain.
    async fn list_federations(&self) -> Result<Vec<FederationRow>, StoreError>;

    /// Replaces settings and state if the stored revision is still `row.revision`; returns the new
    /// revision. [`StoreError::FederationNotFound`] if there is none, [`StoreError::FederationConflict`]
    /// (nothing written) if it changed since it was read.
    async fn update_federation(&self, row: &FederationRow) -> Result<u64, StoreError>;

    /// Stores a refresh result if the settings are still at `revision`; whether it was stored.
    async fn save_federation_state(
        &self,
        trust_domain: &TrustDomain,
        revision: u64,
        state: &str,
    ) -> Result<bool, StoreError>;

    /// Deletes a federation relationship and returns it; [`StoreError::FederationNotFound`] if there
    /// is none.
    async fn delete_federation(&self, trust_domain: &TrustDomain) -> Result<FederationRow, StoreError>;

    /// Writes a new version of a secret with its metadata, in one transaction: version
    /// `secret.current_version` must be the one after the stored highest (1 for a new secret),
    /// else [`StoreError::SecretConflict`] and nothing is written (a concurrent writer took it).
    async fn put_secret_version(&self, version: &NewSecretVersion) -> Result<(), StoreError>;

    /// One secret's metadata.
    async fn get_secret(&self, path: &SecretPath) -> Result<Option<SecretRecord>, StoreError>;

    /// Every secret's metadata, ordered by path.
    async fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError>;

    /// One secret's versions (without values), ordered by version; empty if there is no secret.
    async fn list_secret_versions(&self, path: &SecretPath) -> Result<Vec<SecretVersionRecord>, StoreError>;

    /// One version with its sealed value.
    async fn get_secret_version(
        &self,
        path: &SecretPath,
        version: u64,
    ) -> Result<Option<SealedSecretVersion>, StoreError>;

    /// What a read of `path` needs, in one call: the secret's metadata and `version` (or, with
    /// `None`, the latest version neither deleted nor destroyed) with its sealed value; `None` if
    /// there is no such secret. A store should answer it from one snapshot and in one trip: it is
    /// on the path of every secret read. This default composes the three calls above.
    async fn read_secret(
        &self,
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<Option<SecretRead>, StoreError> {
        let Some(secret) = self.get_secret(path).await? else { return Ok(None) };
        let version = match version {
            Some(v) => Some(v),
            None => self
                .list_secret_versions(path)
                .await?
                .iter()
                .rev()
                .find(|v| v.deleted_at.is_none() && v.destroyed_at.is_none())
                .map(|v| v.version),
        };
        let version = match version {
            Some(v) => self.get_secret_version(path, v).await?,
            None => None,
        };
        Ok(Some(SecretRead { secret, version }))
    }

    /// Deletes, undeletes or destroys versions of a secret in one transaction and returns the
    /// versions that changed (a version already in the asked state is left as it is; a destroyed
    /// version is neither deleted nor undeleted). [`StoreError::SecretNotFound`] or
    /// [`StoreError::SecretVersionNotFound`] (nothing changed) if one does not exist.
    async fn change_secret_versions(
        &self,
        path: &SecretPath,
        versions: &[u64],
        change: VersionChange,
    ) -> Result<Vec<u64>, StoreError>;

    /// Writes a new version of policy `id` with `text` in `namespace` (version 1 if the id is new
    /// or was never written, else one more than its last version, deleted or not) and returns it.
    /// Versions of one id are numbered without gaps however many writers race.
    async fn put_policy(
        &self,
        id: &str,
        namespace: &Namespace,
        text: &str,
        author: &str,
        now: i64,
    ) -> Result<PolicyVersion, StoreError>;

    /// Deletes policy `id`: writes a version without text and returns it.
    /// [`StoreError::PolicyNotFound`] (nothing written) if it has no current version.
    async fn delete_policy(&self, id: &str, author: &str, now: i64) -> Result<PolicyVersion, StoreError>;

    /// The current version of every policy that is not deleted, ordered by id.
    async fn list_policies(&self) -> Result<Vec<PolicyVersion>, StoreError>;

    /// Every version of policy `id`, oldest first (deletions included); empty if it never existed.
    async fn policy_history(&self, id: &str) -> Result<Vec<PolicyVersion>, StoreError>;

    /// A number that grows with every policy write (a cheap read, to tell whether the policy set
    /// changed); 0 before the first.
    async fn policies_revision(&self) -> Result<u64, StoreError>;

    /// Records a new database lease (in state [`LeaseState::Creating`], before its role exists).
    async fn create_db_lease(&self, lease: &DbLease) -> Result<(), StoreError>;

    /// Marks a lease active once its role exists; `false` if the lease is gone or not creating
    /// (another server gave it up as abandoned: the caller must drop the role it made).
    async fn activate_db_lease(&self, id: &str) -> Result<bool, StoreError>;

    /// Sets an active lease's expiry; `false` if no active lease has this id.
    async fn renew_db_lease(&self, id: &str, expires_at: i64) -> Result<bool, StoreError>;

    /// The lease with this id, if any.
    async fn get_db_lease(&self, id: &str) -> Result<Option<DbLease>, StoreError>;

    /// Every lease, ordered by id.
    async fn list_db_leases(&self) -> Result<Vec<DbLease>, StoreError>;

    /// Removes a lease (after its role was dropped); `false` if there was none.
    async fn delete_db_lease(&self, id: &str) -> Result<bool, StoreError>;

    /// Appends records to the audit log in one write transaction: `seal` gets the head and
    /// returns the records that follow it (numbered and chained); the new head is returned. An
    /// empty batch writes nothing. Records not numbered from `head.seq + 1` are refused
    /// ([`StoreError::Corrupt`]) and nothing is written.
    async fn append_audit(&self, seal: AuditSeal) -> Result<AuditHead, StoreError>;

    /// The head of the audit chain.
    async fn audit_head(&self) -> Result<AuditHead, StoreError>;

    /// Audit records passing `query`, by sequence number. A record whose fields cannot be read
    /// back is returned with a single field `_unreadable` holding the stored text, so that
    /// verification reports it as edited instead of failing.
    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    /// Stores a signed checkpoint; `false` if one at its sequence number exists (another replica
    /// made it).
    async fn add_audit_checkpoint(&self, checkpoint: &AuditCheckpoint) -> Result<bool, StoreError>;

    /// Every checkpoint, by sequence number.
    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError>;

    /// The checkpoint keys, oldest first; when there is none, `candidate` is stored first (of
    /// several replicas starting together, exactly one candidate is kept).
    async fn audit_keys(&self, candidate: &AuditKeyRecord) -> Result<Vec<AuditKeyRecord>, StoreError>;

    /// The persisted authority state (JSON with sealed keys) and its version, if any.
    async fn load_authority_versioned(&self) -> Result<Option<StoredAuthority>, StoreError>;

    /// The version of the persisted authority state, if any: a cheap read, to tell whether the
    /// state changed since it was loaded.
    async fn authority_version(&self) -> Result<Option<u64>, StoreError>;

    /// Writes the authority state atomically if the stored one is still the one the caller knows:
    /// with `expected` `None`, only if no state is stored (the first start; of several replicas
    /// starting together on an empty database exactly one succeeds); with `Some(v)`, only if the
    /// stored version is `v`. Otherwise nothing is written and the stored state is returned.
    async fn write_authority(&self, expected: Option<u64>, state: &str)
        -> Result<AuthorityWrite, StoreError>;

    /// The persisted authority state (JSON with sealed keys), if any.
    async fn load_authority(&self) -> Result<Option<String>, StoreError> {
        Ok(self.load_authority_versioned().await?.map(|s| s.state))
    }

    /// Replaces the persisted authority state, whatever is stored (tools and tests; the server
    /// writes through [`Store::write_authority`], so that a replica never overwrites a state it
    /// has not seen).
    async fn save_authority(&self, state: &str) -> Result<(), StoreError> {
        // A concurrent writer can only make a few rounds fail.
        for _ in 0..16 {
            let expected = self.authority_version().await?;
            if let AuthorityWrite::Written(_) = self.write_authority(expected, state).await? {
                return Ok(());
            }
        }
        Err(StoreError::Backend("the authority state kept changing while it was being replaced".into()))
    }

    /// Whether this process leads the work that exactly one of the processes sharing the store
    /// may do (key rotation), taking the lead when nobody holds it. A store only one process uses
    /// (SQLite) always answers yes. The lead lasts while the process lives and reaches the store;
    /// callers ask again before each piece of such work.
    async fn try_lead(&self) -> Result<bool, StoreError> {
        Ok(true)
    }

    /// The changes that other processes sharing the store commit, as they commit them; `None`
    /// when no other process can write (SQLite: the server's own writes are all there is). The
    /// first message is a [`Change::Resync`] once listening has begun; call it within a Tokio
    /// runtime (PostgreSQL starts its listening task on the first call).
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_from_before_serials_pins_the_first_svid_used_with_it() {
        let old: AgentRecord = serde_json::from_str(
            r#"{"spiffe_id":"spiffe://example.org/agent/a","attestation":"join_token","selectors":[],"created_at":1,"last_seen":1,"svid_expires_at":9,"banned":false}"#,
        )
        .unwrap();
        assert_eq!((old.svid_serial.as_deref(), old.new_svid_serial.as_deref()), (None, None));
        let (write, seen) = agent_rules::authenticate(Some(old.clone()), &old.spiffe_id, "aa").unwrap();
        assert_eq!(write.as_ref().and_then(|r| r.svid_serial.as_deref()), Some("aa"));
        assert_eq!(Some(seen), write);
        let pinned = agent_rules::authenticate(Some(old.clone()), &old.spiffe_id, "aa").unwrap().0.unwrap();
        assert!(matches!(
            agent_rules::authenticate(Some(pinned), &old.spiffe_id, "bb"),
            Err(StoreError::StaleSvid(_))
        ));
    }
}
