-- API keys of the marketplace backend: only a SHA-256 of each key is kept.
CREATE TABLE api_keys (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    key_prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    tier TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP,
    revoked_at TIMESTAMP
);

-- Requests per key per hour window, shared by every instance.
CREATE TABLE api_key_usage (
    key_id BIGINT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    window_start TIMESTAMP NOT NULL,
    request_count BIGINT NOT NULL,
    PRIMARY KEY (key_id, window_start)
);

-- One row per seller: the amoCRM account it connected and its encrypted tokens.
CREATE TABLE amocrm_connections (
    id BIGSERIAL PRIMARY KEY,
    seller_id TEXT NOT NULL UNIQUE,
    account_id BIGINT NOT NULL,
    host TEXT NOT NULL,
    subdomain TEXT NOT NULL,
    api_domain TEXT,
    status TEXT NOT NULL,
    access_token_enc BYTEA,
    refresh_token_enc BYTEA,
    token_expires_at TIMESTAMP,
    token_version BIGINT NOT NULL DEFAULT 0,
    last_refreshed_at TIMESTAMP,
    refresh_failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_refresh_at TIMESTAMP,
    refresh_lease_owner TEXT,
    refresh_lease_until TIMESTAMP,
    webhook_token TEXT NOT NULL UNIQUE,
    pipeline_id BIGINT,
    stage_pending BIGINT,
    stage_awaiting_payment BIGINT,
    stage_paid BIGINT,
    stage_shipping BIGINT,
    stage_completed BIGINT,
    stage_cancelled BIGINT,
    field_order_number_id BIGINT,
    field_order_link_id BIGINT,
    amocrm_webhook_id BIGINT,
    webhook_destination TEXT,
    provisioning_state TEXT NOT NULL DEFAULT 'pending',
    provisioning_error TEXT,
    provisioning_attempts INTEGER NOT NULL DEFAULT 0,
    next_provision_at TIMESTAMP,
    push_lease_owner TEXT,
    push_lease_until TIMESTAMP,
    connected_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP,
    revoke_reason TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX amocrm_connections_account ON amocrm_connections (account_id);
CREATE INDEX amocrm_connections_due ON amocrm_connections (status, token_expires_at);

-- Single-use, short-lived links that open the "Connect amoCRM" page for one seller.
CREATE TABLE connect_sessions (
    id BIGSERIAL PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    seller_id TEXT NOT NULL,
    return_url TEXT,
    lang TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);

-- OAuth `state` values: single use, bound to a session, a seller and a browser cookie.
CREATE TABLE oauth_states (
    id BIGSERIAL PRIMARY KEY,
    state_hash TEXT NOT NULL UNIQUE,
    session_id BIGINT NOT NULL REFERENCES connect_sessions(id) ON DELETE CASCADE,
    seller_id TEXT NOT NULL,
    browser_hash TEXT NOT NULL,
    mode TEXT NOT NULL,
    expires_at TIMESTAMP NOT NULL,
    used_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);

-- Marketplace orders and their sync state towards amoCRM (the push queue).
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    seller_id TEXT NOT NULL,
    order_number TEXT NOT NULL,
    status TEXT NOT NULL,
    total_amount_minor BIGINT NOT NULL,
    currency TEXT NOT NULL,
    body_json TEXT NOT NULL,
    body_hash TEXT NOT NULL,
    sync_state TEXT NOT NULL,
    lead_id BIGINT,
    contact_id BIGINT,
    company_id BIGINT,
    sync_attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    synced_at TIMESTAMP,
    next_attempt_at TIMESTAMP NOT NULL,
    needs_lookup BOOLEAN NOT NULL DEFAULT FALSE,
    lease_owner TEXT,
    lease_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (seller_id, order_number)
);
CREATE INDEX orders_queue ON orders (sync_state, next_attempt_at);
CREATE INDEX orders_lead ON orders (seller_id, lead_id);

-- Stage moves requested through PATCH, applied in order per order.
CREATE TABLE order_moves (
    id BIGSERIAL PRIMARY KEY,
    order_id TEXT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    target_status TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMP NOT NULL,
    lease_owner TEXT,
    lease_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX order_moves_queue ON order_moves (state, next_attempt_at);

-- The event log (outbox): written in the same transaction as the change it reports.
CREATE TABLE events (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    event TEXT NOT NULL,
    seller_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    dedupe_key TEXT UNIQUE,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX events_seller ON events (seller_id, seq);
CREATE INDEX events_created ON events (created_at);

-- The marketplace's event subscriptions; the signing secret is encrypted.
CREATE TABLE webhook_subscriptions (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret_enc BYTEA NOT NULL,
    active BOOLEAN NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- One row per (event, subscription): the delivery queue.
CREATE TABLE event_deliveries (
    id BIGSERIAL PRIMARY KEY,
    event_seq BIGINT NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    subscription_id TEXT NOT NULL REFERENCES webhook_subscriptions(id) ON DELETE CASCADE,
    seller_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMP NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    delivered_at TIMESTAMP,
    lease_owner TEXT,
    lease_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (event_seq, subscription_id)
);
CREATE INDEX event_deliveries_queue ON event_deliveries (state, next_attempt_at);

-- Every attempt of every delivery, for the deliveries API and the dashboard.
CREATE TABLE delivery_attempts (
    id BIGSERIAL PRIMARY KEY,
    delivery_id BIGINT NOT NULL REFERENCES event_deliveries(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration_ms BIGINT NOT NULL,
    attempted_at TIMESTAMP NOT NULL
);
CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);

-- Raw amoCRM webhook bodies, stored before they are acknowledged, processed afterwards.
CREATE TABLE amocrm_webhook_inbox (
    id BIGSERIAL PRIMARY KEY,
    connection_id BIGINT NOT NULL,
    seller_id TEXT NOT NULL,
    body BYTEA NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMP NOT NULL,
    lease_owner TEXT,
    lease_until TIMESTAMP,
    received_at TIMESTAMP NOT NULL,
    processed_at TIMESTAMP
);
CREATE INDEX amocrm_webhook_inbox_queue ON amocrm_webhook_inbox (state, next_attempt_at);

-- What the connector knows of each lead: the basis for deduplicated, order-independent events.
CREATE TABLE lead_states (
    seller_id TEXT NOT NULL,
    lead_id BIGINT NOT NULL,
    order_id TEXT,
    pipeline_id BIGINT,
    status_id BIGINT,
    last_modified BIGINT NOT NULL DEFAULT 0,
    paid BOOLEAN NOT NULL DEFAULT FALSE,
    created_by_us BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (seller_id, lead_id)
);

-- Named leases so that a job (the refresh sweep) runs at most once at a time across instances.
CREATE TABLE job_leases (
    name TEXT PRIMARY KEY,
    owner TEXT,
    lease_until TIMESTAMP,
    last_started_at TIMESTAMP,
    last_finished_at TIMESTAMP,
    last_result TEXT
);

-- Operators of the dashboard.
CREATE TABLE operators (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    failed_logins INTEGER NOT NULL DEFAULT 0,
    locked_until TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);

-- Operator access and refresh tokens, stored as hashes.
CREATE TABLE operator_tokens (
    id BIGSERIAL PRIMARY KEY,
    operator_id BIGINT NOT NULL REFERENCES operators(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at TIMESTAMP NOT NULL,
    revoked_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
