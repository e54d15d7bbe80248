//! Orders from the marketplace: accepting them (validated, idempotent, stored before acknowledged), reading
//! them with their sync state, status changes (queued stage moves), retries and releasing held orders.
//!
//! Pushing them to amoCRM is [`crate::services::order_push`]'s job; this module only writes the queue.

use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::Value;

use crate::app::AppState;
use crate::domain::ids::{SellerId, prefixed_id};
use crate::domain::order::{FieldErrors, Money, OrderDraft, SyncState};
use crate::domain::status::{ConnectionStatus, OrderStatus};
use crate::storage::connections;
use crate::storage::orders::{self as store, NewOrder, OrderFilter, OrderRow};
use crate::storage::{Db, StorageError, from_db};

#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    #[error("the order has invalid fields")]
    Validation(FieldErrors),
    #[error("order {0} already exists with a different body")]
    Conflict(String),
    #[error("order not found")]
    NotFound,
    #[error("{0}")]
    NotRetryable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl OrderError {
    fn field(field: &str, message: &str) -> Self {
        let mut f = FieldErrors::new();
        f.insert(field.to_owned(), vec![message.to_owned()]);
        Self::Validation(f)
    }
}

/// The order object of CONTRACT §6.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    pub id: String,
    pub seller_id: String,
    pub order_number: String,
    pub status: String,
    pub total_amount: Value,
    pub currency: String,
    pub created_at: String,
    pub updated_at: String,
    pub sync: SyncView,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncView {
    pub state: String,
    pub lead_id: Option<i64>,
    pub contact_id: Option<i64>,
    pub company_id: Option<i64>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub synced_at: Option<String>,
}

fn rfc3339(t: chrono::NaiveDateTime) -> String {
    from_db(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl From<&OrderRow> for OrderView {
    fn from(r: &OrderRow) -> Self {
        Self {
            id: r.id.clone(),
            seller_id: r.seller_id.clone(),
            order_number: r.order_number.clone(),
            status: r.status.clone(),
            total_amount: Money::from_minor(r.total_amount_minor).to_json(),
            currency: r.currency.clone(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            sync: SyncView {
                state: r.sync_state.clone(),
                lead_id: r.lead_id,
                contact_id: r.contact_id,
                company_id: r.company_id,
                attempts: r.sync_attempts,
                last_error: r.last_error.clone(),
                synced_at: r.synced_at.map(rfc3339),
            },
        }
    }
}

/// What `POST` did: a new order was queued (202), or the same order already existed (200).
#[derive(Debug, Clone)]
pub enum Accepted {
    Created(OrderView),
    Existing(OrderView),
}

/// Validates and stores an order. The row is committed before this returns, so an acknowledged order is
/// never lost. Concurrent posts of one `(seller_id, order_number)` are decided by the UNIQUE constraint:
/// the loser reads the winner's row and answers as a repeat (same body) or a conflict (different body).
pub async fn create(state: &AppState, body: &Value) -> Result<Accepted, OrderError> {
    let draft = OrderDraft::parse(body).map_err(OrderError::Validation)?;
    let seller = draft.seller_id.as_str().to_owned();
    let number = draft.order_number.clone();
    let hash = draft.body_hash();

    // A repeat is answered without touching the connection (it may have changed since).
    if let Some(existing) = find_existing(&state.db, &seller, &number).await? {
        return same_or_conflict(existing, &hash);
    }

    let s = seller.clone();
    let connection = state
        .db
        .run(move |c| connections::find_by_seller(c, &s))
        .await?
        .ok_or_else(|| {
            OrderError::field(
                "seller_id",
                "this seller has not connected amoCRM; send the seller a connect link first",
            )
        })?;
    let sync_state = match ConnectionStatus::parse(&connection.status) {
        Some(ConnectionStatus::Active) => SyncState::Queued,
        _ => SyncState::Held,
    };
    let now = crate::storage::now();
    let new = NewOrder {
        id: prefixed_id("ord"),
        seller_id: seller.clone(),
        order_number: number.clone(),
        status: draft.status.as_str().to_owned(),
        total_amount_minor: draft.total_amount.minor(),
        currency: draft.currency.clone(),
        body_json: draft.canonical_json(),
        body_hash: hash.clone(),
        sync_state: sync_state.as_str().to_owned(),
        sync_attempts: 0,
        next_attempt_at: now,
        needs_lookup: false,
        created_at: now,
        updated_at: now,
    };
    match state.db.run(move |c| store::insert(c, &new)).await {
        Ok(row) => {
            tracing::info!(order_id = %row.id, seller_id = %seller, sync_state = %row.sync_state, "order accepted");
            Ok(Accepted::Created(OrderView::from(&row)))
        }
        Err(e) if e.is_unique_violation() => {
            let existing = find_existing(&state.db, &seller, &number)
                .await?
                .ok_or_else(|| {
                    StorageError::Other("order vanished after a unique violation".into())
                })?;
            same_or_conflict(existing, &hash)
        }
        Err(e) => Err(e.into()),
    }
}

async fn find_existing(
    db: &Db,
    seller: &str,
    number: &str,
) -> Result<Option<OrderRow>, StorageError> {
    let (s, n) = (seller.to_owned(), number.to_owned());
    db.run(move |c| store::find_by_number(c, &s, &n)).await
}

fn same_or_conflict(existing: OrderRow, hash: &str) -> Result<Accepted, OrderError> {
    if existing.body_hash == hash {
        Ok(Accepted::Existing(OrderView::from(&existing)))
    } else {
        Err(OrderError::Conflict(existing.order_number))
    }
}

pub async fn get(db: &Db, id: &str) -> Result<OrderView, OrderError> {
    let id = id.to_owned();
    db.run(move |c| store::find(c, &id))
        .await?
        .map(|r| OrderView::from(&r))
        .ok_or(OrderError::NotFound)
}

/// Validated list filters; an unknown status or sync state is a field error.
pub fn parse_filter(
    seller_id: Option<&str>,
    status: Option<&str>,
    sync_state: Option<&str>,
) -> Result<OrderFilter, OrderError> {
    let mut f = OrderFilter::default();
    let mut errs = FieldErrors::new();
    if let Some(s) = seller_id.filter(|s| !s.is_empty()) {
        match SellerId::parse(s) {
            Ok(id) => f.seller_id = Some(id.as_str().to_owned()),
            Err(m) => {
                errs.insert("seller_id".into(), vec![m.to_owned()]);
            }
        }
    }
    if let Some(s) = status.filter(|s| !s.is_empty()) {
        match OrderStatus::parse(s) {
            Some(st) => f.status = Some(st.as_str().to_owned()),
            None => {
                errs.insert("status".into(), vec!["is not an order status".to_owned()]);
            }
        }
    }
    if let Some(s) = sync_state.filter(|s| !s.is_empty()) {
        match SyncState::parse(s) {
            Some(st) => f.sync_state = Some(st.as_str().to_owned()),
            None => {
                errs.insert(
                    "sync_state".into(),
                    vec!["must be one of queued, synced, held, failed".to_owned()],
                );
            }
        }
    }
    if errs.is_empty() {
        Ok(f)
    } else {
        Err(OrderError::Validation(errs))
    }
}

pub async fn list(
    db: &Db,
    filter: OrderFilter,
    offset: i64,
    limit: i64,
) -> Result<(Vec<OrderView>, i64), OrderError> {
    let (rows, total) = db
        .run(move |c| store::list(c, &filter, offset, limit))
        .await?;
    Ok((rows.iter().map(OrderView::from).collect(), total))
}

/// Changes an order's status; the lead is moved to the mapped stage by the push worker (moves of one order
/// are applied in the order they were asked for).
pub async fn change_status(db: &Db, id: &str, body: &Value) -> Result<OrderView, OrderError> {
    let status = match body.get("status") {
        Some(Value::String(s)) => OrderStatus::parse(s.trim()).ok_or_else(|| {
            OrderError::field(
                "status",
                "must be one of pending, awaiting_payment, paid, shipping, completed, cancelled",
            )
        })?,
        Some(_) => return Err(OrderError::field("status", "must be a string")),
        None => return Err(OrderError::field("status", "is required")),
    };
    let id = id.to_owned();
    let row = db
        .run(move |c| store::change_status(c, &id, status.as_str()))
        .await?
        .ok_or(OrderError::NotFound)?;
    Ok(OrderView::from(&row))
}

/// Queues a `failed` order (or a `held` one whose connection is active again) for another push. Queued
/// orders are left as they are; synced ones cannot be retried.
pub async fn retry(db: &Db, id: &str) -> Result<OrderView, OrderError> {
    let oid = id.to_owned();
    let row = db
        .run(move |c| store::find(c, &oid))
        .await?
        .ok_or(OrderError::NotFound)?;
    match SyncState::parse(&row.sync_state) {
        Some(SyncState::Synced) => {
            return Err(OrderError::NotRetryable(
                "the order is already synced to amoCRM".to_owned(),
            ));
        }
        Some(SyncState::Queued) => return Ok(OrderView::from(&row)),
        _ => {}
    }
    let seller = row.seller_id.clone();
    let oid = id.to_owned();
    let row = db
        .run(move |c| {
            let active = connections::find_by_seller(c, &seller)?
                .is_some_and(|conn| conn.status == ConnectionStatus::Active.as_str());
            store::requeue(c, &oid, active)
        })
        .await?
        .ok_or(OrderError::NotFound)?;
    Ok(OrderView::from(&row))
}

/// Puts a seller's held orders back in the push queue. The connect flow calls this when a connection
/// becomes active again (the push worker also does it on its own for every active connection).
pub async fn release_held(db: &Db, seller_id: &str) -> Result<usize, StorageError> {
    let s = seller_id.to_owned();
    let n = db.run(move |c| store::release_held(c, &s)).await?;
    if n > 0 {
        tracing::info!(seller_id, released = n, "held orders queued again");
    }
    Ok(n)
}
