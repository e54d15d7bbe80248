//! A request id per request: generated here, put in the span, the `X-Request-Id` header and error bodies.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

use crate::domain::ids::random_token;

tokio::task_local! {
    static REQUEST_ID: String;
}

pub const HEADER: &str = "x-request-id";

/// The id of the request being served on this task, if any.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Middleware: one span per request carrying the id; the id is echoed as `X-Request-Id`.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = format!("req_{}", random_token(20));
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %req.method(),
        // The matched pattern, not the path: paths carry session and webhook tokens.
        route = %req.match_pattern().unwrap_or_else(|| "unmatched".to_owned()),
        status = tracing::field::Empty,
    );
    let started = std::time::Instant::now();
    let fut = REQUEST_ID.sync_scope(id.clone(), || next.call(req));
    let res = REQUEST_ID
        .scope(id.clone(), fut)
        .instrument(span.clone())
        .await;
    let mut res = match res {
        Ok(r) => r,
        Err(e) => {
            // Errors from inner services become responses here, still inside the id's scope.
            let resp = REQUEST_ID.sync_scope(id.clone(), || e.error_response());
            return Err(actix_web::error::InternalError::from_response(e, resp).into());
        }
    };
    let status = res.status().as_u16();
    span.record("status", status);
    let _enter = span.enter();
    tracing::info!(
        status,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(HeaderName::from_static(HEADER), v);
    }
    Ok(res)
}
