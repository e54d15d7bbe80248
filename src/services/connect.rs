//! Connecting a seller's amoCRM: connect sessions, the connect page's OAuth `state`, the OAuth callback,
//! revocation (API and amoCRM's uninstall hook), and the connection views of the API.
//!
//! The callback trusts nothing in its query: `state` must be one we minted (stored hashed), unused, less
//! than 30 minutes old and presented by the browser it was minted for (cookie); `client_id` must be ours;
//! `referer` must parse as an allowed account host — all before the code is exchanged, which is the first
//! request that carries the client secret. Tokens are stored encrypted, bound to the seller's row.

use std::time::Duration;

use amocrm_client::{AccountHost, AuthMode};
use chrono::{DateTime, NaiveDateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::provisioning::{self, ProvisionError, ProvisionReport};
use super::tokens::{self, TokenError};
use crate::app::AppState;
use crate::domain::ids::{SellerId, constant_time_eq, random_token, sha256_hex};
use crate::domain::status::{ConnectionStatus, OrderStatus};
use crate::storage::connections::{self, Connection, NewConnection, ReconnectChanges};
use crate::storage::events::{self, NewEvent};
use crate::storage::sessions::{self, ConnectSession, NewSession, NewState};
use crate::storage::{self, StorageError};

/// Lifetime of a connect session and of each OAuth state.
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 60);
pub const STATE_TTL: Duration = Duration::from_secs(30 * 60);
/// Name of the cookie that binds OAuth states to the browser that opened the connect page.
pub const BROWSER_COOKIE: &str = "amocrm_connect";

/// The languages of the seller pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Uz,
    Ru,
    En,
}

impl Lang {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "uz" => Some(Self::Uz),
            "ru" => Some(Self::Ru),
            "en" => Some(Self::En),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uz => "uz",
            Self::Ru => "ru",
            Self::En => "en",
        }
    }

    /// The first supported language of an `Accept-Language` header, by quality.
    pub fn from_accept_language(header: &str) -> Option<Self> {
        let mut langs: Vec<(f32, Self)> = header
            .split(',')
            .filter_map(|part| {
                let mut it = part.trim().split(';');
                let tag = it.next()?.trim();
                let primary = tag.split('-').next()?;
                let q = it
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .and_then(|q| q.parse::<f32>().ok())
                    .unwrap_or(1.0);
                Some((q, Self::parse(primary)?))
            })
            .filter(|(q, _)| *q > 0.0)
            .collect();
        langs.sort_by(|a, b| b.0.total_cmp(&a.0));
        langs.first().map(|(_, l)| *l)
    }
}

/// A field problem of a request, for 422 details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid fields")]
    Invalid(Vec<FieldProblem>),
    #[error("no amoCRM connection for this seller")]
    NotFound,
    #[error("amoCRM could not be reached: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConnectError {
    ConnectError::Invalid(vec![FieldProblem {
        field,
        message: message.into(),
    }])
}

fn dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A new connect session: the raw token is shown once (in `connect_url`) and stored only as a hash.
#[derive(Debug, Clone)]
pub struct CreatedSession {
    pub token: String,
    pub connect_url: String,
    pub expires_at: DateTime<Utc>,
    pub seller_id: String,
}

/// `POST /api/v1/connect-sessions`: validates and stores a single-use, 30-minute session.
pub async fn create_session(
    state: &AppState,
    seller_id: &str,
    return_url: Option<&str>,
    lang: Option<&str>,
) -> Result<CreatedSession, ConnectError> {
    let mut problems = Vec::new();
    let seller = match SellerId::parse(seller_id) {
        Ok(s) => Some(s),
        Err(msg) => {
            problems.push(FieldProblem {
                field: "seller_id",
                message: msg.to_owned(),
            });
            None
        }
    };
    let return_url = match return_url.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(u) => match check_return_url(state, u) {
            Ok(u) => Some(u),
            Err(msg) => {
                problems.push(FieldProblem {
                    field: "return_url",
                    message: msg,
                });
                None
            }
        },
    };
    let lang = match lang.map(str::trim).filter(|s| !s.is_empty()) {
        None => "auto".to_owned(),
        Some(l) => match Lang::parse(l) {
            Some(l) => l.as_str().to_owned(),
            None => {
                problems.push(FieldProblem {
                    field: "lang",
                    message: "must be one of uz, ru, en".to_owned(),
                });
                String::new()
            }
        },
    };
    let Some(seller) = seller.filter(|_| problems.is_empty()) else {
        return Err(ConnectError::Invalid(problems));
    };
    let token = random_token(43);
    let now = storage::now();
    let expires_at = now + dur(SESSION_TTL);
    let row = NewSession {
        token_hash: sha256_hex(token.as_bytes()),
        seller_id: seller.as_str().to_owned(),
        return_url,
        lang,
        expires_at,
        created_at: now,
    };
    state
        .db
        .run(move |c| sessions::insert_session(c, &row))
        .await?;
    Ok(CreatedSession {
        connect_url: format!("{}/connect/{token}", state.settings.base_url()),
        token,
        expires_at: storage::from_db(expires_at),
        seller_id: seller.as_str().to_owned(),
    })
}

/// A return URL must be an absolute http(s) URL starting with one of the configured prefixes.
fn check_return_url(state: &AppState, raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|_| "must be an absolute URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http or https URL".to_owned());
    }
    if url.username() != "" || url.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    let normalized = url.as_str();
    let allowed = state.settings.return_url_allowlist.iter().any(|prefix| {
        let p = url::Url::parse(prefix)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| prefix.clone());
        // A prefix without a path boundary would let `https://shop.example.evil` match `https://shop.example`.
        normalized.starts_with(&p)
            && (p.ends_with('/')
                || normalized.len() == p.len()
                || matches!(normalized.as_bytes().get(p.len()), Some(b'/' | b'?' | b'#')))
    });
    if !allowed {
        return Err("is not in the allowed return URLs (CONNECT_RETURN_URL_ALLOWLIST)".to_owned());
    }
    Ok(normalized.to_owned())
}

/// What the connect page shows.
#[derive(Debug, Clone)]
pub enum Page {
    /// The session is usable: the consent links (fresh states) and the current connection, if any.
    Ready(Box<ReadyPage>),
    Unknown,
    Expired,
    Used,
}

#[derive(Debug, Clone)]
pub struct ReadyPage {
    pub session: ConnectSession,
    pub connection: Option<Connection>,
    /// Consent page in a popup; the popup posts a message back.
    pub popup_url: String,
    /// Same-window fallback.
    pub fallback_url: String,
    /// The browser cookie value to set (re-used when the browser already had one).
    pub browser_token: String,
}

/// A browser token from the cookie if it looks like one of ours, else a new one.
pub fn browser_token(cookie: Option<&str>) -> String {
    cookie
        .filter(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_owned)
        .unwrap_or_else(|| random_token(32))
}

/// `GET /connect/{token}`: looks the session up and mints the two OAuth states (popup and fallback).
pub async fn open_page(
    state: &AppState,
    token: &str,
    cookie: Option<&str>,
) -> Result<Page, StorageError> {
    if token.is_empty() || token.len() > 128 {
        return Ok(Page::Unknown);
    }
    let hash = sha256_hex(token.as_bytes());
    let Some(session) = state
        .db
        .run(move |c| sessions::find_session_by_hash(c, &hash))
        .await?
    else {
        return Ok(Page::Unknown);
    };
    if session.used_at.is_some() {
        return Ok(Page::Used);
    }
    if session.expires_at < storage::now() {
        return Ok(Page::Expired);
    }
    let browser = browser_token(cookie);
    let popup_url = mint_state(state, &session, &browser, AuthMode::PostMessage).await?;
    let fallback_url = mint_state(state, &session, &browser, AuthMode::Popup).await?;
    let seller = session.seller_id.clone();
    let connection = state
        .db
        .run(move |c| connections::find_by_seller(c, &seller))
        .await?;
    Ok(Page::Ready(Box::new(ReadyPage {
        session,
        connection,
        popup_url,
        fallback_url,
        browser_token: browser,
    })))
}

/// Stores a new state for the session and browser; returns the consent URL carrying it.
async fn mint_state(
    state: &AppState,
    session: &ConnectSession,
    browser: &str,
    mode: AuthMode,
) -> Result<String, StorageError> {
    let raw = random_token(43);
    let now = storage::now();
    // A state never outlives its session.
    let expires_at = (now + dur(STATE_TTL)).min(session.expires_at);
    let row = NewState {
        state_hash: sha256_hex(raw.as_bytes()),
        session_id: session.id,
        seller_id: session.seller_id.clone(),
        browser_hash: sha256_hex(browser.as_bytes()),
        mode: mode.as_str().to_owned(),
        expires_at,
        created_at: now,
    };
    state
        .db
        .run(move |c| sessions::insert_state(c, &row))
        .await?;
    Ok(state.amo.authorize_url(&raw, mode).to_string())
}

/// The callback's query, as received (every field optional: nothing here is trusted).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub referer: Option<String>,
    pub client_id: Option<String>,
    pub from_widget: Option<String>,
    pub error: Option<String>,
}

/// Why a callback was refused. Nothing is stored in any of these cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// An install from an amoCRM widget or the marketplace listing, not from our connect page.
    FromWidget,
    MissingState,
    UnknownState,
    ExpiredState,
    UsedState,
    /// The state was minted for another browser (no or wrong cookie).
    OtherBrowser,
    /// The connect link was used already (this seller connected meanwhile).
    SessionUsed,
    Denied,
    WrongClient,
    BadReferer,
    MissingCode,
    ExchangeFailed,
    /// amoCRM refused the code itself (forged, expired or reused): the caller's fault, not amoCRM's.
    CodeRejected,
    AccountUnreadable,
    /// The account is connected to another seller and sharing is off.
    AccountTaken,
}

impl Refusal {
    /// HTTP status of the error page.
    pub fn status(self) -> u16 {
        match self {
            Self::ExpiredState | Self::UsedState | Self::SessionUsed => 410,
            Self::ExchangeFailed | Self::AccountUnreadable => 502,
            Self::AccountTaken => 409,
            Self::CodeRejected => 400,
            Self::OtherBrowser => 403,
            _ => 400,
        }
    }
}

/// A refused callback, with what the error page needs.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: Refusal,
    /// The session's language, when the state was known.
    pub lang: Option<Lang>,
    /// A fresh consent URL for the same session and browser, when one can be offered.
    pub retry_url: Option<String>,
}

/// A completed connect.
#[derive(Debug, Clone)]
pub struct Connected {
    pub connection: Connection,
    pub mode: AuthMode,
    pub return_url: Option<String>,
    pub lang: Option<Lang>,
    pub provisioning: Option<ProvisionReport>,
}

/// The OAuth callback. `cookie` is the browser cookie value, if any.
pub async fn callback(
    state: &AppState,
    params: &CallbackParams,
    cookie: Option<&str>,
) -> Result<Result<Connected, Refused>, StorageError> {
    let refuse = |reason, lang, retry_url| {
        Ok(Err(Refused {
            reason,
            lang,
            retry_url,
        }))
    };
    if params.from_widget.as_deref().is_some() {
        return refuse(Refusal::FromWidget, None, None);
    }
    let Some(raw_state) = params
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 128)
    else {
        return refuse(Refusal::MissingState, None, None);
    };
    let hash = sha256_hex(raw_state.as_bytes());
    let Some(st) = state
        .db
        .run(move |c| sessions::find_state_by_hash(c, &hash))
        .await?
    else {
        return refuse(Refusal::UnknownState, None, None);
    };
    let session_id = st.session_id;
    let Some(session) = state
        .db
        .run(move |c| sessions::find_session(c, session_id))
        .await?
    else {
        return refuse(Refusal::UnknownState, None, None);
    };
    let lang = Lang::parse(&session.lang);
    if st.used_at.is_some() {
        return refuse(Refusal::UsedState, lang, None);
    }
    let now = storage::now();
    if st.expires_at < now {
        return refuse(Refusal::ExpiredState, lang, None);
    }
    let browser_ok = cookie.is_some_and(|c| {
        constant_time_eq(
            sha256_hex(c.as_bytes()).as_bytes(),
            st.browser_hash.as_bytes(),
        )
    });
    if !browser_ok {
        return refuse(Refusal::OtherBrowser, lang, None);
    }
    let state_id = st.id;
    let consumed = state
        .db
        .run(move |c| sessions::consume_state(c, state_id, storage::now()))
        .await?;
    if !consumed {
        return refuse(Refusal::UsedState, lang, None);
    }
    if session.used_at.is_some() {
        return refuse(Refusal::SessionUsed, lang, None);
    }
    if session.expires_at < now {
        return refuse(Refusal::ExpiredState, lang, None);
    }
    let mode = if st.mode == AuthMode::Popup.as_str() {
        AuthMode::Popup
    } else {
        AuthMode::PostMessage
    };
    // From here on the state was good: a failure may offer a fresh consent link for the same session.
    let browser = cookie.unwrap_or_default().to_owned();
    let retry = || async { mint_state(state, &session, &browser, mode).await.ok() };
    if params.error.is_some() {
        return refuse(Refusal::Denied, lang, retry().await);
    }
    if params.client_id.as_deref() != Some(state.amo.config().client_id.as_str()) {
        tracing::warn!("OAuth callback with a client_id that is not ours");
        return refuse(Refusal::WrongClient, lang, retry().await);
    }
    // The referer decides where the client secret goes: it must be an allowed account host.
    let host = match params
        .referer
        .as_deref()
        .map(|r| AccountHost::parse(r, &state.amo.config().allowed_domains))
    {
        Some(Ok(h)) => h,
        _ => {
            tracing::warn!("OAuth callback with a disallowed referer; nothing sent");
            return refuse(Refusal::BadReferer, lang, retry().await);
        }
    };
    let Some(code) = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 4096)
    else {
        return refuse(Refusal::MissingCode, lang, retry().await);
    };
    let set = match state.amo.exchange_code(&host, code).await {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!(host = %host, error = %e, "code exchange failed");
            let reason = if matches!(e, amocrm_client::OAuthError::Rejected { .. }) {
                Refusal::CodeRejected
            } else {
                Refusal::ExchangeFailed
            };
            return refuse(reason, lang, retry().await);
        }
    };
    let account = {
        let api = state.amo.api(&host, &set.access_token);
        let mut got = api.account().await;
        if got.as_ref().is_err_and(|e| e.is_retryable()) {
            got = api.account().await;
        }
        got
    };
    let (account_id, subdomain) = match (&account, set.claims.account_id) {
        (Ok(a), Some(claimed)) if a.id != claimed => {
            tracing::warn!(host = %host, "token claims and GET /api/v4/account disagree on the account");
            return refuse(Refusal::AccountUnreadable, lang, retry().await);
        }
        (Ok(a), _) => (a.id, non_empty_or(&a.subdomain, host.subdomain())),
        (Err(e), Some(claimed)) => {
            tracing::warn!(host = %host, error = %e, "GET /api/v4/account failed; using the token's claims");
            (claimed, host.subdomain().to_owned())
        }
        (Err(e), None) => {
            tracing::warn!(host = %host, error = %e, "account of the new token is unknown");
            return refuse(Refusal::AccountUnreadable, lang, retry().await);
        }
    };
    let Ok(account_id) = i64::try_from(account_id) else {
        return refuse(Refusal::AccountUnreadable, lang, retry().await);
    };
    let stored = store_connection(
        state,
        &session,
        &host,
        account_id,
        &subdomain,
        &set.access_token,
        &set.refresh_token,
        storage::to_db(set.expires_at),
        set.claims.api_domain.clone(),
    )
    .await?;
    let (connection, previous) = match stored {
        Stored::Saved {
            connection,
            previous,
        } => (*connection, previous.map(|p| *p)),
        Stored::SessionUsed => return refuse(Refusal::SessionUsed, lang, None),
        Stored::AccountTaken => return refuse(Refusal::AccountTaken, lang, retry().await),
    };
    if let Some(prev) = previous.filter(|p| p.account_id != account_id) {
        // The seller moved to another account: stop the old one's webhooks reaching us (best effort).
        let token = prev.access_token(&state.keys).ok().flatten();
        provisioning::unsubscribe_best_effort(state, &prev.host, token, prev.webhook_destination)
            .await;
    }
    tracing::info!(seller_id = %connection.seller_id, account_id, host = %host, "seller connected amoCRM");
    let provisioning = match provisioning::provision(state, &connection.seller_id).await {
        Ok(r) => Some(r),
        Err(ProvisionError::Busy) => None,
        Err(e) => {
            tracing::warn!(seller_id = %connection.seller_id, error = %e, "provisioning failed; will retry");
            None
        }
    };
    let seller = connection.seller_id.clone();
    let connection = state
        .db
        .run(move |c| connections::find_by_seller(c, &seller))
        .await?
        .unwrap_or(connection);
    Ok(Ok(Connected {
        connection,
        mode,
        return_url: session.return_url.clone(),
        lang,
        provisioning,
    }))
}

fn non_empty_or(a: &str, b: &str) -> String {
    if a.trim().is_empty() { b } else { a }.to_owned()
}

enum Stored {
    Saved {
        connection: Box<Connection>,
        previous: Option<Box<Connection>>,
    },
    SessionUsed,
    AccountTaken,
}

/// One transaction: the account is free (or sharing allowed), the session is consumed, the row is created or
/// its tokens replaced, and `connection.connected` is recorded.
#[allow(clippy::too_many_arguments)]
async fn store_connection(
    state: &AppState,
    session: &ConnectSession,
    host: &AccountHost,
    account_id: i64,
    subdomain: &str,
    access: &SecretString,
    refresh: &SecretString,
    expires_at: NaiveDateTime,
    api_domain: Option<String>,
) -> Result<Stored, StorageError> {
    let (access_enc, refresh_enc) = connections::seal_tokens(
        &state.keys,
        &session.seller_id,
        access.expose_secret(),
        refresh.expose_secret(),
    );
    let allow_shared = state.settings.allow_shared_accounts;
    let session_id = session.id;
    let seller = session.seller_id.clone();
    let host = host.as_str().to_owned();
    let subdomain = subdomain.to_owned();
    state
        .db
        .run(move |c| {
            sessions::transaction(c, |c| {
                let now = storage::now();
                if !allow_shared {
                    let taken = connections::find_by_account(c, account_id)?
                        .into_iter()
                        .any(|other| other.seller_id != seller && other.status != "revoked");
                    if taken {
                        return Ok(Stored::AccountTaken);
                    }
                }
                if !sessions::mark_session_used(c, session_id, now)? {
                    return Ok(Stored::SessionUsed);
                }
                let previous = connections::find_by_seller(c, &seller)?;
                match &previous {
                    None => {
                        connections::insert(
                            c,
                            &NewConnection {
                                seller_id: seller.clone(),
                                account_id,
                                host: host.clone(),
                                subdomain: subdomain.clone(),
                                api_domain: api_domain.clone(),
                                status: ConnectionStatus::Active.as_str().to_owned(),
                                access_token_enc: Some(access_enc.clone()),
                                refresh_token_enc: Some(refresh_enc.clone()),
                                token_expires_at: Some(expires_at),
                                token_version: 1,
                                last_refreshed_at: Some(now),
                                refresh_failures: 0,
                                webhook_token: random_token(40),
                                provisioning_state: "pending".to_owned(),
                                provisioning_attempts: 0,
                                connected_at: now,
                                created_at: now,
                                updated_at: now,
                            },
                        )?;
                    }
                    Some(prev) => {
                        connections::apply_reconnect(
                            c,
                            prev.id,
                            &ReconnectChanges {
                                account_id,
                                host: host.clone(),
                                subdomain: subdomain.clone(),
                                api_domain: api_domain.clone(),
                                status: ConnectionStatus::Active.as_str().to_owned(),
                                access_token_enc: Some(access_enc.clone()),
                                refresh_token_enc: Some(refresh_enc.clone()),
                                token_expires_at: Some(expires_at),
                                last_refreshed_at: Some(now),
                                refresh_failures: 0,
                                last_error: None,
                                next_refresh_at: None,
                                refresh_lease_owner: None,
                                refresh_lease_until: None,
                                connected_at: now,
                                revoked_at: None,
                                revoke_reason: None,
                                updated_at: now,
                            },
                        )?;
                        if prev.account_id != account_id {
                            connections::reset_provisioning(c, prev.id, &random_token(40), now)?;
                        }
                    }
                }
                let ev = NewEvent::new(
                    "connection.connected",
                    &seller,
                    json!({ "seller_id": seller, "account_id": account_id, "subdomain": subdomain }),
                    None,
                );
                events::record(c, &ev)?;
                let connection = connections::find_by_seller(c, &seller)?
                    .ok_or_else(|| StorageError::Other("connection vanished".into()))?;
                Ok(Stored::Saved {
                    connection: Box::new(connection),
                    previous: previous.map(Box::new),
                })
            })
        })
        .await
}

/// Why the uninstall hook was refused.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    #[error("bad signature")]
    BadSignature,
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// amoCRM's uninstall hook: with a valid signature, every connection of the account is revoked (tokens
/// wiped, `connection.revoked`). Returns how many connections changed.
pub async fn uninstall(
    state: &AppState,
    client_uuid: &str,
    account_id: &str,
    signature: &str,
) -> Result<usize, UninstallError> {
    let cfg = state.amo.config();
    if !amocrm_client::verify_disconnect_signature(
        &cfg.client_id,
        &cfg.client_secret,
        client_uuid,
        account_id,
        signature,
    ) {
        tracing::warn!("uninstall hook with a bad signature refused");
        return Err(UninstallError::BadSignature);
    }
    let Ok(account_id) = account_id.trim().parse::<i64>() else {
        return Err(UninstallError::BadSignature);
    };
    let rows = state
        .db
        .run(move |c| connections::find_by_account(c, account_id))
        .await?;
    let mut changed = 0;
    for row in rows {
        if revoke_row(state, &row, "the integration was disabled in amoCRM").await? {
            changed += 1;
        }
    }
    tracing::info!(account_id, changed, "uninstall hook processed");
    Ok(changed)
}

/// `DELETE /api/v1/connections/{seller_id}`: unsubscribes the amoCRM webhook (best effort), wipes the tokens,
/// marks the connection revoked and records `connection.revoked`. Idempotent.
pub async fn revoke(state: &AppState, seller_id: &str) -> Result<(), ConnectError> {
    let seller = seller_id.to_owned();
    let row = state
        .db
        .run(move |c| connections::find_by_seller(c, &seller))
        .await?
        .ok_or(ConnectError::NotFound)?;
    if row.status == ConnectionStatus::Revoked.as_str() {
        return Ok(());
    }
    if row.status == ConnectionStatus::Active.as_str() {
        let token = row.access_token(&state.keys).ok().flatten();
        provisioning::unsubscribe_best_effort(
            state,
            &row.host,
            token,
            row.webhook_destination.clone(),
        )
        .await;
    }
    revoke_row(state, &row, "disconnected through the marketplace").await?;
    Ok(())
}

async fn revoke_row(
    state: &AppState,
    row: &Connection,
    reason: &str,
) -> Result<bool, StorageError> {
    let (id, seller, account_id, why) = (
        row.id,
        row.seller_id.clone(),
        row.account_id,
        reason.to_owned(),
    );
    state
        .db
        .run(move |c| {
            sessions::transaction(c, |c| {
                if !connections::revoke(c, id, &why, storage::now())? {
                    return Ok(false);
                }
                let ev = NewEvent::new(
                    "connection.revoked",
                    &seller,
                    json!({ "seller_id": seller, "account_id": account_id, "reason": why }),
                    None,
                );
                events::record(c, &ev)?;
                Ok(true)
            })
        })
        .await
}

pub async fn get_connection(state: &AppState, seller_id: &str) -> Result<Connection, ConnectError> {
    let seller = seller_id.to_owned();
    state
        .db
        .run(move |c| connections::find_by_seller(c, &seller))
        .await?
        .ok_or(ConnectError::NotFound)
}

pub async fn list_connections(
    state: &AppState,
    status: Option<ConnectionStatus>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<Connection>, i64), ConnectError> {
    Ok(state
        .db
        .run(move |c| connections::list(c, status.map(|s| s.as_str()), offset, limit))
        .await?)
}

/// `PUT /api/v1/connections/{seller_id}/pipeline`: a new status mapping, checked against the account (the
/// pipeline must exist and hold every status).
pub async fn set_pipeline(
    state: &AppState,
    seller_id: &str,
    pipeline_id: i64,
    stages: [i64; 6],
) -> Result<Connection, ConnectError> {
    let row = get_connection(state, seller_id).await?;
    let Ok(pid) = u64::try_from(pipeline_id) else {
        return Err(invalid(
            "pipeline_id",
            "must be a positive amoCRM pipeline id",
        ));
    };
    let found = tokens::with_api(state, &row.seller_id, move |amo| async move {
        amo.api().get_pipeline(pid).await
    })
    .await;
    let pipeline = match found {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(invalid(
                "pipeline_id",
                "no such pipeline in the seller's amoCRM",
            ));
        }
        Err(TokenError::NotConnected) => return Err(ConnectError::NotFound),
        Err(e @ TokenError::NeedsReconnect(_)) => {
            return Err(ConnectError::Unavailable(e.to_string()));
        }
        Err(e) => return Err(ConnectError::Unavailable(e.to_string())),
    };
    let mut problems = Vec::new();
    for (status, id) in OrderStatus::ALL.iter().zip(stages) {
        let known = u64::try_from(id)
            .ok()
            .is_some_and(|id| pipeline.statuses.iter().any(|s| s.id == id));
        if !known {
            problems.push(FieldProblem {
                field: status_field(*status),
                message: format!("status {id} is not a stage of pipeline {pipeline_id}"),
            });
        }
    }
    if !problems.is_empty() {
        return Err(ConnectError::Invalid(problems));
    }
    let id = row.id;
    state
        .db
        .run(move |c| connections::save_pipeline(c, id, pipeline_id, stages, storage::now()))
        .await?;
    get_connection(state, seller_id).await
}

/// The 422 detail key of one status of the mapping.
pub fn status_field(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Pending => "statuses.pending",
        OrderStatus::AwaitingPayment => "statuses.awaiting_payment",
        OrderStatus::Paid => "statuses.paid",
        OrderStatus::Shipping => "statuses.shipping",
        OrderStatus::Completed => "statuses.completed",
        OrderStatus::Cancelled => "statuses.cancelled",
    }
}

/// Prunes sessions and states that expired more than a day ago.
pub async fn prune_sessions(state: &AppState) -> Result<usize, StorageError> {
    let before = storage::now() - chrono::Duration::days(1);
    state
        .db
        .run(move |c| sessions::prune_expired(c, before))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_language_picks_the_best_supported_language() {
        assert_eq!(
            Lang::from_accept_language("ru-RU,ru;q=0.9,en;q=0.8"),
            Some(Lang::Ru)
        );
        assert_eq!(
            Lang::from_accept_language("de-DE, en;q=0.5, uz;q=0.7"),
            Some(Lang::Uz)
        );
        assert_eq!(Lang::from_accept_language("de, fr"), None);
        assert_eq!(
            Lang::from_accept_language("en;q=0, ru;q=0.1"),
            Some(Lang::Ru)
        );
        assert_eq!(Lang::from_accept_language(""), None);
    }

    #[test]
    fn browser_tokens_are_reused_only_when_they_look_like_ours() {
        let fresh = browser_token(None);
        assert_eq!(fresh.len(), 32);
        assert_eq!(browser_token(Some(&fresh)), fresh);
        assert_ne!(browser_token(Some("short")), "short");
        assert_ne!(browser_token(Some(&"x;".repeat(16))), "x;".repeat(16));
    }

    #[test]
    fn refusals_of_spent_or_stale_links_are_gone_and_others_bad_requests() {
        assert_eq!(Refusal::UsedState.status(), 410);
        assert_eq!(Refusal::ExpiredState.status(), 410);
        assert_eq!(Refusal::UnknownState.status(), 400);
        assert_eq!(Refusal::BadReferer.status(), 400);
        assert_eq!(Refusal::AccountTaken.status(), 409);
    }
}
