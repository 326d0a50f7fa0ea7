//! The error body every API answer other than 2xx carries.

use serde::{Deserialize, Serialize};

/// `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// A machine-readable code and a message that says what went wrong and what to do. Never carries a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code, one of [`ErrorCode`]'s spellings.
    pub code: String,
    /// For people.
    pub message: String,
}

/// The stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: the request is malformed or invalid.
    InvalidRequest,
    /// 401: no or unacceptable credentials.
    Unauthenticated,
    /// 403: credentials present but not allowed.
    PermissionDenied,
    /// 404: no such object.
    NotFound,
    /// 400: the SPIFFE ID is in a namespace vouch reserves for itself (the server's own ID, the
    /// agents' IDs); no entry, join token or minted SVID may carry it.
    ReservedId,
    /// 401: the agent presented an X509-SVID that is no longer its current one (it was renewed or
    /// the agent attested again); a copied older SVID is refused even before it expires.
    StaleSvid,
    /// 403: the agent is banned; it may not call the agent API or attest again under this ID.
    AgentBanned,
    /// 403: the SPIFFE ID is not an attested agent (evicted, or never attested): it must attest again.
    AgentNotAttested,
    /// 409: the object exists already.
    Conflict,
    /// 409: the object changed since the caller read it.
    RevisionConflict,
    /// 429: too many outstanding requests of this kind.
    TooManyRequests,
    /// 429: the caller exceeded its rate limit (per source address for node attestation, per agent
    /// for signing and JWT minting); the answer's `Retry-After` header says when to try again, and
    /// nothing about the request was looked at.
    RateLimited,
    /// 503: a dependency is unavailable; retry later.
    Unavailable,
    /// 500: see the server log.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::NotFound => "not_found",
            Self::ReservedId => "reserved_id",
            Self::StaleSvid => "stale_svid",
            Self::AgentBanned => "agent_banned",
            Self::AgentNotAttested => "agent_not_attested",
            Self::Conflict => "conflict",
            Self::RevisionConflict => "revision_conflict",
            Self::TooManyRequests => "too_many_requests",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl ErrorCode {
    /// Every code, for lookups by spelling.
    pub const ALL: [Self; 14] = [
        Self::InvalidRequest,
        Self::ReservedId,
        Self::Unauthenticated,
        Self::StaleSvid,
        Self::PermissionDenied,
        Self::AgentBanned,
        Self::AgentNotAttested,
        Self::NotFound,
        Self::Conflict,
        Self::RevisionConflict,
        Self::TooManyRequests,
        Self::RateLimited,
        Self::Unavailable,
        Self::Internal,
    ];

    /// The code with this wire spelling; `None` for a code this build does not know (a newer
    /// server), which a client treats like any other error of the answer's HTTP status.
    pub fn from_wire(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_from_its_spelling() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_wire(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::from_wire("surprise"), None);
    }
}
