//! What every use case needs, built once by `app` and handed to the web layer and the workers alike.
//!
//! It lives here, below the web layer, so that services never reach up into `app` or `web`: `app` only wires
//! a `Context` together, `web` wraps it for its HTTP server, and workers take it as an `Arc`.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Settings;
use crate::domain::platform::Platform;
use crate::services::health::HealthBook;
use crate::services::platforms::Platforms;
use crate::storage::cipher::Keyring;
use crate::storage::connections::Connection;
use crate::storage::{Db, StorageError};

/// Shared by every handler and worker.
pub struct Context {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub keys: Arc<Keyring>,
    /// The default platform's client (the only one when one platform is configured). Calls for a
    /// connection use its platform's client: [`Context::client`].
    pub amo: amocrm_client::AmoClient,
    /// One client per configured platform; all share one rate limiter and one account gate, so every call
    /// to every account, whichever platform, is paced together.
    pub platforms: Platforms,
    /// How each connection's calls to amoCRM go (see `services::health`).
    pub health: HealthBook,
    /// The amoCRM webhook intake's writer (group commit of raw bodies).
    pub intake: crate::services::ingest::Intake,
    /// How event deliveries leave the process (the target policy and its HTTP client).
    pub outbound: Arc<crate::services::delivery::Outbound>,
    /// Flips to `true` when the process is asked to stop; workers finish their step and exit.
    pub shutdown: watch::Receiver<bool>,
}

impl Context {
    pub fn new(
        settings: Arc<Settings>,
        db: Db,
        keys: Arc<Keyring>,
        platforms: Platforms,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let policy = crate::domain::outbound::TargetPolicy::new(&settings.webhook_allowed_hosts);
        Self {
            outbound: Arc::new(crate::services::delivery::Outbound::new(policy)),
            settings,
            intake: crate::services::ingest::Intake::new(db.clone()),
            db,
            keys,
            amo: platforms.default_client().clone(),
            platforms,
            health: HealthBook::default(),
            shutdown,
        }
    }

    /// Whether the process has been asked to stop.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// The client of platform `p`, if it is configured.
    pub fn client(&self, p: Platform) -> Option<&amocrm_client::AmoClient> {
        self.platforms.client(p)
    }

    /// The seller's connection row, or the caller's `missing` error when the seller has none.
    pub async fn connection_of<E: From<StorageError>>(
        &self,
        seller_id: &str,
        missing: E,
    ) -> Result<Connection, E> {
        self.db
            .connections()
            .by_seller(seller_id)
            .await?
            .ok_or(missing)
    }
}
