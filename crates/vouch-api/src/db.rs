//! Short-lived database credentials: a login role made on request, with a lease that ends it.
//!
//! Only [`DbCreds`] carries a password, once, in the answer to an issue; its `Debug` never shows
//! it. Leases carry the role's name and times, never the password.

use serde::{Deserialize, Serialize};
use vouch_core::EntryId;

/// `POST /v1/db/creds`: issue credentials for a role template of a configured connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbCredsRequest {
    /// `<connection>/<template>`, as in grants (`DbRole::"orders/readonly"`).
    pub role: String,
    /// The lease's lifetime in seconds; the template's default when left out. At most its max TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// `POST /v1/agent/db/creds`: an agent asks for credentials for a workload it attested, named by
/// its entry (the server checks that the agent serves it, then the grant `issue` on the role).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentDbCredsRequest {
    /// The workload's entry.
    pub entry_id: EntryId,
    /// `<connection>/<template>`.
    pub role: String,
    /// The lease's lifetime in seconds; the template's default when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

/// A workload's request on the agent's secret socket (one JSON line): credentials for a role,
/// and which of the workload's identities to ask as when it has several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadDbCredsRequest {
    /// `<connection>/<template>`.
    pub db_role: String,
    /// The lease's lifetime in seconds; the template's default when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The identity to ask as, when the workload has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<vouch_core::SpiffeId>,
}

/// Issued credentials: the only message that carries the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbCreds {
    /// The lease that ends them.
    pub lease: DbLeaseView,
    /// The login role's name (the user to connect as).
    pub username: String,
    /// The login role's password.
    pub password: String,
}

impl std::fmt::Debug for DbCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbCreds")
            .field("lease", &self.lease)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// A lease as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbLeaseView {
    /// The lease id.
    pub id: String,
    /// The login role it made.
    pub role: String,
    /// The configured connection.
    pub connection: String,
    /// The role template.
    pub template: String,
    /// Who asked for it: an admin caller or a workload's SPIFFE ID.
    pub identity: String,
    /// `creating` (its role is being made, or a crash interrupted that) or `active`.
    pub state: String,
    /// Unix seconds of its issue.
    pub created_at: i64,
    /// Unix seconds at which the role is dropped unless renewed.
    pub expires_at: i64,
    /// Unix seconds past which no renewal extends it.
    pub max_expires_at: i64,
}

/// `GET /v1/db/leases`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbLeaseList {
    /// Every lease, ordered by id.
    pub leases: Vec<DbLeaseView>,
}

/// `POST /v1/db/leases/{id}/renew`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbRenewRequest {
    /// The new lifetime from now, in seconds; the template's default when left out. The lease
    /// never runs past its `max_expires_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}
