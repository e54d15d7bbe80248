//! `/` and the page for paths that match nothing: where someone who opens the service's address in a
//! browser lands, with the ways in (health, API reference, dashboard) instead of a bare "Not found".

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};
use askama::Template;

#[derive(Template)]
#[template(path = "home.html")]
struct Home {
    title: &'static str,
    lead: &'static str,
    links: Vec<(&'static str, &'static str, &'static str)>,
}

/// The ways in, for both pages.
fn links() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        (
            "/api/v1/docs",
            "API reference",
            "the marketplace API, its errors and outgoing events",
        ),
        (
            "/dashboard",
            "Dashboard",
            "for operators: connections, orders, events",
        ),
        (
            "/health",
            "Health",
            "whether this instance and its database answer",
        ),
    ]
}

/// A page without scripts: its own styles only, never framed.
pub fn static_html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ))
        .body(body)
}

fn page(status: StatusCode, home: Home) -> HttpResponse {
    match home.render() {
        Ok(body) => static_html(status, body),
        Err(e) => {
            tracing::error!(error = %e, "home page");
            HttpResponse::build(status)
                .content_type("text/plain; charset=utf-8")
                .body(home.title)
        }
    }
}

/// `GET /`.
pub async fn home() -> HttpResponse {
    page(
        StatusCode::OK,
        Home {
            title: "amoCRM connector",
            lead: "This service connects the marketplace's sellers to their amoCRM (Kommo) accounts. Sellers \
arrive here through the connect and settings links the marketplace gives them.",
            links: links(),
        },
    )
}

/// Non-API paths that match nothing: 404 with the ways in.
pub async fn not_found() -> HttpResponse {
    page(
        StatusCode::NOT_FOUND,
        Home {
            title: "Page not found",
            lead: "There is no page at this address. A connect or settings link may have been cut short: \
ask the marketplace for a new one.",
            links: links(),
        },
    )
}
