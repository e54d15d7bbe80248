//! `POST /api/auth/login` and `POST /api/auth/refresh`: operator sign-in in the shapes of the marketplace
//! platform's own auth (not wrapped in `data`).

use std::net::IpAddr;

use actix_web::{HttpRequest, HttpResponse, web};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::services::Context;
use crate::services::operators::{self, AccessGrant, AuthError};
use crate::web::error::{ApiError, ErrorCode, FieldErrors};
use crate::web::extract::ApiJson;

#[derive(Deserialize, ToSchema)]
pub struct LoginBody {
    // Optional so a missing field is reported under its own name.
    #[schema(required, example = "ops@example.com", min_length = 1)]
    email: Option<String>,
    #[schema(value_type = String, required, min_length = 1)]
    password: Option<SecretString>,
}

#[derive(Deserialize, ToSchema)]
pub struct RefreshBody {
    #[schema(value_type = String, required, min_length = 1)]
    refresh_token: Option<SecretString>,
}

/// The signed-in operator, as the login answer shows it.
#[derive(ToSchema)]
#[expect(dead_code, reason = "read only by the document generator")]
pub struct LoginUser {
    id: i64,
    name: String,
    /// `admin` or `viewer`.
    role: String,
}

/// `POST /api/auth/login` answer (not wrapped in `data`, like the platform's own auth).
#[derive(ToSchema)]
#[expect(dead_code, reason = "read only by the document generator")]
pub struct LoginResponse {
    access_token: String,
    #[schema(example = "Bearer")]
    token_type: String,
    #[schema(example = 3600)]
    expires_in: u64,
    refresh_token: String,
    user: LoginUser,
}

/// `POST /api/auth/refresh` answer.
#[derive(ToSchema)]
#[expect(dead_code, reason = "read only by the document generator")]
pub struct RefreshResponse {
    access_token: String,
    /// Use this one next time: the refresh token just presented is used up.
    refresh_token: String,
    #[schema(example = "Bearer")]
    token_type: String,
    #[schema(example = 3600)]
    expires_in: u64,
}

/// The client's address for throttling: the socket peer, or the proxy's forwarded address when the
/// deployment says the proxy is trusted.
pub fn client_ip(req: &HttpRequest, state: &Context) -> Option<IpAddr> {
    if state.settings.trust_forwarded_for
        && let Some(ip) = req
            .connection_info()
            .realip_remote_addr()
            .and_then(parse_ip)
    {
        return Some(ip);
    }
    req.peer_addr().map(|a| a.ip())
}

fn parse_ip(raw: &str) -> Option<IpAddr> {
    raw.parse::<IpAddr>()
        .ok()
        .or_else(|| raw.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::InvalidCredentials | AuthError::InvalidRefreshToken => {
                ApiError::unauthorized(e.to_string())
            }
            AuthError::Throttled { retry_after } => ApiError::new(
                ErrorCode::RateLimitExceeded,
                "too many failed logins; try again later",
            )
            .with_details(json!({"retry_after": retry_after}))
            .with_retry_after(retry_after),
            AuthError::Storage(e) => ApiError::from(e),
        }
    }
}

/// Sign in as an operator.
///
/// Returns an access token (accepted on `/api/v1` like an API key; viewers may only read) and a refresh
/// token. Repeated failures for one e-mail or from one address are locked out for a growing time (429).
#[utoipa::path(
    post,
    path = "/api/auth/login",
    tag = "auth",
    request_body = LoginBody,
    security(()),
    responses(
        (status = 200, description = "Signed in", body = LoginResponse),
        (status = 401, description = "Wrong e-mail or password", body = crate::web::openapi::ErrorBody),
        (status = 422, description = "Missing e-mail or password", body = crate::web::openapi::ErrorBody),
        (status = 429, description = "Too many failed logins; see Retry-After", body = crate::web::openapi::ErrorBody),
    )
)]
pub async fn login(
    req: HttpRequest,
    state: web::Data<Context>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let email = body.email.unwrap_or_default();
    let password = body.password.unwrap_or_else(|| SecretString::from(""));
    let mut fields = FieldErrors::new();
    if email.trim().is_empty() {
        fields.insert("email".into(), vec!["is required".into()]);
    } else if email.chars().count() > 254 {
        fields.insert("email".into(), vec!["is too long".into()]);
    }
    if password.expose_secret().is_empty() {
        fields.insert("password".into(), vec!["is required".into()]);
    } else if password.expose_secret().chars().count() > 1024 {
        fields.insert("password".into(), vec!["is too long".into()]);
    }
    if !fields.is_empty() {
        return Err(ApiError::validation(fields));
    }
    let ip = client_ip(&req, &state);
    let grant = operators::login(&state.db, &email, password, ip).await?;
    let mut answer = tokens_json(&grant.tokens);
    answer["user"] = json!({
        "id": grant.operator.id,
        "name": grant.operator.name,
        "role": grant.operator.role,
    });
    Ok(no_store(answer))
}

/// A new token pair as the login and the refresh answer it.
fn tokens_json(grant: &AccessGrant) -> Value {
    json!({
        "access_token": grant.access_token.expose_secret(),
        "refresh_token": grant.refresh_token.expose_secret(),
        "token_type": "Bearer",
        "expires_in": grant.expires_in,
    })
}

/// 200 with `body`, which holds tokens and so must never be cached.
fn no_store(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(body)
}

/// A new access token and refresh token for a refresh token from `POST /api/auth/login` or an earlier
/// refresh. Each refresh token works once; presenting it again revokes every token of that sign-in.
#[utoipa::path(
    post,
    path = "/api/auth/refresh",
    tag = "auth",
    request_body = RefreshBody,
    security(()),
    responses(
        (status = 200, description = "A fresh access token and the refresh token to use next", body = RefreshResponse),
        (status = 401, description = "Unknown, expired or revoked refresh token", body = crate::web::openapi::ErrorBody),
    )
)]
pub async fn refresh(
    state: web::Data<Context>,
    ApiJson(body): ApiJson<RefreshBody>,
) -> Result<HttpResponse, ApiError> {
    let Some(token) = body.refresh_token.filter(|t| !t.expose_secret().is_empty()) else {
        return Err(ApiError::field("refresh_token", "is required"));
    };
    let grant = operators::refresh(&state.db, token.expose_secret()).await?;
    Ok(no_store(tokens_json(&grant)))
}
