//! `GET`/`POST /settings/{token}`: the seller's own settings page (docs/CONTRACT.md §10), in Uzbek (default),
//! Russian and English like the connect page, with its headers and layout. The checks (link, browser, form
//! token) and the save are the use case's (`services::settings_page`); this file picks the language, prints
//! the page and maps outcomes to statuses.

mod texts;
mod view;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use super::pages::{self, pick_lang};
use crate::domain::order::FieldErrors;
use crate::services::Context;
use crate::services::connect::Lang;
use crate::services::settings_page::{
    self, Access, BROWSER_COOKIE, Form, Granted, Page, Saved, Unreadable,
};
use crate::storage::StorageError;
pub use texts::{SettingsTexts, texts};
use view::{FormView, form_view};

#[derive(Template)]
#[template(path = "seller/settings.html")]
struct SettingsTemplate<'a> {
    t: &'static SettingsTexts,
    nonce: &'a str,
    action: String,
    csrf: &'a str,
    host: String,
    saved: bool,
    /// A save was refused: the problems are shown at their fields.
    invalid: bool,
    return_url: Option<&'a str>,
    problems: Vec<String>,
    form: Option<FormView>,
    unreadable: Option<&'static str>,
}

/// A page with only a message, in the settings page's words.
fn message(
    req: &HttpRequest,
    status: StatusCode,
    class: &str,
    title: &str,
    text: &str,
    hint: Option<&str>,
) -> HttpResponse {
    pages::message(status, pick_lang(req, None), class, title, text, hint)
}

/// The page for a request that may not see or change the settings.
fn refused(req: &HttpRequest, access: &Access) -> HttpResponse {
    let t = texts(pick_lang(req, None));
    let (status, class, title, text) = match access {
        Access::Unknown => (
            StatusCode::NOT_FOUND,
            "bad",
            t.unknown_title,
            t.unknown_text,
        ),
        Access::Expired => (StatusCode::GONE, "warn", t.expired_title, t.expired_text),
        Access::OtherBrowser if req.method() == actix_web::http::Method::GET => (
            StatusCode::GONE,
            "warn",
            t.other_browser_title,
            t.other_browser_text,
        ),
        Access::OtherBrowser | Access::BadForm | Access::Granted(_) => (
            StatusCode::FORBIDDEN,
            "bad",
            t.forbidden_title,
            t.forbidden_text,
        ),
    };
    message(req, status, class, title, text, Some(t.ask_new_link))
}

fn failed(req: &HttpRequest, e: &StorageError) -> HttpResponse {
    tracing::error!(error = %e, "settings page failed");
    let t = texts(pick_lang(req, None));
    message(
        req,
        StatusCode::SERVICE_UNAVAILABLE,
        "bad",
        t.unavailable_title,
        t.unavailable_text,
        None,
    )
}

/// Binds the browser for the link's lifetime; Lax so the link opened from the marketplace still carries it,
/// while another site's form post does not.
fn with_cookie(state: &Context, mut resp: HttpResponse, browser: &str) -> HttpResponse {
    let cookie = (BROWSER_COOKIE, browser, "/settings");
    crate::web::pages::set_cookie(state, &mut resp, cookie, settings_page::SESSION_TTL);
    resp
}

/// What a rendering shows besides the account.
struct Shown<'a> {
    form: Option<&'a Form>,
    errors: Option<&'a FieldErrors>,
    saved: bool,
}

impl Shown<'_> {
    /// The stored settings, with no save to report.
    const STORED: Self = Self {
        form: None,
        errors: None,
        saved: false,
    };
}

fn render(
    lang: Lang,
    token: &str,
    granted: &Granted,
    page: Page,
    shown: Shown<'_>,
) -> HttpResponse {
    let t = texts(lang);
    let n = pages::nonce();
    let mut tpl = SettingsTemplate {
        t,
        nonce: &n,
        action: format!("/settings/{token}?lang={}", lang.as_str()),
        csrf: &granted.csrf,
        host: String::new(),
        saved: shown.saved,
        invalid: shown.errors.is_some(),
        return_url: granted.session.return_url.as_deref(),
        problems: Vec::new(),
        form: None,
        unreadable: None,
    };
    let status = match page {
        Page::Ready(ready) => {
            tpl.host = ready.view.connection.host.clone();
            tpl.problems = ready.view.stored.problems.clone().into_iter().collect();
            let stored = Form::from_view(&ready.view);
            let form = shown.form.unwrap_or(&stored);
            tpl.form = Some(form_view(t, form, &ready, shown.errors));
            if shown.errors.is_some() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::OK
            }
        }
        Page::Unreadable(why) => {
            tpl.unreadable = Some(match why {
                Unreadable::Reconnect => t.reconnect_text,
                Unreadable::Unavailable => t.unavailable_text,
            });
            StatusCode::SERVICE_UNAVAILABLE
        }
    };
    pages::html_with_form(status, &n, tpl.render())
}

/// `GET /settings/{token}`.
pub async fn page(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Context>,
) -> HttpResponse {
    let token = path.into_inner();
    let cookie = req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned());
    let granted = match settings_page::open(&state, &token, cookie.as_deref()).await {
        Ok(Access::Granted(g)) => g,
        Ok(other) => return refused(&req, &other),
        Err(e) => return failed(&req, &e),
    };
    let lang = pick_lang(&req, Lang::parse(&granted.session.lang));
    let page = match settings_page::load(&state, &granted.session.seller_id).await {
        Ok(p) => p,
        Err(e) => return failed(&req, &e),
    };
    let resp = render(lang, &token, &granted, page, Shown::STORED);
    with_cookie(&state, resp, &granted.browser_token)
}

/// `POST /settings/{token}`: the form, checked like `PUT …/settings`; nothing is stored unless all of it holds.
pub async fn save(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Context>,
    body: web::Bytes,
) -> HttpResponse {
    let token = path.into_inner();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let form = Form::parse(&pairs);
    let cookie = req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned());
    let granted =
        match settings_page::authorize_save(&state, &token, cookie.as_deref(), &form.csrf).await {
            Ok(Access::Granted(g)) => g,
            Ok(other) => return refused(&req, &other),
            Err(e) => return failed(&req, &e),
        };
    let lang = pick_lang(&req, Lang::parse(&granted.session.lang));
    let seller = granted.session.seller_id.clone();
    let (errors, saved) = match settings_page::save(&state, &seller, &form).await {
        Ok(Saved::Done) => (None, true),
        Ok(Saved::Invalid(problems)) => (Some(problems), false),
        Ok(Saved::Unreadable(why)) => {
            return render(lang, &token, &granted, Page::Unreadable(why), Shown::STORED);
        }
        Err(e) => return failed(&req, &e),
    };
    let page = match settings_page::load(&state, &seller).await {
        Ok(p) => p,
        Err(e) => return failed(&req, &e),
    };
    let shown = Shown {
        // After a refused save the page shows what was sent, not what is stored.
        form: errors.is_some().then_some(&form),
        errors: errors.as_ref(),
        saved,
    };
    render(lang, &token, &granted, page, shown)
}
