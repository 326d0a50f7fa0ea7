//! The routes of the server's API, shared by its router and its clients. Paths with an `{id}` have a
//! function that fills it in, percent-encoded.

/// Liveness.
pub const HEALTHZ: &str = "/healthz";
/// Readiness.
pub const READYZ: &str = "/readyz";
/// Prometheus metrics.
pub const METRICS: &str = "/metrics";
/// The OpenAPI document.
pub const OPENAPI: &str = "/v1/openapi.json";
/// The trust bundle (`?format=jwks|pem`).
pub const BUNDLE: &str = "/v1/bundle";
/// The authority's keys and their states.
pub const AUTHORITY_KEYS: &str = "/v1/authority/keys";
/// Prepare a successor root CA now (published at once, active on schedule).
pub const AUTHORITY_PREPARE_ROOT: &str = "/v1/authority/prepare-root";
/// Entries: create (POST), list (GET).
pub const ENTRIES: &str = "/v1/entries";
/// Entries: create many in one transaction.
pub const ENTRIES_BATCH: &str = "/v1/entries/batch";
/// One entry, as a router pattern.
pub const ENTRY: &str = "/v1/entries/{id}";
/// Node groups: create (POST), list (GET).
pub const GROUPS: &str = "/v1/groups";
/// One node group by name, as a router pattern.
pub const GROUP: &str = "/v1/groups/{name}";
/// Federation relationships: create (POST), list (GET).
pub const FEDERATION: &str = "/v1/federation";
/// One federation relationship by trust domain, as a router pattern.
pub const FEDERATION_ONE: &str = "/v1/federation/{trust_domain}";
/// Policies: list (GET).
pub const POLICIES: &str = "/v1/policies";
/// Check a policy against the schema without storing it.
pub const POLICIES_VALIDATE: &str = "/v1/policies/validate";
/// Decide a what-if request without storing anything.
pub const POLICIES_TEST: &str = "/v1/policies/test";
/// One policy: put a new version (PUT), show with history (GET), delete (DELETE).
pub const POLICY: &str = "/v1/policies/{id}";
/// The decision API (admins, and agents for the workloads they serve).
pub const AUTHORIZE: &str = "/v1/authorize";
/// Secrets: list (GET, `?prefix=`).
pub const SECRETS: &str = "/v1/secrets";
/// Issue short-lived database credentials.
pub const DB_CREDS: &str = "/v1/db/creds";
/// Database credential leases.
pub const DB_LEASES: &str = "/v1/db/leases";
/// Renew a database credential lease.
pub const DB_LEASE_RENEW: &str = "/v1/db/leases/{id}/renew";
/// Revoke a database credential lease (its role is dropped).
pub const DB_LEASE_REVOKE: &str = "/v1/db/leases/{id}/revoke";
/// One secret by percent-encoded path: write a version (PUT), read a value (GET, `?version=`).
pub const SECRET: &str = "/v1/secrets/{path}";
/// One secret's metadata and versions.
pub const SECRET_VERSIONS: &str = "/v1/secrets/{path}/versions";
/// Soft-delete versions of a secret.
pub const SECRET_DELETE: &str = "/v1/secrets/{path}/delete";
/// Undo soft deletes.
pub const SECRET_UNDELETE: &str = "/v1/secrets/{path}/undelete";
/// Destroy versions (their sealed values are removed for good).
pub const SECRET_DESTROY: &str = "/v1/secrets/{path}/destroy";
/// Audit records: search and pages (GET).
pub const AUDIT_RECORDS: &str = "/v1/audit/records";
/// Signed audit checkpoints (GET).
pub const AUDIT_CHECKPOINTS: &str = "/v1/audit/checkpoints";
/// The public keys of audit checkpoints (GET).
pub const AUDIT_KEYS: &str = "/v1/audit/keys";
/// Walk the audit chain and its checkpoints (GET).
pub const AUDIT_VERIFY: &str = "/v1/audit/verify";
/// Forensics: which workloads held a SPIFFE ID at a time or over a range (GET).
pub const AUDIT_WHO: &str = "/v1/audit/who";
/// Join tokens.
pub const JOIN_TOKENS: &str = "/v1/join-tokens";
/// Mint an X509-SVID.
pub const MINT_X509: &str = "/v1/svids/x509";
/// Mint a JWT-SVID.
pub const MINT_JWT: &str = "/v1/svids/jwt";
/// Validate a JWT-SVID.
pub const VALIDATE_JWT: &str = "/v1/svids/jwt/validate";
/// Agents known to the server.
pub const AGENTS: &str = "/v1/agents";
/// Evict an agent.
pub const AGENTS_EVICT: &str = "/v1/agents/evict";
/// Ban an agent.
pub const AGENTS_BAN: &str = "/v1/agents/ban";

/// Prefix of the node attestation routes: the evidence in the body is the credential.
pub const AGENT_ATTEST_PREFIX: &str = "/v1/agent/attest/";
/// Node attestation with a join token.
pub const ATTEST_JOIN_TOKEN: &str = "/v1/agent/attest/join-token";
/// Node attestation with a Kubernetes projected service-account token.
pub const ATTEST_K8S_PSAT: &str = "/v1/agent/attest/k8s-psat";
/// x509pop: a challenge for a node certificate.
pub const ATTEST_X509POP_CHALLENGE: &str = "/v1/agent/attest/x509pop/challenge";
/// x509pop: the signed challenge.
pub const ATTEST_X509POP: &str = "/v1/agent/attest/x509pop";
/// A new agent SVID.
pub const AGENT_RENEW: &str = "/v1/agent/renew";
/// The sync stream.
pub const AGENT_SYNC: &str = "/v1/agent/sync";
/// Batch signing of workload CSRs.
pub const AGENT_SIGN: &str = "/v1/agent/sign";
/// A JWT-SVID for an entry.
pub const AGENT_JWT: &str = "/v1/agent/jwt";
/// A secret read for a workload the agent attested.
pub const AGENT_SECRET: &str = "/v1/agent/secret";
/// What the agent's Workload API delivered to which workload (batched reports).
pub const AGENT_DELIVERED: &str = "/v1/agent/delivered";
/// Database credentials for a workload the agent attested.
pub const AGENT_DB_CREDS: &str = "/v1/agent/db/creds";

/// The renew path of one database lease.
pub fn db_lease_renew(id: &str) -> String {
    format!("/v1/db/leases/{}/renew", percent_encode(id))
}

/// The revoke path of one database lease.
pub fn db_lease_revoke(id: &str) -> String {
    format!("/v1/db/leases/{}/revoke", percent_encode(id))
}

/// The path of one entry.
pub fn entry(id: &str) -> String {
    format!("/v1/entries/{}", percent_encode(id))
}

/// The path of one node group.
pub fn group(name: &str) -> String {
    format!("/v1/groups/{}", percent_encode(name))
}

/// The path of one policy.
pub fn policy(id: &str) -> String {
    format!("/v1/policies/{}", percent_encode(id))
}

/// The path of one federation relationship.
pub fn federation(trust_domain: &str) -> String {
    format!("/v1/federation/{}", percent_encode(trust_domain))
}

/// The path of one secret, optionally with a suffix (`versions`, `delete`, `undelete`, `destroy`).
pub fn secret(path: &str, suffix: Option<&str>) -> String {
    match suffix {
        Some(suffix) => format!("/v1/secrets/{}/{suffix}", percent_encode(path)),
        None => format!("/v1/secrets/{}", percent_encode(path)),
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986 section 2.3).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A path with a query string of the given pairs (values percent-encoded); pairs whose value is
/// `None` are left out.
pub fn with_query(path: &str, pairs: &[(&str, Option<&str>)]) -> String {
    let query: Vec<String> =
        pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", percent_encode(v)))).collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_queries_are_encoded() {
        assert_eq!(entry("a/b c"), "/v1/entries/a%2Fb%20c");
        assert_eq!(
            with_query(ENTRIES, &[("selector", Some("unix:uid:0")), ("x", None)]),
            "/v1/entries?selector=unix%3Auid%3A0"
        );
        assert_eq!(with_query(ENTRIES, &[("x", None)]), ENTRIES);
    }
}
