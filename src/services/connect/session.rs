//! The connect link: a single-use session made for the marketplace, and the page it opens with fresh
//! OAuth states bound to the browser.

use amocrm_client::AuthMode;
use chrono::{DateTime, NaiveDateTime, Utc};

use super::{ConnectError, FieldProblem, Lang, SESSION_TTL, STATE_TTL, dur};
use crate::domain::ids::{SellerId, random_token, sha256_hex};
use crate::domain::platform::Platform;
use crate::services::Context;
use crate::storage::connections::Connection;
use crate::storage::sessions::{ConnectSession, NewSession, NewState};
use crate::storage::{self, StorageError};

/// A new single-use link (connect or settings): the raw token is shown once (in `url`) and stored only as
/// a hash.
#[derive(Debug, Clone)]
pub struct CreatedLink {
    pub token: String,
    pub url: String,
    pub expires_at: DateTime<Utc>,
    pub seller_id: String,
}

/// A link about to be stored: what its caller is shown, and the hash and times its row keeps.
pub(crate) struct IssuedLink {
    pub link: CreatedLink,
    pub token_hash: String,
    pub created_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
}

impl IssuedLink {
    /// A fresh token for `seller`'s page `{base}/{page}/{token}`, valid for `ttl` from `now`.
    pub(crate) fn new(
        state: &Context,
        page: &str,
        seller: &SellerId,
        now: NaiveDateTime,
        ttl: chrono::Duration,
    ) -> Self {
        let token = random_token(43);
        let expires_at = now + ttl;
        Self {
            token_hash: sha256_hex(token.as_bytes()),
            created_at: now,
            expires_at,
            link: CreatedLink {
                url: format!("{}/{page}/{token}", state.settings.base_url()),
                token,
                expires_at: storage::from_db(expires_at),
                seller_id: seller.as_str().to_owned(),
            },
        }
    }
}

/// A new connect session: its link and the platform it connects.
#[derive(Debug, Clone)]
pub struct CreatedSession {
    pub link: CreatedLink,
    pub platform: Platform,
}

/// The checked fields of a session request, shared by the connect and the settings links.
#[derive(Debug, Clone)]
pub struct SessionFields {
    pub seller: SellerId,
    /// Absolute and within `CONNECT_RETURN_URL_ALLOWLIST`.
    pub return_url: Option<String>,
    /// `uz`, `ru`, `en`, or `auto` (the page follows the browser).
    pub lang: String,
}

/// Checks a session request's `seller_id`, `return_url` and `lang`; every problem is reported at once.
pub fn check_session_fields(
    state: &Context,
    seller_id: &str,
    return_url: Option<&str>,
    lang: Option<&str>,
) -> Result<SessionFields, ConnectError> {
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
    match seller.filter(|_| problems.is_empty()) {
        Some(seller) => Ok(SessionFields {
            seller,
            return_url,
            lang,
        }),
        None => Err(ConnectError::Invalid(problems)),
    }
}

/// `POST /api/v1/connect-sessions`: validates and stores a single-use, 30-minute session for `platform`
/// (`amocrm` or `kommo`; by default the only configured one, else amoCRM).
#[tracing::instrument(skip_all, fields(seller_id = %seller_id))]
pub async fn create_session(
    state: &Context,
    seller_id: &str,
    return_url: Option<&str>,
    lang: Option<&str>,
    platform: Option<&str>,
) -> Result<CreatedSession, ConnectError> {
    let platform = check_platform(state, platform);
    let fields = check_session_fields(state, seller_id, return_url, lang);
    let (fields, platform) = match (fields, platform) {
        (Ok(f), Ok(p)) => (f, p),
        (Err(ConnectError::Invalid(mut problems)), Err(p)) => {
            problems.push(p);
            return Err(ConnectError::Invalid(problems));
        }
        (Err(e), _) => return Err(e),
        (Ok(_), Err(p)) => return Err(ConnectError::Invalid(vec![p])),
    };
    let SessionFields {
        seller,
        return_url,
        lang,
    } = fields;
    let issued = IssuedLink::new(state, "connect", &seller, storage::now(), dur(SESSION_TTL));
    let row = NewSession {
        token_hash: issued.token_hash,
        seller_id: seller.as_str().to_owned(),
        return_url,
        lang,
        expires_at: issued.expires_at,
        created_at: issued.created_at,
        platform,
    };
    state.db.sessions().insert(row).await?;
    Ok(CreatedSession {
        link: issued.link,
        platform,
    })
}

/// The session's platform: as asked (and configured), or the default one.
fn check_platform(state: &Context, asked: Option<&str>) -> Result<Platform, FieldProblem> {
    let Some(asked) = asked.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(state.platforms.default_platform());
    };
    let problem = |message: String| FieldProblem {
        field: "platform",
        message,
    };
    let platform = Platform::parse(asked)
        .ok_or_else(|| problem(format!("must be one of {}", Platform::NAMES.join(", "))))?;
    if !state.platforms.is_configured(platform) {
        return Err(problem(format!(
            "{} is not configured on this service",
            platform.display_name()
        )));
    }
    Ok(platform)
}

/// A return URL must be an absolute http(s) URL starting with one of the configured prefixes.
fn check_return_url(state: &Context, raw: &str) -> Result<String, String> {
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
    /// The link was used: it opens no new consent, but a seller who connected through it is told so.
    Used(Box<UsedPage>),
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
    /// The page's language, also stored with both states so the result page speaks it.
    pub lang: Lang,
}

#[derive(Debug, Clone)]
pub struct UsedPage {
    pub session: ConnectSession,
    pub connection: Option<Connection>,
}

/// A browser token from the cookie if it looks like one of ours, else a new one.
pub fn browser_token(cookie: Option<&str>) -> String {
    cookie
        .filter(|c| c.len() == 32 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(str::to_owned)
        .unwrap_or_else(|| random_token(32))
}

/// `GET /connect/{token}`: looks the session up and mints the two OAuth states (popup and fallback).
/// The page speaks `chosen` (the seller's `?lang=` or language cookie), else the session's language, else
/// `browser` (`Accept-Language`), else Uzbek.
pub async fn open_page(
    state: &Context,
    token: &str,
    cookie: Option<&str>,
    (chosen, browser): (Option<Lang>, Option<Lang>),
) -> Result<Page, StorageError> {
    if token.is_empty() || token.len() > 128 {
        return Ok(Page::Unknown);
    }
    let hash = sha256_hex(token.as_bytes());
    let Some(session) = state.db.sessions().by_token_hash(&hash).await? else {
        return Ok(Page::Unknown);
    };
    if session.used_at.is_some() {
        let connection = state.db.connections().by_seller(&session.seller_id).await?;
        return Ok(Page::Used(Box::new(UsedPage {
            session,
            connection,
        })));
    }
    if session.expires_at < storage::now() {
        return Ok(Page::Expired);
    }
    let lang = chosen
        .or_else(|| Lang::parse(&session.lang))
        .or(browser)
        .unwrap_or(Lang::Uz);
    let browser = browser_token(cookie);
    let popup_url = mint_state(state, &session, &browser, (AuthMode::PostMessage, lang)).await?;
    let fallback_url = mint_state(state, &session, &browser, (AuthMode::Popup, lang)).await?;
    let connection = state.db.connections().by_seller(&session.seller_id).await?;
    Ok(Page::Ready(Box::new(ReadyPage {
        session,
        connection,
        popup_url,
        fallback_url,
        browser_token: browser,
        lang,
    })))
}

/// The key of the result page a state's callback redirects to. Derived from the raw state, so a callback
/// that arrives again with a spent state (reload, Back then Allow) finds the same page; only its hash is
/// stored, and it reveals nothing about the state.
pub fn result_key(raw_state: &str) -> String {
    sha256_hex(format!("amocrm-connector/result/{raw_state}").as_bytes())
}

/// Stores a new state for the session and browser; returns the consent URL carrying it.
pub(super) async fn mint_state(
    state: &Context,
    session: &ConnectSession,
    browser: &str,
    (mode, lang): (AuthMode, Lang),
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
        lang: Some(lang.as_str().to_owned()),
        result_hash: Some(sha256_hex(result_key(&raw).as_bytes())),
    };
    state.db.sessions().insert_state(row).await?;
    // The consent page of the session's platform, with that platform's client id.
    let client = state.client(session.platform).ok_or_else(|| {
        StorageError::Other(format!(
            "{} is no longer configured",
            session.platform.display_name()
        ))
    })?;
    Ok(client.authorize_url(&raw, mode).to_string())
}
