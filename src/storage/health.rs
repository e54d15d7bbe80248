//! `connection_health`: how each connection's calls to amoCRM have been going (last success, last failure and
//! its class, the state). Kept apart from `amocrm_connections`, which says what the connection is; written by
//! `services::health` at most about once a minute per connection.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::connection_health as h;
use super::{AnyConnection, StorageError};
use crate::domain::status::HealthState;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = h, treat_none_as_null = true)]
pub struct Health {
    pub connection_id: i64,
    pub state: HealthState,
    pub last_success_at: Option<NaiveDateTime>,
    pub last_failure_at: Option<NaiveDateTime>,
    /// `rate_limited`, `unavailable`, `timeout`, `unauthorized`, `payment_required`, `blocked`, `rejected`, …
    pub last_failure_class: Option<String>,
    /// A short description of the last failure (statuses and amoCRM's own words, never a token).
    pub last_failure: Option<String>,
    pub updated_at: NaiveDateTime,
}

impl Health {
    /// `self` merged over what is stored: the later of each time wins, so instances writing their own views
    /// of one connection never move it backwards.
    fn merged_over(mut self, stored: Option<Health>) -> Self {
        let Some(old) = stored else { return self };
        if old.last_success_at > self.last_success_at {
            self.last_success_at = old.last_success_at;
        }
        if old.last_failure_at > self.last_failure_at {
            self.last_failure_at = old.last_failure_at;
            self.last_failure_class = old.last_failure_class;
            self.last_failure = old.last_failure;
        }
        self
    }
}

/// Writes one connection's health, merged with the stored row (see [`Health::merged_over`]).
pub fn write(conn: &mut AnyConnection, row: &Health) -> Result<(), StorageError> {
    diesel::Connection::transaction(conn, |c| {
        let stored = h::table
            .filter(h::connection_id.eq(row.connection_id))
            .select(Health::as_select())
            .first(c)
            .optional()?;
        let exists = stored.is_some();
        let row = row.clone().merged_over(stored);
        if exists {
            diesel::update(h::table.filter(h::connection_id.eq(row.connection_id)))
                .set(&row)
                .execute(c)?;
        } else {
            diesel::insert_into(h::table).values(&row).execute(c)?;
        }
        Ok(())
    })
}

/// The health rows of the given connections (those never written are absent).
pub fn of(conn: &mut AnyConnection, ids: &[i64]) -> Result<Vec<Health>, StorageError> {
    find_by!(conn, h::connection_id.eq_any(ids) => Vec<Health>)
}

aggregate_handle! {
    /// Connection health, as the use cases see it.
    HealthRepo => health
}

impl HealthRepo<'_> {
    /// See [`write`].
    pub async fn write(&self, row: &Health) -> Result<(), StorageError> {
        let row = row.clone();
        self.db.run(move |c| write(c, &row)).await
    }

    /// See [`of`].
    pub async fn of(&self, ids: Vec<i64>) -> Result<Vec<Health>, StorageError> {
        self.db.run(move |c| of(c, &ids)).await
    }
}
