//! Test support (feature `testing`): a local HTTPS server with a self-signed certificate for
//! 127.0.0.1 that answers GETs from a table of paths, optionally only with a bearer token. It stands in

// Test support panics on failure like the tests that use it.
#![allow(clippy::unwrap_used, clippy::expect_used)]
//! for services that do not run on the development machines (a kubelet, a Kubernetes API server's
//! OIDC discovery endpoints).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The server; it runs until the test's runtime ends.
pub struct StaticHttps {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its certificate (PEM), to be trusted as a CA.
    pub cert_pem: String,
    requests: Arc<AtomicUsize>,
    routes: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl StaticHttps {
    /// Starts serving; requests without `Bearer <token>` get 401 when a token is required, unknown
    /// paths 404.
    pub async fn start(required_token: Option<&str>) -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let server = rustls::ServerConfig::builder_with_provider(vouch_tls::provider())
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let routes: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let auth = required_token.map(|t| format!("authorization: bearer {}", t.to_ascii_lowercase()));
        let (counter, table) = (requests.clone(), routes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, counter, table, auth) =
                    (acceptor.clone(), counter.clone(), table.clone(), auth.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let text = String::from_utf8_lossy(&req).to_string();
                    let path = text.split_whitespace().nth(1).unwrap_or_default().to_owned();
                    let authorized =
                        auth.as_ref().is_none_or(|a| text.to_ascii_lowercase().contains(a.as_str()));
                    let found = table.lock().map(|t| t.get(&path).cloned()).unwrap_or_default();
                    let (status, body) = match (authorized, found) {
                        (false, _) => ("401 Unauthorized", b"{}".to_vec()),
                        (true, Some(body)) => ("200 OK", body),
                        (true, None) => ("404 Not Found", b"{}".to_vec()),
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(&body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self { port, cert_pem: cert.pem(), requests, routes }
    }

    /// Serves `body` at `path` from now on.
    pub fn set(&self, path: &str, body: impl Into<Vec<u8>>) {
        if let Ok(mut t) = self.routes.lock() {
            t.insert(path.to_owned(), body.into());
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Requests answered so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
