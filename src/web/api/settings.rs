//! `/api/v1/connections/{seller_id}/settings`: how a seller's orders become deals (docs/CONTRACT.md §10).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::Value;

use super::data;
use super::guard::Caller;
use crate::services::Context;
use crate::services::settings::{self, SettingsError};
use crate::web::error::{ApiError, ErrorCode};
use crate::web::extract::ApiJson;
use crate::web::openapi::{NeverConnected, Unauthenticated};

impl From<SettingsError> for ApiError {
    fn from(e: SettingsError) -> Self {
        match e {
            SettingsError::NotFound => ApiError::not_found("connection"),
            SettingsError::Invalid(fields) => ApiError::validation(fields),
            SettingsError::Unavailable(reason) => ApiError::new(
                ErrorCode::MaintenanceMode,
                format!("the seller's amoCRM could not be read: {reason}"),
            ),
            SettingsError::Storage(e) => ApiError::from(e),
        }
    }
}

/// The seller's settings.
#[utoipa::path(
    get,
    path = "/api/v1/connections/{seller_id}/settings",
    tag = "connections",
    params(crate::web::openapi::SellerPath),
    responses(
        (status = 200, description = "The settings", body = crate::web::openapi::SettingsEnvelope),
        Unauthenticated,
        NeverConnected,
    )
)]
pub async fn get(
    path: web::Path<String>,
    state: web::Data<Context>,
) -> Result<HttpResponse, ApiError> {
    let view = settings::get(&state, &path).await?;
    Ok(data(StatusCode::OK, view.to_json()))
}

/// Change any part of the seller's settings; every amoCRM id is checked against the seller's account.
#[utoipa::path(
    put,
    path = "/api/v1/connections/{seller_id}/settings",
    tag = "connections",
    params(crate::web::openapi::SellerPath),
    request_body = crate::web::openapi::Settings,
    responses(
        (status = 200, description = "The settings as stored", body = crate::web::openapi::SettingsEnvelope),
        (status = 400, description = "Malformed JSON", body = crate::web::openapi::ErrorBody),
        Unauthenticated,
        NeverConnected,
        (status = 422, description = "Unknown keys, bad values, or ids the account does not have", body = crate::web::openapi::ErrorBody),
        (status = 503, description = "The seller's amoCRM could not be read", body = crate::web::openapi::ErrorBody),
    )
)]
pub async fn put(
    caller: Caller,
    path: web::Path<String>,
    state: web::Data<Context>,
    body: ApiJson<Value>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let view = settings::put(&state, &path, &body.0).await?;
    Ok(data(StatusCode::OK, view.to_json()))
}
