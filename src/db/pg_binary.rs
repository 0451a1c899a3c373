//! PostgreSQL's binary `COPY` format, written from JSON values.
//!
//! Binary COPY spares the server the text parsing of every field (timestamps most of all), so a load
//! whose target columns all have a type below streams in this format; any other column type makes the
//! load use the text format. Values convert as the text format would read them: numbers from JSON
//! numbers or numeric strings, booleans from `true`/`false` (or `t`/`f`, `1`/`0`), timestamps from
//! ISO 8601 (`2026-03-01T12:00:00.5Z`, a space instead of `T`, an offset or none: a `timestamp`
//! column ignores the offset as PostgreSQL does, a `timestamptz` column reads a time without one as
//! UTC, the session's zone during a load), JSON columns from any JSON value (a string holding JSON
//! text is that text).

use serde_json::Value as J;

/// A column type the binary writer handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Bool,
    Text,
    Timestamp,
    Timestamptz,
    Date,
    Json,
    Jsonb,
}

impl BinType {
    /// From `information_schema.columns.data_type`.
    pub fn of(data_type: &str) -> Option<BinType> {
        Some(match data_type {
            "smallint" => BinType::Int2,
            "integer" => BinType::Int4,
            "bigint" => BinType::Int8,
            "real" => BinType::Float4,
            "double precision" => BinType::Float8,
            "boolean" => BinType::Bool,
            "text" | "character varying" => BinType::Text,
            "timestamp without time zone" => BinType::Timestamp,
            "timestamp with time zone" => BinType::Timestamptz,
            "date" => BinType::Date,
            "json" => BinType::Json,
            "jsonb" => BinType::Jsonb,
            _ => return None,
        })
    }
}

/// The start of a binary COPY stream: signature, flags, header extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of a binary COPY stream.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// Microseconds from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Start a row of `fields` fields.
pub fn row_start(fields: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&fields.to_be_bytes());
}

/// One field: `v` (null or missing: a NULL) as type `ty`; `cast` `epochsecs`/`epochmillisecs` reads
/// a number as a time.
pub fn write_value(
    ty: BinType,
    v: &J,
    cast: Option<&str>,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if v.is_null() {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    match ty {
        BinType::Int2 => {
            let n =
                i16::try_from(int(v)?).map_err(|_| format!("{v} is out of range for smallint"))?;
            field(out, &n.to_be_bytes());
        }
        BinType::Int4 => {
            let n =
                i32::try_from(int(v)?).map_err(|_| format!("{v} is out of range for integer"))?;
            field(out, &n.to_be_bytes());
        }
        BinType::Int8 => field(out, &int(v)?.to_be_bytes()),
        BinType::Float4 => field(out, &(float(v)? as f32).to_be_bytes()),
        BinType::Float8 => field(out, &float(v)?.to_be_bytes()),
        BinType::Bool => {
            let b = match v {
                J::Bool(b) => *b,
                J::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
                    n.as_i64() == Some(1)
                }
                J::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "t" | "true" | "yes" | "on" | "1" | "y" => true,
                    "f" | "false" | "no" | "off" | "0" | "n" => false,
                    _ => return Err(format!("{v} is not a boolean")),
                },
                _ => return Err(format!("{v} is not a boolean")),
            };
            field(out, &[u8::from(b)]);
        }
        BinType::Text => match v {
            J::String(s) => {
                if s.contains('\0') {
                    return Err("text cannot contain the character NUL".into());
                }
                field(out, s.as_bytes())
            }
            other => field(out, other.to_string().as_bytes()),
        },
        BinType::Timestamp | BinType::Timestamptz => {
            let micros = match (v, cast) {
                (J::Number(n), Some(c @ ("epochsecs" | "epochmillisecs"))) => {
                    let x = n.as_f64().ok_or_else(|| format!("{n} is not a number"))?;
                    let us = if c == "epochsecs" { x * 1e6 } else { x * 1e3 };
                    us.round() as i64 - PG_EPOCH_MICROS
                }
                (J::String(s), _) => timestamp_micros(s, ty == BinType::Timestamptz)
                    .ok_or_else(|| format!("'{s}' is not an ISO 8601 time"))?,
                _ => return Err(format!("{v} is not a time")),
            };
            field(out, &micros.to_be_bytes());
        }
        BinType::Date => {
            let J::String(s) = v else {
                return Err(format!("{v} is not a date"));
            };
            let (y, m, d) =
                date_parts(s.as_bytes()).ok_or_else(|| format!("'{s}' is not a date"))?;
            let days = days_from_civil(y, m, d) - PG_EPOCH_DAYS;
            field(out, &(days as i32).to_be_bytes());
        }
        BinType::Json | BinType::Jsonb => {
            let text = match v {
                J::String(s) => {
                    serde_json::from_str::<serde::de::IgnoredAny>(s)
                        .map_err(|e| format!("not valid JSON: {e}"))?;
                    s.clone()
                }
                other => other.to_string(),
            };
            if ty == BinType::Jsonb {
                out.extend_from_slice(&(text.len() as i32 + 1).to_be_bytes());
                out.push(1);
                out.extend_from_slice(text.as_bytes());
            } else {
                field(out, text.as_bytes());
            }
        }
    }
    Ok(())
}

fn int(v: &J) -> Result<i64, String> {
    match v {
        J::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| format!("{n} is not an integer in range")),
        J::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an integer")),
        J::Bool(b) => Ok(i64::from(*b)),
        other => Err(format!("{other} is not an integer")),
    }
}

fn float(v: &J) -> Result<f64, String> {
    match v {
        J::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a number")),
        J::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "nan" => Ok(f64::NAN),
            "infinity" | "inf" => Ok(f64::INFINITY),
            "-infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            t => t.parse().map_err(|_| format!("'{s}' is not a number")),
        },
        other => Err(format!("{other} is not a number")),
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
}

fn date_parts(b: &[u8]) -> Option<(i64, i64, i64)> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    (1..=12).contains(&m).then_some(())?;
    (1..=days[(m - 1) as usize])
        .contains(&d)
        .then_some((y, m, d))
}

/// Days from 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD[( |T)HH:MM[:SS[.ffffff]]][Z|±HH[[:]MM]]` → microseconds since 2000-01-01 (UTC for a
/// `timestamptz`, the wall time for a `timestamp`, whose offset is ignored as PostgreSQL does).
fn timestamp_micros(s: &str, with_zone: bool) -> Option<i64> {
    let b = s.trim().as_bytes();
    let (y, m, d) = date_parts(b.get(..10)?)?;
    let mut micros = (days_from_civil(y, m, d) - PG_EPOCH_DAYS) * 86_400_000_000;
    let mut rest = &b[10..];
    if !rest.is_empty() {
        if rest[0] != b'T' && rest[0] != b' ' {
            return None;
        }
        rest = &rest[1..];
        let hh = digits(rest.get(..2)?)?;
        if rest.get(2) != Some(&b':') {
            return None;
        }
        let mm = digits(rest.get(3..5)?)?;
        rest = &rest[5..];
        let mut ss = 0;
        let mut frac = 0;
        if rest.first() == Some(&b':') {
            ss = digits(rest.get(1..3)?)?;
            rest = &rest[3..];
            if rest.first() == Some(&b'.') {
                let n = rest[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                if n == 0 {
                    return None;
                }
                let mut f = rest[1..1 + n.min(6)].to_vec();
                // Rounded to microseconds as PostgreSQL does.
                let round_up = n > 6 && rest[7] >= b'5';
                f.resize(6, b'0');
                frac = digits(&f)? + i64::from(round_up);
                rest = &rest[1 + n..];
            }
        }
        if hh > 24 || mm > 59 || ss > 60 {
            return None;
        }
        micros += ((hh * 60 + mm) * 60 + ss) * 1_000_000 + frac;
        // The zone.
        match rest {
            [] => {}
            [b'Z'] | [b'z'] => {}
            [sign @ (b'+' | b'-'), zone @ ..] => {
                let zone: Vec<u8> = zone.iter().copied().filter(|c| *c != b':').collect();
                let (zh, zm) = match zone.len() {
                    2 => (digits(&zone)?, 0),
                    4 => (digits(&zone[..2])?, digits(&zone[2..])?),
                    _ => return None,
                };
                if with_zone {
                    let offset = (zh * 60 + zm) * 60_000_000;
                    micros += if *sign == b'+' { -offset } else { offset };
                }
            }
            _ => return None,
        }
    }
    Some(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(ty: BinType, v: J) -> Vec<u8> {
        let mut out = Vec::new();
        write_value(ty, &v, None, &mut out).expect("encodes");
        out
    }

    #[test]
    fn times_count_from_2000_and_follow_postgres_zone_rules() {
        assert_eq!(timestamp_micros("2000-01-01T00:00:00", false), Some(0));
        assert_eq!(
            timestamp_micros("2000-01-01 00:00:01.5", false),
            Some(1_500_000)
        );
        assert_eq!(
            timestamp_micros("1999-12-31T23:59:59Z", true),
            Some(-1_000_000)
        );
        // timestamptz applies the offset; timestamp ignores it.
        assert_eq!(timestamp_micros("2000-01-01T01:00:00+01:00", true), Some(0));
        assert_eq!(
            timestamp_micros("2000-01-01T01:00:00+01", false),
            Some(3_600_000_000)
        );
        assert_eq!(
            timestamp_micros("2000-01-01T00:00:00.0000005", false),
            Some(1)
        );
        assert_eq!(timestamp_micros("2000-01-01", false), Some(0));
        assert_eq!(timestamp_micros("2026-02-30T00:00:00", false), None);
        assert_eq!(timestamp_micros("yesterday", false), None);
        assert_eq!(
            timestamp_micros("2026-03-01T12:34:56.123456", false),
            Some(
                (chrono::NaiveDate::from_ymd_opt(2026, 3, 1)
                    .and_then(|d| d.and_hms_micro_opt(12, 34, 56, 123_456))
                    .map(|t| t.and_utc().timestamp_micros())
                    .unwrap_or_default())
                    - PG_EPOCH_MICROS
            )
        );
    }

    #[test]
    fn fields_carry_their_length_and_null_is_minus_one() {
        assert_eq!(enc(BinType::Int4, J::Null), (-1i32).to_be_bytes().to_vec());
        assert_eq!(enc(BinType::Int2, serde_json::json!(7)), [0, 0, 0, 2, 0, 7]);
        assert_eq!(enc(BinType::Int8, serde_json::json!("7")).len(), 12);
        assert_eq!(enc(BinType::Bool, serde_json::json!(true)), [0, 0, 0, 1, 1]);
        assert_eq!(
            enc(BinType::Jsonb, serde_json::json!({"a": 1})),
            b"\0\0\0\x08\x01{\"a\":1}"
        );
        assert_eq!(
            enc(BinType::Date, serde_json::json!("2000-01-02")),
            [0, 0, 0, 4, 0, 0, 0, 1]
        );
        let mut out = Vec::new();
        assert!(write_value(BinType::Int2, &serde_json::json!(70000), None, &mut out).is_err());
        assert!(write_value(BinType::Json, &serde_json::json!("{bad"), None, &mut out).is_err());
    }
}
