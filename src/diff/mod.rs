//! Compare a production MySQL table with its warehouse copy (PostgreSQL), row by row in effect, while
//! moving as little as possible.
//!
//! 1. **Counts** (and the key's bounds) on both sides.
//! 2. **Checksums of key segments.** A segment's checksum is its row count and the sum of the CRC-32s
//!    of its rows' canonical text ([`canon`]). MySQL computes them inside the server, one range query
//!    per segment, several connections at once, so its rows never cross the network. PostgreSQL 15
//!    has no CRC-32, so its rows are streamed (`COPY … TO STDOUT`, the cheapest way out of the server)
//!    over several connections and hashed here, into fine segments.
//! 3. **Bisection.** A coarse segment whose checksums differ is split into its fine segments
//!    (one grouped query on MySQL; PostgreSQL's fine sums are already known).
//! 4. **Rows.** The rows of the fine segments that still differ are fetched from both sides, with
//!    each column's canonical value, and compared column by column (floats within the tolerance,
//!    JSON by value).
//!
//! A single integer key is segmented by ranges (index range scans on both sides). Any other key
//! (strings, composite) is segmented by the CRC-32 of its canonical text: MySQL's case-insensitive
//! collations order strings differently from PostgreSQL, so key ranges would not hold the same rows.
//! Keys are matched byte for byte: `'a'` and `'A'` are different keys. Duplicate keys on the
//! warehouse side (which enforces no primary key) change a segment's count and are reported.

pub mod canon;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value as J;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::mysql::MyClient;
use crate::db::postgres::PgClient;
use crate::db::{DbError, DbKind};
use canon::Canon;

/// One side of a comparison.
#[derive(Debug, Clone)]
pub struct Side {
    pub url: String,
    /// `table` or `schema.table` (with `query`: only the name shown in messages).
    pub table: String,
    /// A SELECT to compare instead of the table.
    pub query: Option<String>,
    /// A filter (SQL expression in the side's dialect), e.g. rows changed before the interval end.
    pub filter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DiffSpec {
    /// The MySQL side.
    pub source: Side,
    /// The warehouse side: PostgreSQL, or Redshift (read through a cursor: it has no `COPY … TO
    /// STDOUT`).
    pub target: Side,
    pub target_kind: DbKind,
    pub key: Vec<String>,
    /// Columns to compare (default: every column both sides have).
    pub columns: Option<Vec<String>>,
    pub exclude: Vec<String>,
    /// Relative tolerance for FLOAT/DOUBLE columns (0: exact).
    pub float_tolerance: f64,
    /// Connections per side.
    pub threads: usize,
    pub connect_timeout: Duration,
    /// Rows per fine segment (the unit fetched row by row; default [`FINE_ROWS`]).
    pub segment_rows: Option<u64>,
}

/// One column's two values in a differing row.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Values {
    pub source: Option<String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DifferingRow {
    pub key: Vec<String>,
    pub columns: BTreeMap<String, Values>,
}

/// What a comparison found.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub equal: bool,
    /// Rows covered by the comparison (the larger side).
    pub rows_compared: u64,
    pub source_rows: u64,
    pub target_rows: u64,
    pub columns: Vec<String>,
    pub key: Vec<String>,
    /// Keys in the source that the target lacks.
    pub missing_in_target: Vec<Vec<String>>,
    /// Keys only in the target.
    pub only_in_target: Vec<Vec<String>>,
    pub differing: Vec<DifferingRow>,
    /// Keys the target holds more than once.
    pub duplicate_keys_in_target: Vec<Vec<String>>,
    /// Target rows whose key is NULL (the warehouse enforces no primary key).
    pub null_keys_in_target: u64,
    /// Rows that differ in any way (the sum of the four lists).
    pub differences: u64,
    pub segments: u64,
    pub segments_differing: u64,
    pub seconds: f64,
    /// Bytes read from each side (result sets; the source's checksums are a few bytes a segment).
    pub source_bytes: u64,
    pub target_bytes: u64,
    /// How the key was segmented: `ranges` or `hash`.
    pub strategy: String,
    /// How many streams read the target at once (one per connection over key ranges when an index
    /// serves them, else one scan).
    pub target_streams: u64,
}

impl Report {
    /// A few lines for a log or an alert.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} differences: {} rows in the source, {} in the target; {} missing in the target, {} only in the target, {} differing, {} duplicate keys in the target{} ({:.1} s, {} + {} bytes read)",
            self.differences,
            self.source_rows,
            self.target_rows,
            self.missing_in_target.len(),
            self.only_in_target.len(),
            self.differing.len(),
            self.duplicate_keys_in_target.len(),
            if self.null_keys_in_target > 0 {
                format!(", {} NULL keys in the target", self.null_keys_in_target)
            } else {
                String::new()
            },
            self.seconds,
            self.source_bytes,
            self.target_bytes,
        );
        for d in self.differing.iter().take(5) {
            let cols = d
                .columns
                .iter()
                .map(|(c, v)| {
                    format!(
                        "{c}: {} → {}",
                        v.source.as_deref().unwrap_or("NULL"),
                        v.target.as_deref().unwrap_or("NULL")
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            s.push_str(&format!("\n  key {}: {cols}", d.key.join(",")));
        }
        for k in self.missing_in_target.iter().take(5) {
            s.push_str(&format!("\n  key {}: missing in the target", k.join(",")));
        }
        for k in self.only_in_target.iter().take(5) {
            s.push_str(&format!("\n  key {}: only in the target", k.join(",")));
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("{0}")]
    Config(String),
    #[error("{side} ({target}): {error}")]
    Db {
        side: &'static str,
        target: String,
        error: DbError,
    },
}

/// Rows per fine segment (the unit fetched row by row), and fine segments per coarse one (the unit
/// MySQL checksums first).
pub const FINE_ROWS: u64 = 2_000;
const FAN: u64 = 64;
const SENTINEL: u128 = 1 << 32;

/// A compared column.
#[derive(Debug, Clone)]
struct Col {
    name: String,
    canon: Canon,
}

/// How keys map to fine segments.
#[derive(Debug, Clone)]
enum Segments {
    /// `(key - lo) / step` for a single integer key.
    Ranges { lo: i128, step: i128, fine: u64 },
    /// `crc32(key text) % buckets`.
    Hash { buckets: u64 },
}

impl Segments {
    fn fine_count(&self) -> u64 {
        match self {
            Segments::Ranges { fine, .. } => *fine,
            Segments::Hash { buckets } => *buckets,
        }
    }
}

fn quote_my(name: &str) -> String {
    name.split('.')
        .map(|p| format!("`{}`", p.replace('`', "``")))
        .collect::<Vec<_>>()
        .join(".")
}

fn quote_pg(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

fn trim_query(q: &str) -> &str {
    q.trim().trim_end_matches(';')
}

/// ` WHERE (filter) AND extra`, or nothing.
fn where_clause(filter: Option<&str>, extra: &str) -> String {
    let mut conds = Vec::new();
    if let Some(f) = filter {
        conds.push(format!("({f})"));
    }
    if !extra.is_empty() {
        conds.push(extra.to_string());
    }
    if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    }
}

/// `(k >= a AND k < b) OR …` over the fine segments `fines` of an integer key `k` (quoted).
fn ranges_filter(k: &str, lo: i128, step: i128, fines: &[u64]) -> String {
    let ors: Vec<String> = fines
        .iter()
        .map(|f| {
            let a = lo + *f as i128 * step;
            format!("({k} >= {a} AND {k} < {})", a + step)
        })
        .collect();
    format!("({})", ors.join(" OR "))
}

fn text(v: Option<&J>) -> Option<String> {
    match v? {
        J::Null => None,
        J::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

struct Ctx<'a> {
    spec: &'a DiffSpec,
    cols: Vec<Col>,
    nkeys: usize,
    deadline: Option<Instant>,
    cancel: &'a CancellationToken,
    my_bytes: AtomicU64,
    pg_bytes: AtomicU64,
}

impl Ctx<'_> {
    fn my_err(&self, error: DbError) -> DiffError {
        DiffError::Db {
            side: "source",
            target: crate::db::redact_url(&self.spec.source.url),
            error,
        }
    }

    fn pg_err(&self, error: DbError) -> DiffError {
        DiffError::Db {
            side: "target",
            target: crate::db::redact_url(&self.spec.target.url),
            error,
        }
    }

    fn my_table(&self) -> String {
        match &self.spec.source.query {
            Some(q) => format!("({}) AS cranium_source", trim_query(q)),
            None => quote_my(&self.spec.source.table),
        }
    }

    fn pg_table(&self) -> String {
        match &self.spec.target.query {
            Some(q) => format!("({}) AS cranium_target", trim_query(q)),
            None => quote_pg(&self.spec.target.table),
        }
    }

    /// MySQL's row text expression.
    fn my_row(&self) -> String {
        let parts: Vec<String> = self
            .cols
            .iter()
            .map(|c| c.canon.mysql_row_part(&quote_my(&c.name)))
            .collect();
        format!("CONCAT_WS(',',{})", parts.join(","))
    }

    /// MySQL's key text expression (the key columns' row parts).
    fn my_key(&self) -> String {
        let parts: Vec<String> = self.cols[..self.nkeys]
            .iter()
            .map(|c| c.canon.mysql_row_part(&quote_my(&c.name)))
            .collect();
        format!("CONCAT_WS(',',{})", parts.join(","))
    }

    fn my_where(&self, extra: &str) -> String {
        where_clause(self.spec.source.filter.as_deref(), extra)
    }

    fn pg_where(&self, extra: &str) -> String {
        where_clause(self.spec.target.filter.as_deref(), extra)
    }

    fn pg_select(&self, extra: &str) -> String {
        let cols: Vec<String> = self.cols.iter().map(|c| quote_pg(&c.name)).collect();
        format!(
            "SELECT {} FROM {}{}",
            cols.join(", "),
            self.pg_table(),
            self.pg_where(extra)
        )
    }

    /// Stream the target's rows of `select` as COPY text lines: `COPY (…) TO STDOUT` on PostgreSQL,
    /// a cursor on Redshift (its text values written as COPY text lines). Returns the bytes read.
    async fn read_target(
        &self,
        c: &mut PgClient,
        select: &str,
        mut each: impl FnMut(&[u8]) + Send,
    ) -> Result<u64, DiffError> {
        let read = match self.spec.target_kind {
            DbKind::Redshift => {
                let mut line = Vec::with_capacity(256);
                c.cursor_rows(select, 10_000, self.deadline, self.cancel, |fields| {
                    line.clear();
                    for (i, f) in fields.iter().enumerate() {
                        if i > 0 {
                            line.push(b'\t');
                        }
                        crate::db::postgres::copy_escape(*f, &mut line);
                    }
                    each(&line);
                })
                .await
            }
            _ => {
                c.copy_out(
                    &format!("COPY ({select}) TO STDOUT"),
                    self.deadline,
                    self.cancel,
                    each,
                )
                .await
            }
        };
        read.map_err(|e| self.pg_err(e))
    }

    /// A PostgreSQL COPY line's row text (in `row`): the length of its key's part and its CRC-32.
    fn pg_hash(&self, line: &[u8], row: &mut Vec<u8>) -> (usize, u32) {
        copy_line_hash(self.cols.iter().map(|c| &c.canon), self.nkeys, line, row)
    }

    fn pg_values(&self, line: &[u8]) -> Vec<Option<String>> {
        copy_line_values(self.cols.iter().map(|c| &c.canon), line)
    }

    /// The fine segment of a PostgreSQL row (by its key text, or its integer key).
    fn fine_of(&self, seg: &Segments, line: &[u8], key_text: &[u8]) -> Option<u64> {
        match seg {
            Segments::Ranges { lo, step, fine } => copy_line_range(line, *lo, *step, *fine),
            Segments::Hash { buckets } => Some(u64::from(crc32fast::hash(key_text)) % buckets),
        }
    }
}

// The readers of a PostgreSQL COPY text line (what `COPY … TO STDOUT` writes, or a Redshift cursor's
// row written as such a line). Public (hidden) for the fuzz target `fuzz/fuzz_targets/copy_text.rs`:
// the line comes from the warehouse, so any bytes must give a value, never a panic.

/// A COPY line's row text (in `row`), its columns read by `canons`: the length of the key's part (the
/// first `nkeys` columns) and the CRC-32 of the text.
#[doc(hidden)]
pub fn copy_line_hash<'c>(
    canons: impl Iterator<Item = &'c Canon>,
    nkeys: usize,
    line: &[u8],
    row: &mut Vec<u8>,
) -> (usize, u32) {
    row.clear();
    let mut key = 0;
    for (i, (field, canon)) in line.split(|b| *b == b'\t').zip(canons).enumerate() {
        if i > 0 {
            row.push(b',');
        }
        let v = canon::copy_field(field);
        canon.pg_row_part(v.as_deref(), row);
        if i + 1 == nkeys {
            key = row.len();
        }
    }
    (key, crc32fast::hash(row))
}

/// A COPY line's values as shown and compared row by row (`None`: NULL).
#[doc(hidden)]
pub fn copy_line_values<'c>(
    canons: impl Iterator<Item = &'c Canon>,
    line: &[u8],
) -> Vec<Option<String>> {
    line.split(|b| *b == b'\t')
        .zip(canons)
        .map(|(field, canon)| canon::copy_field(field).map(|v| canon.pg_display(&v)))
        .collect()
}

/// The fine segment of a COPY line whose first field is an integer key: `(key - lo) / step` when it
/// is below `fine`.
#[doc(hidden)]
pub fn copy_line_range(line: &[u8], lo: i128, step: i128, fine: u64) -> Option<u64> {
    let first = line.split(|b| *b == b'\t').next()?;
    let k: i128 = std::str::from_utf8(first).ok()?.parse().ok()?;
    // Any text can come back from the warehouse: a key far outside i64 is in no segment.
    let f = k.checked_sub(lo)?.div_euclid(step);
    (0..fine as i128).contains(&f).then_some(f as u64)
}

/// Compare the two tables of `spec`.
pub async fn diff(
    spec: &DiffSpec,
    deadline: Option<Instant>,
    cancel: &CancellationToken,
) -> Result<Report, DiffError> {
    let started = std::time::Instant::now();
    let threads = spec.threads.clamp(1, 32);
    if spec.key.is_empty() {
        return Err(DiffError::Config("give at least one key column".into()));
    }
    if spec.target_kind == DbKind::Redshift && spec.target.query.is_some() {
        return Err(DiffError::Config(
            "a redshift target compares a table (a query side needs PostgreSQL)".into(),
        ));
    }
    // Connections: `threads` per side, each with the session the canonical forms need.
    let mut my = Vec::new();
    let mut pg = Vec::new();
    for _ in 0..threads {
        let my_err = |error| DiffError::Db {
            side: "source",
            target: crate::db::redact_url(&spec.source.url),
            error,
        };
        let pg_err = |error| DiffError::Db {
            side: "target",
            target: crate::db::redact_url(&spec.target.url),
            error,
        };
        let mut c = MyClient::connect(&spec.source.url, spec.connect_timeout)
            .await
            .map_err(my_err)?;
        c.statement(
            "SET SESSION sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', \
             net_write_timeout = 600, group_concat_max_len = 1048576",
            deadline,
            cancel,
        )
        .await
        .map_err(my_err)?;
        my.push(c);
        let mut p = PgClient::connect(spec.target_kind, &spec.target.url, spec.connect_timeout)
            .await
            .map_err(pg_err)?;
        p.statement(
            if spec.target_kind == DbKind::Redshift {
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1"
            } else {
                "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; SET extra_float_digits = 1; SET bytea_output = 'hex'"
            },
            false,
            deadline,
            cancel,
        )
        .await
        .map_err(pg_err)?;
        pg.push(p);
    }

    let mut cx = Ctx {
        spec,
        cols: Vec::new(),
        nkeys: spec.key.len(),
        deadline,
        cancel,
        my_bytes: AtomicU64::new(0),
        pg_bytes: AtomicU64::new(0),
    };
    cx.cols = columns(&cx, &mut my[0], &mut pg[0]).await?;
    snapshots(&cx, &mut my, &mut pg).await?;

    // 1. The plan: the key's bounds and how many rows to expect, on both sides at once. The
    // statistics size the segments (an exact COUNT(*) only for small tables and queries); the exact
    // counts come out of the segment checksums, so no side is scanned just to count it.
    let int_key = cx.nkeys == 1 && cx.cols[0].canon == Canon::Int;
    let (my_plan, pg_plan) = {
        let (m, p) = (&mut my[0], &mut pg[0]);
        tokio::join!(plan_source(&cx, m, int_key), plan_target(&cx, p, int_key))
    };
    let (my_plan, pg_plan) = (my_plan?, pg_plan?);
    let rows = my_plan.rows.max(pg_plan.rows).max(1);
    let fine_n = rows
        .div_ceil(spec.segment_rows.unwrap_or(FINE_ROWS).max(1))
        .max(1);
    let seg = if int_key {
        // The bounds of both sides.
        let lo = [my_plan.lo, pg_plan.lo]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0);
        let hi = [my_plan.hi, pg_plan.hi]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
            + 1;
        let step = ((hi - lo) / fine_n as i128).max(1);
        let fine = ((hi - lo) + step - 1) / step;
        Segments::Ranges {
            lo,
            step,
            fine: fine as u64,
        }
    } else {
        Segments::Hash {
            buckets: fine_n.min(1 << 20),
        }
    };

    // 2. Checksums: MySQL per coarse segment, in the server; PostgreSQL per fine segment, here.
    let fine_count = seg.fine_count();
    let coarse_count = fine_count.div_ceil(FAN);
    let (my_sums, pg_sums) = tokio::join!(
        my_checksums(&cx, &seg, &mut my, coarse_count),
        pg_checksums(&cx, &seg, &mut pg)
    );
    let (my_sums, (pg_sums, target_streams, unplaced)) = (my_sums?, pg_sums?);
    // The exact counts: every row falls in one segment (the target's rows without a key in none).
    let source_rows: u64 = my_sums.values().map(|(n, _)| n).sum();
    let null_keys = unplaced + pg_plan.null_keys;
    let target_rows: u64 = pg_sums.values().map(|(n, _)| n).sum::<u64>() + null_keys;

    // 3. Bisect the coarse segments that differ into fine ones.
    let mut suspect_fine: BTreeSet<u64> = BTreeSet::new();
    let coarse_pg = |c: u64| {
        let (a, b) = (c * FAN, ((c + 1) * FAN).min(fine_count));
        (a..b).fold((0u64, 0u128), |acc, f| {
            let (n, s) = pg_sums.get(&f).copied().unwrap_or((0, 0));
            (acc.0 + n, acc.1 + s)
        })
    };
    let mut differing_coarse = Vec::new();
    match &seg {
        Segments::Ranges { .. } => {
            for c in 0..coarse_count {
                let m = my_sums.get(&c).copied().unwrap_or((0, 0));
                if m != coarse_pg(c) {
                    differing_coarse.push(c);
                }
            }
            for c in &differing_coarse {
                let fine = my_fine_checksums(&cx, &seg, &mut my[0], *c).await?;
                let (a, b) = (c * FAN, ((c + 1) * FAN).min(fine_count));
                for f in a..b {
                    let m = fine.get(&f).copied().unwrap_or((0, 0));
                    let p = pg_sums.get(&f).copied().unwrap_or((0, 0));
                    if m != p {
                        suspect_fine.insert(f);
                    }
                }
            }
        }
        Segments::Hash { .. } => {
            // MySQL's sums are per bucket already.
            for f in 0..fine_count {
                let m = my_sums.get(&f).copied().unwrap_or((0, 0));
                let p = pg_sums.get(&f).copied().unwrap_or((0, 0));
                if m != p {
                    suspect_fine.insert(f);
                }
            }
        }
    }

    // 4. The rows of the fine segments that differ, compared column by column.
    let mut report = Report {
        rows_compared: source_rows.max(target_rows),
        source_rows,
        target_rows,
        columns: cx.cols.iter().map(|c| c.name.clone()).collect(),
        key: spec.key.clone(),
        segments: fine_count,
        target_streams,
        segments_differing: suspect_fine.len() as u64,
        strategy: match seg {
            Segments::Ranges { .. } => "ranges".into(),
            Segments::Hash { .. } => "hash".into(),
        },
        ..Report::default()
    };
    if !suspect_fine.is_empty() {
        let suspects: Vec<u64> = suspect_fine.into_iter().collect();
        let source = my_rows(&cx, &seg, &mut my[0], &suspects).await?;
        let target = pg_rows(&cx, &seg, &mut pg[0], &suspects).await?;
        compare_rows(&cx, source, target, &mut report);
    }
    report.null_keys_in_target = null_keys;
    report.differences = (report.missing_in_target.len()
        + report.only_in_target.len()
        + report.differing.len()
        + report.duplicate_keys_in_target.len()) as u64
        + null_keys;
    report.equal = report.differences == 0 && source_rows == target_rows;
    report.seconds = started.elapsed().as_secs_f64();
    report.source_bytes = cx.my_bytes.load(Ordering::Relaxed);
    report.target_bytes = cx.pg_bytes.load(Ordering::Relaxed);
    Ok(report)
}

/// Every connection reads from one snapshot per side: PostgreSQL's connections share one exported
/// snapshot (exactly the same rows); MySQL's each open a consistent snapshot, one right after the
/// other (MariaDB cannot share one), so a row committed in between is the only way for them to differ.
async fn snapshots(
    cx: &Ctx<'_>,
    my: &mut [MyClient],
    pg: &mut [PgClient],
) -> Result<(), DiffError> {
    let (deadline, cancel) = (cx.deadline, cx.cancel);
    let mut exported = None;
    for p in pg.iter_mut() {
        p.statement(
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            false,
            deadline,
            cancel,
        )
        .await
        .map_err(|e| cx.pg_err(e))?;
        match &exported {
            // Redshift's transactions are serializable; it cannot export a snapshot.
            None if cx.spec.target_kind == DbKind::Redshift => {}
            None => {
                let rows = p
                    .simple_rows("SELECT pg_export_snapshot()", deadline, cancel)
                    .await
                    .map_err(|e| cx.pg_err(e))?;
                exported = rows.first().and_then(|r| r.first().cloned()).flatten();
            }
            Some(id) => {
                p.statement(
                    &format!("SET TRANSACTION SNAPSHOT '{}'", id.replace('\'', "")),
                    true,
                    deadline,
                    cancel,
                )
                .await
                .map_err(|e| cx.pg_err(e))?;
            }
        }
    }
    for m in my.iter_mut() {
        m.statement(
            "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            deadline,
            cancel,
        )
        .await
        .map_err(|e| cx.my_err(e))?;
        m.statement(
            "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",
            deadline,
            cancel,
        )
        .await
        .map_err(|e| cx.my_err(e))?;
    }
    Ok(())
}

/// The compared columns (keys first), their canonical forms from the MySQL types.
async fn columns(
    cx: &Ctx<'_>,
    my: &mut MyClient,
    pg: &mut PgClient,
) -> Result<Vec<Col>, DiffError> {
    let spec = cx.spec;
    let (my_cols, json_cols) = match &spec.source.query {
        None => my_table_columns(cx, my).await?,
        Some(q) => (my_query_columns(cx, my, q).await?, Vec::new()),
    };
    if my_cols.is_empty() {
        return Err(DiffError::Config(format!(
            "source {} does not exist (or has no columns)",
            spec.source.table
        )));
    }
    let pg_cols = pg_columns(cx, pg).await?;
    if pg_cols.is_empty() {
        return Err(DiffError::Config(format!(
            "target {} does not exist (or has no columns)",
            spec.target.table
        )));
    }
    let lower = |s: &str| s.to_lowercase();
    let wanted = |name: &str| {
        let l = lower(name);
        let listed = match &spec.columns {
            Some(list) => list.iter().any(|c| lower(c) == l),
            None => true,
        };
        listed && !spec.exclude.iter().any(|c| lower(c) == l)
    };
    let mut keys = Vec::new();
    let mut rest = Vec::new();
    for r in &my_cols {
        let name = text(r.get("name")).unwrap_or_default();
        let Some(pg_name) = pg_cols.iter().find(|p| lower(p) == lower(&name)) else {
            if spec.key.iter().any(|k| lower(k) == lower(&name))
                || spec
                    .columns
                    .as_ref()
                    .is_some_and(|l| l.iter().any(|c| lower(c) == lower(&name)))
            {
                return Err(DiffError::Config(format!(
                    "column '{name}' is not a column of the target table {}",
                    spec.target.table
                )));
            }
            continue;
        };
        let canon = Canon::of_mysql(
            &text(r.get("dt")).unwrap_or_default(),
            &text(r.get("ct")).unwrap_or_default(),
            r.get("scale").and_then(|v| v.as_u64()).map(|v| v as u32),
            r.get("fsp").and_then(|v| v.as_u64()).map(|v| v as u32),
            text(r.get("cs")).as_deref(),
            json_cols.contains(&name),
            (spec.float_tolerance > 0.0).then_some(spec.float_tolerance),
        );
        let col = Col {
            name: pg_name.clone(),
            canon,
        };
        match spec.key.iter().position(|k| lower(k) == lower(&name)) {
            Some(i) => keys.push((i, col)),
            None if wanted(&name) => rest.push(col),
            None => {}
        }
    }
    if keys.len() != spec.key.len() {
        return Err(DiffError::Config(format!(
            "key column(s) {} not found in the source table {}",
            spec.key.join(", "),
            spec.source.table
        )));
    }
    keys.sort_by_key(|(i, _)| *i);
    Ok(keys.into_iter().map(|(_, c)| c).chain(rest).collect())
}

/// The source table's columns (name, dt, ct, scale, fsp, cs) and its JSON columns.
async fn my_table_columns(
    cx: &Ctx<'_>,
    my: &mut MyClient,
) -> Result<(Vec<serde_json::Map<String, J>>, Vec<String>), DiffError> {
    let source = &cx.spec.source.table;
    let (schema, table) = crate::db::mysql::schema_and_table(source);
    let cols = my
        .query(
            "SELECT COLUMN_NAME AS name, DATA_TYPE AS dt, COLUMN_TYPE AS ct, \
             CAST(NUMERIC_SCALE AS SIGNED) AS scale, CAST(DATETIME_PRECISION AS SIGNED) AS fsp, \
             CHARACTER_SET_NAME AS cs FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
            &[schema, table.into()],
            cx.deadline,
            cx.cancel,
        )
        .await
        .map_err(|e| cx.my_err(e))?;
    let json = my
        .json_columns(source, cx.deadline, cx.cancel)
        .await
        .map_err(|e| cx.my_err(e))?;
    Ok((cols, json))
}

/// The columns of a source query, from an empty temporary table made from it (JSON columns are
/// compared as text).
async fn my_query_columns(
    cx: &Ctx<'_>,
    my: &mut MyClient,
    q: &str,
) -> Result<Vec<serde_json::Map<String, J>>, DiffError> {
    let (deadline, cancel) = (cx.deadline, cx.cancel);
    let probe = format!(
        "CREATE TEMPORARY TABLE cranium_diff_probe AS SELECT * FROM ({}) AS q LIMIT 0",
        trim_query(q)
    );
    my.statement(
        "DROP TEMPORARY TABLE IF EXISTS cranium_diff_probe",
        deadline,
        cancel,
    )
    .await
    .map_err(|e| cx.my_err(e))?;
    my.statement(&probe, deadline, cancel)
        .await
        .map_err(|e| cx.my_err(e))?;
    let shown = my
        .query(
            "SHOW FULL COLUMNS FROM cranium_diff_probe",
            &[],
            deadline,
            cancel,
        )
        .await
        .map_err(|e| cx.my_err(e))?;
    my.statement("DROP TEMPORARY TABLE cranium_diff_probe", deadline, cancel)
        .await
        .map_err(|e| cx.my_err(e))?;
    Ok(shown
        .iter()
        .map(|r| {
            let ct = text(r.get("Type")).unwrap_or_default().to_lowercase();
            let dt = ct.split(['(', ' ']).next().unwrap_or_default().to_string();
            // `decimal(12,2)` → 2; `datetime(6)` → 6.
            let args: Vec<u64> = ct
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(a, _)| a.split(',').filter_map(|x| x.trim().parse().ok()).collect())
                .unwrap_or_default();
            let scale = if dt == "decimal" {
                args.get(1).copied()
            } else {
                None
            };
            let fsp = if matches!(dt.as_str(), "datetime" | "timestamp" | "time") {
                Some(args.first().copied().unwrap_or(0))
            } else {
                None
            };
            let cs = text(r.get("Collation")).and_then(|c| c.split('_').next().map(str::to_string));
            let mut m = serde_json::Map::new();
            m.insert("name".into(), r.get("Field").cloned().unwrap_or(J::Null));
            m.insert("dt".into(), dt.into());
            m.insert("ct".into(), ct.into());
            m.insert("scale".into(), scale.map_or(J::Null, J::from));
            m.insert("fsp".into(), fsp.map_or(J::Null, J::from));
            m.insert("cs".into(), cs.map_or(J::Null, J::from));
            m
        })
        .collect())
}

/// The target's column names (a table's, or a query's through a temporary view).
async fn pg_columns(cx: &Ctx<'_>, pg: &mut PgClient) -> Result<Vec<String>, DiffError> {
    let (deadline, cancel) = (cx.deadline, cx.cancel);
    let Some(q) = &cx.spec.target.query else {
        let cols = pg
            .columns(&cx.spec.target.table, deadline, cancel)
            .await
            .map_err(|e| cx.pg_err(e))?;
        return Ok(cols.into_iter().map(|(c, _)| c).collect());
    };
    pg.statement(
        &format!(
            "CREATE OR REPLACE TEMP VIEW cranium_diff_probe AS {}",
            trim_query(q)
        ),
        false,
        deadline,
        cancel,
    )
    .await
    .map_err(|e| cx.pg_err(e))?;
    let cols = pg
        .query(
            "SELECT column_name::text AS c FROM information_schema.columns \
             WHERE table_schema = pg_my_temp_schema()::regnamespace::text \
             AND table_name = 'cranium_diff_probe' ORDER BY ordinal_position",
            &[],
            deadline,
            cancel,
        )
        .await
        .map_err(|e| cx.pg_err(e))?
        .iter()
        .filter_map(|r| r.get("c").and_then(|c| c.as_str()).map(str::to_string))
        .collect();
    pg.statement(
        "DROP VIEW IF EXISTS cranium_diff_probe",
        false,
        deadline,
        cancel,
    )
    .await
    .map_err(|e| cx.pg_err(e))?;
    Ok(cols)
}

/// MySQL's checksum per coarse segment (ranges) or per bucket (hash), computed in the server.
async fn my_checksums(
    cx: &Ctx<'_>,
    seg: &Segments,
    clients: &mut [MyClient],
    coarse_count: u64,
) -> Result<HashMap<u64, (u64, u128)>, DiffError> {
    let sum = format!("SUM(IFNULL(CRC32({}),{SENTINEL}))", cx.my_row());
    match seg {
        Segments::Hash { buckets } => {
            let sql = format!(
                "SELECT CRC32({}) % {buckets} AS f, COUNT(*) AS n, CAST({sum} AS CHAR) AS s FROM {}{} GROUP BY f",
                cx.my_key(),
                cx.my_table(),
                cx.my_where("")
            );
            let rows = clients[0]
                .query(&sql, &[], cx.deadline, cx.cancel)
                .await
                .map_err(|e| cx.my_err(e))?;
            Ok(sums_of(&rows))
        }
        Segments::Ranges { lo, step, fine } => {
            let next = AtomicUsize::new(0);
            let k = quote_my(&cx.cols[0].name);
            let workers = clients.iter_mut().map(|c| {
                let (next, k, sum) = (&next, &k, &sum);
                async move {
                    let mut out = HashMap::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as u64;
                        if i >= coarse_count {
                            return Ok::<_, DiffError>(out);
                        }
                        let a = lo + (i * FAN) as i128 * step;
                        let b = lo + (((i + 1) * FAN).min(*fine)) as i128 * step;
                        let sql = format!(
                            "SELECT COUNT(*) AS n, CAST({sum} AS CHAR) AS s FROM {}{}",
                            cx.my_table(),
                            cx.my_where(&format!("{k} >= {a} AND {k} < {b}"))
                        );
                        let rows = c
                            .query(&sql, &[], cx.deadline, cx.cancel)
                            .await
                            .map_err(|e| cx.my_err(e))?;
                        cx.my_bytes.fetch_add(32, Ordering::Relaxed);
                        let s = rows
                            .first()
                            .and_then(|r| text(r.get("s")))
                            .and_then(|s| s.parse::<u128>().ok());
                        out.insert(i, (first_u64(&rows, "n"), s.unwrap_or(0)));
                    }
                }
            });
            let parts = futures::future::try_join_all(workers).await?;
            Ok(parts.into_iter().flatten().collect())
        }
    }
}

fn sums_of(rows: &[serde_json::Map<String, J>]) -> HashMap<u64, (u64, u128)> {
    rows.iter()
        .filter_map(|r| {
            let f = r.get("f").and_then(|v| v.as_u64())?;
            let n = r.get("n").and_then(|v| v.as_u64())?;
            let s = text(r.get("s")).and_then(|s| s.parse::<u128>().ok())?;
            Some((f, (n, s)))
        })
        .collect()
}

/// MySQL's checksums of the fine segments of one coarse segment (one grouped range query).
async fn my_fine_checksums(
    cx: &Ctx<'_>,
    seg: &Segments,
    c: &mut MyClient,
    coarse: u64,
) -> Result<HashMap<u64, (u64, u128)>, DiffError> {
    let Segments::Ranges { lo, step, fine } = seg else {
        return Ok(HashMap::new());
    };
    let k = quote_my(&cx.cols[0].name);
    let a = lo + (coarse * FAN) as i128 * step;
    let b = lo + (((coarse + 1) * FAN).min(*fine)) as i128 * step;
    let sql = format!(
        "SELECT CAST((CAST({k} AS DECIMAL(40,0)) - {lo}) DIV {step} AS UNSIGNED) AS f, COUNT(*) AS n, \
         CAST(SUM(IFNULL(CRC32({}),{SENTINEL})) AS CHAR) AS s FROM {}{} GROUP BY f",
        cx.my_row(),
        cx.my_table(),
        cx.my_where(&format!("{k} >= {a} AND {k} < {b}"))
    );
    let rows = c
        .query(&sql, &[], cx.deadline, cx.cancel)
        .await
        .map_err(|e| cx.my_err(e))?;
    cx.my_bytes
        .fetch_add(rows.len() as u64 * 40, Ordering::Relaxed);
    Ok(sums_of(&rows))
}

/// PostgreSQL's checksums per fine segment: its rows streamed (several key ranges at once for an
/// integer key) and hashed here.
async fn pg_checksums(
    cx: &Ctx<'_>,
    seg: &Segments,
    clients: &mut [PgClient],
) -> Result<(HashMap<u64, (u64, u128)>, u64, u64), DiffError> {
    let ranges: Vec<String> = match seg {
        // One stream per connection, each over its own key range, when an index serves the ranges;
        // otherwise every range would be a full scan, so one scan streams it all.
        Segments::Ranges { .. } if !pg_key_indexed(cx, &mut clients[0]).await? => {
            vec![String::new()]
        }
        Segments::Ranges { lo, step, fine } => {
            let k = quote_pg(&cx.cols[0].name);
            let n = clients.len() as u64;
            let per = fine.div_ceil(n).max(1);
            (0..n)
                .filter(|i| i * per < *fine)
                .map(|i| {
                    let a = lo + (i * per) as i128 * step;
                    let b = lo + (((i + 1) * per).min(*fine)) as i128 * step;
                    format!("{k} >= {a} AND {k} < {b}")
                })
                .collect()
        }
        Segments::Hash { .. } => vec![String::new()],
    };
    let streams = ranges.len() as u64;
    let workers = clients.iter_mut().zip(ranges).map(|(c, range)| async move {
        let mut sums: HashMap<u64, (u64, u128)> = HashMap::new();
        let mut row = Vec::with_capacity(256);
        let mut unplaced = 0u64;
        let bytes = cx
            .read_target(c, &cx.pg_select(&range), |line| {
                let (key, crc) = cx.pg_hash(line, &mut row);
                match cx.fine_of(seg, line, &row[..key]) {
                    Some(f) => {
                        let e = sums.entry(f).or_insert((0, 0));
                        e.0 += 1;
                        e.1 += u128::from(crc);
                    }
                    None => unplaced += 1, // a NULL key
                }
            })
            .await?;
        cx.pg_bytes.fetch_add(bytes, Ordering::Relaxed);
        Ok::<_, DiffError>((sums, unplaced))
    });
    let parts = futures::future::try_join_all(workers).await?;
    let mut all: HashMap<u64, (u64, u128)> = HashMap::new();
    let mut unplaced = 0;
    for (part, u) in parts {
        unplaced += u;
        for (f, (n, s)) in part {
            let e = all.entry(f).or_insert((0, 0));
            e.0 += n;
            e.1 += s;
        }
    }
    Ok((all, streams, unplaced))
}

/// What a side's plan needs: the integer key's bounds, a row estimate (exact when counted), and (on
/// the target, read by key ranges) its rows with a NULL key.
#[derive(Debug, Default)]
struct Plan {
    lo: Option<i128>,
    hi: Option<i128>,
    rows: u64,
    null_keys: u64,
}

/// Below this many rows by the statistics, a side is counted exactly (cheap, and fresh tables'
/// statistics say little).
const COUNT_BELOW: u64 = 100_000;

/// Column `name` of the first row, as a count.
fn first_u64(rows: &[serde_json::Map<String, J>], name: &str) -> u64 {
    rows.first()
        .and_then(|r| r.get(name))
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

fn int_of(v: Option<String>) -> Option<i128> {
    v.and_then(|s| s.parse().ok())
}

async fn plan_source(cx: &Ctx<'_>, my: &mut MyClient, int_key: bool) -> Result<Plan, DiffError> {
    let (deadline, cancel) = (cx.deadline, cx.cancel);
    let mut plan = Plan::default();
    let k = quote_my(&cx.cols[0].name);
    if int_key {
        let rows = my
            .query(
                &format!(
                    "SELECT CAST(MIN({k}) AS CHAR) AS lo, CAST(MAX({k}) AS CHAR) AS hi FROM {}{}",
                    cx.my_table(),
                    cx.my_where("")
                ),
                &[],
                deadline,
                cancel,
            )
            .await
            .map_err(|e| cx.my_err(e))?;
        plan.lo = int_of(text(rows.first().and_then(|r| r.get("lo"))));
        plan.hi = int_of(text(rows.first().and_then(|r| r.get("hi"))));
    }
    if cx.spec.source.query.is_none() {
        let (schema, table) = crate::db::mysql::schema_and_table(&cx.spec.source.table);
        let rows = my
            .query(
                "SELECT CAST(TABLE_ROWS AS SIGNED) AS n FROM information_schema.TABLES \
                 WHERE TABLE_SCHEMA = COALESCE(?, DATABASE()) AND TABLE_NAME = ?",
                &[schema, table.into()],
                deadline,
                cancel,
            )
            .await
            .map_err(|e| cx.my_err(e))?;
        plan.rows = first_u64(&rows, "n");
    }
    if plan.rows < COUNT_BELOW {
        let rows = my
            .query(
                &format!(
                    "SELECT COUNT(*) AS n FROM {}{}",
                    cx.my_table(),
                    cx.my_where("")
                ),
                &[],
                deadline,
                cancel,
            )
            .await
            .map_err(|e| cx.my_err(e))?;
        plan.rows = first_u64(&rows, "n");
    }
    Ok(plan)
}

async fn plan_target(cx: &Ctx<'_>, pg: &mut PgClient, int_key: bool) -> Result<Plan, DiffError> {
    let (deadline, cancel) = (cx.deadline, cx.cancel);
    let mut plan = Plan::default();
    let k = quote_pg(&cx.cols[0].name);
    let first = |rows: Vec<Vec<Option<String>>>, i: usize| {
        rows.first().and_then(|r| r.get(i).cloned()).flatten()
    };
    if int_key {
        let rows = pg
            .simple_rows(
                &format!(
                    "SELECT min({k})::text, max({k})::text FROM {}{}",
                    cx.pg_table(),
                    cx.pg_where("")
                ),
                deadline,
                cancel,
            )
            .await
            .map_err(|e| cx.pg_err(e))?;
        plan.lo = int_of(first(rows.clone(), 0));
        plan.hi = int_of(first(rows, 1));
        // Rows without a key fall in no key range; an index finds them at once (without one, the
        // single scan counts them).
        if pg_key_indexed(cx, pg).await? {
            let rows = pg
                .simple_rows(
                    &format!(
                        "SELECT count(*)::text FROM {}{}",
                        cx.pg_table(),
                        cx.pg_where(&format!("{k} IS NULL"))
                    ),
                    deadline,
                    cancel,
                )
                .await
                .map_err(|e| cx.pg_err(e))?;
            plan.null_keys = first(rows, 0).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    if cx.spec.target.query.is_none() && cx.spec.target_kind == DbKind::Postgres {
        let rows = pg
            .query(
                "SELECT greatest(reltuples, 0)::bigint AS n FROM pg_class WHERE oid = to_regclass($1)",
                &[J::from(cx.pg_table())],
                deadline,
                cancel,
            )
            .await
            .map_err(|e| cx.pg_err(e))?;
        plan.rows = first_u64(&rows, "n");
    }
    if plan.rows < COUNT_BELOW {
        let rows = pg
            .simple_rows(
                &format!(
                    "SELECT count(*)::text FROM {}{}",
                    cx.pg_table(),
                    cx.pg_where("")
                ),
                deadline,
                cancel,
            )
            .await
            .map_err(|e| cx.pg_err(e))?;
        plan.rows = first(rows, 0).and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    Ok(plan)
}

/// Whether the target table has an index whose first column is the key (a query has none).
async fn pg_key_indexed(cx: &Ctx<'_>, c: &mut PgClient) -> Result<bool, DiffError> {
    if cx.spec.target.query.is_some() || cx.spec.target_kind == DbKind::Redshift {
        return Ok(false); // Redshift has no indexes
    }
    let rows = c
        .query(
            "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a \
               ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
             WHERE i.indrelid = to_regclass($1) AND a.attname = $2) AS indexed",
            &[J::from(cx.pg_table()), J::from(cx.cols[0].name.clone())],
            cx.deadline,
            cx.cancel,
        )
        .await
        .map_err(|e| cx.pg_err(e))?;
    Ok(rows
        .first()
        .and_then(|r| r.get("indexed"))
        .and_then(|v| v.as_bool())
        .unwrap_or(false))
}

/// The SQL condition selecting fine segments `fines` on MySQL.
fn my_segment_filter(cx: &Ctx<'_>, seg: &Segments, fines: &[u64]) -> String {
    match seg {
        Segments::Ranges { lo, step, .. } => {
            ranges_filter(&quote_my(&cx.cols[0].name), *lo, *step, fines)
        }
        Segments::Hash { buckets } => {
            let list: Vec<String> = fines.iter().map(u64::to_string).collect();
            format!("CRC32({}) % {buckets} IN ({})", cx.my_key(), list.join(","))
        }
    }
}

type Rows = Vec<(Vec<String>, Vec<Option<String>>)>;

/// The source rows of fine segments, with each column's canonical value.
async fn my_rows(
    cx: &Ctx<'_>,
    seg: &Segments,
    c: &mut MyClient,
    fines: &[u64],
) -> Result<Rows, DiffError> {
    let exprs: Vec<String> = cx
        .cols
        .iter()
        .enumerate()
        .map(|(i, col)| {
            format!(
                "CONCAT({}) AS c{i}",
                col.canon.mysql_display(&quote_my(&col.name))
            )
        })
        .collect();
    let mut out = Vec::new();
    for chunk in fines.chunks(200) {
        let sql = format!(
            "SELECT {} FROM {}{}",
            exprs.join(", "),
            cx.my_table(),
            cx.my_where(&my_segment_filter(cx, seg, chunk))
        );
        let rows = c
            .query(&sql, &[], cx.deadline, cx.cancel)
            .await
            .map_err(|e| cx.my_err(e))?;
        for r in rows {
            let values: Vec<Option<String>> = (0..cx.cols.len())
                .map(|i| text(r.get(&format!("c{i}"))))
                .collect();
            let bytes: usize = values.iter().flatten().map(|v| v.len() + 1).sum();
            cx.my_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            let key = values[..cx.nkeys]
                .iter()
                .map(|v| v.clone().unwrap_or_default())
                .collect();
            out.push((key, values));
        }
    }
    Ok(out)
}

/// The target rows of fine segments (by key ranges, or all rows filtered by bucket here).
async fn pg_rows(
    cx: &Ctx<'_>,
    seg: &Segments,
    c: &mut PgClient,
    fines: &[u64],
) -> Result<Rows, DiffError> {
    let wanted: BTreeSet<u64> = fines.iter().copied().collect();
    let mut out = Vec::new();
    let chunks: Vec<Vec<u64>> = match seg {
        Segments::Ranges { .. } => fines.chunks(200).map(<[u64]>::to_vec).collect(),
        Segments::Hash { .. } => vec![Vec::new()],
    };
    for chunk in chunks {
        let filter = match seg {
            Segments::Ranges { lo, step, .. } => {
                ranges_filter(&quote_pg(&cx.cols[0].name), *lo, *step, &chunk)
            }
            Segments::Hash { .. } => String::new(),
        };
        let mut row = Vec::new();
        let bytes = cx
            .read_target(c, &cx.pg_select(&filter), |line| {
                if let Segments::Hash { .. } = seg {
                    let (key, _) = cx.pg_hash(line, &mut row);
                    match cx.fine_of(seg, line, &row[..key]) {
                        Some(f) if wanted.contains(&f) => {}
                        _ => return,
                    }
                }
                let values = cx.pg_values(line);
                let key = values[..cx.nkeys]
                    .iter()
                    .map(|v| v.clone().unwrap_or_default())
                    .collect();
                out.push((key, values));
            })
            .await?;
        cx.pg_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    Ok(out)
}

fn compare_rows(cx: &Ctx<'_>, source: Rows, target: Rows, report: &mut Report) {
    let mut src: BTreeMap<Vec<String>, Vec<Option<String>>> = BTreeMap::new();
    for (k, v) in source {
        src.insert(k, v);
    }
    let mut tgt: BTreeMap<Vec<String>, Vec<Option<String>>> = BTreeMap::new();
    let mut dups = BTreeSet::new();
    for (k, v) in target {
        if tgt.contains_key(&k) {
            dups.insert(k.clone());
        }
        tgt.insert(k, v);
    }
    for (k, sv) in &src {
        match tgt.get(k) {
            None => report.missing_in_target.push(k.clone()),
            Some(tv) => {
                let mut columns = BTreeMap::new();
                for (i, col) in cx.cols.iter().enumerate().skip(cx.nkeys) {
                    let (a, b) = (&sv[i], &tv[i]);
                    let same = match (a, b) {
                        (None, None) => true,
                        (Some(a), Some(b)) => col.canon.same(a, b, cx.spec.float_tolerance),
                        _ => false,
                    };
                    if !same {
                        columns.insert(
                            col.name.clone(),
                            Values {
                                source: a.clone(),
                                target: b.clone(),
                            },
                        );
                    }
                }
                if !columns.is_empty() {
                    report.differing.push(DifferingRow {
                        key: k.clone(),
                        columns,
                    });
                }
            }
        }
    }
    for k in tgt.keys() {
        if !src.contains_key(k) {
            report.only_in_target.push(k.clone());
        }
    }
    report.duplicate_keys_in_target = dups.into_iter().collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_sums_are_read_without_overflow() {
        // MySQL's SUM of CRC32s is DECIMAL: far past 64 bits for a big enough segment.
        let mut row = serde_json::Map::new();
        row.insert("f".into(), J::from(3u64));
        row.insert("n".into(), J::from(9_000_000_000u64));
        row.insert("s".into(), J::from("36893488147419103232123"));
        let sums = sums_of(&[row]);
        assert_eq!(
            sums.get(&3),
            Some(&(9_000_000_000, 36_893_488_147_419_103_232_123u128))
        );
    }

    #[test]
    fn a_warehouse_key_far_outside_the_ranges_is_in_no_segment() {
        // (key - lo) overflowed i128 for a 39-digit key (seen writing the fuzz target copy_text).
        let lo = i128::from(i64::MIN);
        assert_eq!(
            copy_line_range(b"170141183460469231731687303715884105727\tx", lo, 1, 8),
            None
        );
        assert_eq!(
            copy_line_range(b"-9223372036854775807\tx", lo, 1, 8),
            Some(1)
        );
        assert_eq!(copy_line_range(b"12x\tx", 0, 1, 8), None);
    }

    #[test]
    fn identifiers_are_quoted_per_dialect() {
        assert_eq!(quote_my("db.we`ird"), "`db`.`we``ird`");
        assert_eq!(quote_pg("analytics.Users"), "\"analytics\".\"Users\"");
    }
}
