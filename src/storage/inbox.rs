//! `amocrm_webhook_inbox`: raw amoCRM webhook bodies, committed before amoCRM gets its 200, then leased and
//! processed by the webhook processor. A connection's bodies are processed one at a time.

use chrono::NaiveDateTime;
use diesel::dsl::{exists, not};
use diesel::prelude::*;

use super::schema::amocrm_webhook_inbox as i;
use super::{AnyConnection, ExecuteOne, StorageError};
use crate::domain::status::{ConnectionStatus, InboxState};

diesel::alias!(i as busy: BusyInbox);

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = i)]
pub struct InboxRow {
    pub id: i64,
    pub connection_id: i64,
    pub seller_id: String,
    pub body: Vec<u8>,
    pub state: InboxState,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: NaiveDateTime,
    pub lease_owner: Option<String>,
    pub lease_until: Option<NaiveDateTime>,
    pub received_at: NaiveDateTime,
    pub processed_at: Option<NaiveDateTime>,
}

/// What the intake needs of a connection to accept a body for it.
#[derive(Debug, Clone, Queryable)]
pub struct TokenOwner {
    pub id: i64,
    pub seller_id: String,
    pub account_id: i64,
    pub subdomain: String,
    pub status: ConnectionStatus,
    pub webhook_token: String,
}

/// The connections behind a batch of webhook tokens (the intake looks a whole batch up at once).
pub fn connections_by_tokens(
    conn: &mut AnyConnection,
    tokens: &[&str],
) -> Result<Vec<TokenOwner>, StorageError> {
    use super::schema::amocrm_connections as c;
    Ok(c::table
        .filter(c::webhook_token.eq_any(tokens))
        .select((
            c::id,
            c::seller_id,
            c::account_id,
            c::subdomain,
            c::status,
            c::webhook_token,
        ))
        .load(conn)?)
}

/// The values of one raw body stored as pending work, due at once.
#[diesel::dsl::auto_type]
fn pending<'a>(connection_id: i64, seller_id: &'a str, body: &'a [u8], now: NaiveDateTime) -> _ {
    let state: InboxState = InboxState::Pending;
    let attempts: i32 = 0;
    (
        i::connection_id.eq(connection_id),
        i::seller_id.eq(seller_id),
        i::body.eq(body),
        i::state.eq(state),
        i::attempts.eq(attempts),
        i::next_attempt_at.eq(now),
        i::received_at.eq(now),
    )
}

/// Stores one raw body as pending work; returns its id. One INSERT, committed on return.
pub fn insert(
    conn: &mut AnyConnection,
    connection_id: i64,
    seller_id: &str,
    body: &[u8],
    now: NaiveDateTime,
) -> Result<i64, StorageError> {
    Ok(diesel::insert_into(i::table)
        .values(pending(connection_id, seller_id, body, now))
        .returning(i::id)
        .get_result(conn)?)
}

/// Stores several raw bodies `(connection_id, seller_id, body)` at once: one multi-row INSERT on
/// PostgreSQL (one round trip), row by row on SQLite (in-process, no round trips to save).
pub fn insert_many(
    conn: &mut AnyConnection,
    rows: &[(i64, &str, &[u8])],
    now: NaiveDateTime,
) -> Result<(), StorageError> {
    if rows.is_empty() {
        return Ok(());
    }
    match conn {
        AnyConnection::Postgresql(c) => {
            let values: Vec<_> = rows
                .iter()
                .map(|(conn_id, seller, body)| pending(*conn_id, seller, body, now))
                .collect();
            diesel::insert_into(i::table).values(&values).execute(c)?;
        }
        AnyConnection::Sqlite(_) => {
            for (conn_id, seller, body) in rows {
                insert(conn, *conn_id, seller, body, now)?;
            }
        }
    }
    Ok(())
}

/// Claims up to `limit` due rows, at most one per connection and none of a connection that already has a
/// row in flight, oldest first.
pub fn claim_due(
    conn: &mut AnyConnection,
    owner: &str,
    now: NaiveDateTime,
    lease_until: NaiveDateTime,
    limit: i64,
) -> Result<Vec<InboxRow>, StorageError> {
    let candidates: Vec<(i64, i64)> = i::table
        .filter(i::state.eq(InboxState::Pending))
        .filter(i::next_attempt_at.le(now))
        .filter(lease_free!(i, now))
        .filter(not(exists(
            busy.filter(busy.field(i::connection_id).eq(i::connection_id))
                .filter(busy.field(i::state).eq(InboxState::Pending))
                .filter(busy.field(i::lease_until).ge(now)),
        )))
        .order(i::id.asc())
        .limit(limit * 4)
        .select((i::id, i::connection_id))
        .load(conn)?;
    let mut seen = std::collections::HashSet::new();
    let mut claimed = Vec::new();
    for (id, connection_id) in candidates {
        if claimed.len() as i64 >= limit || !seen.insert(connection_id) {
            continue;
        }
        let n = diesel::update(
            i::table
                .filter(i::id.eq(id))
                .filter(i::state.eq(InboxState::Pending))
                .filter(lease_free!(i, now)),
        )
        .set(lease_taken!(i, owner, lease_until))
        .execute(conn)?;
        if n == 1 {
            claimed.push(id);
        }
    }
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    find_by!(conn, i::id.eq_any(&claimed), order i::id.asc() => Vec<InboxRow>)
}

/// Marks a row processed (it stays for the retention period as the raw record).
pub fn mark_processed(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    note: Option<&str>,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(held_by!(i, owner, i::id.eq(id)))
        .set((
            i::state.eq(InboxState::Processed),
            i::attempts.eq(i::attempts + 1),
            i::last_error.eq(note),
            i::processed_at.eq(Some(now)),
            lease_released!(i),
        ))
        .execute_one(conn)
}

/// Puts a row back for a later attempt, or gives up on it (`retry_at` = `None`: state `failed`).
pub fn mark_failed_attempt(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    error: &str,
    retry_at: Option<NaiveDateTime>,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    let (state, next) = match retry_at {
        Some(at) => (InboxState::Pending, at),
        None => (InboxState::Failed, now),
    };
    diesel::update(held_by!(i, owner, i::id.eq(id)))
        .set((
            i::state.eq(state),
            i::attempts.eq(i::attempts + 1),
            i::last_error.eq(Some(error)),
            i::next_attempt_at.eq(next),
            lease_released!(i),
        ))
        .execute_one(conn)
}

/// Sets a failed (or processed) row back to pending, due now (operators re-driving a body).
pub fn requeue(
    conn: &mut AnyConnection,
    id: i64,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(
        i::table
            .filter(i::id.eq(id))
            .filter(i::state.ne(InboxState::Pending)),
    )
    .set((
        i::state.eq(InboxState::Pending),
        i::next_attempt_at.eq(now),
        lease_released!(i),
    ))
    .execute_one(conn)
}

pub fn find(conn: &mut AnyConnection, id: i64) -> Result<Option<InboxRow>, StorageError> {
    find_by!(conn, i::id.eq(id) => InboxRow)
}

/// Rows of one seller, oldest first (tests and the dashboard).
pub fn for_seller(
    conn: &mut AnyConnection,
    seller_id: &str,
) -> Result<Vec<InboxRow>, StorageError> {
    find_by!(conn, i::seller_id.eq(seller_id), order i::id.asc() => Vec<InboxRow>)
}

/// Number of rows, optionally in one state.
pub fn count(conn: &mut AnyConnection, state: Option<&str>) -> Result<i64, StorageError> {
    let mut q = i::table.count().into_boxed();
    if let Some(s) = state {
        q = q.filter(i::state.eq(s.to_owned()));
    }
    Ok(q.get_result(conn)?)
}

/// Deletes finished rows received before `cutoff`, at most `batch` at a time; returns how many went.
pub fn prune(
    conn: &mut AnyConnection,
    cutoff: NaiveDateTime,
    batch: i64,
) -> Result<usize, StorageError> {
    let ids: Vec<i64> = i::table
        .filter(i::received_at.lt(cutoff))
        .filter(i::state.ne(InboxState::Pending))
        .order(i::id.asc())
        .limit(batch)
        .select(i::id)
        .load(conn)?;
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(diesel::delete(i::table.filter(i::id.eq_any(&ids))).execute(conn)?)
}

/// One body offered to [`store_checked`]: the webhook token it came with and the raw bytes.
pub trait OfferedBody {
    fn token(&self) -> &str;
    fn body(&self) -> &[u8];
}

/// Looks the batch's tokens up, asks `verdict` about each body with its connection, and inserts the accepted
/// ones in one transaction. A body whose token matches no connection gets `unknown()`.
pub fn store_checked<T: OfferedBody, R, E>(
    conn: &mut AnyConnection,
    items: &[T],
    now: NaiveDateTime,
    verdict: impl Fn(&T, &TokenOwner) -> Result<R, E>,
    unknown: impl Fn() -> E,
) -> Result<Vec<Result<R, E>>, StorageError> {
    let mut tokens: Vec<&str> = items.iter().map(OfferedBody::token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    // Read before the write transaction, so it starts with a write (SQLite takes its lock at once).
    let found = connections_by_tokens(conn, &tokens)?;
    let mut out = Vec::with_capacity(items.len());
    let mut rows: Vec<(i64, &str, &[u8])> = Vec::new();
    for item in items {
        let Some(owner) = found.iter().find(|f| f.webhook_token == item.token()) else {
            out.push(Err(unknown()));
            continue;
        };
        let v = verdict(item, owner);
        if v.is_ok() {
            rows.push((owner.id, owner.seller_id.as_str(), item.body()));
        }
        out.push(v);
    }
    conn.transaction(|c| insert_many(c, &rows, now))?;
    Ok(out)
}

aggregate_handle! {
    /// Stored webhook bodies, as the intake, the processor and retention see them: each call is one trip to the
    /// blocking pool.
    Inbox => inbox
}

impl Inbox<'_> {
    /// See [`store_checked`].
    pub async fn store_checked<T, R, E>(
        &self,
        items: std::sync::Arc<Vec<T>>,
        verdict: fn(&T, &TokenOwner) -> Result<R, E>,
        unknown: fn() -> E,
    ) -> Result<Vec<Result<R, E>>, StorageError>
    where
        T: OfferedBody + Send + Sync + 'static,
        R: Send + 'static,
        E: Send + 'static,
    {
        // The intake's writer already commits its requests in groups: it writes on its own connection.
        self.db
            .run_alone(move |c| store_checked(c, &items, super::now(), verdict, unknown))
            .await
    }

    /// See [`claim_due`].
    pub async fn claim_due(
        &self,
        owner: &str,
        now: NaiveDateTime,
        until: NaiveDateTime,
        limit: i64,
    ) -> Result<Vec<InboxRow>, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                claim_due(c, owner, now, until, limit)
            })
            .await
    }

    /// See [`mark_processed`].
    pub async fn mark_processed(
        &self,
        id: i64,
        owner: &str,
        note: Option<String>,
        now: NaiveDateTime,
    ) -> Result<bool, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                mark_processed(c, id, owner, note.as_deref(), now)
            })
            .await
    }

    /// See [`mark_failed_attempt`].
    pub async fn mark_failed_attempt(
        &self,
        id: i64,
        owner: &str,
        error: String,
        retry_at: Option<NaiveDateTime>,
        now: NaiveDateTime,
    ) -> Result<bool, StorageError> {
        self.db
            .run_with(owner, move |c, owner| {
                mark_failed_attempt(c, id, owner, &error, retry_at, now)
            })
            .await
    }

    /// Deletes at most `batch` finished bodies older than `cutoff`; see [`prune`].
    pub async fn prune(&self, cutoff: NaiveDateTime, batch: i64) -> Result<usize, StorageError> {
        self.db.run(move |c| prune(c, cutoff, batch)).await
    }
}
