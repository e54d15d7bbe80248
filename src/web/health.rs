//! `GET /health`: 200 while the database answers, 503 otherwise (for load balancers and orchestrators).

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::services::Context;

pub async fn health(state: web::Data<Context>) -> HttpResponse {
    match state.db.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ok", "database": "ok"})),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            HttpResponse::ServiceUnavailable()
                .json(json!({"status": "unavailable", "database": "unreachable"}))
        }
    }
}
