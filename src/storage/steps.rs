//! `order_steps`: the work on an order's lead after it exists (contact, note, products, task), one row per
//! step, claimed in batches per account and kind. A step goes `pending` → `sent` (recorded before the request
//! leaves) → `done`/`skipped`/`failed`; a `sent` step is read back from amoCRM before it may be sent again, so
//! a crash or an ambiguous answer never makes a second note, link or task.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::order_steps as st;
use super::{AnyConnection, StorageError};
use crate::domain::order::{StepKind, StepState};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = st)]
pub struct StepRow {
    pub order_id: String,
    pub step: StepKind,
    pub seller_id: String,
    pub lead_id: i64,
    pub state: StepState,
    pub result_id: Option<i64>,
    pub result_count: Option<i32>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: NaiveDateTime,
}

/// A step to send, or to read back, due now and not leased by a live worker (the push's idle probe, its
/// ranking of accounts and the claims all ask this).
#[diesel::dsl::auto_type]
pub(super) fn is_due(now: NaiveDateTime) -> _ {
    let open: [StepState; 2] = [StepState::Pending, StepState::Sent];
    st::state
        .eq_any(open)
        .and(st::next_attempt_at.le(now))
        .and(st::lease_until.is_null().or(st::lease_until.lt(now)))
}

/// Plans the steps of a lead that now exists; steps already planned (a re-adopted lead) stay as they are.
pub fn plan(
    conn: &mut AnyConnection,
    order_id: &str,
    seller_id: &str,
    lead_id: i64,
    kinds: &[StepKind],
) -> Result<(), StorageError> {
    let now = super::now();
    for kind in kinds {
        crate::per_backend!(conn, |c| diesel::insert_into(st::table)
            .values((
                st::order_id.eq(order_id),
                st::step.eq(kind),
                st::seller_id.eq(seller_id),
                st::lead_id.eq(lead_id),
                st::state.eq(StepState::Pending),
                st::next_attempt_at.eq(now),
                st::updated_at.eq(now),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
    }
    Ok(())
}

/// Claims up to `limit` due steps of one kind for one seller, oldest first.
pub fn claim(
    conn: &mut AnyConnection,
    seller_id: &str,
    kind: StepKind,
    owner: &str,
    until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<StepRow>, StorageError> {
    diesel::Connection::transaction(conn, |c| {
        let now = super::now();
        let due = st::table
            .filter(st::seller_id.eq(seller_id))
            .filter(st::step.eq(kind))
            .filter(is_due(now));
        let ids: Vec<String> = due
            .clone()
            .order((st::next_attempt_at.asc(), st::order_id.asc()))
            .limit(limit)
            .select(st::order_id)
            .load(c)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        diesel::update(due.filter(st::order_id.eq_any(&ids)))
            .set(lease_taken!(st, owner, until))
            .execute(c)?;
        Ok(st::table
            .filter(st::step.eq(kind))
            .filter(st::order_id.eq_any(&ids))
            .filter(st::lease_owner.eq(owner))
            .order((st::next_attempt_at.asc(), st::order_id.asc()))
            .select(StepRow::as_select())
            .load(c)?)
    })
}

/// Records that the steps' request is about to leave: from now on their outcome must be read back.
pub fn mark_sent(
    conn: &mut AnyConnection,
    kind: StepKind,
    order_ids: &[String],
    owner: &str,
) -> Result<(), StorageError> {
    diesel::update(
        st::table
            .filter(st::step.eq(kind))
            .filter(st::order_id.eq_any(order_ids))
            .filter(st::lease_owner.eq(owner)),
    )
    .set((
        st::state.eq(StepState::Sent),
        st::attempts.eq(st::attempts + 1),
        st::updated_at.eq(super::now()),
    ))
    .execute(conn)?;
    Ok(())
}

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub order_id: String,
    pub state: StepState,
    pub result_id: Option<i64>,
    pub result_count: Option<i32>,
    pub error: Option<String>,
}

/// Stores the outcomes of a kind's steps and releases them, in one transaction.
pub fn finish(
    conn: &mut AnyConnection,
    kind: StepKind,
    owner: &str,
    done: &[Finished],
) -> Result<usize, StorageError> {
    diesel::Connection::transaction(conn, |c| {
        let now = super::now();
        let mut n = 0;
        for f in done {
            n += diesel::update(
                st::table
                    .filter(st::step.eq(kind))
                    .filter(st::order_id.eq(&f.order_id))
                    .filter(st::lease_owner.eq(owner)),
            )
            .set((
                st::state.eq(f.state),
                st::result_id.eq(f.result_id),
                st::result_count.eq(f.result_count),
                st::last_error.eq(f.error.as_deref()),
                lease_released!(st),
                st::updated_at.eq(now),
            ))
            .execute(c)?;
        }
        Ok(n)
    })
}

/// Puts claimed steps back for `next_at`. `state` says whether the request surely did not write (`Pending`)
/// or may have (`Sent`); `None` leaves it.
pub fn reschedule(
    conn: &mut AnyConnection,
    kind: StepKind,
    order_ids: &[String],
    owner: &str,
    next_at: NaiveDateTime,
    error: Option<&str>,
    state: Option<StepState>,
) -> Result<(), StorageError> {
    let target = st::table
        .filter(st::step.eq(kind))
        .filter(st::order_id.eq_any(order_ids))
        .filter(st::lease_owner.eq(owner));
    let release = (
        st::next_attempt_at.eq(next_at),
        st::last_error.eq(error),
        lease_released!(st),
        st::updated_at.eq(super::now()),
    );
    match state {
        Some(s) => diesel::update(target)
            .set((release, st::state.eq(s)))
            .execute(conn)?,
        None => diesel::update(target).set(release).execute(conn)?,
    };
    Ok(())
}

pub fn of_order(conn: &mut AnyConnection, order_id: &str) -> Result<Vec<StepRow>, StorageError> {
    find_by!(conn, st::order_id.eq(order_id) => Vec<StepRow>)
}

pub fn of_orders(
    conn: &mut AnyConnection,
    order_ids: &[String],
) -> Result<Vec<StepRow>, StorageError> {
    find_by!(conn, st::order_id.eq_any(order_ids) => Vec<StepRow>)
}

/// Steps not finished yet (pending or sent), across all sellers.
pub fn backlog(conn: &mut AnyConnection) -> Result<i64, StorageError> {
    Ok(st::table
        .filter(st::state.eq_any([StepState::Pending, StepState::Sent]))
        .count()
        .get_result(conn)?)
}

/// When the next unfinished step of a seller is due.
pub fn next_due(
    conn: &mut AnyConnection,
    seller_id: Option<&str>,
) -> Result<Option<NaiveDateTime>, StorageError> {
    let mut q = st::table
        .filter(st::state.eq_any([StepState::Pending, StepState::Sent]))
        .into_boxed();
    if let Some(s) = seller_id {
        q = q.filter(st::seller_id.eq(s.to_owned()));
    }
    Ok(q.select(diesel::dsl::min(st::next_attempt_at))
        .first(conn)?)
}

aggregate_handle! {
    /// Order steps, as the use cases see them.
    Steps => steps
}

impl Steps<'_> {
    pub async fn claim(
        &self,
        seller_id: &str,
        kind: StepKind,
        owner: &str,
        until: NaiveDateTime,
        limit: i64,
    ) -> Result<Vec<StepRow>, StorageError> {
        let (seller, owner) = (seller_id.to_owned(), owner.to_owned());
        self.db
            .run(move |c| claim(c, &seller, kind, &owner, until, limit))
            .await
    }

    pub async fn mark_sent(
        &self,
        kind: StepKind,
        order_ids: Vec<String>,
        owner: &str,
    ) -> Result<(), StorageError> {
        self.db
            .run_with(owner, move |c, owner| mark_sent(c, kind, &order_ids, owner))
            .await
    }

    pub async fn finish(
        &self,
        kind: StepKind,
        owner: &str,
        done: Vec<Finished>,
    ) -> Result<usize, StorageError> {
        self.db
            .run_with(owner, move |c, owner| finish(c, kind, owner, &done))
            .await
    }

    pub async fn reschedule(
        &self,
        kind: StepKind,
        order_ids: Vec<String>,
        owner: &str,
        next_at: NaiveDateTime,
        error: Option<String>,
        state: Option<StepState>,
    ) -> Result<(), StorageError> {
        let owner = owner.to_owned();
        self.db
            .run(move |c| {
                reschedule(
                    c,
                    kind,
                    &order_ids,
                    &owner,
                    next_at,
                    error.as_deref(),
                    state,
                )
            })
            .await
    }

    pub async fn of_order(&self, order_id: &str) -> Result<Vec<StepRow>, StorageError> {
        self.db.run_with(order_id, of_order).await
    }

    pub async fn of_orders(&self, order_ids: Vec<String>) -> Result<Vec<StepRow>, StorageError> {
        self.db.run(move |c| of_orders(c, &order_ids)).await
    }

    pub async fn backlog(&self) -> Result<i64, StorageError> {
        self.db.run(backlog).await
    }
}
