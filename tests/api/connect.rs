//! Connecting amoCRM click by click against the sandbox: sessions, the page, consent, the callback's
//! checks, provisioning, reconnects, revocation and the uninstall hook.

use amocrm_connector::domain::status::{ConnectionStatus, ProvisioningState};

use amocrm_connector::services::provisioning;
use amocrm_connector::storage::schema::{
    amocrm_connections as c, connect_sessions as cs, oauth_states as os,
};
use amocrm_connector::storage::{self as st, sessions};
use diesel::prelude::*;
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::{
    HOST, OTHER_HOST, TestApp, assert_error, attr, connect, connection, consent, create_session,
    env_vars, event_count, follow_result, header, open_page, query_of, result_location, spawn_app,
    spawn_app_with, status_of, through_result, until_callback,
};

/// Replaces (or adds) one query parameter of a URL.
fn with_param(url: &str, key: &str, value: &str) -> String {
    let (base, _) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<(String, String)> = query_of(url)
        .into_iter()
        .filter(|(k, _)| k != key)
        .collect();
    pairs.push((key.to_owned(), value.to_owned()));
    format!("{base}?{}", serde_urlencoded::to_string(pairs).unwrap())
}

/// A test app where `seller-1` has connected to `HOST`, click by click.
async fn connected_app() -> TestApp {
    let app = spawn_app().await;
    assert_eq!(connect(&app, "seller-1", HOST).await.status().as_u16(), 200);
    app
}

/// Hosts of every request the sandbox received that was addressed to an account.
fn account_hosts_in_log(app: &TestApp) -> Vec<String> {
    app.sandbox
        .request_log()
        .into_iter()
        .filter_map(|r| r.host)
        .collect()
}

#[tokio::test]
async fn a_full_connect_click_by_click_leaves_an_active_provisioned_connection() {
    let app = spawn_app().await;
    let resp = connect(&app, "seller-1", HOST).await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    let html = resp.text().await.unwrap();
    assert!(html.contains("amoCRM ulandi"), "{html}");
    assert!(
        html.contains("data-page=\"result\"") && html.contains("/connect/assets/seller.js"),
        "popup mode posts to the opener"
    );

    let row = connection(&app, "seller-1").await.expect("stored");
    assert_eq!(row.status, ConnectionStatus::Active);
    assert_eq!(row.account_id as u64, app.sandbox.account_id(HOST).unwrap());
    assert_eq!(row.host, HOST);
    assert_eq!(row.subdomain, "sellerone");
    assert_eq!(row.provisioning_state, ProvisioningState::Complete);
    // Tokens are stored encrypted, bound to the row.
    let access = row.access_token(&app.state.keys).unwrap().unwrap();
    let blob = row.access_token_enc.clone().unwrap();
    let plain = access.expose_secret().as_bytes();
    assert!(!blob.windows(plain.len()).any(|w| w == plain));

    // One pipeline with the six stages, named in Uzbek, valid colours.
    let ours: Vec<_> = app
        .sandbox
        .pipelines(HOST)
        .into_iter()
        .filter(|p| p.name == "Marketplace buyurtmalari")
        .collect();
    assert_eq!(ours.len(), 1);
    let p = &ours[0];
    assert_eq!(Some(p.id as i64), row.pipeline_id);
    let names: Vec<&str> = p.statuses.iter().map(|s| s.name.as_str()).collect();
    for n in [
        "Yangi buyurtma",
        "To'lov kutilmoqda",
        "To'landi",
        "Yetkazilmoqda",
        "Yakunlandi",
        "Bekor qilindi",
    ] {
        assert!(names.contains(&n), "{n} in {names:?}");
    }
    assert_eq!(p.status(142).unwrap().name, "Yakunlandi");
    assert_eq!(p.status(143).unwrap().name, "Bekor qilindi");
    for s in p
        .statuses
        .iter()
        .filter(|s| s.id != 142 && s.id != 143 && s.type_ == 0)
    {
        assert!(amocrm_sandbox::STATUS_COLORS.contains(&s.color.as_str()));
    }
    assert_eq!(row.stage_completed, Some(142));
    assert_eq!(row.stage_cancelled, Some(143));
    assert_eq!(
        row.stage_paid,
        p.statuses
            .iter()
            .find(|s| s.name == "To'landi")
            .map(|s| s.id as i64)
    );

    // Two custom fields: order number (text) and order link (url).
    let fields = app.sandbox.custom_fields(HOST);
    let number = fields
        .iter()
        .find(|f| f.code.as_deref() == Some(provisioning::ORDER_NUMBER_CODE))
        .unwrap();
    let link = fields
        .iter()
        .find(|f| f.code.as_deref() == Some(provisioning::ORDER_LINK_CODE))
        .unwrap();
    assert_eq!(
        (number.type_.as_str(), link.type_.as_str()),
        ("text", "url")
    );
    assert_eq!(row.field_order_number_id, Some(number.id as i64));
    assert_eq!(row.field_order_link_id, Some(link.id as i64));

    // One webhook subscription to our per-connection destination.
    let hooks = app.sandbox.webhooks(HOST);
    assert_eq!(hooks.len(), 1);
    assert_eq!(
        hooks[0].destination,
        format!("{}/webhooks/amocrm/{}", app.address, row.webhook_token)
    );
    for s in provisioning::WEBHOOK_SETTINGS {
        assert!(hooks[0].settings.iter().any(|x| x == s), "{s}");
    }
    assert_eq!(
        event_count(&app, "seller-1", "connection.connected").await,
        1
    );

    // The API shows the connection and never a token.
    let resp = app.api_get("/api/v1/connections/seller-1").await;
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.unwrap();
    assert!(!body.contains(access.expose_secret()));
    assert!(!body.contains("access_token") && !body.contains("refresh_token"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"]["status"], "active");
    assert_eq!(v["data"]["host"], HOST);
    assert_eq!(v["data"]["pipeline_id"], json!(row.pipeline_id));
    assert!(v["data"]["last_refreshed_at"].is_string());
    assert_eq!(v["data"]["provisioning"]["missing"], json!([]));
}

#[tokio::test]
async fn a_second_connect_of_the_same_seller_and_account_creates_nothing_new_in_amocrm() {
    let app = connected_app().await;
    let before = connection(&app, "seller-1").await.unwrap();
    let (pipelines, fields, hooks) = (
        app.sandbox.pipelines(HOST).len(),
        app.sandbox.custom_fields(HOST).len(),
        app.sandbox.webhooks(HOST).len(),
    );

    let resp = connect(&app, "seller-1", HOST).await;
    assert_eq!(resp.status().as_u16(), 200);
    let after = connection(&app, "seller-1").await.unwrap();
    assert_eq!(app.sandbox.pipelines(HOST).len(), pipelines);
    assert_eq!(app.sandbox.custom_fields(HOST).len(), fields);
    assert_eq!(app.sandbox.webhooks(HOST).len(), hooks);
    assert_eq!(after.id, before.id);
    assert_eq!(after.pipeline_id, before.pipeline_id);
    assert_eq!(after.webhook_token, before.webhook_token);
    assert_eq!(after.token_version, before.token_version + 1);
    assert_ne!(after.access_token_enc, before.access_token_enc);
    assert_eq!(app.sandbox.counters(HOST).code_exchanges, 2);
    assert_eq!(
        event_count(&app, "seller-1", "connection.connected").await,
        2
    );
}

#[tokio::test]
async fn connecting_another_account_moves_the_seller_and_unsubscribes_the_old_one() {
    let app = connected_app().await;
    let before = connection(&app, "seller-1").await.unwrap();
    assert_eq!(app.sandbox.webhooks(HOST).len(), 1);

    assert_eq!(
        connect(&app, "seller-1", OTHER_HOST)
            .await
            .status()
            .as_u16(),
        200
    );
    let after = connection(&app, "seller-1").await.unwrap();
    assert_eq!(after.host, OTHER_HOST);
    assert_eq!(
        after.account_id as u64,
        app.sandbox.account_id(OTHER_HOST).unwrap()
    );
    assert_ne!(after.webhook_token, before.webhook_token);
    assert_ne!(after.pipeline_id, before.pipeline_id);
    assert_eq!(after.provisioning_state, ProvisioningState::Complete);
    assert!(
        app.sandbox.webhooks(HOST).is_empty(),
        "old subscription removed"
    );
    assert_eq!(app.sandbox.webhooks(OTHER_HOST).len(), 1);
}

#[tokio::test]
async fn one_account_cannot_be_connected_by_two_sellers_unless_allowed() {
    let app = connected_app().await;
    let resp = connect(&app, "seller-2", HOST).await;
    assert_eq!(resp.status().as_u16(), 409);
    let html = resp.text().await.unwrap();
    assert!(html.contains("boshqa sotuvchiga ulangan"), "{html}");
    assert!(connection(&app, "seller-2").await.is_none());

    let shared = spawn_app_with(env_vars(&[("ALLOW_SHARED_ACCOUNTS", "true")])).await;
    assert_eq!(
        connect(&shared, "seller-1", HOST).await.status().as_u16(),
        200
    );
    assert_eq!(
        connect(&shared, "seller-2", HOST).await.status().as_u16(),
        200
    );
    assert_eq!(
        status_of(&shared, "seller-2").await,
        ConnectionStatus::Active
    );
}

/// Asserts that nothing was stored and no token request reached the sandbox.
async fn assert_nothing_stored(app: &TestApp, seller: &str) {
    assert!(connection(app, seller).await.is_none(), "no connection");
    assert_eq!(event_count(app, seller, "connection.connected").await, 0);
    let exchanges = app
        .sandbox
        .request_log()
        .into_iter()
        .filter(|r| r.grant_type.is_some())
        .count();
    assert_eq!(exchanges, 0, "no token request was made");
}

#[tokio::test]
async fn a_forged_state_stores_nothing() {
    let app = spawn_app().await;
    let callback = until_callback(&app, "seller-1", HOST, true).await;
    let forged = with_param(&callback, "state", "forged-state-value");
    let resp = app.browse(&forged).await;
    assert_eq!(resp.status().as_u16(), 400);
    let missing = callback.split('?').next().unwrap().to_owned() + "?code=x&referer=" + HOST;
    assert_eq!(app.browse(&missing).await.status().as_u16(), 400);
    assert_nothing_stored(&app, "seller-1").await;
}

#[tokio::test]
async fn an_expired_state_stores_nothing() {
    let app = spawn_app().await;
    let callback = until_callback(&app, "seller-1", HOST, true).await;
    let past = st::now() - chrono::Duration::minutes(1);
    app.update(os::table, os::expires_at.eq(past)).await;
    let resp = app.browse(&callback).await;
    assert_eq!(resp.status().as_u16(), 410);
    assert_nothing_stored(&app, "seller-1").await;
}

#[tokio::test]
async fn a_reused_state_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let callback = until_callback(&app, "seller-1", HOST, true).await;
    let done = app.browse(&callback).await;
    let result = result_location(&done).expect("a redirect to the result page");
    assert_eq!(follow_result(&app, done).await.status().as_u16(), 200);
    let first = connection(&app, "seller-1").await.unwrap();
    // The same browser coming back with the spent state sees its result again, not "already used".
    let resp = app.browse(&callback).await;
    assert_eq!(result_location(&resp).as_deref(), Some(result.as_str()));
    // Another browser with it is refused.
    let stranger = reqwest::Client::new();
    assert_eq!(
        stranger
            .get(&callback)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        410
    );
    let again = connection(&app, "seller-1").await.unwrap();
    assert_eq!(again.token_version, first.token_version);
    assert_eq!(app.sandbox.counters(HOST).code_exchanges, 1);
}

#[tokio::test]
async fn a_state_from_another_browser_stores_nothing() {
    let app = spawn_app().await;
    let callback = until_callback(&app, "seller-1", HOST, true).await;
    let stranger = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = stranger.get(&callback).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    assert_nothing_stored(&app, "seller-1").await;
    // The state was not spent: the right browser still completes.
    assert_eq!(through_result(&app, &callback).await.status().as_u16(), 200);
}

#[tokio::test]
async fn disallowed_referers_store_nothing_and_no_secret_leaves_for_them() {
    let app = spawn_app().await;
    for (i, bad) in [
        "evil.example",
        "sellerone.amocrm.ru.evil.example",
        "a.b.amocrm.ru",
        "127.0.0.1:9090",
    ]
    .into_iter()
    .enumerate()
    {
        let seller = format!("seller-{i}");
        let callback = until_callback(&app, &seller, HOST, true).await;
        let resp = through_result(&app, &with_param(&callback, "referer", bad)).await;
        assert_eq!(resp.status().as_u16(), 400, "{bad}");
        let html = resp.text().await.unwrap();
        assert!(html.contains("id=\"retry\""), "a retry link is offered");
        assert_nothing_stored(&app, &seller).await;
        assert!(
            account_hosts_in_log(&app).iter().all(|h| h == HOST),
            "only the allowed account host was ever contacted"
        );
    }
}

#[tokio::test]
async fn a_denial_or_a_foreign_client_id_stores_nothing_and_offers_a_retry() {
    let app = spawn_app().await;
    let callback = until_callback(&app, "seller-1", HOST, false).await;
    assert_eq!(query_of(&callback)["error"], "access_denied");
    let resp = through_result(&app, &callback).await;
    assert_eq!(resp.status().as_u16(), 400);
    let html = resp.text().await.unwrap();
    assert!(html.contains("ruxsat bermadingiz"), "{html}");
    let retry = attr(&html[html.find("id=\"retry\"").unwrap()..], "href").unwrap();
    assert_nothing_stored(&app, "seller-1").await;

    let callback = until_callback(&app, "seller-2", HOST, true).await;
    let resp = through_result(&app, &with_param(&callback, "client_id", "someone-else")).await;
    assert_eq!(resp.status().as_u16(), 400);
    assert_nothing_stored(&app, "seller-2").await;

    // The retry link of the denial is a fresh consent for the same session: it completes the connect.
    let callback = consent(&app.http, &app.sandbox.base_url(), &retry, HOST, true).await;
    assert_eq!(through_result(&app, &callback).await.status().as_u16(), 200);
    assert_eq!(status_of(&app, "seller-1").await, ConnectionStatus::Active);
}

#[tokio::test]
async fn a_widget_install_is_refused_with_an_explanation() {
    let app = spawn_app().await;
    let resp = app
        .http
        .get(app.url(&format!(
            "/oauth/amocrm/callback?code=abc&referer={HOST}&client_id=test-client-id&from_widget=1"
        )))
        .header("Accept-Language", "ru-RU,ru;q=0.9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let html = resp.text().await.unwrap();
    assert!(html.contains("Подключить amoCRM"), "{html}");
    assert_eq!(app.sandbox.counters(HOST).code_exchanges, 0);
}

#[tokio::test]
async fn unknown_expired_and_used_connect_links_get_human_pages() {
    let app = spawn_app().await;
    let resp = app.get("/connect/nope").await;
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.text().await.unwrap().contains("Havola topilmadi"));

    let session = create_session(&app, "seller-1", json!({})).await;
    let url = session["connect_url"].as_str().unwrap().to_owned();
    let past = st::now() - chrono::Duration::minutes(1);
    app.update(cs::table, cs::expires_at.eq(past)).await;
    let resp = app.browse(&format!("{url}?lang=en")).await;
    assert_eq!(resp.status().as_u16(), 410);
    assert!(resp.text().await.unwrap().contains("This link has expired"));

    let session = create_session(&app, "seller-2", json!({})).await;
    let url = session["connect_url"].as_str().unwrap().to_owned();
    let (popup, _) = open_page(&app.http, &url).await;
    let callback = consent(&app.http, &app.sandbox.base_url(), &popup, HOST, true).await;
    assert_eq!(through_result(&app, &callback).await.status().as_u16(), 200);
    let resp = app.browse(&url).await;
    assert_eq!(resp.status().as_u16(), 410);
}

#[tokio::test]
async fn the_connect_page_speaks_uzbek_by_default_and_russian_or_english_on_request() {
    let app = spawn_app().await;
    let session = create_session(&app, "seller-1", json!({})).await;
    let url = session["connect_url"].as_str().unwrap().to_owned();
    let resp = app.browse(&url).await;
    assert_eq!(resp.headers()["referrer-policy"], "no-referrer");
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let csp = header(&resp, "content-security-policy");
    assert!(csp.contains("script-src 'nonce-") && csp.contains("frame-ancestors 'none'"));
    let page = |u: String, al: Option<&'static str>| {
        let http = app.http.clone();
        async move {
            let mut req = http.get(u);
            if let Some(al) = al {
                req = req.header("Accept-Language", al);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 200);
            let cookie = resp
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(";");
            (resp.text().await.unwrap(), cookie)
        }
    };
    let (uz, cookie) = page(url.clone(), None).await;
    assert!(uz.contains("lang=\"uz\""), "{uz}");
    assert!(uz.contains("Oyna ochilmadimi?"), "{uz}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let (ru, _) = page(format!("{url}?lang=ru"), None).await;
    assert!(ru.contains("Подключить amoCRM"));
    let (en, _) = page(url.clone(), Some("en-GB,en;q=0.8")).await;
    assert!(en.contains("Connect amoCRM"));
    // The button opens the consent page in a popup (post_message) with a same-window fallback (popup).
    let (popup, fallback) = open_page(&app.http, &url).await;
    assert!(popup.starts_with(&app.sandbox.authorize_url()));
    assert_eq!(query_of(&popup)["mode"], "post_message");
    assert_eq!(query_of(&fallback)["mode"], "popup");
    assert_eq!(query_of(&popup)["client_id"], "test-client-id");
    assert_ne!(query_of(&popup)["state"], query_of(&fallback)["state"]);
}

#[tokio::test]
async fn the_connect_page_shows_an_existing_connection_with_a_reconnect_button() {
    let app = connected_app().await;
    let session = create_session(&app, "seller-1", json!({"lang": "en"})).await;
    let resp = app
        .http
        .get(session["connect_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let html = resp.text().await.unwrap();
    assert!(html.contains(HOST) && html.contains("Reconnect"), "{html}");
}

#[tokio::test]
async fn the_fallback_mode_redirects_to_an_allowed_return_url() {
    let allowlist = (
        "CONNECT_RETURN_URL_ALLOWLIST",
        "https://seller.market.example/",
    );
    let app = spawn_app_with(env_vars(&[allowlist])).await;
    let resp = app
        .api_post(
            "/api/v1/connect-sessions",
            &json!({"seller_id": "seller-1", "return_url": "https://seller.market.example.evil/x"}),
        )
        .await;
    let body = assert_error(resp, 422, "VALIDATION_ERROR").await;
    assert!(body["error"]["details"]["return_url"].is_array());
    let resp = app
        .api_post(
            "/api/v1/connect-sessions",
            &json!({"seller_id": "seller-1", "lang": "fr"}),
        )
        .await;
    assert_error(resp, 422, "VALIDATION_ERROR").await;

    let session = create_session(
        &app,
        "seller-1",
        json!({"return_url": "https://seller.market.example/amocrm/done"}),
    )
    .await;
    let (_, fallback) = open_page(&app.http, session["connect_url"].as_str().unwrap()).await;
    let callback = consent(&app.http, &app.sandbox.base_url(), &fallback, HOST, true).await;
    let resp = app.browse(&callback).await;
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(
        resp.headers()["location"],
        "https://seller.market.example/amocrm/done"
    );
    assert_eq!(status_of(&app, "seller-1").await, ConnectionStatus::Active);
}

#[tokio::test]
async fn a_failed_provisioning_step_keeps_the_tokens_and_is_retried_later() {
    let app = spawn_app().await;
    // Fill the account to amoCRM's 50-pipeline limit so creating ours fails.
    app.sandbox.add_account(HOST);
    let pair = app.sandbox.issue_tokens("test-client-id", HOST);
    let existing = app.sandbox.pipelines(HOST).len();
    let fill: Vec<Value> = (existing..50)
        .map(|i| json!({"name": format!("Other {i}"), "_embedded": {"statuses": []}}))
        .collect();
    // Through the app's own per-account limiter, so this request counts in the same 7 rps budget.
    let host = amocrm_client::AccountHost::parse(HOST, &Default::default()).unwrap();
    let _slot = app.state.amo.limiter().acquire(&host).await;
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/api/v4/leads/pipelines",
            app.sandbox.account_url(HOST)
        ))
        .bearer_auth(&pair.access_token)
        .json(&fill)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());

    assert_eq!(connect(&app, "seller-1", HOST).await.status().as_u16(), 200);
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.status, ConnectionStatus::Active);
    assert!(row.access_token_enc.is_some());
    assert_eq!(row.provisioning_state, ProvisioningState::Incomplete);
    assert_eq!(
        row.missing_provisioning(),
        vec!["pipeline"],
        "{:?}",
        row.provisioning_error
    );
    assert!(
        row.provisioning_error
            .as_deref()
            .unwrap()
            .contains("pipeline")
    );
    assert!(row.next_provision_at.is_some());
    let v = app.api_json("/api/v1/connections/seller-1").await;
    assert_eq!(v["data"]["provisioning"]["missing"], json!(["pipeline"]));

    // The seller frees a slot; once the back-off has passed, the worker finishes the set-up.
    let victim = app
        .sandbox
        .pipelines(HOST)
        .into_iter()
        .find(|p| p.name == "Other 49")
        .unwrap();
    app.sandbox.delete_pipeline(HOST, victim.id).unwrap();
    let now = st::now();
    app.update(c::table, c::next_provision_at.eq(Some(now)))
        .await;
    let report = amocrm_connector::workers::refresh::run_once(&app.state)
        .await
        .unwrap();
    assert_eq!(report.provisioning_attempted, 1);
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.provisioning_state, ProvisioningState::Complete);
    assert!(row.pipeline_id.is_some());
    assert_eq!(
        app.sandbox.counters(HOST).code_exchanges,
        1,
        "no second consent"
    );
    assert_eq!(app.sandbox.webhooks(HOST).len(), 1);
}

#[tokio::test]
async fn the_uninstall_hook_with_a_valid_signature_revokes_and_wipes_tokens() {
    let app = connected_app().await;
    let account_id = app.sandbox.account_id(HOST).unwrap();

    // A bad signature: 401 and nothing changes.
    let resp = app.get(&format!(
            "/oauth/amocrm/disconnect?client_uuid=test-client-id&account_id={account_id}&signature={}",
            "0".repeat(64)
        )).await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.status, ConnectionStatus::Active);
    assert!(row.access_token_enc.is_some());

    // The admin disables the integration in amoCRM: the sandbox sends the signed hook.
    assert!(app.sandbox.revoke_grant(HOST, "test-client-id"));
    app.sandbox.webhooks_idle().await;
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.status, ConnectionStatus::Revoked);
    assert!(row.access_token_enc.is_none() && row.refresh_token_enc.is_none());
    assert_eq!(event_count(&app, "seller-1", "connection.revoked").await, 1);
    let v = app.api_json("/api/v1/connections?status=revoked").await;
    assert_eq!(v["meta"]["total"], 1);
    assert_eq!(v["data"][0]["seller_id"], "seller-1");
}

#[tokio::test]
async fn deleting_a_connection_unsubscribes_wipes_tokens_and_emits_revoked() {
    let app = connected_app().await;
    assert_eq!(app.sandbox.webhooks(HOST).len(), 1);
    let resp = app.api_delete("/api/v1/connections/seller-1").await;
    assert_eq!(resp.status().as_u16(), 204);
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.status, ConnectionStatus::Revoked);
    assert!(row.access_token_enc.is_none() && row.refresh_token_enc.is_none());
    assert!(app.sandbox.webhooks(HOST).is_empty());
    assert_eq!(event_count(&app, "seller-1", "connection.revoked").await, 1);
    // Idempotent; unknown sellers are 404.
    let again = app.api_delete("/api/v1/connections/seller-1").await;
    assert_eq!(again.status().as_u16(), 204);
    assert_eq!(event_count(&app, "seller-1", "connection.revoked").await, 1);
    let resp = app.api_delete("/api/v1/connections/nobody").await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;

    // A reconnect after revoking brings everything back.
    assert_eq!(connect(&app, "seller-1", HOST).await.status().as_u16(), 200);
    let row = connection(&app, "seller-1").await.unwrap();
    assert_eq!(row.status, ConnectionStatus::Active);
    assert_eq!(app.sandbox.webhooks(HOST).len(), 1);
}

#[tokio::test]
async fn the_pipeline_mapping_is_readable_and_changeable_within_the_account() {
    let app = connected_app().await;
    let v = app.api_json("/api/v1/connections/seller-1/pipeline").await;
    let pipeline_id = v["data"]["pipeline_id"].as_i64().unwrap();
    assert_eq!(v["data"]["statuses"]["completed"], 142);
    assert_eq!(v["data"]["statuses"]["cancelled"], 143);

    let mut statuses = v["data"]["statuses"].clone();
    statuses["paid"] = statuses["shipping"].clone();
    let put = |body: Value| {
        let app = &app;
        async move {
            app.api(
                Method::PUT,
                "/api/v1/connections/seller-1/pipeline",
                Some(&body),
            )
            .await
        }
    };
    let resp = put(json!({"pipeline_id": pipeline_id, "statuses": statuses})).await;
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["data"]["statuses"]["paid"], statuses["shipping"]);

    let mut bad = statuses.clone();
    bad["pending"] = json!(999_999_999);
    let resp = put(json!({"pipeline_id": pipeline_id, "statuses": bad})).await;
    let body = assert_error(resp, 422, "VALIDATION_ERROR").await;
    assert!(body["error"]["details"]["statuses.pending"].is_array());
    let resp = put(json!({"pipeline_id": pipeline_id})).await;
    assert_error(resp, 422, "VALIDATION_ERROR").await;
    let resp = put(json!({"pipeline_id": 123_456_789, "statuses": statuses})).await;
    assert_error(resp, 422, "VALIDATION_ERROR").await;
}

#[tokio::test]
async fn connect_sessions_are_stored_as_hashes_and_need_a_seller() {
    let app = spawn_app().await;
    let resp = app
        .api_post("/api/v1/connect-sessions", &json!({"return_url": "x"}))
        .await;
    let body = assert_error(resp, 422, "VALIDATION_ERROR").await;
    assert!(body["error"]["details"]["seller_id"].is_array());
    let session = create_session(&app, "seller-1", json!({})).await;
    let token = session["token"].as_str().unwrap().to_owned();
    assert!(session["connect_url"].as_str().unwrap().ends_with(&token));
    assert!(chrono::DateTime::parse_from_rfc3339(session["expires_at"].as_str().unwrap()).is_ok());
    let found = app
        .db
        .run(move |c| sessions::find_session_by_hash(c, &token))
        .await
        .unwrap();
    assert!(found.is_none(), "the raw token is not what is stored");
}
