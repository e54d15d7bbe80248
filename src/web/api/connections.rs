//! `/api/v1/connections`: the sellers' amoCRM connections (never a token), revoking one, refreshing one now,
//! and the status mapping of its pipeline.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{NaiveDateTime, SecondsFormat};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::IntoParams;

use super::guard::Caller;
use super::{data, page};
use crate::domain::status::{ConnectionStatus, HealthState};
use crate::services::Context;
use crate::services::connect;
use crate::services::refresh::{self, Need, RefreshError};
use crate::services::suspension;
use crate::storage::connections::Connection;
use crate::storage::from_db;
use crate::storage::health::Health;
use crate::web::error::{ApiError, FieldErrors};
use crate::web::extract::{self, ApiJson, Paging};
use crate::web::openapi::{NeverConnected, NoConnection, Unauthenticated};

fn ts(t: Option<NaiveDateTime>) -> Value {
    t.map(|t| json!(from_db(t).to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or(Value::Null)
}

/// The API view of a connection: everything but the tokens, with its health when known.
pub fn view(c: &Connection, health: Option<&Health>) -> Value {
    json!({
        "seller_id": c.seller_id,
        "platform": c.platform,
        "status": c.status,
        "suspended_reason": c.suspended_reason,
        "suspended_at": ts(c.suspended_at),
        "account_id": c.account_id,
        "subdomain": c.subdomain,
        "host": c.host,
        "token_expires_at": ts(c.token_expires_at),
        "last_refreshed_at": ts(c.last_refreshed_at),
        "refresh_failures": c.refresh_failures,
        "last_error": c.last_error,
        "pipeline_id": c.pipeline_id,
        "connected_at": ts(Some(c.connected_at)),
        "revoked_at": ts(c.revoked_at),
        "revoke_reason": c.revoke_reason,
        "provisioning": {
            "state": c.provisioning_state,
            "missing": c.missing_provisioning(),
            "error": c.provisioning_error,
            "attempts": c.provisioning_attempts,
            "next_attempt_at": ts(c.next_provision_at),
        },
        "health": health_view(c, health),
    })
}

/// How the connection's calls go: the state (the connection's own status decides while it is not active),
/// the last success, the last failure and its class.
fn health_view(c: &Connection, h: Option<&Health>) -> Value {
    json!({
        "state": HealthState::of(c.status, h.map(|h| h.state)),
        "last_success_at": ts(h.and_then(|h| h.last_success_at)),
        "last_failure_at": ts(h.and_then(|h| h.last_failure_at)),
        "last_failure_class": h.and_then(|h| h.last_failure_class.clone()),
        "last_failure": h.and_then(|h| h.last_failure.clone()),
    })
}

fn pipeline_view(c: &Connection) -> Value {
    let s = c.stages();
    json!({
        "pipeline_id": c.pipeline_id,
        "statuses": {
            "pending": s[0],
            "awaiting_payment": s[1],
            "paid": s[2],
            "shipping": s[3],
            "completed": s[4],
            "cancelled": s[5],
        }
    })
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// active, suspended, refresh_failed or revoked
    status: Option<String>,
}

/// List connections, optionally by status.
#[utoipa::path(
    get,
    path = "/api/v1/connections",
    tag = "connections",
    params(ListQuery, crate::web::openapi::PageParams),
    responses(
        (status = 200, description = "A page of connections", body = crate::web::openapi::ConnectionList),
        Unauthenticated,
    )
)]
pub async fn list(
    req: HttpRequest,
    state: web::Data<Context>,
    paging: Paging,
) -> Result<HttpResponse, ApiError> {
    let q: ListQuery = extract::query(&req)?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(ConnectionStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(format!(
                "status must be one of {}",
                ConnectionStatus::NAMES.join(", ")
            ))
        })?),
    };
    let (rows, total) =
        connect::list_with_health(&state, status, paging.offset(), paging.per_page).await?;
    let items: Vec<Value> = rows.iter().map(|(c, h)| view(c, h.as_ref())).collect();
    Ok(page(items, paging, total))
}

/// One seller's connection.
#[utoipa::path(
    get,
    path = "/api/v1/connections/{seller_id}",
    tag = "connections",
    params(crate::web::openapi::SellerPath),
    responses(
        (status = 200, description = "The connection", body = crate::web::openapi::ConnectionEnvelope),
        NeverConnected,
    )
)]
pub async fn get(
    path: web::Path<String>,
    state: web::Data<Context>,
) -> Result<HttpResponse, ApiError> {
    let (c, h) = connect::get_with_health(&state, &path).await?;
    Ok(data(StatusCode::OK, view(&c, h.as_ref())))
}

/// Disconnect a seller: unsubscribes its amoCRM webhooks, wipes its tokens, emits `connection.revoked`.
#[utoipa::path(
    delete,
    path = "/api/v1/connections/{seller_id}",
    tag = "connections",
    params(crate::web::openapi::SellerPath),
    responses(
        (status = 204, description = "Revoked"),
        NoConnection,
    )
)]
pub async fn delete(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<Context>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    connect::revoke(&state, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/v1/connections/{seller_id}/refresh`: refreshes now (single-flight with every other trigger),
/// then answers with the connection; a failure is visible in its `status`, `refresh_failures`, `last_error`.
/// A suspended connection is probed at once instead: `active` again if amoCRM answers.
#[utoipa::path(
    post,
    path = "/api/v1/connections/{seller_id}/refresh",
    tag = "connections",
    params(crate::web::openapi::SellerPath),
    responses(
        (status = 200, description = "The connection after the refresh", body = crate::web::openapi::ConnectionEnvelope),
        NoConnection,
        (status = 422, description = "The connection must be reconnected", body = crate::web::openapi::ErrorBody),
    )
)]
pub async fn refresh_now(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<Context>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let current = connect::get_connection(&state, &path).await?;
    if current.status == ConnectionStatus::Suspended {
        suspension::probe(&state, &path, true).await?;
        return get(path, state).await;
    }
    let need = Need::Stale {
        version: current.token_version,
    };
    match refresh::refresh(&state, &path, need).await {
        Ok(_)
        | Err(RefreshError::Rejected(_) | RefreshError::Transient(_) | RefreshError::Busy(_)) => {}
        Err(RefreshError::NotConnected) => return Err(ApiError::not_found("connection")),
        Err(RefreshError::NeedsReconnect(s)) => {
            return Err(ApiError::field(
                "status",
                format!(
                    "the connection is {}: the seller must reconnect",
                    s.as_str()
                ),
            ));
        }
        Err(RefreshError::Corrupt(e)) => return Err(ApiError::internal(e)),
        Err(RefreshError::Storage(e)) => return Err(ApiError::from(e)),
    }
    get(path, state).await
}

/// The seller's pipeline and the amoCRM status for each order status.
#[utoipa::path(
    get,
    path = "/api/v1/connections/{seller_id}/pipeline",
    tag = "connections",
    params(crate::web::openapi::SellerPath),
    responses(
        (status = 200, description = "The mapping", body = crate::web::openapi::PipelineEnvelope),
        NoConnection,
    )
)]
pub async fn get_pipeline(
    path: web::Path<String>,
    state: web::Data<Context>,
) -> Result<HttpResponse, ApiError> {
    let c = connect::get_connection(&state, &path).await?;
    Ok(data(StatusCode::OK, pipeline_view(&c)))
}

#[derive(Debug, Deserialize)]
pub struct PipelineBody {
    pipeline_id: Option<Value>,
    statuses: Option<serde_json::Map<String, Value>>,
}

fn positive_id(v: Option<&Value>) -> Option<i64> {
    v.and_then(crate::domain::whole_number).filter(|id| *id > 0)
}

/// Replace the pipeline and status mapping.
#[utoipa::path(
    put,
    path = "/api/v1/connections/{seller_id}/pipeline",
    tag = "connections",
    params(crate::web::openapi::SellerPath),
    request_body = crate::web::openapi::PipelineMapping,
    responses(
        (status = 200, description = "The new mapping", body = crate::web::openapi::PipelineEnvelope),
        NoConnection,
        (status = 422, description = "Invalid ids", body = crate::web::openapi::ErrorBody),
    )
)]
pub async fn put_pipeline(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<Context>,
    body: ApiJson<PipelineBody>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let body = body.0;
    let mut fields = FieldErrors::new();
    let pipeline_id = positive_id(body.pipeline_id.as_ref());
    if pipeline_id.is_none() {
        fields.insert(
            "pipeline_id".into(),
            vec!["is required: a positive amoCRM pipeline id".into()],
        );
    }
    let statuses = body.statuses.unwrap_or_default();
    let mut stages = [0i64; 6];
    for (i, status) in crate::domain::status::OrderStatus::ALL.iter().enumerate() {
        match positive_id(statuses.get(status.as_str())) {
            Some(id) => stages[i] = id,
            None => {
                fields.insert(
                    connect::status_field(*status).into(),
                    vec!["is required: a positive amoCRM status id".into()],
                );
            }
        }
    }
    for key in statuses.keys() {
        if crate::domain::status::OrderStatus::parse(key).is_none() {
            fields.insert(
                format!("statuses.{key}"),
                vec!["is not an order status".into()],
            );
        }
    }
    let Some(pipeline_id) = pipeline_id.filter(|_| fields.is_empty()) else {
        return Err(ApiError::validation(fields));
    };
    let c = connect::set_pipeline(&state, &path, pipeline_id, stages).await?;
    Ok(data(StatusCode::OK, pipeline_view(&c)))
}
