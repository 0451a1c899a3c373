CREATE TABLE IF NOT EXISTS daily_hits (day date PRIMARY KEY, hits bigint NOT NULL);
DELETE FROM daily_hits WHERE day = {{ ds | sql_literal }};
INSERT INTO daily_hits (day, hits)
SELECT {{ ds | sql_literal }}::date, COUNT(*) FROM staging_hits
WHERE at >= {{ interval_start | sql_literal }}::timestamptz AND at < {{ interval_end | sql_literal }}::timestamptz;
