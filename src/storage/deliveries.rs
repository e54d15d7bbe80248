//! `event_deliveries` and `delivery_attempts`: the queue of (event, subscription) deliveries, claimed with
//! leases, and the record of every attempt.
//!
//! Order: a delivery is due only when no earlier delivery of the same seller to the same subscription is
//! still pending, so a healthy subscriber sees each seller's events in log order and at most one of them is
//! in flight at a time. A subscriber that keeps failing holds back only its own queue for that seller.

use chrono::NaiveDateTime;
use diesel::dsl::{exists, not};
use diesel::prelude::*;

use super::schema::{delivery_attempts as a, event_deliveries as d, events, webhook_subscriptions};
use super::{AnyConnection, StorageError};
use crate::domain::status::DeliveryState;

diesel::alias!(d as earlier: EarlierDelivery);

/// No earlier pending delivery (by event) of the same seller to the same subscription: the row is the head
/// of its queue (see the module's note on order). A macro: the aliased subquery's type is too long to
/// spell as a function's return type.
macro_rules! queue_head {
    () => {
        not(exists(
            earlier
                .filter(earlier.field(d::subscription_id).eq(d::subscription_id))
                .filter(earlier.field(d::seller_id).eq(d::seller_id))
                .filter(earlier.field(d::state).eq(DeliveryState::Pending))
                .filter(earlier.field(d::event_seq).lt(d::event_seq)),
        ))
    };
}

/// A claimed row with (event id, name, payload) and (url, sealed secret).
type ClaimRow = (DeliveryRow, (String, String, String), (String, Vec<u8>));

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = d)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_seq: i64,
    pub subscription_id: String,
    pub seller_id: String,
    pub state: DeliveryState,
    pub attempts: i32,
    pub next_attempt_at: NaiveDateTime,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<NaiveDateTime>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = a)]
pub struct AttemptRow {
    pub id: i64,
    pub delivery_id: i64,
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub attempted_at: NaiveDateTime,
}

/// A claimed delivery with what sending it needs: the exact body, the destination and the sealed secret.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub delivery: DeliveryRow,
    pub event_id: String,
    pub event: String,
    pub payload: String,
    pub url: String,
    pub secret_enc: Vec<u8>,
}

/// Queues the delivery of event `event_seq` (of `seller_id`) to one subscription, due at `now`: when the
/// event is recorded, and when a redelivery reaches a subscription that never had it.
pub(super) fn queue(
    conn: &mut AnyConnection,
    event_seq: i64,
    subscription_id: &str,
    seller_id: &str,
    now: NaiveDateTime,
) -> Result<(), StorageError> {
    diesel::insert_into(d::table)
        .values((
            d::event_seq.eq(event_seq),
            d::subscription_id.eq(subscription_id),
            d::seller_id.eq(seller_id),
            d::state.eq(DeliveryState::Pending),
            d::attempts.eq(0),
            d::next_attempt_at.eq(now),
            d::created_at.eq(now),
            d::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Claims up to `limit` due deliveries for `owner` until `lease_until`. Subscriptions in `skip` (already at
/// this process's per-subscription concurrency) are left alone. Each claim is one conditional UPDATE, so two
/// instances never claim the same row.
pub fn claim_due(
    conn: &mut AnyConnection,
    owner: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
    skip: &[String],
) -> Result<Vec<ClaimedDelivery>, StorageError> {
    let mut q = d::table
        .inner_join(webhook_subscriptions::table)
        .filter(d::state.eq(DeliveryState::Pending))
        .filter(d::next_attempt_at.le(now))
        .filter(lease_free!(d, now))
        .filter(webhook_subscriptions::active.eq(true))
        .filter(queue_head!())
        .select(d::id)
        .order((d::next_attempt_at.asc(), d::id.asc()))
        .limit(limit)
        .into_boxed();
    if !skip.is_empty() {
        q = q.filter(d::subscription_id.ne_all(skip.to_vec()));
    }
    let candidates: Vec<i64> = q.load(conn)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    // One UPDATE claims them all; the rows this call won are those carrying its exact lease. A few random
    // microseconds make the lease value unique even for two claims of one owner in the same instant.
    let lease_until =
        lease_until + chrono::TimeDelta::microseconds(rand::random_range(0..1_000_000));
    let lease_until = super::to_db(super::from_db(lease_until));
    diesel::update(
        d::table
            .filter(d::id.eq_any(&candidates))
            .filter(d::state.eq(DeliveryState::Pending))
            .filter(lease_free!(d, now)),
    )
    .set(lease_taken!(d, owner, lease_until))
    .execute(conn)?;
    let claimed: Vec<i64> = held_by!(d, owner, d::id.eq_any(&candidates))
        .filter(d::lease_until.eq(lease_until))
        .select(d::id)
        .load(conn)?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<ClaimRow> = d::table
        .inner_join(events::table)
        .inner_join(webhook_subscriptions::table)
        .filter(d::id.eq_any(&claimed))
        .order(d::id.asc())
        .select((
            DeliveryRow::as_select(),
            (events::id, events::event, events::payload),
            (
                webhook_subscriptions::url,
                webhook_subscriptions::secret_enc,
            ),
        ))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(
            |(delivery, (event_id, event, payload), (url, secret_enc))| ClaimedDelivery {
                delivery,
                event_id,
                event,
                payload,
                url,
                secret_enc,
            },
        )
        .collect())
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub attempted_at: NaiveDateTime,
}

/// Where the delivery goes after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(NaiveDateTime),
    Failed,
}

/// Records an attempt and moves the delivery on, if `owner` still holds its lease. Returns false when the
/// lease was lost (another instance took the row over): the attempt is then not counted here.
pub fn record_attempt(
    conn: &mut AnyConnection,
    delivery_id: i64,
    owner: &str,
    attempt: &AttemptRecord,
    next: NextStep,
) -> Result<bool, StorageError> {
    let one = [(delivery_id, attempt.clone(), next)];
    Ok(record_attempts(conn, owner, &one)?
        .first()
        .copied()
        .unwrap_or(false))
}

/// [`record_attempt`] for many deliveries in one transaction (one commit for a whole batch of answers).
pub fn record_attempts(
    conn: &mut AnyConnection,
    owner: &str,
    results: &[(i64, AttemptRecord, NextStep)],
) -> Result<Vec<bool>, StorageError> {
    conn.transaction(|c| {
        let mut kept = Vec::with_capacity(results.len());
        for (delivery_id, attempt, next) in results {
            let delivery_id = *delivery_id;
            let now = attempt.attempted_at;
            let (state, next_at, delivered_at) = match next {
                NextStep::Delivered => (DeliveryState::Delivered, now, Some(now)),
                NextStep::RetryAt(at) => (DeliveryState::Pending, *at, None),
                NextStep::Failed => (DeliveryState::Failed, now, None),
            };
            let n = diesel::update(
                held_by!(d, owner, d::id.eq(delivery_id))
                    .filter(d::state.eq(DeliveryState::Pending)),
            )
            .set((
                d::state.eq(state),
                d::attempts.eq(d::attempts + 1),
                d::next_attempt_at.eq(next_at),
                d::last_status.eq(attempt.status_code),
                d::last_error.eq(attempt.error.as_deref()),
                d::delivered_at.eq(delivered_at),
                lease_released!(d),
                d::updated_at.eq(super::now()),
            ))
            .execute(c)?;
            if n != 1 {
                kept.push(false);
                continue;
            }
            let number: i64 = a::table
                .filter(a::delivery_id.eq(delivery_id))
                .count()
                .get_result(c)?;
            diesel::insert_into(a::table)
                .values((
                    a::delivery_id.eq(delivery_id),
                    a::attempt.eq(i32::try_from(number + 1).unwrap_or(i32::MAX)),
                    a::status_code.eq(attempt.status_code),
                    a::error.eq(attempt.error.as_deref()),
                    a::duration_ms.eq(attempt.duration_ms),
                    a::attempted_at.eq(attempt.attempted_at),
                ))
                .execute(c)?;
            kept.push(true);
        }
        Ok(kept)
    })
}

/// Gives a lease back without counting an attempt (shutdown, or a secret that cannot be decrypted yet).
pub fn release(
    conn: &mut AnyConnection,
    delivery_id: i64,
    owner: &str,
    retry_at: NaiveDateTime,
    error: Option<&str>,
) -> Result<(), StorageError> {
    diesel::update(held_by!(d, owner, d::id.eq(delivery_id)))
        .set((
            lease_released!(d),
            d::next_attempt_at.eq(retry_at),
            d::last_error.eq(error),
            d::updated_at.eq(super::now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// A delivery with its event, for the deliveries API.
#[derive(Debug, Clone)]
pub struct DeliveryView {
    pub delivery: DeliveryRow,
    pub event_id: String,
    pub event: String,
    pub attempts: Vec<AttemptRow>,
}

/// A page of one subscription's deliveries, newest first, with their attempts and the total count.
pub fn list_for_subscription(
    conn: &mut AnyConnection,
    subscription_id: &str,
    state: Option<DeliveryState>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<DeliveryView>, i64), StorageError> {
    let mut q = d::table
        .inner_join(events::table)
        .filter(d::subscription_id.eq(subscription_id.to_owned()))
        .select((DeliveryRow::as_select(), (events::id, events::event)))
        .into_boxed();
    let mut count = d::table
        .filter(d::subscription_id.eq(subscription_id.to_owned()))
        .count()
        .into_boxed();
    if let Some(s) = state {
        q = q.filter(d::state.eq(s));
        count = count.filter(d::state.eq(s));
    }
    let rows: Vec<(DeliveryRow, (String, String))> = q
        .order(d::id.desc())
        .offset(offset)
        .limit(limit)
        .load(conn)?;
    let total: i64 = count.get_result(conn)?;
    let ids: Vec<i64> = rows.iter().map(|(r, _)| r.id).collect();
    let attempts: Vec<AttemptRow> = a::table
        .filter(a::delivery_id.eq_any(&ids))
        .order(a::id.asc())
        .select(AttemptRow::as_select())
        .load(conn)?;
    let views = rows
        .into_iter()
        .map(|(delivery, (event_id, event))| {
            let mine: Vec<AttemptRow> = attempts
                .iter()
                .filter(|x| x.delivery_id == delivery.id)
                .cloned()
                .collect();
            DeliveryView {
                delivery,
                event_id,
                event,
                attempts: mine,
            }
        })
        .collect();
    Ok((views, total))
}

/// Every delivery of one event (for redelivery answers and tests).
pub fn for_event(
    conn: &mut AnyConnection,
    event_seq: i64,
) -> Result<Vec<DeliveryRow>, StorageError> {
    find_by!(conn, d::event_seq.eq(event_seq), order d::id.asc() => Vec<DeliveryRow>)
}

/// Which deliveries of an event a redelivery re-drives.
#[derive(Debug, Clone)]
pub enum Redrive {
    /// Its failed deliveries, and a first delivery to each active subscription that wants the event but was
    /// created after it. A receiver that already has the event gets nothing more.
    Failed,
    /// The one delivery to this subscription, whatever it reached (an operator asks for a copy again), or a
    /// first one when the subscription is active, wants the event and never had it.
    To(String),
}

/// Re-drives one event as `which` says: the chosen deliveries become pending and due now with a fresh retry
/// schedule; their earlier attempts stay in `delivery_attempts`. Deliveries still pending are left as they
/// are. `None` when `which` names a subscription that has no delivery of the event and cannot get one.
pub fn redeliver(
    conn: &mut AnyConnection,
    event_seq: i64,
    seller_id: &str,
    event_name: &str,
    which: &Redrive,
    now: NaiveDateTime,
) -> Result<Option<Vec<DeliveryRow>>, StorageError> {
    conn.transaction(|c| {
        let mut finished = d::table
            .filter(d::event_seq.eq(event_seq))
            .filter(d::state.ne(DeliveryState::Pending))
            .into_boxed();
        finished = match which {
            Redrive::Failed => finished.filter(d::state.eq(DeliveryState::Failed)),
            Redrive::To(sub) => finished.filter(d::subscription_id.eq(sub.clone())),
        };
        let ids: Vec<i64> = finished.select(d::id).load(c)?;
        diesel::update(d::table.filter(d::id.eq_any(&ids)))
            .set((
                d::state.eq(DeliveryState::Pending),
                d::attempts.eq(0),
                d::next_attempt_at.eq(now),
                d::last_status.eq(None::<i32>),
                d::last_error.eq(None::<String>),
                lease_released!(d),
                d::updated_at.eq(now),
            ))
            .execute(c)?;
        let have: Vec<String> = d::table
            .filter(d::event_seq.eq(event_seq))
            .select(d::subscription_id)
            .load(c)?;
        let mut subs = webhook_subscriptions::table
            .filter(webhook_subscriptions::active.eq(true))
            .select((webhook_subscriptions::id, webhook_subscriptions::events))
            .into_boxed();
        if let Redrive::To(sub) = which {
            subs = subs.filter(webhook_subscriptions::id.eq(sub.clone()));
        }
        let subs: Vec<(String, String)> = subs.load(c)?;
        let mut added = false;
        for (sub_id, wanted) in subs {
            if have.contains(&sub_id) || !super::events::subscription_wants(&wanted, event_name) {
                continue;
            }
            queue(c, event_seq, &sub_id, seller_id, now)?;
            added = true;
        }
        if let Redrive::To(sub) = which
            && !added
            && !have.contains(sub)
        {
            return Ok(None);
        }
        for_event(c, event_seq).map(Some)
    })
}

/// Counts of deliveries by state (metrics, dashboard, tests).
pub fn count_by_state(conn: &mut AnyConnection, state: DeliveryState) -> Result<i64, StorageError> {
    Ok(d::table
        .filter(d::state.eq(state))
        .count()
        .get_result(conn)?)
}

/// The earliest time a queue head (a pending delivery with no earlier pending one of its seller and
/// subscription) becomes due; deliveries waiting behind a head are not counted.
pub fn next_due(conn: &mut AnyConnection) -> Result<Option<NaiveDateTime>, StorageError> {
    Ok(d::table
        .filter(d::state.eq(DeliveryState::Pending))
        .filter(queue_head!())
        .select(diesel::dsl::min(d::next_attempt_at))
        .first(conn)?)
}

/// What became of a redelivery asked by event id.
#[derive(Debug)]
pub enum Redelivered {
    Done(super::events::EventRow, Vec<DeliveryRow>),
    NoEvent,
    /// The named subscription has no delivery of the event and cannot get one.
    NoDelivery,
}

/// [`redeliver`] for an event named by id, in one transaction.
pub fn redeliver_event(
    conn: &mut AnyConnection,
    event_id: &str,
    which: &Redrive,
    now: NaiveDateTime,
) -> Result<Redelivered, StorageError> {
    conn.transaction(|c| {
        let Some(ev) = super::events::find_by_id(c, event_id)? else {
            return Ok(Redelivered::NoEvent);
        };
        Ok(
            match redeliver(c, ev.seq, &ev.seller_id, &ev.event, which, now)? {
                Some(rows) => Redelivered::Done(ev, rows),
                None => Redelivered::NoDelivery,
            },
        )
    })
}

/// [`list_for_subscription`], or `None` when the subscription does not exist.
pub fn list_for_known_subscription(
    conn: &mut AnyConnection,
    subscription_id: &str,
    state: Option<DeliveryState>,
    offset: i64,
    limit: i64,
) -> Result<Option<(Vec<DeliveryView>, i64)>, StorageError> {
    if super::subscriptions::find(conn, subscription_id)?.is_none() {
        return Ok(None);
    }
    list_for_subscription(conn, subscription_id, state, offset, limit).map(Some)
}

aggregate_handle! {
    /// Deliveries, as the use cases and the delivery worker see them: each call is one trip to the blocking pool.
    Deliveries => deliveries
}

impl Deliveries<'_> {
    /// See [`redeliver_event`].
    pub async fn redeliver(
        &self,
        event_id: &str,
        which: Redrive,
        now: NaiveDateTime,
    ) -> Result<Redelivered, StorageError> {
        self.db
            .run_with(event_id, move |c, id| redeliver_event(c, id, &which, now))
            .await
    }

    /// See [`list_for_known_subscription`].
    pub async fn of_subscription(
        &self,
        subscription_id: &str,
        state: Option<DeliveryState>,
        offset: i64,
        limit: i64,
    ) -> Result<Option<(Vec<DeliveryView>, i64)>, StorageError> {
        self.db
            .run_with(subscription_id, move |c, id| {
                list_for_known_subscription(c, id, state, offset, limit)
            })
            .await
    }

    /// See [`claim_due`].
    pub async fn claim_due(
        &self,
        owner: &str,
        now: NaiveDateTime,
        until: NaiveDateTime,
        limit: i64,
        skip: Vec<String>,
    ) -> Result<Vec<ClaimedDelivery>, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                claim_due(c, owner, now, until, limit, &skip)
            })
            .await
    }

    /// See [`record_attempts`].
    pub async fn record_attempts(
        &self,
        owner: &str,
        rows: Vec<(i64, AttemptRecord, NextStep)>,
    ) -> Result<Vec<bool>, StorageError> {
        self.db
            .run_with(owner, move |c, owner| record_attempts(c, owner, &rows))
            .await
    }

    /// Releases our leases on deliveries we claimed but will not send now (see [`release`]).
    pub async fn release_all(
        &self,
        ids: Vec<i64>,
        owner: &str,
        now: NaiveDateTime,
    ) -> Result<(), StorageError> {
        let owner = owner.to_owned();
        self.db
            .run(move |c| {
                for id in &ids {
                    release(c, *id, &owner, now, None)?;
                }
                Ok(())
            })
            .await
    }
}
