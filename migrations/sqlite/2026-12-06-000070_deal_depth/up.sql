-- A seller's settings (docs/CONTRACT.md §10) apart from the pipeline, which stays with the connection; the
-- round-robin counter lives here so every instance takes the next user from one place.
CREATE TABLE seller_settings (
    seller_id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,
    round_robin_next BIGINT NOT NULL DEFAULT 0,
    products_catalog_id BIGINT,
    catalog_checked_at TIMESTAMP,
    problems TEXT,
    updated_at TIMESTAMP NOT NULL
);

-- The buyer index: a normalised phone or email (or a company's exact name) to the seller's amoCRM contact.
-- A row without contact_id is being made by creator_order's lead: other orders of that buyer wait for it,
-- so one new buyer becomes one contact however many orders arrive at once.
CREATE TABLE buyer_index (
    seller_id TEXT NOT NULL,
    buyer_key TEXT NOT NULL,
    contact_id BIGINT,
    responsible_user_id BIGINT,
    creator_order TEXT,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (seller_id, buyer_key)
);
CREATE INDEX buyer_index_contact ON buyer_index (seller_id, contact_id);
CREATE INDEX buyer_index_creator ON buyer_index (creator_order);

-- Paging through an account's contacts to fill the buyer index, resumable page by page.
CREATE TABLE buyer_scans (
    seller_id TEXT PRIMARY KEY,
    next_page INTEGER NOT NULL DEFAULT 1,
    finished_at TIMESTAMP,
    next_attempt_at TIMESTAMP NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

-- SKU to catalog element, per seller and catalog. A row without element_id: a create was sent and its outcome
-- is unknown, so the catalog is searched before the element is made again.
CREATE TABLE catalog_skus (
    seller_id TEXT NOT NULL,
    catalog_id BIGINT NOT NULL,
    sku TEXT NOT NULL,
    element_id BIGINT,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (seller_id, catalog_id, sku)
);

-- What remains to do on an order's lead after it exists: the contact's missing phone or email, the note, the
-- products, the task. 'sent' means a request went out with no known answer: amoCRM is read before repeating.
CREATE TABLE order_steps (
    order_id TEXT NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    seller_id TEXT NOT NULL,
    lead_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    result_id BIGINT,
    result_count INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    next_attempt_at TIMESTAMP NOT NULL,
    lease_owner TEXT,
    lease_until TIMESTAMP,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (order_id, step)
);
CREATE INDEX order_steps_due ON order_steps (seller_id, step, state, next_attempt_at);

-- How the order's buyer was resolved before its lead was sent (kept, so a retry sends the same thing).
ALTER TABLE orders ADD COLUMN buyer_resolved BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE orders ADD COLUMN buyer_contact_id BIGINT;
ALTER TABLE orders ADD COLUMN buyer_company_id BIGINT;
ALTER TABLE orders ADD COLUMN contact_matched TEXT;
ALTER TABLE orders ADD COLUMN responsible_user_id BIGINT;

-- The seller's own settings page: a single-use link, bound at first open to the browser that opened it.
CREATE TABLE settings_sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    seller_id TEXT NOT NULL,
    return_url TEXT,
    lang TEXT NOT NULL,
    browser_hash TEXT,
    expires_at TIMESTAMP NOT NULL,
    opened_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
