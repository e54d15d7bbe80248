-- `order_steps_open_due` was partial (`WHERE state IN ('pending', 'sent')`), but the push binds those states as
-- parameters, and SQLite uses a partial index only when the query spells its WHERE out as literals: the
-- every-poll "is any lead step due" question read every step ever made (32 ms per million rows, measured).
-- A plain index on the state and the due time answers it with bound states too.
DROP INDEX order_steps_open_due;
CREATE INDEX order_steps_state_due ON order_steps (state, next_attempt_at);
