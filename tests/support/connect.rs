//! The connect flow click by click against the sandbox: session, the connect page, amoCRM's consent page,
//! and the callback it sends the browser to.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::app::TestApp;

pub const HOST: &str = "sellerone.amocrm.ru";
pub const OTHER_HOST: &str = "sellertwo.amocrm.ru";

/// Undoes the HTML escaping of an attribute value.
fn unescape(s: &str) -> String {
    s.replace("&#38;", "&")
        .replace("&amp;", "&")
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&#60;", "<")
        .replace("&#62;", ">")
        .replace("&#61;", "=")
        .replace("&#x3D;", "=")
}

/// The value of the first `name="…"` attribute in `html`, unescaped.
pub fn attr(html: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = html.find(&key)? + key.len();
    let end = html[start..].find('"')? + start;
    Some(unescape(&html[start..end]))
}

/// A client that acts as a browser towards the service: a cookie jar of its own, redirects left to the
/// test to follow.
pub fn browser_client() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
}

/// A browser of its own: its own cookies, redirects not followed.
pub fn new_browser() -> reqwest::Client {
    browser_client().build().unwrap()
}

/// The query parameters of a URL.
pub fn query_of(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .expect("a query")
        .into_iter()
        .collect()
}

/// A session for `seller` made by a POST to `path` (connect and settings links alike: 201), with `extra`
/// body fields: the answer's `data`.
pub async fn seller_session(app: &TestApp, path: &str, seller: &str, extra: Value) -> Value {
    let mut body = json!({ "seller_id": seller });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let resp = app.api_post(path, &body).await;
    assert_eq!(resp.status().as_u16(), 201, "POST {path}");
    let v: Value = resp.json().await.expect("JSON");
    v["data"].clone()
}

pub async fn create_session(app: &TestApp, seller: &str, extra: Value) -> Value {
    seller_session(app, "/api/v1/connect-sessions", seller, extra).await
}

/// The connect page's two consent links: (popup `post_message`, same-window fallback `popup`).
pub async fn open_page(http: &reqwest::Client, connect_url: &str) -> (String, String) {
    let resp = http.get(connect_url).send().await.expect("connect page");
    assert_eq!(resp.status().as_u16(), 200, "connect page");
    let html = resp.text().await.expect("connect page");
    let popup = attr(&html, "data-popup").expect("popup link");
    let at = html.find("id=\"fallback\"").expect("fallback link");
    let fallback = attr(&html[at..], "href").expect("fallback link");
    (popup, fallback)
}

/// The seller's browser `http` on amoCRM's consent page (the sandbox at `sandbox_url`): loads it, picks
/// `host`, clicks Allow or Deny. Returns where amoCRM redirects the browser (our callback).
pub async fn consent(
    http: &reqwest::Client,
    sandbox_url: &str,
    authorize_url: &str,
    host: &str,
    allow: bool,
) -> String {
    let page = http.get(authorize_url).send().await.expect("consent page");
    assert_eq!(page.status().as_u16(), 200, "consent page");
    let html = page.text().await.expect("consent page");
    let mut form: Vec<(String, String)> = Vec::new();
    for field in ["client_id", "state", "mode", "redirect_uri"] {
        let key = format!("name=\"{field}\" value=\"");
        let value = html
            .find(&key)
            .and_then(|i| attr(&html[i..], "value"))
            .unwrap_or_default();
        form.push((field.to_owned(), value));
    }
    form.push(("account".into(), host.into()));
    form.push((
        "decision".into(),
        if allow { "allow" } else { "deny" }.into(),
    ));
    let resp = http
        .post(format!("{sandbox_url}/oauth"))
        .form(&form)
        .send()
        .await
        .expect("consent");
    assert_eq!(resp.status().as_u16(), 302, "consent redirects");
    resp.headers()["location"]
        .to_str()
        .expect("a location")
        .to_owned()
}

/// Session → page → consent: the callback URL amoCRM would send the browser to (not yet followed).
pub async fn until_callback(app: &TestApp, seller: &str, host: &str, allow: bool) -> String {
    let session = create_session(app, seller, json!({})).await;
    let connect_url = session["connect_url"].as_str().expect("connect_url");
    let (popup, _) = open_page(&app.http, connect_url).await;
    consent(&app.http, &app.sandbox.base_url(), &popup, host, allow).await
}

/// A full connect, click by click; returns the result page the callback leads to.
pub async fn connect(app: &TestApp, seller: &str, host: &str) -> reqwest::Response {
    let callback = until_callback(app, seller, host, true).await;
    through_result(app, &callback).await
}

/// Where the callback redirects the browser: its result page's path, or `None` for any other answer.
pub fn result_location(resp: &reqwest::Response) -> Option<String> {
    let location = resp.headers().get("location")?.to_str().ok()?;
    (resp.status().as_u16() == 303 && location.starts_with("/connect/result/"))
        .then(|| location.to_owned())
}

/// A GET of the callback `url` by `http`, a 303 followed as a browser follows it (relative to `url`).
pub async fn get_following_303(http: &reqwest::Client, url: &str) -> reqwest::Response {
    let resp = http.get(url).send().await.unwrap();
    if resp.status().as_u16() != 303 {
        return resp;
    }
    let next = url::Url::parse(url)
        .unwrap()
        .join(&super::app::header(&resp, "location"))
        .unwrap();
    http.get(next).send().await.unwrap()
}

/// `resp` followed, as a browser does, when it redirects to a result page; otherwise `resp` itself.
pub async fn follow_result(app: &TestApp, resp: reqwest::Response) -> reqwest::Response {
    match result_location(&resp) {
        Some(path) => app.browse(&app.url(&path)).await,
        None => resp,
    }
}

/// A GET of the callback `url` by the test's browser, followed to its result page.
pub async fn through_result(app: &TestApp, url: &str) -> reqwest::Response {
    let resp = app.browse(url).await;
    follow_result(app, resp).await
}
