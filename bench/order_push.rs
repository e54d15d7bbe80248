//! Order push benchmark: N orders for one seller and spread over 50 sellers, pushed to the in-process amoCRM
//! sandbox at 7 requests/second per account; prints orders per second per account against the ceiling
//! (7 calls × 50 leads = 350) and the number of 429 answers. These plain leads have no note, no products and
//! a new contact each (the seller's settings say so), as before the deal existed.
//!
//! `--deal`: complete deals for known buyers and known SKUs (note, products linked and read back, the buyer's
//! existing contact attached): prints the amoCRM requests per order, the ceiling that follows from them
//! (7 requests/s ÷ requests per order) and orders/s against it, with `--new-buyers PCT` first-time buyers.
//!
//! ```sh
//! cargo bench --bench order_push                      # both scenarios, 10,000 orders each, SQLite
//! cargo bench --bench order_push -- --sellers 1 --orders 10000
//! cargo bench --bench order_push -- --deal --orders 10000 [--new-buyers 10]
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:55432/app cargo bench --bench order_push
//! DATABASE_POOL_SIZE=1 cargo bench --bench order_push -- --sellers 50   # the service's pool size
//! ```
//!
//! Orders are accepted through the same service call the API uses (not timed); the timed part is the push
//! worker's `run_once` loop until every order is a lead.
#![expect(clippy::expect_used, reason = "tests fail loudly on unexpected errors")]

mod common;

use std::time::Instant;

use amocrm_connector::app::Application;
use amocrm_connector::services::orders as order_service;
use amocrm_connector::workers::push;
use amocrm_sandbox::SandboxHandle;
use common::{Database, Deal};
use serde_json::json;

const CEILING_PER_ACCOUNT: f64 = 350.0;

struct Args {
    scenarios: Vec<(usize, usize)>,
    /// Complete deals instead of plain leads, with this percentage of first-time buyers.
    deal: Option<usize>,
}

fn args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        raw.iter()
            .position(|a| a == name)
            .and_then(|i| raw.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let deal = raw
        .iter()
        .any(|a| a == "--deal")
        .then(|| get("--new-buyers").unwrap_or(0).min(100));
    match (get("--sellers"), get("--orders")) {
        (None, None) if deal.is_none() => Args {
            scenarios: vec![(1, 10_000), (50, 10_000)],
            deal,
        },
        (s, o) => Args {
            scenarios: vec![(s.unwrap_or(1), o.unwrap_or(10_000))],
            deal,
        },
    }
}

/// The service with its workers off (the benchmark drains the queue itself) and the pool size of
/// `DATABASE_POOL_SIZE` when it is set.
async fn start(sandbox: &SandboxHandle, db: &Database) -> Application {
    let mut extra = vec![("RUN_WORKERS", "false".to_owned())];
    if let Ok(size) = std::env::var("DATABASE_POOL_SIZE") {
        extra.push(("DATABASE_POOL_SIZE", size));
    }
    common::start_service(sandbox, &db.url, &extra).await.0
}

/// Connects `sellers` sellers as the connect flow leaves them, with `deal`'s settings; their hosts.
async fn seed(
    app: &Application,
    sandbox: &SandboxHandle,
    sellers: usize,
    deal: Deal,
) -> Vec<String> {
    let state = &app.state;
    let hours = chrono::TimeDelta::hours(24);
    common::seed_sellers(&state.db, &state.keys, sandbox, 0..sellers, deal, hours).await;
    (0..sellers).map(common::host).collect()
}

async fn scenario(sellers: usize, orders: usize) {
    let sandbox = common::sandbox(2).await;
    let db = Database::fresh(common::pg_url().as_deref());
    let app = start(&sandbox, &db).await;
    let state = app.state.clone();
    let hosts = seed(&app, &sandbox, sellers, Deal::Plain).await;

    let setup = Instant::now();
    for i in 0..orders {
        let body = common::plain_order(&common::seller_id(i % sellers), &format!("B{i:06}"));
        order_service::create(&state, &body)
            .await
            .expect("order accepted");
    }
    let accepted_in = setup.elapsed();

    let started = Instant::now();
    let (report, drained) = push::drain(&state, 1_000_000).await.expect("push");
    let elapsed = started.elapsed();
    assert!(drained, "queue drained");

    let mut leads = 0usize;
    let mut rate_limited = 0u64;
    let mut complex = 0u64;
    for host in &hosts {
        let counters = sandbox.counters(host);
        rate_limited += counters.rate_limited;
        complex += counters.complex_calls;
        leads += sandbox.leads(host).len();
    }
    let secs = elapsed.as_secs_f64();
    let total_rate = orders as f64 / secs;
    let per_account = total_rate / sellers as f64;
    println!(
        "order push: {orders} orders, {sellers} seller(s), {}",
        db.backend()
    );
    println!(
        "  accepted in {:.1} s (not timed); pushed in {secs:.2} s; {complex} leads/complex calls; {} pushed",
        accepted_in.as_secs_f64(),
        report.pushed
    );
    println!(
        "  {total_rate:.0} orders/s in total, {per_account:.1} orders/s per account vs ceiling {CEILING_PER_ACCOUNT:.0} ({:.1} %)",
        per_account / CEILING_PER_ACCOUNT * 100.0
    );
    println!(
        "  429 answers: {rate_limited}; leads in amoCRM: {leads} (exactly one per order: {})",
        leads == orders
    );
    sandbox.stop().await;
    if sellers > 1 {
        baseline(sellers, orders).await;
    }
}

/// The floor under the service: the same leads sent by the amoCRM client straight to a fresh sandbox (same
/// batches, same limiter, all accounts at once), with no database and no service logic.
async fn baseline(sellers: usize, orders: usize) {
    let sandbox = common::sandbox(2).await;
    let secs = common::bare_client(&sandbox, sellers, orders).await;
    println!(
        "  baseline, client straight to the sandbox (no database, no service): {secs:.2} s, {:.1} orders/s per account",
        orders as f64 / secs / sellers as f64
    );
    sandbox.stop().await;
}

fn main() {
    let args = args();
    // Warnings (429s, ambiguous answers) are printed; RUST_LOG=debug shows every call.
    common::init_logs("warn");
    println!("machine: {}", common::machine());
    let rt = common::runtime();
    for (sellers, orders) in args.scenarios {
        match args.deal {
            Some(new_buyers) => rt.block_on(deal_scenario(orders, new_buyers)),
            None => rt.block_on(scenario(sellers, orders)),
        }
    }
}

/// Known buyers (existing contacts, phones typed three ways) and known SKUs.
const DEAL_BUYERS: usize = 300;
const DEAL_SKUS: usize = 40;

fn deal_phone(i: usize) -> String {
    let n = 901_000_000 + i;
    match i % 3 {
        0 => format!(
            "+998 {} {}-{}-{}",
            n / 10_000_000,
            n / 10_000 % 1000,
            n / 100 % 100,
            n % 100
        ),
        1 => format!("998{n}"),
        _ => format!("{n}"),
    }
}

fn deal_order(seller: &str, number: &str, buyer: usize, sku: usize) -> serde_json::Value {
    json!({
        "seller_id": seller,
        "order_number": number,
        "total_amount": 250000,
        "items": [
            {"product_id": format!("sku-{sku}"), "name": format!("Mahsulot {sku}"), "quantity": 2, "price": 75000},
            {"product_id": format!("sku-{}", (sku + 1) % DEAL_SKUS), "name": "Piyola", "quantity": 4, "price": 25000}
        ],
        "customer": {"name": format!("Xaridor {buyer}"), "phone": deal_phone(buyer)},
        "comment": "Kechqurun qo'ng'iroq qiling",
        "url": format!("https://market.example/orders/{number}"),
    })
}

/// Complete deals for one account: after a warm-up that fills the buyer index and creates every SKU, N orders
/// (a share of them from first-time buyers) become leads with their note and products; timed until every
/// step is done.
async fn deal_scenario(orders: usize, new_buyers: usize) {
    let sandbox = common::sandbox(2).await;
    let db = Database::fresh(common::pg_url().as_deref());
    let app = start(&sandbox, &db).await;
    let state = app.state.clone();
    let host = &seed(&app, &sandbox, 1, Deal::Full).await[0];
    let seller = &common::seller_id(0);
    for b in 0..DEAL_BUYERS {
        let buyer = amocrm_sandbox::ContactSeed {
            name: format!("Xaridor {b}"),
            phones: vec![deal_phone(b)],
            ..amocrm_sandbox::ContactSeed::default()
        };
        sandbox.add_contact(host, buyer).expect("contact");
    }
    // Warm-up: every SKU once (their elements are made), the index filled from the account's contacts.
    for k in 0..DEAL_SKUS {
        let body = deal_order(seller, &format!("W{k:04}"), k, k);
        order_service::create(&state, &body).await.expect("order");
    }
    push::drain(&state, 1_000_000).await.expect("warm-up");
    let before = sandbox.counters(host);
    let mut fresh = 0usize;
    for i in 0..orders {
        let buyer = if new_buyers > 0 && i % 100 < new_buyers {
            fresh += 1;
            DEAL_BUYERS + i
        } else {
            i % DEAL_BUYERS
        };
        let body = deal_order(seller, &format!("D{i:06}"), buyer, i % DEAL_SKUS);
        order_service::create(&state, &body).await.expect("order");
    }
    let started = Instant::now();
    let (report, drained) = push::drain(&state, 1_000_000).await.expect("push");
    let secs = started.elapsed().as_secs_f64();
    assert!(drained, "queue and steps drained");
    let after = sandbox.counters(host);
    let requests = after.endpoints.total() - before.endpoints.total();
    let per_order = requests as f64 / orders as f64;
    let ceiling = 7.0 / per_order;
    let rate = orders as f64 / secs;
    println!(
        "deal push: {orders} orders, 1 seller, {}, first-time buyers {new_buyers} % ({fresh})",
        db.backend()
    );
    println!(
        "  pushed {} in {secs:.2} s; {requests} amoCRM requests: {per_order:.4} per order (target <= 0.05)",
        report.pushed
    );
    let by_family: Vec<String> = after
        .endpoints
        .families()
        .into_iter()
        .zip(before.endpoints.families())
        .filter(|((_, a), (_, b))| a > b)
        .map(|((name, a), (_, b))| format!("{name} {}", a - b))
        .collect();
    println!("  by kind: {}", by_family.join(", "));
    println!(
        "  {rate:.1} orders/s vs the ceiling its requests allow, 7 / {per_order:.4} = {ceiling:.0} orders/s ({:.1} %, target >= 95 %)",
        rate / ceiling * 100.0
    );
    let notes = sandbox.notes(host).len();
    let leads = sandbox.leads(host).len();
    println!(
        "  429 answers: {}; leads {leads}, notes {notes} (one per lead: {}), contacts {}",
        after.rate_limited - before.rate_limited,
        notes == leads,
        sandbox.contacts(host).len()
    );
    sandbox.stop().await;
}
