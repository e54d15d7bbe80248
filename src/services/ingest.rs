//! The amoCRM webhook intake: authenticate the body by its per-connection token and account, store it raw,
//! and let amoCRM have its 200 at once. Interpreting it is the processor's job ([`super::lead_events`]).
//!
//! amoCRM signs nothing, so the unguessable token in the destination URL is the credential; the body's
//! `account[id]` / `account[subdomain]` (and each entity's `account_id`) must name the connection's account,
//! or nothing is stored.

use std::sync::OnceLock;

use amocrm_client::webhook::{self, WebhookParseError, WebhookPayload};
use tokio::sync::Notify;

use crate::domain::status::ConnectionStatus;
use crate::storage::connections::{self, Connection};
use crate::storage::{self, Db, StorageError, inbox};

/// Longest path token looked up (real ones are much shorter); anything longer is simply unknown.
const MAX_TOKEN_LEN: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("unknown webhook destination")]
    UnknownToken,
    #[error("the connection behind this destination was revoked")]
    Revoked,
    #[error("not an amoCRM webhook body: {0}")]
    Malformed(String),
    #[error("webhook body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body names another amoCRM account than this destination's")]
    AccountMismatch,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Wakes the webhook processor when a body was stored (it also polls, so a missed wake-up only delays).
pub fn new_body_signal() -> &'static Notify {
    static SIGNAL: OnceLock<Notify> = OnceLock::new();
    SIGNAL.get_or_init(Notify::new)
}

/// What was accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub inbox_id: i64,
    pub seller_id: String,
    pub lead_events: usize,
}

/// Checks and stores one body; returns once the row is committed.
pub async fn accept(
    db: &Db,
    token: &str,
    body: &[u8],
    limit: usize,
) -> Result<Accepted, IngestError> {
    if body.len() > limit {
        return Err(IngestError::TooLarge { limit });
    }
    if token.is_empty()
        || token.len() > MAX_TOKEN_LEN
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(IngestError::UnknownToken);
    }
    let payload = webhook::parse_with_limit(body, limit).map_err(|e| match e {
        WebhookParseError::TooLarge { limit } => IngestError::TooLarge { limit },
        other => IngestError::Malformed(other.to_string()),
    });
    let token = token.to_owned();
    let connection = db
        .run(move |c| connections::find_by_webhook_token(c, &token))
        .await?
        .ok_or(IngestError::UnknownToken)?;
    if ConnectionStatus::parse(&connection.status) == Some(ConnectionStatus::Revoked) {
        return Err(IngestError::Revoked);
    }
    let payload = payload?;
    check_account(&connection, &payload)?;
    let (conn_id, seller, raw) = (connection.id, connection.seller_id.clone(), body.to_vec());
    let inbox_id = db
        .run(move |c| inbox::insert(c, conn_id, &seller, &raw, storage::now()))
        .await?;
    new_body_signal().notify_one();
    Ok(Accepted {
        inbox_id,
        seller_id: connection.seller_id,
        lead_events: payload.events.len(),
    })
}

/// Every account identity the body carries must be the connection's. A body with none at all (older
/// senders omit the account block in some entity kinds) is accepted on the token alone.
pub fn check_account(conn: &Connection, p: &WebhookPayload) -> Result<(), IngestError> {
    let account = u64::try_from(conn.account_id).ok();
    if let Some(id) = p.account_id
        && Some(id) != account
    {
        return Err(IngestError::AccountMismatch);
    }
    if let Some(sub) = &p.subdomain
        && !sub.eq_ignore_ascii_case(&conn.subdomain)
    {
        return Err(IngestError::AccountMismatch);
    }
    if p.events
        .iter()
        .filter_map(|e| e.account_id)
        .any(|id| Some(id) != account)
    {
        return Err(IngestError::AccountMismatch);
    }
    Ok(())
}

// --- keeping amoCRM's side of the subscription alive ---

/// The lead events the connector subscribes each account to (the same list provisioning uses).
pub const AMOCRM_WEBHOOK_SETTINGS: [&str; 4] =
    ["add_lead", "update_lead", "status_lead", "delete_lead"];

/// What [`ensure_amocrm_subscription`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionCheck {
    /// Subscribed, enabled, with every setting we need.
    Healthy { webhook_id: u64 },
    /// Missing, disabled by amoCRM (too many failed deliveries) or lacking a setting: subscribed again.
    Resubscribed { webhook_id: u64 },
    /// Not checked: the connection is not active (the seller must reconnect first).
    Skipped,
}

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionCheckError {
    #[error("amoCRM: {0}")]
    Amo(#[from] amocrm_client::ApiError),
    #[error("the stored connection is unusable: {0}")]
    Connection(String),
}

/// The destination amoCRM posts this connection's lead changes to.
pub fn amocrm_destination(base_url: &str, webhook_token: &str) -> String {
    format!(
        "{}/webhooks/amocrm/{webhook_token}",
        base_url.trim_end_matches('/')
    )
}

/// Checks the connection's amoCRM webhook subscription and subscribes again when amoCRM disabled it (after
/// more than 100 failed deliveries in 2 hours) or it is missing. Meant for the refresh sweep, once per
/// active connection; costs one API call when healthy, two when not.
pub async fn ensure_amocrm_subscription(
    state: &crate::app::AppState,
    connection: &Connection,
) -> Result<SubscriptionCheck, SubscriptionCheckError> {
    if ConnectionStatus::parse(&connection.status) != Some(ConnectionStatus::Active) {
        return Ok(SubscriptionCheck::Skipped);
    }
    let host =
        amocrm_client::AccountHost::parse(&connection.host, &state.amo.config().allowed_domains)
            .map_err(|e| SubscriptionCheckError::Connection(format!("host: {e}")))?;
    let token = connection
        .access_token(&state.keys)
        .map_err(|e| SubscriptionCheckError::Connection(e.to_string()))?
        .ok_or_else(|| SubscriptionCheckError::Connection("no access token".into()))?;
    let destination = connection.webhook_destination.clone().unwrap_or_else(|| {
        amocrm_destination(&state.settings.base_url(), &connection.webhook_token)
    });
    let api = state.amo.api(&host, &token);
    let hooks = api.webhooks().await?;
    if let Some(h) = hooks.iter().find(|h| {
        h.destination == destination
            && !h.disabled
            && AMOCRM_WEBHOOK_SETTINGS
                .iter()
                .all(|s| h.settings.iter().any(|x| x == s))
    }) {
        return Ok(SubscriptionCheck::Healthy { webhook_id: h.id });
    }
    // Subscribing the same destination again updates its settings and re-enables it.
    let hook = api
        .subscribe_webhook(&destination, &AMOCRM_WEBHOOK_SETTINGS)
        .await?;
    tracing::info!(seller_id = %connection.seller_id, "amoCRM webhook subscription restored");
    Ok(SubscriptionCheck::Resubscribed {
        webhook_id: hook.id,
    })
}
