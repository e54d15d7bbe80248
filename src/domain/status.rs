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

/// The state of a seller's amoCRM connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Active,
    RefreshFailed,
    Revoked,
}

impl ConnectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::RefreshFailed => "refresh_failed",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Self::Active),
            "refresh_failed" => Some(Self::RefreshFailed),
            "revoked" => Some(Self::Revoked),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
