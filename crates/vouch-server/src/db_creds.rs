//! Short-lived PostgreSQL credentials: on request, a login role with a random password, `VALID
//! UNTIL` its lease's end and the grants of a configured role template; at expiry or revocation
//! its sessions are ended and the role is dropped.
//!
//! Crash safety: a lease is recorded (`creating`) before its role exists, and the role is made in
//! one PostgreSQL transaction whose statements are sent one by one (so a server that dies mid-way
//! leaves an open transaction that PostgreSQL rolls back when it notices the closed connection).
//! At start and then periodically, the server drops every role named like its own (`vouch_` and 32
//! hex digits) that no lease accounts for, and gives up leases stuck in `creating` (dropping their
//! role if it exists).
//!
//! The password comes from the OS CSPRNG (aws-lc-rs), is sent to PostgreSQL once in `CREATE ROLE`
//! and to the caller once in the answer; it reaches no log line, audit record, error message or
//! store row. The privileged connection's password is read from a file or the environment, never
//! written in the URL.
//!
//! Who may ask: an admin, and a workload through its agent when a grant permits `issue` on
//! `DbRole::"<connection>/<template>"`.
//!
//! Connections: a small pool per configured database ([`Pools`], `pool_size`, default 4), so an
//! issue does not pay for a new session (a backend process and a SCRAM exchange: about as much
//! as the issue itself). A connection goes back to the pool only after the work on it succeeded;
//! after any failure, or an issue abandoned at its timeout, it is closed, so PostgreSQL rolls back
//! whatever it was in and no session in an unknown state is reused. A connection the server closed
//! (a restart, `pg_terminate_backend`) is dropped and replaced by the next call; a `BEGIN` that
//! fails on a reused connection for a reason other than the database's answer is tried once more
//! on a new one (nothing was done on the broken one).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tokio::sync::watch;
use vouch_api::db::{AgentDbCredsRequest, DbCreds, DbCredsRequest, DbLeaseList, DbLeaseView, DbRenewRequest};
use vouch_api::paths;
use vouch_core::grant::{AccessRequest, Action, Resource, RoleName};
use vouch_store::{DbLease, LeaseState, PgConn, PgPool, PgUrl, PoolRole, StoreError};
use zeroize::Zeroizing;

use crate::auth::Caller;
use crate::config::{ConfigError, EnvLookup, HumanDuration};
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::AppState;

type AppResult<T> = Result<T, ApiError>;

/// Every role vouch makes is named this prefix and the lease id (32 hex digits).
pub const ROLE_PREFIX: &str = "vouch_";
/// The template text replaced by the generated role's name, quoted as an identifier.
pub const NAME_PLACEHOLDER: &str = "{{name}}";
/// A template's default lease lifetime unless configured.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// A template's longest lease lifetime unless configured.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long making a role may take; past it the issue fails and cleans up.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(20);
/// A lease still `creating` this long after its issue began is abandoned (its server died, or
/// gave up): cleaned up by any server. Longer than [`ISSUE_TIMEOUT`], so a live issue is never
/// taken for a dead one.
const ABANDONED_AFTER: i64 = 30;
/// How often expired leases are looked for.
const EXPIRY_TICK: Duration = Duration::from_secs(1);
/// How often roles no lease accounts for are looked for (in expiry ticks).
const ORPHAN_SWEEP_TICKS: u32 = 60;

/// `[database.<connection>]` in the server's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileDatabase {
    url: String,
    password_file: Option<PathBuf>,
    password_env: Option<String>,
    pool_size: Option<usize>,
    #[serde(default)]
    roles: BTreeMap<String, FileTemplate>,
}

/// `[database.<connection>.roles.<template>]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTemplate {
    statements: Vec<String>,
    default_ttl: Option<HumanDuration>,
    max_ttl: Option<HumanDuration>,
}

/// A role template: what a dynamic user of a connection is granted, and for how long.
#[derive(Debug, Clone)]
pub struct RoleTemplate {
    /// SQL statements run as the privileged role after `CREATE ROLE`, [`NAME_PLACEHOLDER`]
    /// replaced by the quoted role name.
    pub statements: Vec<String>,
    /// The lease lifetime when none is asked for.
    pub default_ttl: Duration,
    /// The longest lifetime, renewals included.
    pub max_ttl: Duration,
}

/// A configured database: the privileged role's connection and its role templates.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The privileged role's connection (its password hidden in `Debug` and `Display`).
    pub url: PgUrl,
    /// Role templates by name.
    pub templates: BTreeMap<String, RoleTemplate>,
    /// The most connections open to it at once.
    pub pool_size: usize,
}

/// Connections per database unless `pool_size` says otherwise (OpenBao's database engine opens at
/// most 4 too).
pub const DEFAULT_POOL_SIZE: usize = 4;

/// The connection pools of the configured databases, by connection name.
#[derive(Debug, Default)]
pub struct Pools(BTreeMap<String, PgPool>);

impl Pools {
    /// A pool per configured database; no connection is opened yet.
    pub fn new(databases: &BTreeMap<String, DatabaseConfig>) -> Result<Self, StoreError> {
        let role = PoolRole {
            outage: "database credentials on it cannot be issued, renewed or revoked",
            size_setting: "database.<connection>.pool_size",
        };
        let pools = databases
            .iter()
            .map(|(name, db)| Ok((name.clone(), PgPool::new(&db.url, db.pool_size, role)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Self(pools))
    }
}

/// One segment of a `DbRole` name: what a connection or template may be called.
fn check_segment(what: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "{what} `{name}`: use 1 to 64 of A-Z, a-z, 0-9, `_`, `-`, `.` (it is part of the grant's DbRole name)"
        )))
    }
}

/// Builds the `[database.*]` sections: reads each privileged password from its file or variable.
pub(crate) fn build(
    file: BTreeMap<String, FileDatabase>,
    env: EnvLookup<'_>,
) -> Result<BTreeMap<String, DatabaseConfig>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, db) in file {
        check_segment("database", &name)?;
        let at = format!("database.{name}");
        let mut url = PgUrl::parse(&db.url).map_err(|e| ConfigError::Invalid(format!("{at}.url: {e}")))?;
        if url.has_password() {
            return Err(ConfigError::Invalid(format!(
                "{at}.url holds a password: put it in password_file or password_env instead (configuration files get copied and shown)"
            )));
        }
        let password = match (db.password_file, db.password_env) {
            (Some(path), None) => {
                let text = Zeroizing::new(std::fs::read(&path).map_err(|e| {
                    ConfigError::Invalid(format!("{at}.password_file `{}`: {e}", path.display()))
                })?);
                // A file written by `echo` ends with a newline that is not part of the password.
                let end = text.iter().rposition(|b| !matches!(b, b'\n' | b'\r')).map_or(0, |i| i + 1);
                Some(Zeroizing::new(text.get(..end).unwrap_or_default().to_vec()))
            }
            (None, Some(var)) => Some(Zeroizing::new(
                env(&var)
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!("{at}.password_env: the variable `{var}` is not set"))
                    })?
                    .into_bytes(),
            )),
            (None, None) => None,
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(format!(
                    "{at}: set password_file or password_env, not both"
                )))
            }
        };
        if let Some(p) = &password {
            url.set_password(p);
        }
        if db.roles.is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{at}: no role templates; add [{at}.roles.<name>] with statements"
            )));
        }
        let mut templates = BTreeMap::new();
        for (tname, t) in db.roles {
            check_segment("role template", &tname)?;
            let at = format!("{at}.roles.{tname}");
            if t.statements.is_empty() || t.statements.iter().any(|s| s.trim().is_empty()) {
                return Err(ConfigError::Invalid(format!("{at}.statements: give at least one, none empty")));
            }
            let default_ttl = t.default_ttl.map_or(DEFAULT_TTL, |d| d.0);
            let max_ttl = t.max_ttl.map_or(DEFAULT_MAX_TTL.max(default_ttl), |d| d.0);
            if default_ttl.as_secs() == 0 || default_ttl > max_ttl {
                return Err(ConfigError::Invalid(format!(
                    "{at}: default_ttl must be at least 1s and at most max_ttl"
                )));
            }
            templates.insert(tname, RoleTemplate { statements: t.statements, default_ttl, max_ttl });
        }
        let pool_size = db.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        if !(1..=vouch_store::MAX_POOL_SIZE).contains(&pool_size) {
            return Err(ConfigError::Invalid(format!(
                "{at}.pool_size: choose 1 to {}",
                vouch_store::MAX_POOL_SIZE
            )));
        }
        out.insert(name, DatabaseConfig { url, templates, pool_size });
    }
    Ok(out)
}

/// `name` quoted as an SQL identifier (PostgreSQL's `quote_ident`: in double quotes, a double
/// quote doubled).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `text` quoted as an SQL string literal (`quote_literal`: in single quotes, a quote doubled).
/// Standard-conforming strings (on by default since PostgreSQL 9.1) keep backslashes literal.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Whether `name` is a role vouch made: the prefix and 32 lowercase hex digits.
pub fn is_vouch_role(name: &str) -> bool {
    name.strip_prefix(ROLE_PREFIX)
        .is_some_and(|id| id.len() == 32 && id.chars().all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f')))
}

/// A template's statements for role `role`, the placeholder replaced by the quoted name.
pub fn render(statements: &[String], role: &str) -> Vec<String> {
    let quoted = quote_ident(role);
    statements.iter().map(|s| s.replace(NAME_PLACEHOLDER, &quoted)).collect()
}

/// A password of 32 characters from the 62 letters and digits, drawn from the OS CSPRNG without
/// bias (about 190 bits). Letters and digits need no quoting in SQL or in a connection URL.
fn random_password() -> AppResult<Zeroizing<String>> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = Zeroizing::new(String::with_capacity(32));
    while out.len() < 32 {
        let bytes = Zeroizing::new(
            vouch_ca::keys::random_bytes::<64>().map_err(|e| ApiError::internal("randomness", e))?,
        );
        // 248 = 4 * 62: bytes at or above it are dropped so every character is equally likely.
        for &b in bytes.iter().filter(|&&b| b < 248) {
            if out.len() == 32 {
                break;
            }
            if let Some(&c) = ALPHABET.get(usize::from(b % 62)) {
                out.push(char::from(c));
            }
        }
    }
    Ok(out)
}

/// A PostgreSQL failure as the caller may see it: the database's own message (it never quotes
/// the password: the statement that carries it is not in the message), never the URL's secret.
fn db_failed(connection: &str, doing: &str, e: &tokio_postgres::Error) -> ApiError {
    let why =
        e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{}: {}", d.code().code(), d.message()));
    tracing::warn!(connection, doing, error = %why, "database credentials: PostgreSQL refused");
    ApiError::unavailable(format!("database `{connection}`: {doing} failed: {why}"))
}

fn view(l: DbLease) -> DbLeaseView {
    DbLeaseView {
        id: l.id,
        role: l.role,
        connection: l.connection,
        template: l.template,
        identity: l.identity,
        state: l.state.as_str().to_owned(),
        created_at: l.created_at,
        expires_at: l.expires_at,
        max_expires_at: l.max_expires_at,
    }
}

/// The connection and template a `DbRole` name names: 404 when either is not configured.
fn lookup<'a>(
    state: &'a AppState,
    role: &RoleName,
) -> AppResult<(&'a str, &'a DatabaseConfig, &'a str, &'a RoleTemplate)> {
    let Some((conn, tmpl)) = role.as_str().split_once('/') else {
        return Err(ApiError::bad_request(format!(
            "role `{role}`: write it as <connection>/<template>, e.g. orders/readonly"
        )));
    };
    let (cname, db) = state.config.databases.get_key_value(conn).ok_or_else(|| {
        let known: Vec<&str> = state.config.databases.keys().map(String::as_str).collect();
        ApiError::not_found(format!("no database connection `{conn}` is configured (configured: {known:?})"))
    })?;
    let (tname, t) = db.templates.get_key_value(tmpl).ok_or_else(|| {
        let known: Vec<&str> = db.templates.keys().map(String::as_str).collect();
        ApiError::not_found(format!("database `{conn}` has no role template `{tmpl}` (it has: {known:?})"))
    })?;
    Ok((cname, db, tname, t))
}

fn parse_role(text: &str) -> AppResult<RoleName> {
    RoleName::new(text).map_err(|e| ApiError::bad_request(format!("role: {e}")))
}

/// The lifetime asked for, checked against the template.
fn lifetime(t: &RoleTemplate, ttl: Option<u64>, role: &RoleName) -> AppResult<i64> {
    let secs = ttl.unwrap_or(t.default_ttl.as_secs());
    if secs == 0 {
        return Err(ApiError::bad_request("ttl: at least 1 second"));
    }
    if secs > t.max_ttl.as_secs() {
        return Err(ApiError::bad_request(format!(
            "ttl: {secs} s is over the max TTL of `{role}` ({} s)",
            t.max_ttl.as_secs()
        )));
    }
    i64::try_from(secs).map_err(|_| ApiError::bad_request("ttl: too large"))
}

/// A pooled connection that goes back to its pool only through [`Lent::done`]: dropped any other
/// way (an error, an abandoned issue) it is closed, and PostgreSQL rolls back what it was in.
struct Lent<'a>(Option<PgConn<'a>>);

impl Lent<'_> {
    /// The work on it succeeded: back to the pool.
    fn done(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.discard();
        }
    }
}

impl std::ops::Deref for Lent<'_> {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        // Present until `done` or drop, both of which consume it.
        self.0.as_deref().unwrap_or_else(|| unreachable!("a lent connection is present until returned"))
    }
}

/// A connection of `connection`'s pool.
async fn lend<'a>(state: &'a AppState, connection: &str) -> AppResult<Lent<'a>> {
    let pool = state.db_pools.0.get(connection).ok_or_else(|| {
        ApiError::unavailable(format!(
            "database `{connection}` has no connection pool (it is not configured)"
        ))
    })?;
    let conn = pool.get().await.map_err(|e| {
        // The URL in the message is shown without its password.
        tracing::warn!(connection, error = %e, "database credentials: cannot connect");
        ApiError::unavailable(format!("database `{connection}`: {e}"))
    })?;
    Ok(Lent(Some(conn)))
}

/// A connection of `connection`'s pool with a transaction begun on it. A `BEGIN` that fails without
/// an answer from the database (the connection broke while idle: a restart) is tried once more on
/// a new connection; nothing was done on the broken one.
async fn begin<'a>(state: &'a AppState, connection: &str) -> AppResult<Lent<'a>> {
    let mut retried = false;
    loop {
        let conn = lend(state, connection).await?;
        match conn.batch_execute("BEGIN").await {
            Ok(()) => return Ok(conn),
            Err(e) if !retried && e.as_db_error().is_none() => retried = true,
            Err(e) => return Err(db_failed(connection, "begin", &e)),
        }
    }
}

/// Makes `role` in one transaction: `CREATE ROLE … LOGIN PASSWORD … VALID UNTIL …`, then the
/// template's statements. Each statement is sent after the previous one answered, so PostgreSQL
/// never holds statements of a caller that is gone.
async fn create_role(
    state: &AppState,
    connection: &str,
    role: &str,
    password: &str,
    expires_at: i64,
    t: &RoleTemplate,
) -> AppResult<()> {
    let tx = begin(state, connection).await?;
    let until: String = tx
        .query_one("SELECT to_timestamp($1::float8)::text", &[&(expires_at as f64)])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| db_failed(connection, "reading the time", &e))?;
    let create = Zeroizing::new(format!(
        "CREATE ROLE {} LOGIN PASSWORD {} VALID UNTIL {}",
        quote_ident(role),
        quote_literal(password),
        quote_literal(&until)
    ));
    tx.batch_execute(&create).await.map_err(|e| db_failed(connection, "CREATE ROLE", &e))?;
    for (i, stmt) in render(&t.statements, role).iter().enumerate() {
        tx.batch_execute(stmt)
            .await
            .map_err(|e| db_failed(connection, &format!("template statement {}", i + 1), &e))?;
    }
    tx.batch_execute("COMMIT").await.map_err(|e| db_failed(connection, "commit", &e))?;
    tx.done();
    Ok(())
}

/// Ends `role`: no new logins, its sessions terminated, what it owns handed to the privileged
/// role (then its privileges dropped), the role dropped. Nothing to do if it does not exist.
async fn drop_role(client: &tokio_postgres::Client, connection: &str, role: &str) -> AppResult<()> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .map_err(|e| db_failed(connection, "looking up the role", &e))?
        .is_some();
    if !exists {
        return Ok(());
    }
    let q = quote_ident(role);
    // NOLOGIN first, so no session starts between the terminations and the drop.
    client
        .batch_execute(&format!("ALTER ROLE {q} NOLOGIN"))
        .await
        .map_err(|e| db_failed(connection, "ALTER ROLE NOLOGIN", &e))?;
    // REASSIGN and DROP OWNED need the privileges of the role: a CREATEROLE role that is not a
    // superuser gets them by granting itself membership (PostgreSQL 15 and 16 both allow it).
    client
        .batch_execute(&format!("GRANT {q} TO CURRENT_USER"))
        .await
        .map_err(|e| db_failed(connection, "GRANT role TO CURRENT_USER", &e))?;
    client
        .execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[&role])
        .await
        .map_err(|e| db_failed(connection, "pg_terminate_backend", &e))?;
    client
        .batch_execute(&format!(
            "REASSIGN OWNED BY {q} TO CURRENT_USER; DROP OWNED BY {q}; DROP ROLE IF EXISTS {q}"
        ))
        .await
        .map_err(|e| db_failed(connection, "DROP ROLE", &e))
}

/// Drops a lease's role and then forgets the lease (in that order: a crash between leaves a lease
/// whose role is gone, which the next expiry or revocation finishes).
async fn end_lease(state: &AppState, lease: &DbLease, why: &'static str) -> AppResult<()> {
    if !state.config.databases.contains_key(&lease.connection) {
        return Err(ApiError::unavailable(format!(
            "lease `{}` is on database `{}`, which is no longer configured: its role `{}` cannot be dropped",
            lease.id, lease.connection, lease.role
        )));
    }
    let client = lend(state, &lease.connection).await?;
    drop_role(&client, &lease.connection, &lease.role).await?;
    client.done();
    state.store.delete_db_lease(&lease.id).await?;
    tracing::info!(target: "vouch::audit", event = "db.lease.end", why, lease = %lease.id, role = %lease.role, connection = %lease.connection, template = %lease.template, identity = %lease.identity);
    Ok(())
}

/// Issues credentials for `role` to `identity`.
async fn issue(state: &AppState, identity: &str, role: &RoleName, ttl: Option<u64>) -> AppResult<DbCreds> {
    let (connection, _, template, t) = lookup(state, role)?;
    let ttl = lifetime(t, ttl, role)?;
    let max_ttl = i64::try_from(t.max_ttl.as_secs()).unwrap_or(i64::MAX);
    let id = vouch_ca::keys::random_id().map_err(|e| ApiError::internal("lease id", e))?;
    let name = format!("{ROLE_PREFIX}{id}");
    let now = state.now_secs();
    let lease = DbLease {
        id: id.clone(),
        role: name.clone(),
        connection: connection.to_owned(),
        template: template.to_owned(),
        identity: identity.to_owned(),
        state: LeaseState::Creating,
        created_at: now,
        expires_at: now.saturating_add(ttl),
        max_expires_at: now.saturating_add(max_ttl),
    };
    let password = random_password()?;
    // Recorded before the role exists: whatever happens next, the lease names the role to clean up.
    state.store.create_db_lease(&lease).await?;
    let made = tokio::time::timeout(
        ISSUE_TIMEOUT,
        create_role(state, connection, &name, &password, lease.expires_at, t),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::unavailable(format!(
            "database `{connection}`: making the role took over {} s",
            ISSUE_TIMEOUT.as_secs()
        )))
    });
    if let Err(e) = made {
        // The transaction rolled back: no role. If cleanup fails, the lease stays `creating` and
        // the sweep finishes it.
        let _ = end_lease(state, &lease, "issue failed").await;
        return Err(e);
    }
    if !state.store.activate_db_lease(&id).await? {
        // Another server gave the lease up as abandoned meanwhile: the role must not outlive it.
        let _ = end_lease(state, &lease, "issue abandoned").await;
        return Err(ApiError::unavailable(format!(
            "database `{connection}`: the lease was given up while its role was made (too slow); ask again"
        )));
    }
    tracing::info!(target: "vouch::audit", event = "db.creds.issue", lease = %id, role = %name, connection, template, identity, expires_at = lease.expires_at);
    let lease = DbLease { state: LeaseState::Active, ..lease };
    Ok(DbCreds { lease: view(lease), username: name, password: password.to_string() })
}

/// The admin routes of database credentials.
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::DB_CREDS, post(admin_issue))
        .route(paths::DB_LEASES, get(list))
        .route(paths::DB_LEASE_RENEW, post(renew))
        .route(paths::DB_LEASE_REVOKE, post(revoke))
}

/// The agent's route: credentials for one of its workloads.
pub(crate) fn agent_routes() -> Router<Arc<AppState>> {
    Router::new().route(paths::AGENT_DB_CREDS, post(agent_issue))
}

async fn admin_issue(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<DbCredsRequest>,
) -> AppResult<(StatusCode, Json<DbCreds>)> {
    let role = parse_role(&req.role)?;
    let creds = issue(&state, &caller.to_string(), &role, req.ttl).await?;
    Ok((StatusCode::CREATED, Json(creds)))
}

/// An agent asks for credentials for a workload it attested: the agent must serve the entry, and
/// a grant must permit the entry's SPIFFE ID to `issue` on the role.
async fn agent_issue(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<AgentDbCredsRequest>,
) -> AppResult<(StatusCode, Json<DbCreds>)> {
    let role = parse_role(&req.role)?;
    let (agent, entry) = crate::agent_api::workload_entry(&state, &caller, &req.entry_id).await?;
    let request = AccessRequest {
        principal: entry.spiffe_id.clone(),
        action: Action::Issue,
        resource: Resource::DbRole(role.clone()),
    };
    let decision = crate::policy::decide(&state, &request).await?;
    if !decision.allow {
        tracing::info!(target: "vouch::audit", event = "db.creds.denied", caller = %agent, spiffe_id = %entry.spiffe_id, role = %role, reasons = ?decision.reasons, errors = decision.errors.len());
        return Err(ApiError::forbidden(format!(
            "`{}` may not have credentials issued for database role `{role}`: {}",
            entry.spiffe_id,
            decision.explanation()
        )));
    }
    // Checked before anything is made: a ban or eviction committed meanwhile wins.
    crate::agent_api::still_admitted(&state, &agent).await?;
    let creds = issue(&state, entry.spiffe_id.as_str(), &role, req.ttl).await?;
    Ok((StatusCode::CREATED, Json(creds)))
}

async fn list(State(state): State<Arc<AppState>>) -> AppResult<Json<DbLeaseList>> {
    let leases = state.store.list_db_leases().await?.into_iter().map(view).collect();
    Ok(Json(DbLeaseList { leases }))
}

async fn load(state: &AppState, id: &str) -> AppResult<DbLease> {
    state
        .store
        .get_db_lease(id)
        .await?
        .ok_or_else(|| StoreError::LeaseNotFound(id.chars().take(64).collect()).into())
}

async fn renew(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<DbRenewRequest>,
) -> AppResult<Json<DbLeaseView>> {
    let lease = load(&state, &id).await?;
    if lease.state != LeaseState::Active {
        return Err(ApiError::conflict(format!(
            "lease `{id}` is still being created; renew it once it is active"
        )));
    }
    let role = parse_role(&format!("{}/{}", lease.connection, lease.template))?;
    let (connection, _, _, t) = lookup(&state, &role)?;
    let ttl = lifetime(t, req.ttl, &role)?;
    let now = state.now_secs();
    let expires_at = now.saturating_add(ttl).min(lease.max_expires_at);
    if expires_at <= lease.expires_at {
        return Err(ApiError::bad_request(format!(
            "lease `{id}` cannot be extended: it already runs to {} and may not run past {} (its max TTL); ask for new credentials",
            lease.expires_at, lease.max_expires_at
        )));
    }
    let client = lend(&state, connection).await?;
    let until: String = client
        .query_one("SELECT to_timestamp($1::float8)::text", &[&(expires_at as f64)])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| db_failed(connection, "reading the time", &e))?;
    client
        .batch_execute(&format!(
            "ALTER ROLE {} VALID UNTIL {}",
            quote_ident(&lease.role),
            quote_literal(&until)
        ))
        .await
        .map_err(|e| db_failed(connection, "ALTER ROLE VALID UNTIL", &e))?;
    client.done();
    if !state.store.renew_db_lease(&id, expires_at).await? {
        return Err(StoreError::LeaseNotFound(id).into());
    }
    tracing::info!(target: "vouch::audit", event = "db.lease.renew", %caller, lease = %lease.id, role = %lease.role, connection = %lease.connection, template = %lease.template, identity = %lease.identity, expires_at);
    Ok(Json(view(DbLease { expires_at, ..lease })))
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> AppResult<Json<DbLeaseView>> {
    let lease = load(&state, &id).await?;
    tracing::info!(target: "vouch::audit", event = "db.lease.revoke", %caller, lease = %lease.id, role = %lease.role, connection = %lease.connection, template = %lease.template, identity = %lease.identity);
    end_lease(&state, &lease, "revoked").await?;
    Ok(Json(view(lease)))
}

/// Drops the roles of expired leases, gives up abandoned `creating` ones, and drops roles no
/// lease accounts for. `sweep_all_creating`: at start on a server that is the only one (SQLite),
/// every `creating` lease is a dead one, whatever its age.
async fn sweep(state: &AppState, orphans: bool, sweep_all_creating: bool) {
    if state.config.databases.is_empty() {
        return;
    }
    if orphans {
        for connection in state.config.databases.keys() {
            if let Err(e) = drop_orphans(state, connection).await {
                tracing::warn!(connection, error = %e.detail().message, "database credentials: the sweep of unaccounted roles failed; it runs again");
            }
        }
    }
    let leases = match state.store.list_db_leases().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "database credentials: cannot list leases");
            return;
        }
    };
    let now = state.now_secs();
    for lease in leases {
        let why = match lease.state {
            LeaseState::Active if lease.expires_at <= now => "expired",
            LeaseState::Creating if sweep_all_creating || lease.created_at + ABANDONED_AFTER <= now => {
                "abandoned"
            }
            _ => continue,
        };
        if let Err(e) = end_lease(state, &lease, why).await {
            tracing::warn!(lease = %lease.id, error = %e.detail().message, "database credentials: cannot end the lease yet; trying again");
        }
    }
}

/// Drops the roles named like vouch's that no lease names. Roles are read before leases: a role
/// is made only after its lease is recorded, so a role seen here without a lease read after it
/// was never accounted for or its lease is ending.
async fn drop_orphans(state: &AppState, connection: &str) -> AppResult<()> {
    let client = lend(state, connection).await?;
    let rows = client
        .query("SELECT rolname::text FROM pg_roles WHERE rolname ~ '^vouch_[0-9a-f]{32}$'", &[])
        .await
        .map_err(|e| db_failed(connection, "listing roles", &e))?;
    let leases = state.store.list_db_leases().await?;
    for row in rows {
        let Ok(role) = row.try_get::<_, String>(0) else { continue };
        if !is_vouch_role(&role) || leases.iter().any(|l| l.role == role) {
            continue;
        }
        drop_role(&client, connection, &role).await?;
        tracing::info!(target: "vouch::audit", event = "db.role.orphan_dropped", role = %role, connection);
    }
    client.done();
    Ok(())
}

/// The background task: a sweep at start (roles a crash left behind), then expired leases every
/// second and unaccounted roles every minute.
pub(crate) async fn expirer(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let single = matches!(state.config.store, crate::config::StoreConfig::Sqlite { .. });
    sweep(&state, true, single).await;
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_TICK) => {}
            _ = shutdown.changed() => break,
        }
        ticks = ticks.wrapping_add(1);
        sweep(&state, ticks.is_multiple_of(ORPHAN_SWEEP_TICKS), false).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_and_recognised() {
        assert_eq!(quote_ident("vouch_ab"), "\"vouch_ab\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        let id = "0123456789abcdef0123456789abcdef";
        assert!(is_vouch_role(&format!("vouch_{id}")));
        for bad in [
            "vouch_admin",
            "vouch_0123",
            "vouch_0123456789ABCDEF0123456789abcdef",
            "other_0123456789abcdef0123456789abcdef",
        ] {
            assert!(!is_vouch_role(bad), "{bad}");
        }
        let stmts = vec!["GRANT SELECT ON t TO {{name}}".to_owned(), "SELECT 1".to_owned()];
        assert_eq!(render(&stmts, "vouch_x"), ["GRANT SELECT ON t TO \"vouch_x\"", "SELECT 1"]);
    }

    #[test]
    fn passwords_are_letters_and_digits_and_differ() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(*a, *b);
    }

    #[test]
    fn config_is_checked() {
        let env = |k: &str| (k == "PW").then(|| "s3cret".to_owned());
        let parse = |text: &str| {
            let file: BTreeMap<String, FileDatabase> = toml::from_str(text).unwrap();
            build(file, &env)
        };
        let ok = parse(
            r#"[orders]
url = "postgres://admin@127.0.0.1:5432/orders"
password_env = "PW"
[orders.roles.readonly]
statements = ["GRANT SELECT ON ALL TABLES IN SCHEMA public TO {{name}}"]
default_ttl = "5m"
max_ttl = "1h"
"#,
        )
        .unwrap();
        let db = &ok["orders"];
        assert!(db.url.has_password());
        assert!(!format!("{db:?}").contains("s3cret"));
        assert_eq!(db.templates["readonly"].max_ttl, Duration::from_secs(3600));
        for (bad, why) in [
            (
                r#"[orders]
url = "postgres://admin:pw@127.0.0.1/orders"
[orders.roles.r]
statements = ["SELECT 1"]"#,
                "holds a password",
            ),
            (
                r#"[orders]
url = "postgres://admin@127.0.0.1/orders"
password_env = "NOPE"
[orders.roles.r]
statements = ["SELECT 1"]"#,
                "not set",
            ),
            (
                r#"[orders]
url = "postgres://admin@127.0.0.1/orders""#,
                "no role templates",
            ),
            (
                r#"["a/b"]
url = "postgres://admin@127.0.0.1/orders"
["a/b".roles.r]
statements = ["SELECT 1"]"#,
                "database `a/b`",
            ),
            (
                r#"[orders]
url = "postgres://admin@127.0.0.1/orders"
[orders.roles.r]
statements = ["SELECT 1"]
default_ttl = "2h"
max_ttl = "1h""#,
                "at most max_ttl",
            ),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("pw@"), "{err}");
        }
    }
}
