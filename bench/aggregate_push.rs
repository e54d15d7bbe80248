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

use amocrm_client::AccountHost;
use amocrm_connector::services::orders as order_service;
use amocrm_connector::workers::push;
use amocrm_sandbox::{Sandbox, SandboxConfig};
use common::{Database, Deal};
use secrecy::SecretString;
use serde_json::json;

async fn service(sellers: usize, orders: usize, pg: Option<&str>) -> (f64, String) {
    let sandbox = Sandbox::start(SandboxConfig {
        accounts: Vec::new(),
        workers: 1,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
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
        let seller = common::seller_id(i % sellers);
        let number = format!("A{i:07}");
        let body = json!({
            "seller_id": seller,
            "order_number": number,
            "total_amount": 150000,
            "items": [{"product_id": "sku-1", "name": "Choynak", "quantity": 2, "price": 75000}],
            "customer": {"name": "Ali Valiyev", "phone": "+998901234567", "email": "ali@example.com"},
            "url": format!("https://market.example/orders/{number}"),
        });
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

/// The floor: the amoCRM client alone, the same batches (≤ 50 leads per call per account), every account
/// at once, no database, no service logic.
async fn bare(sellers: usize, orders: usize) -> f64 {
    let sandbox = Sandbox::start(SandboxConfig {
        accounts: Vec::new(),
        workers: 1,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let mut cfg = amocrm_client::AmoConfig::new(
        common::CLIENT_ID,
        SecretString::from(common::CLIENT_SECRET),
        url::Url::parse("http://127.0.0.1:1/cb").expect("url"),
    );
    cfg.account_url_template = sandbox.account_url_template();
    let client = amocrm_client::AmoClient::new(cfg).expect("client");
    let mut accounts = Vec::new();
    for i in 0..sellers {
        let host = common::host(i);
        sandbox.add_account(&host);
        let pair = sandbox.issue_tokens(common::CLIENT_ID, &host);
        let p = sandbox
            .pipelines(&host)
            .into_iter()
            .next()
            .expect("pipeline");
        let stage = p.statuses.iter().find(|s| s.type_ == 0).expect("stage").id;
        let h = AccountHost::parse(&host, &client.config().allowed_domains).expect("host");
        let mine = (i..orders).step_by(sellers).collect::<Vec<_>>();
        accounts.push((h, SecretString::from(pair.access_token), p.id, stage, mine));
    }
    let started = Instant::now();
    let runs = accounts.iter().map(|(host, token, pipeline, stage, mine)| {
        let client = client.clone();
        async move {
            let leads: Vec<amocrm_client::ComplexLead> = mine
                .iter()
                .map(|j| amocrm_client::ComplexLead {
                    name: format!("Buyurtma #A{j:07}"),
                    price: 150_000,
                    pipeline_id: *pipeline,
                    status_id: *stage,
                    request_id: format!("{j}"),
                    custom_fields_values: Vec::new(),
                    tags: Vec::new(),
                    contact: Some(amocrm_client::NewContact {
                        name: "Ali Valiyev".into(),
                        phone: Some("+998901234567".into()),
                        email: Some("ali@example.com".into()),
                    }),
                    company: None,
                })
                .collect();
            for chunk in leads.chunks(50) {
                client
                    .api(host, token)
                    .leads_complex(chunk)
                    .await
                    .expect("leads/complex");
            }
        }
    });
    futures_util::future::join_all(runs).await;
    let secs = started.elapsed().as_secs_f64();
    sandbox.stop().await;
    orders as f64 / secs
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let quick = common::quick();
    let sellers = common::list("--sellers").unwrap_or_else(|| vec![50, 500, 5000]);
    let orders: usize = common::arg("--orders")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 5000 } else { 20_000 });
    let backends: Vec<Option<String>> = match common::pg_url() {
        Some(pg) if !common::flag("--sqlite-only") => vec![None, Some(pg)],
        _ => vec![None],
    };
    println!("aggregate push benchmark: {}", common::machine());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
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
