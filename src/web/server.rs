//! The HTTP server: the route table, middleware and extractors over one shared [`Context`].

use std::net::TcpListener;
use std::sync::Arc;

pub use actix_web::dev::Server;
use actix_web::web::Data;
use actix_web::{App, HttpServer, middleware};

use crate::services::Context;

/// Log directives for the HTTP server's own crates: its start and stop lines only.
pub const LOG_DIRECTIVES: &str = "actix_server=warn";

/// Whether a log event is the HTTP server reporting one client's malformed request or cut stream (actix-http
/// logs each at ERROR, so any client could fill the error log; `telemetry` counts them instead).
pub fn is_client_fault(target: &str, error: bool) -> bool {
    error && target.starts_with("actix_http::h1")
}

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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use crate::telemetry::{json_subscriber, report_client_faults};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(b);
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_clients_broken_requests_are_counted_and_reported_as_one_warning_never_an_error_line() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = json_subscriber("info", move || writer.clone());
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                tracing::error!(target: "actix_http::h1::dispatcher", "stream error: invalid Header provided");
            }
            tracing::error!(target: "amocrm_connector::services", "a real failure");
            report_client_faults();
            report_client_faults();
        });
        let out = String::from_utf8(buf.0.lock().map(|v| v.clone()).unwrap_or_default())
            .unwrap_or_default();
        assert!(!out.contains("stream error"), "{out}");
        assert!(out.contains("a real failure"), "{out}");
        let warnings: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("malformed requests"))
            .collect();
        assert_eq!(
            warnings.len(),
            1,
            "one report, none when nothing happened: {out}"
        );
        assert!(warnings[0].contains("\"level\":\"WARN\""), "{out}");
        assert!(warnings[0].contains("\"count\":3"), "{out}");
    }
}
