//! `query_db`: one read-only SQL statement against a configured SQLite database,
//! parameters bound (never interpolated), typed JSON values out.

use std::time::Instant;

use base64::Engine;
use rusqlite::types::{Value as SqlValue, ValueRef};
use serde_json::{json, Map, Value};

use super::common::{
    budget, cancelled, input_schema, no_unknown_args, opt_int, opt_str, req_str, timed_out,
};
use super::{Annotations, CallContext, Tool, ToolFuture, ToolResult, ToolSpec};
use crate::storage::db::{Conn, DbError, Limits};

/// Rows returned when `max_rows` is not given.
pub const DEFAULT_MAX_ROWS: u64 = 1000;
/// The largest `max_rows` accepted.
pub const MAX_ROWS_LIMIT: u64 = 10_000;
/// Approximate bytes of values one answer carries; past it the rows are cut.
pub const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;
/// Parameters one query may bind.
pub const MAX_PARAMS: usize = 999;

/// What a query returned.
#[derive(Debug)]
pub struct Rows {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
    pub truncated: bool,
}

/// Parameters as the client sent them: by position or by name.
#[derive(Clone, Debug)]
enum Params {
    Positional(Vec<SqlValue>),
    Named(Vec<(String, SqlValue)>),
}

fn to_sql(v: &Value, what: &str) -> Result<SqlValue, ToolResult> {
    Ok(match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => SqlValue::Integer(i),
            (None, Some(f)) => SqlValue::Real(f),
            _ => return Err(ToolResult::error(format!("{what}: number {n} does not fit SQLite's types"))),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => {
            return Err(ToolResult::error(format!(
                "{what} must be a string, number, boolean or null; pass JSON as a string and use json() in SQL"
            )))
        }
    })
}

fn parse_params(args: &Map<String, Value>) -> Result<Params, ToolResult> {
    match args.get("params") {
        None | Some(Value::Null) => Ok(Params::Positional(Vec::new())),
        Some(Value::Array(a)) if a.len() <= MAX_PARAMS => a
            .iter()
            .enumerate()
            .map(|(i, v)| to_sql(v, &format!("params[{i}]")))
            .collect::<Result<_, _>>()
            .map(Params::Positional),
        Some(Value::Object(o)) if o.len() <= MAX_PARAMS => o
            .iter()
            .map(|(k, v)| Ok((k.clone(), to_sql(v, &format!("params.{k}"))?)))
            .collect::<Result<_, _>>()
            .map(Params::Named),
        Some(_) => Err(ToolResult::error(format!(
            "argument `params` must be an array (for ?1, ?2 …) or an object (for :name) of at most {MAX_PARAMS} values"
        ))),
    }
}

/// The JSON form of one SQLite value. Blobs are `{"base64": "…"}` so that they are
/// never mistaken for text.
pub fn to_json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => json!(i),
        ValueRef::Real(f) => json!(f),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => {
            json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
        }
    }
}

fn approx_size(v: &Value) -> usize {
    match v {
        Value::String(s) => s.len() + 2,
        Value::Object(o) => o
            .get("base64")
            .and_then(Value::as_str)
            .map_or(16, |s| s.len() + 14),
        _ => 8,
    }
}

/// What identifies an answer: the database, the statement, its parameters and the
/// row cap, each length-prefixed so that no two different calls share a key.
fn cache_key(db: &str, sql: &str, params: &Params, max_rows: usize) -> Vec<u8> {
    fn bytes(k: &mut Vec<u8>, b: &[u8]) {
        k.extend_from_slice(&(b.len() as u64).to_le_bytes());
        k.extend_from_slice(b);
    }
    fn value(k: &mut Vec<u8>, v: &SqlValue) {
        match v {
            SqlValue::Null => k.push(0),
            SqlValue::Integer(i) => {
                k.push(1);
                k.extend_from_slice(&i.to_le_bytes());
            }
            SqlValue::Real(f) => {
                k.push(2);
                k.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            SqlValue::Text(t) => {
                k.push(3);
                bytes(k, t.as_bytes());
            }
            SqlValue::Blob(b) => {
                k.push(4);
                bytes(k, b);
            }
        }
    }
    let mut k = Vec::with_capacity(db.len() + sql.len() + 64);
    bytes(&mut k, db.as_bytes());
    k.extend_from_slice(&(max_rows as u64).to_le_bytes());
    bytes(&mut k, sql.as_bytes());
    match params {
        Params::Positional(p) => {
            k.push(b'?');
            for v in p {
                value(&mut k, v);
            }
        }
        Params::Named(p) => {
            k.push(b':');
            for (name, v) in p {
                bytes(&mut k, name.as_bytes());
                value(&mut k, v);
            }
        }
    }
    k
}

/// What a kept answer holds in memory, near enough to bound the cache by: the
/// text, and the structured copy — each value's `Value` slot and each row's
/// vector besides the value bytes (which the text holds about once too). For
/// 10,000 rows of small integers the slots are 30 times the text.
fn kept_size(rows: &Rows, text_len: usize) -> usize {
    const SLOT: usize = std::mem::size_of::<Value>();
    const ROW: usize = std::mem::size_of::<Vec<Value>>() + SLOT;
    let slots = rows.rows.len() * (ROW + rows.columns.len() * SLOT);
    let names: usize = rows.columns.iter().map(|c| c.len() + SLOT).sum();
    2 * text_len + slots + names + 256
}

/// Runs one read-only statement, collecting its rows; on the shard or a pool thread.
fn query(c: &Conn, sql: &str, params: &Params, max_rows: usize) -> Result<Rows, DbError> {
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let (columns, truncated) = query_each(c, sql, params, max_rows, &mut |_, values| {
        if bytes > MAX_RESULT_BYTES {
            return Step::Full;
        }
        bytes += values.iter().map(approx_size).sum::<usize>();
        rows.push(values);
        Step::More
    })?;
    Ok(Rows {
        columns,
        rows,
        truncated,
    })
}

/// Rows in flight between the query's thread and the shard while streaming.
pub const STREAM_ROW_QUEUE: usize = 256;

/// Streams a query's rows to `sink` as they are read: first `{"columns": […]}`,
/// then one `{"row": […]}` per row, up to the sink's item limit. The query runs on
/// the blocking pool (rows already handed out must not be read twice, so it never
/// starts inline), and a bounded channel between that thread and the shard makes a
/// slow reader stall the query instead of growing memory. The query stops at the
/// deadline even while it waits for the reader.
async fn stream_rows(
    cx: &CallContext<'_>,
    sink: &crate::tools::ItemSink,
    db: &crate::storage::db::Db,
    sql: String,
    params: Params,
    start: Instant,
) -> ToolResult {
    let (tx, rx) = flume::bounded::<Value>(STREAM_ROW_QUEUE);
    let limits = limits(cx);
    let deadline = limits.deadline;
    let max_rows = sink.max_items.saturating_sub(1);
    let work = move |c: &Conn| {
        let mut first = true;
        let mut timed_out = false;
        let outcome = query_each(c, &sql, &params, max_rows, &mut |columns, values| {
            if first {
                first = false;
                if tx
                    .send_deadline(json!({ "columns": columns }), deadline)
                    .is_err()
                {
                    timed_out = Instant::now() >= deadline;
                    return Step::Stop;
                }
            }
            match tx.send_deadline(json!({ "row": values }), deadline) {
                Ok(()) => Step::More,
                Err(_) => {
                    timed_out = Instant::now() >= deadline;
                    Step::Stop
                }
            }
        });
        match outcome {
            Err(DbError::Cancelled) if timed_out => Err(DbError::TimedOut),
            other => other,
        }
    };
    let producer = db.run_off_shard(&limits, work);
    let consumer = async move {
        let mut sent = 0usize;
        while let Ok(item) = rx.recv_async().await {
            if !sink.send(item).await {
                return sent;
            }
            sent += 1;
        }
        sent
    };
    let (outcome, sent) = futures_lite::future::zip(producer, consumer).await;
    match outcome {
        Ok((columns, truncated)) => {
            let rows = sent.saturating_sub(1);
            let text = format!(
                "{rows} row(s) of {} column(s) from `{}` streamed{}",
                columns.len(),
                db.name,
                if truncated {
                    "; more rows were left (max_stream_items)"
                } else {
                    ""
                }
            );
            ToolResult::structured(
                json!({"db": db.name, "columns": columns, "rows": [], "streamed": rows, "truncated": truncated}),
                text,
            )
        }
        Err(e) => db_error(e, cx, start),
    }
}

/// What a row consumer says after each row.
enum Step {
    More,
    /// Enough: stop and mark the result truncated.
    Full,
    /// Nobody reads on: stop the query.
    Stop,
}

/// Runs one read-only statement and hands each row to `on_row` (with the column
/// names), up to `max_rows`. Returns the column names and whether rows were left.
fn query_each(
    c: &Conn,
    sql: &str,
    params: &Params,
    max_rows: usize,
    on_row: &mut dyn FnMut(&[String], Vec<Value>) -> Step,
) -> Result<(Vec<String>, bool), DbError> {
    let mut stmt = c.conn.prepare_cached(sql).map_err(|e| c.error(e))?;
    if !stmt.readonly() {
        stmt.discard();
        return Err(DbError::Refused(
            "only read-only statements are allowed (SELECT, WITH … SELECT, EXPLAIN, schema pragmas); databases are served read-only".into(),
        ));
    }
    let expected = stmt.parameter_count();
    match params {
        Params::Positional(p) => {
            if p.len() != expected {
                return Err(DbError::Sql(format!(
                    "the statement has {expected} parameter(s) but `params` has {} value(s)",
                    p.len()
                )));
            }
            for (i, v) in p.iter().enumerate() {
                stmt.raw_bind_parameter(i + 1, v).map_err(|e| c.error(e))?;
            }
        }
        Params::Named(p) => {
            for (name, v) in p {
                let idx = [
                    name.clone(),
                    format!(":{name}"),
                    format!("@{name}"),
                    format!("${name}"),
                ]
                .iter()
                .find_map(|n| stmt.parameter_index(n).ok().flatten())
                .ok_or_else(|| {
                    DbError::Sql(format!("the statement has no parameter named `{name}`"))
                })?;
                stmt.raw_bind_parameter(idx, v).map_err(|e| c.error(e))?;
            }
        }
    }
    let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let mut count = 0usize;
    let mut raw = stmt.raw_query();
    while let Some(row) = raw.next().map_err(|e| c.error(e))? {
        if count == max_rows {
            return Ok((columns, true));
        }
        let values: Vec<Value> = (0..columns.len())
            .map(|i| row.get_ref(i).map(to_json))
            .collect::<Result<_, _>>()
            .map_err(|e| c.error(e))?;
        count += 1;
        match on_row(&columns, values) {
            Step::More => {}
            Step::Full => return Ok((columns, true)),
            Step::Stop => return Err(DbError::Cancelled),
        }
    }
    Ok((columns, false))
}

/// Maps a failed database call to its result.
pub fn db_error(e: DbError, cx: &CallContext<'_>, start: Instant) -> ToolResult {
    match e {
        DbError::Refused(why) => ToolResult::error(format!("query refused: {why}")),
        DbError::Sql(msg) => ToolResult::error(format!("SQLite error: {msg}")),
        DbError::Busy => ToolResult::error(format!(
            "the database stayed locked by a writer (waited up to {} s); try again shortly",
            crate::storage::db::MAX_BUSY_WAIT.as_secs()
        )),
        DbError::TimedOut => timed_out(budget(cx, start)),
        DbError::Cancelled => cancelled(),
    }
}

/// The stop conditions of a call, for the thread that runs its query.
pub fn limits(cx: &CallContext<'_>) -> Limits {
    Limits {
        deadline: cx.deadline,
        cancel: cx.cancel.shared(),
    }
}

fn render(db: &str, r: &Rows, max_rows: usize) -> String {
    // sonic-rs writes straight into one buffer: a per-row `to_string` and its
    // allocation cost as much as the indexed lookup itself.
    let mut out: Vec<u8> = Vec::with_capacity(64 + 32 * r.rows.len() * r.columns.len().max(1));
    sonic_rs::to_writer(&mut out, &r.columns).expect("writing to a Vec cannot fail");
    out.push(b'\n');
    for row in &r.rows {
        sonic_rs::to_writer(&mut out, row).expect("writing to a Vec cannot fail");
        out.push(b'\n');
    }
    let mut text = String::from_utf8(out).expect("JSON is UTF-8");
    text.push_str(&format!("({} row(s) from `{db}`)", r.rows.len()));
    if r.truncated {
        text.push_str(&format!(
            "\n[… truncated at {} rows (max_rows={max_rows}, {} MiB cap); narrow the query, or page with LIMIT/OFFSET]",
            r.rows.len(),
            MAX_RESULT_BYTES / (1024 * 1024)
        ));
    }
    text
}

pub struct QueryDb {
    spec: ToolSpec,
}

impl QueryDb {
    pub fn new() -> QueryDb {
        QueryDb {
            spec: ToolSpec {
                name: "query_db",
                title: "Query database",
                description: "Run one read-only SQL statement (SELECT, WITH … SELECT, EXPLAIN) on a configured SQLite \
                    database. Pass values through `params` (?1, ?2 … or :name), never by pasting them into the SQL. \
                    Writes, ATTACH, PRAGMA changes, transactions, load_extension and multiple statements are refused. \
                    Use db_schema first to see the tables. Rows come back as typed JSON values (blobs as {\"base64\": …}); \
                    at most `max_rows` of them, with `truncated` set when there were more.",
                input_schema: input_schema(
                    json!({
                        "sql": {"type": "string", "description": "One SQL statement. Use ?1, ?2 … or :name placeholders for values."},
                        "params": {
                            "description": "Values for the placeholders: an array for ?1, ?2 …, or an object for :name. Strings, numbers, booleans (stored as 0/1) or null.",
                            "oneOf": [
                                {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}, "maxItems": MAX_PARAMS},
                                {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean", "null"]}},
                            ],
                        },
                        "db": {"type": "string", "description": "Database name (its file stem). Default: the first configured database."},
                        "max_rows": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS_LIMIT, "description": "Most rows to return. Default 1000."},
                    }),
                    &["sql"],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {
                        "db": {"type": "string"},
                        "columns": {"type": "array", "items": {"type": "string"}},
                        "rows": {
                            "type": "array",
                            "items": {"type": "array", "items": {
                                "description": "integer, real, text, null, or a blob as {\"base64\": string}",
                                "type": ["integer", "number", "string", "null", "object"],
                            }},
                        },
                        "truncated": {"type": "boolean"},
                        "streamed": {
                            "type": "integer",
                            "description": "rows sent as NDJSON lines instead of in `rows` (direct API streaming only)",
                        },
                    },
                    "required": ["db", "columns", "rows", "truncated"],
                })),
                annotations: Annotations::READ_ONLY,
            },
        }
    }
}

impl Default for QueryDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for QueryDb {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, cx: &'a CallContext<'a>, args: Map<String, Value>) -> ToolFuture<'a> {
        Box::pin(async move {
            let start = Instant::now();
            let parsed = (|| {
                no_unknown_args(&args, &["sql", "params", "db", "max_rows"])?;
                let sql = req_str(&args, "sql")?.to_string();
                let params = parse_params(&args)?;
                let db = opt_str(&args, "db")?;
                let max_rows = opt_int(&args, "max_rows", 1, MAX_ROWS_LIMIT)?
                    .unwrap_or(DEFAULT_MAX_ROWS) as usize;
                let db = cx.shard.storage.dbs.get(db).map_err(ToolResult::error)?;
                Ok((sql, params, db, max_rows))
            })();
            let (sql, params, db, max_rows) = match parsed {
                Ok(p) => p,
                Err(e) => return e,
            };
            // The two awaits below are boxed: laid out inline, their state made
            // this future 1.7 KB, built and moved on every call, a kept answer's
            // too (see read_file's `read_excerpt`).
            if let Some(sink) = cx.sink {
                return Box::pin(stream_rows(cx, sink, db, sql, params, start)).await;
            }
            // A kept answer, if this statement's answers may be kept and nothing
            // has changed next to the database since (see `query_cache.rs`).
            let results = &cx.shard.storage.dbs.results;
            let mut known = None;
            let mut pending = None;
            if cx.shard.config.tool_cache("query_db") {
                known = results.deterministic(&sql);
                if known != Some(false) {
                    let key = cache_key(&db.name, &sql, &params, max_rows);
                    match results.lookup(db.watch_dir.as_deref(), key) {
                        Ok(hit) => return ToolResult::kept(hit),
                        Err(p) => pending = p,
                    }
                }
            }
            // A statement not seen before is classified on the connection that runs it.
            let learn = (known.is_none() && pending.is_some()).then(|| sql.clone());
            let classify = learn.is_some();
            let outcome = Box::pin(db.run(&limits(cx), move |c| {
                let deterministic = if classify {
                    Some(c.is_deterministic(&sql)?)
                } else {
                    None
                };
                query(c, &sql, &params, max_rows).map(|rows| (rows, deterministic))
            }))
            .await;
            match outcome {
                Ok((rows, learned)) => {
                    if let (Some(sql), Some(d)) = (&learn, learned) {
                        results.classify(sql, d);
                    }
                    let keep = pending.filter(|_| known.or(learned) == Some(true));
                    let text = render(&db.name, &rows, max_rows);
                    let kept_bytes = kept_size(&rows, text.len());
                    // Built by moving the rows in: `json!` would copy every value.
                    let mut structured = Map::new();
                    structured.insert("db".into(), Value::String(db.name.clone()));
                    structured.insert(
                        "columns".into(),
                        Value::Array(rows.columns.into_iter().map(Value::String).collect()),
                    );
                    structured.insert(
                        "rows".into(),
                        Value::Array(rows.rows.into_iter().map(Value::Array).collect()),
                    );
                    structured.insert("truncated".into(), Value::Bool(rows.truncated));
                    let result = ToolResult::structured(Value::Object(structured), text);
                    match keep {
                        Some(p) => results.store(p, result, kept_bytes),
                        None => result,
                    }
                }
                Err(e) => db_error(e, cx, start),
            }
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::Database;
    use crate::tools::common::testing::{assert_error, call, call_async, run, shard, text};
    use crate::tools::CancelFlag;
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// A database made by the test: table `t(id, name, score, data)` with three rows.
    pub fn make_db(dir: &Path, stem: &str) -> Database {
        let path = dir.join(format!("{stem}.db"));
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL DEFAULT 'anon', score REAL, data BLOB);
             CREATE UNIQUE INDEX t_name ON t(name);
             INSERT INTO t VALUES (1, 'ann', 1.5, x'0001ff'), (2, 'bob', NULL, NULL), (3, 'cy', 3.0, NULL);
             CREATE VIEW v AS SELECT name FROM t;",
        )
        .unwrap();
        Database {
            name: stem.into(),
            path,
        }
    }

    pub fn fixture() -> (tempfile::TempDir, crate::shard::Shard, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let db = make_db(d.path(), "main");
        let other = make_db(d.path(), "other");
        let path = db.path.clone();
        let s = shard(vec![d.path().into()], vec![db, other]);
        (d, s, path)
    }

    #[test]
    fn typed_values_bound_params_and_truncation() {
        let (_d, s, _) = fixture();
        let r = call(
            &s,
            "query_db",
            json!({"sql": "SELECT id, name, score, data FROM t WHERE id >= ?1 ORDER BY id", "params": [1]}),
        );
        assert!(!r.is_error, "{r:?}");
        let st = r.structured_content().cloned().unwrap();
        assert_eq!(st["columns"], json!(["id", "name", "score", "data"]));
        assert_eq!(st["rows"][0], json!([1, "ann", 1.5, {"base64": "AAH/"}]));
        assert_eq!(st["rows"][1], json!([2, "bob", null, null]));
        assert_eq!(st["truncated"], false);
        assert!(text(&r).contains("[1,\"ann\",1.5,{\"base64\":\"AAH/\"}]"));

        let r = call(
            &s,
            "query_db",
            json!({"sql": "SELECT name FROM t ORDER BY id", "max_rows": 2}),
        );
        assert_eq!(
            r.structured_content().unwrap()["rows"],
            json!([["ann"], ["bob"]])
        );
        assert_eq!(r.structured_content().unwrap()["truncated"], true);
        assert!(text(&r).contains("truncated at 2 rows"));

        // Interpolation-looking values are just values.
        let r = call(
            &s,
            "query_db",
            json!({"sql": "SELECT count(*) FROM t WHERE name = :n", "params": {"n": "x' OR '1'='1"}}),
        );
        assert_eq!(r.structured_content().unwrap()["rows"], json!([[0]]));
        let r = call(
            &s,
            "query_db",
            json!({"sql": "SELECT ?1, ?2, ?3", "params": [true, 2.5, null]}),
        );
        assert_eq!(
            r.structured_content().unwrap()["rows"],
            json!([[1, 2.5, null]])
        );
        let r = call(
            &s,
            "query_db",
            json!({"sql": "SELECT count(*) FROM t", "db": "other"}),
        );
        assert_eq!(r.structured_content().unwrap()["db"], "other");
    }

    #[test]
    fn bad_queries_say_what_is_wrong() {
        let (_d, s, _) = fixture();
        assert_error(
            &call(&s, "query_db", json!({"sql": "SELEC 1"})),
            "SQLite error",
        );
        assert_error(
            &call(&s, "query_db", json!({"sql": "SELECT * FROM nope"})),
            "no such table",
        );
        assert_error(
            &call(&s, "query_db", json!({"sql": "SELECT ?1"})),
            "1 parameter(s) but `params` has 0",
        );
        assert_error(
            &call(
                &s,
                "query_db",
                json!({"sql": "SELECT :a", "params": {"b": 1}}),
            ),
            "no parameter named `b`",
        );
        assert_error(
            &call(&s, "query_db", json!({"sql": "SELECT 1", "params": [[1]]})),
            "params[0] must be a string",
        );
        assert_error(
            &call(&s, "query_db", json!({"sql": "SELECT 1", "db": "zzz"})),
            "configured databases: main, other",
        );
        assert_error(
            &call(&s, "query_db", json!({"sql": "SELECT 1", "max_rows": 0})),
            "`max_rows` must be",
        );
        let none = shard(vec![tempfile::tempdir().unwrap().path().into()], vec![]);
        assert_error(
            &call(&none, "query_db", json!({"sql": "SELECT 1"})),
            "no databases are configured",
        );
    }

    fn hash(p: &Path) -> Vec<u8> {
        std::fs::read(p).unwrap()
    }

    #[test]
    fn every_kind_of_write_is_refused_and_the_file_is_unchanged() {
        let (_d, s, path) = fixture();
        let before = hash(&path);
        let before_mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        for (sql, why) in [
            ("INSERT INTO t(name) VALUES ('eve')", "INSERT is refused"),
            ("UPDATE t SET name = 'x'", "UPDATE is refused"),
            ("DELETE FROM t", "DELETE is refused"),
            (
                "CREATE TABLE u(x)",
                "schema changes (CREATE, DROP, ALTER) are refused",
            ),
            (
                "DROP TABLE t",
                "schema changes (CREATE, DROP, ALTER) are refused",
            ),
            ("CREATE TEMP TABLE u(x)", "refused"),
            ("ALTER TABLE t ADD COLUMN z", "refused"),
            (
                "ATTACH DATABASE ':memory:' AS m",
                "ATTACH and DETACH are refused",
            ),
            (
                "PRAGMA user_version = 1",
                "PRAGMA user_version = 1 is refused",
            ),
            ("PRAGMA query_only = 0", "PRAGMA query_only = 0 is refused"),
            (
                "SELECT load_extension('/tmp/x')",
                "load_extension is refused",
            ),
            ("SELECT 1; DELETE FROM t", "refused"),
            ("SELECT 1; SELECT 2", "only one SQL statement per call"),
            ("BEGIN", "transaction statements are refused"),
            ("VACUUM", "refused"),
            ("REPLACE INTO t(id, name) VALUES (1, 'z')", "refused"),
            (
                "WITH x AS (SELECT 1) INSERT INTO t(name) SELECT 'q' FROM x",
                "INSERT is refused",
            ),
        ] {
            let r = call(&s, "query_db", json!({ "sql": sql }));
            assert_error(&r, why);
            assert!(
                text(&r).starts_with("query refused") || text(&r).contains("SQLite error"),
                "{sql}: {r:?}"
            );
        }
        // The connection still works and reads the unchanged data.
        let r = call(
            &s,
            "query_db",
            json!({"sql": "SELECT count(*), (SELECT user_version FROM pragma_user_version) FROM t"}),
        );
        assert_eq!(
            r.structured_content().unwrap()["rows"],
            json!([[3, 0]]),
            "{r:?}"
        );
        assert_eq!(hash(&path), before);
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before_mtime
        );
    }

    const ENDLESS: &str =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";

    #[test]
    fn an_endless_query_times_out_while_a_fast_call_is_served() {
        let (_d, s, _) = fixture();
        let order = RefCell::new(Vec::new());
        run(async {
            let slow = async {
                let r = call_async(
                    &s,
                    "query_db",
                    json!({ "sql": ENDLESS }),
                    Instant::now() + Duration::from_millis(300),
                    CancelFlag::default(),
                )
                .await;
                order.borrow_mut().push("slow");
                r
            };
            let fast = async {
                // Let the slow query start first and move off the shard.
                futures_lite::future::yield_now().await;
                let r = call_async(
                    &s,
                    "query_db",
                    json!({"sql": "SELECT 42"}),
                    Instant::now() + Duration::from_secs(60),
                    CancelFlag::default(),
                )
                .await;
                order.borrow_mut().push("fast");
                r
            };
            let (slow, fast) = futures_lite::future::zip(slow, fast).await;
            assert_error(&slow, "timed out after 300 ms");
            assert_eq!(fast.structured_content().unwrap()["rows"], json!([[42]]));
        });
        assert_eq!(*order.borrow(), ["fast", "slow"]);
    }

    #[test]
    fn a_dropped_call_stops_its_query_on_the_pool() {
        let (_d, s, _) = fixture();
        run(async {
            let far = Instant::now() + Duration::from_secs(600);
            let endless = call_async(
                &s,
                "query_db",
                json!({ "sql": ENDLESS }),
                far,
                CancelFlag::default(),
            );
            // The call moves to the pool, then loses the race and is dropped.
            let dropped = futures_lite::future::or(async { Some(endless.await) }, async {
                futures_lite::future::yield_now().await;
                None
            })
            .await;
            assert!(dropped.is_none());
            // The pool has one thread: this runs only once the abandoned query stopped.
            // (The timer only keeps a regression from hanging the test run.)
            let freed = futures_lite::future::or(
                async { Some(glommio::executor().spawn_blocking(|| "freed").await) },
                async {
                    glommio::timer::sleep(Duration::from_secs(60)).await;
                    None
                },
            )
            .await;
            assert_eq!(freed, Some("freed"));
        });
    }

    #[test]
    fn a_database_locked_by_a_writer_is_waited_for_off_the_shard_then_reported() {
        let (_d, s, path) = fixture();
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let soon = Instant::now() + Duration::from_millis(200);
        let r = run(call_async(
            &s,
            "query_db",
            json!({"sql": "SELECT count(*) FROM t"}),
            soon,
            CancelFlag::default(),
        ));
        assert_error(&r, "locked by a writer");
        writer.execute_batch("COMMIT").unwrap();
        let r = call(&s, "query_db", json!({"sql": "SELECT count(*) FROM t"}));
        assert_eq!(r.structured_content().unwrap()["rows"], json!([[3]]));
    }

    #[test]
    fn the_cancel_flag_stops_a_running_query() {
        let (_d, s, _) = fixture();
        let cancel = CancelFlag::default();
        let r = run(async {
            let query = call_async(
                &s,
                "query_db",
                json!({ "sql": ENDLESS }),
                Instant::now() + Duration::from_secs(600),
                cancel.clone(),
            );
            let canceller = async {
                futures_lite::future::yield_now().await;
                cancel.cancel();
            };
            futures_lite::future::zip(query, canceller).await.0
        });
        assert_error(&r, "cancelled");
    }

    /// The answer cache's counts on shard `s`.
    fn kept(s: &crate::shard::Shard) -> crate::storage::query_cache::QueryCacheStats {
        s.storage.dbs.results.stats()
    }

    fn rows(r: &ToolResult) -> Value {
        assert!(!r.is_error, "{r:?}");
        r.structured_content().unwrap()["rows"].clone()
    }

    #[test]
    fn answers_are_kept_until_the_database_changes() {
        let (_d, s, path) = fixture();
        let q = json!({"sql": "SELECT name FROM t WHERE id = ?1", "params": [2]});
        let first = call(&s, "query_db", q.clone());
        assert_eq!(rows(&first), json!([["bob"]]));
        assert_eq!((kept(&s).hits, kept(&s).misses), (0, 1));
        let again = call(&s, "query_db", q.clone());
        assert_eq!(again, first);
        assert_eq!(
            kept(&s).hits,
            1,
            "the second identical call is served from the cache"
        );

        // Other parameters, row caps or databases are other answers.
        assert_eq!(
            rows(&call(
                &s,
                "query_db",
                json!({"sql": "SELECT name FROM t WHERE id = ?1", "params": [3]})
            )),
            json!([["cy"]])
        );
        assert_eq!(
            rows(&call(
                &s,
                "query_db",
                json!({"sql": "SELECT name FROM t WHERE id = ?1", "params": [2], "db": "other"})
            )),
            json!([["bob"]])
        );
        assert_eq!(kept(&s).hits, 1);

        // A writer in another connection (rollback journal): the next call sees it.
        let w = rusqlite::Connection::open(&path).unwrap();
        w.execute("UPDATE t SET name = 'bo' WHERE id = 2", [])
            .unwrap();
        assert_eq!(rows(&call(&s, "query_db", q.clone())), json!([["bo"]]));
        assert_eq!(kept(&s).hits, 1);
        assert_eq!(rows(&call(&s, "query_db", q.clone())), json!([["bo"]]));
        assert_eq!(kept(&s).hits, 2);

        // The same in WAL mode, where commits go to the -wal file.
        w.execute_batch("PRAGMA journal_mode = WAL").unwrap();
        assert_eq!(rows(&call(&s, "query_db", q.clone())), json!([["bo"]]));
        assert_eq!(rows(&call(&s, "query_db", q.clone())), json!([["bo"]]));
        let hits = kept(&s).hits;
        w.execute("UPDATE t SET name = 'b' WHERE id = 2", [])
            .unwrap();
        assert_eq!(rows(&call(&s, "query_db", q.clone())), json!([["b"]]));
        assert_eq!(kept(&s).hits, hits);
        w.execute_batch("BEGIN; UPDATE t SET name = 'robert' WHERE id = 2; COMMIT;")
            .unwrap();
        assert_eq!(rows(&call(&s, "query_db", q)), json!([["robert"]]));
    }

    #[test]
    fn answers_that_can_change_by_themselves_are_never_kept() {
        let (_d, s, _) = fixture();
        for sql in [
            "SELECT random()",
            "SELECT hex(randomblob(8))",
            "SELECT date('now')",
            "SELECT CURRENT_TIMESTAMP",
            "SELECT strftime('%s', 'now') || name FROM t",
            "SELECT changes()",
        ] {
            for _ in 0..3 {
                let r = call(&s, "query_db", json!({ "sql": sql }));
                assert!(!r.is_error, "{sql}: {r:?}");
            }
            assert_eq!(kept(&s).hits, 0, "{sql} was served from the cache");
        }
        // Only the first call of each was looked up; the rest knew not to.
        assert_eq!(kept(&s).misses, 6);
        // Deterministic functions, aggregates and windows are kept.
        for sql in [
            "SELECT upper(name), count(*) OVER () FROM t",
            "SELECT sum(score), json_array(1, 2) FROM t",
        ] {
            call(&s, "query_db", json!({ "sql": sql }));
            call(&s, "query_db", json!({ "sql": sql }));
        }
        assert_eq!(kept(&s).hits, 2);
    }

    #[test]
    fn kept_answers_stay_within_their_byte_bound() {
        let d = tempfile::tempdir().unwrap();
        let mut config = crate::config::Config {
            databases: vec![make_db(d.path(), "main")],
            ..crate::config::Config::default()
        };
        config.cache.query_result_bytes = 4 << 20;
        let s = crate::tools::common::testing::shard_from(config);
        let many = json!({"sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) SELECT i FROM n", "max_rows": 10000});
        for _ in 0..2 {
            let r = call(&s, "query_db", many.clone());
            assert_eq!(rows(&r).as_array().unwrap().len(), 10000);
        }
        // 10,000 one-integer rows are ~70 KiB of text but ~900 KiB of `Value`s:
        // more than an eighth of the 4 MiB budget, so not kept.
        assert_eq!(kept(&s).hits, 0);
        assert!(s.storage.dbs.results.is_empty());
        let few = json!({"sql": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) SELECT i FROM n"});
        call(&s, "query_db", few.clone());
        call(&s, "query_db", few);
        assert_eq!(kept(&s).hits, 1);
        assert!(s.storage.dbs.results.bytes() <= 4 << 20);
        assert!(s.storage.dbs.results.bytes() > 100 * std::mem::size_of::<Value>());
    }

    #[test]
    fn no_answers_are_kept_when_the_tool_does_not_cache() {
        let d = tempfile::tempdir().unwrap();
        let db = make_db(d.path(), "main");
        let s = crate::tools::common::testing::uncached_shard("query_db", vec![], vec![db]);
        for _ in 0..3 {
            assert_eq!(
                rows(&call(
                    &s,
                    "query_db",
                    json!({"sql": "SELECT count(*) FROM t"})
                )),
                json!([[3]])
            );
        }
        assert_eq!(kept(&s), Default::default());
        assert!(s.storage.dbs.results.is_empty());
    }
}
