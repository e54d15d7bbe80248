//! One amoCRM client per configured platform (amoCRM, Kommo), built once: separate credentials and allowed
//! domains, but one rate limiter, one cross-instance gate and one observer, so every account's budget is
//! shared by every call to it whichever client makes it.

use amocrm_client::{AmoClient, Gate, Observer, RateLimiter};

use crate::config::{ConfigError, Settings};
use crate::domain::platform::Platform;

/// Why the clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("amoCRM client: {0}")]
    Client(String),
}

/// The configured platforms' clients.
#[derive(Clone, Debug)]
pub struct Platforms {
    clients: Vec<(Platform, AmoClient)>,
    /// The client of [`Platforms::default_platform`].
    default: AmoClient,
    limiter: RateLimiter,
}

impl Platforms {
    /// A client for each platform whose credentials are set (at least one), around one shared limiter.
    pub fn build(settings: &Settings) -> Result<Self, PlatformError> {
        let limiter = RateLimiter::new(settings.amocrm_rate_limit_rps);
        let mut clients = Vec::new();
        for p in settings.require_platforms()? {
            let client = AmoClient::with_limiter(settings.platform_config(p)?, limiter.clone())
                .map_err(|e| PlatformError::Client(e.to_string()))?;
            clients.push((p, client));
        }
        let default = settings.default_platform();
        let default = clients
            .iter()
            .find(|(p, _)| *p == default)
            .or(clients.first())
            .map(|(_, c)| c.clone())
            .ok_or_else(|| PlatformError::Client("no platform is configured".into()))?;
        Ok(Self {
            clients,
            default,
            limiter,
        })
    }

    /// The client of platform `p`, if it is configured.
    pub fn client(&self, p: Platform) -> Option<&AmoClient> {
        self.clients.iter().find(|(q, _)| *q == p).map(|(_, c)| c)
    }

    /// The configured platforms and their clients, amoCRM first.
    pub fn iter(&self) -> impl Iterator<Item = (Platform, &AmoClient)> {
        self.clients.iter().map(|(p, c)| (*p, c))
    }

    pub fn is_configured(&self, p: Platform) -> bool {
        self.client(p).is_some()
    }

    /// The platform whose integration has this client id.
    pub fn by_client_id(&self, client_id: &str) -> Option<(Platform, &AmoClient)> {
        self.iter().find(|(_, c)| c.config().client_id == client_id)
    }

    /// The platform a session without one uses: the only one configured, else amoCRM.
    pub fn default_platform(&self) -> Platform {
        match self.clients.as_slice() {
            [(only, _)] => *only,
            _ => Platform::Amocrm,
        }
    }

    /// The default platform's client.
    pub fn default_client(&self) -> &AmoClient {
        &self.default
    }

    /// The rate limiter every client shares.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Installs the cross-instance gate on every client.
    pub fn set_gate(&self, gate: &Gate) {
        for (_, c) in &self.clients {
            c.set_gate(gate.clone());
        }
    }

    /// Installs the metrics observer on every client.
    pub fn set_observer(&self, observer: &Observer) {
        for (_, c) in &self.clients {
            c.set_observer(observer.clone());
        }
    }
}
