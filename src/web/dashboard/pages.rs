//! The dashboard's read-only pages: overview, connections, orders, events with deliveries, subscriptions.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::{Clock, DashError, Nav, Signed, Viewer, html};
use crate::domain::order::SyncState;
use crate::domain::status::{
    ConnectionStatus, DeliveryState, HealthState, InboxState, ProvisioningState, SuspendReason,
};
use crate::services::Context;
use crate::services::dashboard::{self, PER_PAGE};
use crate::storage::dashboard as q;

/// One filter link above a list.
pub struct Filter {
    pub href: String,
    pub label: String,
    pub current: bool,
}

fn filters(base: &str, param: &str, values: &[&str], current: Option<&str>) -> Vec<Filter> {
    let mut out = vec![Filter {
        href: base.to_owned(),
        label: "all".to_owned(),
        current: current.is_none(),
    }];
    out.extend(values.iter().map(|v| Filter {
        href: format!("{base}?{param}={v}"),
        label: v.replace('_', " "),
        current: current == Some(*v),
    }));
    out
}

#[derive(Deserialize, Default)]
pub struct ListQuery {
    status: Option<String>,
    sync_state: Option<String>,
    failed: Option<String>,
    q: Option<String>,
    page: Option<i64>,
}

impl ListQuery {
    fn parse(req: &HttpRequest) -> Self {
        serde_urlencoded::from_str(req.query_string()).unwrap_or_default()
    }

    /// The search text, trimmed and bounded; `None` when empty.
    fn search(&self) -> Option<String> {
        let q = self.q.as_deref()?.trim();
        (!q.is_empty()).then(|| q.chars().take(100).collect())
    }

    fn page(&self) -> i64 {
        self.page.filter(|p| (1..=10_000).contains(p)).unwrap_or(1)
    }
}

/// Links to the neighbouring pages, keeping the filter and the search.
/// Where a list is and the links to its neighbouring pages (`dashboard/pager.html`).
pub struct Pager {
    pub page: i64,
    pub prev_href: Option<String>,
    pub next_href: Option<String>,
}

fn pager(
    base: &str,
    filter: Option<(&str, &str)>,
    search: Option<&str>,
    page: i64,
    total: i64,
) -> Pager {
    let link = |p: i64| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some((k, v)) = filter {
            query.append_pair(k, v);
        }
        if let Some(q) = search {
            query.append_pair("q", q);
        }
        query.append_pair("page", &p.to_string());
        format!("{base}?{}", query.finish())
    };
    Pager {
        page,
        prev_href: (page > 1).then(|| link(page - 1)),
        next_href: (page * PER_PAGE < total).then(|| link(page + 1)),
    }
}

/// What a list page shows around its rows: the count, the search, the filter links and the pager.
pub struct Listing {
    pub total: i64,
    pub search: Option<String>,
    pub filters: Vec<Filter>,
    pub pager: Pager,
}

impl Listing {
    /// The list at `base`, filtered by `param` (one of `values`; `current` when one is chosen) and searched.
    fn filtered(
        base: &str,
        param: &str,
        values: &[&str],
        current: Option<&str>,
        search: Option<String>,
        page: i64,
        total: i64,
    ) -> Self {
        Self {
            pager: pager(
                base,
                current.map(|v| (param, v)),
                search.as_deref(),
                page,
                total,
            ),
            filters: filters(base, param, values, current),
            total,
            search,
        }
    }
}

fn age(oldest: Option<chrono::NaiveDateTime>) -> String {
    match oldest {
        None => "none".to_owned(),
        Some(t) => {
            let secs = (crate::storage::now() - t).num_seconds().max(0);
            humantime::format_duration(std::time::Duration::from_secs(secs as u64)).to_string()
        }
    }
}

fn with_known(rows: &[(String, i64)], known: &[&str]) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = known
        .iter()
        .map(|k| {
            let n = rows.iter().filter(|(s, _)| s == k).map(|(_, n)| n).sum();
            ((*k).to_owned(), n)
        })
        .collect();
    out.extend(
        rows.iter()
            .filter(|(s, _)| !known.contains(&s.as_str()))
            .cloned(),
    );
    out
}

/// Every connection status and sync state, in the order the filters show them.
pub const CONNECTION_STATUSES: &[&str] = ConnectionStatus::NAMES;
pub const SYNC_STATES: &[&str] = SyncState::NAMES;

#[derive(Template)]
#[template(path = "dashboard/overview.html")]
struct OverviewPage {
    nav: Nav,
    connections: Vec<(String, i64)>,
    orders: Vec<(String, i64)>,
    /// Each delivery state with its count and the events page that lists it (only failed ones filter).
    deliveries: Vec<(String, i64, &'static str)>,
    inbox: Vec<(String, i64)>,
    oldest_queued: String,
    oldest_delivery: String,
    inbox_lag: String,
}

pub async fn overview(v: Viewer) -> Result<HttpResponse, DashError> {
    let s = dashboard::overview(&v.state.db).await?;
    let page = OverviewPage {
        nav: v.nav("overview"),
        connections: with_known(&s.connections_by_status, CONNECTION_STATUSES),
        orders: with_known(&s.orders_by_sync_state, SYNC_STATES),
        deliveries: with_known(&s.deliveries_by_state, DeliveryState::NAMES)
            .into_iter()
            .map(|(state, n)| {
                let failed = state == DeliveryState::Failed.as_str();
                let href = if failed {
                    "/dashboard/events?failed=1"
                } else {
                    "/dashboard/events"
                };
                (state, n, href)
            })
            .collect(),
        inbox: with_known(&s.inbox_by_state, InboxState::NAMES),
        oldest_queued: age(s.oldest_queued_order),
        oldest_delivery: age(s.oldest_pending_delivery),
        inbox_lag: age(s.oldest_pending_inbox),
    };
    Ok(html(StatusCode::OK, page.render()))
}

pub struct ConnectionRow {
    pub seller_id: String,
    pub platform: &'static str,
    pub status: &'static str,
    pub suspended_reason: Option<&'static str>,
    pub account_id: i64,
    pub host: String,
    pub token_expires_at: String,
    pub last_refreshed_at: String,
    pub refresh_failures: i32,
    pub last_error: Option<String>,
    /// How far the account's set-up has got, while it is not complete.
    pub setup: Option<&'static str>,
    pub provisioning_error: Option<String>,
    pub connected_at: String,
    pub revoke_reason: Option<String>,
    /// An operator may refresh its tokens (it is not revoked).
    pub refreshable: bool,
    /// Only a new consent brings it back: the operator may hand the seller a connect link.
    pub needs_consent: bool,
}

impl ConnectionRow {
    fn new(c: q::ConnectionView, clock: &Clock) -> Self {
        use ConnectionStatus::{RefreshFailed, Revoked};
        Self {
            seller_id: c.seller_id,
            platform: c.platform.as_str(),
            status: c.status.as_str(),
            suspended_reason: c.suspended_reason.map(SuspendReason::as_str),
            account_id: c.account_id,
            host: c.host,
            token_expires_at: clock.time_opt(c.token_expires_at),
            last_refreshed_at: clock.time_opt(c.last_refreshed_at),
            refresh_failures: c.refresh_failures,
            last_error: c.last_error,
            setup: (c.provisioning_state != ProvisioningState::Complete)
                .then(|| c.provisioning_state.as_str()),
            provisioning_error: c.provisioning_error,
            connected_at: clock.time(c.connected_at),
            revoke_reason: c.revoke_reason,
            refreshable: c.status != Revoked,
            needs_consent: matches!(c.status, Revoked | RefreshFailed),
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/connections.html")]
struct ConnectionsPage {
    nav: Nav,
    rows: Vec<ConnectionRow>,
    /// The status filter; an unknown value in the query shows every connection.
    status: Option<ConnectionStatus>,
    list: Listing,
    can_write: bool,
}

pub async fn connections(v: Viewer) -> Result<HttpResponse, DashError> {
    let query = ListQuery::parse(&v.req);
    let status = query.status.as_deref().and_then(ConnectionStatus::parse);
    let page = query.page();
    let search = query.search();
    let (rows, total) = dashboard::connections(&v.state.db, status, search.clone(), page).await?;
    let list = Listing::filtered(
        "/dashboard/connections",
        "status",
        CONNECTION_STATUSES,
        status.map(ConnectionStatus::as_str),
        search,
        page,
        total,
    );
    let body = ConnectionsPage {
        nav: v.nav("connections"),
        rows: rows
            .into_iter()
            .map(|c| ConnectionRow::new(c, &v.signed.clock))
            .collect(),
        status,
        list,
        can_write: v.can_write(),
    }
    .render();
    Ok(html(StatusCode::OK, body))
}

/// One state change on a connection's page.
pub struct TimelineRow {
    pub at: String,
    pub event: String,
    pub data: String,
}

#[derive(Template)]
#[template(path = "dashboard/connection.html")]
struct ConnectionDetailPage {
    nav: Nav,
    c: crate::storage::connections::Connection,
    token_expires_at: String,
    last_refreshed_at: String,
    connected_at: String,
    suspended_at: String,
    health_state: String,
    last_success_at: String,
    last_failure_at: String,
    last_failure_class: Option<String>,
    last_failure: Option<String>,
    timeline: Vec<TimelineRow>,
    can_write: bool,
}

/// `/dashboard/connections/{seller_id}`: one connection, its health and the timeline of its state changes.
pub async fn connection(path: web::Path<String>, v: Viewer) -> Result<HttpResponse, DashError> {
    let page = dashboard::connection(&v.state.db, &path)
        .await?
        .ok_or(DashError::NotFound)?;
    let clock = &v.signed.clock;
    let c = page.connection;
    let h = page.health;
    let health_state = HealthState::of(c.status, h.as_ref().map(|h| h.state)).to_string();
    let body = ConnectionDetailPage {
        nav: v.nav("connections"),
        token_expires_at: clock.time_opt(c.token_expires_at),
        last_refreshed_at: clock.time_opt(c.last_refreshed_at),
        connected_at: clock.time(c.connected_at),
        suspended_at: clock.time_opt(c.suspended_at),
        health_state,
        last_success_at: clock.time_opt(h.as_ref().and_then(|h| h.last_success_at)),
        last_failure_at: clock.time_opt(h.as_ref().and_then(|h| h.last_failure_at)),
        last_failure_class: h.as_ref().and_then(|h| h.last_failure_class.clone()),
        last_failure: h.as_ref().and_then(|h| h.last_failure.clone()),
        timeline: page
            .timeline
            .into_iter()
            .map(|e| TimelineRow {
                at: clock.time(e.created_at),
                data: event_data(&e.payload),
                event: e.event,
            })
            .collect(),
        can_write: v.can_write(),
        c,
    }
    .render();
    Ok(html(StatusCode::OK, body))
}

pub struct OrderRow {
    pub id: String,
    pub seller_id: String,
    pub order_number: String,
    pub status: &'static str,
    /// What the lead last was in amoCRM: the marketplace status its stage is mapped to, or its stage id.
    pub lead_stage: Option<String>,
    pub paid: bool,
    pub amount: String,
    pub currency: String,
    pub sync_state: &'static str,
    /// An operator may queue it again: it failed, or waited for a connection that is back.
    pub retryable: bool,
    pub lead_id: Option<i64>,
    pub sync_attempts: i32,
    pub last_error: Option<String>,
    pub synced_at: String,
    pub created_at: String,
}

/// Minor units as a decimal amount (`123456` → `1234.56`).
fn amount(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let m = minor.unsigned_abs();
    format!("{sign}{}.{:02}", m / 100, m % 100)
}

#[derive(Template)]
#[template(path = "dashboard/orders.html")]
struct OrdersPage {
    nav: Nav,
    rows: Vec<OrderRow>,
    /// The sync-state filter; an unknown value in the query shows every order.
    sync_state: Option<SyncState>,
    list: Listing,
    can_write: bool,
}

pub async fn orders(v: Viewer) -> Result<HttpResponse, DashError> {
    let query = ListQuery::parse(&v.req);
    let sync_state = query.sync_state.as_deref().and_then(SyncState::parse);
    let page = query.page();
    let search = query.search();
    let (rows, total) = dashboard::orders(&v.state.db, sync_state, search.clone(), page).await?;
    let clock = v.signed.clock;
    let list = Listing::filtered(
        "/dashboard/orders",
        "sync_state",
        SYNC_STATES,
        sync_state.map(SyncState::as_str),
        search,
        page,
        total,
    );
    let body = OrdersPage {
        nav: v.nav("orders"),
        rows: rows
            .into_iter()
            .map(|listed| {
                let o = listed.order;
                OrderRow {
                    lead_stage: listed.lead_stage,
                    paid: listed.paid,
                    amount: amount(o.total_amount_minor),
                    synced_at: clock.time_opt(o.synced_at),
                    created_at: clock.time(o.created_at),
                    id: o.id,
                    seller_id: o.seller_id,
                    order_number: o.order_number,
                    status: o.status.as_str(),
                    currency: o.currency,
                    retryable: o.sync_state.can_retry(),
                    sync_state: o.sync_state.as_str(),
                    lead_id: o.lead_id,
                    sync_attempts: o.sync_attempts,
                    last_error: o.last_error,
                }
            })
            .collect(),
        sync_state,
        list,
        can_write: v.can_write(),
    }
    .render();
    Ok(html(StatusCode::OK, body))
}

#[derive(Template)]
#[template(path = "dashboard/order.html")]
struct OrderDetailPage {
    nav: Nav,
    o: crate::storage::orders::OrderRow,
    host: Option<String>,
    amount: String,
    lead_url: Option<String>,
    lead_stage: Option<String>,
    paid: bool,
    synced_at: String,
    /// When the push tries it next, while it is queued.
    next_attempt_at: Option<String>,
    created_at: String,
    /// Product name, product id (and SKU), quantity, price.
    items: Vec<(String, String, i64, String)>,
    customer: Vec<(&'static str, String)>,
    comment: Option<String>,
    /// Each entry with its time as the operator reads it.
    history: Vec<(String, q::OrderHistoryRow)>,
    can_write: bool,
}

/// `/dashboard/orders/{id}`: one order, its items and buyer, its lead in amoCRM (linked, with the stage
/// and paid state last seen) and its timeline of events, stage moves and follow-up steps.
pub async fn order(path: web::Path<String>, v: Viewer) -> Result<HttpResponse, DashError> {
    let page = dashboard::order(
        &v.state.db,
        &v.state.settings.amocrm_account_url_template,
        &path,
    )
    .await?
    .ok_or(DashError::NotFound)?;
    let clock = &v.signed.clock;
    let o = page.order;
    let (items, customer, comment) = match &page.draft {
        Some(d) => {
            let items = d
                .items
                .iter()
                .map(|i| {
                    let id = match &i.sku {
                        Some(sku) => format!("{} · SKU {sku}", i.product_id),
                        None => i.product_id.clone(),
                    };
                    (i.name.clone(), id, i.quantity, i.price.to_string())
                })
                .collect();
            let c = &d.customer;
            let customer = [
                ("name", Some(c.display_name())),
                ("phone", c.phone.clone()),
                ("email", c.email.clone()),
                ("company", c.company.clone()),
                ("marketplace id", c.id.clone()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v)))
            .collect();
            (items, customer, d.comment.clone())
        }
        None => (Vec::new(), Vec::new(), None),
    };
    let body = OrderDetailPage {
        nav: v.nav("orders"),
        host: page.connection.as_ref().map(|c| c.host.clone()),
        amount: amount(o.total_amount_minor),
        lead_url: page.lead_url,
        lead_stage: page.lead_stage.map(str::to_owned).or_else(|| {
            page.lead
                .as_ref()
                .and_then(|l| l.status_id)
                .map(|id| format!("id {id}"))
        }),
        paid: page.lead.as_ref().is_some_and(|l| l.paid),
        synced_at: clock.time_opt(o.synced_at),
        next_attempt_at: (o.sync_state == SyncState::Queued).then(|| clock.time(o.next_attempt_at)),
        created_at: clock.time(o.created_at),
        items,
        customer,
        comment,
        history: page
            .history
            .into_iter()
            .map(|h| (clock.time(h.at), h))
            .collect(),
        can_write: v.can_write(),
        o,
    }
    .render();
    Ok(html(StatusCode::OK, body))
}

pub struct DeliveryRow {
    pub state: DeliveryState,
    pub subscription_id: String,
    pub url: String,
    /// Where the delivery stands, in words: when it went out, or why and when it goes out next.
    pub summary: String,
    pub last_error: Option<String>,
}

impl DeliveryRow {
    fn new(d: &q::DeliveryView, clock: &Clock) -> Self {
        let status = d.last_status.map(|s| format!("HTTP {s}"));
        let tries = |n: i64| match n {
            1 => "1 attempt".to_owned(),
            n => format!("{n} attempts"),
        };
        let summary = match d.state {
            DeliveryState::Delivered => format!(
                "delivered {}{} after {}",
                clock.time_opt(d.delivered_at),
                status.map(|s| format!(" ({s})")).unwrap_or_default(),
                tries(i64::from(d.attempts).max(1)),
            ),
            DeliveryState::Failed => format!(
                "gave up after {}{}",
                tries(i64::from(d.attempts)),
                status
                    .map(|s| format!(", last answer {s}"))
                    .unwrap_or_default(),
            ),
            DeliveryState::Pending if d.attempts > 0 => format!(
                "{} failed{}; next attempt {}",
                tries(i64::from(d.attempts)),
                status
                    .map(|s| format!(" (last answer {s})"))
                    .unwrap_or_default(),
                clock.time(d.next_attempt_at),
            ),
            DeliveryState::Pending if d.attempts_ever > 0 => format!(
                "sent again on request, due {}; {} before",
                clock.time(d.next_attempt_at),
                tries(d.attempts_ever),
            ),
            DeliveryState::Pending => format!("queued, due {}", clock.time(d.next_attempt_at)),
        };
        Self {
            state: d.state,
            subscription_id: d.subscription_id.clone(),
            url: d.url.clone(),
            summary,
            last_error: d.last_error.clone(),
        }
    }
}

pub struct EventRow {
    pub id: String,
    pub event: String,
    pub seller_id: String,
    pub data: Vec<(String, String)>,
    pub created_at: String,
    pub deliveries: Vec<DeliveryRow>,
    /// Some delivery failed: the event-wide button sends those again (and only those).
    pub has_failed: bool,
}

/// The event's `data` as labelled fields for reading: strings unquoted, nested values as compact JSON,
/// each bounded for a table cell.
fn data_fields(payload: &str) -> Vec<(String, String)> {
    let Some(serde_json::Value::Object(data)) = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("data").cloned())
    else {
        return Vec::new();
    };
    data.into_iter()
        .map(|(k, v)| {
            let text = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => "—".to_owned(),
                other => other.to_string(),
            };
            (k, bounded(&text, 160))
        })
        .collect()
}

fn bounded(text: &str, max: usize) -> String {
    if text.chars().count() > max {
        let mut s: String = text.chars().take(max).collect();
        s.push('…');
        s
    } else {
        text.to_owned()
    }
}

/// The event's `data`, compact and bounded for a table cell.
fn event_data(payload: &str) -> String {
    let data = serde_json::from_str::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v.get("data").cloned())
        .map(|d| d.to_string())
        .unwrap_or_default();
    bounded(&data, 300)
}

#[derive(Template)]
#[template(path = "dashboard/events.html")]
struct EventsPage {
    nav: Nav,
    rows: Vec<EventRow>,
    failed_only: bool,
    list: Listing,
    can_write: bool,
}

pub async fn events(v: Viewer) -> Result<HttpResponse, DashError> {
    let query = ListQuery::parse(&v.req);
    let failed_only = query.failed.as_deref() == Some("1");
    let page = query.page();
    let (events, deliveries, total) = dashboard::events(&v.state.db, failed_only, page).await?;
    let clock = v.signed.clock;
    let rows = events
        .into_iter()
        .map(|e| {
            let deliveries: Vec<DeliveryRow> = deliveries
                .iter()
                .filter(|d| d.event_seq == e.seq)
                .map(|d| DeliveryRow::new(d, &clock))
                .collect();
            EventRow {
                has_failed: deliveries.iter().any(|d| d.state == DeliveryState::Failed),
                data: data_fields(&e.payload),
                created_at: clock.time(e.created_at),
                id: e.id,
                event: e.event,
                seller_id: e.seller_id,
                deliveries,
            }
        })
        .collect();
    let body = EventsPage {
        nav: v.nav("events"),
        rows,
        failed_only,
        list: Listing {
            total,
            search: None,
            pager: pager(
                "/dashboard/events",
                failed_only.then_some(("failed", "1")),
                None,
                page,
                total,
            ),
            filters: vec![
                Filter {
                    href: "/dashboard/events".into(),
                    label: "all".into(),
                    current: !failed_only,
                },
                Filter {
                    href: "/dashboard/events?failed=1".into(),
                    label: "with failed deliveries".into(),
                    current: failed_only,
                },
            ],
        },
        can_write: v.can_write(),
    }
    .render();
    Ok(html(StatusCode::OK, body))
}

#[derive(Template)]
#[template(path = "dashboard/subscription.html")]
pub struct SubscriptionPage {
    pub nav: Nav,
    pub s: crate::services::subscriptions::SubscriptionView,
    pub created_at: String,
    /// The form's values: what was saved, or what the operator sent when it was refused.
    pub url: String,
    pub events: String,
    pub known: String,
    /// A test event's outcome: delivered, its status or error, its duration.
    pub tested: Option<(bool, &'static str, String)>,
    pub error: Option<String>,
    pub can_write: bool,
}

impl SubscriptionPage {
    pub fn new(
        req: &HttpRequest,
        state: &Context,
        signed: &Signed,
        s: crate::services::subscriptions::SubscriptionView,
    ) -> Self {
        let created = chrono::DateTime::parse_from_rfc3339(&s.created_at)
            .map(|t| signed.clock.time(t.naive_utc()))
            .unwrap_or_else(|_| s.created_at.clone());
        Self {
            nav: Nav::new(signed, state, "subscriptions", req),
            created_at: created,
            url: s.url.clone(),
            events: s.events.join(", "),
            known: crate::domain::events::EventKind::names().join(", "),
            tested: None,
            error: None,
            can_write: signed.operator.role.can_write(),
            s,
        }
    }

    pub fn render_page(&self) -> HttpResponse {
        html(StatusCode::OK, self.render())
    }
}

/// `/dashboard/subscriptions/{id}`: one subscription, to edit, pause or test.
pub async fn subscription(path: web::Path<String>, v: Viewer) -> Result<HttpResponse, DashError> {
    let s = crate::services::subscriptions::get(&v.state.db, &path).await?;
    Ok(SubscriptionPage::new(&v.req, &v.state, &v.signed, s).render_page())
}

pub struct SubscriptionRow {
    pub id: String,
    pub url: String,
    pub events: String,
    pub active: bool,
    pub created_at: String,
    pub deliveries: Vec<(String, i64)>,
}

#[derive(Template)]
#[template(path = "dashboard/subscriptions.html")]
struct SubscriptionsPage {
    nav: Nav,
    rows: Vec<SubscriptionRow>,
}

pub async fn subscriptions(v: Viewer) -> Result<HttpResponse, DashError> {
    let subs = dashboard::subscriptions(&v.state.db).await?;
    let clock = v.signed.clock;
    let body = SubscriptionsPage {
        nav: v.nav("subscriptions"),
        rows: subs
            .into_iter()
            .map(|s| SubscriptionRow {
                created_at: clock.time(s.created_at),
                events: s.events.replace(',', ", "),
                id: s.id,
                url: s.url,
                active: s.active,
                deliveries: s.deliveries,
            })
            .collect(),
    }
    .render();
    Ok(html(StatusCode::OK, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_print_minor_units_as_decimals() {
        assert_eq!(amount(123_456), "1234.56");
        assert_eq!(amount(5), "0.05");
        assert_eq!(amount(-250), "-2.50");
    }
}
