//! `/api/v1/sales/orders`: accept orders (202), read them with their sync state, change their status (the
//! lead is moved), and retry failed ones (`POST /api/v1/sales/orders/{id}/retry`).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::guard::Caller;
use super::{data, page};
use crate::services::Context;
use crate::services::orders::{self, Accepted, OrderError};
use crate::web::error::ApiError;
use crate::web::extract::{ApiJson, Paging, query};
use crate::web::openapi::{MalformedParameters, NoOrder, SellerNotConnected};

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Validation(fields) => ApiError::validation(fields),
            OrderError::Conflict(number) => ApiError::conflict(format!(
                "order {number} already exists for this seller with a different body"
            )),
            OrderError::NotFound => ApiError::not_found("order"),
            OrderError::NotRetryable(msg) => {
                let mut f = crate::web::error::FieldErrors::new();
                f.insert("sync.state".to_owned(), vec![msg]);
                ApiError::validation(f)
            }
            OrderError::Storage(e) => ApiError::from(e),
        }
    }
}

/// `POST /api/v1/sales/orders`: 202 with the queued (or held) order; 200 with the existing one on a repeat.
#[utoipa::path(
    post,
    path = "/api/v1/sales/orders",
    tag = "orders",
    request_body = crate::web::openapi::OrderIn,
    responses(
        (status = 202, description = "Stored and queued (or held until the seller reconnects)", body = crate::web::openapi::OrderEnvelope),
        (status = 200, description = "The same order was posted before: the existing one", body = crate::web::openapi::OrderEnvelope),
        (status = 409, description = "This order number exists with a different body", body = crate::web::openapi::ErrorBody),
        SellerNotConnected,
    )
)]
pub async fn create(
    state: web::Data<Context>,
    caller: Caller,
    body: ApiJson<Value>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    match orders::create(&state, &body.0).await? {
        Accepted::Created(v) => Ok(data(StatusCode::ACCEPTED, v)),
        Accepted::Existing(v) => Ok(data(StatusCode::OK, v)),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this seller's orders
    seller_id: Option<String>,
    /// Marketplace status
    status: Option<String>,
    /// queued, synced, held or failed
    sync_state: Option<String>,
}

/// `GET /api/v1/sales/orders?seller_id=&status=&sync_state=&page=&per_page=`.
#[utoipa::path(
    get,
    path = "/api/v1/sales/orders",
    tag = "orders",
    params(ListQuery, crate::web::openapi::PageParams),
    responses(
        (status = 200, description = "A page of orders", body = crate::web::openapi::OrderList),
        MalformedParameters,
    )
)]
pub async fn list(
    state: web::Data<Context>,
    req: HttpRequest,
    paging: Paging,
) -> Result<HttpResponse, ApiError> {
    let q: ListQuery = query(&req)?;
    let filter = orders::parse_filter(
        q.seller_id.as_deref(),
        q.status.as_deref(),
        q.sync_state.as_deref(),
    )
    .map_err(|e| match e {
        OrderError::Validation(f) => {
            let fields: Vec<String> = f.keys().cloned().collect();
            ApiError::bad_request(format!("invalid query parameter: {}", fields.join(", ")))
                .with_details(serde_json::to_value(&f).unwrap_or_else(|_| json!({})))
        }
        other => other.into(),
    })?;
    let (rows, total) = orders::list(&state.db, filter, paging.offset(), paging.per_page).await?;
    Ok(page(rows, paging, total))
}

/// `GET /api/v1/sales/orders/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/sales/orders/{id}",
    tag = "orders",
    params(crate::web::openapi::OrderPath),
    responses(
        (status = 200, description = "The order with its sync state", body = crate::web::openapi::OrderEnvelope),
        NoOrder,
    )
)]
pub async fn get(
    state: web::Data<Context>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let v = orders::get(&state.db, &path).await?;
    Ok(data(StatusCode::OK, v))
}

/// `PATCH /api/v1/sales/orders/{id}` `{status}`: 202; the lead is moved to the mapped stage.
#[utoipa::path(
    patch,
    path = "/api/v1/sales/orders/{id}",
    tag = "orders",
    params(crate::web::openapi::OrderPath),
    request_body = crate::web::openapi::OrderStatusIn,
    responses(
        (status = 202, description = "The move is queued", body = crate::web::openapi::OrderEnvelope),
        NoOrder,
        (status = 422, description = "Invalid status", body = crate::web::openapi::ErrorBody),
    )
)]
pub async fn patch(
    state: web::Data<Context>,
    caller: Caller,
    path: web::Path<String>,
    body: ApiJson<Value>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let v = orders::change_status(&state.db, &path, &body.0).await?;
    Ok(data(StatusCode::ACCEPTED, v))
}

/// `POST /api/v1/sales/orders/{id}/retry`: 202 with the order queued again (failed, or held after a
/// reconnect); 422 for an order that is already synced.
#[utoipa::path(
    post,
    path = "/api/v1/sales/orders/{id}/retry",
    tag = "orders",
    params(crate::web::openapi::OrderPath),
    responses(
        (status = 202, description = "Queued again", body = crate::web::openapi::OrderEnvelope),
        NoOrder,
        (status = 422, description = "The order is not failed or held", body = crate::web::openapi::ErrorBody),
    )
)]
pub async fn retry(
    state: web::Data<Context>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let v = orders::retry(&state.db, &path).await?;
    Ok(data(StatusCode::ACCEPTED, v))
}

/// The routes of this file, mounted under `/api/v1`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/sales/orders").post(create).get(list))
        .service(web::resource("/sales/orders/{id}").get(get).patch(patch))
        .service(web::resource("/sales/orders/{id}/retry").post(retry));
}
