//! Building the application: database, migrations, HTTP server and background workers, from `Settings`.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::web::Data;
use actix_web::{App, HttpServer, middleware};
use tokio::sync::watch;

use crate::config::Settings;
use crate::storage::cipher::Keyring;
use crate::storage::{Db, StorageError};
use crate::web as http;

/// Shared by every handler and worker.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: Db,
    pub keys: Arc<Keyring>,
    /// The one amoCRM client of this process: every call to every account shares its rate limiter.
    pub amo: amocrm_client::AmoClient,
    /// The amoCRM webhook intake's writer (group commit of raw bodies).
    pub intake: crate::services::ingest::Intake,
    /// Flips to `true` when the process is asked to stop; workers finish their step and exit.
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("database: {0}")]
    Database(#[from] StorageError),
    #[error("amoCRM client: {0}")]
    Amo(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// A built, bound application, not yet serving.
pub struct Application {
    port: u16,
    server: Server,
    pub state: Data<AppState>,
    shutdown_tx: watch::Sender<bool>,
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
        let amo = amocrm_client::AmoClient::new(settings.amo_config()?)
            .map_err(|e| StartError::Amo(e.to_string()))?;
        let db = Db::connect(&settings.database_url, settings.database_pool_size)?;
        let applied = db.migrate().await?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "applied migrations");
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
        let state = Data::new(AppState {
            settings: Arc::new(settings),
            intake: crate::services::ingest::Intake::new(db.clone()),
            db,
            keys: Arc::new(keys),
            amo,
            shutdown: shutdown_rx,
        });
        if state.settings.run_workers {
            // connect and refresh (issues 4, 5)
            crate::workers::refresh::spawn(state.clone());
            crate::workers::refresh::spawn_schedule(state.clone());
            // orders (issue 6)
            crate::workers::push::spawn(state.clone());
        }
        let server = build_server(listener, state.clone())?;
        if state.settings.run_workers {
            // --- events (issue 7) ---
            crate::workers::delivery::spawn(state.clone());
            crate::workers::webhook_processor::spawn(state.clone());
            crate::workers::retention::spawn(state.clone());
        }
        Ok(Self {
            port,
            server,
            state,
            shutdown_tx,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until the server stops (SIGINT/SIGTERM), then tells the workers to stop.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        let _ = self.shutdown_tx.send(true);
        result
    }
}

fn build_server(listener: TcpListener, state: Data<AppState>) -> Result<Server, StartError> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let shutdown_secs = state.settings.shutdown_timeout.as_secs();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(http::configure_extractors)
            .wrap(middleware::from_fn(http::request_id::middleware))
            .configure(http::routes)
            .default_service(actix_web::web::to(http::page_not_found))
    })
    .shutdown_timeout(shutdown_secs)
    .listen(listener)
    .map_err(|source| StartError::Bind { addr, source })?
    .run();
    Ok(server)
}
