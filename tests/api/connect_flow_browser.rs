//! The traps a new seller meets in the connect flow, in a real browser at phone size (390×844) where a
//! browser matters, and over HTTP where it does not: the chosen language after consent, reload and Back
//! after connecting, popups that are denied or closed, one truthful status card, and old links.

use std::future::Future;
use std::time::Duration;

use amocrm_connector::domain::status::ConnectionStatus;
use fantoccini::{Client, Locator};
use serde_json::json;

use crate::browser::{
    Driver, decide, driver_and_app, element, phone, press, run_steps, step, text_of,
};
use crate::support::{
    HOST, TestApp, connect, consent, create_session, header, open_page, result_location,
    set_connection_status, spawn_app, status_of, through_result, until_callback, wait_until,
};

/// A sandbox account of its own for `seller` (one account connects one seller).
fn fresh_host(app: &TestApp, seller: &str) -> String {
    let tag: String = seller.chars().filter(char::is_ascii_alphanumeric).collect();
    let host = format!("{tag}.amocrm.ru");
    app.sandbox.add_account(&host);
    host
}

/// A seller on a sandbox account of its own ([`fresh_host`]) and the connect link of a session made with
/// `body`: the account's host and the link.
async fn fresh_link(app: &TestApp, seller: &str, body: serde_json::Value) -> (String, String) {
    let host = fresh_host(app, seller);
    let url = connect_url(&create_session(app, seller, body).await);
    (host, url)
}

/// Runs `steps` as [`run_steps`] `name` in a fresh browser at the phone size these traps are met at
/// (390×844).
async fn on_a_phone<F, Fut>(driver: &Driver, name: &str, steps: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    run_steps(name, phone(driver, 390, 844).await, steps).await;
}

/// Per language: `?lang=`, the success title, "connected to", the denial, the closed popup.
const LANGS: [(&str, &str, &str, &str, &str); 3] = [
    (
        "uz",
        "amoCRM ulandi",
        "hisobiga ulangansiz",
        "ruxsat bermadingiz",
        "ulanish tugamasdan yopildi",
    ),
    (
        "ru",
        "amoCRM подключён",
        "Вы подключены к аккаунту",
        "не разрешили доступ",
        "закрыто до завершения подключения",
    ),
    (
        "en",
        "amoCRM is connected",
        "You are connected to",
        "did not allow access",
        "closed before connecting finished",
    ),
];

/// Waits (bounded) until the text of `css` contains `want`.
async fn text_contains(client: &Client, css: &str, want: &str) -> Result<String, String> {
    let found = wait_until(Duration::from_secs(15), css, || async {
        match client.find(Locator::Css(css)).await {
            Ok(el) => match el.text().await {
                Ok(t) if t.contains(want) => Ok(t),
                Ok(t) => Err(format!("{css} says {t:?}, not {want:?}")),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    step(&format!("{css} containing {want:?}"), found)
}

/// The page's `<html lang>`.
async fn html_lang(client: &Client) -> Result<String, String> {
    let el = element(client, "the page", Locator::Css("html")).await?;
    let lang = step("html lang", el.attr("lang").await)?;
    Ok(lang.unwrap_or_default())
}

/// On amoCRM's (the sandbox's) consent page: chooses `host`, presses Allow or Deny.
/// Waits (bounded) for a second window and switches to it; returns the first.
async fn to_popup(client: &Client) -> Result<fantoccini::wd::WindowHandle, String> {
    let opener = step("the connect window", client.window().await)?;
    let popup = wait_until(Duration::from_secs(15), "a popup", || async {
        let windows = step("windows", client.windows().await)?;
        windows
            .into_iter()
            .find(|w| *w != opener)
            .ok_or_else(|| "only the connect window".to_owned())
    })
    .await;
    let popup = step("no consent popup opened", popup)?;
    step("switch to the popup", client.switch_to_window(popup).await)?;
    Ok(opener)
}

/// Waits (bounded) until only one window is left.
async fn popup_gone(client: &Client) -> Result<(), String> {
    let gone = wait_until(Duration::from_secs(20), "one window", || async {
        let windows = step("windows", client.windows().await)?;
        (windows.len() == 1)
            .then_some(())
            .ok_or_else(|| format!("{} windows", windows.len()))
    })
    .await;
    step("the popup did not close", gone)
}

/// Presses the connect page's button (`what`: connect or reconnect), allows or denies in the consent
/// popup and waits for the popup to close; returns the connect window.
async fn through_popup(
    client: &Client,
    what: &str,
    host: &str,
    allow: bool,
) -> Result<fantoccini::wd::WindowHandle, String> {
    let button = element(client, &format!("{what} button"), Locator::Id("connect")).await?;
    press(client, what, button).await?;
    let opener = to_popup(client).await?;
    decide(client, host, allow).await?;
    popup_gone(client).await?;
    Ok(opener)
}

/// Back in the connect window after the popup: `css` on its result says `want`.
async fn back_to_result(
    client: &Client,
    opener: fantoccini::wd::WindowHandle,
    css: &str,
    want: &str,
) -> Result<(), String> {
    step(
        "back to the connect page",
        client.switch_to_window(opener).await,
    )?;
    text_contains(client, css, want).await.map(drop)
}

/// Presses the result's Retry and switches to the consent popup it opens.
async fn retry(client: &Client) -> Result<(), String> {
    let retry = element(client, "retry", Locator::Css("#result-retry:not([hidden])")).await?;
    press(client, "retry", retry).await?;
    to_popup(client).await.map(drop)
}

/// Opens the connect page at `url` and takes its same-window link: the whole flow in one tab, as on a
/// phone.
async fn in_one_tab(client: &Client, url: &str) -> Result<(), String> {
    step("open the connect page", client.goto(url).await)?;
    let link = element(client, "fallback link", Locator::Id("fallback")).await?;
    press(client, "continue here", link).await
}

fn connect_url(session: &serde_json::Value) -> String {
    session["connect_url"].as_str().unwrap().to_owned()
}

// 1. The language chosen with `?lang=` on the connect page is the result page's, whatever the browser
// says (headless chromium asks for English).
#[tokio::test]
async fn the_result_page_speaks_the_language_chosen_on_the_connect_page() {
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    for (i, (lang, title, connected, denied, _)) in LANGS.into_iter().enumerate() {
        for allow in [true, false] {
            let seller = format!("seller-lang-{i}-{allow}");
            let (host, url) = fresh_link(&app, &seller, json!({})).await;
            let name = format!("result_language_{lang}_{allow}");
            on_a_phone(&driver, &name, |client| async move {
                in_one_tab(&client, &format!("{url}?lang={lang}")).await?;
                decide(&client, &host, allow).await?;
                if allow {
                    text_contains(&client, "#title", title).await?;
                    text_contains(&client, "#text", connected).await?;
                    text_contains(&client, "#text", &host).await?;
                } else {
                    text_contains(&client, "#text", denied).await?;
                }
                let seen = html_lang(&client).await?;
                if seen != lang {
                    return Err(format!("the result page is in {seen}, not {lang}"));
                }
                let path = step("url", client.current_url().await)?;
                if !path.path().starts_with("/connect/result/") || path.query().is_some() {
                    return Err(format!("the result URL is not clean: {path}"));
                }
                Ok(())
            })
            .await;
        }
    }
}

// 2. Reload and Back then Allow after connecting show the connection, never "already used".
#[tokio::test]
async fn reload_and_back_after_connecting_show_the_connection_not_already_used() {
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    for (lang, title, connected, _, _) in LANGS {
        let seller = format!("seller-reload-{lang}");
        let (host, url) = fresh_link(&app, &seller, json!({"lang": lang})).await;
        let used = ["already used", "уже использован", "allaqachon ishlatilgan"];
        on_a_phone(
            &driver,
            &format!("reload_back_{lang}"),
            |client| async move {
                in_one_tab(&client, &url).await?;
                decide(&client, &host, true).await?;
                text_contains(&client, "#title", title).await?;
                let first = step("url", client.current_url().await)?;
                step("reload", client.refresh().await)?;
                text_contains(&client, "#title", title).await?;
                text_contains(&client, "#current-host", &host).await?;
                // Back to amoCRM's consent page, and Allow once more.
                step("back", client.back().await)?;
                decide(&client, &host, true).await?;
                text_contains(&client, "#text", connected).await?;
                let body = text_of(&client, "main").await?;
                if used.iter().any(|u| body.contains(u)) {
                    return Err(format!("the page says the request was used: {body}"));
                }
                let again = step("url", client.current_url().await)?;
                if again != first {
                    return Err(format!("{again} is not the first result page {first}"));
                }
                Ok(())
            },
        )
        .await;
        assert_eq!(status_of(&app, &seller).await, ConnectionStatus::Active);
    }
}

// 3. A denial in the popup and a popup closed by the seller are both reported on the connect page, with
// a retry that works.
#[tokio::test]
async fn a_denied_or_closed_popup_is_reported_on_the_connect_page_with_a_retry() {
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    for (lang, title, connected, denied, closed) in LANGS {
        let seller = format!("seller-popup-{lang}");
        let (host, url) = fresh_link(&app, &seller, json!({"lang": lang})).await;
        on_a_phone(
            &driver,
            &format!("popup_outcomes_{lang}"),
            |client| async move {
                step("open the connect page", client.goto(&url).await)?;
                let opener = through_popup(&client, "connect", &host, false).await?;
                let result = "#result:not([hidden]) #result-text";
                back_to_result(&client, opener.clone(), result, denied).await?;
                // Retry, then close the popup without deciding.
                retry(&client).await?;
                element(&client, "consent page", Locator::Id("account")).await?;
                step("close the popup", client.close_window().await)?;
                back_to_result(&client, opener.clone(), result, closed).await?;
                // Retry once more and allow: connected.
                retry(&client).await?;
                decide(&client, &host, true).await?;
                popup_gone(&client).await?;
                back_to_result(&client, opener, "#result-title", title).await?;
                text_contains(&client, "#result-text", connected).await?;
                Ok(())
            },
        )
        .await;
        assert_eq!(status_of(&app, &seller).await, ConnectionStatus::Active);
    }
}

// 4. A reconnect in the popup leaves one status card, naming the account, that agrees with the message.
#[tokio::test]
async fn a_reconnect_leaves_one_truthful_card_naming_the_account() {
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    for (lang, title, _, _, _) in LANGS {
        let seller = format!("seller-re-{lang}");
        let host = fresh_host(&app, &seller);
        assert_eq!(connect(&app, &seller, &host).await.status().as_u16(), 200);
        set_connection_status(&app, &seller, "revoked").await;
        let url = connect_url(&create_session(&app, &seller, json!({"lang": lang})).await);
        let revoked = ["Uzilgan", "Отключён", "Disconnected"];
        let active = ["Faol", "Активен", "Active"];
        on_a_phone(
            &driver,
            &format!("reconnect_card_{lang}"),
            |client| async move {
                step("open the connect page", client.goto(&url).await)?;
                text_contains(&client, "#current-status", revoked[index(lang)]).await?;
                let opener = through_popup(&client, "reconnect", &host, true).await?;
                back_to_result(&client, opener, "#result-title", title).await?;
                text_contains(&client, "#result-text", &host).await?;
                text_contains(&client, "#current-status", active[index(lang)]).await?;
                text_contains(&client, "#current-host", &host).await?;
                let cards = step("cards", client.find_all(Locator::Css("#current")).await)?;
                let body = text_of(&client, "main").await?;
                if cards.len() != 1 || body.contains(revoked[index(lang)]) {
                    return Err(format!("{} cards; the page says {body}", cards.len()));
                }
                Ok(())
            },
        )
        .await;
    }
}

fn index(lang: &str) -> usize {
    LANGS.iter().position(|l| l.0 == lang).unwrap()
}

// 5. A connected seller's old link shows the connection (and opens no consent).
#[tokio::test]
async fn an_old_link_of_a_connected_seller_shows_the_connection() {
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    for (lang, _, connected, _, _) in LANGS {
        let seller = format!("seller-old-{lang}");
        let (host, url) = fresh_link(&app, &seller, json!({"lang": lang})).await;
        let (popup, _) = open_page(&app.http, &url).await;
        let callback = consent(&app.http, &app.sandbox.base_url(), &popup, &host, true).await;
        assert_eq!(through_result(&app, &callback).await.status().as_u16(), 200);
        on_a_phone(&driver, &format!("old_link_{lang}"), |client| async move {
            step("open the old link", client.goto(&url).await)?;
            text_contains(&client, "#text", connected).await?;
            text_contains(&client, "#text", &host).await?;
            text_contains(&client, "#current-host", &host).await?;
            if client.find(Locator::Id("connect")).await.is_ok() {
                return Err("the old link offers a new consent".into());
            }
            Ok(())
        })
        .await;
    }
}

// Over HTTP: the language travels with the state, not the callback URL; the result answers a reload the
// same way; an old link of a connected seller is still 410 and opens no consent.
#[tokio::test]
async fn over_http_the_state_carries_the_language_and_the_result_page_is_stable() {
    let app = spawn_app().await;
    let session = create_session(&app, "seller-h", json!({})).await;
    let url = connect_url(&session);
    let (popup, _) = open_page(&app.http, &format!("{url}?lang=ru")).await;
    let callback = consent(&app.http, &app.sandbox.base_url(), &popup, HOST, true).await;
    // A `lang` slipped into the callback URL is not trusted.
    let done = app.browse(&format!("{callback}&lang=en")).await;
    let result = result_location(&done).expect("a redirect to the result page");
    assert_eq!(done.headers()["cache-control"], "no-store");
    for _ in 0..2 {
        let resp = app
            .http
            .get(app.url(&result))
            .header("Accept-Language", "en")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        let csp = header(&resp, "content-security-policy");
        assert!(
            csp.contains("script-src 'nonce-") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        let html = resp.text().await.unwrap();
        assert!(html.contains("lang=\"ru\""), "{html}");
        assert!(
            html.contains("Вы подключены к аккаунту sellerone.amocrm.ru"),
            "{html}"
        );
        // No inline script: every script tag loads a file.
        let tags: Vec<&str> = html
            .split("<script")
            .skip(1)
            .map(|t| t.split('>').next().unwrap_or(""))
            .collect();
        assert!(!tags.is_empty(), "the page loads its script");
        assert!(tags.iter().all(|t| t.contains(" src=")), "{tags:?}");
    }
    // Another browser cannot read the result.
    let stranger = reqwest::Client::new();
    assert_eq!(
        stranger
            .get(app.url(&result))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    // The old link: 410, the connection named in the language the seller chose (its cookie), no consent
    // offered.
    let resp = app.browse(&url).await;
    assert_eq!(resp.status().as_u16(), 410);
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("Вы подключены к аккаунту sellerone.amocrm.ru"),
        "{html}"
    );
    assert!(!html.contains("data-popup"), "{html}");
    // The seller script is a file.
    let js = app.get("/connect/assets/seller.js").await;
    assert_eq!(js.status().as_u16(), 200);
    assert!(header(&js, "content-type").contains("javascript"));
    // A denial's result page answers 400 on every view, with a retry.
    let callback = until_callback(&app, "seller-d", HOST, false).await;
    for _ in 0..2 {
        let resp = through_result(&app, &callback).await;
        assert_eq!(resp.status().as_u16(), 400);
        assert!(resp.text().await.unwrap().contains("id=\"retry\""));
    }
}
