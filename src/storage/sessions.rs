//! `connect_sessions` and `oauth_states`: the single-use links that open the connect page, and the OAuth
//! `state` values minted on it. Both are stored only as SHA-256 hashes of their random values.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{connect_sessions as cs, oauth_states as os};
use super::{AnyConnection, StorageError};

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
}

pub fn insert_session(
    conn: &mut AnyConnection,
    s: &NewSession,
) -> Result<ConnectSession, StorageError> {
    Ok(crate::per_backend!(conn, |c| diesel::insert_into(
        cs::table
    )
    .values(s)
    .returning(ConnectSession::as_returning())
    .get_result(c))?)
}

pub fn find_session_by_hash(
    conn: &mut AnyConnection,
    token_hash: &str,
) -> Result<Option<ConnectSession>, StorageError> {
    Ok(cs::table
        .filter(cs::token_hash.eq(token_hash))
        .select(ConnectSession::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_session(
    conn: &mut AnyConnection,
    id: i64,
) -> Result<Option<ConnectSession>, StorageError> {
    Ok(cs::table
        .filter(cs::id.eq(id))
        .select(ConnectSession::as_select())
        .first(conn)
        .optional()?)
}

/// Marks a session used if it is still unused; false when another callback got there first.
pub fn mark_session_used(
    conn: &mut AnyConnection,
    id: i64,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    let n = diesel::update(
        cs::table
            .filter(cs::id.eq(id))
            .filter(cs::used_at.is_null()),
    )
    .set(cs::used_at.eq(Some(now)))
    .execute(conn)?;
    Ok(n == 1)
}

pub fn insert_state(conn: &mut AnyConnection, s: &NewState) -> Result<(), StorageError> {
    diesel::insert_into(os::table).values(s).execute(conn)?;
    Ok(())
}

pub fn find_state_by_hash(
    conn: &mut AnyConnection,
    state_hash: &str,
) -> Result<Option<OAuthState>, StorageError> {
    Ok(os::table
        .filter(os::state_hash.eq(state_hash))
        .select(OAuthState::as_select())
        .first(conn)
        .optional()?)
}

/// Consumes a state: one conditional UPDATE, so two callbacks racing with the same state cannot both win.
pub fn consume_state(
    conn: &mut AnyConnection,
    id: i64,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    let n = diesel::update(
        os::table
            .filter(os::id.eq(id))
            .filter(os::used_at.is_null()),
    )
    .set(os::used_at.eq(Some(now)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Removes sessions (and, by cascade, their states) that expired before `before`.
pub fn prune_expired(
    conn: &mut AnyConnection,
    before: NaiveDateTime,
) -> Result<usize, StorageError> {
    diesel::delete(os::table.filter(os::expires_at.lt(before))).execute(conn)?;
    Ok(diesel::delete(cs::table.filter(cs::expires_at.lt(before))).execute(conn)?)
}

/// Runs `f` in one database transaction (for services, which do not import diesel).
pub fn transaction<T, F>(conn: &mut AnyConnection, f: F) -> Result<T, StorageError>
where
    F: FnOnce(&mut AnyConnection) -> Result<T, StorageError>,
{
    conn.transaction(f)
}
