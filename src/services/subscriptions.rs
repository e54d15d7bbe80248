//! Event subscriptions of the marketplace: validation, the sealed signing secret, create/read/update/delete.
//!
//! The secret is encrypted with the vault (bound to the subscription's row) and never leaves the service
//! again: [`SubscriptionView`] has no field for it.

use std::collections::BTreeMap;

use chrono::{NaiveDateTime, SecondsFormat};
use serde::Serialize;

use crate::domain::events::EventKind;
use crate::domain::ids::prefixed_id;
use crate::domain::outbound::TargetPolicy;
use crate::services::Context;
use crate::services::keys::RotationReport;
use crate::storage::events::NewEvent;
use crate::storage::subscriptions::{Subscription, SubscriptionChanges, secret_aad};
use crate::storage::{self, Db, StorageError, cipher::Keyring};

/// Longest accepted URL and secret.
pub const MAX_URL_LEN: usize = 2048;
pub const MAX_SECRET_LEN: usize = 512;

/// Field → messages, as the API's 422 details.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    #[error("invalid fields")]
    Invalid(FieldErrors),
    #[error("subscription not found")]
    NotFound,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a client may send; every field optional here so create and update share the checks.
#[derive(Debug, Clone, Default)]
pub struct SubscriptionInput {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub secret: Option<String>,
    pub active: Option<bool>,
}

/// A subscription as the API shows it: never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
    pub created_at: String,
    pub updated_at: String,
}

pub fn rfc3339(t: NaiveDateTime) -> String {
    storage::from_db(t).to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl From<&Subscription> for SubscriptionView {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id.clone(),
            url: s.url.clone(),
            events: s.event_list(),
            active: s.active,
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
        }
    }
}

fn push(errors: &mut FieldErrors, field: &str, msg: impl Into<String>) {
    errors.entry(field.to_owned()).or_default().push(msg.into());
}

/// An http(s) URL with a host, no credentials, no fragment, and not an internal address (see
/// `domain::outbound`; names are checked again when a delivery resolves them).
pub fn check_url(raw: &str, policy: &TargetPolicy) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("must not be empty".into());
    }
    if raw.chars().count() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} characters"));
    }
    let url =
        url::Url::parse(raw).map_err(|_| "must be an absolute http or https URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must use http or https".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".into());
    }
    // A name DNS can hold (the url parser keeps characters such as `*` in a host): what the API document states.
    if let Some(url::Host::Domain(name)) = url.host()
        && !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err("must name a host of letters, digits, '-' and '.'".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; sign with the secret instead".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment".into());
    }
    policy
        .check_host(url.host_str().unwrap_or(""))
        .map_err(str::to_owned)?;
    Ok(url.to_string())
}

/// Known event names or `"*"`, at least one, without repeats (order kept).
pub fn check_events(list: &[String]) -> Result<Vec<String>, Vec<String>> {
    let mut errors = Vec::new();
    if list.is_empty() {
        errors.push("must name at least one event, or \"*\" for all".to_owned());
    }
    let mut out: Vec<String> = Vec::new();
    for e in list {
        let e = e.trim();
        if e != "*" && EventKind::parse(e).is_none() {
            errors.push(format!(
                "unknown event `{}`; use one of {} or \"*\"",
                e.chars().take(64).collect::<String>(),
                EventKind::names().join(", ")
            ));
        } else if !out.iter().any(|x| x == e) {
            out.push(e.to_owned());
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn check_secret(raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if raw.chars().count() > MAX_SECRET_LEN {
        return Err(format!("must be at most {MAX_SECRET_LEN} characters"));
    }
    Ok(())
}

/// One field of a subscription input: its value checked when present, "is required" when absent but
/// `required`; each problem is recorded under `field`.
fn check_field<T: ?Sized, U>(
    errors: &mut FieldErrors,
    field: &str,
    value: Option<&T>,
    required: bool,
    check: impl FnOnce(&T) -> Result<U, Vec<String>>,
) -> Option<U> {
    match value.map(check) {
        Some(Ok(v)) => Some(v),
        Some(Err(problems)) => {
            for m in problems {
                push(errors, field, m);
            }
            None
        }
        None => {
            if required {
                push(errors, field, "is required");
            }
            None
        }
    }
}

/// Checks what is present; `require_all` for create (url, events and secret are required).
fn validate(
    input: &SubscriptionInput,
    require_all: bool,
    policy: &TargetPolicy,
) -> Result<(Option<String>, Option<Vec<String>>), FieldErrors> {
    let mut errors = FieldErrors::new();
    let url = check_field(&mut errors, "url", input.url.as_deref(), require_all, |u| {
        check_url(u, policy).map_err(|m| vec![m])
    });
    let events = check_field(
        &mut errors,
        "events",
        input.events.as_deref(),
        require_all,
        check_events,
    );
    check_field(
        &mut errors,
        "secret",
        input.secret.as_deref(),
        require_all,
        |s| check_secret(s).map_err(|m| vec![m]),
    );
    if errors.is_empty() {
        Ok((url, events))
    } else {
        Err(errors)
    }
}

fn events_json(events: &[String]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".to_owned())
}

#[tracing::instrument(skip_all)]
pub async fn create(
    state: &Context,
    input: SubscriptionInput,
) -> Result<SubscriptionView, SubscriptionError> {
    let (url, events) =
        validate(&input, true, state.outbound.policy()).map_err(SubscriptionError::Invalid)?;
    let (Some(url), Some(events), Some(secret)) = (url, events, input.secret) else {
        return Err(SubscriptionError::Invalid(FieldErrors::new()));
    };
    let id = prefixed_id("whk");
    let now = storage::now();
    let row = Subscription {
        secret_enc: state.keys.encrypt(secret_aad(&id), &secret),
        id,
        url,
        events: events_json(&events),
        active: input.active.unwrap_or(true),
        created_at: now,
        updated_at: now,
    };
    let saved = state.db.subscriptions().insert(row).await?;
    Ok(SubscriptionView::from(&saved))
}

#[tracing::instrument(skip(db))]
pub async fn get(db: &Db, id: &str) -> Result<SubscriptionView, SubscriptionError> {
    db.subscriptions()
        .find(id)
        .await?
        .map(|s| SubscriptionView::from(&s))
        .ok_or(SubscriptionError::NotFound)
}

pub async fn list(
    db: &Db,
    offset: i64,
    limit: i64,
) -> Result<(Vec<SubscriptionView>, i64), SubscriptionError> {
    let (rows, total) = db.subscriptions().page(offset, limit).await?;
    Ok((rows.iter().map(SubscriptionView::from).collect(), total))
}

#[tracing::instrument(skip_all)]
pub async fn update(
    state: &Context,
    id: &str,
    input: SubscriptionInput,
) -> Result<SubscriptionView, SubscriptionError> {
    let (url, events) =
        validate(&input, false, state.outbound.policy()).map_err(SubscriptionError::Invalid)?;
    let changes = SubscriptionChanges {
        url,
        events: events.as_deref().map(events_json),
        secret_enc: input
            .secret
            .as_deref()
            .map(|s| state.keys.encrypt(secret_aad(id), s)),
        active: input.active,
        updated_at: Some(storage::now()),
    };
    state
        .db
        .subscriptions()
        .update(id, changes)
        .await?
        .map(|s| SubscriptionView::from(&s))
        .ok_or(SubscriptionError::NotFound)
}

#[tracing::instrument(skip(db))]
pub async fn delete(db: &Db, id: &str) -> Result<(), SubscriptionError> {
    if db.subscriptions().delete(id).await? {
        Ok(())
    } else {
        Err(SubscriptionError::NotFound)
    }
}

/// Re-encrypts subscription secrets not under the active key (part of `keys rotate`); a secret changed by a
/// concurrent `PATCH` is left to it.
#[tracing::instrument(skip_all)]
pub async fn rotate_secrets(db: &Db, keys: &Keyring) -> Result<RotationReport, StorageError> {
    let mut report = RotationReport::default();
    for row in db.subscriptions().all().await? {
        report.scanned += 1;
        if !keys.needs_rotation(&row.secret_enc) {
            report.already_current += 1;
            continue;
        }
        let Ok(plain) = row.secret(keys) else {
            report.failed += 1;
            continue;
        };
        let fresh = keys.encrypt(
            secret_aad(&row.id),
            secrecy::ExposeSecret::expose_secret(&plain),
        );
        if db
            .subscriptions()
            .replace_secret(&row.id, row.secret_enc, fresh)
            .await?
        {
            report.rotated += 1;
        } else {
            report.skipped_concurrent += 1;
        }
    }
    Ok(report)
}

/// The event name of a test delivery. It is not in the catalogue, so a receiver that acts only on the
/// events it knows ignores it.
pub const TEST_EVENT: &str = "webhook.test";

/// Sends one signed test event to the subscription now, outside the event log and the delivery queue, so
/// an operator can check a receiver's URL, secret and signature check without waiting for a real event.
/// Paused subscriptions are tested too: that is how one is checked before it is turned back on. Answers
/// with the subscription as it stands and the attempt.
#[tracing::instrument(skip(ctx))]
pub async fn send_test(
    ctx: &crate::services::Context,
    id: &str,
) -> Result<(SubscriptionView, crate::services::delivery::Attempt), SubscriptionError> {
    let sub = ctx
        .db
        .subscriptions()
        .find(id)
        .await?
        .ok_or(SubscriptionError::NotFound)?;
    // Built like every event (id, timestamp, envelope), but never stored.
    let event = NewEvent::new(
        TEST_EVENT,
        "",
        serde_json::json!({
            "subscription_id": sub.id,
            "message": "A test event sent from the operator dashboard.",
        }),
        None,
    );
    let attempt = crate::services::delivery::post_sealed(
        &ctx.outbound,
        ctx.settings.delivery_timeout,
        &ctx.keys,
        (&sub.id, &sub.secret_enc),
        &sub.url,
        &event.id,
        &event.payload,
        storage::now(),
    )
    .await;
    tracing::info!(subscription_id = %sub.id, delivered = attempt.delivered, "test event sent");
    Ok((SubscriptionView::from(&sub), attempt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_urls_with_a_host_are_accepted() {
        let local = TargetPolicy::new(["127.0.0.1"]);
        let check_url = |u: &str| check_url(u, &local);
        assert!(check_url("https://example.com/hook").is_ok());
        assert!(check_url("http://127.0.0.1:9000/x").is_ok());
        assert!(super::check_url("http://127.0.0.1:9000/x", &TargetPolicy::default()).is_err());
        assert!(check_url("ftp://example.com/").is_err());
        assert!(check_url("javascript:alert(1)").is_err());
        assert!(check_url("/relative").is_err());
        assert!(check_url("https://user:pw@example.com/").is_err());
        assert!(check_url("").is_err());
        assert!(check_url("HTTP://A0*").is_err());
        assert!(check_url("https://hooks_1.example.com/").is_err());
        assert!(check_url("https://Пример.рф/hook").is_ok());
    }

    #[test]
    fn events_must_be_known_names_or_the_wildcard() {
        assert_eq!(check_events(&["*".into()]).ok(), Some(vec!["*".to_owned()]));
        assert_eq!(
            check_events(&["payment.completed".into(), "payment.completed".into()]).ok(),
            Some(vec!["payment.completed".to_owned()])
        );
        assert!(check_events(&[]).is_err());
        assert!(check_events(&["payment.done".into()]).is_err());
    }
}
