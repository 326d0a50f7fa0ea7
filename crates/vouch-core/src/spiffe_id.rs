//! SPIFFE IDs and trust domains, as the SPIFFE-ID standard (section 2) defines them.
//!
//! A [`SpiffeId`] is parsed once, at the edge, and is valid for its whole life: the type cannot hold
//! an ID that breaks a rule of the standard.

use std::fmt;
use std::str::FromStr;

/// The scheme every SPIFFE ID starts with; the standard requires it in lower case.
const SCHEME: &str = "spiffe://";

/// The standard's cap on a whole SPIFFE ID, in bytes.
pub const MAX_SPIFFE_ID_BYTES: usize = 2048;

/// The standard's cap on a trust domain name (the host part of a URI), in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Why a string is not a valid SPIFFE ID or trust domain. Each variant names the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input did not start with `spiffe://` (the scheme must also be lower case).
    #[error("SPIFFE ID must start with `spiffe://` (lower-case scheme)")]
    WrongScheme,
    /// Nothing between the scheme and the path.
    #[error("trust domain is missing")]
    MissingTrustDomain,
    /// A character outside `a-z 0-9 . - _` in the trust domain.
    #[error("trust domain contains `{0}`: only lower-case letters, digits, `.`, `-` and `_` are allowed")]
    BadTrustDomainChar(char),
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")]
    TrustDomainTooLong,
    /// A port (`:`) or user info (`@`) appeared in the authority.
    #[error("SPIFFE ID must not contain a port or user info")]
    PortOrUserInfo,
    /// A `?` or `#` appeared.
    #[error("SPIFFE ID must not contain a query or fragment")]
    QueryOrFragment,
    /// Two slashes in a row, or a path of only `/`.
    #[error("path segments must not be empty")]
    EmptySegment,
    /// A segment that is `.` or `..`.
    #[error("path segments must not be `.` or `..`")]
    DotSegment,
    /// The path ends with `/`.
    #[error("path must not end with `/`")]
    TrailingSlash,
    /// A character outside `a-z A-Z 0-9 . - _` in a path segment.
    #[error("path contains `{0}`: only letters, digits, `.`, `-` and `_` are allowed in segments")]
    BadPathChar(char),
    /// The whole ID is longer than 2048 bytes.
    #[error("SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes")]
    TooLong,
    /// A path was expected to start with `/`.
    #[error("path must start with `/`")]
    PathWithoutSlash,
}

/// A trust domain name, such as `example.org`: the root of trust of a set of identities.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`example.org`) or a SPIFFE ID of the trust domain
    /// (`spiffe://example.org`).
    pub fn new(name: &str) -> Result<Self, IdError> {
        if let Some(rest) = name.strip_prefix(SCHEME) {
            let id = SpiffeId::parse(name)?;
            debug_assert!(rest.starts_with(id.trust_domain().as_str()));
            return Ok(id.trust_domain().clone());
        }
        validate_trust_domain(name)?;
        Ok(Self(name.to_owned()))
    }

    /// The name, e.g. `example.org`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The SPIFFE ID of the trust domain itself, `spiffe://<name>`.
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            full: format!("{SCHEME}{}", self.0),
            td_end: SCHEME.len() + self.0.len(),
            trust_domain: self.clone(),
        }
    }

    /// A SPIFFE ID in this trust domain with the given path (which must start with `/`).
    pub fn id_with_path(&self, path: &str) -> Result<SpiffeId, IdError> {
        if !path.starts_with('/') {
            return Err(IdError::PathWithoutSlash);
        }
        SpiffeId::parse(&format!("{SCHEME}{}{path}", self.0))
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::MissingTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_BYTES {
        return Err(IdError::TrustDomainTooLong);
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            ':' | '@' => return Err(IdError::PortOrUserInfo),
            '?' | '#' => return Err(IdError::QueryOrFragment),
            other => return Err(IdError::BadTrustDomainChar(other)),
        }
    }
    Ok(())
}

/// A valid SPIFFE ID, `spiffe://<trust-domain>[/<segment>...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: String,
    td_end: usize,
    trust_domain: TrustDomain,
}

impl SpiffeId {
    /// Parses a SPIFFE ID, applying every rule of the SPIFFE-ID standard.
    pub fn parse(input: &str) -> Result<Self, IdError> {
        if input.is_empty() {
            return Err(IdError::Empty);
        }
        if input.len() > MAX_SPIFFE_ID_BYTES {
            return Err(IdError::TooLong);
        }
        let rest = input.strip_prefix(SCHEME).ok_or(IdError::WrongScheme)?;
        if rest.contains(['?', '#']) {
            return Err(IdError::QueryOrFragment);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(Self {
            full: input.to_owned(),
            td_end: SCHEME.len() + td.len(),
            trust_domain: TrustDomain(td.to_owned()),
        })
    }

    /// The trust domain this ID belongs to.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The path, `""` for a trust domain's own ID, else starting with `/`.
    pub fn path(&self) -> &str {
        &self.full[self.td_end..]
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// Whether the ID names a trust domain (it has no path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }
}

/// Checks a path against the standard: `/`-separated segments of `[A-Za-z0-9._-]`, none empty, `.` or
/// `..`, and no trailing slash.
fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    let Some(body) = path.strip_prefix('/') else {
        return Err(IdError::PathWithoutSlash);
    };
    if body.is_empty() {
        return Err(IdError::TrailingSlash);
    }
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            return Err(if i == last { IdError::TrailingSlash } else { IdError::EmptySegment });
        }
        if *segment == "." || *segment == ".." {
            return Err(IdError::DotSegment);
        }
        if let Some(c) =
            segment.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(IdError::BadPathChar(c));
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(|e| serde::de::Error::custom(format!("invalid SPIFFE ID `{s}`: {e}")))
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::new(&s).map_err(|e| serde::de::Error::custom(format!("invalid trust domain `{s}`: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn valid_ids_from_the_standard() {
        let cases = [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/service", "example.org", "/service"),
            ("spiffe://staging.example.com/payments/mysql", "staging.example.com", "/payments/mysql"),
            ("spiffe://k8s-west.example.com/ns/default/sa/web", "k8s-west.example.com", "/ns/default/sa/web"),
            ("spiffe://td_1/a.b-c_D/..x/x..", "td_1", "/a.b-c_D/..x/x.."),
            ("spiffe://1.2.3.4/p", "1.2.3.4", "/p"),
        ];
        for (input, td, path) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain().as_str(), td, "{input}");
            assert_eq!(id.path(), path, "{input}");
            assert_eq!(id.to_string(), input);
        }
    }

    #[test]
    fn invalid_ids_say_which_rule_they_break() {
        use IdError::*;
        let cases: &[(&str, IdError)] = &[
            ("", Empty),
            ("http://example.org/a", WrongScheme),
            ("SPIFFE://example.org/a", WrongScheme),
            ("spiffe:/example.org/a", WrongScheme),
            ("spiffe://", MissingTrustDomain),
            ("spiffe:///path", MissingTrustDomain),
            ("spiffe://Example.org/a", BadTrustDomainChar('E')),
            ("spiffe://exa mple.org", BadTrustDomainChar(' ')),
            ("spiffe://example.org:8080/a", PortOrUserInfo),
            ("spiffe://user@example.org/a", PortOrUserInfo),
            ("spiffe://example.org/a?x=1", QueryOrFragment),
            ("spiffe://example.org/a#frag", QueryOrFragment),
            ("spiffe://example.org/", TrailingSlash),
            ("spiffe://example.org/a/", TrailingSlash),
            ("spiffe://example.org//a", EmptySegment),
            ("spiffe://example.org/a//b", EmptySegment),
            ("spiffe://example.org/./a", DotSegment),
            ("spiffe://example.org/a/..", DotSegment),
            ("spiffe://example.org/a%20b", BadPathChar('%')),
            ("spiffe://example.org/a b", BadPathChar(' ')),
            ("spiffe://example.org/é", BadPathChar('é')),
        ];
        for (input, want) in cases {
            assert_eq!(SpiffeId::parse(input).unwrap_err(), *want, "{input:?}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_SPIFFE_ID_BYTES));
        assert_eq!(SpiffeId::parse(&long).unwrap_err(), TooLong);
        let long_td = format!("spiffe://{}/a", "a".repeat(256));
        assert_eq!(SpiffeId::parse(&long_td).unwrap_err(), TrustDomainTooLong);
    }

    #[test]
    fn trust_domain_forms() {
        assert_eq!(TrustDomain::new("example.org").unwrap().as_str(), "example.org");
        assert_eq!(TrustDomain::new("spiffe://example.org").unwrap().as_str(), "example.org");
        assert_eq!(TrustDomain::new("Example.org").unwrap_err(), IdError::BadTrustDomainChar('E'));
        assert_eq!(TrustDomain::new("").unwrap_err(), IdError::MissingTrustDomain);
        let td = TrustDomain::new("example.org").unwrap();
        assert_eq!(td.id().as_str(), "spiffe://example.org");
        assert!(td.id().is_trust_domain_id());
        assert_eq!(td.id_with_path("/web").unwrap().as_str(), "spiffe://example.org/web");
        assert_eq!(td.id_with_path("web").unwrap_err(), IdError::PathWithoutSlash);
    }

    #[test]
    fn serde_rejects_invalid_ids_with_the_rule() {
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://example.org/a/\"").unwrap_err();
        assert!(err.to_string().contains("must not end with `/`"), "{err}");
        let ok: SpiffeId = serde_json::from_str("\"spiffe://example.org/a\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"spiffe://example.org/a\"");
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,12}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
    }

    proptest! {
        #[test]
        fn parse_display_round_trip(td in "[a-z0-9._-]{1,40}", segs in proptest::collection::vec(segment(), 0..6)) {
            let text = format!("spiffe://{td}{}", segs.iter().map(|s| format!("/{s}")).collect::<String>());
            let id = SpiffeId::parse(&text).unwrap();
            prop_assert_eq!(SpiffeId::parse(&id.to_string()).unwrap(), id.clone());
            prop_assert_eq!(id.trust_domain().as_str(), td.as_str());
        }

        #[test]
        fn parse_never_panics(input in ".{0,300}") {
            let _ = SpiffeId::parse(&input);
            let _ = TrustDomain::new(&input);
        }

        #[test]
        fn parse_never_panics_on_near_misses(rest in "[a-zA-Z0-9./:@?#%_-]{0,60}") {
            let _ = SpiffeId::parse(&format!("spiffe://{rest}"));
        }
    }
}
