//! amoCRM's redirects to us: the OAuth callback (`/oauth/amocrm/callback`) and the uninstall hook
//! (`/oauth/amocrm/disconnect`). The checks themselves live in `services::connect`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use amocrm_client::AuthMode;
use askama::Template;
use serde::Deserialize;

use super::error::ApiError;
use super::pages::{self, MessageTemplate, pick_lang, texts};
use crate::services::Context;
use crate::services::connect::{self, BROWSER_COOKIE, CallbackParams, Refusal, UninstallError};
use crate::services::settings_page;

/// `GET /oauth/amocrm/callback?code&state&referer&client_id[&from_widget][&error]`.
pub async fn callback(req: HttpRequest, state: web::Data<Context>) -> HttpResponse {
    // A query that does not even parse is treated like one without a state.
    let params: CallbackParams = serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let cookie = req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned());
    let outcome = match connect::callback(&state, &params, cookie.as_deref()).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "OAuth callback failed on the database");
            let lang = pick_lang(&req, None);
            let t = texts(lang);
            return pages::message(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                "bad",
                t.error_title,
                t.exchange_failed,
                None,
            );
        }
    };
    let origin = pages::origin(&state);
    let nonce = pages::nonce();
    match outcome {
        Ok(done) => {
            let lang = pick_lang(&req, done.lang);
            let t = texts(lang);
            let return_url = done.return_url.clone().unwrap_or_default();
            if done.mode == AuthMode::Popup && !return_url.is_empty() {
                return HttpResponse::SeeOther()
                    .insert_header(("Location", return_url))
                    .insert_header(("Cache-Control", "no-store"))
                    .insert_header(("Referrer-Policy", "no-referrer"))
                    .finish();
            }
            let setup_done = done.provisioning.as_ref().is_some_and(|p| p.complete);
            let text = format!("{} ({})", t.success_text, done.connection.host);
            let settings_url = settings_link(&state, &done).await;
            let page = MessageTemplate {
                t,
                nonce: &nonce,
                class: "ok",
                title: t.success_title,
                text: &text,
                note: (!setup_done).then_some(t.setup_pending),
                hint: None,
                retry_url: None,
                settings_url: settings_url.as_deref(),
                post_message: done.mode == AuthMode::PostMessage,
                status: "connected",
                origin: &origin,
                return_url: &return_url,
            };
            let body = pages::branded(done.connection.platform, page.render());
            pages::html(StatusCode::OK, &nonce, body)
        }
        Err(refused) => {
            let lang = pick_lang(&req, refused.lang);
            let t = texts(lang);
            let (text, hint) = match refused.reason {
                Refusal::FromWidget => (t.from_widget, None),
                Refusal::MissingState | Refusal::UnknownState => {
                    (t.bad_state, Some(t.ask_new_link))
                }
                Refusal::ExpiredState => (t.expired_state, Some(t.ask_new_link)),
                Refusal::UsedState => (t.used_state, Some(t.ask_new_link)),
                Refusal::OtherBrowser => (t.other_browser, Some(t.ask_new_link)),
                Refusal::SessionUsed => (t.session_used, None),
                Refusal::Denied => (t.denied, None),
                Refusal::WrongClient => (t.wrong_client, None),
                Refusal::BadReferer => (t.bad_referer, None),
                Refusal::MissingCode => (t.missing_code, None),
                Refusal::ExchangeFailed | Refusal::CodeRejected => (t.exchange_failed, None),
                Refusal::AccountUnreadable => (t.account_unreadable, None),
                Refusal::AccountTaken => (t.account_taken, None),
            };
            let hint = if refused.retry_url.is_none() && hint.is_none() {
                Some(t.ask_new_link)
            } else {
                hint
            };
            let status = refusal_status(refused.reason);
            let page = MessageTemplate {
                t,
                nonce: &nonce,
                class: "bad",
                title: t.error_title,
                text,
                note: None,
                hint,
                retry_url: refused.retry_url.as_deref(),
                settings_url: None,
                post_message: false,
                status: "error",
                origin: &origin,
                return_url: "",
            };
            pages::html(status, &nonce, page.render())
        }
    }
}

/// A fresh settings link for the seller who just connected, so the success page can lead on to choosing how
/// orders arrive. Without one the page still reports success.
async fn settings_link(state: &Context, done: &connect::Connected) -> Option<String> {
    let created = settings_page::create_session(
        state,
        &done.connection.seller_id,
        done.return_url.as_deref(),
        done.lang.map(|l| l.as_str()),
    )
    .await;
    match created {
        Ok(c) => Some(c.settings_url),
        Err(e) => {
            tracing::warn!(error = %e, "no settings link for the success page");
            None
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DisconnectParams {
    client_uuid: Option<String>,
    account_id: Option<String>,
    signature: Option<String>,
}

/// `GET /oauth/amocrm/disconnect?client_uuid&account_id&signature`: amoCRM's uninstall hook.
pub async fn disconnect(req: HttpRequest, state: web::Data<Context>) -> HttpResponse {
    let p: DisconnectParams = serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let result = connect::uninstall(
        &state,
        p.client_uuid.as_deref().unwrap_or_default(),
        p.account_id.as_deref().unwrap_or_default(),
        p.signature.as_deref().unwrap_or_default(),
    )
    .await;
    match result {
        Ok(n) => HttpResponse::Ok()
            .content_type("application/json")
            .body(serde_json::json!({"data": {"revoked": n}}).to_string()),
        Err(UninstallError::BadSignature) => {
            ApiError::unauthorized("the uninstall hook's signature is not valid").error_response()
        }
        Err(UninstallError::Storage(e)) => ApiError::from(e).error_response(),
    }
}

/// The HTTP status of a refused callback's page: spent or stale links are gone, amoCRM's own failures are a
/// bad gateway, everything else is the request's fault.
fn refusal_status(r: Refusal) -> StatusCode {
    match r {
        Refusal::ExpiredState | Refusal::UsedState | Refusal::SessionUsed => StatusCode::GONE,
        Refusal::ExchangeFailed | Refusal::AccountUnreadable => StatusCode::BAD_GATEWAY,
        Refusal::AccountTaken => StatusCode::CONFLICT,
        Refusal::OtherBrowser => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_spent_or_stale_links_are_gone_and_others_bad_requests() {
        assert_eq!(refusal_status(Refusal::UsedState), StatusCode::GONE);
        assert_eq!(refusal_status(Refusal::ExpiredState), StatusCode::GONE);
        assert_eq!(
            refusal_status(Refusal::UnknownState),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(refusal_status(Refusal::BadReferer), StatusCode::BAD_REQUEST);
        assert_eq!(refusal_status(Refusal::AccountTaken), StatusCode::CONFLICT);
    }
}
