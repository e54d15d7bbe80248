//! The event delivery worker: claims due deliveries with leases and sends them concurrently.
//!
//! A slow or dead subscriber cannot delay the others: every attempt has a timeout (`DELIVERY_TIMEOUT`,
//! 10 s), each subscription has at most [`PER_SUBSCRIPTION`] attempts in flight in this process, and the loop
//! keeps claiming for other subscriptions while those run. HTTP happens in tasks; all database work happens
//! in the loop itself, in batches (one transaction records every answer that came in meanwhile), so the
//! worker never competes with itself for SQLite's write lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, TimeDelta};
use tokio::task::{JoinHandle, JoinSet};

use crate::services::Context;
use crate::services::delivery::{self, Finished, Outcome};
use crate::storage::cipher::Keyring;
use crate::storage::deliveries::ClaimedDelivery;
use crate::storage::{self, Db, StorageError};

/// Attempts in flight in one process, all subscriptions together.
pub const MAX_IN_FLIGHT: usize = 64;
/// Attempts in flight to one subscription in one process (one per seller at most: order per seller).
pub const PER_SUBSCRIPTION: usize = 16;
/// Longer than the delivery timeout, so a lease outlives the attempt it covers.
const LEASE: TimeDelta = TimeDelta::seconds(90);
/// How often an idle worker looks for due deliveries (it is also woken when events are recorded).
const IDLE_POLL: Duration = Duration::from_millis(250);

/// What one step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub claimed: usize,
    pub delivered: usize,
    pub retrying: usize,
    pub failed: usize,
    pub lease_lost: usize,
}

impl Report {
    fn add(&mut self, o: Outcome) {
        match o {
            Outcome::Delivered => self.delivered += 1,
            Outcome::Retrying => self.retrying += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::LeaseLost => self.lease_lost += 1,
        }
    }
}

/// One step at the current time: claims what is due and waits for those attempts.
pub async fn run_once(state: &Context) -> Result<Report, StorageError> {
    run_once_at(state, storage::now()).await
}

/// One step with the clock at `now` (tests move it forward instead of sleeping through the schedule).
#[tracing::instrument(name = "delivery_step", skip_all)]
pub async fn run_once_at(state: &Context, now: NaiveDateTime) -> Result<Report, StorageError> {
    let owner = state.settings.instance_id.clone();
    let claimed = claim(&state.db, &owner, now, MAX_IN_FLIGHT as i64, Vec::new()).await?;
    let mut report = Report {
        claimed: claimed.len(),
        ..Report::default()
    };
    let timeout = state.settings.delivery_timeout;
    let mut set = JoinSet::new();
    for c in claimed {
        let keys = state.keys.clone();
        let out = state.outbound.clone();
        set.spawn(async move { delivery::send(&out, timeout, &keys, &c, now).await });
    }
    let mut finished = Vec::new();
    while let Some(done) = set.join_next().await {
        finished.push(done.map_err(|e| StorageError::Other(format!("delivery task failed: {e}")))?);
    }
    for o in delivery::record(&state.db, &owner, &finished, now).await? {
        report.add(o);
    }
    Ok(report)
}

async fn claim(
    db: &Db,
    owner: &str,
    now: NaiveDateTime,
    limit: i64,
    skip: Vec<String>,
) -> Result<Vec<ClaimedDelivery>, StorageError> {
    db.deliveries()
        .claim_due(owner, now, now + LEASE, limit, skip)
        .await
}

/// Runs until shutdown: claims whenever there is room, never waits for a slow attempt to claim others.
pub fn spawn(state: Arc<Context>) -> JoinHandle<()> {
    tokio::spawn(async move { run_loop(state).await })
}

async fn run_loop(state: Arc<Context>) {
    let owner = state.settings.instance_id.clone();
    let db = state.db.clone();
    let keys: Arc<Keyring> = state.keys.clone();
    let out = state.outbound.clone();
    let timeout = state.settings.delivery_timeout;
    let mut shutdown = state.shutdown.clone();
    let mut in_flight: JoinSet<Finished> = JoinSet::new();
    let mut per_sub: HashMap<String, usize> = HashMap::new();
    let mut done: Vec<Finished> = Vec::new();
    let mut idle = super::IdlePoll::new(IDLE_POLL, super::IDLE_POLL_MAX);
    loop {
        // Record every answer that came in, in one transaction; their sellers' next events become due.
        if !done.is_empty() {
            let batch = std::mem::take(&mut done);
            for f in &batch {
                if let Some(n) = per_sub.get_mut(&f.subscription_id) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_sub.remove(&f.subscription_id);
                    }
                }
            }
            if let Err(e) = delivery::record(&db, &owner, &batch, storage::now()).await {
                // The leases expire and the deliveries are attempted again: at least once.
                tracing::warn!(error = %e, "recording delivery attempts failed");
            }
        }
        if *shutdown.borrow() {
            break;
        }
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
        let mut claimed_any = false;
        if room > 0 {
            let skip: Vec<String> = per_sub
                .iter()
                .filter(|(_, n)| **n >= PER_SUBSCRIPTION)
                .map(|(k, _)| k.clone())
                .collect();
            let now = storage::now();
            match claim(&db, &owner, now, room as i64, skip).await {
                Ok(batch) => {
                    let mut over = Vec::new();
                    for c in batch {
                        let n = per_sub
                            .entry(c.delivery.subscription_id.clone())
                            .or_insert(0);
                        if *n >= PER_SUBSCRIPTION {
                            over.push(c.delivery.id);
                            continue;
                        }
                        *n += 1;
                        claimed_any = true;
                        let keys = keys.clone();
                        let out = out.clone();
                        in_flight.spawn(async move {
                            delivery::send(&out, timeout, &keys, &c, storage::now()).await
                        });
                    }
                    if !over.is_empty() {
                        // Over a subscription's share: hand them back, still due.
                        let _ = db.deliveries().release_all(over, &owner, now).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming deliveries failed"),
            }
        }
        if claimed_any {
            idle.found_work();
        }
        if claimed_any && in_flight.len() < MAX_IN_FLIGHT {
            // There may be more due work: claim again before sleeping (answers are collected next round).
            while let Some(Ok(f)) = in_flight.try_join_next() {
                done.push(f);
            }
            continue;
        }
        tokio::select! {
            Some(result) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(f) = result {
                    done.push(f);
                }
                while let Some(Ok(f)) = in_flight.try_join_next() {
                    done.push(f);
                }
            }
            _ = tokio::time::sleep(idle.wait()) => {}
            _ = delivery::new_event_signal().notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    // Let attempts in flight finish (each is bounded by the delivery timeout) and record them.
    while let Some(result) = in_flight.join_next().await {
        if let Ok(f) = result {
            done.push(f);
        }
    }
    if let Err(e) = delivery::record(&db, &owner, &done, storage::now()).await {
        tracing::warn!(error = %e, "recording delivery attempts failed");
    }
}
