//! Graceful shutdown: the listener closes, workers are told to stop, this instance's leases are released,
//! and the real binary exits cleanly on SIGTERM within the configured time.

use std::process::{Command, Stdio};
use std::time::Duration;

use amocrm_connector::app::Application;
use amocrm_connector::config::Settings;
use amocrm_connector::storage::schema::{amocrm_webhook_inbox, job_leases};
use diesel::prelude::*;

use amocrm_connector::storage::AnyConnection;

use crate::support::{
    Queue, TestApp, base_env, connect, count_sql, env_vars, fresh_database, inbox_row,
    spawn_app_with, wait_until,
};

/// A pending body leased to `owner` for five minutes from now.
fn leased_body(
    owner: &str,
) -> impl Fn(&mut AnyConnection) -> Result<(), amocrm_connector::storage::StorageError> + use<> {
    inbox_row(b"x=1", amocrm_connector::storage::now(), Some(owner))
}

#[tokio::test]
async fn a_shutdown_closes_the_listener_signals_workers_and_releases_only_this_instances_leases() {
    let database = fresh_database();
    let mut env = base_env(&database.url);
    env.insert("INSTANCE_ID".into(), "instance-a".into());
    env.insert("SHUTDOWN_TIMEOUT".into(), "5s".into());
    let settings = Settings::from_env(&env).unwrap();
    let app = Application::build(settings).await.unwrap();
    let port = app.port();
    let state = app.state.clone();
    let trigger = app.shutdown_trigger();
    let db = state.db.clone();
    db.run(leased_body("instance-a")).await.unwrap();
    db.run(leased_body("instance-b")).await.unwrap();
    db.run(|c| {
        diesel::insert_into(job_leases::table)
            .values((
                job_leases::name.eq("refresh_sweep"),
                job_leases::owner.eq(Some("instance-a")),
                job_leases::lease_until.eq(Some(
                    amocrm_connector::storage::now() + chrono::TimeDelta::minutes(5),
                )),
            ))
            .execute(c)?;
        Ok(())
    })
    .await
    .unwrap();

    let running = tokio::spawn(app.run_until_stopped_with_report());
    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(!*state.shutdown.borrow());

    trigger.trigger();
    let report = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops within the timeout")
        .unwrap()
        .unwrap();
    assert!(*state.shutdown.borrow(), "workers were told to stop");
    assert_eq!(report.leases_released, 2, "{report:?}");
    assert!(report.workers_aborted.is_empty());
    assert!(
        http.get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
    let owners: Vec<Option<String>> = db
        .run(|c| {
            Ok(amocrm_webhook_inbox::table
                .order(amocrm_webhook_inbox::id.asc())
                .select(amocrm_webhook_inbox::lease_owner)
                .load(c)?)
        })
        .await
        .unwrap();
    assert_eq!(owners, vec![None, Some("instance-b".to_owned())]);
    let job_owner: Option<String> = db
        .run(|c| Ok(job_leases::table.select(job_leases::owner).first(c)?))
        .await
        .unwrap();
    assert_eq!(job_owner, None);
}

#[tokio::test]
async fn the_binary_exits_cleanly_on_sigterm_within_the_shutdown_timeout() {
    let database = fresh_database();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut env = base_env(&database.url);
    env.insert("LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.insert("SHUTDOWN_TIMEOUT".into(), "5s".into());
    env.insert("RUN_WORKERS".into(), "true".into());
    let mut child = Command::new(env!("CARGO_BIN_EXE_amocrm-connector"))
        .arg("serve")
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/health");
    wait_until(Duration::from_secs(30), "healthy", || {
        let exited = child.try_wait().unwrap().is_some();
        let answer = http.get(&health).send();
        async move {
            assert!(!exited, "the service exited early");
            matches!(answer.await, Ok(r) if r.status() == 200)
        }
    })
    .await
    .expect("never became healthy");
    let signalled = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = wait_until(Duration::from_secs(10), "exited after SIGTERM", || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await
    .expect("still running 10 s after SIGTERM");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status:?}: {stderr}");
    assert!(
        stderr.contains("SIGTERM") && stderr.contains("stopped"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_binary_logs_its_version_and_configuration_at_start_without_secrets() {
    let database = fresh_database();
    let mut env = base_env(&database.url);
    env.insert("REFRESH_SECRET".into(), "start-log-refresh-secret".into());
    env.insert("METRICS_TOKEN".into(), "start-log-metrics-token".into());
    let secrets: Vec<String> = [
        "AMOCRM_CLIENT_SECRET",
        "TOKEN_ENCRYPTION_KEYS",
        "REFRESH_SECRET",
        "METRICS_TOKEN",
    ]
    .iter()
    .map(|k| env[*k].clone())
    .collect();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_amocrm-connector"))
        .arg("serve")
        .envs(&env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(log.path()).unwrap_or_default();
    let served = wait_until(Duration::from_secs(30), "the serving line", || {
        let text = read();
        let exited = child.try_wait().unwrap().is_some();
        async move {
            assert!(!exited, "the service exited early: {text}");
            text.contains("\"serving\"")
        }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let text = read();
    served.unwrap_or_else(|e| panic!("{e}: {text}"));
    let start: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "starting")
        .unwrap_or_else(|| panic!("no start line: {text}"));
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    let config = start["config"].as_str().unwrap_or_default();
    for shown in [
        "listen_addr",
        "instance_id",
        "run_workers",
        "refresh_secret",
    ] {
        assert!(config.contains(shown), "{shown} missing from {config}");
    }
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret in the log: {text}"
        );
    }
}

/// How many orders of the test are synced, by the database.
async fn synced_orders(app: &TestApp) -> i64 {
    count_sql(
        &app.db,
        "SELECT COUNT(*) AS n FROM orders WHERE sync_state = 'synced'",
    )
    .await
}

#[tokio::test]
async fn a_shutdown_during_a_push_of_1000_orders_loses_none_and_duplicates_none_after_restart() {
    let host = "sellerone.amocrm.ru";
    // Orders cut off mid-push wait this long before anyone looks them up (a late write lands first).
    let first = spawn_app_with(env_vars(&[
        ("RUN_WORKERS", "true"),
        ("SHUTDOWN_TIMEOUT", "1s"),
        ("AMOCRM_REQUEST_TIMEOUT", "3s"),
    ]))
    .await;
    first.leaves_queued(
        Queue::Inbox,
        "amoCRM's webhooks about the last leads may reach the intake as the instance stops",
    );
    first.leaves_queued(
        Queue::Push,
        "the lead steps after the pushes are not waited for",
    );
    let resp = connect(&first, "seller-stop", host).await;
    assert_eq!(resp.status(), 200, "connected");
    // Slow amoCRM answers, so that pushes are in flight (and some cut off) when the shutdown comes.
    first.set_faults(host, |f| f.latency_ms = 700);
    let key = first
        .api_key_with_tier(amocrm_connector::services::api_keys::Tier::Enterprise)
        .await;
    let mut posts = tokio::task::JoinSet::new();
    for chunk in 0..20 {
        let (http, url, key) = (
            first.http.clone(),
            first.url("/api/v1/sales/orders"),
            key.clone(),
        );
        posts.spawn(async move {
            for i in 0..50 {
                let n = chunk * 50 + i;
                let body = serde_json::json!({
                    "seller_id": "seller-stop",
                    "order_number": format!("STOP-{n:04}"),
                    "total_amount": 1000 + n,
                    "items": [{"product_id": "p1", "name": "Item", "quantity": 1, "price": 1000 + n}],
                    "customer": {"name": "Buyer", "phone": "+998901234567"},
                });
                let resp = http.post(&url).bearer_auth(&key).json(&body).send().await.unwrap();
                assert!(resp.status().is_success(), "order {n}: {}", resp.status());
            }
        });
    }
    while let Some(r) = posts.join_next().await {
        r.unwrap();
    }
    // Part of the way through, stop the instance as SIGTERM would.
    wait_until(Duration::from_secs(120), "100 leads pushed", || async {
        first.sandbox.leads(host).len() >= 100
    })
    .await
    .expect("pushing never started");
    first.stop().await;
    let at_stop = first.sandbox.leads(host).len();
    assert!(
        at_stop < 1000,
        "the stop came after the whole push ({at_stop} leads)"
    );

    // A restarted instance on the same database finishes the work.
    first
        .sandbox
        .set_faults(host, amocrm_sandbox::Faults::default());
    let second = first.spawn_peer().await;
    wait_until(Duration::from_secs(180), "1000 orders synced", || async {
        let synced = synced_orders(&second).await;
        if synced < 1000 {
            Err(format!(
                "only {synced} of 1000 orders synced after the restart"
            ))
        } else {
            Ok(())
        }
    })
    .await
    .unwrap();
    let leads = first.sandbox.leads(host);
    let names: std::collections::BTreeSet<&str> = leads.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(leads.len(), 1000, "exactly one lead per order");
    assert_eq!(names.len(), 1000, "no order became two leads");
    second.stop().await;
}
