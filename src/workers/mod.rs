//! Background workers, each a `run_once` step plus a loop, so tests drive them step by step.

// connect and refresh (issues 4, 5)
pub mod refresh;

// orders (issue 6)
pub mod push;

// events (issue 7)
pub mod delivery;
pub mod retention;
pub mod webhook_processor;

// operations (issue 8)
