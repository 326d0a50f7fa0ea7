//! Server configuration: versioned TOML with unknown fields refused, every setting overridable by a
//! `VOUCH_...` environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vouch_ca::KeyAlg;
use vouch_core::{ttl, TrustDomain};
use vouch_http::{Getter, Trust, Url};
use vouch_store::{redact_passwords, PgUrl, SqliteSynchronous, DEFAULT_POOL_SIZE, MAX_POOL_SIZE};

/// The configuration format this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is invalid or has unknown fields.
    #[error("config file {path}: {message}")]
    Parse {
        /// The path.
        path: PathBuf,
        /// What the parser said (names the field and line; a store URL's password masked).
        message: String,
    },
    /// A value is invalid.
    #[error("config: {0}")]
    Invalid(String),
}

/// A duration written as `90s`, `5m`, `1h30m`, `2d` or `1h0m30s` (or a bare number of seconds): the
/// grammar of [`vouch_core::duration`], shared by every flag, config key and environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// Parses the text form; the error quotes the input and shows the accepted form.
    pub fn parse(text: &str) -> Result<Self, vouch_core::duration::DurationError> {
        vouch_core::duration::parse(text).map(Self)
    }
}

/// The canonical compound form (`1h30m`).
impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        vouch_core::duration::Compound(self.0).fmt(f)
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = vouch_core::duration::DurationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Self(Duration::from_secs(s))),
            Raw::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    version: Option<u32>,
    trust_domain: Option<String>,
    data_dir: Option<PathBuf>,
    store: Option<String>,
    sqlite_synchronous: Option<String>,
    postgres_pool_size: Option<i64>,
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    ca: FileCa,
    #[serde(default)]
    log: FileLog,
    #[serde(default)]
    node_attestation: FileNodeAttestation,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    oidc: Option<FileOidc>,
    #[serde(default)]
    federation: FileFederation,
    #[serde(default)]
    token_exchange: crate::token_exchange::rules::FileTokenExchange,
    /// `[database.<connection>]`: PostgreSQL databases the server issues short-lived roles on.
    #[serde(default)]
    database: std::collections::BTreeMap<String, crate::db_creds::FileDatabase>,
    #[serde(default)]
    audit: crate::audit::FileAudit,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileFederation {
    bundle_endpoint_listen: Option<String>,
    bundle_endpoint_profile: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    refresh_hint: Option<HumanDuration>,
    web_ca_file: Option<PathBuf>,
}

/// Where the trust bundle of Debian and most distributions lives: the roots `https_web` bundle
/// endpoints are checked against unless `federation.web_ca_file` says otherwise.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The bundle's `spiffe_refresh_hint` unless configured: how often other trust domains fetch it.
pub const DEFAULT_REFRESH_HINT: Duration = Duration::from_secs(300);

/// SPIFFE federation (`[federation]`): this trust domain's bundle endpoint, the refresh hint it
/// publishes, and the web-PKI roots that `https_web` endpoints of other trust domains are checked
/// against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederationConfig {
    /// The bundle endpoint, if served.
    pub bundle_endpoint: Option<BundleEndpointConfig>,
    /// `spiffe_refresh_hint` of this trust domain's bundle.
    pub refresh_hint: Duration,
    /// PEM roots for `https_web` bundle endpoints.
    pub web_ca_file: PathBuf,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self { bundle_endpoint: None, refresh_hint: DEFAULT_REFRESH_HINT, web_ca_file: SYSTEM_CA_FILE.into() }
    }
}

/// This trust domain's bundle endpoint (SPIFFE Federation standard, section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// `https_spiffe` (the server's own X509-SVID) or `https_web` with this certificate and key.
    pub web_tls: Option<(PathBuf, PathBuf)>,
}

impl FederationConfig {
    fn build(file: FileFederation, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("federation: {why}"));
        let refresh_hint = match env("VOUCH_FEDERATION_REFRESH_HINT") {
            Some(text) => {
                HumanDuration::parse(&text).map_err(|e| bad(format!("VOUCH_FEDERATION_REFRESH_HINT: {e}")))?.0
            }
            None => file.refresh_hint.map_or(DEFAULT_REFRESH_HINT, |d| d.0),
        };
        if refresh_hint < Duration::from_secs(1) || refresh_hint > Duration::from_secs(7 * 86400) {
            return Err(bad(format!(
                "refresh_hint {}: use 1s to 7d (how often other trust domains fetch this bundle)",
                HumanDuration(refresh_hint)
            )));
        }
        let listen = match env("VOUCH_FEDERATION_LISTEN").or(file.bundle_endpoint_listen) {
            None => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                bad(format!("bundle_endpoint_listen `{text}` is not an address like 0.0.0.0:8443"))
            })?),
        };
        let profile = match file.bundle_endpoint_profile.as_deref() {
            None => vouch_api::federation::Profile::HttpsSpiffe,
            Some(p) => p.parse().map_err(|e: String| bad(format!("bundle_endpoint_{e}")))?,
        };
        let tls = match (file.tls_cert, file.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(bad("tls_cert and tls_key go together".into())),
        };
        let web_tls = match (profile, tls) {
            (vouch_api::federation::Profile::HttpsSpiffe, None) => None,
            (vouch_api::federation::Profile::HttpsSpiffe, Some(_)) => {
                return Err(bad("tls_cert and tls_key are for bundle_endpoint_profile = \"https_web\"; the https_spiffe profile serves the server's own X509-SVID".into()))
            }
            (vouch_api::federation::Profile::HttpsWeb, Some(tls)) => Some(tls),
            (vouch_api::federation::Profile::HttpsWeb, None) => {
                return Err(bad("bundle_endpoint_profile = \"https_web\" needs tls_cert and tls_key (a web-PKI certificate for the endpoint's host name)".into()))
            }
        };
        let bundle_endpoint = match listen {
            Some(listen) => Some(BundleEndpointConfig { listen, web_tls }),
            None if web_tls.is_some() => {
                return Err(bad("tls_cert and tls_key are set but bundle_endpoint_listen is not".into()))
            }
            None => None,
        };
        let web_ca_file = env("VOUCH_FEDERATION_WEB_CA_FILE")
            .map(PathBuf::from)
            .or(file.web_ca_file)
            .unwrap_or_else(|| SYSTEM_CA_FILE.into());
        Ok(Self { bundle_endpoint, refresh_hint, web_ca_file })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileOidc {
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    allow_http_issuer: bool,
}

/// The OIDC issuer listener (`[oidc]`): discovery document and JWKS of the JWT signing keys, for
/// relying parties (OpenBao/Vault JWT auth, cloud workload identity federation) that hold no client
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcConfig {
    /// Where it listens (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// Certificate chain and key (PEM files) for HTTPS; `None` serves plain HTTP, for use behind an
    /// ingress or load balancer that terminates TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// The issuer (`ca.jwt_issuer`): `iss` of every JWT-SVID and of the discovery document, so the
    /// base of the JWKS URL too.
    pub issuer: String,
}

impl OidcConfig {
    /// Checks the `[oidc]` section against `ca.jwt_issuer`. Relying parties fetch the discovery
    /// document from `<issuer>/.well-known/openid-configuration` and require the document's issuer
    /// to equal it byte for byte, so the issuer must be a bare base URL: https (the keys' integrity
    /// rests on it) unless `allow_http_issuer` says TLS is somebody else's (an ingress, a test).
    fn build(file: FileOidc, issuer: Option<&str>, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("oidc: {why}"));
        let listen_text = env("VOUCH_OIDC_LISTEN")
            .or(file.listen)
            .ok_or_else(|| bad("set listen, the address relying parties fetch discovery and keys from (e.g. 0.0.0.0:8443)".into()))?;
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|_| bad(format!("listen `{listen_text}` is not an address like 127.0.0.1:8081")))?;
        let issuer = issuer.ok_or_else(|| {
            bad("ca.jwt_issuer is required with [oidc]: it is the `iss` of every JWT-SVID and the URL relying parties \
                 discover keys from (e.g. https://oidc.example.org)"
                .into())
        })?;
        let url = Url::parse(issuer).map_err(|e| bad(format!("ca.jwt_issuer: {e}")))?;
        if !url.tls && !file.allow_http_issuer {
            return Err(bad(format!(
                "ca.jwt_issuer `{issuer}` is not https: relying parties would fetch the signing keys unauthenticated; \
                 use an https URL, or set oidc.allow_http_issuer = true when an ingress serves it over https \
                 under another name or for a test on loopback"
            )));
        }
        if issuer.contains(['?', '#']) || issuer.ends_with('/') {
            return Err(bad(format!(
                "ca.jwt_issuer `{issuer}` must be a base URL without query or trailing slash (relying parties compare it \
                 byte for byte with the discovery document's issuer)"
            )));
        }
        let tls = match (file.tls_cert, file.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(bad("tls_cert and tls_key go together".into())),
        };
        Ok(Self { listen, tls, issuer: issuer.to_owned() })
    }

    /// The JWKS URL named by the discovery document.
    pub fn jwks_uri(&self) -> String {
        format!("{}{}", self.issuer, OIDC_KEYS_PATH)
    }
}

/// Where the OIDC listener serves the JWKS of the JWT signing keys.
pub const OIDC_KEYS_PATH: &str = "/keys";

/// The setting `<section>.<key>`: from `VOUCH_<SECTION>_<KEY>` when set (an error naming both if it
/// does not parse), else from the file, else `default`.
pub(crate) fn pick_setting<T: std::str::FromStr>(
    env: EnvLookup<'_>,
    section: &str,
    key: &str,
    file: Option<T>,
    default: T,
) -> Result<T, ConfigError> {
    let var = format!("VOUCH_{}_{}", section.to_ascii_uppercase(), key.to_ascii_uppercase());
    match env(&var) {
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| ConfigError::Invalid(format!("{var}: `{text}` is not a valid {section}.{key}"))),
        None => Ok(file.unwrap_or(default)),
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    attest_per_second: Option<f64>,
    attest_burst: Option<u32>,
    attest_sources: Option<usize>,
    sign_per_second: Option<f64>,
    sign_burst: Option<u32>,
    jwt_per_second: Option<f64>,
    jwt_burst: Option<u32>,
    agents: Option<usize>,
    refusal_log_interval: Option<HumanDuration>,
}

/// A token-bucket rate: `per_second` on average, up to `burst` at once; `per_second = 0` turns the
/// limit off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens held (and so the largest burst).
    pub burst: u32,
}

impl Rate {
    /// Whether the limit is off.
    pub fn is_off(self) -> bool {
        self.per_second == 0.0
    }
}

/// The `[limits]` section: what one caller may cost the server (see docs/operations.md, "Limits").
#[derive(Debug, Clone, PartialEq)]
pub struct LimitsConfig {
    /// Node attestation requests (all methods, x509pop challenges included) per source address.
    pub attest: Rate,
    /// Most source addresses tracked at once.
    pub attest_sources: usize,
    /// CSRs signed per agent (a batch costs one per CSR).
    pub sign: Rate,
    /// JWT-SVIDs minted per agent.
    pub jwt: Rate,
    /// Most agents tracked at once (per limit).
    pub agents: usize,
    /// At most one warning line per refusal reason in this interval, with the count.
    pub refusal_log_interval: Duration,
}

impl Default for LimitsConfig {
    /// Node attestation: 10/s, burst 20 per address (an agent attests once, then renews over its
    /// SVID; a node rebooting in a loop is still far below). Signing: 200 CSRs/s, burst 10,000 per
    /// agent (a node with 10,000 entries signs them all at start; 500 workloads rotating hourly need
    /// well under 1/s). JWT: 100/s, burst 1,000 per agent (tokens are cached at the agent for half
    /// their life).
    fn default() -> Self {
        Self {
            attest: Rate { per_second: 10.0, burst: 20 },
            attest_sources: 10_000,
            sign: Rate { per_second: 200.0, burst: 10_000 },
            jwt: Rate { per_second: 100.0, burst: 1_000 },
            agents: 100_000,
            refusal_log_interval: Duration::from_secs(10),
        }
    }
}

impl LimitsConfig {
    fn build(f: FileLimits, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let d = Self::default();
        let rate =
            |name: &str, per: Option<f64>, burst: Option<u32>, def: Rate| -> Result<Rate, ConfigError> {
                let per_second =
                    pick_setting(env, "limits", &format!("{name}_per_second"), per, def.per_second)?;
                let burst = pick_setting(env, "limits", &format!("{name}_burst"), burst, def.burst)?;
                if !per_second.is_finite() || per_second < 0.0 {
                    return Err(ConfigError::Invalid(format!(
                        "limits.{name}_per_second must be a number >= 0 (0 turns the limit off)"
                    )));
                }
                if burst == 0 {
                    return Err(ConfigError::Invalid(format!("limits.{name}_burst must be at least 1")));
                }
                Ok(Rate { per_second, burst })
            };
        let sign = rate("sign", f.sign_per_second, f.sign_burst, d.sign)?;
        let batch = vouch_api::agent::MAX_SIGN_BATCH;
        if !sign.is_off() && (sign.burst as usize) < batch {
            return Err(ConfigError::Invalid(format!(
                "limits.sign_burst must be at least {batch}, the largest signing batch an agent sends"
            )));
        }
        let interval = match env("VOUCH_LIMITS_REFUSAL_LOG_INTERVAL") {
            Some(text) => {
                HumanDuration::parse(&text)
                    .map_err(|e| ConfigError::Invalid(format!("VOUCH_LIMITS_REFUSAL_LOG_INTERVAL: {e}")))?
                    .0
            }
            None => f.refusal_log_interval.map_or(d.refusal_log_interval, |h| h.0),
        };
        Ok(Self {
            attest: rate("attest", f.attest_per_second, f.attest_burst, d.attest)?,
            attest_sources: pick_setting(
                env,
                "limits",
                "attest_sources",
                f.attest_sources,
                d.attest_sources,
            )?
            .max(2),
            sign,
            jwt: rate("jwt", f.jwt_per_second, f.jwt_burst, d.jwt)?,
            agents: pick_setting(env, "limits", "agents", f.agents, d.agents)?.max(2),
            refusal_log_interval: interval,
        })
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileNodeAttestation {
    #[serde(default)]
    k8s_psat: Vec<FilePsat>,
    #[serde(default)]
    x509pop: Vec<FileX509Pop>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileX509Pop {
    name: String,
    ca_bundle: PathBuf,
}

/// CAs whose node certificates may attest agents by proof of possession (x509pop).
#[derive(Debug, Clone)]
pub struct X509PopCas {
    /// A name for selectors and logs.
    pub name: String,
    /// The CA certificates (DER).
    pub cas: Vec<Vec<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePsat {
    cluster: String,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    discovery_url: Option<String>,
    #[serde(default)]
    discovery_ca: Option<PathBuf>,
    issuer: String,
    audience: String,
    service_accounts: Vec<String>,
}

/// An OIDC discovery endpoint of a service-account issuer: its document names the JWKS URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcDiscovery {
    /// The discovery document's URL (`…/.well-known/openid-configuration`).
    pub url: String,
    /// CA (PEM) of the endpoint's certificate, for https (in a pod: the service account's `ca.crt`).
    pub ca: Option<PathBuf>,
}

/// A Kubernetes cluster whose projected service-account tokens (PSAT) may attest agents.
#[derive(Debug, Clone)]
pub struct PsatCluster {
    /// The cluster's name in vouch (part of agent IDs and selectors).
    pub name: String,
    /// The service-account issuer's signing keys, from a JWKS file (empty with `discovery`).
    pub keys: std::collections::BTreeMap<String, vouch_ca::jwt::JwtPublicKey>,
    /// Where the keys are fetched instead: the issuer's OIDC discovery document.
    pub discovery: Option<OidcDiscovery>,
    /// The expected `iss`.
    pub issuer: String,
    /// The audience the token must be projected for.
    pub audience: String,
    /// Allowed `namespace:service-account` pairs of agent pods.
    pub service_accounts: Vec<(String, String)>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileServer {
    admin_socket: Option<PathBuf>,
    listen: Option<String>,
    admin_uids: Option<Vec<u32>>,
    dns_names: Option<Vec<String>>,
    require_owner_and_purpose: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileCa {
    key_alg: Option<KeyAlg>,
    root_ttl: Option<HumanDuration>,
    ca_ttl: Option<HumanDuration>,
    jwt_key_ttl: Option<HumanDuration>,
    x509_svid_ttl: Option<HumanDuration>,
    jwt_svid_ttl: Option<HumanDuration>,
    jwt_alg: Option<String>,
    jwt_issuer: Option<String>,
    upstream_cert: Option<PathBuf>,
    upstream_key: Option<PathBuf>,
    kek_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileLog {
    level: Option<String>,
    format: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The database file's name in the data directory.
pub const SQLITE_FILE: &str = "vouch.db";

/// Where the server keeps its state.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// A SQLite file (the default: `<data_dir>/vouch.db`), for one server.
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// Its durability (`sqlite_synchronous`).
        synchronous: SqliteSynchronous,
    },
    /// A PostgreSQL database that several replicas can share (`store = "postgres://…"`). Its
    /// password never shows: the URL prints with `***` in its place.
    Postgres {
        /// Where.
        url: PgUrl,
        /// Connections kept for requests (`postgres_pool_size`); two more per server listen for
        /// other replicas' changes and hold the lead of key rotation.
        pool_size: usize,
    },
}

impl StoreConfig {
    /// The store as it may appear in logs and errors: the file, or the URL without its password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite { path, .. } => path.display().to_string(),
            Self::Postgres { url, .. } => url.to_string(),
        }
    }

    /// `store`, `sqlite_synchronous` and `postgres_pool_size` with their environment overrides.
    /// The error never quotes the store setting, which may hold a password.
    fn build(
        store: Option<String>,
        synchronous: Option<String>,
        pool_size: Option<i64>,
        data_dir: &Path,
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let store = env("VOUCH_STORE").or(store);
        let synchronous = env("VOUCH_SQLITE_SYNCHRONOUS").or(synchronous);
        let pool_size = match env("VOUCH_POSTGRES_POOL_SIZE") {
            Some(text) => Some(text.trim().parse::<i64>().map_err(|_| {
                ConfigError::Invalid(format!(
                    "VOUCH_POSTGRES_POOL_SIZE `{text}`: write a number of connections, 1 to {MAX_POOL_SIZE}"
                ))
            })?),
            None => pool_size,
        };
        match store.as_deref() {
            None | Some("sqlite") => {
                if pool_size.is_some() {
                    return Err(ConfigError::Invalid(
                        "postgres_pool_size applies to a PostgreSQL store only; SQLite has one connection".into(),
                    ));
                }
                let synchronous = match synchronous {
                    None => SqliteSynchronous::default(),
                    Some(text) => text
                        .parse()
                        .map_err(|e: String| ConfigError::Invalid(format!("sqlite_synchronous: {e}")))?,
                };
                Ok(Self::Sqlite { path: data_dir.join(SQLITE_FILE), synchronous })
            }
            Some(url) if PgUrl::is_postgres(url) => {
                if synchronous.is_some() {
                    return Err(ConfigError::Invalid(
                        "sqlite_synchronous applies to the SQLite store only; PostgreSQL's durability is its own \
                         setting (synchronous_commit, on by default)"
                            .into(),
                    ));
                }
                let pool_size = match pool_size {
                    None => DEFAULT_POOL_SIZE,
                    Some(n) => usize::try_from(n).ok().filter(|n| (1..=MAX_POOL_SIZE).contains(n)).ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "postgres_pool_size {n}: choose 1 to {MAX_POOL_SIZE} connections per server (each replica \
                             also opens 2 more; keep the sum over replicas below PostgreSQL's max_connections, 100 by default)"
                        ))
                    })?,
                };
                let url = PgUrl::parse(url).map_err(|e| ConfigError::Invalid(e.to_string()))?;
                Ok(Self::Postgres { url, pool_size })
            }
            Some(_) => Err(ConfigError::Invalid(
                "store: use `sqlite` (the default: a file in data_dir) or a PostgreSQL URL, \
                 postgres://user:password@host:port/database (the value is not shown, as it may hold a password)"
                    .into(),
            )),
        }
    }
}

/// The effective server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The trust domain served.
    pub trust_domain: TrustDomain,
    /// Where the database, KEK and sockets live.
    pub data_dir: PathBuf,
    /// The store: SQLite in the data directory, or PostgreSQL.
    pub store: StoreConfig,
    /// The admin Unix socket.
    pub admin_socket: PathBuf,
    /// The mTLS listener, if any (`127.0.0.1:0` picks a free port).
    pub listen: Option<SocketAddr>,
    /// Uids besides root and the server's own that may use the admin socket.
    pub admin_uids: Vec<u32>,
    /// Whether every entry must have an owner and a purpose (`server.require_owner_and_purpose`,
    /// off by default): creations and updates without them are refused; entries written before
    /// are reported by `GET /v1/entries`, never deleted.
    pub require_owner_and_purpose: bool,
    /// DNS names in the server's own certificate.
    pub dns_names: Vec<String>,
    /// Algorithm of generated keys.
    pub key_alg: KeyAlg,
    /// Algorithm of JWT signing keys when not `key_alg` (`jwt_alg = "RS256"`: RSA-2048).
    pub jwt_key_alg: Option<KeyAlg>,
    /// Self-signed root lifetime.
    pub root_ttl: Duration,
    /// Signing CA lifetime.
    pub ca_ttl: Duration,
    /// JWT key lifetime.
    pub jwt_key_ttl: Duration,
    /// Default X509-SVID lifetime.
    pub x509_svid_ttl: Duration,
    /// Default JWT-SVID lifetime.
    pub jwt_svid_ttl: Duration,
    /// `iss` of JWT-SVIDs.
    pub jwt_issuer: Option<String>,
    /// Upstream root CA certificate and key (PEM files).
    pub upstream: Option<(PathBuf, PathBuf)>,
    /// The key-encryption key file.
    pub kek_file: PathBuf,
    /// Log level filter.
    pub log_level: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Kubernetes clusters for PSAT node attestation.
    pub psat_clusters: Vec<PsatCluster>,
    /// CA sets for x509pop node attestation.
    pub x509pop: Vec<X509PopCas>,
    /// What one caller may cost the server.
    pub limits: LimitsConfig,
    /// The OIDC issuer listener, if configured.
    pub oidc: Option<OidcConfig>,
    /// SPIFFE federation: the bundle endpoint and the refresh of other trust domains' bundles.
    pub federation: FederationConfig,
    /// RFC 8693 token exchange on the OIDC listener, if configured.
    pub token_exchange: Option<crate::token_exchange::TokenExchangeConfig>,
    /// Databases the server issues short-lived credentials on (`[database.<connection>]`).
    pub databases: std::collections::BTreeMap<String, crate::db_creds::DatabaseConfig>,
    /// The tamper-evident audit log (`[audit]`).
    pub audit: crate::audit::AuditConfig,
}

/// Where environment overrides come from; a function so tests need not touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The `[server]` section with its environment overrides.
struct ServerSection {
    admin_socket: PathBuf,
    listen: Option<SocketAddr>,
    admin_uids: Vec<u32>,
    dns_names: Vec<String>,
    require_owner_and_purpose: bool,
}

impl ServerSection {
    fn build(file: FileServer, data_dir: &Path, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let admin_socket = env("VOUCH_ADMIN_SOCKET")
            .map(PathBuf::from)
            .or(file.admin_socket)
            .unwrap_or_else(|| data_dir.join("admin.sock"));
        let listen = match env("VOUCH_LISTEN").or(file.listen).as_deref() {
            None | Some("") | Some("off") => None,
            Some(text) => Some(text.parse::<SocketAddr>().map_err(|_| {
                ConfigError::Invalid(format!("listen `{text}` is not an address like 127.0.0.1:8443"))
            })?),
        };
        let dns_names = file.dns_names.unwrap_or_else(|| vec!["localhost".into()]);
        for name in &dns_names {
            vouch_core::DnsName::new(name)
                .map_err(|e| ConfigError::Invalid(format!("server.dns_names: {e}")))?;
        }
        let require_owner_and_purpose = match env("VOUCH_REQUIRE_OWNER_AND_PURPOSE").as_deref() {
            None => file.require_owner_and_purpose.unwrap_or(false),
            Some("true") => true,
            Some("false") => false,
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "VOUCH_REQUIRE_OWNER_AND_PURPOSE `{other}`: use `true` or `false`"
                )))
            }
        };
        Ok(Self {
            admin_socket,
            listen,
            admin_uids: file.admin_uids.unwrap_or_default(),
            dns_names,
            require_owner_and_purpose,
        })
    }
}

/// The key and SVID lifetimes of the `[ca]` section, checked against each other: a CA or JWT key
/// must outlive the SVIDs it signs by [`ttl::CA_TTL_TO_SVID_TTL`], so rotation never cuts one short.
struct Lifetimes {
    root: Duration,
    ca: Duration,
    jwt_key: Duration,
    x509_svid: Duration,
    jwt_svid: Duration,
}

impl Lifetimes {
    fn build(ca: &FileCa, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let dur = |name: &str, file_value: Option<HumanDuration>, default: Duration| match env(name) {
            Some(text) => HumanDuration::parse(&text)
                .map(|d| d.0)
                .map_err(|e| ConfigError::Invalid(format!("{name}: {e}"))),
            None => Ok(file_value.map(|d| d.0).unwrap_or(default)),
        };
        let x509_svid = dur("VOUCH_X509_SVID_TTL", ca.x509_svid_ttl, ttl::DEFAULT_X509_SVID_TTL)?;
        let jwt_svid = dur("VOUCH_JWT_SVID_TTL", ca.jwt_svid_ttl, ttl::DEFAULT_JWT_SVID_TTL)?;
        let ca_ttl = dur("VOUCH_CA_TTL", ca.ca_ttl, ttl::DEFAULT_CA_TTL)?;
        let jwt_key = dur("VOUCH_JWT_KEY_TTL", ca.jwt_key_ttl, ca_ttl)?;
        let root = dur("VOUCH_ROOT_TTL", ca.root_ttl, Duration::from_secs(365 * 86400))?;
        let factor = ttl::CA_TTL_TO_SVID_TTL;
        if ca_ttl < x509_svid * factor {
            return Err(ConfigError::Invalid(format!(
                "ca_ttl ({}s) must be at least {factor}x x509_svid_ttl ({}s), so SVIDs are not cut short by CA rotation",
                ca_ttl.as_secs(),
                x509_svid.as_secs()
            )));
        }
        if jwt_key < jwt_svid * factor {
            return Err(ConfigError::Invalid(format!(
                "jwt_key_ttl ({}s) must be at least {factor}x jwt_svid_ttl ({}s)",
                jwt_key.as_secs(),
                jwt_svid.as_secs()
            )));
        }
        if root < ca_ttl * 2 {
            return Err(ConfigError::Invalid("root_ttl must be at least twice ca_ttl".into()));
        }
        if x509_svid < vouch_core::entry::MIN_X509_SVID_TTL || jwt_svid < vouch_core::entry::MIN_JWT_SVID_TTL
        {
            return Err(ConfigError::Invalid(
                "x509_svid_ttl must be at least 60s and jwt_svid_ttl at least 10s".into(),
            ));
        }
        Ok(Self { root, ca: ca_ttl, jwt_key, x509_svid, jwt_svid })
    }
}

const WELL_KNOWN: &str = "/.well-known/openid-configuration";

/// Why a discovery endpoint cannot be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The URL is not an absolute http(s) URL.
    #[error("discovery_url {0}")]
    Url(#[from] vouch_http::UrlError),
    /// An https URL without a CA to check its certificate.
    #[error("`{0}` is https: set discovery_ca to the CA of its certificate (in a pod: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt)")]
    NoCa(String),
    /// The CA file or TLS setup is unusable.
    #[error(transparent)]
    Http(#[from] vouch_http::HttpError),
}

impl OidcDiscovery {
    /// The discovery document URL for a configured issuer or discovery URL.
    pub fn document_url(url: &str) -> Result<String, DiscoveryError> {
        let parsed = Url::parse(url)?;
        if parsed.path.ends_with(WELL_KNOWN) {
            Ok(url.to_owned())
        } else {
            Ok(format!("{}{WELL_KNOWN}", url.trim_end_matches('/')))
        }
    }

    /// A getter for `url` (the document or the JWKS it names) with this endpoint's trust settings.
    pub fn getter(&self, url: &str) -> Result<(Getter, Url), DiscoveryError> {
        let parsed = Url::parse(url)?;
        let trust = match (&self.ca, parsed.tls) {
            (Some(ca), true) => Some(Trust::CaFile(ca.clone())),
            (None, true) => return Err(DiscoveryError::NoCa(url.to_owned())),
            (_, false) => None,
        };
        Ok((Getter::new(&parsed, trust.as_ref())?, parsed))
    }
}

impl PsatCluster {
    /// Checks a `[[node_attestation.k8s_psat]]` section and reads what it names: the JWKS file, or
    /// (for discovery) the CA file, so a bad one stops the server at start, not at the first token.
    fn resolve(c: FilePsat) -> Result<Self, ConfigError> {
        let bad =
            |why: String| ConfigError::Invalid(format!("node_attestation.k8s_psat `{}`: {why}", c.cluster));
        let source = crate::issuer_keys::KeySource::resolve(
            c.jwks_file.clone(),
            c.discovery_url.as_deref(),
            c.discovery_ca.clone(),
            crate::issuer_keys::HttpsWithoutCa::Refuse,
            "jwks_file (the issuer's keys, e.g. from `kubectl get --raw /openid/v1/jwks`) \
             or discovery_url (the issuer's OIDC discovery endpoint)",
        )
        .map_err(bad)?;
        let (keys, discovery) = match source {
            crate::issuer_keys::KeySource::File { keys, .. } => (keys, None),
            crate::issuer_keys::KeySource::Discovery(d) => (Default::default(), Some(d)),
        };
        let valid_name = !c.cluster.is_empty()
            && c.cluster.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.');
        if !valid_name {
            return Err(ConfigError::Invalid(format!(
                "node_attestation.k8s_psat: cluster name `{}` must be letters, digits, `-` or `.`",
                c.cluster
            )));
        }
        let service_accounts = c
            .service_accounts
            .iter()
            .map(|sa| {
                sa.split_once(':')
                    .map(|(ns, name)| (ns.to_owned(), name.to_owned()))
                    .ok_or_else(|| bad(format!("service account `{sa}` must be `namespace:name`")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: c.cluster,
            keys,
            discovery,
            issuer: c.issuer,
            audience: c.audience,
            service_accounts,
        })
    }
}

impl X509PopCas {
    /// Reads a `[[node_attestation.x509pop]]` section's CA bundle.
    fn resolve(c: FileX509Pop) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::Invalid(format!("node_attestation.x509pop `{}`: {why}", c.name));
        let text = std::fs::read_to_string(&c.ca_bundle)
            .map_err(|e| bad(format!("cannot read {}: {e}", c.ca_bundle.display())))?;
        let cas: Vec<Vec<u8>> = vouch_ca::pem::decode_all(&text)
            .into_iter()
            .filter(|(l, _)| l == "CERTIFICATE")
            .map(|(_, d)| d)
            .collect();
        if cas.is_empty() {
            return Err(bad(format!("{} holds no CERTIFICATE", c.ca_bundle.display())));
        }
        Ok(Self { name: c.name, cas })
    }
}

impl Config {
    /// Loads the configuration: defaults, then the file (if given), then `VOUCH_*` variables.
    pub fn load(path: Option<&Path>, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| ConfigError::Read { path: p.into(), source })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: p.into(),
                    message: redact_passwords(&e.to_string()),
                })?
            }
            None => FileConfig::default(),
        };
        Self::build(file, env)
    }

    /// Parses configuration text (tests and `--config -`).
    pub fn from_toml(text: &str, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let file = toml::from_str::<FileConfig>(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: redact_passwords(&e.to_string()),
        })?;
        Self::build(file, env)
    }

    /// Builds the effective configuration, section by section; files the configuration names (JWKS,
    /// CA bundles) are read by the node-attestation sections' own resolution steps.
    fn build(file: FileConfig, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        if let Some(v) = file.version {
            if v != CONFIG_VERSION {
                return Err(ConfigError::Invalid(format!(
                    "version {v} is not supported; this vouch reads version {CONFIG_VERSION}"
                )));
            }
        }
        let td_text = env("VOUCH_TRUST_DOMAIN").or(file.trust_domain).unwrap_or_else(|| "example.org".into());
        let trust_domain = TrustDomain::new(&td_text)
            .map_err(|e| ConfigError::Invalid(format!("trust_domain `{td_text}`: {e}")))?;
        let data_dir =
            env("VOUCH_DATA_DIR").map(PathBuf::from).or(file.data_dir).unwrap_or_else(|| "vouch-data".into());
        let server = ServerSection::build(file.server, &data_dir, env)?;
        let store =
            StoreConfig::build(file.store, file.sqlite_synchronous, file.postgres_pool_size, &data_dir, env)?;
        let lifetimes = Lifetimes::build(&file.ca, env)?;
        let upstream = match (file.ca.upstream_cert, file.ca.upstream_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err(ConfigError::Invalid("ca.upstream_cert and ca.upstream_key go together".into())),
        };
        let log_format = match env("VOUCH_LOG_FORMAT").or(file.log.format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid(format!("log.format `{other}`: use `text` or `json`")))
            }
        };
        let psat_clusters =
            file.node_attestation.k8s_psat.into_iter().map(PsatCluster::resolve).collect::<Result<_, _>>()?;
        let x509pop =
            file.node_attestation.x509pop.into_iter().map(X509PopCas::resolve).collect::<Result<_, _>>()?;
        let limits = LimitsConfig::build(file.limits, env)?;
        let jwt_issuer = env("VOUCH_JWT_ISSUER").or(file.ca.jwt_issuer);
        let key_alg = file.ca.key_alg.unwrap_or(KeyAlg::EcP256);
        if key_alg == KeyAlg::Rsa2048 {
            return Err(ConfigError::Invalid(
                "ca.key_alg `rsa-2048`: CA keys are ec-p256 or ec-p384; for RSA JWT-SVIDs set ca.jwt_alg = \"RS256\"".into(),
            ));
        }
        let jwt_key_alg = match env("VOUCH_JWT_ALG").or(file.ca.jwt_alg).as_deref() {
            None => None,
            Some("ES256") => Some(KeyAlg::EcP256),
            Some("ES384") => Some(KeyAlg::EcP384),
            Some("RS256") => Some(KeyAlg::Rsa2048),
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "ca.jwt_alg `{other}`: use ES256, ES384 or RS256 (RSA-2048, for relying parties that take only RSA)"
                )))
            }
        };
        let oidc = file.oidc.map(|o| OidcConfig::build(o, jwt_issuer.as_deref(), env)).transpose()?;
        let federation = FederationConfig::build(file.federation, env)?;
        let token_exchange =
            crate::token_exchange::TokenExchangeConfig::build(file.token_exchange, &trust_domain)?;
        if token_exchange.is_some() && oidc.is_none() {
            return Err(ConfigError::Invalid(
                "token_exchange needs [oidc]: POST /v1/token is served on the OIDC listener, which relying parties \
                 reach without a client certificate"
                    .into(),
            ));
        }
        let databases = crate::db_creds::build(file.database, env)?;
        let audit = crate::audit::AuditConfig::build(file.audit, env)?;
        Ok(Self {
            audit,
            databases,
            federation,
            token_exchange,
            limits,
            oidc,
            psat_clusters,
            x509pop,
            trust_domain,
            kek_file: file.ca.kek_file.unwrap_or_else(|| data_dir.join("kek")),
            data_dir,
            store,
            admin_socket: server.admin_socket,
            listen: server.listen,
            admin_uids: server.admin_uids,
            require_owner_and_purpose: server.require_owner_and_purpose,
            dns_names: server.dns_names,
            key_alg,
            jwt_key_alg,
            root_ttl: lifetimes.root,
            ca_ttl: lifetimes.ca,
            jwt_key_ttl: lifetimes.jwt_key,
            x509_svid_ttl: lifetimes.x509_svid,
            jwt_svid_ttl: lifetimes.jwt_svid,
            jwt_issuer,
            upstream,
            log_level: env("VOUCH_LOG").or(file.log.level).unwrap_or_else(|| "info".into()),
            log_format,
        })
    }

    /// The authority settings derived from this configuration.
    pub fn authority_config(&self) -> vouch_ca::AuthorityConfig {
        let mut c = vouch_ca::AuthorityConfig::new(self.trust_domain.clone());
        c.key_alg = self.key_alg;
        c.root_ttl = self.root_ttl;
        c.ca_ttl = self.ca_ttl;
        c.jwt_key_ttl = self.jwt_key_ttl;
        c.jwt_key_alg = self.jwt_key_alg;
        c.jwt_issuer = self.jwt_issuer.clone();
        c.refresh_hint = self.federation.refresh_hint;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults() {
        let c = Config::from_toml("", &no_env).unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.admin_socket, PathBuf::from("vouch-data/admin.sock"));
        assert_eq!(c.x509_svid_ttl, Duration::from_secs(3600));
        assert_eq!(c.jwt_svid_ttl, Duration::from_secs(300));
        assert_eq!(c.ca_ttl, Duration::from_secs(86400));
        assert!(c.listen.is_none());
    }

    #[test]
    fn file_and_env() {
        let text = r#"
            version = 1
            trust_domain = "prod.example"
            data_dir = "/tmp/x"
            [server]
            listen = "127.0.0.1:0"
            [ca]
            x509_svid_ttl = "10m"
            ca_ttl = "2h"
        "#;
        let env = |k: &str| (k == "VOUCH_TRUST_DOMAIN").then(|| "env.example".to_string());
        let c = Config::from_toml(text, &env).unwrap();
        assert_eq!(c.trust_domain.as_str(), "env.example", "env wins over the file");
        assert_eq!(c.x509_svid_ttl, Duration::from_secs(600));
        assert_eq!(c.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(c.kek_file, PathBuf::from("/tmp/x/kek"));
    }

    #[test]
    fn federation_section_checks_the_profile_and_its_certificate() {
        let c = Config::from_toml("", &no_env).unwrap();
        assert_eq!(c.federation, FederationConfig::default(), "no bundle endpoint by default");
        let c = Config::from_toml(
            "[federation]\nbundle_endpoint_listen = \"127.0.0.1:0\"\nrefresh_hint = \"30s\"",
            &no_env,
        )
        .unwrap();
        let endpoint = c.federation.bundle_endpoint.clone().unwrap();
        assert_eq!(endpoint.web_tls, None, "https_spiffe by default");
        assert_eq!(c.authority_config().refresh_hint, Duration::from_secs(30));
        let web = "[federation]\nbundle_endpoint_listen = \"127.0.0.1:0\"\nbundle_endpoint_profile = \"https_web\"\ntls_cert = \"c\"\ntls_key = \"k\"";
        assert!(Config::from_toml(web, &no_env)
            .unwrap()
            .federation
            .bundle_endpoint
            .unwrap()
            .web_tls
            .is_some());
        for (text, why) in [
            ("[federation]\nbundle_endpoint_listen = \"x\"", "bundle_endpoint_listen `x`"),
            ("[federation]\nbundle_endpoint_listen = \"127.0.0.1:0\"\nbundle_endpoint_profile = \"https_web\"", "needs tls_cert"),
            ("[federation]\nbundle_endpoint_listen = \"127.0.0.1:0\"\nbundle_endpoint_profile = \"http\"", "profile `http`"),
            ("[federation]\nbundle_endpoint_listen = \"127.0.0.1:0\"\ntls_cert = \"c\"\ntls_key = \"k\"", "are for bundle_endpoint_profile"),
            ("[federation]\ntls_cert = \"c\"", "go together"),
            ("[federation]\nrefresh_hint = \"0s\"", "use 1s to 7d"),
            ("[federation]\nrefesh_hint = \"1m\"", "unknown field `refesh_hint`"),
        ] {
            let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn oidc_needs_an_https_issuer_unless_told_and_names_what_is_wrong() {
        let text = "[ca]\njwt_issuer = \"https://oidc.example.org\"\n[oidc]\nlisten = \"127.0.0.1:0\"";
        let c = Config::from_toml(text, &no_env).unwrap();
        let oidc = c.oidc.unwrap();
        assert_eq!(oidc.jwks_uri(), "https://oidc.example.org/keys");
        assert_eq!(oidc.tls, None);
        assert!(Config::from_toml("", &no_env).unwrap().oidc.is_none(), "off by default");
        let rs = Config::from_toml("[ca]\njwt_alg = \"RS256\"", &no_env).unwrap();
        assert_eq!((rs.key_alg, rs.jwt_key_alg), (KeyAlg::EcP256, Some(KeyAlg::Rsa2048)));
        let http = "[ca]\njwt_issuer = \"http://127.0.0.1:8081\"\n[oidc]\nlisten = \"127.0.0.1:0\"\nallow_http_issuer = true";
        assert_eq!(Config::from_toml(http, &no_env).unwrap().oidc.unwrap().issuer, "http://127.0.0.1:8081");
        let cases = [
            ("[oidc]\nlisten = \"127.0.0.1:0\"", "ca.jwt_issuer is required with [oidc]"),
            ("[ca]\njwt_issuer = \"http://x.example\"\n[oidc]\nlisten = \"127.0.0.1:0\"", "is not https"),
            ("[ca]\njwt_issuer = \"https://x.example/\"\n[oidc]\nlisten = \"127.0.0.1:0\"", "without query or trailing slash"),
            ("[ca]\njwt_issuer = \"https://x.example?a=b\"\n[oidc]\nlisten = \"127.0.0.1:0\"", "without query"),
            ("[ca]\njwt_issuer = \"x.example\"\n[oidc]\nlisten = \"127.0.0.1:0\"", "ca.jwt_issuer"),
            ("[ca]\njwt_issuer = \"https://x.example\"\n[oidc]\nlisten = \"nope\"", "listen `nope`"),
            ("[ca]\njwt_issuer = \"https://x.example\"\n[oidc]", "set listen"),
            ("[ca]\njwt_issuer = \"https://x.example\"\n[oidc]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"c\"", "go together"),
            ("[oidc]\nlisen = \"127.0.0.1:0\"", "unknown field `lisen`"),
            ("[ca]\njwt_alg = \"HS256\"", "use ES256, ES384 or RS256"),
            ("[ca]\nkey_alg = \"rsa-2048\"", "CA keys are ec-p256 or ec-p384"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let cases = [
            ("trust_domian = \"x\"", "unknown field `trust_domian`"),
            ("version = 2", "version 2 is not supported"),
            ("trust_domain = \"Bad\"", "trust_domain `Bad`"),
            ("[server]\nlisten = \"nope\"", "not an address"),
            ("[ca]\nx509_svid_ttl = \"5h\"", "at least 6x"),
            ("[ca]\nx509_svid_ttl = \"5y\"", "unknown unit"),
            ("[ca]\nupstream_cert = \"a\"", "go together"),
            ("[log]\nformat = \"xml\"", "use `text` or `json`"),
            ("[limits]\nattest_burst = 0", "attest_burst must be at least 1"),
            ("[limits]\nsign_per_second = -1", "sign_per_second must be a number >= 0"),
            ("[limits]\nsign_burst = 10", "at least 500"),
            ("[limits]\nattest_rate = 1", "unknown field `attest_rate`"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let env = |k: &str| (k == "VOUCH_JWT_SVID_TTL").then(|| "abc".to_string());
        assert!(Config::from_toml("", &env).unwrap_err().to_string().contains("VOUCH_JWT_SVID_TTL"));
    }

    #[test]
    fn store_sqlite_by_default_or_postgres_by_url_and_its_password_never_shows() {
        match Config::from_toml("data_dir = \"/d\"", &no_env).unwrap().store {
            StoreConfig::Sqlite { path, synchronous } => {
                assert_eq!((path, synchronous), (PathBuf::from("/d/vouch.db"), SqliteSynchronous::Normal))
            }
            other => panic!("{other:?}"),
        }
        let full = Config::from_toml("store = \"sqlite\"\nsqlite_synchronous = \"full\"", &no_env).unwrap();
        assert!(matches!(full.store, StoreConfig::Sqlite { synchronous: SqliteSynchronous::Full, .. }));
        let env = |k: &str| (k == "VOUCH_SQLITE_SYNCHRONOUS").then(|| "full".to_string());
        let full = Config::from_toml("", &env).unwrap();
        assert!(matches!(full.store, StoreConfig::Sqlite { synchronous: SqliteSynchronous::Full, .. }));

        let text = "store = \"postgres://vouch:s3cret-pw@db.internal:5433/vouch\"";
        let c = Config::from_toml(text, &no_env).unwrap();
        assert_eq!(c.store.describe(), "postgres://vouch:***@db.internal:5433/vouch");
        assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
        let env = |k: &str| (k == "VOUCH_STORE").then(|| "postgresql://v:s3cret-pw@h/db".to_string());
        let c = Config::from_toml("", &env).unwrap();
        assert_eq!(c.store.describe(), "postgres://v:***@h:5432/db", "env wins");
        assert!(matches!(c.store, StoreConfig::Postgres { pool_size: 4, .. }), "the default pool");
        let c = Config::from_toml(&format!("{text}\npostgres_pool_size = 12"), &no_env).unwrap();
        assert!(matches!(c.store, StoreConfig::Postgres { pool_size: 12, .. }));
        let env = |k: &str| (k == "VOUCH_POSTGRES_POOL_SIZE").then(|| "many".to_string());
        let err = Config::from_toml(text, &env).unwrap_err().to_string();
        assert!(err.contains("VOUCH_POSTGRES_POOL_SIZE `many`"), "{err}");

        let cases = [
            ("store = \"mysql://u:s3cret-pw@h/db\"", "use `sqlite`"),
            ("store = \"postgres://u:s3cret-pw@h:port/db\"", "store URL"),
            ("store = \"postgres://u:s3cret-pw@h/db\"\nsqlite_synchronous = \"full\"", "SQLite store only"),
            ("sqlite_synchronous = \"off\"", "use `normal` or `full`"),
            ("store = \"postgres://u:s3cret-pw@h/db\"\npostgres_pool_size = 0", "choose 1 to 64"),
            ("store = \"postgres://u:s3cret-pw@h/db\"\npostgres_pool_size = 65", "choose 1 to 64"),
            ("store = \"postgres://u:s3cret-pw@h/db\"\npostgres_pool_size = \"8\"", "postgres_pool_size"),
            ("postgres_pool_size = 8", "PostgreSQL store only"),
            ("stroe = \"postgres://u:s3cret-pw@h/db\"", "unknown field `stroe`"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml(text, &no_env).unwrap_err().to_string();
            assert!(err.contains(want) && !err.contains("s3cret"), "{text:?}: {err}");
        }
    }

    #[test]
    fn limits_have_defaults_and_come_from_the_file_and_env() {
        let d = Config::from_toml("", &no_env).unwrap().limits;
        assert_eq!(d, LimitsConfig::default());
        assert_eq!(d.attest, Rate { per_second: 10.0, burst: 20 });
        let text = "[limits]\nattest_per_second = 2.5\nattest_burst = 5\njwt_per_second = 0\nrefusal_log_interval = \"1m\"";
        let env = |k: &str| (k == "VOUCH_LIMITS_ATTEST_BURST").then(|| "7".to_string());
        let c = Config::from_toml(text, &env).unwrap().limits;
        assert_eq!(c.attest, Rate { per_second: 2.5, burst: 7 }, "env wins over the file");
        assert!(c.jwt.is_off());
        assert_eq!(c.refusal_log_interval, Duration::from_secs(60));
        let env = |k: &str| (k == "VOUCH_LIMITS_SIGN_PER_SECOND").then(|| "fast".to_string());
        let err = Config::from_toml("", &env).unwrap_err().to_string();
        assert!(err.contains("VOUCH_LIMITS_SIGN_PER_SECOND") && err.contains("`fast`"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(HumanDuration::parse("90").unwrap().0, Duration::from_secs(90));
        assert_eq!(HumanDuration::parse("2d").unwrap().0, Duration::from_secs(172800));
        assert_eq!(HumanDuration::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(HumanDuration(Duration::from_secs(5400)).to_string(), "1h30m");
        assert!(HumanDuration::parse("").is_err());
        assert!(HumanDuration::parse("h").is_err());
        assert!(HumanDuration::parse("99999999999999999999d").is_err());
        let err = HumanDuration::parse("1h30").unwrap_err().to_string();
        assert!(err.contains("`1h30`") && err.contains("`1h30m`"), "{err}");
    }

    #[test]
    fn compound_durations_in_file_and_env() {
        let text = "[ca]\nx509_svid_ttl = \"1h30m\"\nca_ttl = \"2d12h\"\njwt_svid_ttl = 120";
        let env = |k: &str| (k == "VOUCH_JWT_KEY_TTL").then(|| "3d0h0m0s".to_string());
        let c = Config::from_toml(text, &env).unwrap();
        assert_eq!(c.x509_svid_ttl, Duration::from_secs(5_400));
        assert_eq!(c.ca_ttl, Duration::from_secs(216_000));
        assert_eq!(c.jwt_svid_ttl, Duration::from_secs(120));
        assert_eq!(c.jwt_key_ttl, Duration::from_secs(259_200));
        let err = Config::from_toml("[ca]\nca_ttl = \"30m1h\"", &no_env).unwrap_err().to_string();
        assert!(err.contains("`30m1h`") && err.contains("largest to smallest"), "{err}");
        let env = |k: &str| (k == "VOUCH_CA_TTL").then(|| "-5m".to_string());
        let err = Config::from_toml("", &env).unwrap_err().to_string();
        assert!(err.contains("VOUCH_CA_TTL") && err.contains("`-5m`"), "{err}");
    }
}
