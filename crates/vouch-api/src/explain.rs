//! The agent's private admin socket (`admin.sock` in its data directory, mode 0600): one JSON line
//! per request ([`AdminRequest`]), one per answer ([`AdminAnswer`]).

use serde::{Deserialize, Serialize};

/// A request on the admin socket, one JSON line:
///
/// - `{"explain": <pid>}`: why a process does or does not get an identity ([`Explanation`]);
/// - `{"health": {}}`: whether the agent is up and ready ([`Health`]);
/// - `{"metrics": {}}`: the agent's Prometheus metrics ([`MetricsText`]);
/// - `{"authorize": {"principal": ..., "action": ..., "resource": {...}}}`: a decision for a
///   workload the agent serves ([`crate::policy::AuthorizeResponse`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum AdminRequest {
    /// Explain this process.
    Explain(i32),
    /// Report health.
    Health {},
    /// Report metrics.
    Metrics {},
    /// Decide a request locally, from the policy set synced from the server
    /// ([`crate::policy::AuthorizeResponse`]).
    Authorize(crate::policy::AccessRequest),
}

/// The agent's answer to an admin request: the answer, or why it refused to give one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AdminAnswer<T> {
    /// A refusal (not allowed, bad request). Tried first and closed (no other field), so that a
    /// refusal is never read as an answer nor an answer with an `error` field as a refusal.
    Refused(Refusal),
    /// The answer.
    Answer(T),
}

impl<T> AdminAnswer<T> {
    /// A refusal saying `error`.
    pub fn refused(error: impl Into<String>) -> Self {
        Self::Refused(Refusal { error: error.into() })
    }
}

/// `{"error": "..."}`: why the agent refused a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// Why.
    pub error: String,
}

/// The answer to `{"explain": <pid>}`.
pub type ExplainAnswer = AdminAnswer<Explanation>;

/// Whether the agent is connected to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncStatus {
    /// The sync stream is up: entries and bundle are current.
    Connected,
    /// The server is unreachable: the agent serves the SVIDs it holds until they expire, and
    /// cannot issue new ones.
    ServingCached,
    /// No snapshot from the server since the agent started: it does not know which entries it
    /// serves yet, so it answers workloads "unavailable, retry" rather than "no identity".
    NotYetSynced,
}

impl SyncStatus {
    /// How `vouch agent healthcheck` says it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Connected => "connected to the server",
            Self::ServingCached => "serving cached SVIDs (the server is unreachable)",
            Self::NotYetSynced => "not synced with the server since start (is it reachable?)",
        }
    }
}

/// The answer to `{"health": {}}`. The agent is ready when it serves the Workload API socket, its
/// own SVID is valid and it has synced with the server once since it started; being cut off from
/// the server later does not make it unready (it keeps serving what it holds, as SPIRE's agent
/// does), but `sync` says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Ready to serve workloads: `workload_api`, `agent_svid_valid`, and synced once.
    pub ready: bool,
    /// One line: why not ready, or the state when ready.
    pub reason: String,
    /// The agent's own SPIFFE ID.
    pub agent_id: String,
    /// The Workload API socket.
    pub socket: String,
    /// Whether the Workload API socket is served (the server task runs and the socket file is there).
    pub workload_api: bool,
    /// Whether the agent's own SVID is within its validity.
    pub agent_svid_valid: bool,
    /// When the agent's own SVID expires (unix seconds).
    pub agent_svid_expires_at: i64,
    /// Connected to the server, or serving cached SVIDs.
    pub sync: SyncStatus,
    /// When the last line of the sync stream arrived (unix seconds), if any did.
    pub last_sync_at: Option<i64>,
    /// Workload X509-SVIDs held.
    pub svids_held: u64,
    /// Entries the agent may serve.
    pub entries: u64,
}

/// The answer to `{"metrics": {}}`: the same text as the agent's `GET /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsText {
    /// Prometheus text exposition format 0.0.4.
    pub metrics: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_keep_their_wire_form() {
        let cases = [
            (AdminRequest::Explain(42), r#"{"explain":42}"#),
            (AdminRequest::Health {}, r#"{"health":{}}"#),
            (AdminRequest::Metrics {}, r#"{"metrics":{}}"#),
        ];
        for (request, text) in cases {
            assert_eq!(serde_json::to_string(&request).unwrap(), text);
            assert_eq!(serde_json::from_str::<AdminRequest>(text).unwrap(), request);
        }
        for bad in [r#"{"explain":"x"}"#, r#"{"health":{"x":1}}"#, r#"{"reboot":{}}"#, "{}"] {
            assert!(serde_json::from_str::<AdminRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn refusals_are_never_read_as_answers() {
        let refused = r#"{"error":"no"}"#;
        let answer: AdminAnswer<MetricsText> = serde_json::from_str(refused).unwrap();
        assert_eq!(answer, AdminAnswer::refused("no"));
        let failed = Explanation {
            pid: 7,
            agent_id: "spiffe://example.org/agent/n".into(),
            connected: true,
            error: Some("process 7 no longer exists".into()),
            selectors: Vec::new(),
            container: None,
            entries: Vec::new(),
        };
        let text = serde_json::to_string(&ExplainAnswer::Answer(failed.clone())).unwrap();
        assert_eq!(serde_json::from_str::<ExplainAnswer>(&text).unwrap(), ExplainAnswer::Answer(failed));
        let answer: AdminAnswer<MetricsText> = serde_json::from_str(r#"{"metrics":"m 1\n"}"#).unwrap();
        assert_eq!(answer, AdminAnswer::Answer(MetricsText { metrics: "m 1\n".into() }));
    }
}
