//! Background workers, each a `run_once` step plus a loop, so tests drive them step by step.

// connect and refresh
pub mod refresh;

// orders
pub mod push;

// events
pub mod delivery;
pub mod retention;
pub mod webhook_processor;

// operations

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::services::Context;
use crate::storage::StorageError;

/// The fallback poll of an idle worker. Work made in this process wakes its worker by signal, so the poll
/// only finds other instances' work and retries coming due: it doubles from `min` to `max` while it finds
/// nothing, which keeps an idle service from waking a dozen times a second, and starts at `min` again once
/// work is found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdlePoll {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl IdlePoll {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next: min,
        }
    }

    /// Work was found: the next idle wait is the shortest again.
    pub(crate) fn found_work(&mut self) {
        self.next = self.min;
    }

    /// How long to wait now; the wait after it is twice as long, up to `max`.
    pub(crate) fn wait(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }
}

/// The longest fallback poll of an idle worker.
pub(crate) const IDLE_POLL_MAX: Duration = Duration::from_secs(2);

/// Runs `step` at once and then every `every` until shutdown; a failed step is logged as `what` and the
/// loop goes on, since the next step retries whatever this one left.
pub(crate) fn every<F, Fut, T>(
    state: Arc<Context>,
    every: Duration,
    what: &'static str,
    step: F,
) -> JoinHandle<()>
where
    F: Fn(Arc<Context>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, StorageError>> + Send,
    T: Send,
{
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let Err(e) = step(state.clone()).await {
                tracing::warn!(error = %e, "{what} failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
        }
    })
}

/// Runs `step` until shutdown: again at once while it finds work (it returns true); otherwise it waits until
/// `wake` is notified (work made in this process) or `rest` has passed. `rest` gets the idle poll's
/// wait and may shorten it, for work already due elsewhere.
pub(crate) fn woken<S, SF, R, RF>(
    state: Arc<Context>,
    (min, wake): (Duration, &'static tokio::sync::Notify),
    step: S,
    rest: R,
) -> JoinHandle<()>
where
    S: Fn(Arc<Context>) -> SF + Send + 'static,
    SF: Future<Output = bool> + Send,
    R: Fn(Arc<Context>, Duration) -> RF + Send + 'static,
    RF: Future<Output = Duration> + Send,
{
    tokio::spawn(async move {
        let mut shutdown = state.shutdown.clone();
        let mut idle = IdlePoll::new(min, IDLE_POLL_MAX);
        loop {
            if *shutdown.borrow() {
                break;
            }
            if step(state.clone()).await {
                idle.found_work();
                continue;
            }
            let rest = rest(state.clone(), idle.wait()).await;
            tokio::select! {
                _ = tokio::time::sleep(rest) => {}
                _ = wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_poll_doubles_to_its_cap_and_starts_over_after_work() {
        let mut p = IdlePoll::new(Duration::from_millis(250), Duration::from_secs(2));
        let waits: Vec<u64> = (0..6).map(|_| p.wait().as_millis() as u64).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 2000, 2000]);
        p.found_work();
        assert_eq!(p.wait(), Duration::from_millis(250));
    }
}
