//! Node attestation rules, as pure functions over the evidence and the time; the handlers in
//! `agent_api` do the I/O (the store, the keys) around them.
//!
//! - Join tokens: the agent ID is the one chosen when the token was made, else derived from the
//!   token's hash; one selector names the token.
//! - Kubernetes projected service-account tokens (PSAT): the token must be signed by a key of the
//!   cluster's service-account issuer, carry the configured issuer and audience, be unexpired, and
//!   belong to an allowed service account. The agent's SPIFFE ID and selectors come from the token's
//!   `kubernetes.io` claims, never from anything else the agent says.
//! - x509pop: a single-use challenge, answered for the certificate it was issued for, before it
//!   expires; the agent ID is the certificate's fingerprint, the selectors its subject and SANs.

use std::time::SystemTime;

use serde_json::Value;
use vouch_core::{ttl, Selector, Selectors, SpiffeId, TrustDomain};
use vouch_store::ChallengeUse;

use crate::config::PsatCluster;
use crate::reserved::AGENT_PREFIX;

/// What a valid PSAT establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsatIdentity {
    /// The agent's SPIFFE ID: `/agent/k8s_psat/<cluster>/<node uid, else pod uid>`.
    pub agent_id: SpiffeId,
    /// Node selectors: cluster, agent namespace, service account, pod and node.
    pub selectors: Selectors,
}

/// Why a PSAT was refused; the message is what the agent's operator reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PsatRefusal {
    /// Signed by a key the cluster's issuer does not have.
    #[error("signed by key `{kid}`, which is not a key of cluster `{cluster}`")]
    UnknownKey {
        /// The token's key id.
        kid: String,
        /// The cluster.
        cluster: String,
    },
    /// Not a valid JWS of the cluster's keys.
    #[error("{0}")]
    Signature(vouch_ca::JwtError),
    /// Another issuer.
    #[error("issuer `{got}` is not the configured `{want}`")]
    Issuer {
        /// The token's issuer.
        got: String,
        /// The configured one.
        want: String,
    },
    /// Not for vouch's audience.
    #[error("the token is not for audience `{0}`")]
    Audience(String),
    /// A claim every PSAT has is missing.
    #[error("claim `{claim}` is missing{hint}")]
    MissingClaim {
        /// The claim's path.
        claim: &'static str,
        /// What its absence suggests.
        hint: &'static str,
    },
    /// Expired.
    #[error("the token expired at {0} (unix seconds)")]
    Expired(i64),
    /// `nbf` in the future.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// A service account not allowed to attest agents.
    #[error("service account `{namespace}:{name}` may not attest agents in cluster `{cluster}`")]
    ServiceAccount {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The cluster.
        cluster: String,
    },
    /// A uid that cannot be part of a SPIFFE ID.
    #[error("the pod or node uid in the token is not a valid identifier")]
    BadUid,
    /// The agent ID could not be formed.
    #[error("agent id: {0}")]
    AgentId(vouch_core::IdError),
}

/// What node attestation establishes: the agent's SPIFFE ID and its node selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The agent's SPIFFE ID.
    pub agent_id: SpiffeId,
    /// Its node selectors.
    pub selectors: Selectors,
}

fn selectors_of(kind: &str, values: impl IntoIterator<Item = String>) -> Selectors {
    values.into_iter().filter_map(|v| Selector::new(kind, &v).ok()).collect()
}

/// Most labels on one join token.
pub const MAX_JOIN_TOKEN_LABELS: usize = 16;

/// The node selectors of join-token labels, `join_token:label:<key>:<value>`, or why a label is
/// refused: keys are 1-63 letters, digits, `.`, `_` or `-` (no `:`, so the selector reads back
/// unambiguously), values 1-253 bytes without control characters.
pub fn join_token_label_selectors(
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<Selector>, String> {
    if labels.len() > MAX_JOIN_TOKEN_LABELS {
        return Err(format!("labels: at most {MAX_JOIN_TOKEN_LABELS} are allowed"));
    }
    labels
        .iter()
        .map(|(k, v)| {
            let key_ok = !k.is_empty()
                && k.len() <= 63
                && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !key_ok {
                let k: String = k.chars().take(63).collect();
                return Err(format!("labels: key `{k}` must be 1-63 letters, digits, `.`, `_` or `-`"));
            }
            if v.is_empty() || v.len() > 253 || v.chars().any(char::is_control) {
                return Err(format!(
                    "labels: the value of `{k}` must be 1-253 bytes without control characters"
                ));
            }
            Selector::new("join_token", &format!("label:{k}:{v}")).map_err(|e| format!("labels: `{k}`: {e}"))
        })
        .collect()
}

/// The identity a join token gives: the agent ID chosen for it, else `/agent/join_token/<hash
/// prefix>`; the selector `join_token:<hash prefix>` and one `join_token:label:<key>:<value>` per
/// label chosen with the token. `token_hash` is the token's hex SHA-256.
pub fn join_token_identity(
    td: &TrustDomain,
    token_hash: &str,
    chosen: Option<SpiffeId>,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<NodeIdentity, vouch_core::IdError> {
    let short = token_hash.get(..16).unwrap_or(token_hash);
    let agent_id = match chosen {
        Some(id) => id,
        None => td.id_with_path(&format!("{AGENT_PREFIX}join_token/{short}"))?,
    };
    let mut selectors = selectors_of("join_token", [short.to_owned()]);
    // Checked when the token was made; a stored label that no longer passes gives no selector.
    for s in join_token_label_selectors(labels).unwrap_or_default() {
        selectors.insert(s);
    }
    Ok(NodeIdentity { agent_id, selectors })
}

/// Why an x509pop challenge answer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeRefusal {
    /// No such challenge: never issued, used already, or purged after it expired.
    #[error("unknown or already used challenge (a challenge is single use and expires); ask for a new one")]
    Unknown,
    /// Issued for another certificate.
    #[error("the challenge was issued for another certificate")]
    OtherCertificate,
    /// Too late.
    #[error("the challenge expired; ask for a new one")]
    Expired,
}

/// Checks an x509pop challenge as the store gave it up (consumed, with the fingerprint it was
/// issued for; unknown; expired) against the certificate that answers it. Expiry is decided by the
/// store, on the time the server passed it.
pub fn check_challenge(taken: ChallengeUse, fingerprint: &str) -> Result<(), ChallengeRefusal> {
    match taken {
        ChallengeUse::Unknown => Err(ChallengeRefusal::Unknown),
        ChallengeUse::Expired => Err(ChallengeRefusal::Expired),
        ChallengeUse::Consumed { fingerprint: fp } if fp != fingerprint => {
            Err(ChallengeRefusal::OtherCertificate)
        }
        ChallengeUse::Consumed { .. } => Ok(()),
    }
}

/// The identity a proven node certificate gives: `/agent/x509pop/<fingerprint>`, and selectors for
/// the CA set it chains to, its fingerprint, subject common name, DNS SANs and URI SANs. A value that
/// cannot be a selector (a control character, too long) gives no selector rather than an error: the
/// certificate chains to a configured CA, and the other facts still identify the node.
pub fn x509pop_identity(
    td: &TrustDomain,
    ca_set: &str,
    facts: &vouch_ca::x509::NodeCertFacts,
) -> Result<NodeIdentity, vouch_core::IdError> {
    let agent_id = td.id_with_path(&format!("{AGENT_PREFIX}x509pop/{}", facts.fingerprint))?;
    let values = [format!("ca:{ca_set}"), format!("fingerprint:{}", facts.fingerprint)]
        .into_iter()
        .chain(facts.common_name.iter().map(|cn| format!("subject:cn:{cn}")))
        .chain(facts.dns_names.iter().map(|d| format!("san:dns:{d}")))
        .chain(facts.uris.iter().map(|u| format!("san:uri:{u}")));
    Ok(NodeIdentity { agent_id, selectors: selectors_of("x509pop", values) })
}

fn claim<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Checks a PSAT against a cluster's settings at `now`. The refusal says what was wrong.
/// `keys` are the cluster's current signing keys (fetched and cached by the server).
pub fn check_psat(
    td: &TrustDomain,
    cluster: &PsatCluster,
    keys: &crate::issuer_keys::KeySet,
    token: &str,
    now: SystemTime,
) -> Result<PsatIdentity, PsatRefusal> {
    let missing = |claim: &'static str, hint: &'static str| PsatRefusal::MissingClaim { claim, hint };
    let (_, claims) = vouch_ca::jwt::verify_jws(token, keys).map_err(|e| match e {
        vouch_ca::JwtError::UnknownKid(kid) => PsatRefusal::UnknownKey { kid, cluster: cluster.name.clone() },
        other => PsatRefusal::Signature(other),
    })?;
    let iss = claims["iss"].as_str().unwrap_or_default();
    if iss != cluster.issuer {
        return Err(PsatRefusal::Issuer { got: iss.to_owned(), want: cluster.issuer.clone() });
    }
    let audience_ok = match &claims["aud"] {
        Value::String(a) => *a == cluster.audience,
        Value::Array(list) => list.iter().any(|a| a.as_str() == Some(&cluster.audience)),
        _ => false,
    };
    if !audience_ok {
        return Err(PsatRefusal::Audience(cluster.audience.clone()));
    }
    let now_s = ttl::unix_seconds(now);
    let exp = claims["exp"].as_i64().ok_or(missing("exp", ""))?;
    if exp <= now_s {
        return Err(PsatRefusal::Expired(exp));
    }
    if claims["nbf"].as_i64().is_some_and(|nbf| nbf > now_s) {
        return Err(PsatRefusal::NotYetValid);
    }
    let k8s = &claims["kubernetes.io"];
    let ns = claim(k8s, &["namespace"])
        .ok_or(missing("kubernetes.io.namespace", ": not a projected service-account token"))?;
    let sa =
        claim(k8s, &["serviceaccount", "name"]).ok_or(missing("kubernetes.io.serviceaccount.name", ""))?;
    if !cluster.service_accounts.iter().any(|(n, s)| n == ns && s == sa) {
        return Err(PsatRefusal::ServiceAccount {
            namespace: ns.to_owned(),
            name: sa.to_owned(),
            cluster: cluster.name.clone(),
        });
    }
    let pod_name = claim(k8s, &["pod", "name"])
        .ok_or(missing("kubernetes.io.pod.name", ": the token must be bound to a pod"))?;
    let pod_uid = claim(k8s, &["pod", "uid"]).ok_or(missing("kubernetes.io.pod.uid", ""))?;
    let node_name = claim(k8s, &["node", "name"]);
    let node_uid = claim(k8s, &["node", "uid"]);
    let id_part = node_uid.unwrap_or(pod_uid);
    let safe = |s: &str| {
        s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) && !s.is_empty()
    };
    if !safe(id_part) {
        return Err(PsatRefusal::BadUid);
    }
    let agent_id = td
        .id_with_path(&format!("{AGENT_PREFIX}k8s_psat/{}/{id_part}", cluster.name))
        .map_err(PsatRefusal::AgentId)?;
    let mut selectors = Selectors::new();
    let mut add = |k: &str, v: &str| {
        if let Ok(s) = Selector::new("k8s_psat", &format!("{k}:{v}")) {
            selectors.insert(s);
        }
    };
    add("cluster", &cluster.name);
    add("agent_ns", ns);
    add("agent_sa", sa);
    add("agent_pod_name", pod_name);
    add("agent_pod_uid", pod_uid);
    if let Some(n) = node_name {
        add("agent_node_name", n);
    }
    if let Some(n) = node_uid {
        add("agent_node_uid", n);
    }
    Ok(PsatIdentity { agent_id, selectors })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    #[test]
    fn join_tokens_give_the_chosen_id_or_one_from_the_hash() {
        let hash = "0123456789abcdef0123456789abcdef";
        let derived = join_token_identity(&td(), hash, None, &Default::default()).unwrap();
        assert_eq!(derived.agent_id.to_string(), "spiffe://example.org/agent/join_token/0123456789abcdef");
        let sels: Vec<String> = derived.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(sels, ["join_token:0123456789abcdef"]);
        let chosen = SpiffeId::parse("spiffe://example.org/agent/node-1").unwrap();
        let labels = [("env".to_owned(), "prod".to_owned())].into();
        let labelled = join_token_identity(&td(), hash, Some(chosen.clone()), &labels).unwrap();
        assert_eq!(labelled.agent_id, chosen);
        let sels: Vec<String> = labelled.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(sels, ["join_token:0123456789abcdef", "join_token:label:env:prod"]);
        for (k, v, want) in [
            ("", "x", "key ``"),
            ("a:b", "x", "key `a:b`"),
            ("env", "", "value of `env`"),
            ("env", "a\nb", "value of `env`"),
        ] {
            let err = join_token_label_selectors(&[(k.to_owned(), v.to_owned())].into()).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        let many = (0..17).map(|i| (format!("k{i}"), "v".to_owned())).collect();
        assert!(join_token_label_selectors(&many).unwrap_err().contains("at most 16"));
    }

    #[test]
    fn challenges_are_checked_for_existence_certificate_and_time() {
        let taken = |fp: &str| ChallengeUse::Consumed { fingerprint: fp.to_owned() };
        assert_eq!(check_challenge(taken("aa"), "aa"), Ok(()));
        assert_eq!(check_challenge(ChallengeUse::Unknown, "aa"), Err(ChallengeRefusal::Unknown));
        assert_eq!(check_challenge(taken("bb"), "aa"), Err(ChallengeRefusal::OtherCertificate));
        assert_eq!(check_challenge(ChallengeUse::Expired, "aa"), Err(ChallengeRefusal::Expired));
    }

    #[test]
    fn node_certificates_give_fingerprint_ids_and_subject_selectors() {
        let facts = vouch_ca::x509::NodeCertFacts {
            common_name: Some("node-1".into()),
            dns_names: vec!["node-1.nodes.example".into()],
            uris: vec!["spiffe://nodes.example/dc1/node-1".into()],
            fingerprint: "ab".repeat(32),
        };
        let id = x509pop_identity(&td(), "dc1", &facts).unwrap();
        assert_eq!(
            id.agent_id.to_string(),
            format!("spiffe://example.org/agent/x509pop/{}", "ab".repeat(32))
        );
        let sels: Vec<String> = id.selectors.iter().map(ToString::to_string).collect();
        for want in [
            "x509pop:ca:dc1",
            "x509pop:subject:cn:node-1",
            "x509pop:san:dns:node-1.nodes.example",
            "x509pop:san:uri:spiffe://nodes.example/dc1/node-1",
        ] {
            assert!(sels.iter().any(|s| s == want), "{want} in {sels:?}");
        }
        assert_eq!(sels.len(), 5, "ca, fingerprint, cn, one DNS SAN, one URI SAN: {sels:?}");
    }
}
