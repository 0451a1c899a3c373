-- cranium metadata store, SQLite, version 1: runs, step attempts and the per-step interval record.
-- Times are RFC 3339 UTC text with microseconds (2026-03-08T02:30:00.000000Z): fixed width, so
-- text order is time order and range queries on interval_start use the indexes.

CREATE TABLE runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job            TEXT    NOT NULL,
    interval_start TEXT    NOT NULL,
    interval_end   TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed')),
    "trigger"      TEXT    NOT NULL CHECK ("trigger" IN ('schedule', 'manual', 'backfill')),
    created_at     TEXT    NOT NULL,
    started_at     TEXT,
    ended_at       TEXT,
    heartbeat_at   TEXT
);
CREATE INDEX runs_job_id ON runs (job, id);
CREATE INDEX runs_state_id ON runs (state, id);

-- One row per attempt of a step: history, never deleted.
CREATE TABLE step_attempts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id         INTEGER NOT NULL REFERENCES runs (id),
    job            TEXT    NOT NULL,
    step           TEXT    NOT NULL,
    interval_start TEXT    NOT NULL,
    interval_end   TEXT    NOT NULL,
    attempt        INTEGER NOT NULL CHECK (attempt >= 0),
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'success', 'failed',
                                                     'up_for_retry', 'upstream_failed', 'skipped')),
    started_at     TEXT    NOT NULL,
    ended_at       TEXT,
    duration_ms    INTEGER,
    error          TEXT,
    rows_affected  INTEGER,
    bytes          INTEGER,
    log_path       TEXT,
    outputs        TEXT    NOT NULL DEFAULT 'null'
);
CREATE INDEX step_attempts_job_interval ON step_attempts (job, interval_start, step, id);
CREATE INDEX step_attempts_run_state ON step_attempts (run_id, state);

-- The latest state of each (job, step, interval): the source of truth for "what is missing".
CREATE TABLE step_intervals (
    job            TEXT    NOT NULL,
    step           TEXT    NOT NULL,
    interval_start TEXT    NOT NULL,
    interval_end   TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('pending', 'running', 'success', 'failed',
                                                     'up_for_retry', 'upstream_failed', 'skipped')),
    run_id         INTEGER REFERENCES runs (id),
    attempt        INTEGER NOT NULL CHECK (attempt >= 0),
    outputs        TEXT    NOT NULL DEFAULT 'null',
    updated_at     TEXT    NOT NULL,
    PRIMARY KEY (job, interval_start, step)
) WITHOUT ROWID;
CREATE INDEX step_intervals_run_state ON step_intervals (run_id, state);
