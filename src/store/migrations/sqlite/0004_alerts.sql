-- cranium metadata store, SQLite, version 4: the alert queue.
--
-- * alerts: one row per (alert, channel): queued until a send succeeds (retried with backoff),
--   then sent; failed after its last try; suppressed when the throttle held it back.
-- * alert_sends: every attempt to send, with its outcome.
-- * alert_throttle: per (channel, job|step|event): when an alert last went out, how many were
--   suppressed since, and whether the condition is still open (for the `resolved` notice).
-- * sla_alerts: the intervals whose SLA miss was raised, so each is raised once.
CREATE TABLE alerts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    channel        TEXT    NOT NULL,
    event          TEXT    NOT NULL,
    job            TEXT,
    step           TEXT,
    interval_start TEXT,
    run_id         INTEGER,
    summary        TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('queued', 'sent', 'failed', 'suppressed')),
    tries          INTEGER NOT NULL DEFAULT 0,
    next_try_at    TEXT    NOT NULL,
    last_error     TEXT,
    created_at     TEXT    NOT NULL,
    sent_at        TEXT
);
CREATE INDEX alerts_due ON alerts (state, next_try_at);
CREATE INDEX alerts_job ON alerts (job, id);

CREATE TABLE alert_sends (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id INTEGER NOT NULL REFERENCES alerts (id),
    channel  TEXT    NOT NULL,
    at       TEXT    NOT NULL,
    ok       INTEGER NOT NULL,
    error    TEXT
);
CREATE INDEX alert_sends_alert ON alert_sends (alert_id);

CREATE TABLE alert_throttle (
    channel      TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    last_sent_at TEXT    NOT NULL,
    suppressed   INTEGER NOT NULL DEFAULT 0,
    open         INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;

CREATE TABLE sla_alerts (
    job            TEXT NOT NULL,
    interval_start TEXT NOT NULL,
    raised_at      TEXT NOT NULL,
    PRIMARY KEY (job, interval_start)
) WITHOUT ROWID;
