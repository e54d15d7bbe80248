//! The database going away under load (CONTRACT §11): `/health` answers 503, writes answer 503
//! `MAINTENANCE_MODE` within a bound (never 500), nothing accepted before is lost, and the service — workers
//! included — carries on by itself when the database is back. The PostgreSQL test runs its own throwaway
//! server (as `scripts/pg-start.sh` does) so it can stop and start it without disturbing other tests. A
//! read-only SQLite file is refused clearly and left intact.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amocrm_connector::services::api_keys::Tier;
use amocrm_connector::storage::{DatabaseUrl, Db};
use reqwest::Method;
use serde_json::Value;

use crate::support::{
    self, HOST, Queue, TestApp, connect_seller, env_vars, order_body, spawn_app, spawn_app_with,
    wait_until,
};

/// The longest any request may take while the database is gone (`DATABASE_TIMEOUT` is 2 s here).
const ANSWER_BOUND: Duration = Duration::from_secs(10);

/// A PostgreSQL server of this test's own, in a temporary folder on a free port.
struct ThrowawayPg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Root runs the server as `postgres` (it refuses to run as root).
    as_postgres: bool,
}

impl ThrowawayPg {
    /// Starts one, or `None` (with the reason printed) when the PostgreSQL binaries are not installed.
    fn start() -> Option<Self> {
        let Some(bin) = pg_bin() else {
            eprintln!(
                "skipped: no PostgreSQL binaries under /usr/lib/postgresql (apt-get install postgresql)"
            );
            return None;
        };
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        let dir = tempfile::Builder::new()
            .prefix("pg-outage-")
            .tempdir_in("/tmp")
            .expect("a temp dir");
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let pg = Self {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = pg.data();
        run(pg.cmd("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ]));
        pg.server_start();
        run(pg.cmd("createdb").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "app",
        ]));
        Some(pg)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/app", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn server_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"]));
    }

    /// A fast shutdown: sessions are cut, what was committed is on disk.
    fn server_stop(&self) {
        run(self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "fast", "-w", "-t", "60", "stop"]));
    }
}

impl Drop for ThrowawayPg {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The newest `/usr/lib/postgresql/*/bin` with `initdb` in it.
fn pg_bin() -> Option<PathBuf> {
    let mut bins: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    bins.sort();
    bins.pop().map(|(_, b)| b)
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One order post of the load and how it was answered.
#[derive(Debug, Clone)]
struct Posted {
    number: String,
    status: u16,
    code: Option<String>,
    took: Duration,
}

/// Posts orders one after another until `stop`, recording every answer.
fn start_load(
    app: &TestApp,
    key: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Arc<Mutex<Vec<Posted>>>, tokio::task::JoinHandle<()>) {
    let posted = Arc::new(Mutex::new(Vec::new()));
    let (log, url) = (posted.clone(), app.url("/api/v1/sales/orders"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let task = tokio::spawn(async move {
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            i += 1;
            let number = format!("L{i:05}");
            let started = Instant::now();
            let resp = http
                .post(&url)
                .bearer_auth(&key)
                .json(&order_body("seller-1", &number))
                .send()
                .await
                .expect("every request is answered");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().map(str::to_owned);
            log.lock().unwrap().push(Posted {
                number,
                status,
                code,
                took: started.elapsed(),
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (posted, task)
}

fn answered(posted: &Mutex<Vec<Posted>>, pred: impl Fn(&Posted) -> bool) -> usize {
    posted.lock().unwrap().iter().filter(|p| pred(p)).count()
}

/// `GET /health`'s status, which must come within the bound.
async fn health(app: &TestApp) -> u16 {
    let started = Instant::now();
    let status = app.get("/health").await.status().as_u16();
    assert!(
        started.elapsed() < ANSWER_BOUND,
        "/health took {:?}",
        started.elapsed()
    );
    status
}

/// Stops or starts the server (`change`, off the async executor), then waits up to `within_secs` for
/// `/health` to answer `status`.
async fn switch(
    app: &TestApp,
    pg: &Arc<ThrowawayPg>,
    change: fn(&ThrowawayPg),
    status: u16,
    within_secs: u64,
) {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || change(&pg))
        .await
        .unwrap();
    let within = Duration::from_secs(within_secs);
    wait_until(within, &format!("/health answers {status}"), || async {
        health(app).await == status
    })
    .await
    .unwrap();
}

/// How many leads of the account carry each order number.
fn lead_numbers(app: &TestApp, field: u64) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for (number, _) in support::lead_numbers(app, HOST, field) {
        *seen.entry(number).or_insert(0) += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_load_loses_nothing_and_needs_no_restart() {
    let Some(pg) = ThrowawayPg::start() else {
        return;
    };
    let pg = Arc::new(pg);
    let app = spawn_app_with(env_vars(&[
        ("DATABASE_URL", &pg.url()),
        ("DATABASE_TIMEOUT", "2s"),
        ("RUN_WORKERS", "true"),
        // Orders claimed when the database went away are pushed (or looked up) once their claim lapses
        // (three request timeouts and 30 s), never twice: a short timeout keeps that wait short.
        ("AMOCRM_REQUEST_TIMEOUT", "5s"),
    ]))
    .await;
    app.leaves_queued(
        Queue::Inbox,
        "amoCRM's webhooks about the leads, processed in the background",
    );
    let seller = connect_seller(&app, "seller-1", HOST).await;
    let key = app.api_key_with_tier(Tier::Enterprise).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (posted, load) = start_load(&app, key.clone(), stop.clone());
    let accepted = |p: &Posted| matches!(p.status, 200 | 202);

    wait_until(
        Duration::from_secs(30),
        "orders accepted before the outage",
        || async { answered(&posted, accepted) >= 10 },
    )
    .await
    .unwrap();

    switch(&app, &pg, ThrowawayPg::server_stop, 503, 30).await;
    wait_until(
        Duration::from_secs(30),
        "orders answered 503 MAINTENANCE_MODE",
        || async { answered(&posted, |p| p.status == 503) >= 3 },
    )
    .await
    .unwrap();

    switch(&app, &pg, ThrowawayPg::server_start, 200, 60).await;
    let before = answered(&posted, accepted);
    wait_until(Duration::from_secs(60), "orders accepted again", || async {
        answered(&posted, accepted) >= before + 10
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.await.unwrap();

    let all = posted.lock().unwrap().clone();
    for p in &all {
        assert!(
            matches!(p.status, 200 | 202 | 503),
            "never anything but accepted or 503: {p:?}"
        );
        if p.status == 503 {
            assert_eq!(p.code.as_deref(), Some("MAINTENANCE_MODE"), "{p:?}");
        }
        assert!(p.took < ANSWER_BOUND, "answered within the bound: {p:?}");
    }
    // The marketplace sends again what was answered 503 (an order posted twice is one order).
    for p in all.iter().filter(|p| p.status == 503) {
        let resp = app
            .request(
                Method::POST,
                "/api/v1/sales/orders",
                Some(&key),
                Some(&order_body("seller-1", &p.number)),
            )
            .await;
        assert!(matches!(resp.status().as_u16(), 200 | 202), "{p:?}");
    }

    // The push worker, which kept running through the outage, makes every order one lead.
    let want = all.len();
    wait_until(
        Duration::from_secs(180),
        "every order became a lead",
        || async {
            let got = lead_numbers(&app, seller.field_number);
            if got.len() == want {
                Ok(())
            } else {
                Err(format!("{} of {want} orders are leads", got.len()))
            }
        },
    )
    .await
    .unwrap();
    let leads = lead_numbers(&app, seller.field_number);
    for p in &all {
        assert_eq!(
            leads.get(&p.number),
            Some(&1),
            "order {} is one lead",
            p.number
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn a_read_only_sqlite_file_refuses_writes_clearly_and_stays_intact() {
    if std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty()) {
        eprintln!("skipped: SQLite only");
        return;
    }
    let app = spawn_app().await;
    let Some(path) = app
        .database
        .url
        .strip_prefix("sqlite://")
        .map(str::to_owned)
    else {
        panic!("a SQLite test database");
    };
    connect_seller(&app, "seller-1", HOST).await;
    app.stop().await;

    let read_only = DatabaseUrl::Sqlite(format!("file:{path}?mode=ro"));
    let db = Db::connect(&read_only, 2).expect("a read-only file opens");
    let row = db.connections().by_seller("seller-1").await.unwrap();
    assert!(row.is_some(), "reads work");
    let err = amocrm_connector::services::api_keys::create(&db, "late", Tier::Standard)
        .await
        .expect_err("a write is refused");
    assert!(err.is_read_only(), "{err}");
    assert!(
        err.to_string().contains("readonly"),
        "a clear reason: {err}"
    );
    drop(db);

    // The service refuses to start on it, in one clear line, before serving anything.
    let mut env = app.env.clone();
    env.insert(
        "DATABASE_URL".into(),
        format!("sqlite://file:{path}?mode=ro"),
    );
    env.insert("LISTEN_ADDR".into(), "127.0.0.1:0".into());
    let settings = amocrm_connector::config::Settings::from_env(&env).unwrap();
    let Err(refused) = amocrm_connector::app::Application::build(settings).await else {
        panic!("the service must not serve on a read-only database");
    };
    let line = refused.to_string();
    assert!(line.contains("read-only") && !line.contains('\n'), "{line}");

    // Nothing was damaged: the file opens for writing again and checks out.
    let db = Db::connect(&DatabaseUrl::Sqlite(path), 1).unwrap();
    let check = db
        .run(|c| {
            use diesel::prelude::*;
            #[derive(QueryableByName)]
            struct Check {
                #[diesel(sql_type = diesel::sql_types::Text)]
                integrity_check: String,
            }
            let amocrm_connector::storage::AnyConnection::Sqlite(c) = c else {
                unreachable!("SQLite")
            };
            let rows: Vec<Check> = diesel::sql_query("PRAGMA integrity_check").load(c)?;
            Ok(rows
                .into_iter()
                .map(|r| r.integrity_check)
                .collect::<Vec<_>>())
        })
        .await
        .unwrap();
    assert_eq!(check, ["ok"]);
    assert!(
        db.connections()
            .by_seller("seller-1")
            .await
            .unwrap()
            .is_some()
    );
}
