//! The lead's steps after it exists — the buyer contact's missing phone or email, the order note, the
//! products, the task — each batched across the account's orders (up to 250 per request) and each exactly once:
//! a step is recorded `sent` before its request leaves, and a `sent` step is read back from amoCRM (the lead's
//! notes, links, tasks, the contact) before anything is sent again.

use std::collections::HashMap;
use std::ops::ControlFlow;

use amocrm_client::{
    ApiError, CatalogElement, ContactUpdate, NewCatalogElement, NewLink, NewNote, NewTask,
};

use super::{Claimed, Ctx, Outcome, StepReport, api_failure, at, call, put_back, token_failure};
use crate::domain::buyer;
use crate::domain::note;
use crate::domain::order::{OrderDraft, StepKind, StepState};
use crate::domain::settings::ProductsMode;
use crate::services::tokens::TokenError;
use crate::storage::StorageError;
use crate::storage::orders::AccountWork;
use crate::storage::orders::OrderRow;
use crate::storage::steps::{Finished, StepRow};

/// Most steps of one kind claimed at once (amoCRM's batch limit).
const STEP_BATCH: i64 = 250;
/// Orders whose products are linked in one round: one read-back covers them, the links go 250 a request.
const PRODUCT_ORDERS: i64 = 250;
/// The products catalog is looked for again after this long (a seller may turn Products on).
const CATALOG_RECHECK: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Runs due steps of every kind; `None` when there were none. While new orders keep the turn busy
/// (`eager` false) a kind waits until a full batch is due, so notes, links and tasks go 250 a request.
pub(super) async fn run(
    ctx: &Ctx<'_>,
    report: &mut StepReport,
    work: &AccountWork,
    eager: bool,
) -> Result<Option<Outcome>, StorageError> {
    let mut progressed = false;
    for kind in [
        StepKind::Contact,
        StepKind::Note,
        StepKind::Products,
        StepKind::Task,
    ] {
        if report.calls >= ctx.cfg.calls_per_turn {
            break;
        }
        let limit = if kind == StepKind::Products {
            PRODUCT_ORDERS
        } else {
            STEP_BATCH
        };
        let due = work.steps_of(kind);
        if due == 0 || (!eager && due < limit) {
            continue;
        }
        let rows = ctx
            .state
            .db
            .steps()
            .claim(ctx.seller(), kind, ctx.owner, at(ctx.cfg.lease), limit)
            .await?;
        if rows.is_empty() {
            continue;
        }
        progressed = true;
        let orders = bodies(ctx, &rows).await?;
        let outcome = match kind {
            StepKind::Contact => contacts(ctx, rows, &orders, report).await?,
            StepKind::Note => notes(ctx, rows, &orders, report).await?,
            StepKind::Products => products(ctx, rows, &orders, report).await?,
            StepKind::Task => tasks(ctx, rows, &orders, report).await?,
        };
        if let Outcome::Stop(s) = outcome {
            return Ok(Some(Outcome::Stop(s)));
        }
    }
    Ok(progressed.then_some(Outcome::Ok))
}

/// The orders behind claimed steps, by id, with their bodies read.
async fn bodies(
    ctx: &Ctx<'_>,
    rows: &[StepRow],
) -> Result<HashMap<String, (OrderRow, Option<OrderDraft>)>, StorageError> {
    let ids = rows.iter().map(|r| r.order_id.clone()).collect();
    let found = ctx.state.db.orders().find_many(ids).await?;
    Ok(found
        .into_iter()
        .map(|o| {
            let d = serde_json::from_str(&o.body_json).ok();
            (o.id.clone(), (o, d))
        })
        .collect())
}

fn ids(rows: &[&StepRow]) -> Vec<String> {
    rows.iter().map(|r| r.order_id.clone()).collect()
}

fn lead(r: &StepRow) -> u64 {
    u64::try_from(r.lead_id).unwrap_or_default()
}

fn done(r: &StepRow, result_id: Option<u64>, count: Option<i32>) -> Finished {
    Finished {
        order_id: r.order_id.clone(),
        state: StepState::Done,
        result_id: result_id.and_then(|i| i64::try_from(i).ok()),
        result_count: count,
        error: None,
    }
}

fn ended(r: &StepRow, state: StepState, error: Option<String>) -> Finished {
    Finished {
        order_id: r.order_id.clone(),
        state,
        result_id: None,
        result_count: None,
        error,
    }
}

async fn finish(ctx: &Ctx<'_>, kind: StepKind, list: Vec<Finished>) -> Result<(), StorageError> {
    if !list.is_empty() {
        ctx.state.db.steps().finish(kind, ctx.owner, list).await?;
    }
    Ok(())
}

/// A request about `rows` failed. A rejection is the caller's to attribute (`None`); anything else puts the
/// rows back — as `sent` when the request may have written, so they are read back first.
async fn failed(
    ctx: &Ctx<'_>,
    kind: StepKind,
    rows: &[&StepRow],
    err: TokenError,
    report: &mut StepReport,
) -> Result<Option<Outcome>, StorageError> {
    let attempts = rows.iter().map(|r| r.attempts).max().unwrap_or(1).max(1);
    let api = match err {
        TokenError::Api(api) => api,
        other => {
            let claimed = Claimed::Steps(kind, ids(rows), None);
            return token_failure(ctx, other, claimed, report).await.map(Some);
        }
    };
    if api.may_have_written() {
        let claimed = Claimed::Steps(kind, ids(rows), Some(StepState::Sent));
        put_back(
            ctx,
            claimed,
            at(ctx.retry().lookup_delay),
            Some(api.to_string()),
        )
        .await?;
        return Ok(Some(Outcome::Ok));
    }
    let claimed = Claimed::Steps(kind, ids(rows), None);
    if let Some(out) = api_failure(ctx, &api, claimed, attempts, report).await? {
        return Ok(Some(out));
    }
    if matches!(api, ApiError::Rejected { .. }) {
        return Ok(None);
    }
    // An odd answer to a read or a create that surely did not write: retried with backoff.
    let next = at(ctx.retry().backoff(attempts));
    let claimed = Claimed::Steps(kind, ids(rows), None);
    put_back(ctx, claimed, next, Some(api.to_string())).await?;
    Ok(Some(Outcome::Ok))
}

/// A read-back failed: every claimed step goes back as it was (a refused read is retried like any failure).
async fn read_failed(
    ctx: &Ctx<'_>,
    kind: StepKind,
    rows: &[StepRow],
    err: TokenError,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let all: Vec<&StepRow> = rows.iter().collect();
    if let Some(out) = failed(ctx, kind, &all, err, report).await? {
        return Ok(out);
    }
    let attempts = all.iter().map(|r| r.attempts).max().unwrap_or(1).max(1);
    let claimed = Claimed::Steps(kind, ids(&all), None);
    put_back(ctx, claimed, at(ctx.retry().backoff(attempts)), None).await?;
    Ok(Outcome::Ok)
}

/// Whether `text` is this service's note for order `number` (in any of the seller's languages).
fn is_our_note(text: &str, number: &str) -> bool {
    text.lines()
        .next()
        .is_some_and(|first| first.ends_with(&format!(" #{number}")))
}

async fn notes(
    ctx: &Ctx<'_>,
    rows: Vec<StepRow>,
    orders: &HashMap<String, (OrderRow, Option<OrderDraft>)>,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let read = async |leads: &[u64]| {
        call(ctx, |amo| async move {
            amo.api().lead_notes(leads, Some("common")).await
        })
        .await
    };
    let ours = |found: &[amocrm_client::Note], r: &StepRow| {
        let number = orders.get(&r.order_id)?.0.order_number.as_str();
        found
            .iter()
            .find(|n| n.entity_id == Some(lead(r)) && is_our_note(n.text(), number))
            .map(|n| n.id)
    };
    let pending = match to_create(ctx, StepKind::Note, &rows, report, read, ours).await? {
        ControlFlow::Continue(pending) => pending,
        ControlFlow::Break(out) => return Ok(out),
    };
    let lang = ctx.settings.settings.language;
    let (rows, notes): (Vec<&StepRow>, Vec<NewNote>) = pending
        .iter()
        .filter_map(|r| {
            let (_, d) = orders.get(&r.order_id)?;
            let text = note::render(d.as_ref()?, lang);
            Some((
                *r,
                NewNote::common(lead(r), text).with_request_id(r.order_id.clone()),
            ))
        })
        .unzip();
    create_all(ctx, rows, Creates::Notes(notes), report).await
}

/// The rows still to create. Rows already `sent` may have lost their create's answer, so their leads are
/// read back in one call (`read`): those amoCRM has (`ours` finds the id it made among what it returned)
/// are done, the others are created with the rest. `Break` carries the outcome when the read failed.
async fn to_create<'r, T>(
    ctx: &Ctx<'_>,
    kind: StepKind,
    rows: &'r [StepRow],
    report: &mut StepReport,
    read: impl AsyncFnOnce(&[u64]) -> Result<Vec<T>, TokenError>,
    ours: impl Fn(&[T], &StepRow) -> Option<u64>,
) -> Result<ControlFlow<Outcome, Vec<&'r StepRow>>, StorageError> {
    let (sent, mut pending): (Vec<&StepRow>, Vec<&StepRow>) =
        rows.iter().partition(|r| r.state == StepState::Sent);
    if sent.is_empty() {
        return Ok(ControlFlow::Continue(pending));
    }
    report.calls += 1;
    let leads: Vec<u64> = sent.iter().map(|r| lead(r)).collect();
    let found = match read(&leads).await {
        Ok(found) => found,
        Err(e) => {
            return read_failed(ctx, kind, rows, e, report)
                .await
                .map(ControlFlow::Break);
        }
    };
    let mut finished = Vec::new();
    for r in sent {
        match ours(&found, r) {
            Some(id) => finished.push(done(r, Some(id), None)),
            None => pending.push(r),
        }
    }
    finish(ctx, kind, finished).await?;
    Ok(ControlFlow::Continue(pending))
}

/// Creates of one kind, one per step, sent together.
#[derive(Clone)]
enum Creates {
    Notes(Vec<NewNote>),
    Tasks(Vec<NewTask>),
}

impl Creates {
    fn kind(&self) -> StepKind {
        match self {
            Self::Notes(_) => StepKind::Note,
            Self::Tasks(_) => StepKind::Task,
        }
    }

    fn one(&self, i: usize) -> Self {
        match self {
            Self::Notes(n) => Self::Notes(n[i..=i].to_vec()),
            Self::Tasks(t) => Self::Tasks(t[i..=i].to_vec()),
        }
    }

    /// `(request_id, id)` of what amoCRM made.
    async fn send(&self, ctx: &Ctx<'_>) -> Result<Vec<(Option<String>, u64)>, TokenError> {
        match self {
            Self::Notes(n) => call(
                ctx,
                |amo| async move { amo.api().create_lead_notes(n).await },
            )
            .await
            .map(|v| v.into_iter().map(|c| (c.request_id, c.id)).collect()),
            Self::Tasks(t) => call(ctx, |amo| async move { amo.api().create_tasks(t).await })
                .await
                .map(|v| v.into_iter().map(|c| (c.request_id, c.id)).collect()),
        }
    }
}

/// Sends the creates in one request; when amoCRM refuses the batch for its content, one by one (a create
/// refused alone fails for good).
async fn create_all(
    ctx: &Ctx<'_>,
    rows: Vec<&StepRow>,
    creates: Creates,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    if rows.is_empty() {
        return Ok(Outcome::Ok);
    }
    let kind = creates.kind();
    ctx.state
        .db
        .steps()
        .mark_sent(kind, ids(&rows), ctx.owner)
        .await?;
    match send_batch(ctx, &rows, &creates, report).await? {
        Sent::Done(out) => return Ok(out),
        Sent::Refused(why) if rows.len() == 1 => return refuse(ctx, kind, &rows, &why).await,
        Sent::Refused(_) => {}
    }
    for (i, r) in rows.iter().enumerate() {
        if report.calls >= ctx.cfg.calls_per_turn {
            let claimed = Claimed::Steps(kind, vec![r.order_id.clone()], None);
            put_back(ctx, claimed, crate::storage::now(), None).await?;
            continue;
        }
        match send_batch(ctx, &[*r], &creates.one(i), report).await? {
            Sent::Done(Outcome::Stop(s)) => return Ok(Outcome::Stop(s)),
            Sent::Done(Outcome::Ok) => {}
            Sent::Refused(why) => {
                refuse(ctx, kind, &[*r], &why).await?;
            }
        }
    }
    Ok(Outcome::Ok)
}

/// How one create request ended: settled (or put back), or refused for its content.
enum Sent {
    Done(Outcome),
    Refused(String),
}

async fn send_batch(
    ctx: &Ctx<'_>,
    rows: &[&StepRow],
    creates: &Creates,
    report: &mut StepReport,
) -> Result<Sent, StorageError> {
    report.calls += 1;
    let created = match creates.send(ctx).await {
        Ok(created) => created,
        Err(e) => {
            let why = e.to_string();
            return Ok(match failed(ctx, creates.kind(), rows, e, report).await? {
                Some(out) => Sent::Done(out),
                None => Sent::Refused(why),
            });
        }
    };
    let by_request: HashMap<&str, u64> = created
        .iter()
        .filter_map(|(r, id)| Some((r.as_deref()?, *id)))
        .collect();
    settle_created(ctx, creates.kind(), rows, &by_request).await?;
    Ok(Sent::Done(Outcome::Ok))
}

/// Stores what a create answered: steps named in the answer are done; the rest stay `sent` and are read
/// back next round.
async fn settle_created(
    ctx: &Ctx<'_>,
    kind: StepKind,
    rows: &[&StepRow],
    by_request: &HashMap<&str, u64>,
) -> Result<(), StorageError> {
    let (named, missing): (Vec<&StepRow>, Vec<&StepRow>) = rows
        .iter()
        .partition(|r| by_request.contains_key(r.order_id.as_str()));
    let finished = named
        .iter()
        .map(|r| done(r, by_request.get(r.order_id.as_str()).copied(), None))
        .collect();
    finish(ctx, kind, finished).await?;
    if !missing.is_empty() {
        let claimed = Claimed::Steps(kind, ids(&missing), Some(StepState::Sent));
        put_back(ctx, claimed, at(ctx.retry().lookup_delay), None).await?;
    }
    Ok(())
}

/// amoCRM refused a step's request for its content, alone: it fails for good (the order and its lead stand).
async fn refuse(
    ctx: &Ctx<'_>,
    kind: StepKind,
    rows: &[&StepRow],
    why: &str,
) -> Result<Outcome, StorageError> {
    let list = rows
        .iter()
        .map(|r| {
            tracing::warn!(order_id = %r.order_id, step = kind.as_str(), why, "amoCRM refused a lead step");
            ended(r, StepState::Failed, Some(why.chars().take(500).collect()))
        })
        .collect();
    finish(ctx, kind, list).await?;
    Ok(Outcome::Ok)
}

async fn tasks(
    ctx: &Ctx<'_>,
    rows: Vec<StepRow>,
    orders: &HashMap<String, (OrderRow, Option<OrderDraft>)>,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let task = &ctx.settings.settings.task;
    let read = async |leads: &[u64]| {
        call(ctx, |amo| async move { amo.api().lead_tasks(leads).await }).await
    };
    let ours = |found: &[amocrm_client::Task], r: &StepRow| {
        found
            .iter()
            .find(|t| t.entity_id == Some(lead(r)) && t.text == task.text)
            .map(|t| t.id)
    };
    let pending = match to_create(ctx, StepKind::Task, &rows, report, read, ours).await? {
        ControlFlow::Continue(pending) => pending,
        ControlFlow::Break(out) => return Ok(out),
    };
    let due = chrono::Utc::now().timestamp() + task.due_in_minutes * 60;
    let (rows, new): (Vec<&StepRow>, Vec<NewTask>) = pending
        .iter()
        .map(|r| {
            let mut t = NewTask::for_lead(lead(r), task.text.clone(), due);
            t.request_id = Some(r.order_id.clone());
            t.responsible_user_id = orders
                .get(&r.order_id)
                .and_then(|(o, _)| o.buyer.responsible_user_id)
                .and_then(|u| u64::try_from(u).ok());
            (*r, t)
        })
        .unzip();
    create_all(ctx, rows, Creates::Tasks(new), report).await
}

/// The buyer's phone or email the matched contact lacks, added beside its own values (never replacing them).
async fn contacts(
    ctx: &Ctx<'_>,
    rows: Vec<StepRow>,
    orders: &HashMap<String, (OrderRow, Option<OrderDraft>)>,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let country = ctx.settings.settings.contacts.default_country.clone();
    let mut updates: Vec<(&StepRow, ContactUpdate)> = Vec::new();
    let mut finished = Vec::new();
    for r in &rows {
        let Some((o, Some(d))) = orders.get(&r.order_id) else {
            finished.push(ended(r, StepState::Skipped, None));
            continue;
        };
        let Some(contact_id) = o.buyer.buyer_contact_id.and_then(|c| u64::try_from(c).ok()) else {
            finished.push(ended(r, StepState::Skipped, None));
            continue;
        };
        if report.calls >= ctx.cfg.calls_per_turn {
            let claimed = Claimed::Steps(StepKind::Contact, vec![r.order_id.clone()], None);
            put_back(ctx, claimed, crate::storage::now(), None).await?;
            continue;
        }
        report.calls += 1;
        let read = call(
            ctx,
            |amo| async move { amo.api().get_contact(contact_id).await },
        )
        .await;
        let contact = match read {
            Ok(Some(c)) => c,
            Ok(None) => {
                finished.push(ended(
                    r,
                    StepState::Skipped,
                    Some("the contact was deleted".into()),
                ));
                continue;
            }
            Err(e) => {
                finish(ctx, StepKind::Contact, finished).await?;
                let rest: Vec<StepRow> = rows
                    .iter()
                    .filter(|x| !updates.iter().any(|(u, _)| u.order_id == x.order_id))
                    .cloned()
                    .collect();
                return read_failed(ctx, StepKind::Contact, &rest, e, report).await;
            }
        };
        match missing_values(&contact, d, &country) {
            Some(u) => updates.push((r, u)),
            None => finished.push(ended(r, StepState::Skipped, None)),
        }
    }
    finish(ctx, StepKind::Contact, finished).await?;
    patch_contacts(ctx, updates, report).await
}

/// The update that adds the buyer's phone and email to `contact` where it has neither in any spelling.
fn missing_values(
    contact: &amocrm_client::Contact,
    d: &OrderDraft,
    country: &str,
) -> Option<ContactUpdate> {
    let mut update: Option<ContactUpdate> = None;
    let phone = d
        .customer
        .phone
        .as_deref()
        .and_then(|p| buyer::normalize_phone(p, country));
    if let Some(p) = phone
        && !contact
            .phones()
            .iter()
            .any(|v| buyer::normalize_phone(v, country).as_deref() == Some(p.as_str()))
    {
        update = ContactUpdate::adding(contact, "PHONE", &p, "WORK");
    }
    let email = d.customer.email.as_deref().and_then(buyer::normalize_email);
    if let Some(e) = email
        && let Some(add) = ContactUpdate::adding(contact, "EMAIL", &e, "WORK")
    {
        match &mut update {
            Some(u) => u.custom_fields_values.extend(add.custom_fields_values),
            None => update = Some(add),
        }
    }
    update
}

async fn patch_contacts(
    ctx: &Ctx<'_>,
    updates: Vec<(&StepRow, ContactUpdate)>,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    if updates.is_empty() {
        return Ok(Outcome::Ok);
    }
    let rows: Vec<&StepRow> = updates.iter().map(|(r, _)| *r).collect();
    let body: Vec<ContactUpdate> = updates.into_iter().map(|(_, u)| u).collect();
    let body = &body;
    report.calls += 1;
    // A PATCH that sets a contact's lists is idempotent: after any doubt the contact is read again and only
    // what is still missing is sent.
    match call(
        ctx,
        |amo| async move { amo.api().update_contacts(body).await },
    )
    .await
    {
        Ok(_) => {
            let list = rows.iter().map(|r| done(r, None, None)).collect();
            finish(ctx, StepKind::Contact, list).await?;
            Ok(Outcome::Ok)
        }
        Err(e) => {
            let why = e.to_string();
            match failed(ctx, StepKind::Contact, &rows, e, report).await? {
                Some(out) => Ok(out),
                None => refuse(ctx, StepKind::Contact, &rows, &why).await,
            }
        }
    }
}

/// One order's products: SKU → (name, whole-unit price, quantity), same SKUs summed.
type Wanted = Vec<(String, String, Option<f64>, f64)>;

fn wanted(d: &OrderDraft) -> Wanted {
    let mut out: Wanted = Vec::new();
    for item in &d.items {
        let sku = item.sku().to_owned();
        let qty = item.quantity as f64;
        match out.iter_mut().find(|(s, ..)| *s == sku) {
            Some(w) => w.3 += qty,
            None => out.push((
                sku,
                item.name.clone(),
                Some(item.price.rounded_major() as f64),
                qty,
            )),
        }
    }
    out
}

async fn products(
    ctx: &Ctx<'_>,
    rows: Vec<StepRow>,
    orders: &HashMap<String, (OrderRow, Option<OrderDraft>)>,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let catalog = if ctx.settings.settings.items.products == ProductsMode::Off {
        None
    } else {
        match products_catalog(ctx, report).await {
            Ok(c) => c,
            Err(e) => return read_failed(ctx, StepKind::Products, &rows, e, report).await,
        }
    };
    let Some(catalog) = catalog else {
        let list = rows
            .iter()
            .map(|r| ended(r, StepState::Skipped, None))
            .collect();
        finish(ctx, StepKind::Products, list).await?;
        return Ok(Outcome::Ok);
    };
    let plans: Vec<(&StepRow, Wanted)> = rows
        .iter()
        .filter_map(|r| Some((r, wanted(orders.get(&r.order_id)?.1.as_ref()?))))
        .collect();
    let skus: Vec<(String, String, Option<f64>)> = {
        let mut all: Vec<(String, String, Option<f64>)> = Vec::new();
        for (_, w) in &plans {
            for (sku, name, price, _) in w {
                if !all.iter().any(|(s, ..)| s == sku) {
                    all.push((sku.clone(), name.clone(), *price));
                }
            }
        }
        all
    };
    let elements = match elements_for(ctx, catalog, skus, report).await {
        Ok(Some(e)) => e,
        Ok(None) => {
            let claimed = Claimed::Steps(
                StepKind::Products,
                rows.iter().map(|r| r.order_id.clone()).collect(),
                None,
            );
            put_back(ctx, claimed, crate::storage::now(), None).await?;
            return Ok(Outcome::Ok);
        }
        Err(e) => return read_failed(ctx, StepKind::Products, &rows, e, report).await,
    };
    link_and_verify(ctx, catalog, plans, &elements, report).await
}

/// The account's products catalog (found by type, never by its localised name), remembered per seller and
/// looked for again hourly while there is none.
async fn products_catalog(
    ctx: &Ctx<'_>,
    report: &mut StepReport,
) -> Result<Option<u64>, TokenError> {
    let stored = &ctx.settings;
    if let Some(id) = stored.products_catalog_id {
        return Ok(u64::try_from(id).ok());
    }
    let recent = stored
        .catalog_checked_at
        .is_some_and(|t| crate::storage::now() - t < CATALOG_RECHECK);
    if recent {
        return Ok(None);
    }
    report.calls += 1;
    let lists = call(ctx, |amo| async move { amo.api().catalogs().await }).await?;
    let found = lists.into_iter().find(|c| c.is_products()).map(|c| c.id);
    ctx.state
        .db
        .settings()
        .set_catalog(ctx.seller(), found.and_then(|i| i64::try_from(i).ok()))
        .await?;
    Ok(found)
}

/// SKU → element for every SKU: the cache, then a search checked on the exact `SKU` value, then one create
/// for those still missing (recorded in doubt first, so a lost answer is searched, never created twice).
/// `None` when the turn's budget ran out before every SKU was searched (what was found or made is kept).
async fn elements_for(
    ctx: &Ctx<'_>,
    catalog: u64,
    skus: Vec<(String, String, Option<f64>)>,
    report: &mut StepReport,
) -> Result<Option<HashMap<String, u64>>, TokenError> {
    let cat = i64::try_from(catalog).unwrap_or_default();
    let cache = ctx.state.db.catalog();
    let names: Vec<String> = skus.iter().map(|(s, ..)| s.clone()).collect();
    let known = cache.lookup(ctx.seller(), cat, names).await?;
    let mut out: HashMap<String, u64> = known
        .iter()
        .filter_map(|(s, e)| Some((s.clone(), u64::try_from((*e)?).ok()?)))
        .collect();
    let mut create = Vec::new();
    let unknown: Vec<_> = skus
        .into_iter()
        .filter(|(s, ..)| !out.contains_key(s))
        .collect();
    // A turn may not reach every new SKU: what it searched and did not find is still made in this turn (one
    // call kept for that), so the next turn starts where this one ended instead of searching again.
    let mut unsearched = false;
    for (sku, name, price) in unknown {
        if report.calls + 1 >= ctx.cfg.calls_per_turn {
            unsearched = true;
            break;
        }
        report.calls += 1;
        let q = &sku;
        let hits = call(ctx, |amo| async move {
            amo.api().search_catalog_elements(catalog, q, 50).await
        })
        .await?;
        match hits
            .iter()
            .find(|e| e.sku().as_deref() == Some(sku.as_str()))
        {
            Some(e) => {
                cache
                    .store(ctx.seller(), cat, vec![(sku.clone(), Some(to_i64(e.id)))])
                    .await?;
                out.insert(sku, e.id);
            }
            None => create.push((sku, name, price)),
        }
    }
    if create.is_empty() {
        return Ok((!unsearched).then_some(out));
    }
    let doubt = create.iter().map(|(s, ..)| (s.clone(), None)).collect();
    cache.store(ctx.seller(), cat, doubt).await?;
    let new: Vec<NewCatalogElement> = create
        .iter()
        .map(|(sku, name, price)| {
            NewCatalogElement::product(name, Some(sku), *price, None).with_request_id(sku.clone())
        })
        .collect();
    report.calls += 1;
    let new = &new;
    let made: Vec<CatalogElement> = call(ctx, |amo| async move {
        amo.api().create_catalog_elements(catalog, new).await
    })
    .await?;
    let mut stored = Vec::new();
    for e in made {
        let sku = e.request_id.clone().or_else(|| e.sku());
        if let Some(sku) = sku {
            stored.push((sku.clone(), Some(to_i64(e.id))));
            out.insert(sku, e.id);
        }
    }
    cache.store(ctx.seller(), cat, stored).await?;
    Ok((!unsearched).then_some(out))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Links what each lead lacks (one request per 250 links), then reads the leads back: a lead showing every
/// product with its quantity is done; one still missing some is linked again next round.
async fn link_and_verify(
    ctx: &Ctx<'_>,
    catalog: u64,
    plans: Vec<(&StepRow, Wanted)>,
    elements: &HashMap<String, u64>,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let rows: Vec<&StepRow> = plans.iter().map(|(r, _)| *r).collect();
    let leads: Vec<u64> = rows.iter().map(|r| lead(r)).collect();
    let links: Vec<(&StepRow, NewLink)> = plans
        .iter()
        .flat_map(|(r, w)| {
            w.iter().filter_map(|(sku, _, _, qty)| {
                Some((
                    *r,
                    NewLink::product(lead(r), *elements.get(sku)?, catalog, *qty),
                ))
            })
        })
        .collect();
    let sent_before = rows.iter().any(|r| r.state == StepState::Sent);
    let current = if sent_before {
        read_links(ctx, &leads, report).await
    } else {
        Ok(Vec::new())
    };
    let current = match current {
        Ok(c) => c,
        Err(e) => return links_failed(ctx, &rows, e, report).await,
    };
    let needed: Vec<NewLink> = links
        .iter()
        .filter(|(_, l)| !linked(&current, l))
        .map(|(_, l)| l.clone())
        .collect();
    if !needed.is_empty() {
        ctx.state
            .db
            .steps()
            .mark_sent(StepKind::Products, ids(&rows), ctx.owner)
            .await?;
        for chunk in needed.chunks(250) {
            report.calls += 1;
            if let Err(e) = call(ctx, |amo| async move { amo.api().link_leads(chunk).await }).await
            {
                return links_failed(ctx, &rows, e, report).await;
            }
        }
    }
    let after = match read_links(ctx, &leads, report).await {
        Ok(a) => a,
        Err(e) => return links_failed(ctx, &rows, e, report).await,
    };
    settle_links(ctx, plans, &links, &after).await
}

/// A link or its read-back failed: the steps go back (read back first if a link may have been made); a
/// refused link fails the orders' product steps, their leads stand.
async fn links_failed(
    ctx: &Ctx<'_>,
    rows: &[&StepRow],
    err: TokenError,
    report: &mut StepReport,
) -> Result<Outcome, StorageError> {
    let why = err.to_string();
    match failed(ctx, StepKind::Products, rows, err, report).await? {
        Some(out) => Ok(out),
        None => refuse(ctx, StepKind::Products, rows, &why).await,
    }
}

async fn read_links(
    ctx: &Ctx<'_>,
    leads: &[u64],
    report: &mut StepReport,
) -> Result<Vec<(u64, u64, Option<f64>)>, TokenError> {
    report.calls += 1;
    let found = call(ctx, |amo| async move {
        amo.api().leads_catalog_elements(leads).await
    })
    .await?;
    Ok(found
        .into_iter()
        .flat_map(|p| {
            let lead = p.lead_id;
            p.elements
                .into_iter()
                .map(move |e| (lead, e.id, e.quantity))
        })
        .collect())
}

fn linked(current: &[(u64, u64, Option<f64>)], l: &NewLink) -> bool {
    current.iter().any(|(lead, el, qty)| {
        *lead == l.entity_id
            && *el == l.to_entity_id
            && match (l.quantity, qty) {
                (Some(w), Some(g)) => (w - g).abs() < 1e-9,
                (None, _) => true,
                _ => false,
            }
    })
}

async fn settle_links(
    ctx: &Ctx<'_>,
    plans: Vec<(&StepRow, Wanted)>,
    links: &[(&StepRow, NewLink)],
    after: &[(u64, u64, Option<f64>)],
) -> Result<Outcome, StorageError> {
    let mut finished = Vec::new();
    let mut again = Vec::new();
    for (r, w) in &plans {
        let mine: Vec<&NewLink> = links
            .iter()
            .filter(|(x, _)| x.order_id == r.order_id)
            .map(|(_, l)| l)
            .collect();
        if mine.len() == w.len() && mine.iter().all(|l| linked(after, l)) {
            finished.push(done(r, None, i32::try_from(mine.len()).ok()));
        } else {
            again.push(r.order_id.clone());
        }
    }
    finish(ctx, StepKind::Products, finished).await?;
    if !again.is_empty() {
        tracing::warn!(
            orders = again.len(),
            "amoCRM did not keep every product link; linking again"
        );
        let claimed = Claimed::Steps(StepKind::Products, again, Some(StepState::Sent));
        put_back(ctx, claimed, at(ctx.retry().lookup_delay), None).await?;
    }
    Ok(Outcome::Ok)
}
