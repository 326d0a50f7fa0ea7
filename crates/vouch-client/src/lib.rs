//! Talking to a vouch server: the admin/agent API client over the local Unix socket or mTLS, and the
//! SPIFFE-aware TLS verification every component shares.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod http;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use client::{decode, AdminClient, ClientError, Connection, LineStream};

/// What a node signs to prove possession of its key in x509pop attestation: a fixed prefix (so the
/// signature can serve no other purpose) and the server's single-use nonce.
pub fn x509pop_message(nonce: &str) -> Vec<u8> {
    format!("vouch x509pop v1 {nonce}").into_bytes()
}
