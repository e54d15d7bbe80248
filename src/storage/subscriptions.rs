//! `webhook_subscriptions`: the marketplace's event subscriptions; signing secrets are encrypted.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use secrecy::SecretString;

use super::cipher::{Aad, CipherError, Keyring};
use super::schema::webhook_subscriptions as s;
use super::{AnyConnection, Db, StorageError};
use crate::services::keys::RotationReport;

pub const TABLE: &str = "webhook_subscriptions";
pub const SECRET_COLUMN: &str = "secret";

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = s)]
pub struct Subscription {
    pub id: String,
    pub url: String,
    pub events: String,
    pub secret_enc: Vec<u8>,
    pub active: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

pub fn secret_aad(id: &str) -> Aad<'_> {
    Aad {
        table: TABLE,
        column: SECRET_COLUMN,
        row: id,
    }
}

impl Subscription {
    pub fn secret(&self, keys: &Keyring) -> Result<SecretString, CipherError> {
        keys.decrypt(secret_aad(&self.id), &self.secret_enc)
    }

    pub fn event_list(&self) -> Vec<String> {
        serde_json::from_str(&self.events).unwrap_or_default()
    }
}

pub fn all(conn: &mut AnyConnection) -> Result<Vec<Subscription>, StorageError> {
    Ok(s::table
        .order(s::created_at.asc())
        .select(Subscription::as_select())
        .load(conn)?)
}

/// Re-encrypts subscription secrets not under the active key (part of `keys rotate`).
pub async fn rotate_all(db: &Db, keys: &Keyring) -> Result<RotationReport, StorageError> {
    let mut report = RotationReport::default();
    let rows = db.run(all).await?;
    for row in rows {
        report.scanned += 1;
        if !keys.needs_rotation(&row.secret_enc) {
            report.already_current += 1;
            continue;
        }
        let Ok(plain) = row.secret(keys) else {
            report.failed += 1;
            continue;
        };
        let fresh = keys.encrypt(
            secret_aad(&row.id),
            secrecy::ExposeSecret::expose_secret(&plain),
        );
        let (id, old) = (row.id.clone(), row.secret_enc.clone());
        let n = db
            .run(move |c| {
                Ok(diesel::update(
                    s::table
                        .filter(s::id.eq(&id))
                        .filter(s::secret_enc.eq(&old)),
                )
                .set(s::secret_enc.eq(&fresh))
                .execute(c)?)
            })
            .await?;
        if n == 1 {
            report.rotated += 1;
        } else {
            report.skipped_concurrent += 1;
        }
    }
    Ok(report)
}
