//! Request extractors and checks every handler module shares: JSON bodies and query strings whose
//! parse errors become the API's JSON 400 answers, and requested lifetimes checked against bounds.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Query, Request};
use axum::Json;

use crate::error::ApiError;

/// A JSON body whose parse errors become 400 answers that quote the parser (field, line, column).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::bad_request("the body must be JSON with `Content-Type: application/json`"))
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Query parameters whose parse errors become JSON 400 answers like every other error.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// A lifetime in seconds as requested, the default when absent, refused outside `min..=max`.
pub(crate) fn requested_ttl(
    ttl: Option<u64>,
    default: Duration,
    min: Duration,
    max: Duration,
    field: &str,
) -> Result<Duration, ApiError> {
    match ttl {
        None => Ok(default),
        Some(s) if s >= min.as_secs() && s <= max.as_secs() => Ok(Duration::from_secs(s)),
        Some(s) => Err(ApiError::bad_request(format!(
            "{field}: {s}s is outside {}s..={}s",
            min.as_secs(),
            max.as_secs()
        ))),
    }
}
