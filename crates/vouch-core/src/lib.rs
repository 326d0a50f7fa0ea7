//! Pure domain types and rules of vouch.
//!
//! - [`SpiffeId`] and [`TrustDomain`]: the names of identities, per the SPIFFE-ID standard.
//! - [`Selector`] and [`Selectors`]: facts about workloads and nodes.
//! - [`Entry`]: registration entries and the subset matching rule.
//! - [`grant`]: the parts of an authorization request (action, resource, principal).
//! - [`NodeGroup`]: node groups (SPIRE's node aliases), whose entries every member agent serves.
//! - [`secret`]: secret paths and the bounds on stored secrets.
//! - [`ttl`]: lifetime and rotation arithmetic.
//! - [`spire`]: SPIRE's selector spellings, rewritten to vouch's or refused with a reason.
//! - [`duration`]: durations as people write them (`1h30m`), parsed and printed.
//! - [`metrics`]: Prometheus text exposition (a latency histogram, counters, gauges).
//!
//! This crate does no I/O, has no async code and never reads a clock: time is a parameter.

pub mod audit;
pub mod duration;
pub mod entry;
pub mod grant;
pub mod group;
pub mod jwt;
pub mod metrics;
pub mod namespace;
pub mod secret;
pub mod selector;
pub mod spiffe_id;
pub mod spire;
pub mod ttl;

pub use entry::{
    matching_entries, CommonName, CommonNameError, DnsName, Entry, EntryError, EntryId, EntrySpec,
    MatchOutcome,
};
pub use group::{GroupError, GroupName, NodeGroup, NodeGroupSpec};
pub use jwt::JwtSvidClaims;
pub use namespace::{Namespace, NamespaceError, NamespaceScope};
pub use secret::{SecretError, SecretPath};
pub use selector::{Selector, SelectorError, Selectors};
pub use spiffe_id::{IdError, SpiffeId, TrustDomain};
