//! Use cases of the connector. No actix types here: the web layer and the workers call these.

pub mod api_keys;
pub mod keys;

// connect and refresh (issues 4, 5)
pub mod connect;
pub mod provisioning;
pub mod refresh;
pub mod tokens;

// orders (issue 6)
pub mod order_push;
pub mod orders;

// events (issue 7)
pub mod delivery;
pub mod events_log;
pub mod ingest;
pub mod lead_events;
pub mod subscriptions;

// operations (issue 8)
pub mod operators;

// several instances
pub mod turns;
