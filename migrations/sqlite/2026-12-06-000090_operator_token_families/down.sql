DROP INDEX operator_tokens_family;
ALTER TABLE operator_tokens DROP COLUMN family;
