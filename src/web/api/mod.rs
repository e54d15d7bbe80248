//! `/api/v1`: the marketplace backend's API. The guard here authenticates, checks the version header and
//! counts the key's hourly budget before any handler runs.

pub mod connect_sessions;
pub mod connections;
pub mod events;
pub mod guard;
pub mod orders;
pub mod settings;
pub mod settings_sessions;
pub mod webhooks;
