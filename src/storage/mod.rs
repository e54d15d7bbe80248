//! Storage: diesel over SQLite (embedded default) or PostgreSQL (production), one codebase for both.
//!
//! Only this module imports diesel. Blocking database work runs on tokio's blocking pool through
//! [`Db::run`], never on the async executor. Each table has its own file with its queries.

/// Declares an aggregate's handle, `pub struct Name<'a> { db: &'a Db }`, and the `Db` method that lends it:
/// the typed async API the use cases call (`db.orders()`, `db.sessions()`, …).
macro_rules! aggregate_handle {
    ($(#[$doc:meta])* $name:ident => $method:ident) => {
        $(#[$doc])*
        pub struct $name<'a> {
            db: &'a $crate::storage::Db,
        }

        impl $crate::storage::Db {
            pub fn $method(&self) -> $name<'_> {
                $name { db: self }
            }
        }
    };
}

/// The row whose `table::column` equals `value`, if any: the lookup by a unique column that most tables
/// have. With `=> Vec<Row>`, every row whose column matches (`eq` or `eq_any`), in `order` when given: the
/// lists of one seller, one event, one order; `all table` for the whole table. A macro because diesel's
/// filter and select types make the generic function's bounds unreadable.
macro_rules! find_by {
    ($conn:expr, all $table:ident, order $order:expr => Vec<$row:ty>) => {
        Ok($table::table
            .order($order)
            .select(<$row>::as_select())
            .load($conn)?)
    };
    ($conn:expr, $table:ident :: $column:ident.$op:ident($value:expr), order $order:expr => Vec<$row:ty>) => {
        Ok($table::table
            .filter($table::$column.$op($value))
            .order($order)
            .select(<$row>::as_select())
            .load($conn)?)
    };
    ($conn:expr, $table:ident :: $column:ident.$op:ident($value:expr) => Vec<$row:ty>) => {
        Ok($table::table
            .filter($table::$column.$op($value))
            .select(<$row>::as_select())
            .load($conn)?)
    };
    ($conn:expr, $table:ident :: $column:ident.eq($value:expr) => $row:ty) => {
        Ok($table::table
            .filter($table::$column.eq($value))
            .select(<$row>::as_select())
            .first($conn)
            .optional()?)
    };
}

/// Inserts `values` into `table` and returns the whole stored row (ids and defaults filled in), on either
/// backend: `RETURNING` goes through [`per_backend!`].
macro_rules! insert_returning {
    ($conn:expr, $table:ident, $values:expr => $row:ty) => {
        Ok($crate::per_backend!($conn, |c| diesel::insert_into(
            $table::table
        )
        .values($values)
        .returning(<$row>::as_returning())
        .get_result(c))?)
    };
}

/// The changes that give a row's lease back: no owner, no expiry. `lease_released!(t)` for a table's
/// `lease_owner` and `lease_until`, or name the two columns; with `until at`, the row stays closed to
/// others until `at` (work that may still be in flight, a turn cooling down, or `now` at a shutdown).
macro_rules! lease_released {
    ($table:ident) => {
        lease_released!($table::lease_owner, $table::lease_until)
    };
    ($table:ident, until $at:expr) => {
        lease_released!($table::lease_owner, $table::lease_until, until $at)
    };
    ($owner:path, $until:path) => {
        (
            $owner.eq(None::<String>),
            $until.eq(None::<chrono::NaiveDateTime>),
        )
    };
    ($owner:path, $until:path, until $at:expr) => {
        ($owner.eq(None::<String>), $until.eq(Some($at)))
    };
}

/// A lease nobody holds at `now`: never taken, or lapsed. `lease_free!(t, now)` for a table's `lease_until`,
/// or name the column.
macro_rules! lease_free {
    ($table:ident, $now:expr) => {
        lease_free!($table::lease_until, $now)
    };
    ($until:path, $now:expr) => {
        $until.is_null().or($until.lt($now))
    };
}

/// The rows of `table` that `filter` names and whose lease `owner` holds: what a worker may still write to
/// (its claim may have lapsed and been taken by another meanwhile).
macro_rules! held_by {
    ($table:ident, $owner:expr, $filter:expr) => {
        $table::table
            .filter($filter)
            .filter($table::lease_owner.eq($owner))
    };
}

/// The changes that give a row's lease to `owner` until `until`: `lease_taken!(t, owner, until)` for a
/// table's `lease_owner` and `lease_until`, or name the two columns first.
macro_rules! lease_taken {
    ($table:ident, $owner:expr, $until:expr) => {
        lease_taken!($table::lease_owner, $table::lease_until, $owner, $until)
    };
    ($owner_col:path, $until_col:path, $owner:expr, $until:expr) => {
        ($owner_col.eq(Some($owner)), $until_col.eq(Some($until)))
    };
}

/// The statement that revokes the live rows of `table` that `filter` names (API keys, operator tokens): their
/// `revoked_at` becomes `now`; rows already revoked keep the time they were.
macro_rules! revoke_live {
    ($table:ident, $filter:expr, $now:expr) => {
        diesel::update(
            $table::table
                .filter($filter)
                .filter($table::revoked_at.is_null()),
        )
        .set($table::revoked_at.eq(Some($now)))
    };
}

pub mod api_keys;
pub mod buyers;
pub mod catalog;
pub mod cipher;
pub mod connections;
pub mod enums;
pub mod events;
pub mod health;
pub mod leases;
pub mod schema;
pub mod sessions;
pub mod settings;
pub mod settings_sessions;
pub mod steps;
pub mod subscriptions;

pub mod orders;

pub mod deliveries;
pub mod inbox;
pub mod lead_states;

pub mod dashboard;
pub mod instance;
pub mod operators;
pub mod stats;

pub mod turns;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, R2D2Connection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Which engine `DATABASE_URL` selects. Anything but these two schemes is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file path (created with its folder on first use).
    Sqlite(String),
    /// A libpq connection URL, kept as given.
    Postgres(String),
}

impl DatabaseUrl {
    /// Reads `DATABASE_URL`; the error is a one-line reason.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if let Some(path) = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(String::from("sqlite:// needs a file path"));
            }
            return Ok(Self::Sqlite(path.to_owned()));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
            return Ok(Self::Postgres(raw.to_owned()));
        }
        let scheme = raw
            .split("://")
            .next()
            .filter(|_| raw.contains("://"))
            .unwrap_or(raw);
        Err(format!(
            "unsupported scheme `{scheme}`: use sqlite://PATH or postgres://…"
        ))
    }

    pub fn is_sqlite(&self) -> bool {
        matches!(self, Self::Sqlite(_))
    }

    /// The URL with any password replaced, for logs.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite://{p}"),
            Self::Postgres(u) => match url::Url::parse(u) {
                Ok(mut url) => {
                    if url.password().is_some() {
                        let _ = url.set_password(Some("***"));
                    }
                    url.to_string()
                }
                Err(_) => "postgres://***".to_owned(),
            },
        }
    }
}

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

/// Runs a statement whose filter names one row and tells whether it changed that row: false means the row's
/// condition no longer held (a lease lost, a state already left, a token already used), which callers
/// report as an outcome rather than an error.
pub(crate) trait ExecuteOne:
    RunQueryDsl<AnyConnection> + diesel::query_dsl::methods::ExecuteDsl<AnyConnection>
{
    fn execute_one(self, conn: &mut AnyConnection) -> Result<bool, StorageError> {
        Ok(self.execute(conn)? == 1)
    }
}

impl<Q> ExecuteOne for Q where
    Q: RunQueryDsl<AnyConnection> + diesel::query_dsl::methods::ExecuteDsl<AnyConnection>
{
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
    /// The database cannot be used right now, as opposed to a query that is wrong: no connection within the
    /// pool's timeout, a connection the server dropped (restart, failover), or a read-only database file.
    /// Requests answer 503 `MAINTENANCE_MODE` for these; workers log them and try again.
    pub fn is_unavailable(&self) -> bool {
        use diesel::result::DatabaseErrorKind as K;
        match self {
            Self::Pool(_) => true,
            Self::Query(diesel::result::Error::DatabaseError(
                K::ClosedConnection | K::UnableToSendCommand,
                _,
            )) => true,
            Self::Query(diesel::result::Error::DatabaseError(_, info)) => {
                unavailable_message(info.message())
            }
            Self::Query(diesel::result::Error::BrokenTransactionManager) => true,
            Self::Other(msg) => unavailable_message(msg),
            _ => false,
        }
    }

    /// The database file (SQLite) or the server (PostgreSQL, in recovery or read-only mode) refuses writes.
    pub fn is_read_only(&self) -> bool {
        if let Self::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ReadOnlyTransaction,
            _,
        )) = self
        {
            return true;
        }
        let msg = match self {
            Self::Query(diesel::result::Error::DatabaseError(_, info)) => info.message(),
            Self::Other(msg) => msg.as_str(),
            _ => return false,
        };
        let msg = msg.to_ascii_lowercase();
        msg.contains("readonly database") || msg.contains("read-only transaction")
    }

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

/// Whether a driver message says the database went away or refuses writes (messages are all a dropped
/// PostgreSQL connection or a read-only SQLite file leave to tell them from a wrong query).
fn unavailable_message(msg: &str) -> bool {
    let msg = msg.to_ascii_lowercase();
    [
        "server closed the connection",
        "terminating connection",
        "connection refused",
        "could not connect",
        "no connection to the server",
        "connection to server",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "readonly database",
        "read-only transaction",
        "disk i/o error",
        "unable to open database file",
    ]
    .iter()
    .any(|m| msg.contains(m))
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
            DatabaseUrl::Postgres(url) => {
                diesel::PgConnection::establish(&with_connect_timeout(url))
                    .map(AnyConnection::Postgresql)
                    .map_err(r2d2::Error::ConnectionError)
            }
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

/// Takes SQLite's write lock in the open transaction now, with an UPDATE that matches no row, instead of at
/// the transaction's first write: a transaction that reads and then writes fails at once ("database is
/// locked") when another connection wrote in between, where taking the lock first waits out the busy timeout.
pub(crate) fn take_write_lock(conn: &mut AnyConnection) -> diesel::QueryResult<()> {
    diesel::sql_query("UPDATE order_moves SET id = id WHERE 0 = 1")
        .execute(conn)
        .map(|_| ())
}

/// Whether SQLite answered that the database (or a table) is locked: worth a short wait and another try.
pub(crate) fn is_locked(e: &diesel::result::Error) -> bool {
    matches!(e, diesel::result::Error::DatabaseError(_, info) if info.message().contains("locked"))
}

/// A PostgreSQL URL with libpq's `connect_timeout` (seconds) unless it sets one: an unreachable host must not
/// hold a pool thread for the kernel's TCP timeout (minutes) while requests wait for their 503.
fn with_connect_timeout(url: &str) -> String {
    if url.contains("connect_timeout=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}connect_timeout=3")
}

pub(crate) type Pool = r2d2::Pool<AnyManager>;

/// The shared handle to the database: a pool plus the backend it talks to.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    sqlite: bool,
    /// SQLite's group commit (see [`writer`]); `None` on PostgreSQL, where connections write concurrently.
    writer: Option<writer::Writer>,
    /// One permit per pooled connection, taken before a call gets a blocking thread: callers beyond the
    /// pool wait here, as tasks, instead of each holding a thread blocked on the pool (a refresh sweep
    /// of 256 at once made 256 threads, and their allocator arenas, for a pool of 8).
    permits: Arc<tokio::sync::Semaphore>,
    /// How long a call waits for a connection (`DATABASE_TIMEOUT`).
    timeout: Duration,
}

/// How long a database call waits for a pooled connection by default (see `DATABASE_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `/health` waits: it must answer fast while the database is gone.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

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
        Self::connect_with(url, pool_size, DEFAULT_TIMEOUT)
    }

    /// [`Db::connect`] with the longest a call waits for a connection: past it the call fails with
    /// [`StorageError::Pool`] (unavailable) instead of waiting for the database to come back.
    pub fn connect_with(
        url: &DatabaseUrl,
        pool_size: u32,
        timeout: Duration,
    ) -> Result<Self, StorageError> {
        // A `file:` URI (e.g. `?mode=ro`) names its file itself; only plain paths get their folder made.
        if let DatabaseUrl::Sqlite(path) = url
            && !path.starts_with("file:")
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
            .connection_timeout(timeout)
            .build(manager)
            .map_err(|e| StorageError::Pool(e.to_string()))?;
        let writer = if url.is_sqlite() {
            Some(writer::Writer::start(pool.clone())?)
        } else {
            None
        };
        Ok(Self {
            pool,
            sqlite: url.is_sqlite(),
            writer,
            permits: Arc::new(tokio::sync::Semaphore::new(pool_size.max(1) as usize)),
            timeout,
        })
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    /// Runs blocking database work off the async executor: on SQLite in the writer's next batch (see
    /// [`writer`]), on PostgreSQL on the blocking pool. Closures must touch only the database: they may be
    /// re-run from the start (SQLite "database is locked") and are answered only after their commit.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(&mut AnyConnection) -> Result<T, StorageError> + Send + 'static,
    {
        if let Some(writer) = &self.writer {
            return writer.run(f).await;
        }
        self.run_alone(f).await
    }

    /// [`Db::run`] of a storage function that borrows a string or slice from the caller: `value` is copied
    /// once (the work outlives the borrow) and lent to `f` on each run.
    pub(in crate::storage) async fn run_with<V, T, F>(
        &self,
        value: &V,
        f: F,
    ) -> Result<T, StorageError>
    where
        V: ToOwned + ?Sized,
        V::Owned: Send + 'static,
        T: Send + 'static,
        F: Fn(&mut AnyConnection, &V) -> Result<T, StorageError> + Send + 'static,
    {
        let owned = value.to_owned();
        self.run(move |c| f(c, std::borrow::Borrow::borrow(&owned)))
            .await
    }

    /// [`Db::run`] on a pooled connection of its own, outside any batch: for work that must not run in a
    /// transaction (migrations), for work that batches itself (the webhook intake's group commit, which a
    /// second queue only slows: 24,600 against 19,000 bodies a second in `cargo bench --bench
    /// webhook_intake`) and on PostgreSQL. SQLite "database is locked" answers are retried a few
    /// times.
    pub async fn run_alone<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(&mut AnyConnection) -> Result<T, StorageError> + Send + 'static,
    {
        let permit = tokio::time::timeout(self.timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| StorageError::Pool("timed out waiting for a database connection".into()))?
            .map_err(|_| StorageError::Cancelled)?;
        let pool = self.pool.clone();
        let sqlite = self.sqlite;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = pool.get().map_err(|e| StorageError::Pool(e.to_string()))?;
            let mut attempt = 0;
            loop {
                match f(&mut conn) {
                    Err(StorageError::Query(e)) if sqlite && attempt < 5 && is_locked(&e) => {
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
        self.run_alone(run_migrations).await
    }

    /// `SELECT 1`, for `/health`: waits at most [`PING_TIMEOUT`] for a connection.
    pub async fn ping(&self) -> Result<(), StorageError> {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool
                .get_timeout(PING_TIMEOUT)
                .map_err(|e| StorageError::Pool(e.to_string()))?;
            conn.ping().map(|_| ()).map_err(StorageError::from)
        })
        .await
        .map_err(|_| StorageError::Cancelled)?
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

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::DatabaseErrorKind as K;

    fn db_error(kind: K, message: &str) -> StorageError {
        StorageError::Query(diesel::result::Error::DatabaseError(
            kind,
            Box::new(message.to_owned()),
        ))
    }

    #[test]
    fn a_database_gone_or_read_only_is_told_apart_from_a_wrong_query() {
        assert!(StorageError::Pool("timed out waiting for connection".into()).is_unavailable());
        assert!(db_error(K::ClosedConnection, "x").is_unavailable());
        assert!(db_error(K::UnableToSendCommand, "x").is_unavailable());
        assert!(
            db_error(
                K::Unknown,
                "terminating connection due to administrator command"
            )
            .is_unavailable()
        );
        assert!(db_error(K::Unknown, "the database system is shutting down").is_unavailable());
        let ro = db_error(K::Unknown, "attempt to write a readonly database");
        assert!(ro.is_read_only() && ro.is_unavailable());
        assert!(
            db_error(
                K::ReadOnlyTransaction,
                "cannot execute INSERT in a read-only transaction"
            )
            .is_read_only()
        );
        for wrong in [
            db_error(K::UniqueViolation, "duplicate key"),
            db_error(K::Unknown, "no such column: foo"),
        ] {
            assert!(!wrong.is_unavailable() && !wrong.is_read_only(), "{wrong}");
        }
    }

    #[test]
    fn postgres_urls_get_a_connect_timeout_unless_they_set_one() {
        assert_eq!(
            with_connect_timeout("postgres://u@h/db"),
            "postgres://u@h/db?connect_timeout=3"
        );
        assert_eq!(
            with_connect_timeout("postgres://u@h/db?sslmode=require"),
            "postgres://u@h/db?sslmode=require&connect_timeout=3"
        );
        assert_eq!(
            with_connect_timeout("postgres://u@h/db?connect_timeout=10"),
            "postgres://u@h/db?connect_timeout=10"
        );
    }
}
