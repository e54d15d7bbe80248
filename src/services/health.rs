//! Connection health: per connection, the last successful call to amoCRM, the last failure and its class, and
//! the state (`healthy`, `degraded`, `suspended`, `disconnected`).
//!
//! Every call reports its outcome here, in memory; the `connection_health` row is written the first time a
//! connection is seen, when its state changes to or from `suspended`/`disconnected`, and otherwise at most
//! once per [`WRITE_EVERY`], so the hot path costs a map update and, rarely, one small write.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use amocrm_client::{ApiError, OAuthError};

use crate::domain::status::HealthState;
use crate::services::Context;
use crate::storage::health::Health;

/// The longest a connection's row lags behind what its calls have seen (unless nothing happened since).
pub const WRITE_EVERY: Duration = Duration::from_secs(60);

/// How one call, refresh or probe for a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed {
        /// A short, fixed name: `rate_limited`, `unavailable`, `timeout`, `unauthorized`, `payment_required`,
        /// `blocked`, `not_found`, `rejected`, `unreadable`, `refresh_rejected`.
        class: &'static str,
        /// amoCRM's status and words, never a token.
        detail: String,
        /// What the failure says about the connection.
        state: HealthState,
    },
}

impl Outcome {
    fn failed(class: &'static str, detail: impl ToString, state: HealthState) -> Self {
        let mut detail = detail.to_string();
        if detail.len() > 300 {
            let mut end = 300;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            detail.truncate(end);
        }
        Self::Failed {
            class,
            detail,
            state,
        }
    }

    /// The outcome of an API call's error. A refusal of the request's content (400, 404) still means the
    /// account answers: the connection stays healthy.
    pub fn of_api(err: &ApiError) -> Self {
        use HealthState::{Degraded, Healthy, Suspended};
        match err {
            ApiError::RateLimited { .. } => Self::failed("rate_limited", err, Degraded),
            ApiError::Transient { .. } => Self::failed("unavailable", err, Degraded),
            ApiError::Ambiguous(_) => Self::failed("timeout", err, Degraded),
            ApiError::Unauthorized => Self::failed("unauthorized", err, Degraded),
            ApiError::PaymentRequired => Self::failed("payment_required", err, Suspended),
            ApiError::Forbidden { .. } => Self::failed("blocked", err, Suspended),
            ApiError::NotFound => Self::failed("not_found", err, Healthy),
            ApiError::Rejected { .. } => Self::failed("rejected", err, Healthy),
            ApiError::Decode(_) | ApiError::Request(_) => Self::failed("unreadable", err, Degraded),
        }
    }

    /// The outcome of a failed refresh. A 401/404 may be a renamed account the refresh then follows, so it
    /// is not (yet) a lost connection.
    pub fn of_refresh(err: &OAuthError) -> Self {
        match err {
            OAuthError::Rejected {
                status: 401 | 404, ..
            } => Self::failed("unauthorized", err, HealthState::Degraded),
            OAuthError::Rejected { status: 402, .. } => {
                Self::failed("payment_required", err, HealthState::Suspended)
            }
            OAuthError::Rejected { status: 403, .. } => {
                Self::failed("blocked", err, HealthState::Suspended)
            }
            OAuthError::Rejected { .. } | OAuthError::HostNotAllowed => {
                Self::failed("refresh_rejected", err, HealthState::Disconnected)
            }
            OAuthError::RateLimited { .. } => {
                Self::failed("rate_limited", err, HealthState::Degraded)
            }
            OAuthError::Transient(_) | OAuthError::Other(_) => {
                Self::failed("unavailable", err, HealthState::Degraded)
            }
        }
    }

    fn state(&self) -> HealthState {
        match self {
            Self::Ok => HealthState::Healthy,
            Self::Failed { state, .. } => *state,
        }
    }
}

/// What this process knows of each connection's health, and when it last wrote it.
#[derive(Default)]
pub struct HealthBook {
    entries: Mutex<HashMap<i64, Entry>>,
}

impl std::fmt::Debug for HealthBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthBook").finish_non_exhaustive()
    }
}

struct Entry {
    row: Health,
    written: Option<(Instant, HealthState)>,
}

/// States only the account or the seller can change: worth writing at once.
fn serious(s: HealthState) -> bool {
    matches!(s, HealthState::Suspended | HealthState::Disconnected)
}

impl HealthBook {
    /// Notes `outcome` for the connection; returns the row to write when it is time to.
    fn note(&self, connection_id: i64, outcome: &Outcome) -> Option<Health> {
        let now = crate::storage::now();
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = entries.entry(connection_id).or_insert_with(|| Entry {
            row: Health {
                connection_id,
                state: HealthState::Healthy,
                last_success_at: None,
                last_failure_at: None,
                last_failure_class: None,
                last_failure: None,
                updated_at: now,
            },
            written: None,
        });
        entry.row.state = outcome.state();
        entry.row.updated_at = now;
        match outcome {
            Outcome::Ok => entry.row.last_success_at = Some(now),
            Outcome::Failed { class, detail, .. } => {
                entry.row.last_failure_at = Some(now);
                entry.row.last_failure_class = Some((*class).to_owned());
                entry.row.last_failure = Some(detail.clone());
            }
        }
        let due = match entry.written {
            None => true,
            Some((at, state)) => {
                let changed = state != entry.row.state;
                at.elapsed() >= WRITE_EVERY
                    || (changed && (serious(state) || serious(entry.row.state)))
            }
        };
        if !due {
            return None;
        }
        entry.written = Some((Instant::now(), entry.row.state));
        Some(entry.row.clone())
    }
}

/// Records how a call for the connection ended; writes its health row when due. Never fails the caller.
pub async fn record(state: &Context, connection_id: i64, outcome: Outcome) {
    let Some(row) = state.health.note(connection_id, &outcome) else {
        return;
    };
    if let Err(e) = state.db.health().write(&row).await {
        tracing::warn!(connection_id, error = %e, "could not write the connection's health");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_written_first_then_on_serious_changes_and_at_most_once_a_minute() {
        let book = HealthBook::default();
        assert!(book.note(1, &Outcome::Ok).is_some(), "first sight");
        for _ in 0..100 {
            assert!(
                book.note(1, &Outcome::Ok).is_none(),
                "hot path writes nothing"
            );
        }
        let degraded = Outcome::of_api(&ApiError::RateLimited {
            retry_after: Duration::from_secs(1),
        });
        assert!(book.note(1, &degraded).is_none(), "a passing hiccup waits");
        let row = book
            .note(1, &Outcome::of_api(&ApiError::PaymentRequired))
            .expect("suspension is written at once");
        assert_eq!(row.state, HealthState::Suspended);
        assert_eq!(row.last_failure_class.as_deref(), Some("payment_required"));
        assert!(row.last_success_at.is_some());
        let back = book.note(1, &Outcome::Ok).expect("so is the way back");
        assert_eq!(back.state, HealthState::Healthy);
        assert!(book.note(2, &Outcome::Ok).is_some(), "per connection");
    }

    #[test]
    fn refusals_of_content_leave_the_connection_healthy() {
        let e = ApiError::Rejected {
            status: 400,
            detail: "bad".into(),
            validation: vec![],
        };
        assert_eq!(Outcome::of_api(&e).state(), HealthState::Healthy);
        assert_eq!(
            Outcome::of_api(&ApiError::Forbidden { detail: "x".into() }).state(),
            HealthState::Suspended
        );
    }
}
