//! Aggregate push benchmark: orders/s on the whole machine with 50, 500 and 5,000 sellers, beside the bare
//! amoCRM client sending the same batches to the same kind of sandbox in the same run.
//!
//! ```sh
//! cargo bench --bench aggregate_push                       # 50, 500, 5,000 sellers; 20,000 orders each
//! cargo bench --bench aggregate_push -- --quick            # 5,000 orders
//! cargo bench --bench aggregate_push -- --sellers 500 --orders 20000
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:55432/app cargo bench --bench aggregate_push
//! ```
//!
//! Orders are accepted through the service call the API uses (not timed); the timed part is the push
//! worker draining the queue until every order is a lead. The sandbox keeps amoCRM's 7 requests/s per
//! account; plain leads (no note, no products, a new contact each).
#![expect(clippy::expect_used, reason = "a benchmark fails loudly")]

mod common;

use std::time::Instant;

use amocrm_connector::services::orders as order_service;
use amocrm_connector::workers::push;
use common::{Database, Deal};

async fn service(sellers: usize, orders: usize, pg: Option<&str>) -> (f64, String) {
    let sandbox = common::sandbox(1).await;
    let db = Database::fresh(pg);
    let (app, _port) = common::start_service(
        &sandbox,
        &db.url,
        &[
            ("RUN_WORKERS", "false".into()),
            ("REFRESH_SCHEDULE", String::new()),
        ],
    )
    .await;
    let state = app.state.clone();
    common::seed_sellers(
        &state.db,
        &state.keys,
        &sandbox,
        0..sellers,
        Deal::Plain,
        chrono::TimeDelta::hours(24),
    )
    .await;
    let accept = Instant::now();
    for i in 0..orders {
        let body = common::plain_order(&common::seller_id(i % sellers), &format!("A{i:07}"));
        order_service::create(&state, &body).await.expect("order");
    }
    let accept_secs = accept.elapsed().as_secs_f64();
    let started = Instant::now();
    let (report, drained) = push::drain(&state, 1_000_000).await.expect("push");
    let secs = started.elapsed().as_secs_f64();
    let counters = sandbox.total_counters();
    let rate = report.pushed as f64 / secs;
    let line = format!(
        "service ({}): {} orders pushed in {secs:.2} s = {rate:.0} orders/s ({} leads/complex calls, {} × 429, drained {drained}; accepting took {accept_secs:.1} s, not timed)",
        db.backend(),
        report.pushed,
        counters.complex_calls,
        counters.rate_limited
    );
    drop(app);
    sandbox.stop().await;
    (rate, line)
}

/// The floor: the amoCRM client alone, the same batches to a fresh sandbox.
async fn bare(sellers: usize, orders: usize) -> f64 {
    let sandbox = common::sandbox(1).await;
    let secs = common::bare_client(&sandbox, sellers, orders).await;
    sandbox.stop().await;
    orders as f64 / secs
}

fn main() {
    common::init_logs("error");
    let quick = common::quick();
    let sellers = common::list("--sellers").unwrap_or_else(|| vec![50, 500, 5000]);
    let orders: usize = common::arg("--orders")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 5000 } else { 20_000 });
    let backends = common::backends();
    println!("aggregate push benchmark: {}", common::machine());
    let rt = common::runtime();
    for s in &sellers {
        let bare_rate = rt.block_on(bare(*s, orders));
        println!("== {s} sellers, {orders} orders");
        println!("  bare client straight to the sandbox: {bare_rate:.0} orders/s");
        println!("RESULT aggregate backend=bare sellers={s} rate={bare_rate:.1}");
        for pg in &backends {
            let (rate, line) = rt.block_on(service(*s, orders, pg.as_deref()));
            let backend = if pg.is_some() { "PostgreSQL" } else { "SQLite" };
            let verdict = if pg.is_none() && *s == 500 {
                if rate >= 20_000.0 {
                    "; target >= 20,000 orders/s: met"
                } else {
                    "; target >= 20,000 orders/s: MISSED"
                }
            } else {
                ""
            };
            println!(
                "  {line}; {:.0} % of the bare client{verdict}",
                rate / bare_rate * 100.0
            );
            println!("RESULT aggregate backend={backend} sellers={s} rate={rate:.1}");
        }
    }
}
