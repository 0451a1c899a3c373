//! `mysql_to_s3` against the real MariaDB and S3 server: every MySQL type through the documented JSON
//! mapping, keyset pagination, incremental exports, CSV.

mod support;

use std::path::Path;

use cranium::engine::Engine;
use cranium::schedule::Interval;
use cranium::store::StepState;
use mysql_async::prelude::Queryable;
use support::*;

/// A project with one job `export` with one
/// step `dump` of `step` (the kind-specific lines), and its engine.
async fn setup(dir: &Path, step: &str) -> Engine {
    project(
        dir,
        &[(
            "export",
            &format!(
                "job: export\nschedule: \"@daily\"\nstart: 2026-01-01\nsteps:\n  - id: dump\n    kind: mysql_to_s3\n    connection: production\n    s3: lake\n    retries: 0\n{step}"
            ),
        )],
    );
    engine(dir).await
}

async fn run(e: &Engine, iv: Interval) -> (StepState, String) {
    let r = run_job(e, "export", iv).await;
    (r.steps[0].state, format!("{r:?}"))
}

async fn lines(prefix: &str) -> Vec<String> {
    let (s3, bucket) = s3();
    read_objects(&s3, &bucket, &format!("{prefix}/"))
        .await
        .into_iter()
        .filter(|(k, _)| !k.ends_with("_manifest.json"))
        .flat_map(|(_, l)| l)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mysql_type_maps_to_documented_json() {
    let table = unique("types");
    let mut c = mysql().await;
    c.query_drop(format!(
        "CREATE TABLE {table} (
            id INT PRIMARY KEY,
            amount DECIMAL(20,6), price DECIMAL(5,2),
            created DATETIME(6), seen TIMESTAMP(3) NULL, born DATE, took TIME(3),
            flags BIT(5), active TINYINT(1), small SMALLINT, big BIGINT UNSIGNED, ratio DOUBLE, f FLOAT,
            doc JSON, color ENUM('red','green'), tags SET('a','b','c'),
            pic BLOB, hash VARBINARY(8), name VARCHAR(50), note TEXT
        ) CHARACTER SET utf8mb4"
    ))
    .await
    .expect("create");
    c.query_drop(format!(
        "INSERT INTO {table} VALUES
          (1, 12345678901234.123456, -0.50, '2026-03-01 12:34:56.123456', '2026-03-01 23:59:59.5',
           '2026-03-01', '-838:59:59.000', b'10101', 1, -32768, 18446744073709551615, 0.1, 1.5,
           '{{\"a\": [1, 2], \"b\": null}}', 'green', 'a,c', x'00FF10', x'DEADBEEF', 'Zoë 🎉', ''),
          (2, NULL, NULL, '0000-00-00 00:00:00', NULL, '0000-00-00', NULL, NULL, 0, NULL, NULL, NULL,
           NULL, NULL, NULL, '', NULL, NULL, NULL, NULL)"
    ))
    .await
    .expect("insert");

    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/types");
    let e = setup(
        dir.path(),
        &format!("    table: {table}\n    prefix: {prefix}\n"),
    )
    .await;
    let (state, report) = run(&e, day("2026-03-01")).await;
    assert_eq!(state, StepState::Success, "{report}");
    let got: Vec<serde_json::Value> = lines(&prefix)
        .await
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let want = vec![
        serde_json::json!({
            "id": 1, "amount": "12345678901234.123456", "price": "-0.50",
            "created": "2026-03-01T12:34:56.123456", "seen": "2026-03-01T23:59:59.500000Z",
            "born": "2026-03-01", "took": "-838:59:59", "flags": 21, "active": true,
            "small": -32768, "big": 18446744073709551615u64, "ratio": 0.1, "f": 1.5,
            "doc": {"a": [1, 2], "b": null}, "color": "green", "tags": "a,c",
            "pic": "AP8Q", "hash": "3q2+7w==", "name": "Zoë 🎉", "note": "",
        }),
        serde_json::json!({
            "id": 2, "amount": null, "price": null, "created": null, "seen": null, "born": null,
            "took": null, "flags": null, "active": false, "small": null, "big": null, "ratio": null,
            "f": null, "doc": null, "color": null, "tags": "", "pic": null, "hash": null,
            "name": null, "note": null,
        }),
    ];
    assert_eq!(got, want);
    c.query_drop(format!("DROP TABLE {table}"))
        .await
        .expect("drop");
    let (s3, bucket) = s3();
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_by_key_and_exports_only_the_interval_incrementally() {
    let table = unique("events");
    let mut c = mysql().await;
    c.query_drop(format!(
        "CREATE TABLE {table} (id INT PRIMARY KEY, updated_at DATETIME NOT NULL, v VARCHAR(10))"
    ))
    .await
    .expect("create");
    // 2,500 rows inserted out of key order; ids 1..=2500, a third of them updated on 2026-03-02.
    let mut values = Vec::new();
    for i in (1..=2500).rev() {
        let day = if i % 3 == 0 {
            "2026-03-02"
        } else {
            "2026-03-01"
        };
        values.push(format!("({i}, '{day} 10:00:00', 'v{i}')"));
    }
    c.query_drop(format!("INSERT INTO {table} VALUES {}", values.join(",")))
        .await
        .expect("insert");

    let dir = tempfile::tempdir().expect("tmp");
    let prefix = unique("cranium-tests/pages");
    let e = setup(
        dir.path(),
        &format!("    table: {table}\n    prefix: {prefix}/full\n    chunk_size: 1000\n"),
    )
    .await;
    let (state, report) = run(&e, day("2026-03-01")).await;
    assert_eq!(state, StepState::Success, "{report}");
    let ids: Vec<u64> = lines(&format!("{prefix}/full"))
        .await
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["id"]
                .as_u64()
                .expect("id")
        })
        .collect();
    assert_eq!(
        ids,
        (1..=2500).collect::<Vec<u64>>(),
        "every row once, in key order"
    );

    // Incremental, as CSV: only the rows updated on 2026-03-02.
    let e = setup(
        dir.path(),
        &format!(
            "    table: {table}\n    prefix: {prefix}/inc\n    mode: incremental\n    incremental_column: updated_at\n    chunk_size: 300\n    format: csv.gz\n"
        ),
    )
    .await;
    let (state, report) = run(&e, day("2026-03-02")).await;
    assert_eq!(state, StepState::Success, "{report}");
    let csv = lines(&format!("{prefix}/inc")).await;
    assert_eq!(csv[0], r#""id","updated_at","v""#);
    assert_eq!(csv.len(), 1 + 833);
    assert_eq!(csv[1], r#"3,"2026-03-02T10:00:00","v3""#);
    c.query_drop(format!("DROP TABLE {table}"))
        .await
        .expect("drop");
    let (s3, bucket) = s3();
    s3.delete_prefix(&bucket, &format!("{prefix}/"))
        .await
        .expect("clean");
}
