//! Pushing queued orders to amoCRM as leads (`leads/complex`, ≤ 50 per call) and applying stage moves
//! (`PATCH /api/v4/leads`), per account, fairly, within the shared per-account rate limit.
//!
//! One [`step`] claims a few accounts that have due work (least recently served first) and gives each a
//! turn of at most `calls_per_turn` amoCRM calls, all accounts concurrently. Every call goes through
//! `AppState.amo`, whose limiter keeps each account at or under `AMOCRM_RATE_LIMIT_RPS` for everything
//! this process sends it. Outcomes:
//! - a lead per order → ids stored and `order.synced` recorded in one transaction;
//! - 429 → the account and the batch rest until `retry_after` (never sooner);
//! - 5xx / connect errors → the batch is retried after a capped exponential backoff;
//! - timeout or dropped answer (ambiguous) → the orders keep `needs_lookup` and are searched in amoCRM
//!   (by order number) before they may be sent again; a found lead is adopted, so no duplicate is made;
//! - 400 `validation-errors` → the named orders fail for good (`order.sync_failed`), the rest go again;
//!   errors that point at our pipeline or fields mean they were deleted in amoCRM: re-provision, then push;
//! - 401 → the token provider's path (`services::tokens::with_api`: re-read the stored pair once, then
//!   refresh, then retry); a connection that is no longer active holds its orders until reconnect.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use amocrm_client::{
    ApiError, ComplexLead, ComplexLeadResult, FieldValue, LeadQuery, LeadUpdate, NewCompany,
    NewContact,
};
use chrono::{NaiveDateTime, TimeDelta};
use futures_util::future::join_all;

use crate::app::AppState;
use crate::domain::order::{Money, OrderDraft};
use crate::domain::status::{ConnectionStatus, OrderStatus};
use crate::services::provisioning;
use crate::services::tokens::{self, TokenError};
use crate::storage::StorageError;
use crate::storage::connections::{self, Connection};
use crate::storage::orders::{
    self as store, ClaimedMove, ClaimedOrder, DueAccount, MOVE_DONE, MOVE_FAILED, SyncedOrder,
};

/// Most leads in one `leads/complex` call (amoCRM's limit).
pub const BATCH: usize = 50;
/// Most stage moves in one `PATCH /api/v4/leads` (amoCRM's recommendation).
pub const MOVE_BATCH: usize = 50;

/// Tunables of the push; derived from the settings.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Accounts served concurrently in one step.
    pub accounts_per_step: usize,
    /// amoCRM calls one account may make in one turn before others get theirs.
    pub calls_per_turn: u32,
    /// How long a claim (of an account, an order, a move) lasts before another worker may take it.
    pub lease: Duration,
    /// First retry delay after a 5xx or network error; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Wait after an ambiguous answer before looking the orders up (lets amoCRM finish the write).
    pub lookup_delay: Duration,
    /// Lead name template, e.g. `Buyurtma #{order_number}`.
    pub lead_name_template: String,
}

impl PushConfig {
    pub fn from_state(state: &AppState) -> Self {
        let s = &state.settings;
        let rps = s.amocrm_rate_limit_rps.max(1);
        Self {
            accounts_per_step: 64,
            // About two seconds of the account's budget, then the next account's turn comes round.
            calls_per_turn: rps * 2,
            lease: s.amocrm_request_timeout * 3 + Duration::from_secs(30),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            lookup_delay: Duration::from_millis(500),
            lead_name_template: s.lead_name_template.clone(),
        }
    }

    /// Capped exponential backoff for the `attempt`-th failure (1-based), with up to 10 % jitter.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.clamp(1, 20) - 1).unwrap_or(0);
        let base = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.backoff_max);
        let jitter = base.mul_f64(rand::random::<f64>() * 0.1);
        base + jitter
    }
}

/// What one step did, summed over the accounts it served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    pub accounts: usize,
    /// amoCRM API calls made (leads/complex, searches, moves).
    pub calls: u32,
    pub complex_calls: u32,
    /// Orders that became leads in this step.
    pub pushed: usize,
    /// Orders whose lead was found in amoCRM after an ambiguous answer.
    pub adopted: usize,
    /// Orders amoCRM rejected for good.
    pub failed: usize,
    /// Lead stage moves applied.
    pub moved: usize,
    /// 429 answers received.
    pub rate_limited: u32,
    /// Orders parked because their connection is not active / released because it is again.
    pub held: usize,
    pub released: usize,
    /// Times the seller's pipeline or fields were provisioned again (deleted in amoCRM).
    pub reprovisioned: usize,
}

impl StepReport {
    /// Adds another report's counts to this one.
    pub fn add(&mut self, o: &StepReport) {
        self.accounts += o.accounts;
        self.calls += o.calls;
        self.complex_calls += o.complex_calls;
        self.pushed += o.pushed;
        self.adopted += o.adopted;
        self.failed += o.failed;
        self.moved += o.moved;
        self.rate_limited += o.rate_limited;
        self.held += o.held;
        self.released += o.released;
        self.reprovisioned += o.reprovisioned;
    }

    /// Whether the step changed anything.
    pub fn did_work(&self) -> bool {
        self.calls > 0 || self.held > 0 || self.released > 0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn at(after: Duration) -> NaiveDateTime {
    crate::storage::now() + TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX)
}

/// One step of the push worker: see the module docs.
pub async fn step(state: &AppState) -> Result<StepReport, PushError> {
    let cfg = PushConfig::from_state(state);
    let mut report = StepReport::default();
    let (held, released) = state.db.run(store::sync_hold_states).await?;
    report.held = held;
    report.released = released;

    let now = crate::storage::now();
    let limit = i64::try_from(cfg.accounts_per_step).unwrap_or(64);
    let owner = state.settings.instance_id.clone();
    let o = owner.clone();
    let due = state
        .db
        .run(move |c| store::due_accounts(c, &o, now, limit))
        .await?;
    let mut claimed = Vec::new();
    for acct in due {
        let (o, id) = (owner.clone(), acct.connection_id);
        let until = at(cfg.lease);
        let now = crate::storage::now();
        if state
            .db
            .run(move |c| store::claim_account(c, id, &o, now, until))
            .await?
        {
            claimed.push(acct);
        }
    }
    let turns = claimed.iter().map(|a| turn(state, &cfg, a));
    for r in join_all(turns).await {
        match r {
            Ok(r) => report.add(&r),
            Err(e) => tracing::error!(error = %e, "order push turn failed"),
        }
    }
    Ok(report)
}

/// What one account's turn works with.
struct Ctx<'a> {
    state: &'a AppState,
    cfg: &'a PushConfig,
    conn: Connection,
    owner: &'a str,
}

impl Ctx<'_> {
    fn seller(&self) -> &str {
        &self.conn.seller_id
    }
}

/// Work that was claimed for a call and must be put back when the call cannot be made or fails.
enum Claimed {
    /// Orders; `needs_lookup` is set to this (`None` leaves it as it is).
    Orders(Vec<String>, Option<bool>),
    Moves(Vec<i64>),
}

enum Outcome {
    Ok,
    /// End the turn; the account may be served again from this time on (`None`: whenever it is due).
    Stop(Option<NaiveDateTime>),
}

/// Runs one amoCRM call for the seller through the token provider (refreshed ahead of expiry; on a 401 the
/// stored pair is re-read once, then refreshed, and the call retried). The client paces it: the account's
/// turn across instances, and a limiter slot counted until one window after the answer.
async fn call<T, F, Fut>(ctx: &Ctx<'_>, f: F) -> Result<T, TokenError>
where
    F: Fn(tokens::Amo) -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    tokens::with_api(ctx.state, ctx.seller(), f).await
}

async fn put_back(
    ctx: &Ctx<'_>,
    claimed: Claimed,
    next_at: NaiveDateTime,
    error: Option<String>,
) -> Result<(), StorageError> {
    let ow = ctx.owner.to_owned();
    match claimed {
        Claimed::Orders(ids, flag) => {
            ctx.state
                .db
                .run(move |c| store::reschedule(c, &ids, &ow, next_at, error.as_deref(), flag))
                .await?;
        }
        Claimed::Moves(ids) => {
            ctx.state
                .db
                .run(move |c| store::reschedule_moves(c, &ids, &ow, next_at, error.as_deref()))
                .await?;
        }
    }
    Ok(())
}

/// The call could not be made (or a 401 survived a fresh token): nothing was written. Holds the seller's
/// orders when only reconnecting helps, otherwise rests the account.
async fn token_failure(
    ctx: &Ctx<'_>,
    err: TokenError,
    claimed: Claimed,
    report: &mut StepReport,
) -> Result<Outcome, PushError> {
    let reason = err.to_string();
    let rest = match &err {
        TokenError::NeedsReconnect(_) | TokenError::NotConnected => {
            tracing::info!(seller_id = %ctx.seller(), reason, "holding orders until the seller reconnects");
            put_back(ctx, claimed, crate::storage::now(), Some(reason.clone())).await?;
            let seller = ctx.seller().to_owned();
            report.held += ctx
                .state
                .db
                .run(move |c| store::hold_seller(c, &seller, &reason))
                .await?;
            return Ok(Outcome::Stop(None));
        }
        TokenError::Storage(_) => {
            put_back(ctx, claimed, crate::storage::now(), Some(reason)).await?;
            return Err(match err {
                TokenError::Storage(e) => PushError::Storage(e),
                _ => PushError::Storage(StorageError::Other("unreachable".into())),
            });
        }
        TokenError::Corrupt(_) => {
            tracing::error!(seller_id = %ctx.seller(), reason, "the stored amoCRM connection is unusable");
            ctx.cfg.backoff_max
        }
        // A 401 even with a freshly read or refreshed token, or no token right now.
        TokenError::Api(_) | TokenError::Unavailable(_) => Duration::from_secs(30),
    };
    let next = at(rest);
    put_back(ctx, claimed, next, Some(reason)).await?;
    Ok(Outcome::Stop(Some(next)))
}

/// Handles an API error that is about the account or amoCRM, not the request's content. `None` when it is
/// a rejection the caller must attribute.
async fn api_failure(
    ctx: &Ctx<'_>,
    err: &ApiError,
    claimed: Claimed,
    max_attempts: i32,
    report: &mut StepReport,
) -> Result<Option<Outcome>, StorageError> {
    let cfg = ctx.cfg;
    let (next, outcome) = match err {
        ApiError::RateLimited { retry_after } => {
            report.rate_limited += 1;
            let next = at(*retry_after);
            (next, Outcome::Stop(Some(next)))
        }
        ApiError::Unauthorized => {
            let next = at(Duration::from_secs(30));
            (next, Outcome::Stop(Some(next)))
        }
        ApiError::Transient { .. } | ApiError::NotFound | ApiError::Request(_) => {
            (at(cfg.backoff(max_attempts)), Outcome::Stop(None))
        }
        ApiError::PaymentRequired => {
            // The account's subscription ended: nothing will work until it is paid; check hourly.
            let next = at(Duration::from_secs(3600));
            (next, Outcome::Stop(Some(next)))
        }
        ApiError::Rejected { status: 403, .. } => {
            // amoCRM answers 403 to everything from an IP it blocked for exceeding its limits.
            let next = at(cfg.backoff_max);
            (next, Outcome::Stop(Some(next)))
        }
        _ => return Ok(None),
    };
    put_back(ctx, claimed, next, Some(err.to_string())).await?;
    Ok(Some(outcome))
}

async fn load_connection(state: &AppState, id: i64) -> Result<Option<Connection>, StorageError> {
    state.db.run(move |c| connections::find_by_id(c, id)).await
}

/// One account's turn: lookups of ambiguous orders first, then batches of new orders, then stage moves,
/// until the turn's call budget is spent or nothing is due.
async fn turn(
    state: &AppState,
    cfg: &PushConfig,
    acct: &DueAccount,
) -> Result<StepReport, PushError> {
    let mut report = StepReport {
        accounts: 1,
        ..StepReport::default()
    };
    let owner = state.settings.instance_id.clone();
    let result = turn_inner(state, cfg, acct, &owner, &mut report).await;
    let (not_before, rest) = match &result {
        Ok(Some(t)) => (*t, true),
        _ if report.calls > 0 => (at(state.amo.limiter().window()), false),
        _ => (crate::storage::now(), false),
    };
    let (o, id) = (owner.clone(), acct.connection_id);
    state
        .db
        .run(move |c| store::release_account(c, id, &o, not_before, rest))
        .await?;
    result.map(|_| report)
}

/// Returns the time the account may be served again, if it must rest (429, token trouble).
async fn turn_inner(
    state: &AppState,
    cfg: &PushConfig,
    acct: &DueAccount,
    owner: &str,
    report: &mut StepReport,
) -> Result<Option<NaiveDateTime>, PushError> {
    let Some(conn) = load_connection(state, acct.connection_id).await? else {
        return Ok(None);
    };
    if conn.status != ConnectionStatus::Active.as_str() {
        let (seller, reason) = (
            conn.seller_id.clone(),
            format!(
                "amoCRM connection is {}; the seller must reconnect",
                conn.status
            ),
        );
        report.held += state
            .db
            .run(move |c| store::hold_seller(c, &seller, &reason))
            .await?;
        return Ok(None);
    }
    let mut ctx = Ctx {
        state,
        cfg,
        conn,
        owner,
    };
    let mut solo = 0usize;
    while report.calls < cfg.calls_per_turn {
        let until = at(cfg.lease);
        let (o, id) = (owner.to_owned(), acct.connection_id);
        if !state
            .db
            .run(move |c| store::extend_account(c, id, &o, until))
            .await?
        {
            tracing::warn!(seller_id = %acct.seller_id, "lost the account's push lease");
            return Ok(None);
        }
        let mut progressed = false;

        // 1. Orders whose last send had no known outcome: find their lead before anything is re-sent.
        let budget = i64::from(cfg.calls_per_turn - report.calls).min(BATCH as i64);
        let lookups = claim(&ctx, budget, true).await?;
        if !lookups.is_empty() {
            progressed = true;
            if let Outcome::Stop(s) = lookup_batch(&ctx, lookups, report).await? {
                return Ok(s);
            }
        }
        if report.calls >= cfg.calls_per_turn {
            break;
        }

        // 2. New orders, up to 50 per call (one at a time after an unattributed rejection).
        let size = if solo > 0 { 1 } else { BATCH as i64 };
        let batch = claim(&ctx, size, false).await?;
        if !batch.is_empty() {
            progressed = true;
            solo = solo.saturating_sub(1);
            let reprovisioned = report.reprovisioned;
            match push_batch(&ctx, batch, report, &mut solo).await? {
                Outcome::Ok => {}
                Outcome::Stop(s) => return Ok(s),
            }
            if report.reprovisioned > reprovisioned {
                // The pipeline or fields were made again: continue with the new ids.
                match load_connection(state, acct.connection_id).await? {
                    Some(fresh) => ctx.conn = fresh,
                    None => return Ok(None),
                }
            }
        }
        if report.calls >= cfg.calls_per_turn {
            break;
        }

        // 3. Stage moves of orders that have a lead, oldest first per order.
        let seller = acct.seller_id.clone();
        let (o, until, now) = (owner.to_owned(), at(cfg.lease), crate::storage::now());
        let moves = state
            .db
            .run(move |c| store::claim_moves(c, &seller, &o, now, until, MOVE_BATCH as i64))
            .await?;
        if !moves.is_empty() {
            progressed = true;
            if let Outcome::Stop(s) = move_batch(&ctx, moves, report).await? {
                return Ok(s);
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(None)
}

async fn claim(ctx: &Ctx<'_>, limit: i64, lookup: bool) -> Result<Vec<ClaimedOrder>, StorageError> {
    let seller = ctx.seller().to_owned();
    let (o, until, now) = (
        ctx.owner.to_owned(),
        at(ctx.cfg.lease),
        crate::storage::now(),
    );
    ctx.state
        .db
        .run(move |c| store::claim_orders(c, &seller, &o, now, until, limit, lookup))
        .await
}

/// The amoCRM stage for an internal status in the seller's mapping (won/lost default to 142/143).
fn stage_of(conn: &Connection, status: OrderStatus) -> Option<(u64, u64)> {
    let pipeline = u64::try_from(conn.pipeline_id?).ok()?;
    let status_id = match status {
        OrderStatus::Pending => conn.stage_pending,
        OrderStatus::AwaitingPayment => conn.stage_awaiting_payment,
        OrderStatus::Paid => conn.stage_paid,
        OrderStatus::Shipping => conn.stage_shipping,
        OrderStatus::Completed => conn.stage_completed.or(Some(142)),
        OrderStatus::Cancelled => conn.stage_cancelled.or(Some(143)),
    }?;
    Some((pipeline, u64::try_from(status_id).ok()?))
}

/// The lead for one order, as CONTRACT §6 describes it.
pub fn build_lead(
    conn: &Connection,
    row: &store::OrderRow,
    name_template: &str,
) -> Result<ComplexLead, String> {
    let draft: OrderDraft = serde_json::from_str(&row.body_json)
        .map_err(|e| format!("stored order body is unreadable: {e}"))?;
    let status = OrderStatus::parse(&row.status).unwrap_or(draft.status);
    let (pipeline_id, status_id) = stage_of(conn, status)
        .ok_or_else(|| "the seller's pipeline mapping is incomplete".to_owned())?;
    let mut fields = Vec::new();
    if let Some(f) = conn
        .field_order_number_id
        .and_then(|f| u64::try_from(f).ok())
    {
        fields.push(FieldValue::text(f, draft.order_number.clone()));
    }
    if let (Some(f), Some(url)) = (
        conn.field_order_link_id.and_then(|f| u64::try_from(f).ok()),
        draft.url.as_ref(),
    ) {
        fields.push(FieldValue::text(f, url.clone()));
    }
    let customer = &draft.customer;
    Ok(ComplexLead {
        name: draft.lead_name(name_template),
        price: Money::from_minor(row.total_amount_minor).rounded_major(),
        pipeline_id,
        status_id,
        request_id: row.id.clone(),
        custom_fields_values: fields,
        tags: draft.tags.clone(),
        contact: Some(NewContact {
            name: customer.display_name(),
            phone: customer.phone.clone(),
            email: customer.email.clone(),
        }),
        company: customer
            .company
            .as_ref()
            .map(|name| NewCompany { name: name.clone() }),
    })
}

fn ids_of(batch: &[ClaimedOrder]) -> Vec<String> {
    batch.iter().map(|o| o.row.id.clone()).collect()
}

/// Errors that name only our pipeline, stage or custom-field ids (not a value) on every rejected item mean
/// the seller's provisioning was deleted in amoCRM: nothing is wrong with the orders themselves.
pub fn points_at_provisioning(err: &ApiError) -> bool {
    let ApiError::Rejected { validation, .. } = err else {
        return false;
    };
    let paths: Vec<&str> = validation
        .iter()
        .flat_map(|v| v.errors.iter().map(|e| e.path.as_str()))
        .collect();
    !paths.is_empty()
        && paths.iter().all(|p| {
            *p == "pipeline_id"
                || *p == "status_id"
                || (p.starts_with("custom_fields_values.") && p.ends_with(".field_id"))
        })
}

fn rejection_reason(err: &ApiError, request_id: &str) -> String {
    let ApiError::Rejected {
        validation, detail, ..
    } = err
    else {
        return err.to_string();
    };
    let parts: Vec<String> = validation
        .iter()
        .filter(|v| v.request_id.as_deref() == Some(request_id))
        .flat_map(|v| v.errors.iter())
        .map(|e| format!("{} at {}: {}", e.code, e.path, e.detail))
        .collect();
    let text = if parts.is_empty() {
        format!("amoCRM rejected the order: {detail}")
    } else {
        format!("amoCRM rejected the order: {}", parts.join("; "))
    };
    text.chars().take(500).collect()
}

async fn push_batch(
    ctx: &Ctx<'_>,
    batch: Vec<ClaimedOrder>,
    report: &mut StepReport,
    solo: &mut usize,
) -> Result<Outcome, PushError> {
    let (state, cfg) = (ctx.state, ctx.cfg);
    let mut leads = Vec::with_capacity(batch.len());
    let mut sendable = Vec::with_capacity(batch.len());
    let mut unbuildable = Vec::new();
    for o in batch {
        match build_lead(&ctx.conn, &o.row, &cfg.lead_name_template) {
            Ok(l) => {
                leads.push(l);
                sendable.push(o);
            }
            Err(reason) => unbuildable.push((o, reason)),
        }
    }
    if !unbuildable.is_empty() {
        // Nothing was sent for these: the mapping is incomplete. Provision, and try them again.
        let complete = reprovision(ctx, report).await;
        for (o, reason) in unbuildable {
            let next = if complete {
                crate::storage::now()
            } else {
                at(cfg.backoff(o.row.sync_attempts))
            };
            put_back(
                ctx,
                Claimed::Orders(vec![o.row.id.clone()], Some(false)),
                next,
                Some(reason),
            )
            .await?;
        }
    }
    if sendable.is_empty() {
        return Ok(Outcome::Ok);
    }
    report.calls += 1;
    report.complex_calls += 1;
    crate::metrics::push_batch(leads.len());
    let leads_ref: &[ComplexLead] = &leads;
    let result = call(ctx, |amo| async move {
        amo.api().leads_complex(leads_ref).await
    })
    .await;
    let max_attempts = sendable
        .iter()
        .map(|o| o.row.sync_attempts)
        .max()
        .unwrap_or(1);
    let err = match result {
        Ok(results) => {
            store_results(ctx, &sendable, results, report).await?;
            return Ok(Outcome::Ok);
        }
        Err(TokenError::Api(err)) => err,
        Err(other) => {
            return token_failure(
                ctx,
                other,
                Claimed::Orders(ids_of(&sendable), Some(false)),
                report,
            )
            .await;
        }
    };
    if err.may_have_written() {
        tracing::warn!(seller_id = %ctx.seller(), count = sendable.len(), error = %err, "leads/complex outcome unknown; the orders will be looked up");
        put_back(
            ctx,
            Claimed::Orders(ids_of(&sendable), Some(true)),
            at(cfg.lookup_delay),
            Some(err.to_string()),
        )
        .await?;
        return Ok(Outcome::Ok);
    }
    let claimed = Claimed::Orders(ids_of(&sendable), Some(false));
    if let Some(out) = api_failure(ctx, &err, claimed, max_attempts, report).await? {
        return Ok(out);
    }
    // A rejection (400/422…): nothing was created.
    if points_at_provisioning(&err) {
        tracing::warn!(seller_id = %ctx.seller(), error = %err, "amoCRM no longer knows our pipeline or fields; provisioning again");
        let complete = reprovision(ctx, report).await;
        let next = if complete {
            crate::storage::now()
        } else {
            at(cfg.backoff(max_attempts))
        };
        put_back(
            ctx,
            Claimed::Orders(ids_of(&sendable), Some(false)),
            next,
            Some(err.to_string()),
        )
        .await?;
        return Ok(if complete {
            Outcome::Ok
        } else {
            Outcome::Stop(None)
        });
    }
    let named: Vec<&str> = err.rejected_request_ids();
    let (bad, good): (Vec<ClaimedOrder>, Vec<ClaimedOrder>) = if sendable.len() == 1 {
        (sendable, Vec::new())
    } else {
        sendable
            .into_iter()
            .partition(|o| named.contains(&o.row.id.as_str()))
    };
    if bad.is_empty() {
        // amoCRM did not say which order it refused: send them one by one to find out.
        *solo = good.len();
        put_back(
            ctx,
            Claimed::Orders(ids_of(&good), Some(false)),
            crate::storage::now(),
            Some(err.to_string()),
        )
        .await?;
        return Ok(Outcome::Ok);
    }
    for o in &bad {
        let reason = rejection_reason(&err, &o.row.id);
        tracing::warn!(order_id = %o.row.id, reason, "amoCRM rejected an order");
        let (seller, ow, id) = (
            ctx.seller().to_owned(),
            ctx.owner.to_owned(),
            o.row.id.clone(),
        );
        if state
            .db
            .run(move |c| store::mark_failed(c, &seller, &ow, &id, &reason))
            .await?
        {
            report.failed += 1;
        }
    }
    // The rest were not created (the whole call was refused): send them again without the bad ones.
    put_back(
        ctx,
        Claimed::Orders(ids_of(&good), Some(false)),
        crate::storage::now(),
        None,
    )
    .await?;
    Ok(Outcome::Ok)
}

/// Stores the leads amoCRM answered with; orders missing from the answer are looked up later.
async fn store_results(
    ctx: &Ctx<'_>,
    sent: &[ClaimedOrder],
    results: Vec<ComplexLeadResult>,
    report: &mut StepReport,
) -> Result<(), StorageError> {
    let mut by_request: HashMap<&str, &ComplexLeadResult> = HashMap::new();
    for r in &results {
        for rid in &r.request_id {
            by_request.insert(rid.as_str(), r);
        }
    }
    let mut synced = Vec::with_capacity(sent.len());
    let mut missing = Vec::new();
    for o in sent {
        match by_request.get(o.row.id.as_str()) {
            Some(r) => synced.push(SyncedOrder {
                order_id: o.row.id.clone(),
                order_number: o.row.order_number.clone(),
                lead_id: to_i64(r.id),
                contact_id: r.contact_id.map(to_i64),
                company_id: r.company_id.map(to_i64),
                moves_up_to: o.moves_up_to,
            }),
            None => missing.push(o.row.id.clone()),
        }
    }
    let (seller, ow) = (ctx.seller().to_owned(), ctx.owner.to_owned());
    let n = ctx
        .state
        .db
        .run(move |c| store::mark_synced(c, &seller, &ow, &synced))
        .await?;
    report.pushed += n;
    if !missing.is_empty() {
        tracing::warn!(seller_id = %ctx.seller(), count = missing.len(), "leads/complex answer did not list some orders");
        put_back(
            ctx,
            Claimed::Orders(missing, Some(true)),
            at(ctx.cfg.lookup_delay),
            Some("amoCRM's answer did not list this order".into()),
        )
        .await?;
    }
    Ok(())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Searches amoCRM for the leads of orders whose create may have happened; adopts what it finds and
/// releases the rest for sending.
async fn lookup_batch(
    ctx: &Ctx<'_>,
    batch: Vec<ClaimedOrder>,
    report: &mut StepReport,
) -> Result<Outcome, PushError> {
    let cfg = ctx.cfg;
    let field = ctx
        .conn
        .field_order_number_id
        .and_then(|f| u64::try_from(f).ok());
    let mut found = Vec::new();
    let mut absent = Vec::new();
    let mut pending: VecDeque<ClaimedOrder> = batch.into();
    let mut outcome = Outcome::Ok;
    while let Some(o) = pending.front().cloned() {
        if report.calls >= cfg.calls_per_turn {
            break;
        }
        let mut hit: Option<amocrm_client::Lead> = None;
        let mut failure: Option<TokenError> = None;
        // amoCRM's `query` matches substrings: page through and keep only an exact order-number match.
        for page in 1..=20u32 {
            report.calls += 1;
            let q = LeadQuery {
                query: Some(o.row.order_number.clone()),
                page: Some(page),
                limit: Some(250),
                // An adopted lead keeps its contact and company ids, as a pushed one does.
                with_contacts: true,
                ..LeadQuery::default()
            };
            let q = &q;
            match call(ctx, |amo| async move { amo.api().search_leads(q).await }).await {
                Ok(leads) => {
                    let full = leads.len() >= 250;
                    hit = leads.into_iter().find(|l| match field {
                        Some(f) => l.field_texts(f).iter().any(|v| v == &o.row.order_number),
                        None => false,
                    });
                    if hit.is_some() || !full || report.calls >= cfg.calls_per_turn {
                        break;
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(err) = failure {
            // This and the remaining orders stay flagged; decide how long the account rests.
            let ids: Vec<String> = pending.drain(..).map(|o| o.row.id).collect();
            let max_attempts = o.row.sync_attempts.max(1);
            let claimed = Claimed::Orders(ids.clone(), None);
            outcome = match err {
                TokenError::Api(api) => {
                    match api_failure(ctx, &api, claimed, max_attempts, report).await? {
                        Some(out) => out,
                        None => {
                            // A search is a read: an odd rejection or unreadable answer waits and retries.
                            put_back(
                                ctx,
                                Claimed::Orders(ids, None),
                                at(cfg.backoff(max_attempts)),
                                Some(api.to_string()),
                            )
                            .await?;
                            Outcome::Stop(None)
                        }
                    }
                }
                other => token_failure(ctx, other, claimed, report).await?,
            };
            break;
        }
        pending.pop_front();
        match hit {
            Some(lead) => {
                tracing::info!(order_id = %o.row.id, lead_id = lead.id, "adopted the lead an ambiguous push had created");
                found.push(SyncedOrder {
                    order_id: o.row.id.clone(),
                    order_number: o.row.order_number.clone(),
                    lead_id: to_i64(lead.id),
                    contact_id: lead.main_contact_id().map(to_i64),
                    company_id: lead.company_id().map(to_i64),
                    moves_up_to: o.moves_up_to,
                });
            }
            None => absent.push(o.row.id.clone()),
        }
    }
    // Orders not reached in this turn keep their flag and are looked up next time.
    if !pending.is_empty() {
        let ids = pending.iter().map(|o| o.row.id.clone()).collect();
        put_back(ctx, Claimed::Orders(ids, None), crate::storage::now(), None).await?;
    }
    if !found.is_empty() {
        let (seller, ow) = (ctx.seller().to_owned(), ctx.owner.to_owned());
        report.adopted += ctx
            .state
            .db
            .run(move |c| store::mark_synced(c, &seller, &ow, &found))
            .await?;
    }
    if !absent.is_empty() {
        // Not in amoCRM: the create never happened, so sending it again cannot duplicate it.
        put_back(
            ctx,
            Claimed::Orders(absent, Some(false)),
            crate::storage::now(),
            None,
        )
        .await?;
    }
    Ok(outcome)
}

/// Sends claimed stage moves in one `PATCH /api/v4/leads` (a move is idempotent: ambiguous answers are
/// simply retried).
async fn move_batch(
    ctx: &Ctx<'_>,
    moves: Vec<ClaimedMove>,
    report: &mut StepReport,
) -> Result<Outcome, PushError> {
    let (state, cfg) = (ctx.state, ctx.cfg);
    let mut updates = Vec::with_capacity(moves.len());
    let mut sent: Vec<&ClaimedMove> = Vec::with_capacity(moves.len());
    for mv in &moves {
        let stage = OrderStatus::parse(&mv.target_status).and_then(|s| stage_of(&ctx.conn, s));
        match (stage, u64::try_from(mv.lead_id)) {
            (Some((pipeline_id, status_id)), Ok(id)) => {
                updates.push(LeadUpdate {
                    id,
                    pipeline_id,
                    status_id,
                });
                sent.push(mv);
            }
            _ => {
                let complete = reprovision(ctx, report).await;
                let next = if complete {
                    crate::storage::now()
                } else {
                    at(cfg.backoff(mv.attempts))
                };
                put_back(
                    ctx,
                    Claimed::Moves(vec![mv.id]),
                    next,
                    Some("the seller's pipeline mapping is incomplete".into()),
                )
                .await?;
            }
        }
    }
    if updates.is_empty() {
        return Ok(Outcome::Ok);
    }
    let ids: Vec<i64> = sent.iter().map(|m| m.id).collect();
    let max_attempts = sent.iter().map(|m| m.attempts).max().unwrap_or(1);
    report.calls += 1;
    let updates_ref: &[LeadUpdate] = &updates;
    let result = call(ctx, |amo| async move {
        amo.api().update_leads(updates_ref).await
    })
    .await;
    let ow = ctx.owner.to_owned();
    let err = match result {
        Ok(_) => {
            report.moved += state
                .db
                .run(move |c| store::finish_moves(c, &ids, &ow, MOVE_DONE, None))
                .await?;
            return Ok(Outcome::Ok);
        }
        Err(TokenError::Api(err)) => err,
        Err(other) => return token_failure(ctx, other, Claimed::Moves(ids), report).await,
    };
    if let Some(out) =
        api_failure(ctx, &err, Claimed::Moves(ids.clone()), max_attempts, report).await?
    {
        return Ok(out);
    }
    if err.may_have_written() {
        put_back(
            ctx,
            Claimed::Moves(ids),
            at(cfg.lookup_delay),
            Some(err.to_string()),
        )
        .await?;
        return Ok(Outcome::Ok);
    }
    if points_at_provisioning(&err) {
        let complete = reprovision(ctx, report).await;
        let next = if complete {
            crate::storage::now()
        } else {
            at(cfg.backoff(max_attempts))
        };
        put_back(ctx, Claimed::Moves(ids), next, Some(err.to_string())).await?;
        return Ok(Outcome::Stop(None));
    }
    if ids.len() == 1 {
        let reason = err.to_string();
        state
            .db
            .run(move |c| store::finish_moves(c, &ids, &ow, MOVE_FAILED, Some(&reason)))
            .await?;
        return Ok(Outcome::Ok);
    }
    // amoCRM refused the batch: send each move alone so only the bad one fails.
    solo_moves(ctx, &sent, &updates, report).await
}

/// Sends moves one per call after a batch was refused: each ends done, failed (refused alone) or
/// rescheduled (any other answer).
async fn solo_moves(
    ctx: &Ctx<'_>,
    sent: &[&ClaimedMove],
    updates: &[LeadUpdate],
    report: &mut StepReport,
) -> Result<Outcome, PushError> {
    for (mv, up) in sent.iter().zip(updates) {
        report.calls += 1;
        let ids = vec![mv.id];
        let ow = ctx.owner.to_owned();
        let one = std::slice::from_ref(up);
        match call(ctx, |amo| async move { amo.api().update_leads(one).await }).await {
            Ok(_) => {
                report.moved += ctx
                    .state
                    .db
                    .run(move |c| store::finish_moves(c, &ids, &ow, MOVE_DONE, None))
                    .await?;
            }
            Err(TokenError::Api(err @ ApiError::Rejected { .. })) => {
                let reason = err.to_string();
                ctx.state
                    .db
                    .run(move |c| store::finish_moves(c, &ids, &ow, MOVE_FAILED, Some(&reason)))
                    .await?;
            }
            Err(err) => {
                put_back(
                    ctx,
                    Claimed::Moves(ids),
                    at(Duration::from_secs(5)),
                    Some(err.to_string()),
                )
                .await?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// Provisions the seller's pipeline and fields again (deleted in amoCRM, or never made) through the connect
/// flow's idempotent provisioning. Returns whether everything is in place now.
async fn reprovision(ctx: &Ctx<'_>, report: &mut StepReport) -> bool {
    report.calls += 1;
    match provisioning::provision(ctx.state, ctx.seller()).await {
        Ok(r) => {
            if r.complete {
                tracing::info!(seller_id = %ctx.seller(), "the seller's pipeline and fields were provisioned again");
                report.reprovisioned += 1;
            } else {
                tracing::warn!(seller_id = %ctx.seller(), missing = ?r.missing, error = ?r.error, "provisioning is still incomplete");
            }
            r.complete
        }
        Err(e) => {
            tracing::warn!(seller_id = %ctx.seller(), error = %e, "provisioning failed");
            false
        }
    }
}

/// How many orders are still queued and stage moves pending (tests and the benchmark drain until zero).
pub async fn backlog(state: &AppState) -> Result<(i64, i64), StorageError> {
    state.db.run(store::backlog).await
}

/// When the next queued order or move becomes due.
pub async fn next_due(state: &AppState) -> Result<Option<NaiveDateTime>, StorageError> {
    state.db.run(store::next_due).await
}
