//! The embedded SQLite store: one file in the data directory, WAL journal, schema migrations by
//! `PRAGMA user_version`.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use vouch_core::{Entry, EntryId, SpiffeId};

use crate::{
    agent_rules, AgentRecord, AgentRenewal, DamagedEntry, EntryFilter, EntryListing, JoinTokenRecord, Store,
    StoreError, TokenUse,
};

/// Schema migrations, applied in order; `user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: entries, join tokens, authority state.
    "CREATE TABLE entries (
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
    // 2: node agents.
    "CREATE TABLE agents (
        spiffe_id TEXT PRIMARY KEY,
        data TEXT NOT NULL
    );",
];

/// SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    damage: Arc<DamageLog>,
    /// Writes started (each takes SQLite's write lock), for [`Store::write_transactions`].
    writes: Arc<AtomicU64>,
}

/// Damaged rows met by listings: a counter, and the ids already logged, so a row that every sync
/// and admin check meets is logged once, not once per listing (log lines are a bounded cost).
#[derive(Default)]
struct DamageLog {
    skipped: AtomicU64,
    logged: Mutex<HashSet<String>>,
}

impl DamageLog {
    fn skipped(&self, row: &DamagedEntry) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        if logged.insert(row.id.clone()) {
            tracing::warn!(entry_id = %row.id, reason = %row.reason, "skipping a damaged entry row: it is not served or listed until the database is restored or the row is removed");
        }
    }

    /// A deleted or rewritten row may be damaged again later and should be logged again then.
    fn forget(&self, id: &str) {
        self.logged.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// A join token's row: created, expires, chosen agent id, used at.
type TokenRow = (i64, i64, Option<String>, Option<i64>);

fn read_token(conn: &Connection, hash: &str) -> Result<Option<TokenRow>, StoreError> {
    conn.query_row(
        "SELECT created_at, expires_at, agent_id, used_at FROM join_tokens WHERE hash = ?1",
        [hash],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .optional()
    .map_err(backend)
}

/// A token that may be used at `now` (created, expires, chosen agent id), or why not.
fn usable_token(row: Option<TokenRow>, now: i64) -> Result<(i64, i64, Option<String>), TokenUse> {
    match row {
        None => Err(TokenUse::Unknown),
        Some((_, _, _, Some(_))) => Err(TokenUse::AlreadyUsed),
        Some((_, expires_at, _, None)) if expires_at <= now => Err(TokenUse::Expired),
        Some((created_at, expires_at, agent_id, None)) => Ok((created_at, expires_at, agent_id)),
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Why an entry's stored JSON does not decode, by category and position only: serde's own message
/// can quote the stored value.
fn damage_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax | Category::Eof => "data is not valid JSON",
        Category::Data => "data is not a valid entry",
        Category::Io => "data cannot be read",
    };
    format!("{what} (line {}, column {})", e.line(), e.column())
}

/// Decodes one entry row; the id column must agree with the data (sync and updates go by it).
fn decode_row(id: &str, data: &str) -> Result<Entry, DamagedEntry> {
    let damaged = |reason: String| DamagedEntry { id: id.to_owned(), reason };
    let entry: Entry = serde_json::from_str(data).map_err(|e| damaged(damage_reason(&e)))?;
    if entry.id.as_str() != id {
        return Err(damaged("the data's id differs from the row's id".into()));
    }
    Ok(entry)
}

fn decode_entry(id: &str, data: &str) -> Result<Entry, StoreError> {
    decode_row(id, data).map_err(|d| StoreError::DamagedEntry { id: d.id, reason: d.reason })
}

fn decode_agent(data: &str) -> Result<AgentRecord, StoreError> {
    serde_json::from_str(data).map_err(|e| StoreError::Corrupt(format!("agent: {e}")))
}

fn encode_entry(entry: &Entry) -> Result<String, StoreError> {
    serde_json::to_string(entry).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies migrations. The file is made
    /// readable by its owner only.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        restrict_permissions(path)?;
        Self::init(conn)
    }

    /// An in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        // WAL lets readers proceed during writes; NORMAL sync is durable across application crashes
        // and loses at most the last transactions on power loss, the usual WAL trade-off.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(backend)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(backend)?;
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Corrupt(format!(
                "database schema version {version} is newer than this vouch ({}); upgrade vouch",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(backend)?;
            tx.execute_batch(sql).map_err(backend)?;
            tx.pragma_update(None, "user_version", i + 1).map_err(backend)?;
            tx.commit().map_err(backend)?;
        }
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
                let data = serde_json::to_string(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?;
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

    /// [`SqliteStore::with`] for a write (counted: every write takes SQLite's write lock).
    async fn with_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.writes.fetch_add(1, Ordering::Relaxed);
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
        let rows: Vec<(String, String, String, u64, String)> = entries
            .iter()
            .map(|e| {
                Ok((
                    e.id.to_string(),
                    e.spiffe_id.to_string(),
                    e.parent_id.to_string(),
                    e.revision,
                    encode_entry(e)?,
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        self.with_write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
            for (id, spiffe_id, parent_id, revision, data) in &rows {
                let r = tx.execute(
                    "INSERT INTO entries (id, spiffe_id, parent_id, revision, data) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![id, spiffe_id, parent_id, revision, data],
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
        self.with(move |conn| {
            let data: Option<String> = conn
                .query_row("SELECT data FROM entries WHERE id = ?1", [&id], |r| r.get(0))
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
            let mut stmt = conn
                .prepare(
                    "SELECT rowid, id, data FROM entries
                     WHERE (?1 IS NULL OR spiffe_id = ?1) AND (?2 IS NULL OR parent_id = ?2)
                     ORDER BY id",
                )
                .map_err(backend)?;
            // Columns are read as raw values: a column of the wrong type is one damaged row, not
            // an error for the whole listing.
            let rows = stmt
                .query_map(params![spiffe, parent], |r| {
                    let id = match r.get_ref(1)?.as_str() {
                        Ok(id) => id.to_owned(),
                        Err(_) => format!("rowid {}", r.get::<_, i64>(0)?),
                    };
                    let data = r.get_ref(2)?.as_str().ok().map(str::to_owned);
                    Ok((id, data))
                })
                .map_err(backend)?;
            let mut listing = EntryListing::default();
            for row in rows {
                let (id, data) = row.map_err(backend)?;
                let decoded = match data {
                    Some(data) => decode_row(&id, &data),
                    None => Err(DamagedEntry { id, reason: "data is not text".into() }),
                };
                match decoded {
                    Ok(entry) if filter.accepts(&entry) => listing.entries.push(entry),
                    Ok(_) => {}
                    Err(damaged) => {
                        damage.skipped(&damaged);
                        listing.damaged.push(damaged);
                    }
                }
            }
            Ok(listing)
        })
        .await
    }

    fn write_transactions(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn damaged_rows_skipped(&self) -> u64 {
        self.damage.skipped.load(Ordering::Relaxed)
    }

    async fn update_entry(&self, entry: &Entry) -> Result<(), StoreError> {
        let id = entry.id.to_string();
        let expected = entry
            .revision
            .checked_sub(1)
            .ok_or_else(|| StoreError::RevisionConflict { id: id.clone(), expected: 0 })?;
        let row =
            (entry.spiffe_id.to_string(), entry.parent_id.to_string(), entry.revision, encode_entry(entry)?);
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
                "UPDATE entries SET spiffe_id = ?2, parent_id = ?3, revision = ?4, data = ?5 WHERE id = ?1",
                params![id, row.0, row.1, row.2, row.3],
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
        self.with_write(move |conn| {
            let r = conn.execute(
                "INSERT INTO join_tokens (hash, created_at, expires_at, agent_id, used_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.hash, t.created_at, t.expires_at, t.agent_id.as_ref().map(SpiffeId::to_string), t.used_at],
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
            let (created_at, expires_at, agent_id) = match usable_token(read_token(&tx, &hash)?, now) {
                Ok(row) => row,
                Err(refused) => return Ok(refused),
            };
            tx.execute("UPDATE join_tokens SET used_at = ?2 WHERE hash = ?1", params![hash, now])
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            let agent_id = agent_id
                .map(|s| {
                    SpiffeId::parse(&s).map_err(|e| StoreError::Corrupt(format!("join token agent id: {e}")))
                })
                .transpose()?;
            Ok(TokenUse::Consumed(JoinTokenRecord {
                hash,
                created_at,
                expires_at,
                agent_id,
                used_at: Some(now),
            }))
        })
        .await
    }

    async fn attest_agent(&self, agent: &AgentRecord) -> Result<AgentRecord, StoreError> {
        let agent = agent.clone();
        self.change_agent(&agent.spiffe_id.clone(), move |stored| agent_rules::attest(stored, &agent)).await
    }

    async fn renew_agent(&self, renewal: &AgentRenewal) -> Result<AgentRecord, StoreError> {
        let renewal = renewal.clone();
        self.change_agent(&renewal.spiffe_id.clone(), move |stored| agent_rules::renew(stored, &renewal))
            .await
    }

    async fn authenticate_agent(&self, id: &SpiffeId, serial: &str) -> Result<AgentRecord, StoreError> {
        // Every agent call lands here: decide on a plain read, which takes no write lock, and only
        // when the rule changes the record (the first use of a renewed SVID) decide again inside a
        // write transaction.
        let (write, seen) = agent_rules::authenticate(self.get_agent(id).await?, id, serial)?;
        if write.is_none() {
            return Ok(seen);
        }
        let (who, serial) = (id.clone(), serial.to_owned());
        self.change_agent(id, move |stored| agent_rules::authenticate(stored, &who, &serial)).await
    }

    async fn ban_agent(&self, id: &SpiffeId, now: i64) -> Result<AgentRecord, StoreError> {
        let who = id.clone();
        self.change_agent(id, move |stored| agent_rules::ban(stored, &who, now)).await
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        let id = id.to_string();
        self.with(move |conn| {
            let data: Option<String> = conn
                .query_row("SELECT data FROM agents WHERE spiffe_id = ?1", [&id], |r| r.get(0))
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

    async fn load_authority(&self) -> Result<Option<String>, StoreError> {
        self.with(|conn| {
            conn.query_row("SELECT state FROM authority WHERE singleton = 1", [], |r| r.get(0))
                .optional()
                .map_err(backend)
        })
        .await
    }

    async fn save_authority(&self, state: &str) -> Result<(), StoreError> {
        let state = state.to_owned();
        self.with_write(move |conn| {
            conn.execute(
                "INSERT INTO authority (singleton, state) VALUES (1, ?1)
                 ON CONFLICT (singleton) DO UPDATE SET state = excluded.state",
                [&state],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|conn| conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend)).await
    }
}
