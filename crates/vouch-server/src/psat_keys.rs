//! Signing keys of Kubernetes service-account issuers, for PSAT node attestation: fixed, from a JWKS
//! file, or fetched through the issuer's OIDC discovery document (`jwks_uri`). Fetched keys are cached
//! for [`REFRESH`], and fetched again at once (at most every [`MIN_REFETCH`]) when a token names a key
//! the cache does not hold, so a rotation of the cluster's signing key needs no server restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use vouch_ca::jwt::JwtPublicKey;

use crate::config::{DiscoveryError, PsatCluster, PsatDiscovery};

/// Keys by `kid`.
pub type KeySet = BTreeMap<String, JwtPublicKey>;

/// Fetched keys are used this long without asking again.
pub const REFRESH: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers a fetch only if the last one is older than this (bounds the requests a
/// flood of forged tokens can cause).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
const MAX_DOCUMENT: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the keys of a cluster could not be fetched; each names the URL at fault.
#[derive(Debug, thiserror::Error)]
pub enum KeyFetchError {
    /// The endpoint's configuration is unusable.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The GET failed.
    #[error("{url}: {source}")]
    Get {
        /// The URL.
        url: String,
        /// Why.
        source: vouch_http::HttpError,
    },
    /// An answer other than 200.
    #[error("{url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The discovery document is not the JSON object it should be.
    #[error("{url}: not a JSON discovery document with `issuer` and `jwks_uri`: {reason}")]
    NotADocument {
        /// The URL.
        url: String,
        /// The parser's reason.
        reason: String,
    },
    /// The document is another issuer's.
    #[error("{url}: the document is for issuer `{found}`, not the configured `{configured}`")]
    WrongIssuer {
        /// The URL.
        url: String,
        /// The document's issuer.
        found: String,
        /// The configured issuer.
        configured: String,
    },
    /// An https document pointing at a plain-http JWKS.
    #[error("{url}: `jwks_uri` `{jwks_uri}` is not https")]
    JwksNotHttps {
        /// The document URL.
        url: String,
        /// The JWKS URL it names.
        jwks_uri: String,
    },
    /// The JWKS is unreadable.
    #[error("{url}: {reason}")]
    BadJwks {
        /// The JWKS URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No keys were ever fetched for the cluster, and fetching failed now.
    #[error("cannot fetch the keys of cluster `{cluster}`: {source}")]
    NoKeys {
        /// The cluster name.
        cluster: String,
        /// Why the fetch failed.
        source: Box<KeyFetchError>,
    },
}

/// The two fields of an OIDC discovery document vouch uses.
#[derive(serde::Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

async fn get(url: &str, d: &PsatDiscovery) -> Result<Vec<u8>, KeyFetchError> {
    let (getter, parsed) = d.getter(url)?;
    let (status, body) = getter
        .get(&parsed.path, None, MAX_DOCUMENT, TIMEOUT)
        .await
        .map_err(|source| KeyFetchError::Get { url: url.to_owned(), source })?;
    if status != 200 {
        return Err(KeyFetchError::Status { url: url.to_owned(), status });
    }
    Ok(body.to_vec())
}

/// Fetches the discovery document, checks that it is the configured issuer's, and fetches its JWKS.
pub async fn fetch(cluster: &PsatCluster, d: &PsatDiscovery) -> Result<KeySet, KeyFetchError> {
    let doc: DiscoveryDocument = serde_json::from_slice(&get(&d.url, d).await?)
        .map_err(|e| KeyFetchError::NotADocument { url: d.url.clone(), reason: e.to_string() })?;
    if doc.issuer != cluster.issuer {
        return Err(KeyFetchError::WrongIssuer {
            url: d.url.clone(),
            found: doc.issuer,
            configured: cluster.issuer.clone(),
        });
    }
    if d.url.starts_with("https://") && !doc.jwks_uri.starts_with("https://") {
        return Err(KeyFetchError::JwksNotHttps { url: d.url.clone(), jwks_uri: doc.jwks_uri });
    }
    let jwks = get(&doc.jwks_uri, d).await?;
    let bad = |reason: String| KeyFetchError::BadJwks { url: doc.jwks_uri.clone(), reason };
    let text = String::from_utf8(jwks).map_err(|_| bad("not UTF-8".into()))?;
    vouch_ca::bundle::jwks_keys(&text).map_err(|e| bad(e.to_string()))
}

struct Cached {
    keys: Arc<KeySet>,
    fetched: Option<Instant>,
}

/// The keys of every configured cluster.
pub struct PsatKeys {
    fetched: HashMap<String, tokio::sync::Mutex<Cached>>,
}

impl std::fmt::Debug for PsatKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PsatKeys").field("discovered_clusters", &self.fetched.len()).finish()
    }
}

impl PsatKeys {
    /// Caches for the clusters that use discovery; file-configured ones need none.
    pub fn new(clusters: &[PsatCluster]) -> Self {
        let fetched = clusters
            .iter()
            .filter(|c| c.discovery.is_some())
            .map(|c| {
                (c.name.clone(), tokio::sync::Mutex::new(Cached { keys: Arc::default(), fetched: None }))
            })
            .collect();
        Self { fetched }
    }

    /// The keys to verify a token of `cluster` whose header names `kid`.
    pub async fn keys(&self, cluster: &PsatCluster, kid: Option<&str>) -> Result<Arc<KeySet>, KeyFetchError> {
        let (Some(d), Some(cache)) = (&cluster.discovery, self.fetched.get(&cluster.name)) else {
            return Ok(Arc::new(cluster.keys.clone()));
        };
        let mut cache = cache.lock().await;
        let age = cache.fetched.map(|t| t.elapsed());
        let unknown_kid = kid.is_some_and(|k| !cache.keys.contains_key(k));
        let stale = age.is_none_or(|a| a >= REFRESH);
        let may_refetch = age.is_none_or(|a| a >= MIN_REFETCH);
        if stale || (unknown_kid && may_refetch) {
            match fetch(cluster, d).await {
                Ok(keys) => {
                    tracing::info!(cluster = %cluster.name, keys = keys.len(), "service-account issuer keys fetched");
                    *cache = Cached { keys: Arc::new(keys), fetched: Some(Instant::now()) };
                }
                // Keep serving the keys we have; with none, the token cannot be checked.
                Err(e) if cache.fetched.is_some() => {
                    tracing::warn!(cluster = %cluster.name, error = %e, "cannot refresh service-account issuer keys; using the cached ones");
                }
                Err(e) => {
                    return Err(KeyFetchError::NoKeys { cluster: cluster.name.clone(), source: Box::new(e) })
                }
            }
        }
        Ok(cache.keys.clone())
    }
}

/// The `kid` of a compact JWS header, if it has one (nothing is trusted from it but the lookup).
pub fn token_kid(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["kid"].as_str().map(str::to_owned)
}
