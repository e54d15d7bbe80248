//! The dashboard's actions (admins only, CSRF-checked forms): refresh a connection now (probe it, when
//! suspended), retry a failed order, redeliver an event. Each redirects back to its list with a fixed message.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use askama::Template;
use serde::de::DeserializeOwned;

use super::{CsrfForm, DashError, Signed, page};
use crate::domain::status::ConnectionStatus;
use crate::services::Context;
use crate::services::connect::{self, ConnectError};
use crate::services::events_log::{self, EventsError};
use crate::services::orders::{self, OrderError};
use crate::services::refresh::{self, Need, RefreshError};
use crate::services::suspension::{self, Probe};
use crate::storage::connections::Connection;

/// A form that carries the session's form token.
pub trait Csrf {
    fn csrf(&self) -> &str;
}

impl Csrf for CsrfForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// An action on the resource the path names: the signed-in operator, the path's id and the posted form,
/// taken only when the operator may write and the form's token matches (`Signed::check_write`).
pub struct Action<F = CsrfForm> {
    signed: Signed,
    id: String,
    form: F,
}

impl<F: Csrf + DeserializeOwned + 'static> FromRequest for Action<F> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let signed = Signed::from_request(req, payload);
        let path = web::Path::<String>::from_request(req, payload);
        let form = web::Form::<F>::from_request(req, payload);
        Box::pin(async move {
            let signed = signed.await?;
            let id = path.await?.into_inner();
            let form = form.await?.into_inner();
            signed.check_write(form.csrf())?;
            Ok(Self { signed, id, form })
        })
    }
}

/// The seller's connection; any failure but a missing one is the page's internal error.
async fn connection(state: &Context, seller: &str) -> Result<Connection, DashError> {
    connect::get_connection(state, seller)
        .await
        .map_err(|e| match e {
            ConnectError::NotFound => DashError::NotFound,
            e => DashError::Internal(e.to_string()),
        })
}

#[derive(Template)]
#[template(path = "dashboard/connect_link.html")]
struct ConnectLinkPage {
    nav: super::Nav,
    seller_id: String,
    platform: &'static str,
    url: String,
    expires_at: String,
}

/// A fresh single-use connect link for a seller whose connection broke (refresh failed, revoked) or who
/// must reconnect for any reason, shown with a copy button so support can send it.
pub async fn connect_link(
    req: HttpRequest,
    state: web::Data<Context>,
    action: Action,
) -> Result<HttpResponse, DashError> {
    let current = connection(&state, &action.id).await?;
    let platform = current.platform.as_str();
    let created = connect::create_session(&state, &action.id, None, None, Some(platform))
        .await
        .map_err(|e| DashError::Internal(e.to_string()))?;
    let signed = &action.signed;
    tracing::info!(operator_id = signed.operator.id, seller_id = %action.id, "connect link from the dashboard");
    let body = ConnectLinkPage {
        nav: super::Nav::new(signed, &state, "connections", &req),
        platform: current.platform.display_name(),
        url: created.link.url,
        expires_at: signed.clock.time(created.link.expires_at.naive_utc()),
        seller_id: action.id,
    }
    .render();
    Ok(super::html(StatusCode::OK, body))
}

fn back(to: &str, done: &str) -> HttpResponse {
    page(StatusCode::SEE_OTHER)
        .insert_header((header::LOCATION, format!("{to}?done={done}")))
        .finish()
}

pub async fn refresh_connection(
    state: web::Data<Context>,
    action: Action,
) -> Result<HttpResponse, DashError> {
    let Action {
        signed, id: seller, ..
    } = action;
    let current = connection(&state, &seller).await?;
    if current.status == ConnectionStatus::Suspended {
        let done = match suspension::probe(&state, &seller, true).await? {
            Probe::Recovered => "recovered",
            _ => "still_suspended",
        };
        tracing::info!(operator_id = signed.operator.id, seller_id = %seller, done, "probe from the dashboard");
        return Ok(back("/dashboard/connections", done));
    }
    let need = Need::Stale {
        version: current.token_version,
    };
    let done = match refresh::refresh(&state, &seller, need).await {
        Ok(_) => "refreshed",
        Err(RefreshError::NotConnected) => return Err(DashError::NotFound),
        Err(RefreshError::Storage(e)) => return Err(e.into()),
        Err(e) => {
            tracing::info!(seller_id = %seller, error = %e, "refresh from the dashboard failed");
            "refresh_error"
        }
    };
    tracing::info!(operator_id = signed.operator.id, seller_id = %seller, "refresh from the dashboard");
    Ok(back("/dashboard/connections", done))
}

pub async fn retry_order(
    state: web::Data<Context>,
    action: Action,
) -> Result<HttpResponse, DashError> {
    let Action { signed, id, .. } = action;
    match orders::retry(&state.db, &id).await {
        Ok(_) => {
            tracing::info!(operator_id = signed.operator.id, order_id = %id, "retry from the dashboard");
            Ok(back("/dashboard/orders", "retried"))
        }
        Err(OrderError::NotFound) => Err(DashError::NotFound),
        Err(OrderError::NotRetryable(_)) => Err(DashError::Forbidden(
            "Only failed or held orders can be retried.",
        )),
        Err(e) => Err(DashError::Internal(e.to_string())),
    }
}

/// The redeliver form: the delivery's subscription when one row's button was pressed.
#[derive(serde::Deserialize)]
pub struct RedeliverForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    subscription_id: String,
}

impl Csrf for RedeliverForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn redeliver_event(
    state: web::Data<Context>,
    action: Action<RedeliverForm>,
) -> Result<HttpResponse, DashError> {
    let Action { signed, id, form } = action;
    let only = Some(form.subscription_id.as_str()).filter(|s| !s.is_empty());
    match events_log::redeliver(&state.db, &id, only).await {
        Ok(_) => {
            tracing::info!(operator_id = signed.operator.id, event_id = %id, subscription_id = only, "redeliver from the dashboard");
            Ok(back("/dashboard/events", "redelivered"))
        }
        Err(EventsError::NotFound(_)) => Err(DashError::NotFound),
        Err(e) => Err(DashError::Internal(e.to_string())),
    }
}

/// The subscription form: URL, events (comma-separated, or `*`) and the active box.
#[derive(serde::Deserialize)]
pub struct SubscriptionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    events: String,
    /// Present (`on`) when the box is ticked.
    active: Option<String>,
}

impl Csrf for SubscriptionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// Saves a subscription's URL, events and active flag with the same checks as the API; a refusal shows
/// the form again with what was sent and why.
pub async fn save_subscription(
    req: HttpRequest,
    state: web::Data<Context>,
    action: Action<SubscriptionForm>,
) -> Result<HttpResponse, DashError> {
    use crate::services::subscriptions::{self, SubscriptionError, SubscriptionInput};
    let Action { signed, id, form } = action;
    let events: Vec<String> = form
        .events
        .split(',')
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty())
        .collect();
    let input = SubscriptionInput {
        url: Some(form.url.trim().to_owned()),
        events: Some(events),
        secret: None,
        active: Some(form.active.is_some()),
    };
    match subscriptions::update(&state, &id, input).await {
        Ok(_) => {
            tracing::info!(operator_id = signed.operator.id, subscription_id = %id, "subscription saved from the dashboard");
            Ok(back(&format!("/dashboard/subscriptions/{id}"), "saved"))
        }
        Err(SubscriptionError::Invalid(problems)) => {
            let current = subscriptions::get(&state.db, &id).await?;
            let mut p = super::pages::SubscriptionPage::new(&req, &state, &signed, current);
            p.url = form.url.clone();
            p.events = form.events.clone();
            p.error = Some(format!(
                "Nothing was saved: {}",
                problems
                    .iter()
                    .map(|(field, msgs)| format!("{field} {}", msgs.join("; ")))
                    .collect::<Vec<_>>()
                    .join(". ")
            ));
            Ok(p.render_page())
        }
        Err(e) => Err(e.into()),
    }
}

/// Sends a test event to the subscription and shows how the receiver answered.
pub async fn test_subscription(
    req: HttpRequest,
    state: web::Data<Context>,
    action: Action,
) -> Result<HttpResponse, DashError> {
    use crate::services::subscriptions;
    let Action { signed, id, .. } = action;
    let (current, attempt) = subscriptions::send_test(&state, &id).await?;
    let mut p = super::pages::SubscriptionPage::new(&req, &state, &signed, current);
    let r = &attempt.record;
    let answer = match (r.status_code, &r.error) {
        (Some(code), _) => format!("HTTP {code} in {} ms", r.duration_ms),
        (None, Some(e)) => format!("{e} (after {} ms)", r.duration_ms),
        (None, None) => format!("no answer after {} ms", r.duration_ms),
    };
    p.tested = Some((
        attempt.delivered,
        if attempt.delivered {
            "delivered"
        } else {
            "not delivered"
        },
        answer,
    ));
    Ok(p.render_page())
}
