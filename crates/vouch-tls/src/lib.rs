//! TLS with SPIFFE semantics, shared by every vouch component: peers are authenticated by an
//! X509-SVID chaining to the trust bundle and identified by the SPIFFE ID in its one URI SAN (SPIFFE
//! X509-SVID standard, section 5), never by host name. One crypto provider (aws-lc-rs) and one
//! algorithm table, built once for every handshake.
//!
//! - [`Anchors`], [`verify_chain`], [`verify_svid`], [`spiffe_id_of`]: verification against a bundle;
//! - [`client_config`] with [`SpiffeServerVerifier`]: a client of a vouch server (CLI, agent);
//! - [`server_config`] with [`SvidClientVerifier`] and [`ServerCert`]: the server's mTLS listener;
//! - [`tls_connector`] with [`Trust`]: peers outside vouch (web PKI from a CA file, or skip-verify).

mod client;
mod server;
mod verify;
mod web;

use std::path::PathBuf;

pub use client::{client_config, SpiffeServerVerifier};
pub use server::{server_config, ServerCert, SvidClientVerifier};
pub use verify::{algorithms, provider, spiffe_id_of, svid_of, verify_chain, verify_svid, Anchors};
pub use web::{tls_connector, Trust};

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate is not an X509-SVID.
    #[error("not an X509-SVID: {0}")]
    NotAnSvid(String),
    /// A CA file could not be used.
    #[error("CA file `{}`: {reason}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration or the material.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}
