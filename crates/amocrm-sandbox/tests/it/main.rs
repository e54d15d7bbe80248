//! Integration tests of the amoCRM sandbox over real HTTP on 127.0.0.1 port 0.
#![allow(clippy::unwrap_used)]

mod common;
mod api;
mod oauth;
