-- The push worker asks every poll whether any lead step or buyer scan is due: these partial indexes hold
-- only the unfinished rows, so the question stays one index probe however many finished rows pile up.
CREATE INDEX order_steps_open_due ON order_steps (next_attempt_at) WHERE state IN ('pending', 'sent');
CREATE INDEX buyer_scans_open_due ON buyer_scans (next_attempt_at) WHERE finished_at IS NULL;
