//! The `[token_exchange]` configuration and its rules, as pure functions over claims: which rule a
//! verified subject token matches, the SPIFFE ID it maps to, and, when none matches, which rule came
//! closest and which of its conditions failed.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;
use vouch_ca::jwt::JwsAlg;
use vouch_core::{SpiffeId, TrustDomain};

use crate::config::{ConfigError, OidcDiscovery, Rate};
use crate::issuer_keys::{HttpsWithoutCa, KeySet, KeySource};

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileTokenExchange {
    #[serde(default)]
    issuer: Vec<FileIssuer>,
    #[serde(default)]
    rule: Vec<FileRule>,
    per_second: Option<f64>,
    burst: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIssuer {
    issuer: String,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    discovery_url: Option<String>,
    #[serde(default)]
    discovery_ca: Option<PathBuf>,
    #[serde(default)]
    algorithms: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    name: String,
    issuer: String,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    claims: BTreeMap<String, String>,
    spiffe_id: String,
}

/// An external issuer whose tokens may be exchanged (`[[token_exchange.issuer]]`).
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// Its `iss`, compared byte for byte.
    pub issuer: String,
    /// Where its signing keys come from.
    pub keys: IssuerKeySource,
    /// The `alg`s accepted from it (ES256 unless configured).
    pub algorithms: Vec<JwsAlg>,
}

/// Where a trusted issuer's signing keys come from.
#[derive(Debug, Clone)]
pub enum IssuerKeySource {
    /// A JWKS on disk, read again when the file changes; the keys read at start (checked to be
    /// usable) stay in use while a changed file is unreadable.
    File {
        /// The file.
        path: PathBuf,
        /// The keys read at start.
        keys: KeySet,
    },
    /// The issuer's OIDC discovery document (`jwks_uri`), fetched when the first token comes and
    /// again as [`crate::issuer_keys`] says.
    Discovery(OidcDiscovery),
}

/// How a rule matches `sub`: exactly, or by a prefix (written with a trailing `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectMatch {
    /// The whole subject.
    Exact(String),
    /// A prefix of it.
    Prefix(String),
}

/// The SPIFFE ID a rule gives: literal, or with `{sub}` replaced by the token's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdTemplate {
    before: String,
    after: Option<String>,
}

/// A `[[token_exchange.rule]]`: conditions on a verified token's claims, and the SPIFFE ID it maps to.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name, in refusals and audit records.
    pub name: String,
    /// The `iss` it applies to.
    pub issuer: String,
    /// A value `aud` must contain.
    pub audience: Option<String>,
    /// How `sub` must read.
    pub subject: Option<SubjectMatch>,
    /// Top-level string claims that must equal these values.
    pub claims: BTreeMap<String, String>,
    /// The SPIFFE ID given.
    pub spiffe_id: IdTemplate,
}

/// The effective `[token_exchange]` section.
#[derive(Debug, Clone)]
pub struct TokenExchangeConfig {
    /// Trusted issuers.
    pub issuers: Vec<TrustedIssuer>,
    /// Rules, tried in order.
    pub rules: Vec<Rule>,
    /// Exchanges per issuer.
    pub rate: Rate,
}

/// Exchanges per second per issuer by default, and the burst: far above what workloads exchanging
/// tokens at start and at renewal need, low enough that one issuer cannot take the server's store.
const DEFAULT_RATE: Rate = Rate { per_second: 200.0, burst: 1000 };

fn bad(why: String) -> ConfigError {
    ConfigError::Invalid(format!("token_exchange: {why}"))
}

impl IdTemplate {
    /// Parses `text`: a SPIFFE ID of `td`, with at most one `{sub}` in its path.
    fn parse(text: &str, td: &TrustDomain) -> Result<Self, String> {
        let (before, after) = match text.split_once("{sub}") {
            Some((b, a)) => (b.to_owned(), Some(a.to_owned())),
            None => (text.to_owned(), None),
        };
        if after.as_deref().is_some_and(|a| a.contains("{sub}"))
            || text.replace("{sub}", "").contains(['{', '}'])
        {
            return Err(format!("spiffe_id `{text}`: the only placeholder is one `{{sub}}`"));
        }
        if after.is_some() && !before.starts_with(&format!("spiffe://{td}/")) {
            return Err(format!(
                "spiffe_id `{text}`: `{{sub}}` may only stand in the path of `spiffe://{td}/`"
            ));
        }
        let template = Self { before, after };
        let sample = template.fill("sub").map_err(|e| format!("spiffe_id `{text}`: {e}"))?;
        if sample.trust_domain() != td || sample.is_trust_domain_id() {
            return Err(format!("spiffe_id `{text}` is not a workload ID in trust domain `{td}`"));
        }
        crate::reserved::check_workload_id("spiffe_id", &sample)
            .map_err(|e| format!("spiffe_id `{text}`: {}", e.message))?;
        Ok(template)
    }

    /// The SPIFFE ID for a token whose subject is `sub`: `sub` must be one or more path segments of
    /// letters, digits, `.`, `-` and `_` (the SPIFFE ID rules), so it cannot leave the path.
    pub fn fill(&self, sub: &str) -> Result<SpiffeId, String> {
        let text = match &self.after {
            None => self.before.clone(),
            Some(after) => {
                if sub.is_empty() || sub.len() > 255 {
                    return Err("`sub` must be 1-255 bytes to stand in a SPIFFE ID".into());
                }
                format!("{}{sub}{after}", self.before)
            }
        };
        SpiffeId::parse(&text).map_err(|e| format!("not a valid SPIFFE ID: {e}"))
    }
}

impl TokenExchangeConfig {
    /// Checks the section and reads the JWKS files it names; `None` when it configures nothing.
    pub(crate) fn build(f: FileTokenExchange, td: &TrustDomain) -> Result<Option<Self>, ConfigError> {
        if f.issuer.is_empty() {
            if !f.rule.is_empty() {
                return Err(bad("rules need at least one [[token_exchange.issuer]]".into()));
            }
            return Ok(None);
        }
        let mut issuers: Vec<TrustedIssuer> = Vec::new();
        for i in f.issuer {
            let bad = |why: String| bad(format!("issuer `{}`: {why}", i.issuer));
            if i.issuer.is_empty() || issuers.iter().any(|o| o.issuer == i.issuer) {
                return Err(bad("issuers must be non-empty and each configured once".into()));
            }
            // Public issuers (a CI system's, a cloud's) have web-PKI certificates: the system's
            // roots unless a CA is configured.
            let keys = match KeySource::resolve(
                i.jwks_file,
                i.discovery_url.as_deref(),
                i.discovery_ca,
                HttpsWithoutCa::SystemRoots,
                "jwks_file (the issuer's JWKS on disk) or discovery_url (its OIDC discovery endpoint, \
                 or the issuer URL itself)",
            )
            .map_err(bad)?
            {
                KeySource::File { path, keys } => IssuerKeySource::File { path, keys },
                KeySource::Discovery(d) => IssuerKeySource::Discovery(d),
            };
            let algorithms = match i.algorithms {
                None => vec![JwsAlg::Es256],
                Some(list) => list
                    .iter()
                    .map(|a| match a.as_str() {
                        "ES256" => Ok(JwsAlg::Es256),
                        "RS256" => Ok(JwsAlg::Rs256),
                        other => Err(bad(format!("algorithm `{other}`: use ES256 or RS256"))),
                    })
                    .collect::<Result<_, _>>()?,
            };
            if algorithms.is_empty() {
                return Err(bad("algorithms must name at least one of ES256 and RS256".into()));
            }
            issuers.push(TrustedIssuer { issuer: i.issuer, keys, algorithms });
        }
        let mut rules: Vec<Rule> = Vec::new();
        for r in f.rule {
            let bad = |why: String| bad(format!("rule `{}`: {why}", r.name));
            if r.name.is_empty() || rules.iter().any(|o| o.name == r.name) {
                return Err(bad("rule names must be non-empty and unique".into()));
            }
            if !issuers.iter().any(|i| i.issuer == r.issuer) {
                return Err(bad(format!("issuer `{}` is not a [[token_exchange.issuer]]", r.issuer)));
            }
            let subject = r.subject.map(|s| match s.strip_suffix('*') {
                Some(prefix) => SubjectMatch::Prefix(prefix.to_owned()),
                None => SubjectMatch::Exact(s),
            });
            if r.audience.is_none() && subject.is_none() && r.claims.is_empty() {
                return Err(bad(
                    "a rule needs a condition besides the issuer (audience, subject or claims): \
                     otherwise every token of the issuer gets the identity"
                        .into(),
                ));
            }
            for reserved in ["iss", "aud", "sub", "exp", "nbf", "iat", "jti"] {
                if r.claims.contains_key(reserved) {
                    return Err(bad(format!(
                        "claim `{reserved}` is checked by its own key or by vouch, not in claims"
                    )));
                }
            }
            let spiffe_id = IdTemplate::parse(&r.spiffe_id, td).map_err(bad)?;
            rules.push(Rule {
                name: r.name,
                issuer: r.issuer,
                audience: r.audience,
                subject,
                claims: r.claims,
                spiffe_id,
            });
        }
        if let Some(i) = issuers.iter().find(|i| !rules.iter().any(|r| r.issuer == i.issuer)) {
            return Err(bad(format!("issuer `{}` has no [[token_exchange.rule]]", i.issuer)));
        }
        let per_second = f.per_second.unwrap_or(DEFAULT_RATE.per_second);
        let burst = f.burst.unwrap_or(DEFAULT_RATE.burst);
        if !per_second.is_finite() || per_second < 0.0 || burst == 0 {
            return Err(bad("per_second must be >= 0 (0 turns the limit off) and burst at least 1".into()));
        }
        Ok(Some(Self { issuers, rules, rate: Rate { per_second, burst } }))
    }
}

/// Why no rule gave an identity: the closest rule (most conditions met; the first of equals) and
/// its first failed condition. Never quotes the token or a claim's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no token exchange rule matches; closest is rule `{rule}` ({met} of {of} conditions met): {failed}")]
pub struct NoMatch {
    /// The closest rule.
    pub rule: String,
    /// Conditions it met.
    pub met: usize,
    /// Conditions it has.
    pub of: usize,
    /// Its first failed condition.
    pub failed: String,
}

fn cut(s: &str) -> String {
    s.chars().take(128).collect()
}

/// Checks one rule; `Err((met, of, first failure))` if a condition fails.
fn check(rule: &Rule, claims: &Value) -> Result<(), (usize, usize, String)> {
    let mut results: Vec<Result<(), String>> = Vec::new();
    let iss = claims.get("iss").and_then(Value::as_str);
    results.push(if iss == Some(rule.issuer.as_str()) {
        Ok(())
    } else {
        Err(format!("`iss` is not `{}`", cut(&rule.issuer)))
    });
    if let Some(want) = &rule.audience {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => a == want,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
            _ => false,
        };
        results.push(if ok { Ok(()) } else { Err(format!("`aud` does not contain `{}`", cut(want))) });
    }
    if let Some(m) = &rule.subject {
        let sub = claims.get("sub").and_then(Value::as_str);
        results.push(match (m, sub) {
            (_, None) => Err("claim `sub` is missing or not a string".into()),
            (SubjectMatch::Exact(want), Some(s)) if s != want => Err(format!("`sub` is not `{}`", cut(want))),
            (SubjectMatch::Prefix(p), Some(s)) if !s.starts_with(p.as_str()) => {
                Err(format!("`sub` does not start with `{}`", cut(p)))
            }
            _ => Ok(()),
        });
    }
    for (name, want) in &rule.claims {
        results.push(match claims.get(name).and_then(Value::as_str) {
            None => Err(format!("claim `{}` is missing or not a string", cut(name))),
            Some(v) if v != want => Err(format!("claim `{}` is not `{}`", cut(name), cut(want))),
            Some(_) => Ok(()),
        });
    }
    let of = results.len();
    let met = results.iter().filter(|r| r.is_ok()).count();
    match results.into_iter().find_map(Result::err) {
        None => Ok(()),
        Some(failed) => Err((met, of, failed)),
    }
}

/// The first rule (in configured order) whose every condition the verified `claims` meet.
pub fn first_match<'r>(rules: &'r [Rule], claims: &Value) -> Result<&'r Rule, NoMatch> {
    let mut closest: Option<NoMatch> = None;
    for rule in rules {
        match check(rule, claims) {
            Ok(()) => return Ok(rule),
            Err((met, of, failed)) => {
                if closest.as_ref().is_none_or(|c| met > c.met) {
                    closest = Some(NoMatch { rule: rule.name.clone(), met, of, failed });
                }
            }
        }
    }
    Err(closest.unwrap_or(NoMatch {
        rule: "(none)".into(),
        met: 0,
        of: 0,
        failed: "no rule is configured".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn td() -> TrustDomain {
        TrustDomain::new("example.org").unwrap()
    }

    fn rule(
        name: &str,
        audience: Option<&str>,
        subject: Option<SubjectMatch>,
        claims: &[(&str, &str)],
        id: &str,
    ) -> Rule {
        Rule {
            name: name.into(),
            issuer: "https://ci.example".into(),
            audience: audience.map(Into::into),
            subject,
            claims: claims.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            spiffe_id: IdTemplate::parse(id, &td()).unwrap(),
        }
    }

    #[test]
    fn the_first_matching_rule_wins_and_a_miss_names_the_closest_rule_and_its_failed_condition() {
        let rules = [
            rule(
                "deploy",
                Some("vouch"),
                Some(SubjectMatch::Exact("repo:acme/app:ref:main".into())),
                &[("environment", "prod")],
                "spiffe://example.org/ci/deploy",
            ),
            rule(
                "ci",
                Some("vouch"),
                Some(SubjectMatch::Prefix("repo:acme/".into())),
                &[],
                "spiffe://example.org/ci/build",
            ),
        ];
        let claims = |sub: &str, aud: Value, env: &str| json!({"iss": "https://ci.example", "sub": sub, "aud": aud, "environment": env});
        assert_eq!(
            first_match(&rules, &claims("repo:acme/app:ref:main", json!("vouch"), "prod")).unwrap().name,
            "deploy"
        );
        assert_eq!(
            first_match(&rules, &claims("repo:acme/app:ref:dev", json!(["x", "vouch"]), "prod"))
                .unwrap()
                .name,
            "ci"
        );
        // `deploy` meets three of four conditions, `ci` two of three: deploy is closest.
        let miss = first_match(&rules, &claims("repo:other/app", json!("vouch"), "prod")).unwrap_err();
        assert_eq!((miss.rule.as_str(), miss.met, miss.of), ("deploy", 3, 4));
        assert_eq!(miss.failed, "`sub` is not `repo:acme/app:ref:main`");
        let miss = first_match(&rules, &claims("repo:acme/app:ref:main", json!("other"), "dev")).unwrap_err();
        assert_eq!((miss.rule.as_str(), miss.failed.as_str()), ("deploy", "`aud` does not contain `vouch`"));
        let miss = first_match(&rules, &json!({"iss": "https://ci.example", "aud": "vouch"})).unwrap_err();
        assert!(miss.to_string().contains("claim `sub` is missing"), "{miss}");
        let wrong_iss = json!({"iss": "https://other.example", "sub": "repo:acme/app:ref:main", "aud": "vouch", "environment": "prod"});
        assert_eq!(first_match(&rules, &wrong_iss).unwrap_err().failed, "`iss` is not `https://ci.example`");
    }

    #[test]
    fn templates_substitute_sub_only_within_the_path_of_the_trust_domain() {
        let t = IdTemplate::parse("spiffe://example.org/ci/{sub}/runner", &td()).unwrap();
        assert_eq!(t.fill("app-1").unwrap().to_string(), "spiffe://example.org/ci/app-1/runner");
        assert_eq!(t.fill("team/app").unwrap().to_string(), "spiffe://example.org/ci/team/app/runner");
        for bad in ["", "..", "a/../b", "a b", "repo:acme", "a//b", "x?y", "a#b", "%2e%2e"] {
            assert!(t.fill(bad).is_err(), "{bad:?}");
        }
        let literal = IdTemplate::parse("spiffe://example.org/ci", &td()).unwrap();
        assert_eq!(literal.fill("anything at all").unwrap().to_string(), "spiffe://example.org/ci");
        for (text, want) in [
            ("spiffe://other.org/ci/{sub}", "only stand in the path"),
            ("spiffe://other.org/ci", "not a workload ID in trust domain"),
            ("spiffe://example.org", "not a workload ID"),
            ("spiffe://{sub}/x", "only stand in the path"),
            ("spiffe://example.org/{sub}/{sub}", "one `{sub}`"),
            ("spiffe://example.org/{name}", "one `{sub}`"),
            ("spiffe://example.org/agent/{sub}", "reserved for node agents"),
            ("not an id", "spiffe_id `not an id`"),
        ] {
            let err = IdTemplate::parse(text, &td()).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
