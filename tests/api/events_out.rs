//! Events out: subscriptions API, signed deliveries to a real receiver, retries, failure and re-driving,
//! order per seller, the event log with cursor paging, retention.

use std::time::{Duration, Instant};

use amocrm_connector::domain::status::InboxState;
use amocrm_connector::storage::events::{self, NewEvent};
use amocrm_connector::storage::{self as st, deliveries};
use amocrm_connector::workers::delivery as delivery_worker;
use chrono::TimeDelta;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    Behaviour, Queue, Receiver, TestApp, assert_error, base_env, env_vars, spawn_app,
    spawn_app_with,
};

// ---------- helpers ----------

impl TestApp {
    /// Records an event the way the services do (its own transaction); returns (seq, event id).
    pub async fn record_event(&self, name: &str, seller: &str, data: Value) -> (i64, String) {
        let ev = NewEvent::new(name, seller, data, None);
        let id = ev.id.clone();
        let seq = self
            .db
            .run(move |c| {
                use diesel::Connection;
                c.transaction(|c| events::record(c, &ev))
            })
            .await
            .unwrap()
            .expect("recorded");
        (seq, id)
    }

    pub async fn deliveries_of(&self, sub: &str) -> Vec<Value> {
        let resp = self
            .api_get(&format!("/api/v1/webhooks/{sub}/deliveries?per_page=100"))
            .await;
        assert_eq!(resp.status().as_u16(), 200);
        let body: Value = resp.json().await.unwrap();
        body["data"].as_array().unwrap().clone()
    }
}

/// Runs delivery steps with the clock moved past every pending retry, until nothing is due.
async fn drive_deliveries(app: &TestApp, mut now: chrono::NaiveDateTime, max_steps: usize) {
    for _ in 0..max_steps {
        let r = delivery_worker::run_once_at(&app.state, now).await.unwrap();
        if r.claimed == 0 {
            let next = app.db.run(deliveries::next_due).await.unwrap();
            match next {
                Some(at) if at > now => now = at + TimeDelta::seconds(1),
                _ => return,
            }
        }
    }
}

/// The event ids of a page of the event log, in order.
fn ids_of(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect()
}

// ---------- subscriptions API ----------

#[tokio::test]
async fn a_subscription_is_created_read_changed_and_deleted_without_ever_showing_its_secret() {
    let app = spawn_app().await;
    let resp = app
        .api_post(
            "/api/v1/webhooks",
            &json!({"url": "https://market.example/hooks", "events": ["payment.completed", "order.cancelled"],
                    "secret": "s3cret-value", "active": true}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 201);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("s3cret-value") && !text.contains("\"secret\""),
        "{text}"
    );
    let created: Value = serde_json::from_str(&text).unwrap();
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["data"]["url"], "https://market.example/hooks");
    assert_eq!(
        created["data"]["events"],
        json!(["payment.completed", "order.cancelled"])
    );
    assert_eq!(created["data"]["active"], true);

    let got = app.api_json(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(got["data"], created["data"]);

    let list = app.api_json("/api/v1/webhooks").await;
    assert_eq!(list["meta"]["total"], 1);
    assert_eq!(list["data"][0]["id"], id.as_str());

    let resp = app
        .api_patch(
            &format!("/api/v1/webhooks/{id}"),
            &json!({"active": false, "events": "*", "secret": "rotated-secret"}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("rotated-secret"));
    let patched: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(patched["data"]["active"], false);
    assert_eq!(patched["data"]["events"], json!(["*"]));
    assert_eq!(patched["data"]["url"], "https://market.example/hooks");

    // The secret is stored encrypted, not as plaintext.
    let sid = id.clone();
    let stored = app
        .db
        .run(move |c| st::subscriptions::find(c, &sid))
        .await
        .unwrap()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&stored.secret_enc).contains("rotated-secret"),
        "secret at rest is encrypted"
    );
    let plain = stored.secret(&app.state.keys).unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&plain),
        "rotated-secret"
    );

    let resp = app.api_delete(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(resp.status().as_u16(), 204);
    let resp = app.api_get(&format!("/api/v1/webhooks/{id}")).await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
    let resp = app.api_delete(&format!("/api/v1/webhooks/{id}")).await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
}

#[tokio::test]
async fn invalid_subscriptions_are_refused_with_details_per_field() {
    let app = spawn_app().await;
    let body = assert_error(
        app.api_post(
            "/api/v1/webhooks",
            &json!({"url": "ftp://market.example/x", "events": ["payment.done"], "secret": ""}),
        )
        .await,
        422,
        "VALIDATION_ERROR",
    )
    .await;
    let details = &body["error"]["details"];
    for field in ["url", "events", "secret"] {
        assert!(
            details[field].as_array().is_some_and(|a| !a.is_empty()),
            "{field} in {body}"
        );
    }
    let resp = app.api_post("/api/v1/webhooks", &json!({})).await;
    let body = assert_error(resp, 422, "VALIDATION_ERROR").await;
    assert!(body["error"]["details"]["url"].is_array());

    let resp = app.api_post_text("/api/v1/webhooks", "{\"url\": ").await;
    assert_error(resp, 400, "BAD_REQUEST").await;

    let resp = app
        .request(
            Method::POST,
            "/api/v1/webhooks",
            None,
            Some(&json!({"url": "https://x.example", "events": "*", "secret": "abc"})),
        )
        .await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
    let list = app.api_json("/api/v1/webhooks").await;
    assert_eq!(list["meta"]["total"], 0, "nothing was stored");
}

#[tokio::test]
async fn subscriptions_to_internal_addresses_are_refused_unless_the_host_is_allowed() {
    let app = spawn_app_with(env_vars(&[("WEBHOOK_ALLOWED_HOSTS", "")])).await;
    for url in [
        "http://127.0.0.1:9000/events",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/",
        "http://localhost:3000/events",
        "https://192.168.1.10/hook",
    ] {
        let body = assert_error(
            app.api_post(
                "/api/v1/webhooks",
                &json!({"url": url, "events": ["*"], "secret": "s3cret-s3cret"}),
            )
            .await,
            422,
            "VALIDATION_ERROR",
        )
        .await;
        let why = body["error"]["details"]["url"].to_string();
        assert!(why.contains("WEBHOOK_ALLOWED_HOSTS"), "{url}: {body}");
    }
    let created = app
        .api_post(
            "/api/v1/webhooks",
            &json!({"url": "https://marketplace.example/hooks", "events": ["*"], "secret": "s3cret-s3cret"}),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    let id = created.json::<Value>().await.expect("json")["data"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let resp = app
        .api(
            Method::PATCH,
            &format!("/api/v1/webhooks/{id}"),
            Some(&json!({"url": "http://10.1.2.3/internal"})),
        )
        .await;
    assert_error(resp, 422, "VALIDATION_ERROR").await;
    let got = app.api_json(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(
        got["data"]["url"], "https://marketplace.example/hooks",
        "unchanged"
    );
    let list = app.api_json("/api/v1/webhooks").await;
    assert_eq!(list["meta"]["total"], 1, "only the public one was stored");

    // Allowed by configuration (tests, the demo, a private network).
    let allowed = spawn_app_with(env_vars(&[(
        "WEBHOOK_ALLOWED_HOSTS",
        "10.0.0.1, 127.0.0.1",
    )]))
    .await;
    for url in ["http://10.0.0.1/hook", "http://127.0.0.1:9000/events"] {
        let resp = allowed
            .api_post(
                "/api/v1/webhooks",
                &json!({"url": url, "events": ["*"], "secret": "s3cret-s3cret"}),
            )
            .await;
        assert_eq!(resp.status().as_u16(), 201, "{url}");
    }
}

#[tokio::test]
async fn a_delivery_to_an_address_the_policy_no_longer_allows_is_not_sent() {
    let receiver = Receiver::start("recv-secret", Behaviour::Ok).await;
    let open = spawn_app().await;
    let sub = open
        .subscribe(&receiver.url, json!(["order.synced"]), "recv-secret")
        .await;
    // Another instance on the same database with an empty allow-list: the stored loopback URL is no longer
    // a target, so its delivery fails without a connection being made.
    let strict = open
        .spawn_peer_with(|env| {
            env.insert("WEBHOOK_ALLOWED_HOSTS".into(), String::new());
        })
        .await;
    strict
        .record_event("order.synced", "seller-1", json!({"n": 1}))
        .await;
    let report = delivery_worker::run_once(&strict.state)
        .await
        .expect("deliver");
    assert_eq!(report.claimed, 1);
    assert!(receiver.hits().is_empty(), "nothing reached the receiver");
    let deliveries = strict.deliveries_of(&sub).await;
    let error = deliveries[0]["attempts"][0]["error"]
        .as_str()
        .or(deliveries[0]["last_error"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("WEBHOOK_ALLOWED_HOSTS"), "{deliveries:?}");
}

// ---------- delivery ----------

#[tokio::test]
async fn an_event_is_delivered_once_with_the_exact_body_and_a_valid_signature() {
    let app = spawn_app().await;
    let (rx, sub) = app
        .subscribed_receiver(
            "receiver-secret",
            Behaviour::Ok,
            json!(["payment.completed"]),
        )
        .await;
    let (other, _) = app
        .subscribed_receiver("x", Behaviour::Ok, json!(["order.synced"]))
        .await;

    let (seq, id) = app
        .record_event(
            "payment.completed",
            "seller-1",
            json!({"order_id": "ord_1", "order_number": "1042", "lead_id": 7, "amount": 150000, "currency": "UZS"}),
        )
        .await;
    let report = delivery_worker::run_once(&app.state).await.unwrap();
    assert_eq!(report.delivered, 1);
    assert_eq!(
        delivery_worker::run_once(&app.state).await.unwrap().claimed,
        0
    );

    let hits = rx.hits();
    assert_eq!(hits.len(), 1);
    let hit = &hits[0];
    assert!(
        hit.signature_ok,
        "X-Signature verifies with the subscriber's secret"
    );
    let stored = app
        .db
        .run(move |c| events::find_by_id(c, &id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        hit.body,
        stored.payload.as_bytes(),
        "body is the stored payload, byte for byte"
    );
    assert_eq!(hit.headers["content-type"], "application/json");
    assert_eq!(hit.headers["x-webhook-id"], stored.id);
    let ts: i64 = hit.headers["x-webhook-timestamp"].parse().unwrap();
    assert!((ts - chrono::Utc::now().timestamp()).abs() < 60);
    let body = hit.json();
    assert_eq!(body["id"], stored.id);
    assert_eq!(body["event"], "payment.completed");
    assert_eq!(body["seller_id"], "seller-1");
    assert_eq!(body["data"]["order_number"], "1042");
    chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).unwrap();
    assert!(
        other.hits().is_empty(),
        "a subscriber that did not ask for it gets nothing"
    );

    let ds = app.deliveries_of(&sub).await;
    assert_eq!(ds.len(), 1);
    assert_eq!(ds[0]["state"], "delivered");
    assert_eq!(ds[0]["event_id"], body["id"]);
    assert_eq!(ds[0]["attempt_log"][0]["status_code"], 200);
    let rows = app
        .db
        .run(move |c| deliveries::for_event(c, seq))
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        1,
        "one delivery row: only the matching subscription"
    );
}

#[tokio::test]
async fn a_receiver_failing_the_first_three_deliveries_receives_the_event_on_the_fourth_attempt() {
    let app = spawn_app().await;
    let (rx, sub) = app
        .subscribed_receiver("k", Behaviour::FailFirst(3), json!("*"))
        .await;
    app.record_event("order.cancelled", "seller-9", json!({"lead_id": 1}))
        .await;

    let mut now = st::now();
    let mut waits = Vec::new();
    for _ in 0..3 {
        let r = delivery_worker::run_once_at(&app.state, now).await.unwrap();
        assert_eq!((r.claimed, r.retrying), (1, 1));
        // Not due again before its retry time.
        assert_eq!(
            delivery_worker::run_once_at(&app.state, now)
                .await
                .unwrap()
                .claimed,
            0
        );
        let next = app.db.run(deliveries::next_due).await.unwrap().unwrap();
        waits.push((next - now).num_seconds());
        now = next;
    }
    let r = delivery_worker::run_once_at(&app.state, now).await.unwrap();
    assert_eq!(r.delivered, 1);
    // ≈5 s, 5 min, 30 min, with ±10 % jitter.
    assert!((4..=6).contains(&waits[0]), "{waits:?}");
    assert!((270..=330).contains(&waits[1]), "{waits:?}");
    assert!((1620..=1980).contains(&waits[2]), "{waits:?}");

    let hits = rx.hits();
    assert_eq!(hits.len(), 4);
    assert!(hits.iter().all(|h| h.signature_ok));
    assert!(
        hits.windows(2).all(|w| w[0].body == w[1].body),
        "same body every time"
    );
    let ds = app.deliveries_of(&sub).await;
    assert_eq!(ds[0]["state"], "delivered");
    assert_eq!(ds[0]["attempts"], 4);
    let codes: Vec<i64> = ds[0]["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status_code"].as_i64().unwrap())
        .collect();
    assert_eq!(codes, vec![500, 500, 500, 200]);
}

#[tokio::test]
async fn a_receiver_that_never_answers_ends_failed_visibly_and_can_be_re_driven() {
    let app = spawn_app_with(env_vars(&[("DELIVERY_TIMEOUT", "300ms")])).await;
    let (rx, sub) = app
        .subscribed_receiver("k", Behaviour::Hang, json!(["payment.completed"]))
        .await;
    let (_, id) = app
        .record_event("payment.completed", "seller-2", json!({"lead_id": 5}))
        .await;

    drive_deliveries(&app, st::now(), 20).await;
    let ds = app.deliveries_of(&sub).await;
    assert_eq!(ds[0]["state"], "failed");
    assert_eq!(ds[0]["attempts"], 8, "the first attempt and seven retries");
    assert!(ds[0]["last_error"].as_str().unwrap().contains("no answer"));
    assert_eq!(rx.hits().len(), 8);
    let failed = app
        .api_json(&format!("/api/v1/webhooks/{sub}/deliveries?state=failed"))
        .await;
    assert_eq!(failed["meta"]["total"], 1);

    // Re-driven after the receiver recovers.
    rx.set_behaviour(Behaviour::Ok);
    let resp = app
        .api_post(&format!("/api/v1/events/{id}/redeliver"), &json!({}))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["deliveries"][0]["state"], "pending");
    let r = delivery_worker::run_once(&app.state).await.unwrap();
    assert_eq!(r.delivered, 1);
    let ds = app.deliveries_of(&sub).await;
    assert_eq!(ds[0]["state"], "delivered");
    assert_eq!(ds[0]["attempt_log"].as_array().unwrap().len(), 9);

    assert_error(
        app.api_post("/api/v1/events/evt_unknown/redeliver", &json!({}))
            .await,
        404,
        "RESOURCE_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn redelivering_to_one_failing_subscription_sends_nothing_more_to_a_healthy_one() {
    let app = spawn_app_with(env_vars(&[("DELIVERY_TIMEOUT", "300ms")])).await;
    let (healthy, good_sub) = app
        .subscribed_receiver("h", Behaviour::Ok, json!(["payment.completed"]))
        .await;
    let (broken, bad_sub) = app
        .subscribed_receiver("b", Behaviour::Hang, json!(["payment.completed"]))
        .await;
    let (_, id) = app
        .record_event("payment.completed", "seller-9", json!({"lead_id": 7}))
        .await;
    drive_deliveries(&app, st::now(), 20).await;
    assert_eq!(app.deliveries_of(&good_sub).await[0]["state"], "delivered");
    assert_eq!(app.deliveries_of(&bad_sub).await[0]["state"], "failed");
    assert_eq!(healthy.hits().len(), 1);
    assert_eq!(broken.hits().len(), 8);

    // One subscription named: only its delivery is due again; the healthy receiver's is left alone.
    broken.set_behaviour(Behaviour::Ok);
    let resp = app
        .api_post(
            &format!("/api/v1/events/{id}/redeliver?subscription_id={bad_sub}"),
            &json!({}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    let states: Vec<(&str, &str)> = body["data"]["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["subscription_id"].as_str().unwrap(),
                d["state"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(
        states.contains(&(good_sub.as_str(), "delivered")),
        "{states:?}"
    );
    assert!(
        states.contains(&(bad_sub.as_str(), "pending")),
        "{states:?}"
    );
    drive_deliveries(&app, st::now(), 5).await;
    assert_eq!(
        healthy.hits().len(),
        1,
        "the healthy receiver got no duplicate"
    );
    assert_eq!(broken.hits().len(), 9);
    let ds = app.deliveries_of(&bad_sub).await;
    assert_eq!(ds[0]["state"], "delivered");
    assert_eq!(
        ds[0]["attempt_log"].as_array().unwrap().len(),
        9,
        "the earlier attempts are kept"
    );

    // Without a subscription only failed deliveries go again: here none, so nobody hears more.
    let resp = app
        .api_post(&format!("/api/v1/events/{id}/redeliver"), &json!({}))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    drive_deliveries(&app, st::now(), 5).await;
    assert_eq!((healthy.hits().len(), broken.hits().len()), (1, 9));

    // A subscription that never wanted the event has no delivery to send again.
    let other = app
        .subscribe(&healthy.url, json!(["order.synced"]), "h")
        .await;
    assert_error(
        app.api_post(
            &format!("/api/v1/events/{id}/redeliver?subscription_id={other}"),
            &json!({}),
        )
        .await,
        404,
        "RESOURCE_NOT_FOUND",
    )
    .await;
}

#[tokio::test]
async fn a_sellers_events_arrive_in_order_even_when_the_first_needs_a_retry() {
    let app = spawn_app().await;
    let (rx, _) = app
        .subscribed_receiver("k", Behaviour::FailFirst(1), json!("*"))
        .await;
    for i in 0..5 {
        app.record_event("order.status_changed", "seller-a", json!({"lead_id": i}))
            .await;
    }
    // Only the head of seller-a's queue goes out, and fails.
    let r = delivery_worker::run_once(&app.state).await.unwrap();
    assert_eq!((r.claimed, r.retrying), (1, 1));
    // While it waits for its retry, seller-a's later events wait too; another seller's do not.
    app.record_event("order.status_changed", "seller-b", json!({"lead_id": 100}))
        .await;
    let r = delivery_worker::run_once(&app.state).await.unwrap();
    assert_eq!((r.claimed, r.delivered), (1, 1));
    assert_eq!(rx.hits().last().unwrap().json()["seller_id"], "seller-b");
    drive_deliveries(&app, st::now(), 20).await;

    let order: Vec<i64> = rx
        .hits()
        .iter()
        .filter(|h| h.status_sent == 200)
        .map(|h| h.json())
        .filter(|b| b["seller_id"] == "seller-a")
        .map(|b| b["data"]["lead_id"].as_i64().unwrap())
        .collect();
    assert_eq!(order, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_dead_subscriber_does_not_delay_a_healthy_one() {
    let app = spawn_app_with(env_vars(&[
        ("RUN_WORKERS", "true"),
        ("DELIVERY_TIMEOUT", "8s"),
    ]))
    .await;
    let (dead, _) = app
        .subscribed_receiver("d", Behaviour::Hang, json!("*"))
        .await;
    let (healthy, _) = app
        .subscribed_receiver("h", Behaviour::Ok, json!("*"))
        .await;
    let started = Instant::now();
    for i in 0..10 {
        app.record_event(
            "order.synced",
            &format!("seller-{}", i % 3),
            json!({"n": i}),
        )
        .await;
    }
    let hits = healthy.wait_for(10, Duration::from_secs(6)).await;
    assert_eq!(hits.len(), 10, "the healthy subscriber got everything");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "well before the dead one's timeout"
    );
    // The dead one holds one request per seller at a time (order per seller is kept).
    assert!(dead.hits().len() <= 3, "{}", dead.hits().len());
}

// ---------- the event log ----------

#[tokio::test]
async fn the_event_log_pages_by_cursor_and_filters_by_seller_and_event() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let name = if i % 2 == 0 {
            "order.synced"
        } else {
            "payment.completed"
        };
        let seller = if i < 3 { "s-1" } else { "s-2" };
        ids.push(app.record_event(name, seller, json!({"i": i})).await.1);
    }
    let page = app.api_json("/api/v1/events?limit=2").await;
    let got = ids_of(&page);
    assert_eq!(got, vec![ids[0].as_str(), ids[1].as_str()]);
    let cursor = page["meta"]["next_after"].as_i64().unwrap();
    let page = app
        .api_json(&format!("/api/v1/events?after={cursor}&limit=10"))
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), 3);
    assert_eq!(page["data"][0]["id"], ids[2].as_str());
    let end = page["meta"]["next_after"].as_i64().unwrap();
    let page = app.api_json(&format!("/api/v1/events?after={end}")).await;
    assert_eq!(page["data"], json!([]));
    assert_eq!(
        page["meta"]["next_after"], end,
        "an empty page keeps the cursor"
    );

    // An event id is a cursor too; filters combine.
    let page = app
        .api_json(&format!(
            "/api/v1/events?after={}&event=payment.completed",
            ids[0]
        ))
        .await;
    let got = ids_of(&page);
    assert_eq!(got, vec![ids[1].as_str(), ids[3].as_str()]);
    let page = app.api_json("/api/v1/events?seller_id=s-2").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"][0]["seller_id"], "s-2");
    assert_eq!(page["data"][0]["data"]["i"], 3);

    for bad in [
        "limit=0",
        "limit=abc",
        "limit=5000",
        "event=nope",
        "after=-1",
        "after=evt_missing",
    ] {
        let resp = app.api_get(&format!("/api/v1/events?{bad}")).await;
        assert_error(resp, 400, "BAD_REQUEST").await;
    }
}

#[tokio::test]
async fn events_their_deliveries_and_old_webhook_bodies_are_pruned_after_the_retention_period() {
    use amocrm_connector::storage::inbox;
    use amocrm_connector::workers::retention;
    let app = spawn_app_with(env_vars(&[("EVENT_RETENTION", "7days")])).await;
    app.leaves_queued(
        Queue::Inbox,
        "one body stays pending on purpose: retention keeps what is not processed",
    );
    // Kept to the end: a dropped receiver stops answering, and the delivery below needs an answer.
    let (_rx, sub) = app
        .subscribed_receiver("k", Behaviour::Ok, json!("*"))
        .await;
    let (_, old_id) = app
        .record_event("order.synced", "s-1", json!({"n": 1}))
        .await;
    delivery_worker::run_once(&app.state).await.unwrap();
    // Two raw bodies (of two connections): one processed, one still waiting.
    for conn in [1, 2] {
        app.db
            .run(move |c| inbox::insert(c, conn, "s-1", b"leads[add][0][id]=1", st::now()))
            .await
            .unwrap();
    }
    let now = st::now();
    let leased = app
        .db
        .run(move |c| inbox::claim_due(c, "w", now, now + TimeDelta::minutes(1), 10))
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    let done = leased[0].id;
    app.db
        .run(move |c| inbox::mark_processed(c, done, "w", None, now))
        .await
        .unwrap();

    assert_eq!(
        retention::run_once(&app.state).await.unwrap(),
        retention::Report::default(),
        "nothing is older than 7 days yet"
    );
    let report = retention::run_once_at(&app.state, now + TimeDelta::days(8))
        .await
        .unwrap();
    assert_eq!(report.events, 1);
    assert_eq!(report.webhook_bodies, 1, "only the processed body goes");
    let gone = app
        .db
        .run(move |c| events::find_by_id(c, &old_id))
        .await
        .unwrap();
    assert!(gone.is_none());
    assert!(
        app.deliveries_of(&sub).await.is_empty(),
        "deliveries and attempts went with their event"
    );
    let left = app.db.run(|c| inbox::for_seller(c, "s-1")).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].state, InboxState::Pending);
}

#[test]
fn a_bad_delivery_timeout_or_webhook_size_is_a_one_line_configuration_error() {
    for (var, value) in [
        ("DELIVERY_TIMEOUT", "0s"),
        ("DELIVERY_TIMEOUT", "5min"),
        ("DELIVERY_TIMEOUT", "soon"),
        ("WEBHOOK_MAX_BODY_KIB", "0"),
        ("WEBHOOK_MAX_BODY_KIB", "big"),
    ] {
        let mut env = base_env("sqlite://unused.db");
        env.insert(var.into(), value.into());
        let err = amocrm_connector::config::Settings::from_env(&env).unwrap_err();
        assert_eq!(err.variable, var, "{value}");
        assert!(!err.to_string().contains('\n'));
    }
    let env = base_env("sqlite://unused.db");
    let s = amocrm_connector::config::Settings::from_env(&env).unwrap();
    assert_eq!(s.delivery_timeout, Duration::from_secs(10));
    assert_eq!(s.webhook_max_body, 256 * 1024);
}
