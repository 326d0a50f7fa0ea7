//! Wire definitions of vouch.
//!
//! [`workload`] is the SPIFFE Workload API (SPIFFE_Workload_API.md, section 3), generated from
//! `proto/workload.proto` by prost/tonic and checked in, so building vouch needs neither `protoc`
//! nor a build script. `tests/generated.rs` regenerates it with protox and fails on any difference;
//! after changing the .proto run `VOUCH_REGENERATE=1 cargo test -p vouch-proto` to update it.

#![forbid(unsafe_code)]

/// The SPIFFE Workload API: messages, the `SpiffeWorkloadApi` server trait and a client.
#[allow(missing_docs, clippy::all, clippy::pedantic)] // generated code
pub mod workload {
    include!("workload.rs");
}

/// gRPC metadata key every Workload API request must carry with value `true` (SPIFFE Workload API
/// standard, section 4.1): it proves the caller is a client of the Workload API, not a browser or
/// another protocol tricked into talking to the socket.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
