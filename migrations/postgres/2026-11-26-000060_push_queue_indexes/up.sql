-- The push claims one seller's due orders, longest due first. With only the global queue index every
-- claim walked the due orders of all sellers and sorted them (50 sellers × 200 orders: half of the push's
-- time went there, by `perf`). This index yields one seller's due queue already in claim order.
CREATE INDEX orders_seller_queue ON orders (seller_id, sync_state, needs_lookup, next_attempt_at, created_at, id);
-- A claimed order's pending moves, and an order's move history, without scanning every pending move.
CREATE INDEX order_moves_order ON order_moves (order_id, state);
