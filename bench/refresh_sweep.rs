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
#![expect(clippy::expect_used, reason = "a benchmark fails loudly")]

mod common;

use std::time::{Duration, Instant};

use amocrm_connector::domain::status::{ConnectionStatus, ProvisioningState};
use amocrm_connector::services::refresh::{self, SweepOutcome};
use amocrm_connector::storage as st;
use amocrm_connector::storage::connections::{self, NewConnection};
use amocrm_sandbox::Faults;
use common::{CLIENT_ID, Database};

fn arg(name: &str) -> Option<u64> {
    common::arg(name).and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() {
    let n = arg("--connections").unwrap_or(10_000) as usize;
    let latency = arg("--latency-ms").unwrap_or(50);
    let concurrency = arg("--concurrency").unwrap_or(128);

    let sandbox = common::sandbox(2).await;
    let db = Database::fresh(common::pg_url().as_deref());
    let (app, _port) = common::start_service(
        &sandbox,
        &db.url,
        &[
            ("REFRESH_CONCURRENCY", concurrency.to_string()),
            ("RUN_WORKERS", "false".into()),
            ("DATABASE_POOL_SIZE", "8".into()),
        ],
    )
    .await;
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

    println!(
        "refresh sweep benchmark ({}, {})",
        db.backend(),
        common::machine()
    );
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
}
