//! `/api/v1/events`: the event log for receivers that poll, and re-driving an event's deliveries.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::app::AppState;
use crate::services::events_log::{self, EventsQuery};
use crate::web::api::guard::Caller;
use crate::web::api::webhooks::map_events_err;
use crate::web::error::ApiError;
use crate::web::extract::query;

/// `GET /api/v1/events?after=&seller_id=&event=&limit=` → `{"data":[…],"meta":{"next_after":N}}`.
pub async fn list(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let q: EventsQuery = query(&req)?;
    let page = events_log::list(&state.db, q)
        .await
        .map_err(map_events_err)?;
    Ok(HttpResponse::Ok().json(json!({
        "data": page.data,
        "meta": { "next_after": page.next_after },
    })))
}

/// `POST /api/v1/events/{id}/redeliver` → 202 with the event's deliveries, due now.
pub async fn redeliver(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let r = events_log::redeliver(&state.db, &id)
        .await
        .map_err(map_events_err)?;
    Ok(HttpResponse::Accepted().json(json!({ "data": r })))
}
