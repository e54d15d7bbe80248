//! The result page of a callback: what came of it, and the seller's connection as it is now. The callback
//! redirects here, so a reload, or Back then Allow again, shows the truth rather than a spent state.

use amocrm_client::AuthMode;

use super::callback::stored_mode;
use super::session::mint_state;
use super::{Lang, Outcome, Refusal};
use crate::domain::ids::{constant_time_eq, sha256_hex};
use crate::services::Context;
use crate::storage::connections::Connection;
use crate::storage::sessions::ConnectSession;
use crate::storage::{self, StorageError};

/// What `/connect/result/{key}` shows.
#[derive(Debug, Clone)]
pub enum ResultPage {
    Unknown,
    /// The result belongs to another browser: it is not shown (it names the seller's account).
    OtherBrowser,
    Ready(Box<ResultView>),
}

#[derive(Debug, Clone)]
pub struct ResultView {
    /// `None` while the callback is still running.
    pub outcome: Option<Outcome>,
    /// The language of the page that started the consent, kept with the state.
    pub lang: Option<Lang>,
    pub mode: AuthMode,
    pub session: ConnectSession,
    /// The seller's connection as it is now, whatever the outcome.
    pub connection: Option<Connection>,
    /// A fresh consent URL for the same session, when the outcome was a refusal and the link is still open.
    pub retry_url: Option<String>,
}

/// Looks the result up by its key; only the browser that started the consent sees it.
pub async fn result_page(
    state: &Context,
    key: &str,
    cookie: Option<&str>,
) -> Result<ResultPage, StorageError> {
    if key.len() != 64 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(ResultPage::Unknown);
    }
    let sessions = state.db.sessions();
    let Some(st) = sessions
        .state_by_result_hash(&sha256_hex(key.as_bytes()))
        .await?
    else {
        return Ok(ResultPage::Unknown);
    };
    let Some(session) = sessions.by_id(st.session_id).await? else {
        return Ok(ResultPage::Unknown);
    };
    let browser_ok = cookie.is_some_and(|c| {
        constant_time_eq(
            sha256_hex(c.as_bytes()).as_bytes(),
            st.browser_hash.as_bytes(),
        )
    });
    if st.used_at.is_none() {
        return Ok(ResultPage::Unknown);
    }
    if !browser_ok {
        return Ok(ResultPage::OtherBrowser);
    }
    let outcome = st.outcome.as_deref().and_then(Outcome::parse);
    let lang = st
        .lang
        .as_deref()
        .and_then(Lang::parse)
        .or_else(|| Lang::parse(&session.lang));
    let mode = stored_mode(&st.mode);
    let connection = state.db.connections().by_seller(&session.seller_id).await?;
    let open = session.used_at.is_none() && session.expires_at > storage::now();
    let retryable = matches!(outcome, Some(Outcome::Refused(r)) if r != Refusal::SessionUsed);
    let retry_url = match (open && retryable, cookie) {
        (true, Some(browser)) => {
            let lang = lang.unwrap_or_default();
            Some(mint_state(state, &session, browser, (mode, lang)).await?)
        }
        _ => None,
    };
    Ok(ResultPage::Ready(Box::new(ResultView {
        outcome,
        lang,
        mode,
        session,
        connection,
        retry_url,
    })))
}
