//! amoCRM-shaped responses: HAL success bodies and problem+json / OAuth error bodies.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

pub const HAL: &str = "application/hal+json";
pub const PROBLEM: &str = "application/problem+json";

/// 200 with a HAL body.
pub fn hal(body: Value) -> HttpResponse {
    hal_status(StatusCode::OK, body)
}

pub fn hal_status(status: StatusCode, body: Value) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(HAL)
        .body(body.to_string())
}

/// 204 No Content (amoCRM's answer for empty lists and successful deletes).
pub fn no_content() -> HttpResponse {
    HttpResponse::NoContent().finish()
}

/// The entity as HAL JSON, or 204: amoCRM answers a read of an unknown id with no content.
pub fn hal_or_no_content(entity: Option<Value>) -> HttpResponse {
    entity.map_or_else(no_content, hal)
}

fn title_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        _ => "Error",
    }
}

/// A problem+json body in amoCRM's shape (`title`, `type`, `status`, `detail`).
pub fn problem(status: StatusCode, detail: &str) -> HttpResponse {
    let code = status.as_u16();
    let body = json!({
        "title": title_of(status),
        "type": format!("https://httpstatus.es/{code}"),
        "status": code,
        "detail": detail,
    });
    HttpResponse::build(status)
        .content_type(PROBLEM)
        .body(body.to_string())
}

pub fn not_found(method: &str, url: &str) -> HttpResponse {
    problem(StatusCode::NOT_FOUND, &format!("Cannot {method} {url}"))
}

pub fn unauthorized() -> HttpResponse {
    problem(StatusCode::UNAUTHORIZED, "Invalid user name or password")
}

pub fn bad_request(detail: &str) -> HttpResponse {
    problem(StatusCode::BAD_REQUEST, detail)
}

pub fn empty_body() -> HttpResponse {
    bad_request("Request data can not be empty")
}

/// 429 as documented, with `retry_after` in seconds.
pub fn too_many(retry_after: u64) -> HttpResponse {
    let body = json!({
        "title": "Too Many Requests",
        "type": "https://httpstatus.es/429",
        "status": 429,
        "detail": "You have sent too many requests in a given amount of time. Please try again later.",
        "retry_after": retry_after,
    });
    HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
        .content_type(PROBLEM)
        .body(body.to_string())
}

/// amoCRM's 500 body (with a `trace_id`).
pub fn internal_error() -> HttpResponse {
    let body = json!({
        "title": "ErrInternalServer",
        "status": 500,
        "detail": "Our team are probably already working on the elimination of the problem",
        "trace_id": crate::tokens::random_hex(16),
    });
    HttpResponse::build(StatusCode::INTERNAL_SERVER_ERROR)
        .content_type(PROBLEM)
        .body(body.to_string())
}

/// The token endpoint's error body (league/oauth2-server style, as captured from amoCRM).
pub fn oauth_error(status: StatusCode, hint: &str) -> HttpResponse {
    let body = json!({
        "hint": hint,
        "title": "Некорректный запрос",
        "type": "https://developers.amocrm.ru/v3/errors/OAuthProblemJson",
        "status": status.as_u16(),
        "detail": "В запросе отсутствует ряд параметров или параметры невалидны",
    });
    HttpResponse::build(status)
        .content_type("application/json")
        .body(body.to_string())
}

/// One error inside a `validation-errors` item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub code: &'static str,
    pub path: String,
    pub detail: String,
}

impl FieldError {
    pub fn new(code: &'static str, path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            code,
            path: path.into(),
            detail: detail.into(),
        }
    }
    pub fn invalid_type(path: impl Into<String>, ty: &str) -> Self {
        Self::new(
            "InvalidType",
            path,
            format!("This value should be of type {ty}."),
        )
    }
    pub fn not_supported(path: impl Into<String>) -> Self {
        Self::new(
            "NotSupportedChoice",
            path,
            "The value you selected is not a valid choice.",
        )
    }
    pub fn required(path: impl Into<String>) -> Self {
        Self::new("NotBlank", path, "This value should not be blank.")
    }
    pub fn invalid_url(path: impl Into<String>) -> Self {
        Self::new("InvalidUrl", path, "This value is not a valid URL.")
    }
    /// The item names an entity the account does not have.
    pub fn not_found(path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new("NotFound", path, detail)
    }
}

/// The errors of one request item, keyed by its `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemErrors {
    pub request_id: String,
    pub errors: Vec<FieldError>,
}

impl ItemErrors {
    /// What an item's errors are reported under: the `request_id` it sent, else its index in the batch.
    pub fn key(request_id: Option<&str>, index: usize) -> String {
        request_id.map_or_else(|| index.to_string(), str::to_owned)
    }

    /// `Ok(item)` when validation found nothing, else the item's errors under `request_id`.
    pub fn check<T>(request_id: String, errors: Vec<FieldError>, item: T) -> Result<T, Self> {
        if errors.is_empty() {
            Ok(item)
        } else {
            Err(Self { request_id, errors })
        }
    }
}

/// 400 for a request body that is wrong as a whole: amoCRM reports it as item `0`.
pub fn body_validation(errors: Vec<FieldError>) -> HttpResponse {
    validation(&[ItemErrors {
        request_id: "0".to_owned(),
        errors,
    }])
}

/// 400 with amoCRM's `validation-errors` body.
pub fn validation(items: &[ItemErrors]) -> HttpResponse {
    let list: Vec<Value> = items
        .iter()
        .map(|i| {
            json!({
                "request_id": i.request_id,
                "errors": i.errors.iter().map(|e| json!({"code": e.code, "path": e.path, "detail": e.detail})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let body = json!({
        "validation-errors": list,
        "title": "Bad Request",
        "type": "https://httpstatus.es/400",
        "status": 400,
        "detail": "Request validation failed",
    });
    HttpResponse::build(StatusCode::BAD_REQUEST)
        .content_type(PROBLEM)
        .body(body.to_string())
}
