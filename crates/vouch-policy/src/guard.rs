//! Guards: a condition every request a policy applies to must meet, read from the policy's
//! `when` clauses, so that the index can leave the policy out of requests that do not meet it.
//!
//! Policies whose scope names no exact principal or resource (`permit(principal, action,
//! resource is Secret) when { … }`) would otherwise be evaluated for every request: with a few
//! hundred of them, that is most of a decision's time. Their conditions usually say whom or what
//! they are about (`principal.k8s_namespaces.contains("prod")`, `resource.path like "pci/*"`);
//! such a conjunct is a guard.
//!
//! Soundness: a guard is only taken from a conjunct at the top of a `when` clause, so when the
//! guard is false the clause is false (or, if an earlier conjunct fails to evaluate, an error),
//! and the policy cannot allow or deny. Leaving it out therefore never changes `allow` or the
//! deciding policies; it may leave out an error that the skipped policy would have reported.

use serde_json::Value;

/// Sets of strings a workload has, which guards may ask about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fact {
    Owners,
    K8sNamespaces,
    K8sServiceAccounts,
    NodeGroups,
    Segments,
}

impl Fact {
    fn from_attr(attr: &str) -> Option<Self> {
        Some(match attr {
            "owners" => Self::Owners,
            "k8s_namespaces" => Self::K8sNamespaces,
            "k8s_service_accounts" => Self::K8sServiceAccounts,
            "node_groups" => Self::NodeGroups,
            "segments" => Self::Segments,
            _ => return None,
        })
    }
}

/// A necessary condition of a policy, in the index's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Guard {
    /// `principal.path == "<path>"`.
    PrincipalPath(String),
    /// The resource's `path` is this key or under it: from `resource.path == "k"`,
    /// `resource.path like "k/…"`, or `resource.dirs.contains("k")`.
    ResourceUnder(String),
    /// `principal.<fact>.contains("<value>")`.
    PrincipalHas(Fact, String),
}

impl Guard {
    /// How good a guard is for the index: the fewest requests pass it first.
    fn rank(&self) -> u8 {
        match self {
            Self::PrincipalPath(_) => 0,
            Self::ResourceUnder(_) => 1,
            Self::PrincipalHas(..) => 2,
        }
    }
}

/// The best guard of a policy, given its Cedar JSON form, if it has one.
pub(crate) fn best_guard(policy_json: &Value) -> Option<Guard> {
    let conditions = policy_json.get("conditions")?.as_array()?;
    let mut guards = Vec::new();
    for clause in conditions {
        if clause.get("kind").and_then(Value::as_str) == Some("when") {
            if let Some(body) = clause.get("body") {
                conjuncts(body, &mut guards);
            }
        }
    }
    guards.into_iter().min_by_key(Guard::rank)
}

/// Guards among the top-level conjuncts of `expr`.
fn conjuncts(expr: &Value, out: &mut Vec<Guard>) {
    if let Some(and) = expr.get("&&") {
        for side in ["left", "right"] {
            if let Some(e) = and.get(side) {
                conjuncts(e, out);
            }
        }
        return;
    }
    out.extend(guard_of(expr));
}

/// `{"Var": "<var>"}.<attr>`: the attribute name, when `expr` reads it.
fn attr_of<'a>(expr: &'a Value, var: &str) -> Option<&'a str> {
    let get = expr.get(".")?;
    (get.get("left")?.get("Var")?.as_str()? == var).then_some(())?;
    get.get("attr")?.as_str()
}

/// A string literal.
fn string_of(expr: &Value) -> Option<&str> {
    expr.get("Value")?.as_str()
}

fn guard_of(expr: &Value) -> Option<Guard> {
    if let Some(eq) = expr.get("==") {
        let (l, r) = (eq.get("left")?, eq.get("right")?);
        // Either order: `principal.path == "x"` or `"x" == principal.path`.
        for (a, b) in [(l, r), (r, l)] {
            if let Some(value) = string_of(b) {
                if attr_of(a, "principal") == Some("path") {
                    return Some(Guard::PrincipalPath(value.to_owned()));
                }
                if attr_of(a, "resource") == Some("path") && !value.is_empty() {
                    return Some(Guard::ResourceUnder(value.to_owned()));
                }
            }
        }
        return None;
    }
    if let Some(c) = expr.get("contains") {
        let value = string_of(c.get("right")?)?;
        let left = c.get("left")?;
        if let Some(fact) = attr_of(left, "principal").and_then(Fact::from_attr) {
            return Some(Guard::PrincipalHas(fact, value.to_owned()));
        }
        if attr_of(left, "resource") == Some("dirs") && !value.is_empty() {
            return Some(Guard::ResourceUnder(value.to_owned()));
        }
        return None;
    }
    if let Some(like) = expr.get("like") {
        (attr_of(like.get("left")?, "resource")? == "path").then_some(())?;
        // The literal text before the first wildcard; the key is its part up to the last `/`
        // (`"pci/keys*"` gives `pci`: every match is under `pci`). Without a wildcard the pattern
        // is the whole path.
        let mut literal = String::new();
        let mut wildcard = false;
        for elem in like.get("pattern")?.as_array()? {
            match elem {
                Value::String(w) if w == "Wildcard" => {
                    wildcard = true;
                    break;
                }
                other => literal.push_str(other.get("Literal")?.as_str()?),
            }
        }
        let key = if wildcard { literal.rsplit_once('/').map(|(dir, _)| dir.to_owned())? } else { literal };
        return (!key.is_empty()).then_some(Guard::ResourceUnder(key));
    }
    None
}

/// The keys a resource path is found under in the index: each of its directories and itself
/// (`a/b/c` gives `a`, `a/b`, `a/b/c`).
pub(crate) fn path_keys(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i]).chain(std::iter::once(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(text: &str) -> Option<Guard> {
        let policy = cedar_policy::Policy::parse(None, text).unwrap();
        best_guard(&policy.to_json().unwrap())
    }

    #[test]
    fn guards_come_from_top_level_conjuncts_of_when_clauses() {
        let cases: &[(&str, Option<Guard>)] = &[
            (
                r#"permit(principal, action, resource) when { principal.k8s_namespaces.contains("prod") };"#,
                Some(Guard::PrincipalHas(Fact::K8sNamespaces, "prod".into())),
            ),
            (
                r#"permit(principal, action, resource) when { principal.owners.contains("t") && resource.path like "pci/keys*" };"#,
                Some(Guard::ResourceUnder("pci".into())),
            ),
            (
                r#"permit(principal, action, resource) when { resource.path like "a/b/*" } when { "web" == principal.path };"#,
                Some(Guard::PrincipalPath("web".into())),
            ),
            (
                r#"permit(principal, action, resource) when { resource.path == "shared/key" };"#,
                Some(Guard::ResourceUnder("shared/key".into())),
            ),
            (
                r#"permit(principal, action, resource) when { resource.dirs.contains("web") };"#,
                Some(Guard::ResourceUnder("web".into())),
            ),
            (
                r#"permit(principal, action, resource) when { resource.path like "exact" };"#,
                Some(Guard::ResourceUnder("exact".into())),
            ),
            // Not necessary conditions, or not keyed: no guard.
            (r#"permit(principal, action, resource) when { resource.path like "root*" };"#, None),
            (r#"permit(principal, action, resource) when { resource.path like "*/x" };"#, None),
            (
                r#"permit(principal, action, resource) when { principal.owners.contains("a") || principal.path == "b" };"#,
                None,
            ),
            (r#"permit(principal, action, resource) unless { principal.owners.contains("a") };"#, None),
            (
                r#"permit(principal, action, resource) when { !principal.k8s_namespaces.contains("prod") };"#,
                None,
            ),
            (r#"permit(principal, action, resource) when { resource.dirs.contains(principal.path) };"#, None),
            (r#"permit(principal, action, resource) when { principal.registered };"#, None),
            (r#"permit(principal, action, resource);"#, None),
        ];
        for (text, want) in cases {
            assert_eq!(&guard(text), want, "{text}");
        }
    }

    #[test]
    fn path_keys_are_the_directories_and_the_path() {
        assert_eq!(path_keys("a/b/c").collect::<Vec<_>>(), ["a", "a/b", "a/b/c"]);
        assert_eq!(path_keys("a").collect::<Vec<_>>(), ["a"]);
    }
}
