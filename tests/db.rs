//! Tests of the database connectors (`cranium::db`) against real servers.
//!
//! The connectors' promises (all-or-nothing scripts, errors naming the statement and the server's
//! code, deadlines and cancellation that stop the query on the server, typed JSON results, secrets
//! kept out of messages) only mean something against real PostgreSQL and MariaDB/MySQL, so these
//! tests use them: `CRANIUM_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`) and
//! `CRANIUM_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`). Each test creates its own
//! uniquely named tables and drops them.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cranium::db::{redact_url, DbClient, DbError, DbKind};
use cranium::sql::{split_statements, Dialect, StatementSource};
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn pg_url() -> String {
    std::env::var("CRANIUM_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn my_url() -> String {
    std::env::var("CRANIUM_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// A table name unique to this process and call.
fn table(label: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "cranium_db_{label}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn pg() -> DbClient {
    DbClient::connect(DbKind::Postgres, &pg_url(), CONNECT_TIMEOUT)
        .await
        .expect("connect to PostgreSQL")
}

async fn my() -> DbClient {
    DbClient::connect(DbKind::MySql, &my_url(), CONNECT_TIMEOUT)
        .await
        .expect("connect to MariaDB/MySQL")
}

fn script(dialect: Dialect, sql: &str) -> Vec<StatementSource> {
    split_statements(dialect, sql).expect("script splits")
}

fn no_cancel() -> CancellationToken {
    CancellationToken::new()
}

/// Run a script outside a transaction, without deadline, expecting success.
async fn run(client: &mut DbClient, dialect: Dialect, sql: &str) -> Vec<u64> {
    client
        .run_script(&script(dialect, sql), false, None, &no_cancel())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|o| o.rows_affected)
        .collect()
}

async fn query(client: &mut DbClient, sql: &str, params: &[Value]) -> Vec<Map<String, Value>> {
    client
        .query(sql, params, None, &no_cancel())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn count(client: &mut DbClient, table: &str) -> i64 {
    let rows = query(client, &format!("SELECT COUNT(*) AS n FROM {table}"), &[]).await;
    rows[0]["n"].as_i64().expect("count is an integer")
}

async fn drop_table(client: &mut DbClient, dialect: Dialect, table: &str) {
    run(client, dialect, &format!("DROP TABLE IF EXISTS {table}")).await;
}

fn expect_statement_error(err: DbError) -> (usize, Option<String>, String) {
    match err {
        DbError::Statement {
            statement,
            code,
            message,
        } => (statement, code, message),
        other => panic!("expected a statement error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scripts: transactions, errors, rows affected
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pg_failing_statement_rolls_back_the_whole_script() {
    let mut c = pg().await;
    let t = table("pg_rollback");
    run(
        &mut c,
        Dialect::Postgres,
        &format!("CREATE TABLE {t} (id int PRIMARY KEY)"),
    )
    .await;

    // Statement 3 divides by zero.
    let sql = format!(
        "INSERT INTO {t} VALUES (1);\nINSERT INTO {t} VALUES (2), (3);\nSELECT 1/0;\nINSERT INTO {t} VALUES (4);"
    );
    let err = c
        .run_script(&script(Dialect::Postgres, &sql), true, None, &no_cancel())
        .await
        .expect_err("division by zero fails");
    assert!(!err.is_retryable());
    let (statement, code, message) = expect_statement_error(err);
    assert_eq!(statement, 2);
    assert_eq!(code.as_deref(), Some("22012"));
    assert_eq!(message, "division by zero");
    assert_eq!(
        count(&mut c, &t).await,
        0,
        "nothing of statements 1-2 stays"
    );

    // Statement 3 violates the primary key.
    let sql = format!(
        "INSERT INTO {t} VALUES (1); INSERT INTO {t} VALUES (2); INSERT INTO {t} VALUES (1)"
    );
    let err = c
        .run_script(&script(Dialect::Postgres, &sql), true, None, &no_cancel())
        .await
        .expect_err("duplicate key fails");
    let (statement, code, message) = expect_statement_error(err);
    assert_eq!(statement, 2);
    assert_eq!(code.as_deref(), Some("23505"));
    assert_eq!(
        message,
        format!("duplicate key value violates unique constraint \"{t}_pkey\"")
    );
    assert_eq!(count(&mut c, &t).await, 0);

    // DDL is transactional on PostgreSQL: a table created by a failed script does not exist.
    let t2 = table("pg_rollback_ddl");
    let sql =
        format!("CREATE TABLE {t2} (id int); INSERT INTO {t2} VALUES (1); SELECT nope FROM {t2}");
    let err = c
        .run_script(&script(Dialect::Postgres, &sql), true, None, &no_cancel())
        .await
        .expect_err("missing column fails");
    let (statement, code, message) = expect_statement_error(err);
    assert_eq!((statement, code.as_deref()), (2, Some("42703")));
    assert_eq!(message, "column \"nope\" does not exist");
    let rows = query(
        &mut c,
        "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_name = $1",
        &[json!(t2)],
    )
    .await;
    assert_eq!(rows[0]["n"], json!(0));

    // The client is still usable after the failures, and a good script commits.
    let done = c
        .run_script(
            &script(Dialect::Postgres, &format!("INSERT INTO {t} VALUES (7)")),
            true,
            None,
            &no_cancel(),
        )
        .await
        .expect("commits");
    assert_eq!(done[0].rows_affected, 1);
    assert_eq!(count(&mut c, &t).await, 1);
    drop_table(&mut c, Dialect::Postgres, &t).await;
}

#[tokio::test]
async fn mysql_failing_statement_rolls_back_the_whole_script() {
    let mut c = my().await;
    let t = table("my_rollback");
    // DDL commits implicitly on MySQL: create the table first, roll back DML only.
    run(
        &mut c,
        Dialect::MySql,
        &format!("CREATE TABLE {t} (id INT PRIMARY KEY) ENGINE=InnoDB"),
    )
    .await;

    let sql = format!(
        "INSERT INTO {t} VALUES (1);\nINSERT INTO {t} VALUES (2), (3);\nINSERT INTO {t} VALUES (1);\nINSERT INTO {t} VALUES (4);"
    );
    let err = c
        .run_script(&script(Dialect::MySql, &sql), true, None, &no_cancel())
        .await
        .expect_err("duplicate key fails");
    assert!(!err.is_retryable());
    let (statement, code, message) = expect_statement_error(err);
    assert_eq!(statement, 2);
    assert_eq!(code.as_deref(), Some("1062"));
    assert_eq!(message, "Duplicate entry '1' for key 'PRIMARY'");
    assert_eq!(
        count(&mut c, &t).await,
        0,
        "nothing of statements 1-2 stays"
    );

    // A missing table in statement 3.
    let sql = format!("INSERT INTO {t} VALUES (1); DELETE FROM {t}; SELECT * FROM {t}_missing");
    let err = c
        .run_script(&script(Dialect::MySql, &sql), true, None, &no_cancel())
        .await
        .expect_err("missing table fails");
    let (statement, code, message) = expect_statement_error(err);
    assert_eq!((statement, code.as_deref()), (2, Some("1146")));
    assert_eq!(message, format!("Table 'test.{t}_missing' doesn't exist"));
    assert_eq!(count(&mut c, &t).await, 0);

    let done = c
        .run_script(
            &script(Dialect::MySql, &format!("INSERT INTO {t} VALUES (7), (8)")),
            true,
            None,
            &no_cancel(),
        )
        .await
        .expect("commits");
    assert_eq!(done[0].rows_affected, 2);
    assert_eq!(count(&mut c, &t).await, 2);
    drop_table(&mut c, Dialect::MySql, &t).await;
}

#[tokio::test]
async fn without_transaction_earlier_statements_stay() {
    for (mut c, dialect, key) in [
        (pg().await, Dialect::Postgres, "int PRIMARY KEY"),
        (my().await, Dialect::MySql, "INT PRIMARY KEY"),
    ] {
        let t = table("no_txn");
        run(&mut c, dialect, &format!("CREATE TABLE {t} (id {key})")).await;
        let sql = format!(
            "INSERT INTO {t} VALUES (1); INSERT INTO {t} VALUES (2); INSERT INTO {t} VALUES (1); INSERT INTO {t} VALUES (3)"
        );
        let err = c
            .run_script(&script(dialect, &sql), false, None, &no_cancel())
            .await
            .expect_err("duplicate key fails");
        let (statement, _, _) = expect_statement_error(err);
        assert_eq!(statement, 2, "{dialect:?}");
        assert_eq!(
            count(&mut c, &t).await,
            2,
            "{dialect:?}: statements 1-2 stay, 4 never ran"
        );
        drop_table(&mut c, dialect, &t).await;
    }
}

#[tokio::test]
async fn rows_affected_per_statement() {
    for (mut c, dialect) in [
        (pg().await, Dialect::Postgres),
        (my().await, Dialect::MySql),
    ] {
        let t = table("affected");
        let sql = format!(
            "CREATE TABLE {t} (id INT, v INT);
             INSERT INTO {t} VALUES (1, 10), (2, 20), (3, 30);
             UPDATE {t} SET v = v + 1 WHERE id >= 2;
             DELETE FROM {t} WHERE id = 1;
             SELECT * FROM {t};
             UPDATE {t} SET v = 0 WHERE id = 99"
        );
        let affected = run(&mut c, dialect, &sql).await;
        assert_eq!(affected, vec![0, 3, 2, 1, 2, 0], "{dialect:?}");
        let in_txn = c
            .run_script(
                &script(
                    dialect,
                    &format!("DELETE FROM {t}; INSERT INTO {t} VALUES (5, 5)"),
                ),
                true,
                None,
                &no_cancel(),
            )
            .await
            .expect("runs");
        let in_txn: Vec<u64> = in_txn.iter().map(|o| o.rows_affected).collect();
        assert_eq!(in_txn, vec![2, 1], "{dialect:?}");
        let n = c
            .execute(
                &match dialect {
                    Dialect::MySql => format!("UPDATE {t} SET v = ? WHERE id = ?"),
                    _ => format!("UPDATE {t} SET v = $1 WHERE id = $2"),
                },
                &[json!(6), json!(5)],
                None,
                &no_cancel(),
            )
            .await
            .expect("executes");
        assert_eq!(n, 1, "{dialect:?}");
        drop_table(&mut c, dialect, &t).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Deadlines and cancellation
// ---------------------------------------------------------------------------------------------

const DEADLINE: Duration = Duration::from_millis(500);
const SLACK: Duration = Duration::from_secs(1);

async fn pg_backend_is_active(pid: &Value) -> bool {
    let mut watcher = pg().await;
    let rows = query(
        &mut watcher,
        "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
        std::slice::from_ref(pid),
    )
    .await;
    rows[0]["n"] != json!(0)
}

async fn mysql_connection_sleeps(id: &Value) -> bool {
    let mut watcher = my().await;
    let rows = query(
        &mut watcher,
        "SELECT COUNT(*) AS n FROM information_schema.processlist WHERE id = ? AND info LIKE '%SLEEP%'",
        std::slice::from_ref(id),
    )
    .await;
    rows[0]["n"] != json!(0)
}

#[tokio::test]
async fn pg_deadline_cancels_the_query_on_the_server() {
    let mut c = pg().await;
    let pid = query(&mut c, "SELECT pg_backend_pid() AS pid", &[]).await[0]["pid"].clone();
    let t = table("pg_deadline");
    run(
        &mut c,
        Dialect::Postgres,
        &format!("CREATE TABLE {t} (id int)"),
    )
    .await;

    for transaction in [true, false] {
        let started = Instant::now();
        let sql = format!("INSERT INTO {t} VALUES (1); SELECT pg_sleep(60)");
        let err = c
            .run_script(
                &script(Dialect::Postgres, &sql),
                transaction,
                Some(started + DEADLINE),
                &no_cancel(),
            )
            .await
            .expect_err("times out");
        let elapsed = started.elapsed();
        eprintln!(
            "postgres run_script (transaction: {transaction}) timeout latency: {:?}",
            elapsed - DEADLINE
        );
        assert!(
            matches!(err, DbError::Timeout { after } if after <= DEADLINE && after > DEADLINE - Duration::from_millis(100)),
            "{err:?}"
        );
        assert!(!err.is_retryable());
        assert!(
            elapsed >= DEADLINE && elapsed < DEADLINE + SLACK,
            "{elapsed:?}"
        );
        assert!(!pg_backend_is_active(&pid).await, "pg_sleep still runs");
        // Rolled back in a transaction; kept without one.
        assert_eq!(count(&mut c, &t).await, if transaction { 0 } else { 1 });
    }

    // query() honours the deadline too, and the client stays usable.
    let started = Instant::now();
    let err = c
        .query(
            "SELECT pg_sleep(60)",
            &[],
            Some(started + DEADLINE),
            &no_cancel(),
        )
        .await
        .expect_err("times out");
    let elapsed = started.elapsed();
    eprintln!("postgres query timeout latency: {:?}", elapsed - DEADLINE);
    assert!(matches!(err, DbError::Timeout { .. }), "{err:?}");
    assert!(elapsed < DEADLINE + SLACK, "{elapsed:?}");
    assert!(!pg_backend_is_active(&pid).await);
    assert_eq!(
        query(&mut c, "SELECT 1 AS one", &[]).await[0]["one"],
        json!(1)
    );

    // A deadline already passed runs nothing.
    let err = c
        .run_script(
            &script(Dialect::Postgres, &format!("INSERT INTO {t} VALUES (2)")),
            true,
            Some(Instant::now()),
            &no_cancel(),
        )
        .await
        .expect_err("deadline passed");
    assert!(matches!(err, DbError::Timeout { .. }));
    assert_eq!(count(&mut c, &t).await, 1);
    drop_table(&mut c, Dialect::Postgres, &t).await;
}

#[tokio::test]
async fn pg_cancellation_token_cancels_the_query_on_the_server() {
    let mut c = pg().await;
    let pid = query(&mut c, "SELECT pg_backend_pid() AS pid", &[]).await[0]["pid"].clone();
    let t = table("pg_cancel");
    run(
        &mut c,
        Dialect::Postgres,
        &format!("CREATE TABLE {t} (id int)"),
    )
    .await;

    let token = CancellationToken::new();
    let canceller = token.clone();
    let fire_at = Instant::now() + DEADLINE;
    tokio::spawn(async move {
        tokio::time::sleep_until(fire_at).await;
        canceller.cancel();
    });
    let sql =
        format!("INSERT INTO {t} VALUES (1); SELECT pg_sleep(60); INSERT INTO {t} VALUES (2)");
    let err = c
        .run_script(&script(Dialect::Postgres, &sql), true, None, &token)
        .await
        .expect_err("cancelled");
    let latency = fire_at.elapsed();
    eprintln!("postgres cancellation latency: {latency:?}");
    assert!(matches!(err, DbError::Cancelled), "{err:?}");
    assert!(latency < SLACK, "{latency:?}");
    assert!(!pg_backend_is_active(&pid).await, "pg_sleep still runs");
    assert_eq!(count(&mut c, &t).await, 0, "rolled back");

    // A token cancelled before the call runs nothing.
    let err = c
        .query("SELECT 1", &[], None, &token)
        .await
        .expect_err("cancelled");
    assert!(matches!(err, DbError::Cancelled));
    drop_table(&mut c, Dialect::Postgres, &t).await;
}

#[tokio::test]
async fn mysql_deadline_kills_the_query_on_the_server() {
    let mut c = my().await;
    let id = query(&mut c, "SELECT CONNECTION_ID() AS id", &[]).await[0]["id"].clone();
    let t = table("my_deadline");
    run(
        &mut c,
        Dialect::MySql,
        &format!("CREATE TABLE {t} (id INT) ENGINE=InnoDB"),
    )
    .await;

    for transaction in [true, false] {
        let started = Instant::now();
        let sql = format!("INSERT INTO {t} VALUES (1); SELECT SLEEP(60)");
        let err = c
            .run_script(
                &script(Dialect::MySql, &sql),
                transaction,
                Some(started + DEADLINE),
                &no_cancel(),
            )
            .await
            .expect_err("times out");
        let elapsed = started.elapsed();
        eprintln!(
            "mysql run_script (transaction: {transaction}) timeout latency: {:?}",
            elapsed - DEADLINE
        );
        assert!(
            matches!(err, DbError::Timeout { after } if after <= DEADLINE && after > DEADLINE - Duration::from_millis(100)),
            "{err:?}"
        );
        assert!(
            elapsed >= DEADLINE && elapsed < DEADLINE + SLACK,
            "{elapsed:?}"
        );
        assert!(!mysql_connection_sleeps(&id).await, "SLEEP still runs");
        assert_eq!(count(&mut c, &t).await, if transaction { 0 } else { 1 });
    }

    let started = Instant::now();
    let err = c
        .query(
            "SELECT SLEEP(60) AS s",
            &[],
            Some(started + DEADLINE),
            &no_cancel(),
        )
        .await
        .expect_err("times out");
    let elapsed = started.elapsed();
    eprintln!("mysql query timeout latency: {:?}", elapsed - DEADLINE);
    assert!(matches!(err, DbError::Timeout { .. }), "{err:?}");
    assert!(elapsed < DEADLINE + SLACK, "{elapsed:?}");
    assert!(!mysql_connection_sleeps(&id).await);
    assert_eq!(
        query(&mut c, "SELECT 1 AS one", &[]).await[0]["one"],
        json!(1)
    );
    drop_table(&mut c, Dialect::MySql, &t).await;
}

#[tokio::test]
async fn mysql_cancellation_token_kills_the_query_on_the_server() {
    let mut c = my().await;
    let id = query(&mut c, "SELECT CONNECTION_ID() AS id", &[]).await[0]["id"].clone();
    let t = table("my_cancel");
    run(
        &mut c,
        Dialect::MySql,
        &format!("CREATE TABLE {t} (id INT) ENGINE=InnoDB"),
    )
    .await;

    let token = CancellationToken::new();
    let canceller = token.clone();
    let fire_at = Instant::now() + DEADLINE;
    tokio::spawn(async move {
        tokio::time::sleep_until(fire_at).await;
        canceller.cancel();
    });
    let sql = format!("INSERT INTO {t} VALUES (1); SELECT SLEEP(60); INSERT INTO {t} VALUES (2)");
    let err = c
        .run_script(&script(Dialect::MySql, &sql), true, None, &token)
        .await
        .expect_err("cancelled");
    let latency = fire_at.elapsed();
    eprintln!("mysql cancellation latency: {latency:?}");
    assert!(matches!(err, DbError::Cancelled), "{err:?}");
    assert!(latency < SLACK, "{latency:?}");
    assert!(!mysql_connection_sleeps(&id).await, "SLEEP still runs");
    assert_eq!(count(&mut c, &t).await, 0, "rolled back");
    drop_table(&mut c, Dialect::MySql, &t).await;
}

// ---------------------------------------------------------------------------------------------
// Parameters and result types
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pg_params_and_result_types() {
    let mut c = pg().await;
    let rows = query(
        &mut c,
        "SELECT 42::int AS int, 9007199254740993::bigint AS bigint, 7::smallint AS small,
                12345.678901234567890123::numeric AS num, (-0.00012)::numeric(10, 6) AS small_num,
                1.5::float8 AS dbl, 0.1::float4 AS flt, true AS bool, 'héllo ✓'::text AS text,
                'ab'::varchar(5) AS vc, 'x'::char(3) AS ch,
                '2026-01-02 03:04:05.123456+02'::timestamptz AS ts,
                '2026-01-02 03:04:05+00'::timestamptz AS ts_whole,
                '2026-01-02 03:04:05.5'::timestamp AS naive_ts,
                '2026-01-02'::date AS date, '13:14:15'::time AS time,
                '{\"a\": [1, 2.5, null], \"b\": \"c\"}'::jsonb AS jsonb, '[1]'::json AS json,
                '\\xdeadbeef'::bytea AS bytes, NULL::int AS nothing,
                '6f1c3a1e-0000-4000-8000-000000000001'::uuid AS id,
                ARRAY[1, NULL, 3] AS arr, 'NaN'::float8 AS nan",
        &[],
    )
    .await;
    let expected = json!({
        "int": 42, "bigint": 9007199254740993i64, "small": 7,
        "num": "12345.678901234567890123", "small_num": "-0.000120",
        "dbl": 1.5, "flt": 0.1, "bool": true, "text": "héllo ✓", "vc": "ab", "ch": "x  ",
        "ts": "2026-01-02T01:04:05.123456Z", "ts_whole": "2026-01-02T03:04:05Z",
        "naive_ts": "2026-01-02T03:04:05.500", "date": "2026-01-02", "time": "13:14:15",
        "jsonb": {"a": [1, 2.5, null], "b": "c"}, "json": [1],
        "bytes": "3q2+7w==", "nothing": null, "id": "6f1c3a1e-0000-4000-8000-000000000001",
        "arr": [1, null, 3], "nan": "NaN"
    });
    assert_eq!(Value::Object(rows[0].clone()), expected);

    // Parameters of each JSON type.
    let rows = query(
        &mut c,
        "SELECT $1 AS s, $2 + 1 AS n, $3 * 2 AS f, NOT $4 AS b, $5::text IS NULL AS null_is_null,
                $6::timestamptz AS ts, $7::numeric AS exact, $8::jsonb -> 'k' AS j, $9::int AS cast",
        &[
            json!("text"),
            json!(41),
            json!(1.25),
            json!(false),
            Value::Null,
            json!("2026-03-08T01:30:00-05:00"),
            json!("0.1"),
            json!({"k": [1, 2]}),
            json!("17"),
        ],
    )
    .await;
    assert_eq!(
        Value::Object(rows[0].clone()),
        json!({"s": "text", "n": 42, "f": 2.5, "b": true, "null_is_null": true,
               "ts": "2026-03-08T06:30:00Z", "exact": "0.1", "j": [1, 2], "cast": 17})
    );

    // A parameter is data, not SQL.
    let t = table("pg_inject");
    run(
        &mut c,
        Dialect::Postgres,
        &format!("CREATE TABLE {t} (name text)"),
    )
    .await;
    let evil = format!("'; DROP TABLE {t}; --");
    let n = c
        .execute(
            &format!("INSERT INTO {t} (name) VALUES ($1)"),
            &[json!(evil)],
            None,
            &no_cancel(),
        )
        .await
        .expect("inserts");
    assert_eq!(n, 1);
    let rows = query(
        &mut c,
        &format!("SELECT name FROM {t} WHERE name = $1"),
        &[json!(evil)],
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], json!(evil));

    // A failing query names the SQLSTATE; an unconvertible type asks for a cast.
    let err = c
        .query(
            "SELECT * FROM no_such_table_anywhere",
            &[],
            None,
            &no_cancel(),
        )
        .await
        .expect_err("missing table");
    let (statement, code, message) = expect_statement_error(err);
    assert_eq!((statement, code.as_deref()), (0, Some("42P01")));
    assert_eq!(
        message,
        "relation \"no_such_table_anywhere\" does not exist"
    );
    let err = c
        .query("SELECT interval '1 day' AS i", &[], None, &no_cancel())
        .await
        .expect_err("interval is not converted");
    assert!(
        matches!(&err, DbError::Other(m) if m.contains("interval") && m.contains("cast")),
        "{err}"
    );
    drop_table(&mut c, Dialect::Postgres, &t).await;
}

#[tokio::test]
async fn mysql_params_and_result_types() {
    let mut c = my().await;
    let t = table("my_types");
    run(
        &mut c,
        Dialect::MySql,
        &format!(
            "CREATE TABLE {t} (i INT, bi BIGINT, ubi BIGINT UNSIGNED, d DECIMAL(30, 10), dbl DOUBLE,
                flt FLOAT, flag TINYINT(1), tiny TINYINT, txt VARCHAR(50), ts TIMESTAMP(6) NULL,
                dt DATETIME, day DATE, tm TIME, j JSON, bin BLOB, vb VARBINARY(8), nothing INT)"
        ),
    )
    .await;
    let n = c
        .execute(
            &format!("INSERT INTO {t} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, UNHEX('DEADBEEF'), ?, ?)"),
            &[
                json!(42),
                json!(9007199254740993i64),
                json!(18446744073709551615u64),
                json!("12345.6789012345"),
                json!(1.5),
                json!(0.1),
                json!(true),
                json!(-5),
                json!("héllo ✓"),
                json!("2026-01-02 03:04:05.123456"),
                json!("2026-01-02 03:04:05"),
                json!("2026-01-02"),
                json!("-25:01:02"),
                json!(r#"{"a": [1, 2.5, null]}"#),
                json!("ab"),
                Value::Null,
            ],
            None,
            &no_cancel(),
        )
        .await
        .expect("inserts");
    assert_eq!(n, 1);
    let rows = query(&mut c, &format!("SELECT * FROM {t}"), &[]).await;
    let mut row = rows[0].clone();
    // MariaDB's JSON is a LONGTEXT alias the protocol does not mark: it arrives as text.
    let j = row.remove("j").expect("j");
    let j = match j {
        Value::String(s) => serde_json::from_str::<Value>(&s).expect("JSON text"),
        other => other,
    };
    assert_eq!(j, json!({"a": [1, 2.5, null]}));
    assert_eq!(
        Value::Object(row),
        json!({
            "i": 42, "bi": 9007199254740993i64, "ubi": 18446744073709551615u64,
            "d": "12345.6789012345", "dbl": 1.5, "flt": 0.1, "flag": true, "tiny": -5,
            "txt": "héllo ✓", "ts": "2026-01-02T03:04:05.123456Z", "dt": "2026-01-02T03:04:05",
            "day": "2026-01-02", "tm": "-25:01:02", "bin": "3q2+7w==", "vb": "YWI=",
            "nothing": null
        })
    );

    // Parameters of each JSON type, computed by the server.
    let rows = query(
        &mut c,
        "SELECT ? AS s, ? + 1 AS n, ? * 2 AS f, NOT ? AS b, ? IS NULL AS null_is_null,
                CAST(? AS DATETIME) AS dt",
        &[
            json!("text"),
            json!(41),
            json!(1.25),
            json!(false),
            Value::Null,
            json!("2026-03-08 01:30:00"),
        ],
    )
    .await;
    assert_eq!(rows[0]["s"], json!("text"));
    assert_eq!(rows[0]["n"], json!(42));
    assert_eq!(rows[0]["f"], json!(2.5));
    assert_eq!(
        rows[0]["b"]
            .as_i64()
            .map(|b| b == 1)
            .or(rows[0]["b"].as_bool()),
        Some(true)
    );
    assert_eq!(rows[0]["dt"], json!("2026-03-08T01:30:00"));

    // The session is UTC: NOW() and UTC_TIMESTAMP() agree.
    let rows = query(
        &mut c,
        "SELECT @@session.time_zone AS tz, @@character_set_client AS cs",
        &[],
    )
    .await;
    assert_eq!(rows[0]["tz"], json!("+00:00"));
    assert_eq!(rows[0]["cs"], json!("utf8mb4"));

    // A parameter is data, not SQL.
    let evil = format!("'; DROP TABLE {t}; --");
    c.execute(
        &format!("INSERT INTO {t} (txt) VALUES (?)"),
        &[json!(evil)],
        None,
        &no_cancel(),
    )
    .await
    .expect("inserts");
    let rows = query(
        &mut c,
        &format!("SELECT txt FROM {t} WHERE txt = ?"),
        &[json!(evil)],
    )
    .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["txt"], json!(evil));
    assert_eq!(count(&mut c, &t).await, 2);

    let err = c
        .query(
            "SELECT * FROM no_such_table_anywhere",
            &[],
            None,
            &no_cancel(),
        )
        .await
        .expect_err("missing table");
    let (statement, code, message) = expect_statement_error(err);
    assert_eq!((statement, code.as_deref()), (0, Some("1146")));
    assert_eq!(message, "Table 'test.no_such_table_anywhere' doesn't exist");
    drop_table(&mut c, Dialect::MySql, &t).await;
}

// ---------------------------------------------------------------------------------------------
// Connecting
// ---------------------------------------------------------------------------------------------

fn expect_connect_error(err: DbError, secret: &str) -> (String, String) {
    let shown = err.to_string();
    assert!(!shown.contains(secret), "secret in {shown}");
    assert!(!format!("{err:?}").contains(secret), "secret in {err:?}");
    assert!(err.is_retryable());
    match err {
        DbError::Connect { target, message } => (target, message),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_errors_mask_the_password() {
    let secret = "s3cretPw";
    for (kind, url, masked) in [
        (
            DbKind::Postgres,
            format!("postgres://u:{secret}@127.0.0.1:1/test"),
            "postgres://u:***@127.0.0.1:1/test",
        ),
        (
            DbKind::Redshift,
            format!("postgresql://u:{secret}@127.0.0.1:1/dw"),
            "postgresql://u:***@127.0.0.1:1/dw",
        ),
        (
            DbKind::MySql,
            format!("mysql://u:{secret}@127.0.0.1:1/test"),
            "mysql://u:***@127.0.0.1:1/test",
        ),
        (
            DbKind::Postgres,
            format!("postgres://u:{secret}@no-such-host.invalid:5432/test"),
            "postgres://u:***@no-such-host.invalid:5432/test",
        ),
        (
            DbKind::MySql,
            format!("mysql://u:{secret}@no-such-host.invalid:3306/test"),
            "mysql://u:***@no-such-host.invalid:3306/test",
        ),
        // Wrong scheme for the kind.
        (
            DbKind::MySql,
            format!("postgres://u:{secret}@127.0.0.1:5432/test"),
            "postgres://u:***@127.0.0.1:5432/test",
        ),
    ] {
        let err = DbClient::connect(kind, &url, Duration::from_secs(5))
            .await
            .expect_err("cannot connect");
        let (target, message) = expect_connect_error(err, secret);
        assert_eq!(target, masked);
        assert!(!message.is_empty());
    }

    // A wrong password is reported by the server, without the password.
    for (kind, url) in [
        (
            DbKind::Postgres,
            format!("postgres://nobody_here:{secret}@127.0.0.1:5432/test"),
        ),
        (
            DbKind::MySql,
            format!("mysql://nobody_here:{secret}@127.0.0.1:3306/test"),
        ),
    ] {
        let err = DbClient::connect(kind, &url, Duration::from_secs(5))
            .await
            .expect_err("unknown user");
        let (target, message) = expect_connect_error(err, secret);
        assert!(target.contains(":***@"), "{target}");
        assert!(message.contains("nobody_here"), "{message}");
    }

    assert_eq!(
        redact_url("postgres://etl:pw@cluster:5439/dw?password=pw2"),
        "postgres://etl:***@cluster:5439/dw?password=***"
    );
}

#[tokio::test]
async fn connect_timeout_is_honoured() {
    // A server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let timeout = Duration::from_millis(300);
    for (kind, url) in [
        (
            DbKind::Postgres,
            format!("postgres://u:pw123456@127.0.0.1:{port}/test"),
        ),
        (
            DbKind::MySql,
            format!("mysql://u:pw123456@127.0.0.1:{port}/test"),
        ),
    ] {
        let started = Instant::now();
        let err = DbClient::connect(kind, &url, timeout)
            .await
            .expect_err("times out");
        let elapsed = started.elapsed();
        assert!(
            elapsed >= timeout && elapsed < timeout + SLACK,
            "{kind:?}: {elapsed:?}"
        );
        let (_, message) = expect_connect_error(err, "pw123456");
        assert!(message.contains("timed out"), "{message}");
    }
    held.abort();
}

// ---------------------------------------------------------------------------------------------
// Retry classification
// ---------------------------------------------------------------------------------------------

fn statement(code: Option<&str>) -> DbError {
    DbError::Statement {
        statement: 0,
        code: code.map(str::to_string),
        message: "m".into(),
    }
}

#[test]
fn retry_classification_by_code() {
    for code in [
        "40001", "40P01", "55P03", "53300", "08006", "57P01", "1213", "1205", "1040", "2013",
    ] {
        assert!(statement(Some(code)).is_retryable(), "{code}");
    }
    for code in [
        "42601", "42P01", "23505", "22012", "42703", "1064", "1146", "1062", "1317",
    ] {
        assert!(!statement(Some(code)).is_retryable(), "{code}");
    }
    // A connection lost during a statement.
    assert!(statement(None).is_retryable());
    assert!(DbError::Connect {
        target: "t".into(),
        message: "m".into()
    }
    .is_retryable());
    assert!(!DbError::Timeout {
        after: Duration::from_secs(1)
    }
    .is_retryable());
    assert!(!DbError::Cancelled.is_retryable());
    assert!(!DbError::Other("x".into()).is_retryable());
}

#[tokio::test]
async fn retry_classification_of_real_errors() {
    // Syntax errors are not retryable.
    let mut p = pg().await;
    let err = p
        .query("SELEC 1", &[], None, &no_cancel())
        .await
        .expect_err("syntax");
    assert!(!err.is_retryable());
    assert!(
        matches!(&err, DbError::Statement { code: Some(c), .. } if c == "42601"),
        "{err:?}"
    );
    let mut m = my().await;
    let err = m
        .query("SELEC 1", &[], None, &no_cancel())
        .await
        .expect_err("syntax");
    assert!(!err.is_retryable());
    assert!(
        matches!(&err, DbError::Statement { code: Some(c), .. } if c == "1064"),
        "{err:?}"
    );

    // Real deadlocks: two transactions lock two rows in opposite orders.
    for (dialect, pause) in [
        (Dialect::Postgres, "SELECT pg_sleep(0.3)"),
        (Dialect::MySql, "SELECT SLEEP(0.3)"),
    ] {
        let (mut a, mut b) = match dialect {
            Dialect::MySql => (my().await, my().await),
            _ => (pg().await, pg().await),
        };
        let t = table("deadlock");
        run(
            &mut a,
            dialect,
            &format!("CREATE TABLE {t} (id INT PRIMARY KEY, v INT)"),
        )
        .await;
        run(
            &mut a,
            dialect,
            &format!("INSERT INTO {t} VALUES (1, 0), (2, 0)"),
        )
        .await;
        let first = script(
            dialect,
            &format!(
                "UPDATE {t} SET v = 1 WHERE id = 1; {pause}; UPDATE {t} SET v = 1 WHERE id = 2"
            ),
        );
        let second = script(
            dialect,
            &format!(
                "UPDATE {t} SET v = 2 WHERE id = 2; {pause}; UPDATE {t} SET v = 2 WHERE id = 1"
            ),
        );
        let deadline = Some(Instant::now() + Duration::from_secs(10));
        let token = no_cancel();
        let (ra, rb) = tokio::join!(
            a.run_script(&first, true, deadline, &token),
            b.run_script(&second, true, deadline, &token)
        );
        let errors: Vec<DbError> = [ra, rb].into_iter().filter_map(Result::err).collect();
        assert_eq!(
            errors.len(),
            1,
            "{dialect:?}: exactly one transaction is the victim: {errors:?}"
        );
        let err = &errors[0];
        let expected = if dialect == Dialect::MySql {
            "1213"
        } else {
            "40P01"
        };
        assert!(
            matches!(err, DbError::Statement { statement: 2, code: Some(c), .. } if c == expected),
            "{dialect:?}: {err:?}"
        );
        assert!(err.is_retryable());
        drop_table(&mut a, dialect, &t).await;
    }
}

#[tokio::test]
async fn lost_connections_are_retryable_and_the_client_errors_cleanly() {
    // PostgreSQL: the backend is terminated while a statement runs.
    let mut c = pg().await;
    let pid = query(&mut c, "SELECT pg_backend_pid() AS pid", &[]).await[0]["pid"].clone();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut k = pg().await;
        query(
            &mut k,
            "SELECT pg_terminate_backend($1::int) AS done",
            &[pid],
        )
        .await;
    });
    let err = c
        .run_script(
            &script(Dialect::Postgres, "SELECT pg_sleep(60)"),
            true,
            None,
            &no_cancel(),
        )
        .await
        .expect_err("terminated");
    eprintln!("postgres, backend terminated: {err:?}");
    killer.await.expect("killer ran");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        matches!(&err, DbError::Statement { statement: 0, .. }),
        "{err:?}"
    );
    let err = c
        .query("SELECT 1", &[], None, &no_cancel())
        .await
        .expect_err("connection gone");
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        matches!(&err, DbError::Connect { message, .. } if message.contains("reconnect")),
        "{err:?}"
    );

    // MySQL: the connection is killed while a statement runs.
    let mut c = my().await;
    let id = query(&mut c, "SELECT CONNECTION_ID() AS id", &[]).await[0]["id"].clone();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut k = my().await;
        let id = id.as_u64().expect("connection id");
        k.run_script(
            &script(Dialect::MySql, &format!("KILL {id}")),
            false,
            None,
            &no_cancel(),
        )
        .await
        .expect("KILL");
    });
    let err = c
        .run_script(
            &script(Dialect::MySql, "SELECT SLEEP(60)"),
            true,
            None,
            &no_cancel(),
        )
        .await
        .expect_err("killed");
    eprintln!("mysql, connection killed: {err:?}");
    killer.await.expect("killer ran");
    assert!(err.is_retryable(), "{err:?}");
    let err = c
        .query("SELECT 1", &[], None, &no_cancel())
        .await
        .expect_err("connection gone");
    assert!(err.is_retryable(), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// The engine spawns these futures: they must be Send.
// ---------------------------------------------------------------------------------------------

#[allow(dead_code)]
fn futures_are_send(c: &mut DbClient, s: &[StatementSource], t: &CancellationToken) {
    fn send<T: Send>(_: T) {}
    send(DbClient::connect(DbKind::Postgres, "", Duration::ZERO));
    send(c.run_script(s, true, None, t));
}

#[allow(dead_code)]
fn more_futures_are_send(c: &mut DbClient, t: &CancellationToken) {
    fn send<T: Send>(_: T) {}
    send(c.query("", &[], None, t));
}

#[allow(dead_code)]
fn execute_is_send(c: &mut DbClient, t: &CancellationToken) {
    fn send<T: Send>(_: T) {}
    send(c.execute("", &[], None, t));
}

/// A pooled connection outlives the runtime that first asked for it: opened and given back under
/// runtime A, lent to a borrower under runtime B, it keeps working mid-transaction after A is
/// gone (before, its socket died with A and the borrower's COMMIT failed with "connection
/// closed"). PostgreSQL and MySQL, each with a pool of one so that B gets A's connection.
#[test]
fn pooled_connections_outlive_the_runtime_that_opened_them() {
    use cranium::db::pool::checkout;
    for (kind, url, dialect) in [
        (DbKind::Postgres, pg_url(), Dialect::Postgres),
        (DbKind::MySql, my_url(), Dialect::MySql),
    ] {
        // A URL of its own: a pool of its own.
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = match kind {
            DbKind::MySql => format!("{url}{sep}prefer_socket=false"),
            _ => format!(
                "{url}{sep}application_name=pool_runtime_{}",
                std::process::id()
            ),
        };
        let new_rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
        };
        // A drives its tasks on a thread of its own while B runs (as a test's runtime does
        // beside another's).
        let a = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let first_session = a.block_on(async {
            let mut c = checkout(kind, &url, CONNECT_TIMEOUT, 1, None, &no_cancel())
                .await
                .expect("checkout under A");
            let rows = query(&mut c, session_sql(kind), &[]).await;
            rows[0]["s"].clone()
        });
        let b = new_rt();
        let t = table("pool_rt");
        let mut c = b.block_on(async {
            let mut c = checkout(kind, &url, CONNECT_TIMEOUT, 1, None, &no_cancel())
                .await
                .expect("checkout under B");
            let rows = query(&mut c, session_sql(kind), &[]).await;
            assert_eq!(
                rows[0]["s"], first_session,
                "{kind:?}: B got A's connection"
            );
            run(&mut c, dialect, &format!("CREATE TABLE {t} (n int)")).await;
            c
        });
        // A goes away while B holds the connection.
        drop(a);
        b.block_on(async {
            let sql = format!("INSERT INTO {t} VALUES (1); INSERT INTO {t} VALUES (2)");
            let out = c
                .run_script(&script(dialect, &sql), true, None, &no_cancel())
                .await;
            assert!(out.is_ok(), "{kind:?}: {out:?}");
            assert_eq!(count(&mut c, &t).await, 2);
            drop_table(&mut c, dialect, &t).await;
        });
    }
}

fn session_sql(kind: DbKind) -> &'static str {
    match kind {
        DbKind::MySql => "SELECT CONNECTION_ID() AS s",
        _ => "SELECT pg_backend_pid() AS s",
    }
}
