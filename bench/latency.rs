//! Latency benchmark: how long until an accepted order is a deal. Orders are POSTed to the running service
//! (`/api/v1/sales/orders`, 202) at a steady rate spread over many sellers; the sandbox notes when each
//! `leads/complex` carrying an order is handled. Added latency = that moment − the 202 − the sandbox's
//! configured answer latency (what amoCRM itself takes), per order: p50/p90/p99/max.
//!
//! ```sh
//! cargo bench --bench latency                       # 10/s over 10, 100/s over 1,000, 1,000/s over 10,000
//! cargo bench --bench latency -- --quick            # shorter runs
//! cargo bench --bench latency -- --rates 100 --sellers 1000 --seconds 20 --deal full
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:55432/app cargo bench --bench latency
//! ```
//!
//! `--deal plain` (no note, no products), `--deal full` (note, products, buyer matched by phone; the
//! default settings), or both (the default). `--grid` runs every rate against every seller count.
//! `--amo-latency-ms MS`: the sandbox answers each request after MS (default 0).
#![expect(clippy::expect_used, reason = "a benchmark fails loudly")]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amocrm_sandbox::Faults;
use common::{Database, Deal};
use serde_json::json;

struct Run {
    rate: usize,
    sellers: usize,
    deal: Deal,
}

async fn scenario(run: &Run, seconds: f64, amo_latency_ms: u64, pg: Option<&str>) {
    let sandbox = common::sandbox(2).await;
    let db = Database::fresh(pg);
    let (app, port) =
        common::start_service(&sandbox, &db.url, &[("RUN_WORKERS", "true".into())]).await;
    let state = app.state.clone();
    let trigger = app.shutdown_trigger();
    let serving = tokio::spawn(app.run_until_stopped());
    let seeded = common::seed_sellers(
        &state.db,
        &state.keys,
        &sandbox,
        0..run.sellers,
        run.deal,
        chrono::TimeDelta::hours(24),
    )
    .await;
    if amo_latency_ms > 0 {
        for i in 0..run.sellers {
            sandbox.set_faults(
                &common::host(i),
                Faults {
                    latency_ms: amo_latency_ms,
                    ..Faults::default()
                },
            );
        }
    }
    let (_, key) = amocrm_connector::services::api_keys::create(
        &state.db,
        "bench",
        amocrm_connector::services::api_keys::Tier::Enterprise,
    )
    .await
    .expect("api key");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/api/v1/sales/orders");
    let total = ((run.rate as f64 * seconds).round() as usize).max(1);
    let accepted: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut sends = Vec::with_capacity(total);
    for i in 0..total {
        let at = started + Duration::from_secs_f64(i as f64 / run.rate as f64);
        tokio::time::sleep_until(at.into()).await;
        // Sellers in a scattered order, so consecutive orders rarely share an account.
        let seller = common::seller_id((i * 7919) % run.sellers);
        let number = format!("L{i:07}");
        let body = json!({
            "seller_id": seller,
            "order_number": number,
            "total_amount": 150000,
            "items": [{"product_id": format!("sku-{}", i % 40), "name": "Choynak", "quantity": 2, "price": 75000}],
            "customer": {"name": "Ali Valiyev", "phone": format!("+99890{:07}", i % 10_000_000), "email": "ali@example.com"},
            "url": format!("https://market.example/orders/{number}"),
        });
        let (client, url, key, accepted, refused) = (
            client.clone(),
            url.clone(),
            key.clone(),
            accepted.clone(),
            refused.clone(),
        );
        sends.push(tokio::spawn(async move {
            let resp = client
                .post(&url)
                .bearer_auth(&key)
                .header("x-api-version", "v1")
                .json(&body)
                .send()
                .await;
            let now = Instant::now();
            match resp {
                Ok(r) if r.status().as_u16() == 202 => {
                    let v: serde_json::Value = r.json().await.unwrap_or_default();
                    if let Some(id) = v["data"]["id"].as_str() {
                        accepted.lock().expect("lock").insert(id.to_owned(), now);
                    }
                }
                Ok(r) => {
                    if refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                        eprintln!(
                            "order refused: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                    }
                }
                Err(e) => {
                    if refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                        eprintln!("order not sent: {e}");
                    }
                }
            }
        }));
    }
    let send_secs = started.elapsed().as_secs_f64();
    for s in sends {
        let _ = s.await;
    }
    // Arrivals: until every accepted order has its lead, or 60 s of no progress.
    let n_accepted = accepted.lock().expect("lock").len();
    let mut arrived: HashMap<String, Instant> = HashMap::with_capacity(n_accepted);
    let mut last_progress = Instant::now();
    while arrived.len() < n_accepted && last_progress.elapsed() < Duration::from_secs(60) {
        let got = sandbox.take_complex_arrivals();
        if !got.is_empty() {
            last_progress = Instant::now();
        }
        for (id, at) in got {
            arrived.entry(id).or_insert(at);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (id, at) in sandbox.take_complex_arrivals() {
        arrived.entry(id).or_insert(at);
    }
    let answer = Duration::from_millis(amo_latency_ms);
    let accepted = accepted.lock().expect("lock").clone();
    let mut added: Vec<f64> = accepted
        .iter()
        .filter_map(|(id, t0)| arrived.get(id).map(|t1| (*t1, *t0)))
        .map(|(t1, t0)| {
            t1.saturating_duration_since(t0)
                .saturating_sub(answer)
                .as_secs_f64()
                * 1000.0
        })
        .collect();
    added.sort_by(f64::total_cmp);
    let target = match (run.rate, run.sellers) {
        (100, 1000) => Some(50.0),
        (1000, 10_000) => Some(250.0),
        _ => None,
    };
    let p99 = common::pct(&added, 0.99);
    let verdict = match target {
        Some(t) if p99 <= t => format!("target p99 <= {t:.0} ms: met"),
        Some(t) => format!("target p99 <= {t:.0} ms: MISSED"),
        None => "no target".into(),
    };
    let deal = match run.deal {
        Deal::Plain => "plain",
        Deal::Full => "full",
    };
    println!(
        "latency {deal} {} orders/s over {} sellers, {}: sent {total} in {send_secs:.1} s, accepted {n_accepted}, refused {}, leads {} (seeded in {:.1} s)",
        run.rate,
        run.sellers,
        db.backend(),
        refused.load(std::sync::atomic::Ordering::Relaxed),
        added.len(),
        seeded.as_secs_f64(),
    );
    println!(
        "  added ms: p50 {:.1} p90 {:.1} p99 {:.1} max {:.1} (amoCRM answer {amo_latency_ms} ms subtracted); {verdict}",
        common::pct(&added, 0.5),
        common::pct(&added, 0.9),
        p99,
        added.last().copied().unwrap_or(f64::NAN),
    );
    println!(
        "RESULT latency deal={deal} backend={} rate={} sellers={} n={} p50={:.2} p90={:.2} p99={:.2} max={:.2}",
        db.backend(),
        run.rate,
        run.sellers,
        added.len(),
        common::pct(&added, 0.5),
        common::pct(&added, 0.9),
        p99,
        added.last().copied().unwrap_or(f64::NAN),
    );
    trigger.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(30), serving).await;
    sandbox.stop().await;
}

fn main() {
    common::init_logs("error");
    let quick = common::quick();
    let seconds: f64 = common::arg("--seconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3.0 } else { 10.0 });
    let amo_latency_ms: u64 = common::arg("--amo-latency-ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rates = common::list("--rates").unwrap_or_else(|| vec![10, 100, 1000]);
    let sellers = common::list("--sellers").unwrap_or_else(|| vec![10, 1000, 10_000]);
    let pairs: Vec<(usize, usize)> = if common::flag("--grid") || rates.len() != sellers.len() {
        rates
            .iter()
            .flat_map(|r| sellers.iter().map(move |s| (*r, *s)))
            .collect()
    } else {
        rates.iter().copied().zip(sellers.iter().copied()).collect()
    };
    let deals = match common::arg("--deal").as_deref() {
        Some("plain") => vec![Deal::Plain],
        Some("full") => vec![Deal::Full],
        _ => vec![Deal::Plain, Deal::Full],
    };
    let backends = common::backends();
    println!("latency benchmark: {}", common::machine());
    println!("  {seconds} s of orders per run; sandbox answer latency {amo_latency_ms} ms");
    let rt = common::runtime();
    for pg in &backends {
        for deal in &deals {
            for (rate, sellers) in &pairs {
                let run = Run {
                    rate: *rate,
                    sellers: *sellers,
                    deal: *deal,
                };
                rt.block_on(scenario(&run, seconds, amo_latency_ms, pg.as_deref()));
            }
        }
    }
}
