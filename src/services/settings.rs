//! A seller's settings (docs/CONTRACT.md §10): read, and changed only after the seller's own amoCRM confirmed
//! every id the change names (the pipeline and its stages, users, lead fields). A change is stored with its
//! `settings.updated` event in one transaction; the pipeline part goes to the connection, where the push reads
//! it.

use std::collections::HashSet;

use amocrm_client::{CustomField, Pipeline};
use serde_json::{Value, json};

use crate::domain::events::SettingsUpdated;
use crate::domain::order::FieldErrors;
use crate::domain::settings::{Entry, PipelineChoice, STATUS_KEYS, SellerSettings, Update};
use crate::services::Context;
use crate::services::tokens::{self, TokenError};
use crate::storage::StorageError;
use crate::storage::connections::Connection;
use crate::storage::events::NewEvent;
use crate::storage::settings::{SettingsWrite, Stored};

/// amoCRM's own closing stages, the defaults of `completed` and `cancelled`.
const WON: i64 = 142;
const LOST: i64 = 143;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("no amoCRM connection for this seller")]
    NotFound,
    #[error("invalid settings")]
    Invalid(FieldErrors),
    /// The seller's amoCRM could not confirm the ids (not connected any more, unreachable).
    #[error("the seller's amoCRM could not be read: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<TokenError> for SettingsError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::NotConnected => Self::NotFound,
            TokenError::Storage(e) => Self::Storage(e),
            other => Self::Unavailable(other.to_string()),
        }
    }
}

/// The settings object as the API and the page show it.
#[derive(Debug, Clone)]
pub struct View {
    pub connection: Connection,
    pub stored: Stored,
}

impl View {
    pub fn to_json(&self) -> Value {
        let mut v = self
            .stored
            .settings
            .to_json(pipeline_json(&self.connection));
        if let Some(o) = v.as_object_mut() {
            o.insert("problems".to_owned(), json!(self.stored.problems));
            o.insert(
                "products_catalog_id".to_owned(),
                json!(self.stored.products_catalog_id),
            );
        }
        v
    }
}

/// The `pipeline` part: the connection's mapping.
pub fn pipeline_json(conn: &Connection) -> Value {
    let statuses: serde_json::Map<String, Value> = STATUS_KEYS
        .iter()
        .zip(conn.stages())
        .map(|(k, id)| ((*k).to_owned(), json!(id)))
        .collect();
    json!({"pipeline_id": conn.pipeline_id, "statuses": statuses})
}

async fn connection(state: &Context, seller_id: &str) -> Result<Connection, SettingsError> {
    state
        .connection_of(seller_id, SettingsError::NotFound)
        .await
}

/// `GET …/settings`.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn get(state: &Context, seller_id: &str) -> Result<View, SettingsError> {
    let connection = connection(state, seller_id).await?;
    let stored = state.db.settings().get(seller_id).await?;
    Ok(View { connection, stored })
}

/// `PUT …/settings`: any subset of keys; every problem is reported at once, and nothing is stored unless
/// all of it holds.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn put(state: &Context, seller_id: &str, body: &Value) -> Result<View, SettingsError> {
    let current = get(state, seller_id).await?;
    let update = current
        .stored
        .settings
        .merge(body)
        .map_err(SettingsError::Invalid)?;
    let pipeline = confirm(state, &current.connection, &update).await?;
    if update.settings.entry == Entry::Incoming {
        let pid = pipeline
            .map(|(p, _)| p)
            .or(current.connection.pipeline_id)
            .and_then(|p| u64::try_from(p).ok());
        if let Some(pid) = pid {
            // Orders filed as Unsorted need the pipeline's incoming stage switched on.
            tokens::with_api(state, seller_id, |amo| async move {
                amo.api().set_pipeline_unsorted(pid, true).await
            })
            .await?;
        }
    }
    let event = (!update.changed.is_empty()).then(|| {
        NewEvent::of(
            seller_id,
            &SettingsUpdated {
                seller_id: seller_id.to_owned(),
                changed: update.changed.clone(),
            },
            None,
        )
    });
    state
        .db
        .settings()
        .save(SettingsWrite {
            seller_id: seller_id.to_owned(),
            settings: update.settings,
            pipeline: pipeline.map(|(pid, stages)| (current.connection.id, pid, stages)),
            event,
        })
        .await?;
    get(state, seller_id).await
}

/// What the seller's account holds, read once for a settings check or the settings page.
#[derive(Debug, Clone, Default)]
pub struct AccountCatalogue {
    pub pipelines: Vec<Pipeline>,
    /// `(id, name, active)` of the account's users; empty when the connecting user may not list them.
    pub users: Vec<(i64, String, bool)>,
    pub fields: Vec<CustomField>,
    /// Whether the users list was readable (only admins may read it).
    pub users_known: bool,
}

/// Reads the account's pipelines, users and lead fields (three calls).
pub async fn account_catalogue(
    state: &Context,
    seller_id: &str,
) -> Result<AccountCatalogue, SettingsError> {
    let pipelines = tokens::with_api(state, seller_id, |amo| async move {
        amo.api().pipelines().await
    })
    .await?;
    let fields = tokens::with_api(state, seller_id, |amo| async move {
        amo.api().lead_custom_fields().await
    })
    .await?;
    let users = super::users::list(state, seller_id).await?;
    Ok(AccountCatalogue {
        pipelines,
        users_known: users.is_some(),
        users: users.unwrap_or_default(),
        fields,
    })
}

/// Checks every amoCRM id the update names against the account; returns the pipeline mapping to store.
async fn confirm(
    state: &Context,
    conn: &Connection,
    update: &Update,
) -> Result<Option<(i64, [i64; 6])>, SettingsError> {
    let s = &update.settings;
    let needs_users =
        !s.responsible.user_ids.is_empty() && update.changed.iter().any(|k| k == "responsible");
    let needs_fields =
        !s.fields.mapped().is_empty() && update.changed.iter().any(|k| k == "fields");
    if update.pipeline.is_none() && !needs_users && !needs_fields {
        return Ok(None);
    }
    let account = account_catalogue(state, &conn.seller_id).await?;
    let mut problems = FieldErrors::new();
    let pipeline = match &update.pipeline {
        Some(choice) => check_pipeline(conn, choice, &account.pipelines, &mut problems),
        None => None,
    };
    if needs_users {
        check_users(s, &account, &mut problems);
    }
    if needs_fields {
        check_fields(s, &account.fields, &mut problems);
    }
    if problems.is_empty() {
        Ok(pipeline)
    } else {
        Err(SettingsError::Invalid(problems))
    }
}

fn add(problems: &mut FieldErrors, path: &str, msg: String) {
    problems.entry(path.to_owned()).or_default().push(msg);
}

/// The pipeline exists and holds every chosen stage. Stages not given keep the current ones on the same
/// pipeline; on another pipeline the four open ones must be given and the closing ones default to 142/143.
fn check_pipeline(
    conn: &Connection,
    choice: &PipelineChoice,
    pipelines: &[Pipeline],
    problems: &mut FieldErrors,
) -> Option<(i64, [i64; 6])> {
    let Some(p) = pipelines
        .iter()
        .find(|p| i64::try_from(p.id).ok() == Some(choice.pipeline_id))
    else {
        add(
            problems,
            "pipeline.pipeline_id",
            format!("no pipeline {} in the seller's amoCRM", choice.pipeline_id),
        );
        return None;
    };
    let same = conn.pipeline_id == Some(choice.pipeline_id);
    let current = conn.stages();
    let stage_ids: HashSet<i64> = p
        .statuses
        .iter()
        .filter_map(|s| i64::try_from(s.id).ok())
        .collect();
    let mut out = [0i64; 6];
    for (i, key) in STATUS_KEYS.iter().enumerate() {
        let fallback = match i {
            4 => Some(WON),
            5 => Some(LOST),
            _ => None,
        };
        let chosen = choice.statuses[i]
            .or_else(|| if same { current[i] } else { None })
            .or(fallback);
        let path = format!("pipeline.statuses.{key}");
        match chosen {
            Some(id) if id == WON || id == LOST || stage_ids.contains(&id) => out[i] = id,
            Some(id) => add(
                problems,
                &path,
                format!(
                    "status {id} is not a stage of pipeline {}",
                    choice.pipeline_id
                ),
            ),
            None => add(
                problems,
                &path,
                "is required when choosing another pipeline".to_owned(),
            ),
        }
    }
    Some((choice.pipeline_id, out))
}

fn check_users(s: &SellerSettings, account: &AccountCatalogue, problems: &mut FieldErrors) {
    if !account.users_known {
        add(
            problems,
            "responsible.user_ids",
            "the seller's amoCRM user may not list users (amoCRM allows it to admins only)"
                .to_owned(),
        );
        return;
    }
    for (i, id) in s.responsible.user_ids.iter().enumerate() {
        let active = account
            .users
            .iter()
            .any(|(uid, _, active)| uid == id && *active);
        if !active {
            add(
                problems,
                &format!("responsible.user_ids[{i}]"),
                format!("no active user {id} in the seller's amoCRM"),
            );
        }
    }
}

fn check_fields(s: &SellerSettings, fields: &[CustomField], problems: &mut FieldErrors) {
    for (key, id) in s.fields.mapped() {
        if !fields.iter().any(|f| i64::try_from(f.id).ok() == Some(id)) {
            add(
                problems,
                &format!("fields.{key}"),
                format!("no lead field {id} in the seller's amoCRM"),
            );
        }
    }
}
