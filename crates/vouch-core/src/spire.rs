//! SPIRE's selector spellings, so that registrations written for SPIRE can be brought to vouch.
//!
//! SPIRE and vouch often observe the same fact about a workload or node but spell it differently
//! (SPIRE's `docker:image_config_digest:` is vouch's `docker:image-id:`). When an entry is created or
//! updated, [`canonical`] rewrites such a selector to vouch's spelling, so the stored entry holds what
//! vouch's attestors produce and matching is unchanged. A SPIRE spelling of a fact vouch does not
//! produce, or whose nearest vouch selector states a different fact, is refused with a message that
//! says so and what to use instead: an entry that could never match is worse than an error.
//!
//! [`SPELLINGS`] is the one table of these decisions; `docs/migrating-from-spire.md` explains it.
//! Spellings that are the same in both (`unix:uid:`, `k8s:ns:`, `docker:label:` ...) are listed too,
//! so the table says what was compared. Selectors of other types pass unchanged.
//!
//! Facts are from SPIRE's workload attestors (`unix`, `docker`, `k8s`, and the sigstore options of the
//! latter two) and node attestors (`k8s_psat`, `x509pop`), as documented and implemented in SPIRE 1.x.

use crate::selector::{Selector, SelectorError};

/// What vouch does with one SPIRE spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// vouch produces the same fact under the same spelling: kept as written.
    Same,
    /// vouch produces the same fact under this prefix: the prefix is replaced.
    Alias(&'static str),
    /// SPIRE's `k8s:container-image:` holds either the image as the kubelet reports it or the resolved
    /// image ID (`repo@sha256:...`); vouch keeps the two apart. A value with `@` is taken as the image
    /// ID and gets this prefix; any other value is kept as written.
    ImageOrImageId(&'static str),
    /// vouch produces no such fact; the text says what is closest.
    NotInVouch(&'static str),
    /// vouch's nearest selector states a different fact; the text explains the difference and what
    /// to use instead.
    Differs(&'static str),
}

/// One row of the table: a SPIRE prefix and what vouch does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spelling {
    /// The start of the selector as SPIRE writes it: a type and sub-kind through the colon
    /// (`docker:image_id:`), a whole type (`systemd:`), or a family (`docker:image-signature`).
    pub spire: &'static str,
    /// What vouch does with it.
    pub treatment: Treatment,
}

const fn row(spire: &'static str, treatment: Treatment) -> Spelling {
    Spelling { spire, treatment }
}

use Treatment::{Alias, Differs, ImageOrImageId, NotInVouch, Same};

const SIGSTORE: &str = "vouch does not verify image signatures or attestations; pin the image instead \
    (`container:image-id:sha256:<config digest>`, or `k8s:container-image-id:<repo>@sha256:<digest>` in Kubernetes)";

/// The table. The longest matching prefix decides, so `x509pop:san:dns:` is looked at before
/// `x509pop:san:`.
pub const SPELLINGS: &[Spelling] = &[
    // unix workload attestor: the same facts, the same spellings.
    row("unix:uid:", Same),
    row("unix:user:", Same),
    row("unix:gid:", Same),
    row("unix:group:", Same),
    row("unix:supplementary_gid:", Same),
    row("unix:supplementary_group:", Same),
    row("unix:path:", Same),
    row("unix:sha256:", Same),
    // docker workload attestor (SPIRE also uses `docker:` for podman containers; vouch says `podman:`).
    row("docker:label:", Same),
    // SPIRE's image_id is the container's `Config.Image`, the reference it was started with
    // (`envoyproxy/envoy:v1.29`, or an id if started by id): vouch's image-name, the same field.
    row("docker:image_id:", Alias("docker:image-name:")),
    // The image config digest, the runtime's image ID: vouch's image-id.
    row("docker:image_config_digest:", Alias("docker:image-id:")),
    row(
        "docker:env:",
        NotInVouch(
            "vouch makes no selectors from environment variables (they often hold secrets, and selectors are \
             logged and stored); set a label and use `docker:label:<key>:<value>`",
        ),
    ),
    row("docker:image-signature", NotInVouch(SIGSTORE)),
    row("docker:image-attestations:", NotInVouch(SIGSTORE)),
    // k8s workload attestor.
    row("k8s:ns:", Same),
    row("k8s:sa:", Same),
    row("k8s:pod-name:", Same),
    row("k8s:pod-uid:", Same),
    row("k8s:node-name:", Same),
    row("k8s:pod-label:", Same),
    row("k8s:container-name:", Same),
    row("k8s:container-image:", ImageOrImageId("k8s:container-image-id:")),
    row(
        "k8s:pod-image:",
        Differs(
            "SPIRE's pod-image matches when any container of the pod (a sidecar too) runs the image, while \
             vouch's image selectors describe the calling container only; use `k8s:container-image:<image>` \
             or `k8s:container-image-id:<repo>@sha256:<digest>` with `k8s:container-name:<name>`",
        ),
    ),
    row(
        "k8s:pod-init-image:",
        Differs(
            "SPIRE's pod-init-image matches when any init container of the pod runs the image, while vouch's \
             image selectors describe the calling container only; use `k8s:container-image:<image>` with \
             `k8s:container-name:<name>`",
        ),
    ),
    row(
        "k8s:pod-image-count:",
        NotInVouch("vouch does not count a pod's containers; use `k8s:pod-label:` or `k8s:container-name:`"),
    ),
    row(
        "k8s:pod-init-image-count:",
        NotInVouch("vouch does not count a pod's init containers; use `k8s:pod-label:` or `k8s:container-name:`"),
    ),
    row(
        "k8s:pod-owner:",
        NotInVouch(
            "vouch does not read owner references; use `k8s:pod-label:<key>:<value>` (a Deployment's \
             selector labels, say) or `k8s:sa:`",
        ),
    ),
    row(
        "k8s:pod-owner-uid:",
        NotInVouch("vouch does not read owner references; use `k8s:pod-label:<key>:<value>` or `k8s:sa:`"),
    ),
    row(
        "k8s:ns-label:",
        NotInVouch("vouch does not read namespace labels (the kubelet does not serve them); use `k8s:ns:<name>`"),
    ),
    row("k8s:image-signature", NotInVouch(SIGSTORE)),
    row("k8s:image-attestations:", NotInVouch(SIGSTORE)),
    // k8s_psat node attestor.
    row("k8s_psat:cluster:", Same),
    row("k8s_psat:agent_ns:", Same),
    row("k8s_psat:agent_sa:", Same),
    row("k8s_psat:agent_pod_name:", Same),
    row("k8s_psat:agent_pod_uid:", Same),
    row("k8s_psat:agent_node_name:", Same),
    row("k8s_psat:agent_node_uid:", Same),
    row(
        "k8s_psat:agent_node_ip:",
        NotInVouch(
            "vouch's k8s_psat selectors come from the token alone and the token has no node IP; use \
             `k8s_psat:agent_node_name:` or `k8s_psat:agent_node_uid:`",
        ),
    ),
    row(
        "k8s_psat:agent_node_label:",
        NotInVouch(
            "vouch's k8s_psat selectors come from the token alone, without asking the API server for the \
             node's labels; use `k8s_psat:agent_node_name:` or `k8s_psat:agent_node_uid:`",
        ),
    ),
    row(
        "k8s_psat:agent_pod_label:",
        NotInVouch(
            "vouch's k8s_psat selectors come from the token alone, without asking the API server for the \
             pod's labels; use `k8s_psat:agent_sa:` and `k8s_psat:agent_ns:`",
        ),
    ),
    // x509pop node attestor.
    row("x509pop:subject:cn:", Same),
    row(
        "x509pop:ca:fingerprint:",
        Differs(
            "SPIRE names each CA certificate of the chain by its SHA-1 fingerprint, while vouch's `x509pop:ca:` \
             names the configured CA set (`[[node_attestation.x509pop]] name`); use `x509pop:ca:<set name>`",
        ),
    ),
    row(
        "x509pop:serialnumber:",
        NotInVouch(
            "vouch has no serial-number selector; use `x509pop:fingerprint:<sha256 of the node certificate>` \
             or `x509pop:subject:cn:`",
        ),
    ),
    row("x509pop:san:dns:", Same),
    // vouch's own selector for a whole URI SAN; SPIRE would read `san:uri:<v>` from a URI SAN
    // `x509pop://<td>/uri/<v>`, which cannot be told apart (as with `san:dns:`).
    row("x509pop:san:uri:", Same),
    row(
        "x509pop:san:",
        Differs(
            "SPIRE's x509pop san selectors come from `x509pop://<trust domain>/<key>/<value>` URI SANs, which \
             vouch does not split into key and value; vouch has `x509pop:san:dns:<name>` for DNS SANs and \
             `x509pop:san:uri:<whole URI>` for URI SANs",
        ),
    ),
    // Attestors SPIRE has and vouch has not.
    row("systemd:", NotInVouch("vouch has no systemd attestor; use `unix:path:`, `unix:sha256:` and `unix:uid:`")),
    row("windows:", NotInVouch("vouch runs on Linux only and has no windows attestor")),
    row("k8s_sat:", NotInVouch("vouch attests Kubernetes nodes with projected tokens only; use `k8s_psat:`")),
    row("aws_iid:", NotInVouch("vouch has no AWS node attestor; use join tokens, k8s_psat or x509pop")),
    row("gcp_iit:", NotInVouch("vouch has no GCP node attestor; use join tokens, k8s_psat or x509pop")),
    row("azure_msi:", NotInVouch("vouch has no Azure node attestor; use join tokens, k8s_psat or x509pop")),
    row("tpm_devid:", NotInVouch("vouch has no TPM node attestor; use x509pop with the node's certificate")),
];

/// The row of the table that decides `text` (the longest matching prefix), if any.
pub fn spelling_of(text: &str) -> Option<&'static Spelling> {
    SPELLINGS.iter().filter(|s| text.starts_with(s.spire)).max_by_key(|s| s.spire.len())
}

/// The selector an entry stores for `selector`: SPIRE's spelling of a fact vouch produces becomes
/// vouch's, SPIRE's spelling of a fact vouch lacks is refused, anything else is returned as is.
pub fn canonical(selector: Selector) -> Result<Selector, SelectorError> {
    let text = selector.to_string();
    let Some(row) = spelling_of(&text) else {
        return Ok(selector);
    };
    let refused = |why| (text.chars().take(120).collect::<String>(), why);
    match row.treatment {
        Same => Ok(selector),
        Alias(to) => Selector::parse(&format!("{to}{}", &text[row.spire.len()..])),
        ImageOrImageId(id) => {
            let value = &text[row.spire.len()..];
            if value.contains('@') {
                Selector::parse(&format!("{id}{value}"))
            } else {
                Ok(selector)
            }
        }
        NotInVouch(why) => {
            let (selector, why) = refused(why);
            Err(SelectorError::NotInVouch { selector, why })
        }
        Differs(why) => {
            let (selector, why) = refused(why);
            Err(SelectorError::Differs { selector, why })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> Result<String, SelectorError> {
        canonical(Selector::parse(text).unwrap()).map(|s| s.to_string())
    }

    #[test]
    fn aliases_become_vouch_spellings() {
        let digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let cases = [
            (
                "docker:image_id:envoyproxy/envoy:contrib-v1.29.1",
                "docker:image-name:envoyproxy/envoy:contrib-v1.29.1",
            ),
            // Started by id: still the reference it was started with, so still image-name.
            (&format!("docker:image_id:{digest}"), &format!("docker:image-name:{digest}")),
            // A digest reference names a manifest, not the config: image-name, never image-id.
            ("docker:image_id:repo.example/app@sha256:aa", "docker:image-name:repo.example/app@sha256:aa"),
            (&format!("docker:image_config_digest:{digest}"), &format!("docker:image-id:{digest}")),
            (
                "k8s:container-image:docker.io/envoyproxy/envoy-alpine@sha256:bf86",
                "k8s:container-image-id:docker.io/envoyproxy/envoy-alpine@sha256:bf86",
            ),
        ];
        for (spire, vouch) in cases {
            assert_eq!(canon(spire).as_deref(), Ok(vouch), "{spire}");
            assert_eq!(canon(vouch).as_deref(), Ok(vouch), "vouch's own spelling is kept: {vouch}");
        }
    }

    #[test]
    fn same_spellings_and_other_selectors_pass_unchanged() {
        for s in [
            "unix:uid:1000",
            "unix:user:nginx",
            "unix:gid:1000",
            "unix:group:www-data",
            "unix:supplementary_gid:2000",
            "unix:supplementary_group:video",
            "unix:path:/usr/bin/nginx",
            "unix:sha256:3a6e",
            "docker:label:com.example.name:foo",
            "k8s:ns:prod",
            "k8s:sa:payments",
            "k8s:pod-label:app:payments",
            "k8s:pod-uid:1a2b",
            "k8s:pod-name:payments-x",
            "k8s:node-name:worker-1",
            "k8s:container-name:app",
            "k8s:container-image:docker.io/envoyproxy/envoy-alpine:v1.16.0",
            "k8s_psat:cluster:prod",
            "k8s_psat:agent_ns:spire",
            "k8s_psat:agent_sa:spire-agent",
            "k8s_psat:agent_node_uid:77",
            "x509pop:subject:cn:node-1",
            "x509pop:san:dns:node-1.example",
            "x509pop:san:uri:spiffe://nodes.example/node-1",
            // vouch's own selectors that SPIRE does not have.
            "x509pop:ca:dc1",
            "x509pop:fingerprint:ab",
            "container:image-id:sha256:aa",
            "podman:label:app:web",
            "containerd:namespace:k8s.io",
            "join_token:0123456789abcdef",
            "vouch:admin:alice",
            "custom:anything:at:all",
        ] {
            assert_eq!(canon(s).as_deref(), Ok(s), "{s}");
        }
    }

    #[test]
    fn facts_vouch_lacks_are_refused_with_what_to_use() {
        let cases = [
            ("docker:env:ENVIRONMENT=prod", "docker:label:"),
            ("docker:image-signature:verified", "container:image-id:"),
            ("docker:image-signature-subject:a@example.com", "container:image-id:"),
            ("k8s:pod-image-count:2", "k8s:pod-label:"),
            ("k8s:pod-owner:ReplicaSet:web-5d8", "k8s:pod-label:"),
            ("k8s:pod-owner-uid:ReplicaSet:77", "k8s:pod-label:"),
            ("k8s:ns-label:team:a", "k8s:ns:"),
            ("k8s:image-signature-issuer:https://accounts.google.com", "k8s:container-image-id:"),
            ("k8s_psat:agent_node_ip:10.0.0.1", "agent_node_name"),
            ("k8s_psat:agent_node_label:zone:a", "agent_node_name"),
            ("k8s_psat:agent_pod_label:app:spire", "agent_sa"),
            ("x509pop:serialnumber:0a", "x509pop:fingerprint:"),
            ("systemd:id:nginx.service", "unix:path:"),
            ("aws_iid:tag:role:web", "x509pop"),
        ];
        for (input, hint) in cases {
            let err = canon(input).unwrap_err();
            assert!(matches!(err, SelectorError::NotInVouch { .. }), "{input}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{input}`")), "{msg}");
            assert!(msg.contains("vouch has no such selector"), "{msg}");
            assert!(msg.contains(hint), "{input}: {msg}");
        }
    }

    #[test]
    fn different_facts_are_refused_with_the_difference() {
        let cases = [
            ("k8s:pod-image:docker.io/envoyproxy/envoy:v1", "any container of the pod"),
            ("k8s:pod-init-image:busybox", "any init container"),
            ("x509pop:ca:fingerprint:0123abcd", "x509pop:ca:<set name>"),
            ("x509pop:san:role:web", "URI SANs"),
        ];
        for (input, why) in cases {
            let err = canon(input).unwrap_err();
            assert!(matches!(err, SelectorError::Differs { .. }), "{input}: {err:?}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("`{input}`")) && msg.contains(why), "{msg}");
        }
    }

    #[test]
    fn the_table_is_well_formed() {
        for (i, row) in SPELLINGS.iter().enumerate() {
            assert!(row.spire.contains(':'), "{} names a type", row.spire);
            assert!(!SPELLINGS[..i].iter().any(|r| r.spire == row.spire), "{} is listed once", row.spire);
            if let Alias(to) | ImageOrImageId(to) = row.treatment {
                assert!(to.ends_with(':') && spelling_of(to).is_none_or(|r| r.treatment == Same), "{to}");
            }
        }
        assert_eq!(spelling_of("x509pop:san:dns:a").map(|r| r.treatment), Some(Same), "longest prefix wins");
    }

    #[test]
    fn a_long_refused_selector_is_not_echoed_whole() {
        let long = format!("docker:env:A={}", "x".repeat(2000));
        assert!(canon(&long).unwrap_err().to_string().len() < 600);
    }
}
