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
}

pub const UZ: Texts = Texts {
    html_lang: "uz",
    connect_title: "amoCRM'ni ulash",
    connect_intro: "Marketpleys buyurtmalari amoCRM'da bitim sifatida paydo bo'lishi uchun hisobingizni ulang. amoCRM ruxsat oynasi ochiladi.",
    connect_button: "amoCRM'ni ulash",
    reconnect_button: "Qayta ulash",
    fallback_link: "Oyna ochilmadimi? Shu yerda davom eting",
    connected_as: "Ulangan hisob",
    since: "Ulangan vaqt",
    status_active: "Faol",
    status_refresh_failed: "Ulanish uzildi — iltimos, qayta ulang",
    status_revoked: "Uzilgan",
    status_suspended: "amoCRM hisobni vaqtincha rad etmoqda (to'lanmagan yoki bloklangan); buyurtmalar kutib turibdi",
    waiting: "amoCRM oynasida ruxsat bering…",
    success_title: "amoCRM ulandi",
    success_text: "Buyurtmalaringiz endi amoCRM'ga tushadi. Bu oynani yopishingiz mumkin.",
    setup_pending: "Sozlash yakunlanmoqda: voronka va maydonlar tez orada tayyor bo'ladi. Qayta ulanish shart emas.",
    error_title: "Ulanib bo'lmadi",
    retry: "Qayta urinish",
    ask_new_link: "Marketpleys kabinetidan yangi ulanish havolasini oching.",
    unknown_title: "Havola topilmadi",
    unknown_text: "Bu ulanish havolasi noto'g'ri.",
    expired_title: "Havola muddati tugagan",
    expired_text: "Ulanish havolalari 30 daqiqa amal qiladi.",
    used_title: "Havola allaqachon ishlatilgan",
    used_text: "Har bir ulanish havolasi faqat bir marta ishlaydi.",
    from_widget: "amoCRM vidjeti yoki katalogi orqali o'rnatish qo'llab-quvvatlanmaydi. Marketpleysdagi sotuvchi kabinetini oching va u yerdagi “amoCRM'ni ulash” tugmasini bosing.",
    bad_state: "So'rov xavfsizlik tekshiruvidan o'tmadi.",
    expired_state: "Ulanish uchun ajratilgan vaqt (30 daqiqa) tugadi.",
    used_state: "Bu ulanish so'rovi allaqachon ishlatilgan.",
    other_browser: "Ulanishni boshlagan brauzeringizda yakunlang.",
    session_used: "Bu havola orqali ulanish allaqachon yakunlangan.",
    denied: "Siz amoCRM'ga kirishga ruxsat bermadingiz.",
    wrong_client: "Javob boshqa integratsiyaga tegishli.",
    bad_referer: "amoCRM hisobining manzili noto'g'ri.",
    missing_code: "amoCRM ruxsat kodini yubormadi.",
    exchange_failed: "amoCRM kirishga ruxsat bermadi. Qayta urinib ko'ring.",
    account_unreadable: "amoCRM hisobini aniqlab bo'lmadi.",
    account_taken: "Bu amoCRM hisobi boshqa sotuvchiga ulangan.",
    settings_link: "Buyurtmalar qanday tushishini sozlash",
};

pub const RU: Texts = Texts {
    html_lang: "ru",
    connect_title: "Подключение amoCRM",
    connect_intro: "Подключите свой аккаунт amoCRM, чтобы заказы маркетплейса появлялись в нём как сделки. Откроется окно подтверждения доступа amoCRM.",
    connect_button: "Подключить amoCRM",
    reconnect_button: "Переподключить",
    fallback_link: "Окно не открылось? Продолжите здесь",
    connected_as: "Подключённый аккаунт",
    since: "Подключён",
    status_active: "Активно",
    status_refresh_failed: "Подключение потеряно — переподключите, пожалуйста",
    status_revoked: "Отключено",
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
};

pub const EN: Texts = Texts {
    html_lang: "en",
    connect_title: "Connect amoCRM",
    connect_intro: "Connect your amoCRM account so marketplace orders appear in it as deals. amoCRM's consent window will open.",
    connect_button: "Connect amoCRM",
    reconnect_button: "Reconnect",
    fallback_link: "The window did not open? Continue here",
    connected_as: "Connected account",
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
};

pub fn texts(lang: Lang) -> &'static Texts {
    match lang {
        Lang::Uz => &UZ,
        Lang::Ru => &RU,
        Lang::En => &EN,
    }
}

/// `?lang=` first, then the session's language, then `Accept-Language`, then Uzbek.
pub fn pick_lang(req: &HttpRequest, session_lang: Option<Lang>) -> Lang {
    let from_query =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("lang").and_then(|l| Lang::parse(l)));
    from_query
        .or(session_lang)
        .or_else(|| {
            req.headers()
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .and_then(Lang::from_accept_language)
        })
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

/// The account shown on the connect page.
pub struct CurrentConnection {
    pub host: String,
    pub account_id: i64,
    pub since: String,
    pub status_text: &'static str,
    pub status_class: &'static str,
}

impl CurrentConnection {
    fn from(c: &Connection, t: &'static Texts) -> Self {
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
}

#[derive(Template)]
#[template(path = "seller/connect.html")]
struct ConnectTemplate<'a> {
    t: &'static Texts,
    nonce: &'a str,
    connection: Option<CurrentConnection>,
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
        post_message: false,
        status: "error",
        origin: "",
        return_url: "",
    };
    html(status, &n, page.render())
}

/// `GET /connect/{token}`.
pub async fn connect_page(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<Context>,
) -> HttpResponse {
    let token = path.into_inner();
    let cookie = req.cookie(BROWSER_COOKIE).map(|c| c.value().to_owned());
    let page = match connect::open_page(&state, &token, cookie.as_deref()).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "connect page failed");
            let lang = pick_lang(&req, None);
            let t = texts(lang);
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                lang,
                "bad",
                t.error_title,
                t.exchange_failed,
                None,
            );
        }
    };
    match page {
        Page::Unknown => {
            let lang = pick_lang(&req, None);
            let t = texts(lang);
            message(
                StatusCode::NOT_FOUND,
                lang,
                "bad",
                t.unknown_title,
                t.unknown_text,
                Some(t.ask_new_link),
            )
        }
        Page::Expired => {
            let lang = pick_lang(&req, None);
            let t = texts(lang);
            message(
                StatusCode::GONE,
                lang,
                "warn",
                t.expired_title,
                t.expired_text,
                Some(t.ask_new_link),
            )
        }
        Page::Used => {
            let lang = pick_lang(&req, None);
            let t = texts(lang);
            message(
                StatusCode::GONE,
                lang,
                "warn",
                t.used_title,
                t.used_text,
                Some(t.ask_new_link),
            )
        }
        Page::Ready(ready) => {
            let lang = pick_lang(&req, Lang::parse(&ready.session.lang));
            let t = texts(lang);
            let n = nonce();
            let origin = origin(&state);
            let page = ConnectTemplate {
                t,
                nonce: &n,
                connection: ready
                    .connection
                    .as_ref()
                    .map(|c| CurrentConnection::from(c, t)),
                popup_url: &ready.popup_url,
                fallback_url: &ready.fallback_url,
                origin: &origin,
                return_url: ready.session.return_url.as_deref().unwrap_or(""),
            };
            let body = branded(ready.session.platform, page.render());
            let mut resp = html(StatusCode::OK, &n, body);
            let secure = state.settings.public_base_url.scheme() == "https";
            let cookie = Cookie::build(BROWSER_COOKIE, ready.browser_token.clone())
                .path("/")
                .http_only(true)
                .secure(secure)
                .same_site(SameSite::Lax)
                .max_age(actix_web::cookie::time::Duration::seconds(
                    connect::STATE_TTL.as_secs() as i64,
                ))
                .finish();
            if let Err(e) = resp.add_cookie(&cookie) {
                tracing::error!(error = %e, "could not set the connect cookie");
            }
            resp
        }
    }
}
