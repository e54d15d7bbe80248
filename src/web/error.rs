//! The contract's error body `{"error":{code,message,details,timestamp,request_id}}` and its codes.
//!
//! Every error that leaves `/api` goes through [`ApiError`]. A 500 never carries internal detail: the
//! cause is logged with the request id, and the client gets the id to quote.

use std::collections::BTreeMap;
use std::fmt;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use chrono::{SecondsFormat, Utc};
use serde_json::json;

use super::request_id;
use crate::storage::StorageError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidToken,
    InsufficientPermission,
    ResourceNotFound,
    DuplicateResource,
    ValidationError,
    BadRequest,
    MethodNotAllowed,
    RequestTimeout,
    InvalidApiVersion,
    RateLimitExceeded,
    MaintenanceMode,
    InternalServerError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidToken => "INVALID_TOKEN",
            Self::InsufficientPermission => "INSUFFICIENT_PERMISSION",
            Self::ResourceNotFound => "RESOURCE_NOT_FOUND",
            Self::DuplicateResource => "DUPLICATE_RESOURCE",
            Self::ValidationError => "VALIDATION_ERROR",
            Self::BadRequest => "BAD_REQUEST",
            Self::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Self::RequestTimeout => "REQUEST_TIMEOUT",
            Self::InvalidApiVersion => "INVALID_API_VERSION",
            Self::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            Self::MaintenanceMode => "MAINTENANCE_MODE",
            Self::InternalServerError => "INTERNAL_SERVER_ERROR",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::InsufficientPermission => StatusCode::FORBIDDEN,
            Self::ResourceNotFound => StatusCode::NOT_FOUND,
            Self::DuplicateResource => StatusCode::CONFLICT,
            Self::ValidationError => StatusCode::UNPROCESSABLE_ENTITY,
            Self::BadRequest | Self::InvalidApiVersion => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
            Self::MaintenanceMode => StatusCode::SERVICE_UNAVAILABLE,
            Self::InternalServerError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Field → messages, for `VALIDATION_ERROR`.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub status: StatusCode,
    pub message: String,
    pub details: serde_json::Value,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            status: code.status(),
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidToken, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InsufficientPermission, message)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::ResourceNotFound, format!("{what} not found"))
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::DuplicateResource, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// 422 with per-field messages.
    pub fn validation(fields: FieldErrors) -> Self {
        Self::new(ErrorCode::ValidationError, "the request has invalid fields")
            .with_details(serde_json::to_value(fields).unwrap_or_else(|_| json!({})))
    }

    /// 422 for one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut f = FieldErrors::new();
        f.insert(field.to_owned(), vec![message.into()]);
        Self::validation(f)
    }

    /// Tells the client when to try again (`Retry-After`, in seconds).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 503 `MAINTENANCE_MODE`: the client may send the same again after `retry_after` seconds.
    pub fn maintenance(message: &str, retry_after: u64) -> Self {
        Self::new(ErrorCode::MaintenanceMode, message).with_retry_after(retry_after)
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Self::new(
            ErrorCode::RateLimitExceeded,
            "rate limit exceeded for this API key",
        )
        .with_retry_after(retry_after)
    }

    /// An opaque 500: the cause goes to the log (with the request id), never to the client.
    pub fn internal(cause: impl fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(ErrorCode::InternalServerError, "internal server error")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let body = json!({
            "error": {
                "code": self.code.as_str(),
                "message": self.message,
                "details": self.details,
                "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                "request_id": request_id::current().unwrap_or_default(),
            }
        });
        let mut resp = HttpResponse::build(self.status);
        if let Some(secs) = self.retry_after {
            resp.insert_header((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        resp.content_type("application/json").body(body.to_string())
    }
}

/// A database that is gone (or read-only) is maintenance, not a bug: 503 `MAINTENANCE_MODE` with a
/// `Retry-After`, so clients retry what they sent; anything else is an opaque 500.
impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        if e.is_read_only() {
            tracing::error!(error = %e, "the database refuses writes (read-only)");
            return Self::maintenance(
                "the database is read-only: writes are refused until it is writable again",
                30,
            );
        }
        if e.is_unavailable() {
            tracing::warn!(error = %e, "the database is unavailable");
            return Self::maintenance("the database is unavailable; try again shortly", 5);
        }
        Self::internal(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_is_gone_or_read_only_is_maintenance_not_a_500() {
        for e in [
            StorageError::Pool("timed out waiting for connection".into()),
            StorageError::Other("server closed the connection unexpectedly".into()),
            StorageError::Other("attempt to write a readonly database".into()),
        ] {
            let api = ApiError::from(e);
            assert_eq!(api.code, ErrorCode::MaintenanceMode);
            assert_eq!(api.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(api.retry_after.is_some());
        }
        let readonly = ApiError::from(StorageError::Other(
            "attempt to write a readonly database".into(),
        ));
        assert!(
            readonly.message.contains("read-only"),
            "{}",
            readonly.message
        );
        let bug = ApiError::from(StorageError::Other("no such column: foo".into()));
        assert_eq!(bug.code, ErrorCode::InternalServerError);
        assert!(!bug.message.contains("foo"));
    }
}
