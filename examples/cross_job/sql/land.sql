CREATE TABLE IF NOT EXISTS staging_hits (at timestamptz NOT NULL, path text NOT NULL);
INSERT INTO staging_hits (at, path)
SELECT {{ interval_start | sql_literal }}::timestamptz, '/';
