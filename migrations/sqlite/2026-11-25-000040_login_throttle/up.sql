-- Failed operator logins per e-mail and per client address, shared by every instance, so guessing
-- passwords is slowed down no matter which instance answers.
CREATE TABLE login_throttle (
    throttle_key TEXT PRIMARY KEY,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until TIMESTAMP,
    updated_at TIMESTAMP NOT NULL
);
