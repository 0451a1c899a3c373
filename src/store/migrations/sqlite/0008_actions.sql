-- cranium metadata store, SQLite, version 8: what people did in the dashboard (who, what, when
-- and how it went). Each form carries a nonce, unique here, so a double submit acts once.
CREATE TABLE actions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    nonce      TEXT    NOT NULL UNIQUE,
    who        TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    job        TEXT,
    detail     TEXT    NOT NULL DEFAULT 'null',
    outcome    TEXT,
    created_at TEXT    NOT NULL
);

-- The dashboard's live updates read what changed since their last look.
CREATE INDEX step_intervals_updated ON step_intervals (updated_at);

-- Consumer lag over time: a sample per topic partition each time it is recorded (after every
-- kafka_to_s3 run), kept 30 days, for the dashboard's lag page.
CREATE TABLE consumer_lag_history (
    job         TEXT NOT NULL,
    step        TEXT NOT NULL,
    topic       TEXT NOT NULL,
    "partition" INTEGER NOT NULL,
    lag         INTEGER NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX consumer_lag_history_at ON consumer_lag_history (recorded_at);
