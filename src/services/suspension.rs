//! Unpaid (402) and blocked (403) accounts (CONTRACT §11, `docs/amocrm-api.md` §13.2).
//!
//! The first call amoCRM refuses this way suspends the connection: `suspended` with its reason and
//! `connection.suspended`, in one transaction, once. From then on nothing is sent to the account — the push,
//! stage moves, provisioning and the refresh sweep all pass over connections that are not active, and the
//! seller's orders are held as for a connection that needs reconnecting — except a probe
//! (`GET /api/v4/account`): at most once per `SUSPENDED_PROBE_INTERVAL` from the refresh worker, and at once
//! when the marketplace asks for a refresh. When amoCRM answers the probe, the connection is `active` again
//! with `connection.recovered`, and the push releases the held orders by itself. More calls to a blocked
//! account make its block worse, so the probe's time is claimed in the database: instances sharing it probe
//! once per interval between them.

use amocrm_client::ApiError;

use super::health::{self, Outcome};
use super::tokens::{self, Calling, TokenError};
use crate::domain::events::{ConnectionRecovered, ConnectionSuspended};
use crate::domain::status::{ConnectionStatus, SuspendReason};
use crate::services::Context;
use crate::storage::connections::Connection;
use crate::storage::events::NewEvent;
use crate::storage::{self, StorageError};

/// Suspended connections probed per worker step at most.
const PROBES_PER_STEP: i64 = 50;

fn next_probe(state: &Context) -> chrono::NaiveDateTime {
    storage::now()
        + chrono::Duration::from_std(state.settings.suspended_probe_interval)
            .unwrap_or(chrono::Duration::hours(1))
}

/// Suspends an active connection for `reason` (with its event); false when it was not active.
#[tracing::instrument(skip_all, fields(seller_id = %conn.seller_id, account_id = conn.account_id))]
pub async fn suspend(
    state: &Context,
    conn: &Connection,
    reason: SuspendReason,
) -> Result<bool, StorageError> {
    let event = NewEvent::of(
        &conn.seller_id,
        &ConnectionSuspended {
            seller_id: conn.seller_id.clone(),
            account_id: conn.account_id,
            reason,
        },
        None,
    );
    let suspended = state
        .db
        .connections()
        .suspend(conn.id, reason, next_probe(state), &event)
        .await?;
    if suspended {
        tracing::warn!(
            %reason,
            "amoCRM refuses the account: connection suspended, its orders held"
        );
    }
    Ok(suspended)
}

/// How one probe ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The connection is not suspended (any more): nothing was sent.
    NotSuspended,
    /// Another probe ran within the interval: nothing was sent.
    NotDue,
    /// amoCRM answered: the connection is active again.
    Recovered,
    /// amoCRM still refuses the account.
    StillSuspended(SuspendReason),
    /// The probe could not tell (amoCRM unreachable, the token refused): tried again at the next interval.
    Inconclusive(String),
}

/// Probes the seller's suspended connection with `GET /api/v4/account`: when its time is due, or at once
/// with `now` (a refresh the marketplace asked for). The next probe's time is claimed before the call.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn probe(state: &Context, seller_id: &str, now: bool) -> Result<Probe, StorageError> {
    let Some(row) = state.db.connections().by_seller(seller_id).await? else {
        return Ok(Probe::NotSuspended);
    };
    if row.status != ConnectionStatus::Suspended {
        return Ok(Probe::NotSuspended);
    }
    let repo = state.db.connections();
    if !repo.claim_probe(row.id, now, next_probe(state)).await? {
        return Ok(Probe::NotDue);
    }
    let how = Calling {
        probe: true,
        ..Calling::default()
    };
    let answer = tokens::with_api_as(state, seller_id, how, |amo| async move {
        amo.api().account().await
    })
    .await;
    let still = |reason: SuspendReason| async move {
        repo.set_suspend_reason(row.id, reason).await?;
        Ok::<_, StorageError>(Probe::StillSuspended(reason))
    };
    match answer {
        Ok(_) => recover(state, &row).await,
        Err(TokenError::Api(ApiError::PaymentRequired)) => {
            still(SuspendReason::PaymentRequired).await
        }
        Err(TokenError::Api(ApiError::Forbidden { .. })) => still(SuspendReason::Blocked).await,
        Err(TokenError::NeedsReconnect(ConnectionStatus::Suspended)) => {
            let reason = row.suspended_reason.unwrap_or(SuspendReason::Blocked);
            Ok(Probe::StillSuspended(reason))
        }
        Err(TokenError::Storage(e)) => Err(e),
        Err(e) => {
            tracing::info!(error = %e, "probe of a suspended connection inconclusive");
            Ok(Probe::Inconclusive(e.to_string()))
        }
    }
}

/// amoCRM answered the probe: back to `active` with `connection.recovered`.
async fn recover(state: &Context, row: &Connection) -> Result<Probe, StorageError> {
    let event = NewEvent::of(
        &row.seller_id,
        &ConnectionRecovered {
            seller_id: row.seller_id.clone(),
            account_id: row.account_id,
        },
        None,
    );
    if state.db.connections().recover(row.id, &event).await? {
        tracing::info!("amoCRM answers the account again: connection active");
        health::record(state, row.id, Outcome::Ok).await;
        Ok(Probe::Recovered)
    } else {
        Ok(Probe::NotSuspended)
    }
}

/// What one worker step of probing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeReport {
    /// Probes sent to amoCRM.
    pub probed: usize,
    pub recovered: usize,
}

/// Probes every suspended connection whose next probe is due (the refresh worker's step).
#[tracing::instrument(name = "probe_step", skip_all)]
pub async fn probe_due(state: &Context) -> Result<ProbeReport, StorageError> {
    let mut report = ProbeReport::default();
    for seller in state.db.connections().probes_due(PROBES_PER_STEP).await? {
        match probe(state, &seller, false).await? {
            Probe::NotSuspended | Probe::NotDue => {}
            Probe::Recovered => {
                report.probed += 1;
                report.recovered += 1;
            }
            Probe::StillSuspended(_) | Probe::Inconclusive(_) => report.probed += 1,
        }
    }
    Ok(report)
}
