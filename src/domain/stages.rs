//! The order-status ↔ amoCRM-stage mapping of one seller: which stage of the seller's pipeline each
//! marketplace status is, and back. The one place that knows amoCRM's system stages.

use super::status::OrderStatus;

/// amoCRM's "won" stage: the same id in every pipeline, used for `completed` unless the seller mapped one.
pub const WON_STAGE: i64 = 142;
/// amoCRM's "lost" stage, used for `cancelled` unless the seller mapped one.
pub const LOST_STAGE: i64 = 143;

/// The seller's pipeline and the stage provisioned for each order status (`None`: not provisioned).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StageMap {
    pub pipeline_id: Option<i64>,
    pub pending: Option<i64>,
    pub awaiting_payment: Option<i64>,
    pub paid: Option<i64>,
    pub shipping: Option<i64>,
    pub completed: Option<i64>,
    pub cancelled: Option<i64>,
}

impl StageMap {
    /// The stage id an order in `status` belongs in (won/lost default to 142/143).
    pub fn stage_id(&self, status: OrderStatus) -> Option<i64> {
        match status {
            OrderStatus::Pending => self.pending,
            OrderStatus::AwaitingPayment => self.awaiting_payment,
            OrderStatus::Paid => self.paid,
            OrderStatus::Shipping => self.shipping,
            OrderStatus::Completed => Some(self.completed.unwrap_or(WON_STAGE)),
            OrderStatus::Cancelled => Some(self.cancelled.unwrap_or(LOST_STAGE)),
        }
    }

    /// `(pipeline_id, status_id)` as amoCRM's API takes them; `None` while the mapping is incomplete.
    pub fn stage(&self, status: OrderStatus) -> Option<(u64, u64)> {
        let pipeline = u64::try_from(self.pipeline_id?).ok()?;
        Some((pipeline, u64::try_from(self.stage_id(status)?).ok()?))
    }

    /// The status a lead in amoCRM stage `(pipeline_id, status_id)` means; `None` outside the seller's
    /// pipeline or in a stage no status maps to. The first status in [`OrderStatus::ALL`] order wins.
    pub fn status_of(
        &self,
        pipeline_id: Option<i64>,
        status_id: Option<i64>,
    ) -> Option<OrderStatus> {
        let (pipeline, status) = (pipeline_id?, status_id?);
        if self.pipeline_id != Some(pipeline) {
            return None;
        }
        OrderStatus::ALL
            .into_iter()
            .find(|s| self.stage_id(*s) == Some(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped() -> StageMap {
        StageMap {
            pipeline_id: Some(7),
            pending: Some(10),
            awaiting_payment: Some(11),
            paid: Some(12),
            shipping: Some(13),
            completed: None,
            cancelled: None,
        }
    }

    #[test]
    fn won_and_lost_default_to_amocrms_system_stages() {
        let m = mapped();
        assert_eq!(m.stage(OrderStatus::Completed), Some((7, 142)));
        assert_eq!(m.stage(OrderStatus::Cancelled), Some((7, 143)));
        assert_eq!(
            m.status_of(Some(7), Some(142)),
            Some(OrderStatus::Completed)
        );
        assert_eq!(
            m.status_of(Some(7), Some(143)),
            Some(OrderStatus::Cancelled)
        );
    }

    #[test]
    fn every_status_maps_to_its_stage_and_back() {
        let m = mapped();
        for s in OrderStatus::ALL {
            let (pipeline, stage) = m.stage(s).unwrap_or_default();
            let back = m.status_of(i64::try_from(pipeline).ok(), i64::try_from(stage).ok());
            assert_eq!(back, Some(s));
        }
    }

    #[test]
    fn other_pipelines_and_missing_stages_map_to_nothing() {
        let m = mapped();
        assert_eq!(m.status_of(Some(8), Some(10)), None);
        assert_eq!(m.status_of(Some(7), Some(99)), None);
        assert_eq!(m.status_of(None, Some(10)), None);
        let unprovisioned = StageMap::default();
        assert_eq!(unprovisioned.stage(OrderStatus::Paid), None);
        assert_eq!(unprovisioned.stage(OrderStatus::Completed), None);
    }
}
