//! Secrets by identity: the names of secrets and the bounds on what is stored.
//!
//! A secret is named by a [`SecretPath`] such as `payments/db/password`: slash-separated segments
//! of letters, digits, `.`, `_` and `-`, never `.` or `..` alone, so that a name can be neither a
//! path trick nor ambiguous (one spelling per secret: no empty segments, no leading or trailing
//! slash). Each write makes a new version, numbered 1, 2, 3, ...

use std::fmt;

/// Longest secret path, in bytes.
pub const MAX_PATH_BYTES: usize = 256;
/// Most segments of a secret path.
pub const MAX_PATH_SEGMENTS: usize = 16;
/// Largest secret value, in bytes (64 KiB): a secret is a credential, not a file store; bigger
/// values would make every read and every stored version costly.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Longest owner or purpose, in bytes.
pub const MAX_META_BYTES: usize = 256;
/// Most versions one secret keeps (live, deleted or destroyed): each is a row; a secret that
/// changes more often than this wants another design (destroying old versions frees nothing here).
pub const MAX_VERSIONS: u64 = 10_000;

/// Why a secret path or its metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The path breaks a syntax rule.
    #[error("secret path `{path}`: {reason}")]
    Path {
        /// The path as given (shown escaped, bounded).
        path: String,
        /// Which rule.
        reason: &'static str,
    },
    /// The value is over [`MAX_VALUE_BYTES`] or empty.
    #[error("secret value: {0}")]
    Value(String),
    /// A metadata field is too long or holds control characters.
    #[error("{field}: {reason}")]
    Meta {
        /// `owner` or `purpose`.
        field: &'static str,
        /// Which rule.
        reason: &'static str,
    },
}

/// The name of a secret; always valid once built (see the module doc for the rules).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretPath(String);

impl SecretPath {
    /// Parses a path.
    pub fn parse(path: &str) -> Result<Self, SecretError> {
        let fail = |reason| SecretError::Path { path: shown(path), reason };
        if path.is_empty() {
            return Err(fail("is empty"));
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(fail("is longer than 256 bytes"));
        }
        if path.starts_with('/') || path.ends_with('/') {
            return Err(fail("must not start or end with `/`"));
        }
        let mut segments = 0;
        for segment in path.split('/') {
            segments += 1;
            if segment.is_empty() {
                return Err(fail("has an empty segment (`//`)"));
            }
            if segment == "." || segment == ".." {
                return Err(fail("has a `.` or `..` segment"));
            }
            if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                return Err(fail("may hold only letters, digits, `.`, `_`, `-` and `/` between segments"));
            }
        }
        if segments > MAX_PATH_SEGMENTS {
            return Err(fail("has more than 16 segments"));
        }
        Ok(Self(path.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The directories the secret is under, outermost first: `a/b/c` is under `a` and `a/b`.
    pub fn dirs(&self) -> impl Iterator<Item = &str> {
        self.0.match_indices('/').map(|(i, _)| self.0.get(..i).unwrap_or_default())
    }

    /// Whether this path is `prefix` or lies under it (`a/b` is under `a`, `ab` is not).
    pub fn is_under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        prefix.is_empty()
            || self.0 == prefix
            || (self.0.starts_with(prefix) && self.0.as_bytes().get(prefix.len()) == Some(&b'/'))
    }
}

/// A path as shown in an error: control characters escaped, at most 80 characters.
fn shown(path: &str) -> String {
    let mut out: String = path.chars().take(80).flat_map(char::escape_default).collect();
    if path.chars().count() > 80 {
        out.push('…');
    }
    out
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SecretPath {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for SecretPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SecretPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Checks a secret value's size (never its content: the error does not quote it).
pub fn check_value(value: &[u8]) -> Result<(), SecretError> {
    if value.is_empty() {
        return Err(SecretError::Value("is empty".into()));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(SecretError::Value(format!(
            "is {} bytes, more than the limit of {MAX_VALUE_BYTES} bytes (64 KiB)",
            value.len()
        )));
    }
    Ok(())
}

/// Checks an owner or purpose: at most [`MAX_META_BYTES`], no control characters.
pub fn check_meta(field: &'static str, value: &str) -> Result<(), SecretError> {
    if value.len() > MAX_META_BYTES {
        return Err(SecretError::Meta { field, reason: "is longer than 256 bytes" });
    }
    if value.chars().any(char::is_control) {
        return Err(SecretError::Meta { field, reason: "must not hold control characters" });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_rules() {
        for good in ["a", "payments/db/password", "A-b_c.d/e", "x/..y", "v1.2"] {
            assert_eq!(SecretPath::parse(good).unwrap().as_str(), good);
        }
        let long = "a".repeat(257);
        let deep = vec!["a"; 17].join("/");
        for (bad, why) in [
            ("", "is empty"),
            ("/a", "start or end"),
            ("a/", "start or end"),
            ("a//b", "empty segment"),
            ("a/../b", "`..` segment"),
            ("./a", "`.` or `..`"),
            ("a b", "only letters"),
            ("a\nb", "only letters"),
            ("ä", "only letters"),
            ("a%2Fb", "only letters"),
            (long.as_str(), "longer than 256"),
            (deep.as_str(), "more than 16"),
        ] {
            let err = SecretPath::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
            assert!(!err.contains('\n'), "control characters are escaped: {err}");
        }
        let p: SecretPath = serde_json::from_str("\"a/b\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"a/b\"");
        assert!(serde_json::from_str::<SecretPath>("\"a/../b\"").is_err());
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = SecretPath::parse("team/app/key").unwrap();
        assert!(p.is_under("") && p.is_under("team") && p.is_under("team/") && p.is_under("team/app/key"));
        assert!(!p.is_under("tea") && !p.is_under("team/app/ke") && !p.is_under("other"));
    }

    #[test]
    fn values_and_metadata_are_bounded() {
        assert!(check_value(b"x").is_ok());
        assert!(check_value(&vec![0; MAX_VALUE_BYTES]).is_ok());
        let err = check_value(&vec![b's'; MAX_VALUE_BYTES + 1]).unwrap_err().to_string();
        assert!(err.contains("65537 bytes") && err.contains("64 KiB"), "{err}");
        assert!(check_value(b"").is_err());
        assert!(check_meta("owner", "team-a").is_ok());
        assert!(check_meta("owner", &"o".repeat(257)).unwrap_err().to_string().starts_with("owner:"));
        assert!(check_meta("purpose", "a\u{1b}[31m").is_err());
    }
}
