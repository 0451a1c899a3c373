-- Partner API health per channel and hour: request count, error rate (5xx and timeouts) and
-- latency percentiles. This is what partners see on their channel dashboard.
CREATE TABLE IF NOT EXISTS analytics.api_health_hourly (
    hour          timestamptz  NOT NULL,
    channel_id    bigint       NOT NULL,
    channel_name  varchar(128),
    requests      bigint       NOT NULL,
    errors        bigint       NOT NULL,
    error_rate    double precision NOT NULL,
    p50_ms        double precision,
    p95_ms        double precision,
    p99_ms        double precision
);

DELETE FROM analytics.api_health_hourly
WHERE hour >= {{ interval_start | sql_literal }}::timestamptz
  AND hour <  {{ interval_end | sql_literal }}::timestamptz;

INSERT INTO analytics.api_health_hourly
    (hour, channel_id, channel_name, requests, errors, error_rate, p50_ms, p95_ms, p99_ms)
SELECT date_trunc('hour', r.request_time),
       r.channel_id,
       c.name,
       COUNT(*),
       SUM(CASE WHEN r.status_code >= 500 OR r.status_code = 0 THEN 1 ELSE 0 END),
       SUM(CASE WHEN r.status_code >= 500 OR r.status_code = 0 THEN 1 ELSE 0 END)::double precision / COUNT(*),
       percentile_cont(0.50) WITHIN GROUP (ORDER BY r.response_ms),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY r.response_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY r.response_ms)
FROM analytics.api_requests AS r
LEFT JOIN analytics.channels AS c ON c.id = r.channel_id
WHERE r.request_time >= {{ interval_start | sql_literal }}::timestamptz
  AND r.request_time <  {{ interval_end | sql_literal }}::timestamptz
GROUP BY 1, 2, 3;
