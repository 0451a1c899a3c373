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
