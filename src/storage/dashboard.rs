//! Read-only lists for the operator dashboard: connections, orders, events with their deliveries, and
//! subscriptions, newest first, filtered by state. Never a token or a secret column.

use chrono::NaiveDateTime;
use diesel::dsl::count_star;
use diesel::prelude::*;

use super::schema::{
    amocrm_connections, delivery_attempts, event_deliveries, events, orders, webhook_subscriptions,
};
use super::{AnyConnection, Db, StorageError};
use crate::domain::status::DeliveryState;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = amocrm_connections)]
pub struct ConnectionView {
    pub seller_id: String,
    pub platform: String,
    pub status: String,
    pub suspended_reason: Option<String>,
    pub account_id: i64,
    pub host: String,
    pub subdomain: String,
    pub token_expires_at: Option<NaiveDateTime>,
    pub last_refreshed_at: Option<NaiveDateTime>,
    pub refresh_failures: i32,
    pub last_error: Option<String>,
    pub provisioning_state: String,
    pub provisioning_error: Option<String>,
    pub connected_at: NaiveDateTime,
    pub revoke_reason: Option<String>,
}

pub fn connections(
    conn: &mut AnyConnection,
    status: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<ConnectionView>, i64), StorageError> {
    let mut q = amocrm_connections::table.into_boxed();
    let mut n = amocrm_connections::table.into_boxed();
    if let Some(s) = status {
        q = q.filter(amocrm_connections::status.eq(s.to_owned()));
        n = n.filter(amocrm_connections::status.eq(s.to_owned()));
    }
    let rows = q
        .order(amocrm_connections::updated_at.desc())
        .then_order_by(amocrm_connections::id.desc())
        .limit(limit)
        .offset(offset)
        .select(ConnectionView::as_select())
        .load(conn)?;
    let total = n.select(count_star()).first(conn)?;
    Ok((rows, total))
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = orders)]
pub struct OrderView {
    pub id: String,
    pub seller_id: String,
    pub order_number: String,
    pub status: String,
    pub total_amount_minor: i64,
    pub currency: String,
    pub sync_state: String,
    pub lead_id: Option<i64>,
    pub sync_attempts: i32,
    pub last_error: Option<String>,
    pub synced_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

pub fn orders(
    conn: &mut AnyConnection,
    sync_state: Option<&str>,
    limit: i64,
    offset: i64,
) -> Result<(Vec<OrderView>, i64), StorageError> {
    let mut q = orders::table.into_boxed();
    let mut n = orders::table.into_boxed();
    if let Some(s) = sync_state {
        q = q.filter(orders::sync_state.eq(s.to_owned()));
        n = n.filter(orders::sync_state.eq(s.to_owned()));
    }
    let rows = q
        .order(orders::created_at.desc())
        .then_order_by(orders::id.desc())
        .limit(limit)
        .offset(offset)
        .select(OrderView::as_select())
        .load(conn)?;
    let total = n.select(count_star()).first(conn)?;
    Ok((rows, total))
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
    let counts: Vec<(i64, i64)> = delivery_attempts::table
        .filter(delivery_attempts::delivery_id.eq_any(&ids))
        .group_by(delivery_attempts::delivery_id)
        .select((delivery_attempts::delivery_id, count_star()))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| DeliveryView {
            attempts_ever: counts
                .iter()
                .find(|(id, _)| *id == r.0)
                .map_or(0, |(_, n)| *n),
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

/// The dashboard's read models: each call is one trip to the blocking pool.
pub struct Dashboard<'a> {
    db: &'a Db,
}

impl Db {
    pub fn dashboard(&self) -> Dashboard<'_> {
        Dashboard { db: self }
    }
}

impl Dashboard<'_> {
    pub async fn stats(&self) -> Result<super::stats::Stats, StorageError> {
        self.db.run(super::stats::snapshot).await
    }

    pub async fn connections(
        &self,
        status: Option<String>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<ConnectionView>, i64), StorageError> {
        self.db
            .run(move |c| connections(c, status.as_deref(), limit, offset))
            .await
    }

    pub async fn orders(
        &self,
        sync_state: Option<String>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<OrderView>, i64), StorageError> {
        self.db
            .run(move |c| orders(c, sync_state.as_deref(), limit, offset))
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
}
