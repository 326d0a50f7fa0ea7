//! Grants of vouch: which workload may do what to which resource, as Cedar policies.
//!
//! Principals are workloads, named by SPIFFE ID (`Workload::"spiffe://example.org/web"`), with
//! facts from their registration entries; resources are secrets (`Secret::"web/db"`), database
//! roles (`DbRole::"orders/ro"`) and services (`Service::"spiffe://example.org/db"`); actions are
//! `read`, `write` (secrets), `connect` (services, database roles) and `issue` (database roles).
//! [`SCHEMA`] says which attributes each has; every policy is validated against it before it is
//! accepted ([`PolicyDoc::parse`]), so a misspelt attribute is refused when written, not discovered
//! as a silent deny.
//!
//! Decisions follow Cedar's rules: a `forbid` that applies wins over any `permit`, and without a
//! `permit` that applies the answer is deny ("no policy permits"). Deciding is a pure function of
//! the policies, the workload facts and the request ([`Policies::decide`]): no I/O, no clock.
//!
//! Cedar evaluates every policy it is given. To stay in microseconds with thousands of policies,
//! [`Policies`] indexes them by the scope of each policy (its action, and an exact principal or
//! resource where the scope names one) and evaluates only those that can apply to a request.

mod confine;
mod engine;
mod facts;
mod guard;
mod schema;

pub use confine::confine;
pub use engine::{Decision, Engine, Policies, PolicyDoc, PolicyId, MAX_POLICY_BYTES};
pub use facts::{Facts, Workload, Workloads};
pub use schema::SCHEMA;

/// Errors of the policy crate. Messages quote the user's input in backticks and say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A policy id breaks the naming rules.
    #[error("policy id `{0}`: use 1 to 128 characters of A-Z, a-z, 0-9, `.`, `_` and `-`")]
    BadId(String),
    /// The text is larger than [`MAX_POLICY_BYTES`].
    #[error("policy `{id}` is {len} bytes; at most {max} are accepted: split it into several policies")]
    TooLarge {
        /// Policy id.
        id: String,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text is not one Cedar policy.
    #[error("policy `{id}` does not parse: {message}")]
    Parse {
        /// Policy id.
        id: String,
        /// Cedar's diagnostics.
        message: String,
    },
    /// The text holds no policy or more than one.
    #[error("policy `{id}` holds {count} Cedar policies; a policy document holds exactly one: write each as its own policy")]
    NotOne {
        /// Policy id.
        id: String,
        /// How many it holds.
        count: usize,
    },
    /// The text is a template (`?principal`, `?resource`).
    #[error("policy `{0}` is a template (it uses `?principal` or `?resource`); write a static policy")]
    Template(String),
    /// The policy does not fit the schema.
    #[error("policy `{id}` fails validation against the schema: {}", .errors.join("; "))]
    Invalid {
        /// Policy id.
        id: String,
        /// One message per problem.
        errors: Vec<String>,
    },
    /// Two documents with one id.
    #[error("policy `{0}` is given twice")]
    Duplicate(String),
    /// A request the schema does not allow (an action on a resource it does not apply to).
    #[error("{0}")]
    BadRequest(String),
    /// An internal inconsistency in Cedar (the schema does not parse); a bug.
    #[error("internal policy error: {0}")]
    Internal(String),
}
