//! Retention: events (with their deliveries and attempts) and raw amoCRM webhook bodies older than
//! `EVENT_RETENTION` are deleted, in small batches so no transaction holds the database for long.

use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta};
use std::sync::Arc;
use tokio::task::JoinHandle;

use crate::services::Context;
use crate::storage::{self, StorageError};

/// Rows deleted per statement.
const BATCH: i64 = 1000;
/// How often the loop prunes.
const EVERY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub events: usize,
    pub webhook_bodies: usize,
}

pub async fn run_once(state: &Context) -> Result<Report, StorageError> {
    run_once_at(state, storage::now()).await
}

/// Prunes everything older than the retention period as seen at `now`. Webhook bodies still waiting to
/// be processed are kept whatever their age.
#[tracing::instrument(name = "retention_step", skip_all)]
pub async fn run_once_at(state: &Context, now: NaiveDateTime) -> Result<Report, StorageError> {
    let keep = TimeDelta::from_std(state.settings.event_retention).unwrap_or(TimeDelta::MAX);
    let cutoff = now.checked_sub_signed(keep).unwrap_or(NaiveDateTime::MIN);
    let mut report = Report::default();
    loop {
        let n = state.db.events().prune(cutoff, BATCH).await?;
        report.events += n;
        if n < BATCH as usize {
            break;
        }
    }
    loop {
        let n = state.db.inbox().prune(cutoff, BATCH).await?;
        report.webhook_bodies += n;
        if n < BATCH as usize {
            break;
        }
    }
    if report != Report::default() {
        tracing::info!(
            events = report.events,
            webhook_bodies = report.webhook_bodies,
            "pruned old records"
        );
    }
    Ok(report)
}

/// Prunes once at start, then hourly, until shutdown.
pub fn spawn(state: Arc<Context>) -> JoinHandle<()> {
    super::every(state, EVERY, "retention step", |state| async move {
        run_once(&state).await
    })
}
