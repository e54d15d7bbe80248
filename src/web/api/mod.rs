//! `/api/v1`: the marketplace backend's API. The guard here authenticates, checks the version header and
//! counts the key's hourly budget before any handler runs.

pub mod connect_sessions;
pub mod connections;
pub mod events;
pub mod guard;
pub mod orders;
pub mod settings;
pub mod settings_sessions;
pub mod webhooks;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde::Serialize;
use serde_json::json;

use crate::web::extract::Paging;

/// `{"data": …}` with `status`: the contract's envelope of one resource.
pub fn data(status: StatusCode, value: impl Serialize) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "data": value }))
}

/// `{"data": […], "meta": {page, per_page, total}}`: one page of a list.
pub fn page(items: impl Serialize, paging: Paging, total: i64) -> HttpResponse {
    HttpResponse::Ok().json(json!({ "data": items, "meta": paging.meta(total) }))
}
