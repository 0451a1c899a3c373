-- cranium metadata store, SQLite, version 6: fencing tokens (see the PostgreSQL file of the same
-- name). `lease_tokens` holds the last token given out.
CREATE TABLE lease_tokens (n INTEGER NOT NULL);
INSERT INTO lease_tokens (n) VALUES (0);
ALTER TABLE step_leases ADD COLUMN token INTEGER NOT NULL DEFAULT 0;
