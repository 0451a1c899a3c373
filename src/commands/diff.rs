//! `cranium diff`: compare a MySQL table with its PostgreSQL copy without a job.

use std::io::Write;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::diff::{diff as compare, DiffSpec, Side};

/// Exit status when the tables differ; an error is 2 (`EXIT_USAGE`'s value, as for bad arguments).
pub const EXIT_DIFFERENT: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    Postgres,
    Redshift,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Table,
    Json,
}

/// `cranium diff`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct DiffArgs {
    pub source_url: String,
    pub source_table: String,
    pub target_url: String,
    pub target_table: String,
    /// Key column (repeat for a composite key).
    #[arg(long, required = true)]
    pub key: Vec<String>,
    /// Columns to compare, comma-separated (default: every column both sides have).
    #[arg(long, value_delimiter = ',')]
    pub columns: Option<Vec<String>>,
    /// Columns to leave out, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// A filter on the source (MySQL SQL).
    #[arg(long = "where-source")]
    pub source_where: Option<String>,
    /// A filter on the target (PostgreSQL SQL).
    #[arg(long = "where-target")]
    pub target_where: Option<String>,
    /// Relative tolerance for FLOAT/DOUBLE columns.
    #[arg(long, default_value_t = 0.0)]
    pub float_tolerance: f64,
    /// Connections per side.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
    /// What the target URL is (Redshift is read through a cursor).
    #[arg(long, value_enum, default_value_t = TargetKind::Postgres)]
    pub target_kind: TargetKind,
    /// Give up after this long (e.g. `90s`, `30m`; the queries are cancelled on the servers).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    #[arg(long, value_enum, default_value_t = DiffFormat::Table)]
    pub format: DiffFormat,
}

/// Run the comparison; 0 when the tables match, 1 when they differ, 2 on an error.
pub fn diff(args: &DiffArgs, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let Some(rt) = super::run::runtime(err) else {
        return EXIT_ERROR;
    };
    let spec = DiffSpec {
        source: Side {
            url: args.source_url.clone(),
            table: args.source_table.clone(),
            query: None,
            filter: args.source_where.clone(),
        },
        target: Side {
            url: args.target_url.clone(),
            table: args.target_table.clone(),
            query: None,
            filter: args.target_where.clone(),
        },
        target_kind: match args.target_kind {
            TargetKind::Postgres => crate::db::DbKind::Postgres,
            TargetKind::Redshift => crate::db::DbKind::Redshift,
        },
        key: args.key.clone(),
        columns: args.columns.clone(),
        exclude: args.exclude.clone(),
        float_tolerance: args.float_tolerance,
        threads: args.threads,
        connect_timeout: Duration::from_secs(30),
        segment_rows: None,
    };
    let cancel = CancellationToken::new();
    let result = rt.block_on(async {
        let ctrl_c = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                ctrl_c.cancel();
            }
        });
        let deadline = tokio::time::Instant::now() + args.timeout;
        compare(&spec, Some(deadline), &cancel).await
    });
    match result {
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_ERROR
        }
        Ok(report) => {
            if args.format == DiffFormat::Json {
                match serde_json::to_string(&report) {
                    Ok(j) => {
                        let _ = writeln!(out, "{j}");
                    }
                    Err(e) => {
                        let _ = writeln!(err, "error: {e}");
                        return EXIT_ERROR;
                    }
                }
            } else if report.equal {
                let _ = writeln!(
                    out,
                    "equal: {} rows on both sides ({:.1} s, {} + {} bytes read)",
                    report.source_rows, report.seconds, report.source_bytes, report.target_bytes
                );
            } else {
                let _ = writeln!(out, "{}", report.summary());
            }
            if report.equal {
                super::EXIT_OK
            } else {
                EXIT_DIFFERENT
            }
        }
    }
}
