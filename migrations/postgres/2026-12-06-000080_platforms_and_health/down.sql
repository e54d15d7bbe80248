DROP TABLE connection_health;
DROP INDEX amocrm_connections_probe;
ALTER TABLE amocrm_connections DROP COLUMN next_probe_at;
ALTER TABLE amocrm_connections DROP COLUMN suspended_at;
ALTER TABLE amocrm_connections DROP COLUMN suspended_reason;
ALTER TABLE connect_sessions DROP COLUMN platform;
ALTER TABLE amocrm_connections DROP COLUMN platform;
