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

/// Rows of `table` per value of `column`, as `(value, rows)`.
macro_rules! count_by {
    ($c:expr, $table:ident :: $column:ident) => {
        $table::table
            .group_by($table::$column)
            .select(($table::$column, count_star()))
            .load($c)?
    };
}

/// The earliest `table::time` among the rows that match `filter`: how long the oldest waiting work waits.
macro_rules! oldest {
    ($c:expr, $table:ident :: $time:ident, $filter:expr) => {
        $table::table
            .filter($filter)
            .select(min($table::$time))
            .first($c)?
    };
}

/// Reads every figure in one short read transaction (a consistent picture on PostgreSQL).
pub fn snapshot(conn: &mut AnyConnection) -> Result<Stats, StorageError> {
    conn.transaction(|c| {
        Ok(Stats {
            connections_by_status: count_by!(c, amocrm_connections::status),
            orders_by_sync_state: count_by!(c, orders::sync_state),
            oldest_queued_order: oldest!(
                c,
                orders::created_at,
                orders::sync_state.eq(SyncState::Queued)
            ),
            order_moves_by_state: count_by!(c, order_moves::state),
            deliveries_by_state: count_by!(c, event_deliveries::state),
            oldest_pending_delivery: oldest!(
                c,
                event_deliveries::created_at,
                event_deliveries::state.eq(DeliveryState::Pending)
            ),
            inbox_by_state: count_by!(c, amocrm_webhook_inbox::state),
            oldest_pending_inbox: oldest!(
                c,
                amocrm_webhook_inbox::received_at,
                amocrm_webhook_inbox::state.eq(InboxState::Pending)
            ),
            events_total: events::table.select(count_star()).first(c)?,
            jobs_last_finished: job_leases::table
                .select((job_leases::name, job_leases::last_finished_at))
                .order(job_leases::name.asc())
                .load(c)?,
        })
    })
}
