//! Prometheus metrics: counters and histograms the rest of the code bumps through the small functions
//! here, and gauges computed from the database at scrape time (see [`scrape`]).
//!
//! Labels only ever take values from small fixed sets (`&'static str` arguments, route patterns), never a
//! raw path, seller id or token, so the series count stays bounded and nothing secret is exported.
//! The counters live in one process-wide registry: they count what this instance did, while the gauges
//! report the shared database, the same from every instance.

use crate::domain::order::SyncState;
use crate::domain::status::{ConnectionStatus, DeliveryState, InboxState};
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::storage::stats::Stats;
use crate::storage::{Db, StorageError};

/// The content type of the classic Prometheus text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Counters {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    amocrm_calls: IntCounterVec,
    refreshes: IntCounterVec,
    push_batch: Histogram,
    webhooks: IntCounterVec,
    deliveries: IntCounterVec,
    logins: IntCounterVec,
    malformed: IntCounterVec,
}

/// A counter family; `outcomes` are pre-set to 0 so the series exist before the first event.
fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    outcomes: &[&str],
) -> IntCounterVec {
    // Names and labels are literals in this file, checked by the tests: failing here is a bug.
    #[expect(clippy::expect_used, reason = "literal metric definitions")]
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    for o in outcomes {
        c.with_label_values(&[*o]).inc_by(0);
    }
    register(registry, c.clone());
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    #[expect(
        clippy::expect_used,
        reason = "literal names and buckets, checked by the tests"
    )]
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram");
    register(registry, h.clone());
    h
}

fn register(registry: &Registry, c: impl Collector + 'static) {
    if let Err(e) = registry.register(Box::new(c)) {
        tracing::error!(error = %e, "metric registration failed");
    }
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| {
    let registry = Registry::new();
    Counters {
        http_requests: counter(
            &registry,
            "http_requests_total",
            "HTTP requests answered, by route pattern and status.",
            &["method", "route", "status"],
            &[],
        ),
        http_duration: histogram(
            &registry,
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route pattern.",
            &["method", "route"],
            vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        ),
        amocrm_calls: counter(
            &registry,
            "amocrm_requests_total",
            "Requests to amoCRM, by call and outcome (ok, 401, 429, 5xx, timeout, network, 4xx, 404, error).",
            &["call", "outcome"],
            &[],
        ),
        refreshes: counter(
            &registry,
            "amocrm_token_refreshes_total",
            "Access-token refreshes, by outcome (ok, rejected, transient, skipped).",
            &["outcome"],
            &["ok", "rejected", "transient", "skipped"],
        ),
        push_batch: {
            let h = histogram(
                &registry,
                "order_push_batch_size",
                "Orders sent in one leads/complex request (at most 50).",
                &[],
                vec![1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 49.0, 50.0],
            );
            h.with_label_values::<&str>(&[])
        },
        webhooks: counter(
            &registry,
            "amocrm_webhooks_received_total",
            "amoCRM webhook requests at the intake, by outcome (stored, unknown_token, account_mismatch, malformed, too_large).",
            &["outcome"],
            &[
                "stored",
                "unknown_token",
                "account_mismatch",
                "malformed",
                "too_large",
                "error",
            ],
        ),
        malformed: counter(
            &registry,
            "http_malformed_connections_total",
            "Client connections the HTTP server dropped as malformed or broken (bad headers, cut streams).",
            &["kind"],
            &["stream_error"],
        ),
        deliveries: counter(
            &registry,
            "event_delivery_attempts_total",
            "Attempts to deliver events to subscribers, by outcome (delivered, retry, failed).",
            &["outcome"],
            &["delivered", "retry", "failed"],
        ),
        logins: counter(
            &registry,
            "operator_logins_total",
            "Operator sign-ins, by outcome (ok, invalid, throttled).",
            &["outcome"],
            &["ok", "invalid", "throttled"],
        ),
        registry,
    }
});

/// How one amoCRM request ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmoOutcome {
    Ok,
    /// 401
    Unauthorized,
    /// 429
    RateLimited,
    /// 5xx
    ServerError,
    /// No answer in time, or the connection dropped after sending (the outcome is unknown).
    Timeout,
    /// The connection failed before the request was sent.
    Network,
    /// 404
    NotFound,
    /// Other 4xx (validation errors, 402, 403).
    Rejected,
    /// An unreadable answer or a local error.
    Error,
}

impl AmoOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unauthorized => "401",
            Self::RateLimited => "429",
            Self::ServerError => "5xx",
            Self::Timeout => "timeout",
            Self::Network => "network",
            Self::NotFound => "404",
            Self::Rejected => "4xx",
            Self::Error => "error",
        }
    }

    /// The outcome of an API call's result.
    pub fn of<T>(result: &Result<T, amocrm_client::ApiError>) -> Self {
        use amocrm_client::ApiError as E;
        match result {
            Ok(_) => Self::Ok,
            Err(E::Unauthorized) => Self::Unauthorized,
            Err(E::RateLimited { .. }) => Self::RateLimited,
            Err(E::Transient {
                status: Some(s), ..
            }) if *s >= 500 => Self::ServerError,
            Err(E::Transient { .. }) => Self::Network,
            Err(E::Ambiguous(_)) => Self::Timeout,
            Err(E::NotFound) => Self::NotFound,
            Err(E::Rejected { .. } | E::PaymentRequired | E::Forbidden { .. }) => Self::Rejected,
            Err(E::Decode(_) | E::Request(_)) => Self::Error,
        }
    }
}

/// Counts one request to amoCRM. Requests sent through `AmoClient` are counted automatically (see
/// [`amocrm_observer`], labelled `METHOD /path` with ids as `{id}`); this is for anything else. `call` must
/// come from a small fixed set, never contain an id.
pub fn amocrm_call(call: &str, outcome: AmoOutcome) {
    COUNTERS
        .amocrm_calls
        .with_label_values(&[call, outcome.as_str()])
        .inc();
}

impl AmoOutcome {
    /// The outcome of a finished request as the client's observer reports it.
    pub fn of_call(outcome: amocrm_client::CallOutcome) -> Self {
        use amocrm_client::CallOutcome as C;
        match outcome {
            C::Status(s) if (200..300).contains(&s) => Self::Ok,
            C::Status(401) => Self::Unauthorized,
            C::Status(429) => Self::RateLimited,
            C::Status(404) => Self::NotFound,
            C::Status(s) if s >= 500 => Self::ServerError,
            C::Status(s) if s >= 400 => Self::Rejected,
            C::Status(_) => Self::Error,
            C::Timeout => Self::Timeout,
            C::Network => Self::Network,
            C::Other => Self::Error,
        }
    }
}

/// The hook installed on the process's `AmoClient`: every request to amoCRM, API and token endpoint,
/// counted by endpoint and outcome.
pub fn amocrm_observer() -> amocrm_client::Observer {
    std::sync::Arc::new(|call: &amocrm_client::CallRecord<'_>| {
        amocrm_call(call.endpoint, AmoOutcome::of_call(call.outcome));
    })
}

/// Counts one access-token refresh: `ok`, `rejected` (amoCRM refused the refresh token: the seller must
/// reconnect), `transient` (try again later) or `skipped` (another caller held the lease).
pub fn refresh_outcome(outcome: &'static str) {
    COUNTERS.refreshes.with_label_values(&[outcome]).inc();
}

/// Records the size of one `leads/complex` batch.
pub fn push_batch(size: usize) {
    COUNTERS.push_batch.observe(size as f64);
}

/// Counts one stored amoCRM webhook.
pub fn webhook_received() {
    webhook_outcome("stored");
}

/// Counts one amoCRM webhook request by outcome: `stored`, `unknown_token`, `account_mismatch`,
/// `malformed`, `too_large`.
pub fn webhook_outcome(outcome: &'static str) {
    COUNTERS.webhooks.with_label_values(&[outcome]).inc();
}

/// Counts one delivery attempt: `delivered`, `retry` (failed, will try again) or `failed` (gave up).
pub fn delivery_outcome(outcome: &'static str) {
    COUNTERS.deliveries.with_label_values(&[outcome]).inc();
}

/// Counts one operator sign-in attempt: `ok`, `invalid` or `throttled`.
/// A client connection the HTTP server gave up on (see `telemetry`: logged at most once a minute).
pub fn malformed_connection() {
    COUNTERS
        .malformed
        .with_label_values(&["stream_error"])
        .inc();
}

pub fn login_outcome(outcome: &'static str) {
    COUNTERS.logins.with_label_values(&[outcome]).inc();
}

/// Counts one answered HTTP request. `route` is the matched route pattern (`/webhooks/amocrm/{token}`),
/// never the path itself: paths carry secrets.
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    // Methods outside the standard set are folded so a client cannot invent label values.
    let method = match method {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
        _ => "OTHER",
    };
    let status = status.to_string();
    COUNTERS
        .http_requests
        .with_label_values(&[method, route, &status])
        .inc();
    COUNTERS
        .http_duration
        .with_label_values(&[method, route])
        .observe(elapsed.as_secs_f64());
}

/// States always reported (as 0 when absent), so dashboards and alerts see the series from the start.
const CONNECTION_STATUSES: &[&str] = ConnectionStatus::NAMES;
const ORDER_SYNC_STATES: &[&str] = SyncState::NAMES;
const DELIVERY_STATES: &[&str] = DeliveryState::NAMES;
const INBOX_STATES: &[&str] = InboxState::NAMES;

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    known: &[&str],
    rows: &[(String, i64)],
) {
    let Ok(g) = IntGaugeVec::new(Opts::new(name, help), &[label]) else {
        return;
    };
    for k in known {
        g.with_label_values(&[*k]).set(0);
    }
    for (k, n) in rows {
        g.with_label_values(&[k.as_str()]).set(*n);
    }
    register(registry, g);
}

fn gauge(registry: &Registry, name: &str, help: &str, value: i64) {
    if let Ok(g) = IntGauge::new(name, help) {
        g.set(value);
        register(registry, g);
    }
}

fn age_seconds(oldest: Option<chrono::NaiveDateTime>, now: chrono::NaiveDateTime) -> i64 {
    oldest.map_or(0, |t| (now - t).num_seconds().max(0))
}

fn count_of(rows: &[(String, i64)], state: &str) -> i64 {
    rows.iter()
        .filter(|(k, _)| k == state)
        .map(|(_, n)| n)
        .sum()
}

/// The gauges of one database snapshot, in a registry of their own made per scrape (so a state that
/// disappeared does not linger with an old value).
fn gauges(s: &Stats, instance: &str) -> Registry {
    let r = Registry::new();
    let now = crate::storage::now();
    gauge_vec(
        &r,
        "amocrm_connections",
        "Seller connections by status.",
        "status",
        CONNECTION_STATUSES,
        &s.connections_by_status,
    );
    gauge_vec(
        &r,
        "orders",
        "Orders by sync state towards amoCRM.",
        "sync_state",
        ORDER_SYNC_STATES,
        &s.orders_by_sync_state,
    );
    gauge(
        &r,
        "orders_oldest_queued_age_seconds",
        "Age of the oldest order still waiting to be pushed (0 when none).",
        age_seconds(s.oldest_queued_order, now),
    );
    gauge_vec(
        &r,
        "order_moves",
        "Requested lead stage moves by state.",
        "state",
        &[],
        &s.order_moves_by_state,
    );
    gauge_vec(
        &r,
        "event_deliveries",
        "Event deliveries to subscribers by state.",
        "state",
        DELIVERY_STATES,
        &s.deliveries_by_state,
    );
    gauge(
        &r,
        "event_delivery_backlog",
        "Deliveries not yet delivered and not given up (pending).",
        count_of(&s.deliveries_by_state, DeliveryState::Pending.as_str()),
    );
    gauge(
        &r,
        "event_delivery_oldest_pending_age_seconds",
        "Age of the oldest pending delivery (0 when none).",
        age_seconds(s.oldest_pending_delivery, now),
    );
    gauge_vec(
        &r,
        "amocrm_webhook_inbox",
        "Stored amoCRM webhook bodies by processing state.",
        "state",
        INBOX_STATES,
        &s.inbox_by_state,
    );
    gauge(
        &r,
        "amocrm_webhook_inbox_backlog",
        "Stored amoCRM webhook bodies not processed yet.",
        count_of(&s.inbox_by_state, InboxState::Pending.as_str()),
    );
    gauge(
        &r,
        "amocrm_webhook_processing_lag_seconds",
        "Age of the oldest unprocessed amoCRM webhook body (0 when none).",
        age_seconds(s.oldest_pending_inbox, now),
    );
    gauge(
        &r,
        "events_stored",
        "Events in the event log (after pruning).",
        s.events_total,
    );
    if let Ok(g) = IntGaugeVec::new(
        Opts::new(
            "job_last_finished_timestamp_seconds",
            "When a scheduled job (such as the refresh sweep) last finished, in Unix seconds.",
        ),
        // Not `job` or `instance`: Prometheus sets those on every scraped series and would rename ours.
        &["job_name"],
    ) {
        for (name, at) in &s.jobs_last_finished {
            if let Some(at) = at {
                g.with_label_values(&[name.as_str()])
                    .set(at.and_utc().timestamp());
            }
        }
        register(&r, g);
    }
    if let Ok(g) = IntGaugeVec::new(
        Opts::new(
            "amocrm_connector_info",
            "Always 1; labels name the version and this instance.",
        ),
        &["version", "instance_id"],
    ) {
        g.with_label_values(&[env!("CARGO_PKG_VERSION"), instance])
            .set(1);
        register(&r, g);
    }
    r
}

/// Renders every metric: this process's counters and the database gauges, in the text format.
pub async fn scrape(db: &Db, instance: &str) -> Result<String, StorageError> {
    let snapshot = db.dashboard().stats().await?;
    let mut families = COUNTERS.registry.gather();
    families.extend(gauges(&snapshot, instance).gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut buf)
        .map_err(|e| StorageError::Other(format!("metrics encoding: {e}")))?;
    String::from_utf8(buf).map_err(|e| StorageError::Other(format!("metrics encoding: {e}")))
}
