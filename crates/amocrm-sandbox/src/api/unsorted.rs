//! Unsorted ("incoming") requests: web-form requests (`leads/unsorted/forms`, or `leads/complex` with
//! `_embedded.metadata`) wait in their pipeline's incoming stage until accepted (moved to a stage) or
//! declined (closed as lost). Their new contacts stay hidden until the acceptance.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Map, Value, json};

use super::{
    Cx, LeadIn, Mode, Patch, Query, all_valid, apply_patch, batch, link, object_of, page_of,
};
use crate::fields::{as_int, opt_int, opt_str};
use crate::model::{UnsortedEntry, UnsortedState};
use crate::outbound::Event;
use crate::problem::{
    self, FieldError, ItemErrors, bad_request, hal, hal_or_no_content, no_content, problem,
};
use crate::state::{Account, LOST, WON};

/// Validates a web form's `metadata` (`form_id`, `form_name`, `form_page`, `form_sent_at` required;
/// `referer`, `ip` optional). With `category`, it must be `forms` (the only category modelled).
fn form_metadata(
    m: Option<&Value>,
    prefix: &str,
    with_category: bool,
    errs: &mut Vec<FieldError>,
) -> Option<Value> {
    let Some(m) = m.filter(|m| !m.is_null()) else {
        errs.push(FieldError::required(prefix));
        return None;
    };
    let Some(o) = m.as_object() else {
        errs.push(FieldError::invalid_type(prefix, "object"));
        return None;
    };
    let before = errs.len();
    let path = |k: &str| format!("{prefix}.{k}");
    if with_category {
        match o.get("category") {
            Some(Value::String(c)) if c == "forms" => {}
            None | Some(Value::Null) => errs.push(FieldError::required(path("category"))),
            Some(_) => errs.push(FieldError::not_supported(path("category"))),
        }
    }
    match o.get("form_id") {
        Some(Value::String(s)) if !s.trim().is_empty() => {}
        Some(Value::Number(_)) => {}
        None | Some(Value::Null) | Some(Value::String(_)) => {
            errs.push(FieldError::required(path("form_id")))
        }
        Some(_) => errs.push(FieldError::invalid_type(path("form_id"), "string")),
    }
    for key in ["form_name", "form_page"] {
        match o.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            None | Some(Value::Null) | Some(Value::String(_)) => {
                errs.push(FieldError::required(path(key)))
            }
            Some(_) => errs.push(FieldError::invalid_type(path(key), "string")),
        }
    }
    match o.get("form_sent_at") {
        Some(v) if as_int(v).is_some() => {}
        None | Some(Value::Null) => errs.push(FieldError::required(path("form_sent_at"))),
        Some(_) => errs.push(FieldError::invalid_type(path("form_sent_at"), "int")),
    }
    for key in ["referer", "ip"] {
        if let Some(v) = o.get(key)
            && !v.is_null()
            && !v.is_string()
        {
            errs.push(FieldError::invalid_type(path(key), "string"));
        }
    }
    (errs.len() == before).then(|| m.clone())
}

/// `leads/complex` `_embedded.metadata` (`category: "forms"` plus the form fields).
pub(super) fn complex_metadata(m: &Value, errs: &mut Vec<FieldError>) -> Option<Value> {
    form_metadata(Some(m), "_embedded.metadata", true, errs)
}

/// Why an accept or decline cannot be done.
#[derive(Debug)]
pub(crate) enum UnsortedError {
    NotFound(String),
    Done(String, UnsortedState),
    Invalid(Vec<FieldError>),
}

impl std::fmt::Display for UnsortedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(uid) => write!(f, "no unsorted request {uid}"),
            Self::Done(uid, state) => write!(f, "unsorted request {uid} is already {state:?}"),
            Self::Invalid(errs) => {
                let list: Vec<String> = errs
                    .iter()
                    .map(|e| format!("{}: {}", e.path, e.detail))
                    .collect();
                write!(f, "{}", list.join("; "))
            }
        }
    }
}

impl UnsortedError {
    fn response(&self) -> HttpResponse {
        match self {
            Self::NotFound(_) => problem(StatusCode::NOT_FOUND, "Unsorted not found"),
            Self::Done(uid, state) => bad_request(&format!(
                "Unsorted {uid} is already {}",
                match state {
                    UnsortedState::Accepted => "accepted",
                    UnsortedState::Declined => "declined",
                    UnsortedState::Pending => "pending",
                }
            )),
            Self::Invalid(errs) => problem::body_validation(errs.clone()),
        }
    }
}

fn pending(acc: &Account, uid: &str) -> Result<UnsortedEntry, UnsortedError> {
    let u = acc
        .unsorted
        .get(uid)
        .ok_or_else(|| UnsortedError::NotFound(uid.to_owned()))?;
    if u.state != UnsortedState::Pending {
        return Err(UnsortedError::Done(uid.to_owned(), u.state));
    }
    Ok(u.clone())
}

/// The error of a `user_id` who cannot take the request (none when absent or fine): the first of the
/// request's validation errors.
fn user_errors(acc: &Account, user_id: Option<u64>) -> Vec<FieldError> {
    user_id
        .and_then(|u| acc.user_problem(u))
        .map(|why| FieldError::new("NotSupportedChoice", "user_id", why))
        .into_iter()
        .collect()
}

/// Accepts a pending request: its lead moves to `status_id` (a stage of its pipeline other than 142/143)
/// or to the pipeline's first stage, `user_id` becomes responsible, hidden contacts appear. Events:
/// `delete_unsorted` (with `accept_result`), `add_contact` for the contacts, the lead's `status_lead`.
pub(crate) fn accept_unsorted(
    acc: &mut Account,
    uid: &str,
    user_id: Option<u64>,
    status_id: Option<u64>,
    now: i64,
) -> Result<Vec<Event>, UnsortedError> {
    let u = pending(acc, uid)?;
    let mut errs = user_errors(acc, user_id);
    let stages: Vec<u64> = match acc.pipelines.get(&u.pipeline_id) {
        Some(p) => {
            let mut s: Vec<_> = p
                .statuses
                .iter()
                .filter(|s| s.type_ == 0 && s.id != WON && s.id != LOST)
                .collect();
            s.sort_by_key(|s| (s.sort, s.id));
            s.iter().map(|s| s.id).collect()
        }
        None => Vec::new(),
    };
    let target = match status_id {
        Some(s) if stages.contains(&s) => Some(s),
        Some(s) => {
            errs.push(FieldError::new(
                "NotSupportedChoice",
                "status_id",
                format!(
                    "Status {s} is not a stage of pipeline {} (won and lost are not allowed here).",
                    u.pipeline_id
                ),
            ));
            None
        }
        None => stages.first().copied(),
    };
    let Some(target) = target.filter(|_| errs.is_empty()) else {
        if errs.is_empty() {
            errs.push(FieldError::new(
                "NotSupportedChoice",
                "status_id",
                "The pipeline has no stage to accept into.",
            ));
        }
        return Err(UnsortedError::Invalid(errs));
    };
    let mut events = vec![Event::UnsortedDeleted(uid.to_owned())];
    if let Some(e) = acc.unsorted.get_mut(uid) {
        e.state = UnsortedState::Accepted;
    }
    for c in &u.contact_ids {
        if acc.hidden_contacts.remove(c) {
            events.push(Event::ContactAdded(*c));
        }
    }
    events.extend(apply_patch(
        acc,
        u.lead_id,
        Patch::move_to(u.pipeline_id, target, user_id),
        now,
    ));
    Ok(events)
}

/// Declines a pending request: its lead is closed as lost (143). Events: `delete_unsorted` (with
/// `decline_result`) and the lead's `status_lead`.
pub(crate) fn decline_unsorted(
    acc: &mut Account,
    uid: &str,
    user_id: Option<u64>,
    now: i64,
) -> Result<Vec<Event>, UnsortedError> {
    let u = pending(acc, uid)?;
    let errs = user_errors(acc, user_id);
    if !errs.is_empty() {
        return Err(UnsortedError::Invalid(errs));
    }
    if let Some(e) = acc.unsorted.get_mut(uid) {
        e.state = UnsortedState::Declined;
    }
    let mut events = vec![Event::UnsortedDeleted(uid.to_owned())];
    events.extend(apply_patch(
        acc,
        u.lead_id,
        Patch::move_to(u.pipeline_id, LOST, None),
        now,
    ));
    Ok(events)
}

/// `{user_id?, status_id?}` of an accept/decline body (an empty body is fine).
fn accept_body(body: &[u8]) -> Result<(Option<u64>, Option<u64>), HttpResponse> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((None, None));
    }
    let v: Value =
        serde_json::from_slice(body).map_err(|_| bad_request("Request body is not valid JSON"))?;
    let Some(o) = v.as_object() else {
        return Ok((None, None));
    };
    let mut errs = Vec::new();
    let user = opt_int(o, "user_id", "", &mut errs).and_then(|u| u64::try_from(u).ok());
    let status = opt_int(o, "status_id", "", &mut errs).and_then(|s| u64::try_from(s).ok());
    if !errs.is_empty() {
        return Err(problem::body_validation(errs));
    }
    Ok((user, status))
}

/// Moves the lead-level errors of an unsorted item's lead under `_embedded.leads.0`.
fn lead_path(path: &str) -> String {
    let keep = ["_embedded.contacts", "_embedded.companies", "pipeline_id"];
    if keep.iter().any(|k| path.starts_with(k)) {
        path.to_owned()
    } else if path.is_empty() {
        "_embedded.leads.0".to_owned()
    } else {
        format!("_embedded.leads.0.{path}")
    }
}

impl Cx<'_> {
    /// Records a new pending request (`add_unsorted`) for a lead just created in the incoming stage,
    /// under a fresh uid (whatever `entry.uid` held).
    pub(super) fn file_unsorted(&mut self, mut entry: UnsortedEntry) {
        entry.uid = crate::tokens::random_hex(30);
        let uid = entry.uid.clone();
        self.acc.unsorted.insert(uid.clone(), entry);
        self.events.push(Event::UnsortedAdded(uid));
    }

    fn unsorted_json(&self, u: &UnsortedEntry) -> Value {
        json!({
            "uid": u.uid,
            "source_uid": u.source_uid,
            "source_name": u.source_name,
            "category": u.category,
            "pipeline_id": u.pipeline_id,
            "created_at": u.created_at,
            "metadata": u.metadata,
            "account_id": self.acc.id,
            "_links": link(self.url(&format!("leads/unsorted/{}", u.uid))),
            "_embedded": {
                "leads": self.refs("leads", [u.lead_id]),
                "contacts": self.refs("contacts", u.contact_ids.iter().copied()),
                "companies": self.refs("companies", u.company_id),
            },
        })
    }

    /// Validates one `leads/unsorted/forms` item into a lead to create in the incoming stage.
    fn unsorted_item(&self, item: &Value, i: usize) -> Result<(LeadIn, u64, u64), ItemErrors> {
        let o = object_of(item, i)?;
        let mut errs = Vec::new();
        let request_id = opt_str(o, "request_id", "", &mut errs);
        let rid = ItemErrors::key(request_id.as_deref(), i);
        let required_text = |key: &str, errs: &mut Vec<FieldError>| match o.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            None | Some(Value::Null) | Some(Value::String(_)) => {
                errs.push(FieldError::required(key));
                None
            }
            Some(_) => {
                errs.push(FieldError::invalid_type(key, "string"));
                None
            }
        };
        let source_name = required_text("source_name", &mut errs);
        let source_uid = required_text("source_uid", &mut errs);
        let pipeline_id = opt_int(o, "pipeline_id", "", &mut errs);
        let created_at = opt_int(o, "created_at", "", &mut errs);
        let metadata = form_metadata(o.get("metadata"), "metadata", false, &mut errs);
        let embedded = match o.get("_embedded") {
            Some(Value::Object(e)) => Some(e),
            None | Some(Value::Null) => {
                errs.push(FieldError::required("_embedded.leads"));
                None
            }
            Some(_) => {
                errs.push(FieldError::invalid_type("_embedded", "object"));
                None
            }
        };
        let mut lead = None;
        if let Some(e) = embedded {
            match e.get("leads") {
                Some(Value::Array(list)) if list.len() == 1 => lead = list.first(),
                Some(Value::Array(list)) if list.len() > 1 => errs.push(FieldError::new(
                    "TooManyItems",
                    "_embedded.leads",
                    "This collection should contain exactly 1 element.",
                )),
                Some(Value::Array(_)) | None | Some(Value::Null) => {
                    errs.push(FieldError::required("_embedded.leads"))
                }
                Some(_) => errs.push(FieldError::invalid_type("_embedded.leads", "array")),
            }
        }
        let mut li = None;
        if let (Some(e), Some(lead)) = (embedded, lead) {
            let mut synthetic = match lead {
                Value::Object(l) => l.clone(),
                _ => Map::new(),
            };
            if !lead.is_object() {
                errs.push(FieldError::invalid_type("_embedded.leads.0", "object"));
            }
            synthetic.remove("status_id");
            synthetic.remove("request_id");
            if let Some(p) = pipeline_id {
                synthetic.insert("pipeline_id".to_owned(), json!(p));
            }
            let mut lead_embedded = match synthetic.remove("_embedded") {
                Some(Value::Object(m)) => m,
                _ => Map::new(),
            };
            lead_embedded.remove("metadata");
            for key in ["contacts", "companies"] {
                if let Some(v) = e.get(key) {
                    lead_embedded.insert(key.to_owned(), v.clone());
                }
            }
            synthetic.insert("_embedded".to_owned(), Value::Object(lead_embedded));
            match self.lead_in(&Value::Object(synthetic), i, Mode::Complex) {
                Ok(l) => li = Some(l),
                Err(e) => errs.extend(e.errors.into_iter().map(|mut fe| {
                    fe.path = lead_path(&fe.path);
                    fe
                })),
            }
        }
        let stage = li.as_ref().and_then(|l: &LeadIn| {
            let mut stage_errs = Vec::new();
            let s = self.resolve_stage(l.pipeline_id, None, None, true, &mut stage_errs);
            errs.extend(stage_errs);
            s
        });
        match (li, stage) {
            (Some(mut li), Some((p, s))) if errs.is_empty() => {
                li.unsorted = true;
                li.metadata = metadata;
                li.source_uid = source_uid;
                li.source_name = source_name;
                li.created_at = created_at.or(li.created_at);
                li.request_id = rid;
                li.request_id_given = request_id.is_some();
                Ok((li, p, s))
            }
            _ => Err(ItemErrors {
                request_id: rid,
                errors: errs,
            }),
        }
    }

    /// `POST leads/unsorted/forms`: at most 250 requests; `source_name`, `source_uid`, `metadata` and one
    /// lead required. The whole batch is refused when one item is invalid.
    pub(super) fn unsorted_forms_create(&mut self, v: Value) -> HttpResponse {
        let list = ok_or_return!(batch(&v));
        let valid = ok_or_return!(all_valid(list, |item, i| self.unsorted_item(item, i)));
        let mut out = Vec::new();
        for (li, p, s) in valid {
            let rid = li.request_id.clone();
            let (lead_id, contact_id, company_id) = self.create_lead(li, p, s);
            let uid = self
                .acc
                .pending_unsorted_of(lead_id)
                .map(|u| u.uid.clone())
                .unwrap_or_default();
            out.push(json!({
                "uid": uid,
                "account_id": self.acc.id,
                "request_id": rid,
                "_links": link(self.url(&format!("leads/unsorted/{uid}"))),
                "_embedded": {
                    "leads": self.refs("leads", [lead_id]),
                    "contacts": self.refs("contacts", contact_id),
                    "companies": self.refs("companies", company_id),
                },
            }));
        }
        hal(json!({
            "_total_items": out.len(),
            "_links": link(self.url("leads/unsorted/forms")),
            "_embedded": {"unsorted": out},
        }))
    }

    /// `GET leads/unsorted`: pending requests; `filter[uid]`, `filter[category]`, `filter[pipeline_id]`,
    /// paging; 204 when none.
    pub(super) fn unsorted_list(&self, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let uids = q.list("filter[uid]");
        let categories = q.list("filter[category]");
        let pipelines = q.ids("filter[pipeline_id]");
        let mut list: Vec<&UnsortedEntry> = self
            .acc
            .unsorted
            .values()
            .filter(|u| u.state == UnsortedState::Pending)
            .filter(|u| uids.is_empty() || uids.contains(&u.uid))
            .filter(|u| categories.is_empty() || categories.contains(&u.category))
            .filter(|u| pipelines.is_empty() || pipelines.contains(&u.pipeline_id))
            .collect();
        list.sort_by_key(|u| (u.created_at, u.lead_id));
        let all = list.iter().map(|u| self.unsorted_json(u)).collect();
        page_of(&self.url("leads/unsorted"), "unsorted", all, page, limit)
    }

    /// `GET leads/unsorted/{uid}`: a pending request; 204 once accepted or declined.
    pub(super) fn unsorted_get(&self, uid: &str) -> HttpResponse {
        hal_or_no_content(
            self.acc
                .unsorted
                .get(uid)
                .filter(|u| u.state == UnsortedState::Pending)
                .map(|u| self.unsorted_json(u)),
        )
    }

    pub(super) fn unsorted_accept(&mut self, uid: &str, body: &[u8]) -> HttpResponse {
        let (user, status) = ok_or_return!(accept_body(body));
        match accept_unsorted(self.acc, uid, user, status, self.now) {
            Ok(events) => {
                self.events.extend(events);
                self.unsorted_result(uid)
            }
            Err(e) => e.response(),
        }
    }

    pub(super) fn unsorted_decline(&mut self, uid: &str, body: &[u8]) -> HttpResponse {
        let (user, _) = ok_or_return!(accept_body(body));
        match decline_unsorted(self.acc, uid, user, self.now) {
            Ok(events) => {
                self.events.extend(events);
                self.unsorted_result(uid)
            }
            Err(e) => e.response(),
        }
    }

    /// The answer to an accept or decline: the request's uid and its entities.
    fn unsorted_result(&self, uid: &str) -> HttpResponse {
        let Some(u) = self.acc.unsorted.get(uid) else {
            return no_content();
        };
        let lead = self.acc.leads.get(&u.lead_id);
        hal(json!({
            "uid": u.uid,
            "_links": link(self.url(&format!("leads/unsorted/{uid}"))),
            "_embedded": {
                "leads": [{
                    "id": u.lead_id,
                    "status_id": lead.map(|l| l.status_id),
                    "pipeline_id": lead.map(|l| l.pipeline_id),
                    "_links": link(self.url(&format!("leads/{}", u.lead_id))),
                }],
                "contacts": self.refs("contacts", u.contact_ids.iter().copied()),
            },
        }))
    }
}
