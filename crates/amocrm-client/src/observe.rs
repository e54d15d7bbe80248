//! An optional hook told about every request this client sends to amoCRM (API and token endpoint), so the
//! service can count them in its metrics without this crate depending on a metrics library.

use std::sync::Arc;
use std::time::Duration;

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOutcome {
    /// amoCRM answered with this HTTP status.
    Status(u16),
    /// No (complete) answer in time: the request may or may not have been applied.
    Timeout,
    /// The connection failed (refused, reset, cut off).
    Network,
    /// The request could not be built or sent for a local reason.
    Other,
}

/// One finished request.
#[derive(Debug, Clone)]
pub struct CallRecord<'a> {
    /// Method and path with ids replaced by `{id}`, e.g. `PATCH /api/v4/leads`, `GET /api/v4/leads/{id}`,
    /// `POST /oauth2/access_token`: a small, fixed set, safe as a metric label.
    pub endpoint: &'a str,
    /// How the call ended.
    pub outcome: CallOutcome,
    /// How long the call took, queueing in the limiter excluded.
    pub elapsed: Duration,
}

/// The hook: called once per request, after its answer (or failure).
pub type Observer = Arc<dyn Fn(&CallRecord<'_>) + Send + Sync>;

/// `METHOD /path` with every all-digit path segment replaced by `{id}` and every unsorted uid (a segment after
/// `unsorted/` other than `forms`) by `{uid}` (query strings are not part of it).
pub fn endpoint(method: &str, path: &str) -> String {
    let path = path.split('?').next().unwrap_or_default();
    let mut previous = "";
    let normalized: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .map(|seg| {
            let out = if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
                "{id}"
            } else if previous == "unsorted" && !seg.is_empty() && seg != "forms" {
                "{uid}"
            } else {
                seg
            };
            previous = seg;
            out
        })
        .collect();
    format!("{method} /{}", normalized.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_replace_ids_and_drop_queries() {
        assert_eq!(
            endpoint("GET", "api/v4/leads/123"),
            "GET /api/v4/leads/{id}"
        );
        assert_eq!(
            endpoint("GET", "/api/v4/leads?query=A-1"),
            "GET /api/v4/leads"
        );
        assert_eq!(
            endpoint("PATCH", "api/v4/leads/pipelines/77/statuses/9"),
            "PATCH /api/v4/leads/pipelines/{id}/statuses/{id}"
        );
        assert_eq!(
            endpoint("POST", "oauth2/access_token"),
            "POST /oauth2/access_token"
        );
        assert_eq!(
            endpoint(
                "POST",
                "api/v4/leads/unsorted/a1fee7c0fc436088e64ba2e8822ba2b3/accept"
            ),
            "POST /api/v4/leads/unsorted/{uid}/accept"
        );
        assert_eq!(
            endpoint("POST", "api/v4/leads/unsorted/forms"),
            "POST /api/v4/leads/unsorted/forms"
        );
    }
}
