//! The per-account request budget: at most N requests in any sliding window, waited for asynchronously.
//!
//! amoCRM (and the sandbox) count requests in a strict sliding second per account, so a token bucket or GCRA
//! (which allows a burst plus a steady rate) would overshoot. This is a sliding log: each account keeps the start
//! times of its last N grants, and a new grant waits until the oldest is one window old. The window is slightly
//! longer than a second to absorb the time between our grant and the request's arrival. Each account has its own
//! FIFO-fair async mutex, so waiters are served in arrival order and one account never blocks another.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use crate::host::AccountHost;

/// Default window: one second plus a 2 % margin for the trip from grant to server.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(1020);

/// Shared per-account sliding-log limiter; cheap to clone (all clones share the same budgets).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    window: Duration,
    accounts: StdMutex<HashMap<String, Arc<AsyncMutex<VecDeque<Instant>>>>>,
}

impl RateLimiter {
    /// At most `per_second` requests per account in any [`DEFAULT_WINDOW`]; `0` is treated as 1.
    pub fn new(per_second: u32) -> Self {
        Self::with_window(per_second, DEFAULT_WINDOW)
    }

    /// At most `max` requests per account in any `window`.
    pub fn with_window(max: u32, window: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                max: usize::try_from(max.max(1)).unwrap_or(usize::MAX),
                window,
                accounts: StdMutex::new(HashMap::new()),
            }),
        }
    }

    /// Requests allowed per window.
    pub fn max_per_window(&self) -> u32 {
        u32::try_from(self.inner.max).unwrap_or(u32::MAX)
    }

    /// The sliding window length.
    pub fn window(&self) -> Duration {
        self.inner.window
    }

    /// Waits for a slot for `host` and takes it. Waiters for one account are served first come, first served;
    /// a cancelled wait takes no slot.
    pub async fn acquire(&self, host: &AccountHost) {
        self.acquire_key(host.as_str()).await;
    }

    /// [`Self::acquire`] keyed by any string (the service may budget by account id instead of host).
    pub async fn acquire_key(&self, key: &str) {
        let log = self.account(key);
        let mut log = log.lock().await;
        loop {
            let now = Instant::now();
            while log
                .front()
                .is_some_and(|t| now.duration_since(*t) >= self.inner.window)
            {
                log.pop_front();
            }
            if log.len() < self.inner.max {
                log.push_back(now);
                return;
            }
            if let Some(oldest) = log.front().copied() {
                tokio::time::sleep_until(oldest + self.inner.window).await;
            }
        }
    }

    /// How long an [`Self::acquire`] for `host` would wait right now if nobody else were queued.
    pub fn wait_time(&self, host: &AccountHost) -> Duration {
        let log = self.account(host.as_str());
        let Ok(log) = log.try_lock() else {
            // Someone is waiting or granting: at least one slot is being taken; report one window as the bound.
            return self.inner.window;
        };
        let now = Instant::now();
        let live: Vec<&Instant> = log
            .iter()
            .filter(|t| now.duration_since(**t) < self.inner.window)
            .collect();
        if live.len() < self.inner.max {
            return Duration::ZERO;
        }
        let idx = live.len() - self.inner.max;
        live.get(idx).map_or(Duration::ZERO, |t| {
            (**t + self.inner.window).saturating_duration_since(now)
        })
    }

    /// Forgets accounts with no grant inside the window, so the map does not grow without bound.
    pub fn retain_recent(&self) {
        let now = Instant::now();
        let window = self.inner.window;
        if let Ok(mut map) = self.inner.accounts.lock() {
            map.retain(|_, log| match log.try_lock() {
                Ok(log) => log.back().is_some_and(|t| now.duration_since(*t) < window),
                Err(_) => true,
            });
        }
    }

    fn account(&self, key: &str) -> Arc<AsyncMutex<VecDeque<Instant>>> {
        // A poisoned map only means another thread panicked mid-insert; the map itself is still consistent.
        let mut map = self
            .inner
            .accounts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(key.to_owned())
            .or_insert_with(|| Arc::new(AsyncMutex::new(VecDeque::with_capacity(self.inner.max))))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::host::AllowedDomains;

    fn host(s: &str) -> AccountHost {
        AccountHost::parse(s, &AllowedDomains::default()).unwrap()
    }

    /// Start times of `n` acquisitions made by `n` concurrent tasks, in grant order.
    async fn grant_times(limiter: &RateLimiter, h: &AccountHost, n: usize) -> Vec<Instant> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let l = limiter.clone();
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire(&h).await;
                Instant::now()
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out.sort();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn no_window_ever_holds_more_than_the_limit() {
        let limiter = RateLimiter::new(7);
        let h = host("a.amocrm.ru");
        let started = Instant::now();
        let times = grant_times(&limiter, &h, 30).await;
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 7,
                "{in_window} grants within one second of grant {i}"
            );
        }
        // 30 grants at 7 per 1.02 s: the last batch starts after 4 full windows.
        let elapsed = times.last().unwrap().duration_since(started);
        assert!(elapsed >= DEFAULT_WINDOW * 4, "{elapsed:?}");
        assert!(elapsed < DEFAULT_WINDOW * 5, "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_busy_account_does_not_delay_another() {
        let limiter = RateLimiter::new(2);
        let busy = host("busy.amocrm.ru");
        let other = host("other.amocrm.ru");
        for _ in 0..2 {
            limiter.acquire(&busy).await;
        }
        let l = limiter.clone();
        let b = busy.clone();
        let waiting = tokio::spawn(async move { l.acquire(&b).await });
        let started = Instant::now();
        limiter.acquire(&other).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(limiter.wait_time(&busy) > Duration::ZERO);
        waiting.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let limiter = RateLimiter::with_window(1, Duration::from_secs(1));
        let h = host("fifo.amocrm.ru");
        let order = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let l = limiter.clone();
            let h = h.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                l.acquire(&h).await;
                order.lock().unwrap().push(i);
            }));
            // Let task i reach the queue before task i+1 is spawned.
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_wait_takes_no_slot() {
        let limiter = RateLimiter::with_window(1, Duration::from_secs(1));
        let h = host("cancel.amocrm.ru");
        limiter.acquire(&h).await;
        let timed_out = tokio::time::timeout(Duration::from_millis(100), limiter.acquire(&h)).await;
        assert!(timed_out.is_err());
        let started = Instant::now();
        limiter.acquire(&h).await;
        // Only the first grant counts: the slot frees one window after it, not after the cancelled wait.
        assert_eq!(started.elapsed(), Duration::from_millis(900));
        limiter.retain_recent();
        assert_eq!(limiter.wait_time(&host("idle.amocrm.ru")), Duration::ZERO);
    }
}
