//! The token provider: the one way any code gets an access token for a seller's amoCRM account.
//!
//! [`access`] returns a usable token, refreshing it first when it expires soon (under the row lease of
//! [`super::refresh`], so concurrent callers across threads and instances cause one refresh). [`with_api`] runs
//! a call against amoCRM and, on a 401, re-reads the stored pair once (a peer may have refreshed it) before
//! refreshing and trying again. Orders, provisioning and webhooks processing all go through here.
//!
//! Being the one place every call passes, it is also where amoCRM's verdicts on the account are kept: a 402
//! or 403 suspends the connection (nothing more is sent until a probe finds it answering again, see
//! [`super::suspension`]), a 404 that comes from a renamed account makes the refresh follow it to its new
//! host ([`super::rename`]), and every outcome feeds the connection's health ([`super::health`]). Each call
//! uses the client of the connection's platform.

use std::future::Future;
use std::time::Duration;

use amocrm_client::{AccountApi, AccountHost, AmoClient, ApiError};
use secrecy::SecretString;

use super::health::{self, Outcome};
use super::refresh::{self, Need, RefreshError};
use crate::domain::platform::Platform;
use crate::domain::status::{ConnectionStatus, SuspendReason};
use crate::services::Context;
use crate::storage::StorageError;
use crate::storage::connections::Connection;

/// On demand, a token that expires within this margin is refreshed before it is handed out. (The sweep
/// refreshes much earlier, `REFRESH_AHEAD`; this only covers connections the sweep has not reached.)
pub const ON_DEMAND_MARGIN: Duration = Duration::from_secs(120);

/// A usable access token for one seller's account. `Debug` shows no token.
#[derive(Clone)]
pub struct Grant {
    pub connection: Connection,
    pub host: AccountHost,
    pub token: SecretString,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("seller_id", &self.connection.seller_id)
            .field("host", &self.host.as_str())
            .field("token_version", &self.connection.token_version)
            .finish_non_exhaustive()
    }
}

/// What [`with_api`] hands to its closure: an owned grant plus the client, so the closure's future can be
/// `'static`-free and `Send`. Call `amo.api()` for the account's API.
#[derive(Clone)]
pub struct Amo {
    client: AmoClient,
    pub grant: Grant,
}

impl Amo {
    /// API v4 calls for this seller's account with the current token.
    pub fn api(&self) -> AccountApi<'_> {
        self.client.api(&self.grant.host, &self.grant.token)
    }

    pub fn connection(&self) -> &Connection {
        &self.grant.connection
    }

    pub fn host(&self) -> &AccountHost {
        &self.grant.host
    }
}

/// Why no token (or no API answer) could be had.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The seller never connected amoCRM.
    #[error("the seller has no amoCRM connection")]
    NotConnected,
    /// The connection is not active: `refresh_failed` or `revoked` (only the seller can fix it, by
    /// reconnecting) or `suspended` (amoCRM refuses the account; it comes back by itself once amoCRM answers
    /// again). Work for this seller (orders) is held meanwhile.
    #[error("the amoCRM connection is {}: {}", .0.as_str(), until(.0))]
    NeedsReconnect(ConnectionStatus),
    /// The token could not be refreshed right now (amoCRM 429/5xx/network, or a peer holds the refresh
    /// lease too long). Retry later; the connection stays active.
    #[error("amoCRM token temporarily unavailable: {0}")]
    Unavailable(String),
    /// The call reached amoCRM and failed for another reason (after the 401 handling).
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The stored row cannot be used (undecryptable token, host no longer allowed). Operator attention.
    #[error("stored amoCRM connection is unusable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl TokenError {
    /// Whether trying again later may succeed without the seller doing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(_) | Self::Storage(_) => true,
            Self::Api(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether the seller must reconnect before anything works again.
    pub fn needs_reconnect(&self) -> bool {
        matches!(self, Self::NeedsReconnect(_))
    }
}

/// What it takes for a connection in `status` to work again.
fn until(status: &ConnectionStatus) -> &'static str {
    match status {
        ConnectionStatus::Suspended => {
            "amoCRM refuses the account (unpaid or blocked); work waits until it answers again"
        }
        _ => "the seller must reconnect",
    }
}

/// How a call treats amoCRM's verdicts on the account.
#[derive(Debug, Clone, Copy, Default)]
pub struct Calling {
    /// On this route a 403 means the user lacks the rights (admin-only routes such as `GET users`), not
    /// that the account is blocked: it is returned as it is and nothing is suspended.
    pub forbidden_is_rights: bool,
    /// The probe of a suspended connection: its status is accepted, and a 402/403 is returned as it is.
    pub probe: bool,
}

impl From<RefreshError> for TokenError {
    fn from(e: RefreshError) -> Self {
        match e {
            RefreshError::NotConnected => Self::NotConnected,
            RefreshError::NeedsReconnect(s) => Self::NeedsReconnect(s),
            RefreshError::Rejected(_) => Self::NeedsReconnect(ConnectionStatus::RefreshFailed),
            RefreshError::Transient(r) | RefreshError::Busy(r) => Self::Unavailable(r),
            RefreshError::Corrupt(r) => Self::Corrupt(r),
            RefreshError::Storage(e) => Self::Storage(e),
        }
    }
}

/// A usable access token for `seller_id`, refreshed first if it expires within [`ON_DEMAND_MARGIN`].
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn access(state: &Context, seller_id: &str) -> Result<Grant, TokenError> {
    access_as(state, seller_id, Calling::default()).await
}

async fn access_as(state: &Context, seller_id: &str, how: Calling) -> Result<Grant, TokenError> {
    let row = state
        .connection_of(seller_id, TokenError::NotConnected)
        .await?;
    access_row(state, row, how).await
}

/// [`access_as`] with a row the caller has just read.
async fn access_row(state: &Context, row: Connection, how: Calling) -> Result<Grant, TokenError> {
    let seller_id = row.seller_id.clone();
    let seller_id = seller_id.as_str();
    let margin = chrono::Duration::from_std(ON_DEMAND_MARGIN).unwrap_or_default();
    let fresh_enough = row
        .token_expires_at
        .is_some_and(|t| t > crate::storage::now() + margin);
    status_of(&row, how)?;
    if fresh_enough {
        return grant_as(state, row, how);
    }
    let need = Need::Expiring {
        before: crate::storage::now() + margin,
    };
    let row = refresh::refresh_as(state, seller_id, need, how.probe)
        .await?
        .into_connection();
    grant_as(state, row, how)
}

/// Runs `call` with the seller's account API. On a 401 the stored pair is re-read once: if a peer stored a
/// newer pair, the call is retried with it; otherwise the token is refreshed (single-flight) and the call
/// retried once. On a 404 the account is looked for at another host (it may have been renamed) and, if
/// found there, followed and the call retried once. A 402 or 403 suspends the connection (see
/// [`with_api_as`]). Any other error is returned as [`TokenError::Api`].
///
/// ```ignore
/// let pipelines = tokens::with_api(&state, "seller-1", |amo| async move { amo.api().pipelines().await }).await?;
/// ```
pub async fn with_api<T, F, Fut>(state: &Context, seller_id: &str, call: F) -> Result<T, TokenError>
where
    F: Fn(Amo) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    with_api_as(state, seller_id, Calling::default(), call).await
}

/// [`with_api`] starting from a connection row the caller read moments ago (a push turn's), which saves
/// reading it again per call. A pair a peer refreshed since is found the usual way: its 401 re-reads it.
pub async fn with_api_from<T, F, Fut>(
    state: &Context,
    row: &Connection,
    call: F,
) -> Result<T, TokenError>
where
    F: Fn(Amo) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let how = Calling::default();
    let grant = access_row(state, row.clone(), how).await?;
    call_with(state, grant, how, call).await
}

/// [`with_api`] with its treatment of amoCRM's verdicts chosen by `how` (see [`Calling`]). Unless `how`
/// says otherwise, a 402 or 403 suspends the connection and comes back as
/// [`TokenError::NeedsReconnect`]`(Suspended)`: the caller holds its work as for any inactive connection.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn with_api_as<T, F, Fut>(
    state: &Context,
    seller_id: &str,
    how: Calling,
    call: F,
) -> Result<T, TokenError>
where
    F: Fn(Amo) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let grant = access_as(state, seller_id, how).await?;
    call_with(state, grant, how, call).await
}

async fn call_with<T, F, Fut>(
    state: &Context,
    grant: Grant,
    how: Calling,
    call: F,
) -> Result<T, TokenError>
where
    F: Fn(Amo) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let conn = grant.connection.clone();
    let first = call(amo(state, grant)?).await;
    // The row to call once more with, when the answer says the grant or the host went stale.
    let again = match &first {
        Err(ApiError::Unauthorized) => Some(after_401(state, &conn, how).await),
        Err(ApiError::NotFound) if !how.probe => Some(after_404(state, &conn, how).await),
        _ => None,
    };
    let result = match again {
        None => first.map_err(TokenError::Api),
        // The second call, with the row the stale grant or host was replaced by.
        Some(row) => {
            async {
                let api = amo(state, grant_as(state, row?, how)?)?;
                call(api).await.map_err(TokenError::Api)
            }
            .await
        }
    };
    settle(state, &conn, how, result).await
}

/// A 401: re-reads the stored pair once (a peer may have stored a newer one), else refreshes; the row to
/// call again with.
async fn after_401(
    state: &Context,
    conn: &Connection,
    how: Calling,
) -> Result<Connection, TokenError> {
    let seller_id = conn.seller_id.as_str();
    let version = conn.token_version;
    tracing::info!("amoCRM answered 401; re-reading the stored token pair");
    let row = state
        .connection_of(seller_id, TokenError::NotConnected)
        .await?;
    status_of(&row, how)?;
    if row.token_version != version {
        // A peer stored a newer pair while we were calling: use it.
        return Ok(row);
    }
    let need = Need::Stale { version };
    Ok(refresh::refresh_as(state, seller_id, need, how.probe)
        .await?
        .into_connection())
}

/// A 404 where the account itself may be gone: if amoCRM says it lives at another host now, the refresh
/// follows it there and the row to call again with is the one refreshed there; otherwise the 404 is the
/// answer.
async fn after_404(
    state: &Context,
    conn: &Connection,
    how: Calling,
) -> Result<Connection, TokenError> {
    if !super::rename::host_moved(state, conn).await {
        return Err(TokenError::Api(ApiError::NotFound));
    }
    let need = Need::Stale {
        version: conn.token_version,
    };
    Ok(refresh::refresh_as(state, &conn.seller_id, need, how.probe)
        .await?
        .into_connection())
}

/// Records the call's outcome in the connection's health and suspends the connection on a 402 or 403
/// (unless `how` says they mean something else here).
async fn settle<T>(
    state: &Context,
    conn: &Connection,
    how: Calling,
    result: Result<T, TokenError>,
) -> Result<T, TokenError> {
    let err = match &result {
        Ok(_) => {
            health::record(state, conn.id, Outcome::Ok).await;
            return result;
        }
        Err(TokenError::Api(e)) => e,
        Err(_) => return result,
    };
    let rights = how.forbidden_is_rights && err.is_forbidden();
    let outcome = if rights {
        Outcome::of_api(&ApiError::Rejected {
            status: 403,
            detail: err.to_string(),
            validation: Vec::new(),
        })
    } else {
        Outcome::of_api(err)
    };
    health::record(state, conn.id, outcome).await;
    let reason = match err {
        _ if how.probe || rights => None,
        ApiError::PaymentRequired => Some(SuspendReason::PaymentRequired),
        ApiError::Forbidden { .. } => Some(SuspendReason::Blocked),
        _ => None,
    };
    if let Some(reason) = reason {
        super::suspension::suspend(state, conn, reason).await?;
        return Err(TokenError::NeedsReconnect(ConnectionStatus::Suspended));
    }
    result
}

fn amo(state: &Context, grant: Grant) -> Result<Amo, TokenError> {
    Ok(Amo {
        client: client_of(state, grant.connection.platform)?.clone(),
        grant,
    })
}

/// The client of a connection's platform; a platform no longer configured makes the connection unusable.
pub fn client_of(state: &Context, platform: Platform) -> Result<&AmoClient, TokenError> {
    state.client(platform).ok_or_else(|| {
        TokenError::Corrupt(format!(
            "the connection is on {}, which is not configured",
            platform.display_name()
        ))
    })
}

fn status_of(row: &Connection, how: Calling) -> Result<ConnectionStatus, TokenError> {
    match row.status {
        ConnectionStatus::Active => Ok(ConnectionStatus::Active),
        ConnectionStatus::Suspended if how.probe => Ok(ConnectionStatus::Suspended),
        other => Err(TokenError::NeedsReconnect(other)),
    }
}

/// Decrypts the row's access token and parses its host (re-checked against its platform's allowed domains).
pub fn grant_from(state: &Context, row: Connection) -> Result<Grant, TokenError> {
    grant_as(state, row, Calling::default())
}

fn grant_as(state: &Context, row: Connection, how: Calling) -> Result<Grant, TokenError> {
    status_of(&row, how)?;
    let host = parse_host(state, row.platform, &row.host).map_err(TokenError::Corrupt)?;
    let token = row
        .access_token(&state.keys)
        .map_err(|e| TokenError::Corrupt(e.to_string()))?
        .ok_or(TokenError::NeedsReconnect(ConnectionStatus::Revoked))?;
    Ok(Grant {
        connection: row,
        host,
        token,
    })
}

/// An account host of `platform` as configuration allows it now.
pub fn parse_host(state: &Context, platform: Platform, host: &str) -> Result<AccountHost, String> {
    let client = client_of(state, platform).map_err(|e| e.to_string())?;
    AccountHost::parse(host, &client.config().allowed_domains)
        .map_err(|e| format!("account host {host:?}: {e}"))
}
