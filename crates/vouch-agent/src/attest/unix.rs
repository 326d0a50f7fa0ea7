//! `unix:` selectors: who the process runs as and which binary it runs, as the host sees it.
//!
//! The executable's SHA-256 (`unix:sha256`) is the one costly fact: it is computed only when an
//! entry asks for it, off the async runtime, for at most [`MAX_HASH_BYTES`], at most
//! [`HASH_CONCURRENCY`] files at a time, once per file however many callers wait for it, and
//! remembered per file identity.
//!
//! The cache cannot help against a caller that changes its executable (touching or rewriting a
//! large sparse file makes every call a new file identity), and with many connections one uid
//! could queue many such hashes ahead of everyone else's. So each uid may have at most
//! [`HASHES_PER_UID`] hash waiting or running at a time (counted for the caller that computes it,
//! until the hash is done even if that caller hangs up; callers that wait for a hash already in
//! flight cost nothing more); a call beyond that is
//! refused at once with [`AttestError::HashBusy`], which the caller may retry. With one hash per uid
//! and two at a time, a caller's hash never waits behind more than one hash of each other uid, and
//! a single other uid, holding at most one of the two, cannot make it queue at all.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, Semaphore};

use vouch_core::{Selector, Selectors};

use super::procfs::{parse_id_names, parse_status};
use super::AttestError;

/// A file's identity as the kernel reports it: device, inode, size, modification and change times.
/// If any of these differ, the file may have changed and is hashed again.
pub type FileKey = (u64, u64, u64, i64, i64, i64, i64);

/// Most executables whose hashes are remembered.
const MAX_HASHES: usize = 4096;
/// Largest executable hashed. A larger one (a sparse file of many GiB costs nothing on disk and
/// minutes to hash) gets no `unix:sha256` selector, so entries that require one do not match it.
pub const MAX_HASH_BYTES: u64 = 512 * 1024 * 1024;
/// Most executables hashed at the same time (each on a blocking thread).
pub const HASH_CONCURRENCY: usize = 2;
/// Most hashes one uid may have waiting or running at a time (see the module docs).
pub const HASHES_PER_UID: usize = 1;

/// One executable's hash: empty while it is being computed.
type HashCell = Arc<OnceCell<[u8; 32]>>;

/// Reads unix facts of processes from a proc file system and the host's user and group databases.
#[derive(Debug, Clone)]
pub struct UnixAttestor {
    proc_root: PathBuf,
    etc_root: PathBuf,
    /// Hashes by file identity; a cell still empty is a hash in flight, which later callers await.
    hashes: Arc<Mutex<HashMap<FileKey, HashCell>>>,
    hash_permits: Arc<Semaphore>,
    /// Hashes waiting for a permit or running, by the uid of the caller computing them; a uid is
    /// here only while it has one, so this is bounded by the callers.
    hashing: Arc<Mutex<HashMap<u32, usize>>>,
    hash_runs: Arc<AtomicU64>,
    names: Arc<Mutex<NameCache>>,
}

/// One hash waiting or running for a uid; dropping it (done, failed or cancelled) frees the uid's
/// place.
struct HashTicket {
    hashing: Arc<Mutex<HashMap<u32, usize>>>,
    uid: u32,
}

impl Drop for HashTicket {
    fn drop(&mut self) {
        let mut hashing = self.hashing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = hashing.get_mut(&self.uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                hashing.remove(&self.uid);
            }
        }
    }
}

type IdNames = Arc<HashMap<u32, String>>;

/// `/etc/passwd` and `/etc/group` as read last, with the identities of the files they came from.
#[derive(Debug, Default)]
struct NameCache {
    key: Option<(FileKey, FileKey)>,
    users: IdNames,
    groups: IdNames,
}

fn key_of(m: &std::fs::Metadata) -> FileKey {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec())
}

fn file_key(path: &Path) -> Option<FileKey> {
    std::fs::metadata(path).ok().as_ref().map(key_of)
}

/// The identity of the executable `pid` runs now (through `/proc/<pid>/exe`, which names the file
/// the process runs even when its path was replaced or lies in another mount namespace).
pub fn exe_key(proc_root: &Path, pid: i32) -> Result<FileKey, AttestError> {
    file_key(&proc_root.join(pid.to_string()).join("exe")).ok_or(AttestError::Proc { pid, what: "exe" })
}

impl Default for UnixAttestor {
    fn default() -> Self {
        Self::with_roots("/proc", "/etc")
    }
}

fn sel(kind_value: &str, value: impl std::fmt::Display) -> Option<Selector> {
    Selector::new("unix", &format!("{kind_value}:{value}")).ok()
}

impl UnixAttestor {
    /// An attestor reading other roots (tests).
    pub fn with_roots(proc_root: impl Into<PathBuf>, etc_root: impl Into<PathBuf>) -> Self {
        Self {
            proc_root: proc_root.into(),
            etc_root: etc_root.into(),
            hashes: Default::default(),
            hash_permits: Arc::new(Semaphore::new(HASH_CONCURRENCY)),
            hashing: Default::default(),
            hash_runs: Default::default(),
            names: Default::default(),
        }
    }

    /// Users and groups by id, re-read only when either file changed.
    fn names(&self) -> (IdNames, IdNames) {
        let (pw, gr) = (self.etc_root.join("passwd"), self.etc_root.join("group"));
        let key = file_key(&pw).zip(file_key(&gr));
        let mut cache = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if key.is_none() || cache.key != key {
            cache.users = Arc::new(parse_id_names(&std::fs::read_to_string(&pw).unwrap_or_default()));
            cache.groups = Arc::new(parse_id_names(&std::fs::read_to_string(&gr).unwrap_or_default()));
            cache.key = key;
        }
        (cache.users.clone(), cache.groups.clone())
    }

    /// A place for a hash of `uid`'s, or [`AttestError::HashBusy`] if it has [`HASHES_PER_UID`].
    fn hash_ticket(&self, uid: u32) -> Result<HashTicket, AttestError> {
        let mut hashing = self.hashing.lock().unwrap_or_else(|p| p.into_inner());
        let n = hashing.entry(uid).or_default();
        if *n >= HASHES_PER_UID {
            return Err(AttestError::HashBusy(uid));
        }
        *n += 1;
        Ok(HashTicket { hashing: self.hashing.clone(), uid })
    }

    /// SHA-256 of the executable `pid` runs, or `None` when it is larger than [`MAX_HASH_BYTES`].
    /// With `pinned`, the executable must still be the file it was when the process was pinned
    /// ([`AttestError::ExecChanged`] otherwise): the hash then describes the program that connected.
    /// A hash that must be computed counts against `uid`, the caller's: one that already has
    /// [`HASHES_PER_UID`] waiting or running gets [`AttestError::HashBusy`] at once.
    pub async fn exe_sha256(
        &self,
        pid: i32,
        pinned: Option<FileKey>,
        uid: u32,
    ) -> Result<Option<[u8; 32]>, AttestError> {
        let exe_error = || AttestError::Proc { pid, what: "exe" };
        let path = self.proc_root.join(pid.to_string()).join("exe");
        // A stat, not an open: a caller waiting for a hash (its own or another's in flight) holds
        // no file descriptor meanwhile; the file is opened only to be hashed, under a permit.
        let meta = std::fs::metadata(&path).map_err(|_| exe_error())?;
        let key = key_of(&meta);
        if pinned.is_some_and(|k| k != key) {
            return Err(AttestError::ExecChanged(pid));
        }
        if meta.len() > MAX_HASH_BYTES {
            tracing::info!(pid, bytes = meta.len(), "executable too large to hash; no unix:sha256 selector");
            return Ok(None);
        }
        let cell = {
            let mut hashes = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
            if hashes.len() >= MAX_HASHES && !hashes.contains_key(&key) {
                // Callers of a hash in flight hold its cell and still receive it.
                hashes.clear();
            }
            hashes.entry(key).or_default().clone()
        };
        let digest = cell
            .get_or_try_init(|| async {
                // Taken by the caller that computes the hash, before it queues for a permit; if it
                // is refused, the next caller waiting for this file tries with its own uid.
                let ticket = self.hash_ticket(uid)?;
                let permit = self.hash_permits.clone().acquire_owned().await.map_err(|_| exe_error())?;
                let file = std::fs::File::open(&path).map_err(|_| exe_error())?;
                // The opened file must be the one whose identity keys this hash.
                if file.metadata().map(|m| key_of(&m)).ok() != Some(key) {
                    return Err(AttestError::ExecChanged(pid));
                }
                self.hash_runs.fetch_add(1, Ordering::Relaxed);
                // The permit and the uid's place go with the hash, not with this caller: a blocking
                // thread cannot be stopped, so a caller that hangs up must not free them while its
                // hash still runs (it could then run any number at once by asking and hanging up).
                tokio::task::spawn_blocking(move || {
                    let _held = (permit, ticket);
                    vouch_ca::keys::sha256_reader(file)
                })
                .await
                .map_err(|_| exe_error())?
                .map_err(|_| exe_error())
            })
            .await?;
        Ok(Some(*digest))
    }

    /// How many times an executable was actually read and hashed (not answered from the cache or
    /// from a hash in flight).
    pub fn hash_runs(&self) -> u64 {
        self.hash_runs.load(Ordering::Relaxed)
    }

    /// The proc root.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// The `unix:` selectors of `pid`, whose kernel-reported effective ids are `uid` and `gid`:
    /// `uid`, `gid`, `user`, `group`, `supplementary_gid`, `supplementary_group` and `path` of the
    /// executable (its `sha256` is [`Self::exe_sha256`]). Fails if anything cannot be read.
    pub fn selectors(&self, pid: i32, uid: u32, gid: u32) -> Result<Selectors, AttestError> {
        let dir = self.proc_root.join(pid.to_string());
        let status_text =
            super::procfs::read_proc_file(&dir.join("status")).map_err(|_| AttestError::ProcessGone(pid))?;
        let status = parse_status(&status_text).ok_or(AttestError::Proc { pid, what: "status" })?;
        let (users, groups) = self.names();
        let exe = std::fs::read_link(dir.join("exe")).map_err(|_| AttestError::Proc { pid, what: "exe" })?;

        let mut out = Selectors::new();
        let mut add = |s: Option<Selector>| {
            if let Some(s) = s {
                out.insert(s);
            }
        };
        add(sel("uid", uid));
        add(sel("gid", gid));
        add(users.get(&uid).and_then(|n| sel("user", n)));
        add(groups.get(&gid).and_then(|n| sel("group", n)));
        for g in &status.groups {
            add(sel("supplementary_gid", g));
            add(groups.get(g).and_then(|n| sel("supplementary_group", n)));
        }
        add(sel("path", exe.display()));
        Ok(out)
    }
}
