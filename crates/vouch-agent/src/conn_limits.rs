//! Bounds on Workload API connections: in total, per caller uid, and a reserve for uids that hold
//! few.
//!
//! The socket is world-connectable by design, so without bounds any local user could hold
//! connections until the agent runs out of file descriptors (each costs the socket and a pidfd)
//! and then no workload is served. With them, one uid can take at most its share; a connection
//! over a bound is closed at once, before any attestation work.
//!
//! A per-uid share alone does not keep the socket open for everyone: two uids holding half each
//! (a review showed it) take every slot, and root and all other workloads are refused. So the last
//! quarter of the slots is a reserve: once the shared three quarters are taken, a connection is
//! admitted only if its uid holds fewer than [`RESERVE_PER_UID`] connections. Whoever holds the
//! shared part, a uid with fewer than that many connections is served until the reserve itself is
//! used up, which takes at least `total / 4 / RESERVE_PER_UID` uids (28 at the total that a
//! descriptor limit of 1024 gives, 1,024 at the largest total). A SPIFFE client needs one connection (it
//! multiplexes its streams), so a few per uid is what a workload needs to be served at all. Root
//! gets no exemption: processes in containers without a user namespace run as uid 0 on the host
//! too. The state is one counter per uid holding a connection, so bounded by the total.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// File descriptors each Workload API connection holds: the socket and the caller's pidfd.
const FDS_PER_CONNECTION: u64 = 2;
/// File descriptors kept for everything else: the store of the agent's own files, the server link,
/// runtime sockets, the admin socket, logs.
const FDS_RESERVED: u64 = 128;
/// Most connections in total, whatever the descriptor limit.
const MAX_TOTAL: usize = 16_384;
/// Most connections a uid may hold and still be admitted to the reserve (see the module docs).
pub const RESERVE_PER_UID: usize = 4;

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most open connections in total.
    pub total: usize,
    /// Most open connections from one uid.
    pub per_uid: usize,
}

impl Limits {
    /// Bounds that fit the process's descriptor limit `nofile`: the total leaves room for the
    /// agent's other descriptors, and one uid may hold half (so no single user, root included, can
    /// take the socket from the others).
    pub fn for_nofile(nofile: u64) -> Self {
        let total =
            (nofile.saturating_sub(FDS_RESERVED) / FDS_PER_CONNECTION).clamp(8, MAX_TOTAL as u64) as usize;
        Self { total, per_uid: (total / 2).max(4) }
    }

    /// Slots kept for uids holding fewer than [`RESERVE_PER_UID`] connections: a quarter of the
    /// total. The rest is the shared part, which any uid may fill up to `per_uid`.
    pub fn reserve(&self) -> usize {
        self.total / 4
    }

    /// Bounds for the process's current descriptor limit (read only; [`raise_nofile`] raises it,
    /// once, at agent start).
    pub fn from_process() -> Self {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        // No limit at all is rare; take it as generous, still bounded by MAX_TOTAL.
        Self::for_nofile(limit.current.unwrap_or(u64::MAX))
    }
}

/// Raises the soft descriptor limit to the hard one (as Go programs and most daemons do: the soft
/// default of 1024 is for interactive shells). A failure leaves the limit as it was; the bounds
/// then follow the lower limit.
pub fn raise_nofile() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    // An unlimited hard limit (None) is raised to no more than a million.
    let want = limit.maximum.unwrap_or(1 << 20);
    if limit.current.is_some_and(|soft| soft < want) {
        if let Err(e) = setrlimit(Resource::Nofile, Rlimit { current: Some(want), maximum: limit.maximum }) {
            tracing::warn!(error = %e, "cannot raise the file descriptor limit; Workload API connections are bounded by the current one");
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// The connection counter.
pub struct ConnLimits {
    limits: Limits,
    counts: Mutex<Counts>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The agent holds its total number of connections.
    Total,
    /// The caller's uid holds its share.
    PerUid,
    /// The shared part is full and the caller's uid already holds [`RESERVE_PER_UID`]
    /// connections, so the reserve is not for it.
    SharedFull,
}

impl ConnLimits {
    /// A counter with `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, counts: Mutex::default() })
    }

    /// The bounds.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot for a connection from `uid`, held until the connection ends, or why not.
    pub fn admit(self: &Arc<Self>, uid: u32) -> Result<ConnSlot, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.limits.total {
            return Err(Refused::Total);
        }
        let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= self.limits.per_uid {
            return Err(Refused::PerUid);
        }
        let shared_full = c.total >= self.limits.total.saturating_sub(self.limits.reserve());
        if shared_full && mine >= RESERVE_PER_UID {
            return Err(Refused::SharedFull);
        }
        // Counted only once admitted: a refused uid leaves nothing behind.
        *c.by_uid.entry(uid).or_default() += 1;
        c.total += 1;
        Ok(ConnSlot { limits: self.clone(), uid })
    }

    /// Open connections: in total, and from `uid`.
    pub fn open(&self, uid: u32) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (c.total, c.by_uid.get(&uid).copied().unwrap_or(0))
    }
}

/// One admitted connection; dropping it frees the slot.
pub struct ConnSlot {
    limits: Arc<ConnLimits>,
    uid: u32,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut c = self.limits.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                c.by_uid.remove(&self.uid);
            }
        }
    }
}

/// The uid of a Unix socket's peer, from the kernel; `u32::MAX` (one shared bucket) when the
/// kernel cannot say, so that unknown callers are bounded together.
pub fn peer_uid(socket: &impl std::os::fd::AsFd) -> u32 {
    nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::PeerCredentials)
        .map(|c| c.uid())
        .unwrap_or(u32::MAX)
}

/// Lets an event through at most once per interval, counting the ones held back.
pub struct Throttle {
    every: std::time::Duration,
    last: Option<std::time::Instant>,
    held: u64,
}

impl Throttle {
    /// A throttle letting one event through per `every`.
    pub fn new(every: std::time::Duration) -> Self {
        Self { every, last: None, held: 0 }
    }

    /// Records an event; `Some(n)` when it should be reported, `n` counting it and those held back.
    pub fn tick(&mut self) -> Option<u64> {
        self.held += 1;
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_descriptor_limit() {
        assert_eq!(Limits::for_nofile(1024), Limits { total: 448, per_uid: 224 });
        assert_eq!(Limits::for_nofile(100), Limits { total: 8, per_uid: 4 }, "never below a floor");
        assert_eq!(Limits::for_nofile(1 << 20).total, MAX_TOTAL);
    }

    #[test]
    fn slots_are_counted_per_uid_and_freed_on_drop() {
        let limits = ConnLimits::new(Limits { total: 5, per_uid: 3 });
        let a: Vec<ConnSlot> = (0..3).map(|_| limits.admit(1000).unwrap()).collect();
        assert_eq!(limits.admit(1000).err(), Some(Refused::PerUid));
        let b: Vec<ConnSlot> = (0..2).map(|_| limits.admit(0).unwrap()).collect();
        assert_eq!(limits.admit(0).err(), Some(Refused::Total));
        assert_eq!(limits.open(1000), (5, 3));
        drop(a);
        assert_eq!(limits.open(1000), (2, 0));
        assert!(limits.admit(1000).is_ok());
        drop(b);
        assert_eq!(limits.open(0), (0, 0));
    }

    #[test]
    fn two_uids_cannot_take_the_reserve() {
        let limits = ConnLimits::new(Limits { total: 64, per_uid: 32 });
        assert_eq!(limits.limits().reserve(), 16);
        let a: Vec<ConnSlot> = std::iter::from_fn(|| limits.admit(1000).ok()).collect();
        let b: Vec<ConnSlot> = std::iter::from_fn(|| limits.admit(1001).ok()).collect();
        assert_eq!((a.len(), b.len()), (32, 16), "the second uid gets the rest of the shared part");
        assert_eq!(limits.admit(1001).err(), Some(Refused::SharedFull));
        // Every other uid, root included, gets a few from the reserve, while it lasts.
        let c: Vec<ConnSlot> = (0..RESERVE_PER_UID).map(|_| limits.admit(1002).unwrap()).collect();
        assert_eq!(limits.admit(1002).err(), Some(Refused::SharedFull));
        let root: Vec<ConnSlot> = (0..RESERVE_PER_UID).map(|_| limits.admit(0).unwrap()).collect();
        let more: Vec<ConnSlot> =
            [1003, 1003, 1003, 1003, 1004, 1004, 1004, 1004].map(|u| limits.admit(u).unwrap()).into();
        assert_eq!(limits.admit(1005).err(), Some(Refused::Total), "the reserve is used up");
        // A refused uid leaves no counter behind.
        assert_eq!(limits.counts.lock().unwrap().by_uid.len(), 6);
        // Freed shared slots are shared again.
        drop(a);
        let again: Vec<ConnSlot> = std::iter::from_fn(|| limits.admit(1001).ok()).take(40).collect();
        assert_eq!(again.len(), 16);
        drop((b, c, root, more, again));
    }

    #[test]
    fn the_throttle_reports_once_per_interval_with_a_count() {
        let mut t = Throttle::new(std::time::Duration::from_secs(3600));
        assert_eq!(t.tick(), Some(1));
        assert_eq!((t.tick(), t.tick()), (None, None));
        let mut t = Throttle::new(std::time::Duration::ZERO);
        assert_eq!((t.tick(), t.tick()), (Some(1), Some(1)));
    }
}
