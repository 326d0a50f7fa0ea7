//! Workload attestation: from a connection on the agent's socket to the selectors of the process
//! behind it. Fail closed at every step: if the pid, its `/proc` files or its cgroup cannot be read,
//! or the pid was reused while it was being attested, the caller gets no selectors at all.

pub mod cgroup;
pub mod k8s;
pub mod kubelet;
pub mod peer;
pub mod procfs;
pub mod runtime;
pub mod unix;

use std::os::fd::AsFd;

use vouch_core::Selectors;

pub use cgroup::{container_from_cgroup_file, ContainerRef, Runtime};
pub use kubelet::{KubeletClient, KubeletConfig};
pub use peer::PeerProcess;
pub use runtime::RuntimeAttestor;
pub use unix::UnixAttestor;

/// Why a caller could not be attested. Shown to operators (`vouch agent explain`), never to the
/// workload beyond "no identity issued".
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// The peer's credentials could not be read from the socket.
    #[error("cannot read the caller's credentials from the socket: {0}")]
    Peer(String),
    /// The process is gone.
    #[error("process {0} no longer exists")]
    ProcessGone(i32),
    /// A `/proc` file was unreadable or malformed.
    #[error("cannot read /proc/{pid}/{what}")]
    Proc {
        /// The pid.
        pid: i32,
        /// Which file.
        what: &'static str,
    },
    /// The process exited while being attested; its pid may belong to another process now.
    #[error("process {0} exited during attestation (its pid may have been reused); no identity")]
    PidReused(i32),
    /// The container runtime could not confirm the container.
    #[error("{0}")]
    Runtime(String),
    /// The cgroup file was unusable.
    #[error("cgroup of process {pid}: {source}")]
    Cgroup {
        /// The pid.
        pid: i32,
        /// The parse error.
        source: cgroup::CgroupError,
    },
}

/// What attestation learned about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// The caller's pid.
    pub pid: i32,
    /// Its selectors.
    pub selectors: Selectors,
    /// The container it runs in, per its cgroup (to be confirmed with the runtime).
    pub container: Option<ContainerRef>,
}

/// Attests the peer of `socket`: pins it, reads its unix facts and cgroup, then checks that it is
/// still the same process.
pub fn attest_socket(socket: &impl AsFd, unix: &UnixAttestor) -> Result<Attestation, AttestError> {
    let peer = PeerProcess::of_socket(socket, unix.proc_root())?;
    attest_peer(&peer, unix)
}

/// Attests a pinned peer fully: `unix:` selectors, then the container runtime's selectors for its
/// container, if it runs in one.
pub async fn attest_full(
    peer: &PeerProcess,
    unix: &UnixAttestor,
    runtime: &RuntimeAttestor,
) -> Result<Attestation, AttestError> {
    let mut a = attest_peer(peer, unix)?;
    if let Some(c) = &a.container {
        for s in runtime.selectors(c).await?.iter() {
            a.selectors.insert(s.clone());
        }
    }
    Ok(a)
}

/// Attests an already identified peer (`unix:` selectors and cgroup only).
pub fn attest_peer(peer: &PeerProcess, unix: &UnixAttestor) -> Result<Attestation, AttestError> {
    let selectors = unix.selectors(peer.pid, peer.uid, peer.gid)?;
    let cgroup_path = unix.proc_root().join(peer.pid.to_string()).join("cgroup");
    let text = std::fs::read_to_string(cgroup_path)
        .map_err(|_| AttestError::Proc { pid: peer.pid, what: "cgroup" })?;
    let container =
        container_from_cgroup_file(&text).map_err(|source| AttestError::Cgroup { pid: peer.pid, source })?;
    peer.check_unchanged(unix.proc_root())?;
    Ok(Attestation { pid: peer.pid, selectors, container })
}
