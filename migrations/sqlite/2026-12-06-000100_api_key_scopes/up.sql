-- What a key may do: `full` (everything, as before), `read` (GET only) or `orders` (orders and connect
-- sessions only).
ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'full';
