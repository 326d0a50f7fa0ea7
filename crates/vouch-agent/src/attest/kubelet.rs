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

use serde_json::Value;
use tokio::time::Instant;
use vouch_core::Selectors;
use vouch_http::{Getter, Trust, Url};

use super::k8s::k8s_selectors;

/// Why the kubelet could not confirm a container. Never carries the bearer token.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The kubelet settings are unusable.
    #[error("{0}")]
    Config(String),
    /// The token file could not be read.
    #[error("kubelet token `{}`: {source}", path.display())]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The kubelet could not be asked.
    #[error("kubelet: {0}")]
    Http(#[from] vouch_http::HttpError),
    /// The kubelet refused.
    #[error("kubelet {url}: HTTP {status}{hint}")]
    Status {
        /// The kubelet.
        url: String,
        /// Its answer.
        status: u16,
        /// What the status usually means.
        hint: &'static str,
    },
    /// The answer is not a pod list.
    #[error("kubelet {url}: the answer is not a PodList{detail}")]
    NotPodList {
        /// The kubelet.
        url: String,
        /// The parser's word, if any.
        detail: String,
    },
    /// No such pod.
    #[error("the kubelet lists no pod with uid `{0}`")]
    NoPod(String),
    /// No such container in the pod.
    #[error("pod `{pod}` has no container with id `{container}`")]
    NoContainer {
        /// The pod uid.
        pod: String,
        /// The container id.
        container: String,
    },
}

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
    getter: Getter,
    cache: tokio::sync::Mutex<Option<(Instant, Arc<Value>)>>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient").field("url", &self.config.url).finish_non_exhaustive()
    }
}

impl KubeletClient {
    /// Checks the configuration; nothing is fetched yet.
    pub fn new(config: KubeletConfig) -> Result<Self, KubeletError> {
        let bad = |why: &str| {
            KubeletError::Config(format!(
                "kubelet url `{}`: {why} (use https://host:port, port 10250, or the read-only http://host:port, port 10255)",
                config.url
            ))
        };
        let url = Url::parse(&config.url).map_err(|e| bad(&e.to_string()))?;
        // The kubelet has no default port: say it explicitly.
        let explicit_port =
            config.url.trim_end_matches('/').rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok());
        if url.path != "/" || !explicit_port {
            return Err(bad("needs host:port and no path"));
        }
        let trust = match (url.tls, &config.ca_file, config.insecure_skip_verify) {
            (false, _, _) => None,
            (true, _, true) => Some(Trust::InsecureSkipVerify),
            (true, Some(ca), false) => Some(Trust::CaFile(ca.clone())),
            (true, None, false) => {
                return Err(KubeletError::Config(
                    "an https kubelet url needs the CA of the kubelet's serving certificate \
                     (kubelet_ca), or kubelet_insecure_skip_verify = true for self-signed ones"
                        .into(),
                ))
            }
        };
        if !url.tls && config.token_file.is_some() {
            return Err(KubeletError::Config(
                "a kubelet token is only sent over https; the read-only http port needs none".into(),
            ));
        }
        // Reads the CA file now: a bad one stops the agent at start, not at the first pod.
        let getter = Getter::new(&url, trust.as_ref())?;
        Ok(Self { config, getter, cache: tokio::sync::Mutex::new(None) })
    }

    /// The `k8s:` selectors of container `container_id` in pod `pod_uid`. Uses the cached pod list
    /// when it is fresh; refetches on a miss, a few times, then refuses.
    pub async fn selectors(&self, pod_uid: &str, container_id: &str) -> Result<Selectors, KubeletError> {
        let mut attempt = 0;
        loop {
            let list = self.pod_list(attempt > 0).await?;
            match k8s_selectors(&list, pod_uid, container_id) {
                Ok(s) => return Ok(s),
                Err(e) if attempt == MISS_RETRIES => return Err(e),
                Err(_) => {}
            }
            attempt += 1;
            tokio::time::sleep(MIN_REFETCH * 2).await;
        }
    }

    /// The pod list: cached unless stale or `refresh` (and the last fetch is not too recent).
    async fn pod_list(&self, refresh: bool) -> Result<Arc<Value>, KubeletError> {
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
    pub async fn fetch(&self) -> Result<Value, KubeletError> {
        let url = &self.config.url;
        let token = match &self.config.token_file {
            // Read at every request: projected tokens are rotated by the kubelet. Never logged.
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| KubeletError::Token { path: path.clone(), source })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let (status, body) = self.getter.get("/pods", token.as_deref(), MAX_BODY, REQUEST_TIMEOUT).await?;
        if !(200..300).contains(&status) {
            let hint = match status {
                401 => ": the token was not accepted",
                403 => ": the token's service account may not read pods (grant `get` on `nodes/proxy`)",
                _ => "",
            };
            return Err(KubeletError::Status { url: url.clone(), status, hint });
        }
        parse_pod_list(url, &body)
    }
}

/// Reads the body of a kubelet `GET /pods` answer from `url`: a JSON object with an `items` array.
/// Pure, so that it is fuzzed (`fuzz/`) and tested without a kubelet.
pub fn parse_pod_list(url: &str, body: &[u8]) -> Result<Value, KubeletError> {
    let not_pod_list = |detail: String| KubeletError::NotPodList { url: url.to_owned(), detail };
    let list: Value = serde_json::from_slice(body).map_err(|e| not_pod_list(format!(" (not JSON: {e})")))?;
    if !list["items"].is_array() {
        return Err(not_pod_list(String::new()));
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_lists_are_json_objects_with_items() {
        let url = "http://127.0.0.1:10255";
        let recorded = include_bytes!("../../tests/fixtures/kubelet-pods.json");
        assert!(parse_pod_list(url, recorded).unwrap()["items"].is_array());
        for body in [&b""[..], b"{", b"[]", b"{\"items\":{}}", b"{\"kind\":\"PodList\"}"] {
            let err = parse_pod_list(url, body).unwrap_err();
            assert!(matches!(err, KubeletError::NotPodList { .. }), "{err}");
        }
    }
}
