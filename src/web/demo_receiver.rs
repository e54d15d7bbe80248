//! The demo's stand-in for a marketplace backend: receives the service's event deliveries, checks
//! `X-Signature` the way a subscriber should, and prints one line per event.

use std::net::{SocketAddr, TcpListener};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

use crate::domain::ids::constant_time_eq;
use crate::services::delivery::signature;

async fn receive(req: HttpRequest, body: web::Bytes, secret: web::Data<String>) -> HttpResponse {
    let presented = req
        .headers()
        .get("x-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let valid = constant_time_eq(
        signature(secret.as_bytes(), &body).as_bytes(),
        presented.as_bytes(),
    );
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    println!(
        "  ← receiver: {} {} for {} (signature {})",
        event["event"].as_str().unwrap_or("?"),
        event["id"].as_str().unwrap_or("?"),
        event["seller_id"].as_str().unwrap_or("?"),
        if valid { "ok" } else { "INVALID" }
    );
    if valid {
        HttpResponse::Ok().finish()
    } else {
        HttpResponse::Unauthorized().finish()
    }
}

/// Serves `POST /events` on `listener` until the process ends.
pub fn start(listener: TcpListener, secret: String) -> Result<SocketAddr, String> {
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let secret = web::Data::new(secret);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(secret.clone())
            .route("/events", web::post().to(receive))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .map_err(|e| e.to_string())?
    .run();
    tokio::spawn(server);
    Ok(addr)
}
