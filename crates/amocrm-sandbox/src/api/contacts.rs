//! Contacts and companies: search (`query` over every filled field; a digits-only query also matches
//! phones by their digits), paging, reads with linked leads, create, patch (a field's values are replaced
//! whole), and the edits a manager makes in the UI (handle).

use actix_web::HttpResponse;
use serde_json::{Value, json};

use super::{Cx, Query, all_valid, batch, link, object_of, page_of, with_request_id};
use crate::fields::{self, as_id, opt_int, opt_str};
use crate::model::{Company, Contact, ContactChange, ContactSeed, FieldValue, FieldValues, Party};
use crate::outbound::Event;
use crate::problem::{FieldError, ItemErrors, hal, hal_or_no_content};
use crate::state::{Account, Ids, next};

/// The digits of a string (`+998 (90) 123-45-67` → `998901234567`).
fn digits(s: &str) -> String {
    s.chars().filter(char::is_ascii_digit).collect()
}

/// Whether a contact matches a lower-cased `query`: any filled field as a substring, phones also by
/// digits when the query is all digits.
fn contact_matches(c: &Contact, needle: &str) -> bool {
    let digit_query = !needle.is_empty() && needle.chars().all(|ch| ch.is_ascii_digit());
    fields::matches(&c.name, &c.custom_fields_values, needle)
        || c.first_name.to_lowercase().contains(needle)
        || c.last_name.to_lowercase().contains(needle)
        || (digit_query
            && c.custom_fields_values
                .iter()
                .filter(|f| f.field_code.as_deref() == Some("PHONE"))
                .flat_map(|f| &f.values)
                .any(|v| digits(&v.as_text()).contains(needle)))
}

/// The values of a multitext field (`PHONE`, `EMAIL`) with enum `WORK`, as the UI stores them.
fn multitext(acc: &Account, code: &str, values: &[String]) -> Result<FieldValues, String> {
    let field = acc
        .contact_fields
        .values()
        .find(|f| f.code.as_deref() == Some(code))
        .ok_or_else(|| format!("the account has no {code} field"))?;
    let work = field.enums.iter().find(|e| e.value == "WORK");
    Ok(FieldValues {
        field_id: field.id,
        field_name: field.name.clone(),
        field_code: field.code.clone(),
        field_type: field.type_.clone(),
        values: values
            .iter()
            .filter(|v| !v.trim().is_empty())
            .map(|v| FieldValue {
                value: Value::String(v.clone()),
                enum_id: work.map(|e| e.id),
                enum_code: work.map(|e| e.value.clone()),
            })
            .collect(),
    })
}

/// Creates a contact as a manager would in the UI; returns its id and the `add_contact` event.
pub(crate) fn create_contact(
    acc: &mut Account,
    ids: &mut Ids,
    now: i64,
    seed: &ContactSeed,
) -> Result<(u64, Vec<Event>), String> {
    let responsible = seed.responsible_user_id.unwrap_or(acc.user_id);
    if let Some(why) = acc.user_problem(responsible) {
        return Err(why);
    }
    let mut values = Vec::new();
    for (code, list) in [("PHONE", &seed.phones), ("EMAIL", &seed.emails)] {
        if !list.is_empty() {
            values.push(multitext(acc, code, list)?);
        }
    }
    let id = next(&mut ids.contact);
    let joined = format!("{} {}", seed.first_name, seed.last_name)
        .trim()
        .to_owned();
    let name = [seed.name.trim().to_owned(), joined]
        .into_iter()
        .find(|n| !n.is_empty())
        .unwrap_or_else(|| format!("Контакт #{id}"));
    acc.contacts.insert(
        id,
        Contact {
            id,
            name,
            first_name: seed.first_name.clone(),
            last_name: seed.last_name.clone(),
            responsible_user_id: responsible,
            created_at: now,
            updated_at: now,
            custom_fields_values: values,
            company_id: None,
            lead_ids: Vec::new(),
        },
    );
    Ok((id, vec![Event::ContactAdded(id)]))
}

/// A manager edits a contact; `update_contact` when anything changed.
pub(crate) fn change_contact(
    acc: &mut Account,
    id: u64,
    change: &ContactChange,
    now: i64,
) -> Result<Vec<Event>, String> {
    if let Some(r) = change.responsible_user_id
        && let Some(why) = acc.user_problem(r)
    {
        return Err(why);
    }
    let mut patch = Vec::new();
    for (code, list) in [("PHONE", &change.phones), ("EMAIL", &change.emails)] {
        if let Some(list) = list {
            patch.push(multitext(acc, code, list)?);
        }
    }
    let c = acc
        .contacts
        .get_mut(&id)
        .ok_or_else(|| format!("no contact {id}"))?;
    let before = c.clone();
    if let Some(n) = &change.name {
        c.name = n.clone();
    }
    if let Some(r) = change.responsible_user_id {
        c.responsible_user_id = r;
    }
    fields::merge(&mut c.custom_fields_values, patch);
    if *c == before {
        return Ok(Vec::new());
    }
    c.updated_at = now.max(before.updated_at);
    Ok(vec![Event::ContactUpdated(id)])
}

/// Deletes a contact (unlinked from its leads and company); the `delete_contact` event.
pub(crate) fn remove_contact(acc: &mut Account, id: u64) -> Option<Vec<Event>> {
    acc.contacts.remove(&id)?;
    acc.hidden_contacts.remove(&id);
    for l in acc.leads.values_mut() {
        l.contact_ids.retain(|c| *c != id);
    }
    for co in acc.companies.values_mut() {
        co.contact_ids.retain(|c| *c != id);
    }
    Some(vec![Event::ContactDeleted(id)])
}

/// Parsed input of one contact (create or patch).
struct ContactIn {
    id: Option<u64>,
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    responsible: Option<u64>,
    fields: Option<Vec<FieldValues>>,
    request_id: String,
    request_id_given: bool,
}

impl Cx<'_> {
    pub(super) fn contact_json(&self, c: &Contact, with_leads: bool) -> Value {
        let mut embedded = json!({
            "tags": [],
            "companies": self.refs("companies", c.company_id),
        });
        if with_leads {
            embedded["leads"] = json!(self.refs("leads", c.lead_ids.iter().copied()));
        }
        let mut j = self.party_json(&c.party(), "contacts", embedded);
        j["first_name"] = json!(c.first_name);
        j["last_name"] = json!(c.last_name);
        j["is_unsorted"] = json!(self.acc.hidden_contacts.contains(&c.id));
        j
    }

    fn company_json(&self, c: &Company) -> Value {
        self.party_json(&c.party(), "companies", json!({"tags": []}))
    }

    /// The fields a contact and a company answer alike; `path` is their collection (`contacts`).
    fn party_json(&self, p: &Party<'_>, path: &str, embedded: Value) -> Value {
        json!({
            "id": p.id,
            "name": p.name,
            "responsible_user_id": p.responsible,
            "group_id": 0,
            "created_by": self.acc.user_id,
            "updated_by": self.acc.user_id,
            "created_at": p.created_at,
            "updated_at": p.updated_at,
            "closest_task_at": null,
            "is_deleted": false,
            "custom_fields_values": fields::values_json(p.fields),
            "account_id": self.acc.id,
            "_links": link(self.url(&format!("{path}/{}", p.id))),
            "_embedded": embedded,
        })
    }

    pub(super) fn contacts_list(&self, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let ids = q.ids("filter[id]");
        let needle = q.search();
        let with_leads = q.with().iter().any(|w| w == "leads");
        let all: Vec<Value> = self
            .acc
            .contacts
            .values()
            .filter(|c| !self.acc.hidden_contacts.contains(&c.id))
            .filter(|c| ids.is_empty() || ids.contains(&c.id))
            .filter(|c| needle.as_deref().is_none_or(|n| contact_matches(c, n)))
            .map(|c| self.contact_json(c, with_leads))
            .collect();
        page_of(&self.url("contacts"), "contacts", all, page, limit)
    }

    pub(super) fn contact_get(&self, id: u64, q: &Query) -> HttpResponse {
        let with_leads = q.with().iter().any(|w| w == "leads");
        hal_or_no_content(
            self.acc
                .contacts
                .get(&id)
                .map(|c| self.contact_json(c, with_leads)),
        )
    }

    pub(super) fn companies_list(&self, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let ids = q.ids("filter[id]");
        let needle = q.search();
        let all: Vec<Value> = self
            .acc
            .companies
            .values()
            .filter(|c| ids.is_empty() || ids.contains(&c.id))
            .filter(|c| {
                needle
                    .as_deref()
                    .is_none_or(|n| fields::matches(&c.name, &c.custom_fields_values, n))
            })
            .map(|c| self.company_json(c))
            .collect();
        page_of(&self.url("companies"), "companies", all, page, limit)
    }

    pub(super) fn company_get(&self, id: u64) -> HttpResponse {
        hal_or_no_content(self.acc.companies.get(&id).map(|c| self.company_json(c)))
    }

    fn contact_in(&self, item: &Value, index: usize, patch: bool) -> Result<ContactIn, ItemErrors> {
        let mut errs = Vec::new();
        let mut ci = ContactIn {
            id: None,
            name: None,
            first_name: None,
            last_name: None,
            responsible: None,
            fields: None,
            request_id: index.to_string(),
            request_id_given: false,
        };
        let o = object_of(item, index)?;
        if let Some(r) = opt_str(o, "request_id", "", &mut errs) {
            ci.request_id = r;
            ci.request_id_given = true;
        }
        if patch {
            match o.get("id").and_then(as_id) {
                Some(id) if self.acc.contacts.contains_key(&id) => ci.id = Some(id),
                Some(id) => errs.push(FieldError::not_found(
                    "id",
                    format!("Contact {id} not found."),
                )),
                None => errs.push(FieldError::invalid_type("id", "int")),
            }
        }
        ci.name = opt_str(o, "name", "", &mut errs);
        ci.first_name = opt_str(o, "first_name", "", &mut errs);
        ci.last_name = opt_str(o, "last_name", "", &mut errs);
        ci.responsible = self.responsible_in(o, "", &mut errs);
        let _ = opt_int(o, "created_by", "", &mut errs);
        let _ = opt_int(o, "updated_by", "", &mut errs);
        ci.fields = fields::parse_values(&self.acc.contact_fields, o, "", &mut errs);
        ItemErrors::check(ci.request_id.clone(), errs, ci)
    }

    fn contacts_in(&self, v: &Value, patch: bool) -> Result<Vec<ContactIn>, HttpResponse> {
        let list = batch(v)?;
        all_valid(list, |item, i| self.contact_in(item, i, patch))
    }

    pub(super) fn contacts_create(&mut self, v: Value) -> HttpResponse {
        let list = ok_or_return!(self.contacts_in(&v, false));
        let mut out = Vec::new();
        for ci in list {
            let id = next(&mut self.ids.contact);
            let first = ci.first_name.unwrap_or_default();
            let last = ci.last_name.unwrap_or_default();
            let joined = format!("{first} {last}").trim().to_owned();
            let name = ci
                .name
                .filter(|n| !n.is_empty())
                .or((!joined.is_empty()).then_some(joined))
                .unwrap_or_else(|| format!("Контакт #{id}"));
            self.acc.contacts.insert(
                id,
                Contact {
                    id,
                    name,
                    first_name: first,
                    last_name: last,
                    responsible_user_id: ci.responsible.unwrap_or(self.acc.user_id),
                    created_at: self.now,
                    updated_at: self.now,
                    custom_fields_values: ci.fields.unwrap_or_default(),
                    company_id: None,
                    lead_ids: Vec::new(),
                },
            );
            self.events.push(Event::ContactAdded(id));
            out.push(json!({
                "id": id,
                "request_id": ci.request_id,
                "is_deleted": false,
                "is_unsorted": false,
                "_links": link(self.url(&format!("contacts/{id}"))),
            }));
        }
        hal(json!({"_links": link(self.url("contacts")), "_embedded": {"contacts": out}}))
    }

    /// `PATCH contacts`: every field given replaces that field's whole value list (⚠️ the strict reading
    /// of amoCRM's behaviour): send the values to keep along with the new one.
    pub(super) fn contacts_patch(&mut self, v: Value, single: bool) -> HttpResponse {
        let list = ok_or_return!(self.contacts_in(&v, true));
        let mut out = Vec::new();
        for ci in list {
            let Some(id) = ci.id else { continue };
            let Some(c) = self.acc.contacts.get_mut(&id) else {
                continue;
            };
            let before = c.clone();
            if let Some(n) = ci.name {
                c.name = n;
            }
            if let Some(f) = ci.first_name {
                c.first_name = f;
            }
            if let Some(l) = ci.last_name {
                c.last_name = l;
            }
            if let Some(r) = ci.responsible {
                c.responsible_user_id = r;
            }
            if let Some(f) = ci.fields {
                fields::merge(&mut c.custom_fields_values, f);
            }
            if *c != before {
                c.updated_at = self.now.max(before.updated_at);
                self.events.push(Event::ContactUpdated(id));
            }
            let (name, updated_at) = (c.name.clone(), c.updated_at);
            let j = json!({
                "id": id,
                "name": name,
                "updated_at": updated_at,
                "_links": link(self.url(&format!("contacts/{id}"))),
            });
            out.push(with_request_id(
                j,
                ci.request_id_given.then_some(ci.request_id),
            ));
        }
        self.patched("contacts", out, single)
    }
}
