//! From stored amoCRM webhook bodies to marketplace events: `order.created`, `order.status_changed`,
//! `payment.completed` (once per lead), `order.cancelled`.
//!
//! Webhooks are hints: they come late, twice, out of order, several changes in one second. Each lead event
//! is compared with what the connector last knew of the lead (`lead_states`):
//! - older than the known state (`last_modified` before it) or the same stage: nothing happens;
//! - clearly newer (`last_modified` after it): the webhook's stage is taken;
//! - undecidable (same second, or a compact Digital Pipeline body without `last_modified`): the lead is read
//!   back from amoCRM and its current stage is taken.
//!
//! Before any `payment.completed` the lead is always read back from amoCRM, and the payment's dedupe key
//! (`payment.completed:{seller}:{lead}`) makes "once per lead" a database constraint. The new state and its
//! events are written in one transaction guarded by a compare-and-set on the old state, so concurrent
//! processors cannot both act on one change. Leads outside the seller's pipeline, and contacts, companies,
//! tasks …, are left alone (their raw bodies stay in the inbox for the retention period).

use amocrm_client::webhook::{self, LeadAction, LeadEvent};
use amocrm_client::{ApiError as AmoApiError, Lead};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::domain::status::{ConnectionStatus, OrderStatus};
use crate::services::tokens::{self, TokenError};
use crate::storage::connections::{self, Connection};
use crate::storage::events::NewEvent;
use crate::storage::inbox::InboxRow;
use crate::storage::lead_states::{self, LeadState, OrderLink};
use crate::storage::{self, StorageError};

/// Currency reported for leads that belong to no marketplace order (the marketplace's default).
pub const DEFAULT_CURRENCY: &str = "UZS";
/// amoCRM's system stages, the same id in every pipeline.
pub const WON_STATUS: i64 = 142;
pub const LOST_STATUS: i64 = 143;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// amoCRM could not be asked right now (5xx, network, token being refreshed): try the body later.
    #[error("amoCRM unavailable: {0}")]
    Retry(String),
    /// amoCRM answered 429: try the body no sooner than it said.
    #[error("amoCRM rate limit hit (429), retry after {}s", .0.as_secs())]
    RateLimited(std::time::Duration),
    /// The seller must reconnect before the lead can be read back; the body waits.
    #[error("amoCRM connection needs the seller: {0}")]
    NeedsReconnect(String),
    /// The body can never be processed (operator attention).
    #[error("{0}")]
    Fatal(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What processing one body came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyOutcome {
    pub lead_events: usize,
    pub events_recorded: usize,
    /// Why nothing was done, when nothing was (kept on the inbox row).
    pub note: Option<String>,
}

/// One view of a lead: from a webhook or read back from amoCRM.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observation {
    pipeline_id: Option<i64>,
    status_id: Option<i64>,
    last_modified: Option<i64>,
    price: Option<i64>,
    name: Option<String>,
    order_number: Option<String>,
    /// Read back from amoCRM (authoritative) rather than taken from a webhook.
    fetched: bool,
}

fn to_i64(v: Option<u64>) -> Option<i64> {
    v.and_then(|v| i64::try_from(v).ok())
}

impl Observation {
    fn from_webhook(conn: &Connection, e: &LeadEvent) -> Self {
        let order_number = conn.field_order_number_id.and_then(|fid| {
            e.custom_fields
                .iter()
                .find(|(id, _)| i64::try_from(*id).ok() == Some(fid))
                .and_then(|(_, values)| values.iter().find(|v| !v.trim().is_empty()).cloned())
        });
        Self {
            pipeline_id: to_i64(e.pipeline_id),
            status_id: to_i64(e.status_id),
            last_modified: e.last_modified,
            price: e.price,
            name: e.name.clone(),
            order_number,
            fetched: false,
        }
    }

    fn from_lead(conn: &Connection, l: &Lead) -> Self {
        let order_number = conn
            .field_order_number_id
            .and_then(|fid| u64::try_from(fid).ok())
            .and_then(|fid| {
                l.field_texts(fid)
                    .into_iter()
                    .find(|v| !v.trim().is_empty())
            });
        Self {
            pipeline_id: to_i64(l.pipeline_id),
            status_id: to_i64(l.status_id),
            last_modified: Some(l.updated_at),
            price: Some(l.price),
            name: Some(l.name.clone()),
            order_number,
            fetched: true,
        }
    }

    fn complete(&self) -> bool {
        self.pipeline_id.is_some() && self.status_id.is_some()
    }

    fn same_stage(&self, s: &LeadState) -> bool {
        self.pipeline_id == s.pipeline_id && self.status_id == s.status_id
    }
}

/// The seller's stage mapping: which internal status an amoCRM stage of the seller's pipeline means.
pub fn internal_status(
    conn: &Connection,
    pipeline_id: Option<i64>,
    status_id: Option<i64>,
) -> Option<OrderStatus> {
    let (pipeline, status) = (pipeline_id?, status_id?);
    if conn.pipeline_id != Some(pipeline) {
        return None;
    }
    let stages = [
        (conn.stage_pending, OrderStatus::Pending),
        (conn.stage_awaiting_payment, OrderStatus::AwaitingPayment),
        (conn.stage_paid, OrderStatus::Paid),
        (conn.stage_shipping, OrderStatus::Shipping),
        (
            Some(conn.stage_completed.unwrap_or(WON_STATUS)),
            OrderStatus::Completed,
        ),
        (
            Some(conn.stage_cancelled.unwrap_or(LOST_STATUS)),
            OrderStatus::Cancelled,
        ),
    ];
    stages
        .iter()
        .find(|(id, _)| *id == Some(status))
        .map(|(_, s)| *s)
}

/// Reads a lead back from amoCRM through the token provider (refreshed ahead of expiry, a 401 re-reads
/// the stored pair once). `None`: the lead no longer exists.
async fn fetch_lead(
    state: &AppState,
    conn: &Connection,
    lead_id: u64,
) -> Result<Option<Lead>, ProcessError> {
    let result = tokens::with_api(state, &conn.seller_id, |amo| async move {
        amo.api().get_lead(lead_id).await
    })
    .await;
    match result {
        Ok(lead) => Ok(lead),
        Err(TokenError::Api(AmoApiError::NotFound)) => Ok(None),
        Err(e @ (TokenError::NeedsReconnect(_) | TokenError::NotConnected)) => {
            Err(ProcessError::NeedsReconnect(e.to_string()))
        }
        Err(e @ TokenError::Corrupt(_)) => Err(ProcessError::NeedsReconnect(e.to_string())),
        Err(TokenError::Storage(e)) => Err(ProcessError::Storage(e)),
        Err(TokenError::Api(AmoApiError::RateLimited { retry_after })) => {
            Err(ProcessError::RateLimited(retry_after))
        }
        // 5xx, network, a refresh that could not happen now, or anything amoCRM refused: later.
        Err(e) => Err(ProcessError::Retry(e.to_string())),
    }
}

/// Processes one stored body: every lead event in it, in body order.
pub async fn process_body(state: &AppState, row: &InboxRow) -> Result<BodyOutcome, ProcessError> {
    let conn_id = row.connection_id;
    let Some(conn) = state
        .db
        .run(move |c| connections::find_by_id(c, conn_id))
        .await?
    else {
        return Ok(note("the connection no longer exists"));
    };
    if conn.seller_id != row.seller_id {
        return Ok(note("the connection now belongs to another seller"));
    }
    if ConnectionStatus::parse(&conn.status) == Some(ConnectionStatus::Revoked) {
        return Ok(note("the connection was revoked"));
    }
    let payload = webhook::parse(&row.body).map_err(|e| ProcessError::Fatal(e.to_string()))?;
    if crate::services::ingest::check_account(&conn, &payload).is_err() {
        // The seller moved to another amoCRM account after this body was stored.
        return Ok(note(
            "the body is from an account the seller no longer uses",
        ));
    }
    if conn.pipeline_id.is_none() {
        return Ok(note("the seller's pipeline is not provisioned yet"));
    }
    let mut outcome = BodyOutcome {
        lead_events: payload.events.len(),
        ..BodyOutcome::default()
    };
    for event in &payload.events {
        outcome.events_recorded += handle_lead_event(state, &conn, event).await?;
    }
    if payload.events.is_empty() {
        outcome.note = Some("no lead events".into());
    }
    Ok(outcome)
}

fn note(text: &str) -> BodyOutcome {
    BodyOutcome {
        note: Some(text.to_owned()),
        ..BodyOutcome::default()
    }
}

/// Actions that report a lead's current stage.
fn reports_stage(a: &LeadAction) -> bool {
    matches!(
        a,
        LeadAction::Add
            | LeadAction::Update
            | LeadAction::Status
            | LeadAction::Responsible
            | LeadAction::Restore
    )
}

/// Handles one lead event; returns how many marketplace events it recorded.
async fn handle_lead_event(
    state: &AppState,
    conn: &Connection,
    e: &LeadEvent,
) -> Result<usize, ProcessError> {
    if !reports_stage(&e.action) {
        return Ok(0);
    }
    let Some(our_pipeline) = conn.pipeline_id else {
        return Ok(0);
    };
    let Ok(lead_id) = i64::try_from(e.lead_id) else {
        return Ok(0);
    };
    let seller = conn.seller_id.clone();
    let from_webhook = Observation::from_webhook(conn, e);
    // Reading back is expensive (rate limit): at most once per event, kept across compare-and-set retries.
    let mut fetched: Option<Observation> = None;
    for _ in 0..5 {
        let s = {
            let seller = seller.clone();
            state
                .db
                .run(move |c| lead_states::find(c, &seller, lead_id))
                .await?
        };
        let seen_pipeline = from_webhook
            .pipeline_id
            .or(s.as_ref().and_then(|s| s.pipeline_id));
        let relevant = seen_pipeline == Some(our_pipeline)
            || to_i64(e.old_pipeline_id) == Some(our_pipeline)
            || s.as_ref()
                .is_some_and(|s| s.pipeline_id == Some(our_pipeline));
        if !relevant {
            return Ok(0);
        }

        // 1. What is the lead's stage now?
        let mut truth = match (&fetched, &s) {
            (Some(f), _) => f.clone(),
            (None, Some(s))
                if from_webhook.complete()
                    && from_webhook
                        .last_modified
                        .is_some_and(|lm| lm < s.last_modified) =>
            {
                return Ok(0); // an older change arriving late
            }
            (None, Some(s)) if from_webhook.complete() && from_webhook.same_stage(s) => {
                let lm = from_webhook.last_modified.unwrap_or(0);
                if lm > s.last_modified {
                    let next = LeadState {
                        last_modified: lm,
                        updated_at: storage::now(),
                        ..s.clone()
                    };
                    if apply(state, Some(s), next, Vec::new()).await?.is_none() {
                        continue;
                    }
                }
                return Ok(0); // a duplicate, or a change that is not a stage move
            }
            (None, Some(s))
                if from_webhook.complete()
                    && from_webhook
                        .last_modified
                        .is_some_and(|lm| lm > s.last_modified) =>
            {
                from_webhook.clone()
            }
            (None, None) if from_webhook.complete() && from_webhook.last_modified.is_some() => {
                from_webhook.clone()
            }
            (None, _) => {
                let f = read_back(state, conn, e.lead_id).await?;
                fetched = Some(f.clone());
                f
            }
        };
        // 2. A payment is only ever reported from amoCRM's own answer.
        let paid_before = s.as_ref().is_some_and(|s| s.paid);
        let maybe_paid = internal_status(conn, truth.pipeline_id, truth.status_id)
            .is_some_and(OrderStatus::implies_payment);
        if maybe_paid && !paid_before && !truth.fetched {
            let f = read_back(state, conn, e.lead_id).await?;
            fetched = Some(f.clone());
            truth = f;
        }
        if truth.pipeline_id.is_none() {
            return Ok(0); // deleted in amoCRM meanwhile
        }
        if let Some(s) = &s
            && truth.same_stage(s)
        {
            return Ok(0);
        }
        // 3. Whose lead is it?
        let mut order = find_order(state, conn, lead_id, &truth, s.as_ref()).await?;
        if order.is_none()
            && s.is_none()
            && truth.order_number.is_none()
            && !truth.fetched
            && truth.pipeline_id == Some(our_pipeline)
        {
            // A compact body carries no fields: ask amoCRM before calling a lead foreign.
            let f = read_back(state, conn, e.lead_id).await?;
            fetched = Some(f.clone());
            if f.pipeline_id.is_none() {
                return Ok(0);
            }
            truth = f;
            order = find_order(state, conn, lead_id, &truth, s.as_ref()).await?;
        }
        // 4. The new state and the events it implies.
        let (next, events) = decide(conn, e, lead_id, s.as_ref(), &truth, order.as_ref());
        match apply(state, s.as_ref(), next, events).await? {
            Some(recorded) => return Ok(recorded),
            None => continue, // someone changed the lead's state meanwhile: decide again
        }
    }
    Err(ProcessError::Retry(format!(
        "lead {lead_id}: its state kept changing under us"
    )))
}

async fn read_back(
    state: &AppState,
    conn: &Connection,
    lead_id: u64,
) -> Result<Observation, ProcessError> {
    Ok(match fetch_lead(state, conn, lead_id).await? {
        Some(l) => Observation::from_lead(conn, &l),
        None => Observation {
            pipeline_id: None,
            status_id: None,
            last_modified: None,
            price: None,
            name: None,
            order_number: None,
            fetched: true,
        },
    })
}

async fn find_order(
    state: &AppState,
    conn: &Connection,
    lead_id: i64,
    truth: &Observation,
    s: Option<&LeadState>,
) -> Result<Option<OrderLink>, ProcessError> {
    let seller = conn.seller_id.clone();
    let number = truth.order_number.clone();
    let known = s.and_then(|s| s.order_id.clone());
    Ok(state
        .db
        .run(move |c| {
            if let Some(o) = lead_states::order_by_lead(c, &seller, lead_id)? {
                return Ok(Some(o));
            }
            if let Some(id) = &known
                && let Some(o) = lead_states::order_by_id(c, id)?
            {
                return Ok(Some(o));
            }
            if let Some(n) = &number
                && let Some(o) = lead_states::order_by_number(c, &seller, n)?
                && o.lead_id.is_none_or(|l| l == lead_id)
            {
                return Ok(Some(o));
            }
            Ok(None)
        })
        .await?)
}

/// Writes the decision; `None` when the stored state changed meanwhile, else the events recorded.
async fn apply(
    state: &AppState,
    prev: Option<&LeadState>,
    next: LeadState,
    events: Vec<NewEvent>,
) -> Result<Option<usize>, ProcessError> {
    let prev = prev.cloned();
    let result = state
        .db
        .run(move |c| lead_states::apply(c, prev.as_ref(), &next, &events))
        .await?;
    if result.is_some_and(|n| n > 0) {
        crate::services::delivery::new_event_signal().notify_one();
    }
    Ok(result)
}

/// A JSON amount from minor units (1/100): whole numbers stay integers.
fn amount_json(minor: i64) -> Value {
    if minor % 100 == 0 {
        json!(minor / 100)
    } else {
        json!(minor as f64 / 100.0)
    }
}

/// The next state of a lead and the events that moving to it means.
fn decide(
    conn: &Connection,
    e: &LeadEvent,
    lead_id: i64,
    s: Option<&LeadState>,
    truth: &Observation,
    order: Option<&OrderLink>,
) -> (LeadState, Vec<NewEvent>) {
    let seller = conn.seller_id.as_str();
    let ours = conn.pipeline_id;
    let in_ours = truth.pipeline_id.is_some() && truth.pipeline_id == ours;
    let new_status = internal_status(conn, truth.pipeline_id, truth.status_id);
    // The stage it comes from: what we knew, else what the webhook says it left.
    let (old_pipeline, old_status_id) = match s {
        Some(s) => (s.pipeline_id, s.status_id),
        None => match e.action {
            LeadAction::Status => (
                to_i64(e.old_pipeline_id).or(to_i64(e.pipeline_id)),
                to_i64(e.old_status_id),
            ),
            _ => (None, None),
        },
    };
    let old_status = internal_status(conn, old_pipeline, old_status_id);
    let paid_before = s.is_some_and(|s| s.paid);
    let created_by_us = order.is_some() || s.is_some_and(|s| s.created_by_us);
    let (order_id, order_number) = match order {
        Some(o) => (json!(o.order_id), json!(o.order_number)),
        None => (Value::Null, Value::Null),
    };
    let mut events = Vec::new();

    if in_ours && s.is_none() && order.is_none() {
        events.push(NewEvent::new(
            "order.created",
            seller,
            json!({
                "lead_id": lead_id,
                "name": truth.name.clone().unwrap_or_default(),
                "price": truth.price.unwrap_or(0),
                "pipeline_id": truth.pipeline_id,
                "status_id": truth.status_id,
            }),
            Some(format!("order.created:{seller}:{lead_id}")),
        ));
    }
    let moved = old_status_id.is_some()
        && (old_pipeline, old_status_id) != (truth.pipeline_id, truth.status_id);
    if in_ours && moved {
        events.push(NewEvent::new(
            "order.status_changed",
            seller,
            json!({
                "order_id": order_id,
                "order_number": order_number,
                "lead_id": lead_id,
                "status": new_status.map(OrderStatus::as_str),
                "previous_status": old_status.map(OrderStatus::as_str),
                "amocrm": {
                    "pipeline_id": truth.pipeline_id,
                    "status_id": truth.status_id,
                    "old_status_id": old_status_id,
                },
            }),
            None,
        ));
    }
    let pays = in_ours && truth.fetched && new_status.is_some_and(OrderStatus::implies_payment);
    if pays && !paid_before {
        let (amount, currency) = match order {
            Some(o) => (amount_json(o.total_amount_minor), o.currency.clone()),
            None => (json!(truth.price.unwrap_or(0)), DEFAULT_CURRENCY.to_owned()),
        };
        events.push(NewEvent::new(
            "payment.completed",
            seller,
            json!({
                "order_id": order_id,
                "order_number": order_number,
                "lead_id": lead_id,
                "amount": amount,
                "currency": currency,
            }),
            Some(format!("payment.completed:{seller}:{lead_id}")),
        ));
    }
    if in_ours
        && new_status == Some(OrderStatus::Cancelled)
        && old_status != Some(OrderStatus::Cancelled)
    {
        events.push(NewEvent::new(
            "order.cancelled",
            seller,
            json!({
                "order_id": order_id,
                "order_number": order_number,
                "lead_id": lead_id,
            }),
            None,
        ));
    }
    let next = LeadState {
        seller_id: seller.to_owned(),
        lead_id,
        order_id: order.map(|o| o.order_id.clone()),
        pipeline_id: truth.pipeline_id,
        status_id: truth.status_id,
        last_modified: s
            .map_or(0, |s| s.last_modified)
            .max(truth.last_modified.unwrap_or(0)),
        paid: paid_before || pays,
        created_by_us,
        updated_at: storage::now(),
    };
    (next, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_keep_whole_numbers_whole() {
        assert_eq!(amount_json(15_000_000), json!(150_000));
        assert_eq!(amount_json(1250), json!(12.5));
    }
}
