-- amoCRM and Kommo side by side (docs/CONTRACT.md §11): each connection and each connect link knows its
-- platform, whose client id and secret its token calls use. Rows from before were all amoCRM.
ALTER TABLE amocrm_connections ADD COLUMN platform TEXT NOT NULL DEFAULT 'amocrm';
ALTER TABLE connect_sessions ADD COLUMN platform TEXT NOT NULL DEFAULT 'amocrm';

-- A suspended connection (amoCRM answered 402 or 403): why, since when, and when it may be probed next. The
-- probe's time is claimed with a conditional UPDATE, so instances sharing the database probe once.
ALTER TABLE amocrm_connections ADD COLUMN suspended_reason TEXT;
ALTER TABLE amocrm_connections ADD COLUMN suspended_at TIMESTAMP;
ALTER TABLE amocrm_connections ADD COLUMN next_probe_at TIMESTAMP;
CREATE INDEX amocrm_connections_probe ON amocrm_connections (status, next_probe_at);

-- How a connection's calls to amoCRM go, apart from the connection row (which holds what the connection is):
-- written at most about once a minute per connection, so it costs nothing on the hot path.
CREATE TABLE connection_health (
    connection_id BIGINT PRIMARY KEY REFERENCES amocrm_connections(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    last_success_at TIMESTAMP,
    last_failure_at TIMESTAMP,
    last_failure_class TEXT,
    last_failure TEXT,
    updated_at TIMESTAMP NOT NULL
);
