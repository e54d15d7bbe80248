//! What one instance holds in the shared database, released in one go when it shuts down, so other
//! instances (or this one after a restart) take the work over at once instead of waiting for the leases
//! to expire.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{
    amocrm_connections, amocrm_webhook_inbox, event_deliveries, job_leases, order_moves, orders,
};
use super::{AnyConnection, Db, StorageError};

/// Leases this instance released, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub orders: usize,
    pub order_moves: usize,
    pub deliveries: usize,
    pub inbox: usize,
    pub refresh: usize,
    pub push: usize,
    pub jobs: usize,
    pub turns: usize,
}

impl Released {
    pub fn total(&self) -> usize {
        self.orders
            + self.order_moves
            + self.deliveries
            + self.inbox
            + self.refresh
            + self.push
            + self.jobs
            + self.turns
    }
}

/// Releases every lease `owner` holds, expiring it at `now`. Only call this once no task of the owner is
/// still working.
///
/// Orders whose `leads/complex` call may still be in flight (they keep `needs_lookup`, set when they were
/// claimed, until the answer is recorded) stay leased until `in_flight_until`: amoCRM may still apply a
/// request the client gave up on, and whoever takes the orders next must look them up only after that
/// write has landed, or it would not find the lead and create a second one.
pub fn release_all(
    conn: &mut AnyConnection,
    owner: &str,
    now: NaiveDateTime,
    in_flight_until: NaiveDateTime,
) -> Result<Released, StorageError> {
    // Frees the rows of `table` whose lease column `owner_col` names `owner`, due again now.
    macro_rules! release {
        ($table:ident . $owner_col:ident, $until_col:ident) => {
            diesel::update($table::table.filter($table::$owner_col.eq(owner)))
                .set(lease_released!($table::$owner_col, $table::$until_col, until now))
                .execute(conn)?
        };
    }
    let possibly_sent = diesel::update(
        orders::table
            .filter(orders::lease_owner.eq(owner))
            .filter(orders::needs_lookup.eq(true)),
    )
    .set(lease_released!(orders, until in_flight_until))
    .execute(conn)?;
    Ok(Released {
        orders: possibly_sent + release!(orders.lease_owner, lease_until),
        order_moves: release!(order_moves.lease_owner, lease_until),
        deliveries: release!(event_deliveries.lease_owner, lease_until),
        inbox: release!(amocrm_webhook_inbox.lease_owner, lease_until),
        refresh: release!(amocrm_connections.refresh_lease_owner, refresh_lease_until),
        push: release!(amocrm_connections.push_lease_owner, push_lease_until),
        jobs: release!(job_leases.owner, lease_until),
        turns: super::turns::release_all(
            conn,
            owner,
            now + chrono::TimeDelta::milliseconds(super::turns::MARGIN_MS),
        )?,
    })
}

/// What an instance holds, as start-up and shutdown see it.
pub struct Instance<'a> {
    db: &'a Db,
    owner: String,
}

impl Db {
    /// The leases of the instance `owner`.
    pub fn instance(&self, owner: &str) -> Instance<'_> {
        Instance {
            db: self,
            owner: owner.to_owned(),
        }
    }
}

impl Instance<'_> {
    /// Runs `f` on the blocking pool for this instance's owner id.
    async fn as_owner<T: Send + 'static>(
        &self,
        f: impl Fn(&mut AnyConnection, &str) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let owner = self.owner.clone();
        self.db.run(move |c| f(c, &owner)).await
    }

    /// See [`release_all`]; at shutdown, once the workers have stopped.
    pub async fn release(
        &self,
        now: NaiveDateTime,
        in_flight_until: NaiveDateTime,
    ) -> Result<Released, StorageError> {
        self.as_owner(move |c, owner| release_all(c, owner, now, in_flight_until))
            .await
    }

    /// At start-up, what a killed previous life of this instance left taken: its leases (as at shutdown)
    /// and its per-item job leases. Returns how many were freed.
    pub async fn take_back(
        &self,
        now: NaiveDateTime,
        in_flight_until: NaiveDateTime,
    ) -> Result<usize, StorageError> {
        self.as_owner(move |c, owner| {
            let plain = release_all(c, owner, now, in_flight_until)?;
            let prefixed = super::leases::release_prefixed(c, owner, now)?;
            Ok(plain.total() + prefixed)
        })
        .await
    }
}
