//! The detection engine: keyword prefilter over a chunk of lines, then the rules of the keywords found,
//! line by line. Multi-line shapes (PEM bodies, Kubernetes `- name:` / `value:` pairs) look ahead a few
//! lines and carry their state across chunk boundaries.

use std::sync::OnceLock;

use base64::Engine as _;
use regex::Regex;

use crate::rules::{Rule, RuleKind, RuleSet, Validation, ValueClass};
use crate::value::{hash_context, key_is_secretish, literal_is_secret, shannon_entropy};

/// A secret found in text, before it is given a place (file, layer, config field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Index of the rule in the [`RuleSet`].
    pub rule: usize,
    /// 1-based line of the secret.
    pub line: u64,
    /// Last line of a multi-line secret (a PEM block); `line` otherwise.
    pub end_line: u64,
    /// 1-based column, in characters.
    pub column: usize,
    /// The secret itself (never printed; reports redact it and fingerprint it).
    pub secret: String,
}

/// Findings a scan of one text dropped, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Suppressed {
    /// By a `vouch:allow` comment.
    pub inline: usize,
    /// Found in test data by a rule that skips it (see [`FileClass::test_data`]).
    pub test_data: usize,
}

/// What kind of file the text comes from; it decides whether unquoted values count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// Program source: only quoted literals are values (`password = get_password()` is a call).
    Code,
    /// Configuration, scripts, env files, manifests, unknown: unquoted values count.
    Config,
}

impl TextKind {
    /// Classifies by file name.
    pub fn of_path(path: &str) -> TextKind {
        let name = path.rsplit('/').next().unwrap_or(path);
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "py" | "pyi" | "js" | "mjs" | "cjs" | "ts" | "tsx" | "jsx" | "go" | "java" | "kt" | "kts"
            | "scala" | "rb" | "php" | "cs" | "rs" | "c" | "h" | "cc" | "cpp" | "hpp" | "swift" | "m"
            | "dart" | "groovy" | "lua" | "pl" | "ex" | "exs" | "clj" | "vue" | "svelte" => TextKind::Code,
            _ => TextKind::Config,
        }
    }
}

/// What the scanner knows of a file from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileClass {
    /// Code or configuration.
    pub kind: TextKind,
    /// Tests, fixtures, examples or documentation samples: keys and tokens there are test vectors and
    /// samples far more often than leaks, so rules marked `skip_test_data` do not report them.
    pub test_data: bool,
}

impl FileClass {
    /// Configuration text with no path to judge by (standard input).
    pub const CONFIG: FileClass = FileClass { kind: TextKind::Config, test_data: false };

    /// Classifies by path.
    pub fn of_path(path: &str) -> FileClass {
        FileClass { kind: TextKind::of_path(path), test_data: is_test_data_path(path) }
    }
}

/// Directories that hold tests, fixtures and samples.
const TEST_DIRS: &[&str] = &[
    "test",
    "tests",
    "testing",
    "testdata",
    "test_data",
    "test-data",
    "__tests__",
    "__mocks__",
    "fixture",
    "fixtures",
    "spec",
    "specs",
    "example",
    "examples",
    "sample",
    "samples",
    "testsuite",
    "unittest",
];

/// Whether `path` is a test, fixture or sample: a directory named so, or a source file named as a
/// test (`x_test.go`, `test_x.py`, `x.test.ts`, `x_spec.rb`, `XTest.java`).
pub fn is_test_data_path(path: &str) -> bool {
    let mut parts = path.split('/').filter(|p| !p.is_empty()).peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_some() {
            if TEST_DIRS.contains(&part.to_ascii_lowercase().as_str()) {
                return true;
            }
            continue;
        }
        if TextKind::of_path(part) != TextKind::Code {
            return false;
        }
        let stem = part.split('.').next().unwrap_or(part);
        let dotted_test = part.split('.').skip(1).any(|p| p == "test" || p == "spec");
        return stem.starts_with("test_")
            || stem.ends_with("_test")
            || stem.ends_with("_tests")
            || stem.ends_with("_spec")
            || stem.ends_with("Test")
            || stem.ends_with("Tests")
            || dotted_test;
    }
    false
}

/// How many lines after `- name: X` a `value:` may come.
const K8S_LOOKAHEAD: u32 = 3;
/// How many lines a PEM block may span before its END line is given up on.
const PEM_MAX_LINES: u64 = 400;

/// Multi-line state carried from one chunk into the next.
#[derive(Debug, Default)]
struct Carry {
    /// A Kubernetes env `name:` that is secret-ish: (rule, lines still allowed).
    k8s: Option<(usize, u32)>,
    /// A PEM BEGIN line whose END has not been seen: index into `out` of the candidate.
    pem: Option<usize>,
}

/// Scans one text (a file, a layer entry, a config field) chunk by chunk.
pub struct TextScanner<'r> {
    rules: &'r RuleSet,
    kind: TextKind,
    test_data: bool,
    /// Line number of the first line of the next chunk.
    line: u64,
    /// Column (in bytes) where the next chunk starts, when a giant line was split.
    col_base: usize,
    carry: Carry,
    /// Findings so far.
    out: Vec<Candidate>,
    /// Findings dropped by a `vouch:allow` comment.
    pub suppressed_inline: usize,
    hits: Vec<(usize, usize)>,
}

impl<'r> TextScanner<'r> {
    /// A scanner for text of `kind`.
    pub fn new(rules: &'r RuleSet, kind: TextKind) -> Self {
        Self::for_file(rules, FileClass { kind, test_data: false })
    }

    /// A scanner for a file of `class`.
    pub fn for_file(rules: &'r RuleSet, class: FileClass) -> Self {
        TextScanner {
            rules,
            kind: class.kind,
            test_data: class.test_data,
            line: 1,
            col_base: 0,
            carry: Carry::default(),
            out: Vec::new(),
            suppressed_inline: 0,
            hits: Vec::new(),
        }
    }

    /// Scans a chunk. `ends_mid_line` says the last line goes on in the next chunk (a giant line split
    /// by the reader); otherwise the chunk ends at a line end or at the end of the text.
    pub fn feed(&mut self, chunk: &[u8], ends_mid_line: bool) {
        self.collect_hits(chunk);
        let mut line_start = 0usize;
        let mut hit_idx = 0usize;
        let mut rules_here: Vec<usize> = Vec::new();
        let hits = std::mem::take(&mut self.hits);
        let lines_total = memchr::memchr_iter(b'\n', chunk).count() as u64;
        let first_line = self.line;
        while line_start < chunk.len() {
            let line_end =
                memchr::memchr(b'\n', &chunk[line_start..]).map_or(chunk.len(), |p| line_start + p);
            let line_bytes = &chunk[line_start..line_end];
            rules_here.clear();
            while hit_idx < hits.len() && hits[hit_idx].0 < line_end {
                let rule = hits[hit_idx].1;
                if hits[hit_idx].0 >= line_start && !rules_here.contains(&rule) {
                    rules_here.push(rule);
                }
                hit_idx += 1;
            }
            let pending = self.carry.k8s.is_some() || self.carry.pem.is_some();
            if !rules_here.is_empty() || pending {
                let text = String::from_utf8_lossy(line_bytes);
                let col_base = if line_start == 0 { self.col_base } else { 0 };
                self.scan_line(&text, &rules_here, col_base, chunk, line_end);
            }
            self.line += 1;
            line_start = line_end + 1;
        }
        // The loop counted one line per line start; fix up for a chunk that ends mid-line or exactly at
        // a newline.
        self.line = first_line + lines_total;
        if ends_mid_line {
            // The next chunk continues the last line: its columns start after what this chunk held of it.
            self.col_base = match memchr::memrchr(b'\n', chunk) {
                Some(p) => chunk.len() - (p + 1),
                None => self.col_base + chunk.len(),
            };
        } else {
            self.col_base = 0;
            if !chunk.ends_with(b"\n") && !chunk.is_empty() {
                self.line += 1;
            }
        }
        self.hits = hits;
        self.hits.clear();
    }

    /// The next chunk repeats the last `n` bytes of the previous one (overlapping windows of a giant
    /// line): its columns start that much earlier.
    pub fn rewind_columns(&mut self, n: usize) {
        self.col_base = self.col_base.saturating_sub(n);
    }

    /// The findings, deduplicated: where two rules found overlapping text on one line, the one with
    /// the higher priority stays. Also how many were dropped: by `vouch:allow`, and as test data.
    pub fn finish(mut self) -> (Vec<Candidate>, Suppressed) {
        let rules = &self.rules.rules;
        let mut test_data = 0;
        if self.test_data {
            let before = self.out.len();
            self.out.retain(|c| !rules[c.rule].skip_test_data);
            test_data = before - self.out.len();
        }
        self.out.sort_by(|a, b| {
            (a.line, a.column, std::cmp::Reverse(rules[a.rule].priority)).cmp(&(
                b.line,
                b.column,
                std::cmp::Reverse(rules[b.rule].priority),
            ))
        });
        let mut kept: Vec<Candidate> = Vec::with_capacity(self.out.len());
        for c in self.out {
            let overlapping = kept.iter_mut().rev().take_while(|k| k.line == c.line).find(|k| {
                let (ks, ke) = (k.column, k.column + k.secret.chars().count());
                let (cs, ce) = (c.column, c.column + c.secret.chars().count());
                ks < ce && cs < ke
            });
            match overlapping {
                Some(k) if rules[c.rule].priority > rules[k.rule].priority => *k = c,
                Some(_) => {}
                None => kept.push(c),
            }
        }
        (kept, Suppressed { inline: self.suppressed_inline, test_data })
    }

    fn collect_hits(&mut self, chunk: &[u8]) {
        self.hits.clear();
        for (ac, per_pattern) in
            [(&self.rules.folded, &self.rules.folded_rules), (&self.rules.exact, &self.rules.exact_rules)]
        {
            let Some(ac) = ac else { continue };
            for m in ac.find_overlapping_iter(chunk) {
                for &rule in &per_pattern[m.pattern().as_usize()] {
                    self.hits.push((m.start(), rule));
                }
            }
        }
        self.hits.sort_unstable();
    }

    /// `rest` and `line_end` let multi-line rules look at the lines that follow in this chunk.
    fn scan_line(
        &mut self,
        line: &str,
        rules_here: &[usize],
        col_base: usize,
        chunk: &[u8],
        line_end: usize,
    ) {
        let before = self.out.len();
        self.continue_multiline(line);
        for &r in rules_here {
            let rule = &self.rules.rules[r];
            match rule.kind {
                RuleKind::Pattern => self.pattern(r, rule, line, col_base, chunk, line_end),
                RuleKind::Assignment => self.assignment(r, rule, line, col_base),
            }
        }
        if self.out.len() > before {
            if let Some(pos) = line.find("vouch:allow") {
                let allowed = line[pos + "vouch:allow".len()..].strip_prefix('=').map(|ids| {
                    ids.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == ','))
                        .next()
                        .unwrap_or("")
                        .split(',')
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                });
                let rules = &self.rules.rules;
                let mut i = before;
                while i < self.out.len() {
                    let id = &rules[self.out[i].rule].id;
                    if allowed.as_ref().is_none_or(|ids| ids.iter().any(|a| a == id)) {
                        self.out.remove(i);
                        self.suppressed_inline += 1;
                        if self.carry.pem.is_some_and(|p| p >= self.out.len()) {
                            self.carry.pem = None;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
        }
    }

    /// Kubernetes `value:` after a secret-ish `- name:`, and the END of an open PEM block.
    fn continue_multiline(&mut self, line: &str) {
        if let Some(idx) = self.carry.pem {
            if line.contains("-----END ") {
                if let Some(c) = self.out.get_mut(idx) {
                    c.end_line = self.line;
                }
                self.carry.pem = None;
            } else if self.out.get(idx).is_none_or(|c| self.line - c.line > PEM_MAX_LINES) {
                self.carry.pem = None;
            } else if let Some(c) = self.out.get_mut(idx) {
                // The body began in the next chunk: the first body line completes the fingerprint
                // material, as it does when both are in one chunk.
                let body = line.trim().trim_start_matches(['"', '\'', '`']);
                if c.secret.ends_with("-----") && !body.is_empty() && !body.contains(": ") {
                    c.secret.extend(body.chars().take(64));
                }
            }
        }
        if let Some((rule, left)) = self.carry.k8s.take() {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix("value:") {
                let col = line.len() - trimmed.len() + "value:".len();
                let r = &self.rules.rules[rule];
                if let Some((value, quoted, offset)) = parse_value(rest, TextKind::Config) {
                    if r.class.is_some_and(|class| {
                        literal_is_secret(value, quoted, class, r.min_entropy, &self.rules.allowlist)
                    }) {
                        self.push(rule, line, col + offset, value.to_owned(), 0);
                    }
                }
            } else if left > 1 && !trimmed.starts_with("- ") && !trimmed.starts_with("name:") {
                self.carry.k8s = Some((rule, left - 1));
            }
        }
    }

    fn push(&mut self, rule: usize, line: &str, byte_col: usize, secret: String, col_base: usize) {
        let column = line.get(..byte_col).map_or(byte_col, |p| p.chars().count()) + col_base + 1;
        self.out.push(Candidate { rule, line: self.line, end_line: self.line, column, secret });
    }

    fn pattern(&mut self, r: usize, rule: &Rule, line: &str, col_base: usize, chunk: &[u8], line_end: usize) {
        let Some(re) = &rule.regex else { return };
        for caps in re.captures_iter(line) {
            let Some(m) = caps.get(rule.group) else { continue };
            let secret = m.as_str();
            if secret.is_empty() || self.rules.allowlist.allows_value(secret) {
                continue;
            }
            if rule.min_entropy.is_some_and(|min| shannon_entropy(secret) < min) {
                continue;
            }
            if let Some(class) = rule.class {
                if !literal_is_secret(secret, false, class, rule.min_entropy, &self.rules.allowlist) {
                    continue;
                }
            }
            match rule.validate {
                Some(Validation::Jwt) if !valid_jwt(secret) => continue,
                Some(Validation::UrlPassword) if !password_is_real(secret, &self.rules.allowlist) => continue,
                Some(Validation::BasicAuthB64) if !basic_auth_is_real(secret, &self.rules.allowlist) => {
                    continue
                }
                Some(Validation::DockerConfigB64)
                    if !docker_config_is_real(secret, &self.rules.allowlist) =>
                {
                    continue
                }
                Some(Validation::Pem) => {
                    let after = &line[m.end()..];
                    let next = chunk.get(line_end + 1..).filter(|rest| !rest.is_empty()).map(first_line);
                    if !pem_has_body(after, next.as_deref()) {
                        continue;
                    }
                    let secret = pem_fingerprint_material(secret, after);
                    self.push(r, line, m.start(), secret, col_base);
                    if !after.contains("-----END ") {
                        self.carry.pem = Some(self.out.len() - 1);
                    }
                    continue;
                }
                _ => {}
            }
            self.push(r, line, m.start(), secret.to_owned(), col_base);
        }
    }

    fn assignment(&mut self, r: usize, rule: &Rule, line: &str, col_base: usize) {
        let Some(class) = rule.class else { return };
        // Kubernetes env: `- name: DB_PASSWORD` now, `value: ...` on one of the next lines.
        if let Some(name) = k8s_env_name(line) {
            if key_is_secretish(name, &rule.keywords) {
                self.carry.k8s = Some((r, K8S_LOOKAHEAD));
            }
            return;
        }
        let lower = line.to_ascii_lowercase();
        let mut seen: std::collections::HashSet<(usize, usize)> = std::collections::HashSet::new();
        for kw in &rule.keywords {
            let mut from = 0;
            while let Some(pos) = lower[from..].find(kw.as_str()) {
                let at = from + pos;
                from = at + kw.len();
                let (ks, ke) = key_bounds(line, at, at + kw.len());
                if !seen.insert((ks, ke)) {
                    continue; // this key was already looked at for another keyword
                }
                if seen.len() > MAX_KEYS_PER_LINE {
                    return;
                }
                let key = &line[ks..ke];
                if !key_is_secretish(key, &rule.keywords) {
                    continue;
                }
                let Some(value_at) = assignment_operator(line, ks, ke) else { continue };
                let Some((value, quoted, offset)) = parse_value(&line[value_at..], self.kind_for(line))
                else {
                    continue;
                };
                if !quoted && is_prose(line, value_at, offset + value.len()) {
                    continue; // `* \`set password\`: Change your password.`
                }
                if hash_context(line, value) {
                    continue;
                }
                if literal_is_secret(value, quoted, class, rule.min_entropy, &self.rules.allowlist) {
                    self.push(r, line, value_at + offset, value.to_owned(), col_base);
                }
            }
        }
    }

    /// Shell exports and Dockerfile ENV/ARG lines are configuration even inside code-like files.
    fn kind_for(&self, line: &str) -> TextKind {
        let t = line.trim_start();
        if t.starts_with("export ") || t.starts_with("ENV ") || t.starts_with("ARG ") {
            TextKind::Config
        } else {
            self.kind
        }
    }
}

/// An unquoted value after a colon that more words follow: a sentence (`Note: Change your password.`),
/// not a YAML scalar (YAML values with spaces are never taken whole, so nothing is lost). `value_at` is
/// where the text after the operator starts, `value_end` the end of the value within it.
fn is_prose(line: &str, value_at: usize, value_end: usize) -> bool {
    let colon = line[..value_at].ends_with(':');
    let rest = line.get(value_at + value_end..).unwrap_or("").trim_start();
    colon && rest.starts_with(|c: char| c.is_alphabetic())
}

fn first_line(rest: &[u8]) -> String {
    let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len()).min(4096);
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

// A constant pattern: were it invalid, every test of this module would fail.
#[allow(clippy::expect_used)]
fn k8s_env_name(line: &str) -> Option<&str> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r#"^\s*(?:-\s+)?name:\s*["']?([A-Za-z0-9_.-]+)["']?\s*(?:#.*)?$"#).expect("static regex")
    });
    re.captures(line).and_then(|c| c.get(1)).map(|m| m.as_str())
}

/// Longest key part looked at on either side of a keyword.
const MAX_KEY: usize = 128;
/// Longest value looked at (literals are at most 512 characters; see `literal_is_secret`).
const MAX_VALUE: usize = 1024;
/// Keyword occurrences looked at per line and rule (minified files repeat words endlessly).
const MAX_KEYS_PER_LINE: usize = 4096;

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Grows a keyword match to the whole key around it.
fn key_bounds(line: &str, start: usize, end: usize) -> (usize, usize) {
    let b = line.as_bytes();
    // Bounded, so a line that is one endless "key" costs linear time, not quadratic.
    let mut s = start;
    while s > 0 && start - s < MAX_KEY && is_key_byte(b[s - 1]) {
        s -= 1;
    }
    let mut e = end;
    while e < b.len() && e - end < MAX_KEY && is_key_byte(b[e]) {
        e += 1;
    }
    // A key does not end in a separator (`password:` in YAML keeps the colon outside already).
    while e > end && matches!(b[e - 1], b'.' | b'-') {
        e -= 1;
    }
    (s, e)
}

/// `: <type> =` after a name in Rust, TypeScript, Kotlin, Swift, Python annotations.
// A constant pattern: were it invalid, every test of this module would fail.
#[allow(clippy::expect_used)]
fn type_annotation() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^:\s*&?(?:'static\s+)?[A-Za-z_][A-Za-z0-9_]*(?:<[A-Za-z0-9_&' ]{1,40}>)?\??\s+=")
            .expect("static regex")
    })
}

/// After the key: closing quote or bracket, spaces, then `=`, `:=`, `:`, `=>` (not `==`, `::`, `!=`);
/// Dockerfile `ENV KEY value` has only a space. Returns where the value starts.
fn assignment_operator(line: &str, key_start: usize, key_end: usize) -> Option<usize> {
    let b = line.as_bytes();
    let mut i = key_end;
    while i < b.len() && matches!(b[i], b'"' | b'\'' | b'`' | b']') {
        i += 1;
    }
    let after_key = i;
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    let rest = &b[i..];
    if let Some(m) = type_annotation().find(&line[i..]) {
        // `const TOKEN: &str = "..."`, `let password: String = ...` (not `: T == x`, `: T => x`).
        let end = i + m.end();
        if !matches!(b.get(end), Some(b'=' | b'>')) {
            return Some(end);
        }
    }
    let op_len = if rest.starts_with(b":=") || rest.starts_with(b"=>") {
        2
    } else if rest.starts_with(b"==") || rest.starts_with(b"::") {
        return None;
    } else if rest.starts_with(b"=") || rest.starts_with(b":") {
        1
    } else {
        // `ENV KEY value` (legacy Dockerfile form): the key is the first word after ENV.
        let head = line[..key_start].trim();
        return (after_key < i && (head == "ENV" || head == "ARG")).then_some(i);
    };
    Some(i + op_len)
}

/// The value after an operator: a quoted literal (with an optional one-letter prefix like `f"..."`), or
/// for configuration an unquoted token. Returns (value, quoted, offset of the value in `rest`).
fn parse_value(rest: &str, kind: TextKind) -> Option<(&str, bool, usize)> {
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
        i += 1;
    }
    if i + 1 < b.len() && matches!(b[i], b'f' | b'b' | b'r' | b'u' | b'@') && matches!(b[i + 1], b'"' | b'\'')
    {
        i += 1;
    }
    let q = *b.get(i)?;
    if matches!(q, b'"' | b'\'' | b'`') {
        let start = i + 1;
        let mut j = start;
        while j < b.len() && b[j] != q && j - start <= MAX_VALUE {
            if b[j] == b'\\' {
                j += 1;
            }
            j += 1;
        }
        if j >= b.len() || b[j] != q {
            return None; // unterminated on this line (or too long): not a literal secret
        }
        return Some((&rest[start..j], true, start));
    }
    if kind == TextKind::Code {
        return None;
    }
    let start = i;
    let mut j = start;
    while j < b.len() && !b[j].is_ascii_whitespace() {
        j += 1;
        if j - start > MAX_VALUE {
            return None; // far longer than any literal secret (and `j` may be inside a character)
        }
    }
    let mut value = &rest[start..j];
    value = value.trim_end_matches([',', ';']);
    (!value.is_empty()).then_some((value, false, start))
}

fn valid_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else { return false };
    let decode = |s: &str| -> Option<serde_json::Value> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()?;
        serde_json::from_slice::<serde_json::Value>(&bytes).ok().filter(serde_json::Value::is_object)
    };
    // A credential names its issuer, subject, audience or lifetime; a payload with none of the
    // registered claims (RFC 7519 section 4.1) is a sample (`{"some":"payload"}`, `{"foo":"bar"}`).
    const REGISTERED: [&str; 7] = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"];
    matches!((decode(h), decode(p)), (Some(header), Some(payload))
        if header.get("alg").is_some() && REGISTERED.iter().any(|c| payload.get(c).is_some()))
}

fn password_is_real(password: &str, allow: &crate::rules::Allowlist) -> bool {
    let first = password.as_bytes().first().copied().unwrap_or(b'$');
    // URLs carry passwords percent-encoded: judge what the server would be sent (`he%2F%2Fo` is the
    // five characters `he//o`).
    let decoded = percent_decode(password);
    !matches!(first, b'$' | b'%' | b'{' | b'<' | b'[')
        && !allow.allows_value(&decoded)
        && !crate::value::is_reference(&decoded, true)
        && literal_is_secret(&decoded, true, ValueClass::Password, None, allow)
}

/// `%XX` escapes decoded; a malformed escape is kept as it is.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| char::from(c).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Base64 of `user:password` (a docker config `auth`) whose password is real.
fn basic_auth_is_real(encoded: &str, allow: &crate::rules::Allowlist) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded) else { return false };
    let Ok(text) = std::str::from_utf8(&bytes) else { return false };
    match text.split_once(':') {
        Some((user, password)) => !user.is_empty() && password_is_real(password, allow),
        None => false,
    }
}

/// Base64 of a docker config (`{"auths": {...}}` or the legacy `.dockercfg` map) holding a real
/// credential: an `auth` of `user:password`, or a `password` / `identitytoken`.
fn docker_config_is_real(encoded: &str, allow: &crate::rules::Allowlist) -> bool {
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded) else { return false };
    let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return false };
    let registries = config.get("auths").unwrap_or(&config);
    let Some(registries) = registries.as_object() else { return false };
    registries.values().any(|r| {
        let field = |k: &str| r.get(k).and_then(serde_json::Value::as_str);
        field("auth").is_some_and(|a| basic_auth_is_real(a, allow))
            || field("password").is_some_and(|p| password_is_real(p, allow))
            || field("identitytoken").is_some_and(|t| password_is_real(t, allow))
    })
}

fn is_b64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

/// A real key has a base64 body right after its BEGIN line (documentation shows `...`).
fn pem_has_body(after_header: &str, next_line: Option<&str>) -> bool {
    let escaped = after_header.trim_start_matches(['\\', 'n', 'r']);
    if escaped.bytes().take_while(|&b| is_b64_byte(b)).count() >= 40 {
        return true;
    }
    match next_line {
        // Encrypted PEM headers (`Proc-Type: ...`) come before the body: accept them.
        Some(next) => {
            let t = next.trim().trim_start_matches(['"', '\'', '`']);
            t.contains(": ") || t.bytes().take_while(|&b| is_b64_byte(b)).count() >= 40
        }
        None => true, // the body is in the next chunk
    }
}

/// What identifies a key without being the key: its header plus the start of its body (hashed later).
/// A body on the following lines is added by [`TextScanner::continue_multiline`].
fn pem_fingerprint_material(header: &str, after: &str) -> String {
    let body = after.trim_start_matches(['\\', 'n', 'r']).trim();
    if body.len() > 40 {
        format!("{header}{}", body.chars().take(64).collect::<String>())
    } else {
        header.to_owned()
    }
}

/// Scans a whole in-memory text (tests, config fields).
pub fn scan_text(rules: &RuleSet, kind: TextKind, text: &[u8]) -> Vec<Candidate> {
    let mut s = TextScanner::new(rules, kind);
    s.feed(text, false);
    s.finish().0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(rules: &RuleSet, kind: TextKind, text: &str) -> Vec<(String, u64)> {
        scan_text(rules, kind, text.as_bytes())
            .into_iter()
            .map(|c| (rules.rules[c.rule].id.clone(), c.line))
            .collect()
    }

    #[test]
    fn chunking_does_not_change_results() {
        let rules = RuleSet::default_rules().unwrap();
        let text = "a\n      - name: DB_PASSWORD\n        value: \"hK8#mQ2!xP9z\"\nb\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1y2p3cw5c2hN8wQ4b3n7ZKq5bq0D8y9b8PZsUhLZ2a7Bqk9Wm1\n-----END RSA PRIVATE KEY-----\n";
        let whole = scan_text(&rules, TextKind::Config, text.as_bytes());
        assert_eq!(whole.len(), 2, "{whole:?}");
        assert_eq!(whole[1].end_line, 7);
        for split in 1..text.len() {
            let at = text[..split].rfind('\n').map_or(0, |p| p + 1);
            if at == 0 {
                continue;
            }
            let mut s = TextScanner::new(&rules, TextKind::Config);
            s.feed(&text.as_bytes()[..at], false);
            s.feed(&text.as_bytes()[at..], false);
            assert_eq!(s.finish().0, whole, "split at {at}");
        }
    }

    #[test]
    fn pathological_lines_are_scanned_in_linear_time() {
        // Each of these would cost quadratic time if every keyword occurrence looked at the whole
        // rest of the line; at this size that would take minutes.
        let rules = RuleSet::default_rules().unwrap();
        for unit in ["password=", "pass", "token: '", "secret=\"x ", "- name: DB_PASSWORD\n", "ghp_", "eyJ"] {
            let text = unit.repeat((1 << 20) / unit.len());
            let _ = scan_text(&rules, TextKind::Config, text.as_bytes());
            let _ = scan_text(&rules, TextKind::Code, text.as_bytes());
        }
        // Multi-byte characters around the length limits never split a character.
        let text = format!("password={}\npassword=\"{}\"\n", "é".repeat(700), "ü".repeat(700));
        assert!(scan_text(&rules, TextKind::Config, text.as_bytes()).is_empty());
    }

    /// One table per false-positive class seen on real code, each beside true secrets of the same
    /// shape that must still be found. (rule id, text); an empty id means no finding.
    #[test]
    fn false_positive_classes_and_the_secrets_beside_them() {
        let rules = RuleSet::default_rules().unwrap();
        let cases: &[(&str, TextKind, &str, Option<&str>)] = &[
            // Pagination cursors and language-model tokens are named `...token` but grant nothing.
            ("pagination", TextKind::Config, r#""NextToken": "AAEAAXpYZ2N3b2x0cjRhM2dqQkdMbkVHQ0dzRjZtS0E","#, None),
            ("pagination", TextKind::Code, r#"next_page_token = "CiAKGjBpNDd2Nmp2Zml2cXRwYjBpOXA3""#, None),
            ("pagination", TextKind::Code, r#"params["ContinuationToken"] = "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J""#, None),
            ("lm token", TextKind::Code, r#"tokenizer.eos_token = "<|endoftext|>""#, None),
            ("lm token", TextKind::Config, r#"  "output_token": "transformers.Output","#, None),
            ("credential", TextKind::Config, r#""SessionToken": "FwoGZXIvYXdzEBYaDHqa0AP1x9Zq3Lm7Vx2Kp9Wn4Tb6""#, Some("generic-secret")),
            ("credential", TextKind::Code, r#"refresh_token = "1//0gLk4q8Zr3Lm7Vx2Kp9Wn4Tb6Hj""#, Some("generic-secret")),
            // Digests in lookup tables and beside hash names are not keys.
            ("digest", TextKind::Code, r#"    "secret": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # sha256"#, None),
            ("digest", TextKind::Config, r#"token_a: d41d8cd98f00b204e9800998ecf8427e d41d8cd98f00b204e9800998ecf8427f"#, None),
            ("hex key", TextKind::Config, r#"api_key: 3f6c2b1e9a8d7c6b5a4f3e2d1c0b9a8f"#, Some("generic-secret")),
            // Dotted names, quoted or not.
            ("dotted", TextKind::Code, r#"secret_key = "settings.SECRET_KEY""#, None),
            ("dotted", TextKind::Config, r#"api_key: config.ApiKey"#, None),
            // Documentation samples: typed runs, hand-typed lowercase ids, encoded prose, prose.
            ("doc sample", TextKind::Code, r#"api_key = "abcdef1234567890abcdef""#, None),
            ("doc sample", TextKind::Code, r#"'access_token': 'askfjh234as9sd8',"#, None),
            ("doc sample", TextKind::Code, r#"password: 'bm90IG15IHJlYWwgcGFzc3dvcmQ=',"#, None),
            ("doc sample", TextKind::Config, "* `npm profile set password`: Change your password.", None),
            ("doc sample", TextKind::Config, "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzb21lIjoicGF5bG9hZCJ9.4twFt5NiznN84AWoo1d7KO1T_yoc0Z6XOpOVswacPZg", None),
            ("jwt", TextKind::Config, "Authorization: eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", Some("jwt")),
            ("password", TextKind::Config, "password: hK8#mQ2!xP9z  # the admin's", Some("generic-password")),
            ("password", TextKind::Code, r#"password: 'YWRtaW46aEs4I21RMiF4UDl6',"#, Some("generic-password")),
            ("secret", TextKind::Code, r#"api_key = "q8Zr3Lm7Vx2Kp9Wn4Tb6Hj""#, Some("generic-secret")),
            ("secret", TextKind::Code, r#"client_secret = "ad180jjd733klru7x9q2w4e5""#, Some("generic-secret")),
            // Typed declarations are assignments too.
            ("typed", TextKind::Code, r#"const DB_PASSWORD: &str = "eyEbHD!330UStc";"#, Some("generic-password")),
            ("typed", TextKind::Code, r#"let apiKey: string = "kDMUyYY7osMzrasjhVBsVQtSAJdQVRjg";"#, Some("generic-secret")),
            ("typed", TextKind::Code, r#"if token: str == "x9Kp2Lm7Qz4Rt8Wv": pass"#, None),
            // URL passwords are judged percent-decoded: `he%2F%2Fo` is the five characters `he//o`.
            ("url", TextKind::Config, "https://user:he%2F%2Fo@pypi.company.com/simple", None),
            ("url", TextKind::Config, "https://ci:Xk9%23mQ2vLp7@pypi.company.com/simple", Some("basic-auth-url")),
        ];
        for (class, kind, text, want) in cases {
            let got = ids(&rules, *kind, text);
            let got = got.first().map(|(id, _)| id.as_str());
            assert_eq!(got, *want, "{class}: {text}");
        }
    }

    #[test]
    fn test_data_paths() {
        for p in [
            "crypto/x509/x509_compat_test.cc",
            "src/tests/keys.rs",
            "pkg/testdata/server.key",
            "doc/libxmlsec1-dev/examples/rsakey.pem",
            "test_client.py",
            "api.spec.ts",
            "src/test/java/AuthTest.java",
            "spec/fixtures/config.yml",
        ] {
            assert!(is_test_data_path(p), "{p}");
        }
        for p in ["src/config.py", "deploy/values.yaml", "keys-user/00012_test.pem", "contest/app.py", ".env"]
        {
            assert!(!is_test_data_path(p), "{p}");
        }
    }

    #[test]
    fn test_data_drops_only_rules_that_skip_it() {
        let rules = RuleSet::default_rules().unwrap();
        let text = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAx1y2p3cw5c2hN8wQ4b3n7ZKq5bq0D8y9b8PZsUhLZ2a7Bqk9Wm1\n\nGITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyzABCDEF012345\npassword = \"hK8#mQ2!xP9z\"\n";
        let class = FileClass::of_path("tests/fixtures/setup.py");
        let mut s = TextScanner::for_file(&rules, class);
        s.feed(text.as_bytes(), false);
        let (found, suppressed) = s.finish();
        let found: Vec<_> = found.iter().map(|c| rules.rules[c.rule].id.as_str()).collect();
        assert_eq!(found, ["github-token"], "a provider token in a test file is still reported");
        assert_eq!(suppressed.test_data, 2);
        let mut all = RuleSet::default_rules().unwrap();
        all.report_test_data();
        assert_eq!(scan_text(&all, TextKind::Code, text.as_bytes()).len(), 3);
    }

    #[test]
    fn inline_allow_comment() {
        let rules = RuleSet::default_rules().unwrap();
        let t = "GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyzABCDEF012345 # vouch:allow\n";
        assert!(ids(&rules, TextKind::Config, t).is_empty());
        let t = "GITHUB_TOKEN=ghp_abcdefghijklmnopqrstuvwxyzABCDEF012345 # vouch:allow=jwt\n";
        assert_eq!(ids(&rules, TextKind::Config, t), vec![("github-token".to_owned(), 1)]);
    }

    #[test]
    fn line_numbers_without_trailing_newline() {
        let rules = RuleSet::default_rules().unwrap();
        let mut s = TextScanner::new(&rules, TextKind::Config);
        s.feed(b"x\ny", true);
        s.feed(b"\nz\nSTRIPE=sk_live_abcdefghijklmnopqrstuvwx", false);
        let (found, _) = s.finish();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].line, 4);
    }
}
