//! Talking to a vouch server: the admin/agent API client over the local Unix socket or mTLS, and the
//! SPIFFE-aware TLS verification every component shares.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
pub mod client;
pub mod http;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

pub use api::{Entries, SyncStream};
pub use client::{decode, AdminClient, ClientError, Connection, LineStream};
