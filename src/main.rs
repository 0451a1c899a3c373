//! The `cranium` command line: parses arguments and hands over to `cranium::commands`.

use std::path::PathBuf;

/// mimalloc: checking a large project makes millions of small allocations across threads, where the
/// system allocator costs a fifth of the time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cranium::commands::run::{BackfillArgs, RunArgs, RunsFormat, Selection};
use cranium::commands::{self, CheckFormat};
use cranium::dag::GraphFormat;
use cranium::engine::logs::LogFormat;
use cranium::engine::Rerun;
use cranium::store::RunState;

/// A declarative ETL DAG scheduler: Kafka and MySQL into Redshift, with SQL and Lua steps.
#[derive(Parser)]
#[command(name = "cranium", version, about, propagate_version = true)]
struct Cli {
    /// The project folder (default: the current folder, or the nearest parent with cranium.yaml).
    #[arg(long, global = true, value_name = "DIR")]
    project: Option<PathBuf>,
    /// Step logs (files and --verbose output) as text or JSON lines.
    #[arg(long, global = true, value_enum, default_value_t = LogOut::Text)]
    log_format: LogOut,
    /// Print step logs while running.
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogOut {
    Text,
    Json,
}

#[derive(clap::Args)]
struct SelectionArgs {
    /// Only steps whose id matches one of these globs (comma-separated or repeated), e.g. `rollup_*`.
    #[arg(long, value_delimiter = ',')]
    steps: Vec<String>,
    /// Also run everything downstream (in the job) of the selected steps.
    #[arg(long)]
    downstream: bool,
    /// Steps running at once (default 8).
    #[arg(long)]
    parallelism: Option<usize>,
    /// Wait up to this long (e.g. 10m) for cross-job upstream intervals to succeed (default: do not wait).
    #[arg(long, value_parser = humantime::parse_duration)]
    wait_upstream: Option<std::time::Duration>,
    /// Take over runs whose process stopped once their heartbeat is this old (default 30s).
    #[arg(long, value_parser = humantime::parse_duration, hide = true)]
    recover_after: Option<std::time::Duration>,
    /// Run the selected steps even if their upstream (unselected or in other jobs) has not succeeded.
    #[arg(long)]
    ignore_upstream: bool,
    /// Raise no alerts (failures are still recorded and printed).
    #[arg(long)]
    no_alerts: bool,
}

impl SelectionArgs {
    fn into_selection(self) -> Selection {
        Selection {
            steps: self.steps,
            downstream: self.downstream,
            parallelism: self.parallelism,
            upstream_wait: self.wait_upstream,
            recover_after: self.recover_after,
            ignore_upstream: self.ignore_upstream,
            no_alerts: self.no_alerts,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum RerunArg {
    None,
    Failed,
    All,
}

#[derive(Clone, Copy, ValueEnum)]
enum StateArg {
    Queued,
    Running,
    Success,
    Failed,
}

#[derive(Clone, Copy, ValueEnum)]
enum RunsOut {
    Table,
    Json,
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
    /// Run one logical interval of a job: the latest complete one, the one containing --at, or --interval.
    #[command(
        after_help = "Examples:\n  cranium run events_daily --at 2026-03-01\n  cranium run events_daily --at 2026-03-01 --steps 'rollup_*' --downstream\n  cranium run product_daily --interval 2026-03-01/2026-03-02 --parallelism 4"
    )]
    Run {
        job: String,
        /// A time inside the interval to run (a date, a local time in the job's time zone, or RFC 3339).
        #[arg(long)]
        at: Option<String>,
        /// An explicit interval START/END.
        #[arg(long)]
        interval: Option<String>,
        #[command(flatten)]
        selection: SelectionArgs,
    },
    /// Run every interval of a job's schedule in a range; skips what already succeeded and resumes after an interruption.
    #[command(
        after_help = "Examples:\n  cranium backfill events_daily --from 2026-01-01 --to 2026-02-01\n  cranium backfill events_daily --from 2026-01-01 --to 2026-02-01 --dry-run\n  cranium backfill events_daily --from 2026-01-01 --to 2026-02-01 --rerun failed --max-active-runs 4"
    )]
    Backfill {
        job: String,
        /// Range start: intervals starting at or after it.
        #[arg(long)]
        from: String,
        /// Range end: intervals starting before it.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        selection: SelectionArgs,
        /// `none` (default): only intervals never run or cleared; `failed`: also those with failed steps; `all`: everything.
        #[arg(long, value_enum, default_value_t = RerunArg::None)]
        rerun: RerunArg,
        /// Intervals running at once (default: the job's max_active_runs).
        #[arg(long)]
        max_active_runs: Option<usize>,
        /// Print what would run, and run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Store the backfill for the daemon instead of running it here: it survives this shell,
        /// obeys the daemon's pools, and `cranium requests` follows or cancels it.
        #[arg(long)]
        submit: bool,
        /// With --submit: the rank of its steps when steps wait for slots (default -1000, below
        /// every scheduled run).
        #[arg(long, requires = "submit", allow_hyphen_values = true)]
        priority: Option<i32>,
    },
    /// What alerts were sent and what failed, newest first; `alerts test CHANNEL` sends a test alert.
    #[command(
        after_help = "Examples:\n  cranium alerts\n  cranium alerts --job events_daily --limit 20 --format json\n  cranium alerts test data-oncall"
    )]
    Alerts {
        #[command(subcommand)]
        action: Option<AlertsAction>,
        /// Only this job's alerts.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = RunsOut::Table)]
        format: RunsOut,
    },
    /// Run the scheduler: every job on its schedule, requests from the command line, hot reload;
    /// stops cleanly on SIGTERM/SIGINT (a second signal cancels running steps at once).
    #[command(
        after_help = "Examples:\n  cranium daemon\n  cranium daemon --project /srv/etl --log-format json\n  curl -s http://127.0.0.1:8181/health"
    )]
    Daemon {
        /// Serve /livez, /readyz, /health and /metrics here instead of `daemon.listen`.
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// The daemon's id in the store, its leases and `cranium status` (default HOST:PID:RANDOM).
        #[arg(long, value_name = "NAME")]
        id: Option<String>,
    },
    /// Serve the dashboard over the metadata store without a daemon (the daemon serves it too,
    /// on its own address): jobs, runs, logs, lag, validation reports, alerts and requests.
    #[command(after_help = "Examples:\n  cranium ui\n  cranium ui --listen 127.0.0.1:9000")]
    Ui {
        /// Where to serve it (default 127.0.0.1:8282; loopback unless you say otherwise).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// One screen for people: the daemon (up or not), each job's last run, next due time and
    /// state, paused jobs, running steps, open requests.
    #[command(after_help = "Example:\n  cranium status")]
    Status,
    /// Stop creating runs for a job (kept in the store; running runs finish).
    #[command(after_help = "Example:\n  cranium pause events_hourly")]
    Pause { job: String },
    /// Schedule a paused job again (its `catchup` decides what happens to what it missed).
    #[command(after_help = "Example:\n  cranium unpause events_hourly")]
    Unpause { job: String },
    /// Ask the daemon to run one interval of a job now (default: the latest that has ended).
    #[command(
        after_help = "Examples:\n  cranium trigger product_daily\n  cranium trigger events_hourly --at '2026-03-01 13:00'"
    )]
    Trigger {
        job: String,
        /// A time inside the interval to run.
        #[arg(long)]
        at: Option<String>,
    },
    /// List the requests made of the daemon (triggers, submitted backfills), follow one, or cancel one.
    #[command(
        after_help = "Examples:\n  cranium requests\n  cranium requests --follow 7\n  cranium requests --cancel 7"
    )]
    Requests {
        /// Print the request's progress until it ends (exit 0 if it succeeded).
        #[arg(long, value_name = "ID", conflicts_with = "cancel")]
        follow: Option<i64>,
        /// Cancel the request: the daemon stops its running intervals and starts no more.
        #[arg(long, value_name = "ID")]
        cancel: Option<i64>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// List runs, newest first.
    #[command(
        after_help = "Examples:\n  cranium runs\n  cranium runs events_daily --state failed --limit 20\n  cranium runs --format json"
    )]
    Runs {
        job: Option<String>,
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = RunsOut::Table)]
        format: RunsOut,
    },
    /// Show how far each kafka_to_s3 step's consumer group is behind, per topic partition.
    #[command(after_help = "Examples:\n  cranium lag\n  cranium lag events_hourly --format json")]
    Lag {
        job: Option<String>,
        #[arg(long, value_enum, default_value_t = RunsOut::Table)]
        format: RunsOut,
    },
    /// Compare a MySQL table with its PostgreSQL/warehouse copy (exit 0: equal, 1: different, 2: error).
    #[command(
        after_help = "Examples:\n  cranium diff mysql://root@127.0.0.1/app users postgres://postgres@127.0.0.1/dw analytics.users --key id\n  cranium diff $PRODUCTION_MYSQL_URL recipes $WAREHOUSE_URL analytics.recipes --key id --format json"
    )]
    Diff(commands::diff::DiffArgs),
    /// Print the logs of every attempt of a job's interval (or of one step).
    #[command(
        after_help = "Examples:\n  cranium logs events_daily 2026-03-01\n  cranium logs events_daily 2026-03-01 daily_active_users --follow"
    )]
    Logs {
        job: String,
        /// A time inside the interval (e.g. its start date).
        interval: String,
        step: Option<String>,
        /// Keep printing while the attempts run.
        #[arg(long)]
        follow: bool,
    },
    /// Mark intervals of a job (or some of its steps) to run again. History is kept.
    #[command(
        after_help = "Examples:\n  cranium clear events_daily --from 2026-03-01 --to 2026-03-08\n  cranium clear events_daily --from 2026-03-01 --to 2026-03-02 --steps load_app_events --downstream"
    )]
    Clear {
        job: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        #[arg(long, value_delimiter = ',')]
        steps: Vec<String>,
        #[arg(long)]
        downstream: bool,
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

#[derive(Subcommand)]
enum AlertsAction {
    /// Send a test alert to CHANNEL now (exit 0 when it was delivered).
    Test { channel: String },
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
    let log_format = match cli.log_format {
        LogOut::Text => LogFormat::Text,
        LogOut::Json => LogFormat::Json,
    };
    // The daemon says what it does (info) by default; the other commands only warn.
    commands::init_logging(
        log_format,
        cli.verbose || matches!(cli.command, Command::Daemon { .. }),
    );
    let mut out = std::io::stdout();
    // Not locked: tracing and progress output write to stderr from other threads.
    let mut err = std::io::stderr();
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
        Command::Run {
            job,
            at,
            interval,
            selection,
        } => {
            let args = RunArgs {
                job,
                at,
                interval,
                selection: selection.into_selection(),
            };
            commands::run::run(project, &args, log_format, &mut out, &mut err)
        }
        Command::Backfill {
            job,
            from,
            to,
            selection,
            rerun,
            max_active_runs,
            dry_run,
            submit,
            priority,
        } => {
            let rerun = match rerun {
                RerunArg::None => Rerun::None,
                RerunArg::Failed => Rerun::Failed,
                RerunArg::All => Rerun::All,
            };
            let args = BackfillArgs {
                job,
                from,
                to,
                selection: selection.into_selection(),
                rerun,
                max_active_runs,
                dry_run,
            };
            if submit {
                commands::daemon::submit_backfill(project, &args, priority, &mut out, &mut err)
            } else {
                commands::run::backfill(project, &args, log_format, &mut out, &mut err)
            }
        }
        Command::Alerts {
            action: Some(AlertsAction::Test { channel }),
            ..
        } => commands::alerts::test(project, &channel, &mut out, &mut err),
        Command::Alerts {
            action: None,
            job,
            limit,
            format,
        } => {
            let format = match format {
                RunsOut::Table => RunsFormat::Table,
                RunsOut::Json => RunsFormat::Json,
            };
            commands::alerts::list(project, job.as_deref(), limit, format, &mut out, &mut err)
        }
        Command::Daemon { listen, id } => {
            commands::daemon::daemon(project, log_format, listen, id, &mut err)
        }
        Command::Ui { listen } => commands::daemon::ui(project, listen, &mut out, &mut err),
        Command::Status => commands::daemon::status(project, &mut out, &mut err),
        Command::Pause { job } => commands::daemon::pause(project, &job, true, &mut out, &mut err),
        Command::Unpause { job } => {
            commands::daemon::pause(project, &job, false, &mut out, &mut err)
        }
        Command::Trigger { job, at } => {
            commands::daemon::trigger(project, &job, at.as_deref(), &mut out, &mut err)
        }
        Command::Requests {
            follow,
            cancel,
            limit,
        } => commands::daemon::requests(project, follow, cancel, limit, &mut out, &mut err),
        Command::Diff(args) => commands::diff::diff(&args, &mut out, &mut err),
        Command::Lag { job, format } => {
            let format = match format {
                RunsOut::Table => RunsFormat::Table,
                RunsOut::Json => RunsFormat::Json,
            };
            commands::run::lag(project, job.as_deref(), format, &mut out, &mut err)
        }
        Command::Runs {
            job,
            state,
            limit,
            format,
        } => {
            let state = state.map(|s| match s {
                StateArg::Queued => RunState::Queued,
                StateArg::Running => RunState::Running,
                StateArg::Success => RunState::Success,
                StateArg::Failed => RunState::Failed,
            });
            let format = match format {
                RunsOut::Table => RunsFormat::Table,
                RunsOut::Json => RunsFormat::Json,
            };
            commands::run::runs(
                project,
                job.as_deref(),
                state,
                limit,
                format,
                &mut out,
                &mut err,
            )
        }
        Command::Logs {
            job,
            interval,
            step,
            follow,
        } => commands::run::logs(
            project,
            &job,
            &interval,
            step.as_deref(),
            follow,
            &mut out,
            &mut err,
        ),
        Command::Clear {
            job,
            from,
            to,
            steps,
            downstream,
        } => commands::run::clear(
            project, &job, &from, &to, &steps, downstream, &mut out, &mut err,
        ),
    };
    ExitCode::from(code as u8)
}
