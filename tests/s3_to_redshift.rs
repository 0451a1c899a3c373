//! `s3_to_redshift` (dialect postgres) against the real MariaDB, S3 server and PostgreSQL: a MySQL
//! table through S3 into PostgreSQL with equal values, reruns that add nothing, merge, replace_interval,
//! and a bad line that names its object and line and leaves the target as it was.

mod support;

use std::io::Write;
use std::path::Path;

use cranium::engine::{Engine, RunReport};
use cranium::schedule::Interval;
use cranium::store::StepState;
use mysql_async::prelude::Queryable;
use support::*;

/// A project with one job `j`
/// with `steps` (YAML list items), and its engine.
async fn setup(dir: &Path, steps: &str) -> Engine {
    project(
        dir,
        &[(
            "j",
            &format!("job: j\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n{steps}"),
        )],
    );
    engine(dir).await
}

async fn run(e: &Engine, iv: Interval) -> RunReport {
    run_job(e, "j", iv).await
}

fn state(r: &RunReport, step: &str) -> StepState {
    r.steps
        .iter()
        .find(|s| s.step == step)
        .map(|s| s.state)
        .unwrap_or_else(|| panic!("no step {step}"))
}

fn gz(lines: &[&str]) -> bytes::Bytes {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        e.write_all(l.as_bytes()).expect("gz");
        e.write_all(b"\n").expect("gz");
    }
    e.finish().expect("gz").into()
}

async fn rows(sql: &str) -> Vec<Vec<Option<String>>> {
    pg().await
        .query(sql, &[])
        .await
        .expect("query")
        .iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<_, Option<String>>(i))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_through_s3_into_postgres_with_equal_values_and_reruns_add_nothing() {
    let table = unique("rt");
    let mut my = mysql().await;
    my.query_drop(format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, amount DECIMAL(20,6), created DATETIME(6),
           seen TIMESTAMP(3) NULL, born DATE, active TINYINT(1), big BIGINT UNSIGNED, ratio DOUBLE,
           doc JSON, color ENUM('red','green'), pic BLOB, name VARCHAR(50), note TEXT)
         CHARACTER SET utf8mb4"
    ))
    .await
    .expect("create");
    my.query_drop(format!(
        "INSERT INTO {table} VALUES
          (1, 12345678901234.123456, '2026-03-01 12:34:56.123456', '2026-03-01 23:59:59.5',
           '2026-03-01', 1, 18446744073709551615, 0.1, '{{\"a\": [1, 2]}}', 'green', x'00FF10',
           'Zoë 🎉 tab\there', ''),
          (2, NULL, NULL, NULL, NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
    ))
    .await
    .expect("insert");
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE public.{table} (id int PRIMARY KEY, amount numeric(20,6), created timestamp(6),
           seen timestamptz, born date, active boolean, big numeric(20,0), ratio double precision,
           doc jsonb, color text, pic text, name text, note text);
         CREATE TABLE public.{table}_csv (LIKE public.{table})"
    ))
    .await
    .expect("pg create");

    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/rt");
    let e = setup(
        dir.path(),
        &format!(
            "  - id: dump\n    kind: mysql_to_s3\n    connection: production\n    table: {table}\n    s3: lake\n    prefix: {prefix}\n  - id: load\n    kind: s3_to_redshift\n    after: [dump]\n    connection: warehouse\n    s3: lake\n    source:\n      manifests_from: dump\n    target: public.{table}\n    retries: 0\n  - id: dump_csv\n    kind: mysql_to_s3\n    connection: production\n    table: {table}\n    s3: lake\n    prefix: {prefix}/csv\n    format: csv.gz\n  - id: load_csv\n    kind: s3_to_redshift\n    after: [dump_csv]\n    connection: warehouse\n    s3: lake\n    source:\n      manifests_from: dump_csv\n    target: public.{table}_csv\n    format: csv.gz\n    retries: 0\n"
        ),
    )
    .await;
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Success, "{r:?}");
    assert_eq!(state(&r, "load_csv"), StepState::Success, "{r:?}");
    let select = |t: &str| {
        format!(
            "SELECT id::text, amount::text, created::text, (seen AT TIME ZONE 'UTC')::text, born::text,
                    active::text, big::text, ratio::text, doc::text, color, pic, name, note
             FROM public.{t} ORDER BY id"
        )
    };
    let got = rows(&select(&table)).await;
    // The same values through csv.gz.
    assert_eq!(got, rows(&select(&format!("{table}_csv"))).await);
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        got,
        vec![
            vec![
                s("1"),
                s("12345678901234.123456"),
                s("2026-03-01 12:34:56.123456"),
                s("2026-03-01 23:59:59.5"),
                s("2026-03-01"),
                s("true"),
                s("18446744073709551615"),
                s("0.1"),
                s(r#"{"a": [1, 2]}"#),
                s("green"),
                s("AP8Q"),
                s("Zoë 🎉 tab\there"),
                s(""),
            ],
            vec![
                s("2"),
                None,
                None,
                None,
                None,
                s("false"),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ],
        ]
    );
    // The whole job again: the export rewrites the same object, the load skips it.
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Success, "{r:?}");
    let n: i64 = pg_count(&format!("SELECT count(*) FROM public.{table}")).await;
    assert_eq!(n, 2, "a rerun adds nothing");
    let n: i64 = pg_count(&format!("SELECT count(*) FROM public.{table}_csv")).await;
    assert_eq!(n, 2, "a rerun of the csv load adds nothing");
    let tracked = loaded_objects(&format!("public.{table}")).await;
    assert_eq!(tracked, 1);
    // The export's object changed after its manifest was written: the load refuses it, names
    // the step to rerun, and loads nothing.
    let (s3c, bucket) = s3();
    let key = s3c
        .list(&bucket, &format!("{prefix}/"))
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.key)
        .find(|k| k.ends_with(".jsonl.gz"))
        .expect("the export's object");
    s3c.put(&bucket, &key, gz(&[r#"{"id": 3}"#]), "application/gzip")
        .await
        .expect("overwrite");
    // Only the load runs again (rerun: failed and cleared steps; the export's record stands).
    let iv = day("2026-03-01");
    e.store
        .clear("j", iv.start, iv.end, &["load".to_string()])
        .await
        .expect("clear");
    let opts = cranium::engine::RunOptions {
        steps: vec!["load".into()],
        ..Default::default()
    };
    let r = e
        .run_interval("j", iv, &opts, tokio_util::sync::CancellationToken::new())
        .await
        .expect("run");
    assert_eq!(state(&r, "load"), StepState::Failed, "{r:?}");
    let err = r
        .steps
        .iter()
        .find(|s| s.step == "load")
        .and_then(|s| s.error.clone())
        .unwrap_or_default();
    assert!(
        err.contains(&format!(
            "s3://{bucket}/{key} changed after its manifest was written"
        )) && err.contains("rerun 'dump' for this interval"),
        "{err}"
    );
    let n: i64 = pg_count(&format!("SELECT count(*) FROM public.{table}")).await;
    assert_eq!(n, 2, "nothing of the changed object was loaded");
    my.query_drop(format!("DROP TABLE {table}"))
        .await
        .expect("drop");
    db.batch_execute(&format!(
        "DROP TABLE public.{table}; DROP TABLE public.{table}_csv"
    ))
    .await
    .expect("drop");
    s3c.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_keeps_the_latest_replace_interval_replaces_and_a_bad_line_changes_nothing() {
    let t = unique("merge");
    let db = pg().await;
    db.batch_execute(&format!(
        "CREATE TABLE public.{t} (id int PRIMARY KEY, v text, ts bigint, at timestamptz);
         INSERT INTO public.{t} VALUES (2, 'old', 0, '2026-03-01 05:00+00'), (9, 'kept', 0, '2026-02-27 05:00+00');"
    ))
    .await
    .expect("pg");
    let (s3c, bucket) = s3();
    let prefix = unique("cranium-tests/merge");
    s3c.put(
        &bucket,
        &format!("{prefix}/a.jsonl.gz"),
        gz(&[
            r#"{"id": 1, "v": "a", "ts": 1, "at": "2026-03-01T01:00:00Z"}"#,
            r#"{"id": 1, "v": "b", "ts": 2, "at": "2026-03-01T02:00:00Z"}"#,
            r#"{"id": 2, "v": "c", "ts": 1, "at": "2026-03-01T03:00:00Z"}"#,
        ]),
        "application/gzip",
    )
    .await
    .expect("put");
    let step = |mode: &str| {
        format!(
            "  - id: load\n    kind: s3_to_redshift\n    connection: warehouse\n    s3: lake\n    source:\n      prefix: {prefix}/\n    target: public.{t}\n    retries: 0\n{mode}"
        )
    };
    let dir = tempfile::tempdir().expect("tmp");
    let e = setup(
        dir.path(),
        &step("    mode: merge\n    key: id\n    order_by: ts\n"),
    )
    .await;
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Success, "{r:?}");
    let got = rows(&format!("SELECT id::text, v FROM public.{t} ORDER BY id")).await;
    let pair = |a: &str, b: &str| vec![Some(a.to_string()), Some(b.to_string())];
    assert_eq!(got, vec![pair("1", "b"), pair("2", "c"), pair("9", "kept")]);

    // A bad line in a new object: the load fails naming it, and nothing changes.
    let bad_key = format!("{prefix}/b.jsonl.gz");
    s3c.put(
        &bucket,
        &bad_key,
        gz(&[
            r#"{"id": 3, "v": "d", "ts": 1}"#,
            r#"{"id": 4, "v": "e", "ts": 1}"#,
            r#"{"id": 5, "v": "#,
        ]),
        "application/gzip",
    )
    .await
    .expect("put");
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Failed, "{r:?}");
    let err = r.steps[0].error.clone().unwrap_or_default();
    assert!(
        err.contains(&format!("s3://{bucket}/{bad_key} line 3: not valid JSON")),
        "{err}"
    );
    let got = rows(&format!("SELECT id::text, v FROM public.{t} ORDER BY id")).await;
    assert_eq!(got, vec![pair("1", "b"), pair("2", "c"), pair("9", "kept")]);

    // A value PostgreSQL refuses: the error names the object, and nothing changes.
    s3c.put(
        &bucket,
        &bad_key,
        gz(&[r#"{"id": "three", "v": "d"}"#]),
        "application/gzip",
    )
    .await
    .expect("put");
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Failed, "{r:?}");
    let err = r.steps[0].error.clone().unwrap_or_default();
    assert!(
        err.contains(&format!("s3://{bucket}/{bad_key}")) && err.contains("three"),
        "{err}"
    );
    s3c.delete(&bucket, &bad_key).await.expect("delete");

    // replace_interval: the day's rows go, rows of other days stay, the objects load again.
    let e = setup(
        dir.path(),
        &step("    mode: replace_interval\n    time_column: at\n"),
    )
    .await;
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Failed, "{r:?}");
    assert!(
        r.steps[0]
            .error
            .clone()
            .unwrap_or_default()
            .contains("duplicate key"),
        "the object holds id 1 twice: {r:?}"
    );
    db.batch_execute(&format!("ALTER TABLE public.{t} DROP CONSTRAINT {t}_pkey"))
        .await
        .expect("drop pk");
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Success, "{r:?}");
    let got = rows(&format!(
        "SELECT id::text, v FROM public.{t} ORDER BY id, v"
    ))
    .await;
    assert_eq!(
        got,
        vec![
            pair("1", "a"),
            pair("1", "b"),
            pair("2", "c"),
            pair("9", "kept")
        ]
    );
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Success, "{r:?}");
    let n: i64 = pg_count(&format!("SELECT count(*) FROM public.{t}")).await;
    assert_eq!(n, 4, "replace_interval reruns replace, never add");
    db.batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
    s3c.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

/// `cranium run` killed with SIGKILL while its COPY runs: no row of the load is left behind, and the
/// next run loads everything once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_killed_mid_copy_leaves_nothing_and_the_rerun_completes() {
    const OBJECTS: usize = 12;
    const ROWS: usize = 25_000;
    let t = unique("killed");
    let db = pg().await;
    db.batch_execute(&format!("CREATE TABLE public.{t} (id int, v text)"))
        .await
        .expect("pg");
    let (s3c, bucket) = s3();
    let prefix = unique("cranium-tests/killed");
    for o in 0..OBJECTS {
        let lines: Vec<String> = (0..ROWS)
            .map(|i| {
                format!(
                    r#"{{"id": {}, "v": "row {i} of object {o}, padded to be a little longer"}}"#,
                    o * ROWS + i
                )
            })
            .collect();
        let refs: Vec<&str> = lines.iter().map(|l| l.as_str()).collect();
        s3c.put(
            &bucket,
            &format!("{prefix}/o{o:02}.jsonl.gz"),
            gz(&refs),
            "application/gzip",
        )
        .await
        .expect("put");
    }
    let dir = tempfile::tempdir().expect("tmp");
    setup(
        dir.path(),
        &format!(
            "  - id: load\n    kind: s3_to_redshift\n    connection: warehouse\n    s3: lake\n    source:\n      prefix: {prefix}/\n    target: public.{t}\n    retries: 0\n"
        ),
    )
    .await;
    let cranium = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cranium"));
        c.args(["run", "j", "--at", "2026-03-01"])
            .args(extra)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c
    };
    let mut child = cranium(&[]).spawn().expect("spawn");
    // Kill it once its COPY into the table is running.
    let started = std::time::Instant::now();
    loop {
        let copying: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1",
                &[&format!("COPY \"public\".\"{t}\"%")],
            )
            .await
            .expect("activity")
            .get(0);
        if copying > 0 {
            break;
        }
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the load ended before it could be killed"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no COPY started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    // The server notices the dropped connection and rolls the transaction back.
    let mut n: i64 = -1;
    for _ in 0..100 {
        n = pg_count(&format!("SELECT count(*) FROM public.{t}")).await;
        let open: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1",
                &[&format!("COPY \"public\".\"{t}\"%")],
            )
            .await
            .expect("activity")
            .get(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(n, 0, "no row of the killed load is visible");

    // The next run takes the interrupted one over and loads everything, once; another adds nothing.
    for _ in 0..2 {
        let out = cranium(&["--recover-after", "0s"]).output().expect("run");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let row = db
            .query_one(
                &format!("SELECT count(*), count(DISTINCT id) FROM public.{t}"),
                &[],
            )
            .await
            .expect("count");
        let (total, distinct): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            (total, distinct),
            ((OBJECTS * ROWS) as i64, (OBJECTS * ROWS) as i64)
        );
    }
    db.batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
    s3c.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

/// The redshift dialect, against PostgreSQL (which cannot COPY from S3): the manifest and JSONPaths
/// files it writes to S3 are exact, the COPY it sends is Redshift's, and its failure rolls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redshift_dialect_writes_its_manifest_and_rolls_back_a_failed_copy() {
    let t = unique("rs");
    let db = pg().await;
    db.batch_execute(&format!("CREATE TABLE public.{t} (id int, v text)"))
        .await
        .expect("pg");
    let (s3c, bucket) = s3();
    let prefix = unique("cranium-tests/rs");
    let key = format!("{prefix}/a.jsonl.gz");
    let body = gz(&[r#"{"ID": 1, "v": "a"}"#]);
    let len = body.len();
    s3c.put(&bucket, &key, body, "application/gzip")
        .await
        .expect("put");
    let dir = tempfile::tempdir().expect("tmp");
    let e = setup(
        dir.path(),
        &format!(
            "  - id: load\n    kind: s3_to_redshift\n    connection: warehouse\n    dialect: redshift\n    iam_role: arn:aws:iam::123456789012:role/load\n    s3: lake\n    source:\n      prefix: {prefix}/\n    target: public.{t}\n    columns:\n      id: $.ID\n      v: $.v\n    retries: 0\n"
        ),
    )
    .await;
    let r = run(&e, day("2026-03-01")).await;
    assert_eq!(state(&r, "load"), StepState::Failed, "{r:?}");
    let err = r.steps[0].error.clone().unwrap_or_default();
    assert!(err.contains("the load was rolled back"), "{err}");
    // The COPY manifest and the JSONPaths file are in S3.
    let loads = s3c
        .list(&bucket, &format!("_cranium/loads/public.{t}/"))
        .await
        .expect("list");
    let get = |suffix: &str| {
        let k = loads
            .iter()
            .find(|o| o.key.ends_with(suffix))
            .map(|o| o.key.clone())
            .unwrap_or_else(|| panic!("no {suffix} in {loads:?}"));
        let s3c = &s3c;
        let bucket = &bucket;
        async move {
            serde_json::from_slice::<serde_json::Value>(&s3c.get(bucket, &k).await.expect("get"))
                .expect("json")
        }
    };
    let m = get(".manifest").await;
    assert_eq!(
        m,
        serde_json::json!({"entries": [{"url": format!("s3://{bucket}/{key}"), "mandatory": true,
                                        "meta": {"content_length": len}}]})
    );
    let j = get(".jsonpaths").await;
    assert_eq!(j, serde_json::json!({"jsonpaths": ["$['ID']", "$['v']"]}));
    // Nothing was loaded or recorded.
    let n: i64 = pg_count(&format!("SELECT count(*) FROM public.{t}")).await;
    assert_eq!(n, 0);
    let tracked = loaded_objects(&format!("public.{t}")).await;
    assert_eq!(tracked, 0);
    db.batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
    s3c.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
    s3c.delete_prefix(&bucket, &format!("_cranium/loads/public.{t}/"))
        .await
        .expect("clean");
}

/// Corrupt objects in the lake: each is an error naming the object (and the line, where there is
/// one) with what is wrong, the load writes nothing, and memory stays bounded (a 200 MB line is
/// refused at the line limit, not read whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_objects_are_errors_naming_the_object_and_line_and_load_nothing() {
    let t = unique("corrupt");
    let db = pg().await;
    db.batch_execute(&format!("CREATE TABLE public.{t} (id int, v text)"))
        .await
        .expect("pg");
    let (s3c, bucket) = s3();
    let good: Vec<String> = (0..2000)
        .map(|i| format!(r#"{{"id": {i}, "v": "row {i} of a batch"}}"#))
        .collect();
    let good_refs: Vec<&str> = good.iter().map(String::as_str).collect();
    let truncated = {
        let full = gz(&good_refs);
        full.slice(..full.len() / 2)
    };
    // As cranium writes zstd: with a frame checksum.
    let zst = || {
        let mut e = zstd::Encoder::new(Vec::new(), 3).expect("zstd");
        e.include_checksum(true).expect("checksum");
        e.write_all(good.join("\n").as_bytes()).expect("zstd");
        e.finish().expect("zstd")
    };
    let bad_header = {
        let mut z = zst();
        z[0] ^= 0xff;
        bytes::Bytes::from(z)
    };
    let flipped = {
        let mut z = zst();
        let n = z.len();
        for b in &mut z[n / 3..n / 3 + 64] {
            *b ^= 0x5a;
        }
        bytes::Bytes::from(z)
    };
    let deep = format!(
        "{{\"id\": 1, \"v\": {}{}}}\n",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let long = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"{\"id\": 1, \"v\": \"").expect("gz");
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..200 {
            e.write_all(&chunk).expect("gz");
        }
        e.write_all(b"\"}\n").expect("gz");
        bytes::Bytes::from(e.finish().expect("gz"))
    };
    let decompress = "cannot decompress the object";
    let cases: Vec<(&str, bytes::Bytes, &str, &str)> = vec![
        ("truncated.jsonl.gz", truncated, "line", decompress),
        (
            "bad-header.jsonl.zst",
            bad_header,
            "line 1",
            "Unknown frame descriptor",
        ),
        (
            "flipped-bytes.jsonl.zst",
            flipped,
            "line",
            "doesn't match checksum",
        ),
        (
            "utf8.jsonl",
            bytes::Bytes::from(
                &b"{\"id\": 1, \"v\": \"ok\"}\n{\"id\": 2, \"v\": \"\xff\xfe\"}\n"[..],
            ),
            "line 2",
            "not valid JSON: invalid unicode",
        ),
        (
            "nul-escaped.jsonl",
            bytes::Bytes::from(&b"{\"id\": 1, \"v\": \"a\\u0000b\"}\n"[..]),
            "line 1",
            "column v: text cannot contain the character NUL",
        ),
        (
            "nul-raw.jsonl",
            bytes::Bytes::from(&b"{\"id\": 1, \"v\": \"a\x00b\"}\n"[..]),
            "line 1",
            "not valid JSON: control character",
        ),
        (
            "deep.jsonl",
            bytes::Bytes::from(deep),
            "line 1",
            "recursion limit exceeded",
        ),
        (
            "long.jsonl.gz",
            long,
            "line 1",
            "the line is longer than 16 MiB",
        ),
    ];
    for (name, body, at, what) in cases {
        let prefix = unique("cranium-tests/corrupt");
        let key = format!("{prefix}/{name}");
        let format = if name.ends_with(".gz") {
            "jsonl.gz"
        } else if name.ends_with(".zst") {
            "jsonl.zst"
        } else {
            "jsonl"
        };
        s3c.put(&bucket, &key, body, "application/octet-stream")
            .await
            .expect("put");
        let dir = tempfile::tempdir().expect("tmp");
        let e = setup(
            dir.path(),
            &format!(
                "  - id: load\n    kind: s3_to_redshift\n    connection: warehouse\n    s3: lake\n    source:\n      prefix: {prefix}/\n    format: {format}\n    target: public.{t}\n    retries: 0\n"
            ),
        )
        .await;
        let r = run(&e, day("2026-03-01")).await;
        assert_eq!(state(&r, "load"), StepState::Failed, "{name}: {r:?}");
        let err = r.steps[0].error.clone().unwrap_or_default();
        assert!(
            err.contains(&format!("s3://{bucket}/{key} {at}")) && err.contains(what),
            "{name}: the error names the object, {at} and '{what}': {err}"
        );
        if what == decompress {
            assert!(err.contains("truncated or corrupt"), "{err}");
        }
        assert_eq!(
            pg_count(&format!("SELECT count(*) FROM public.{t}")).await,
            0,
            "{name}: nothing loaded"
        );
        s3c.delete_prefix(&bucket, &format!("{prefix}/"))
            .await
            .expect("clean");
    }
    db.batch_execute(&format!("DROP TABLE public.{t}"))
        .await
        .expect("drop");
}
