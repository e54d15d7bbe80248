//! `seller_settings`: a seller's settings (stored whole as JSON, read back through the domain type), the
//! round-robin counter, the products catalog found in their account, and problems the push met with the
//! settings (a deleted user) for the settings page to show.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::connections;
use super::events::{self, NewEvent};
use super::schema::seller_settings as s;
use super::{AnyConnection, StorageError};
use crate::domain::settings::SellerSettings;

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = s)]
struct Row {
    seller_id: String,
    settings: String,
    round_robin_next: i64,
    products_catalog_id: Option<i64>,
    catalog_checked_at: Option<NaiveDateTime>,
    problems: Option<String>,
    updated_at: NaiveDateTime,
}

/// A seller's stored settings (the defaults when none were ever saved).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub settings: SellerSettings,
    /// The account's products catalog, when one was found; `catalog_checked_at` says when it was looked for.
    pub products_catalog_id: Option<i64>,
    pub catalog_checked_at: Option<NaiveDateTime>,
    /// What the push met that the seller should fix (shown on the settings page and in the API).
    pub problems: Option<String>,
    pub updated_at: Option<NaiveDateTime>,
}

impl Stored {
    fn defaults() -> Self {
        Self {
            settings: SellerSettings::default(),
            products_catalog_id: None,
            catalog_checked_at: None,
            problems: None,
            updated_at: None,
        }
    }

    fn from_row(r: Row) -> Result<Self, StorageError> {
        let settings = serde_json::from_str(&r.settings).map_err(|e| {
            StorageError::Other(format!(
                "stored settings of {} unreadable: {e}",
                r.seller_id
            ))
        })?;
        let _ = r.round_robin_next;
        Ok(Self {
            settings,
            products_catalog_id: r.products_catalog_id,
            catalog_checked_at: r.catalog_checked_at,
            problems: r.problems,
            updated_at: Some(r.updated_at),
        })
    }
}

pub fn get(conn: &mut AnyConnection, seller_id: &str) -> Result<Stored, StorageError> {
    let row = s::table
        .filter(s::seller_id.eq(seller_id))
        .select(Row::as_select())
        .first(conn)
        .optional()?;
    row.map_or_else(|| Ok(Stored::defaults()), Stored::from_row)
}

/// Makes sure the seller has a row (with default settings), so counters and marks have somewhere to go.
fn ensure(conn: &mut AnyConnection, seller_id: &str) -> Result<(), StorageError> {
    let json = serde_json::to_string(&SellerSettings::default()).unwrap_or_default();
    crate::per_backend!(conn, |c| diesel::insert_into(s::table)
        .values((
            s::seller_id.eq(seller_id),
            s::settings.eq(&json),
            s::updated_at.eq(super::now()),
        ))
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

/// What a settings update writes.
#[derive(Debug, Clone)]
pub struct SettingsWrite {
    pub seller_id: String,
    pub settings: SellerSettings,
    /// The connection and its new pipeline mapping, when the update chose one.
    pub pipeline: Option<(i64, i64, [i64; 6])>,
    /// `settings.updated`, recorded with the change (none when nothing changed).
    pub event: Option<NewEvent>,
}

/// Saves settings, the pipeline mapping and the event in one transaction; a new save clears the problems
/// the previous settings had.
pub fn save(conn: &mut AnyConnection, w: &SettingsWrite) -> Result<(), StorageError> {
    diesel::Connection::transaction(conn, |c| {
        ensure(c, &w.seller_id)?;
        let json = serde_json::to_string(&w.settings)
            .map_err(|e| StorageError::Other(format!("settings not serialisable: {e}")))?;
        diesel::update(s::table.filter(s::seller_id.eq(&w.seller_id)))
            .set((
                s::settings.eq(json),
                s::problems.eq(None::<String>),
                s::updated_at.eq(super::now()),
            ))
            .execute(c)?;
        if let Some((connection_id, pipeline_id, stages)) = w.pipeline {
            connections::save_pipeline(c, connection_id, pipeline_id, stages, super::now())?;
        }
        if let Some(ev) = &w.event {
            events::record(c, ev)?;
        }
        Ok(())
    })
}

/// Takes `n` consecutive round-robin positions; returns the first. One statement per backend, so two
/// instances never get the same position.
pub fn take_round_robin(
    conn: &mut AnyConnection,
    seller_id: &str,
    n: i64,
) -> Result<i64, StorageError> {
    diesel::Connection::transaction(conn, |c| {
        ensure(c, seller_id)?;
        let next: i64 = crate::per_backend!(c, |cn| diesel::update(
            s::table.filter(s::seller_id.eq(seller_id))
        )
        .set(s::round_robin_next.eq(s::round_robin_next + n))
        .returning(s::round_robin_next)
        .get_result(cn))?;
        Ok(next - n)
    })
}

pub fn set_problems(
    conn: &mut AnyConnection,
    seller_id: &str,
    problems: Option<&str>,
) -> Result<(), StorageError> {
    ensure(conn, seller_id)?;
    diesel::update(s::table.filter(s::seller_id.eq(seller_id)))
        .set(s::problems.eq(problems))
        .execute(conn)?;
    Ok(())
}

pub fn set_catalog(
    conn: &mut AnyConnection,
    seller_id: &str,
    catalog_id: Option<i64>,
) -> Result<(), StorageError> {
    ensure(conn, seller_id)?;
    diesel::update(s::table.filter(s::seller_id.eq(seller_id)))
        .set((
            s::products_catalog_id.eq(catalog_id),
            s::catalog_checked_at.eq(Some(super::now())),
        ))
        .execute(conn)?;
    Ok(())
}

aggregate_handle! {
    /// Seller settings, as the use cases see them.
    Settings => settings
}

impl Settings<'_> {
    pub async fn get(&self, seller_id: &str) -> Result<Stored, StorageError> {
        self.db.run_with(seller_id, get).await
    }

    /// See [`save`].
    pub async fn save(&self, write: SettingsWrite) -> Result<(), StorageError> {
        self.db.run(move |c| save(c, &write)).await
    }

    /// See [`take_round_robin`].
    pub async fn take_round_robin(&self, seller_id: &str, n: i64) -> Result<i64, StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| take_round_robin(c, seller, n))
            .await
    }

    pub async fn set_problems(
        &self,
        seller_id: &str,
        problems: Option<&str>,
    ) -> Result<(), StorageError> {
        let (seller, problems) = (seller_id.to_owned(), problems.map(str::to_owned));
        self.db
            .run(move |c| set_problems(c, &seller, problems.as_deref()))
            .await
    }

    pub async fn set_catalog(
        &self,
        seller_id: &str,
        catalog_id: Option<i64>,
    ) -> Result<(), StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| {
                set_catalog(c, seller, catalog_id)
            })
            .await
    }
}
