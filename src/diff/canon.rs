//! The canonical text of a value, the same on both sides of a comparison.
//!
//! The canonical form is what MariaDB prints cheaply (so the source side can hash inside the server);
//! the warehouse side (PostgreSQL `COPY … TO STDOUT` text) is brought to the same bytes in Rust. Per
//! MySQL type:
//!
//! | MySQL | MariaDB expression | PostgreSQL text → canonical |
//! |---|---|---|
//! | integers, YEAR | `c` | as is |
//! | DECIMAL(p,s) | `c` (exactly s decimals) | padded to s decimals; extra digits dropped only when zero |
//! | DOUBLE | `c` | parsed, printed as MariaDB prints a double (shortest digits) |
//! | FLOAT | `CAST(c AS DOUBLE)` | parsed, rounded to f32, printed as a double |
//! | float with a tolerance | quantised on a power-of-two grid finer than the tolerance | the same grid |
//! | DATETIME(n), TIMESTAMP(n) | `c` (session time zone UTC) | `YYYY-MM-DD HH:MM:SS` + n digits (more only when not zero) |
//! | DATE, TIME(n) | `c` | as DATETIME |
//! | TINYINT(1) | `c<>0` | `t`/`f` (or a number) → `1`/`0` |
//! | CHAR(n) | `c` (MariaDB strips the padding) | trailing spaces removed |
//! | strings, ENUM, SET | `c` | as is |
//! | binary strings, BLOB | `c` (bytes) | `\x…` decoded to bytes |
//! | JSON | `JSON_NORMALIZE(c)` | keys sorted, no spaces, numbers as `1.5E0` |
//!
//! A row's text joins its columns' texts with `,`; strings, binary and JSON carry their byte length
//! (`5:hello`), and NULL is the empty field, so no two rows share a text: `('x,','y')` is `2:x,,1:y`,
//! `('x',',y')` is `1:x,2:,y`, NULL is ``, the empty string `0:`, and the string `<null>` is `6:<null>`.
//! The row hash is the IEEE CRC-32 of that text (MariaDB's `CRC32()`, `crc32fast` here); a segment's
//! checksum is the row count and the sum of the hashes (MariaDB sums into DECIMAL, never overflowing;
//! a row whose text MariaDB cannot build counts as 2^32).

/// How a column is brought to its canonical text (decided by the MySQL column's type).
#[derive(Debug, Clone, PartialEq)]
pub enum Canon {
    Int,
    Decimal {
        scale: u32,
    },
    Double,
    Float,
    /// A float compared within a relative tolerance: hashed on a grid of 2^-bits.
    Tolerant {
        bits: i32,
        float: bool,
    },
    DateTime {
        fsp: u32,
    },
    Date,
    Time {
        fsp: u32,
    },
    Bool,
    Char,
    Text,
    /// A text column in another character set than utf8mb4 (converted by the server).
    TextConvert,
    Binary,
    Json,
}

impl Canon {
    /// From `information_schema.COLUMNS` (DATA_TYPE, COLUMN_TYPE, NUMERIC_SCALE, DATETIME_PRECISION,
    /// CHARACTER_SET_NAME) and whether MariaDB checks the column with `json_valid`.
    pub fn of_mysql(
        data_type: &str,
        column_type: &str,
        scale: Option<u32>,
        fsp: Option<u32>,
        charset: Option<&str>,
        is_json: bool,
        float_tolerance: Option<f64>,
    ) -> Canon {
        let dt = data_type.to_ascii_lowercase();
        let ct = column_type.to_ascii_lowercase();
        if is_json || dt == "json" {
            return Canon::Json;
        }
        match dt.as_str() {
            "tinyint" if ct.starts_with("tinyint(1)") => Canon::Bool,
            "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "year" => {
                Canon::Int
            }
            "bit" => Canon::Int,
            "decimal" | "numeric" => Canon::Decimal {
                scale: scale.unwrap_or(0),
            },
            "float" | "double" | "real" => {
                let float = dt == "float";
                match float_tolerance {
                    Some(t) if t > 0.0 => Canon::Tolerant {
                        bits: (-t.log2()).ceil().max(1.0) as i32,
                        float,
                    },
                    _ if float => Canon::Float,
                    _ => Canon::Double,
                }
            }
            "datetime" | "timestamp" => Canon::DateTime {
                fsp: fsp.unwrap_or(0),
            },
            "date" => Canon::Date,
            "time" => Canon::Time {
                fsp: fsp.unwrap_or(0),
            },
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                Canon::Binary
            }
            "char" => Canon::Char,
            _ => match charset {
                Some(cs) if !cs.starts_with("utf8") && cs != "binary" => Canon::TextConvert,
                _ => Canon::Text,
            },
        }
    }

    /// Strings, binary and JSON carry their byte length in the row text.
    fn prefixed(&self) -> bool {
        matches!(
            self,
            Canon::Char | Canon::Text | Canon::TextConvert | Canon::Binary | Canon::Json
        )
    }

    /// The MariaDB expression of the column's canonical value (NULL stays NULL), `c` quoted.
    pub fn mysql_value(&self, c: &str) -> String {
        match self {
            Canon::Float => format!("CAST({c} AS DOUBLE)"),
            Canon::Bool => format!("({c}<>0)"),
            Canon::TextConvert => format!("CONVERT({c} USING utf8mb4)"),
            Canon::Json => format!("JSON_NORMALIZE({c})"),
            Canon::Tolerant { bits, float } => {
                let v = if *float {
                    format!("CAST({c} AS DOUBLE)")
                } else {
                    c.to_string()
                };
                format!(
                    "IF({v}=0,'0',CONCAT(IF({v}<0,'-',''),FLOOR(LOG2(ABS({v}))),'p',FLOOR(ABS({v})*POW(2,{bits}-FLOOR(LOG2(ABS({v})))))))"
                )
            }
            _ => c.to_string(),
        }
    }

    /// The column's part of the row text (never NULL).
    pub fn mysql_row_part(&self, c: &str) -> String {
        let v = self.mysql_value(c);
        if self.prefixed() {
            format!("IFNULL(CONCAT(LENGTH({v}),':',{v}),'')")
        } else {
            format!("IFNULL({v},'')")
        }
    }

    /// The value to show and compare row by row: as [`Canon::mysql_value`], but binary as hex and
    /// tolerant floats as their plain double text.
    pub fn mysql_display(&self, c: &str) -> String {
        match self {
            Canon::Binary => format!("HEX({c})"),
            Canon::Tolerant { float: true, .. } => format!("CAST({c} AS DOUBLE)"),
            Canon::Tolerant { float: false, .. } => c.to_string(),
            _ => self.mysql_value(c),
        }
    }

    /// The canonical bytes of a PostgreSQL value given as COPY text (unescaped); `None` for NULL.
    /// `for_hash` quantises tolerant floats (the row text); otherwise they stay plain (shown and
    /// compared within the tolerance).
    pub fn from_pg(&self, text: &[u8], for_hash: bool) -> Vec<u8> {
        let s = String::from_utf8_lossy(text);
        match self {
            Canon::Int => s.into_owned().into_bytes(),
            Canon::Decimal { scale } => decimal_to_scale(&s, *scale).into_bytes(),
            Canon::Double => match s.parse::<f64>() {
                Ok(v) => mariadb_double_text(v).into_bytes(),
                Err(_) => s.into_owned().into_bytes(),
            },
            Canon::Float => match s.parse::<f64>() {
                Ok(v) => mariadb_double_text(f64::from(v as f32)).into_bytes(),
                Err(_) => s.into_owned().into_bytes(),
            },
            Canon::Tolerant { bits, float } => match s.parse::<f64>() {
                Ok(v) => {
                    let v = if *float { f64::from(v as f32) } else { v };
                    if for_hash {
                        quantise(v, *bits).into_bytes()
                    } else {
                        mariadb_double_text(v).into_bytes()
                    }
                }
                Err(_) => s.into_owned().into_bytes(),
            },
            Canon::DateTime { fsp } => {
                // timestamptz prints its offset (`+00` in a UTC session).
                let s = s.trim_end_matches("+00");
                match s.split_once('.') {
                    Some((whole, frac)) => format!("{whole}{}", fraction(frac, *fsp)).into_bytes(),
                    None => format!("{s}{}", fraction("", *fsp)).into_bytes(),
                }
            }
            Canon::Time { fsp } => match s.split_once('.') {
                Some((whole, frac)) => format!("{whole}{}", fraction(frac, *fsp)).into_bytes(),
                None => format!("{s}{}", fraction("", *fsp)).into_bytes(),
            },
            Canon::Date => s.into_owned().into_bytes(),
            Canon::Bool => match s.as_ref() {
                "t" | "true" => b"1".to_vec(),
                "f" | "false" => b"0".to_vec(),
                other => match other.parse::<f64>() {
                    Ok(v) => if v != 0.0 { b"1" } else { b"0" }.to_vec(),
                    Err(_) => other.as_bytes().to_vec(),
                },
            },
            Canon::Char => s.trim_end_matches(' ').as_bytes().to_vec(),
            Canon::Text | Canon::TextConvert => text.to_vec(),
            Canon::Binary => match s.strip_prefix("\\x") {
                Some(hex) => hex_decode(hex).unwrap_or_else(|| text.to_vec()),
                None => text.to_vec(),
            },
            Canon::Json => match serde_json::from_slice::<serde_json::Value>(text) {
                Ok(v) => {
                    let mut out = Vec::new();
                    json_normalize(&v, &mut out);
                    out
                }
                Err(_) => text.to_vec(),
            },
        }
    }

    /// A PostgreSQL value as shown and compared row by row (binary as upper-case hex).
    pub fn pg_display(&self, text: &[u8]) -> String {
        let bytes = self.from_pg(text, false);
        match self {
            Canon::Binary => bytes.iter().map(|b| format!("{b:02X}")).collect(),
            _ => String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    /// Append the column's part of the row text for a PostgreSQL value (`None`: NULL). The common
    /// types are written straight from the text; the rest through [`Canon::from_pg`].
    pub fn pg_row_part(&self, value: Option<&[u8]>, out: &mut Vec<u8>) {
        let Some(v) = value else { return };
        match self {
            Canon::Int | Canon::Date => out.extend_from_slice(v),
            Canon::Text | Canon::TextConvert => {
                push_len(v.len(), out);
                out.extend_from_slice(v);
            }
            Canon::Char => {
                let end = v.iter().rposition(|b| *b != b' ').map_or(0, |i| i + 1);
                push_len(end, out);
                out.extend_from_slice(&v[..end]);
            }
            Canon::Bool if v == b"t" => out.push(b'1'),
            Canon::Bool if v == b"f" => out.push(b'0'),
            Canon::Decimal { scale }
                if v.iter()
                    .position(|b| *b == b'.')
                    .map_or(0, |p| v.len() - p - 1)
                    == *scale as usize =>
            {
                out.extend_from_slice(v)
            }
            // At least `YYYY-MM-DD HH:MM:SS` once the offset is off; anything shorter is not a
            // timestamp PostgreSQL prints, and goes the slow way (and cannot match).
            Canon::DateTime { fsp } if v.strip_suffix(b"+00").unwrap_or(v).len() >= 19 => {
                let v = v.strip_suffix(b"+00").unwrap_or(v);
                let (whole, frac) = v.split_at(19);
                let frac = frac.strip_prefix(b".").unwrap_or(frac);
                out.extend_from_slice(whole);
                let n = (*fsp).min(6) as usize;
                if frac.len() > n && frac[n..].iter().any(|b| *b != b'0') {
                    out.push(b'.');
                    out.extend_from_slice(frac);
                    out.extend(std::iter::repeat_n(b'0', 6usize.saturating_sub(frac.len())));
                } else if n > 0 {
                    out.push(b'.');
                    let keep = frac.len().min(n);
                    out.extend_from_slice(&frac[..keep]);
                    out.extend(std::iter::repeat_n(b'0', n - keep));
                }
            }
            _ => {
                let bytes = self.from_pg(v, true);
                if self.prefixed() {
                    push_len(bytes.len(), out);
                }
                out.extend_from_slice(&bytes);
            }
        }
    }

    /// Whether two shown values are the same value (floats within `tolerance`; JSON by value).
    pub fn same(&self, a: &str, b: &str, tolerance: f64) -> bool {
        if a == b {
            return true;
        }
        match self {
            Canon::Tolerant { .. } => match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => {
                    let scale = x.abs().max(y.abs());
                    (x - y).abs() <= tolerance * scale
                }
                _ => false,
            },
            Canon::Json => {
                match (
                    serde_json::from_str::<serde_json::Value>(a),
                    serde_json::from_str::<serde_json::Value>(b),
                ) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

fn push_len(n: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    let _ = write!(out, "{n}:");
}

/// `frac` (the digits after the point) as MariaDB prints a value of `fsp` digits; more digits are
/// kept when they are not zero, so a value finer than the source's precision cannot match.
fn fraction(frac: &str, fsp: u32) -> String {
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        // Not digits (so not a time PostgreSQL prints): kept as written, it cannot match.
        return format!(".{frac}");
    }
    let mut d = frac.to_string();
    while d.len() < 6 {
        d.push('0');
    }
    let n = fsp.min(6) as usize;
    if d[n..].bytes().any(|b| b != b'0') {
        format!(".{d}")
    } else if n > 0 {
        format!(".{}", &d[..n])
    } else {
        String::new()
    }
}

/// A decimal's text with exactly `scale` digits after the point (zeros added or, only when zero,
/// removed).
pub fn decimal_to_scale(s: &str, scale: u32) -> String {
    if s.parse::<f64>().map(|v| !v.is_finite()).unwrap_or(true) {
        return s.to_string(); // NaN, Infinity, or not a number: cannot match
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let scale = scale as usize;
    let mut frac = frac.to_string();
    while frac.len() > scale && frac.ends_with('0') {
        frac.pop();
    }
    while frac.len() < scale {
        frac.push('0');
    }
    let int = if int == "-0" && frac.bytes().all(|b| b == b'0') {
        "0"
    } else {
        int
    };
    if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    }
}

/// A double as MariaDB prints it: the shortest digits that read back, in plain notation when the
/// decimal exponent lies between -14 and 15, else `d.ddde±x`.
pub fn mariadb_double_text(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return v.to_string();
    }
    let s = format!("{:e}", v.abs());
    let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
    let digits: String = m.chars().filter(|c| *c != '.').collect();
    let n = digits.len() as i32;
    let decpt = e.parse::<i32>().unwrap_or(0) + 1;
    let body = if decpt >= -14 && (decpt <= 15 || n > decpt) {
        if decpt <= 0 {
            format!("0.{}{}", "0".repeat((-decpt) as usize), digits)
        } else if decpt < n {
            format!(
                "{}.{}",
                &digits[..decpt as usize],
                &digits[decpt as usize..]
            )
        } else {
            format!("{}{}", digits, "0".repeat((decpt - n) as usize))
        }
    } else if n > 1 {
        format!("{}.{}e{}", &digits[..1], &digits[1..], decpt - 1)
    } else {
        format!("{}e{}", digits, decpt - 1)
    };
    if v < 0.0 {
        format!("-{body}")
    } else {
        body
    }
}

/// The grid cell of `v` with `bits` binary digits (as the MariaDB expression computes it).
fn quantise(v: f64, bits: i32) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let e = (v.abs().ln() / std::f64::consts::LN_2).floor();
    let m = (v.abs() * 2f64.powi(bits - e as i32)).floor();
    format!(
        "{}{}p{}",
        if v < 0.0 { "-" } else { "" },
        e as i64,
        m as i64
    )
}

fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    // By bytes: the text may hold any character, and only hex digits make a byte.
    let nibble = |b: u8| (b as char).to_digit(16);
    hex.as_bytes()
        .chunks(2)
        .map(|p| Some((nibble(p[0])? * 16 + nibble(p[1])?) as u8))
        .collect()
}

/// JSON as MariaDB's `JSON_NORMALIZE` writes it: keys sorted by bytes, no spaces, numbers as
/// `[-]d.ddd…E<exp>`.
pub fn json_normalize(v: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value as J;
    match v {
        J::Null => out.extend_from_slice(b"null"),
        J::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        J::Number(n) => out.extend_from_slice(json_number(n).as_bytes()),
        J::String(s) => {
            let _ = serde_json::to_writer(&mut *out, s);
        }
        J::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_normalize(x, out);
            }
            out.push(b']');
        }
        J::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, k);
                out.push(b':');
                if let Some(x) = o.get(k) {
                    json_normalize(x, out);
                }
            }
            out.push(b'}');
        }
    }
}

fn json_number(n: &serde_json::Number) -> String {
    let (neg, digits, exp) = if let Some(u) = n.as_u64() {
        let d = u.to_string();
        let e = d.len() as i64 - 1;
        (false, d, e)
    } else if let Some(i) = n.as_i64() {
        let d = i.unsigned_abs().to_string();
        let e = d.len() as i64 - 1;
        (i < 0, d, e)
    } else {
        let f = n.as_f64().unwrap_or(0.0);
        if f == 0.0 {
            return "0.0E0".into();
        }
        let s = format!("{:e}", f.abs());
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        (
            f < 0.0,
            m.chars().filter(|c| *c != '.').collect(),
            e.parse().unwrap_or(0),
        )
    };
    let digits = digits.trim_end_matches('0');
    if digits.is_empty() {
        return "0.0E0".into();
    }
    let rest = if digits.len() > 1 { &digits[1..] } else { "0" };
    format!(
        "{}{}.{}E{}",
        if neg { "-" } else { "" },
        &digits[..1],
        rest,
        exp
    )
}

/// One field of PostgreSQL's COPY text format, unescaped; `None` for `\N`.
pub fn copy_field(raw: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if raw == b"\\N" {
        return None;
    }
    if !raw.contains(&b'\\') {
        return Some(std::borrow::Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            out.push(match raw[i + 1] {
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 8,
                b'f' => 12,
                b'v' => 11,
                other => other,
            });
            i += 2;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    Some(std::borrow::Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_print_as_mariadb_prints_them() {
        for (v, want) in [
            (0.30000000000000004, "0.30000000000000004"),
            (1e15, "1e15"),
            (1e14, "100000000000000"),
            (1.234567890123456e15, "1.234567890123456e15"),
            (1234567890123456.8, "1234567890123456.8"),
            (0.0000000000000015, "0.0000000000000015"),
            (9.99e-16, "9.99e-16"),
            (1e300, "1e300"),
            (-2.550690257394217e-23, "-2.550690257394217e-23"),
            (-0.0, "0"),
            (472245.25, "472245.25"),
        ] {
            assert_eq!(mariadb_double_text(v), want, "{v}");
        }
    }

    #[test]
    fn decimals_take_the_source_scale_and_keep_real_differences() {
        assert_eq!(decimal_to_scale("1.5", 2), "1.50");
        assert_eq!(decimal_to_scale("-1.5000", 2), "-1.50");
        assert_eq!(decimal_to_scale("0.0000", 2), "0.00");
        assert_eq!(decimal_to_scale("7", 0), "7");
        assert_eq!(decimal_to_scale("7.000", 0), "7");
        assert_eq!(decimal_to_scale("1.505", 2), "1.505");
        assert_eq!(decimal_to_scale("NaN", 2), "NaN");
    }

    #[test]
    fn times_take_the_source_precision() {
        let dt = Canon::DateTime { fsp: 0 };
        assert_eq!(
            dt.from_pg(b"2026-03-01 12:00:00+00", true),
            b"2026-03-01 12:00:00"
        );
        assert_eq!(
            dt.from_pg(b"2026-03-01 12:00:00.5", true),
            b"2026-03-01 12:00:00.500000"
        );
        let dt3 = Canon::DateTime { fsp: 3 };
        assert_eq!(
            dt3.from_pg(b"2026-03-01 12:00:00.12", true),
            b"2026-03-01 12:00:00.120"
        );
        assert_eq!(
            dt3.from_pg(b"2026-03-01 12:00:00", true),
            b"2026-03-01 12:00:00.000"
        );
    }

    #[test]
    fn the_fast_row_parts_equal_the_general_rule() {
        let cases: Vec<(Canon, &[u8])> = vec![
            (Canon::Int, b"-42"),
            (Canon::Text, "Zoë 🎉 ".as_bytes()),
            (Canon::Char, b"ab   "),
            (Canon::Char, b"     "),
            (Canon::Bool, b"t"),
            (Canon::Bool, b"f"),
            (Canon::Decimal { scale: 2 }, b"-1.50"),
            (Canon::Decimal { scale: 2 }, b"1.5"),
            (Canon::DateTime { fsp: 0 }, b"2026-03-01 12:00:00+00"),
            (Canon::DateTime { fsp: 0 }, b"2026-03-01 12:00:00.5+00"),
            (Canon::DateTime { fsp: 3 }, b"2026-03-01 12:00:00.12"),
            (Canon::DateTime { fsp: 6 }, b"2026-03-01 12:00:00"),
            (Canon::DateTime { fsp: 3 }, b"2026-03-01 12:00:00.1234"),
        ];
        for (c, v) in cases {
            let mut fast = Vec::new();
            c.pg_row_part(Some(v), &mut fast);
            let general = c.from_pg(v, true);
            let mut want = Vec::new();
            if c.prefixed() {
                push_len(general.len(), &mut want);
            }
            want.extend_from_slice(&general);
            assert_eq!(
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&want),
                "{c:?} {}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn row_parts_read_one_way_only() {
        let mut a = Vec::new();
        Canon::Text.pg_row_part(Some(b"x,"), &mut a);
        a.push(b',');
        Canon::Text.pg_row_part(Some(b"y"), &mut a);
        let mut b = Vec::new();
        Canon::Text.pg_row_part(Some(b"x"), &mut b);
        b.push(b',');
        Canon::Text.pg_row_part(Some(b",y"), &mut b);
        assert_ne!(a, b);
        let (mut null, mut empty, mut word) = (Vec::new(), Vec::new(), Vec::new());
        Canon::Text.pg_row_part(None, &mut null);
        Canon::Text.pg_row_part(Some(b""), &mut empty);
        Canon::Text.pg_row_part(Some(b"<null>"), &mut word);
        assert_eq!(null, b"");
        assert_eq!(empty, b"0:");
        assert_eq!(word, b"6:<null>");
    }

    #[test]
    fn json_is_normalised_as_mariadb_does() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b": 1, "a": [2.0, 1e2, 1.50, -0.001], "é": "x\ny"}"#)
                .expect("json");
        let mut out = Vec::new();
        json_normalize(&v, &mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            r#"{"a":[2.0E0,1.0E2,1.5E0,-1.0E-3],"b":1.0E0,"é":"x\ny"}"#
        );
    }

    #[test]
    fn tolerant_floats_hash_on_a_grid_and_compare_within_the_tolerance() {
        let c = Canon::of_mysql("double", "double", None, None, None, false, Some(1e-6));
        assert_eq!(
            c,
            Canon::Tolerant {
                bits: 20,
                float: false
            }
        );
        assert_ne!(c.from_pg(b"1.0", true), c.from_pg(b"1.00001", true));
        assert!(c.same("1.0", "1.0000001", 1e-6));
        assert!(!c.same("1.0", "1.00001", 1e-6));
    }

    #[test]
    fn copy_escape_and_copy_field_round_trip() {
        for v in [Some("a\tb\\c\nd\re"), Some(""), None, Some("\\N")] {
            let mut out = Vec::new();
            crate::db::postgres::copy_escape(v, &mut out);
            assert_eq!(copy_field(&out).as_deref(), v.map(str::as_bytes), "{v:?}");
        }
    }

    // Found by the fuzz target `copy_text` (fuzz/fuzz_targets/copy_text.rs): warehouse text that is
    // not what PostgreSQL prints for the column's type is kept as it is (and cannot match), never a
    // panic.
    #[test]
    fn a_short_timestamp_with_an_offset_is_kept_as_written() {
        // 19 bytes with `+00`, 16 without (it panicked: "mid > len").
        let mut out = Vec::new();
        Canon::DateTime { fsp: 0 }.pg_row_part(Some(b"2026-03-01 12:00+00"), &mut out);
        assert_eq!(out, b"2026-03-01 12:00");
        out.clear();
        Canon::DateTime { fsp: 3 }.pg_row_part(Some(b"2026-03-01 12:00:00.5+00"), &mut out);
        assert_eq!(out, b"2026-03-01 12:00:00.500");
    }

    #[test]
    fn a_fraction_that_is_not_digits_is_kept_as_written() {
        // It panicked: "byte index 6 is not a char boundary".
        assert_eq!(
            Canon::Time { fsp: 6 }.from_pg("12:00:00.0000é".as_bytes(), true),
            "12:00:00.0000é".as_bytes()
        );
        assert_eq!(
            Canon::DateTime { fsp: 1 }.pg_display(b"2026-03-01 12:00:00.5\xff"),
            "2026-03-01 12:00:00.5\u{fffd}"
        );
        assert_eq!(
            Canon::DateTime { fsp: 2 }.pg_display(b"2026-03-01 12:00:00.\xe9"),
            "2026-03-01 12:00:00.\u{fffd}"
        );
        assert_eq!(
            Canon::Time { fsp: 2 }.pg_display(b"12:00:00.5"),
            "12:00:00.50"
        );
    }

    #[test]
    fn hex_with_other_characters_is_kept_as_bytes() {
        assert_eq!(
            Canon::Binary.from_pg("\\xaé0".as_bytes(), true),
            "\\xaé0".as_bytes()
        );
        assert_eq!(Canon::Binary.from_pg(b"\\x+f", true), b"\\x+f");
        assert_eq!(Canon::Binary.from_pg(b"\\x00fF", true), [0x00, 0xff]);
    }

    #[test]
    fn copy_fields_unescape() {
        assert_eq!(copy_field(b"\\N"), None);
        assert_eq!(copy_field(b"a\\tb\\\\c").as_deref(), Some(&b"a\tb\\c"[..]));
        assert_eq!(
            Canon::Binary.from_pg(copy_field(b"\\\\x00ff").as_deref().unwrap_or(b""), true),
            vec![0u8, 255]
        );
    }
}
