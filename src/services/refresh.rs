//! Token refresh that never loses a connection: single-flight per connection, the sweep, failure classes.
//!
//! A refresh token works once (amoCRM rotates the pair) and the old one dies as soon as the new pair is used,
//! so two refreshes racing with the same token lose the connection. Here, whoever refreshes holds the row's
//! lease (a conditional UPDATE that also re-reads the row), checks again whether the refresh is still needed
//! (a peer may have just stored a new pair, which is then used instead), and stores the new pair before
//! anything uses it. If storing fails after amoCRM answered, the new pair is never used, so amoCRM's grace
//! rule keeps the old refresh token valid and the refresh is simply retried.
//!
//! Failure classes: a 401 or 404 first looks for a renamed account and follows it to its new host
//! ([`super::rename`]); a 402 or 403 suspends the connection ([`super::suspension`]); any other 4xx but 429
//! from the token endpoint is terminal (`refresh_failed` plus a `connection.refresh_failed` event); 429, 5xx
//! and network errors keep the connection `active`, counted, with a capped back-off before the sweep tries
//! again.
//!
//! The sweep ([`sweep`]) runs under the job lease `refresh_sweep`, so at most one runs at a time across all
//! instances sharing the database; a caller that finds one running waits for it and gets its result.

use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::health::{self, Outcome};
use crate::domain::events::ConnectionRefreshFailed;
use crate::domain::ids::random_token;
use crate::domain::status::{ConnectionStatus, SuspendReason};
use crate::services::Context;
use crate::storage::connections::{self, Connection, RefreshedPair};
use crate::storage::events::NewEvent;
use crate::storage::{self, StorageError};

/// The job lease name that makes the sweep run at most once at a time across instances.
pub const SWEEP_JOB: &str = "refresh_sweep";
/// A connection not refreshed for this long is refreshed even if its access token is still valid, so an
/// idle refresh token (3-month lifetime) never dies.
pub const IDLE_REFRESH: Duration = Duration::from_secs(24 * 3600);
/// Back-off after a transient failure: 2^failures seconds, at most this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// How long a caller that found a sweep running waits for its result before answering "already running".
pub const JOIN_WAIT: Duration = Duration::from_secs(60);
/// Rows per page of the sweep, per unit of concurrency: the job lease is extended between pages, so a page
/// must finish well inside the lease even when every call takes the full request timeout.
const PAGE_PER_WORKER: usize = 8;

/// When a refresh is (still) needed; checked again on the freshly leased row.
#[derive(Debug, Clone, Copy)]
pub enum Need {
    /// The access token expires before `before` (on demand).
    Expiring { before: NaiveDateTime },
    /// The sweep's rule: expiring before `expiring_before`, or not refreshed since `idle_before`.
    Due {
        expiring_before: NaiveDateTime,
        idle_before: NaiveDateTime,
    },
    /// The pair of this version was refused (401) or a refresh was asked for explicitly: refresh unless a
    /// peer already stored a newer pair.
    Stale { version: i64 },
}

impl Need {
    pub fn needed(&self, row: &Connection) -> bool {
        match *self {
            Need::Expiring { before } => row.token_expires_at.is_none_or(|t| t < before),
            Need::Due {
                expiring_before,
                idle_before,
            } => {
                row.token_expires_at.is_none_or(|t| t < expiring_before)
                    || row.last_refreshed_at.is_none_or(|t| t < idle_before)
            }
            Need::Stale { version } => row.token_version == version,
        }
    }

    /// The sweep's rule as of now.
    pub fn due_now(state: &Context) -> Self {
        let now = storage::now();
        Need::Due {
            expiring_before: now + chrono_dur(state.settings.refresh_ahead),
            idle_before: now - chrono_dur(IDLE_REFRESH),
        }
    }
}

/// How a refresh call ended when it did not fail.
#[derive(Debug, Clone)]
pub enum RefreshOutcome {
    /// This call refreshed the pair and stored it; the row as stored.
    Refreshed(Connection),
    /// No refresh was needed (any more): a peer stored a fresh pair, or the row was not due.
    Fresh(Connection),
}

impl RefreshOutcome {
    pub fn connection(&self) -> &Connection {
        match self {
            Self::Refreshed(c) | Self::Fresh(c) => c,
        }
    }

    /// The row as it is now, whoever refreshed it.
    pub fn into_connection(self) -> Connection {
        match self {
            Self::Refreshed(c) | Self::Fresh(c) => c,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the seller has no amoCRM connection")]
    NotConnected,
    #[error("the amoCRM connection is {}", .0.as_str())]
    NeedsReconnect(ConnectionStatus),
    /// amoCRM refused the refresh token: the connection is now `refresh_failed`.
    #[error("{0}")]
    Rejected(String),
    /// 429, 5xx, network, or the new pair could not be stored: the connection stays active, retried later.
    #[error("{0}")]
    Transient(String),
    /// A peer held the row's refresh lease for longer than we wait.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Corrupt(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The refresh lease's lifetime: long enough for a token call that times out, twice.
fn lease_ttl(state: &Context) -> Duration {
    state.settings.amocrm_request_timeout * 2 + Duration::from_secs(10)
}

/// Refreshes `seller_id`'s pair if `need` still holds once the row lease is taken. Concurrent callers (threads
/// or instances) wait for the lease holder and then find the need satisfied, so one refresh happens.
pub async fn refresh(
    state: &Context,
    seller_id: &str,
    need: Need,
) -> Result<RefreshOutcome, RefreshError> {
    refresh_as(state, seller_id, need, false).await
}

/// [`refresh`]; with `suspended_too` a suspended connection is refreshed as well (its probe needs a token).
#[tracing::instrument(skip_all, fields(seller_id = %seller_id, account_id = tracing::field::Empty))]
pub async fn refresh_as(
    state: &Context,
    seller_id: &str,
    need: Need,
    suspended_too: bool,
) -> Result<RefreshOutcome, RefreshError> {
    let ttl = lease_ttl(state);
    let deadline = Instant::now() + ttl + Duration::from_secs(5);
    let mut pause = Duration::from_millis(10);
    loop {
        let owner = format!("{}:{}", state.settings.instance_id, random_token(10));
        let until = storage::now() + chrono_dur(ttl);
        let leased = state
            .db
            .connections()
            .lease_refresh(seller_id, &owner, until)
            .await?;
        if let Some(row) = leased {
            tracing::Span::current().record("account_id", row.account_id);
            if let Err(e) = check_usable(&row, suspended_too) {
                release(state, row.id, &owner).await;
                return Err(e);
            }
            if !need.needed(&row) {
                release(state, row.id, &owner).await;
                return Ok(RefreshOutcome::Fresh(row));
            }
            let result = refresh_leased(state, row, owner).await;
            crate::metrics::refresh_outcome(match &result {
                Ok(RefreshOutcome::Refreshed(_)) => "ok",
                Ok(RefreshOutcome::Fresh(_)) => "skipped",
                Err(RefreshError::Rejected(_)) => "rejected",
                Err(_) => "transient",
            });
            return result;
        }
        // No row, or a peer holds the lease: wait (reading only) until the lease is free or the need is met.
        loop {
            let row = state
                .connection_of(seller_id, RefreshError::NotConnected)
                .await?;
            check_usable(&row, suspended_too)?;
            if !need.needed(&row) {
                return Ok(RefreshOutcome::Fresh(row));
            }
            let free = row.refresh_lease_until.is_none_or(|t| t < storage::now());
            if free {
                break;
            }
            if Instant::now() > deadline {
                return Err(RefreshError::Busy(
                    "another refresh of this connection is still running".into(),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

fn check_usable(row: &Connection, suspended_too: bool) -> Result<(), RefreshError> {
    let usable = row.status == ConnectionStatus::Active
        || (suspended_too && row.status == ConnectionStatus::Suspended);
    match row.status {
        _ if usable && row.refresh_token_enc.is_some() => Ok(()),
        _ if usable => Err(RefreshError::NeedsReconnect(ConnectionStatus::Revoked)),
        other => Err(RefreshError::NeedsReconnect(other)),
    }
}

async fn release(state: &Context, id: i64, owner: &str) {
    if let Err(e) = state
        .db
        .connections()
        .release_refresh_lease(id, owner)
        .await
    {
        // The lease expires by itself; nothing is lost.
        tracing::warn!(error = %e, "could not release a refresh lease");
    }
}

/// We hold the lease on `row` and it needs a refresh: call amoCRM, store, classify.
async fn refresh_leased(
    state: &Context,
    row: Connection,
    owner: String,
) -> Result<RefreshOutcome, RefreshError> {
    let leased = super::tokens::parse_host(state, row.platform, &row.host).and_then(|host| {
        let client = super::tokens::client_of(state, row.platform).map_err(|e| e.to_string())?;
        Ok((host, client))
    });
    let (host, client) = match leased {
        Ok(v) => v,
        Err(e) => {
            record_transient(state, &row, &owner, &e, None).await;
            return Err(RefreshError::Corrupt(e));
        }
    };
    let refresh_token = match row.refresh_token(&state.keys) {
        Ok(Some(t)) => t,
        Ok(None) => {
            release(state, row.id, &owner).await;
            return Err(RefreshError::NeedsReconnect(ConnectionStatus::Revoked));
        }
        Err(e) => {
            let reason = format!("stored refresh token unreadable: {e}");
            record_transient(state, &row, &owner, &reason, None).await;
            return Err(RefreshError::Corrupt(reason));
        }
    };
    let started = Instant::now();
    match client.refresh(&host, &refresh_token).await {
        Ok(set) => {
            health::record(state, row.id, Outcome::Ok).await;
            let pair = sealed(state, &row, &set);
            store_new_pair(state, row, owner, pair, started).await
        }
        Err(err) => {
            health::record(state, row.id, Outcome::of_refresh(&err)).await;
            refused(state, row, owner, &refresh_token, err).await
        }
    }
}

/// The pair `set`, encrypted for `row`, with the API host its access token names.
pub(super) fn sealed(
    state: &Context,
    row: &Connection,
    set: &amocrm_client::TokenSet,
) -> RefreshedPair {
    let (access_enc, refresh_enc) = connections::seal_tokens(
        &state.keys,
        &row.seller_id,
        secrecy::ExposeSecret::expose_secret(&set.access_token),
        secrecy::ExposeSecret::expose_secret(&set.refresh_token),
    );
    RefreshedPair {
        access_token_enc: access_enc,
        refresh_token_enc: refresh_enc,
        expires_at: storage::to_db(set.expires_at),
        api_domain: set.claims.api_domain.clone().or(row.api_domain.clone()),
    }
}

/// The token endpoint refused or failed: follow a renamed account (401, 404), suspend an unpaid or blocked
/// one (402, 403), give up on any other refusal, or try again later.
async fn refused(
    state: &Context,
    row: Connection,
    owner: String,
    refresh_token: &secrecy::SecretString,
    err: amocrm_client::OAuthError,
) -> Result<RefreshOutcome, RefreshError> {
    use amocrm_client::OAuthError;
    let reason = err.to_string();
    match err {
        OAuthError::Rejected {
            status: 401 | 404, ..
        } => super::rename::follow(state, row, owner, refresh_token, &reason).await,
        OAuthError::Rejected {
            status: status @ (402 | 403),
            ..
        } => {
            let why = if status == 402 {
                SuspendReason::PaymentRequired
            } else {
                SuspendReason::Blocked
            };
            tracing::warn!(error = %reason, "amoCRM refuses the account");
            super::suspension::suspend(state, &row, why).await?;
            record_transient(state, &row, &owner, &reason, None).await;
            Err(RefreshError::NeedsReconnect(ConnectionStatus::Suspended))
        }
        OAuthError::Rejected { .. } => {
            tracing::warn!(error = %reason, "amoCRM refused the refresh token");
            mark_failed(state, &row, &owner, &reason).await
        }
        other => {
            tracing::warn!(error = %reason, "refresh failed, will retry");
            let told = match other {
                OAuthError::RateLimited { retry_after } => Some(retry_after),
                _ => None,
            };
            record_transient(state, &row, &owner, &reason, told).await;
            Err(RefreshError::Transient(reason))
        }
    }
}

/// Store-before-use, retried: while the pair is not stored nobody uses it, so the old refresh token stays
/// valid (amoCRM's grace rule) and giving up here loses nothing but this attempt.
async fn store_new_pair(
    state: &Context,
    row: Connection,
    owner: String,
    pair: RefreshedPair,
    started: Instant,
) -> Result<RefreshOutcome, RefreshError> {
    let mut last_err = None;
    for attempt in 0..4u32 {
        let stored = state
            .db
            .connections()
            .store_refreshed(row.id, &owner, &pair)
            .await;
        match stored {
            Ok(true) => {
                let fresh = state
                    .connection_of(&row.seller_id, RefreshError::NotConnected)
                    .await?;
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(ms, "refreshed amoCRM tokens");
                return Ok(RefreshOutcome::Refreshed(fresh));
            }
            Ok(false) => {
                // Our lease expired and a peer took the row, or it was revoked meanwhile. Our pair is dropped
                // unused; whatever the row holds now is the truth.
                return after_lost_lease(
                    state,
                    &row,
                    "the refresh lease was lost before the new pair could be stored",
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "could not store the refreshed pair");
                last_err = Some(e);
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
            }
        }
    }
    // The lease expires on its own; the next refresh uses the old (still valid) refresh token.
    Err(RefreshError::Transient(format!(
        "the refreshed pair could not be stored ({}); the old refresh token stays valid and will be retried",
        last_err.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Records a failed attempt and when to try again: capped exponential backoff, and never sooner than a 429
/// said (`told`).
pub(super) async fn record_transient(
    state: &Context,
    row: &Connection,
    owner: &str,
    reason: &str,
    told: Option<Duration>,
) {
    let failures = u32::try_from(row.refresh_failures.max(0)).unwrap_or(0) + 1;
    let backoff = Duration::from_secs(1u64 << failures.min(20))
        .min(MAX_BACKOFF)
        .max(
            told.unwrap_or_default()
                .min(amocrm_client::error::MAX_RETRY_AFTER),
        );
    let next_at = storage::now() + chrono_dur(backoff);
    if let Err(e) = state
        .db
        .connections()
        .record_refresh_failure(row.id, owner, reason, next_at)
        .await
    {
        tracing::warn!(error = %e, "could not record a refresh failure");
    }
}

/// amoCRM refused the refresh for good: `refresh_failed` and its event, unless a peer stored a fresh pair
/// meanwhile.
pub(super) async fn mark_failed(
    state: &Context,
    row: &Connection,
    owner: &str,
    reason: &str,
) -> Result<RefreshOutcome, RefreshError> {
    let seller = &row.seller_id;
    let event = NewEvent::of(
        seller,
        &ConnectionRefreshFailed {
            seller_id: seller.clone(),
            account_id: row.account_id,
            reason: reason.to_owned(),
        },
        Some(format!(
            "connection.refresh_failed:{seller}:{}",
            row.token_version
        )),
    );
    let marked = state
        .db
        .connections()
        .mark_refresh_failed(row.id, owner, reason, &event)
        .await?;
    if marked {
        return Err(RefreshError::Rejected(reason.to_owned()));
    }
    // The lease was lost meanwhile: a peer may have stored a fresh pair with a token that still worked.
    after_lost_lease(state, row, reason).await
}

/// Our refresh lease was lost before our outcome was written: the row as it is now decides. A peer's newer
/// pair is used; otherwise this attempt ends as transient with `reason`.
async fn after_lost_lease(
    state: &Context,
    row: &Connection,
    reason: &str,
) -> Result<RefreshOutcome, RefreshError> {
    let now_row = state
        .connection_of(&row.seller_id, RefreshError::NotConnected)
        .await?;
    check_usable(&now_row, true)?;
    if now_row.token_version != row.token_version {
        return Ok(RefreshOutcome::Fresh(now_row));
    }
    Err(RefreshError::Transient(reason.to_owned()))
}

/// What one sweep did: the contract's `{due, refreshed, failed, skipped}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    pub due: u64,
    pub refreshed: u64,
    pub failed: u64,
    pub skipped: u64,
}

/// How a call to [`sweep`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    /// This call ran the sweep.
    Ran(SweepReport),
    /// Another sweep (this or another instance) was running; this is its result.
    Joined(SweepReport),
    /// Another sweep is still running after [`JOIN_WAIT`].
    AlreadyRunning,
}

impl SweepOutcome {
    pub fn report(&self) -> Option<SweepReport> {
        match self {
            Self::Ran(r) | Self::Joined(r) => Some(*r),
            Self::AlreadyRunning => None,
        }
    }
}

/// One refresh sweep under the job lease (at most one at a time across instances). A caller that finds a
/// sweep running waits up to `join_wait` for it and returns its result.
#[tracing::instrument(name = "refresh_sweep", skip_all)]
pub async fn sweep(state: &Context, join_wait: Duration) -> Result<SweepOutcome, StorageError> {
    let owner = format!("{}:{}", state.settings.instance_id, random_token(10));
    let ttl = sweep_lease_ttl(state);
    let acquired = state
        .db
        .leases()
        .acquire(SWEEP_JOB, &owner, chrono_dur(ttl))
        .await?;
    if !acquired {
        return join_running(state, join_wait).await;
    }
    // Both lines are written while the lease is held, so the log shows that sweeps never overlap.
    tracing::info!("refresh sweep started");
    let result = refresh_due_leased(state, Some(&owner)).await;
    let summary = result
        .as_ref()
        .ok()
        .and_then(|r| serde_json::to_string(r).ok());
    match &result {
        Ok(report) => tracing::info!(
            due = report.due,
            refreshed = report.refreshed,
            failed = report.failed,
            skipped = report.skipped,
            "refresh sweep finished"
        ),
        Err(e) => tracing::warn!(error = %e, "refresh sweep finished with an error"),
    }
    if let Err(e) = state.db.leases().release(SWEEP_JOB, &owner, summary).await {
        tracing::warn!(error = %e, "could not release the sweep lease");
    }
    let report = result?;
    Ok(SweepOutcome::Ran(report))
}

fn sweep_lease_ttl(state: &Context) -> Duration {
    lease_ttl(state) * 4
}

/// Waits (bounded, reading only) for the running sweep to finish and returns its recorded result.
async fn join_running(state: &Context, wait: Duration) -> Result<SweepOutcome, StorageError> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(20);
    loop {
        let lease = state.db.leases().get(SWEEP_JOB).await?;
        let running = lease.as_ref().is_some_and(|l| {
            l.owner.is_some() && l.lease_until.is_some_and(|t| t >= storage::now())
        });
        if !running {
            let report = lease
                .and_then(|l| l.last_result)
                .and_then(|r| serde_json::from_str::<SweepReport>(&r).ok())
                .unwrap_or_default();
            return Ok(SweepOutcome::Joined(report));
        }
        if Instant::now() >= deadline {
            return Ok(SweepOutcome::AlreadyRunning);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Re-subscribes a webhook destination amoCRM disabled; failures are logged and retried on the next refresh.
#[tracing::instrument(skip_all, fields(seller_id = %conn.seller_id, account_id = conn.account_id))]
async fn check_subscription(state: &Context, conn: &Connection) {
    match crate::services::ingest::ensure_amocrm_subscription(state, conn).await {
        Ok(crate::services::ingest::SubscriptionCheck::Resubscribed { .. }) => {
            tracing::info!("re-subscribed a disabled amoCRM webhook");
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "amoCRM webhook check failed")
        }
    }
}

/// Refreshes every due connection with bounded concurrency, without the job lease. The sweep calls this;
/// it is public so tests can run it from several instances at once (row leases alone must keep each
/// connection refreshed once).
pub async fn refresh_due(state: &Context) -> Result<SweepReport, StorageError> {
    refresh_due_leased(state, None).await
}

async fn refresh_due_leased(
    state: &Context,
    job_owner: Option<&str>,
) -> Result<SweepReport, StorageError> {
    let need = Need::due_now(state);
    let Need::Due {
        expiring_before,
        idle_before,
    } = need
    else {
        return Ok(SweepReport::default());
    };
    let mut report = SweepReport::default();
    let mut after = 0i64;
    let concurrency = state.settings.refresh_concurrency.max(1);
    let page_size = i64::try_from((concurrency * PAGE_PER_WORKER).clamp(100, 2000)).unwrap_or(1000);
    loop {
        let page = state
            .db
            .connections()
            .due_for_refresh(expiring_before, idle_before, after, page_size)
            .await?;
        let Some(&(last_id, _)) = page.last() else {
            break;
        };
        after = last_id;
        report.due += page.len() as u64;
        // Counted as they end: a page's connection rows are not all kept until the page is done.
        report = futures_util::stream::iter(page.into_iter().map(|(_, seller)| async move {
            let outcome = refresh(state, &seller, need).await;
            if let Ok(RefreshOutcome::Refreshed(conn)) = &outcome {
                // Once a day per connection (with its refresh), make sure amoCRM has not disabled
                // our webhook subscription after a run of failed deliveries.
                check_subscription(state, conn).await;
            }
            outcome
        }))
        .buffer_unordered(concurrency)
        .fold(report, |mut report, outcome| async move {
            match outcome {
                Ok(RefreshOutcome::Refreshed(_)) => report.refreshed += 1,
                Ok(RefreshOutcome::Fresh(_))
                | Err(RefreshError::Busy(_))
                | Err(RefreshError::NeedsReconnect(_))
                | Err(RefreshError::NotConnected) => report.skipped += 1,
                Err(RefreshError::Storage(e)) => {
                    tracing::warn!(error = %e, "refresh hit a database error");
                    report.failed += 1;
                }
                Err(_) => report.failed += 1,
            }
            report
        })
        .await;
        if let Some(owner) = job_owner {
            let ttl = chrono_dur(sweep_lease_ttl(state));
            state.db.leases().extend(SWEEP_JOB, owner, ttl).await?;
        }
    }
    Ok(report)
}
