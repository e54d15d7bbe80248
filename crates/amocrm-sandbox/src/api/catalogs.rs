//! Lists ("catalogs") and their elements, and entity links from leads to list elements (with quantity)
//! and to contacts. Products cannot be sent inside `leads/complex`: they are linked afterwards.

use std::collections::BTreeMap;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

use super::{Cx, Query, all_valid, batch, link, number, object_of, page_of};
use crate::fields::{self, as_id, opt_str, required_str};
use crate::model::{Catalog, CatalogElement, CustomField, EntityLink};
use crate::problem::{FieldError, ItemErrors, hal, hal_or_no_content, no_content, problem};
use crate::state::{Account, Ids, next};

/// List types amoCRM reports.
pub const CATALOG_TYPES: [&str; 3] = ["regular", "invoices", "products"];

/// Creates a list; the products list (at most one) gets its predefined `SKU`, `PRICE` and `DESCRIPTION`
/// fields. Returns the existing products list when there is one.
pub(crate) fn add_catalog(
    acc: &mut Account,
    ids: &mut Ids,
    now: i64,
    name: &str,
    type_: &str,
) -> Result<Catalog, String> {
    if !CATALOG_TYPES.contains(&type_) {
        return Err(format!(
            "unknown list type {type_:?} (regular, invoices, products)"
        ));
    }
    if type_ != "regular"
        && let Some(existing) = acc.catalogs.values().find(|c| c.type_ == type_)
    {
        return Ok(existing.clone());
    }
    let id = next(&mut ids.catalog);
    let sort = acc.catalogs.values().map(|c| c.sort).max().unwrap_or(0) + 10;
    let catalog = Catalog {
        id,
        name: if name.trim().is_empty() {
            match type_ {
                "products" => "Товары",
                "invoices" => "Счета",
                _ => "Список",
            }
            .to_owned()
        } else {
            name.to_owned()
        },
        type_: type_.to_owned(),
        sort,
        created_at: now,
    };
    let mut fields = BTreeMap::new();
    if type_ == "products" {
        for (code, fname, ty, sort) in [
            ("SKU", "Артикул", "text", 1),
            ("PRICE", "Цена", "price", 2),
            ("DESCRIPTION", "Описание", "textarea", 3),
        ] {
            let fid = next(&mut ids.field);
            fields.insert(
                fid,
                CustomField {
                    id: fid,
                    name: fname.to_owned(),
                    type_: ty.to_owned(),
                    code: Some(code.to_owned()),
                    sort,
                    is_api_only: false,
                    enums: Vec::new(),
                    entity_type: "catalogs".to_owned(),
                },
            );
        }
    }
    acc.catalog_fields.insert(id, fields);
    acc.catalogs.insert(id, catalog.clone());
    Ok(catalog)
}

/// Which link of a batch of `n` the percentage fault drops: exactly `n * percent / 100` (rounded down),
/// spread over the batch.
fn dropped_by_percent(i: usize, percent: u32) -> bool {
    let p = percent.min(100) as usize;
    (i + 1) * p / 100 > i * p / 100
}

/// A validated link item.
struct LinkIn {
    lead_id: u64,
    to_entity_type: String,
    to_entity_id: u64,
    catalog_id: Option<u64>,
    quantity: Option<f64>,
    main_contact: bool,
}

impl Cx<'_> {
    fn catalog_json(&self, c: &Catalog) -> Value {
        json!({
            "id": c.id,
            "name": c.name,
            "created_by": self.acc.user_id,
            "updated_by": self.acc.user_id,
            "created_at": c.created_at,
            "updated_at": c.created_at,
            "sort": c.sort,
            "type": c.type_,
            "can_add_elements": true,
            "can_show_in_cards": c.type_ == "products",
            "can_link_multiple": true,
            "can_be_deleted": c.type_ == "regular",
            "sdk_widget_code": null,
            "account_id": self.acc.id,
            "_links": link(self.url(&format!("catalogs/{}", c.id))),
        })
    }

    fn element_json(&self, e: &CatalogElement) -> Value {
        json!({
            "id": e.id,
            "name": e.name,
            "created_by": self.acc.user_id,
            "updated_by": self.acc.user_id,
            "created_at": e.created_at,
            "updated_at": e.updated_at,
            "is_deleted": false,
            "custom_fields_values": fields::values_json(&e.custom_fields_values),
            "catalog_id": e.catalog_id,
            "account_id": self.acc.id,
            "_links": link(self.url(&format!("catalogs/{}/elements/{}", e.catalog_id, e.id))),
        })
    }

    pub(super) fn catalogs_list(&self, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let types = q.list("filter[type]");
        let mut list: Vec<&Catalog> = self
            .acc
            .catalogs
            .values()
            .filter(|c| types.is_empty() || types.contains(&c.type_))
            .collect();
        list.sort_by_key(|c| (c.sort, c.id));
        let all = list.iter().map(|c| self.catalog_json(c)).collect();
        page_of(&self.url("catalogs"), "catalogs", all, page, limit)
    }

    pub(super) fn catalog_get(&self, id: u64) -> HttpResponse {
        hal_or_no_content(self.acc.catalogs.get(&id).map(|c| self.catalog_json(c)))
    }

    /// `GET catalogs/{id}/elements`: `query` (a case-insensitive substring of the name or any field value),
    /// `filter[id]`, paging; 204 when none.
    pub(super) fn elements_list(&self, catalog: u64, q: &Query) -> HttpResponse {
        if !self.acc.catalogs.contains_key(&catalog) {
            return problem(StatusCode::NOT_FOUND, "Catalog not found");
        }
        let (page, limit) = ok_or_return!(q.paging());
        let ids = q.ids("filter[id]");
        let needle = q.search();
        let all: Vec<Value> = self
            .acc
            .elements
            .values()
            .filter(|e| e.catalog_id == catalog)
            .filter(|e| ids.is_empty() || ids.contains(&e.id))
            .filter(|e| {
                needle
                    .as_deref()
                    .is_none_or(|n| fields::matches(&e.name, &e.custom_fields_values, n))
            })
            .map(|e| self.element_json(e))
            .collect();
        page_of(
            &self.url(&format!("catalogs/{catalog}/elements")),
            "elements",
            all,
            page,
            limit,
        )
    }

    pub(super) fn element_get(&self, catalog: u64, id: u64) -> HttpResponse {
        hal_or_no_content(
            self.acc
                .elements
                .get(&id)
                .filter(|e| e.catalog_id == catalog)
                .map(|e| self.element_json(e)),
        )
    }

    /// `POST catalogs/{id}/elements`: at most 250; `name` required; fields by `field_id` or `field_code`.
    pub(super) fn elements_create(&mut self, catalog: u64, v: Value) -> HttpResponse {
        let Some(fields_of) = self.acc.catalog_fields.get(&catalog) else {
            return problem(StatusCode::NOT_FOUND, "Catalog not found");
        };
        let list = ok_or_return!(batch(&v));
        let valid = all_valid(list, |item, i| {
            let o = object_of(item, i)?;
            let mut errs = Vec::new();
            let request_id =
                opt_str(o, "request_id", "", &mut errs).unwrap_or_else(|| i.to_string());
            let name = required_str(o, "name", &mut errs);
            let values = fields::parse_values(fields_of, o, "", &mut errs).unwrap_or_default();
            ItemErrors::check(
                request_id.clone(),
                errs,
                (request_id, name.unwrap_or_default(), values),
            )
        });
        let valid = ok_or_return!(valid);
        let mut out = Vec::new();
        for (request_id, name, values) in valid {
            let id = next(&mut self.ids.element);
            let e = CatalogElement {
                id,
                catalog_id: catalog,
                name,
                custom_fields_values: values,
                created_at: self.now,
                updated_at: self.now,
                request_id: Some(request_id.clone()),
            };
            let mut j = self.element_json(&e);
            j["request_id"] = json!(request_id);
            out.push(j);
            self.acc.elements.insert(id, e);
        }
        hal(json!({
            "_links": link(self.url(&format!("catalogs/{catalog}/elements"))),
            "_embedded": {"elements": out},
        }))
    }

    fn link_in(&self, item: &Value, i: usize, unlink: bool) -> Result<LinkIn, ItemErrors> {
        let rid = i.to_string();
        let o = object_of(item, i)?;
        let mut errs = Vec::new();
        let id_at = |key: &str, errs: &mut Vec<FieldError>| match o.get(key) {
            None | Some(Value::Null) => {
                errs.push(FieldError::required(key));
                None
            }
            Some(v) => {
                let id = as_id(v);
                if id.is_none() {
                    errs.push(FieldError::invalid_type(key, "int"));
                }
                id
            }
        };
        let lead_id = id_at("entity_id", &mut errs);
        if let Some(l) = lead_id
            && !self.acc.leads.contains_key(&l)
        {
            errs.push(FieldError::not_found(
                "entity_id",
                format!("Lead {l} not found."),
            ));
        }
        let to_id = id_at("to_entity_id", &mut errs);
        let to_type = opt_str(o, "to_entity_type", "", &mut errs);
        let meta = match o.get("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(_) => {
                errs.push(FieldError::invalid_type("metadata", "object"));
                None
            }
        };
        if meta.is_some_and(|m| m.contains_key("updated_by")) {
            errs.push(FieldError::new(
                "NotSupported",
                "metadata.updated_by",
                "updated_by cannot be set through the API (a deleted user makes the whole request fail).",
            ));
        }
        let mut catalog_id = None;
        let mut quantity = None;
        let mut main_contact = false;
        match to_type.as_deref() {
            None => errs.push(FieldError::required("to_entity_type")),
            Some("catalog_elements") => {
                let cat = meta.and_then(|m| m.get("catalog_id"));
                match cat.filter(|v| !v.is_null()) {
                    None => errs.push(FieldError::required("metadata.catalog_id")),
                    Some(v) => match as_id(v) {
                        Some(c) if self.acc.catalogs.contains_key(&c) => catalog_id = Some(c),
                        Some(c) => errs.push(FieldError::not_found(
                            "metadata.catalog_id",
                            format!("Catalog {c} not found."),
                        )),
                        None => errs.push(FieldError::invalid_type("metadata.catalog_id", "int")),
                    },
                }
                if let Some(e) = to_id {
                    match self.acc.elements.get(&e) {
                        Some(el) if catalog_id.is_none_or(|c| c == el.catalog_id) => {}
                        Some(el) => errs.push(FieldError::not_found(
                            "to_entity_id",
                            format!(
                                "Element {e} belongs to catalog {}, not {}.",
                                el.catalog_id,
                                catalog_id.unwrap_or_default()
                            ),
                        )),
                        None => errs.push(FieldError::not_found(
                            "to_entity_id",
                            format!("Catalog element {e} not found."),
                        )),
                    }
                }
                if !unlink {
                    match meta.and_then(|m| m.get("quantity")) {
                        None | Some(Value::Null) => quantity = Some(1.0),
                        Some(Value::Number(n)) => match n.as_f64() {
                            Some(x) if x > 0.0 && x.is_finite() => quantity = Some(x),
                            _ => errs.push(FieldError::new(
                                "InvalidValue",
                                "metadata.quantity",
                                "This value should be greater than 0.",
                            )),
                        },
                        Some(_) => {
                            errs.push(FieldError::invalid_type("metadata.quantity", "numeric"))
                        }
                    }
                }
            }
            Some("contacts") => {
                if let Some(c) = to_id
                    && !self.acc.contacts.contains_key(&c)
                {
                    errs.push(FieldError::not_found(
                        "to_entity_id",
                        format!("Contact {c} not found."),
                    ));
                }
                main_contact = meta
                    .and_then(|m| m.get("main_contact").or_else(|| m.get("is_main")))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            }
            Some(_) => errs.push(FieldError::not_supported("to_entity_type")),
        }
        ItemErrors::check(
            rid,
            errs,
            LinkIn {
                lead_id: lead_id.unwrap_or_default(),
                to_entity_type: to_type.unwrap_or_default(),
                to_entity_id: to_id.unwrap_or_default(),
                catalog_id,
                quantity,
                main_contact,
            },
        )
    }

    fn links_in(&self, v: &Value, unlink: bool) -> Result<Vec<LinkIn>, HttpResponse> {
        let list = batch(v)?;
        all_valid(list, |item, i| self.link_in(item, i, unlink))
    }

    fn link_json(&self, l: &LinkIn) -> Value {
        let metadata = match l.to_entity_type.as_str() {
            "catalog_elements" => json!({
                "quantity": number(l.quantity.unwrap_or(1.0)),
                "catalog_id": l.catalog_id,
            }),
            _ => json!({"main_contact": l.main_contact}),
        };
        json!({
            "entity_id": l.lead_id,
            "entity_type": "leads",
            "to_entity_id": l.to_entity_id,
            "to_entity_type": l.to_entity_type,
            "metadata": metadata,
        })
    }

    /// `POST leads/link`: links an element (quantity; linking it again sets the new quantity) or a contact.
    /// The `drop_links_*` faults leave some links out while the answer still lists them.
    pub(super) fn links_create(&mut self, v: Value) -> HttpResponse {
        let list = ok_or_return!(self.links_in(&v, false));
        let mut out = Vec::new();
        for (i, l) in list.iter().enumerate() {
            out.push(self.link_json(l));
            let faults = &mut self.acc.faults;
            let dropped = if faults.drop_links_next > 0 {
                faults.drop_links_next -= 1;
                true
            } else {
                dropped_by_percent(i, faults.drop_links_percent)
            };
            if dropped {
                self.acc.counters.links_dropped += 1;
                continue;
            }
            match l.to_entity_type.as_str() {
                "catalog_elements" => {
                    match self.acc.links.iter_mut().find(|k| {
                        k.lead_id == l.lead_id
                            && k.to_entity_type == l.to_entity_type
                            && k.to_entity_id == l.to_entity_id
                    }) {
                        Some(k) => {
                            k.quantity = l.quantity;
                            k.catalog_id = l.catalog_id;
                        }
                        None => self.acc.links.push(EntityLink {
                            lead_id: l.lead_id,
                            to_entity_type: l.to_entity_type.clone(),
                            to_entity_id: l.to_entity_id,
                            catalog_id: l.catalog_id,
                            quantity: l.quantity,
                        }),
                    }
                }
                _ => {
                    if let Some(lead) = self.acc.leads.get_mut(&l.lead_id) {
                        lead.contact_ids.retain(|c| *c != l.to_entity_id);
                        if l.main_contact {
                            lead.contact_ids.insert(0, l.to_entity_id);
                        } else {
                            lead.contact_ids.push(l.to_entity_id);
                        }
                    }
                    if let Some(c) = self.acc.contacts.get_mut(&l.to_entity_id)
                        && !c.lead_ids.contains(&l.lead_id)
                    {
                        c.lead_ids.push(l.lead_id);
                    }
                }
            }
        }
        hal(json!({
            "_total_items": out.len(),
            "_links": link(self.url("leads/link")),
            "_embedded": {"links": out},
        }))
    }

    /// `POST leads/unlink` → 204.
    pub(super) fn links_remove(&mut self, v: Value) -> HttpResponse {
        let list = ok_or_return!(self.links_in(&v, true));
        for l in list {
            match l.to_entity_type.as_str() {
                "catalog_elements" => self.acc.links.retain(|k| {
                    !(k.lead_id == l.lead_id
                        && k.to_entity_type == l.to_entity_type
                        && k.to_entity_id == l.to_entity_id)
                }),
                _ => {
                    if let Some(lead) = self.acc.leads.get_mut(&l.lead_id) {
                        lead.contact_ids.retain(|c| *c != l.to_entity_id);
                    }
                    if let Some(c) = self.acc.contacts.get_mut(&l.to_entity_id) {
                        c.lead_ids.retain(|x| *x != l.lead_id);
                    }
                }
            }
        }
        no_content()
    }

    /// `GET leads/{id}/links`: contacts, company and list elements; `filter[to_entity_type]`; 204 when none.
    pub(super) fn links_list(&self, lead_id: u64, q: &Query) -> HttpResponse {
        let Some(lead) = self.acc.leads.get(&lead_id) else {
            return no_content();
        };
        let types = q.list("filter[to_entity_type]");
        let mut out = Vec::new();
        for (i, c) in lead.contact_ids.iter().enumerate() {
            out.push(self.link_json(&LinkIn {
                lead_id,
                to_entity_type: "contacts".to_owned(),
                to_entity_id: *c,
                catalog_id: None,
                quantity: None,
                main_contact: i == 0,
            }));
        }
        if let Some(co) = lead.company_id {
            out.push(json!({
                "entity_id": lead_id,
                "entity_type": "leads",
                "to_entity_id": co,
                "to_entity_type": "companies",
                "metadata": null,
            }));
        }
        for k in self.acc.links.iter().filter(|k| k.lead_id == lead_id) {
            out.push(self.link_json(&LinkIn {
                lead_id,
                to_entity_type: k.to_entity_type.clone(),
                to_entity_id: k.to_entity_id,
                catalog_id: k.catalog_id,
                quantity: k.quantity,
                main_contact: false,
            }));
        }
        out.retain(|l| {
            types.is_empty()
                || l["to_entity_type"]
                    .as_str()
                    .is_some_and(|t| types.iter().any(|x| x == t))
        });
        if out.is_empty() {
            return no_content();
        }
        hal(json!({
            "_total_items": out.len(),
            "_links": link(self.url(&format!("leads/{lead_id}/links"))),
            "_embedded": {"links": out},
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::dropped_by_percent;

    #[test]
    fn the_percentage_fault_drops_exactly_the_rounded_down_share() {
        let dropped = |n: usize, p: u32| (0..n).filter(|i| dropped_by_percent(*i, p)).count();
        assert_eq!(dropped(100, 9), 9);
        assert_eq!(dropped(10, 50), 5);
        assert_eq!(dropped(3, 10), 0);
        assert_eq!(dropped(7, 100), 7);
        assert_eq!(dropped(7, 0), 0);
    }
}
