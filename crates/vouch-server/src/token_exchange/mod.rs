//! OAuth 2.0 Token Exchange (RFC 8693): `POST /v1/token` takes a JWT of a trusted external issuer
//! (a CI system's OIDC token, a Kubernetes service-account token, another trust domain's JWT-SVID)
//! and answers a JWT-SVID of this trust domain for the requested audience (section 2.2.1), the
//! SPIFFE ID chosen by the first rule the verified claims meet. Errors are RFC 6749 section 5.2
//! JSON; as RFC 8693 section 2.2.2 requires, an invalid or unacceptable subject token is
//! `invalid_request` (the description says why), an unacceptable audience `invalid_target`.
//!
//! Each subject token is exchanged once: its key (issuer and `jti`, else the token's hash) is
//! recorded in the store until the token expires, so a replay is refused on every replica and
//! after a restart. Served on the OIDC listener, which relying parties reach without a client
//! certificate.

pub mod rules;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use vouch_ca::jwt::{JwsAlg, MAX_TOKEN_BYTES};
use vouch_core::ttl;

use crate::issuer_keys::{DiscoveredKeys, KeySet};
use crate::limits::KeyedLimiter;
use crate::state::AppState;
pub use rules::{IssuerKeySource, NoMatch, TokenExchangeConfig, TrustedIssuer};

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/v1/token";
/// RFC 8693 section 2.1 `grant_type`.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 section 3 token type of a JWT (what is issued, and what a subject token may be).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// The token type of an X509-SVID, issued for a `csr` (PKCS#10, PEM or base64 DER) when asked
/// as `requested_token_type`: RFC 8693 registers no type for a certificate, so this is vouch's own.
/// The answer's `access_token` is the PEM chain (leaf first) and `x509_bundle` the trust domain's
/// X.509 roots (PEM).
pub const TOKEN_TYPE_X509_SVID: &str = "urn:vouch:params:oauth:token-type:x509-svid";
/// RFC 8693 section 3 token type of an OIDC ID token (accepted as a subject token type).
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Largest form body: a subject token of at most [`MAX_TOKEN_BYTES`] and a few short parameters
/// fit with room to spare, so a token a few times too large still gets a JSON refusal that says so
/// (a larger body is refused with 413 before it is read).
const MAX_BODY_BYTES: usize = 4 * MAX_TOKEN_BYTES;
/// Most form parameters read.
const MAX_PARAMETERS: usize = 32;
/// Clock skew allowed between the issuer and vouch, for `exp`, `nbf` and `iat`.
pub const LEEWAY_SECS: i64 = 30;

/// A refusal: RFC 6749 section 5.2 `error`, its HTTP status and the description.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// A fixed name of the reason, for the throttled audit line.
    kind: &'static str,
    retry_after: Option<Duration>,
}

fn refuse(error: &'static str, kind: &'static str, description: impl Into<String>) -> Refusal {
    Refusal {
        status: StatusCode::BAD_REQUEST,
        error,
        description: description.into(),
        kind,
        retry_after: None,
    }
}

fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut response = no_store((self.status, axum::Json(body)).into_response());
        if let Some(wait) = self.retry_after {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        response
    }
}

/// An issuer's keys from its JWKS file, read again when the file's modification time or size
/// changes; a file that cannot be read or holds no usable key leaves the last good keys in use.
struct FileKeys {
    path: PathBuf,
    current: Mutex<(Option<FileStamp>, Arc<KeySet>)>,
}

/// A file's modification time and size.
type FileStamp = (SystemTime, u64);

impl FileKeys {
    fn stamp(path: &PathBuf) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some((m.modified().ok()?, m.len()))
    }

    fn new(path: PathBuf, keys: KeySet) -> Self {
        let stamp = Self::stamp(&path);
        Self { path, current: Mutex::new((stamp, Arc::new(keys))) }
    }

    fn keys(&self, issuer: &str) -> Arc<KeySet> {
        let stamp = Self::stamp(&self.path);
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if stamp.is_some() && stamp != current.0 {
            let read = std::fs::read_to_string(&self.path)
                .map_err(|e| e.to_string())
                .and_then(|text| vouch_ca::bundle::jwks_keys(&text).map_err(|e| e.to_string()))
                .and_then(|keys| if keys.is_empty() { Err("no usable key".into()) } else { Ok(keys) });
            match read {
                Ok(keys) => {
                    tracing::info!(%issuer, keys = keys.len(), file = %self.path.display(), "token exchange: issuer keys read again");
                    *current = (stamp, Arc::new(keys));
                }
                Err(e) => {
                    tracing::warn!(%issuer, file = %self.path.display(), error = %e, "token exchange: cannot read the issuer's JWKS again; the last good keys stay in use");
                    current.0 = stamp;
                }
            }
        }
        current.1.clone()
    }
}

/// Where an issuer's keys are looked up at run time.
enum IssuerKeys {
    File(FileKeys),
    Discovered(DiscoveredKeys),
}

impl IssuerKeys {
    fn new(issuer: &TrustedIssuer) -> Self {
        match &issuer.keys {
            IssuerKeySource::File { path, keys } => Self::File(FileKeys::new(path.clone(), keys.clone())),
            IssuerKeySource::Discovery(d) => Self::Discovered(DiscoveredKeys::new(
                format!("issuer `{}`", issuer.issuer),
                issuer.issuer.clone(),
                d.clone(),
            )),
        }
    }

    /// The keys for a token of `issuer` whose header names `kid`. A discovered issuer whose keys
    /// were never fetched and cannot be now is the server's problem, not the caller's: 503.
    async fn keys(&self, issuer: &str, token: &str) -> Result<Arc<KeySet>, Refusal> {
        match self {
            Self::File(f) => Ok(f.keys(issuer)),
            Self::Discovered(d) => {
                let kid = crate::issuer_keys::token_kid(token);
                d.keys(kid.as_deref()).await.map_err(|e| {
                    tracing::error!(%issuer, error = %e, "token exchange: the issuer's keys are unavailable");
                    Refusal {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        error: "temporarily_unavailable",
                        description: format!(
                            "the signing keys of issuer `{issuer}` cannot be fetched now; try again later"
                        ),
                        kind: "token exchange: issuer keys unavailable",
                        retry_after: Some(crate::issuer_keys::MIN_REFETCH),
                    }
                })
            }
        }
    }
}

/// A replay key waiting to be recorded, with where its answer goes.
type Pending = (String, i64, tokio::sync::oneshot::Sender<Result<bool, String>>);

/// Group commit of replay keys: concurrent exchanges queue their keys, and whichever request finds
/// no write running records everything queued in one store transaction and hands each its answer.
/// Under load one write serves many exchanges; alone, a request writes its own key at once.
#[derive(Default)]
struct Recorder {
    queue: Mutex<Vec<Pending>>,
    writing: tokio::sync::Mutex<()>,
}

impl Recorder {
    async fn record(
        &self,
        store: &Arc<dyn vouch_store::Store>,
        key: String,
        keep_until: i64,
        now: i64,
    ) -> Result<bool, String> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push((key, keep_until, tx));
        loop {
            tokio::select! {
                biased;
                answer = &mut rx => return answer.map_err(|_| "the replay record was dropped".to_owned())?,
                _guard = self.writing.lock() => {
                    let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
                    if batch.is_empty() {
                        // Another writer took this key and has answered it.
                        continue;
                    }
                    let (keys, senders): (Vec<(String, i64)>, Vec<_>) =
                        batch.into_iter().map(|(k, e, tx)| ((k, e), tx)).unzip();
                    // A task of its own, so the waiters get their answers even if this request is
                    // cancelled (its client went away) while the write runs.
                    let store = store.clone();
                    let write = tokio::spawn(async move {
                        match store.record_exchanged_tokens(&keys, now).await {
                            Ok(fresh) => {
                                for (tx, fresh) in senders.into_iter().zip(fresh) {
                                    let _ = tx.send(Ok(fresh));
                                }
                            }
                            Err(e) => {
                                for tx in senders {
                                    let _ = tx.send(Err(e.to_string()));
                                }
                            }
                        }
                    });
                    let _ = write.await;
                }
            }
        }
    }
}

/// The endpoint's state: the configuration, each issuer's keys, the per-issuer limit and the
/// replay recorder.
struct Exchange {
    state: Arc<AppState>,
    config: TokenExchangeConfig,
    keys: Vec<IssuerKeys>,
    limit: KeyedLimiter<String>,
    recorder: Recorder,
}

/// The router of `POST /v1/token`, if token exchange is configured; merged into the OIDC
/// listener's router.
pub fn router(state: Arc<AppState>) -> Option<Router> {
    let config = state.config.token_exchange.clone()?;
    let keys = config.issuers.iter().map(IssuerKeys::new).collect();
    let limit = KeyedLimiter::new(config.rate, config.issuers.len());
    let exchange = Arc::new(Exchange { state, config, keys, limit, recorder: Recorder::default() });
    Some(
        Router::new()
            .route(TOKEN_PATH, post(token))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
            .with_state(exchange),
    )
}

/// A successful exchange (RFC 8693 section 2.2.1).
#[derive(Debug, serde::Serialize)]
struct Issued {
    access_token: String,
    issued_token_type: &'static str,
    token_type: &'static str,
    expires_in: i64,
    /// With an X509-SVID: the roots to validate peers of this trust domain (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    x509_bundle: Option<String>,
}

/// What a request asks for: a JWT-SVID for audiences, or an X509-SVID for a CSR's key.
#[derive(Debug)]
enum Wanted {
    Jwt(Vec<String>),
    X509 { csr: String },
}

/// What is issued, once the request is checked: a JWT-SVID for audiences, or an X509-SVID for the
/// key of a verified CSR.
enum Issue {
    Jwt(Vec<String>),
    X509(vouch_ca::CsrPublicKey),
}

/// The request's parameters, each at most once (RFC 6749 section 3.2) but `audience`, which RFC
/// 8693 allows to repeat.
#[derive(Debug, Default)]
struct Params {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    requested_token_type: Option<String>,
    csr: Option<String>,
    audience: Vec<String>,
    actor: bool,
}

fn parse_form(headers: &HeaderMap, body: &[u8]) -> Result<Params, Refusal> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(refuse(
            "invalid_request",
            "token exchange: not a form",
            "the request must be application/x-www-form-urlencoded (RFC 8693 section 2.1)",
        ));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|_| {
        refuse("invalid_request", "token exchange: not a form", "the body is not a valid form")
    })?;
    if pairs.len() > MAX_PARAMETERS {
        return Err(refuse(
            "invalid_request",
            "token exchange: not a form",
            format!("more than {MAX_PARAMETERS} parameters"),
        ));
    }
    let mut p = Params::default();
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "grant_type" => &mut p.grant_type,
            "subject_token" => &mut p.subject_token,
            "subject_token_type" => &mut p.subject_token_type,
            "requested_token_type" => &mut p.requested_token_type,
            "csr" => &mut p.csr,
            "audience" => {
                p.audience.push(value);
                continue;
            }
            "actor_token" | "actor_token_type" => {
                p.actor = true;
                continue;
            }
            // Unknown parameters are ignored (RFC 6749 section 3.2).
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(refuse(
                "invalid_request",
                "token exchange: repeated parameter",
                format!("parameter `{name}` appears more than once"),
            ));
        }
    }
    Ok(p)
}

/// What a request asks, checked: the subject token and what it is traded for.
fn check_params(p: Params) -> Result<(String, Wanted), Refusal> {
    match p.grant_type.as_deref() {
        Some(GRANT_TYPE) => {}
        None => {
            return Err(refuse(
                "invalid_request",
                "token exchange: bad request",
                "parameter `grant_type` is missing",
            ))
        }
        Some(_) => {
            return Err(refuse(
                "unsupported_grant_type",
                "token exchange: bad request",
                format!("grant_type must be `{GRANT_TYPE}`"),
            ))
        }
    }
    if p.actor {
        return Err(refuse(
            "invalid_request",
            "token exchange: bad request",
            "actor tokens (delegation) are not supported",
        ));
    }
    match p.subject_token_type.as_deref() {
        Some(TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN) => {}
        None => {
            return Err(refuse(
                "invalid_request",
                "token exchange: bad request",
                "parameter `subject_token_type` is missing",
            ))
        }
        Some(_) => {
            return Err(refuse(
                "invalid_request",
                "token exchange: bad request",
                format!("subject_token_type must be `{TOKEN_TYPE_JWT}` or `{TOKEN_TYPE_ID_TOKEN}`"),
            ))
        }
    }
    let Some(token) = p.subject_token.filter(|t| !t.is_empty()) else {
        return Err(refuse(
            "invalid_request",
            "token exchange: bad request",
            "parameter `subject_token` is missing",
        ));
    };
    match p.requested_token_type.as_deref() {
        None | Some(TOKEN_TYPE_JWT) => {}
        Some(TOKEN_TYPE_X509_SVID) => {
            let Some(csr) = p.csr.filter(|c| !c.is_empty()) else {
                return Err(refuse(
                    "invalid_request",
                    "token exchange: bad request",
                    "parameter `csr` is missing: an X509-SVID is issued for the key of a PKCS#10 \
                     request (PEM or base64 DER)",
                ));
            };
            if !p.audience.is_empty() {
                return Err(refuse(
                    "invalid_target",
                    "token exchange: bad audience",
                    "an X509-SVID has no audience; ask without `audience`",
                ));
            }
            return Ok((token, Wanted::X509 { csr }));
        }
        Some(_) => {
            return Err(refuse(
                "invalid_request",
                "token exchange: bad request",
                format!(
                    "requested_token_type: `{TOKEN_TYPE_JWT}` (a JWT-SVID, the default) or \
                     `{TOKEN_TYPE_X509_SVID}` (an X509-SVID for `csr`)"
                ),
            ))
        }
    }
    if p.csr.is_some() {
        return Err(refuse(
            "invalid_request",
            "token exchange: bad request",
            format!("`csr` goes with requested_token_type `{TOKEN_TYPE_X509_SVID}`"),
        ));
    }
    if p.audience.is_empty() {
        return Err(refuse(
            "invalid_request",
            "token exchange: bad request",
            "parameter `audience` is missing: it is the audience of the JWT-SVID issued",
        ));
    }
    vouch_ca::jwt::check_audiences(&p.audience)
        .map_err(|e| refuse("invalid_target", "token exchange: bad audience", format!("audience: {e}")))?;
    Ok((token, Wanted::Jwt(p.audience)))
}

/// What a verified, rule-matched subject token gives.
struct Accepted {
    issuer: String,
    rule: String,
    spiffe_id: vouch_core::SpiffeId,
    replay_key: String,
    /// Until when the replay key is kept: the token's `exp` plus the leeway.
    keep_until: i64,
}

fn bad_token(kind: &'static str, why: impl std::fmt::Display) -> Refusal {
    refuse("invalid_request", kind, format!("subject_token: {why}"))
}

impl Exchange {
    /// Verifies the subject token (issuer, signature, algorithm, times) and finds its rule. Costs
    /// no store access, so forged tokens are refused without a write.
    async fn verify(&self, token: &str, now: SystemTime) -> Result<Accepted, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(bad_token(
                "token exchange: too large",
                format_args!("larger than {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        let iss = vouch_ca::jwt::peek_issuer(token)
            .ok_or_else(|| bad_token("token exchange: malformed", "not a JWT with an `iss` claim"))?;
        let Some(at) = self.config.issuers.iter().position(|i| i.issuer == iss) else {
            let shown: String = iss.chars().take(128).collect();
            return Err(bad_token(
                "token exchange: unknown issuer",
                format_args!("issuer `{shown}` is not trusted for token exchange"),
            ));
        };
        let issuer = &self.config.issuers[at];
        let keys = self.keys[at].keys(&issuer.issuer, token).await?;
        let (_, claims) =
            vouch_ca::jwt::verify_jws(token, &keys).map_err(|e| bad_token("token exchange: signature", e))?;
        let alg = vouch_ca::jwt::peek_alg(token).and_then(|a| JwsAlg::parse(&a).ok());
        if !alg.is_some_and(|a| issuer.algorithms.contains(&a)) {
            return Err(bad_token(
                "token exchange: algorithm",
                format_args!("issuer `{iss}` is trusted for {:?} only", issuer.algorithms),
            ));
        }
        let now = ttl::unix_seconds(now);
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad_token("token exchange: times", "claim `exp` is missing"))?;
        // Saturating: the claims are signed, but a signed `exp` of i64::MAX must not overflow.
        let keep_until = exp.saturating_add(LEEWAY_SECS);
        if keep_until <= now {
            return Err(bad_token(
                "token exchange: expired",
                format_args!("expired at {exp} (unix seconds)"),
            ));
        }
        if let Some(nbf) =
            claims.get("nbf").and_then(Value::as_i64).filter(|nbf| *nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(bad_token(
                "token exchange: times",
                format_args!("not valid before {nbf} (unix seconds)"),
            ));
        }
        if let Some(iat) =
            claims.get("iat").and_then(Value::as_i64).filter(|iat| *iat > now.saturating_add(LEEWAY_SECS))
        {
            return Err(bad_token(
                "token exchange: times",
                format_args!("issued in the future ({iat}, unix seconds)"),
            ));
        }
        let rule = rules::first_match(&self.config.rules, &claims)
            .map_err(|e| bad_token("token exchange: no rule", e))?;
        let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
        let spiffe_id = rule.spiffe_id.fill(sub).map_err(|e| {
            bad_token(
                "token exchange: no rule",
                format_args!("rule `{}`: the SPIFFE ID for `sub`: {e}", rule.name),
            )
        })?;
        let replay_key = match claims.get("jti").and_then(Value::as_str) {
            Some(jti) => format!("jti:{}", vouch_ca::keys::sha256_hex(format!("{iss}\n{jti}").as_bytes())),
            None => format!("token:{}", vouch_ca::keys::sha256_hex(token.as_bytes())),
        };
        Ok(Accepted { issuer: iss, rule: rule.name.clone(), spiffe_id, replay_key, keep_until })
    }

    async fn exchange(&self, headers: &HeaderMap, body: &[u8]) -> Result<(Accepted, Issue, Issued), Refusal> {
        let (token, wanted) = check_params(parse_form(headers, body)?)?;
        let state = &self.state;
        let accepted = self.verify(&token, state.now()).await?;
        // Charged for verified tokens only: forged tokens naming an issuer cannot spend its budget.
        if let Err(wait) = self.limit.check(&accepted.issuer, 1, tokio::time::Instant::now()) {
            let rate = self.config.rate;
            return Err(Refusal {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: "temporarily_unavailable",
                description: format!(
                    "issuer `{}`: more than {}/s exchanges (burst {}); retry after the time in Retry-After",
                    accepted.issuer, rate.per_second, rate.burst
                ),
                kind: "token exchange: rate limited",
                retry_after: Some(wait),
            });
        }
        // A bad CSR is refused before the token is spent on it.
        let issue = match wanted {
            Wanted::X509 { csr } => Issue::X509(
                vouch_ca::verify_csr_pem_or_der(csr.as_bytes())
                    .map_err(|e| refuse("invalid_request", "token exchange: bad csr", format!("csr: {e}")))?,
            ),
            Wanted::Jwt(audience) => Issue::Jwt(audience),
        };
        let server_error = |what: &str, e: &dyn std::fmt::Display| {
            tracing::error!(error = %e, "token exchange: {what}");
            Refusal {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                error: "server_error",
                description: format!("{what}; try again"),
                kind: "token exchange: server error",
                retry_after: None,
            }
        };
        let first = self
            .recorder
            .record(&state.store, accepted.replay_key.clone(), accepted.keep_until, state.now_secs())
            .await
            .map_err(|e| server_error("the store is unavailable", &e))?;
        if !first {
            return Err(bad_token(
                "token exchange: replay",
                "this token was exchanged already; each subject token is accepted once",
            ));
        }
        let now = state.now();
        let issued = match &issue {
            Issue::X509(public) => {
                let ttl = state.config.x509_svid_ttl;
                let x509 = state
                    .signing(|a| a.mint_x509(&accepted.spiffe_id, &[], public, ttl, now))
                    .map_err(|e| server_error("cannot sign the X509-SVID", &e))?;
                Issued {
                    access_token: x509.chain_pem(),
                    issued_token_type: TOKEN_TYPE_X509_SVID,
                    token_type: "N_A",
                    expires_in: (ttl::unix_seconds(x509.svid.not_after) - ttl::unix_seconds(now)).max(0),
                    x509_bundle: Some(state.bundle_pem().to_string()),
                }
            }
            Issue::Jwt(audience) => {
                let ttl = state.config.jwt_svid_ttl;
                let minted = state
                    .signing(|a| a.mint_jwt(&accepted.spiffe_id, audience, ttl, now))
                    .map_err(|e| server_error("cannot mint the JWT-SVID", &e))?;
                Issued {
                    access_token: minted.token,
                    issued_token_type: TOKEN_TYPE_JWT,
                    token_type: "N_A",
                    expires_in: (minted.expires_at - ttl::unix_seconds(now)).max(0),
                    x509_bundle: None,
                }
            }
        };
        Ok((accepted, issue, issued))
    }
}

async fn token(State(x): State<Arc<Exchange>>, headers: HeaderMap, body: Bytes) -> Response {
    match x.exchange(&headers, &body).await {
        Ok((a, issue, issued)) => {
            use std::sync::atomic::Ordering::Relaxed;
            match &issue {
                Issue::Jwt(audience) => {
                    x.state.metrics.jwt_issued.fetch_add(1, Relaxed);
                    tracing::info!(target: "vouch::audit", event = "token.exchange", issuer = %a.issuer, rule = %a.rule, spiffe_id = %a.spiffe_id, issued = "jwt-svid", audience = ?audience, expires_in = issued.expires_in);
                }
                Issue::X509(_) => {
                    x.state.metrics.x509_issued.fetch_add(1, Relaxed);
                    tracing::info!(target: "vouch::audit", event = "token.exchange", issuer = %a.issuer, rule = %a.rule, spiffe_id = %a.spiffe_id, issued = "x509-svid", expires_in = issued.expires_in);
                }
            }
            no_store(axum::Json(issued).into_response())
        }
        Err(r) => {
            let (kind, error, reason) = (r.kind, r.error, r.description.clone());
            crate::agent_api::log_refusal(&x.state, kind, |count| {
                tracing::warn!(target: "vouch::audit", event = "token.exchange.refused", error, reason = %reason, count, "token exchange refused ({count} since the last line like this)");
            });
            r.into_response()
        }
    }
}
