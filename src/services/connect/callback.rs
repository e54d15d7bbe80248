//! The OAuth callback: every check before the code is exchanged, the exchange, the account read, the
//! stored connection and its provisioning.

use amocrm_client::{AccountHost, AmoClient, AuthMode, TokenSet};
use secrecy::{ExposeSecret, SecretString};

use super::Lang;
use crate::domain::events::ConnectionConnected;
use crate::domain::ids::{constant_time_eq, sha256_hex};
use crate::domain::platform::Platform;
use crate::services::Context;
use crate::services::provisioning::{self, ProvisionError, ProvisionReport};
use crate::storage::connections::{self, Connected as Stored, ConnectedAccount, Connection};
use crate::storage::events::NewEvent;
use crate::storage::sessions::ConnectSession;
use crate::storage::{self, StorageError};

/// The callback's query, as received (every field optional: nothing here is trusted).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub referer: Option<String>,
    pub client_id: Option<String>,
    /// `1` (amocrm.ru) or `2` (kommo.com, amocrm.com), as amoCRM's consent redirect carries it.
    pub platform: Option<String>,
    pub from_widget: Option<String>,
    pub error: Option<String>,
}

crate::domain::wire_enum! {
    /// Why a callback was refused. Before its state is spent, nothing is stored; after, the refusal is
    /// recorded with the state (its wire spelling) for the result page.
    pub enum Refusal {
        /// An install from an amoCRM widget or the marketplace listing, not from our connect page.
        FromWidget => "from_widget",
        MissingState => "missing_state",
        UnknownState => "unknown_state",
        ExpiredState => "expired_state",
        UsedState => "used_state",
        /// The state was minted for another browser (no or wrong cookie).
        OtherBrowser => "other_browser",
        /// The connect link was used already (this seller connected meanwhile).
        SessionUsed => "session_used",
        Denied => "denied",
        WrongClient => "wrong_client",
        BadReferer => "bad_referer",
        MissingCode => "missing_code",
        ExchangeFailed => "exchange_failed",
        /// amoCRM refused the code itself (forged, expired or reused): the caller's fault, not amoCRM's.
        CodeRejected => "code_rejected",
        AccountUnreadable => "account_unreadable",
        /// The account is connected to another seller and sharing is off.
        AccountTaken => "account_taken",
    }
}

/// A refused callback, with what the error page needs.
#[derive(Debug, Clone)]
pub struct Refused {
    pub reason: Refusal,
    /// The session's language, when the state was known.
    pub lang: Option<Lang>,
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

/// How a callback ends once its state was ours, from this browser, and spent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The result page's key (`/connect/result/{key}`). The callback answers with a redirect there, so a
    /// reload or Back shows the recorded outcome and the connection as it is, not a spent state.
    Result(String),
    /// Connected in the same window with a return URL: straight there, as before.
    ReturnTo(String),
}

/// The OAuth callback. `cookie` is the browser cookie value, if any. Refusals before the state is spent
/// are answered at once; everything after is recorded with the state and shown by its result page.
#[tracing::instrument(skip_all, fields(seller_id = tracing::field::Empty, account_id = tracing::field::Empty))]
pub async fn callback(
    state: &Context,
    params: &CallbackParams,
    cookie: Option<&str>,
) -> Result<Result<Finished, Refused>, StorageError> {
    let checked = match check_state(state, params, cookie).await? {
        Ok(checked) => checked,
        Err(refused) => return Ok(Err(refused)),
    };
    tracing::Span::current().record("seller_id", checked.session.seller_id.as_str());
    if checked.replay {
        return Ok(Ok(Finished::Result(checked.key)));
    }
    let outcome = match checked.refused {
        Some(reason) => Err(reason),
        None => connect(state, params, &checked).await?,
    };
    let recorded = match &outcome {
        Ok(_) => Outcome::Connected,
        Err(reason) => Outcome::Refused(*reason),
    };
    state
        .db
        .sessions()
        .record_outcome(checked.state_id, recorded.as_str())
        .await?;
    Ok(Ok(match outcome {
        Ok(Connected {
            mode: AuthMode::Popup,
            return_url: Some(url),
            ..
        }) => Finished::ReturnTo(url),
        _ => Finished::Result(checked.key),
    }))
}

/// What came of a spent state, as recorded for its result page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Connected,
    Refused(Refusal),
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Refused(r) => r.as_str(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        if s == "connected" {
            return Some(Self::Connected);
        }
        Refusal::parse(s).map(Self::Refused)
    }
}

/// A state that passed every check and is now spent (or was spent before by this browser), with its
/// session.
struct Checked {
    session: ConnectSession,
    mode: AuthMode,
    lang: Option<Lang>,
    state_id: i64,
    /// The result page's key.
    key: String,
    /// The state came back after its callback had finished: only its result page is shown again.
    replay: bool,
    /// Spent, but the session cannot take a consent any more.
    refused: Option<Refusal>,
}

/// The state is ours, fresh and from this browser; spends it. A state this browser already spent on a
/// finished callback is a replay.
async fn check_state(
    state: &Context,
    params: &CallbackParams,
    cookie: Option<&str>,
) -> Result<Result<Checked, Refused>, StorageError> {
    let refuse = |reason, lang| Ok(Err(Refused { reason, lang }));
    if params.from_widget.as_deref().is_some() {
        return refuse(Refusal::FromWidget, None);
    }
    let Some(raw_state) = params
        .state
        .as_deref()
        .filter(|s| !s.is_empty() && s.len() <= 128)
    else {
        return refuse(Refusal::MissingState, None);
    };
    let sessions = state.db.sessions();
    let Some(st) = sessions
        .state_by_hash(&sha256_hex(raw_state.as_bytes()))
        .await?
    else {
        return refuse(Refusal::UnknownState, None);
    };
    let Some(session) = sessions.by_id(st.session_id).await? else {
        return refuse(Refusal::UnknownState, None);
    };
    let lang = st
        .lang
        .as_deref()
        .and_then(Lang::parse)
        .or_else(|| Lang::parse(&session.lang));
    let now = storage::now();
    let browser_ok = cookie.is_some_and(|c| {
        constant_time_eq(
            sha256_hex(c.as_bytes()).as_bytes(),
            st.browser_hash.as_bytes(),
        )
    });
    let replay = st.used_at.is_some() && browser_ok && st.outcome.is_some();
    if st.used_at.is_some() && !replay {
        return refuse(Refusal::UsedState, lang);
    }
    if !replay && st.expires_at < now {
        return refuse(Refusal::ExpiredState, lang);
    }
    if !browser_ok {
        return refuse(Refusal::OtherBrowser, lang);
    }
    if !replay && !sessions.consume_state(st.id).await? {
        return refuse(Refusal::UsedState, lang);
    }
    let refused = if session.used_at.is_some() {
        Some(Refusal::SessionUsed)
    } else if session.expires_at < now {
        Some(Refusal::ExpiredState)
    } else {
        None
    };
    let mode = stored_mode(&st.mode);
    Ok(Ok(Checked {
        session,
        mode,
        lang,
        state_id: st.id,
        key: super::result_key(raw_state),
        replay,
        refused,
    }))
}

/// A state's stored mode; anything but the same-window mode is the popup that posts back.
pub(super) fn stored_mode(mode: &str) -> AuthMode {
    if mode == AuthMode::Popup.as_str() {
        AuthMode::Popup
    } else {
        AuthMode::PostMessage
    }
}

/// From a good state to a stored, provisioned connection.
async fn connect(
    state: &Context,
    params: &CallbackParams,
    checked: &Checked,
) -> Result<Result<Connected, Refusal>, StorageError> {
    let Request {
        platform,
        client,
        host,
        code,
    } = match check_request(state, params, &checked.session) {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    let set = match client.exchange_code(&host, code).await {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!(host = %host, error = %e, "code exchange failed");
            let rejected = matches!(e, amocrm_client::OAuthError::Rejected { .. });
            return Ok(Err(if rejected {
                Refusal::CodeRejected
            } else {
                Refusal::ExchangeFailed
            }));
        }
    };
    let (account_id, subdomain) = match read_account(client, &host, &set).await {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    tracing::Span::current().record("account_id", account_id);
    let account = ConnectedAccount {
        seller_id: checked.session.seller_id.clone(),
        account_id,
        host: host.as_str().to_owned(),
        subdomain,
        api_domain: set.claims.api_domain.clone(),
        access_token_enc: Vec::new(),
        refresh_token_enc: Vec::new(),
        expires_at: storage::to_db(set.expires_at),
    };
    let (connection, previous) = match store(
        state,
        &checked.session,
        (account, platform),
        &set.access_token,
        &set.refresh_token,
    )
    .await?
    {
        Ok(v) => v,
        Err(r) => return Ok(Err(r)),
    };
    tracing::info!(host = %host, "seller connected amoCRM");
    let (connection, provisioning) = settle(state, connection, previous).await?;
    Ok(Ok(Connected {
        connection,
        mode: checked.mode,
        return_url: checked.session.return_url.clone(),
        lang: checked.lang,
        provisioning,
    }))
}

/// A callback that passed every check: whose integration it is, where the code goes, and the code.
struct Request<'a> {
    platform: Platform,
    client: &'a AmoClient,
    host: AccountHost,
    code: &'a str,
}

/// Consent was given, to one of our integrations — the one of the session's platform, and of the platform
/// amoCRM says it is when it says — from an account host allowed for that platform (which decides where
/// the client secret goes), with a code.
fn check_request<'a>(
    state: &'a Context,
    params: &'a CallbackParams,
    session: &ConnectSession,
) -> Result<Request<'a>, Refusal> {
    if params.error.is_some() {
        return Err(Refusal::Denied);
    }
    let ours = params
        .client_id
        .as_deref()
        .and_then(|id| state.platforms.by_client_id(id));
    let Some((platform, client)) = ours else {
        tracing::warn!("OAuth callback with a client_id that is not ours");
        return Err(Refusal::WrongClient);
    };
    let said = params.platform.as_deref().map(Platform::from_callback);
    if platform != session.platform || said.is_some_and(|p| p != Some(platform)) {
        tracing::warn!(%platform, session = %session.platform, "OAuth callback of another platform than its client id's");
        return Err(Refusal::WrongClient);
    }
    let host = match params
        .referer
        .as_deref()
        .map(|r| AccountHost::parse(r, &client.config().allowed_domains))
    {
        Some(Ok(h)) => h,
        _ => {
            tracing::warn!("OAuth callback with a disallowed referer; nothing sent");
            return Err(Refusal::BadReferer);
        }
    };
    let code = params
        .code
        .as_deref()
        .filter(|c| !c.is_empty() && c.len() <= 4096)
        .ok_or(Refusal::MissingCode)?;
    Ok(Request {
        platform,
        client,
        host,
        code,
    })
}

/// The account the new token belongs to: `GET /api/v4/account` (asked twice if the first answer was
/// retryable), checked against the token's claims; the claims alone when the read fails.
async fn read_account(
    client: &AmoClient,
    host: &AccountHost,
    set: &TokenSet,
) -> Result<(i64, String), Refusal> {
    let api = client.api(host, &set.access_token);
    let mut account = api.account().await;
    if account.as_ref().is_err_and(|e| e.is_retryable()) {
        account = api.account().await;
    }
    let (account_id, subdomain) = match (&account, set.claims.account_id) {
        (Ok(a), Some(claimed)) if a.id != claimed => {
            tracing::warn!(host = %host, "token claims and GET /api/v4/account disagree on the account");
            return Err(Refusal::AccountUnreadable);
        }
        (Ok(a), _) => (a.id, non_empty_or(&a.subdomain, host.subdomain())),
        (Err(e), Some(claimed)) => {
            tracing::warn!(host = %host, error = %e, "GET /api/v4/account failed; using the token's claims");
            (claimed, host.subdomain().to_owned())
        }
        (Err(e), None) => {
            tracing::warn!(host = %host, error = %e, "account of the new token is unknown");
            return Err(Refusal::AccountUnreadable);
        }
    };
    let account_id = i64::try_from(account_id).map_err(|_| Refusal::AccountUnreadable)?;
    Ok((account_id, subdomain))
}

fn non_empty_or(a: &str, b: &str) -> String {
    if a.trim().is_empty() { b } else { a }.to_owned()
}

/// Seals the pair for the seller's row and stores the connect in one transaction (see
/// [`connections::store_connected`]); `connection.connected` is recorded with it.
async fn store(
    state: &Context,
    session: &ConnectSession,
    (mut account, platform): (ConnectedAccount, Platform),
    access: &SecretString,
    refresh: &SecretString,
) -> Result<Result<(Connection, Option<Connection>), Refusal>, StorageError> {
    (account.access_token_enc, account.refresh_token_enc) = connections::seal_tokens(
        &state.keys,
        &session.seller_id,
        access.expose_secret(),
        refresh.expose_secret(),
    );
    let event = NewEvent::of(
        &account.seller_id,
        &ConnectionConnected {
            seller_id: account.seller_id.clone(),
            account_id: account.account_id,
            subdomain: account.subdomain.clone(),
        },
        None,
    );
    let allow_shared = state.settings.allow_shared_accounts;
    let stored = state
        .db
        .connections()
        .store_connected(&account, platform, session.id, allow_shared, &event)
        .await?;
    Ok(match stored {
        Stored::Saved {
            connection,
            previous,
        } => Ok((*connection, previous.map(|p| *p))),
        Stored::SessionUsed => Err(Refusal::SessionUsed),
        Stored::AccountTaken => Err(Refusal::AccountTaken),
    })
}

/// After the connect is stored: the previous account (if the seller moved) stops sending us webhooks, and
/// the new one is provisioned. Returns the row as it is now.
async fn settle(
    state: &Context,
    connection: Connection,
    previous: Option<Connection>,
) -> Result<(Connection, Option<ProvisionReport>), StorageError> {
    let moved =
        |p: &Connection| p.account_id != connection.account_id || p.platform != connection.platform;
    if let Some(prev) = previous.filter(moved) {
        provisioning::unsubscribe_best_effort(state, &prev).await;
    }
    let provisioning = match provisioning::provision(state, &connection.seller_id).await {
        Ok(r) => Some(r),
        Err(ProvisionError::Busy) => None,
        Err(e) => {
            tracing::warn!(error = %e, "provisioning failed; will retry");
            None
        }
    };
    let connection = state
        .db
        .connections()
        .by_seller(&connection.seller_id)
        .await?
        .unwrap_or(connection);
    Ok((connection, provisioning))
}
