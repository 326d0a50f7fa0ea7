//! Grants: Cedar policies managed through the admin API (`/v1/policies`), and the decision API
//! (`POST /v1/authorize` on the server and on the agent's admin socket).

use serde::{Deserialize, Serialize};
pub use vouch_core::grant::{AccessRequest, Action, Resource};
use vouch_core::Namespace;

/// `PUT /v1/policies/{id}`: a new version of a policy; `POST /v1/policies/validate`: a check
/// without storing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPut {
    /// One Cedar policy (see `docs/policy.md` for the schema).
    pub text: String,
    /// The namespace the policy belongs to: when absent, the namespace of the policy's current
    /// version, or `default` for a new one. A policy of a namespace other than `default` decides
    /// only about that namespace's workloads and resources (`docs/namespaces.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Namespace>,
}

/// One version of a policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// The policy's id.
    pub id: String,
    /// Its version: 1 for the first, one more for each change.
    pub version: u64,
    /// The Cedar text; absent for a deletion (in a history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `permit` or `forbid` (absent for a deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// Unix seconds of the change.
    pub created_at: i64,
    /// Who made it.
    pub author: String,
    /// The namespace it belongs to.
    #[serde(default)]
    pub namespace: Namespace,
}

/// `GET /v1/policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyList {
    /// The current version of every policy, ordered by id.
    pub policies: Vec<PolicyInfo>,
}

/// `GET /v1/policies/{id}`: the current version (if not deleted) and every version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHistory {
    /// The policy's id.
    pub id: String,
    /// The current version, absent if the policy is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<PolicyInfo>,
    /// Every version, oldest first (deletions included).
    pub versions: Vec<PolicyInfo>,
}

/// `POST /v1/policies/validate`'s answer (a policy that fails is answered 200 with `valid: false`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Whether the policy parses and fits the schema.
    pub valid: bool,
    /// What is wrong, one message per problem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A policy given in a what-if test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyText {
    /// Its id.
    pub id: String,
    /// The Cedar text.
    pub text: String,
}

/// `POST /v1/policies/test`: a request decided against the stored policies as changed by `with`
/// (added, or replacing the stored policy of the same id) and `without` (left out); nothing is
/// stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyTest {
    /// The question.
    pub request: AccessRequest,
    /// Policies to add or replace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub with: Vec<PolicyText>,
    /// Ids of stored policies to leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub without: Vec<String>,
}

/// The answer to `POST /v1/authorize` (and to a test).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeResponse {
    /// Allow or deny.
    pub allow: bool,
    /// The policies that decided: the `permit`s that allowed, or the `forbid`s that denied; empty
    /// when no policy permits.
    pub reasons: Vec<String>,
    /// For people: `permitted by ...`, `denied by ...` or `no policy permits`.
    pub explanation: String,
    /// Policies that could not be evaluated for this request (they never allow).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip_and_refuse_unknown_fields() {
        let t: PolicyTest = serde_json::from_str(
            r#"{"request":{"principal":"spiffe://example.org/w","action":"write","resource":{"type":"secret","id":"w/k"}},"with":[{"id":"p","text":"permit(principal, action, resource);"}]}"#,
        )
        .unwrap();
        assert_eq!(t.request.action, Action::Write);
        assert!(serde_json::from_str::<PolicyPut>(r#"{"text":"x","extra":1}"#).is_err());
        let a = AuthorizeResponse {
            allow: false,
            reasons: vec![],
            explanation: "no policy permits".into(),
            errors: vec![],
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"allow":false,"reasons":[],"explanation":"no policy permits"}"#
        );
    }
}
