//! Seller-facing HTML: the "Connect amoCRM" page and the result pages of the OAuth flow, in Uzbek (default),
//! Russian and English (`?lang=`, the session's language, or `Accept-Language`).
//!
//! Every page is sent with `Referrer-Policy: no-referrer` (its URL carries a session token or an OAuth code),
//! `Cache-Control: no-store`, and a CSP whose script nonce is fresh per response.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;

use crate::domain::ids::random_token;
use crate::domain::platform::Platform;
use crate::domain::status::ConnectionStatus;
use crate::services::Context;
use crate::services::connect::{self, BROWSER_COOKIE, Lang, Page};
use crate::storage::connections::Connection;

/// The words of the seller pages in one language.
pub struct Texts {
    pub html_lang: &'static str,
    pub connect_title: &'static str,
    pub connect_intro: &'static str,
    pub connect_button: &'static str,
    pub reconnect_button: &'static str,
    pub fallback_link: &'static str,
    pub connected_as: &'static str,
    pub since: &'static str,
    pub status_active: &'static str,
    pub status_refresh_failed: &'static str,
    pub status_revoked: &'static str,
    pub status_suspended: &'static str,
    pub waiting: &'static str,
    pub success_title: &'static str,
    pub success_text: &'static str,
    pub setup_pending: &'static str,
    pub error_title: &'static str,
    pub retry: &'static str,
    pub ask_new_link: &'static str,
    pub unknown_title: &'static str,
    pub unknown_text: &'static str,
    pub expired_title: &'static str,
    pub expired_text: &'static str,
    pub used_title: &'static str,
    pub used_text: &'static str,
    pub from_widget: &'static str,
    pub bad_state: &'static str,
    pub expired_state: &'static str,
    pub used_state: &'static str,
    pub other_browser: &'static str,
    pub session_used: &'static str,
    pub denied: &'static str,
    pub wrong_client: &'static str,
    pub bad_referer: &'static str,
    pub missing_code: &'static str,
    pub exchange_failed: &'static str,
    pub account_unreadable: &'static str,
    pub account_taken: &'static str,
    pub settings_link: &'static str,
    /// "Connected to {host}": every success names the account.
    pub connected_to: &'static str,
    pub connected_title: &'static str,
    pub used_connected: &'static str,
    pub not_connected: &'static str,
    pub pending: &'static str,
    pub popup_closed: &'static str,
}

pub const UZ: Texts = Texts {
    html_lang: "uz",
    connect_title: "amoCRMʼni ulash",
    connect_intro: "Marketpleys buyurtmalari amoCRMʼda bitim sifatida paydo boʻlishi uchun hisobingizni ulang. amoCRM ruxsat oynasi ochiladi.",
    connect_button: "amoCRMʼni ulash",
    reconnect_button: "Qayta ulash",
    fallback_link: "Oyna ochilmadimi? Shu yerda davom eting",
    connected_as: "amoCRM hisobi",
    since: "Ulangan vaqt",
    status_active: "Faol",
    status_refresh_failed: "Ulanish uzildi — iltimos, qayta ulang",
    status_revoked: "Uzilgan",
    status_suspended: "amoCRM hisobni vaqtincha rad etmoqda (toʻlanmagan yoki bloklangan); buyurtmalar kutib turibdi",
    waiting: "amoCRM oynasida ruxsat bering…",
    success_title: "amoCRM ulandi",
    success_text: "Buyurtmalaringiz endi amoCRMʼga tushadi. Bu oynani yopishingiz mumkin.",
    setup_pending: "Sozlash yakunlanmoqda: voronka va maydonlar tez orada tayyor boʻladi. Qayta ulanish shart emas.",
    error_title: "Ulanib boʻlmadi",
    retry: "Qayta urinish",
    ask_new_link: "Marketpleys kabinetidan yangi ulanish havolasini oching.",
    unknown_title: "Havola topilmadi",
    unknown_text: "Bu ulanish havolasi notoʻgʻri.",
    expired_title: "Havola muddati tugagan",
    expired_text: "Ulanish havolalari 30 daqiqa amal qiladi.",
    used_title: "Havola allaqachon ishlatilgan",
    used_text: "Har bir ulanish havolasi faqat bir marta ishlaydi.",
    from_widget: "amoCRM vidjeti yoki katalogi orqali oʻrnatish qoʻllab-quvvatlanmaydi. Marketpleysdagi sotuvchi kabinetini oching va u yerdagi “amoCRMʼni ulash” tugmasini bosing.",
    bad_state: "Soʻrov xavfsizlik tekshiruvidan oʻtmadi.",
    expired_state: "Ulanish uchun ajratilgan vaqt (30 daqiqa) tugadi.",
    used_state: "Bu ulanish soʻrovi allaqachon ishlatilgan.",
    other_browser: "Ulanishni boshlagan brauzeringizda yakunlang.",
    session_used: "Bu havola orqali ulanish allaqachon yakunlangan.",
    denied: "Siz amoCRMʼga kirishga ruxsat bermadingiz.",
    wrong_client: "Javob boshqa integratsiyaga tegishli.",
    bad_referer: "amoCRM hisobining manzili notoʻgʻri.",
    missing_code: "amoCRM ruxsat kodini yubormadi.",
    exchange_failed: "amoCRM kirishga ruxsat bermadi. Qayta urinib koʻring.",
    account_unreadable: "amoCRM hisobini aniqlab boʻlmadi.",
    account_taken: "Bu amoCRM hisobi boshqa sotuvchiga ulangan.",
    settings_link: "Buyurtmalar qanday tushishini sozlash",
    connected_to: "Siz {host} hisobiga ulangansiz.",
    connected_title: "amoCRM ulangan",
    used_connected: "Bu havola allaqachon ishlatilgan. Boshqa hisobni ulash uchun marketpleys kabinetidan yangi havola oching.",
    not_connected: "Hali ulanmagan",
    pending: "Ulanish davom etmoqda. Sahifani birozdan keyin yangilang.",
    popup_closed: "amoCRM oynasi ulanish tugamasdan yopildi.",
};

pub const RU: Texts = Texts {
    html_lang: "ru",
    connect_title: "Подключение amoCRM",
    connect_intro: "Подключите свой аккаунт amoCRM, чтобы заказы маркетплейса появлялись в нём как сделки. Откроется окно подтверждения доступа amoCRM.",
    connect_button: "Подключить amoCRM",
    reconnect_button: "Переподключить",
    fallback_link: "Окно не открылось? Продолжите здесь",
    connected_as: "Аккаунт amoCRM",
    since: "Подключён",
    status_active: "Активен",
    status_refresh_failed: "Подключение потеряно — переподключите, пожалуйста",
    status_revoked: "Отключён",
    status_suspended: "amoCRM временно отклоняет аккаунт (не оплачен или заблокирован); заказы ждут",
    waiting: "Подтвердите доступ в окне amoCRM…",
    success_title: "amoCRM подключён",
    success_text: "Заказы теперь будут попадать в amoCRM. Это окно можно закрыть.",
    setup_pending: "Настройка завершается: воронка и поля скоро будут готовы. Подключаться повторно не нужно.",
    error_title: "Не удалось подключить",
    retry: "Попробовать снова",
    ask_new_link: "Откройте новую ссылку подключения в кабинете маркетплейса.",
    unknown_title: "Ссылка не найдена",
    unknown_text: "Эта ссылка для подключения недействительна.",
    expired_title: "Срок действия ссылки истёк",
    expired_text: "Ссылки для подключения действуют 30 минут.",
    used_title: "Ссылка уже использована",
    used_text: "Каждая ссылка для подключения работает только один раз.",
    from_widget: "Установка из виджета или каталога amoCRM не поддерживается. Откройте кабинет продавца на маркетплейсе и нажмите там «Подключить amoCRM».",
    bad_state: "Запрос не прошёл проверку безопасности.",
    expired_state: "Время на подключение (30 минут) истекло.",
    used_state: "Этот запрос на подключение уже использован.",
    other_browser: "Завершите подключение в том же браузере, где вы его начали.",
    session_used: "Подключение по этой ссылке уже завершено.",
    denied: "Вы не разрешили доступ к amoCRM.",
    wrong_client: "Ответ относится к другой интеграции.",
    bad_referer: "Неверный адрес аккаунта amoCRM.",
    missing_code: "amoCRM не передал код авторизации.",
    exchange_failed: "amoCRM не выдал доступ. Попробуйте ещё раз.",
    account_unreadable: "Не удалось определить аккаунт amoCRM.",
    account_taken: "Этот аккаунт amoCRM уже подключён другим продавцом.",
    settings_link: "Настроить, как приходят заказы",
    connected_to: "Вы подключены к аккаунту {host}.",
    connected_title: "amoCRM подключён",
    used_connected: "Эта ссылка уже использована. Чтобы подключить другой аккаунт, откройте новую ссылку в кабинете маркетплейса.",
    not_connected: "Ещё не подключён",
    pending: "Подключение ещё идёт. Обновите страницу чуть позже.",
    popup_closed: "Окно amoCRM закрыто до завершения подключения.",
};

pub const EN: Texts = Texts {
    html_lang: "en",
    connect_title: "Connect amoCRM",
    connect_intro: "Connect your amoCRM account so marketplace orders appear in it as deals. amoCRM's consent window will open.",
    connect_button: "Connect amoCRM",
    reconnect_button: "Reconnect",
    fallback_link: "The window did not open? Continue here",
    connected_as: "amoCRM account",
    since: "Connected since",
    status_active: "Active",
    status_refresh_failed: "Connection lost — please reconnect",
    status_revoked: "Disconnected",
    status_suspended: "amoCRM refuses the account for now (unpaid or blocked); orders are waiting",
    waiting: "Allow access in the amoCRM window…",
    success_title: "amoCRM is connected",
    success_text: "Your orders will now appear in amoCRM. You can close this window.",
    setup_pending: "Setup is finishing: the pipeline and fields will be ready shortly. You do not need to connect again.",
    error_title: "Could not connect",
    retry: "Try again",
    ask_new_link: "Open a new connect link from your marketplace dashboard.",
    unknown_title: "Link not found",
    unknown_text: "This connect link is not valid.",
    expired_title: "This link has expired",
    expired_text: "Connect links are valid for 30 minutes.",
    used_title: "This link was already used",
    used_text: "Each connect link works only once.",
    from_widget: "Installing from an amoCRM widget or the amoCRM marketplace is not supported. Open your seller dashboard on the marketplace and use “Connect amoCRM” there.",
    bad_state: "The request failed a security check.",
    expired_state: "The time to connect (30 minutes) ran out.",
    used_state: "This connect request was already used.",
    other_browser: "Finish connecting in the browser you started in.",
    session_used: "Connecting through this link is already complete.",
    denied: "You did not allow access to amoCRM.",
    wrong_client: "The answer belongs to another integration.",
    bad_referer: "The amoCRM account address is not valid.",
    missing_code: "amoCRM did not send an authorization code.",
    exchange_failed: "amoCRM did not grant access. Please try again.",
    account_unreadable: "The amoCRM account could not be identified.",
    account_taken: "This amoCRM account is already connected by another seller.",
    settings_link: "Set up how orders arrive",
    connected_to: "You are connected to {host}.",
    connected_title: "amoCRM is connected",
    used_connected: "This link was already used. To connect another account, open a new link from your marketplace dashboard.",
    not_connected: "Not connected yet",
    pending: "Connecting is still in progress. Reload this page in a moment.",
    popup_closed: "The amoCRM window was closed before connecting finished.",
};

pub fn texts(lang: Lang) -> &'static Texts {
    match lang {
        Lang::Uz => &UZ,
        Lang::Ru => &RU,
        Lang::En => &EN,
    }
}

/// Name of the cookie holding the language a seller chose with `?lang=`, for the pages after amoCRM's
/// consent (whose URLs carry no `?lang=`).
pub const LANG_COOKIE: &str = "amocrm_lang";

/// The language the seller chose: `?lang=`, else the language cookie (for pages reached from amoCRM).
pub fn chosen_lang(req: &HttpRequest) -> Option<Lang> {
    query_lang(req).or_else(|| req.cookie(LANG_COOKIE).and_then(|c| Lang::parse(c.value())))
}

fn query_lang(req: &HttpRequest) -> Option<Lang> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("lang").and_then(|l| Lang::parse(l)))
}

/// The browser's language (`Accept-Language`).
pub fn browser_lang(req: &HttpRequest) -> Option<Lang> {
    req.headers()
        .get("accept-language")
        .and_then(|v| v.to_str().ok())
        .and_then(Lang::from_accept_language)
}

/// `?lang=` first, then the language known server-side (the state's or the session's), then the
/// seller's language cookie, then `Accept-Language`, then Uzbek.
pub fn pick_lang(req: &HttpRequest, known: Option<Lang>) -> Lang {
    query_lang(req)
        .or(known)
        .or_else(|| chosen_lang(req))
        .or_else(|| browser_lang(req))
        .unwrap_or(Lang::Uz)
}

/// The origin (`scheme://host[:port]`) pages post messages to and accept them from.
pub fn origin(state: &Context) -> String {
    state
        .settings
        .public_base_url
        .origin()
        .ascii_serialization()
}

/// The one status card of the seller pages: the account and its status as stored now.
pub struct CurrentConnection {
    /// Empty when the seller has no connection.
    pub host: String,
    pub account_id: i64,
    pub since: String,
    pub status_text: &'static str,
    pub status_class: &'static str,
}

impl CurrentConnection {
    pub fn from(c: &Connection, t: &'static Texts) -> Self {
        let (status_text, status_class) = match c.status {
            ConnectionStatus::Active => (t.status_active, "ok"),
            ConnectionStatus::RefreshFailed => (t.status_refresh_failed, "warn"),
            ConnectionStatus::Revoked => (t.status_revoked, "bad"),
            ConnectionStatus::Suspended => (t.status_suspended, "warn"),
        };
        Self {
            host: c.host.clone(),
            account_id: c.account_id,
            since: c.connected_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            status_text,
            status_class,
        }
    }

    /// The card of a seller without a connection.
    pub fn none(t: &'static Texts) -> Self {
        Self {
            host: String::new(),
            account_id: 0,
            since: String::new(),
            status_text: t.not_connected,
            status_class: "muted",
        }
    }

    pub fn of(c: Option<&Connection>, t: &'static Texts) -> Self {
        c.map_or_else(|| Self::none(t), |c| Self::from(c, t))
    }

    /// Whether orders reach this account now (what "connected to" may be said of).
    pub fn is_live(c: &Connection) -> bool {
        matches!(
            c.status,
            ConnectionStatus::Active | ConnectionStatus::Suspended
        )
    }
}

/// "Connected to {host}" in the seller's language.
pub fn connected_to(t: &Texts, host: &str) -> String {
    t.connected_to.replace("{host}", host)
}

#[derive(Template)]
#[template(path = "seller/connect.html")]
struct ConnectTemplate<'a> {
    t: &'static Texts,
    nonce: &'a str,
    connected: bool,
    card: CurrentConnection,
    popup_url: &'a str,
    fallback_url: &'a str,
    origin: &'a str,
    return_url: &'a str,
}

#[derive(Template)]
#[template(path = "seller/message.html")]
pub struct MessageTemplate<'a> {
    pub t: &'static Texts,
    pub nonce: &'a str,
    pub class: &'a str,
    pub title: &'a str,
    pub text: &'a str,
    pub note: Option<&'a str>,
    pub hint: Option<&'a str>,
    pub retry_url: Option<&'a str>,
    /// The seller's settings page, offered after connecting.
    pub settings_url: Option<&'a str>,
    /// The seller's connection as it is now, on pages about one.
    pub card: Option<CurrentConnection>,
    /// Whether to post the outcome to the opener (popup mode).
    pub post_message: bool,
    pub status: &'a str,
    pub origin: &'a str,
    pub return_url: &'a str,
}

/// A fresh per-response nonce for the CSP.
pub fn nonce() -> String {
    random_token(24)
}

/// A page rendered for a seller of `platform`: the texts are written with amoCRM's name, which a Kommo seller
/// reads as Kommo (the name appears only in human text; hosts and code are lowercase).
pub fn branded(
    platform: Platform,
    body: Result<String, askama::Error>,
) -> Result<String, askama::Error> {
    match platform {
        Platform::Amocrm => body,
        other => body.map(|b| b.replace("amoCRM", other.display_name())),
    }
}

/// An HTML response with the headers every seller page carries.
pub fn html(status: StatusCode, nonce: &str, body: Result<String, askama::Error>) -> HttpResponse {
    respond(status, nonce, body, "'none'")
}

/// As [`html`], for a page whose form posts back to this service.
pub fn html_with_form(
    status: StatusCode,
    nonce: &str,
    body: Result<String, askama::Error>,
) -> HttpResponse {
    respond(status, nonce, body, "'self'")
}

fn respond(
    status: StatusCode,
    nonce: &str,
    body: Result<String, askama::Error>,
    form_action: &str,
) -> HttpResponse {
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "page template failed");
            return HttpResponse::InternalServerError()
                .content_type("text/plain; charset=utf-8")
                .body("internal error");
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header((
            "Content-Security-Policy",
            format!(
                "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
                 img-src 'self' data:; base-uri 'none'; form-action {form_action}; frame-ancestors 'none'"
            ),
        ))
        .body(body)
}

/// A simple message page (no retry, no script).
pub fn message(
    status: StatusCode,
    lang: Lang,
    class: &str,
    title: &str,
    text: &str,
    hint: Option<&str>,
) -> HttpResponse {
    let n = nonce();
    let page = MessageTemplate {
        t: texts(lang),
        nonce: &n,
        class,
        title,
        text,
        note: None,
        hint,
        retry_url: None,
        settings_url: None,
        card: None,
        post_message: false,
        status: "error",
        origin: "",
        return_url: "",
    };
    html(status, &n, page.render())
}

/// A message page in the language `pick_lang` finds in the request alone; `words` picks its title, text
/// and hint from that language's texts.
pub fn message_for(
    req: &HttpRequest,
    status: StatusCode,
    class: &str,
    words: impl FnOnce(&'static Texts) -> (&'static str, &'static str, Option<&'static str>),
) -> HttpResponse {
    let lang = pick_lang(req, None);
    let (title, text, hint) = words(texts(lang));
    message(status, lang, class, title, text, hint)
}

/// The page for a request the database could not serve: try again later, in the browser's language.
pub fn unavailable(req: &HttpRequest) -> HttpResponse {
    message_for(req, StatusCode::SERVICE_UNAVAILABLE, "bad", |t| {
        (t.error_title, t.exchange_failed, None)
    })
}

/// `GET /connect/{token}`.
pub async fn connect_page(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Context>,
) -> HttpResponse {
    let token = path.into_inner();
    let cookie = req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned());
    // The cookie is not read here: the link's own language (the marketplace's choice) or the browser's
    // decide until the seller picks one on this page.
    let langs = (query_lang(&req), browser_lang(&req));
    let page = match connect::open_page(&state, &token, cookie.as_deref(), langs).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "connect page failed");
            return unavailable(&req);
        }
    };
    let mut resp = match page {
        Page::Unknown => message_for(&req, StatusCode::NOT_FOUND, "bad", |t| {
            (t.unknown_title, t.unknown_text, Some(t.ask_new_link))
        }),
        Page::Expired => message_for(&req, StatusCode::GONE, "warn", |t| {
            (t.expired_title, t.expired_text, Some(t.ask_new_link))
        }),
        Page::Used(used) => used_page(&req, &used),
        Page::Ready(ready) => ready_page(&state, &ready),
    };
    remember_chosen_lang(&req, &state, &mut resp);
    resp
}

/// A used link opens no new consent (410, as the contract has it), but a seller who is connected is told
/// to which account, rather than only that the link is spent.
fn used_page(req: &HttpRequest, used: &connect::UsedPage) -> HttpResponse {
    let lang = pick_lang(req, Lang::parse(&used.session.lang));
    let t = texts(lang);
    let live = used
        .connection
        .as_ref()
        .filter(|c| CurrentConnection::is_live(c));
    let Some(conn) = live else {
        return message(
            StatusCode::GONE,
            lang,
            "warn",
            t.used_title,
            t.used_text,
            Some(t.ask_new_link),
        );
    };
    let n = nonce();
    let text = connected_to(t, &conn.host);
    let page = MessageTemplate {
        t,
        nonce: &n,
        class: "ok",
        title: t.connected_title,
        text: &text,
        note: None,
        hint: Some(t.used_connected),
        retry_url: None,
        settings_url: None,
        card: Some(CurrentConnection::from(conn, t)),
        post_message: false,
        status: "connected",
        origin: "",
        return_url: "",
    };
    html(StatusCode::GONE, &n, branded(conn.platform, page.render()))
}

fn ready_page(state: &Context, ready: &connect::ReadyPage) -> HttpResponse {
    let t = texts(ready.lang);
    let n = nonce();
    let origin = origin(state);
    let page = ConnectTemplate {
        t,
        nonce: &n,
        connected: ready.connection.is_some(),
        card: CurrentConnection::of(ready.connection.as_ref(), t),
        popup_url: &ready.popup_url,
        fallback_url: &ready.fallback_url,
        origin: &origin,
        return_url: ready.session.return_url.as_deref().unwrap_or(""),
    };
    let body = branded(ready.session.platform, page.render());
    let mut resp = html(StatusCode::OK, &n, body);
    let cookie = (BROWSER_COOKIE, ready.browser_token.as_str(), "/");
    set_cookie(state, &mut resp, cookie, connect::STATE_TTL);
    resp
}

/// Sets the cookie `(name, value, path)` on `resp` for `ttl`: HTTP only, secure behind HTTPS, and
/// `SameSite=Lax`, so it comes along when the seller returns from amoCRM or the marketplace, not with
/// another site's form post.
pub fn set_cookie(
    state: &Context,
    resp: &mut HttpResponse,
    (name, value, path): (&str, &str, &str),
    ttl: std::time::Duration,
) {
    let cookie = Cookie::build(name, value)
        .path(path)
        .http_only(true)
        .secure(state.settings.public_base_url.scheme() == "https")
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(
            i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        ))
        .finish();
    if let Err(e) = resp.add_cookie(&cookie) {
        tracing::error!(error = %e, cookie = name, "could not set a cookie");
    }
}

/// A `?lang=` the seller chose is kept in a cookie, for pages whose URL carries none.
fn remember_chosen_lang(req: &HttpRequest, state: &Context, resp: &mut HttpResponse) {
    let Some(lang) = query_lang(req) else {
        return;
    };
    let year = std::time::Duration::from_secs(365 * 24 * 3600);
    set_cookie(state, resp, (LANG_COOKIE, lang.as_str(), "/"), year);
}

/// `GET /connect/assets/seller.js`: the seller pages' one script, from a file so the CSP needs no inline
/// code (it is still loaded only with the page's nonce).
pub async fn script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(include_str!("../../templates/seller/seller.js"))
}
