//! Registration entries: "a workload whose selectors include all of these, under this parent, gets this
//! SPIFFE ID", and the matching rule that applies them.

use std::fmt;
use std::time::Duration;

use crate::namespace::{Namespace, MAX_ADMIN_NAMESPACES};
use crate::selector::{Selector, SelectorError, Selectors};
use crate::spiffe_id::{SpiffeId, TrustDomain};

/// Shortest X509-SVID lifetime an entry may ask for.
pub const MIN_X509_SVID_TTL: Duration = Duration::from_secs(60);
/// Longest X509-SVID lifetime an entry may ask for (the CA's remaining life caps it further).
pub const MAX_X509_SVID_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest JWT-SVID lifetime an entry may ask for.
pub const MIN_JWT_SVID_TTL: Duration = Duration::from_secs(10);
/// Longest JWT-SVID lifetime an entry may ask for; JWTs cannot be revoked, so this stays short.
pub const MAX_JWT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest hint, owner or purpose text.
pub const MAX_TEXT_LEN: usize = 1024;
/// Most DNS names on one entry.
pub const MAX_DNS_NAMES: usize = 100;
/// Most selectors on one entry.
pub const MAX_SELECTORS: usize = 64;
/// Longest subject common name, in characters (RFC 5280's upper bound `ub-common-name`).
pub const MAX_COMMON_NAME_CHARS: usize = 64;

/// Why an entry was refused. Messages name the field and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The entry id has characters outside `A-Z a-z 0-9 . _ -` or a bad length.
    #[error("entry id `{0}` must be 1-64 characters of letters, digits, `.`, `_` or `-`")]
    BadId(String),
    /// No selectors: an entry without selectors would match every workload.
    #[error("selectors: at least one selector is required (an entry without selectors would match every workload)")]
    NoSelectors,
    /// Too many selectors.
    #[error("selectors: at most {MAX_SELECTORS} are allowed")]
    TooManySelectors,
    /// A selector failed to parse.
    #[error("selectors: {0}")]
    Selector(#[from] SelectorError),
    /// The SPIFFE ID belongs to another trust domain.
    #[error("{field}: `{id}` is not in trust domain `{trust_domain}`")]
    ForeignTrustDomain {
        /// `spiffe_id` or `parent_id`.
        field: &'static str,
        /// The offending ID.
        id: String,
        /// The server's trust domain.
        trust_domain: String,
    },
    /// The entry's SPIFFE ID has no path.
    #[error("spiffe_id: `{0}` names the trust domain itself; a workload ID needs a path such as `/web`")]
    TrustDomainAsWorkload(String),
    /// A TTL outside the allowed range.
    #[error("{field}: {secs}s is outside the allowed range {min}s..={max}s")]
    TtlOutOfRange {
        /// `x509_svid_ttl` or `jwt_svid_ttl`.
        field: &'static str,
        /// The requested seconds.
        secs: u64,
        /// Lower bound.
        min: u64,
        /// Upper bound.
        max: u64,
    },
    /// A DNS name that is not a valid host name.
    #[error(
        "dns_names: `{0}` is not a valid DNS name (labels of letters, digits and `-`, optional leading `*.`)"
    )]
    BadDnsName(String),
    /// Too many DNS names.
    #[error("dns_names: at most {MAX_DNS_NAMES} are allowed")]
    TooManyDnsNames,
    /// A free-text field is too long or has control characters.
    #[error("{0}: must be at most {MAX_TEXT_LEN} bytes without control characters")]
    BadText(&'static str),
    /// `expires_at` is already past.
    #[error("expires_at: {0} is in the past")]
    ExpiresInPast(i64),
    /// federates_with names the server's own trust domain.
    #[error("federates_with: `{0}` is this server's own trust domain")]
    FederatesWithSelf(String),
    /// `admin_namespaces` on an entry that is not an admin.
    #[error("admin_namespaces: only an entry with admin = true can be limited to namespaces; set admin = true or leave admin_namespaces out")]
    AdminNamespacesWithoutAdmin,
    /// Too many admin namespaces.
    #[error("admin_namespaces: at most {MAX_ADMIN_NAMESPACES} are allowed")]
    TooManyAdminNamespaces,
}

/// Why a subject common name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommonNameError {
    /// No characters.
    #[error("the common name must not be empty (leave it out for an SVID without one)")]
    Empty,
    /// Over [`MAX_COMMON_NAME_CHARS`].
    #[error("the common name has {0} characters, more than the {MAX_COMMON_NAME_CHARS} X.509 allows (RFC 5280 ub-common-name)")]
    TooLong(usize),
    /// A control character (newline, NUL, escape, ...), which relying parties mis-read or refuse.
    #[error("character {0} of the common name is a control character; use printable characters only")]
    Control(usize),
    /// Leading or trailing white space, which relying parties that compare names would not match.
    #[error("the common name must not begin or end with white space")]
    Padded,
}

/// A subject common name (CN) for an X509-SVID, for relying parties that map a certificate's CN to
/// a user, such as PostgreSQL's `cert` authentication. The SPIFFE ID stays the only URI SAN and is
/// what SPIFFE-aware peers authenticate; the SPIFFE X509-SVID standard allows a subject beside it.
///
/// Valid: 1 to [`MAX_COMMON_NAME_CHARS`] characters, none a control character, no white space at
/// either end. It is written to the certificate as a UTF8String.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct CommonName(String);

impl CommonName {
    /// Checks a common name.
    pub fn new(name: &str) -> Result<Self, CommonNameError> {
        if name.is_empty() {
            return Err(CommonNameError::Empty);
        }
        let chars = name.chars().count();
        if chars > MAX_COMMON_NAME_CHARS {
            return Err(CommonNameError::TooLong(chars));
        }
        if let Some(at) = name.chars().position(char::is_control) {
            return Err(CommonNameError::Control(at + 1));
        }
        if name.starts_with(char::is_whitespace) || name.ends_with(char::is_whitespace) {
            return Err(CommonNameError::Padded);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CommonName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for CommonName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // The message names no field: the same type is `x509_common_name` of an entry and
        // `common_name` of a mint request, and the API's parser puts the path in front.
        CommonName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// The identifier of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct EntryId(String);

impl EntryId {
    /// Checks and wraps an entry id.
    pub fn new(id: &str) -> Result<Self, EntryError> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(EntryError::BadId(id.chars().take(64).collect()))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for EntryId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EntryId::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A DNS name for an X509-SVID's SAN list, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct DnsName(String);

impl DnsName {
    /// Checks a host name: labels of 1-63 letters, digits or `-` (not at either end), at most 253
    /// bytes, and an optional leading `*.` wildcard.
    pub fn new(name: &str) -> Result<Self, EntryError> {
        let bad = || EntryError::BadDnsName(name.chars().take(253).collect());
        let body = name.strip_prefix("*.").unwrap_or(name);
        if body.is_empty() || name.len() > 253 {
            return Err(bad());
        }
        for label in body.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(bad());
            }
        }
        Ok(Self(name.to_ascii_lowercase()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> serde::Deserialize<'de> for DnsName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        DnsName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// What an administrator asks for when creating or updating an entry. Unknown fields are refused so a
/// typo is an error, not a silent default.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    /// A chosen id; the server generates one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<EntryId>,
    /// The identity a matching workload receives.
    pub spiffe_id: SpiffeId,
    /// The agent (or node group) that may serve this entry.
    pub parent_id: SpiffeId,
    /// All of these must be among the workload's selectors.
    pub selectors: Vec<Selector>,
    /// X509-SVID lifetime in seconds; the server default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_svid_ttl: Option<u64>,
    /// JWT-SVID lifetime in seconds; the server default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_svid_ttl: Option<u64>,
    /// DNS SANs added to the X509-SVID.
    #[serde(default)]
    pub dns_names: Vec<DnsName>,
    /// A subject common name for the X509-SVID (for relying parties that map the CN to a user,
    /// such as PostgreSQL's `cert` authentication); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_common_name: Option<CommonName>,
    /// A hint for workloads that receive several SVIDs.
    #[serde(default)]
    pub hint: String,
    /// Whether the SVID may call the admin API.
    #[serde(default)]
    pub admin: bool,
    /// Trust domains whose bundles the workload also receives.
    #[serde(default)]
    pub federates_with: Vec<TrustDomain>,
    /// Unix seconds after which the entry no longer matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Who answers for this identity (governance).
    #[serde(default)]
    pub owner: String,
    /// Why this identity exists (governance).
    #[serde(default)]
    pub purpose: String,
    /// The namespace the entry belongs to: `default` for a new entry when absent; an update
    /// without it leaves the entry where it is (moving an entry needs both namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Namespace>,
    /// For an entry with `admin = true`: the namespaces its SVID may manage. Empty: every
    /// namespace and the whole admin API, as an admin entry always could.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_namespaces: Vec<Namespace>,
}

/// A registration entry as stored: always valid.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Identifier.
    pub id: EntryId,
    /// The identity a matching workload receives.
    pub spiffe_id: SpiffeId,
    /// The agent or node group that may serve this entry.
    pub parent_id: SpiffeId,
    /// All of these must be among the workload's selectors (never empty).
    pub selectors: Selectors,
    /// X509-SVID lifetime in seconds, or `None` for the server default.
    pub x509_svid_ttl: Option<u64>,
    /// JWT-SVID lifetime in seconds, or `None` for the server default.
    pub jwt_svid_ttl: Option<u64>,
    /// DNS SANs.
    pub dns_names: Vec<DnsName>,
    /// The X509-SVID's subject common name, if any. Absent in entries stored before it existed and
    /// left out of the JSON when none, so agents and stores that predate it read entries unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_common_name: Option<CommonName>,
    /// A hint for workloads with several SVIDs.
    pub hint: String,
    /// Whether the SVID may call the admin API.
    pub admin: bool,
    /// Federated trust domains.
    pub federates_with: Vec<TrustDomain>,
    /// Unix seconds after which the entry no longer matches.
    pub expires_at: Option<i64>,
    /// Increases by one on every change.
    pub revision: u64,
    /// Unix seconds of creation.
    pub created_at: i64,
    /// Who answers for this identity.
    pub owner: String,
    /// Why this identity exists.
    pub purpose: String,
    /// The namespace it belongs to (an admin-side partition: matching and agents ignore it). Left
    /// out of the JSON when `default`, so entries stored before namespaces existed read as
    /// `default` and sync lines of default entries are what they were.
    #[serde(default, skip_serializing_if = "Namespace::is_default")]
    pub namespace: Namespace,
    /// For an admin entry: the namespaces its SVID may manage; empty means all (see
    /// `docs/namespaces.md`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub admin_namespaces: Vec<Namespace>,
}

fn check_ttl(field: &'static str, ttl: Option<u64>, min: Duration, max: Duration) -> Result<(), EntryError> {
    match ttl {
        Some(secs) if secs < min.as_secs() || secs > max.as_secs() => {
            Err(EntryError::TtlOutOfRange { field, secs, min: min.as_secs(), max: max.as_secs() })
        }
        _ => Ok(()),
    }
}

fn check_text(field: &'static str, text: &str) -> Result<(), EntryError> {
    if text.len() > MAX_TEXT_LEN || text.chars().any(char::is_control) {
        return Err(EntryError::BadText(field));
    }
    Ok(())
}

fn check_in_domain(field: &'static str, id: &SpiffeId, td: &TrustDomain) -> Result<(), EntryError> {
    if id.trust_domain() != td {
        return Err(EntryError::ForeignTrustDomain {
            field,
            id: id.to_string(),
            trust_domain: td.to_string(),
        });
    }
    Ok(())
}

impl Entry {
    /// Builds a new entry (revision 0) from a spec, checking every rule against the server's trust
    /// domain and the current time `now` (unix seconds).
    pub fn create(spec: EntrySpec, id: EntryId, td: &TrustDomain, now: i64) -> Result<Self, EntryError> {
        Self::build(spec, id, td, now, 0, now, Namespace::default())
    }

    /// The entry after an update: the spec replaces every field except id and creation time, and the
    /// revision increases.
    pub fn updated(&self, spec: EntrySpec, td: &TrustDomain, now: i64) -> Result<Self, EntryError> {
        Self::build(
            spec,
            self.id.clone(),
            td,
            now,
            self.revision + 1,
            self.created_at,
            self.namespace.clone(),
        )
    }

    fn build(
        spec: EntrySpec,
        id: EntryId,
        td: &TrustDomain,
        now: i64,
        revision: u64,
        created_at: i64,
        namespace: Namespace,
    ) -> Result<Self, EntryError> {
        check_in_domain("spiffe_id", &spec.spiffe_id, td)?;
        if spec.spiffe_id.is_trust_domain_id() {
            return Err(EntryError::TrustDomainAsWorkload(spec.spiffe_id.to_string()));
        }
        check_in_domain("parent_id", &spec.parent_id, td)?;
        if spec.selectors.is_empty() {
            return Err(EntryError::NoSelectors);
        }
        if spec.selectors.len() > MAX_SELECTORS {
            return Err(EntryError::TooManySelectors);
        }
        // SPIRE's spellings become vouch's here, once, so stored entries match what attestors produce.
        let selectors =
            spec.selectors.into_iter().map(crate::spire::canonical).collect::<Result<Selectors, _>>()?;
        check_ttl("x509_svid_ttl", spec.x509_svid_ttl, MIN_X509_SVID_TTL, MAX_X509_SVID_TTL)?;
        check_ttl("jwt_svid_ttl", spec.jwt_svid_ttl, MIN_JWT_SVID_TTL, MAX_JWT_SVID_TTL)?;
        if spec.dns_names.len() > MAX_DNS_NAMES {
            return Err(EntryError::TooManyDnsNames);
        }
        check_text("hint", &spec.hint)?;
        check_text("owner", &spec.owner)?;
        check_text("purpose", &spec.purpose)?;
        if let Some(at) = spec.expires_at {
            if at <= now {
                return Err(EntryError::ExpiresInPast(at));
            }
        }
        if let Some(own) = spec.federates_with.iter().find(|f| *f == td) {
            return Err(EntryError::FederatesWithSelf(own.to_string()));
        }
        if !spec.admin && !spec.admin_namespaces.is_empty() {
            return Err(EntryError::AdminNamespacesWithoutAdmin);
        }
        let mut admin_namespaces = spec.admin_namespaces;
        admin_namespaces.sort();
        admin_namespaces.dedup();
        if admin_namespaces.len() > MAX_ADMIN_NAMESPACES {
            return Err(EntryError::TooManyAdminNamespaces);
        }
        let mut dns_names = spec.dns_names;
        dns_names.sort();
        dns_names.dedup();
        let mut federates_with = spec.federates_with;
        federates_with.sort();
        federates_with.dedup();
        Ok(Self {
            id,
            spiffe_id: spec.spiffe_id,
            parent_id: spec.parent_id,
            selectors,
            x509_svid_ttl: spec.x509_svid_ttl,
            jwt_svid_ttl: spec.jwt_svid_ttl,
            dns_names,
            x509_common_name: spec.x509_common_name,
            hint: spec.hint,
            admin: spec.admin,
            federates_with,
            expires_at: spec.expires_at,
            revision,
            created_at,
            owner: spec.owner,
            purpose: spec.purpose,
            namespace: spec.namespace.unwrap_or(namespace),
            admin_namespaces,
        })
    }

    /// The spec that rebuilds this entry (what a `PUT` of it unchanged would send).
    pub fn spec(&self) -> EntrySpec {
        let c = self.clone();
        EntrySpec {
            id: Some(c.id),
            spiffe_id: c.spiffe_id,
            parent_id: c.parent_id,
            selectors: c.selectors.iter().cloned().collect(),
            x509_svid_ttl: c.x509_svid_ttl,
            jwt_svid_ttl: c.jwt_svid_ttl,
            dns_names: c.dns_names,
            x509_common_name: c.x509_common_name,
            hint: c.hint,
            admin: c.admin,
            federates_with: c.federates_with,
            expires_at: c.expires_at,
            owner: c.owner,
            purpose: c.purpose,
            namespace: Some(c.namespace),
            admin_namespaces: c.admin_namespaces,
        }
    }

    /// Whether the entry has expired at `now` (unix seconds).
    pub fn is_expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Why this entry does or does not apply to a workload with `selectors` at `now`.
    pub fn explain(&self, selectors: &Selectors, now: i64) -> MatchOutcome {
        if self.is_expired(now) {
            return MatchOutcome::Expired;
        }
        let missing: Vec<Selector> = self.selectors.missing_from(selectors).cloned().collect();
        if missing.is_empty() {
            MatchOutcome::Matched
        } else {
            MatchOutcome::Missing(missing)
        }
    }

    /// Whether this entry applies to a workload with `selectors` at `now`.
    pub fn matches(&self, selectors: &Selectors, now: i64) -> bool {
        !self.is_expired(now) && self.selectors.is_subset_of(selectors)
    }
}

/// The outcome of matching one entry against a workload's selectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchOutcome {
    /// Every selector of the entry is present.
    Matched,
    /// These selectors of the entry are absent from the workload.
    Missing(Vec<Selector>),
    /// The entry has expired.
    Expired,
}

impl fmt::Display for MatchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchOutcome::Matched => f.write_str("matched"),
            MatchOutcome::Expired => f.write_str("entry expired"),
            MatchOutcome::Missing(m) => {
                f.write_str("missing selector")?;
                if m.len() > 1 {
                    f.write_str("s")?;
                }
                for (i, s) in m.iter().enumerate() {
                    f.write_str(if i == 0 { " " } else { ", " })?;
                    write!(f, "{s}")?;
                }
                Ok(())
            }
        }
    }
}

/// The entries that apply to a workload with `selectors` at `now`.
pub fn matching_entries<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    selectors: &'a Selectors,
    now: i64,
) -> impl Iterator<Item = &'a Entry> {
    entries.into_iter().filter(move |e| e.matches(selectors, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn spec(json: &str) -> Result<EntrySpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn base() -> EntrySpec {
        spec(r#"{"spiffe_id":"spiffe://example.org/web","parent_id":"spiffe://example.org/agent/x","selectors":["unix:uid:1000"]}"#).unwrap()
    }

    #[test]
    fn create_and_update() {
        let e = Entry::create(base(), EntryId::new("e1").unwrap(), &td(), 100).unwrap();
        assert_eq!(e.revision, 0);
        assert_eq!(e.created_at, 100);
        let mut s = base();
        s.hint = "primary".into();
        let u = e.updated(s, &td(), 200).unwrap();
        assert_eq!((u.revision, u.created_at, u.hint.as_str()), (1, 100, "primary"));
    }

    #[test]
    fn spire_spellings_are_stored_as_vouch_spellings_or_refused() {
        let mut s = base();
        s.selectors = ["docker:image_config_digest:sha256:aa", "docker:image_id:app:1", "unix:uid:1000"]
            .iter()
            .map(|t| Selector::parse(t).unwrap())
            .collect();
        let e = Entry::create(s, EntryId::new("e1").unwrap(), &td(), 100).unwrap();
        let stored: Vec<String> = e.selectors.iter().map(ToString::to_string).collect();
        assert_eq!(stored, ["docker:image-id:sha256:aa", "docker:image-name:app:1", "unix:uid:1000"]);
        let mut s = base();
        s.selectors.push(Selector::parse("docker:env:MODE=prod").unwrap());
        let err = e.updated(s, &td(), 200).unwrap_err().to_string();
        assert!(err.starts_with("selectors: selector `docker:env:MODE=prod`"), "{err}");
    }

    #[test]
    fn rules_each_have_an_error() {
        let id = || EntryId::new("e1").unwrap();
        let cases: Vec<(EntrySpec, &str)> = vec![
            (
                {
                    let mut s = base();
                    s.selectors.clear();
                    s
                },
                "at least one selector",
            ),
            (
                {
                    let mut s = base();
                    s.spiffe_id = SpiffeId::parse("spiffe://other.org/web").unwrap();
                    s
                },
                "not in trust domain",
            ),
            (
                {
                    let mut s = base();
                    s.parent_id = SpiffeId::parse("spiffe://other.org/a").unwrap();
                    s
                },
                "parent_id",
            ),
            (
                {
                    let mut s = base();
                    s.spiffe_id = SpiffeId::parse("spiffe://example.org").unwrap();
                    s
                },
                "trust domain itself",
            ),
            (
                {
                    let mut s = base();
                    s.x509_svid_ttl = Some(5);
                    s
                },
                "x509_svid_ttl: 5s",
            ),
            (
                {
                    let mut s = base();
                    s.jwt_svid_ttl = Some(999_999);
                    s
                },
                "jwt_svid_ttl",
            ),
            (
                {
                    let mut s = base();
                    s.expires_at = Some(50);
                    s
                },
                "in the past",
            ),
            (
                {
                    let mut s = base();
                    s.hint = "a\u{7}".into();
                    s
                },
                "hint",
            ),
            (
                {
                    let mut s = base();
                    s.federates_with = vec![td()];
                    s
                },
                "own trust domain",
            ),
        ];
        for (s, want) in cases {
            let err = Entry::create(s, id(), &td(), 100).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn spec_parsing_rejects_unknown_fields_and_bad_values() {
        let unknown = spec(
            r#"{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"],"selector":[]}"#,
        );
        assert!(unknown.unwrap_err().to_string().contains("unknown field `selector`"));
        let bad_dns = spec(
            r#"{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"],"dns_names":["-bad.example"]}"#,
        );
        assert!(bad_dns.unwrap_err().to_string().contains("not a valid DNS name"));
        let bad_sel = spec(
            r#"{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/a","selectors":["nocolon"]}"#,
        );
        assert!(bad_sel.unwrap_err().to_string().contains("type:value"));
    }

    #[test]
    fn common_names() {
        for ok in ["app_user", "App User 1", "db.example.org", "Zürich-Ops", &"x".repeat(64), &"é".repeat(64)]
        {
            assert_eq!(CommonName::new(ok).unwrap().as_str(), ok);
        }
        let cases: [(&str, &str); 6] = [
            ("", "must not be empty"),
            (&"x".repeat(65), "has 65 characters, more than the 64"),
            ("app\nuser", "character 4 of the common name is a control character"),
            ("app\u{0}", "character 4 of the common name is a control character"),
            (" app", "white space"),
            ("app\u{a0}", "white space"),
        ];
        for (bad, want) in cases {
            let err = CommonName::new(bad).unwrap_err().to_string();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
        // Through the spec: the error says what is wrong; an entry without one stays without one, and
        // its JSON (stored rows, sync lines to older agents) is what it was before the field existed.
        let json = |cn: &str| {
            format!(
                r#"{{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"],"x509_common_name":{cn}}}"#
            )
        };
        let err = spec(&json("\"a\\tb\"")).unwrap_err().to_string();
        assert!(err.starts_with("character 2 of the common name is a control character"), "{err}");
        let with = spec(&json("\"app_user\"")).unwrap();
        let e = Entry::create(with, EntryId::new("e1").unwrap(), &td(), 100).unwrap();
        assert_eq!(e.x509_common_name.as_ref().map(CommonName::as_str), Some("app_user"));
        let back: Entry = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let plain = Entry::create(base(), EntryId::new("e2").unwrap(), &td(), 100).unwrap();
        let text = serde_json::to_string(&plain).unwrap();
        assert!(!text.contains("x509_common_name"), "{text}");
        let mut old: serde_json::Value = serde_json::from_str(&text).unwrap();
        old.as_object_mut().unwrap().remove("x509_common_name");
        assert_eq!(serde_json::from_value::<Entry>(old).unwrap(), plain);
    }

    #[test]
    fn namespaces_default_stay_on_update_and_admin_lists_need_admin() {
        let e = Entry::create(base(), EntryId::new("e1").unwrap(), &td(), 100).unwrap();
        assert!(e.namespace.is_default());
        let text = serde_json::to_string(&e).unwrap();
        assert!(!text.contains("namespace"), "a default entry's JSON is what it was: {text}");
        let mut s = base();
        s.namespace = Some(Namespace::new("team-a").unwrap());
        let moved = e.updated(s, &td(), 200).unwrap();
        assert_eq!(moved.namespace.as_str(), "team-a");
        let kept = moved.updated(base(), &td(), 300).unwrap();
        assert_eq!(kept.namespace.as_str(), "team-a", "an update without a namespace leaves it");
        assert_eq!(serde_json::from_str::<Entry>(&serde_json::to_string(&kept).unwrap()).unwrap(), kept);
        assert_eq!(kept.updated(kept.spec(), &td(), 400).unwrap().revision, kept.revision + 1);

        let mut s = base();
        s.admin_namespaces =
            vec![Namespace::new("b").unwrap(), Namespace::new("a").unwrap(), Namespace::new("b").unwrap()];
        let err = Entry::create(s.clone(), EntryId::new("e2").unwrap(), &td(), 100).unwrap_err();
        assert_eq!(err, EntryError::AdminNamespacesWithoutAdmin);
        s.admin = true;
        let admin = Entry::create(s, EntryId::new("e2").unwrap(), &td(), 100).unwrap();
        let names: Vec<&str> = admin.admin_namespaces.iter().map(Namespace::as_str).collect();
        assert_eq!(names, ["a", "b"], "sorted, without repeats");
        let bad = spec(
            r#"{"spiffe_id":"spiffe://example.org/w","parent_id":"spiffe://example.org/a","selectors":["unix:uid:1"],"namespace":"Team A"}"#,
        );
        assert!(bad.unwrap_err().to_string().contains("namespace `Team A` must be"));
    }

    #[test]
    fn dns_names() {
        for ok in ["web", "web.example.org", "*.example.org", "a-b.c1", "WEB.example.org"] {
            assert!(DnsName::new(ok).is_ok(), "{ok}");
        }
        assert_eq!(DnsName::new("WEB.example.org").unwrap().as_str(), "web.example.org");
        for bad in ["", "*.", "a..b", "-a", "a-", "a_b.org", "*.*.a", "a b", &"a".repeat(64)] {
            assert!(DnsName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn matching_and_explanations() {
        let mut s = base();
        s.selectors = vec![
            Selector::parse("docker:label:app:web").unwrap(),
            Selector::parse("docker:image-id:sha256:aa").unwrap(),
        ];
        s.expires_at = Some(1000);
        let e = Entry::create(s, EntryId::new("e1").unwrap(), &td(), 100).unwrap();
        let rogue: Selectors = [Selector::parse("docker:label:app:web").unwrap()].into_iter().collect();
        let mut real = rogue.clone();
        real.insert(Selector::parse("docker:image-id:sha256:aa").unwrap());
        real.insert(Selector::parse("unix:uid:0").unwrap());
        assert!(e.matches(&real, 500));
        assert!(!e.matches(&rogue, 500), "a label alone is not an identity");
        assert_eq!(e.explain(&rogue, 500).to_string(), "missing selector docker:image-id:sha256:aa");
        assert_eq!(e.explain(&real, 1000), MatchOutcome::Expired);
        let all = [e.clone()];
        assert_eq!(matching_entries(&all, &real, 500).count(), 1);
        assert_eq!(matching_entries(&all, &real, 1001).count(), 0);
    }
}
