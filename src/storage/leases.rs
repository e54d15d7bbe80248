//! `job_leases`: named, expiring leases so a job runs at most once at a time across all instances.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::job_leases;
use super::{AnyConnection, ExecuteOne, StorageError};

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
    diesel::update(
        job_leases::table.filter(job_leases::name.eq(name)).filter(
            job_leases::lease_until
                .is_null()
                .or(job_leases::lease_until.lt(now))
                .or(job_leases::owner.eq(owner)),
        ),
    )
    .set((
        lease_taken!(job_leases::owner, job_leases::lease_until, owner, until),
        job_leases::last_started_at.eq(Some(now)),
    ))
    .execute_one(conn)
}

/// Extends a lease we hold; false if it was lost (expired and taken by another instance).
pub fn extend(
    conn: &mut AnyConnection,
    name: &str,
    owner: &str,
    until: NaiveDateTime,
) -> Result<bool, StorageError> {
    diesel::update(
        job_leases::table
            .filter(job_leases::name.eq(name))
            .filter(job_leases::owner.eq(owner)),
    )
    .set(job_leases::lease_until.eq(Some(until)))
    .execute_one(conn)
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
        lease_released!(job_leases::owner, job_leases::lease_until),
        job_leases::last_finished_at.eq(Some(super::now())),
        job_leases::last_result.eq(result),
    ))
    .execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut AnyConnection, name: &str) -> Result<Option<JobLease>, StorageError> {
    find_by!(conn, job_leases::name.eq(name) => JobLease)
}

/// The `LIKE` pattern matching owners `{instance_id}:…` (the per-call owners of refresh, sweep and
/// provisioning), with `LIKE`'s wildcards in the id escaped.
fn owner_prefix(instance_id: &str) -> String {
    let mut p = String::with_capacity(instance_id.len() + 2);
    for ch in instance_id.chars() {
        if matches!(ch, '\\' | '%' | '_') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push_str(":%");
    p
}

/// Releases the leases held under per-call owners `{instance_id}:…` (row refresh leases, the refresh
/// sweep's and provisioning's job leases); [`super::instance::release_all`] releases those held under the
/// plain instance id. Together they let an instance restarted with the same `INSTANCE_ID` after being
/// killed take back at once what its previous life held, instead of waiting for the leases to expire (up
/// to five minutes for webhook bodies). Call it before any worker of this process runs. A random default
/// id matches nothing; `INSTANCE_ID` must be unique among live processes.
pub fn release_prefixed(
    conn: &mut AnyConnection,
    instance_id: &str,
    now: NaiveDateTime,
) -> Result<usize, StorageError> {
    use super::schema::amocrm_connections as c;
    let prefix = owner_prefix(instance_id);
    let rows = diesel::update(c::table.filter(c::refresh_lease_owner.like(&prefix).escape('\\')))
        .set(lease_released!(
            c::refresh_lease_owner,
            c::refresh_lease_until,
            until now
        ))
        .execute(conn)?;
    let jobs =
        diesel::update(job_leases::table.filter(job_leases::owner.like(&prefix).escape('\\')))
            .set(lease_released!(job_leases::owner, job_leases::lease_until, until now))
            .execute(conn)?;
    Ok(rows + jobs)
}

aggregate_handle! {
    /// Job leases, as the use cases see them: each call is one trip to the blocking pool.
    Leases => leases
}

impl Leases<'_> {
    /// Takes the named lease for `ttl` from now if it is free, expired or already ours.
    pub async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: chrono::Duration,
    ) -> Result<bool, StorageError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.db
            .run(move |c| {
                let now = super::now();
                try_acquire(c, &name, &owner, now, now + ttl)
            })
            .await
    }

    /// Moves a lease we hold to end `ttl` from now; false if it was lost.
    pub async fn extend(
        &self,
        name: &str,
        owner: &str,
        ttl: chrono::Duration,
    ) -> Result<bool, StorageError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.db
            .run(move |c| extend(c, &name, &owner, super::now() + ttl))
            .await
    }

    /// Releases a lease we hold, recording the job's result for later callers.
    pub async fn release(
        &self,
        name: &str,
        owner: &str,
        result: Option<String>,
    ) -> Result<(), StorageError> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.db
            .run(move |c| release(c, &name, &owner, result.as_deref()))
            .await
    }

    pub async fn get(&self, name: &str) -> Result<Option<JobLease>, StorageError> {
        self.db.run_with(name, get).await
    }
}

#[cfg(test)]
mod tests {
    use super::owner_prefix;

    #[test]
    fn the_owner_prefix_escapes_like_wildcards() {
        assert_eq!(owner_prefix("web-1"), "web-1:%");
        assert_eq!(owner_prefix("a_b%c\\d"), "a\\_b\\%c\\\\d:%");
    }
}
