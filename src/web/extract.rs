//! Request extractors with the contract's errors: JSON bodies (400 malformed, 422 per field) and paging.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error::{ApiError, FieldErrors};

/// Largest JSON body accepted on `/api`.
pub const JSON_LIMIT: usize = 256 * 1024;

/// A JSON body: malformed JSON is 400 `BAD_REQUEST`; a well-formed body of the wrong shape is 422
/// `VALIDATION_ERROR` naming the field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for ApiJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let declared_too_large = req
            .headers()
            .get(actix_web::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok())
            .is_some_and(|len| len > JSON_LIMIT);
        let bytes = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if declared_too_large {
                return Err(too_large());
            }
            let body = bytes.await.map_err(|e| {
                if is_overflow(&e) {
                    too_large()
                } else {
                    ApiError::bad_request("could not read the request body")
                }
            })?;
            parse_json(&body).map(ApiJson)
        })
    }
}

/// 413 in the contract's body.
pub fn too_large() -> ApiError {
    ApiError::bad_request(format!(
        "request body is larger than {} KiB",
        JSON_LIMIT / 1024
    ))
    .with_status(actix_web::http::StatusCode::PAYLOAD_TOO_LARGE)
}

/// Whether reading a body failed because it passed the limit (declared or streamed).
pub fn is_overflow(e: &actix_web::Error) -> bool {
    use actix_web::error::PayloadError;
    matches!(e.as_error::<PayloadError>(), Some(PayloadError::Overflow))
        || e.as_response_error().status_code() == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE
}

/// Parses a JSON body with the contract's error classes.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    // First check that it is JSON at all, so syntax errors are 400 and shape errors 422.
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {}", short(&e.to_string()))))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    // Keys no field reads are ignored (clients may send more than we use); what is kept must be storable.
    // Almost no body holds a NUL at all; only one that does is copied, to see whether a kept field holds it.
    let with_nul = nul_path(&value, String::new()).map(|_| value.clone());
    let mut ignored: Vec<Vec<Segment>> = Vec::new();
    let parsed: Result<T, _> = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        value,
        &mut |path: serde_ignored::Path<'_>| ignored.push(segments(&path)),
    ));
    let parsed = parsed.map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        let mut fields = FieldErrors::new();
        fields.insert(field, vec![short(&e.inner().to_string())]);
        ApiError::validation(fields)
    })?;
    if let Some(mut kept) = with_nul {
        for path in &ignored {
            remove_at(&mut kept, path);
        }
        if let Some(path) = nul_path(&kept, String::new()) {
            // PostgreSQL cannot store NUL in text; no field of ours has a use for it.
            let mut fields = FieldErrors::new();
            fields.insert(path, vec!["must not contain a NUL character".to_owned()]);
            return Err(ApiError::validation(fields));
        }
    }
    Ok(parsed)
}

/// One step of a path into a JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The steps of a path serde_ignored reports, root first (options and newtypes are no step in JSON).
fn segments(path: &serde_ignored::Path<'_>) -> Vec<Segment> {
    use serde_ignored::Path;
    let mut out = match path {
        Path::Root => return Vec::new(),
        Path::Seq { parent, .. }
        | Path::Map { parent, .. }
        | Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => segments(parent),
    };
    match path {
        Path::Seq { index, .. } => out.push(Segment::Index(*index)),
        Path::Map { key, .. } => out.push(Segment::Key(key.clone())),
        _ => {}
    }
    out
}

/// Removes the value at `path`, if there is one.
fn remove_at(v: &mut serde_json::Value, path: &[Segment]) {
    let Some((last, parents)) = path.split_last() else {
        *v = serde_json::Value::Null;
        return;
    };
    let mut at = v;
    for seg in parents {
        let next = match (seg, at) {
            (Segment::Key(k), serde_json::Value::Object(m)) => m.get_mut(k),
            (Segment::Index(i), serde_json::Value::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => at = n,
            None => return,
        }
    }
    match (last, at) {
        (Segment::Key(k), serde_json::Value::Object(m)) => {
            m.remove(k);
        }
        (Segment::Index(i), serde_json::Value::Array(a)) if *i < a.len() => {
            a[*i] = serde_json::Value::Null;
        }
        _ => {}
    }
}

/// The path (`a.b[2]`) of the first string or key holding a NUL character, if any.
fn nul_path(v: &serde_json::Value, at: String) -> Option<String> {
    let field = |at: &str| {
        if at.is_empty() {
            "body".to_owned()
        } else {
            at.to_owned()
        }
    };
    match v {
        serde_json::Value::String(s) => s.contains('\0').then(|| field(&at)),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path(item, format!("{at}[{i}]"))),
        serde_json::Value::Object(map) => map.iter().find_map(|(k, item)| {
            let here = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            if k.contains('\0') {
                Some(field(&at))
            } else {
                nul_path(item, here)
            }
        }),
        _ => None,
    }
}

fn short(s: &str) -> String {
    // serde messages are safe to show but can quote long inputs; keep them bounded.
    let mut out: String = s.chars().take(200).collect();
    if s.chars().count() > 200 {
        out.push('…');
    }
    out
}

/// The last page number a list takes (a bound on the offset the database is asked for).
pub const MAX_PAGE: i64 = 1_000_000;

/// `?page=&per_page=` with the contract's bounds (per_page at most 100).
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub page: i64,
    pub per_page: i64,
}

impl Paging {
    pub fn offset(&self) -> i64 {
        (self.page - 1) * self.per_page
    }

    pub fn meta(&self, total: i64) -> serde_json::Value {
        serde_json::json!({"page": self.page, "per_page": self.per_page, "total": total})
    }
}

#[derive(Deserialize)]
struct RawPaging {
    page: Option<String>,
    per_page: Option<String>,
}

impl FromRequest for Paging {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(paging_from_query(req.query_string()))
    }
}

pub fn paging_from_query(q: &str) -> Result<Paging, ApiError> {
    let raw: RawPaging = serde_urlencoded::from_str(q)
        .map_err(|_| ApiError::bad_request("malformed query string"))?;
    let page = match raw.page.as_deref() {
        None => 1,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| (1..=MAX_PAGE).contains(p))
            .ok_or_else(|| {
                ApiError::bad_request(format!("page must be a whole number from 1 to {MAX_PAGE}"))
            })?,
    };
    let per_page = match raw.per_page.as_deref() {
        None => 15,
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| (1..=100).contains(p))
            .ok_or_else(|| {
                ApiError::bad_request("per_page must be a whole number from 1 to 100")
            })?,
    };
    Ok(Paging { page, per_page })
}

/// Query parameters of any shape, with 400 on malformed input.
pub fn query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    serde_urlencoded::from_str(req.query_string()).map_err(|e| {
        ApiError::bad_request(format!(
            "malformed query parameters: {}",
            short(&e.to_string())
        ))
    })
}
