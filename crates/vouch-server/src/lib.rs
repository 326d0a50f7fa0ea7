//! The vouch server: the trust domain's CA, the registry of entries, join tokens, and the HTTP/JSON
//! admin API on a local Unix socket and on TCP with mTLS.
//!
//! [`Server::start`] does everything `vouch server run` does and returns a handle, so tests run the
//! real server in process as well as through the binary.

// Private modules behind a small facade (the re-exports below), so the compiler finds dead code.
mod agent_api;
mod api;
pub mod audit;
mod auth;
mod bundle_endpoint;
pub mod config;
pub mod db_creds;
mod error;
mod extract;
mod federation;
mod forensics;
mod groups;
mod issuer_keys;
mod limits;
mod metrics;
mod namespaces;
pub mod node_attest;
mod oidc;
mod policy;
mod public_listener;
mod replicas;
pub mod reserved;
mod routes;
mod secret_watch;
pub mod secrets;
mod state;
mod sync_hub;
pub mod token_exchange;

use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt as _;
use vouch_ca::Kek;
use vouch_store::{PostgresStore, SqliteStore, Store};

pub use crate::agent_api::{MAX_CHALLENGES as X509POP_MAX_CHALLENGES, X509POP_CHALLENGE_TTL};
pub use crate::auth::Caller;
pub use crate::bundle_endpoint::router as bundle_endpoint_router;
pub use crate::config::{Config, StoreConfig};
pub use crate::error::ApiError;
pub use crate::issuer_keys::{fetch as fetch_issuer_keys, MIN_REFETCH as PSAT_MIN_REFETCH};
pub use crate::limits::PeerAddr;
pub use crate::oidc::{router as oidc_router, DISCOVERY_PATH as OIDC_DISCOVERY_PATH};
pub use crate::policy::{MAX_POLICIES, MAX_POLICY_BODY, POLICY_CACHE_TTL};
pub use crate::state::{AppState, Clock, Event, SystemClock, FOLLOW_INTERVAL};
pub use crate::sync_hub::{Received, Subscription, SyncHub, QUEUE_BOUND as SYNC_QUEUE_BOUND};
pub use crate::token_exchange::IssuerKeySource;

/// The OpenAPI description of the admin API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Why the server could not start (or a background step failed).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration problem.
    #[error("{0}")]
    Config(String),
    /// I/O problem, with the path or address involved.
    #[error("{0}")]
    Io(String),
    /// Store problem.
    #[error("store: {0}")]
    Store(String),
    /// Key or certificate problem.
    #[error("{0}")]
    Ca(#[from] vouch_ca::CaError),
    /// TLS set-up problem.
    #[error("tls: {0}")]
    Tls(String),
    /// The key-encryption key file exists but the database holds no authority: the database was
    /// deleted, emptied or replaced. Starting would create a new root CA that no agent or workload
    /// trusts, so the operator must choose: restore the database, or start a new trust domain on
    /// purpose by moving the key file away.
    #[error(
        "the key-encryption key {} exists but the database {db} holds no trust domain (it was deleted, emptied or replaced); \
         starting would create a new root CA that no agent or workload trusts. Restore the database from its backup \
         (with its -wal file), or, to start a new trust domain on purpose, move {} away and start again (a new key is \
         created; see docs/operations.md, \"Files and backup\")",
        kek.display(), kek.display()
    )]
    KekWithoutDatabase {
        /// The key-encryption key file.
        kek: PathBuf,
        /// The database: its file, or its URL without the password.
        db: String,
    },
}

impl From<vouch_store::StoreError> for StartError {
    fn from(e: vouch_store::StoreError) -> Self {
        Self::Store(e.to_string())
    }
}

/// The API router with authentication and metrics layered on.
pub fn app(state: Arc<AppState>) -> Router {
    routes::router(state.clone()).layer(axum::middleware::from_fn_with_state(state, auth::count_statuses))
}

/// The effective uid of this process (the owner of `/proc/self`).
pub fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX)
}

/// Loads the key-encryption key: from `env_kek` (base64) if given, else from the configured file;
/// creates the file on first start. Refuses to create a new one when keys are already stored, since
/// they could never be opened again; and refuses an existing file when nothing is stored, since the
/// file was made with a database that is gone (a first start has no file). A key from `env_kek`
/// cannot tell a first start from a lost database, so it is used either way.
pub fn load_or_create_kek(
    config: &Config,
    env_kek: Option<&str>,
    have_state: bool,
) -> Result<Kek, StartError> {
    if let Some(text) = env_kek {
        return Kek::from_base64(text).map_err(|e| StartError::Config(format!("VOUCH_KEK: {e}")));
    }
    let path = &config.kek_file;
    match std::fs::read_to_string(path) {
        Ok(_) if !have_state => {
            Err(StartError::KekWithoutDatabase { kek: path.clone(), db: config.store.describe() })
        }
        Ok(text) => {
            let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o077).unwrap_or(0);
            if mode != 0 {
                tracing::warn!(path = %path.display(), "the key-encryption key file is readable by others; chmod 600 it");
            }
            Kek::from_base64(&text).map_err(|e| StartError::Config(format!("{}: {e}", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if have_state {
                return Err(StartError::Config(format!(
                    "the key-encryption key {} is missing but the database holds sealed keys: restore the file or set VOUCH_KEK",
                    path.display()
                )));
            }
            let (kek, text) = Kek::generate()?;
            vouch_fs::write_new_private(path, text.as_bytes()).map_err(|e| StartError::Io(e.to_string()))?;
            tracing::info!(path = %path.display(), "created a new key-encryption key; back it up with the database");
            Ok(kek)
        }
        Err(e) => Err(StartError::Io(format!("cannot read {}: {e}", path.display()))),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StartError> {
    vouch_fs::create_dir(dir, 0o700).map_err(|e| StartError::Io(e.to_string()))
}

/// A running server.
pub struct Server {
    /// Shared state (for in-process tests and benchmarks).
    pub state: Arc<AppState>,
    /// The admin socket path.
    pub admin_socket: PathBuf,
    /// The bound mTLS address, if the listener is on.
    pub tcp_addr: Option<SocketAddr>,
    /// The bound address of the OIDC issuer listener, if configured.
    pub oidc_addr: Option<SocketAddr>,
    /// The bound address of the SPIFFE bundle endpoint, if configured.
    pub bundle_endpoint_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("admin_socket", &self.admin_socket)
            .field("tcp_addr", &self.tcp_addr)
            .field("oidc_addr", &self.oidc_addr)
            .field("bundle_endpoint_addr", &self.bundle_endpoint_addr)
            .finish()
    }
}

impl Server {
    /// Starts the server: data directory, KEK, store, authority, listeners and the rotation loop.
    /// `env_kek` is the `VOUCH_KEK` value, if set.
    pub async fn start(
        config: Config,
        clock: Arc<dyn Clock>,
        env_kek: Option<&str>,
    ) -> Result<Self, StartError> {
        create_private_dir(&config.data_dir)?;
        let store: Arc<dyn Store> = match &config.store {
            StoreConfig::Sqlite { path, synchronous } => {
                // Checked before opening, which would create an empty database and so change the
                // data directory of a start that is then refused (the check after opening covers
                // emptied files).
                if env_kek.is_none() && !path.exists() && config.kek_file.exists() {
                    return Err(StartError::KekWithoutDatabase {
                        kek: config.kek_file.clone(),
                        db: path.display().to_string(),
                    });
                }
                Arc::new(SqliteStore::open_with(path, *synchronous)?)
            }
            StoreConfig::Postgres { url, pool_size } => {
                Arc::new(PostgresStore::connect_with(url, *pool_size).await?)
            }
        };
        // A replica listens for the others' changes before it reads anything or serves anyone, so
        // that no change can fall between what it read and what it hears.
        let changes = match store.changes() {
            Some(changes) => Some(replicas::listening(changes).await?),
            None => None,
        };
        let have_state = store.load_authority().await?.is_some();
        let kek = load_or_create_kek(&config, env_kek, have_state)?;
        let state = AppState::open(config.clone(), store, kek, clock, own_uid()).await?;
        let app = app(state.clone());
        let (shutdown, rx) = watch::channel(false);
        let mut tasks = Vec::new();
        // Four per CPU: a thread waits on its own connections' sockets, so with more runnable threads
        // than CPUs the kernel can switch straight to the one whose request arrived, instead of a
        // request waiting behind another connection's on a busy thread (one per CPU measured 25.6k
        // issuances/s over mTLS on 2 cores, four per CPU 32k; see docs/benchmarks.md).
        let threads = vouch_rt::threads_per_cpu(4, 64);
        let conns = Arc::new(
            vouch_rt::ConnectionThreads::start("vouch-conn", threads)
                .map_err(|e| StartError::Io(format!("cannot start connection threads: {e}")))?,
        );

        let unix = bind_admin_socket(&config.admin_socket).await?;
        tasks.push(("admin socket", tokio::spawn(serve_unix(unix, app.clone(), conns.clone(), rx.clone()))));

        let mut tcp_addr = None;
        if let Some(addr) = config.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| StartError::Io(format!("cannot listen on {addr}: {e}")))?;
            let bound = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
            let tls = vouch_tls::server_config(state.server_cert.clone(), state.client_verifier.clone())
                .map_err(|e| StartError::Tls(e.to_string()))?;
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
            tasks.push((
                "mTLS listener",
                tokio::spawn(serve_tls(
                    state.clone(),
                    listener,
                    acceptor,
                    app.clone(),
                    conns.clone(),
                    rx.clone(),
                )),
            ));
            // Written so scripts and tests can find a port chosen with `:0`.
            let addr_file = config.data_dir.join("server.addr");
            std::fs::write(&addr_file, format!("{bound}\n"))
                .map_err(|e| StartError::Io(format!("cannot write {}: {e}", addr_file.display())))?;
            tcp_addr = Some(bound);
        }
        let mut oidc_addr = None;
        if let (Some(oidc), Some(router)) = (&config.oidc, oidc::router(state.clone())) {
            // The certificate is read before binding, so a bad file stops the start cleanly.
            let tls = match &oidc.tls {
                Some((cert, key)) => {
                    Some(public_listener::tls_acceptor("oidc", cert, key).map_err(StartError::Tls)?)
                }
                None => None,
            };
            let listener = TcpListener::bind(oidc.listen).await.map_err(|e| {
                StartError::Io(format!("cannot listen on {} (oidc.listen): {e}", oidc.listen))
            })?;
            let bound = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
            tracing::info!(listen = %bound, issuer = %oidc.issuer, https = tls.is_some(), "OIDC issuer listener ready");
            tasks.push((
                "OIDC listener",
                tokio::spawn(public_listener::serve("OIDC", listener, tls, router, rx.clone())),
            ));
            oidc_addr = Some(bound);
        }
        let mut bundle_endpoint_addr = None;
        if let Some(endpoint) = &config.federation.bundle_endpoint {
            let tls = match &endpoint.web_tls {
                Some((cert, key)) => public_listener::tls_acceptor("federation", cert, key),
                None => bundle_endpoint::spiffe_acceptor(&state),
            }
            .map_err(StartError::Tls)?;
            let listener = TcpListener::bind(endpoint.listen).await.map_err(|e| {
                StartError::Io(format!(
                    "cannot listen on {} (federation.bundle_endpoint_listen): {e}",
                    endpoint.listen
                ))
            })?;
            let bound = listener.local_addr().map_err(|e| StartError::Io(e.to_string()))?;
            let profile = if endpoint.web_tls.is_some() { "https_web" } else { "https_spiffe" };
            tracing::info!(listen = %bound, profile, "SPIFFE bundle endpoint ready");
            let router = bundle_endpoint::router(state.clone());
            let serve = public_listener::serve("bundle endpoint", listener, Some(tls), router, rx.clone());
            tasks.push(("bundle endpoint", tokio::spawn(serve)));
            bundle_endpoint_addr = Some(bound);
        }
        if let Some(changes) = changes {
            let follow = replicas::follow_changes(state.clone(), changes, rx.clone());
            tasks.push(("changes of other replicas", tokio::spawn(follow)));
        }
        tasks.push(("federation refresher", tokio::spawn(federation::refresher(state.clone(), rx.clone()))));
        tasks.push(("database lease expiry", tokio::spawn(db_creds::expirer(state.clone(), rx.clone()))));
        tasks.push(("audit log", tokio::spawn(audit::writer(state.clone(), rx.clone()))));
        tasks.push(("key rotation", tokio::spawn(rotation_loop(state.clone(), rx))));
        tracing::info!(
            trust_domain = %config.trust_domain,
            store = %config.store.describe(),
            admin_socket = %config.admin_socket.display(),
            listen = ?tcp_addr,
            bundle_sequence = state.with_authority(|a| a.sequence()),
            "vouch server ready"
        );
        Ok(Self {
            state,
            admin_socket: config.admin_socket,
            tcp_addr,
            oidc_addr,
            bundle_endpoint_addr,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting connections and background work, and removes the admin socket.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // Each task stops at its next await once told; one that does not within the grace period
        // is aborted rather than left to hold shutdown (and the caller) forever.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(task = name, "did not stop within {SHUTDOWN_GRACE:?} of shutdown; aborted");
                task.abort();
                let _ = task.await;
            }
        }
        let _ = std::fs::remove_file(&self.admin_socket);
    }
}

/// How long [`Server::shutdown`] waits for its tasks before aborting them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

async fn bind_admin_socket(path: &Path) -> Result<UnixListener, StartError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    vouch_fs::bind_unix_socket(path, 0o600).await.map_err(|e| match e {
        vouch_fs::FsError::SocketInUse(_) => StartError::Io(format!(
            "another server is listening on {}; stop it or choose another admin_socket",
            path.display()
        )),
        other => StartError::Io(other.to_string()),
    })
}

/// Serves HTTP/1.1 on one connection with `caller` (and the peer's address, on TCP) attached to
/// every request, until the peer closes it or the server shuts down (which also ends long-lived
/// streams such as agent sync).
async fn serve_connection<I>(
    io: I,
    app: Router,
    caller: Caller,
    peer: Option<PeerAddr>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(caller.clone());
        if let Some(peer) = peer {
            req.extensions_mut().insert(peer);
        }
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(Duration::from_secs(10))
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = conn => match result {
            Err(e) => tracing::debug!(error = %e, "connection ended with an error"),
            Ok(()) => tracing::trace!("connection ended"),
        },
        _ = shutdown.changed() => tracing::trace!("connection ended by shutdown"),
    }
}

async fn serve_unix(
    listener: UnixListener,
    app: Router,
    conns: Arc<vouch_rt::ConnectionThreads>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // The kernel's word on who connected; fail closed if it cannot be read.
                    let Ok(cred) = stream.peer_cred() else {
                        tracing::warn!("admin socket: cannot read peer credentials; connection dropped");
                        continue;
                    };
                    let caller = Caller::Local { uid: cred.uid() };
                    let (app, shutdown) = (app.clone(), shutdown.clone());
                    // Re-registered with the connection thread's runtime, which serves it from now on.
                    let Ok(stream) = stream.into_std() else { continue };
                    conns.run(move || {
                        if let Ok(stream) = tokio::net::UnixStream::from_std(stream) {
                            tokio::spawn(serve_connection(stream, app, caller, None, shutdown));
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

/// A refused TLS handshake: audited as `tls.refused` at most once per interval per source address
/// (with `count`, the refusals from it since its last record), or once per interval for all
/// sources when too many are active at once.
fn tls_refused(state: &AppState, peer: SocketAddr, reason: &dyn std::fmt::Display) {
    use crate::limits::SourceNote;
    match state.limits.tls_refusals.note(peer.ip(), tokio::time::Instant::now()) {
        SourceNote::Due(count) => {
            tracing::info!(target: "vouch::audit", event = "tls.refused", %peer, reason = %reason, count, "TLS handshake refused ({count} from this address since the last line like this)");
        }
        SourceNote::Counted => {
            state.metrics.log_lines_suppressed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        SourceNote::Full => agent_api::log_refusal(state, "tls: many sources", |count| {
            tracing::info!(target: "vouch::audit", event = "tls.refused", peer = "many sources", reason = %reason, count, "TLS handshakes refused from many addresses ({count} since the last line like this)");
        }),
    }
}

async fn serve_tls(
    state: Arc<AppState>,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    conns: Arc<vouch_rt::ConnectionThreads>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let acceptor = acceptor.clone();
                    let app = app.clone();
                    let state = state.clone();
                    let conn_shutdown = shutdown.clone();
                    let stream = match stream.into_std() {
                        Ok(stream) => stream,
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "cannot hand a connection to a connection thread; dropped");
                            continue;
                        }
                    };
                    conns.run(move || { tokio::spawn(async move {
                        let stream = match tokio::net::TcpStream::from_std(stream) {
                            Ok(stream) => stream,
                            Err(e) => {
                                tracing::warn!(%peer, error = %e, "cannot register a connection with its thread; dropped");
                                return;
                            }
                        };
                        // Answers are written whole; Nagle's algorithm could only delay them.
                        let _ = stream.set_nodelay(true);
                        let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => tls,
                            // Anyone who reaches the port can fail a handshake: recorded at most
                            // once per interval per source address, with the count since that
                            // source's last record, so a flood fills neither the log output nor the
                            // audit log, nor hides another peer's refusal.
                            Ok(Err(e)) => {
                                tls_refused(&state, peer, &e);
                                return;
                            }
                            Err(_) => {
                                tls_refused(&state, peer, &"no TLS handshake within 10 s");
                                return;
                            }
                        };
                        let caller = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                            // The chain was verified during the handshake; read its SPIFFE ID, and
                            // its serial, by which an agent's current SVID is told from older ones.
                            Some(cert) => match vouch_tls::svid_of(cert) {
                                Ok((id, serial)) => Caller::Svid { id, serial },
                                Err(_) => Caller::Anonymous,
                            },
                            None => Caller::Anonymous,
                        };
                        tracing::trace!(%peer, "TLS connection open");
                        serve_connection(tls, app, caller, Some(PeerAddr(peer.ip())), conn_shutdown).await;
                        tracing::trace!(%peer, "TLS connection closed");
                    }); });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn rotation_loop(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let wait = match state.tick().await {
            Ok(next) => next
                .duration_since(state.now())
                .unwrap_or_default()
                .clamp(Duration::from_secs(1), Duration::from_secs(60)),
            Err(e) => {
                tracing::error!(error = %e, "key rotation failed; retrying");
                Duration::from_secs(10)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => break,
        }
    }
}
