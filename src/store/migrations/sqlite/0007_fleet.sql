-- cranium metadata store, SQLite, version 7: several daemons on one store. A daemon run names
-- the daemon executing it (set when it takes the run from the queue), for the run history; a step
-- lease names its pool, so a pool's size is counted across every daemon.
ALTER TABLE runs ADD COLUMN owner text;
ALTER TABLE step_leases ADD COLUMN pool text;
CREATE INDEX step_leases_pool ON step_leases (pool) WHERE pool IS NOT NULL;
