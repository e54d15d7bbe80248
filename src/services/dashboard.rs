//! The operator dashboard's read side: pages of connections, orders, events and subscriptions, and the
//! overview's counts. The web layer renders them; it never reads storage itself.

use crate::domain::events::EventKind;
use crate::domain::order::{OrderDraft, SyncState};
use crate::domain::status::{ConnectionStatus, OrderStatus};
use crate::storage::connections::Connection;
use crate::storage::dashboard::{
    ConnectionView, DeliveryView, EventView, LeadSeen, OrderHistoryRow, OrderPage as OrderRows,
    OrderView, SubscriptionView,
};
use crate::storage::events::EventRow;
use crate::storage::health::Health;
use crate::storage::lead_states::LeadState;
use crate::storage::orders::OrderRow;
use crate::storage::stats::Stats;
use crate::storage::{Db, StorageError};

/// The state changes of a connection shown on its page, newest first, at most this many.
pub const TIMELINE_LEN: i64 = 100;

/// One connection's page: the row, its health, and the timeline of its state changes (from the event log).
pub struct ConnectionPage {
    pub connection: Connection,
    pub health: Option<Health>,
    pub timeline: Vec<EventRow>,
}

/// The events that change what a connection is (every `connection.*` event of the catalogue).
fn connection_events() -> Vec<&'static str> {
    EventKind::names()
        .into_iter()
        .filter(|n| n.starts_with("connection."))
        .collect()
}

/// The page of the seller's connection; `None` when the seller never connected.
pub async fn connection(db: &Db, seller_id: &str) -> Result<Option<ConnectionPage>, StorageError> {
    let Some(connection) = db.connections().by_seller(seller_id).await? else {
        return Ok(None);
    };
    let health = db
        .health()
        .of(vec![connection.id])
        .await?
        .into_iter()
        .next();
    let timeline = db
        .events()
        .latest_of(seller_id, connection_events(), TIMELINE_LEN)
        .await?;
    Ok(Some(ConnectionPage {
        connection,
        health,
        timeline,
    }))
}

/// Rows on one dashboard page.
pub const PER_PAGE: i64 = 50;

fn offset(page: i64) -> i64 {
    (page.max(1) - 1) * PER_PAGE
}

pub async fn overview(db: &Db) -> Result<Stats, StorageError> {
    db.dashboard().stats().await
}

/// One page of connections, optionally of one status and matching a search, with the total.
pub async fn connections(
    db: &Db,
    status: Option<ConnectionStatus>,
    search: Option<String>,
    page: i64,
) -> Result<(Vec<ConnectionView>, i64), StorageError> {
    db.dashboard()
        .connections(status, search, PER_PAGE, offset(page))
        .await
}

/// One order of a list page, with what is known of its lead.
pub struct OrderListed {
    pub order: OrderView,
    /// The marketplace status the lead's amoCRM stage is mapped to, else the stage id.
    pub lead_stage: Option<String>,
    pub paid: bool,
}

/// One page of orders, optionally of one sync state and matching a search, with the total and what is
/// known of their leads.
pub async fn orders(
    db: &Db,
    sync_state: Option<SyncState>,
    search: Option<String>,
    page: i64,
) -> Result<(Vec<OrderListed>, i64), StorageError> {
    let OrderRows {
        rows,
        total,
        leads,
        stages,
    } = db
        .dashboard()
        .orders(sync_state, search, PER_PAGE, offset(page))
        .await?;
    let listed = rows
        .into_iter()
        .map(|order| {
            let lead = leads
                .iter()
                .find(|l| l.order_id.as_deref() == Some(order.id.as_str()));
            let map = stages.iter().find(|(s, _)| *s == order.seller_id);
            let lead_stage = lead.and_then(|l| {
                let status = map.and_then(|(_, m)| m.status_of(l.pipeline_id, l.status_id));
                status
                    .map(|s| s.as_str().to_owned())
                    .or_else(|| l.status_id.map(|id| format!("stage {id}")))
            });
            OrderListed {
                paid: lead.is_some_and(|l: &LeadSeen| l.paid),
                lead_stage,
                order,
            }
        })
        .collect();
    Ok((listed, total))
}

/// One page of events with their deliveries, and the total.
pub async fn events(
    db: &Db,
    failed_only: bool,
    page: i64,
) -> Result<(Vec<EventView>, Vec<DeliveryView>, i64), StorageError> {
    db.dashboard()
        .events(failed_only, PER_PAGE, offset(page))
        .await
}

pub async fn subscriptions(db: &Db) -> Result<Vec<SubscriptionView>, StorageError> {
    db.dashboard().subscriptions().await
}

/// One order's page: the order with its items and buyer, the seller's connection, what the lead last
/// was in amoCRM, and the order's timeline.
pub struct OrderPage {
    pub order: OrderRow,
    /// The order as the marketplace sent it; `None` only for a body this version cannot read.
    pub draft: Option<OrderDraft>,
    pub connection: Option<Connection>,
    pub lead: Option<LeadState>,
    /// The lead's card in the seller's amoCRM.
    pub lead_url: Option<String>,
    /// The marketplace status whose stage the lead is in, when it is one of the mapped stages.
    pub lead_stage: Option<&'static str>,
    pub history: Vec<OrderHistoryRow>,
}

/// The page of one order; `None` when there is no such order.
pub async fn order(
    db: &Db,
    account_url_template: &str,
    order_id: &str,
) -> Result<Option<OrderPage>, StorageError> {
    let Some(order) = db.orders().find(order_id).await? else {
        return Ok(None);
    };
    let connection = db.connections().by_seller(&order.seller_id).await?;
    let lead = match order.lead_id {
        Some(id) => db.lead_states().find(&order.seller_id, id).await?,
        None => None,
    };
    let lead_url = match (&connection, order.lead_id) {
        (Some(c), Some(id)) => Some(format!(
            "{}/leads/detail/{id}",
            account_url_template.replace("{host}", &c.host)
        )),
        _ => None,
    };
    let lead_stage = match (&connection, &lead) {
        (Some(c), Some(l)) => c
            .stage_map()
            .status_of(l.pipeline_id, l.status_id)
            .map(OrderStatus::as_str),
        _ => None,
    };
    let history = db
        .dashboard()
        .order_history(&order.id, &order.seller_id)
        .await?;
    Ok(Some(OrderPage {
        draft: serde_json::from_str(&order.body_json).ok(),
        order,
        connection,
        lead,
        lead_url,
        lead_stage,
        history,
    }))
}
