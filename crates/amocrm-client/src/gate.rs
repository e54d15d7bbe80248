//! An optional admission hook consulted before every request to an account (API and token endpoint),
//! before the per-process [`crate::RateLimiter`].
//!
//! The limiter only sees this process's calls. When several processes call one account, the service installs
//! a gate that lets one process at a time call it (a lease in the shared database), so the account's budget is
//! never spent twice. This crate stays free of any database: the gate is a trait object.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The future [`AccountGate::admit`] returns.
pub type Admission<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Decides when this process may call an account.
pub trait AccountGate: Send + Sync {
    /// Resolves once this process may send a request to the account `key` (its host). It must resolve
    /// eventually: a gate that cannot decide (its store is down) lets the call through.
    fn admit<'a>(&'a self, key: &'a str) -> Admission<'a>;

    /// Whether a request to `key` may still start now. Asked again after the limiter's slot is granted: a
    /// caller that queued for a slot past the end of this process's turn must ask for the turn again.
    fn holds(&self, key: &str) -> bool;
}

/// The shared handle the client keeps.
pub type Gate = Arc<dyn AccountGate>;
