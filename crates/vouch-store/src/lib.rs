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
mod postgres;
mod sqlite;
#[cfg(feature = "test-postgres")]
pub mod test_postgres;

use async_trait::async_trait;
use vouch_core::{Entry, EntryId, Selector, Selectors, SpiffeId};

pub use postgres::{redact_passwords, PgUrl, PgUrlError, PostgresStore};
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
}

impl EntryFilter {
    /// Whether `entry` passes the filter.
    pub fn accepts(&self, entry: &Entry) -> bool {
        self.spiffe_id.as_ref().is_none_or(|id| &entry.spiffe_id == id)
            && self.parent_id.as_ref().is_none_or(|id| &entry.parent_id == id)
            && self.selector.as_ref().is_none_or(|s| entry.selectors.iter().any(|x| x == s))
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

    /// Replaces an entry whose stored revision is `entry.revision - 1`.
    async fn update_entry(&self, entry: &Entry) -> Result<(), StoreError>;

    /// Deletes an entry and returns it.
    async fn delete_entry(&self, id: &EntryId) -> Result<Entry, StoreError>;

    /// Stores a new join token.
    async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError>;

    /// Atomically checks and uses a join token: a token can be consumed exactly once.
    async fn consume_join_token(&self, hash: &str, now: i64) -> Result<TokenUse, StoreError>;

    /// Creates or replaces an agent.
    async fn upsert_agent(&self, agent: &AgentRecord) -> Result<(), StoreError>;

    /// One agent.
    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError>;

    /// Every agent, ordered by SPIFFE ID.
    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;

    /// Removes an agent (eviction: it must attest again); returns whether it existed.
    async fn delete_agent(&self, id: &SpiffeId) -> Result<bool, StoreError>;

    /// The persisted authority state (JSON with sealed keys), if any.
    async fn load_authority(&self) -> Result<Option<String>, StoreError>;

    /// Replaces the persisted authority state.
    async fn save_authority(&self, state: &str) -> Result<(), StoreError>;

    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
}
