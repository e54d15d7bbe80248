//! The test app: `spawn_app()` starts the real service on a free port with a database of its own.
//!
//! SQLite by default (a temp file per test); PostgreSQL when `TEST_DATABASE_URL` is set, with a fresh
//! schema per test, so tests never share state and can run in parallel.
//!
//! A test app checks on drop that the work queues hold nothing: no queued order, pending stage move or
//! lead step, no unprocessed amoCRM webhook body. A test that leaves work there on purpose says so with
//! [`TestApp::leaves_queued`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amocrm_connector::app::Application;
use amocrm_connector::config::Settings;
use amocrm_connector::domain::status::InboxState;
use amocrm_connector::services::Context;
use amocrm_connector::services::api_keys::{self, Tier};
use amocrm_connector::services::order_push;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_connector::storage::{AnyConnection, Db, StorageError};
use amocrm_sandbox::{Faults, Integration, Sandbox, SandboxConfig, SandboxHandle};
use diesel::RunQueryDsl;
use diesel::query_builder::{AsChangeset, AsQuery, IntoUpdateTarget, UpdateStatement};
use diesel::query_dsl::methods::ExecuteDsl;
use reqwest::{Method, Response};
use serde_json::Value;

use super::pg_schema::PgSchema;
use super::receiver::{Behaviour, Receiver};

pub struct TestApp {
    /// Shared when several instances run against one sandbox (`spawn_peer`).
    pub sandbox: Arc<SandboxHandle>,
    pub address: String,
    pub port: u16,
    pub db: Db,
    pub state: Arc<Context>,
    pub api_key: String,
    pub http: reqwest::Client,
    pub env: HashMap<String, String>,
    pub database: TestDatabase,
    /// Starts the graceful shutdown SIGTERM would start; `stopped` resolves when it is done.
    pub shutdown: amocrm_connector::app::ShutdownTrigger,
    pub stopped: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>>,
    /// The queues this test leaves work in on purpose, and why.
    leftovers: Mutex<Vec<(Queue, &'static str)>>,
}

/// A work queue the drop check of a [`TestApp`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Queued orders, pending stage moves and lead steps (`services::order_push::backlog`).
    Push,
    /// amoCRM webhook bodies stored and not yet processed (`pending` in the inbox).
    Inbox,
}

/// Where a test's data lives; dropped with the test.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<PgSchema>,
}

impl TestDatabase {
    /// The same database for another instance; the original keeps ownership (drop it last).
    pub fn shared(&self) -> TestDatabase {
        TestDatabase {
            url: self.url.clone(),
            _dir: None,
            pg_schema: None,
        }
    }

    /// Whether this is the database's owner (not a `shared` view of another instance's).
    fn owned(&self) -> bool {
        self._dir.is_some() || self.pg_schema.is_some()
    }
}

/// A fresh, empty database: a SQLite file, or a new PostgreSQL schema when `TEST_DATABASE_URL` is set.
pub fn fresh_database() -> TestDatabase {
    match std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(admin_url) => {
            let schema = PgSchema::create(&admin_url, "t");
            TestDatabase {
                url: schema.url(),
                _dir: None,
                pg_schema: Some(schema),
            }
        }
        None => {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("test.db");
            TestDatabase {
                url: format!("sqlite://{}", path.display()),
                _dir: Some(dir),
                pg_schema: None,
            }
        }
    }
}

/// The environment every test app starts from; tests override single variables.
pub fn base_env(db_url: &str) -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert("DATABASE_URL".into(), db_url.to_owned());
    env.insert("LISTEN_ADDR".into(), "127.0.0.1:0".into());
    env.insert(
        "TOKEN_ENCRYPTION_KEYS".into(),
        Keyring::generate_entry("test1"),
    );
    env.insert("AMOCRM_CLIENT_ID".into(), "test-client-id".into());
    env.insert(
        "AMOCRM_CLIENT_SECRET".into(),
        "test-client-secret-value".into(),
    );
    env.insert("REFRESH_SCHEDULE".into(), String::new());
    env.insert("LOG_FORMAT".into(), "json".into());
    // Tests drive the workers' run_once steps themselves; a test that wants the loops turns this on.
    env.insert("RUN_WORKERS".into(), "false".into());
    // Receivers listen on this machine.
    env.insert("WEBHOOK_ALLOWED_HOSTS".into(), "127.0.0.1".into());
    env
}

/// For `spawn_app_with`: sets each (variable, value) of `vars`.
pub fn env_vars(vars: &[(&str, &str)]) -> impl FnOnce(&mut HashMap<String, String>) + use<> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |env| env.extend(vars)
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the service with the base environment changed by `customize`.
pub async fn spawn_app_with(customize: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
    let database = fresh_database();
    let mut env = base_env(&database.url);
    customize(&mut env);
    spawn_app_on(database, env).await
}

/// Starts the service on a given database and environment (several instances may share one database).
pub async fn spawn_app_on(database: TestDatabase, env: HashMap<String, String>) -> TestApp {
    let sandbox = Sandbox::start(SandboxConfig::default())
        .await
        .expect("sandbox starts");
    spawn_app_with_sandbox(database, env, sandbox).await
}

/// Starts the service against a sandbox configured as `sandbox`, on the base environment.
pub async fn spawn_app_against(sandbox: SandboxConfig) -> TestApp {
    let database = fresh_database();
    let env = base_env(&database.url);
    let sandbox = Sandbox::start(sandbox).await.expect("sandbox starts");
    spawn_app_with_sandbox(database, env, sandbox).await
}

/// Starts the service against a given sandbox: the app's port is bound first so the redirect URI and the
/// webhook destinations name it, then the integration is registered in the sandbox.
pub async fn spawn_app_with_sandbox(
    database: TestDatabase,
    mut env: HashMap<String, String>,
    sandbox: impl Into<Arc<SandboxHandle>>,
) -> TestApp {
    let sandbox: Arc<SandboxHandle> = sandbox.into();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("local addr").port();
    let base = format!("http://127.0.0.1:{port}");
    env.insert("LISTEN_ADDR".into(), format!("127.0.0.1:{port}"));
    env.entry("PUBLIC_BASE_URL".into())
        .or_insert_with(|| base.clone());
    env.insert(
        "AMOCRM_ACCOUNT_URL_TEMPLATE".into(),
        sandbox.account_url_template(),
    );
    env.insert("AMOCRM_AUTHORIZE_URL".into(), sandbox.authorize_url());
    let settings = Settings::from_env(&env).expect("valid test settings");
    sandbox.add_integration(
        Integration::new(
            env["AMOCRM_CLIENT_ID"].clone(),
            env["AMOCRM_CLIENT_SECRET"].clone(),
            settings.amocrm_redirect_uri.to_string(),
        )
        .with_disconnect_url(format!("{}/oauth/amocrm/disconnect", settings.base_url())),
    );
    let app = Application::build_with_listener(settings, Some(listener))
        .await
        .expect("app builds");
    let port = app.port();
    let state = app.state.clone();
    let db = state.db.clone();
    let shutdown = app.shutdown_trigger();
    let stopped = Arc::new(tokio::sync::Mutex::new(Some(tokio::spawn(
        app.run_until_stopped(),
    ))));
    let (_, api_key) = api_keys::create(&db, "test", Tier::Standard)
        .await
        .expect("api key");
    let http = super::connect::browser_client()
        // The service closes a keep-alive connection after 5 s idle; a request sent on it at that moment is
        // cut (`IncompleteMessage`). The client lets idle connections go first.
        .pool_idle_timeout(std::time::Duration::from_secs(2))
        .build()
        .expect("http client");
    TestApp {
        sandbox,
        address: format!("http://127.0.0.1:{port}"),
        port,
        db,
        state,
        api_key,
        http,
        env,
        database,
        shutdown,
        stopped,
        leftovers: Mutex::default(),
    }
}

impl TestApp {
    /// A second instance of the service on the same database, sandbox, keys and integration (its own port
    /// and instance id), as in a multi-instance deployment.
    pub async fn spawn_peer(&self) -> TestApp {
        self.spawn_peer_with(|_| {}).await
    }

    /// A second instance as [`TestApp::spawn_peer`], its environment changed by `customize`.
    pub async fn spawn_peer_with(
        &self,
        customize: impl FnOnce(&mut HashMap<String, String>),
    ) -> TestApp {
        let mut env = self.env.clone();
        env.remove("LISTEN_ADDR");
        env.remove("PUBLIC_BASE_URL");
        env.insert(
            "AMOCRM_REDIRECT_URI".into(),
            self.state.settings.amocrm_redirect_uri.to_string(),
        );
        env.insert(
            "INSTANCE_ID".into(),
            format!("peer-{}", amocrm_connector::domain::ids::random_token(6)),
        );
        customize(&mut env);
        spawn_app_with_sandbox(self.database.shared(), env, self.sandbox.clone()).await
    }

    /// Stops this instance as SIGTERM would (graceful: workers finish or release their leases) and waits.
    pub async fn stop(&self) {
        self.shutdown.trigger();
        if let Some(handle) = self.stopped.lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_secs(60), handle).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request to this instance with `bearer` (or no) authorization and a JSON `body` (or none).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Response {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        req.send().await.expect("request")
    }

    /// A GET of an absolute `url` (a link, a redirect) by the test's browser, which keeps its cookies.
    pub async fn browse(&self, url: &str) -> Response {
        self.http.get(url).send().await.expect("request")
    }

    /// A GET without credentials.
    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path, None, None).await
    }

    /// A POST of JSON without credentials (sign-in, token refresh).
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.request(Method::POST, path, None, Some(body)).await
    }

    /// A POST to `/api…` with the test's API key of `text` as it is, declared JSON (malformed bodies).
    pub async fn api_post_text(&self, path: &str, text: &'static str) -> Response {
        self.post_raw(path, Some(&self.api_key), "application/json", text)
            .await
    }

    /// A GET with another bearer token than the test's API key.
    pub async fn get_as(&self, path: &str, bearer: &str) -> Response {
        self.request(Method::GET, path, Some(bearer), None).await
    }

    /// A POST of `body` as it is, labelled `content_type`, with `bearer` (or no) authorization.
    pub async fn post_raw(
        &self,
        path: &str,
        bearer: Option<&str>,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> Response {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        req.send().await.expect("request")
    }

    /// A call to `/api…` with the test's API key.
    pub async fn api(&self, method: Method, path: &str, body: Option<&Value>) -> Response {
        self.request(method, path, Some(&self.api_key), body).await
    }

    /// A GET on `/api/v1…` with the test's API key.
    pub async fn api_get(&self, path: &str) -> Response {
        self.api(Method::GET, path, None).await
    }

    /// A GET on `/api/v1…` with the test's API key; the answer's JSON body, whatever its status.
    pub async fn api_json(&self, path: &str) -> Value {
        self.api_get(path)
            .await
            .json()
            .await
            .expect("a JSON answer")
    }

    pub async fn api_post(&self, path: &str, body: &Value) -> Response {
        self.api(Method::POST, path, Some(body)).await
    }

    /// A POST without a body (retries, refreshes).
    pub async fn api_post_empty(&self, path: &str) -> Response {
        self.api(Method::POST, path, None).await
    }

    pub async fn api_patch(&self, path: &str, body: &Value) -> Response {
        self.api(Method::PATCH, path, Some(body)).await
    }

    pub async fn api_delete(&self, path: &str) -> Response {
        self.api(Method::DELETE, path, None).await
    }

    /// Subscribes `url` to `events` with `secret`; returns the subscription id.
    /// A receiver started with `secret` and `behaviour`, subscribed to `events` with that same secret (so
    /// it can check the signatures): the receiver and the subscription's id.
    pub async fn subscribed_receiver(
        &self,
        secret: &str,
        behaviour: Behaviour,
        events: Value,
    ) -> (Receiver, String) {
        let receiver = Receiver::start(secret, behaviour).await;
        let id = self.subscribe(&receiver.url, events, secret).await;
        (receiver, id)
    }

    pub async fn subscribe(&self, url: &str, events: Value, secret: &str) -> String {
        let resp = self
            .api_post(
                "/api/v1/webhooks",
                &serde_json::json!({"url": url, "events": events, "secret": secret, "active": true}),
            )
            .await;
        assert_eq!(resp.status().as_u16(), 201);
        let body: Value = resp.json().await.expect("JSON");
        body["data"]["id"].as_str().expect("an id").to_owned()
    }

    /// Every operation of the served API document: (method in lower case, path, the operation).
    pub async fn document_operations(&self) -> Vec<(String, String, Value)> {
        let doc: Value = self
            .get("/api/v1/openapi.json")
            .await
            .json()
            .await
            .expect("the document is JSON");
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    pub async fn api_key_with_tier(&self, tier: Tier) -> String {
        api_keys::create(&self.db, "tiered", tier)
            .await
            .expect("api key")
            .1
    }

    /// Sets the faults the sandbox account `host` injects: the defaults changed by `change`.
    pub fn set_faults(&self, host: &str, change: impl FnOnce(&mut Faults)) {
        let mut faults = Faults::default();
        change(&mut faults);
        self.sandbox.set_faults(host, faults);
    }

    /// Runs the test's own statement against the database (fixtures, moving time); panics on an error.
    pub async fn sql<T, F>(&self, statement: F) -> T
    where
        T: Send + 'static,
        F: Fn(&mut AnyConnection) -> diesel::QueryResult<T> + Send + 'static,
    {
        self.db
            .run(move |c| statement(c).map_err(StorageError::from))
            .await
            .expect("the test's statement")
    }

    /// `UPDATE target SET changes`: how a test moves a deadline or plants a stored value on the rows it
    /// names (every row of a table, or a filtered table). Returns how many rows changed.
    pub async fn update<T, V>(&self, target: T, changes: V) -> usize
    where
        T: IntoUpdateTarget + Clone + Send + 'static,
        V: AsChangeset<Target = T::Table> + Clone + Send + 'static,
        UpdateStatement<T::Table, T::WhereClause, V::Changeset>:
            AsQuery + ExecuteDsl<AnyConnection>,
    {
        self.sql(move |c| {
            diesel::update(target.clone())
                .set(changes.clone())
                .execute(c)
        })
        .await
    }

    /// Declares that the test leaves work in `queue` on purpose (`why` says which and why): the drop check
    /// leaves that queue alone.
    pub fn leaves_queued(&self, queue: Queue, why: &'static str) {
        self.leftovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((queue, why));
    }

    /// The queues the drop check still looks at.
    fn checked_queues(&self) -> Vec<Queue> {
        let left = self.leftovers.lock().unwrap_or_else(|e| e.into_inner());
        [Queue::Push, Queue::Inbox]
            .into_iter()
            .filter(|q| left.iter().all(|(l, _)| l != q))
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // A failing test has already said what went wrong; and only the database's owner checks it (a
        // peer's queues are the first instance's).
        if std::thread::panicking() || !self.database.owned() {
            return;
        }
        let queues = self.checked_queues();
        if queues.is_empty() {
            return;
        }
        // Drop cannot await: the queues are read on a runtime of its own, on a thread of its own (the
        // test's runtime may be the current thread, blocked right here).
        let (state, sandbox) = (self.state.clone(), self.sandbox.clone());
        let found = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(unfinished_work(&state, &sandbox, &queues))
        })
        .join()
        .unwrap_or_else(|_| Err("the check itself panicked".to_owned()));
        match found {
            Ok(work) if work.is_empty() => {}
            Ok(work) => panic!(
                "the test left work queued: {}; finish it, or declare it with \
                 `app.leaves_queued(Queue::…, why)` (declared so far: {:?})",
                work.join(", "),
                self.leftovers.lock().unwrap_or_else(|e| e.into_inner())
            ),
            Err(e) => panic!("the queues could not be checked: {e}"),
        }
    }
}

/// What is still waiting in `queues`, in words (empty when nothing is).
async fn unfinished_work(
    state: &Context,
    sandbox: &SandboxHandle,
    queues: &[Queue],
) -> Result<Vec<String>, String> {
    let mut work = Vec::new();
    if queues.contains(&Queue::Push) {
        let (orders, moves) = order_push::backlog(state)
            .await
            .map_err(|e| e.to_string())?;
        if orders > 0 {
            work.push(format!("queued orders: {orders}"));
        }
        if moves > 0 {
            work.push(format!("pending stage moves and lead steps: {moves}"));
        }
    }
    if queues.contains(&Queue::Inbox) {
        // Webhooks amoCRM is still sending land in the inbox first.
        let _ = tokio::time::timeout(Duration::from_secs(10), sandbox.webhooks_idle()).await;
        let bodies = state
            .db
            .run(|c| {
                use amocrm_connector::storage::schema::amocrm_webhook_inbox as i;
                use diesel::prelude::*;
                Ok(i::table
                    .filter(i::state.eq(InboxState::Pending))
                    .count()
                    .get_result::<i64>(c)?)
            })
            .await
            .map_err(|e| e.to_string())?;
        if bodies > 0 {
            work.push(format!("unprocessed amoCRM webhook bodies: {bodies}"));
        }
    }
    Ok(work)
}

/// The text of `resp`'s header `name`, empty when it is missing or not text (what is asserted of it then
/// fails, with the test's own message).
pub fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The string `field` of each object in the JSON array `items` (objects without it are passed over).
pub fn strings_of<'a>(items: &'a Value, field: &'a str) -> impl Iterator<Item = &'a str> {
    items
        .as_array()
        .expect("a JSON array")
        .iter()
        .filter_map(move |item| item[field].as_str())
}

/// Asserts the contract's error body and returns it.
pub async fn assert_error(resp: Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("X-Request-Id header");
    let body: Value = resp.json().await.expect("JSON error body");
    let err = &body["error"];
    assert_eq!(err["code"], code, "code in {body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message in {body}"
    );
    assert!(err["details"].is_object(), "details in {body}");
    assert_eq!(
        err["request_id"],
        request_id.as_str(),
        "request_id matches header"
    );
    let ts = err["timestamp"].as_str().expect("timestamp");
    chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339 timestamp");
    body
}
