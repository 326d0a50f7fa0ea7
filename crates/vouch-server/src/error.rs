//! The one place where errors become HTTP responses. Every error body is
//! `{"error": {"code": "...", "message": "..."}}` and says what was wrong; none carries a secret.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vouch_store::StoreError;

/// An error answered to an API caller.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// 400: the request is malformed or invalid.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid_request", message: message.into() }
    }

    /// 401: no credentials.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code: "unauthenticated", message: message.into() }
    }

    /// 403: credentials present but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self { status: StatusCode::FORBIDDEN, code: "permission_denied", message: message.into() }
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, code: "not_found", message: message.into() }
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self { status: StatusCode::CONFLICT, code: "conflict", message: message.into() }
    }

    /// 503: something the request depends on is unreachable; retrying later may work.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self { status: StatusCode::SERVICE_UNAVAILABLE, code: "unavailable", message: message.into() }
    }

    /// 500: details go to the log, not to the caller.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            message: format!("{context}; see the server log"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::EntryExists(_) | StoreError::TokenExists | StoreError::RevisionConflict { .. } => {
                Self::conflict(e.to_string())
            }
            StoreError::EntryNotFound(_) => Self::not_found(e.to_string()),
            StoreError::Corrupt(_) | StoreError::Backend(_) => Self::internal("store failure", e),
        }
    }
}

impl From<vouch_ca::CaError> for ApiError {
    fn from(e: vouch_ca::CaError) -> Self {
        use vouch_ca::CaError::*;
        match e {
            InvalidCsr(_) | Refused(_) | InvalidKey(_) | InvalidCertificate(_) | InvalidBundle(_) => {
                Self::bad_request(e.to_string())
            }
            Crypto(_) | Unseal(_) | InvalidState(_) | Rcgen(_) => Self::internal("signing failed", e),
        }
    }
}
