//! `/api/v1/events`: the event log for receivers that poll, and re-driving an event's deliveries.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::services::Context;
use crate::services::events_log::{self, EventsQuery};
use crate::web::api::guard::Caller;
use crate::web::error::ApiError;
use crate::web::extract::query;
use crate::web::openapi::MalformedParameters;

/// `GET /api/v1/events?after=&seller_id=&event=&limit=` → `{"data":[…],"meta":{"next_after":N}}`.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(
        ("after" = Option<i64>, Query, description = "Cursor: `meta.next_after` of the previous page"),
        ("seller_id" = Option<String>, Query, description = "Only this seller's events"),
        ("event" = Option<String>, Query, description = "Only this event name"),
        ("limit" = Option<i64>, Query, description = "Page size"),
    ),
    responses(
        (status = 200, description = "Events in order", body = crate::web::openapi::EventList),
        MalformedParameters,
    )
)]
pub async fn list(state: web::Data<Context>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let q: EventsQuery = query(&req)?;
    let page = events_log::list(&state.db, q).await?;
    Ok(HttpResponse::Ok().json(json!({
        "data": page.data,
        "meta": { "next_after": page.next_after },
    })))
}

/// `POST /api/v1/events/{id}/redeliver[?subscription_id=]` → 202 with the event's deliveries, due now.
#[utoipa::path(
    post,
    path = "/api/v1/events/{id}/redeliver",
    tag = "events",
    params(
        ("id" = String, Path, description = "The event id (`evt_…`)"),
        ("subscription_id" = Option<String>, Query, description = "Send again to this subscription only, even if it already received the event. Without it, only failed deliveries are sent again."),
    ),
    responses(
        (status = 202, description = "The event's deliveries, due now", body = crate::web::openapi::RedeliveryEnvelope),
        (status = 404, description = "No such event, or no delivery of it to that subscription", body = crate::web::openapi::ErrorBody),
    )
)]
pub async fn redeliver(
    state: web::Data<Context>,
    caller: Caller,
    id: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let q: RedeliverQuery = query(&req)?;
    let r = events_log::redeliver(&state.db, &id, q.subscription_id.as_deref()).await?;
    Ok(super::data(actix_web::http::StatusCode::ACCEPTED, r))
}

#[derive(serde::Deserialize, Default)]
struct RedeliverQuery {
    subscription_id: Option<String>,
}
