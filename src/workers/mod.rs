//! Background workers, each a `run_once` step plus a loop, so tests drive them step by step.

// connect and refresh
pub mod refresh;

// orders
pub mod push;

// events
pub mod delivery;
pub mod retention;
pub mod webhook_processor;

// operations
