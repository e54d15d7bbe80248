//! Webhooks in: the amoCRM intake (tokens, accounts, malformed and oversized bodies, every real sample),
//! and the processor turning sandbox lead moves into exactly one `payment.completed` per lead.

use amocrm_connector::domain::status::ConnectionStatus;
use std::time::Duration;

use amocrm_connector::domain::ids::random_token;
use amocrm_connector::domain::status::InboxState;
use amocrm_connector::services::ingest::{self, AMOCRM_WEBHOOK_SETTINGS, SubscriptionCheck};
use amocrm_connector::storage::schema::{amocrm_connections as c, orders};
use amocrm_connector::storage::{self as st, events, inbox, lead_states};
use amocrm_connector::workers::{delivery as delivery_worker, webhook_processor};
use amocrm_sandbox::{SandboxConfig, WebhookFormat, form};
use diesel::prelude::*;
use serde_json::{Value, json};

use crate::support::{
    Behaviour, Queue, Receiver, Seller, TestApp, assert_error, connect, connect_seller, connection,
    connection_row, env_vars, insert_connections, set_connection_status, spawn_app,
    spawn_app_against, spawn_app_with,
};

/// Why a test leaves its last body unprocessed.
const FLOWS_AGAIN: &str = "the body that shows webhooks flow again is not processed";

/// Real amoCRM payloads from public sources (provenance in the folder's SOURCES.md).
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/amocrm");

/// A sample's connection: an account of its own whose bodies name another pipeline, so they are stored
/// and ignored.
async fn insert_sample_connection(
    app: &TestApp,
    seller: &str,
    account_id: i64,
    subdomain: &str,
    token: &str,
) {
    let expires_at = st::now() + chrono::TimeDelta::hours(23);
    let mut row = connection_row(
        app,
        seller,
        &format!("{subdomain}.amocrm.ru"),
        account_id,
        ("a", "r"),
        expires_at,
    );
    row.subdomain = subdomain.to_owned();
    row.webhook_token = token.to_owned();
    insert_connections(app, vec![row]).await;
    app.update(
        c::table.filter(c::seller_id.eq(seller.to_owned())),
        c::pipeline_id.eq(Some(1i64)),
    )
    .await;
}

/// A marketplace order whose pushed lead is `lead_id` (the orders table is the order push's; written
/// here directly).
pub async fn insert_order(
    app: &TestApp,
    seller: &str,
    number: &str,
    minor: i64,
    lead_id: Option<u64>,
) -> String {
    let id = format!("ord_{}", random_token(12));
    let now = st::now();
    let values = (
        orders::id.eq(id.clone()),
        orders::seller_id.eq(seller.to_owned()),
        orders::order_number.eq(number.to_owned()),
        orders::status.eq("pending"),
        orders::total_amount_minor.eq(minor),
        orders::currency.eq("UZS"),
        orders::body_json.eq("{}"),
        orders::body_hash.eq(random_token(16)),
        orders::sync_state.eq("synced"),
        orders::lead_id.eq(lead_id.map(|l| l as i64)),
        orders::next_attempt_at.eq(now),
        orders::created_at.eq(now),
        orders::updated_at.eq(now),
    );
    app.db
        .run(move |conn| {
            Ok(diesel::insert_into(orders::table)
                .values(&values)
                .execute(conn)?)
        })
        .await
        .unwrap();
    id
}

async fn post_body(app: &TestApp, url: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("user-agent", "amoCRM-WebHook-client/1.0")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// What the subscription check finds for the seller's connection (and mends).
async fn subscription_check(app: &TestApp, seller: &str) -> SubscriptionCheck {
    let conn = connection(app, seller).await.expect("connection");
    ingest::ensure_amocrm_subscription(&app.state, &conn)
        .await
        .unwrap()
}

async fn inbox_count(app: &TestApp) -> i64 {
    app.db.run(|c| inbox::count(c, None)).await.unwrap()
}

async fn events_named(app: &TestApp, seller: &str, name: &str) -> Vec<Value> {
    let (seller, name) = (seller.to_owned(), name.to_owned());
    app.db
        .run(move |c| events::list_after(c, 0, Some(&seller), Some(&name), 1000))
        .await
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect()
}

/// Processes stored bodies until none is due.
async fn process_all(app: &TestApp) -> webhook_processor::Report {
    let mut total = webhook_processor::Report::default();
    for _ in 0..500 {
        let r = webhook_processor::run_once(&app.state).await.unwrap();
        if r.claimed == 0 {
            break;
        }
        total.claimed += r.claimed;
        total.processed += r.processed;
        total.retrying += r.retrying;
        total.failed += r.failed;
        total.events_recorded += r.events_recorded;
    }
    total
}

/// What the processor keeps of the seller's `lead`.
async fn lead_state(app: &TestApp, seller: &'static str, lead: u64) -> lead_states::LeadState {
    app.db
        .run(move |c| lead_states::find(c, seller, lead as i64))
        .await
        .unwrap()
        .expect("the lead's state")
}

/// Waits for the webhooks amoCRM is sending, then processes what they stored.
async fn settle(app: &TestApp) -> webhook_processor::Report {
    app.sandbox.webhooks_idle().await;
    process_all(app).await
}

/// The form bodies the sandbox sent for `host` (oldest first).
fn sandbox_bodies(app: &TestApp, host: &str) -> Vec<String> {
    app.sandbox
        .deliveries()
        .into_iter()
        .filter(|d| d.host == host && !d.body.is_empty())
        .map(|d| d.body)
        .collect()
}

fn body_status(body: &str) -> Option<u64> {
    let p = amocrm_client::webhook::parse(body.as_bytes()).unwrap();
    p.events
        .iter()
        .find(|e| e.action == amocrm_client::LeadAction::Status)
        .and_then(|e| e.status_id)
}

// ---------- the intake ----------

#[tokio::test]
async fn unknown_tokens_foreign_accounts_and_malformed_or_oversized_bodies_store_nothing() {
    let app = spawn_app().await;
    app.leaves_queued(Queue::Inbox, "the good body is checked pending");
    let one = connect_seller(&app, "seller-1", "sellerone.amocrm.ru").await;
    let two = connect_seller(&app, "seller-2", "sellertwo.amocrm.ru").await;
    let good = format!(
        "leads[status][0][id]=1&leads[status][0][status_id]={}&leads[status][0][pipeline_id]={}&account[id]={}&account[subdomain]=sellerone",
        one.stages["awaiting_payment"], one.pipeline_id, one.account_id
    );
    // Seller two's body at seller one's destination, and variants naming the other account.
    let foreign = [
        format!(
            "leads[status][0][id]=1&account[id]={}&account[subdomain]=sellertwo",
            two.account_id
        ),
        format!(
            "leads[status][0][id]=1&account[id]={}&account[subdomain]=sellerone",
            two.account_id
        ),
        format!(
            "leads[status][0][id]=1&account[id]={}&account[subdomain]=sellertwo",
            one.account_id
        ),
        format!(
            "leads[status][0][id]=1&leads[status][0][account_id]={}&account[subdomain]=sellerone",
            two.account_id
        ),
    ];
    for body in &foreign {
        let resp = post_body(&app, &one.intake_url(&app), body.clone()).await;
        assert_error(resp, 403, "INSUFFICIENT_PERMISSION").await;
    }
    for body in [
        "",
        "garbage",
        "leads=1",
        "leads[status][0][id]=abc&account[id]=1",
        "account[id]=12x",
    ] {
        let resp = post_body(&app, &one.intake_url(&app), body).await;
        assert_error(resp, 400, "BAD_REQUEST").await;
    }
    assert_error(
        post_body(
            &app,
            &app.url("/webhooks/amocrm/not-a-known-token"),
            good.clone(),
        )
        .await,
        404,
        "RESOURCE_NOT_FOUND",
    )
    .await;
    let huge = format!("{good}&leads[status][0][name]={}", "x".repeat(300 * 1024));
    let resp = post_body(&app, &one.intake_url(&app), huge).await;
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(inbox_count(&app).await, 0, "nothing was stored");

    let resp = post_body(&app, &one.intake_url(&app), good).await;
    assert_eq!(resp.status().as_u16(), 200);
    let rows = app
        .db
        .run(|c| inbox::for_seller(c, "seller-1"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "a good body is stored before the answer");
    assert_eq!(rows[0].state, InboxState::Pending);
}

#[tokio::test]
async fn every_real_amocrm_sample_body_is_accepted_stored_and_processed_without_effect() {
    let app = spawn_app().await;
    let mut files: Vec<_> = std::fs::read_dir(SAMPLES)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("webhook-") && (n.ends_with(".txt") || n.ends_with("-decoded.json"))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 12, "{files:?}");
    let mut accepted = 0;
    for (i, path) in files.iter().enumerate() {
        let raw = std::fs::read_to_string(path).unwrap();
        let bodies: Vec<String> = if path.extension().is_some_and(|e| e == "json") {
            vec![form::from_json(&serde_json::from_str(&raw).unwrap())]
        } else {
            // As captured, and (for the one stored unescaped) as it would travel on the wire.
            let mut v = vec![raw.trim_end().to_owned()];
            if raw.contains('[') {
                v.push(String::from_utf8(form::percent_encode(raw.trim_end().as_bytes())).unwrap());
            }
            v
        };
        for body in bodies {
            let parsed = amocrm_client::webhook::parse(body.as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let account_id = parsed
                .account_id
                .or_else(|| parsed.events.iter().find_map(|e| e.account_id))
                .unwrap_or(1_000 + i as u64) as i64;
            let subdomain = parsed
                .subdomain
                .clone()
                .unwrap_or_else(|| format!("sample{i}"));
            let token = random_token(24);
            let seller = format!("sample-{i}-{}", random_token(4));
            insert_sample_connection(&app, &seller, account_id, &subdomain, &token).await;
            let resp = post_body(&app, &app.url(&format!("/webhooks/amocrm/{token}")), body).await;
            assert_eq!(resp.status().as_u16(), 200, "{}", path.display());
            accepted += 1;
        }
    }
    assert_eq!(inbox_count(&app).await, accepted);
    let r = process_all(&app).await;
    assert_eq!(r.processed as i64, accepted);
    assert_eq!((r.failed, r.retrying, r.events_recorded), (0, 0, 0));
    let processed = app
        .db
        .run(|c| inbox::count(c, Some("processed")))
        .await
        .unwrap();
    assert_eq!(
        processed, accepted,
        "stored and ignored: other pipelines and entities"
    );
}

/// One entity of a webhook body in amoCRM's legacy shape: strings only, custom fields as
/// `custom_fields[i][id|code|values[j][value]]`, per-action extras (`amocrm-api.md` §6.2).
fn corpus_entity(entity: &str, action: &str, account_id: i64, full: bool) -> Value {
    if !full {
        return json!({"id": "91001"});
    }
    let mut e = json!({
        "id": "91001", "account_id": account_id.to_string(), "last_modified": "1733400000",
        "modified_user_id": "5001", "responsible_user_id": "5001",
    });
    let fields = match entity {
        "leads" | "customers" => json!({
            "name": "Buyurtma", "status_id": "777", "pipeline_id": "888", "price": "",
            "tags": [{"id": "1", "name": "Bozor"}],
        }),
        "contacts" => json!({
            "name": "Aziza",
            "type": if action.ends_with("company") { "company" } else { "contact" },
            "custom_fields": [{"id": "3001", "name": "Телефон", "code": "PHONE", "values": [{"value": "+998 90 123-45-67", "enum": "9001"}]}],
            "linked_leads_id": {"91002": {"ID": "91002"}},
        }),
        "task" => json!({
            "element_id": "91002", "element_type": "2", "task_type": "1",
            "text": "Qo'ng'iroq qiling", "complete_till": "1733500000",
        }),
        "unsorted" => json!({
            "uid": "a1b2c3", "category": "forms", "pipeline_id": "888", "lead_id": "91002",
            "data": {"leads": [{"name": "Ariza"}]},
        }),
        "catalogs" => json!({"catalog_id": "4001", "name": "Choynak"}),
        "message" => {
            json!({"chat_id": "c-1", "talk_id": "7", "contact_id": "91003", "text": "Salom"})
        }
        "talk" => {
            json!({"talk_id": "7", "chat_id": "c-1", "entity_id": "91002", "is_in_work": "1"})
        }
        _ => json!({}),
    };
    let o = e.as_object_mut().expect("object");
    if let Value::Object(fields) = fields {
        o.extend(fields);
    }
    match action {
        "status" => {
            o.insert("old_status_id".into(), json!("776"));
        }
        "responsible" => {
            o.insert("old_responsible_user_id".into(), json!("5002"));
        }
        "delete" => {
            o.retain(|k, _| {
                k == "id" || k == "account_id" || k == "status_id" || k == "pipeline_id"
            });
            o.insert("type".into(), json!(entity.trim_end_matches('s')));
        }
        "note" => {
            let note = json!({
                "id": "61001", "text": "Izoh", "note_type": "4", "element_type": "2",
                "element_id": "91002", "metadata": "{\"event_source\":{\"en\":\"API\"}}",
                "timestamp_x": "2026-12-06 10:00:00", "created_by": "5001",
                "account_id": account_id.to_string(),
            });
            return json!({"note": note});
        }
        _ => {}
    }
    e
}

#[tokio::test]
async fn every_entity_and_event_amocrm_lists_is_answered_200_stored_and_ignored_where_it_means_nothing()
 {
    let app = spawn_app().await;
    let (account_id, subdomain, token) = (31_337_i64, "korpus", random_token(24));
    insert_sample_connection(&app, "corpus-seller", account_id, subdomain, &token).await;
    let url = app.url(&format!("/webhooks/amocrm/{token}"));
    let actions = [
        "add",
        "update",
        "delete",
        "restore",
        "status",
        "responsible",
        "note",
    ];
    let entities: [(&str, &[&str]); 9] = [
        ("leads", &actions),
        ("contacts", &actions),
        ("contacts-company", &actions),
        ("customers", &actions),
        ("task", &["add", "update", "delete", "responsible"]),
        ("unsorted", &["add", "update", "delete"]),
        ("catalogs", &["add", "update", "delete"]),
        ("message", &["add"]),
        ("talk", &["add", "update"]),
    ];
    let mut posted = 0i64;
    for (entity, acts) in entities {
        let (key, company) = match entity.strip_suffix("-company") {
            Some(k) => (k, true),
            None => (entity, false),
        };
        for action in acts {
            for full in [true, false] {
                let tag = if company {
                    format!("{action}_company")
                } else {
                    (*action).to_owned()
                };
                let account = if full {
                    json!({"id": account_id.to_string(), "subdomain": subdomain,
                           "_links": {"self": format!("https://{subdomain}.amocrm.ru")}})
                } else {
                    json!({"subdomain": subdomain})
                };
                let mut one = corpus_entity(key, &tag, account_id, full);
                if company && !full {
                    one["type"] = json!("company");
                }
                let body = json!({key: {*action: [one]}, "account": account});
                let resp = post_body(&app, &url, form::from_json(&body)).await;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                assert_eq!(status, 200, "{entity} {action} (full: {full}): {text}");
                posted += 1;
            }
        }
    }
    // The Digital Pipeline's own format: a status change with only the account block.
    let dp = format!(
        "leads[status][0][id]=91001&leads[status][0][status_id]=777&leads[status][0][pipeline_id]=888&\
         leads[status][0][old_status_id]=776&leads[status][0][old_pipeline_id]=888&\
         account[id]={account_id}&account[subdomain]={subdomain}"
    );
    let resp = post_body(&app, &url, dp.replace(' ', "")).await;
    assert_eq!(resp.status().as_u16(), 200);
    posted += 1;

    assert_eq!(inbox_count(&app).await, posted, "every body stored");
    let r = process_all(&app).await;
    assert_eq!(r.processed as i64, posted);
    assert_eq!(
        (r.failed, r.retrying, r.events_recorded),
        (0, 0, 0),
        "nothing about our orders in them: no event"
    );
}

// ---------- processing, against the sandbox ----------

#[tokio::test]
async fn moving_a_pushed_orders_lead_to_paid_delivers_exactly_one_signed_payment_completed() {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "seller-1", "sellerone.amocrm.ru").await;
    let (rx, _) = app
        .subscribed_receiver(
            "marketplace-secret",
            Behaviour::Ok,
            json!(["payment.completed", "order.status_changed"]),
        )
        .await;

    let lead = seller.push_lead(&app, "1042", 150_000).await;
    let order_id = insert_order(&app, "seller-1", "1042", 15_000_000, Some(lead)).await;
    settle(&app).await;
    assert!(
        events_named(&app, "seller-1", "order.created")
            .await
            .is_empty(),
        "our own lead is not foreign"
    );

    // The processor keeps up with the manager (with the workers running it is woken by each webhook).
    for stage in ["awaiting_payment", "paid"] {
        seller.move_to(&app, lead, stage);
        settle(&app).await;
    }

    // The same paid webhook three more times, and the older stage change again, change nothing.
    let bodies = sandbox_bodies(&app, &seller.host);
    let paid_body = bodies
        .iter()
        .rev()
        .find(|b| body_status(b) == Some(seller.stages["paid"]))
        .unwrap()
        .clone();
    let awaiting_body = bodies
        .iter()
        .find(|b| body_status(b) == Some(seller.stages["awaiting_payment"]))
        .unwrap()
        .clone();
    for body in [&paid_body, &paid_body, &paid_body, &awaiting_body] {
        let resp = post_body(&app, &seller.intake_url(&app), body.clone()).await;
        assert_eq!(resp.status().as_u16(), 200);
    }
    process_all(&app).await;

    let payments = events_named(&app, "seller-1", "payment.completed").await;
    assert_eq!(payments.len(), 1, "{payments:?}");
    let p = &payments[0]["data"];
    assert_eq!(p["order_number"], "1042");
    assert_eq!(p["order_id"], order_id.as_str());
    assert_eq!(p["lead_id"], lead);
    assert_eq!(p["amount"], 150_000);
    assert_eq!(p["currency"], "UZS");
    let moves = events_named(&app, "seller-1", "order.status_changed").await;
    let seen: Vec<(&str, &str)> = moves
        .iter()
        .map(|m| {
            (
                m["data"]["previous_status"].as_str().unwrap(),
                m["data"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("pending", "awaiting_payment"),
            ("awaiting_payment", "paid")
        ]
    );
    assert_eq!(moves[1]["data"]["order_number"], "1042");
    assert_eq!(
        moves[1]["data"]["amocrm"]["status_id"],
        seller.stages["paid"]
    );
    assert_eq!(
        moves[1]["data"]["amocrm"]["old_status_id"],
        seller.stages["awaiting_payment"]
    );

    // The payment was confirmed by reading the lead back from amoCRM.
    let reads = app
        .sandbox
        .request_log()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&format!("/api/v4/leads/{lead}")))
        .count();
    assert!(reads >= 1);

    for _ in 0..3 {
        delivery_worker::run_once(&app.state).await.unwrap();
    }
    let hits: Vec<Value> = rx
        .hits()
        .iter()
        .filter(|h| h.signature_ok)
        .map(|h| h.json())
        .collect();
    assert_eq!(rx.hits().len(), hits.len(), "every signature verifies");
    let paid: Vec<&Value> = hits
        .iter()
        .filter(|h| h["event"] == "payment.completed")
        .collect();
    assert_eq!(paid.len(), 1);
    assert_eq!(paid[0]["data"]["order_number"], "1042");
    assert_eq!(
        hits.iter()
            .filter(|h| h["event"] == "order.status_changed")
            .count(),
        2
    );

    // Later stages never pay again.
    seller.move_to(&app, lead, "shipping");
    seller.move_to(&app, lead, "completed");
    settle(&app).await;
    assert_eq!(
        events_named(&app, "seller-1", "payment.completed")
            .await
            .len(),
        1
    );
    let state = lead_state(&app, "seller-1", lead).await;
    assert!(state.paid);
    assert_eq!(state.status_id, Some(142));
    assert_eq!(state.order_id.as_deref(), Some(order_id.as_str()));
}

#[tokio::test]
async fn webhooks_arriving_out_of_order_and_repeated_still_give_one_payment_and_never_regress() {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "seller-2", "sellertwo.amocrm.ru").await;
    // amoCRM's webhooks go to a recorder first, so the test decides the order they reach the intake in.
    let recorder = Receiver::start("unused", Behaviour::Ok).await;
    seller.subscribe_amocrm(&app, &recorder.url).await;
    seller
        .unsubscribe_amocrm(&app, &seller.intake_url(&app))
        .await;

    let lead = seller.push_lead(&app, "77", 5_000).await;
    insert_order(&app, "seller-2", "77", 500_000, Some(lead)).await;
    for stage in ["awaiting_payment", "paid", "shipping"] {
        seller.move_to(&app, lead, stage);
    }
    app.sandbox.webhooks_idle().await;
    let bodies: Vec<String> = recorder
        .hits()
        .iter()
        .map(|h| String::from_utf8(h.body.clone()).unwrap())
        .collect();
    let by_stage = |s: u64| {
        bodies
            .iter()
            .find(|b| body_status(b) == Some(s))
            .unwrap()
            .clone()
    };
    let add = bodies
        .iter()
        .find(|b| b.contains("leads%5Badd%5D"))
        .unwrap()
        .clone();
    // Newest first, then the older ones, then everything again.
    let order = [
        by_stage(seller.stages["shipping"]),
        by_stage(seller.stages["paid"]),
        by_stage(seller.stages["awaiting_payment"]),
        add.clone(),
        by_stage(seller.stages["paid"]),
        by_stage(seller.stages["paid"]),
        by_stage(seller.stages["awaiting_payment"]),
    ];
    for body in order {
        assert_eq!(
            post_body(&app, &seller.intake_url(&app), body)
                .await
                .status()
                .as_u16(),
            200
        );
        process_all(&app).await;
    }
    let payments = events_named(&app, "seller-2", "payment.completed").await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["data"]["order_number"], "77");
    assert_eq!(payments[0]["data"]["amount"], 5_000);
    let state = lead_state(&app, "seller-2", lead).await;
    assert_eq!(
        state.status_id,
        Some(seller.stages["shipping"] as i64),
        "an older stage never overwrites a newer one"
    );
    let moves = events_named(&app, "seller-2", "order.status_changed").await;
    assert_eq!(
        moves.len(),
        1,
        "one move seen: to shipping; older ones arrived after it"
    );
    assert_eq!(moves[0]["data"]["status"], "shipping");
}

#[tokio::test]
async fn compact_digital_pipeline_webhooks_give_one_payment_after_reading_the_lead_back() {
    let app = spawn_app_against(SandboxConfig {
        webhook_format: WebhookFormat::DigitalPipeline,
        ..SandboxConfig::default()
    })
    .await;
    let seller = connect_seller(&app, "seller-3", "sellerthree.amocrm.ru").await;
    let lead = seller.push_lead(&app, "5", 990).await;
    insert_order(&app, "seller-3", "5", 99_000, Some(lead)).await;
    settle(&app).await;
    for stage in ["paid", "awaiting_payment", "paid"] {
        seller.move_to(&app, lead, stage);
        app.sandbox.webhooks_idle().await;
    }
    let bodies = sandbox_bodies(&app, &seller.host);
    assert!(
        bodies.iter().all(|b| !b.contains("last_modified")),
        "compact format"
    );
    for b in bodies.iter().rev() {
        post_body(&app, &seller.intake_url(&app), b.clone()).await;
    }
    process_all(&app).await;
    let payments = events_named(&app, "seller-3", "payment.completed").await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["data"]["order_number"], "5");
    assert!(
        events_named(&app, "seller-3", "order.created")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_lead_made_by_a_manager_in_the_pipeline_is_reported_once_as_order_created_then_paid_and_cancelled()
 {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "seller-1", "sellerone.amocrm.ru").await;
    let lead = seller.manager_lead(&app, "Telefon orqali", 42_000);
    // A lead in another pipeline is stored and ignored.
    let main = app
        .sandbox
        .pipelines(&seller.host)
        .into_iter()
        .find(|p| p.id != seller.pipeline_id)
        .unwrap();
    let stray = app
        .sandbox
        .create_lead(&seller.host, "Boshqa", 1, None)
        .unwrap();
    settle(&app).await;
    for (id, pipeline, stage) in [
        (lead, seller.pipeline_id, seller.stages["paid"]),
        (lead, seller.pipeline_id, 143),
        (stray, main.id, 142),
    ] {
        app.sandbox
            .move_lead(&seller.host, id, pipeline, stage)
            .unwrap();
        settle(&app).await;
    }
    // Replays change nothing.
    for b in sandbox_bodies(&app, &seller.host) {
        post_body(&app, &seller.intake_url(&app), b).await;
    }
    process_all(&app).await;

    let created = events_named(&app, "seller-1", "order.created").await;
    let rows = app
        .db
        .run(|c| inbox::for_seller(c, "seller-1"))
        .await
        .unwrap();
    for r in &rows {
        eprintln!(
            "{} {} {:?} {}",
            r.id,
            r.state,
            r.last_error,
            String::from_utf8_lossy(&r.body)
        );
    }
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["data"]["lead_id"], lead);
    assert_eq!(created[0]["data"]["name"], "Telefon orqali");
    assert_eq!(created[0]["data"]["price"], 42_000);
    assert_eq!(created[0]["data"]["pipeline_id"], seller.pipeline_id);
    let payments = events_named(&app, "seller-1", "payment.completed").await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["data"]["order_id"], Value::Null);
    assert_eq!(payments[0]["data"]["amount"], 42_000);
    let cancelled = events_named(&app, "seller-1", "order.cancelled").await;
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["data"]["lead_id"], lead);
    let all = app
        .db
        .run(|c| events::list_after(c, 0, Some("seller-1"), None, 100))
        .await
        .unwrap();
    assert!(
        all.iter()
            .all(|e| !e.payload.contains(&format!("\"lead_id\":{stray}"))),
        "the other pipeline's lead produced nothing"
    );
}

#[tokio::test]
async fn with_the_workers_running_a_move_to_paid_reaches_the_receiver_once() {
    let app = spawn_app_with(env_vars(&[("RUN_WORKERS", "true")])).await;
    let seller = connect_seller(&app, "seller-1", "sellerone.amocrm.ru").await;
    let (rx, _) = app
        .subscribed_receiver("s", Behaviour::Ok, json!(["payment.completed"]))
        .await;
    let lead = seller.push_lead(&app, "900", 10).await;
    insert_order(&app, "seller-1", "900", 1_000, Some(lead)).await;
    seller.move_to(&app, lead, "paid");
    let hits = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    assert!(hits[0].signature_ok);
    assert_eq!(hits[0].json()["data"]["order_number"], "900");
    // Nothing more arrives for the same lead.
    seller.move_to(&app, lead, "shipping");
    app.sandbox.webhooks_idle().await;
    let more = rx.wait_for(2, Duration::from_millis(1500)).await;
    assert_eq!(more.len(), 1);
}

#[tokio::test]
async fn a_subscription_amocrm_disabled_or_lost_is_subscribed_again() {
    let app = spawn_app().await;
    app.leaves_queued(Queue::Inbox, FLOWS_AGAIN);
    let seller = connect_seller(&app, "seller-1", "sellerone.amocrm.ru").await;
    let check = subscription_check(&app, "seller-1").await;
    assert!(
        matches!(check, SubscriptionCheck::Healthy { .. }),
        "{check:?}"
    );

    seller
        .unsubscribe_amocrm(&app, &seller.intake_url(&app))
        .await;
    assert!(
        app.sandbox
            .webhooks(&seller.host)
            .iter()
            .all(|w| w.destination != seller.intake_url(&app))
    );
    let check = subscription_check(&app, "seller-1").await;
    assert!(
        matches!(check, SubscriptionCheck::Resubscribed { .. }),
        "{check:?}"
    );
    let hooks = app.sandbox.webhooks(&seller.host);
    let hook = hooks
        .iter()
        .find(|w| w.destination == seller.intake_url(&app))
        .unwrap();
    assert!(!hook.disabled);
    for s in AMOCRM_WEBHOOK_SETTINGS {
        assert!(hook.settings.iter().any(|x| x == s));
    }
    // And webhooks flow again.
    let lead = seller.push_lead(&app, "1", 1).await;
    app.sandbox.webhooks_idle().await;
    assert!(
        inbox_count(&app).await >= 1,
        "lead {lead} reached the intake"
    );
}

#[tokio::test]
async fn a_subscription_amocrm_disabled_after_failed_deliveries_is_re_enabled() {
    let app = spawn_app_against(SandboxConfig {
        webhook_disable_after: 1,
        ..SandboxConfig::default()
    })
    .await;
    app.leaves_queued(Queue::Inbox, FLOWS_AGAIN);
    let seller = connect_seller(&app, "seller-1", "sellerone.amocrm.ru").await;
    // While the connection is revoked the intake refuses amoCRM's webhooks, and amoCRM gives up.
    set_connection_status(&app, "seller-1", "revoked").await;
    for n in 0..3 {
        seller.push_lead(&app, &format!("r{n}"), 1).await;
        app.sandbox.webhooks_idle().await;
    }
    let hook = |app: &TestApp| {
        app.sandbox
            .webhooks(&seller.host)
            .into_iter()
            .find(|w| w.destination == seller.intake_url(app))
            .unwrap()
    };
    assert!(hook(&app).disabled, "amoCRM disabled the destination");
    assert_eq!(inbox_count(&app).await, 0);

    set_connection_status(&app, "seller-1", "active").await;
    let check = subscription_check(&app, "seller-1").await;
    assert!(
        matches!(check, SubscriptionCheck::Resubscribed { .. }),
        "{check:?}"
    );
    assert!(!hook(&app).disabled);
    seller.push_lead(&app, "after", 1).await;
    app.sandbox.webhooks_idle().await;
    assert_eq!(inbox_count(&app).await, 1, "webhooks flow again");
}

#[tokio::test]
async fn after_a_real_connect_a_lead_moved_to_paid_gives_one_payment_with_the_order_number() {
    let app = spawn_app().await;
    let host = "sellertwo.amocrm.ru";
    let resp = connect(&app, "seller-c", host).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let conn = connection(&app, "seller-c").await.unwrap();
    assert_eq!(conn.status, ConnectionStatus::Active);
    // Provisioning subscribed amoCRM to the intake and mapped the stages: use them as the service does.
    let seller = Seller::of(&app, "seller-c").await;
    let lead = seller.push_lead(&app, "3001", 70_000).await;
    insert_order(&app, "seller-c", "3001", 7_000_000, Some(lead)).await;
    settle(&app).await;
    seller.move_to(&app, lead, "paid");
    let r = settle(&app).await;
    assert_eq!(r.failed + r.retrying, 0);
    let payments = events_named(&app, "seller-c", "payment.completed").await;
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["data"]["order_number"], "3001");
    assert_eq!(payments[0]["data"]["amount"], 70_000);
    assert_eq!(
        events_named(&app, "seller-c", "order.status_changed").await[0]["data"]["status"],
        "paid"
    );
}

#[tokio::test]
async fn a_body_amocrm_answered_429_is_tried_again_no_sooner_than_amocrm_said() {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "seller-4", "sellerfour.amocrm.ru").await;
    let lead = seller.manager_lead(&app, "Telefon orqali", 1_000);
    settle(&app).await;
    seller.move_to(&app, lead, "paid");
    app.sandbox.webhooks_idle().await;
    // The read-back before the payment is refused: 429, retry after five minutes.
    app.set_faults(&seller.host, |f| {
        f.force_429_next = 1;
        f.force_429_retry_after_secs = 300;
    });
    let now = amocrm_connector::storage::now();
    let first = webhook_processor::run_once_at(&app.state, now)
        .await
        .unwrap();
    assert_eq!((first.claimed, first.retrying), (1, 1), "{first:?}");
    let early = webhook_processor::run_once_at(&app.state, now + chrono::TimeDelta::seconds(295))
        .await
        .unwrap();
    assert_eq!(early.claimed, 0, "not tried again before amoCRM's 300 s");
    assert!(
        events_named(&app, "seller-4", "payment.completed")
            .await
            .is_empty()
    );
    let later = webhook_processor::run_once_at(&app.state, now + chrono::TimeDelta::seconds(301))
        .await
        .unwrap();
    assert_eq!((later.claimed, later.processed), (1, 1), "{later:?}");
    assert_eq!(
        events_named(&app, "seller-4", "payment.completed")
            .await
            .len(),
        1
    );
    assert_eq!(app.sandbox.counters(&seller.host).rate_limited, 1);
}
