//! `orders` (the push queue and each order's sync state) and `order_moves` (stage moves asked for by PATCH).
//!
//! Claims are conditional UPDATEs on lease columns, so several instances can share one database: the
//! account is claimed on its connection row (`push_lease_*`), its orders and moves on their own rows.
//! `needs_lookup` is set in the same UPDATE that claims an order for a `leads/complex` call and cleared only
//! when the call's outcome is known; an order found with it still set (ambiguous answer, crash, lost lease) is
//! looked up in amoCRM before it may be sent again. That flag is what makes "never a duplicate lead" hold.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::events::{self, NewEvent};
use super::schema::{
    amocrm_connections as c, buyer_scans as sc, order_moves as m, order_steps as st, orders as o,
};
use super::{AnyConnection, ExecuteOne, StorageError};
use crate::domain::buyer::ContactMatch;
use crate::domain::events::{OrderSyncFailed, OrderSynced};
use crate::domain::order::StepKind;
use crate::domain::order::{MoveState, SyncState};
use crate::domain::status::{ConnectionStatus, OrderStatus};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = o)]
pub struct OrderRow {
    pub id: String,
    pub seller_id: String,
    pub order_number: String,
    pub status: OrderStatus,
    pub total_amount_minor: i64,
    pub currency: String,
    pub body_json: String,
    pub body_hash: String,
    pub sync_state: SyncState,
    pub lead_id: Option<i64>,
    pub contact_id: Option<i64>,
    pub company_id: Option<i64>,
    pub sync_attempts: i32,
    pub last_error: Option<String>,
    pub synced_at: Option<NaiveDateTime>,
    pub next_attempt_at: NaiveDateTime,
    pub needs_lookup: bool,
    pub lease_owner: Option<String>,
    pub lease_until: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
    #[diesel(embed)]
    pub buyer: BuyerResolution,
}

/// How the order's buyer was resolved before its lead was sent; kept so a retry sends the same lead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Queryable, Selectable, AsChangeset)]
#[diesel(table_name = o, treat_none_as_null = true)]
pub struct BuyerResolution {
    pub buyer_resolved: bool,
    /// The existing contact to attach; `None` with `buyer_resolved`: a new contact is sent with the lead.
    pub buyer_contact_id: Option<i64>,
    pub buyer_company_id: Option<i64>,
    pub contact_matched: Option<ContactMatch>,
    pub responsible_user_id: Option<i64>,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = o)]
pub struct NewOrder {
    pub id: String,
    pub seller_id: String,
    pub order_number: String,
    pub status: OrderStatus,
    pub total_amount_minor: i64,
    pub currency: String,
    pub body_json: String,
    pub body_hash: String,
    pub sync_state: SyncState,
    pub sync_attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub needs_lookup: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = m)]
pub struct MoveRow {
    pub id: i64,
    pub order_id: String,
    pub target_status: OrderStatus,
    pub state: MoveState,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: NaiveDateTime,
    pub lease_owner: Option<String>,
    pub lease_until: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A claimed move with what the worker needs to send it.
#[derive(Debug, Clone)]
pub struct ClaimedMove {
    pub id: i64,
    pub order_id: String,
    pub target_status: OrderStatus,
    pub lead_id: i64,
    pub attempts: i32,
}

/// Filters of `GET /api/v1/sales/orders`.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub seller_id: Option<String>,
    pub status: Option<OrderStatus>,
    pub sync_state: Option<SyncState>,
}

aggregate_handle! {
    /// Orders and their stage moves, as the use cases see them: each call is one trip to the blocking pool.
    Orders => orders
}

/// Which due orders [`Orders::claim`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimFor {
    /// Orders to send: marked `needs_lookup` (a create is about to be sent) and the attempt counted.
    Send,
    /// Orders whose last send had no known outcome, to be looked up in amoCRM first.
    Lookup,
}

impl Orders<'_> {
    /// Stores a new order; a second one with the same `(seller_id, order_number)` is a unique violation.
    pub async fn insert(&self, new: NewOrder) -> Result<OrderRow, StorageError> {
        self.db.run(move |c| insert(c, &new)).await
    }

    pub async fn find(&self, id: &str) -> Result<Option<OrderRow>, StorageError> {
        self.db.run_with(id, find).await
    }

    /// See [`uncount_attempt`].
    pub async fn uncount_attempt(
        &self,
        ids: Vec<String>,
        owner: &str,
    ) -> Result<usize, StorageError> {
        self.db
            .run_with(owner, move |c, owner| uncount_attempt(c, &ids, owner))
            .await
    }

    pub async fn find_many(&self, ids: Vec<String>) -> Result<Vec<OrderRow>, StorageError> {
        self.db.run(move |c| find_many(c, &ids)).await
    }

    /// See [`save_buyers`]; returns the resolutions as stored (round-robin users filled in).
    pub async fn save_buyers(
        &self,
        seller_id: &str,
        owner: &str,
        resolved: Vec<(String, BuyerResolution)>,
        round_robin: Option<Vec<i64>>,
    ) -> Result<Vec<(String, BuyerResolution)>, StorageError> {
        let (seller, owner) = (seller_id.to_owned(), owner.to_owned());
        self.db
            .run(move |c| save_buyers(c, &seller, &owner, &resolved, round_robin.as_deref()))
            .await
    }

    /// The seller's order with the marketplace's number (repeats and conflicts of a `POST`).
    pub async fn by_number(
        &self,
        seller_id: &str,
        order_number: &str,
    ) -> Result<Option<OrderRow>, StorageError> {
        let (seller, number) = (seller_id.to_owned(), order_number.to_owned());
        self.db
            .run(move |c| find_by_number(c, &seller, &number))
            .await
    }

    /// A page of orders, newest first, and the total matching the filter.
    pub async fn list(
        &self,
        filter: OrderFilter,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<OrderRow>, i64), StorageError> {
        self.db.run(move |c| list(c, &filter, offset, limit)).await
    }

    /// Sets a new status and queues the stage move (see [`change_status`]).
    pub async fn change_status(
        &self,
        id: &str,
        status: OrderStatus,
    ) -> Result<Option<OrderRow>, StorageError> {
        self.db
            .run_with(id, move |c, id| change_status(c, id, status))
            .await
    }

    /// Queues a failed or held order again, held when the seller's connection is not active (see
    /// [`retry`]).
    pub async fn retry(&self, id: &str, seller_id: &str) -> Result<Option<OrderRow>, StorageError> {
        let (id, seller) = (id.to_owned(), seller_id.to_owned());
        self.db.run(move |c| retry(c, &id, &seller)).await
    }

    /// Queues a seller's held orders again; how many.
    pub async fn release_held(&self, seller_id: &str) -> Result<usize, StorageError> {
        self.db.run_with(seller_id, release_held).await
    }

    /// Holds or releases orders to match their connection's status; `(held, released)`.
    pub async fn sync_hold_states(&self) -> Result<(usize, usize), StorageError> {
        self.db.run(sync_hold_states).await
    }

    /// Holds every queued order of a seller whose connection is not usable; how many.
    pub async fn hold_seller(&self, seller_id: &str, reason: &str) -> Result<usize, StorageError> {
        let (seller, reason) = (seller_id.to_owned(), reason.to_owned());
        self.db.run(move |c| hold_seller(c, &seller, &reason)).await
    }

    /// Accounts with due work whose push lease is free, least recently served first.
    pub async fn due_accounts(
        &self,
        owner: &str,
        now: NaiveDateTime,
        limit: i64,
    ) -> Result<Vec<DueAccount>, StorageError> {
        self.db
            .run_with(owner, move |c, owner| due_accounts(c, owner, now, limit))
            .await
    }

    /// What the seller's account has due now (see [`AccountWork`]).
    pub async fn account_work(&self, seller_id: &str) -> Result<AccountWork, StorageError> {
        let seller = seller_id.to_owned();
        let now = super::now();
        self.db.run(move |c| account_work(c, &seller, now)).await
    }

    /// Takes the push leases of the free accounts among `ids` in one statement; the ids taken.
    pub async fn claim_accounts(
        &self,
        ids: Vec<i64>,
        owner: &str,
        now: NaiveDateTime,
        until: NaiveDateTime,
    ) -> Result<Vec<i64>, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                claim_accounts(c, &ids, owner, now, until)
            })
            .await
    }

    /// Extends our account lease; false if it was lost.
    pub async fn extend_account(
        &self,
        connection_id: i64,
        owner: &str,
        until: NaiveDateTime,
    ) -> Result<bool, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                extend_account(c, connection_id, owner, until)
            })
            .await
    }

    /// Ends our turn on an account (see [`release_account`]).
    pub async fn release_account(
        &self,
        connection_id: i64,
        owner: &str,
        not_before: NaiveDateTime,
        rest: bool,
    ) -> Result<(), StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                release_account(c, connection_id, owner, not_before, rest)
            })
            .await
    }

    /// Claims up to `limit` due orders of one seller, oldest due first.
    pub async fn claim(
        &self,
        seller_id: &str,
        owner: &str,
        until: NaiveDateTime,
        limit: i64,
        purpose: ClaimFor,
    ) -> Result<Vec<ClaimedOrder>, StorageError> {
        let (seller, owner) = (seller_id.to_owned(), owner.to_owned());
        let lookup = purpose == ClaimFor::Lookup;
        let now = super::now();
        self.db
            .run(move |c| claim_orders(c, &seller, &owner, now, until, limit, lookup))
            .await
    }

    /// Stores the leads of pushed or adopted orders with their `order.synced` events; how many.
    pub async fn mark_synced(
        &self,
        seller_id: &str,
        owner: &str,
        synced: Vec<SyncedOrder>,
    ) -> Result<usize, StorageError> {
        let (seller, owner) = (seller_id.to_owned(), owner.to_owned());
        self.db
            .run(move |c| mark_synced(c, &seller, &owner, &synced))
            .await
    }

    /// Fails one order for good with amoCRM's reason and records `order.sync_failed`.
    pub async fn mark_failed(
        &self,
        seller_id: &str,
        owner: &str,
        order_id: &str,
        reason: &str,
    ) -> Result<bool, StorageError> {
        let (seller, owner) = (seller_id.to_owned(), owner.to_owned());
        let (id, reason) = (order_id.to_owned(), reason.to_owned());
        self.db
            .run(move |c| mark_failed(c, &seller, &owner, &id, &reason))
            .await
    }

    /// Puts claimed orders back in the queue for `next_at` (see [`reschedule`]).
    pub async fn reschedule(
        &self,
        ids: Vec<String>,
        owner: &str,
        next_at: NaiveDateTime,
        error: Option<String>,
        needs_lookup: Option<bool>,
    ) -> Result<usize, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                reschedule(c, &ids, owner, next_at, error.as_deref(), needs_lookup)
            })
            .await
    }

    /// Claims due stage moves of one seller, each order's oldest first.
    pub async fn claim_moves(
        &self,
        seller_id: &str,
        owner: &str,
        until: NaiveDateTime,
        limit: i64,
    ) -> Result<Vec<ClaimedMove>, StorageError> {
        let (seller, owner) = (seller_id.to_owned(), owner.to_owned());
        let now = super::now();
        self.db
            .run(move |c| claim_moves(c, &seller, &owner, now, until, limit))
            .await
    }

    /// Ends claimed moves in `state` (done or failed); how many were still ours.
    pub async fn finish_moves(
        &self,
        ids: Vec<i64>,
        owner: &str,
        state: MoveState,
        error: Option<String>,
    ) -> Result<usize, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                end_moves(c, &ids, owner, MoveEnd::In(state), error.as_deref())
            })
            .await
    }

    /// Puts claimed moves back for another attempt at `next_at`.
    pub async fn reschedule_moves(
        &self,
        ids: Vec<i64>,
        owner: &str,
        next_at: NaiveDateTime,
        error: Option<String>,
    ) -> Result<usize, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                end_moves(c, &ids, owner, MoveEnd::DueAt(next_at), error.as_deref())
            })
            .await
    }

    /// Queued orders and pending moves left (tests and the benchmark drain until both are zero).
    pub async fn backlog(&self) -> Result<(i64, i64), StorageError> {
        self.db.run(backlog).await
    }

    /// When this instance can next do push work (see [`next_due`]).
    pub async fn next_due(&self, owner: &str) -> Result<Option<NaiveDateTime>, StorageError> {
        let owner = owner.to_owned();
        let now = super::now();
        self.db.run(move |c| next_due(c, &owner, now)).await
    }

    /// Every move of one order, oldest first.
    pub async fn moves_of(&self, order_id: &str) -> Result<Vec<MoveRow>, StorageError> {
        self.db.run_with(order_id, moves_of).await
    }
}

/// A transaction that holds the write lock from its first statement. On SQLite a deferred transaction that
/// reads and then writes fails at once with "database is locked" when another connection wrote in between
/// (the busy timeout does not apply to that upgrade); taking the lock first makes it wait its turn instead.
/// On PostgreSQL row locks do that job and nothing extra is sent.
fn write_transaction<T>(
    conn: &mut AnyConnection,
    f: impl FnOnce(&mut AnyConnection) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    conn.transaction(|conn| {
        if matches!(conn, AnyConnection::Sqlite(_)) {
            super::take_write_lock(conn)?;
        }
        f(conn)
    })
}

/// Inserts an order; a second order with the same `(seller_id, order_number)` is a unique violation.
pub fn insert(conn: &mut AnyConnection, new: &NewOrder) -> Result<OrderRow, StorageError> {
    diesel::insert_into(o::table).values(new).execute(conn)?;
    find(conn, &new.id)?.ok_or_else(|| StorageError::Other("inserted order not found".into()))
}

pub fn find(conn: &mut AnyConnection, id: &str) -> Result<Option<OrderRow>, StorageError> {
    find_by!(conn, o::id.eq(id) => OrderRow)
}

pub fn find_by_number(
    conn: &mut AnyConnection,
    seller_id: &str,
    order_number: &str,
) -> Result<Option<OrderRow>, StorageError> {
    Ok(o::table
        .filter(o::seller_id.eq(seller_id))
        .filter(o::order_number.eq(order_number))
        .select(OrderRow::as_select())
        .first(conn)
        .optional()?)
}

/// A page of orders (newest first) with the total matching the filter.
pub fn list(
    conn: &mut AnyConnection,
    f: &OrderFilter,
    offset: i64,
    limit: i64,
) -> Result<(Vec<OrderRow>, i64), StorageError> {
    let mut q = o::table.select(OrderRow::as_select()).into_boxed();
    let mut count = o::table.count().into_boxed();
    if let Some(s) = &f.seller_id {
        q = q.filter(o::seller_id.eq(s.clone()));
        count = count.filter(o::seller_id.eq(s.clone()));
    }
    if let Some(s) = f.status {
        q = q.filter(o::status.eq(s));
        count = count.filter(o::status.eq(s));
    }
    if let Some(s) = f.sync_state {
        q = q.filter(o::sync_state.eq(s));
        count = count.filter(o::sync_state.eq(s));
    }
    let rows = q
        .order((o::created_at.desc(), o::id.desc()))
        .offset(offset)
        .limit(limit)
        .load(conn)?;
    Ok((rows, count.get_result(conn)?))
}

/// Counts orders of one seller in one sync state (tests, metrics, the dashboard).
pub fn count_in_state(
    conn: &mut AnyConnection,
    seller_id: Option<&str>,
    sync_state: SyncState,
) -> Result<i64, StorageError> {
    let mut q = o::table
        .filter(o::sync_state.eq(sync_state))
        .count()
        .into_boxed();
    if let Some(s) = seller_id {
        q = q.filter(o::seller_id.eq(s.to_owned()));
    }
    Ok(q.get_result(conn)?)
}

/// Sets a new status and queues the stage move, in one transaction. `None` if the order does not exist;
/// no move is queued when the status does not change.
pub fn change_status(
    conn: &mut AnyConnection,
    id: &str,
    status: OrderStatus,
) -> Result<Option<OrderRow>, StorageError> {
    write_transaction(conn, |conn| {
        let Some(row) = find(conn, id)? else {
            return Ok(None);
        };
        if row.status == status {
            return Ok(Some(row));
        }
        let now = super::now();
        diesel::update(o::table.filter(o::id.eq(id)))
            .set((o::status.eq(status), o::updated_at.eq(now)))
            .execute(conn)?;
        diesel::insert_into(m::table)
            .values((
                m::order_id.eq(id),
                m::target_status.eq(status),
                m::state.eq(MoveState::Pending),
                m::attempts.eq(0),
                m::next_attempt_at.eq(now),
                m::created_at.eq(now),
                m::updated_at.eq(now),
            ))
            .execute(conn)?;
        find(conn, id)
    })
}

/// Puts a failed (or held, when `active`) order and its failed moves back in the queue.
pub fn requeue(
    conn: &mut AnyConnection,
    id: &str,
    connection_active: bool,
) -> Result<Option<OrderRow>, StorageError> {
    write_transaction(conn, |conn| {
        let now = super::now();
        let target = if connection_active {
            SyncState::Queued
        } else {
            SyncState::Held
        };
        diesel::update(
            o::table.filter(o::id.eq(id)).filter(
                o::sync_state.eq_any([SyncState::Failed.as_str(), SyncState::Held.as_str()]),
            ),
        )
        .set((
            o::sync_state.eq(target),
            o::next_attempt_at.eq(now),
            lease_released!(o),
            o::updated_at.eq(now),
        ))
        .execute(conn)?;
        diesel::update(
            m::table
                .filter(m::order_id.eq(id))
                .filter(m::state.eq(MoveState::Failed)),
        )
        .set((
            m::state.eq(MoveState::Pending),
            m::next_attempt_at.eq(now),
            m::updated_at.eq(now),
        ))
        .execute(conn)?;
        find(conn, id)
    })
}

/// Queues a failed or held order again in one transaction: `queued` when its seller's connection is
/// active, else `held` (see [`requeue`]).
pub fn retry(
    conn: &mut AnyConnection,
    id: &str,
    seller_id: &str,
) -> Result<Option<OrderRow>, StorageError> {
    write_transaction(conn, |conn| {
        let active = super::connections::find_by_seller(conn, seller_id)?
            .is_some_and(|c| c.status == ConnectionStatus::Active);
        requeue(conn, id, active)
    })
}

/// Moves a seller's held orders back into the queue (its connection is active again). Returns how many.
pub fn release_held(conn: &mut AnyConnection, seller_id: &str) -> Result<usize, StorageError> {
    let now = super::now();
    Ok(diesel::update(
        o::table
            .filter(o::seller_id.eq(seller_id))
            .filter(o::sync_state.eq(SyncState::Held)),
    )
    .set((
        o::sync_state.eq(SyncState::Queued),
        o::next_attempt_at.eq(now),
        o::updated_at.eq(now),
    ))
    .execute(conn)?)
}

/// Queued orders of inactive connections become `held`; held orders of active ones are queued again.
/// Returns `(held, released)`.
///
/// Both statements start from the orders in the state they change and look each one's connection up by
/// seller (`EXISTS`), so an idle poll with many connections reads no connection at all; an
/// `IN (SELECT seller_id FROM amocrm_connections …)` lets the planner read every connection first.
pub fn sync_hold_states(conn: &mut AnyConnection) -> Result<(usize, usize), StorageError> {
    use diesel::dsl::exists;
    let now = super::now();
    let held = diesel::update(
        o::table
            .filter(o::sync_state.eq(SyncState::Queued))
            .filter(exists(
                c::table
                    .filter(c::seller_id.eq(o::seller_id))
                    .filter(c::status.ne(ConnectionStatus::Active)),
            ))
            .filter(lease_free!(o, now)),
    )
    .set((o::sync_state.eq(SyncState::Held), o::updated_at.eq(now)))
    .execute(conn)?;
    let released = diesel::update(
        o::table
            .filter(o::sync_state.eq(SyncState::Held))
            .filter(exists(
                c::table
                    .filter(c::seller_id.eq(o::seller_id))
                    .filter(c::status.eq(ConnectionStatus::Active)),
            )),
    )
    .set((
        o::sync_state.eq(SyncState::Queued),
        o::next_attempt_at.eq(now),
        o::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok((held, released))
}

/// Holds every queued order of one seller (its connection was found inactive mid-push).
pub fn hold_seller(
    conn: &mut AnyConnection,
    seller_id: &str,
    reason: &str,
) -> Result<usize, StorageError> {
    let now = super::now();
    Ok(diesel::update(
        o::table
            .filter(o::seller_id.eq(seller_id))
            .filter(o::sync_state.eq(SyncState::Queued)),
    )
    .set((
        o::sync_state.eq(SyncState::Held),
        o::last_error.eq(reason),
        lease_released!(o),
        o::updated_at.eq(now),
    ))
    .execute(conn)?)
}

// ---------------------------------------------------------------------------------------------------------
// Push worker: accounts

/// An account with work due: its connection row id and seller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueAccount {
    pub connection_id: i64,
    pub seller_id: String,
}

// What is due in each work table at `now` (and not leased by a live worker): one definition for the idle
// probe, the ranking of accounts, an account's work and the claims, which must agree on it (lead steps:
// [`super::steps::is_due`]). They spell out `lease_free!`'s filter, as `auto_type` cannot infer a type
// through a macro.

/// A queued order due now.
#[diesel::dsl::auto_type]
fn order_due(now: NaiveDateTime) -> _ {
    let queued: SyncState = SyncState::Queued;
    o::sync_state
        .eq(queued)
        .and(o::next_attempt_at.le(now))
        .and(o::lease_until.is_null().or(o::lease_until.lt(now)))
}

/// A pending stage move due now (the callers add that its order must have a lead).
#[diesel::dsl::auto_type]
fn move_due(now: NaiveDateTime) -> _ {
    let pending: MoveState = MoveState::Pending;
    m::state
        .eq(pending)
        .and(m::next_attempt_at.le(now))
        .and(m::lease_until.is_null().or(m::lease_until.lt(now)))
}

/// An unfinished buyer scan whose next page is due.
#[diesel::dsl::auto_type]
fn scan_due(now: NaiveDateTime) -> _ {
    sc::finished_at.is_null().and(sc::next_attempt_at.le(now))
}

/// Whether any order, move, lead step or buyer scan is due, one row at most from each work table: the
/// idle worker asks this every poll, and it must not read every connection to learn there is nothing.
fn any_due(conn: &mut AnyConnection, now: NaiveDateTime) -> Result<bool, StorageError> {
    let order = o::table
        .filter(order_due(now))
        .select(o::seller_id)
        .first::<String>(conn)
        .optional()?;
    if order.is_some() {
        return Ok(true);
    }
    // As `due_accounts` counts moves: only of orders that have a lead. A move of an order that never got
    // one (failed, or held) stays pending and must not keep the idle worker scanning.
    let mv = m::table
        .inner_join(o::table)
        .filter(move_due(now))
        .filter(o::lead_id.is_not_null())
        .select(m::id)
        .first::<i64>(conn)
        .optional()?;
    if mv.is_some() {
        return Ok(true);
    }
    let step = st::table
        .filter(super::steps::is_due(now))
        .select(st::seller_id)
        .first::<String>(conn)
        .optional()?;
    if step.is_some() {
        return Ok(true);
    }
    let scan = sc::table
        .filter(scan_due(now))
        .select(sc::seller_id)
        .first::<String>(conn)
        .optional()?;
    Ok(scan.is_some())
}

/// Active connections with due orders or due moves whose push lease is free (or was last ours), least
/// recently served first (the release time is kept in `push_lease_until`), so accounts take turns.
pub fn due_accounts(
    conn: &mut AnyConnection,
    owner: &str,
    now: NaiveDateTime,
    limit: i64,
) -> Result<Vec<DueAccount>, StorageError> {
    if !any_due(conn, now)? {
        return Ok(Vec::new());
    }
    let with_orders = o::table
        .filter(order_due(now))
        .select(o::seller_id)
        .distinct();
    let with_moves = m::table
        .inner_join(o::table)
        .filter(move_due(now))
        .filter(o::lead_id.is_not_null())
        .select(o::seller_id)
        .distinct();
    let with_steps = st::table
        .filter(super::steps::is_due(now))
        .select(st::seller_id)
        .distinct();
    let with_scans = sc::table.filter(scan_due(now)).select(sc::seller_id);
    let rows: Vec<(i64, String)> = c::table
        .filter(claimable(owner, now))
        .filter(
            c::seller_id
                .eq_any(with_orders)
                .or(c::seller_id.eq_any(with_moves))
                .or(c::seller_id.eq_any(with_steps))
                .or(c::seller_id.eq_any(with_scans)),
        )
        .order((
            c::push_lease_until.is_not_null(),
            c::push_lease_until.asc(),
            c::id.asc(),
        ))
        .limit(limit)
        .select((c::id, c::seller_id))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|(connection_id, seller_id)| DueAccount {
            connection_id,
            seller_id,
        })
        .collect())
}

/// What one account has due now. A turn reads it before each round and claims only what is there: on
/// SQLite every claim takes the database's one write lock, even one that finds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountWork {
    /// Orders whose last send had no known outcome, due for a lookup.
    pub lookups: bool,
    /// Orders due to be sent.
    pub orders: bool,
    /// Pending stage moves of orders that have a lead.
    pub moves: bool,
    /// Due, unleased lead steps, how many of each kind.
    pub steps: Vec<(StepKind, i64)>,
    /// The buyer index fill is not started, or unfinished and due.
    pub scan: bool,
}

impl AccountWork {
    /// Whether a round would find anything to do (a scan counts only where buyers are matched).
    pub fn any(&self, scanning: bool) -> bool {
        self.lookups
            || self.orders
            || self.moves
            || !self.steps.is_empty()
            || (scanning && self.scan)
    }

    /// Due steps of one kind.
    pub fn steps_of(&self, kind: StepKind) -> i64 {
        self.steps
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }
}

/// Reads [`AccountWork`] for one seller: three indexed reads, no write.
pub fn account_work(
    conn: &mut AnyConnection,
    seller_id: &str,
    now: NaiveDateTime,
) -> Result<AccountWork, StorageError> {
    // One statement for the three flags (one round trip on PostgreSQL). Each order flag binds `needs_lookup`:
    // so SQLite walks `orders_seller_queue` from the seller; without it, its planner takes `orders_queue` and
    // reads every due order of every seller.
    let queued = |lookup: bool| {
        o::table
            .filter(o::seller_id.eq(seller_id))
            .filter(o::needs_lookup.eq(lookup))
            .filter(order_due(now))
            .select(o::id)
    };
    let due_moves = m::table
        .inner_join(o::table)
        .filter(o::seller_id.eq(seller_id))
        .filter(o::lead_id.is_not_null())
        .filter(move_due(now))
        .select(m::id);
    use diesel::dsl::exists;
    let (lookups, orders, moves) = diesel::select((
        exists(queued(true)),
        exists(queued(false)),
        exists(due_moves),
    ))
    .get_result::<(bool, bool, bool)>(conn)?;
    let steps: Vec<(StepKind, i64)> = st::table
        .filter(st::seller_id.eq(seller_id))
        .filter(super::steps::is_due(now))
        .group_by(st::step)
        .select((st::step, diesel::dsl::count_star()))
        .load(conn)?;
    let scan = sc::table
        .filter(sc::seller_id.eq(seller_id))
        .select((sc::finished_at, sc::next_attempt_at))
        .first::<(Option<NaiveDateTime>, NaiveDateTime)>(conn)
        .optional()?
        .is_none_or(|(finished, next)| finished.is_none() && next <= now);
    Ok(AccountWork {
        lookups,
        orders,
        moves,
        steps,
        scan,
    })
}

/// An account `owner` may take for pushing at `now`: active, and its push lease free, lapsed or its own.
#[diesel::dsl::auto_type]
fn claimable<'a>(owner: &'a str, now: NaiveDateTime) -> _ {
    let active: ConnectionStatus = ConnectionStatus::Active;
    c::status.eq(active).and(
        c::push_lease_until
            .is_null()
            .or(c::push_lease_until.lt(now))
            .or(c::push_lease_owner.eq(owner)),
    )
}

/// Claims the accounts in `ids` for pushing, in one statement; the ids taken. An account is passed over
/// when another worker holds it, when it is resting after a 429, or while the rate-limit window of another
/// instance's last calls to it is still open. The instance that served it last may take it again at once:
/// its own limiter remembers those calls.
pub fn claim_accounts(
    conn: &mut AnyConnection,
    ids: &[i64],
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> Result<Vec<i64>, StorageError> {
    let target = c::table
        .filter(c::id.eq_any(ids))
        .filter(claimable(owner, now));
    let set = lease_taken!(c::push_lease_owner, c::push_lease_until, owner, until);
    Ok(crate::per_backend!(conn, |cn| diesel::update(target)
        .set(set)
        .returning(c::id)
        .get_results(cn))?)
}

/// Extends our account lease; false if it was lost.
pub fn extend_account(
    conn: &mut AnyConnection,
    connection_id: i64,
    owner: &str,
    until: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(
        c::table
            .filter(c::id.eq(connection_id))
            .filter(c::push_lease_owner.eq(owner)),
    )
    .set(c::push_lease_until.eq(Some(until)))
    .execute_one(conn)
}

/// Releases our account lease; `push_lease_until` then records when the account was last served (the
/// round-robin order). `rest` (after a 429) keeps every instance, us included, away until `not_before`;
/// otherwise we stay the owner, so only other instances wait until `not_before` (the end of the rate-limit
/// window of our last calls, which their limiters cannot see).
pub fn release_account(
    conn: &mut AnyConnection,
    connection_id: i64,
    owner: &str,
    not_before: NaiveDateTime,
    rest: bool,
) -> Result<(), StorageError> {
    diesel::update(
        c::table
            .filter(c::id.eq(connection_id))
            .filter(c::push_lease_owner.eq(owner)),
    )
    .set((
        c::push_lease_owner.eq((!rest).then_some(owner)),
        c::push_lease_until.eq(Some(not_before)),
    ))
    .execute(conn)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------
// Push worker: orders

/// A claimed batch: the orders and, per order, the newest pending move at claim time (moves up to it are
/// already reflected in the status the lead is created with).
#[derive(Debug, Clone)]
pub struct ClaimedOrder {
    pub row: OrderRow,
    pub moves_up_to: Option<i64>,
}

/// Claims up to `limit` due orders of one seller. With `lookup` false it takes orders to send and marks
/// them `needs_lookup` (a create is about to be sent) and counts the attempt; with `lookup` true it takes
/// orders whose last send had no known outcome.
pub fn claim_orders(
    conn: &mut AnyConnection,
    seller_id: &str,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
    limit: i64,
    lookup: bool,
) -> Result<Vec<ClaimedOrder>, StorageError> {
    write_transaction(conn, |conn| {
        let ids: Vec<String> = o::table
            .filter(o::seller_id.eq(seller_id))
            .filter(o::needs_lookup.eq(lookup))
            .filter(order_due(now))
            // The order of the `orders_seller_queue` index, so no sort: longest due first.
            .order((o::next_attempt_at.asc(), o::created_at.asc(), o::id.asc()))
            .limit(limit)
            .select(o::id)
            .load(conn)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut target = diesel::update(o::table)
            .filter(o::id.eq_any(&ids))
            .into_boxed();
        if !matches!(conn, AnyConnection::Sqlite(_)) {
            // On PostgreSQL another instance may have claimed or changed a row since the SELECT. On SQLite
            // this transaction holds the write lock, so the rows are as selected; and there the guard would
            // cost a walk of the whole queue: without statistics SQLite's planner prefers `orders_queue`
            // (`sync_state = ?`) to 50 primary-key lookups (measured: most of the push's time with 50
            // sellers).
            target = target
                .filter(o::sync_state.eq(SyncState::Queued))
                .filter(o::needs_lookup.eq(lookup))
                .filter(lease_free!(o, now));
        }
        if lookup {
            target.set(lease_taken!(o, owner, until)).execute(conn)?;
        } else {
            target
                .set((
                    lease_taken!(o, owner, until),
                    o::needs_lookup.eq(true),
                    o::sync_attempts.eq(o::sync_attempts + 1),
                ))
                .execute(conn)?;
        }
        let rows: Vec<OrderRow> = held_by!(o, owner, o::id.eq_any(&ids))
            .filter(o::lease_until.eq(until))
            .order((o::created_at.asc(), o::id.asc()))
            .select(OrderRow::as_select())
            .load(conn)?;
        let pending: Vec<(String, i64)> = m::table
            .filter(m::order_id.eq_any(&ids))
            .filter(m::state.eq(MoveState::Pending))
            .select((m::order_id, m::id))
            .load(conn)?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let moves_up_to = pending
                    .iter()
                    .filter(|(oid, _)| *oid == row.id)
                    .map(|(_, id)| *id)
                    .max();
                ClaimedOrder { row, moves_up_to }
            })
            .collect())
    })
}

/// Stores how the buyers of claimed orders were resolved, in one transaction. With `round_robin` users, each
/// resolution without a responsible user takes the next position of the seller's counter (in the same
/// transaction, so a crash never skips a position and instances never share one).
pub fn save_buyers(
    conn: &mut AnyConnection,
    seller_id: &str,
    owner: &str,
    resolved: &[(String, BuyerResolution)],
    round_robin: Option<&[i64]>,
) -> Result<Vec<(String, BuyerResolution)>, StorageError> {
    write_transaction(conn, |conn| {
        let mut out = resolved.to_vec();
        if let Some(users) = round_robin.filter(|u| !u.is_empty()) {
            let unassigned: Vec<usize> = out
                .iter()
                .enumerate()
                .filter(|(_, (_, r))| r.responsible_user_id.is_none())
                .map(|(i, _)| i)
                .collect();
            if !unassigned.is_empty() {
                let n = i64::try_from(unassigned.len()).unwrap_or(i64::MAX);
                let start = super::settings::take_round_robin(conn, seller_id, n)?;
                let len = i64::try_from(users.len()).unwrap_or(1);
                for (k, i) in unassigned.into_iter().enumerate() {
                    let pos = (start + i64::try_from(k).unwrap_or(0)).rem_euclid(len);
                    out[i].1.responsible_user_id =
                        users.get(usize::try_from(pos).unwrap_or(0)).copied();
                }
            }
        }
        for (id, r) in &out {
            diesel::update(held_by!(o, owner, o::id.eq(id)))
                .set((r, o::updated_at.eq(super::now())))
                .execute(conn)?;
        }
        Ok(out)
    })
}

/// Takes back the attempt a send claim counted for orders that were not sent after all (their buyer was
/// still being made, or the turn ran out), so their backoff does not grow while they only wait.
pub fn uncount_attempt(
    conn: &mut AnyConnection,
    ids: &[String],
    owner: &str,
) -> Result<usize, StorageError> {
    Ok(
        diesel::update(held_by!(o, owner, o::id.eq_any(ids)).filter(o::sync_attempts.gt(0)))
            .set(o::sync_attempts.eq(o::sync_attempts - 1))
            .execute(conn)?,
    )
}

/// Orders by id (the lead steps read their bodies).
pub fn find_many(conn: &mut AnyConnection, ids: &[String]) -> Result<Vec<OrderRow>, StorageError> {
    find_by!(conn, o::id.eq_any(ids) => Vec<OrderRow>)
}

/// The lead amoCRM made (or that a lookup found) for one order.
#[derive(Debug, Clone)]
pub struct SyncedOrder {
    pub order_id: String,
    pub order_number: String,
    pub lead_id: i64,
    pub contact_id: Option<i64>,
    pub company_id: Option<i64>,
    pub moves_up_to: Option<i64>,
    /// What is done on the lead next (note, products, task, the contact's missing values).
    pub steps: Vec<StepKind>,
}

/// Stores the lead ids of pushed orders and records `order.synced` for each, in one transaction (webhook
/// processing links a lead to its order through `orders.lead_id`). Only rows
/// still leased by `owner` are updated (a lost lease means another worker owns the outcome). Returns how
/// many orders were marked.
pub fn mark_synced(
    conn: &mut AnyConnection,
    seller_id: &str,
    owner: &str,
    synced: &[SyncedOrder],
) -> Result<usize, StorageError> {
    if synced.is_empty() {
        return Ok(0);
    }
    write_transaction(conn, |conn| {
        let now = super::now();
        let mut marked = Vec::with_capacity(synced.len());
        for s in synced {
            let n = diesel::update(
                held_by!(o, owner, o::id.eq(&s.order_id))
                    .filter(o::sync_state.eq(SyncState::Queued)),
            )
            .set((
                o::sync_state.eq(SyncState::Synced),
                o::lead_id.eq(Some(s.lead_id)),
                o::contact_id.eq(s.contact_id),
                o::company_id.eq(s.company_id),
                o::synced_at.eq(Some(now)),
                o::needs_lookup.eq(false),
                o::last_error.eq(None::<String>),
                lease_released!(o),
                o::updated_at.eq(now),
            ))
            .execute(conn)?;
            if n == 0 {
                continue;
            }
            super::steps::plan(conn, &s.order_id, seller_id, s.lead_id, &s.steps)?;
            super::buyers::complete_creation(conn, &s.order_id, s.contact_id, s.company_id)?;
            if let Some(up_to) = s.moves_up_to {
                diesel::update(
                    m::table
                        .filter(m::order_id.eq(&s.order_id))
                        .filter(m::state.eq(MoveState::Pending))
                        .filter(m::id.le(up_to)),
                )
                .set((m::state.eq(MoveState::Superseded), m::updated_at.eq(now)))
                .execute(conn)?;
            }
            marked.push(s);
        }
        // Events last: on PostgreSQL the first one takes the event writers' lock until commit, so every
        // other instance's events wait only for these inserts, not for the order updates above as well.
        let evs: Vec<NewEvent> = marked
            .iter()
            .map(|s| {
                NewEvent::of(
                    seller_id,
                    &OrderSynced {
                        order_id: s.order_id.clone(),
                        order_number: s.order_number.clone(),
                        lead_id: Some(s.lead_id),
                        contact_id: s.contact_id,
                        company_id: s.company_id,
                    },
                    Some(format!("order.synced:{}", s.order_id)),
                )
            })
            .collect();
        events::record_many(conn, &evs)?;
        Ok(marked.len())
    })
}

/// Marks one order `failed` for good with amoCRM's reason and records `order.sync_failed`.
pub fn mark_failed(
    conn: &mut AnyConnection,
    seller_id: &str,
    owner: &str,
    order_id: &str,
    reason: &str,
) -> Result<bool, StorageError> {
    write_transaction(conn, |conn| {
        let now = super::now();
        let n = diesel::update(
            held_by!(o, owner, o::id.eq(order_id)).filter(o::sync_state.eq(SyncState::Queued)),
        )
        .set((
            o::sync_state.eq(SyncState::Failed),
            o::needs_lookup.eq(false),
            o::last_error.eq(Some(reason)),
            lease_released!(o),
            o::updated_at.eq(now),
        ))
        .execute(conn)?;
        if n == 0 {
            return Ok(false);
        }
        let Some(row) = find(conn, order_id)? else {
            return Ok(false);
        };
        super::buyers::release(conn, order_id)?;
        let ev = NewEvent::of(
            seller_id,
            &OrderSyncFailed {
                order_id: row.id.clone(),
                order_number: row.order_number.clone(),
                error: reason.to_owned(),
            },
            Some(format!(
                "order.sync_failed:{}:{}",
                row.id, row.sync_attempts
            )),
        );
        events::record(conn, &ev)?;
        Ok(true)
    })
}

/// Puts claimed orders back in the queue for `next_at`, releasing our lease. `needs_lookup` says whether a
/// create may have happened (`Some(true)`), surely did not (`Some(false)`), or is left as it is (`None`).
pub fn reschedule(
    conn: &mut AnyConnection,
    ids: &[String],
    owner: &str,
    next_at: NaiveDateTime,
    error: Option<&str>,
    needs_lookup: Option<bool>,
) -> Result<usize, StorageError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let now = super::now();
    let sqlite = matches!(conn, AnyConnection::Sqlite(_));
    write_transaction(conn, |conn| {
        let mut target = diesel::update(o::table).into_boxed();
        if sqlite {
            // As in `claim_orders`: a `sync_state = ?` term makes SQLite's planner walk the whole queue
            // instead of looking the ids up, so ours are picked by primary key under the write lock.
            let rows: Vec<(String, Option<String>, SyncState)> = o::table
                .filter(o::id.eq_any(ids))
                .select((o::id, o::lease_owner, o::sync_state))
                .load(conn)?;
            let ours: Vec<String> = rows
                .into_iter()
                .filter(|(_, lease, state)| {
                    lease.as_deref() == Some(owner) && *state == SyncState::Queued
                })
                .map(|(id, _, _)| id)
                .collect();
            if ours.is_empty() {
                return Ok(0);
            }
            target = target.filter(o::id.eq_any(ours));
        } else {
            target = target
                .filter(o::id.eq_any(ids))
                .filter(o::lease_owner.eq(owner))
                .filter(o::sync_state.eq(SyncState::Queued));
        }
        reschedule_rows(conn, target, now, next_at, error, needs_lookup)
    })
}

/// The UPDATE of [`reschedule`] on the rows `target` selects.
fn reschedule_rows(
    conn: &mut AnyConnection,
    target: diesel::query_builder::BoxedUpdateStatement<'_, super::MultiBackend, o::table>,
    now: NaiveDateTime,
    next_at: NaiveDateTime,
    error: Option<&str>,
    needs_lookup: Option<bool>,
) -> Result<usize, StorageError> {
    let n = match needs_lookup {
        Some(flag) => target
            .set((
                o::next_attempt_at.eq(next_at),
                o::last_error.eq(error),
                o::needs_lookup.eq(flag),
                lease_released!(o),
                o::updated_at.eq(now),
            ))
            .execute(conn)?,
        None => target
            .set((
                o::next_attempt_at.eq(next_at),
                o::last_error.eq(error),
                lease_released!(o),
                o::updated_at.eq(now),
            ))
            .execute(conn)?,
    };
    Ok(n)
}

/// The earliest time the push can do something (for the worker loop's wait): when the next queued order,
/// pending move or lead step becomes due, or, when work is due but every account with work rests (429,
/// token trouble) or is another instance's turn, when the first of those ends.
pub fn next_due(
    conn: &mut AnyConnection,
    owner: &str,
    now: NaiveDateTime,
) -> Result<Option<NaiveDateTime>, StorageError> {
    let orders: Option<NaiveDateTime> = o::table
        .filter(o::sync_state.eq(SyncState::Queued))
        .select(diesel::dsl::min(o::next_attempt_at))
        .first(conn)?;
    let moves: Option<NaiveDateTime> = m::table
        .inner_join(o::table)
        .filter(m::state.eq(MoveState::Pending))
        .filter(o::lead_id.is_not_null())
        .select(diesel::dsl::min(m::next_attempt_at))
        .first(conn)?;
    let steps = super::steps::next_due(conn, None)?;
    let work = [orders, moves, steps].into_iter().flatten().min();
    if work.is_none_or(|t| t > now) || !due_accounts(conn, owner, now, 1)?.is_empty() {
        return Ok(work);
    }
    let rest_ends: Option<NaiveDateTime> = c::table
        .filter(c::status.eq(ConnectionStatus::Active))
        .filter(c::push_lease_until.gt(now))
        .filter(
            c::push_lease_owner
                .is_null()
                .or(c::push_lease_owner.ne(owner)),
        )
        .select(diesel::dsl::min(c::push_lease_until))
        .first(conn)?;
    Ok(rest_ends)
}

/// How much work is left: queued orders, and pending moves of orders that have a lead together with their
/// unfinished lead steps (note, products, task, contact).
pub fn backlog(conn: &mut AnyConnection) -> Result<(i64, i64), StorageError> {
    let orders = count_in_state(conn, None, SyncState::Queued)?;
    let moves = m::table
        .inner_join(o::table)
        .filter(m::state.eq(MoveState::Pending))
        .filter(o::lead_id.is_not_null())
        .count()
        .get_result::<i64>(conn)?;
    Ok((orders, moves + super::steps::backlog(conn)?))
}

// ---------------------------------------------------------------------------------------------------------
// Push worker: stage moves

/// (move id, order id, target status, next attempt, lease until, lead id, attempts)
type MoveCandidate = (
    i64,
    String,
    OrderStatus,
    NaiveDateTime,
    Option<NaiveDateTime>,
    i64,
    i32,
);

/// Claims up to `limit` due moves of one seller, at most one per order and only each order's oldest pending
/// move, so moves of one order are applied in the order they were asked for.
pub fn claim_moves(
    conn: &mut AnyConnection,
    seller_id: &str,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<ClaimedMove>, StorageError> {
    write_transaction(conn, |conn| {
        // Oldest pending move per order (of orders that have a lead), then keep the due, unleased ones.
        let candidates: Vec<MoveCandidate> = m::table
            .inner_join(o::table)
            .filter(o::seller_id.eq(seller_id))
            .filter(o::lead_id.is_not_null())
            .filter(m::state.eq(MoveState::Pending))
            .order((m::order_id.asc(), m::id.asc()))
            .select((
                m::id,
                m::order_id,
                m::target_status,
                m::next_attempt_at,
                m::lease_until,
                o::lead_id.assume_not_null(),
                m::attempts,
            ))
            .load(conn)?;
        let mut picked: Vec<ClaimedMove> = Vec::new();
        let mut last_order: Option<String> = None;
        for (id, order_id, target, next_at, lease, lead_id, attempts) in candidates {
            if last_order.as_deref() == Some(order_id.as_str()) {
                continue;
            }
            last_order = Some(order_id.clone());
            if next_at > now || lease.is_some_and(|l| l >= now) {
                continue;
            }
            picked.push(ClaimedMove {
                id,
                order_id,
                target_status: target,
                lead_id,
                attempts,
            });
            if picked.len() as i64 >= limit {
                break;
            }
        }
        let mut claimed = Vec::with_capacity(picked.len());
        for mv in picked {
            let n = diesel::update(
                m::table
                    .filter(m::id.eq(mv.id))
                    .filter(m::state.eq(MoveState::Pending))
                    .filter(lease_free!(m, now)),
            )
            .set((
                lease_taken!(m, owner, until),
                m::attempts.eq(m::attempts + 1),
            ))
            .execute(conn)?;
            if n == 1 {
                claimed.push(mv);
            }
        }
        Ok(claimed)
    })
}

/// How claimed moves are given back: ended in a state (`done` or `failed`), or due again at a time.
#[derive(Debug, Clone, Copy)]
pub enum MoveEnd {
    In(MoveState),
    DueAt(NaiveDateTime),
}

/// Gives back the moves among `ids` that `owner` still holds, as `end` says, with an optional error; how
/// many were still ours.
pub fn end_moves(
    conn: &mut AnyConnection,
    ids: &[i64],
    owner: &str,
    end: MoveEnd,
    error: Option<&str>,
) -> Result<usize, StorageError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let held = held_by!(m, owner, m::id.eq_any(ids));
    let released = (
        m::last_error.eq(error),
        lease_released!(m),
        m::updated_at.eq(super::now()),
    );
    Ok(match end {
        MoveEnd::In(state) => diesel::update(held)
            .set((m::state.eq(state), released))
            .execute(conn)?,
        MoveEnd::DueAt(at) => diesel::update(held)
            .set((m::next_attempt_at.eq(at), released))
            .execute(conn)?,
    })
}

/// Every move of one order, oldest first (tests and the dashboard).
pub fn moves_of(conn: &mut AnyConnection, order_id: &str) -> Result<Vec<MoveRow>, StorageError> {
    find_by!(conn, m::order_id.eq(order_id), order m::id.asc() => Vec<MoveRow>)
}
