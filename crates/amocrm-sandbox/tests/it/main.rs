//! Integration tests of the amoCRM sandbox over real HTTP on 127.0.0.1 port 0.
#![expect(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]

mod accounts;
mod api;
mod common;
mod contacts;
mod control;
mod limits;
mod notes;
mod oauth;
mod products;
mod rules;
mod unsorted;
mod users;
mod webhooks;
