//! `/api/v1/webhooks`: the marketplace's event subscriptions and their delivery attempts.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{data, page};

use crate::services::Context;
use crate::services::events_log::{self, EventsError};
use crate::services::subscriptions::{self, SubscriptionError, SubscriptionInput};
use crate::web::api::guard::Caller;
use crate::web::error::{ApiError, FieldErrors};
use crate::web::extract::{ApiJson, Paging, query};
use crate::web::openapi::{InvalidFields, NoSubscription};

/// `events` may be one name or a list; everything else has one shape.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EventList {
    One(String),
    Many(Vec<String>),
}

impl EventList {
    fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionBody {
    url: Option<String>,
    events: Option<EventList>,
    secret: Option<String>,
    active: Option<bool>,
}

impl From<SubscriptionBody> for SubscriptionInput {
    fn from(b: SubscriptionBody) -> Self {
        Self {
            url: b.url,
            events: b.events.map(EventList::into_vec),
            secret: b.secret,
            active: b.active,
        }
    }
}

impl From<SubscriptionError> for ApiError {
    fn from(e: SubscriptionError) -> Self {
        match e {
            SubscriptionError::Invalid(fields) => ApiError::validation(fields as FieldErrors),
            SubscriptionError::NotFound => ApiError::not_found("webhook subscription"),
            SubscriptionError::Storage(e) => ApiError::from(e),
        }
    }
}

/// `POST /api/v1/webhooks` → 201 with the subscription (without its secret).
#[utoipa::path(
    post,
    path = "/api/v1/webhooks",
    tag = "events",
    request_body = crate::web::openapi::SubscriptionIn,
    responses(
        (status = 201, description = "Subscribed", body = crate::web::openapi::SubscriptionEnvelope),
        InvalidFields,
    )
)]
pub async fn create(
    state: web::Data<Context>,
    caller: Caller,
    body: ApiJson<SubscriptionBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let view = subscriptions::create(&state, body.0.into()).await?;
    Ok(data(StatusCode::CREATED, view))
}

/// `GET /api/v1/webhooks`
/// Event subscriptions.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks",
    tag = "events",
    params(crate::web::openapi::PageParams),
    responses((status = 200, description = "A page of subscriptions", body = crate::web::openapi::SubscriptionList))
)]
pub async fn list(state: web::Data<Context>, paging: Paging) -> Result<HttpResponse, ApiError> {
    let (items, total) = subscriptions::list(&state.db, paging.offset(), paging.per_page).await?;
    Ok(page(items, paging, total))
}

/// `GET /api/v1/webhooks/{id}`
/// One subscription (never its secret).
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}",
    tag = "events",
    params(crate::web::openapi::SubscriptionPath),
    responses(
        (status = 200, description = "The subscription", body = crate::web::openapi::SubscriptionEnvelope),
        NoSubscription,
    )
)]
pub async fn get(
    state: web::Data<Context>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let view = subscriptions::get(&state.db, &id).await?;
    Ok(data(StatusCode::OK, view))
}

/// `PATCH /api/v1/webhooks/{id}`: any of `url`, `events`, `secret`, `active`.
/// Change the URL, events, secret or `active` of a subscription.
#[utoipa::path(
    patch,
    path = "/api/v1/webhooks/{id}",
    tag = "events",
    params(crate::web::openapi::SubscriptionPath),
    request_body = crate::web::openapi::SubscriptionPatch,
    responses(
        (status = 200, description = "The subscription", body = crate::web::openapi::SubscriptionEnvelope),
        NoSubscription,
        InvalidFields,
    )
)]
pub async fn update(
    state: web::Data<Context>,
    caller: Caller,
    id: web::Path<String>,
    body: ApiJson<SubscriptionBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let view = subscriptions::update(&state, &id, body.0.into()).await?;
    Ok(data(StatusCode::OK, view))
}

/// `DELETE /api/v1/webhooks/{id}` → 204; its pending deliveries go with it.
/// Remove a subscription and its pending deliveries.
#[utoipa::path(
    delete,
    path = "/api/v1/webhooks/{id}",
    tag = "events",
    params(crate::web::openapi::SubscriptionPath),
    responses(
        (status = 204, description = "Removed"),
        NoSubscription,
    )
)]
pub async fn delete(
    state: web::Data<Context>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    subscriptions::delete(&state.db, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeliveriesQuery {
    /// pending, delivered or failed
    state: Option<String>,
}

/// `GET /api/v1/webhooks/{id}/deliveries?state=&page=&per_page=`: newest first, each with its attempts.
/// The deliveries of a subscription with every attempt.
#[utoipa::path(
    get,
    path = "/api/v1/webhooks/{id}/deliveries",
    tag = "events",
    params(
        crate::web::openapi::SubscriptionPath,
        crate::web::openapi::PageParams,
        DeliveriesQuery
    ),
    responses(
        (status = 200, description = "A page of deliveries", body = crate::web::openapi::DeliveryList),
        NoSubscription,
    )
)]
pub async fn deliveries(
    state: web::Data<Context>,
    req: HttpRequest,
    id: web::Path<String>,
    paging: Paging,
) -> Result<HttpResponse, ApiError> {
    let q: DeliveriesQuery = query(&req)?;
    let (items, total) = events_log::deliveries(
        &state.db,
        &id,
        q.state.as_deref(),
        paging.offset(),
        paging.per_page,
    )
    .await?;
    Ok(page(items, paging, total))
}

impl From<EventsError> for ApiError {
    fn from(e: EventsError) -> Self {
        match e {
            EventsError::BadParameter(m) => ApiError::bad_request(m),
            EventsError::NotFound(what) => ApiError::not_found(what),
            EventsError::Storage(e) => ApiError::from(e),
        }
    }
}
