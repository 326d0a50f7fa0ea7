//! Secrets by identity: the secret store's admin API and reads on behalf of attested workloads.
//!
//! Values are sealed by envelope encryption ([`vouch_ca::envelope`]): a fresh data key per
//! version, sealed under the key-encryption key, with the path and version as associated data.
//! The plaintext exists only in zeroizing buffers while a request is served: it never reaches the
//! store, a log line, an audit record (which carry path and version) or an error message.
//!
//! Whether a workload may read a secret is decided by the grants (`crate::policy`): `read` on
//! `Secret::"<path>"` for the workload's SPIFFE ID. No permit means deny, so with no policies
//! every read is refused, with the reason.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use vouch_api::paths;
use vouch_api::secrets::{
    AgentSecretRequest, AgentSecretResponse, SecretList, SecretListQuery, SecretMeta, SecretPut, SecretQuery,
    SecretValue, SecretVersion, SecretVersions, SecretWritten, VersionState, VersionsChanged,
    VersionsRequest,
};
use vouch_core::grant::{AccessRequest, Action, Resource};
use vouch_core::secret::{check_meta, check_value, MAX_VERSIONS};
use vouch_core::{SecretPath, SpiffeId};
use vouch_store::{NewSecretVersion, SecretRecord, SecretVersionRecord, StoreError, VersionChange};
use zeroize::Zeroizing;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiQuery};
use crate::state::AppState;

type AppResult<T> = Result<T, ApiError>;

/// Most versions named in one delete, undelete or destroy request.
pub const MAX_VERSIONS_PER_REQUEST: usize = 100;

/// How many times a write retries when another writer took the next version first.
const WRITE_ATTEMPTS: usize = 8;

/// The admin routes of the secret store.
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::SECRETS, get(list))
        .route(paths::SECRET, get(read).put(put))
        .route(paths::SECRET_VERSIONS, get(versions))
        .route(paths::SECRET_DELETE, post(delete))
        .route(paths::SECRET_UNDELETE, post(undelete))
        .route(paths::SECRET_DESTROY, post(destroy))
}

/// The agent's route: a secret read for one of its workloads.
pub(crate) fn agent_routes() -> Router<Arc<AppState>> {
    Router::new().route(paths::AGENT_SECRET, post(agent_read))
}

fn parse_path(text: &str) -> AppResult<SecretPath> {
    SecretPath::parse(text).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn meta(record: SecretRecord) -> SecretMeta {
    SecretMeta {
        path: record.path,
        owner: record.owner,
        purpose: record.purpose,
        rotation_due: record.rotation_due,
        created_at: record.created_at,
        updated_at: record.updated_at,
        current_version: record.current_version,
    }
}

fn state_of(v: &SecretVersionRecord) -> VersionState {
    if v.destroyed_at.is_some() {
        VersionState::Destroyed
    } else if v.deleted_at.is_some() {
        VersionState::Deleted
    } else {
        VersionState::Live
    }
}

fn version_view(v: SecretVersionRecord) -> SecretVersion {
    SecretVersion {
        version: v.version,
        state: state_of(&v),
        created_at: v.created_at,
        deleted_at: v.deleted_at,
        destroyed_at: v.destroyed_at,
    }
}

async fn load(state: &AppState, path: &SecretPath) -> AppResult<SecretRecord> {
    state.store.get_secret(path).await?.ok_or_else(|| StoreError::SecretNotFound(path.to_string()).into())
}

/// Writes a new version: sealed for the version it will have, retried if another writer took
/// that version first.
async fn put(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    ApiJson(mut req): ApiJson<SecretPut>,
) -> AppResult<(StatusCode, Json<SecretWritten>)> {
    let path = parse_path(&path)?;
    let encoded = Zeroizing::new(std::mem::take(&mut req.value));
    // The decoder's own errors quote the offending byte: say only what is wrong.
    let value =
        Zeroizing::new(STANDARD.decode(encoded.as_bytes()).map_err(|_| {
            ApiError::bad_request("value: not valid base64 (standard alphabet with padding)")
        })?);
    drop(encoded);
    check_value(&value).map_err(|e| ApiError::bad_request(e.to_string()))?;
    for (field, text) in [("owner", &req.owner), ("purpose", &req.purpose)] {
        if let Some(text) = text {
            check_meta(field, text).map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
    }
    if req.rotation_due.is_some_and(|t| t < 0) {
        return Err(ApiError::bad_request("rotation_due: unix seconds, or 0 to clear it"));
    }
    let now = state.now_secs();
    for _ in 0..WRITE_ATTEMPTS {
        let current = state.store.get_secret(&path).await?;
        let version = current.as_ref().map_or(0, |c| c.current_version) + 1;
        if version > MAX_VERSIONS {
            return Err(ApiError::bad_request(format!(
                "secret `{path}` has {MAX_VERSIONS} versions, the most one secret keeps; write it under a new path"
            )));
        }
        let secret = SecretRecord {
            path: path.clone(),
            owner: req
                .owner
                .clone()
                .or_else(|| current.as_ref().map(|c| c.owner.clone()))
                .unwrap_or_default(),
            purpose: req
                .purpose
                .clone()
                .or_else(|| current.as_ref().map(|c| c.purpose.clone()))
                .unwrap_or_default(),
            rotation_due: match req.rotation_due {
                Some(0) => None,
                Some(t) => Some(t),
                None => current.as_ref().and_then(|c| c.rotation_due),
            },
            created_at: current.as_ref().map_or(now, |c| c.created_at),
            updated_at: now,
            current_version: version,
        };
        let sealed = vouch_ca::seal_value(state.kek(), path.as_str(), version, &value)?;
        let new = NewSecretVersion { secret, sealed_key: sealed.sealed_key, ciphertext: sealed.ciphertext };
        match state.store.put_secret_version(&new).await {
            Ok(()) => {
                tracing::info!(target: "vouch::audit", event = "secret.put", %caller, path = %path, version, bytes = value.len());
                state.publish(crate::state::Event::SecretChanged { path: path.clone() });
                let written = SecretWritten { secret: meta(new.secret), version };
                return Ok((StatusCode::CREATED, Json(written)));
            }
            Err(StoreError::SecretConflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::SecretConflict(path.to_string()).into())
}

/// The latest live version of a secret, or the version asked for, decrypted. The store answers
/// in one call ([`vouch_store::Store::read_secret`]): metadata, version and sealed value from
/// one snapshot.
async fn read_value(
    state: &AppState,
    path: &SecretPath,
    version: Option<u64>,
) -> AppResult<(u64, Zeroizing<Vec<u8>>)> {
    let read = state
        .store
        .read_secret(path, version)
        .await?
        .ok_or_else(|| StoreError::SecretNotFound(path.to_string()))?;
    let stored = match (read.version, version) {
        (Some(stored), _) => stored,
        (None, Some(version)) => {
            return Err(StoreError::SecretVersionNotFound { path: path.to_string(), version }.into())
        }
        (None, None) => {
            return Err(ApiError::not_found(format!(
                "secret `{path}` has no live version: all {} are deleted or destroyed (see `vouch secret versions {path}`)",
                read.secret.current_version
            )))
        }
    };
    let version = stored.record.version;
    match state_of(&stored.record) {
        VersionState::Live => {}
        VersionState::Deleted => {
            return Err(ApiError::not_found(format!(
                "secret `{path}` version {version} is deleted; undelete it with `vouch secret undelete {path} --version {version}`"
            )))
        }
        VersionState::Destroyed => {
            return Err(ApiError::not_found(format!("secret `{path}` version {version} was destroyed")))
        }
    }
    let (Some(sealed_key), Some(ciphertext)) = (stored.sealed_key, stored.ciphertext) else {
        return Err(vouch_ca::CaError::SecretUnreadable { path: path.to_string(), version }.into());
    };
    let sealed = vouch_ca::SealedValue { sealed_key, ciphertext };
    let value = vouch_ca::open_value(state.kek(), path.as_str(), version, &sealed)?;
    Ok((version, value))
}

async fn read(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    ApiQuery(query): ApiQuery<SecretQuery>,
) -> AppResult<Json<SecretValue>> {
    let path = parse_path(&path)?;
    let (version, value) = read_value(&state, &path, query.version).await?;
    tracing::info!(target: "vouch::audit", event = "secret.read", %caller, path = %path, version);
    Ok(Json(SecretValue { path, version, value: STANDARD.encode(&*value) }))
}

async fn list(
    State(state): State<Arc<AppState>>,
    ApiQuery(query): ApiQuery<SecretListQuery>,
) -> AppResult<Json<SecretList>> {
    let prefix = query.prefix.unwrap_or_default();
    let secrets = state
        .store
        .list_secrets()
        .await?
        .into_iter()
        .filter(|s| s.path.is_under(&prefix))
        .map(meta)
        .collect();
    Ok(Json(SecretList { secrets }))
}

async fn versions(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
) -> AppResult<Json<SecretVersions>> {
    let path = parse_path(&path)?;
    let record = load(&state, &path).await?;
    let versions = state.store.list_secret_versions(&path).await?.into_iter().map(version_view).collect();
    Ok(Json(SecretVersions { secret: meta(record), versions }))
}

/// Deletes, undeletes or destroys the versions asked for, audited.
async fn change(
    state: &AppState,
    caller: &Caller,
    path: &str,
    req: VersionsRequest,
    what: VersionChange,
) -> AppResult<Json<VersionsChanged>> {
    let path = parse_path(path)?;
    let (event, verb) = match what {
        VersionChange::Delete(_) => ("secret.delete", "delete"),
        VersionChange::Undelete => ("secret.undelete", "undelete"),
        VersionChange::Destroy(_) => ("secret.destroy", "destroy"),
    };
    if req.versions.len() > MAX_VERSIONS_PER_REQUEST {
        return Err(ApiError::bad_request(format!(
            "versions: at most {MAX_VERSIONS_PER_REQUEST} in one request"
        )));
    }
    let versions = if req.versions.is_empty() {
        match what {
            VersionChange::Delete(_) => vec![load(state, &path).await?.current_version],
            _ => {
                return Err(ApiError::bad_request(format!(
                    "versions: name the versions to {verb} (`--version N`)"
                )))
            }
        }
    } else {
        req.versions
    };
    if versions.contains(&0) {
        return Err(ApiError::bad_request("versions: versions count from 1"));
    }
    let changed = state.store.change_secret_versions(&path, &versions, what).await?;
    tracing::info!(target: "vouch::audit", event, %caller, path = %path, versions = ?versions, changed = ?changed);
    if !changed.is_empty() {
        state.publish(crate::state::Event::SecretChanged { path: path.clone() });
    }
    Ok(Json(VersionsChanged { path, changed }))
}

async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    ApiJson(req): ApiJson<VersionsRequest>,
) -> AppResult<Json<VersionsChanged>> {
    let now = state.now_secs();
    change(&state, &caller, &path, req, VersionChange::Delete(now)).await
}

async fn undelete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    ApiJson(req): ApiJson<VersionsRequest>,
) -> AppResult<Json<VersionsChanged>> {
    change(&state, &caller, &path, req, VersionChange::Undelete).await
}

async fn destroy(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(path): Path<String>,
    ApiJson(req): ApiJson<VersionsRequest>,
) -> AppResult<Json<VersionsChanged>> {
    let now = state.now_secs();
    change(&state, &caller, &path, req, VersionChange::Destroy(now)).await
}

/// Whether the workload of `entry` may read `path` now: a grant permits it (refused with the
/// deciding policies otherwise). Callers check that the agent is still admitted.
async fn may_read(
    state: &AppState,
    agent: &SpiffeId,
    entry: &vouch_core::Entry,
    path: &SecretPath,
) -> AppResult<Vec<String>> {
    let request = AccessRequest {
        principal: entry.spiffe_id.clone(),
        action: Action::Read,
        resource: Resource::Secret(path.clone()),
    };
    let decision = crate::policy::decide(state, &request).await?;
    if !decision.allow {
        tracing::info!(target: "vouch::audit", event = "secret.read.denied", caller = %agent, spiffe_id = %entry.spiffe_id, path = %path, reasons = ?decision.reasons, errors = decision.errors.len());
        return Err(ApiError::forbidden(format!(
            "`{}` may not read secret `{}`: {}",
            entry.spiffe_id,
            path,
            decision.explanation()
        )));
    }
    Ok(decision.reasons)
}

/// The latest live version of `path`; `None` when every version is deleted or destroyed.
async fn latest_live(state: &AppState, path: &SecretPath) -> AppResult<Option<u64>> {
    load(state, path).await?;
    let versions = state.store.list_secret_versions(path).await?;
    Ok(versions.iter().rev().find(|v| state_of(v) == VersionState::Live).map(|v| v.version))
}

/// An agent reads a secret for a workload it attested: the workload is named by its entry, which
/// the agent must serve; a grant must permit the workload's SPIFFE ID to `read` the secret.
///
/// With `known_version` this is a watch: the answer waits (at most
/// [`vouch_api::secrets::WATCH_WAIT_SECS`], then `204 No Content`) until the latest live version
/// is another one. The grant and the agent's admission are decided again at each wake-up and
/// before every answer, so a revoked grant or a banned agent ends the watch with the refusal.
async fn agent_read(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<AgentSecretRequest>,
) -> AppResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    let (agent, entry) = crate::agent_api::workload_entry(&state, &caller, &req.entry_id).await?;
    let Some(known) = req.known_version else {
        return Ok(Json(answer_read(&state, &agent, &entry, &req.path).await?).into_response());
    };
    let mut waiter = state.secret_waiters.enter(&agent, &req.path).map_err(|full| {
        let (what, bound) = match full {
            crate::secret_watch::Full::Agent => ("this agent", crate::secret_watch::MAX_WAITERS_PER_AGENT),
            crate::secret_watch::Full::Server => ("this server", crate::secret_watch::MAX_WAITERS),
        };
        tracing::warn!(caller = %agent, path = %req.path, bound, "secret watch refused: {what} holds the most watches allowed");
        ApiError::too_many(format!(
            "{what} already holds {bound} secret watches, the most allowed; close some, or read without `known_version`"
        ))
    })?;
    let deadline =
        tokio::time::Instant::now() + std::time::Duration::from_secs(vouch_api::secrets::WATCH_WAIT_SECS);
    let changed = waiter
        .until(deadline, || async {
            may_read(&state, &agent, &entry, &req.path).await?;
            // A watch of an agent banned or evicted meanwhile ends now, not at the next change.
            crate::agent_api::still_admitted(&state, &agent).await?;
            // No live version left is an answer too: the read's 404 says so.
            let latest = latest_live(&state, &req.path).await?;
            Ok::<_, ApiError>((latest != Some(known)).then_some(()))
        })
        .await?;
    drop(waiter);
    match changed {
        Some(()) => Ok(Json(answer_read(&state, &agent, &entry, &req.path).await?).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// Decides, reads the latest live version and audits the read.
async fn answer_read(
    state: &AppState,
    agent: &SpiffeId,
    entry: &vouch_core::Entry,
    path: &SecretPath,
) -> AppResult<AgentSecretResponse> {
    let reasons = may_read(state, agent, entry, path).await?;
    let (version, value) = read_value(state, path, None).await?;
    // A ban or eviction committed since the request was authenticated wins (checked once, after
    // the read: before it as well was one more store read per secret read, and decided nothing
    // this one does not).
    crate::agent_api::still_admitted(state, agent).await?;
    tracing::info!(target: "vouch::audit", event = "secret.read", caller = %agent, spiffe_id = %entry.spiffe_id, entry_id = %entry.id, path = %path, version, reasons = ?reasons);
    Ok(AgentSecretResponse {
        spiffe_id: entry.spiffe_id.clone(),
        path: path.clone(),
        version,
        value: STANDARD.encode(&*value),
    })
}
