//! A local stand-in for amoCRM: OAuth, API v4, webhooks, limits and fault injection.
//!
//! Start one in-process with [`Sandbox::start`] (port 0 by default) and drive it through the returned
//! [`SandboxHandle`], or over HTTP under `/_sandbox/…` (see the crate's README).
//!
//! A test gets a consented code the way a seller's click would give it, then points its client at
//! [`SandboxHandle::account_url_template`]:
//!
//! ```
//! use amocrm_sandbox::{Faults, Integration, Sandbox, SandboxConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> anyhow::Result<()> {
//! let sandbox = Sandbox::start(SandboxConfig {
//!     integrations: vec![Integration::new("client-id", "secret", "http://127.0.0.1:8080/cb")],
//!     ..SandboxConfig::default()
//! })
//! .await?;
//! let redirect = sandbox.approve("client_id=client-id&state=xyz", "sellerone.amocrm.ru")?;
//! assert!(redirect.contains("code=") && redirect.contains("referer=sellerone.amocrm.ru"));
//! // The next two API calls to this account fail with amoCRM's 500 and change nothing.
//! sandbox.set_faults("sellerone.amocrm.ru", Faults { fail_next: 2, ..Faults::default() });
//! sandbox.stop().await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod api;
mod cli;
pub mod config;
mod fields;
pub mod form;
mod handle;
pub mod model;
pub mod oauth;
mod outbound;
mod problem;
pub mod raw_http;
mod server;
mod state;
pub mod tokens;

pub use cli::run_cli;
pub use config::{DEFAULT_ACCOUNTS, Faults, Integration, Rules, SandboxConfig, WebhookFormat};
pub use handle::{Sandbox, SandboxHandle};
pub use model::{
    AccountInfo, Catalog, CatalogElement, Company, Contact, ContactChange, ContactSeed, Counters,
    CustomField, Delivery, DeliveryKind, EndpointCounters, EntityLink, FieldEnum, FieldValue,
    FieldValues, Lead, LoggedRequest, NewUser, Note, Pipeline, Status, Tag, Task, TokenPair,
    UnsortedEntry, UnsortedState, User, Webhook,
};
pub use oauth::AuthorizeParams;
pub use state::STATUS_COLORS;
pub use tokens::{decode_claims, disconnect_signature};
