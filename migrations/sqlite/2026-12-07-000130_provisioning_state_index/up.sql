-- The connect worker asks every 5 s which active connections still need provisioning; nearly none do, and
-- without this index the question read every connection (50 ms with 100,000 on SQLite, most of an idle
-- service's CPU). Both columns the query binds by equality, so SQLite prefers it to the `status` index.
CREATE INDEX amocrm_connections_provisioning ON amocrm_connections (provisioning_state, status);
