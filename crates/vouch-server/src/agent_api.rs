//! The agent side of the API, on the same mTLS listener as the admin API:
//!
//! - `POST /v1/agent/attest/join-token` (and `k8s-psat`, `x509pop`): node attestation with evidence
//!   and a CSR; answers the agent SVID (anyone may call it: the evidence is the credential);
//! - `POST /v1/agent/renew`: a new agent SVID for a new CSR (caller: an attested agent);
//! - `GET /v1/agent/sync`: a stream of newline-delimited JSON: first a snapshot of the entries this
//!   agent may serve and the bundle, then only changes as they happen (no polling);
//! - `POST /v1/agent/sign`: X509-SVIDs for a batch of CSRs, one per entry, each item answered on its
//!   own;
//! - `POST /v1/agent/jwt`: a JWT-SVID for an entry (the agent never holds a JWT signing key).
//!
//! Admins list, evict (must re-attest) and ban (may not re-attest) agents under `/v1/agents`.
//! An agent may only obtain SVIDs for entries whose parent is its own SPIFFE ID or a node group it
//! belongs to (see `crate::groups`). Every message is a `vouch_api::agent` type; certificates and
//! CSRs travel as DER.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper::body::{Bytes, Frame};
use tokio::sync::mpsc;
use vouch_api::admin::{AgentInfo, AgentList, AgentRef, Banned, Evicted};
use vouch_api::agent::{
    AgentJwtRequest, AgentJwtResponse, AgentSvid, CloseReason, FederatedBundles, JoinTokenAttestation,
    PsatAttestation, RenewRequest, SignOutcome, SignRequest, SignResponse, SignResult, SignedSvid, SyncLine,
    X509PopAttestation, X509PopChallenge, X509PopChallengeRequest,
};
use vouch_api::{paths, Der};
use vouch_core::{ttl, Entry, EntryId, Selectors, SpiffeId};
use vouch_store::{AgentRecord, AgentRenewal, ChallengeIssue, ChallengeRecord, StoreError, TokenUse};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::{requested_ttl, ApiJson};
use crate::groups::Served;
use crate::limits::{self, PeerAddr};
use crate::state::{AppState, Event};
use crate::sync_hub::{Received, Subscription};

type AppResult<T> = Result<T, ApiError>;

/// Most CSRs in one signing batch.
pub const MAX_SIGN_BATCH: usize = vouch_api::agent::MAX_SIGN_BATCH;
/// Largest signing batch whose entries are read one by one rather than all the agent's at once.
const POINT_READ_BATCH: usize = 16;
/// Interval of keep-alive lines on the sync stream.
pub const SYNC_PING: Duration = Duration::from_secs(15);

/// Node attestation: anyone may call, the evidence in the body is the credential. Each source
/// address is rate limited before anything of its request is read.
pub(crate) fn attestation_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::ATTEST_JOIN_TOKEN, post(attest_join_token))
        .route(paths::ATTEST_K8S_PSAT, post(attest_k8s_psat))
        .route(paths::ATTEST_X509POP_CHALLENGE, post(x509pop_challenge))
        .route(paths::ATTEST_X509POP, post(attest_x509pop))
        .route_layer(axum::middleware::from_fn_with_state(state, limit_attestation))
}

/// The limits, as indexes of `Metrics::rate_limited`.
#[derive(Debug, Clone, Copy)]
enum Limit {
    Attest = 0,
    Sign = 1,
    Jwt = 2,
    Report = 3,
}

/// Middleware of node attestation: a source over its rate gets 429 `rate_limited` with
/// `Retry-After`, before its body is read, parsed, verified or looked up. Requests without a peer
/// address (the local admin socket, only admins can open it) are not limited.
async fn limit_attestation(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(PeerAddr(ip)) = req.extensions().get::<PeerAddr>().copied() {
        let source = limits::source_key(ip);
        if let Err(wait) = state.limits.attest.check(&source, 1, tokio::time::Instant::now()) {
            let rate = state.config.limits.attest;
            return rate_limited(&state, Limit::Attest, wait, || {
                format!(
                    "node attestation from {source}: more than {}/s (burst {}) attempts; retry after the time in Retry-After",
                    rate.per_second, rate.burst
                )
            })
            .into_response();
        }
    }
    next.run(req).await
}

/// A 429 for a caller over `limit`: counted, and logged at most once per interval.
fn rate_limited(
    state: &AppState,
    limit: Limit,
    wait: Duration,
    message: impl FnOnce() -> String,
) -> ApiError {
    state.metrics.rate_limited[limit as usize].fetch_add(1, Ordering::Relaxed);
    let message = message();
    let kind = match limit {
        Limit::Attest => "rate limit: attest",
        Limit::Sign => "rate limit: sign",
        Limit::Jwt => "rate limit: jwt",
        Limit::Report => "rate limit: report",
    };
    log_refusal(state, kind, |count| {
        tracing::warn!(target: "vouch::audit", event = "rate_limited", limit = kind, reason = %message, count, "requests refused by a rate limit ({count} since the last line like this)");
    });
    ApiError::rate_limited(message, wait)
}

/// Writes a refusal's log line through `write` (given how many refusals of `kind` there were
/// since the last line) if none was written for `kind` within the interval; otherwise counts it.
/// A flood of refusals so costs one line per interval and reason, not one per request.
pub(crate) fn log_refusal(state: &AppState, kind: &'static str, write: impl FnOnce(u64)) {
    match state.limits.log.note(kind, tokio::time::Instant::now()) {
        Some(count) => write(count),
        None => {
            state.metrics.log_lines_suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A refused node attestation: counted, and logged as `agent.attest.refused` at most once per
/// interval per `kind` (a fixed string: method and reason).
fn attest_refused(
    state: &AppState,
    kind: &'static str,
    method: &'static str,
    detail: &dyn std::fmt::Display,
) {
    state.metrics.attest_refused.fetch_add(1, Ordering::Relaxed);
    log_refusal(state, kind, |count| {
        tracing::warn!(target: "vouch::audit", event = "agent.attest.refused", method, reason = %detail, count, "node attestation refused ({count} since the last line like this)");
    });
}

/// Calls of attested agents.
pub(crate) fn agent_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::AGENT_RENEW, post(renew))
        .route(paths::AGENT_SYNC, get(sync))
        .route(paths::AGENT_SIGN, post(sign))
        .route(paths::AGENT_JWT, post(jwt))
}

/// Agent management, for admins.
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::AGENTS, get(list_agents))
        .route(paths::AGENTS_EVICT, post(evict_agent))
        .route(paths::AGENTS_BAN, post(ban_agent))
}

/// An agent SVID for `csr`, with its expiry and serial (which the agent record keeps).
fn mint_agent_svid(state: &AppState, id: &SpiffeId, csr: &Der) -> AppResult<(AgentSvid, i64, String)> {
    let public = vouch_ca::verify_csr_pem_or_der(&csr.0)?;
    let now = state.now();
    let (issued, jwks) = state.signing(|a| {
        a.mint_x509(id, &[], &public, state.config.x509_svid_ttl, now)
            .and_then(|i| Ok((i, a.bundle().to_jwks()?)))
    })?;
    let cert_chain = issued.chain_der().into_iter().map(Der).collect();
    let expires_at = ttl::unix_seconds(issued.svid.not_after);
    let bundle_jwks = serde_json::from_str(&jwks).map_err(|e| ApiError::internal("bundle", e))?;
    let serial = vouch_ca::x509::cert_info(&issued.svid.cert_der)?.serial;
    Ok((AgentSvid { spiffe_id: id.clone(), cert_chain, bundle_jwks, expires_at }, expires_at, serial))
}

/// The tail every node attestation method shares once the evidence is accepted: refuse an ID
/// outside the agents' namespace or a banned one, sign the agent SVID for the agent's CSR, record the
/// agent with the SVID's serial (keeping its first-attestation time), and audit. The store checks the
/// ban again in the same write, so a ban committed while the SVID was signed still wins: the SVID is
/// then never handed out.
async fn admit_agent(
    state: &AppState,
    id: SpiffeId,
    method: &str,
    selectors: vouch_core::Selectors,
    csr: &Der,
) -> AppResult<Json<AgentSvid>> {
    let refused = |e: ApiError| {
        attest_refused(
            state,
            "admit: refused",
            "any",
            &format_args!("{method}: agent `{id}`: {}", e.message),
        );
        e
    };
    // A join token made before agent IDs were reserved may name any ID.
    crate::reserved::check_agent_id("agent_id", &id).map_err(refused)?;
    // Cheap early refusal; the write below is what decides.
    let previous = state.store.get_agent(&id).await?;
    if previous.as_ref().is_some_and(|a| a.banned) {
        return Err(refused(StoreError::AgentBanned(id.to_string()).into()));
    }
    let (svid, expires_at, serial) = mint_agent_svid(state, &id, csr)?;
    let now = state.now_secs();
    let record = AgentRecord {
        spiffe_id: id.clone(),
        attestation: method.into(),
        selectors,
        created_at: now,
        last_seen: now,
        svid_expires_at: expires_at,
        banned: false,
        svid_serial: Some(serial.clone()),
        new_svid_serial: None,
    };
    let recorded = state.store.attest_agent(&record).await.map_err(|e| refused(e.into()))?;
    // Its node selectors changed, and with them perhaps its node groups: its open sync streams
    // (opened with a previous SVID) decide again. Only then: each re-reads the agent and the
    // groups; an agent attesting for the first time has no stream yet.
    if previous.is_some_and(|p| p.selectors != recorded.selectors) {
        state.publish(Event::AgentAttested { agent: id.clone(), selectors: recorded.selectors });
    }
    tracing::info!(target: "vouch::audit", event = "agent.attest", method, agent = %id, serial, expires_at);
    Ok(Json(svid))
}

async fn attest_join_token(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<JoinTokenAttestation>,
) -> AppResult<Json<AgentSvid>> {
    let hash = vouch_ca::keys::sha256_hex(req.token.as_bytes());
    let now = state.now_secs();
    let refuse = |kind: &'static str, reason: &str| {
        attest_refused(
            &state,
            kind,
            "join_token",
            &format_args!("{reason} (token hash prefix {})", &hash[..12]),
        );
        ApiError::unauthenticated(format!("join token refused: {reason}"))
    };
    // Check the CSR before spending the token, so a malformed request does not burn it.
    vouch_ca::verify_csr_pem_or_der(&req.csr.0)?;
    let record = match state.store.consume_join_token(&hash, now).await? {
        TokenUse::Consumed(r) => r,
        TokenUse::Unknown => return Err(refuse("join_token: unknown", "unknown token")),
        TokenUse::Expired => {
            return Err(refuse(
                "join_token: expired",
                "the token has expired; create a new one with `vouch token create`",
            ))
        }
        TokenUse::AlreadyUsed => {
            return Err(refuse(
                "join_token: used",
                "the token was already used; join tokens are single use, create a new one",
            ))
        }
    };
    let node = crate::node_attest::join_token_identity(
        &state.config.trust_domain,
        &hash,
        record.agent_id,
        &record.labels,
    )
    .map_err(|e| ApiError::internal("agent id", e))?;
    admit_agent(&state, node.agent_id, "join_token", node.selectors, &req.csr).await
}

async fn attest_k8s_psat(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<PsatAttestation>,
) -> AppResult<Json<AgentSvid>> {
    vouch_ca::verify_csr_pem_or_der(&req.csr.0)?;
    let cluster = state.config.psat_clusters.iter().find(|c| c.name == req.cluster).ok_or_else(|| {
        attest_refused(
            &state,
            "k8s_psat: unknown cluster",
            "k8s_psat",
            &format_args!("unknown cluster `{}`", req.cluster),
        );
        ApiError::unauthenticated(format!(
            "k8s_psat: cluster `{}` is not configured on this server",
            req.cluster
        ))
    })?;
    let kid = crate::issuer_keys::token_kid(&req.token);
    let keys = state.psat_keys.keys(cluster, kid.as_deref()).await.map_err(|reason| {
        attest_refused(
            &state,
            "k8s_psat: keys unavailable",
            "k8s_psat",
            &format_args!("cluster `{}`: {reason}", cluster.name),
        );
        ApiError::unavailable(format!("k8s_psat: {reason}"))
    })?;
    let identity =
        crate::node_attest::check_psat(&state.config.trust_domain, cluster, &keys, &req.token, state.now())
            .map_err(|reason| {
            attest_refused(
                &state,
                "k8s_psat: token refused",
                "k8s_psat",
                &format_args!("cluster `{}`: {reason}", cluster.name),
            );
            ApiError::unauthenticated(format!("k8s_psat token refused: {reason}"))
        })?;
    admit_agent(&state, identity.agent_id, "k8s_psat", identity.selectors, &req.csr).await
}

/// How long an x509pop challenge may be answered.
pub const X509POP_CHALLENGE_TTL: Duration = Duration::from_secs(60);
/// Most outstanding (unexpired, unanswered) challenges in the store, over all replicas sharing it;
/// beyond this a new challenge is refused until some are answered or expire, so that a flood of
/// challenge requests (anyone with a node certificate may ask) cannot grow the table without bound.
pub const MAX_CHALLENGES: u32 = 10_000;
pub use vouch_api::agent::x509pop_message;

/// A node certificate that chains to a configured x509pop CA set.
struct NodeCert {
    leaf: Vec<u8>,
    ca_set: String,
    facts: vouch_ca::x509::NodeCertFacts,
}

/// Checks a node certificate chain (PEM, leaf first) against every configured x509pop CA set.
fn check_node_chain(state: &AppState, chain_pem: &str) -> AppResult<NodeCert> {
    let chain: Vec<Vec<u8>> = vouch_ca::pem::decode_all(chain_pem)
        .into_iter()
        .filter(|(l, _)| l == "CERTIFICATE")
        .map(|(_, d)| d)
        .collect();
    let leaf = chain
        .first()
        .cloned()
        .ok_or_else(|| ApiError::bad_request("cert_chain_pem: no CERTIFICATE block"))?;
    let now = rustls_pki_types::UnixTime::since_unix_epoch(
        state.now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default(),
    );
    let ee = rustls_pki_types::CertificateDer::from(leaf.clone());
    let intermediates: Vec<rustls_pki_types::CertificateDer> =
        chain[1..].iter().map(|d| rustls_pki_types::CertificateDer::from(d.clone())).collect();
    let mut last_error = String::from("no x509pop CA is configured on this server");
    for set in &state.config.x509pop {
        let anchors = vouch_tls::Anchors::from_der(&set.cas);
        match vouch_tls::verify_chain(&anchors, &ee, &intermediates, now, false) {
            Ok(()) => {
                let facts = vouch_ca::x509::node_cert_facts(&leaf)?;
                return Ok(NodeCert { leaf, ca_set: set.name.clone(), facts });
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    attest_refused(state, "x509pop: certificate refused", "x509pop", &last_error);
    Err(ApiError::unauthenticated(format!("x509pop: the node certificate was refused: {last_error}")))
}

async fn x509pop_challenge(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<X509PopChallengeRequest>,
) -> AppResult<Json<X509PopChallenge>> {
    let fingerprint = check_node_chain(&state, &req.cert_chain_pem)?.facts.fingerprint;
    let nonce = vouch_ca::keys::random_id()?;
    let now = state.now();
    let expires_at = ttl::unix_seconds(now + X509POP_CHALLENGE_TTL);
    // The store keeps the challenge, so the answer may reach any replica sharing it; it keeps a
    // hash of the nonce only, so neither the database nor its backups can answer a challenge.
    let challenge =
        ChallengeRecord { nonce_hash: vouch_ca::keys::sha256_hex(nonce.as_bytes()), fingerprint, expires_at };
    match state.store.issue_challenge(&challenge, ttl::unix_seconds(now), MAX_CHALLENGES).await? {
        ChallengeIssue::Issued => Ok(Json(X509PopChallenge { nonce, expires_at })),
        ChallengeIssue::Full { limit } => {
            let reason = format!(
                "x509pop: {limit} challenges are outstanding, the most the server keeps (across all replicas); \
                 retry in a minute, when unanswered ones have expired"
            );
            attest_refused(&state, "x509pop: too many outstanding challenges", "x509pop", &reason);
            Err(ApiError::too_many(reason))
        }
    }
}

async fn attest_x509pop(
    State(state): State<Arc<AppState>>,
    ApiJson(req): ApiJson<X509PopAttestation>,
) -> AppResult<Json<AgentSvid>> {
    use base64::Engine as _;
    vouch_ca::verify_csr_pem_or_der(&req.csr.0)?;
    let NodeCert { leaf, ca_set, facts } = check_node_chain(&state, &req.cert_chain_pem)?;
    let refuse = |reason: &str| {
        attest_refused(
            &state,
            "x509pop: proof refused",
            "x509pop",
            &format_args!("{reason} (certificate {})", facts.fingerprint),
        );
        ApiError::unauthenticated(format!("x509pop refused: {reason}"))
    };
    // The challenge is single use whatever the outcome: the store takes it out atomically, so of
    // several replicas receiving the same answer at most one gets it.
    let nonce_hash = vouch_ca::keys::sha256_hex(req.nonce.as_bytes());
    let challenge = state.store.consume_challenge(&nonce_hash, state.now_secs()).await?;
    crate::node_attest::check_challenge(challenge, &facts.fingerprint).map_err(|e| refuse(&e.to_string()))?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(req.signature.as_bytes())
        .map_err(|_| refuse("the signature is not base64"))?;
    vouch_ca::x509::verify_with_cert(&leaf, &x509pop_message(&req.nonce), &signature).map_err(|_| {
        refuse("the signature does not verify with the certificate's key (proof of possession failed)")
    })?;
    let node = crate::node_attest::x509pop_identity(&state.config.trust_domain, &ca_set, &facts)
        .map_err(|e| ApiError::internal("agent id", e))?;
    admit_agent(&state, node.agent_id, "x509pop", node.selectors, &req.csr).await
}

/// The calling agent's SPIFFE ID (the auth layer has checked it is an active agent).
pub(crate) fn agent_of(caller: &Caller) -> AppResult<SpiffeId> {
    svid_of(caller).map(|(id, _)| id.clone())
}

/// The calling agent's SPIFFE ID and the serial of the SVID it presented.
fn svid_of(caller: &Caller) -> AppResult<(&SpiffeId, &str)> {
    match caller {
        Caller::Svid { id, serial } => Ok((id, serial)),
        _ => Err(ApiError::forbidden("only attested agents may call /v1/agent/")),
    }
}

/// A new agent SVID. Recorded by one conditional write: only for an agent that still exists, is
/// not banned and presented its current SVID, so a renewal racing with a ban or an eviction never
/// undoes it (the SVID signed meanwhile is then discarded, not answered).
async fn renew(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<RenewRequest>,
) -> AppResult<Json<AgentSvid>> {
    let (id, presented) = svid_of(&caller)?;
    let (svid, expires_at, serial) = mint_agent_svid(&state, id, &req.csr)?;
    let renewal = AgentRenewal {
        spiffe_id: id.clone(),
        presented_serial: presented.to_owned(),
        new_serial: serial.clone(),
        now: state.now_secs(),
        svid_expires_at: expires_at,
    };
    if let Err(e) = state.store.renew_agent(&renewal).await {
        let e = ApiError::from(e);
        tracing::warn!(target: "vouch::audit", event = "agent.renew.refused", agent = %id, reason = %e.message);
        return Err(e);
    }
    tracing::info!(target: "vouch::audit", event = "agent.renew", agent = %id, serial, expires_at);
    Ok(Json(svid))
}

fn line(l: &SyncLine<'_>) -> Result<Bytes, ApiError> {
    let mut v = serde_json::to_vec(l).map_err(|e| ApiError::internal("sync line", e))?;
    v.push(b'\n');
    Ok(Bytes::from(v))
}

/// The bundle as a JSON value for a sync line. A bundle that cannot be written is a fault of the
/// server: the line is not sent (and the fault logged) rather than sent empty.
fn bundle_json(state: &AppState) -> Result<serde_json::Value, ApiError> {
    let text = state.with_authority(|a| a.bundle().to_jwks())?;
    serde_json::from_str(&text).map_err(|e| ApiError::internal("bundle", e))
}

/// The federated bundles as JSON values for a sync line, by trust domain name.
fn federated_json(state: &AppState) -> Result<FederatedBundles, ApiError> {
    let mut out = FederatedBundles::new();
    for (td, bundle) in state.federation.bundles().iter() {
        let text = bundle.to_jwks()?;
        out.insert(td.to_string(), serde_json::from_str(&text).map_err(|e| ApiError::internal("bundle", e))?);
    }
    Ok(out)
}

/// A bundle line: this trust domain's bundle and the federated ones.
fn bundle_line(state: &AppState) -> Result<Bytes, ApiError> {
    line(&SyncLine::Bundle { bundle: bundle_json(state)?, federated_bundles: federated_json(state)? })
}

/// A snapshot line: the entries parented to `agent` or to one of its node `groups`, and the bundle.
async fn snapshot(
    state: &AppState,
    agent: &SpiffeId,
    groups: &BTreeSet<SpiffeId>,
) -> Result<Bytes, ApiError> {
    let entries = crate::groups::served_entries(state, agent, groups).await?;
    line(&SyncLine::Snapshot {
        entries: entries.into(),
        bundle: bundle_json(state)?,
        federated_bundles: federated_json(state)?,
    })
}

/// A policies line: every current policy, as evaluated (a namespaced policy confined to its
/// namespace, so agents decide as the server does without knowing namespaces).
async fn policies_line(state: &AppState) -> Result<Bytes, ApiError> {
    let mut policies = Vec::new();
    for p in state.store.list_policies().await? {
        let Some(text) = &p.text else { continue };
        // A stored policy that no longer confines fails the line, as it fails the server's own
        // decisions: dropping a `forbid` would allow what it forbids.
        let text = crate::policy::effective_text(&p, text)
            .map_err(|e| ApiError::unavailable(format!("stored policy `{}` no longer loads: {e}", p.id)))?;
        policies.push(vouch_api::policy::PolicyText { text, id: p.id });
    }
    line(&SyncLine::Policies { policies })
}

/// The node groups of an agent with node selectors `node`, read from the store.
async fn groups_of(state: &AppState, node: &Selectors) -> Result<BTreeSet<SpiffeId>, ApiError> {
    Ok(crate::groups::member_ids(&state.store.list_groups().await?, node))
}

/// A response body fed by a channel, so a task can push lines as events happen.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Most events a sync stream turns into lines for one write: a batch of changes costs a few writes
/// rather than one per change, and one write stays small (about 32 KiB of lines).
const SYNC_EVENTS_PER_WRITE: usize = 64;

/// Writes buffered between a stream's task and its connection. One: events not yet written wait
/// in the stream's bounded queue (`crate::sync_hub`) as shared pointers (8 bytes each) rather than
/// as text (about 500 bytes a line), and a stream whose agent does not read overflows that queue
/// and gets a fresh snapshot. A stalled stream so holds at most two writes of text (the one
/// buffered and the one its task waits to hand over), about as much as the 64 lines it held when
/// every line was its own write.
const SYNC_WRITES_BUFFERED: usize = 1;

async fn sync(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    crate::extract::ApiQuery(query): crate::extract::ApiQuery<vouch_api::agent::SyncQuery>,
) -> AppResult<Response> {
    let (agent, serial) = svid_of(&caller)?;
    let (agent, serial) = (agent.clone(), serial.to_owned());
    // Subscribe before reading the snapshot, so no change can fall between the two; and check the
    // agent again after subscribing, so a ban or eviction committed since the auth layer's check
    // is seen here, and any later one arrives as an event.
    let sub = state.sync.subscribe(&agent);
    let record = state.store.authenticate_agent(&agent, &serial).await?;
    // The node groups it belongs to, kept up to date by group and attestation events; a change of
    // membership sends a fresh snapshot (rare, and simpler to get right than a diff racing with
    // entry events). The stream is routed the groups' changes before their entries are read.
    let node = record.selectors;
    let groups = groups_of(&state, &node).await?;
    sub.route(&agent, &groups);
    let mut first = snapshot(&state, &agent, &groups).await?;
    if query.policies {
        first = concat(vec![first, policies_line(&state).await?]);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(SYNC_WRITES_BUFFERED);
    tracing::info!(target: "vouch::audit", event = "agent.sync.open", agent = %agent);
    let mut stream = OpenStream { state, agent, serial, node, groups, sub, policies: query.policies };
    tokio::spawn(async move {
        if tx.send(first).await.is_err() {
            return;
        }
        let mut ping = tokio::time::interval(SYNC_PING);
        ping.tick().await;
        loop {
            let events = tokio::select! {
                received = stream.sub.next(SYNC_EVENTS_PER_WRITE) => match received {
                    Received::Events(events) => events,
                    // Too far behind to replay (a removal may be among the lost events): check the
                    // agent again, then start over with a fresh snapshot, as for a resync.
                    Received::Overflowed => vec![Arc::new(Event::Resync)],
                },
                _ = ping.tick() => {
                    let sent = match line(&SyncLine::Ping) {
                        Ok(ping) => tx.send(ping).await.is_ok(),
                        Err(_) => false,
                    };
                    if sent {
                        continue;
                    }
                    break;
                }
            };
            // Every line of these events in one write.
            let mut out: Vec<Bytes> = Vec::new();
            let mut end = None;
            for event in &events {
                match stream.apply(event).await {
                    Ok(Step::Nothing) => {}
                    Ok(Step::Line(bytes)) => out.push(bytes),
                    // It covers the changes before it, whose writes it read.
                    Ok(Step::Snapshot(bytes)) => out = vec![bytes],
                    Ok(Step::End(reason)) => {
                        end = Some(reason);
                        break;
                    }
                    // A line the server cannot write ends the stream: the agent reconnects and
                    // starts over from a snapshot, instead of silently missing a change.
                    Err(e) => {
                        tracing::warn!(agent = %stream.agent, error = %e.message, "sync stream closed: a line could not be written");
                        end = Some(None);
                        break;
                    }
                }
            }
            match end {
                Some(Some(reason)) => {
                    close_removed(&tx, &stream.agent, reason).await;
                    break;
                }
                Some(None) => break,
                None if out.is_empty() => {}
                None => {
                    if tx.send(concat(out)).await.is_err() {
                        break; // the agent went away
                    }
                }
            }
        }
        tracing::info!(target: "vouch::audit", event = "agent.sync.close", agent = %stream.agent);
    });
    let body = axum::body::Body::new(ChannelBody(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

/// Lines as one buffer (without a copy when there is one).
fn concat(mut parts: Vec<Bytes>) -> Bytes {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut all = Vec::with_capacity(parts.iter().map(Bytes::len).sum());
    for part in &parts {
        all.extend_from_slice(part);
    }
    Bytes::from(all)
}

/// An open sync stream: its agent, what the agent serves, and its registration for events.
struct OpenStream {
    state: Arc<AppState>,
    agent: SpiffeId,
    /// The serial of the SVID the stream was opened with.
    serial: String,
    /// The agent's node selectors and the node groups they make it a member of.
    node: Selectors,
    groups: BTreeSet<SpiffeId>,
    sub: Subscription,
    /// The agent asked for the policy set.
    policies: bool,
}

/// What one event does to a stream.
enum Step {
    /// Nothing to send.
    Nothing,
    /// A line to send.
    Line(Bytes),
    /// A fresh snapshot, which replaces the agent's entries and bundle.
    Snapshot(Bytes),
    /// The stream ends, with the closing line of a removed agent if the reason is given.
    End(Option<CloseReason>),
}

impl OpenStream {
    fn serves(&self, parent: &SpiffeId) -> bool {
        *parent == self.agent || self.groups.contains(parent)
    }

    /// The stream's answer to `event`. Routing (`crate::sync_hub`) brings a stream only the events
    /// that may concern it; this decides whether they do.
    async fn apply(&mut self, event: &Event) -> Result<Step, ApiError> {
        Ok(match event {
            Event::EntryUpserted { entry, previous_parent } => {
                if self.serves(&entry.parent_id) {
                    Step::Line(line(&SyncLine::Upsert { entry: Cow::Borrowed(&**entry) })?)
                } else if previous_parent.as_ref().is_some_and(|p| self.serves(p)) {
                    Step::Line(line(&SyncLine::Delete { id: Cow::Borrowed(&entry.id) })?)
                } else {
                    Step::Nothing
                }
            }
            Event::EntryDeleted { id, parent } if self.serves(parent) => {
                Step::Line(line(&SyncLine::Delete { id: Cow::Borrowed(id) })?)
            }
            Event::EntryDeleted { .. } => Step::Nothing,
            Event::GroupChanged { id, selectors } => {
                let member = selectors.as_ref().is_some_and(|s| s.is_subset_of(&self.node));
                if member == self.groups.contains(id) {
                    return Ok(Step::Nothing);
                }
                if member {
                    self.groups.insert(id.clone());
                } else {
                    self.groups.remove(id);
                }
                self.fresh_snapshot().await?
            }
            Event::AgentAttested { agent, selectors } if *agent == self.agent => {
                // The agent attested again, and the SVID this stream was opened with stops working
                // unless it is the new one: a stream of a superseded SVID (the agent ID taken by
                // another node, say) ends here instead of receiving what the new holder's node
                // groups serve. The agent reconnects with its current SVID.
                match self.state.store.get_agent(&self.agent).await {
                    Ok(Some(record)) if holds(&record, &self.serial) => {}
                    Ok(_) => {
                        tracing::info!(target: "vouch::audit", event = "agent.sync.superseded", agent = %self.agent, "sync stream closed: the agent attested again, and the SVID the stream was opened with no longer works");
                        return Ok(Step::End(None));
                    }
                    Err(e) => {
                        tracing::warn!(agent = %self.agent, error = %e, "sync stream closed: the agent attested again and its record could not be read");
                        return Ok(Step::End(None));
                    }
                }
                self.node = selectors.clone();
                self.regroup().await?
            }
            Event::AgentAttested { .. } => Step::Nothing,
            Event::BundleChanged => Step::Line(bundle_line(&self.state)?),
            Event::PoliciesChanged if self.policies => Step::Line(policies_line(&self.state).await?),
            Event::PoliciesChanged => Step::Nothing,
            Event::AgentRemoved { agent, reason } if *agent == self.agent => Step::End(Some(*reason)),
            Event::AgentRemoved { .. } | Event::SecretChanged { .. } => Step::Nothing,
            // Changes may have been missed (through another replica, or by this stream falling
            // behind): check the agent again, then start over with a fresh snapshot.
            Event::Resync => {
                if let Some(reason) = still_served(&self.state, &self.agent).await {
                    return Ok(Step::End(Some(reason)));
                }
                // Group and attestation events may be among the lost ones too.
                if let Some(record) = self.state.store.get_agent(&self.agent).await? {
                    self.node = record.selectors;
                    self.groups = groups_of(&self.state, &self.node).await?;
                }
                self.fresh_snapshot().await?
            }
        })
    }

    /// Decides the agent's node groups again from its node selectors; a fresh snapshot if they
    /// changed.
    async fn regroup(&mut self) -> Result<Step, ApiError> {
        let now = groups_of(&self.state, &self.node).await?;
        if now == self.groups {
            return Ok(Step::Nothing);
        }
        self.groups = now;
        self.fresh_snapshot().await
    }

    /// A snapshot of what the agent serves now, read after the stream is routed its groups' changes
    /// (so none falls between the two).
    async fn fresh_snapshot(&self) -> Result<Step, ApiError> {
        self.sub.route(&self.agent, &self.groups);
        let snap = snapshot(&self.state, &self.agent, &self.groups).await?;
        // A snapshot replaces the lines before it, a policy change among them too.
        Ok(Step::Snapshot(if self.policies {
            concat(vec![snap, policies_line(&self.state).await?])
        } else {
            snap
        }))
    }
}

/// Whether the SVID of serial `serial` still authenticates the agent of `record` (its current SVID
/// or the one it was just renewed to; a re-attestation replaces both).
fn holds(record: &AgentRecord, serial: &str) -> bool {
    record.svid_serial.as_deref() == Some(serial) || record.new_svid_serial.as_deref() == Some(serial)
}

/// Whether `agent` was removed (banned or evicted) since its stream opened; `None` while it may be
/// served (a store error leaves the stream as it is: the next event or reconnect checks again).
async fn still_served(state: &AppState, agent: &SpiffeId) -> Option<CloseReason> {
    match state.store.get_agent(agent).await {
        Ok(None) => Some(CloseReason::Evicted),
        Ok(Some(a)) if a.banned => Some(CloseReason::Banned),
        _ => None,
    }
}

/// Sends the closing line of a removed agent's stream; the caller then ends the stream.
async fn close_removed(tx: &mpsc::Sender<Bytes>, agent: &SpiffeId, reason: CloseReason) {
    let message = match reason {
        CloseReason::Banned => format!(
            "agent `{agent}` was banned by an admin: the server no longer serves it and it may not attest again under this ID; to bring the node back, an admin must lift the ban (`vouch agent evict {agent}`) and the agent must attest again"
        ),
        CloseReason::Evicted => format!(
            "agent `{agent}` was evicted by an admin: its SVID no longer works; it must attest again (restart it; a join-token agent needs a new token)"
        ),
    };
    tracing::info!(target: "vouch::audit", event = "agent.sync.closed", agent = %agent, reason = ?reason);
    if let Ok(bytes) = line(&SyncLine::Closed { reason, message }) {
        // The agent may be gone already; the stream ends either way.
        let _ = tx.send(bytes).await;
    }
}

/// Checks that the agent of `served` may serve `entry` at `now`.
fn check_entry_for_agent(entry: Option<&Entry>, served: &Served, id: &EntryId, now: i64) -> AppResult<()> {
    let entry = entry.ok_or_else(|| ApiError::not_found(format!("no entry with id `{id}`")))?;
    if !served.serves(&entry.parent_id) {
        return Err(served.refusal(entry));
    }
    if entry.is_expired(now) {
        return Err(ApiError::forbidden(format!("entry `{id}` has expired")));
    }
    Ok(())
}

/// Loads an entry and checks that `agent` may serve it.
/// For a call an agent makes on behalf of one of its workloads (a secret read): the calling agent
/// and the workload's entry, which the agent must serve. Charged to the agent's JWT limit (one
/// per-agent bound for calls on behalf of workloads).
pub(crate) async fn workload_entry(
    state: &AppState,
    caller: &Caller,
    entry_id: &EntryId,
) -> AppResult<(SpiffeId, Entry)> {
    let agent = agent_of(caller)?;
    check_agent_limit(state, Limit::Jwt, &agent, 1)?;
    let entry = entry_for_agent(state, &agent, entry_id).await?;
    Ok((agent, entry))
}

async fn entry_for_agent(state: &AppState, agent: &SpiffeId, id: &EntryId) -> AppResult<Entry> {
    let served = Served::load(state, agent).await?;
    let entry = state.store.get_entry(id).await?;
    check_entry_for_agent(entry.as_ref(), &served, id, state.now_secs())?;
    entry.ok_or_else(|| ApiError::not_found(format!("no entry with id `{id}`")))
}

async fn sign(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<SignRequest>,
) -> AppResult<Json<SignResponse>> {
    let agent = agent_of(&caller)?;
    if req.requests.is_empty() || req.requests.len() > MAX_SIGN_BATCH {
        return Err(ApiError::bad_request(format!("requests: a batch holds 1 to {MAX_SIGN_BATCH} CSRs")));
    }
    let cost = u32::try_from(req.requests.len()).unwrap_or(u32::MAX);
    check_agent_limit(&state, Limit::Sign, &agent, cost)?;
    let started = Instant::now();
    // The agent's node groups, for the check of each entry below.
    let served = Served::load(&state, &agent).await?;
    // A small batch reads its entries one by one (indexed point reads; each is then checked to be
    // the agent's or one of its groups'); a large one reads all the agent's entries once. Reading
    // them all for every batch made a one-CSR request cost as much as the agent has entries: with
    // 100 entries per agent, signing fell to a fifth (bench/scale).
    let entries: HashMap<EntryId, Entry> = if req.requests.len() <= POINT_READ_BATCH {
        let mut found = HashMap::with_capacity(req.requests.len());
        for item in &req.requests {
            if let Some(e) = state.store.get_entry(&item.entry_id).await? {
                found.insert(e.id.clone(), e);
            }
        }
        found
    } else {
        crate::groups::served_entries(&state, &agent, &served.members)
            .await?
            .into_iter()
            .map(|e| (e.id.clone(), e))
            .collect()
    };
    let now_s = state.now_secs();
    let mut results = Vec::with_capacity(req.requests.len());
    let mut issued_count = 0u64;
    // Audited once the answer is certain (after the re-check below), not as each is signed.
    let mut minted = Vec::new();
    for (i, item) in req.requests.into_iter().enumerate() {
        let outcome = match entries.get(&item.entry_id) {
            Some(entry) => {
                check_entry_for_agent(Some(entry), &served, &item.entry_id, now_s).and_then(|()| {
                    sign_one(&state, entry, &item.csr)
                        .map_err(|e| ApiError { message: format!("requests[{i}]: {}", e.message), ..e })
                })
            }
            // Not among the agent's entries: read it (only on this failure path) to say whether it
            // does not exist or belongs to another agent, as the JWT route does.
            None => match state.store.get_entry(&item.entry_id).await {
                Ok(other) => {
                    check_entry_for_agent(other.as_ref(), &served, &item.entry_id, now_s).and_then(|()| {
                        Err(ApiError::not_found(format!(
                            "entry `{}` changed while the batch was signed; ask again",
                            item.entry_id
                        )))
                    })
                }
                Err(e) => Err(e.into()),
            },
        };
        let outcome = match outcome {
            Ok((svid, capped)) => {
                issued_count += 1;
                minted.push((item.entry_id.clone(), svid.spiffe_id.clone(), svid.expires_at, capped));
                SignOutcome::Svid(svid)
            }
            Err(e) => {
                state.metrics.issuance_errors.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: "vouch::audit", event = "svid.x509.refused", caller = %agent, entry_id = %item.entry_id, reason = %e.message);
                SignOutcome::Error(e.detail())
            }
        };
        results.push(SignResult { entry_id: item.entry_id, outcome });
    }
    if issued_count > 0 {
        if let Err(e) = still_admitted(&state, &agent).await {
            tracing::warn!(target: "vouch::audit", event = "svid.x509.discarded", caller = %agent, count = issued_count, reason = %e.message);
            return Err(e);
        }
    }
    for (entry_id, spiffe_id, expires_at, capped) in minted {
        tracing::info!(target: "vouch::audit", event = "svid.x509.mint", caller = %agent, %entry_id, %spiffe_id, expires_at, capped);
    }
    state.metrics.x509_issued.fetch_add(issued_count, Ordering::Relaxed);
    state.metrics.x509_latency.observe(started.elapsed());
    Ok(Json(SignResponse { results }))
}

/// Charges `records` delivery records to the agent's report limit; over it, a 429 with
/// `Retry-After`.
pub(crate) fn check_report_limit(state: &AppState, agent: &SpiffeId, records: u32) -> AppResult<()> {
    check_agent_limit(state, Limit::Report, agent, records)
}

/// Checks, after signing or minting and before answering, that the agent was not banned or evicted
/// meanwhile (a plain read); if it was, what was signed is discarded and the request refused.
///
/// Why this makes the order linearizable: the auth layer checks the agent before signing, so
/// without this read a ban committed while a request was being signed was followed by an SVID
/// signed after the ban and answered after the admin had been told "banned". With it, each sign or
/// JWT request takes effect at this read (its linearization point): a ban or eviction whose write
/// committed before the read is seen, and what was signed is dropped; one committed after the read
/// is ordered after the request, whose signing happened before the read. The history is then the
/// same as if every request had run atomically at its re-check, so once the admin has the ban's
/// answer, no request re-checks afterwards and still gets an SVID. An agent write never undoes a
/// ban (the store's agent rules), so a committed ban cannot be missed by the read.
pub(crate) async fn still_admitted(state: &AppState, agent: &SpiffeId) -> AppResult<()> {
    match state.store.get_agent(agent).await? {
        None => Err(StoreError::AgentNotFound(agent.to_string()).into()),
        Some(a) if a.banned => Err(StoreError::AgentBanned(agent.to_string()).into()),
        Some(_) => Ok(()),
    }
}

/// Charges `cost` to the agent's signing or JWT limit; over it, a 429 with `Retry-After`.
fn check_agent_limit(state: &AppState, limit: Limit, agent: &SpiffeId, cost: u32) -> AppResult<()> {
    let (limiter, rate, what) = match limit {
        Limit::Sign => (&state.limits.sign, state.config.limits.sign, "CSRs signed"),
        Limit::Report => (&state.limits.report, state.config.limits.sign, "delivery records reported"),
        Limit::Jwt | Limit::Attest => (&state.limits.jwt, state.config.limits.jwt, "JWT-SVIDs minted"),
    };
    limiter.check(agent, cost, tokio::time::Instant::now()).map_err(|wait| {
        rate_limited(state, limit, wait, || {
            format!(
                "agent `{agent}`: more than {}/s {what} (burst {}); retry after the time in Retry-After",
                rate.per_second, rate.burst
            )
        })
    })
}

/// Signs one CSR for one of the agent's entries; the SVID, and whether its lifetime was capped by
/// the signing CA's.
fn sign_one(state: &AppState, entry: &Entry, csr: &Der) -> AppResult<(SignedSvid, bool)> {
    let public = vouch_ca::verify_csr_pem_or_der(&csr.0)?;
    let svid_ttl = entry.x509_svid_ttl.map(Duration::from_secs).unwrap_or(state.config.x509_svid_ttl);
    let now = state.now();
    let issued = state.signing(|a| {
        a.mint_x509_with_common_name(
            &entry.spiffe_id,
            &entry.dns_names,
            entry.x509_common_name.as_ref(),
            &public,
            svid_ttl,
            now,
        )
    })?;
    let expires_at = ttl::unix_seconds(issued.svid.not_after);
    let svid = SignedSvid {
        spiffe_id: entry.spiffe_id.clone(),
        cert_chain: issued.chain_der().into_iter().map(Der).collect(),
        expires_at,
    };
    Ok((svid, issued.svid.capped))
}

async fn jwt(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<AgentJwtRequest>,
) -> AppResult<Json<AgentJwtResponse>> {
    use vouch_core::entry::{MAX_JWT_SVID_TTL, MIN_JWT_SVID_TTL};
    let agent = agent_of(&caller)?;
    check_agent_limit(&state, Limit::Jwt, &agent, 1)?;
    let entry = entry_for_agent(&state, &agent, &req.entry_id).await?;
    let jwt_ttl = requested_ttl(
        entry.jwt_svid_ttl,
        state.config.jwt_svid_ttl,
        MIN_JWT_SVID_TTL,
        MAX_JWT_SVID_TTL,
        "jwt_svid_ttl",
    )?;
    let now = state.now();
    let minted = state.signing(|a| a.mint_jwt(&entry.spiffe_id, &req.audience, jwt_ttl, now))?;
    // A ban or eviction committed while minting wins: see `still_admitted`.
    if let Err(e) = still_admitted(&state, &agent).await {
        tracing::warn!(target: "vouch::audit", event = "svid.jwt.discarded", caller = %agent, entry_id = %entry.id, reason = %e.message);
        return Err(e);
    }
    state.metrics.jwt_issued.fetch_add(1, Ordering::Relaxed);
    tracing::info!(target: "vouch::audit", event = "svid.jwt.mint", caller = %agent, entry_id = %entry.id, spiffe_id = %entry.spiffe_id, audience = ?req.audience, expires_at = minted.expires_at);
    Ok(Json(AgentJwtResponse {
        spiffe_id: entry.spiffe_id,
        token: minted.token,
        expires_at: minted.expires_at,
    }))
}

async fn list_agents(State(state): State<Arc<AppState>>) -> AppResult<Json<AgentList>> {
    let all_groups = state.store.list_groups().await?;
    let agents = state
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| AgentInfo {
            spiffe_id: a.spiffe_id,
            attestation: a.attestation,
            selectors: a.selectors.iter().cloned().collect(),
            created_at: a.created_at,
            last_seen: a.last_seen,
            svid_expires_at: a.svid_expires_at,
            banned: a.banned,
            groups: crate::groups::member_ids(&all_groups, &a.selectors).into_iter().collect(),
        })
        .collect();
    Ok(Json(AgentList { agents }))
}

async fn evict_agent(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<AgentRef>,
) -> AppResult<Json<Evicted>> {
    if !state.store.delete_agent(&req.spiffe_id).await? {
        return Err(ApiError::not_found(format!("no agent `{}`", req.spiffe_id)));
    }
    state.publish(Event::AgentRemoved { agent: req.spiffe_id.clone(), reason: CloseReason::Evicted });
    tracing::info!(target: "vouch::audit", event = "agent.evict", %caller, agent = %req.spiffe_id);
    Ok(Json(Evicted { evicted: req.spiffe_id }))
}

/// Bans an agent in one atomic write (whatever the agent does meanwhile), then ends its streams.
async fn ban_agent(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<AgentRef>,
) -> AppResult<Json<Banned>> {
    state.store.ban_agent(&req.spiffe_id, state.now_secs()).await?;
    state.publish(Event::AgentRemoved { agent: req.spiffe_id.clone(), reason: CloseReason::Banned });
    tracing::info!(target: "vouch::audit", event = "agent.ban", %caller, agent = %req.spiffe_id);
    Ok(Json(Banned { banned: req.spiffe_id }))
}
