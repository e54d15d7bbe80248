-- What the seller saw and what came of it, kept with the state so that the result page (reached by a
-- redirect from the callback, and again on reload or Back) speaks the seller's language and tells the real
-- outcome: `lang` is the page's language when the state was minted; `result_hash` is the SHA-256 of the
-- result page's key; `outcome` is `connected` or the refusal's name once the callback has finished.
ALTER TABLE oauth_states ADD COLUMN lang TEXT;
ALTER TABLE oauth_states ADD COLUMN result_hash TEXT;
ALTER TABLE oauth_states ADD COLUMN outcome TEXT;
CREATE INDEX oauth_states_result_hash ON oauth_states (result_hash);
