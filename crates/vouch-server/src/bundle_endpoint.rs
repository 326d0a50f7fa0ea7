//! This trust domain's SPIFFE bundle endpoint (SPIFFE Federation standard, section 5): the bundle
//! as a SPIFFE bundle JWKS (X.509 authorities as `x5c` with `use` = `x509-svid`, JWT keys with
//! `use` = `jwt-svid`, `spiffe_sequence`, `spiffe_refresh_hint`) at `/`, for other trust domains
//! that federate with this one.
//!
//! Two profiles (section 5.1): `https_spiffe` authenticates the endpoint with the server's own
//! X509-SVID (`spiffe://<trust domain>/vouch/server`, renewed with it), `https_web` with a configured
//! web-PKI certificate. No client certificate is asked for: the bundle is public. Anyone may
//! connect, so it is served by the bounded [`crate::public_listener`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::oidc::bundle_answer;
use crate::public_listener::MAX_BODY_BYTES;
use crate::state::AppState;

/// The path the bundle is served at: a bundle endpoint URL names the host and port, path `/`.
pub const BUNDLE_PATH: &str = "/";

struct Endpoint {
    state: Arc<AppState>,
    max_age: HeaderValue,
}

/// How long an answer may be cached: half the refresh hint, at most five minutes, so a new root
/// published for rotation reaches federated trust domains well before it signs anything.
fn max_age(refresh_hint: Duration) -> u64 {
    (refresh_hint.as_secs() / 2).clamp(1, 300)
}

/// The router of the bundle endpoint: the bundle at `/`, GET (and HEAD) only.
pub fn router(state: Arc<AppState>) -> Router {
    let cache = format!("public, max-age={}", max_age(state.config.federation.refresh_hint));
    let endpoint = Arc::new(Endpoint {
        max_age: HeaderValue::from_str(&cache).unwrap_or(HeaderValue::from_static("no-cache")),
        state,
    });
    Router::new()
        .route(BUNDLE_PATH, get(bundle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(endpoint)
}

async fn bundle(State(endpoint): State<Arc<Endpoint>>) -> Response {
    bundle_answer(&endpoint.state, &endpoint.max_age, "the bundle for the bundle endpoint", |b| b.to_jwks())
}

/// The TLS acceptor of the `https_spiffe` profile: the server's own X509-SVID (swapped on renewal),
/// no client certificate asked for.
pub fn spiffe_acceptor(state: &AppState) -> Result<tokio_rustls::TlsAcceptor, String> {
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(vouch_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(state.server_cert.clone());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_may_be_cached_for_half_the_refresh_hint_at_most_five_minutes() {
        assert_eq!(max_age(Duration::from_secs(300)), 150);
        assert_eq!(max_age(Duration::from_secs(86400)), 300);
        assert_eq!(max_age(Duration::from_secs(1)), 1);
    }
}
