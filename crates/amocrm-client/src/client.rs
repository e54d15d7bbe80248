//! [`AmoClient`]: the one handle the service keeps: configuration, HTTP client and per-account rate limiter.

use std::sync::Arc;

use secrecy::SecretString;
use url::Url;

use crate::api::AccountApi;
use crate::config::{AmoConfig, AuthMode, ConfigError};
use crate::host::AccountHost;
use crate::limiter::RateLimiter;

/// amoCRM client; cheap to clone (all clones share the HTTP connection pool and the rate limiter).
#[derive(Clone, Debug)]
pub struct AmoClient {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: AmoConfig,
    http: reqwest::Client,
    limiter: RateLimiter,
    observer: std::sync::OnceLock<crate::observe::Observer>,
    gate: std::sync::OnceLock<crate::gate::Gate>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("cfg", &self.cfg)
            .field("limiter", &self.limiter)
            .field("observer", &self.observer.get().is_some())
            .field("gate", &self.gate.get().is_some())
            .finish_non_exhaustive()
    }
}

impl AmoClient {
    /// Builds the client with its own limiter of `cfg.rate_limit_rps` per account.
    pub fn new(cfg: AmoConfig) -> Result<Self, ConfigError> {
        let limiter = RateLimiter::new(cfg.rate_limit_rps);
        Self::with_limiter(cfg, limiter)
    }

    /// Builds the client around an existing limiter, so several clients (or other callers) share one budget.
    pub fn with_limiter(cfg: AmoConfig, limiter: RateLimiter) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let http = reqwest::Client::builder()
            // Never follow redirects: a token request carries the client secret and must stay on the account host.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.connect_timeout)
            .user_agent(concat!("amocrm-connector/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                http,
                limiter,
                observer: std::sync::OnceLock::new(),
                gate: std::sync::OnceLock::new(),
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &AmoConfig {
        &self.inner.cfg
    }

    /// The per-account limiter every call of this client goes through (token endpoint included).
    pub fn limiter(&self) -> &RateLimiter {
        &self.inner.limiter
    }

    /// Installs the hook told about every request (once; false if one was already set).
    pub fn set_observer(&self, observer: crate::observe::Observer) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    /// Installs the cross-process admission gate (once; false if one was already set).
    pub fn set_gate(&self, gate: crate::gate::Gate) -> bool {
        self.inner.gate.set(gate).is_ok()
    }

    /// Waits until a request to `host` may be sent: first the gate (whether this process may call the
    /// account at all), then this process's limiter (a slot in the account's window), then the gate again.
    /// Hold the permit until the answer.
    pub async fn admit(&self, host: &AccountHost) -> crate::limiter::Permit {
        let Some(gate) = self.inner.gate.get() else {
            return self.inner.limiter.acquire(host).await;
        };
        loop {
            gate.admit(host.as_str()).await;
            let permit = self.inner.limiter.acquire(host).await;
            // A slot granted after the turn ended is given back unused (counted as if used: that only
            // spends less of the budget).
            if gate.holds(host.as_str()) {
                return permit;
            }
        }
    }

    pub(crate) fn observe(
        &self,
        method: &str,
        path: &str,
        outcome: crate::observe::CallOutcome,
        started: std::time::Instant,
    ) {
        if let Some(observer) = self.inner.observer.get() {
            let endpoint = crate::observe::endpoint(method, path);
            observer(&crate::observe::CallRecord {
                endpoint: &endpoint,
                outcome,
                elapsed: started.elapsed(),
            });
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The consent page URL: `{authorize_url}?client_id=…&state=…&mode=post_message|popup`.
    pub fn authorize_url(&self, state: &str, mode: AuthMode) -> Url {
        let mut url = self.inner.cfg.authorize_url.clone();
        url.query_pairs_mut()
            .append_pair("client_id", &self.inner.cfg.client_id)
            .append_pair("state", state)
            .append_pair("mode", mode.as_str());
        url
    }

    /// API v4 calls for one account with one access token.
    pub fn api<'a>(&'a self, host: &'a AccountHost, token: &'a SecretString) -> AccountApi<'a> {
        AccountApi::new(self, host, token)
    }
}

/// The futures the service spawns must be `Send` (checked at compile time).
#[expect(dead_code, reason = "compile-time check, never called")]
fn futures_are_send(client: &AmoClient, host: &AccountHost, token: &SecretString) {
    fn is_send<T: Send>(_: T) {}
    is_send(client.exchange_code(host, "code"));
    is_send(client.refresh(host, token));
    is_send(client.api(host, token).account());
    is_send(client.api(host, token).leads_complex(&[]));
    is_send(client.limiter().acquire(host));
    is_send(client.admit(host));
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
    use super::*;

    #[test]
    fn authorize_url_carries_client_id_state_and_mode() {
        let cfg = AmoConfig::new(
            "cid-1",
            SecretString::from("s"),
            Url::parse("https://shop.example/cb").unwrap(),
        );
        let client = AmoClient::new(cfg).unwrap();
        let url = client.authorize_url("st&ate=1", AuthMode::PostMessage);
        assert_eq!(
            url.as_str(),
            "https://www.amocrm.ru/oauth?client_id=cid-1&state=st%26ate%3D1&mode=post_message"
        );
        let url = client.authorize_url("x", AuthMode::Popup);
        assert!(url.as_str().ends_with("&mode=popup"));
        assert!(!url.as_str().contains("secret"));
    }
}
