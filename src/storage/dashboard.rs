//! Read-only lists for the operator dashboard: connections, orders, events with their deliveries, and
//! subscriptions, newest first, filtered by state. Never a token or a secret column.

use chrono::NaiveDateTime;
use diesel::dsl::count_star;
use diesel::prelude::*;

use super::schema::{
    amocrm_connections, delivery_attempts, event_deliveries, events, lead_states, order_moves,
    order_steps, orders, webhook_subscriptions,
};
use super::{AnyConnection, StorageError};
use crate::domain::order::SyncState;
use crate::domain::platform::Platform;
use crate::domain::stages::StageMap;
use crate::domain::status::{
    ConnectionStatus, DeliveryState, OrderStatus, ProvisioningState, SuspendReason,
};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = amocrm_connections)]
pub struct ConnectionView {
    pub seller_id: String,
    pub platform: Platform,
    pub status: ConnectionStatus,
    pub suspended_reason: Option<SuspendReason>,
    pub account_id: i64,
    pub host: String,
    pub subdomain: String,
    pub token_expires_at: Option<NaiveDateTime>,
    pub last_refreshed_at: Option<NaiveDateTime>,
    pub refresh_failures: i32,
    pub last_error: Option<String>,
    pub provisioning_state: ProvisioningState,
    pub provisioning_error: Option<String>,
    pub connected_at: NaiveDateTime,
    pub revoke_reason: Option<String>,
}

/// `text` for a LIKE pattern with `\` as the escape: its `%`, `_` and `\` taken literally.
fn like_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for ch in text.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// A LIKE pattern (escape `\`) matching values that start with `text`.
fn starts_with(text: &str) -> String {
    format!("{}%", like_literal(text))
}

/// A page of connections, optionally of one status and whose seller id or account host starts with
/// `search`.
pub fn connections(
    conn: &mut AnyConnection,
    status: Option<ConnectionStatus>,
    search: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<ConnectionView>, i64), StorageError> {
    let matching = || {
        let mut q = amocrm_connections::table.into_boxed::<super::MultiBackend>();
        if let Some(s) = status {
            q = q.filter(amocrm_connections::status.eq(s));
        }
        if let Some(text) = search {
            let p = starts_with(text);
            q = q.filter(
                amocrm_connections::seller_id
                    .like(p.clone())
                    .escape('\\')
                    .or(amocrm_connections::host.like(p).escape('\\')),
            );
        }
        q
    };
    let rows = matching()
        .order(amocrm_connections::updated_at.desc())
        .then_order_by(amocrm_connections::id.desc())
        .limit(limit)
        .offset(offset)
        .select(ConnectionView::as_select())
        .load(conn)?;
    let total = matching().select(count_star()).first(conn)?;
    Ok((rows, total))
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders)]
pub struct OrderView {
    pub id: String,
    pub seller_id: String,
    pub order_number: String,
    pub status: OrderStatus,
    pub total_amount_minor: i64,
    pub currency: String,
    pub sync_state: SyncState,
    pub lead_id: Option<i64>,
    pub sync_attempts: i32,
    pub last_error: Option<String>,
    pub synced_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// What the connector last knew of an order's lead: its amoCRM stage and whether it was paid.
#[derive(Debug, Clone, Queryable)]
pub struct LeadSeen {
    pub order_id: Option<String>,
    pub pipeline_id: Option<i64>,
    pub status_id: Option<i64>,
    pub paid: bool,
}

/// A seller and its order-status ↔ stage mapping.
pub type SellerStages = (String, StageMap);

/// A page of orders with the total, what is known of their leads, and their sellers' stage mappings.
pub struct OrderPage {
    pub rows: Vec<OrderView>,
    pub total: i64,
    pub leads: Vec<LeadSeen>,
    pub stages: Vec<SellerStages>,
}

/// A page of orders, optionally of one sync state and whose order number, id or seller id starts with
/// `search`, with the total and what is known of their leads.
pub fn orders(
    conn: &mut AnyConnection,
    sync_state: Option<SyncState>,
    search: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<OrderPage, StorageError> {
    let matching = || {
        let mut q = orders::table.into_boxed::<super::MultiBackend>();
        if let Some(s) = sync_state {
            q = q.filter(orders::sync_state.eq(s));
        }
        if let Some(text) = search {
            let p = starts_with(text);
            q = q.filter(
                orders::order_number
                    .like(p.clone())
                    .escape('\\')
                    .or(orders::seller_id.like(p.clone()).escape('\\'))
                    .or(orders::id.like(p).escape('\\')),
            );
        }
        q
    };
    let rows: Vec<OrderView> = matching()
        .order(orders::created_at.desc())
        .then_order_by(orders::id.desc())
        .limit(limit)
        .offset(offset)
        .select(OrderView::as_select())
        .load(conn)?;
    let total = matching().select(count_star()).first(conn)?;
    let ids: Vec<String> = rows.iter().map(|o| o.id.clone()).collect();
    let leads = lead_states::table
        .filter(lead_states::order_id.eq_any(ids))
        .select((
            lead_states::order_id,
            lead_states::pipeline_id,
            lead_states::status_id,
            lead_states::paid,
        ))
        .load(conn)?;
    let sellers: Vec<String> = rows.iter().map(|o| o.seller_id.clone()).collect();
    let stages = stage_maps(conn, &sellers)?;
    Ok(OrderPage {
        rows,
        total,
        leads,
        stages,
    })
}

/// The stage mappings of these sellers.
pub fn stage_maps(
    conn: &mut AnyConnection,
    sellers: &[String],
) -> Result<Vec<SellerStages>, StorageError> {
    use amocrm_connections as c;
    type Row = (
        String,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Row> = c::table
        .filter(c::seller_id.eq_any(sellers))
        .select((
            c::seller_id,
            c::pipeline_id,
            c::stage_pending,
            c::stage_awaiting_payment,
            c::stage_paid,
            c::stage_shipping,
            c::stage_completed,
            c::stage_cancelled,
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(
                seller,
                pipeline_id,
                pending,
                awaiting_payment,
                paid,
                shipping,
                completed,
                cancelled,
            )| {
                let map = StageMap {
                    pipeline_id,
                    pending,
                    awaiting_payment,
                    paid,
                    shipping,
                    completed,
                    cancelled,
                };
                (seller, map)
            },
        )
        .collect())
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events)]
pub struct EventView {
    pub seq: i64,
    pub id: String,
    pub event: String,
    pub seller_id: String,
    pub payload: String,
    pub created_at: NaiveDateTime,
}

#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub id: i64,
    pub event_seq: i64,
    pub subscription_id: String,
    pub url: String,
    pub state: DeliveryState,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: NaiveDateTime,
    pub delivered_at: Option<NaiveDateTime>,
    /// Every attempt ever made, across redeliveries (`attempts` restarts at each redelivery).
    pub attempts_ever: i64,
}

/// Newest events first; with `failed_only`, only events with a failed delivery.
pub fn events(
    conn: &mut AnyConnection,
    failed_only: bool,
    limit: i64,
    offset: i64,
) -> Result<(Vec<EventView>, i64), StorageError> {
    let failed_seqs = event_deliveries::table
        .filter(event_deliveries::state.eq(DeliveryState::Failed))
        .select(event_deliveries::event_seq);
    let mut q = events::table.into_boxed();
    let mut n = events::table.into_boxed();
    if failed_only {
        q = q.filter(events::seq.eq_any(failed_seqs));
        n = n.filter(events::seq.eq_any(failed_seqs));
    }
    let rows = q
        .order(events::seq.desc())
        .limit(limit)
        .offset(offset)
        .select(EventView::as_select())
        .load(conn)?;
    let total = n.select(count_star()).first(conn)?;
    Ok((rows, total))
}

/// The deliveries of these events, with their subscription's URL and how many attempts each ever had.
pub fn deliveries_of(
    conn: &mut AnyConnection,
    seqs: &[i64],
) -> Result<Vec<DeliveryView>, StorageError> {
    type Row = (
        i64,
        i64,
        String,
        String,
        DeliveryState,
        i32,
        Option<i32>,
        Option<String>,
        NaiveDateTime,
        Option<NaiveDateTime>,
    );
    let rows: Vec<Row> = event_deliveries::table
        .inner_join(webhook_subscriptions::table)
        .filter(event_deliveries::event_seq.eq_any(seqs))
        .order(event_deliveries::id.asc())
        .select((
            event_deliveries::id,
            event_deliveries::event_seq,
            event_deliveries::subscription_id,
            webhook_subscriptions::url,
            event_deliveries::state,
            event_deliveries::attempts,
            event_deliveries::last_status,
            event_deliveries::last_error,
            event_deliveries::next_attempt_at,
            event_deliveries::delivered_at,
        ))
        .load(conn)?;
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let counts: std::collections::HashMap<i64, i64> = delivery_attempts::table
        .filter(delivery_attempts::delivery_id.eq_any(&ids))
        .group_by(delivery_attempts::delivery_id)
        .select((delivery_attempts::delivery_id, count_star()))
        .load::<(i64, i64)>(conn)?
        .into_iter()
        .collect();
    Ok(rows
        .into_iter()
        .map(|r| DeliveryView {
            attempts_ever: counts.get(&r.0).copied().unwrap_or(0),
            id: r.0,
            event_seq: r.1,
            subscription_id: r.2,
            url: r.3,
            state: r.4,
            attempts: r.5,
            last_status: r.6,
            last_error: r.7,
            next_attempt_at: r.8,
            delivered_at: r.9,
        })
        .collect())
}

#[derive(Debug, Clone)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub events: String,
    pub active: bool,
    pub created_at: NaiveDateTime,
    /// Delivery state → count.
    pub deliveries: Vec<(String, i64)>,
}

pub fn subscriptions(conn: &mut AnyConnection) -> Result<Vec<SubscriptionView>, StorageError> {
    let subs: Vec<(String, String, String, bool, NaiveDateTime)> = webhook_subscriptions::table
        .order(webhook_subscriptions::created_at.desc())
        .select((
            webhook_subscriptions::id,
            webhook_subscriptions::url,
            webhook_subscriptions::events,
            webhook_subscriptions::active,
            webhook_subscriptions::created_at,
        ))
        .limit(500)
        .load(conn)?;
    let counts: Vec<(String, String, i64)> = event_deliveries::table
        .group_by((event_deliveries::subscription_id, event_deliveries::state))
        .select((
            event_deliveries::subscription_id,
            event_deliveries::state,
            count_star(),
        ))
        .load(conn)?;
    Ok(subs
        .into_iter()
        .map(|(id, url, events, active, created_at)| {
            let deliveries = counts
                .iter()
                .filter(|(s, _, _)| *s == id)
                .map(|(_, state, n)| (state.clone(), *n))
                .collect();
            SubscriptionView {
                id,
                url,
                events,
                active,
                created_at,
                deliveries,
            }
        })
        .collect())
}

/// One thing that happened to an order, for its timeline.
#[derive(Debug, Clone)]
pub struct OrderHistoryRow {
    pub at: NaiveDateTime,
    /// `event`, `move` or `step`.
    pub kind: &'static str,
    pub what: String,
    pub state: String,
    pub attempts: Option<i32>,
    pub error: Option<String>,
}

/// The order's timeline, newest first: its events (by the order id in their data), stage moves and the
/// lead's follow-up steps (note, products, task).
pub fn order_history(
    conn: &mut AnyConnection,
    order_id: &str,
    seller_id: &str,
) -> Result<Vec<OrderHistoryRow>, StorageError> {
    let quoted = serde_json::Value::from(order_id).to_string();
    let needle = format!("%{}%", like_literal(&format!("\"order_id\":{quoted}")));
    let evs: Vec<(String, String, NaiveDateTime)> = events::table
        .filter(events::seller_id.eq(seller_id))
        .filter(events::payload.like(needle).escape('\\'))
        .order(events::seq.desc())
        .limit(100)
        .select((events::event, events::id, events::created_at))
        .load(conn)?;
    let mut out: Vec<OrderHistoryRow> = evs
        .into_iter()
        .map(|(event, id, at)| OrderHistoryRow {
            at,
            kind: "event",
            what: event,
            state: id,
            attempts: None,
            error: None,
        })
        .collect();
    // The order's stage moves and lead steps: rows of `table`, `describe` saying what each does from its
    // `what` column.
    macro_rules! work {
        ($table:ident, $what:ident, $kind:literal, $describe:expr) => {
            $table::table
                .filter($table::order_id.eq(order_id))
                .select((
                    $table::$what,
                    $table::state,
                    $table::attempts,
                    $table::last_error,
                    $table::updated_at,
                ))
                .load::<(String, String, i32, Option<String>, NaiveDateTime)>(conn)?
                .into_iter()
                .map(|(what, state, attempts, error, at)| OrderHistoryRow {
                    at,
                    kind: $kind,
                    what: ($describe)(what),
                    state,
                    attempts: Some(attempts),
                    error,
                })
        };
    }
    let to = |status| format!("move to {status}");
    out.extend(work!(order_moves, target_status, "move", to));
    out.extend(work!(order_steps, step, "step", std::convert::identity));
    out.sort_by_key(|h| std::cmp::Reverse(h.at));
    Ok(out)
}

aggregate_handle! {
    /// The dashboard's read models: each call is one trip to the blocking pool.
    Dashboard => dashboard
}

impl Dashboard<'_> {
    pub async fn stats(&self) -> Result<super::stats::Stats, StorageError> {
        self.db.run(super::stats::snapshot).await
    }

    pub async fn connections(
        &self,
        status: Option<ConnectionStatus>,
        search: Option<String>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<ConnectionView>, i64), StorageError> {
        self.db
            .run(move |c| connections(c, status, search.as_deref(), limit, offset))
            .await
    }

    pub async fn orders(
        &self,
        sync_state: Option<SyncState>,
        search: Option<String>,
        limit: i64,
        offset: i64,
    ) -> Result<OrderPage, StorageError> {
        self.db
            .run(move |c| orders(c, sync_state, search.as_deref(), limit, offset))
            .await
    }

    /// A page of events, their deliveries and the total count, read together.
    pub async fn events(
        &self,
        failed_only: bool,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<EventView>, Vec<DeliveryView>, i64), StorageError> {
        self.db
            .run(move |c| {
                let (events, total) = events(c, failed_only, limit, offset)?;
                let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
                let deliveries = deliveries_of(c, &seqs)?;
                Ok((events, deliveries, total))
            })
            .await
    }

    pub async fn subscriptions(&self) -> Result<Vec<SubscriptionView>, StorageError> {
        self.db.run(subscriptions).await
    }

    /// See [`order_history`].
    pub async fn order_history(
        &self,
        order_id: &str,
        seller_id: &str,
    ) -> Result<Vec<OrderHistoryRow>, StorageError> {
        let (o, s) = (order_id.to_owned(), seller_id.to_owned());
        self.db.run(move |c| order_history(c, &o, &s)).await
    }
}
