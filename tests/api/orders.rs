//! Orders: the API (validation, idempotency, filters, status changes, retries) and the push worker against
//! the sandbox (exactly one lead per order, batches of 50, faults, stage moves). Workers are driven through
//! `push::run_once` / `push::drain`, never by sleeping.

use std::collections::{HashMap, HashSet};

use amocrm_client::NewCustomField;
use amocrm_connector::domain::order::SyncState;
use amocrm_connector::services::api_keys::Tier;
use amocrm_connector::services::orders as order_service;
use amocrm_connector::storage::orders as order_store;
use amocrm_connector::storage::schema::amocrm_connections as c;
use amocrm_connector::workers::push;
use amocrm_sandbox::Faults;
use diesel::prelude::*;
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    self, Queue, Seller, TestApp, assert_error, connect_seller, env_vars, event_count, order_body,
    save_settings, set_connection_status, spawn_app_with,
};

/// amoCRM tells the intake about every lead the push makes; the order tests leave those bodies to the
/// webhook tests.
const AMOCRM_NOTICES: &str = "amoCRM's webhooks about the pushed leads (processed in webhooks_in)";

/// The test app of this suite: its amoCRM webhook bodies are not processed here.
async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

async fn spawn_with(customize: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
    let app = spawn_app_with(customize).await;
    app.leaves_queued(Queue::Inbox, AMOCRM_NOTICES);
    app
}

/// A test app of this suite with `seller-1` connected to `sellerone.amocrm.ru`.
async fn app_with_seller() -> (TestApp, Seller) {
    let app = spawn().await;
    let seller = connect(&app, "seller-1", "sellerone.amocrm.ru").await;
    (app, seller)
}

/// A seller whose orders each get a new contact (matching off): this suite is about getting leads made
/// exactly once, and its orders all share one buyer; buyer matching has its own suite (`deal`).
async fn connect(app: &TestApp, seller_id: &str, host: &str) -> Seller {
    let seller = connect_seller(app, seller_id, host).await;
    save_settings(app, seller_id, json!({"contacts": {"match": "off"}})).await;
    seller
}

/// Points every connection's order-number field at `field`.
async fn set_order_number_field(app: &TestApp, field: i64) {
    app.update(c::table, c::field_order_number_id.eq(Some(field)))
        .await;
}

async fn post_with_key(app: &TestApp, key: &str, body: &Value) -> reqwest::Response {
    app.request(Method::POST, "/api/v1/sales/orders", Some(key), Some(body))
        .await
}

/// Posts one order; the answer's JSON, whatever its status.
async fn post_order(app: &TestApp, body: &Value) -> Value {
    let resp = app.api_post("/api/v1/sales/orders", body).await;
    resp.json().await.unwrap()
}

/// Posts many orders, ten at a time, with an unlimited key; every answer must be 202.
async fn post_orders(app: &TestApp, seller_id: &str, numbers: &[String]) {
    let key = app.api_key_with_tier(Tier::Enterprise).await;
    for chunk in numbers.chunks(10) {
        let bodies: Vec<Value> = chunk.iter().map(|n| order_body(seller_id, n)).collect();
        let posts = bodies.iter().map(|b| post_with_key(app, &key, b));
        for r in join_all(posts).await {
            assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
        }
    }
}

async fn drain(app: &TestApp) -> push::Report {
    let (report, drained) = push::drain(&app.state, 2_000).await.expect("push steps");
    assert!(drained, "the push queue did not drain: {report:?}");
    report
}

async fn order_rows(app: &TestApp, seller_id: &str) -> Vec<order_store::OrderRow> {
    let filter = order_store::OrderFilter {
        seller_id: Some(seller_id.to_owned()),
        ..Default::default()
    };
    app.db
        .run(move |conn| order_store::list(conn, &filter, 0, 100_000))
        .await
        .unwrap()
        .0
}

/// Every lead of the seller's account keyed by its order-number field; panics on a duplicate.
fn leads_by_number(app: &TestApp, seller: &Seller) -> HashMap<String, amocrm_sandbox::Lead> {
    support::leads_by_number(app, &seller.host, seller.field_number)
}

fn numbers(prefix: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}{i:04}")).collect()
}

// ---------------------------------------------------------------------------------------------------------
// API: validation, idempotency, reading

#[tokio::test]
async fn an_order_is_stored_and_answered_with_202_and_its_sync_state() {
    let app = spawn().await;
    app.leaves_queued(
        Queue::Push,
        "the order is only answered and read back, never pushed",
    );
    connect(&app, "seller-1", "sellerone.amocrm.ru").await;
    let resp = app
        .api_post("/api/v1/sales/orders", &order_body("seller-1", "1042"))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    let o = &body["data"];
    assert!(o["id"].as_str().unwrap().starts_with("ord_"));
    assert_eq!(o["seller_id"], "seller-1");
    assert_eq!(o["order_number"], "1042");
    assert_eq!(o["status"], "pending");
    assert_eq!(o["total_amount"], 150000);
    assert_eq!(o["currency"], "UZS");
    assert_eq!(o["sync"]["state"], "queued");
    assert_eq!(o["sync"]["attempts"], 0);
    assert!(o["sync"]["lead_id"].is_null());
    chrono::DateTime::parse_from_rfc3339(o["created_at"].as_str().unwrap()).unwrap();

    let got = app
        .api_get(&format!(
            "/api/v1/sales/orders/{}",
            o["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(got.status().as_u16(), 200);
    let got: Value = got.json().await.unwrap();
    assert_eq!(got["data"], *o);
}

#[tokio::test]
async fn invalid_orders_get_422_naming_every_bad_field() {
    let app = spawn().await;
    connect(&app, "seller-1", "sellerone.amocrm.ru").await;
    let resp = app
        .api_post(
            "/api/v1/sales/orders",
            &json!({
                "seller_id": "seller-1",
                "total_amount": -1,
                "currency": "SOM1",
                "status": "refunded",
                "items": [{"product_id": "p", "name": "x", "quantity": 0, "price": 1.234}],
                "customer": {"name": "", "email": "not-an-email"}
            }),
        )
        .await;
    let body = assert_error(resp, 422, "VALIDATION_ERROR").await;
    let details = body["error"]["details"].as_object().unwrap();
    for field in [
        "order_number",
        "total_amount",
        "currency",
        "status",
        "items[0].quantity",
        "items[0].price",
        "customer.name",
        "customer.email",
    ] {
        assert!(
            details.contains_key(field),
            "{field} missing in {details:?}"
        );
        assert!(details[field].as_array().is_some_and(|m| !m.is_empty()));
    }
    let (rows, _) = app
        .db
        .run(|c| order_store::list(c, &Default::default(), 0, 10))
        .await
        .unwrap();
    assert!(rows.is_empty(), "nothing is stored for an invalid order");
}

#[tokio::test]
async fn malformed_json_is_400_and_a_missing_body_object_too() {
    let app = spawn().await;
    let resp = app
        .api_post_text("/api/v1/sales/orders", "{\"seller_id\": ")
        .await;
    assert_error(resp, 400, "BAD_REQUEST").await;
    let resp = app.api_post("/api/v1/sales/orders", &json!([1, 2])).await;
    assert_error(resp, 400, "BAD_REQUEST").await;
}

#[tokio::test]
async fn an_order_for_a_seller_that_never_connected_is_422() {
    let app = spawn().await;
    let resp = app
        .api_post("/api/v1/sales/orders", &order_body("nobody", "1"))
        .await;
    let body = assert_error(resp, 422, "VALIDATION_ERROR").await;
    assert!(body["error"]["details"]["seller_id"].is_array());
}

#[tokio::test]
async fn the_seed_style_customer_id_is_accepted_and_becomes_the_contact() {
    let (app, seller) = app_with_seller().await;
    let mut body = order_body("seller-1", "S-1");
    body.as_object_mut().unwrap().remove("customer");
    body["customer_id"] = json!(4711);
    let resp = app.api_post("/api/v1/sales/orders", &body).await;
    assert_eq!(resp.status().as_u16(), 202);
    drain(&app).await;
    let contacts = app.sandbox.contacts(&seller.host);
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].name, "Mijoz #4711");
}

#[tokio::test]
async fn posting_the_same_order_again_returns_200_with_it_and_a_different_body_is_409() {
    let app = spawn().await;
    app.leaves_queued(
        Queue::Push,
        "idempotency of the API alone: the order is never pushed",
    );
    connect(&app, "seller-1", "sellerone.amocrm.ru").await;
    let body = order_body("seller-1", "1042");
    let first = post_order(&app, &body).await;
    // The same order written differently (defaults spelled out, amount as a string) is the same order.
    let mut same = body.clone();
    same["total_amount"] = json!("150000.00");
    same["status"] = json!("pending");
    let again = app.api_post("/api/v1/sales/orders", &same).await;
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["data"]["id"], first["data"]["id"]);

    let mut different = body.clone();
    different["total_amount"] = json!(99);
    let resp = app.api_post("/api/v1/sales/orders", &different).await;
    assert_error(resp, 409, "DUPLICATE_RESOURCE").await;
    assert_eq!(order_rows(&app, "seller-1").await.len(), 1);
}

#[tokio::test]
async fn posting_the_same_order_twice_concurrently_creates_one_order_and_one_lead() {
    let (app, seller) = app_with_seller().await;
    let body = order_body("seller-1", "77");
    for _ in 0..3 {
        let posts = (0..8).map(|_| app.api_post("/api/v1/sales/orders", &body));
        let answers = join_all(posts).await;
        let mut ids = HashSet::new();
        let mut created = 0;
        for r in answers {
            let status = r.status().as_u16();
            assert!(status == 202 || status == 200, "status {status}");
            created += usize::from(status == 202);
            let v: Value = r.json().await.unwrap();
            ids.insert(v["data"]["id"].as_str().unwrap().to_owned());
        }
        assert_eq!(ids.len(), 1, "every answer names the same order");
        assert!(created <= 1);
    }
    assert_eq!(order_rows(&app, "seller-1").await.len(), 1);
    drain(&app).await;
    // Posting once more after the push creates nothing either.
    let r = app.api_post("/api/v1/sales/orders", &body).await;
    assert_eq!(r.status().as_u16(), 200);
    drain(&app).await;
    assert_eq!(app.sandbox.leads(&seller.host).len(), 1);
    assert_eq!(app.sandbox.counters(&seller.host).complex_calls, 1);
}

#[tokio::test]
async fn orders_are_listed_with_filters_and_paging() {
    let app = spawn().await;
    connect(&app, "seller-1", "sellerone.amocrm.ru").await;
    connect(&app, "seller-2", "sellertwo.amocrm.ru").await;
    post_orders(&app, "seller-1", &numbers("A", 5)).await;
    post_orders(&app, "seller-2", &numbers("B", 3)).await;
    let mut paid = order_body("seller-2", "B-paid");
    paid["status"] = json!("paid");
    assert_eq!(
        app.api_post("/api/v1/sales/orders", &paid).await.status(),
        202
    );

    let page = app
        .api_json("/api/v1/sales/orders?seller_id=seller-1&per_page=2&page=2")
        .await;
    assert_eq!(page["meta"], json!({"page": 2, "per_page": 2, "total": 5}));
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["seller_id"] == "seller-1")
    );

    let paid = app.api_json("/api/v1/sales/orders?status=paid").await;
    assert_eq!(paid["meta"]["total"], 1);
    assert_eq!(paid["data"][0]["order_number"], "B-paid");

    drain(&app).await;
    let synced = app
        .api_json("/api/v1/sales/orders?sync_state=synced&seller_id=seller-2")
        .await;
    assert_eq!(synced["meta"]["total"], 4);
    assert!(synced["data"][0]["sync"]["lead_id"].as_i64().is_some());

    let bad = app.api_get("/api/v1/sales/orders?sync_state=lost").await;
    assert_error(bad, 400, "BAD_REQUEST").await;
    let missing = app.api_get("/api/v1/sales/orders/ord_doesnotexist").await;
    assert_error(missing, 404, "RESOURCE_NOT_FOUND").await;
}

// ---------------------------------------------------------------------------------------------------------
// Push against the sandbox

#[tokio::test]
async fn one_hundred_twenty_orders_become_exactly_120_leads_in_three_complex_calls() {
    let (app, seller) = app_with_seller().await;
    let list = numbers("N", 120);
    post_orders(&app, "seller-1", &list).await;
    let before = app.sandbox.counters(&seller.host);
    let report = drain(&app).await;
    let rows = order_rows(&app, "seller-1").await;
    assert_eq!(report.pushed, 120, "{report:?} {:?}", rows[0].last_error);
    let after = app.sandbox.counters(&seller.host);
    assert_eq!(after.complex_calls - before.complex_calls, 3);
    assert_eq!(after.leads_created - before.leads_created, 120);
    assert_eq!(after.rate_limited, 0, "no 429 at the sandbox");

    let leads = leads_by_number(&app, &seller);
    assert_eq!(leads.len(), 120);
    let contacts: HashMap<u64, amocrm_sandbox::Contact> = app
        .sandbox
        .contacts(&seller.host)
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let companies: HashMap<u64, amocrm_sandbox::Company> = app
        .sandbox
        .companies(&seller.host)
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    for row in order_rows(&app, "seller-1").await {
        assert_eq!(row.sync_state, SyncState::Synced);
        let lead = &leads[&row.order_number];
        assert_eq!(row.lead_id, Some(lead.id as i64), "stored lead id");
        assert_eq!(lead.name, format!("Buyurtma #{}", row.order_number));
        assert_eq!(lead.price, 150000);
        assert_eq!(lead.pipeline_id, seller.pipeline_id);
        assert_eq!(lead.status_id, seller.stages["pending"]);
        assert_eq!(lead.request_id.as_deref(), Some(row.id.as_str()));
        let link = lead
            .custom_fields_values
            .iter()
            .find(|f| f.field_id == seller.field_link)
            .expect("link field");
        assert_eq!(
            link.values[0].as_text(),
            format!("https://market.example/orders/{}", row.order_number)
        );
        assert!(lead.tags.iter().any(|t| t.name == "marketplace"));
        let contact = &contacts[&lead.contact_ids[0]];
        assert_eq!(row.contact_id, Some(contact.id as i64));
        assert_eq!(contact.name, "Ali Valiyev");
        assert_eq!(contact.values_of("PHONE"), vec!["+998901234567"]);
        assert_eq!(contact.values_of("EMAIL"), vec!["ali@example.com"]);
        let company = &companies[&lead.company_id.expect("company linked")];
        assert_eq!(company.name, "Vali Savdo");
        assert_eq!(row.company_id, Some(company.id as i64));
    }
    assert_eq!(
        event_count(&app, "seller-1", "order.synced").await,
        120,
        "one order.synced per order"
    );
}

#[tokio::test]
async fn with_500s_drops_after_write_and_429s_1000_orders_become_exactly_1000_leads() {
    // A dropped answer is noticed when the request times out.
    let app = spawn_with(env_vars(&[("AMOCRM_REQUEST_TIMEOUT", "1s")])).await;
    let seller = connect(&app, "seller-1", "sellerone.amocrm.ru").await;
    let list = numbers("F", 1000);
    post_orders(&app, "seller-1", &list).await;

    app.set_faults(&seller.host, |f| {
        f.force_429_next = 2;
        f.fail_next = 2;
        f.drop_after_write_next = 1;
    });
    // Push until the first round of faults is used up, then inject a second round mid-way.
    let mut total = push::Report::default();
    for _ in 0..500 {
        if app.sandbox.faults(&seller.host) == Faults::default() {
            break;
        }
        let r = push::run_once(&app.state).await.unwrap();
        total.pushed += r.pushed;
        total.adopted += r.adopted;
        if !r.did_work() {
            // Everything due is resting after a 429 or a backoff: wait for that moment, not longer.
            let rest = push::rest_time(&app.state, std::time::Duration::from_secs(5)).await;
            tokio::time::sleep(rest.max(std::time::Duration::from_millis(5))).await;
        }
    }
    assert_eq!(app.sandbox.faults(&seller.host), Faults::default());
    assert!(total.pushed < 1000, "faults injected mid-way");
    app.set_faults(&seller.host, |f| {
        f.force_429_next = 1;
        f.fail_next = 2;
        f.drop_after_write_next = 1;
    });
    let report = drain(&app).await;
    let counters = app.sandbox.counters(&seller.host);
    assert_eq!(counters.dropped, 2, "{counters:?}");
    assert_eq!(counters.injected_failures, 4, "{counters:?}");
    assert_eq!(
        counters.rate_limited, 3,
        "only the injected 429s: {counters:?}"
    );

    let leads = leads_by_number(&app, &seller);
    assert_eq!(leads.len(), 1000, "none lost, none duplicated");
    let rows = order_rows(&app, "seller-1").await;
    assert_eq!(rows.len(), 1000);
    let mut lead_ids = HashSet::new();
    for row in &rows {
        assert_eq!(row.sync_state, SyncState::Synced, "{row:?}");
        assert!(!row.needs_lookup);
        let lead = &leads[&row.order_number];
        assert_eq!(row.lead_id, Some(lead.id as i64));
        assert!(lead_ids.insert(lead.id));
        // Adopted leads too: their contact and company ids are read back with the lead.
        let contact = lead.contact_ids.first().map(|c| *c as i64);
        assert!(contact.is_some(), "every lead has its buyer: {lead:?}");
        assert_eq!(row.contact_id, contact, "{row:?}");
        assert_eq!(row.company_id, lead.company_id.map(|c| c as i64), "{row:?}");
        assert!(row.company_id.is_some(), "{row:?}");
    }
    assert_eq!(
        total.adopted + report.adopted + total.pushed + report.pushed,
        1000,
        "every order stored exactly once: {report:?}"
    );
    assert!(
        total.adopted + report.adopted >= 50,
        "a dropped leads/complex answer was resolved by adopting its leads: {report:?}"
    );
    assert_eq!(event_count(&app, "seller-1", "order.synced").await, 1000);
}

#[tokio::test]
async fn an_order_amocrm_rejects_fails_with_its_reason_and_the_rest_of_the_batch_goes_through() {
    let (app, seller) = app_with_seller().await;
    // Point the order-number field at a numeric field: amoCRM then refuses non-numeric order numbers.
    let numeric = seller
        .api(&app)
        .create_lead_custom_fields(&[NewCustomField {
            name: "Raqam".into(),
            type_: "numeric".into(),
            code: None,
            is_api_only: false,
        }])
        .await
        .unwrap()[0]
        .id;
    set_order_number_field(&app, numeric as i64).await;
    let list: Vec<String> = vec!["101".into(), "ABC-1".into(), "102".into(), "103".into()];
    post_orders(&app, "seller-1", &list).await;
    let report = drain(&app).await;
    assert_eq!(report.failed, 1, "{report:?}");
    assert_eq!(report.pushed, 3, "{report:?}");
    assert_eq!(app.sandbox.leads(&seller.host).len(), 3);

    let failed = app.api_json("/api/v1/sales/orders?sync_state=failed").await;
    assert_eq!(failed["meta"]["total"], 1);
    let bad = &failed["data"][0];
    assert_eq!(bad["order_number"], "ABC-1");
    let reason = bad["sync"]["last_error"].as_str().unwrap();
    assert!(reason.contains("custom_fields_values"), "{reason}");
    assert_eq!(event_count(&app, "seller-1", "order.sync_failed").await, 1);

    // Fixed on the seller's side (field mapping back to the text field), the order is retried by the API.
    set_order_number_field(&app, seller.field_number as i64).await;
    let id = bad["id"].as_str().unwrap();
    let resp = app
        .api_post_empty(&format!("/api/v1/sales/orders/{id}/retry"))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["sync"]["state"], "queued");
    drain(&app).await;
    let order = app.api_json(&format!("/api/v1/sales/orders/{id}")).await;
    assert_eq!(order["data"]["sync"]["state"], "synced");
    assert_eq!(app.sandbox.leads(&seller.host).len(), 4);
    // A synced order cannot be retried.
    let resp = app
        .api_post_empty(&format!("/api/v1/sales/orders/{id}/retry"))
        .await;
    assert_error(resp, 422, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn patch_moves_the_lead_to_the_mapped_stage_and_moves_apply_in_order() {
    let (app, seller) = app_with_seller().await;
    let created = post_order(&app, &order_body("seller-1", "M1")).await;
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    drain(&app).await;
    let lead_id = order_rows(&app, "seller-1").await[0].lead_id.unwrap() as u64;

    let patch = |status: &str| {
        let (path, body) = (
            format!("/api/v1/sales/orders/{id}"),
            json!({ "status": status }),
        );
        let app = &app;
        async move { app.api_patch(&path, &body).await }
    };
    let resp = patch("paid").await;
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["status"], "paid");
    drain(&app).await;
    assert_eq!(
        app.sandbox.lead(&seller.host, lead_id).unwrap().status_id,
        seller.stages["paid"]
    );

    // Two changes before the worker runs: both are applied, in order, ending at the last one.
    assert_eq!(patch("shipping").await.status().as_u16(), 202);
    assert_eq!(patch("completed").await.status().as_u16(), 202);
    app.sandbox.clear_log();
    let step = push::run_once(&app.state).await.unwrap();
    assert_eq!(step.moved, 2, "{step:?}");
    let patches = app
        .sandbox
        .request_log()
        .into_iter()
        .filter(|r| r.method == "PATCH" && r.path == "/api/v4/leads")
        .count();
    assert_eq!(
        patches, 2,
        "one move of an order per call, so they cannot be reordered"
    );
    let lead = app.sandbox.lead(&seller.host, lead_id).unwrap();
    assert_eq!(
        (lead.pipeline_id, lead.status_id),
        (seller.pipeline_id, 142)
    );
    let moves = app.db.orders().moves_of(&id).await.unwrap();
    assert_eq!(
        moves.iter().map(|m| m.state.as_str()).collect::<Vec<_>>(),
        vec!["done", "done", "done"]
    );

    let bad = patch("refunded").await;
    assert_error(bad, 422, "VALIDATION_ERROR").await;
    let missing = app
        .api_patch("/api/v1/sales/orders/ord_nope", &json!({"status": "paid"}))
        .await;
    assert_error(missing, 404, "RESOURCE_NOT_FOUND").await;
}

#[tokio::test]
async fn a_status_changed_before_the_push_creates_the_lead_in_that_stage_without_a_move() {
    let (app, seller) = app_with_seller().await;
    let created = post_order(&app, &order_body("seller-1", "E1")).await;
    let id = created["data"]["id"].as_str().unwrap();
    let resp = app
        .api_patch(
            &format!("/api/v1/sales/orders/{id}"),
            &json!({"status": "awaiting_payment"}),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let report = drain(&app).await;
    assert_eq!(report.moved, 0);
    let leads = app.sandbox.leads(&seller.host);
    assert_eq!(leads[0].status_id, seller.stages["awaiting_payment"]);
}

#[tokio::test]
async fn orders_of_a_failed_connection_are_held_and_pushed_after_reconnecting() {
    let (app, seller) = app_with_seller().await;
    set_connection_status(&app, "seller-1", "refresh_failed").await;
    let resp = app
        .api_post("/api/v1/sales/orders", &order_body("seller-1", "H1"))
        .await;
    assert_eq!(resp.status().as_u16(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["data"]["sync"]["state"], "held");
    let r = push::run_once(&app.state).await.unwrap();
    assert_eq!(r.calls, 0);
    assert!(app.sandbox.leads(&seller.host).is_empty());

    // Reconnected: the connect flow releases the held orders.
    set_connection_status(&app, "seller-1", "active").await;
    let released = order_service::release_held(&app.db, "seller-1")
        .await
        .unwrap();
    assert_eq!(released, 1);
    drain(&app).await;
    assert_eq!(app.sandbox.leads(&seller.host).len(), 1);

    // A queued order whose connection is revoked meanwhile is held by the worker, and picked up by it
    // again once the connection is active, without anyone calling release_held.
    assert_eq!(
        app.api_post("/api/v1/sales/orders", &order_body("seller-1", "H2"))
            .await
            .status(),
        202
    );
    set_connection_status(&app, "seller-1", "revoked").await;
    let r = push::run_once(&app.state).await.unwrap();
    assert_eq!(r.held, 1);
    let held = app.api_json("/api/v1/sales/orders?sync_state=held").await;
    assert_eq!(held["meta"]["total"], 1);
    set_connection_status(&app, "seller-1", "active").await;
    let r = drain(&app).await;
    assert_eq!(r.released, 1);
    assert_eq!(app.sandbox.leads(&seller.host).len(), 2);
}

#[tokio::test]
async fn a_busy_seller_does_not_starve_the_others() {
    let app = spawn().await;
    let busy = connect(&app, "busy", "sellerone.amocrm.ru").await;
    let quiet = connect(&app, "quiet", "sellertwo.amocrm.ru").await;
    post_orders(&app, "busy", &numbers("B", 1000)).await;
    post_orders(&app, "quiet", &numbers("Q", 3)).await;
    // The first step serves both accounts: the quiet seller's orders do not wait behind 400 others.
    let r = push::run_once(&app.state).await.unwrap();
    assert_eq!(r.accounts, 2);
    assert_eq!(app.sandbox.leads(&quiet.host).len(), 3);
    assert!(app.sandbox.leads(&busy.host).len() < 1000);
    drain(&app).await;
    assert_eq!(app.sandbox.leads(&busy.host).len(), 1000);
    assert_eq!(app.sandbox.counters(&busy.host).rate_limited, 0);
}

#[tokio::test]
async fn two_instances_pushing_one_queue_make_exactly_one_lead_per_order_and_no_429() {
    let app = spawn().await;
    let one = connect(&app, "seller-1", "sellerone.amocrm.ru").await;
    let two = connect(&app, "seller-2", "sellertwo.amocrm.ru").await;
    post_orders(&app, "seller-1", &numbers("X", 1000)).await;
    post_orders(&app, "seller-2", &numbers("Y", 200)).await;

    // A second service instance on the same database and the same amoCRM.
    let other = app.spawn_peer().await;

    // The first instance serves one turn (14 calls, 700 of seller-1's orders) and then stops.
    let first = push::run_once(&app.state).await.unwrap();
    assert_eq!(first.accounts, 2);
    assert!(first.pushed < 1200);
    // The second takes over what is left; it waits for the first one's rate-limit window to close
    // (its own limiter never saw those calls), so amoCRM sees no burst above 7 per second.
    let (second, drained) = push::drain(&other.state, 2_000).await.unwrap();
    assert!(drained);
    assert_eq!(first.pushed + second.pushed, 1200, "{first:?} {second:?}");

    // Both at once on new orders: still exactly one lead per order.
    post_orders(&app, "seller-1", &numbers("Z", 300)).await;
    post_orders(&app, "seller-2", &numbers("W", 300)).await;
    let (a, b) = tokio::join!(
        push::drain(&app.state, 2_000),
        push::drain(&other.state, 2_000)
    );
    let (a, b) = (a.unwrap().0, b.unwrap().0);
    assert_eq!(a.pushed + b.pushed, 600, "{a:?} {b:?}");

    assert_eq!(leads_by_number(&app, &one).len(), 1300);
    assert_eq!(leads_by_number(&app, &two).len(), 500);
    assert_eq!(app.sandbox.counters(&one.host).complex_calls, 26);
    let log: Vec<String> = app
        .sandbox
        .request_log()
        .iter()
        .filter(|r| r.host.as_deref() == Some(one.host.as_str()))
        .map(|r| {
            format!(
                "{} {} {} {}",
                r.at.format("%H:%M:%S%.3f"),
                r.method,
                r.path,
                r.status
            )
        })
        .collect();
    assert_eq!(app.sandbox.counters(&one.host).rate_limited, 0, "{log:#?}");
    assert_eq!(app.sandbox.counters(&two.host).rate_limited, 0);
}

#[tokio::test]
async fn a_401_goes_through_the_token_provider_and_the_order_is_pushed_with_a_refreshed_token() {
    let (app, seller) = app_with_seller().await;
    // amoCRM's clock moves past the access token's expiry while our row still believes it valid.
    app.sandbox.advance_clock(&seller.host, 25 * 3600);
    post_orders(&app, "seller-1", &numbers("T", 3)).await;
    let report = drain(&app).await;
    assert_eq!(report.pushed, 3, "{report:?}");
    let counters = app.sandbox.counters(&seller.host);
    assert!(counters.unauthorized >= 1, "{counters:?}");
    assert_eq!(counters.refreshes, 1, "{counters:?}");
    assert_eq!(leads_by_number(&app, &seller).len(), 3);
}

#[tokio::test]
async fn a_revoked_grant_holds_the_orders_instead_of_failing_them() {
    let (app, seller) = app_with_seller().await;
    assert!(
        app.sandbox
            .revoke_grant(&seller.host, &app.env["AMOCRM_CLIENT_ID"])
    );
    post_orders(&app, "seller-1", &numbers("R", 2)).await;
    drain(&app).await;
    let held = app.api_json("/api/v1/sales/orders?sync_state=held").await;
    assert_eq!(held["meta"]["total"], 2, "{held}");
    assert!(app.sandbox.leads(&seller.host).is_empty());
    let conn = app.api_json("/api/v1/connections/seller-1").await;
    // The refresh is refused (refresh_failed); the uninstall hook may have marked it revoked first.
    let status = conn["data"]["status"].as_str().unwrap();
    assert!(
        status == "refresh_failed" || status == "revoked",
        "{status}"
    );
    assert_eq!(event_count(&app, "seller-1", "order.sync_failed").await, 0);
}

#[tokio::test]
async fn a_deleted_order_field_is_provisioned_again_and_the_order_pushed() {
    let (app, seller) = app_with_seller().await;
    app.sandbox
        .delete_custom_field(&seller.host, seller.field_number)
        .unwrap();
    post_orders(&app, "seller-1", &numbers("D", 2)).await;
    let report = drain(&app).await;
    assert_eq!((report.pushed, report.failed), (2, 0), "{report:?}");
    assert!(report.reprovisioned >= 1, "{report:?}");
    let now = Seller::of(&app, "seller-1").await;
    assert_ne!(
        now.field_number, seller.field_number,
        "a new field was made"
    );
    let leads = leads_by_number(&app, &now);
    assert_eq!(
        leads.len(),
        2,
        "the leads carry the order number in the new field"
    );
}

#[tokio::test]
async fn a_deleted_pipeline_is_provisioned_again_and_the_orders_land_in_the_new_one() {
    let (app, seller) = app_with_seller().await;
    app.sandbox
        .delete_pipeline(&seller.host, seller.pipeline_id)
        .unwrap();
    post_orders(&app, "seller-1", &numbers("P", 3)).await;
    let report = drain(&app).await;
    assert_eq!((report.pushed, report.failed), (3, 0), "{report:?}");
    let now = Seller::of(&app, "seller-1").await;
    assert_ne!(now.pipeline_id, seller.pipeline_id);
    for lead in app.sandbox.leads(&seller.host) {
        assert_eq!(
            (lead.pipeline_id, lead.status_id),
            (now.pipeline_id, now.stages["pending"])
        );
    }
}
