//! Orders from the marketplace: accepting them (validated, idempotent, stored before acknowledged), reading
//! them with their sync state, status changes (queued stage moves), retries and releasing held orders.
//!
//! Pushing them to amoCRM is [`crate::services::order_push`]'s job; this module only writes the queue.

use chrono::SecondsFormat;
use serde::Serialize;
use serde_json::Value;

use crate::domain::buyer::ContactMatch;
use crate::domain::ids::{SellerId, prefixed_id};
use crate::domain::order::{FieldErrors, Money, OrderDraft, StepKind, StepState, SyncState};
use crate::domain::status::{ConnectionStatus, OrderStatus};
use crate::services::Context;
use crate::storage::orders::{NewOrder, OrderFilter, OrderRow};
use crate::storage::steps::StepRow;
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

/// The order object of docs/CONTRACT.md §6.
#[derive(Debug, Clone, Serialize)]
pub struct OrderView {
    pub id: String,
    pub seller_id: String,
    pub order_number: String,
    pub status: OrderStatus,
    pub total_amount: Value,
    pub currency: String,
    pub created_at: String,
    pub updated_at: String,
    pub sync: SyncView,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncView {
    pub state: SyncState,
    pub lead_id: Option<i64>,
    pub contact_id: Option<i64>,
    pub company_id: Option<i64>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub synced_at: Option<String>,
    /// The order note on the lead, once written.
    pub note_id: Option<i64>,
    /// Products linked to the lead with their quantities.
    pub products_linked: Option<i32>,
    pub task_id: Option<i64>,
    /// How the buyer's contact was found: `phone`, `email`, or `none` (a new contact).
    pub contact_matched: Option<ContactMatch>,
    pub responsible_user_id: Option<i64>,
    /// Each lead step and where it stands (`contact`, `note`, `products`, `task`).
    pub steps: Vec<StepView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    pub step: StepKind,
    pub state: StepState,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// "must be one of a, b, c", from the enum's own spellings.
fn one_of<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    format!(
        "must be one of {}",
        names.into_iter().collect::<Vec<_>>().join(", ")
    )
}

fn rfc3339(t: chrono::NaiveDateTime) -> String {
    from_db(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl From<&OrderRow> for OrderView {
    fn from(r: &OrderRow) -> Self {
        Self::with_steps(r, &[])
    }
}

impl OrderView {
    /// The order with what its lead steps produced.
    pub fn with_steps(r: &OrderRow, steps: &[StepRow]) -> Self {
        let result = |k: StepKind| {
            steps
                .iter()
                .find(|s| s.step == k && s.state == StepState::Done)
        };
        Self {
            id: r.id.clone(),
            seller_id: r.seller_id.clone(),
            order_number: r.order_number.clone(),
            status: r.status,
            total_amount: Money::from_minor(r.total_amount_minor).to_json(),
            currency: r.currency.clone(),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            sync: SyncView {
                state: r.sync_state,
                lead_id: r.lead_id,
                contact_id: r.contact_id,
                company_id: r.company_id,
                attempts: r.sync_attempts,
                last_error: r.last_error.clone(),
                synced_at: r.synced_at.map(rfc3339),
                note_id: result(StepKind::Note).and_then(|s| s.result_id),
                products_linked: result(StepKind::Products).and_then(|s| s.result_count),
                task_id: result(StepKind::Task).and_then(|s| s.result_id),
                contact_matched: r.buyer.contact_matched,
                responsible_user_id: r.buyer.responsible_user_id,
                steps: steps
                    .iter()
                    .map(|s| StepView {
                        step: s.step,
                        state: s.state,
                        attempts: s.attempts,
                        last_error: s.last_error.clone(),
                    })
                    .collect(),
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
#[tracing::instrument(skip_all, fields(seller_id = tracing::field::Empty, order_id = tracing::field::Empty))]
pub async fn create(state: &Context, body: &Value) -> Result<Accepted, OrderError> {
    let draft = OrderDraft::parse(body).map_err(OrderError::Validation)?;
    tracing::Span::current().record("seller_id", draft.seller_id.as_str());
    let seller = draft.seller_id.as_str().to_owned();
    let number = draft.order_number.clone();
    let hash = draft.body_hash();

    // A repeat is answered without touching the connection (it may have changed since).
    if let Some(existing) = find_existing(&state.db, &seller, &number).await? {
        return same_or_conflict(existing, &hash);
    }

    let connection = state
        .db
        .connections()
        .by_seller(&seller)
        .await?
        .ok_or_else(|| {
            OrderError::field(
                "seller_id",
                "this seller has not connected amoCRM; send the seller a connect link first",
            )
        })?;
    let sync_state = match connection.status {
        ConnectionStatus::Active => SyncState::Queued,
        _ => SyncState::Held,
    };
    let now = crate::storage::now();
    let new = NewOrder {
        id: prefixed_id("ord"),
        seller_id: seller.clone(),
        order_number: number.clone(),
        status: draft.status,
        total_amount_minor: draft.total_amount.minor(),
        currency: draft.currency.clone(),
        body_json: draft.canonical_json(),
        body_hash: hash.clone(),
        sync_state,
        sync_attempts: 0,
        next_attempt_at: now,
        needs_lookup: false,
        created_at: now,
        updated_at: now,
    };
    match state.db.orders().insert(new).await {
        Ok(row) => {
            tracing::Span::current().record("order_id", row.id.as_str());
            tracing::info!(sync_state = row.sync_state.as_str(), "order accepted");
            if row.sync_state == SyncState::Queued {
                crate::services::order_push::new_work_signal().notify_one();
            }
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
    db.orders().by_number(seller, number).await
}

fn same_or_conflict(existing: OrderRow, hash: &str) -> Result<Accepted, OrderError> {
    if existing.body_hash == hash {
        Ok(Accepted::Existing(OrderView::from(&existing)))
    } else {
        Err(OrderError::Conflict(existing.order_number))
    }
}

#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn get(db: &Db, id: &str) -> Result<OrderView, OrderError> {
    let row = db.orders().find(id).await?.ok_or(OrderError::NotFound)?;
    let steps = db.steps().of_order(&row.id).await?;
    Ok(OrderView::with_steps(&row, &steps))
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
            Some(st) => f.status = Some(st),
            None => {
                errs.insert("status".into(), vec!["is not an order status".to_owned()]);
            }
        }
    }
    if let Some(s) = sync_state.filter(|s| !s.is_empty()) {
        match SyncState::parse(s) {
            Some(st) => f.sync_state = Some(st),
            None => {
                errs.insert(
                    "sync_state".into(),
                    vec![one_of(SyncState::ALL.iter().map(|s| s.as_str()))],
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

#[tracing::instrument(skip_all)]
pub async fn list(
    db: &Db,
    filter: OrderFilter,
    offset: i64,
    limit: i64,
) -> Result<(Vec<OrderView>, i64), OrderError> {
    let (rows, total) = db.orders().list(filter, offset, limit).await?;
    let steps = db
        .steps()
        .of_orders(rows.iter().map(|r| r.id.clone()).collect())
        .await?;
    let views = rows
        .iter()
        .map(|r| {
            let mine: Vec<StepRow> = steps
                .iter()
                .filter(|s| s.order_id == r.id)
                .cloned()
                .collect();
            OrderView::with_steps(r, &mine)
        })
        .collect();
    Ok((views, total))
}

/// Changes an order's status; the lead is moved to the mapped stage by the push worker (moves of one order
/// are applied in the order they were asked for).
#[tracing::instrument(skip_all, fields(order_id = %id))]
pub async fn change_status(db: &Db, id: &str, body: &Value) -> Result<OrderView, OrderError> {
    let status = match body.get("status") {
        Some(Value::String(s)) => OrderStatus::parse(s.trim()).ok_or_else(|| {
            OrderError::field("status", &one_of(OrderStatus::ALL.map(OrderStatus::as_str)))
        })?,
        Some(_) => return Err(OrderError::field("status", "must be a string")),
        None => return Err(OrderError::field("status", "is required")),
    };
    let row = db
        .orders()
        .change_status(id, status)
        .await?
        .ok_or(OrderError::NotFound)?;
    crate::services::order_push::new_work_signal().notify_one();
    Ok(OrderView::from(&row))
}

/// Queues a `failed` order (or a `held` one whose connection is active again) for another push. Queued
/// orders are left as they are; synced ones cannot be retried.
#[tracing::instrument(skip_all, fields(order_id = %id, seller_id = tracing::field::Empty))]
pub async fn retry(db: &Db, id: &str) -> Result<OrderView, OrderError> {
    let row = db.orders().find(id).await?.ok_or(OrderError::NotFound)?;
    tracing::Span::current().record("seller_id", row.seller_id.as_str());
    match row.sync_state {
        SyncState::Synced => {
            return Err(OrderError::NotRetryable(
                "the order is already synced to amoCRM".to_owned(),
            ));
        }
        SyncState::Queued => return Ok(OrderView::from(&row)),
        SyncState::Held | SyncState::Failed => {}
    }
    let row = db
        .orders()
        .retry(id, &row.seller_id)
        .await?
        .ok_or(OrderError::NotFound)?;
    crate::services::order_push::new_work_signal().notify_one();
    Ok(OrderView::from(&row))
}

/// Puts a seller's held orders back in the push queue. The connect flow calls this when a connection
/// becomes active again (the push worker also does it on its own for every active connection).
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn release_held(db: &Db, seller_id: &str) -> Result<usize, StorageError> {
    let n = db.orders().release_held(seller_id).await?;
    if n > 0 {
        tracing::info!(released = n, "held orders queued again");
        crate::services::order_push::new_work_signal().notify_one();
    }
    Ok(n)
}
