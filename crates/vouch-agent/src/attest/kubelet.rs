//! The kubelet client: `GET /pods` on the node's kubelet, for `k8s:` selectors.
//!
//! The kubelet's authenticated port (`https://127.0.0.1:10250`) is asked with a bearer token read from
//! a file at every request (projected service-account tokens rotate), verifying the kubelet's serving
//! certificate against a CA file, or — as kubelet serving certificates are often self-signed — not at
//! all when the operator says so. The read-only port (`http://127.0.0.1:10255`) needs neither.
//!
//! The pod list is cached briefly. A container the list does not know yet (the kubelet updates its
//! statuses a moment after a container starts) triggers a refetch, a few times, before the caller is
//! refused: fail closed, never guess.
//!
//! No kubelet runs on the development machines: the client is tested against a local HTTPS server
//! serving recorded kubelet JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::time::Instant;
use vouch_core::Selectors;

use super::k8s::k8s_selectors;

/// How a kubelet is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    /// `https://host:port` (authenticated port) or `http://host:port` (read-only port).
    pub url: String,
    /// Bearer token file (a service-account token allowed to `get nodes/proxy` or `nodes/pods`).
    pub token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signed the kubelet's serving certificate.
    pub ca_file: Option<PathBuf>,
    /// Accept any serving certificate (self-signed kubelet certificates); the token still goes only to
    /// the configured address.
    pub insecure_skip_verify: bool,
}

/// A pod list younger than this is used without asking the kubelet again.
const FRESH: Duration = Duration::from_secs(2);
/// Never ask the kubelet more often than this, however many callers miss.
const MIN_REFETCH: Duration = Duration::from_millis(200);
/// Misses are retried this many times, `MIN_REFETCH * 2` apart, before the caller is refused.
const MISS_RETRIES: u32 = 3;
/// A whole request, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest pod list accepted (a node's pod list is a few MiB at most).
const MAX_BODY: usize = 64 << 20;

/// Asks one kubelet for its pods.
pub struct KubeletClient {
    config: KubeletConfig,
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Value>)>>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").field("url", &self.config.url).finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// Checks the configuration; nothing is fetched yet.
    pub fn new(config: KubeletConfig) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = config.url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = config.url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "kubelet url `{}`: use https://host:port (port 10250) or http://host:port (read-only port 10255)",
                config.url
            ));
        };
        let authority = rest.trim_end_matches('/');
        let (host, port) = authority
            .rsplit_once(':')
            .and_then(|(h, p)| {
                Some((h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().ok()?))
            })
            .filter(|(h, _)| !h.is_empty() && !h.contains('/'))
            .ok_or_else(|| format!("kubelet url `{}`: needs host:port and no path", config.url))?;
        let connector = if tls {
            let provider = vouch_client::tls::provider();
            let builder = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("tls: {e}"))?;
            let client = if config.insecure_skip_verify {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyServerCert))
                    .with_no_client_auth()
            } else {
                let ca = config.ca_file.as_ref().ok_or_else(|| {
                    "an https kubelet url needs the CA of the kubelet's serving certificate (kubelet_ca), \
                     or kubelet_insecure_skip_verify = true for self-signed kubelet certificates"
                        .to_owned()
                })?;
                let mut roots = rustls::RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(ca)
                    .map_err(|e| format!("kubelet CA `{}`: {e}", ca.display()))?;
                for c in certs {
                    let c = c.map_err(|e| format!("kubelet CA `{}`: {e}", ca.display()))?;
                    roots.add(c).map_err(|e| format!("kubelet CA `{}`: {e}", ca.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("kubelet CA `{}` holds no certificate", ca.display()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            };
            Some(tokio_rustls::TlsConnector::from(Arc::new(client)))
        } else {
            if config.token_file.is_some() {
                return Err(
                    "a kubelet token is only sent over https; the read-only http port needs none".into()
                );
            }
            None
        };
        Ok(Self { host: host.to_owned(), port, tls: connector, config, cache: tokio::sync::Mutex::new(None) })
    }

    /// The `k8s:` selectors of container `container_id` in pod `pod_uid`. Uses the cached pod list
    /// when it is fresh; refetches on a miss, a few times, then refuses.
    pub async fn selectors(&self, pod_uid: &str, container_id: &str) -> Result<Selectors, String> {
        let mut last_err = String::new();
        for attempt in 0..=MISS_RETRIES {
            if attempt > 0 {
                tokio::time::sleep(MIN_REFETCH * 2).await;
            }
            let list = self.pod_list(attempt > 0).await?;
            match k8s_selectors(&list, pod_uid, container_id) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }

    /// The pod list: cached unless stale or `refresh` (and the last fetch is not too recent).
    async fn pod_list(&self, refresh: bool) -> Result<Arc<Value>, String> {
        let mut cache = self.cache.lock().await;
        if let Some((at, list)) = cache.as_ref() {
            let age = at.elapsed();
            if (!refresh && age < FRESH) || age < MIN_REFETCH {
                return Ok(list.clone());
            }
        }
        let list = Arc::new(self.fetch().await?);
        *cache = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// One `GET /pods`.
    pub async fn fetch(&self) -> Result<Value, String> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.fetch_once())
            .await
            .map_err(|_| format!("kubelet {}: no answer within {REQUEST_TIMEOUT:?}", self.config.url))?
    }

    async fn fetch_once(&self) -> Result<Value, String> {
        let url = &self.config.url;
        let mut req = hyper::Request::get("/pods")
            .header(hyper::header::HOST, format!("{}:{}", self.host, self.port))
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(path) = &self.config.token_file {
            // Read at every request: projected tokens are rotated by the kubelet. Never logged.
            let token = std::fs::read_to_string(path)
                .map_err(|e| format!("kubelet token `{}`: {e}", path.display()))?;
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {}", token.trim()));
        }
        let req = req.body(http_body_util::Empty::<bytes::Bytes>::new()).map_err(|e| e.to_string())?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("kubelet {url}: {e}"))?;
        let resp = match &self.tls {
            Some(tls) => {
                let name =
                    ServerName::try_from(self.host.clone()).map_err(|e| format!("kubelet {url}: {e}"))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| format!("kubelet {url}: tls: {e}"))?;
                send(TokioIo::new(stream), req).await
            }
            None => send(TokioIo::new(tcp), req).await,
        }
        .map_err(|e| format!("kubelet {url}: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("kubelet {url}: reading the pod list: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 => ": the token was not accepted",
                403 => ": the token's service account may not read pods (grant `get` on `nodes/proxy`)",
                _ => "",
            };
            return Err(format!("kubelet {url}: HTTP {status}{hint}"));
        }
        let list: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("kubelet {url}: the pod list is not JSON: {e}"))?;
        if !list["items"].is_array() {
            return Err(format!("kubelet {url}: the answer is not a PodList"));
        }
        Ok(list)
    }
}

async fn send<IO>(
    io: IO,
    req: hyper::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// Accepts any server certificate but still checks the handshake signatures (so the connection is
/// encrypted to whoever holds the presented key). Only with `kubelet_insecure_skip_verify`.
#[derive(Debug)]
struct AnyServerCert;

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &vouch_client::tls::algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &vouch_client::tls::algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vouch_client::tls::algorithms().supported_schemes()
    }
}
