//! The catalogue of events the service emits to the marketplace (docs/CONTRACT.md §7): each event's name, when
//! it fires, and the type of its `data`. Subscriptions, the event-log filter, the storage list and the API
//! document all read this one list.
//!
//! To add an event: declare its payload struct below, add one line to `catalogue!`, and build it at its
//! producer with `NewEvent::of(seller, &payload, dedupe_key)`.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::Schema;

use crate::domain::status::{OrderStatus, SuspendReason};

/// The `data` of one kind of event; its kind is fixed by the type, so a payload can never go out under the
/// wrong name.
pub trait EventPayload: Serialize {
    const KIND: EventKind;
}

macro_rules! catalogue {
    ($( $variant:ident => $name:literal, $payload:ident, $when:literal; )*) => {
        /// Every event the service emits.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $( $variant, )*
        }

        impl EventKind {
            pub const ALL: &'static [EventKind] = &[$( EventKind::$variant, )*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $( Self::$variant => $name, )*
                }
            }

            /// When the event fires, for the API document.
            pub fn when(self) -> &'static str {
                match self {
                    $( Self::$variant => $when, )*
                }
            }

            /// The name of the schema of the event's `data`; [`EventKind::data_schemas`] brings it.
            pub fn data_schema_name(self) -> &'static str {
                match self {
                    $( Self::$variant => stringify!($payload), )*
                }
            }

            /// The schema of the event's `data` and every schema it refers to, named, for the API document.
            pub fn data_schemas(self, out: &mut Vec<(String, RefOr<Schema>)>) {
                match self {
                    $( Self::$variant => {
                        out.push((stringify!($payload).to_owned(), <$payload as utoipa::PartialSchema>::schema()));
                        <$payload as ToSchema>::schemas(out);
                    } )*
                }
            }
        }

        $( impl EventPayload for $payload {
            const KIND: EventKind = EventKind::$variant;
        } )*
    };
}

catalogue! {
    ConnectionConnected => "connection.connected", ConnectionConnected,
        "a seller finished connecting";
    ConnectionRefreshFailed => "connection.refresh_failed", ConnectionRefreshFailed,
        "amoCRM refused the refresh token: the seller must reconnect";
    ConnectionRevoked => "connection.revoked", ConnectionRevoked,
        "uninstall hook, or DELETE through the API";
    ConnectionHostChanged => "connection.host_changed", ConnectionHostChanged,
        "the seller renamed their amoCRM account: the connection follows it to its new host";
    ConnectionSuspended => "connection.suspended", ConnectionSuspended,
        "amoCRM refuses the account (unpaid: payment_required, or blocked): orders are held until it answers again";
    ConnectionRecovered => "connection.recovered", ConnectionRecovered,
        "amoCRM answers a suspended account again: the connection is active and held orders are pushed";
    OrderSynced => "order.synced", OrderSynced,
        "a pushed order became a lead";
    OrderSyncFailed => "order.sync_failed", OrderSyncFailed,
        "amoCRM rejected an order for good";
    OrderCreated => "order.created", OrderCreated,
        "a lead was created in amoCRM, in the seller's pipeline, not by this service";
    OrderStatusChanged => "order.status_changed", OrderStatusChanged,
        "a lead of the seller's pipeline changed stage in amoCRM";
    PaymentCompleted => "payment.completed", PaymentCompleted,
        "a lead first reaches paid or any later stage except cancelled: once per order";
    OrderCancelled => "order.cancelled", OrderCancelled,
        "a lead reaches cancelled (143)";
    SettingsUpdated => "settings.updated", SettingsUpdated,
        "a seller's settings changed (through the API or the seller's settings page)";
}

impl EventKind {
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }

    /// Every name, in catalogue order.
    pub fn names() -> Vec<&'static str> {
        Self::ALL.iter().map(|k| k.as_str()).collect()
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionConnected {
    pub seller_id: String,
    pub account_id: i64,
    pub subdomain: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionRefreshFailed {
    pub seller_id: String,
    pub account_id: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionRevoked {
    pub seller_id: String,
    pub account_id: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionHostChanged {
    pub seller_id: String,
    pub account_id: i64,
    /// The account's host before, e.g. `oldname.amocrm.ru`.
    pub old_host: String,
    /// The account's host now, e.g. `newname.amocrm.ru`.
    pub new_host: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionSuspended {
    pub seller_id: String,
    pub account_id: i64,
    /// `payment_required` (402) or `blocked` (403).
    #[schema(value_type = String, example = "payment_required")]
    pub reason: SuspendReason,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConnectionRecovered {
    pub seller_id: String,
    pub account_id: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderSynced {
    pub order_id: String,
    pub order_number: String,
    pub lead_id: Option<i64>,
    pub contact_id: Option<i64>,
    pub company_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderSyncFailed {
    pub order_id: String,
    pub order_number: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderCreated {
    pub lead_id: i64,
    pub name: String,
    pub price: i64,
    pub pipeline_id: Option<i64>,
    pub status_id: Option<i64>,
}

/// Where the lead stands in amoCRM's own terms.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AmoStage {
    pub pipeline_id: Option<i64>,
    pub status_id: Option<i64>,
    pub old_status_id: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderStatusChanged {
    /// `null` for a lead no order of ours made.
    pub order_id: Option<String>,
    pub order_number: Option<String>,
    pub lead_id: i64,
    #[schema(value_type = Option<String>)]
    pub status: Option<OrderStatus>,
    #[schema(value_type = Option<String>)]
    pub previous_status: Option<OrderStatus>,
    pub amocrm: AmoStage,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PaymentCompleted {
    pub order_id: Option<String>,
    pub order_number: Option<String>,
    pub lead_id: i64,
    /// In major units, a number (`150000`, `99.5`): the order's total, or amoCRM's price for a lead no order
    /// made.
    #[schema(value_type = f64, example = 150000)]
    pub amount: Value,
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderCancelled {
    pub order_id: Option<String>,
    pub order_number: Option<String>,
    pub lead_id: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SettingsUpdated {
    pub seller_id: String,
    /// The top-level settings keys that changed (`pipeline`, `responsible`, …).
    pub changed: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_parse_back() {
        let names = EventKind::names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(EventKind::parse("order.refunded"), None);
    }
}
