//! Tasks: batch create (`text` and `complete_till` required) and reads filtered by entity.

use actix_web::HttpResponse;
use serde_json::{Value, json};

use super::{Cx, Query, all_valid, batch, link, object_of, page_of};
use crate::fields::{as_id, opt_bool, opt_int, opt_str};
use crate::model::Task;
use crate::problem::{FieldError, ItemErrors, hal, hal_or_no_content};
use crate::state::next;

/// Task types every account has: 1 call, 2 meeting.
pub const TASK_TYPES: [u64; 2] = [1, 2];

impl Cx<'_> {
    fn task_json(&self, t: &Task) -> Value {
        json!({
            "id": t.id,
            "created_by": t.created_by,
            "updated_by": t.created_by,
            "created_at": t.created_at,
            "updated_at": t.updated_at,
            "responsible_user_id": t.responsible_user_id,
            "group_id": 0,
            "entity_id": t.entity_id,
            "entity_type": t.entity_type,
            "duration": 0,
            "is_completed": t.is_completed,
            "task_type_id": t.task_type_id,
            "text": t.text,
            "result": [],
            "complete_till": t.complete_till,
            "account_id": self.acc.id,
            "_links": link(self.url(&format!("tasks/{}", t.id))),
        })
    }

    fn entity_exists(&self, entity_type: &str, id: u64) -> bool {
        match entity_type {
            "leads" => self.acc.leads.contains_key(&id),
            "contacts" => self.acc.contacts.contains_key(&id),
            "companies" => self.acc.companies.contains_key(&id),
            _ => false,
        }
    }

    fn task_in(&self, item: &Value, i: usize) -> Result<Task, ItemErrors> {
        let o = object_of(item, i)?;
        let mut errs = Vec::new();
        let request_id = opt_str(o, "request_id", "", &mut errs);
        let text = opt_str(o, "text", "", &mut errs).filter(|t| !t.trim().is_empty());
        if text.is_none() && !errs.iter().any(|e| e.path == "text") {
            errs.push(FieldError::required("text"));
        }
        let complete_till = opt_int(o, "complete_till", "", &mut errs);
        if complete_till.is_none() && !errs.iter().any(|e| e.path == "complete_till") {
            errs.push(FieldError::required("complete_till"));
        }
        let entity_type = opt_str(o, "entity_type", "", &mut errs);
        let entity_id = match o.get("entity_id").filter(|v| !v.is_null()) {
            None => None,
            Some(v) => match as_id(v) {
                Some(id) => Some(id),
                None => {
                    errs.push(FieldError::invalid_type("entity_id", "int"));
                    None
                }
            },
        };
        match (entity_type.as_deref(), entity_id) {
            (None, None) => {}
            (Some(t), _) if !matches!(t, "leads" | "contacts" | "companies") => {
                errs.push(FieldError::not_supported("entity_type"))
            }
            (Some(_), None) if !errs.iter().any(|e| e.path == "entity_id") => {
                errs.push(FieldError::required("entity_id"))
            }
            (None, Some(_)) => errs.push(FieldError::required("entity_type")),
            (Some(t), Some(id)) if !self.entity_exists(t, id) => errs.push(FieldError::not_found(
                "entity_id",
                format!("Entity {t} {id} not found."),
            )),
            _ => {}
        }
        let responsible = self.responsible_in(o, "", &mut errs).unwrap_or(self.user);
        let task_type_id = match opt_int(o, "task_type_id", "", &mut errs) {
            None => 1,
            Some(t) => match u64::try_from(t).ok().filter(|t| TASK_TYPES.contains(t)) {
                Some(t) => t,
                None => {
                    errs.push(FieldError::not_supported("task_type_id"));
                    1
                }
            },
        };
        let _ = opt_int(o, "duration", "", &mut errs);
        let is_completed = opt_bool(o, "is_completed", "", &mut errs).unwrap_or(false);
        let rid = ItemErrors::key(request_id.as_deref(), i);
        ItemErrors::check(
            rid.clone(),
            errs,
            Task {
                id: 0,
                text: text.unwrap_or_default(),
                complete_till: complete_till.unwrap_or_default(),
                entity_id,
                entity_type,
                responsible_user_id: responsible,
                task_type_id,
                is_completed,
                created_by: self.user,
                created_at: self.now,
                updated_at: self.now,
                request_id: Some(rid),
            },
        )
    }

    /// `POST tasks`: at most 250; the whole batch is refused when one task is invalid.
    pub(super) fn tasks_create(&mut self, v: Value) -> HttpResponse {
        let list = ok_or_return!(batch(&v));
        let valid = ok_or_return!(all_valid(list, |item, i| self.task_in(item, i)));
        let mut out = Vec::new();
        for mut t in valid {
            t.id = next(&mut self.ids.task);
            out.push(json!({
                "id": t.id,
                "request_id": t.request_id,
                "_links": link(self.url(&format!("tasks/{}", t.id))),
            }));
            self.acc.tasks.insert(t.id, t);
        }
        hal(json!({"_links": link(self.url("tasks")), "_embedded": {"tasks": out}}))
    }

    /// `GET tasks`: `filter[entity_type]`, `filter[entity_id][]`, `filter[is_completed]`,
    /// `filter[responsible_user_id][]`, `filter[task_type][]`, `filter[id][]`, paging; 204 when none.
    pub(super) fn tasks_list(&self, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let types = q.list("filter[entity_type]");
        let entities = q.ids("filter[entity_id]");
        let responsible = q.ids("filter[responsible_user_id]");
        let task_types = q.ids("filter[task_type]");
        let ids = q.ids("filter[id]");
        let completed = q
            .get("filter[is_completed]")
            .map(|v| matches!(v, "1" | "true"));
        let all: Vec<Value> = self
            .acc
            .tasks
            .values()
            .filter(|t| {
                types.is_empty() || t.entity_type.as_ref().is_some_and(|e| types.contains(e))
            })
            .filter(|t| entities.is_empty() || t.entity_id.is_some_and(|e| entities.contains(&e)))
            .filter(|t| responsible.is_empty() || responsible.contains(&t.responsible_user_id))
            .filter(|t| task_types.is_empty() || task_types.contains(&t.task_type_id))
            .filter(|t| ids.is_empty() || ids.contains(&t.id))
            .filter(|t| completed.is_none_or(|c| c == t.is_completed))
            .map(|t| self.task_json(t))
            .collect();
        page_of(&self.url("tasks"), "tasks", all, page, limit)
    }

    pub(super) fn task_get(&self, id: u64) -> HttpResponse {
        hal_or_no_content(self.acc.tasks.get(&id).map(|t| self.task_json(t)))
    }
}
