//! The one integration-test binary: every test starts the real service over HTTP with its own database.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

mod browser;
mod config_errors;
mod conventions;
mod foundation;
mod helpers;

// connect and refresh (issues 4, 5)
mod connect;
mod refresh;

// orders (issue 6)
mod orders;

// events (issue 7)
mod events_out;
mod webhooks_in;

// operations (issue 8)
mod dashboard;
mod demo;
mod metrics;
mod openapi;
mod operators;
mod shutdown;

// several instances
mod turns;

// proof under hostile input, faults and load (issue 9)
mod hostile;
mod properties;
mod security;
