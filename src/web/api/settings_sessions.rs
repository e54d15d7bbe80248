//! `POST /api/v1/settings-sessions`: a single-use, 30-minute link to the seller's own settings page
//! (docs/CONTRACT.md §10). Same body and checks as `POST /api/v1/connect-sessions`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use super::connect_sessions::{CreateSession, link_json};
use super::data;
use super::guard::Caller;
use crate::services::Context;
use crate::services::settings_page;
use crate::web::error::ApiError;
use crate::web::extract::ApiJson;
use crate::web::openapi::{SellerNotConnected, Unauthenticated};

/// Create a single-use link for a connected seller to change their own settings.
#[utoipa::path(
    post,
    path = "/api/v1/settings-sessions",
    tag = "connections",
    request_body = crate::web::openapi::SettingsSessionIn,
    responses(
        (status = 201, description = "The link to show the seller", body = crate::web::openapi::SettingsSessionEnvelope),
        Unauthenticated,
        SellerNotConnected,
    )
)]
pub async fn create(
    caller: Caller,
    state: web::Data<Context>,
    body: ApiJson<CreateSession>,
) -> Result<HttpResponse, ApiError> {
    caller.require_write()?;
    let body = body.0;
    let seller_id = body.seller_id()?;
    let created = settings_page::create_session(
        &state,
        &seller_id,
        body.return_url.as_deref(),
        body.lang.as_deref(),
    )
    .await?;
    Ok(data(
        StatusCode::CREATED,
        link_json(&created, "settings_url"),
    ))
}
