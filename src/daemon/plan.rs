//! Which intervals of a job are due, and which of them to run or pass over: pure functions of the
//! job's calendar, `catchup`, the clock and the scheduler's watermark (the start of the latest
//! interval it decided, read from the store), so a restart after an outage knows exactly what it
//! missed, and tests run a week of schedules in milliseconds.
//!
//! The watermark only moves forward. An interval at or before it is never decided again, so a
//! schedule edited after an interval ran does not fire that interval (or an earlier one) again.

use chrono::{DateTime, Utc};

use crate::schedule::{Calendar, Interval};

/// At most this many passed-over intervals are recorded in one decision (a seconds-level job
/// that was down for a day would otherwise write tens of thousands of rows); the rest are logged
/// as a count.
pub const MAX_SKIP_RECORDS: usize = 1000;

/// What to do now for one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    /// Intervals to run, oldest first.
    pub run: Vec<Interval>,
    /// Intervals to record as skipped (`catchup: false`), oldest first.
    pub skip: Vec<Interval>,
    /// Passed-over intervals beyond [`MAX_SKIP_RECORDS`], not recorded one by one.
    pub skipped_unrecorded: usize,
}

/// The first interval after the watermark (or the job's first interval), whether due or not.
fn first_after(cal: &Calendar, watermark: Option<DateTime<Utc>>) -> Option<Interval> {
    let start = match watermark {
        Some(w) => cal.schedule.next_after(w)?,
        None => cal.schedule.first_at_or_after(cal.start)?,
    };
    let end = cal.schedule.next_after(start)?;
    let iv = Interval { start, end };
    owned(cal, &iv).then_some(iv)
}

fn owned(cal: &Calendar, iv: &Interval) -> bool {
    iv.start >= cal.start && cal.end.is_none_or(|e| iv.start < e)
}

/// The latest interval that has ended at `now`, if the job has one.
fn latest_ended(cal: &Calendar, now: DateTime<Utc>) -> Option<Interval> {
    let end = cal.schedule.prev_at_or_before(now)?;
    let iv = cal
        .schedule
        .interval_containing(end - chrono::Duration::microseconds(1))?;
    if owned(cal, &iv) {
        return Some(iv);
    }
    // Past the job's end: its last interval.
    let last_start = cal.end?;
    let iv = cal
        .schedule
        .interval_containing(last_start - chrono::Duration::microseconds(1))?;
    (owned(cal, &iv) && iv.end <= now).then_some(iv)
}

/// The decision for one job at `now`: at most `capacity` intervals to run (its free
/// `max_active_runs`), the oldest first with `catchup`, else only the latest, recording the ones
/// it passes over. A job seen for the first time (`watermark` None) without catchup runs only its
/// latest ended interval and passes nothing over; with catchup it starts at its `start`.
pub fn due(
    cal: &Calendar,
    catchup: bool,
    now: DateTime<Utc>,
    watermark: Option<DateTime<Utc>>,
    capacity: usize,
) -> Due {
    let mut out = Due::default();
    if capacity == 0 {
        return out;
    }
    if catchup {
        let mut next = first_after(cal, watermark);
        while let Some(iv) = next {
            if iv.end > now || out.run.len() >= capacity {
                break;
            }
            out.run.push(iv);
            next = first_after(cal, Some(iv.start));
        }
        return out;
    }
    let Some(latest) = latest_ended(cal, now) else {
        return out;
    };
    match watermark {
        Some(w) if latest.start <= w => {}
        None => out.run.push(latest),
        Some(_) => {
            let mut next = first_after(cal, watermark);
            let mut passed = std::collections::VecDeque::new();
            while let Some(iv) = next {
                if iv.start >= latest.start {
                    break;
                }
                passed.push_back(iv);
                if passed.len() > MAX_SKIP_RECORDS {
                    // Keep the latest; count the older ones.
                    passed.pop_front();
                    out.skipped_unrecorded += 1;
                }
                next = first_after(cal, Some(iv.start));
            }
            out.skip = passed.into();
            out.run.push(latest);
        }
    }
    out
}

/// When the job next needs the scheduler: the end of the first interval after the watermark (it
/// may be in the past: then the job is due now). Without a watermark and without catchup, the end
/// of the interval running at `now` (its latest ended interval, if any, is due now).
pub fn next_due(
    cal: &Calendar,
    catchup: bool,
    now: DateTime<Utc>,
    watermark: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    if watermark.is_none() && !catchup {
        if latest_ended(cal, now).is_some() {
            return Some(now);
        }
        return first_after(cal, None).map(|iv| iv.end);
    }
    first_after(cal, watermark).map(|iv| iv.end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{parse_time, Schedule, Tz};

    fn cal(expr: &str, tz: Tz, start: &str) -> Calendar {
        Calendar {
            schedule: Schedule::parse(expr, tz).expect("cron"),
            start: parse_time(start, tz).expect("start"),
            end: None,
        }
    }

    fn t(s: &str) -> DateTime<Utc> {
        parse_time(s, Tz::UTC).expect("time")
    }

    #[test]
    fn catchup_runs_the_missed_intervals_oldest_first_within_capacity() {
        let c = cal("@hourly", Tz::UTC, "2026-03-01");
        let wm = Some(t("2026-03-01T09:00:00Z"));
        // Down from 10:00 to 20:30: ten intervals ended (10:00..20:00).
        let d = due(&c, true, t("2026-03-01T20:30:00Z"), wm, 100);
        assert_eq!(d.run.len(), 10);
        assert_eq!(d.run[0].start, t("2026-03-01T10:00:00Z"));
        assert_eq!(d.run[9].start, t("2026-03-01T19:00:00Z"));
        assert!(d.skip.is_empty());
        let d = due(&c, true, t("2026-03-01T20:30:00Z"), wm, 3);
        assert_eq!(
            d.run.iter().map(|i| i.start).collect::<Vec<_>>(),
            vec![
                t("2026-03-01T10:00:00Z"),
                t("2026-03-01T11:00:00Z"),
                t("2026-03-01T12:00:00Z")
            ]
        );
        assert_eq!(
            due(&c, true, t("2026-03-01T20:30:00Z"), wm, 0),
            Due::default()
        );
    }

    #[test]
    fn no_catchup_runs_the_latest_and_passes_over_the_rest() {
        let c = cal("@hourly", Tz::UTC, "2026-03-01");
        let wm = Some(t("2026-03-01T09:00:00Z"));
        let d = due(&c, false, t("2026-03-01T20:30:00Z"), wm, 1);
        assert_eq!(d.run.len(), 1);
        assert_eq!(d.run[0].start, t("2026-03-01T19:00:00Z"));
        assert_eq!(d.skip.len(), 9);
        assert_eq!(d.skip[0].start, t("2026-03-01T10:00:00Z"));
        assert_eq!(d.skip[8].start, t("2026-03-01T18:00:00Z"));
        // Nothing new: nothing to do.
        let d = due(
            &c,
            false,
            t("2026-03-01T20:30:00Z"),
            Some(t("2026-03-01T19:00:00Z")),
            1,
        );
        assert_eq!(d, Due::default());
    }

    #[test]
    fn a_job_seen_first_does_not_backfill_from_start_without_catchup() {
        let c = cal("@hourly", Tz::UTC, "2026-01-01");
        let d = due(&c, false, t("2026-03-01T20:30:00Z"), None, 1);
        assert_eq!(d.run.len(), 1);
        assert_eq!(d.run[0].start, t("2026-03-01T19:00:00Z"));
        assert!(d.skip.is_empty());
        let d = due(&c, true, t("2026-03-01T20:30:00Z"), None, 2);
        assert_eq!(d.run[0].start, t("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn huge_gaps_record_a_bounded_number_of_skips() {
        let c = cal("* * * * * *", Tz::UTC, "2026-03-01");
        let d = due(
            &c,
            false,
            t("2026-03-01T01:00:00Z"),
            Some(t("2026-03-01T00:00:00Z")),
            1,
        );
        assert_eq!(d.run.len(), 1);
        assert_eq!(d.skip.len(), MAX_SKIP_RECORDS);
        assert_eq!(d.skip.len() + d.skipped_unrecorded, 3600 - 2);
        // The records kept are the latest ones.
        assert_eq!(d.skip.last().map(|i| i.end), Some(d.run[0].start));
    }

    #[test]
    fn next_due_is_the_end_of_the_first_undecided_interval() {
        let c = cal("@hourly", Tz::UTC, "2026-03-01");
        let now = t("2026-03-01T10:30:00Z");
        assert_eq!(
            next_due(&c, true, now, Some(t("2026-03-01T09:00:00Z"))),
            Some(t("2026-03-01T11:00:00Z"))
        );
        assert_eq!(
            next_due(&c, true, now, Some(t("2026-03-01T07:00:00Z"))),
            Some(t("2026-03-01T09:00:00Z"))
        );
        assert_eq!(next_due(&c, false, now, None), Some(now));
        let future = cal("@hourly", Tz::UTC, "2026-04-01");
        assert_eq!(
            next_due(&future, false, now, None),
            Some(t("2026-04-01T01:00:00Z"))
        );
    }

    #[test]
    fn a_jobs_end_bounds_its_intervals() {
        let mut c = cal("@hourly", Tz::UTC, "2026-03-01");
        c.end = Some(t("2026-03-01T03:00:00Z"));
        let d = due(&c, true, t("2026-03-02"), None, 100);
        assert_eq!(d.run.len(), 3);
        let d = due(
            &c,
            true,
            t("2026-03-02"),
            Some(t("2026-03-01T02:00:00Z")),
            100,
        );
        assert!(d.run.is_empty());
        assert_eq!(
            next_due(&c, true, t("2026-03-02"), Some(t("2026-03-01T02:00:00Z"))),
            None
        );
    }
}
