//! Accessibility: the seller pages (in uz, ru and en, at phone size) and the dashboard, checked with axe-core
//! in a real browser. A serious or critical violation fails the test with the rule, its help text and where.
//! axe-core comes from the npm registry (`npm ci` in ci/a11y; `.ci/run` does it).

use std::path::PathBuf;

use fantoccini::Client;
use serde_json::json;

use crate::browser::{
    browser, dashboard_sign_in, driver_and_app, driver_and_operator, run_steps, script, step,
};
use crate::support::{connect_seller, create_session};

/// axe-core's browser bundle, or `None` (with a note) outside CI when it was not installed.
fn axe_source() -> Option<String> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/a11y/node_modules/axe-core/axe.min.js");
    match std::fs::read_to_string(&path) {
        Ok(s) => Some(s),
        Err(e) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install axe-core (npm ci in ci/a11y): {}: {e}",
                path.display()
            );
            eprintln!("accessibility test not run: axe-core is not installed (npm ci in ci/a11y)");
            None
        }
    }
}

/// Runs axe on the page the browser shows and returns its serious and critical violations, each as
/// "rule (impact): help — where".
async fn serious_violations(client: &Client, axe: &str) -> Result<Vec<String>, String> {
    script(client, "inject axe-core", axe).await?;
    let found = step(
        "run axe",
        client
            .execute_async(
                "const done = arguments[arguments.length - 1];
                 axe.run(document, {resultTypes: ['violations']})
                   .then(r => done(r.violations.map(v => ({
                     id: v.id, impact: v.impact, help: v.help,
                     where: v.nodes.slice(0, 3).map(n => n.target.join(' '))
                   }))))
                   .catch(e => done({error: String(e)}));",
                vec![],
            )
            .await,
    )?;
    if let Some(e) = found.get("error") {
        return Err(format!("axe failed: {e}"));
    }
    Ok(found
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .map(|v| {
            format!(
                "{} ({}): {} — {}",
                v["id"].as_str().unwrap_or("?"),
                v["impact"].as_str().unwrap_or("?"),
                v["help"].as_str().unwrap_or(""),
                v["where"]
            )
        })
        .collect())
}

/// Opens each (name, url) and collects what axe finds there.
async fn check_pages(client: &Client, axe: &str, pages: &[(String, String)]) -> Result<(), String> {
    let mut problems = Vec::new();
    for (name, url) in pages {
        step(&format!("open {name}"), client.goto(url).await)?;
        for v in serious_violations(client, axe).await? {
            problems.push(format!("{name}: {v}"));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "serious accessibility violations:\n{}",
            problems.join("\n")
        ))
    }
}

#[tokio::test]
async fn the_seller_pages_have_no_serious_accessibility_violations_in_three_languages() {
    let Some(axe) = axe_source() else { return };
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    connect_seller(&app, "seller-a11y", "sellerone.amocrm.ru").await;
    let mut pages = Vec::new();
    for lang in ["uz", "ru", "en"] {
        let connect =
            create_session(&app, &format!("seller-new-{lang}"), json!({"lang": lang})).await;
        pages.push((
            format!("connect page ({lang})"),
            connect["connect_url"].as_str().unwrap().to_owned(),
        ));
        let reconnect = create_session(&app, "seller-a11y", json!({"lang": lang})).await;
        pages.push((
            format!("connect page of a connected seller ({lang})"),
            reconnect["connect_url"].as_str().unwrap().to_owned(),
        ));
        let settings =
            crate::settings::settings_session(&app, "seller-a11y", json!({"lang": lang})).await;
        pages.push((
            format!("settings page ({lang})"),
            settings["settings_url"].as_str().unwrap().to_owned(),
        ));
        pages.push((
            format!("unknown connect link ({lang})"),
            app.url(&format!("/connect/no-such-link?lang={lang}")),
        ));
    }
    // A phone-sized window: 390×844 CSS pixels.
    let client = browser(&driver, 390, 844).await;
    run_steps("a11y_seller", client, |client| async move {
        check_pages(&client, &axe, &pages).await
    })
    .await;
}

#[tokio::test]
async fn the_dashboard_has_no_serious_accessibility_violations() {
    let Some(axe) = axe_source() else { return };
    let password = "accessibility test password";
    let Some((driver, app)) = driver_and_operator("a11y@example.com", password).await else {
        return;
    };
    connect_seller(&app, "seller-a11y", "sellerone.amocrm.ru").await;
    crate::dashboard::seed_failed_connection(&app, "seller-broken").await;
    let pages: Vec<(String, String)> = [
        "/",
        "/no-such-page",
        "/dashboard",
        "/dashboard/connections",
        "/dashboard/connections/seller-a11y",
        "/dashboard/connections/seller-a11y/settings",
        "/dashboard/orders",
        "/dashboard/events",
        "/dashboard/events?failed=1",
    ]
    .iter()
    .map(|p| ((*p).to_owned(), app.url(p)))
    .collect();
    let login = app.url("/dashboard/login");
    let client = browser(&driver, 1280, 900).await;
    let app_ref = &app;
    run_steps("a11y_dashboard", client, |client| async move {
        step("open the sign-in page", client.goto(&login).await)?;
        let at_login: Vec<String> = serious_violations(&client, &axe).await?;
        if !at_login.is_empty() {
            return Err(format!("sign-in page: {}", at_login.join("\n")));
        }
        dashboard_sign_in(&client, app_ref, "a11y@example.com", password).await?;
        check_pages(&client, &axe, &pages).await
    })
    .await;
}

#[tokio::test]
async fn the_api_reference_has_no_serious_accessibility_violations() {
    let Some(axe) = axe_source() else { return };
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    let docs = app.url("/api/v1/docs");
    let client = browser(&driver, 1280, 900).await;
    run_steps("a11y_api_reference", client, |client| async move {
        step("open the reference", client.goto(&docs).await)?;
        // Redoc draws after loading the document: check what it drew.
        crate::browser::element(
            &client,
            "the drawn reference",
            fantoccini::Locator::Css("#redoc .api-content"),
        )
        .await?;
        let found = serious_violations(&client, &axe).await?;
        if found.is_empty() {
            Ok(())
        } else {
            Err(format!("API reference: {}", found.join("\n")))
        }
    })
    .await;
}
