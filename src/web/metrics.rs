//! `GET /metrics` (Prometheus text format, optionally behind a bearer token) and the middleware that
//! counts every HTTP request by route pattern and status.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::ExposeSecret;

use crate::domain::ids::constant_time_eq;
use crate::metrics;
use crate::services::Context;

/// Middleware: one count and one latency observation per answered request, labelled with the matched
/// route pattern (`/webhooks/amocrm/{webhook_token}`), never the raw path.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = route_label(req.request());
    let res = next.call(req).await;
    let status = match &res {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    metrics::http_request(&method, &route, status, started.elapsed());
    res
}

fn route_label(req: &HttpRequest) -> String {
    req.match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned())
}

/// `GET /metrics`. With `METRICS_TOKEN` set, only `Authorization: Bearer <token>` gets in (compared in
/// constant time); a wrong or missing token is 401 and reveals nothing.
pub async fn metrics(req: HttpRequest, state: web::Data<Context>) -> HttpResponse {
    if let Some(expected) = &state.settings.metrics_token {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .unwrap_or_default();
        if !constant_time_eq(expected.expose_secret().as_bytes(), presented.as_bytes()) {
            return HttpResponse::Unauthorized()
                .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\""))
                .content_type("text/plain; charset=utf-8")
                .body("metrics need a valid bearer token\n");
        }
    }
    match metrics::scrape(&state.db, &state.settings.instance_id).await {
        Ok(text) => HttpResponse::Ok()
            .content_type(metrics::CONTENT_TYPE)
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .body(text),
        Err(e) => {
            tracing::warn!(error = %e, "metrics scrape failed");
            HttpResponse::ServiceUnavailable()
                .content_type("text/plain; charset=utf-8")
                .body("metrics unavailable: database unreachable\n")
        }
    }
}
