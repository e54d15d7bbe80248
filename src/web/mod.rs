//! The HTTP layer: the one route table, middleware, and one file per area. Only this module imports actix.

pub mod amocrm_webhooks;
pub mod api;
pub mod auth;
pub mod dashboard;
pub mod demo_receiver;
pub mod error;
pub mod extract;
pub mod health;
pub mod home;
pub mod limits;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod pages;
pub mod refresh;
pub mod request_id;
pub mod sanity;
pub mod server;
pub mod settings_page;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, middleware, web};

use error::ApiError;

/// The whole route table, in one place. Each path is one resource carrying all its methods, so another
/// method gets 405 with `Allow` (see [`method_not_allowed`]) rather than a 404.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/").get(home::home))
        .service(web::resource("/health").get(health::health));

    // Seller pages, the OAuth callback, amoCRM's uninstall hook, the external cron's /refresh.
    cfg.service(web::resource("/connect/{token}").get(pages::connect_page))
        .service(web::resource("/connect/result/{key}").get(oauth::result))
        .service(web::resource("/connect/assets/seller.js").get(pages::script))
        .service(
            web::resource("/settings/{token}")
                .get(settings_page::page)
                .post(settings_page::save),
        )
        .service(web::resource("/oauth/amocrm/callback").get(oauth::callback))
        .service(web::resource("/oauth/amocrm/disconnect").get(oauth::disconnect))
        .service(
            web::resource("/refresh")
                .get(refresh::refresh)
                .post(refresh::refresh),
        );

    // amoCRM's webhooks in.
    cfg.service(web::resource("/webhooks/amocrm/{webhook_token}").post(amocrm_webhooks::receive));

    // Operators: sign-in, metrics, the dashboard, the API reference.
    cfg.service(web::resource("/api/auth/login").post(auth::login))
        .service(web::resource("/api/auth/refresh").post(auth::refresh))
        .service(web::resource("/metrics").get(metrics::metrics))
        .service(web::scope("/dashboard").configure(dashboard::routes))
        .configure(openapi::routes);

    cfg.service(
        web::scope("/api/v1")
            .wrap(middleware::from_fn(api::guard::guard))
            .configure(api_v1)
            .default_service(web::to(api_not_found)),
    )
    .service(web::scope("/api").default_service(web::to(api_not_found)));
}

/// Routes under `/api/v1` (already authenticated and rate-limited by the guard).
fn api_v1(cfg: &mut web::ServiceConfig) {
    use api::{connect_sessions, connections, events, settings, settings_sessions, webhooks};
    cfg.service(web::resource("/connect-sessions").post(connect_sessions::create))
        .service(web::resource("/connections").get(connections::list))
        .service(
            web::resource("/connections/{seller_id}")
                .get(connections::get)
                .delete(connections::delete),
        )
        .service(web::resource("/connections/{seller_id}/refresh").post(connections::refresh_now))
        .service(
            web::resource("/connections/{seller_id}/pipeline")
                .get(connections::get_pipeline)
                .put(connections::put_pipeline),
        )
        .service(
            web::resource("/connections/{seller_id}/settings")
                .get(settings::get)
                .put(settings::put),
        )
        .service(web::resource("/settings-sessions").post(settings_sessions::create));

    cfg.configure(api::orders::routes);

    cfg.service(
        web::resource("/webhooks")
            .get(webhooks::list)
            .post(webhooks::create),
    )
    .service(
        web::resource("/webhooks/{id}")
            .get(webhooks::get)
            .patch(webhooks::update)
            .delete(webhooks::delete),
    )
    .service(web::resource("/webhooks/{id}/deliveries").get(webhooks::deliveries))
    .service(web::resource("/events").get(events::list))
    .service(web::resource("/events/{id}/redeliver").post(events::redeliver));
}

/// A known path asked with a method it does not answer: actix's resource says 405 with `Allow`; under
/// `/api` the body becomes the contract's error, elsewhere a short text.
pub async fn method_not_allowed(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let api = req.path().starts_with("/api/");
    let method = req.method().clone();
    let res = next.call(req).await?;
    if res.status() != actix_web::http::StatusCode::METHOD_NOT_ALLOWED {
        return Ok(res.map_into_left_body());
    }
    let allow = res.headers().get(actix_web::http::header::ALLOW).cloned();
    let (req, _) = res.into_parts();
    let mut resp = if api {
        actix_web::ResponseError::error_response(&ApiError::new(
            error::ErrorCode::MethodNotAllowed,
            format!("{method} is not supported here; the Allow header lists what is"),
        ))
    } else {
        HttpResponse::MethodNotAllowed()
            .content_type("text/plain; charset=utf-8")
            .body("Method not allowed")
    };
    if let Some(allow) = allow {
        resp.headers_mut()
            .insert(actix_web::http::header::ALLOW, allow);
    }
    Ok(ServiceResponse::new(req, resp).map_into_right_body())
}

/// Extractor errors outside our own extractors (paths, queries, forms) answer in the contract's body.
pub fn configure_extractors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        ApiError::bad_request(format!("malformed query parameters: {e}")).into()
    }))
    .app_data(
        web::PathConfig::default().error_handler(|_, _| ApiError::not_found("resource").into()),
    )
    .app_data(
        web::JsonConfig::default()
            .limit(extract::JSON_LIMIT)
            .error_handler(|e, _| match e {
                actix_web::error::JsonPayloadError::Overflow { .. }
                | actix_web::error::JsonPayloadError::OverflowKnownLength { .. } => {
                    extract::too_large().into()
                }
                e => ApiError::bad_request(format!("malformed JSON: {e}")).into(),
            }),
    )
    // Forms are the dashboard's: a human page, not the API's JSON.
    .app_data(web::FormConfig::default().error_handler(|e, _| match e {
        actix_web::error::UrlencodedError::Overflow { .. } => {
            actix_web::error::InternalError::from_response(e, limits::plain_too_large()).into()
        }
        e => e.into(),
    }))
    .app_data(web::PayloadConfig::new(extract::JSON_LIMIT));
}

async fn api_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let _ = req;
    Err(ApiError::new(
        error::ErrorCode::ResourceNotFound,
        "no such route",
    ))
}

/// Non-API paths that match nothing.
pub async fn page_not_found() -> HttpResponse {
    home::not_found().await
}
