//! Sellers-scale benchmark: what 1,000 / 10,000 / 100,000 connected sellers cost. For each size and
//! backend: seeding (not timed) and the database size per connection; webhook intake (req/s, p99) against
//! random sellers' addresses; order push of a fixed batch for a working set of active sellers among all the
//! connected ones (orders/s); one refresh sweep of every connection made due with the sandbox answering
//! after 50 ms (seconds, refreshes/s, token exchanges); and the idle service with its workers on (resident
//! memory, CPU seconds burned over 10 s at rest). Each size and backend runs in a process of its own (the
//! benchmark starts itself with `--scenario-child`), and memory figures are that process's: the service,
//! its pools and the load generator. The sandbox runs in a child process of its own, so its 100,000 accounts
//! are not counted. `VmHWM` (reset before each phase through `/proc/self/clear_refs`) is the phase's peak;
//! it includes what the scenario's earlier phases (intake, push) left resident.
//!
//! ```sh
//! cargo bench --bench sellers                       # 1,000, 10,000, 100,000; SQLite, PostgreSQL if set
//! cargo bench --bench sellers -- --quick            # 1,000 and 10,000, smaller batches
//! cargo bench --bench sellers -- --connections 100000 --orders 5000 --active 500
//! BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:55432/app cargo bench --bench sellers
//! ```
#![expect(clippy::expect_used, reason = "a benchmark fails loudly")]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use amocrm_connector::app::Application;
use amocrm_connector::config::Settings;
use amocrm_connector::services::orders as order_service;
use amocrm_connector::services::refresh::{self, SweepOutcome};
use amocrm_connector::storage::cipher::Keyring;
use amocrm_connector::storage::schema::amocrm_connections as c;
use amocrm_connector::storage::{self as st, DatabaseUrl, Db, StorageError};
use amocrm_connector::workers::push;
use amocrm_sandbox::{Faults, Integration};
use common::{Database, Deal};
use diesel::prelude::*;

const REDIRECT: &str = "http://127.0.0.1:1/oauth/amocrm/callback";
const WEBHOOK_BODY: &str = include_str!("../tests/fixtures/amocrm/webhook-status-lead-1.txt");

/// The sandbox in its own process, driven over its stdin: `latency MS`, `counters`.
struct SandboxChild {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
    seeded_secs: f64,
}

impl SandboxChild {
    fn spawn(n: usize, db_url: &str, keys: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .arg("--sandbox-child")
            .env("BENCH_CHILD_N", n.to_string())
            .env("BENCH_CHILD_DB", db_url)
            .env("BENCH_CHILD_KEYS", keys)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sandbox child");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready line");
        let mut parts = line.split_whitespace().skip(1);
        let port = parts
            .next()
            .and_then(|p| p.parse().ok())
            .expect("READY port secs");
        let seeded_secs = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0.0);
        Self {
            child,
            stdin,
            stdout,
            port,
            seeded_secs,
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.stdin, "{command}").expect("to child");
        self.stdin.flush().expect("flush");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("from child");
        line.trim().to_owned()
    }

    /// Token exchanges (accepted, rejected) and `leads/complex` calls so far.
    fn counters(&mut self) -> (u64, u64, u64) {
        let line = self.ask("counters");
        let v: Vec<u64> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v[0], v[1], v[2])
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "exit");
        let _ = self.child.wait();
    }
}

/// `--sandbox-child`: starts the sandbox, seeds the accounts and the connection rows, answers commands.
fn child_main() {
    let n: usize = std::env::var("BENCH_CHILD_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("BENCH_CHILD_N");
    let db_url = std::env::var("BENCH_CHILD_DB").expect("BENCH_CHILD_DB");
    let keys = Keyring::parse(&std::env::var("BENCH_CHILD_KEYS").expect("keys")).expect("keys");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let sandbox = common::sandbox(1).await;
        sandbox.add_integration(Integration::new(
            common::CLIENT_ID,
            common::CLIENT_SECRET,
            REDIRECT,
        ));
        let url = DatabaseUrl::parse(&db_url).expect("database url");
        let db = Db::connect_with(&url, 2, Duration::from_secs(60)).expect("db");
        let mut seeded = 0.0;
        for start in (0..n).step_by(10_000) {
            seeded += common::seed_sellers(
                &db,
                &keys,
                &sandbox,
                start..(start + 10_000).min(n),
                Deal::Plain,
                chrono::TimeDelta::hours(24),
            )
            .await
            .as_secs_f64();
        }
        drop(db);
        println!("READY {} {seeded:.1}", sandbox.addr().port());
        // Commands are read one at a time so each is answered before the next.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        while let Some(cmd) = rx.recv().await {
            let mut words = cmd.split_whitespace();
            match words.next() {
                Some("latency") => {
                    let ms = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                    for i in 0..n {
                        sandbox.set_faults(
                            &common::host(i),
                            Faults {
                                latency_ms: ms,
                                ..Faults::default()
                            },
                        );
                    }
                    println!("ok");
                }
                Some("counters") => {
                    let t = sandbox.total_counters();
                    println!(
                        "{} {} {}",
                        t.refreshes, t.rejected_refreshes, t.complex_calls
                    );
                }
                _ => break,
            }
        }
        sandbox.stop().await;
    });
}

fn settings(db_url: &str, port: u16, sandbox_port: u16, keys: &str, workers: bool) -> Settings {
    let mut env = std::collections::HashMap::new();
    for (k, v) in [
        ("DATABASE_URL", db_url.to_owned()),
        ("LISTEN_ADDR", format!("127.0.0.1:{port}")),
        ("PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}")),
        ("TOKEN_ENCRYPTION_KEYS", keys.to_owned()),
        ("AMOCRM_CLIENT_ID", common::CLIENT_ID.into()),
        ("AMOCRM_CLIENT_SECRET", common::CLIENT_SECRET.into()),
        ("AMOCRM_REDIRECT_URI", REDIRECT.into()),
        (
            "AMOCRM_ACCOUNT_URL_TEMPLATE",
            format!("http://127.0.0.1:{sandbox_port}/{{host}}"),
        ),
        (
            "AMOCRM_AUTHORIZE_URL",
            format!("http://127.0.0.1:{sandbox_port}/oauth"),
        ),
        ("LOG_FORMAT", "json".into()),
        ("RUN_WORKERS", workers.to_string()),
        ("WEBHOOK_ALLOWED_HOSTS", "127.0.0.1".into()),
    ] {
        env.insert(k.to_owned(), v);
    }
    if !workers {
        env.insert("REFRESH_SCHEDULE".to_owned(), String::new());
    }
    Settings::from_env(&env).expect("settings")
}

/// CPU time (user + system) of process `pid` so far, in seconds.
fn proc_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    [11, 12]
        .iter()
        .filter_map(|i| f.get(*i).and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 100.0
}

/// Resident memory of process `pid`, in KiB.
fn proc_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resets this process's peak resident memory, so the next `VmHWM` is the next phase's peak.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Sizes {
    orders: usize,
    active: usize,
    webhooks: usize,
    idle_secs: u64,
}

/// One refresh sweep of every connection, made due, with the sandbox answering after 50 ms.
async fn sweep_phase(
    state: &amocrm_connector::services::Context,
    sandbox: &mut SandboxChild,
    n: usize,
    backend: &str,
) {
    sandbox.ask("latency 50");
    let due_at = st::now() + chrono::TimeDelta::minutes(1);
    state
        .db
        .run(move |conn| {
            diesel::update(c::table)
                .set(c::token_expires_at.eq(Some(due_at)))
                .execute(conn)
                .map_err(StorageError::from)
        })
        .await
        .expect("make due");
    let (ex_before, rej_before, _) = sandbox.counters();
    reset_peak();
    let started = Instant::now();
    let outcome = refresh::sweep(state, Duration::from_secs(600))
        .await
        .expect("sweep");
    let secs = started.elapsed().as_secs_f64();
    let peak = mib(common::peak_rss_kib());
    let r = match outcome {
        SweepOutcome::Ran(r) | SweepOutcome::Joined(r) => r,
        SweepOutcome::AlreadyRunning => panic!("another sweep"),
    };
    let (ex_after, rej_after, _) = sandbox.counters();
    let exchanges = ex_after - ex_before;
    println!(
        "  refresh sweep: {} due, {} refreshed, {} failed in {secs:.2} s ({:.0} refreshes/s); {exchanges} token exchanges (rejected {}); peak {peak:.0} MiB",
        r.due,
        r.refreshed,
        r.failed,
        r.refreshed as f64 / secs,
        rej_after - rej_before
    );
    println!(
        "RESULT sellers backend={backend} n={n} phase=refresh secs={secs:.2} rate={:.1} exchanges={exchanges} rss_mib={peak:.1}",
        r.refreshed as f64 / secs
    );
    sandbox.ask("latency 0");
}

async fn scenario(n: usize, pg: Option<&str>, sizes: &Sizes) {
    let db = Database::fresh(pg);
    let backend = db.backend();
    let keys = Keyring::generate_entry("bench");
    {
        let url = DatabaseUrl::parse(&db.url).expect("url");
        let pool = Db::connect_with(&url, 1, Duration::from_secs(60)).expect("db");
        pool.migrate().await.expect("migrations");
    }
    let mut sandbox = SandboxChild::spawn(n, &db.url, &keys);
    let size = db.size_bytes();
    println!(
        "== {backend}, {n} connected sellers: seeded in {:.1} s (not timed); database {:.1} MiB, {:.0} bytes per connection",
        sandbox.seeded_secs,
        size as f64 / 1_048_576.0,
        size as f64 / n as f64
    );
    println!(
        "RESULT sellers backend={backend} n={n} phase=seed bytes_per_connection={:.0}",
        size as f64 / n as f64
    );

    // Phase 1: the service serving HTTP, workers off (push and sweep are driven here).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = Application::build_with_listener(
        settings(&db.url, port, sandbox.port, &keys, false),
        Some(listener),
    )
    .await
    .expect("service");
    let state = app.state.clone();
    let trigger = app.shutdown_trigger();
    let serving = tokio::spawn(app.run_until_stopped());

    // Webhook intake at sellers spread over all of them, each body naming the seller's own account.
    let sample: Vec<String> = (0..n.min(256))
        .map(|k| common::seller_id(k * (n / n.min(256))))
        .collect();
    let targets: Vec<(String, String)> = state
        .db
        .run(move |conn| {
            c::table
                .filter(c::seller_id.eq_any(sample.clone()))
                .select((c::webhook_token, c::account_id, c::subdomain))
                .load::<(String, i64, String)>(conn)
                .map_err(StorageError::from)
        })
        .await
        .expect("webhook targets")
        .into_iter()
        .map(|(token, account, sub)| {
            let body = WEBHOOK_BODY
                .replace("10216991", &account.to_string())
                .replace("test000002", &sub);
            (
                format!("http://127.0.0.1:{port}/webhooks/amocrm/{token}"),
                body,
            )
        })
        .collect();
    reset_peak();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let common::Posted {
        latencies_ms: lat,
        ok,
        seconds: secs,
    } = common::post_forms(&client, 32, sizes.webhooks, move |client, k, w| {
        let (url, body) = &targets[(k * 7919 + w) % targets.len()];
        client.post(url).body(body.clone())
    })
    .await;
    let rps = ok as f64 / secs;
    println!(
        "  webhook intake: {ok}/{} stored in {secs:.2} s, {rps:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; peak {:.0} MiB",
        sizes.webhooks,
        common::pct(&lat, 0.5),
        common::pct(&lat, 0.99),
        mib(common::peak_rss_kib())
    );
    println!(
        "RESULT sellers backend={backend} n={n} phase=intake rate={rps:.1} p99={:.2} rss_mib={:.1}",
        common::pct(&lat, 0.99),
        mib(common::peak_rss_kib())
    );

    // Order push: a batch for the active sellers among all the connected ones.
    let active = sizes.active.min(n);
    for i in 0..sizes.orders {
        let seller = common::seller_id((i % active.max(1)) * (n / active.max(1)));
        let body = common::plain_order(&seller, &format!("P{i:07}"));
        order_service::create(&state, &body).await.expect("order");
    }
    reset_peak();
    let (_, _, complex_before) = sandbox.counters();
    let started = Instant::now();
    let (report, drained) = push::drain(&state, 1_000_000).await.expect("push");
    let secs = started.elapsed().as_secs_f64();
    let (_, _, complex_after) = sandbox.counters();
    let rate = report.pushed as f64 / secs;
    println!(
        "  push: {} orders for {active} active sellers in {secs:.2} s, {rate:.0} orders/s, {} leads/complex calls, drained {drained}; peak {:.0} MiB",
        report.pushed,
        complex_after - complex_before,
        mib(common::peak_rss_kib())
    );
    println!(
        "RESULT sellers backend={backend} n={n} phase=push rate={rate:.1} secs={secs:.2} rss_mib={:.1}",
        mib(common::peak_rss_kib())
    );

    // Refresh sweep: every connection due, the sandbox answering after 50 ms (`--no-sweep` skips it).
    if !common::flag("--no-sweep") {
        sweep_phase(&state, &mut sandbox, n, backend).await;
    }
    trigger.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(30), serving).await;
    drop(state);

    // Idle: the real binary (`serve`, every worker on, the default refresh schedule) in its own process,
    // so its memory is only its own; resident memory and CPU time from /proc/<pid> while at rest.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_amocrm-connector"));
    serve
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("PUBLIC_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("TOKEN_ENCRYPTION_KEYS", &keys)
        .env("AMOCRM_CLIENT_ID", common::CLIENT_ID)
        .env("AMOCRM_CLIENT_SECRET", common::CLIENT_SECRET)
        .env("AMOCRM_REDIRECT_URI", REDIRECT)
        .env(
            "AMOCRM_ACCOUNT_URL_TEMPLATE",
            format!("http://127.0.0.1:{}/{{host}}", sandbox.port),
        )
        .env(
            "AMOCRM_AUTHORIZE_URL",
            format!("http://127.0.0.1:{}/oauth", sandbox.port),
        )
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = serve.spawn().expect("serve");
    let pid = child.id();
    let health = format!("http://127.0.0.1:{port}/health");
    let up = Instant::now();
    while up.elapsed() < Duration::from_secs(60) {
        if client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Work left from the phases above (the stored webhook bodies) is processed first: rest means a
    // second with under 50 ms of CPU, waited for up to 60 s.
    let settle = Instant::now();
    let mut last = proc_cpu_seconds(pid);
    while settle.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = proc_cpu_seconds(pid);
        if now - last < 0.05 {
            break;
        }
        last = now;
    }
    println!(
        "  idle service settled after {:.0} s",
        settle.elapsed().as_secs_f64()
    );
    let cpu0 = proc_cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(sizes.idle_secs)).await;
    let cpu = proc_cpu_seconds(pid) - cpu0;
    let rss = mib(proc_rss_kib(pid));
    let pct = cpu / sizes.idle_secs as f64 * 100.0;
    println!(
        "  idle service (amocrm-connector serve, workers on): {rss:.0} MiB resident; {cpu:.2} CPU seconds in {} s at rest ({pct:.1} % of a core)",
        sizes.idle_secs
    );
    println!("RESULT sellers backend={backend} n={n} phase=idle rss_mib={rss:.1} cpu_pct={pct:.2}");
    let _ = child.kill();
    let _ = child.wait();
    drop(sandbox);
}

fn main() {
    if common::flag("--sandbox-child") {
        child_main();
        return;
    }
    common::init_logs("error");
    let quick = common::quick();
    let counts = common::list("--connections").unwrap_or_else(|| {
        if quick {
            vec![1000, 10_000]
        } else {
            vec![1000, 10_000, 100_000]
        }
    });
    let num = |name: &str, full: usize, q: usize| {
        common::arg(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { q } else { full })
    };
    let sizes = Sizes {
        orders: num("--orders", 5000, 1000),
        active: num("--active", 500, 100),
        webhooks: num("--webhooks", 5000, 1000),
        idle_secs: num("--idle-secs", 10, 5) as u64,
    };
    let backends = common::backends();
    if common::flag("--scenario-child") {
        scenario_child(&counts, &sizes);
        return;
    }
    println!("sellers benchmark: {}", common::machine());
    println!(
        "  push batch {} orders over {} active sellers; {} webhooks at concurrency 32; sandbox latency 50 ms for the sweep",
        sizes.orders, sizes.active, sizes.webhooks
    );
    // Each size and backend runs in a process of its own, so a phase's memory is that scenario's and not
    // what the allocator kept from an earlier, larger one.
    for pg in &backends {
        for n in &counts {
            let status = Command::new(std::env::current_exe().expect("exe"))
                .args(["--scenario-child", "--connections", &n.to_string()])
                .args(["--backend", if pg.is_some() { "pg" } else { "sqlite" }])
                .args(["--orders", &sizes.orders.to_string()])
                .args(["--active", &sizes.active.to_string()])
                .args(["--webhooks", &sizes.webhooks.to_string()])
                .args(["--idle-secs", &sizes.idle_secs.to_string()])
                .args(common::flag("--no-sweep").then_some("--no-sweep"))
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .status()
                .expect("scenario child");
            assert!(status.success(), "the {n}-seller scenario failed");
        }
    }
}

/// `--scenario-child`: runs the one scenario its parent named (`--connections N --backend sqlite|pg`).
fn scenario_child(counts: &[usize], sizes: &Sizes) {
    let n = *counts.first().expect("--connections");
    let pg = match common::arg("--backend").as_deref() {
        Some("pg") => Some(common::pg_url().expect("--backend pg needs BENCH_DATABASE_URL")),
        _ => None,
    };
    common::runtime().block_on(scenario(n, pg.as_deref(), sizes));
}
