//! Pushing queued orders to amoCRM as leads (`leads/complex`, ≤ 50 per call) and applying stage moves
//! (`PATCH /api/v4/leads`), per account, fairly, within the shared per-account rate limit.
//!
//! One [`step`] claims a few accounts that have due work (least recently served first) and gives each a
//! turn of at most `calls_per_turn` amoCRM calls, all accounts concurrently. Every call goes through
//! `Context.amo`, whose limiter keeps each account at or under `AMOCRM_RATE_LIMIT_RPS` for everything
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
    ApiError, ComplexLead, ComplexLeadItem, ComplexLeadResult, FieldValue, FormMetadata, LeadQuery,
    LeadUpdate, NewCompany, NewContact,
};
use chrono::{NaiveDateTime, TimeDelta};
use futures_util::future::join_all;

mod steps;

use crate::domain::order::{Money, MoveState, OrderDraft, StepKind, StepState};
use crate::domain::settings::{Entry, MatchMode, SellerSettings};
use crate::domain::status::ConnectionStatus;
use crate::services::Context;
use crate::services::buyers;
use crate::services::provisioning;
use crate::services::tokens::{self, TokenError};
use crate::storage::StorageError;
use crate::storage::connections::Connection;
use crate::storage::orders::{
    ClaimFor, ClaimedMove, ClaimedOrder, DueAccount, OrderRow, SyncedOrder,
};

/// Wakes the push worker when this process queued work (an order, a move, a retry), so the work does not
/// wait for the worker's next poll; the worker still polls for work queued by other instances.
pub fn new_work_signal() -> &'static tokio::sync::Notify {
    static SIGNAL: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    SIGNAL.get_or_init(tokio::sync::Notify::new)
}

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
    /// When failed work is tried again.
    pub retry: RetryPolicy,
    /// Lead name template, e.g. `Buyurtma #{order_number}`.
    pub lead_name_template: String,
}

impl PushConfig {
    pub fn from_state(state: &Context) -> Self {
        let s = &state.settings;
        let rps = s.amocrm_rate_limit_rps.max(1);
        Self {
            // A step waits for its slowest turn, and a full deal's turn is several calls paced by the
            // account's rate limit (about a second), so the step's width is what bounds how many new
            // sellers' deals start a second: at 64, 100 full deals a second over 1,000 sellers queued up
            // to p99 15 s; at 256, 1.1 s (`cargo bench --bench latency -- --rates 100 --sellers 1000
            // --deal full`). Plain leads at 1,000/s over 10,000 sellers stay near 70-90 ms p99.
            accounts_per_step: 256,
            // About two seconds of the account's budget, then the next account's turn comes round.
            calls_per_turn: rps * 2,
            lease: s.amocrm_request_timeout * 3 + Duration::from_secs(30),
            retry: RetryPolicy {
                backoff_base: Duration::from_secs(1),
                backoff_max: s.push_retry_max,
                lookup_delay: Duration::from_millis(500),
            },
            lead_name_template: s.lead_name_template.clone(),
        }
    }
}

/// How long the account rests after a 401 that a fresh token did not cure, or while no token can be had.
const TOKEN_REST: Duration = Duration::from_secs(30);
/// How long the account rests after amoCRM's 402 (its subscription ended): checked hourly.
const UNPAID_REST: Duration = Duration::from_secs(3600);
/// How long an order waits while another order of its buyer makes the buyer's contact.
const BUYER_WAIT: Duration = Duration::from_secs(1);
/// When a stage move that failed alone, for any reason but a rejection, is tried again.
const SOLO_MOVE_RETRY: Duration = Duration::from_secs(5);

/// When the push tries failed work again: the one place that turns a failure into a waiting time.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// First retry delay after a 5xx or network error; doubles per attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Wait after an ambiguous answer before looking the orders up (lets amoCRM finish the write).
    pub lookup_delay: Duration,
}

/// How long work waits after a failure about the account or amoCRM (not the request's content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The work is due again after this long; the account's turn ends.
    Retry(Duration),
    /// The account rests this long: no instance serves it before (429, 402, a blocked IP, a 401).
    Rest(Duration),
}

impl RetryPolicy {
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

    /// After the seller's pipeline and fields were provisioned again: at once when that completed them,
    /// else after the backoff of the work's `attempt`.
    pub fn after_repair(&self, complete: bool, attempt: i32) -> Duration {
        if complete {
            Duration::ZERO
        } else {
            self.backoff(attempt)
        }
    }

    /// The wait an API error about the account or amoCRM means; `None` for a rejection of the request's
    /// content, which the caller attributes.
    pub fn after_api_error(&self, err: &ApiError, attempt: i32) -> Option<Wait> {
        Some(match err {
            ApiError::RateLimited { retry_after } => Wait::Rest(*retry_after),
            ApiError::Unauthorized => Wait::Rest(TOKEN_REST),
            ApiError::Transient { .. } | ApiError::NotFound | ApiError::Request(_) => {
                Wait::Retry(self.backoff(attempt))
            }
            // The account's subscription ended: nothing will work until it is paid.
            ApiError::PaymentRequired => Wait::Rest(UNPAID_REST),
            // amoCRM answers 403 to everything from an IP it blocked for exceeding its limits.
            ApiError::Forbidden { .. } => Wait::Rest(self.backoff_max),
            _ => return None,
        })
    }

    /// How long the account rests when a call could not be made for token trouble; `None` when resting
    /// cannot help (the seller must reconnect, or the database failed).
    pub fn after_token_error(&self, err: &TokenError) -> Option<Duration> {
        match err {
            TokenError::Corrupt(_) => Some(self.backoff_max),
            // A 401 even with a freshly read or refreshed token, or no token right now.
            TokenError::Api(_) | TokenError::Unavailable(_) => Some(TOKEN_REST),
            TokenError::NeedsReconnect(_) | TokenError::NotConnected | TokenError::Storage(_) => {
                None
            }
        }
    }

    /// When a search that amoCRM refused oddly (or answered unreadably) is tried again: it is a read.
    pub fn after_search_error(&self, attempt: i32) -> Duration {
        self.backoff(attempt)
    }

    /// When a move that failed alone for another reason than a rejection is tried again.
    pub fn after_solo_move_error(&self) -> Duration {
        SOLO_MOVE_RETRY
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

fn at(after: Duration) -> NaiveDateTime {
    crate::storage::now() + TimeDelta::from_std(after).unwrap_or(TimeDelta::MAX)
}

/// One step of the push worker: see the module docs. Fails only when the database does; every amoCRM
/// failure is an outcome of the work it concerns.
#[tracing::instrument(skip_all)]
pub async fn step(state: &Context) -> Result<StepReport, StorageError> {
    let cfg = PushConfig::from_state(state);
    let mut report = StepReport::default();
    let (held, released) = state.db.orders().sync_hold_states().await?;
    report.held = held;
    report.released = released;

    let now = crate::storage::now();
    let limit = i64::try_from(cfg.accounts_per_step).unwrap_or(i64::MAX);
    let owner = &state.settings.instance_id;
    let due = state.db.orders().due_accounts(owner, now, limit).await?;
    let ids = due.iter().map(|a| a.connection_id).collect();
    let taken = state
        .db
        .orders()
        .claim_accounts(ids, owner, crate::storage::now(), at(cfg.lease))
        .await?;
    let claimed: Vec<DueAccount> = due
        .into_iter()
        .filter(|a| taken.contains(&a.connection_id))
        .collect();
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
    state: &'a Context,
    cfg: &'a PushConfig,
    conn: Connection,
    owner: &'a str,
    /// The seller's settings as the turn began.
    settings: crate::storage::settings::Stored,
}

impl Ctx<'_> {
    fn seller(&self) -> &str {
        &self.conn.seller_id
    }

    fn retry(&self) -> &RetryPolicy {
        &self.cfg.retry
    }
}

/// Work that was claimed for a call and must be put back when the call cannot be made or fails.
#[derive(Clone)]
enum Claimed {
    /// Orders; `needs_lookup` is set to this (`None` leaves it as it is).
    Orders(Vec<String>, Option<bool>),
    Moves(Vec<i64>),
    /// Lead steps of one kind; their state is set to this (`None` leaves it).
    Steps(StepKind, Vec<String>, Option<StepState>),
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
    tokens::with_api_from(ctx.state, &ctx.conn, f).await
}

async fn put_back(
    ctx: &Ctx<'_>,
    claimed: Claimed,
    next_at: NaiveDateTime,
    error: Option<String>,
) -> Result<(), StorageError> {
    let orders = ctx.state.db.orders();
    match claimed {
        Claimed::Orders(ids, flag) => {
            orders
                .reschedule(ids, ctx.owner, next_at, error, flag)
                .await?;
        }
        Claimed::Moves(ids) => {
            orders
                .reschedule_moves(ids, ctx.owner, next_at, error)
                .await?;
        }
        Claimed::Steps(kind, ids, state) => {
            ctx.state
                .db
                .steps()
                .reschedule(kind, ids, ctx.owner, next_at, error, state)
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
) -> Result<Outcome, StorageError> {
    let reason = err.to_string();
    if let Some(rest) = ctx.retry().after_token_error(&err) {
        if matches!(err, TokenError::Corrupt(_)) {
            tracing::error!(reason, "the stored amoCRM connection is unusable");
        }
        let next = at(rest);
        put_back(ctx, claimed, next, Some(reason)).await?;
        return Ok(Outcome::Stop(Some(next)));
    }
    put_back(ctx, claimed, crate::storage::now(), Some(reason.clone())).await?;
    if let TokenError::Storage(e) = err {
        return Err(e);
    }
    tracing::info!(reason, "holding orders until the seller reconnects");
    report.held += ctx
        .state
        .db
        .orders()
        .hold_seller(ctx.seller(), &reason)
        .await?;
    Ok(Outcome::Stop(None))
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
    let Some(wait) = ctx.retry().after_api_error(err, max_attempts) else {
        return Ok(None);
    };
    if matches!(err, ApiError::RateLimited { .. }) {
        report.rate_limited += 1;
    }
    let (next, outcome) = match wait {
        Wait::Retry(after) => (at(after), Outcome::Stop(None)),
        Wait::Rest(after) => {
            let next = at(after);
            (next, Outcome::Stop(Some(next)))
        }
    };
    put_back(ctx, claimed, next, Some(err.to_string())).await?;
    Ok(Some(outcome))
}

/// One account's turn: lookups of ambiguous orders first, then batches of new orders, then stage moves,
/// until the turn's call budget is spent or nothing is due.
#[tracing::instrument(skip_all, fields(seller_id = %acct.seller_id, account_id = tracing::field::Empty))]
async fn turn(
    state: &Context,
    cfg: &PushConfig,
    acct: &DueAccount,
) -> Result<StepReport, StorageError> {
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
    state
        .db
        .orders()
        .release_account(acct.connection_id, &owner, not_before, rest)
        .await?;
    result.map(|_| report)
}

/// The account's connection, if it can be pushed to; otherwise its orders are held.
async fn open_turn(
    state: &Context,
    acct: &DueAccount,
    report: &mut StepReport,
) -> Result<Option<Connection>, StorageError> {
    let Some(conn) = state.db.connections().by_id(acct.connection_id).await? else {
        return Ok(None);
    };
    tracing::Span::current().record("account_id", conn.account_id);
    if conn.status == ConnectionStatus::Active {
        return Ok(Some(conn));
    }
    let reason = TokenError::NeedsReconnect(conn.status).to_string();
    report.held += state
        .db
        .orders()
        .hold_seller(&conn.seller_id, &reason)
        .await?;
    Ok(None)
}

/// The parts of a turn, in the order each round runs them.
#[derive(Clone, Copy)]
enum Part {
    /// Orders whose last send had no known outcome: their lead is found before anything is re-sent.
    Lookups,
    /// New orders, up to 50 per call (one at a time after an unattributed rejection).
    Orders,
    /// What is done on leads that exist: the contact's missing values, notes, products, tasks.
    Steps,
    /// Stage moves of orders that have a lead, oldest first per order.
    Moves,
    /// One page of the account's contacts into the buyer index, while the fill is unfinished.
    Scan,
}

/// Reads one page of contacts into the buyer index; `None` when there was none to read.
async fn scan(ctx: &Ctx<'_>, report: &mut StepReport) -> Result<Option<Outcome>, StorageError> {
    let settings = &ctx.settings.settings;
    if settings.contacts.match_mode == MatchMode::Off {
        return Ok(None);
    }
    match buyers::scan_page(ctx.state, ctx.seller(), settings).await? {
        buyers::ScanPage::Idle => Ok(None),
        buyers::ScanPage::Read { contacts, finished } => {
            report.calls += 1;
            tracing::info!(contacts, finished, "read a page of the account's contacts");
            Ok(Some(Outcome::Ok))
        }
        buyers::ScanPage::Failed(e) => {
            report.calls += 1;
            tracing::warn!(error = %e, "reading the account's contacts failed; trying later");
            Ok(match e {
                TokenError::Api(ApiError::RateLimited { retry_after }) => {
                    report.rate_limited += 1;
                    Some(Outcome::Stop(Some(at(retry_after))))
                }
                _ => Some(Outcome::Stop(None)),
            })
        }
    }
}

/// Returns the time the account may be served again, if it must rest (429, token trouble).
async fn turn_inner(
    state: &Context,
    cfg: &PushConfig,
    acct: &DueAccount,
    owner: &str,
    report: &mut StepReport,
) -> Result<Option<NaiveDateTime>, StorageError> {
    let Some(conn) = open_turn(state, acct, report).await? else {
        return Ok(None);
    };
    let settings = state.db.settings().get(&conn.seller_id).await?;
    let mut ctx = Ctx {
        state,
        cfg,
        conn,
        owner,
        settings,
    };
    let mut solo = 0usize;
    let scanning = ctx.settings.settings.contacts.match_mode != MatchMode::Off;
    let mut first = true;
    while report.calls < cfg.calls_per_turn {
        let work = state.db.orders().account_work(&acct.seller_id).await?;
        if !work.any(scanning) {
            break;
        }
        // The claim of this step set the lease a moment ago; later rounds extend it.
        if !first
            && !state
                .db
                .orders()
                .extend_account(acct.connection_id, owner, at(cfg.lease))
                .await?
        {
            tracing::warn!("lost the account's push lease");
            return Ok(None);
        }
        first = false;
        let mut progressed = false;
        let mut sent_orders = false;
        for part in [
            Part::Lookups,
            Part::Orders,
            Part::Steps,
            Part::Moves,
            Part::Scan,
        ] {
            let done = match part {
                Part::Lookups if work.lookups => lookups(&ctx, report).await?,
                Part::Orders if work.orders => {
                    let done = new_orders(&mut ctx, report, &mut solo).await?;
                    sent_orders = done.is_some();
                    done
                }
                Part::Steps => steps::run(&ctx, report, &work, !sent_orders).await?,
                Part::Moves if work.moves => moves(&ctx, report).await?,
                Part::Scan if work.scan => scan(&ctx, report).await?,
                Part::Lookups | Part::Orders | Part::Moves | Part::Scan => None,
            };
            match done {
                Some(Outcome::Stop(s)) => return Ok(s),
                Some(Outcome::Ok) => progressed = true,
                None => {}
            }
            if report.calls >= cfg.calls_per_turn {
                return Ok(None);
            }
        }
        if !progressed {
            break;
        }
    }
    Ok(None)
}

/// Looks up the orders whose last send had no known outcome; `None` when there were none.
async fn lookups(ctx: &Ctx<'_>, report: &mut StepReport) -> Result<Option<Outcome>, StorageError> {
    let budget = i64::from(ctx.cfg.calls_per_turn - report.calls).min(BATCH as i64);
    let batch = claim(ctx, budget, ClaimFor::Lookup).await?;
    if batch.is_empty() {
        return Ok(None);
    }
    lookup_batch(ctx, batch, report).await.map(Some)
}

/// Sends one batch of new orders; `None` when none was due. After a re-provisioning the turn goes on with
/// the connection's new pipeline and field ids.
async fn new_orders(
    ctx: &mut Ctx<'_>,
    report: &mut StepReport,
    solo: &mut usize,
) -> Result<Option<Outcome>, StorageError> {
    let size = if *solo > 0 { 1 } else { BATCH as i64 };
    let batch = claim(ctx, size, ClaimFor::Send).await?;
    if batch.is_empty() {
        return Ok(None);
    }
    *solo = solo.saturating_sub(1);
    let calls = report.calls;
    let batch = match resolve_buyers(ctx, batch, report).await? {
        // Nothing could be searched (no call left in this turn, or every buyer is being made by another
        // order): the orders went back, and going round again would only claim them again.
        Ok(ready) if ready.is_empty() && report.calls == calls => {
            return Ok(Some(Outcome::Stop(None)));
        }
        Ok(ready) if ready.is_empty() => return Ok(Some(Outcome::Ok)),
        Ok(ready) => ready,
        Err(stop) => return Ok(Some(stop)),
    };
    let reprovisioned = report.reprovisioned;
    let outcome = push_batch(ctx, batch, report, solo).await?;
    if matches!(outcome, Outcome::Ok) && report.reprovisioned > reprovisioned {
        match ctx.state.db.connections().by_id(ctx.conn.id).await? {
            Some(fresh) => ctx.conn = fresh,
            None => return Ok(Some(Outcome::Stop(None))),
        }
    }
    Ok(Some(outcome))
}

/// Finds each order's buyer in the seller's amoCRM (index, then search) before its lead is built. Orders
/// whose buyer another order is making wait a moment; orders the budget did not reach go back at once. An
/// amoCRM failure puts the whole batch back (nothing was sent) and may end the turn.
async fn resolve_buyers(
    ctx: &Ctx<'_>,
    batch: Vec<ClaimedOrder>,
    report: &mut StepReport,
) -> Result<Result<Vec<ClaimedOrder>, Outcome>, StorageError> {
    // Keep one call of the turn for the lead itself.
    let left = ctx.cfg.calls_per_turn.saturating_sub(report.calls + 1);
    let mut budget = buyers::Budget {
        calls_left: left,
        calls_made: 0,
    };
    let settings = &ctx.settings.settings;
    let resolved = buyers::resolve(ctx.state, ctx.seller(), settings, &batch, &mut budget).await;
    report.calls += budget.calls_made;
    let outcomes = match resolved {
        Ok(o) => o,
        Err(buyers::ResolveError::Storage(e)) => return Err(e),
        Err(buyers::ResolveError::Token(err)) => {
            let claimed = Claimed::Orders(ids_of(&batch), Some(false));
            let attempts = batch.iter().map(|o| o.row.sync_attempts).max().unwrap_or(1);
            return search_failed(ctx, err, claimed, attempts, report)
                .await
                .map(Err);
        }
    };
    let (mut ready, mut waiting, mut later) = (Vec::new(), Vec::new(), Vec::new());
    for (mut o, outcome) in batch.into_iter().zip(outcomes) {
        match outcome {
            buyers::Outcome::Ready(r) => {
                o.row.buyer = r;
                ready.push(o);
            }
            buyers::Outcome::Wait => waiting.push(o.row.id),
            buyers::Outcome::Later => later.push(o.row.id),
        }
    }
    let unsent: Vec<String> = waiting.iter().chain(&later).cloned().collect();
    if !unsent.is_empty() {
        ctx.state
            .db
            .orders()
            .uncount_attempt(unsent, ctx.owner)
            .await?;
    }
    if !waiting.is_empty() {
        let why = Some("waiting for another order of this buyer to make the contact".to_owned());
        put_back(
            ctx,
            Claimed::Orders(waiting, Some(false)),
            at(BUYER_WAIT),
            why,
        )
        .await?;
    }
    if !later.is_empty() {
        let now = crate::storage::now();
        put_back(ctx, Claimed::Orders(later, Some(false)), now, None).await?;
    }
    Ok(Ok(ready))
}

/// A read (a lead or buyer search) failed: the claimed work waits as the failure says; a refused read is
/// retried with backoff like any other failure.
async fn search_failed(
    ctx: &Ctx<'_>,
    err: TokenError,
    claimed: Claimed,
    attempts: i32,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let api = match err {
        TokenError::Api(api) => api,
        other => return token_failure(ctx, other, claimed, report).await,
    };
    let retry = claimed.clone();
    if let Some(out) = api_failure(ctx, &api, claimed, attempts, report).await? {
        return Ok(out);
    }
    let next = at(ctx.retry().after_search_error(attempts));
    put_back(ctx, retry, next, Some(api.to_string())).await?;
    Ok(Outcome::Stop(None))
}

/// Applies one batch of due stage moves; `None` when none was due.
async fn moves(ctx: &Ctx<'_>, report: &mut StepReport) -> Result<Option<Outcome>, StorageError> {
    let moves = ctx
        .state
        .db
        .orders()
        .claim_moves(
            ctx.seller(),
            ctx.owner,
            at(ctx.cfg.lease),
            MOVE_BATCH as i64,
        )
        .await?;
    if moves.is_empty() {
        return Ok(None);
    }
    move_batch(ctx, moves, report).await.map(Some)
}

async fn claim(
    ctx: &Ctx<'_>,
    limit: i64,
    purpose: ClaimFor,
) -> Result<Vec<ClaimedOrder>, StorageError> {
    ctx.state
        .db
        .orders()
        .claim(ctx.seller(), ctx.owner, at(ctx.cfg.lease), limit, purpose)
        .await
}

/// The lead for one order, as docs/CONTRACT.md §6 and §9 describe it: the mapped stage (or Unsorted), the
/// order number and link, the seller's mapped fields, tags with the source, the buyer's existing contact and
/// company by id (or new ones), and the responsible user chosen for it.
pub fn build_lead(
    conn: &Connection,
    row: &OrderRow,
    name_template: &str,
    settings: &SellerSettings,
) -> Result<ComplexLeadItem, String> {
    let draft: OrderDraft = serde_json::from_str(&row.body_json)
        .map_err(|e| format!("stored order body is unreadable: {e}"))?;
    let (pipeline_id, status_id) = conn
        .stage_map()
        .stage(row.status)
        .ok_or_else(|| "the seller's pipeline mapping is incomplete".to_owned())?;
    let fields = lead_fields(conn, &draft, settings);
    let mut tags = draft.tags.clone();
    if let Some(src) = &draft.source
        && !tags.contains(src)
    {
        tags.push(src.clone());
    }
    let customer = &draft.customer;
    let country = &settings.contacts.default_country;
    let phone = customer
        .phone
        .as_deref()
        .map(|p| crate::domain::buyer::normalize_phone(p, country).unwrap_or_else(|| p.to_owned()));
    let lead = ComplexLead {
        name: draft.lead_name(name_template),
        price: Money::from_minor(row.total_amount_minor).rounded_major(),
        pipeline_id,
        status_id,
        request_id: row.id.clone(),
        custom_fields_values: fields,
        tags,
        contact: Some(NewContact {
            name: customer.display_name(),
            phone,
            email: customer.email.clone(),
        }),
        company: customer.company.as_ref().map(|name| NewCompany {
            name: name.trim().to_owned(),
        }),
    };
    let mut item = ComplexLeadItem::from(lead);
    let id = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    item.contact_id = id(row.buyer.buyer_contact_id);
    item.company_id = id(row.buyer.buyer_company_id);
    item.responsible_user_id = id(row.buyer.responsible_user_id);
    if settings.entry == Entry::Incoming {
        item.unsorted = Some(FormMetadata {
            form_id: "marketplace-order".to_owned(),
            form_name: draft
                .source
                .clone()
                .unwrap_or_else(|| "Marketplace".to_owned()),
            form_page: draft
                .url
                .clone()
                .unwrap_or_else(|| format!("order {}", draft.order_number)),
            form_sent_at: crate::storage::from_db(row.created_at).timestamp(),
            referer: None,
            ip: None,
        });
    }
    Ok(item)
}

/// The order number and link in our fields, and the order's delivery, payment and source in the seller's
/// own fields where they mapped them.
fn lead_fields(
    conn: &Connection,
    draft: &OrderDraft,
    settings: &SellerSettings,
) -> Vec<FieldValue> {
    let id = |v: Option<i64>| v.and_then(|v| u64::try_from(v).ok());
    let delivery = draft.delivery.as_ref();
    let values = [
        (
            id(conn.field_order_number_id),
            Some(draft.order_number.clone()),
        ),
        (id(conn.field_order_link_id), draft.url.clone()),
        (
            id(settings.fields.delivery_method),
            delivery.and_then(|d| d.method.clone()),
        ),
        (
            id(settings.fields.delivery_address),
            delivery.and_then(|d| d.address.clone()),
        ),
        (
            id(settings.fields.payment_method),
            draft.payment.as_ref().and_then(|p| p.method.clone()),
        ),
        (id(settings.fields.source), draft.source.clone()),
    ];
    values
        .into_iter()
        .filter_map(|(f, v)| Some(FieldValue::text(f?, v?)))
        .collect()
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

/// Sends one claimed batch through `leads/complex` and settles every order by the answer.
#[tracing::instrument(skip_all, fields(orders = batch.len()))]
async fn push_batch(
    ctx: &Ctx<'_>,
    batch: Vec<ClaimedOrder>,
    report: &mut StepReport,
    solo: &mut usize,
) -> Result<Outcome, StorageError> {
    let (leads, sendable) = build_batch(ctx, batch, report).await?;
    if sendable.is_empty() {
        return Ok(Outcome::Ok);
    }
    report.calls += 1;
    report.complex_calls += 1;
    crate::metrics::push_batch(leads.len());
    let leads_ref: &[ComplexLeadItem] = &leads;
    let result = call(ctx, |amo| async move {
        amo.api().leads_complex_items(leads_ref).await
    })
    .await;
    match result {
        Ok(results) => {
            store_results(ctx, &sendable, results, report).await?;
            Ok(Outcome::Ok)
        }
        Err(TokenError::Api(err)) => push_failed(ctx, sendable, &err, report, solo).await,
        Err(other) => {
            let claimed = Claimed::Orders(ids_of(&sendable), Some(false));
            token_failure(ctx, other, claimed, report).await
        }
    }
}

/// The leads of a claimed batch and the orders they are for. Orders whose lead cannot be built (the
/// seller's mapping is incomplete) were not sent: provisioning is repaired and they are put back.
async fn build_batch(
    ctx: &Ctx<'_>,
    batch: Vec<ClaimedOrder>,
    report: &mut StepReport,
) -> Result<(Vec<ComplexLeadItem>, Vec<ClaimedOrder>), StorageError> {
    let mut leads = Vec::with_capacity(batch.len());
    let mut sendable = Vec::with_capacity(batch.len());
    let mut unbuildable = Vec::new();
    for o in batch {
        match build_lead(
            &ctx.conn,
            &o.row,
            &ctx.cfg.lead_name_template,
            &ctx.settings.settings,
        ) {
            Ok(l) => {
                leads.push(l);
                sendable.push(o);
            }
            Err(reason) => unbuildable.push((o, reason)),
        }
    }
    if !unbuildable.is_empty() {
        let complete = reprovision(ctx, report).await;
        for (o, reason) in unbuildable {
            let next = at(ctx.retry().after_repair(complete, o.row.sync_attempts));
            let claimed = Claimed::Orders(vec![o.row.id.clone()], Some(false));
            put_back(ctx, claimed, next, Some(reason)).await?;
        }
    }
    Ok((leads, sendable))
}

/// Settles a batch amoCRM answered with an error: looked up later when the create may have happened,
/// retried when the account or amoCRM is at fault, re-provisioned when our pipeline or fields are gone,
/// otherwise the rejected orders fail.
async fn push_failed(
    ctx: &Ctx<'_>,
    sendable: Vec<ClaimedOrder>,
    err: &ApiError,
    report: &mut StepReport,
    solo: &mut usize,
) -> Result<Outcome, StorageError> {
    let max_attempts = sendable
        .iter()
        .map(|o| o.row.sync_attempts)
        .max()
        .unwrap_or(1);
    if err.may_have_written() {
        tracing::warn!(count = sendable.len(), error = %err, "leads/complex outcome unknown; the orders will be looked up");
        let claimed = Claimed::Orders(ids_of(&sendable), Some(true));
        let next = at(ctx.retry().lookup_delay);
        put_back(ctx, claimed, next, Some(err.to_string())).await?;
        return Ok(Outcome::Ok);
    }
    let claimed = Claimed::Orders(ids_of(&sendable), Some(false));
    if let Some(out) = api_failure(ctx, err, claimed, max_attempts, report).await? {
        return Ok(out);
    }
    // A rejection (400/422…): nothing was created.
    if points_at_provisioning(err) {
        tracing::warn!(error = %err, "amoCRM no longer knows our pipeline or fields; provisioning again");
        let complete = reprovision(ctx, report).await;
        let next = at(ctx.retry().after_repair(complete, max_attempts));
        let claimed = Claimed::Orders(ids_of(&sendable), Some(false));
        put_back(ctx, claimed, next, Some(err.to_string())).await?;
        return Ok(if complete {
            Outcome::Ok
        } else {
            Outcome::Stop(None)
        });
    }
    if let Some(fixes) = stale_references(err) {
        return repair_references(ctx, sendable, &fixes, err).await;
    }
    reject_orders(ctx, sendable, err, report, solo).await
}

/// What a rejected lead pointed at that amoCRM no longer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stale {
    /// A responsible user deleted or deactivated: the lead goes with the account's default user.
    Responsible,
    /// The buyer's contact or company was deleted: the buyer is found (or made) again.
    Contact,
    Company,
}

/// The stale references of a rejection, by request id (`None`: not attributed), when every error of it is
/// one; `None` when anything else is wrong with the orders.
fn stale_references(err: &ApiError) -> Option<Vec<(Option<String>, Stale)>> {
    let ApiError::Rejected { validation, .. } = err else {
        return None;
    };
    let mut out = Vec::new();
    for v in validation {
        for e in &v.errors {
            let path = e.path.as_str();
            let stale = if path.ends_with("responsible_user_id") {
                Stale::Responsible
            } else if path.starts_with("_embedded.contacts") {
                Stale::Contact
            } else if path.starts_with("_embedded.companies") {
                Stale::Company
            } else {
                return None;
            };
            out.push((v.request_id.clone(), stale));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Sends the orders again at once without the references amoCRM refused; the seller's settings show a
/// responsible user that no longer works.
async fn repair_references(
    ctx: &Ctx<'_>,
    sendable: Vec<ClaimedOrder>,
    fixes: &[(Option<String>, Stale)],
    err: &ApiError,
) -> Result<Outcome, StorageError> {
    let mut repaired = Vec::new();
    for o in &sendable {
        let mine: Vec<Stale> = fixes
            .iter()
            .filter(|(rid, _)| rid.as_deref().is_none_or(|r| r == o.row.id))
            .map(|(_, s)| *s)
            .collect();
        let mut r = o.row.buyer.clone();
        for stale in mine {
            match stale {
                Stale::Responsible => r.responsible_user_id = None,
                Stale::Contact | Stale::Company => {
                    let linked = if stale == Stale::Contact {
                        &mut r.buyer_contact_id
                    } else {
                        &mut r.buyer_company_id
                    };
                    if let Some(c) = linked.take() {
                        ctx.state
                            .db
                            .buyers()
                            .forget_contact(ctx.seller(), c)
                            .await?;
                    }
                    r.buyer_resolved = false;
                }
            }
        }
        repaired.push((o.row.id.clone(), r));
    }
    if fixes.iter().any(|(_, s)| *s == Stale::Responsible) {
        let problem = format!(
            "amoCRM refused a responsible user; orders went to the account's default user ({err})"
        );
        tracing::warn!(problem, "responsible user no longer valid");
        let problem: String = problem.chars().take(500).collect();
        ctx.state
            .db
            .settings()
            .set_problems(ctx.seller(), Some(&problem))
            .await?;
    }
    ctx.state
        .db
        .orders()
        .save_buyers(ctx.seller(), ctx.owner, repaired, None)
        .await?;
    let claimed = Claimed::Orders(ids_of(&sendable), Some(false));
    put_back(ctx, claimed, crate::storage::now(), Some(err.to_string())).await?;
    Ok(Outcome::Ok)
}

/// amoCRM refused the batch for its content: the orders it named fail for good and the rest go again;
/// when it named none, the batch is sent again one order per call to find the bad one.
async fn reject_orders(
    ctx: &Ctx<'_>,
    sendable: Vec<ClaimedOrder>,
    err: &ApiError,
    report: &mut StepReport,
    solo: &mut usize,
) -> Result<Outcome, StorageError> {
    let named: Vec<&str> = err.rejected_request_ids();
    let (bad, good): (Vec<ClaimedOrder>, Vec<ClaimedOrder>) = if sendable.len() == 1 {
        (sendable, Vec::new())
    } else {
        sendable
            .into_iter()
            .partition(|o| named.contains(&o.row.id.as_str()))
    };
    let now = crate::storage::now();
    if bad.is_empty() {
        *solo = good.len();
        let claimed = Claimed::Orders(ids_of(&good), Some(false));
        put_back(ctx, claimed, now, Some(err.to_string())).await?;
        return Ok(Outcome::Ok);
    }
    for o in &bad {
        let reason = rejection_reason(err, &o.row.id);
        tracing::warn!(order_id = %o.row.id, reason, "amoCRM rejected an order");
        if ctx
            .state
            .db
            .orders()
            .mark_failed(ctx.seller(), ctx.owner, &o.row.id, &reason)
            .await?
        {
            report.failed += 1;
        }
    }
    // The rest were not created (the whole call was refused): send them again without the bad ones.
    put_back(ctx, Claimed::Orders(ids_of(&good), Some(false)), now, None).await?;
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
                steps: plan_steps(ctx, &o.row).await?,
            }),
            None => missing.push(o.row.id.clone()),
        }
    }
    let n = ctx
        .state
        .db
        .orders()
        .mark_synced(ctx.seller(), ctx.owner, synced)
        .await?;
    report.pushed += n;
    if !missing.is_empty() {
        tracing::warn!(
            count = missing.len(),
            "leads/complex answer did not list some orders"
        );
        put_back(
            ctx,
            Claimed::Orders(missing, Some(true)),
            at(ctx.retry().lookup_delay),
            Some("amoCRM's answer did not list this order".into()),
        )
        .await?;
    }
    Ok(())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What is done on an order's lead once it exists, by the seller's settings: the note, the products (if the
/// account has a catalog, decided when the step runs), the task, and the matched contact's missing phone or
/// email when the index does not show the contact having them.
async fn plan_steps(ctx: &Ctx<'_>, row: &OrderRow) -> Result<Vec<StepKind>, StorageError> {
    let s = &ctx.settings.settings;
    let mut steps = Vec::new();
    if let Some(contact) = row.buyer.buyer_contact_id
        && let Ok(d) = serde_json::from_str::<OrderDraft>(&row.body_json)
    {
        let keys: Vec<String> = buyers::order_keys(&d.customer, s)
            .iter()
            .map(crate::domain::buyer::BuyerKey::as_index)
            .collect();
        let known = ctx
            .state
            .db
            .buyers()
            .lookup(ctx.seller(), keys.clone())
            .await?;
        let complete = keys
            .iter()
            .all(|k| known.get(k).is_some_and(|r| r.contact_id == Some(contact)));
        if !complete {
            steps.push(StepKind::Contact);
        }
    }
    if s.items.note {
        steps.push(StepKind::Note);
    }
    if s.items.products != crate::domain::settings::ProductsMode::Off {
        steps.push(StepKind::Products);
    }
    if s.task.enabled {
        steps.push(StepKind::Task);
    }
    Ok(steps)
}

/// Searches amoCRM for the leads of orders whose create may have happened; adopts what it finds and
/// releases the rest for sending.
#[tracing::instrument(skip_all, fields(orders = batch.len()))]
async fn lookup_batch(
    ctx: &Ctx<'_>,
    batch: Vec<ClaimedOrder>,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let mut found = Vec::new();
    let mut absent = Vec::new();
    let mut pending: VecDeque<ClaimedOrder> = batch.into();
    while let Some(o) = pending.front().cloned() {
        if report.calls >= ctx.cfg.calls_per_turn {
            break;
        }
        let hit = match search_lead(ctx, &o, report).await {
            Ok(hit) => hit,
            Err(err) => {
                // This and the remaining orders stay flagged; decide how long the account rests.
                let ids: Vec<String> = pending.drain(..).map(|o| o.row.id).collect();
                let outcome = search_failed(
                    ctx,
                    err,
                    Claimed::Orders(ids, None),
                    o.row.sync_attempts.max(1),
                    report,
                )
                .await?;
                settle_lookups(ctx, Vec::new(), found, absent, report).await?;
                return Ok(outcome);
            }
        };
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
                    steps: plan_steps(ctx, &o.row).await?,
                });
            }
            None => absent.push(o.row.id.clone()),
        }
    }
    let unreached = pending.iter().map(|o| o.row.id.clone()).collect();
    settle_lookups(ctx, unreached, found, absent, report).await?;
    Ok(Outcome::Ok)
}

/// Finds the lead made for one order. amoCRM's `query` matches substrings: pages through and keeps only an
/// exact order-number match, within the turn's call budget.
async fn search_lead(
    ctx: &Ctx<'_>,
    o: &ClaimedOrder,
    report: &mut StepReport,
) -> Result<Option<amocrm_client::Lead>, TokenError> {
    let field = ctx
        .conn
        .field_order_number_id
        .and_then(|f| u64::try_from(f).ok());
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
        let leads = call(ctx, |amo| async move { amo.api().search_leads(q).await }).await?;
        let full = leads.len() >= 250;
        let hit = leads.into_iter().find(|l| match field {
            Some(f) => l.field_texts(f).iter().any(|v| v == &o.row.order_number),
            None => false,
        });
        if hit.is_some() || !full || report.calls >= ctx.cfg.calls_per_turn {
            return Ok(hit);
        }
    }
    Ok(None)
}

/// Stores what the lookups found: adopted leads, orders amoCRM does not have (sent again; the create never
/// happened, so it cannot be duplicated), and orders not reached in this turn (looked up next time).
async fn settle_lookups(
    ctx: &Ctx<'_>,
    unreached: Vec<String>,
    found: Vec<SyncedOrder>,
    absent: Vec<String>,
    report: &mut StepReport,
) -> Result<(), StorageError> {
    let now = crate::storage::now();
    if !unreached.is_empty() {
        put_back(ctx, Claimed::Orders(unreached, None), now, None).await?;
    }
    if !found.is_empty() {
        report.adopted += ctx
            .state
            .db
            .orders()
            .mark_synced(ctx.seller(), ctx.owner, found)
            .await?;
    }
    if !absent.is_empty() {
        put_back(ctx, Claimed::Orders(absent, Some(false)), now, None).await?;
    }
    Ok(())
}

/// Sends claimed stage moves in one `PATCH /api/v4/leads` (a move is idempotent: ambiguous answers are
/// simply retried).
#[tracing::instrument(skip_all, fields(moves = moves.len()))]
async fn move_batch(
    ctx: &Ctx<'_>,
    moves: Vec<ClaimedMove>,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let (sent, updates) = move_updates(ctx, moves, report).await?;
    if updates.is_empty() {
        return Ok(Outcome::Ok);
    }
    let ids: Vec<i64> = sent.iter().map(|m| m.id).collect();
    report.calls += 1;
    let updates_ref: &[LeadUpdate] = &updates;
    let result = call(ctx, |amo| async move {
        amo.api().update_leads(updates_ref).await
    })
    .await;
    match result {
        Ok(_) => {
            report.moved += ctx
                .state
                .db
                .orders()
                .finish_moves(ids, ctx.owner, MoveState::Done, None)
                .await?;
            Ok(Outcome::Ok)
        }
        Err(TokenError::Api(err)) => move_failed(ctx, &sent, &updates, &err, report).await,
        Err(other) => token_failure(ctx, other, Claimed::Moves(ids), report).await,
    }
}

/// The lead updates of claimed moves and the moves they are for. A move whose stage is not mapped (the
/// seller's provisioning is incomplete) was not sent: provisioning is repaired and it is put back.
async fn move_updates(
    ctx: &Ctx<'_>,
    moves: Vec<ClaimedMove>,
    report: &mut StepReport,
) -> Result<(Vec<ClaimedMove>, Vec<LeadUpdate>), StorageError> {
    let stages = ctx.conn.stage_map();
    let mut updates = Vec::with_capacity(moves.len());
    let mut sent = Vec::with_capacity(moves.len());
    for mv in moves {
        match (stages.stage(mv.target_status), u64::try_from(mv.lead_id)) {
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
                let next = at(ctx.retry().after_repair(complete, mv.attempts));
                let error = "the seller's pipeline mapping is incomplete".to_owned();
                put_back(ctx, Claimed::Moves(vec![mv.id]), next, Some(error)).await?;
            }
        }
    }
    Ok((sent, updates))
}

/// Settles moves amoCRM answered with an error: retried when the account or amoCRM is at fault or the
/// answer is ambiguous, re-provisioned when our pipeline is gone; a refused single move fails, a refused
/// batch is sent again one move per call.
async fn move_failed(
    ctx: &Ctx<'_>,
    sent: &[ClaimedMove],
    updates: &[LeadUpdate],
    err: &ApiError,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let ids: Vec<i64> = sent.iter().map(|m| m.id).collect();
    let max_attempts = sent.iter().map(|m| m.attempts).max().unwrap_or(1);
    if let Some(out) =
        api_failure(ctx, err, Claimed::Moves(ids.clone()), max_attempts, report).await?
    {
        return Ok(out);
    }
    if err.may_have_written() {
        let next = at(ctx.retry().lookup_delay);
        put_back(ctx, Claimed::Moves(ids), next, Some(err.to_string())).await?;
        return Ok(Outcome::Ok);
    }
    if points_at_provisioning(err) {
        let complete = reprovision(ctx, report).await;
        let next = at(ctx.retry().after_repair(complete, max_attempts));
        put_back(ctx, Claimed::Moves(ids), next, Some(err.to_string())).await?;
        return Ok(Outcome::Stop(None));
    }
    if ids.len() == 1 {
        ctx.state
            .db
            .orders()
            .finish_moves(ids, ctx.owner, MoveState::Failed, Some(err.to_string()))
            .await?;
        return Ok(Outcome::Ok);
    }
    solo_moves(ctx, sent, updates, report).await
}

/// Sends moves one per call after a batch was refused: each ends done, failed (refused alone) or
/// rescheduled (any other answer).
async fn solo_moves(
    ctx: &Ctx<'_>,
    sent: &[ClaimedMove],
    updates: &[LeadUpdate],
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let orders = ctx.state.db.orders();
    for (mv, up) in sent.iter().zip(updates) {
        report.calls += 1;
        let ids = vec![mv.id];
        let one = std::slice::from_ref(up);
        match call(ctx, |amo| async move { amo.api().update_leads(one).await }).await {
            Ok(_) => {
                report.moved += orders
                    .finish_moves(ids, ctx.owner, MoveState::Done, None)
                    .await?;
            }
            Err(TokenError::Api(err @ ApiError::Rejected { .. })) => {
                orders
                    .finish_moves(ids, ctx.owner, MoveState::Failed, Some(err.to_string()))
                    .await?;
            }
            Err(err) => {
                let next = at(ctx.retry().after_solo_move_error());
                put_back(ctx, Claimed::Moves(ids), next, Some(err.to_string())).await?;
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
                tracing::info!("the seller's pipeline and fields were provisioned again");
                report.reprovisioned += 1;
            } else {
                tracing::warn!(missing = ?r.missing, error = ?r.error, "provisioning is still incomplete");
            }
            r.complete
        }
        Err(e) => {
            tracing::warn!(error = %e, "provisioning failed");
            false
        }
    }
}

/// How many orders are still queued and stage moves pending (tests and the benchmark drain until zero).
pub async fn backlog(state: &Context) -> Result<(i64, i64), StorageError> {
    state.db.orders().backlog().await
}

/// When this instance can next do push work (see the storage's `next_due`); `None` when nothing is queued
/// or nothing it waits for has a known end.
pub async fn next_due(state: &Context) -> Result<Option<NaiveDateTime>, StorageError> {
    state
        .db
        .orders()
        .next_due(&state.settings.instance_id)
        .await
}
