//! `api_keys` and `api_key_usage`: hashed marketplace API keys and their hourly request counts.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{api_key_usage, api_keys};
use super::{AnyConnection, ExecuteOne, StorageError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: i64,
    pub name: String,
    pub key_prefix: String,
    pub key_hash: String,
    pub tier: String,
    pub created_at: NaiveDateTime,
    pub last_used_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    /// `full`, `read` or `orders` (see `services::api_keys::Scope`).
    pub scope: String,
}

#[derive(Insertable)]
#[diesel(table_name = api_keys)]
struct NewApiKey<'a> {
    name: &'a str,
    key_prefix: &'a str,
    key_hash: &'a str,
    tier: &'a str,
    created_at: NaiveDateTime,
    scope: &'a str,
}

pub fn insert(
    conn: &mut AnyConnection,
    name: &str,
    key_prefix: &str,
    key_hash: &str,
    tier: &str,
    scope: &str,
) -> Result<ApiKeyRow, StorageError> {
    let created_at = super::now();
    let id = diesel::insert_into(api_keys::table)
        .values(NewApiKey {
            name,
            key_prefix,
            key_hash,
            tier,
            created_at,
            scope,
        })
        .returning(api_keys::id)
        .get_result::<i64>(conn)?;
    Ok(ApiKeyRow {
        id,
        name: name.to_owned(),
        key_prefix: key_prefix.to_owned(),
        key_hash: key_hash.to_owned(),
        tier: tier.to_owned(),
        created_at,
        last_used_at: None,
        revoked_at: None,
        scope: scope.to_owned(),
    })
}

pub fn list(conn: &mut AnyConnection) -> Result<Vec<ApiKeyRow>, StorageError> {
    find_by!(conn, all api_keys, order api_keys::id.asc() => Vec<ApiKeyRow>)
}

/// Marks a key revoked; false when there is no such active key.
pub fn revoke(conn: &mut AnyConnection, id: i64) -> Result<bool, StorageError> {
    revoke_live!(api_keys, api_keys::id.eq(id), super::now()).execute_one(conn)
}

pub fn find_active_by_hash(
    conn: &mut AnyConnection,
    hash: &str,
) -> Result<Option<ApiKeyRow>, StorageError> {
    Ok(api_keys::table
        .filter(api_keys::key_hash.eq(hash))
        .filter(api_keys::revoked_at.is_null())
        .select(ApiKeyRow::as_select())
        .first(conn)
        .optional()?)
}

/// Counts one request in the key's window and returns the window's total so far (atomic upsert).
pub fn count_request(
    conn: &mut AnyConnection,
    key_id: i64,
    window_start: NaiveDateTime,
) -> Result<i64, StorageError> {
    let total = crate::per_backend!(conn, |c| diesel::insert_into(api_key_usage::table)
        .values((
            api_key_usage::key_id.eq(key_id),
            api_key_usage::window_start.eq(window_start),
            api_key_usage::request_count.eq(1i64),
        ))
        .on_conflict((api_key_usage::key_id, api_key_usage::window_start))
        .do_update()
        .set(api_key_usage::request_count.eq(api_key_usage::request_count + 1i64))
        .returning(api_key_usage::request_count)
        .get_result::<i64>(c))?;
    Ok(total)
}

/// The active key with this hash and, when `metered(tier)`, its request counted in the window starting
/// at `window_start` (the window's total so far). One trip to the pool, as this runs on every API request;
/// not one transaction, as the count is a single atomic upsert.
pub fn find_active_and_count(
    conn: &mut AnyConnection,
    hash: &str,
    window_start: NaiveDateTime,
    metered: fn(&str) -> bool,
) -> Result<Option<(ApiKeyRow, Option<i64>)>, StorageError> {
    let Some(key) = find_active_by_hash(conn, hash)? else {
        return Ok(None);
    };
    let used = if metered(&key.tier) {
        Some(count_request(conn, key.id, window_start)?)
    } else {
        None
    };
    Ok(Some((key, used)))
}

/// Drops usage windows older than `before` (they only matter for the current hour).
pub fn prune_usage(conn: &mut AnyConnection, before: NaiveDateTime) -> Result<usize, StorageError> {
    Ok(
        diesel::delete(api_key_usage::table.filter(api_key_usage::window_start.lt(before)))
            .execute(conn)?,
    )
}

aggregate_handle! {
    /// API keys, as the use cases see them: each call is one trip to the blocking pool.
    ApiKeys => api_keys
}

impl ApiKeys<'_> {
    /// Stores a key by its prefix and hash; the plaintext never reaches the database.
    pub async fn insert(
        &self,
        name: &str,
        key_prefix: &str,
        key_hash: &str,
        tier: &str,
        scope: &str,
    ) -> Result<ApiKeyRow, StorageError> {
        let (name, prefix, hash, tier, scope) = (
            name.to_owned(),
            key_prefix.to_owned(),
            key_hash.to_owned(),
            tier.to_owned(),
            scope.to_owned(),
        );
        self.db
            .run(move |c| insert(c, &name, &prefix, &hash, &tier, &scope))
            .await
    }

    pub async fn list(&self) -> Result<Vec<ApiKeyRow>, StorageError> {
        self.db.run(list).await
    }

    /// Marks a key revoked; false when there is no such active key.
    pub async fn revoke(&self, id: i64) -> Result<bool, StorageError> {
        self.db.run(move |c| revoke(c, id)).await
    }

    /// The active key with this hash, its request counted when its tier is metered (see
    /// [`find_active_and_count`]).
    pub async fn find_active_and_count(
        &self,
        hash: &str,
        window_start: NaiveDateTime,
        metered: fn(&str) -> bool,
    ) -> Result<Option<(ApiKeyRow, Option<i64>)>, StorageError> {
        self.db
            .run_with(hash, move |c, hash| {
                find_active_and_count(c, hash, window_start, metered)
            })
            .await
    }
}
