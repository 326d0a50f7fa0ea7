//! Plain HTTPS GETs to services outside vouch that have no SPIFFE identity: the node's kubelet (agent)
//! and OIDC discovery endpoints of Kubernetes service-account issuers (server).
//!
//! The peer is authenticated by a CA file (web PKI rules: the certificate must name the host), or not
//! at all when the operator says so (kubelets often serve self-signed certificates). Plain `http://`
//! is allowed for endpoints that are meant to be read without TLS (the kubelet's read-only port).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How an `https://` peer is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Certificates chaining to the CAs in this PEM file, naming the host.
    CaFile(PathBuf),
    /// Any certificate (handshake signatures are still checked).
    InsecureSkipVerify,
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
    /// Parses an absolute http or https URL; userinfo and fragments are refused.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{url}` is not an http:// or https:// URL"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains('#') {
            return Err(format!("`{url}`: needs a host, and no user name or fragment"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| format!("`{url}`: unclosed `[`"))?;
            (h, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| format!("`{url}`: bad port `{p}`"))?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(format!("`{url}`: needs a host"));
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
    pub fn new(url: &Url, trust: Option<&Trust>) -> Result<Self, String> {
        let tls = match (url.tls, trust) {
            (false, None) => None,
            (false, Some(_)) => return Err("a CA or skip-verify setting only applies to https".into()),
            (true, None) => return Err("an https endpoint needs a CA file (or skip-verify)".into()),
            (true, Some(trust)) => Some(tls_connector(trust)?),
        };
        Ok(Self { host: url.host.clone(), port: url.port, tls })
    }

    /// GETs `path`; returns the status and at most `max_body` bytes of body. `bearer` is sent as an
    /// `Authorization` header and never appears in errors.
    pub async fn get(
        &self,
        path: &str,
        bearer: Option<&str>,
        max_body: usize,
        timeout: Duration,
    ) -> Result<(u16, Bytes), String> {
        tokio::time::timeout(timeout, self.get_inner(path, bearer, max_body))
            .await
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }

    async fn get_inner(
        &self,
        path: &str,
        bearer: Option<&str>,
        max_body: usize,
    ) -> Result<(u16, Bytes), String> {
        let host_header = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, host_header)
            .header(hyper::header::ACCEPT, "application/json");
        if let Some(token) = bearer {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req =
            req.body(http_body_util::Empty::<Bytes>::new()).map_err(|_| "bad request path".to_owned())?;
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| e.to_string())?;
        let resp = match &self.tls {
            Some(tls) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
                let stream = tls.connect(name, tcp).await.map_err(|e| format!("tls: {e}"))?;
                send(TokioIo::new(stream), req).await?
            }
            None => send(TokioIo::new(tcp), req).await?,
        };
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

async fn send<IO>(
    io: IO,
    req: hyper::Request<http_body_util::Empty<Bytes>>,
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

/// A TLS connector for an https server trusted as `trust` says (a CA file, or no verification).
pub fn tls_connector(trust: &Trust) -> Result<tokio_rustls::TlsConnector, String> {
    let builder = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let config = match trust {
        Trust::InsecureSkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let shown = path.display();
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("CA file `{shown}`: {e}"))? {
                let cert = cert.map_err(|e| format!("CA file `{shown}`: {e}"))?;
                roots.add(cert).map_err(|e| format!("CA file `{shown}`: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("CA file `{shown}` holds no certificate"));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Accepts any server certificate but still checks the handshake signatures.
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &crate::tls::algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &crate::tls::algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::algorithms().supported_schemes()
    }
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
