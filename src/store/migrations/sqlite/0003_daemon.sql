-- cranium metadata store, SQLite, version 3: what the daemon needs.
--
-- * runs.executor: 'cli' (a foreground `run`/`backfill`, recovered by `recover_stale`) or 'daemon'
--   (re-queued by `requeue_stale` and resumed by the next daemon); runs.request_id and
--   runs.priority: the request that made a daemon run, and its rank when steps wait for slots.
-- * scheduled_intervals: the scheduler's decision for each (job, interval): run it, or pass it
--   over (catchup: false). The primary key is what makes a second scheduled run of an interval
--   impossible, whatever happens between deciding and inserting.
-- * step_leases: who runs a step of an interval now, until when. Every runner (daemon or
--   foreground) claims one before an attempt and renews it while it runs.
-- * paused_jobs, requests (trigger and submitted backfills), daemons (a heartbeat row each).
ALTER TABLE runs ADD COLUMN executor TEXT NOT NULL DEFAULT 'cli' CHECK (executor IN ('cli', 'daemon'));
ALTER TABLE runs ADD COLUMN request_id INTEGER;
ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX runs_executor_state ON runs (executor, state);
CREATE INDEX runs_request ON runs (request_id);

CREATE TABLE scheduled_intervals (
    job            TEXT NOT NULL,
    interval_start TEXT NOT NULL,
    interval_end   TEXT NOT NULL,
    decision       TEXT NOT NULL CHECK (decision IN ('run', 'skipped')),
    reason         TEXT,
    run_id         INTEGER,
    created_at     TEXT NOT NULL,
    PRIMARY KEY (job, interval_start)
) WITHOUT ROWID;

CREATE TABLE step_leases (
    job            TEXT NOT NULL,
    step           TEXT NOT NULL,
    interval_start TEXT NOT NULL,
    owner          TEXT NOT NULL,
    run_id         INTEGER,
    acquired_at    TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    PRIMARY KEY (job, interval_start, step)
) WITHOUT ROWID;
CREATE INDEX step_leases_owner ON step_leases (owner);

CREATE TABLE paused_jobs (
    job       TEXT PRIMARY KEY,
    paused_at TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL CHECK (kind IN ('trigger', 'backfill')),
    job        TEXT    NOT NULL,
    spec       TEXT    NOT NULL,
    priority   INTEGER NOT NULL,
    state      TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    message    TEXT,
    created_at TEXT    NOT NULL,
    updated_at TEXT    NOT NULL
);
CREATE INDEX requests_state ON requests (state, id);

CREATE TABLE daemons (
    id           TEXT    PRIMARY KEY,
    pid          INTEGER NOT NULL,
    host         TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    started_at   TEXT    NOT NULL,
    heartbeat_at TEXT    NOT NULL,
    stopped_at   TEXT,
    status       TEXT    NOT NULL DEFAULT '{}'
) WITHOUT ROWID;
