//! Limits every request body before a handler sees it: it must arrive within `REQUEST_BODY_TIMEOUT`
//! (408 otherwise: a client trickling bytes cannot hold a connection for long) and stay under the largest
//! body any route takes (413). The body is read into memory once, which every route does anyway; the
//! routes' own, smaller limits still apply after this.

use std::pin::Pin;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::middleware::Next;
use actix_web::web::{Bytes, BytesMut, Data};
use actix_web::{HttpMessage, HttpResponse, ResponseError};
use futures_util::StreamExt;

use super::error::{ApiError, ErrorCode};
use super::extract;
use crate::services::Context;

enum Refused {
    TooLarge,
    Broken,
}

pub async fn middleware(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(state) = req.app_data::<Data<Context>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let cap = state.settings.webhook_max_body.max(extract::JSON_LIMIT);
    let mut payload = req.take_payload();
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| Refused::Broken)?;
            if body.len() + chunk.len() > cap {
                return Err(Refused::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    let refusal = match tokio::time::timeout(state.settings.request_body_timeout, read).await {
        Ok(Ok(body)) => {
            req.set_payload(replay(body));
            return next
                .call(req)
                .await
                .map(ServiceResponse::map_into_left_body);
        }
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} s",
                state.settings.request_body_timeout.as_secs_f64()
            ),
        ),
        Ok(Err(Refused::TooLarge)) => extract::too_large(),
        Ok(Err(Refused::Broken)) => ApiError::bad_request("could not read the request body"),
    };
    let mut resp: HttpResponse = if machine_route(req.path()) {
        refusal.error_response()
    } else {
        HttpResponse::build(refusal.status)
            .content_type("text/plain; charset=utf-8")
            .body(refusal.message.clone())
    };
    // The rest of a refused body is not read: the connection cannot be reused.
    resp.head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    Ok(req.into_response(resp).map_into_right_body())
}

/// Routes that answer machines in the contract's JSON; the rest are pages for people.
fn machine_route(path: &str) -> bool {
    path.starts_with("/api/")
        || path.starts_with("/webhooks/")
        || matches!(path, "/refresh" | "/health" | "/metrics")
}

/// 413 for a page's form.
pub fn plain_too_large() -> HttpResponse {
    HttpResponse::PayloadTooLarge()
        .content_type("text/plain; charset=utf-8")
        .body("The form sent is too large.")
}

/// The body read, handed on as the request's payload.
fn replay(body: Bytes) -> Payload {
    let stream: Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, PayloadError>>>> =
        Box::pin(futures_util::stream::once(async move { Ok(body) }));
    Payload::from(stream)
}
