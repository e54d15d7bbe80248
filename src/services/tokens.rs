//! The token provider: the one way any code gets an access token for a seller's amoCRM account.
//!
//! [`access`] returns a usable token, refreshing it first when it expires soon (under the row lease of
//! [`super::refresh`], so concurrent callers across threads and instances cause one refresh). [`with_api`] runs
//! a call against amoCRM and, on a 401, re-reads the stored pair once (a peer may have refreshed it) before
//! refreshing and trying again. Orders, provisioning and webhooks processing all go through here.

use std::future::Future;
use std::time::Duration;

use amocrm_client::{AccountApi, AccountHost, AmoClient, ApiError};
use secrecy::SecretString;

use super::refresh::{self, Need, RefreshError, RefreshOutcome};
use crate::app::AppState;
use crate::domain::status::ConnectionStatus;
use crate::storage::StorageError;
use crate::storage::connections::{self, Connection};

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
    /// The connection is `refresh_failed` or `revoked`: only the seller can fix it, by reconnecting. Work
    /// for this seller (orders) is held until then.
    #[error("the amoCRM connection is {}: the seller must reconnect", .0.as_str())]
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
pub async fn access(state: &AppState, seller_id: &str) -> Result<Grant, TokenError> {
    let seller = seller_id.to_owned();
    let row = state
        .db
        .run(move |c| connections::find_by_seller(c, &seller))
        .await?
        .ok_or(TokenError::NotConnected)?;
    let margin = chrono::Duration::from_std(ON_DEMAND_MARGIN).unwrap_or_default();
    let fresh_enough = row
        .token_expires_at
        .is_some_and(|t| t > crate::storage::now() + margin);
    if status_of(&row)? == ConnectionStatus::Active && fresh_enough {
        return grant_from(state, row);
    }
    let need = Need::Expiring {
        before: crate::storage::now() + margin,
    };
    let row = match refresh::refresh(state, seller_id, need).await? {
        RefreshOutcome::Refreshed(row) | RefreshOutcome::Fresh(row) => row,
    };
    grant_from(state, row)
}

/// Runs `call` with the seller's account API. On a 401 the stored pair is re-read once: if a peer stored a
/// newer pair, the call is retried with it; otherwise the token is refreshed (single-flight) and the call
/// retried once. Any other error is returned as [`TokenError::Api`].
///
/// ```ignore
/// let pipelines = tokens::with_api(&state, "seller-1", |amo| async move { amo.api().pipelines().await }).await?;
/// ```
pub async fn with_api<T, F, Fut>(
    state: &AppState,
    seller_id: &str,
    call: F,
) -> Result<T, TokenError>
where
    F: Fn(Amo) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let grant = access(state, seller_id).await?;
    let version = grant.connection.token_version;
    match call(amo(state, grant)).await {
        Err(ApiError::Unauthorized) => {}
        other => return other.map_err(TokenError::Api),
    }
    tracing::info!(
        seller_id,
        "amoCRM answered 401; re-reading the stored token pair"
    );
    let seller = seller_id.to_owned();
    let row = state
        .db
        .run(move |c| connections::find_by_seller(c, &seller))
        .await?
        .ok_or(TokenError::NotConnected)?;
    status_of(&row)?;
    let row = if row.token_version != version {
        // A peer stored a newer pair while we were calling: use it.
        row
    } else {
        match refresh::refresh(state, seller_id, Need::Stale { version }).await? {
            RefreshOutcome::Refreshed(row) | RefreshOutcome::Fresh(row) => row,
        }
    };
    let grant = grant_from(state, row)?;
    call(amo(state, grant)).await.map_err(TokenError::Api)
}

fn amo(state: &AppState, grant: Grant) -> Amo {
    Amo {
        client: state.amo.clone(),
        grant,
    }
}

fn status_of(row: &Connection) -> Result<ConnectionStatus, TokenError> {
    match ConnectionStatus::parse(&row.status) {
        Some(ConnectionStatus::Active) => Ok(ConnectionStatus::Active),
        Some(other) => Err(TokenError::NeedsReconnect(other)),
        None => Err(TokenError::Corrupt(format!(
            "unknown connection status {:?}",
            row.status
        ))),
    }
}

/// Decrypts the row's access token and parses its host (re-checked against the allowed domains).
pub fn grant_from(state: &AppState, row: Connection) -> Result<Grant, TokenError> {
    status_of(&row)?;
    let host = parse_host(state, &row.host).map_err(TokenError::Corrupt)?;
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

/// An account host as configuration allows it now.
pub fn parse_host(state: &AppState, host: &str) -> Result<AccountHost, String> {
    AccountHost::parse(host, &state.amo.config().allowed_domains)
        .map_err(|e| format!("account host {host:?}: {e}"))
}
