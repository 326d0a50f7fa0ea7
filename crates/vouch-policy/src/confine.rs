//! Namespaced policies: a policy of a namespace other than `default` decides only about that
//! namespace. Its text is kept as written; what is evaluated (on the server and, synced, on the
//! agents) is the policy with one more `when` clause:
//!
//! ```cedar
//! when { principal.namespaces.contains("<ns>") && resource.namespaces.contains("<ns>") }
//! ```
//!
//! so it applies only to workloads registered in the namespace and to its resources (secrets and
//! database roles under `<ns>/`, services registered in it), whether it permits or forbids. An
//! admin limited to a namespace can therefore neither grant nor deny anything outside it. Policies
//! of `default` are not confined: they decide for every namespace, and only an admin of all
//! namespaces writes them.

use serde_json::{json, Value};
use vouch_core::Namespace;

use crate::PolicyError;

/// The text that is evaluated for policy `id` with `text` in `namespace`: the text itself for
/// `default`, else the text with the namespace's clause added (Cedar's own syntax, so agents parse
/// it as any other policy).
pub fn confine(id: &str, text: &str, namespace: &Namespace) -> Result<String, PolicyError> {
    if namespace.is_default() {
        return Ok(text.to_owned());
    }
    let parse_err =
        |e: &dyn std::fmt::Display| PolicyError::Parse { id: id.to_owned(), message: e.to_string() };
    let policy = cedar_policy::Policy::parse(None, text).map_err(|e| parse_err(&e))?;
    let mut est = policy.to_json().map_err(|e| parse_err(&e))?;
    let contains = |var: &str| {
        json!({"contains": {
            "left": {".": {"left": {"Var": var}, "attr": "namespaces"}},
            "right": {"Value": namespace.as_str()},
        }})
    };
    let clause = json!({"kind": "when", "body": {"&&": {"left": contains("principal"), "right": contains("resource")}}});
    match est.get_mut("conditions").and_then(Value::as_array_mut) {
        Some(conditions) => conditions.push(clause),
        None => {
            return Err(PolicyError::Internal(format!("policy `{id}` has no conditions in its JSON form")))
        }
    }
    let confined = cedar_policy::Policy::from_json(None, est).map_err(|e| parse_err(&e))?;
    Ok(confined.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Policies, PolicyDoc, Workloads};
    use vouch_core::grant::{AccessRequest, Action, Resource};
    use vouch_core::{Entry, EntryId, EntrySpec, SecretPath, SpiffeId, TrustDomain};

    fn entry(path: &str, namespace: &str) -> Entry {
        let td = TrustDomain::new("example.org").unwrap();
        let mut spec: EntrySpec = serde_json::from_value(json!({
            "spiffe_id": format!("spiffe://example.org{path}"),
            "parent_id": "spiffe://example.org/agent/a",
            "selectors": ["unix:uid:1"],
        }))
        .unwrap();
        spec.namespace = Some(Namespace::new(namespace).unwrap());
        Entry::create(spec, EntryId::new(&path[1..]).unwrap(), &td, 1).unwrap()
    }

    fn read(principal: &str, secret: &str) -> AccessRequest {
        AccessRequest {
            principal: SpiffeId::parse(&format!("spiffe://example.org{principal}")).unwrap(),
            action: Action::Read,
            resource: Resource::Secret(SecretPath::parse(secret).unwrap()),
        }
    }

    #[test]
    fn a_namespaced_policy_decides_only_inside_its_namespace() {
        let ns = |n: &str| Namespace::new(n).unwrap();
        let all = "permit(principal, action, resource);";
        let deny =
            "forbid(principal, action == Action::\"read\", resource) when { resource.path like \"*\" };";
        let docs = vec![
            PolicyDoc::parse("a-all", &confine("a-all", all, &ns("team-a")).unwrap()).unwrap(),
            PolicyDoc::parse("b-all", &confine("b-all", all, &ns("team-b")).unwrap()).unwrap(),
            PolicyDoc::parse("b-deny", &confine("b-deny", deny, &ns("team-b")).unwrap()).unwrap(),
        ];
        let policies = Policies::new(docs).unwrap();
        let entries = [entry("/a", "team-a"), entry("/b", "team-b"), entry("/d", "default")];
        let workloads = Workloads::from_entries(&entries).unwrap();
        let decide = |p: &str, s: &str| {
            let req = read(p, s);
            let d = policies.decide(&req, &workloads);
            assert_eq!(d.allow, policies.decide_unindexed(&req, &workloads).allow, "{p} {s}: index agrees");
            (d.allow, d.reasons)
        };
        assert_eq!(decide("/a", "team-a/db"), (true, vec!["a-all".to_owned()]), "inside");
        assert!(!decide("/a", "team-b/db").0, "a policy of team-a grants nothing of team-b");
        assert!(!decide("/a", "db").0, "nor a secret outside every namespace");
        assert!(!decide("/b", "team-a/db").0, "nor to a workload of team-b");
        assert!(!decide("/d", "team-a/db").0, "nor to a workload of default");
        assert!(!decide("/unregistered", "team-a/db").0, "nor to an unregistered one");
        // The forbid of team-b denies inside team-b only.
        assert_eq!(decide("/b", "team-b/db"), (false, vec!["b-deny".to_owned()]));
        assert_eq!(confine("x", all, &ns("default")).unwrap(), all, "default policies stay as written");
        let text = confine("x", all, &ns("team-a")).unwrap();
        assert!(text.contains("principal.namespaces.contains(\"team-a\")"), "{text}");
        assert!(PolicyDoc::parse("x", &text).is_ok(), "the confined text validates: {text}");
    }
}
