//! `operators`, `operator_tokens` and `login_throttle`: dashboard users, their hashed tokens, and the
//! failed-login counters that slow down password guessing.

use chrono::{NaiveDateTime, TimeDelta};
use diesel::prelude::*;

use super::schema::{login_throttle, operator_tokens, operators};
use super::{AnyConnection, ExecuteOne, StorageError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = operators)]
pub struct OperatorRow {
    pub id: i64,
    pub email: String,
    pub name: String,
    pub role: String,
    pub password_hash: String,
    pub failed_logins: i32,
    pub locked_until: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = operators)]
struct NewOperator<'a> {
    email: &'a str,
    name: &'a str,
    role: &'a str,
    password_hash: &'a str,
    failed_logins: i32,
    created_at: NaiveDateTime,
}

/// Adds an operator; a taken e-mail is a unique violation (see [`StorageError::is_unique_violation`]).
pub fn insert(
    conn: &mut AnyConnection,
    email: &str,
    name: &str,
    role: &str,
    password_hash: &str,
) -> Result<i64, StorageError> {
    Ok(diesel::insert_into(operators::table)
        .values(NewOperator {
            email,
            name,
            role,
            password_hash,
            failed_logins: 0,
            created_at: super::now(),
        })
        .returning(operators::id)
        .get_result(conn)?)
}

/// Replaces the password and role of an existing operator (re-running `users create` for an e-mail).
pub fn update_credentials(
    conn: &mut AnyConnection,
    email: &str,
    name: &str,
    role: &str,
    password_hash: &str,
) -> Result<Option<i64>, StorageError> {
    Ok(
        diesel::update(operators::table.filter(operators::email.eq(email)))
            .set((
                operators::name.eq(name),
                operators::role.eq(role),
                operators::password_hash.eq(password_hash),
                operators::failed_logins.eq(0),
                operators::locked_until.eq(None::<NaiveDateTime>),
            ))
            .returning(operators::id)
            .get_result(conn)
            .optional()?,
    )
}

/// Creates the operator, or replaces the credentials of the one with this e-mail and revokes all its
/// tokens, in one transaction so that no token outlives the password it was issued for. Returns the id
/// and whether it was created.
pub fn upsert(
    conn: &mut AnyConnection,
    email: &str,
    name: &str,
    role: &str,
    password_hash: &str,
) -> Result<(i64, bool), StorageError> {
    conn.transaction(|c| {
        if let Some(id) = update_credentials(c, email, name, role, password_hash)? {
            revoke_all_tokens(c, id)?;
            return Ok((id, false));
        }
        Ok((insert(c, email, name, role, password_hash)?, true))
    })
}

/// Stores the hashes of a new access and refresh token pair of one family (a sign-in) in one transaction,
/// so a login never leaves half a pair behind.
pub fn insert_token_pair(
    conn: &mut AnyConnection,
    operator_id: i64,
    family: &str,
    access: (&str, NaiveDateTime),
    refresh: (&str, NaiveDateTime),
) -> Result<(), StorageError> {
    conn.transaction(|c| {
        insert_family_token(c, operator_id, "access", Some(family), access)?;
        insert_family_token(c, operator_id, "refresh", Some(family), refresh)
    })
}

fn insert_family_token(
    conn: &mut AnyConnection,
    operator_id: i64,
    kind: &str,
    family: Option<&str>,
    (hash, expires_at): (&str, NaiveDateTime),
) -> Result<(), StorageError> {
    diesel::insert_into(operator_tokens::table)
        .values((
            operator_tokens::operator_id.eq(operator_id),
            operator_tokens::kind.eq(kind),
            operator_tokens::token_hash.eq(hash),
            operator_tokens::expires_at.eq(expires_at),
            operator_tokens::created_at.eq(super::now()),
            operator_tokens::family.eq(family),
        ))
        .execute(conn)?;
    Ok(())
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live: it is used up, the family's access tokens revoked, the new pair stored.
    Rotated { operator_id: i64 },
    /// The token was used before (or revoked): a copy is in someone else's hands, so the whole family is
    /// revoked.
    Reused,
    /// Unknown or expired.
    Invalid,
}

/// (id, operator, family, expires at, revoked at) of a refresh token.
type RefreshRow = (
    i64,
    i64,
    Option<String>,
    NaiveDateTime,
    Option<NaiveDateTime>,
);

/// Rotates a refresh token in one transaction (see [`Rotation`]): at most one of two racing refreshes
/// with the same token wins; the other counts as a reuse.
pub fn rotate_refresh(
    conn: &mut AnyConnection,
    token_hash: &str,
    access: (&str, NaiveDateTime),
    refresh: (&str, NaiveDateTime),
    now: NaiveDateTime,
) -> Result<Rotation, StorageError> {
    conn.transaction(|c| {
        let row: Option<RefreshRow> = operator_tokens::table
            .filter(operator_tokens::kind.eq("refresh"))
            .filter(operator_tokens::token_hash.eq(token_hash))
            .select((
                operator_tokens::id,
                operator_tokens::operator_id,
                operator_tokens::family,
                operator_tokens::expires_at,
                operator_tokens::revoked_at,
            ))
            .first(c)
            .optional()?;
        let Some((id, operator_id, family, expires_at, revoked_at)) = row else {
            return Ok(Rotation::Invalid);
        };
        // Tokens issued before families existed form a family of their own.
        let family = family.unwrap_or_else(|| format!("legacy-{id}"));
        let used = revoke_live!(operator_tokens, operator_tokens::id.eq(id), now).execute(c)?;
        if revoked_at.is_some() || used == 0 {
            revoke_family(c, &family, now)?;
            return Ok(Rotation::Reused);
        }
        if expires_at <= now {
            return Ok(Rotation::Invalid);
        }
        revoke_family(c, &family, now)?;
        insert_family_token(c, operator_id, "access", Some(&family), access)?;
        insert_family_token(c, operator_id, "refresh", Some(&family), refresh)?;
        Ok(Rotation::Rotated { operator_id })
    })
}

fn revoke_family(
    conn: &mut AnyConnection,
    family: &str,
    now: NaiveDateTime,
) -> Result<usize, StorageError> {
    Ok(revoke_live!(operator_tokens, operator_tokens::family.eq(family), now).execute(conn)?)
}

pub fn find_by_email(
    conn: &mut AnyConnection,
    email: &str,
) -> Result<Option<OperatorRow>, StorageError> {
    find_by!(conn, operators::email.eq(email) => OperatorRow)
}

pub fn find(conn: &mut AnyConnection, id: i64) -> Result<Option<OperatorRow>, StorageError> {
    Ok(operators::table
        .find(id)
        .select(OperatorRow::as_select())
        .first(conn)
        .optional()?)
}

pub fn list(conn: &mut AnyConnection) -> Result<Vec<OperatorRow>, StorageError> {
    find_by!(conn, all operators, order operators::id.asc() => Vec<OperatorRow>)
}

/// Stores a token's hash (of no sign-in family). `kind` is `access`, `refresh` or `session`.
pub fn insert_token(
    conn: &mut AnyConnection,
    operator_id: i64,
    kind: &str,
    token_hash: &str,
    expires_at: NaiveDateTime,
) -> Result<(), StorageError> {
    insert_family_token(conn, operator_id, kind, None, (token_hash, expires_at))
}

/// The operator owning a live (unexpired, unrevoked) token of this kind.
pub fn operator_for_token(
    conn: &mut AnyConnection,
    kind: &str,
    token_hash: &str,
    now: NaiveDateTime,
) -> Result<Option<OperatorRow>, StorageError> {
    Ok(operator_tokens::table
        .inner_join(operators::table)
        .filter(operator_tokens::kind.eq(kind))
        .filter(operator_tokens::token_hash.eq(token_hash))
        .filter(operator_tokens::revoked_at.is_null())
        .filter(operator_tokens::expires_at.gt(now))
        .select(OperatorRow::as_select())
        .first(conn)
        .optional()?)
}

/// Revokes one token by hash (sign-out); true when a live token was revoked.
pub fn revoke_token(conn: &mut AnyConnection, token_hash: &str) -> Result<bool, StorageError> {
    let token = operator_tokens::token_hash.eq(token_hash);
    revoke_live!(operator_tokens, token, super::now()).execute_one(conn)
}

/// Revokes every token of an operator (password reset).
pub fn revoke_all_tokens(
    conn: &mut AnyConnection,
    operator_id: i64,
) -> Result<usize, StorageError> {
    let tokens = operator_tokens::operator_id.eq(operator_id);
    Ok(revoke_live!(operator_tokens, tokens, super::now()).execute(conn)?)
}

/// Drops tokens that expired before `before`.
pub fn prune_tokens(
    conn: &mut AnyConnection,
    before: NaiveDateTime,
) -> Result<usize, StorageError> {
    Ok(
        diesel::delete(operator_tokens::table.filter(operator_tokens::expires_at.lt(before)))
            .execute(conn)?,
    )
}

/// One throttle counter: failures in the current window and the lock they earned.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = login_throttle)]
pub struct ThrottleRow {
    pub throttle_key: String,
    pub failures: i32,
    pub locked_until: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
}

/// The counters for these keys (missing keys have no failures).
pub fn throttle_rows(
    conn: &mut AnyConnection,
    keys: &[String],
) -> Result<Vec<ThrottleRow>, StorageError> {
    find_by!(conn, login_throttle::throttle_key.eq_any(keys) => Vec<ThrottleRow>)
}

/// Counts one failure for `key` and returns the new count. A counter idle since `window_start` starts
/// again from one, so old mistakes are forgotten. One upsert, so concurrent failures all count.
pub fn record_failure(
    conn: &mut AnyConnection,
    key: &str,
    now: NaiveDateTime,
    window_start: NaiveDateTime,
) -> Result<i32, StorageError> {
    conn.transaction(|conn| {
        crate::per_backend!(conn, |c| diesel::insert_into(login_throttle::table)
            .values((
                login_throttle::throttle_key.eq(key),
                login_throttle::failures.eq(0),
                login_throttle::updated_at.eq(now),
            ))
            .on_conflict(login_throttle::throttle_key)
            .do_nothing()
            .execute(c))?;
        diesel::update(
            login_throttle::table
                .filter(login_throttle::throttle_key.eq(key))
                .filter(login_throttle::updated_at.lt(window_start)),
        )
        .set(login_throttle::failures.eq(0))
        .execute(conn)?;
        let failures =
            diesel::update(login_throttle::table.filter(login_throttle::throttle_key.eq(key)))
                .set((
                    login_throttle::failures.eq(login_throttle::failures + 1),
                    login_throttle::updated_at.eq(now),
                ))
                .returning(login_throttle::failures)
                .get_result::<i32>(conn)?;
        Ok(failures)
    })
}

/// Sets the lock of `key` (never shortens an existing one).
pub fn lock(conn: &mut AnyConnection, key: &str, until: NaiveDateTime) -> Result<(), StorageError> {
    diesel::update(
        login_throttle::table
            .filter(login_throttle::throttle_key.eq(key))
            .filter(
                login_throttle::locked_until
                    .is_null()
                    .or(login_throttle::locked_until.lt(until)),
            ),
    )
    .set(login_throttle::locked_until.eq(Some(until)))
    .execute(conn)?;
    Ok(())
}

/// Counts a failed login against each `(key, free failures)` and locks the keys `lock_for(failures, free)`
/// gives seconds for. One trip to the pool, not one transaction: each count commits on its own (see
/// [`record_failure`]), as concurrent failures must all count.
pub fn record_failures(
    conn: &mut AnyConnection,
    keys: &[(String, i32)],
    now: NaiveDateTime,
    window_start: NaiveDateTime,
    lock_for: fn(i32, i32) -> Option<i64>,
) -> Result<(), StorageError> {
    for (key, free) in keys {
        let failures = record_failure(conn, key, now, window_start)?;
        if let Some(secs) = lock_for(failures, *free) {
            lock(conn, key, now + TimeDelta::seconds(secs))?;
        }
    }
    Ok(())
}

/// Forgets the failures of `key` (after a successful login).
pub fn clear(conn: &mut AnyConnection, key: &str) -> Result<(), StorageError> {
    diesel::delete(login_throttle::table.filter(login_throttle::throttle_key.eq(key)))
        .execute(conn)?;
    Ok(())
}

aggregate_handle! {
    /// Operators, their tokens and the login throttle, as the use cases see them: each call is one trip to
    /// the blocking pool.
    Operators => operators
}

impl Operators<'_> {
    /// Creates the operator or replaces its credentials and signs it out (see [`upsert`]); the id and
    /// whether it was created.
    pub async fn upsert(
        &self,
        email: &str,
        name: &str,
        role: &str,
        password_hash: &str,
    ) -> Result<(i64, bool), StorageError> {
        let (email, name, role, hash) = (
            email.to_owned(),
            name.to_owned(),
            role.to_owned(),
            password_hash.to_owned(),
        );
        self.db
            .run(move |c| upsert(c, &email, &name, &role, &hash))
            .await
    }

    pub async fn list(&self) -> Result<Vec<OperatorRow>, StorageError> {
        self.db.run(list).await
    }

    pub async fn by_email(&self, email: &str) -> Result<Option<OperatorRow>, StorageError> {
        self.db.run_with(email, find_by_email).await
    }

    /// The operator owning a live token of this kind (see [`operator_for_token`]).
    pub async fn by_token(
        &self,
        kind: &str,
        token_hash: &str,
        now: NaiveDateTime,
    ) -> Result<Option<OperatorRow>, StorageError> {
        let (kind, hash) = (kind.to_owned(), token_hash.to_owned());
        self.db
            .run(move |c| operator_for_token(c, &kind, &hash, now))
            .await
    }

    /// Stores the hash of one token (see [`insert_token`]).
    pub async fn insert_token(
        &self,
        operator_id: i64,
        kind: &str,
        token_hash: &str,
        expires_at: NaiveDateTime,
    ) -> Result<(), StorageError> {
        let (kind, hash) = (kind.to_owned(), token_hash.to_owned());
        self.db
            .run(move |c| insert_token(c, operator_id, &kind, &hash, expires_at))
            .await
    }

    /// Stores the hashes of an access and a refresh token together (see [`insert_token_pair`]).
    pub async fn insert_token_pair(
        &self,
        operator_id: i64,
        family: &str,
        access: (&str, NaiveDateTime),
        refresh: (&str, NaiveDateTime),
    ) -> Result<(), StorageError> {
        let family = family.to_owned();
        let (access_hash, access_until) = (access.0.to_owned(), access.1);
        let (refresh_hash, refresh_until) = (refresh.0.to_owned(), refresh.1);
        self.db
            .run(move |c| {
                insert_token_pair(
                    c,
                    operator_id,
                    &family,
                    (&access_hash, access_until),
                    (&refresh_hash, refresh_until),
                )
            })
            .await
    }

    /// See [`rotate_refresh`].
    pub async fn rotate_refresh(
        &self,
        token_hash: &str,
        access: (&str, NaiveDateTime),
        refresh: (&str, NaiveDateTime),
    ) -> Result<Rotation, StorageError> {
        let hash = token_hash.to_owned();
        let (access_hash, access_until) = (access.0.to_owned(), access.1);
        let (refresh_hash, refresh_until) = (refresh.0.to_owned(), refresh.1);
        let now = super::now();
        self.db
            .run(move |c| {
                rotate_refresh(
                    c,
                    &hash,
                    (&access_hash, access_until),
                    (&refresh_hash, refresh_until),
                    now,
                )
            })
            .await
    }

    /// Revokes one token by hash; true when a live token was revoked.
    pub async fn revoke_token(&self, token_hash: &str) -> Result<bool, StorageError> {
        self.db.run_with(token_hash, revoke_token).await
    }

    /// The throttle counters for these keys.
    pub async fn throttle_rows(&self, keys: &[String]) -> Result<Vec<ThrottleRow>, StorageError> {
        let keys = keys.to_vec();
        self.db.run(move |c| throttle_rows(c, &keys)).await
    }

    /// Counts a failed login against each key and locks those over their allowance (see
    /// [`record_failures`]).
    pub async fn record_failures(
        &self,
        keys: &[(String, i32)],
        now: NaiveDateTime,
        window_start: NaiveDateTime,
        lock_for: fn(i32, i32) -> Option<i64>,
    ) -> Result<(), StorageError> {
        let keys = keys.to_vec();
        self.db
            .run(move |c| record_failures(c, &keys, now, window_start, lock_for))
            .await
    }

    /// Forgets the failures of a throttle key.
    pub async fn clear_throttle(&self, key: &str) -> Result<(), StorageError> {
        self.db.run_with(key, clear).await
    }
}
