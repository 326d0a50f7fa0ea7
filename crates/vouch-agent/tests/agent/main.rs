//! Integration tests of the agent (one test binary): workload attestation of real processes, and the
//! Workload API served to independent SPIFFE clients by a real agent synced with a real server.

mod attest;
mod kubelet;
mod workload_api;
