//! The OIDC issuer listener: OpenID Connect Discovery 1.0 (section 4, the provider configuration
//! document at `/.well-known/openid-configuration`) and a JWKS (RFC 7517) of the JWT-SVID signing
//! keys, so that relying parties without a client certificate (OpenBao/Vault JWT auth, AWS, GCP and
//! Azure workload identity federation) can validate JWT-SVIDs.
//!
//! It serves nothing else but, when configured, RFC 8693 token exchange (`POST /v1/token`, see
//! `token_exchange`): no admin or agent route is reachable here, whatever the path. Anyone may
//! connect, so every cost is bounded: connections in all and per source address, the time to send
//! headers and the life of a connection, request size, and the answers are small and cacheable.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt as _;

use crate::config::{OidcConfig, OIDC_KEYS_PATH};
use crate::limits::source_key;
use crate::state::AppState;

/// The discovery document's path (OpenID Connect Discovery 1.0, section 4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// Connections served at once, from everyone: each holds a file descriptor and a little memory.
const MAX_CONNECTIONS: usize = 1024;
/// Connections served at once from one source address (an IPv6 /64 counts as one), so one client
/// cannot take every slot; relying parties need one or two.
const MAX_PER_SOURCE: usize = 32;
/// Time to complete a TLS handshake, and to send a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives, however busy: a slot is not held forever by a slow reader.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Largest request head buffered: the two GET requests served need a few hundred bytes.
const MAX_REQUEST_BUFFER: usize = 16 * 1024;
/// Requests carry no body.
const MAX_BODY_BYTES: usize = 1024;

/// What the handlers answer from: the discovery document (fixed for the server's life) and how long
/// the keys may be cached.
struct Oidc {
    state: Arc<AppState>,
    discovery: Arc<str>,
    max_age: HeaderValue,
}

/// How long relying parties may cache the JWKS: a new key is published at half of its
/// predecessor's life and signs from five sixths, so a cache of a sixth of the key life (at most
/// five minutes) always holds a key before its first token is presented; relying parties that see an
/// unknown `kid` refetch anyway.
fn keys_max_age(jwt_key_ttl: Duration) -> u64 {
    (jwt_key_ttl.as_secs() / 6).clamp(1, 300)
}

/// The discovery document: what OpenBao/Vault and the clouds' federation require (issuer, jwks_uri,
/// the response and subject types and the signing algorithm), and nothing that would promise an
/// authorization endpoint vouch does not have.
fn discovery_document(oidc: &OidcConfig, alg: &str) -> String {
    serde_json::json!({
        "issuer": oidc.issuer,
        "jwks_uri": oidc.jwks_uri(),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [alg],
        "claims_supported": ["sub", "aud", "exp", "iat", "iss", "jti"],
    })
    .to_string()
}

/// The router of the OIDC listener: the discovery document and the JWKS, GET (and HEAD) only; any
/// other path is 404 and any other method 405.
pub fn router(state: Arc<AppState>) -> Option<Router> {
    let config = state.config.oidc.clone()?;
    let alg = state.config.jwt_key_alg.unwrap_or(state.config.key_alg).jws_alg();
    let max_age = format!("public, max-age={}", keys_max_age(state.config.jwt_key_ttl));
    let exchange = crate::token_exchange::router(state.clone());
    let oidc = Arc::new(Oidc {
        discovery: Arc::from(discovery_document(&config, alg)),
        max_age: HeaderValue::from_str(&max_age).unwrap_or(HeaderValue::from_static("no-cache")),
        state,
    });
    let documents = Router::new()
        .route(DISCOVERY_PATH, get(discovery))
        .route(OIDC_KEYS_PATH, get(keys))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(oidc);
    // RFC 8693 token exchange, when configured, with its own body limit.
    Some(match exchange {
        Some(exchange) => documents.merge(exchange),
        None => documents,
    })
}

fn json_answer(body: String, cache: &HeaderValue) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (header::CACHE_CONTROL, cache.clone()),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        ],
        body,
    )
        .into_response()
}

async fn discovery(State(oidc): State<Arc<Oidc>>) -> Response {
    json_answer(oidc.discovery.to_string(), &oidc.max_age)
}

async fn keys(State(oidc): State<Arc<Oidc>>) -> Response {
    // The bundle's JWT keys: every key from when it is prepared (published before it signs) until
    // its own expiry, which is past the expiry of every token it signed (tokens are capped at it).
    match oidc.state.with_authority(|a| a.bundle().oidc_jwks()) {
        Ok(body) => json_answer(body, &oidc.max_age),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the OIDC JWKS");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Connections held per source address; a slot is given back when its guard drops.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

struct SourceSlot {
    map: Arc<PerSource>,
    key: IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot { map: self.clone(), key })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Accepts connections on `listener` (TLS when `tls` is given) and serves `app` on each, within the
/// bounds above, until shutdown.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let all = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = Arc::new(PerSource::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over a bound, the connection is closed at once: cheaper than queueing it.
                    let Ok(permit) = all.clone().try_acquire_owned() else { continue };
                    let Some(slot) = per_source.take(peer.ip()) else { continue };
                    let (tls, app, shutdown) = (tls.clone(), app.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        let _held = (permit, slot);
                        let _ = stream.set_nodelay(true);
                        let served = async {
                            match tls {
                                Some(acceptor) => {
                                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                        Ok(Ok(tls)) => serve_connection(tls, app, shutdown).await,
                                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "OIDC listener: TLS handshake failed"),
                                        Err(_) => {}
                                    }
                                }
                                None => serve_connection(stream, app, shutdown).await,
                            }
                        };
                        let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "OIDC listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn serve_connection<I>(io: I, app: Router, mut shutdown: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = conn => if let Err(e) = result {
            tracing::debug!(error = %e, "OIDC connection ended with an error");
        },
        _ = shutdown.changed() => {}
    }
}

/// A TLS acceptor for the configured certificate chain and key (PEM files): web PKI, no client
/// certificates asked for.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("oidc.tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("oidc.tls_cert {} holds no CERTIFICATE", cert.display()));
    }
    // The key's error never quotes the file's content.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("oidc.tls_key {}: not a PEM private key ({e})", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(vouch_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("oidc.tls_cert and oidc.tls_key do not make a usable certificate: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_may_be_cached_for_a_sixth_of_their_life_at_most_five_minutes() {
        assert_eq!(keys_max_age(Duration::from_secs(60)), 10);
        assert_eq!(keys_max_age(Duration::from_secs(24 * 3600)), 300);
        assert_eq!(keys_max_age(Duration::from_secs(3)), 1);
    }
}
