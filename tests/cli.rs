//! The `cranium` binary end to end: the reference project and the examples check clean, and each
//! command's output has the shape people and machines rely on.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cranium(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cranium"))
        .args(args)
        .current_dir(dir)
        // The reference project reads these from the environment with defaults; make sure no developer
        // setting leaks into the test.
        .env_remove("WAREHOUSE_KIND")
        .env_remove("WAREHOUSE_URL")
        .output()
        .expect("run cranium")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn reference_project_and_examples_check_clean() {
    for dir in [
        root(),
        root().join("examples/minimal"),
        root().join("examples/cross_job"),
    ] {
        let out = cranium(&["check", "--strict"], &dir);
        assert!(
            out.status.success(),
            "{} does not check clean:\n{}{}",
            dir.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("0 errors, 0 warnings"),
            "{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn project_is_found_from_a_subfolder_and_by_flag() {
    let out = cranium(&["check"], &root().join("sql/events_daily"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cranium(&["--project", "examples/minimal", "list"], &root());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hello"));
    let tmp = tempfile::tempdir().expect("tmp");
    let out = cranium(&["check"], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no cranium.yaml found"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_reports_errors_as_json_and_exits_1() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("cranium.yaml"),
        "connections:\n  db:\n    kind: postgres\n    url: postgres://u:hunter22@h/db\n",
    )
    .expect("write");
    std::fs::create_dir(tmp.path().join("jobs")).expect("mkdir");
    std::fs::write(
        tmp.path().join("jobs/a.yaml"),
        "job: a\nschedule: \"0 3 * * 8\"\nstart: 2026-01-01\nsteps:\n  - id: x\n    kind: sql\n    connection: db\n    retires: 3\n    query: SELECT FROM WHERE\n",
    )
    .expect("write");
    let out = cranium(&["check", "--format", "json"], tmp.path());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let diags = v["diagnostics"].as_array().expect("array");
    assert!(v["errors"].as_u64().unwrap_or(0) >= 2, "{v}");
    assert!(
        diags.iter().any(|d| d["message"]
            .as_str()
            .unwrap_or("")
            .contains("did you mean 'retries'")
            && d["file"] == "jobs/a.yaml"
            && d["line"] == 8
            && d["col"] == 5),
        "{v}"
    );
    assert!(
        diags
            .iter()
            .any(|d| d["code"] == "schedule" && d["line"] == 2),
        "{v}"
    );
    assert!(!text(&out.stdout).contains("hunter22"));

    // Text output shows the line and a caret.
    let out = cranium(&["check"], tmp.path());
    let s = text(&out.stdout);
    assert!(
        s.contains("jobs/a.yaml:8:5") && s.contains("retires: 3") && s.contains("^^^^^^^"),
        "{s}"
    );
}

#[test]
fn warnings_fail_only_with_strict() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("cranium.yaml"),
        "connections:\n  db:\n    kind: postgres\n    url: postgres://h/db\n",
    )
    .expect("write");
    std::fs::create_dir(tmp.path().join("jobs")).expect("mkdir");
    // `b` reads what `a` writes without depending on it: a missing-dependency warning.
    std::fs::write(
        tmp.path().join("jobs/j.yaml"),
        "job: j\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n  - id: a\n    kind: sql\n    connection: db\n    query: INSERT INTO t SELECT 1\n  - id: b\n    kind: sql\n    connection: db\n    query: SELECT * FROM t\n",
    )
    .expect("write");
    let out = cranium(&["check"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("add `after: [a]`"),
        "{}",
        text(&out.stdout)
    );
    let out = cranium(&["check", "--strict"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    // With infer_dependencies the edge is added and the warning goes away.
    std::fs::write(tmp.path().join("cranium.yaml"), "infer_dependencies: true\nconnections:\n  db:\n    kind: postgres\n    url: postgres://h/db\n").expect("write");
    let out = cranium(&["check", "--strict"], tmp.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = cranium(&["graph"], tmp.path());
    assert!(
        text(&out.stdout).contains("b <- j.a (inferred)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn graph_formats() {
    let out = cranium(&["graph"], &root());
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        s.contains("events_daily") && s.contains("recipe_runs_per_channel <-"),
        "{s}"
    );
    assert!(
        s.contains("product_daily.load_recipes"),
        "cross-job edge missing:\n{s}"
    );

    let out = cranium(&["graph", "events_daily", "--format", "mermaid"], &root());
    let s = text(&out.stdout);
    assert!(s.starts_with("flowchart LR"), "{s}");
    assert!(
        s.contains("-.->"),
        "cross-job edges are dashed in mermaid:\n{s}"
    );

    let out = cranium(&["graph", "--format", "dot"], &root());
    let dot_src = text(&out.stdout);
    assert!(dot_src.starts_with("digraph cranium {"), "{dot_src}");
    assert!(dot_src.contains("style=dashed"), "{dot_src}");
    // The dot output must render with Graphviz.
    let mut child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("graphviz `dot` must be installed (scripts/test.sh installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(dot_src.as_bytes())
        .expect("write dot");
    let rendered = child.wait_with_output().expect("dot");
    assert!(
        rendered.status.success(),
        "dot failed: {}",
        text(&rendered.stderr)
    );
    let svg = text(&rendered.stdout);
    assert!(
        svg.contains("<svg") && svg.contains("events_daily.load_app_events"),
        "{svg}"
    );

    let out = cranium(&["graph", "nope"], &root());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_lists_intervals_across_dst_in_the_job_time_zone() {
    let out = cranium(
        &[
            "--project",
            "examples/minimal",
            "plan",
            "hello",
            "--from",
            "2026-03-28",
            "--to",
            "2026-03-31",
        ],
        &root(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    // `0 3 * * *` in Europe/Berlin: the interval over the spring-forward night is 23 hours.
    assert!(s.contains("3 intervals"), "{s}");
    assert!(
        s.contains("2026-03-28T03:00:00+01:00  ->  2026-03-29T03:00:00+02:00  (23h)"),
        "{s}"
    );
    assert!(
        s.contains("2026-03-29T03:00:00+02:00  ->  2026-03-30T03:00:00+02:00  (1d)"),
        "{s}"
    );
}

#[test]
fn list_shows_schedules() {
    let out = cranium(&["list"], &root());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for j in [
        "events_hourly",
        "events_daily",
        "product_daily",
        "verify_daily",
    ] {
        assert!(s.contains(j), "{s}");
    }
    assert!(s.contains("@hourly"));
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        "check", "list", "graph", "plan", "run", "backfill", "runs", "logs", "clear",
    ] {
        let out = cranium(&[cmd, "--help"], &root());
        assert!(out.status.success());
        assert!(
            text(&out.stdout).contains("Example"),
            "{cmd} --help has no example"
        );
    }
}

/// Logs written to a pipe or a file carry no colour escape codes (and NO_COLOR is honoured).
#[test]
fn logs_are_plain_text_off_a_terminal() {
    for no_color in [false, true] {
        // A new store: opening it logs its migrations.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cranium.yaml"), "name: plain\n").expect("yaml");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cranium"));
        cmd.args(["--verbose", "runs"]).current_dir(dir.path());
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().expect("cranium");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("applied store migration"), "{stderr}");
        assert!(!stderr.contains('\u{1b}'), "escape codes in: {stderr:?}");
    }
}

/// A project in a temporary folder with one job file `j.yaml` (SQLite store, no connections).
fn edge_project(job: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("cranium.yaml"), "name: edges\n").expect("cranium.yaml");
    std::fs::create_dir(dir.path().join("jobs")).expect("jobs");
    std::fs::write(dir.path().join("jobs/j.yaml"), job).expect("job");
    dir
}

const NOOP: &str = "steps:\n  - id: a\n    kind: noop\n";

#[test]
fn dates_before_1970_give_the_intervals_from_1970_on() {
    let dir = edge_project(&format!(
        "job: j\nschedule: \"@daily\"\nstart: 1960-01-01\n{NOOP}"
    ));
    let out = cranium(
        &[
            "plan",
            "j",
            "--from",
            "1969-12-31T00:00:00Z",
            "--to",
            "1970-01-03T00:00:00Z",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("2 intervals"), "{s}");
    assert!(
        s.contains("1970-01-01T00:00:00+00:00  ->  1970-01-02T00:00:00+00:00"),
        "{s}"
    );
    assert!(
        s.contains("1970-01-02T00:00:00+00:00  ->  1970-01-03T00:00:00+00:00"),
        "{s}"
    );
    // A backfill over that range runs both.
    let out = cranium(
        &[
            "backfill",
            "j",
            "--from",
            "1969-12-31T00:00:00Z",
            "--to",
            "1970-01-03T00:00:00Z",
            "--dry-run",
        ],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("1970-01-01") && s.contains("1970-01-02"), "{s}");
    // check says where its intervals begin, and `list` shows it as due, not ended.
    let out = cranium(&["check"], dir.path());
    let s = text(&out.stdout) + &text(&out.stderr);
    assert!(
        s.contains("start 1960-01-01 is before 1970: the job's intervals begin at 1970-01-01T00:00:00+00:00"),
        "{s}"
    );
    let out = cranium(&["list"], dir.path());
    let s = text(&out.stdout);
    assert!(!s.contains("ended"), "{s}");
}

#[test]
fn a_start_far_ahead_is_a_warning_and_one_past_2100_never_runs() {
    let dir = edge_project(&format!(
        "job: j\nschedule: \"@daily\"\nstart: 2090-01-01\n{NOOP}"
    ));
    let s = text(&cranium(&["check"], dir.path()).stdout);
    assert!(
        s.contains("the job will not run for 63 years: its first interval starts 2090-01-01"),
        "{s}"
    );
    let dir = edge_project(&format!(
        "job: j\nschedule: \"@daily\"\nstart: 2200-01-01\n{NOOP}"
    ));
    let out = cranium(&["check", "--strict"], dir.path());
    assert!(!out.status.success());
    let s = text(&out.stdout);
    assert!(
        s.contains("the job has no interval from its start (2200-01-01) on: schedules are computed up to the year 2100, so it never runs"),
        "{s}"
    );
}

#[test]
fn large_steps_are_accepted_with_a_warning_and_every_gets_advice() {
    let dir = edge_project(&format!(
        "job: j\nschedule: \"*/60 * * * *\"\nstart: 2026-01-01\n{NOOP}"
    ));
    let out = cranium(&["check"], dir.path());
    assert!(
        out.status.success(),
        "a warning only: {}",
        text(&out.stdout)
    );
    let s = text(&out.stdout);
    assert!(
        s.contains("'*/60' in the minute field means minute 0 only"),
        "{s}"
    );
    let dir = edge_project(&format!(
        "job: j\nschedule: \"@every 5m\"\nstart: 2026-01-01\n{NOOP}"
    ));
    let s = text(&cranium(&["check"], dir.path()).stdout);
    assert!(s.contains("'@every' is not a cron macro"), "{s}");
    assert!(s.contains("for every 5m write \"*/5 * * * *\""), "{s}");
}

#[test]
fn an_unknown_job_names_the_jobs_and_how_to_list_them() {
    let out = cranium(&["run", "nosuchjob"], &root());
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr).trim(),
        "error: unknown job 'nosuchjob' (the jobs are events_daily, events_hourly, product_daily, verify_daily); `cranium list` shows every job"
    );
    let out = cranium(&["run", "events_dialy"], &root());
    assert!(
        text(&out.stderr).contains("unknown job 'events_dialy', did you mean 'events_daily'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_diagnostic_on_a_40000_character_line_shows_a_window_of_it() {
    let long = "x".repeat(40_000);
    let dir = edge_project(&format!(
        "job: j\nschedule: \"@daily\"\nstart: 2026-01-01\ndescription: {long}\nretires: 3\nsteps:\n  - id: a\n    kind: noop\n    sleep: {long}\n"
    ));
    let out = cranium(&["check"], dir.path());
    let s = text(&out.stdout);
    assert!(s.len() < 5_000, "{} bytes of output", s.len());
    assert!(s.contains("characters long; columns"), "{s}");
    assert!(s.contains('…'), "{s}");
}
