-- Before the rollups run, check that the day's events arrived: a day with far fewer events than the
-- last week's average usually means an extraction problem, not a quiet day.
local day = ctx.interval.ds
local rows = cranium.query("warehouse", [[
  SELECT
    (SELECT COUNT(*) FROM analytics.app_events
      WHERE event_time >= $1::timestamptz AND event_time < $2::timestamptz) AS app_events,
    (SELECT COUNT(*) FROM analytics.api_requests
      WHERE request_time >= $1::timestamptz AND request_time < $2::timestamptz) AS api_requests
]], ctx.interval.start, ctx.interval["end"])

local counts = rows[1]
ctx.outputs.app_events = counts.app_events
ctx.outputs.api_requests = counts.api_requests
cranium.log("info", string.format("%s: %d app events, %d API requests",
  day, counts.app_events, counts.api_requests))

if counts.app_events == 0 then
  error("no app events loaded for " .. day .. "; is events_hourly behind?")
end
