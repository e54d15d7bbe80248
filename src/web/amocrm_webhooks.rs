//! `POST /webhooks/amocrm/{webhook_token}`: amoCRM's form-encoded webhooks, stored before they are answered.
//!
//! The answer comes as soon as the raw body is committed (amoCRM allows 2 s); processing happens later in
//! the webhook processor. Errors use the API's error body: 404 unknown token, 403 another account,
//! 400 not a webhook, 413 too large, 410 revoked connection.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::services::Context;
use crate::services::ingest::IngestError;
use crate::web::error::{ApiError, ErrorCode};

fn too_large(limit: usize) -> ApiError {
    ApiError::bad_request(format!("webhook body is larger than {} KiB", limit / 1024))
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// Reads the body up to `limit` bytes; a declared or actual larger body is refused without buffering it.
async fn read_limited(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<web::Bytes, ApiError> {
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large(limit));
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err(ApiError::bad_request("could not read the request body")),
        Err(_) => Err(too_large(limit)),
    }
}

pub async fn receive(
    state: web::Data<Context>,
    req: HttpRequest,
    token: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let limit = state.settings.webhook_max_body;
    let body = read_limited(&req, payload, limit).await.inspect_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            crate::metrics::webhook_outcome("too_large");
        }
    })?;
    match state.intake.accept(&token, &body, limit).await {
        Ok(accepted) => {
            crate::metrics::webhook_received();
            tracing::info!(
                seller_id = %accepted.seller_id,
                lead_events = accepted.lead_events,
                "amoCRM webhook stored"
            );
            Ok(HttpResponse::Ok()
                .content_type("application/json")
                .body(r#"{"data":{"status":"accepted"}}"#))
        }
        Err(e) => Err(map_err(e)),
    }
}

fn map_err(e: IngestError) -> ApiError {
    crate::metrics::webhook_outcome(match &e {
        IngestError::UnknownToken | IngestError::Revoked => "unknown_token",
        IngestError::Malformed(_) => "malformed",
        IngestError::TooLarge { .. } => "too_large",
        IngestError::AccountMismatch => "account_mismatch",
        IngestError::Storage(_) => "error",
    });
    match e {
        IngestError::UnknownToken => ApiError::not_found("webhook destination"),
        IngestError::Revoked => ApiError::new(
            ErrorCode::ResourceNotFound,
            "this amoCRM connection was revoked",
        )
        .with_status(StatusCode::GONE),
        IngestError::Malformed(m) => ApiError::bad_request(m),
        IngestError::TooLarge { limit } => too_large(limit),
        IngestError::AccountMismatch => {
            tracing::warn!("amoCRM webhook for another account refused");
            ApiError::forbidden("the body names another amoCRM account than this destination's")
        }
        IngestError::Storage(e) => ApiError::from(e),
    }
}
