//! Following a renamed account (`docs/amocrm-api.md` §1.4, §13.3; CONTRACT §11).
//!
//! When a seller renames their account, its old host refuses the refresh (401 or 404) although the grant is
//! fine. Before the connection may be given up, the access token's `api_domain` claim is read (no signature
//! check: it is only a hint), checked against the platform's API hosts before the refresh token goes
//! anywhere, and asked where the account lives now. If amoCRM names the same account (`id`) at another host,
//! the refresh is tried once there; the pair, the new host and subdomain, and `connection.host_changed` are
//! stored together, and the account's webhook subscription is checked again.

use std::future::Future;
use std::pin::Pin;

use amocrm_client::{AccountHost, AmoClient, ApiHost, OAuthError, TokenClaims};
use secrecy::{ExposeSecret, SecretString};

use super::refresh::{self, RefreshError, RefreshOutcome};
use crate::domain::events::ConnectionHostChanged;
use crate::services::Context;
use crate::storage::connections::{Connection, MovedAccount};
use crate::storage::events::NewEvent;

/// Where the account is, as far as amoCRM says.
enum Located {
    /// Renamed: the same account at this host now.
    Moved {
        host: AccountHost,
        subdomain: String,
    },
    /// Not renamed, or amoCRM cannot (or may not) be asked: the refusal stands.
    Nowhere(String),
    /// amoCRM could not answer now: try again later.
    Later(String),
}

/// The refresh at the old host was refused with 401/404 (`refused` says how). Finds the account's new host
/// and refreshes there once; only when that fails is the connection `refresh_failed`. We hold the row's
/// refresh lease.
pub(super) async fn follow(
    state: &Context,
    row: Connection,
    owner: String,
    refresh_token: &SecretString,
    refused: &str,
) -> Result<RefreshOutcome, RefreshError> {
    let client = super::tokens::client_of(state, row.platform)
        .map_err(|e| RefreshError::Corrupt(e.to_string()))?;
    let old =
        super::tokens::parse_host(state, row.platform, &row.host).map_err(RefreshError::Corrupt)?;
    let (host, subdomain) = match locate(state, client, &row, &old, refresh_token).await {
        Located::Moved { host, subdomain } => (host, subdomain),
        Located::Nowhere(why) => {
            tracing::warn!(why, "the account's host refused the refresh");
            let reason = format!("{refused}; {why}");
            return refresh::mark_failed(state, &row, &owner, &reason).await;
        }
        Located::Later(why) => {
            refresh::record_transient(state, &row, &owner, &why, None).await;
            return Err(RefreshError::Transient(why));
        }
    };
    tracing::info!(old = %old, new = %host, "amoCRM account renamed; following it");
    match client.refresh(&host, refresh_token).await {
        Ok(set) => {
            let pair = refresh::sealed(state, &row, &set);
            store(state, row, &owner, pair, host, subdomain).await
        }
        Err(e @ OAuthError::Rejected { .. }) => {
            let reason = format!("{refused}; at the new host {host}: {e}");
            refresh::mark_failed(state, &row, &owner, &reason).await
        }
        Err(e) => {
            let reason = e.to_string();
            refresh::record_transient(state, &row, &owner, &reason, None).await;
            Err(RefreshError::Transient(reason))
        }
    }
}

/// Stores the pair refreshed at the new host with the move and its event, then re-checks the webhook
/// subscription of the account.
async fn store(
    state: &Context,
    row: Connection,
    owner: &str,
    pair: crate::storage::connections::RefreshedPair,
    host: AccountHost,
    subdomain: String,
) -> Result<RefreshOutcome, RefreshError> {
    let event = NewEvent::of(
        &row.seller_id,
        &ConnectionHostChanged {
            seller_id: row.seller_id.clone(),
            account_id: row.account_id,
            old_host: row.host.clone(),
            new_host: host.as_str().to_owned(),
        },
        Some(format!(
            "connection.host_changed:{}:{}",
            row.seller_id, row.token_version
        )),
    );
    let moved = MovedAccount {
        host: host.as_str().to_owned(),
        subdomain,
    };
    let repo = state.db.connections();
    if !repo
        .store_moved(row.id, owner, &pair, &moved, &event)
        .await?
    {
        // The lease was lost: whatever a peer stored is the truth; our new pair was never used.
        return Err(RefreshError::Transient(
            "the refresh lease was lost before the moved account could be stored".into(),
        ));
    }
    let fresh = repo
        .by_seller(&row.seller_id)
        .await?
        .ok_or(RefreshError::NotConnected)?;
    super::health::record(state, fresh.id, super::health::Outcome::Ok).await;
    recheck_subscription(state, &fresh).await;
    Ok(RefreshOutcome::Refreshed(fresh))
}

/// Whether the account of `conn` lives at another host now (asked at its API host; any doubt is "no"). Used
/// when an API call answers 404, which a renamed account's old host may answer to everything.
pub async fn host_moved(state: &Context, conn: &Connection) -> bool {
    let Ok(client) = super::tokens::client_of(state, conn.platform) else {
        return false;
    };
    let Ok(old) = super::tokens::parse_host(state, conn.platform, &conn.host) else {
        return false;
    };
    let Ok(Some(refresh_token)) = conn.refresh_token(&state.keys) else {
        return false;
    };
    matches!(
        locate(state, client, conn, &old, &refresh_token).await,
        Located::Moved { .. }
    )
}

/// Asks the account's API host where the account lives now.
async fn locate(
    state: &Context,
    client: &AmoClient,
    row: &Connection,
    old: &AccountHost,
    refresh_token: &SecretString,
) -> Located {
    let allowed = &client.config().allowed_domains;
    let Some(named) = api_domain_of(state, row) else {
        return Located::Nowhere("the access token names no API host to ask".into());
    };
    let Ok(api_host) = ApiHost::parse(&named, allowed) else {
        tracing::warn!(
            "the access token names an API host outside the platform's; nothing was sent there"
        );
        return Located::Nowhere(format!(
            "the access token's API host {named:?} is not one of the platform's"
        ));
    };
    let answer = match client
        .account_subdomain(&api_host, old, refresh_token)
        .await
    {
        Ok(a) => a,
        Err(e) if e.is_retryable() || e.may_have_written() => return Located::Later(e.to_string()),
        Err(e) => return Located::Nowhere(format!("the account's new host is unknown: {e}")),
    };
    if i64::try_from(answer.id).ok() != Some(row.account_id) {
        return Located::Nowhere("amoCRM named another account at the API host".into());
    }
    let domain = if answer.domain.trim().is_empty() {
        format!("{}.{}", answer.subdomain, old.domain())
    } else {
        answer.domain.clone()
    };
    match AccountHost::parse(&domain, allowed) {
        Ok(host) if &host == old => Located::Nowhere("the account was not renamed".into()),
        Ok(host) => Located::Moved {
            subdomain: host.subdomain().to_owned(),
            host,
        },
        Err(e) => Located::Nowhere(format!(
            "the account's new host {domain:?} is not allowed: {e}"
        )),
    }
}

/// The `api_domain` claim of the stored access token, else the one stored when the pair was received.
fn api_domain_of(state: &Context, row: &Connection) -> Option<String> {
    let from_token = row
        .access_token(&state.keys)
        .ok()
        .flatten()
        .and_then(|t| TokenClaims::from_jwt(t.expose_secret()).api_domain);
    from_token
        .or_else(|| row.api_domain.clone())
        .filter(|d| !d.trim().is_empty())
}

/// Checks (and restores) the account's webhook subscription after the move. Boxed: the check calls amoCRM
/// through the token provider, which may refresh, which is where this is called from.
fn recheck_subscription<'a>(
    state: &'a Context,
    conn: &'a Connection,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        match super::ingest::ensure_amocrm_subscription(state, conn).await {
            Ok(check) => {
                tracing::info!(?check, "webhook subscription checked after the move")
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook subscription check after the move failed; the sweep retries it")
            }
        }
    })
}
