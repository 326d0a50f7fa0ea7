//! The agent's private admin socket (`admin.sock` in its data directory, mode 0600): one JSON line
//! per request, one per answer.

use serde::{Deserialize, Serialize};

/// `{"explain": <pid>}`: why a process does or does not get an identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The process.
    pub explain: i32,
}

/// The agent's answer: an explanation, or why it refused to give one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ExplainAnswer {
    /// The explanation.
    Explanation(Explanation),
    /// A refusal (not allowed, bad request).
    Refused {
        /// Why.
        error: String,
    },
}

/// Everything the agent can say about a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// The process.
    pub pid: i32,
    /// The agent's own SPIFFE ID.
    pub agent_id: String,
    /// Whether the agent is connected to the server (entries are current).
    pub connected: bool,
    /// Why attestation failed, if it did (then no entry can match).
    pub error: Option<String>,
    /// The selectors found.
    pub selectors: Vec<String>,
    /// The container per the cgroup, if any (`runtime:namespace/id`).
    pub container: Option<String>,
    /// Every entry the agent may serve, with its verdict.
    pub entries: Vec<EntryVerdict>,
}

/// One entry and what matching it against the process gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryVerdict {
    /// Entry id.
    pub id: String,
    /// The SPIFFE ID it would give.
    pub spiffe_id: String,
    /// `matched`, `entry expired`, or `missing selector ...`.
    pub outcome: String,
}

impl EntryVerdict {
    /// The outcome of an entry that matched.
    pub const MATCHED: &'static str = "matched";

    /// Whether the entry matched.
    pub fn matched(&self) -> bool {
        self.outcome == Self::MATCHED
    }
}
