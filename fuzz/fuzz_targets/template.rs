//! The template renderer: a SQL, Lua or key template from a job file, compiled, linted and rendered
//! with a run's variables (every filter: `date`, `sql_literal`, `sql_identifier`), then mapped back
//! to source positions as the SQL error reporter does.
//!
//! Input: byte 0 picks the dialect and the time zone; the rest is the template (UTF-8).
#![no_main]

use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use cranium::sql::Dialect;
use cranium::template::{self, Renderer, TemplateVars};
use libfuzzer_sys::fuzz_target;

fn renderer() -> &'static Renderer {
    static R: OnceLock<Renderer> = OnceLock::new();
    R.get_or_init(Renderer::new)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(source) = std::str::from_utf8(rest) else {
        return;
    };
    let dialect = match sel & 3 {
        0 => None,
        1 => Some(Dialect::Postgres),
        2 => Some(Dialect::Redshift),
        _ => Some(Dialect::MySql),
    };
    let timezone = match (sel >> 2) & 3 {
        0 => chrono_tz::UTC,
        1 => chrono_tz::America::New_York,
        2 => chrono_tz::Asia::Kathmandu,
        _ => chrono_tz::Australia::Lord_Howe,
    };
    let start = DateTime::<Utc>::from_timestamp(1_772_323_200, 0).unwrap_or_default();
    let vars = TemplateVars {
        interval_start: start,
        interval_end: start + chrono::Duration::hours(1),
        timezone,
        run_id: "run-1".into(),
        job: "job'\"`\\".into(),
        step: "step".into(),
        params: serde_json::json!({
            "s": "it's \\ \"q\" `b`",
            "n": 42,
            "f": -1.5e300,
            "b": true,
            "z": null,
            "l": ["a", 1, null, [2]],
            "e": [],
            "m": {"k": "v", "nested": {"deep": [1, 2, 3]}},
            "ts": "2026-03-01T12:00:00+05:45",
            "d": "2026-03-01",
            "nul": "a\u{0}b",
        }),
        steps: serde_json::json!({"up": {"outputs": {"rows": 7, "key": "s3://b/k"}}}),
    };
    let r = renderer();
    let _ = r.check_syntax("fuzz.sql", source);
    let _ = template::unquoted_param_outputs(source);
    match r.render("fuzz.sql", source, &vars, dialect) {
        Ok(out) => {
            let lines = out.lines().count().max(1);
            for line in [1, lines / 2 + 1, lines] {
                let _ = cranium::sql::map_to_source(source, &out, line, 1);
                let _ = cranium::sql::map_to_source(source, &out, line, usize::MAX / 2);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
