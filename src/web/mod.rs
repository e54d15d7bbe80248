//! The HTTP layer: the one route table, middleware, and one file per area. Only this module imports actix.

pub mod amocrm_webhooks;
pub mod api;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod pages;
pub mod refresh;
pub mod request_id;
pub mod sanity;
pub mod server;
pub mod settings_page;

use actix_web::{HttpRequest, HttpResponse, middleware, web};

use error::ApiError;

/// The whole route table, in one place.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health::health));

    // --- connect and refresh (issues 4, 5): pages, OAuth callback, uninstall hook, /refresh ---
    cfg.route("/connect/{token}", web::get().to(pages::connect_page))
        .route("/settings/{token}", web::get().to(settings_page::page))
        .route("/settings/{token}", web::post().to(settings_page::save))
        .route("/oauth/amocrm/callback", web::get().to(oauth::callback))
        .route("/oauth/amocrm/disconnect", web::get().to(oauth::disconnect))
        .route("/refresh", web::get().to(refresh::refresh))
        .route("/refresh", web::post().to(refresh::refresh));

    // --- amoCRM webhooks in (issue 7) ---
    cfg.route(
        "/webhooks/amocrm/{webhook_token}",
        web::post().to(amocrm_webhooks::receive),
    );

    // --- operations (issue 8): dashboard, metrics ---
    cfg.route("/api/auth/login", web::post().to(auth::login))
        .route("/api/auth/refresh", web::post().to(auth::refresh))
        .route("/metrics", web::get().to(metrics::metrics))
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
    let _ = &cfg;

    // --- connect sessions, connections, pipeline (issues 4, 5) ---
    use api::{connect_sessions, connections};
    cfg.route(
        "/connect-sessions",
        web::post().to(connect_sessions::create),
    )
    .route("/connections", web::get().to(connections::list))
    .route("/connections/{seller_id}", web::get().to(connections::get))
    .route(
        "/connections/{seller_id}",
        web::delete().to(connections::delete),
    )
    .route(
        "/connections/{seller_id}/refresh",
        web::post().to(connections::refresh_now),
    )
    .route(
        "/connections/{seller_id}/pipeline",
        web::get().to(connections::get_pipeline),
    )
    .route(
        "/connections/{seller_id}/pipeline",
        web::put().to(connections::put_pipeline),
    )
    .route(
        "/connections/{seller_id}/settings",
        web::get().to(api::settings::get),
    )
    .route(
        "/connections/{seller_id}/settings",
        web::put().to(api::settings::put),
    )
    .route(
        "/settings-sessions",
        web::post().to(api::settings_sessions::create),
    );

    // --- orders (issue 6) ---
    cfg.configure(api::orders::routes);

    // --- webhooks subscriptions, deliveries, events (issue 7) ---
    cfg.service(
        web::resource("/webhooks")
            .route(web::get().to(api::webhooks::list))
            .route(web::post().to(api::webhooks::create)),
    )
    .service(
        web::resource("/webhooks/{id}")
            .route(web::get().to(api::webhooks::get))
            .route(web::patch().to(api::webhooks::update))
            .route(web::delete().to(api::webhooks::delete)),
    )
    .route(
        "/webhooks/{id}/deliveries",
        web::get().to(api::webhooks::deliveries),
    )
    .route("/events", web::get().to(api::events::list))
    .route(
        "/events/{id}/redeliver",
        web::post().to(api::events::redeliver),
    );

    // --- operations (issue 8) ---
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
            .error_handler(|e, _| ApiError::bad_request(format!("malformed JSON: {e}")).into()),
    )
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
    HttpResponse::NotFound()
        .content_type("text/plain; charset=utf-8")
        .body("Not found")
}
