//! The OIDC issuer listener: OpenID Connect Discovery 1.0 (section 4, the provider configuration
//! document at `/.well-known/openid-configuration`) and a JWKS (RFC 7517) of the JWT-SVID signing
//! keys, so that relying parties without a client certificate (OpenBao/Vault JWT auth, AWS, GCP and
//! Azure workload identity federation) can validate JWT-SVIDs.
//!
//! It serves nothing else but, when configured, RFC 8693 token exchange (`POST /v1/token`, see
//! `token_exchange`): no admin or agent route is reachable here, whatever the path. Anyone may
//! connect, so it is served by the bounded [`crate::public_listener`]; the answers are small and
//! cacheable.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::{OidcConfig, OIDC_KEYS_PATH};
use crate::public_listener::MAX_BODY_BYTES;
use crate::state::AppState;

/// The discovery document's path (OpenID Connect Discovery 1.0, section 4).
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

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
    bundle_answer(&oidc.state, &oidc.max_age, "the OIDC JWKS", |b| b.oidc_jwks())
}

/// A document made from the current bundle by `encode`, with its caching headers; `what` names it
/// in the log if it cannot be encoded (a fault of the server, answered 500).
pub(crate) fn bundle_answer(
    state: &AppState,
    cache: &HeaderValue,
    what: &str,
    encode: impl FnOnce(&vouch_ca::Bundle) -> Result<String, vouch_ca::CaError>,
) -> Response {
    match state.with_authority(|a| encode(&a.bundle())) {
        Ok(body) => json_answer(body, cache),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode {what}");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
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
