//! The Lua runtime: runs `lua` steps and `kafka_to_s3` record transforms in a sandboxed Lua 5.4 VM.
//!
//! Lua scripts are project code, but they run inside the scheduler process next to the credentials of
//! every connection, so a script must not be able to reach the host (files, processes, environment) or
//! take the process down (memory, endless loops). Everything here exists to make that true while still
//! giving scripts what they need: `ctx` (interval, params, upstream outputs), bound-parameter database
//! access and logging.
//!
//! # Sandbox rules
//!
//! - **Libraries.** Only base, `string`, `table`, `math`, `utf8` and `coroutine` are loaded, plus an
//!   `os` table reduced to `time`, `clock`, `date` and `difftime`. `io`, `debug`, `package`, `require`,
//!   `dofile`, `loadfile`, `string.dump` and the rest of `os` are absent; touching one raises
//!   [`LuaError::Forbidden`] ("io is not available in the sandbox") instead of a puzzling "attempt to
//!   index a nil value".
//! - **No bytecode.** `load` compiles text only: a string starting with `"\27"` (precompiled bytecode,
//!   which can crash the VM) raises `Forbidden("bytecode chunks are not allowed")`, and the mode argument
//!   is forced to `"t"`. The script itself is loaded in text mode too.
//! - **`collectgarbage`** accepts only `"count"` and `"collect"`; **`setmetatable`** rejects metatables
//!   with a `__gc` field, because Lua runs finalizers with hooks disabled (a `__gc` loop would escape the
//!   instruction limit and the deadline).
//! - **`print`** and **`warn`** do not write to the host's stdout/stderr: they go to the script's log
//!   (level info and warn).
//! - **Memory.** The VM's allocator refuses allocations beyond [`Limits::memory_bytes`]
//!   ([`LuaError::Memory`]).
//! - **Time.** A count hook runs every [`HOOK_INTERVAL`] VM instructions (fewer when the budget is
//!   smaller) and stops the script when the instruction budget ([`Limits::instructions`]) is spent
//!   ([`LuaError::Instructions`]), the deadline has passed ([`LuaError::Timeout`]) or the cancellation
//!   token fired ([`LuaError::Cancelled`]); the hook is inherited by coroutines. While the script awaits a
//!   database call, the deadline and the token are watched by the host instead.
//! - **Limits are final.** Once a limit trips, the hook keeps raising the error, and `pcall`, `xpcall`
//!   and `coroutine.resume` re-raise it, so a script cannot catch its way past a limit (an out-of-memory
//!   error caught by `pcall`, i.e. a caught error whose value is Lua's "not enough memory", also counts
//!   as the limit being hit).
//! - **Database access** goes through the engine's [`LuaDb`] with bound parameters only; the SQL text is
//!   passed through untouched and values never get spliced into it on this side. `cranium.query` and
//!   `cranium.execute` must be called from the script's main flow, not from inside a coroutine the
//!   script created (they suspend the VM while the database answers).
//! - **Known limit:** a single call into a C library function is not interrupted by the hook, so a
//!   pathological `string.find` pattern can run past the deadline until that call returns. Memory stays
//!   bounded regardless.
//!
//! # Values between JSON and Lua
//!
//! JSON `null` becomes `cranium.null` (a light userdata, *not* `nil`, so keys with null values survive a
//! round trip; compare with `v == cranium.null`). JSON arrays become sequences tagged as arrays, so they
//! stay arrays, empty ones included. On the way back, a table tagged as an array (or made with
//! `cranium.array{...}`) is an array; an untagged table whose keys are exactly `1..n` is an array; a table
//! with string keys is an object; **an untagged empty table is an empty object** `{}`; tables mixing
//! string and integer keys, sparse arrays, functions, NaN and infinities are errors that name the path
//! of the offending value.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use mlua::chunk::ChunkMode;
use mlua::{
    HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table, Value, Variadic, VmState,
};
use serde_json::{Map, Value as Json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Default memory limit of a Lua VM: 64 MiB.
pub const DEFAULT_MEMORY_BYTES: usize = 64 * 1024 * 1024;
/// Default instruction budget of a script run (or of one `transform` call).
pub const DEFAULT_INSTRUCTIONS: u64 = 100_000_000;
/// The largest `ctx.outputs` a script may produce, serialised as JSON.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// The count hook runs every this many VM instructions (or every `instructions` when smaller).
pub const HOOK_INTERVAL: u32 = 1_000;
/// Log lines kept per script run; later ones are counted and dropped.
const MAX_LOG_LINES: usize = 1_000;
/// Log bytes kept per script run.
const MAX_LOG_BYTES: usize = 1024 * 1024;
/// Nesting depth of tables converted to JSON (also stops recursive tables).
const MAX_DEPTH: usize = 64;
/// Lua's message for an allocation failure.
const LUA_MEMERRMSG: &str = "not enough memory";

/// Resource limits of one Lua VM.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes the VM may allocate (default 64 MiB).
    pub memory_bytes: usize,
    /// VM instructions per script run, or per `transform` call (default 100,000,000).
    pub instructions: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            instructions: DEFAULT_INSTRUCTIONS,
        }
    }
}

/// Database access the engine provides to scripts (backed by real connections at run time).
pub trait LuaDb: Send + Sync {
    fn query<'a>(
        &'a self,
        connection: &'a str,
        sql: &'a str,
        params: Vec<Json>,
    ) -> BoxFuture<'a, Result<Vec<Map<String, Json>>, String>>;
    fn execute<'a>(
        &'a self,
        connection: &'a str,
        sql: &'a str,
        params: Vec<Json>,
    ) -> BoxFuture<'a, Result<u64, String>>;
}

/// What a script sees as `ctx`.
#[derive(Debug, Clone)]
pub struct ScriptContext {
    pub job: String,
    pub step: String,
    pub run_id: String,
    /// RFC 3339 in the job's time zone.
    pub interval_start: String,
    pub interval_end: String,
    pub ds: String,
    pub params: Json,
    /// outputs of upstream steps: step id -> outputs map
    pub upstream: Json,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn parse(s: &str) -> Option<LogLevel> {
        match s {
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

/// The result of a successful script run.
#[derive(Debug, Clone)]
pub struct ScriptOutcome {
    /// `ctx.outputs` as the script left it.
    pub outputs: Map<String, Json>,
    /// `cranium.log` (and `print`/`warn`) lines, in order; capped at 1,000 lines / 1 MiB.
    pub logs: Vec<(LogLevel, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum LuaError {
    /// A syntax or runtime error with the script name and line:
    /// "scripts/lua/x.lua:12: attempt to index a nil value". `line` is `None` when Lua gave no position
    /// (e.g. `error(msg, 0)`), and the message then reads "scripts/lua/x.lua: msg".
    #[error("{chunk}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Script {
        chunk: String,
        line: Option<u32>,
        message: String,
    },
    #[error("the Lua script exceeded its memory limit of {limit} bytes")]
    Memory { limit: usize },
    #[error("the Lua script exceeded its instruction limit of {limit} instructions")]
    Instructions { limit: u64 },
    #[error("the Lua script ran past its deadline and was stopped")]
    Timeout,
    #[error("the Lua script was cancelled")]
    Cancelled,
    /// A `cranium.query`/`cranium.execute` failure: the connection name and the database's message.
    #[error("database error on connection '{connection}': {message}")]
    Database { connection: String, message: String },
    /// The script touched something the sandbox does not offer, e.g. "bytecode chunks are not allowed",
    /// "io is not available in the sandbox".
    #[error("not allowed in the Lua sandbox: {what}")]
    Forbidden { what: String },
    /// Outputs (or transformed records) that are not JSON-serialisable or too large.
    #[error("invalid Lua output: {0}")]
    Output(String),
}

// ---------------------------------------------------------------------------------------------------
// Errors raised inside the VM by host code, recognised again when they come out.

/// Raised by host functions; surfaces as the matching [`LuaError`] unless the script catches it.
#[derive(Debug, Clone, thiserror::Error)]
enum HostError {
    #[error("{0}")]
    Forbidden(String),
    #[error("database error on connection '{connection}': {message}")]
    Database { connection: String, message: String },
}

/// Raised by the hook (and the `pcall` wrappers) once a limit tripped.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct AbortError(String);

fn forbidden(what: impl Into<String>) -> mlua::Error {
    mlua::Error::external(HostError::Forbidden(what.into()))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Abort {
    Memory = 1,
    Instructions = 2,
    Timeout = 3,
    Cancelled = 4,
}

/// Limits shared by the hook, the `pcall` wrappers and the host.
struct Guard {
    limits: Limits,
    used: AtomicU64,
    tripped: AtomicU8,
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
}

impl Guard {
    fn new(limits: Limits, deadline: Option<Instant>, cancel: Option<CancellationToken>) -> Guard {
        Guard {
            limits,
            used: AtomicU64::new(0),
            tripped: AtomicU8::new(0),
            deadline,
            cancel,
        }
    }

    fn interval(&self) -> u32 {
        u32::try_from(self.limits.instructions)
            .unwrap_or(u32::MAX)
            .clamp(1, HOOK_INTERVAL)
    }

    fn reset(&self) {
        self.used.store(0, Ordering::SeqCst);
        self.tripped.store(0, Ordering::SeqCst);
    }

    fn tripped(&self) -> Option<Abort> {
        match self.tripped.load(Ordering::SeqCst) {
            1 => Some(Abort::Memory),
            2 => Some(Abort::Instructions),
            3 => Some(Abort::Timeout),
            4 => Some(Abort::Cancelled),
            _ => None,
        }
    }

    /// Records `abort` (the first one wins) and returns the error to raise in the VM.
    fn trip(&self, abort: Abort) -> mlua::Error {
        let _ = self
            .tripped
            .compare_exchange(0, abort as u8, Ordering::SeqCst, Ordering::SeqCst);
        self.raise()
    }

    fn raise(&self) -> mlua::Error {
        let msg = match self.tripped() {
            Some(a) => self.error(a).to_string(),
            None => "the Lua script was stopped".to_string(),
        };
        mlua::Error::external(AbortError(msg))
    }

    fn error(&self, abort: Abort) -> LuaError {
        match abort {
            Abort::Memory => LuaError::Memory {
                limit: self.limits.memory_bytes,
            },
            Abort::Instructions => LuaError::Instructions {
                limit: self.limits.instructions,
            },
            Abort::Timeout => LuaError::Timeout,
            Abort::Cancelled => LuaError::Cancelled,
        }
    }

    /// The count hook.
    fn tick(&self) -> mlua::Result<VmState> {
        if self.tripped().is_some() {
            return Err(self.raise());
        }
        let used = self
            .used
            .fetch_add(u64::from(self.interval()), Ordering::SeqCst)
            .saturating_add(u64::from(self.interval()));
        if used > self.limits.instructions {
            return Err(self.trip(Abort::Instructions));
        }
        if self.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(self.trip(Abort::Cancelled));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(self.trip(Abort::Timeout));
        }
        Ok(VmState::Continue)
    }

    /// After `pcall`/`xpcall`/`coroutine.resume`: re-raise a tripped limit (or an out-of-memory error
    /// the script just caught); otherwise pass the results through.
    fn check(&self, results: MultiValue) -> mlua::Result<MultiValue> {
        if self.tripped().is_some() {
            return Err(self.raise());
        }
        let mut it = results.iter();
        if let (Some(Value::Boolean(false)), Some(err)) = (it.next(), it.next()) {
            let oom = match err {
                Value::String(s) => s.as_bytes().as_ref() == LUA_MEMERRMSG.as_bytes(),
                Value::Error(e) => is_memory_error(e),
                _ => false,
            };
            if oom {
                return Err(self.trip(Abort::Memory));
            }
        }
        Ok(results)
    }
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. }
        | mlua::Error::WithContext { cause, .. }
        | mlua::Error::BadArgument { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------------
// Logs

/// Collects log lines (capped) and emits them with tracing.
struct LogSink {
    collect: bool,
    job: String,
    step: String,
    run_id: String,
    script: String,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    lines: Vec<(LogLevel, String)>,
    bytes: usize,
    dropped: usize,
}

impl LogSink {
    fn push(&self, level: LogLevel, msg: String) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.lines.len() >= MAX_LOG_LINES || st.bytes + msg.len() > MAX_LOG_BYTES {
            st.dropped += 1;
            return;
        }
        st.bytes += msg.len();
        let (job, step, run_id, script) = (&self.job, &self.step, &self.run_id, &self.script);
        match level {
            LogLevel::Debug => {
                tracing::debug!(target: "cranium::lua", job, step, run_id, script, "{msg}")
            }
            LogLevel::Info => {
                tracing::info!(target: "cranium::lua", job, step, run_id, script, "{msg}")
            }
            LogLevel::Warn => {
                tracing::warn!(target: "cranium::lua", job, step, run_id, script, "{msg}")
            }
            LogLevel::Error => {
                tracing::error!(target: "cranium::lua", job, step, run_id, script, "{msg}")
            }
        }
        if self.collect {
            st.lines.push((level, msg));
        }
    }

    fn take(&self) -> Vec<(LogLevel, String)> {
        let Ok(mut st) = self.state.lock() else {
            return Vec::new();
        };
        let mut lines = std::mem::take(&mut st.lines);
        if st.dropped > 0 {
            lines.push((
                LogLevel::Warn,
                format!(
                    "{} more log lines were dropped (limit {MAX_LOG_LINES} lines / {MAX_LOG_BYTES} bytes)",
                    st.dropped
                ),
            ));
        }
        lines
    }
}

/// `tostring` of every value, tab-separated (as `print` does).
fn stringify(values: &[Value]) -> mlua::Result<String> {
    let mut out = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        out.push_str(&v.to_string()?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------
// The sandbox

/// Names removed from the global environment; reading one raises `Forbidden`.
const FORBIDDEN_GLOBALS: &[&str] = &[
    "io",
    "debug",
    "package",
    "require",
    "dofile",
    "loadfile",
    "loadstring",
    "module",
];
/// `os` functions removed; reading one raises `Forbidden`.
const FORBIDDEN_OS: &[&str] = &[
    "execute",
    "exit",
    "getenv",
    "remove",
    "rename",
    "tmpname",
    "setlocale",
];
const SAFE_OS: &[&str] = &["time", "clock", "date", "difftime"];

/// Lua code that wraps the error-catching functions so a tripped limit cannot be swallowed.
const PRELUDE: &str = r#"
local check, raw_pcall, raw_xpcall, raw_resume = ...
pcall = function(...) return check(raw_pcall(...)) end
xpcall = function(...) return check(raw_xpcall(...)) end
coroutine.resume = function(...) return check(raw_resume(...)) end
"#;

/// An `__index` metamethod that raises `Forbidden` for `names` and returns nil otherwise.
fn forbidding_index(
    lua: &Lua,
    prefix: &'static str,
    names: &'static [&'static str],
) -> mlua::Result<Table> {
    let mt = lua.create_table()?;
    let index = lua.create_function(move |_, (_t, key): (Value, Value)| {
        if let Value::String(k) = &key {
            let k = k.to_string_lossy();
            if names.contains(&k.as_str()) {
                return Err(forbidden(format!(
                    "{prefix}{k} is not available in the sandbox"
                )));
            }
        }
        Ok(Value::Nil)
    })?;
    mt.raw_set("__index", index)?;
    Ok(mt)
}

/// A fresh sandboxed VM with the hook and the memory limit set (no `cranium`, no `ctx` yet).
fn new_sandbox(guard: &Arc<Guard>, sink: &Arc<LogSink>) -> mlua::Result<Lua> {
    let libs = StdLib::COROUTINE
        | StdLib::TABLE
        | StdLib::OS
        | StdLib::STRING
        | StdLib::UTF8
        | StdLib::MATH;
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    let g = lua.globals();

    for name in FORBIDDEN_GLOBALS {
        g.raw_set(*name, Value::Nil)?;
    }
    g.set_metatable(Some(forbidding_index(&lua, "", FORBIDDEN_GLOBALS)?))?;

    // os: only the clock functions.
    let full_os: Table = g.raw_get("os")?;
    let os = lua.create_table()?;
    for name in SAFE_OS {
        os.raw_set(*name, full_os.raw_get::<Value>(*name)?)?;
    }
    os.set_metatable(Some(forbidding_index(&lua, "os.", FORBIDDEN_OS)?))?;
    g.raw_set("os", os)?;

    // string.dump produces bytecode.
    let string: Table = g.raw_get("string")?;
    string.raw_set("dump", Value::Nil)?;
    string.set_metatable(Some(forbidding_index(&lua, "string.", &["dump"])?))?;

    // load: text only.
    let raw_load: mlua::Function = g.raw_get("load")?;
    let load = lua.create_function(move |lua, args: MultiValue| {
        let mut args = args.into_vec();
        if let Some(Value::String(s)) = args.first() {
            if s.as_bytes().first() == Some(&0x1b) {
                return Err(forbidden("bytecode chunks are not allowed"));
            }
        }
        while args.len() < 3 {
            args.push(Value::Nil);
        }
        // Force text mode; keep `env` only when it was passed (an explicit nil env means "no _ENV").
        args[2] = Value::String(lua.create_string("t")?);
        raw_load.call::<MultiValue>(MultiValue::from_vec(args))
    })?;
    g.raw_set("load", load)?;

    // collectgarbage: "count" and "collect" only.
    let raw_gc: mlua::Function = g.raw_get("collectgarbage")?;
    let gc = lua.create_function(move |_, args: MultiValue| {
        let opt = match args.front() {
            None | Some(Value::Nil) => "collect".to_string(),
            Some(Value::String(s)) => s.to_string_lossy(),
            Some(other) => other.type_name().to_string(),
        };
        if opt != "collect" && opt != "count" {
            return Err(forbidden(format!(
                "collectgarbage(\"{opt}\") is not allowed (only \"count\" and \"collect\")"
            )));
        }
        raw_gc.call::<MultiValue>(opt)
    })?;
    g.raw_set("collectgarbage", gc)?;

    // setmetatable: no finalizers (they run with hooks off, beyond the limits).
    let raw_setmt: mlua::Function = g.raw_get("setmetatable")?;
    let setmt = lua.create_function(move |_, (t, mt): (Value, Value)| {
        if let Value::Table(mt) = &mt {
            if !mt.raw_get::<Value>("__gc")?.is_nil() {
                return Err(forbidden(
                    "__gc metamethods are not allowed (finalizers run outside the sandbox's limits)",
                ));
            }
        }
        raw_setmt.call::<Value>((t, mt))
    })?;
    g.raw_set("setmetatable", setmt)?;

    // print and warn go to the script's log.
    let s = sink.clone();
    g.raw_set(
        "print",
        lua.create_function(move |_, args: Variadic<Value>| {
            s.push(LogLevel::Info, stringify(&args)?);
            Ok(())
        })?,
    )?;
    let s = sink.clone();
    g.raw_set(
        "warn",
        lua.create_function(move |_, args: Variadic<Value>| {
            let msg = stringify(&args)?.replace('\t', "");
            // "@on"/"@off" are control messages in Lua 5.4.
            if !msg.starts_with('@') {
                s.push(LogLevel::Warn, msg);
            }
            Ok(())
        })?,
    )?;

    // pcall/xpcall/coroutine.resume re-raise tripped limits.
    let gd = guard.clone();
    let check = lua.create_function(move |_, results: MultiValue| gd.check(results))?;
    let coroutine: Table = g.raw_get("coroutine")?;
    lua.load(PRELUDE)
        .set_name("=sandbox")
        .set_mode(ChunkMode::Text)
        .call::<()>((
            check,
            g.raw_get::<Value>("pcall")?,
            g.raw_get::<Value>("xpcall")?,
            coroutine.raw_get::<Value>("resume")?,
        ))?;

    let gd = guard.clone();
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(guard.interval()),
        move |_, _| gd.tick(),
    )?;
    lua.set_memory_limit(guard.limits.memory_bytes)?;
    Ok(lua)
}

/// The `cranium` table. `db` is `None` in record transforms.
fn install_api(
    lua: &Lua,
    sink: &Arc<LogSink>,
    db: Option<(Arc<dyn LuaDb>, Arc<AtomicUsize>)>,
) -> mlua::Result<Table> {
    let api = lua.create_table()?;
    api.raw_set("null", lua.null())?;
    api.raw_set(
        "array",
        lua.create_function(|lua, t: Option<Table>| {
            let t = match t {
                Some(t) => t,
                None => lua.create_table()?,
            };
            t.set_metatable(Some(lua.array_metatable()))?;
            Ok(t)
        })?,
    )?;
    let s = sink.clone();
    api.raw_set(
        "log",
        lua.create_function(move |_, (level, msg): (String, Variadic<Value>)| {
            let Some(lvl) = LogLevel::parse(&level) else {
                return Err(mlua::Error::runtime(format!(
                    "cranium.log: unknown level '{level}' (expected debug, info, warn or error)"
                )));
            };
            s.push(lvl, stringify(&msg)?);
            Ok(())
        })?,
    )?;
    match db {
        Some((db, main)) => {
            let (d, m) = (db.clone(), main.clone());
            api.raw_set(
                "query",
                lua.create_async_function(move |lua, args: (String, String, Variadic<Value>)| {
                    let (db, main) = (d.clone(), m.clone());
                    async move {
                        let (conn, sql, params) = db_args(&lua, &main, "query", args)?;
                        let rows = db.query(&conn, &sql, params).await.map_err(|message| {
                            mlua::Error::external(HostError::Database {
                                connection: conn.clone(),
                                message,
                            })
                        })?;
                        lua.to_value(&rows)
                    }
                })?,
            )?;
            api.raw_set(
                "execute",
                lua.create_async_function(move |lua, args: (String, String, Variadic<Value>)| {
                    let (db, main) = (db.clone(), main.clone());
                    async move {
                        let (conn, sql, params) = db_args(&lua, &main, "execute", args)?;
                        let n = db.execute(&conn, &sql, params).await.map_err(|message| {
                            mlua::Error::external(HostError::Database {
                                connection: conn.clone(),
                                message,
                            })
                        })?;
                        Ok(i64::try_from(n).map_or(Value::Number(n as f64), Value::Integer))
                    }
                })?,
            )?;
        }
        None => {
            for name in ["query", "execute"] {
                api.raw_set(
                    name,
                    lua.create_function(move |_, _: MultiValue| -> mlua::Result<()> {
                        Err(forbidden(format!(
                            "cranium.{name} is not available in record transforms"
                        )))
                    })?,
                )?;
            }
        }
    }
    lua.globals().raw_set("cranium", api.clone())?;
    Ok(api)
}

/// Checks the calling thread and converts the bound parameters.
fn db_args(
    lua: &Lua,
    main: &AtomicUsize,
    what: &str,
    (conn, sql, params): (String, String, Variadic<Value>),
) -> mlua::Result<(String, String, Vec<Json>)> {
    if lua.current_thread().to_pointer() as usize != main.load(Ordering::SeqCst) {
        return Err(forbidden(format!(
            "cranium.{what} cannot be called from inside a coroutine"
        )));
    }
    let array_mt = lua.array_metatable();
    let mut out = Vec::with_capacity(params.len());
    for (i, v) in params.iter().enumerate() {
        let j = to_json(v, &array_mt, &mut Vec::new()).map_err(|e| {
            mlua::Error::runtime(format!("cranium.{what}: parameter {}: {e}", i + 1))
        })?;
        out.push(j);
    }
    Ok((conn, sql, out))
}

// ---------------------------------------------------------------------------------------------------
// Lua -> JSON

enum PathPart {
    Key(String),
    Index(usize),
}

fn path_string(path: &[PathPart]) -> String {
    let mut s = String::new();
    for p in path {
        match p {
            PathPart::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            PathPart::Index(i) => {
                let _ = write!(s, "[{i}]");
            }
        }
    }
    s
}

/// Converts a Lua value to JSON (rules in the module docs). Errors name the path of the bad value.
fn to_json(v: &Value, array_mt: &Table, path: &mut Vec<PathPart>) -> Result<Json, String> {
    let fail = |path: &[PathPart], msg: String| {
        if path.is_empty() {
            Err(msg)
        } else {
            Err(format!("{}: {msg}", path_string(path)))
        }
    };
    match v {
        Value::Nil => Ok(Json::Null),
        Value::LightUserData(p) if p.0.is_null() => Ok(Json::Null),
        Value::Boolean(b) => Ok(Json::Bool(*b)),
        Value::Integer(i) => Ok(Json::from(*i)),
        Value::Number(n) => match serde_json::Number::from_f64(*n) {
            Some(n) => Ok(Json::Number(n)),
            None => fail(
                path,
                format!("the number {n} cannot be represented in JSON"),
            ),
        },
        Value::String(s) => match s.to_str() {
            Ok(s) => Ok(Json::String(s.to_string())),
            Err(_) => fail(path, "the string is not valid UTF-8".to_string()),
        },
        Value::Table(t) => {
            if path.len() >= MAX_DEPTH {
                return fail(
                    path,
                    format!("tables nested deeper than {MAX_DEPTH} levels (or a table that contains itself)"),
                );
            }
            let is_array = t
                .metatable()
                .is_some_and(|m| m.to_pointer() == array_mt.to_pointer());
            if is_array {
                let mut out = Vec::new();
                for i in 1..=t.raw_len() {
                    let item: Value = t.raw_get(i).map_err(|e| e.to_string())?;
                    path.push(PathPart::Index(i));
                    let j = to_json(&item, array_mt, path);
                    path.pop();
                    out.push(j?);
                }
                return Ok(Json::Array(out));
            }
            let mut strings: Vec<(String, Value)> = Vec::new();
            let mut ints: Vec<(i64, Value)> = Vec::new();
            let mut bad: Option<String> = None;
            t.for_each::<Value, Value>(|k, v| {
                match k {
                    Value::String(s) => match s.to_str() {
                        Ok(s) => strings.push((s.to_string(), v)),
                        Err(_) => bad = Some("a key is not valid UTF-8".to_string()),
                    },
                    Value::Integer(i) => ints.push((i, v)),
                    other => {
                        bad = Some(format!(
                            "a {} key cannot be a JSON object key",
                            other.type_name()
                        ))
                    }
                }
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            if let Some(msg) = bad {
                return fail(path, msg);
            }
            if !strings.is_empty() && !ints.is_empty() {
                return fail(
                    path,
                    "the table mixes string keys and array items; use one or the other".to_string(),
                );
            }
            if !ints.is_empty() {
                ints.sort_by_key(|(i, _)| *i);
                let contiguous = ints
                    .iter()
                    .enumerate()
                    .all(|(n, (i, _))| *i == n as i64 + 1);
                if !contiguous {
                    return fail(
                        path,
                        "the array has holes or keys that are not 1..n (a JSON array cannot)"
                            .to_string(),
                    );
                }
                let mut out = Vec::with_capacity(ints.len());
                for (i, item) in &ints {
                    path.push(PathPart::Index(*i as usize));
                    let j = to_json(item, array_mt, path);
                    path.pop();
                    out.push(j?);
                }
                return Ok(Json::Array(out));
            }
            let mut map = Map::new();
            for (k, item) in strings {
                path.push(PathPart::Key(k.clone()));
                let j = to_json(&item, array_mt, path);
                path.pop();
                map.insert(k, j?);
            }
            Ok(Json::Object(map))
        }
        other => fail(
            path,
            format!("a {} cannot be converted to JSON", other.type_name()),
        ),
    }
}

// ---------------------------------------------------------------------------------------------------
// Error mapping

/// Finds "<chunk>:<line>:" at the start of `s`: returns (chunk, line, rest after ": ").
fn split_location(s: &str) -> Option<(&str, u32, &str)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(off) = s[i..].find(':') {
        let colon = i + off;
        let digits_end = bytes[colon + 1..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(bytes.len(), |p| colon + 1 + p);
        if digits_end > colon + 1 && bytes.get(digits_end) == Some(&b':') {
            if let Ok(line) = s[colon + 1..digits_end].parse::<u32>() {
                let rest = s[digits_end + 1..]
                    .strip_prefix(' ')
                    .unwrap_or(&s[digits_end + 1..]);
                return Some((&s[..colon], line, rest));
            }
        }
        i = colon + 1;
    }
    None
}

/// Lua shortens long chunk names to "...tail".
fn same_chunk(found: &str, chunk_name: &str) -> bool {
    found == chunk_name
        || found
            .strip_prefix("...")
            .is_some_and(|tail| !tail.is_empty() && chunk_name.ends_with(tail))
}

fn strip_traceback(msg: &str) -> &str {
    match msg.find("\nstack traceback:") {
        Some(i) => &msg[..i],
        None => msg,
    }
}

/// A Lua error message ("scripts/x.lua:12: boom") as `LuaError::Script`.
fn script_error(msg: &str, chunk_name: &str) -> LuaError {
    let msg = strip_traceback(msg).trim_end();
    match split_location(msg) {
        Some((found, line, rest)) => LuaError::Script {
            chunk: if same_chunk(found, chunk_name) {
                chunk_name.to_string()
            } else {
                found.to_string()
            },
            line: Some(line),
            message: rest.to_string(),
        },
        None => LuaError::Script {
            chunk: chunk_name.to_string(),
            line: None,
            message: msg.to_string(),
        },
    }
}

/// The first line of a traceback inside the script, e.g. "\tscripts/x.lua:3: in main chunk".
fn traceback_line(traceback: &str, chunk_name: &str) -> Option<u32> {
    traceback.lines().find_map(|l| {
        let (found, line, _) = split_location(l.trim_start())?;
        same_chunk(found, chunk_name).then_some(line)
    })
}

fn map_error(e: mlua::Error, chunk_name: &str, guard: &Guard) -> LuaError {
    if let Some(a) = guard.tripped() {
        return guard.error(a);
    }
    if let Some(h) = e.downcast_ref::<HostError>() {
        return match h.clone() {
            HostError::Forbidden(what) => LuaError::Forbidden { what },
            HostError::Database {
                connection,
                message,
            } => LuaError::Database {
                connection,
                message,
            },
        };
    }
    if is_memory_error(&e) {
        return LuaError::Memory {
            limit: guard.limits.memory_bytes,
        };
    }
    match &e {
        mlua::Error::SyntaxError { message, .. } => script_error(message, chunk_name),
        mlua::Error::RuntimeError(message) => script_error(message, chunk_name),
        mlua::Error::CallbackError { traceback, cause } => {
            let mut inner: &mlua::Error = cause;
            while let mlua::Error::CallbackError { cause, .. } = inner {
                inner = cause;
            }
            let message = match inner {
                mlua::Error::RuntimeError(m) => strip_traceback(m).to_string(),
                other => other.to_string(),
            };
            // A Lua error passing through a host function already carries its position.
            if let LuaError::Script {
                chunk,
                line: Some(line),
                message,
            } = script_error(&message, chunk_name)
            {
                if chunk == chunk_name {
                    return LuaError::Script {
                        chunk,
                        line: Some(line),
                        message,
                    };
                }
            }
            LuaError::Script {
                chunk: chunk_name.to_string(),
                line: traceback_line(traceback, chunk_name),
                message,
            }
        }
        other => LuaError::Script {
            chunk: chunk_name.to_string(),
            line: None,
            message: strip_traceback(&other.to_string()).to_string(),
        },
    }
}

fn is_bytecode(code: &str) -> bool {
    code.as_bytes().first() == Some(&0x1b)
}

fn load_chunk(lua: &Lua, code: &str, chunk_name: &str) -> mlua::Result<mlua::Function> {
    lua.load(code)
        .set_name(format!("@{chunk_name}"))
        .set_mode(ChunkMode::Text)
        .into_function()
}

// ---------------------------------------------------------------------------------------------------
// Scripts

fn build_ctx(lua: &Lua, ctx: &ScriptContext) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.raw_set("job", ctx.job.as_str())?;
    t.raw_set("step", ctx.step.as_str())?;
    t.raw_set("run_id", ctx.run_id.as_str())?;
    let interval = lua.create_table()?;
    interval.raw_set("start", ctx.interval_start.as_str())?;
    interval.raw_set("end", ctx.interval_end.as_str())?;
    interval.raw_set("ds", ctx.ds.as_str())?;
    t.raw_set("interval", interval)?;
    let params = match &ctx.params {
        Json::Null => Value::Table(lua.create_table()?),
        p => lua.to_value(p)?,
    };
    t.raw_set("params", params)?;
    let steps = lua.create_table()?;
    if let Json::Object(up) = &ctx.upstream {
        for (id, outputs) in up {
            let s = lua.create_table()?;
            let outputs = match outputs {
                Json::Null => Value::Table(lua.create_table()?),
                o => lua.to_value(o)?,
            };
            s.raw_set("outputs", outputs)?;
            steps.raw_set(id.as_str(), s)?;
        }
    }
    t.raw_set("steps", steps)?;
    t.raw_set("outputs", lua.create_table()?)?;
    Ok(t)
}

/// Run a script to completion. `chunk_name` (e.g. "scripts/lua/check_volume.lua") appears in errors.
///
/// The script sees `ctx` (`ctx.job`, `ctx.step`, `ctx.run_id`, `ctx.interval.start`/`["end"]`/`ds`,
/// `ctx.params`, `ctx.steps[<id>].outputs`, and `ctx.outputs`, an empty table it fills) and `cranium`
/// (`query(conn, sql, ...params)` → array of rows, `execute(conn, sql, ...params)` → rows affected,
/// `log(level, msg)`, `null`, `array(t)`). The VM runs on the current task; database calls await.
pub async fn run_script(
    code: &str,
    chunk_name: &str,
    ctx: &ScriptContext,
    db: Arc<dyn LuaDb>,
    limits: Limits,
    deadline: Option<Instant>,
    cancel: CancellationToken,
) -> Result<ScriptOutcome, LuaError> {
    let (result, logs) =
        run_script_keeping_logs(code, chunk_name, ctx, db, limits, deadline, cancel).await;
    result.map(|o| ScriptOutcome { logs, ..o })
}

/// [`run_script`], with the lines the script logged whether it succeeded or not (a failed
/// script's log is what its reader needs most).
pub async fn run_script_keeping_logs(
    code: &str,
    chunk_name: &str,
    ctx: &ScriptContext,
    db: Arc<dyn LuaDb>,
    limits: Limits,
    deadline: Option<Instant>,
    cancel: CancellationToken,
) -> (Result<ScriptOutcome, LuaError>, Vec<(LogLevel, String)>) {
    let sink = Arc::new(LogSink {
        collect: true,
        job: ctx.job.clone(),
        step: ctx.step.clone(),
        run_id: ctx.run_id.clone(),
        script: chunk_name.to_string(),
        state: Mutex::new(LogState::default()),
    });
    let result = run_with_sink(code, chunk_name, ctx, db, limits, deadline, cancel, &sink).await;
    (result, sink.take())
}

#[allow(clippy::too_many_arguments)]
async fn run_with_sink(
    code: &str,
    chunk_name: &str,
    ctx: &ScriptContext,
    db: Arc<dyn LuaDb>,
    limits: Limits,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    sink: &Arc<LogSink>,
) -> Result<ScriptOutcome, LuaError> {
    if is_bytecode(code) {
        return Err(LuaError::Forbidden {
            what: "bytecode chunks are not allowed".to_string(),
        });
    }
    if cancel.is_cancelled() {
        return Err(LuaError::Cancelled);
    }
    let guard = Arc::new(Guard::new(limits, deadline, Some(cancel.clone())));
    let fail = |e: mlua::Error| map_error(e, chunk_name, &guard);

    let lua = new_sandbox(&guard, sink).map_err(fail)?;
    let main = Arc::new(AtomicUsize::new(0));
    install_api(&lua, sink, Some((db, main.clone()))).map_err(fail)?;
    let ctx_table = build_ctx(&lua, ctx).map_err(fail)?;
    lua.globals()
        .raw_set("ctx", ctx_table.clone())
        .map_err(fail)?;
    let func = load_chunk(&lua, code, chunk_name).map_err(fail)?;
    let thread = lua.create_thread(func).map_err(fail)?;
    main.store(thread.to_pointer() as usize, Ordering::SeqCst);
    let run = thread.into_async::<()>(()).map_err(fail)?;

    let expired = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(LuaError::Cancelled),
        _ = expired => Err(LuaError::Timeout),
        r = run => r.map_err(fail),
    };
    result?;
    if let Some(a) = guard.tripped() {
        return Err(guard.error(a));
    }

    let outputs_value: Value = ctx_table.raw_get("outputs").map_err(fail)?;
    let outputs = match &outputs_value {
        Value::Nil => Map::new(),
        Value::Table(_) => match to_json(&outputs_value, &lua.array_metatable(), &mut Vec::new()) {
            Ok(Json::Object(m)) => m,
            Ok(_) => {
                return Err(LuaError::Output(
                    "ctx.outputs must be a table with string keys, not an array".to_string(),
                ))
            }
            Err(e) => return Err(LuaError::Output(format!("ctx.outputs.{e}"))),
        },
        other => {
            return Err(LuaError::Output(format!(
                "ctx.outputs must be a table, not a {}",
                other.type_name()
            )))
        }
    };
    let size = serde_json::to_vec(&outputs).map_or(usize::MAX, |v| v.len());
    if size > MAX_OUTPUT_BYTES {
        return Err(LuaError::Output(format!(
            "ctx.outputs is {size} bytes as JSON; the limit is {MAX_OUTPUT_BYTES} bytes (64 KiB)"
        )));
    }
    Ok(ScriptOutcome {
        outputs,
        logs: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------------
// Record transforms

/// Record-transform mode: load `code` once (it defines a global `transform(record)`), then call it per
/// record. The instruction budget applies per call; memory is one VM for the transformer's lifetime.
/// `cranium.log`/`print` go to tracing only; `cranium.query`/`execute` are not available.
pub struct Transformer {
    lua: Lua,
    func: mlua::Function,
    guard: Arc<Guard>,
    chunk_name: String,
}

impl Transformer {
    /// Loads and runs `code`; an error if it does not define a global function `transform`.
    pub fn new(code: &str, chunk_name: &str, limits: Limits) -> Result<Transformer, LuaError> {
        if is_bytecode(code) {
            return Err(LuaError::Forbidden {
                what: "bytecode chunks are not allowed".to_string(),
            });
        }
        let guard = Arc::new(Guard::new(limits, None, None));
        let sink = Arc::new(LogSink {
            collect: false,
            job: String::new(),
            step: String::new(),
            run_id: String::new(),
            script: chunk_name.to_string(),
            state: Mutex::new(LogState::default()),
        });
        let fail = |e: mlua::Error| map_error(e, chunk_name, &guard);
        let lua = new_sandbox(&guard, &sink).map_err(fail)?;
        install_api(&lua, &sink, None).map_err(fail)?;
        load_chunk(&lua, code, chunk_name)
            .and_then(|f| f.call::<()>(()))
            .map_err(fail)?;
        if let Some(a) = guard.tripped() {
            return Err(guard.error(a));
        }
        let func =
            match lua.globals().raw_get::<Value>("transform") {
                Ok(Value::Function(f)) => f,
                Ok(other) => {
                    return Err(LuaError::Script {
                        chunk: chunk_name.to_string(),
                        line: None,
                        message: format!(
                        "the script must define a global function `transform(record)` (found {})",
                        if other.is_nil() { "none" } else { other.type_name() }
                    ),
                    })
                }
                Err(e) => return Err(fail(e)),
            };
        Ok(Transformer {
            lua,
            func,
            guard,
            chunk_name: chunk_name.to_string(),
        })
    }

    /// Calls `transform(record)`: nil (or `cranium.null`) → drop (empty vec), a table with string keys
    /// (an empty table included) → one record, an array of tables → many (an empty array → none).
    pub fn transform(&mut self, record: Json) -> Result<Vec<Json>, LuaError> {
        self.guard.reset();
        let fail = |e: mlua::Error| map_error(e, &self.chunk_name, &self.guard);
        let arg = self.lua.to_value(&record).map_err(fail)?;
        let ret: Value = self.func.call(arg).map_err(fail)?;
        if let Some(a) = self.guard.tripped() {
            return Err(self.guard.error(a));
        }
        if !matches!(ret, Value::Nil | Value::Table(_) | Value::LightUserData(_)) {
            return Err(LuaError::Output(format!(
                "transform must return nil, a record table or a list of record tables, not a {}",
                ret.type_name()
            )));
        }
        match to_json(&ret, &self.lua.array_metatable(), &mut Vec::new()) {
            Ok(Json::Null) => Ok(Vec::new()),
            Ok(Json::Object(m)) => Ok(vec![Json::Object(m)]),
            Ok(Json::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_object() {
                        return Err(LuaError::Output(format!(
                            "transform returned a list whose item {} is not a record table",
                            i + 1
                        )));
                    }
                }
                Ok(items)
            }
            Ok(other) => Err(LuaError::Output(format!(
                "transform returned an unsupported value: {other}"
            ))),
            Err(e) => Err(LuaError::Output(format!("transform returned {e}"))),
        }
    }
}
