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
    /// 409: the object exists already.
    Conflict,
    /// 409: the object changed since the caller read it.
    RevisionConflict,
    /// 429: too many outstanding requests of this kind.
    TooManyRequests,
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
            Self::Conflict => "conflict",
            Self::RevisionConflict => "revision_conflict",
            Self::TooManyRequests => "too_many_requests",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
