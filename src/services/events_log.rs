//! Reading the event log (cursor paging for receivers that poll), delivery histories, and re-driving an
//! event's deliveries.

use serde::Serialize;
use serde_json::Value;

use crate::domain::events::EventKind;
use crate::domain::ids::SellerId;
use crate::domain::status::DeliveryState;
use crate::services::subscriptions::rfc3339;
use crate::storage::deliveries::{DeliveryRow, DeliveryView, Redelivered, Redrive};
use crate::storage::events::{Cursor, EventRow};
use crate::storage::{self, Db, StorageError};

/// Largest page of `GET /api/v1/events`.
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("{0}")]
    BadParameter(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Raw query of `GET /api/v1/events`, checked by [`list`].
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct EventsQuery {
    pub after: Option<String>,
    pub seller_id: Option<String>,
    pub event: Option<String>,
    pub limit: Option<String>,
}

/// One page of the log: the stored bodies, exactly as subscribers receive them, and the cursor to go on.
#[derive(Debug, Clone, Serialize)]
pub struct EventsPage {
    pub data: Vec<Value>,
    pub next_after: i64,
}

/// Events after the cursor in log order. `after` is a log position (`meta.next_after` of the previous page)
/// or an event id; the answer's `next_after` is where the next poll continues (unchanged when empty).
#[tracing::instrument(skip_all, fields(seller_id = ?q.seller_id))]
pub async fn list(db: &Db, q: EventsQuery) -> Result<EventsPage, EventsError> {
    let limit = match q.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                EventsError::BadParameter(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}"
                ))
            })?,
    };
    if let Some(e) = q.event.as_deref().filter(|e| !e.is_empty())
        && EventKind::parse(e).is_none()
    {
        return Err(EventsError::BadParameter(format!(
            "event must be one of {}",
            EventKind::names().join(", ")
        )));
    }
    let after_raw = q.after.unwrap_or_default();
    let seller = match q.seller_id.filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(
            SellerId::parse(&s)
                .map_err(|m| EventsError::BadParameter(format!("seller_id {m}")))?
                .as_str()
                .to_owned(),
        ),
    };
    let event = q.event.filter(|s| !s.is_empty());
    let cursor = if after_raw.is_empty() {
        Cursor::Seq(0)
    } else if after_raw.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = after_raw.parse::<i64>()
    {
        Cursor::Seq(n)
    } else {
        Cursor::EventId(after_raw)
    };
    let (after, rows) = db
        .events()
        .page(cursor, seller, event, limit)
        .await?
        .ok_or_else(|| {
            EventsError::BadParameter(
                "after must be a cursor (meta.next_after) or a known event id".into(),
            )
        })?;
    let next_after = rows.last().map_or(after, |r| r.seq);
    Ok(EventsPage {
        data: rows.iter().map(payload_value).collect(),
        next_after,
    })
}

fn payload_value(row: &EventRow) -> Value {
    serde_json::from_str(&row.payload).unwrap_or(Value::Null)
}

/// One attempt as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptView {
    pub attempt: i32,
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub attempted_at: String,
}

/// One delivery as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryInfo {
    pub id: i64,
    pub event_id: String,
    pub event: String,
    pub subscription_id: String,
    pub seller_id: String,
    pub state: DeliveryState,
    pub attempts: i32,
    pub next_attempt_at: Option<String>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<String>,
    pub created_at: String,
    pub attempt_log: Vec<AttemptView>,
}

impl DeliveryInfo {
    fn new(row: &DeliveryRow, event_id: &str, event: &str, log: Vec<AttemptView>) -> Self {
        Self {
            id: row.id,
            event_id: event_id.to_owned(),
            event: event.to_owned(),
            subscription_id: row.subscription_id.clone(),
            seller_id: row.seller_id.clone(),
            state: row.state,
            attempts: row.attempts,
            next_attempt_at: (row.state == DeliveryState::Pending)
                .then(|| rfc3339(row.next_attempt_at)),
            last_status: row.last_status,
            last_error: row.last_error.clone(),
            delivered_at: row.delivered_at.map(rfc3339),
            created_at: rfc3339(row.created_at),
            attempt_log: log,
        }
    }
}

impl From<&DeliveryView> for DeliveryInfo {
    fn from(v: &DeliveryView) -> Self {
        let log = v
            .attempts
            .iter()
            .map(|a| AttemptView {
                attempt: a.attempt,
                status_code: a.status_code,
                error: a.error.clone(),
                duration_ms: a.duration_ms,
                attempted_at: rfc3339(a.attempted_at),
            })
            .collect();
        Self::new(&v.delivery, &v.event_id, &v.event, log)
    }
}

/// A subscription's deliveries, newest first; 404 when the subscription does not exist.
#[tracing::instrument(skip(db))]
pub async fn deliveries(
    db: &Db,
    subscription_id: &str,
    state: Option<&str>,
    offset: i64,
    limit: i64,
) -> Result<(Vec<DeliveryInfo>, i64), EventsError> {
    let state = match state.filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(DeliveryState::parse(s).ok_or_else(|| {
            EventsError::BadParameter("state must be pending, delivered or failed".into())
        })?),
    };
    let found = db
        .deliveries()
        .of_subscription(subscription_id, state, offset, limit)
        .await?;
    let (views, total) = found.ok_or(EventsError::NotFound("webhook subscription"))?;
    Ok((views.iter().map(DeliveryInfo::from).collect(), total))
}

/// The answer of a redelivery: the event and its deliveries as they now stand.
#[derive(Debug, Clone, Serialize)]
pub struct Redelivery {
    pub event_id: String,
    pub event: String,
    pub deliveries: Vec<DeliveryInfo>,
}

/// Re-drives an event. Without a subscription, its failed deliveries are due again with a fresh schedule
/// (a receiver that already has the event gets nothing more), and active subscriptions that want it but
/// have no delivery get one. With one, only the delivery to that subscription is sent again, whatever it
/// reached. Earlier attempts stay in each delivery's attempt log.
#[tracing::instrument(skip(db))]
pub async fn redeliver(
    db: &Db,
    event_id: &str,
    subscription_id: Option<&str>,
) -> Result<Redelivery, EventsError> {
    let which = match subscription_id.filter(|s| !s.is_empty()) {
        None => Redrive::Failed,
        Some(s) => Redrive::To(s.to_owned()),
    };
    let (ev, rows) = match db
        .deliveries()
        .redeliver(event_id, which, storage::now())
        .await?
    {
        Redelivered::Done(ev, rows) => (ev, rows),
        Redelivered::NoEvent => return Err(EventsError::NotFound("event")),
        Redelivered::NoDelivery => {
            return Err(EventsError::NotFound(
                "delivery of this event to that subscription",
            ));
        }
    };
    Ok(Redelivery {
        deliveries: rows
            .iter()
            .map(|r| DeliveryInfo::new(r, &ev.id, &ev.event, Vec::new()))
            .collect(),
        event_id: ev.id,
        event: ev.event,
    })
}
