-- Daily active users: distinct users with at least one event in the day, per platform and overall.
-- Rerunnable: the day's rows are replaced in the step's transaction.
CREATE TABLE IF NOT EXISTS analytics.daily_active_users (
    day         date        NOT NULL,
    platform    varchar(32) NOT NULL,
    users       bigint      NOT NULL,
    events      bigint      NOT NULL
);

DELETE FROM analytics.daily_active_users
WHERE day = {{ ds | sql_literal }};

INSERT INTO analytics.daily_active_users (day, platform, users, events)
SELECT {{ ds | sql_literal }}::date,
       COALESCE(platform, 'all'),
       COUNT(DISTINCT user_id),
       COUNT(*)
FROM analytics.app_events
WHERE event_time >= {{ interval_start | sql_literal }}::timestamptz
  AND event_time <  {{ interval_end | sql_literal }}::timestamptz
GROUP BY ROLLUP (platform);
