//! Container runtime selectors: what the runtime that started a process's container says about it.
//!
//! The container id comes from the process's cgroup (read by the agent, never from the container);
//! the runtime's own API then gives its labels, image config digest (the image ID, the same on every
//! runtime), image name and container name. Docker Engine and podman (through its Docker-compatible
//! API) are asked over their Unix sockets.
//!
//! Fail closed: a process whose cgroup says unambiguously that it runs in a container gets no
//! identity if that runtime cannot be asked or does not know the container. Only the ambiguous
//! `/<namespace>/<id>` shape is a mere hint (it also fits non-container cgroups): containerd is asked,
//! and if it does not know such a container the process simply has no container selectors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use serde_json::Value;
use vouch_core::{Selector, Selectors};

use super::cgroup::{ContainerRef, Runtime};
use super::kubelet::KubeletClient;
use super::AttestError;

/// Most containers whose metadata is remembered (labels and image never change in a container's
/// life, so entries never go stale; the bound only limits memory).
const MAX_CACHED: usize = 10_000;

/// Asks container runtimes (and the kubelet, for pods) about containers.
#[derive(Debug, Default)]
pub struct RuntimeAttestor {
    docker: Option<PathBuf>,
    podman: Option<PathBuf>,
    containerd: Option<PathBuf>,
    kubelet: Option<KubeletClient>,
    cache: Mutex<HashMap<(Runtime, String), Selectors>>,
}

impl RuntimeAttestor {
    /// An attestor using these API sockets (None: that runtime is not used on this node).
    pub fn new(docker: Option<PathBuf>, podman: Option<PathBuf>, containerd: Option<PathBuf>) -> Self {
        Self { docker, podman, containerd, kubelet: None, cache: Mutex::default() }
    }

    /// Also asks this kubelet about processes in Kubernetes pods (`k8s:` selectors).
    pub fn with_kubelet(mut self, kubelet: KubeletClient) -> Self {
        self.kubelet = Some(kubelet);
        self
    }

    /// The selectors of container `c`; empty for a mere containerd hint.
    ///
    /// For a container in a pod, with a kubelet configured, the kubelet must confirm the pod and the
    /// container (its `k8s:` selectors are required); the runtime is then asked too where its socket is
    /// present (CRI-O is not asked: the kubelet's word is all there is for it).
    pub async fn selectors(&self, c: &ContainerRef) -> Result<Selectors, AttestError> {
        let (Some(pod_uid), Some(kubelet)) = (&c.pod_uid, &self.kubelet) else {
            return self.runtime_selectors(c).await;
        };
        let mut out = kubelet.selectors(pod_uid, &c.id).await.map_err(|e| {
            AttestError::Runtime(format!(
                "the process runs in pod `{pod_uid}` but the kubelet does not confirm it: {e}"
            ))
        })?;
        let runtime_present = match c.runtime {
            Runtime::Docker => self.docker.as_ref(),
            Runtime::Podman => self.podman.as_ref(),
            Runtime::Containerd => self.containerd.as_ref(),
            Runtime::CriO => None,
        }
        .is_some_and(|p| p.exists());
        if runtime_present {
            for s in self.runtime_selectors(c).await?.iter() {
                out.insert(s.clone());
            }
        }
        Ok(out)
    }

    /// What the container runtime itself says.
    async fn runtime_selectors(&self, c: &ContainerRef) -> Result<Selectors, AttestError> {
        let (socket, kind) = match c.runtime {
            Runtime::Docker => (self.docker.as_ref(), "docker"),
            Runtime::Podman => (self.podman.as_ref(), "podman"),
            Runtime::Containerd => return self.containerd_selectors(c).await,
            other => {
                return Err(AttestError::Runtime(format!(
                    "the process runs in {other} container `{}`, which this agent cannot ask about yet; no identity",
                    c.id
                )))
            }
        };
        let key = (c.runtime, c.id.clone());
        if let Some(s) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        let socket = socket.filter(|p| p.exists()).ok_or_else(|| {
            AttestError::Runtime(format!(
                "the process runs in {kind} container `{}`, but no {kind} API socket is configured or present on this node",
                c.id
            ))
        })?;
        let selectors = docker_like(socket, kind, &c.id).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, selectors.clone());
        Ok(selectors)
    }
}

impl RuntimeAttestor {
    async fn containerd_selectors(&self, c: &ContainerRef) -> Result<Selectors, AttestError> {
        let key = (c.runtime, format!("{}/{}", c.namespace.as_deref().unwrap_or_default(), c.id));
        if let Some(s) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        let socket = match self.containerd.as_ref().filter(|p| p.exists()) {
            Some(s) => s,
            // A guess that cannot be checked is no container at all.
            None if c.guessed => return Ok(Selectors::new()),
            None => {
                return Err(AttestError::Runtime(format!(
                    "the process runs in containerd container `{}`, but no containerd socket is configured or present",
                    c.id
                )))
            }
        };
        let namespace = c.namespace.as_deref().unwrap_or("default");
        let selectors = match containerd_inspect(socket, namespace, &c.id).await? {
            Some(s) => s,
            None if c.guessed => return Ok(Selectors::new()),
            None => {
                return Err(AttestError::Runtime(format!("containerd does not know container `{}`", c.id)))
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, selectors.clone());
        Ok(selectors)
    }
}

/// Largest manifest or index read from containerd's content store.
const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Largest `containers/<id>/json` answer read (a container's labels and config; real ones are a few KiB).
const MAX_INSPECT_BYTES: usize = 4 * 1024 * 1024;
/// How long the runtime may take to describe a container before the caller is refused.
const RUNTIME_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn with_namespace<T>(body: T, namespace: &str) -> Result<tonic::Request<T>, AttestError> {
    let mut req = tonic::Request::new(body);
    let value = namespace
        .parse()
        .map_err(|_| AttestError::Runtime(format!("bad containerd namespace `{namespace}`")))?;
    req.metadata_mut().insert("containerd-namespace", value);
    Ok(req)
}

async fn read_blob(
    content: &mut vouch_proto::containerd::content::content_client::ContentClient<tonic::transport::Channel>,
    namespace: &str,
    digest: &str,
) -> Result<Value, AttestError> {
    use vouch_proto::containerd::content::ReadContentRequest;
    let err = |e: String| AttestError::Runtime(format!("containerd content {digest}: {e}"));
    let mut stream = content
        .read(with_namespace(
            ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 },
            namespace,
        )?)
        .await
        .map_err(|s| err(s.message().to_owned()))?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await.map_err(|s| err(s.message().to_owned()))? {
        data.extend_from_slice(&chunk.data);
        if data.len() > MAX_MANIFEST_BYTES {
            return Err(err("larger than a manifest can be".into()));
        }
    }
    serde_json::from_slice(&data).map_err(|e| err(format!("not JSON: {e}")))
}

/// This node's architecture in OCI's spelling (`GOARCH` names), for picking from image indexes.
pub const HOST_ARCH: &str = match std::env::consts::ARCH.as_bytes() {
    b"x86_64" => "amd64",
    b"aarch64" => "arm64",
    b"x86" => "386",
    b"powerpc64" => "ppc64le",
    _ => std::env::consts::ARCH,
};

/// The digest of the linux/`arch` manifest of an OCI image index (or Docker manifest list). Entries
/// without a platform of their own (`unknown/unknown`: build attestations) are never picked; an
/// index with a single image manifest is taken as it is. An index offering several platforms but
/// not this one is an error that lists them, rather than a guess.
pub fn pick_manifest(index: &Value, arch: &str) -> Result<String, String> {
    let manifests = index["manifests"].as_array().map(Vec::as_slice).unwrap_or_default();
    let images: Vec<&Value> = manifests
        .iter()
        .filter(|m| m["platform"]["os"] != "unknown" && m["platform"]["architecture"] != "unknown")
        .collect();
    let digest = |m: &Value| m["digest"].as_str().map(str::to_owned);
    if let Some(m) =
        images.iter().find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
    {
        return digest(m).ok_or_else(|| "image index entry has no digest".into());
    }
    match images.as_slice() {
        [] => Err("image index lists no image manifest".into()),
        [only] if only.get("platform").is_none() => {
            digest(only).ok_or_else(|| "image index entry has no digest".into())
        }
        several => {
            let offered: Vec<String> = several
                .iter()
                .map(|m| {
                    format!(
                        "{}/{}",
                        m["platform"]["os"].as_str().unwrap_or("?"),
                        m["platform"]["architecture"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            Err(format!("image index has no linux/{arch} manifest (it offers {})", offered.join(", ")))
        }
    }
}

/// Asks containerd about a container: `Ok(None)` if it does not know it.
async fn containerd_inspect(
    socket: &PathBuf,
    namespace: &str,
    id: &str,
) -> Result<Option<Selectors>, AttestError> {
    use vouch_proto::containerd::{containers, content, images};
    let channel = vouch_proto::uds_channel(socket.to_owned())
        .await
        .map_err(|e| AttestError::Runtime(format!("containerd API at {}: {e}", socket.display())))?;
    let mut cs = containers::containers_client::ContainersClient::new(channel.clone());
    let container =
        match cs.get(with_namespace(containers::GetContainerRequest { id: id.to_owned() }, namespace)?).await
        {
            Ok(r) => r
                .into_inner()
                .container
                .ok_or_else(|| AttestError::Runtime("containerd answered no container".into()))?,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(AttestError::Runtime(format!("containerd: {}", s.message()))),
        };
    let mut is = images::images_client::ImagesClient::new(channel.clone());
    let image = is
        .get(with_namespace(images::GetImageRequest { name: container.image.clone() }, namespace)?)
        .await
        .map_err(|s| {
            AttestError::Runtime(format!("containerd image `{}`: {}", container.image, s.message()))
        })?
        .into_inner()
        .image
        .ok_or_else(|| AttestError::Runtime("containerd answered no image".into()))?;
    let target = image.target.ok_or_else(|| AttestError::Runtime("containerd image has no target".into()))?;
    let mut content = content::content_client::ContentClient::new(channel);
    let mut doc = read_blob(&mut content, namespace, &target.digest).await?;
    // An index: the manifest of the platform this node runs (the container runs it too).
    if doc["manifests"].is_array() {
        let pick = pick_manifest(&doc, HOST_ARCH).map_err(AttestError::Runtime)?;
        doc = read_blob(&mut content, namespace, &pick).await?;
    }
    let config = doc["config"]["digest"]
        .as_str()
        .ok_or_else(|| AttestError::Runtime("image manifest has no config digest".into()))?
        .to_owned();
    let mut out = Selectors::new();
    let mut add = |k: &str, v: String| {
        if let Ok(s) = Selector::new(k, &v) {
            out.insert(s);
        }
    };
    add("containerd", format!("id:{id}"));
    add("containerd", format!("namespace:{namespace}"));
    add("containerd", format!("image-name:{}", container.image));
    add("containerd", format!("image-id:{config}"));
    add("container", format!("image-id:{config}"));
    add("container", "runtime:containerd".into());
    for (k, v) in &container.labels {
        add("containerd", format!("label:{k}:{v}"));
    }
    Ok(Some(out))
}

/// Inspects a container through the Docker Engine API (also podman's compatible API).
async fn docker_like(socket: &std::path::Path, kind: &str, id: &str) -> Result<Selectors, AttestError> {
    let (status, body) = vouch_http::UnixGetter::new(socket)
        .get(&format!("/containers/{id}/json"), MAX_INSPECT_BYTES, RUNTIME_TIMEOUT)
        .await
        .map_err(|e| {
            AttestError::Runtime(format!("{kind} API: {e} (is {kind} running, and is this its socket?)"))
        })?;
    if status == 404 {
        return Err(AttestError::Runtime(format!("{kind} does not know container `{id}`")));
    }
    if status != 200 {
        return Err(AttestError::Runtime(format!("{kind} API answered {status} for container `{id}`")));
    }
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| AttestError::Runtime(format!("{kind} API: unreadable answer: {e}")))?;
    Ok(docker_selectors(kind, &v))
}

/// Selectors from a Docker `containers/<id>/json` document.
pub fn docker_selectors(kind: &str, v: &Value) -> Selectors {
    let mut out = Selectors::new();
    let mut add = |k: &str, value: String| {
        if let Ok(s) = Selector::new(k, &value) {
            out.insert(s);
        }
    };
    if let Some(id) = v["Id"].as_str() {
        add(kind, format!("id:{id}"));
    }
    if let Some(name) = v["Name"].as_str() {
        add(kind, format!("name:{}", name.trim_start_matches('/')));
    }
    if let Some(image) = v["Image"].as_str() {
        // The image config digest; podman may give it without the algorithm prefix.
        let digest = if image.contains(':') { image.to_owned() } else { format!("sha256:{image}") };
        add(kind, format!("image-id:{digest}"));
        add("container", format!("image-id:{digest}"));
    }
    if let Some(name) = v["Config"]["Image"].as_str() {
        add(kind, format!("image-name:{name}"));
    }
    if let Some(labels) = v["Config"]["Labels"].as_object() {
        for (k, val) in labels {
            if let Some(val) = val.as_str() {
                add(kind, format!("label:{k}:{val}"));
            }
        }
    }
    add("container", format!("runtime:{kind}"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_platform_is_picked_from_an_image_index() {
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
        ]});
        assert_eq!(pick_manifest(&index, "arm64").unwrap(), "sha256:arm", "not always the first or amd64");
        assert_eq!(pick_manifest(&index, "amd64").unwrap(), "sha256:amd");
        let err = pick_manifest(&index, "s390x").unwrap_err();
        assert!(err.contains("no linux/s390x manifest") && err.contains("linux/arm64"), "{err}");
        // An attestation first, then the one image: the image.
        let index = serde_json::json!({"manifests": [
            {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
            {"digest": "sha256:img", "platform": {"os": "linux", "architecture": "amd64"}},
        ]});
        assert_eq!(pick_manifest(&index, "amd64").unwrap(), "sha256:img");
        // One manifest without a platform (as `ctr images export` writes): taken as it is.
        let index = serde_json::json!({"manifests": [{"digest": "sha256:one"}]});
        assert_eq!(pick_manifest(&index, "arm64").unwrap(), "sha256:one");
        assert!(pick_manifest(&serde_json::json!({"manifests": []}), "amd64").is_err());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(HOST_ARCH, "amd64");
    }

    #[test]
    fn selectors_from_an_inspect_document() {
        let doc = serde_json::json!({
            "Id": "abc123", "Name": "/payments-1", "Image": "sha256:feed",
            "Config": {"Image": "registry.example/payments:1.2", "Labels": {"app": "payments", "tier": "back end"}}
        });
        let got: Vec<String> = docker_selectors("docker", &doc).iter().map(ToString::to_string).collect();
        for want in [
            "docker:id:abc123",
            "docker:name:payments-1",
            "docker:image-id:sha256:feed",
            "container:image-id:sha256:feed",
            "docker:image-name:registry.example/payments:1.2",
            "docker:label:app:payments",
            "docker:label:tier:back end",
            "container:runtime:docker",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} in {got:?}");
        }
        let podman = serde_json::json!({"Image": "feed"});
        assert!(docker_selectors("podman", &podman)
            .iter()
            .any(|s| s.to_string() == "container:image-id:sha256:feed"));
        assert_eq!(docker_selectors("docker", &serde_json::json!(null)).len(), 1, "only the runtime itself");
    }

    #[tokio::test]
    async fn unambiguous_containers_without_their_runtime_fail_closed() {
        let r = RuntimeAttestor::new(
            Some("/nonexistent/docker.sock".into()),
            None,
            Some("/nonexistent/c.sock".into()),
        );
        let c = |runtime, guessed| ContainerRef {
            runtime,
            id: "x".into(),
            namespace: None,
            pod_uid: None,
            guessed,
        };
        assert!(r
            .selectors(&c(Runtime::Docker, false))
            .await
            .unwrap_err()
            .to_string()
            .contains("no docker API socket"));
        assert!(r.selectors(&c(Runtime::Podman, false)).await.is_err());
        assert!(r.selectors(&c(Runtime::CriO, false)).await.is_err());
        assert!(r.selectors(&c(Runtime::Containerd, false)).await.is_err());
        assert!(
            r.selectors(&c(Runtime::Containerd, true)).await.unwrap().is_empty(),
            "a guess is only a hint"
        );
    }
}
