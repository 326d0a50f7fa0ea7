//! The PostgreSQL store, for several server replicas sharing one database: the same tables as
//! SQLite (entries and agents as JSON text beside their indexed columns), versioned migrations
//! (see [`crate::migrate`]) taken under an advisory lock, and a small pool of connections.
//!
//! Connections are plain TCP or a Unix socket, without TLS for now: run PostgreSQL on the same
//! host or a private network, or behind a TLS tunnel. The password in the URL never appears in a
//! log line or an error ([`PgUrl`] shows it as `***`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, NoTls, Row};
use vouch_core::{Entry, EntryId, NodeGroup, SpiffeId};

use crate::codec::{
    consumed_token, decode_agent, decode_entry, decode_group, decode_row, encode_agent, encode_entry,
    encode_group, encode_labels, prior_revision, sort_rows, usable_token, DamageLog,
};
use crate::migrate::{self, Migration};
use crate::{
    agent_rules, AgentRecord, AgentRule, EntryFilter, EntryListing, JoinTokenRecord, Store, StoreError,
    TokenUse,
};

/// The schema, step by step, numbered as SQLite's (see [`crate::migrate`]). Text keys compare
/// bytewise (`COLLATE "C"`), so listings are ordered as in SQLite whatever the database's locale.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "entries, join tokens, authority",
        sql: r#"CREATE TABLE entries (
            id TEXT COLLATE "C" PRIMARY KEY,
            spiffe_id TEXT COLLATE "C" NOT NULL,
            parent_id TEXT COLLATE "C" NOT NULL,
            revision BIGINT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX entries_spiffe_id ON entries (spiffe_id);
        CREATE INDEX entries_parent_id ON entries (parent_id);
        CREATE TABLE join_tokens (
            hash TEXT PRIMARY KEY,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            agent_id TEXT,
            used_at BIGINT
        );
        CREATE TABLE authority (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            state TEXT NOT NULL
        );"#,
    },
    Migration {
        version: 2,
        name: "agents",
        sql: r#"CREATE TABLE agents (
            spiffe_id TEXT COLLATE "C" PRIMARY KEY,
            data TEXT NOT NULL
        );"#,
    },
    Migration {
        version: 3,
        name: "node groups, join token labels",
        sql: r#"CREATE TABLE node_groups (
            spiffe_id TEXT COLLATE "C" PRIMARY KEY,
            data TEXT NOT NULL
        );
        ALTER TABLE join_tokens ADD COLUMN labels TEXT;"#,
    },
];

/// The advisory lock key under which replicas migrate one at a time (`vouch` in ASCII).
const MIGRATION_LOCK: i64 = 0x76_6f_75_63_68;

/// Connections kept per server: enough for concurrent requests, few enough that many replicas fit
/// PostgreSQL's default `max_connections` (100).
const POOL_SIZE: usize = 4;
/// How long a connection attempt may take, unless the URL sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for a free connection before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a store URL was refused. It never holds the password.
#[derive(Debug, thiserror::Error)]
#[error("store URL: {0}")]
pub struct PgUrlError(String);

/// A PostgreSQL connection URL, `postgres://user:password@host:port/database?param=value` (or
/// `postgresql://`; a Unix socket directory as host is written percent-encoded, `%2Frun%2Fpostgresql`,
/// or as `?host=/run/postgresql`). Its password stays inside: [`Display`](std::fmt::Display) and
/// [`Debug`] show user, hosts, ports and database with the password as `***`.
#[derive(Clone)]
pub struct PgUrl {
    config: Arc<tokio_postgres::Config>,
    shown: String,
}

impl PgUrl {
    /// Parses a URL. The error never quotes the input, which may hold a password.
    pub fn parse(text: &str) -> Result<Self, PgUrlError> {
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(PgUrlError("write it as postgres://user:password@host:port/database".into()));
        }
        let mut config: tokio_postgres::Config = text.parse().map_err(|e| {
            PgUrlError(format!("cannot parse it (not shown, as it may hold a password): {e}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("vouch");
        let shown = show(&config);
        Ok(Self { config: Arc::new(config), shown })
    }

    /// Whether a store setting names PostgreSQL (as opposed to SQLite).
    pub fn is_postgres(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }
}

/// The URL as it may be shown: built from the parsed settings, so nothing of the password can leak
/// through a quirk of the text.
fn show(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let password = if config.get_password().is_some() { ":***" } else { "" };
    let at = if user.is_empty() && password.is_empty() { "" } else { "@" };
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string().replace('/', "%2F"),
            };
            match ports.get(i).or_else(|| ports.first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let db = config.get_dbname().unwrap_or("");
    format!("postgres://{user}{password}{at}{}/{db}", hosts.join(","))
}

/// `text` with the password of every PostgreSQL URL in it replaced by `***`: for messages that
/// quote configuration text they do not parse themselves (a TOML error quotes its line).
pub fn redact_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = ["postgres://", "postgresql://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme).map(|i| (i, i + scheme.len())))
        .min()
    {
        let (_, after) = start;
        out.push_str(&rest[..after]);
        rest = &rest[after..];
        let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == '\'').unwrap_or(rest.len());
        let (url, tail) = rest.split_at(end);
        // user:password@…, up to the last `@`: a password may hold an unencoded `@`.
        let url = match (url.find(':'), url.rfind('@')) {
            (Some(colon), Some(at)) if colon < at => format!("{}:***{}", &url[..colon], &url[at..]),
            _ => url.to_owned(),
        };
        out.push_str(&mask_param(&url));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// `…password=secret&…` with the value masked.
fn mask_param(url: &str) -> String {
    match url.find("password=") {
        Some(i) => {
            let value = i + "password=".len();
            let end = url[value..].find('&').map_or(url.len(), |j| value + j);
            format!("{}***{}", &url[..value], mask_param(&url[end..]))
        }
        None => url.to_owned(),
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgUrl({})", self.shown)
    }
}

impl std::str::FromStr for PgUrl {
    type Err = PgUrlError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The error with its causes: the driver's own message is only the kind (`db error`), the server's
/// words are in its source.
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

fn backend(e: tokio_postgres::Error) -> StoreError {
    StoreError::Backend(describe(&e))
}

/// A column of a row of vouch's own schema; a type that does not match (a hand-altered schema) is
/// an error, not a panic.
fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(|e| StoreError::Corrupt(format!("column {i}: {e}")))
}

/// A few connections, opened when first needed and reused; one that broke is dropped and replaced
/// by the next call.
struct Pool {
    url: PgUrl,
    idle: Mutex<Vec<Client>>,
    slots: Semaphore,
}

/// A connection lent by the pool; it goes back when dropped, unless it broke.
struct Conn<'a> {
    client: Option<Client>,
    pool: &'a Pool,
    _slot: SemaphorePermit<'a>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Present from creation until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!("a lent connection is present until dropped"))
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!("a lent connection is present until dropped"))
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(client);
            }
        }
    }
}

impl Pool {
    async fn get(&self) -> Result<Conn<'_>, StoreError> {
        let slot = tokio::time::timeout(ACQUIRE_TIMEOUT, self.slots.acquire())
            .await
            .map_err(|_| {
                StoreError::Backend(format!(
                    "no connection to PostgreSQL became free within {} s (all {POOL_SIZE} busy)",
                    ACQUIRE_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|_| StoreError::Backend("the connection pool is closed".into()))?;
        let idle = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| !c.is_closed());
            idle.pop()
        };
        let client = match idle {
            Some(client) => client,
            None => self.connect().await?,
        };
        Ok(Conn { client: Some(client), pool: self, _slot: slot })
    }

    async fn connect(&self) -> Result<Client, StoreError> {
        let failed =
            |why: String| StoreError::Backend(format!("cannot connect to PostgreSQL at {}: {why}", self.url));
        // The driver's own timeout covers each address; this one bounds the whole attempt.
        let attempt = self.url.config.connect(NoTls);
        let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt)
            .await
            .map_err(|_| failed("no answer in time".into()))?
            .map_err(|e| failed(describe(&e)))?;
        let shown = self.url.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(database = %shown, error = %describe(&e), "a PostgreSQL connection failed; the next call opens a new one");
            }
        });
        Ok(client)
    }
}

/// PostgreSQL implementation of [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: Arc<Pool>,
    damage: Arc<DamageLog>,
    /// Writes started, for [`Store::write_transactions`].
    writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresStore({})", self.pool.url)
    }
}

/// Brings the schema to the newest version in one transaction (see [`crate::migrate`]), under an
/// advisory lock so that replicas starting together migrate one after the other.
async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
         CREATE TABLE IF NOT EXISTS schema_version (
            version INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(backend)?;
    let row =
        tx.query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[]).await.map_err(backend)?;
    let current: i32 = col(&row, 0)?;
    let current =
        u32::try_from(current).map_err(|_| StoreError::Corrupt(format!("schema version {current}")))?;
    for m in migrate::pending(current, MIGRATIONS)? {
        tracing::info!(version = m.version, name = m.name, "applying a database schema migration");
        tx.batch_execute(m.sql).await.map_err(|e| {
            StoreError::Backend(format!(
                "schema migration {} (`{}`) failed: {}",
                m.version,
                m.name,
                describe(&e)
            ))
        })?;
        let version = i32::try_from(m.version).map_err(|_| StoreError::Corrupt("schema version".into()))?;
        tx.execute("INSERT INTO schema_version (version, name) VALUES ($1, $2)", &[&version, &m.name])
            .await
            .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

fn to_i64(revision: u64, id: &str) -> Result<i64, StoreError> {
    i64::try_from(revision)
        .map_err(|_| StoreError::Corrupt(format!("entry `{id}`: revision {revision} is too large")))
}

impl PostgresStore {
    /// Applies an agent rule atomically: the record is read with its row locked (`FOR UPDATE`; for
    /// an agent with no row yet, a transaction-scoped advisory lock on its ID stands in), decided on
    /// and written in one transaction, so no other change to the agent can fall between the read and
    /// the write, on this replica or another.
    async fn change_agent<F>(&self, id: &SpiffeId, rule: F) -> Result<AgentRecord, StoreError>
    where
        F: FnOnce(Option<AgentRecord>) -> agent_rules::Outcome + Send + 'static,
    {
        let id = id.to_string();
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&id]).await.map_err(backend)?;
        let row = tx
            .query_opt("SELECT data FROM agents WHERE spiffe_id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(backend)?;
        let stored = row.map(|r| decode_agent(col(&r, 0)?)).transpose()?;
        let (write, answer) = rule(stored)?;
        if let Some(record) = write {
            let data = encode_agent(&record)?;
            tx.execute(
                "INSERT INTO agents (spiffe_id, data) VALUES ($1, $2)
                 ON CONFLICT (spiffe_id) DO UPDATE SET data = excluded.data",
                &[&id, &data],
            )
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
        }
        Ok(answer)
    }

    /// Connects to the database at `url` and applies migrations. The database must exist and the
    /// user must be allowed to create tables in it (its owner, say).
    pub async fn connect(url: &PgUrl) -> Result<Self, StoreError> {
        let pool = Pool { url: url.clone(), idle: Mutex::default(), slots: Semaphore::new(POOL_SIZE) };
        {
            let mut conn = pool.get().await?;
            migrate(&mut conn).await?;
        }
        Ok(Self { pool: Arc::new(pool), damage: Arc::default(), writes: Arc::default() })
    }

    /// The highest schema version recorded in the database.
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_version", &[])
            .await
            .map_err(backend)?;
        let v: i32 = col(&row, 0)?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("schema version {v}")))
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_entries(&self, entries: &[Entry]) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut ids = Vec::with_capacity(entries.len());
        let (mut spiffe_ids, mut parent_ids, mut revisions, mut data) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in entries {
            revisions.push(to_i64(e.revision, e.id.as_str())?);
            ids.push(e.id.to_string());
            spiffe_ids.push(e.spiffe_id.to_string());
            parent_ids.push(e.parent_id.to_string());
            data.push(encode_entry(e)?);
        }
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        // One statement for the whole batch; a taken id (or one twice in the batch) inserts nothing
        // for it, which the returned ids show, and then the transaction is rolled back.
        let rows = tx
            .query(
                "INSERT INTO entries (id, spiffe_id, parent_id, revision, data)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])
                 ON CONFLICT (id) DO NOTHING RETURNING id",
                &[&ids, &spiffe_ids, &parent_ids, &revisions, &data],
            )
            .await
            .map_err(backend)?;
        let mut inserted: HashSet<String> = rows.iter().map(|r| col(r, 0)).collect::<Result<_, _>>()?;
        if let Some(taken) = ids.iter().find(|id| !inserted.remove(*id)) {
            return Err(StoreError::EntryExists(taken.clone()));
        }
        tx.commit().await.map_err(backend)
    }

    async fn get_entry(&self, id: &EntryId) -> Result<Option<Entry>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt("SELECT data FROM entries WHERE id = $1", &[&id.as_str()])
            .await
            .map_err(backend)?;
        row.map(|r| decode_entry(id.as_str(), col(&r, 0)?)).transpose()
    }

    async fn scan_entries(&self, filter: &EntryFilter) -> Result<EntryListing, StoreError> {
        // The indexed columns narrow the scan; the filter itself decides.
        let spiffe = filter.spiffe_id.as_ref().map(SpiffeId::to_string);
        let parent = filter.parent_id.as_ref().map(SpiffeId::to_string);
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT id, data FROM entries
                 WHERE ($1::text IS NULL OR spiffe_id = $1) AND ($2::text IS NULL OR parent_id = $2)
                 ORDER BY id",
                &[&spiffe, &parent],
            )
            .await
            .map_err(backend)?;
        drop(conn);
        let mut decoded = Vec::with_capacity(rows.len());
        for r in &rows {
            decoded.push(decode_row(col(r, 0)?, col(r, 1)?));
        }
        Ok(sort_rows(decoded, |e| filter.accepts(e), &self.damage))
    }

    fn write_transactions(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    fn damaged_rows_skipped(&self) -> u64 {
        self.damage.count()
    }

    async fn update_entry(&self, entry: &Entry) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let id = entry.id.as_str();
        let expected = prior_revision(entry)?;
        let (revision, prior) = (to_i64(entry.revision, id)?, to_i64(expected, id)?);
        let data = encode_entry(entry)?;
        let conn = self.pool.get().await?;
        // Compare and set in one statement; only when it changes nothing is the reason looked up.
        let changed = conn
            .execute(
                "UPDATE entries SET spiffe_id = $2, parent_id = $3, revision = $4, data = $5
                 WHERE id = $1 AND revision = $6",
                &[&id, &entry.spiffe_id.to_string(), &entry.parent_id.to_string(), &revision, &data, &prior],
            )
            .await
            .map_err(backend)?;
        if changed == 0 {
            let exists =
                conn.query_opt("SELECT 1 FROM entries WHERE id = $1", &[&id]).await.map_err(backend)?;
            return Err(match exists {
                None => StoreError::EntryNotFound(id.to_owned()),
                Some(_) => StoreError::RevisionConflict { id: id.to_owned(), expected },
            });
        }
        self.damage.forget(id);
        Ok(())
    }

    async fn delete_entry(&self, id: &EntryId) -> Result<Entry, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let id = id.as_str();
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let row = tx
            .query_opt("SELECT data FROM entries WHERE id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Err(StoreError::EntryNotFound(id.to_owned())) };
        // Decoded before deleting: a damaged row is refused here, as it is by every other call
        // that needs the entry, instead of vanishing with an error.
        let entry = decode_entry(id, col(&row, 0)?)?;
        tx.execute("DELETE FROM entries WHERE id = $1", &[&id]).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(entry)
    }

    async fn create_join_token(&self, token: &JoinTokenRecord) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let conn = self.pool.get().await?;
        let agent_id = token.agent_id.as_ref().map(SpiffeId::to_string);
        let labels = encode_labels(&token.labels)?;
        let inserted = conn
            .execute(
                "INSERT INTO join_tokens (hash, created_at, expires_at, agent_id, used_at, labels)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (hash) DO NOTHING",
                &[&token.hash, &token.created_at, &token.expires_at, &agent_id, &token.used_at, &labels],
            )
            .await
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::TokenExists);
        }
        Ok(())
    }

    async fn consume_join_token(&self, hash: &str, now: i64) -> Result<TokenUse, StoreError> {
        let conn = self.pool.get().await?;
        // A plain read first: an unknown, used or expired token (a flood of bogus attestations)
        // is refused without writing; the update below decides for a token that looks usable.
        let row = conn
            .query_opt(
                "SELECT created_at, expires_at, agent_id, used_at, labels FROM join_tokens WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(backend)?;
        let row = row
            .map(|r| Ok::<_, StoreError>((col(&r, 0)?, col(&r, 1)?, col(&r, 2)?, col(&r, 3)?, col(&r, 4)?)))
            .transpose()?;
        if let Err(refused) = usable_token(row, now) {
            return Ok(refused);
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        // Row locking makes concurrent consumers of one token queue on it; the first sets used_at
        // and the others then fail the condition.
        let consumed = conn
            .query_opt(
                "UPDATE join_tokens SET used_at = $2
                 WHERE hash = $1 AND used_at IS NULL AND expires_at > $2
                 RETURNING created_at, expires_at, agent_id, labels",
                &[&hash, &now],
            )
            .await
            .map_err(backend)?;
        if let Some(row) = consumed {
            let usable = (col(&row, 0)?, col(&row, 1)?, col(&row, 2)?, col(&row, 3)?);
            return consumed_token(hash.to_owned(), usable, now);
        }
        let row = conn
            .query_opt("SELECT used_at FROM join_tokens WHERE hash = $1", &[&hash])
            .await
            .map_err(backend)?;
        Ok(match row {
            None => TokenUse::Unknown,
            Some(r) if col::<Option<i64>>(&r, 0)?.is_some() => TokenUse::AlreadyUsed,
            Some(_) => TokenUse::Expired,
        })
    }

    async fn apply_agent_rule(&self, id: &SpiffeId, rule: AgentRule) -> Result<AgentRecord, StoreError> {
        self.change_agent(id, rule).await
    }

    async fn get_agent(&self, id: &SpiffeId) -> Result<Option<AgentRecord>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt("SELECT data FROM agents WHERE spiffe_id = $1", &[&id.to_string()])
            .await
            .map_err(backend)?;
        row.map(|r| decode_agent(col(&r, 0)?)).transpose()
    }

    async fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn.query("SELECT data FROM agents ORDER BY spiffe_id", &[]).await.map_err(backend)?;
        rows.iter().map(|r| decode_agent(col(r, 0)?)).collect()
    }

    async fn delete_agent(&self, id: &SpiffeId) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let conn = self.pool.get().await?;
        let n = conn
            .execute("DELETE FROM agents WHERE spiffe_id = $1", &[&id.to_string()])
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }

    async fn create_group(&self, group: &NodeGroup) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let (id, data) = (group.spiffe_id.to_string(), encode_group(group)?);
        let conn = self.pool.get().await?;
        let inserted = conn
            .execute(
                "INSERT INTO node_groups (spiffe_id, data) VALUES ($1, $2) ON CONFLICT (spiffe_id) DO NOTHING",
                &[&id, &data],
            )
            .await
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::GroupExists(id));
        }
        Ok(())
    }

    async fn get_group(&self, id: &SpiffeId) -> Result<Option<NodeGroup>, StoreError> {
        let id = id.to_string();
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt("SELECT data FROM node_groups WHERE spiffe_id = $1", &[&id])
            .await
            .map_err(backend)?;
        row.map(|r| {
            decode_group(&id, col(&r, 0)?)
                .ok_or_else(|| StoreError::Corrupt(format!("node group `{id}` cannot be read")))
        })
        .transpose()
    }

    async fn list_groups(&self) -> Result<Vec<NodeGroup>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query("SELECT spiffe_id, data FROM node_groups ORDER BY spiffe_id", &[])
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.extend(decode_group(col(r, 0)?, col(r, 1)?));
        }
        Ok(out)
    }

    async fn delete_group(&self, id: &SpiffeId) -> Result<NodeGroup, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let id = id.to_string();
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let row = tx
            .query_opt("SELECT data FROM node_groups WHERE spiffe_id = $1 FOR UPDATE", &[&id])
            .await
            .map_err(backend)?;
        let Some(row) = row else { return Err(StoreError::GroupNotFound(id)) };
        // An entry created under the group by a concurrent transaction that has not committed yet is
        // not counted (READ COMMITTED); it then waits under a deleted group, served by no agent, until
        // it is deleted or re-parented, or the group is created again.
        let count = tx
            .query_one("SELECT COUNT(*) FROM entries WHERE parent_id = $1", &[&id])
            .await
            .map_err(backend)?;
        let entries: i64 = col(&count, 0)?;
        if entries > 0 {
            return Err(StoreError::GroupInUse { id, entries: u64::try_from(entries).unwrap_or(u64::MAX) });
        }
        let group = decode_group(&id, col(&row, 0)?)
            .ok_or_else(|| StoreError::Corrupt(format!("node group `{id}` cannot be read")))?;
        tx.execute("DELETE FROM node_groups WHERE spiffe_id = $1", &[&id]).await.map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(group)
    }

    async fn load_authority(&self) -> Result<Option<String>, StoreError> {
        let conn = self.pool.get().await?;
        let row =
            conn.query_opt("SELECT state FROM authority WHERE singleton = 1", &[]).await.map_err(backend)?;
        row.map(|r| col(&r, 0)).transpose()
    }

    async fn save_authority(&self, state: &str) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let conn = self.pool.get().await?;
        conn.execute(
            "INSERT INTO authority (singleton, state) VALUES (1, $1)
             ON CONFLICT (singleton) DO UPDATE SET state = excluded.state",
            &[&state],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.query_one("SELECT 1", &[]).await.map_err(backend)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_quoted_text_are_masked() {
        let cases = [
            (
                "2 | store = \"postgres://u:s3cret@h:5/db\"\n  | ^",
                "2 | store = \"postgres://u:***@h:5/db\"\n  | ^",
            ),
            (
                "postgresql://u:p@ss@h/db and postgres://v:x@h",
                "postgresql://u:***@h/db and postgres://v:***@h",
            ),
            (
                "postgres://u@h/db?sslmode=x&password=s3cret&a=b",
                "postgres://u@h/db?sslmode=x&password=***&a=b",
            ),
            ("postgres://h:5432/db", "postgres://h:5432/db"),
            ("no url, password=kept", "no url, password=kept"),
        ];
        for (text, want) in cases {
            assert_eq!(redact_passwords(text), want);
        }
    }
}
