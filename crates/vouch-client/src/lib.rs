//! The client of the vouch server's API, over the local admin Unix socket or mTLS: typed calls for
//! every message of `vouch-api` (admin API, agent API, the sync stream), with a deadline on every
//! call. TLS verification comes from `vouch-tls`; GETs to services outside vouch are `vouch-http`'s.

mod api;
pub mod client;

pub use api::{Audit, Entries, Federations, Groups, Policies, SyncStream};
pub use client::{decode, AdminClient, Answer, ClientError, Connection, LineStream};
