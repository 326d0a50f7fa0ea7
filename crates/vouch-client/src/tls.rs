//! TLS with SPIFFE semantics, shared by every vouch component: peers are authenticated by an
//! X509-SVID chaining to the trust bundle and identified by the SPIFFE ID in its one URI SAN — never
//! by host name.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use vouch_core::SpiffeId;

/// The crypto provider of every TLS connection: aws-lc-rs, as everywhere in vouch.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The signature algorithms of the provider.
pub fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// Trust anchors from a bundle's X.509 authorities.
#[derive(Debug, Default)]
pub struct Anchors {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
}

impl Anchors {
    /// Builds anchors from DER certificates; unusable certificates are skipped (the bundle was
    /// produced by vouch itself, so none should be).
    pub fn from_der(certs: &[Vec<u8>]) -> Self {
        let anchors = certs
            .iter()
            .filter_map(|d| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(d.as_slice()))
                    .ok()
                    .map(|a| a.to_owned())
            })
            .collect();
        Self { anchors }
    }
}

/// Verifies a certificate chain against `anchors` for client or server use.
pub fn verify_chain(
    anchors: &Anchors,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    server_usage: bool,
) -> Result<(), rustls::Error> {
    let ee = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| rustls::Error::General(format!("bad certificate: {e}")))?;
    let usage = if server_usage { webpki::KeyUsage::server_auth() } else { webpki::KeyUsage::client_auth() };
    ee.verify_for_usage(algorithms().all, &anchors.anchors, intermediates, now, usage, None, None).map_err(
        |e| rustls::Error::General(format!("certificate does not chain to the trust anchors: {e}")),
    )?;
    Ok(())
}

/// Verifies an X509-SVID chain against `anchors` for `usage` and returns its SPIFFE ID.
pub fn verify_svid(
    anchors: &Anchors,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    server_usage: bool,
) -> Result<SpiffeId, rustls::Error> {
    verify_chain(anchors, end_entity, intermediates, now, server_usage)?;
    spiffe_id_of(end_entity).map_err(rustls::Error::General)
}

/// The SPIFFE ID of an X509-SVID: its single URI SAN.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, String> {
    let info = vouch_ca::x509::cert_info(der).map_err(|e| e.to_string())?;
    match info.uris.as_slice() {
        [one] => SpiffeId::parse(one).map_err(|e| format!("URI SAN is not a SPIFFE ID: {e}")),
        [] => Err("the certificate has no URI SAN, so it is not an X509-SVID".into()),
        _ => Err("the certificate has several URI SANs; an X509-SVID has exactly one".into()),
    }
}

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

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
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
