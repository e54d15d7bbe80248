//! Building the application: database, migrations, HTTP server and background workers, from `Settings`;
//! and stopping it gracefully.
//!
//! Shutdown (SIGTERM or SIGINT, or [`ShutdownTrigger::trigger`] in tests): the listener closes at once,
//! `Context.shutdown` flips so workers claim nothing new and finish their current step, in-flight
//! requests and steps get up to `SHUTDOWN_TIMEOUT`, stragglers are aborted, and then every lease this
//! instance still holds is released so other instances take the work over immediately.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::storage::{Db, StorageError};
use crate::web::server::Server;

use crate::services::Context;
use crate::services::platforms::{PlatformError, Platforms};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database: {0}")]
    Database(#[from] StorageError),
    /// Serving writes (migrations, leases, every accepted order): a read-only database is refused at once
    /// rather than failing request by request.
    #[error(
        "database is read-only, and serving needs to write ({0}); make the database file and its folder writable"
    )]
    ReadOnlyDatabase(StorageError),
    #[error("amoCRM client: {0}")]
    Amo(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

fn db_error(e: StorageError) -> StartError {
    if e.is_read_only() {
        StartError::ReadOnlyDatabase(e)
    } else {
        StartError::Database(e)
    }
}

/// A built, bound application, not yet serving.
pub struct Application {
    port: u16,
    server: Server,
    pub state: Arc<Context>,
    shutdown_tx: watch::Sender<bool>,
    /// Background tasks, awaited (within the shutdown timeout) when the application stops.
    workers: Vec<(&'static str, JoinHandle<()>)>,
    trigger: ShutdownTrigger,
}

/// Starts the same graceful shutdown a SIGTERM starts; tests use it instead of signalling themselves.
#[derive(Clone, Default)]
pub struct ShutdownTrigger(Arc<Notify>);

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.0.notify_one();
    }
}

/// What happened during a shutdown, for the log and for tests.
#[derive(Debug, Clone, Default)]
pub struct ShutdownReport {
    /// Workers that finished their step within the timeout.
    pub workers_finished: usize,
    /// Workers still busy at the deadline, aborted.
    pub workers_aborted: Vec<&'static str>,
    /// Leases of this instance released after the workers stopped.
    pub leases_released: usize,
    pub elapsed: Duration,
}

impl Application {
    /// Connects the database, applies migrations and binds the listener (`LISTEN_ADDR`; port 0 picks a
    /// free port, as tests do).
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        Self::build_with_listener(settings, None).await
    }

    /// Like [`Application::build`], on a listener the caller already bound (tests learn the port first,
    /// so `PUBLIC_BASE_URL` and the redirect URI can name it).
    pub async fn build_with_listener(
        settings: Settings,
        listener: Option<TcpListener>,
    ) -> Result<Self, StartError> {
        let keys = settings.require_keys()?.clone();
        let platforms = Platforms::build(&settings).map_err(|e| match e {
            PlatformError::Config(c) => StartError::Config(c),
            PlatformError::Client(reason) => StartError::Amo(reason),
        })?;
        platforms.set_observer(&crate::metrics::amocrm_observer());
        let db = Db::connect_with(
            &settings.database_url,
            settings.database_pool_size,
            settings.database_timeout,
        )
        .map_err(db_error)?;
        // Several instances share each account's request budget: one calls an account at a time.
        let gate = Arc::new(crate::services::turns::DbGate::new(
            db.clone(),
            settings.instance_id.clone(),
            platforms.limiter().clone(),
        ));
        crate::services::turns::DbGate::spawn_keeper(&gate);
        let gate: amocrm_client::Gate = gate;
        platforms.set_gate(&gate);
        let applied = db.migrate().await.map_err(db_error)?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied migrations");
        }
        // A previous life of this instance (same INSTANCE_ID) that was killed left its leases taken:
        // take them back now rather than after they expire. Orders whose push may still be in flight
        // at amoCRM stay leased for one request timeout, as after a graceful stop.
        let me = settings.instance_id.clone();
        let in_flight = chrono::TimeDelta::from_std(settings.amocrm_request_timeout)
            .unwrap_or(chrono::TimeDelta::seconds(60));
        let now = crate::storage::now();
        let released = db
            .instance(&me)
            .take_back(now, now + in_flight)
            .await
            .map_err(db_error)?;
        if released > 0 {
            tracing::info!(
                released,
                "took back the leases a previous run of this instance held"
            );
        }
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(settings.listen_addr).map_err(|source| StartError::Bind {
                addr: settings.listen_addr.to_string(),
                source,
            })?,
        };
        let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = Arc::new(Context::new(
            Arc::new(settings),
            db,
            Arc::new(keys),
            platforms,
            shutdown_rx,
        ));
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let server = crate::web::server::build(listener, state.clone())
            .map_err(|source| StartError::Bind { addr, source })?;
        let workers = spawn_workers(&state);
        Ok(Self {
            port,
            server,
            state,
            shutdown_tx,
            workers,
            trigger: ShutdownTrigger::default(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A handle that starts the graceful shutdown, as SIGTERM does.
    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        self.trigger.clone()
    }

    /// Serves until SIGTERM, SIGINT or the [`ShutdownTrigger`], then shuts down gracefully.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until_stopped_with_report().await.map(|_| ())
    }

    /// [`Application::run_until_stopped`], returning what the shutdown did.
    pub async fn run_until_stopped_with_report(self) -> std::io::Result<ShutdownReport> {
        let Self {
            server,
            state,
            shutdown_tx,
            workers,
            trigger,
            ..
        } = self;
        let handle = server.handle();
        let mut serving = tokio::spawn(server);
        let served = tokio::select! {
            result = &mut serving => Some(result),
            reason = stop_requested(&trigger) => {
                tracing::info!(reason, "shutdown requested");
                None
            }
        };
        let started = tokio::time::Instant::now();
        let deadline = started + state.settings.shutdown_timeout;
        let _ = shutdown_tx.send(true);
        // Stop accepting now; in-flight requests get the server's shutdown timeout (the same setting).
        let stopping = handle.stop(true);
        let workers_done = wait_for_workers(workers, deadline);
        let ((), mut report) = tokio::join!(stopping, workers_done);
        let served = match served {
            Some(result) => result,
            None => serving.await,
        };
        let owner = state.settings.instance_id.clone();
        let now = crate::storage::now();
        // A request amoCRM received is applied within its timeout or never: until then, orders cut off
        // mid-push are not looked up by anyone.
        let in_flight_until = now
            + chrono::TimeDelta::from_std(state.settings.amocrm_request_timeout)
                .unwrap_or(chrono::TimeDelta::seconds(60));
        match state
            .db
            .instance(&owner)
            .release(now, in_flight_until)
            .await
        {
            Ok(released) => report.leases_released = released.total(),
            Err(e) => tracing::warn!(error = %e, "could not release this instance's leases"),
        }
        report.elapsed = started.elapsed();
        tracing::info!(
            workers_finished = report.workers_finished,
            workers_aborted = ?report.workers_aborted,
            leases_released = report.leases_released,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "stopped"
        );
        match served {
            Ok(Ok(())) => Ok(report),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(std::io::Error::other(format!("server task failed: {e}"))),
        }
    }
}

/// Starts the background workers (only when `RUN_WORKERS` is on). Each returns its `JoinHandle`, so the
/// shutdown can wait for it; each stops when `Context.shutdown` flips.
fn spawn_workers(state: &Arc<Context>) -> Vec<(&'static str, JoinHandle<()>)> {
    let mut workers = Vec::new();
    if !state.settings.run_workers {
        return workers;
    }
    // Workers register here, one line each: `workers.push(("name", crate::workers::x::spawn(state.clone())));`

    // Connect and refresh.
    workers.push(("connect", crate::workers::refresh::spawn(state.clone())));
    if let Some(schedule) = crate::workers::refresh::spawn_schedule(state.clone()) {
        workers.push(("refresh_schedule", schedule));
    }

    // Orders.
    workers.push(("push", crate::workers::push::spawn(state.clone())));

    // Events, and the log's count of broken client connections.
    workers.push(("delivery", crate::workers::delivery::spawn(state.clone())));
    workers.push((
        "webhook_processor",
        crate::workers::webhook_processor::spawn(state.clone()),
    ));
    workers.push(("retention", crate::workers::retention::spawn(state.clone())));
    workers.push((
        "client_faults",
        crate::telemetry::spawn_fault_reporter(state.shutdown.clone()),
    ));

    workers
}

/// Resolves with the reason once SIGTERM, SIGINT or the trigger arrives.
async fn stop_requested(trigger: &ShutdownTrigger) -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
                () = trigger.0.notified() => "trigger",
            },
            _ => {
                tracing::warn!("cannot listen for signals; only the trigger stops the service");
                trigger.0.notified().await;
                "trigger"
            }
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => "ctrl-c",
            () = trigger.0.notified() => "trigger",
        }
    }
}

/// Waits for each worker until the deadline, then aborts those still running.
async fn wait_for_workers(
    workers: Vec<(&'static str, JoinHandle<()>)>,
    deadline: tokio::time::Instant,
) -> ShutdownReport {
    let mut report = ShutdownReport::default();
    for (name, mut handle) in workers {
        match tokio::time::timeout_at(deadline, &mut handle).await {
            Ok(Ok(())) => report.workers_finished += 1,
            Ok(Err(e)) => {
                tracing::error!(worker = name, error = %e, "worker ended abnormally");
                report.workers_finished += 1;
            }
            Err(_) => {
                tracing::warn!(
                    worker = name,
                    "worker still busy at the shutdown deadline; aborting it"
                );
                handle.abort();
                let _ = handle.await;
                report.workers_aborted.push(name);
            }
        }
    }
    report
}
