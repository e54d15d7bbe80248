//! `GET`/`POST /refresh`: the external cron's trigger of one refresh sweep, behind a shared secret.
//!
//! The secret may come as `?secret_key=`, `X-Refresh-Secret` or `Authorization: Bearer`; it is compared in
//! constant time. No secret configured: 404 (the route does not exist). Wrong or missing: 401, nothing done.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ErrorCode};
use crate::services::Context;
use crate::services::refresh::{self, SweepOutcome};

#[derive(Deserialize, Default)]
struct SecretQuery {
    secret_key: Option<String>,
}

/// The secret the caller presented: the query, then `X-Refresh-Secret`, then a Bearer token.
fn presented(req: &HttpRequest) -> Option<String> {
    let q: SecretQuery = serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    if let Some(s) = q.secret_key.filter(|s| !s.is_empty()) {
        return Some(s);
    }
    if let Some(s) = req
        .headers()
        .get("x-refresh-secret")
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
    {
        return Some(s.trim().to_owned());
    }
    let auth = req.headers().get("authorization")?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

pub async fn refresh(
    req: HttpRequest,
    state: web::Data<Context>,
) -> Result<HttpResponse, ApiError> {
    let secret = presented(&req).unwrap_or_default();
    match state.settings.refresh_secret_matches(&secret) {
        None => return Err(ApiError::not_found("route")),
        Some(false) => {
            tracing::warn!("refresh trigger with a wrong or missing secret");
            return Err(ApiError::unauthorized("missing or wrong refresh secret"));
        }
        Some(true) => {}
    }
    match refresh::sweep(&state, refresh::JOIN_WAIT).await? {
        SweepOutcome::Ran(r) | SweepOutcome::Joined(r) => Ok(HttpResponse::Ok().json(json!({
            "data": {"due": r.due, "refreshed": r.refreshed, "failed": r.failed, "skipped": r.skipped}
        }))),
        SweepOutcome::AlreadyRunning => Err(ApiError::new(
            ErrorCode::DuplicateResource,
            "a refresh sweep is already running; try again later",
        )),
    }
}
