//! The HTTP/JSON admin API (described in `openapi.json`, served at `/v1/openapi.json`).
//!
//! Handlers parse requests into domain types at the edge, call the store and the authority, and
//! audit every change and issuance. Authentication happens before any handler runs (see
//! [`crate::auth`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use vouch_api::admin::{
    AuthorityKey, AuthorityKeys, BatchCreateRequest, EntryList, EntryPatch, EntryQuery, JoinTokenRequest,
    JoinTokenResponse, JwtSvidClaims, KeyKind, MintJwtRequest, MintJwtResponse, MintX509Request,
    MintX509Response, RuleViolation, ValidateJwtRequest, MAX_ENTRY_BATCH,
};
use vouch_api::paths;
use vouch_core::{ttl, Entry, EntryId, EntrySpec, Namespace, Selector, SpiffeId};
use vouch_store::{EntryFilter, JoinTokenRecord};

use crate::auth::{AdminScope, Caller};
use crate::error::ApiError;
use crate::extract::{requested_ttl, ApiJson, ApiQuery};
use crate::namespaces;
use crate::state::{AppState, Event};

type AppResult<T> = Result<T, ApiError>;

/// Most entries in one batch.
pub const MAX_BATCH: usize = MAX_ENTRY_BATCH;
/// Default join token lifetime.
pub const DEFAULT_JOIN_TOKEN_TTL: Duration = Duration::from_secs(600);
/// Longest join token lifetime.
pub const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 86400);

/// Routes anyone who can reach a listener may call: nothing secret, and needed by probes and by
/// clients that bootstrap trust.
pub(crate) fn public_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::HEALTHZ, get(healthz))
        .route(paths::READYZ, get(readyz))
        .route(paths::METRICS, get(metrics))
        .route(paths::OPENAPI, get(openapi))
        .route(paths::BUNDLE, get(bundle))
}

/// The entry routes (the caller must be an admin, perhaps limited to namespaces; `crate::routes`
/// attaches the check, each handler checks the namespaces it touches).
pub(crate) fn entry_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::ENTRIES, post(create_entry).get(list_entries))
        .route(paths::ENTRIES_BATCH, post(batch_create_entries))
        .route(paths::ENTRY, get(get_entry).put(replace_entry).patch(patch_entry).delete(delete_entry))
}

/// The admin routes (the caller must be an admin of all namespaces; `crate::routes` attaches the
/// check).
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::AUTHORITY_KEYS, get(authority_keys))
        .route(paths::AUTHORITY_PREPARE_ROOT, post(prepare_root))
        .route(paths::JOIN_TOKENS, post(create_join_token))
        .route(paths::MINT_X509, post(mint_x509))
        .route(paths::MINT_JWT, post(mint_jwt))
        .route(paths::VALIDATE_JWT, post(validate_jwt))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if let Err(e) = state.store.ping().await {
        tracing::warn!(error = %e, "readiness: store unavailable");
        return (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response();
    }
    if let Some(why) = state.authority_fault() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    let now = state.now();
    let ready = state.with_authority(|a| {
        a.keys().iter().any(|k| k.state == vouch_ca::KeyState::Active && k.not_after > ttl::unix_seconds(now))
    });
    if ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no active signing keys\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let seq = state.with_authority(|a| a.sequence());
    let damaged = state.store.damaged_rows_skipped();
    let writes = state.store.write_transactions();
    let mut text = state.metrics.render(seq, damaged, writes);
    state.sync.render_metrics(&mut text);
    crate::audit::render_metrics(&state, &mut text);
    // Which replica rotates keys, and which authority state each serves (equal on all replicas
    // once they follow the leader).
    let gauges = [
        (
            "vouch_leader",
            "Whether this server leads key rotation (1 on a single server).",
            u64::from(state.is_leader()),
        ),
        (
            "vouch_authority_version",
            "Version of the stored authority state this server serves.",
            state.authority_version(),
        ),
        (
            "vouch_authority_fault",
            "1 while this server cannot load the authority state another replica stored (it signs nothing).",
            u64::from(state.authority_fault().is_some()),
        ),
        (
            "vouch_federated_bundles",
            "Bundles of federated trust domains served to agents.",
            state.federation.bundles().len() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::OPENAPI).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleQuery {
    format: Option<String>,
}

async fn bundle(
    State(state): State<Arc<AppState>>,
    ApiQuery(q): ApiQuery<BundleQuery>,
) -> AppResult<Response> {
    let b = state.with_authority(|a| a.bundle());
    match q.format.as_deref() {
        None | Some("jwks") => {
            let body = b.to_jwks()?;
            Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
        }
        Some("pem") => Ok(([(header::CONTENT_TYPE, "application/x-pem-file")], b.x509_pem()).into_response()),
        Some(other) => {
            Err(ApiError::bad_request(format!("format `{other}` is not supported; use `jwks` or `pem`")))
        }
    }
}

/// Publishes a successor root now (SPIRE's `localauthority x509 prepare`): relying parties and
/// federated trust domains learn it ahead of its taking over, on the usual schedule. 409 when one is
/// already prepared, or the root is an upstream CA (the operator's to rotate).
async fn prepare_root(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
) -> AppResult<Json<AuthorityKeys>> {
    let prepared = state.prepare_root().await.map_err(|e| ApiError::internal("root preparation", e))?;
    if !prepared {
        return Err(ApiError::conflict(
            "a successor root is already prepared (it takes over on schedule), or the root is an upstream CA (rotate it by replacing ca.upstream_cert and ca.upstream_key)",
        ));
    }
    tracing::info!(target: "vouch::audit", event = "authority.prepare_root", %caller, sequence = state.with_authority(|a| a.sequence()));
    authority_keys(State(state)).await
}

async fn authority_keys(State(state): State<Arc<AppState>>) -> AppResult<Json<AuthorityKeys>> {
    let (keys, seq) = state.with_authority(|a| (a.keys(), a.sequence()));
    let keys = keys
        .into_iter()
        .map(|k| {
            let kind = match k.kind {
                "root" => KeyKind::Root,
                "intermediate" => KeyKind::Intermediate,
                "jwt" => KeyKind::Jwt,
                other => {
                    return Err(ApiError::internal("authority keys", format!("unknown key kind `{other}`")))
                }
            };
            Ok(AuthorityKey {
                kind,
                id: k.id,
                state: k.state,
                not_before: k.not_before,
                not_after: k.not_after,
            })
        })
        .collect::<AppResult<Vec<_>>>()?;
    Ok(Json(AuthorityKeys { trust_domain: state.config.trust_domain.clone(), bundle_sequence: seq, keys }))
}

pub(crate) fn new_entry(state: &AppState, spec: EntrySpec) -> AppResult<Entry> {
    crate::reserved::check_workload_id("spiffe_id", &spec.spiffe_id)?;
    crate::reserved::check_parent_id("parent_id", &spec.parent_id)?;
    let id = match &spec.id {
        Some(id) => id.clone(),
        None => EntryId::new(&vouch_ca::keys::random_id()?).map_err(|e| ApiError::internal("entry id", e))?,
    };
    let entry = Entry::create(spec, id, &state.config.trust_domain, state.now_secs())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    namespaces::check_governance(state, &entry)?;
    Ok(entry)
}

async fn create_entry(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(scope): Extension<AdminScope>,
    ApiJson(spec): ApiJson<EntrySpec>,
) -> AppResult<(StatusCode, Json<Entry>)> {
    let entry = new_entry(&state, spec)?;
    namespaces::check_entry_write(&state, &scope, None, &entry).await?;
    state.store.create_entries(std::slice::from_ref(&entry)).await?;
    state.publish(Event::EntryUpserted { entry: Arc::new(entry.clone()), previous_parent: None });
    tracing::info!(target: "vouch::audit", event = "entry.create", %caller, entry_id = %entry.id, namespace = %entry.namespace, spiffe_id = %entry.spiffe_id, admin = entry.admin);
    Ok((StatusCode::CREATED, Json(entry)))
}

async fn batch_create_entries(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(scope): Extension<AdminScope>,
    ApiJson(req): ApiJson<BatchCreateRequest>,
) -> AppResult<(StatusCode, Json<EntryList>)> {
    if req.entries.is_empty() || req.entries.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!("entries: a batch holds 1 to {MAX_BATCH} entries")));
    }
    let mut entries = Vec::with_capacity(req.entries.len());
    let in_batch =
        |i: usize| move |e: ApiError| ApiError { message: format!("entries[{i}]: {}", e.message), ..e };
    for (i, spec) in req.entries.into_iter().enumerate() {
        let entry = new_entry(&state, spec).map_err(in_batch(i))?;
        namespaces::check_entry_write(&state, &scope, None, &entry).await.map_err(in_batch(i))?;
        entries.push(entry);
    }
    namespaces::check_batch_namespaces(&entries)?;
    // All or nothing: the store creates the batch in one transaction.
    state.store.create_entries(&entries).await?;
    state.publish_all(
        entries
            .iter()
            .map(|e| Event::EntryUpserted { entry: Arc::new(e.clone()), previous_parent: None })
            .collect(),
    );
    for e in &entries {
        tracing::info!(target: "vouch::audit", event = "entry.create", %caller, entry_id = %e.id, namespace = %e.namespace, spiffe_id = %e.spiffe_id, admin = e.admin);
    }
    Ok((StatusCode::CREATED, Json(EntryList { entries, damaged: Vec::new(), rule_violations: Vec::new() })))
}

async fn list_entries(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<AdminScope>,
    ApiQuery(q): ApiQuery<EntryQuery>,
) -> AppResult<Json<EntryList>> {
    let namespace = q
        .namespace
        .map(|n| Namespace::new(&n).map_err(|e| ApiError::bad_request(format!("namespace: {e}"))))
        .transpose()?;
    if let Some(ns) = namespace.as_ref().filter(|ns| !scope.scope.allows(ns)) {
        return Err(ApiError::forbidden(format!(
            "admin `{}` may not list namespace `{ns}`; it may manage entries and policies of namespace {}",
            scope.caller, scope.scope
        )));
    }
    let id = |field: &str, v: Option<String>| {
        v.map(|s| SpiffeId::parse(&s).map_err(|e| ApiError::bad_request(format!("{field} `{s}`: {e}"))))
            .transpose()
    };
    let filter = EntryFilter {
        spiffe_id: id("spiffe_id", q.spiffe_id)?,
        parent_id: id("parent_id", q.parent_id)?,
        selector: q
            .selector
            // Entries store vouch's spelling of SPIRE selectors, so a search by SPIRE's finds them.
            .map(|s| {
                Selector::parse(&s)
                    .and_then(vouch_core::spire::canonical)
                    .map_err(|e| ApiError::bad_request(format!("selector: {e}")))
            })
            .transpose()?,
        namespace,
    };
    let mut listing = state.store.scan_entries(&filter).await?;
    // An admin limited to namespaces sees its own only; a damaged row has no namespace it could
    // be shown by, so it is reported to admins of all namespaces only.
    let limited = !scope.scope.is_all();
    if limited {
        listing.entries.retain(|e| scope.scope.allows(&e.namespace));
        listing.damaged.clear();
    }
    let damaged = listing
        .damaged
        .into_iter()
        .map(|d| vouch_api::admin::DamagedEntry { id: d.id, reason: d.reason })
        .collect();
    let rule_violations = listing
        .entries
        .iter()
        .filter_map(|e| {
            namespaces::governance_gap(&state, e)
                .map(|gap| RuleViolation { id: e.id.to_string(), reason: format!("no {gap}") })
        })
        .collect();
    Ok(Json(EntryList { entries: listing.entries, damaged, rule_violations }))
}

fn parse_entry_id(id: &str) -> AppResult<EntryId> {
    EntryId::new(id).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn get_entry(
    State(state): State<Arc<AppState>>,
    Extension(scope): Extension<AdminScope>,
    Path(id): Path<String>,
) -> AppResult<Json<Entry>> {
    let entry = load_entry(&state, &parse_entry_id(&id)?).await?;
    scope.check_hidden(&entry.namespace, &format!("entry `{id}`"))?;
    Ok(Json(entry))
}

/// `PUT`: replaces every settable field.
async fn replace_entry(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(scope): Extension<AdminScope>,
    Path(id): Path<String>,
    ApiJson(spec): ApiJson<EntrySpec>,
) -> AppResult<Json<Entry>> {
    let id = parse_entry_id(&id)?;
    if spec.id.as_ref().is_some_and(|s| s != &id) {
        return Err(ApiError::bad_request(
            "id: the body's id differs from the id in the path; ids cannot change",
        ));
    }
    let current = load_entry(&state, &id).await?;
    store_update(&state, &caller, &scope, current, spec).await
}

/// `PATCH`: changes the fields the patch names, if the entry is still at the revision the caller
/// read; the store checks the revision again when it writes, so two concurrent patches cannot both
/// win.
async fn patch_entry(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(scope): Extension<AdminScope>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<EntryPatch>,
) -> AppResult<Json<Entry>> {
    let id = parse_entry_id(&id)?;
    let current = load_entry(&state, &id).await?;
    // Before the revision is compared: a caller outside the entry's namespace learns nothing of it.
    scope.check_hidden(&current.namespace, &format!("entry `{id}`"))?;
    if current.revision != patch.expected_revision {
        return Err(ApiError::revision_conflict(format!(
            "entry `{id}` is at revision {}, not {}: it was changed since you read it; read it again (`vouch entry show {id}`) and retry",
            current.revision, patch.expected_revision
        )));
    }
    let spec = patch.apply(&current);
    store_update(&state, &caller, &scope, current, spec).await
}

async fn load_entry(state: &AppState, id: &EntryId) -> AppResult<Entry> {
    state.store.get_entry(id).await?.ok_or_else(|| ApiError::not_found(format!("no entry with id `{id}`")))
}

/// Writes `spec` over `current` (revision checked by the store), publishes and audits the change.
async fn store_update(
    state: &AppState,
    caller: &Caller,
    scope: &AdminScope,
    current: Entry,
    spec: EntrySpec,
) -> AppResult<Json<Entry>> {
    let id = current.id.clone();
    crate::reserved::check_workload_id("spiffe_id", &spec.spiffe_id)?;
    crate::reserved::check_parent_id("parent_id", &spec.parent_id)?;
    let updated = current
        .updated(spec, &state.config.trust_domain, state.now_secs())
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    namespaces::check_governance(state, &updated)?;
    namespaces::check_entry_write(state, scope, Some(&current), &updated).await?;
    state.store.update_entry(&updated).await?;
    let current_namespace = current.namespace.clone();
    state.publish(Event::EntryUpserted {
        entry: Arc::new(updated.clone()),
        previous_parent: Some(current.parent_id),
    });
    tracing::info!(target: "vouch::audit", event = "entry.update", %caller, entry_id = %id, namespace = %updated.namespace, previous_namespace = %current_namespace, spiffe_id = %updated.spiffe_id, revision = updated.revision);
    Ok(Json(updated))
}

async fn delete_entry(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Extension(scope): Extension<AdminScope>,
    Path(id): Path<String>,
) -> AppResult<Json<Entry>> {
    let id = parse_entry_id(&id)?;
    if !scope.scope.is_all() {
        // Checked on the entry as read. Known gap (docs/namespaces.md): a move by another admin
        // between this read and the delete is not seen, as the store deletes by id alone.
        let current = load_entry(&state, &id).await?;
        namespaces::check_entry_change(&state, &scope, &current).await?;
    }
    let entry = state.store.delete_entry(&id).await?;
    state.publish(Event::EntryDeleted { id: entry.id.clone(), parent: entry.parent_id.clone() });
    tracing::info!(target: "vouch::audit", event = "entry.delete", %caller, entry_id = %entry.id, namespace = %entry.namespace, spiffe_id = %entry.spiffe_id);
    Ok(Json(entry))
}

async fn create_join_token(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<JoinTokenRequest>,
) -> AppResult<(StatusCode, Json<JoinTokenResponse>)> {
    let ttl = req.ttl.map(Duration::from_secs).unwrap_or(DEFAULT_JOIN_TOKEN_TTL);
    if ttl.is_zero() || ttl > MAX_JOIN_TOKEN_TTL {
        return Err(ApiError::bad_request(format!(
            "ttl: must be 1 to {} seconds",
            MAX_JOIN_TOKEN_TTL.as_secs()
        )));
    }
    if let Some(id) = &req.agent_id {
        if id.trust_domain() != &state.config.trust_domain || id.is_trust_domain_id() {
            return Err(ApiError::bad_request(format!(
                "agent_id: `{id}` must be a SPIFFE ID with a path in trust domain `{}`",
                state.config.trust_domain
            )));
        }
        // Not the server's ID, not an admin's or a workload's: agents live in their own namespace.
        crate::reserved::check_agent_id("agent_id", id)?;
    }
    crate::node_attest::join_token_label_selectors(&req.labels).map_err(ApiError::bad_request)?;
    // 128 random bits; only the hash is stored, the token itself is returned once.
    let token = vouch_ca::keys::random_id()?;
    let now = state.now_secs();
    let expires_at = now + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let record = JoinTokenRecord {
        hash: vouch_ca::keys::sha256_hex(token.as_bytes()),
        created_at: now,
        expires_at,
        agent_id: req.agent_id.clone(),
        used_at: None,
        labels: req.labels.clone(),
    };
    state.store.create_join_token(&record).await?;
    tracing::info!(target: "vouch::audit", event = "join_token.create", %caller, token_hash_prefix = &record.hash[..12], expires_at);
    Ok((StatusCode::CREATED, Json(JoinTokenResponse { token, expires_at, agent_id: req.agent_id })))
}

/// The minting answer as the server writes it: PEM fields as pre-escaped JSON text.
type MintX509Answer = MintX509Response<Box<RawValue>>;

/// PEM as a JSON string. PEM text is base64, dashes, spaces and newlines, so only the newlines need
/// escaping: a straight copy instead of the general per-character escaper (a few percent of the
/// issuance API's CPU). Anything else falls back to the general escaper.
fn pem_json(pem: &str) -> Box<RawValue> {
    let plain = pem.bytes().all(|b| b == b'\n' || (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\');
    let text = if plain {
        let mut out = String::with_capacity(pem.len() + pem.len() / 32 + 2);
        out.push('"');
        let mut lines = pem.split('\n');
        if let Some(first) = lines.next() {
            out.push_str(first);
        }
        for line in lines {
            out.push_str("\\n");
            out.push_str(line);
        }
        out.push('"');
        out
    } else {
        serde_json::to_string(pem).unwrap_or_else(|_| "\"\"".to_owned())
    };
    RawValue::from_string(text)
        .unwrap_or_else(|_| RawValue::from_string("\"\"".to_owned()).unwrap_or_default())
}

async fn mint_x509(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<MintX509Request>,
) -> AppResult<Json<MintX509Answer>> {
    let started = Instant::now();
    let result = mint_x509_inner(&state, req).await;
    match &result {
        Ok(r) => {
            state.metrics.x509_issued.fetch_add(1, Ordering::Relaxed);
            state.metrics.x509_latency.observe(started.elapsed());
            tracing::info!(target: "vouch::audit", event = "svid.x509.mint", %caller, spiffe_id = %r.spiffe_id, expires_at = r.expires_at, capped = r.capped, generated_key = r.private_key_pem.is_some());
        }
        Err(e) => {
            state.metrics.issuance_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(target: "vouch::audit", event = "svid.x509.refused", %caller, reason = %e.message);
        }
    }
    result.map(Json)
}

async fn mint_x509_inner(state: &AppState, req: MintX509Request) -> AppResult<MintX509Answer> {
    use vouch_core::entry::{MAX_DNS_NAMES, MAX_X509_SVID_TTL, MIN_X509_SVID_TTL};
    crate::reserved::check_workload_id("spiffe_id", &req.spiffe_id)?;
    let ttl =
        requested_ttl(req.ttl, state.config.x509_svid_ttl, MIN_X509_SVID_TTL, MAX_X509_SVID_TTL, "ttl")?;
    if req.dns_names.len() > MAX_DNS_NAMES {
        return Err(ApiError::bad_request(format!("dns_names: at most {MAX_DNS_NAMES} are allowed")));
    }
    let (public, generated) = match &req.csr {
        Some(csr) => (vouch_ca::verify_csr_pem_or_der(csr.as_bytes())?, None),
        None => {
            let key = vouch_ca::WorkloadKey::generate()?;
            (key.public.clone(), Some(key))
        }
    };
    let now = state.now();
    let issued = state.signing(|a| {
        a.mint_x509_with_common_name(
            &req.spiffe_id,
            &req.dns_names,
            req.common_name.as_ref(),
            &public,
            ttl,
            now,
        )
    })?;
    let chain = issued.chain_pem();
    Ok(MintX509Answer {
        spiffe_id: req.spiffe_id,
        cert_chain_pem: pem_json(&chain),
        private_key_pem: generated.map(|k| pem_json(&k.pkcs8_pem())),
        bundle_pem: pem_json(&state.bundle_pem()),
        expires_at: ttl::unix_seconds(issued.svid.not_after),
        capped: issued.svid.capped,
    })
}

async fn mint_jwt(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<MintJwtRequest>,
) -> AppResult<Json<MintJwtResponse>> {
    use vouch_core::entry::{MAX_JWT_SVID_TTL, MIN_JWT_SVID_TTL};
    let started = Instant::now();
    let result = (|| {
        crate::reserved::check_workload_id("spiffe_id", &req.spiffe_id)?;
        let ttl =
            requested_ttl(req.ttl, state.config.jwt_svid_ttl, MIN_JWT_SVID_TTL, MAX_JWT_SVID_TTL, "ttl")?;
        let now = state.now();
        let minted = state.signing(|a| a.mint_jwt(&req.spiffe_id, &req.audience, ttl, now))?;
        Ok::<_, ApiError>(minted)
    })();
    match result {
        Ok(m) => {
            state.metrics.jwt_issued.fetch_add(1, Ordering::Relaxed);
            state.metrics.jwt_latency.observe(started.elapsed());
            tracing::info!(target: "vouch::audit", event = "svid.jwt.mint", %caller, spiffe_id = %req.spiffe_id, audience = ?req.audience, expires_at = m.expires_at);
            Ok(Json(MintJwtResponse {
                spiffe_id: req.spiffe_id,
                token: m.token,
                expires_at: m.expires_at,
                capped: m.capped,
            }))
        }
        Err(e) => {
            state.metrics.issuance_errors.fetch_add(1, Ordering::Relaxed);
            tracing::info!(target: "vouch::audit", event = "svid.jwt.refused", %caller, reason = %e.message);
            Err(e)
        }
    }
}

async fn validate_jwt(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<ValidateJwtRequest>,
) -> AppResult<Json<JwtSvidClaims>> {
    let now = state.now();
    state
        .with_authority(|a| a.validate_jwt(&req.token, &req.audience, now))
        .map(Json)
        .map_err(|e| ApiError::bad_request(format!("token rejected: {e}")))
}

#[cfg(test)]
mod pem_json_tests {
    use super::pem_json;

    #[test]
    fn pem_json_is_what_the_general_escaper_writes() {
        let key = vouch_ca::WorkloadKey::generate().unwrap();
        for text in [
            key.pkcs8_pem().to_string(),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
            String::new(),
            "no newline".to_owned(),
            "quote \" backslash \\ tab \t nul \0 é".to_owned(),
        ] {
            assert_eq!(pem_json(&text).get(), serde_json::to_string(&text).unwrap(), "{text:?}");
        }
    }
}
