//! The JSON-lines decoder of `s3_to_redshift` loads: an object's bytes (plain, gzip or zstd, as
//! stored, or compressed here so the decompressor's output is the fuzzer's), line by line, into
//! COPY rows in the text or the binary format, every cast and column type, counting bad lines.
//!
//! Input: byte 0 picks the format, the COPY format and how many bad lines are allowed; the rest is
//! the object.
#![no_main]

use std::io::Write;

use cranium::db::pg_binary::BinType;
use cranium::lake::Format;
use cranium::steps::s3_to_redshift::copy_rows_for_fuzzing;
use libfuzzer_sys::fuzz_target;

type Column = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<BinType>,
);

/// The columns of a load whose target columns all have a binary type.
const BINARY: &[Column] = &[
    ("id", "$.id", None, Some(BinType::Int8)),
    ("n2", "$.n", None, Some(BinType::Int2)),
    ("n4", "n", None, Some(BinType::Int4)),
    ("r", "$.x", None, Some(BinType::Float4)),
    ("x", "$.x", None, Some(BinType::Float8)),
    ("ok", "$.ok", None, Some(BinType::Bool)),
    ("s", "$.s", None, Some(BinType::Text)),
    ("t", "$.time", None, Some(BinType::Timestamp)),
    ("tz", "$.time", None, Some(BinType::Timestamptz)),
    (
        "secs",
        "$.ts",
        Some("epochsecs"),
        Some(BinType::Timestamptz),
    ),
    (
        "ms",
        "$.ts",
        Some("epochmillisecs"),
        Some(BinType::Timestamp),
    ),
    ("d", "$.day", None, Some(BinType::Date)),
    ("j", "$.properties", None, Some(BinType::Json)),
    ("jb", "$.properties.a.b", None, Some(BinType::Jsonb)),
];

/// A load in the text format (some column has another type, or a cast the binary writer leaves to
/// the server).
const TEXT: &[Column] = &[
    ("id", "$.id", None, None),
    ("s", "$.s", None, None),
    ("tz", "$.time", Some("timestamptz"), None),
    ("secs", "$.ts", Some("epochsecs"), None),
    ("ms", "$.ts", Some("epochmillisecs"), None),
    ("p", "$.properties", None, None),
    ("deep", "$.properties.a.b", None, None),
    ("ok", "ok", None, None),
];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, object)) = data.split_first() else {
        return;
    };
    let binary = sel & 1 == 1;
    let allowed = u64::from((sel >> 1) & 3);
    let compressed;
    let (format, bytes) = match (sel >> 3) & 7 {
        0 | 1 => (Format::Jsonl, object),
        2 => (Format::JsonlGz, object),
        3 => (Format::JsonlZst, object),
        4 | 5 => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let _ = enc.write_all(object);
            compressed = enc.finish().unwrap_or_default();
            (Format::JsonlGz, &compressed[..])
        }
        _ => {
            compressed = zstd::encode_all(object, 1).unwrap_or_default();
            (Format::JsonlZst, &compressed[..])
        }
    };
    let columns = if binary { BINARY } else { TEXT };
    match copy_rows_for_fuzzing(format, binary, bytes, columns, allowed) {
        Ok((rows, stream)) => {
            // The object's plain text is the input unless the input was the compressed bytes.
            if !matches!((sel >> 3) & 7, 2 | 3) {
                let lines = object.iter().filter(|b| **b == b'\n').count() as u64 + 1;
                assert!(rows <= lines, "{rows} rows from at most {lines} lines");
            }
            let _ = stream;
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
