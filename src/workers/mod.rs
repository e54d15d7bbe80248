//! Background workers, each a `run_once` step plus a loop, so tests drive them step by step.
