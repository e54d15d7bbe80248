//! The event delivery worker: claims due deliveries with leases and sends them concurrently.
//!
//! A slow or dead subscriber cannot delay the others: every attempt has a 10 s timeout, each subscription
//! has at most [`PER_SUBSCRIPTION`] attempts in flight in this process, and the loop keeps claiming for
//! other subscriptions while those run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web::Data;
use chrono::{NaiveDateTime, TimeDelta};
use tokio::task::{JoinHandle, JoinSet};

use crate::app::AppState;
use crate::services::delivery::{self, Outcome};
use crate::storage::cipher::Keyring;
use crate::storage::deliveries::{self, ClaimedDelivery};
use crate::storage::{self, Db, StorageError};

/// Attempts in flight in one process, all subscriptions together.
pub const MAX_IN_FLIGHT: usize = 32;
/// Attempts in flight to one subscription in one process.
pub const PER_SUBSCRIPTION: usize = 4;
/// Longer than the delivery timeout, so a lease outlives the attempt it covers.
const LEASE: TimeDelta = TimeDelta::seconds(60);
/// How often an idle worker looks for due deliveries.
const IDLE_POLL: Duration = Duration::from_millis(200);

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
pub async fn run_once(state: &AppState) -> Result<Report, StorageError> {
    run_once_at(state, storage::now()).await
}

/// One step with the clock at `now` (tests move it forward instead of sleeping through the schedule).
pub async fn run_once_at(state: &AppState, now: NaiveDateTime) -> Result<Report, StorageError> {
    let owner = state.settings.instance_id.clone();
    let claimed = claim(&state.db, &owner, now, MAX_IN_FLIGHT as i64, Vec::new()).await?;
    let mut report = Report {
        claimed: claimed.len(),
        ..Report::default()
    };
    let mut set = JoinSet::new();
    let timeout = state.settings.delivery_timeout;
    for c in claimed {
        let (db, keys, owner) = (state.db.clone(), state.keys.clone(), owner.clone());
        set.spawn(async move { delivery::deliver(timeout, &db, &keys, &owner, c, now).await });
    }
    while let Some(done) = set.join_next().await {
        match done {
            Ok(Ok(o)) => report.add(o),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(StorageError::Other(format!("delivery task failed: {e}"))),
        }
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
    let owner = owner.to_owned();
    db.run(move |c| deliveries::claim_due(c, &owner, now, now + LEASE, limit, &skip))
        .await
}

/// Runs until shutdown: claims whenever there is room, never waits for a slow attempt to claim others.
pub fn spawn(state: Data<AppState>) -> JoinHandle<()> {
    tokio::spawn(async move { run_loop(state).await })
}

async fn run_loop(state: Data<AppState>) {
    let owner = state.settings.instance_id.clone();
    let db = state.db.clone();
    let keys: Arc<Keyring> = state.keys.clone();
    let mut shutdown = state.shutdown.clone();
    let timeout = state.settings.delivery_timeout;
    let mut in_flight: JoinSet<String> = JoinSet::new();
    let mut per_sub: HashMap<String, usize> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let mut claimed_any = false;
        let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
        if room > 0 {
            let skip: Vec<String> = per_sub
                .iter()
                .filter(|(_, n)| **n >= PER_SUBSCRIPTION)
                .map(|(k, _)| k.clone())
                .collect();
            let now = storage::now();
            match claim(&db, &owner, now, room as i64, skip).await {
                Ok(batch) => {
                    for c in batch {
                        let sub = c.delivery.subscription_id.clone();
                        let n = per_sub.entry(sub.clone()).or_insert(0);
                        if *n >= PER_SUBSCRIPTION {
                            // Over this subscription's share: hand it back, still due.
                            let (db, owner, id) = (db.clone(), owner.clone(), c.delivery.id);
                            let _ = db
                                .run(move |conn| deliveries::release(conn, id, &owner, now, None))
                                .await;
                            continue;
                        }
                        *n += 1;
                        claimed_any = true;
                        let (db, keys, owner) = (db.clone(), keys.clone(), owner.clone());
                        in_flight.spawn(async move {
                            let now = storage::now();
                            if let Err(e) =
                                delivery::deliver(timeout, &db, &keys, &owner, c, now).await
                            {
                                tracing::warn!(error = %e, "recording a delivery attempt failed");
                            }
                            sub
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming deliveries failed"),
            }
        }
        if claimed_any && in_flight.len() < MAX_IN_FLIGHT {
            continue;
        }
        tokio::select! {
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                if let Ok(sub) = done
                    && let Some(n) = per_sub.get_mut(&sub)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        per_sub.remove(&sub);
                    }
                }
            }
            _ = tokio::time::sleep(IDLE_POLL) => {}
            _ = delivery::new_event_signal().notified() => {}
            _ = shutdown.changed() => {}
        }
    }
    // Let attempts in flight finish (each is bounded by the delivery timeout) so none is left leased.
    while in_flight.join_next().await.is_some() {}
}
