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
/// workload beyond "no identity issued" (or, for [`AttestError::HashBusy`], which concerns only the
/// caller's own uid, "retry").
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
    /// The process executed another program since it connected: binary selectors would describe a
    /// program other than the one that connected (or a child given the connection), so none count.
    #[error("process {0} executed another program since it connected; it must reconnect")]
    ExecChanged(i32),
    /// The caller's uid already has as many executable hashes waiting or running as it may
    /// ([`unix::HASHES_PER_UID`]); the caller may retry once they are done.
    #[error("uid {0} already has an executable hash waiting or running; retry")]
    HashBusy(u32),
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

/// Whether attestation computes the executable's SHA-256 (`unix:sha256`): costly, so only when an
/// entry could use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExeHash {
    /// Compute it.
    Compute,
    /// Leave it out.
    Skip,
}

/// Attests the peer of `socket`: pins it, reads its unix facts (with the executable's hash) and
/// cgroup, then checks that it is still the same process.
pub async fn attest_socket(socket: &impl AsFd, unix: &UnixAttestor) -> Result<Attestation, AttestError> {
    let peer = PeerProcess::of_socket(socket, unix.proc_root())?;
    attest_peer(&peer, unix, ExeHash::Compute).await
}

/// Attests a pinned peer fully: `unix:` selectors, then the container runtime's selectors for its
/// container, if it runs in one.
pub async fn attest_full(
    peer: &PeerProcess,
    unix: &UnixAttestor,
    runtime: &RuntimeAttestor,
    hash: ExeHash,
) -> Result<Attestation, AttestError> {
    let mut a = attest_peer(peer, unix, hash).await?;
    if let Some(c) = &a.container {
        for s in runtime.selectors(c).await?.iter() {
            a.selectors.insert(s.clone());
        }
    }
    Ok(a)
}

/// Attests an already identified peer (`unix:` selectors and cgroup only). The executable's hash,
/// when asked for, is of the file the peer ran when it was pinned.
pub async fn attest_peer(
    peer: &PeerProcess,
    unix: &UnixAttestor,
    hash: ExeHash,
) -> Result<Attestation, AttestError> {
    let mut selectors = unix.selectors(peer.pid, peer.uid, peer.gid)?;
    if hash == ExeHash::Compute {
        if let Some(digest) = unix.exe_sha256(peer.pid, Some(peer.exe), peer.uid).await? {
            let hex = vouch_ca::keys::hex(&digest);
            selectors.insert(
                vouch_core::Selector::new("unix", &format!("sha256:{hex}"))
                    .map_err(|_| AttestError::Proc { pid: peer.pid, what: "exe" })?,
            );
        }
    }
    let cgroup_path = unix.proc_root().join(peer.pid.to_string()).join("cgroup");
    let text = procfs::read_proc_file(&cgroup_path)
        .map_err(|_| AttestError::Proc { pid: peer.pid, what: "cgroup" })?;
    let container =
        container_from_cgroup_file(&text).map_err(|source| AttestError::Cgroup { pid: peer.pid, source })?;
    peer.check_unchanged(unix.proc_root())?;
    Ok(Attestation { pid: peer.pid, selectors, container })
}
