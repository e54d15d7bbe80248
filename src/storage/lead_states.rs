//! `lead_states`: what the connector last knew of each lead (stage, amoCRM's `last_modified`, paid flag,
//! order link). Webhook processing compares against it, so duplicates and stale webhooks change nothing.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::lead_states as l;
use super::{AnyConnection, StorageError};

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
            let n = q
                .set((
                    l::order_id.eq(&next.order_id),
                    l::pipeline_id.eq(next.pipeline_id),
                    l::status_id.eq(next.status_id),
                    l::last_modified.eq(next.last_modified),
                    l::paid.eq(next.paid),
                    l::created_by_us.eq(next.created_by_us),
                    l::updated_at.eq(next.updated_at),
                ))
                .execute(conn)?;
            Ok(n == 1)
        }
    }
}

/// Every lead state of one seller (tests and the dashboard).
pub fn for_seller(
    conn: &mut AnyConnection,
    seller_id: &str,
) -> Result<Vec<LeadState>, StorageError> {
    Ok(l::table
        .filter(l::seller_id.eq(seller_id))
        .order(l::lead_id.asc())
        .select(LeadState::as_select())
        .load(conn)?)
}
