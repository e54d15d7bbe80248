//! The operator dashboard: server-rendered pages from `templates/dashboard/`, for signed-in operators only.
//!
//! Sign-in sets an HttpOnly, SameSite=Strict session cookie (path `/dashboard`). Every form carries a
//! synchronizer token derived from the session secret and checked in constant time; the sign-in form itself
//! uses a double-submit cookie, since there is no session yet. Pages send a strict Content-Security-Policy
//! (own scripts and styles only) and are never cached.

mod actions;
mod pages;
mod settings;

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite, time::Duration as CookieDuration};
use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError, web};
use askama::Template;
use chrono::{FixedOffset, NaiveDateTime, Offset};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::ids::{constant_time_eq, random_token};
use crate::services::Context;
use crate::services::operators::{self, AuthError, Operator, SESSION_TTL};

const SESSION_COOKIE: &str = "amc_session";
const LOGIN_CSRF_COOKIE: &str = "amc_login_csrf";
const TZ_COOKIE: &str = "tz_offset";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("").get(pages::overview))
        .service(web::resource("/").get(pages::overview))
        .service(web::resource("/login").get(login_page).post(login))
        .service(web::resource("/logout").post(logout))
        .service(web::resource("/assets/app.css").get(css))
        .service(web::resource("/assets/app.js").get(js))
        .service(web::resource("/connections").get(pages::connections))
        .service(web::resource("/connections/{seller_id}").get(pages::connection))
        .service(web::resource("/orders").get(pages::orders))
        .service(web::resource("/orders/{id}").get(pages::order))
        .service(web::resource("/events").get(pages::events))
        .service(web::resource("/subscriptions").get(pages::subscriptions))
        .service(
            web::resource("/subscriptions/{id}")
                .get(pages::subscription)
                .post(actions::save_subscription),
        )
        .service(web::resource("/subscriptions/{id}/test").post(actions::test_subscription))
        .service(web::resource("/connections/{seller_id}/settings").get(settings::page))
        .service(
            web::resource("/connections/{seller_id}/refresh").post(actions::refresh_connection),
        )
        .service(web::resource("/connections/{seller_id}/connect-link").post(actions::connect_link))
        .service(web::resource("/orders/{id}/retry").post(actions::retry_order))
        .service(web::resource("/events/{id}/redeliver").post(actions::redeliver_event));
}

/// Security headers every dashboard response carries.
fn page(status: StatusCode) -> HttpResponseBuilder {
    let mut b = HttpResponse::build(status);
    b.insert_header((
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
         form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ))
    .insert_header((header::X_FRAME_OPTIONS, "DENY"))
    .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
    .insert_header((header::REFERRER_POLICY, "no-referrer"))
    .insert_header((header::CACHE_CONTROL, "no-store"));
    b
}

fn html(status: StatusCode, body: Result<String, askama::Error>) -> HttpResponse {
    match body {
        Ok(b) => page(status)
            .content_type("text/html; charset=utf-8")
            .body(b),
        Err(e) => DashError::Internal(e.to_string()).error_response(),
    }
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(include_str!("../../../templates/dashboard/app.css"))
}

async fn js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(include_str!("../../../templates/dashboard/app.js"))
}

/// Why a dashboard request did not get its page.
#[derive(Debug, thiserror::Error)]
pub enum DashError {
    #[error("sign in first")]
    SignIn,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    /// The database is unreachable (or read-only): the page comes back by itself.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<crate::storage::StorageError> for DashError {
    fn from(e: crate::storage::StorageError) -> Self {
        if e.is_unavailable() || e.is_read_only() {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<crate::services::subscriptions::SubscriptionError> for DashError {
    fn from(e: crate::services::subscriptions::SubscriptionError) -> Self {
        use crate::services::subscriptions::SubscriptionError;
        match e {
            SubscriptionError::NotFound => Self::NotFound,
            SubscriptionError::Storage(e) => e.into(),
            SubscriptionError::Invalid(_) => Self::Internal(e.to_string()),
        }
    }
}

impl ResponseError for DashError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::SignIn => StatusCode::SEE_OTHER,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let (title, text) = match self {
            Self::SignIn => {
                return page(StatusCode::SEE_OTHER)
                    .insert_header((header::LOCATION, "/dashboard/login"))
                    .finish();
            }
            Self::Forbidden(why) => ("Not allowed", *why),
            Self::NotFound => ("Not found", "There is nothing here."),
            Self::Unavailable(cause) => {
                tracing::warn!(error = %cause, "dashboard: database unavailable");
                (
                    "Database unavailable",
                    "The database cannot be reached right now; this page works again once it is back.",
                )
            }
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "dashboard error");
                (
                    "Something went wrong",
                    "The error was logged; try again in a moment.",
                )
            }
        };
        page(self.status_code())
            .content_type("text/html; charset=utf-8")
            .body(format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
                 <link rel=\"stylesheet\" href=\"/dashboard/assets/app.css\"><title>{title}</title></head>\
                 <body><main><h1>{title}</h1><p>{text}</p><p><a href=\"/dashboard\">Dashboard</a></p></main></body></html>"
            ))
    }
}

/// A signed-in operator, with the form token of their session and their time zone.
pub struct Signed {
    pub operator: Operator,
    pub csrf: String,
    pub clock: Clock,
}

impl Signed {
    /// Forms that change something: the operator must be an admin and the form token must match.
    pub fn check_write(&self, presented_csrf: &str) -> Result<(), DashError> {
        if !constant_time_eq(self.csrf.as_bytes(), presented_csrf.as_bytes()) {
            return Err(DashError::Forbidden(
                "The form expired or came from another site. Reload the page and try again.",
            ));
        }
        if !self.operator.role.can_write() {
            return Err(DashError::Forbidden(
                "Your account may view but not change anything.",
            ));
        }
        Ok(())
    }
}

impl FromRequest for Signed {
    type Error = DashError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, DashError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<Context>>().cloned();
        let session = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        let clock = Clock::from_request(req);
        Box::pin(async move {
            let state = state.ok_or_else(|| DashError::Internal("no state".into()))?;
            let session = session.ok_or(DashError::SignIn)?;
            let operator = operators::authenticate_session(&state.db, &session)
                .await?
                .ok_or(DashError::SignIn)?;
            Ok(Signed {
                operator,
                csrf: operators::csrf_token(&session),
                clock,
            })
        })
    }
}

/// What a dashboard page answers from: the request (its query and flash), the service and the signed-in
/// operator.
pub struct Viewer {
    pub req: HttpRequest,
    pub state: web::Data<Context>,
    pub signed: Signed,
}

impl Viewer {
    /// The navigation, with `section` marked as the current one.
    pub fn nav(&self, section: &'static str) -> Nav {
        Nav::new(&self.signed, &self.state, section, &self.req)
    }

    /// Whether the page offers the forms that change something.
    pub fn can_write(&self) -> bool {
        self.signed.operator.role.can_write()
    }
}

impl FromRequest for Viewer {
    type Error = DashError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, DashError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let state = req.app_data::<web::Data<Context>>().cloned();
        let signed = Signed::from_request(&req, payload);
        Box::pin(async move {
            let signed = signed.await?;
            let state = state.ok_or_else(|| DashError::Internal("no state".into()))?;
            Ok(Self { req, state, signed })
        })
    }
}

/// The operator's time zone as a fixed offset (from the `tz_offset` cookie the page script sets); UTC
/// until the browser has told us. The script also rewrites every time into the browser's own zone.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    offset: FixedOffset,
}

impl Clock {
    fn from_request(req: &HttpRequest) -> Self {
        let minutes = req
            .cookie(TZ_COOKIE)
            .and_then(|c| c.value().parse::<i32>().ok())
            .filter(|m| (-14 * 60..=14 * 60).contains(m))
            .unwrap_or(0);
        Self {
            offset: FixedOffset::east_opt(minutes * 60).unwrap_or_else(|| chrono::Utc.fix()),
        }
    }

    /// A `<time>` element: machine-readable UTC, human-readable in the operator's zone.
    pub fn time(&self, t: NaiveDateTime) -> String {
        let utc = t.and_utc();
        let local = utc.with_timezone(&self.offset);
        format!(
            "<time datetime=\"{}\">{}</time>",
            utc.format("%Y-%m-%dT%H:%M:%SZ"),
            local.format("%Y-%m-%d %H:%M")
        )
    }

    pub fn time_opt(&self, t: Option<NaiveDateTime>) -> String {
        t.map_or_else(|| "—".to_owned(), |t| self.time(t))
    }

    /// `UTC+05:00`.
    pub fn zone(&self) -> String {
        format!("UTC{}", self.offset)
    }
}

/// The navigation and identity every page shows.
pub struct Nav {
    pub section: &'static str,
    pub operator_name: String,
    pub role: &'static str,
    pub csrf: String,
    pub sandbox_url: Option<String>,
    pub zone: String,
    pub flash: Option<String>,
}

impl Nav {
    pub fn new(signed: &Signed, state: &Context, section: &'static str, req: &HttpRequest) -> Self {
        #[derive(Deserialize)]
        struct Flash {
            done: Option<String>,
        }
        let flash = serde_urlencoded::from_str::<Flash>(req.query_string())
            .ok()
            .and_then(|f| f.done)
            .and_then(|d| flash_text(&d));
        Self {
            section,
            operator_name: signed.operator.name.clone(),
            role: signed.operator.role.as_str(),
            csrf: signed.csrf.clone(),
            sandbox_url: state
                .settings
                .sandbox_page_url
                .as_ref()
                .map(|u| u.to_string()),
            zone: signed.clock.zone(),
            flash,
        }
    }
}

/// Messages after an action, chosen from a fixed list (never text from the query string).
fn flash_text(key: &str) -> Option<String> {
    Some(
        match key {
            "refreshed" => "The connection was refreshed.",
            "refresh_error" => "The refresh failed; see the connection's last error.",
            "recovered" => "amoCRM answers the account again: the connection is active.",
            "still_suspended" => "amoCRM still refuses the account; it is probed again later.",
            "retried" => "The order was queued again.",
            "redelivered" => "Queued for delivery again.",
            "saved" => "Saved. New events are delivered as set here.",
            _ => return None,
        }
        .to_owned(),
    )
}

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage {
    error: Option<String>,
    email: String,
    csrf: String,
}

fn secure_cookies(state: &Context) -> bool {
    state.settings.public_base_url.scheme() == "https"
}

fn login_form(
    state: &Context,
    status: StatusCode,
    error: Option<String>,
    email: String,
) -> HttpResponse {
    let csrf = random_token(32);
    let cookie = Cookie::build(LOGIN_CSRF_COOKIE, csrf.clone())
        .path("/dashboard/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure_cookies(state))
        .max_age(CookieDuration::minutes(30))
        .finish();
    let body = LoginPage { error, email, csrf }.render();
    let mut resp = html(status, body);
    let _ = resp.add_cookie(&cookie);
    resp
}

async fn login_page(req: HttpRequest, state: web::Data<Context>) -> HttpResponse {
    // Already signed in: straight to the dashboard.
    if let Some(c) = req.cookie(SESSION_COOKIE)
        && let Ok(Some(_)) = operators::authenticate_session(&state.db, c.value()).await
    {
        return page(StatusCode::SEE_OTHER)
            .insert_header((header::LOCATION, "/dashboard"))
            .finish();
    }
    login_form(&state, StatusCode::OK, None, String::new())
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    csrf: String,
}

async fn login(
    req: HttpRequest,
    state: web::Data<Context>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let form = form.into_inner();
    let cookie_csrf = req
        .cookie(LOGIN_CSRF_COOKIE)
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if cookie_csrf.is_empty() || !constant_time_eq(cookie_csrf.as_bytes(), form.csrf.as_bytes()) {
        return login_form(
            &state,
            StatusCode::FORBIDDEN,
            Some("The form expired. Please sign in again.".into()),
            form.email,
        );
    }
    let password = form
        .password
        .filter(|p| !p.expose_secret().is_empty() && p.expose_secret().len() <= 1024);
    let (Some(password), false) = (password, form.email.trim().is_empty()) else {
        return login_form(
            &state,
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("Enter your e-mail and password.".into()),
            form.email,
        );
    };
    let ip = crate::web::auth::client_ip(&req, &state);
    match operators::login_session(&state.db, &form.email, password, ip).await {
        Ok((_, session)) => {
            let cookie = Cookie::build(SESSION_COOKIE, session.expose_secret().to_owned())
                .path("/dashboard")
                .http_only(true)
                .same_site(SameSite::Strict)
                .secure(secure_cookies(&state))
                .max_age(CookieDuration::seconds(SESSION_TTL.as_secs() as i64))
                .finish();
            let mut clear = Cookie::build(LOGIN_CSRF_COOKIE, "")
                .path("/dashboard/login")
                .finish();
            clear.make_removal();
            page(StatusCode::SEE_OTHER)
                .insert_header((header::LOCATION, "/dashboard"))
                .cookie(cookie)
                .cookie(clear)
                .finish()
        }
        Err(AuthError::Throttled { retry_after }) => {
            let mut resp = login_form(
                &state,
                StatusCode::TOO_MANY_REQUESTS,
                Some(format!(
                    "Too many failed sign-ins. Try again in {retry_after} seconds."
                )),
                form.email,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
            resp
        }
        Err(AuthError::InvalidCredentials | AuthError::InvalidRefreshToken) => login_form(
            &state,
            StatusCode::UNAUTHORIZED,
            Some("Wrong e-mail or password.".into()),
            form.email,
        ),
        Err(AuthError::Storage(e)) => DashError::from(e).error_response(),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

async fn logout(
    req: HttpRequest,
    state: web::Data<Context>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, DashError> {
    if let Some(c) = req.cookie(SESSION_COOKIE) {
        let expected = operators::csrf_token(c.value());
        if !constant_time_eq(expected.as_bytes(), form.csrf.as_bytes()) {
            return Err(DashError::Forbidden(
                "The form expired. Reload the page and try again.",
            ));
        }
        operators::revoke(&state.db, c.value()).await?;
    }
    let mut clear = Cookie::build(SESSION_COOKIE, "")
        .path("/dashboard")
        .finish();
    clear.make_removal();
    Ok(page(StatusCode::SEE_OTHER)
        .insert_header((header::LOCATION, "/dashboard/login"))
        .cookie(clear)
        .finish())
}
