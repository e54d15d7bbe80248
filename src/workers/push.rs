//! The order push worker: `run_once` is one step of [`crate::services::order_push`]; `spawn` loops it
//! until shutdown, resting until the next order or move is due when there is nothing to do.

use std::time::Duration;

use std::sync::Arc;
use tokio::task::JoinHandle;

use crate::services::Context;
use crate::services::order_push::{self, StepReport};
use crate::storage::StorageError;

pub use crate::services::order_push::StepReport as Report;

/// Longest rest between steps while idle (new orders are picked up at least this often).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// One step: claim accounts with due work and give each a turn (see `services::order_push`).
#[tracing::instrument(name = "push_worker_step", skip_all)]
pub async fn run_once(state: &Context) -> Result<StepReport, StorageError> {
    order_push::step(state).await
}

/// How long to rest before the next step: nothing if work is due now, else until the earliest due
/// order or move (at most `max`).
pub async fn rest_time(state: &Context, max: Duration) -> Duration {
    match order_push::next_due(state).await {
        Ok(Some(t)) => {
            let now = crate::storage::now();
            (t - now).to_std().unwrap_or(Duration::ZERO).min(max)
        }
        _ => max,
    }
}

/// Runs steps until no order is queued and no move is pending, or `max_steps` steps have run; rests only
/// until the next due time when a step found nothing to do. Used by tests, the benchmark and `demo`.
/// Returns the summed report and whether the queue was drained.
pub async fn drain(state: &Context, max_steps: usize) -> Result<(StepReport, bool), StorageError> {
    let mut total = StepReport::default();
    for _ in 0..max_steps {
        let r = run_once(state).await?;
        total.add(&r);
        let (orders, moves) = order_push::backlog(state).await?;
        if orders == 0 && moves == 0 {
            return Ok((total, true));
        }
        if !r.did_work() {
            // Everything left is waiting for a backoff or retry_after: wait for exactly that moment.
            let rest = rest_time(state, Duration::from_secs(5)).await;
            tokio::time::sleep(rest.max(Duration::from_millis(5))).await;
        }
    }
    Ok((total, false))
}

/// The background loop of `serve`.
pub fn spawn(state: Arc<Context>) -> JoinHandle<()> {
    let step = |state: Arc<Context>| async move {
        match run_once(&state).await {
            Ok(r) => {
                if r.did_work() {
                    tracing::debug!(?r, "order push step");
                }
                r.did_work()
            }
            Err(e) => {
                tracing::error!(error = %e, "order push step failed");
                false
            }
        }
    };
    // Work that is due but leased by another instance is retried after a short pause.
    let rest = |state: Arc<Context>, idle: Duration| async move {
        rest_time(&state, idle).await.max(Duration::from_millis(20))
    };
    let wake = (IDLE_POLL, order_push::new_work_signal());
    super::woken(state, wake, step, rest)
}
