//! The one integration-test binary: every test starts the real service over HTTP with its own database.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    dead_code,
    reason = "tests fail loudly on unexpected errors"
)]

mod a11y;
mod browser;
mod config_errors;
mod conventions;
mod foundation;

// connect and refresh
mod accounts;
mod connect;
mod connect_flow_browser;
mod refresh;

// orders
mod orders;
mod settings;

// events
mod events_out;
mod webhooks_in;

// operations
mod dashboard;
mod dashboard_browser;
mod deal;
mod demo;
mod metrics;
mod openapi;
mod operators;
mod outage;
mod shutdown;

// several instances
mod turns;

// proof under hostile input, faults and load
mod hostile;
mod properties;
mod screenshots;
mod security;

// what every suite shares (the crash suite too)
#[path = "../support/mod.rs"]
mod support;
