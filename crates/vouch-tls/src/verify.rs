//! Chain and SVID verification against a bundle's trust anchors, and the one crypto provider.

use std::sync::{Arc, LazyLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{
    verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use vouch_core::SpiffeId;

use crate::TlsError;

/// Built once: every handshake of every verifier uses the same provider and algorithm table.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));

/// The crypto provider of every TLS connection: aws-lc-rs, as everywhere in vouch.
pub fn provider() -> Arc<CryptoProvider> {
    PROVIDER.clone()
}

/// The signature algorithms of the provider.
pub fn algorithms() -> &'static WebPkiSupportedAlgorithms {
    &PROVIDER.signature_verification_algorithms
}

/// The handshake-signature checks every verifier shares (they depend only on the algorithm set).
pub(crate) fn tls12_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls12_signature(message, cert, dss, algorithms())
}

pub(crate) fn tls13_signature(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature(message, cert, dss, algorithms())
}

pub(crate) fn schemes() -> Vec<SignatureScheme> {
    algorithms().supported_schemes()
}

/// The three handshake-signature methods every rustls verifier implements, the same in each of
/// vouch's verifiers (they depend only on the one algorithm set).
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            crate::verify::tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            crate::verify::tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            crate::verify::schemes()
        }
    };
}
pub(crate) use handshake_signatures;

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
    spiffe_id_of(end_entity).map_err(|e| rustls::Error::General(e.to_string()))
}

/// The SPIFFE ID of an X509-SVID: its single URI SAN.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, TlsError> {
    svid_of(der).map(|(id, _)| id)
}

/// The SPIFFE ID of an X509-SVID and its serial number (lowercase hex), read in one parse: the server
/// knows an agent by both, so that a copy of an older SVID of the same agent is refused.
pub fn svid_of(der: &[u8]) -> Result<(SpiffeId, String), TlsError> {
    let info = vouch_ca::x509::cert_info(der).map_err(|e| TlsError::NotAnSvid(e.to_string()))?;
    match info.uris.as_slice() {
        [one] => SpiffeId::parse(one)
            .map(|id| (id, info.serial))
            .map_err(|e| TlsError::NotAnSvid(format!("URI SAN is not a SPIFFE ID: {e}"))),
        [] => Err(TlsError::NotAnSvid("the certificate has no URI SAN".into())),
        _ => Err(TlsError::NotAnSvid(
            "the certificate has several URI SANs; an X509-SVID has exactly one".into(),
        )),
    }
}
