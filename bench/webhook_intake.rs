//! Benchmark: amoCRM webhook intake and event delivery.
//!
//! `cargo bench --bench webhook_intake` (release build). Prints, for SQLite and — when
//! `TEST_DATABASE_URL` (or `BENCH_DATABASE_URL`) names a PostgreSQL server — for PostgreSQL:
//! - requests per second and p50/p99 latency of `POST /webhooks/amocrm/{token}` (every body committed
//!   before the 200), beside a bare actix-web handler that answers 200 without doing anything, measured in
//!   the same run with the same client and concurrency;
//! - events per second delivered (signed POSTs) to a local receiver by the delivery worker.
//!
//! Knobs (environment): `BENCH_REQUESTS` (default 20000), `BENCH_CONCURRENCY` (32), `BENCH_EVENTS` (5000).

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::{App, Handler, HttpResponse, HttpServer, Responder, web};
use amocrm_connector::app::Application;
use amocrm_connector::config::Settings;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_connector::storage::connections::seal_tokens;
use amocrm_connector::storage::events::{self, NewEvent};
use amocrm_connector::storage::schema::amocrm_connections as c;
use amocrm_connector::storage::{self as st, deliveries, inbox};
use diesel::prelude::*;

const BODY: &str = include_str!("../tests/fixtures/amocrm/webhook-status-lead-1.txt");

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Figures {
    requests: usize,
    ok: usize,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl Figures {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

/// Sends `total` POSTs of `body` to `url` from `concurrency` workers and measures each one.
async fn hammer(url: &str, body: &'static str, total: usize, concurrency: usize) -> Figures {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let url = url.to_owned();
    let posted = common::post_forms(&client, concurrency, total, move |client, _, _| {
        client.post(&url).body(body)
    })
    .await;
    let all = &posted.latencies_ms;
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Figures {
        requests: all.len(),
        ok: posted.ok,
        seconds: posted.seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

/// Answers every request with `handler` on a free local port, in the background: the port, and the handle
/// that stops it.
fn serve<H>(handler: H) -> (u16, ServerHandle)
where
    H: Handler<(web::Bytes,)> + Send,
    H::Output: Responder + 'static,
{
    let server = HttpServer::new(move || App::new().default_service(web::to(handler.clone())))
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind");
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (port, handle)
}

async fn run_backend(label: &str, pg: Option<&str>) {
    let database = common::Database::fresh(pg);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut env: HashMap<String, String> = HashMap::new();
    env.insert("DATABASE_URL".into(), database.url.clone());
    env.insert("LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("PUBLIC_BASE_URL".into(), format!("http://127.0.0.1:{port}"));
    env.insert(
        "TOKEN_ENCRYPTION_KEYS".into(),
        Keyring::generate_entry("bench"),
    );
    env.insert("AMOCRM_CLIENT_ID".into(), "bench".into());
    env.insert("AMOCRM_CLIENT_SECRET".into(), "bench-secret".into());
    env.insert("REFRESH_SCHEDULE".into(), String::new());
    env.insert("RUN_WORKERS".into(), "false".into());
    env.insert("LOG_FORMAT".into(), "json".into());
    env.insert("WEBHOOK_ALLOWED_HOSTS".into(), "127.0.0.1".into());
    let settings = Settings::from_env(&env).expect("settings");
    let app = Application::build_with_listener(settings, Some(listener))
        .await
        .expect("app");
    let state = app.state.clone();
    tokio::spawn(app.run_until_stopped());

    // The connection the sample body belongs to (account subdomain `test000002`).
    let token = amocrm_connector::domain::ids::random_token(32);
    let keys = state.keys.clone();
    let tok = token.clone();
    state
        .db
        .run(move |conn| {
            let (a, r) = seal_tokens(&keys, "bench-seller", "access", "refresh");
            let now = st::now();
            diesel::insert_into(c::table)
                .values((
                    c::seller_id.eq("bench-seller"),
                    c::account_id.eq(10216991i64),
                    c::host.eq("test000002.amocrm.ru"),
                    c::subdomain.eq("test000002"),
                    c::status.eq("active"),
                    c::access_token_enc.eq(Some(a)),
                    c::refresh_token_enc.eq(Some(r)),
                    c::webhook_token.eq(&tok),
                    c::connected_at.eq(now),
                    c::created_at.eq(now),
                    c::updated_at.eq(now),
                ))
                .execute(conn)?;
            Ok(())
        })
        .await
        .expect("connection");

    let total = knob("BENCH_REQUESTS", 20_000);
    let concurrency = knob("BENCH_CONCURRENCY", 32);
    let (bare_port, bare) = serve(|_body: web::Bytes| async {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(r#"{"data":{"status":"accepted"}}"#)
    });
    let bare_url = format!("http://127.0.0.1:{bare_port}");
    let intake_url = format!("http://127.0.0.1:{port}/webhooks/amocrm/{token}");
    // Warm both up (connections, pool, page cache), then measure alternately.
    hammer(&bare_url, BODY, 500, concurrency).await;
    hammer(&intake_url, BODY, 500, concurrency).await;
    let b = hammer(&bare_url, BODY, total, concurrency).await;
    let i = hammer(&intake_url, BODY, total, concurrency).await;
    let stored = state
        .db
        .run(|conn| inbox::count(conn, None))
        .await
        .expect("count");
    println!(
        "\n== {label}: webhook intake, {total} requests, concurrency {concurrency}, body {} bytes",
        BODY.len()
    );
    println!(
        "{:<28} {:>9} {:>10} {:>9} {:>9}",
        "target", "ok", "req/s", "p50 ms", "p99 ms"
    );
    for (name, f) in [
        ("bare actix-web handler", &b),
        ("webhook intake (stored)", &i),
    ] {
        println!(
            "{:<28} {:>9} {:>10.0} {:>9.2} {:>9.2}",
            name,
            format!("{}/{}", f.ok, f.requests),
            f.rps(),
            f.p50_ms,
            f.p99_ms
        );
    }
    println!(
        "intake/bare throughput: {:.0} %   bodies stored: {stored} (expected {})   p99 target < 50 ms: {}",
        100.0 * i.rps() / b.rps(),
        total + 500,
        if i.p99_ms < 50.0 { "met" } else { "MISSED" }
    );
    bare.stop(false).await;

    // Event delivery to a local receiver.
    let n_events = knob("BENCH_EVENTS", 5_000);
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let (rport, rhandle) = serve(move |_b: web::Bytes| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::Relaxed);
            HttpResponse::Ok().finish()
        }
    });
    let client = reqwest::Client::new();
    let key = amocrm_connector::services::api_keys::create(
        &state.db,
        "bench",
        amocrm_connector::services::api_keys::Tier::Enterprise,
    )
    .await
    .expect("key")
    .1;
    let resp = client
        .post(format!("http://127.0.0.1:{port}/api/v1/webhooks"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"url": format!("http://127.0.0.1:{rport}/in"), "events": "*", "secret": "bench"}))
        .send()
        .await
        .expect("subscribe");
    assert_eq!(resp.status().as_u16(), 201);
    let sellers = 50;
    let mut batch = Vec::new();
    for n in 0..n_events {
        batch.push(NewEvent::new(
            "order.status_changed",
            &format!("seller-{}", n % sellers),
            serde_json::json!({"lead_id": n, "status": "paid"}),
            None,
        ));
    }
    let batch = Arc::new(batch);
    state
        .db
        .run(move |conn| {
            conn.transaction(|c| {
                for ev in batch.iter() {
                    events::record(c, ev)?;
                }
                Ok::<_, st::StorageError>(())
            })
        })
        .await
        .expect("events");
    let started = Instant::now();
    let worker = amocrm_connector::workers::delivery::spawn(state.clone());
    let deadline = started + Duration::from_secs(600);
    loop {
        let delivered = state
            .db
            .run(|conn| {
                deliveries::count_by_state(
                    conn,
                    amocrm_connector::domain::status::DeliveryState::Delivered,
                )
            })
            .await
            .expect("count");
        if delivered as usize >= n_events || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    worker.abort();
    println!(
        "\n== {label}: event delivery, {n_events} events of {sellers} sellers to one local receiver"
    );
    println!(
        "delivered {} in {secs:.2} s: {:.0} events/s (in order per seller, signed)",
        received.load(Ordering::Relaxed),
        received.load(Ordering::Relaxed) as f64 / secs
    );
    rhandle.stop(false).await;
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    run_backend("SQLite", None).await;
    let pg = std::env::var("BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("TEST_DATABASE_URL"))
        .ok()
        .filter(|u| u.starts_with("postgres"));
    match pg {
        Some(url) => run_backend("PostgreSQL", Some(&url)).await,
        None => {
            println!("\n(PostgreSQL skipped: set TEST_DATABASE_URL=postgres://… to include it)")
        }
    }
}
