//! The marketplace API conventions: Bearer auth, the error body, the version header, rate limits, 404s.

use amocrm_connector::services::api_keys::Tier;

use reqwest::Method;

use crate::support::{TestApp, assert_error, header, spawn_app};

/// The id of the test's API key (the first one made).
async fn first_key_id(app: &TestApp) -> i64 {
    let rows = app
        .db
        .run(amocrm_connector::storage::api_keys::list)
        .await
        .unwrap();
    rows[0].id
}

#[tokio::test]
async fn api_requests_without_a_token_are_401_in_the_contract_format() {
    let app = spawn_app().await;
    let resp = app.get("/api/v1/connections").await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
}

#[tokio::test]
async fn a_wrong_or_revoked_api_key_is_401() {
    let app = spawn_app().await;
    let resp = app
        .get_as("/api/v1/connections", "amc_not-a-real-key")
        .await;
    assert_error(resp, 401, "INVALID_TOKEN").await;

    let id = first_key_id(&app).await;
    app.db
        .run(move |c| amocrm_connector::storage::api_keys::revoke(c, id))
        .await
        .unwrap();
    let resp = app.api_get("/api/v1/no-such-route").await;
    assert_error(resp, 401, "INVALID_TOKEN").await;
}

#[tokio::test]
async fn an_unsupported_api_version_is_400_and_v1_is_accepted() {
    let app = spawn_app().await;
    let with_version = |version: &'static str| {
        app.http
            .get(app.url("/api/v1/no-such-route"))
            .bearer_auth(&app.api_key)
            .header("X-API-Version", version)
            .send()
    };
    let resp = with_version("v2").await.unwrap();
    assert_error(resp, 400, "INVALID_API_VERSION").await;
    let resp = with_version("v1").await.unwrap();
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
}

#[tokio::test]
async fn a_method_a_route_does_not_answer_is_405_with_allow_on_every_route() {
    let app = spawn_app().await;
    for (method, path, want) in [
        (Method::DELETE, "/api/v1/sales/orders", ["GET", "POST"]),
        (
            Method::POST,
            "/api/v1/connections/seller-1/settings",
            ["GET", "PUT"],
        ),
    ] {
        let r = app.api(method.clone(), path, None).await;
        let allowed = header(&r, "allow");
        assert!(
            want.iter().all(|w| allowed.contains(w)),
            "{method} {path}: {allowed}"
        );
        assert_error(r, 405, "METHOD_NOT_ALLOWED").await;
    }
    for (method, path, want) in [
        (Method::PUT, "/health", "GET"),
        (Method::GET, "/webhooks/amocrm/some-token", "POST"),
        (Method::DELETE, "/refresh", "GET"),
        (Method::PUT, "/dashboard/login", "POST"),
    ] {
        let r = app.request(method.clone(), path, None, None).await;
        assert_eq!(r.status().as_u16(), 405, "{method} {path}");
        let allowed = header(&r, "allow");
        assert!(allowed.contains(want), "{method} {path}: {allowed}");
    }
    // A path no route has is still 404.
    let r = app.api(Method::DELETE, "/api/v1/no-such-thing", None).await;
    assert_error(r, 404, "RESOURCE_NOT_FOUND").await;
}

#[tokio::test]
async fn unknown_api_routes_are_404_in_the_contract_format() {
    let app = spawn_app().await;
    let resp = app.api_get("/api/v1/nothing/here").await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
    let resp = app.get("/api/v2/anything").await;
    assert_error(resp, 404, "RESOURCE_NOT_FOUND").await;
}

#[tokio::test]
async fn responses_carry_rate_limit_headers_for_limited_tiers() {
    let app = spawn_app().await;
    let resp = app.api_get("/api/v1/no-such-route").await;
    assert_eq!(resp.headers()["x-ratelimit-limit"], "1000");
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "999");
    let reset: i64 = header(&resp, "x-ratelimit-reset").parse().unwrap();
    let now = chrono::Utc::now().timestamp();
    assert!(reset > now && reset <= now + 3600);
    let resp = app.api_get("/api/v1/no-such-route").await;
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "998");

    let premium = app.api_key_with_tier(Tier::Premium).await;
    let resp = app.get_as("/api/v1/x", &premium).await;
    assert_eq!(resp.headers()["x-ratelimit-limit"], "5000");

    let enterprise = app.api_key_with_tier(Tier::Enterprise).await;
    let resp = app.get_as("/api/v1/x", &enterprise).await;
    assert!(
        resp.headers().get("x-ratelimit-limit").is_none(),
        "enterprise is unlimited"
    );
}

#[tokio::test]
async fn a_key_over_its_hourly_budget_gets_429_with_retry_after() {
    let app = spawn_app().await;
    // Use up the standard budget directly in the usage table (1000 requests would only slow the test).
    let id = first_key_id(&app).await;
    let window = {
        use chrono::{DurationRound, TimeDelta};
        chrono::Utc::now()
            .duration_trunc(TimeDelta::hours(1))
            .unwrap()
            .naive_utc()
    };
    app.sql(move |c| {
        use amocrm_connector::storage::schema::api_key_usage as u;
        use diesel::prelude::*;
        diesel::insert_into(u::table)
            .values((
                u::key_id.eq(id),
                u::window_start.eq(window),
                u::request_count.eq(1000i64),
            ))
            .execute(c)
    })
    .await;
    let resp = app.api_get("/api/v1/no-such-route").await;
    let retry: u64 = header(&resp, "retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry));
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    assert_error(resp, 429, "RATE_LIMIT_EXCEEDED").await;
}

#[tokio::test]
async fn non_api_paths_that_match_nothing_are_404_pages_with_the_ways_in() {
    let app = spawn_app().await;
    let resp = app.get("/nothing").await;
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.headers().get("x-request-id").is_some());
    assert!(header(&resp, "content-type").starts_with("text/html"));
    let body = resp.text().await.unwrap();
    assert!(body.contains("Page not found"), "{body}");
    for link in ["/api/v1/docs", "/dashboard", "/health"] {
        assert!(
            body.contains(&format!("href=\"{link}\"")),
            "{link} in {body}"
        );
    }
}

#[tokio::test]
async fn the_root_is_a_landing_page_whose_links_all_answer() {
    let app = spawn_app().await;
    let resp = app.get("/").await;
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.unwrap();
    let links: Vec<&str> = body
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(links, ["/api/v1/docs", "/dashboard", "/health"], "{body}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for link in links {
        let status = http
            .get(app.url(link))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        // The dashboard sends a visitor who has not signed in to its sign-in page.
        assert!(matches!(status, 200 | 303), "{link} answered {status}");
    }
}

/// Every operation of the served document as (method, path with sample values for its parameters).
async fn operations(app: &TestApp) -> Vec<(Method, String)> {
    app.document_operations()
        .await
        .into_iter()
        .filter_map(|(method, path, _)| {
            let concrete = path
                .replace("{seller_id}", "seller-1")
                .replace("{id}", "x1")
                .replace("{webhook_token}", "t");
            Some((
                Method::from_bytes(method.to_uppercase().as_bytes()).ok()?,
                concrete,
            ))
        })
        .collect()
}

#[tokio::test]
async fn a_read_key_may_only_read_and_an_orders_key_only_send_orders_on_every_route() {
    use amocrm_connector::services::api_keys::{Scope, create_scoped};
    let app = spawn_app().await;
    let key = |scope| {
        let db = app.db.clone();
        async move {
            create_scoped(&db, "scoped", Tier::Enterprise, scope)
                .await
                .expect("key")
                .1
        }
    };
    let (read, orders) = (key(Scope::Read).await, key(Scope::Orders).await);
    let ops = operations(&app).await;
    assert!(ops.len() >= 20, "{ops:?}");
    let mut writes = 0;
    for (method, path) in ops.iter().filter(|(_, p)| p.starts_with("/api/v1/")) {
        let body = serde_json::json!({});
        let as_read = app
            .request(method.clone(), path, Some(&read), Some(&body))
            .await;
        let as_orders = app
            .request(method.clone(), path, Some(&orders), Some(&body))
            .await;
        let orders_route = path.starts_with("/api/v1/sales/orders")
            || path.starts_with("/api/v1/connect-sessions");
        if method == Method::GET {
            assert_ne!(as_read.status().as_u16(), 403, "read key: {method} {path}");
        } else {
            writes += 1;
            assert_error(as_read, 403, "INSUFFICIENT_PERMISSION").await;
        }
        if orders_route {
            assert_ne!(
                as_orders.status().as_u16(),
                403,
                "orders key: {method} {path}"
            );
        } else {
            assert_error(as_orders, 403, "INSUFFICIENT_PERMISSION").await;
        }
    }
    assert!(writes >= 10, "the walk reached the write routes ({writes})");
    crate::support::connect_seller(&app, "seller-1", crate::support::HOST).await;
    app.leaves_queued(
        crate::support::Queue::Push,
        "only the scope's answer is under test, not the push",
    );
    let resp = app
        .request(
            Method::POST,
            "/api/v1/sales/orders",
            Some(&orders),
            Some(&crate::support::order_body("seller-1", "SCOPE-1")),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 202, "an orders key sends orders");
}
