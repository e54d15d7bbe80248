-- Delivery heads: the earliest pending delivery per (subscription, seller) is found without a scan.
CREATE INDEX event_deliveries_head ON event_deliveries (subscription_id, seller_id, state, event_seq);
-- Webhook intake: per-connection processing order and retention by age.
CREATE INDEX amocrm_webhook_inbox_connection ON amocrm_webhook_inbox (connection_id, state, id);
CREATE INDEX amocrm_webhook_inbox_received ON amocrm_webhook_inbox (received_at);
