//! Storage: diesel over SQLite (embedded default) or PostgreSQL (production), one codebase for both.
//!
//! Only this module imports diesel. Blocking database work runs on tokio's blocking pool through
//! [`Db::run`], never on the async executor. Each table has its own file with its queries.

pub mod api_keys;
pub mod cipher;
pub mod connections;
pub mod events;
pub mod leases;
pub mod schema;
pub mod subscriptions;

// connect and refresh (issues 4, 5)
pub mod sessions;

// orders (issue 6)
pub mod orders;

// events (issue 7)
pub mod deliveries;
pub mod inbox;
pub mod lead_states;

// operations (issue 8)
pub mod dashboard;
pub mod instance;
pub mod operators;
pub mod stats;

// several instances
pub mod turns;

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, R2D2Connection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::DatabaseUrl;

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to either backend; queries written once run on both.
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgresql(diesel::PgConnection),
    Sqlite(diesel::SqliteConnection),
}

/// Runs the same diesel expression against the concrete backend, for what the multi-backend lacks
/// (`ON CONFLICT`, `FOR UPDATE SKIP LOCKED`).
#[macro_export]
macro_rules! per_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::storage::AnyConnection::Postgresql($c) => $body,
            $crate::storage::AnyConnection::Sqlite($c) => $body,
        }
    };
}

/// Why a database operation failed. Never shown to API clients: the web layer maps it to an opaque 500.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database pool: {0}")]
    Pool(String),
    #[error("database query: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database task was cancelled")]
    Cancelled,
    #[error("{0}")]
    Other(String),
}

impl StorageError {
    /// A unique-constraint violation: the caller usually maps it to "already exists".
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            Self::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }
}

/// Opens connections for the pool, with the SQLite pragmas every connection needs.
#[derive(Clone, Debug)]
pub struct AnyManager {
    url: DatabaseUrl,
}

impl r2d2::ManageConnection for AnyManager {
    type Connection = AnyConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<AnyConnection, r2d2::Error> {
        match &self.url {
            DatabaseUrl::Postgres(url) => diesel::PgConnection::establish(url)
                .map(AnyConnection::Postgresql)
                .map_err(r2d2::Error::ConnectionError),
            DatabaseUrl::Sqlite(path) => {
                let mut c = diesel::SqliteConnection::establish(path)
                    .map_err(r2d2::Error::ConnectionError)?;
                // busy_timeout first: WAL needs a moment of exclusivity while the pool warms up.
                // Checkpoints run inside the committing writer; at SQLite's default (every 1,000 pages)
                // they took half of the push's commit time under load (`perf`, 50-seller push), copying
                // the same hot pages again and again. 4,000 pages (16 MiB of WAL) copies them less often.
                c.batch_execute(
                    "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
                     PRAGMA wal_autocheckpoint = 4000;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(AnyConnection::Sqlite(c))
            }
        }
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

type Pool = r2d2::Pool<AnyManager>;

/// The shared handle to the database: a pool plus the backend it talks to.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    sqlite: bool,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("sqlite", &self.sqlite)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Builds the pool; the SQLite file's folder is created first. Fails with the driver's own reason.
    pub fn connect(url: &DatabaseUrl, pool_size: u32) -> Result<Self, StorageError> {
        if let DatabaseUrl::Sqlite(path) = url
            && let Some(dir) = Path::new(path)
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::Other(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let manager = AnyManager { url: url.clone() };
        // Surface the real connection error (r2d2 would retry silently until its timeout).
        let first = r2d2::ManageConnection::connect(&manager)
            .map_err(|e| StorageError::Pool(e.to_string()))?;
        drop(first);
        let pool = r2d2::Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(15))
            .build(manager)
            .map_err(|e| StorageError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            sqlite: url.is_sqlite(),
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    /// Runs blocking database work on the blocking pool. SQLite "database is locked" answers are retried
    /// a few times, so closures must touch only the database (they are re-run from the start).
    pub async fn run<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(&mut AnyConnection) -> Result<T, StorageError> + Send + 'static,
    {
        let pool = self.pool.clone();
        let sqlite = self.sqlite;
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
            let mut attempt = 0;
            loop {
                match f(&mut conn) {
                    Err(StorageError::Query(diesel::result::Error::DatabaseError(_, info)))
                        if sqlite && attempt < 5 && info.message().contains("locked") =>
                    {
                        attempt += 1;
                        std::thread::sleep(Duration::from_millis(20 * attempt));
                    }
                    other => return other,
                }
            }
        })
        .await
        .map_err(|_| StorageError::Cancelled)?
    }

    /// Synchronous access for CLI commands and tests that already run off the executor.
    pub fn get(&self) -> Result<r2d2::PooledConnection<AnyManager>, StorageError> {
        self.pool
            .get()
            .map_err(|e| StorageError::Pool(e.to_string()))
    }

    /// Applies pending migrations; returns the names applied.
    pub async fn migrate(&self) -> Result<Vec<String>, StorageError> {
        self.run(run_migrations).await
    }

    /// `SELECT 1`, for `/health`.
    pub async fn ping(&self) -> Result<(), StorageError> {
        self.run(|conn| conn.ping().map(|_| ()).map_err(StorageError::from))
            .await
    }
}

/// Applies the migration set of the connection's backend.
pub fn run_migrations(conn: &mut AnyConnection) -> Result<Vec<String>, StorageError> {
    let applied = match conn {
        AnyConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS),
        AnyConnection::Postgresql(c) => c.run_pending_migrations(POSTGRES_MIGRATIONS),
    }
    .map_err(|e| StorageError::Other(format!("migration failed: {e}")))?;
    Ok(applied.iter().map(|m| m.to_string()).collect())
}

/// Now, at the microsecond precision both backends store, so values read back compare equal.
pub fn now() -> NaiveDateTime {
    to_db(Utc::now())
}

pub fn to_db(t: DateTime<Utc>) -> NaiveDateTime {
    let n = t.naive_utc();
    n.with_nanosecond_micros()
}

pub fn from_db(t: NaiveDateTime) -> DateTime<Utc> {
    DateTime::from_naive_utc_and_offset(t, Utc)
}

trait MicroPrecision {
    fn with_nanosecond_micros(self) -> Self;
}

impl MicroPrecision for NaiveDateTime {
    fn with_nanosecond_micros(self) -> Self {
        use chrono::Timelike;
        let micros = self.nanosecond() / 1_000 * 1_000;
        self.with_nanosecond(micros).unwrap_or(self)
    }
}
