//! Domain enums stored as TEXT: row fields and filters use the enum itself, so a state's spelling lives only in
//! the enum's `as_str`/`parse` and nowhere in a query. Written once for both backends (and diesel's
//! `MultiBackend`) through the impls `String` and `&str` already have.

use diesel::backend::Backend;
use diesel::deserialize::{self, FromSql, Queryable};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::{Nullable, Text};

use crate::domain::buyer::ContactMatch;
use crate::domain::order::{MoveState, StepKind, StepState, SyncState};
use crate::domain::platform::Platform;
use crate::domain::status::{
    ConnectionStatus, DeliveryState, HealthState, InboxState, OrderStatus, ProvisioningState,
    SuspendReason,
};

/// Maps a domain enum with `as_str(self) -> &'static str` and `parse(&str) -> Option<Self>` to TEXT.
macro_rules! text_enum {
    ($ty:ty) => {
        impl<DB> FromSql<Text, DB> for $ty
        where
            DB: Backend,
            String: FromSql<Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
                let text = <String as FromSql<Text, DB>>::from_sql(bytes)?;
                <$ty>::parse(&text).ok_or_else(|| {
                    format!("unknown {} in the database: {text:?}", stringify!($ty)).into()
                })
            }
        }

        impl<DB> Queryable<Text, DB> for $ty
        where
            DB: Backend,
            Self: FromSql<Text, DB>,
        {
            type Row = Self;

            fn build(row: Self) -> deserialize::Result<Self> {
                Ok(row)
            }
        }

        /// Lets lists of states (`eq_any([Pending, Sent])`) be bound as parameters.
        impl<DB> ToSql<Text, DB> for $ty
        where
            DB: Backend,
            str: ToSql<Text, DB>,
        {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
                <str as ToSql<Text, DB>>::to_sql(self.as_str(), out)
            }
        }

        impl AsExpression<Text> for $ty {
            type Expression = <&'static str as AsExpression<Text>>::Expression;

            fn as_expression(self) -> Self::Expression {
                <&'static str as AsExpression<Text>>::as_expression(self.as_str())
            }
        }

        impl AsExpression<Text> for &$ty {
            type Expression = <&'static str as AsExpression<Text>>::Expression;

            fn as_expression(self) -> Self::Expression {
                <&'static str as AsExpression<Text>>::as_expression(self.as_str())
            }
        }

        impl AsExpression<Nullable<Text>> for $ty {
            type Expression = <&'static str as AsExpression<Nullable<Text>>>::Expression;

            fn as_expression(self) -> Self::Expression {
                <&'static str as AsExpression<Nullable<Text>>>::as_expression(self.as_str())
            }
        }

        impl AsExpression<Nullable<Text>> for &$ty {
            type Expression = <&'static str as AsExpression<Nullable<Text>>>::Expression;

            fn as_expression(self) -> Self::Expression {
                <&'static str as AsExpression<Nullable<Text>>>::as_expression(self.as_str())
            }
        }
    };
}

text_enum!(SyncState);
text_enum!(OrderStatus);
text_enum!(ConnectionStatus);
text_enum!(ProvisioningState);
text_enum!(DeliveryState);
text_enum!(InboxState);
text_enum!(Platform);
text_enum!(SuspendReason);
text_enum!(HealthState);

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "test assertions")]
    use diesel::prelude::*;
    use diesel::sql_types::Text;

    use super::*;

    diesel::table! {
        probe (id) {
            id -> Integer,
            state -> Text,
            maybe -> Nullable<Text>,
        }
    }

    #[derive(Queryable, Insertable, Debug, PartialEq)]
    #[diesel(table_name = probe)]
    struct Probe {
        id: i32,
        state: SyncState,
        maybe: Option<ConnectionStatus>,
    }

    #[test]
    fn enums_round_trip_and_filter_as_text() {
        let mut c = diesel::SqliteConnection::establish(":memory:").unwrap();
        diesel::sql_query(
            "CREATE TABLE probe (id INTEGER PRIMARY KEY, state TEXT NOT NULL, maybe TEXT)",
        )
        .execute(&mut c)
        .unwrap();
        let rows = [
            Probe {
                id: 1,
                state: SyncState::Queued,
                maybe: None,
            },
            Probe {
                id: 2,
                state: SyncState::Synced,
                maybe: Some(ConnectionStatus::RefreshFailed),
            },
        ];
        diesel::insert_into(probe::table)
            .values(&rows[..])
            .execute(&mut c)
            .unwrap();
        let synced: Vec<Probe> = probe::table
            .filter(probe::state.eq(SyncState::Synced))
            .load(&mut c)
            .unwrap();
        assert_eq!(
            synced,
            vec![Probe {
                id: 2,
                state: SyncState::Synced,
                maybe: Some(ConnectionStatus::RefreshFailed)
            }]
        );
        let raw: String = probe::table
            .select(probe::maybe.assume_not_null())
            .filter(probe::id.eq(2))
            .first(&mut c)
            .unwrap();
        assert_eq!(raw, "refresh_failed");
        diesel::sql_query("UPDATE probe SET state = 'bogus' WHERE id = 1")
            .execute(&mut c)
            .unwrap();
        let bad = probe::table.filter(probe::id.eq(1)).first::<Probe>(&mut c);
        assert!(
            bad.is_err(),
            "an unknown spelling is an error, not a default"
        );
        let _ = Text;
    }
}
text_enum!(MoveState);
text_enum!(StepKind);
text_enum!(StepState);
text_enum!(ContactMatch);
