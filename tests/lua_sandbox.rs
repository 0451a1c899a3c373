//! The Lua sandbox: escape attempts fail with clear errors and the host survives; the script API
//! (`ctx`, `cranium.query/execute/log`, outputs) and the record-transform mode behave as documented.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cranium::lua_runtime::{
    run_script, Limits, LogLevel, LuaDb, LuaError, ScriptContext, ScriptOutcome, Transformer,
};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const CHUNK: &str = "scripts/lua/test.lua";

/// One recorded database call: (query|execute, connection, sql, params).
type Call = (String, String, String, Vec<Value>);

/// An in-memory database: records every call and answers from canned rows.
#[derive(Default)]
struct FakeDb {
    calls: Mutex<Vec<Call>>,
    rows: Vec<Map<String, Value>>,
    delay: Option<Duration>,
}

impl LuaDb for FakeDb {
    fn query<'a>(
        &'a self,
        connection: &'a str,
        sql: &'a str,
        params: Vec<Value>,
    ) -> BoxFuture<'a, Result<Vec<Map<String, Value>>, String>> {
        async move {
            if let Some(d) = self.delay {
                tokio::time::sleep(d).await;
            }
            self.calls.lock().expect("lock").push((
                "query".into(),
                connection.into(),
                sql.into(),
                params,
            ));
            if connection == "broken" {
                return Err("relation \"nope\" does not exist".to_string());
            }
            Ok(self.rows.clone())
        }
        .boxed()
    }

    fn execute<'a>(
        &'a self,
        connection: &'a str,
        sql: &'a str,
        params: Vec<Value>,
    ) -> BoxFuture<'a, Result<u64, String>> {
        async move {
            self.calls.lock().expect("lock").push((
                "execute".into(),
                connection.into(),
                sql.into(),
                params,
            ));
            Ok(7)
        }
        .boxed()
    }
}

fn ctx() -> ScriptContext {
    ScriptContext {
        job: "events_daily".into(),
        step: "check_volume".into(),
        run_id: "run-42".into(),
        interval_start: "2026-03-07T00:00:00+00:00".into(),
        interval_end: "2026-03-08T00:00:00+00:00".into(),
        ds: "2026-03-07".into(),
        params: json!({"min_requests": 20, "name": "x"}),
        upstream: json!({"load": {"rows": 12, "table": "analytics.app_events"}}),
    }
}

async fn run_with(
    code: &str,
    db: Arc<dyn LuaDb>,
    limits: Limits,
    deadline: Option<Instant>,
    cancel: CancellationToken,
) -> Result<ScriptOutcome, LuaError> {
    run_script(code, CHUNK, &ctx(), db, limits, deadline, cancel).await
}

async fn run(code: &str) -> Result<ScriptOutcome, LuaError> {
    run_with(
        code,
        Arc::new(FakeDb::default()),
        Limits::default(),
        None,
        CancellationToken::new(),
    )
    .await
}

fn small() -> Limits {
    Limits {
        memory_bytes: 16 * 1024 * 1024,
        instructions: 1_000_000,
    }
}

fn forbidden(r: Result<ScriptOutcome, LuaError>, needle: &str) -> String {
    match r {
        Err(e @ LuaError::Forbidden { .. }) => {
            let msg = e.to_string();
            println!("{msg}");
            assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
            msg
        }
        other => panic!("expected Forbidden({needle}), got {other:?}"),
    }
}

/// The host is fine after an escape attempt: a normal script still runs.
async fn host_still_fine() {
    let out = run("ctx.outputs.ok = 1 + 1").await.expect("runs");
    assert_eq!(out.outputs["ok"], json!(2));
}

// ----------------------------------------------------------------------------- escape attempts

#[tokio::test]
async fn os_execute_is_forbidden() {
    forbidden(
        run(r#"os.execute("echo hi")"#).await,
        "os.execute is not available",
    );
    forbidden(run(r#"return os.getenv("HOME")"#).await, "os.getenv");
    forbidden(run(r#"os.exit(1)"#).await, "os.exit");
    forbidden(run(r#"os.remove("/tmp/x")"#).await, "os.remove");
    // The clock functions remain.
    let out = run("ctx.outputs.t = os.time() > 0 and os.date('%Y') ~= nil and os.clock() >= 0")
        .await
        .expect("os.time");
    assert_eq!(out.outputs["t"], json!(true));
    host_still_fine().await;
}

#[tokio::test]
async fn io_is_forbidden() {
    forbidden(
        run(r#"local f = io.open("/etc/passwd")"#).await,
        "io is not available",
    );
    forbidden(run(r#"io.write("x")"#).await, "io is not available");
    host_still_fine().await;
}

#[tokio::test]
async fn require_and_package_are_forbidden() {
    forbidden(run(r#"require("os")"#).await, "require is not available");
    forbidden(
        run(r#"return package.loaded"#).await,
        "package is not available",
    );
    host_still_fine().await;
}

#[tokio::test]
async fn bytecode_is_forbidden() {
    forbidden(
        run("local b = string.dump(function() end)").await,
        "string.dump is not available",
    );
    // A hand-made Lua 5.4 header: "\27Lua", version 0x54, format 0, LUAC_DATA ...
    forbidden(
        run(r#"local f = load("\27LuaT\0\25\147\r\n\26\n\4\8\8xV\0\0\0\0\0\0\0\0\0\0\0(w@\1")"#)
            .await,
        "bytecode chunks are not allowed",
    );
    // Asking for binary mode explicitly does not help.
    forbidden(
        run(r#"local f = load("\27Lua...", "x", "b")"#).await,
        "bytecode chunks are not allowed",
    );
    // A reader function returning bytecode is refused by Lua in text mode.
    let out = run(r#"local parts = {"\27Lua", "T\0"}
           local i = 0
           local f, err = load(function() i = i + 1; return parts[i] end)
           ctx.outputs.err = err"#)
    .await
    .expect("runs");
    assert!(
        out.outputs["err"]
            .as_str()
            .is_some_and(|e| e.contains("binary chunk")),
        "{:?}",
        out.outputs
    );
    // The script itself may not be bytecode either.
    let r = run("\x1bLuaT\0garbage").await;
    forbidden(r, "bytecode chunks are not allowed");
    // Text chunks load fine, with the sandboxed globals.
    let out =
        run(r#"ctx.outputs.v = load("return 1 + 2")(); ctx.outputs.io = pcall(load("return io"))"#)
            .await
            .expect("load text");
    assert_eq!(out.outputs["v"], json!(3));
    assert_eq!(out.outputs["io"], json!(false));
    host_still_fine().await;
}

#[tokio::test]
async fn dofile_and_loadfile_are_forbidden() {
    forbidden(
        run(r#"dofile("/etc/passwd")"#).await,
        "dofile is not available",
    );
    forbidden(
        run(r#"local f = loadfile("/etc/passwd")"#).await,
        "loadfile is not available",
    );
    host_still_fine().await;
}

#[tokio::test]
async fn debug_is_forbidden() {
    forbidden(
        run(r#"local i = debug.getinfo(1)"#).await,
        "debug is not available",
    );
    host_still_fine().await;
}

#[tokio::test]
async fn collectgarbage_is_limited_and_gc_metamethods_are_refused() {
    let out = run(r#"collectgarbage(); ctx.outputs.kb = collectgarbage("count") > 0"#)
        .await
        .expect("count and collect");
    assert_eq!(out.outputs["kb"], json!(true));
    forbidden(
        run(r#"collectgarbage("stop")"#).await,
        "collectgarbage(\"stop\")",
    );
    // Finalizers run with hooks disabled, so they could loop forever: refused.
    forbidden(
        run(r#"setmetatable({}, {__gc = function() while true do end end})"#).await,
        "__gc metamethods are not allowed",
    );
    let out = run(
        r#"local t = setmetatable({}, {__index = function() return 5 end}); ctx.outputs.v = t.x"#,
    )
    .await
    .expect("other metatables are fine");
    assert_eq!(out.outputs["v"], json!(5));
}

#[tokio::test]
async fn print_goes_to_the_log() {
    let out = run(r#"print("hello", 1, true)"#).await.expect("print");
    assert_eq!(
        out.logs,
        vec![(LogLevel::Info, "hello\t1\ttrue".to_string())]
    );
}

#[tokio::test]
async fn memory_exhaustion_is_an_error_and_the_host_survives() {
    let r = run_with(
        r#"local s = string.rep("x", 1e9)"#,
        Arc::new(FakeDb::default()),
        small(),
        None,
        CancellationToken::new(),
    )
    .await;
    match r {
        Err(e @ LuaError::Memory { limit }) => {
            println!("{e}");
            assert_eq!(limit, 16 * 1024 * 1024);
        }
        other => panic!("expected Memory, got {other:?}"),
    }
    // Growing a table slowly hits the same limit.
    let r = run_with(
        "local t = {} for i = 1, 1e9 do t[i] = i end",
        Arc::new(FakeDb::default()),
        Limits {
            memory_bytes: 4 * 1024 * 1024,
            instructions: u64::MAX,
        },
        None,
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(r, Err(LuaError::Memory { .. })), "{r:?}");
    // pcall cannot swallow it.
    let r = run_with(
        r#"local ok = pcall(string.rep, "x", 1e9); ctx.outputs.after = true"#,
        Arc::new(FakeDb::default()),
        small(),
        None,
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(r, Err(LuaError::Memory { .. })), "{r:?}");
    host_still_fine().await;
}

#[tokio::test]
async fn endless_loop_hits_the_instruction_budget() {
    let started = std::time::Instant::now();
    let r = run_with(
        "while true do end",
        Arc::new(FakeDb::default()),
        small(),
        None,
        CancellationToken::new(),
    )
    .await;
    match r {
        Err(e @ LuaError::Instructions { limit }) => {
            println!("{e}");
            assert_eq!(limit, 1_000_000);
        }
        other => panic!("expected Instructions, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    host_still_fine().await;
}

#[tokio::test]
async fn pcall_and_coroutines_cannot_swallow_a_limit() {
    for code in [
        "while true do pcall(function() while true do end end) end",
        "while true do xpcall(function() while true do end end, function(e) return e end) end",
        "while true do coroutine.resume(coroutine.create(function() while true do end end)) end",
        "local co = coroutine.wrap(function() while true do end end) co()",
    ] {
        let r = run_with(
            code,
            Arc::new(FakeDb::default()),
            small(),
            None,
            CancellationToken::new(),
        )
        .await;
        assert!(
            matches!(r, Err(LuaError::Instructions { .. })),
            "{code}: {r:?}"
        );
    }
}

#[tokio::test]
async fn endless_loop_stops_at_the_deadline() {
    let started = std::time::Instant::now();
    let deadline = Instant::now() + Duration::from_millis(300);
    let r = run_with(
        "while true do end",
        Arc::new(FakeDb::default()),
        Limits {
            memory_bytes: 16 * 1024 * 1024,
            instructions: u64::MAX,
        },
        Some(deadline),
        CancellationToken::new(),
    )
    .await;
    let elapsed = started.elapsed();
    match r {
        Err(e @ LuaError::Timeout) => println!("{e} after {elapsed:?}"),
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1300), "{elapsed:?}");
    host_still_fine().await;
}

#[tokio::test]
async fn deadline_applies_while_awaiting_the_database() {
    let started = std::time::Instant::now();
    let db = FakeDb {
        delay: Some(Duration::from_secs(30)),
        ..FakeDb::default()
    };
    let r = run_with(
        r#"cranium.query("warehouse", "SELECT pg_sleep(30)")"#,
        Arc::new(db),
        Limits::default(),
        Some(Instant::now() + Duration::from_millis(200)),
        CancellationToken::new(),
    )
    .await;
    assert!(matches!(r, Err(LuaError::Timeout)), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn cancellation_stops_a_running_script() {
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    // The VM runs on this task, so cancel from another OS thread.
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c.cancel();
    });
    let started = std::time::Instant::now();
    let r = run_with(
        "while true do end",
        Arc::new(FakeDb::default()),
        Limits {
            memory_bytes: 16 * 1024 * 1024,
            instructions: u64::MAX,
        },
        None,
        cancel,
    )
    .await;
    canceller.join().expect("canceller");
    match r {
        Err(e @ LuaError::Cancelled) => println!("{e}"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));

    // Cancelled while awaiting the database.
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let db = FakeDb {
        delay: Some(Duration::from_secs(30)),
        ..FakeDb::default()
    };
    let r = run_with(
        r#"cranium.query("warehouse", "SELECT 1")"#,
        Arc::new(db),
        Limits::default(),
        None,
        cancel,
    )
    .await;
    assert!(matches!(r, Err(LuaError::Cancelled)), "{r:?}");

    // Already cancelled: does not start.
    let cancel = CancellationToken::new();
    cancel.cancel();
    let r = run_with(
        "ctx.outputs.x = 1",
        Arc::new(FakeDb::default()),
        Limits::default(),
        None,
        cancel,
    )
    .await;
    assert!(matches!(r, Err(LuaError::Cancelled)), "{r:?}");
}

// ----------------------------------------------------------------------------- the script API

#[tokio::test]
async fn outputs_round_trip() {
    let out = run(r#"
        ctx.outputs.n = 42
        ctx.outputs.f = 1.5
        ctx.outputs.s = "héllo"
        ctx.outputs.b = false
        ctx.outputs.nested = { list = {1, 2, 3}, empty = {}, empty_list = cranium.array(), null = cranium.null, deep = { x = "y" } }
    "#)
    .await
    .expect("runs");
    assert_eq!(
        Value::Object(out.outputs),
        json!({
            "n": 42, "f": 1.5, "s": "héllo", "b": false,
            "nested": { "list": [1, 2, 3], "empty": {}, "empty_list": [], "null": null, "deep": { "x": "y" } }
        })
    );
    // No outputs: an empty map.
    assert!(run("local x = 1").await.expect("runs").outputs.is_empty());
}

#[tokio::test]
async fn bad_outputs_are_output_errors() {
    for (code, needle) in [
        (
            "ctx.outputs.f = function() end",
            "ctx.outputs.f: a function",
        ),
        ("ctx.outputs.t = {1, 2, x = 3}", "mixes string keys"),
        ("ctx.outputs.t = {[1] = 1, [3] = 3}", "holes"),
        ("ctx.outputs.n = 0/0", "cannot be represented in JSON"),
        ("local t = {} t.self = t ctx.outputs.t = t", "nested deeper"),
        ("ctx.outputs = 5", "must be a table"),
        (
            "ctx.outputs.big = string.rep('x', 70000)",
            "the limit is 65536 bytes",
        ),
    ] {
        match run(code).await {
            Err(e @ LuaError::Output(_)) => {
                let msg = e.to_string();
                assert!(msg.contains(needle), "{code}: {msg}");
            }
            other => panic!("{code}: expected Output, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn ctx_fields() {
    let out = run(r#"
        ctx.outputs.job = ctx.job
        ctx.outputs.step = ctx.step
        ctx.outputs.run_id = ctx.run_id
        ctx.outputs.start = ctx.interval.start
        ctx.outputs["end"] = ctx.interval["end"]
        ctx.outputs.ds = ctx.interval.ds
        ctx.outputs.min = ctx.params.min_requests + 1
        ctx.outputs.up = ctx.steps.load.outputs.rows
        ctx.outputs.up_table = ctx.steps.load.outputs.table
        ctx.outputs.missing = ctx.steps.nope == nil
    "#)
    .await
    .expect("runs");
    assert_eq!(
        Value::Object(out.outputs),
        json!({
            "job": "events_daily", "step": "check_volume", "run_id": "run-42",
            "start": "2026-03-07T00:00:00+00:00", "end": "2026-03-08T00:00:00+00:00", "ds": "2026-03-07",
            "min": 21, "up": 12, "up_table": "analytics.app_events", "missing": true
        })
    );
}

#[tokio::test]
async fn query_and_execute_bind_parameters() {
    let mut row1 = Map::new();
    row1.insert("id".into(), json!(1));
    row1.insert("email".into(), Value::Null);
    row1.insert("name".into(), json!("a"));
    let mut row2 = Map::new();
    row2.insert("id".into(), json!(2));
    row2.insert("email".into(), json!("b@example.com"));
    row2.insert("name".into(), json!("b"));
    let db = Arc::new(FakeDb {
        rows: vec![row1, row2],
        ..FakeDb::default()
    });
    let out = run_with(
        r#"
        local rows = cranium.query("warehouse", "SELECT id, email, name FROM users WHERE ds = $1 AND n > $2", ctx.interval.ds, 5, nil, true, "'; DROP TABLE x; --")
        ctx.outputs.count = #rows
        ctx.outputs.first_email_is_null = rows[1].email == cranium.null
        ctx.outputs.second_email = rows[2].email
        ctx.outputs.rows = rows
        ctx.outputs.affected = cranium.execute("production", "DELETE FROM t WHERE id = ?", 3)
    "#,
        db.clone(),
        Limits::default(),
        None,
        CancellationToken::new(),
    )
    .await
    .expect("runs");
    assert_eq!(out.outputs["count"], json!(2));
    assert_eq!(out.outputs["first_email_is_null"], json!(true));
    assert_eq!(out.outputs["second_email"], json!("b@example.com"));
    assert_eq!(
        out.outputs["rows"],
        json!([{"id": 1, "email": null, "name": "a"}, {"id": 2, "email": "b@example.com", "name": "b"}])
    );
    assert_eq!(out.outputs["affected"], json!(7));
    let calls = db.calls.lock().expect("lock").clone();
    assert_eq!(
        calls,
        vec![
            (
                "query".to_string(),
                "warehouse".to_string(),
                "SELECT id, email, name FROM users WHERE ds = $1 AND n > $2".to_string(),
                vec![
                    json!("2026-03-07"),
                    json!(5),
                    Value::Null,
                    json!(true),
                    json!("'; DROP TABLE x; --")
                ]
            ),
            (
                "execute".to_string(),
                "production".to_string(),
                "DELETE FROM t WHERE id = ?".to_string(),
                vec![json!(3)]
            ),
        ]
    );
}

#[tokio::test]
async fn database_errors_name_the_connection() {
    let r = run(r#"cranium.query("broken", "SELECT * FROM nope")"#).await;
    match r {
        Err(LuaError::Database {
            ref connection,
            ref message,
        }) => {
            assert_eq!(connection, "broken");
            assert!(message.contains("does not exist"), "{message}");
            println!("{}", r.as_ref().expect_err("err"));
        }
        other => panic!("expected Database, got {other:?}"),
    }
    // A script may handle it with pcall.
    let out = run(r#"local ok, err = pcall(cranium.query, "broken", "SELECT 1"); ctx.outputs.ok = ok; ctx.outputs.err = tostring(err)"#)
        .await
        .expect("handled");
    assert_eq!(out.outputs["ok"], json!(false));
    assert!(out.outputs["err"]
        .as_str()
        .is_some_and(|e| e.contains("does not exist")));
    // Not from inside a coroutine (the VM suspends while the database answers).
    forbidden(
        run(r#"coroutine.wrap(function() cranium.query("warehouse", "SELECT 1") end)()"#).await,
        "cannot be called from inside a coroutine",
    );
    // A parameter that is not a JSON value.
    let r = run(r#"cranium.query("warehouse", "SELECT $1", function() end)"#).await;
    match r {
        Err(LuaError::Script { line, message, .. }) => {
            assert_eq!(line, Some(1));
            assert!(message.contains("parameter 1"), "{message}");
        }
        other => panic!("expected Script, got {other:?}"),
    }
}

#[tokio::test]
async fn logs_are_collected() {
    let out = run(r#"
        cranium.log("debug", "d")
        cranium.log("info", string.format("%d rows", 12))
        cranium.log("warn", "w")
        cranium.log("error", "e")
    "#)
    .await
    .expect("runs");
    assert_eq!(
        out.logs,
        vec![
            (LogLevel::Debug, "d".to_string()),
            (LogLevel::Info, "12 rows".to_string()),
            (LogLevel::Warn, "w".to_string()),
            (LogLevel::Error, "e".to_string()),
        ]
    );
    match run(r#"cranium.log("loud", "x")"#).await {
        Err(LuaError::Script { line, message, .. }) => {
            assert_eq!(line, Some(1));
            assert!(message.contains("unknown level 'loud'"), "{message}");
        }
        other => panic!("expected Script, got {other:?}"),
    }
    // Capped.
    let out = run(r#"for i = 1, 5000 do cranium.log("info", "line " .. i) end"#)
        .await
        .expect("runs");
    assert_eq!(out.logs.len(), 1001);
    assert!(out.logs[1000]
        .1
        .contains("4000 more log lines were dropped"));
}

#[tokio::test]
async fn runtime_errors_report_chunk_and_line() {
    let r = run("local x = 1\nlocal y = nil\nreturn y.z\n").await;
    match r {
        Err(
            ref e @ LuaError::Script {
                ref chunk,
                line,
                ref message,
            },
        ) => {
            println!("{e}");
            assert_eq!(chunk, CHUNK);
            assert_eq!(line, Some(3));
            assert!(
                message.contains("attempt to index a nil value"),
                "{message}"
            );
            assert!(
                e.to_string()
                    .starts_with("scripts/lua/test.lua:3: attempt to index a nil value"),
                "{e}"
            );
        }
        other => panic!("expected Script, got {other:?}"),
    }
    // error() in a nested function.
    let r = run("local function f()\n  error('no app events loaded')\nend\n\nf()\n").await;
    match r {
        Err(LuaError::Script {
            chunk,
            line,
            message,
        }) => {
            assert_eq!((chunk.as_str(), line), (CHUNK, Some(2)));
            assert_eq!(message, "no app events loaded");
        }
        other => panic!("expected Script, got {other:?}"),
    }
    // error without a position.
    let r = run("error('plain', 0)").await;
    match r {
        Err(ref e @ LuaError::Script { line, .. }) => {
            assert_eq!(line, None);
            assert_eq!(e.to_string(), "scripts/lua/test.lua: plain");
        }
        other => panic!("expected Script, got {other:?}"),
    }
}

#[tokio::test]
async fn syntax_errors_report_chunk_and_line() {
    let r = run("local x = 1\nlocal = 2\n").await;
    match r {
        Err(
            ref e @ LuaError::Script {
                ref chunk, line, ..
            },
        ) => {
            println!("{e}");
            assert_eq!(chunk, CHUNK);
            assert_eq!(line, Some(2));
            assert!(e.to_string().contains("near"), "{e}");
        }
        other => panic!("expected Script, got {other:?}"),
    }
}

#[tokio::test]
async fn check_volume_reference_script_runs() {
    let code = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/lua/check_volume.lua"
    ))
    .expect("check_volume.lua");
    let mut row = Map::new();
    row.insert("app_events".into(), json!(1500));
    row.insert("api_requests".into(), json!(300));
    let db = Arc::new(FakeDb {
        rows: vec![row],
        ..FakeDb::default()
    });
    let out = run_script(
        &code,
        "scripts/lua/check_volume.lua",
        &ctx(),
        db.clone(),
        Limits::default(),
        None,
        CancellationToken::new(),
    )
    .await
    .expect("runs");
    assert_eq!(
        Value::Object(out.outputs),
        json!({"app_events": 1500, "api_requests": 300})
    );
    assert_eq!(
        out.logs,
        vec![(
            LogLevel::Info,
            "2026-03-07: 1500 app events, 300 API requests".to_string()
        )]
    );
    let calls = db.calls.lock().expect("lock").clone();
    assert_eq!(
        calls[0].3,
        vec![
            json!("2026-03-07T00:00:00+00:00"),
            json!("2026-03-08T00:00:00+00:00")
        ]
    );
}

#[test]
fn run_script_future_is_send_and_limits_default() {
    fn assert_send<T: Send>(_: &T) {}
    let c = ctx();
    let fut = run_script(
        "",
        CHUNK,
        &c,
        Arc::new(FakeDb::default()),
        Limits::default(),
        None,
        CancellationToken::new(),
    );
    assert_send(&fut);
    fn assert_send_type<T: Send>() {}
    assert_send_type::<Transformer>();
    let l = Limits::default();
    assert_eq!(l.memory_bytes, 64 * 1024 * 1024);
    assert_eq!(l.instructions, 100_000_000);
}

// ----------------------------------------------------------------------------- transformer

const T_CHUNK: &str = "scripts/lua/t.lua";

fn transformer(code: &str) -> Transformer {
    Transformer::new(code, T_CHUNK, Limits::default()).expect("loads")
}

#[test]
fn transform_drop_one_many() {
    let mut t = transformer(
        r#"
        function transform(r)
          if r.kind == "drop" then return nil end
          if r.kind == "many" then
            return { { id = r.id, n = 1 }, { id = r.id, n = 2 } }
          end
          r.seen = true
          return r
        end
    "#,
    );
    assert_eq!(
        t.transform(json!({"kind": "drop"})).expect("drop"),
        Vec::<Value>::new()
    );
    assert_eq!(
        t.transform(json!({"kind": "one", "id": 1})).expect("one"),
        vec![json!({"kind": "one", "id": 1, "seen": true})]
    );
    assert_eq!(
        t.transform(json!({"kind": "many", "id": 2})).expect("many"),
        vec![json!({"id": 2, "n": 1}), json!({"id": 2, "n": 2})]
    );
}

#[test]
fn transform_keeps_nulls_arrays_and_empty_objects() {
    let mut t = transformer("function transform(r) return r end");
    let rec = json!({
        "a": null, "list": [1, null, 3], "empty_list": [], "empty_obj": {},
        "nested": {"x": null, "y": [{"z": null}]}, "f": 1.5, "big": 9007199254740993i64
    });
    assert_eq!(t.transform(rec.clone()).expect("identity"), vec![rec]);

    let mut t = transformer(
        r#"function transform(r)
             r.was_null = (r.a == cranium.null)
             r.b = cranium.null
             r.new_empty = {}
             r.new_list = cranium.array()
             return r
           end"#,
    );
    assert_eq!(
        t.transform(json!({"a": null})).expect("nulls"),
        vec![json!({"a": null, "was_null": true, "b": null, "new_empty": {}, "new_list": []})]
    );

    // An empty table is one empty record; an empty array is no records.
    let mut t = transformer(
        "function transform(r) if r.k == 1 then return {} else return cranium.array() end end",
    );
    assert_eq!(
        t.transform(json!({"k": 1})).expect("empty"),
        vec![json!({})]
    );
    assert_eq!(
        t.transform(json!({"k": 2})).expect("empty list"),
        Vec::<Value>::new()
    );

    // Not a record.
    let mut t = transformer("function transform(r) return 'x' end");
    assert!(matches!(t.transform(json!({})), Err(LuaError::Output(_))));
    let mut t = transformer("function transform(r) return {1, 2} end");
    let e = t.transform(json!({})).expect_err("not records");
    assert!(e.to_string().contains("item 1 is not a record"), "{e}");
}

#[test]
fn transform_errors_report_the_line() {
    let mut t = transformer(
        "local function helper(r)\n  return r.a.b\nend\n\nfunction transform(r)\n  return { v = helper(r) }\nend\n",
    );
    match t.transform(json!({"x": 1})) {
        Err(
            ref e @ LuaError::Script {
                ref chunk,
                line,
                ref message,
            },
        ) => {
            println!("{e}");
            assert_eq!(chunk, T_CHUNK);
            assert_eq!(line, Some(2));
            assert!(message.contains("attempt to index"), "{message}");
        }
        other => panic!("expected Script, got {other:?}"),
    }
    // The transformer keeps working after an error.
    assert_eq!(
        t.transform(json!({"a": {"b": 1}})).expect("ok"),
        vec![json!({"v": 1})]
    );
}

#[test]
fn transform_budget_is_per_call() {
    let limits = Limits {
        memory_bytes: 16 * 1024 * 1024,
        instructions: 100_000,
    };
    let mut t = Transformer::new(
        r#"function transform(r)
             if r.loop then while true do end end
             local s = 0
             for i = 1, 1000 do s = s + i end
             r.s = s
             return r
           end"#,
        T_CHUNK,
        limits,
    )
    .expect("loads");
    // 500 records of ~4,000 instructions each: far over 100,000 in total, fine per call.
    for i in 0..500 {
        let out = t.transform(json!({"i": i})).expect("within budget");
        assert_eq!(out[0]["s"], json!(500500));
    }
    match t.transform(json!({"loop": true})) {
        Err(e @ LuaError::Instructions { limit }) => {
            println!("{e}");
            assert_eq!(limit, 100_000);
        }
        other => panic!("expected Instructions, got {other:?}"),
    }
    // The next record is fine again.
    assert_eq!(
        t.transform(json!({"i": 1})).expect("reset")[0]["s"],
        json!(500500)
    );
}

#[test]
fn transform_memory_limit_and_forbidden_calls() {
    let mut t = Transformer::new(
        r#"function transform(r)
             if r.big then local s = string.rep("x", 1e9) end
             if r.db then cranium.query("warehouse", "SELECT 1") end
             if r.io then io.open("/etc/passwd") end
             return r
           end"#,
        T_CHUNK,
        Limits {
            memory_bytes: 16 * 1024 * 1024,
            instructions: 1_000_000,
        },
    )
    .expect("loads");
    assert!(matches!(
        t.transform(json!({"big": true})),
        Err(LuaError::Memory { .. })
    ));
    let e = t.transform(json!({"db": true})).expect_err("no db");
    assert!(
        matches!(e, LuaError::Forbidden { ref what } if what.contains("not available in record transforms")),
        "{e:?}"
    );
    let e = t.transform(json!({"io": true})).expect_err("no io");
    assert!(matches!(e, LuaError::Forbidden { .. }), "{e:?}");
    assert_eq!(
        t.transform(json!({"ok": 1})).expect("fine"),
        vec![json!({"ok": 1})]
    );
}

#[test]
fn transform_must_be_defined() {
    for code in [
        "local x = 1",
        "transform = 5",
        "local function transform(r) return r end",
    ] {
        match Transformer::new(code, T_CHUNK, Limits::default()) {
            Err(ref e @ LuaError::Script { ref message, .. }) => {
                println!("{e}");
                assert!(message.contains("global function `transform"), "{message}");
            }
            Err(other) => panic!("{code}: expected Script, got {other:?}"),
            Ok(_) => panic!("{code}: expected an error"),
        }
    }
    // A syntax error while loading reports the line.
    match Transformer::new(
        "function transform(r)\n  return r +\nend\n",
        T_CHUNK,
        Limits::default(),
    ) {
        Err(LuaError::Script { chunk, line, .. }) => {
            assert_eq!((chunk.as_str(), line), (T_CHUNK, Some(3)));
        }
        Err(other) => panic!("expected Script, got {other:?}"),
        Ok(_) => panic!("expected an error"),
    }
    // An endless loop at load time is stopped too.
    let r = Transformer::new(
        "while true do end",
        T_CHUNK,
        Limits {
            memory_bytes: 16 * 1024 * 1024,
            instructions: 10_000,
        },
    );
    assert!(matches!(r, Err(LuaError::Instructions { .. })));
}

#[test]
fn scrub_emails_reference_script() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lua/scrub_emails.lua");
    let code = std::fs::read_to_string(path).expect("scrub_emails.lua");
    let mut t =
        Transformer::new(&code, "scripts/lua/scrub_emails.lua", Limits::default()).expect("loads");
    let out = t
        .transform(json!({
            "type": "signup",
            "user_id": 7,
            "email_top_level": "stays@example.com",
            "properties": {
                "email": "jane.doe+tag@example.co.uk",
                "note": "contact bob@mail.example.org or alice_1@x.io today",
                "nested": {"deeper": ["x@y.com", 3, null, {"mail": "q@w.de"}]},
                "count": 3,
                "missing": null
            }
        }))
        .expect("transforms");
    assert_eq!(
        out,
        vec![json!({
            "type": "signup",
            "user_id": 7,
            "email_top_level": "stays@example.com",
            "properties": {
                "email": "<email>",
                "note": "contact <email> or <email> today",
                "nested": {"deeper": ["<email>", 3, null, {"mail": "<email>"}]},
                "count": 3,
                "missing": null
            }
        })]
    );
    assert_eq!(
        t.transform(json!({"type": "internal_test", "properties": {"email": "a@b.com"}}))
            .expect("drops"),
        Vec::<Value>::new()
    );
    // A record without properties passes through.
    assert_eq!(
        t.transform(json!({"type": "ping"})).expect("passes"),
        vec![json!({"type": "ping"})]
    );
}
