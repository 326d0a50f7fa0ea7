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

/// Words that, right before `token`, name a token that grants nothing: pagination cursors
/// (`NextToken`, `next_page_token`, `continuation_token`), lexer and language-model tokens
/// (`output_token`, `max_tokens`, `eos_token`, `pad_token`).
const NON_CREDENTIAL_TOKEN: &[&str] = &[
    "next",
    "prev",
    "previous",
    "page",
    "pagination",
    "continuation",
    "cursor",
    "resume",
    "sync",
    "marker",
    "last",
    "start",
    "output",
    "input",
    "max",
    "min",
    "num",
    "total",
    "eos",
    "bos",
    "pad",
    "unk",
    "sep",
    "cls",
    "mask",
    "special",
    "end",
    "stop",
    "lexer",
    "parser",
    "parse",
    "syntax",
    "cancellation",
    "cancel",
];

/// The word of a key that ends where `prefix` ends (`next_page` -> `page`, `NextPage` -> `page`,
/// `MAX_` -> `max`), lowercase.
fn last_word(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    let bytes = trimmed.as_bytes();
    let mut start = bytes.len();
    if bytes.last().is_some_and(u8::is_ascii_uppercase) {
        while start > 0 && bytes[start - 1].is_ascii_uppercase() {
            start -= 1;
        }
    } else {
        while start > 0 && bytes[start - 1].is_ascii_lowercase() {
            start -= 1;
        }
        // camelCase: the capital that begins the word belongs to it.
        if start > 0 && bytes[start - 1].is_ascii_uppercase() {
            start -= 1;
        }
    }
    trimmed[start..].to_ascii_lowercase()
}

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
            if kw == "token" && NON_CREDENTIAL_TOKEN.contains(&last_word(&key[..start]).as_str()) {
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
    if quoted && is_dotted_name(value) {
        return true; // `"output.logits"`, `"Foo.Bar"`: a name, quoted
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

/// A dotted name whose parts are words with at most trailing digits (`torch.float16`, `Foo.Bar`); random
/// tokens mix digits into their parts.
fn is_dotted_name(value: &str) -> bool {
    let mut parts = 0;
    for part in value.split('.') {
        let letters = part.trim_end_matches(|c: char| c.is_ascii_digit());
        if letters.is_empty()
            || !letters.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            || !letters.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
        {
            return false;
        }
        parts += 1;
    }
    parts >= 2
}

/// Runs that people type and random generators practically never produce: six or more characters in
/// alphabet, digit or keyboard order (`abcdef`, `123456`, `qwerty`), as in documentation's sample keys.
fn has_typed_run(value: &str) -> bool {
    const ROWS: [&str; 5] =
        ["abcdefghijklmnopqrstuvwxyz", "0123456789", "qwertyuiop", "asdfghjkl", "zxcvbnm"];
    let lower = value.to_ascii_lowercase();
    let b = lower.as_bytes();
    b.windows(6).any(|w| {
        ROWS.iter().any(|row| {
            let r = row.as_bytes();
            r.windows(6).any(|rw| rw == w || rw.iter().rev().eq(w.iter()))
        })
    })
}

/// A base64 value whose decoded bytes are prose or a placeholder (`bm90IG15IHJlYWwgcGFzc3dvcmQ=` is
/// "not my real password"): documentation of an encoded field, not an encoded secret.
fn decodes_to_prose(value: &str, allow: &Allowlist) -> bool {
    use base64::Engine as _;
    if value.len() < 12
        || !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    {
        return false;
    }
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(value) else { return false };
    let Ok(text) = std::str::from_utf8(&bytes) else { return false };
    if !text.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return false;
    }
    let lower = text.to_ascii_lowercase();
    text.contains(' ')
        || allow.allows_value(text)
        || ["password", "secret", "example", "not real", "fake"].iter().any(|w| lower.contains(w))
}

/// Hex of a digest's length (MD5, SHA-1, SHA-224, SHA-256, SHA-384, SHA-512).
pub fn is_digest_hex(value: &str) -> bool {
    matches!(value.len(), 32 | 40 | 56 | 64 | 96 | 128) && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A line that holds digests rather than keys: it names a hash (`sha256`, `digest`, `checksum`,
/// `integrity`) outside `value`, or it is a row of a lookup table with two or more digest-shaped values.
pub fn hash_context(line: &str, value: &str) -> bool {
    if !is_digest_hex(value) {
        return false;
    }
    let lower = line.to_ascii_lowercase().replace(&value.to_ascii_lowercase(), " ");
    if ["sha1", "sha224", "sha256", "sha384", "sha512", "md5", "digest", "checksum", "hash", "integrity"]
        .iter()
        .any(|w| lower.contains(w))
    {
        return true;
    }
    line.split(|c: char| !c.is_ascii_hexdigit()).filter(|w| is_digest_hex(w)).count() >= 2
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
        ValueClass::Password => {
            entropy_ok && (len >= 10 || char_classes(value) >= 2) && !decodes_to_prose(value, allow)
        }
        ValueClass::Secret => {
            // Generated tokens shorter than 20 characters use both cases (or are hex); lowercase and
            // digits alone at that length is typed by hand (`ad180jjd733klru7` in RFC 5849's examples).
            let hand_typed = len < 20
                && !value.bytes().any(|b| b.is_ascii_uppercase())
                && !value.bytes().all(|b| b.is_ascii_hexdigit());
            entropy_ok
                && len >= 12
                && alnum_classes(value) >= 2
                && (has_digit || len >= 32)
                && !hand_typed
                && !has_typed_run(value)
                && !decodes_to_prose(value, allow)
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
            "access_token",
            "refresh_token",
            "SessionToken",
            "id_token",
            "x-auth-token",
        ] {
            assert!(key_is_secretish(key, &secret), "{key}");
        }
        for key in [
            "token_count",
            "TOKEN_COUNT_USER",
            "secretKeyRef",
            "tokenizer",
            "token_url",
            "NextToken",
            "nextPageToken",
            "next_page_token",
            "ContinuationToken",
            "output_token",
            "MAX_TOKENS",
            "eos_token",
            "pad_token",
        ] {
            assert!(!key_is_secretish(key, &secret), "{key}");
        }
    }

    #[test]
    fn value_shapes_of_samples() {
        assert_eq!(last_word("next_page_"), "page");
        assert_eq!(last_word("NextPage"), "page");
        assert_eq!(last_word("MAX_"), "max");
        assert!(is_dotted_name("torch.float16") && is_dotted_name("Foo.Bar") && is_dotted_name("A.B"));
        assert!(!is_dotted_name("ab3x9.Qz7k2") && !is_dotted_name("plain") && !is_dotted_name("a..b"));
        for v in ["abcdef123", "x123456y", "QWERTYzz", "zyxwvu11", "987654ab"] {
            assert!(has_typed_run(v), "{v}");
        }
        assert!(!has_typed_run("q8Zr3Lm7Vx2Kp9Wn4Tb6"));
        let rules = RuleSet::default_rules().unwrap();
        // "not my real password", "user:example", "this is a test"
        for v in ["bm90IG15IHJlYWwgcGFzc3dvcmQ=", "dXNlcjpleGFtcGxl", "dGhpcyBpcyBhIHRlc3Q="] {
            assert!(decodes_to_prose(v, &rules.allowlist), "{v}");
        }
        // "admin:hK8#mQ2!xP9z", and random bytes
        for v in ["YWRtaW46aEs4I21RMiF4UDl6", "q8Zr3Lm7Vx2Kp9Wn4Tb6Hj"] {
            assert!(!decodes_to_prose(v, &rules.allowlist), "{v}");
        }
        let h = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert!(hash_context(&format!("sha256 = \"{h}\""), h));
        assert!(hash_context(&format!("\"{h}\": \"{h}\","), h));
        assert!(!hash_context(&format!("secret_key = \"{h}\""), h));
        assert!(!hash_context("digest = \"q8Zr3Lm7Vx2Kp9Wn4Tb6\"", "q8Zr3Lm7Vx2Kp9Wn4Tb6"));
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
