//! The test's own rows and counts, written past the service (fixtures and checks).

use amocrm_connector::domain::status::InboxState;
use amocrm_connector::storage::schema::amocrm_webhook_inbox as i;
use amocrm_connector::storage::{AnyConnection, Db, StorageError};
use chrono::NaiveDateTime;
use diesel::prelude::*;

/// A pending amoCRM webhook body of `seller-1` (connection 1) received at `received_at` and due then;
/// leased to `lease_owner` for five minutes from then, when one is named. For `Db::run`.
pub fn inbox_row(
    body: &[u8],
    received_at: NaiveDateTime,
    lease_owner: Option<&str>,
) -> impl Fn(&mut AnyConnection) -> Result<(), StorageError> + use<> {
    let (body, owner) = (body.to_vec(), lease_owner.map(str::to_owned));
    let lease_until = owner
        .as_ref()
        .map(|_| received_at + chrono::TimeDelta::minutes(5));
    move |c| {
        diesel::insert_into(i::table)
            .values((
                i::connection_id.eq(1i64),
                i::seller_id.eq("seller-1"),
                i::body.eq(body.clone()),
                i::state.eq(InboxState::Pending),
                i::next_attempt_at.eq(received_at),
                i::lease_owner.eq(owner.clone()),
                i::lease_until.eq(lease_until),
                i::received_at.eq(received_at),
            ))
            .execute(c)?;
        Ok(())
    }
}

/// The number `query` counts (`SELECT COUNT(*) AS n …`), on either backend.
pub async fn count_sql(db: &Db, query: &'static str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    db.run(move |c| {
        let row: Count = match c {
            AnyConnection::Sqlite(c) => diesel::sql_query(query).get_result(c)?,
            AnyConnection::Postgresql(c) => diesel::sql_query(query).get_result(c)?,
        };
        Ok(row.n)
    })
    .await
    .expect("counted")
}
