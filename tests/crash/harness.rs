//! The real `amocrm-connector serve` binary as child processes behind a small TCP balancer, against an
//! in-process amoCRM sandbox, one database and a local event receiver; killed with SIGKILL and restarted.

use amocrm_connector::domain::status::ConnectionStatus;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use amocrm_connector::config::DatabaseUrl;
use amocrm_connector::services::api_keys::{self, Tier};
use amocrm_connector::storage::Db;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_sandbox::{Integration, Sandbox, SandboxConfig, SandboxHandle};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use crate::support::{
    Behaviour, Receiver, TestDatabase, browser_client, fresh_database, get_following_303,
    open_page, wait_until,
};

pub const CLIENT_ID: &str = "crash-client-id";
pub const CLIENT_SECRET: &str = "crash-client-secret-5b1d8e";
pub const REFRESH_SECRET: &str = "crash-refresh-secret-0c7e2a";
pub const RECEIVER_SECRET: &str = "crash-receiver-secret-91f3";

// ---------------------------------------------------------------------------------------------------

/// A round-robin TCP balancer in front of the instances: the one public address amoCRM, sellers and the
/// marketplace see. A connection to a dead instance is retried on the next.
pub struct Balancer {
    pub port: u16,
    backends: Arc<Mutex<Vec<u16>>>,
}

impl Balancer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let backends: Arc<Mutex<Vec<u16>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let b = backends.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (b, next) = (b.clone(), next.clone());
                tokio::spawn(async move {
                    let ports = b.lock().unwrap().clone();
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    for i in 0..ports.len() {
                        let p = ports[(start + i) % ports.len()];
                        if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", p)).await
                        {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                            return;
                        }
                    }
                });
            }
        });
        Self { port, backends }
    }

    pub fn set_backends(&self, ports: Vec<u16>) {
        *self.backends.lock().unwrap() = ports;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

// ---------------------------------------------------------------------------------------------------

/// One running `amocrm-connector serve`.
pub struct Service {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    child: Mutex<Child>,
}

/// How long a starting service may take to listen, and then to be healthy.
const START: Duration = Duration::from_secs(60);

impl Service {
    /// Fails the test with the log tail when the service exited before it was `what`.
    fn still_starting(&self, what: &str) {
        if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
            panic!(
                "{} exited with {status} before it was {what}:\n{}",
                self.name,
                tail(&self.log)
            );
        }
    }

    /// SIGKILL: no shutdown hook runs, leases stay taken, in-flight requests are cut.
    pub fn kill(&mut self) {
        let child = self.child.get_mut().unwrap();
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = child.kill();
        let _ = child.wait();
        // Marks the moment in the log, so anything this process had begun ends here.
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            use std::io::Write;
            let _ = writeln!(
                f,
                "{}",
                json!({"timestamp": chrono::Utc::now().to_rfc3339(), "message": "SIGKILL"})
            );
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Everything around the service: sandbox, database, balancer, receiver, keys and an API key.
pub struct World {
    pub sandbox: Arc<SandboxHandle>,
    pub database: TestDatabase,
    pub db: Db,
    pub key_entry: String,
    pub keys: Keyring,
    pub api_key: String,
    pub balancer: Balancer,
    pub receiver: Receiver,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub extra_env: HashMap<String, String>,
    starts: AtomicUsize,
}

/// The instances' logs live here; `CRASH_KEEP=1` keeps them after the test and prints where.
fn kept_dir() -> tempfile::TempDir {
    let mut dir = tempfile::tempdir().unwrap();
    if std::env::var_os("CRASH_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("logs kept in {}", dir.path().display());
    }
    dir
}

impl World {
    pub async fn new() -> Self {
        let sandbox = Sandbox::start(SandboxConfig::default())
            .await
            .expect("sandbox starts");
        let balancer = Balancer::start().await;
        sandbox.add_integration(
            Integration::new(
                CLIENT_ID.to_owned(),
                CLIENT_SECRET.to_owned(),
                format!("{}/oauth/amocrm/callback", balancer.url()),
            )
            .with_disconnect_url(format!("{}/oauth/amocrm/disconnect", balancer.url())),
        );
        let database = fresh_database();
        let db = Db::connect(&DatabaseUrl::parse(&database.url).unwrap(), 4).unwrap();
        db.migrate().await.unwrap();
        let (_, api_key) = api_keys::create(&db, "crash", Tier::Enterprise)
            .await
            .unwrap();
        let key_entry = Keyring::generate_entry("crash1");
        let keys = Keyring::parse(&key_entry).unwrap();
        let receiver = Receiver::start(RECEIVER_SECRET, Behaviour::Ok).await;
        Self {
            sandbox: Arc::new(sandbox),
            database,
            db,
            key_entry,
            keys,
            api_key,
            balancer,
            receiver,
            http: browser_client()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            dir: kept_dir(),
            extra_env: HashMap::new(),
            starts: AtomicUsize::new(0),
        }
    }

    /// The environment of instance `name` listening on `port`.
    pub fn env(&self, name: &str, port: u16) -> HashMap<String, String> {
        let mut env: HashMap<String, String> = [
            ("DATABASE_URL", self.database.url.clone()),
            ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
            ("PUBLIC_BASE_URL", self.balancer.url()),
            ("TOKEN_ENCRYPTION_KEYS", self.key_entry.clone()),
            ("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1".to_owned()),
            ("AMOCRM_CLIENT_ID", CLIENT_ID.to_owned()),
            ("AMOCRM_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
            (
                "AMOCRM_ACCOUNT_URL_TEMPLATE",
                self.sandbox.account_url_template(),
            ),
            ("AMOCRM_AUTHORIZE_URL", self.sandbox.authorize_url()),
            ("REFRESH_SECRET", REFRESH_SECRET.to_owned()),
            // Every instance sweeps every two seconds: sweeps overlap on purpose.
            ("REFRESH_SCHEDULE", "*/2 * * * * *".to_owned()),
            ("LOG_FORMAT", "json".to_owned()),
            ("RUN_WORKERS", "true".to_owned()),
            ("INSTANCE_ID", name.to_owned()),
            ("SHUTDOWN_TIMEOUT", "2s".to_owned()),
            // The sandbox is local: short amoCRM timeouts keep the leases a killed process leaves short.
            ("AMOCRM_REQUEST_TIMEOUT", "2s".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Ok(filter) = std::env::var("CRASH_RUST_LOG") {
            env.insert("RUST_LOG".into(), filter);
        }
        env.extend(self.extra_env.clone());
        env
    }

    /// Starts instance `name` on a fresh port and waits until its `/health` is 200.
    pub async fn start(&self, name: &str) -> Service {
        // The service binds a port of its own choosing (port 0) and logs it: a port picked here and
        // released could be taken by another test's process before the service binds it.
        let port = 0;
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.path().join(format!("{n:03}-{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_amocrm-connector"))
            .arg("serve")
            .env_clear()
            .envs(self.env(name, port))
            // No `.env` of a developer's checkout is read: the working directory is empty.
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("the service binary starts");
        let mut svc = Service {
            name: name.to_owned(),
            port,
            log,
            child: Mutex::new(child),
        };
        svc.port = wait_until(START, &format!("{name} listening"), || async {
            svc.still_starting("listening");
            serving_port(&svc.log)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", tail(&svc.log)));
        let health = svc.url("/health");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        wait_until(START, &format!("{name} healthy"), || async {
            svc.still_starting("healthy");
            matches!(http.get(&health).send().await, Ok(r) if r.status().as_u16() == 200)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}:\n{}", tail(&svc.log)));
        svc
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.balancer.url())
    }

    /// A call to `/api/v1…` through the balancer; `None` when the answer was lost to a crash.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Option<(u16, Value)> {
        self.try_api(method, path, body).await.ok()
    }

    /// A call to `/api/v1…` through the balancer; the error says how the answer was lost.
    async fn try_api(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self
            .http
            .request(method.parse().unwrap(), self.url(path))
            .bearer_auth(&self.api_key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| format!("sending: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// A set-up call (nothing is being killed): an answer lost on the way is asked again, twice; if it is
    /// still lost, the failure names the error and shows every instance's last log lines.
    pub async fn setup_api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut last_error = String::new();
        for _ in 0..3 {
            match self.try_api(method, path, body).await {
                Ok(answer) => return answer,
                Err(e) => last_error = e,
            }
            println!("set-up call {method} {path} lost ({last_error}); asking again");
        }
        panic!(
            "set-up call {method} {path} failed: {last_error}\n{}",
            all_tails(self)
        );
    }

    /// Connects `seller` to the sandbox account `host` click by click, through the balancer.
    pub async fn connect(&self, seller: &str, host: &str) {
        self.sandbox.add_account(host);
        let (status, session) = self
            .setup_api(
                "POST",
                "/api/v1/connect-sessions",
                Some(&json!({"seller_id": seller})),
            )
            .await;
        assert_eq!(status, 201, "{session}");
        let (popup, _) =
            open_page(&self.http, session["data"]["connect_url"].as_str().unwrap()).await;
        let callback = self.sandbox.approve(&popup, host).unwrap();
        // The callback redirects to its result page, as a browser follows it.
        let resp = get_following_303(&self.http, &callback).await;
        assert_eq!(resp.status().as_u16(), 200, "{seller} connects");
    }

    /// Subscribes the receiver to every event.
    pub async fn subscribe_receiver(&self) {
        let (status, body) = self
            .setup_api(
                "POST",
                "/api/v1/webhooks",
                Some(&json!({
                    "url": self.receiver.url,
                    "events": ["*"],
                    "secret": RECEIVER_SECRET,
                    "active": true
                })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Makes every active connection's access token due for refresh (as if a day had passed).
    pub async fn make_tokens_due(&self) {
        use amocrm_connector::storage::schema::amocrm_connections as c;
        use diesel::prelude::*;
        let at = amocrm_connector::storage::now() + chrono::Duration::seconds(60);
        let _ = self
            .db
            .run(move |conn| {
                diesel::update(c::table.filter(c::status.eq("active")))
                    .set((
                        c::token_expires_at.eq(Some(at)),
                        c::next_refresh_at.eq(None::<chrono::NaiveDateTime>),
                    ))
                    .execute(conn)
                    .map_err(Into::into)
            })
            .await;
    }

    /// Every connection in the database.
    pub async fn connections(&self) -> Vec<amocrm_connector::storage::connections::Connection> {
        self.db
            .run(|c| amocrm_connector::storage::connections::list(c, None, 0, 10_000))
            .await
            .unwrap()
            .0
    }

    /// The connection works: it is active, and its stored access token is accepted by amoCRM.
    pub async fn assert_connection_works(&self, seller: &str) {
        let conns = self.connections().await;
        let c = conns
            .iter()
            .find(|c| c.seller_id == seller)
            .unwrap_or_else(|| panic!("{seller} has a connection"));
        assert_eq!(
            c.status,
            ConnectionStatus::Active,
            "{seller}: {:?}",
            c.last_error
        );
        let token = c.access_token(&self.keys).unwrap().expect("a stored token");
        // The service shares the account's 7 rps with this call: a 429 is waited out, never a 401.
        let url = format!("{}/api/v4/account", self.sandbox.account_url(&c.host));
        let status = wait_until(
            Duration::from_secs(20),
            "an answer other than 429",
            || async {
                let s = reqwest::Client::new()
                    .get(&url)
                    .bearer_auth(token.expose_secret())
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                (s != 429).then_some(s)
            },
        )
        .await;
        assert!(
            matches!(status, Ok(200)),
            "{seller}: the stored access token works ({status:?})"
        );
    }
}

/// The port a service logged it is serving on (its JSON line `"message":"serving","port":…`).
fn serving_port(log: &std::path::Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "serving")
        .and_then(|v| v["port"].as_u64())
        .and_then(|p| u16::try_from(p).ok())
}

/// Every instance's last log lines, for a failure message.
pub fn all_tails(world: &World) -> String {
    let mut out = String::new();
    if let Ok(dir) = std::fs::read_dir(world.dir.path()) {
        let mut paths: Vec<_> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            out.push_str(&format!("--- {}\n{}\n", p.display(), tail(p)));
        }
    }
    out
}

/// The last lines of a log file, for failure messages.
pub fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Every log line every instance wrote.
pub fn all_logs(world: &World) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(world.dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") {
            out.extend(std::fs::read(&p).unwrap());
        }
    }
    out
}

/// Counts by state of the work tables, for failure messages.
pub async fn summary(world: &World) -> String {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Text};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        k: String,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let queries = [
        "SELECT 'inbox ' || state || ' ' || COALESCE(lease_owner, '-') AS k, COUNT(*) AS n FROM amocrm_webhook_inbox GROUP BY state, lease_owner",
        "SELECT 'event ' || event AS k, COUNT(*) AS n FROM events GROUP BY event",
        "SELECT 'delivery ' || state || ' ' || COALESCE(lease_owner, '-') AS k, COUNT(*) AS n FROM event_deliveries GROUP BY state, lease_owner",
        "SELECT 'order ' || sync_state AS k, COUNT(*) AS n FROM orders GROUP BY sync_state",
        "SELECT 'lease ' || name || ' ' || COALESCE(owner, '-') AS k, COUNT(*) AS n FROM job_leases GROUP BY name, owner",
        "SELECT 'unsynced ' || seller_id || ' attempts ' || CAST(sync_attempts AS TEXT) || ' lease ' || COALESCE(lease_owner, '-') || ' next ' || CAST(next_attempt_at AS TEXT) || ' error ' || COALESCE(last_error, '-') AS k, COUNT(*) AS n FROM orders WHERE sync_state <> 'synced' GROUP BY seller_id, sync_attempts, lease_owner, next_attempt_at, last_error",
        "SELECT 'connection ' || seller_id || ' ' || status || ' expires ' || COALESCE(CAST(token_expires_at AS TEXT), '-') || ' push lease ' || COALESCE(push_lease_owner, '-') || ' until ' || COALESCE(CAST(push_lease_until AS TEXT), '-') || ' refresh failures ' || CAST(refresh_failures AS TEXT) || ' next refresh ' || COALESCE(CAST(next_refresh_at AS TEXT), '-') || ' refresh lease ' || COALESCE(refresh_lease_owner, '-') || ' until ' || COALESCE(CAST(refresh_lease_until AS TEXT), '-') || ' error ' || COALESCE(last_error, '-') AS k, CAST(1 AS BIGINT) AS n FROM amocrm_connections",
        "SELECT 'turn ' || account_key || ' ' || COALESCE(owner, '-') || ' until ' || COALESCE(CAST(lease_until AS TEXT), '-') || ' wanted ' || COALESCE(CAST(wanted_at AS TEXT), '-') AS k, CAST(1 AS BIGINT) AS n FROM amocrm_account_turns",
        "SELECT 'step ' || step || ' ' || state AS k, COUNT(*) AS n FROM order_steps GROUP BY step, state",
    ];
    let mut out = String::new();
    for q in queries {
        let rows: Result<Vec<Row>, _> = world
            .db
            .run(move |c| match c {
                amocrm_connector::storage::AnyConnection::Sqlite(c) => {
                    diesel::sql_query(q).load(c).map_err(Into::into)
                }
                amocrm_connector::storage::AnyConnection::Postgresql(c) => {
                    diesel::sql_query(q).load(c).map_err(Into::into)
                }
            })
            .await;
        match rows {
            Ok(rows) => {
                for r in rows {
                    out.push_str(&format!("{}: {}\n", r.k, r.n));
                }
            }
            Err(e) => out.push_str(&format!("{q}: {e}\n")),
        }
    }
    let failed_webhooks = world.sandbox.deliveries().iter().filter(|d| !d.ok).count();
    out.push_str(&format!(
        "sandbox webhooks: {} sent, {failed_webhooks} failed\n",
        world.sandbox.deliveries().len()
    ));
    out
}

/// Every refresh sweep every process ran, as (log file, start, end): a sweep cut by SIGKILL ends at the
/// kill, one still running ends now.
pub fn sweep_intervals(
    world: &World,
) -> Vec<(
    String,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(world.dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let mut open = None;
        for line in std::fs::read_to_string(&p).unwrap_or_default().lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(ts) = v["timestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
            else {
                continue;
            };
            match v["message"].as_str().unwrap_or_default() {
                "refresh sweep started" => {
                    assert!(open.is_none(), "{name}: a sweep started inside a sweep");
                    open = Some(ts);
                }
                m if m.starts_with("refresh sweep finished") || m == "SIGKILL" => {
                    if let Some(start) = open.take() {
                        out.push((name.clone(), start, ts));
                    }
                }
                _ => {}
            }
        }
        if let Some(start) = open {
            out.push((name, start, chrono::Utc::now()));
        }
    }
    out.sort_by_key(|(_, start, _)| *start);
    out
}

/// Asserts that no two sweeps (of any processes) overlapped in time; returns how many ran.
pub fn assert_sweeps_never_overlapped(world: &World) -> usize {
    let sweeps = sweep_intervals(world);
    for pair in sweeps.windows(2) {
        let ((a, _, a_end), (b, b_start, _)) = (&pair[0], &pair[1]);
        assert!(
            b_start >= a_end,
            "two sweeps at once: {a} until {a_end}, {b} from {b_start}\n{a}:\n{}\n{b}:\n{}",
            tail(&world.dir.path().join(a)),
            tail(&world.dir.path().join(b))
        );
    }
    sweeps.len()
}
