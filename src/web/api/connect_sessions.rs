//! `POST /api/v1/connect-sessions`: a single-use, 30-minute link to the seller's "Connect amoCRM" page.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::SecondsFormat;
use serde::Deserialize;
use serde_json::{Value, json};

use super::data;
use super::guard::Caller;
use crate::services::Context;
use crate::services::connect::{self, ConnectError, CreatedLink};
use crate::web::error::{ApiError, FieldErrors};
use crate::web::extract::ApiJson;
use crate::web::openapi::{InvalidFields, Unauthenticated};

#[derive(Debug, Deserialize)]
pub struct CreateSession {
    /// A string, or a number as some marketplace ids are (taken as its decimal form).
    seller_id: Option<Value>,
    pub return_url: Option<String>,
    pub lang: Option<String>,
    /// `amocrm` or `kommo` (connect links only).
    platform: Option<String>,
}

impl CreateSession {
    /// The seller id as text; the settings link takes the same body.
    pub fn seller_id(&self) -> Result<String, ApiError> {
        match &self.seller_id {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(n @ Value::Number(_)) => crate::domain::whole_number(n)
                .map(|n| n.to_string())
                .ok_or_else(|| ApiError::field("seller_id", "must be a string or a whole number")),
            Some(_) => Err(ApiError::field("seller_id", "must be a string")),
            None => Err(ApiError::field("seller_id", "is required")),
        }
    }
}

/// The contract's errors for the connect use cases.
impl From<ConnectError> for ApiError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Invalid(problems) => {
                let mut fields = FieldErrors::new();
                for p in problems {
                    fields
                        .entry(p.field.to_owned())
                        .or_default()
                        .push(p.message);
                }
                ApiError::validation(fields)
            }
            ConnectError::NotFound => ApiError::not_found("connection"),
            ConnectError::Unavailable(reason) => ApiError::new(
                crate::web::error::ErrorCode::MaintenanceMode,
                format!("amoCRM could not be reached: {reason}"),
            ),
            ConnectError::Storage(e) => ApiError::from(e),
        }
    }
}

/// Create a single-use link for a seller to connect their amoCRM account.
#[utoipa::path(
    post,
    path = "/api/v1/connect-sessions",
    tag = "connections",
    request_body = crate::web::openapi::ConnectSessionIn,
    responses(
        (status = 201, description = "The link to show the seller", body = crate::web::openapi::ConnectSessionEnvelope),
        Unauthenticated,
        InvalidFields,
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
    let created = connect::create_session(
        &state,
        &seller_id,
        body.return_url.as_deref(),
        body.lang.as_deref(),
        body.platform.as_deref(),
    )
    .await?;
    let mut link = link_json(&created.link, "connect_url");
    link["platform"] = json!(created.platform);
    Ok(data(StatusCode::CREATED, link))
}

/// A new link as both link endpoints answer it, its URL under `url_key`.
pub fn link_json(link: &CreatedLink, url_key: &str) -> Value {
    json!({
        "token": link.token,
        url_key: link.url,
        "expires_at": link.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "seller_id": link.seller_id,
    })
}
