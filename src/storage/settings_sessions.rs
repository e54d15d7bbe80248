//! `settings_sessions`: the single-use links that open a seller's own settings page. The token is stored only
//! as its SHA-256 hash; the first browser that opens the page is bound to it by the hash of a cookie, so a
//! forwarded or leaked link is useless to anyone else.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::settings_sessions as ss;
use super::{AnyConnection, ExecuteOne, StorageError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = ss)]
pub struct SettingsSession {
    pub id: i64,
    pub token_hash: String,
    pub seller_id: String,
    pub return_url: Option<String>,
    pub lang: String,
    /// SHA-256 of the cookie of the browser that opened the page first; `None` until then.
    pub browser_hash: Option<String>,
    pub expires_at: NaiveDateTime,
    pub opened_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

/// A session about to be stored.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = ss)]
pub struct NewSettingsSession {
    pub token_hash: String,
    pub seller_id: String,
    pub return_url: Option<String>,
    pub lang: String,
    pub expires_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
}

pub fn insert(
    conn: &mut AnyConnection,
    s: &NewSettingsSession,
) -> Result<SettingsSession, StorageError> {
    insert_returning!(conn, ss, s => SettingsSession)
}

pub fn find_by_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<SettingsSession>, StorageError> {
    find_by!(conn, ss::token_hash.eq(token_hash) => SettingsSession)
}

/// Binds an unopened session to a browser: one conditional UPDATE, so of two browsers opening the link at
/// the same moment only one wins. False when the session was already bound.
pub fn bind(
    conn: &mut AnyConnection,
    id: i64,
    browser_hash: &str,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(
        ss::table
            .filter(ss::id.eq(id))
            .filter(ss::browser_hash.is_null()),
    )
    .set((
        ss::browser_hash.eq(Some(browser_hash)),
        ss::opened_at.eq(Some(now)),
    ))
    .execute_one(conn)
}

/// Removes sessions that expired before `before`.
pub fn prune_expired(
    conn: &mut AnyConnection,
    before: NaiveDateTime,
) -> Result<usize, StorageError> {
    Ok(diesel::delete(ss::table.filter(ss::expires_at.lt(before))).execute(conn)?)
}

aggregate_handle! {
    /// Settings sessions, as the use cases see them: each call is one trip to the blocking pool.
    SettingsSessions => settings_sessions
}

impl SettingsSessions<'_> {
    pub async fn insert(&self, new: NewSettingsSession) -> Result<SettingsSession, StorageError> {
        self.db.run(move |c| insert(c, &new)).await
    }

    /// The session whose raw token hashes to `token_hash`.
    pub async fn by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<SettingsSession>, StorageError> {
        self.db.run_with(token_hash, find_by_hash).await
    }

    /// See [`bind`].
    pub async fn bind(&self, id: i64, browser_hash: &str) -> Result<bool, StorageError> {
        self.db
            .run_with(browser_hash, move |c, hash| bind(c, id, hash, super::now()))
            .await
    }

    /// See [`prune_expired`].
    pub async fn prune_expired(&self, before: NaiveDateTime) -> Result<usize, StorageError> {
        self.db.run(move |c| prune_expired(c, before)).await
    }
}
