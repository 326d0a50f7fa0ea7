//! Signing keys of Kubernetes service-account issuers, for PSAT node attestation: fixed, from a JWKS
//! file, or fetched through the issuer's OIDC discovery document (`jwks_uri`). Fetched keys are cached
//! for [`REFRESH`], and fetched again at once (at most every [`MIN_REFETCH`]) when a token names a key
//! the cache does not hold, so a rotation of the cluster's signing key needs no server restart.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use vouch_ca::jwt::JwtPublicKey;

use crate::config::{PsatCluster, PsatDiscovery};

/// Keys by `kid`.
pub type KeySet = BTreeMap<String, JwtPublicKey>;

/// Fetched keys are used this long without asking again.
pub const REFRESH: Duration = Duration::from_secs(300);
/// An unknown `kid` triggers a fetch only if the last one is older than this (bounds the requests a
/// flood of forged tokens can cause).
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
const MAX_DOCUMENT: usize = 1 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

async fn get(url: &str, d: &PsatDiscovery) -> Result<Vec<u8>, String> {
    let (getter, parsed) = d.getter(url)?;
    let (status, body) =
        getter.get(&parsed.path, None, MAX_DOCUMENT, TIMEOUT).await.map_err(|e| format!("{url}: {e}"))?;
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(body.to_vec())
}

/// Fetches the discovery document, checks that it is the configured issuer's, and fetches its JWKS.
pub async fn fetch(cluster: &PsatCluster, d: &PsatDiscovery) -> Result<KeySet, String> {
    let doc: serde_json::Value = serde_json::from_slice(&get(&d.url, d).await?)
        .map_err(|e| format!("{}: not a JSON discovery document: {e}", d.url))?;
    let issuer = doc["issuer"].as_str().unwrap_or_default();
    if issuer != cluster.issuer {
        return Err(format!(
            "{}: the document is for issuer `{issuer}`, not the configured `{}`",
            d.url, cluster.issuer
        ));
    }
    let jwks_uri = doc["jwks_uri"].as_str().ok_or_else(|| format!("{}: no `jwks_uri`", d.url))?;
    if d.url.starts_with("https://") && !jwks_uri.starts_with("https://") {
        return Err(format!("{}: `jwks_uri` `{jwks_uri}` is not https", d.url));
    }
    let jwks = get(jwks_uri, d).await?;
    let text = String::from_utf8(jwks).map_err(|_| format!("{jwks_uri}: not UTF-8"))?;
    vouch_ca::bundle::jwks_keys(&text).map_err(|e| format!("{jwks_uri}: {e}"))
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
    pub async fn keys(&self, cluster: &PsatCluster, kid: Option<&str>) -> Result<Arc<KeySet>, String> {
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
                Err(e) => return Err(format!("cannot fetch the keys of cluster `{}`: {e}", cluster.name)),
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
