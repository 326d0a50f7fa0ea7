//! Why a Workload API call failed, and the one place that decides the gRPC status of each cause
//! (as `error.rs` does for the server's HTTP answers).
//!
//! The status matters to SPIFFE clients: they retry `UNAVAILABLE` forever, give up on
//! `INVALID_ARGUMENT`, and treat `PERMISSION_DENIED` with the message "no identity issued" as "this
//! workload has no identity". A client's own mistake must therefore never come back as
//! `UNAVAILABLE`, and an agent that simply does not know yet must never say "no identity".

use tonic::Status;

use crate::AgentError;

/// The message of `PermissionDenied` when nothing matches; SPIFFE clients recognise it.
pub const NO_IDENTITY: &str = "no identity issued";

/// Why a Workload API call failed.
#[derive(Debug)]
pub enum WorkloadError {
    /// The request lacks the `workload.spiffe.io: true` metadata.
    MissingHeader,
    /// The request itself is wrong (audiences, SPIFFE ID, token missing): retrying cannot help.
    BadRequest(String),
    /// The caller could not be attested or no entry matches it. Why is logged, never told: the
    /// caller may be probing.
    NoIdentity,
    /// The agent has not synced with the server since it started, so it cannot tell yet.
    NotYetSynced,
    /// The caller's uid already has an executable hash waiting or running (`unix:sha256`
    /// selectors); it may retry once that is done. Only the caller's own uid is behind this.
    HashBusy,
    /// The server could not give what was asked now (`what`: "an X509-SVID", "a JWT-SVID").
    Server {
        /// What was being obtained.
        what: &'static str,
        /// The cause, logged (it may name the server's address), not sent to the workload.
        error: AgentError,
    },
    /// A JWT-SVID presented for validation is not valid; the reason is the validator's.
    InvalidToken(String),
    /// The agent could not encode an answer.
    Internal(&'static str),
}

impl From<WorkloadError> for Status {
    fn from(e: WorkloadError) -> Self {
        match e {
            WorkloadError::MissingHeader => Status::invalid_argument("security header missing from request"),
            WorkloadError::BadRequest(reason) => Status::invalid_argument(reason),
            WorkloadError::NoIdentity => Status::permission_denied(NO_IDENTITY),
            WorkloadError::NotYetSynced => Status::unavailable(
                "the vouch agent has not synced with the vouch server since it started; retry",
            ),
            WorkloadError::HashBusy => Status::unavailable(
                "another process of this caller's uid is having its executable hashed by the vouch \
                 agent (one at a time per uid); retry",
            ),
            WorkloadError::Server { what, error } => match refused_request(&error) {
                // The server judged the request itself wrong: the workload's mistake, said as such.
                Some(reason) => Status::invalid_argument(reason.to_owned()),
                None => {
                    tracing::warn!(error = %error, "cannot obtain {what}");
                    Status::unavailable(format!(
                        "cannot obtain {what} from the vouch server right now; retry"
                    ))
                }
            },
            WorkloadError::InvalidToken(reason) => {
                Status::invalid_argument(format!("invalid JWT-SVID: {reason}"))
            }
            WorkloadError::Internal(what) => Status::internal(what),
        }
    }
}

/// The server's reason when it refused the request itself (HTTP 400 `invalid_request`: the
/// workload's audiences, say), which no retry fixes.
fn refused_request(error: &AgentError) -> Option<&str> {
    match error {
        AgentError::Server(vouch_client::ClientError::Api { status: 400, code, message })
            if code == "invalid_request" =>
        {
            Some(message)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_cause_has_the_status_spiffe_clients_expect() {
        let code = |e: WorkloadError| Status::from(e).code();
        assert_eq!(code(WorkloadError::MissingHeader), Code::InvalidArgument);
        assert_eq!(code(WorkloadError::BadRequest("x".into())), Code::InvalidArgument);
        assert_eq!(code(WorkloadError::NotYetSynced), Code::Unavailable);
        assert_eq!(code(WorkloadError::HashBusy), Code::Unavailable, "a retry will be served");
        assert_eq!(code(WorkloadError::InvalidToken("x".into())), Code::InvalidArgument);
        let denied = Status::from(WorkloadError::NoIdentity);
        assert_eq!((denied.code(), denied.message()), (Code::PermissionDenied, NO_IDENTITY));
        let api = |status| vouch_client::ClientError::Api {
            status,
            code: "invalid_request".into(),
            message: "at most 32 audiences are allowed".into(),
        };
        let refused =
            Status::from(WorkloadError::Server { what: "a JWT-SVID", error: AgentError::Server(api(400)) });
        assert_eq!(
            (refused.code(), refused.message()),
            (Code::InvalidArgument, "at most 32 audiences are allowed"),
            "the server's refusal of a bad request is the client's mistake, not a reason to retry"
        );
        let down =
            Status::from(WorkloadError::Server { what: "a JWT-SVID", error: AgentError::Server(api(503)) });
        assert_eq!(down.code(), Code::Unavailable);
    }
}
