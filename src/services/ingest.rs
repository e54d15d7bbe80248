//! The amoCRM webhook intake: authenticate the body by its per-connection token and account, store it raw,
//! and let amoCRM have its 200 at once. Interpreting it is the processor's job ([`super::lead_events`]).
//!
//! amoCRM signs nothing, so the unguessable token in the destination URL is the credential; the body's
//! `account[id]` / `account[subdomain]` (and each entity's `account_id`) must name the connection's account,
//! or nothing is stored.

use std::sync::{Arc, OnceLock};

use amocrm_client::webhook::{self, WebhookParseError, WebhookPayload};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::domain::status::ConnectionStatus;
use crate::storage::connections::Connection;
use crate::storage::{Db, StorageError, inbox};

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
    pub seller_id: String,
    pub lead_events: usize,
}

/// Most bodies committed in one transaction.
const MAX_BATCH: usize = 256;

/// The intake's single writer: requests hand their checked bodies to it and wait for the commit.
///
/// Under load many requests arrive while one transaction commits; the next transaction takes all of them
/// at once (group commit). Each request is still answered only after its own row is committed, and one
/// writer means SQLite never makes intake requests wait on its file lock.
pub struct Intake {
    db: Db,
    /// The writer task's queue, started on first use (so an `Context` can be built outside a runtime).
    tx: OnceLock<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake").finish_non_exhaustive()
    }
}

/// One body waiting for the writer.
struct Job {
    item: Arc<Item>,
    reply: oneshot::Sender<Result<Accepted, IngestError>>,
}

/// What the writer needs of a request: its token, the account identities the body claims (or why it is
/// not a webhook), the raw bytes.
struct Item {
    token: String,
    claims: Result<Claims, IngestErrorKind>,
    body: Vec<u8>,
}

struct Claims {
    account_id: Option<u64>,
    subdomain: Option<String>,
    entity_accounts: Vec<u64>,
    lead_events: usize,
}

/// [`IngestError`] without its storage payload, so one outcome can be computed inside a retried closure.
#[derive(Debug, Clone)]
enum IngestErrorKind {
    UnknownToken,
    Revoked,
    Malformed(String),
    TooLarge(usize),
    AccountMismatch,
}

impl From<IngestErrorKind> for IngestError {
    fn from(k: IngestErrorKind) -> Self {
        match k {
            IngestErrorKind::UnknownToken => Self::UnknownToken,
            IngestErrorKind::Revoked => Self::Revoked,
            IngestErrorKind::Malformed(m) => Self::Malformed(m),
            IngestErrorKind::TooLarge(limit) => Self::TooLarge { limit },
            IngestErrorKind::AccountMismatch => Self::AccountMismatch,
        }
    }
}

impl Intake {
    /// The intake for `db`; its writer task starts with the first body.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            tx: OnceLock::new(),
        }
    }

    fn sender(&self) -> &mpsc::Sender<Job> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
            tokio::spawn(writer(self.db.clone(), rx));
            tx
        })
    }

    /// Checks and stores one body; returns once its row is committed. Parsing happens here, on the
    /// request's task; the database sees only bodies that are webhooks.
    pub async fn accept(
        &self,
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
        // Parse errors are reported after the token is known (an unknown token is 404 whatever the body).
        let claims = match webhook::parse_with_limit(body, limit) {
            Ok(p) => Ok(Claims {
                account_id: p.account_id,
                subdomain: p.subdomain.clone(),
                entity_accounts: p.events.iter().filter_map(|e| e.account_id).collect(),
                lead_events: p.events.len(),
            }),
            Err(WebhookParseError::TooLarge { limit }) => Err(IngestErrorKind::TooLarge(limit)),
            Err(other) => Err(IngestErrorKind::Malformed(other.to_string())),
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            item: Arc::new(Item {
                token: token.to_owned(),
                claims,
                body: body.to_vec(),
            }),
            reply,
        };
        self.sender()
            .send(job)
            .await
            .map_err(|_| StorageError::Other("the intake writer has stopped".into()))?;
        answer.await.map_err(|_| {
            IngestError::Storage(StorageError::Other("the intake writer has stopped".into()))
        })?
    }
}

async fn writer(db: Db, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let items: Arc<Vec<Arc<Item>>> = Arc::new(jobs.iter().map(|j| j.item.clone()).collect());
        let result = db
            .inbox()
            .store_checked(items, verdict, || IngestErrorKind::UnknownToken)
            .await;
        let mut stored = false;
        match result {
            Ok(outcomes) => {
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    stored |= outcome.is_ok();
                    let _ = job.reply.send(outcome.map_err(IngestError::from));
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in jobs {
                    let _ = job
                        .reply
                        .send(Err(IngestError::Storage(StorageError::Other(msg.clone()))));
                }
            }
        }
        if stored {
            new_body_signal().notify_one();
        }
    }
}

impl inbox::OfferedBody for Arc<Item> {
    fn token(&self) -> &str {
        &self.token
    }

    fn body(&self) -> &[u8] {
        &self.body
    }
}

/// Whether a body may be stored for the connection its token names.
fn verdict(item: &Arc<Item>, conn: &inbox::TokenOwner) -> Result<Accepted, IngestErrorKind> {
    if conn.status == ConnectionStatus::Revoked {
        return Err(IngestErrorKind::Revoked);
    }
    let claims = item.claims.as_ref().map_err(Clone::clone)?;
    if !account_matches(conn.account_id, &conn.subdomain, claims) {
        return Err(IngestErrorKind::AccountMismatch);
    }
    Ok(Accepted {
        seller_id: conn.seller_id.clone(),
        lead_events: claims.lead_events,
    })
}

fn account_matches(account_id: i64, subdomain: &str, claims: &Claims) -> bool {
    let account = u64::try_from(account_id).ok();
    if claims.account_id.is_some_and(|id| Some(id) != account) {
        return false;
    }
    if claims
        .subdomain
        .as_deref()
        .is_some_and(|s| !s.eq_ignore_ascii_case(subdomain))
    {
        return false;
    }
    claims.entity_accounts.iter().all(|id| Some(*id) == account)
}

/// Every account identity the body carries must be the connection's. A body with none at all (older
/// senders omit the account block in some entity kinds) is accepted on the token alone.
pub fn check_account(conn: &Connection, p: &WebhookPayload) -> Result<(), IngestError> {
    let claims = Claims {
        account_id: p.account_id,
        subdomain: p.subdomain.clone(),
        entity_accounts: p.events.iter().filter_map(|e| e.account_id).collect(),
        lead_events: p.events.len(),
    };
    if account_matches(conn.account_id, &conn.subdomain, &claims) {
        Ok(())
    } else {
        Err(IngestError::AccountMismatch)
    }
}

// --- keeping amoCRM's side of the subscription alive ---

/// The lead events the connector subscribes each account to (provisioning owns the list).
pub use crate::services::provisioning::WEBHOOK_SETTINGS as AMOCRM_WEBHOOK_SETTINGS;

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
#[tracing::instrument(skip_all, fields(seller_id = %connection.seller_id, account_id = connection.account_id))]
pub async fn ensure_amocrm_subscription(
    state: &crate::services::Context,
    connection: &Connection,
) -> Result<SubscriptionCheck, SubscriptionCheckError> {
    if connection.status != ConnectionStatus::Active {
        return Ok(SubscriptionCheck::Skipped);
    }
    let destination = connection.webhook_destination.clone().unwrap_or_else(|| {
        amocrm_destination(&state.settings.base_url(), &connection.webhook_token)
    });
    let result = crate::services::provisioning::ensure_subscription(
        state,
        &connection.seller_id,
        &destination,
    )
    .await
    .map(|(webhook_id, resubscribed)| {
        if resubscribed {
            SubscriptionCheck::Resubscribed { webhook_id }
        } else {
            SubscriptionCheck::Healthy { webhook_id }
        }
    });
    match result {
        Ok(check) => {
            if matches!(check, SubscriptionCheck::Resubscribed { .. }) {
                tracing::info!("amoCRM webhook subscription restored");
            }
            Ok(check)
        }
        Err(crate::services::tokens::TokenError::NeedsReconnect(_)) => {
            Ok(SubscriptionCheck::Skipped)
        }
        Err(crate::services::tokens::TokenError::Api(e)) => Err(SubscriptionCheckError::Amo(e)),
        Err(e) => Err(SubscriptionCheckError::Connection(e.to_string())),
    }
}
