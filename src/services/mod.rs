//! Use cases of the connector. No actix types here: the web layer and the workers call these.

pub mod api_keys;
pub mod keys;
