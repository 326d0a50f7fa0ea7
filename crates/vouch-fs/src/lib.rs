//! Files and sockets the way vouch's daemons and CLI write them.
//!
//! - [`write_new_private`]: a new file only its owner can read (0600), never replacing one (a key
//!   that exists must not be overwritten by a second start);
//! - [`replace_private`]: a 0600 file replaced atomically (written beside, then renamed), so a crash
//!   never leaves half a key or certificate; [`replace`] the same with another mode;
//!   [`replace_together`] several files written first and renamed back to back; [`replace_owned`]
//!   one with a given owner;
//! - [`create_dir`]: a directory (and its parents) with a given mode;
//! - [`bind_unix_socket`]: a Unix socket bound with a given mode, over a stale socket file left by a
//!   process that died, but never over one a live process still serves.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// What failed, on which path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A file system call failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`create`, `write`, `bind`, ...).
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A live process serves the socket already.
    #[error("another process is serving {}; stop it or choose another socket path", .0.display())]
    SocketInUse(PathBuf),
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError::Io { action, path: path.to_owned(), source }
}

/// Writes a new file readable only by its owner; fails if `path` exists.
pub fn write_new_private(path: &Path, data: &[u8]) -> Result<(), FsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    f.write_all(data).map_err(io("write", path))?;
    f.sync_all().map_err(io("write", path))
}

/// Replaces `path` with a file readable only by its owner holding `data`, atomically: readers see
/// the old content or the new, never a part.
pub fn replace_private(path: &Path, data: &[u8]) -> Result<(), FsError> {
    replace(path, data, 0o600)
}

/// Replaces `path` with a file holding `data` with exactly `mode` (the umask does not apply),
/// atomically: the data goes to `<path>.tmp` in the same directory (created 0600, so nobody else
/// can open it meanwhile), is synced, gets its mode and is renamed over `path`; the directory is
/// synced last, so after a crash `path` holds the old content or the new, never a part.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> Result<(), FsError> {
    replace_together(&[(path, data, mode)])
}

/// Replaces several files as [`replace`] does each, with the renames back to back: every new
/// file is first written beside its path and synced, and only then are they renamed, in the order
/// given. A reader that opens the files one after another (libpq reads a client certificate, then
/// its key, at each new connection) can therefore only pair two generations if it opens them in
/// the microseconds between two renames, not while a file is written and synced. If any file
/// cannot be written, none is replaced.
pub fn replace_together(files: &[(&Path, &[u8], u32)]) -> Result<(), FsError> {
    replace_all(files, None)
}

/// Replaces `path` as [`replace`] does, and gives the new file the owner `uid` and group `gid`
/// (each where given) before it is renamed, so the file never appears with the wrong owner.
/// Changing the owner needs the privilege to (root, or `CAP_CHOWN`).
pub fn replace_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
) -> Result<(), FsError> {
    replace_all(&[(path, data, mode)], Some((uid, gid)))
}

fn replace_all(
    files: &[(&Path, &[u8], u32)],
    owner: Option<(Option<u32>, Option<u32>)>,
) -> Result<(), FsError> {
    let tmp_of = |path: &Path| {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        PathBuf::from(tmp)
    };
    let mut staged: Vec<(PathBuf, &Path)> = Vec::with_capacity(files.len());
    let remove_staged = |staged: &[(PathBuf, &Path)]| {
        for (tmp, _) in staged {
            let _ = std::fs::remove_file(tmp);
        }
    };
    for &(path, data, mode) in files {
        let tmp = tmp_of(path);
        // A leftover from a crash in the middle of an earlier replacement.
        let _ = std::fs::remove_file(&tmp);
        let written = write_new_private(&tmp, data).and_then(|()| {
            if mode != 0o600 {
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
                    .map_err(io("set the mode of", &tmp))?;
            }
            if let Some((uid, gid)) = owner.filter(|(u, g)| u.is_some() || g.is_some()) {
                std::os::unix::fs::chown(&tmp, uid, gid).map_err(io("change the owner of", &tmp))?;
            }
            Ok(())
        });
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            remove_staged(&staged);
            return Err(e);
        }
        staged.push((tmp, path));
    }
    for (i, (tmp, path)) in staged.iter().enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            remove_staged(&staged[i..]);
            return Err(io("replace", path)(e));
        }
    }
    // The renames are durable once the directories are; a directory that cannot be opened for
    // that (no read permission) still has the new files, so this is best effort.
    let mut synced: Vec<&Path> = Vec::new();
    for (_, path) in &staged {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !synced.contains(&dir) {
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            synced.push(dir);
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents with `mode` (for example 0o700 for private state).
pub fn create_dir(dir: &Path, mode: u32) -> Result<(), FsError> {
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(dir).map_err(io("create directory", dir))
}

/// Binds a Unix socket at `path` with `mode`, creating its directory (0o755) if needed. A socket file
/// nobody answers on (left by a process that died) is replaced; one a live process serves is an
/// error, so two daemons never share a socket.
pub async fn bind_unix_socket(path: &Path, mode: u32) -> Result<tokio::net::UnixListener, FsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        create_dir(dir, 0o755)?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(FsError::SocketInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(io("remove the stale socket", path))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of", path))?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_are_0600_new_ones_never_overwrite_and_replacement_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("kek");
        write_new_private(&key, b"first").unwrap();
        assert_eq!(mode(&key), 0o600);
        let err = write_new_private(&key, b"second").unwrap_err().to_string();
        assert!(err.contains("cannot create") && err.contains("kek"), "{err}");
        assert_eq!(std::fs::read(&key).unwrap(), b"first");
        replace_private(&key, b"third").unwrap();
        assert_eq!((std::fs::read(&key).unwrap(), mode(&key)), (b"third".to_vec(), 0o600));
        // A temporary file left by a crash does not stop the next replacement.
        std::fs::write(dir.path().join("kek.tmp"), b"junk").unwrap();
        replace_private(&key, b"fourth").unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"fourth");
        assert!(!dir.path().join("kek.tmp").exists());
        let err = replace_private(&dir.path().join("missing/dir/x"), b"x").unwrap_err().to_string();
        assert!(err.contains("missing/dir/x.tmp"), "{err}");
    }

    #[test]
    fn files_replaced_together_are_all_new_or_all_old() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        replace_together(&[(&a, b"a1", 0o600), (&b, b"b1", 0o644)]).unwrap();
        assert_eq!((std::fs::read(&a).unwrap(), mode(&a)), (b"a1".to_vec(), 0o600));
        assert_eq!((std::fs::read(&b).unwrap(), mode(&b)), (b"b1".to_vec(), 0o644));
        // The second cannot be written (its directory is missing): the first is not replaced
        // either, and nothing is left beside them.
        let missing = dir.path().join("no-such-dir/b");
        assert!(replace_together(&[(&a, b"a2", 0o600), (&missing, b"b2", 0o644)]).is_err());
        assert_eq!(std::fs::read(&a).unwrap(), b"a1");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn an_owned_replacement_has_its_owner_before_it_appears() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        let me = std::fs::metadata(dir.path()).unwrap();
        replace_owned(&file, b"v1", 0o640, Some(me.uid()), Some(me.gid())).unwrap();
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!((meta.uid(), meta.gid(), mode(&file)), (me.uid(), me.gid(), 0o640));
        if me.uid() == 0 {
            // Root may give it away (nobody:nogroup); the old file is replaced whole.
            replace_owned(&file, b"v2", 0o600, Some(65534), None).unwrap();
            let meta = std::fs::metadata(&file).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid(), std::fs::read(&file).unwrap()),
                (65534, me.gid(), b"v2".to_vec())
            );
        } else {
            let err = replace_owned(&file, b"v2", 0o600, Some(0), None).unwrap_err().to_string();
            assert!(err.contains("cannot change the owner of"), "{err}");
            assert_eq!(std::fs::read(&file).unwrap(), b"v1", "nothing changed");
            assert!(!dir.path().join("secret.tmp").exists());
        }
    }

    #[test]
    fn replacement_sets_the_exact_mode() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("svid.pem");
        replace(&cert, b"cert", 0o644).unwrap();
        assert_eq!((std::fs::read(&cert).unwrap(), mode(&cert)), (b"cert".to_vec(), 0o644));
        replace(&cert, b"next", 0o640).unwrap();
        assert_eq!((std::fs::read(&cert).unwrap(), mode(&cert)), (b"next".to_vec(), 0o640));
        assert!(!dir.path().join("svid.pem.tmp").exists());
    }

    #[tokio::test]
    async fn sockets_replace_stale_files_but_not_live_servers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/api.sock");
        let live = bind_unix_socket(&path, 0o600).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        match bind_unix_socket(&path, 0o600).await {
            Err(FsError::SocketInUse(p)) => assert_eq!(p, path),
            other => panic!("expected SocketInUse, got {other:?}"),
        }
        drop(live); // the file stays: now stale
        assert!(path.exists());
        let _again = bind_unix_socket(&path, 0o777).await.unwrap();
        assert_eq!(mode(&path), 0o777);
    }
}
