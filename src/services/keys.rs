//! Key rotation: re-encrypts every stored secret with the active key, in small resumable steps.

use crate::storage::cipher::{Aad, Keyring};
use crate::storage::{Db, StorageError, connections};

/// What a rotation run changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RotationReport {
    pub scanned: u64,
    pub rotated: u64,
    pub already_current: u64,
    pub skipped_concurrent: u64,
    pub failed: u64,
}

/// Re-encrypts connection tokens and subscription secrets not yet under the active key. Each row is
/// updated on its own, conditional on its ciphertext being unchanged, so the run can be interrupted and
/// started again at any point, and a refresh racing with it is never overwritten.
#[tracing::instrument(name = "key_rotation", skip_all)]
pub async fn rotate(db: &Db, keys: &Keyring) -> Result<RotationReport, StorageError> {
    let mut report = RotationReport::default();
    let mut after = 0i64;
    loop {
        let batch = db.connections().with_tokens_after(after, 200).await?;
        let Some(last) = batch.last() else { break };
        after = last.id;
        for row in batch {
            report.scanned += 1;
            let stale = [&row.access_token_enc, &row.refresh_token_enc]
                .iter()
                .any(|b| b.as_deref().is_some_and(|b| keys.needs_rotation(b)));
            if !stale {
                report.already_current += 1;
                continue;
            }
            let reseal = |blob: &Option<Vec<u8>>, column: &str| -> Result<Option<Vec<u8>>, ()> {
                let Some(blob) = blob else { return Ok(None) };
                let aad = Aad {
                    table: connections::TABLE,
                    column,
                    row: &row.seller_id,
                };
                let plain = keys.decrypt(aad, blob).map_err(|_| ())?;
                Ok(Some(keys.encrypt(
                    aad,
                    secrecy::ExposeSecret::expose_secret(&plain),
                )))
            };
            let (Ok(access), Ok(refresh)) = (
                reseal(&row.access_token_enc, connections::ACCESS_COLUMN),
                reseal(&row.refresh_token_enc, connections::REFRESH_COLUMN),
            ) else {
                tracing::warn!(seller_id = %row.seller_id, "stored token cannot be decrypted with any configured key");
                report.failed += 1;
                continue;
            };
            let changed = db
                .connections()
                .replace_ciphertexts(&row, access, refresh)
                .await?;
            if changed {
                report.rotated += 1;
            } else {
                report.skipped_concurrent += 1;
            }
        }
    }
    let subs = crate::services::subscriptions::rotate_secrets(db, keys).await?;
    report.scanned += subs.scanned;
    report.rotated += subs.rotated;
    report.already_current += subs.already_current;
    report.failed += subs.failed;
    report.skipped_concurrent += subs.skipped_concurrent;
    Ok(report)
}
