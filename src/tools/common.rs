//! Helpers shared by the built-in tools: argument readers for the types tools take,
//! path resolution into a [`ToolResult`] error, schema builders and a small
//! `join_all` for running a call's sub-tasks concurrently on its shard.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{arg, required, CallContext, ToolResult};
use crate::storage::roots::Resolved;

/// A required string argument.
pub fn req_str<'v>(args: &'v Map<String, Value>, name: &str) -> Result<&'v str, ToolResult> {
    required(args, name, "a string", Value::as_str)
}

/// An optional string argument.
pub fn opt_str<'v>(
    args: &'v Map<String, Value>,
    name: &str,
) -> Result<Option<&'v str>, ToolResult> {
    arg(args, name, "a string", Value::as_str)
}

/// An optional boolean argument.
pub fn opt_bool(args: &Map<String, Value>, name: &str) -> Result<Option<bool>, ToolResult> {
    arg(args, name, "a boolean", Value::as_bool)
}

/// An optional integer argument within `min..=max`.
pub fn opt_int(
    args: &Map<String, Value>,
    name: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ToolResult> {
    // The message is formatted only when it is needed: this runs on every call
    // of the file tools, nearly always with the argument absent or valid.
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().filter(|n| (min..=max).contains(n)) {
            Some(n) => Ok(Some(n)),
            None => Err(ToolResult::error(format!(
                "argument `{name}` must be an integer from {min} to {max}; got {}",
                super::kind_of(v)
            ))),
        },
    }
}

/// Refuses arguments the schema does not declare (`additionalProperties: false`),
/// so a misspelt option is reported rather than silently ignored.
pub fn no_unknown_args(args: &Map<String, Value>, known: &[&str]) -> Result<(), ToolResult> {
    match args.keys().find(|k| !known.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(ToolResult::error(format!(
            "unknown argument `{k}`; this tool takes: {}",
            known.join(", ")
        ))),
    }
}

/// Resolves a client path inside the roots, or the error result saying why not.
pub fn resolve(cx: &CallContext<'_>, path: &str) -> Result<Resolved, ToolResult> {
    cx.shard
        .storage
        .roots
        .resolve(path)
        .map_err(|e| ToolResult::error(e.to_string()))
}

/// An input schema: a 2020-12 object with the given properties and no others.
pub fn input_schema(properties: Value, required: &[&str]) -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// The budget of a call: how long it had from its start to its deadline, for the
/// "timed out after N ms" message.
pub fn budget(cx: &CallContext<'_>, start: Instant) -> Duration {
    cx.deadline.saturating_duration_since(start)
}

/// The error result of a call stopped by its deadline.
pub fn timed_out(budget: Duration) -> ToolResult {
    ToolResult::error(format!(
        "timed out after {} ms; narrow the request (a smaller path, a more specific query, a LIMIT)",
        // Rounded: a 300 ms budget measured from just after the deadline was set
        // reads 299.99 ms.
        (budget.as_micros() + 500) / 1000
    ))
}

/// The error result of a call stopped by the client.
pub fn cancelled() -> ToolResult {
    ToolResult::error("cancelled by the client")
}

/// Whether the call should stop now, and the result to stop with.
pub fn stop_reason(cx: &CallContext<'_>, start: Instant) -> Option<ToolResult> {
    if cx.cancel.is_cancelled() {
        Some(cancelled())
    } else if Instant::now() >= cx.deadline {
        Some(timed_out(budget(cx, start)))
    } else {
        None
    }
}

/// A boxed shard-local future.
pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// Runs futures concurrently on this shard and returns their outputs in order.
pub async fn join_all<'a, T>(futures: Vec<LocalBoxFuture<'a, T>>) -> Vec<T> {
    let mut pending: Vec<Option<LocalBoxFuture<'a, T>>> = futures.into_iter().map(Some).collect();
    let mut done: Vec<Option<T>> = pending.iter().map(|_| None).collect();
    poll_fn(|cx| {
        let mut all = true;
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => all = false,
                }
            }
        }
        if all {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter()
        .map(|v| v.expect("every future completed"))
        .collect()
}

#[cfg(test)]
pub mod testing {
    //! A real shard over real temp directories, for tool tests.

    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use serde_json::Value;

    use crate::config::{Config, Database};
    use crate::protocol::session::SessionTable;
    use crate::shard::Shard;
    use crate::tools::{CallContext, CancelFlag, Tool, ToolResult};

    pub fn shard(roots: Vec<PathBuf>, databases: Vec<Database>) -> Shard {
        shard_from(config(roots, databases))
    }

    /// A shard over `roots` and `databases` on which `tool` is configured with
    /// `cache = false`.
    pub fn uncached_shard(tool: &str, roots: Vec<PathBuf>, databases: Vec<Database>) -> Shard {
        let mut config = config(roots, databases);
        config.tools.insert(
            tool.to_string(),
            crate::config::ToolConfig {
                cache: false,
                ..crate::config::ToolConfig::default()
            },
        );
        shard_from(config)
    }

    fn config(roots: Vec<PathBuf>, databases: Vec<Database>) -> Config {
        Config {
            roots: roots
                .into_iter()
                .map(|r| r.canonicalize().unwrap())
                .collect(),
            databases,
            ..Config::default()
        }
    }

    /// A shard serving exactly `config`.
    pub fn shard_from(config: Config) -> Shard {
        let sessions = Arc::new(SessionTable::new(16, 1, Duration::from_secs(60)));
        let metrics = Arc::new(crate::metrics::Metrics::new(Vec::new(), 1, None));
        Shard::new(0, Arc::new(config), sessions, None, metrics).unwrap()
    }

    pub fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutor::default().run(f)
    }

    /// Calls a tool by name with a generous deadline, on a fresh executor.
    pub fn call(shard: &Shard, name: &str, args: Value) -> ToolResult {
        run(call_async(
            shard,
            name,
            args,
            Instant::now() + Duration::from_secs(60),
            CancelFlag::default(),
        ))
    }

    pub async fn call_async(
        shard: &Shard,
        name: &str,
        args: Value,
        deadline: Instant,
        cancel: CancelFlag,
    ) -> ToolResult {
        let tool: &dyn Tool = shard.tools.get(name).expect("tool is registered");
        let cx = CallContext {
            shard,
            deadline,
            cancel,
            sink: None,
            progress: None,
        };
        let Value::Object(args) = args else {
            panic!("args are an object")
        };
        tool.call(&cx, args).await
    }

    /// The first text block.
    pub fn text(r: &ToolResult) -> &str {
        r.content()[0].text()
    }

    /// Asserts a call failed and its message contains `needle`.
    pub fn assert_error(r: &ToolResult, needle: &str) {
        assert!(r.is_error, "expected an error, got {r:?}");
        assert!(
            text(r).contains(needle),
            "{:?} does not contain {needle:?}",
            text(r)
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::tools::Registry;

    #[test]
    fn builtin_tools_are_read_only_with_strict_described_schemas() {
        let r = Registry::builtin();
        let names: Vec<&str> = r.tools().map(|t| t.spec().name).collect();
        assert_eq!(
            names,
            [
                "read_file",
                "read_multiple_files",
                "list_directory",
                "search_code",
                "query_db",
                "db_schema"
            ]
        );
        for t in r.tools() {
            let s = t.spec();
            let a = s.annotations;
            assert!(
                a.read_only && !a.destructive && a.idempotent && !a.open_world,
                "{}",
                s.name
            );
            let schema = &s.input_schema;
            assert_eq!(
                schema["$schema"],
                "https://json-schema.org/draft/2020-12/schema"
            );
            assert_eq!(schema["additionalProperties"], false, "{}", s.name);
            for (prop, def) in schema["properties"].as_object().unwrap() {
                assert!(
                    def["description"].as_str().is_some_and(|d| d.len() > 10),
                    "{}.{prop}",
                    s.name
                );
            }
            let json = s.to_json();
            assert_eq!(json["annotations"]["readOnlyHint"], true);
            if s.name != "read_file" {
                assert_eq!(json["outputSchema"]["type"], "object", "{}", s.name);
            }
        }
    }
}
