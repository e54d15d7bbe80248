//! Real-browser end-to-end tests: Debian's chromium driven through chromium-driver (WebDriver) from Rust.
//!
//! `.ci/run` installs both packages. On a developer machine without them the tests say so and pass
//! without running, unless `CI` is set, where a missing browser is a failure. Every failing step saves a
//! screenshot and the page source under `target/browser-screenshots/`.

use amocrm_connector::domain::status::ConnectionStatus;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use amocrm_connector::services::operators::{self, Role};
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use secrecy::SecretString;
use serde_json::json;

use crate::support::{TestApp, spawn_app, wait_until};

/// A chromedriver process on a free port, killed on drop.
pub struct Driver {
    child: Child,
    pub url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Starts chromedriver, or `None` (with a note) when it is not installed outside CI.
pub async fn start_driver() -> Option<Driver> {
    let Some(bin) = find(&["chromedriver", "chromium-driver"]) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have chromium and chromium-driver installed (apt-get install -y chromium chromium-driver)"
        );
        eprintln!("browser test not run: chromedriver is not installed");
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let child = Command::new(bin)
        .arg(format!("--port={port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let http = reqwest::Client::new();
    let status = format!("{}/status", driver.url);
    wait_until(Duration::from_secs(20), "chromedriver ready", || async {
        matches!(http.get(&status).send().await, Ok(r) if r.status().is_success())
    })
    .await
    .expect("chromedriver did not become ready");
    Some(driver)
}

/// A headless chromium session of `width`×`height`.
pub async fn browser(driver: &Driver, width: u32, height: u32) -> Client {
    session(driver, width, height, None).await
}

/// A headless chromium session that lays pages out as a phone `width` CSS pixels wide (chromium's device
/// emulation: a plain headless window cannot be narrower than about 500 px).
pub async fn phone(driver: &Driver, width: u32, height: u32) -> Client {
    let metrics = json!({"deviceMetrics": {"width": width, "height": height, "pixelRatio": 2.0}});
    session(driver, width.max(500), height, Some(metrics)).await
}

async fn session(
    driver: &Driver,
    width: u32,
    height: u32,
    emulation: Option<serde_json::Value>,
) -> Client {
    let mut caps = serde_json::Map::new();
    let mut options = json!({
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            format!("--window-size={width},{height}"),
        ],
    });
    if let Some(e) = emulation {
        options["mobileEmulation"] = e;
    }
    if let Some(bin) = find(&["chromium", "chromium-browser"]) {
        options["binary"] = json!(bin);
    }
    caps.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Runs the steps; on failure saves a screenshot and the page source, closes the browser, then fails.
pub async fn run_steps<F, Fut>(name: &str, client: Client, steps: F)
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let result = steps(client.clone()).await;
    if let Err(e) = &result {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/browser-screenshots");
        let _ = std::fs::create_dir_all(&dir);
        if let Ok(png) = client.screenshot().await {
            let _ = std::fs::write(dir.join(format!("{name}.png")), png);
        }
        if let Ok(source) = client.source().await {
            let _ = std::fs::write(dir.join(format!("{name}.html")), source);
        }
        eprintln!("{name} failed: {e}; screenshot in {}", dir.display());
    }
    let _ = client.close().await;
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

/// Turns any error into the step's message.
pub fn step<T, E: std::fmt::Display>(what: &str, r: Result<T, E>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

/// The element `locator` finds, once it is on the page (15 s at most); `what` names it for the error.
pub async fn element(client: &Client, what: &str, locator: Locator<'_>) -> Result<Element, String> {
    step(
        what,
        client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(locator)
            .await,
    )
}

/// Waits (15 s at most) until the page's address contains `part`. After a click that navigates, an element
/// found before the new page is in is the old page's and goes stale.
pub async fn until_url(client: &Client, what: &str, part: &str) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let url = step(what, client.current_url().await)?;
        if url.as_str().contains(part) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{what}: still at {url}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the script `js` (with no arguments) in the page as step `what`: what it returns.
pub async fn script(client: &Client, what: &str, js: &str) -> Result<serde_json::Value, String> {
    step(what, client.execute(js, vec![]).await)
}

/// Clicks `el` as a thumb would: brought to the middle of the screen first, so a sticky
/// bar at the bottom (the settings page's save button) is never what receives the click.
pub async fn press(client: &Client, what: &str, el: Element) -> Result<(), String> {
    step(
        what,
        client
            .execute(
                "arguments[0].scrollIntoView({block: 'center', inline: 'nearest'})",
                vec![serde_json::to_value(&el).map_err(|e| e.to_string())?],
            )
            .await,
    )?;
    step(what, el.click().await)
}

/// Fails when the page is wider than the window: on a phone it would scroll sideways.
pub async fn fits_the_screen(client: &Client) -> Result<(), String> {
    let overflow = script(
        client,
        "page width",
        "return document.documentElement.scrollWidth - window.innerWidth",
    )
    .await?;
    if overflow.as_f64().unwrap_or(f64::MAX) > 0.0 {
        return Err(format!(
            "the page scrolls sideways on a phone by {overflow} px"
        ));
    }
    Ok(())
}

pub async fn text_of(client: &Client, css: &str) -> Result<String, String> {
    let el = element(client, &format!("waiting for {css}"), Locator::Css(css)).await?;
    step(&format!("text of {css}"), el.text().await)
}

/// On the sandbox's consent page: picks the account `host` and allows (or denies) access.
pub async fn decide(client: &Client, host: &str, allow: bool) -> Result<(), String> {
    let account = element(client, "account choice", Locator::Id("account")).await?;
    step("choose the account", account.select_by_value(host).await)?;
    let css = if allow { "button.allow" } else { "button.deny" };
    let button = element(client, css, Locator::Css(css)).await?;
    press(client, css, button).await
}

/// On a seller's connect page: takes the same-window link to amoCRM and allows access to `host`.
pub async fn connect_in_this_window(client: &Client, host: &str) -> Result<(), String> {
    let fallback = element(client, "same-window link", Locator::Id("fallback")).await?;
    press(client, "go to amoCRM", fallback).await?;
    decide(client, host, true).await
}

/// A chromedriver and then a fresh service, or `None` where chromedriver is missing (see [`start_driver`]):
/// the test returns at once and starts no service for nothing.
pub async fn driver_and_app() -> Option<(Driver, TestApp)> {
    let driver = start_driver().await?;
    Some((driver, spawn_app().await))
}

/// [`driver_and_app`] with an admin operator who signs in to the dashboard as `email` with `password`.
pub async fn driver_and_operator(email: &str, password: &str) -> Option<(Driver, TestApp)> {
    let (driver, app) = driver_and_app().await?;
    admin_operator(&app, email, password).await;
    Some((driver, app))
}

/// An admin operator with this e-mail and password.
pub async fn admin_operator(app: &TestApp, email: &str, password: &str) {
    operators::create_or_update(
        &app.db,
        email,
        Some("Browser Operator"),
        Role::Admin,
        SecretString::from(password),
    )
    .await
    .unwrap();
}

/// Signs in through the dashboard's login form, as a person would.
pub async fn dashboard_sign_in(
    client: &Client,
    app: &TestApp,
    email: &str,
    password: &str,
) -> Result<(), String> {
    step(
        "open the dashboard",
        client.goto(&app.url("/dashboard")).await,
    )?;
    let url = step("current url", client.current_url().await)?;
    if !url.path().ends_with("/dashboard/login") {
        return Err(format!("expected the sign-in page, got {url}"));
    }
    let email_field = element(client, "e-mail field", Locator::Id("email")).await?;
    step("type the e-mail", email_field.send_keys(email).await)?;
    let password_field = step("password field", client.find(Locator::Id("password")).await)?;
    step(
        "type the password",
        password_field.send_keys(password).await,
    )?;
    let button = step("sign-in button", client.find(Locator::Id("sign-in")).await)?;
    step("press sign in", button.click().await)?;
    let overview: url::Url = step("dashboard url", app.url("/dashboard").parse())?;
    step(
        "waiting for the dashboard after signing in",
        client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_url(&overview)
            .await,
    )?;
    let heading = text_of(client, "main h1").await?;
    if heading != "Overview" {
        return Err(format!(
            "expected the overview after signing in, got {heading:?}"
        ));
    }
    Ok(())
}

#[tokio::test]
async fn an_operator_signs_in_to_the_dashboard_in_a_real_browser_and_it_fits_a_phone() {
    let password = "browser test password";
    let Some((driver, app)) = driver_and_operator("ops@example.com", password).await else {
        return;
    };
    crate::dashboard::seed_failed_connection(&app, "seller-browser").await;

    // A phone-sized window: 390×844 CSS pixels.
    let client = browser(&driver, 390, 844).await;
    run_steps("dashboard_sign_in", client, |client| async move {
        dashboard_sign_in(&client, &app, "ops@example.com", password).await?;
        step(
            "open connections",
            client.goto(&app.url("/dashboard/connections")).await,
        )?;
        let cell = text_of(&client, "#conn-seller-browser td").await?;
        if !cell.contains("seller-browser") {
            return Err(format!("connection row shows {cell:?}"));
        }
        // The page script ran under the CSP: times carry their UTC value as a title once localized.
        step(
            "localized times",
            client
                .wait()
                .at_most(Duration::from_secs(10))
                .for_element(Locator::Css("time[title]"))
                .await,
        )?;
        // On a phone the table turns into cards: no header row is shown.
        let display = script(
            &client,
            "header display",
            "return getComputedStyle(document.querySelector('table.cards thead')).display",
        )
        .await?;
        if display != json!("none") {
            return Err(format!("table header on a phone is {display}"));
        }
        // Nothing wider than the screen (headless chromium's narrowest window is about 500 px).
        fits_the_screen(&client).await
    })
    .await;
}

#[tokio::test]
async fn a_seller_connects_through_the_sandbox_popup_in_a_real_browser() {
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    let session = crate::support::create_session(&app, "seller-popup", json!({"lang": "en"})).await;
    let connect_url = session["connect_url"].as_str().unwrap().to_owned();
    let client = browser(&driver, 1024, 800).await;
    let app_ref = &app;
    run_steps("connect_popup", client, |client| async move {
        step("open the connect page", client.goto(&connect_url).await)?;
        let opener = step("the connect window", client.window().await)?;
        let button = element(&client, "connect button", Locator::Id("connect")).await?;
        step("press connect", button.click().await)?;
        // amoCRM's consent opens in a popup window.
        let popup = step(
            "no consent popup opened",
            wait_until(Duration::from_secs(15), "a second window", || async {
                let windows = step("windows", client.windows().await)?;
                windows
                    .into_iter()
                    .find(|w| *w != opener)
                    .ok_or_else(|| "only the connect window".to_owned())
            })
            .await,
        )?;
        step("switch to the popup", client.switch_to_window(popup).await)?;
        let account = element(&client, "account choice", Locator::Id("account")).await?;
        step(
            "choose the account",
            account.select_by_value("sellerone.amocrm.ru").await,
        )?;
        let allow = step(
            "allow button",
            client.find(Locator::Css("button.allow")).await,
        )?;
        step("press allow", allow.click().await)?;
        // The popup reports to the connect page and closes itself.
        step(
            "the popup did not close after consent",
            wait_until(Duration::from_secs(20), "one window", || async {
                let windows = step("windows", client.windows().await)?;
                (windows.len() == 1)
                    .then_some(())
                    .ok_or_else(|| format!("{} windows", windows.len()))
            })
            .await,
        )?;
        step(
            "back to the connect page",
            client.switch_to_window(opener).await,
        )?;
        let title = text_of(&client, "#result:not([hidden]) #result-title").await?;
        if title.trim().is_empty() {
            return Err("no success message on the connect page".into());
        }
        let conn = crate::support::connection(app_ref, "seller-popup")
            .await
            .ok_or("no connection stored")?;
        if conn.status != ConnectionStatus::Active || conn.host != "sellerone.amocrm.ru" {
            return Err(format!("connection is {:?} at {}", conn.status, conn.host));
        }
        Ok(())
    })
    .await;
}

/// What `/api/v1/docs` must draw: every path of the document, every operation (by its summary, since a path
/// may have several) and every outgoing event (by name). Also answers the number of operations.
async fn reference_items(app: &TestApp) -> (Vec<String>, usize) {
    let doc: serde_json::Value = app
        .get("/api/v1/openapi.json")
        .await
        .json()
        .await
        .expect("the document");
    let paths = doc["paths"].as_object().expect("paths");
    let mut items: Vec<String> = paths.keys().cloned().collect();
    let mut operations = 0;
    for item in paths.values() {
        for op in item.as_object().expect("path item").values() {
            items.push(op["summary"].as_str().expect("a summary").to_owned());
            operations += 1;
        }
    }
    items.extend(
        doc["webhooks"]
            .as_object()
            .expect("webhooks")
            .keys()
            .cloned(),
    );
    (items, operations)
}

/// Waits (bounded) until the reference page shows every item, and answers what is still missing otherwise.
async fn wait_for_reference(client: &Client, items: &[String]) -> Result<(), String> {
    let items = json!(items);
    step(
        "the reference did not draw every route and event",
        wait_until(Duration::from_secs(30), "every route and event on the page", || async {
            let missing = client
                .execute(
                    "const root = document.getElementById('redoc');
                     const text = root && root.querySelector('.api-content') ? root.textContent : '';
                     return arguments[0].filter(item => !text.includes(item));",
                    vec![items.clone()],
                )
                .await
                .map_err(|e| e.to_string())?;
            match missing.as_array() {
                Some(m) if m.is_empty() => Ok(()),
                _ => Err(format!("not shown yet: {missing}")),
            }
        })
        .await,
    )
}

/// Every URL the page loaded (itself, scripts, the document, anything else), for the offline check.
async fn loaded_urls(client: &Client) -> Result<Vec<String>, String> {
    let urls = script(
        client,
        "resource timing",
        "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name))",
    )
    .await?;
    Ok(urls
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect())
}

/// What the page's Content-Security-Policy refused so far, as "directive blocked-url". Chromium keeps the
/// reports of a page; an inline script added here is refused too and marks the end of them, so the answer
/// is complete without waiting a fixed time.
async fn csp_violations(client: &Client) -> Result<Vec<String>, String> {
    script(client, "observe CSP reports", "window.cspSeen = [];
                 new ReportingObserver(
                   rs => rs.forEach(r => cspSeen.push(r.body.effectiveDirective + ' ' + r.body.blockedURL)),
                   {types: ['csp-violation'], buffered: true}).observe();
                 const probe = document.createElement('script');
                 probe.textContent = '0';
                 document.head.appendChild(probe);").await?;
    let seen = step(
        "CSP reports",
        wait_until(
            Duration::from_secs(10),
            "the probe's CSP report",
            || async {
                let seen = client
                    .execute("return window.cspSeen", vec![])
                    .await
                    .map_err(|e| e.to_string())?;
                let seen: Vec<String> = seen
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect();
                if seen.iter().any(|v| v.ends_with(" inline")) {
                    Ok(seen)
                } else {
                    Err(format!("so far: {seen:?}"))
                }
            },
        )
        .await,
    )?;
    Ok(seen
        .into_iter()
        .filter(|v| !v.ends_with(" inline"))
        .collect())
}

#[tokio::test]
async fn the_api_reference_draws_every_route_and_event_offline_and_fits_a_phone() {
    let Some((driver, app)) = driver_and_app().await else {
        return;
    };
    let (items, operations) = reference_items(&app).await;
    assert!(operations >= 25, "{items:?}");
    let docs = app.url("/api/v1/docs");

    let client = browser(&driver, 1280, 900).await;
    let (items_ref, docs_ref) = (&items, &docs);
    run_steps("api_reference", client, |client| async move {
        step("open the reference", client.goto(docs_ref).await)?;
        wait_for_reference(&client, items_ref).await?;
        // Offline: the page, Redoc, the document and anything Redoc loads all come from this host.
        let urls = loaded_urls(&client).await?;
        if !urls.iter().any(|u| u.contains("/api/v1/openapi.json"))
            || !urls
                .iter()
                .any(|u| u.contains("/api/v1/docs/redoc.standalone.js"))
        {
            return Err(format!(
                "the document or Redoc was not loaded from here: {urls:?}"
            ));
        }
        // A `data:` URL is no request at all; anything else must name 127.0.0.1.
        for u in urls.iter().filter(|u| !u.starts_with("data:")) {
            let parsed = url::Url::parse(u.strip_prefix("blob:").unwrap_or(u))
                .map_err(|e| format!("{u}: {e}"))?;
            if parsed.host_str() != Some("127.0.0.1") {
                return Err(format!(
                    "the reference loaded {u}, which is not on 127.0.0.1"
                ));
            }
        }
        // The policy allows what Redoc needs (its worker, its inline styles and icons), and nothing was refused.
        let refused = csp_violations(&client).await?;
        if !refused.is_empty() {
            return Err(format!("the page's CSP refused {refused:?}"));
        }
        Ok(())
    })
    .await;

    // A phone 375 CSS pixels wide: everything drawn, nothing wider than the screen.
    let client = phone(&driver, 375, 812).await;
    run_steps("api_reference_phone", client, |client| async move {
        step("open the reference", client.goto(docs_ref).await)?;
        wait_for_reference(&client, items_ref).await?;
        let widths = script(
            &client,
            "page width",
            "return [window.innerWidth, document.documentElement.scrollWidth]",
        )
        .await?;
        let (inner, scroll) = (
            widths[0].as_f64().unwrap_or(0.0),
            widths[1].as_f64().unwrap_or(f64::MAX),
        );
        if inner != 375.0 {
            return Err(format!("the phone window is {inner} px wide, not 375"));
        }
        if scroll > inner {
            return Err(format!(
                "the reference scrolls sideways on a phone: {scroll} px in {inner}"
            ));
        }
        Ok(())
    })
    .await;
}
