-- Operator access and refresh tokens issued by one sign-in share a family: a refresh token is single use
-- (each refresh issues a new pair), and presenting a used one revokes the whole family.
ALTER TABLE operator_tokens ADD COLUMN family TEXT;
CREATE INDEX operator_tokens_family ON operator_tokens (family);
