//! `amocrm_connections`: one row per seller with the account it connected and its encrypted tokens.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use secrecy::SecretString;

use super::cipher::{Aad, CipherError, Keyring};
use super::schema::amocrm_connections as c;
use super::{AnyConnection, ExecuteOne, StorageError};
use crate::domain::ids::random_token;
use crate::domain::platform::Platform;
use crate::domain::status::{ConnectionStatus, ProvisioningState, SuspendReason};

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
    pub status: ConnectionStatus,
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
    pub provisioning_state: ProvisioningState,
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
    /// amoCRM or Kommo: whose client id, secret and allowed domains this connection's calls use.
    pub platform: Platform,
    /// Set while `suspended`: why amoCRM refuses the account.
    pub suspended_reason: Option<SuspendReason>,
    pub suspended_at: Option<NaiveDateTime>,
    /// While `suspended`: the earliest time the next probe may run (claimed by [`claim_probe`]).
    pub next_probe_at: Option<NaiveDateTime>,
}

/// The statuses in which a connection still holds a usable grant (a suspended account keeps its tokens).
pub const HOLDS_GRANT: [ConnectionStatus; 2] =
    [ConnectionStatus::Active, ConnectionStatus::Suspended];

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
    find_by!(conn, c::seller_id.eq(seller_id) => Connection)
}

pub fn find_by_id(conn: &mut AnyConnection, id: i64) -> Result<Option<Connection>, StorageError> {
    find_by!(conn, c::id.eq(id) => Connection)
}

pub fn find_by_webhook_token(
    conn: &mut AnyConnection,
    token: &str,
) -> Result<Option<Connection>, StorageError> {
    find_by!(conn, c::webhook_token.eq(token) => Connection)
}

/// Connections of one amoCRM account (normally one seller; several only when sharing is allowed).
pub fn find_by_account(
    conn: &mut AnyConnection,
    account_id: i64,
) -> Result<Vec<Connection>, StorageError> {
    find_by!(conn, c::account_id.eq(account_id), order c::id.asc() => Vec<Connection>)
}

/// A page of connections, optionally of one status, with the total count.
pub fn list(
    conn: &mut AnyConnection,
    status: Option<ConnectionStatus>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<Connection>, i64), StorageError> {
    let mut q = c::table.select(Connection::as_select()).into_boxed();
    let mut count = c::table.count().into_boxed();
    if let Some(s) = status {
        q = q.filter(c::status.eq(s));
        count = count.filter(c::status.eq(s));
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
    pub status: ConnectionStatus,
    pub access_token_enc: Option<Vec<u8>>,
    pub refresh_token_enc: Option<Vec<u8>>,
    pub token_expires_at: Option<NaiveDateTime>,
    pub token_version: i64,
    pub last_refreshed_at: Option<NaiveDateTime>,
    pub refresh_failures: i32,
    pub webhook_token: String,
    pub provisioning_state: ProvisioningState,
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
    pub status: ConnectionStatus,
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
    pub platform: Platform,
    pub suspended_reason: Option<SuspendReason>,
    pub suspended_at: Option<NaiveDateTime>,
    pub next_probe_at: Option<NaiveDateTime>,
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
    insert_returning!(conn, c, row => Connection)
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
            c::provisioning_state.eq(ProvisioningState::Pending),
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
        c::table
            .filter(c::seller_id.eq(seller_id))
            .filter(lease_free!(c::refresh_lease_until, now)),
    )
    .set(lease_taken!(
        c::refresh_lease_owner,
        c::refresh_lease_until,
        owner,
        until
    ))
    .returning(Connection::as_returning())
    .get_result(cn)
    .optional())?)
}

/// Connection `id` while `owner` holds its refresh lease: what a refresh may write to.
#[diesel::dsl::auto_type]
fn refresh_held<'a>(id: i64, owner: &'a str) -> _ {
    c::table
        .filter(c::id.eq(id))
        .filter(c::refresh_lease_owner.eq(owner))
}

/// Gives the refresh lease back without changing anything else.
pub fn release_refresh_lease(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
) -> Result<(), StorageError> {
    diesel::update(refresh_held(id, owner))
        .set(lease_released!(
            c::refresh_lease_owner,
            c::refresh_lease_until
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

/// Stores a refreshed pair and releases the lease, only while we still hold the lease and the connection holds
/// its grant (active or suspended). False means nothing was written (lease lost, or the connection was revoked
/// meanwhile).
pub fn store_refreshed(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    pair: &RefreshedPair,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(refresh_held(id, owner).filter(c::status.eq_any(HOLDS_GRANT)))
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
            lease_released!(c::refresh_lease_owner, c::refresh_lease_until),
            c::updated_at.eq(now),
        ))
        .execute_one(conn)
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
    diesel::update(refresh_held(id, owner))
        .set((
            c::refresh_failures.eq(c::refresh_failures + 1),
            c::last_error.eq(Some(error)),
            c::next_refresh_at.eq(Some(next_at)),
            lease_released!(c::refresh_lease_owner, c::refresh_lease_until),
            c::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// amoCRM refused the refresh token for good: `refresh_failed`, lease released. False if the row was no
/// longer ours or no longer held its grant (nothing written).
pub fn mark_refresh_failed(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    error: &str,
    now: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(refresh_held(id, owner).filter(c::status.eq_any(HOLDS_GRANT)))
        .set((
            c::status.eq(ConnectionStatus::RefreshFailed),
            c::suspended_reason.eq(None::<SuspendReason>),
            c::next_probe_at.eq(None::<NaiveDateTime>),
            c::refresh_failures.eq(c::refresh_failures + 1),
            c::last_error.eq(Some(error)),
            c::next_refresh_at.eq(None::<NaiveDateTime>),
            lease_released!(c::refresh_lease_owner, c::refresh_lease_until),
            c::updated_at.eq(now),
        ))
        .execute_one(conn)
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
        .filter(c::status.eq(ConnectionStatus::Active))
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
    diesel::update(
        c::table
            .filter(c::id.eq(id))
            .filter(c::status.ne(ConnectionStatus::Revoked)),
    )
    .set((
        c::status.eq(ConnectionStatus::Revoked),
        c::access_token_enc.eq(None::<Vec<u8>>),
        c::refresh_token_enc.eq(None::<Vec<u8>>),
        c::token_expires_at.eq(None::<NaiveDateTime>),
        c::token_version.eq(c::token_version + 1),
        lease_released!(c::refresh_lease_owner, c::refresh_lease_until),
        c::next_refresh_at.eq(None::<NaiveDateTime>),
        c::next_provision_at.eq(None::<NaiveDateTime>),
        c::revoked_at.eq(Some(now)),
        c::revoke_reason.eq(Some(reason)),
        c::updated_at.eq(now),
    ))
    .execute_one(conn)
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
                c::provisioning_state.eq(ProvisioningState::Complete),
                c::provisioning_error.eq(None::<String>),
                c::provisioning_attempts.eq(0),
                c::next_provision_at.eq(None::<NaiveDateTime>),
                c::updated_at.eq(now),
            ))
            .execute(conn)?;
    } else {
        diesel::update(c::table.filter(c::id.eq(id)))
            .set((
                c::provisioning_state.eq(ProvisioningState::Incomplete),
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
        .filter(c::status.eq(ConnectionStatus::Active))
        // The open states by name, so `amocrm_connections_provisioning` finds them (`!=` reads every row).
        .filter(
            c::provisioning_state
                .eq_any([ProvisioningState::Pending, ProvisioningState::Incomplete]),
        )
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

/// A connect that reached amoCRM: the account and the token pair, sealed for the seller's row.
#[derive(Debug, Clone)]
pub struct ConnectedAccount {
    pub seller_id: String,
    pub account_id: i64,
    pub host: String,
    pub subdomain: String,
    pub api_domain: Option<String>,
    pub access_token_enc: Vec<u8>,
    pub refresh_token_enc: Vec<u8>,
    pub expires_at: NaiveDateTime,
}

impl NewConnection {
    /// The row a first connect creates: active, tokens fresh, provisioning still to do.
    pub fn connected(a: &ConnectedAccount, webhook_token: String, now: NaiveDateTime) -> Self {
        Self {
            seller_id: a.seller_id.clone(),
            account_id: a.account_id,
            host: a.host.clone(),
            subdomain: a.subdomain.clone(),
            api_domain: a.api_domain.clone(),
            status: ConnectionStatus::Active,
            access_token_enc: Some(a.access_token_enc.clone()),
            refresh_token_enc: Some(a.refresh_token_enc.clone()),
            token_expires_at: Some(a.expires_at),
            token_version: 1,
            last_refreshed_at: Some(now),
            refresh_failures: 0,
            webhook_token,
            provisioning_state: ProvisioningState::Pending,
            provisioning_attempts: 0,
            connected_at: now,
            created_at: now,
            updated_at: now,
        }
    }
}

impl ReconnectChanges {
    /// What a reconnect of an existing row overwrites: back to active with the new pair.
    fn from_connected(a: &ConnectedAccount, now: NaiveDateTime) -> Self {
        Self {
            account_id: a.account_id,
            host: a.host.clone(),
            subdomain: a.subdomain.clone(),
            api_domain: a.api_domain.clone(),
            status: ConnectionStatus::Active,
            access_token_enc: Some(a.access_token_enc.clone()),
            refresh_token_enc: Some(a.refresh_token_enc.clone()),
            token_expires_at: Some(a.expires_at),
            last_refreshed_at: Some(now),
            refresh_failures: 0,
            last_error: None,
            next_refresh_at: None,
            refresh_lease_owner: None,
            refresh_lease_until: None,
            connected_at: now,
            revoked_at: None,
            revoke_reason: None,
            updated_at: now,
            platform: Platform::Amocrm,
            suspended_reason: None,
            suspended_at: None,
            next_probe_at: None,
        }
    }
}

/// How storing a finished connect ended.
#[derive(Debug)]
pub enum Connected {
    /// Another seller holds an active connection to this account (and sharing is off).
    AccountTaken,
    /// The connect session was used meanwhile (a second tab, a replayed callback).
    SessionUsed,
    Saved {
        connection: Box<Connection>,
        /// The row as it was before, for a reconnect.
        previous: Option<Box<Connection>>,
    },
}

/// Stores a finished connect in one transaction: the account is not another seller's (unless shared), the
/// session is consumed, the row is created or reconnected (provisioning forgotten when the account changed)
/// and `event` is recorded. Either all of it happens or nothing does.
pub fn store_connected(
    conn: &mut AnyConnection,
    account: &ConnectedAccount,
    platform: Platform,
    session_id: i64,
    allow_shared: bool,
    event: &super::events::NewEvent,
) -> Result<Connected, StorageError> {
    diesel::Connection::transaction(conn, |c| {
        let now = super::now();
        let seller = account.seller_id.as_str();
        if !allow_shared {
            let taken = find_by_account(c, account.account_id)?
                .into_iter()
                .any(|other| {
                    other.seller_id != seller
                        && other.status != ConnectionStatus::Revoked
                        && other.platform == platform
                });
            if taken {
                return Ok(Connected::AccountTaken);
            }
        }
        if !super::sessions::mark_session_used(c, session_id, now)? {
            return Ok(Connected::SessionUsed);
        }
        let previous = find_by_seller(c, seller)?;
        let id = match &previous {
            None => {
                let id = insert(c, &NewConnection::connected(account, random_token(40), now))?.id;
                super::buyers::start_scan(c, seller)?;
                id
            }
            Some(prev) => {
                let mut changes = ReconnectChanges::from_connected(account, now);
                changes.platform = platform;
                apply_reconnect(c, prev.id, &changes)?;
                if prev.account_id != account.account_id || prev.platform != platform {
                    reset_provisioning(c, prev.id, &random_token(40), now)?;
                    super::buyers::reset_seller(c, seller)?;
                }
                prev.id
            }
        };
        // A first connect's row is made as amoCRM's (the column's default); say which platform it is.
        if previous.is_none() && platform != Platform::Amocrm {
            diesel::update(c::table.filter(c::id.eq(id)))
                .set(c::platform.eq(platform))
                .execute(c)?;
        }
        super::events::record(c, event)?;
        let connection = find_by_seller(c, seller)?
            .ok_or_else(|| StorageError::Other("connection vanished".into()))?;
        Ok(Connected::Saved {
            connection: Box::new(connection),
            previous: previous.map(Box::new),
        })
    })
}

/// Revokes a connection and records `event` in one transaction. False if it was already revoked (nothing
/// written, no event).
pub fn revoke_recorded(
    conn: &mut AnyConnection,
    id: i64,
    reason: &str,
    event: &super::events::NewEvent,
) -> Result<bool, StorageError> {
    super::events::record_if(conn, event, |c| revoke(c, id, reason, super::now()))
}

/// Marks a connection `refresh_failed` and records `event` in one transaction, only while `owner` holds its
/// refresh lease and it is active. False when nothing was written.
pub fn refresh_failed_recorded(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    error: &str,
    event: &super::events::NewEvent,
) -> Result<bool, StorageError> {
    super::events::record_if(conn, event, |c| {
        mark_refresh_failed(c, id, owner, error, super::now())
    })
}

aggregate_handle! {
    /// Connections, as the use cases see them: each call is one trip to the blocking pool, with typed
    /// arguments borrowed from the caller.
    Connections => connections
}

impl Connections<'_> {
    /// Stores rows made elsewhere (imports, fixtures) in one transaction.
    pub async fn insert_many(&self, rows: Vec<NewConnection>) -> Result<(), StorageError> {
        self.db
            .run(move |c| {
                diesel::Connection::transaction(c, |c| {
                    rows.iter().try_for_each(|r| insert(c, r).map(|_| ()))
                })
            })
            .await
    }

    pub async fn by_id(&self, id: i64) -> Result<Option<Connection>, StorageError> {
        self.db.run(move |c| find_by_id(c, id)).await
    }

    /// The seller's connection, whatever its status (every use case starts here).
    pub async fn by_seller(
        &self,
        seller: impl AsRef<str>,
    ) -> Result<Option<Connection>, StorageError> {
        self.db.run_with(seller.as_ref(), find_by_seller).await
    }

    /// The connection an amoCRM webhook destination belongs to.
    pub async fn by_webhook_token(&self, token: &str) -> Result<Option<Connection>, StorageError> {
        self.db.run_with(token, find_by_webhook_token).await
    }

    /// Every connection of one amoCRM account.
    pub async fn by_account(&self, account_id: i64) -> Result<Vec<Connection>, StorageError> {
        self.db.run(move |c| find_by_account(c, account_id)).await
    }

    /// A page of connections, optionally of one status, with the total.
    pub async fn list(
        &self,
        status: Option<ConnectionStatus>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<Connection>, i64), StorageError> {
        self.db.run(move |c| list(c, status, offset, limit)).await
    }

    /// Rows holding tokens, by id after `after_id` (key rotation pages through them).
    pub async fn with_tokens_after(
        &self,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Connection>, StorageError> {
        self.db
            .run(move |c| ids_with_tokens(c, after_id, limit))
            .await
    }

    /// See [`replace_ciphertexts`].
    pub async fn replace_ciphertexts(
        &self,
        row: &Connection,
        access: Option<Vec<u8>>,
        refresh: Option<Vec<u8>>,
    ) -> Result<bool, StorageError> {
        let row = row.clone();
        self.db
            .run(move |c| replace_ciphertexts(c, &row, access.clone(), refresh.clone()))
            .await
    }

    /// See [`store_connected`].
    pub async fn store_connected(
        &self,
        account: &ConnectedAccount,
        platform: Platform,
        session_id: i64,
        allow_shared: bool,
        event: &super::events::NewEvent,
    ) -> Result<Connected, StorageError> {
        let (account, event) = (account.clone(), event.clone());
        self.db
            .run(move |c| store_connected(c, &account, platform, session_id, allow_shared, &event))
            .await
    }

    /// See [`revoke_recorded`].
    pub async fn revoke(
        &self,
        id: i64,
        reason: &str,
        event: &super::events::NewEvent,
    ) -> Result<bool, StorageError> {
        let (reason, event) = (reason.to_owned(), event.clone());
        self.db
            .run(move |c| revoke_recorded(c, id, &reason, &event))
            .await
    }

    /// See [`try_lease_refresh`].
    pub async fn lease_refresh(
        &self,
        seller: &str,
        owner: &str,
        until: NaiveDateTime,
    ) -> Result<Option<Connection>, StorageError> {
        let (seller, owner) = (seller.to_owned(), owner.to_owned());
        self.db
            .run(move |c| try_lease_refresh(c, &seller, &owner, super::now(), until))
            .await
    }

    pub async fn release_refresh_lease(&self, id: i64, owner: &str) -> Result<(), StorageError> {
        self.db
            .run_with(owner, move |c, owner| release_refresh_lease(c, id, owner))
            .await
    }

    /// See [`store_refreshed`].
    pub async fn store_refreshed(
        &self,
        id: i64,
        owner: &str,
        pair: &RefreshedPair,
    ) -> Result<bool, StorageError> {
        let (owner, pair) = (owner.to_owned(), pair.clone());
        self.db
            .run(move |c| store_refreshed(c, id, &owner, &pair, super::now()))
            .await
    }

    /// See [`record_refresh_failure`].
    pub async fn record_refresh_failure(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        next_at: NaiveDateTime,
    ) -> Result<(), StorageError> {
        let (owner, error) = (owner.to_owned(), error.to_owned());
        self.db
            .run(move |c| record_refresh_failure(c, id, &owner, &error, next_at, super::now()))
            .await
    }

    /// See [`refresh_failed_recorded`].
    pub async fn mark_refresh_failed(
        &self,
        id: i64,
        owner: &str,
        error: &str,
        event: &super::events::NewEvent,
    ) -> Result<bool, StorageError> {
        let (owner, error, event) = (owner.to_owned(), error.to_owned(), event.clone());
        self.db
            .run(move |c| refresh_failed_recorded(c, id, &owner, &error, &event))
            .await
    }

    /// See [`due_for_refresh`]: `(id, seller_id)` pairs.
    pub async fn due_for_refresh(
        &self,
        expiring_before: NaiveDateTime,
        idle_before: NaiveDateTime,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StorageError> {
        self.db
            .run(move |c| {
                due_for_refresh(
                    c,
                    super::now(),
                    expiring_before,
                    idle_before,
                    after_id,
                    limit,
                )
            })
            .await
    }

    pub async fn save_pipeline(
        &self,
        id: i64,
        pipeline_id: i64,
        stages: [i64; 6],
    ) -> Result<(), StorageError> {
        self.db
            .run(move |c| save_pipeline(c, id, pipeline_id, stages, super::now()))
            .await
    }

    pub async fn save_fields(
        &self,
        id: i64,
        order_number_id: i64,
        order_link_id: i64,
    ) -> Result<(), StorageError> {
        self.db
            .run(move |c| save_fields(c, id, order_number_id, order_link_id, super::now()))
            .await
    }

    pub async fn save_webhook(
        &self,
        id: i64,
        webhook_id: i64,
        destination: &str,
    ) -> Result<(), StorageError> {
        self.db
            .run_with(destination, move |c, destination| {
                save_webhook(c, id, webhook_id, destination, super::now())
            })
            .await
    }

    /// See [`finish_provisioning`]: `Ok` for complete, else the error (if known) and the next attempt.
    pub async fn finish_provisioning(
        &self,
        id: i64,
        outcome: Result<(), (Option<&str>, NaiveDateTime)>,
    ) -> Result<(), StorageError> {
        let outcome = outcome.map_err(|(e, at)| (e.map(str::to_owned), at));
        self.db
            .run(move |c| match &outcome {
                Ok(()) => finish_provisioning(c, id, true, None, None, super::now()),
                Err((e, at)) => {
                    finish_provisioning(c, id, false, e.as_deref(), Some(*at), super::now())
                }
            })
            .await
    }

    /// Sellers whose provisioning is unfinished and due.
    pub async fn provisioning_due(&self, limit: i64) -> Result<Vec<String>, StorageError> {
        self.db
            .run(move |c| provisioning_due(c, super::now(), limit))
            .await
    }
}

impl Connection {
    /// The seller's order-status ↔ stage mapping, as provisioned.
    pub fn stage_map(&self) -> crate::domain::stages::StageMap {
        crate::domain::stages::StageMap {
            pipeline_id: self.pipeline_id,
            pending: self.stage_pending,
            awaiting_payment: self.stage_awaiting_payment,
            paid: self.stage_paid,
            shipping: self.stage_shipping,
            completed: self.stage_completed,
            cancelled: self.stage_cancelled,
        }
    }
}

// --- renamed accounts and suspended accounts (docs/CONTRACT.md §11) ---

/// The account's new place after a rename: stored with the pair refreshed there.
#[derive(Debug, Clone)]
pub struct MovedAccount {
    pub host: String,
    pub subdomain: String,
}

/// Stores the pair refreshed at the account's new host, the new host and subdomain, and `event`
/// (`connection.host_changed`) in one transaction, while `owner` holds the refresh lease. False when nothing
/// was written (lease lost, or the connection no longer holds its grant).
pub fn store_moved(
    conn: &mut AnyConnection,
    id: i64,
    owner: &str,
    pair: &RefreshedPair,
    moved: &MovedAccount,
    event: &super::events::NewEvent,
) -> Result<bool, StorageError> {
    super::events::record_if(conn, event, |cn| {
        let now = super::now();
        if !store_refreshed(cn, id, owner, pair, now)? {
            return Ok(false);
        }
        diesel::update(c::table.filter(c::id.eq(id)))
            .set((
                c::host.eq(&moved.host),
                c::subdomain.eq(&moved.subdomain),
                c::updated_at.eq(now),
            ))
            .execute(cn)?;
        Ok(true)
    })
}

/// Connection `id` while its status is `status`: what a step of the suspension cycle may change.
#[diesel::dsl::auto_type]
fn in_status(id: i64, status: ConnectionStatus) -> _ {
    c::table.filter(c::id.eq(id)).filter(c::status.eq(status))
}

/// The `last_error` of a suspended connection.
fn refusal(reason: SuspendReason) -> String {
    format!("amoCRM refuses the account: {reason}")
}

/// Marks an active connection `suspended` for `reason` with its first probe at `next_probe_at`, and records
/// `event` (`connection.suspended`), in one transaction. False when it was not active (nothing written), so
/// a burst of refused calls suspends it, and reports it, once.
pub fn suspend_recorded(
    conn: &mut AnyConnection,
    id: i64,
    reason: SuspendReason,
    next_probe_at: NaiveDateTime,
    event: &super::events::NewEvent,
) -> Result<bool, StorageError> {
    super::events::record_if(conn, event, |cn| {
        let now = super::now();
        diesel::update(in_status(id, ConnectionStatus::Active))
            .set((
                c::status.eq(ConnectionStatus::Suspended),
                c::suspended_reason.eq(Some(reason)),
                c::suspended_at.eq(Some(now)),
                c::next_probe_at.eq(Some(next_probe_at)),
                c::last_error.eq(Some(refusal(reason))),
                c::updated_at.eq(now),
            ))
            .execute_one(cn)
    })
}

/// Claims the next probe of a suspended connection: its time is due (or `force`), and the next one is moved
/// to `next`. False when the connection is not suspended or another caller probed it within the interval.
pub fn claim_probe(
    conn: &mut AnyConnection,
    id: i64,
    force: bool,
    now: NaiveDateTime,
    next: NaiveDateTime,
) -> Result<bool, StorageError> {
    let mut q = diesel::update(c::table)
        .filter(c::id.eq(id))
        .filter(c::status.eq(ConnectionStatus::Suspended))
        .into_boxed();
    if !force {
        q = q.filter(c::next_probe_at.is_null().or(c::next_probe_at.le(now)));
    }
    let n = q.set(c::next_probe_at.eq(Some(next))).execute(conn)?;
    Ok(n == 1)
}

/// Sellers of suspended connections whose next probe is due, oldest first.
pub fn probes_due(
    conn: &mut AnyConnection,
    now: NaiveDateTime,
    limit: i64,
) -> Result<Vec<String>, StorageError> {
    Ok(c::table
        .filter(c::status.eq(ConnectionStatus::Suspended))
        .filter(c::next_probe_at.is_null().or(c::next_probe_at.le(now)))
        .order((c::next_probe_at.asc(), c::id.asc()))
        .limit(limit)
        .select(c::seller_id)
        .load(conn)?)
}

/// A probe saw the account answer again: back to `active`, suspension forgotten, `event`
/// (`connection.recovered`) recorded, in one transaction. False when it was not suspended any more.
pub fn recover_recorded(
    conn: &mut AnyConnection,
    id: i64,
    event: &super::events::NewEvent,
) -> Result<bool, StorageError> {
    super::events::record_if(conn, event, |cn| {
        let now = super::now();
        diesel::update(in_status(id, ConnectionStatus::Suspended))
            .set((
                c::status.eq(ConnectionStatus::Active),
                c::suspended_reason.eq(None::<SuspendReason>),
                c::suspended_at.eq(None::<NaiveDateTime>),
                c::next_probe_at.eq(None::<NaiveDateTime>),
                c::last_error.eq(None::<String>),
                c::updated_at.eq(now),
            ))
            .execute_one(cn)
    })
}

/// A probe found the account still refused, possibly for another reason (paid but now blocked).
pub fn set_suspend_reason(
    conn: &mut AnyConnection,
    id: i64,
    reason: SuspendReason,
) -> Result<(), StorageError> {
    diesel::update(in_status(id, ConnectionStatus::Suspended))
        .set((
            c::suspended_reason.eq(Some(reason)),
            c::last_error.eq(Some(refusal(reason))),
        ))
        .execute(conn)?;
    Ok(())
}

impl Connections<'_> {
    /// See [`store_moved`].
    pub async fn store_moved(
        &self,
        id: i64,
        owner: &str,
        pair: &RefreshedPair,
        moved: &MovedAccount,
        event: &super::events::NewEvent,
    ) -> Result<bool, StorageError> {
        let (owner, pair, moved, event) =
            (owner.to_owned(), pair.clone(), moved.clone(), event.clone());
        self.db
            .run(move |c| store_moved(c, id, &owner, &pair, &moved, &event))
            .await
    }

    /// See [`suspend_recorded`].
    pub async fn suspend(
        &self,
        id: i64,
        reason: SuspendReason,
        next_probe_at: NaiveDateTime,
        event: &super::events::NewEvent,
    ) -> Result<bool, StorageError> {
        let event = event.clone();
        self.db
            .run(move |c| suspend_recorded(c, id, reason, next_probe_at, &event))
            .await
    }

    /// See [`claim_probe`].
    pub async fn claim_probe(
        &self,
        id: i64,
        force: bool,
        next: NaiveDateTime,
    ) -> Result<bool, StorageError> {
        self.db
            .run(move |c| claim_probe(c, id, force, super::now(), next))
            .await
    }

    /// See [`probes_due`].
    pub async fn probes_due(&self, limit: i64) -> Result<Vec<String>, StorageError> {
        self.db
            .run(move |c| probes_due(c, super::now(), limit))
            .await
    }

    /// See [`recover_recorded`].
    pub async fn recover(
        &self,
        id: i64,
        event: &super::events::NewEvent,
    ) -> Result<bool, StorageError> {
        let event = event.clone();
        self.db.run(move |c| recover_recorded(c, id, &event)).await
    }

    /// See [`set_suspend_reason`].
    pub async fn set_suspend_reason(
        &self,
        id: i64,
        reason: SuspendReason,
    ) -> Result<(), StorageError> {
        self.db
            .run(move |c| set_suspend_reason(c, id, reason))
            .await
    }
}
