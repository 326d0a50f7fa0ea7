//! SPIFFE federation with other trust domains (SPIFFE Federation standard): the relationships an
//! admin manages under `/v1/federation`, the refresher that fetches each one's bundle from its
//! bundle endpoint, and the federated bundles the server hands to agents.
//!
//! A relationship names the other trust domain, its bundle endpoint URL and profile: `https_web`
//! (a web-PKI certificate naming the host, checked against `federation.web_ca_file`) or
//! `https_spiffe` (an X509-SVID with the configured SPIFFE ID, chaining to the other trust domain's
//! bundle: the bootstrap bundle for the first fetch, the last fetched one after). A fetched bundle
//! replaces the stored one only if it parses and holds authorities; otherwise the last good bundle
//! stays and the error is recorded. The next fetch follows the bundle's `spiffe_refresh_hint`,
//! clamped to [`MIN_REFRESH`]..[`MAX_REFRESH`] ([`DEFAULT_REFRESH`] when it has none).
//!
//! With replicas on PostgreSQL only the holder of the lead fetches (one fetch per relationship and
//! hint, one stored result); every replica reads the stored bundles when the store tells it of a
//! change (every [`POLL`] at the latest) and serves the same ones.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use vouch_api::federation::{
    Profile, RefreshState, Relationship, RelationshipList, RelationshipPatch, RelationshipSpec,
    MAX_RELATIONSHIPS,
};
use vouch_api::paths;
use vouch_ca::Bundle;
use vouch_core::{SpiffeId, TrustDomain};
use vouch_store::{FederationRow, StoreError};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::extract::ApiJson;
use crate::state::{AppState, Event, FOLLOW_INTERVAL};

type AppResult<T> = Result<T, ApiError>;

/// The shortest time between two fetches of one bundle, whatever its hint says.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// The longest: a bundle is fetched at least daily.
pub const MAX_REFRESH: Duration = Duration::from_secs(86400);
/// The time between fetches when a bundle has no `spiffe_refresh_hint`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// The time before a failed fetch is tried again (at most the refresh time).
pub const RETRY: Duration = Duration::from_secs(30);
/// The longest between two reads of the relationships when nothing wakes the refresher: the
/// bound on how long a new leader takes to start fetching, and the fallback for a missed change
/// notice of another replica (changes wake it at once). Each read transfers every stored bundle,
/// so it is not done every [`FOLLOW_INTERVAL`].
pub const POLL: Duration = Duration::from_secs(10);
/// The largest bundle endpoint answer read: a bundle of a few dozen authorities is tens of KiB.
pub const MAX_BUNDLE_BYTES: usize = 1 << 20;
/// How long one fetch may take, connection and TLS handshake included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest error message kept in the state (a peer's answer is never quoted at length).
const MAX_ERROR_CHARS: usize = 512;

/// The settings of a relationship, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Settings {
    bundle_endpoint_url: String,
    profile: Profile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    endpoint_spiffe_id: Option<SpiffeId>,
}

/// The refresh state of a relationship, as stored, with the bundle served (SPIFFE bundle JWKS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_refresh: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next_refresh: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bundle: Option<String>,
}

/// One relationship, parsed from its row.
#[derive(Debug, Clone)]
struct Parsed {
    trust_domain: TrustDomain,
    settings: Settings,
    stored: Stored,
    bundle: Option<Bundle>,
    revision: u64,
}

impl Parsed {
    fn of(row: &FederationRow) -> Result<Self, StoreError> {
        let corrupt = |e: serde_json::Error| {
            StoreError::Corrupt(format!("federation relationship `{}`: {e}", row.trust_domain))
        };
        let settings: Settings = serde_json::from_str(&row.relationship).map_err(corrupt)?;
        let stored: Stored = serde_json::from_str(&row.state).map_err(corrupt)?;
        let bundle = match &stored.bundle {
            Some(jwks) => Some(Bundle::from_jwks(row.trust_domain.clone(), jwks).map_err(|e| {
                StoreError::Corrupt(format!("federation relationship `{}`: {e}", row.trust_domain))
            })?),
            None => None,
        };
        Ok(Self { trust_domain: row.trust_domain.clone(), settings, stored, bundle, revision: row.revision })
    }

    fn view(&self) -> Relationship {
        let bundle_json = self.stored.bundle.as_deref().and_then(|b| serde_json::from_str(b).ok());
        Relationship {
            trust_domain: self.trust_domain.clone(),
            bundle_endpoint_url: self.settings.bundle_endpoint_url.clone(),
            profile: self.settings.profile,
            endpoint_spiffe_id: self.settings.endpoint_spiffe_id.clone(),
            state: RefreshState {
                last_refresh: self.stored.last_refresh,
                next_refresh: self.stored.next_refresh,
                last_error: self.stored.last_error.clone(),
                last_error_at: self.stored.last_error_at,
                bundle_sequence: self.bundle.as_ref().map(|b| b.sequence),
                x509_authorities: self.bundle.as_ref().map_or(0, |b| b.x509_authorities.len()),
                jwt_authorities: self.bundle.as_ref().map_or(0, |b| b.jwt_authorities.len()),
                bundle: bundle_json,
            },
        }
    }
}

/// The federated bundles this server serves to agents, by trust domain, and the bell that wakes
/// the refresher when an admin changed a relationship.
#[derive(Debug, Default)]
pub struct Federated {
    bundles: RwLock<Arc<BTreeMap<TrustDomain, Bundle>>>,
    wake: Notify,
}

impl Federated {
    /// The federated bundles now.
    pub fn bundles(&self) -> Arc<BTreeMap<TrustDomain, Bundle>> {
        self.bundles.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wakes the refresher: relationships changed (here, or through another replica).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Installs `bundles`; whether they differ from the ones served.
    fn set(&self, bundles: BTreeMap<TrustDomain, Bundle>) -> bool {
        let mut current = self.bundles.write().unwrap_or_else(|p| p.into_inner());
        if **current == bundles {
            return false;
        }
        *current = Arc::new(bundles);
        true
    }
}

/// The federation routes (the caller must be an admin; `crate::routes` attaches the check).
pub(crate) fn admin_routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::FEDERATION, post(create).get(list))
        .route(paths::FEDERATION_ONE, get(show).patch(update).delete(delete))
}

/// A bundle given by an admin: PEM certificates (X.509 authorities only) or a SPIFFE bundle JWKS.
fn parse_bootstrap(trust_domain: &TrustDomain, text: &str) -> Result<Bundle, String> {
    let text = text.trim();
    let bundle = if text.starts_with('{') {
        Bundle::from_jwks(trust_domain.clone(), text).map_err(|e| format!("bootstrap_bundle: {e}"))?
    } else {
        let mut x509_authorities = Vec::new();
        for (label, der) in vouch_ca::pem::decode_all(text) {
            if label != "CERTIFICATE" {
                return Err(format!("bootstrap_bundle: a `{label}` block; only CERTIFICATE blocks (or a SPIFFE bundle JWKS) are accepted"));
            }
            vouch_ca::x509::cert_info(&der).map_err(|e| format!("bootstrap_bundle: {e}"))?;
            x509_authorities.push(der);
        }
        Bundle {
            trust_domain: trust_domain.clone(),
            x509_authorities,
            jwt_authorities: BTreeMap::new(),
            sequence: 0,
            refresh_hint: None,
        }
    };
    if bundle.x509_authorities.is_empty() && bundle.jwt_authorities.is_empty() {
        return Err("bootstrap_bundle holds no authority: give the other trust domain's CA certificates as PEM, or its SPIFFE bundle (JWKS)".into());
    }
    Ok(bundle)
}

/// Checks settings against each other and this server: https URL, the profile's needs.
fn check_settings(
    state: &AppState,
    td: &TrustDomain,
    s: &Settings,
    bootstrap: Option<&Bundle>,
) -> AppResult<()> {
    if td == &state.config.trust_domain {
        return Err(ApiError::bad_request(format!(
            "trust_domain `{td}` is this server's own trust domain; federation is with other trust domains"
        )));
    }
    let url = vouch_http::Url::parse(&s.bundle_endpoint_url)
        .map_err(|e| ApiError::bad_request(format!("bundle_endpoint_url {e}")))?;
    if !url.tls {
        return Err(ApiError::bad_request(format!(
            "bundle_endpoint_url `{}` must be https (both federation profiles are TLS)",
            s.bundle_endpoint_url
        )));
    }
    match (s.profile, &s.endpoint_spiffe_id) {
        (Profile::HttpsSpiffe, None) => Err(ApiError::bad_request(
            "profile https_spiffe needs endpoint_spiffe_id: the SPIFFE ID the bundle endpoint presents (a vouch server's is spiffe://<trust domain>/vouch/server)",
        )),
        (Profile::HttpsSpiffe, Some(id)) if id.trust_domain() != td => Err(ApiError::bad_request(format!(
            "endpoint_spiffe_id `{id}` is not in trust domain `{td}`"
        ))),
        (Profile::HttpsSpiffe, Some(_)) if bootstrap.is_none_or(|b| b.x509_authorities.is_empty()) => {
            Err(ApiError::bad_request(
                "profile https_spiffe needs bootstrap_bundle with the other trust domain's X.509 authorities: they authenticate the first fetch",
            ))
        }
        (Profile::HttpsWeb, Some(id)) => Err(ApiError::bad_request(format!(
            "endpoint_spiffe_id `{id}` is for profile https_spiffe; an https_web endpoint is checked by its host name"
        ))),
        _ => Ok(()),
    }
}

fn encode<T: Serialize>(value: &T) -> AppResult<String> {
    serde_json::to_string(value).map_err(|e| ApiError::internal("federation state", e))
}

/// The stored state for a new bootstrap bundle: served at once, fetched again now.
fn bootstrap_state(bundle: Option<&Bundle>) -> AppResult<Stored> {
    let jwks =
        bundle.map(Bundle::to_jwks).transpose().map_err(|e| ApiError::internal("bootstrap bundle", e))?;
    Ok(Stored { bundle: jwks, ..Stored::default() })
}

async fn load(state: &AppState, td: &TrustDomain) -> AppResult<Parsed> {
    let row = state
        .store
        .get_federation(td)
        .await?
        .ok_or_else(|| ApiError::from(StoreError::FederationNotFound(td.to_string())))?;
    Ok(Parsed::of(&row)?)
}

fn path_td(text: &str) -> AppResult<TrustDomain> {
    TrustDomain::new(text).map_err(|e| ApiError::bad_request(format!("trust domain `{text}`: {e}")))
}

/// After a change: the refresher fetches at once and the served bundles follow the store.
async fn changed(state: &AppState) -> AppResult<()> {
    sync_served(state).await?;
    state.federation.wake();
    Ok(())
}

async fn create(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(spec): ApiJson<RelationshipSpec>,
) -> AppResult<(StatusCode, Json<Relationship>)> {
    let td = spec.trust_domain;
    let bootstrap = spec
        .bootstrap_bundle
        .as_deref()
        .map(|b| parse_bootstrap(&td, b))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let settings = Settings {
        bundle_endpoint_url: spec.bundle_endpoint_url,
        profile: spec.profile,
        endpoint_spiffe_id: spec.endpoint_spiffe_id,
    };
    check_settings(&state, &td, &settings, bootstrap.as_ref())?;
    if state.store.list_federations().await?.len() >= MAX_RELATIONSHIPS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_RELATIONSHIPS} federation relationships; delete one first"
        )));
    }
    let row = FederationRow {
        trust_domain: td.clone(),
        relationship: encode(&settings)?,
        state: encode(&bootstrap_state(bootstrap.as_ref())?)?,
        revision: 1,
    };
    state.store.create_federation(&row).await?;
    tracing::info!(target: "vouch::audit", event = "federation.create", %caller, trust_domain = %td, profile = settings.profile.as_str(), url = %settings.bundle_endpoint_url);
    changed(&state).await?;
    Ok((StatusCode::CREATED, Json(Parsed::of(&row)?.view())))
}

async fn list(State(state): State<Arc<AppState>>) -> AppResult<Json<RelationshipList>> {
    let mut relationships = Vec::new();
    for row in state.store.list_federations().await? {
        relationships.push(Parsed::of(&row)?.view());
    }
    Ok(Json(RelationshipList { relationships }))
}

async fn show(State(state): State<Arc<AppState>>, Path(td): Path<String>) -> AppResult<Json<Relationship>> {
    Ok(Json(load(&state, &path_td(&td)?).await?.view()))
}

async fn update(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(td): Path<String>,
    ApiJson(patch): ApiJson<RelationshipPatch>,
) -> AppResult<Json<Relationship>> {
    let td = path_td(&td)?;
    let current = load(&state, &td).await?;
    let bootstrap = patch
        .bootstrap_bundle
        .as_deref()
        .map(|b| parse_bootstrap(&td, b))
        .transpose()
        .map_err(ApiError::bad_request)?;
    let mut settings = current.settings.clone();
    if let Some(url) = patch.bundle_endpoint_url {
        settings.bundle_endpoint_url = url;
    }
    if let Some(profile) = patch.profile {
        settings.profile = profile;
        if profile == Profile::HttpsWeb && patch.endpoint_spiffe_id.is_none() {
            settings.endpoint_spiffe_id = None;
        }
    }
    if let Some(id) = patch.endpoint_spiffe_id {
        settings.endpoint_spiffe_id = Some(id);
    }
    check_settings(&state, &td, &settings, bootstrap.as_ref().or(current.bundle.as_ref()))?;
    // A new bootstrap bundle replaces the bundle served; otherwise the last good one stays, and the
    // next fetch (with the new settings) is due now.
    let stored = match &bootstrap {
        Some(b) => bootstrap_state(Some(b))?,
        None => Stored { next_refresh: None, ..current.stored.clone() },
    };
    let row = FederationRow {
        trust_domain: td.clone(),
        relationship: encode(&settings)?,
        state: encode(&stored)?,
        revision: current.revision,
    };
    let revision = state.store.update_federation(&row).await?;
    tracing::info!(target: "vouch::audit", event = "federation.update", %caller, trust_domain = %td, profile = settings.profile.as_str(), url = %settings.bundle_endpoint_url, new_bootstrap_bundle = bootstrap.is_some());
    changed(&state).await?;
    Ok(Json(Parsed::of(&FederationRow { revision, ..row })?.view()))
}

async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(td): Path<String>,
) -> AppResult<Json<Relationship>> {
    let td = path_td(&td)?;
    let row = state.store.delete_federation(&td).await?;
    tracing::info!(target: "vouch::audit", event = "federation.delete", %caller, trust_domain = %td);
    changed(&state).await?;
    Ok(Json(Parsed::of(&row)?.view()))
}

/// Serves the stored bundles; tells agents when they changed. A row that cannot be read is logged
/// and left out (its trust domain is then not served) rather than stopping every other one.
async fn sync_served(state: &AppState) -> Result<Vec<Parsed>, StoreError> {
    let mut parsed = Vec::new();
    for row in state.store.list_federations().await? {
        match Parsed::of(&row) {
            Ok(p) => parsed.push(p),
            Err(e) => {
                tracing::error!(error = %e, "a federation relationship cannot be read; its bundle is not served")
            }
        }
    }
    let bundles = parsed.iter().filter_map(|p| Some((p.trust_domain.clone(), p.bundle.clone()?))).collect();
    if state.federation.set(bundles) {
        state.publish(Event::BundleChanged);
    }
    Ok(parsed)
}

/// The time until the next fetch after a good one: the bundle's hint, clamped.
pub fn refresh_after(hint: Option<u64>) -> Duration {
    hint.map_or(DEFAULT_REFRESH, Duration::from_secs).clamp(MIN_REFRESH, MAX_REFRESH)
}

/// Why a fetch failed, for the state (bounded, one line).
fn short(error: String) -> String {
    let one_line: String = error.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    one_line.chars().take(MAX_ERROR_CHARS).collect()
}

/// Fetches and checks the bundle of one relationship; `current` is the bundle served (the bootstrap
/// bundle before the first fetch), whose X.509 authorities authenticate an `https_spiffe` endpoint.
async fn fetch(
    td: &TrustDomain,
    settings: &Settings,
    current: Option<&Bundle>,
    web_ca_file: &std::path::Path,
) -> Result<Bundle, String> {
    let url = vouch_http::Url::parse(&settings.bundle_endpoint_url).map_err(|e| e.to_string())?;
    let getter = match (settings.profile, &settings.endpoint_spiffe_id) {
        (Profile::HttpsWeb, _) => {
            vouch_http::Getter::new(&url, Some(&vouch_http::Trust::CaFile(web_ca_file.to_owned())))
        }
        (Profile::HttpsSpiffe, Some(id)) => {
            let roots = current.map(|b| b.x509_authorities.as_slice()).unwrap_or_default();
            if roots.is_empty() {
                return Err(format!("no X.509 authority of `{td}` to authenticate its endpoint; give a bootstrap bundle (`vouch federation update {td} --bootstrap-bundle FILE`)"));
            }
            let verifier = vouch_tls::SpiffeServerVerifier::new(roots, id.clone());
            let config = vouch_tls::client_config(verifier, None).map_err(|e| e.to_string())?;
            vouch_http::Getter::with_connector(&url, tokio_rustls::TlsConnector::from(Arc::new(config)))
        }
        (Profile::HttpsSpiffe, None) => return Err("profile https_spiffe without endpoint_spiffe_id".into()),
    }
    .map_err(|e| e.to_string())?;
    let (status, body) = getter
        .get(&url.path, None, MAX_BUNDLE_BYTES, FETCH_TIMEOUT)
        .await
        .map_err(|e| format!("{}: {e}", settings.bundle_endpoint_url))?;
    if status != 200 {
        return Err(format!("{}: HTTP {status}", settings.bundle_endpoint_url));
    }
    let text = std::str::from_utf8(&body)
        .map_err(|_| format!("{}: the answer is not UTF-8 text", settings.bundle_endpoint_url))?;
    let bundle = Bundle::from_jwks(td.clone(), text)
        .map_err(|e| format!("{}: not a SPIFFE bundle: {e}", settings.bundle_endpoint_url))?;
    if bundle.x509_authorities.is_empty() {
        return Err(format!(
            "{}: the bundle holds no X.509 authority; the last good bundle is kept",
            settings.bundle_endpoint_url
        ));
    }
    Ok(bundle)
}

/// Fetches one relationship's bundle and stores the outcome (under the revision it was fetched
/// with); the last good bundle is kept on failure.
async fn refresh_one(state: &AppState, p: &Parsed) -> Result<(), StoreError> {
    let now = state.now_secs();
    let web_ca = &state.config.federation.web_ca_file;
    let mut stored = p.stored.clone();
    let fetched = fetch(&p.trust_domain, &p.settings, p.bundle.as_ref(), web_ca).await;
    let counter = match &fetched {
        Ok(_) => &state.metrics.federation_refreshes,
        Err(_) => &state.metrics.federation_refresh_failures,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match fetched {
        Ok(bundle) => {
            let after = refresh_after(bundle.refresh_hint);
            match bundle.to_jwks() {
                Ok(jwks) => {
                    if p.bundle.as_ref() != Some(&bundle) {
                        tracing::info!(target: "vouch::audit", event = "federation.bundle", trust_domain = %p.trust_domain, sequence = bundle.sequence, x509_authorities = bundle.x509_authorities.len(), jwt_authorities = bundle.jwt_authorities.len(), "federated bundle changed");
                    }
                    stored.bundle = Some(jwks);
                    stored.last_refresh = Some(now);
                    stored.last_error = None;
                    stored.last_error_at = None;
                    stored.next_refresh = Some(now + i64::try_from(after.as_secs()).unwrap_or(i64::MAX));
                }
                Err(e) => {
                    stored.last_error = Some(short(format!("cannot encode the fetched bundle: {e}")));
                    stored.last_error_at = Some(now);
                    stored.next_refresh = Some(now + i64::try_from(RETRY.as_secs()).unwrap_or(30));
                }
            }
        }
        Err(error) => {
            tracing::warn!(trust_domain = %p.trust_domain, %error, "cannot refresh a federated bundle; keeping the last good one");
            let retry = RETRY.min(refresh_after(p.bundle.as_ref().and_then(|b| b.refresh_hint)));
            stored.last_error = Some(short(error));
            stored.last_error_at = Some(now);
            stored.next_refresh = Some(now + i64::try_from(retry.as_secs()).unwrap_or(30));
        }
    }
    let json = serde_json::to_string(&stored).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if !state.store.save_federation_state(&p.trust_domain, p.revision, &json).await? {
        tracing::debug!(trust_domain = %p.trust_domain, "the relationship changed during its refresh; the result was dropped");
    }
    Ok(())
}

/// One round: the leader fetches every due bundle (all at once, so one slow endpoint delays no
/// other); every replica serves the stored ones. Returns how long until the next round.
async fn round(state: &Arc<AppState>) -> Duration {
    let parsed = match sync_served(state).await {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the federation relationships");
            return FOLLOW_INTERVAL;
        }
    };
    if !state.is_leader() {
        return POLL;
    }
    let now = state.now_secs();
    let mut fetches = tokio::task::JoinSet::new();
    for p in parsed.iter().filter(|p| p.stored.next_refresh.is_none_or(|t| t <= now)) {
        let (state, p) = (state.clone(), p.clone());
        fetches.spawn(async move {
            if let Err(e) = refresh_one(&state, &p).await {
                tracing::warn!(trust_domain = %p.trust_domain, error = %e, "cannot store a federated bundle's refresh");
            }
        });
    }
    let fetched = !fetches.is_empty();
    while fetches.join_next().await.is_some() {}
    if fetched {
        if let Err(e) = sync_served(state).await {
            tracing::warn!(error = %e, "cannot read the federation relationships");
        }
    }
    let now = state.now_secs();
    let next = parsed.iter().filter_map(|p| p.stored.next_refresh).min();
    match next {
        _ if fetched => Duration::from_millis(100),
        Some(t) => {
            Duration::from_secs(u64::try_from(t - now).unwrap_or(0)).clamp(Duration::from_millis(100), POLL)
        }
        None => POLL,
    }
}

/// The refresher: a round now, after each change (an admin's, or another replica's as the store
/// tells), and when the next fetch is due (at least every [`POLL`]), until shutdown.
pub async fn refresher(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let wait = round(&state).await;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.federation.wake.notified() => {}
            _ = shutdown.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_the_hint_within_bounds() {
        assert_eq!(refresh_after(None), DEFAULT_REFRESH);
        assert_eq!(refresh_after(Some(60)), Duration::from_secs(60));
        assert_eq!(refresh_after(Some(0)), MIN_REFRESH);
        assert_eq!(refresh_after(Some(u64::MAX)), MAX_REFRESH);
    }

    #[test]
    fn errors_kept_are_one_bounded_line() {
        let long = format!("a\nb{}", "x".repeat(10_000));
        let kept = short(long);
        assert_eq!(kept.chars().count(), MAX_ERROR_CHARS);
        assert!(kept.starts_with("a b"));
    }
}
