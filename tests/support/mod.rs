//! What every test suite shares (`tests/api` and `tests/crash` include this module): the test app on a
//! database of its own with its drop check of leftover work, the connect flow and connection fixtures,
//! polling with a deadline, and a marketplace event receiver.
#![allow(
    unused_imports,
    reason = "each suite uses its part of what is re-exported here"
)]

mod app;
mod connect;
mod db;
mod pg_schema;
mod receiver;
mod sellers;
mod wait;

pub use app::{
    Queue, TestApp, TestDatabase, assert_error, base_env, env_vars, fresh_database, header,
    spawn_app, spawn_app_against, spawn_app_on, spawn_app_with, spawn_app_with_sandbox, strings_of,
};
pub use connect::{
    HOST, OTHER_HOST, attr, browser_client, connect, consent, create_session, follow_result,
    get_following_303, new_browser, open_page, query_of, result_location, seller_session,
    through_result, until_callback,
};
pub use db::{count_sql, inbox_row};
pub use receiver::{Behaviour, Hit, Receiver};
pub use sellers::{
    Seller, connect_seller, connection, connection_row, event_count, insert_connections,
    lead_numbers, leads_by_number, linked_items, order_body, order_pushed, refresh_now,
    save_settings, seed_connection, set_connection_status, skus_made, status_of,
};
pub use wait::{Poll, Timeout, wait_until};
