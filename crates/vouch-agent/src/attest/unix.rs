//! `unix:` selectors: who the process runs as and which binary it runs, as the host sees it.

use std::path::{Path, PathBuf};

use vouch_core::{Selector, Selectors};

use super::procfs::{parse_id_names, parse_status};
use super::AttestError;

/// Reads unix facts of processes from a proc file system and the host's user and group databases.
#[derive(Debug, Clone)]
pub struct UnixAttestor {
    proc_root: PathBuf,
    etc_root: PathBuf,
}

impl Default for UnixAttestor {
    fn default() -> Self {
        Self { proc_root: "/proc".into(), etc_root: "/etc".into() }
    }
}

fn sel(kind_value: &str, value: impl std::fmt::Display) -> Option<Selector> {
    Selector::new("unix", &format!("{kind_value}:{value}")).ok()
}

impl UnixAttestor {
    /// An attestor reading other roots (tests).
    pub fn with_roots(proc_root: impl Into<PathBuf>, etc_root: impl Into<PathBuf>) -> Self {
        Self { proc_root: proc_root.into(), etc_root: etc_root.into() }
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
        let users =
            parse_id_names(&std::fs::read_to_string(self.etc_root.join("passwd")).unwrap_or_default());
        let groups =
            parse_id_names(&std::fs::read_to_string(self.etc_root.join("group")).unwrap_or_default());
        let exe = std::fs::read_link(dir.join("exe")).map_err(|_| AttestError::Proc { pid, what: "exe" })?;
        // Hash the binary through /proc/<pid>/exe: that is the file the process runs, even when the
        // path has since been replaced or lies in another mount namespace.
        let file =
            std::fs::File::open(dir.join("exe")).map_err(|_| AttestError::Proc { pid, what: "exe" })?;
        let digest =
            vouch_ca::keys::sha256_reader(file).map_err(|_| AttestError::Proc { pid, what: "exe" })?;

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
        add(sel("sha256", hex(&digest)));
        Ok(out)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
