DROP INDEX oauth_states_result_hash;
ALTER TABLE oauth_states DROP COLUMN outcome;
ALTER TABLE oauth_states DROP COLUMN result_hash;
ALTER TABLE oauth_states DROP COLUMN lang;
