//! The operator dashboard's read side: pages of connections, orders, events and subscriptions, and the
//! overview's counts. The web layer renders them; it never reads storage itself.

use crate::domain::events::EventKind;
use crate::storage::connections::Connection;
use crate::storage::dashboard::{
    ConnectionView, DeliveryView, EventView, OrderView, SubscriptionView,
};
use crate::storage::events::EventRow;
use crate::storage::health::Health;
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

/// One page of connections, optionally of one status, with the total.
pub async fn connections(
    db: &Db,
    status: Option<String>,
    page: i64,
) -> Result<(Vec<ConnectionView>, i64), StorageError> {
    db.dashboard()
        .connections(status, PER_PAGE, offset(page))
        .await
}

/// One page of orders, optionally of one sync state, with the total.
pub async fn orders(
    db: &Db,
    sync_state: Option<String>,
    page: i64,
) -> Result<(Vec<OrderView>, i64), StorageError> {
    db.dashboard()
        .orders(sync_state, PER_PAGE, offset(page))
        .await
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
