//! Integration tests of the amoCRM sandbox over real HTTP on 127.0.0.1 port 0.
#![allow(clippy::unwrap_used)]

mod api;
mod common;
mod control;
mod limits;
mod oauth;
mod webhooks;
