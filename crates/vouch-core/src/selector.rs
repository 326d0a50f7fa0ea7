//! Selectors: facts about a workload or node, written `type:value`.
//!
//! The type says which attestor vouches for the fact (`unix`, `docker`, `container`, `k8s`, ...); the
//! value may itself contain colons (`docker:label:app:payments` has type `docker`, value
//! `label:app:payments`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The longest selector type accepted.
pub const MAX_SELECTOR_TYPE_LEN: usize = 64;
/// The longest selector value accepted, in bytes.
pub const MAX_SELECTOR_VALUE_LEN: usize = 2048;

/// Why a string is not a valid selector.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// No `:` separating type and value.
    #[error("selector `{0}` must have the form `type:value`")]
    MissingColon(String),
    /// The type is empty or has a character outside `a-z 0-9 _ -`.
    #[error("selector type `{0}` must be 1-{MAX_SELECTOR_TYPE_LEN} characters of lower-case letters, digits, `_` or `-`")]
    BadType(String),
    /// The value is empty.
    #[error("selector `{0}:` has an empty value")]
    EmptyValue(String),
    /// The value is too long.
    #[error("selector value is longer than {MAX_SELECTOR_VALUE_LEN} bytes")]
    ValueTooLong,
    /// The value holds a control character.
    #[error("selector value must not contain control characters")]
    ControlChar,
    /// A selector list was empty where at least one is required.
    #[error("at least one selector is required")]
    Empty,
    /// SPIRE's spelling of a fact that vouch's attestors do not produce (see [`crate::spire`]).
    #[error("selector `{selector}` is written as for SPIRE, and vouch has no such selector: {why}")]
    NotInVouch {
        /// The selector (shortened if long).
        selector: String,
        /// Why, and what is closest.
        why: &'static str,
    },
    /// SPIRE's spelling whose nearest vouch selector states a different fact (see [`crate::spire`]).
    #[error("selector `{selector}` is written as for SPIRE, and vouch's nearest selector states a different fact: {why}")]
    Differs {
        /// The selector (shortened if long).
        selector: String,
        /// The difference, and what to use instead.
        why: &'static str,
    },
}

/// One selector, `type:value`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    kind: String,
    value: String,
}

impl Selector {
    /// Builds a selector from its two parts, checking both.
    pub fn new(kind: &str, value: &str) -> Result<Self, SelectorError> {
        if kind.is_empty()
            || kind.len() > MAX_SELECTOR_TYPE_LEN
            || !kind.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        {
            return Err(SelectorError::BadType(kind.chars().take(MAX_SELECTOR_TYPE_LEN).collect()));
        }
        if value.is_empty() {
            return Err(SelectorError::EmptyValue(kind.to_owned()));
        }
        if value.len() > MAX_SELECTOR_VALUE_LEN {
            return Err(SelectorError::ValueTooLong);
        }
        if value.chars().any(char::is_control) {
            return Err(SelectorError::ControlChar);
        }
        Ok(Self { kind: kind.to_owned(), value: value.to_owned() })
    }

    /// Parses `type:value`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let (kind, value) = input
            .split_once(':')
            .ok_or_else(|| SelectorError::MissingColon(input.chars().take(80).collect()))?;
        Self::new(kind, value)
    }

    /// The type, e.g. `docker`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The value, e.g. `label:app:payments`.
    pub fn value(&self) -> &str {
        &self.value
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Selector::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A set of selectors, kept sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Selectors(BTreeSet<Selector>);

impl Selectors {
    /// An empty set (a workload about which nothing is known yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one selector.
    pub fn insert(&mut self, s: Selector) {
        self.0.insert(s);
    }

    /// Whether every selector of `self` is also in `other`: the matching rule of entries.
    pub fn is_subset_of(&self, other: &Selectors) -> bool {
        self.0.is_subset(&other.0)
    }

    /// The selectors of `self` that `other` lacks, in order; what an explanation reports as missing.
    pub fn missing_from<'a>(&'a self, other: &'a Selectors) -> impl Iterator<Item = &'a Selector> + 'a {
        self.0.difference(&other.0)
    }

    /// The selectors, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Selector> {
        self.0.iter()
    }

    /// How many selectors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<Selector> for Selectors {
    fn from_iter<I: IntoIterator<Item = Selector>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_type_and_value() {
        let cases = [
            ("unix:uid:1000", "unix", "uid:1000"),
            ("docker:label:app:payments", "docker", "label:app:payments"),
            ("container:image-id:sha256:abc", "container", "image-id:sha256:abc"),
            ("k8s:sa:payments", "k8s", "sa:payments"),
            ("x509pop:subject:cn:node 1", "x509pop", "subject:cn:node 1"),
        ];
        for (input, kind, value) in cases {
            let s = Selector::parse(input).unwrap();
            assert_eq!((s.kind(), s.value()), (kind, value));
            assert_eq!(s.to_string(), input);
        }
    }

    #[test]
    fn rejects_bad_selectors() {
        use SelectorError::*;
        let cases: &[(&str, SelectorError)] = &[
            ("unix", MissingColon("unix".into())),
            (":value", BadType("".into())),
            ("Unix:uid:1", BadType("Unix".into())),
            ("un ix:uid:1", BadType("un ix".into())),
            ("unix:", EmptyValue("unix".into())),
            ("unix:a\nb", ControlChar),
        ];
        for (input, want) in cases {
            assert_eq!(Selector::parse(input).unwrap_err(), *want, "{input:?}");
        }
        let long = format!("unix:{}", "a".repeat(MAX_SELECTOR_VALUE_LEN + 1));
        assert_eq!(Selector::parse(&long).unwrap_err(), ValueTooLong);
    }

    #[test]
    fn subset_rule() {
        let set = |items: &[&str]| items.iter().map(|s| Selector::parse(s).unwrap()).collect::<Selectors>();
        let workload = set(&["unix:uid:1000", "docker:label:app:web", "docker:image-id:sha256:aa"]);
        assert!(set(&["unix:uid:1000"]).is_subset_of(&workload));
        assert!(set(&["unix:uid:1000", "docker:label:app:web"]).is_subset_of(&workload));
        assert!(!set(&["unix:uid:0"]).is_subset_of(&workload));
        let entry = set(&["docker:label:app:web", "docker:image-id:sha256:bb"]);
        assert!(!entry.is_subset_of(&workload));
        let missing: Vec<String> = entry.missing_from(&workload).map(ToString::to_string).collect();
        assert_eq!(missing, ["docker:image-id:sha256:bb"]);
    }

    proptest! {
        #[test]
        fn round_trip(kind in "[a-z0-9_-]{1,20}", value in "[ -~]{1,100}") {
            let s = Selector::new(&kind, &value).unwrap();
            prop_assert_eq!(Selector::parse(&s.to_string()).unwrap(), s);
        }

        #[test]
        fn never_panics(input in ".{0,200}") {
            let _ = Selector::parse(&input);
        }
    }
}
