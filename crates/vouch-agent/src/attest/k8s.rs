//! `k8s:` selectors from the kubelet's pod list (`GET /pods` on the kubelet API), for a process whose
//! cgroup names a pod UID and a container id.
//!
//! The pod is found by UID and the container by its runtime id in the pod's container statuses
//! (init containers included), both as the kubelet reports them — never from the pod itself. The list
//! comes from [`super::kubelet`]; the parser and the matching are tested against recorded kubelet JSON
//! (the development machines have no kubelet).

use serde_json::Value;
use vouch_core::{Selector, Selectors};

use super::kubelet::KubeletError;

/// The `k8s:` selectors of container `container_id` in pod `pod_uid`, from a kubelet `PodList`.
/// An error says what could not be found; the caller then gives no identity.
pub fn k8s_selectors(pod_list: &Value, pod_uid: &str, container_id: &str) -> Result<Selectors, KubeletError> {
    let pod = pod_list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["metadata"]["uid"].as_str() == Some(pod_uid))
        .ok_or_else(|| KubeletError::NoPod(pod_uid.to_owned()))?;
    let statuses = ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"]
        .iter()
        .flat_map(|k| pod["status"][*k].as_array().into_iter().flatten());
    let status = statuses
        .clone()
        .find(|s| {
            // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`
            s["containerID"]
                .as_str()
                .and_then(|c| c.split_once("://"))
                .is_some_and(|(_, id)| id == container_id)
        })
        .ok_or_else(|| KubeletError::NoContainer {
            pod: pod_uid.to_owned(),
            container: container_id.to_owned(),
        })?;
    let mut out = Selectors::new();
    let mut add = |k: &str, v: &str| {
        if let Ok(s) = Selector::new("k8s", &format!("{k}:{v}")) {
            out.insert(s);
        }
    };
    let meta = &pod["metadata"];
    for (k, path) in [("ns", &meta["namespace"]), ("pod-name", &meta["name"]), ("pod-uid", &meta["uid"])] {
        if let Some(v) = path.as_str() {
            add(k, v);
        }
    }
    if let Some(sa) = pod["spec"]["serviceAccountName"].as_str() {
        add("sa", sa);
    }
    if let Some(node) = pod["spec"]["nodeName"].as_str() {
        add("node-name", node);
    }
    if let Some(labels) = meta["labels"].as_object() {
        for (k, v) in labels {
            if let Some(v) = v.as_str() {
                add("pod-label", &format!("{k}:{v}"));
            }
        }
    }
    for (k, field) in
        [("container-name", "name"), ("container-image", "image"), ("container-image-id", "imageID")]
    {
        if let Some(v) = status[field].as_str() {
            add(k, v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "3f6b0c9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";
    const POD: &str = "1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d";

    fn pods() -> Value {
        serde_json::from_str(include_str!("../../tests/fixtures/kubelet-pods.json")).unwrap()
    }

    fn strings(s: &Selectors) -> Vec<String> {
        s.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn selectors_of_a_container_in_a_recorded_pod_list() {
        let got = strings(&k8s_selectors(&pods(), POD, APP).unwrap());
        for want in [
            "k8s:ns:prod",
            "k8s:sa:payments",
            "k8s:pod-name:payments-7d9f8c6b5-x2kqp",
            "k8s:pod-uid:1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
            "k8s:pod-label:app:payments",
            "k8s:node-name:worker-1",
            "k8s:container-name:app",
            "k8s:container-image:registry.example/payments:1.2",
            "k8s:container-image-id:registry.example/payments@sha256:2222",
        ] {
            assert!(got.iter().any(|g| g == want), "{want} in {got:?}");
        }
        assert!(!got.iter().any(|g| g.contains("envoy")), "the sidecar's facts are not the app's");
        let init = strings(&k8s_selectors(&pods(), POD, &"aaaa0000".repeat(8)).unwrap());
        assert!(init.iter().any(|g| g == "k8s:container-name:migrate"), "init containers are found too");
    }

    #[test]
    fn matching_uses_the_entry_subset_rule() {
        let entry: Selectors = ["k8s:ns:prod", "k8s:sa:payments", "k8s:container-name:app"]
            .iter()
            .map(|s| Selector::parse(s).unwrap())
            .collect();
        assert!(entry.is_subset_of(&k8s_selectors(&pods(), POD, APP).unwrap()));
        let sidecar = k8s_selectors(&pods(), POD, &"bbbb0000".repeat(8)).unwrap();
        assert!(!entry.is_subset_of(&sidecar), "the proxy container of the same pod does not match");
    }

    #[test]
    fn unknown_pods_and_containers_are_errors() {
        assert!(k8s_selectors(&pods(), "nope", APP).unwrap_err().to_string().contains("no pod with uid"));
        assert!(k8s_selectors(&pods(), POD, "cccc")
            .unwrap_err()
            .to_string()
            .contains("no container with id"));
        assert!(k8s_selectors(&serde_json::json!({"items": "garbage"}), POD, APP).is_err());
        assert!(k8s_selectors(&serde_json::json!(null), POD, APP).is_err());
    }
}
