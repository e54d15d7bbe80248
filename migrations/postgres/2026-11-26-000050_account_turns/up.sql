-- Whose turn it is to call an amoCRM account. amoCRM counts about 7 requests a second per account, and
-- each instance's limiter only sees its own calls, so several instances calling one account at once would
-- overshoot: an instance calls an account only while it holds that account's turn (a short lease).
CREATE TABLE amocrm_account_turns (
    account_key TEXT PRIMARY KEY,
    owner TEXT,
    lease_until TIMESTAMP,
    taken_at TIMESTAMP,
    wanted_at TIMESTAMP
);
