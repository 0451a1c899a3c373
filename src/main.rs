//! The `cranium` command line: parses arguments and hands over to `cranium::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cranium::commands::{self, CheckFormat};
use cranium::dag::GraphFormat;

/// A declarative ETL DAG scheduler: Kafka and MySQL into Redshift, with SQL and Lua steps.
#[derive(Parser)]
#[command(name = "cranium", version, about, propagate_version = true)]
struct Cli {
    /// The project folder (default: the current folder, or the nearest parent with cranium.yaml).
    #[arg(long, global = true, value_name = "DIR")]
    project: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lint the project: YAML, unknown fields, cron, time zones, dependencies and cycles, templates, SQL.
    #[command(
        after_help = "Examples:\n  cranium check\n  cranium check --project examples/minimal --format json\n  cranium check --strict   # warnings fail too"
    )]
    Check {
        /// `text` for people, `json` for machines.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
        /// Fail on warnings as well as errors.
        #[arg(long)]
        strict: bool,
    },
    /// List the jobs, their schedules and the next interval each will run.
    #[command(after_help = "Example:\n  cranium list")]
    List,
    /// Show the DAG of the project (or of one job, with its cross-job neighbours).
    #[command(
        after_help = "Examples:\n  cranium graph\n  cranium graph events_daily --format mermaid\n  cranium graph --format dot | dot -Tsvg > dag.svg"
    )]
    Graph {
        /// Only this job and the steps it shares edges with.
        job: Option<String>,
        #[arg(long, value_enum, default_value_t = GraphOut::Text)]
        format: GraphOut,
    },
    /// Show the logical intervals that a backfill of JOB over a range would run, in the job's time zone.
    #[command(
        after_help = "Examples:\n  cranium plan events_hourly --from 2026-03-08 --to 2026-03-09\n  cranium plan product_daily --from 2026-01-01 --to 2026-02-01"
    )]
    Plan {
        job: String,
        /// Range start (a date, a local time in the job's time zone, or RFC 3339); intervals starting at or after it.
        #[arg(long)]
        from: String,
        /// Range end; intervals starting before it.
        #[arg(long)]
        to: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum OutFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphOut {
    Text,
    Dot,
    Mermaid,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let project = cli.project.as_deref();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let code = match cli.command {
        Command::Check { format, strict } => {
            let f = match format {
                OutFormat::Text => CheckFormat::Text,
                OutFormat::Json => CheckFormat::Json,
            };
            commands::check(project, f, strict, &mut out, &mut err)
        }
        Command::List => commands::list(project, &mut out, &mut err),
        Command::Graph { job, format } => {
            let f = match format {
                GraphOut::Text => GraphFormat::Text,
                GraphOut::Dot => GraphFormat::Dot,
                GraphOut::Mermaid => GraphFormat::Mermaid,
            };
            commands::graph(project, job.as_deref(), f, &mut out, &mut err)
        }
        Command::Plan { job, from, to } => {
            commands::plan(project, &job, &from, &to, &mut out, &mut err)
        }
    };
    ExitCode::from(code as u8)
}
