//! Security checks as tests: no secret in the logs of a whole scenario, in any API answer or in plain
//! text in the database; one seller's data never shows through another seller's id; secrets are compared
//! in constant time.

use amocrm_connector::domain::status::ConnectionStatus;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use amocrm_connector::storage::AnyConnection;
use amocrm_connector::storage::cipher::Keyring;
use diesel::prelude::*;
use diesel::sql_types::{Binary, Nullable, Text};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use amocrm_connector::workers::{delivery as delivery_worker, webhook_processor};

use crate::support::{
    Behaviour, HOST, OTHER_HOST, Queue, Receiver, TestApp, assert_error, connect_seller,
    connection, env_vars, header, order_body, query_of, refresh_now, spawn_app, spawn_app_with,
    until_callback,
};

// ---------------------------------------------------------------------------------------------------
// Log capture: one global subscriber for the test binary, writing every line to a shared buffer.

/// Everything logged in this process since the capture was installed.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

impl LogBuffer {
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn since(&self, mark: usize) -> Vec<u8> {
        self.0.lock().unwrap()[mark..].to_vec()
    }
}

/// Our crates at the most verbose level, libraries at debug; the sandbox is amoCRM's stand-in, not ours.
const CAPTURE_FILTER: &str = "trace,amocrm_sandbox=off,h2=debug,hyper=debug,hyper_util=debug,\
     rustls=debug,mio=off,tokio=debug,runtime=off,actix_server=debug";

/// Installs the capture once for the whole test binary and returns it.
pub fn log_capture() -> LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = LogBuffer::default();
        assert!(
            amocrm_connector::telemetry::init_with_writer(CAPTURE_FILTER, buffer.clone()),
            "another global subscriber was installed first; the capture would miss lines"
        );
        buffer
    })
    .clone()
}

// ---------------------------------------------------------------------------------------------------
// Secrets and where to look for them.

/// A named secret and the bytes that must not appear.
#[derive(Debug, Clone)]
pub struct Secret {
    pub what: String,
    pub bytes: Vec<u8>,
}

#[derive(Default)]
pub struct Secrets(pub Vec<Secret>);

impl Secrets {
    pub fn add(&mut self, what: impl Into<String>, value: impl AsRef<[u8]>) {
        let bytes = value.as_ref().to_vec();
        // Short values would match by chance; every secret of ours is far longer.
        assert!(bytes.len() >= 12, "secret too short to scan for");
        if !self.0.iter().any(|s| s.bytes == bytes) {
            self.0.push(Secret {
                what: what.into(),
                bytes,
            });
        }
    }

    /// The names of the secrets found in `haystack`.
    pub fn found_in(&self, haystack: &[u8]) -> Vec<String> {
        self.0
            .iter()
            .filter(|s| haystack.windows(s.bytes.len()).any(|w| w == s.bytes))
            .map(|s| s.what.clone())
            .collect()
    }

    /// Adds a `TOKEN_ENCRYPTION_KEYS` entry: its base64 text and the 32 raw bytes.
    pub fn add_key_entry(&mut self, entry: &str) {
        use base64::Engine;
        let (id, b64) = entry.split_once(':').unwrap();
        self.add(format!("encryption key {id} (base64)"), b64);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        self.add(format!("encryption key {id} (raw)"), raw);
    }

    /// Adds the current token pair of every connection (decrypted with `keys`).
    pub async fn add_stored_tokens(&mut self, app: &TestApp, keys: &Keyring) {
        let (rows, _) = app
            .db
            .run(|c| amocrm_connector::storage::connections::list(c, None, 0, 10_000))
            .await
            .unwrap();
        for row in rows {
            if let Some(t) = row.access_token(keys).unwrap() {
                self.add(
                    format!("access token of {}", row.seller_id),
                    t.expose_secret(),
                );
            }
            if let Some(t) = row.refresh_token(keys).unwrap() {
                self.add(
                    format!("refresh token of {}", row.seller_id),
                    t.expose_secret(),
                );
            }
        }
    }
}

#[derive(QueryableByName)]
struct ColumnRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
}

#[derive(QueryableByName)]
struct CellRow {
    #[diesel(sql_type = Nullable<Binary>)]
    v: Option<Vec<u8>>,
}

/// Every value of every column of every table, as bytes: `(table.column, value)`.
pub async fn dump_database(app: &TestApp) -> Vec<(String, Vec<u8>)> {
    app.db
        .run(|conn| {
            let columns: Vec<ColumnRow> = match conn {
                AnyConnection::Sqlite(c) => diesel::sql_query(
                    "SELECT m.name AS table_name, p.name AS column_name, p.type AS data_type \
                     FROM sqlite_master m JOIN pragma_table_info(m.name) p \
                     WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%'",
                )
                .load(c)?,
                AnyConnection::Postgresql(c) => diesel::sql_query(
                    "SELECT table_name::text AS table_name, column_name::text AS column_name, \
                     data_type::text AS data_type FROM information_schema.columns \
                     WHERE table_schema = current_schema()",
                )
                .load(c)?,
            };
            let mut out = Vec::new();
            for col in columns {
                let (t, k) = (&col.table_name, &col.column_name);
                let cells: Vec<CellRow> = match conn {
                    AnyConnection::Sqlite(c) => {
                        diesel::sql_query(format!("SELECT CAST(\"{k}\" AS BLOB) AS v FROM \"{t}\""))
                            .load(c)?
                    }
                    AnyConnection::Postgresql(c) => {
                        let expr = if col.data_type == "bytea" {
                            format!("\"{k}\"")
                        } else {
                            format!("convert_to(\"{k}\"::text, 'UTF8')")
                        };
                        diesel::sql_query(format!("SELECT {expr} AS v FROM \"{t}\"")).load(c)?
                    }
                };
                for cell in cells {
                    if let Some(v) = cell.v {
                        out.push((format!("{t}.{k}"), v));
                    }
                }
            }
            Ok(out)
        })
        .await
        .unwrap()
}

/// Every answer the scenario received, with where it came from.
#[derive(Default)]
pub struct Answers(pub Vec<(String, Vec<u8>)>);

impl Answers {
    pub async fn keep(
        &mut self,
        label: impl Into<String>,
        resp: reqwest::Response,
    ) -> (u16, Value) {
        let status = resp.status().as_u16();
        let mut raw = Vec::new();
        for (k, v) in resp.headers() {
            raw.extend_from_slice(k.as_str().as_bytes());
            raw.extend_from_slice(b": ");
            raw.extend_from_slice(v.as_bytes());
            raw.push(b'\n');
        }
        let body = resp.bytes().await.unwrap().to_vec();
        raw.extend_from_slice(&body);
        self.0.push((label.into(), raw));
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

const REFRESH_SECRET: &str = "security-refresh-secret-7f3a9c2e";
const METRICS_TOKEN: &str = "security-metrics-token-0a9b8c7d";

/// The token `name` of a sign-in answer, at the top or under `data`.
fn token_in<'a>(answer: &'a Value, name: &str) -> Option<&'a str> {
    answer[name]
        .as_str()
        .or_else(|| answer["data"][name].as_str())
}

/// Makes every connection's access token due for refresh.
async fn make_due(app: &TestApp) {
    use amocrm_connector::storage::schema::amocrm_connections as c;
    let at = amocrm_connector::storage::now() + chrono::Duration::seconds(30);
    app.update(
        c::table,
        (
            c::token_expires_at.eq(Some(at)),
            c::next_refresh_at.eq(None::<chrono::NaiveDateTime>),
        ),
    )
    .await;
}

#[tokio::test]
async fn no_secret_reaches_the_logs_an_api_answer_or_the_database_in_plain_text() {
    let logs = log_capture();
    let mark = logs.len();
    let app = spawn_app_with(env_vars(&[
        ("REFRESH_SECRET", REFRESH_SECRET),
        ("METRICS_TOKEN", METRICS_TOKEN),
    ]))
    .await;
    app.leaves_queued(
        Queue::Inbox,
        "amoCRM's webhooks about the pushed orders' leads are not processed",
    );
    let mut secrets = Secrets::default();
    secrets.add("metrics token", METRICS_TOKEN);
    let mut logs_only = Secrets::default();
    let mut answers = Answers::default();
    secrets.add("client secret", &app.env["AMOCRM_CLIENT_SECRET"]);
    secrets.add("API key", &app.api_key);
    secrets.add("refresh secret", REFRESH_SECRET);
    secrets.add_key_entry(&app.env["TOKEN_ENCRYPTION_KEYS"]);

    // Connect two sellers click by click; the codes, states and session tokens are secrets too.
    for (seller, host) in [("sec-seller-a", HOST), ("sec-seller-b", OTHER_HOST)] {
        let callback = until_callback(&app, seller, host, true).await;
        logs_only.add(
            format!("authorization code of {seller}"),
            &query_of(&callback)["code"],
        );
        logs_only.add(
            format!("OAuth state of {seller}"),
            &query_of(&callback)["state"],
        );
        let resp = crate::support::through_result(&app, &callback).await;
        let (status, _) = answers.keep(format!("callback of {seller}"), resp).await;
        assert_eq!(status, 200, "{seller} connects");
        let conn = connection(&app, seller).await.unwrap();
        logs_only.add(format!("webhook token of {seller}"), &conn.webhook_token);
    }
    let keys = app.state.keys.clone();
    secrets.add_stored_tokens(&app, &keys).await;

    // The API, read and written.
    for path in [
        "/api/v1/connections",
        "/api/v1/connections/sec-seller-a",
        "/api/v1/connections/sec-seller-b/pipeline",
    ] {
        let (status, _) = answers.keep(path, app.api_get(path).await).await;
        assert_eq!(status, 200, "{path}");
    }
    let resp = app
        .api_post(
            "/api/v1/connect-sessions",
            &json!({"seller_id": "sec-seller-c"}),
        )
        .await;
    let (status, body) = answers.keep("connect session", resp).await;
    assert_eq!(status, 201);
    logs_only.add(
        "connect session token",
        body["data"]["token"].as_str().unwrap(),
    );

    // Refresh: by the cron URL (secret in the query and in a header) and through the API.
    make_due(&app).await;
    let resp = app
        .get(&format!("/refresh?secret_key={REFRESH_SECRET}"))
        .await;
    let (status, body) = answers.keep("/refresh by query", resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["refreshed"], 2, "{body}");
    secrets.add_stored_tokens(&app, &keys).await;
    make_due(&app).await;
    let resp = app
        .http
        .post(app.url("/refresh"))
        .header("X-Refresh-Secret", REFRESH_SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(answers.keep("/refresh by header", resp).await.0, 200);
    secrets.add_stored_tokens(&app, &keys).await;
    let resp = app
        .api_post("/api/v1/connections/sec-seller-a/refresh", &json!({}))
        .await;
    assert_eq!(answers.keep("refresh through the API", resp).await.0, 200);
    secrets.add_stored_tokens(&app, &keys).await;
    // A wrong secret is logged as a warning: the presented value must not be in it.
    let wrong = format!("{REFRESH_SECRET}-almost");
    logs_only.add("a presented wrong refresh secret", &wrong);
    let resp = app.get(&format!("/refresh?secret_key={wrong}")).await;
    assert_eq!(answers.keep("/refresh wrong secret", resp).await.0, 401);

    // Events out: a subscriber with a secret; a manager's lead in amoCRM, moved to paid, comes back
    // through the webhook intake, the processor and the delivery worker.
    let sub_secret = "subscription-secret-4d2c7b9e1a";
    secrets.add("subscription secret", sub_secret);
    let receiver = Receiver::start(sub_secret, Behaviour::Ok).await;
    let resp = app
        .api_post(
            "/api/v1/webhooks",
            &json!({"url": receiver.url, "events": ["*"], "secret": sub_secret, "active": true}),
        )
        .await;
    let (status, sub) = answers.keep("create subscription", resp).await;
    assert_eq!(status, 201, "{sub}");
    let sub_id = sub["data"]["id"].as_str().unwrap().to_owned();
    let b = connection(&app, "sec-seller-b").await.unwrap();
    let lead = app
        .sandbox
        .create_lead(
            &b.host,
            "Manager's lead",
            5_000,
            Some((
                b.pipeline_id.unwrap() as u64,
                b.stage_pending.unwrap() as u64,
            )),
        )
        .unwrap();
    app.sandbox.webhooks_idle().await;
    app.sandbox
        .move_lead(
            &b.host,
            lead,
            b.pipeline_id.unwrap() as u64,
            b.stage_paid.unwrap() as u64,
        )
        .unwrap();
    app.sandbox.webhooks_idle().await;
    for _ in 0..20 {
        let r = webhook_processor::run_once(&app.state).await.unwrap();
        let d = delivery_worker::run_once(&app.state).await.unwrap();
        if r.claimed == 0 && d.claimed == 0 {
            break;
        }
    }
    let hits = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert!(
        hits.iter()
            .any(|h| h.json()["event"] == "payment.completed" && h.signature_ok),
        "the payment was delivered, signed"
    );
    for path in [
        "/api/v1/webhooks".to_owned(),
        format!("/api/v1/webhooks/{sub_id}"),
        format!("/api/v1/webhooks/{sub_id}/deliveries"),
        "/api/v1/events?limit=100".to_owned(),
    ] {
        let (status, _) = answers.keep(path.clone(), app.api_get(&path).await).await;
        assert_eq!(status, 200, "{path}");
    }
    for (i, h) in hits.iter().enumerate() {
        let mut raw = format!("{:?}\n", h.headers).into_bytes();
        raw.extend_from_slice(&h.body);
        answers.0.push((format!("delivered event #{i}"), raw));
    }

    // Orders pushed into amoCRM; their leads moved to paid come back as events.
    for n in ["SEC-1", "SEC-2"] {
        let resp = app
            .api_post("/api/v1/sales/orders", &order_body("sec-seller-b", n))
            .await;
        let (status, body) = answers.keep(format!("order {n}"), resp).await;
        assert_eq!(status, 202, "{body}");
    }
    amocrm_connector::workers::push::drain(&app.state, 20)
        .await
        .unwrap();
    let (status, list) = answers
        .keep(
            "orders list",
            app.api_get("/api/v1/sales/orders?seller_id=sec-seller-b")
                .await,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["sync"]["state"] == "synced"),
        "{list}"
    );

    // Operators: a password, access and refresh tokens, the dashboard session.
    let password = "operator-password-c3f1e9a7";
    secrets.add("operator password", password);
    amocrm_connector::services::operators::create_or_update(
        &app.db,
        "ops@example.com",
        Some("Ops"),
        amocrm_connector::services::operators::Role::Admin,
        secrecy::SecretString::from(password.to_owned()),
    )
    .await
    .unwrap();
    let resp = app
        .post_json(
            "/api/auth/login",
            &json!({"email": "ops@example.com", "password": password}),
        )
        .await;
    let (status, login) = answers.keep("operator login", resp).await;
    assert_eq!(status, 200, "{login}");
    let access = token_in(&login, "access_token").unwrap().to_owned();
    let refresh = token_in(&login, "refresh_token").unwrap().to_owned();
    // These two are the answer's purpose: scanned for in logs and the database only.
    logs_only.add("operator access token", &access);
    logs_only.add("operator refresh token", &refresh);
    let resp = app.get_as("/api/v1/connections", &access).await;
    assert_eq!(answers.keep("connections as operator", resp).await.0, 200);
    let resp = app
        .post_json("/api/auth/refresh", &json!({"refresh_token": refresh}))
        .await;
    let (status, renewed) = answers.keep("operator refresh", resp).await;
    assert_eq!(status, 200, "{renewed}");
    if let Some(t) = token_in(&renewed, "access_token") {
        logs_only.add("renewed operator access token", t);
    }
    if let Some(t) = token_in(&renewed, "refresh_token") {
        logs_only.add("renewed operator refresh token", t);
    }
    let resp = app
        .post_json(
            "/api/auth/login",
            &json!({"email": "ops@example.com", "password": format!("{password}-wrong")}),
        )
        .await;
    logs_only.add("a wrong operator password", format!("{password}-wrong"));
    assert_eq!(answers.keep("wrong login", resp).await.0, 401);
    let resp = app.get_as("/metrics", METRICS_TOKEN).await;
    assert_eq!(answers.keep("metrics", resp).await.0, 200);

    // Key rotation, then a second instance on the new key refreshes again.
    let new_entry = Keyring::generate_entry("rotated2");
    secrets.add_key_entry(&new_entry);
    let both = format!("{new_entry},{}", app.env["TOKEN_ENCRYPTION_KEYS"]);
    let rotated_keys = Keyring::parse(&both).unwrap();
    let report = amocrm_connector::services::keys::rotate(&app.db, &rotated_keys)
        .await
        .unwrap();
    assert_eq!(
        report.rotated, 3,
        "two token pairs and one subscription secret: {report:?}"
    );
    let peer = app
        .spawn_peer_with(|env| {
            env.insert("TOKEN_ENCRYPTION_KEYS".into(), both);
            env.insert("INSTANCE_ID".into(), "rotated-peer".into());
        })
        .await;
    let resp = peer
        .api_post_empty("/api/v1/connections/sec-seller-b/refresh")
        .await;
    assert_eq!(
        answers.keep("refresh on the rotated key", resp).await.0,
        200
    );
    secrets.add("API key of the peer", &peer.api_key);
    secrets.add_stored_tokens(&peer, &rotated_keys).await;

    // Disconnect one seller through the API (tokens wiped, amoCRM unsubscribed).
    let resp = app.api_delete("/api/v1/connections/sec-seller-a").await;
    assert_eq!(answers.keep("delete connection", resp).await.0, 204);

    // Now look everywhere.
    let captured = logs.since(mark);
    let text = String::from_utf8_lossy(&captured);
    assert!(
        text.contains("/oauth/amocrm/callback") && text.lines().count() > 50,
        "the capture saw the scenario ({} lines)",
        text.lines().count()
    );
    let mut all = Secrets(secrets.0.clone());
    for s in &logs_only.0 {
        all.add(s.what.clone(), &s.bytes);
    }
    let in_logs = all.found_in(&captured);
    assert!(in_logs.is_empty(), "secrets in the logs: {in_logs:?}");
    for (label, raw) in &answers.0 {
        let found = secrets.found_in(raw);
        assert!(
            found.is_empty(),
            "secrets in the answer to {label}: {found:?}"
        );
    }
    let dump = dump_database(&app).await;
    assert!(
        dump.len() > 20,
        "the dump saw the tables ({} cells)",
        dump.len()
    );
    for (column, value) in &dump {
        let found = secrets.found_in(value);
        assert!(
            found.is_empty(),
            "plain-text secrets in {column}: {found:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// One seller's data through another seller's id.

/// The JSON lines logged since `mark` whose message is `message`.
fn lines_saying(logs: &LogBuffer, mark: usize, message: &str) -> Vec<Value> {
    String::from_utf8_lossy(&logs.since(mark))
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == message)
        .collect()
}

/// Lines logged deep inside a seller's work (a refresh, a suspension, a probe, a revocation) name the seller
/// through the spans they were logged in, not through a field each line adds by hand.
#[tokio::test]
async fn a_sellers_log_lines_name_the_seller_through_their_spans() {
    const SELLER: &str = "span-seller";
    let logs = log_capture();
    let mark = logs.len();
    let app = spawn_app().await;
    connect_seller(&app, SELLER, HOST).await;
    refresh_now(&app, SELLER).await;
    app.sandbox.block(HOST).unwrap();
    let resp = app
        .api_post("/api/v1/sales/orders", &order_body(SELLER, "SPAN-1"))
        .await;
    assert_eq!(resp.status(), 202);
    let (report, drained) = amocrm_connector::workers::push::drain(&app.state, 200)
        .await
        .unwrap();
    assert!(drained, "{report:?}");
    assert_eq!(
        connection(&app, SELLER).await.unwrap().status,
        ConnectionStatus::Suspended
    );
    app.sandbox.clear_block(HOST).unwrap();
    let body = refresh_now(&app, SELLER).await;
    assert_eq!(body["data"]["status"], "active", "{body}");
    let resp = app
        .api_delete(&format!("/api/v1/connections/{SELLER}"))
        .await;
    assert_eq!(resp.status(), 204);

    for message in [
        "refreshed amoCRM tokens",
        "amoCRM refuses the account: connection suspended, its orders held",
        "amoCRM answers the account again: connection active",
        "removed the amoCRM webhook subscription",
    ] {
        let lines = lines_saying(&logs, mark, message);
        let named = |l: &&Value| {
            l["spans"]
                .as_array()
                .is_some_and(|spans| spans.iter().any(|s| s["seller_id"] == SELLER))
        };
        let line = lines.iter().find(named);
        assert!(
            line.is_some(),
            "no line \"{message}\" in a span of {SELLER}: {lines:?}"
        );
        assert!(
            line.unwrap().get("seller_id").is_none(),
            "the line repeats the span's seller_id: {line:?}"
        );
    }
}

#[tokio::test]
async fn a_sellers_connection_and_pipeline_never_show_through_another_sellers_id() {
    let app = spawn_app_with(|_| {}).await;
    app.leaves_queued(
        Queue::Inbox,
        "amoCRM's webhooks about the pushed orders' leads are not processed",
    );
    for (seller, host) in [("iso-a", HOST), ("iso-b", OTHER_HOST)] {
        let callback = until_callback(&app, seller, host, true).await;
        assert_eq!(
            crate::support::through_result(&app, &callback)
                .await
                .status(),
            200
        );
    }
    let a = connection(&app, "iso-a").await.unwrap();
    let b = connection(&app, "iso-b").await.unwrap();
    assert_ne!(a.account_id, b.account_id);
    for (seller, own) in [("iso-a", &a), ("iso-b", &b)] {
        let v = app.api_json(&format!("/api/v1/connections/{seller}")).await;
        assert_eq!(v["data"]["seller_id"], seller);
        assert_eq!(v["data"]["account_id"], own.account_id);
        assert_eq!(v["data"]["host"], own.host);
        let p = app
            .api_json(&format!("/api/v1/connections/{seller}/pipeline"))
            .await;
        assert_eq!(p["data"]["pipeline_id"], own.pipeline_id.unwrap());
    }
    // B's pipeline cannot be mapped onto A: it is another account's.
    let resp = app
        .api(
            Method::PUT,
            "/api/v1/connections/iso-a/pipeline",
            Some(&json!({"pipeline_id": b.pipeline_id.unwrap()})),
        )
        .await;
    assert_eq!(resp.status().as_u16(), 422, "another account's pipeline");
    // A's webhook token with B's account in the body is refused and stores nothing.
    let body = format!(
        "account[id]={}&account[subdomain]={}&leads[status][0][id]=1&leads[status][0][status_id]=142&leads[status][0][pipeline_id]={}",
        b.account_id,
        b.subdomain,
        b.pipeline_id.unwrap()
    );
    let resp = app
        .post_raw(
            &format!("/webhooks/amocrm/{}", a.webhook_token),
            None,
            "application/x-www-form-urlencoded",
            body,
        )
        .await;
    assert!(
        [403, 404].contains(&resp.status().as_u16()),
        "a mismatched account is refused: {}",
        resp.status()
    );
    // Lists filtered by status never mix in the other seller's row.
    let list = app
        .api_json("/api/v1/connections?status=active&per_page=100")
        .await;
    let sellers: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seller_id"].as_str().unwrap())
        .collect();
    assert_eq!(sellers, ["iso-a", "iso-b"]);
    // Orders: each seller's list holds only its own, and one seller's id cannot be used to read or
    // change through another's.
    for (seller, n) in [("iso-a", "A-1"), ("iso-b", "B-1"), ("iso-b", "B-2")] {
        let resp = app
            .api_post("/api/v1/sales/orders", &order_body(seller, n))
            .await;
        assert_eq!(resp.status().as_u16(), 202, "{seller} {n}");
    }
    amocrm_connector::workers::push::drain(&app.state, 20)
        .await
        .unwrap();
    for (seller, count) in [("iso-a", 1), ("iso-b", 2)] {
        let v = app
            .api_json(&format!(
                "/api/v1/sales/orders?seller_id={seller}&per_page=100"
            ))
            .await;
        let items = v["data"].as_array().unwrap();
        assert_eq!(items.len(), count, "{v}");
        assert!(items.iter().all(|o| o["seller_id"] == seller), "{v}");
    }
    // The same order number under another seller is another order, not a duplicate of A's.
    let resp = app
        .api_post("/api/v1/sales/orders", &order_body("iso-b", "A-1"))
        .await;
    assert_eq!(resp.status().as_u16(), 202, "B's own A-1");
    amocrm_connector::workers::push::drain(&app.state, 20)
        .await
        .unwrap();
    let a_leads = app.sandbox.leads(&a.host).len();
    let b_leads = app.sandbox.leads(&b.host).len();
    assert_eq!(
        (a_leads, b_leads),
        (1, 3),
        "each order went to its own seller's amoCRM"
    );
    // The event log filtered by one seller holds only that seller's events.
    for seller in ["iso-a", "iso-b"] {
        let v = app
            .api_json(&format!("/api/v1/events?seller_id={seller}&limit=100"))
            .await;
        let items = v["data"].as_array().unwrap();
        assert!(!items.is_empty(), "{seller} has events");
        assert!(
            items.iter().all(|e| e["seller_id"] == seller),
            "only {seller}'s events: {v}"
        );
    }
    // Deleting A leaves B untouched and working.
    let resp = app.api_delete("/api/v1/connections/iso-a").await;
    assert_eq!(resp.status().as_u16(), 204);
    let b_after = connection(&app, "iso-b").await.unwrap();
    assert_eq!(b_after.status, ConnectionStatus::Active);
    assert!(b_after.access_token_enc.is_some());
}

// ---------------------------------------------------------------------------------------------------
// Constant-time comparison.

/// Median time of `f` over `rounds` runs.
fn median(rounds: usize, mut f: impl FnMut() -> bool) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(f());
            t.elapsed()
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

#[test]
fn the_secret_comparison_takes_as_long_for_a_near_miss_as_for_a_first_byte_miss() {
    use amocrm_connector::domain::ids::constant_time_eq;
    // Long inputs make an early exit measurable: a plain `==` (memcmp) returns after the first byte
    // for one and reads 1 MiB for the other.
    let expected = vec![b'a'; 1 << 20];
    let mut first_byte = expected.clone();
    first_byte[0] = b'b';
    let mut last_byte = expected.clone();
    *last_byte.last_mut().unwrap() = b'b';
    // Control: the method sees the early exit of a plain comparison.
    let plain_first = median(15, || std::hint::black_box(&expected) == &first_byte);
    let plain_last = median(15, || std::hint::black_box(&expected) == &last_byte);
    assert!(
        plain_last > plain_first * 10,
        "the measurement can see an early exit ({plain_first:?} vs {plain_last:?})"
    );
    let ct_first = median(15, || constant_time_eq(&expected, &first_byte));
    let ct_last = median(15, || constant_time_eq(&expected, &last_byte));
    let ratio = ct_last.as_secs_f64() / ct_first.as_secs_f64();
    assert!(
        (0.5..2.0).contains(&ratio),
        "constant_time_eq: first-byte miss {ct_first:?}, last-byte miss {ct_last:?}"
    );
    assert!(constant_time_eq(b"same", b"same"));
    assert!(!constant_time_eq(b"same", b"samE"));
    assert!(!constant_time_eq(b"same", b"same-longer"));
}

#[test]
fn the_uninstall_signature_is_checked_with_an_hmac_verify() {
    use hmac::{KeyInit, Mac};
    // The hook's signature is hex HMAC-SHA256 of "{client_uuid}|{account_id}" keyed with the client
    // secret (CONTRACT §3); amocrm-client verifies it with `Mac::verify_slice` (constant time).
    let secret = "client-secret-for-the-hook";
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(b"client-uuid-1|12345");
    let good: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let check = |sig: &str| {
        amocrm_client::verify_disconnect_signature(
            "client-uuid-1",
            &secrecy::SecretString::from(secret.to_owned()),
            "client-uuid-1",
            "12345",
            sig,
        )
    };
    assert!(check(&good));
    assert!(check(&good.to_uppercase()), "hex case does not matter");
    let mut near = good.clone();
    near.replace_range(63..64, if good.ends_with('0') { "1" } else { "0" });
    assert!(!check(&near), "a near miss is refused");
    assert!(!check(""), "an empty signature is refused");
    assert!(!check(&good[..62]), "a truncated signature is refused");
}

/// Source lines that compare something secret with `==`/`!=` instead of a constant-time check.
fn plain_secret_comparisons(src: &str) -> Vec<String> {
    const SECRET_WORDS: &[&str] = &[
        "secret",
        "signature",
        "password",
        "csrf",
        "token_hash",
        "key_hash",
        "browser_hash",
        "expose_secret()",
    ];
    src.lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            !t.starts_with("//") && (t.contains(" == ") || t.contains(" != "))
        })
        .filter(|(_, l)| {
            let lower = l.to_lowercase();
            SECRET_WORDS.iter().any(|w| lower.contains(w))
                // Comparisons of lengths, emptiness and fixed names are not comparisons of secrets.
                && !lower.contains(".len()")
                && !lower.contains("is_empty")
                && !lower.contains("!= \"\"")
                && !lower.contains("== \"\"")
                && !lower.contains("\"secret\"")
                && !lower.contains("_secret.is_some")
        })
        .map(|(i, l)| format!("{}: {}", i + 1, l.trim()))
        .collect()
}

#[test]
fn no_source_file_compares_a_secret_with_plain_equality() {
    // A supplement to the checks above: a grep over the service and the client for `==` on secrets.
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    walk(&root.join("crates/amocrm-client/src"), &mut files);
    assert!(files.len() > 20, "the sources were found");
    let mut offenders = Vec::new();
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        // Unit tests inside the file may compare freely.
        let src = src.split("#[cfg(test)]").next().unwrap_or_default();
        for hit in plain_secret_comparisons(src) {
            offenders.push(format!("{}:{hit}", f.display()));
        }
    }
    assert!(
        offenders.is_empty(),
        "secrets compared with ==/!= (use domain::ids::constant_time_eq or an HMAC verify):\n{}",
        offenders.join("\n")
    );
    // And the grep itself finds what it looks for.
    assert_eq!(
        plain_secret_comparisons("if presented == settings.refresh_secret {").len(),
        1
    );
}

#[tokio::test]
async fn an_oversized_body_is_413_in_the_contract_format_on_every_route_family() {
    let app = spawn_app().await;
    let big = "x".repeat(300 * 1024);
    let json_body = format!("{{\"seller_id\": \"{big}\"}}");
    for path in [
        "/api/v1/sales/orders",
        "/api/v1/webhooks",
        "/api/v1/connect-sessions",
        "/api/auth/login",
        "/api/auth/refresh",
    ] {
        let resp = app
            .http
            .post(app.url(path))
            .bearer_auth(&app.api_key)
            .header("content-type", "application/json")
            .body(json_body.clone())
            .send()
            .await
            .expect("answer");
        assert_error(resp, 413, "BAD_REQUEST").await;
    }
    // A form page and the amoCRM intake.
    let form = format!("password={big}");
    for path in ["/dashboard/login", "/webhooks/amocrm/some-token"] {
        let resp = app
            .http
            .post(app.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
            .await
            .expect("answer");
        assert_eq!(resp.status().as_u16(), 413, "{path}");
    }
}

#[tokio::test]
async fn hsts_is_sent_only_when_the_public_address_is_https() {
    let plain = spawn_app().await;
    let resp = plain.get("/health").await;
    assert!(resp.headers().get("strict-transport-security").is_none());
    let tls = spawn_app_with(env_vars(&[(
        "PUBLIC_BASE_URL",
        "https://connector.example",
    )]))
    .await;
    for path in ["/health", "/api/v1/openapi.json", "/dashboard/login"] {
        let resp = tls.get(path).await;
        let hsts = header(&resp, "strict-transport-security");
        assert!(hsts.starts_with("max-age=31536000"), "{path}: {hsts:?}");
    }
}

#[tokio::test]
async fn a_trickled_body_is_cut_with_408_while_other_clients_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(env_vars(&[("REQUEST_BODY_TIMEOUT", "1s")])).await;
    let addr = format!("127.0.0.1:{}", app.port);
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/sales/orders HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{",
        app.api_key
    );
    slow.write_all(head.as_bytes()).await.expect("headers");
    let started = Instant::now();
    let trickle = async {
        // One byte every 200 ms: the body would take 40 s.
        for _ in 0..199 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.write_all(b" ").await.is_err() {
                break;
            }
        }
    };
    let served = async {
        // Meanwhile a normal client is answered at once.
        let t = Instant::now();
        let resp = app.get("/health").await;
        assert!(resp.status().is_success() || resp.status().as_u16() == 503);
        t.elapsed()
    };
    let (_, health_took) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), trickle),
        served
    );
    assert!(health_took < Duration::from_secs(1), "{health_took:?}");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "cut near the deadline: {:?}",
        started.elapsed()
    );
    let list = app.api_json("/api/v1/sales/orders").await;
    assert_eq!(list["meta"]["total"], 0, "nothing stored");
}
