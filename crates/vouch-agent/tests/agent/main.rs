//! Integration tests of the agent (one test binary): workload attestation of real processes, and the
//! Workload API served to independent SPIFFE clients by a real agent synced with a real server, and
//! the agent's health, metrics and metrics listener, and failover between server replicas on one
//! PostgreSQL.

// A test fails by panicking: unwrap and expect are how it says what broke. End-to-end tests run
// real processes on the wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::disallowed_methods)]

mod attest;
mod failover;
mod federation;
mod grants;
mod kubelet;
mod openbao;
mod ops;
mod secrets;
mod workload_api;
