//! `amocrm_connections`: one row per seller with the account it connected and its encrypted tokens.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use secrecy::SecretString;

use super::cipher::{Aad, CipherError, Keyring};
use super::schema::amocrm_connections as c;
use super::{AnyConnection, StorageError};

pub const TABLE: &str = "amocrm_connections";
pub const ACCESS_COLUMN: &str = "access_token";
pub const REFRESH_COLUMN: &str = "refresh_token";

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = c)]
pub struct Connection {
    pub id: i64,
    pub seller_id: String,
    pub account_id: i64,
    pub host: String,
    pub subdomain: String,
    pub api_domain: Option<String>,
    pub status: String,
    pub access_token_enc: Option<Vec<u8>>,
    pub refresh_token_enc: Option<Vec<u8>>,
    pub token_expires_at: Option<NaiveDateTime>,
    pub token_version: i64,
    pub last_refreshed_at: Option<NaiveDateTime>,
    pub refresh_failures: i32,
    pub last_error: Option<String>,
    pub next_refresh_at: Option<NaiveDateTime>,
    pub refresh_lease_owner: Option<String>,
    pub refresh_lease_until: Option<NaiveDateTime>,
    pub webhook_token: String,
    pub pipeline_id: Option<i64>,
    pub stage_pending: Option<i64>,
    pub stage_awaiting_payment: Option<i64>,
    pub stage_paid: Option<i64>,
    pub stage_shipping: Option<i64>,
    pub stage_completed: Option<i64>,
    pub stage_cancelled: Option<i64>,
    pub field_order_number_id: Option<i64>,
    pub field_order_link_id: Option<i64>,
    pub amocrm_webhook_id: Option<i64>,
    pub webhook_destination: Option<String>,
    pub provisioning_state: String,
    pub provisioning_error: Option<String>,
    pub provisioning_attempts: i32,
    pub next_provision_at: Option<NaiveDateTime>,
    pub push_lease_owner: Option<String>,
    pub push_lease_until: Option<NaiveDateTime>,
    pub connected_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
    pub revoke_reason: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl Connection {
    fn aad<'a>(&'a self, column: &'a str) -> Aad<'a> {
        Aad {
            table: TABLE,
            column,
            row: &self.seller_id,
        }
    }

    /// The decrypted access token, if the connection still holds one.
    pub fn access_token(&self, keys: &Keyring) -> Result<Option<SecretString>, CipherError> {
        self.access_token_enc
            .as_deref()
            .map(|blob| keys.decrypt(self.aad(ACCESS_COLUMN), blob))
            .transpose()
    }

    /// The decrypted refresh token, if the connection still holds one.
    pub fn refresh_token(&self, keys: &Keyring) -> Result<Option<SecretString>, CipherError> {
        self.refresh_token_enc
            .as_deref()
            .map(|blob| keys.decrypt(self.aad(REFRESH_COLUMN), blob))
            .transpose()
    }
}

/// Encrypts a token pair for the given seller's row.
pub fn seal_tokens(
    keys: &Keyring,
    seller_id: &str,
    access: &str,
    refresh: &str,
) -> (Vec<u8>, Vec<u8>) {
    let access = keys.encrypt(
        Aad {
            table: TABLE,
            column: ACCESS_COLUMN,
            row: seller_id,
        },
        access,
    );
    let refresh = keys.encrypt(
        Aad {
            table: TABLE,
            column: REFRESH_COLUMN,
            row: seller_id,
        },
        refresh,
    );
    (access, refresh)
}

pub fn find_by_seller(
    conn: &mut AnyConnection,
    seller_id: &str,
) -> Result<Option<Connection>, StorageError> {
    Ok(c::table
        .filter(c::seller_id.eq(seller_id))
        .select(Connection::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_by_id(conn: &mut AnyConnection, id: i64) -> Result<Option<Connection>, StorageError> {
    Ok(c::table
        .filter(c::id.eq(id))
        .select(Connection::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_by_webhook_token(
    conn: &mut AnyConnection,
    token: &str,
) -> Result<Option<Connection>, StorageError> {
    Ok(c::table
        .filter(c::webhook_token.eq(token))
        .select(Connection::as_select())
        .first(conn)
        .optional()?)
}

/// Connections of one amoCRM account (normally one seller; several only when sharing is allowed).
pub fn find_by_account(
    conn: &mut AnyConnection,
    account_id: i64,
) -> Result<Vec<Connection>, StorageError> {
    Ok(c::table
        .filter(c::account_id.eq(account_id))
        .order(c::id.asc())
        .select(Connection::as_select())
        .load(conn)?)
}

/// A page of connections, optionally of one status, with the total count.
pub fn list(
    conn: &mut AnyConnection,
    status: Option<&str>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<Connection>, i64), StorageError> {
    let mut q = c::table.select(Connection::as_select()).into_boxed();
    let mut count = c::table.count().into_boxed();
    if let Some(s) = status {
        q = q.filter(c::status.eq(s.to_owned()));
        count = count.filter(c::status.eq(s.to_owned()));
    }
    let rows = q
        .order(c::id.asc())
        .offset(offset)
        .limit(limit)
        .load(conn)?;
    let total = count.get_result::<i64>(conn)?;
    Ok((rows, total))
}

/// Ids of connections whose stored tokens are not encrypted with the active key (for `keys rotate`).
pub fn ids_with_tokens(
    conn: &mut AnyConnection,
    after_id: i64,
    limit: i64,
) -> Result<Vec<Connection>, StorageError> {
    Ok(c::table
        .filter(c::id.gt(after_id))
        .filter(
            c::access_token_enc
                .is_not_null()
                .or(c::refresh_token_enc.is_not_null()),
        )
        .order(c::id.asc())
        .limit(limit)
        .select(Connection::as_select())
        .load(conn)?)
}

/// Replaces the ciphertexts of one row only if they are still the ones read (a concurrent refresh wins).
pub fn replace_ciphertexts(
    conn: &mut AnyConnection,
    row: &Connection,
    access: Option<Vec<u8>>,
    refresh: Option<Vec<u8>>,
) -> Result<bool, StorageError> {
    let mut q = diesel::update(c::table.filter(c::id.eq(row.id)))
        .filter(c::token_version.eq(row.token_version))
        .into_boxed();
    q = match &row.access_token_enc {
        Some(b) => q.filter(c::access_token_enc.eq(b.clone())),
        None => q.filter(c::access_token_enc.is_null()),
    };
    q = match &row.refresh_token_enc {
        Some(b) => q.filter(c::refresh_token_enc.eq(b.clone())),
        None => q.filter(c::refresh_token_enc.is_null()),
    };
    let n = q
        .set((
            c::access_token_enc.eq(access),
            c::refresh_token_enc.eq(refresh),
        ))
        .execute(conn)?;
    Ok(n == 1)
}

/// What a connection row is created with at the end of a successful connect.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = c)]
pub struct NewConnection {
    pub seller_id: String,
    pub account_id: i64,
    pub host: String,
    pub subdomain: String,
    pub api_domain: Option<String>,
    pub status: String,
    pub access_token_enc: Option<Vec<u8>>,
    pub refresh_token_enc: Option<Vec<u8>>,
    pub token_expires_at: Option<NaiveDateTime>,
    pub token_version: i64,
    pub last_refreshed_at: Option<NaiveDateTime>,
    pub refresh_failures: i32,
    pub webhook_token: String,
    pub provisioning_state: String,
    pub provisioning_attempts: i32,
    pub connected_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// The fields a reconnect overwrites: new tokens, the account, status back to active, failures forgotten.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = c, treat_none_as_null = true)]
pub struct ReconnectChanges {
    pub account_id: i64,
    pub host: String,
    pub subdomain: String,
    pub api_domain: Option<String>,
    pub status: String,
    pub access_token_enc: Option<Vec<u8>>,
    pub refresh_token_enc: Option<Vec<u8>>,
    pub token_expires_at: Option<NaiveDateTime>,
    pub last_refreshed_at: Option<NaiveDateTime>,
    pub refresh_failures: i32,
    pub last_error: Option<String>,
    pub next_refresh_at: Option<NaiveDateTime>,
    pub refresh_lease_owner: Option<String>,
    pub refresh_lease_until: Option<NaiveDateTime>,
    pub connected_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
    pub revoke_reason: Option<String>,
    pub updated_at: NaiveDateTime,
}

impl Connection {
    /// The parts of the seller's amoCRM set-up that are not (yet) in place.
    pub fn missing_provisioning(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.pipeline_id.is_none() {
            missing.push("pipeline");
        }
        if self.field_order_number_id.is_none() || self.field_order_link_id.is_none() {
            missing.push("custom_fields");
        }
        if self.amocrm_webhook_id.is_none() {
            missing.push("webhook");
        }
        missing
    }

    /// The stage mapping, in `OrderStatus::ALL` order.
    pub fn stages(&self) -> [Option<i64>; 6] {
        [
            self.stage_pending,
            self.stage_awaiting_payment,
            self.stage_paid,
            self.stage_shipping,
            self.stage_completed,
            self.stage_cancelled,
        ]
    }
}

pub fn insert(conn: &mut AnyConnection, row: &NewConnection) -> Result<Connection, StorageError> {
    Ok(crate::per_backend!(conn, |cn| diesel::insert_into(
        c::table
    )
    .values(row)
    .returning(Connection::as_returning())
    .get_result(cn))?)
}

/// Replaces the account and tokens of an existing row (a reconnect); the token version moves on.
pub fn apply_reconnect(
    conn: &mut AnyConnection,
    id: i64,
    changes: &ReconnectChanges,
) -> Result<(), StorageError> {
    diesel::update(c::table.filter(c::id.eq(id)))
        .set((changes, c::token_version.eq(c::token_version + 1)))
        .execute(conn)?;
    Ok(())
}

/// Forgets everything provisioned in a previous account (the seller moved to another one) and gives the
/// connection a new webhook token, so the old account's webhooks can no longer reach it.
pub fn reset_provisioning(
    conn: &mut AnyConnection,
    id: i64,
    webhook_token: &str,
    now: NaiveDateTime,
) -> Result<(), StorageError> {
    diesel::update(c::table.filter(c::id.eq(id)))
        .set((
            c::webhook_token.eq(webhook_token),
            c::pipeline_id.eq(None::<i64>),
            c::stage_pending.eq(None::<i64>),
            c::stage_awaiting_payment.eq(None::<i64>),
            c::stage_paid.eq(None::<i64>),
            c::stage_shipping.eq(None::<i64>),
            c::stage_completed.eq(None::<i64>),
            c::stage_cancelled.eq(None::<i64>),
            c::field_order_number_id.eq(None::<i64>),
            c::field_order_link_id.eq(None::<i64>),
            c::amocrm_webhook_id.eq(None::<i64>),
            c::webhook_destination.eq(None::<String>),
            c::provisioning_state.eq("pending"),
            c::provisioning_error.eq(None::<String>),
            c::provisioning_attempts.eq(0),
            c::next_provision_at.eq(None::<NaiveDateTime>),
            c::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Takes the refresh lease of one seller's row if it is free or expired, and returns the row as it is now
/// (one statement: the lease and the re-read cannot be separated by a peer's write).
pub fn try_lease_refresh(
    conn: &mut AnyConnection,
    seller_id: &str,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> Result<Option<Connection>, StorageError> {
    Ok(crate::per_backend!(conn, |cn| diesel::update(
        c::table.filter(c::seller_id.eq(seller_id)).filter(
            c::refresh_lease_until
                .is_null()
                .or(c::refresh_lease_until.lt(now)),
        ),
    )
    .set((
        c::refresh_lease_owner.eq(Some(owner)),
        c::refresh_lease_until.eq(Some(until)),
    ))
    .returning(Connection::as_returning())
    .get_result(cn)
    .optional())?)
}

/// Gives the refresh lease back without changing anything else.
pub fn release_refresh_lease(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
) -> Result<(), StorageError> {
    diesel::update(
        c::table
            .filter(c::id.eq(id))
            .filter(c::refresh_lease_owner.eq(owner)),
    )
    .set((
        c::refresh_lease_owner.eq(None::<String>),
        c::refresh_lease_until.eq(None::<NaiveDateTime>),
    ))
    .execute(conn)?;
    Ok(())
}

/// A freshly refreshed pair, encrypted for its row.
#[derive(Debug, Clone)]
pub struct RefreshedPair {
    pub access_token_enc: Vec<u8>,
    pub refresh_token_enc: Vec<u8>,
    pub expires_at: NaiveDateTime,
    pub api_domain: Option<String>,
}

/// Stores a refreshed pair and releases the lease, only while we still hold the lease and the connection is
/// active. False means nothing was written (lease lost, or the connection was revoked meanwhile).
pub fn store_refreshed(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    pair: &RefreshedPair,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    let n = diesel::update(
        c::table
            .filter(c::id.eq(id))
            .filter(c::refresh_lease_owner.eq(owner))
            .filter(c::status.eq("active")),
    )
    .set((
        c::access_token_enc.eq(Some(pair.access_token_enc.clone())),
        c::refresh_token_enc.eq(Some(pair.refresh_token_enc.clone())),
        c::token_expires_at.eq(Some(pair.expires_at)),
        c::token_version.eq(c::token_version + 1),
        c::api_domain.eq(pair.api_domain.clone()),
        c::last_refreshed_at.eq(Some(now)),
        c::refresh_failures.eq(0),
        c::last_error.eq(None::<String>),
        c::next_refresh_at.eq(None::<NaiveDateTime>),
        c::refresh_lease_owner.eq(None::<String>),
        c::refresh_lease_until.eq(None::<NaiveDateTime>),
        c::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// A refresh that may work later (429, 5xx, network): counted, the next attempt pushed back, lease released.
pub fn record_refresh_failure(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    error: &str,
    next_at: NaiveDateTime,
    now: NaiveDateTime,
) -> Result<(), StorageError> {
    diesel::update(
        c::table
            .filter(c::id.eq(id))
            .filter(c::refresh_lease_owner.eq(owner)),
    )
    .set((
        c::refresh_failures.eq(c::refresh_failures + 1),
        c::last_error.eq(Some(error)),
        c::next_refresh_at.eq(Some(next_at)),
        c::refresh_lease_owner.eq(None::<String>),
        c::refresh_lease_until.eq(None::<NaiveDateTime>),
        c::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(())
}

/// amoCRM refused the refresh token for good: `refresh_failed`, lease released. False if the row was no
/// longer ours or no longer active (nothing written).
pub fn mark_refresh_failed(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    error: &str,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    let n = diesel::update(
        c::table
            .filter(c::id.eq(id))
            .filter(c::refresh_lease_owner.eq(owner))
            .filter(c::status.eq("active")),
    )
    .set((
        c::status.eq("refresh_failed"),
        c::refresh_failures.eq(c::refresh_failures + 1),
        c::last_error.eq(Some(error)),
        c::next_refresh_at.eq(None::<NaiveDateTime>),
        c::refresh_lease_owner.eq(None::<String>),
        c::refresh_lease_until.eq(None::<NaiveDateTime>),
        c::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Active connections due for a refresh: the access token expires before `expiring_before`, or the last
/// refresh is older than `idle_before`; connections in back-off (`next_refresh_at` later than `now`) wait.
/// Paged by id.
pub fn due_for_refresh(
    conn: &mut AnyConnection,
    now: NaiveDateTime,
    expiring_before: NaiveDateTime,
    idle_before: NaiveDateTime,
    after_id: i64,
    limit: i64,
) -> Result<Vec<(i64, String)>, StorageError> {
    Ok(c::table
        .filter(c::id.gt(after_id))
        .filter(c::status.eq("active"))
        .filter(c::refresh_token_enc.is_not_null())
        .filter(
            c::token_expires_at
                .is_null()
                .or(c::token_expires_at.lt(expiring_before))
                .or(c::last_refreshed_at.is_null())
                .or(c::last_refreshed_at.lt(idle_before)),
        )
        .filter(c::next_refresh_at.is_null().or(c::next_refresh_at.le(now)))
        .order(c::id.asc())
        .limit(limit)
        .select((c::id, c::seller_id))
        .load(conn)?)
}

/// Marks a connection revoked and wipes its tokens. False if it was already revoked (nothing written).
pub fn revoke(
    conn: &mut AnyConnection,
    id: i64,
    reason: &str,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    let n = diesel::update(
        c::table
            .filter(c::id.eq(id))
            .filter(c::status.ne("revoked")),
    )
    .set((
        c::status.eq("revoked"),
        c::access_token_enc.eq(None::<Vec<u8>>),
        c::refresh_token_enc.eq(None::<Vec<u8>>),
        c::token_expires_at.eq(None::<NaiveDateTime>),
        c::token_version.eq(c::token_version + 1),
        c::refresh_lease_owner.eq(None::<String>),
        c::refresh_lease_until.eq(None::<NaiveDateTime>),
        c::next_refresh_at.eq(None::<NaiveDateTime>),
        c::next_provision_at.eq(None::<NaiveDateTime>),
        c::revoked_at.eq(Some(now)),
        c::revoke_reason.eq(Some(reason)),
        c::updated_at.eq(now),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// The pipeline and stage ids (in `OrderStatus::ALL` order) provisioned or chosen for a connection.
pub fn save_pipeline(
    conn: &mut AnyConnection,
    id: i64,
    pipeline_id: i64,
    stages: [i64; 6],
    now: NaiveDateTime,
) -> Result<(), StorageError> {
    diesel::update(c::table.filter(c::id.eq(id)))
        .set((
            c::pipeline_id.eq(Some(pipeline_id)),
            c::stage_pending.eq(Some(stages[0])),
            c::stage_awaiting_payment.eq(Some(stages[1])),
            c::stage_paid.eq(Some(stages[2])),
            c::stage_shipping.eq(Some(stages[3])),
            c::stage_completed.eq(Some(stages[4])),
            c::stage_cancelled.eq(Some(stages[5])),
            c::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// The ids of the order-number and order-link lead fields.
pub fn save_fields(
    conn: &mut AnyConnection,
    id: i64,
    order_number_id: i64,
    order_link_id: i64,
    now: NaiveDateTime,
) -> Result<(), StorageError> {
    diesel::update(c::table.filter(c::id.eq(id)))
        .set((
            c::field_order_number_id.eq(Some(order_number_id)),
            c::field_order_link_id.eq(Some(order_link_id)),
            c::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// The amoCRM webhook subscription that sends this connection's lead changes to us.
pub fn save_webhook(
    conn: &mut AnyConnection,
    id: i64,
    webhook_id: i64,
    destination: &str,
    now: NaiveDateTime,
) -> Result<(), StorageError> {
    diesel::update(c::table.filter(c::id.eq(id)))
        .set((
            c::amocrm_webhook_id.eq(Some(webhook_id)),
            c::webhook_destination.eq(Some(destination)),
            c::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Records how a provisioning attempt ended: `complete`, or `incomplete` with the error and the next try.
pub fn finish_provisioning(
    conn: &mut AnyConnection,
    id: i64,
    complete: bool,
    error: Option<&str>,
    next_at: Option<NaiveDateTime>,
    now: NaiveDateTime,
) -> Result<(), StorageError> {
    if complete {
        diesel::update(c::table.filter(c::id.eq(id)))
            .set((
                c::provisioning_state.eq("complete"),
                c::provisioning_error.eq(None::<String>),
                c::provisioning_attempts.eq(0),
                c::next_provision_at.eq(None::<NaiveDateTime>),
                c::updated_at.eq(now),
            ))
            .execute(conn)?;
    } else {
        diesel::update(c::table.filter(c::id.eq(id)))
            .set((
                c::provisioning_state.eq("incomplete"),
                c::provisioning_error.eq(error),
                c::provisioning_attempts.eq(c::provisioning_attempts + 1),
                c::next_provision_at.eq(next_at),
                c::updated_at.eq(now),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Active connections whose provisioning is unfinished and whose next attempt is due.
pub fn provisioning_due(
    conn: &mut AnyConnection,
    now: NaiveDateTime,
    limit: i64,
) -> Result<Vec<String>, StorageError> {
    Ok(c::table
        .filter(c::status.eq("active"))
        .filter(c::provisioning_state.ne("complete"))
        .filter(
            c::next_provision_at
                .is_null()
                .or(c::next_provision_at.le(now)),
        )
        .order(c::id.asc())
        .limit(limit)
        .select(c::seller_id)
        .load(conn)?)
}
