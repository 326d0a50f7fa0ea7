//! The question a grant answers: may this workload do this action to this resource?
//!
//! These are the parsed forms of an authorization request, shared by the policy engine
//! (`vouch-policy`), the server's decision API and the agent. The principal is always a workload
//! named by its SPIFFE ID; resources are secrets (by path), database roles (by name) and services
//! (by SPIFFE ID); actions are a fixed, named set, so a typo in a request is an error and not a
//! silent deny.

use std::fmt;
use std::str::FromStr;

use crate::SpiffeId;

/// Longest secret path or database role name, in bytes.
pub const MAX_RESOURCE_NAME_LEN: usize = 512;

/// Errors of parsing a request's parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The action is not one vouch knows.
    #[error("unknown action `{0}`: use one of read, write, connect, issue")]
    UnknownAction(String),
    /// The resource type is not one vouch knows.
    #[error("unknown resource type `{0}`: use one of secret, db_role, service")]
    UnknownResourceType(String),
    /// A secret path or role name breaks the naming rules.
    #[error("{kind} `{name}`: {reason}")]
    BadName {
        /// `secret path` or `database role`.
        kind: &'static str,
        /// The name as given (cut to 80 characters).
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A secret path breaks the secret store's naming rules.
    #[error(transparent)]
    Secret(#[from] crate::secret::SecretError),
    /// A service was named by something that is not a SPIFFE ID.
    #[error("service `{0}`: {1}")]
    BadService(String, String),
}

/// What a workload wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Read a secret.
    Read,
    /// Write a secret.
    Write,
    /// Connect to a service or a database role.
    Connect,
    /// Have credentials issued for a database role.
    Issue,
}

impl Action {
    /// Every action, in the order of their names.
    pub const ALL: [Action; 4] = [Action::Connect, Action::Issue, Action::Read, Action::Write];

    /// The name in policies (`Action::"read"`) and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Connect => "connect",
            Action::Issue => "issue",
        }
    }

    /// The resource types this action applies to.
    pub fn resource_kinds(self) -> &'static [ResourceKind] {
        match self {
            Action::Read | Action::Write => &[ResourceKind::Secret],
            Action::Connect => &[ResourceKind::Service, ResourceKind::DbRole],
            Action::Issue => &[ResourceKind::DbRole],
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Self, GrantError> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| GrantError::UnknownAction(s.chars().take(80).collect()))
    }
}

impl serde::Serialize for Action {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Action {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The kinds of resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    /// A secret, by path.
    Secret,
    /// A database role, by name.
    DbRole,
    /// A service, by SPIFFE ID.
    Service,
}

impl ResourceKind {
    /// The name on the wire (`secret`, `db_role`, `service`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Secret => "secret",
            ResourceKind::DbRole => "db_role",
            ResourceKind::Service => "service",
        }
    }

    /// The entity type in policies (`Secret`, `DbRole`, `Service`).
    pub fn entity_type(self) -> &'static str {
        match self {
            ResourceKind::Secret => "Secret",
            ResourceKind::DbRole => "DbRole",
            ResourceKind::Service => "Service",
        }
    }
}

impl FromStr for ResourceKind {
    type Err = GrantError;
    fn from_str(s: &str) -> Result<Self, GrantError> {
        [ResourceKind::Secret, ResourceKind::DbRole, ResourceKind::Service]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| GrantError::UnknownResourceType(s.chars().take(80).collect()))
    }
}

/// A secret's path: the secret store's type, so a grant and a stored secret spell a path the same
/// way (see [`crate::secret`] for the rules).
pub use crate::secret::SecretPath;

/// A database role's name: the same rules as a secret path (`orders/readonly`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleName(String);

fn check_name(kind: &'static str, s: &str) -> Result<(), GrantError> {
    let bad = |reason| Err(GrantError::BadName { kind, name: s.chars().take(80).collect(), reason });
    if s.is_empty() {
        return bad("must not be empty");
    }
    if s.len() > MAX_RESOURCE_NAME_LEN {
        return bad("longer than 512 bytes");
    }
    for seg in s.split('/') {
        if seg.is_empty() {
            return bad("has an empty segment (a leading, trailing or doubled `/`)");
        }
        if seg == "." || seg == ".." {
            return bad("has a `.` or `..` segment");
        }
        if !seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
            return bad("may hold only A-Z, a-z, 0-9, `.`, `_`, `-` and `/` between segments");
        }
    }
    Ok(())
}

impl RoleName {
    /// Parses and checks a role name.
    pub fn new(s: &str) -> Result<Self, GrantError> {
        check_name("database role", s)?;
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A resource a workload may be granted an action on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// A secret.
    Secret(SecretPath),
    /// A database role.
    DbRole(RoleName),
    /// A service (another workload) by SPIFFE ID.
    Service(SpiffeId),
}

impl Resource {
    /// Its kind.
    pub fn kind(&self) -> ResourceKind {
        match self {
            Resource::Secret(_) => ResourceKind::Secret,
            Resource::DbRole(_) => ResourceKind::DbRole,
            Resource::Service(_) => ResourceKind::Service,
        }
    }

    /// Its name: the path, role name or SPIFFE ID.
    pub fn name(&self) -> &str {
        match self {
            Resource::Secret(p) => p.as_str(),
            Resource::DbRole(r) => r.as_str(),
            Resource::Service(id) => id.as_str(),
        }
    }

    /// A resource from its kind and name, checked.
    pub fn parse(kind: &str, name: &str) -> Result<Self, GrantError> {
        Ok(match kind.parse::<ResourceKind>()? {
            ResourceKind::Secret => Resource::Secret(SecretPath::parse(name)?),
            ResourceKind::DbRole => Resource::DbRole(RoleName::new(name)?),
            ResourceKind::Service => Resource::Service(
                SpiffeId::parse(name)
                    .map_err(|e| GrantError::BadService(name.chars().take(80).collect(), e.to_string()))?,
            ),
        })
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::\"{}\"", self.kind().entity_type(), self.name())
    }
}

/// A resource on the wire: `{"type": "secret", "id": "payments/db"}`.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceWire {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

impl serde::Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ResourceWire { kind: self.kind().as_str().to_owned(), id: self.name().to_owned() }.serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = ResourceWire::deserialize(d)?;
        Resource::parse(&w.kind, &w.id).map_err(serde::de::Error::custom)
    }
}

/// The question: may `principal` do `action` to `resource`?
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    /// The workload asking.
    pub principal: SpiffeId,
    /// What it wants to do.
    pub action: Action,
    /// To what.
    pub resource: Resource,
}

impl AccessRequest {
    /// Whether the action applies to the resource's kind (`read` on a service does not).
    pub fn check(&self) -> Result<(), String> {
        if self.action.resource_kinds().contains(&self.resource.kind()) {
            return Ok(());
        }
        let kinds: Vec<&str> = self.action.resource_kinds().iter().map(|k| k.as_str()).collect();
        Err(format!(
            "action `{}` does not apply to a {}: it applies to {}",
            self.action,
            self.resource.kind().as_str(),
            kinds.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_one_spelling() {
        for good in ["a", "payments/db/password", "a.b_c-d/E9"] {
            assert!(RoleName::new(good).is_ok(), "{good}");
            assert!(SecretPath::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("/a", "empty segment"),
            ("a/", "empty segment"),
            ("a//b", "empty segment"),
            ("a/../b", "`..`"),
            ("./a", "`.`"),
            ("a b", "A-Z"),
            ("a\u{0}", "A-Z"),
        ] {
            let err = RoleName::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            // A grant names a secret exactly as the store does: what one refuses, so does the other.
            assert!(Resource::parse("secret", bad).is_err(), "{bad:?}");
        }
        assert!(RoleName::new(&"a".repeat(513)).unwrap_err().to_string().contains("512"));
        assert!(Resource::parse("secret", &"a".repeat(257)).unwrap_err().to_string().contains("256"));
        let p = SecretPath::parse("a/b/c").unwrap();
        assert_eq!(p.dirs().collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(SecretPath::parse("a").unwrap().dirs().count(), 0);
    }

    #[test]
    fn requests_parse_from_json_and_unknown_names_are_errors() {
        let r: AccessRequest = serde_json::from_str(
            r#"{"principal":"spiffe://example.org/web","action":"read","resource":{"type":"secret","id":"web/db"}}"#,
        )
        .unwrap();
        assert_eq!(r.resource, Resource::Secret(SecretPath::parse("web/db").unwrap()));
        assert!(r.check().is_ok());
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<AccessRequest>(&text).unwrap(), r);
        let err = serde_json::from_str::<AccessRequest>(
            r#"{"principal":"spiffe://example.org/web","action":"fly","resource":{"type":"secret","id":"x"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown action `fly`"), "{err}");
        let err = serde_json::from_str::<AccessRequest>(
            r#"{"principal":"spiffe://example.org/web","action":"read","resource":{"type":"bucket","id":"x"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown resource type `bucket`"), "{err}");
        let svc = AccessRequest {
            principal: r.principal.clone(),
            action: Action::Read,
            resource: Resource::parse("service", "spiffe://example.org/db").unwrap(),
        };
        assert!(svc.check().unwrap_err().contains("applies to secret"));
    }
}
