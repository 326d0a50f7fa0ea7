//! A client of the admin API over the Unix socket or mTLS, used by the CLI, tests and benchmarks.

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use vouch_core::{SpiffeId, TrustDomain};

use crate::tls::{client_config, SpiffeServerVerifier};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach the vouch server at {target}: {reason}")]
    Connect {
        /// Socket path or address.
        target: String,
        /// The underlying error.
        reason: String,
    },
    /// The server answered with an error.
    #[error("{message} (HTTP {status}, {code})")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code from the body.
        code: String,
        /// Error message from the body.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Local TLS material could not be used.
    #[error("{0}")]
    Tls(String),
}

#[derive(Clone)]
enum Transport {
    Unix(PathBuf),
    Tls { addr: String, config: Arc<rustls::ClientConfig> },
}

/// An admin API client.
#[derive(Clone)]
pub struct AdminClient {
    transport: Transport,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.target())
    }
}

/// One HTTP/1.1 connection, reusable for many requests.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl AdminClient {
    /// A client of the local admin socket.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self { transport: Transport::Unix(path.into()) }
    }

    /// A client of the mTLS listener at `addr` (`host:port`), trusting `bundle_pem` and expecting the
    /// server's SPIFFE ID in `trust_domain`; presents `client` (certificate chain PEM, key PEM) if
    /// given.
    pub fn tls(
        addr: &str,
        trust_domain: &TrustDomain,
        bundle_pem: &str,
        client: Option<(&str, &str)>,
    ) -> Result<Self, ClientError> {
        let roots: Vec<Vec<u8>> = vouch_ca::pem::decode_all(bundle_pem)
            .into_iter()
            .filter(|(l, _)| l == "CERTIFICATE")
            .map(|(_, d)| d)
            .collect();
        if roots.is_empty() {
            return Err(ClientError::Tls(
                "the bundle has no CERTIFICATE; fetch it with `vouch bundle show --format pem`".into(),
            ));
        }
        let expected: SpiffeId = trust_domain
            .id_with_path("/vouch/server")
            .map_err(|e| ClientError::Tls(format!("server id: {e}")))?;
        let client_material = match client {
            Some((chain_pem, key_pem)) => {
                let chain: Vec<Vec<u8>> = vouch_ca::pem::decode_all(chain_pem)
                    .into_iter()
                    .filter(|(l, _)| l == "CERTIFICATE")
                    .map(|(_, d)| d)
                    .collect();
                let key = vouch_ca::pem::decode_one(key_pem, &["PRIVATE KEY"]).ok_or_else(|| {
                    ClientError::Tls("the client key must be a PKCS#8 `PRIVATE KEY` PEM".into())
                })?;
                if chain.is_empty() {
                    return Err(ClientError::Tls("the client certificate file has no CERTIFICATE".into()));
                }
                Some((chain, key))
            }
            None => None,
        };
        let config = client_config(SpiffeServerVerifier::new(&roots, expected), client_material)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        Ok(Self { transport: Transport::Tls { addr: addr.to_owned(), config: Arc::new(config) } })
    }

    fn target(&self) -> String {
        match &self.transport {
            Transport::Unix(p) => p.display().to_string(),
            Transport::Tls { addr, .. } => format!("https://{addr}"),
        }
    }

    /// Opens a connection.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        let err = |reason: String| ClientError::Connect { target: self.target(), reason };
        match &self.transport {
            Transport::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                    err(format!("{e} (is `vouch server run` running, and is this the right --socket?)"))
                })?;
                handshake(stream, "localhost".into()).await.map_err(err)
            }
            Transport::Tls { addr, config } => {
                let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| err(e.to_string()))?;
                // Requests are written whole; Nagle's algorithm could only delay them.
                let _ = stream.set_nodelay(true);
                let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).trim_matches(['[', ']']);
                // The name is only used for SNI; the server is verified by its SPIFFE ID.
                let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap_or_else(|_| {
                    rustls::pki_types::ServerName::try_from("localhost").expect("valid name")
                });
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| err(format!("TLS handshake failed: {e}")))?;
                handshake(tls, addr.clone()).await.map_err(err)
            }
        }
    }

    /// Sends one request on a fresh connection; returns status and body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Bytes), ClientError> {
        self.connect().await?.request(method, path, body).await
    }

    /// Sends one request and decodes a 2xx JSON answer; an error answer becomes [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let (status, bytes) = self.request(method, path, body).await?;
        decode(status, &bytes)
    }
}

/// Decodes a JSON answer, turning error bodies into [`ClientError::Api`].
pub fn decode<T: DeserializeOwned>(status: u16, bytes: &[u8]) -> Result<T, ClientError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol(e.to_string()));
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    Err(ClientError::Api {
        status,
        code: v["error"]["code"].as_str().unwrap_or("unknown").to_owned(),
        message: v["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| String::from_utf8_lossy(bytes).chars().take(200).collect()),
    })
}

async fn handshake<I>(io: I, host: String) -> Result<Connection, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Connection { sender, host })
}

/// The lines of a streaming answer (newline-delimited JSON).
pub struct LineStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
}

impl LineStream {
    /// The next complete line, without its newline; `None` when the stream ends.
    pub async fn next_line(&mut self) -> Option<Result<String, ClientError>> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(pos + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                return Some(
                    String::from_utf8(line)
                        .map_err(|_| ClientError::Protocol("stream line is not UTF-8".into())),
                );
            }
            // A line this long is not something the server sends; refuse to buffer without bound.
            if self.buf.len() > MAX_LINE_BYTES {
                return Some(Err(ClientError::Protocol("stream line too long".into())));
            }
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Err(e) => return Some(Err(ClientError::Protocol(e.to_string()))),
            }
        }
    }
}

/// Longest line accepted on a stream (a snapshot of many entries is one line).
pub const MAX_LINE_BYTES: usize = 256 * 1024 * 1024;

impl Connection {
    /// Sends a request whose answer is a stream of lines; returns the status and the line reader.
    pub async fn stream(&mut self, method: &str, path: &str) -> Result<(u16, LineStream), ClientError> {
        let proto = |e: String| ClientError::Protocol(e);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .body(Full::new(Bytes::new()))
            .map_err(|e| proto(e.to_string()))?;
        self.sender.ready().await.map_err(|e| proto(e.to_string()))?;
        let resp = self.sender.send_request(req).await.map_err(|e| proto(e.to_string()))?;
        Ok((resp.status().as_u16(), LineStream { body: resp.into_body(), buf: Vec::new() }))
    }

    /// Sends one request on this connection.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Bytes), ClientError> {
        let proto = |e: String| ClientError::Protocol(e);
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", &self.host);
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(serde_json::to_vec(v).map_err(|e| proto(e.to_string()))?))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| proto(e.to_string()))?;
        self.sender.ready().await.map_err(|e| proto(e.to_string()))?;
        let resp = self.sender.send_request(req).await.map_err(|e| proto(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(|e| proto(e.to_string()))?.to_bytes();
        Ok((status, bytes))
    }
}
