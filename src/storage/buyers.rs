//! `buyer_index` and `buyer_scans`: which amoCRM contact a buyer (by normalised phone or email, or a company by
//! its exact name) already is, per seller; and how far the page-through of an account's contacts has got.
//!
//! A key without a contact is being made by `creator_order`'s lead. [`claim`] hands a new buyer's keys to
//! exactly one order (primary keys decide, on both backends); the others see who holds them and wait, so two
//! orders of one new buyer make one contact even on two instances.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::{buyer_index as b, buyer_scans as sc};
use super::{AnyConnection, StorageError};

/// What the index knows of one key.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = b)]
pub struct IndexRow {
    pub buyer_key: String,
    pub contact_id: Option<i64>,
    pub responsible_user_id: Option<i64>,
    pub creator_order: Option<String>,
}

/// The rows of `keys` the index has, by key.
pub fn lookup(
    conn: &mut AnyConnection,
    seller_id: &str,
    keys: &[String],
) -> Result<HashMap<String, IndexRow>, StorageError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<IndexRow> = b::table
        .filter(b::seller_id.eq(seller_id))
        .filter(b::buyer_key.eq_any(keys))
        .select(IndexRow::as_select())
        .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.buyer_key.clone(), r)).collect())
}

/// Records that `keys` are `contact_id` (a search hit, a page of contacts, a webhook, a pushed lead),
/// replacing whatever the keys said before.
pub fn remember(
    conn: &mut AnyConnection,
    seller_id: &str,
    keys: &[String],
    contact_id: i64,
    responsible_user_id: Option<i64>,
) -> Result<(), StorageError> {
    let now = super::now();
    for key in keys {
        crate::per_backend!(conn, |c| diesel::insert_into(b::table)
            .values((
                b::seller_id.eq(seller_id),
                b::buyer_key.eq(key),
                b::contact_id.eq(Some(contact_id)),
                b::responsible_user_id.eq(responsible_user_id),
                b::updated_at.eq(now),
            ))
            .on_conflict((b::seller_id, b::buyer_key))
            .do_update()
            .set((
                b::contact_id.eq(Some(contact_id)),
                b::responsible_user_id.eq(responsible_user_id),
                b::creator_order.eq(None::<String>),
                b::updated_at.eq(now),
            ))
            .execute(c))?;
    }
    Ok(())
}

/// How a claim of a new buyer's keys ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The keys are this order's to create (now or from an earlier attempt).
    Ours,
    /// Another order is creating the buyer: wait for its lead.
    Held(String),
    /// Meanwhile the buyer became known.
    Known(IndexRow),
}

/// Claims every key of a new buyer for `order_id`, in one transaction: all or nothing.
pub fn claim(
    conn: &mut AnyConnection,
    seller_id: &str,
    keys: &[String],
    order_id: &str,
) -> Result<Claim, StorageError> {
    diesel::Connection::transaction(conn, |c| {
        let now = super::now();
        for key in keys {
            crate::per_backend!(c, |cn| diesel::insert_into(b::table)
                .values((
                    b::seller_id.eq(seller_id),
                    b::buyer_key.eq(key),
                    b::creator_order.eq(Some(order_id)),
                    b::updated_at.eq(now),
                ))
                .on_conflict_do_nothing()
                .execute(cn))?;
        }
        for row in lookup(c, seller_id, keys)?.into_values() {
            if row.contact_id.is_some() {
                return Ok(Claim::Known(row));
            }
            match &row.creator_order {
                Some(o) if o != order_id => return Ok(Claim::Held(o.clone())),
                _ => {}
            }
        }
        Ok(Claim::Ours)
    })
}

/// The lead of `order_id` brought its new contact and company: the keys it held now point at them (company
/// keys at the company, the buyer's keys at the contact); keys whose entity did not come are given up.
pub fn complete_creation(
    conn: &mut AnyConnection,
    order_id: &str,
    contact_id: Option<i64>,
    company_id: Option<i64>,
) -> Result<(), StorageError> {
    let now = super::now();
    let held = || b::table.filter(b::creator_order.eq(order_id));
    // Points the held `keys` at the entity `id` that came, or gives up those still without a contact.
    macro_rules! settle {
        ($keys:expr, $id:expr) => {
            match $id {
                Some(id) => diesel::update($keys)
                    .set((
                        b::contact_id.eq(Some(id)),
                        b::creator_order.eq(None::<String>),
                        b::updated_at.eq(now),
                    ))
                    .execute(conn)?,
                None => diesel::delete($keys.filter(b::contact_id.is_null())).execute(conn)?,
            }
        };
    }
    settle!(
        held().filter(b::buyer_key.not_like(COMPANY_LIKE)),
        contact_id
    );
    settle!(held().filter(b::buyer_key.like(COMPANY_LIKE)), company_id);
    Ok(())
}

/// Company keys start with this (see `domain::buyer::company_key`).
const COMPANY_LIKE: &str = "company:%";

/// Gives up the keys `order_id` held without a contact (it failed for good), so the next order creates.
pub fn release(conn: &mut AnyConnection, order_id: &str) -> Result<(), StorageError> {
    diesel::delete(
        b::table
            .filter(b::creator_order.eq(order_id))
            .filter(b::contact_id.is_null()),
    )
    .execute(conn)?;
    Ok(())
}

/// Forgets a contact deleted in amoCRM.
pub fn forget_contact(
    conn: &mut AnyConnection,
    seller_id: &str,
    contact_id: i64,
) -> Result<usize, StorageError> {
    Ok(diesel::delete(
        b::table
            .filter(b::seller_id.eq(seller_id))
            .filter(b::contact_id.eq(Some(contact_id))),
    )
    .execute(conn)?)
}

/// The keys the index holds for one contact.
pub fn keys_of(
    conn: &mut AnyConnection,
    seller_id: &str,
    contact_id: i64,
) -> Result<Vec<String>, StorageError> {
    Ok(b::table
        .filter(b::seller_id.eq(seller_id))
        .filter(b::contact_id.eq(Some(contact_id)))
        .select(b::buyer_key)
        .load(conn)?)
}

/// Forgets everything known of a seller's previous account (the seller connected another one): the index,
/// the SKU cache and the catalog found; the page-through starts again.
pub fn reset_seller(conn: &mut AnyConnection, seller_id: &str) -> Result<(), StorageError> {
    use super::schema::{catalog_skus as k, seller_settings as ss};
    diesel::delete(b::table.filter(b::seller_id.eq(seller_id))).execute(conn)?;
    diesel::delete(k::table.filter(k::seller_id.eq(seller_id))).execute(conn)?;
    diesel::update(ss::table.filter(ss::seller_id.eq(seller_id)))
        .set((
            ss::products_catalog_id.eq(None::<i64>),
            ss::catalog_checked_at.eq(None::<NaiveDateTime>),
        ))
        .execute(conn)?;
    start_scan(conn, seller_id)
}

pub fn scan_of(conn: &mut AnyConnection, seller_id: &str) -> Result<Option<Scan>, StorageError> {
    find_by!(conn, sc::seller_id.eq(seller_id) => Scan)
}

/// Where the page-through of one account's contacts stands.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = sc)]
pub struct Scan {
    pub seller_id: String,
    pub next_page: i32,
    pub finished_at: Option<NaiveDateTime>,
    pub next_attempt_at: NaiveDateTime,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Starts (or restarts from page 1) the page-through of a seller's contacts.
pub fn start_scan(conn: &mut AnyConnection, seller_id: &str) -> Result<(), StorageError> {
    let now = super::now();
    crate::per_backend!(conn, |c| diesel::insert_into(sc::table)
        .values((
            sc::seller_id.eq(seller_id),
            sc::next_page.eq(1),
            sc::next_attempt_at.eq(now),
        ))
        .on_conflict(sc::seller_id)
        .do_update()
        .set((
            sc::next_page.eq(1),
            sc::finished_at.eq(None::<NaiveDateTime>),
            sc::next_attempt_at.eq(now),
            sc::attempts.eq(0),
            sc::last_error.eq(None::<String>),
        ))
        .execute(c))?;
    Ok(())
}

pub fn due_scans(
    conn: &mut AnyConnection,
    now: NaiveDateTime,
    limit: i64,
) -> Result<Vec<Scan>, StorageError> {
    Ok(sc::table
        .filter(sc::finished_at.is_null())
        .filter(sc::next_attempt_at.le(now))
        .order(sc::next_attempt_at.asc())
        .limit(limit)
        .select(Scan::as_select())
        .load(conn)?)
}

/// Stores one page's contacts and moves the scan on (or finishes it), in one transaction, so a crash never
/// skips a page.
pub fn scanned_page(
    conn: &mut AnyConnection,
    seller_id: &str,
    page: i32,
    contacts: &[(Vec<String>, i64, Option<i64>)],
    last: bool,
) -> Result<(), StorageError> {
    diesel::Connection::transaction(conn, |c| {
        for (keys, contact_id, responsible) in contacts {
            remember(c, seller_id, keys, *contact_id, *responsible)?;
        }
        let now = super::now();
        diesel::update(
            sc::table
                .filter(sc::seller_id.eq(seller_id))
                .filter(sc::next_page.eq(page)),
        )
        .set((
            sc::next_page.eq(page + 1),
            sc::finished_at.eq(last.then_some(now)),
            sc::attempts.eq(0),
            sc::last_error.eq(None::<String>),
        ))
        .execute(c)?;
        Ok(())
    })
}

pub fn scan_failed(
    conn: &mut AnyConnection,
    seller_id: &str,
    error: &str,
    next_at: NaiveDateTime,
) -> Result<(), StorageError> {
    diesel::update(sc::table.filter(sc::seller_id.eq(seller_id)))
        .set((
            sc::attempts.eq(sc::attempts + 1),
            sc::last_error.eq(Some(error)),
            sc::next_attempt_at.eq(next_at),
        ))
        .execute(conn)?;
    Ok(())
}

aggregate_handle! {
    /// The buyer index, as the use cases see it.
    Buyers => buyers
}

impl Buyers<'_> {
    pub async fn lookup(
        &self,
        seller_id: &str,
        keys: Vec<String>,
    ) -> Result<HashMap<String, IndexRow>, StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| lookup(c, seller, &keys))
            .await
    }

    pub async fn remember(
        &self,
        seller_id: &str,
        keys: Vec<String>,
        contact_id: i64,
        responsible_user_id: Option<i64>,
    ) -> Result<(), StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| {
                remember(c, seller, &keys, contact_id, responsible_user_id)
            })
            .await
    }

    pub async fn claim(
        &self,
        seller_id: &str,
        keys: Vec<String>,
        order_id: &str,
    ) -> Result<Claim, StorageError> {
        let (seller, order) = (seller_id.to_owned(), order_id.to_owned());
        self.db.run(move |c| claim(c, &seller, &keys, &order)).await
    }

    pub async fn forget_contact(
        &self,
        seller_id: &str,
        contact_id: i64,
    ) -> Result<usize, StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| {
                forget_contact(c, seller, contact_id)
            })
            .await
    }

    pub async fn keys_of(
        &self,
        seller_id: &str,
        contact_id: i64,
    ) -> Result<Vec<String>, StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| keys_of(c, seller, contact_id))
            .await
    }

    pub async fn start_scan(&self, seller_id: &str) -> Result<(), StorageError> {
        self.db.run_with(seller_id, start_scan).await
    }

    pub async fn scan_of(&self, seller_id: &str) -> Result<Option<Scan>, StorageError> {
        self.db.run_with(seller_id, scan_of).await
    }

    pub async fn due_scans(&self, limit: i64) -> Result<Vec<Scan>, StorageError> {
        self.db
            .run(move |c| due_scans(c, super::now(), limit))
            .await
    }

    /// See [`scanned_page`]: `(keys, contact id, responsible user)` per contact of the page.
    pub async fn scanned_page(
        &self,
        seller_id: &str,
        page: i32,
        contacts: Vec<(Vec<String>, i64, Option<i64>)>,
        last: bool,
    ) -> Result<(), StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| {
                scanned_page(c, seller, page, &contacts, last)
            })
            .await
    }

    pub async fn scan_failed(
        &self,
        seller_id: &str,
        error: &str,
        next_at: NaiveDateTime,
    ) -> Result<(), StorageError> {
        let (seller, error) = (seller_id.to_owned(), error.to_owned());
        self.db
            .run(move |c| scan_failed(c, &seller, &error, next_at))
            .await
    }
}
