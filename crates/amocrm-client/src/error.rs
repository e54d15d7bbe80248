//! API error classes: each tells the caller what it may do next (retry, wait, look up, refresh, give up).
//!
//! Messages carry statuses and amoCRM's own `title`/`detail`, never a request body, token or secret.

use std::time::Duration;

use serde::Deserialize;

/// Default wait when amoCRM answers 429 without a readable `retry_after`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// Longest wait honoured from a `retry_after` field (amoCRM's documented example is 300 s).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Outcome classes of an amoCRM API call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// 401: the access token is invalid, expired or revoked. Refresh (once) or re-read the stored pair.
    #[error("amoCRM rejected the access token (401)")]
    Unauthorized,
    /// 429: wait at least `retry_after` before the next request to this account.
    #[error("amoCRM rate limit hit (429), retry after {retry_after:?}")]
    RateLimited {
        /// How long amoCRM asked to wait.
        retry_after: Duration,
    },
    /// Nothing was changed: 5xx (`status` set) or a connection that failed before the request was sent.
    /// Safe to retry with backoff.
    #[error("amoCRM temporarily unavailable ({})", .status.map_or_else(|| reason.clone(), |s| format!("HTTP {s}")))]
    Transient {
        /// The 5xx status, `None` for a connection that failed before sending.
        status: Option<u16>,
        /// What failed, for logs.
        reason: String,
    },
    /// A timeout or a dropped connection after the request may have reached amoCRM: a create may have happened.
    /// Look the object up before sending the create again. For reads and idempotent moves it is simply a
    /// failure worth retrying with backoff.
    #[error("amoCRM request outcome unknown: {0}")]
    Ambiguous(String),
    /// 400/422 and other 4xx: amoCRM refused the request; resending it unchanged will fail again.
    #[error("amoCRM refused the request (HTTP {status}): {detail}")]
    Rejected {
        /// HTTP status of the refusal.
        status: u16,
        /// amoCRM's explanation.
        detail: String,
        /// Per-item validation errors, when amoCRM sent them.
        validation: Vec<ValidationError>,
    },
    /// 404: the object or route does not exist (for example a pipeline deleted in amoCRM).
    #[error("amoCRM object not found (404)")]
    NotFound,
    /// 402: the account's paid period is over.
    #[error("amoCRM account needs payment (402)")]
    PaymentRequired,
    /// 403: the integration or this IP is blocked, the token's user was deactivated, or (on admin-only
    /// routes such as `GET users`) the user is not an administrator. Kept apart from [`Self::Rejected`]
    /// because the account, not the request, is what is refused: the caller decides which it means.
    #[error("amoCRM refused access (403): {detail}")]
    Forbidden {
        /// amoCRM's explanation (`Account is blocked`, …).
        detail: String,
    },
    /// A success status with a body we could not read. For a create this is as unsafe as [`Self::Ambiguous`].
    #[error("amoCRM response could not be decoded: {0}")]
    Decode(String),
    /// A local problem building the request (bad URL from configuration).
    #[error("amoCRM request could not be built: {0}")]
    Request(String),
}

impl ApiError {
    /// Whether the same request may simply be sent again later (after `retry_after` for 429).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RateLimited { .. } | Self::Transient { .. })
    }

    /// Whether a write may have been applied although no usable answer came back.
    pub fn may_have_written(&self) -> bool {
        matches!(self, Self::Ambiguous(_) | Self::Decode(_))
    }

    /// 403: the token's user lacks the rights (e.g. `GET users` needs an administrator), or the integration or
    /// IP is blocked.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Self::Forbidden { .. })
    }

    /// The HTTP status amoCRM answered, when it answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized => Some(401),
            Self::PaymentRequired => Some(402),
            Self::Forbidden { .. } => Some(403),
            Self::NotFound => Some(404),
            Self::RateLimited { .. } => Some(429),
            Self::Rejected { status, .. } => Some(*status),
            Self::Transient { status, .. } => *status,
            Self::Ambiguous(_) | Self::Decode(_) | Self::Request(_) => None,
        }
    }

    /// Request ids amoCRM named in `validation-errors` (empty for other errors).
    pub fn rejected_request_ids(&self) -> Vec<&str> {
        match self {
            Self::Rejected { validation, .. } => validation
                .iter()
                .filter_map(|v| v.request_id.as_deref())
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// One entry of amoCRM's `validation-errors`: the request item it concerns and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ValidationError {
    #[serde(default, deserialize_with = "crate::models::de::opt_string_or_number")]
    /// The caller's correlation id: amoCRM echoes it so results can be matched to what was sent.
    pub request_id: Option<String>,
    #[serde(default)]
    /// The refused fields.
    pub errors: Vec<FieldError>,
}

/// One field problem inside a [`ValidationError`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct FieldError {
    #[serde(default)]
    /// amoCRM's error code (`NotSupported`, `InvalidType`…).
    pub code: String,
    #[serde(default)]
    /// Where in the item the field is (`custom_fields_values.0.values`).
    pub path: String,
    #[serde(default)]
    /// amoCRM's human-readable explanation.
    pub detail: String,
}

/// amoCRM's `application/problem+json` error body (every field optional: bodies vary and may not be JSON).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProblemBody {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub hint: Option<String>,
    #[serde(default, rename = "validation-errors")]
    pub validation_errors: Vec<ValidationError>,
    #[serde(default)]
    pub retry_after: Option<serde_json::Value>,
}

impl ProblemBody {
    /// Reads the body if it is JSON in roughly the expected shape, otherwise an empty problem.
    pub(crate) fn parse(body: &[u8]) -> Self {
        serde_json::from_slice::<ProblemBody>(body).unwrap_or_default()
    }

    /// `retry_after` as a duration: a number or numeric string of seconds, clamped; otherwise the default.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        let secs = match self.retry_after.as_ref()? {
            serde_json::Value::Number(n) => n.as_f64()?,
            serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
            _ => return None,
        };
        if !secs.is_finite() || secs < 0.0 {
            return None;
        }
        Some(Duration::from_secs_f64(
            secs.min(MAX_RETRY_AFTER.as_secs_f64()),
        ))
    }
}

/// The `Retry-After` header in seconds, if present and numeric (amoCRM does not document one; harmless to honour).
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Classifies a non-success HTTP answer from the API.
pub(crate) fn classify_status(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> ApiError {
    let code = status.as_u16();
    match code {
        401 => ApiError::Unauthorized,
        402 => ApiError::PaymentRequired,
        403 => {
            let problem = ProblemBody::parse(body);
            let detail = problem
                .detail
                .or(problem.title)
                .unwrap_or_else(|| "Forbidden".to_owned());
            ApiError::Forbidden {
                detail: truncate(&detail, 500),
            }
        }
        404 => ApiError::NotFound,
        429 => {
            let problem = ProblemBody::parse(body);
            ApiError::RateLimited {
                retry_after: problem
                    .retry_after()
                    .or_else(|| retry_after_header(headers))
                    .unwrap_or(DEFAULT_RETRY_AFTER),
            }
        }
        500..=599 => ApiError::Transient {
            status: Some(code),
            reason: format!("HTTP {code}"),
        },
        _ => {
            let problem = ProblemBody::parse(body);
            let detail = problem
                .detail
                .or(problem.title)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            ApiError::Rejected {
                status: code,
                detail: truncate(&detail, 500),
                validation: problem.validation_errors,
            }
        }
    }
}

/// Classifies a transport failure: connect errors are safe to retry, anything later is ambiguous.
pub(crate) fn classify_transport(err: &reqwest::Error) -> ApiError {
    let reason = transport_reason(err);
    if err.is_connect() {
        ApiError::Transient {
            status: None,
            reason,
        }
    } else if err.is_builder() {
        ApiError::Request(reason)
    } else {
        ApiError::Ambiguous(reason)
    }
}

/// A short description of a transport error without URL query or body (reqwest's Display includes the URL, which
/// never carries a token here, but keep it short anyway).
pub(crate) fn transport_reason(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect error"
    } else if err.is_body() || err.is_decode() {
        "response body error"
    } else if err.is_request() {
        "connection error"
    } else {
        "network error"
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(err);
    let mut last = None;
    while let Some(s) = source {
        last = Some(s.to_string());
        source = s.source();
    }
    match last {
        Some(cause) => format!("{kind}: {}", truncate(&cause, 200)),
        None => kind.to_owned(),
    }
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;
    use crate::test_support::fixture;
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

    fn classify(code: u16, body: &[u8]) -> ApiError {
        classify_status(StatusCode::from_u16(code).unwrap(), &HeaderMap::new(), body)
    }

    #[test]
    fn validation_errors_are_read_from_amocrm_400_bodies() {
        let err = classify(400, &fixture("error-400-validation-kommo-docs.json"));
        let ApiError::Rejected {
            status,
            detail,
            validation,
        } = &err
        else {
            panic!("{err:?}");
        };
        assert_eq!(*status, 400);
        assert_eq!(detail, "Request validation failed");
        assert_eq!(validation.len(), 1);
        assert_eq!(validation[0].request_id.as_deref(), Some("0"));
        assert_eq!(validation[0].errors[1].code, "InvalidType");
        assert_eq!(
            validation[0].errors[0].path,
            "custom_fields_values.0.field_id"
        );
        assert_eq!(err.rejected_request_ids(), vec!["0"]);
    }

    #[test]
    fn statuses_map_to_their_classes() {
        assert!(matches!(
            classify(401, &fixture("error-401-kommo-docs.json")),
            ApiError::Unauthorized
        ));
        assert!(matches!(
            classify(402, &fixture("error-402-kommo-docs.json")),
            ApiError::PaymentRequired
        ));
        assert!(matches!(
            classify(404, &fixture("error-404-kommo-docs.json")),
            ApiError::NotFound
        ));
        assert!(matches!(
            classify(500, &fixture("error-500-kommo-docs.json")),
            ApiError::Transient {
                status: Some(500),
                ..
            }
        ));
        assert!(matches!(
            classify(503, b"<html>"),
            ApiError::Transient {
                status: Some(503),
                ..
            }
        ));
        let e = classify(422, &fixture("error-422-limit-kommo-docs.json"));
        assert!(
            matches!(&e, ApiError::Rejected { status: 422, detail, .. } if detail == "Limit 250 per page")
        );
        let forbidden = classify(
            403,
            br#"{"title":"Forbidden","status":403,"detail":"Account is blocked"}"#,
        );
        assert!(
            matches!(&forbidden, ApiError::Forbidden { detail } if detail == "Account is blocked"),
            "{forbidden:?}"
        );
        assert!(forbidden.is_forbidden());
        assert_eq!(forbidden.status(), Some(403));
        assert!(classify(403, b"").is_forbidden());
        assert!(!classify(400, b"").is_forbidden());
        assert!(!e.is_retryable());
    }

    #[test]
    fn retry_after_is_read_from_the_body_defensively() {
        let e = classify(429, &fixture("error-429-kommo-docs.json"));
        assert!(
            matches!(e, ApiError::RateLimited { retry_after } if retry_after == Duration::from_secs(300))
        );
        for (body, want) in [
            (&b"Too Many Requests"[..], DEFAULT_RETRY_AFTER),
            (b"", DEFAULT_RETRY_AFTER),
            (br#"{"retry_after":"2"}"#, Duration::from_secs(2)),
            (br#"{"retry_after":0.5}"#, Duration::from_millis(500)),
            (br#"{"retry_after":-4}"#, DEFAULT_RETRY_AFTER),
            (br#"{"retry_after":1e300}"#, MAX_RETRY_AFTER),
            (br#"{"retry_after":null}"#, DEFAULT_RETRY_AFTER),
            (br#"[1,2]"#, DEFAULT_RETRY_AFTER),
        ] {
            let e = classify(429, body);
            assert!(
                matches!(e, ApiError::RateLimited { retry_after } if retry_after == want),
                "{:?} -> {e:?}",
                String::from_utf8_lossy(body)
            );
            assert!(e.is_retryable());
        }
        let mut headers = HeaderMap::new();
        headers.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        let e = classify_status(StatusCode::TOO_MANY_REQUESTS, &headers, b"nope");
        assert!(
            matches!(e, ApiError::RateLimited { retry_after } if retry_after == Duration::from_secs(7))
        );
    }

    #[test]
    fn long_details_are_truncated_on_a_char_boundary() {
        let long = "я".repeat(400);
        let t = truncate(&long, 501);
        assert!(t.len() <= 504);
        assert!(t.ends_with('…'));
    }
}
