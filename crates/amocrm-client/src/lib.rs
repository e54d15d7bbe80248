//! amoCRM API v4 and OAuth client: no database, no web framework.
//!
//! The service builds one [`AmoClient`] from an [`AmoConfig`]; every call for one account host goes through the
//! shared per-account [`RateLimiter`], token calls included. Webhook bodies are parsed by [`webhook::parse`], the
//! uninstall hook is checked by [`verify_disconnect_signature`].
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
