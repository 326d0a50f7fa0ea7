//! Container identity from `/proc/<pid>/cgroup`, read as the host sees it (never from anything the
//! container controls, such as its mountinfo, environment or hostname).
//!
//! Handles cgroup v1, v2 and hybrid hierarchies and the path layouts of Docker (cgroupfs and systemd
//! drivers), podman, containerd (CRI and plain namespaces), CRI-O and Kubernetes' kubepods.

use std::fmt;

/// Which runtime a cgroup path points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// Docker Engine (`docker-<id>.scope`, `/docker/<id>`).
    Docker,
    /// podman (`libpod-<id>`).
    Podman,
    /// containerd, through CRI (`cri-containerd-<id>`) or directly (`/<namespace>/<id>`).
    Containerd,
    /// CRI-O (`crio-<id>`).
    CriO,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Docker => "docker",
            Runtime::Podman => "podman",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
        })
    }
}

/// The container a process runs in, as far as its cgroup tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The runtime the path format belongs to.
    pub runtime: Runtime,
    /// The container id.
    pub id: String,
    /// The containerd namespace, for plain containerd paths (`k8s.io` for CRI).
    pub namespace: Option<String>,
    /// The Kubernetes pod UID, when the path is under kubepods.
    pub pod_uid: Option<String>,
    /// True when only the shape `/<namespace>/<id>` suggested containerd: a hint to confirm with
    /// containerd, not evidence. Every other format names its runtime unambiguously.
    pub guessed: bool,
}

/// Why a cgroup file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    /// No line had the `hierarchy:controllers:path` form.
    #[error("the cgroup file has no valid lines")]
    Malformed,
    /// Hierarchies disagree about the container: fail closed.
    #[error("cgroup hierarchies name different containers (`{0}` and `{1}`)")]
    Conflict(String, String),
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Segments that systemd and other runtimes use for their own bookkeeping, never a containerd
/// namespace: a malformed `/docker/<id>` must not be taken for containerd namespace `docker`.
const SYSTEM_SEGMENTS: [&str; 8] = [
    "user.slice",
    "system.slice",
    "init.scope",
    "machine.slice",
    "kubepods",
    "kubepods.slice",
    "docker",
    "libpod_parent",
];

/// Reads a container reference from one cgroup path.
pub fn container_from_path(path: &str) -> Option<ContainerRef> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pod_uid = segments.iter().find_map(|s| pod_uid_of(s));
    let last = *segments.last()?;
    let scoped = last.strip_suffix(".scope").unwrap_or(last);
    let with_prefix = |prefix: &str, runtime: Runtime| {
        scoped.strip_prefix(prefix).filter(|id| is_hex_id(id)).map(|id| ContainerRef {
            runtime,
            id: id.to_owned(),
            namespace: (runtime == Runtime::Containerd).then(|| "k8s.io".to_owned()),
            pod_uid: pod_uid.clone(),
            guessed: false,
        })
    };
    if let Some(c) = with_prefix("docker-", Runtime::Docker)
        .or_else(|| with_prefix("libpod-", Runtime::Podman))
        .or_else(|| with_prefix("cri-containerd-", Runtime::Containerd))
        .or_else(|| with_prefix("crio-", Runtime::CriO))
    {
        return Some(c);
    }
    let parent = segments.len().checked_sub(2).and_then(|i| segments.get(i)).copied();
    if is_hex_id(last) {
        match parent {
            Some("docker") => {
                return Some(ContainerRef {
                    runtime: Runtime::Docker,
                    id: last.into(),
                    namespace: None,
                    pod_uid,
                    guessed: false,
                })
            }
            // kubepods/<qos>/pod<uid>/<id> (cgroupfs driver): the runtime is whichever CRI runs the
            // pod; containerd is the one this agent speaks to.
            Some(p) if pod_uid_of(p).is_some() => {
                return Some(ContainerRef {
                    runtime: Runtime::Containerd,
                    id: last.into(),
                    namespace: Some("k8s.io".into()),
                    pod_uid,
                    guessed: false,
                })
            }
            _ => {}
        }
    }
    // Plain containerd (ctr, nerdctl with cgroupfs): exactly `/<namespace>/<id>`. Only a hint: the
    // agent confirms it with containerd, which knows whether such a container exists.
    if let [ns, id] = segments.as_slice() {
        let plausible = |s: &str| {
            !s.is_empty()
                && s.len() <= 76
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !SYSTEM_SEGMENTS.contains(ns)
            && !ns.ends_with(".slice")
            && !id.ends_with(".scope")
            && plausible(ns)
            && plausible(id)
        {
            return Some(ContainerRef {
                runtime: Runtime::Containerd,
                id: (*id).to_owned(),
                namespace: Some((*ns).to_owned()),
                pod_uid: None,
                guessed: true,
            });
        }
    }
    None
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(segment: &str) -> Option<String> {
    let s = segment.strip_suffix(".slice").unwrap_or(segment);
    let at = s.rfind("pod")?;
    let uid = &s[at + 3..];
    let uid = uid.replace('_', "-");
    let ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// Finds the container of a process from the text of its `/proc/<pid>/cgroup`. `Ok(None)` means the
/// process is not in a container any supported runtime made (a host process).
///
/// Every hierarchy is read; if two name different containers the answer is an error, so a process
/// cannot borrow an identity by being placed in a misleading cgroup on one hierarchy.
pub fn container_from_cgroup_file(text: &str) -> Result<Option<ContainerRef>, CgroupError> {
    let mut found: Option<ContainerRef> = None;
    let mut valid_lines = 0;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_hierarchy), Some(_controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        valid_lines += 1;
        let Some(c) = container_from_path(path) else { continue };
        match &found {
            None => found = Some(c),
            Some(prev) if prev.id == c.id => {}
            Some(prev) => return Err(CgroupError::Conflict(prev.id.clone(), c.id)),
        }
    }
    if valid_lines == 0 {
        return Err(CgroupError::Malformed);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f6b0c9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
    const POD: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";

    fn c(runtime: Runtime, ns: Option<&str>, pod: Option<&str>) -> Option<ContainerRef> {
        Some(ContainerRef {
            runtime,
            id: ID.into(),
            namespace: ns.map(Into::into),
            pod_uid: pod.map(Into::into),
            guessed: false,
        })
    }

    #[test]
    fn path_formats_of_every_runtime() {
        let pod_sd = POD.replace('-', "_");
        let cases: Vec<(String, Option<ContainerRef>)> = vec![
            (format!("/docker/{ID}"), c(Runtime::Docker, None, None)),
            (format!("/system.slice/docker-{ID}.scope"), c(Runtime::Docker, None, None)),
            (format!("/libpod_parent/libpod-{ID}"), c(Runtime::Podman, None, None)),
            (format!("/machine.slice/libpod-{ID}.scope"), c(Runtime::Podman, None, None)),
            (format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"), None),
            (format!("/system.slice/crio-{ID}.scope"), c(Runtime::CriO, None, None)),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_sd}.slice/cri-containerd-{ID}.scope"),
                c(Runtime::Containerd, Some("k8s.io"), Some(POD)),
            ),
            (format!("/kubepods/besteffort/pod{POD}/{ID}"), c(Runtime::Containerd, Some("k8s.io"), Some(POD))),
            ("/ci/ci-ctr".into(), Some(ContainerRef { runtime: Runtime::Containerd, id: "ci-ctr".into(), namespace: Some("ci".into()), pod_uid: None, guessed: true })),
            (format!("/default/{ID}"), Some(ContainerRef { runtime: Runtime::Containerd, id: ID.into(), namespace: Some("default".into()), pod_uid: None, guessed: true })),
            ("/".into(), None),
            ("/user.slice/user-0.slice/session-3.scope".into(), None),
            ("/system.slice/sshd.service".into(), None),
            ("/init.scope".into(), None),
            (format!("/docker/{}", &ID[..63]), None),
            (format!("/docker/{}", ID.to_uppercase()), None),
            (format!("/system.slice/docker-{ID}x.scope"), None),
        ];
        for (path, want) in cases {
            assert_eq!(container_from_path(&path), want, "{path}");
        }
    }

    #[test]
    fn hybrid_files_agree_or_fail_closed() {
        let hybrid =
            format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n");
        assert_eq!(container_from_cgroup_file(&hybrid).unwrap(), c(Runtime::Docker, None, None));
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_from_cgroup_file(&v2).unwrap(), c(Runtime::Docker, None, None));
        let host =
            "12:pids:/user.slice/user-0.slice/session-1.scope\n0::/user.slice/user-0.slice/session-1.scope\n";
        assert_eq!(container_from_cgroup_file(host).unwrap(), None);
        let other = "b".repeat(64);
        let conflict = format!("12:pids:/docker/{ID}\n0::/system.slice/docker-{other}.scope\n");
        assert!(matches!(container_from_cgroup_file(&conflict), Err(CgroupError::Conflict(..))));
        assert_eq!(container_from_cgroup_file(""), Err(CgroupError::Malformed));
        assert_eq!(container_from_cgroup_file("garbage\nmore garbage"), Err(CgroupError::Malformed));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in ".{0,400}") {
            let _ = container_from_cgroup_file(&text);
        }
    }
}
