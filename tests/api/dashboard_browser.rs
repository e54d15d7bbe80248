//! Support work in the dashboard, in a real browser: finding an order and following its lead into amoCRM,
//! and getting a broken seller reconnected with a link made on the connection's page.

use std::future::Future;
use std::time::Duration;

use amocrm_connector::storage::schema::amocrm_connections;
use amocrm_connector::workers::webhook_processor;
use diesel::prelude::*;
use fantoccini::{Client, Locator};

use crate::browser::{
    Driver, browser, connect_in_this_window, dashboard_sign_in, driver_and_operator, element,
    press, run_steps, step, text_of, until_url,
};
use crate::support::{TestApp, connect_seller, order_pushed, wait_until};

/// The operator both tests sign in as.
const OPERATOR: &str = "support@example.com";

/// Runs `steps` as [`run_steps`] `name` in a desktop browser signed in to the dashboard as [`OPERATOR`].
async fn signed_in<F, Fut>(driver: &Driver, app: &TestApp, password: &str, name: &str, steps: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let client = browser(driver, 1280, 900).await;
    run_steps(name, client, |client| async move {
        dashboard_sign_in(&client, app, OPERATOR, password).await?;
        steps(client).await
    })
    .await;
}

async fn process_webhooks(app: &TestApp) {
    app.sandbox.webhooks_idle().await;
    for _ in 0..100 {
        let r = webhook_processor::run_once(&app.state).await.unwrap();
        if r.claimed == 0 {
            return;
        }
    }
}

#[tokio::test]
async fn an_operator_finds_an_order_sees_it_paid_and_follows_its_lead_link_into_amocrm() {
    let password = "order detail password";
    let Some((driver, app)) = driver_and_operator(OPERATOR, password).await else {
        return;
    };
    let seller = connect_seller(&app, "seller-od", "sellerone.amocrm.ru").await;
    let order_id = order_pushed(&app, "seller-od", "7781").await;
    let lead = app
        .api_json(&format!("/api/v1/sales/orders/{order_id}"))
        .await["data"]["sync"]["lead_id"]
        .as_u64()
        .expect("the order became a lead");
    // The manager takes the payment in amoCRM: the lead moves to the paid stage.
    seller.move_to(&app, lead, "paid");
    process_webhooks(&app).await;

    let app_ref = &app;
    signed_in(
        &driver,
        app_ref,
        password,
        "order_detail_lead_link",
        |client| async move {
            step(
                "open orders",
                client.goto(&app_ref.url("/dashboard/orders")).await,
            )?;
            let search = element(&client, "search field", Locator::Id("q")).await?;
            step("type the order number", search.send_keys("7781").await)?;
            let go = element(&client, "search button", Locator::Css("form.search button")).await?;
            press(&client, "search", go).await?;
            // The list before the search shows the order too: its link is taken from the results page.
            until_url(&client, "the search results", "q=7781").await?;
            let link = element(
                &client,
                "the order's link",
                Locator::Css(&format!("#order-{order_id} a")),
            )
            .await?;
            press(&client, "open the order", link).await?;
            let heading = text_of(&client, "main h1").await?;
            if !heading.contains("#7781") {
                return Err(format!("order page heading {heading:?}"));
            }
            let cell = text_of(&client, "#lead").await?;
            if !(cell.contains("paid") && cell.contains(&format!("lead {lead}"))) {
                return Err(format!("the lead cell does not show it paid: {cell:?}"));
            }
            let items = text_of(&client, "main").await?;
            if !(items.contains("Choynak") && items.contains("Ali Valiyev")) {
                return Err("the items or the buyer are missing".into());
            }
            let a = element(&client, "lead link", Locator::Id("lead-link")).await?;
            let href =
                step("lead link href", a.attr("href").await)?.ok_or("the lead link has no href")?;
            step("follow the lead link", client.goto(&href).await)?;
            let shown = text_of(&client, "#lead-id").await?;
            if shown != format!("#{lead}") {
                return Err(format!("amoCRM shows lead {shown:?}, expected #{lead}"));
            }
            let stage = text_of(&client, "#lead-stage").await?;
            if stage.is_empty() {
                return Err("amoCRM shows no stage".into());
            }
            Ok(())
        },
    )
    .await;
}

#[tokio::test]
async fn support_makes_a_reconnect_link_for_a_refresh_failed_seller_who_reconnects_with_it() {
    let password = "reconnect link password";
    let Some((driver, app)) = driver_and_operator(OPERATOR, password).await else {
        return;
    };
    connect_seller(&app, "seller-rc", "sellerone.amocrm.ru").await;
    // amoCRM stopped taking the refresh token: the connection is broken and holds no tokens.
    app.update(
        amocrm_connections::table.filter(amocrm_connections::seller_id.eq("seller-rc")),
        (
            amocrm_connections::status.eq("refresh_failed"),
            amocrm_connections::access_token_enc.eq(None::<Vec<u8>>),
            amocrm_connections::refresh_token_enc.eq(None::<Vec<u8>>),
            amocrm_connections::last_error.eq(Some("amoCRM refused the refresh token")),
        ),
    )
    .await;

    let app_ref = &app;
    signed_in(
        &driver,
        app_ref,
        password,
        "reconnect_link",
        |client| async move {
            step(
                "open the connection",
                client
                    .goto(&app_ref.url("/dashboard/connections/seller-rc"))
                    .await,
            )?;
            let make = element(
                &client,
                "reconnect link button",
                Locator::XPath("//button[normalize-space()='Make a reconnect link']"),
            )
            .await?;
            press(&client, "make the link", make).await?;
            let field = element(&client, "the link", Locator::Id("connect-link")).await?;
            let link = step("the link's text", field.prop("value").await)?
                .ok_or("the link field is empty")?;
            if !link.contains("/connect/") {
                return Err(format!("not a connect link: {link:?}"));
            }
            // The seller opens it, in the same window, and allows access again at amoCRM.
            step("open the link", client.goto(&link).await)?;
            connect_in_this_window(&client, "sellerone.amocrm.ru").await?;
            step(
                "the connection did not come back",
                wait_until(Duration::from_secs(20), "active again", || async {
                    let c = app_ref.api_json("/api/v1/connections/seller-rc").await;
                    (c["data"]["status"] == "active")
                        .then_some(())
                        .ok_or_else(|| format!("status {}", c["data"]["status"]))
                })
                .await,
            )?;
            Ok(())
        },
    )
    .await;
}
