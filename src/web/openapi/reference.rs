//! What makes the document a reference a person can read: each operation's summary and Markdown
//! description, the contents (tags in reading order), and an example for every request body, every response
//! with a body (errors included) and every outgoing event. Kept apart from the handlers so the prose and the
//! examples are read and reviewed together; the tests check that none is missing and that every example fits
//! its schema.

use serde_json::{Value, json};

use crate::domain::events::EventKind;

/// The document's introduction: Redoc shows each heading in the contents.
pub const INTRODUCTION: &str = "\
Connect the marketplace's sellers to their amoCRM (or Kommo) accounts, push orders as leads, and receive \
what happens to them as signed events.

The machine-readable document is [/api/v1/openapi.json](/api/v1/openapi.json) (OpenAPI 3.1); generate \
clients and webhook receivers from it.

## Authentication

Every `/api/v1` call carries `Authorization: Bearer <API key>`. An operator's access token from \
[Sign in as an operator](#operation/post_api_auth_login) works the same way, read-only for viewers. The \
header `X-API-Version: v1` is optional; any other version is refused with `INVALID_API_VERSION`.

## Errors

Every error has the same body:

```json
{\"error\": {
  \"code\": \"VALIDATION_ERROR\",
  \"message\": \"the request has invalid fields\",
  \"details\": {\"items\": [\"is required\"]},
  \"timestamp\": \"2026-11-25T21:36:15Z\",
  \"request_id\": \"req_Xk3f9QmT2pLw8RvN4bZc\"}}
```

`code` is one of `INVALID_TOKEN` (401), `INSUFFICIENT_PERMISSION` (403), `RESOURCE_NOT_FOUND` (404), \
`METHOD_NOT_ALLOWED` (405), `REQUEST_TIMEOUT` (408), `DUPLICATE_RESOURCE` (409), `VALIDATION_ERROR` (422, `details` maps each field to \
its messages), `BAD_REQUEST` and `INVALID_API_VERSION` (400; 413 for a body that is too large), \
`RATE_LIMIT_EXCEEDED` (429, with `Retry-After`), `MAINTENANCE_MODE` (503) and `INTERNAL_SERVER_ERROR` \
(500). `request_id` is also the `X-Request-Id` header: quote it when reporting a problem.

## Receiving events

Subscribe with [Create a subscription](#operation/post_webhooks); the service then POSTs each event \
you asked for to your URL, as listed under **Outgoing events**. Each delivery is signed:

- `X-Signature: sha256=<hex>`: the lowercase hex HMAC-SHA256 of the **raw body**, keyed with the \
subscription's `secret`. Compute it over the bytes as received, before parsing, and compare in constant \
time; answer 401 if it does not match.
- `X-Webhook-Id`: the event id, the same as the body's `id`. Delivery is at least once: deduplicate on it.
- `X-Webhook-Timestamp`: unix seconds when this attempt was sent (not signed; the body's `timestamp`, \
which is signed, is when the event happened).

Answer 2xx within 10 seconds, then do the work. Anything else is retried after about 5 s, 5 min, 30 min, \
2 h, 5 h, 10 h and 10 h (±10 %); then the delivery is `failed` until \
[redelivered](#operation/post_events_by_id_redeliver). Redirects are not followed. Events of one seller \
arrive in log order. Missed something? Read [the event log](#operation/get_events).

Test vector: key `Jefe`, body `what do ya want for nothing?` gives \
`sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843`.
";

/// How a receiver checks a delivery, on every outgoing event.
const SIGNATURE: &str = "\
**Verify before parsing:** `X-Signature` is `sha256=` and the lowercase hex HMAC-SHA256 of the raw body, \
keyed with the subscription's `secret`; compare in constant time and answer 401 when it differs. \
Deduplicate on `X-Webhook-Id` (the body's `id`): a retry or a redelivery sends the same event again. \
Answer 2xx within 10 s; anything else is retried for about a day.";

/// The contents, in reading order: (name, shown as, description).
pub const TAGS: &[(&str, &str, &str)] = &[
    (
        "connections",
        "Connections",
        "Connect a seller's amoCRM account, follow its health, and read or change how their orders land \
there (pipeline, stages, responsible users, fields).",
    ),
    (
        "orders",
        "Orders",
        "Orders pushed to the seller's amoCRM as leads, with their sync state.",
    ),
    (
        "events",
        "Event subscriptions",
        "Where the service sends events, what it delivered, and the event log to read them back.",
    ),
    (
        "outgoing-events",
        "Outgoing events",
        "What the service POSTs to each subscription. Every delivery is signed: see **Receiving events** \
above.",
    ),
    (
        "auth",
        "Operator sign-in",
        "Tokens for operators (people running the service). Not needed with an API key.",
    ),
];

/// Each operation's summary (a short sentence, never its route) and description, by operation id.
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    (
        "post_api_auth_login",
        "Sign in as an operator",
        "Answers an access token, accepted on `/api/v1` like an API key (an operator with the `viewer` role \
may only read), and a refresh token. Repeated failures for one e-mail or from one address are locked out \
for a growing time (429 with `Retry-After`).",
    ),
    (
        "post_api_auth_refresh",
        "Renew an operator's tokens",
        "Exchanges a refresh token from sign-in (or an earlier renewal) for a new access token and a new \
refresh token. Each refresh token works once: presenting a used one again revokes every token of that \
sign-in.",
    ),
    (
        "post_connect_sessions",
        "Start connecting a seller",
        "Creates a single-use link, valid 30 minutes, to show the seller: on that page they sign in to amoCRM \
(or Kommo) and allow access. When they finish, the connection is stored and `connection.connected` is \
sent. A seller who is already connected may use a new link to reconnect.",
    ),
    (
        "get_connections",
        "List connections",
        "All sellers' connections, a page at a time, optionally only those in one status. Never includes a token.",
    ),
    (
        "get_connections_by_seller_id",
        "Get a seller's connection",
        "The connection's status, amoCRM account, token times, provisioning (pipeline, fields and webhook \
set up in the seller's account) and health of the calls to amoCRM.",
    ),
    (
        "delete_connections_by_seller_id",
        "Disconnect a seller",
        "Unsubscribes the service's webhooks in the seller's amoCRM (best effort), wipes the tokens and marks \
the connection `revoked`; `connection.revoked` is sent. Orders for this seller are held until they connect \
again.",
    ),
    (
        "post_connections_by_seller_id_refresh",
        "Refresh a connection's tokens now",
        "Refreshes the amoCRM tokens at once (together with any refresh already under way) and answers with \
the connection: a failure shows in its `status`, `refresh_failures` and `last_error`. A `suspended` \
connection is probed instead, and is `active` again if amoCRM answers.",
    ),
    (
        "get_connections_by_seller_id_pipeline",
        "Get the seller's pipeline mapping",
        "The amoCRM pipeline orders go to and the amoCRM stage (status id) for each marketplace order \
status. The same as the `pipeline` part of the seller's settings.",
    ),
    (
        "put_connections_by_seller_id_pipeline",
        "Replace the pipeline mapping",
        "Sets the pipeline and the stage for each order status. Every id is checked against the seller's \
amoCRM account (422 naming the field otherwise).",
    ),
    (
        "get_connections_by_seller_id_settings",
        "Get the seller's settings",
        "How the seller's orders become leads: note language, entry point, pipeline and stages, responsible \
users, contact matching, products, follow-up task and the seller's own lead fields.",
    ),
    (
        "put_connections_by_seller_id_settings",
        "Change the seller's settings",
        "Send any subset of the keys; the others keep their value. Every amoCRM id (pipeline, stage, user, \
field) is checked against the seller's account, and `settings.updated` is sent with the keys that changed.",
    ),
    (
        "post_settings_sessions",
        "Open the settings page for a seller",
        "Creates a single-use link, valid 30 minutes and bound to the first browser that opens it, to the \
seller's own settings page, where they choose pipeline, stages, users and fields from their amoCRM \
account. Only for a seller who has connected.",
    ),
    (
        "post_sales_orders",
        "Push an order",
        "Stores the order and queues it for the seller's amoCRM, where it becomes one lead with the buyer's \
contact (an existing one when the phone or e-mail matches), an order note, products and optionally a \
task. Answers 202 at once; `order.synced` or `order.sync_failed` follows.\n\n\
Posting the same `order_number` for the seller again is safe: 200 with the existing order, nothing new \
is created (409 if the body differs). A seller whose connection is not `active` gets 202 with the order \
`held`: it is pushed when they reconnect. A seller who never connected: 422.",
    ),
    (
        "get_sales_orders",
        "List orders",
        "Orders a page at a time, optionally by seller, marketplace status or sync state.",
    ),
    (
        "get_sales_orders_by_id",
        "Get an order",
        "The order with its sync state: the amoCRM lead, contact and company ids once synced, or the last \
error.",
    ),
    (
        "patch_sales_orders_by_id",
        "Change an order's status",
        "Records the new marketplace status and queues moving the lead to the stage mapped for it (see the \
pipeline mapping).",
    ),
    (
        "post_sales_orders_by_id_retry",
        "Push an order again",
        "Queues a `failed` order, or one `held` until the seller reconnected, for another attempt. An order \
that is already synced is refused with 422.",
    ),
    (
        "post_webhooks",
        "Create a subscription",
        "Starts sending the named events (or `*` for all) to `url`, each delivery signed with `secret` (see \
**Receiving events**). The secret is stored encrypted and never shown again.",
    ),
    (
        "get_webhooks",
        "List subscriptions",
        "Every subscription, without its secret.",
    ),
    (
        "get_webhooks_by_id",
        "Get a subscription",
        "One subscription, without its secret.",
    ),
    (
        "patch_webhooks_by_id",
        "Change a subscription",
        "Only the keys sent change: `url`, `events`, `secret` (signs deliveries from now on) or `active` \
(`false` pauses deliveries).",
    ),
    (
        "delete_webhooks_by_id",
        "Delete a subscription",
        "Stops deliveries to it; its pending deliveries are dropped.",
    ),
    (
        "get_webhooks_by_id_deliveries",
        "List a subscription's deliveries",
        "Deliveries newest first, each with every attempt: status code or error, and how long it took.",
    ),
    (
        "get_events",
        "Read the event log",
        "Every event in the order it happened, the same bodies that are delivered. Pass \
`meta.next_after` as `after` to read on; an empty page means you are up to date.",
    ),
    (
        "post_events_by_id_redeliver",
        "Redeliver an event",
        "Sends the event's `failed` deliveries again, due now with a fresh retry schedule; a receiver that \
already has the event gets nothing more. With `subscription_id`, sends it again to that subscription only, \
whatever its delivery reached. Earlier attempts stay in each delivery's `attempt_log`. Answers with the \
event's deliveries.",
    ),
];

const SELLER: &str = "seller-42";
const WHEN: &str = "2026-11-25T21:36:15Z";
const ORDER_ID: &str = "ord_Vb7Qk2mXz9LpR4tWc8NhJs3d";
const EVENT_ID: &str = "evt_7h2kQw9xZr4mNb8cVt3pLs6d";
const SUBSCRIPTION_ID: &str = "whk_Tq5nW8rLx2KmZ7vB4cHp9Jyd";
const REQUEST_ID: &str = "req_Xk3f9QmT2pLw8RvN4bZc";
const ACCOUNT_ID: i64 = 31_234_567;
const LEAD_ID: i64 = 25_399_013;
const PIPELINE_ID: i64 = 7_012_345;

/// The request body's example of an operation.
fn request_example(operation: &str) -> Option<Value> {
    Some(match operation {
        "post_api_auth_login" => {
            json!({"email": "ops@example.com", "password": "correct horse battery staple"})
        }
        "post_api_auth_refresh" => json!({"refresh_token": "kP3vX9qLm2TzR7wNc4bHs8dY"}),
        "post_connect_sessions" => json!({"seller_id": SELLER, "lang": "uz", "platform": "amocrm"}),
        "post_settings_sessions" => json!({"seller_id": SELLER, "lang": "ru"}),
        "put_connections_by_seller_id_pipeline" => pipeline(),
        "put_connections_by_seller_id_settings" => json!({
            "language": "ru",
            "responsible": {"mode": "round_robin", "user_ids": [8_000_001, 8_000_002]},
            "task": {"enabled": true, "text": "Buyurtmani tasdiqlang", "due_in_minutes": 60},
        }),
        "post_sales_orders" => json!({
            "seller_id": SELLER,
            "order_number": "1042",
            "total_amount": 150_000,
            "currency": "UZS",
            "status": "awaiting_payment",
            "items": [
                {"product_id": "sku-881", "name": "Choynak 1.7 l", "quantity": 2, "price": 50_000},
                {"product_id": "sku-902", "name": "Piyola (6 dona)", "quantity": 1, "price": 50_000},
            ],
            "customer": {"name": "Aziz Karimov", "phone": "+998901234567", "email": "aziz@example.com"},
            "url": "https://marketplace.example/orders/1042",
            "tags": ["marketplace"],
            "comment": "Deliver after 18:00",
        }),
        "patch_sales_orders_by_id" => json!({"status": "paid"}),
        "post_webhooks" => json!({
            "url": "https://marketplace.example/hooks/amocrm",
            "events": ["order.synced", "order.sync_failed", "payment.completed"],
            "secret": "a long random string only you and the service know",
            "active": true,
        }),
        "patch_webhooks_by_id" => json!({"events": ["*"], "active": true}),
        _ => return None,
    })
}

fn pipeline() -> Value {
    json!({
        "pipeline_id": PIPELINE_ID,
        "statuses": {
            "pending": 61_000_001,
            "awaiting_payment": 61_000_002,
            "paid": 61_000_003,
            "shipping": 61_000_004,
            "completed": 142,
            "cancelled": 143,
        },
    })
}

fn connection() -> Value {
    json!({
        "seller_id": SELLER,
        "platform": "amocrm",
        "status": "active",
        "suspended_reason": null,
        "suspended_at": null,
        "account_id": ACCOUNT_ID,
        "subdomain": "sellerone",
        "host": "sellerone.amocrm.ru",
        "token_expires_at": "2026-11-26T21:30:02Z",
        "last_refreshed_at": "2026-11-25T21:30:02Z",
        "refresh_failures": 0,
        "last_error": null,
        "pipeline_id": PIPELINE_ID,
        "connected_at": "2026-11-20T09:12:44Z",
        "revoked_at": null,
        "revoke_reason": null,
        "provisioning": {"state": "complete", "missing": [], "error": null, "attempts": 1, "next_attempt_at": null},
        "health": {
            "state": "healthy",
            "last_success_at": WHEN,
            "last_failure_at": null,
            "last_failure_class": null,
            "last_failure": null,
        },
    })
}

fn order() -> Value {
    json!({
        "id": ORDER_ID,
        "seller_id": SELLER,
        "order_number": "1042",
        "status": "awaiting_payment",
        "total_amount": 150_000,
        "currency": "UZS",
        "created_at": "2026-11-25T21:36:11Z",
        "updated_at": WHEN,
        "sync": {
            "state": "synced",
            "lead_id": LEAD_ID,
            "contact_id": 41_200_017,
            "company_id": null,
            "attempts": 1,
            "last_error": null,
            "synced_at": WHEN,
        },
    })
}

fn subscription() -> Value {
    json!({
        "id": SUBSCRIPTION_ID,
        "url": "https://marketplace.example/hooks/amocrm",
        "events": ["order.synced", "order.sync_failed", "payment.completed"],
        "active": true,
        "created_at": "2026-11-20T09:30:00Z",
        "updated_at": "2026-11-20T09:30:00Z",
    })
}

fn delivery() -> Value {
    json!({
        "id": 5012,
        "event_id": EVENT_ID,
        "event": "payment.completed",
        "subscription_id": SUBSCRIPTION_ID,
        "seller_id": SELLER,
        "state": "delivered",
        "attempts": 2,
        "next_attempt_at": null,
        "last_status": 200,
        "last_error": null,
        "delivered_at": "2026-11-25T21:36:21Z",
        "created_at": WHEN,
        "attempt_log": [
            {"attempt": 1, "status_code": 503, "error": "HTTP 503", "duration_ms": 84,
                "attempted_at": "2026-11-25T21:36:15Z"},
            {"attempt": 2, "status_code": 200, "error": null, "duration_ms": 61,
                "attempted_at": "2026-11-25T21:36:21Z"},
        ],
    })
}

fn page(items: Vec<Value>) -> Value {
    let total = items.len();
    json!({"data": items, "meta": {"page": 1, "per_page": 15, "total": total}})
}

/// The example of a success body, by its schema's name.
fn body_example(schema: &str) -> Option<Value> {
    Some(match schema {
        "LoginResponse" => json!({
            "access_token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": "kP3vX9qLm2TzR7wNc4bHs8dY",
            "user": {"id": 1, "name": "Dilnoza Operator", "role": "admin"},
        }),
        "RefreshResponse" => json!({
            "access_token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.bmV3c2lnbmF0dXJl",
            "refresh_token": "Zr8mQ2xWv5LkT9nBc3pHs7dY",
            "token_type": "Bearer",
            "expires_in": 3600,
        }),
        "ConnectSessionEnvelope" => json!({"data": {
            "token": "cs_Jm4nR8tXq2VwZ7kLb5pHc9sd",
            "connect_url": "https://connector.example/connect/cs_Jm4nR8tXq2VwZ7kLb5pHc9sd",
            "expires_at": "2026-11-25T22:06:15Z",
            "seller_id": SELLER,
            "platform": "amocrm",
        }}),
        "SettingsSessionEnvelope" => json!({"data": {
            "token": "ss_Hq7wL2mXk9RzT4vNb8pJc3sd",
            "settings_url": "https://connector.example/settings/ss_Hq7wL2mXk9RzT4vNb8pJc3sd",
            "expires_at": "2026-11-25T22:06:15Z",
        }}),
        "ConnectionEnvelope" => json!({"data": connection()}),
        "ConnectionList" => page(vec![connection()]),
        "PipelineEnvelope" => json!({"data": pipeline()}),
        "SettingsEnvelope" => json!({"data": {
            "language": "uz",
            "entry": "lead",
            "pipeline": pipeline(),
            "responsible": {"mode": "round_robin", "user_ids": [8_000_001, 8_000_002]},
            "contacts": {"match": "phone_then_email", "default_country": "UZ"},
            "items": {"note": true, "products": "auto"},
            "task": {"enabled": false, "text": "Buyurtmani tasdiqlang", "due_in_minutes": 60},
            "fields": {"delivery_method": null, "delivery_address": null, "payment_method": null, "source": null},
            "problems": null,
        }}),
        "OrderEnvelope" => json!({"data": order()}),
        "OrderList" => page(vec![order()]),
        "SubscriptionEnvelope" => json!({"data": subscription()}),
        "SubscriptionList" => page(vec![subscription()]),
        "DeliveryList" => page(vec![delivery()]),
        "EventList" => json!({
            "data": [event(EventKind::PaymentCompleted)],
            "meta": {"next_after": 1187},
        }),
        "RedeliveryEnvelope" => json!({"data": {
            "event_id": EVENT_ID,
            "event": "payment.completed",
            "deliveries": [{
                "id": 5012, "event_id": EVENT_ID, "event": "payment.completed",
                "subscription_id": SUBSCRIPTION_ID, "seller_id": SELLER, "state": "pending",
                "attempts": 0, "next_attempt_at": "2026-11-26T08:00:00Z", "last_status": null,
                "last_error": null, "delivered_at": null, "created_at": WHEN, "attempt_log": [],
            }],
        }}),
        _ => return None,
    })
}

/// The `data` of each outgoing event, as its producer fills it.
fn event_data(kind: EventKind) -> Value {
    match kind {
        EventKind::ConnectionConnected => {
            json!({"seller_id": SELLER, "account_id": ACCOUNT_ID, "subdomain": "sellerone"})
        }
        EventKind::ConnectionRefreshFailed => json!({"seller_id": SELLER, "account_id": ACCOUNT_ID,
            "reason": "amoCRM refused the refresh token (401)"}),
        EventKind::ConnectionRevoked => json!({"seller_id": SELLER, "account_id": ACCOUNT_ID,
            "reason": "uninstalled in amoCRM"}),
        EventKind::ConnectionHostChanged => json!({"seller_id": SELLER, "account_id": ACCOUNT_ID,
            "old_host": "sellerone.amocrm.ru", "new_host": "sellertwo.amocrm.ru"}),
        EventKind::ConnectionSuspended => json!({"seller_id": SELLER, "account_id": ACCOUNT_ID,
            "reason": "payment_required"}),
        EventKind::ConnectionRecovered => json!({"seller_id": SELLER, "account_id": ACCOUNT_ID}),
        EventKind::OrderSynced => json!({"order_id": ORDER_ID, "order_number": "1042",
            "lead_id": LEAD_ID, "contact_id": 41_200_017, "company_id": null}),
        EventKind::OrderSyncFailed => json!({"order_id": ORDER_ID, "order_number": "1042",
            "error": "amoCRM refused the lead: the pipeline 7012345 does not exist"}),
        EventKind::OrderCreated => {
            json!({"lead_id": 25_399_020, "name": "Phone call from +998901234567",
            "price": 80_000, "pipeline_id": PIPELINE_ID, "status_id": 61_000_001})
        }
        EventKind::OrderStatusChanged => json!({"order_id": ORDER_ID, "order_number": "1042",
            "lead_id": LEAD_ID, "status": "shipping", "previous_status": "paid",
            "amocrm": {"pipeline_id": PIPELINE_ID, "status_id": 61_000_004, "old_status_id": 61_000_003}}),
        EventKind::PaymentCompleted => json!({"order_id": ORDER_ID, "order_number": "1042",
            "lead_id": LEAD_ID, "amount": 150_000, "currency": "UZS"}),
        EventKind::OrderCancelled => {
            json!({"order_id": ORDER_ID, "order_number": "1042", "lead_id": LEAD_ID})
        }
        EventKind::SettingsUpdated => {
            json!({"seller_id": SELLER, "changed": ["pipeline", "responsible"]})
        }
    }
}

/// An event's whole body, as delivered and as listed.
fn event(kind: EventKind) -> Value {
    json!({
        "id": EVENT_ID,
        "event": kind.as_str(),
        "timestamp": WHEN,
        "seller_id": SELLER,
        "data": event_data(kind),
    })
}

/// The error body an operation answers with this status.
fn error_example(operation: &str, path: &str, status: &str) -> Value {
    let thing = if path.contains("/sales/orders") {
        "order"
    } else if path.contains("/webhooks") {
        "subscription"
    } else if path.contains("/events") {
        "event"
    } else {
        "connection"
    };
    let (code, message, details) = match status {
        "400" => (
            "BAD_REQUEST",
            "the body is not valid JSON".to_owned(),
            json!({}),
        ),
        "401" if path.starts_with("/api/auth/") => (
            "INVALID_TOKEN",
            "wrong e-mail, password or refresh token".to_owned(),
            json!({}),
        ),
        "401" => (
            "INVALID_TOKEN",
            "invalid or revoked token".to_owned(),
            json!({}),
        ),
        "403" => (
            "INSUFFICIENT_PERMISSION",
            "this account may view but not change anything".to_owned(),
            json!({}),
        ),
        "404" => (
            "RESOURCE_NOT_FOUND",
            format!("{thing} not found"),
            json!({}),
        ),
        "408" => (
            "REQUEST_TIMEOUT",
            "the request body did not arrive in time".to_owned(),
            json!({}),
        ),
        "409" => (
            "DUPLICATE_RESOURCE",
            "order 1042 exists for this seller with a different body".to_owned(),
            json!({}),
        ),
        "413" => (
            "BAD_REQUEST",
            format!(
                "request body is larger than {} KiB",
                crate::web::extract::JSON_LIMIT / 1024
            ),
            json!({}),
        ),
        "422" => (
            "VALIDATION_ERROR",
            "the request has invalid fields".to_owned(),
            invalid_fields(operation),
        ),
        "429" => (
            "RATE_LIMIT_EXCEEDED",
            "rate limit exceeded for this API key".to_owned(),
            json!({}),
        ),
        "503" => (
            "MAINTENANCE_MODE",
            "the database is unavailable; try again shortly".to_owned(),
            json!({}),
        ),
        _ => (
            "INTERNAL_SERVER_ERROR",
            "internal server error".to_owned(),
            json!({}),
        ),
    };
    json!({"error": {
        "code": code,
        "message": message,
        "details": details,
        "timestamp": WHEN,
        "request_id": REQUEST_ID,
    }})
}

/// `details` of a 422: the field an operation most often gets wrong, with its message.
fn invalid_fields(operation: &str) -> Value {
    match operation {
        "post_api_auth_login" => json!({"email": ["is required"]}),
        "post_api_auth_refresh" => json!({"refresh_token": ["is required"]}),
        "post_connect_sessions" => {
            json!({"return_url": ["is not on CONNECT_RETURN_URL_ALLOWLIST"]})
        }
        "post_settings_sessions" | "post_sales_orders" => {
            json!({"seller_id": ["has not connected amoCRM"]})
        }
        "put_connections_by_seller_id_pipeline" => {
            json!({"statuses.paid": ["is not a stage of pipeline 7012345"]})
        }
        "put_connections_by_seller_id_settings" => {
            json!({"responsible.user_ids": ["8000009 is not a user of this amoCRM account"]})
        }
        "post_sales_orders_by_id_retry" => json!({"sync.state": ["the order is already synced"]}),
        "post_connections_by_seller_id_refresh" => {
            json!({"status": ["the connection is revoked: connect again"]})
        }
        "patch_sales_orders_by_id" => {
            json!({"status": ["must be one of pending, awaiting_payment, paid, shipping, completed, cancelled"]})
        }
        _ => json!({"url": ["must be an http or https URL"]}),
    }
}

/// The schema name a media type refers to, if any.
fn schema_ref(media: &Value) -> Option<&str> {
    media
        .pointer("/schema/$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
}

/// Applies the prose, the contents and the examples to the document.
pub fn apply(doc: &mut Value) {
    doc["info"]["description"] = json!(INTRODUCTION);
    doc["tags"] = TAGS
        .iter()
        .map(|(name, shown, description)| {
            json!({"name": name, "x-displayName": shown, "description": description})
        })
        .collect();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for op in item.values_mut() {
                operation(path, op);
            }
        }
    }
    if let Some(hooks) = doc.get_mut("webhooks").and_then(Value::as_object_mut) {
        for kind in EventKind::ALL {
            if let Some(op) = hooks.get_mut(kind.as_str()).and_then(|h| h.get_mut("post")) {
                outgoing(*kind, op);
            }
        }
    }
}

fn operation(path: &str, op: &mut Value) {
    let id = op["operationId"].as_str().unwrap_or_default().to_owned();
    if let Some((_, summary, description)) = OPERATIONS.iter().find(|(o, _, _)| *o == id) {
        op["summary"] = json!(summary);
        op["description"] = json!(description);
    }
    if let Some(example) = request_example(&id)
        && let Some(media) = op.pointer_mut("/requestBody/content/application~1json")
    {
        media["example"] = example;
    }
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for (status, response) in responses.iter_mut() {
        let Some(media) = response.pointer_mut("/content/application~1json") else {
            continue;
        };
        let example = match schema_ref(media) {
            Some("ErrorBody") => Some(error_example(&id, path, status)),
            Some(name) => body_example(name),
            None => None,
        };
        if let Some(example) = example {
            media["example"] = example;
        }
    }
}

/// One outgoing event: its name as the summary (the contents list the events by name), when it is sent,
/// how to verify it, the headers it comes with and an example body.
fn outgoing(kind: EventKind, op: &mut Value) {
    op["summary"] = json!(kind.as_str());
    op["description"] = json!(format!("Sent when {}.\n\n{SIGNATURE}", kind.when()));
    op["tags"] = json!(["outgoing-events"]);
    // Not the API's bearer token: a delivery proves itself with its signature.
    op["security"] = json!([]);
    op["parameters"] = json!([
        {
            "name": "X-Signature",
            "in": "header",
            "required": true,
            "description": "`sha256=` and the lowercase hex HMAC-SHA256 of the raw body, keyed with the subscription's `secret`.",
            "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
            "example": "sha256=3f0c5e8a1b2d4c6e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60",
        },
        {
            "name": "X-Webhook-Id",
            "in": "header",
            "required": true,
            "description": "The event id, as the body's `id`: deduplicate on it.",
            "schema": {"type": "string"},
            "example": EVENT_ID,
        },
        {
            "name": "X-Webhook-Timestamp",
            "in": "header",
            "required": true,
            "description": "Unix seconds when this attempt was sent (not signed; retries can come hours later).",
            "schema": {"type": "integer"},
            "example": 1_795_642_575,
        },
    ]);
    if let Some(media) = op.pointer_mut("/requestBody/content/application~1json") {
        media["example"] = event(kind);
    }
    op["responses"] = json!({
        "2XX": {"description": "Delivered. Answer within 10 s; the body is read but not used."},
        "default": {"description": "Not delivered: retried after about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h, then `failed`."},
    });
}
