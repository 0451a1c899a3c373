DELETE FROM signup_report WHERE day = {{ ds | sql_literal }};
INSERT INTO signup_report (day, signups)
SELECT {{ ds | sql_literal }}::date, COUNT(*)
FROM signups
WHERE created_at >= {{ interval_start | sql_literal }}::timestamptz
  AND created_at <  {{ interval_end | sql_literal }}::timestamptz;
