//! The Cedar schema of vouch's grants, and its parsed form.

use std::sync::OnceLock;

use crate::PolicyError;

/// The attributes of an entity named by SPIFFE ID (workloads and services alike).
macro_rules! spiffe_attributes {
    () => {
        r#"
  trust_domain: String,
  path: String,
  segments: Set<String>,
  registered: Bool,
  owners: Set<String>,
  k8s_namespaces: Set<String>,
  k8s_service_accounts: Set<String>,
  node_groups: Set<String>,
  namespaces: Set<String>,
"#
    };
}

/// The schema every policy is validated against (Cedar schema syntax).
///
/// Workload and service attributes come from the SPIFFE ID and from the registration entries with
/// that ID (several entries may name one ID, so entry facts are sets):
/// - `trust_domain`: `example.org`; `path`: the SPIFFE ID's path without its leading `/`
///   (`ns/prod/sa/web`); `segments`: the path's segments;
/// - `registered`: whether any entry names the ID;
/// - `owners`: the entries' owners; `k8s_namespaces`, `k8s_service_accounts`: from `k8s:ns:` and
///   `k8s:sa:` selectors; `node_groups`: the node groups (SPIFFE IDs) entries are parented to;
/// - `namespaces`: the vouch namespaces of the entries (what [`crate::confine`] checks).
///
/// Secrets and database roles have `namespaces` too: the first segment of a path or name with more
/// than one (`team-a` for `team-a/db/password`), none for a one-segment name.
///
/// Secrets have `path` (`web/db/password`) and `dirs`, every directory the secret is under
/// (`web`, `web/db`), so `resource.dirs.contains(principal.path)` reads "under the workload's own
/// path". Database roles have `name`.
pub const SCHEMA: &str = concat!(
    "entity Workload {",
    spiffe_attributes!(),
    "};\nentity Service {",
    spiffe_attributes!(),
    r#"};
entity Secret {
  path: String,
  dirs: Set<String>,
  namespaces: Set<String>,
};
entity DbRole {
  name: String,
  namespaces: Set<String>,
};
action "read", "write" appliesTo { principal: [Workload], resource: [Secret] };
action "connect" appliesTo { principal: [Workload], resource: [Service, DbRole] };
action "issue" appliesTo { principal: [Workload], resource: [DbRole] };
"#
);

/// The parsed schema, built once.
pub(crate) fn schema() -> Result<&'static cedar_policy::Schema, PolicyError> {
    static SCHEMA_PARSED: OnceLock<Result<cedar_policy::Schema, String>> = OnceLock::new();
    SCHEMA_PARSED
        .get_or_init(|| {
            cedar_policy::Schema::from_cedarschema_str(SCHEMA)
                .map(|(s, _warnings)| s)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PolicyError::Internal(format!("the schema does not parse: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_schema_parses_and_names_every_action() {
        let schema = super::schema().unwrap();
        let actions: Vec<String> = schema.actions().map(|a| a.id().unescaped().to_string()).collect();
        for a in vouch_core::grant::Action::ALL {
            assert!(actions.iter().any(|x| x == a.as_str()), "{a} missing from {actions:?}");
        }
    }
}
