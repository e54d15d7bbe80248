//! `webhook_subscriptions`: the marketplace's event subscriptions; signing secrets are encrypted.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use secrecy::SecretString;

use super::cipher::{Aad, CipherError, Keyring};
use super::schema::webhook_subscriptions as s;
use super::{AnyConnection, StorageError};

pub const TABLE: &str = "webhook_subscriptions";
pub const SECRET_COLUMN: &str = "secret";

/// A subscription row; a new one is stored whole, with `secret_enc` already sealed for its row id.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = s)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    pub events: String,
    pub secret_enc: Vec<u8>,
    pub active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

pub fn secret_aad(id: &str) -> Aad<'_> {
    Aad {
        table: TABLE,
        column: SECRET_COLUMN,
        row: id,
    }
}

impl Subscription {
    pub fn secret(&self, keys: &Keyring) -> Result<SecretString, CipherError> {
        keys.decrypt(secret_aad(&self.id), &self.secret_enc)
    }

    pub fn event_list(&self) -> Vec<String> {
        serde_json::from_str(&self.events).unwrap_or_default()
    }
}

pub fn all(conn: &mut AnyConnection) -> Result<Vec<Subscription>, StorageError> {
    find_by!(conn, all s, order s::created_at.asc() => Vec<Subscription>)
}

/// Swaps a secret's ciphertext for one sealed under the active key, only if it is still `old` (a concurrent
/// `PATCH` wins); the number of rows changed.
pub fn replace_secret(
    conn: &mut AnyConnection,
    id: &str,
    old: &[u8],
    fresh: &[u8],
) -> Result<usize, StorageError> {
    Ok(
        diesel::update(s::table.filter(s::id.eq(id)).filter(s::secret_enc.eq(old)))
            .set(s::secret_enc.eq(fresh))
            .execute(conn)?,
    )
}

/// Fields a `PATCH` may change; `None` leaves the column as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = s)]
pub struct SubscriptionChanges {
    pub url: Option<String>,
    pub events: Option<String>,
    pub secret_enc: Option<Vec<u8>>,
    pub active: Option<bool>,
    pub updated_at: Option<NaiveDateTime>,
}

pub fn insert(conn: &mut AnyConnection, row: &Subscription) -> Result<Subscription, StorageError> {
    diesel::insert_into(s::table).values(row).execute(conn)?;
    find(conn, &row.id)?.ok_or(StorageError::Query(diesel::result::Error::NotFound))
}

pub fn find(conn: &mut AnyConnection, id: &str) -> Result<Option<Subscription>, StorageError> {
    find_by!(conn, s::id.eq(id) => Subscription)
}

/// A page of subscriptions, oldest first, with the total count.
pub fn list(
    conn: &mut AnyConnection,
    offset: i64,
    limit: i64,
) -> Result<(Vec<Subscription>, i64), StorageError> {
    let rows = s::table
        .order((s::created_at.asc(), s::id.asc()))
        .offset(offset)
        .limit(limit)
        .select(Subscription::as_select())
        .load(conn)?;
    let total = s::table.count().get_result(conn)?;
    Ok((rows, total))
}

/// Applies a change set; `None` when the subscription does not exist.
pub fn update(
    conn: &mut AnyConnection,
    id: &str,
    changes: &SubscriptionChanges,
) -> Result<Option<Subscription>, StorageError> {
    let n = diesel::update(s::table.filter(s::id.eq(id)))
        .set(changes)
        .execute(conn)?;
    if n == 0 {
        return Ok(None);
    }
    find(conn, id)
}

/// Deletes a subscription and (by cascade) its deliveries; false when it did not exist.
pub fn delete(conn: &mut AnyConnection, id: &str) -> Result<bool, StorageError> {
    // Deliveries first: SQLite cascades only with foreign keys on, PostgreSQL always; be explicit for both.
    conn.transaction(|c| {
        let ids: Vec<i64> = super::schema::event_deliveries::table
            .filter(super::schema::event_deliveries::subscription_id.eq(id))
            .select(super::schema::event_deliveries::id)
            .load(c)?;
        for chunk in ids.chunks(500) {
            diesel::delete(
                super::schema::delivery_attempts::table
                    .filter(super::schema::delivery_attempts::delivery_id.eq_any(chunk)),
            )
            .execute(c)?;
        }
        diesel::delete(
            super::schema::event_deliveries::table
                .filter(super::schema::event_deliveries::subscription_id.eq(id)),
        )
        .execute(c)?;
        Ok::<_, StorageError>(diesel::delete(s::table.filter(s::id.eq(id))).execute(c)? == 1)
    })
}

aggregate_handle! {
    /// Subscriptions, as the use cases see them: each call is one trip to the blocking pool.
    Subscriptions => subscriptions
}

impl Subscriptions<'_> {
    pub async fn all(&self) -> Result<Vec<Subscription>, StorageError> {
        self.db.run(all).await
    }

    pub async fn insert(&self, row: Subscription) -> Result<Subscription, StorageError> {
        self.db.run(move |c| insert(c, &row)).await
    }

    pub async fn find(&self, id: &str) -> Result<Option<Subscription>, StorageError> {
        self.db.run_with(id, find).await
    }

    pub async fn page(
        &self,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Subscription>, i64), StorageError> {
        self.db.run(move |c| list(c, offset, limit)).await
    }

    pub async fn update(
        &self,
        id: &str,
        changes: SubscriptionChanges,
    ) -> Result<Option<Subscription>, StorageError> {
        self.db
            .run_with(id, move |c, id| update(c, id, &changes))
            .await
    }

    pub async fn delete(&self, id: &str) -> Result<bool, StorageError> {
        self.db.run_with(id, delete).await
    }

    /// See [`replace_secret`].
    pub async fn replace_secret(
        &self,
        id: &str,
        old: Vec<u8>,
        fresh: Vec<u8>,
    ) -> Result<bool, StorageError> {
        let id = id.to_owned();
        Ok(self
            .db
            .run(move |c| replace_secret(c, &id, &old, &fresh))
            .await?
            == 1)
    }
}
