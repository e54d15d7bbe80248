//! What the marketplace-scale benchmarks share: a fresh database, the service started as a library with
//! its workers, sellers seeded in bulk (accounts in the sandbox, connection rows in batches), figures of
//! the process (resident memory, CPU time) and percentiles.
#![allow(dead_code, reason = "each benchmark uses a part")]

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use amocrm_connector::app::Application;
use amocrm_connector::config::Settings;
use amocrm_connector::storage::cipher::Keyring;
use amocrm_connector::storage::connections::seal_tokens;
use amocrm_connector::storage::schema::{amocrm_connections as c, seller_settings as ss};
use amocrm_connector::storage::{self as st, Db, StorageError};
use amocrm_sandbox::{Integration, Sandbox, SandboxHandle};
use diesel::prelude::*;
use pg_schema::PgSchema;

#[path = "../../tests/support/pg_schema.rs"]
mod pg_schema;

/// The SQLite database file inside a fresh database's temporary folder.
const SQLITE_FILE: &str = "bench.db";

pub const CLIENT_ID: &str = "bench-client";
pub const CLIENT_SECRET: &str = "bench-client-secret";

/// `--name VALUE` from the command line.
pub fn arg(name: &str) -> Option<String> {
    let raw: Vec<String> = std::env::args().collect();
    raw.iter()
        .position(|a| a == name)
        .and_then(|i| raw.get(i + 1))
        .cloned()
}

pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// `--name 1,2,3` as numbers.
pub fn list(name: &str) -> Option<Vec<usize>> {
    arg(name).map(|v| {
        v.split(',')
            .filter_map(|x| x.trim().replace('_', "").parse().ok())
            .collect()
    })
}

/// Quick runs (smaller sizes) while developing: `--quick` or `BENCH_QUICK=1`.
pub fn quick() -> bool {
    flag("--quick") || std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("{cpus} cores, {model}; load average {load}; commit {commit}")
}

/// Logs go to stderr at `RUST_LOG`, or at `default` when it is unset: stdout carries only the figures.
pub fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// SQLite, then PostgreSQL when `BENCH_DATABASE_URL` names a server and `--sqlite-only` is not given.
pub fn backends() -> Vec<Option<String>> {
    match pg_url() {
        Some(pg) if !flag("--sqlite-only") => vec![None, Some(pg)],
        _ => vec![None],
    }
}

/// A sandbox with no accounts (each benchmark adds its own) answering on `workers` threads, at amoCRM's
/// 7 requests/s per account.
pub async fn sandbox(workers: usize) -> SandboxHandle {
    Sandbox::start(amocrm_sandbox::SandboxConfig {
        accounts: Vec::new(),
        workers,
        ..amocrm_sandbox::SandboxConfig::default()
    })
    .await
    .expect("sandbox")
}

/// Seller `i`'s account, added to the sandbox with a grant to our integration: its host, the tokens and
/// the account's first pipeline.
fn granted_account(
    sandbox: &SandboxHandle,
    i: usize,
) -> (String, amocrm_sandbox::TokenPair, amocrm_sandbox::Pipeline) {
    let host = host(i);
    sandbox.add_account(&host);
    let pair = sandbox.issue_tokens(CLIENT_ID, &host);
    let p = sandbox
        .pipelines(&host)
        .into_iter()
        .next()
        .expect("pipeline");
    (host, pair, p)
}

/// The floor under the service: the amoCRM client alone sends `orders` plain leads, dealt round the
/// `sellers` accounts it adds to `sandbox`, in the push's batches (≤ 50 leads per call), every account at
/// once, with no database and no service logic. Returns the seconds the sending took.
pub async fn bare_client(sandbox: &SandboxHandle, sellers: usize, orders: usize) -> f64 {
    let mut cfg = amocrm_client::AmoConfig::new(
        CLIENT_ID,
        secrecy::SecretString::from(CLIENT_SECRET),
        url::Url::parse("http://127.0.0.1:1/cb").expect("url"),
    );
    cfg.account_url_template = sandbox.account_url_template();
    let client = amocrm_client::AmoClient::new(cfg).expect("client");
    let mut accounts = Vec::new();
    for i in 0..sellers {
        let (host, pair, p) = granted_account(sandbox, i);
        let stage = p.statuses.iter().find(|s| s.type_ == 0).expect("stage").id;
        let leads: Vec<amocrm_client::ComplexLead> = (i..orders)
            .step_by(sellers)
            .map(|j| amocrm_client::ComplexLead {
                name: format!("Buyurtma #A{j:07}"),
                price: 150_000,
                pipeline_id: p.id,
                status_id: stage,
                request_id: format!("{j}"),
                custom_fields_values: Vec::new(),
                tags: Vec::new(),
                contact: Some(amocrm_client::NewContact {
                    name: "Ali Valiyev".into(),
                    phone: Some("+998901234567".into()),
                    email: Some("ali@example.com".into()),
                }),
                company: None,
            })
            .collect();
        let h = amocrm_client::AccountHost::parse(&host, &client.config().allowed_domains)
            .expect("host");
        accounts.push((h, secrecy::SecretString::from(pair.access_token), leads));
    }
    let started = Instant::now();
    let runs = accounts.iter().map(|(host, token, leads)| {
        let client = client.clone();
        async move {
            for chunk in leads.chunks(50) {
                client
                    .api(host, token)
                    .leads_complex(chunk)
                    .await
                    .expect("leads/complex");
            }
        }
    });
    futures_util::future::join_all(runs).await;
    started.elapsed().as_secs_f64()
}

/// A fresh database: a temp SQLite file, or a new schema on the PostgreSQL server `pg`.
pub struct Database {
    pub url: String,
    pub dir: Option<tempfile::TempDir>,
    pub pg: Option<PgSchema>,
}

impl Database {
    pub fn fresh(pg: Option<&str>) -> Self {
        match pg {
            Some(admin) => {
                let schema = PgSchema::create(admin, "bench");
                Self {
                    url: schema.url(),
                    dir: None,
                    pg: Some(schema),
                }
            }
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join(SQLITE_FILE).display());
                Self {
                    url,
                    dir: Some(dir),
                    pg: None,
                }
            }
        }
    }

    pub fn backend(&self) -> &'static str {
        if self.pg.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    }

    /// Bytes the database takes: the SQLite file with its WAL, or the schema's relations. The WAL is
    /// checkpointed and truncated first: a WAL file keeps the size of the largest write since it was made,
    /// so without this the figure says when SQLite last checkpointed rather than what the rows take.
    pub fn size_bytes(&self) -> u64 {
        match (&self.dir, &self.pg) {
            (Some(dir), _) => {
                #[derive(QueryableByName)]
                struct Checkpoint {
                    /// 1 when a reader or writer kept the checkpoint from finishing.
                    #[diesel(sql_type = diesel::sql_types::Integer)]
                    busy: i32,
                }
                let file = dir.path().join(SQLITE_FILE);
                let mut conn = diesel::SqliteConnection::establish(&file.to_string_lossy())
                    .expect("open the SQLite database to checkpoint it");
                // The service under test may be writing: wait for it, as its own connections do.
                diesel::sql_query("PRAGMA busy_timeout = 10000")
                    .execute(&mut conn)
                    .expect("set the busy timeout");
                let done = diesel::sql_query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .get_result::<Checkpoint>(&mut conn)
                    .expect("checkpoint the SQLite WAL");
                assert_eq!(
                    done.busy, 0,
                    "the WAL checkpoint did not finish; the size would count it"
                );
                std::fs::read_dir(dir.path())
                    .map(|rd| {
                        rd.filter_map(Result::ok)
                            .filter_map(|e| e.metadata().ok())
                            .map(|m| m.len())
                            .sum()
                    })
                    .unwrap_or(0)
            }
            (None, Some(PgSchema { admin_url, name })) => {
                #[derive(QueryableByName)]
                struct Size {
                    #[diesel(sql_type = diesel::sql_types::BigInt)]
                    bytes: i64,
                }
                let Ok(mut conn) = diesel::PgConnection::establish(admin_url) else {
                    return 0;
                };
                diesel::sql_query(format!(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint AS bytes \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = '{name}' AND c.relkind IN ('r', 'm')"
                ))
                .get_result::<Size>(&mut conn)
                .map_or(0, |s| u64::try_from(s.bytes).unwrap_or(0))
            }
            _ => 0,
        }
    }
}

/// The PostgreSQL server to run on too, if any: `BENCH_DATABASE_URL`.
pub fn pg_url() -> Option<String> {
    std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// Starts the service on its own port against `sandbox`, with the extra settings given.
pub async fn start_service(
    sandbox: &SandboxHandle,
    db_url: &str,
    extra: &[(&str, String)],
) -> (Application, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut env: HashMap<String, String> = HashMap::new();
    for (k, v) in [
        ("DATABASE_URL", db_url.to_owned()),
        ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}")),
        ("TOKEN_ENCRYPTION_KEYS", Keyring::generate_entry("bench")),
        ("AMOCRM_CLIENT_ID", CLIENT_ID.into()),
        ("AMOCRM_CLIENT_SECRET", CLIENT_SECRET.into()),
        (
            "AMOCRM_ACCOUNT_URL_TEMPLATE",
            sandbox.account_url_template(),
        ),
        ("AMOCRM_AUTHORIZE_URL", sandbox.authorize_url()),
        ("REFRESH_SCHEDULE", String::new()),
        ("LOG_FORMAT", "json".into()),
    ] {
        env.insert(k.to_owned(), v);
    }
    for (k, v) in extra {
        env.insert((*k).to_owned(), v.clone());
    }
    let settings = Settings::from_env(&env).expect("settings");
    sandbox.add_integration(Integration::new(
        CLIENT_ID,
        CLIENT_SECRET,
        settings.amocrm_redirect_uri.to_string(),
    ));
    let app = Application::build_with_listener(settings, Some(listener))
        .await
        .expect("service");
    (app, port)
}

/// A plain marketplace order of seller `seller` numbered `number`: one item, the same buyer every time.
pub fn plain_order(seller: &str, number: &str) -> serde_json::Value {
    serde_json::json!({
        "seller_id": seller,
        "order_number": number,
        "total_amount": 150000,
        "items": [{"product_id": "sku-1", "name": "Choynak", "quantity": 2, "price": 75000}],
        "customer": {"name": "Ali Valiyev", "phone": "+998901234567", "email": "ali@example.com"},
        "url": format!("https://market.example/orders/{number}"),
    })
}

/// How the seeded sellers' orders become deals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deal {
    /// A lead with a new contact; no note, no products (settings saved per seller).
    Plain,
    /// The default settings: note, products (the account's Products list on), buyer matched by phone.
    Full,
}

pub fn seller_id(i: usize) -> String {
    format!("seller-{i:06}")
}

pub fn host(i: usize) -> String {
    format!("s{i:06}.amocrm.ru")
}

/// The seller's webhook address token: known to the load generator without reading the database.
pub fn webhook_token(i: usize) -> String {
    format!("bench-webhook-token-{i:08}-0123456789abcdef")
}

/// Connects `n` sellers as the connect flow leaves them (an account with a grant, our pipeline and two
/// fields, a connection row), in batches of rows: seeding is not what is measured.
pub async fn seed_sellers(
    db: &Db,
    keys: &Keyring,
    sandbox: &SandboxHandle,
    range: std::ops::Range<usize>,
    deal: Deal,
    token_expires_in: chrono::TimeDelta,
) -> Duration {
    let t = Instant::now();
    let now = st::now();
    let mut rows = Vec::with_capacity(range.len());
    for i in range.clone() {
        let seller = seller_id(i);
        let (host, pair, p) = granted_account(sandbox, i);
        let stage = |n: usize| {
            p.statuses
                .iter()
                .filter(|s| s.type_ == 0)
                .nth(n)
                .or_else(|| p.statuses.first())
                .map(|s| s.id as i64)
        };
        let f1 = sandbox
            .add_lead_field(&host, "Buyurtma raqami", "text", &[])
            .expect("field")
            .id as i64;
        let f2 = sandbox
            .add_lead_field(&host, "Buyurtma havolasi", "url", &[])
            .expect("field")
            .id as i64;
        if deal == Deal::Full {
            sandbox.enable_products(&host, None).expect("products");
        }
        let (access, refresh) = seal_tokens(keys, &seller, &pair.access_token, &pair.refresh_token);
        rows.push((
            c::seller_id.eq(seller),
            c::account_id.eq(pair.account_id as i64),
            c::subdomain.eq(host.split('.').next().unwrap_or_default().to_owned()),
            c::host.eq(host),
            c::status.eq("active"),
            c::access_token_enc.eq(Some(access)),
            c::refresh_token_enc.eq(Some(refresh)),
            c::token_expires_at.eq(Some(now + token_expires_in)),
            c::webhook_token.eq(webhook_token(i)),
            c::pipeline_id.eq(Some(p.id as i64)),
            c::stage_pending.eq(stage(0)),
            c::stage_awaiting_payment.eq(stage(1)),
            c::stage_paid.eq(stage(2)),
            c::stage_shipping.eq(stage(3)),
            c::stage_completed.eq(Some(142i64)),
            c::stage_cancelled.eq(Some(143i64)),
            c::field_order_number_id.eq(Some(f1)),
            c::field_order_link_id.eq(Some(f2)),
            c::provisioning_state.eq("complete"),
            (
                c::last_refreshed_at.eq(Some(now)),
                c::connected_at.eq(now),
                c::created_at.eq(now),
                c::updated_at.eq(now),
            ),
        ));
    }
    let plain = {
        use amocrm_connector::domain::settings::{MatchMode, ProductsMode, SellerSettings};
        let mut s = SellerSettings::default();
        s.items.note = false;
        s.items.products = ProductsMode::Off;
        s.contacts.match_mode = MatchMode::Off;
        serde_json::to_string(&s).expect("settings json")
    };
    let settings: Vec<_> = if deal == Deal::Plain {
        range
            .clone()
            .map(|i| {
                (
                    ss::seller_id.eq(seller_id(i)),
                    ss::settings.eq(plain.clone()),
                    ss::round_robin_next.eq(0i64),
                    ss::updated_at.eq(now),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    db.run(move |conn| {
        for chunk in rows.chunks(500) {
            amocrm_connector::per_backend!(&mut *conn, |b| diesel::insert_into(c::table)
                .values(chunk)
                .execute(b))
            .map_err(StorageError::from)?;
        }
        for chunk in settings.chunks(2000) {
            amocrm_connector::per_backend!(&mut *conn, |b| diesel::insert_into(ss::table)
                .values(chunk)
                .execute(b))
            .map_err(StorageError::from)?;
        }
        Ok(())
    })
    .await
    .expect("seed rows");
    t.elapsed()
}

/// What [`post_forms`] measured.
pub struct Posted {
    /// Each request's latency in milliseconds, sorted.
    pub latencies_ms: Vec<f64>,
    /// How many were answered with a 2xx.
    pub ok: usize,
    /// Wall-clock seconds from the first request to the last answer.
    pub seconds: f64,
}

/// Sends `total` form-encoded POSTs from `concurrency` workers sharing `client`: the `k`-th request, sent
/// by worker `w`, is `request(client, k, w)`. Every answer's body is read before the clock stops.
pub async fn post_forms<F>(
    client: &reqwest::Client,
    concurrency: usize,
    total: usize,
    request: F,
) -> Posted
where
    F: Fn(&reqwest::Client, usize, usize) -> reqwest::RequestBuilder + Send + Sync + 'static,
{
    let request = Arc::new(request);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, next, request) = (client.clone(), next.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut ok = 0usize;
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= total {
                    break;
                }
                let t = Instant::now();
                if let Ok(r) = request(&client, k, w)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .send()
                    .await
                {
                    ok += usize::from(r.status().is_success());
                    let _ = r.bytes().await;
                }
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            (lat, ok)
        }));
    }
    let mut latencies_ms = Vec::with_capacity(total);
    let mut ok = 0;
    for t in tasks {
        let (l, k) = t.await.expect("task");
        latencies_ms.extend(l);
        ok += k;
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    Posted {
        latencies_ms,
        ok,
        seconds,
    }
}

/// Resident memory of this process, in KiB (`VmRSS`).
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// Peak resident memory of this process, in KiB (`VmHWM`).
pub fn peak_rss_kib() -> u64 {
    status_kib("VmHWM:")
}

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) this process used so far, in seconds (`/proc/self/stat`).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    ticks / 100.0
}

/// Percentile `p` (0..=1) of sorted milliseconds.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
