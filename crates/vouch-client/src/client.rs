//! A client of the admin API over the Unix socket or mTLS, used by the CLI, tests and benchmarks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use vouch_core::{SpiffeId, TrustDomain};

use vouch_tls::{client_config, SpiffeServerVerifier};

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
    /// The server refused because the caller is over a rate limit (HTTP 429 `rate_limited`): try
    /// again after `retry_after` (the answer's `Retry-After`), not at once.
    #[error("{message} (HTTP 429, rate_limited; retry in {}s)", retry_after.as_secs())]
    RateLimited {
        /// How long to wait before trying again.
        retry_after: Duration,
        /// Error message from the body.
        message: String,
    },
    /// The answer was not what the API promises.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Local TLS material could not be used.
    #[error("{0}")]
    Tls(String),
    /// The server accepted the connection but did not answer in time.
    #[error("the vouch server at {target} did not answer within {}s; is it overloaded or stuck? (its log may say why)", after.as_secs())]
    Timeout {
        /// Socket path or address.
        target: String,
        /// How long the client waited.
        after: Duration,
    },
}

impl ClientError {
    /// How long the server asked the caller to wait before trying again, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// The wait assumed when a 429 `rate_limited` answer carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// One answer: its status, its `Retry-After` (whole seconds) if present, and its body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The `Retry-After` header in its seconds form, if present.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// Decodes a 2xx JSON answer; an error answer becomes a [`ClientError`].
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        if (200..300).contains(&self.status) {
            return serde_json::from_slice(&self.body).map_err(|e| ClientError::Protocol(e.to_string()));
        }
        Err(self.error())
    }

    /// The answer as an error.
    pub fn error(&self) -> ClientError {
        api_error_after(self.status, self.retry_after, &self.body)
    }
}

fn retry_after_of(headers: &hyper::HeaderMap) -> Option<Duration> {
    let text = headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// How long a call may take, connecting included, unless [`AdminClient::with_timeout`] says
/// otherwise. Admin calls are small; a server that takes this long is stuck, and a caller (a person at
/// the CLI, a script, a test) is better served by an error than by waiting forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
enum Transport {
    Unix(PathBuf),
    Tls {
        addr: String,
        /// The one address to connect to (a replica `addr` resolved to); None: any `addr` names.
        connect_to: Option<std::net::SocketAddr>,
        config: Arc<rustls::ClientConfig>,
    },
}

/// An admin API client.
#[derive(Clone)]
pub struct AdminClient {
    transport: Transport,
    timeout: Duration,
    /// A limit on connecting alone (TCP and TLS), within `timeout`.
    connect_timeout: Option<Duration>,
    /// Connections kept open between calls, shared by the clones of this client (and by the
    /// clones [`AdminClient::connecting_to`] makes, keyed by the address they connect to).
    idle: Arc<IdleConnections>,
}

/// How long an idle connection is kept for the next call. The server closes a connection on which
/// no request starts within its header-read timeout (10 s); well below that, a reused connection is
/// almost never one the server is closing at that moment, and when it is, the call is sent again
/// on a new connection (see [`AdminClient::request_answer`]).
const IDLE_FOR: Duration = Duration::from_secs(4);

/// Most idle connections kept per address: as many calls as an agent makes at once in steady
/// state (signing, minting, secret reads); more concurrent calls open connections of their own,
/// which are closed after use when this many are already kept.
const MAX_IDLE_PER_ADDRESS: usize = 8;

/// How long data sent on a connection may stay unacknowledged by the peer's host before the kernel
/// ends the connection (TCP_USER_TIMEOUT).
const UNACKNOWLEDGED_FOR: Duration = Duration::from_secs(10);

/// Why: every call on a fresh connection paid a TCP connect and a TLS 1.3 handshake with client
/// certificate (two signatures and a verification on each side), which was most of the cost of an
/// agent's small calls: secret reads through the agent ran at 0.66x of OpenBao's KV reads.
struct IdleConnections {
    by_address: std::sync::Mutex<Vec<(Option<std::net::SocketAddr>, tokio::time::Instant, Connection)>>,
    /// [`IDLE_FOR`], shorter in tests.
    idle_for: Duration,
}

impl Default for IdleConnections {
    fn default() -> Self {
        Self { by_address: Default::default(), idle_for: IDLE_FOR }
    }
}

impl IdleConnections {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(Option<std::net::SocketAddr>, tokio::time::Instant, Connection)>>
    {
        self.by_address.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection to `to` that has not been idle too long.
    fn take(&self, to: Option<std::net::SocketAddr>) -> Option<Connection> {
        let now = tokio::time::Instant::now();
        let mut idle = self.lock();
        idle.retain(|(_, since, conn)| {
            now.saturating_duration_since(*since) < self.idle_for && conn.is_open()
        });
        let i = idle.iter().rposition(|(addr, _, _)| *addr == to)?;
        Some(idle.swap_remove(i).2)
    }

    /// Keeps `conn` for the next call, unless it is closing or enough are kept already.
    fn put(&self, to: Option<std::net::SocketAddr>, conn: Connection) {
        if !conn.is_open() {
            return;
        }
        let mut idle = self.lock();
        if idle.iter().filter(|(addr, _, _)| *addr == to).count() < MAX_IDLE_PER_ADDRESS {
            idle.push((to, tokio::time::Instant::now(), conn));
        }
    }
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
    /// Becomes `Some(why)` when the connection task ends.
    ended: tokio::sync::watch::Receiver<Option<String>>,
}

impl AdminClient {
    /// A client of the local admin socket.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self {
            transport: Transport::Unix(path.into()),
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: None,
            idle: Arc::default(),
        }
    }

    /// The same client with another limit on each call (connecting, sending and reading the whole
    /// answer) and on opening a connection.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client with a shorter limit on connecting alone (TCP connect and TLS handshake):
    /// a caller that can try another replica should not spend its whole call timeout on a host
    /// that does not answer.
    pub fn with_connect_timeout(mut self, limit: Duration) -> Self {
        self.connect_timeout = Some(limit);
        self
    }

    /// The same mTLS client, connecting to `addr` only (one of the addresses its host name
    /// resolves to), still naming the host in TLS and HTTP. A Unix socket client is unchanged.
    pub fn connecting_to(mut self, addr: std::net::SocketAddr) -> Self {
        if let Transport::Tls { connect_to, .. } = &mut self.transport {
            *connect_to = Some(addr);
        }
        self
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
        Ok(Self {
            transport: Transport::Tls { addr: addr.to_owned(), connect_to: None, config: Arc::new(config) },
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: None,
            idle: Arc::default(),
        })
    }

    fn target(&self) -> String {
        match &self.transport {
            Transport::Unix(p) => p.display().to_string(),
            Transport::Tls { addr, connect_to: Some(ip), .. } if ip.to_string() != *addr => {
                format!("https://{addr} ({ip})")
            }
            Transport::Tls { addr, .. } => format!("https://{addr}"),
        }
    }

    /// The limit on each call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn timed_out(&self) -> ClientError {
        ClientError::Timeout { target: self.target(), after: self.timeout }
    }

    /// Opens a connection (connect, TLS handshake), within the client's timeout. Requests on the
    /// connection are not limited: it may carry a long-lived stream.
    pub async fn connect(&self) -> Result<Connection, ClientError> {
        tokio::time::timeout(self.timeout, self.connect_unbounded()).await.map_err(|_| self.timed_out())?
    }

    pub(crate) async fn connect_unbounded(&self) -> Result<Connection, ClientError> {
        let err = |reason: String| ClientError::Connect { target: self.target(), reason };
        match &self.transport {
            Transport::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
                    err(format!("{e} (is `vouch server run` running, and is this the right --socket?)"))
                })?;
                handshake(stream, "localhost".into()).await.map_err(|e| err(e.to_string()))
            }
            Transport::Tls { addr, connect_to, config } => {
                let tls = async {
                    let stream = match connect_to {
                        Some(ip) => tokio::net::TcpStream::connect(ip).await,
                        None => tokio::net::TcpStream::connect(addr).await,
                    }
                    .map_err(|e| err(e.to_string()))?;
                    // Requests are written whole; Nagle's algorithm could only delay them.
                    let _ = stream.set_nodelay(true);
                    // A request on a kept connection to a host that went away (crashed, cut off)
                    // would wait for the whole call timeout, where a new connection gives up after
                    // the connect timeout: the kernel ends the connection instead when what was
                    // sent stays unacknowledged this long, and the call goes on elsewhere.
                    let _ = socket2::SockRef::from(&stream).set_tcp_user_timeout(Some(UNACKNOWLEDGED_FOR));
                    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).trim_matches(['[', ']']);
                    // The name is only used for SNI; the server is verified by its SPIFFE ID.
                    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap_or(
                        rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                    );
                    let connector = tokio_rustls::TlsConnector::from(config.clone());
                    connector
                        .connect(name, stream)
                        .await
                        .map_err(|e| err(format!("TLS handshake failed: {e}")))
                };
                let tls = match self.connect_timeout {
                    Some(limit) => tokio::time::timeout(limit, tls).await.map_err(|_| {
                        err(format!("no connection within {} ms (is the host up?)", limit.as_millis()))
                    })??,
                    None => tls.await?,
                };
                handshake(tls, addr.clone()).await.map_err(|e| err(e.to_string()))
            }
        }
    }

    /// Sends one request on a fresh connection; returns status and body. The whole exchange must
    /// finish within the client's timeout.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Bytes), ClientError> {
        self.request_bytes(method, path, body.map(json_bytes).transpose()?).await
    }

    /// Sends one request with an already serialised JSON body on a fresh connection.
    pub(crate) async fn request_bytes(
        &self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), ClientError> {
        self.request_answer(method, path, body).await.map(|a| (a.status, a.body))
    }

    /// The address a connection of this client goes to, as the idle connections are keyed.
    fn destination(&self) -> Option<std::net::SocketAddr> {
        match &self.transport {
            Transport::Unix(_) => None,
            Transport::Tls { connect_to, .. } => *connect_to,
        }
    }

    /// Sends one request, on a connection kept from an earlier call when there is one, else on a
    /// new one; the whole answer, headers that matter included. The connection is kept for the next
    /// call when the answer came whole.
    ///
    /// A kept connection can be closed by the server just as the request goes out (its idle
    /// timeout); that failure says nothing about the server, so the request is sent once more on a
    /// new connection. A request is only ever repeated after such a transport failure, which the
    /// agent's failover treats the same way (it tries the next replica).
    pub(crate) async fn request_answer(
        &self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, ClientError> {
        let to = self.destination();
        let exchange = async {
            if let Some(mut conn) = self.idle.take(to) {
                match conn.send_answer(method, path, body.clone()).await {
                    Ok(answer) => {
                        self.idle.put(to, conn);
                        return Ok(answer);
                    }
                    Err(ClientError::Protocol(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            let mut conn = self.connect_unbounded().await?;
            let answer = conn.send_answer(method, path, body).await?;
            self.idle.put(to, conn);
            Ok(answer)
        };
        tokio::time::timeout(self.timeout, exchange).await.map_err(|_| self.timed_out())?
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
    Err(api_error(status, bytes))
}

/// An error answer as a [`ClientError::Api`]; a body that is not the API's error body is quoted
/// (shortened), since it is what the person has to go on.
pub fn api_error(status: u16, bytes: &[u8]) -> ClientError {
    api_error_after(status, None, bytes)
}

/// [`api_error`] with the answer's `Retry-After`: a 429 `rate_limited` becomes
/// [`ClientError::RateLimited`] (waiting [`DEFAULT_RETRY_AFTER`] if the header is missing).
pub fn api_error_after(status: u16, retry_after: Option<Duration>, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<vouch_api::ErrorBody>(bytes) {
        Ok(body) if status == 429 && body.error.code == vouch_api::ErrorCode::RateLimited.as_str() => {
            ClientError::RateLimited {
                retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
                message: body.error.message,
            }
        }
        Ok(body) => ClientError::Api { status, code: body.error.code, message: body.error.message },
        Err(_) => ClientError::Api {
            status,
            code: "unknown".into(),
            message: String::from_utf8_lossy(bytes).chars().take(200).collect(),
        },
    }
}

/// A JSON body.
pub(crate) fn json_bytes<B: serde::Serialize + ?Sized>(body: &B) -> Result<Bytes, ClientError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ClientError::Protocol(format!("cannot encode the request: {e}")))
}

async fn handshake<I>(io: I, host: String) -> Result<Connection, hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let (ended_tx, ended) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let why = match conn.await {
            // Also what a refused TLS 1.3 client certificate can look like when the connection
            // reset overtook the server's alert.
            Ok(()) => "the server closed the connection without answering".to_owned(),
            Err(e) => closed_because(&e),
        };
        let _ = ended_tx.send(Some(why));
    });
    Ok(Connection { sender, host, ended })
}

/// Why a connection ended, in words for the person reading the error.
fn closed_because(e: &hyper::Error) -> String {
    let source = std::error::Error::source(e);
    let detail = source.map_or_else(|| e.to_string(), |s| format!("{e}: {s}"));
    // With TLS 1.3 a server that refuses the client certificate can only say so after the client
    // has finished its side of the handshake, so the refusal arrives here, as an alert.
    let alert = source
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| matches!(tls, rustls::Error::AlertReceived(_)));
    if alert {
        format!("the server refused the connection ({detail}); is the client certificate an SVID of this trust domain, still valid?")
    } else {
        format!("the connection failed: {detail}")
    }
}

/// Runs `exchange` (a request on the connection) until it finishes, or fails it when the
/// connection ends first; a failure carries the connection's own reason when it has one.
///
/// Why: hyper's HTTP/1 client can lose a request that is queued while its connection task fails
/// (seen with TLS 1.3 client certificates the server refuses: the task ends with the alert and the
/// response future never resolves), and when it does report the failure it says only "channel
/// closed" or "operation was canceled". The connection task knows what happened.
async fn until_connection_ends<T>(
    ended: &mut tokio::sync::watch::Receiver<Option<String>>,
    exchange: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::pin!(exchange);
    let outcome = tokio::select! {
        biased;
        result = &mut exchange => result,
        _ = reason(ended) => {
            // An answer the connection delivered just before it ended is still taken.
            tokio::time::timeout(ANSWER_AFTER_CLOSE, &mut exchange)
                .await
                .unwrap_or_else(|_| Err(ClientError::Protocol("the connection ended before the answer".into())))
        }
    };
    match outcome {
        Err(ClientError::Protocol(what)) => {
            let why = tokio::time::timeout(ANSWER_AFTER_CLOSE, reason(ended)).await.ok().flatten();
            // Both: why the connection ended, and what the exchange was doing when it did.
            Err(ClientError::Protocol(match why {
                Some(why) if why != what => format!("{why} ({what})"),
                Some(why) => why,
                None => what,
            }))
        }
        other => other,
    }
}

/// Why the connection ended, once it has (`None` if its task vanished without saying).
async fn reason(ended: &mut tokio::sync::watch::Receiver<Option<String>>) -> Option<String> {
    // The guard `wait_for` returns is dropped here, before anything else awaits.
    ended.wait_for(Option::is_some).await.ok().and_then(|why| why.clone())
}

/// How long an answer may still arrive after its connection ended (it is then already in memory).
const ANSWER_AFTER_CLOSE: Duration = Duration::from_millis(200);

/// The lines of a streaming answer (newline-delimited JSON).
pub struct LineStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    /// Longest wait for more of the body (None: no limit).
    pub(crate) idle: Option<Duration>,
    /// The answer's `Retry-After`, if present.
    pub(crate) retry_after: Option<Duration>,
}

impl LineStream {
    /// The next line, without its newline (the last one may lack it); `None` when the stream ends.
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
            // The limit is on silence, not on a whole line: a large snapshot line that keeps
            // arriving is not cut off however long it takes.
            let frame = match self.idle {
                Some(limit) => match tokio::time::timeout(limit, self.body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => {
                        return Some(Err(ClientError::Protocol(format!(
                            "nothing received on the stream for {} s",
                            limit.as_secs_f32()
                        ))))
                    }
                },
                None => self.body.frame().await,
            };
            let Some(frame) = frame else {
                // The end: a last line without its newline is still a line (an error body is
                // one); dropping it left agents logging an empty reason.
                if self.buf.is_empty() {
                    return None;
                }
                let line = std::mem::take(&mut self.buf);
                return Some(
                    String::from_utf8(line)
                        .map_err(|_| ClientError::Protocol("stream line is not UTF-8".into())),
                );
            };
            match frame {
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
    /// Whether the connection can still carry a request (its task has not ended, and hyper has not
    /// marked it closed, as it does after an answer with `connection: close`).
    fn is_open(&self) -> bool {
        !self.sender.is_closed() && self.ended.borrow().is_none()
    }

    /// Sends a request whose answer is a stream of lines; returns the status and the line reader.
    pub async fn stream(&mut self, method: &str, path: &str) -> Result<(u16, LineStream), ClientError> {
        let proto = |e: String| ClientError::Protocol(e);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .body(Full::new(Bytes::new()))
            .map_err(|e| proto(e.to_string()))?;
        let sender = &mut self.sender;
        let resp = until_connection_ends(&mut self.ended, async {
            sender.ready().await.map_err(|e| proto(e.to_string()))?;
            sender.send_request(req).await.map_err(|e| proto(e.to_string()))
        })
        .await?;
        let retry_after = retry_after_of(resp.headers());
        Ok((
            resp.status().as_u16(),
            LineStream { body: resp.into_body(), buf: Vec::new(), idle: None, retry_after },
        ))
    }

    /// Sends one request on this connection.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, Bytes), ClientError> {
        self.send(method, path, body.map(json_bytes).transpose()?).await
    }

    /// Sends one request with an already serialised JSON body on this connection.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes), ClientError> {
        self.send_answer(method, path, body).await.map(|a| (a.status, a.body))
    }

    /// [`Connection::send`], answering the whole [`Answer`] (with its `Retry-After`).
    pub async fn send_answer(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Answer, ClientError> {
        let proto = |e: String| ClientError::Protocol(e);
        let mut req = hyper::Request::builder().method(method).uri(path).header("host", &self.host);
        let body = match body {
            Some(bytes) => {
                req = req.header("content-type", "application/json");
                Full::new(bytes)
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body).map_err(|e| proto(e.to_string()))?;
        let sender = &mut self.sender;
        // hyper's errors say what failed ("connection error"); their source says why.
        let detailed = |e: hyper::Error| match std::error::Error::source(&e) {
            Some(source) => proto(format!("{e}: {source}")),
            None => proto(e.to_string()),
        };
        until_connection_ends(&mut self.ended, async {
            sender.ready().await.map_err(detailed)?;
            let resp = sender.send_request(req).await.map_err(detailed)?;
            let status = resp.status().as_u16();
            let retry_after = retry_after_of(resp.headers());
            let body = resp.into_body().collect().await.map_err(|e| proto(e.to_string()))?.to_bytes();
            Ok(Answer { status, retry_after, body })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// A Unix socket server that hands each accepted connection to `serve`.
    fn server<F, Fut>(dir: &tempfile::TempDir, serve: F) -> PathBuf
    where
        F: Fn(tokio::net::UnixStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let path = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        path
    }

    /// A host that accepts TCP connections and never says a word (a stopped or wedged replica).
    async fn mute_tcp() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        addr
    }

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[tokio::test]
    async fn the_connect_timeout_gives_up_on_a_mute_host_before_the_call_timeout() {
        let addr = mute_tcp().await;
        let td = TrustDomain::new("example.org").unwrap();
        // Named by a host that does not exist: `connecting_to` decides where it connects.
        let client = AdminClient::tls("replica.invalid:8443", &td, &ca_pem(), None)
            .unwrap()
            .with_connect_timeout(Duration::from_millis(300))
            .connecting_to(addr);
        let started = std::time::Instant::now();
        match client.connect().await {
            Err(ClientError::Connect { target, reason }) => {
                assert_eq!(target, format!("https://replica.invalid:8443 ({addr})"));
                assert!(reason.contains("no connection within 300 ms"), "{reason}");
            }
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
        assert!(started.elapsed() < Duration::from_secs(5), "not the 30 s call timeout");
    }

    /// What `call` gets from a server that accepts connections and never answers, with a client
    /// that allows 300 ms: it must give up that soon, not hang.
    async fn against_a_silent_server<T, F, Fut>(call: F) -> Result<T, ClientError>
    where
        F: FnOnce(AdminClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = server(&dir, |stream| async move {
            // Accepts and holds the connection without ever answering.
            tokio::time::sleep(Duration::from_secs(60)).await;
            drop(stream);
        });
        let client = AdminClient::unix(&path).with_timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let got = call(client).await;
        assert!(started.elapsed() < Duration::from_secs(5), "gave up in {:?}", started.elapsed());
        got
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout_not_a_hang() {
        let got = against_a_silent_server(|client| async move {
            client.call::<serde_json::Value>("GET", "/v1/entries", None).await
        })
        .await;
        match got {
            Err(e @ ClientError::Timeout { .. }) => {
                assert!(e.to_string().contains("did not answer within"), "{e}");
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stream_that_falls_silent_is_an_error_after_its_idle_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = server(&dir, |mut stream| async move {
            use tokio::io::AsyncWriteExt as _;
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            // A line, then half of one, then silence with the connection open.
            let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
            let body = "10\r\n{\"type\":\"ping\"}\n\r\n3\r\n{\"t\r\n";
            let _ = stream.write_all(format!("{head}{body}").as_bytes()).await;
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let client = AdminClient::unix(&path).with_timeout(Duration::from_secs(5));
        let mut lines = client.sync().await.unwrap().with_idle_limit(Duration::from_millis(300));
        assert!(matches!(lines.next().await, Some(Ok(vouch_api::agent::SyncLine::Ping))));
        let started = std::time::Instant::now();
        match lines.next().await {
            Some(Err(ClientError::Protocol(m))) => assert!(m.contains("nothing received"), "{m}"),
            other => panic!("expected the silence to be an error, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn a_sync_stream_that_never_opens_is_a_timeout_not_a_hang() {
        let got = against_a_silent_server(|client| async move { client.sync().await }).await;
        assert!(matches!(got, Err(ClientError::Timeout { .. })));
    }

    /// A server that answers every request with `status`, `headers` and `body`, then closes.
    fn answering(
        dir: &tempfile::TempDir,
        status: &'static str,
        headers: &'static str,
        body: &'static str,
    ) -> PathBuf {
        use tokio::io::AsyncWriteExt as _;
        server(dir, move |mut stream| async move {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        })
    }

    #[tokio::test]
    async fn a_rate_limited_answer_is_a_typed_error_with_its_retry_after() {
        let body = r#"{"error":{"code":"rate_limited","message":"slow down"}}"#;
        let dir = tempfile::tempdir().unwrap();
        let client = AdminClient::unix(answering(&dir, "429 Too Many Requests", "retry-after: 3\r\n", body));
        let err = client.agents().await.unwrap_err();
        assert!(
            matches!(&err, ClientError::RateLimited { message, .. } if message == "slow down"),
            "{err:?}"
        );
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert!(err.to_string().contains("retry in 3s"), "{err}");
        // The sync stream's refusal too.
        assert_eq!(client.sync().await.err().and_then(|e| e.retry_after()), Some(Duration::from_secs(3)));
        // Without the header, a default wait; other 429s (not a rate limit) stay plain API errors.
        let dir2 = tempfile::tempdir().unwrap();
        let client = AdminClient::unix(answering(&dir2, "429 Too Many Requests", "", body));
        assert_eq!(client.agents().await.unwrap_err().retry_after(), Some(DEFAULT_RETRY_AFTER));
        let other = r#"{"error":{"code":"too_many_requests","message":"busy"}}"#;
        let dir3 = tempfile::tempdir().unwrap();
        let client =
            AdminClient::unix(answering(&dir3, "429 Too Many Requests", "retry-after: 3\r\n", other));
        let err = client.agents().await.unwrap_err();
        assert!(matches!(err, ClientError::Api { status: 429, .. }), "{err:?}");
        assert_eq!(err.retry_after(), None);
    }

    /// A server that answers `{}` to each request on a connection, keeping it open, until it has
    /// answered `answers_per_connection`; the next request that arrives on it is read and left
    /// without an answer, and the connection closed (as a server's idle timeout can close a
    /// connection just as a request goes out). Counts the connections it accepted.
    fn keeping_alive(
        dir: &tempfile::TempDir,
        answers_per_connection: usize,
    ) -> (PathBuf, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::AsyncWriteExt as _;
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let path = server(dir, move |mut stream| {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                let mut answered = 0;
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    // Requests here are bodiless GETs: one ends at its blank line.
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        if answered == answers_per_connection {
                            return;
                        }
                        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if stream.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                        answered += 1;
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                }
            }
        });
        (path, accepted)
    }

    #[tokio::test]
    async fn calls_one_after_another_share_one_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (path, accepted) = keeping_alive(&dir, usize::MAX);
        let client = AdminClient::unix(&path).with_timeout(Duration::from_secs(10));
        for _ in 0..5 {
            client.call::<serde_json::Value>("GET", "/v1/entries", None).await.unwrap();
        }
        // Clones share the kept connections.
        client.clone().call::<serde_json::Value>("GET", "/v1/entries", None).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closes_under_a_request_is_replaced_and_the_call_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        // Each connection answers once; the second request on it is dropped with the connection.
        let (path, accepted) = keeping_alive(&dir, 1);
        let client = AdminClient::unix(&path).with_timeout(Duration::from_secs(10));
        for _ in 0..3 {
            client.call::<serde_json::Value>("GET", "/v1/entries", None).await.unwrap();
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_idle_longer_than_the_servers_timeout_allows_is_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, accepted) = keeping_alive(&dir, usize::MAX);
        let mut client = AdminClient::unix(&path).with_timeout(Duration::from_secs(10));
        let idle_for = Duration::from_millis(100);
        client.idle = Arc::new(IdleConnections { idle_for, ..Default::default() });
        client.call::<serde_json::Value>("GET", "/v1/entries", None).await.unwrap();
        tokio::time::sleep(idle_for).await;
        client.call::<serde_json::Value>("GET", "/v1/entries", None).await.unwrap();
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_closed_under_a_request_is_an_error_that_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = server(&dir, |mut stream| async move {
            // Reads the request, then closes without a word.
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).await;
            drop(stream);
        });
        let client = AdminClient::unix(&path).with_timeout(Duration::from_secs(20));
        for _ in 0..50 {
            match client.call::<serde_json::Value>("GET", "/v1/entries", None).await {
                Err(ClientError::Protocol(message)) => {
                    assert!(message.contains("closed"), "{message}")
                }
                other => panic!("expected the close to be reported, got {other:?}"),
            }
        }
    }
}
