//! `validate` / `cranium diff` against the real MariaDB and PostgreSQL: identical tables pass whatever
//! their types' spelling on each side; every kind of seeded difference is found and reported exactly;
//! and the known failures of other tools (ambiguous row encodings, per-connection sessions, duplicate
//! keys hidden in a matching segment, string keys ordered differently by each database, a mismatch
//! that exits 0) do not happen here.

mod support;

use std::time::Duration;

use cranium::diff::{diff, DiffSpec, Report, Side};
use cranium::store::StepState;
use mysql_async::prelude::Queryable;
use support::*;
use tokio_util::sync::CancellationToken;

/// Create `table` on both sides (`my_ddl`, `pg_ddl` are the column lists) and fill them.
async fn pair(table: &str, my_ddl: &str, pg_ddl: &str, my_rows: &str, pg_rows: &str) {
    let mut m = mysql().await;
    m.query_drop(format!("DROP TABLE IF EXISTS {table}"))
        .await
        .expect("drop");
    m.query_drop(format!(
        "CREATE TABLE {table} ({my_ddl}) CHARACTER SET utf8mb4"
    ))
    .await
    .expect("create");
    if !my_rows.is_empty() {
        m.query_drop(format!("INSERT INTO {table} VALUES {my_rows}"))
            .await
            .expect("insert");
    }
    let p = pg().await;
    p.batch_execute(&format!(
        "DROP TABLE IF EXISTS public.{table}; CREATE TABLE public.{table} ({pg_ddl});"
    ))
    .await
    .expect("pg create");
    if !pg_rows.is_empty() {
        p.batch_execute(&format!("INSERT INTO public.{table} VALUES {pg_rows}"))
            .await
            .expect("pg insert");
    }
}

async fn drop_pair(table: &str) {
    mysql()
        .await
        .query_drop(format!("DROP TABLE IF EXISTS {table}"))
        .await
        .expect("drop");
    pg().await
        .batch_execute(&format!("DROP TABLE IF EXISTS public.{table}"))
        .await
        .expect("drop");
}

fn spec(table: &str, key: &[&str]) -> DiffSpec {
    DiffSpec {
        source: Side {
            url: MY.into(),
            table: table.into(),
            query: None,
            filter: None,
        },
        target: Side {
            url: PG.into(),
            table: format!("public.{table}"),
            query: None,
            filter: None,
        },
        target_kind: cranium::db::DbKind::Postgres,
        key: key.iter().map(|k| k.to_string()).collect(),
        columns: None,
        exclude: Vec::new(),
        float_tolerance: 0.0,
        threads: 3,
        connect_timeout: Duration::from_secs(10),
        segment_rows: Some(50),
    }
}

async fn compare(s: &DiffSpec) -> Report {
    diff(s, None, &CancellationToken::new())
        .await
        .expect("the comparison runs")
}

fn keys(list: &[Vec<String>]) -> Vec<String> {
    list.iter().map(|k| k.join(",")).collect()
}

const TYPES_MY: &str = "id INT PRIMARY KEY, amount DECIMAL(12,2), ratio DOUBLE, f FLOAT, created DATETIME, \
    precise DATETIME(6), seen TIMESTAMP(3) NULL, born DATE, at_time TIME, active TINYINT(1), code CHAR(5), \
    name VARCHAR(40), note TEXT, doc JSON, pic VARBINARY(16), big BIGINT UNSIGNED";
const TYPES_PG: &str =
    "id int PRIMARY KEY, amount numeric, ratio double precision, f real, created timestamp, \
    precise timestamp(6), seen timestamptz, born date, at_time time, active boolean, code char(5), \
    name varchar(40), note text, doc jsonb, pic bytea, big numeric(20,0)";
const TYPES_MY_ROWS: &str = "(1, 1.50, 0.1, 0.1, '2026-03-01 12:00:00', '2026-03-01 12:00:00.120000', \
    '2026-03-01 23:59:59.500', '2026-03-01', '08:30:00', 1, 'ab', 'Zoë 🎉 trailing  ', '', \
    '{\"b\": 1, \"a\": [1, 2.5]}', x'00FF7C', 18446744073709551615), \
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL), \
    (3, -7.00, 1e15, -2.5, '1999-12-31 23:59:59', '2000-01-01 00:00:00.000001', '1970-01-01 00:00:01.000', \
    '0001-01-01', '-01:00:00', 0, '', '', 'x', '[]', x'', 0)";
const TYPES_PG_ROWS: &str = "(1, 1.5, 0.1, 0.1, '2026-03-01 12:00:00', '2026-03-01 12:00:00.12', \
    '2026-03-01 23:59:59.5+00', '2026-03-01', '08:30:00', true, 'ab', 'Zoë 🎉 trailing  ', '', \
    '{\"a\": [1, 2.5], \"b\": 1}', '\\x00ff7c', 18446744073709551615), \
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false, NULL, NULL, NULL, NULL, NULL, NULL), \
    (3, -7, 1e15, -2.5, '1999-12-31 23:59:59', '2000-01-01 00:00:00.000001', '1970-01-01 01:00:01+01', \
    '0001-01-01', '23:00:00', false, '', '', 'x', '[]', '\\x', 0)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_in_its_canonical_form_compares_equal_and_each_changed_column_is_found() {
    let table = unique("vt_types");
    // Row 3's TIME is negative in MySQL, which PostgreSQL's time cannot hold: leave it out here.
    pair(&table, TYPES_MY, TYPES_PG, TYPES_MY_ROWS, TYPES_PG_ROWS).await;
    let mut s = spec(&table, &["id"]);
    s.exclude = vec!["at_time".into()];
    let r = compare(&s).await;
    assert!(r.equal, "{}", r.summary());
    assert_eq!((r.source_rows, r.target_rows), (3, 3));
    assert_eq!(r.strategy, "ranges");
    assert_eq!(r.target_streams, 1, "3 rows: one segment range");

    // One changed column of each type, each on its own row copy.
    let changes = [
        ("amount", "1.51", "1.50", "1.51"),
        ("ratio", "0.1000001", "0.1", "0.1000001"),
        (
            "created",
            "'2026-03-01 12:00:01'",
            "2026-03-01 12:00:00",
            "2026-03-01 12:00:01",
        ),
        (
            "precise",
            "'2026-03-01 12:00:00.120001'",
            "2026-03-01 12:00:00.120000",
            "2026-03-01 12:00:00.120001",
        ),
        (
            "seen",
            "'2026-03-01 23:59:59.5+01'",
            "2026-03-01 23:59:59.500",
            "2026-03-01 22:59:59.500",
        ),
        ("born", "'2026-03-02'", "2026-03-01", "2026-03-02"),
        ("active", "false", "1", "0"),
        ("code", "'aB'", "ab", "aB"),
        (
            "name",
            "'Zoë 🎉 trailing '",
            "Zoë 🎉 trailing  ",
            "Zoë 🎉 trailing ",
        ),
        ("note", "NULL", "", "NULL"),
        ("doc", "'{\"a\": [1, 2.5], \"b\": 2}'", "", ""),
        ("pic", "'\\x00ff7d'", "00FF7C", "00FF7D"),
        ("big", "1", "18446744073709551615", "1"),
    ];
    for (col, pg_value, want_source, want_target) in changes {
        let p = pg().await;
        p.batch_execute(&format!(
            "UPDATE public.{table} SET {col} = {pg_value} WHERE id = 1"
        ))
        .await
        .expect("change");
        let r = compare(&s).await;
        assert!(!r.equal, "{col}: {}", r.summary());
        assert_eq!(r.differing.len(), 1, "{col}: {}", r.summary());
        let d = &r.differing[0];
        assert_eq!(d.key, vec!["1".to_string()]);
        assert_eq!(
            d.columns.keys().collect::<Vec<_>>(),
            vec![&col.to_string()],
            "{col}"
        );
        let v = &d.columns[col];
        if col != "doc" {
            assert_eq!(v.source.as_deref(), Some(want_source), "{col}");
            let t = if want_target == "NULL" {
                None
            } else {
                Some(want_target)
            };
            assert_eq!(v.target.as_deref(), t, "{col}");
        }
        // Put the row back.
        p.batch_execute(&format!(
            "DELETE FROM public.{table} WHERE id = 1; INSERT INTO public.{table} VALUES {}",
            TYPES_PG_ROWS
                .split("), (")
                .next()
                .unwrap_or_default()
                .to_string()
                + ")"
        ))
        .await
        .expect("restore");
    }
    let r = compare(&s).await;
    assert!(r.equal, "restored: {}", r.summary());
    drop_pair(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_extra_null_versus_empty_and_duplicate_keys_are_reported_exactly() {
    let table = unique("vt_rows");
    let rows: Vec<String> = (1..=5000)
        .map(|i| {
            format!(
                "({i}, 'n{i}', {})",
                if i % 3 == 0 {
                    "NULL".into()
                } else {
                    format!("'v{i}'")
                }
            )
        })
        .collect();
    let rows = rows.join(",");
    pair(
        &table,
        "id BIGINT PRIMARY KEY, name VARCHAR(20), v TEXT",
        "id bigint, name varchar(20), v text",
        &rows,
        &rows,
    )
    .await;
    let s = spec(&table, &["id"]);
    let r = compare(&s).await;
    assert!(r.equal);
    // No index on the target's key: one scan, not one per connection.
    assert_eq!(r.target_streams, 1);
    let p = pg().await;
    p.batch_execute(&format!(
        "DELETE FROM public.{table} WHERE id = 17;
         INSERT INTO public.{table} VALUES (9999, 'extra', NULL);
         UPDATE public.{table} SET v = '' WHERE id = 300;      -- NULL in MySQL
         UPDATE public.{table} SET v = NULL WHERE id = 301;    -- 'v301' in MySQL
         UPDATE public.{table} SET v = '<null>' WHERE id = 600; -- NULL in MySQL
         -- a duplicate key, with another row of its segment removed so the count still matches
         INSERT INTO public.{table} VALUES (2500, 'n2500', 'v2500');
         DELETE FROM public.{table} WHERE id = 2501;
         -- a row without a key (the warehouse enforces no primary key)
         INSERT INTO public.{table} VALUES (NULL, 'nokey', NULL);"
    ))
    .await
    .expect("seed");
    let mut reports = vec![compare(&s).await];
    // The same tables read as Redshift is read (a cursor over the simple query protocol, no COPY
    // TO STDOUT, no exported snapshot): the same findings.
    let mut redshift = s.clone();
    redshift.target_kind = cranium::db::DbKind::Redshift;
    reports.push(compare(&redshift).await);
    for r in reports {
        assert!(!r.equal);
        assert_eq!(keys(&r.missing_in_target), vec!["17", "2501"]);
        assert_eq!(keys(&r.only_in_target), vec!["9999"]);
        assert_eq!(keys(&r.duplicate_keys_in_target), vec!["2500"]);
        let mut differing: Vec<(String, Option<String>, Option<String>)> = r
            .differing
            .iter()
            .map(|d| {
                let v = &d.columns["v"];
                (d.key.join(","), v.source.clone(), v.target.clone())
            })
            .collect();
        differing.sort();
        assert_eq!(
            differing,
            vec![
                ("300".into(), None, Some(String::new())),
                ("301".into(), Some("v301".into()), None),
                ("600".into(), None, Some("<null>".into())),
            ]
        );
        assert_eq!(r.null_keys_in_target, 1);
        // 5,000 less 17 and 2501, plus 9999, the duplicate and the keyless row.
        assert_eq!((r.source_rows, r.target_rows), (5000, 5001));
        assert_eq!(r.differences, 8);
        assert!(r.source_bytes > 0 && r.target_bytes > 0);
    }
    drop_pair(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_encoding_cannot_make_different_rows_equal() {
    let table = unique("vt_ambiguous");
    pair(
        &table,
        "id INT PRIMARY KEY, a VARCHAR(10), b VARCHAR(10)",
        "id int, a varchar(10), b varchar(10)",
        "(1, 'x|', 'y'), (2, 'x,', 'y'), (3, NULL, 'z'), (4, '1:', '')",
        "(1, 'x', '|y'), (2, 'x', ',y'), (3, '<null>', 'z'), (4, '', ':')",
    )
    .await;
    let r = compare(&spec(&table, &["id"])).await;
    let got: Vec<String> = r.differing.iter().map(|d| d.key.join(",")).collect();
    assert_eq!(got, vec!["1", "2", "3", "4"], "{}", r.summary());
    drop_pair(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn string_keys_are_segmented_by_hash_and_matched_byte_for_byte() {
    let table = unique("vt_strkeys");
    // MySQL (general_ci) and PostgreSQL (C) order these differently; a range split would misalign.
    let names = ["a", "ab", "B", "c ", "é", "z", "Z1", "_x", "😀", "ss"];
    let rows: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("('{n}', {i})"))
        .collect();
    let rows = rows.join(",");
    pair(
        &table,
        "k VARCHAR(10) PRIMARY KEY, v INT",
        "k varchar(10), v int",
        &rows,
        &rows,
    )
    .await;
    let s = spec(&table, &["k"]);
    let r = compare(&s).await;
    assert!(r.equal, "{}", r.summary());
    assert_eq!(r.strategy, "hash");
    // A case-only change of a key: MySQL's collation calls them equal, the comparison does not.
    pg().await
        .batch_execute(&format!("UPDATE public.{table} SET k = 'A' WHERE k = 'a'"))
        .await
        .expect("case");
    let r = compare(&s).await;
    assert_eq!(keys(&r.missing_in_target), vec!["a"]);
    assert_eq!(keys(&r.only_in_target), vec!["A"]);
    drop_pair(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn composite_keys_and_float_tolerance() {
    let table = unique("vt_composite");
    pair(
        &table,
        "tenant INT, code VARCHAR(8), score DOUBLE, PRIMARY KEY (tenant, code)",
        "tenant int, code varchar(8), score double precision",
        "(1, 'a', 1.0), (1, 'b', 2.0), (2, 'a', 3.0)",
        "(1, 'a', 1.0000000001), (1, 'b', 2.0), (2, 'a', 3.5)",
    )
    .await;
    let mut s = spec(&table, &["tenant", "code"]);
    let r = compare(&s).await;
    let got: Vec<String> = r.differing.iter().map(|d| d.key.join(",")).collect();
    assert_eq!(got, vec!["1,a", "2,a"], "exact: {}", r.summary());
    s.float_tolerance = 1e-6;
    let r = compare(&s).await;
    let got: Vec<String> = r.differing.iter().map(|d| d.key.join(",")).collect();
    assert_eq!(got, vec!["2,a"], "within 1e-6: {}", r.summary());
    drop_pair(&table).await;
}

/// Restores the server's global time zone when dropped.
struct GlobalTimeZone;

impl Drop for GlobalTimeZone {
    fn drop(&mut self) {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Runtime::new().expect("rt");
            rt.block_on(async {
                let _ = mysql()
                    .await
                    .query_drop("SET GLOBAL time_zone = 'SYSTEM'")
                    .await;
            });
        })
        .join()
        .ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pooled_connection_reads_timestamps_in_utc() {
    let table = unique("vt_tz");
    let rows: Vec<String> = (1..=20_000)
        .map(|i| format!("({i}, FROM_UNIXTIME({}))", 1_700_000_000 + i * 37))
        .collect();
    let pg_rows: Vec<String> = (1..=20_000)
        .map(|i| format!("({i}, to_timestamp({}))", 1_700_000_000 + i * 37))
        .collect();
    pair(
        &table,
        "id INT PRIMARY KEY, t TIMESTAMP NULL",
        "id int PRIMARY KEY, t timestamptz",
        &rows.join(","),
        &pg_rows.join(","),
    )
    .await;
    // New connections now default to +02:00; each of the comparison's connections must set UTC.
    let _restore = GlobalTimeZone;
    mysql()
        .await
        .query_drop("SET GLOBAL time_zone = '+02:00'")
        .await
        .expect("global tz");
    let mut s = spec(&table, &["id"]);
    s.threads = 4;
    let r = compare(&s).await;
    assert!(r.equal, "{}", r.summary());
    assert!(r.segments >= 4);
    // The target's key is indexed: one key range per connection.
    assert_eq!(r.target_streams, 4);
    drop_pair(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_step_fail_on_a_mismatch_and_on_a_connection_error() {
    let table = unique("vt_exit");
    pair(
        &table,
        "id INT PRIMARY KEY, v INT",
        "id int, v int",
        "(1, 1), (2, 2)",
        "(1, 1), (2, 3)",
    )
    .await;
    let bin = env!("CARGO_BIN_EXE_cranium");
    let target = format!("public.{table}");
    let out = std::process::Command::new(bin)
        .args([
            "diff", MY, &table, PG, &target, "--key", "id", "--format", "json",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| !l.is_empty())
            .unwrap_or_default(),
    )
    .expect("json");
    assert_eq!(report["differing"][0]["key"], serde_json::json!(["2"]));
    assert_eq!(report["differing"][0]["columns"]["v"]["target"], "3");
    let out = std::process::Command::new(bin)
        .args([
            "diff",
            "mysql://root@127.0.0.1:1/test",
            &table,
            PG,
            &target,
            "--key",
            "id",
        ])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("source"),
        "{out:?}"
    );

    // As a step: the mismatch fails it and the report names the differing row.
    let dir = tempfile::tempdir().expect("tmp");
    project(
        dir.path(),
        &[(
            "verify",
            &format!(
                "job: verify\nschedule: \"@daily\"\nstart: 2026-01-01\nalerts: [oncall]\nsteps:\n  - id: check\n    kind: validate\n    retries: 2\n    source:\n      connection: production\n      table: {table}\n    target:\n      connection: warehouse\n      table: public.{table}\n      where: \"id < 100\"\n    key: id\n    report: \"reports/{{{{ ds }}}}.json\"\n"
            ),
        )],
    );
    // The job's alert channel: a command that keeps what it is sent.
    let mut cfg = std::fs::read_to_string(dir.path().join("cranium.yaml")).expect("cfg");
    cfg.push_str(
        "alerts:\n  oncall:\n    kind: command\n    command: [sh, -c, \"cat > alert.json\"]\n",
    );
    std::fs::write(dir.path().join("cranium.yaml"), cfg).expect("cfg");
    let e = engine(dir.path()).await;
    let r = run_job(&e, "verify", day("2026-03-01")).await;
    assert_eq!(r.steps[0].state, StepState::Failed, "{r:?}");
    let alert: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("alert.json")).expect("the alert was sent"),
    )
    .expect("alert json");
    assert_eq!(alert["kind"], "validate_mismatch");
    assert_eq!(alert["job"], "verify");
    assert_eq!(alert["differences"], 1);
    assert!(
        alert["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("key 2: v: 2 → 3"),
        "{alert}"
    );
    assert_eq!(
        r.steps[0].attempts, 1,
        "a mismatch is a finding, not retried: {r:?}"
    );
    let text = format!("{r:?}");
    assert!(
        text.contains("mismatch beyond the tolerance of 0 rows"),
        "{text}"
    );
    assert!(text.contains("key 2: v: 2 → 3"), "{text}");
    let report =
        std::fs::read_to_string(dir.path().join("reports/2026-03-01.json")).expect("report");
    assert!(report.contains("\"differing\""), "{report}");

    // With the alert queue (as `cranium run` and the daemon have it), the mismatch goes through
    // it like every other alert.
    let cfg = std::fs::read_to_string(dir.path().join("cranium.yaml")).expect("cfg");
    std::fs::write(
        dir.path().join("cranium.yaml"),
        cfg.replace(
            "cat > alert.json",
            "cat >> alerts.jsonl; echo >> alerts.jsonl",
        ),
    )
    .expect("cfg");
    let mut e = engine(dir.path()).await;
    e.notifier = Some(cranium::alerts::Notifier::new(
        e.project.clone(),
        e.store.clone(),
    ));
    let r = run_job(&e, "verify", day("2026-03-02")).await;
    assert_eq!(r.steps[0].state, StepState::Failed, "{r:?}");
    cranium::alerts::deliver::drain(&e.project, &e.store, std::time::Duration::from_secs(20)).await;
    let sent: Vec<serde_json::Value> = std::fs::read_to_string(dir.path().join("alerts.jsonl"))
        .expect("alerts")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let events: Vec<&str> = sent
        .iter()
        .map(|a| a["event"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        events,
        ["validate_mismatch", "step_failed", "run_failed"],
        "{sent:#?}"
    );
    assert_eq!(sent[0]["details"]["differences"], 1);
    assert!(sent[0]["summary"]
        .as_str()
        .unwrap_or("")
        .contains("key 2: v: 2 → 3"));
    let queued = e.store.alerts(Some("verify"), 0).await.expect("alerts");
    assert!(queued
        .iter()
        .all(|a| a.state == cranium::store::AlertState::Sent));
    drop_pair(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_sides_compare_what_they_select() {
    let table = unique("vt_query");
    pair(
        &table,
        "id INT PRIMARY KEY, v INT, amount DECIMAL(8,2), at DATETIME(3)",
        "id int, v int, amount numeric, at timestamp(3)",
        "(1, 10, 1.50, '2026-03-01 00:00:00.100'), (2, 20, 2.00, '2026-03-01 00:00:00'), \
         (3, 30, 3.00, '2026-03-01 00:00:00')",
        "(1, 10, 1.5, '2026-03-01 00:00:00.1'), (2, 21, 2, '2026-03-01 00:00:00'), \
         (3, 99, 3, '2026-03-01 00:00:00')",
    )
    .await;
    let mut s = spec(&table, &["id"]);
    s.source.query = Some(format!(
        "SELECT id, v * 2 AS double_v, amount, at FROM {table} WHERE id < 3"
    ));
    s.target.query = Some(format!(
        "SELECT id, v * 2 AS double_v, amount, at FROM public.{table} WHERE id < 3;"
    ));
    let r = compare(&s).await;
    assert_eq!((r.source_rows, r.target_rows), (2, 2), "{}", r.summary());
    assert_eq!(r.differing.len(), 1, "{}", r.summary());
    assert_eq!(r.differing[0].key, vec!["2".to_string()]);
    let v = &r.differing[0].columns["double_v"];
    assert_eq!(
        (v.source.as_deref(), v.target.as_deref()),
        (Some("40"), Some("42"))
    );
    drop_pair(&table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tolerance_and_on_mismatch_warn_let_the_step_succeed() {
    let table = unique("vt_tolerance");
    pair(
        &table,
        "id INT PRIMARY KEY, v INT",
        "id int, v int",
        "(1, 1), (2, 2), (3, 3), (4, 4)",
        "(1, 1), (2, 20), (3, 30), (4, 4)",
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    let step = |id: &str, extra: &str| {
        format!(
            "  - id: {id}\n    kind: validate\n    retries: 0\n    source:\n      connection: production\n      table: {table}\n    target:\n      connection: warehouse\n      table: public.{table}\n    key: id\n{extra}"
        )
    };
    project(
        dir.path(),
        &[(
            "verify",
            &format!(
                "job: verify\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n{}{}{}{}",
                step("two_rows_allowed", "    tolerance: 2\n"),
                step("one_row_allowed", "    tolerance: 1\n"),
                step("half_allowed", "    tolerance: \"50%\"\n"),
                step("warn_only", "    on_mismatch: warn\n"),
            ),
        )],
    );
    let e = engine(dir.path()).await;
    let r = run_job(&e, "verify", day("2026-03-01")).await;
    let state = |id: &str| {
        r.steps
            .iter()
            .find(|s| s.step == id)
            .map(|s| s.state)
            .unwrap_or_else(|| panic!("no step {id}"))
    };
    assert_eq!(state("two_rows_allowed"), StepState::Success, "{r:?}");
    assert_eq!(state("one_row_allowed"), StepState::Failed, "{r:?}");
    assert_eq!(state("half_allowed"), StepState::Success, "{r:?}");
    assert_eq!(state("warn_only"), StepState::Success, "{r:?}");
    drop_pair(&table).await;
}
