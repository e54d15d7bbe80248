//! Read-only aggregate queries for `/metrics` and the dashboard: counts by state and the age of the oldest
//! waiting work, computed from the tables at the moment they are asked for (so every instance reports
//! the same, shared truth).

use chrono::NaiveDateTime;
use diesel::dsl::{count_star, min};
use diesel::prelude::*;

use super::schema::{
    amocrm_connections, amocrm_webhook_inbox, event_deliveries, events, job_leases, order_moves,
    orders,
};
use super::{AnyConnection, StorageError};
use crate::domain::order::SyncState;
use crate::domain::status::{DeliveryState, InboxState};

/// One snapshot of the service's queues and states.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// `amocrm_connections.status` → rows.
    pub connections_by_status: Vec<(String, i64)>,
    /// `orders.sync_state` → rows.
    pub orders_by_sync_state: Vec<(String, i64)>,
    /// When the oldest order still `queued` was accepted.
    pub oldest_queued_order: Option<NaiveDateTime>,
    /// `order_moves.state` → rows.
    pub order_moves_by_state: Vec<(String, i64)>,
    /// `event_deliveries.state` → rows.
    pub deliveries_by_state: Vec<(String, i64)>,
    /// When the oldest delivery still `pending` was created.
    pub oldest_pending_delivery: Option<NaiveDateTime>,
    /// `amocrm_webhook_inbox.state` → rows.
    pub inbox_by_state: Vec<(String, i64)>,
    /// When the oldest webhook body still `pending` was received.
    pub oldest_pending_inbox: Option<NaiveDateTime>,
    /// Events in the log (after pruning).
    pub events_total: i64,
    /// Job name → when it last finished.
    pub jobs_last_finished: Vec<(String, Option<NaiveDateTime>)>,
}

/// Reads every figure in one short read transaction (a consistent picture on PostgreSQL).
pub fn snapshot(conn: &mut AnyConnection) -> Result<Stats, StorageError> {
    conn.transaction(|c| {
        Ok(Stats {
            connections_by_status: amocrm_connections::table
                .group_by(amocrm_connections::status)
                .select((amocrm_connections::status, count_star()))
                .load(c)?,
            orders_by_sync_state: orders::table
                .group_by(orders::sync_state)
                .select((orders::sync_state, count_star()))
                .load(c)?,
            oldest_queued_order: orders::table
                .filter(orders::sync_state.eq(SyncState::Queued))
                .select(min(orders::created_at))
                .first(c)?,
            order_moves_by_state: order_moves::table
                .group_by(order_moves::state)
                .select((order_moves::state, count_star()))
                .load(c)?,
            deliveries_by_state: event_deliveries::table
                .group_by(event_deliveries::state)
                .select((event_deliveries::state, count_star()))
                .load(c)?,
            oldest_pending_delivery: event_deliveries::table
                .filter(event_deliveries::state.eq(DeliveryState::Pending))
                .select(min(event_deliveries::created_at))
                .first(c)?,
            inbox_by_state: amocrm_webhook_inbox::table
                .group_by(amocrm_webhook_inbox::state)
                .select((amocrm_webhook_inbox::state, count_star()))
                .load(c)?,
            oldest_pending_inbox: amocrm_webhook_inbox::table
                .filter(amocrm_webhook_inbox::state.eq(InboxState::Pending))
                .select(min(amocrm_webhook_inbox::received_at))
                .first(c)?,
            events_total: events::table.select(count_star()).first(c)?,
            jobs_last_finished: job_leases::table
                .select((job_leases::name, job_leases::last_finished_at))
                .order(job_leases::name.asc())
                .load(c)?,
        })
    })
}
