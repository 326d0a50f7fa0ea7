//! The wire contract of vouch: every message its parts exchange, as types.
//!
//! The server answers with these types and the agent, the CLI, the tests and the benchmarks send and
//! read them, so a renamed or retyped field is a compile error in every part at once, not a fault in
//! production. Domain types that are already wire-ready (`Entry`, `EntrySpec`, `SpiffeId`, ...) come
//! from `vouch-core` and parse themselves on the way in (habit 2: parse, don't validate).
//!
//! - [`admin`]: the admin API (entries, join tokens, SVID minting, the bundle's keys, agents);
//! - [`agent`]: the agent API (node attestation, renewal, the sync stream, batch signing, JWT-SVIDs);
//! - [`federation`]: SPIFFE federation relationships with other trust domains;
//! - [`secrets`]: the secret store (admin) and secret reads for workloads (agent);
//! - [`explain`]: the agent's private admin socket (`vouch agent explain`);
//! - [`audit`]: the tamper-evident audit log (search, checkpoints, keys, verification);
//! - [`policy`]: grants (Cedar policies) and the decision API;
//! - [`paths`]: the routes, shared by the server's router and the client;
//! - [`Der`]: certificates and CSRs between vouch's own parts travel as DER (base64 in JSON), never
//!   as PEM; the public admin API keeps PEM for people.
//!
//! The OpenAPI document of the server (`/v1/openapi.json`) describes the same messages; a check in
//! `scripts/test` validates real answers against it.

pub mod admin;
pub mod agent;
pub mod audit;
pub mod db;
mod der;
mod error;
pub mod explain;
pub mod federation;
pub mod paths;
pub mod policy;
pub mod secrets;

pub use der::Der;
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use vouch_core::{
    Entry, EntryId, EntrySpec, NodeGroup, NodeGroupSpec, SecretPath, Selector, SpiffeId, TrustDomain,
};
