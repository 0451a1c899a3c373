//! Cross-job dependencies: which intervals of another job a run waits for.
//!
//! `after: [other_job.step]` means "the same logical interval" of the other job. When the two jobs have
//! different schedules, the downstream interval `[s, e)` waits for every interval of the upstream job
//! whose start lies in `[s, e)` (a daily job after an hourly one waits for that day's 24 hours). When no
//! upstream interval starts inside it (the upstream is coarser, e.g. an hourly job after a daily one), it
//! waits for the upstream interval that contains `s`. Upstream intervals outside the upstream job's own
//! `start`/`end` do not exist and are not waited for.

use crate::schedule::{Calendar, Interval};

/// The upstream intervals that downstream interval `iv` waits for.
pub fn upstream_intervals(upstream: &Calendar, iv: Interval) -> Vec<Interval> {
    let inside = upstream.intervals(iv.start, iv.end);
    if !inside.is_empty() {
        return inside;
    }
    upstream.interval_at(iv.start).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{parse_time, Schedule, Tz};

    fn cal(expr: &str) -> Calendar {
        Calendar {
            schedule: Schedule::parse(expr, Tz::UTC).expect("cron"),
            start: parse_time("2026-01-01", Tz::UTC).expect("t"),
            end: None,
        }
    }

    #[test]
    fn daily_after_hourly_waits_for_the_days_hours() {
        let day = Interval {
            start: parse_time("2026-03-01", Tz::UTC).expect("t"),
            end: parse_time("2026-03-02", Tz::UTC).expect("t"),
        };
        let ups = upstream_intervals(&cal("@hourly"), day);
        assert_eq!(ups.len(), 24);
        assert_eq!(ups[0].start, day.start);
        assert_eq!(ups[23].end, day.end);
    }

    #[test]
    fn hourly_after_daily_waits_for_the_containing_day() {
        let hour = Interval {
            start: parse_time("2026-03-01T05:00", Tz::UTC).expect("t"),
            end: parse_time("2026-03-01T06:00", Tz::UTC).expect("t"),
        };
        let ups = upstream_intervals(&cal("@daily"), hour);
        assert_eq!(ups.len(), 1);
        assert_eq!(ups[0].start, parse_time("2026-03-01", Tz::UTC).expect("t"));
    }

    #[test]
    fn before_the_upstream_start_there_is_nothing_to_wait_for() {
        let early = Interval {
            start: parse_time("2025-06-01", Tz::UTC).expect("t"),
            end: parse_time("2025-06-02", Tz::UTC).expect("t"),
        };
        assert!(upstream_intervals(&cal("@daily"), early).is_empty());
    }
}
