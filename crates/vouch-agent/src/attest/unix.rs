//! `unix:` selectors: who the process runs as and which binary it runs, as the host sees it.

use std::path::{Path, PathBuf};

use vouch_core::{Selector, Selectors};

use super::procfs::{parse_id_names, parse_status};
use super::AttestError;

/// A file's identity as the kernel reports it: device, inode, size, modification and change times.
/// If any of these differ, the file may have changed and is hashed again.
type FileKey = (u64, u64, u64, i64, i64, i64, i64);

/// Most executables whose hashes are remembered.
const MAX_HASHES: usize = 4096;

/// Reads unix facts of processes from a proc file system and the host's user and group databases.
#[derive(Debug, Clone)]
pub struct UnixAttestor {
    proc_root: PathBuf,
    etc_root: PathBuf,
    hashes: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<FileKey, [u8; 32]>>>,
    names: std::sync::Arc<std::sync::Mutex<NameCache>>,
}

type IdNames = std::sync::Arc<std::collections::HashMap<u32, String>>;

/// `/etc/passwd` and `/etc/group` as read last, with the identities of the files they came from.
#[derive(Debug, Default)]
struct NameCache {
    key: Option<(FileKey, FileKey)>,
    users: IdNames,
    groups: IdNames,
}

fn file_key(path: &Path) -> Option<FileKey> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()))
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
            names: Default::default(),
        }
    }

    /// Users and groups by id, re-read only when either file changed.
    fn names(&self) -> (IdNames, IdNames) {
        let (pw, gr) = (self.etc_root.join("passwd"), self.etc_root.join("group"));
        let key = file_key(&pw).zip(file_key(&gr));
        let mut cache = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if key.is_none() || cache.key != key {
            cache.users =
                std::sync::Arc::new(parse_id_names(&std::fs::read_to_string(&pw).unwrap_or_default()));
            cache.groups =
                std::sync::Arc::new(parse_id_names(&std::fs::read_to_string(&gr).unwrap_or_default()));
            cache.key = key;
        }
        (cache.users.clone(), cache.groups.clone())
    }

    /// SHA-256 of the open executable, from the cache when the file's identity is unchanged.
    fn exe_hash(&self, file: std::fs::File) -> std::io::Result<[u8; 32]> {
        use std::os::unix::fs::MetadataExt;
        // Metadata of the open file, so the key and the hashed bytes describe the same file.
        let m = file.metadata()?;
        let key = (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec());
        let cache = || self.hashes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = cache().get(&key) {
            return Ok(*h);
        }
        let h = vouch_ca::keys::sha256_reader(file)?;
        let mut c = cache();
        if c.len() >= MAX_HASHES {
            c.clear();
        }
        c.insert(key, h);
        Ok(h)
    }

    /// The proc root.
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// The `unix:` selectors of `pid`, whose kernel-reported effective ids are `uid` and `gid`:
    /// `uid`, `gid`, `user`, `group`, `supplementary_gid`, `supplementary_group`, `path` and `sha256`
    /// of the executable. Fails if anything cannot be read.
    pub fn selectors(&self, pid: i32, uid: u32, gid: u32) -> Result<Selectors, AttestError> {
        let dir = self.proc_root.join(pid.to_string());
        let status_text =
            std::fs::read_to_string(dir.join("status")).map_err(|_| AttestError::ProcessGone(pid))?;
        let status = parse_status(&status_text).ok_or(AttestError::Proc { pid, what: "status" })?;
        let (users, groups) = self.names();
        let exe = std::fs::read_link(dir.join("exe")).map_err(|_| AttestError::Proc { pid, what: "exe" })?;
        // Hash the binary through /proc/<pid>/exe: that is the file the process runs, even when the
        // path has since been replaced or lies in another mount namespace.
        let file =
            std::fs::File::open(dir.join("exe")).map_err(|_| AttestError::Proc { pid, what: "exe" })?;
        let digest = self.exe_hash(file).map_err(|_| AttestError::Proc { pid, what: "exe" })?;

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
        add(sel("sha256", vouch_ca::keys::hex(&digest)));
        Ok(out)
    }
}
