//! SPIFFE IDs vouch reserves for itself, as pure rules.
//!
//! Two namespaces of every trust domain belong to vouch, not to workloads:
//!
//! - `/vouch/...`: the server's own identity (`/vouch/server`, which the CLI and agents accept as the
//!   server); a workload holding it could impersonate the server to every client. Within it,
//!   `/vouch/group/<name>` names node groups (see `crate::groups`): an entry may be *parented* to a
//!   group, whose member agents then serve it, but no workload may *be* one;
//! - `/agent/...`: node agents (`/agent/join_token/...`, `/agent/k8s_psat/...`, `/agent/x509pop/...`
//!   and the IDs chosen for join tokens); a workload holding one could sync, sign and mint JWTs as
//!   that agent.
//!
//! So no entry and no SVID minted through the admin API may carry an ID in either, and a join token
//! may only name an ID in the agents' namespace, which also keeps it away from every admin ID (admins
//! are entries, and entries cannot be agents). SPIRE reserves `/spire/agent/...` and
//! `/spire/server` the same way.

use vouch_core::SpiffeId;

use crate::error::ApiError;

/// The path prefix of every agent SPIFFE ID.
pub const AGENT_PREFIX: &str = "/agent/";
/// The path prefix of the server's own identities.
pub const SERVER_PREFIX: &str = "/vouch/";

/// Which reserved namespace an ID falls in, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reserved {
    /// The server's namespace.
    Server,
    /// The agents' namespace.
    Agent,
}

/// The reserved namespace of `id`, if it has one.
pub fn namespace_of(id: &SpiffeId) -> Option<Reserved> {
    let path = id.path();
    if path.starts_with(SERVER_PREFIX) {
        Some(Reserved::Server)
    } else if path.starts_with(AGENT_PREFIX) {
        Some(Reserved::Agent)
    } else {
        None
    }
}

/// Refuses an entry's parent in the node groups' namespace that is not a valid group ID (a typo there
/// would leave the entry served by nobody); `field` names the request field. Any other parent is the
/// admin's choice, as in SPIRE: an agent that has not attested yet, or the server for admin entries.
pub fn check_parent_id(field: &'static str, id: &SpiffeId) -> Result<(), ApiError> {
    if !vouch_core::group::is_group_namespace(id) {
        return Ok(());
    }
    vouch_core::GroupName::from_id(field, id, id.trust_domain())
        .map(|_| ())
        .map_err(|e| ApiError::reserved_id(e.to_string()))
}

/// Refuses an ID for a workload (an entry or an SVID minted by an admin) in a reserved namespace;
/// `field` names the request field.
pub fn check_workload_id(field: &str, id: &SpiffeId) -> Result<(), ApiError> {
    let why = match namespace_of(id) {
        None => return Ok(()),
        Some(Reserved::Server) if vouch_core::group::is_group_namespace(id) => format!(
            "the namespace `{}` is reserved for node groups, which may be an entry's parent_id but never its spiffe_id",
            vouch_core::group::GROUP_PREFIX
        ),
        Some(Reserved::Server) => {
            format!("the namespace `{SERVER_PREFIX}` is reserved for the vouch server's own identity")
        }
        Some(Reserved::Agent) => format!(
            "the namespace `{AGENT_PREFIX}` is reserved for node agents, which get their IDs by attestation"
        ),
    };
    Err(ApiError::reserved_id(format!(
        "{field}: `{id}` cannot be given to a workload: {why}; choose another path"
    )))
}

/// Refuses an agent ID (chosen for a join token, or given by attestation) outside the agents'
/// namespace; `field` names the request field.
pub fn check_agent_id(field: &str, id: &SpiffeId) -> Result<(), ApiError> {
    if namespace_of(id) == Some(Reserved::Agent) && id.path().len() > AGENT_PREFIX.len() {
        return Ok(());
    }
    Err(ApiError::reserved_id(format!(
        "{field}: `{id}` is outside the agents' namespace: agent IDs must start with `{AGENT_PREFIX}` (the rest of the trust domain is reserved for workloads and admins, `{SERVER_PREFIX}` for the server), e.g. `spiffe://{}{AGENT_PREFIX}node-1`",
        id.trust_domain()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_and_agent_namespaces_are_reserved() {
        let id = |p: &str| SpiffeId::parse(&format!("spiffe://example.org{p}")).unwrap();
        let table = [
            ("/vouch/server", Some(Reserved::Server)),
            ("/vouch/other", Some(Reserved::Server)),
            ("/agent/node-1", Some(Reserved::Agent)),
            ("/agent/k8s_psat/c/u", Some(Reserved::Agent)),
            ("/agents/x", None),
            ("/vouchers", None),
            ("/web/agent/x", None),
            ("/admin/ops", None),
        ];
        for (path, want) in table {
            assert_eq!(namespace_of(&id(path)), want, "{path}");
            assert_eq!(check_workload_id("f", &id(path)).is_ok(), want.is_none(), "{path}");
            assert_eq!(check_agent_id("f", &id(path)).is_ok(), want == Some(Reserved::Agent), "{path}");
        }
        let e = check_workload_id("spiffe_id", &id("/vouch/group/prod")).unwrap_err();
        assert!(e.message.contains("reserved for node groups"), "{}", e.message);
        assert!(check_parent_id("parent_id", &id("/vouch/group/prod")).is_ok());
        assert!(check_parent_id("parent_id", &id("/vouch/server")).is_ok(), "admin entries' parent");
        assert!(check_parent_id("parent_id", &id("/agent/node-1")).is_ok());
        let e = check_parent_id("parent_id", &id("/vouch/group/a/b")).unwrap_err();
        assert!(
            e.message.starts_with("parent_id: `spiffe://example.org/vouch/group/a/b` is not a node group ID"),
            "{}",
            e.message
        );
        let e = check_workload_id("spiffe_id", &id("/vouch/server")).unwrap_err();
        assert_eq!(e.code, vouch_api::ErrorCode::ReservedId);
        assert!(e.message.starts_with("spiffe_id: `spiffe://example.org/vouch/server`"), "{}", e.message);
    }
}
