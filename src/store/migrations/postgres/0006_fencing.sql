-- cranium metadata store, PostgreSQL, version 6: fencing tokens. Every claim that gives a step's
-- lease to a new holder takes a new token from this sequence; writes about an attempt name the
-- token they were claimed with, and the store refuses them once the lease has another token.
CREATE SEQUENCE lease_tokens;
ALTER TABLE step_leases ADD COLUMN token bigint NOT NULL DEFAULT 0;
