//! Outgoing requests: webhook bodies in amoCRM's bracket format, the uninstall hook, and the delivery
//! thread that sends them asynchronously (never blocking an API answer) and disables failing destinations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, mpsc};

use crate::config::WebhookFormat;
use crate::model::{
    Delivery, DeliveryKind, FieldValues, Lead, Note, Party, UnsortedEntry, UnsortedState,
};
use crate::state::{Account, State, next};

/// Something that happened to an account's entities and may produce webhooks.
#[derive(Debug, Clone)]
pub enum Event {
    LeadAdded(u64),
    LeadUpdated(u64),
    LeadStatus {
        id: u64,
        old_status_id: u64,
        old_pipeline_id: u64,
    },
    LeadResponsible {
        id: u64,
        old_responsible_user_id: u64,
    },
    LeadDeleted(Box<Lead>),
    ContactAdded(u64),
    ContactUpdated(u64),
    ContactDeleted(u64),
    CompanyAdded(u64),
    /// A note on a lead (`note_lead`).
    NoteAdded(u64),
    UnsortedAdded(String),
    /// A pending request's lead was edited.
    UnsortedUpdated(String),
    /// Accepted or declined (the entry's state says which).
    UnsortedDeleted(String),
}

impl Event {
    /// The webhook setting that subscribes to this event.
    fn setting(&self) -> &'static str {
        match self {
            Event::LeadAdded(_) => "add_lead",
            Event::LeadUpdated(_) => "update_lead",
            Event::LeadStatus { .. } => "status_lead",
            Event::LeadResponsible { .. } => "responsible_lead",
            Event::LeadDeleted(_) => "delete_lead",
            Event::ContactAdded(_) => "add_contact",
            Event::ContactUpdated(_) => "update_contact",
            Event::ContactDeleted(_) => "delete_contact",
            Event::CompanyAdded(_) => "add_company",
            Event::NoteAdded(_) => "note_lead",
            Event::UnsortedAdded(_) => "add_unsorted",
            Event::UnsortedUpdated(_) => "update_unsorted",
            Event::UnsortedDeleted(_) => "delete_unsorted",
        }
    }

    /// `(entity, action)` group of the body keys.
    fn group(&self) -> (&'static str, &'static str) {
        match self {
            Event::LeadAdded(_) => ("leads", "add"),
            Event::LeadUpdated(_) => ("leads", "update"),
            Event::LeadStatus { .. } => ("leads", "status"),
            Event::LeadResponsible { .. } => ("leads", "responsible"),
            Event::LeadDeleted(_) => ("leads", "delete"),
            Event::ContactAdded(_) | Event::CompanyAdded(_) => ("contacts", "add"),
            Event::ContactUpdated(_) => ("contacts", "update"),
            Event::ContactDeleted(_) => ("contacts", "delete"),
            Event::NoteAdded(_) => ("leads", "note"),
            Event::UnsortedAdded(_) => ("unsorted", "add"),
            Event::UnsortedUpdated(_) => ("unsorted", "update"),
            Event::UnsortedDeleted(_) => ("unsorted", "delete"),
        }
    }
}

/// One outgoing request waiting for the delivery thread.
#[derive(Debug, Clone)]
pub struct Job {
    pub kind: DeliveryKind,
    pub host: String,
    pub webhook_id: Option<u64>,
    pub url: String,
    /// Form body for webhooks; `None` sends a GET (uninstall hook).
    pub body: Option<String>,
}

/// Builds the webhook jobs of `events` for every enabled destination subscribed to any of them.
/// One request per destination carries all of its events (`leads[add][0]`, `leads[add][1]`, …).
pub fn jobs_for(st: &State, host: &str, events: &[Event]) -> Vec<Job> {
    let Some(acc) = st.accounts.get(host) else {
        return Vec::new();
    };
    let format = st.webhook_format;
    let mut jobs = Vec::new();
    for w in acc.webhooks.iter().filter(|w| !w.hook.disabled) {
        let mine: Vec<&Event> = events
            .iter()
            .filter(|e| w.hook.settings.iter().any(|s| s == e.setting()))
            .filter(|e| {
                format == WebhookFormat::Full
                    || matches!(e, Event::LeadStatus { .. } | Event::LeadAdded(_))
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        let body = match format {
            WebhookFormat::Full => full_body(acc, &mine),
            WebhookFormat::DigitalPipeline => dp_body(acc, &mine),
        };
        if body.is_empty() {
            continue;
        }
        jobs.push(Job {
            kind: DeliveryKind::Webhook,
            host: host.to_owned(),
            webhook_id: Some(w.hook.id),
            url: w.hook.destination.clone(),
            body: Some(body),
        });
    }
    jobs
}

type Pairs = Vec<(String, String)>;

fn encode(pairs: &Pairs) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// Groups events by `(entity, action)` in order of first appearance.
fn grouped<'a>(events: &[&'a Event]) -> Vec<((&'static str, &'static str), Vec<&'a Event>)> {
    let mut groups: Vec<((&'static str, &'static str), Vec<&'a Event>)> = Vec::new();
    for e in events {
        let g = e.group();
        match groups.iter_mut().find(|(k, _)| *k == g) {
            Some((_, list)) => list.push(e),
            None => groups.push((g, vec![e])),
        }
    }
    groups
}

fn full_body(acc: &Account, events: &[&Event]) -> String {
    let mut out: Pairs = Vec::new();
    for ((entity, action), list) in grouped(events) {
        let mut index = 0usize;
        for e in list {
            let p = format!("{entity}[{action}][{index}]");
            let written = match e {
                Event::LeadAdded(id) | Event::LeadUpdated(id) => acc
                    .leads
                    .get(id)
                    .map(|l| lead_fields(&mut out, &p, acc, l, None, None)),
                Event::LeadStatus {
                    id, old_status_id, ..
                } => acc
                    .leads
                    .get(id)
                    .map(|l| lead_fields(&mut out, &p, acc, l, Some(*old_status_id), None)),
                Event::LeadResponsible {
                    id,
                    old_responsible_user_id,
                } => acc.leads.get(id).map(|l| {
                    lead_fields(&mut out, &p, acc, l, None, Some(*old_responsible_user_id))
                }),
                Event::LeadDeleted(l) => {
                    out.push((format!("{p}[id]"), l.id.to_string()));
                    out.push((format!("{p}[type]"), "lead".to_owned()));
                    out.push((format!("{p}[status_id]"), l.status_id.to_string()));
                    out.push((format!("{p}[pipeline_id]"), l.pipeline_id.to_string()));
                    Some(())
                }
                Event::ContactAdded(id) | Event::ContactUpdated(id) => acc
                    .contacts
                    .get(id)
                    .map(|c| party_fields(&mut out, &p, acc, c.party())),
                Event::ContactDeleted(id) => {
                    out.push((format!("{p}[id]"), id.to_string()));
                    out.push((format!("{p}[type]"), "contact".to_owned()));
                    Some(())
                }
                Event::NoteAdded(id) => acc
                    .notes
                    .get(id)
                    .map(|n| note_fields(&mut out, &format!("{p}[note]"), acc, n)),
                Event::UnsortedAdded(uid) | Event::UnsortedUpdated(uid) => acc
                    .unsorted
                    .get(uid)
                    .map(|u| unsorted_fields(&mut out, &p, acc, u)),
                Event::UnsortedDeleted(uid) => acc
                    .unsorted
                    .get(uid)
                    .map(|u| unsorted_result_fields(&mut out, &p, acc, u)),
                Event::CompanyAdded(id) => acc
                    .companies
                    .get(id)
                    .map(|c| party_fields(&mut out, &p, acc, c.party())),
            };
            if written.is_some() {
                index += 1;
            }
        }
    }
    if out.is_empty() {
        return String::new();
    }
    out.push(("account[subdomain]".to_owned(), acc.subdomain.clone()));
    out.push(("account[id]".to_owned(), acc.id.to_string()));
    out.push(("account[_links][self]".to_owned(), acc.self_url()));
    encode(&out)
}

fn lead_fields(
    out: &mut Pairs,
    p: &str,
    acc: &Account,
    l: &Lead,
    old_status: Option<u64>,
    old_responsible: Option<u64>,
) {
    let mut put = |k: &str, v: String| out.push((format!("{p}[{k}]"), v));
    put("id", l.id.to_string());
    put("name", l.name.clone());
    put("status_id", l.status_id.to_string());
    if let Some(old) = old_status {
        put("old_status_id", old.to_string());
    }
    put(
        "price",
        if l.price == 0 {
            String::new()
        } else {
            l.price.to_string()
        },
    );
    put("responsible_user_id", l.responsible_user_id.to_string());
    put("last_modified", l.updated_at.to_string());
    put("modified_user_id", l.updated_by.to_string());
    put("created_user_id", l.created_by.to_string());
    put("date_create", l.created_at.to_string());
    put("pipeline_id", l.pipeline_id.to_string());
    for (i, t) in l.tags.iter().enumerate() {
        put(&format!("tags][{i}][id"), t.id.to_string());
        put(&format!("tags][{i}][name"), t.name.clone());
    }
    put("account_id", acc.id.to_string());
    if let Some(old) = old_responsible {
        put("old_responsible_user_id", old.to_string());
    }
    custom_fields(out, p, &l.custom_fields_values, false);
    out.push((format!("{p}[created_at]"), l.created_at.to_string()));
    out.push((format!("{p}[updated_at]"), l.updated_at.to_string()));
}

fn party_fields(out: &mut Pairs, p: &str, acc: &Account, c: Party<'_>) {
    let mut put = |k: &str, v: String| out.push((format!("{p}[{k}]"), v));
    put("id", c.id.to_string());
    put("name", c.name.to_owned());
    put("responsible_user_id", c.responsible.to_string());
    put("date_create", c.created_at.to_string());
    put("last_modified", c.updated_at.to_string());
    put("created_user_id", acc.user_id.to_string());
    put("modified_user_id", acc.user_id.to_string());
    put("account_id", acc.id.to_string());
    if let Some(company) = c.linked_company {
        if let Some(co) = acc.companies.get(&company) {
            put("company_name", co.name.clone());
        }
        put("linked_company_id", company.to_string());
    }
    custom_fields(out, p, c.fields, true);
    for lead in c.lead_ids {
        out.push((
            format!("{p}[linked_leads_id][{lead}][ID]"),
            lead.to_string(),
        ));
    }
    out.push((format!("{p}[created_at]"), c.created_at.to_string()));
    out.push((format!("{p}[updated_at]"), c.updated_at.to_string()));
    out.push((format!("{p}[type]"), c.kind.to_owned()));
}

/// `custom_fields[i][id|name|values[j][value|enum]|code]`; date fields carry bare `values[j]`.
fn custom_fields(out: &mut Pairs, p: &str, fields: &[FieldValues], with_code: bool) {
    for (i, f) in fields.iter().enumerate() {
        let cp = format!("{p}[custom_fields][{i}]");
        out.push((format!("{cp}[id]"), f.field_id.to_string()));
        out.push((format!("{cp}[name]"), f.field_name.clone()));
        let bare = matches!(f.field_type.as_str(), "date" | "date_time" | "birthday");
        for (j, v) in f.values.iter().enumerate() {
            if bare {
                out.push((format!("{cp}[values][{j}]"), v.as_text()));
                continue;
            }
            out.push((format!("{cp}[values][{j}][value]"), v.as_text()));
            if let Some(e) = v.enum_id {
                out.push((format!("{cp}[values][{j}][enum]"), e.to_string()));
            }
        }
        if with_code && let Some(code) = &f.field_code {
            out.push((format!("{cp}[code]"), code.clone()));
        }
    }
}

/// amoCRM's numeric (v2) note types, as note webhooks carry them.
fn note_type_code(note_type: &str) -> u32 {
    match note_type {
        "call_in" => 10,
        "call_out" => 11,
        "service_message" | "extended_service_message" => 25,
        "sms_in" => 102,
        "sms_out" => 103,
        _ => 4,
    }
}

/// `leads[note][i][note][…]` as in Kommo's example: dates as `YYYY-MM-DD HH:MM:SS`, `metadata` a JSON string.
fn note_fields(out: &mut Pairs, p: &str, acc: &Account, n: &Note) {
    let stamp = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    };
    let author = acc
        .users
        .get(&n.created_by)
        .map(|u| u.name.clone())
        .unwrap_or_else(|| "Robot".to_owned());
    let metadata = serde_json::json!({
        "event_source": {"id": n.created_by, "author_name": author, "type": 1},
    });
    let mut put = |k: &str, v: String| out.push((format!("{p}[{k}]"), v));
    put("text", n.text.clone());
    put("attachement", String::new());
    put("date_create", stamp(n.created_at));
    put("note_type", note_type_code(&n.note_type).to_string());
    put("element_type", "2".to_owned());
    put("element_id", n.entity_id.to_string());
    put("catalog_id", "0".to_owned());
    put("group_id", "0".to_owned());
    put("timestamp_x", stamp(n.updated_at));
    put("account_id", acc.id.to_string());
    put("metadata", metadata.to_string());
    put("created_by", n.created_by.to_string());
    put("modified_by", n.created_by.to_string());
    put("main_user_id", n.responsible_user_id.to_string());
    put("id", n.id.to_string());
    put("created_at", n.created_at.to_string());
    put("updated_at", n.updated_at.to_string());
}

/// `unsorted[add|update][i][…]` in the order of a real capture: uid, source, category, source data, the
/// entities under `data`, then pipeline, account and lead.
fn unsorted_fields(out: &mut Pairs, p: &str, acc: &Account, u: &UnsortedEntry) {
    let mut put = |k: &str, v: String| out.push((format!("{p}[{k}]"), v));
    put("uid", u.uid.clone());
    put("source", u.source_uid.clone());
    put("source_uid", u.source_uid.clone());
    put("category", u.category.clone());
    if let Some(meta) = u.metadata.as_object() {
        for (k, v) in meta {
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => continue,
                other => other.to_string(),
            };
            put(&format!("source_data][{k}"), text);
        }
    }
    put("source_data][source_name", u.source_name.clone());
    put("date_create", u.created_at.to_string());
    if let Some(l) = acc.leads.get(&u.lead_id) {
        put("data][leads][0][id", l.id.to_string());
        put("data][leads][0][name", l.name.clone());
    }
    for (j, c) in u
        .contact_ids
        .iter()
        .filter_map(|c| acc.contacts.get(c))
        .enumerate()
    {
        put(&format!("data][contacts][{j}][id"), c.id.to_string());
        put(&format!("data][contacts][{j}][name"), c.name.clone());
    }
    if let Some(co) = u.company_id.and_then(|c| acc.companies.get(&c)) {
        put("data][companies][0][id", co.id.to_string());
        put("data][companies][0][name", co.name.clone());
    }
    put("pipeline_id", u.pipeline_id.to_string());
    put("account_id", acc.id.to_string());
    put("lead_id", u.lead_id.to_string());
    put("created_at", u.created_at.to_string());
}

/// `unsorted[delete][i][…]`: the request is gone; `accept_result` / `decline_result` name its entities.
fn unsorted_result_fields(out: &mut Pairs, p: &str, acc: &Account, u: &UnsortedEntry) {
    let mut put = |k: &str, v: String| out.push((format!("{p}[{k}]"), v));
    put("uid", u.uid.clone());
    put("category", u.category.clone());
    put("pipeline_id", u.pipeline_id.to_string());
    let (action, result) = match u.state {
        UnsortedState::Declined => ("decline", "decline_result"),
        _ => ("accept", "accept_result"),
    };
    put("action", action.to_owned());
    put(&format!("{result}][leads][0"), u.lead_id.to_string());
    if u.state == UnsortedState::Accepted {
        for (j, c) in u.contact_ids.iter().enumerate() {
            put(&format!("{result}][contacts][{j}"), c.to_string());
        }
    }
    put("account_id", acc.id.to_string());
}

fn dp_body(acc: &Account, events: &[&Event]) -> String {
    let mut out: Pairs = Vec::new();
    for ((entity, action), list) in grouped(events) {
        for (i, e) in list.iter().enumerate() {
            let p = format!("{entity}[{action}][{i}]");
            let (id, old_stage) = match e {
                Event::LeadStatus {
                    id,
                    old_status_id,
                    old_pipeline_id,
                } => (id, Some((old_status_id, old_pipeline_id))),
                Event::LeadAdded(id) => (id, None),
                _ => continue,
            };
            let Some(l) = acc.leads.get(id) else { continue };
            out.push((format!("{p}[id]"), l.id.to_string()));
            out.push((format!("{p}[status_id]"), l.status_id.to_string()));
            out.push((format!("{p}[pipeline_id]"), l.pipeline_id.to_string()));
            if let Some((old_status_id, old_pipeline_id)) = old_stage {
                out.push((format!("{p}[old_status_id]"), old_status_id.to_string()));
                out.push((format!("{p}[old_pipeline_id]"), old_pipeline_id.to_string()));
            }
        }
    }
    if out.is_empty() {
        return String::new();
    }
    out.push(("account[id]".to_owned(), acc.id.to_string()));
    out.push(("account[subdomain]".to_owned(), acc.subdomain.clone()));
    encode(&out)
}

/// Counts queued-but-unfinished deliveries so tests can wait for quiet.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    notify: Notify,
}

impl InFlight {
    pub fn current(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    fn add(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn done(&self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once nothing is queued or being sent.
    pub async fn idle(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.current() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Sender side of the delivery thread.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::UnboundedSender<Job>,
    pub inflight: Arc<InFlight>,
}

impl Outbound {
    /// Starts the delivery thread (its own runtime, so senders never depend on the caller's runtime).
    pub fn start(state: Arc<Mutex<State>>, timeout: Duration) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel::<Job>();
        let inflight = Arc::new(InFlight::default());
        let flight = inflight.clone();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("amocrm-sandbox-outbound".to_owned())
            .spawn(move || rt.block_on(dispatch(rx, state, client, flight)))?;
        Ok(Self { tx, inflight })
    }

    pub fn send(&self, jobs: Vec<Job>) {
        for job in jobs {
            self.inflight.add();
            if self.tx.send(job).is_err() {
                self.inflight.done();
            }
        }
    }
}

/// Routes jobs to one sequential queue per destination, so one destination sees its events in order.
async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Job>,
    state: Arc<Mutex<State>>,
    client: reqwest::Client,
    inflight: Arc<InFlight>,
) {
    let mut queues: HashMap<String, mpsc::UnboundedSender<Job>> = HashMap::new();
    while let Some(job) = rx.recv().await {
        let key = job.url.clone();
        let queue = queues.entry(key).or_insert_with(|| {
            let (qtx, mut qrx) = mpsc::unbounded_channel::<Job>();
            let (state, client, inflight) = (state.clone(), client.clone(), inflight.clone());
            tokio::spawn(async move {
                while let Some(job) = qrx.recv().await {
                    deliver(&state, &client, job).await;
                    inflight.done();
                }
            });
            qtx
        });
        if let Err(e) = queue.send(job) {
            drop(e);
            inflight.done();
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

async fn deliver(state: &Mutex<State>, client: &reqwest::Client, job: Job) {
    if let Some(id) = job.webhook_id {
        let disabled = lock(state)
            .accounts
            .get(&job.host)
            .and_then(|a| a.webhooks.iter().find(|w| w.hook.id == id))
            .is_none_or(|w| w.hook.disabled);
        if disabled {
            return;
        }
    }
    let request = match &job.body {
        Some(body) => client
            .post(&job.url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("User-Agent", "amoCRM-WebHook-client/1.0")
            .header("Accept", "*/*")
            .header("Connection", "close")
            .body(body.clone()),
        None => client.get(&job.url).header(
            "User-Agent",
            match job.kind {
                DeliveryKind::WidgetInstall => "amoCRM-oAuth-client/1.0",
                _ => "amoService-oAuth-Code-Sender/1.0",
            },
        ),
    };
    let (status, error) = match request.send().await {
        Ok(resp) => (Some(resp.status().as_u16()), None),
        Err(e) => (
            None,
            Some(if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "connection failed".to_owned()
            }),
        ),
    };
    let ok = status.is_some_and(|s| (100..300).contains(&s));
    let mut st = lock(state);
    let disable_after = st.webhook_disable_after as usize;
    if let (Some(id), Some(acc)) = (job.webhook_id, st.accounts.get_mut(&job.host))
        && let Some(w) = acc.webhooks.iter_mut().find(|w| w.hook.id == id)
        && !ok
    {
        let now = Instant::now();
        w.failures.push_back(now);
        while w
            .failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(7200))
        {
            w.failures.pop_front();
        }
        w.hook.recent_failures = u32::try_from(w.failures.len()).unwrap_or(u32::MAX);
        if w.failures.len() > disable_after {
            w.hook.disabled = true;
        }
    }
    let seq = next(&mut st.ids.delivery);
    if st.deliveries.len() >= crate::state::LOG_CAP {
        st.deliveries.drain(..crate::state::LOG_CAP / 2);
    }
    st.deliveries.push(Delivery {
        seq,
        kind: job.kind,
        host: job.host,
        url: job.url,
        body: job.body.unwrap_or_default(),
        status,
        error,
        ok,
        at: Utc::now(),
    });
}
