//! What real accounts do to a connection (CONTRACT §11): a seller renames their account while orders keep
//! coming, an account stops paying (402) or is blocked (403) and comes back, and Kommo sellers beside amoCRM
//! ones in one running service. Workers are driven step by step; waits are polls with deadlines.

use std::collections::HashSet;
use std::time::Duration;

use amocrm_connector::services::api_keys::Tier;
use amocrm_connector::services::operators::Role;
use amocrm_connector::services::tokens;
use amocrm_connector::workers;
use amocrm_connector::workers::push;
use amocrm_sandbox::{Integration, Sandbox, SandboxConfig, SandboxHandle, decode_claims};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::{
    HOST, Queue, TestApp, base_env, connect, connect_seller, connection, consent, create_session,
    env_vars, event_count, fresh_database, leads_by_number, open_page, order_body, query_of,
    refresh_now, seed_connection, spawn_app, spawn_app_with, spawn_app_with_sandbox, strings_of,
    until_callback,
};

/// Where `HOST`'s account lives after its admin renames it.
const NEW_HOST: &str = "sellernew.amocrm.ru";
const PUSHED_LEADS: &str = "amoCRM's webhooks about the pushed leads are not processed here";

/// Posts an order of `seller` numbered `number` with `key`; the answer's status and body.
async fn post_order(app: &TestApp, key: &str, seller: &str, number: &str) -> (u16, Value) {
    let body = order_body(seller, number);
    let resp = app
        .request(Method::POST, "/api/v1/sales/orders", Some(key), Some(&body))
        .await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Runs push steps until no order is queued; every queued order must get there.
async fn drain(app: &TestApp) -> push::Report {
    let (report, drained) = push::drain(&app.state, 2_000).await.expect("push steps");
    assert!(drained, "the push queue did not drain: {report:?}");
    report
}

/// The API's view of the seller's connection.
async fn connection_view(app: &TestApp, seller: &str) -> Value {
    let body = app.api_json(&format!("/api/v1/connections/{seller}")).await;
    body["data"].clone()
}

/// How many orders of `seller` are in `sync_state`.
async fn orders_in(app: &TestApp, seller: &str, sync_state: &str) -> i64 {
    app.api_json(&format!(
        "/api/v1/sales/orders?seller_id={seller}&sync_state={sync_state}"
    ))
    .await["meta"]["total"]
        .as_i64()
        .expect("a total")
}

// ---------------------------------------------------------------------------------------------------------
// Renamed accounts

#[tokio::test]
async fn a_renamed_account_is_followed_while_orders_keep_coming() {
    let app = spawn_app().await;
    app.leaves_queued(Queue::Inbox, PUSHED_LEADS);
    let seller = connect_seller(&app, "seller-1", HOST).await;
    let key = app.api_key_with_tier(Tier::Enterprise).await;
    let mut numbers = Vec::new();
    for round in 0..6 {
        for i in 0..5 {
            let number = format!("R{round}-{i}");
            let (status, body) = post_order(&app, &key, "seller-1", &number).await;
            assert_eq!(status, 202, "{body}");
            numbers.push(number);
        }
        if round == 3 {
            // The admin renames the account between two pushes: the old host refuses from now on.
            app.sandbox.rename_account(HOST, NEW_HOST, 401).unwrap();
        }
        push::run_once(&app.state).await.unwrap();
    }
    drain(&app).await;

    assert_eq!(orders_in(&app, "seller-1", "failed").await, 0);
    assert_eq!(orders_in(&app, "seller-1", "held").await, 0);
    assert_eq!(
        orders_in(&app, "seller-1", "synced").await,
        numbers.len() as i64
    );
    let leads = leads_by_number(&app, NEW_HOST, seller.field_number);
    assert_eq!(leads.len(), numbers.len(), "exactly one lead per order");
    for n in &numbers {
        assert!(leads.contains_key(n), "order {n} became a lead");
    }

    let view = connection_view(&app, "seller-1").await;
    assert_eq!(view["status"], "active", "{view}");
    assert_eq!(view["host"], NEW_HOST);
    assert_eq!(view["subdomain"], "sellernew");
    assert_eq!(view["health"]["state"], "healthy", "{view}");
    assert!(view["health"]["last_success_at"].is_string(), "{view}");
    assert_eq!(
        event_count(&app, "seller-1", "connection.host_changed").await,
        1
    );
    assert_eq!(
        event_count(&app, "seller-1", "connection.refresh_failed").await,
        0
    );
    let events = app
        .api_json("/api/v1/events?seller_id=seller-1&event=connection.host_changed")
        .await;
    let data = &events["data"][0]["data"];
    assert_eq!(data["old_host"], HOST, "{events}");
    assert_eq!(data["new_host"], NEW_HOST, "{events}");

    // The account's webhook subscription was checked at its new host, and its webhooks, now naming the new
    // subdomain, are accepted.
    let destination = seller.intake_url(&app);
    assert!(
        app.sandbox
            .webhooks(NEW_HOST)
            .iter()
            .any(|h| h.destination == destination && !h.disabled)
    );
    let seen = app.sandbox.deliveries().len();
    let lead = leads["R5-4"].id;
    app.sandbox
        .move_lead(NEW_HOST, lead, seller.pipeline_id, seller.stages["paid"])
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), app.sandbox.webhooks_idle())
        .await
        .expect("amoCRM's webhooks delivered");
    let after: Vec<_> = app.sandbox.deliveries()[seen..]
        .iter()
        .filter(|d| d.url == destination)
        .cloned()
        .collect();
    assert!(!after.is_empty());
    for d in &after {
        assert!(d.body.contains("account%5Bsubdomain%5D=sellernew"), "{d:?}");
        assert_eq!(d.status, Some(200), "{d:?}");
    }
}

#[tokio::test]
async fn an_old_host_answering_404_to_everything_is_followed_at_the_first_call() {
    let app = spawn_app().await;
    seed_connection(&app, "seller-1", HOST).await;
    app.sandbox.rename_account(HOST, NEW_HOST, 404).unwrap();

    let account = tokens::with_api(&app.state, "seller-1", |amo| async move {
        amo.api().account().await
    })
    .await
    .expect("the call reaches the account at its new host");
    assert_eq!(account.subdomain, "sellernew");
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.host, NEW_HOST);
    assert_eq!(row.subdomain, "sellernew");
    assert_eq!(
        event_count(&app, "seller-1", "connection.host_changed").await,
        1
    );
    // Asked once more, the connection is simply there.
    tokens::with_api(&app.state, "seller-1", |amo| async move {
        amo.api().account().await
    })
    .await
    .unwrap();
    assert_eq!(
        event_count(&app, "seller-1", "connection.host_changed").await,
        1
    );
}

#[tokio::test]
async fn a_token_naming_a_foreign_api_host_is_never_sent_there() {
    const FOREIGN: &str = "api-b.evil.example";
    let app = spawn_app().await;
    app.sandbox.add_account(HOST);
    app.sandbox.set_api_domain(HOST, FOREIGN).unwrap();
    seed_connection(&app, "seller-1", HOST).await;
    let row = connection(&app, "seller-1").await.unwrap();
    let token = row.access_token(&app.state.keys).unwrap().unwrap();
    assert_eq!(
        decode_claims(token.expose_secret()).unwrap()["api_domain"],
        FOREIGN
    );
    app.sandbox.rename_account(HOST, NEW_HOST, 401).unwrap();
    app.sandbox.clear_log();

    let body = refresh_now(&app, "seller-1").await;
    assert_eq!(
        body["data"]["status"], "refresh_failed",
        "the account cannot be found, so the seller must reconnect: {body}"
    );
    let hosts: HashSet<String> = app
        .sandbox
        .request_log()
        .into_iter()
        .filter_map(|e| e.host)
        .collect();
    assert_eq!(
        hosts,
        HashSet::from([HOST.to_owned()]),
        "only the old host was contacted; the refresh token never left for {FOREIGN}"
    );
    assert_eq!(
        event_count(&app, "seller-1", "connection.host_changed").await,
        0
    );
    assert_eq!(
        event_count(&app, "seller-1", "connection.refresh_failed").await,
        1
    );
}

// ---------------------------------------------------------------------------------------------------------
// Unpaid and blocked accounts

/// One account refused (`refuse`: 402 or 403) while orders keep coming, probed, and back.
async fn suspended_and_recovered(status: u16, reason: &str, refuse: fn(&SandboxHandle)) {
    let app = spawn_app_with(env_vars(&[("SUSPENDED_PROBE_INTERVAL", "1s")])).await;
    app.leaves_queued(Queue::Inbox, PUSHED_LEADS);
    let seller = connect_seller(&app, "seller-1", HOST).await;
    let key = app.api_key_with_tier(Tier::Enterprise).await;
    let mut numbers: Vec<String> = (0..5).map(|i| format!("B{i}")).collect();
    for n in &numbers {
        assert_eq!(post_order(&app, &key, "seller-1", n).await.0, 202);
    }
    drain(&app).await;

    refuse(&app.sandbox);
    for i in 0..5 {
        let n = format!("D{i}");
        assert_eq!(post_order(&app, &key, "seller-1", &n).await.0, 202);
        numbers.push(n);
    }
    drain(&app).await;
    let view = connection_view(&app, "seller-1").await;
    assert_eq!(view["status"], "suspended", "{view}");
    assert_eq!(view["suspended_reason"], reason, "{view}");
    assert_eq!(view["health"]["state"], "suspended", "{view}");
    assert_eq!(
        event_count(&app, "seller-1", "connection.suspended").await,
        1
    );
    let refused_at = app
        .sandbox
        .request_log()
        .into_iter()
        .find(|e| e.host.as_deref() == Some(HOST) && e.status == status)
        .expect("amoCRM refused a call")
        .seq;

    // Orders keep coming: accepted and held; the push sends nothing.
    for i in 0..5 {
        let n = format!("S{i}");
        let (code, body) = post_order(&app, &key, "seller-1", &n).await;
        assert_eq!(code, 202);
        assert_eq!(body["data"]["sync"]["state"], "held", "{body}");
        numbers.push(n);
    }
    let step = push::run_once(&app.state).await.unwrap();
    assert_eq!(step.calls, 0, "{step:?}");

    // The worker probes when the interval has passed, and not again before.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut probes = 0;
    while probes == 0 {
        assert!(std::time::Instant::now() < deadline, "no probe was due");
        let r = workers::refresh::run_once(&app.state).await.unwrap();
        probes += r.probes.probed;
        assert_eq!(r.probes.recovered, 0);
        if probes == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let r = workers::refresh::run_once(&app.state).await.unwrap();
    assert_eq!(r.probes.probed, 0, "the next probe waits for the interval");

    // The marketplace asks for a refresh: one probe at once, still refused.
    let body = refresh_now(&app, "seller-1").await;
    assert_eq!(body["data"]["status"], "suspended", "{body}");
    probes += 1;

    // While suspended only the probes reached the account.
    let since: Vec<_> = app
        .sandbox
        .request_log()
        .into_iter()
        .filter(|e| e.host.as_deref() == Some(HOST) && e.seq > refused_at)
        .collect();
    assert_eq!(since.len(), probes, "{since:?}");
    for e in &since {
        assert_eq!((e.path.as_str(), e.status), ("/api/v4/account", status));
    }

    // amoCRM answers again: the next probe recovers the connection; every held order becomes one lead.
    app.sandbox.clear_block(HOST).unwrap();
    let body = refresh_now(&app, "seller-1").await;
    assert_eq!(body["data"]["status"], "active", "{body}");
    assert!(body["data"]["suspended_reason"].is_null(), "{body}");
    assert_eq!(
        event_count(&app, "seller-1", "connection.recovered").await,
        1
    );
    drain(&app).await;
    assert_eq!(orders_in(&app, "seller-1", "held").await, 0);
    assert_eq!(orders_in(&app, "seller-1", "failed").await, 0);
    let leads = leads_by_number(&app, HOST, seller.field_number);
    assert_eq!(leads.len(), numbers.len(), "exactly one lead per order");
    for n in &numbers {
        assert!(leads.contains_key(n), "order {n} became a lead");
    }

    // The dashboard's page of the connection shows the way there and back.
    crate::dashboard::sign_in(&app, "ops@example.com", Role::Admin).await;
    let page = app.get("/dashboard/connections/seller-1").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    for shown in ["connection.suspended", "connection.recovered", reason] {
        assert!(html.contains(shown), "{shown} on the connection's page");
    }
}

#[tokio::test]
async fn an_unpaid_account_is_suspended_probed_and_recovered_with_its_held_orders() {
    suspended_and_recovered(402, "payment_required", |sb| {
        sb.require_payment(HOST).unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_blocked_account_is_suspended_probed_and_recovered_with_its_held_orders() {
    suspended_and_recovered(403, "blocked", |sb| sb.block(HOST).unwrap()).await;
}

#[tokio::test]
async fn metrics_list_suspended_connections() {
    let app = spawn_app().await;
    seed_connection(&app, "seller-1", HOST).await;
    app.sandbox.require_payment(HOST).unwrap();
    let err = tokens::with_api(&app.state, "seller-1", |amo| async move {
        amo.api().account().await
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, tokens::TokenError::NeedsReconnect(_)),
        "{err}"
    );
    let listed = app.api_json("/api/v1/connections?status=suspended").await;
    assert_eq!(listed["meta"]["total"], 1, "{listed}");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("status=\"suspended\"") && l.ends_with(" 1")),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Kommo beside amoCRM

const KOMMO_ID: &str = "kommo-client-id";
const KOMMO_SECRET: &str = "kommo-client-secret-value";

/// A service with both integrations, each registered in the sandbox with its own client id.
async fn spawn_two_platforms() -> TestApp {
    let database = fresh_database();
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox starts");
    let mut env = base_env(&database.url);
    env.insert("KOMMO_CLIENT_ID".into(), KOMMO_ID.into());
    env.insert("KOMMO_CLIENT_SECRET".into(), KOMMO_SECRET.into());
    env.insert("KOMMO_AUTHORIZE_URL".into(), sandbox.authorize_url());
    let app = spawn_app_with_sandbox(database, env, sandbox).await;
    let redirect = app.state.settings.amocrm_redirect_uri.to_string();
    app.sandbox
        .add_integration(Integration::new(KOMMO_ID, KOMMO_SECRET, redirect));
    app.leaves_queued(Queue::Inbox, PUSHED_LEADS);
    app
}

/// The Kommo connect flow click by click up to the callback amoCRM sends the browser to.
async fn kommo_callback(app: &TestApp, seller: &str, host: &str) -> String {
    let session = create_session(app, seller, json!({"platform": "kommo"})).await;
    assert_eq!(session["platform"], "kommo");
    let (popup, _) = open_page(&app.http, session["connect_url"].as_str().unwrap()).await;
    assert_eq!(query_of(&popup)["client_id"], KOMMO_ID);
    consent(&app.http, &app.sandbox.base_url(), &popup, host, true).await
}

/// `url` with query parameter `key` set to `value`.
fn with_param(url: &str, key: &str, value: &str) -> String {
    let (base, _) = url.split_once('?').unwrap();
    let mut q: Vec<(String, String)> = query_of(url).into_iter().collect();
    q.retain(|(k, _)| k != key);
    q.push((key.to_owned(), value.to_owned()));
    format!("{base}?{}", serde_urlencoded::to_string(&q).unwrap())
}

#[tokio::test]
async fn kommo_and_amocrm_sellers_work_side_by_side_each_with_its_own_integration() {
    const AMO_HOST: &str = "shopone.amocrm.ru";
    const KOMMO_HOST: &str = "shoptwo.kommo.com";
    let app = spawn_two_platforms().await;
    let amo_id = app.env["AMOCRM_CLIENT_ID"].clone();

    assert_eq!(connect(&app, "seller-amo", AMO_HOST).await.status(), 200);
    let callback = kommo_callback(&app, "seller-kommo", KOMMO_HOST).await;
    let q = query_of(&callback);
    assert_eq!(
        (q["platform"].as_str(), q["client_id"].as_str()),
        ("2", KOMMO_ID)
    );
    let done = crate::support::through_result(&app, &callback).await;
    assert_eq!(done.status(), 200);
    let page = done.text().await.unwrap();
    assert!(
        page.contains("Kommo") && !page.contains("amoCRM"),
        "a Kommo seller reads Kommo: {page}"
    );
    let session = create_session(&app, "seller-kommo-2", json!({"platform": "kommo"})).await;
    let page = app
        .browse(session["connect_url"].as_str().unwrap())
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("Kommo") && !page.contains("amoCRM"), "{page}");

    for (seller, platform, client_id) in [
        ("seller-amo", "amocrm", amo_id.as_str()),
        ("seller-kommo", "kommo", KOMMO_ID),
    ] {
        let view = connection_view(&app, seller).await;
        assert_eq!(view["platform"], platform, "{view}");
        assert_eq!(view["status"], "active", "{view}");
        let row = connection(&app, seller).await.unwrap();
        let token = row.access_token(&app.state.keys).unwrap().unwrap();
        let claims = decode_claims(token.expose_secret()).unwrap();
        assert_eq!(
            claims["aud"], client_id,
            "{seller}'s grant is its platform's"
        );
    }
    let listed = app.api_json("/api/v1/connections").await;
    let platforms: HashSet<&str> = strings_of(&listed["data"], "platform").collect();
    assert_eq!(platforms, HashSet::from(["amocrm", "kommo"]));

    // Orders land in the right account, one lead each.
    let key = app.api_key_with_tier(Tier::Enterprise).await;
    for i in 0..3 {
        assert_eq!(
            post_order(&app, &key, "seller-amo", &format!("A{i}"))
                .await
                .0,
            202
        );
        assert_eq!(
            post_order(&app, &key, "seller-kommo", &format!("K{i}"))
                .await
                .0,
            202
        );
    }
    drain(&app).await;
    for (seller, host, prefix) in [
        ("seller-amo", AMO_HOST, "A"),
        ("seller-kommo", KOMMO_HOST, "K"),
    ] {
        let field = connection(&app, seller)
            .await
            .unwrap()
            .field_order_number_id
            .unwrap();
        let leads = leads_by_number(&app, host, u64::try_from(field).unwrap());
        let mut got: Vec<&String> = leads.keys().collect();
        got.sort();
        let want: Vec<String> = (0..3).map(|i| format!("{prefix}{i}")).collect();
        assert_eq!(got, want.iter().collect::<Vec<_>>(), "{host}");
    }
}

#[tokio::test]
async fn a_callback_whose_platform_and_client_id_disagree_is_refused_before_any_exchange() {
    let app = spawn_two_platforms().await;
    let amo_id = app.env["AMOCRM_CLIENT_ID"].clone();

    // A Kommo consent coming back with the amoCRM client id.
    let callback = kommo_callback(&app, "seller-k", "shopk.kommo.com").await;
    app.sandbox.clear_log();
    let resp =
        crate::support::through_result(&app, &with_param(&callback, "client_id", &amo_id)).await;
    assert_eq!(resp.status().as_u16(), 400);
    assert!(connection(&app, "seller-k").await.is_none());

    // An amoCRM consent coming back as Kommo's.
    let callback = until_callback(&app, "seller-a", "shopa.amocrm.ru", true).await;
    assert_eq!(query_of(&callback)["platform"], "1");
    let resp = crate::support::through_result(&app, &with_param(&callback, "platform", "2")).await;
    assert_eq!(resp.status().as_u16(), 400);
    assert!(connection(&app, "seller-a").await.is_none());

    // Kommo's client id with an amoCRM account host: not a host of Kommo's.
    let callback = kommo_callback(&app, "seller-x", "shopx.kommo.com").await;
    let forged = with_param(
        &with_param(&callback, "referer", "shopx.amocrm.ru"),
        "platform",
        "2",
    );
    let resp = crate::support::through_result(&app, &forged).await;
    assert_eq!(resp.status().as_u16(), 400);
    assert!(connection(&app, "seller-x").await.is_none());

    assert!(
        app.sandbox
            .request_log()
            .iter()
            .all(|e| e.path != "/oauth2/access_token"),
        "no code was exchanged"
    );
}

#[tokio::test]
async fn connect_sessions_name_a_configured_platform() {
    let app = spawn_app().await;
    let session = create_session(&app, "seller-1", json!({})).await;
    assert_eq!(session["platform"], "amocrm", "the only one configured");
    for (platform, says) in [("kommo", "not configured"), ("bitrix", "must be one of")] {
        let resp = app
            .api_post(
                "/api/v1/connect-sessions",
                &json!({"seller_id": "seller-1", "platform": platform}),
            )
            .await;
        let body = crate::support::assert_error(resp, 422, "VALIDATION_ERROR").await;
        let msg = body["error"]["details"]["platform"][0].as_str().unwrap();
        assert!(msg.contains(says), "{msg}");
    }
}
