-- The "developer channel" alarm: channels whose hourly error rate jumped well above their mean for the
-- day, with enough traffic for the jump to mean something.
CREATE TABLE IF NOT EXISTS analytics.channel_alarms (
    hour          timestamptz  NOT NULL,
    channel_id    bigint       NOT NULL,
    channel_name  varchar(128),
    error_rate    double precision NOT NULL,
    day_mean      double precision NOT NULL,
    requests      bigint       NOT NULL
);

DELETE FROM analytics.channel_alarms
WHERE hour >= {{ interval_start | sql_literal }}::timestamptz
  AND hour <  {{ interval_end | sql_literal }}::timestamptz;

INSERT INTO analytics.channel_alarms (hour, channel_id, channel_name, error_rate, day_mean, requests)
WITH day AS (
    SELECT channel_id, AVG(error_rate) AS day_mean
    FROM analytics.api_health_hourly
    WHERE hour >= {{ interval_start | sql_literal }}::timestamptz
      AND hour <  {{ interval_end | sql_literal }}::timestamptz
    GROUP BY channel_id
)
SELECT h.hour, h.channel_id, h.channel_name, h.error_rate, d.day_mean, h.requests
FROM analytics.api_health_hourly AS h
JOIN day AS d ON d.channel_id = h.channel_id
WHERE h.hour >= {{ interval_start | sql_literal }}::timestamptz
  AND h.hour <  {{ interval_end | sql_literal }}::timestamptz
  AND h.requests >= {{ params.min_requests | sql_literal }}
  AND h.error_rate > d.day_mean + {{ params.error_rate_jump | sql_literal }};
