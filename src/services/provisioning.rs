//! Provisioning a seller's amoCRM: the pipeline with the six order stages, the two lead custom fields and
//! the webhook subscription that brings lead changes back to us.
//!
//! Idempotent: every step first looks for what a previous attempt (or connect) made — by the stored id,
//! then by name (pipeline, fields) or destination (webhook) — and only creates what is missing, so a
//! reconnect or a retry never duplicates anything. Each step's result is stored as soon as it is known; a
//! failing step leaves the tokens and the other steps in place, records what is missing, and is retried with
//! back-off by the refresh worker ([`retry_due`]).

use std::collections::HashSet;
use std::time::Duration;

use amocrm_client::{
    ApiError, CustomField, NewCustomField, NewPipeline, NewStatus, Pipeline, Status,
};

use super::tokens::{self, TokenError};
use crate::domain::ids::random_token;
use crate::services::Context;
use crate::storage::connections::Connection;
use crate::storage::{self, StorageError};

/// The amoCRM webhook events the connector subscribes each account to: lead changes become order events;
/// contact changes keep the buyer index fresh.
pub const WEBHOOK_SETTINGS: [&str; 7] = [
    "add_lead",
    "update_lead",
    "status_lead",
    "delete_lead",
    "add_contact",
    "update_contact",
    "delete_contact",
];
/// Colours of the four stages we create (from amoCRM's palette): pending, awaiting payment, paid, shipping.
pub const STAGE_COLORS: [&str; 4] = ["#fffeb2", "#ffdc7f", "#87f2c0", "#98cbff"];
/// Codes of the lead custom fields (found by code or name on a reconnect).
pub const ORDER_NUMBER_CODE: &str = "MARKETPLACE_ORDER_NUMBER";
pub const ORDER_LINK_CODE: &str = "MARKETPLACE_ORDER_LINK";
/// Names of the lead custom fields, in Uzbek like the stages.
pub const ORDER_NUMBER_NAME: &str = "Buyurtma raqami";
pub const ORDER_LINK_NAME: &str = "Buyurtma havolasi";
/// Longest back-off between provisioning attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

/// What a provisioning attempt left in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisionReport {
    pub complete: bool,
    /// Parts not in place: `pipeline`, `custom_fields`, `webhook`.
    pub missing: Vec<&'static str>,
    /// The errors met, without secrets (one line per failed step, `; `-separated).
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Another attempt for this seller is running (its result will be stored).
    #[error("provisioning of this seller is already running")]
    Busy,
}

fn lease_name(seller_id: &str) -> String {
    format!("provision:{seller_id}")
}

/// The webhook destination amoCRM posts this connection's lead changes to.
pub fn webhook_destination(state: &Context, webhook_token: &str) -> String {
    crate::services::ingest::amocrm_destination(&state.settings.base_url(), webhook_token)
}

/// Makes sure the seller's pipeline, fields and webhook subscription exist; stores their ids. Errors that
/// concern one step are recorded on the connection (and retried later), not returned.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn provision(
    state: &Context,
    seller_id: &str,
) -> Result<ProvisionReport, ProvisionError> {
    let owner = format!("{}:{}", state.settings.instance_id, random_token(8));
    let name = lease_name(seller_id);
    let ttl =
        chrono::Duration::from_std(state.settings.amocrm_request_timeout * 12).unwrap_or_default();
    if !state.db.leases().acquire(&name, &owner, ttl).await? {
        return Err(ProvisionError::Busy);
    }
    let result = provision_leased(state, seller_id).await;
    let summary = result.as_ref().ok().map(|r| {
        if r.complete {
            "complete".to_owned()
        } else {
            format!("missing: {}", r.missing.join(", "))
        }
    });
    if let Err(e) = state.db.leases().release(&name, &owner, summary).await {
        tracing::warn!(error = %e, "could not release the provisioning lease");
    }
    result
}

/// The errors of one attempt's failed steps, one line each; a step that needs a reconnect ends the attempt.
#[derive(Default)]
struct StepErrors(Option<String>);

impl StepErrors {
    fn note(&mut self, step: &str, e: TokenError) -> Result<(), ProvisionError> {
        if e.needs_reconnect() || matches!(e, TokenError::NotConnected) {
            return Err(ProvisionError::Token(e));
        }
        tracing::warn!(step, error = %e, "provisioning step failed");
        let line = format!("{step}: {e}");
        self.0 = Some(match self.0.take() {
            Some(prev) => format!("{prev}; {line}"),
            None => line,
        });
        Ok(())
    }
}

async fn provision_leased(
    state: &Context,
    seller_id: &str,
) -> Result<ProvisionReport, ProvisionError> {
    let row = load(state, seller_id).await?;
    let repo = state.db.connections();
    let mut errors = StepErrors::default();
    match ensure_pipeline(state, &row).await {
        Ok((pipeline_id, stages)) => repo.save_pipeline(row.id, pipeline_id, stages).await?,
        Err(e) => errors.note("pipeline", e)?,
    }
    match ensure_fields(state, &row).await {
        Ok((number, link)) => repo.save_fields(row.id, number, link).await?,
        Err(e) => errors.note("custom fields", e)?,
    }
    let destination = webhook_destination(state, &row.webhook_token);
    match ensure_subscription(state, &row.seller_id, &destination).await {
        Ok((webhook_id, _)) => {
            repo.save_webhook(row.id, to_i64(webhook_id), &destination)
                .await?
        }
        Err(e) => errors.note("webhook subscription", e)?,
    }
    finish(state, seller_id, errors.0).await
}

/// Records how the attempt ended: complete, or what is missing and when to try again (capped back-off).
async fn finish(
    state: &Context,
    seller_id: &str,
    first_error: Option<String>,
) -> Result<ProvisionReport, ProvisionError> {
    let row = load(state, seller_id).await?;
    let missing = row.missing_provisioning();
    let complete = missing.is_empty() && first_error.is_none();
    let error = (!complete)
        .then(|| first_error.unwrap_or_else(|| format!("missing: {}", missing.join(", "))));
    let outcome = match &error {
        None => Ok(()),
        Some(e) => {
            let attempts = u32::try_from(row.provisioning_attempts.max(0)).unwrap_or(0);
            let backoff =
                (Duration::from_secs(5) * 2u32.saturating_pow(attempts.min(16))).min(MAX_BACKOFF);
            let next_at = storage::now() + chrono::Duration::from_std(backoff).unwrap_or_default();
            Err((Some(e.as_str()), next_at))
        }
    };
    state
        .db
        .connections()
        .finish_provisioning(row.id, outcome)
        .await?;
    Ok(ProvisionReport {
        complete,
        missing,
        error,
    })
}

async fn load(state: &Context, seller_id: &str) -> Result<Connection, ProvisionError> {
    state
        .connection_of(seller_id, ProvisionError::Token(TokenError::NotConnected))
        .await
}

fn to_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

/// Pipelines and webhook subscriptions are for administrators only: a 403 there says the connecting user
/// lacks the rights, not that the account is blocked, so it fails the step instead of suspending.
const ADMIN_ROUTES: tokens::Calling = tokens::Calling {
    forbidden_is_rights: true,
    probe: false,
};

/// Finds (stored id, then name) or creates the seller's pipeline; returns its id and the six stage ids.
async fn ensure_pipeline(state: &Context, row: &Connection) -> Result<(i64, [i64; 6]), TokenError> {
    let names = state.settings.stage_names.clone();
    let stored_id = row.pipeline_id.and_then(|p| u64::try_from(p).ok());
    let stored_stages = row.stages();
    tokens::with_api_as(state, &row.seller_id, ADMIN_ROUTES, move |amo| {
        let names = names.clone();
        async move {
            let api = amo.api();
            let pipelines = api.pipelines().await?;
            if let Some(p) = stored_id.and_then(|id| pipelines.iter().find(|p| p.id == id)) {
                // The seller may have changed the mapping through the API: keep it while its stages exist.
                let ids: HashSet<i64> = p.statuses.iter().map(|s| to_i64(s.id)).collect();
                if stored_stages
                    .iter()
                    .all(|s| s.is_some_and(|s| ids.contains(&s)))
                {
                    let stages = stored_stages.map(|s| s.unwrap_or_default());
                    return Ok((to_i64(p.id), stages));
                }
                if let Some(stages) = map_stages(p, &names) {
                    return Ok((to_i64(p.id), stages));
                }
            }
            if let Some(p) = pipelines.iter().find(|p| p.name == names.pipeline)
                && let Some(stages) = map_stages(p, &names)
            {
                return Ok((to_i64(p.id), stages));
            }
            let new = NewPipeline {
                name: names.pipeline.clone(),
                sort: None,
                statuses: vec![
                    NewStatus::new(names.pending.clone(), 10, STAGE_COLORS[0]),
                    NewStatus::new(names.awaiting_payment.clone(), 20, STAGE_COLORS[1]),
                    NewStatus::new(names.paid.clone(), 30, STAGE_COLORS[2]),
                    NewStatus::new(names.shipping.clone(), 40, STAGE_COLORS[3]),
                    NewStatus {
                        id: Some(Status::WON),
                        name: names.completed.clone(),
                        sort: None,
                        color: None,
                    },
                    NewStatus {
                        id: Some(Status::LOST),
                        name: names.cancelled.clone(),
                        sort: None,
                        color: None,
                    },
                ],
            };
            let created = api.create_pipeline(&new).await?;
            map_stages(&created, &names)
                .map(|stages| (to_i64(created.id), stages))
                .ok_or_else(|| {
                    ApiError::Decode("the created pipeline lacks the stages we asked for".into())
                })
        }
    })
    .await
}

/// The six stage ids of a pipeline: ours by name (falling back to the order of its own stages), completed
/// and cancelled are amoCRM's 142 and 143.
fn map_stages(p: &Pipeline, names: &crate::config::StageNames) -> Option<[i64; 6]> {
    let mut own: Vec<&Status> = p
        .statuses
        .iter()
        .filter(|s| s.type_ == 0 && s.id != Status::WON && s.id != Status::LOST)
        .collect();
    own.sort_by_key(|s| s.sort);
    let wanted = [
        &names.pending,
        &names.awaiting_payment,
        &names.paid,
        &names.shipping,
    ];
    let mut chosen: [Option<u64>; 4] = [None; 4];
    for (i, name) in wanted.iter().enumerate() {
        chosen[i] = own.iter().find(|s| &&s.name == name).map(|s| s.id);
    }
    let mut spare = own
        .iter()
        .map(|s| s.id)
        .filter(|id| !chosen.contains(&Some(*id)))
        .collect::<Vec<_>>()
        .into_iter();
    for slot in &mut chosen {
        if slot.is_none() {
            *slot = spare.next();
        }
    }
    let [a, b, c, d] = chosen;
    Some([
        to_i64(a?),
        to_i64(b?),
        to_i64(c?),
        to_i64(d?),
        to_i64(Status::WON),
        to_i64(Status::LOST),
    ])
}

/// Finds (stored id, code, then name) or creates the order-number (text) and order-link (url) fields.
async fn ensure_fields(state: &Context, row: &Connection) -> Result<(i64, i64), TokenError> {
    let stored = (row.field_order_number_id, row.field_order_link_id);
    tokens::with_api(state, &row.seller_id, move |amo| async move {
        let api = amo.api();
        let fields = api.lead_custom_fields().await?;
        let find = |stored: Option<i64>, code: &str, name: &str| -> Option<i64> {
            let by_id = stored.and_then(|id| fields.iter().find(|f| to_i64(f.id) == id));
            by_id
                .or_else(|| fields.iter().find(|f| f.code.as_deref() == Some(code)))
                .or_else(|| fields.iter().find(|f| f.name == name))
                .map(|f: &CustomField| to_i64(f.id))
        };
        let number = find(stored.0, ORDER_NUMBER_CODE, ORDER_NUMBER_NAME);
        let link = find(stored.1, ORDER_LINK_CODE, ORDER_LINK_NAME);
        let field = |name: &str, type_: &str, code: &str| NewCustomField {
            name: name.to_owned(),
            type_: type_.to_owned(),
            code: Some(code.to_owned()),
            is_api_only: false,
        };
        let mut wanted = Vec::new();
        if number.is_none() {
            wanted.push(field(ORDER_NUMBER_NAME, "text", ORDER_NUMBER_CODE));
        }
        if link.is_none() {
            wanted.push(field(ORDER_LINK_NAME, "url", ORDER_LINK_CODE));
        }
        let created = api.create_lead_custom_fields(&wanted).await?;
        let made = |code: &str, name: &str| {
            created
                .iter()
                .find(|f| f.code.as_deref() == Some(code) || f.name == name)
                .map(|f| to_i64(f.id))
        };
        let number = number.or_else(|| made(ORDER_NUMBER_CODE, ORDER_NUMBER_NAME));
        let link = link.or_else(|| made(ORDER_LINK_CODE, ORDER_LINK_NAME));
        match (number, link) {
            (Some(n), Some(l)) => Ok((n, l)),
            _ => Err(ApiError::Decode(
                "the custom field create response lacks a field we asked for".into(),
            )),
        }
    })
    .await
}

/// Finds an enabled subscription of `destination` with our events, or subscribes it (which also re-enables
/// a subscription amoCRM disabled). Returns the webhook id and whether it had to subscribe. Provisioning and
/// the refresh sweep's daily check both come through here.
pub async fn ensure_subscription(
    state: &Context,
    seller_id: &str,
    destination: &str,
) -> Result<(u64, bool), TokenError> {
    let destination = destination.to_owned();
    tokens::with_api_as(state, seller_id, ADMIN_ROUTES, move |amo| {
        let destination = destination.clone();
        async move {
            let api = amo.api();
            let hooks = api.webhooks().await?;
            if let Some(h) = hooks.iter().find(|h| {
                h.destination == destination
                    && !h.disabled
                    && WEBHOOK_SETTINGS
                        .iter()
                        .all(|s| h.settings.iter().any(|x| x == s))
            }) {
                return Ok((h.id, false));
            }
            let hook = api
                .subscribe_webhook(&destination, &WEBHOOK_SETTINGS)
                .await?;
            Ok((hook.id, true))
        }
    })
    .await
}

/// Best-effort removal of the subscription of `conn` (as it was stored) from its account: the seller left it,
/// or revoked the connection. Never fails.
pub async fn unsubscribe_best_effort(state: &Context, conn: &Connection) {
    let token = conn.access_token(&state.keys).ok().flatten();
    let (Some(token), Some(dest)) = (token, conn.webhook_destination.clone()) else {
        return;
    };
    let Ok(host) = tokens::parse_host(state, conn.platform, &conn.host) else {
        return;
    };
    let Ok(client) = tokens::client_of(state, conn.platform) else {
        return;
    };
    let api = client.api(&host, &token);
    let call = api.unsubscribe_webhook(&dest);
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(())) => tracing::info!(host = %host, "removed the amoCRM webhook subscription"),
        Ok(Err(e)) => {
            tracing::warn!(host = %host, error = %e, "could not remove the amoCRM webhook subscription")
        }
        Err(_) => {
            tracing::warn!(host = %host, "removing the amoCRM webhook subscription timed out")
        }
    }
}

/// Retries provisioning of every active connection whose set-up is unfinished and due (worker step).
/// Returns how many were attempted.
#[tracing::instrument(name = "provisioning_step", skip_all)]
pub async fn retry_due(state: &Context) -> Result<usize, StorageError> {
    let due = state.db.connections().provisioning_due(50).await?;
    let n = due.len();
    for seller in due {
        retry(state, &seller).await?;
    }
    Ok(n)
}

/// One retry of [`retry_due`], logged in the seller's span.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
async fn retry(state: &Context, seller_id: &str) -> Result<(), StorageError> {
    match provision(state, seller_id).await {
        Ok(r) if r.complete => tracing::info!("provisioning completed"),
        Ok(r) => tracing::info!(missing = ?r.missing, "provisioning still incomplete"),
        Err(ProvisionError::Busy) => {}
        Err(ProvisionError::Token(e)) => {
            tracing::warn!(error = %e, "provisioning could not get a token");
            // Push the next attempt back so a connection without a usable token is not retried hot.
            if let Some(row) = state.db.connections().by_seller(seller_id).await? {
                let next = storage::now() + chrono::Duration::minutes(5);
                let error = row.provisioning_error.as_deref();
                state
                    .db
                    .connections()
                    .finish_provisioning(row.id, Err((error, next)))
                    .await?;
            }
        }
        Err(ProvisionError::Storage(e)) => return Err(e),
    }
    Ok(())
}
