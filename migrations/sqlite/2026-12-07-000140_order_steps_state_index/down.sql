DROP INDEX order_steps_state_due;
CREATE INDEX order_steps_open_due ON order_steps (next_attempt_at) WHERE state IN ('pending', 'sent');
