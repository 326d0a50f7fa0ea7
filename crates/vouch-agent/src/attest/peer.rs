//! Who is on the other end of a Unix socket: the kernel's word (SO_PEERCRED), pinned to the exact
//! process with a pidfd (SO_PEERPIDFD, or pidfd_open on kernels before 6.5) so that a process that
//! exits and has its pid reused while it is being attested is detected.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{getsockopt, sockopt};

use super::procfs::{parse_fdinfo_pid, parse_start_time};
use super::AttestError;

/// The peer process of a connection, pinned.
#[derive(Debug)]
pub struct PeerProcess {
    /// Process id (in the agent's pid namespace).
    pub pid: i32,
    /// Effective uid at connect time.
    pub uid: u32,
    /// Effective gid at connect time.
    pub gid: u32,
    /// The executable it ran when pinned: binary selectors describe this file, and a process that
    /// has executed another program since is refused ([`AttestError::ExecChanged`]).
    pub exe: super::unix::FileKey,
    pidfd: OwnedFd,
    start_time: u64,
}

fn read_start_time(proc_root: &Path, pid: i32) -> Result<u64, AttestError> {
    let path = proc_root.join(pid.to_string()).join("stat");
    let text = super::procfs::read_proc_file(&path).map_err(|_| AttestError::ProcessGone(pid))?;
    parse_start_time(&text).ok_or(AttestError::Proc { pid, what: "stat" })
}

fn pidfd_pid(pidfd: &OwnedFd) -> Option<i32> {
    let text =
        super::procfs::read_proc_file(Path::new(&format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))).ok()?;
    parse_fdinfo_pid(&text)
}

impl PeerProcess {
    /// Identifies the peer of a connected Unix socket.
    pub fn of_socket(socket: &impl AsFd, proc_root: &Path) -> Result<Self, AttestError> {
        let cred =
            getsockopt(socket, sockopt::PeerCredentials).map_err(|e| AttestError::Peer(e.to_string()))?;
        let pid = cred.pid();
        if pid <= 0 {
            return Err(AttestError::Peer("the kernel reported no peer pid".into()));
        }
        // The kernel's pidfd of the peer refers to the connecting process itself, even if its pid
        // has been reused since; pidfd_open (older kernels) pins whatever has the pid now, so the
        // start time check below is what catches reuse there.
        let pidfd = match getsockopt(socket, sockopt::PeerPidfd) {
            Ok(fd) => fd,
            Err(_) => rustix::process::pidfd_open(
                rustix::process::Pid::from_raw(pid)
                    .ok_or_else(|| AttestError::Peer("invalid peer pid".into()))?,
                rustix::process::PidfdFlags::empty(),
            )
            .map_err(|_| AttestError::ProcessGone(pid))?,
        };
        if pidfd_pid(&pidfd) != Some(pid) {
            return Err(AttestError::ProcessGone(pid));
        }
        let start_time = read_start_time(proc_root, pid)?;
        let exe = super::unix::exe_key(proc_root, pid)?;
        Ok(Self { pid, uid: cred.uid(), gid: cred.gid(), exe, pidfd, start_time })
    }

    /// Pins a process by pid (for `vouch agent explain`): its effective ids come from
    /// `/proc/<pid>/status` instead of a socket.
    pub fn of_pid(pid: i32, proc_root: &Path) -> Result<Self, AttestError> {
        let raw = rustix::process::Pid::from_raw(pid).ok_or(AttestError::ProcessGone(pid))?;
        let pidfd: OwnedFd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            .map_err(|_| AttestError::ProcessGone(pid))?;
        let start_time = read_start_time(proc_root, pid)?;
        let status = super::procfs::read_proc_file(&proc_root.join(pid.to_string()).join("status"))
            .map_err(|_| AttestError::ProcessGone(pid))?;
        let ids = super::procfs::parse_status(&status).ok_or(AttestError::Proc { pid, what: "status" })?;
        let exe = super::unix::exe_key(proc_root, pid)?;
        Ok(Self { pid, uid: ids.uid, gid: ids.gid, exe, pidfd, start_time })
    }

    /// Fails unless the pinned process is still alive, is still the one behind `pid`, and still
    /// runs the executable it ran when pinned. Called after everything about the process has been
    /// read: if it has exited (and the pid may now belong to someone else) or executed another
    /// program, what was read cannot be trusted.
    pub fn check_unchanged(&self, proc_root: &Path) -> Result<(), AttestError> {
        if pidfd_pid(&self.pidfd) != Some(self.pid) {
            return Err(AttestError::PidReused(self.pid));
        }
        match read_start_time(proc_root, self.pid) {
            Ok(t) if t == self.start_time => {}
            _ => return Err(AttestError::PidReused(self.pid)),
        }
        match super::unix::exe_key(proc_root, self.pid) {
            Ok(exe) if exe == self.exe => Ok(()),
            Ok(_) => Err(AttestError::ExecChanged(self.pid)),
            Err(_) => Err(AttestError::PidReused(self.pid)),
        }
    }
}
