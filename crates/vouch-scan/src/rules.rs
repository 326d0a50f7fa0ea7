//! Rules: the TOML data file (`rules/default.toml` is built in), merging user files over it, and compiling
//! the result into a [`RuleSet`] whose keyword automata decide which rules run on which line.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::Regex;
use serde::Deserialize;

use crate::ScanError;

/// The rules vouch ships with.
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");

/// One rules file as written (see the comment at the top of `rules/default.toml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Format version; only 1 exists.
    #[serde(default = "one")]
    pub version: u32,
    /// Placeholders and paths that are never findings.
    #[serde(default)]
    pub allowlist: AllowlistSpec,
    /// The rules.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleSpec>,
}

fn one() -> u32 {
    1
}

/// Values, paths and stop words that are never findings.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowlistSpec {
    /// Regexes on a candidate secret.
    #[serde(default)]
    pub values: Vec<String>,
    /// Regexes on a file path (or a path inside an image layer).
    #[serde(default)]
    pub paths: Vec<String>,
    /// Case-insensitive substrings of a candidate secret.
    #[serde(default)]
    pub stopwords: Vec<String>,
}

/// One rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable identifier.
    pub id: String,
    /// What was found.
    #[serde(default)]
    pub description: String,
    /// `pattern` (default) or `assignment`.
    #[serde(default)]
    pub kind: RuleKind,
    /// Prefilter keywords.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Keywords match case-sensitively.
    #[serde(default)]
    pub case_sensitive: bool,
    /// The pattern (pattern rules).
    #[serde(default)]
    pub regex: Option<String>,
    /// Capture group of the secret.
    #[serde(default)]
    pub group: Option<usize>,
    /// Minimum Shannon entropy of the secret.
    #[serde(default)]
    pub min_entropy: Option<f64>,
    /// Built-in validation of a candidate.
    #[serde(default)]
    pub validate: Option<Validation>,
    /// Literal checks of the value (always used by assignment rules).
    #[serde(default)]
    pub class: Option<ValueClass>,
    /// Higher wins when rules overlap.
    #[serde(default)]
    pub priority: i32,
    /// How to replace the secret with a workload identity.
    #[serde(default)]
    pub remediation: String,
    /// Turns a default rule off.
    #[serde(default)]
    pub disabled: bool,
    /// Not reported in tests, fixtures and samples (see `detect::is_test_data_path`).
    #[serde(default)]
    pub skip_test_data: bool,
}

/// How a rule finds its candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleKind {
    /// A regex finds the secret.
    #[default]
    Pattern,
    /// A secret-ish key is assigned a literal.
    Assignment,
}

/// Built-in validators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validation {
    /// Header and payload decode to JSON objects, the header has `alg`.
    Jwt,
    /// A base64 body follows the BEGIN line.
    Pem,
    /// The password part of a URL or command line is no placeholder.
    UrlPassword,
    /// Base64 of `user:password` whose password is no placeholder (docker config `auth`).
    BasicAuthB64,
    /// Base64 of a docker config JSON whose `auths` hold a real `auth` (Kubernetes pull secrets).
    DockerConfigB64,
}

/// Literal checks for assigned values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ValueClass {
    /// Any literal of six or more characters that is no placeholder.
    Password,
    /// Also at least twelve characters, two character classes and the rule's entropy.
    Secret,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Stable identifier.
    pub id: String,
    /// What was found.
    pub description: String,
    /// Pattern or assignment.
    pub kind: RuleKind,
    /// Compiled pattern (pattern rules).
    pub regex: Option<Regex>,
    /// Capture group of the secret.
    pub group: usize,
    /// Minimum entropy, if any.
    pub min_entropy: Option<f64>,
    /// Validator, if any.
    pub validate: Option<Validation>,
    /// Value checks, if any.
    pub class: Option<ValueClass>,
    /// Overlap priority.
    pub priority: i32,
    /// Remediation hint.
    pub remediation: String,
    /// Keywords, lowercased unless case-sensitive (assignment rules look them up in keys).
    pub keywords: Vec<String>,
    /// Keywords match case-sensitively (never for assignment rules: keys come in every case).
    pub case_sensitive: bool,
    /// Not reported in test data.
    pub skip_test_data: bool,
}

/// Compiled allowlist.
#[derive(Debug)]
pub struct Allowlist {
    values: Vec<Regex>,
    paths: Vec<Regex>,
    stopwords: Vec<String>,
}

impl Allowlist {
    /// True when `candidate` is a placeholder or documentation example. One character repeated
    /// (`********`, `xxxxxxxx`) always is.
    pub fn allows_value(&self, candidate: &str) -> bool {
        let mut chars = candidate.chars();
        if let Some(first) = chars.next() {
            if chars.all(|c| c == first) {
                return true;
            }
        }
        if self.values.iter().any(|r| r.is_match(candidate)) {
            return true;
        }
        let lower = candidate.to_ascii_lowercase();
        self.stopwords.iter().any(|w| lower.contains(w.as_str()))
    }

    /// True when files at `path` are not scanned.
    pub fn allows_path(&self, path: &str) -> bool {
        self.paths.iter().any(|r| r.is_match(path))
    }
}

/// All rules, compiled, with the keyword automata of the prefilter.
#[derive(Debug)]
pub struct RuleSet {
    /// The rules, in file order.
    pub rules: Vec<Rule>,
    /// Placeholders and skipped paths.
    pub allowlist: Allowlist,
    /// Case-insensitive keywords.
    pub(crate) folded: Option<AhoCorasick>,
    /// Rules per pattern of `folded`.
    pub(crate) folded_rules: Vec<Vec<usize>>,
    /// Case-sensitive keywords.
    pub(crate) exact: Option<AhoCorasick>,
    /// Rules per pattern of `exact`.
    pub(crate) exact_rules: Vec<Vec<usize>>,
}

impl RuleSet {
    /// The built-in rules.
    pub fn default_rules() -> Result<Self, ScanError> {
        Self::from_files(&[("built-in rules", DEFAULT_RULES)], &[])
    }

    /// Compiles rule files in order (later files override rules with the same id, and add allowlist
    /// entries), without the rule ids in `skip`.
    pub fn from_files(files: &[(&str, &str)], skip: &[String]) -> Result<Self, ScanError> {
        // Each rule with the file it came from, so errors can name the file.
        let mut specs: Vec<(&str, RuleSpec)> = Vec::new();
        let mut allow = AllowlistSpec::default();
        for (name, text) in files {
            let file: RuleFile = toml::from_str(text)
                .map_err(|e| ScanError::Rules(format!("`{name}`: {}", e.to_string().trim_end())))?;
            if file.version != 1 {
                return Err(ScanError::Rules(format!(
                    "`{name}`: version {} is not supported (this vouch reads version 1)",
                    file.version
                )));
            }
            allow.values.extend(file.allowlist.values);
            allow.paths.extend(file.allowlist.paths);
            allow.stopwords.extend(file.allowlist.stopwords);
            for spec in file.rules {
                match specs.iter_mut().find(|(_, s)| s.id == spec.id) {
                    Some(existing) => *existing = (name, spec),
                    None => specs.push((name, spec)),
                }
            }
        }
        for id in skip {
            if !specs.iter().any(|(_, s)| &s.id == id) {
                return Err(ScanError::Rules(format!(
                    "--skip-rule `{id}`: no such rule (see `vouch scan --list-rules`)"
                )));
            }
        }
        specs.retain(|(_, s)| !s.disabled && !skip.contains(&s.id));
        let rules = specs
            .into_iter()
            .map(|(file, spec)| {
                compile_rule(spec).map_err(|e| ScanError::Rules(format!("`{file}`: {}", e.detail())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let allowlist = Allowlist {
            values: compile_all(&allow.values, "allowlist value")?,
            paths: compile_all(&allow.paths, "allowlist path")?,
            stopwords: allow.stopwords.iter().map(|s| s.to_ascii_lowercase()).collect(),
        };
        let (folded, folded_rules) = automaton(&rules, false)?;
        let (exact, exact_rules) = automaton(&rules, true)?;
        Ok(RuleSet { rules, allowlist, folded, folded_rules, exact, exact_rules })
    }
}

impl RuleSet {
    /// Every rule reports in test data too (`--include-test-data`).
    pub fn report_test_data(&mut self) {
        for rule in &mut self.rules {
            rule.skip_test_data = false;
        }
    }
}

impl ScanError {
    fn detail(&self) -> &str {
        match self {
            ScanError::Rules(m) | ScanError::Usage(m) => m,
        }
    }
}

fn compile_all(patterns: &[String], what: &str) -> Result<Vec<Regex>, ScanError> {
    patterns
        .iter()
        .map(|p| Regex::new(p).map_err(|e| ScanError::Rules(format!("{what} `{p}`: {e}"))))
        .collect()
}

fn compile_rule(spec: RuleSpec) -> Result<Rule, ScanError> {
    let id = spec.id;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
        return Err(ScanError::Rules(format!("rule id `{id}`: use lowercase letters, digits and dashes")));
    }
    if spec.keywords.iter().any(|k| k.is_empty()) || spec.keywords.is_empty() {
        return Err(ScanError::Rules(format!(
            "rule `{id}`: needs at least one non-empty keyword (the prefilter runs rules only where one occurs)"
        )));
    }
    let (regex, group) = match (spec.kind, &spec.regex) {
        (RuleKind::Pattern, None) => {
            return Err(ScanError::Rules(format!("rule `{id}`: a pattern rule needs `regex`")));
        }
        (RuleKind::Pattern, Some(p)) => {
            let re = Regex::new(p).map_err(|e| ScanError::Rules(format!("rule `{id}`: regex: {e}")))?;
            let default_group = usize::from(re.captures_len() > 1);
            let group = spec.group.unwrap_or(default_group);
            if group >= re.captures_len() {
                return Err(ScanError::Rules(format!(
                    "rule `{id}`: group {group} does not exist (the regex has {} groups)",
                    re.captures_len() - 1
                )));
            }
            (Some(re), group)
        }
        (RuleKind::Assignment, Some(_)) => {
            return Err(ScanError::Rules(format!(
                "rule `{id}`: an assignment rule matches keys by `keywords`; remove `regex`"
            )));
        }
        (RuleKind::Assignment, None) => (None, 0),
    };
    let class = match spec.kind {
        RuleKind::Assignment => Some(spec.class.unwrap_or(ValueClass::Secret)),
        RuleKind::Pattern => spec.class,
    };
    let case_sensitive = spec.case_sensitive && spec.kind == RuleKind::Pattern;
    let keywords = spec
        .keywords
        .iter()
        .map(|k| if case_sensitive { k.clone() } else { k.to_ascii_lowercase() })
        .collect();
    Ok(Rule {
        description: if spec.description.is_empty() { id.clone() } else { spec.description },
        id,
        kind: spec.kind,
        regex,
        group,
        min_entropy: spec.min_entropy,
        validate: spec.validate,
        class,
        priority: spec.priority,
        remediation: spec.remediation,
        keywords,
        case_sensitive,
        skip_test_data: spec.skip_test_data,
    })
}

// Which rules to try for each keyword; one automaton per case mode.
type Automaton = (Option<AhoCorasick>, Vec<Vec<usize>>);

fn automaton(rules: &[Rule], case_sensitive: bool) -> Result<Automaton, ScanError> {
    let mut by_keyword: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    for (i, rule) in rules.iter().enumerate().filter(|(_, r)| r.case_sensitive == case_sensitive) {
        for k in &rule.keywords {
            let entry = by_keyword.entry(k).or_insert_with(|| {
                order.push(k);
                Vec::new()
            });
            if !entry.contains(&i) {
                entry.push(i);
            }
        }
    }
    if order.is_empty() {
        return Ok((None, Vec::new()));
    }
    let ac = AhoCorasickBuilder::new()
        .ascii_case_insensitive(!case_sensitive)
        .match_kind(MatchKind::Standard)
        .build(&order)
        .map_err(|e| ScanError::Rules(format!("keywords: {e}")))?;
    let per_pattern = order.iter().map(|k| by_keyword.remove(k).unwrap_or_default()).collect();
    Ok((Some(ac), per_pattern))
}
