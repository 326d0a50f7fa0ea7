//! The one place where errors become HTTP responses. Every error body is a
//! [`vouch_api::ErrorBody`] (`{"error": {"code": "...", "message": "..."}}`) and says what was wrong;
//! none carries a secret. The HTTP status follows from the code, in [`status_of`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vouch_api::{ErrorBody, ErrorCode, ErrorDetail};
use vouch_store::StoreError;

/// An error answered to an API caller.
#[derive(Debug)]
pub struct ApiError {
    /// Stable machine-readable code; decides the HTTP status.
    pub code: ErrorCode,
    /// What went wrong and what to do.
    pub message: String,
    /// For a rate-limited caller: when to try again (the `Retry-After` header, whole seconds
    /// rounded up).
    pub retry_after: Option<std::time::Duration>,
}

/// The HTTP status of each error code. Exhaustive, so a new code cannot ship unmapped.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidRequest | ErrorCode::ReservedId => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated | ErrorCode::StaleSvid => StatusCode::UNAUTHORIZED,
        ErrorCode::PermissionDenied | ErrorCode::AgentBanned | ErrorCode::AgentNotAttested => {
            StatusCode::FORBIDDEN
        }
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict | ErrorCode::RevisionConflict => StatusCode::CONFLICT,
        ErrorCode::TooManyRequests | ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), retry_after: None }
    }

    /// 400: the request is malformed or invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// 400: the SPIFFE ID is in a namespace vouch reserves for itself.
    pub fn reserved_id(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ReservedId, message)
    }

    /// 401: no credentials.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    /// 403: credentials present but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::PermissionDenied, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// 409: the object exists already.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }

    /// 409: the object changed since the caller read it.
    pub fn revision_conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::RevisionConflict, message)
    }

    /// 429: too many outstanding requests of a kind; retry shortly.
    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::TooManyRequests, message)
    }

    /// 429: the caller exceeded its rate limit; it may try again after `retry_after`.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        Self { retry_after: Some(retry_after), ..Self::new(ErrorCode::RateLimited, message) }
    }

    /// 503: something the request depends on is unreachable; retrying later may work.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// 500: details go to the log, not to the caller.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(ErrorCode::Internal, format!("{context}; see the server log"))
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }

    /// The error as the body of an answer (or of one item of a batch answer).
    pub fn detail(&self) -> ErrorDetail {
        ErrorDetail { code: self.code.as_str().to_owned(), message: self.message.clone() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = (status, axum::Json(ErrorBody { error: self.detail() })).into_response();
        if let Some(wait) = self.retry_after {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, retry_after_seconds(wait).into());
        }
        resp
    }
}

/// `Retry-After` in whole seconds (RFC 9110 §10.2.3), rounded up and at least 1, so a client that
/// waits as told finds a token in its bucket.
pub fn retry_after_seconds(wait: std::time::Duration) -> u64 {
    let whole = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    whole.max(1)
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EntryExists(_)
            | StoreError::TokenExists
            | StoreError::GroupExists(_)
            | StoreError::FederationExists(_) => Self::conflict(e.to_string()),
            StoreError::FederationConflict(_) => Self::revision_conflict(e.to_string()),
            StoreError::FederationNotFound(_)
            | StoreError::PolicyNotFound(_)
            | StoreError::LeaseNotFound(_) => Self::not_found(e.to_string()),
            StoreError::SecretNotFound(_) | StoreError::SecretVersionNotFound { .. } => {
                Self::not_found(e.to_string())
            }
            StoreError::SecretConflict(_) => Self::revision_conflict(e.to_string()),
            // The message says which entries hold the group and how to move them.
            StoreError::GroupInUse { .. } => Self::conflict(e.to_string()),
            StoreError::GroupNotFound(_) => Self::not_found(e.to_string()),
            StoreError::RevisionConflict { .. } => Self::revision_conflict(e.to_string()),
            StoreError::EntryNotFound(_) => Self::not_found(e.to_string()),
            // The message names the entry and what to do, and carries no stored content.
            StoreError::DamagedEntry { .. } => {
                tracing::warn!(error = %e, "a damaged entry row was requested");
                Self::new(ErrorCode::Internal, e.to_string())
            }
            StoreError::AgentBanned(_) => Self::new(ErrorCode::AgentBanned, e.to_string()),
            StoreError::AgentNotFound(_) => Self::new(ErrorCode::AgentNotAttested, e.to_string()),
            StoreError::StaleSvid(_) => Self::new(ErrorCode::StaleSvid, e.to_string()),
            // Only at open, so not met by a request; internal if it ever were.
            StoreError::SchemaTooNew { .. } | StoreError::Corrupt(_) | StoreError::Backend(_) => {
                Self::internal("store failure", e)
            }
        }
    }
}

impl From<vouch_ca::CaError> for ApiError {
    fn from(e: vouch_ca::CaError) -> Self {
        use vouch_ca::CaError::*;
        match e {
            InvalidRequest(_)
            | InvalidCsr(_)
            | Refused(_)
            | InvalidKey(_)
            | InvalidCertificate(_)
            | InvalidBundle(_) => Self::bad_request(e.to_string()),
            // The authority has no usable key right now (it comes with the next rotation).
            NotReady(_) => Self::unavailable(e.to_string()),
            Crypto(_) | Unseal(_) | InvalidState(_) | Rcgen(_) => Self::internal("signing failed", e),
            // Names the secret and version, never the value; an operator's problem, not the caller's.
            SecretUnreadable { .. } => {
                tracing::error!(error = %e, "a stored secret cannot be decrypted");
                Self::new(ErrorCode::Internal, e.to_string())
            }
        }
    }
}

impl From<vouch_policy::PolicyError> for ApiError {
    fn from(e: vouch_policy::PolicyError) -> Self {
        use vouch_policy::PolicyError::*;
        match e {
            BadId(_)
            | TooLarge { .. }
            | Parse { .. }
            | NotOne { .. }
            | Template(_)
            | Invalid { .. }
            | Duplicate(_)
            | BadRequest(_) => Self::bad_request(e.to_string()),
            Internal(_) => Self::internal("policy engine failure", e),
        }
    }
}
