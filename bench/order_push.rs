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

use std::collections::HashMap;
use std::time::Instant;

use amocrm_client::{AccountHost, NewCustomField, NewPipeline, NewStatus};
use amocrm_connector::app::Application;
use amocrm_connector::config::Settings;
use amocrm_connector::services::Context;
use amocrm_connector::services::orders as order_service;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_connector::storage::schema::amocrm_connections as c;
use amocrm_connector::storage::{StorageError, connections};
use amocrm_connector::workers::push;
use amocrm_sandbox::{Sandbox, SandboxConfig, SandboxHandle};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use secrecy::SecretString;
use serde_json::json;

const CEILING_PER_ACCOUNT: f64 = 350.0;
const CLIENT_ID: &str = "bench-client";

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

/// A fresh database: a temp SQLite file, or a new schema in `BENCH_DATABASE_URL`.
fn database() -> (String, Option<tempfile::TempDir>) {
    match std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => {
            let schema = format!(
                "bench_{}",
                amocrm_connector::domain::ids::random_token(10).to_lowercase()
            );
            let mut conn = diesel::PgConnection::establish(&url).expect("BENCH_DATABASE_URL");
            conn.batch_execute(&format!("CREATE SCHEMA {schema}"))
                .expect("create schema");
            let sep = if url.contains('?') { '&' } else { '?' };
            (format!("{url}{sep}options=-csearch_path%3D{schema}"), None)
        }
        None => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            (url, Some(dir))
        }
    }
}

async fn start(sandbox: &SandboxHandle, db_url: &str) -> Application {
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("DATABASE_URL".into(), db_url.to_owned());
    env.insert("LISTEN_ADDR".into(), "127.0.0.1:0".into());
    env.insert(
        "TOKEN_ENCRYPTION_KEYS".into(),
        Keyring::generate_entry("bench"),
    );
    env.insert("AMOCRM_CLIENT_ID".into(), CLIENT_ID.into());
    env.insert("AMOCRM_CLIENT_SECRET".into(), "bench-client-secret".into());
    env.insert(
        "AMOCRM_ACCOUNT_URL_TEMPLATE".into(),
        sandbox.account_url_template(),
    );
    env.insert("AMOCRM_RATE_LIMIT_RPS".into(), "7".into());
    env.insert("REFRESH_SCHEDULE".into(), String::new());
    env.insert("RUN_WORKERS".into(), "false".into());
    if let Ok(size) = std::env::var("DATABASE_POOL_SIZE") {
        env.insert("DATABASE_POOL_SIZE".into(), size);
    }
    let settings = Settings::from_env(&env).expect("settings");
    Application::build(settings).await.expect("app")
}

/// Connects a seller to a sandbox account: tokens, pipeline, fields, as the connect flow leaves them.
async fn connect(state: &Context, sandbox: &SandboxHandle, seller: &str, host: &str) {
    let pair = sandbox.issue_tokens(CLIENT_ID, host);
    let h = AccountHost::parse(host, &state.amo.config().allowed_domains).expect("host");
    let token = SecretString::from(pair.access_token.clone());
    let api = state.amo.api(&h, &token);
    let names = [
        "Yangi buyurtma",
        "To'lov kutilmoqda",
        "To'landi",
        "Yetkazilmoqda",
    ];
    let p = api
        .create_pipeline(&NewPipeline {
            name: "Marketplace".into(),
            sort: None,
            statuses: names
                .iter()
                .enumerate()
                .map(|(i, n)| NewStatus::new(*n, (i as i64 + 1) * 10, "#fffeb2"))
                .collect(),
        })
        .await
        .expect("pipeline");
    let st: Vec<i64> = names
        .iter()
        .map(|n| p.status_named(n).expect("stage").id as i64)
        .collect();
    let f = api
        .create_lead_custom_fields(&[
            NewCustomField {
                name: "Buyurtma raqami".into(),
                type_: "text".into(),
                code: None,
                is_api_only: false,
            },
            NewCustomField {
                name: "Buyurtma havolasi".into(),
                type_: "url".into(),
                code: None,
                is_api_only: false,
            },
        ])
        .await
        .expect("fields");
    let (access, refresh) =
        connections::seal_tokens(&state.keys, seller, &pair.access_token, &pair.refresh_token);
    let now = amocrm_connector::storage::now();
    let row = (
        c::seller_id.eq(seller.to_owned()),
        c::account_id.eq(pair.account_id as i64),
        c::host.eq(host.to_owned()),
        c::subdomain.eq(host.split('.').next().unwrap_or_default().to_owned()),
        c::status.eq("active"),
        c::access_token_enc.eq(Some(access)),
        c::refresh_token_enc.eq(Some(refresh)),
        c::token_expires_at.eq(Some(now + chrono::TimeDelta::hours(24))),
        c::webhook_token.eq(format!("wh-{seller}")),
        c::pipeline_id.eq(Some(p.id as i64)),
        c::stage_pending.eq(Some(st[0])),
        c::stage_awaiting_payment.eq(Some(st[1])),
        c::stage_paid.eq(Some(st[2])),
        c::stage_shipping.eq(Some(st[3])),
        c::stage_completed.eq(Some(142i64)),
        c::stage_cancelled.eq(Some(143i64)),
        c::field_order_number_id.eq(Some(f[0].id as i64)),
        c::field_order_link_id.eq(Some(f[1].id as i64)),
        c::provisioning_state.eq("complete"),
        c::connected_at.eq(now),
        c::created_at.eq(now),
        c::updated_at.eq(now),
    );
    state
        .db
        .run(move |conn| {
            diesel::insert_into(c::table)
                .values(row.clone())
                .execute(conn)
                .map_err(StorageError::from)
        })
        .await
        .expect("connection row");
}

/// Plain leads: no note, no products, no task, a new contact per order (the push before deals existed).
async fn plain_settings(state: &Context, seller: &str) {
    use amocrm_connector::domain::settings::{MatchMode, ProductsMode, SellerSettings};
    let mut s = SellerSettings::default();
    s.items.note = false;
    s.items.products = ProductsMode::Off;
    s.contacts.match_mode = MatchMode::Off;
    state
        .db
        .settings()
        .save(amocrm_connector::storage::settings::SettingsWrite {
            seller_id: seller.to_owned(),
            settings: s,
            pipeline: None,
            event: None,
        })
        .await
        .expect("settings");
}

async fn scenario(sellers: usize, orders: usize) {
    let sandbox = Sandbox::start(SandboxConfig {
        accounts: Vec::new(),
        rate_limit_rps: 7,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let (db_url, _dir) = database();
    let app = start(&sandbox, &db_url).await;
    let state = app.state.clone();
    let hosts: Vec<(String, String)> = (0..sellers)
        .map(|i| (format!("seller-{i:03}"), format!("bench{i:03}.amocrm.ru")))
        .collect();
    for (seller, host) in &hosts {
        sandbox.add_account(host);
        connect(&state, &sandbox, seller, host).await;
        plain_settings(&state, seller).await;
    }

    let setup = Instant::now();
    for i in 0..orders {
        let (seller, _) = &hosts[i % sellers];
        let body = json!({
            "seller_id": seller,
            "order_number": format!("B{i:06}"),
            "total_amount": 150000,
            "items": [{"product_id": "sku-1", "name": "Choynak", "quantity": 2, "price": 75000}],
            "customer": {"name": "Ali Valiyev", "phone": "+998901234567", "email": "ali@example.com"},
            "url": format!("https://market.example/orders/B{i:06}"),
        });
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
    for (_, host) in &hosts {
        let counters = sandbox.counters(host);
        rate_limited += counters.rate_limited;
        complex += counters.complex_calls;
        leads += sandbox.leads(host).len();
    }
    let secs = elapsed.as_secs_f64();
    let total_rate = orders as f64 / secs;
    let per_account = total_rate / sellers as f64;
    let backend = if db_url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    println!("order push: {orders} orders, {sellers} seller(s), {backend}");
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
    let sandbox = Sandbox::start(SandboxConfig {
        accounts: Vec::new(),
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let mut cfg = amocrm_client::AmoConfig::new(
        CLIENT_ID,
        SecretString::from("bench-client-secret"),
        url::Url::parse("http://127.0.0.1:1/cb").expect("url"),
    );
    cfg.account_url_template = sandbox.account_url_template();
    let client = amocrm_client::AmoClient::new(cfg).expect("client");
    let per = orders / sellers;
    let mut accounts = Vec::new();
    for i in 0..sellers {
        let host = format!("base{i:03}.amocrm.ru");
        sandbox.add_account(&host);
        let pair = sandbox.issue_tokens(CLIENT_ID, &host);
        let p = sandbox
            .pipelines(&host)
            .into_iter()
            .next()
            .expect("pipeline");
        let stage = p.statuses.iter().find(|s| s.type_ == 0).expect("stage").id;
        let h = AccountHost::parse(&host, &client.config().allowed_domains).expect("host");
        accounts.push((h, SecretString::from(pair.access_token), p.id, stage));
    }
    let started = Instant::now();
    let runs = accounts
        .iter()
        .enumerate()
        .map(|(i, (host, token, pipeline, stage))| {
            let client = client.clone();
            async move {
                let leads: Vec<amocrm_client::ComplexLead> = (0..per)
                    .map(|j| amocrm_client::ComplexLead {
                        name: format!("Buyurtma #{i}-{j}"),
                        price: 150_000,
                        pipeline_id: *pipeline,
                        status_id: *stage,
                        request_id: format!("{i}-{j}"),
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
    println!(
        "  baseline, client straight to the sandbox (no database, no service): {secs:.2} s, {:.1} orders/s per account",
        orders as f64 / secs / sellers as f64
    );
    sandbox.stop().await;
}

fn main() {
    let args = args();
    // Warnings (429s, ambiguous answers) are printed; RUST_LOG=debug shows every call.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cores} cores, {}", std::env::consts::ARCH);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
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
    let sandbox = Sandbox::start(SandboxConfig {
        accounts: Vec::new(),
        rate_limit_rps: 7,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let (db_url, _dir) = database();
    let app = start(&sandbox, &db_url).await;
    let state = app.state.clone();
    let (seller, host) = ("deal-seller", "deal.amocrm.ru");
    sandbox.add_account(host);
    sandbox.enable_products(host, None).expect("products");
    for b in 0..DEAL_BUYERS {
        let seed = amocrm_sandbox::ContactSeed {
            name: format!("Xaridor {b}"),
            phones: vec![deal_phone(b)],
            ..amocrm_sandbox::ContactSeed::default()
        };
        sandbox.add_contact(host, seed).expect("contact");
    }
    connect(&state, &sandbox, seller, host).await;
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
    let backend = if db_url.starts_with("sqlite") {
        "sqlite"
    } else {
        "postgres"
    };
    println!(
        "deal push: {orders} orders, 1 seller, {backend}, first-time buyers {new_buyers} % ({fresh})"
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
