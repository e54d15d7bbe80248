//! Refuses requests no client has a reason to send before any route sees them: a NUL character
//! (`%00`) in the path or query. PostgreSQL cannot store NUL in text, so letting one through to a
//! lookup turned a junk request into a 500.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError};

use super::error::ApiError;

/// Whether a raw (still percent-encoded) path or query carries a NUL character.
pub fn has_nul(raw: &str) -> bool {
    raw.contains('\0')
        || raw
            .as_bytes()
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0')
}

/// Middleware: 400 for a NUL in the path or query, in the contract's body on `/api`, a short text elsewhere.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let uri = req.uri();
    if has_nul(uri.path()) || uri.query().is_some_and(has_nul) {
        let resp = if req.path().starts_with("/api/") || req.path() == "/api" {
            ApiError::bad_request("the path or query contains a NUL character").error_response()
        } else {
            HttpResponse::BadRequest()
                .content_type("text/plain; charset=utf-8")
                .body("Bad request")
        };
        return Ok(req.into_response(resp));
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}
