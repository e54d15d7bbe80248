//! amoCRM API v4 and OAuth client: no database, no web framework.
//!
//! The service builds one [`AmoClient`] from an [`AmoConfig`]; every call for one account host goes through the
//! shared per-account [`RateLimiter`], token calls included. Webhook bodies are parsed by [`webhook::parse`], the
//! uninstall hook is checked by [`verify_disconnect_signature`].
//!
//! Connecting an account: send the seller to the consent page, then exchange the `code` amoCRM redirects back
//! with, for the account named by `referer`. `examples/sandbox_oauth_lead.rs` runs the whole flow against
//! `amocrm-sandbox`.
//!
//! ```no_run
//! use amocrm_client::{AccountHost, AmoClient, AmoConfig, AuthMode};
//! use secrecy::SecretString;
//! use url::Url;
//!
//! # async fn connect(code: &str, referer: &str) -> Result<(), Box<dyn std::error::Error>> {
//! let redirect = Url::parse("https://connector.example/oauth/amocrm/callback")?;
//! let client = AmoClient::new(AmoConfig::new("client-id", SecretString::from("secret"), redirect))?;
//! let consent_page = client.authorize_url("csrf-state", AuthMode::PostMessage);
//! // ... the seller allows access; the redirect carries `code` and `referer` ...
//! let host = AccountHost::parse(referer, &client.config().allowed_domains)?;
//! let tokens = client.exchange_code(&host, code).await?;
//! let pipelines = client.api(&host, &tokens.access_token).pipelines().await?;
//! # let _ = (consent_page, pipelines);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod api;
pub mod client;
pub mod config;
pub mod disconnect;
pub mod entities;
pub mod error;
pub mod gate;
pub mod host;
pub mod limiter;
pub mod models;
pub mod oauth;
pub mod observe;
pub mod recovery;
pub mod webhook;

pub use api::AccountApi;
pub use client::AmoClient;
pub use config::{AmoConfig, AuthMode, ConfigError};
pub use disconnect::verify_disconnect_signature;
pub use entities::*;
pub use error::{ApiError, FieldError, ValidationError};
pub use gate::{AccountGate, Admission, Gate};
pub use host::{AccountHost, AllowedDomains, ApiHost, HostError};
pub use limiter::{Permit, RateLimiter};
pub use models::*;
pub use oauth::{OAuthError, TokenClaims, TokenSet};
pub use observe::{CallOutcome, CallRecord, Observer};
pub use webhook::{LeadAction, LeadEvent, OtherEntityEvent, WebhookParseError, WebhookPayload};

#[cfg(test)]
mod test_support {
    /// A capture from `tests/fixtures/` (provenance in its `SOURCES.md`).
    pub(crate) fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }
}
