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
