//! Notes on leads: batch create (`leads/notes` or `leads/{id}/notes`, at most 250) and reads by lead,
//! by lead ids and by type.

use actix_web::HttpResponse;
use serde_json::{Value, json};

use super::{Cx, Query, all_valid, batch, link, object_of, page_of};
use crate::fields::{as_id, opt_bool, opt_int, opt_str};
use crate::model::Note;
use crate::outbound::Event;
use crate::problem::{FieldError, ItemErrors, hal, hal_or_no_content};
use crate::state::next;

/// Note types the sandbox models; others (attachments, geolocation, invoices…) are refused.
pub const NOTE_TYPES: [&str; 7] = [
    "common",
    "call_in",
    "call_out",
    "service_message",
    "extended_service_message",
    "sms_in",
    "sms_out",
];

/// ⚠️ amoCRM documents no maximum note length; the sandbox refuses texts longer than this (characters),
/// so a connector cuts long item lists instead of relying on an unknown limit.
pub const MAX_NOTE_TEXT: usize = 10_000;

struct NoteIn {
    entity_id: u64,
    note_type: String,
    text: String,
    params: Value,
    created_by: Option<u64>,
    responsible: Option<u64>,
    request_id: String,
}

impl Cx<'_> {
    fn note_json(&self, n: &Note) -> Value {
        json!({
            "id": n.id,
            "entity_id": n.entity_id,
            "created_by": n.created_by,
            "updated_by": n.created_by,
            "created_at": n.created_at,
            "updated_at": n.updated_at,
            "responsible_user_id": n.responsible_user_id,
            "group_id": 0,
            "note_type": n.note_type,
            "params": n.params,
            "account_id": self.acc.id,
            "_links": link(self.url(&format!("leads/{}/notes/{}", n.entity_id, n.id))),
        })
    }

    fn note_in(&self, item: &Value, index: usize, lead: Option<u64>) -> Result<NoteIn, ItemErrors> {
        let mut errs = Vec::new();
        let o = object_of(item, index)?;
        let request_id =
            opt_str(o, "request_id", "", &mut errs).unwrap_or_else(|| index.to_string());
        let entity_id = match lead {
            Some(id) => Some(id),
            None => match o.get("entity_id").filter(|v| !v.is_null()) {
                None => {
                    errs.push(FieldError::required("entity_id"));
                    None
                }
                Some(v) => match as_id(v) {
                    Some(id) => Some(id),
                    None => {
                        errs.push(FieldError::invalid_type("entity_id", "int"));
                        None
                    }
                },
            },
        };
        if let Some(id) = entity_id
            && !self.acc.leads.contains_key(&id)
        {
            errs.push(FieldError::not_found(
                "entity_id",
                format!("Lead {id} not found."),
            ));
        }
        let note_type = opt_str(o, "note_type", "", &mut errs);
        match note_type.as_deref() {
            None => errs.push(FieldError::required("note_type")),
            Some(t) if !NOTE_TYPES.contains(&t) => {
                errs.push(FieldError::not_supported("note_type"))
            }
            Some(_) => {}
        }
        let params = match o.get("params") {
            Some(Value::Object(p)) => Value::Object(p.clone()),
            None | Some(Value::Null) => {
                errs.push(FieldError::required("params"));
                Value::Null
            }
            Some(_) => {
                errs.push(FieldError::invalid_type("params", "object"));
                Value::Null
            }
        };
        let mut text = String::new();
        if let (Some(t), Some(p)) = (note_type.as_deref(), params.as_object()) {
            let needs_text = matches!(
                t,
                "common" | "service_message" | "extended_service_message" | "sms_in" | "sms_out"
            );
            let needs_service = matches!(t, "service_message" | "extended_service_message");
            match p.get("text") {
                Some(Value::String(s)) if !s.trim().is_empty() => text = s.clone(),
                Some(Value::String(_)) | None | Some(Value::Null) => {
                    if needs_text {
                        errs.push(FieldError::required("params.text"));
                    }
                }
                Some(_) => errs.push(FieldError::invalid_type("params.text", "string")),
            }
            if text.chars().count() > MAX_NOTE_TEXT {
                errs.push(FieldError::new(
                    "TooLong",
                    "params.text",
                    format!(
                        "This value is too long. It should have {MAX_NOTE_TEXT} characters or less."
                    ),
                ));
            }
            if needs_service {
                match p.get("service") {
                    Some(Value::String(s)) if !s.trim().is_empty() => {}
                    Some(Value::String(_)) | None | Some(Value::Null) => {
                        errs.push(FieldError::required("params.service"))
                    }
                    Some(_) => errs.push(FieldError::invalid_type("params.service", "string")),
                }
            }
        }
        let created_by = match opt_int(o, "created_by", "", &mut errs) {
            Some(0) => Some(0),
            Some(id) => match u64::try_from(id)
                .ok()
                .filter(|id| self.acc.users.contains_key(id))
            {
                Some(id) => Some(id),
                None => {
                    errs.push(FieldError::new(
                        "NotSupportedChoice",
                        "created_by",
                        format!("User {id} not found in the account."),
                    ));
                    None
                }
            },
            None => None,
        };
        let responsible = self.responsible_in(o, "", &mut errs);
        let _ = opt_bool(o, "is_need_to_trigger_digital_pipeline", "", &mut errs);
        ItemErrors::check(
            request_id.clone(),
            errs,
            NoteIn {
                entity_id: entity_id.unwrap_or_default(),
                note_type: note_type.unwrap_or_default(),
                text,
                params,
                created_by,
                responsible,
                request_id,
            },
        )
    }

    /// `POST leads/notes` (each item names its lead) or `POST leads/{id}/notes` (`lead` set).
    pub(super) fn notes_create(&mut self, v: Value, lead: Option<u64>) -> HttpResponse {
        let list = ok_or_return!(batch(&v));
        let valid = ok_or_return!(all_valid(list, |item, i| self.note_in(item, i, lead)));
        let mut out = Vec::new();
        for n in valid {
            let id = next(&mut self.ids.note);
            let created_by = n.created_by.unwrap_or(self.user);
            self.acc.notes.insert(
                id,
                Note {
                    id,
                    entity_id: n.entity_id,
                    note_type: n.note_type,
                    text: n.text,
                    params: n.params,
                    created_by,
                    responsible_user_id: n.responsible.unwrap_or(self.user),
                    created_at: self.now,
                    updated_at: self.now,
                    request_id: Some(n.request_id.clone()),
                },
            );
            self.events.push(Event::NoteAdded(id));
            out.push(json!({
                "id": id,
                "entity_id": n.entity_id,
                "request_id": n.request_id,
                "_links": link(self.url(&format!("leads/{}/notes/{id}", n.entity_id))),
            }));
        }
        let base = match lead {
            Some(l) => format!("leads/{l}/notes"),
            None => "leads/notes".to_owned(),
        };
        hal(json!({"_links": link(self.url(&base)), "_embedded": {"notes": out}}))
    }

    /// `GET leads/{id}/notes` (`lead` set) or `GET leads/notes?filter[entity_id][]=…`; `filter[note_type]`,
    /// `filter[id]`, paging; 204 when none.
    pub(super) fn notes_list(&self, lead: Option<u64>, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let leads = match lead {
            Some(l) => vec![l],
            None => q.ids("filter[entity_id]"),
        };
        let types = q.list("filter[note_type]");
        let ids = q.ids("filter[id]");
        let all: Vec<Value> = self
            .acc
            .notes
            .values()
            .filter(|n| leads.is_empty() || leads.contains(&n.entity_id))
            .filter(|n| types.is_empty() || types.contains(&n.note_type))
            .filter(|n| ids.is_empty() || ids.contains(&n.id))
            .map(|n| self.note_json(n))
            .collect();
        let base = match lead {
            Some(l) => self.url(&format!("leads/{l}/notes")),
            None => self.url("leads/notes"),
        };
        page_of(&base, "notes", all, page, limit)
    }

    pub(super) fn note_get(&self, lead: u64, id: u64) -> HttpResponse {
        hal_or_no_content(
            self.acc
                .notes
                .get(&id)
                .filter(|n| n.entity_id == lead)
                .map(|n| self.note_json(n)),
        )
    }
}
