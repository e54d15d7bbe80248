//! Pictures of the main pages, desktop and phone, taken by a real browser from a running service with a
//! connected seller, a pushed order and an event. They land in `target/screenshots/`; with
//! `UPDATE_SCREENSHOTS=1` also in `docs/screenshots/`, which the README shows. Each page is checked to
//! have drawn (its heading is there) before it is taken.

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, Locator};
use serde_json::{Value, json};

use crate::browser::{
    admin_operator, browser, connect_in_this_window, dashboard_sign_in, element, phone, run_steps,
    start_driver, step,
};
use crate::support::{
    Queue, TestApp, connect_seller, create_session, order_pushed, spawn_app, wait_until,
};

fn places() -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("target/screenshots")];
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        dirs.push(root.join("docs/screenshots"));
    }
    dirs
}

/// Opens `url`, waits for `ready` (a CSS selector), and saves a screenshot named `name`.
async fn shoot(client: &Client, name: &str, url: &str, ready: &str) -> Result<(), String> {
    step(&format!("open {url}"), client.goto(url).await)?;
    element(client, &format!("{name}: {ready}"), Locator::Css(ready)).await?;
    // Stylesheets, fonts and the page script have run before the picture is taken.
    step(
        "document complete",
        wait_until(Duration::from_secs(15), "document complete", || async {
            client
                .execute("return document.readyState", vec![])
                .await
                .is_ok_and(|v| v == json!("complete"))
        })
        .await,
    )?;
    let png = step("screenshot", client.screenshot().await)?;
    for dir in places() {
        step("screenshot dir", std::fs::create_dir_all(&dir))?;
        step(
            "write screenshot",
            std::fs::write(dir.join(format!("{name}.png")), &png),
        )?;
    }
    Ok(())
}

async fn seeded() -> (TestApp, String, Value) {
    let app = spawn_app().await;
    app.leaves_queued(
        Queue::Inbox,
        "amoCRM's webhook about the pushed lead: the pictures do not need it processed",
    );
    admin_operator(&app, "support@example.com", "screenshots password").await;
    connect_seller(&app, "seller-shop", "sellerone.amocrm.ru").await;
    let order_id = order_pushed(&app, "seller-shop", "10452").await;
    let session = create_session(&app, "seller-new", json!({"lang": "uz"})).await;
    (app, order_id, session)
}

#[tokio::test]
async fn screenshots_of_the_main_pages_on_desktop_and_phone() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let (app, order_id, session) = seeded().await;
    let connect_url = session["connect_url"].as_str().unwrap().to_owned();
    let settings =
        crate::settings::settings_session(&app, "seller-shop", json!({"lang": "ru"})).await;
    let settings_url = settings["settings_url"].as_str().unwrap().to_owned();
    // A settings link belongs to the browser that opens it first: the phone gets its own.
    let settings =
        crate::settings::settings_session(&app, "seller-shop", json!({"lang": "en"})).await;
    let phone_settings_url = settings["settings_url"].as_str().unwrap().to_owned();
    let app = &app;

    let desktop = browser(&driver, 1280, 860).await;
    let (c, s, o) = (&connect_url, &settings_url, &order_id);
    run_steps("screenshots_desktop", desktop, |client| async move {
        shoot(&client, "seller-connect-desktop", c, "#connect").await?;
        shoot(&client, "seller-settings-desktop", s, "form").await?;
        shoot(
            &client,
            "api-reference-desktop",
            &app.url("/api/v1/docs"),
            "h1, h2",
        )
        .await?;
        dashboard_sign_in(&client, app, "support@example.com", "screenshots password").await?;
        for (name, path, ready) in [
            ("dashboard-overview", "/dashboard".to_owned(), "main h1"),
            (
                "dashboard-connections",
                "/dashboard/connections".to_owned(),
                "table",
            ),
            (
                "dashboard-order",
                format!("/dashboard/orders/{o}"),
                "#lead-link",
            ),
            ("dashboard-events", "/dashboard/events".to_owned(), "table"),
        ] {
            shoot(&client, name, &app.url(&path), ready).await?;
        }
        Ok(())
    })
    .await;

    let handset = phone(&driver, 390, 844).await;
    let s = &phone_settings_url;
    run_steps("screenshots_phone", handset, |client| async move {
        shoot(&client, "seller-connect-phone", c, "#connect").await?;
        // The seller goes through with it: the page that says how it went.
        connect_in_this_window(&client, "sellertwo.amocrm.ru").await?;
        let here = step(
            "back from amoCRM",
            wait_until(Duration::from_secs(20), "the result page", || async {
                let url = step("url", client.current_url().await)?;
                (url.as_str().starts_with(&app.url("/connect/result/")))
                    .then_some(url.clone())
                    .ok_or_else(|| format!("at {url}"))
            })
            .await,
        )?;
        shoot(&client, "seller-connected-phone", here.as_str(), "h1").await?;
        shoot(&client, "seller-settings-phone", s, "form").await?;
        dashboard_sign_in(&client, app, "support@example.com", "screenshots password").await?;
        shoot(
            &client,
            "dashboard-order-phone",
            &app.url(&format!("/dashboard/orders/{o}")),
            "#lead-link",
        )
        .await?;
        Ok(())
    })
    .await;
}
