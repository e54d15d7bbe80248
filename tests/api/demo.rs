//! `amocrm-connector demo`: started in-process on free ports in a temporary folder, its printed links work:
//! the connect link through the sandbox's consent page, the dashboard login, the API key.

use std::time::Duration;

use amocrm_connector::demo::{self, DemoOptions};
use serde_json::{Value, json};

use crate::support::{consent, get_following_303, new_browser, open_page, wait_until};

/// A seller's browser: the connect page, the sandbox's consent page, Allow, back to our callback.
async fn click_through_connect(http: &reqwest::Client, connect_url: &str, sandbox: &str) -> String {
    let (popup, _) = open_page(http, connect_url).await;
    let callback = consent(http, sandbox, &popup, "sellerone.amocrm.ru", true).await;
    // The callback redirects to its result page, as a browser follows it.
    let done = get_following_303(http, &callback).await;
    assert_eq!(done.status(), 200, "callback");
    done.text().await.unwrap()
}

/// A GET of `url` with the bearer `key`: the answer's JSON.
async fn get_json(http: &reqwest::Client, url: &str, key: &str) -> Value {
    http.get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A GET of `url`: the answer's text.
async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn the_demo_starts_everything_and_its_printed_links_work() {
    let dir = tempfile::tempdir().unwrap();
    let opts = DemoOptions {
        data_dir: dir.path().join("demo"),
        port: 0,
        sandbox_port: 0,
    };
    let demo = demo::start(opts.clone()).await.expect("demo starts");
    let http = new_browser();

    // The seller connects through the link the demo printed.
    let connect_url = demo.connect_url.clone().expect("a connect link");
    click_through_connect(&http, &connect_url, &demo.sandbox.base_url()).await;
    let conn = get_json(
        &http,
        &format!("{}/api/v1/connections/{}", demo.base_url, demo.seller_id),
        &demo.api_key,
    )
    .await;
    assert_eq!(conn["data"]["status"], "active", "{conn}");
    assert_eq!(conn["data"]["host"], "sellerone.amocrm.ru");

    // The printed admin login works, and the sandbox page is where the banner says.
    let login = http
        .post(format!("{}/api/auth/login", demo.base_url))
        .json(&json!({"email": demo.admin_email, "password": demo.admin_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let board = http
        .get(format!("{}/", demo.sandbox.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(board.status(), 200);
    assert!(
        demo.state.settings.sandbox_page_url.is_some(),
        "the dashboard links the sandbox"
    );
    assert!(
        demo.receiver_url.is_some(),
        "events are delivered to the demo receiver"
    );

    // The printed curl: an order becomes a lead in the seller's pipeline.
    let posted = http
        .post(format!("{}/api/v1/sales/orders", demo.base_url))
        .bearer_auth(&demo.api_key)
        .json(&demo::example_order("DEMO-1001"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202, "{}", posted.text().await.unwrap());
    let order: Value = posted.json().await.unwrap_or_default();
    let order_id = order["data"]["id"].as_str().unwrap_or_default().to_owned();
    let order_url = format!("{}/api/v1/sales/orders/{order_id}", demo.base_url);
    let lead_id = wait_until(Duration::from_secs(60), "the order pushed", || async {
        let o = get_json(&http, &order_url, &demo.api_key).await;
        o["data"]["sync"]["lead_id"]
            .as_u64()
            .ok_or_else(|| format!("never pushed: {o}"))
    })
    .await
    .unwrap();

    // Moving the lead to "paid" on the sandbox page flows back as one payment.completed, delivered signed
    // to the demo receiver and shown in the dashboard.
    let mapping = get_json(
        &http,
        &format!(
            "{}/api/v1/connections/{}/pipeline",
            demo.base_url, demo.seller_id
        ),
        &demo.api_key,
    )
    .await;
    let pipeline = mapping["data"]["pipeline_id"].as_u64().unwrap();
    let paid = mapping["data"]["statuses"]["paid"].as_u64().unwrap();
    demo.sandbox
        .move_lead("sellerone.amocrm.ru", lead_id, pipeline, paid)
        .unwrap();
    let events_url = format!("{}/api/v1/events?event=payment.completed", demo.base_url);
    let events = wait_until(Duration::from_secs(60), "a delivered payment", || async {
        let events = get_json(&http, &events_url, &demo.api_key).await;
        let delivered = demo
            .state
            .db
            .run(|c| {
                use amocrm_connector::storage::schema::event_deliveries as d;
                use diesel::prelude::*;
                Ok(d::table
                    .filter(d::state.eq("delivered"))
                    .count()
                    .get_result::<i64>(c)?)
            })
            .await
            .unwrap();
        let payments = events["data"].as_array().map_or(0, Vec::len);
        if payments == 1 && delivered >= 1 {
            Ok(events)
        } else {
            Err(format!("no delivered payment.completed: {events}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(events["data"][0]["data"]["order_number"], "DEMO-1001");
    let login_page = get_text(&http, &format!("{}/dashboard/login", demo.base_url)).await;
    let signed_in = http
        .post(format!("{}/dashboard/login", demo.base_url))
        .form(&[
            ("email", demo.admin_email),
            ("password", demo.admin_password.as_str()),
            ("csrf", crate::dashboard::csrf_in(&login_page).as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let events_page = get_text(&http, &format!("{}/dashboard/events", demo.base_url)).await;
    assert!(events_page.contains("payment.completed") && events_page.contains("delivered"));
    let orders_page = get_text(&http, &format!("{}/dashboard/orders", demo.base_url)).await;
    assert!(orders_page.contains("DEMO-1001") && orders_page.contains(&lead_id.to_string()));

    // Secrets stay in the demo folder, and a second start reuses them.
    let secrets = std::fs::read_to_string(opts.data_dir.join("demo-secrets.json")).unwrap();
    assert!(secrets.contains(&demo.api_key));
    let (key, password) = (demo.api_key.clone(), demo.admin_password.clone());
    demo.trigger.trigger();
    tokio::time::timeout(Duration::from_secs(15), demo.wait())
        .await
        .expect("stops")
        .expect("stops cleanly");
    let again = demo::start(opts).await.expect("demo starts again");
    assert_eq!(again.api_key, key);
    assert_eq!(again.admin_password, password);
    again.trigger.trigger();
    tokio::time::timeout(Duration::from_secs(15), again.wait())
        .await
        .expect("stops")
        .expect("stops cleanly");
}
