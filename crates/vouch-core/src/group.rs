//! Node groups: SPIRE's node aliases. A group has a SPIFFE ID in the reserved namespace
//! `/vouch/group/<name>` and a set of node selectors; an agent belongs to it when the group's
//! selectors are a subset of the node selectors its attestation established (the same subset rule as
//! entries and workload selectors). An entry parented to the group's ID is served by every member, so
//! "every node of cluster prod" is one entry instead of one per node.
//!
//! Group selectors must be of a node attestation type ([`NODE_SELECTOR_TYPES`]): a selector of any
//! other type could never be among an agent's node selectors, so such a group would silently have no
//! members.

use std::fmt;

use crate::selector::{Selector, SelectorError, Selectors};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// The path prefix of every node group's SPIFFE ID.
pub const GROUP_PREFIX: &str = "/vouch/group/";
/// Most selectors on one group.
pub const MAX_GROUP_SELECTORS: usize = 64;
/// Longest owner or purpose text.
pub const MAX_GROUP_TEXT_LEN: usize = 1024;
/// The selector types node attestation produces: `join_token`, `k8s_psat` and `x509pop`.
pub const NODE_SELECTOR_TYPES: &[&str] = &["join_token", "k8s_psat", "x509pop"];

/// Why a group was refused. Messages name the field and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The SPIFFE ID is not `spiffe://<td>/vouch/group/<name>`.
    #[error("{field}: `{id}` is not a node group ID: node groups are named `spiffe://{trust_domain}{GROUP_PREFIX}<name>`, <name> being 1-64 letters, digits, `.`, `_` or `-`")]
    BadId {
        /// The request field.
        field: &'static str,
        /// The offending ID (shortened if long).
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// The name has characters outside `A-Z a-z 0-9 . _ -` or a bad length.
    #[error("group name `{0}` must be 1-64 characters of letters, digits, `.`, `_` or `-`")]
    BadName(String),
    /// No selectors: a group without selectors would take in every agent.
    #[error("selectors: at least one node selector is required (a group without selectors would take in every agent)")]
    NoSelectors,
    /// Too many selectors.
    #[error("selectors: at most {MAX_GROUP_SELECTORS} are allowed")]
    TooManySelectors,
    /// A selector of a type node attestation never produces.
    #[error("selectors: `{0}` is not a node selector: a group's selectors must be of a node attestation type (`join_token:`, `k8s_psat:` or `x509pop:`; see `vouch agent list` for what each agent has), workload selectors belong on entries")]
    NotNodeSelector(String),
    /// A selector failed to parse or is a SPIRE spelling vouch does not have.
    #[error("selectors: {0}")]
    Selector(#[from] SelectorError),
    /// A free-text field is too long or has control characters.
    #[error("{0}: must be at most {MAX_GROUP_TEXT_LEN} bytes without control characters")]
    BadText(&'static str),
}

/// The name of a node group: the last segment of its SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct GroupName(String);

impl GroupName {
    /// Checks and wraps a group name.
    pub fn new(name: &str) -> Result<Self, GroupError> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            && name != "."
            && name != "..";
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(GroupError::BadName(name.chars().take(64).collect()))
        }
    }

    /// The name of the group whose SPIFFE ID is `id`, which must be `spiffe://<td>/vouch/group/<name>`.
    pub fn from_id(field: &'static str, id: &SpiffeId, td: &TrustDomain) -> Result<Self, GroupError> {
        let bad = || GroupError::BadId {
            field,
            id: id.to_string().chars().take(300).collect(),
            trust_domain: td.to_string(),
        };
        if id.trust_domain() != td {
            return Err(bad());
        }
        let name = id.path().strip_prefix(GROUP_PREFIX).ok_or_else(bad)?;
        Self::new(name).map_err(|_| bad())
    }

    /// The group's SPIFFE ID in trust domain `td`.
    pub fn id(&self, td: &TrustDomain) -> SpiffeId {
        // A checked name is one valid path segment, so this cannot fail; the trust domain's own ID
        // stands in for the impossible case rather than a panic.
        td.id_with_path(&format!("{GROUP_PREFIX}{}", self.0)).unwrap_or_else(|_| td.id())
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for GroupName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        GroupName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Whether `id` is in the node groups' namespace (valid group ID or not).
pub fn is_group_namespace(id: &SpiffeId) -> bool {
    id.path().starts_with(GROUP_PREFIX)
}

/// What an administrator asks for when creating a group. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeGroupSpec {
    /// The group's SPIFFE ID, `spiffe://<td>/vouch/group/<name>`: entries are parented to it.
    pub spiffe_id: SpiffeId,
    /// Node selectors; an agent whose node selectors include all of them is a member.
    pub selectors: Vec<Selector>,
    /// Who answers for this group (governance).
    #[serde(default)]
    pub owner: String,
    /// Why this group exists (governance).
    #[serde(default)]
    pub purpose: String,
}

/// A node group as stored: always valid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeGroup {
    /// The group's name, the last segment of its SPIFFE ID.
    pub name: GroupName,
    /// Its SPIFFE ID, `spiffe://<td>/vouch/group/<name>`.
    pub spiffe_id: SpiffeId,
    /// Node selectors (never empty, each of a node attestation type).
    pub selectors: Selectors,
    /// Unix seconds of creation.
    pub created_at: i64,
    /// Who answers for this group.
    pub owner: String,
    /// Why this group exists.
    pub purpose: String,
}

fn check_text(field: &'static str, text: &str) -> Result<(), GroupError> {
    if text.len() > MAX_GROUP_TEXT_LEN || text.chars().any(char::is_control) {
        return Err(GroupError::BadText(field));
    }
    Ok(())
}

impl NodeGroup {
    /// Builds a group from a spec, checking every rule against the server's trust domain; `now` is
    /// its creation time (unix seconds).
    pub fn create(spec: NodeGroupSpec, td: &TrustDomain, now: i64) -> Result<Self, GroupError> {
        let name = GroupName::from_id("spiffe_id", &spec.spiffe_id, td)?;
        if spec.selectors.is_empty() {
            return Err(GroupError::NoSelectors);
        }
        if spec.selectors.len() > MAX_GROUP_SELECTORS {
            return Err(GroupError::TooManySelectors);
        }
        let mut selectors = Selectors::new();
        for s in spec.selectors {
            // SPIRE's node selector spellings are vouch's or refused with a reason, as on entries.
            let s = crate::spire::canonical(s)?;
            if !NODE_SELECTOR_TYPES.contains(&s.kind()) {
                return Err(GroupError::NotNodeSelector(s.to_string().chars().take(200).collect()));
            }
            selectors.insert(s);
        }
        check_text("owner", &spec.owner)?;
        check_text("purpose", &spec.purpose)?;
        Ok(Self {
            spiffe_id: name.id(td),
            name,
            selectors,
            created_at: now,
            owner: spec.owner,
            purpose: spec.purpose,
        })
    }

    /// Whether an agent with node selectors `node` belongs to this group.
    pub fn admits(&self, node: &Selectors) -> bool {
        self.selectors.is_subset_of(node)
    }
}

/// The groups an agent with node selectors `node` belongs to.
pub fn member_groups<'a>(
    groups: impl IntoIterator<Item = &'a NodeGroup>,
    node: &'a Selectors,
) -> impl Iterator<Item = &'a NodeGroup> {
    groups.into_iter().filter(move |g| g.admits(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn spec(id: &str, selectors: &[&str]) -> NodeGroupSpec {
        NodeGroupSpec {
            spiffe_id: SpiffeId::parse(id).unwrap(),
            selectors: selectors.iter().map(|s| Selector::parse(s).unwrap()).collect(),
            owner: String::new(),
            purpose: String::new(),
        }
    }

    fn sels(list: &[&str]) -> Selectors {
        list.iter().map(|s| Selector::parse(s).unwrap()).collect()
    }

    #[test]
    fn membership_is_the_subset_rule() {
        let g = NodeGroup::create(
            spec(
                "spiffe://example.org/vouch/group/prod",
                &["k8s_psat:cluster:prod", "k8s_psat:agent_ns:vouch"],
            ),
            &td(),
            10,
        )
        .unwrap();
        assert_eq!(g.name.as_str(), "prod");
        assert_eq!(g.spiffe_id.to_string(), "spiffe://example.org/vouch/group/prod");
        let node = sels(&["k8s_psat:cluster:prod", "k8s_psat:agent_ns:vouch", "k8s_psat:agent_node_name:n1"]);
        assert!(g.admits(&node));
        assert!(!g.admits(&sels(&["k8s_psat:cluster:prod"])), "every selector of the group is needed");
        assert!(!g.admits(&sels(&["k8s_psat:cluster:staging", "k8s_psat:agent_ns:vouch"])));
        let all = [g.clone()];
        assert_eq!(member_groups(&all, &node).count(), 1);
    }

    #[test]
    fn rules_each_have_an_error() {
        let cases: &[(NodeGroupSpec, &str)] = &[
            (spec("spiffe://example.org/group/prod", &["x509pop:ca:dc1"]), "is not a node group ID"),
            (spec("spiffe://example.org/vouch/group/a/b", &["x509pop:ca:dc1"]), "is not a node group ID"),
            (spec("spiffe://other.org/vouch/group/prod", &["x509pop:ca:dc1"]), "is not a node group ID"),
            (spec("spiffe://example.org/vouch/group/prod", &[]), "at least one node selector"),
            (spec("spiffe://example.org/vouch/group/prod", &["unix:uid:0"]), "is not a node selector"),
            (spec("spiffe://example.org/vouch/group/prod", &["x509pop:serialnumber:01"]), "no serial-number"),
        ];
        for (s, want) in cases {
            let err = NodeGroup::create(s.clone(), &td(), 1).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
        let mut s = spec("spiffe://example.org/vouch/group/prod", &["x509pop:ca:dc1"]);
        s.owner = "a\u{7}".into();
        assert_eq!(NodeGroup::create(s, &td(), 1).unwrap_err(), GroupError::BadText("owner"));
    }

    #[test]
    fn names_and_ids() {
        for ok in ["prod", "dc-1", "a.b_c", "X"] {
            let name = GroupName::new(ok).unwrap();
            assert_eq!(GroupName::from_id("f", &name.id(&td()), &td()).unwrap(), name);
        }
        for bad in ["", ".", "..", "a/b", "a b", &"a".repeat(65)] {
            assert!(GroupName::new(bad).is_err(), "{bad}");
        }
        let id = SpiffeId::parse("spiffe://example.org/vouch/group/x").unwrap();
        assert!(is_group_namespace(&id));
        assert!(!is_group_namespace(&SpiffeId::parse("spiffe://example.org/vouch/server").unwrap()));
    }
}
