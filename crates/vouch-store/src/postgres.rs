//! The PostgreSQL store, for several server replicas sharing one database: the same tables as
//! SQLite (entries and agents as JSON text beside their indexed columns), versioned migrations
//! (see [`crate::migrate`]) taken under an advisory lock, and a small pool of connections.
//!
//! Replicas hear of each other's writes through `LISTEN`/`NOTIFY`: every write that agents must
//! hear of sends a notice on channel `vouch_changes` inside its own transaction, so the notice goes
//! out exactly when the change commits, and a rolled-back write sends none. One dedicated
//! connection per store listens ([`Store::changes`]), reconnecting after a failure and then
//! announcing [`Change::Resync`], since notices sent while it was away are lost. Another dedicated
//! connection holds the lead ([`Store::try_lead`]): a session-level advisory lock, which PostgreSQL
//! releases when the session ends, so the lead of a replica that died passes to another one.
//!
//! Connections are plain TCP or a Unix socket, or TLS with the server's certificate verified
//! (`sslmode=verify-full&sslrootcert=/path/ca.pem`; see `pg_tls`). The password in the URL never
//! appears in a log line or an error ([`PgUrl`] shows it as `***`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, mpsc, watch, Semaphore, SemaphorePermit};
use tokio_postgres::config::Host;
use tokio_postgres::{AsyncMessage, Client, Connection, Row, Socket};
use vouch_core::{Entry, EntryId, Namespace, NodeGroup, SpiffeId, TrustDomain};

use crate::codec::{
    authority_version, consumed_token, decode_agent, decode_entry, decode_federation, decode_group,
    decode_row, encode_agent, encode_entry, encode_group, encode_labels, prior_revision, sort_rows,
    usable_token, used_challenge, DamageLog,
};
use crate::migrate::{self, Migration};
use crate::pg_tls::{PgTls, PgTlsStream};
use crate::{
    agent_rules, AgentRecord, AgentRule, AuditHead, AuditKeyRecord, AuditQuery, AuditSeal, AuthorityWrite,
    ChallengeIssue, ChallengeRecord, ChallengeUse, Change, DbLease, EntryFilter, EntryListing, FederationRow,
    JoinTokenRecord, LeaseState, NewSecretVersion, PolicyVersion, SealedSecretVersion, SecretRecord,
    SecretVersionRecord, Store, StoreError, StoredAuthority, TokenUse, VersionChange,
};
use vouch_core::audit::{AuditCheckpoint, AuditRecord};
use vouch_core::SecretPath;

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
        name: "authority version",
        sql: "ALTER TABLE authority ADD COLUMN version BIGINT NOT NULL DEFAULT 1;",
    },
    Migration {
        version: 4,
        name: "node groups, join token labels",
        sql: r#"CREATE TABLE node_groups (
            spiffe_id TEXT COLLATE "C" PRIMARY KEY,
            data TEXT NOT NULL
        );
        ALTER TABLE join_tokens ADD COLUMN labels TEXT;"#,
    },
    Migration {
        version: 5,
        name: "x509pop challenges",
        sql: "CREATE TABLE x509pop_challenges (
            nonce_hash TEXT PRIMARY KEY,
            fingerprint TEXT NOT NULL,
            expires_at BIGINT NOT NULL
        );
        CREATE INDEX x509pop_challenges_expires_at ON x509pop_challenges (expires_at);",
    },
    Migration {
        version: 6,
        name: "federation relationships",
        sql: r#"CREATE TABLE federation (
            trust_domain TEXT COLLATE "C" PRIMARY KEY,
            relationship TEXT NOT NULL,
            state TEXT NOT NULL,
            revision BIGINT NOT NULL
        );"#,
    },
    Migration {
        version: 7,
        name: "exchanged subject tokens",
        sql: r#"CREATE TABLE exchanged_tokens (
            key TEXT COLLATE "C" PRIMARY KEY,
            expires_at BIGINT NOT NULL
        );
        CREATE INDEX exchanged_tokens_expires_at ON exchanged_tokens (expires_at);"#,
    },
    Migration {
        version: 8,
        name: "secrets",
        sql: r#"CREATE TABLE secrets (
            path TEXT COLLATE "C" PRIMARY KEY,
            owner TEXT NOT NULL,
            purpose TEXT NOT NULL,
            rotation_due BIGINT,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            current_version BIGINT NOT NULL
        );
        CREATE TABLE secret_versions (
            path TEXT COLLATE "C" NOT NULL REFERENCES secrets (path),
            version BIGINT NOT NULL,
            created_at BIGINT NOT NULL,
            deleted_at BIGINT,
            destroyed_at BIGINT,
            sealed_key BYTEA,
            ciphertext BYTEA,
            PRIMARY KEY (path, version)
        );"#,
    },
    Migration {
        version: 9,
        name: "policies",
        // Every version of every policy; `text` NULL marks a deletion. `seq` orders all changes.
        sql: r#"CREATE TABLE policies (
            seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT COLLATE "C" NOT NULL,
            version BIGINT NOT NULL,
            text TEXT,
            created_at BIGINT NOT NULL,
            author TEXT NOT NULL,
            UNIQUE (id, version)
        );"#,
    },
    Migration {
        version: 10,
        name: "db_leases",
        // Leases on dynamic database roles; never a password. A lease is written (`creating`)
        // before its role exists, so a crash leaves a row that names the role to clean up.
        sql: r#"CREATE TABLE db_leases (
            id TEXT COLLATE "C" PRIMARY KEY,
            role TEXT NOT NULL UNIQUE,
            connection TEXT NOT NULL,
            template TEXT NOT NULL,
            identity TEXT NOT NULL,
            state TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL,
            max_expires_at BIGINT NOT NULL
        );"#,
    },
    Migration {
        version: 11,
        name: "audit_log",
        // As SQLite's step 11. Appends lock the head row (`FOR UPDATE`), so replicas appending at
        // once take turns and make one chain.
        sql: r#"CREATE TABLE audit_log (
            seq BIGINT PRIMARY KEY,
            time_ms BIGINT NOT NULL,
            event TEXT COLLATE "C" NOT NULL,
            spiffe_id TEXT COLLATE "C",
            node TEXT COLLATE "C",
            fields TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX audit_log_spiffe_id ON audit_log (spiffe_id, seq);
        CREATE INDEX audit_log_node ON audit_log (node, seq);
        CREATE INDEX audit_log_time ON audit_log (time_ms);
        CREATE TABLE audit_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            seq BIGINT NOT NULL,
            hash TEXT NOT NULL
        );
        INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
        CREATE TABLE audit_checkpoints (
            seq BIGINT PRIMARY KEY,
            hash TEXT NOT NULL,
            time_ms BIGINT NOT NULL,
            key_id TEXT NOT NULL,
            signature TEXT NOT NULL
        );
        CREATE TABLE audit_keys (
            id TEXT COLLATE "C" PRIMARY KEY,
            algorithm TEXT NOT NULL,
            public_key TEXT NOT NULL,
            sealed_key BYTEA NOT NULL,
            created_at BIGINT NOT NULL
        );"#,
    },
    Migration {
        version: 12,
        name: "namespaces",
        // As SQLite's step 12.
        sql: "ALTER TABLE entries ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';
        CREATE INDEX entries_namespace ON entries (namespace);
        ALTER TABLE policies ADD COLUMN namespace TEXT NOT NULL DEFAULT 'default';",
    },
];

const LEASE_COLUMNS: &str =
    "id, role, connection, template, identity, state, created_at, expires_at, max_expires_at";

fn pg_lease_row(r: &Row) -> Result<DbLease, StoreError> {
    Ok(DbLease {
        id: col(r, 0)?,
        role: col(r, 1)?,
        connection: col(r, 2)?,
        template: col(r, 3)?,
        identity: col(r, 4)?,
        state: LeaseState::parse(&col::<String>(r, 5)?)?,
        created_at: col(r, 6)?,
        expires_at: col(r, 7)?,
        max_expires_at: col(r, 8)?,
    })
}

fn pg_policy_row(r: &Row) -> Result<PolicyVersion, StoreError> {
    Ok(PolicyVersion {
        id: col(r, 0)?,
        version: u64::try_from(col::<i64>(r, 1)?).unwrap_or(0),
        text: col(r, 2)?,
        created_at: col(r, 3)?,
        author: col(r, 4)?,
        namespace: Namespace::new(col(r, 5)?).map_err(|e| StoreError::Corrupt(format!("policy: {e}")))?,
    })
}

/// The advisory lock key under which replicas migrate one at a time (`vouch` in ASCII).
const MIGRATION_LOCK: i64 = 0x76_6f_75_63_68;

/// The advisory lock whose holder leads key rotation (`vouchL` in ASCII).
const LEAD_LOCK: i64 = 0x76_6f_75_63_68_4c;
/// The advisory lock under which x509pop challenges are counted and issued (`vouchC` in ASCII).
const CHALLENGE_LOCK: i64 = 0x76_6f_75_63_68_43;
/// The notification channel of [`Change`]s.
const CHANNEL: &str = "vouch_changes";
/// PostgreSQL refuses a notice payload of 8000 bytes or more; a longer one is sent as a resync.
const MAX_NOTICE: usize = 7900;
/// A batch of more entries than this is announced as one resync rather than entry by entry.
const MAX_NOTICES_PER_BATCH: usize = 1000;

/// Connections kept per server by default: enough for concurrent requests, few enough that many
/// replicas fit PostgreSQL's default `max_connections` (100). Each store opens two more, one to
/// hear other replicas' changes and one to hold or seek the lead.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// The largest pool a store accepts (PostgreSQL's default `max_connections` is 100).
pub const MAX_POOL_SIZE: usize = 64;
/// Attempts to open a connection before a call fails (PostgreSQL restarting, say), with a short
/// pause between them, so that a brief outage costs callers a delay rather than an error.
const CONNECT_ATTEMPTS: u32 = 3;
/// The pause before the first retry of a connection; it doubles.
const CONNECT_RETRY: Duration = Duration::from_millis(250);
/// How long the holder of the lead waits for the check that its session is alive.
const LEAD_CHECK: Duration = Duration::from_secs(5);
/// The longest pause between attempts to bring back the listening connection.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(2);
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
    /// The CAs that TLS connections trust (`sslrootcert`); `None`: no TLS.
    ca_file: Option<std::path::PathBuf>,
}

impl PgUrl {
    /// Parses a URL. The error never quotes the input, which may hold a password.
    pub fn parse(text: &str) -> Result<Self, PgUrlError> {
        if !(text.starts_with("postgres://") || text.starts_with("postgresql://")) {
            return Err(PgUrlError("write it as postgres://user:password@host:port/database".into()));
        }
        let (text, sslmode, ca_file) = take_tls_params(text)?;
        let mut config: tokio_postgres::Config = text.parse().map_err(|e| {
            PgUrlError(format!("cannot parse it (not shown, as it may hold a password): {e}"))
        })?;
        // vouch verifies whenever it encrypts: TLS needs the CA file, and `require` checks as much
        // as `verify-full` (libpq's `require` would accept any certificate).
        let ca_file = match (sslmode.as_deref(), ca_file) {
            (None | Some("disable" | "allow" | "prefer"), None) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                None
            }
            (None | Some("disable" | "allow" | "prefer"), Some(_)) => {
                return Err(PgUrlError(
                    "sslrootcert is set but sslmode does not ask for TLS: add sslmode=verify-full".into(),
                ))
            }
            (Some("require" | "verify-full"), Some(ca)) => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                Some(ca)
            }
            (Some("require" | "verify-full"), None) => {
                return Err(PgUrlError(
                    "TLS to PostgreSQL needs the CA that signed the server's certificate: add \
                     sslrootcert=/path/to/ca.pem (vouch always verifies the server's certificate and name)"
                        .into(),
                ))
            }
            (Some("verify-ca"), _) => {
                return Err(PgUrlError(
                    "sslmode=verify-ca is not supported: use sslmode=verify-full (the server's name is checked too)"
                        .into(),
                ))
            }
            (Some(other), _) => {
                return Err(PgUrlError(format!(
                    "sslmode `{other}`: use disable (the default), require or verify-full"
                )))
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("vouch");
        // A peer that vanished without closing the connection (a partition, a host powered off) is
        // noticed within about half a minute instead of the system's two hours: the listening and
        // lead connections rely on it.
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(15));
            config.keepalives_interval(Duration::from_secs(5));
            config.keepalives_retries(3);
        }
        let mut shown = show(&config);
        if ca_file.is_some() {
            shown.push_str("?sslmode=verify-full");
        }
        Ok(Self { config: Arc::new(config), shown, ca_file })
    }

    /// Whether the URL carries a password.
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// Sets the password (read from a file or the environment rather than written in the URL).
    /// It stays as hidden as one in the URL.
    pub fn set_password(&mut self, password: &[u8]) {
        let config = Arc::make_mut(&mut self.config);
        config.password(password);
        self.shown = show(config) + if self.ca_file.is_some() { "?sslmode=verify-full" } else { "" };
    }

    /// Opens one connection outside any store (for the dynamic database credentials the server
    /// manages), with the store's TLS rules; its driver runs on its own task. Errors name the URL
    /// without its password.
    pub async fn connect_client(&self) -> Result<Client, StoreError> {
        let tls = PgTls::new(self.ca_file.as_ref())?;
        let (client, connection) = open(self, &tls).await.map_err(|(e, _)| e)?;
        let shown = self.shown.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(database = %shown, error = %describe(&e), "a PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Whether a store setting names PostgreSQL (as opposed to SQLite).
    pub fn is_postgres(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }
}

/// `text` without its `sslmode` and `sslrootcert` parameters (handled here, as the driver knows
/// neither `verify-full` nor a CA file), and their values.
fn take_tls_params(text: &str) -> Result<(String, Option<String>, Option<std::path::PathBuf>), PgUrlError> {
    let Some((base, query)) = text.split_once('?') else { return Ok((text.to_owned(), None, None)) };
    let (mut sslmode, mut ca_file, mut kept) = (None, None, Vec::new());
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", value)) => sslmode = Some(percent_decode(value)?),
            Some(("sslrootcert", value)) => ca_file = Some(std::path::PathBuf::from(percent_decode(value)?)),
            _ => kept.push(pair),
        }
    }
    let text = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    Ok((text, sslmode, ca_file))
}

/// A URL parameter's value with `%XX` escapes decoded.
fn percent_decode(value: &str) -> Result<String, PgUrlError> {
    let bad = || PgUrlError("a TLS parameter has a bad %-escape".into());
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = value.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
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

/// A federation row as selected (`trust_domain, relationship, state, revision`).
fn pg_federation_row(r: &Row) -> Result<FederationRow, StoreError> {
    decode_federation(col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?)
}

const SECRET_COLUMNS: &str =
    "path, owner, purpose, rotation_due, created_at, updated_at, current_version FROM secrets";

/// A secrets row as selected ([`SECRET_COLUMNS`]).
fn pg_secret_row(r: &Row) -> Result<SecretRecord, StoreError> {
    crate::codec::decode_secret(
        col(r, 0)?,
        col(r, 1)?,
        col(r, 2)?,
        col(r, 3)?,
        col(r, 4)?,
        col(r, 5)?,
        col(r, 6)?,
    )
}

/// A secret_versions row as selected (`version, created_at, deleted_at, destroyed_at`).
fn pg_version_row(r: &Row) -> Result<SecretVersionRecord, StoreError> {
    crate::codec::decode_secret_version(col(r, 0)?, col(r, 1)?, col(r, 2)?, col(r, 3)?)
}

/// A few connections to one PostgreSQL database, opened when first needed and reused; one that
/// broke (closed by the server, a restart, a network failure) is dropped and replaced by the next
/// call. The store keeps one; the server keeps one per database it makes credentials on. At most
/// `size` connections are open or lent at once, so callers cannot open connections without bound.
pub struct PgPool {
    url: PgUrl,
    tls: PgTls,
    idle: Mutex<Vec<Client>>,
    slots: Semaphore,
    size: usize,
    /// Whether the last attempt to connect failed (so the outage and the recovery are logged once).
    down: std::sync::atomic::AtomicBool,
    /// What the pool serves, for its messages: what fails during an outage, what sizes it.
    role: PoolRole,
}

/// What a [`PgPool`] serves, as its messages say it.
#[derive(Debug, Clone, Copy)]
pub struct PoolRole {
    /// What an outage means, after "PostgreSQL is unreachable: " (e.g. "calls that need it fail").
    pub outage: &'static str,
    /// The setting that sizes the pool, named when every connection is busy.
    pub size_setting: &'static str,
}

impl std::fmt::Debug for PgPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgPool").field("url", &self.url).field("size", &self.size).finish_non_exhaustive()
    }
}

/// A connection lent by the pool; it goes back when dropped, unless it broke or was discarded.
pub struct PgConn<'a> {
    client: Option<Client>,
    pool: &'a PgPool,
    _slot: SemaphorePermit<'a>,
}

impl PgConn<'_> {
    /// Closes the connection instead of giving it back: for a caller that cannot tell what state
    /// it left the session in (a statement failed or was abandoned mid-transaction).
    pub fn discard(mut self) {
        self.client.take();
    }
}

impl std::ops::Deref for PgConn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Present from creation until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!("a lent connection is present until dropped"))
    }
}

impl std::ops::DerefMut for PgConn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!("a lent connection is present until dropped"))
    }
}

impl Drop for PgConn<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).push(client);
            }
        }
    }
}

impl PgPool {
    /// A pool of at most `size` connections (1 to [`MAX_POOL_SIZE`]) to `url`; none is opened yet.
    pub fn new(url: &PgUrl, size: usize, role: PoolRole) -> Result<Self, StoreError> {
        if !(1..=MAX_POOL_SIZE).contains(&size) {
            return Err(StoreError::Backend(format!(
                "a pool of {size} connections: choose 1 to {MAX_POOL_SIZE}"
            )));
        }
        Ok(Self {
            tls: PgTls::new(url.ca_file.as_ref())?,
            url: url.clone(),
            idle: Mutex::default(),
            slots: Semaphore::new(size),
            size,
            down: Default::default(),
            role,
        })
    }

    /// Lends a connection: an idle one that is still open, else a new one. Waits while all
    /// `size` are lent (at most 30 s).
    pub async fn get(&self) -> Result<PgConn<'_>, StoreError> {
        let slot = tokio::time::timeout(ACQUIRE_TIMEOUT, self.slots.acquire())
            .await
            .map_err(|_| {
                StoreError::Backend(format!(
                    "no connection to PostgreSQL became free within {} s (all {} busy; see {})",
                    ACQUIRE_TIMEOUT.as_secs(),
                    self.size,
                    self.role.size_setting
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
        Ok(PgConn { client: Some(client), pool: self, _slot: slot })
    }

    /// A new connection, its driver running on its own task. A failed attempt is retried a few
    /// times, briefly; the first failure of an outage and the recovery are logged.
    async fn connect(&self) -> Result<Client, StoreError> {
        let mut pause = CONNECT_RETRY;
        let mut attempt = 1;
        let (client, connection) = loop {
            match open(&self.url, &self.tls).await {
                Ok(opened) => break opened,
                Err((e, retry)) => {
                    if !retry || attempt >= CONNECT_ATTEMPTS {
                        if !self.down.swap(true, Ordering::Relaxed) {
                            tracing::error!(database = %self.url, error = %e, "PostgreSQL is unreachable: {} until it is back (each call tries to reconnect)", self.role.outage);
                        }
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
            }
        };
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(database = %self.url, "reconnected to PostgreSQL");
        }
        let shown = self.url.to_string();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(database = %shown, error = %describe(&e), "a PostgreSQL connection failed; the next call opens a new one");
            }
        });
        Ok(client)
    }
}

/// Opens one connection; the caller drives it. The error says whether trying again soon may help
/// (the server is not answering or is starting) or not (a refused password, a missing database).
async fn open(
    url: &PgUrl,
    tls: &PgTls,
) -> Result<(Client, Connection<Socket, PgTlsStream>), (StoreError, bool)> {
    let failed = |why: String| StoreError::Backend(format!("cannot connect to PostgreSQL at {url}: {why}"));
    // The driver's own timeout covers each address; this one bounds the whole attempt.
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, url.config.connect(tls.clone())).await {
        Err(_) => Err((failed("no answer in time".into()), true)),
        Ok(Err(e)) => {
            let retry = e
                .as_db_error()
                .is_none_or(|db| *db.code() == tokio_postgres::error::SqlState::CANNOT_CONNECT_NOW);
            Err((failed(describe(&e)), retry))
        }
        Ok(Ok(opened)) => Ok(opened),
    }
}

/// The lead connection: a session that holds, or keeps asking for, the lead lock.
#[derive(Default)]
struct Lead {
    session: Option<Client>,
    held: bool,
}

/// The fan-out of the listening connection's changes. Dropping it (the last clone of the store)
/// stops the listener.
struct Hub {
    changes: broadcast::Sender<Change>,
    started: std::sync::atomic::AtomicBool,
    stop: watch::Sender<bool>,
}

/// A notice as sent: the change and the store that made it, so a store ignores its own.
#[derive(serde::Serialize)]
struct NoticeOut<'a> {
    o: &'a str,
    #[serde(flatten)]
    c: &'a Change,
}

/// A notice as heard.
#[derive(serde::Deserialize)]
struct NoticeIn {
    o: String,
    #[serde(flatten)]
    c: Change,
}

/// PostgreSQL implementation of [`Store`].
#[derive(Clone)]
pub struct PostgresStore {
    pool: Arc<PgPool>,
    damage: Arc<DamageLog>,
    /// Writes started, for [`Store::write_transactions`].
    writes: Arc<AtomicU64>,
    /// This store's name in its notices: random, chosen by the database at connect.
    origin: Arc<str>,
    hub: Arc<Hub>,
    lead: Arc<tokio::sync::Mutex<Lead>>,
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
        let was_banned = stored.as_ref().is_some_and(|a| a.banned);
        // Replicas serving this agent's sync stream decide its node groups again when they change.
        let stored_selectors = stored.as_ref().map(|a| a.selectors.clone());
        let (write, answer) = rule(stored)?;
        if let Some(record) = write {
            if record.banned && !was_banned {
                let agent = record.spiffe_id.clone();
                self.notify(&tx, &Change::AgentRemoved { agent, banned: true }).await?;
            }
            if stored_selectors.as_ref().is_some_and(|s| *s != record.selectors) {
                let agent = record.spiffe_id.clone();
                self.notify(&tx, &Change::AgentSelectorsChanged { agent }).await?;
            }
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

    /// Connects to the database at `url` with [`DEFAULT_POOL_SIZE`] connections and applies
    /// migrations. The database must exist and the user must be allowed to create tables in it
    /// (its owner, say).
    pub async fn connect(url: &PgUrl) -> Result<Self, StoreError> {
        Self::connect_with(url, DEFAULT_POOL_SIZE).await
    }

    /// [`PostgresStore::connect`] with a pool of `pool_size` connections (1 to [`MAX_POOL_SIZE`]).
    pub async fn connect_with(url: &PgUrl, pool_size: usize) -> Result<Self, StoreError> {
        let role = PoolRole {
            outage: "calls that need it fail and /readyz answers 503",
            size_setting: "postgres_pool_size",
        };
        let pool = PgPool::new(url, pool_size, role)?;
        let origin: String = {
            let mut conn = pool.get().await?;
            migrate(&mut conn).await?;
            let row = conn.query_one("SELECT gen_random_uuid()::text", &[]).await.map_err(backend)?;
            col(&row, 0)?
        };
        let hub = Hub {
            changes: broadcast::channel(4096).0,
            started: Default::default(),
            stop: watch::channel(false).0,
        };
        Ok(Self {
            pool: Arc::new(pool),
            damage: Arc::default(),
            writes: Arc::default(),
            origin: origin.into(),
            hub: Arc::new(hub),
            lead: Arc::default(),
        })
    }

    /// The payload of a notice of `change` from this store (a resync when it would be too long).
    fn notice(&self, change: &Change) -> String {
        let text = serde_json::to_string(&NoticeOut { o: &self.origin, c: change }).unwrap_or_default();
        if text.is_empty() || text.len() > MAX_NOTICE {
            return self.notice(&Change::Resync);
        }
        text
    }

    /// Sends `change` to the other replicas when the transaction `tx` commits.
    /// Writes the next version of policy `id` (`None`: a deletion, refused if there is no current
    /// version). Policy writes are rare admin changes: they take the table's write lock, so the
    /// versions of one id are numbered without gaps or conflicts however many replicas write.
    async fn write_policy_version(
        &self,
        id: &str,
        namespace: Option<&Namespace>,
        text: Option<&str>,
        author: &str,
        now: i64,
    ) -> Result<PolicyVersion, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        tx.execute("LOCK TABLE policies IN SHARE ROW EXCLUSIVE MODE", &[]).await.map_err(backend)?;
        let last = tx
            .query_opt(
                "SELECT version, text IS NOT NULL, namespace FROM policies WHERE id = $1 ORDER BY version DESC LIMIT 1",
                &[&id],
            )
            .await
            .map_err(backend)?;
        let (last, live, last_ns) = match &last {
            Some(r) => (col::<i64>(r, 0)?, col::<bool>(r, 1)?, Some(col::<String>(r, 2)?)),
            None => (0, false, None),
        };
        // A deletion stays in the namespace of the version it deletes.
        let namespace = match (namespace, last_ns) {
            (Some(ns), _) => ns.clone(),
            (None, Some(last)) => {
                Namespace::new(&last).map_err(|e| StoreError::Corrupt(format!("policy `{id}`: {e}")))?
            }
            (None, None) => Namespace::default(),
        };
        if text.is_none() && !live {
            return Err(StoreError::PolicyNotFound(id.to_owned()));
        }
        let version = last + 1;
        tx.execute(
            "INSERT INTO policies (id, version, text, created_at, author, namespace) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&id, &version, &text, &now, &author, &namespace.as_str()],
        )
        .await
        .map_err(backend)?;
        self.notify(&tx, &Change::PoliciesChanged { id: id.to_owned() }).await?;
        tx.commit().await.map_err(backend)?;
        Ok(PolicyVersion {
            id: id.to_owned(),
            version: u64::try_from(version).unwrap_or(0),
            text: text.map(str::to_owned),
            created_at: now,
            author: author.to_owned(),
            namespace,
        })
    }

    async fn notify(&self, tx: &tokio_postgres::Transaction<'_>, change: &Change) -> Result<(), StoreError> {
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.notice(change)]).await.map_err(backend)?;
        Ok(())
    }

    /// The stored authority, read in `client`'s current transaction (or alone).
    async fn read_authority(
        client: &impl tokio_postgres::GenericClient,
    ) -> Result<Option<StoredAuthority>, StoreError> {
        let row = client
            .query_opt("SELECT version, state FROM authority WHERE singleton = 1", &[])
            .await
            .map_err(backend)?;
        row.map(|r| Ok(StoredAuthority { version: authority_version(col(&r, 0)?)?, state: col(&r, 1)? }))
            .transpose()
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
        let (mut spiffe_ids, mut parent_ids, mut revisions, mut data, mut namespaces) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for e in entries {
            revisions.push(to_i64(e.revision, e.id.as_str())?);
            ids.push(e.id.to_string());
            spiffe_ids.push(e.spiffe_id.to_string());
            parent_ids.push(e.parent_id.to_string());
            data.push(encode_entry(e)?);
            namespaces.push(e.namespace.to_string());
        }
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        // One statement for the whole batch; a taken id (or one twice in the batch) inserts nothing
        // for it, which the returned ids show, and then the transaction is rolled back.
        let rows = tx
            .query(
                "INSERT INTO entries (id, spiffe_id, parent_id, revision, data, namespace)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
                 ON CONFLICT (id) DO NOTHING RETURNING id",
                &[&ids, &spiffe_ids, &parent_ids, &revisions, &data, &namespaces],
            )
            .await
            .map_err(backend)?;
        let mut inserted: HashSet<String> = rows.iter().map(|r| col(r, 0)).collect::<Result<_, _>>()?;
        if let Some(taken) = ids.iter().find(|id| !inserted.remove(*id)) {
            return Err(StoreError::EntryExists(taken.clone()));
        }
        let notices: Vec<String> = if entries.len() > MAX_NOTICES_PER_BATCH {
            vec![self.notice(&Change::Resync)]
        } else {
            entries
                .iter()
                .map(|e| self.notice(&Change::EntryUpserted { id: e.id.clone(), previous_parent: None }))
                .collect()
        };
        tx.execute("SELECT pg_notify($1, n) FROM unnest($2::text[]) AS n", &[&CHANNEL, &notices])
            .await
            .map_err(backend)?;
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
        let namespace = filter.namespace.as_ref().map(ToString::to_string);
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT id, data FROM entries
                 WHERE ($1::text IS NULL OR spiffe_id = $1) AND ($2::text IS NULL OR parent_id = $2)
                   AND ($3::text IS NULL OR namespace = $3)
                 ORDER BY id",
                &[&spiffe, &parent, &namespace],
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
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        // Compare and set in one statement, which also reads the parent before the change (the
        // replicas' agents under it must drop the entry); only when it changes nothing is the
        // reason looked up.
        let changed = tx
            .query_opt(
                "WITH old AS (SELECT parent_id FROM entries WHERE id = $1 AND revision = $6 FOR UPDATE)
                 UPDATE entries SET spiffe_id = $2, parent_id = $3, revision = $4, data = $5, namespace = $7
                 FROM old WHERE entries.id = $1 AND entries.revision = $6
                 RETURNING old.parent_id",
                &[
                    &id,
                    &entry.spiffe_id.to_string(),
                    &entry.parent_id.to_string(),
                    &revision,
                    &data,
                    &prior,
                    &entry.namespace.as_str(),
                ],
            )
            .await
            .map_err(backend)?;
        let Some(changed) = changed else {
            let exists =
                tx.query_opt("SELECT 1 FROM entries WHERE id = $1", &[&id]).await.map_err(backend)?;
            return Err(match exists {
                None => StoreError::EntryNotFound(id.to_owned()),
                Some(_) => StoreError::RevisionConflict { id: id.to_owned(), expected },
            });
        };
        let previous_parent = SpiffeId::parse(col::<&str>(&changed, 0)?).ok();
        self.notify(&tx, &Change::EntryUpserted { id: entry.id.clone(), previous_parent }).await?;
        tx.commit().await.map_err(backend)?;
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
        let change = Change::EntryDeleted { id: entry.id.clone(), parent: entry.parent_id.clone() };
        self.notify(&tx, &change).await?;
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

    async fn issue_challenge(
        &self,
        challenge: &ChallengeRecord,
        now: i64,
        limit: u32,
    ) -> Result<ChallengeIssue, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        // Replicas issue one at a time (a transaction-scoped advisory lock): under READ COMMITTED,
        // two transactions counting at once would each see room for one more and pass the bound.
        // The lock is held for a purge, a count over at most `limit` rows and an insert.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CHALLENGE_LOCK]).await.map_err(backend)?;
        tx.execute("DELETE FROM x509pop_challenges WHERE expires_at <= $1", &[&now])
            .await
            .map_err(backend)?;
        // One certificate keeps at most MAX_CHALLENGES_PER_CERTIFICATE: the new one takes the place
        // of its oldest, so requests for one (public) certificate cannot fill the bound.
        tx.execute(
            "DELETE FROM x509pop_challenges WHERE fingerprint = $1 AND nonce_hash NOT IN
             (SELECT nonce_hash FROM x509pop_challenges WHERE fingerprint = $1
              ORDER BY expires_at DESC LIMIT $2)",
            &[&challenge.fingerprint, &(i64::from(crate::MAX_CHALLENGES_PER_CERTIFICATE) - 1)],
        )
        .await
        .map_err(backend)?;
        let row = tx.query_one("SELECT COUNT(*) FROM x509pop_challenges", &[]).await.map_err(backend)?;
        let outstanding: i64 = col(&row, 0)?;
        if outstanding >= i64::from(limit) {
            // The purge is kept: expired challenges are worthless whatever the answer.
            tx.commit().await.map_err(backend)?;
            return Ok(ChallengeIssue::Full { limit });
        }
        tx.execute(
            "INSERT INTO x509pop_challenges (nonce_hash, fingerprint, expires_at) VALUES ($1, $2, $3)",
            &[&challenge.nonce_hash, &challenge.fingerprint, &challenge.expires_at],
        )
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(ChallengeIssue::Issued)
    }

    async fn record_exchanged_tokens(
        &self,
        tokens: &[(String, i64)],
        now: i64,
    ) -> Result<Vec<bool>, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        tx.execute("DELETE FROM exchanged_tokens WHERE expires_at <= $1", &[&now]).await.map_err(backend)?;
        // Each insert decides: of replicas inserting the same key at once, one inserts the row (the
        // others wait for its transaction and then find the key).
        let insert = tx
            .prepare(
                "INSERT INTO exchanged_tokens (key, expires_at) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
            )
            .await
            .map_err(backend)?;
        let mut fresh = Vec::with_capacity(tokens.len());
        for (key, expires_at) in tokens {
            fresh.push(tx.execute(&insert, &[key, expires_at]).await.map_err(backend)? == 1);
        }
        tx.commit().await.map_err(backend)?;
        Ok(fresh)
    }

    async fn consume_challenge(&self, nonce_hash: &str, now: i64) -> Result<ChallengeUse, StoreError> {
        let conn = self.pool.get().await?;
        // A plain read first: an unknown nonce (a guess, a replay) is refused without writing.
        let known = conn
            .query_opt("SELECT 1 FROM x509pop_challenges WHERE nonce_hash = $1", &[&nonce_hash])
            .await
            .map_err(backend)?;
        if known.is_none() {
            return Ok(ChallengeUse::Unknown);
        }
        self.writes.fetch_add(1, Ordering::Relaxed);
        // One statement decides: of replicas deleting the same row at once, the first takes it and
        // gets it back; the others wait for its commit, then find nothing to delete.
        let taken = conn
            .query_opt(
                "DELETE FROM x509pop_challenges WHERE nonce_hash = $1 RETURNING fingerprint, expires_at",
                &[&nonce_hash],
            )
            .await
            .map_err(backend)?;
        let taken = taken.map(|r| Ok::<_, StoreError>((col(&r, 0)?, col(&r, 1)?))).transpose()?;
        Ok(used_challenge(taken, now))
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
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let n = tx
            .execute("DELETE FROM agents WHERE spiffe_id = $1", &[&id.to_string()])
            .await
            .map_err(backend)?;
        if n > 0 {
            self.notify(&tx, &Change::AgentRemoved { agent: id.clone(), banned: false }).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(n > 0)
    }

    async fn create_group(&self, group: &NodeGroup) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let (id, data) = (group.spiffe_id.to_string(), encode_group(group)?);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let inserted = tx
            .execute(
                "INSERT INTO node_groups (spiffe_id, data) VALUES ($1, $2) ON CONFLICT (spiffe_id) DO NOTHING",
                &[&id, &data],
            )
            .await
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::GroupExists(id));
        }
        self.notify(&tx, &Change::GroupChanged { id: group.spiffe_id.clone() }).await?;
        tx.commit().await.map_err(backend)?;
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
        self.notify(&tx, &Change::GroupChanged { id: group.spiffe_id.clone() }).await?;
        tx.commit().await.map_err(backend)?;
        Ok(group)
    }

    async fn create_federation(&self, row: &FederationRow) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let td = row.trust_domain.to_string();
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let inserted = tx
            .execute(
                "INSERT INTO federation (trust_domain, relationship, state, revision) VALUES ($1, $2, $3, 1) \
                 ON CONFLICT (trust_domain) DO NOTHING",
                &[&td, &row.relationship, &row.state],
            )
            .await
            .map_err(backend)?;
        if inserted == 0 {
            return Err(StoreError::FederationExists(td));
        }
        self.notify(&tx, &Change::FederationChanged { trust_domain: row.trust_domain.clone() }).await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_federation(&self, trust_domain: &TrustDomain) -> Result<Option<FederationRow>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                "SELECT trust_domain, relationship, state, revision FROM federation WHERE trust_domain = $1",
                &[&trust_domain.to_string()],
            )
            .await
            .map_err(backend)?;
        row.map(|r| pg_federation_row(&r)).transpose()
    }

    async fn list_federations(&self) -> Result<Vec<FederationRow>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT trust_domain, relationship, state, revision FROM federation ORDER BY trust_domain",
                &[],
            )
            .await
            .map_err(backend)?;
        rows.iter().map(pg_federation_row).collect()
    }

    async fn update_federation(&self, row: &FederationRow) -> Result<u64, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let td = row.trust_domain.to_string();
        let expected = i64::try_from(row.revision).unwrap_or(i64::MAX);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let n = tx
            .execute(
                "UPDATE federation SET relationship = $2, state = $3, revision = revision + 1 \
                 WHERE trust_domain = $1 AND revision = $4",
                &[&td, &row.relationship, &row.state, &expected],
            )
            .await
            .map_err(backend)?;
        if n == 1 {
            self.notify(&tx, &Change::FederationChanged { trust_domain: row.trust_domain.clone() }).await?;
            tx.commit().await.map_err(backend)?;
            return Ok(row.revision + 1);
        }
        let exists = tx
            .query_opt("SELECT 1 FROM federation WHERE trust_domain = $1", &[&td])
            .await
            .map_err(backend)?;
        Err(if exists.is_some() {
            StoreError::FederationConflict(td)
        } else {
            StoreError::FederationNotFound(td)
        })
    }

    async fn save_federation_state(
        &self,
        trust_domain: &TrustDomain,
        revision: u64,
        state: &str,
    ) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let n = tx
            .execute(
                "UPDATE federation SET state = $2 WHERE trust_domain = $1 AND revision = $3",
                &[&trust_domain.to_string(), &state, &revision],
            )
            .await
            .map_err(backend)?;
        if n == 1 {
            self.notify(&tx, &Change::FederationChanged { trust_domain: trust_domain.clone() }).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(n == 1)
    }

    async fn delete_federation(&self, trust_domain: &TrustDomain) -> Result<FederationRow, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let td = trust_domain.to_string();
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let row = tx
            .query_opt(
                "DELETE FROM federation WHERE trust_domain = $1 RETURNING trust_domain, relationship, state, revision",
                &[&td],
            )
            .await
            .map_err(backend)?;
        let row =
            row.map(|r| pg_federation_row(&r)).transpose()?.ok_or(StoreError::FederationNotFound(td))?;
        self.notify(&tx, &Change::FederationChanged { trust_domain: trust_domain.clone() }).await?;
        tx.commit().await.map_err(backend)?;
        Ok(row)
    }

    async fn put_secret_version(&self, new: &NewSecretVersion) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let s = &new.secret;
        let path = s.path.to_string();
        let version = crate::codec::version_i64(s.current_version)?;
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        // The row lock (or, for a new secret, the primary key) orders concurrent writers: the
        // second finds the version taken and writes nothing.
        let current = tx
            .query_opt("SELECT current_version FROM secrets WHERE path = $1 FOR UPDATE", &[&path])
            .await
            .map_err(backend)?
            .map(|r| col::<i64>(&r, 0))
            .transpose()?;
        if current.unwrap_or(0) + 1 != version {
            return Err(StoreError::SecretConflict(path));
        }
        let n = tx
            .execute(
                "INSERT INTO secrets (path, owner, purpose, rotation_due, created_at, updated_at, current_version) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (path) DO UPDATE SET owner = excluded.owner, purpose = excluded.purpose, \
                 rotation_due = excluded.rotation_due, updated_at = excluded.updated_at, \
                 current_version = excluded.current_version WHERE secrets.current_version = $7 - 1",
                &[&path, &s.owner, &s.purpose, &s.rotation_due, &s.created_at, &s.updated_at, &version],
            )
            .await
            .map_err(backend)?;
        if n != 1 {
            return Err(StoreError::SecretConflict(path));
        }
        tx.execute(
            "INSERT INTO secret_versions (path, version, created_at, sealed_key, ciphertext) \
             VALUES ($1, $2, $3, $4, $5)",
            &[&path, &version, &s.updated_at, &new.sealed_key, &new.ciphertext],
        )
        .await
        .map_err(backend)?;
        self.notify(&tx, &Change::SecretChanged { path: s.path.clone() }).await?;
        tx.commit().await.map_err(backend)
    }

    async fn get_secret(&self, path: &SecretPath) -> Result<Option<SecretRecord>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(&format!("SELECT {SECRET_COLUMNS} WHERE path = $1"), &[&path.as_str()])
            .await
            .map_err(backend)?;
        row.map(|r| pg_secret_row(&r)).transpose()
    }

    async fn list_secrets(&self) -> Result<Vec<SecretRecord>, StoreError> {
        let conn = self.pool.get().await?;
        let rows =
            conn.query(&format!("SELECT {SECRET_COLUMNS} ORDER BY path"), &[]).await.map_err(backend)?;
        rows.iter().map(pg_secret_row).collect()
    }

    async fn list_secret_versions(&self, path: &SecretPath) -> Result<Vec<SecretVersionRecord>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT version, created_at, deleted_at, destroyed_at FROM secret_versions \
                 WHERE path = $1 ORDER BY version",
                &[&path.as_str()],
            )
            .await
            .map_err(backend)?;
        rows.iter().map(pg_version_row).collect()
    }

    async fn get_secret_version(
        &self,
        path: &SecretPath,
        version: u64,
    ) -> Result<Option<SealedSecretVersion>, StoreError> {
        let version = crate::codec::version_i64(version)?;
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(
                "SELECT version, created_at, deleted_at, destroyed_at, sealed_key, ciphertext \
                 FROM secret_versions WHERE path = $1 AND version = $2",
                &[&path.as_str(), &version],
            )
            .await
            .map_err(backend)?;
        row.map(|r| {
            Ok(SealedSecretVersion {
                record: pg_version_row(&r)?,
                sealed_key: col(&r, 4)?,
                ciphertext: col(&r, 5)?,
            })
        })
        .transpose()
    }

    async fn change_secret_versions(
        &self,
        path: &SecretPath,
        versions: &[u64],
        change: VersionChange,
    ) -> Result<Vec<u64>, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let p = path.as_str();
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        if tx
            .query_opt("SELECT 1 FROM secrets WHERE path = $1 FOR UPDATE", &[&p])
            .await
            .map_err(backend)?
            .is_none()
        {
            return Err(StoreError::SecretNotFound(p.to_owned()));
        }
        let mut changed = Vec::new();
        for &v in versions {
            let version = crate::codec::version_i64(v)?;
            let n = match change {
                VersionChange::Delete(at) => {
                    tx.execute(
                        "UPDATE secret_versions SET deleted_at = $3 WHERE path = $1 AND version = $2 \
                         AND deleted_at IS NULL AND destroyed_at IS NULL",
                        &[&p, &version, &at],
                    )
                    .await
                }
                VersionChange::Undelete => {
                    tx.execute(
                        "UPDATE secret_versions SET deleted_at = NULL WHERE path = $1 AND version = $2 \
                         AND deleted_at IS NOT NULL AND destroyed_at IS NULL",
                        &[&p, &version],
                    )
                    .await
                }
                VersionChange::Destroy(at) => {
                    tx.execute(
                        "UPDATE secret_versions SET destroyed_at = $3, sealed_key = NULL, ciphertext = NULL \
                         WHERE path = $1 AND version = $2 AND destroyed_at IS NULL",
                        &[&p, &version, &at],
                    )
                    .await
                }
            }
            .map_err(backend)?;
            if n == 0 {
                let known = tx
                    .query_opt(
                        "SELECT 1 FROM secret_versions WHERE path = $1 AND version = $2",
                        &[&p, &version],
                    )
                    .await
                    .map_err(backend)?;
                if known.is_none() {
                    return Err(StoreError::SecretVersionNotFound { path: p.to_owned(), version: v });
                }
            } else if !changed.contains(&v) {
                changed.push(v);
            }
        }
        if !changed.is_empty() {
            self.notify(&tx, &Change::SecretChanged { path: path.clone() }).await?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(changed)
    }

    async fn put_policy(
        &self,
        id: &str,
        namespace: &Namespace,
        text: &str,
        author: &str,
        now: i64,
    ) -> Result<PolicyVersion, StoreError> {
        self.write_policy_version(id, Some(namespace), Some(text), author, now).await
    }

    async fn delete_policy(&self, id: &str, author: &str, now: i64) -> Result<PolicyVersion, StoreError> {
        self.write_policy_version(id, None, None, author, now).await
    }

    async fn list_policies(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT DISTINCT ON (id) id, version, text, created_at, author, namespace FROM policies \
                 ORDER BY id, version DESC",
                &[],
            )
            .await
            .map_err(backend)?;
        let all: Vec<PolicyVersion> = rows.iter().map(pg_policy_row).collect::<Result<_, _>>()?;
        Ok(all.into_iter().filter(|p| p.text.is_some()).collect())
    }

    async fn policy_history(&self, id: &str) -> Result<Vec<PolicyVersion>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(
                "SELECT id, version, text, created_at, author, namespace FROM policies WHERE id = $1 ORDER BY version",
                &[&id],
            )
            .await
            .map_err(backend)?;
        rows.iter().map(pg_policy_row).collect()
    }

    async fn policies_revision(&self) -> Result<u64, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn.query_one("SELECT COALESCE(MAX(seq), 0) FROM policies", &[]).await.map_err(backend)?;
        Ok(u64::try_from(col::<i64>(&row, 0)?).unwrap_or(0))
    }

    async fn create_db_lease(&self, l: &DbLease) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let conn = self.pool.get().await?;
        conn.execute(
            &format!("INSERT INTO db_leases ({LEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"),
            &[
                &l.id,
                &l.role,
                &l.connection,
                &l.template,
                &l.identity,
                &l.state.as_str(),
                &l.created_at,
                &l.expires_at,
                &l.max_expires_at,
            ],
        )
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn activate_db_lease(&self, id: &str) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let conn = self.pool.get().await?;
        let n = conn
            .execute("UPDATE db_leases SET state = 'active' WHERE id = $1 AND state = 'creating'", &[&id])
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn renew_db_lease(&self, id: &str, expires_at: i64) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let conn = self.pool.get().await?;
        let n = conn
            .execute(
                "UPDATE db_leases SET expires_at = $2 WHERE id = $1 AND state = 'active'",
                &[&id, &expires_at],
            )
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn get_db_lease(&self, id: &str) -> Result<Option<DbLease>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt(&format!("SELECT {LEASE_COLUMNS} FROM db_leases WHERE id = $1"), &[&id])
            .await
            .map_err(backend)?;
        row.as_ref().map(pg_lease_row).transpose()
    }

    async fn list_db_leases(&self) -> Result<Vec<DbLease>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query(&format!("SELECT {LEASE_COLUMNS} FROM db_leases ORDER BY id"), &[])
            .await
            .map_err(backend)?;
        rows.iter().map(pg_lease_row).collect()
    }

    async fn delete_db_lease(&self, id: &str) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let conn = self.pool.get().await?;
        let n = conn.execute("DELETE FROM db_leases WHERE id = $1", &[&id]).await.map_err(backend)?;
        Ok(n == 1)
    }

    async fn load_authority_versioned(&self) -> Result<Option<StoredAuthority>, StoreError> {
        let conn = self.pool.get().await?;
        Self::read_authority(&*conn).await
    }

    async fn authority_version(&self) -> Result<Option<u64>, StoreError> {
        let conn = self.pool.get().await?;
        let row = conn
            .query_opt("SELECT version FROM authority WHERE singleton = 1", &[])
            .await
            .map_err(backend)?;
        row.map(|r| authority_version(col(&r, 0)?)).transpose()
    }

    async fn write_authority(
        &self,
        expected: Option<u64>,
        state: &str,
    ) -> Result<AuthorityWrite, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        // The first state is inserted only if there is none, a later one replaces the version the
        // caller knows: of two replicas racing, the second finds the row taken or changed, writes
        // nothing and gets the winner's state.
        let written = match expected {
            None => {
                tx.query_opt(
                    "INSERT INTO authority (singleton, state, version) VALUES (1, $1, 1)
                     ON CONFLICT (singleton) DO NOTHING RETURNING version",
                    &[&state],
                )
                .await
            }
            Some(v) => {
                let v =
                    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("authority version {v}")))?;
                tx.query_opt(
                    "UPDATE authority SET state = $1, version = version + 1
                     WHERE singleton = 1 AND version = $2 RETURNING version",
                    &[&state, &v],
                )
                .await
            }
        }
        .map_err(backend)?;
        let Some(row) = written else {
            return Ok(AuthorityWrite::Conflict(Self::read_authority(&tx).await?));
        };
        let version = authority_version(col(&row, 0)?)?;
        self.notify(&tx, &Change::AuthorityChanged { version }).await?;
        tx.commit().await.map_err(backend)?;
        Ok(AuthorityWrite::Written(version))
    }

    async fn try_lead(&self) -> Result<bool, StoreError> {
        let mut lead = self.lead.lock().await;
        if let Some(session) = &lead.session {
            // PostgreSQL ends a session's advisory locks with the session: a session that broke
            // (a restart, a network failure) lost the lead, which another replica may hold by now.
            let alive = !session.is_closed()
                && matches!(
                    tokio::time::timeout(LEAD_CHECK, session.simple_query("SELECT 1")).await,
                    Ok(Ok(_))
                );
            if !alive {
                if lead.held {
                    tracing::warn!(database = %self.pool.url, "lost the lead of key rotation (its PostgreSQL session ended); another replica may take it");
                }
                *lead = Lead::default();
            }
        }
        if lead.held {
            return Ok(true);
        }
        if lead.session.is_none() {
            let session = self.pool.connect().await?;
            // The database notices a leader that vanished without closing its connection (a host
            // that lost power) by these keepalives, and then frees the lead: within about 30 s.
            session
                .batch_execute(
                    "SET tcp_keepalives_idle = 15; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3",
                )
                .await
                .map_err(backend)?;
            lead.session = Some(session);
        }
        let Some(session) = &lead.session else { return Ok(false) };
        let row = tokio::time::timeout(
            LEAD_CHECK,
            session.query_one("SELECT pg_try_advisory_lock($1)", &[&LEAD_LOCK]),
        )
        .await
        .map_err(|_| StoreError::Backend("PostgreSQL did not answer the lead request in time".into()))?
        .map_err(backend)?;
        let held: bool = col(&row, 0)?;
        if held {
            tracing::info!(database = %self.pool.url, "this replica now leads key rotation");
            lead.held = true;
        }
        Ok(held)
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        let receiver = self.hub.changes.subscribe();
        if !self.hub.started.swap(true, Ordering::SeqCst) {
            let (url, tls) = (self.pool.url.clone(), self.pool.tls.clone());
            let (origin, changes) = (self.origin.clone(), self.hub.changes.clone());
            tokio::spawn(listen(url, tls, origin, changes, self.hub.stop.subscribe()));
        }
        Some(receiver)
    }

    async fn append_audit(&self, seal: AuditSeal) -> Result<AuditHead, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        let row = tx
            .query_one("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE", &[])
            .await
            .map_err(backend)?;
        let head = AuditHead { seq: u64::try_from(col::<i64>(&row, 0)?).unwrap_or(0), hash: col(&row, 1)? };
        let records = seal(&head);
        let next = crate::codec::audit_numbering(&head, &records)?;
        if records.is_empty() {
            return Ok(head);
        }
        let stmt = tx
            .prepare(
                "INSERT INTO audit_log (seq, time_ms, event, spiffe_id, node, fields, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .await
            .map_err(backend)?;
        for r in &records {
            let fields = crate::codec::encode_audit_fields(&r.fields)?;
            let seq =
                i64::try_from(r.seq).map_err(|_| StoreError::Corrupt("audit sequence overflow".into()))?;
            tx.execute(&stmt, &[&seq, &r.time_ms, &r.event, &r.spiffe_id(), &r.node(), &fields, &r.hash])
                .await
                .map_err(backend)?;
        }
        let seq = i64::try_from(next.seq).unwrap_or(i64::MAX);
        tx.execute("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1", &[&seq, &next.hash])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(next)
    }

    async fn audit_head(&self) -> Result<AuditHead, StoreError> {
        let conn = self.pool.get().await?;
        let row =
            conn.query_one("SELECT seq, hash FROM audit_head WHERE id = 1", &[]).await.map_err(backend)?;
        Ok(AuditHead { seq: u64::try_from(col::<i64>(&row, 0)?).unwrap_or(0), hash: col(&row, 1)? })
    }

    async fn audit_records(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let (event, prefix) = match q.event_match() {
            Some((e, true)) => (Some(crate::codec::like_prefix(e)), true),
            Some((e, false)) => (Some(e.to_owned()), false),
            None => (None, false),
        };
        let event_cond = if prefix { "event LIKE $4 ESCAPE '\\'" } else { "event = $4" };
        let sql = format!(
            "SELECT seq, time_ms, event, fields, hash FROM audit_log
             WHERE seq > $1 AND ($2::text IS NULL OR spiffe_id = $2) AND ($3::text IS NULL OR node = $3)
             AND ($4::text IS NULL OR {event_cond}) AND ($5::bigint IS NULL OR time_ms >= $5)
             AND ($6::bigint IS NULL OR time_ms < $6)
             ORDER BY seq LIMIT $7"
        );
        let after = i64::try_from(q.after_seq).unwrap_or(i64::MAX);
        let limit = i64::from(q.limit);
        let conn = self.pool.get().await?;
        let rows = conn
            .query(&sql, &[&after, &q.spiffe_id, &q.node, &event, &q.since_ms, &q.until_ms, &limit])
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    seq: u64::try_from(col::<i64>(r, 0)?).unwrap_or(0),
                    time_ms: col(r, 1)?,
                    event: col(r, 2)?,
                    fields: crate::codec::decode_audit_fields(col(r, 3)?),
                    hash: col(r, 4)?,
                })
            })
            .collect()
    }

    async fn add_audit_checkpoint(&self, cp: &AuditCheckpoint) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let conn = self.pool.get().await?;
        let seq = i64::try_from(cp.seq).unwrap_or(i64::MAX);
        let n = conn
            .execute(
                "INSERT INTO audit_checkpoints (seq, hash, time_ms, key_id, signature)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (seq) DO NOTHING",
                &[&seq, &cp.hash, &cp.time_ms, &cp.key_id, &cp.signature],
            )
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn audit_checkpoints(&self) -> Result<Vec<AuditCheckpoint>, StoreError> {
        let conn = self.pool.get().await?;
        let rows = conn
            .query("SELECT seq, hash, time_ms, key_id, signature FROM audit_checkpoints ORDER BY seq", &[])
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(AuditCheckpoint {
                    seq: u64::try_from(col::<i64>(r, 0)?).unwrap_or(0),
                    hash: col(r, 1)?,
                    time_ms: col(r, 2)?,
                    key_id: col(r, 3)?,
                    signature: col(r, 4)?,
                })
            })
            .collect()
    }

    async fn audit_keys(&self, k: &AuditKeyRecord) -> Result<Vec<AuditKeyRecord>, StoreError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.pool.get().await?;
        let tx = conn.transaction().await.map_err(backend)?;
        // The head row serializes the first key's creation among replicas.
        tx.execute("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE", &[]).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO audit_keys (id, algorithm, public_key, sealed_key, created_at)
             SELECT $1, $2, $3, $4, $5 WHERE NOT EXISTS (SELECT 1 FROM audit_keys)",
            &[&k.id, &k.algorithm, &k.public_key, &k.sealed_key, &k.created_at],
        )
        .await
        .map_err(backend)?;
        let rows = tx
            .query("SELECT id, algorithm, public_key, sealed_key, created_at FROM audit_keys ORDER BY created_at, id", &[])
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(AuditKeyRecord {
                    id: col(r, 0)?,
                    algorithm: col(r, 1)?,
                    public_key: col(r, 2)?,
                    sealed_key: col(r, 3)?,
                    created_at: col(r, 4)?,
                })
            })
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let conn = self.pool.get().await?;
        conn.query_one("SELECT 1", &[]).await.map_err(backend)?;
        Ok(())
    }
}

/// Keeps a listening connection open and forwards the changes of other stores to `changes`, until
/// the store is dropped (`stop`). A lost connection is opened again, with growing pauses, and each
/// (re)opening is followed by a [`Change::Resync`]: what committed while nobody listened is lost.
async fn listen(
    url: PgUrl,
    tls: PgTls,
    origin: Arc<str>,
    changes: broadcast::Sender<Change>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pause = CONNECT_RETRY;
    let mut failing = false;
    loop {
        let ended = tokio::select! {
            ended = listen_once(&url, &tls, &origin, &changes, &mut failing) => ended,
            _ = stop.changed() => return,
        };
        if ended.heard {
            pause = CONNECT_RETRY;
        }
        if !failing {
            tracing::warn!(database = %url, error = %ended.why, "the connection that hears other replicas' changes failed; reconnecting (agents get a fresh snapshot once it is back)");
            failing = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
        pause = (pause * 2).min(LISTEN_RETRY_MAX);
    }
}

/// How a listening connection ended.
struct ListenEnd {
    why: String,
    /// Whether it got as far as listening.
    heard: bool,
}

/// One listening connection, from opening to failure.
async fn listen_once(
    url: &PgUrl,
    tls: &PgTls,
    origin: &str,
    changes: &broadcast::Sender<Change>,
    failing: &mut bool,
) -> ListenEnd {
    let end = |why: String, heard| ListenEnd { why, heard };
    let (client, mut connection) = match open(url, tls).await {
        Ok(opened) => opened,
        Err((e, _)) => return end(e.to_string(), false),
    };
    // The connection's messages (notifications among them) arrive by polling it, which also carries
    // the client's requests; a task does that and hands the notifications over.
    let (heard, mut notes) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
            let note = match message {
                Some(Ok(AsyncMessage::Notification(n))) => Ok(n),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Err(describe(&e)),
                None => Err("the connection was closed".to_owned()),
            };
            let last = note.is_err();
            if heard.send(note).is_err() || last {
                return;
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        return end(describe(&e), false);
    }
    if std::mem::take(failing) {
        tracing::info!(database = %url, "hearing other replicas' changes again");
    }
    // Every change from here on is heard; one that committed before may have been missed.
    let _ = changes.send(Change::Resync);
    while let Some(note) = notes.recv().await {
        let note = match note {
            Ok(note) => note,
            Err(why) => return end(why, true),
        };
        let change = match serde_json::from_str::<NoticeIn>(note.payload()) {
            Ok(notice) if notice.o == origin => continue,
            Ok(notice) => notice.c,
            // A notice this build cannot read (from a newer vouch): re-read everything.
            Err(_) => Change::Resync,
        };
        // No receiver (the server is stopping) is not an error.
        let _ = changes.send(change);
    }
    end("the connection was closed".to_owned(), true)
}

/// Aborts a task when dropped, so that it cannot outlive its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_the_url_and_shown_without_the_password() {
        let (text, mode, ca) = take_tls_params(
            "postgres://u:pw@h/db?connect_timeout=5&sslmode=verify-full&sslrootcert=%2Fetc%2Fca%20x.pem",
        )
        .unwrap();
        assert_eq!(text, "postgres://u:pw@h/db?connect_timeout=5");
        assert_eq!((mode.as_deref(), ca), (Some("verify-full"), Some("/etc/ca x.pem".into())));
        assert_eq!(take_tls_params("postgres://h/db").unwrap(), ("postgres://h/db".to_owned(), None, None));
        assert!(take_tls_params("postgres://h/db?sslrootcert=%2").is_err());
        let url = PgUrl::parse("postgres://u:s3cret@h/db?sslmode=require&sslrootcert=/ca.pem").unwrap();
        assert_eq!(url.to_string(), "postgres://u:***@h:5432/db?sslmode=verify-full");
        assert_eq!(url.ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
        let plain = PgUrl::parse("postgres://u:s3cret@h/db?sslmode=prefer").unwrap();
        assert_eq!(
            (plain.to_string().as_str(), plain.ca_file.is_none()),
            ("postgres://u:***@h:5432/db", true)
        );
    }

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
