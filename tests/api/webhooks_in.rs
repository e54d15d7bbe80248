//! Webhooks in: the amoCRM intake (tokens, accounts, malformed and oversized bodies, every real sample),
//! and the processor turning sandbox lead moves into exactly one `payment.completed` per lead.

use std::time::Duration;

use amocrm_client::{AccountHost, ComplexLead, FieldValue, NewCustomField, NewPipeline, NewStatus};
use amocrm_connector::domain::ids::random_token;
use amocrm_connector::services::ingest::{self, AMOCRM_WEBHOOK_SETTINGS, SubscriptionCheck};
use amocrm_connector::storage::connections::{self, seal_tokens};
use amocrm_connector::storage::schema::{amocrm_connections as c, orders};
use amocrm_connector::storage::{self as st, events, inbox, lead_states};
use amocrm_connector::workers::{delivery as delivery_worker, webhook_processor};
use amocrm_sandbox::{Faults, Sandbox, SandboxConfig, WebhookFormat};
use diesel::prelude::*;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::events_out::{Behaviour, Receiver};
use crate::helpers::{
    TestApp, assert_error, base_env, fresh_database, spawn_app, spawn_app_with_sandbox,
};

/// Copies of `../shared/amocrm-samples` (provenance in its SOURCES.md, copied beside them).
const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/amocrm");

/// A seller connected by hand (the connect flow is another issue's): tokens from the sandbox, a pipeline
/// with the six stages, the order-number field, and amoCRM's webhook pointed at `destination`.
pub struct Seller {
    pub seller_id: String,
    pub host: String,
    pub account_id: i64,
    pub webhook_token: String,
    pub pipeline_id: u64,
    pub pending: u64,
    pub awaiting: u64,
    pub paid: u64,
    pub shipping: u64,
    pub field_id: u64,
    token: SecretString,
}

impl Seller {
    pub fn intake_url(&self, app: &TestApp) -> String {
        app.url(&format!("/webhooks/amocrm/{}", self.webhook_token))
    }

    fn account_host(&self, app: &TestApp) -> AccountHost {
        AccountHost::parse(&self.host, &app.state.amo.config().allowed_domains).unwrap()
    }

    /// Creates a lead through the API as the order push does, with the order number in its field.
    pub async fn push_lead(&self, app: &TestApp, order_number: &str, price: i64) -> u64 {
        let host = self.account_host(app);
        let lead = ComplexLead {
            name: format!("Buyurtma #{order_number}"),
            price,
            pipeline_id: self.pipeline_id,
            status_id: self.pending,
            request_id: format!("req-{order_number}"),
            custom_fields_values: vec![FieldValue::text(self.field_id, order_number)],
            tags: vec![],
            contact: None,
            company: None,
        };
        let res = app
            .state
            .amo
            .api(&host, &self.token)
            .leads_complex(&[lead])
            .await
            .unwrap();
        res[0].id
    }

    /// Points amoCRM's webhook for this account at `destination`.
    pub async fn subscribe_amocrm(&self, app: &TestApp, destination: &str) {
        let host = self.account_host(app);
        app.state
            .amo
            .api(&host, &self.token)
            .subscribe_webhook(destination, &AMOCRM_WEBHOOK_SETTINGS)
            .await
            .unwrap();
    }
}

pub async fn connect_seller(app: &TestApp, host: &str, seller_id: &str) -> Seller {
    let account_id = app.sandbox.add_account(host);
    let pair = app.sandbox.issue_tokens(&app.env["AMOCRM_CLIENT_ID"], host);
    let token = SecretString::from(pair.access_token.clone());
    let h = AccountHost::parse(host, &app.state.amo.config().allowed_domains).unwrap();
    let api = app.state.amo.api(&h, &token);
    let pipeline = api
        .create_pipeline(&NewPipeline {
            name: "Marketplace".into(),
            sort: None,
            statuses: vec![
                NewStatus::new("Yangi", 10, "#fffeb2"),
                NewStatus::new("To'lov kutilmoqda", 20, "#fffd7f"),
                NewStatus::new("To'landi", 30, "#87f2c0"),
                NewStatus::new("Yetkazilmoqda", 40, "#98cbff"),
            ],
        })
        .await
        .unwrap();
    let stage = |name: &str| pipeline.status_named(name).unwrap().id;
    let (pending, awaiting, paid, shipping) = (
        stage("Yangi"),
        stage("To'lov kutilmoqda"),
        stage("To'landi"),
        stage("Yetkazilmoqda"),
    );
    let fields = api
        .create_lead_custom_fields(&[NewCustomField {
            name: "Order number".into(),
            type_: "text".into(),
            code: None,
            is_api_only: true,
        }])
        .await
        .unwrap();
    let field_id = fields[0].id;
    let webhook_token = random_token(32);
    let seller = Seller {
        seller_id: seller_id.to_owned(),
        host: host.to_owned(),
        account_id: account_id as i64,
        webhook_token: webhook_token.clone(),
        pipeline_id: pipeline.id,
        pending,
        awaiting,
        paid,
        shipping,
        field_id,
        token,
    };
    insert_connection(
        app,
        ConnectionRow {
            seller_id,
            account_id: account_id as i64,
            host,
            subdomain: host.split('.').next().unwrap(),
            webhook_token: &webhook_token,
            access: &pair.access_token,
            refresh: &pair.refresh_token,
            pipeline: Some(&seller),
        },
    )
    .await;
    seller.subscribe_amocrm(app, &seller.intake_url(app)).await;
    seller
}

pub struct ConnectionRow<'a> {
    pub seller_id: &'a str,
    pub account_id: i64,
    pub host: &'a str,
    pub subdomain: &'a str,
    pub webhook_token: &'a str,
    pub access: &'a str,
    pub refresh: &'a str,
    pub pipeline: Option<&'a Seller>,
}

pub async fn insert_connection(app: &TestApp, row: ConnectionRow<'_>) {
    let (a, r) = seal_tokens(&app.state.keys, row.seller_id, row.access, row.refresh);
    let now = st::now();
    let values = (
        c::seller_id.eq(row.seller_id.to_owned()),
        c::account_id.eq(row.account_id),
        c::host.eq(row.host.to_owned()),
        c::subdomain.eq(row.subdomain.to_owned()),
        c::status.eq("active"),
        c::access_token_enc.eq(Some(a)),
        c::refresh_token_enc.eq(Some(r)),
        c::token_expires_at.eq(Some(now + chrono::TimeDelta::hours(23))),
        c::webhook_token.eq(row.webhook_token.to_owned()),
        c::connected_at.eq(now),
        c::created_at.eq(now),
        c::updated_at.eq(now),
    );
    let stages = row.pipeline.map(|s| {
        (
            c::pipeline_id.eq(Some(s.pipeline_id as i64)),
            c::stage_pending.eq(Some(s.pending as i64)),
            c::stage_awaiting_payment.eq(Some(s.awaiting as i64)),
            c::stage_paid.eq(Some(s.paid as i64)),
            c::stage_shipping.eq(Some(s.shipping as i64)),
            c::stage_completed.eq(Some(142i64)),
            c::stage_cancelled.eq(Some(143i64)),
            c::field_order_number_id.eq(Some(s.field_id as i64)),
        )
    });
    app.db
        .run(move |conn| {
            diesel::insert_into(c::table)
                .values(&values)
                .execute(conn)?;
            // Samples' connections get an unrelated pipeline: their bodies are stored and ignored.
            let seller = values.0.clone();
            match &stages {
                Some(s) => diesel::update(c::table.filter(seller))
                    .set(*s)
                    .execute(conn)?,
                None => diesel::update(c::table.filter(seller))
                    .set(c::pipeline_id.eq(Some(1i64)))
                    .execute(conn)?,
            };
            Ok(())
        })
        .await
        .unwrap();
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
    for _ in 0..50 {
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
    let one = connect_seller(&app, "sellerone.amocrm.ru", "seller-1").await;
    let two = connect_seller(&app, "sellertwo.amocrm.ru", "seller-2").await;
    let good = format!(
        "leads[status][0][id]=1&leads[status][0][status_id]={}&leads[status][0][pipeline_id]={}&account[id]={}&account[subdomain]=sellerone",
        one.awaiting, one.pipeline_id, one.account_id
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
        assert_error(
            post_body(&app, &one.intake_url(&app), body.clone()).await,
            403,
            "INSUFFICIENT_PERMISSION",
        )
        .await;
    }
    for body in [
        "",
        "garbage",
        "leads=1",
        "leads[status][0][id]=abc&account[id]=1",
        "account[id]=12x",
    ] {
        assert_error(
            post_body(&app, &one.intake_url(&app), body).await,
            400,
            "BAD_REQUEST",
        )
        .await;
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
    assert_eq!(rows[0].state, "pending");
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
            vec![form_from_json(&serde_json::from_str(&raw).unwrap())]
        } else {
            // As captured, and (for the one stored unescaped) as it would travel on the wire.
            let mut v = vec![raw.trim_end().to_owned()];
            if raw.contains('[') {
                v.push(percent_encode_form(raw.trim_end()));
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
            insert_connection(
                &app,
                ConnectionRow {
                    seller_id: &seller,
                    account_id,
                    host: &format!("{subdomain}.amocrm.ru"),
                    subdomain: &subdomain,
                    webhook_token: &token,
                    access: "a",
                    refresh: "r",
                    pipeline: None,
                },
            )
            .await;
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

/// `{"leads":{"status":[{"id":"1",…}]}}` → `leads[status][0][id]=1&…` (what amoCRM really sends).
fn form_from_json(v: &Value) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}[{k}]")
                    };
                    walk(&key, v, out);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    let mut pairs = Vec::new();
    walk("", v, &mut pairs);
    serde_urlencoded::to_string(&pairs).unwrap()
}

/// Percent-encodes a captured form that kept its brackets and Cyrillic raw (spaces stay `+`).
fn percent_encode_form(raw: &str) -> String {
    raw.split('&')
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| match b {
                        b'A'..=b'Z'
                        | b'a'..=b'z'
                        | b'0'..=b'9'
                        | b'-'
                        | b'_'
                        | b'.'
                        | b'~'
                        | b'+'
                        | b'%' => (b as char).to_string(),
                        other => format!("%{other:02X}"),
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

// ---------- processing, against the sandbox ----------

#[tokio::test]
async fn moving_a_pushed_orders_lead_to_paid_delivers_exactly_one_signed_payment_completed() {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "sellerone.amocrm.ru", "seller-1").await;
    let rx = Receiver::start("marketplace-secret", Behaviour::Ok).await;
    app.subscribe(
        &rx.url,
        json!(["payment.completed", "order.status_changed"]),
        "marketplace-secret",
    )
    .await;

    let lead = seller.push_lead(&app, "1042", 150_000).await;
    let order_id = insert_order(&app, "seller-1", "1042", 15_000_000, Some(lead)).await;
    app.sandbox.webhooks_idle().await;
    process_all(&app).await;
    assert!(
        events_named(&app, "seller-1", "order.created")
            .await
            .is_empty(),
        "our own lead is not foreign"
    );

    // The processor keeps up with the manager (with the workers running it is woken by each webhook).
    for stage in [seller.awaiting, seller.paid] {
        app.sandbox
            .move_lead(&seller.host, lead, seller.pipeline_id, stage)
            .unwrap();
        app.sandbox.webhooks_idle().await;
        process_all(&app).await;
    }

    // The same paid webhook three more times, and the older stage change again, change nothing.
    let bodies = sandbox_bodies(&app, &seller.host);
    let paid_body = bodies
        .iter()
        .rev()
        .find(|b| body_status(b) == Some(seller.paid))
        .unwrap()
        .clone();
    let awaiting_body = bodies
        .iter()
        .find(|b| body_status(b) == Some(seller.awaiting))
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
    assert_eq!(moves[1]["data"]["amocrm"]["status_id"], seller.paid);
    assert_eq!(moves[1]["data"]["amocrm"]["old_status_id"], seller.awaiting);

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
    app.sandbox
        .move_lead(&seller.host, lead, seller.pipeline_id, seller.shipping)
        .unwrap();
    app.sandbox
        .move_lead(&seller.host, lead, seller.pipeline_id, 142)
        .unwrap();
    app.sandbox.webhooks_idle().await;
    process_all(&app).await;
    assert_eq!(
        events_named(&app, "seller-1", "payment.completed")
            .await
            .len(),
        1
    );
    let state = app
        .db
        .run(move |c| lead_states::find(c, "seller-1", lead as i64))
        .await
        .unwrap()
        .unwrap();
    assert!(state.paid);
    assert_eq!(state.status_id, Some(142));
    assert_eq!(state.order_id.as_deref(), Some(order_id.as_str()));
}

#[tokio::test]
async fn webhooks_arriving_out_of_order_and_repeated_still_give_one_payment_and_never_regress() {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "sellertwo.amocrm.ru", "seller-2").await;
    // amoCRM's webhooks go to a recorder first, so the test decides the order they reach the intake in.
    let recorder = Receiver::start("unused", Behaviour::Ok).await;
    seller.subscribe_amocrm(&app, &recorder.url).await;
    let host = AccountHost::parse(&seller.host, &app.state.amo.config().allowed_domains).unwrap();
    app.state
        .amo
        .api(&host, &seller.token)
        .unsubscribe_webhook(&seller.intake_url(&app))
        .await
        .unwrap();

    let lead = seller.push_lead(&app, "77", 5_000).await;
    insert_order(&app, "seller-2", "77", 500_000, Some(lead)).await;
    for stage in [seller.awaiting, seller.paid, seller.shipping] {
        app.sandbox
            .move_lead(&seller.host, lead, seller.pipeline_id, stage)
            .unwrap();
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
        by_stage(seller.shipping),
        by_stage(seller.paid),
        by_stage(seller.awaiting),
        add.clone(),
        by_stage(seller.paid),
        by_stage(seller.paid),
        by_stage(seller.awaiting),
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
    let state = app
        .db
        .run(move |c| lead_states::find(c, "seller-2", lead as i64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        state.status_id,
        Some(seller.shipping as i64),
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
    let sandbox = Sandbox::start(SandboxConfig {
        webhook_format: WebhookFormat::DigitalPipeline,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let db = fresh_database();
    let env = base_env(&db.url);
    let app = spawn_app_with_sandbox(db, env, sandbox).await;
    let seller = connect_seller(&app, "sellerthree.amocrm.ru", "seller-3").await;
    let lead = seller.push_lead(&app, "5", 990).await;
    insert_order(&app, "seller-3", "5", 99_000, Some(lead)).await;
    app.sandbox.webhooks_idle().await;
    process_all(&app).await;
    for stage in [seller.paid, seller.awaiting, seller.paid] {
        app.sandbox
            .move_lead(&seller.host, lead, seller.pipeline_id, stage)
            .unwrap();
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
    let seller = connect_seller(&app, "sellerone.amocrm.ru", "seller-1").await;
    let lead = app
        .sandbox
        .create_lead(
            &seller.host,
            "Telefon orqali",
            42_000,
            Some((seller.pipeline_id, seller.pending)),
        )
        .unwrap();
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
    app.sandbox.webhooks_idle().await;
    process_all(&app).await;
    for (id, pipeline, stage) in [
        (lead, seller.pipeline_id, seller.paid),
        (lead, seller.pipeline_id, 143),
        (stray, main.id, 142),
    ] {
        app.sandbox
            .move_lead(&seller.host, id, pipeline, stage)
            .unwrap();
        app.sandbox.webhooks_idle().await;
        process_all(&app).await;
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
    let sandbox = Sandbox::start(SandboxConfig::default()).await.unwrap();
    let db = fresh_database();
    let mut env = base_env(&db.url);
    env.insert("RUN_WORKERS".into(), "true".into());
    let app = spawn_app_with_sandbox(db, env, sandbox).await;
    let seller = connect_seller(&app, "sellerone.amocrm.ru", "seller-1").await;
    let rx = Receiver::start("s", Behaviour::Ok).await;
    app.subscribe(&rx.url, json!(["payment.completed"]), "s")
        .await;
    let lead = seller.push_lead(&app, "900", 10).await;
    insert_order(&app, "seller-1", "900", 1_000, Some(lead)).await;
    app.sandbox
        .move_lead(&seller.host, lead, seller.pipeline_id, seller.paid)
        .unwrap();
    let hits = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1);
    assert!(hits[0].signature_ok);
    assert_eq!(hits[0].json()["data"]["order_number"], "900");
    // Nothing more arrives for the same lead.
    app.sandbox
        .move_lead(&seller.host, lead, seller.pipeline_id, seller.shipping)
        .unwrap();
    app.sandbox.webhooks_idle().await;
    let more = rx.wait_for(2, Duration::from_millis(1500)).await;
    assert_eq!(more.len(), 1);
}

#[tokio::test]
async fn a_subscription_amocrm_disabled_or_lost_is_subscribed_again() {
    let app = spawn_app().await;
    let seller = connect_seller(&app, "sellerone.amocrm.ru", "seller-1").await;
    let conn = app
        .db
        .run(|c| connections::find_by_seller(c, "seller-1"))
        .await
        .unwrap()
        .unwrap();
    let check = ingest::ensure_amocrm_subscription(&app.state, &conn)
        .await
        .unwrap();
    assert!(
        matches!(check, SubscriptionCheck::Healthy { .. }),
        "{check:?}"
    );

    let host = AccountHost::parse(&seller.host, &app.state.amo.config().allowed_domains).unwrap();
    app.state
        .amo
        .api(&host, &seller.token)
        .unsubscribe_webhook(&seller.intake_url(&app))
        .await
        .unwrap();
    assert!(
        app.sandbox
            .webhooks(&seller.host)
            .iter()
            .all(|w| w.destination != seller.intake_url(&app))
    );
    let check = ingest::ensure_amocrm_subscription(&app.state, &conn)
        .await
        .unwrap();
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
    let sandbox = Sandbox::start(SandboxConfig {
        webhook_disable_after: 1,
        ..SandboxConfig::default()
    })
    .await
    .unwrap();
    let db = fresh_database();
    let env = base_env(&db.url);
    let app = spawn_app_with_sandbox(db, env, sandbox).await;
    let seller = connect_seller(&app, "sellerone.amocrm.ru", "seller-1").await;
    // While the connection is revoked the intake refuses amoCRM's webhooks, and amoCRM gives up.
    let set_status = |status: &'static str| {
        app.db.run(move |c| {
            Ok(diesel::update(c::table.filter(c::seller_id.eq("seller-1")))
                .set(c::status.eq(status))
                .execute(c)?)
        })
    };
    set_status("revoked").await.unwrap();
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

    set_status("active").await.unwrap();
    let conn = app
        .db
        .run(|c| connections::find_by_seller(c, "seller-1"))
        .await
        .unwrap()
        .unwrap();
    let check = ingest::ensure_amocrm_subscription(&app.state, &conn)
        .await
        .unwrap();
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
    let resp = crate::connect::connect(&app, "seller-c", host).await;
    assert!(resp.status().is_success(), "{}", resp.status());
    let conn = crate::connect::connection(&app, "seller-c").await.unwrap();
    assert_eq!(conn.status, "active");
    // Provisioning subscribed amoCRM to the intake and mapped the stages: use them as the service does.
    let pipeline = conn.pipeline_id.unwrap() as u64;
    let (pending, paid) = (
        conn.stage_pending.unwrap() as u64,
        conn.stage_paid.unwrap() as u64,
    );
    let field = conn.field_order_number_id.unwrap() as u64;
    let token = SecretString::from(
        secrecy::ExposeSecret::expose_secret(&conn.access_token(&app.state.keys).unwrap().unwrap())
            .to_owned(),
    );
    let h = AccountHost::parse(host, &app.state.amo.config().allowed_domains).unwrap();
    let lead = app
        .state
        .amo
        .api(&h, &token)
        .leads_complex(&[ComplexLead {
            name: "Buyurtma #3001".into(),
            price: 70_000,
            pipeline_id: pipeline,
            status_id: pending,
            request_id: "ord-3001".into(),
            custom_fields_values: vec![FieldValue::text(field, "3001")],
            tags: vec![],
            contact: None,
            company: None,
        }])
        .await
        .unwrap()[0]
        .id;
    insert_order(&app, "seller-c", "3001", 7_000_000, Some(lead)).await;
    app.sandbox.webhooks_idle().await;
    process_all(&app).await;
    app.sandbox.move_lead(host, lead, pipeline, paid).unwrap();
    app.sandbox.webhooks_idle().await;
    let r = process_all(&app).await;
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
    let seller = connect_seller(&app, "sellerfour.amocrm.ru", "seller-4").await;
    let lead = app
        .sandbox
        .create_lead(
            &seller.host,
            "Telefon orqali",
            1_000,
            Some((seller.pipeline_id, seller.pending)),
        )
        .unwrap();
    app.sandbox.webhooks_idle().await;
    process_all(&app).await;
    app.sandbox
        .move_lead(&seller.host, lead, seller.pipeline_id, seller.paid)
        .unwrap();
    app.sandbox.webhooks_idle().await;
    // The read-back before the payment is refused: 429, retry after five minutes.
    app.sandbox.set_faults(
        &seller.host,
        Faults {
            force_429_next: 1,
            force_429_retry_after_secs: 300,
            ..Faults::default()
        },
    );
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
