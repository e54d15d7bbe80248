//! `amocrm_account_turns`: which instance may call an amoCRM account right now.
//!
//! amoCRM counts requests per account in a sliding second; each instance's limiter only sees its own calls.
//! So an instance calls an account only while it holds the account's turn, a short lease taken and renewed
//! here with single conditional `UPDATE`s (two instances racing cannot both win). A holder that has had the
//! turn for long while another instance waits stops renewing, so one busy instance cannot starve another's
//! token refresh. See [`crate::services::turns`] for how the lease is used safely across a hand-over.

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;

use super::schema::amocrm_account_turns as t;
use super::{AnyConnection, ExecuteOne, StorageError};

aggregate_handle! {
    /// Account turns, as the turn gate sees them: each call is one trip to the blocking pool.
    Turns => turns
}

impl Turns<'_> {
    /// Takes or renews the turn on `key` (see [`take`]).
    pub async fn take(
        &self,
        key: &str,
        owner: &str,
        now: NaiveDateTime,
        until: NaiveDateTime,
        max_turn: TimeDelta,
    ) -> Result<Turn, StorageError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.db
            .run(move |c| take(c, &key, &owner, now, until, max_turn))
            .await
    }

    /// Shortens an idle turn we hold to `cool_until` (see [`shorten`]).
    pub async fn shorten(
        &self,
        key: &str,
        owner: &str,
        cool_until: NaiveDateTime,
    ) -> Result<bool, StorageError> {
        let (key, owner) = (key.to_owned(), owner.to_owned());
        self.db
            .run(move |c| shorten(c, &key, &owner, cool_until))
            .await
    }

    /// Gives up every turn `owner` holds, closed until `cool_until` (see [`release_all`]).
    pub async fn release_all(
        &self,
        owner: &str,
        cool_until: NaiveDateTime,
    ) -> Result<usize, StorageError> {
        self.db
            .run_with(owner, move |c, owner| release_all(c, owner, cool_until))
            .await
    }
}

/// How long before its lease ends a holder stops calling, and how long a released turn stays closed: one
/// limiter window (1.01 s) plus room for clock skew between instances.
pub const MARGIN_MS: i64 = 1500;

/// What asking for a turn came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The turn was free (or expired) and is now ours until the given time.
    Taken,
    /// We held it and it is extended until the given time.
    Renewed,
    /// Someone else holds it (or it is cooling down after a hand-over) until `until`; `was_ours` when we
    /// held it last and gave it up for a waiter.
    Busy {
        until: NaiveDateTime,
        was_ours: bool,
    },
}

/// Takes or renews the turn on `key` for `owner` until `until`. A holder renews only while nobody waits or
/// it has held the turn for less than `max_turn`; otherwise the waiter is marked (`wanted_at`) and gets it
/// when the lease runs out.
pub fn take(
    conn: &mut AnyConnection,
    key: &str,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
    max_turn: TimeDelta,
) -> Result<Turn, StorageError> {
    // Cheapest first: a holder renewing (every second or so while busy) costs one statement.
    let renewed = diesel::update(
        t::table
            .filter(t::account_key.eq(key))
            .filter(t::owner.eq(owner))
            .filter(t::lease_until.ge(now))
            .filter(t::wanted_at.is_null().or(t::taken_at.ge(now - max_turn))),
    )
    .set(t::lease_until.eq(Some(until)))
    .execute(conn)?;
    if renewed == 1 {
        return Ok(Turn::Renewed);
    }
    let take_free = |conn: &mut AnyConnection| {
        diesel::update(
            t::table
                .filter(t::account_key.eq(key))
                .filter(lease_free!(t, now)),
        )
        .set((
            lease_taken!(t::owner, t::lease_until, owner, until),
            t::taken_at.eq(Some(now)),
            t::wanted_at.eq(None::<NaiveDateTime>),
        ))
        .execute(conn)
    };
    if take_free(conn)? == 1 {
        return Ok(Turn::Taken);
    }
    // The first call to this account: make its row, then take it like any free turn.
    let created = crate::per_backend!(conn, |c| diesel::insert_into(t::table)
        .values(t::account_key.eq(key))
        .on_conflict(t::account_key)
        .do_nothing()
        .execute(c))?;
    if created == 1 && take_free(conn)? == 1 {
        return Ok(Turn::Taken);
    }
    // Busy: say that someone waits (unless we are the holder giving it up), then report until when.
    diesel::update(
        t::table
            .filter(t::account_key.eq(key))
            .filter(t::wanted_at.is_null())
            .filter(t::owner.is_null().or(t::owner.ne(owner))),
    )
    .set(t::wanted_at.eq(Some(now)))
    .execute(conn)?;
    let (holder, lease_until): (Option<String>, Option<NaiveDateTime>) = t::table
        .filter(t::account_key.eq(key))
        .select((t::owner, t::lease_until))
        .first(conn)?;
    Ok(Turn::Busy {
        until: lease_until.unwrap_or(now),
        was_ours: holder.as_deref() == Some(owner),
    })
}

/// Gives up every turn `owner` holds. Its last calls may still count at amoCRM for one window, so the
/// turn stays closed until `cool_until` (unless it already runs out sooner).
pub fn release_all(
    conn: &mut AnyConnection,
    owner: &str,
    cool_until: NaiveDateTime,
) -> Result<usize, StorageError> {
    let cooled = diesel::update(
        t::table
            .filter(t::owner.eq(owner))
            .filter(t::lease_until.gt(cool_until)),
    )
    .set(lease_released!(t::owner, t::lease_until, until cool_until))
    .execute(conn)?;
    let cleared = diesel::update(t::table.filter(t::owner.eq(owner)))
        .set(t::owner.eq(None::<String>))
        .execute(conn)?;
    Ok(cooled + cleared)
}

/// Shortens an idle turn we hold to `cool_until` (when our last calls' window has closed): another
/// instance may take it from then on, and we may still renew it before. False when we did not hold it
/// (any more) or it ends sooner anyway.
pub fn shorten(
    conn: &mut AnyConnection,
    key: &str,
    owner: &str,
    cool_until: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(
        t::table
            .filter(t::account_key.eq(key))
            .filter(t::owner.eq(owner))
            .filter(t::lease_until.gt(cool_until)),
    )
    .set(t::lease_until.eq(Some(cool_until)))
    .execute_one(conn)
}
