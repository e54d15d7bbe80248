//! Pure types of the connector's domain: identifiers, validated values, statuses. No I/O here.

pub mod ids;
pub mod order;
pub mod status;
