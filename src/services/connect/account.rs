//! A connection after the connect: its views, the pipeline mapping, revocation through the API and amoCRM's
//! uninstall hook.

use super::{ConnectError, FieldProblem, invalid};
use crate::domain::events::ConnectionRevoked;
use crate::domain::status::{ConnectionStatus, OrderStatus};
use crate::services::Context;
use crate::services::provisioning;
use crate::services::tokens::{self, TokenError};
use crate::storage::connections::Connection;
use crate::storage::events::NewEvent;
use crate::storage::health::Health;
use crate::storage::{self, StorageError};

/// Why the uninstall hook was refused.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("bad signature")]
    BadSignature,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// amoCRM's uninstall hook: with a valid signature, every connection of the account is revoked (tokens
/// wiped, `connection.revoked`). Returns how many connections changed.
#[tracing::instrument(skip_all, fields(account_id = tracing::field::Empty))]
pub async fn uninstall(
    state: &Context,
    client_uuid: &str,
    account_id: &str,
    signature: &str,
) -> Result<usize, UninstallError> {
    // The hook names the integration it comes from: its platform's secret signs it.
    let Some((platform, client)) = state.platforms.by_client_id(client_uuid) else {
        tracing::warn!("uninstall hook for an integration that is not ours refused");
        return Err(UninstallError::BadSignature);
    };
    let cfg = client.config();
    if !amocrm_client::verify_disconnect_signature(
        &cfg.client_id,
        &cfg.client_secret,
        client_uuid,
        account_id,
        signature,
    ) {
        tracing::warn!("uninstall hook with a bad signature refused");
        return Err(UninstallError::BadSignature);
    }
    let Ok(account_id) = account_id.trim().parse::<i64>() else {
        return Err(UninstallError::BadSignature);
    };
    tracing::Span::current().record("account_id", account_id);
    let rows = state.db.connections().by_account(account_id).await?;
    let mut changed = 0;
    for row in rows.into_iter().filter(|r| r.platform == platform) {
        if revoke_row(state, &row, "the integration was disabled in amoCRM").await? {
            changed += 1;
        }
    }
    tracing::info!(changed, "uninstall hook processed");
    Ok(changed)
}

/// `DELETE /api/v1/connections/{seller_id}`: unsubscribes the amoCRM webhook (best effort), wipes the tokens,
/// marks the connection revoked and records `connection.revoked`. Idempotent.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn revoke(state: &Context, seller_id: &str) -> Result<(), ConnectError> {
    let row = get_connection(state, seller_id).await?;
    if row.status == ConnectionStatus::Revoked {
        return Ok(());
    }
    if row.status == ConnectionStatus::Active {
        provisioning::unsubscribe_best_effort(state, &row).await;
    }
    revoke_row(state, &row, "disconnected through the marketplace").await?;
    Ok(())
}

async fn revoke_row(state: &Context, row: &Connection, reason: &str) -> Result<bool, StorageError> {
    let event = NewEvent::of(
        &row.seller_id,
        &ConnectionRevoked {
            seller_id: row.seller_id.clone(),
            account_id: row.account_id,
            reason: reason.to_owned(),
        },
        None,
    );
    state.db.connections().revoke(row.id, reason, &event).await
}

pub async fn get_connection(state: &Context, seller_id: &str) -> Result<Connection, ConnectError> {
    state.connection_of(seller_id, ConnectError::NotFound).await
}

pub async fn list_connections(
    state: &Context,
    status: Option<ConnectionStatus>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<Connection>, i64), ConnectError> {
    Ok(state.db.connections().list(status, offset, limit).await?)
}

/// A connection with its health (`None` until its first call to amoCRM).
pub type WithHealth = (Connection, Option<Health>);

/// The seller's connection with its health.
pub async fn get_with_health(state: &Context, seller_id: &str) -> Result<WithHealth, ConnectError> {
    let row = get_connection(state, seller_id).await?;
    let health = state.db.health().of(vec![row.id]).await?.into_iter().next();
    Ok((row, health))
}

/// A page of connections with their health, and the total.
pub async fn list_with_health(
    state: &Context,
    status: Option<ConnectionStatus>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<WithHealth>, i64), ConnectError> {
    let (rows, total) = list_connections(state, status, offset, limit).await?;
    let mut health = state
        .db
        .health()
        .of(rows.iter().map(|r| r.id).collect())
        .await?;
    let rows = rows
        .into_iter()
        .map(|r| {
            let h = health
                .iter()
                .position(|h| h.connection_id == r.id)
                .map(|i| health.swap_remove(i));
            (r, h)
        })
        .collect();
    Ok((rows, total))
}

/// `PUT /api/v1/connections/{seller_id}/pipeline`: a new status mapping, checked against the account (the
/// pipeline must exist and hold every status).
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn set_pipeline(
    state: &Context,
    seller_id: &str,
    pipeline_id: i64,
    stages: [i64; 6],
) -> Result<Connection, ConnectError> {
    let row = get_connection(state, seller_id).await?;
    let Ok(pid) = u64::try_from(pipeline_id) else {
        return Err(invalid(
            "pipeline_id",
            "must be a positive amoCRM pipeline id",
        ));
    };
    let found = tokens::with_api(state, &row.seller_id, move |amo| async move {
        amo.api().get_pipeline(pid).await
    })
    .await;
    let pipeline = match found {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(invalid(
                "pipeline_id",
                "no such pipeline in the seller's amoCRM",
            ));
        }
        Err(TokenError::NotConnected) => return Err(ConnectError::NotFound),
        Err(e @ TokenError::NeedsReconnect(_)) => {
            return Err(ConnectError::Unavailable(e.to_string()));
        }
        Err(e) => return Err(ConnectError::Unavailable(e.to_string())),
    };
    let mut problems = Vec::new();
    for (status, id) in OrderStatus::ALL.iter().zip(stages) {
        let known = u64::try_from(id)
            .ok()
            .is_some_and(|id| pipeline.statuses.iter().any(|s| s.id == id));
        if !known {
            problems.push(FieldProblem {
                field: status_field(*status),
                message: format!("status {id} is not a stage of pipeline {pipeline_id}"),
            });
        }
    }
    if !problems.is_empty() {
        return Err(ConnectError::Invalid(problems));
    }
    state
        .db
        .connections()
        .save_pipeline(row.id, pipeline_id, stages)
        .await?;
    get_connection(state, seller_id).await
}

/// The 422 detail key of one status of the mapping.
pub fn status_field(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Pending => "statuses.pending",
        OrderStatus::AwaitingPayment => "statuses.awaiting_payment",
        OrderStatus::Paid => "statuses.paid",
        OrderStatus::Shipping => "statuses.shipping",
        OrderStatus::Completed => "statuses.completed",
        OrderStatus::Cancelled => "statuses.cancelled",
    }
}

/// Prunes sessions and states that expired more than a day ago.
pub async fn prune_sessions(state: &Context) -> Result<usize, StorageError> {
    let before = storage::now() - chrono::Duration::days(1);
    state.db.sessions().prune_expired(before).await
}
