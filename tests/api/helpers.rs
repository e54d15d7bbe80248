//! The test harness: `spawn_app()` starts the real service on a free port with a database of its own.
//!
//! SQLite by default (a temp file per test); PostgreSQL when `TEST_DATABASE_URL` is set, with a fresh
//! schema per test, so tests never share state and can run in parallel.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::web::Data;
use amocrm_connector::app::{AppState, Application};
use amocrm_connector::config::Settings;
use amocrm_connector::services::api_keys::{self, Tier};
use amocrm_connector::storage::Db;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_sandbox::{Integration, Sandbox, SandboxConfig, SandboxHandle};
use diesel::Connection;
use diesel::connection::SimpleConnection;

pub struct TestApp {
    /// Shared when several instances run against one sandbox (`spawn_peer`).
    pub sandbox: Arc<SandboxHandle>,
    pub address: String,
    pub port: u16,
    pub db: Db,
    pub state: Data<AppState>,
    pub api_key: String,
    pub http: reqwest::Client,
    pub env: HashMap<String, String>,
    pub database: TestDatabase,
    /// Starts the graceful shutdown SIGTERM would start; `stopped` resolves when it is done.
    pub shutdown: amocrm_connector::app::ShutdownTrigger,
    pub stopped: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<std::io::Result<()>>>>>,
}

/// Where a test's data lives; dropped with the test.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
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
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((admin_url, schema)) = self.pg_schema.take()
            && let Ok(mut c) = diesel::PgConnection::establish(&admin_url)
        {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

/// A fresh, empty database: a SQLite file, or a new PostgreSQL schema when `TEST_DATABASE_URL` is set.
pub fn fresh_database() -> TestDatabase {
    match std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(admin_url) => {
            let schema = format!(
                "t_{}",
                amocrm_connector::domain::ids::random_token(12).to_lowercase()
            );
            let mut c =
                diesel::PgConnection::establish(&admin_url).expect("TEST_DATABASE_URL reachable");
            c.batch_execute(&format!("CREATE SCHEMA {schema}"))
                .expect("create schema");
            let sep = if admin_url.contains('?') { '&' } else { '?' };
            TestDatabase {
                url: format!("{admin_url}{sep}options=-csearch_path%3D{schema}"),
                _dir: None,
                pg_schema: Some((admin_url, schema)),
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
    env
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
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .cookie_store(true)
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
    }
}

impl TestApp {
    /// A second instance of the service on the same database, sandbox, keys and integration (its own port
    /// and instance id), as in a multi-instance deployment.
    pub async fn spawn_peer(&self) -> TestApp {
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
        spawn_app_with_sandbox(self.database.shared(), env, self.sandbox.clone()).await
    }

    /// Stops this instance as SIGTERM would (graceful: workers finish or release their leases) and waits.
    pub async fn stop(&self) {
        self.shutdown.trigger();
        if let Some(handle) = self.stopped.lock().await.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(60), handle).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A GET on `/api/v1…` with the test's API key.
    pub async fn api_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("request")
    }

    pub async fn api_post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.api_key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn api_key_with_tier(&self, tier: Tier) -> String {
        api_keys::create(&self.db, "tiered", tier)
            .await
            .expect("api key")
            .1
    }
}

/// Asserts the contract's error body and returns it.
pub async fn assert_error(resp: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(resp.status().as_u16(), status, "status");
    let request_id = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("X-Request-Id header");
    let body: serde_json::Value = resp.json().await.expect("JSON error body");
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
