//! amoCRM API v4 for one account: account, pipelines and statuses, custom fields, leads (complex, list,
//! get, add, patch), contacts and companies, notes, lists and links, users, tasks, unsorted requests,
//! webhooks. Pure state transitions plus the events they cause; the HTTP layer around them lives in
//! `server`.
#![expect(
    clippy::result_large_err,
    reason = "handlers pass ready amoCRM responses up; they are built once per request"
)]

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::config::Rules;
use crate::fields::{self, FIELD_TYPES, as_id, join, opt_bool, opt_int, opt_str, required_str};
use crate::model::{
    Company, Contact, CustomField, FieldEnum, FieldValues, Lead, Pipeline, Status, Tag,
    UnsortedEntry, UnsortedState, Webhook,
};
use crate::outbound::Event;
use crate::problem::{
    self, FieldError, ItemErrors, bad_request, empty_body, hal, hal_or_no_content, no_content,
    problem,
};
use crate::state::{
    Account, Ids, LOST, MAX_PIPELINES, MAX_STATUSES, MAX_WEBHOOKS, STATUS_COLORS, State, WON,
    WebhookState, new_pipeline, next, system_statuses,
};

/// Webhook settings amoCRM accepts (amocrm-api.md §6.1).
pub const WEBHOOK_SETTINGS: [&str; 31] = [
    "add_lead",
    "update_lead",
    "delete_lead",
    "restore_lead",
    "status_lead",
    "responsible_lead",
    "note_lead",
    "add_contact",
    "update_contact",
    "delete_contact",
    "restore_contact",
    "responsible_contact",
    "note_contact",
    "add_company",
    "update_company",
    "delete_company",
    "restore_company",
    "responsible_company",
    "note_company",
    "add_task",
    "update_task",
    "delete_task",
    "responsible_task",
    "add_unsorted",
    "update_unsorted",
    "delete_unsorted",
    "add_talk",
    "update_talk",
    "add_message",
    "add_customer",
    "update_customer",
];

/// The `Ok` value, or the handler returns the `Err` response: handlers answer every refusal with a
/// response of their own, so `?` does not apply.
macro_rules! ok_or_return {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(response) => return response,
        }
    };
}

mod catalogs;
mod contacts;
mod notes;
mod tasks;
mod unsorted;
mod users;

pub(crate) use catalogs::add_catalog;
pub(crate) use contacts::{change_contact, create_contact, remove_contact};
pub(crate) use unsorted::{accept_unsorted, decline_unsorted};

/// Leads per `leads/complex` call.
pub const MAX_COMPLEX: usize = 50;
/// Entities per request or page.
pub const MAX_PAGE: usize = 250;

/// An API request as the handlers need it.
pub struct ApiRequest<'a> {
    /// HTTP method (`GET`, `POST`…).
    pub method: &'a str,
    /// Path after `/api/v4/`, without a trailing slash.
    pub path: &'a str,
    /// The raw query string.
    pub query: &'a str,
    /// The raw request body.
    pub body: &'a [u8],
}

/// Runs one API request against account `host`, as the account's default user.
pub fn handle(st: &mut State, host: &str, req: &ApiRequest<'_>) -> (HttpResponse, Vec<Event>) {
    handle_as(st, host, req, None)
}

/// The endpoint family a request is counted under (see [`crate::EndpointCounters`]).
pub fn family(method: &str, path: &str, query: &str) -> &'static str {
    let seg: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match (method, seg.as_slice()) {
        (_, ["account", ..]) => "account",
        (_, ["leads", "pipelines", ..]) => "pipelines",
        (_, ["leads", "custom_fields", ..]) => "custom_fields",
        (_, ["webhooks", ..]) => "webhooks",
        ("POST", ["leads", "complex"]) => "complex",
        ("POST", ["leads", "notes"]) | ("POST", ["leads", _, "notes"]) => "notes_create",
        ("GET", ["leads", "notes", ..]) | ("GET", ["leads", _, "notes", ..]) => "notes_read",
        ("POST", ["leads", "link" | "unlink"]) => "links_create",
        ("GET", ["leads", _, "links"]) => "links_read",
        ("POST", ["leads", "unsorted", "forms"]) => "unsorted_create",
        ("POST", ["leads", "unsorted", _, "accept"]) => "unsorted_accept",
        ("DELETE", ["leads", "unsorted", _, "decline"]) => "unsorted_decline",
        ("GET", ["leads", "unsorted", ..]) => "unsorted_read",
        ("GET", ["leads"]) | ("GET", ["leads", _]) => "leads_read",
        ("POST", ["leads"]) | ("PATCH", ["leads"]) | ("PATCH", ["leads", _]) => "leads_write",
        ("GET", ["contacts"])
            if Query::parse(query)
                .get("query")
                .is_some_and(|q| !q.trim().is_empty()) =>
        {
            "contacts_search"
        }
        ("GET", ["contacts", ..]) => "contacts_read",
        ("POST", ["contacts"]) => "contacts_create",
        ("PATCH", ["contacts"]) | ("PATCH", ["contacts", _]) => "contacts_patch",
        ("GET", ["companies", ..]) => "companies_read",
        ("GET", ["catalogs", _, "elements", ..]) => "elements_search",
        ("POST", ["catalogs", _, "elements"]) => "elements_create",
        ("GET", ["catalogs", ..]) => "catalogs",
        ("POST", ["tasks"]) => "tasks_create",
        ("GET", ["tasks", ..]) => "tasks_read",
        ("GET", ["users", ..]) => "users",
        _ => "other",
    }
}

/// Routes only an account administrator may call (amocrm-api.md §5, §6.1, §11).
fn admin_only(method: &str, seg: &[&str]) -> bool {
    matches!(
        (method, seg),
        ("GET", ["users", ..])
            | ("POST" | "DELETE", ["webhooks"])
            | ("POST", ["leads", "pipelines"])
            | ("PATCH" | "DELETE", ["leads", "pipelines", _])
            | ("POST", ["leads", "pipelines", _, "statuses"])
            | ("DELETE", ["leads", "pipelines", _, "statuses", _])
    )
}

/// Runs one API request against account `host` as user `user` (the token's `sub`; `None`: the default
/// user). A deleted or deactivated user gets 403 everywhere, a non-admin on admin-only routes.
pub fn handle_as(
    st: &mut State,
    host: &str,
    req: &ApiRequest<'_>,
    user: Option<u64>,
) -> (HttpResponse, Vec<Event>) {
    let now = st.now(host);
    let State {
        accounts,
        ids,
        rules,
        ..
    } = st;
    let Some(acc) = accounts.get_mut(host) else {
        return (problem::not_found(req.method, host), Vec::new());
    };
    let seg: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    let user = user.unwrap_or(acc.user_id);
    match acc.users.get(&user) {
        Some(u) if u.is_active => {
            if !u.is_admin && admin_only(req.method, &seg) {
                return (
                    problem(StatusCode::FORBIDDEN, "Access denied: administrators only"),
                    Vec::new(),
                );
            }
        }
        _ => {
            return (
                problem(
                    StatusCode::FORBIDDEN,
                    "Access denied: the user is not active",
                ),
                Vec::new(),
            );
        }
    }
    let q = Query::parse(req.query);
    let mut cx = Cx {
        acc,
        ids,
        now,
        user,
        rules: *rules,
        events: Vec::new(),
    };
    let resp = match (req.method, seg.as_slice()) {
        ("GET", ["account"]) => cx.account(&q),
        ("GET", ["leads", "pipelines"]) => cx.pipelines_list(),
        ("POST", ["leads", "pipelines"]) => with_body(req.body, |v| cx.pipelines_create(v)),
        ("GET", ["leads", "pipelines", id]) => with_id(id, |id| cx.pipeline_get(id)),
        ("PATCH", ["leads", "pipelines", id]) => {
            with_id(id, |id| with_body(req.body, |v| cx.pipeline_patch(id, v)))
        }
        ("DELETE", ["leads", "pipelines", id]) => with_id(id, |id| cx.pipeline_delete(id)),
        ("GET", ["leads", "pipelines", id, "statuses"]) => with_id(id, |id| cx.statuses_list(id)),
        ("POST", ["leads", "pipelines", id, "statuses"]) => {
            with_id(id, |id| with_body(req.body, |v| cx.statuses_create(id, v)))
        }
        ("GET", ["leads", "pipelines", id, "statuses", sid]) => {
            with_id(id, |id| with_id(sid, |sid| cx.status_get(id, sid)))
        }
        ("DELETE", ["leads", "pipelines", id, "statuses", sid]) => {
            with_id(id, |id| with_id(sid, |sid| cx.status_delete(id, sid)))
        }
        ("GET", ["leads", "custom_fields"]) => cx.fields_list(&q),
        ("POST", ["leads", "custom_fields"]) => with_body(req.body, |v| cx.fields_create(v)),
        ("GET", ["leads", "custom_fields", id]) => with_id(id, |id| cx.field_get(id)),
        ("DELETE", ["leads", "custom_fields", id]) => with_id(id, |id| cx.field_delete(id)),
        ("POST", ["leads", "complex"]) => with_body(req.body, |v| cx.leads_complex(v)),
        ("POST", ["leads", "notes"]) => with_body(req.body, |v| cx.notes_create(v, None)),
        ("GET", ["leads", "notes"]) => cx.notes_list(None, &q),
        ("POST", ["leads", id, "notes"]) => with_id(id, |id| {
            with_body(req.body, |v| cx.notes_create(v, Some(id)))
        }),
        ("GET", ["leads", id, "notes"]) => with_id(id, |id| cx.notes_list(Some(id), &q)),
        ("GET", ["leads", id, "notes", nid]) => {
            with_id(id, |id| with_id(nid, |nid| cx.note_get(id, nid)))
        }
        ("POST", ["leads", "link"]) => with_body(req.body, |v| cx.links_create(v)),
        ("POST", ["leads", "unlink"]) => with_body(req.body, |v| cx.links_remove(v)),
        ("GET", ["leads", id, "links"]) => with_id(id, |id| cx.links_list(id, &q)),
        ("POST", ["leads", "unsorted", "forms"]) => {
            with_body(req.body, |v| cx.unsorted_forms_create(v))
        }
        ("GET", ["leads", "unsorted"]) => cx.unsorted_list(&q),
        ("GET", ["leads", "unsorted", uid]) => cx.unsorted_get(uid),
        ("POST", ["leads", "unsorted", uid, "accept"]) => cx.unsorted_accept(uid, req.body),
        ("DELETE", ["leads", "unsorted", uid, "decline"]) => cx.unsorted_decline(uid, req.body),
        ("GET", ["leads"]) => cx.leads_list(&q),
        ("POST", ["leads"]) => with_body(req.body, |v| cx.leads_add(v)),
        ("PATCH", ["leads"]) => with_body(req.body, |v| cx.leads_patch(v, false)),
        ("GET", ["leads", id]) => with_id(id, |id| cx.lead_get(id, &q)),
        ("PATCH", ["leads", id]) => with_id(id, |id| {
            with_body(req.body, |v| cx.leads_patch(batch_of_one(id, v), true))
        }),
        ("GET", ["contacts"]) => cx.contacts_list(&q),
        ("POST", ["contacts"]) => with_body(req.body, |v| cx.contacts_create(v)),
        ("PATCH", ["contacts"]) => with_body(req.body, |v| cx.contacts_patch(v, false)),
        ("GET", ["contacts", id]) => with_id(id, |id| cx.contact_get(id, &q)),
        ("PATCH", ["contacts", id]) => with_id(id, |id| {
            with_body(req.body, |v| cx.contacts_patch(batch_of_one(id, v), true))
        }),
        ("GET", ["companies"]) => cx.companies_list(&q),
        ("GET", ["companies", id]) => with_id(id, |id| cx.company_get(id)),
        ("GET", ["catalogs"]) => cx.catalogs_list(&q),
        ("GET", ["catalogs", id]) => with_id(id, |id| cx.catalog_get(id)),
        ("GET", ["catalogs", id, "elements"]) => with_id(id, |id| cx.elements_list(id, &q)),
        ("POST", ["catalogs", id, "elements"]) => {
            with_id(id, |id| with_body(req.body, |v| cx.elements_create(id, v)))
        }
        ("GET", ["catalogs", id, "elements", eid]) => {
            with_id(id, |id| with_id(eid, |eid| cx.element_get(id, eid)))
        }
        ("GET", ["users"]) => cx.users_list(&q),
        ("GET", ["users", id]) => with_id(id, |id| cx.user_get(id, &q)),
        ("POST", ["tasks"]) => with_body(req.body, |v| cx.tasks_create(v)),
        ("GET", ["tasks"]) => cx.tasks_list(&q),
        ("GET", ["tasks", id]) => with_id(id, |id| cx.task_get(id)),
        ("GET", ["webhooks"]) => cx.webhooks_list(&q),
        ("POST", ["webhooks"]) => with_body(req.body, |v| cx.webhook_subscribe(v)),
        ("DELETE", ["webhooks"]) => with_body(req.body, |v| cx.webhook_unsubscribe(v)),
        _ => problem::not_found(
            req.method,
            &format!("{}/api/v4/{}", cx.acc.self_url(), req.path),
        ),
    };
    (resp, cx.events)
}

fn with_body(body: &[u8], f: impl FnOnce(Value) -> HttpResponse) -> HttpResponse {
    if body.iter().all(u8::is_ascii_whitespace) {
        return empty_body();
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Null) => empty_body(),
        Ok(v) => f(v),
        Err(_) => bad_request("Request body is not valid JSON"),
    }
}

/// The body of `PATCH {entities}/{id}` as the one-item batch `PATCH {entities}` takes, the id from the path.
fn batch_of_one(id: u64, mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("id".to_owned(), id.into());
    }
    Value::Array(vec![v])
}

fn with_id(s: &str, f: impl FnOnce(u64) -> HttpResponse) -> HttpResponse {
    match s.parse::<u64>() {
        Ok(id) => f(id),
        Err(_) => problem::problem(StatusCode::NOT_FOUND, "Entity not found"),
    }
}

/// Query-string access that understands `key`, `key[]` and `key[N]` lists.
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Splits a raw query string into decoded pairs.
    pub fn parse(q: &str) -> Self {
        Self {
            pairs: serde_urlencoded::from_str(q).unwrap_or_default(),
        }
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Values of `base`, `base[]` and `base[N]`; comma lists are split.
    pub fn list(&self, base: &str) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| {
                k == base
                    || k.strip_prefix(base).is_some_and(|rest| {
                        rest.starts_with('[')
                            && rest.ends_with(']')
                            && rest[1..rest.len() - 1].chars().all(|c| c.is_ascii_digit())
                    })
            })
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_owned()))
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// The numeric ids listed under `base`, `base[]` or `base[N]`.
    pub fn ids(&self, base: &str) -> Vec<u64> {
        self.list(base)
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect()
    }

    /// `filter[statuses][N][pipeline_id]` / `[status_id]` pairs.
    pub fn statuses(&self) -> Vec<(Option<u64>, Option<u64>)> {
        let mut groups: std::collections::BTreeMap<String, (Option<u64>, Option<u64>)> =
            std::collections::BTreeMap::new();
        for (k, v) in &self.pairs {
            let Some(rest) = k.strip_prefix("filter[statuses][") else {
                continue;
            };
            let Some((idx, field)) = rest.split_once("][") else {
                continue;
            };
            let entry = groups.entry(idx.to_owned()).or_default();
            match field {
                "pipeline_id]" => entry.0 = v.parse().ok(),
                "status_id]" => entry.1 = v.parse().ok(),
                _ => {}
            }
        }
        groups.into_values().collect()
    }

    /// The `query` search text, trimmed and lowercased; `None` when blank.
    pub fn search(&self) -> Option<String> {
        self.get("query")
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
    }

    /// The `with` list (`contacts`, `catalog_elements`…), comma-separated or repeated.
    pub fn with(&self) -> Vec<String> {
        self.list("with")
    }

    /// `(page, limit)`, or the 422 amoCRM gives for a limit above 250.
    pub fn paging(&self) -> Result<(usize, usize), HttpResponse> {
        let page = self
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| *p >= 1)
            .unwrap_or(1);
        let limit = self
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l >= 1)
            .unwrap_or(50);
        if limit > MAX_PAGE {
            return Err(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Limit 250 per page",
            ));
        }
        Ok((page, limit))
    }
}

/// The handlers' context: one account, the id sequences, the account's clock, the calling user,
/// collected events.
struct Cx<'a> {
    acc: &'a mut Account,
    ids: &'a mut Ids,
    now: i64,
    user: u64,
    rules: Rules,
    events: Vec<Event>,
}

fn link(href: String) -> Value {
    json!({"self": {"href": href}})
}

fn items(v: &Value) -> Option<&Vec<Value>> {
    v.as_array()
}

/// A batch item as a JSON object; anything else is an error of the item at `index`.
fn object_of(item: &Value, index: usize) -> Result<&Map<String, Value>, ItemErrors> {
    item.as_object().ok_or_else(|| ItemErrors {
        request_id: index.to_string(),
        errors: vec![FieldError::invalid_type("", "object")],
    })
}

/// The items of a batch request, refused as amoCRM refuses them: not a list (400), empty (400 with an empty
/// body), or more than a page (422).
fn batch(v: &Value) -> Result<&Vec<Value>, HttpResponse> {
    let Some(list) = items(v) else {
        return Err(bad_request("Request validation failed"));
    };
    if list.is_empty() {
        return Err(empty_body());
    }
    if list.len() > MAX_PAGE {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Limit 250 per page",
        ));
    }
    Ok(list)
}

/// Every item checked by `check` (its index given); the whole batch refused with every item's errors when
/// any is invalid, as amoCRM does.
fn all_valid<T>(
    list: &[Value],
    mut check: impl FnMut(&Value, usize) -> Result<T, ItemErrors>,
) -> Result<Vec<T>, HttpResponse> {
    let mut all_errs = Vec::new();
    let mut ok = Vec::new();
    for (i, item) in list.iter().enumerate() {
        match check(item, i) {
            Ok(t) => ok.push(t),
            Err(e) => all_errs.push(e),
        }
    }
    if all_errs.is_empty() {
        Ok(ok)
    } else {
        Err(problem::validation(&all_errs))
    }
}

fn too_many_statuses(path: &str) -> FieldError {
    FieldError::new(
        "TooManyStatuses",
        path,
        format!("A pipeline can have at most {MAX_STATUSES} statuses."),
    )
}

/// A created entity's JSON with the `request_id` it was sent with, when one was.
fn with_request_id(mut j: Value, request_id: Option<String>) -> Value {
    if let Some(r) = request_id {
        j["request_id"] = json!(r);
    }
    j
}

/// Page `page` (from 1) of `limit` items; `None` when it is empty (amoCRM answers 204).
fn page_chunk(all: Vec<Value>, page: usize, limit: usize) -> Option<Vec<Value>> {
    let start = (page - 1).saturating_mul(limit);
    let chunk: Vec<Value> = all.into_iter().skip(start).take(limit).collect();
    (!chunk.is_empty()).then_some(chunk)
}

/// A page of a list as HAL, or 204 when the page is empty.
fn page_of(base: &str, key: &str, all: Vec<Value>, page: usize, limit: usize) -> HttpResponse {
    let total = all.len();
    let Some(chunk) = page_chunk(all, page, limit) else {
        return no_content();
    };
    let mut links = json!({
        "self": {"href": format!("{base}?page={page}&limit={limit}")},
    });
    if page * limit < total {
        links["next"] = json!({"href": format!("{base}?page={}&limit={limit}", page + 1)});
    }
    if page > 1 {
        links["prev"] = json!({"href": format!("{base}?page={}&limit={limit}", page - 1)});
    }
    let mut embedded = Map::new();
    embedded.insert(key.to_owned(), Value::Array(chunk));
    hal(json!({"_page": page, "_links": links, "_embedded": embedded}))
}

/// One item of `POST leads/custom_fields`, validated.
fn field_in(item: &Value, i: usize) -> Result<FieldIn, ItemErrors> {
    let o = object_of(item, i)?;
    let mut errs = Vec::new();
    let request_id = opt_str(o, "request_id", "", &mut errs);
    let name = required_str(o, "name", &mut errs);
    let ty = opt_str(o, "type", "", &mut errs);
    match ty.as_deref() {
        Some(t) if FIELD_TYPES.contains(&t) && t != "multitext" => {}
        Some(_) => errs.push(FieldError::not_supported("type")),
        None => errs.push(FieldError::required("type")),
    }
    let code = opt_str(o, "code", "", &mut errs);
    let sort = opt_int(o, "sort", "", &mut errs).unwrap_or(500);
    let api_only = opt_bool(o, "is_api_only", "", &mut errs).unwrap_or(false);
    let mut enums = Vec::new();
    if let Some(Value::Array(es)) = o.get("enums") {
        for (j, e) in es.iter().enumerate() {
            match e.get("value").and_then(Value::as_str) {
                Some(val) => enums.push((
                    val.to_owned(),
                    e.get("sort").and_then(Value::as_i64).unwrap_or(500),
                )),
                None => errs.push(FieldError::required(format!("enums.{j}.value"))),
            }
        }
    }
    ItemErrors::check(
        ItemErrors::key(request_id.as_deref(), i),
        errs,
        FieldIn {
            request_id,
            name: name.unwrap_or_default(),
            ty: ty.unwrap_or_default(),
            code,
            sort,
            api_only,
            enums,
        },
    )
}

/// A validated pipeline to create: its own stages and the system stages it renames.
struct PipelineIn {
    request_id: Option<String>,
    name: String,
    sort: Option<i64>,
    is_main: bool,
    unsorted: bool,
    renames: Vec<(u64, String)>,
    stages: Vec<(String, Option<i64>, String)>,
}

/// A validated lead custom field to create; `enums` are `(value, sort)`.
struct FieldIn {
    request_id: Option<String>,
    name: String,
    ty: String,
    code: Option<String>,
    sort: i64,
    api_only: bool,
    enums: Vec<(String, i64)>,
}

/// What `with=` asks to embed in a lead.
struct LeadWith {
    contacts: bool,
    catalog_elements: bool,
}

impl LeadWith {
    fn of(q: &Query) -> Self {
        let with = q.with();
        Self {
            contacts: with.iter().any(|w| w == "contacts"),
            catalog_elements: with.iter().any(|w| w == "catalog_elements"),
        }
    }
}

/// A quantity as amoCRM writes it: an integer when whole.
fn number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// Parsed, validated input of one lead (create or patch).
#[derive(Default)]
struct LeadIn {
    id: Option<u64>,
    name: Option<String>,
    price: Option<i64>,
    pipeline_id: Option<u64>,
    status_id: Option<u64>,
    responsible: Option<u64>,
    created_by: Option<u64>,
    created_at: Option<i64>,
    closed_at: Option<i64>,
    fields: Option<Vec<FieldValues>>,
    tags: Option<Vec<String>>,
    request_id: String,
    request_id_given: bool,
    contact: Option<PartyIn>,
    company: Option<PartyIn>,
    unsorted: bool,
    /// `_embedded.metadata` (validated) when the lead is filed as unsorted.
    metadata: Option<Value>,
    /// `_embedded.source.external_id`, the unsorted request's `source_uid`.
    source_uid: Option<String>,
    /// The unsorted request's `source_name` (default: the form's name).
    source_name: Option<String>,
}

#[derive(Default)]
struct PartyIn {
    existing: Option<u64>,
    name: Option<String>,
    first_name: String,
    last_name: String,
    responsible: Option<u64>,
    fields: Vec<FieldValues>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Complex,
    Add,
    Patch,
}

impl Cx<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}/api/v4/{path}", self.acc.self_url())
    }

    /// `_embedded` references to entities of `kind` (`leads`, `contacts`, `companies`): each its id and
    /// self link.
    fn refs(&self, kind: &str, ids: impl IntoIterator<Item = u64>) -> Vec<Value> {
        ids.into_iter()
            .map(|id| json!({"id": id, "_links": link(self.url(&format!("{kind}/{id}")))}))
            .collect()
    }

    // ---- account -------------------------------------------------------------------------------

    fn account(&self, q: &Query) -> HttpResponse {
        let a = &self.acc;
        let mut body = json!({
            "id": a.id,
            "name": a.name,
            "subdomain": a.subdomain,
            "created_at": a.created_at,
            "created_by": 0,
            "updated_at": a.created_at,
            "updated_by": 0,
            "current_user_id": a.user_id,
            "country": "RU",
            "currency": "RUB",
            "currency_symbol": "₽",
            "customers_mode": "disabled",
            "is_unsorted_on": true,
            "is_loss_reason_enabled": false,
            "is_helpbot_enabled": false,
            "is_technical_account": false,
            "contact_name_display_order": 1,
            "_links": link(self.url("account")),
        });
        for w in q.with() {
            match w.as_str() {
                "amojo_id" => body["amojo_id"] = json!(format!("{:032x}", a.id)),
                "uuid" => {
                    body["uuid"] = json!(format!("{:08x}-0000-4000-8000-{:012x}", a.id, a.id))
                }
                "version" => body["version"] = json!(22),
                "drive_url" => {
                    body["drive_url"] = json!(format!(
                        "https://drive-b.{}",
                        a.host.split_once('.').map(|x| x.1).unwrap_or(&a.host)
                    ))
                }
                _ => {}
            }
        }
        hal(body)
    }

    // ---- pipelines -----------------------------------------------------------------------------

    fn status_json(&self, s: &Status) -> Value {
        json!({
            "id": s.id,
            "name": s.name,
            "sort": s.sort,
            "is_editable": s.is_editable,
            "pipeline_id": s.pipeline_id,
            "color": s.color,
            "type": s.type_,
            "account_id": self.acc.id,
            "_links": link(self.url(&format!("leads/pipelines/{}/statuses/{}", s.pipeline_id, s.id))),
        })
    }

    fn pipeline_json(&self, p: &Pipeline) -> Value {
        let mut statuses: Vec<&Status> = p.statuses.iter().collect();
        statuses.sort_by_key(|s| (s.sort, s.id));
        json!({
            "id": p.id,
            "name": p.name,
            "sort": p.sort,
            "is_main": p.is_main,
            "is_unsorted_on": p.is_unsorted_on,
            "is_archive": p.is_archive,
            "account_id": self.acc.id,
            "_links": link(self.url(&format!("leads/pipelines/{}", p.id))),
            "_embedded": {"statuses": statuses.iter().map(|s| self.status_json(s)).collect::<Vec<_>>()},
        })
    }

    fn pipelines_list(&self) -> HttpResponse {
        let mut list: Vec<&Pipeline> = self.acc.pipelines.values().collect();
        list.sort_by_key(|p| (p.sort, p.id));
        hal(json!({
            "_total_items": list.len(),
            "_links": link(self.url("leads/pipelines")),
            "_embedded": {"pipelines": list.iter().map(|p| self.pipeline_json(p)).collect::<Vec<_>>()},
        }))
    }

    fn pipeline_get(&self, id: u64) -> HttpResponse {
        hal_or_no_content(self.acc.pipelines.get(&id).map(|p| self.pipeline_json(p)))
    }

    /// Validates `_embedded.statuses`-style status inputs; returns (rename of 142/143, new stages).
    #[expect(clippy::type_complexity, reason = "the type is spelled once")]
    fn status_inputs(
        list: &[Value],
        prefix: &str,
        errs: &mut Vec<FieldError>,
    ) -> (Vec<(u64, String)>, Vec<(String, Option<i64>, String)>) {
        let mut renames = Vec::new();
        let mut stages = Vec::new();
        for (j, s) in list.iter().enumerate() {
            let sp = format!("{prefix}.{j}");
            let Some(o) = s.as_object() else {
                errs.push(FieldError::invalid_type(sp, "object"));
                continue;
            };
            let name = opt_str(o, "name", &sp, errs);
            let sort = opt_int(o, "sort", &sp, errs);
            if let Some(idv) = o.get("id").filter(|v| !v.is_null()) {
                match as_id(idv) {
                    Some(id) if id == WON || id == LOST => {
                        if let Some(n) = name {
                            renames.push((id, n));
                        }
                    }
                    _ => errs.push(FieldError::not_supported(join(&sp, "id"))),
                }
                continue;
            }
            let Some(name) = name.filter(|n| !n.trim().is_empty()) else {
                errs.push(FieldError::required(join(&sp, "name")));
                continue;
            };
            let color = match o.get("color") {
                None | Some(Value::Null) => STATUS_COLORS[0].to_owned(),
                Some(Value::String(c))
                    if STATUS_COLORS.contains(&c.to_ascii_lowercase().as_str()) =>
                {
                    c.to_ascii_lowercase()
                }
                Some(_) => {
                    errs.push(FieldError::not_supported(join(&sp, "color")));
                    continue;
                }
            };
            stages.push((name, sort, color));
        }
        (renames, stages)
    }

    /// One item of `POST leads/pipelines`, validated.
    fn pipeline_in(&self, item: &Value, i: usize) -> Result<PipelineIn, ItemErrors> {
        let o = object_of(item, i)?;
        let mut errs = Vec::new();
        let request_id = opt_str(o, "request_id", "", &mut errs);
        let name = required_str(o, "name", &mut errs);
        let sort = opt_int(o, "sort", "", &mut errs);
        let is_main = opt_bool(o, "is_main", "", &mut errs).unwrap_or(false);
        let unsorted = opt_bool(o, "is_unsorted_on", "", &mut errs).unwrap_or(true);
        let statuses = match o.get("_embedded").and_then(|e| e.get("statuses")) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => {
                errs.push(FieldError::invalid_type("_embedded.statuses", "array"));
                Vec::new()
            }
        };
        let (renames, stages) = Self::status_inputs(&statuses, "_embedded.statuses", &mut errs);
        if stages.len() + 3 > MAX_STATUSES {
            errs.push(too_many_statuses("_embedded.statuses"));
        }
        if self.acc.pipelines.len() + i + 1 > MAX_PIPELINES {
            errs.push(FieldError::new(
                "TooManyPipelines",
                "",
                format!("An account can have at most {MAX_PIPELINES} pipelines."),
            ));
        }
        ItemErrors::check(
            ItemErrors::key(request_id.as_deref(), i),
            errs,
            PipelineIn {
                request_id,
                name: name.unwrap_or_default(),
                sort,
                is_main,
                unsorted,
                renames,
                stages,
            },
        )
    }

    fn pipelines_create(&mut self, v: Value) -> HttpResponse {
        let Some(list) = items(&v) else {
            return problem::body_validation(vec![FieldError::invalid_type("", "array")]);
        };
        if list.is_empty() {
            return empty_body();
        }
        let parsed = ok_or_return!(all_valid(list, |item, i| self.pipeline_in(item, i)));
        let mut out = Vec::new();
        for PipelineIn {
            request_id,
            name,
            sort,
            is_main,
            unsorted,
            renames,
            stages,
        } in parsed
        {
            let next_sort = self
                .acc
                .pipelines
                .values()
                .map(|p| p.sort)
                .max()
                .unwrap_or(0)
                + 1;
            let mut p = new_pipeline(
                self.ids,
                &name,
                sort.unwrap_or(next_sort),
                is_main,
                unsorted,
                &[],
            );
            let pid = p.id;
            let mut incoming: Vec<Status> = p.statuses.drain(..1).collect();
            let mut custom: Vec<Status> = stages
                .into_iter()
                .enumerate()
                .map(|(j, (n, s, c))| Status {
                    id: next(&mut self.ids.status),
                    name: n,
                    sort: s.unwrap_or(20 + 10 * j as i64),
                    color: c,
                    type_: 0,
                    is_editable: true,
                    pipeline_id: pid,
                })
                .collect();
            let mut system = system_statuses(pid).to_vec();
            for (id, n) in renames {
                if let Some(s) = system.iter_mut().find(|s| s.id == id) {
                    s.name = n;
                }
            }
            incoming.append(&mut custom);
            incoming.append(&mut system);
            p.statuses = incoming;
            if is_main {
                for other in self.acc.pipelines.values_mut() {
                    other.is_main = false;
                }
            }
            out.push(with_request_id(self.pipeline_json(&p), request_id));
            self.acc.pipelines.insert(pid, p);
        }
        hal(json!({
            "_total_items": out.len(),
            "_links": link(self.url("leads/pipelines")),
            "_embedded": {"pipelines": out},
        }))
    }

    fn pipeline_patch(&mut self, id: u64, v: Value) -> HttpResponse {
        let Some(o) = v.as_object() else {
            return bad_request("Request validation failed");
        };
        let mut errs = Vec::new();
        let name = opt_str(o, "name", "", &mut errs);
        let sort = opt_int(o, "sort", "", &mut errs);
        let is_main = opt_bool(o, "is_main", "", &mut errs);
        let unsorted = opt_bool(o, "is_unsorted_on", "", &mut errs);
        if !errs.is_empty() {
            return problem::body_validation(errs);
        }
        if !self.acc.pipelines.contains_key(&id) {
            return problem(StatusCode::NOT_FOUND, "Pipeline not found");
        }
        if is_main == Some(true) {
            for other in self.acc.pipelines.values_mut() {
                other.is_main = false;
            }
        }
        let Some(p) = self.acc.pipelines.get_mut(&id) else {
            return no_content();
        };
        if let Some(n) = name {
            p.name = n;
        }
        if let Some(s) = sort {
            p.sort = s;
        }
        if let Some(m) = is_main {
            p.is_main = m;
        }
        if let Some(u) = unsorted {
            p.is_unsorted_on = u;
        }
        let p = p.clone();
        hal(self.pipeline_json(&p))
    }

    fn pipeline_delete(&mut self, id: u64) -> HttpResponse {
        let Some(p) = self.acc.pipelines.get(&id) else {
            return problem(StatusCode::NOT_FOUND, "Pipeline not found");
        };
        if p.is_main || self.acc.pipelines.len() == 1 {
            return bad_request("The main pipeline cannot be deleted");
        }
        if self.acc.leads.values().any(|l| l.pipeline_id == id) {
            return bad_request("The pipeline has leads; move or delete them first");
        }
        self.acc.pipelines.remove(&id);
        no_content()
    }

    fn statuses_list(&self, pid: u64) -> HttpResponse {
        let Some(p) = self.acc.pipelines.get(&pid) else {
            return no_content();
        };
        let mut list: Vec<&Status> = p.statuses.iter().collect();
        list.sort_by_key(|s| (s.sort, s.id));
        hal(json!({
            "_total_items": list.len(),
            "_links": link(self.url(&format!("leads/pipelines/{pid}/statuses"))),
            "_embedded": {"statuses": list.iter().map(|s| self.status_json(s)).collect::<Vec<_>>()},
        }))
    }

    fn statuses_create(&mut self, pid: u64, v: Value) -> HttpResponse {
        let Some(list) = items(&v) else {
            return bad_request("Request validation failed");
        };
        let Some(count) = self.acc.pipelines.get(&pid).map(|p| p.statuses.len()) else {
            return problem(StatusCode::NOT_FOUND, "Pipeline not found");
        };
        let mut errs = Vec::new();
        let (_, stages) = Self::status_inputs(list, "", &mut errs);
        if count + stages.len() > MAX_STATUSES {
            errs.push(too_many_statuses(""));
        }
        if !errs.is_empty() {
            return problem::body_validation(errs);
        }
        let mut out = Vec::new();
        for (name, sort, color) in stages {
            let s = Status {
                id: next(&mut self.ids.status),
                name,
                sort: sort.unwrap_or(9_000),
                color,
                type_: 0,
                is_editable: true,
                pipeline_id: pid,
            };
            out.push(self.status_json(&s));
            if let Some(p) = self.acc.pipelines.get_mut(&pid) {
                p.statuses.push(s);
            }
        }
        hal(json!({
            "_total_items": out.len(),
            "_links": link(self.url(&format!("leads/pipelines/{pid}/statuses"))),
            "_embedded": {"statuses": out},
        }))
    }

    fn status_get(&self, pid: u64, sid: u64) -> HttpResponse {
        hal_or_no_content(
            self.acc
                .pipelines
                .get(&pid)
                .and_then(|p| p.status(sid))
                .map(|s| self.status_json(s)),
        )
    }

    fn status_delete(&mut self, pid: u64, sid: u64) -> HttpResponse {
        let Some(p) = self.acc.pipelines.get_mut(&pid) else {
            return problem(StatusCode::NOT_FOUND, "Pipeline not found");
        };
        match p.status(sid) {
            None => problem(StatusCode::NOT_FOUND, "Status not found"),
            Some(s) if !s.is_editable => bad_request("System statuses cannot be deleted"),
            Some(_)
                if self
                    .acc
                    .leads
                    .values()
                    .any(|l| l.pipeline_id == pid && l.status_id == sid) =>
            {
                bad_request("The status has leads; move them first")
            }
            Some(_) => {
                p.statuses.retain(|s| s.id != sid);
                no_content()
            }
        }
    }

    // ---- custom fields -------------------------------------------------------------------------

    fn field_json(&self, f: &CustomField) -> Value {
        json!({
            "id": f.id,
            "name": f.name,
            "type": f.type_,
            "account_id": self.acc.id,
            "code": f.code,
            "sort": f.sort,
            "is_api_only": f.is_api_only,
            "enums": if f.enums.is_empty() { Value::Null } else { json!(f.enums.iter().map(|e| json!({"id": e.id, "value": e.value, "sort": e.sort})).collect::<Vec<_>>()) },
            "group_id": null,
            "required_statuses": [],
            "is_deletable": true,
            "is_predefined": false,
            "entity_type": f.entity_type,
            "tracking_callback": null,
            "remind": null,
            "triggers": [],
            "currency": null,
            "hidden_statuses": [],
            "chained_lists": null,
            "_links": link(self.url(&format!("{}/custom_fields/{}", f.entity_type, f.id))),
        })
    }

    fn fields_list(&self, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let types = q.list("filter[type]");
        let all: Vec<Value> = self
            .acc
            .lead_fields
            .values()
            .filter(|f| types.is_empty() || types.contains(&f.type_))
            .map(|f| self.field_json(f))
            .collect();
        let total = all.len();
        let Some(chunk) = page_chunk(all, page, limit) else {
            return no_content();
        };
        hal(json!({
            "_total_items": total,
            "_page": page,
            "_page_count": total.div_ceil(limit),
            "_links": link(format!("{}?page={page}&limit={limit}", self.url("leads/custom_fields"))),
            "_embedded": {"custom_fields": chunk},
        }))
    }

    fn field_get(&self, id: u64) -> HttpResponse {
        hal_or_no_content(self.acc.lead_fields.get(&id).map(|f| self.field_json(f)))
    }

    fn fields_create(&mut self, v: Value) -> HttpResponse {
        let Some(list) = items(&v) else {
            return bad_request("Request validation failed");
        };
        if list.is_empty() {
            return empty_body();
        }
        let parsed = ok_or_return!(all_valid(list, field_in));
        let mut out = Vec::new();
        for FieldIn {
            request_id,
            name,
            ty,
            code,
            sort,
            api_only,
            enums,
        } in parsed
        {
            let id = next(&mut self.ids.field);
            let f = CustomField {
                id,
                name,
                type_: ty,
                code,
                sort,
                is_api_only: api_only,
                enums: enums
                    .into_iter()
                    .map(|(value, sort)| FieldEnum {
                        id: next(&mut self.ids.enum_),
                        value,
                        sort,
                    })
                    .collect(),
                entity_type: "leads".to_owned(),
            };
            out.push(with_request_id(self.field_json(&f), request_id));
            self.acc.lead_fields.insert(id, f);
        }
        hal(json!({
            "_total_items": out.len(),
            "_embedded": {"custom_fields": out},
        }))
    }

    fn field_delete(&mut self, id: u64) -> HttpResponse {
        if self.acc.lead_fields.remove(&id).is_none() {
            return problem(StatusCode::NOT_FOUND, "Custom field not found");
        }
        for l in self.acc.leads.values_mut() {
            l.custom_fields_values.retain(|f| f.field_id != id);
        }
        no_content()
    }

    // ---- leads ---------------------------------------------------------------------------------

    fn lead_json(&self, l: &Lead, with: &LeadWith) -> Value {
        let with_contacts = with.contacts;
        let mut embedded = json!({
            "tags": l.tags.iter().map(|t| json!({"id": t.id, "name": t.name, "color": null})).collect::<Vec<_>>(),
            "companies": self.refs("companies", l.company_id),
        });
        if with_contacts {
            embedded["contacts"] = json!(l
                .contact_ids
                .iter()
                .enumerate()
                .map(|(i, c)| json!({"id": c, "is_main": i == 0, "_links": link(self.url(&format!("contacts/{c}")))}))
                .collect::<Vec<_>>());
        }
        if with.catalog_elements {
            embedded["catalog_elements"] = json!(self
                .acc
                .links
                .iter()
                .filter(|k| k.lead_id == l.id && k.to_entity_type == "catalog_elements")
                .map(|k| json!({
                    "id": k.to_entity_id,
                    "metadata": {"quantity": number(k.quantity.unwrap_or(1.0)), "catalog_id": k.catalog_id},
                }))
                .collect::<Vec<_>>());
        }
        json!({
            "id": l.id,
            "name": l.name,
            "price": l.price,
            "responsible_user_id": l.responsible_user_id,
            "group_id": 0,
            "status_id": l.status_id,
            "pipeline_id": l.pipeline_id,
            "loss_reason_id": null,
            "created_by": l.created_by,
            "updated_by": l.updated_by,
            "created_at": l.created_at,
            "updated_at": l.updated_at,
            "closed_at": l.closed_at,
            "closest_task_at": null,
            "is_deleted": false,
            "custom_fields_values": fields::values_json(&l.custom_fields_values),
            "score": null,
            "account_id": self.acc.id,
            "labor_cost": null,
            "_links": link(self.url(&format!("leads/{}", l.id))),
            "_embedded": embedded,
        })
    }

    fn lead_get(&self, id: u64, q: &Query) -> HttpResponse {
        let with = LeadWith::of(q);
        hal_or_no_content(self.acc.leads.get(&id).map(|l| self.lead_json(l, &with)))
    }

    fn lead_matches(&self, l: &Lead, needle: &str) -> bool {
        fields::matches(&l.name, &l.custom_fields_values, needle)
            || l.id.to_string() == needle
            || l.tags
                .iter()
                .any(|t| t.name.to_lowercase().contains(needle))
            || l.contact_ids
                .iter()
                .filter_map(|c| self.acc.contacts.get(c))
                .any(|c| fields::matches(&c.name, &c.custom_fields_values, needle))
    }

    fn leads_list(&self, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let ids = q.ids("filter[id]");
        let pipelines = q.ids("filter[pipeline_id]");
        let statuses = q.statuses();
        let names = q.list("filter[name]");
        let needle = q.search();
        let cf_filters: Vec<(u64, Vec<String>)> = {
            let mut m: std::collections::BTreeMap<u64, Vec<String>> =
                std::collections::BTreeMap::new();
            for (k, v) in &q.pairs {
                if let Some(rest) = k.strip_prefix("filter[custom_fields_values][")
                    && let Some((id, _)) = rest.split_once(']')
                    && let Ok(id) = id.parse::<u64>()
                {
                    m.entry(id).or_default().push(v.clone());
                }
            }
            m.into_iter().collect()
        };
        let with = LeadWith::of(q);
        let mut leads: Vec<&Lead> = self
            .acc
            .leads
            .values()
            .filter(|l| ids.is_empty() || ids.contains(&l.id))
            .filter(|l| pipelines.is_empty() || pipelines.contains(&l.pipeline_id))
            .filter(|l| {
                statuses.is_empty()
                    || statuses.iter().any(|(p, s)| {
                        p.is_none_or(|p| p == l.pipeline_id) && s.is_none_or(|s| s == l.status_id)
                    })
            })
            .filter(|l| names.is_empty() || names.contains(&l.name))
            .filter(|l| needle.as_deref().is_none_or(|n| self.lead_matches(l, n)))
            .filter(|l| {
                cf_filters.iter().all(|(fid, wanted)| {
                    l.custom_fields_values.iter().any(|f| {
                        f.field_id == *fid && f.values.iter().any(|v| wanted.contains(&v.as_text()))
                    })
                })
            })
            .collect();
        let (key, desc) = ["id", "created_at", "updated_at"]
            .iter()
            .find_map(|k| {
                q.get(&format!("order[{k}]"))
                    .map(|d| (*k, d.eq_ignore_ascii_case("desc")))
            })
            .unwrap_or(("id", false));
        leads.sort_by_key(|l| match key {
            "created_at" => (l.created_at, l.id),
            "updated_at" => (l.updated_at, l.id),
            _ => (0, l.id),
        });
        if desc {
            leads.reverse();
        }
        let all: Vec<Value> = leads.iter().map(|l| self.lead_json(l, &with)).collect();
        page_of(&self.url("leads"), "leads", all, page, limit)
    }

    /// Resolves the pipeline and status a lead is created in or moved to.
    fn resolve_stage(
        &self,
        pipeline_id: Option<u64>,
        status_id: Option<u64>,
        current_pipeline: Option<u64>,
        unsorted: bool,
        errs: &mut Vec<FieldError>,
    ) -> Option<(u64, u64)> {
        let pipeline = match pipeline_id {
            Some(p) => match self.acc.pipelines.get(&p) {
                Some(p) => p,
                None => {
                    errs.push(FieldError::not_supported("pipeline_id"));
                    return None;
                }
            },
            None => {
                let pid = match status_id {
                    Some(s) if s == WON || s == LOST => {
                        current_pipeline.or_else(|| self.acc.main_pipeline().map(|p| p.id))
                    }
                    Some(s) => match current_pipeline.filter(|cp| {
                        self.acc
                            .pipelines
                            .get(cp)
                            .is_some_and(|p| p.status(s).is_some())
                    }) {
                        Some(cp) => Some(cp),
                        None => self.acc.pipeline_of_status(s),
                    },
                    None => current_pipeline.or_else(|| self.acc.main_pipeline().map(|p| p.id)),
                };
                match pid.and_then(|p| self.acc.pipelines.get(&p)) {
                    Some(p) => p,
                    None => {
                        errs.push(FieldError::not_supported("status_id"));
                        return None;
                    }
                }
            }
        };
        if unsorted {
            if !pipeline.is_unsorted_on {
                errs.push(FieldError::new(
                    "NotSupportedChoice",
                    "pipeline_id",
                    format!("Incoming leads are turned off in pipeline {}.", pipeline.id),
                ));
                return None;
            }
            return pipeline
                .statuses
                .iter()
                .find(|s| s.type_ == 1)
                .map(|s| (pipeline.id, s.id));
        }
        match status_id {
            Some(s) => match pipeline.status(s) {
                Some(st) if st.type_ == 1 => {
                    errs.push(FieldError::not_supported("status_id"));
                    None
                }
                Some(_) => Some((pipeline.id, s)),
                None => {
                    errs.push(FieldError::not_supported("status_id"));
                    None
                }
            },
            None => {
                let mut stages: Vec<&Status> =
                    pipeline.statuses.iter().filter(|s| s.type_ == 0).collect();
                stages.sort_by_key(|s| (s.sort, s.id));
                stages.first().map(|s| (pipeline.id, s.id))
            }
        }
    }

    /// The item's `responsible_user_id` when given and assignable; an unknown, deleted or inactive user
    /// (or a wrong type) is recorded in `errs`.
    fn responsible_in(
        &self,
        o: &Map<String, Value>,
        prefix: &str,
        errs: &mut Vec<FieldError>,
    ) -> Option<u64> {
        let r = opt_int(o, "responsible_user_id", prefix, errs)?;
        let problem = match u64::try_from(r) {
            Ok(id) => match self.acc.user_problem(id) {
                None => return Some(id),
                Some(detail) => detail,
            },
            Err(_) => format!("User {r} not found in the account."),
        };
        errs.push(FieldError::new(
            "NotSupportedChoice",
            join(prefix, "responsible_user_id"),
            problem,
        ));
        None
    }

    fn party_in(
        &self,
        v: &Value,
        prefix: &str,
        company: bool,
        errs: &mut Vec<FieldError>,
    ) -> Option<PartyIn> {
        let Some(o) = v.as_object() else {
            errs.push(FieldError::invalid_type(prefix, "object"));
            return None;
        };
        let mut p = PartyIn::default();
        if let Some(idv) = o.get("id").filter(|v| !v.is_null()) {
            let exists = as_id(idv).filter(|id| {
                if company {
                    self.acc.companies.contains_key(id)
                } else {
                    self.acc.contacts.contains_key(id)
                }
            });
            match exists {
                Some(id) => p.existing = Some(id),
                None => errs.push(FieldError::new(
                    "NotSupportedChoice",
                    join(prefix, "id"),
                    format!(
                        "{} {idv} not found.",
                        if company { "Company" } else { "Contact" }
                    ),
                )),
            }
            return Some(p);
        }
        p.name = opt_str(o, "name", prefix, errs);
        if !company {
            p.first_name = opt_str(o, "first_name", prefix, errs).unwrap_or_default();
            p.last_name = opt_str(o, "last_name", prefix, errs).unwrap_or_default();
        }
        p.responsible = self.responsible_in(o, prefix, errs);
        p.fields =
            fields::parse_values(&self.acc.contact_fields, o, prefix, errs).unwrap_or_default();
        Some(p)
    }

    fn lead_in(&self, item: &Value, index: usize, mode: Mode) -> Result<LeadIn, ItemErrors> {
        let mut errs = Vec::new();
        let mut li = LeadIn {
            request_id: index.to_string(),
            ..LeadIn::default()
        };
        let o = object_of(item, index)?;
        if let Some(r) = opt_str(o, "request_id", "", &mut errs) {
            li.request_id = r;
            li.request_id_given = true;
        }
        if mode == Mode::Patch {
            match o.get("id").and_then(as_id) {
                Some(id) if self.acc.leads.contains_key(&id) => li.id = Some(id),
                Some(_) => errs.push(FieldError::not_found("id", "Entity not found.")),
                None => errs.push(FieldError::invalid_type("id", "int")),
            }
        }
        li.name = opt_str(o, "name", "", &mut errs);
        li.price = opt_int(o, "price", "", &mut errs);
        if li.price.is_some_and(|p| p < 0) {
            errs.push(FieldError::new(
                "InvalidValue",
                "price",
                "This value should be greater than or equal to 0.",
            ));
        }
        let pipeline_id = opt_int(o, "pipeline_id", "", &mut errs);
        let status_id = opt_int(o, "status_id", "", &mut errs);
        li.pipeline_id = pipeline_id.and_then(|p| u64::try_from(p).ok());
        li.status_id = status_id.and_then(|s| u64::try_from(s).ok());
        li.responsible = self.responsible_in(o, "", &mut errs);
        if let Some(c) = opt_int(o, "created_by", "", &mut errs) {
            li.created_by = u64::try_from(c).ok();
        }
        li.created_at = opt_int(o, "created_at", "", &mut errs);
        let _ = opt_int(o, "updated_at", "", &mut errs);
        li.closed_at = opt_int(o, "closed_at", "", &mut errs);
        let _ = opt_int(o, "updated_by", "", &mut errs);
        let _ = opt_int(o, "loss_reason_id", "", &mut errs);
        li.fields = fields::parse_values(&self.acc.lead_fields, o, "", &mut errs);
        match o.get("_embedded") {
            None | Some(Value::Null) => {}
            Some(Value::Object(e)) => {
                match e.get("tags") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(tags)) => {
                        let mut names = Vec::new();
                        for (j, t) in tags.iter().enumerate() {
                            let by_name = t.get("name").and_then(Value::as_str).map(str::to_owned);
                            let by_id = t.get("id").and_then(as_id).and_then(|id| {
                                self.acc
                                    .tags
                                    .iter()
                                    .find(|(_, v)| **v == id)
                                    .map(|(k, _)| k.clone())
                            });
                            match by_name.or(by_id) {
                                Some(n) => names.push(n),
                                None => errs
                                    .push(FieldError::not_supported(format!("_embedded.tags.{j}"))),
                            }
                        }
                        li.tags = Some(names);
                    }
                    Some(_) => errs.push(FieldError::invalid_type("_embedded.tags", "array")),
                }
                for (key, company) in [("contacts", false), ("companies", true)] {
                    let path = format!("_embedded.{key}");
                    match e.get(key) {
                        None | Some(Value::Null) => {}
                        Some(Value::Array(list)) if mode == Mode::Patch => {
                            if !list.is_empty() && self.rules.refuse_lead_patch_links {
                                errs.push(FieldError::new(
                                    "NotSupported",
                                    path,
                                    "Links cannot be changed here.",
                                ));
                            }
                        }
                        Some(Value::Array(list)) => {
                            if list.len() > 1 {
                                errs.push(FieldError::new(
                                    "TooManyItems",
                                    path.clone(),
                                    "This collection should contain 1 element or less.",
                                ));
                            } else if let Some(first) = list.first() {
                                let party =
                                    self.party_in(first, &format!("{path}.0"), company, &mut errs);
                                if mode == Mode::Add
                                    && party.as_ref().is_some_and(|p| p.existing.is_none())
                                {
                                    errs.push(FieldError::not_supported(format!("{path}.0.id")));
                                }
                                if company {
                                    li.company = party
                                } else {
                                    li.contact = party
                                }
                            }
                        }
                        Some(_) => errs.push(FieldError::invalid_type(path, "array")),
                    }
                }
                if let Some(m) = e.get("metadata").filter(|m| !m.is_null()) {
                    li.unsorted = true;
                    if mode == Mode::Patch {
                        errs.push(FieldError::new(
                            "NotSupported",
                            "_embedded.metadata",
                            "A lead cannot be filed as unsorted by a patch.",
                        ));
                    } else if let Some(m) = unsorted::complex_metadata(m, &mut errs) {
                        li.metadata = Some(m);
                    }
                    li.source_uid =
                        e.get("source")
                            .and_then(|s| s.get("external_id"))
                            .and_then(|x| match x {
                                Value::String(s) => Some(s.clone()),
                                Value::Number(n) => Some(n.to_string()),
                                _ => None,
                            });
                }
            }
            Some(_) => errs.push(FieldError::invalid_type("_embedded", "object")),
        }
        ItemErrors::check(li.request_id.clone(), errs, li)
    }

    /// Creates the contact or company (or returns the existing one). A `hidden` contact belongs to a
    /// pending unsorted request: no search finds it and `add_contact` waits for the acceptance.
    fn create_party(&mut self, p: PartyIn, company: bool, hidden: bool) -> u64 {
        if let Some(id) = p.existing {
            return id;
        }
        let responsible = p.responsible.unwrap_or(self.acc.user_id);
        if company {
            let id = next(&mut self.ids.company);
            self.acc.companies.insert(
                id,
                Company {
                    id,
                    name: p.name.unwrap_or_else(|| format!("Компания #{id}")),
                    responsible_user_id: responsible,
                    created_at: self.now,
                    updated_at: self.now,
                    custom_fields_values: p.fields,
                    contact_ids: Vec::new(),
                    lead_ids: Vec::new(),
                },
            );
            self.events.push(Event::CompanyAdded(id));
            id
        } else {
            let id = next(&mut self.ids.contact);
            let joined = format!("{} {}", p.first_name, p.last_name)
                .trim()
                .to_owned();
            let name = p
                .name
                .filter(|n| !n.is_empty())
                .unwrap_or(if joined.is_empty() {
                    format!("Контакт #{id}")
                } else {
                    joined
                });
            self.acc.contacts.insert(
                id,
                Contact {
                    id,
                    name,
                    first_name: p.first_name,
                    last_name: p.last_name,
                    responsible_user_id: responsible,
                    created_at: self.now,
                    updated_at: self.now,
                    custom_fields_values: p.fields,
                    company_id: None,
                    lead_ids: Vec::new(),
                },
            );
            if hidden {
                self.acc.hidden_contacts.insert(id);
            } else {
                self.events.push(Event::ContactAdded(id));
            }
            id
        }
    }

    /// Validates every item first; nothing is created when any item is invalid.
    fn validate_create(
        &self,
        list: &[Value],
        mode: Mode,
    ) -> Result<Vec<(LeadIn, u64, u64)>, HttpResponse> {
        let mut all_errs = Vec::new();
        let mut ok = Vec::new();
        for (i, item) in list.iter().enumerate() {
            match self.lead_in(item, i, mode) {
                Ok(li) => {
                    let mut errs = Vec::new();
                    match self.resolve_stage(
                        li.pipeline_id,
                        li.status_id,
                        None,
                        li.unsorted,
                        &mut errs,
                    ) {
                        Some((p, s)) if errs.is_empty() => ok.push((li, p, s)),
                        _ => all_errs.push(ItemErrors {
                            request_id: li.request_id,
                            errors: errs,
                        }),
                    }
                }
                Err(e) => all_errs.push(e),
            }
        }
        if all_errs.is_empty() {
            Ok(ok)
        } else {
            Err(problem::validation(&all_errs))
        }
    }

    fn create_lead(
        &mut self,
        li: LeadIn,
        pipeline_id: u64,
        status_id: u64,
    ) -> (u64, Option<u64>, Option<u64>) {
        let id = next(&mut self.ids.lead);
        let hidden = li.unsorted;
        let contact_id = li.contact.map(|c| self.create_party(c, false, hidden));
        let company_id = li.company.map(|c| self.create_party(c, true, hidden));
        if let (Some(c), Some(co)) = (contact_id, company_id) {
            if let Some(contact) = self.acc.contacts.get_mut(&c) {
                contact.company_id.get_or_insert(co);
            }
            if let Some(company) = self.acc.companies.get_mut(&co)
                && !company.contact_ids.contains(&c)
            {
                company.contact_ids.push(c);
            }
        }
        if let Some(c) = contact_id.and_then(|c| self.acc.contacts.get_mut(&c)) {
            c.lead_ids.push(id);
        }
        if let Some(c) = company_id.and_then(|c| self.acc.companies.get_mut(&c)) {
            c.lead_ids.push(id);
        }
        let tags = li
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|name| Tag {
                id: self.acc.tag_id(self.ids, &name),
                name,
            })
            .collect();
        let user = self.acc.user_id;
        let closed = status_id == WON || status_id == LOST;
        let lead = Lead {
            id,
            name: li
                .name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| format!("Сделка #{id}")),
            price: li.price.unwrap_or(0),
            pipeline_id,
            status_id,
            responsible_user_id: li.responsible.unwrap_or(user),
            created_by: li.created_by.unwrap_or(user),
            updated_by: user,
            created_at: li.created_at.unwrap_or(self.now),
            updated_at: self.now,
            closed_at: li.closed_at.or(closed.then_some(self.now)),
            custom_fields_values: li.fields.unwrap_or_default(),
            tags,
            contact_ids: contact_id.into_iter().collect(),
            company_id,
            request_id: li.request_id_given.then_some(li.request_id.clone()),
        };
        self.acc.leads.insert(id, lead);
        self.acc.counters.leads_created += 1;
        self.events.push(Event::LeadAdded(id));
        if li.unsorted {
            let source_name = li.source_name.clone().unwrap_or_else(|| {
                li.metadata
                    .as_ref()
                    .and_then(|m| m.get("form_name"))
                    .and_then(Value::as_str)
                    .unwrap_or("API")
                    .to_owned()
            });
            self.file_unsorted(UnsortedEntry {
                uid: String::new(),
                source_uid: li.source_uid.unwrap_or_else(|| li.request_id.clone()),
                source_name,
                category: "forms".to_owned(),
                pipeline_id,
                created_at: li.created_at.unwrap_or(self.now),
                metadata: li.metadata.unwrap_or(Value::Null),
                lead_id: id,
                contact_ids: contact_id.into_iter().collect(),
                company_id,
                request_id: li.request_id_given.then_some(li.request_id),
                state: UnsortedState::Pending,
            });
        }
        (id, contact_id, company_id)
    }

    fn leads_complex(&mut self, v: Value) -> HttpResponse {
        let Some(list) = items(&v) else {
            return problem::body_validation(vec![FieldError::invalid_type("", "array")]);
        };
        if list.is_empty() {
            return empty_body();
        }
        if list.len() > MAX_COMPLEX {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "Limit 50 per request");
        }
        let valid = ok_or_return!(self.validate_create(list, Mode::Complex));
        let mut out = Vec::new();
        let mut arrived = Vec::with_capacity(valid.len());
        for (li, p, s) in valid {
            let rid = li.request_id.clone();
            arrived.push(rid.clone());
            let (id, contact_id, company_id) = self.create_lead(li, p, s);
            out.push(json!({
                "id": id,
                "contact_id": contact_id,
                "company_id": company_id,
                "request_id": [rid],
                "merged": false,
            }));
        }
        self.acc.counters.complex_calls += 1;
        let arrivals = &mut self.acc.complex_arrivals;
        if arrivals.len() >= crate::state::ARRIVALS_CAP {
            // Nobody is taking them (a test, the standalone sandbox): keep the newest half.
            arrivals.drain(..crate::state::ARRIVALS_CAP / 2);
        }
        arrivals.push((std::time::Instant::now(), arrived));
        hal(Value::Array(out))
    }

    fn leads_add(&mut self, v: Value) -> HttpResponse {
        let list = ok_or_return!(batch(&v));
        let valid = ok_or_return!(self.validate_create(list, Mode::Add));
        let mut out = Vec::new();
        for (li, p, s) in valid {
            let rid = li.request_id.clone();
            let (id, _, _) = self.create_lead(li, p, s);
            out.push(json!({"id": id, "request_id": rid, "_links": link(self.url(&format!("leads/{id}")))}));
        }
        hal(json!({"_links": link(self.url("leads")), "_embedded": {"leads": out}}))
    }

    fn leads_patch(&mut self, v: Value, single: bool) -> HttpResponse {
        let list = ok_or_return!(batch(&v));
        let mut all_errs = Vec::new();
        let mut valid = Vec::new();
        for (i, item) in list.iter().enumerate() {
            match self.lead_in(item, i, Mode::Patch) {
                Ok(li) => {
                    let Some(current) = li.id.and_then(|id| self.acc.leads.get(&id)) else {
                        continue;
                    };
                    let mut errs = Vec::new();
                    let target = if li.pipeline_id.is_some() || li.status_id.is_some() {
                        self.resolve_stage(
                            li.pipeline_id,
                            li.status_id,
                            Some(current.pipeline_id),
                            false,
                            &mut errs,
                        )
                    } else {
                        Some((current.pipeline_id, current.status_id))
                    };
                    let here = (current.pipeline_id, current.status_id);
                    if target.is_some_and(|t| t != here)
                        && let Some(u) = self.acc.pending_unsorted_of(current.id)
                    {
                        errs.push(FieldError::new(
                            "NotSupportedChoice",
                            "status_id",
                            format!(
                                "Lead {} waits in incoming leads ({}): accept or decline it first.",
                                current.id, u.uid
                            ),
                        ));
                    }
                    match target {
                        Some(t) if errs.is_empty() => valid.push((li, t)),
                        _ => all_errs.push(ItemErrors {
                            request_id: li.request_id,
                            errors: errs,
                        }),
                    }
                }
                Err(e) => all_errs.push(e),
            }
        }
        if !all_errs.is_empty() {
            return problem::validation(&all_errs);
        }
        let mut out = Vec::new();
        for (li, (pid, sid)) in valid {
            let Some(id) = li.id else { continue };
            let tags = li.tags.map(|names| {
                names
                    .into_iter()
                    .map(|name| Tag {
                        id: self.acc.tag_id(self.ids, &name),
                        name,
                    })
                    .collect::<Vec<_>>()
            });
            let changed = apply_patch(
                self.acc,
                id,
                Patch {
                    name: li.name,
                    price: li.price,
                    pipeline_id: pid,
                    status_id: sid,
                    responsible: li.responsible,
                    fields: li.fields,
                    tags,
                    closed_at: li.closed_at,
                },
                self.now,
            );
            if !changed.is_empty()
                && let Some(u) = self.acc.pending_unsorted_of(id)
            {
                self.events.push(Event::UnsortedUpdated(u.uid.clone()));
            }
            self.events.extend(changed);
            let updated_at = self
                .acc
                .leads
                .get(&id)
                .map(|l| l.updated_at)
                .unwrap_or(self.now);
            let j = json!({"id": id, "updated_at": updated_at, "_links": link(self.url(&format!("leads/{id}")))});
            out.push(with_request_id(
                j,
                li.request_id_given.then_some(li.request_id),
            ));
        }
        self.patched("leads", out, single)
    }

    /// The answer to a PATCH of `entity`: the one entity for `PATCH /{entity}/{id}` (`single`), else the
    /// batch under `_embedded`.
    fn patched(&self, entity: &str, mut out: Vec<Value>, single: bool) -> HttpResponse {
        if single && let Some(first) = out.pop() {
            return hal(first);
        }
        hal(json!({"_links": link(self.url(entity)), "_embedded": {entity: out}}))
    }

    // ---- webhooks ------------------------------------------------------------------------------

    fn webhook_json(&self, w: &Webhook) -> Value {
        json!({
            "id": w.id,
            "destination": w.destination,
            "created_at": w.created_at,
            "updated_at": w.updated_at,
            "account_id": self.acc.id,
            "created_by": self.acc.user_id,
            "sort": w.sort,
            "disabled": w.disabled,
            "settings": w.settings,
        })
    }

    fn webhooks_list(&self, q: &Query) -> HttpResponse {
        let dest = q.get("filter[destination]");
        let list: Vec<Value> = self
            .acc
            .webhooks
            .iter()
            .filter(|w| dest.is_none_or(|d| d == w.hook.destination))
            .map(|w| self.webhook_json(&w.hook))
            .collect();
        if list.is_empty() {
            return no_content();
        }
        hal(json!({
            "_total_items": list.len(),
            "_links": link(self.url("webhooks")),
            "_embedded": {"webhooks": list},
        }))
    }

    fn webhook_subscribe(&mut self, v: Value) -> HttpResponse {
        let Some(o) = v.as_object() else {
            return bad_request("Request validation failed");
        };
        let mut errs = Vec::new();
        let dest = opt_str(o, "destination", "", &mut errs);
        if !dest.as_deref().is_some_and(fields::is_web_url) {
            errs.push(FieldError::invalid_url("destination"));
        }
        let mut settings = Vec::new();
        match o.get("settings") {
            Some(Value::Array(list)) if !list.is_empty() => {
                for (i, s) in list.iter().enumerate() {
                    match s.as_str().filter(|s| WEBHOOK_SETTINGS.contains(s)) {
                        Some(s) => {
                            if !settings.iter().any(|x: &String| x == s) {
                                settings.push(s.to_owned());
                            }
                        }
                        None => errs.push(FieldError::not_supported(format!("settings.{i}"))),
                    }
                }
            }
            Some(Value::Array(_)) | None | Some(Value::Null) => {
                errs.push(FieldError::required("settings"))
            }
            Some(_) => errs.push(FieldError::invalid_type("settings", "array")),
        }
        let sort = opt_int(o, "sort", "", &mut errs).unwrap_or(1);
        let dest = dest.unwrap_or_default();
        let exists = self.acc.webhooks.iter().any(|w| w.hook.destination == dest);
        if !exists && self.acc.webhooks.len() >= MAX_WEBHOOKS {
            errs.push(FieldError::new(
                "TooManyWebhooks",
                "destination",
                format!("An account can have at most {MAX_WEBHOOKS} webhooks."),
            ));
        }
        if !errs.is_empty() {
            return problem::body_validation(errs);
        }
        let now = self.now;
        let hook = match self
            .acc
            .webhooks
            .iter_mut()
            .find(|w| w.hook.destination == dest)
        {
            Some(w) => {
                // Saving a webhook again re-enables it, as in amoCRM's settings page.
                w.hook.settings = settings;
                w.hook.sort = sort;
                w.hook.disabled = false;
                w.hook.updated_at = now;
                w.hook.recent_failures = 0;
                w.failures.clear();
                w.hook.clone()
            }
            None => {
                let hook = Webhook {
                    id: next(&mut self.ids.webhook),
                    destination: dest,
                    settings,
                    sort,
                    disabled: false,
                    created_at: now,
                    updated_at: now,
                    recent_failures: 0,
                };
                self.acc.webhooks.push(WebhookState {
                    hook: hook.clone(),
                    failures: Default::default(),
                });
                hook
            }
        };
        hal(self.webhook_json(&hook))
    }

    fn webhook_unsubscribe(&mut self, v: Value) -> HttpResponse {
        let Some(dest) = v.get("destination").and_then(Value::as_str) else {
            return problem::body_validation(vec![FieldError::required("destination")]);
        };
        let before = self.acc.webhooks.len();
        self.acc.webhooks.retain(|w| w.hook.destination != dest);
        if self.acc.webhooks.len() == before {
            return problem(StatusCode::NOT_FOUND, "Webhook not found");
        }
        no_content()
    }
}

/// A change to one lead.
pub struct Patch {
    /// Name as amoCRM shows it.
    pub name: Option<String>,
    /// Sale value in whole currency units.
    pub price: Option<i64>,
    /// The pipeline it belongs to.
    pub pipeline_id: u64,
    /// The pipeline stage.
    pub status_id: u64,
    /// The new responsible user.
    pub responsible: Option<u64>,
    /// Custom field values to set.
    pub fields: Option<Vec<FieldValues>>,
    /// Tags shown on the lead.
    pub tags: Option<Vec<Tag>>,
    /// When the lead was won or lost (Unix seconds).
    pub closed_at: Option<i64>,
}

impl Patch {
    /// A move to `status_id` of `pipeline_id`, with a new responsible user when given; nothing else changes.
    pub fn move_to(pipeline_id: u64, status_id: u64, responsible: Option<u64>) -> Self {
        Self {
            name: None,
            price: None,
            pipeline_id,
            status_id,
            responsible,
            fields: None,
            tags: None,
            closed_at: None,
        }
    }
}

/// Applies a change to a lead and returns the events it causes (`update_lead` for any change,
/// `status_lead` for a stage move, `responsible_lead` for a new responsible user).
pub fn apply_patch(acc: &mut Account, id: u64, p: Patch, now: i64) -> Vec<Event> {
    let user = acc.user_id;
    let Some(l) = acc.leads.get_mut(&id) else {
        return Vec::new();
    };
    let before = l.clone();
    if let Some(n) = p.name {
        l.name = n;
    }
    if let Some(pr) = p.price {
        l.price = pr;
    }
    l.pipeline_id = p.pipeline_id;
    l.status_id = p.status_id;
    if let Some(r) = p.responsible {
        l.responsible_user_id = r;
    }
    if let Some(f) = p.fields {
        fields::merge(&mut l.custom_fields_values, f);
    }
    if let Some(t) = p.tags {
        l.tags = t;
    }
    let moved = before.status_id != l.status_id || before.pipeline_id != l.pipeline_id;
    if moved {
        let closed = l.status_id == WON || l.status_id == LOST;
        l.closed_at = if closed {
            Some(p.closed_at.unwrap_or(now))
        } else {
            None
        };
    } else if let Some(c) = p.closed_at {
        l.closed_at = Some(c);
    }
    if *l == before {
        return Vec::new();
    }
    l.updated_at = now.max(before.updated_at);
    l.updated_by = user;
    let mut events = Vec::new();
    if moved {
        events.push(Event::LeadStatus {
            id,
            old_status_id: before.status_id,
            old_pipeline_id: before.pipeline_id,
        });
    }
    events.push(Event::LeadUpdated(id));
    if before.responsible_user_id != l.responsible_user_id {
        events.push(Event::LeadResponsible {
            id,
            old_responsible_user_id: before.responsible_user_id,
        });
    }
    events
}
