//! `job_leases`: named, expiring leases so a job runs at most once at a time across all instances.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::job_leases;
use super::{AnyConnection, StorageError};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = job_leases)]
pub struct JobLease {
    pub name: String,
    pub owner: Option<String>,
    pub lease_until: Option<NaiveDateTime>,
    pub last_started_at: Option<NaiveDateTime>,
    pub last_finished_at: Option<NaiveDateTime>,
    pub last_result: Option<String>,
}

/// Takes the lease when it is free or expired (or already ours). One UPDATE decides, so two instances
/// racing for it cannot both win.
pub fn try_acquire(
    conn: &mut AnyConnection,
    name: &str,
    owner: &str,
    now: NaiveDateTime,
    until: NaiveDateTime,
) -> Result<bool, StorageError> {
    crate::per_backend!(conn, |c| diesel::insert_into(job_leases::table)
        .values(job_leases::name.eq(name))
        .on_conflict(job_leases::name)
        .do_nothing()
        .execute(c))?;
    let n = diesel::update(
        job_leases::table.filter(job_leases::name.eq(name)).filter(
            job_leases::lease_until
                .is_null()
                .or(job_leases::lease_until.lt(now))
                .or(job_leases::owner.eq(owner)),
        ),
    )
    .set((
        job_leases::owner.eq(Some(owner)),
        job_leases::lease_until.eq(Some(until)),
        job_leases::last_started_at.eq(Some(now)),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Extends a lease we hold; false if it was lost (expired and taken by another instance).
pub fn extend(
    conn: &mut AnyConnection,
    name: &str,
    owner: &str,
    until: NaiveDateTime,
) -> Result<bool, StorageError> {
    let n = diesel::update(
        job_leases::table
            .filter(job_leases::name.eq(name))
            .filter(job_leases::owner.eq(owner)),
    )
    .set(job_leases::lease_until.eq(Some(until)))
    .execute(conn)?;
    Ok(n == 1)
}

/// Releases a lease we hold and records the job's result for later callers.
pub fn release(
    conn: &mut AnyConnection,
    name: &str,
    owner: &str,
    result: Option<&str>,
) -> Result<(), StorageError> {
    diesel::update(
        job_leases::table
            .filter(job_leases::name.eq(name))
            .filter(job_leases::owner.eq(owner)),
    )
    .set((
        job_leases::owner.eq(None::<String>),
        job_leases::lease_until.eq(None::<NaiveDateTime>),
        job_leases::last_finished_at.eq(Some(super::now())),
        job_leases::last_result.eq(result),
    ))
    .execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<JobLease>, StorageError> {
    Ok(job_leases::table
        .filter(job_leases::name.eq(name))
        .select(JobLease::as_select())
        .first(conn)
        .optional()?)
}
