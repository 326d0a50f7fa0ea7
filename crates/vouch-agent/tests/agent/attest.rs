//! Workload attestation of real processes over a real Unix socket.

use std::io::Read as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use vouch_agent::attest::{attest_peer, attest_socket, AttestError, ExeHash, PeerProcess, UnixAttestor};

fn sha256_hex(path: &std::path::Path) -> String {
    let digest = vouch_ca::keys::sha256_reader(std::fs::File::open(path).unwrap()).unwrap();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn has(sel: &vouch_core::Selectors, s: &str) -> bool {
    sel.iter().any(|x| x.to_string() == s)
}

#[tokio::test]
async fn attests_this_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let _client = UnixStream::connect(&path).unwrap();
    let (server_side, _) = listener.accept().unwrap();
    let a = attest_socket(&server_side, &UnixAttestor::default()).await.unwrap();
    assert_eq!(a.pid, std::process::id() as i32);
    let exe = std::env::current_exe().unwrap();
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    assert!(has(&a.selectors, &format!("unix:uid:{uid}")), "{:?}", a.selectors);
    assert!(has(&a.selectors, &format!("unix:path:{}", exe.display())), "{:?}", a.selectors);
    assert!(has(&a.selectors, &format!("unix:sha256:{}", sha256_hex(&exe))));
    if uid == 0 {
        assert!(has(&a.selectors, "unix:user:root"));
    }
}

/// A Python process, dropped to uid/gid 65534 by setpriv, connects and waits; the agent sees the
/// kernel's view of it: its uid, the real python binary and that binary's hash.
#[tokio::test]
async fn attests_another_user_and_binary() {
    if !nix_is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let script = format!(
        "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect({:?}); print('ok', flush=True); time.sleep(30)",
        path.display().to_string()
    );
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv (util-linux) and python3 are installed");
    let (conn, _) = listener.accept().unwrap();
    let mut ok = [0u8; 2];
    child.stdout.as_mut().unwrap().read_exact(&mut ok).unwrap();
    let a = attest_socket(&conn, &UnixAttestor::default()).await.unwrap();
    assert_eq!(a.pid, child.id() as i32);
    assert!(has(&a.selectors, "unix:uid:65534"), "{:?}", a.selectors);
    assert!(has(&a.selectors, "unix:gid:65534"));
    assert!(has(&a.selectors, "unix:user:nobody"));
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    assert!(has(&a.selectors, &format!("unix:path:{}", python.display())), "{:?}", a.selectors);
    assert!(has(&a.selectors, &format!("unix:sha256:{}", sha256_hex(&python))));
    assert!(!a.selectors.iter().any(|s| s.value().starts_with("supplementary_gid:")), "groups were cleared");

    // Pinned, then the process dies: whatever was read about it is no longer trusted.
    let peer = PeerProcess::of_socket(&conn, std::path::Path::new("/proc")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(peer.check_unchanged(std::path::Path::new("/proc")), Err(AttestError::PidReused(_))));
    assert!(attest_peer(&peer, &UnixAttestor::default(), ExeHash::Compute).await.is_err(), "fail closed");
}

/// A caller that connected and exited before the agent looked gets nothing.
#[tokio::test]
async fn a_caller_that_is_gone_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let script = format!(
        "import socket; s=socket.socket(socket.AF_UNIX); s.connect({:?})",
        path.display().to_string()
    );
    let status = Command::new("python3").args(["-c", &script]).status().unwrap();
    assert!(status.success());
    let (conn, _) = listener.accept().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let err = attest_socket(&conn, &UnixAttestor::default()).await.unwrap_err();
    assert!(matches!(err, AttestError::ProcessGone(_) | AttestError::PidReused(_)), "{err}");
}

/// A fake /proc whose files are broken: every failure is an error, never partial selectors.
#[test]
fn unreadable_proc_files_fail_closed() {
    let proc_root = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let unix = UnixAttestor::with_roots(proc_root.path(), etc.path());
    assert!(matches!(unix.selectors(4242, 0, 0), Err(AttestError::ProcessGone(4242))));
    let p = proc_root.path().join("4242");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("status"), "Uid:\tgarbage\n").unwrap();
    assert!(matches!(unix.selectors(4242, 0, 0), Err(AttestError::Proc { what: "status", .. })));
    std::fs::write(p.join("status"), "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n").unwrap();
    assert!(matches!(unix.selectors(4242, 0, 0), Err(AttestError::Proc { what: "exe", .. })));
}

fn nix_is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// The executable's hash is cached, but a changed file is hashed again.
#[tokio::test]
async fn exe_hash_follows_changes_to_the_binary() {
    let proc_root = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let bin = proc_root.path().join("program");
    std::fs::write(&bin, b"version one").unwrap();
    let p = proc_root.path().join("77");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("status"), "Uid:\t5\t5\t5\t5\nGid:\t5\t5\t5\t5\nGroups:\t\n").unwrap();
    std::os::unix::fs::symlink(&bin, p.join("exe")).unwrap();
    let unix = UnixAttestor::with_roots(proc_root.path(), etc.path());
    let hash_of = |d: Option<[u8; 32]>| format!("sha256:{}", vouch_ca::keys::hex(&d.unwrap()));
    let first = hash_of(unix.exe_sha256(77, None, 0).await.unwrap());
    assert_eq!(first, format!("sha256:{}", sha256_hex(&bin)));
    assert_eq!(hash_of(unix.exe_sha256(77, None, 0).await.unwrap()), first, "cached");
    assert_eq!(unix.hash_runs(), 1);
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&bin, b"version two, longer").unwrap();
    let second = hash_of(unix.exe_sha256(77, None, 0).await.unwrap());
    assert_ne!(second, first);
    assert_eq!(second, format!("sha256:{}", sha256_hex(&bin)));
}

/// Hashing executables is bounded: a file over the size bound is not read at all (a 16 GiB sparse
/// copy of a binary costs nothing on disk), concurrent callers of one new file share one hash, and
/// the async runtime keeps serving while a hash runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executable_hashing_is_bounded_shared_and_off_the_runtime() {
    let proc_root = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    let big = proc_root.path().join("sparse");
    std::fs::File::create(&big).unwrap().set_len(16 << 30).unwrap();
    let p = proc_root.path().join("78");
    std::fs::create_dir(&p).unwrap();
    std::os::unix::fs::symlink(&big, p.join("exe")).unwrap();
    let unix = UnixAttestor::with_roots(proc_root.path(), etc.path());
    let started = std::time::Instant::now();
    assert_eq!(unix.exe_sha256(78, None, 0).await.unwrap(), None, "over the bound: no hash");
    assert!(started.elapsed() < Duration::from_secs(1), "and nothing read");
    assert_eq!(unix.hash_runs(), 0);

    // 200 MiB (sparse, under the bound): eight callers at once, one hash.
    std::fs::remove_file(&big).unwrap();
    std::fs::File::create(&big).unwrap().set_len(200 << 20).unwrap();
    let unix = UnixAttestor::with_roots(proc_root.path(), etc.path());
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let unix = unix.clone();
            tokio::spawn(async move { unix.exe_sha256(78, None, 0).await.unwrap() })
        })
        .collect();
    // While they hash, the runtime answers at once.
    let tick = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(tick.elapsed() < Duration::from_millis(500), "the runtime stalled: {:?}", tick.elapsed());
    let mut digests = Vec::new();
    for c in callers {
        digests.push(tokio::time::timeout(Duration::from_secs(60), c).await.unwrap().unwrap());
    }
    assert!(digests.iter().all(|d| d.is_some() && *d == digests[0]));
    assert_eq!(unix.hash_runs(), 1, "callers of a hash in flight wait for it");
}

/// A process that connects and then executes another program (keeping the connection, or handing
/// it to a child) is refused: binary selectors describe the program that connected.
#[tokio::test]
async fn a_process_that_executes_another_program_after_connecting_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // Connects, says so, waits for a line, then becomes /usr/bin/sleep with the socket kept open.
    let script = format!(
        "import os,socket,sys; s=socket.socket(socket.AF_UNIX); s.connect({:?}); os.set_inheritable(s.fileno(), True); \
         print('ok', flush=True); sys.stdin.readline(); os.execv('/usr/bin/sleep', ['sleep', '30'])",
        path.display().to_string()
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (conn, _) = listener.accept().unwrap();
    let mut ok = [0u8; 2];
    child.stdout.as_mut().unwrap().read_exact(&mut ok).unwrap();
    let unix = UnixAttestor::default();
    let peer = PeerProcess::of_socket(&conn, std::path::Path::new("/proc")).unwrap();
    let before = attest_peer(&peer, &unix, ExeHash::Compute).await.unwrap();
    let python = std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap();
    assert!(has(&before.selectors, &format!("unix:path:{}", python.display())), "{:?}", before.selectors);

    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(format!("/proc/{}/exe", child.id())).unwrap() == python {
        assert!(std::time::Instant::now() < deadline, "the child did not exec");
        std::thread::sleep(Duration::from_millis(10));
    }
    for hash in [ExeHash::Compute, ExeHash::Skip] {
        let err = attest_peer(&peer, &unix, hash).await.unwrap_err();
        assert!(matches!(err, AttestError::ExecChanged(_)), "{err}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// One hash waiting or running per uid: while a uid's hash of one large file runs, its hash of
/// another file is refused at once, another uid's is not, and callers of the file in flight wait
/// for it (they start nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_uid_has_at_most_one_hash_waiting_or_running() {
    let proc_root = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    for (pid, len) in [(80, 400 << 20), (81, 1 << 20), (82, 1 << 20)] {
        let exe = proc_root.path().join(format!("exe-{pid}"));
        std::fs::File::create(&exe).unwrap().set_len(len).unwrap();
        std::fs::create_dir(proc_root.path().join(pid.to_string())).unwrap();
        std::os::unix::fs::symlink(&exe, proc_root.path().join(pid.to_string()).join("exe")).unwrap();
    }
    let unix = UnixAttestor::with_roots(proc_root.path(), etc.path());
    let (first, same_file) = {
        let (a, b) = (unix.clone(), unix.clone());
        (
            tokio::spawn(async move { a.exe_sha256(80, None, 1000).await }),
            tokio::spawn(async move { b.exe_sha256(80, None, 1000).await }),
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while unix.hash_runs() == 0 {
        assert!(std::time::Instant::now() < deadline, "the first hash did not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // 400 MiB take far longer than these calls: uid 1000's hash is still running.
    let started = std::time::Instant::now();
    let busy = unix.exe_sha256(81, None, 1000).await;
    assert!(matches!(busy, Err(AttestError::HashBusy(1000))), "{busy:?}");
    assert!(started.elapsed() < Duration::from_millis(100), "refused at once");
    assert!(unix.exe_sha256(82, None, 1001).await.unwrap().is_some(), "another uid is served");
    assert!(!first.is_finished(), "the large hash was still running: the refusal was the bound's");
    let first = tokio::time::timeout(Duration::from_secs(60), first).await.unwrap().unwrap().unwrap();
    let same_file = tokio::time::timeout(Duration::from_secs(60), same_file).await.unwrap().unwrap().unwrap();
    assert_eq!(first, same_file);
    assert_eq!(unix.hash_runs(), 2, "the second caller of file 80 waited for its hash");
    // Done: uid 1000 may hash again.
    assert!(unix.exe_sha256(81, None, 1000).await.unwrap().is_some());
}

/// A hash whose caller went away (its connection closed) counts until it is done: it runs on a
/// blocking thread that cannot be stopped, so dropping the caller must not free its uid's place
/// (nor its permit), else a caller that hangs up and asks again could run any number at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_whose_caller_went_away_counts_until_it_is_done() {
    let proc_root = tempfile::tempdir().unwrap();
    let etc = tempfile::tempdir().unwrap();
    for (pid, len) in [(83, 400 << 20), (84, 1 << 20)] {
        let exe = proc_root.path().join(format!("exe-{pid}"));
        std::fs::File::create(&exe).unwrap().set_len(len).unwrap();
        std::fs::create_dir(proc_root.path().join(pid.to_string())).unwrap();
        std::os::unix::fs::symlink(&exe, proc_root.path().join(pid.to_string()).join("exe")).unwrap();
    }
    let unix = UnixAttestor::with_roots(proc_root.path(), etc.path());
    let a = unix.clone();
    let first = tokio::spawn(async move { a.exe_sha256(83, None, 1000).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while unix.hash_runs() == 0 {
        assert!(std::time::Instant::now() < deadline, "the first hash did not start");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let busy = unix.exe_sha256(84, None, 1000).await;
    assert!(matches!(busy, Err(AttestError::HashBusy(1000))), "{busy:?}");
    // Once the abandoned hash is done, the uid may hash again.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        match unix.exe_sha256(84, None, 1000).await {
            Ok(digest) => break assert!(digest.is_some()),
            Err(AttestError::HashBusy(_)) => {
                assert!(std::time::Instant::now() < deadline, "the uid's place was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}
