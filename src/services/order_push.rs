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
//! - 401 → the stored pair is re-read once; a connection that is no longer active holds its orders.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use amocrm_client::{
    AccountHost, ApiError, ComplexLead, ComplexLeadResult, FieldValue, LeadQuery, LeadUpdate,
    NewCompany, NewContact,
};
use chrono::{NaiveDateTime, TimeDelta};
use futures_util::future::join_all;
use secrecy::SecretString;

use crate::app::AppState;
use crate::domain::order::{Money, OrderDraft};
use crate::domain::status::{ConnectionStatus, OrderStatus};
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
}

impl StepReport {
    fn add(&mut self, o: &StepReport) {
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

/// Response-time pacing per account, on top of the client's limiter. The limiter spaces request *starts*
/// (1.02 s per `AMOCRM_RATE_LIMIT_RPS` calls); amoCRM counts *arrivals*, and on a loaded machine a request
/// can reach it later than it started, so two windows' requests may arrive closer than a second apart and
/// the next one gets a 429 (which costs at least a second). Starting call `k + rps` no earlier than one
/// second after call `k` *answered* rules that out: the answer came after the arrival. The push is
/// sequential per account, so this costs only the latency of one call per window.
static PACING: LazyLock<Mutex<HashMap<String, VecDeque<Instant>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

const PACING_WINDOW: Duration = Duration::from_secs(1);

fn pacing_key(state: &AppState, host: &AccountHost) -> String {
    format!("{}/{}", state.settings.instance_id, host.as_str())
}

/// Waits until one more call to `host` cannot make amoCRM see more than the limit in a second, then runs it
/// (through the client, whose limiter applies as well) and records when it answered.
async fn paced<T>(state: &AppState, host: &AccountHost, call: impl Future<Output = T>) -> T {
    let key = pacing_key(state, host);
    let rps = usize::try_from(state.settings.amocrm_rate_limit_rps.max(1)).unwrap_or(7);
    let wait_until = PACING.lock().ok().and_then(|map| {
        let log = map.get(&key)?;
        (log.len() >= rps)
            .then(|| log.get(log.len() - rps).copied())
            .flatten()
            .map(|t| t + PACING_WINDOW)
    });
    if let Some(t) = wait_until {
        tokio::time::sleep_until(t.into()).await;
    }
    let out = call.await;
    if let Ok(mut map) = PACING.lock() {
        let now = Instant::now();
        map.retain(|_, log| {
            log.back()
                .is_some_and(|t| now.duration_since(*t) < PACING_WINDOW * 2)
        });
        let log = map.entry(key).or_default();
        log.push_back(now);
        while log.len() > rps {
            log.pop_front();
        }
    }
    out
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

/// A valid access token for one account, with the version it was read at (to notice a refresh by a peer).
struct Access {
    host: AccountHost,
    token: SecretString,
    version: i64,
}

enum AccessError {
    /// The connection cannot be used until the seller reconnects: hold its orders.
    Inactive(String),
    /// Try later.
    Temporary(String),
}

/// Reads the stored token of an active connection.
// TODO(issue 5): switch to `services::tokens::access` (refresh ahead of expiry) once it lands on main.
fn access_of(state: &AppState, conn: &Connection) -> Result<Access, AccessError> {
    if conn.status != ConnectionStatus::Active.as_str() {
        return Err(AccessError::Inactive(format!(
            "amoCRM connection is {}; the seller must reconnect",
            conn.status
        )));
    }
    let host = AccountHost::parse(&conn.host, &state.amo.config().allowed_domains)
        .map_err(|e| AccessError::Inactive(format!("stored account host is not allowed: {e}")))?;
    let token = conn
        .access_token(&state.keys)
        .map_err(|_| AccessError::Temporary("stored access token cannot be decrypted".into()))?
        .ok_or_else(|| AccessError::Inactive("the connection holds no access token".into()))?;
    Ok(Access {
        host,
        token,
        version: conn.token_version,
    })
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

/// Returns the time the account may be served again (after a 429), if it must rest.
async fn turn_inner(
    state: &AppState,
    cfg: &PushConfig,
    acct: &DueAccount,
    owner: &str,
    report: &mut StepReport,
) -> Result<Option<NaiveDateTime>, PushError> {
    let Some(mut conn) = load_connection(state, acct.connection_id).await? else {
        return Ok(None);
    };
    let mut access = match access_of(state, &conn) {
        Ok(a) => a,
        Err(AccessError::Inactive(reason)) => {
            let seller = acct.seller_id.clone();
            report.held += state
                .db
                .run(move |c| store::hold_seller(c, &seller, &reason))
                .await?;
            return Ok(None);
        }
        Err(AccessError::Temporary(reason)) => {
            tracing::warn!(seller_id = %acct.seller_id, reason, "cannot read the access token");
            return Ok(Some(at(cfg.backoff_base * 30)));
        }
    };
    let mut solo = 0usize;
    let mut unauthorized_once = false;
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
        let lookups = claim(state, acct, owner, cfg, budget, true).await?;
        if !lookups.is_empty() {
            progressed = true;
            match lookup_batch(state, cfg, &conn, &access, owner, lookups, report).await? {
                Outcome::Ok => {}
                Outcome::Stop(s) => return Ok(s),
                Outcome::Unauthorized => {
                    match reauthorize(
                        state,
                        &mut conn,
                        &mut access,
                        &mut unauthorized_once,
                        acct,
                        report,
                    )
                    .await?
                    {
                        Some(stop) => return Ok(stop),
                        None => continue,
                    }
                }
            }
        }
        if report.calls >= cfg.calls_per_turn {
            break;
        }

        // 2. New orders, up to 50 per call (one at a time after an unattributed rejection).
        let size = if solo > 0 { 1 } else { BATCH as i64 };
        let batch = claim(state, acct, owner, cfg, size, false).await?;
        if !batch.is_empty() {
            progressed = true;
            solo = solo.saturating_sub(1);
            match push_batch(state, cfg, &conn, &access, owner, batch, report, &mut solo).await? {
                Outcome::Ok => {}
                Outcome::Stop(s) => return Ok(s),
                Outcome::Unauthorized => {
                    match reauthorize(
                        state,
                        &mut conn,
                        &mut access,
                        &mut unauthorized_once,
                        acct,
                        report,
                    )
                    .await?
                    {
                        Some(stop) => return Ok(stop),
                        None => continue,
                    }
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
            match move_batch(state, cfg, &conn, &access, owner, moves, report).await? {
                Outcome::Ok => {}
                Outcome::Stop(s) => return Ok(s),
                Outcome::Unauthorized => {
                    match reauthorize(
                        state,
                        &mut conn,
                        &mut access,
                        &mut unauthorized_once,
                        acct,
                        report,
                    )
                    .await?
                    {
                        Some(stop) => return Ok(stop),
                        None => continue,
                    }
                }
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(None)
}

async fn claim(
    state: &AppState,
    acct: &DueAccount,
    owner: &str,
    cfg: &PushConfig,
    limit: i64,
    lookup: bool,
) -> Result<Vec<ClaimedOrder>, StorageError> {
    let seller = acct.seller_id.clone();
    let (o, until, now) = (owner.to_owned(), at(cfg.lease), crate::storage::now());
    state
        .db
        .run(move |c| store::claim_orders(c, &seller, &o, now, until, limit, lookup))
        .await
}

/// After a 401: re-read the stored pair once (a peer may have refreshed it); if it did not change, the
/// account rests until the token provider has refreshed it. Returns `Some` to end the turn.
async fn reauthorize(
    state: &AppState,
    conn: &mut Connection,
    access: &mut Access,
    once: &mut bool,
    acct: &DueAccount,
    report: &mut StepReport,
) -> Result<Option<Option<NaiveDateTime>>, PushError> {
    let Some(fresh) = load_connection(state, acct.connection_id).await? else {
        return Ok(Some(None));
    };
    match access_of(state, &fresh) {
        Ok(a) if !*once && a.version != access.version => {
            *once = true;
            *conn = fresh;
            *access = a;
            Ok(None)
        }
        Ok(_) => Ok(Some(Some(at(Duration::from_secs(30))))),
        Err(AccessError::Inactive(reason)) => {
            let seller = acct.seller_id.clone();
            report.held += state
                .db
                .run(move |c| store::hold_seller(c, &seller, &reason))
                .await?;
            Ok(Some(None))
        }
        Err(AccessError::Temporary(_)) => Ok(Some(Some(at(Duration::from_secs(30))))),
    }
}

enum Outcome {
    Ok,
    Stop(Option<NaiveDateTime>),
    Unauthorized,
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

async fn reschedule(
    state: &AppState,
    ids: Vec<String>,
    owner: &str,
    next_at: NaiveDateTime,
    error: Option<String>,
    needs_lookup: Option<bool>,
) -> Result<(), StorageError> {
    let o = owner.to_owned();
    state
        .db
        .run(move |c| store::reschedule(c, &ids, &o, next_at, error.as_deref(), needs_lookup))
        .await?;
    Ok(())
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

/// Handles a non-success answer that is not order-specific. Returns `None` if the caller must decide.
async fn common_failure(
    (state, cfg, owner): (&AppState, &PushConfig, &str),
    err: &ApiError,
    ids: Vec<String>,
    max_attempts: i32,
    report: &mut StepReport,
    may_have_written: bool,
) -> Result<Option<Outcome>, StorageError> {
    let lookup_flag = if may_have_written { None } else { Some(false) };
    match err {
        ApiError::RateLimited { retry_after } => {
            report.rate_limited += 1;
            let next = at(*retry_after);
            reschedule(state, ids, owner, next, Some(err.to_string()), lookup_flag).await?;
            Ok(Some(Outcome::Stop(Some(next))))
        }
        ApiError::Unauthorized => {
            reschedule(
                state,
                ids,
                owner,
                crate::storage::now(),
                Some(err.to_string()),
                lookup_flag,
            )
            .await?;
            Ok(Some(Outcome::Unauthorized))
        }
        ApiError::Transient { .. } | ApiError::NotFound | ApiError::Request(_) => {
            let next = at(cfg.backoff(max_attempts));
            reschedule(state, ids, owner, next, Some(err.to_string()), lookup_flag).await?;
            Ok(Some(Outcome::Stop(None)))
        }
        ApiError::PaymentRequired => {
            // The account's subscription ended: nothing will work until it is paid, check hourly.
            let next = at(Duration::from_secs(3600));
            reschedule(state, ids, owner, next, Some(err.to_string()), lookup_flag).await?;
            Ok(Some(Outcome::Stop(Some(next))))
        }
        ApiError::Rejected { status: 403, .. } => {
            // amoCRM blocks an IP that exceeded its limits with 403 for everything: back off the account.
            let next = at(cfg.backoff_max);
            reschedule(state, ids, owner, next, Some(err.to_string()), lookup_flag).await?;
            Ok(Some(Outcome::Stop(Some(next))))
        }
        _ => Ok(None),
    }
}

#[allow(clippy::too_many_arguments)]
async fn push_batch(
    state: &AppState,
    cfg: &PushConfig,
    conn: &Connection,
    access: &Access,
    owner: &str,
    batch: Vec<ClaimedOrder>,
    report: &mut StepReport,
    solo: &mut usize,
) -> Result<Outcome, PushError> {
    let mut leads = Vec::with_capacity(batch.len());
    let mut sendable = Vec::with_capacity(batch.len());
    for o in batch {
        match build_lead(conn, &o.row, &cfg.lead_name_template) {
            Ok(l) => {
                leads.push(l);
                sendable.push(o);
            }
            Err(reason) => {
                // Nothing was sent for this order; it waits for provisioning (or a fix) and tries again.
                let next = at(cfg.backoff(o.row.sync_attempts));
                reschedule(
                    state,
                    vec![o.row.id.clone()],
                    owner,
                    next,
                    Some(reason),
                    Some(false),
                )
                .await?;
                reprovision(state, conn).await;
            }
        }
    }
    if sendable.is_empty() {
        return Ok(Outcome::Ok);
    }
    let api = state.amo.api(&access.host, &access.token);
    report.calls += 1;
    report.complex_calls += 1;
    let started = std::time::Instant::now();
    let result = paced(state, &access.host, api.leads_complex(&leads)).await;
    tracing::debug!(seller_id = %conn.seller_id, count = leads.len(), ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "leads/complex");
    let max_attempts = sendable
        .iter()
        .map(|o| o.row.sync_attempts)
        .max()
        .unwrap_or(1);
    match result {
        Ok(results) => {
            store_results(state, cfg, conn, owner, &sendable, results, report).await?;
            Ok(Outcome::Ok)
        }
        Err(err) if err.may_have_written() => {
            tracing::warn!(seller_id = %conn.seller_id, count = sendable.len(), error = %err, "leads/complex outcome unknown; orders will be looked up");
            reschedule(
                state,
                ids_of(&sendable),
                owner,
                at(cfg.lookup_delay),
                Some(err.to_string()),
                Some(true),
            )
            .await?;
            Ok(Outcome::Ok)
        }
        Err(err) => {
            if let Some(out) = common_failure(
                (state, cfg, owner),
                &err,
                ids_of(&sendable),
                max_attempts,
                report,
                false,
            )
            .await?
            {
                return Ok(out);
            }
            // A rejection (400/422…): nothing was created.
            if points_at_provisioning(&err) {
                tracing::warn!(seller_id = %conn.seller_id, error = %err, "amoCRM no longer knows our pipeline or fields");
                let next = at(cfg.backoff(max_attempts));
                reschedule(
                    state,
                    ids_of(&sendable),
                    owner,
                    next,
                    Some(err.to_string()),
                    Some(false),
                )
                .await?;
                reprovision(state, conn).await;
                return Ok(Outcome::Stop(None));
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
                // amoCRM did not say which order it disliked: send them one by one to find out.
                *solo = good.len();
                reschedule(
                    state,
                    ids_of(&good),
                    owner,
                    crate::storage::now(),
                    Some(err.to_string()),
                    Some(false),
                )
                .await?;
                return Ok(Outcome::Ok);
            }
            for o in &bad {
                let reason = rejection_reason(&err, &o.row.id);
                tracing::warn!(order_id = %o.row.id, reason, "amoCRM rejected an order");
                let (seller, ow, id) = (conn.seller_id.clone(), owner.to_owned(), o.row.id.clone());
                if state
                    .db
                    .run(move |c| store::mark_failed(c, &seller, &ow, &id, &reason))
                    .await?
                {
                    report.failed += 1;
                }
            }
            // The rest were not created (the whole call was refused): send them again without the bad ones.
            reschedule(
                state,
                ids_of(&good),
                owner,
                crate::storage::now(),
                None,
                Some(false),
            )
            .await?;
            Ok(Outcome::Ok)
        }
    }
}

/// Stores the leads amoCRM answered with; orders missing from the answer are looked up later.
async fn store_results(
    state: &AppState,
    cfg: &PushConfig,
    conn: &Connection,
    owner: &str,
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
            Some(r) => {
                let stage = OrderStatus::parse(&o.row.status).and_then(|s| stage_of(conn, s));
                synced.push(SyncedOrder {
                    order_id: o.row.id.clone(),
                    lead_id: to_i64(r.id),
                    contact_id: r.contact_id.map(to_i64),
                    company_id: r.company_id.map(to_i64),
                    moves_up_to: o.moves_up_to,
                    pipeline_id: stage.map(|s| to_i64(s.0)),
                    status_id: stage.map(|s| to_i64(s.1)),
                })
            }
            None => missing.push(o.row.id.clone()),
        }
    }
    let (seller, ow) = (conn.seller_id.clone(), owner.to_owned());
    let n = state
        .db
        .run(move |c| store::mark_synced(c, &seller, &ow, &synced))
        .await?;
    report.pushed += n;
    if !missing.is_empty() {
        tracing::warn!(seller_id = %conn.seller_id, count = missing.len(), "leads/complex answer did not list some orders");
        reschedule(
            state,
            missing,
            owner,
            at(cfg.lookup_delay),
            Some("amoCRM's answer did not list this order".into()),
            Some(true),
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
    state: &AppState,
    cfg: &PushConfig,
    conn: &Connection,
    access: &Access,
    owner: &str,
    batch: Vec<ClaimedOrder>,
    report: &mut StepReport,
) -> Result<Outcome, PushError> {
    let api = state.amo.api(&access.host, &access.token);
    let field = conn
        .field_order_number_id
        .and_then(|f| u64::try_from(f).ok());
    let mut found = Vec::new();
    let mut absent = Vec::new();
    let mut pending: Vec<ClaimedOrder> = batch;
    let mut outcome = Outcome::Ok;
    while let Some(o) = pending.first().cloned() {
        if report.calls >= cfg.calls_per_turn {
            break;
        }
        let mut hit: Option<amocrm_client::Lead> = None;
        let mut failure: Option<ApiError> = None;
        // amoCRM's `query` matches substrings: page through and keep only an exact order-number match.
        for page in 1..=20u32 {
            report.calls += 1;
            let q = LeadQuery {
                query: Some(o.row.order_number.clone()),
                page: Some(page),
                limit: Some(250),
                ..LeadQuery::default()
            };
            match paced(state, &access.host, api.search_leads(&q)).await {
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
            // Leave this and the remaining orders flagged; decide how long the account rests.
            let ids = pending.iter().map(|o| o.row.id.clone()).collect::<Vec<_>>();
            pending.clear();
            let max_attempts = o.row.sync_attempts.max(1);
            outcome = match common_failure(
                (state, cfg, owner),
                &err,
                ids.clone(),
                max_attempts,
                report,
                true,
            )
            .await?
            {
                Some(out) => out,
                None => {
                    // A search is a read: an odd rejection or unreadable answer just waits and retries.
                    reschedule(
                        state,
                        ids,
                        owner,
                        at(cfg.backoff(max_attempts)),
                        Some(err.to_string()),
                        None,
                    )
                    .await?;
                    Outcome::Stop(None)
                }
            };
            break;
        }
        pending.remove(0);
        match hit {
            Some(lead) => {
                tracing::info!(order_id = %o.row.id, lead_id = lead.id, "adopted the lead an ambiguous push had created");
                found.push(SyncedOrder {
                    order_id: o.row.id.clone(),
                    lead_id: to_i64(lead.id),
                    contact_id: None,
                    company_id: None,
                    moves_up_to: o.moves_up_to,
                    pipeline_id: lead.pipeline_id.map(to_i64),
                    status_id: lead.status_id.map(to_i64),
                });
            }
            None => absent.push(o.row.id.clone()),
        }
    }
    // Orders not reached in this turn keep their flag and are looked up next time.
    if !pending.is_empty() {
        reschedule(
            state,
            pending.iter().map(|o| o.row.id.clone()).collect(),
            owner,
            crate::storage::now(),
            None,
            None,
        )
        .await?;
    }
    let adopted = found.len();
    if !found.is_empty() {
        let (seller, ow) = (conn.seller_id.clone(), owner.to_owned());
        let n = state
            .db
            .run(move |c| store::mark_synced(c, &seller, &ow, &found))
            .await?;
        report.adopted += n.min(adopted);
    }
    if !absent.is_empty() {
        // Not in amoCRM: the create never happened, so sending it again cannot duplicate it.
        reschedule(
            state,
            absent,
            owner,
            crate::storage::now(),
            None,
            Some(false),
        )
        .await?;
    }
    Ok(outcome)
}

/// Sends claimed stage moves in one `PATCH /api/v4/leads`.
async fn move_batch(
    state: &AppState,
    cfg: &PushConfig,
    conn: &Connection,
    access: &Access,
    owner: &str,
    moves: Vec<ClaimedMove>,
    report: &mut StepReport,
) -> Result<Outcome, PushError> {
    let mut updates = Vec::with_capacity(moves.len());
    let mut sent: Vec<&ClaimedMove> = Vec::with_capacity(moves.len());
    for mv in &moves {
        let stage = OrderStatus::parse(&mv.target_status).and_then(|s| stage_of(conn, s));
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
                let ids = vec![mv.id];
                let ow = owner.to_owned();
                let next = at(cfg.backoff(mv.attempts));
                state
                    .db
                    .run(move |c| {
                        store::reschedule_moves(
                            c,
                            &ids,
                            &ow,
                            next,
                            Some("the seller's pipeline mapping is incomplete"),
                        )
                    })
                    .await?;
                reprovision(state, conn).await;
            }
        }
    }
    if updates.is_empty() {
        return Ok(Outcome::Ok);
    }
    let ids: Vec<i64> = sent.iter().map(|m| m.id).collect();
    let max_attempts = sent.iter().map(|m| m.attempts).max().unwrap_or(1);
    let api = state.amo.api(&access.host, &access.token);
    report.calls += 1;
    let ow = owner.to_owned();
    match paced(state, &access.host, api.update_leads(&updates)).await {
        Ok(_) => {
            let n = state
                .db
                .run(move |c| store::finish_moves(c, &ids, &ow, MOVE_DONE, None))
                .await?;
            report.moved += n;
            Ok(Outcome::Ok)
        }
        // A stage move is idempotent: ambiguous answers are simply retried.
        Err(err) => {
            let (next, outcome) = match &err {
                ApiError::RateLimited { retry_after } => {
                    report.rate_limited += 1;
                    let n = at(*retry_after);
                    (n, Outcome::Stop(Some(n)))
                }
                ApiError::Unauthorized => (crate::storage::now(), Outcome::Unauthorized),
                ApiError::Rejected { status, .. } if *status != 403 => {
                    if points_at_provisioning(&err) {
                        reprovision(state, conn).await;
                        (at(cfg.backoff(max_attempts)), Outcome::Stop(None))
                    } else if ids.len() == 1 {
                        let reason = err.to_string();
                        let ids = ids.clone();
                        state
                            .db
                            .run(move |c| {
                                store::finish_moves(c, &ids, &ow, MOVE_FAILED, Some(&reason))
                            })
                            .await?;
                        return Ok(Outcome::Ok);
                    } else {
                        // amoCRM refused the batch: send each move alone so only the bad one fails.
                        return solo_moves(
                            state,
                            &access.host,
                            owner,
                            &api,
                            &sent,
                            &updates,
                            report,
                        )
                        .await;
                    }
                }
                ApiError::Rejected { .. } | ApiError::PaymentRequired => {
                    let n = at(cfg.backoff_max);
                    (n, Outcome::Stop(Some(n)))
                }
                _ => (at(cfg.backoff(max_attempts)), Outcome::Stop(None)),
            };
            let reason = err.to_string();
            state
                .db
                .run(move |c| store::reschedule_moves(c, &ids, &ow, next, Some(&reason)))
                .await?;
            Ok(outcome)
        }
    }
}

/// Sends moves one per call after a batch was refused: each ends done, failed (refused alone) or
/// rescheduled (any other answer).
async fn solo_moves(
    state: &AppState,
    host: &AccountHost,
    owner: &str,
    api: &amocrm_client::AccountApi<'_>,
    sent: &[&ClaimedMove],
    updates: &[LeadUpdate],
    report: &mut StepReport,
) -> Result<Outcome, PushError> {
    for (mv, up) in sent.iter().zip(updates) {
        report.calls += 1;
        let ids = vec![mv.id];
        let ow = owner.to_owned();
        match paced(state, host, api.update_leads(std::slice::from_ref(up))).await {
            Ok(_) => {
                report.moved += state
                    .db
                    .run(move |c| store::finish_moves(c, &ids, &ow, MOVE_DONE, None))
                    .await?;
            }
            Err(err @ ApiError::Rejected { .. }) => {
                let reason = err.to_string();
                state
                    .db
                    .run(move |c| store::finish_moves(c, &ids, &ow, MOVE_FAILED, Some(&reason)))
                    .await?;
            }
            Err(err) => {
                let reason = err.to_string();
                let next = at(Duration::from_secs(5));
                state
                    .db
                    .run(move |c| store::reschedule_moves(c, &ids, &ow, next, Some(&reason)))
                    .await?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// Asks for the seller's pipeline and fields to be provisioned again (deleted in amoCRM, or never made).
// TODO(issue 4): call the connect helper's provisioning service once it lands on main.
async fn reprovision(state: &AppState, conn: &Connection) {
    let _ = state;
    tracing::warn!(seller_id = %conn.seller_id, "the seller's amoCRM pipeline or fields need provisioning again");
}

/// How many orders are still queued and stage moves pending (tests and the benchmark drain until zero).
pub async fn backlog(state: &AppState) -> Result<(i64, i64), StorageError> {
    state.db.run(store::backlog).await
}

/// When the next queued order or move becomes due.
pub async fn next_due(state: &AppState) -> Result<Option<NaiveDateTime>, StorageError> {
    state.db.run(store::next_due).await
}
