//! Keys and signing for vouch: the one crypto module of the project.
//!
//! - [`x509`]: CA certificates and X509-SVIDs (SPIFFE X509-SVID standard), CSR verification.
//! - [`jwt`]: JWT-SVIDs (SPIFFE JWT-SVID standard): minting and strict validation.
//! - [`bundle`]: SPIFFE bundles as JWKS (SPIFFE Trust Domain and Bundle standard).
//! - [`authority`]: a trust domain's roots, signing CAs and JWT keys, and their rotation.
//! - [`seal`]: private keys at rest, sealed with AES-256-GCM under a key-encryption key.
//!
//! All cryptography is aws-lc-rs; private keys live in zeroizing memory.

pub mod audit;
pub mod authority;
pub mod bundle;
pub mod envelope;
pub mod jwt;
pub mod keys;
pub mod pem;
pub mod seal;
mod svid_der;
#[cfg(feature = "testing")]
pub mod testing;
pub mod x509;

pub use authority::{Authority, AuthorityConfig, AuthorityState, IssuedX509, KeyState, KeySummary};
pub use bundle::Bundle;
pub use envelope::{open_value, seal_value, SealedValue};
pub use jwt::{AudienceError, JwtError, JwtSvidClaims, MintedJwt};
pub use keys::{KeyAlg, KeyUse, SigningKey, WorkloadKey};
pub use seal::Kek;
pub use x509::{verify_csr, verify_csr_pem_or_der, Ca, CsrPublicKey, X509Svid};

/// Errors of the CA crate. Messages never contain key material.
///
/// Three kinds matter to front ends: [`CaError::InvalidRequest`] is the caller's mistake (HTTP 400
/// `invalid_request`, gRPC `INVALID_ARGUMENT`: retrying the same request never succeeds);
/// [`CaError::NotReady`] is the server's state (HTTP 503 `unavailable`, gRPC `UNAVAILABLE`: retry
/// later); the rest are refusals of presented material (400) or faults of the server (500).
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The request is wrong in itself: see [`RequestError`].
    #[error("{0}")]
    InvalidRequest(#[from] RequestError),
    /// The authority has no usable key for this right now (none active yet, or expired): the
    /// request may succeed after the next rotation.
    #[error("not ready to sign: {0}")]
    NotReady(&'static str),
    /// A cryptographic primitive failed (should not happen with valid inputs).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),
    /// A key could not be loaded or does not fit.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// A sealed key could not be opened: wrong key-encryption key, or the data was altered.
    #[error("cannot open sealed key `{0}`: wrong key-encryption key, or the stored data was altered")]
    Unseal(String),
    /// A secret version could not be decrypted: sealed for another path or version (rows moved
    /// in the database), altered, or sealed under another key-encryption key.
    #[error("secret `{path}` version {version} cannot be decrypted: its stored data was sealed for another path or version (moved in the database), altered, or sealed under another key-encryption key; restore it from a backup or write a new version")]
    SecretUnreadable {
        /// The secret's path.
        path: String,
        /// The version.
        version: u64,
    },
    /// A certificate could not be parsed or used.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// A CSR was refused.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// A bundle document was refused.
    #[error("invalid bundle: {0}")]
    InvalidBundle(String),
    /// Stored authority state is inconsistent.
    #[error("invalid stored authority state: {0}")]
    InvalidState(String),
    /// A signing request was refused.
    #[error("{0}")]
    Refused(String),
    /// Certificate generation failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// A signing request that is wrong in itself: the caller's mistake, never the server's state, so
/// front ends answer it as an invalid argument (HTTP 400 `invalid_request`; the agent's Workload API
/// `INVALID_ARGUMENT`), never as "unavailable, retry".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The JWT-SVID audiences are unusable (none, too many, empty, too long, control characters).
    #[error("audience: {0}")]
    Audience(#[from] AudienceError),
    /// The SPIFFE ID is a bare trust-domain ID: it names no workload.
    #[error("`{0}` names a trust domain, not a workload")]
    NotAWorkload(vouch_core::SpiffeId),
    /// The SPIFFE ID belongs to another trust domain than this authority's.
    #[error("`{id}` is not in trust domain `{trust_domain}`")]
    ForeignTrustDomain {
        /// The requested ID.
        id: vouch_core::SpiffeId,
        /// This authority's trust domain.
        trust_domain: vouch_core::TrustDomain,
    },
}
