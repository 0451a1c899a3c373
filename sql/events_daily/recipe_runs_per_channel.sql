-- Recipe runs per channel: every partner API call a recipe worker made, by the channel called,
-- with the recipes' trigger/action role from the product tables.
CREATE TABLE IF NOT EXISTS analytics.recipe_runs_per_channel (
    day           date         NOT NULL,
    channel_id    bigint       NOT NULL,
    channel_name  varchar(128),
    role          varchar(16)  NOT NULL,
    runs          bigint       NOT NULL,
    recipes       bigint       NOT NULL
);

DELETE FROM analytics.recipe_runs_per_channel
WHERE day = {{ ds | sql_literal }};

INSERT INTO analytics.recipe_runs_per_channel (day, channel_id, channel_name, role, runs, recipes)
SELECT {{ ds | sql_literal }}::date,
       r.channel_id,
       c.name,
       CASE WHEN r.channel_id = rc.trigger_channel_id THEN 'trigger' ELSE 'action' END,
       COUNT(*),
       COUNT(DISTINCT r.recipe_id)
FROM analytics.api_requests AS r
JOIN analytics.recipes AS rc ON rc.id = r.recipe_id
LEFT JOIN analytics.channels AS c ON c.id = r.channel_id
WHERE r.request_time >= {{ interval_start | sql_literal }}::timestamptz
  AND r.request_time <  {{ interval_end | sql_literal }}::timestamptz
GROUP BY 2, 3, 4;
