//! The per-account rate limit and the fault switches.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn the_eighth_request_within_a_second_is_429_with_retry_after() {
    // The rule is about one real second: on a loaded machine a burst may take longer, so try again.
    for _attempt in 0..5 {
        let (sb, token) = signed_in().await;
        let other = sb
            .issue_tokens(CLIENT_ID, "sellertwo.amocrm.ru")
            .access_token;
        let started = Instant::now();
        let mut statuses = Vec::new();
        let mut bodies = Vec::new();
        for _ in 0..8 {
            let resp = get(&sb, &token, "account").await;
            statuses.push(resp.status().as_u16());
            bodies.push((
                resp.headers()["content-type"].to_str().unwrap().to_owned(),
                json_of(resp).await,
            ));
        }
        if started.elapsed() >= Duration::from_millis(900) {
            sb.stop().await;
            continue;
        }
        assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 200, 429]);
        let (content_type, body) = &bodies[7];
        assert_eq!(content_type, "application/problem+json");
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
        return;
    }
    panic!("the machine never sent 8 requests within one second");
}

#[tokio::test]
async fn concurrent_bursts_admit_exactly_the_limit_including_token_requests() {
    for _attempt in 0..5 {
        let sb = start().await;
        let pair = sb.issue_tokens(CLIENT_ID, HOST);
        let started = Instant::now();
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
        if started.elapsed() >= Duration::from_millis(900) {
            sb.stop().await;
            continue;
        }
        assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 13);
        assert_eq!(statuses.iter().filter(|s| **s != 429).count(), 7);
        let log = sb.request_log();
        assert!(
            log.iter()
                .any(|r| r.grant_type.as_deref() == Some("refresh_token"))
        );
        sb.stop().await;
        return;
    }
    panic!("the machine never sent 20 requests within one second");
}

#[tokio::test]
async fn fail_next_answers_500_without_applying() {
    let (sb, token) = signed_in().await;
    sb.set_faults(HOST, faults(|f| f.fail_next = 2));
    for _ in 0..2 {
        let resp = post(&sb, &token, "leads/complex", json!([{"name": "A"}])).await;
        assert_eq!(resp.status(), 500);
        let body = json_of(resp).await;
        assert_eq!(body["title"], "ErrInternalServer");
        assert!(body["trace_id"].is_string());
    }
    assert!(sb.leads(HOST).is_empty());
    assert_eq!(
        post(&sb, &token, "leads/complex", json!([{"name": "A"}]))
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
    let (sb, token) = signed_in().await;
    sb.set_faults(HOST, faults(|f| f.drop_after_write_next = 1));
    let err = api(&sb, HOST, Method::POST, "leads/complex", &token)
        .json(&json!([{"name": "Buyurtma #7", "request_id": "o7"}]))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .expect_err("no answer");
    assert!(err.is_timeout());
    // The write is applied even when the client gave up first.
    wait_until("the dropped write", || sb.counters(HOST).dropped == 1).await;
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
    sb.set_faults(HOST, faults(|f| f.drop_after_write_next = 1));
    let lost = http()
        .post(format!("{}/oauth2/access_token", sb.account_url(HOST)))
        .json(&json!({"client_id": CLIENT_ID, "client_secret": SECRET, "grant_type": "refresh_token", "refresh_token": pair.refresh_token, "redirect_uri": REDIRECT}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(lost.is_err());
    wait_until("the lost refresh", || sb.counters(HOST).refreshes == 1).await;
    let retry = refresh(&sb, HOST, &pair.refresh_token).await;
    assert_eq!(
        retry.status(),
        200,
        "the old refresh token still works: its successor was never used"
    );
    assert_eq!(sb.counters(HOST).refreshes, 2);
    sb.stop().await;
}

#[tokio::test]
async fn forced_429_and_latency_switches_apply_per_account() {
    let (sb, token) = signed_in().await;
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
