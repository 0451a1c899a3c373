//! The cron parser and the schedule queries behind it: `schedule` and `timezone` of a job file.
//!
//! Input: line 1 the expression, line 2 a time zone name (default UTC), line 3 an instant for
//! `--from`-style parsing; the remaining bytes pick the instants the schedule is queried at.
#![no_main]

use chrono::{DateTime, Utc};
use cranium::schedule::{self, Schedule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(4, '\n');
    let expr = lines.next().unwrap_or("");
    let tz = match lines.next() {
        Some(name) if !name.is_empty() => match schedule::parse_timezone(name) {
            Ok(tz) => tz,
            Err(e) => {
                let _ = e.to_string();
                chrono_tz::UTC
            }
        },
        _ => chrono_tz::UTC,
    };
    if let Some(t) = lines.next() {
        let _ = schedule::parse_time(t, tz).map_err(|e| e.to_string());
    }
    let rest = lines.next().unwrap_or("").as_bytes();
    let s = match Schedule::parse(expr, tz) {
        Ok(s) => s,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = s.to_string();
    // A handful of instants across (and beyond) the years the schedule knows, from the input.
    let mut instants: Vec<i64> = vec![0, 1_772_323_200, 4_102_444_800, -1, i64::MAX / 1_000_000];
    for c in rest.chunks(8).take(4) {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        instants.push(i64::from_le_bytes(b) % 8_000_000_000);
    }
    for secs in instants {
        let Some(t) = DateTime::<Utc>::from_timestamp(secs, 0) else {
            continue;
        };
        let next = s.next_after(t);
        let prev = s.prev_at_or_before(t);
        if let (Some(n), Some(p)) = (next, prev) {
            assert!(p <= t && t < n, "{expr}: {p} <= {t} < {n}");
        }
        if let Some(i) = s.interval_containing(t) {
            assert!(
                i.start <= t && t < i.end,
                "{expr}: interval {i:?} holds {t}"
            );
            let _ = (i.start_local(tz), i.end_local(tz));
        }
        let _ = s.first_at_or_after(t);
        // A bounded walk: at most 32 consecutive fire times.
        let mut cur = t;
        for _ in 0..32 {
            match s.next_after(cur) {
                Some(n) => {
                    assert!(n > cur, "{expr}: next_after({cur}) = {n}");
                    cur = n;
                }
                None => break,
            }
        }
    }
});
