//! The HTTP server: the route table, middleware and extractors over one shared [`Context`].

use std::net::TcpListener;
use std::sync::Arc;

pub use actix_web::dev::Server;
use actix_web::web::Data;
use actix_web::{App, HttpServer, middleware};

use crate::services::Context;

/// Builds the server on a bound listener; it serves once awaited (or spawned).
pub fn build(listener: TcpListener, state: Arc<Context>) -> std::io::Result<Server> {
    let state = Data::from(state);
    let shutdown_secs = state.settings.shutdown_timeout.as_secs();
    // Behind https, browsers are told to never try plain http again (a year, as the preload list asks).
    let https = state.settings.public_base_url.scheme() == "https";
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(super::configure_extractors)
            .wrap(middleware::from_fn(super::limits::middleware))
            .wrap(middleware::from_fn(super::method_not_allowed))
            .wrap(middleware::Condition::new(
                https,
                middleware::DefaultHeaders::new().add((
                    actix_web::http::header::STRICT_TRANSPORT_SECURITY,
                    "max-age=31536000; includeSubDomains",
                )),
            ))
            .wrap(middleware::from_fn(super::metrics::middleware))
            .wrap(middleware::from_fn(super::sanity::middleware))
            .wrap(middleware::from_fn(super::request_id::middleware))
            .configure(super::routes)
            .default_service(actix_web::web::to(super::page_not_found))
    })
    .shutdown_timeout(shutdown_secs)
    // Signals are handled by the application, so SIGINT is as graceful as SIGTERM and the workers are
    // stopped in the same sequence.
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
