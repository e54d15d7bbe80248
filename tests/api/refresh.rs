//! Token refresh against the sandbox: single flight across triggers and instances, failure classes, the
//! grace rule, `/refresh` and its secret, the on-demand provider, the schedule and the CLI.

use amocrm_connector::domain::status::ConnectionStatus;
use std::time::Duration;

use amocrm_connector::services::refresh::{self, Need, SweepOutcome};
use amocrm_connector::services::tokens::{self, TokenError};
use amocrm_connector::storage::schema::amocrm_connections as c;
use amocrm_connector::storage::{self as st, leases};
use diesel::prelude::*;
use serde_json::Value;

use crate::support::{
    HOST, TestApp, assert_error, connection, env_vars, event_count, refresh_now, seed_connection,
    spawn_app_with, status_of, wait_until,
};

const SECRET: &str = "refresh-secret-0123456789";

async fn spawn() -> TestApp {
    spawn_app_with(env_vars(&[("REFRESH_SECRET", SECRET)])).await
}

/// Makes every connection's access token expire in `secs` seconds (as if time had passed).
async fn expire_in(app: &TestApp, secs: i64) {
    let at = st::now() + chrono::Duration::seconds(secs);
    app.update(c::table, c::token_expires_at.eq(Some(at))).await;
}

/// `seller-1` connected to `HOST`, its access token expiring in 30 s.
async fn seed_due(app: &TestApp) {
    seed_connection(app, "seller-1", HOST).await;
    expire_in(app, 30).await;
}

/// The back-off after a failure has passed.
async fn backoff_over(app: &TestApp) {
    let now = st::now();
    app.update(c::table, c::next_refresh_at.eq(Some(now))).await;
}

async fn sweep(app: &TestApp) -> refresh::SweepReport {
    match refresh::sweep(&app.state, Duration::from_secs(60))
        .await
        .unwrap()
    {
        SweepOutcome::Ran(r) | SweepOutcome::Joined(r) => r,
        SweepOutcome::AlreadyRunning => panic!("sweep still running"),
    }
}

/// The connection works: a real API call through the token provider succeeds.
async fn works(app: &TestApp, seller: &str) {
    let account = tokens::with_api(&app.state, seller, |amo| async move {
        amo.api().account().await
    })
    .await
    .expect("the connection works");
    assert!(account.id > 0);
}

#[tokio::test]
async fn fifty_concurrent_triggers_refresh_a_due_connection_exactly_once() {
    let app = spawn().await;
    seed_due(&app).await;
    let before = connection(&app, "seller-1").await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..50 {
        let state = app.state.clone();
        let http = app.http.clone();
        let url = app.url("/refresh");
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => {
                    refresh::sweep(&state, Duration::from_secs(60))
                        .await
                        .unwrap();
                }
                1 => {
                    let resp = http
                        .post(&url)
                        .header("X-Refresh-Secret", SECRET)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status().as_u16(), 200);
                }
                _ => {
                    tokens::access(&state, "seller-1").await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counters = app.sandbox.counters(HOST);
    assert_eq!(counters.refreshes, 1, "exactly one refresh reached amoCRM");
    assert_eq!(counters.rejected_refreshes, 0);
    let after = connection(&app, "seller-1").await.unwrap();
    assert_eq!(after.status, ConnectionStatus::Active);
    assert_eq!(after.token_version, before.token_version + 1);
    assert!(after.token_expires_at.unwrap() > st::now() + chrono::Duration::hours(23));
    assert!(after.refresh_lease_owner.is_none());
    works(&app, "seller-1").await;
}

#[tokio::test]
async fn two_instances_sweeping_200_due_connections_refresh_each_exactly_once() {
    let app = spawn().await;
    let hosts: Vec<String> = (0..200).map(|i| format!("shop{i}.amocrm.ru")).collect();
    for (i, host) in hosts.iter().enumerate() {
        seed_connection(&app, &format!("seller-{i}"), host).await;
    }
    expire_in(&app, 60).await;
    let peer = app.spawn_peer().await;

    // Both instances sweep (job lease) and also run the unguarded pass (row leases alone) at once.
    let (a, b, c1, c2) = tokio::join!(
        refresh::sweep(&app.state, Duration::from_secs(120)),
        refresh::sweep(&peer.state, Duration::from_secs(120)),
        refresh::refresh_due(&app.state),
        refresh::refresh_due(&peer.state),
    );
    let refreshed: u64 = [a.unwrap(), b.unwrap()]
        .iter()
        .filter_map(|o| match o {
            SweepOutcome::Ran(r) => Some(r.refreshed),
            _ => None,
        })
        .sum::<u64>()
        + c1.unwrap().refreshed
        + c2.unwrap().refreshed;
    assert_eq!(
        refreshed, 200,
        "each connection refreshed by exactly one caller"
    );
    for (i, host) in hosts.iter().enumerate() {
        let counters = app.sandbox.counters(host);
        assert_eq!(counters.refreshes, 1, "{host}");
        assert_eq!(counters.rejected_refreshes, 0, "{host}");
        let row = connection(&app, &format!("seller-{i}")).await.unwrap();
        assert_eq!(row.status, ConnectionStatus::Active, "{host}");
    }
    // A sweep now finds nothing due.
    assert_eq!(sweep(&peer).await.due, 0);
}

#[tokio::test]
async fn a_second_sweep_caller_gets_the_running_sweeps_result() {
    let app = spawn().await;
    for i in 0..5 {
        seed_connection(&app, &format!("seller-{i}"), &format!("shop{i}.amocrm.ru")).await;
    }
    expire_in(&app, 60).await;
    for i in 0..5 {
        app.set_faults(&format!("shop{i}.amocrm.ru"), |f| f.latency_ms = 300);
    }
    let (a, b) = tokio::join!(
        refresh::sweep(&app.state, Duration::from_secs(60)),
        refresh::sweep(&app.state, Duration::from_secs(60)),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let ran = [a, b]
        .iter()
        .filter(|o| matches!(o, SweepOutcome::Ran(_)))
        .count();
    assert_eq!(ran, 1, "{a:?} {b:?}");
    assert_eq!(a.report(), b.report());
    assert_eq!(a.report().unwrap().refreshed, 5);
    // One that will not wait is told a sweep is running.
    let lease = app
        .db
        .run(|conn| {
            let now = st::now();
            leases::try_acquire(
                conn,
                refresh::SWEEP_JOB,
                "someone",
                now,
                now + chrono::Duration::minutes(1),
            )
        })
        .await
        .unwrap();
    assert!(lease);
    let outcome = refresh::sweep(&app.state, Duration::ZERO).await.unwrap();
    assert_eq!(outcome, SweepOutcome::AlreadyRunning);
}

#[tokio::test]
async fn a_revoked_grant_ends_refresh_failed_with_an_event() {
    let app = spawn().await;
    seed_connection(&app, "seller-1", HOST).await;
    // Revoke in amoCRM without the uninstall hook reaching us, so only the refresh can find out.
    app.sandbox
        .set_disconnect_url("test-client-id", None)
        .unwrap();
    assert!(app.sandbox.revoke_grant(HOST, "test-client-id"));
    expire_in(&app, 30).await;

    let report = sweep(&app).await;
    assert_eq!((report.due, report.failed, report.refreshed), (1, 1, 0));
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.status, ConnectionStatus::RefreshFailed);
    assert_eq!(row.refresh_failures, 1);
    assert!(row.last_error.as_deref().unwrap().contains("refused"));
    assert_eq!(
        event_count(&app, "seller-1", "connection.refresh_failed").await,
        1
    );
    // Work for this seller is held: the provider says reconnect; sweeps leave it alone.
    let err = tokens::access(&app.state, "seller-1").await.unwrap_err();
    assert!(err.needs_reconnect(), "{err:?}");
    assert_eq!(sweep(&app).await.due, 0);
    let v = app.api_json("/api/v1/connections/seller-1").await;
    assert_eq!(v["data"]["status"], "refresh_failed");
    assert_eq!(v["data"]["refresh_failures"], 1);
    assert!(
        v["data"]["last_error"]
            .as_str()
            .unwrap()
            .contains("refused")
    );
}

#[tokio::test]
async fn a_sandbox_500_leaves_the_connection_active_and_it_recovers_on_the_next_sweep() {
    let app = spawn().await;
    seed_due(&app).await;
    app.set_faults(HOST, |f| f.fail_next = 1);
    let report = sweep(&app).await;
    assert_eq!((report.due, report.failed), (1, 1));
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.status, ConnectionStatus::Active);
    assert_eq!(row.refresh_failures, 1);
    assert!(
        row.last_error.as_deref().unwrap().contains("500"),
        "{:?}",
        row.last_error
    );
    assert!(row.next_refresh_at.unwrap() > st::now(), "backing off");
    assert_eq!(sweep(&app).await.due, 0, "not retried during the back-off");

    backoff_over(&app).await;
    let report = sweep(&app).await;
    assert_eq!(report.refreshed, 1);
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!((row.status.as_str(), row.refresh_failures), ("active", 0));
    assert!(row.last_error.is_none());
    works(&app, "seller-1").await;
}

#[tokio::test]
async fn a_refresh_refused_with_429_waits_as_long_as_amocrm_said_and_the_connection_stays_active() {
    let app = spawn().await;
    seed_due(&app).await;
    app.set_faults(HOST, |f| {
        f.force_429_next = 1;
        f.force_429_retry_after_secs = 600;
    });
    let before = st::now();
    let report = sweep(&app).await;
    assert_eq!((report.due, report.failed), (1, 1));
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(
        row.status,
        ConnectionStatus::Active,
        "a 429 is not a dead token"
    );
    assert!(
        row.next_refresh_at.unwrap() >= before + chrono::TimeDelta::seconds(600),
        "not before amoCRM's retry_after: {:?}",
        row.next_refresh_at
    );
    assert_eq!(sweep(&app).await.due, 0, "not retried meanwhile");
    backoff_over(&app).await;
    assert_eq!(sweep(&app).await.refreshed, 1);
    assert_eq!(app.sandbox.counters(HOST).rate_limited, 1);
    works(&app, "seller-1").await;
}

#[tokio::test]
async fn a_refresh_lost_to_a_timeout_is_retried_with_the_old_token_under_the_grace_rule() {
    let app = spawn_app_with(env_vars(&[("AMOCRM_REQUEST_TIMEOUT", "1s")])).await;
    seed_due(&app).await;
    // amoCRM applies the refresh (a new pair exists) but the answer never arrives.
    app.set_faults(HOST, |f| f.drop_after_write_next = 1);
    let report = sweep(&app).await;
    assert_eq!(report.failed, 1);
    assert_eq!(status_of(&app, "seller-1").await, ConnectionStatus::Active);

    backoff_over(&app).await;
    let report = sweep(&app).await;
    assert_eq!(report.refreshed, 1);
    assert_eq!(app.sandbox.counters(HOST).rejected_refreshes, 0);
    assert_eq!(status_of(&app, "seller-1").await, ConnectionStatus::Active);
    works(&app, "seller-1").await;
}

#[tokio::test]
async fn the_refresh_url_refuses_wrong_missing_and_almost_right_secrets_and_does_nothing() {
    let app = spawn().await;
    seed_due(&app).await;
    let almost = format!("{}X", &SECRET[..SECRET.len() - 1]);
    let longer = format!("{SECRET}0");
    let url = app.url("/refresh");
    let attempts = vec![
        app.http.get(&url),
        app.http.post(&url),
        app.http.get(format!("{url}?secret_key=wrong")),
        app.http.get(format!("{url}?secret_key={almost}")),
        app.http
            .post(&url)
            .header("X-Refresh-Secret", almost.clone()),
        app.http.post(&url).bearer_auth(&longer),
        app.http.post(&url).bearer_auth(&SECRET[..SECRET.len() - 1]),
    ];
    for req in attempts {
        assert_error(req.send().await.unwrap(), 401, "INVALID_TOKEN").await;
    }
    assert_eq!(
        app.sandbox.counters(HOST).refreshes,
        0,
        "nothing was refreshed"
    );
    let lease = app
        .db
        .run(|c| leases::get(c, refresh::SWEEP_JOB))
        .await
        .unwrap();
    assert!(lease.is_none(), "no sweep was started");

    // The right secret, by each of the three ways.
    let resp = app
        .http
        .get(format!("{url}?secret_key={SECRET}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"]["due"], 1);
    assert_eq!(v["data"]["refreshed"], 1);
    assert_eq!(v["data"]["failed"], 0);
    assert_eq!(v["data"]["skipped"], 0);
    for req in [
        app.http.post(&url).header("X-Refresh-Secret", SECRET),
        app.http.post(&url).bearer_auth(SECRET),
    ] {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["data"]["due"], 0);
    }
    assert_eq!(app.sandbox.counters(HOST).refreshes, 1);
}

#[tokio::test]
async fn the_refresh_url_does_not_exist_without_a_configured_secret() {
    let app = spawn_app_with(|_| {}).await;
    let resp = app.get("/refresh?secret_key=anything-at-all-here").await;
    assert_eq!(resp.status().as_u16(), 404);
}

#[tokio::test]
async fn a_401_rereads_the_stored_pair_then_refreshes_once() {
    let app = spawn().await;
    seed_connection(&app, "seller-1", HOST).await;
    // amoCRM's clock moves past the access token's expiry: the API answers 401 while we think it is fresh.
    app.sandbox.advance_clock(HOST, 25 * 3600);
    works(&app, "seller-1").await;
    let counters = app.sandbox.counters(HOST);
    assert_eq!(counters.refreshes, 1);
    assert_eq!(counters.unauthorized, 1);
    works(&app, "seller-1").await;
    assert_eq!(app.sandbox.counters(HOST).refreshes, 1);
}

#[tokio::test]
async fn the_provider_refreshes_on_demand_only_when_the_token_is_about_to_expire() {
    let app = spawn().await;
    seed_connection(&app, "seller-1", HOST).await;
    let grant = tokens::access(&app.state, "seller-1").await.unwrap();
    assert_eq!(app.sandbox.counters(HOST).refreshes, 0);
    assert_eq!(grant.host.as_str(), HOST);
    expire_in(&app, 30).await;
    let fresh = tokens::access(&app.state, "seller-1").await.unwrap();
    assert_eq!(app.sandbox.counters(HOST).refreshes, 1);
    assert_eq!(
        fresh.connection.token_version,
        grant.connection.token_version + 1
    );
    assert!(matches!(
        tokens::access(&app.state, "nobody").await,
        Err(TokenError::NotConnected)
    ));
}

#[tokio::test]
async fn an_idle_connection_is_refreshed_daily_even_with_a_valid_token() {
    let app = spawn().await;
    seed_connection(&app, "seller-1", HOST).await;
    assert_eq!(sweep(&app).await.due, 0);
    let long_ago = st::now() - chrono::Duration::hours(25);
    app.update(c::table, c::last_refreshed_at.eq(Some(long_ago)))
        .await;
    let report = sweep(&app).await;
    assert_eq!((report.due, report.refreshed), (1, 1));
}

#[tokio::test]
async fn refreshing_through_the_api_refreshes_now_and_shows_the_connection() {
    let app = spawn().await;
    seed_connection(&app, "seller-1", HOST).await;
    let v = refresh_now(&app, "seller-1").await;
    assert_eq!(v["data"]["status"], "active");
    assert!(v["data"]["last_refreshed_at"].is_string());
    assert_eq!(v["data"]["refresh_failures"], 0);
    assert_eq!(app.sandbox.counters(HOST).refreshes, 1);
    let resp = app
        .api_post_empty("/api/v1/connections/nobody/refresh")
        .await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
}

#[tokio::test]
async fn a_stale_pair_is_not_refreshed_again_when_a_peer_already_did() {
    let app = spawn().await;
    seed_connection(&app, "seller-1", HOST).await;
    let v = connection(&app, "seller-1").await.unwrap().token_version;
    let first = refresh::refresh(&app.state, "seller-1", Need::Stale { version: v })
        .await
        .unwrap();
    assert!(matches!(first, refresh::RefreshOutcome::Refreshed(_)));
    let second = refresh::refresh(&app.state, "seller-1", Need::Stale { version: v })
        .await
        .unwrap();
    assert!(matches!(second, refresh::RefreshOutcome::Fresh(_)));
    assert_eq!(app.sandbox.counters(HOST).refreshes, 1);
}

#[tokio::test]
async fn the_in_process_schedule_runs_the_sweep() {
    let app = spawn_app_with(env_vars(&[
        ("RUN_WORKERS", "true"),
        ("REFRESH_SCHEDULE", "* * * * * *"),
    ]))
    .await;
    seed_due(&app).await;
    wait_until(Duration::from_secs(20), "a refresh", || async {
        app.sandbox.counters(HOST).refreshes > 0
    })
    .await
    .expect("the schedule never swept");
    assert_eq!(status_of(&app, "seller-1").await, ConnectionStatus::Active);
}

#[tokio::test]
async fn the_refresh_command_runs_one_sweep_and_prints_a_summary() {
    let app = spawn().await;
    seed_due(&app).await;
    // The command's body, in-process: the shared target directory of this machine makes the built binary
    // itself an unreliable thing to spawn (another checkout may have replaced it).
    let settings = amocrm_connector::config::Settings::from_env(&app.env).unwrap();
    let summary = amocrm_connector::cli::refresh_once(settings).await.unwrap();
    assert_eq!(
        summary,
        "refresh sweep ran: due 1, refreshed 1, failed 0, skipped 0"
    );
    assert_eq!(app.sandbox.counters(HOST).refreshes, 1);
}
