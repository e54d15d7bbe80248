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

use amocrm_client::{AccountGate, Admission};
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
/// Extra wait of a holder that gave a turn up, so the waiter it yielded to takes it first.
const YIELD_GRACE: Duration = Duration::from_millis(250);

#[derive(Debug, Clone, Copy)]
struct Held {
    /// Calls may start until then (the lease's end minus [`MARGIN`]).
    usable_until: Instant,
    /// From then on the next call renews first.
    renew_at: Instant,
}

/// The database-backed [`AccountGate`] the service installs on its amoCRM client.
pub struct DbGate {
    db: Db,
    owner: String,
    held: Mutex<HashMap<String, Held>>,
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
    pub fn new(db: Db, owner: impl Into<String>) -> Self {
        Self {
            db,
            owner: owner.into(),
            held: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn held(&self, key: &str) -> Option<Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .copied()
    }

    fn set_held(&self, key: &str, held: Option<Held>) {
        let mut map = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
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
        if self.usable_now(key) {
            return;
        }
        let lock = self.lock_for(key);
        let _one_at_a_time = lock.lock().await;
        loop {
            if self.usable_now(key) {
                return;
            }
            let started = Instant::now();
            let now = storage::now();
            let until = now + delta(LEASE);
            let (k, owner) = (key.to_owned(), self.owner.clone());
            let asked = self
                .db
                .run(move |c| turns::take(c, &k, &owner, now, until, delta(MAX_TURN)))
                .await;
            match asked {
                Ok(Turn::Taken | Turn::Renewed) => {
                    self.set_held(
                        key,
                        Some(Held {
                            usable_until: started + LEASE - MARGIN,
                            renew_at: started + RENEW_EVERY,
                        }),
                    );
                    return;
                }
                Ok(Turn::Busy { until, was_ours }) => {
                    // Giving the turn up for a waiter: what is left of our lease is still ours to use.
                    if let Some(h) = self.held(key)
                        && Instant::now() < h.usable_until
                    {
                        self.set_held(
                            key,
                            Some(Held {
                                renew_at: h.usable_until,
                                ..h
                            }),
                        );
                        return;
                    }
                    self.set_held(key, None);
                    let left = (until - storage::now()).to_std().unwrap_or_default();
                    let extra = if was_ours { YIELD_GRACE } else { jitter() };
                    tokio::time::sleep(left.min(LEASE) + extra).await;
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

    fn usable_now(&self, key: &str) -> bool {
        let now = Instant::now();
        self.held(key)
            .is_some_and(|h| now < h.usable_until && now < h.renew_at)
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
