//! File-driven tests of `cranium check` on bad input.
//!
//! Each folder under `tests/fixtures/bad/` is a small project overlay, laid over a copy of
//! `tests/fixtures/base/` (which checks clean). Its files state, in header comments, the findings `check`
//! must produce:
//!
//! ```text
//! # expect: jobs/x.yaml:7:5: unknown field 'retires', did you mean 'retries'?
//! -- expect-warning: sql/y.sql:3:1: reads analytics.events
//! ```
//!
//! Each expectation must match a finding with exactly that file, line and column whose message contains
//! the fragment. Fixtures run with a fixed environment (only `CRANIUM_FIXTURE_SET=yes` is set).

use std::path::{Path, PathBuf};

use cranium::check::check;
use cranium::config::interp::Env;
use cranium::diag::Severity;

struct Expect {
    severity: Severity,
    file: String,
    line: usize,
    col: usize,
    fragment: String,
    source: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        let p = e.path();
        let t = to.join(e.file_name());
        if p.is_dir() {
            copy_dir(&p, &t);
        } else {
            std::fs::copy(&p, &t).expect("copy");
        }
    }
}

fn expectations(dir: &Path, root: &Path, out: &mut Vec<Expect>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            expectations(&p, root, out);
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for line in text.lines() {
            let l = line.trim_start();
            let l = l
                .strip_prefix('#')
                .or_else(|| l.strip_prefix("--"))
                .map(str::trim_start);
            let Some(l) = l else { continue };
            let (severity, rest) = if let Some(r) = l.strip_prefix("expect-warning:") {
                (Severity::Warning, r)
            } else if let Some(r) = l.strip_prefix("expect:") {
                (Severity::Error, r)
            } else {
                continue;
            };
            let rest = rest.trim();
            let mut parts = rest.splitn(4, ':');
            let (Some(file), Some(line), Some(col), Some(fragment)) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                panic!("{}: malformed expectation: {rest}", p.display());
            };
            out.push(Expect {
                severity,
                file: file.trim().to_string(),
                line: line
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: bad line in {rest}", p.display())),
                col: col
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{}: bad column in {rest}", p.display())),
                fragment: fragment.trim().to_string(),
                source: p.strip_prefix(root).unwrap_or(&p).to_path_buf(),
            });
        }
    }
}

#[test]
fn bad_inputs_produce_their_exact_errors() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let base = fixtures.join("base");
    let env = Env::from_pairs([("CRANIUM_FIXTURE_SET", "yes")]);

    // The base project itself is clean.
    let c = check(&base, &env).expect("base loads");
    assert!(
        c.diagnostics.is_empty(),
        "base fixture is not clean:\n{}",
        c.diagnostics.render(&c.project.redactor)
    );

    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures.join("bad"))
        .expect("fixtures/bad")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 30,
        "want at least 30 bad-input fixtures, have {}",
        dirs.len()
    );

    let mut failures = Vec::new();
    for dir in &dirs {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::tempdir().expect("tempdir");
        copy_dir(&base, tmp.path());
        copy_dir(dir, tmp.path());
        let mut exp = Vec::new();
        expectations(dir, dir, &mut exp);
        if exp.is_empty() {
            failures.push(format!("{name}: no `expect:` header"));
            continue;
        }
        let c = match check(tmp.path(), &env) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: project did not load: {e}"));
                continue;
            }
        };
        let rendered = c.diagnostics.render(&c.project.redactor);
        for e in &exp {
            let hit = c.diagnostics.items().iter().any(|d| {
                d.severity == e.severity
                    && d.file
                        .as_deref()
                        .map(|f| f.to_string_lossy().into_owned())
                        .as_deref()
                        == Some(e.file.as_str())
                    && d.pos.map(|p| (p.line, p.col)) == Some((e.line, e.col))
                    && c.project.redactor.redact(&d.message).contains(&e.fragment)
            });
            if !hit {
                let got: Vec<String> = c.diagnostics.items().iter().map(|d| d.short()).collect();
                failures.push(format!(
                    "{name} ({}): expected {:?} at {}:{}:{} containing {:?}\n  got:\n    {}",
                    e.source.display(),
                    e.severity,
                    e.file,
                    e.line,
                    e.col,
                    e.fragment,
                    got.join("\n    ")
                ));
            }
        }
        // Whatever else it says, a fixture never leaks the base project's secrets.
        for secret in ["fixture-secret-pw", "fixture-s3-secret"] {
            if rendered.contains(secret) {
                failures.push(format!("{name}: output shows a secret:\n{rendered}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture expectations failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
