//! Signing keys of external token issuers: Kubernetes service-account issuers (PSAT node attestation)
//! and the trusted issuers of token exchange. Fixed, from a JWKS file, or fetched through the
//! issuer's OIDC discovery document (`jwks_uri`). Fetched keys are cached for [`REFRESH`], and
//! fetched again at once (at most every [`MIN_REFETCH`]) when a token names a key the cache does not
//! hold, so a rotation of the issuer's signing key needs no server restart. A fetch that fails, or
//! gives a JWKS with no usable key, leaves the last good keys in use.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use vouch_ca::jwt::JwtPublicKey;

use crate::config::{DiscoveryError, OidcDiscovery, PsatCluster};

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
    /// The last fetch, less than [`MIN_REFETCH`] ago, failed; it is not tried again yet.
    #[error("{reason} (tried again at most every {}s)", MIN_REFETCH.as_secs())]
    Recent {
        /// Why the last fetch failed.
        reason: String,
    },
    /// No keys were ever fetched for the issuer, and fetching failed now.
    #[error("cannot fetch the keys of {name}: {source}")]
    NoKeys {
        /// Whose keys, e.g. "cluster `prod`" or "issuer `https://ci.example`".
        name: String,
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

async fn get(url: &str, d: &OidcDiscovery) -> Result<Vec<u8>, KeyFetchError> {
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

/// Fetches the discovery document, checks that it is `issuer`'s, and fetches its JWKS, which must
/// hold at least one usable key.
pub async fn fetch(issuer: &str, d: &OidcDiscovery) -> Result<KeySet, KeyFetchError> {
    let doc: DiscoveryDocument = serde_json::from_slice(&get(&d.url, d).await?)
        .map_err(|e| KeyFetchError::NotADocument { url: d.url.clone(), reason: e.to_string() })?;
    if doc.issuer != issuer {
        return Err(KeyFetchError::WrongIssuer {
            url: d.url.clone(),
            found: doc.issuer,
            configured: issuer.to_owned(),
        });
    }
    if d.url.starts_with("https://") && !doc.jwks_uri.starts_with("https://") {
        return Err(KeyFetchError::JwksNotHttps { url: d.url.clone(), jwks_uri: doc.jwks_uri });
    }
    let jwks = get(&doc.jwks_uri, d).await?;
    let bad = |reason: String| KeyFetchError::BadJwks { url: doc.jwks_uri.clone(), reason };
    let text = String::from_utf8(jwks).map_err(|_| bad("not UTF-8".into()))?;
    let keys = vouch_ca::bundle::jwks_keys(&text).map_err(|e| bad(e.to_string()))?;
    if keys.is_empty() {
        return Err(bad("the JWKS holds no usable key (EC P-256 or RSA, with a `kid`)".into()));
    }
    Ok(keys)
}

struct Cached {
    keys: Arc<KeySet>,
    /// When the keys in use were fetched (none yet: `None`).
    fetched: Option<Instant>,
    /// When the endpoint was last asked, and why that failed if it did.
    attempted: Option<(Instant, Option<String>)>,
}

/// Where a trusted issuer's keys come from, as configured: exactly one of a JWKS file (read and
/// checked now) or an OIDC discovery endpoint (its URL and CA checked now, fetched at the first
/// token). One reading of `jwks_file` / `discovery_url` / `discovery_ca` for every section that
/// trusts an issuer (PSAT node attestation, token exchange).
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A JWKS on disk.
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Its keys, at least one.
        keys: KeySet,
    },
    /// An OIDC discovery endpoint.
    Discovery(OidcDiscovery),
}

/// How [`KeySource::resolve`] treats an https discovery URL without `discovery_ca`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpsWithoutCa {
    /// Refuse: the issuer has a private CA that must be named (a Kubernetes API server).
    Refuse,
    /// Use the system's web-PKI roots (a CI system's or a cloud's public issuer).
    SystemRoots,
}

impl KeySource {
    /// Reads a section's `jwks_file`, `discovery_url` and `discovery_ca`. `either` ends the error
    /// when neither or both are set: what each means for this kind of issuer. Errors are for
    /// people: they name the setting and what to do.
    pub fn resolve(
        jwks_file: Option<std::path::PathBuf>,
        discovery_url: Option<&str>,
        discovery_ca: Option<std::path::PathBuf>,
        https_without_ca: HttpsWithoutCa,
        either: &str,
    ) -> Result<Self, String> {
        match (jwks_file, discovery_url) {
            (Some(path), None) => {
                if discovery_ca.is_some() {
                    return Err("discovery_ca goes with discovery_url".into());
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read jwks_file {}: {e}", path.display()))?;
                let keys = vouch_ca::bundle::jwks_keys(&text)
                    .map_err(|e| format!("jwks_file {}: {e}", path.display()))?;
                if keys.is_empty() {
                    return Err(format!("jwks_file {} holds no usable key", path.display()));
                }
                Ok(Self::File { path, keys })
            }
            (None, Some(url)) => {
                let url = OidcDiscovery::document_url(url).map_err(|e| e.to_string())?;
                let ca = match https_without_ca {
                    HttpsWithoutCa::SystemRoots => discovery_ca.or_else(|| {
                        url.starts_with("https://").then(|| crate::config::SYSTEM_CA_FILE.into())
                    }),
                    HttpsWithoutCa::Refuse => discovery_ca,
                };
                let discovery = OidcDiscovery { url, ca };
                // Checked now (URL, CA file), fetched when the first token comes.
                discovery.getter(&discovery.url).map_err(|e| e.to_string())?;
                Ok(Self::Discovery(discovery))
            }
            _ => Err(format!("set either {either}, not both")),
        }
    }
}

/// The fetched keys of one issuer that publishes them by OIDC discovery.
pub struct DiscoveredKeys {
    /// Whose keys, for logs and errors: "cluster `prod`", "issuer `https://ci.example`".
    name: String,
    issuer: String,
    discovery: OidcDiscovery,
    cache: tokio::sync::Mutex<Cached>,
}

impl std::fmt::Debug for DiscoveredKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveredKeys").field("name", &self.name).field("url", &self.discovery.url).finish()
    }
}

impl DiscoveredKeys {
    /// An empty cache for `issuer`'s keys at `discovery`; nothing is fetched until a token comes.
    pub fn new(name: String, issuer: String, discovery: OidcDiscovery) -> Self {
        let cache = tokio::sync::Mutex::new(Cached { keys: Arc::default(), fetched: None, attempted: None });
        Self { name, issuer, discovery, cache }
    }

    /// The keys to verify a token whose header names `kid`: the cached ones, fetched again when
    /// stale or when `kid` is unknown (at most every [`MIN_REFETCH`]).
    pub async fn keys(&self, kid: Option<&str>) -> Result<Arc<KeySet>, KeyFetchError> {
        let mut cache = self.cache.lock().await;
        let stale = cache.fetched.is_none_or(|t| t.elapsed() >= REFRESH);
        let unknown_kid = kid.is_some_and(|k| !cache.keys.contains_key(k));
        // Asked at most every MIN_REFETCH, whatever the tokens say: a flood of forged tokens (or
        // of tokens while the endpoint is down) costs the endpoint one request per interval.
        let may_ask = cache.attempted.as_ref().is_none_or(|(t, _)| t.elapsed() >= MIN_REFETCH);
        if (stale || unknown_kid) && may_ask {
            match fetch(&self.issuer, &self.discovery).await {
                Ok(keys) => {
                    tracing::info!(issuer = %self.name, keys = keys.len(), "issuer keys fetched");
                    let now = Instant::now();
                    *cache =
                        Cached { keys: Arc::new(keys), fetched: Some(now), attempted: Some((now, None)) };
                }
                Err(e) => {
                    cache.attempted = Some((Instant::now(), Some(e.to_string())));
                    if cache.fetched.is_none() {
                        return Err(KeyFetchError::NoKeys { name: self.name.clone(), source: Box::new(e) });
                    }
                    // Keep serving the keys we have.
                    tracing::warn!(issuer = %self.name, error = %e, "cannot refresh the issuer's keys; using the cached ones");
                }
            }
        } else if cache.fetched.is_none() {
            let reason = cache.attempted.as_ref().and_then(|(_, e)| e.clone()).unwrap_or_default();
            return Err(KeyFetchError::NoKeys {
                name: self.name.clone(),
                source: Box::new(KeyFetchError::Recent { reason }),
            });
        }
        Ok(cache.keys.clone())
    }
}

/// The keys of every configured cluster.
#[derive(Debug)]
pub struct PsatKeys {
    fetched: HashMap<String, DiscoveredKeys>,
}

impl PsatKeys {
    /// Caches for the clusters that use discovery; file-configured ones need none.
    pub fn new(clusters: &[PsatCluster]) -> Self {
        let fetched = clusters
            .iter()
            .filter_map(|c| {
                let d = c.discovery.clone()?;
                let keys = DiscoveredKeys::new(format!("cluster `{}`", c.name), c.issuer.clone(), d);
                Some((c.name.clone(), keys))
            })
            .collect();
        Self { fetched }
    }

    /// The keys to verify a token of `cluster` whose header names `kid`.
    pub async fn keys(&self, cluster: &PsatCluster, kid: Option<&str>) -> Result<Arc<KeySet>, KeyFetchError> {
        match self.fetched.get(&cluster.name) {
            Some(d) => d.keys(kid).await,
            None => Ok(Arc::new(cluster.keys.clone())),
        }
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
