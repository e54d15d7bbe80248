//! Order statuses of the marketplace and the connection statuses the API reports.

use serde::{Deserialize, Serialize};

/// An order's status in the marketplace, each mapped to one stage of the seller's amoCRM pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    AwaitingPayment,
    Paid,
    Shipping,
    Completed,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 6] = [
        OrderStatus::Pending,
        OrderStatus::AwaitingPayment,
        OrderStatus::Paid,
        OrderStatus::Shipping,
        OrderStatus::Completed,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::AwaitingPayment => "awaiting_payment",
            Self::Paid => "paid",
            Self::Shipping => "shipping",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether reaching this status means the buyer has paid (`paid` or any later stage but `cancelled`).
    pub fn implies_payment(self) -> bool {
        matches!(self, Self::Paid | Self::Shipping | Self::Completed)
    }
}

super::wire_enum! {
    /// The state of a seller's amoCRM connection.
    pub enum ConnectionStatus {
        Active => "active",
        /// amoCRM refuses the account for now (unpaid or blocked, see [`SuspendReason`]): nothing is sent
        /// to it but a rare probe, and it becomes `active` again by itself when amoCRM answers.
        Suspended => "suspended",
        RefreshFailed => "refresh_failed",
        Revoked => "revoked",
    }
}

super::wire_enum! {
    /// Why a connection is `suspended`.
    pub enum SuspendReason {
        /// 402: the account's paid period ended.
        PaymentRequired => "payment_required",
        /// 403: the account, the integration or this IP is blocked (or the connecting user deactivated).
        Blocked => "blocked",
    }
}

super::wire_enum! {
    /// How a connection's calls to amoCRM are going, as the connection's health reports it.
    pub enum HealthState {
        /// The last call succeeded.
        Healthy => "healthy",
        /// The last call failed in a way that passes by itself (429, 5xx, network, timeout).
        Degraded => "degraded",
        /// amoCRM refuses the account (402/403): see the connection's `suspended_reason`.
        Suspended => "suspended",
        /// Only the seller can fix it: the refresh token was refused, or the connection was revoked.
        Disconnected => "disconnected",
    }
}

impl HealthState {
    /// The health shown for a connection in `status` whose calls last left `stored`: the connection's
    /// own status decides while it is not active; an active one is degraded or healthy.
    pub fn of(status: ConnectionStatus, stored: Option<HealthState>) -> Self {
        match status {
            ConnectionStatus::Suspended => Self::Suspended,
            ConnectionStatus::RefreshFailed | ConnectionStatus::Revoked => Self::Disconnected,
            ConnectionStatus::Active if stored == Some(Self::Degraded) => Self::Degraded,
            ConnectionStatus::Active => Self::Healthy,
        }
    }
}

super::wire_enum! {
    /// How far the connect-time set-up of a seller's account (pipeline, fields, webhook) has got.
    pub enum ProvisioningState {
        /// Not tried yet (a new or moved account).
        Pending => "pending",
        /// Tried and unfinished: retried on its schedule.
        Incomplete => "incomplete",
        Complete => "complete",
    }
}

super::wire_enum! {
    /// Where one event's delivery to one subscription stands.
    pub enum DeliveryState {
        /// Waiting for its next attempt.
        Pending => "pending",
        Delivered => "delivered",
        /// Out of attempts; can be re-driven.
        Failed => "failed",
    }
}

impl DeliveryState {
    /// It is settled (delivered, or out of attempts), so an operator may send it again.
    pub fn can_redeliver(self) -> bool {
        self != Self::Pending
    }
}

super::wire_enum! {
    /// Where a stored amoCRM webhook body stands.
    pub enum InboxState {
        Pending => "pending",
        Processed => "processed",
        /// Out of attempts; can be retried by an operator.
        Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_follows_the_connection_status_and_only_degraded_shows_through_while_active() {
        use ConnectionStatus as C;
        use HealthState as H;
        for stored in [
            None,
            Some(H::Healthy),
            Some(H::Degraded),
            Some(H::Suspended),
        ] {
            assert_eq!(H::of(C::Suspended, stored), H::Suspended);
            assert_eq!(H::of(C::RefreshFailed, stored), H::Disconnected);
            assert_eq!(H::of(C::Revoked, stored), H::Disconnected);
        }
        assert_eq!(H::of(C::Active, None), H::Healthy);
        assert_eq!(H::of(C::Active, Some(H::Degraded)), H::Degraded);
        // A stored refusal from before the connection recovered is history, not its health now.
        assert_eq!(H::of(C::Active, Some(H::Suspended)), H::Healthy);
        assert_eq!(H::of(C::Active, Some(H::Disconnected)), H::Healthy);
    }

    #[test]
    fn every_status_round_trips_through_its_name() {
        for s in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(OrderStatus::parse("refunded"), None);
    }

    #[test]
    fn payment_is_implied_by_paid_and_later_stages_but_not_cancelled() {
        assert!(OrderStatus::Paid.implies_payment());
        assert!(OrderStatus::Completed.implies_payment());
        assert!(!OrderStatus::Cancelled.implies_payment());
        assert!(!OrderStatus::AwaitingPayment.implies_payment());
    }
}
