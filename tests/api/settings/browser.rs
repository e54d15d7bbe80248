//! The settings page in a real browser at phone size, in each language: another pipeline and round-robin
//! users are chosen and saved, and the next order follows them. Skips (with a note) where chromium is not
//! installed, like the other browser tests.

use std::collections::HashSet;

use fantoccini::Locator;
use serde_json::{Value, json};

use super::{connected, push_orders, settings_session, spawn};
use crate::browser::{
    browser, element, fits_the_screen, press, run_steps, script, start_driver, step, text_of,
};

/// Whether the element `css` is ticked.
async fn is_checked(client: &fantoccini::Client, css: &str) -> Result<bool, String> {
    let el = element(client, css, Locator::Css(css)).await?;
    let checked = step(&format!("checked of {css}"), el.prop("checked").await)?;
    Ok(checked.as_deref() == Some("true"))
}

#[tokio::test]
async fn a_seller_chooses_a_pipeline_and_round_robin_users_on_a_phone_in_three_languages() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let app = spawn().await;
    let a = connected(&app, "seller-1").await;
    let (main, users, our_paid) = (a.main_pipeline, a.users, a.seller.stages["paid"]);
    for (lang, title) in [
        ("uz", "qanday tushadi"),
        ("ru", "Как заказы попадают в amoCRM"),
        ("en", "How orders arrive in amoCRM"),
    ] {
        let session = settings_session(&app, "seller-1", json!({"lang": lang})).await;
        let url = session["settings_url"].as_str().unwrap().to_owned();
        // A phone-sized window: 390×844 CSS pixels.
        let client = browser(&driver, 390, 844).await;
        run_steps(&format!("settings_{lang}"), client, |client| async move {
            step("open the settings page", client.goto(&url).await)?;
            let heading = text_of(&client, "main h1").await?;
            if !heading.contains(title) {
                return Err(format!("{lang}: heading {heading:?}"));
            }
            let html_lang = script(
                &client,
                "page language",
                "return document.documentElement.lang",
            )
            .await?;
            if html_lang != json!(lang) {
                return Err(format!("page language {html_lang}"));
            }
            let pipeline = element(&client, "pipeline", Locator::Id("pipeline_id")).await?;
            step(
                "choose the main pipeline",
                pipeline.select_by_value(&main.to_string()).await,
            )?;
            // The page script shows only the chosen pipeline's stages and picks them.
            let paid = script(
                &client,
                "paid stage",
                "return document.getElementById('stage_paid').value",
            )
            .await?;
            if paid == Value::String(our_paid.to_string()) {
                return Err("the paid stage still names our pipeline's stage".into());
            }
            let round_robin =
                element(&client, "round robin", Locator::Id("mode-round_robin")).await?;
            press(&client, "choose round robin", round_robin).await?;
            for u in users {
                let css = format!("#user-{u}");
                if !is_checked(&client, &css).await? {
                    let tick = element(&client, "user", Locator::Css(&css)).await?;
                    press(&client, "tick the user", tick).await?;
                }
            }
            fits_the_screen(&client).await?;
            let save = element(&client, "save", Locator::Id("save")).await?;
            press(&client, "save", save).await?;
            element(&client, "the saved message", Locator::Id("saved")).await?;
            Ok(())
        })
        .await;
    }
    let stored = app.api_json("/api/v1/connections/seller-1/settings").await;
    assert_eq!(stored["data"]["pipeline"]["pipeline_id"], main);
    assert_eq!(stored["data"]["responsible"]["mode"], "round_robin");

    let leads = push_orders(&app, &a.seller, &["B-1", "B-2"]).await;
    assert_eq!(leads.len(), 2, "{leads:?}");
    assert!(leads.iter().all(|l| l.pipeline_id == main));
    let responsible: HashSet<u64> = leads.iter().map(|l| l.responsible_user_id).collect();
    assert_eq!(responsible, HashSet::from(users));
}
