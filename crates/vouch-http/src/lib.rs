//! Plain HTTP(S) and Unix-socket GETs to services outside vouch that have no SPIFFE identity: the
//! node's kubelet and the Docker/podman Engine API (agent), OIDC discovery endpoints of Kubernetes
//! service-account issuers (server).
//!
//! An `https://` peer is authenticated by a CA file (web PKI rules: the certificate must name the
//! host), or not at all when the operator says so (kubelets often serve self-signed certificates).
//! Plain `http://` is allowed for endpoints that are meant to be read without TLS (the kubelet's
//! read-only port). Every GET has a deadline and a cap on the answer's size; errors name the peer.

#[cfg(feature = "testing")]
pub mod testing;

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
pub use vouch_tls::Trust;

/// Why a GET failed. Never carries a bearer token.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL or the trust setting is unusable.
    #[error("{0}")]
    Config(String),
    /// TLS material could not be used.
    #[error(transparent)]
    Tls(#[from] vouch_tls::TlsError),
    /// The peer could not be reached.
    #[error("cannot reach {peer}: {reason}")]
    Connect {
        /// Address or socket path.
        peer: String,
        /// The underlying error.
        reason: String,
    },
    /// The exchange failed after connecting.
    #[error("{peer}: {reason}")]
    Exchange {
        /// Address or socket path.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// No answer in time.
    #[error("{peer} did not answer within {after:?}")]
    Timeout {
        /// Address or socket path.
        peer: String,
        /// The deadline.
        after: Duration,
    },
}

/// Why a URL was refused; each says what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Another scheme, or none.
    #[error("`{0}` is not an http:// or https:// URL")]
    NotHttp(String),
    /// No host, a user name, or a fragment.
    #[error("`{0}`: needs a host, and no user name or fragment")]
    Malformed(String),
    /// An IPv6 address without its `]`.
    #[error("`{0}`: unclosed `[`")]
    UnclosedBracket(String),
    /// A port that is not a number from 0 to 65535.
    #[error("`{url}`: bad port `{port}`")]
    BadPort {
        /// The URL.
        url: String,
        /// The port as written.
        port: String,
    },
}

/// The parts of an absolute `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https`?
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (443 or 80 when absent).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    /// Parses an absolute http or https URL; userinfo and fragments are refused. The error says
    /// what is wrong with `url`.
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(UrlError::NotHttp(url.to_owned()));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains('#') {
            return Err(UrlError::Malformed(url.to_owned()));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| UrlError::UnclosedBracket(url.to_owned()))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => {
                p.parse::<u16>().map_err(|_| UrlError::BadPort { url: url.to_owned(), port: p.to_owned() })?
            }
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(UrlError::Malformed(url.to_owned()));
        }
        Ok(Self { tls, host: host.to_owned(), port, path: path.to_owned() })
    }
}

/// GETs from one host.
#[derive(Clone)]
pub struct Getter {
    host: String,
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Getter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Getter").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Getter {
    /// A getter for `url`'s host. `https` needs `trust`; `http` must have none.
    pub fn new(url: &Url, trust: Option<&Trust>) -> Result<Self, HttpError> {
        let tls = match (url.tls, trust) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(HttpError::Config("a CA or skip-verify setting only applies to https".into()))
            }
            (true, None) => {
                return Err(HttpError::Config("an https endpoint needs a CA file (or skip-verify)".into()))
            }
            (true, Some(trust)) => Some(vouch_tls::tls_connector(trust)?),
        };
        Ok(Self { host: url.host.clone(), port: url.port, tls })
    }

    /// A getter for an `https` `url` whose server is verified by `tls` (a SPIFFE bundle endpoint,
    /// say, verified by its X509-SVID rather than by host name).
    pub fn with_connector(url: &Url, tls: tokio_rustls::TlsConnector) -> Result<Self, HttpError> {
        if !url.tls {
            return Err(HttpError::Config("a TLS connector only applies to https".into()));
        }
        Ok(Self { host: url.host.clone(), port: url.port, tls: Some(tls) })
    }

    /// GETs `path`; returns the status and at most `max_body` bytes of body. `bearer` is sent as an
    /// `Authorization` header and never appears in errors.
    pub async fn get(
        &self,
        path: &str,
        bearer: Option<&str>,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(u16, Bytes), HttpError> {
        let peer = self.peer();
        tokio::time::timeout(timeout, self.get_inner(path, bearer, max_body))
            .await
            .map_err(|_| HttpError::Timeout { peer, after: timeout })?
    }

    fn peer(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    async fn get_inner(
        &self,
        path: &str,
        bearer: Option<&str>,
        max_body: usize,
    ) -> Result<(u16, Bytes), HttpError> {
        let peer = self.peer();
        let req = request(path, &peer, bearer, &peer)?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| HttpError::Connect { peer: peer.clone(), reason: e.to_string() })?;
        match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|e| {
                    HttpError::Config(format!("`{}` is not a TLS server name: {e}", self.host))
                })?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|e| HttpError::Exchange { peer: peer.clone(), reason: format!("tls: {e}") })?;
                exchange(TokioIo::new(stream), req, max_body, &peer).await
            }
            None => exchange(TokioIo::new(tcp), req, max_body, &peer).await,
        }
    }
}

/// GETs from an HTTP server on a Unix socket (the Docker and podman Engine APIs).
#[derive(Debug, Clone)]
pub struct UnixGetter {
    socket: PathBuf,
}

impl UnixGetter {
    /// A getter for the server listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self { socket: socket.into() }
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// GETs `path`; returns the status and at most `max_body` bytes of body.
    pub async fn get(
        &self,
        path: &str,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(u16, Bytes), HttpError> {
        let peer = self.socket.display().to_string();
        let exchange_all = async {
            let req = request(path, "localhost", None, &peer)?;
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| HttpError::Connect { peer: peer.clone(), reason: e.to_string() })?;
            exchange(TokioIo::new(stream), req, max_body, &peer).await
        };
        tokio::time::timeout(timeout, exchange_all)
            .await
            .map_err(|_| HttpError::Timeout { peer, after: timeout })?
    }
}

fn request(
    path: &str,
    host: &str,
    bearer: Option<&str>,
    peer: &str,
) -> Result<hyper::Request<http_body_util::Empty<Bytes>>, HttpError> {
    let mut req = hyper::Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::ACCEPT, "application/json");
    if let Some(token) = bearer {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    req.body(http_body_util::Empty::<Bytes>::new())
        .map_err(|_| HttpError::Config(format!("{peer}: `{path}` is not a valid request path")))
}

/// Sends one request on a fresh connection and reads at most `max_body` bytes of the answer.
async fn exchange<IO>(
    io: IO,
    req: hyper::Request<http_body_util::Empty<Bytes>>,
    max_body: usize,
    peer: &str,
) -> Result<(u16, Bytes), HttpError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let failed = |reason: String| HttpError::Exchange { peer: peer.to_owned(), reason };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| failed(e.to_string()))?;
    // The connection task ends with the connection: when the answer is read or the caller's
    // deadline drops this future.
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| failed(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    task.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://kubernetes.default.svc/.well-known/openid-configuration").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "kubernetes.default.svc", 443, "/.well-known/openid-configuration")
        );
        let u = Url::parse("http://127.0.0.1:10255").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 10255, "/"));
        let u = Url::parse("https://[::1]:8443/x").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        for bad in [
            "ftp://x",
            "https://",
            "https://user:pw@host/",
            "https://h:99999/",
            "https://h/#frag",
            "127.0.0.1:10250",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
