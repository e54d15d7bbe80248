//! Whose turn it is to call an amoCRM account, across every instance on one database.
//!
//! Each instance's limiter keeps an account at `AMOCRM_RATE_LIMIT_RPS` for its own calls only; two instances
//! calling one account at once (a push here, a webhook read-back there, a refresh on a third) would spend the
//! budget twice and get 429s, and amoCRM blocks the IP after repeated violations. So every call first waits for
//! the account's turn: a lease of [`LEASE`] in `amocrm_account_turns`, renewed while in use.
//!
//! Hand-over safety: a holder stops calling [`MARGIN`] before its lease ends, and the next holder starts only
//! after it ends, so the previous holder's last calls are more than one limiter window old (plus clock skew
//! between instances) when the next one starts. A restarted instance first cools its old turns the same way
//! ([`crate::storage::instance::release_all`]). A holder that has had a turn for [`MAX_TURN`] while another
//! instance waits stops renewing it, so a long push never starves another instance's token refresh.
//!
//! One instance, the common case, takes each turn once and renews it with one small `UPDATE` every
//! [`RENEW_EVERY`] while it keeps calling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amocrm_client::{AccountGate, Admission, RateLimiter};
use chrono::TimeDelta;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use crate::storage::turns::{self, Turn};
use crate::storage::{self, Db};

/// How long a taken or renewed turn lasts in the database.
pub const LEASE: Duration = Duration::from_secs(4);
/// How long before the lease ends its holder stops calling ([`turns::MARGIN_MS`]).
pub const MARGIN: Duration = Duration::from_millis(turns::MARGIN_MS.unsigned_abs());
/// A holder renews once this much of its usable time has passed.
pub const RENEW_EVERY: Duration = Duration::from_millis(1250);
/// How long a holder keeps a turn another instance is waiting for.
pub const MAX_TURN: Duration = Duration::from_secs(10);
/// A turn nobody here has asked for this long is shortened to [`MARGIN`] from now, so another instance
/// waits that long for it instead of the rest of the lease (this instance may still renew it meanwhile).
pub const IDLE_RELEASE: Duration = Duration::from_millis(500);
/// How often the keeper renews turns in demand and shortens idle ones.
pub const TEND_EVERY: Duration = Duration::from_millis(250);
/// How often a waiter asks again while the turn is someone else's.
const POLL: Duration = Duration::from_millis(400);
/// Extra wait of a holder that gave a turn up, so the waiter it yielded to takes it first.
const YIELD_GRACE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Held {
    /// Calls may start until then (the lease's end minus [`MARGIN`]).
    usable_until: Instant,
    /// From then on the next call renews first.
    renew_at: Instant,
    /// When a caller here last asked for the turn.
    asked_at: Instant,
}

impl Held {
    /// Whether a call may start now without renewing first.
    fn callable(&self, now: Instant) -> bool {
        now < self.usable_until && now < self.renew_at
    }
}

/// The database-backed [`AccountGate`] the service installs on its amoCRM client.
pub struct DbGate {
    db: Db,
    owner: String,
    held: Mutex<HashMap<String, Held>>,
    /// This process's limiter: callers queued in it still want the turn.
    limiter: RateLimiter,
    /// One database conversation per account at a time from this process; other callers queue behind it.
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl std::fmt::Debug for DbGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbGate")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl DbGate {
    pub fn new(db: Db, owner: impl Into<String>, limiter: RateLimiter) -> Self {
        Self {
            db,
            owner: owner.into(),
            limiter,
            held: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The turns held here (a poisoned lock still holds valid entries: each update is one map write).
    fn held_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn held(&self, key: &str) -> Option<Held> {
        self.held_map().get(key).copied()
    }

    fn set_held(&self, key: &str, held: Option<Held>) {
        let mut map = self.held_map();
        match held {
            Some(h) => {
                map.insert(key.to_owned(), h);
            }
            None => {
                map.remove(key);
            }
        }
    }

    fn lock_for(&self, key: &str) -> Arc<AsyncMutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// Waits until this instance holds the turn on `key` with time left to call.
    pub async fn admit_key(&self, key: &str) {
        if self.touch(key) {
            return;
        }
        let lock = self.lock_for(key);
        let _one_at_a_time = lock.lock().await;
        loop {
            if self.usable_now(key) {
                return;
            }
            match self.ask(key).await {
                Ok(None) => return,
                Ok(Some((until, was_ours))) => {
                    let left = (until - storage::now()).to_std().unwrap_or_default();
                    let extra = if was_ours { YIELD_GRACE } else { jitter() };
                    // Asked again at least every POLL: an idle holder shortens its lease.
                    tokio::time::sleep(left.min(POLL) + extra).await;
                }
                Err(e) => {
                    // Without the database nothing else works either; the limiter still holds this
                    // instance to the budget, and a 429 is honoured where it comes back.
                    tracing::warn!(error = %e, "amoCRM account turn unavailable; calling without it");
                    return;
                }
            }
        }
    }

    /// Takes or renews the turn (the caller holds the account's lock). `None`: ours, with time left to
    /// call; else until when someone else holds it, and whether we gave it up ourselves.
    async fn ask(
        &self,
        key: &str,
    ) -> Result<Option<(chrono::NaiveDateTime, bool)>, storage::StorageError> {
        let started = Instant::now();
        let now = storage::now();
        let until = now + delta(LEASE);
        let asked = self
            .db
            .turns()
            .take(key, &self.owner, now, until, delta(MAX_TURN))
            .await?;
        let held = self.held(key);
        match asked {
            Turn::Taken | Turn::Renewed => {
                self.set_held(
                    key,
                    Some(Held {
                        usable_until: started + LEASE - MARGIN,
                        renew_at: started + RENEW_EVERY,
                        asked_at: held.map_or_else(Instant::now, |h| h.asked_at),
                    }),
                );
                Ok(None)
            }
            // Giving the turn up for a waiter: what is left of our lease is still ours to use.
            Turn::Busy { .. } if held.is_some_and(|h| Instant::now() < h.usable_until) => {
                if let Some(h) = held {
                    self.set_held(
                        key,
                        Some(Held {
                            renew_at: h.usable_until,
                            ..h
                        }),
                    );
                }
                Ok(None)
            }
            Turn::Busy { until, was_ours } => {
                self.set_held(key, None);
                Ok(Some((until, was_ours)))
            }
        }
    }

    /// Notes that a caller here wants the turn; true when it may call right away (one lock, the hot path).
    fn touch(&self, key: &str) -> bool {
        let now = Instant::now();
        self.held_map().get_mut(key).is_some_and(|h| {
            h.asked_at = now;
            h.callable(now)
        })
    }

    /// Looks after the turns this instance holds: renews those still in demand (callers queued in the
    /// limiter or a call started within [`IDLE_RELEASE`]), so callers already waiting for a slot never find
    /// the turn gone; shortens the idle ones so another instance need not wait out the lease. Each under the
    /// account's lock, so no caller of this process takes or renews it meanwhile.
    pub async fn tend(&self) {
        let keys: Vec<String> = self.held_map().keys().cloned().collect();
        for key in keys {
            let lock = self.lock_for(&key);
            let Ok(_one_at_a_time) = lock.try_lock() else {
                continue; // a caller is asking for it right now
            };
            let Some(h) = self.held(&key) else { continue };
            let now = Instant::now();
            if now >= h.usable_until {
                self.set_held(&key, None); // ran out by itself
                continue;
            }
            let wanted = now.duration_since(h.asked_at) < IDLE_RELEASE
                || self.limiter.busy(&key, IDLE_RELEASE);
            if wanted {
                if now >= h.renew_at
                    && let Err(e) = self.ask(&key).await
                {
                    tracing::warn!(error = %e, "could not renew an amoCRM account turn");
                }
                continue;
            }
            self.set_held(&key, None);
            let cool_until = storage::now() + delta(MARGIN);
            if let Err(e) = self.db.turns().shorten(&key, &self.owner, cool_until).await {
                tracing::warn!(error = %e, "could not shorten an idle amoCRM account turn");
            }
        }
    }

    /// Forgets accounts nobody here has called lately (their locks and limiter logs), so a long-running
    /// instance serving many sellers does not keep one entry per account it ever called.
    pub fn prune(&self) {
        self.limiter.retain_recent();
        let held: std::collections::HashSet<String> = self.held_map().keys().cloned().collect();
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|key, lock| Arc::strong_count(lock) > 1 || held.contains(key));
    }

    /// Runs [`Self::tend`] every [`TEND_EVERY`], and [`Self::prune`] every minute, for as long as the gate
    /// is in use.
    pub fn spawn_keeper(gate: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(gate);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TEND_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_prune = Instant::now();
            loop {
                tick.tick().await;
                let Some(gate) = weak.upgrade() else { return };
                gate.tend().await;
                if last_prune.elapsed() >= Duration::from_secs(60) {
                    gate.prune();
                    last_prune = Instant::now();
                }
            }
        })
    }

    fn usable_now(&self, key: &str) -> bool {
        self.held(key).is_some_and(|h| h.callable(Instant::now()))
    }
}

impl AccountGate for DbGate {
    fn admit<'a>(&'a self, key: &'a str) -> Admission<'a> {
        Box::pin(self.admit_key(key))
    }

    fn holds(&self, key: &str) -> bool {
        self.held(key)
            .is_some_and(|h| Instant::now() < h.usable_until)
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// 10–60 ms, so instances waiting for one turn do not all ask at the same instant.
fn jitter() -> Duration {
    Duration::from_millis(rand::random_range(10..60))
}
