//! amoCRM's redirects to us: the OAuth callback (`/oauth/amocrm/callback`) and the uninstall hook
//! (`/oauth/amocrm/disconnect`). The checks themselves live in `services::connect`.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use amocrm_client::AuthMode;
use askama::Template;
use serde::Deserialize;

use super::error::ApiError;
use super::pages::{
    self, CurrentConnection, MessageTemplate, Texts, connected_to, pick_lang, texts,
};
use crate::domain::status::ProvisioningState;
use crate::services::Context;
use crate::services::connect::{
    self, BROWSER_COOKIE, CallbackParams, Finished, Lang, Outcome, Refusal, ResultPage,
    UninstallError,
};
use crate::services::settings_page;
use crate::storage::connections::Connection;

/// `GET /oauth/amocrm/callback?code&state&referer&client_id[&from_widget][&error]`. Once the state is ours and
/// spent, the answer is a redirect to its result page (Post/Redirect/Get): the callback URL, whose state
/// cannot be spent twice, never stays in the browser's history to be reloaded.
pub async fn callback(req: HttpRequest, state: web::Data<Context>) -> HttpResponse {
    // A query that does not even parse is treated like one without a state.
    let params: CallbackParams = serde_urlencoded::from_str(req.query_string()).unwrap_or_default();
    let cookie = req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned());
    match connect::callback(&state, &params, cookie.as_deref()).await {
        Ok(Ok(Finished::Result(key))) => see_other(&format!("/connect/result/{key}")),
        Ok(Ok(Finished::ReturnTo(url))) => see_other(&url),
        Ok(Err(refused)) => {
            let lang = pick_lang(&req, refused.lang);
            let t = texts(lang);
            let (text, hint) = refusal_text(t, refused.reason);
            pages::message(
                refusal_status(refused.reason),
                lang,
                "bad",
                t.error_title,
                text,
                hint.or(Some(t.ask_new_link)),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "OAuth callback failed on the database");
            pages::unavailable(&req)
        }
    }
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header(("Location", location))
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .finish()
}

/// What a refusal tells the seller, and what to do about it when there is no retry.
fn refusal_text(t: &'static Texts, r: Refusal) -> (&'static str, Option<&'static str>) {
    match r {
        Refusal::FromWidget => (t.from_widget, None),
        Refusal::MissingState | Refusal::UnknownState => (t.bad_state, Some(t.ask_new_link)),
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
    }
}

/// `GET /connect/result/{key}`: the outcome of one consent and the seller's connection as it is now, in the
/// language of the page the seller started from. The status is the outcome's (200, or the refusal's), so
/// a reload answers as the first view did. In popup mode the page posts the outcome to its opener.
pub async fn result(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Context>,
) -> HttpResponse {
    let cookie = req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned());
    let view = match connect::result_page(&state, &path.into_inner(), cookie.as_deref()).await {
        Ok(ResultPage::Ready(view)) => view,
        Ok(ResultPage::Unknown) => {
            return pages::message_for(&req, StatusCode::NOT_FOUND, "bad", |t| {
                (t.unknown_title, t.unknown_text, Some(t.ask_new_link))
            });
        }
        Ok(ResultPage::OtherBrowser) => {
            return pages::message_for(&req, StatusCode::FORBIDDEN, "bad", |t| {
                (t.error_title, t.other_browser, Some(t.ask_new_link))
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "result page failed");
            return pages::unavailable(&req);
        }
    };
    let lang = pick_lang(&req, view.lang);
    let t = texts(lang);
    let live = view
        .connection
        .as_ref()
        .filter(|c| CurrentConnection::is_live(c));
    // What the page says first: the outcome, unless the seller is connected anyway (a spent link).
    let (status, class, title, text, hint) = match (view.outcome, live) {
        (Some(Outcome::Connected), Some(c)) => (
            StatusCode::OK,
            "ok",
            t.success_title,
            connected_to(t, &c.host),
            None,
        ),
        (Some(Outcome::Refused(Refusal::SessionUsed)), Some(c)) => (
            StatusCode::OK,
            "ok",
            t.connected_title,
            connected_to(t, &c.host),
            None,
        ),
        (Some(Outcome::Refused(r)), _) => {
            let (text, hint) = refusal_text(t, r);
            (
                refusal_status(r),
                "bad",
                t.error_title,
                text.to_owned(),
                hint,
            )
        }
        (Some(Outcome::Connected), None) => (
            StatusCode::OK,
            "warn",
            t.connect_title,
            t.status_revoked.to_owned(),
            None,
        ),
        (None, _) => (
            StatusCode::ACCEPTED,
            "muted",
            t.connect_title,
            t.pending.to_owned(),
            None,
        ),
    };
    let ok = class == "ok";
    let hint = if !ok && view.retry_url.is_none() {
        hint.or(Some(t.ask_new_link))
    } else {
        hint
    };
    let settings_url = match live.filter(|_| ok) {
        Some(c) => settings_link(&state, c, &view, lang).await,
        None => None,
    };
    let setup_done = live.is_some_and(|c| c.provisioning_state == ProvisioningState::Complete);
    let origin = pages::origin(&state);
    let n = pages::nonce();
    let page = MessageTemplate {
        t,
        nonce: &n,
        class,
        title,
        text: &text,
        note: (ok && !setup_done).then_some(t.setup_pending),
        hint,
        retry_url: view.retry_url.as_deref(),
        settings_url: settings_url.as_deref(),
        card: Some(CurrentConnection::of(view.connection.as_ref(), t)),
        post_message: view.mode == AuthMode::PostMessage,
        status: if ok { "connected" } else { "error" },
        origin: &origin,
        return_url: view.session.return_url.as_deref().unwrap_or(""),
    };
    let body = pages::branded(view.session.platform, page.render());
    pages::html(status, &n, body)
}

/// A fresh settings link for the seller who is connected, so the page can lead on to choosing how orders
/// arrive. Without one the page still reports the connection.
async fn settings_link(
    state: &Context,
    connection: &Connection,
    view: &connect::ResultView,
    lang: Lang,
) -> Option<String> {
    let created = settings_page::create_session(
        state,
        &connection.seller_id,
        view.session.return_url.as_deref(),
        Some(lang.as_str()),
    )
    .await;
    match created {
        Ok(c) => Some(c.url),
        Err(e) => {
            tracing::warn!(error = %e, "no settings link for the result page");
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
