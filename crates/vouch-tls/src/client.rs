//! The client side: a vouch server verified by its SPIFFE ID, a client SVID presented.

use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use vouch_core::SpiffeId;

use crate::verify::{provider, verify_svid, Anchors};

/// Verifies a vouch server by its SPIFFE ID and the bundle, ignoring the host name (the server is
/// addressed by IP or any name; its identity is the SPIFFE ID).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: Anchors,
    expected: SpiffeId,
}

impl SpiffeServerVerifier {
    /// A verifier that accepts only `expected`, chaining to `bundle_der`.
    pub fn new(bundle_der: &[Vec<u8>], expected: SpiffeId) -> Self {
        Self { anchors: Anchors::from_der(bundle_der), expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_svid(&self.anchors, end_entity, intermediates, now, true)?;
        if id != self.expected {
            return Err(rustls::Error::General(format!(
                "server presented `{id}`, expected `{}`",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::verify::handshake_signatures!();
}

/// The client side TLS configuration: verify the server by SPIFFE ID, and present a client SVID if
/// given (chain DER, PKCS#8 key).
pub fn client_config(
    verifier: SpiffeServerVerifier,
    client: Option<(Vec<Vec<u8>>, Vec<u8>)>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(
            chain.into_iter().map(CertificateDer::from).collect(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
