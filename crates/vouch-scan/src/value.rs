//! Pure checks on candidate secrets and on the keys they are assigned to: entropy, character classes,
//! placeholders, references. No I/O; unit-tested with tables.

use std::sync::OnceLock;

use regex::Regex;

use crate::rules::{Allowlist, ValueClass};

/// Shannon entropy in bits per byte.
pub fn shannon_entropy(s: &str) -> f64 {
    let bytes = s.as_bytes();
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    let n = bytes.len() as f64;
    counts.iter().filter(|&&c| c > 0).map(|&c| f64::from(c) / n).map(|p| -p * p.log2()).sum()
}

/// How many of lowercase, uppercase, digits and symbols occur.
pub fn char_classes(s: &str) -> usize {
    let lower = s.bytes().any(|b| b.is_ascii_lowercase());
    let upper = s.bytes().any(|b| b.is_ascii_uppercase());
    let digit = s.bytes().any(|b| b.is_ascii_digit());
    let symbol = s.bytes().any(|b| !b.is_ascii_alphanumeric());
    [lower, upper, digit, symbol].iter().filter(|&&x| x).count()
}

fn alnum_classes(s: &str) -> usize {
    let lower = s.bytes().any(|b| b.is_ascii_lowercase());
    let upper = s.bytes().any(|b| b.is_ascii_uppercase());
    let digit = s.bytes().any(|b| b.is_ascii_digit());
    [lower, upper, digit].iter().filter(|&&x| x).count()
}

/// Suffixes a secret-ish key may carry after its keyword (`STRIPE_SECRET_KEY`, `API_TOKEN_V2`); any
/// other suffix names something about the secret, not the secret (`token_count`, `password_file`,
/// `secretKeyRef`).
// A constant pattern: were it invalid, every test of this module would fail.
#[allow(clippy::expect_used)]
fn secret_suffix() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(
            r"^(?:s|key|keys|value|val|str|string|b64|base64|hex|raw|plain(?:text)?|text|data|pem|secret|token|pass(?:word)?|v?\d+|prod|production|dev|staging|live)?$",
        )
        .expect("static regex")
    })
}

/// Keywords that only count as a whole component of a key (`db_pass`, `PWD`), not inside a word
/// (`bypass`, `compass`).
const COMPONENT_ONLY: &[&str] = &["pass", "pwd"];

/// Whether `key` names a secret for one of `keywords` (lowercase): some occurrence of a keyword is
/// followed only by an allowed suffix, and short keywords stand as a component of their own.
pub fn key_is_secretish(key: &str, keywords: &[String]) -> bool {
    let lower = key.to_ascii_lowercase();
    for kw in keywords {
        let mut from = 0;
        while let Some(pos) = lower[from..].find(kw.as_str()) {
            let start = from + pos;
            let end = start + kw.len();
            from = start + 1;
            if COMPONENT_ONLY.contains(&kw.as_str()) && !is_component(key, start, end) {
                continue;
            }
            let suffix: String = lower[end..].chars().filter(|c| c.is_ascii_alphanumeric()).collect();
            if secret_suffix().is_match(&suffix) {
                return true;
            }
        }
    }
    false
}

fn is_component(key: &str, start: usize, end: usize) -> bool {
    let bytes = key.as_bytes();
    let before_ok = start == 0
        || !bytes[start - 1].is_ascii_alphanumeric()
        || (bytes[start - 1].is_ascii_lowercase() && bytes[start].is_ascii_uppercase());
    let after_ok = end == bytes.len()
        || !bytes[end].is_ascii_alphanumeric()
        || (bytes[end - 1].is_ascii_lowercase() && bytes[end].is_ascii_uppercase())
        || key[end..].to_ascii_lowercase().starts_with("word")
        || key[end..].to_ascii_lowercase().starts_with("wd");
    before_ok && after_ok
}

/// An absolute or home-relative path with at least two components.
fn looks_like_path(value: &str) -> bool {
    (value.starts_with('/') || value.starts_with("~/") || value.starts_with("./"))
        && value.trim_start_matches(['~', '.', '/']).contains('/')
}

/// Values that refer to a secret instead of holding one: variables, templates, format strings,
/// dotted references (`var.db_password`), calls.
// A constant pattern: were it invalid, every test of this module would fail.
#[allow(clippy::expect_used)]
pub fn is_reference(value: &str, quoted: bool) -> bool {
    static DOTTED: OnceLock<Regex> = OnceLock::new();
    let dotted = DOTTED.get_or_init(|| {
        Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*(?:(?:\.|::|->)[A-Za-z_][A-Za-z0-9_]*)+$").expect("static regex")
    });
    if value.contains("${")
        || value.contains("{{")
        || value.contains("$(")
        || matches!(value, "%s" | "%v" | "%d")
        // HTML-escaped placeholders in rendered docs: `&lt;string&gt;`, `&#x3C;string>`.
        || value.starts_with("&lt;")
        || value.starts_with("&#")
    {
        return true;
    }
    if value.starts_with('$')
        && value.len() > 1
        && value[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return true;
    }
    if !quoted {
        static YAML_NODE: OnceLock<Regex> = OnceLock::new();
        let yaml_node = YAML_NODE.get_or_init(|| {
            // Anchors and aliases (`&name`, `*name`) and tags (`!vault`, `!!binary`).
            Regex::new(r"^(?:[*&][A-Za-z_][A-Za-z0-9_-]*|!!?[A-Za-z]+)$").expect("static regex")
        });
        let first = value.as_bytes().first().copied().unwrap_or(b' ');
        if matches!(first, b'{' | b'[' | b'(' | b'<' | b'|' | b'>') || yaml_node.is_match(value) {
            return true; // YAML structures and block scalars, anchors, aliases, tags
        }
        if value.contains('(') || dotted.is_match(value) {
            return true;
        }
    }
    false
}

/// Whether `value`, assigned to a key of `class` (or found by a rule with that class), holds a secret.
pub fn literal_is_secret(
    value: &str,
    quoted: bool,
    class: ValueClass,
    min_entropy: Option<f64>,
    allow: &Allowlist,
) -> bool {
    let len = value.chars().count();
    if !(6..=512).contains(&len) || value.chars().any(char::is_whitespace) {
        return false;
    }
    if allow.allows_value(value) || is_reference(value, quoted) {
        return false;
    }
    let lower = value.to_ascii_lowercase();
    if ["password", "passwd", "secret", "token"].iter().any(|w| lower.contains(w)) {
        return false; // names of things (`new_password_field`), not values
    }
    if looks_like_path(value) {
        return false; // `PWD: /home/me`, `NOPASSWD: /bin/systemctl`
    }
    let entropy_ok = min_entropy.is_none_or(|min| shannon_entropy(value) >= min);
    // Random tokens of this length almost always hold a digit; identifiers and class names
    // (`_EllipticCurvePrivateKey` in a type annotation) do not.
    let has_digit = value.bytes().any(|b| b.is_ascii_digit());
    match class {
        ValueClass::Password => entropy_ok && (len >= 10 || char_classes(value) >= 2),
        ValueClass::Secret => {
            entropy_ok && len >= 12 && alnum_classes(value) >= 2 && (has_digit || len >= 32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;

    fn kws(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entropy_orders_random_above_words() {
        assert!(shannon_entropy("aaaaaaaa") < 0.01);
        assert!(shannon_entropy("wJalrXUtnFEMIK7MDENGbPxRfiCY") > 4.0);
        assert!(shannon_entropy("session-cache") < 3.5);
    }

    #[test]
    fn keys_that_name_secrets() {
        let pw = kws(&["password", "passwd", "pass", "pwd"]);
        let secret = kws(&["secret", "token", "api_key"]);
        for key in [
            "DB_PASSWORD",
            "adminPassword",
            "ADMINPASSWORD",
            "db_pass",
            "passwd",
            "spring.datasource.password",
        ] {
            assert!(key_is_secretish(key, &pw), "{key}");
        }
        for key in ["bypass", "compass", "password_file", "passwordField", "passport"] {
            assert!(!key_is_secretish(key, &pw), "{key}");
        }
        for key in [
            "GITHUB_TOKEN",
            "slackToken",
            "STRIPE_SECRET_KEY",
            "stripe_api_key",
            "API_TOKEN_V2",
            "client_secret",
        ] {
            assert!(key_is_secretish(key, &secret), "{key}");
        }
        for key in ["token_count", "TOKEN_COUNT_USER", "secretKeyRef", "tokenizer", "token_url"] {
            assert!(!key_is_secretish(key, &secret), "{key}");
        }
    }

    #[test]
    fn placeholders_and_references_are_not_secrets() {
        let rules = RuleSet::default_rules().unwrap();
        let allow = &rules.allowlist;
        let pw = ValueClass::Password;
        for (v, quoted) in [
            ("changeme", true),
            ("${DB_PASSWORD}", false),
            ("$DB_PASSWORD", false),
            ("$(vault kv get -field=password secret/db)", true),
            ("<your-password-here>", false),
            ("********", true),
            ("{{ .Values.db.password }}", false),
            ("var.db_password", false),
            ("os.getenv(\"X\")", false),
            ("{name: db-secret, key: password}", false),
            ("AKIAIOSFODNN7EXAMPLE", true),
            ("", true),
            ("abc", true),
        ] {
            assert!(!literal_is_secret(v, quoted, pw, None, allow), "{v}");
        }
        for v in ["Summer_1234!", "Tiger42", "hK8#mQ2!xP9z", "Dragon.77@"] {
            assert!(literal_is_secret(v, true, pw, None, allow), "{v}");
        }
        // Unquoted values may start with YAML's special characters and still be passwords.
        for v in ["!pNRS119Kin68jma_o", "*W$m-5m2qdDmY6BbvurdhsX", "IilJcUq8f%s&b-v6IPG"] {
            assert!(literal_is_secret(v, false, pw, None, allow), "{v}");
        }
        for v in [
            "*default_password_alias",
            "&anchor",
            "!vault",
            "|",
            ">-",
            "/Users/maciej",
            "/bin/systemctl",
            "&#x3C;string>]}",
        ] {
            assert!(!literal_is_secret(v, false, pw, None, allow), "{v}");
        }
        let s = ValueClass::Secret;
        assert!(literal_is_secret("wJalrXUtnFEMIK7MDENGbPxRfiCYzzKEY123", true, s, Some(3.0), allow));
        assert!(!literal_is_secret("session-cache-node", true, s, Some(3.0), allow));
        assert!(!literal_is_secret("_EllipticCurvePrivateKey", true, s, Some(3.0), allow), "a class name");
        assert!(literal_is_secret("q8Zr3Lm7Vx2Kp9Wn4Tb6", true, s, Some(3.0), allow));
        assert!(!literal_is_secret("1234567890123", true, s, Some(3.0), allow));
        assert!(!literal_is_secret("3f2b8c1e-4a5d-4b6c-a7d8-9e0f1a2b3c4d", true, s, Some(3.0), allow));
    }
}
