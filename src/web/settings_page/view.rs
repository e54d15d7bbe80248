//! What the settings template shows: the form's values against the account read live (pipelines with their
//! stages, active users, lead fields by name), and each problem next to its field.

use std::collections::BTreeMap;

use amocrm_client::Pipeline;

use super::texts::SettingsTexts;
use crate::domain::order::FieldErrors;
use crate::domain::settings::{Entry, MatchMode, ProductsMode, ResponsibleMode, STATUS_KEYS};
use crate::services::settings_page::{FIELD_KEYS, Form, Ready, find_pipeline, stale_ids};

/// Lead field types the order's text values can go into.
const TEXT_FIELD_TYPES: &[&str] = &["text", "textarea", "streetaddress"];

/// One choice of a select or a radio group.
pub struct Opt {
    pub value: String,
    pub label: String,
    pub selected: bool,
    /// The stage a status gets when another pipeline is chosen (used by the page script).
    pub default: bool,
}

impl Opt {
    fn new(value: impl Into<String>, label: impl Into<String>, selected: bool) -> Self {
        Self {
            value: value.into(),
            label: label.into(),
            selected,
            default: false,
        }
    }
}

/// The stages of one pipeline, as an `<optgroup>`.
pub struct Group {
    pub pipeline_id: String,
    pub label: String,
    pub options: Vec<Opt>,
}

/// A form input's value with the problems shown under it.
pub struct Field<T> {
    pub value: T,
    pub errors: Vec<String>,
}

/// One labelled select of a list of them (a status's stage, an order value's lead field).
pub struct Row<T> {
    pub key: &'static str,
    pub label: &'static str,
    pub choices: Field<Vec<T>>,
}

pub struct UserRow {
    pub id: String,
    pub name: String,
    pub checked: bool,
    pub errors: Vec<String>,
}

/// Everything of the form, ready to print.
pub struct FormView {
    pub language: Field<Vec<Opt>>,
    pub entry: Field<Vec<Opt>>,
    pub pipeline: Field<Vec<Opt>>,
    pub stages: Vec<Row<Group>>,
    pub mode: Field<Vec<Opt>>,
    pub users_known: bool,
    pub users: Field<Vec<UserRow>>,
    pub matching: Field<Vec<Opt>>,
    pub country: Field<String>,
    pub note: Field<bool>,
    pub products: Field<Vec<Opt>>,
    pub task_enabled: Field<bool>,
    pub task_text: Field<String>,
    pub task_due: Field<String>,
    pub fields: Vec<Row<Opt>>,
    /// Problems that belong to no field shown.
    pub other_errors: Vec<String>,
}

/// The problems of a save by field path, translated; each is taken once, what is left is shown at the top.
struct Problems<'t> {
    t: &'t SettingsTexts,
    users_known: bool,
    by_path: BTreeMap<String, Vec<String>>,
}

impl<'t> Problems<'t> {
    fn new(t: &'t SettingsTexts, users_known: bool, errors: &FieldErrors) -> Self {
        Self {
            t,
            users_known,
            by_path: errors.clone(),
        }
    }

    fn message(&self, path: &str) -> &'static str {
        let t = self.t;
        match path {
            "pipeline.pipeline_id" | "pipeline" => t.err_pipeline,
            "responsible.user_ids" if !self.users_known => t.users_unknown,
            "responsible.user_ids" => t.err_users_needed,
            "task.text" => t.err_task_text,
            "task.due_in_minutes" => t.err_due,
            "contacts.default_country" => t.err_country,
            p if p.starts_with("pipeline.statuses") => t.err_stage,
            p if p.starts_with("responsible.user_ids[") => t.err_user,
            p if p.starts_with("fields.") => t.err_field,
            _ => t.err_other,
        }
    }

    /// The messages at `path`, removed from what is left.
    fn take(&mut self, path: &str) -> Vec<String> {
        match self.by_path.remove(path) {
            Some(_) => vec![self.message(path).to_owned()],
            None => Vec::new(),
        }
    }

    fn take_all(&mut self, paths: &[&str]) -> Vec<String> {
        let mut out: Vec<String> = paths.iter().flat_map(|p| self.take(p)).collect();
        out.dedup();
        out
    }

    /// `value` with the messages of any of `paths`.
    fn field<T>(&mut self, value: T, paths: &[&str]) -> Field<T> {
        Field {
            value,
            errors: self.take_all(paths),
        }
    }

    fn rest(self) -> Vec<String> {
        let mut out: Vec<String> = self
            .by_path
            .keys()
            .map(|p| self.message(p).to_owned())
            .collect();
        out.dedup();
        out
    }
}

/// The open stages of a pipeline (not its incoming stage) in board order, then won and lost.
fn stage_list(p: &Pipeline) -> Vec<(i64, String)> {
    let mut open: Vec<_> = p
        .statuses
        .iter()
        .filter(|s| s.type_ != 1 && s.id != 142 && s.id != 143)
        .collect();
    open.sort_by_key(|s| s.sort);
    let closing = p.statuses.iter().filter(|s| s.id == 142 || s.id == 143);
    open.into_iter()
        .chain(closing)
        .filter_map(|s| Some((i64::try_from(s.id).ok()?, s.name.clone())))
        .collect()
}

/// The stage status `index` gets by default in pipeline `p`: open stages in order, then won and lost.
fn default_stage(stages: &[(i64, String)], index: usize) -> Option<i64> {
    match index {
        4 => Some(142),
        5 => Some(143),
        _ => {
            let open: Vec<i64> = stages
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| *id != 142 && *id != 143)
                .collect();
            open.get(index.min(open.len().saturating_sub(1))).copied()
        }
    }
}

fn stage_rows(
    t: &SettingsTexts,
    form: &Form,
    pipelines: &[Pipeline],
    p: &mut Problems<'_>,
) -> Vec<Row<Group>> {
    STATUS_KEYS
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let groups = pipelines
                .iter()
                .map(|pl| {
                    let stages = stage_list(pl);
                    let fallback = default_stage(&stages, i);
                    let chosen = pl.id.to_string() == form.pipeline_id.trim();
                    let options = stages
                        .iter()
                        .map(|(id, name)| Opt {
                            value: id.to_string(),
                            label: name.clone(),
                            selected: chosen && id.to_string() == form.stages[i].trim(),
                            default: Some(*id) == fallback,
                        })
                        .collect();
                    Group {
                        pipeline_id: pl.id.to_string(),
                        label: pl.name.clone(),
                        options,
                    }
                })
                .collect();
            Row {
                key,
                label: t.statuses[i],
                choices: p.field(groups, &[&format!("pipeline.statuses.{key}")]),
            }
        })
        .collect()
}

fn pipeline_options(form: &Form, pipelines: &[Pipeline]) -> Vec<Opt> {
    let mut out: Vec<Opt> = pipelines
        .iter()
        .map(|pl| {
            Opt::new(
                pl.id.to_string(),
                pl.name.clone(),
                pl.id.to_string() == form.pipeline_id.trim(),
            )
        })
        .collect();
    let known = form
        .pipeline_id
        .trim()
        .parse::<i64>()
        .is_ok_and(|id| find_pipeline(pipelines, id).is_some());
    if !known && !form.pipeline_id.trim().is_empty() {
        out.insert(
            0,
            Opt::new(
                form.pipeline_id.trim(),
                format!("#{}", form.pipeline_id.trim()),
                true,
            ),
        );
    }
    out
}

fn user_rows(t: &SettingsTexts, form: &Form, ready: &Ready, p: &mut Problems<'_>) -> Vec<UserRow> {
    let chosen = |id: &str| form.user_ids.iter().any(|u| u.trim() == id);
    let mut rows: Vec<UserRow> = ready
        .account
        .users
        .iter()
        .filter(|(_, _, active)| *active)
        .map(|(id, name, _)| UserRow {
            id: id.to_string(),
            name: name.clone(),
            checked: chosen(&id.to_string()),
            errors: Vec::new(),
        })
        .collect();
    // Chosen users the account no longer offers stay on the page, ticked, so the seller can untick them.
    for u in &form.user_ids {
        if !rows.iter().any(|r| r.id == u.trim()) {
            let name = ready
                .account
                .users
                .iter()
                .find(|(id, _, _)| id.to_string() == u.trim())
                .map_or_else(
                    || format!("#{}", u.trim()),
                    |(_, n, _)| format!("{n} ({})", t.inactive_user),
                );
            rows.push(UserRow {
                id: u.trim().to_owned(),
                name,
                checked: true,
                errors: Vec::new(),
            });
        }
    }
    for (i, u) in form.user_ids.iter().enumerate() {
        let errors = p.take(&format!("responsible.user_ids[{i}]"));
        if let Some(row) = rows.iter_mut().find(|r| r.id == u.trim()) {
            row.errors.extend(errors);
        }
    }
    rows
}

fn field_rows(
    t: &SettingsTexts,
    form: &Form,
    ready: &Ready,
    p: &mut Problems<'_>,
) -> Vec<Row<Opt>> {
    let conn = &ready.view.connection;
    let ours = [conn.field_order_number_id, conn.field_order_link_id];
    FIELD_KEYS
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let current = form.fields[i].trim();
            let mut options = vec![Opt::new("", t.not_sent, current.is_empty())];
            options.extend(
                ready
                    .account
                    .fields
                    .iter()
                    .filter(|f| {
                        let id = i64::try_from(f.id).ok();
                        f.id.to_string() == current
                            || (TEXT_FIELD_TYPES.contains(&f.type_.as_str()) && !ours.contains(&id))
                    })
                    .map(|f| {
                        Opt::new(
                            f.id.to_string(),
                            f.name.clone(),
                            f.id.to_string() == current,
                        )
                    }),
            );
            if !current.is_empty() && !options.iter().any(|o| o.selected) {
                options.push(Opt::new(current, format!("#{current}"), true));
            }
            Row {
                key,
                label: t.fields[i],
                choices: p.field(options, &[&format!("fields.{key}")]),
            }
        })
        .collect()
}

fn choices<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    labels: &[&'static str],
    current: &str,
) -> Vec<Opt> {
    all.iter()
        .zip(labels)
        .map(|(v, label)| Opt::new(name(*v), *label, name(*v) == current.trim()))
        .collect()
}

/// The form as the template prints it. `errors` are a refused save's problems; without them, what the stored
/// settings name that the account no longer has is marked instead.
pub fn form_view(
    t: &SettingsTexts,
    form: &Form,
    ready: &Ready,
    errors: Option<&FieldErrors>,
) -> FormView {
    let stale: FieldErrors;
    let errors = match errors {
        Some(e) => e,
        None => {
            stale = stale_ids(&ready.view, &ready.account)
                .into_iter()
                .map(|(path, id)| (path, vec![id.to_string()]))
                .collect();
            &stale
        }
    };
    let mut p = Problems::new(t, ready.account.users_known, errors);
    let languages = ["uz", "ru", "en"]
        .iter()
        .zip(["O'zbekcha", "Русский", "English"])
        .map(|(v, l)| Opt::new(*v, l, *v == form.language.trim()))
        .collect();
    let pipelines = &ready.account.pipelines;
    FormView {
        language: p.field(languages, &["language"]),
        entry: p.field(
            choices(
                Entry::ALL,
                Entry::as_str,
                &[t.entry_lead, t.entry_incoming],
                &form.entry,
            ),
            &["entry"],
        ),
        pipeline: p.field(
            pipeline_options(form, pipelines),
            &["pipeline", "pipeline.pipeline_id", "pipeline.statuses"],
        ),
        stages: stage_rows(t, form, pipelines, &mut p),
        mode: p.field(
            choices(
                ResponsibleMode::ALL,
                ResponsibleMode::as_str,
                &[t.mode_default, t.mode_contact_owner, t.mode_round_robin],
                &form.responsible_mode,
            ),
            &["responsible", "responsible.mode"],
        ),
        users_known: ready.account.users_known,
        users: {
            let rows = if ready.account.users_known {
                user_rows(t, form, ready, &mut p)
            } else {
                Vec::new()
            };
            p.field(rows, &["responsible.user_ids"])
        },
        matching: p.field(
            choices(
                MatchMode::ALL,
                MatchMode::as_str,
                &t.matches,
                &form.contacts_match,
            ),
            &["contacts", "contacts.match"],
        ),
        country: p.field(form.default_country.clone(), &["contacts.default_country"]),
        note: p.field(form.note, &["items", "items.note"]),
        products: p.field(
            choices(
                ProductsMode::ALL,
                ProductsMode::as_str,
                &[t.products_auto, t.products_off],
                &form.products,
            ),
            &["items.products"],
        ),
        task_enabled: p.field(form.task_enabled, &["task", "task.enabled"]),
        task_text: p.field(form.task_text.clone(), &["task.text"]),
        task_due: p.field(form.task_due.clone(), &["task.due_in_minutes"]),
        fields: field_rows(t, form, ready, &mut p),
        other_errors: p.rest(),
    }
}
