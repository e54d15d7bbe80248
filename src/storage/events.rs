//! `events` (the event log and outbox) and the fan-out of each new event into `event_deliveries`.
//!
//! Events are written in the same transaction as the state change they report, so an event exists if and
//! only if its change was committed. A `dedupe_key` makes "exactly once" a database constraint (for example
//! one `payment.completed` per order) instead of a hope.

use chrono::{NaiveDateTime, SecondsFormat, Utc};
use diesel::prelude::*;
use serde_json::json;

use super::schema::{event_deliveries, events, webhook_subscriptions};
use super::{AnyConnection, StorageError};
use crate::domain::events::EventPayload;
use crate::domain::ids::prefixed_id;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = events)]
pub struct EventRow {
    pub seq: i64,
    pub id: String,
    pub event: String,
    pub seller_id: String,
    pub payload: String,
    pub dedupe_key: Option<String>,
    pub created_at: NaiveDateTime,
}

/// An event about to be recorded. `payload` is the exact body every subscriber will receive and sign.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub event: String,
    pub seller_id: String,
    pub payload: String,
    pub dedupe_key: Option<String>,
    pub created_at: NaiveDateTime,
}

impl NewEvent {
    /// An event of the catalogue (`domain::events`): its name comes from the payload's type.
    pub fn of<P: EventPayload>(seller_id: &str, data: &P, dedupe_key: Option<String>) -> Self {
        let data = serde_json::to_value(data).unwrap_or(serde_json::Value::Null);
        Self::new(P::KIND.as_str(), seller_id, data, dedupe_key)
    }

    /// Builds the contract's body `{id, event, timestamp, seller_id, data}` once, at creation.
    pub fn new(
        event: &str,
        seller_id: &str,
        data: serde_json::Value,
        dedupe_key: Option<String>,
    ) -> Self {
        let id = prefixed_id("evt");
        let created = Utc::now();
        let payload = json!({
            "id": id,
            "event": event,
            "timestamp": created.to_rfc3339_opts(SecondsFormat::Secs, true),
            "seller_id": seller_id,
            "data": data,
        })
        .to_string();
        Self {
            id,
            event: event.to_owned(),
            seller_id: seller_id.to_owned(),
            payload,
            dedupe_key,
            created_at: super::to_db(created),
        }
    }
}

#[derive(Insertable)]
#[diesel(table_name = events)]
struct InsertEvent<'a> {
    id: &'a str,
    event: &'a str,
    seller_id: &'a str,
    payload: &'a str,
    dedupe_key: Option<&'a str>,
    created_at: NaiveDateTime,
}

/// Records an event and queues a delivery to every active subscription that wants it. Returns `None`
/// when an event with the same dedupe key already exists (nothing is written). Call inside the
/// transaction of the change it reports.
pub fn record(conn: &mut AnyConnection, ev: &NewEvent) -> Result<Option<i64>, StorageError> {
    let subs = active_subscriptions(conn)?;
    serialize_event_writers(conn)?;
    insert_one(conn, ev, &subs)
}

/// Makes a conditional change and records `event` with it, in one transaction: the event is written when
/// `change` answers that it changed something, and not at all otherwise. Returns that answer.
pub fn record_if(
    conn: &mut AnyConnection,
    event: &NewEvent,
    change: impl FnOnce(&mut AnyConnection) -> Result<bool, StorageError>,
) -> Result<bool, StorageError> {
    diesel::Connection::transaction(conn, |c| {
        if !change(c)? {
            return Ok(false);
        }
        record(c, event)?;
        Ok(true)
    })
}

/// [`record`] for several events of one transaction (the push records an `order.synced` per lead, up to
/// 50 at once): the subscriptions are read and the writers' lock taken once. Returns how many were new.
pub fn record_many(conn: &mut AnyConnection, evs: &[NewEvent]) -> Result<usize, StorageError> {
    if evs.is_empty() {
        return Ok(0);
    }
    let subs = active_subscriptions(conn)?;
    serialize_event_writers(conn)?;
    let mut new = 0;
    for ev in evs {
        if insert_one(conn, ev, &subs)?.is_some() {
            new += 1;
        }
    }
    Ok(new)
}

/// The active subscriptions (id, wanted events) an event is fanned out to.
fn active_subscriptions(conn: &mut AnyConnection) -> Result<Vec<(String, String)>, StorageError> {
    Ok(webhook_subscriptions::table
        .filter(webhook_subscriptions::active.eq(true))
        .select((webhook_subscriptions::id, webhook_subscriptions::events))
        .load(conn)?)
}

/// Inserts one event and its deliveries; the caller holds the writers' lock.
fn insert_one(
    conn: &mut AnyConnection,
    ev: &NewEvent,
    subs: &[(String, String)],
) -> Result<Option<i64>, StorageError> {
    let row = InsertEvent {
        id: &ev.id,
        event: &ev.event,
        seller_id: &ev.seller_id,
        payload: &ev.payload,
        dedupe_key: ev.dedupe_key.as_deref(),
        created_at: ev.created_at,
    };
    let seq: Option<i64> = if ev.dedupe_key.is_some() {
        crate::per_backend!(conn, |c| diesel::insert_into(events::table)
            .values(&row)
            .on_conflict(events::dedupe_key)
            .do_nothing()
            .returning(events::seq)
            .get_result::<i64>(c)
            .optional())?
    } else {
        Some(
            diesel::insert_into(events::table)
                .values(&row)
                .returning(events::seq)
                .get_result::<i64>(conn)?,
        )
    };
    let Some(seq) = seq else { return Ok(None) };
    let now = super::now();
    for (sub_id, wanted) in subs {
        if !subscription_wants(wanted, &ev.event) {
            continue;
        }
        super::deliveries::queue(conn, seq, sub_id, &ev.seller_id, now)?;
    }
    Ok(Some(seq))
}

/// Whether a subscription's stored event list (a JSON array) includes `event` or `"*"`.
pub fn subscription_wants(events_json: &str, event: &str) -> bool {
    serde_json::from_str::<Vec<String>>(events_json)
        .map(|list| list.iter().any(|e| e == "*" || e == event))
        .unwrap_or(false)
}

pub fn find_by_id(conn: &mut AnyConnection, id: &str) -> Result<Option<EventRow>, StorageError> {
    find_by!(conn, events::id.eq(id) => EventRow)
}

/// Events after a cursor, in log order, optionally of one seller and one event name.
pub fn list_after(
    conn: &mut AnyConnection,
    after: i64,
    seller_id: Option<&str>,
    event: Option<&str>,
    limit: i64,
) -> Result<Vec<EventRow>, StorageError> {
    let mut q = events::table
        .filter(events::seq.gt(after))
        .select(EventRow::as_select())
        .into_boxed();
    if let Some(s) = seller_id {
        q = q.filter(events::seller_id.eq(s.to_owned()));
    }
    if let Some(e) = event {
        q = q.filter(events::event.eq(e.to_owned()));
    }
    Ok(q.order(events::seq.asc()).limit(limit).load(conn)?)
}

/// Every event of one seller with the given name (tests and the dashboard).
pub fn count_by_name(
    conn: &mut AnyConnection,
    seller_id: &str,
    event: &str,
) -> Result<i64, StorageError> {
    Ok(events::table
        .filter(events::seller_id.eq(seller_id))
        .filter(events::event.eq(event))
        .count()
        .get_result(conn)?)
}

/// The latest `limit` events of one seller whose names are in `names`, newest first (a connection's
/// timeline of state changes on the dashboard).
pub fn latest_of(
    conn: &mut AnyConnection,
    seller_id: &str,
    names: &[&str],
    limit: i64,
) -> Result<Vec<EventRow>, StorageError> {
    Ok(events::table
        .filter(events::seller_id.eq(seller_id))
        .filter(events::event.eq_any(names))
        .order(events::seq.desc())
        .limit(limit)
        .select(EventRow::as_select())
        .load(conn)?)
}

/// On PostgreSQL, event writers take one transaction-scoped advisory lock before inserting, so `seq` order
/// is commit order: a reader of the log (cursor paging, in-order delivery) never sees seq 11 committed while
/// seq 10 is still in flight and later appears behind its cursor. SQLite has a single writer already. The
/// lock is held to the end of the caller's transaction, which the caller keeps short (record last).
fn serialize_event_writers(conn: &mut AnyConnection) -> Result<(), StorageError> {
    if let AnyConnection::Postgresql(c) = conn {
        diesel::sql_query("SELECT pg_advisory_xact_lock(7307001)").execute(c)?;
    }
    Ok(())
}

/// The log position of an event id (to accept `after=evt_…` as a cursor).
pub fn seq_of(conn: &mut AnyConnection, id: &str) -> Result<Option<i64>, StorageError> {
    Ok(events::table
        .filter(events::id.eq(id))
        .select(events::seq)
        .first(conn)
        .optional()?)
}

/// Deletes events created before `cutoff` (with their deliveries and attempts), at most `batch` events
/// at a time; returns how many events went.
pub fn prune(
    conn: &mut AnyConnection,
    cutoff: NaiveDateTime,
    batch: i64,
) -> Result<usize, StorageError> {
    use super::schema::delivery_attempts;
    conn.transaction(|c| {
        let seqs: Vec<i64> = events::table
            .filter(events::created_at.lt(cutoff))
            .order(events::seq.asc())
            .limit(batch)
            .select(events::seq)
            .load(c)?;
        if seqs.is_empty() {
            return Ok(0);
        }
        let deliveries: Vec<i64> = event_deliveries::table
            .filter(event_deliveries::event_seq.eq_any(&seqs))
            .select(event_deliveries::id)
            .load(c)?;
        for chunk in deliveries.chunks(500) {
            diesel::delete(
                delivery_attempts::table.filter(delivery_attempts::delivery_id.eq_any(chunk)),
            )
            .execute(c)?;
            diesel::delete(event_deliveries::table.filter(event_deliveries::id.eq_any(chunk)))
                .execute(c)?;
        }
        Ok(diesel::delete(events::table.filter(events::seq.eq_any(&seqs))).execute(c)?)
    })
}

/// Where a read of the log starts: after a log position, or after a known event.
#[derive(Debug, Clone)]
pub enum Cursor {
    Seq(i64),
    EventId(String),
}

/// A page of the log after `after`, with the position it resolved to; `None` when `after` names an event
/// that does not exist.
pub fn page(
    conn: &mut AnyConnection,
    after: &Cursor,
    seller_id: Option<&str>,
    event: Option<&str>,
    limit: i64,
) -> Result<Option<(i64, Vec<EventRow>)>, StorageError> {
    let after = match after {
        Cursor::Seq(n) => *n,
        Cursor::EventId(id) => match seq_of(conn, id)? {
            Some(seq) => seq,
            None => return Ok(None),
        },
    };
    Ok(Some((
        after,
        list_after(conn, after, seller_id, event, limit)?,
    )))
}

aggregate_handle! {
    /// The event log, as the use cases see it: each call is one trip to the blocking pool.
    Events => events
}

impl Events<'_> {
    /// See [`page`].
    pub async fn page(
        &self,
        after: Cursor,
        seller_id: Option<String>,
        event: Option<String>,
        limit: i64,
    ) -> Result<Option<(i64, Vec<EventRow>)>, StorageError> {
        self.db
            .run(move |c| page(c, &after, seller_id.as_deref(), event.as_deref(), limit))
            .await
    }

    pub async fn by_id(&self, id: &str) -> Result<Option<EventRow>, StorageError> {
        self.db.run_with(id, find_by_id).await
    }

    /// See [`latest_of`].
    pub async fn latest_of(
        &self,
        seller_id: &str,
        names: Vec<&'static str>,
        limit: i64,
    ) -> Result<Vec<EventRow>, StorageError> {
        self.db
            .run_with(seller_id, move |c, seller_id| {
                latest_of(c, seller_id, &names, limit)
            })
            .await
    }

    /// Deletes at most `batch` events older than `cutoff`; see [`prune`].
    pub async fn prune(&self, cutoff: NaiveDateTime, batch: i64) -> Result<usize, StorageError> {
        self.db.run(move |c| prune(c, cutoff, batch)).await
    }
}
