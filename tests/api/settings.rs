//! Seller settings (docs/CONTRACT.md §10): the API (`GET`/`PUT …/settings`, every id confirmed by the seller's
//! amoCRM in the sandbox, `settings.updated`), settings links (`POST /api/v1/settings-sessions`), the seller's
//! own page (languages, browser binding, CSRF, a save the next order follows), the link on the connect
//! success page, and the dashboard's read-only view.

mod browser;

use std::collections::HashSet;

use amocrm_connector::domain::ids::sha256_hex;
use amocrm_connector::domain::settings::STATUS_KEYS;
use amocrm_connector::services::operators::Role;
use amocrm_connector::storage::schema::settings_sessions as ss;
use amocrm_connector::workers::push;
use amocrm_sandbox::NewUser;
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{
    HOST, Queue, Seller, TestApp, assert_error, attr, connect_seller, env_vars, header,
    new_browser, order_body, seller_session, spawn_app_with,
};

const RETURN_PREFIX: &str = "https://seller.market.example/";

/// The test app of this suite: return URLs under [`RETURN_PREFIX`] allowed; amoCRM's webhooks about pushed
/// leads are left to the webhook tests.
pub async fn spawn() -> TestApp {
    let app = spawn_app_with(env_vars(&[("CONNECT_RETURN_URL_ALLOWLIST", RETURN_PREFIX)])).await;
    app.leaves_queued(
        Queue::Inbox,
        "amoCRM's webhooks about the pushed leads (processed in webhooks_in)",
    );
    app
}

/// What the sandbox account holds besides our own pipeline: two more users and a lead field of the seller's.
pub struct Account {
    pub seller: Seller,
    /// amoCRM's main pipeline ("Воронка") and its open stages in board order.
    pub main_pipeline: u64,
    pub main_stages: Vec<u64>,
    pub users: [u64; 2],
    pub field: u64,
}

/// `seller_id` connected to [`HOST`], with two users ("Dilnoza", "Jasur") and a text lead field.
pub async fn connected(app: &TestApp, seller_id: &str) -> Account {
    let seller = connect_seller(app, seller_id, HOST).await;
    let user = |name: &str| NewUser {
        name: name.to_owned(),
        email: String::new(),
        is_admin: false,
    };
    let u1 = app.sandbox.add_user(HOST, user("Dilnoza")).unwrap().id;
    let u2 = app.sandbox.add_user(HOST, user("Jasur")).unwrap().id;
    let field = app
        .sandbox
        .add_lead_field(HOST, "Yetkazish usuli", "text", &[])
        .unwrap()
        .id;
    let main = app
        .sandbox
        .pipelines(HOST)
        .into_iter()
        .find(|p| p.id != seller.pipeline_id && p.is_main)
        .expect("amoCRM's main pipeline");
    let mut open: Vec<_> = main
        .statuses
        .iter()
        .filter(|s| s.type_ == 0 && s.id != 142 && s.id != 143)
        .collect();
    open.sort_by_key(|s| s.sort);
    Account {
        seller,
        main_pipeline: main.id,
        main_stages: open.into_iter().map(|s| s.id).collect(),
        users: [u1, u2],
        field,
    }
}

impl Account {
    /// The six stage ids of the main pipeline: the first three open stages, then won and lost.
    pub fn main_mapping(&self) -> [u64; 6] {
        let s = &self.main_stages;
        [s[0], s[1], s[2], s[2], 142, 143]
    }
}

fn settings_path(seller: &str) -> String {
    format!("/api/v1/connections/{seller}/settings")
}

async fn put_settings(app: &TestApp, seller: &str, body: &Value) -> reqwest::Response {
    app.api(Method::PUT, &settings_path(seller), Some(body))
        .await
}

async fn get_settings(app: &TestApp, seller: &str) -> Value {
    let v = app.api_json(&settings_path(seller)).await;
    v["data"].clone()
}

/// A settings link for `seller` (201), with `extra` body fields.
pub async fn settings_session(app: &TestApp, seller: &str, extra: Value) -> Value {
    seller_session(app, "/api/v1/settings-sessions", seller, extra).await
}

async fn open(browser: &reqwest::Client, url: &str) -> (u16, String) {
    let resp = browser.get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// The form token of a settings page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\"").expect("a csrf field");
    attr(&html[at..], "value").expect("its value")
}

/// Settings events of `seller`, oldest first.
async fn settings_events(app: &TestApp, seller: &str) -> Vec<Value> {
    let v = app
        .api_json(&format!(
            "/api/v1/events?seller_id={seller}&event=settings.updated"
        ))
        .await;
    v["data"].as_array().cloned().unwrap_or_default()
}

/// A refusal changed nothing: `seller`'s settings are still `before` and no settings event was recorded.
async fn nothing_stored(app: &TestApp, seller: &str, before: &Value) {
    assert_eq!(&get_settings(app, seller).await, before, "nothing stored");
    assert!(settings_events(app, seller).await.is_empty());
}

/// A complete form as the page sends it, on `pipeline` with `stages` (in `STATUS_KEYS` order), responsible
/// `mode` over `users`.
pub fn form(
    csrf: &str,
    pipeline: u64,
    stages: [u64; 6],
    mode: &str,
    users: &[u64],
) -> Vec<(String, String)> {
    let mut f: Vec<(String, String)> = [
        ("csrf", csrf.to_owned()),
        ("entry", "lead".to_owned()),
        ("pipeline_id", pipeline.to_string()),
        ("responsible_mode", mode.to_owned()),
        ("users_listed", "1".to_owned()),
        ("contacts_match", "phone_then_email".to_owned()),
        ("default_country", "UZ".to_owned()),
        ("note", "1".to_owned()),
        ("products", "auto".to_owned()),
        ("task_text", "Buyurtmani tasdiqlang".to_owned()),
        ("task_due", "60".to_owned()),
        ("field_delivery_method", String::new()),
        ("field_delivery_address", String::new()),
        ("field_payment_method", String::new()),
        ("field_source", String::new()),
        ("language", "uz".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, id) in STATUS_KEYS.iter().zip(stages) {
        f.push((format!("stage_{k}"), id.to_string()));
    }
    for u in users {
        f.push(("user_id".to_owned(), u.to_string()));
    }
    f
}

async fn post_form(
    browser: &reqwest::Client,
    url: &str,
    form: &[(String, String)],
) -> (u16, String) {
    let resp = browser.post(url).form(form).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Posts orders numbered `numbers` and pushes them; the leads they became in the sandbox.
pub async fn push_orders(
    app: &TestApp,
    seller: &Seller,
    numbers: &[&str],
) -> Vec<amocrm_sandbox::Lead> {
    for n in numbers {
        let resp = app
            .api_post("/api/v1/sales/orders", &order_body(&seller.seller_id, n))
            .await;
        assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
    }
    let (report, drained) = push::drain(&app.state, 2_000).await.unwrap();
    assert!(drained, "the push queue did not drain: {report:?}");
    let names: HashSet<String> = numbers.iter().map(|n| format!("#{n}")).collect();
    app.sandbox
        .leads(HOST)
        .into_iter()
        .filter(|l| names.iter().any(|n| l.name.contains(n.as_str())))
        .collect()
}

#[tokio::test]
async fn settings_links_are_made_for_connected_sellers_only_and_stored_as_hashes() {
    let app = spawn().await;
    connected(&app, "seller-1").await;
    let before = chrono::Utc::now();
    let s = settings_session(&app, "seller-1", json!({"lang": "ru"})).await;
    let token = s["token"].as_str().unwrap();
    assert_eq!(s["settings_url"], app.url(&format!("/settings/{token}")));
    let expires = chrono::DateTime::parse_from_rfc3339(s["expires_at"].as_str().unwrap()).unwrap();
    let ttl = expires.with_timezone(&chrono::Utc) - before;
    assert!((29 * 60..=31 * 60).contains(&ttl.num_seconds()), "{ttl:?}");
    let stored: Vec<(String, String, String)> = app
        .sql(|c| {
            ss::table
                .select((ss::token_hash, ss::seller_id, ss::lang))
                .load(c)
        })
        .await;
    assert_eq!(
        stored,
        vec![(
            sha256_hex(token.as_bytes()),
            "seller-1".to_owned(),
            "ru".to_owned()
        )]
    );

    let refused = [
        (json!({"seller_id": "never-connected"}), "seller_id"),
        (json!({"seller_id": "bad id!"}), "seller_id"),
        (json!({}), "seller_id"),
        (json!({"seller_id": "seller-1", "lang": "de"}), "lang"),
        (
            json!({"seller_id": "seller-1", "return_url": "https://seller.market.example.evil/x"}),
            "return_url",
        ),
    ];
    for (body, field) in refused {
        let resp = app.api_post("/api/v1/settings-sessions", &body).await;
        let err = assert_error(resp, 422, "VALIDATION_ERROR").await;
        assert!(err["error"]["details"][field].is_array(), "{body}: {err}");
    }
    let resp = app
        .request(
            Method::POST,
            "/api/v1/settings-sessions",
            None,
            Some(&json!({"seller_id": "seller-1"})),
        )
        .await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
}

#[tokio::test]
async fn settings_round_trip_through_the_api_with_every_id_confirmed_by_the_account() {
    let app = spawn().await;
    let a = connected(&app, "seller-1").await;
    let before = get_settings(&app, "seller-1").await;
    assert_eq!(before["pipeline"]["pipeline_id"], a.seller.pipeline_id);
    assert_eq!(before["responsible"]["mode"], "default");

    let m = a.main_mapping();
    let body = json!({
        "pipeline": {"pipeline_id": a.main_pipeline, "statuses": {
            "pending": m[0], "awaiting_payment": m[1], "paid": m[2], "shipping": m[3]}},
        "responsible": {"mode": "round_robin", "user_ids": a.users},
        "fields": {"delivery_method": a.field},
        "task": {"enabled": true, "due_in_minutes": 30},
    });
    let resp = put_settings(&app, "seller-1", &body).await;
    assert_eq!(resp.status().as_u16(), 200, "{:?}", resp.text().await);
    let after = get_settings(&app, "seller-1").await;
    assert_eq!(after["pipeline"]["pipeline_id"], a.main_pipeline);
    assert_eq!(after["pipeline"]["statuses"]["paid"], m[2]);
    assert_eq!(after["pipeline"]["statuses"]["completed"], 142);
    assert_eq!(
        after["responsible"],
        json!({"mode": "round_robin", "user_ids": a.users})
    );
    assert_eq!(after["fields"]["delivery_method"], a.field);
    assert_eq!(after["task"]["due_in_minutes"], 30);

    let refused = [
        (
            json!({"pipeline": {"pipeline_id": 999_999_999}}),
            "pipeline.pipeline_id",
        ),
        (
            json!({"pipeline": {"pipeline_id": a.main_pipeline, "statuses": {"paid": 999_999_999}}}),
            "pipeline.statuses.paid",
        ),
        (
            json!({"responsible": {"mode": "round_robin", "user_ids": [a.users[0], 999_999_999]}}),
            "responsible.user_ids[1]",
        ),
        (json!({"fields": {"source": 999_999_999}}), "fields.source"),
    ];
    for (body, path) in refused {
        let resp = put_settings(&app, "seller-1", &body).await;
        let err = assert_error(resp, 422, "VALIDATION_ERROR").await;
        assert!(err["error"]["details"][path].is_array(), "{body}: {err}");
    }
    assert_eq!(
        get_settings(&app, "seller-1").await,
        after,
        "nothing stored"
    );

    let events = settings_events(&app, "seller-1").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let changed: HashSet<&str> = events[0]["data"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        changed,
        HashSet::from(["pipeline", "responsible", "fields", "task"])
    );
}

#[tokio::test]
async fn the_settings_page_speaks_three_languages_and_shows_the_account_by_name() {
    let app = spawn().await;
    let a = connected(&app, "seller-1").await;
    let s = settings_session(&app, "seller-1", json!({})).await;
    let url = s["settings_url"].as_str().unwrap().to_owned();
    let browser = new_browser();

    let resp = browser.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let csp = header(&resp, "content-security-policy");
    assert!(
        csp.contains("script-src 'nonce-") && csp.contains("form-action 'self'"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("amocrm_settings="))
        .expect("the browser cookie")
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains("<html lang=\"uz\">"), "Uzbek by default");
    assert!(html.contains("qanday tushadi"));
    for name in [
        "Воронка",
        "Первичный контакт",
        "Dilnoza",
        "Jasur",
        "Yetkazish usuli",
        HOST,
    ] {
        assert!(html.contains(name), "{name} missing");
    }
    // The current settings are selected: our pipeline, the default responsible, the note on.
    assert!(html.contains(&format!(
        "<option value=\"{}\" selected>",
        a.seller.pipeline_id
    )));
    assert!(html.contains("id=\"mode-default\" value=\"default\" checked"));
    assert!(html.contains("id=\"note\" value=\"1\" checked"));

    for (lang, title) in [
        ("ru", "Как заказы попадают в amoCRM"),
        ("en", "How orders arrive in amoCRM"),
        ("uz", "qanday tushadi"),
    ] {
        let (status, html) = open(&browser, &format!("{url}?lang={lang}")).await;
        assert_eq!(status, 200, "{lang}");
        assert!(html.contains(&format!("<html lang=\"{lang}\">")), "{lang}");
        assert!(html.contains(title), "{lang}");
        assert!(html.contains(&format!(
            "action=\"/settings/{}?lang={lang}\"",
            s["token"].as_str().unwrap()
        )));
    }
    let resp = browser
        .get(&url)
        .header("accept-language", "ru-RU,ru;q=0.9,en;q=0.5")
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("<html lang=\"ru\">"));
    let en = settings_session(&app, "seller-1", json!({"lang": "en"})).await;
    let (_, html) = open(&new_browser(), en["settings_url"].as_str().unwrap()).await;
    assert!(html.contains("<html lang=\"en\">"), "the link's language");
}

#[tokio::test]
async fn a_settings_link_belongs_to_the_first_browser_and_lives_thirty_minutes() {
    let app = spawn().await;
    connected(&app, "seller-1").await;
    let s = settings_session(&app, "seller-1", json!({"lang": "en"})).await;
    let url = s["settings_url"].as_str().unwrap().to_owned();
    let first = new_browser();
    assert_eq!(open(&first, &url).await.0, 200);
    assert_eq!(open(&first, &url).await.0, 200, "the same browser again");
    let (status, html) = open(&new_browser(), &format!("{url}?lang=en")).await;
    assert_eq!(status, 410);
    assert!(html.contains("opened in another browser"), "{html}");
    let bound: (Option<String>, bool) = app
        .sql(|c| {
            ss::table
                .select((ss::browser_hash, ss::opened_at.is_not_null()))
                .first(c)
        })
        .await;
    assert!(bound.0.is_some_and(|h| h.len() == 64) && bound.1);

    let (status, html) = open(&first, &app.url("/settings/no-such-token")).await;
    assert_eq!(status, 404);
    assert!(html.contains("<h1"), "a human page");
    app.update(
        ss::table,
        ss::expires_at.eq(amocrm_connector::storage::now() - chrono::Duration::minutes(1)),
    )
    .await;
    assert_eq!(open(&first, &url).await.0, 410, "expired");
}

#[tokio::test]
async fn without_admin_rights_or_without_amocrm_the_page_says_so() {
    let app = spawn().await;
    connected(&app, "seller-1").await;
    app.sandbox.set_connecting_user_admin(HOST, false).unwrap();
    let s = settings_session(&app, "seller-1", json!({"lang": "en"})).await;
    let browser = new_browser();
    let (status, html) = open(&browser, s["settings_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(html.contains("id=\"users-unknown\""), "{html}");
    assert!(!html.contains("Dilnoza"), "no user list");
    assert!(
        html.contains("id=\"settings-form\""),
        "the rest of the form is offered"
    );
    app.sandbox.set_connecting_user_admin(HOST, true).unwrap();

    app.set_faults(HOST, |f| f.fail_next = 1_000);
    let (status, html) = open(&browser, s["settings_url"].as_str().unwrap()).await;
    app.set_faults(HOST, |_| {});
    assert_eq!(status, 503);
    assert!(html.contains("id=\"unreadable\""), "{html}");
    assert!(!html.contains("<form"), "no form");
}

#[tokio::test]
async fn a_save_needs_the_form_token_of_the_same_browser_and_stores_nothing_otherwise() {
    let app = spawn().await;
    let a = connected(&app, "seller-1").await;
    let before = get_settings(&app, "seller-1").await;
    let s = settings_session(&app, "seller-1", json!({})).await;
    let url = s["settings_url"].as_str().unwrap().to_owned();
    let browser = new_browser();
    let (_, html) = open(&browser, &url).await;
    let csrf = csrf_of(&html);
    let good = form(
        &csrf,
        a.main_pipeline,
        a.main_mapping(),
        "round_robin",
        &a.users,
    );

    let without: Vec<_> = good.iter().filter(|(k, _)| k != "csrf").cloned().collect();
    assert_eq!(post_form(&browser, &url, &without).await.0, 403);
    let wrong = form(
        "0".repeat(64).as_str(),
        a.main_pipeline,
        a.main_mapping(),
        "round_robin",
        &a.users,
    );
    assert_eq!(post_form(&browser, &url, &wrong).await.0, 403);
    // The right token from another browser (no cookie, or its own).
    assert_eq!(post_form(&new_browser(), &url, &good).await.0, 403);
    let (status, _) = post_form(&browser, &app.url("/settings/no-such-token"), &good).await;
    assert_eq!(status, 404);
    nothing_stored(&app, "seller-1", &before).await;
}

#[tokio::test]
async fn a_refused_save_shows_each_problem_at_its_field_and_stores_nothing() {
    let app = spawn().await;
    let a = connected(&app, "seller-1").await;
    let before = get_settings(&app, "seller-1").await;
    let s = settings_session(&app, "seller-1", json!({"lang": "en"})).await;
    let url = s["settings_url"].as_str().unwrap().to_owned();
    let browser = new_browser();
    let (_, html) = open(&browser, &url).await;
    let csrf = csrf_of(&html);
    let mut late = form(&csrf, a.main_pipeline, a.main_mapping(), "default", &[]);
    late.retain(|(k, _)| k != "task_due");
    late.push(("task_due".into(), "soon".into()));
    let (status, html) = post_form(&browser, &url, &late).await;
    assert_eq!(status, 422);
    assert!(html.contains("id=\"invalid\"") && html.contains("id=\"err-task_due\""));
    // What was sent is shown again, not what is stored.
    assert!(html.contains("value=\"soon\""));

    let mut stages = a.main_mapping();
    // A stage of our pipeline is not a stage of the main one.
    stages[2] = a.seller.stages["paid"];
    let mut bad = form(
        &csrf,
        a.main_pipeline,
        stages,
        "round_robin",
        &[a.users[0], 999_999_999],
    );
    bad.retain(|(k, _)| k != "field_source");
    bad.push(("field_source".into(), "999999999".into()));
    let (status, html) = post_form(&browser, &url, &bad).await;
    assert_eq!(status, 422);
    for id in [
        "invalid",
        "err-stage_paid",
        "err-user-999999999",
        "err-field_source",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id} missing");
    }
    assert!(html.contains("Choose a stage of the chosen pipeline."));
    nothing_stored(&app, "seller-1", &before).await;
}

#[tokio::test]
async fn a_saved_page_form_is_what_the_next_orders_follow() {
    let app = spawn().await;
    let a = connected(&app, "seller-1").await;
    let s = settings_session(
        &app,
        "seller-1",
        json!({"lang": "ru", "return_url": "https://seller.market.example/amocrm"}),
    )
    .await;
    let url = s["settings_url"].as_str().unwrap().to_owned();
    let browser = new_browser();
    let (_, html) = open(&browser, &url).await;
    let good = form(
        &csrf_of(&html),
        a.main_pipeline,
        a.main_mapping(),
        "round_robin",
        &a.users,
    );
    let (status, html) = post_form(&browser, &url, &good).await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("id=\"saved\""));
    let back = html.find("id=\"back\"").expect("a link back");
    assert_eq!(
        attr(&html[back..], "href").as_deref(),
        Some("https://seller.market.example/amocrm")
    );
    for u in a.users {
        assert!(html.contains(&format!("id=\"user-{u}\" value=\"{u}\" checked")));
    }
    let stored = get_settings(&app, "seller-1").await;
    assert_eq!(stored["pipeline"]["pipeline_id"], a.main_pipeline);
    assert_eq!(stored["responsible"]["user_ids"], json!(a.users));
    let events = settings_events(&app, "seller-1").await;
    assert_eq!(events.len(), 1);

    let leads = push_orders(&app, &a.seller, &["S-1", "S-2"]).await;
    assert_eq!(leads.len(), 2, "{leads:?}");
    let m = a.main_mapping();
    for lead in &leads {
        assert_eq!((lead.pipeline_id, lead.status_id), (a.main_pipeline, m[0]));
    }
    let responsible: HashSet<u64> = leads.iter().map(|l| l.responsible_user_id).collect();
    assert_eq!(responsible, HashSet::from(a.users), "each user in turn");

    // Saving the same form again changes nothing and says nothing.
    let (status, _) = post_form(&browser, &url, &good).await;
    assert_eq!(status, 200);
    assert_eq!(settings_events(&app, "seller-1").await.len(), 1);
}

#[tokio::test]
async fn the_connect_success_page_leads_on_to_the_settings() {
    let app = spawn().await;
    let resp = crate::support::connect(&app, "seller-new", HOST).await;
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.text().await.unwrap();
    let at = html.find("id=\"settings\"").expect("a settings link");
    let link = attr(&html[at..], "href").unwrap();
    assert!(link.starts_with(&app.url("/settings/")), "{link}");
    assert!(
        html.contains("data-settings-url="),
        "posted to the connect page too"
    );
    let (status, page) = open(&app.http, &link).await;
    assert_eq!(status, 200);
    assert!(page.contains("id=\"settings-form\""));
}

#[tokio::test]
async fn the_dashboard_shows_a_sellers_settings_read_only() {
    let app = spawn().await;
    let a = connected(&app, "seller-1").await;
    let body = json!({"responsible": {"mode": "round_robin", "user_ids": a.users}});
    assert_eq!(
        put_settings(&app, "seller-1", &body)
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        app.get("/dashboard/connections/seller-1/settings")
            .await
            .status()
            .as_u16(),
        303,
        "operators only"
    );
    crate::dashboard::sign_in(&app, "ops@example.com", Role::Viewer).await;
    let list = app
        .get("/dashboard/connections")
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains("href=\"/dashboard/connections/seller-1/settings\""));
    let resp = app.get("/dashboard/connections/seller-1/settings").await;
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("round_robin"));
    assert!(html.contains(&format!("{}, {}", a.users[0], a.users[1])));
    assert!(
        !html.contains("<form method=\"post\" action=\"/dashboard/connections/seller-1/settings")
    );
    let resp = app.get("/dashboard/connections/nobody/settings").await;
    assert_eq!(resp.status().as_u16(), 404);
}
