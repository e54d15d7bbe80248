//! Refresh sweep benchmark: N due connections (10,000 by default), each its own account in the in-process
//! amoCRM sandbox answering every request after 50 ms, refreshed by one sweep; prints the time and the number
//! of token exchanges the sandbox counted (target: under 20 s, exactly N exchanges).
//!
//! ```sh
//! cargo bench --bench refresh_sweep
//! cargo bench --bench refresh_sweep -- --connections 2000 --latency-ms 50 --concurrency 128
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:55432/app cargo bench --bench refresh_sweep
//! ```
//!
//! Seeding (accounts, grants, rows) is not timed; the timed part is `services::refresh::sweep`.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests fail loudly on unexpected errors"
)]

use amocrm_connector::domain::status::{ConnectionStatus, ProvisioningState};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use amocrm_connector::app::Application;
use amocrm_connector::config::Settings;
use amocrm_connector::services::refresh::{self, SweepOutcome};
use amocrm_connector::storage as st;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_connector::storage::connections::{self, NewConnection};
use amocrm_sandbox::{Faults, Integration, Sandbox, SandboxConfig};
use diesel::Connection as _;
use diesel::connection::SimpleConnection;

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-client-secret";

fn arg(name: &str) -> Option<u64> {
    let raw: Vec<String> = std::env::args().collect();
    raw.iter()
        .position(|a| a == name)
        .and_then(|i| raw.get(i + 1))
        .and_then(|v| v.parse().ok())
}

/// A fresh database: a temp SQLite file, or a new schema in `BENCH_DATABASE_URL`.
fn database() -> (String, Option<tempfile::TempDir>, Option<(String, String)>) {
    match std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(admin) => {
            let schema = format!(
                "bench_{}",
                amocrm_connector::domain::ids::random_token(10).to_lowercase()
            );
            let mut c = diesel::PgConnection::establish(&admin).expect("BENCH_DATABASE_URL");
            c.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
            let sep = if admin.contains('?') { '&' } else { '?' };
            (
                format!("{admin}{sep}options=-csearch_path%3D{schema}"),
                None,
                Some((admin, schema)),
            )
        }
        None => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            (url, Some(dir), None)
        }
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cpus} cores, {model}")
}

#[tokio::main]
async fn main() {
    let n = arg("--connections").unwrap_or(10_000) as usize;
    let latency = arg("--latency-ms").unwrap_or(50);
    let concurrency = arg("--concurrency").unwrap_or(128);

    let sandbox = Sandbox::start(SandboxConfig {
        accounts: Vec::new(),
        workers: 2,
        ..SandboxConfig::default()
    })
    .await
    .expect("sandbox");
    let (db_url, _dir, pg) = database();
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in [
        ("DATABASE_URL", db_url.clone()),
        ("LISTEN_ADDR", "127.0.0.1:0".into()),
        ("TOKEN_ENCRYPTION_KEYS", Keyring::generate_entry("bench")),
        ("AMOCRM_CLIENT_ID", CLIENT_ID.into()),
        ("AMOCRM_CLIENT_SECRET", CLIENT_SECRET.into()),
        (
            "AMOCRM_ACCOUNT_URL_TEMPLATE",
            sandbox.account_url_template(),
        ),
        ("AMOCRM_AUTHORIZE_URL", sandbox.authorize_url()),
        ("REFRESH_SCHEDULE", String::new()),
        ("REFRESH_CONCURRENCY", concurrency.to_string()),
        ("RUN_WORKERS", "false".into()),
        ("LOG_FORMAT", "json".into()),
        ("DATABASE_POOL_SIZE", "8".into()),
    ] {
        env.insert(k.to_owned(), v);
    }
    let settings = Settings::from_env(&env).expect("settings");
    sandbox.add_integration(Integration::new(
        CLIENT_ID,
        CLIENT_SECRET,
        settings.amocrm_redirect_uri.to_string(),
    ));
    let app = Application::build(settings).await.expect("app");
    let state = app.state.clone();

    // Seed: one account and one real grant per connection, all due now.
    let t = Instant::now();
    let hosts: Vec<String> = (0..n).map(|i| format!("bench{i}.amocrm.ru")).collect();
    let mut rows = Vec::with_capacity(n);
    let now = st::now();
    for (i, host) in hosts.iter().enumerate() {
        sandbox.add_account(host);
        let pair = sandbox.issue_tokens(CLIENT_ID, host);
        let seller = format!("seller-{i}");
        let (access, refresh) = connections::seal_tokens(
            &state.keys,
            &seller,
            &pair.access_token,
            &pair.refresh_token,
        );
        rows.push(NewConnection {
            seller_id: seller,
            account_id: pair.account_id as i64,
            host: host.clone(),
            subdomain: format!("bench{i}"),
            api_domain: None,
            status: ConnectionStatus::Active,
            access_token_enc: Some(access),
            refresh_token_enc: Some(refresh),
            token_expires_at: Some(now + chrono::Duration::minutes(10)),
            token_version: 1,
            last_refreshed_at: Some(now),
            refresh_failures: 0,
            webhook_token: amocrm_connector::domain::ids::random_token(40),
            provisioning_state: ProvisioningState::Complete,
            provisioning_attempts: 0,
            connected_at: now,
            created_at: now,
            updated_at: now,
        });
    }
    for chunk in rows.chunks(1000) {
        state
            .db
            .connections()
            .insert_many(chunk.to_vec())
            .await
            .expect("seed");
    }
    for host in &hosts {
        sandbox.set_faults(
            host,
            Faults {
                latency_ms: latency,
                ..Faults::default()
            },
        );
    }
    let seeded = t.elapsed();

    let t = Instant::now();
    let outcome = refresh::sweep(&state, Duration::from_secs(600))
        .await
        .expect("sweep");
    let elapsed = t.elapsed();
    let report = match outcome {
        SweepOutcome::Ran(r) | SweepOutcome::Joined(r) => r,
        SweepOutcome::AlreadyRunning => panic!("another sweep is running"),
    };
    let exchanges: u64 = hosts.iter().map(|h| sandbox.counters(h).refreshes).sum();
    let rejected: u64 = hosts
        .iter()
        .map(|h| sandbox.counters(h).rejected_refreshes)
        .sum();

    let backend = if db_url.starts_with("postgres") {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("refresh sweep benchmark ({backend}, {})", machine());
    println!(
        "  connections: {n}, sandbox latency: {latency} ms per request, concurrency: {concurrency}"
    );
    println!("  seeding (not timed): {:.1} s", seeded.as_secs_f64());
    println!(
        "  sweep: {:.2} s ({:.0} refreshes/s); target < 20 s: {}",
        elapsed.as_secs_f64(),
        report.refreshed as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        if elapsed < Duration::from_secs(20) {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  report: due {}, refreshed {}, failed {}, skipped {}",
        report.due, report.refreshed, report.failed, report.skipped
    );
    println!(
        "  token exchanges at the sandbox: {exchanges} (rejected {rejected}); target exactly {n}: {}",
        if exchanges == n as u64 {
            "met"
        } else {
            "MISSED"
        }
    );

    drop(app);
    sandbox.stop().await;
    if let Some((admin, schema)) = pg
        && let Ok(mut c) = diesel::PgConnection::establish(&admin)
    {
        let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    }
}
