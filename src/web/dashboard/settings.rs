//! `/dashboard/connections/{seller_id}/settings`: a seller's settings as stored (docs/CONTRACT.md §10), read
//! only. It reads the database alone, never the seller's amoCRM, so looking costs the seller's amoCRM budget
//! nothing; ids are shown as amoCRM ids.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;

use super::{DashError, Nav, Viewer, html};
use crate::domain::settings::STATUS_KEYS;
use crate::services::settings::{self, SettingsError};

/// One line of the page: what, and its stored value.
pub struct Line {
    pub key: String,
    pub value: String,
}

#[derive(Template)]
#[template(path = "dashboard/settings.html")]
struct SettingsPage {
    nav: Nav,
    seller_id: String,
    host: String,
    status: String,
    problems: Option<String>,
    updated_at: String,
    lines: Vec<Line>,
}

fn id_or_dash(v: Option<i64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| v.to_string())
}

fn lines(view: &settings::View) -> Vec<Line> {
    let s = &view.stored.settings;
    let c = &view.connection;
    let mut out = vec![
        ("language".to_owned(), s.language.as_str().to_owned()),
        ("entry".to_owned(), s.entry.as_str().to_owned()),
        ("pipeline".to_owned(), id_or_dash(c.pipeline_id)),
    ];
    out.extend(
        STATUS_KEYS
            .iter()
            .zip(c.stages())
            .map(|(k, id)| (format!("stage: {k}"), id_or_dash(id))),
    );
    let users: Vec<String> = s.responsible.user_ids.iter().map(i64::to_string).collect();
    out.extend([
        (
            "responsible".to_owned(),
            s.responsible.mode.as_str().to_owned(),
        ),
        (
            "responsible users".to_owned(),
            if users.is_empty() {
                "—".to_owned()
            } else {
                users.join(", ")
            },
        ),
        (
            "contact matching".to_owned(),
            s.contacts.match_mode.as_str().to_owned(),
        ),
        (
            "default country".to_owned(),
            s.contacts.default_country.clone(),
        ),
        (
            "order note".to_owned(),
            if s.items.note { "on" } else { "off" }.to_owned(),
        ),
        ("products".to_owned(), s.items.products.as_str().to_owned()),
        (
            "products catalog".to_owned(),
            id_or_dash(view.stored.products_catalog_id),
        ),
        (
            "task".to_owned(),
            if s.task.enabled {
                format!("{} (due in {} min)", s.task.text, s.task.due_in_minutes)
            } else {
                "off".to_owned()
            },
        ),
    ]);
    let f = &s.fields;
    out.extend(
        [
            ("delivery_method", f.delivery_method),
            ("delivery_address", f.delivery_address),
            ("payment_method", f.payment_method),
            ("source", f.source),
        ]
        .into_iter()
        .map(|(k, id)| {
            (
                format!("field: {k}"),
                id.map_or_else(|| "not sent".to_owned(), |v| v.to_string()),
            )
        }),
    );
    out.into_iter()
        .map(|(key, value)| Line { key, value })
        .collect()
}

pub async fn page(path: web::Path<String>, v: Viewer) -> Result<HttpResponse, DashError> {
    let view = match settings::get(&v.state, &path).await {
        Ok(v) => v,
        Err(SettingsError::NotFound) => return Err(DashError::NotFound),
        Err(SettingsError::Storage(e)) => return Err(e.into()),
        Err(e) => return Err(DashError::Internal(e.to_string())),
    };
    let body = SettingsPage {
        nav: v.nav("connections"),
        seller_id: view.connection.seller_id.clone(),
        host: view.connection.host.clone(),
        status: view.connection.status.as_str().to_owned(),
        problems: view.stored.problems.clone(),
        updated_at: v.signed.clock.time_opt(view.stored.updated_at),
        lines: lines(&view),
    }
    .render();
    Ok(html(StatusCode::OK, body))
}
