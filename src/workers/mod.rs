//! Background workers, each a `run_once` step plus a loop, so tests drive them step by step.

// connect and refresh (issues 4, 5)
pub mod refresh;

// orders (issue 6)
pub mod push;

// events (issue 7)

// operations (issue 8)
