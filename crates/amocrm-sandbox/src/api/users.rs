//! Users (`GET users`, administrators only): rights with `is_active` / `is_admin`; `with=role,group`.

use actix_web::HttpResponse;
use serde_json::{Value, json};

use super::{Cx, Query, link, page_of};
use crate::model::User;
use crate::problem::hal_or_no_content;

impl Cx<'_> {
    fn user_json(&self, u: &User, with: &[String]) -> Value {
        let level = if u.is_admin { "A" } else { "M" };
        let entity =
            json!({"view": level, "edit": level, "add": "A", "delete": level, "export": level});
        let mut j = json!({
            "id": u.id,
            "name": u.name,
            "email": u.email,
            "lang": "ru",
            "rights": {
                "leads": entity,
                "contacts": entity,
                "companies": entity,
                "tasks": {"edit": level, "delete": level},
                "mail_access": false,
                "catalog_access": u.is_admin,
                "files_access": false,
                "status_rights": [],
                "catalog_rights": null,
                "custom_fields_rights": null,
                "oper_day_reports_view_access": false,
                "oper_day_user_tracking": false,
                "is_admin": u.is_admin,
                "is_free": false,
                "is_active": u.is_active,
                "group_id": null,
                "role_id": null,
            },
            "_links": link(self.url(&format!("users/{}", u.id))),
        });
        let mut embedded = serde_json::Map::new();
        if with.iter().any(|w| w == "role") {
            embedded.insert("roles".to_owned(), json!([]));
        }
        if with.iter().any(|w| w == "group") {
            embedded.insert(
                "groups".to_owned(),
                json!([{"id": 0, "name": "Отдел продаж"}]),
            );
        }
        if !embedded.is_empty() {
            j["_embedded"] = Value::Object(embedded);
        }
        j
    }

    pub(super) fn users_list(&self, q: &Query) -> HttpResponse {
        let (page, limit) = ok_or_return!(q.paging());
        let with = q.with();
        let all = self
            .acc
            .users
            .values()
            .map(|u| self.user_json(u, &with))
            .collect();
        page_of(&self.url("users"), "users", all, page, limit)
    }

    pub(super) fn user_get(&self, id: u64, q: &Query) -> HttpResponse {
        hal_or_no_content(
            self.acc
                .users
                .get(&id)
                .map(|u| self.user_json(u, &q.with())),
        )
    }
}
