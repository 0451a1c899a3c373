//! The SQL statement splitter (top-level `;`, through strings, comments and dollar quotes) and what
//! `check` does next with each statement: parse it (Redshift's opaque statements too), take its
//! lineage; and the literal/identifier quoting of the `sql_literal`/`sql_identifier` filters.
//!
//! Input: byte 0 picks the dialect; the rest is the script (UTF-8).
#![no_main]

use cranium::sql::{self, Dialect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(script) = std::str::from_utf8(rest) else {
        return;
    };
    let dialect = Dialect::ALL[usize::from(sel) % Dialect::ALL.len()];
    match sql::split_statements(dialect, script) {
        Ok(stmts) => {
            for s in &stmts {
                assert_eq!(
                    script.get(s.byte_range.clone()),
                    Some(s.text.as_str()),
                    "a statement's text is its byte range of the script"
                );
                assert!(s.line >= 1 && s.col >= 1);
            }
        }
        Err(e) => {
            assert!(e.line >= 1 && e.col >= 1);
            let _ = e.to_string();
        }
    }
    match sql::analyze(dialect, script) {
        Ok((_, lineage)) => {
            let _ = format!("{lineage:?}");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let _ = sql::quote_literal(dialect, script);
    let _ = sql::quote_identifier(dialect, script);
});
