//! Test harness: a sandbox on port 0 with one integration, an HTTP client, the OAuth dance, a tiny
//! webhook receiver, and the webhook body parser the connector uses (serde_qs).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use amocrm_sandbox::raw_http::read_request;
use amocrm_sandbox::{Faults, Integration, Sandbox, SandboxConfig, SandboxHandle, TokenPair};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

pub const CLIENT_ID: &str = "3f1c2a4e-0000-4000-8000-000000000001";
pub const SECRET: &str = "test-client-secret";
pub const REDIRECT: &str = "http://127.0.0.1:8080/oauth/amocrm/callback";
pub const HOST: &str = "sellerone.amocrm.ru";

pub async fn start() -> SandboxHandle {
    start_with(|_| {}).await
}

pub async fn start_with(tweak: impl FnOnce(&mut SandboxConfig)) -> SandboxHandle {
    let mut cfg = SandboxConfig {
        integrations: vec![Integration::new(CLIENT_ID, SECRET, REDIRECT)],
        ..SandboxConfig::default()
    };
    tweak(&mut cfg);
    Sandbox::start(cfg).await.expect("sandbox starts")
}

/// Faults with what `set` changes, the rest off.
pub fn faults(set: impl FnOnce(&mut Faults)) -> Faults {
    let mut f = Faults::default();
    set(&mut f);
    f
}

/// A client that does not follow redirects (we inspect them).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

pub fn authorize_query(state: &str) -> String {
    format!("client_id={CLIENT_ID}&state={state}&mode=post_message")
}

/// Query parameters of a URL.
pub fn query_of(url: &str) -> HashMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    serde_urlencoded::from_str::<Vec<(String, String)>>(q)
        .expect("query")
        .into_iter()
        .collect()
}

/// Consent (scripted) and the code exchange over HTTP: a fresh token pair for `host`.
pub async fn connect(sb: &SandboxHandle, host: &str) -> TokenPair {
    let redirect = sb.approve(&authorize_query("st"), host).expect("approve");
    let code = query_of(&redirect)["code"].clone();
    let resp = exchange_code(sb, host, &code).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.expect("json");
    TokenPair {
        token_type: v["token_type"].as_str().unwrap_or_default().to_owned(),
        expires_in: v["expires_in"].as_i64().unwrap_or_default(),
        access_token: v["access_token"].as_str().unwrap_or_default().to_owned(),
        refresh_token: v["refresh_token"].as_str().unwrap_or_default().to_owned(),
        server_time: v["server_time"].as_i64().unwrap_or_default(),
        account_id: sb.account_id(host).unwrap_or_default(),
    }
}

pub async fn exchange_code(sb: &SandboxHandle, host: &str, code: &str) -> reqwest::Response {
    token_request(
        sb,
        host,
        &json!({
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
        }),
    )
    .await
}

/// `POST /oauth2/access_token` on `host` with a JSON body as given, right or wrong.
pub async fn token_request(sb: &SandboxHandle, host: &str, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{}/oauth2/access_token", sb.account_url(host)))
        .json(body)
        .send()
        .await
        .expect("token request")
}

pub async fn refresh(sb: &SandboxHandle, host: &str, refresh_token: &str) -> reqwest::Response {
    http()
        .post(format!("{}/oauth2/access_token", sb.account_url(host)))
        .form(&[
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("redirect_uri", REDIRECT),
        ])
        .send()
        .await
        .expect("token request")
}

/// A request to the account's API with a bearer token.
pub fn api(
    sb: &SandboxHandle,
    host: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
) -> reqwest::RequestBuilder {
    http()
        .request(method, format!("{}/api/v4/{path}", sb.account_url(host)))
        .bearer_auth(token)
}

pub async fn get(sb: &SandboxHandle, token: &str, path: &str) -> reqwest::Response {
    get_on(sb, HOST, token, path).await
}

/// `DELETE /api/v4/{path}` on [`HOST`] without a body.
pub async fn delete(sb: &SandboxHandle, token: &str, path: &str) -> reqwest::Response {
    api(sb, HOST, reqwest::Method::DELETE, path, token)
        .send()
        .await
        .expect("request")
}

/// The JSON body of `GET /api/v4/{path}` on [`HOST`].
pub async fn get_json(sb: &SandboxHandle, token: &str, path: &str) -> Value {
    json_of(get(sb, token, path).await).await
}

/// `GET /api/v4/{path}` on another account than [`HOST`].
pub async fn get_on(sb: &SandboxHandle, host: &str, token: &str, path: &str) -> reqwest::Response {
    api(sb, host, reqwest::Method::GET, path, token)
        .send()
        .await
        .expect("request")
}

pub async fn send_json(
    sb: &SandboxHandle,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> reqwest::Response {
    api(sb, HOST, method, path, token)
        .json(&body)
        .send()
        .await
        .expect("request")
}

/// `POST /api/v4/{path}` on [`HOST`] with a JSON body.
pub async fn post(sb: &SandboxHandle, token: &str, path: &str, body: Value) -> reqwest::Response {
    send_json(sb, token, reqwest::Method::POST, path, body).await
}

/// `PATCH /api/v4/{path}` on [`HOST`] with a JSON body.
pub async fn patch(sb: &SandboxHandle, token: &str, path: &str, body: Value) -> reqwest::Response {
    send_json(sb, token, reqwest::Method::PATCH, path, body).await
}

pub async fn json_of(resp: reqwest::Response) -> Value {
    resp.json().await.expect("json body")
}

/// `GET {base}{path}` on the sandbox's own routes (`/_sandbox/…`, `/`), answered 200 or not.
pub async fn get_path(sb: &SandboxHandle, path: &str) -> reqwest::Response {
    http()
        .get(format!("{}{path}", sb.base_url()))
        .send()
        .await
        .expect("request")
}

/// `POST {base}{path}` with a JSON body on the sandbox's own routes.
pub async fn post_path(sb: &SandboxHandle, path: &str, body: &Value) -> reqwest::Response {
    http()
        .post(format!("{}{path}", sb.base_url()))
        .json(body)
        .send()
        .await
        .expect("request")
}

/// The text of a sandbox page (the board at `/_sandbox/ui`, the home page).
pub async fn page_text(sb: &SandboxHandle, path: &str) -> String {
    get_path(sb, path).await.text().await.expect("page text")
}

/// Polls `cond` every 10 ms for up to 5 s (work the sandbox finishes on its own threads).
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub request_line: String,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// A tiny HTTP receiver on port 0 that answers every request with `status`.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(status: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut sock).await else {
                        return;
                    };
                    sink.lock().expect("lock").push(Received {
                        request_line: req.request_line().to_owned(),
                        headers: req.headers().collect(),
                        body: req.body_text(),
                    });
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        Self { url, got }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// What arrived once `sb` has delivered everything it queued.
    pub async fn delivered(&self, sb: &SandboxHandle) -> Vec<Received> {
        sb.webhooks_idle().await;
        self.received()
    }
}

/// A webhook body parsed the way the connector parses it.
#[derive(Debug, Deserialize)]
pub struct Hook {
    pub leads: Option<BTreeMap<String, Vec<HookLead>>>,
    pub contacts: Option<BTreeMap<String, Vec<HookParty>>>,
    pub account: HookAccount,
}

/// A contact or company of a webhook. `linked_leads_id` is keyed by lead id (`[9982719][ID]`), as in
/// real captures, so it is read as a map, not a list.
#[derive(Debug, Deserialize)]
pub struct HookParty {
    pub id: String,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub linked_company_id: Option<String>,
    pub custom_fields: Option<Vec<HookPartyField>>,
    pub linked_leads_id: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

impl HookParty {
    /// The values of the field with this code (`PHONE`, `EMAIL`).
    pub fn values_of(&self, code: &str) -> Vec<String> {
        self.custom_fields
            .iter()
            .flatten()
            .filter(|f| f.code.as_deref() == Some(code))
            .flat_map(|f| f.values.iter().filter_map(|v| v.get("value").cloned()))
            .collect()
    }
}

#[derive(Debug, Deserialize)]
pub struct HookPartyField {
    pub code: Option<String>,
    pub values: Vec<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
pub struct HookLead {
    pub id: String,
    pub name: Option<String>,
    pub status_id: Option<String>,
    pub old_status_id: Option<String>,
    pub pipeline_id: Option<String>,
    pub old_pipeline_id: Option<String>,
    pub price: Option<String>,
    pub account_id: Option<String>,
    pub last_modified: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub custom_fields: Option<Vec<HookField>>,
}

#[derive(Debug, Deserialize)]
pub struct HookField {
    pub id: String,
    pub name: String,
    pub values: Vec<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
pub struct HookAccount {
    /// Absent in older captures.
    pub id: Option<String>,
    pub subdomain: String,
    #[serde(rename = "_links")]
    pub links: Option<BTreeMap<String, String>>,
}

pub fn parse_hook(body: &str) -> Hook {
    serde_qs::Config::new()
        .max_depth(10)
        .use_form_encoding(true)
        .deserialize_str(body)
        .expect("webhook body parses as amoCRM's bracket form")
}

/// A sandbox with the default rate limit and an admin token for `HOST`.
pub async fn signed_in() -> (SandboxHandle, String) {
    with_token(start().await)
}

/// A sandbox without the rate limit and an admin token for `HOST`.
pub async fn unlimited() -> (SandboxHandle, String) {
    unlimited_with(|_| {}).await
}

/// An [`unlimited`] sandbox with what `tweak` changes in its config.
pub async fn unlimited_with(tweak: impl FnOnce(&mut SandboxConfig)) -> (SandboxHandle, String) {
    with_token(
        start_with(|c| {
            c.rate_limit_rps = 0;
            tweak(c);
        })
        .await,
    )
}

fn with_token(sb: SandboxHandle) -> (SandboxHandle, String) {
    let token = sb.issue_tokens(CLIENT_ID, HOST).access_token;
    (sb, token)
}

/// An [`unlimited`] sandbox whose webhooks for `settings` go to a fresh receiver answering 200.
pub async fn subscribed(settings: &[&str]) -> (SandboxHandle, String, Receiver) {
    subscribed_with(settings, |_| {}).await
}

/// [`subscribed`], with what `tweak` changes in the sandbox's config.
pub async fn subscribed_with(
    settings: &[&str],
    tweak: impl FnOnce(&mut SandboxConfig),
) -> (SandboxHandle, String, Receiver) {
    let (sb, token) = unlimited_with(tweak).await;
    let rx = Receiver::start(200).await;
    subscribe_to(&sb, &token, &rx.url, settings).await;
    (sb, token, rx)
}

/// The main pipeline of `HOST` with its incoming stage and first ordinary stage.
pub fn main_stages(sb: &SandboxHandle) -> (u64, u64, u64) {
    let main = sb
        .pipelines(HOST)
        .into_iter()
        .find(|p| p.is_main)
        .expect("main pipeline");
    let incoming = main
        .statuses
        .iter()
        .find(|s| s.type_ == 1)
        .expect("incoming stage")
        .id;
    let mut stages: Vec<_> = main
        .statuses
        .iter()
        .filter(|s| s.type_ == 0 && s.id != 142 && s.id != 143)
        .collect();
    stages.sort_by_key(|s| (s.sort, s.id));
    (main.id, incoming, stages[0].id)
}

/// Subscribes `url` to `settings` through the API.
pub async fn subscribe_to(sb: &SandboxHandle, token: &str, url: &str, settings: &[&str]) {
    let resp = post(
        sb,
        token,
        "webhooks",
        json!({"destination": url, "settings": settings}),
    )
    .await;
    assert_eq!(resp.status(), 200, "subscribe {settings:?}");
}

/// The `(code, path, detail)` of every validation error in a 400 body.
pub fn validation_errors(body: &Value) -> Vec<(String, String, String)> {
    body["validation-errors"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .flat_map(|item| item["errors"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["code"].as_str().unwrap_or_default().to_owned(),
                e["path"].as_str().unwrap_or_default().to_owned(),
                e["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The `_embedded.{key}` list of a HAL body.
pub fn embedded<'a>(body: &'a Value, key: &str) -> &'a [Value] {
    body["_embedded"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no _embedded.{key} in {body}"))
}

/// The `custom_fields_values` entry with this `field_code` in an entity's API JSON.
pub fn field_by_code<'a>(entity: &'a Value, code: &str) -> &'a Value {
    entity["custom_fields_values"]
        .as_array()
        .expect("custom_fields_values")
        .iter()
        .find(|f| f["field_code"] == code)
        .unwrap_or_else(|| panic!("no {code} field"))
}

/// Asserts a 204 with an empty body.
pub async fn assert_no_content(resp: reqwest::Response) {
    assert_eq!(resp.status(), 204);
    assert!(
        resp.bytes().await.expect("body").is_empty(),
        "204 has no body"
    );
}

/// The `(key, value)` pairs of a form body.
pub fn form_of(body: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(body).expect("form body")
}
