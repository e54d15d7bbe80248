//! `catalog_skus`: which element of the seller's products catalog an SKU is. A row without an element is a
//! create whose answer never came: the catalog is searched for the SKU before it is created again, so no SKU
//! is ever made twice.

use std::collections::HashMap;

use diesel::prelude::*;

use super::schema::catalog_skus as k;
use super::{AnyConnection, StorageError};

/// Known elements (`Some`) and creates in doubt (`None`) of `skus`.
pub fn lookup(
    conn: &mut AnyConnection,
    seller_id: &str,
    catalog_id: i64,
    skus: &[String],
) -> Result<HashMap<String, Option<i64>>, StorageError> {
    Ok(k::table
        .filter(k::seller_id.eq(seller_id))
        .filter(k::catalog_id.eq(catalog_id))
        .filter(k::sku.eq_any(skus))
        .select((k::sku, k::element_id))
        .load::<(String, Option<i64>)>(conn)?
        .into_iter()
        .collect())
}

/// Stores SKU → element (`None`: a create is about to be sent).
pub fn store(
    conn: &mut AnyConnection,
    seller_id: &str,
    catalog_id: i64,
    entries: &[(String, Option<i64>)],
) -> Result<(), StorageError> {
    let now = super::now();
    diesel::Connection::transaction(conn, |c| {
        for (sku, element) in entries {
            crate::per_backend!(c, |cn| diesel::insert_into(k::table)
                .values((
                    k::seller_id.eq(seller_id),
                    k::catalog_id.eq(catalog_id),
                    k::sku.eq(sku),
                    k::element_id.eq(element),
                    k::updated_at.eq(now),
                ))
                .on_conflict((k::seller_id, k::catalog_id, k::sku))
                .do_update()
                .set((k::element_id.eq(element), k::updated_at.eq(now)))
                .execute(cn))?;
        }
        Ok(())
    })
}

aggregate_handle! {
    /// The SKU cache, as the use cases see it.
    Catalog => catalog
}

impl Catalog<'_> {
    pub async fn lookup(
        &self,
        seller_id: &str,
        catalog_id: i64,
        skus: Vec<String>,
    ) -> Result<HashMap<String, Option<i64>>, StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| {
                lookup(c, seller, catalog_id, &skus)
            })
            .await
    }

    pub async fn store(
        &self,
        seller_id: &str,
        catalog_id: i64,
        entries: Vec<(String, Option<i64>)>,
    ) -> Result<(), StorageError> {
        self.db
            .run_with(seller_id, move |c, seller| {
                store(c, seller, catalog_id, &entries)
            })
            .await
    }
}
