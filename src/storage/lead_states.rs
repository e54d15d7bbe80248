//! `lead_states`: what the connector last knew of each lead (stage, amoCRM's `last_modified`, paid flag,
//! order link). Webhook processing compares against it, so duplicates and stale webhooks change nothing.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::events::NewEvent;
use super::schema::{lead_states as l, orders};
use super::{AnyConnection, ExecuteOne, StorageError};

aggregate_handle! {
    /// Lead states, as webhook processing sees them: each call is one trip to the blocking pool.
    LeadStates => lead_states
}

impl LeadStates<'_> {
    /// What we last knew of the seller's lead.
    pub async fn find(
        &self,
        seller_id: &str,
        lead_id: i64,
    ) -> Result<Option<LeadState>, StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| find(c, seller, lead_id))
            .await
    }

    /// The order a lead belongs to (see [`order_of`]).
    pub async fn order_of(
        &self,
        seller_id: &str,
        lead_id: i64,
        known_order_id: Option<String>,
        order_number: Option<String>,
    ) -> Result<Option<OrderLink>, StorageError> {
        let seller = seller_id.to_owned();
        self.db
            .run(move |c| {
                order_of(
                    c,
                    &seller,
                    lead_id,
                    known_order_id.as_deref(),
                    order_number.as_deref(),
                )
            })
            .await
    }

    /// Moves the lead from `prev` to `next` with its events (see [`apply`]).
    pub async fn apply(
        &self,
        prev: Option<LeadState>,
        next: LeadState,
        events: Vec<NewEvent>,
    ) -> Result<Option<usize>, StorageError> {
        self.db
            .run(move |c| apply(c, prev.as_ref(), &next, &events))
            .await
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = l)]
pub struct LeadState {
    pub seller_id: String,
    pub lead_id: i64,
    pub order_id: Option<String>,
    pub pipeline_id: Option<i64>,
    pub status_id: Option<i64>,
    pub last_modified: i64,
    pub paid: bool,
    pub created_by_us: bool,
    pub updated_at: NaiveDateTime,
}

pub fn find(
    conn: &mut AnyConnection,
    seller_id: &str,
    lead_id: i64,
) -> Result<Option<LeadState>, StorageError> {
    Ok(l::table
        .filter(l::seller_id.eq(seller_id))
        .filter(l::lead_id.eq(lead_id))
        .select(LeadState::as_select())
        .first(conn)
        .optional()?)
}

/// Writes `next` if the stored row is still `prev` (compare-and-set; `None` = no row yet). Returns false
/// when someone else changed the row in between: the caller re-reads and decides again.
pub fn compare_and_set(
    conn: &mut AnyConnection,
    prev: Option<&LeadState>,
    next: &LeadState,
) -> Result<bool, StorageError> {
    match prev {
        None => {
            let n = crate::per_backend!(conn, |c| diesel::insert_into(l::table)
                .values(next)
                .on_conflict((l::seller_id, l::lead_id))
                .do_nothing()
                .execute(c))?;
            Ok(n == 1)
        }
        Some(p) => {
            let mut q = diesel::update(l::table)
                .filter(l::seller_id.eq(&p.seller_id))
                .filter(l::lead_id.eq(p.lead_id))
                .filter(l::last_modified.eq(p.last_modified))
                .filter(l::paid.eq(p.paid))
                .into_boxed();
            q = match p.status_id {
                Some(s) => q.filter(l::status_id.eq(s)),
                None => q.filter(l::status_id.is_null()),
            };
            q = match p.pipeline_id {
                Some(s) => q.filter(l::pipeline_id.eq(s)),
                None => q.filter(l::pipeline_id.is_null()),
            };
            q.set((
                l::order_id.eq(&next.order_id),
                l::pipeline_id.eq(next.pipeline_id),
                l::status_id.eq(next.status_id),
                l::last_modified.eq(next.last_modified),
                l::paid.eq(next.paid),
                l::created_by_us.eq(next.created_by_us),
                l::updated_at.eq(next.updated_at),
            ))
            .execute_one(conn)
        }
    }
}

/// Every lead state of one seller (tests and the dashboard).
pub fn for_seller(
    conn: &mut AnyConnection,
    seller_id: &str,
) -> Result<Vec<LeadState>, StorageError> {
    find_by!(conn, l::seller_id.eq(seller_id), order l::lead_id.asc() => Vec<LeadState>)
}

/// A marketplace order a lead belongs to (read from `orders`, which the orders push owns).
#[derive(Debug, Clone, PartialEq, Eq, Queryable)]
pub struct OrderLink {
    pub order_id: String,
    pub order_number: String,
    pub lead_id: Option<i64>,
    pub total_amount_minor: i64,
    pub currency: String,
}

fn order_link_query() -> orders::BoxedQuery<
    'static,
    super::MultiBackend,
    (
        diesel::sql_types::Text,
        diesel::sql_types::Text,
        diesel::sql_types::Nullable<diesel::sql_types::BigInt>,
        diesel::sql_types::BigInt,
        diesel::sql_types::Text,
    ),
> {
    orders::table
        .select((
            orders::id,
            orders::order_number,
            orders::lead_id,
            orders::total_amount_minor,
            orders::currency,
        ))
        .into_boxed()
}

/// The order whose pushed lead is `lead_id`.
pub fn order_by_lead(
    conn: &mut AnyConnection,
    seller_id: &str,
    lead_id: i64,
) -> Result<Option<OrderLink>, StorageError> {
    Ok(order_link_query()
        .filter(orders::seller_id.eq(seller_id.to_owned()))
        .filter(orders::lead_id.eq(lead_id))
        .first(conn)
        .optional()?)
}

/// The order with the marketplace's number (found from the lead's order-number field).
pub fn order_by_number(
    conn: &mut AnyConnection,
    seller_id: &str,
    order_number: &str,
) -> Result<Option<OrderLink>, StorageError> {
    Ok(order_link_query()
        .filter(orders::seller_id.eq(seller_id.to_owned()))
        .filter(orders::order_number.eq(order_number.to_owned()))
        .first(conn)
        .optional()?)
}

pub fn order_by_id(conn: &mut AnyConnection, id: &str) -> Result<Option<OrderLink>, StorageError> {
    Ok(order_link_query()
        .filter(orders::id.eq(id.to_owned()))
        .first(conn)
        .optional()?)
}

/// The order a lead belongs to: the one it was pushed for, else the one its state already names, else
/// the seller's order with the lead's order number (unless that order has another lead).
pub fn order_of(
    conn: &mut AnyConnection,
    seller_id: &str,
    lead_id: i64,
    known_order_id: Option<&str>,
    order_number: Option<&str>,
) -> Result<Option<OrderLink>, StorageError> {
    if let Some(o) = order_by_lead(conn, seller_id, lead_id)? {
        return Ok(Some(o));
    }
    if let Some(id) = known_order_id
        && let Some(o) = order_by_id(conn, id)?
    {
        return Ok(Some(o));
    }
    if let Some(n) = order_number
        && let Some(o) = order_by_number(conn, seller_id, n)?
        && o.lead_id.is_none_or(|l| l == lead_id)
    {
        return Ok(Some(o));
    }
    Ok(None)
}

/// Moves a lead's state from `prev` to `next` and records `events` in one transaction, only if the row
/// is still `prev`. `None`: someone else changed it first (nothing written); otherwise how many events were
/// new (a dedupe key may have swallowed one).
pub fn apply(
    conn: &mut AnyConnection,
    prev: Option<&LeadState>,
    next: &LeadState,
    events: &[NewEvent],
) -> Result<Option<usize>, StorageError> {
    conn.transaction(|c| {
        if !compare_and_set(c, prev, next)? {
            return Ok(None);
        }
        let mut recorded = 0;
        for ev in events {
            if super::events::record(c, ev)?.is_some() {
                recorded += 1;
            }
        }
        Ok(Some(recorded))
    })
}
