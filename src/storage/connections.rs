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
