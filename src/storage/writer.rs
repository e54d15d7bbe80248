//! Group commit for SQLite: every [`super::Db::run`] call is handed to one thread, which runs whatever has
//! queued up in one transaction, each call in its own savepoint, and answers the callers after the commit.
//!
//! SQLite has one writer at a time. With a pool of connections, concurrent writers queue on its file lock
//! and its busy handler sleeps them in steps of milliseconds; and each commit appends every page it touched
//! to the WAL, so a hundred one-row commits write the same index pages a hundred times. One thread holding
//! the lock for a batch does neither: the 500-seller push spent most of its database time in those two
//! costs (see docs/PERFORMANCE.md). The webhook intake commits its requests in groups of its own and
//! writes beside the writer ([`super::Db::run_alone`]).
//!
//! What a caller sees does not change: its closure runs alone in a savepoint (an error rolls back only its
//! own writes), and its answer is sent only once the batch is committed, so nothing is reported done before
//! it is durable. If the commit fails, every caller of the batch gets that error, as each would have alone.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::time::Duration;

use diesel::connection::{Connection, TransactionManager};

use super::{AnyConnection, Pool, StorageError};

/// Most calls one transaction takes: a bound on how long a batch holds the lock and on a failed commit's
/// reach.
const MAX_BATCH: usize = 128;

/// Delivers one call's answer once its batch has ended: given the commit's error, if any.
type Finish = Box<dyn FnOnce(Option<&StorageError>) + Send>;
/// One queued call: runs its closure where the batch says and returns how to answer it.
type Job = Box<dyn for<'a> FnOnce(Slot<'a>) -> Finish + Send>;
type Tm = <AnyConnection as Connection>::TransactionManager;

/// Where a queued call runs.
enum Slot<'a> {
    /// In the batch's transaction, in a savepoint of its own.
    Batched(&'a mut AnyConnection),
    /// On its own, as without the writer (the batch could not take the write lock).
    Alone(&'a mut AnyConnection),
    /// Nowhere: the batch had no connection; the call is answered with the pool's reason.
    Refused(&'a str),
}

/// The queue into the writer thread; the thread ends when the last [`super::Db`] clone is dropped.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the thread that owns the writes of `pool`'s database.
    pub fn start(pool: Pool) -> Result<Self, StorageError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || serve(&pool, &queue))
            .map_err(|e| StorageError::Other(format!("cannot start the database writer: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `f` in the next batch and waits for the batch's commit.
    pub async fn run<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: Fn(&mut AnyConnection) -> Result<T, StorageError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |slot: Slot<'_>| {
            let result = match slot {
                Slot::Batched(conn) => conn.transaction(|c| guarded(&f, c)),
                Slot::Alone(conn) => guarded(&f, conn),
                Slot::Refused(why) => Err(StorageError::Pool(why.to_owned())),
            };
            Box::new(move |commit: Option<&StorageError>| {
                let answer = match (result, commit) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(e)) => Err(StorageError::Other(e.to_string())),
                    (Ok(v), None) => Ok(v),
                };
                // The caller may have stopped waiting (a dropped request); its work is done either way.
                let _ = tx.send(answer);
            })
        });
        self.jobs.send(job).map_err(|_| StorageError::Cancelled)?;
        rx.await.map_err(|_| StorageError::Cancelled)?
    }
}

/// A closure's panic becomes its own error (its savepoint is rolled back) instead of ending the thread.
fn guarded<T, F>(f: &F, conn: &mut AnyConnection) -> Result<T, StorageError>
where
    F: Fn(&mut AnyConnection) -> Result<T, StorageError>,
{
    std::panic::catch_unwind(AssertUnwindSafe(|| f(conn))).unwrap_or(Err(StorageError::Cancelled))
}

fn serve(pool: &Pool, queue: &mpsc::Receiver<Job>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(pool, batch);
    }
}

fn run_batch(pool: &Pool, batch: Vec<Job>) {
    let mut pooled = match pool.get() {
        Ok(c) => c,
        Err(e) => {
            let why = e.to_string();
            for job in batch {
                job(Slot::Refused(&why))(None);
            }
            return;
        }
    };
    let conn: &mut AnyConnection = &mut pooled;
    if begin_batch(conn).is_err() {
        // The file refuses writes (read-only) or the lock could not be had: each call runs alone, as it
        // would without the writer, so reads still answer and writes fail with their own error.
        for job in batch {
            job(Slot::Alone(&mut *conn))(None);
        }
        return;
    }
    let finishes: Vec<Finish> = batch
        .into_iter()
        .map(|job| job(Slot::Batched(&mut *conn)))
        .collect();
    let commit = Tm::commit_transaction(conn)
        .map_err(StorageError::from)
        .err();
    if commit.is_some() {
        let _ = Tm::rollback_transaction(conn);
    }
    for finish in finishes {
        finish(commit.as_ref());
    }
}

/// Begins the batch's transaction and takes the write lock at once (see [`super::take_write_lock`]),
/// trying again a few times while another connection holds it.
fn begin_batch(conn: &mut AnyConnection) -> Result<(), StorageError> {
    let mut attempt = 0;
    loop {
        Tm::begin_transaction(conn)?;
        match super::take_write_lock(conn) {
            Ok(()) => return Ok(()),
            Err(e) => {
                let _ = Tm::rollback_transaction(conn);
                if !super::is_locked(&e) || attempt >= 5 {
                    return Err(e.into());
                }
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20 * attempt));
            }
        }
    }
}
