//! Use cases of the connector. No HTTP-framework types here: the web layer and the workers call these.

pub mod api_keys;
pub mod context;
pub mod dashboard;
pub mod health;
pub mod keys;
pub mod platforms;

pub mod connect;
pub mod provisioning;
pub mod refresh;
pub mod rename;
pub mod suspension;
pub mod tokens;

pub mod buyers;
pub mod order_push;
pub mod orders;
pub mod settings;
pub mod settings_page;
pub mod users;

pub mod delivery;
pub mod events_log;
pub mod ingest;
pub mod lead_events;
pub mod subscriptions;

pub mod operators;

pub mod turns;

pub use context::Context;
