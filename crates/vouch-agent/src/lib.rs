//! The vouch node agent.
//!
//! - [`attest`]: workload attestation — who is calling the agent's socket (peer pid pinned with a
//!   pidfd, `/proc`, cgroup), as `unix:` selectors and a container reference.
//!
//! Still to come (issue 3): node attestation and sync with the server, container runtime selectors
//! (Docker, containerd, Kubernetes), the SVID cache and the SPIFFE Workload API.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attest;
