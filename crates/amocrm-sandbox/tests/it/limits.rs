//! The per-account rate limit and the fault switches.

use std::time::{Duration, Instant};

use amocrm_sandbox::Faults;
use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn the_eighth_request_within_a_second_is_429_with_retry_after() {
    let sb = start().await;
    let token = sb.issue_tokens(CLIENT_ID, HOST).access_token;
    let other = sb
        .issue_tokens(CLIENT_ID, "sellertwo.amocrm.ru")
        .access_token;
    let started = Instant::now();
    for _ in 0..7 {
        assert_eq!(get(&sb, &token, "account").await.status(), 200);
    }
    let eighth = get(&sb, &token, "account").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the test must run inside one window"
    );
    assert_eq!(eighth.status(), 429);
    assert_eq!(eighth.headers()["content-type"], "application/problem+json");
    let body = json_of(eighth).await;
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["type"], "https://httpstatus.es/429");
    assert_eq!(body["status"], 429);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("You have sent too many requests")
    );
    assert!(body["retry_after"].as_u64().is_some_and(|r| r >= 1));
    // Another account has its own budget.
    let resp = api(&sb, "sellertwo.amocrm.ru", Method::GET, "account", &other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let c = sb.counters(HOST);
    assert_eq!((c.requests, c.admitted, c.rate_limited), (8, 7, 1));
    sb.stop().await;
}

#[tokio::test]
async fn concurrent_bursts_admit_exactly_the_limit_including_token_requests() {
    let sb = start().await;
    let pair = sb.issue_tokens(CLIENT_ID, HOST);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (url, token, refresh_token) = (
            sb.account_url(HOST),
            pair.access_token.clone(),
            pair.refresh_token.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let client = http();
            let resp = if i == 0 {
                client
                    .post(format!("{url}/oauth2/access_token"))
                    .json(&json!({"client_id": CLIENT_ID, "client_secret": SECRET, "grant_type": "refresh_token", "refresh_token": refresh_token, "redirect_uri": REDIRECT}))
                    .send()
                    .await
            } else {
                client.get(format!("{url}/api/v4/account")).bearer_auth(token).send().await
            };
            resp.unwrap().status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 13);
    assert_eq!(statuses.iter().filter(|s| **s != 429).count(), 7);
    let log = sb.request_log();
    assert!(
        log.iter()
            .any(|r| r.grant_type.as_deref() == Some("refresh_token"))
    );
    sb.stop().await;
}

#[tokio::test]
async fn fail_next_answers_500_without_applying() {
    let sb = start().await;
    let token = sb.issue_tokens(CLIENT_ID, HOST).access_token;
    sb.set_faults(
        HOST,
        Faults {
            fail_next: 2,
            ..Faults::default()
        },
    );
    for _ in 0..2 {
        let resp = send_json(
            &sb,
            &token,
            Method::POST,
            "leads/complex",
            json!([{"name": "A"}]),
        )
        .await;
        assert_eq!(resp.status(), 500);
        let body = json_of(resp).await;
        assert_eq!(body["title"], "ErrInternalServer");
        assert!(body["trace_id"].is_string());
    }
    assert!(sb.leads(HOST).is_empty());
    assert_eq!(
        send_json(
            &sb,
            &token,
            Method::POST,
            "leads/complex",
            json!([{"name": "A"}])
        )
        .await
        .status(),
        200
    );
    assert_eq!(sb.leads(HOST).len(), 1);
    assert_eq!(sb.faults(HOST).fail_next, 0);
    assert_eq!(sb.counters(HOST).injected_failures, 2);
    sb.stop().await;
}

#[tokio::test]
async fn drop_after_write_applies_the_request_and_never_answers() {
    let sb = start().await;
    let token = sb.issue_tokens(CLIENT_ID, HOST).access_token;
    sb.set_faults(
        HOST,
        Faults {
            drop_after_write_next: 1,
            ..Faults::default()
        },
    );
    let err = api(&sb, HOST, Method::POST, "leads/complex", &token)
        .json(&json!([{"name": "Buyurtma #7", "request_id": "o7"}]))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("no answer");
    assert!(err.is_timeout());
    let leads = sb.leads(HOST);
    assert_eq!(leads.len(), 1, "the write happened");
    assert_eq!(leads[0].request_id.as_deref(), Some("o7"));
    let log = sb.request_log();
    assert!(
        log.iter()
            .any(|r| r.dropped && r.path == "/api/v4/leads/complex")
    );
    assert_eq!(sb.counters(HOST).dropped, 1);
    // The next request is answered normally.
    assert_eq!(get(&sb, &token, "leads").await.status(), 200);
    sb.stop().await;
}

#[tokio::test]
async fn a_refresh_lost_after_the_write_can_be_retried_with_the_old_token() {
    let sb = start().await;
    let pair = sb.issue_tokens(CLIENT_ID, HOST);
    sb.set_faults(
        HOST,
        Faults {
            drop_after_write_next: 1,
            ..Faults::default()
        },
    );
    let lost = http()
        .post(format!("{}/oauth2/access_token", sb.account_url(HOST)))
        .json(&json!({"client_id": CLIENT_ID, "client_secret": SECRET, "grant_type": "refresh_token", "refresh_token": pair.refresh_token, "redirect_uri": REDIRECT}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(lost.is_err());
    let retry = refresh(&sb, HOST, &pair.refresh_token).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(sb.counters(HOST).refreshes, 2);
    sb.stop().await;
}

#[tokio::test]
async fn forced_429_and_latency_switches_apply_per_account() {
    let sb = start().await;
    let token = sb.issue_tokens(CLIENT_ID, HOST).access_token;
    let put = http()
        .put(format!("{}/_sandbox/accounts/{HOST}/faults", sb.base_url()))
        .json(&json!({"force_429_next": 1, "latency_ms": 150}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let forced = get(&sb, &token, "account").await;
    assert_eq!(forced.status(), 429);
    assert_eq!(json_of(forced).await["retry_after"], 1);
    let t = Instant::now();
    assert_eq!(get(&sb, &token, "account").await.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    let f = json_of(
        http()
            .get(format!("{}/_sandbox/accounts/{HOST}/faults", sb.base_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (f["force_429_next"].as_u64(), f["latency_ms"].as_u64()),
        (Some(0), Some(150))
    );
    sb.stop().await;
}
