//! The COPY-text reader of `diff`: warehouse rows as `COPY … TO STDOUT` lines, unescaped field by
//! field and brought to the canonical text of their MySQL column type (the row text that is hashed,
//! the values that are shown and compared, the integer key's segment).
//!
//! Input: byte 0 the number of columns and key columns, then one byte per column picking its type
//! (and its scale, precision or tolerance); the rest is COPY text, one row per line.
#![no_main]

use cranium::diff::canon::Canon;
use cranium::diff::{copy_line_hash, copy_line_range, copy_line_values};
use libfuzzer_sys::fuzz_target;

fn canon(b: u8) -> Canon {
    let p = u32::from(b >> 4);
    match b & 15 {
        0 => Canon::Int,
        1 => Canon::Decimal { scale: p },
        2 => Canon::Double,
        3 => Canon::Float,
        4 => Canon::Tolerant {
            bits: i32::from(b >> 4) * 4 + 1,
            float: b & 16 != 0,
        },
        5 => Canon::DateTime { fsp: p },
        6 => Canon::Date,
        7 => Canon::Time { fsp: p },
        8 => Canon::Bool,
        9 => Canon::Char,
        10 => Canon::Text,
        11 => Canon::TextConvert,
        12 => Canon::Binary,
        13 => Canon::Json,
        _ => Canon::Tolerant {
            bits: 60,
            float: false,
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let ncols = usize::from(sel & 7) + 1;
    let nkeys = usize::from((sel >> 3) & 3) + 1;
    if rest.len() < ncols {
        return;
    }
    let (types, text) = rest.split_at(ncols);
    let canons: Vec<Canon> = types.iter().map(|b| canon(*b)).collect();
    // Key bounds as `diff` derives them from MySQL's integer keys.
    let ranges: [(i128, i128, u64); 4] = [
        (0, 1, 64),
        (-5, 7, 9),
        (i128::from(i64::MIN), 1 << 60, 32),
        (i128::from(u64::MAX), 1, 1),
    ];
    let mut row = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        let (key, _crc) = copy_line_hash(canons.iter(), nkeys, line, &mut row);
        assert!(key <= row.len());
        let values = copy_line_values(canons.iter(), line);
        assert!(values.len() <= canons.len());
        for (v, c) in values.iter().zip(&canons) {
            if let Some(v) = v {
                let _ = c.same(v, "1.5E0", 1e-9);
            }
        }
        let (lo, step, fine) = ranges[i % ranges.len()];
        if let Some(f) = copy_line_range(line, lo, step, fine) {
            assert!(f < fine);
        }
    }
});
