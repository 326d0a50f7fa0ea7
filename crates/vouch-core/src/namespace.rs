//! Namespaces: the administrative partition of entries and policies. An admin can be limited to
//! some namespaces; agents and workloads never see them (matching ignores them).
//!
//! A name follows Kubernetes' rule for namespace names (RFC 1123 DNS label): 1 to 63 characters of
//! lowercase letters, digits and `-`, beginning and ending with a letter or digit. Everything
//! stored before namespaces existed is in [`Namespace::DEFAULT`].

use std::fmt;

/// Longest namespace name (an RFC 1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;

/// Most namespaces one admin entry may be limited to.
pub const MAX_ADMIN_NAMESPACES: usize = 64;

/// Why a namespace name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace `{0}` must be 1-63 lowercase letters, digits or `-`, beginning and ending with a letter or digit (a DNS label, as in Kubernetes)")]
pub struct NamespaceError(pub String);

/// A namespace name, always valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Namespace(String);

impl Namespace {
    /// The name of the namespace everything belongs to unless told otherwise.
    pub const DEFAULT: &'static str = "default";

    /// Checks a name.
    pub fn new(name: &str) -> Result<Self, NamespaceError> {
        let bytes = name.as_bytes();
        let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok = !name.is_empty()
            && name.len() <= MAX_NAMESPACE_LEN
            && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && edge_ok(bytes.first())
            && edge_ok(bytes.last());
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(NamespaceError(name.chars().take(MAX_NAMESPACE_LEN + 1).collect()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is [`Namespace::DEFAULT`].
    pub fn is_default(&self) -> bool {
        self.0 == Self::DEFAULT
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self(Self::DEFAULT.to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Namespace {
    type Err = NamespaceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for Namespace {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Namespace::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Which namespaces an admin may manage: all of them (the local socket, an admin entry without
/// `admin_namespaces`), or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    /// Every namespace, and everything that belongs to none (authority, federation, audit, ...).
    All,
    /// Only these (never empty), and nothing outside namespaces.
    Only(std::collections::BTreeSet<Namespace>),
}

impl NamespaceScope {
    /// The scope an admin entry's `admin_namespaces` gives: empty means all.
    pub fn from_list(list: &[Namespace]) -> Self {
        if list.is_empty() {
            Self::All
        } else {
            Self::Only(list.iter().cloned().collect())
        }
    }

    /// Whether `ns` is inside the scope.
    pub fn allows(&self, ns: &Namespace) -> bool {
        match self {
            Self::All => true,
            Self::Only(set) => set.contains(ns),
        }
    }

    /// Whether the scope is every namespace.
    pub fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }

    /// Whether `other` is inside this scope (an admin may hand out no more than it holds).
    pub fn covers(&self, other: &NamespaceScope) -> bool {
        match (self, other) {
            (Self::All, _) => true,
            (Self::Only(_), Self::All) => false,
            (Self::Only(mine), Self::Only(theirs)) => theirs.is_subset(mine),
        }
    }

    /// The union of two scopes (an identity named by several admin entries).
    pub fn union(self, other: NamespaceScope) -> Self {
        match (self, other) {
            (Self::Only(mut a), Self::Only(b)) => {
                a.extend(b);
                Self::Only(a)
            }
            _ => Self::All,
        }
    }
}

impl fmt::Display for NamespaceScope {
    /// `all namespaces`, or the names in backticks, comma-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all namespaces"),
            Self::Only(set) => {
                for (i, ns) in set.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "`{ns}`")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_label_rule() {
        for ok in ["default", "a", "team-a", "0", "a1-b2", &"a".repeat(63)] {
            assert_eq!(Namespace::new(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "Team", "-a", "a-", "a_b", "a.b", "ä", "a b", &"a".repeat(64)] {
            let err = Namespace::new(bad).unwrap_err().to_string();
            assert!(err.contains("lowercase letters"), "{bad}: {err}");
        }
        assert!(Namespace::default().is_default());
        assert!(serde_json::from_str::<Namespace>("\"Prod\"").is_err());
    }

    #[test]
    fn scopes_cover_subsets_only() {
        let ns = |s: &[&str]| {
            NamespaceScope::from_list(&s.iter().map(|n| Namespace::new(n).unwrap()).collect::<Vec<_>>())
        };
        let (a, ab, all) = (ns(&["a"]), ns(&["a", "b"]), ns(&[]));
        assert!(all.is_all() && !a.is_all());
        assert!(ab.covers(&a) && !a.covers(&ab) && !a.covers(&all) && all.covers(&ab));
        assert!(a.allows(&Namespace::new("a").unwrap()) && !a.allows(&Namespace::new("b").unwrap()));
        assert_eq!(a.clone().union(ns(&["b"])), ab);
        assert_eq!(a.union(all.clone()), all);
        assert_eq!(ab.to_string(), "`a`, `b`");
    }
}
