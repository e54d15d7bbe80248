//! The seller's own settings page (docs/CONTRACT.md §10): a single-use, 30-minute link made for the marketplace
//! (`POST /api/v1/settings-sessions`, or on the connect success page), bound to the first browser that opens
//! it. The page reads the account live from amoCRM and saves through [`settings::put`], so it is held to
//! exactly the checks of the API.
//!
//! The link's token and the browser's cookie are stored only as hashes. The form's CSRF token is an HMAC of
//! the session keyed with the browser's cookie: only the bound browser can compute it, and nothing more needs
//! storing.

use std::time::Duration;

use amocrm_client::Pipeline;
use hmac::{KeyInit, Mac};
use serde_json::{Map, Value, json};

use super::connect::{self, ConnectError, CreatedLink, FieldProblem, IssuedLink, SessionFields};
use super::settings::{self, AccountCatalogue, SettingsError, View};
use crate::domain::ids::{constant_time_eq, random_token, sha256_hex};
use crate::domain::settings::STATUS_KEYS;
use crate::domain::status::ConnectionStatus;
use crate::services::Context;
use crate::storage::settings_sessions::{NewSettingsSession, SettingsSession};
use crate::storage::{self, StorageError};

/// Lifetime of a settings link (and of the page's form: a save after it is refused).
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
/// The cookie that binds a settings link to the browser that opened it first.
pub const BROWSER_COOKIE: &str = "amocrm_settings";

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn ttl() -> chrono::Duration {
    chrono::Duration::from_std(SESSION_TTL).unwrap_or(chrono::Duration::MAX)
}

/// `POST /api/v1/settings-sessions`: the connect link's checks, and the seller must have connected.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn create_session(
    state: &Context,
    seller_id: &str,
    return_url: Option<&str>,
    lang: Option<&str>,
) -> Result<CreatedLink, ConnectError> {
    let SessionFields {
        seller,
        return_url,
        lang,
    } = connect::check_session_fields(state, seller_id, return_url, lang)?;
    if state
        .db
        .connections()
        .by_seller(seller.as_str())
        .await?
        .is_none()
    {
        return Err(ConnectError::Invalid(vec![FieldProblem {
            field: "seller_id",
            message: "has no amoCRM connection: the seller must connect first".to_owned(),
        }]));
    }
    let now = storage::now();
    // Old links are removed here rather than by a worker: the table only grows through this call.
    state
        .db
        .settings_sessions()
        .prune_expired(now - chrono::Duration::days(1))
        .await?;
    let issued = IssuedLink::new(state, "settings", &seller, now, ttl());
    let row = NewSettingsSession {
        token_hash: issued.token_hash,
        seller_id: seller.as_str().to_owned(),
        return_url,
        lang,
        expires_at: issued.expires_at,
        created_at: issued.created_at,
    };
    state.db.settings_sessions().insert(row).await?;
    Ok(issued.link)
}

/// What a request to the page may do.
#[derive(Debug, Clone)]
pub enum Access {
    Unknown,
    Expired,
    /// The link belongs to another browser (or, for a save, this browser never opened it).
    OtherBrowser,
    /// A save whose form token is missing or wrong.
    BadForm,
    Granted(Box<Granted>),
}

#[derive(Debug, Clone)]
pub struct Granted {
    pub session: SettingsSession,
    /// The cookie value to (re)set.
    pub browser_token: String,
    /// The form token for this session and browser.
    pub csrf: String,
}

/// The form token of a session for one browser: HMAC-SHA256 keyed with the browser's cookie.
fn csrf_token(session: &SettingsSession, browser: &str) -> String {
    match <HmacSha256 as KeyInit>::new_from_slice(browser.as_bytes()) {
        Ok(mut m) => {
            m.update(b"settings-form:");
            m.update(session.token_hash.as_bytes());
            m.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
        // HMAC takes keys of any length; a token that cannot be made is one that never matches.
        Err(_) => random_token(64),
    }
}

/// The session of a live link, or why there is none.
async fn live_session(
    state: &Context,
    token: &str,
) -> Result<Result<SettingsSession, Access>, StorageError> {
    if token.is_empty() || token.len() > 128 {
        return Ok(Err(Access::Unknown));
    }
    let hash = sha256_hex(token.as_bytes());
    let Some(session) = state.db.settings_sessions().by_token_hash(&hash).await? else {
        return Ok(Err(Access::Unknown));
    };
    if session.expires_at < storage::now() {
        return Ok(Err(Access::Expired));
    }
    Ok(Ok(session))
}

fn same_browser(session: &SettingsSession, browser: &str) -> bool {
    session
        .browser_hash
        .as_deref()
        .is_some_and(|h| constant_time_eq(h.as_bytes(), sha256_hex(browser.as_bytes()).as_bytes()))
}

fn granted(session: SettingsSession, browser: String) -> Access {
    let csrf = csrf_token(&session, &browser);
    Access::Granted(Box::new(Granted {
        session,
        browser_token: browser,
        csrf,
    }))
}

/// `GET /settings/{token}`: the first open binds the link to this browser; later opens must come from it.
pub async fn open(
    state: &Context,
    token: &str,
    cookie: Option<&str>,
) -> Result<Access, StorageError> {
    let mut session = match live_session(state, token).await? {
        Ok(s) => s,
        Err(refused) => return Ok(refused),
    };
    let browser = connect::browser_token(cookie);
    if session.browser_hash.is_none() {
        let hash = sha256_hex(browser.as_bytes());
        if state.db.settings_sessions().bind(session.id, &hash).await? {
            session.browser_hash = Some(hash);
            session.opened_at = Some(storage::now());
        } else {
            // Another browser bound it a moment ago: judge against what is stored now.
            match live_session(state, token).await? {
                Ok(s) => session = s,
                Err(refused) => return Ok(refused),
            }
        }
    }
    if !same_browser(&session, &browser) {
        return Ok(Access::OtherBrowser);
    }
    Ok(granted(session, browser))
}

/// `POST /settings/{token}`: only the bound browser, with the form token of this session and browser.
pub async fn authorize_save(
    state: &Context,
    token: &str,
    cookie: Option<&str>,
    presented_csrf: &str,
) -> Result<Access, StorageError> {
    let session = match live_session(state, token).await? {
        Ok(s) => s,
        Err(refused) => return Ok(refused),
    };
    let Some(browser) = cookie.filter(|c| same_browser(&session, c)) else {
        return Ok(Access::OtherBrowser);
    };
    let expected = csrf_token(&session, browser);
    if presented_csrf.is_empty()
        || !constant_time_eq(expected.as_bytes(), presented_csrf.as_bytes())
    {
        return Ok(Access::BadForm);
    }
    Ok(granted(session, browser.to_owned()))
}

/// Why the page cannot offer the form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// The connection is gone or broken: only reconnecting helps.
    Reconnect,
    /// amoCRM did not answer now; trying again later may work.
    Unavailable,
}

/// What the page shows: the stored settings with the account read live, or why it cannot.
#[derive(Debug, Clone)]
pub enum Page {
    Ready(Box<Ready>),
    Unreadable(Unreadable),
}

#[derive(Debug, Clone)]
pub struct Ready {
    pub view: View,
    pub account: AccountCatalogue,
}

/// Reads the seller's settings and their account (pipelines, users, lead fields).
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn load(state: &Context, seller_id: &str) -> Result<Page, StorageError> {
    let view = match settings::get(state, seller_id).await {
        Ok(v) => v,
        Err(e) => return unreadable(e).map(Page::Unreadable),
    };
    match view.connection.status {
        ConnectionStatus::Active => {}
        ConnectionStatus::RefreshFailed | ConnectionStatus::Revoked => {
            return Ok(Page::Unreadable(Unreadable::Reconnect));
        }
        // Refused by amoCRM for now (unpaid, blocked): it comes back without the seller reconnecting.
        _ => return Ok(Page::Unreadable(Unreadable::Unavailable)),
    }
    match settings::account_catalogue(state, seller_id).await {
        Ok(account) => Ok(Page::Ready(Box::new(Ready { view, account }))),
        Err(e) => {
            tracing::warn!(error = %e, "settings page: the account could not be read");
            unreadable(e).map(Page::Unreadable)
        }
    }
}

fn unreadable(e: SettingsError) -> Result<Unreadable, StorageError> {
    match e {
        SettingsError::NotFound => Ok(Unreadable::Reconnect),
        SettingsError::Invalid(_) | SettingsError::Unavailable(_) => Ok(Unreadable::Unavailable),
        SettingsError::Storage(e) => Err(e),
    }
}

/// What a save came to.
#[derive(Debug)]
pub enum Saved {
    Done,
    /// Nothing was stored: the problems by the API's field paths (`pipeline.statuses.paid`, …).
    Invalid(crate::domain::order::FieldErrors),
    Unreadable(Unreadable),
}

/// Saves the page's form through the API's use case.
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn save(state: &Context, seller_id: &str, form: &Form) -> Result<Saved, StorageError> {
    let current = match settings::get(state, seller_id).await {
        Ok(v) => v,
        Err(e) => return unreadable(e).map(Saved::Unreadable),
    };
    match settings::put(state, seller_id, &form.to_body(&current)).await {
        Ok(_) => Ok(Saved::Done),
        Err(SettingsError::Invalid(problems)) => Ok(Saved::Invalid(problems)),
        Err(e) => unreadable(e).map(Saved::Unreadable),
    }
}

/// The order fields a lead field can be mapped to, in the order the page shows them.
pub const FIELD_KEYS: [&str; 4] = [
    "delivery_method",
    "delivery_address",
    "payment_method",
    "source",
];

/// The page's form, as the stored settings fill it or as the browser sent it. Values stay text until the
/// settings check reads them, so a bad value is reported at its field like in the API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    pub csrf: String,
    pub language: String,
    pub entry: String,
    pub pipeline_id: String,
    /// The stage of each order status, in `STATUS_KEYS` order.
    pub stages: [String; 6],
    pub responsible_mode: String,
    pub user_ids: Vec<String>,
    /// Whether the form offered the users (it does only when amoCRM let us list them).
    pub users_listed: bool,
    pub contacts_match: String,
    pub default_country: String,
    pub note: bool,
    pub products: String,
    pub task_enabled: bool,
    pub task_text: String,
    pub task_due: String,
    /// The lead field of each of `FIELD_KEYS`; empty: not sent.
    pub fields: [String; 4],
}

fn opt_id(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// A form value as the settings check reads it: a number when it is one, else the text (reported there).
fn number_or_text(raw: &str) -> Value {
    let raw = raw.trim();
    raw.parse::<i64>().map_or_else(|_| json!(raw), |n| json!(n))
}

impl Form {
    /// The stored settings.
    pub fn from_view(view: &View) -> Self {
        let s = &view.stored.settings;
        let f = &s.fields;
        Self {
            csrf: String::new(),
            language: s.language.as_str().to_owned(),
            entry: s.entry.as_str().to_owned(),
            pipeline_id: opt_id(view.connection.pipeline_id),
            stages: view.connection.stages().map(opt_id),
            responsible_mode: s.responsible.mode.as_str().to_owned(),
            user_ids: s.responsible.user_ids.iter().map(i64::to_string).collect(),
            users_listed: true,
            contacts_match: s.contacts.match_mode.as_str().to_owned(),
            default_country: s.contacts.default_country.clone(),
            note: s.items.note,
            products: s.items.products.as_str().to_owned(),
            task_enabled: s.task.enabled,
            task_text: s.task.text.clone(),
            task_due: s.task.due_in_minutes.to_string(),
            fields: [
                f.delivery_method,
                f.delivery_address,
                f.payment_method,
                f.source,
            ]
            .map(opt_id),
        }
    }

    /// A submitted form (`application/x-www-form-urlencoded` pairs; checkboxes are present only when on).
    pub fn parse(pairs: &[(String, String)]) -> Self {
        let mut f = Self::default();
        for (k, v) in pairs {
            let v = v.clone();
            match k.as_str() {
                "csrf" => f.csrf = v,
                "language" => f.language = v,
                "entry" => f.entry = v,
                "pipeline_id" => f.pipeline_id = v,
                "responsible_mode" => f.responsible_mode = v,
                "user_id" => f.user_ids.push(v),
                "users_listed" => f.users_listed = true,
                "contacts_match" => f.contacts_match = v,
                "default_country" => f.default_country = v,
                "note" => f.note = true,
                "products" => f.products = v,
                "task_enabled" => f.task_enabled = true,
                "task_text" => f.task_text = v,
                "task_due" => f.task_due = v,
                other => f.set_indexed(other, v),
            }
        }
        f
    }

    /// `stage_{status}` and `field_{key}`.
    fn set_indexed(&mut self, key: &str, v: String) {
        if let Some(status) = key.strip_prefix("stage_")
            && let Some(i) = STATUS_KEYS.iter().position(|k| *k == status)
        {
            self.stages[i] = v;
        } else if let Some(field) = key.strip_prefix("field_")
            && let Some(i) = FIELD_KEYS.iter().position(|k| *k == field)
        {
            self.fields[i] = v;
        }
    }

    /// Whether the form names another pipeline or stage than the connection has.
    fn pipeline_changed(&self, current: &View) -> bool {
        self.pipeline_id.trim() != opt_id(current.connection.pipeline_id)
            || self
                .stages
                .iter()
                .zip(current.connection.stages())
                .any(|(s, c)| s.trim() != opt_id(c))
    }

    /// The settings object of `PUT …/settings`. The pipeline goes only when it changed, so saving the rest
    /// neither re-checks it nor reports it as changed.
    pub fn to_body(&self, current: &View) -> Value {
        let mut body = json!({
            "language": self.language.trim(),
            "entry": self.entry.trim(),
            "responsible": {"mode": self.responsible_mode.trim()},
            "contacts": {"match": self.contacts_match.trim(), "default_country": self.default_country.trim()},
            "items": {"note": self.note, "products": self.products.trim()},
            "task": {
                "enabled": self.task_enabled,
                "text": self.task_text,
                "due_in_minutes": number_or_text(&self.task_due),
            },
        });
        if self.users_listed {
            let ids: Vec<Value> = self.user_ids.iter().map(|u| number_or_text(u)).collect();
            body["responsible"]["user_ids"] = Value::Array(ids);
        }
        let fields: Map<String, Value> = FIELD_KEYS
            .iter()
            .zip(&self.fields)
            .map(|(k, v)| {
                let v = if v.trim().is_empty() {
                    Value::Null
                } else {
                    number_or_text(v)
                };
                ((*k).to_owned(), v)
            })
            .collect();
        body["fields"] = Value::Object(fields);
        if self.pipeline_changed(current) && !self.pipeline_id.trim().is_empty() {
            let statuses: Map<String, Value> = STATUS_KEYS
                .iter()
                .zip(&self.stages)
                .filter(|(_, v)| !v.trim().is_empty())
                .map(|(k, v)| ((*k).to_owned(), number_or_text(v)))
                .collect();
            body["pipeline"] = json!({
                "pipeline_id": number_or_text(&self.pipeline_id),
                "statuses": statuses,
            });
        }
        body
    }
}

/// What the stored settings name that the account no longer has (a deleted pipeline, user or field), by
/// the API's field paths, so the page can show each at its field.
pub fn stale_ids(view: &View, account: &AccountCatalogue) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    let pipeline = view
        .connection
        .pipeline_id
        .and_then(|id| find_pipeline(&account.pipelines, id));
    if let Some(id) = view.connection.pipeline_id
        && pipeline.is_none()
    {
        out.push(("pipeline.pipeline_id".to_owned(), id));
    }
    if account.users_known {
        for (i, id) in view.stored.settings.responsible.user_ids.iter().enumerate() {
            if !account
                .users
                .iter()
                .any(|(u, _, active)| u == id && *active)
            {
                out.push((format!("responsible.user_ids[{i}]"), *id));
            }
        }
    }
    for (key, id) in view.stored.settings.fields.mapped() {
        if !account
            .fields
            .iter()
            .any(|f| i64::try_from(f.id).ok() == Some(id))
        {
            out.push((format!("fields.{key}"), id));
        }
    }
    out
}

/// The pipeline `id` of the account.
pub fn find_pipeline(pipelines: &[Pipeline], id: i64) -> Option<&Pipeline> {
    pipelines
        .iter()
        .find(|p| i64::try_from(p.id).ok() == Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_submitted_form_keeps_repeated_users_and_unchecked_boxes_are_off() {
        let f = Form::parse(&pairs(&[
            ("csrf", "t"),
            ("responsible_mode", "round_robin"),
            ("users_listed", "1"),
            ("user_id", "11"),
            ("user_id", "12"),
            ("stage_paid", "700"),
            ("field_source", "55"),
            ("field_nonsense", "1"),
            ("task_due", "abc"),
        ]));
        assert_eq!(f.user_ids, ["11", "12"]);
        assert_eq!(f.stages[2], "700");
        assert_eq!(f.fields[3], "55");
        assert!(f.users_listed && !f.note && !f.task_enabled);
        assert_eq!(number_or_text(&f.task_due), json!("abc"));
        assert_eq!(number_or_text(" 60 "), json!(60));
    }

    #[test]
    fn csrf_tokens_differ_by_browser_and_session() {
        let now = storage::now();
        let session = |hash: &str| SettingsSession {
            id: 1,
            token_hash: hash.to_owned(),
            seller_id: "s".into(),
            return_url: None,
            lang: "auto".into(),
            browser_hash: None,
            expires_at: now,
            opened_at: None,
            created_at: now,
        };
        let a = csrf_token(&session("h1"), "browser-a");
        assert_eq!(a, csrf_token(&session("h1"), "browser-a"));
        assert_ne!(a, csrf_token(&session("h1"), "browser-b"));
        assert_ne!(a, csrf_token(&session("h2"), "browser-a"));
        assert_eq!(a.len(), 64);
    }
}
