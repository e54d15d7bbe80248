//! The connect/refresh worker: the cron schedule of the refresh sweep (`REFRESH_SCHEDULE`), and a loop that
//! retries unfinished provisioning with back-off, probes suspended connections when their probe is due
//! (`SUSPENDED_PROBE_INTERVAL`) and prunes old connect sessions.

use std::time::Duration;

use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::services::Context;
use crate::services::{connect, provisioning, refresh, suspension};
use crate::storage::StorageError;

/// How often the loop looks for provisioning to retry.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub provisioning_attempted: usize,
    pub sessions_pruned: usize,
    /// Probes of suspended connections sent to amoCRM, and how many found the account answering again.
    pub probes: suspension::ProbeReport,
}

/// One step: retries due provisioning, probes due suspended connections, prunes expired connect sessions.
#[tracing::instrument(name = "connect_worker_step", skip_all)]
pub async fn run_once(state: &Context) -> Result<Report, StorageError> {
    let provisioning_attempted = provisioning::retry_due(state).await?;
    let probes = suspension::probe_due(state).await?;
    let sessions_pruned = connect::prune_sessions(state).await?;
    Ok(Report {
        provisioning_attempted,
        sessions_pruned,
        probes,
    })
}

/// Loops [`run_once`] every [`INTERVAL`] until shutdown.
pub fn spawn(state: Arc<Context>) -> JoinHandle<()> {
    super::every(state, INTERVAL, "connect worker step", |state| async move {
        run_once(&state).await
    })
}

/// Starts the in-process refresh schedule (`REFRESH_SCHEDULE`, cron with seconds, UTC) when configured. Every
/// instance runs the schedule; the sweep's job lease makes only one of them sweep at a time.
pub fn spawn_schedule(state: Arc<Context>) -> Option<JoinHandle<()>> {
    let schedule = state.settings.refresh_schedule.clone()?;
    Some(tokio::spawn(async move {
        let mut scheduler = match JobScheduler::new().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "refresh scheduler could not start");
                return;
            }
        };
        let job_state = state.clone();
        let job = Job::new_async(schedule.as_str(), move |_id, _lock| {
            let state = job_state.clone();
            Box::pin(async move {
                // A sweep already running elsewhere is enough: do not wait for it.
                match refresh::sweep(&state, Duration::ZERO).await {
                    Ok(outcome) => tracing::debug!(?outcome, "scheduled refresh sweep"),
                    Err(e) => tracing::warn!(error = %e, "scheduled refresh sweep failed"),
                }
            })
        });
        let added = match job {
            Ok(job) => scheduler.add(job).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = added {
            tracing::error!(error = %e, "refresh schedule could not be added");
            return;
        }
        if let Err(e) = scheduler.start().await {
            tracing::error!(error = %e, "refresh scheduler could not start");
            return;
        }
        tracing::info!(%schedule, "refresh schedule running");
        let mut shutdown = state.shutdown.clone();
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        let _ = scheduler.shutdown().await;
    }))
}
