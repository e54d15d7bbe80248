//! `connect_sessions` and `oauth_states`: the single-use links that open the connect page, and the OAuth
//! `state` values minted on it. Both are stored only as SHA-256 hashes of their random values.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{connect_sessions as cs, oauth_states as os};
use super::{AnyConnection, ExecuteOne, StorageError};
use crate::domain::platform::Platform;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = cs)]
pub struct ConnectSession {
    pub id: i64,
    pub token_hash: String,
    pub seller_id: String,
    pub return_url: Option<String>,
    pub lang: String,
    pub expires_at: NaiveDateTime,
    pub used_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    /// The platform the seller connects to: its consent page and client id.
    pub platform: Platform,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = os)]
pub struct OAuthState {
    pub id: i64,
    pub state_hash: String,
    pub session_id: i64,
    pub seller_id: String,
    pub browser_hash: String,
    pub mode: String,
    pub expires_at: NaiveDateTime,
    pub used_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    /// The language of the page that minted the state: what the seller chose, kept server-side.
    pub lang: Option<String>,
    /// SHA-256 of the key of the result page this state's callback redirects to.
    pub result_hash: Option<String>,
    /// `connected` or the refusal's name, once the callback has finished.
    pub outcome: Option<String>,
}

/// A session about to be stored.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = cs)]
pub struct NewSession {
    pub token_hash: String,
    pub seller_id: String,
    pub return_url: Option<String>,
    pub lang: String,
    pub expires_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub platform: Platform,
}

/// A state about to be stored.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = os)]
pub struct NewState {
    pub state_hash: String,
    pub session_id: i64,
    pub seller_id: String,
    pub browser_hash: String,
    pub mode: String,
    pub expires_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub lang: Option<String>,
    pub result_hash: Option<String>,
}

pub fn insert_session(
    conn: &mut AnyConnection,
    s: &NewSession,
) -> Result<ConnectSession, StorageError> {
    insert_returning!(conn, cs, s => ConnectSession)
}

pub fn find_session_by_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<ConnectSession>, StorageError> {
    find_by!(conn, cs::token_hash.eq(token_hash) => ConnectSession)
}

pub fn find_session(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<ConnectSession>, StorageError> {
    find_by!(conn, cs::id.eq(id) => ConnectSession)
}

/// Marks a session used if it is still unused; false when another callback got there first.
pub fn mark_session_used(
    conn: &mut AnyConnection,
    id: i64,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(
        cs::table
            .filter(cs::id.eq(id))
            .filter(cs::used_at.is_null()),
    )
    .set(cs::used_at.eq(Some(now)))
    .execute_one(conn)
}

pub fn insert_state(conn: &mut AnyConnection, s: &NewState) -> Result<(), StorageError> {
    diesel::insert_into(os::table).values(s).execute(conn)?;
    Ok(())
}

pub fn find_state_by_hash(
    conn: &mut AnyConnection,
    state_hash: &str,
) -> Result<Option<OAuthState>, StorageError> {
    find_by!(conn, os::state_hash.eq(state_hash) => OAuthState)
}

/// Consumes a state: one conditional UPDATE, so two callbacks racing with the same state cannot both win.
pub fn consume_state(
    conn: &mut AnyConnection,
    id: i64,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(
        os::table
            .filter(os::id.eq(id))
            .filter(os::used_at.is_null()),
    )
    .set(os::used_at.eq(Some(now)))
    .execute_one(conn)
}

pub fn find_state_by_result_hash(
    conn: &mut AnyConnection,
    result_hash: &str,
) -> Result<Option<OAuthState>, StorageError> {
    find_by!(conn, os::result_hash.eq(result_hash) => OAuthState)
}

/// Records how a consumed state's callback ended, for its result page.
pub fn record_outcome(
    conn: &mut AnyConnection,
    id: i64,
    outcome: &str,
) -> Result<(), StorageError> {
    diesel::update(os::table.filter(os::id.eq(id)))
        .set(os::outcome.eq(Some(outcome)))
        .execute(conn)?;
    Ok(())
}

/// Removes sessions (and, by cascade, their states) that expired before `before`.
pub fn prune_expired(
    conn: &mut AnyConnection,
    before: NaiveDateTime,
) -> Result<usize, StorageError> {
    diesel::delete(os::table.filter(os::expires_at.lt(before))).execute(conn)?;
    Ok(diesel::delete(cs::table.filter(cs::expires_at.lt(before))).execute(conn)?)
}

aggregate_handle! {
    /// Connect sessions and OAuth states, as the use cases see them: each call is one trip to the blocking pool.
    Sessions => sessions
}

impl Sessions<'_> {
    pub async fn insert(&self, new: NewSession) -> Result<ConnectSession, StorageError> {
        self.db.run(move |c| insert_session(c, &new)).await
    }

    /// The session whose raw token hashes to `token_hash`.
    pub async fn by_token_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<ConnectSession>, StorageError> {
        self.db.run_with(token_hash, find_session_by_hash).await
    }

    pub async fn by_id(&self, id: i64) -> Result<Option<ConnectSession>, StorageError> {
        self.db.run(move |c| find_session(c, id)).await
    }

    pub async fn insert_state(&self, new: NewState) -> Result<(), StorageError> {
        self.db.run(move |c| insert_state(c, &new)).await
    }

    /// The state whose raw value hashes to `state_hash`.
    pub async fn state_by_hash(
        &self,
        state_hash: &str,
    ) -> Result<Option<OAuthState>, StorageError> {
        self.db.run_with(state_hash, find_state_by_hash).await
    }

    /// The state whose result page key hashes to `result_hash`.
    pub async fn state_by_result_hash(
        &self,
        result_hash: &str,
    ) -> Result<Option<OAuthState>, StorageError> {
        self.db
            .run_with(result_hash, find_state_by_result_hash)
            .await
    }

    /// See [`record_outcome`].
    pub async fn record_outcome(&self, id: i64, outcome: &'static str) -> Result<(), StorageError> {
        self.db.run(move |c| record_outcome(c, id, outcome)).await
    }

    /// See [`consume_state`].
    pub async fn consume_state(&self, id: i64) -> Result<bool, StorageError> {
        self.db
            .run(move |c| consume_state(c, id, super::now()))
            .await
    }

    /// See [`prune_expired`].
    pub async fn prune_expired(&self, before: NaiveDateTime) -> Result<usize, StorageError> {
        self.db.run(move |c| prune_expired(c, before)).await
    }
}
