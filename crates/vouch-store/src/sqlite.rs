//! The embedded SQLite store: one file in the data directory, WAL journal, versioned schema
//! migrations (see [`crate::migrate`]).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use vouch_core::{Entry, EntryId, Namespace, NodeGroup, SpiffeId, TrustDomain};

use crate::codec::{
    authority_version, consumed_token, decode_agent, decode_entry, decode_federation, decode_group,
    decode_row, encode_agent, encode_entry, encode_group, encode_labels, prior_revision, sort_rows,
    usable_token, used_challenge, DamageLog, TokenRow,
};
use crate::migrate::{self, Migration};
use crate::{
    agent_rules, AgentRecord, AgentRule, AuditHead, AuditKeyRecord, AuditQuery, AuditSeal, AuthorityWrite,
    ChallengeIssue, ChallengeRecord, ChallengeUse, DamagedEntry, DbLease, EntryFilter, EntryListing,
    FederationRow, JoinTokenRecord, LeaseState, NewSecretVersion, PolicyVersion, SealedSecretVersion,
    SecretRead, SecretRecord, SecretVersionRecord, Store, StoreError, StoredAuthority, TokenUse,
    VersionChange,
};
use vouch_core::audit::{AuditCheckpoint, AuditRecord};
use vouch_core::SecretPath;

/// The schema, step by step. Steps 1 and 2 are the schema of the builds before `schema_version`,
/// which counted steps in `PRAGMA user_version` only: such a database is recognised by that count.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "entries, join tokens, authority",
        sql: "CREATE TABLE entries (
            id TEXT PRIMARY KEY,
            spiffe_id TEXT NOT NULL,
            parent_id TEXT NOT NULL,
            revision INTEGER NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
        CREATE INDEX entries_parent_id ON entries (parent_id);
        CREATE TABLE join_tokens (
            hash TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            agent_id TEXT,
            used_at INTEGER
        );
        CREATE TABLE authority (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            state TEXT NOT NULL
        );",
    },
    Migration {
        version: 2,
        name: "agents",
        sql: "CREATE TABLE agents (
            spiffe_id TEXT PRIMARY KEY,
            data TEXT NOT NULL
        );",
    },
    Migration {
        version: 3,
        name: "authority version",
        sql: "ALTER TABLE authority ADD COLUMN version INTEGER NOT NULL DEFAULT 1;",
    },
    Migration {
        version: 4,
        name: "node groups, join token labels",
        sql: "CREATE TABLE node_groups (
            spiffe_id TEXT PRIMARY KEY,
            data TEXT NOT NULL
        );
        ALTER TABLE join_tokens ADD COLUMN labels TEXT;",
    },
    Migration {
        version: 5,
        name: "x509pop challenges",
        sql: "CREATE TABLE x509pop_challenges (
            nonce_hash TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            expires_at INTEGER NOT NULL
        );
        CREATE INDEX x509pop_challenges_expires_at ON x509pop_challenges (expires_at);",
    },
    Migration {
        version: 6,
        name: "federation relationships",
        sql: "CREATE TABLE federation (
            trust_domain TEXT PRIMARY KEY,
            relationship TEXT NOT NULL,
            state TEXT NOT NULL,
            revision INTEGER NOT NULL
        );",
    },
    Migration {
        version: 7,
        name: "exchanged subject tokens",
        sql: "CREATE TABLE exchanged_tokens (
            key TEXT PRIMARY KEY,
            expires_at INTEGER NOT NULL
        );
        CREATE INDEX exchanged_tokens_expires_at ON exchanged_tokens (expires_at);",
    },
    Migration {
        version: 8,
        name: "secrets",
        sql: "CREATE TABLE secrets (
            path TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            purpose TEXT NOT NULL,
            rotation_due INTEGER,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            current_version INTEGER NOT NULL
        );
        CREATE TABLE secret_versions (
            path TEXT NOT NULL REFERENCES secrets (path),
            version INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            deleted_at INTEGER,
            destroyed_at INTEGER,
            sealed_key BLOB,
            ciphertext BLOB,
            PRIMARY KEY (path, version)
        );",
    },
    Migration {
        version: 9,
        name: "policies",
        // Every version of every policy; `text` NULL marks a deletion. `seq` orders all changes.
        sql: "CREATE TABLE policies (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL,
            version INTEGER NOT NULL,
            text TEXT,
            created_at INTEGER NOT NULL,
            author TEXT NOT NULL,
            UNIQUE (id, version)
        );",
    },
    Migration {
        version: 10,
        name: "db_leases",
        // Leases on dynamic database roles; never a password. A lease is written (`creating`)
        // before its role exists, so a crash leaves a row that names the role to clean up.
        sql: "CREATE TABLE db_leases (
            id TEXT PRIMARY KEY,
            role TEXT NOT NULL UNIQUE,
            connection TEXT NOT NULL,
            template TEXT NOT NULL,
            identity TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            max_expires_at INTEGER NOT NULL
        );",
    },
    Migration {
        version: 11,
        name: "audit_log",
        // The hash-chained audit log (vouch_core::audit), its head (the one row every append
        // reads and writes, so appends are serialized), signed checkpoints and their keys (the
        // private key sealed under the key-encryption key). `spiffe_id` and `node` are copies of
        // fields, for searching.
        sql: "CREATE TABLE audit_log (
            seq INTEGER PRIMARY KEY,
            time_ms INTEGER NOT NULL,
            event TEXT NOT NULL,
            spiffe_id TEXT,
            node TEXT,
            fields TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_log_spiffe_id ON audit_log (spiffe_id, seq);
        CREATE INDEX audit_log_node ON audit_log (node, seq);
        CREATE INDEX audit_log_time ON audit_log (time_ms);
        CREATE TABLE audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq INTEGER NOT NULL,
            hash TEXT NOT NULL
        );
        INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
        CREATE TABLE audit_checkpoints (
            seq INTEGER PRIMARY KEY,
            hash TEXT NOT NULL,
            time_ms INTEGER NOT NULL,
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL
        );
        CREATE TABLE audit_keys (
            id TEXT PRIMARY KEY,
            algorithm TEXT NOT NULL,
            public_key TEXT NOT NULL,
            sealed_key BLOB NOT NULL,
            created_at INTEGER NOT NULL
        );",
    },
    Migration {
        version: 12,
        name: "namespaces",
        // Entries keep their namespace in `data` too (absent there means `default`); the column
        // is for listing one namespace without reading the others.
        sql: "ALTER TABLE entries ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
        CREATE INDEX entries_namespace ON entries (namespace);
        ALTER TABLE policies ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';",
    },
];

const LEASE_COLUMNS: &str =
    "id, role, connection, template, identity, state, created_at, expires_at, max_expires_at";

fn lease_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(DbLease, String)> {
    Ok((
        DbLease {
            id: r.get(0)?,
            role: r.get(1)?,
            connection: r.get(2)?,
            template: r.get(3)?,
            identity: r.get(4)?,
            state: LeaseState::Creating,
            created_at: r.get(6)?,
            expires_at: r.get(7)?,
            max_expires_at: r.get(8)?,
        },
        r.get(5)?,
    ))
}

/// A lease with its stored state parsed.
fn lease_of((mut lease, state): (DbLease, String)) -> Result<DbLease, StoreError> {
    lease.state = LeaseState::parse(&state)?;
    Ok(lease)
}

const POLICY_COLUMNS: &str = "id, version, text, created_at, author, namespace";

fn policy_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyVersion> {
    Ok(PolicyVersion {
        id: r.get(0)?,
        version: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
        text: r.get(2)?,
        created_at: r.get(3)?,
        author: r.get(4)?,
        // A name this build would refuse was not written by it: the row reads as damaged.
        namespace: Namespace::new(&r.get::<_, String>(5)?).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
        })?,
    })
}

/// Writes the next version of policy `id` in `tx`, in `namespace` (a deletion, `None`, stays in
/// the namespace of the version before it).
fn insert_policy_version(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    namespace: Option<&Namespace>,
    text: Option<&str>,
    author: &str,
    now: i64,
) -> Result<PolicyVersion, StoreError> {
    let (last, last_ns): (i64, Option<String>) = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0), (SELECT namespace FROM policies WHERE id = ?1 ORDER BY version DESC LIMIT 1) FROM policies WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(backend)?;
    let namespace = match (namespace, last_ns) {
        (Some(ns), _) => ns.clone(),
        (None, Some(last)) => {
            Namespace::new(&last).map_err(|e| StoreError::Corrupt(format!("policy `{id}`: {e}")))?
        }
        (None, None) => Namespace::default(),
    };
    let version = last + 1;
    tx.execute(
        "INSERT INTO policies (id, version, text, created_at, author, namespace) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![id, version, text, now, author, namespace.as_str()],
    )
    .map_err(backend)?;
    Ok(PolicyVersion {
        id: id.to_owned(),
        version: u64::try_from(version).unwrap_or(0),
        text: text.map(str::to_owned),
        created_at: now,
        author: author.to_owned(),
        namespace,
    })
}

const FEDERATION_BY_TD: &str =
    "SELECT trust_domain, relationship, state, revision FROM federation WHERE trust_domain = ?1";

/// A federation row as selected (`trust_domain, relationship, state, revision`); a row whose trust
/// domain cannot be parsed is corrupt.
fn federation_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<FederationRow, StoreError>> {
    Ok(decode_federation(&r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

const SECRET_COLUMNS: &str =
    "path, owner, purpose, rotation_due, created_at, updated_at, current_version FROM secrets";

/// A secrets row as selected ([`SECRET_COLUMNS`]); a path that does not parse is corrupt.
fn secret_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SecretRecord, StoreError>> {
    let path: String = r.get(0)?;
    let (owner, purpose, rotation_due, created_at, updated_at, current): (
        String,
        String,
        Option<i64>,
        i64,
        i64,
        i64,
    ) = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?);
    Ok(crate::codec::decode_secret(&path, owner, purpose, rotation_due, created_at, updated_at, current))
}

/// A secret_versions row as selected (`version, created_at, deleted_at, destroyed_at`).
fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SecretVersionRecord, StoreError>> {
    Ok(crate::codec::decode_secret_version(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

/// When SQLite waits for the disk (`PRAGMA synchronous`), in WAL mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// Syncs at checkpoints only: a committed write survives a crash of the process, but the last
    /// transactions before a power loss or kernel crash can be lost (the database stays
    /// consistent). The default: a write costs no fsync.
    #[default]
    Normal,
    /// Syncs the WAL at every commit: a committed write survives power loss too, at the cost of
    /// one fsync per write transaction.
    Full,
}

impl SqliteSynchronous {
    /// The value as written in configuration and in the pragma.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Full => "full",
        }
    }
}

impl std::str::FromStr for SqliteSynchronous {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Self::Normal),
            "full" => Ok(Self::Full),
            other => Err(format!("`{other}` is not a SQLite synchronous setting: use `normal` or `full`")),
        }
    }
}

impl std::fmt::Display for SqliteSynchronous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    damage: Arc<DamageLog>,
    /// Writes started (each takes SQLite's write lock), for [`Store::write_transactions`].
    writes: Arc<AtomicU64>,
}

fn read_token(conn: &Connection, hash: &str) -> Result<Option<TokenRow>, StoreError> {
    conn.query_row(
        "SELECT created_at, expires_at, agent_id, used_at, labels FROM join_tokens WHERE hash = ?1",
        [hash],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
    )
    .optional()
    .map_err(backend)
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

/// A text column of an audit row, whatever SQLite holds there: SQLite does not enforce column
/// types, so a row edited behind the server's back may hold a blob, invalid UTF-8 or a number.
/// Such a row must reach the verifier, which reports it as edited (its content no longer matches
/// its hash), instead of failing the whole search or verification.
fn lenient_text(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<String> {
    use rusqlite::types::ValueRef;
    Ok(match r.get_ref(i)? {
        ValueRef::Text(b) | ValueRef::Blob(b) => String::from_utf8_lossy(b).into_owned(),
        ValueRef::Integer(n) => n.to_string(),
        ValueRef::Real(x) => x.to_string(),
        ValueRef::Null => String::new(),
    })
}

/// An integer column of an audit row, leniently (see [`lenient_text`]): anything but an integer
/// reads as `i64::MIN`, which no record was written with.
fn lenient_int(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<i64> {
    Ok(match r.get_ref(i)? {
        rusqlite::types::ValueRef::Integer(n) => n,
        _ => i64::MIN,
    })
}

/// The audit chain's head row.
fn read_audit_head(conn: &Connection) -> Result<AuditHead, StoreError> {
    conn.query_row("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
        Ok(AuditHead { seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), hash: r.get(1)? })
    })
    .map_err(backend)
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Brings the schema to the newest version in one transaction (see [`crate::migrate`]). Taken
/// with `BEGIN IMMEDIATE`, so two processes opening one file migrate one after the other.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
    let has_table: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    let recorded: u32 = if has_table {
        tx.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_version", [], |r| r.get(0))
            .map_err(backend)?
    } else {
        0
    };
    // Databases of earlier builds carry their version in user_version only; later builds keep it
    // in step too, so that an earlier build still refuses a database it does not know.
    let legacy: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    let current = recorded.max(legacy);
    let steps = migrate::pending(current, MIGRATIONS)?;
    if has_table && steps.is_empty() && recorded == current {
        return Ok(());
    }
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at INTEGER NOT NULL DEFAULT (unixepoch())
        );",
    )
    .map_err(backend)?;
    // Steps an earlier build applied, recorded now.
    for m in MIGRATIONS.iter().take_while(|m| m.version <= current) {
        tx.execute(
            "INSERT OR IGNORE INTO schema_version (version, name) VALUES (?1, ?2)",
            params![m.version, m.name],
        )
        .map_err(backend)?;
    }
    for m in steps {
        tracing::info!(version = m.version, name = m.name, "applying a database schema migration");
        tx.execute_batch(m.sql).map_err(|e| {
            StoreError::Backend(format!("schema migration {} (`{}`) failed: {e}", m.version, m.name))
        })?;
        tx.execute("INSERT INTO schema_version (version, name) VALUES (?1, ?2)", params![m.version, m.name])
            .map_err(backend)?;
    }
    tx.pragma_update(None, "user_version", migrate::latest(MIGRATIONS)).map_err(backend)?;
    tx.commit().map_err(backend)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` with the default durability
    /// ([`SqliteSynchronous::Normal`]) and applies migrations. The file is made readable by its
    /// owner only.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteSynchronous::default())
    }

    /// Opens (creating if needed) the database at `path` with the given durability and applies
    /// migrations. The file is made readable by its owner only.
    pub fn open_with(path: &Path, synchronous: SqliteSynchronous) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        restrict_permissions(path)?;
        Self::init(conn, synchronous)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?, SqliteSynchronous::default())
    }

    fn init(mut conn: Connection, synchronous: SqliteSynchronous) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        // WAL lets readers proceed during writes. With synchronous=NORMAL a commit is durable
        // across a crash of the process but not of the machine (power loss can drop the last
        // transactions, never corrupt the file); FULL syncs every commit (see SqliteSynchronous).
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", synchronous.as_str()).map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
        // Deleted content is overwritten with zeros, so a destroyed secret version's sealed value
        // does not linger in free pages of the file.
        conn.pragma_update(None, "secure_delete", "ON").map_err(backend)?;
        migrate(&mut conn)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), damage: Arc::default(), writes: Arc::default() })
    }

    /// Applies an agent rule atomically: the record is read, decided on and written in one
    /// immediate transaction (SQLite's write lock is taken at `BEGIN`), so no other change to the
    /// agent can fall between the read and the write.
    async fn change_agent<F>(&self, id: &SpiffeId, rule: F) -> Result<AgentRecord, StoreError>
    where
        F: FnOnce(Option<AgentRecord>) -> agent_rules::Outcome + Send + 'static,
    {
        let id = id.to_string();
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let data: Option<String> = tx
                .query_row("SELECT data FROM agents WHERE spiffe_id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let stored = data.as_deref().map(decode_agent).transpose()?;
            let (write, answer) = rule(stored)?;
            if let Some(record) = write {
                let data = encode_agent(&record)?;
                tx.execute(
                    "INSERT INTO agents (spiffe_id, data) VALUES (?1, ?2)
                     ON CONFLICT (spiffe_id) DO UPDATE SET data = excluded.data",
                    params![id, data],
                )
                .map_err(backend)?;
                tx.commit().map_err(backend)?;
            }
            Ok(answer)
        })
        .await
    }

    /// The `PRAGMA synchronous` in effect (0 off, 1 normal, 2 full).
    pub async fn synchronous_level(&self) -> Result<u8, StoreError> {
        self.with(|conn| conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).map_err(backend)).await
    }

    /// [`SqliteStore::with`] for a write (counted: every write takes SQLite's write lock).
    async fn with_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.with(f).await
    }

    /// A point read on the hot path (a row or two by primary key or unique index, a few KiB at
    /// most): run on the calling thread when the connection is free, else on a blocking thread as
    /// [`SqliteStore::with`] does. Why: a trip to the blocking pool costs two thread switches,
    /// about 20-40 us on the 2-core VM of the benchmarks, several times the read itself (a secret
    /// read took three such trips, 8-9 switches per request). The calling thread never waits for
    /// the connection (`try_lock`), so a long write or scan holding it still runs off the async
    /// threads and stalls none of them; what a read here can block on is SQLite reading its own
    /// pages, in WAL mode never a writer's lock. Never for scans or writes.
    async fn read_point<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // The guard must not live across the await below (it is not Send): decide, then await.
        let f = match self.conn.try_lock() {
            Ok(mut guard) => return f(&mut guard),
            Err(std::sync::TryLockError::Poisoned(_)) => {
                return Err(StoreError::Backend("connection lock poisoned".into()))
            }
            Err(std::sync::TryLockError::WouldBlock) => f,
        };
        self.with(f).await
    }

    /// Runs `f` on the connection on a blocking thread, so SQLite never stalls the async runtime.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard =
                conn.lock().map_err(|_| StoreError::Backend("connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

#[cfg(unix)]
fn restrict_permissions(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| StoreError::Backend(format!("cannot restrict permissions of {}: {e}", path.display())))
}

#[cfg(not(unix))]
fn restrict_permissions(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_entries(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let rows: Vec<(String, String, String, u64, String, String)> = entries
            .iter()
            .map(|e| {
                Ok((
                    e.id.to_string(),
                    e.spiffe_id.to_string(),
                    e.parent_id.to_string(),
                    e.revision,
                    encode_entry(e)?,
                    e.namespace.to_string(),
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            for (id, spiffe_id, parent_id, revision, data, namespace) in &rows {
                let r = tx.execute(
                    "INSERT INTO entries (id, spiffe_id, parent_id, revision, data, namespace) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, spiffe_id, parent_id, revision, data, namespace],
                );
                match r {
                    Ok(_) => {}
                    Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                        return Err(StoreError::EntryExists(id.clone()));
                    }
                    Err(e) => return Err(backend(e)),
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn get_entry(&self, id: &EntryId) -> Result<Option<Entry>, StoreError> {
        let id = id.to_string();
        self.read_point(move |conn| {
            let data: Option<String> = conn
                .prepare_cached("SELECT data FROM entries WHERE id = ?1")
                .map_err(backend)?
                .query_row([&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            data.as_deref().map(|d| decode_entry(&id, d)).transpose()
        })
        .await
    }

    async fn scan_entries(&self, filter: &EntryFilter) -> Result<EntryListing, StoreError> {
        let filter = filter.clone();
        let damage = self.damage.clone();
        self.with(move |conn| {
            // The indexed columns narrow the scan; the filter itself decides.
            let spiffe = filter.spiffe_id.as_ref().map(SpiffeId::to_string);
            let parent = filter.parent_id.as_ref().map(SpiffeId::to_string);
            // One statement per combination of filters: SQLite plans a statement before its
            // parameters are bound, so `(?2 IS NULL OR parent_id = ?2)` could use no index and every
            // listing by parent (each agent's snapshot, each signing batch) read the whole table —
            // 87 ms per snapshot at 100,000 entries (bench/scale). A bare `?2 IS NULL` term leaves
            // the other term's index usable.
            let namespace = filter.namespace.as_ref().map(ToString::to_string);
            // The namespace narrows by its index only when no other column does (one namespace
            // may hold most entries; an ID or a parent holds few).
            let sql = match (spiffe.is_some(), parent.is_some(), namespace.is_some()) {
                (true, true, _) => {
                    "SELECT rowid, id, data FROM entries WHERE spiffe_id = ?1 AND parent_id = ?2 AND (?3 IS NULL OR namespace = ?3) ORDER BY id"
                }
                (true, false, _) => {
                    "SELECT rowid, id, data FROM entries WHERE spiffe_id = ?1 AND ?2 IS NULL AND (?3 IS NULL OR namespace = ?3) ORDER BY id"
                }
                (false, true, _) => {
                    "SELECT rowid, id, data FROM entries WHERE ?1 IS NULL AND parent_id = ?2 AND (?3 IS NULL OR namespace = ?3) ORDER BY id"
                }
                (false, false, true) => {
                    "SELECT rowid, id, data FROM entries WHERE ?1 IS NULL AND ?2 IS NULL AND namespace = ?3 ORDER BY id"
                }
                (false, false, false) => {
                    "SELECT rowid, id, data FROM entries WHERE ?1 IS NULL AND ?2 IS NULL AND ?3 IS NULL ORDER BY id"
                }
            };
            let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
            // Columns are read as raw values: a column of the wrong type is one damaged row, not
            // an error for the whole listing.
            let rows = stmt
                .query_map(params![spiffe, parent, namespace], |r| {
                    let id = match r.get_ref(1)?.as_str() {
                        Ok(id) => id.to_owned(),
                        Err(_) => format!("rowid {}", r.get::<_, i64>(0)?),
                    };
                    let data = r.get_ref(2)?.as_str().ok().map(str::to_owned);
                    Ok((id, data))
                })
                .map_err(backend)?;
            let mut decoded = Vec::new();
            for row in rows {
                let (id, data) = row.map_err(backend)?;
                decoded.push(match data {
                    Some(data) => decode_row(&id, &data),
                    None => Err(DamagedEntry { id, reason: "data is not text".into() }),
                });
            }
            Ok(sort_rows(decoded, |e| filter.accepts(e), &damage))
        })
        .await
    }

    fn write_transactions(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn damaged_rows_skipped(&self) -> u64 {
        self.damage.count()
    }

    async fn update_entry(&self, entry: &Entry) -> Result<(), StoreError> {
        let id = entry.id.to_string();
        let expected = prior_revision(entry)?;
        let row = (
            entry.spiffe_id.to_string(),
            entry.parent_id.to_string(),
            entry.revision,
            encode_entry(entry)?,
            entry.namespace.to_string(),
        );
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let current: Option<u64> = tx
                .query_row("SELECT revision FROM entries WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            match current {
                None => return Err(StoreError::EntryNotFound(id)),
                Some(rev) if rev != expected => return Err(StoreError::RevisionConflict { id, expected }),
                Some(_) => {}
            }
            tx.execute(
                "UPDATE entries SET spiffe_id = ?2, parent_id = ?3, revision = ?4, data = ?5, namespace = ?6 WHERE id = ?1",
                params![id, row.0, row.1, row.2, row.3, row.4],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await?;
        self.damage.forget(&entry.id.to_string());
        Ok(())
    }

    async fn delete_entry(&self, id: &EntryId) -> Result<Entry, StoreError> {
        let id = id.to_string();
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let data: Option<String> = tx
                .query_row("SELECT data FROM entries WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let Some(data) = data else { return Err(StoreError::EntryNotFound(id)) };
            // Decoded before deleting: a damaged row is refused here, as it is by every other
            // call that needs the entry, instead of vanishing with an error.
            let entry = decode_entry(&id, &data)?;
            tx.execute("DELETE FROM entries WHERE id = ?1", [&id]).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(entry)
        })
        .await
    }

    async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        let t = token.clone();
        let labels = encode_labels(&t.labels)?;
        self.with_write(move |conn| {
            let r = conn.execute(
                "INSERT INTO join_tokens (hash, created_at, expires_at, agent_id, used_at, labels) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![t.hash, t.created_at, t.expires_at, t.agent_id.as_ref().map(SpiffeId::to_string), t.used_at, labels],
            );
            match r {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Err(StoreError::TokenExists)
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn consume_join_token(&self, hash: &str, now: i64) -> Result<TokenUse, StoreError> {
        let hash = hash.to_owned();
        let writes = self.writes.clone();
        self.with(move |conn| {
            // Decided on a plain read first: an unknown, used or expired token (what a flood of
            // bogus attestations brings) is refused without SQLite's write lock, so it neither
            // waits for nor delays real writes. Only a token that looks usable is read again and
            // marked used inside a write transaction, which decides.
            if let Err(refused) = usable_token(read_token(conn, &hash)?, now) {
                return Ok(refused);
            }
            writes.fetch_add(1, Ordering::Relaxed);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let usable = match usable_token(read_token(&tx, &hash)?, now) {
                Ok(row) => row,
                Err(refused) => return Ok(refused),
            };
            tx.execute("UPDATE join_tokens SET used_at = ?2 WHERE hash = ?1", params![hash, now])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            consumed_token(hash, usable, now)
        })
        .await
    }

    async fn issue_challenge(
        &self,
        challenge: &ChallengeRecord,
        now: i64,
        limit: u32,
    ) -> Result<ChallengeIssue, StoreError> {
        let c = challenge.clone();
        self.with_write(move |conn| {
            // One immediate transaction: purge, count and insert under SQLite's write lock, so the
            // bound cannot be passed by two callers counting at once.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            tx.execute("DELETE FROM x509pop_challenges WHERE expires_at <= ?1", [now]).map_err(backend)?;
            // One certificate keeps at most MAX_CHALLENGES_PER_CERTIFICATE: the new one takes the
            // place of its oldest, so requests for one (public) certificate cannot fill the bound.
            tx.execute(
                "DELETE FROM x509pop_challenges WHERE fingerprint = ?1 AND nonce_hash NOT IN
                 (SELECT nonce_hash FROM x509pop_challenges WHERE fingerprint = ?1
                  ORDER BY expires_at DESC LIMIT ?2)",
                params![c.fingerprint, i64::from(crate::MAX_CHALLENGES_PER_CERTIFICATE) - 1],
            )
            .map_err(backend)?;
            let outstanding: i64 =
                tx.query_row("SELECT COUNT(*) FROM x509pop_challenges", [], |r| r.get(0)).map_err(backend)?;
            if outstanding >= i64::from(limit) {
                // The purge is kept: expired challenges are worthless whatever the answer.
                tx.commit().map_err(backend)?;
                return Ok(ChallengeIssue::Full { limit });
            }
            tx.execute(
                "INSERT INTO x509pop_challenges (nonce_hash, fingerprint, expires_at) VALUES (?1, ?2, ?3)",
                params![c.nonce_hash, c.fingerprint, c.expires_at],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(ChallengeIssue::Issued)
        })
        .await
    }

    async fn consume_challenge(&self, nonce_hash: &str, now: i64) -> Result<ChallengeUse, StoreError> {
        let hash = nonce_hash.to_owned();
        let writes = self.writes.clone();
        self.with(move |conn| {
            // A plain read first: an unknown nonce (a guess, a replay) is refused without SQLite's
            // write lock. The delete below decides.
            let known: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM x509pop_challenges WHERE nonce_hash = ?1)",
                    [&hash],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            if !known {
                return Ok(ChallengeUse::Unknown);
            }
            writes.fetch_add(1, Ordering::Relaxed);
            let taken: Option<(String, i64)> = conn
                .query_row(
                    "DELETE FROM x509pop_challenges WHERE nonce_hash = ?1 RETURNING fingerprint, expires_at",
                    [&hash],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(backend)?;
            Ok(used_challenge(taken, now))
        })
        .await
    }

    async fn record_exchanged_tokens(
        &self,
        tokens: &[(String, i64)],
        now: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let tokens = tokens.to_vec();
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            tx.execute("DELETE FROM exchanged_tokens WHERE expires_at <= ?1", [now]).map_err(backend)?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO exchanged_tokens (key, expires_at) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                )
                .map_err(backend)?;
            let fresh = tokens
                .iter()
                .map(|(key, expires_at)| insert.execute(params![key, expires_at]).map(|n| n == 1))
                .collect::<Result<Vec<_>, _>>()
                .map_err(backend)?;
            drop(insert);
            tx.commit().map_err(backend)?;
            Ok(fresh)
        })
        .await
    }

    async fn apply_agent_rule(&self, id: &SpiffeId, rule: AgentRule) -> Result<AgentRecord, StoreError> {
        self.change_agent(id, rule).await
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        let id = id.to_string();
        // On the path of every agent call (authentication) and of reads for workloads.
        self.read_point(move |conn| {
            let data: Option<String> = conn
                .prepare_cached("SELECT data FROM agents WHERE spiffe_id = ?1")
                .map_err(backend)?
                .query_row([&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            data.as_deref().map(decode_agent).transpose()
        })
        .await
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn.prepare("SELECT data FROM agents ORDER BY spiffe_id").map_err(backend)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(decode_agent(&row.map_err(backend)?)?);
            }
            Ok(out)
        })
        .await
    }

    async fn delete_agent(&self, id: &SpiffeId) -> Result<bool, StoreError> {
        let id = id.to_string();
        self.with_write(move |conn| {
            Ok(conn.execute("DELETE FROM agents WHERE spiffe_id = ?1", [&id]).map_err(backend)? > 0)
        })
        .await
    }

    async fn create_group(&self, group: &NodeGroup) -> Result<(), StoreError> {
        let (id, data) = (group.spiffe_id.to_string(), encode_group(group)?);
        self.with_write(move |conn| {
            let r =
                conn.execute("INSERT INTO node_groups (spiffe_id, data) VALUES (?1, ?2)", params![id, data]);
            match r {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::GroupExists(id))
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn get_group(&self, id: &SpiffeId) -> Result<Option<NodeGroup>, StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            let data: Option<String> = conn
                .query_row("SELECT data FROM node_groups WHERE spiffe_id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            data.map(|d| {
                decode_group(&id, &d)
                    .ok_or_else(|| StoreError::Corrupt(format!("node group `{id}` cannot be read")))
            })
            .transpose()
        })
        .await
    }

    async fn list_groups(&self) -> Result<Vec<NodeGroup>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT spiffe_id, data FROM node_groups ORDER BY spiffe_id")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((
                        r.get_ref(0)?.as_str().ok().map(str::to_owned),
                        r.get_ref(1)?.as_str().ok().map(str::to_owned),
                    ))
                })
                .map_err(backend)?;
            let mut out = Vec::new();
            for row in rows {
                if let (Some(id), Some(data)) = row.map_err(backend)? {
                    out.extend(decode_group(&id, &data));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete_group(&self, id: &SpiffeId) -> Result<NodeGroup, StoreError> {
        let id = id.to_string();
        self.with_write(move |conn| {
            // Immediate: no entry can be created under the group between the count and the delete.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let data: Option<String> = tx
                .query_row("SELECT data FROM node_groups WHERE spiffe_id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            let Some(data) = data else { return Err(StoreError::GroupNotFound(id)) };
            let entries: u64 = tx
                .query_row("SELECT COUNT(*) FROM entries WHERE parent_id = ?1", [&id], |r| r.get(0))
                .map_err(backend)?;
            if entries > 0 {
                return Err(StoreError::GroupInUse { id, entries });
            }
            let group = decode_group(&id, &data)
                .ok_or_else(|| StoreError::Corrupt(format!("node group `{id}` cannot be read")))?;
            tx.execute("DELETE FROM node_groups WHERE spiffe_id = ?1", [&id]).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(group)
        })
        .await
    }

    async fn create_federation(&self, row: &FederationRow) -> Result<(), StoreError> {
        let row = row.clone();
        self.with_write(move |conn| {
            let td = row.trust_domain.to_string();
            let r = conn.execute(
                "INSERT INTO federation (trust_domain, relationship, state, revision) VALUES (?1, ?2, ?3, 1)",
                params![td, row.relationship, row.state],
            );
            match r {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    Err(StoreError::FederationExists(td))
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn get_federation(&self, trust_domain: &TrustDomain) -> Result<Option<FederationRow>, StoreError> {
        let td = trust_domain.to_string();
        self.with(move |conn| {
            conn.query_row(FEDERATION_BY_TD, [&td], federation_row).optional().map_err(backend)?.transpose()
        })
        .await
    }

    async fn list_federations(&self) -> Result<Vec<FederationRow>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT trust_domain, relationship, state, revision FROM federation ORDER BY trust_domain")
                .map_err(backend)?;
            let rows = stmt.query_map([], federation_row).map_err(backend)?;
            rows.map(|r| r.map_err(backend).and_then(|r| r)).collect()
        })
        .await
    }

    async fn update_federation(&self, row: &FederationRow) -> Result<u64, StoreError> {
        let row = row.clone();
        self.with_write(move |conn| {
            let td = row.trust_domain.to_string();
            let expected = i64::try_from(row.revision).unwrap_or(i64::MAX);
            let n = conn
                .execute(
                    "UPDATE federation SET relationship = ?2, state = ?3, revision = revision + 1 WHERE trust_domain = ?1 AND revision = ?4",
                    params![td, row.relationship, row.state, expected],
                )
                .map_err(backend)?;
            if n == 1 {
                return Ok(row.revision + 1);
            }
            let exists: Option<i64> = conn
                .query_row("SELECT revision FROM federation WHERE trust_domain = ?1", [&td], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            Err(if exists.is_some() { StoreError::FederationConflict(td) } else { StoreError::FederationNotFound(td) })
        })
        .await
    }

    async fn save_federation_state(
        &self,
        trust_domain: &TrustDomain,
        revision: u64,
        state: &str,
    ) -> Result<bool, StoreError> {
        let (td, state) = (trust_domain.to_string(), state.to_owned());
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        self.with_write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE federation SET state = ?2 WHERE trust_domain = ?1 AND revision = ?3",
                    params![td, state, revision],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn delete_federation(&self, trust_domain: &TrustDomain) -> Result<FederationRow, StoreError> {
        let td = trust_domain.to_string();
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let row = tx
                .query_row(FEDERATION_BY_TD, [&td], federation_row)
                .optional()
                .map_err(backend)?
                .transpose()?;
            let Some(row) = row else { return Err(StoreError::FederationNotFound(td)) };
            tx.execute("DELETE FROM federation WHERE trust_domain = ?1", [&td]).map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(row)
        })
        .await
    }

    async fn put_secret_version(&self, new: &NewSecretVersion) -> Result<(), StoreError> {
        let new = new.clone();
        self.with_write(move |conn| {
            let s = &new.secret;
            let path = s.path.to_string();
            let version = crate::codec::version_i64(s.current_version)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let current: Option<i64> = tx
                .query_row("SELECT current_version FROM secrets WHERE path = ?1", [&path], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if current.unwrap_or(0) + 1 != version {
                return Err(StoreError::SecretConflict(path));
            }
            tx.execute(
                "INSERT INTO secrets (path, owner, purpose, rotation_due, created_at, updated_at, current_version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (path) DO UPDATE SET owner = excluded.owner, purpose = excluded.purpose,
                 rotation_due = excluded.rotation_due, updated_at = excluded.updated_at,
                 current_version = excluded.current_version",
                params![path, s.owner, s.purpose, s.rotation_due, s.created_at, s.updated_at, version],
            )
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO secret_versions (path, version, created_at, sealed_key, ciphertext)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![path, version, s.updated_at, new.sealed_key, new.ciphertext],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn get_secret(&self, path: &SecretPath) -> Result<Option<SecretRecord>, StoreError> {
        let path = path.to_string();
        self.with(move |conn| {
            conn.query_row(&format!("SELECT {SECRET_COLUMNS} WHERE path = ?1"), [&path], secret_row)
                .optional()
                .map_err(backend)?
                .transpose()
        })
        .await
    }

    async fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        self.with(|conn| {
            let mut stmt =
                conn.prepare(&format!("SELECT {SECRET_COLUMNS} ORDER BY path")).map_err(backend)?;
            let rows = stmt.query_map([], secret_row).map_err(backend)?;
            rows.map(|r| r.map_err(backend)?).collect()
        })
        .await
    }

    async fn list_secret_versions(&self, path: &SecretPath) -> Result<Vec<SecretVersionRecord>, StoreError> {
        let path = path.to_string();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT version, created_at, deleted_at, destroyed_at FROM secret_versions
                     WHERE path = ?1 ORDER BY version",
                )
                .map_err(backend)?;
            let rows = stmt.query_map([&path], version_row).map_err(backend)?;
            rows.map(|r| r.map_err(backend)?).collect()
        })
        .await
    }

    async fn get_secret_version(
        &self,
        path: &SecretPath,
        version: u64,
    ) -> Result<Option<SealedSecretVersion>, StoreError> {
        let path = path.to_string();
        let version = crate::codec::version_i64(version)?;
        self.with(move |conn| {
            conn.query_row(
                "SELECT version, created_at, deleted_at, destroyed_at, sealed_key, ciphertext
                 FROM secret_versions WHERE path = ?1 AND version = ?2",
                params![path, version],
                |r| {
                    let record = version_row(r)?;
                    let (key, ct): (Option<Vec<u8>>, Option<Vec<u8>>) = (r.get(4)?, r.get(5)?);
                    Ok(record.map(|record| SealedSecretVersion { record, sealed_key: key, ciphertext: ct }))
                },
            )
            .optional()
            .map_err(backend)?
            .transpose()
        })
        .await
    }

    /// One read transaction (a snapshot in WAL mode) with cached statements, a point read
    /// ([`SqliteStore::read_point`]): the three calls of the default took three trips to the
    /// blocking pool, six thread switches.
    async fn read_secret(
        &self,
        path: &SecretPath,
        version: Option<u64>,
    ) -> Result<Option<SecretRead>, StoreError> {
        let path = path.to_string();
        let version = version.map(crate::codec::version_i64).transpose()?;
        self.read_point(move |conn| {
            let tx = conn.transaction().map_err(backend)?;
            let secret = {
                let mut stmt =
                    tx.prepare_cached(&format!("SELECT {SECRET_COLUMNS} WHERE path = ?1")).map_err(backend)?;
                stmt.query_row([&path], secret_row).optional().map_err(backend)?.transpose()?
            };
            let Some(secret) = secret else { return Ok(None) };
            const COLUMNS: &str = "SELECT version, created_at, deleted_at, destroyed_at, sealed_key, ciphertext
                 FROM secret_versions WHERE path = ?1";
            let sealed = |r: &rusqlite::Row<'_>| {
                let record = version_row(r)?;
                let (key, ct): (Option<Vec<u8>>, Option<Vec<u8>>) = (r.get(4)?, r.get(5)?);
                Ok(record.map(|record| SealedSecretVersion { record, sealed_key: key, ciphertext: ct }))
            };
            let found = match version {
                Some(v) => tx
                    .prepare_cached(&format!("{COLUMNS} AND version = ?2"))
                    .map_err(backend)?
                    .query_row(params![path, v], sealed),
                None => tx
                    .prepare_cached(&format!(
                        "{COLUMNS} AND deleted_at IS NULL AND destroyed_at IS NULL ORDER BY version DESC LIMIT 1"
                    ))
                    .map_err(backend)?
                    .query_row([&path], sealed),
            };
            let version = found.optional().map_err(backend)?.transpose()?;
            Ok(Some(SecretRead { secret, version }))
        })
        .await
    }

    async fn change_secret_versions(
        &self,
        path: &SecretPath,
        versions: &[u64],
        change: VersionChange,
    ) -> Result<Vec<u64>, StoreError> {
        let path = path.to_string();
        let versions = versions.to_vec();
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let exists: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM secrets WHERE path = ?1)", [&path], |r| r.get(0))
                .map_err(backend)?;
            if !exists {
                return Err(StoreError::SecretNotFound(path));
            }
            let mut changed = Vec::new();
            for &v in &versions {
                let version = crate::codec::version_i64(v)?;
                let n = match change {
                    VersionChange::Delete(at) => tx.execute(
                        "UPDATE secret_versions SET deleted_at = ?3 WHERE path = ?1 AND version = ?2
                         AND deleted_at IS NULL AND destroyed_at IS NULL",
                        params![path, version, at],
                    ),
                    VersionChange::Undelete => tx.execute(
                        "UPDATE secret_versions SET deleted_at = NULL WHERE path = ?1 AND version = ?2
                         AND deleted_at IS NOT NULL AND destroyed_at IS NULL",
                        params![path, version],
                    ),
                    VersionChange::Destroy(at) => tx.execute(
                        "UPDATE secret_versions SET destroyed_at = ?3, sealed_key = NULL, ciphertext = NULL
                         WHERE path = ?1 AND version = ?2 AND destroyed_at IS NULL",
                        params![path, version, at],
                    ),
                }
                .map_err(backend)?;
                if n == 0 {
                    let known: bool = tx
                        .query_row(
                            "SELECT EXISTS (SELECT 1 FROM secret_versions WHERE path = ?1 AND version = ?2)",
                            params![path, version],
                            |r| r.get(0),
                        )
                        .map_err(backend)?;
                    if !known {
                        return Err(StoreError::SecretVersionNotFound { path, version: v });
                    }
                } else if !changed.contains(&v) {
                    changed.push(v);
                }
            }
            tx.commit().map_err(backend)?;
            Ok(changed)
        })
        .await
    }

    async fn put_policy(
        &self,
        id: &str,
        namespace: &Namespace,
        text: &str,
        author: &str,
        now: i64,
    ) -> Result<PolicyVersion, StoreError> {
        let (id, text, author, namespace) =
            (id.to_owned(), text.to_owned(), author.to_owned(), namespace.clone());
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let written = insert_policy_version(&tx, &id, Some(&namespace), Some(&text), &author, now)?;
            tx.commit().map_err(backend)?;
            Ok(written)
        })
        .await
    }

    async fn delete_policy(&self, id: &str, author: &str, now: i64) -> Result<PolicyVersion, StoreError> {
        let (id, author) = (id.to_owned(), author.to_owned());
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let live: Option<Option<String>> = tx
                .query_row(
                    "SELECT text FROM policies WHERE id = ?1 ORDER BY version DESC LIMIT 1",
                    [&id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            if !matches!(live, Some(Some(_))) {
                return Err(StoreError::PolicyNotFound(id));
            }
            let written = insert_policy_version(&tx, &id, None, None, &author, now)?;
            tx.commit().map_err(backend)?;
            Ok(written)
        })
        .await
    }

    async fn list_policies(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {POLICY_COLUMNS} FROM policies p WHERE version = \
                     (SELECT MAX(version) FROM policies q WHERE q.id = p.id) AND text IS NOT NULL ORDER BY id"
                ))
                .map_err(backend)?;
            let rows = stmt.query_map([], policy_row).map_err(backend)?;
            rows.map(|r| r.map_err(backend)).collect()
        })
        .await
    }

    async fn policy_history(&self, id: &str) -> Result<Vec<PolicyVersion>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {POLICY_COLUMNS} FROM policies WHERE id = ?1 ORDER BY version"))
                .map_err(backend)?;
            let rows = stmt.query_map([&id], policy_row).map_err(backend)?;
            rows.map(|r| r.map_err(backend)).collect()
        })
        .await
    }

    async fn policies_revision(&self) -> Result<u64, StoreError> {
        self.with(|conn| {
            let seq: i64 = conn
                .query_row("SELECT COALESCE(MAX(seq), 0) FROM policies", [], |r| r.get(0))
                .map_err(backend)?;
            Ok(u64::try_from(seq).unwrap_or(0))
        })
        .await
    }

    async fn create_db_lease(&self, lease: &DbLease) -> Result<(), StoreError> {
        let l = lease.clone();
        self.with_write(move |conn| {
            conn.execute(
                &format!(
                    "INSERT INTO db_leases ({LEASE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    l.id,
                    l.role,
                    l.connection,
                    l.template,
                    l.identity,
                    l.state.as_str(),
                    l.created_at,
                    l.expires_at,
                    l.max_expires_at
                ],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn activate_db_lease(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with_write(move |conn| {
            let n = conn
                .execute("UPDATE db_leases SET state = 'active' WHERE id = ?1 AND state = 'creating'", [&id])
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn renew_db_lease(&self, id: &str, expires_at: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with_write(move |conn| {
            let n = conn
                .execute(
                    "UPDATE db_leases SET expires_at = ?2 WHERE id = ?1 AND state = 'active'",
                    params![id, expires_at],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn get_db_lease(&self, id: &str) -> Result<Option<DbLease>, StoreError> {
        let id = id.to_owned();
        self.with(move |conn| {
            conn.query_row(&format!("SELECT {LEASE_COLUMNS} FROM db_leases WHERE id = ?1"), [&id], lease_row)
                .optional()
                .map_err(backend)?
                .map(lease_of)
                .transpose()
        })
        .await
    }

    async fn list_db_leases(&self) -> Result<Vec<DbLease>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {LEASE_COLUMNS} FROM db_leases ORDER BY id"))
                .map_err(backend)?;
            let rows = stmt.query_map([], lease_row).map_err(backend)?;
            rows.map(|r| r.map_err(backend).and_then(lease_of)).collect()
        })
        .await
    }

    async fn delete_db_lease(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with_write(move |conn| {
            let n = conn.execute("DELETE FROM db_leases WHERE id = ?1", [&id]).map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn load_authority_versioned(&self) -> Result<Option<StoredAuthority>, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT version, state FROM authority WHERE singleton = 1", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })
            .optional()
            .map_err(backend)?
            .map(|(version, state)| Ok(StoredAuthority { version: authority_version(version)?, state }))
            .transpose()
        })
        .await
    }

    async fn authority_version(&self) -> Result<Option<u64>, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT version FROM authority WHERE singleton = 1", [], |r| r.get::<_, i64>(0))
                .optional()
                .map_err(backend)?
                .map(authority_version)
                .transpose()
        })
        .await
    }

    async fn write_authority(
        &self,
        expected: Option<u64>,
        state: &str,
    ) -> Result<AuthorityWrite, StoreError> {
        let state = state.to_owned();
        let expected = expected.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let written: Option<i64> = match expected {
                None => tx
                    .query_row(
                        "INSERT INTO authority (singleton, state, version) VALUES (1, ?1, 1)
                         ON CONFLICT (singleton) DO NOTHING RETURNING version",
                        [&state],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?,
                Some(v) => tx
                    .query_row(
                        "UPDATE authority SET state = ?1, version = version + 1
                         WHERE singleton = 1 AND version = ?2 RETURNING version",
                        params![state, v],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(backend)?,
            };
            let answer = match written {
                Some(v) => AuthorityWrite::Written(authority_version(v)?),
                None => {
                    let stored = tx
                        .query_row("SELECT version, state FROM authority WHERE singleton = 1", [], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
                        })
                        .optional()
                        .map_err(backend)?;
                    AuthorityWrite::Conflict(
                        stored
                            .map(|(v, state)| {
                                Ok::<_, StoreError>(StoredAuthority { version: authority_version(v)?, state })
                            })
                            .transpose()?,
                    )
                }
            };
            tx.commit().map_err(backend)?;
            Ok(answer)
        })
        .await
    }

    async fn append_audit(&self, seal: AuditSeal) -> Result<AuditHead, StoreError> {
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            let head = read_audit_head(&tx)?;
            let records = seal(&head);
            let next = crate::codec::audit_numbering(&head, &records)?;
            if records.is_empty() {
                return Ok(head);
            }
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT INTO audit_log (seq, time_ms, event, spiffe_id, node, fields, hash)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(backend)?;
                for r in &records {
                    let fields = crate::codec::encode_audit_fields(&r.fields)?;
                    stmt.execute(params![
                        i64::try_from(r.seq)
                            .map_err(|_| StoreError::Corrupt("audit sequence overflow".into()))?,
                        r.time_ms,
                        r.event,
                        r.spiffe_id(),
                        r.node(),
                        fields,
                        r.hash
                    ])
                    .map_err(backend)?;
                }
            }
            tx.execute(
                "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1",
                params![i64::try_from(next.seq).unwrap_or(i64::MAX), next.hash],
            )
            .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(next)
        })
        .await
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        self.with(|conn| read_audit_head(conn)).await
    }

    async fn audit_records(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let q = query.clone();
        self.with(move |conn| {
            let (event, prefix) = match q.event_match() {
                Some((e, true)) => (Some(crate::codec::like_prefix(e)), true),
                Some((e, false)) => (Some(e.to_owned()), false),
                None => (None, false),
            };
            let event_cond = if prefix { "event LIKE ?4 ESCAPE '\\'" } else { "event = ?4" };
            let sql = format!(
                "SELECT seq, time_ms, event, fields, hash FROM audit_log
                 WHERE seq > ?1 AND (?2 IS NULL OR spiffe_id = ?2) AND (?3 IS NULL OR node = ?3)
                 AND (?4 IS NULL OR {event_cond}) AND (?5 IS NULL OR time_ms >= ?5)
                 AND (?6 IS NULL OR time_ms < ?6)
                 ORDER BY seq LIMIT ?7"
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
            let rows = stmt
                .query_map(
                    params![
                        i64::try_from(q.after_seq).unwrap_or(i64::MAX),
                        q.spiffe_id,
                        q.node,
                        event,
                        q.since_ms,
                        q.until_ms,
                        i64::from(q.limit)
                    ],
                    |r| {
                        Ok(AuditRecord {
                            seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                            time_ms: lenient_int(r, 1)?,
                            event: lenient_text(r, 2)?,
                            fields: crate::codec::decode_audit_fields(lenient_text(r, 3)?),
                            hash: lenient_text(r, 4)?,
                        })
                    },
                )
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn add_audit_checkpoint(&self, cp: &AuditCheckpoint) -> Result<bool, StoreError> {
        let cp = cp.clone();
        self.with_write(move |conn| {
            let n = conn
                .execute(
                    "INSERT OR IGNORE INTO audit_checkpoints (seq, hash, time_ms, key_id, signature)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        i64::try_from(cp.seq).unwrap_or(i64::MAX),
                        cp.hash,
                        cp.time_ms,
                        cp.key_id,
                        cp.signature
                    ],
                )
                .map_err(backend)?;
            Ok(n == 1)
        })
        .await
    }

    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError> {
        self.with(|conn| {
            let mut stmt = conn
                .prepare("SELECT seq, hash, time_ms, key_id, signature FROM audit_checkpoints ORDER BY seq")
                .map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(AuditCheckpoint {
                        seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                        hash: lenient_text(r, 1)?,
                        time_ms: lenient_int(r, 2)?,
                        key_id: lenient_text(r, 3)?,
                        signature: lenient_text(r, 4)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn audit_keys(&self, candidate: &AuditKeyRecord) -> Result<Vec<AuditKeyRecord>, StoreError> {
        let k = candidate.clone();
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            tx.execute(
                "INSERT INTO audit_keys (id, algorithm, public_key, sealed_key, created_at)
                 SELECT ?1, ?2, ?3, ?4, ?5 WHERE NOT EXISTS (SELECT 1 FROM audit_keys)",
                params![k.id, k.algorithm, k.public_key, k.sealed_key, k.created_at],
            )
            .map_err(backend)?;
            let keys = {
                let mut stmt = tx
                    .prepare("SELECT id, algorithm, public_key, sealed_key, created_at FROM audit_keys ORDER BY created_at, id")
                    .map_err(backend)?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok(AuditKeyRecord {
                            id: r.get(0)?,
                            algorithm: r.get(1)?,
                            public_key: r.get(2)?,
                            sealed_key: r.get(3)?,
                            created_at: r.get(4)?,
                        })
                    })
                    .map_err(backend)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(backend)?
            };
            tx.commit().map_err(backend)?;
            Ok(keys)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend)).await
    }
}
