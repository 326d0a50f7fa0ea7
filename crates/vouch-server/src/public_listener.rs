//! The bounded HTTP/1.1 listener of the server's public documents (the OIDC issuer's discovery
//! document and keys, the SPIFFE bundle endpoint): anyone may connect, so every cost is bounded —
//! connections in all and per source address, the time to complete a handshake and send headers,
//! the life of a connection, and the size of a request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::ServiceExt as _;

use crate::limits::source_key;

/// Connections served at once, from everyone: each holds a file descriptor and a little memory.
const MAX_CONNECTIONS: usize = 1024;
/// Connections served at once from one source address (an IPv6 /64 counts as one), so one client
/// cannot take every slot; relying parties need one or two.
const MAX_PER_SOURCE: usize = 32;
/// Time to complete a TLS handshake, and to send a request's headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection lives, however busy: a slot is not held forever by a slow reader.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Largest request head buffered: the GET requests served need a few hundred bytes.
const MAX_REQUEST_BUFFER: usize = 16 * 1024;
/// Requests carry no body.
pub const MAX_BODY_BYTES: usize = 1024;

/// Connections held per source address; a slot is given back when its guard drops.
#[derive(Default)]
struct PerSource(Mutex<HashMap<IpAddr, usize>>);

struct SourceSlot {
    map: Arc<PerSource>,
    key: IpAddr,
}

impl PerSource {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let key = source_key(ip);
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        if *n >= MAX_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot { map: self.clone(), key })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut map = self.map.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Accepts connections on `listener` (TLS when `tls` is given) and serves `app` on each, within the
/// bounds above, until shutdown. `name` names the listener in logs.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let all = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_source = Arc::new(PerSource::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over a bound, the connection is closed at once: cheaper than queueing it.
                    let Ok(permit) = all.clone().try_acquire_owned() else { continue };
                    let Some(slot) = per_source.take(peer.ip()) else { continue };
                    let (tls, app, shutdown) = (tls.clone(), app.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        let _held = (permit, slot);
                        let _ = stream.set_nodelay(true);
                        let served = async {
                            match tls {
                                Some(acceptor) => {
                                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                        Ok(Ok(tls)) => serve_connection(name, tls, app, shutdown).await,
                                        Ok(Err(e)) => tracing::debug!(listener = name, %peer, error = %e, "TLS handshake failed"),
                                        Err(_) => {}
                                    }
                                }
                                None => serve_connection(name, stream, app, shutdown).await,
                            }
                        };
                        let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn serve_connection<I>(name: &'static str, io: I, app: Router, mut shutdown: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BUFFER)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), service);
    tokio::select! {
        result = conn => if let Err(e) = result {
            tracing::debug!(listener = name, error = %e, "connection ended with an error");
        },
        _ = shutdown.changed() => {}
    }
}

/// A TLS acceptor for the configured certificate chain and key (PEM files): web PKI, no client
/// certificates asked for. `section` (`oidc`, `federation`) names the configuration keys in errors.
pub fn tls_acceptor(
    section: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{section}.tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{section}.tls_cert {} holds no CERTIFICATE", cert.display()));
    }
    // The key's error never quotes the file's content.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{section}.tls_key {}: not a PEM private key ({e})", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(vouch_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            format!("{section}.tls_cert and {section}.tls_key do not make a usable certificate: {e}")
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
