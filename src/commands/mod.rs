//! What each command does, behind the command line that `main.rs` parses.
//!
//! Every command resolves the project folder, checks the project, and writes its output to the writers it
//! is given (so tests can read it). Exit codes: 0 success, 1 the project (or the run) has errors, 2 the
//! command could not start (no project, bad arguments).

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::check::{self, Checked};
use crate::config::interp::Env;
use crate::dag::{self, GraphFormat};
use crate::project;
use crate::schedule;

pub mod alerts;
pub mod daemon;
pub mod diff;
pub mod run;

/// Exit codes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// Set up `tracing` on standard error: warnings only, or step logs too with `--verbose` (RUST_LOG
/// overrides), as text or JSON lines.
pub fn init_logging(format: crate::engine::logs::LogFormat, verbose: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if verbose { "info" } else { "warn" }));
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org): escape
    // codes must not end up in log files and pipes.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::engine::logs::LogFormat::Json => builder.json().try_init(),
        crate::engine::logs::LogFormat::Text => builder.try_init(),
    };
}

/// Output format for `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckFormat {
    Text,
    Json,
}

/// Where to find the project: `--project DIR`, else the current folder or the nearest parent with
/// `cranium.yaml`.
pub fn resolve_root(project: Option<&Path>) -> Result<PathBuf, project::ProjectError> {
    match project {
        Some(p) => {
            if p.join(project::PROJECT_FILE).is_file() {
                p.canonicalize().map_err(|e| project::ProjectError::Io {
                    path: p.to_path_buf(),
                    source: e,
                })
            } else {
                project::find_root(p)
            }
        }
        None => project::find_root(Path::new(".")),
    }
}

pub(crate) fn load(project: Option<&Path>, err: &mut dyn Write) -> Result<Checked, i32> {
    let root = resolve_root(project).map_err(|e| {
        let _ = writeln!(err, "error: {e}");
        EXIT_USAGE
    })?;
    check::check(&root, &Env::from_process()).map_err(|e| {
        let _ = writeln!(err, "error: {e}");
        EXIT_USAGE
    })
}

/// Print diagnostics to `err`; true if there are errors.
fn report(c: &Checked, err: &mut dyn Write) -> bool {
    if !c.diagnostics.is_empty() {
        let _ = write!(err, "{}", c.diagnostics.render(&c.project.redactor));
    }
    c.diagnostics.has_errors()
}

/// `cranium check`.
pub fn check(
    project: Option<&Path>,
    format: CheckFormat,
    strict: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let steps: usize = c.project.jobs.iter().map(|j| j.steps.len()).sum();
    match format {
        CheckFormat::Json => {
            let _ = writeln!(out, "{}", c.diagnostics.to_json(&c.project.redactor));
        }
        CheckFormat::Text => {
            let _ = write!(out, "{}", c.diagnostics.render(&c.project.redactor));
            let _ = writeln!(
                out,
                "checked {} jobs, {} steps: {} errors, {} warnings",
                c.project.jobs.len(),
                steps,
                c.diagnostics.error_count(),
                c.diagnostics.warning_count()
            );
        }
    }
    if c.diagnostics.has_errors() || (strict && c.diagnostics.warning_count() > 0) {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// `cranium list`: jobs, schedules, and the next interval each would run.
pub fn list(project: Option<&Path>, out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let c = match load(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let failed = report(&c, err);
    let now = Utc::now();
    let mut rows = vec![[
        "JOB".to_string(),
        "SCHEDULE".to_string(),
        "TIMEZONE".to_string(),
        "STEPS".to_string(),
        "NEXT INTERVAL".to_string(),
        "DUE".to_string(),
    ]];
    for j in &c.project.jobs {
        let (interval, due) = match j.calendar.next_due(now) {
            Some(i) => (
                format!(
                    "{} .. {}",
                    i.start_local(j.timezone).format("%Y-%m-%d %H:%M"),
                    i.end_local(j.timezone).format("%Y-%m-%d %H:%M %Z")
                ),
                i.end_local(j.timezone)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string(),
            ),
            None => ("-".to_string(), "ended".to_string()),
        };
        rows.push([
            j.name.clone(),
            j.calendar.schedule.expr().to_string(),
            j.timezone.name().to_string(),
            j.steps.len().to_string(),
            interval,
            due,
        ]);
    }
    let _ = write!(out, "{}", table(&rows));
    if failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// `cranium graph [JOB]`.
pub fn graph(
    project: Option<&Path>,
    job: Option<&str>,
    format: GraphFormat,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let failed = report(&c, err);
    if let Some(j) = job {
        if c.project.job(j).is_none() {
            let _ = writeln!(err, "error: {}", unknown_job(&c, j));
            return EXIT_USAGE;
        }
    }
    let _ = write!(out, "{}", dag::render(&c.graph, job, format));
    if failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// "unknown job 'x'", with the nearest names (or all of them, in a small project) and how to
/// list them.
pub(crate) fn unknown_job(c: &Checked, name: &str) -> String {
    let mut names: Vec<&str> = c.project.jobs.iter().map(|j| j.name.as_str()).collect();
    names.sort_unstable();
    let mut near: Vec<(usize, &str)> = names
        .iter()
        .map(|n| (strsim::levenshtein(name, n), *n))
        .filter(|(d, n)| *d <= name.len().max(n.len()) / 2 || n.contains(name) || name.contains(n))
        .collect();
    near.sort();
    let hint = match (near.as_slice(), names.len()) {
        (_, 0) => " (the project has no jobs: job files go under jobs/)".to_string(),
        ([], n) if n <= 8 => format!(" (the jobs are {})", names.join(", ")),
        ([], n) => format!(" ({n} jobs, none with a similar name)"),
        (near, _) => {
            let list: Vec<String> = near.iter().take(3).map(|(_, n)| format!("'{n}'")).collect();
            format!(", did you mean {}?", list.join(" or "))
        }
    };
    format!("unknown job '{name}'{hint}; `cranium list` shows every job")
}

/// `cranium plan JOB --from T --to T`: the logical intervals a backfill over the range would run.
pub fn plan(
    project: Option<&Path>,
    job: &str,
    from: &str,
    to: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let c = match load(project, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let failed = report(&c, err);
    let Some(j) = c.project.job(job) else {
        let _ = writeln!(err, "error: {}", unknown_job(&c, job));
        return EXIT_USAGE;
    };
    let (f, t) = match (
        schedule::parse_time(from, j.timezone),
        schedule::parse_time(to, j.timezone),
    ) {
        (Ok(f), Ok(t)) => (f, t),
        (Err(e), _) | (_, Err(e)) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_USAGE;
        }
    };
    if t <= f {
        let _ = writeln!(err, "error: --to ({to}) must be after --from ({from})");
        return EXIT_USAGE;
    }
    let intervals = j.calendar.intervals(f, t);
    let _ = writeln!(
        out,
        "job {} ({}, {}): {} intervals starting in [{}, {})",
        j.name,
        j.calendar.schedule.expr(),
        j.timezone.name(),
        intervals.len(),
        f.with_timezone(&j.timezone).format("%Y-%m-%d %H:%M:%S%:z"),
        t.with_timezone(&j.timezone).format("%Y-%m-%d %H:%M:%S%:z"),
    );
    for i in &intervals {
        let len = i.end - i.start;
        let _ = writeln!(
            out,
            "{}  ->  {}  ({})",
            i.start_local(j.timezone).format("%Y-%m-%dT%H:%M:%S%:z"),
            i.end_local(j.timezone).format("%Y-%m-%dT%H:%M:%S%:z"),
            human_len(len)
        );
    }
    if failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

fn human_len(d: chrono::Duration) -> String {
    let secs = d.num_seconds();
    if secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
