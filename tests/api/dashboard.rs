//! The operator dashboard: sign-in with a session cookie and CSRF tokens, the pages and their data, viewers,
//! sign-out, and the security headers.

use amocrm_connector::domain::status::ConnectionStatus;
use amocrm_connector::services::operators::{self, Role};
use amocrm_connector::storage::events::{self, NewEvent};
use amocrm_connector::storage::schema::{amocrm_connections, orders, webhook_subscriptions};
use chrono::TimeDelta;
use diesel::prelude::*;
use secrecy::SecretString;
use serde_json::json;

use crate::support::{TestApp, connection_row, insert_connections, spawn_app};

const PASSWORD: &str = "dashboard password 1";

/// The value of the first hidden `csrf` field in a page.
pub fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a csrf field") + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

/// Signs in through the login form; the app's client keeps the cookies.
pub async fn sign_in(app: &TestApp, email: &str, role: Role) {
    operators::create_or_update(
        &app.db,
        email,
        Some("Dana"),
        role,
        SecretString::from(PASSWORD),
    )
    .await
    .unwrap();
    let page = app.get("/dashboard/login").await;
    assert_eq!(page.status(), 200);
    let csrf = csrf_in(&page.text().await.unwrap());
    let resp = post_fields(
        app,
        "/dashboard/login",
        &[("email", email), ("password", PASSWORD), ("csrf", &csrf)],
    )
    .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/dashboard");
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("amc_session="))
        .expect("session cookie");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
}

async fn get(app: &TestApp, path: &str) -> (u16, String) {
    let resp = app.get(path).await;
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// Posts a dashboard form at `path` with these `fields`.
async fn post_fields(app: &TestApp, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .form(fields)
        .send()
        .await
        .unwrap()
}

/// Posts the dashboard form at `path` with its `csrf` token.
async fn post_form(app: &TestApp, path: &str, csrf: &str) -> reqwest::Response {
    post_fields(app, path, &[("csrf", csrf)]).await
}

/// A connection row in `refresh_failed` (no tokens left), as the dashboard lists it.
pub async fn seed_failed_connection(app: &TestApp, seller_id: &str) {
    let expires_at = amocrm_connector::storage::now() + TimeDelta::hours(5);
    let mut row = connection_row(
        app,
        seller_id,
        "dash.amocrm.ru",
        31_337,
        ("", ""),
        expires_at,
    );
    row.status = ConnectionStatus::RefreshFailed;
    row.refresh_failures = 3;
    (row.access_token_enc, row.refresh_token_enc) = (None, None);
    row.last_refreshed_at = None;
    row.webhook_token = format!("whtok-{seller_id}");
    insert_connections(app, vec![row]).await;
    app.update(
        amocrm_connections::table.filter(amocrm_connections::seller_id.eq(seller_id.to_owned())),
        amocrm_connections::last_error.eq(Some("amoCRM refused the refresh token")),
    )
    .await;
}

async fn seed(app: &TestApp) {
    seed_failed_connection(app, "seller-dash").await;
    app.db
        .run(|c| {
            let now = amocrm_connector::storage::now();
            diesel::insert_into(orders::table)
                .values((
                    orders::id.eq("ord_dash1"),
                    orders::seller_id.eq("seller-dash"),
                    orders::order_number.eq("A-1042"),
                    orders::status.eq("pending"),
                    orders::total_amount_minor.eq(1_250_000i64),
                    orders::currency.eq("UZS"),
                    orders::body_json.eq("{}"),
                    orders::body_hash.eq("x"),
                    orders::sync_state.eq("failed"),
                    orders::last_error.eq(Some("amoCRM rejected the lead: price")),
                    orders::next_attempt_at.eq(now),
                    orders::created_at.eq(now),
                    orders::updated_at.eq(now),
                ))
                .execute(c)?;
            diesel::insert_into(webhook_subscriptions::table)
                .values((
                    webhook_subscriptions::id.eq("sub_dash"),
                    webhook_subscriptions::url.eq("https://receiver.example/hook"),
                    webhook_subscriptions::events.eq("[\"payment.completed\"]"),
                    webhook_subscriptions::secret_enc.eq(vec![0u8; 8]),
                    webhook_subscriptions::active.eq(true),
                    webhook_subscriptions::created_at.eq(now),
                    webhook_subscriptions::updated_at.eq(now),
                ))
                .execute(c)?;
            let ev = NewEvent::new(
                "payment.completed",
                "seller-dash",
                json!({"order_id": "ord_dash1", "order_number": "A-1042", "lead_id": 77, "amount": 12500, "currency": "UZS"}),
                None,
            );
            events::record(c, &ev)?;
            Ok(())
        })
        .await
        .unwrap();
}

/// A test app with the seeded rows and an admin signed in.
async fn seeded_admin() -> TestApp {
    let app = spawn_app().await;
    seed(&app).await;
    sign_in(&app, "ops@example.com", Role::Admin).await;
    app
}

#[tokio::test]
async fn the_dashboard_sends_strangers_to_the_sign_in_page() {
    let app = spawn_app().await;
    for path in [
        "/dashboard",
        "/dashboard/connections",
        "/dashboard/orders",
        "/dashboard/events",
    ] {
        let resp = app.get(path).await;
        assert_eq!(resp.status(), 303, "{path}");
        assert_eq!(resp.headers()["location"], "/dashboard/login");
    }
    // A forged session cookie is no better.
    let resp = app
        .http
        .get(app.url("/dashboard"))
        .header("cookie", "amc_session=ops_forged")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303);
}

#[tokio::test]
async fn an_operator_signs_in_and_sees_connections_orders_events_and_subscriptions() {
    let app = seeded_admin().await;

    let (status, html) = get(&app, "/dashboard").await;
    assert_eq!(status, 200);
    assert!(html.contains("Overview") && html.contains("Dana"), "{html}");
    // Failed deliveries link to the events page filtered to them; the other states to the whole list.
    assert!(
        html.contains(r#"<a href="/dashboard/events?failed=1"><span class="badge s-failed">"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<a href="/dashboard/events"><span class="badge s-delivered">"#),
        "{html}"
    );

    let (status, html) = get(&app, "/dashboard/connections").await;
    assert_eq!(status, 200);
    assert!(html.contains("seller-dash") && html.contains("dash.amocrm.ru"));
    assert!(html.contains("refresh_failed") && html.contains("amoCRM refused the refresh token"));
    assert!(html.contains("Refresh now"));
    assert!(
        html.contains("<time datetime=\""),
        "times are machine-readable"
    );

    let (_, html) = get(&app, "/dashboard/connections?status=active").await;
    assert!(!html.contains("seller-dash"), "filtered out");

    let (status, html) = get(&app, "/dashboard/orders?sync_state=failed").await;
    assert_eq!(status, 200);
    assert!(html.contains("A-1042") && html.contains("12500.00 UZS"));
    assert!(html.contains("Retry"));

    let (status, html) = get(&app, "/dashboard/events").await;
    assert_eq!(status, 200);
    assert!(html.contains("payment.completed") && html.contains("ord_dash1"));

    let (status, html) = get(&app, "/dashboard/subscriptions").await;
    assert_eq!(status, 200);
    assert!(html.contains("https://receiver.example/hook"));
}

#[tokio::test]
async fn times_are_shown_in_the_operators_time_zone() {
    let mut app = spawn_app().await;
    seed(&app).await;
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    app.http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_provider(jar.clone())
        .build()
        .unwrap();
    sign_in(&app, "ops@example.com", Role::Admin).await;
    let url: reqwest::Url = app.url("/dashboard").parse().unwrap();
    let utc = get(&app, "/dashboard/connections").await.1;
    // What the page script reports for a browser in Tashkent.
    jar.add_cookie_str("tz_offset=300; Path=/dashboard", &url);
    let tashkent = get(&app, "/dashboard/connections").await.1;
    assert!(tashkent.contains("UTC+05:00"), "{tashkent}");
    assert!(utc.contains("UTC+00:00"));
    let first_time = |html: &str| {
        let start = html.find("<time").unwrap();
        html[start..html[start..].find("</time>").unwrap() + start].to_owned()
    };
    assert_ne!(first_time(&utc), first_time(&tashkent));
}

#[tokio::test]
async fn the_login_form_needs_its_csrf_token_and_the_right_password() {
    let app = spawn_app().await;
    operators::create_or_update(
        &app.db,
        "ops@example.com",
        None,
        Role::Admin,
        SecretString::from(PASSWORD),
    )
    .await
    .unwrap();
    // No token from a login page: refused, no session.
    let resp = post_fields(
        &app,
        "/dashboard/login",
        &[
            ("email", "ops@example.com"),
            ("password", PASSWORD),
            ("csrf", "made-up"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 403);
    assert_eq!(get(&app, "/dashboard").await.0, 303);

    let page = get(&app, "/dashboard/login").await.1;
    let resp = post_fields(
        &app,
        "/dashboard/login",
        &[
            ("email", "ops@example.com"),
            ("password", "wrong password"),
            ("csrf", &csrf_in(&page)),
        ],
    )
    .await;
    assert_eq!(resp.status(), 401);
    assert!(
        resp.text()
            .await
            .unwrap()
            .contains("Wrong e-mail or password")
    );
    assert_eq!(get(&app, "/dashboard").await.0, 303);
}

#[tokio::test]
async fn dashboard_actions_need_the_session_form_token_and_viewers_cannot_act() {
    let app = spawn_app().await;
    seed(&app).await;
    sign_in(&app, "viewer@example.com", Role::Viewer).await;
    let html = get(&app, "/dashboard/orders").await.1;
    assert!(!html.contains(">Retry<"), "viewers see no action buttons");
    let resp = post_form(&app, "/dashboard/orders/ord_dash1/retry", &csrf_in(&html)).await;
    assert_eq!(resp.status(), 403);

    let admin = seeded_admin().await;
    let resp = post_form(&admin, "/dashboard/orders/ord_dash1/retry", "not-the-token").await;
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn signing_out_ends_the_session() {
    let app = spawn_app().await;
    sign_in(&app, "ops@example.com", Role::Admin).await;
    let html = get(&app, "/dashboard").await.1;
    let resp = post_form(&app, "/dashboard/logout", &csrf_in(&html)).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(get(&app, "/dashboard").await.0, 303);
}

#[tokio::test]
async fn dashboard_pages_are_locked_down_with_security_headers() {
    let app = spawn_app().await;
    sign_in(&app, "ops@example.com", Role::Admin).await;
    let resp = app.get("/dashboard").await;
    let h = resp.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    let css = app.get("/dashboard/assets/app.css").await;
    assert_eq!(css.status(), 200);
    assert!(
        css.text().await.unwrap().contains("@media (max-width"),
        "phone layout"
    );
}

#[tokio::test]
async fn refresh_now_in_the_dashboard_refreshes_the_connection_at_amocrm() {
    let app = spawn_app().await;
    crate::support::seed_connection(&app, "seller-live", "sellerone.amocrm.ru").await;
    let before = crate::support::connection(&app, "seller-live")
        .await
        .unwrap();
    sign_in(&app, "ops@example.com", Role::Admin).await;
    let html = get(&app, "/dashboard/connections").await.1;
    assert!(html.contains("/dashboard/connections/seller-live/refresh"));
    let resp = post_form(
        &app,
        "/dashboard/connections/seller-live/refresh",
        &csrf_in(&html),
    )
    .await;
    assert_eq!(resp.status(), 303);
    assert_eq!(
        resp.headers()["location"],
        "/dashboard/connections?done=refreshed"
    );
    let after = crate::support::connection(&app, "seller-live")
        .await
        .unwrap();
    assert!(after.token_version > before.token_version);
    assert!(after.last_refreshed_at.is_some());
    let page = get(&app, "/dashboard/connections?done=refreshed").await.1;
    assert!(page.contains("The connection was refreshed."));
}

#[tokio::test]
async fn redeliver_in_the_dashboard_makes_a_failed_delivery_due_again() {
    use amocrm_connector::storage::schema::event_deliveries;
    let app = spawn_app().await;
    seed(&app).await;
    let deliveries = app
        .sql(|c| {
            diesel::update(event_deliveries::table)
                .set(event_deliveries::state.eq("failed"))
                .execute(c)
        })
        .await;
    assert_eq!(deliveries, 1, "the seeded event has one delivery");
    sign_in(&app, "ops@example.com", Role::Admin).await;
    let html = get(&app, "/dashboard/events?failed=1").await.1;
    let at = html.find("/redeliver\"").expect("a redeliver button");
    let action_start = html[..at].rfind("action=\"").unwrap() + "action=\"".len();
    let action = format!("{}/redeliver", &html[action_start..at]);
    let resp = post_form(&app, &action, &csrf_in(&html)).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(
        resp.headers()["location"],
        "/dashboard/events?done=redelivered"
    );
    let states: Vec<String> = app
        .sql(|c| {
            event_deliveries::table
                .select(event_deliveries::state)
                .load(c)
        })
        .await;
    assert_eq!(states, vec!["pending".to_owned()]);
}

#[tokio::test]
async fn retry_in_the_dashboard_queues_a_failed_order_again() {
    let app = seeded_admin().await;
    let html = get(&app, "/dashboard/orders?sync_state=failed").await.1;
    assert!(html.contains("/dashboard/orders/ord_dash1/retry"));
    let resp = post_form(&app, "/dashboard/orders/ord_dash1/retry", &csrf_in(&html)).await;
    assert_eq!(resp.status(), 303);
    assert_eq!(resp.headers()["location"], "/dashboard/orders?done=retried");
    let state: String = app
        .sql(|c| {
            orders::table
                .filter(orders::id.eq("ord_dash1"))
                .select(orders::sync_state)
                .first(c)
        })
        .await;
    assert_ne!(state, "failed");
}

#[tokio::test]
async fn a_subscription_is_tested_paused_and_edited_from_the_dashboard() {
    use crate::support::Behaviour;
    let app = spawn_app().await;
    let (rx, id) = app
        .subscribed_receiver("rx-secret", Behaviour::Ok, json!(["payment.completed"]))
        .await;
    sign_in(&app, "ops@example.com", Role::Admin).await;
    let (status, html) = get(&app, &format!("/dashboard/subscriptions/{id}")).await;
    assert_eq!(status, 200);
    assert!(html.contains(&rx.url), "{html}");
    let csrf = csrf_in(&html);

    // A test event: one signed POST now, and the page says how the receiver answered.
    let resp = post_form(&app, &format!("/dashboard/subscriptions/{id}/test"), &csrf).await;
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Test event delivered: HTTP 200"), "{page}");
    let hits = rx.hits();
    assert_eq!(hits.len(), 1);
    assert!(
        hits[0].signature_ok,
        "signed with the subscription's secret"
    );
    assert_eq!(hits[0].json()["event"], "webhook.test");
    let log = app.api_json("/api/v1/events").await;
    assert_eq!(
        log["data"].as_array().unwrap().len(),
        0,
        "not in the event log"
    );

    // A bad URL changes nothing and says why.
    let resp = post_fields(
        &app,
        &format!("/dashboard/subscriptions/{id}"),
        &[
            ("csrf", csrf.as_str()),
            ("url", "not a url"),
            ("events", "payment.completed"),
            ("active", "on"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains("Nothing was saved"));
    let sub = app.api_json(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(sub["data"]["url"], rx.url.as_str());

    // Paused, with one more event: saved, and the API sees it.
    let resp = post_fields(
        &app,
        &format!("/dashboard/subscriptions/{id}"),
        &[
            ("csrf", csrf.as_str()),
            ("url", rx.url.as_str()),
            ("events", "payment.completed, order.synced"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 303);
    let sub = app.api_json(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(sub["data"]["active"], false);
    assert_eq!(
        sub["data"]["events"],
        json!(["payment.completed", "order.synced"])
    );
}
