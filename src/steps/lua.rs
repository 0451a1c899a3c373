//! `lua`: a sandboxed Lua 5.4 script (mlua, vendored).
//!
//! Scripts see `ctx` (interval, params, outputs) and a small `cranium` API (query, execute, log). The
//! sandbox (no io, os.execute, require, bytecode, debug; memory and instruction limits) is set up by the
//! engine. Lua source is not a minijinja template unless `template: true`, because Lua's own `{{` table
//! syntax would clash; scripts read the same values from `ctx`.

use serde::Deserialize;

use std::sync::Arc;

use futures::future::BoxFuture;

use super::runtime::ProjectDb;
use super::{CheckCx, ErrorClass, RunCx, Step, StepError, StepOutput, TextOrigin};
use crate::config::ByteSize;
use crate::lua_runtime::{self, Limits, LogLevel, LuaError, ScriptContext};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuaStep {
    /// Lua file, relative to the project root (e.g. `scripts/lua/scrub_emails.lua`).
    #[serde(default)]
    pub file: Option<String>,
    /// Inline Lua, instead of `file`.
    #[serde(default)]
    pub code: Option<String>,
    /// Render the source as a template before running it (default false).
    #[serde(default)]
    pub template: bool,
    /// Memory the script may allocate (default 64MiB).
    #[serde(default)]
    pub memory_limit: Option<ByteSize>,
    /// Lua VM instructions the script may execute (default 100,000,000).
    #[serde(default)]
    pub instruction_limit: Option<u64>,
    /// Connections the script may use through `cranium.query` / `cranium.execute` (default: all database
    /// connections).
    #[serde(default)]
    pub connections: Option<Vec<String>>,
}

impl LuaStep {
    async fn execute(&self, cx: &RunCx) -> Result<StepOutput, StepError> {
        let (name, code) = match (&self.file, &self.code) {
            (Some(f), _) => (f.clone(), cx.read_file(f)?),
            (None, Some(c)) => (
                format!("{}:{}", cx.job().source.rel.display(), cx.spec().id),
                c.clone(),
            ),
            (None, None) => {
                return Err(StepError::config("the step has neither `file` nor `code`"))
            }
        };
        let code = if self.template {
            cx.render(&name, &code, None)?
        } else {
            code
        };
        let tz = cx.job().timezone;
        let ctx = ScriptContext {
            job: cx.job().name.clone(),
            step: cx.spec().id.clone(),
            run_id: cx.vars.run_id.clone(),
            interval_start: cx.interval.start_local(tz).to_rfc3339(),
            interval_end: cx.interval.end_local(tz).to_rfc3339(),
            ds: cx.interval.start_local(tz).format("%Y-%m-%d").to_string(),
            params: cx.job().params.clone(),
            // The templates' `steps.<id>.outputs` holds each step's outputs; the script context
            // takes them by step id (`ctx.steps.<id>.outputs` in the script).
            upstream: match &cx.vars.steps {
                serde_json::Value::Object(m) => serde_json::Value::Object(
                    m.iter()
                        .map(|(id, s)| {
                            let outputs =
                                s.get("outputs").cloned().unwrap_or(serde_json::Value::Null);
                            (id.clone(), outputs)
                        })
                        .collect(),
                ),
                other => other.clone(),
            },
        };
        let db = Arc::new(ProjectDb::new(
            cx.project.clone(),
            self.connections.clone(),
            cx.deadline,
            cx.cancel.clone(),
        ));
        let mut limits = Limits::default();
        if let Some(m) = self.memory_limit {
            limits.memory_bytes = usize::try_from(m.0).unwrap_or(usize::MAX);
        }
        if let Some(n) = self.instruction_limit {
            limits.instructions = n;
        }
        let (result, logs) = lua_runtime::run_script_keeping_logs(
            &code,
            &name,
            &ctx,
            db,
            limits,
            cx.deadline,
            cx.cancel.clone(),
        )
        .await;
        // What the script logged goes to the attempt's log, failed or not.
        for (level, msg) in &logs {
            let level = match level {
                LogLevel::Debug => crate::engine::logs::Level::Debug,
                LogLevel::Info => crate::engine::logs::Level::Info,
                LogLevel::Warn => crate::engine::logs::Level::Warn,
                LogLevel::Error => crate::engine::logs::Level::Error,
            };
            cx.log.log(level, msg);
        }
        match result {
            Ok(outcome) => Ok(StepOutput {
                outputs: outcome.outputs,
                ..StepOutput::default()
            }),
            Err(e) => {
                let class = match &e {
                    LuaError::Script { .. } => ErrorClass::Data,
                    LuaError::Timeout => ErrorClass::Timeout,
                    LuaError::Cancelled => ErrorClass::Cancelled,
                    LuaError::Database { .. } => ErrorClass::External,
                    _ => ErrorClass::Config,
                };
                Err(StepError::new(class, e.to_string()))
            }
        }
    }
}

impl Step for LuaStep {
    fn kind(&self) -> &'static str {
        "lua"
    }

    fn run<'a>(&'a self, cx: &'a RunCx) -> BoxFuture<'a, Result<StepOutput, StepError>> {
        Box::pin(self.execute(cx))
    }

    fn check(&self, cx: &mut CheckCx<'_>) {
        if let Some(conns) = &self.connections {
            for (i, c) in conns.iter().enumerate() {
                let f = cx.field("connections").index(i);
                use crate::config::ConnectionKind as K;
                cx.connection(&f, c, &[K::Postgres, K::Redshift, K::Mysql]);
            }
        }
        if let Some(n) = self.instruction_limit {
            if n == 0 {
                let f = cx.field("instruction_limit");
                cx.error(
                    &f,
                    "out-of-range",
                    format!("step '{}': instruction_limit must be above 0", cx.step),
                );
            }
        }
        let Some((_, which)) = cx.one_of(("file", &self.file), ("code", &self.code)) else {
            return;
        };
        let (origin, text) = if which == "a" {
            let field = cx.field("file");
            match cx.read_file(&field, self.file.as_deref().unwrap_or_default()) {
                Some((p, t)) => (TextOrigin::File(p), t),
                None => return,
            }
        } else {
            (
                TextOrigin::Field(cx.field("code")),
                self.code.clone().unwrap_or_default(),
            )
        };
        let code = if self.template {
            match cx.render(&origin, &text, None) {
                Some(c) => c,
                None => return,
            }
        } else {
            text
        };
        cx.check_lua(&origin, &code);
    }
}

/// Compile (without running) a Lua chunk; on a syntax error return its line and message.
pub fn syntax_check(code: &str) -> Result<(), (usize, String)> {
    let lua = mlua::Lua::new();
    match lua.load(code).set_name("=script").into_function() {
        Ok(_) => Ok(()),
        Err(mlua::Error::SyntaxError { message, .. }) => {
            // "script:12: unexpected symbol near 'x'"
            let rest = message.strip_prefix("script:").unwrap_or(&message);
            let (line, msg) = match rest.split_once(':') {
                Some((l, m)) => (l.trim().parse().unwrap_or(1), m.trim().to_string()),
                None => (1, rest.to_string()),
            };
            Err((line, msg))
        }
        Err(e) => Err((1, e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn lua_syntax_errors_have_lines() {
        assert!(super::syntax_check("local x = 1\nreturn x\n").is_ok());
        let (line, msg) = super::syntax_check("local x = 1\nlocal = 2\n").expect_err("bad");
        assert_eq!(line, 2);
        assert!(msg.contains("near"), "{msg}");
    }
}
