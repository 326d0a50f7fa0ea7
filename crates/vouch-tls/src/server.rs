//! The server side of mTLS: client SVIDs verified against the current bundle, and the server's own
//! renewable certificate.

use std::sync::{Arc, RwLock};

use crate::verify::{provider, verify_svid, Anchors};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::DistinguishedName;

/// Verifies client certificates against the current bundle; the anchors are swapped when the
/// bundle changes. A client without a certificate is let through the handshake so the API can
/// answer 401 with an explanation instead of a bare TLS alert.
#[derive(Debug, Default)]
pub struct SvidClientVerifier {
    anchors: RwLock<Arc<Anchors>>,
}

impl SvidClientVerifier {
    /// Replaces the trust anchors.
    pub fn set_anchors(&self, anchors: Anchors) {
        if let Ok(mut a) = self.anchors.write() {
            *a = Arc::new(anchors);
        }
    }

    fn current(&self) -> Arc<Anchors> {
        self.anchors.read().map(|a| a.clone()).unwrap_or_default()
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_svid(&self.current(), end_entity, intermediates, now, false)?;
        Ok(ClientCertVerified::assertion())
    }

    crate::verify::handshake_signatures!();
}

/// Serves the server's own X509-SVID, replaced on renewal without restarting listeners.
#[derive(Debug, Default)]
pub struct ServerCert {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl ServerCert {
    /// Installs a new certificate chain and its PKCS#8 key.
    pub fn set(&self, chain: Vec<Vec<u8>>, pkcs8: &[u8]) -> Result<(), rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)?;
        let certs = chain.into_iter().map(CertificateDer::from).collect();
        if let Ok(mut c) = self.current.write() {
            *c = Some(Arc::new(CertifiedKey::new(certs, signing)));
        }
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().and_then(|c| c.clone())
    }
}

/// The server side TLS configuration.
pub fn server_config(
    cert: Arc<ServerCert>,
    verifier: Arc<SvidClientVerifier>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
