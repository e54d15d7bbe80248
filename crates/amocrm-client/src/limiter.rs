//! The per-account request budget: at most N requests in any sliding window, waited for asynchronously.
//!
//! amoCRM (and the sandbox) count requests in a strict sliding second per account, on arrival, so a token
//! bucket or GCRA (which allows a burst plus a steady rate) would overshoot. This is a sliding log of at most
//! N slots per account. A slot is taken when a request may start and is counted until one window after the
//! request was *answered* (its [`Permit`] dropped): the answer comes after the arrival amoCRM counted, so a slot
//! that frees one window later can never put two arrivals in one window, however long the request took to get
//! there (a busy machine, a slow network). Each account has its own FIFO-fair async mutex, so waiters are served
//! in arrival order and one account never blocks another.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, Notify};
use tokio::time::Instant;

use crate::host::AccountHost;

/// Default window: one second (counted from the answer) plus 10 ms for timer granularity.
pub const DEFAULT_WINDOW: Duration = Duration::from_millis(1010);

/// Shared per-account sliding-log limiter; cheap to clone (all clones share the same budgets).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    window: Duration,
    accounts: StdMutex<HashMap<String, Arc<Account>>>,
    next_id: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    /// Granted, not answered yet: counted for as long as it lasts.
    InFlight(u64),
    /// Answered at this instant: counted for one window after it.
    Done(Instant),
}

#[derive(Debug, Default)]
struct Account {
    /// First come, first served: the head of the queue holds it while it waits for a slot.
    queue: AsyncMutex<()>,
    slots: StdMutex<Vec<Slot>>,
    /// A slot was answered (the head of the queue may find a slot sooner than it planned).
    answered: Notify,
}

impl Account {
    fn slots(&self) -> MutexGuard<'_, Vec<Slot>> {
        // A poisoned lock only means a thread panicked while holding it; the slots stay consistent.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One granted slot: keep it until the request is answered (or given up), then drop it.
#[derive(Debug)]
#[must_use = "the slot is counted from when the permit is dropped: hold it until the answer"]
pub struct Permit {
    account: Arc<Account>,
    id: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        for slot in self.account.slots().iter_mut() {
            if matches!(slot, Slot::InFlight(id) if *id == self.id) {
                *slot = Slot::Done(now);
            }
        }
        self.account.answered.notify_one();
    }
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
                next_id: AtomicU64::new(0),
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
    pub async fn acquire(&self, host: &AccountHost) -> Permit {
        self.acquire_key(host.as_str()).await
    }

    /// [`Self::acquire`] keyed by any string (the service may budget by account id instead of host).
    pub async fn acquire_key(&self, key: &str) -> Permit {
        let account = self.account(key);
        let _head_of_queue = account.queue.lock().await;
        loop {
            let answered = account.answered.notified();
            let next_free = {
                let mut slots = account.slots();
                let now = Instant::now();
                self.forget_expired(&mut slots, now);
                if slots.len() < self.inner.max {
                    let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                    slots.push(Slot::InFlight(id));
                    return Permit {
                        account: account.clone(),
                        id,
                    };
                }
                self.next_free(&slots)
            };
            match next_free {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = answered => {}
                    }
                }
                None => answered.await,
            }
        }
    }

    fn forget_expired(&self, slots: &mut Vec<Slot>, now: Instant) {
        let window = self.inner.window;
        slots.retain(|s| match s {
            Slot::InFlight(_) => true,
            Slot::Done(at) => now.duration_since(*at) < window,
        });
    }

    /// When the oldest answered slot leaves the window (`None`: every slot is still in flight).
    fn next_free(&self, slots: &[Slot]) -> Option<Instant> {
        slots
            .iter()
            .filter_map(|s| match s {
                Slot::Done(at) => Some(*at + self.inner.window),
                Slot::InFlight(_) => None,
            })
            .min()
    }

    /// Whether `key` is in use: a caller is waiting for a slot, a request is in flight, or the last answer is
    /// younger than `within`.
    pub fn busy(&self, key: &str, within: Duration) -> bool {
        let known = self.accounts().get(key).cloned();
        let Some(account) = known else { return false };
        if account.queue.try_lock().is_err() {
            return true;
        }
        let now = Instant::now();
        account.slots().iter().any(|s| match s {
            Slot::InFlight(_) => true,
            Slot::Done(at) => now.duration_since(*at) < within,
        })
    }

    /// Forgets accounts with nothing in their window, so the map does not grow without bound.
    pub fn retain_recent(&self) {
        let now = Instant::now();
        let mut map = self.accounts();
        map.retain(|_, account| {
            if account.queue.try_lock().is_err() {
                return true;
            }
            let mut slots = account.slots();
            self.forget_expired(&mut slots, now);
            !slots.is_empty()
        });
    }

    fn accounts(&self) -> MutexGuard<'_, HashMap<String, Arc<Account>>> {
        // A poisoned map only means another thread panicked mid-insert; the map itself is still consistent.
        self.inner
            .accounts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn account(&self, key: &str) -> Arc<Account> {
        self.accounts().entry(key.to_owned()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
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
                drop(l.acquire(&h).await);
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
        // 30 grants at 7 per window: the last batch starts after 4 full windows.
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
            drop(limiter.acquire(&busy).await);
        }
        let l = limiter.clone();
        let b = busy.clone();
        let waiting = tokio::spawn(async move { l.acquire(&b).await });
        let started = Instant::now();
        drop(limiter.acquire(&other).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(limiter.busy(busy.as_str(), DEFAULT_WINDOW));
        drop(waiting.await.unwrap());
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
                drop(l.acquire(&h).await);
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
        drop(limiter.acquire(&h).await);
        let timed_out = tokio::time::timeout(Duration::from_millis(100), limiter.acquire(&h)).await;
        assert!(timed_out.is_err());
        let started = Instant::now();
        drop(limiter.acquire(&h).await);
        // Only the first grant counts: the slot frees one window after it, not after the cancelled wait.
        assert_eq!(started.elapsed(), Duration::from_millis(900));
        limiter.retain_recent();
        assert!(!limiter.busy("idle.amocrm.ru", DEFAULT_WINDOW));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_counts_until_one_window_after_its_answer() {
        let limiter = RateLimiter::with_window(2, Duration::from_secs(1));
        let h = host("slow.amocrm.ru");
        let slow = limiter.acquire(&h).await;
        drop(limiter.acquire(&h).await);
        let started = Instant::now();
        let l = limiter.clone();
        let hh = h.clone();
        let third = tokio::spawn(async move {
            drop(l.acquire(&hh).await);
            Instant::now()
        });
        // The quick one frees its slot one window after its answer.
        assert_eq!(
            third.await.unwrap().duration_since(started),
            Duration::from_secs(1)
        );
        assert!(
            limiter.busy(h.as_str(), Duration::ZERO),
            "a request is in flight"
        );
        // The slow request is still in flight five seconds later: its slot is still taken, and with one
        // more request in flight none is left.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let other = limiter.acquire(&h).await;
        let l = limiter.clone();
        let hh = h.clone();
        let fourth = tokio::spawn(async move {
            drop(l.acquire(&hh).await);
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !fourth.is_finished(),
            "no slot while the slow request is unanswered"
        );
        let answered = Instant::now();
        drop(slow);
        assert_eq!(
            fourth.await.unwrap().duration_since(answered),
            Duration::from_secs(1)
        );
        drop(other);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!limiter.busy(h.as_str(), Duration::from_secs(1)));
    }
}
