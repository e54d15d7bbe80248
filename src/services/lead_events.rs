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

use crate::domain::status::{ConnectionStatus, OrderStatus};
use crate::services::Context;
use crate::services::tokens::{self, TokenError};
use crate::storage::connections::Connection;
use crate::storage::events::NewEvent;
use crate::storage::inbox::InboxRow;
use crate::storage::lead_states::{LeadState, OrderLink};
use crate::storage::{self, StorageError};

/// Currency reported for leads that belong to no marketplace order (the marketplace's default).
pub const DEFAULT_CURRENCY: &str = "UZS";

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

/// Reads a lead back from amoCRM through the token provider (refreshed ahead of expiry, a 401 re-reads
/// the stored pair once). `None`: the lead no longer exists.
async fn fetch_lead(
    state: &Context,
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
#[tracing::instrument(skip_all, fields(seller_id = %row.seller_id, account_id = tracing::field::Empty))]
pub async fn process_body(state: &Context, row: &InboxRow) -> Result<BodyOutcome, ProcessError> {
    let Some(conn) = state.db.connections().by_id(row.connection_id).await? else {
        return Ok(note("the connection no longer exists"));
    };
    tracing::Span::current().record("account_id", conn.account_id);
    if conn.seller_id != row.seller_id {
        return Ok(note("the connection now belongs to another seller"));
    }
    if conn.status == ConnectionStatus::Revoked {
        return Ok(note("the connection was revoked"));
    }
    let payload = webhook::parse(&row.body).map_err(|e| ProcessError::Fatal(e.to_string()))?;
    if crate::services::ingest::check_account(&conn, &payload).is_err() {
        // The seller moved to another amoCRM account after this body was stored.
        return Ok(note(
            "the body is from an account the seller no longer uses",
        ));
    }
    let contacts = keep_index_fresh(state, &conn, &payload.other).await?;
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
        outcome.note = Some(if contacts > 0 {
            format!("{contacts} contact changes kept in the buyer index")
        } else {
            "no lead events".into()
        });
    }
    Ok(outcome)
}

/// Contacts added, changed or deleted in amoCRM keep the buyer index fresh (a buyer who got a phone in
/// amoCRM is found by it on their next order; a deleted contact is not attached again). Returns how many
/// contact changes were applied.
async fn keep_index_fresh(
    state: &Context,
    conn: &Connection,
    other: &[webhook::OtherEntityEvent],
) -> Result<usize, ProcessError> {
    let settings = state.db.settings().get(&conn.seller_id).await?;
    let country = &settings.settings.contacts.default_country;
    let buyers = state.db.buyers();
    let mut n = 0;
    for e in other.iter().filter(|e| e.entity == "contact") {
        let Some(id) = e.id.and_then(|i| i64::try_from(i).ok()) else {
            continue;
        };
        if e.action == "delete" {
            buyers.forget_contact(&conn.seller_id, id).await?;
            n += 1;
            continue;
        }
        let keys = crate::domain::buyer::contact_keys(&e.phones, &e.emails, country);
        if keys.is_empty() {
            continue;
        }
        let owner = e.responsible_user_id.and_then(|u| i64::try_from(u).ok());
        let keys = keys
            .iter()
            .map(crate::domain::buyer::BuyerKey::as_index)
            .collect();
        buyers.remember(&conn.seller_id, keys, id, owner).await?;
        n += 1;
    }
    Ok(n)
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

/// One lead event being handled, with what every step of it reads.
struct Handling<'a> {
    state: &'a Context,
    conn: &'a Connection,
    e: &'a LeadEvent,
    lead_id: i64,
    our_pipeline: i64,
    from_webhook: Observation,
}

/// What one attempt at a lead event came to.
enum Attempt {
    /// Finished: how many marketplace events were recorded.
    Done(usize),
    /// The stored state changed meanwhile: read it and decide again.
    Changed,
}

/// Handles one lead event; returns how many marketplace events it recorded.
#[tracing::instrument(skip_all, fields(lead_id = e.lead_id))]
async fn handle_lead_event(
    state: &Context,
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
    let h = Handling {
        state,
        conn,
        e,
        lead_id,
        our_pipeline,
        from_webhook: Observation::from_webhook(conn, e),
    };
    // Reading back is expensive (rate limit): at most once per event, kept across compare-and-set retries.
    let mut fetched: Option<Observation> = None;
    for _ in 0..5 {
        let s = state
            .db
            .lead_states()
            .find(&conn.seller_id, lead_id)
            .await?;
        if !h.relevant(s.as_ref()) {
            return Ok(0);
        }
        match attempt(&h, s.as_ref(), &mut fetched).await? {
            Attempt::Done(recorded) => return Ok(recorded),
            Attempt::Changed => continue,
        }
    }
    Err(ProcessError::Retry(format!(
        "lead {lead_id}: its state kept changing under us"
    )))
}

impl Handling<'_> {
    /// Whether the lead is, or was, in the seller's pipeline.
    fn relevant(&self, s: Option<&LeadState>) -> bool {
        let ours = Some(self.our_pipeline);
        let seen_pipeline = self
            .from_webhook
            .pipeline_id
            .or(s.and_then(|s| s.pipeline_id));
        seen_pipeline == ours
            || to_i64(self.e.old_pipeline_id) == ours
            || s.is_some_and(|s| s.pipeline_id == ours)
    }

    /// Reads the lead back from amoCRM, remembering the answer for later attempts.
    async fn fetch(&self, fetched: &mut Option<Observation>) -> Result<Observation, ProcessError> {
        let f = read_back(self.state, self.conn, self.e.lead_id).await?;
        *fetched = Some(f.clone());
        Ok(f)
    }
}

/// The lead's stage now, as far as one attempt needs to know it.
enum Stage {
    Now(Observation),
    /// Nothing to do: an older change arriving late, a duplicate, or a change that is not a stage move.
    Unchanged,
    /// The stored state changed while a newer `last_modified` was being written.
    Changed,
}

/// One attempt against the stored state `s`: the lead's stage now, a payment confirmed from amoCRM, whose
/// lead it is, then the new state and its events written if `s` is still the stored state.
async fn attempt(
    h: &Handling<'_>,
    s: Option<&LeadState>,
    fetched: &mut Option<Observation>,
) -> Result<Attempt, ProcessError> {
    let mut truth = match current_stage(h, s, fetched).await? {
        Stage::Now(t) => t,
        Stage::Unchanged => return Ok(Attempt::Done(0)),
        Stage::Changed => return Ok(Attempt::Changed),
    };
    // A payment is only ever reported from amoCRM's own answer.
    let paid_before = s.is_some_and(|s| s.paid);
    let maybe_paid = h
        .conn
        .stage_map()
        .status_of(truth.pipeline_id, truth.status_id)
        .is_some_and(OrderStatus::implies_payment);
    if maybe_paid && !paid_before && !truth.fetched {
        truth = h.fetch(fetched).await?;
    }
    if truth.pipeline_id.is_none() {
        return Ok(Attempt::Done(0)); // deleted in amoCRM meanwhile
    }
    if let Some(s) = s
        && truth.same_stage(s)
    {
        return Ok(Attempt::Done(0));
    }
    let Some(order) = whose_lead(h, s, &mut truth, fetched).await? else {
        return Ok(Attempt::Done(0)); // deleted in amoCRM meanwhile
    };
    let (next, events) = decide(h.conn, h.e, h.lead_id, s, &truth, order.as_ref());
    Ok(match apply(h.state, s, next, events).await? {
        Some(recorded) => Attempt::Done(recorded),
        None => Attempt::Changed,
    })
}

/// What the lead's stage is now: the webhook's when it is clearly newer than what we knew, else amoCRM's
/// own answer.
async fn current_stage(
    h: &Handling<'_>,
    s: Option<&LeadState>,
    fetched: &mut Option<Observation>,
) -> Result<Stage, ProcessError> {
    let w = &h.from_webhook;
    if let Some(f) = fetched {
        return Ok(Stage::Now(f.clone()));
    }
    let lm = w.last_modified;
    match s {
        Some(s) if w.complete() && lm.is_some_and(|lm| lm < s.last_modified) => {
            return Ok(Stage::Unchanged);
        }
        Some(s) if w.complete() && w.same_stage(s) => {
            let lm = lm.unwrap_or(0);
            if lm > s.last_modified {
                let next = LeadState {
                    last_modified: lm,
                    updated_at: storage::now(),
                    ..s.clone()
                };
                if apply(h.state, Some(s), next, Vec::new()).await?.is_none() {
                    return Ok(Stage::Changed);
                }
            }
            return Ok(Stage::Unchanged);
        }
        Some(s) if w.complete() && lm.is_some_and(|lm| lm > s.last_modified) => {
            return Ok(Stage::Now(w.clone()));
        }
        None if w.complete() && lm.is_some() => return Ok(Stage::Now(w.clone())),
        _ => {}
    }
    Ok(Stage::Now(h.fetch(fetched).await?))
}

/// The order the lead belongs to (`Some(None)`: none, a lead made in amoCRM). A compact body carries no
/// fields, so amoCRM is asked before a lead is called foreign; `None` when it was deleted meanwhile.
async fn whose_lead(
    h: &Handling<'_>,
    s: Option<&LeadState>,
    truth: &mut Observation,
    fetched: &mut Option<Observation>,
) -> Result<Option<Option<OrderLink>>, ProcessError> {
    let order = find_order(h.state, h.conn, h.lead_id, truth, s).await?;
    let unknown = order.is_none()
        && s.is_none()
        && truth.order_number.is_none()
        && !truth.fetched
        && truth.pipeline_id == Some(h.our_pipeline);
    if !unknown {
        return Ok(Some(order));
    }
    let f = h.fetch(fetched).await?;
    if f.pipeline_id.is_none() {
        return Ok(None);
    }
    *truth = f;
    Ok(Some(
        find_order(h.state, h.conn, h.lead_id, truth, s).await?,
    ))
}

async fn read_back(
    state: &Context,
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
    state: &Context,
    conn: &Connection,
    lead_id: i64,
    truth: &Observation,
    s: Option<&LeadState>,
) -> Result<Option<OrderLink>, ProcessError> {
    let known = s.and_then(|s| s.order_id.clone());
    Ok(state
        .db
        .lead_states()
        .order_of(&conn.seller_id, lead_id, known, truth.order_number.clone())
        .await?)
}

/// Writes the decision; `None` when the stored state changed meanwhile, else the events recorded.
async fn apply(
    state: &Context,
    prev: Option<&LeadState>,
    next: LeadState,
    events: Vec<NewEvent>,
) -> Result<Option<usize>, ProcessError> {
    let result = state
        .db
        .lead_states()
        .apply(prev.cloned(), next, events)
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
    let in_ours = truth.pipeline_id.is_some() && truth.pipeline_id == conn.pipeline_id;
    let stages = conn.stage_map();
    let new_status = stages.status_of(truth.pipeline_id, truth.status_id);
    let (old_pipeline, old_status_id) = previous_stage(e, s);
    let old_status = stages.status_of(old_pipeline, old_status_id);
    let paid_before = s.is_some_and(|s| s.paid);
    let (order_id, order_number) = match order {
        Some(o) => (json!(o.order_id), json!(o.order_number)),
        None => (Value::Null, Value::Null),
    };
    let mut events = Vec::new();
    if in_ours && s.is_none() && order.is_none() {
        events.push(created_event(seller, lead_id, truth));
    }
    let moved = old_status_id.is_some()
        && (old_pipeline, old_status_id) != (truth.pipeline_id, truth.status_id);
    if in_ours && moved {
        let payload = json!({
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
        });
        events.push(NewEvent::new("order.status_changed", seller, payload, None));
    }
    let pays = in_ours && truth.fetched && new_status.is_some_and(OrderStatus::implies_payment);
    if pays && !paid_before {
        events.push(payment_event(seller, lead_id, truth, order));
    }
    if in_ours
        && new_status == Some(OrderStatus::Cancelled)
        && old_status != Some(OrderStatus::Cancelled)
    {
        let payload = json!({
            "order_id": order_id,
            "order_number": order_number,
            "lead_id": lead_id,
        });
        events.push(NewEvent::new("order.cancelled", seller, payload, None));
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
        created_by_us: order.is_some() || s.is_some_and(|s| s.created_by_us),
        updated_at: storage::now(),
    };
    (next, events)
}

/// The stage the lead comes from: what we knew, else what a status webhook says it left.
fn previous_stage(e: &LeadEvent, s: Option<&LeadState>) -> (Option<i64>, Option<i64>) {
    match s {
        Some(s) => (s.pipeline_id, s.status_id),
        None => match e.action {
            LeadAction::Status => (
                to_i64(e.old_pipeline_id).or(to_i64(e.pipeline_id)),
                to_i64(e.old_status_id),
            ),
            _ => (None, None),
        },
    }
}

/// `order.created`: a lead made in amoCRM, in the seller's pipeline, that no marketplace order has.
fn created_event(seller: &str, lead_id: i64, truth: &Observation) -> NewEvent {
    NewEvent::new(
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
    )
}

/// `payment.completed`, once per lead (its dedupe key), with the order's amount or the lead's price.
fn payment_event(
    seller: &str,
    lead_id: i64,
    truth: &Observation,
    order: Option<&OrderLink>,
) -> NewEvent {
    let (order_id, order_number) = match order {
        Some(o) => (json!(o.order_id), json!(o.order_number)),
        None => (Value::Null, Value::Null),
    };
    let (amount, currency) = match order {
        Some(o) => (amount_json(o.total_amount_minor), o.currency.clone()),
        None => (json!(truth.price.unwrap_or(0)), DEFAULT_CURRENCY.to_owned()),
    };
    NewEvent::new(
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
    )
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
