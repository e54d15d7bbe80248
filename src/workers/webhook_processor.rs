//! The webhook processor: leases stored amoCRM bodies (one per connection at a time) and turns them into
//! events through [`crate::services::lead_events`]. Failures that amoCRM or the seller can fix are retried
//! with capped backoff; after [`MAX_ATTEMPTS`] the body is `failed` (visible, re-queueable).

use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta};
use std::sync::Arc;
use tokio::task::JoinHandle;

use crate::services::Context;
use crate::services::ingest;
use crate::services::lead_events::{self, ProcessError};
use crate::storage::{self, StorageError, inbox};

/// Bodies (of different connections) processed at once.
pub const BATCH: i64 = 16;
/// Attempts before a body is given up (about a day with the backoff below).
pub const MAX_ATTEMPTS: i32 = 100;
/// Long enough for a body with many leads read back at 7 requests a second.
const LEASE: TimeDelta = TimeDelta::minutes(5);
const IDLE_POLL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub claimed: usize,
    pub processed: usize,
    pub retrying: usize,
    pub failed: usize,
    pub events_recorded: usize,
}

/// Wait before attempt `attempts + 1`: 5 s doubling to 15 min; a seller who must reconnect is asked less
/// often.
fn backoff(attempts: i32, needs_seller: bool) -> TimeDelta {
    if needs_seller {
        return TimeDelta::minutes(30);
    }
    let exp = u32::try_from(attempts.clamp(0, 12)).unwrap_or(12);
    TimeDelta::seconds((5i64 << exp).min(15 * 60))
}

pub async fn run_once(state: &Context) -> Result<Report, StorageError> {
    run_once_at(state, storage::now()).await
}

/// One step with the clock at `now`: claims due bodies and processes them concurrently.
#[tracing::instrument(name = "webhook_step", skip_all)]
pub async fn run_once_at(state: &Context, now: NaiveDateTime) -> Result<Report, StorageError> {
    let owner = state.settings.instance_id.clone();
    let rows = state
        .db
        .inbox()
        .claim_due(&owner, now, now + LEASE, BATCH)
        .await?;
    let mut report = Report {
        claimed: rows.len(),
        ..Report::default()
    };
    let results = futures_util::future::join_all(rows.iter().map(|row| {
        let owner = owner.clone();
        async move {
            let result = lead_events::process_body(state, row).await;
            settle(state, row, &owner, result, now).await
        }
    }))
    .await;
    for done in results {
        let (kind, events) = done?;
        report.events_recorded += events;
        match kind {
            Settled::Processed => report.processed += 1,
            Settled::Retrying => report.retrying += 1,
            Settled::Failed => report.failed += 1,
        }
    }
    Ok(report)
}

enum Settled {
    Processed,
    Retrying,
    Failed,
}

#[tracing::instrument(skip_all, fields(seller_id = %row.seller_id, inbox_id = row.id))]
async fn settle(
    state: &Context,
    row: &inbox::InboxRow,
    owner: &str,
    result: Result<lead_events::BodyOutcome, ProcessError>,
    now: NaiveDateTime,
) -> Result<(Settled, usize), StorageError> {
    let id = row.id;
    match result {
        Ok(outcome) => {
            state
                .db
                .inbox()
                .mark_processed(id, owner, outcome.note.clone(), now)
                .await?;
            Ok((Settled::Processed, outcome.events_recorded))
        }
        Err(ProcessError::Storage(e)) => Err(e),
        Err(e) => {
            let give_up = matches!(e, ProcessError::Fatal(_)) || row.attempts + 1 >= MAX_ATTEMPTS;
            let mut wait = backoff(row.attempts, matches!(e, ProcessError::NeedsReconnect(_)));
            if let ProcessError::RateLimited(told) = &e {
                // amoCRM said when: never sooner (the client bounds it by `MAX_RETRY_AFTER`).
                let told = (*told).min(amocrm_client::error::MAX_RETRY_AFTER);
                wait = wait.max(TimeDelta::from_std(told).unwrap_or(TimeDelta::hours(1)));
            }
            let retry_at = (!give_up).then(|| now + wait);
            let error = e.to_string();
            tracing::warn!(error = %error, give_up, "webhook body not processed");
            state
                .db
                .inbox()
                .mark_failed_attempt(id, owner, error, retry_at, now)
                .await?;
            Ok((
                if give_up {
                    Settled::Failed
                } else {
                    Settled::Retrying
                },
                0,
            ))
        }
    }
}

/// Runs until shutdown: processes bodies as they arrive (woken by the intake), polling as a fallback.
pub fn spawn(state: Arc<Context>) -> JoinHandle<()> {
    let step = |state: Arc<Context>| async move {
        match run_once(&state).await {
            Ok(r) => r.claimed > 0,
            Err(e) => {
                tracing::warn!(error = %e, "webhook processing step failed");
                false
            }
        }
    };
    let wake = (IDLE_POLL, ingest::new_body_signal());
    super::woken(state, wake, step, |_, idle| async move { idle })
}
