//! `db_schema`: tables and views, their columns and indexes, read through the
//! pragma table-valued functions with bound parameters — never SQL built from names.

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::common::{input_schema, no_unknown_args, opt_str};
use super::query_db::{db_error, limits, to_json};
use super::{Annotations, CallContext, Tool, ToolFuture, ToolResult, ToolSpec};
use crate::storage::db::{Conn, DbError};

/// Tables and views described in one answer.
pub const MAX_SCHEMA_TABLES: usize = 500;

const TABLES_SQL: &str = "SELECT name, type FROM sqlite_schema \
     WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
       AND (?1 IS NULL OR name = ?1) \
     ORDER BY name LIMIT ?2";
const COLUMNS_SQL: &str =
    "SELECT name, type, \"notnull\", pk, dflt_value FROM pragma_table_info(?1) ORDER BY cid";
const INDEXES_SQL: &str =
    "SELECT name, \"unique\", origin, partial FROM pragma_index_list(?1) ORDER BY name";
const INDEX_COLUMNS_SQL: &str = "SELECT name FROM pragma_index_info(?1) ORDER BY seqno";

/// Runs a cached statement with bound parameters and collects every row.
fn rows(c: &Conn, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Vec<Value>>, DbError> {
    let mut stmt = c.conn.prepare_cached(sql).map_err(|e| c.error(e))?;
    let n = stmt.column_count();
    let mut out = Vec::new();
    let mut q = stmt.query(params).map_err(|e| c.error(e))?;
    while let Some(row) = q.next().map_err(|e| c.error(e))? {
        out.push(
            (0..n)
                .map(|i| row.get_ref(i).map(to_json))
                .collect::<Result<_, _>>()
                .map_err(|e| c.error(e))?,
        );
    }
    Ok(out)
}

fn schema(c: &Conn, table: Option<&str>) -> Result<(Vec<Value>, bool), DbError> {
    let found = rows(
        c,
        TABLES_SQL,
        rusqlite::params![table, MAX_SCHEMA_TABLES as i64 + 1],
    )?;
    if found.is_empty() {
        if let Some(t) = table {
            let all = rows(
                c,
                TABLES_SQL,
                rusqlite::params![None::<String>, MAX_SCHEMA_TABLES as i64],
            )?;
            let names: Vec<&str> = all.iter().filter_map(|r| r[0].as_str()).collect();
            return Err(DbError::Sql(format!(
                "no table or view named `{t}`; the database has: {}",
                if names.is_empty() {
                    "no tables".to_string()
                } else {
                    names.join(", ")
                }
            )));
        }
    }
    let truncated = found.len() > MAX_SCHEMA_TABLES;
    let mut tables = Vec::new();
    for t in found.into_iter().take(MAX_SCHEMA_TABLES) {
        let name = t[0].as_str().unwrap_or_default().to_string();
        let columns: Vec<Value> = rows(c, COLUMNS_SQL, [&name])?
            .into_iter()
            .map(|r| json!({"name": r[0], "type": r[1], "notnull": r[2] == json!(1), "pk": r[3], "default": r[4]}))
            .collect();
        let mut indexes = Vec::new();
        for ix in rows(c, INDEXES_SQL, [&name])? {
            let ix_name = ix[0].as_str().unwrap_or_default().to_string();
            let cols: Vec<Value> = rows(c, INDEX_COLUMNS_SQL, [&ix_name])?
                .into_iter()
                .map(|mut r| r.swap_remove(0))
                .collect();
            indexes.push(json!({
                "name": ix_name,
                "unique": ix[1] == json!(1),
                "origin": ix[2],
                "partial": ix[3] == json!(1),
                "columns": cols,
            }));
        }
        tables.push(json!({"name": name, "kind": t[1], "columns": columns, "indexes": indexes}));
    }
    Ok((tables, truncated))
}

fn render(db: &str, tables: &[Value], truncated: bool) -> String {
    let mut text = format!("database `{db}`\n");
    for t in tables {
        text.push_str(&format!(
            "{} {}\n",
            t["kind"].as_str().unwrap_or("table"),
            t["name"].as_str().unwrap_or("")
        ));
        for c in t["columns"].as_array().into_iter().flatten() {
            text.push_str(&format!(
                "  {} {}",
                c["name"].as_str().unwrap_or(""),
                c["type"].as_str().unwrap_or("")
            ));
            if c["pk"].as_i64().unwrap_or(0) > 0 {
                text.push_str(" PRIMARY KEY");
            }
            if c["notnull"] == true {
                text.push_str(" NOT NULL");
            }
            if let Some(d) = c["default"].as_str() {
                text.push_str(&format!(" DEFAULT {d}"));
            }
            text.push('\n');
        }
        for ix in t["indexes"].as_array().into_iter().flatten() {
            let cols: Vec<&str> = ix["columns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            text.push_str(&format!(
                "  {}index {} ({})\n",
                if ix["unique"] == true { "unique " } else { "" },
                ix["name"].as_str().unwrap_or(""),
                cols.join(", ")
            ));
        }
    }
    if truncated {
        text.push_str(&format!(
            "[… only the first {MAX_SCHEMA_TABLES} tables are shown; pass `table` for others]\n"
        ));
    }
    text
}

pub struct DbSchema {
    spec: ToolSpec,
}

impl DbSchema {
    pub fn new() -> DbSchema {
        DbSchema {
            spec: ToolSpec {
                name: "db_schema",
                title: "Database schema",
                description: "Describe a configured SQLite database: its tables and views, each column's name, \
                    declared type, NOT NULL, primary-key position and default, and each index with its columns. \
                    Pass `table` to describe one table. Call this before writing a query_db query.",
                input_schema: input_schema(
                    json!({
                        "db": {"type": "string", "description": "Database name (its file stem). Default: the first configured database."},
                        "table": {"type": "string", "description": "Describe only this table or view."},
                    }),
                    &[],
                ),
                output_schema: Some(json!({
                    "type": "object",
                    "properties": {
                        "db": {"type": "string"},
                        "tables": {"type": "array", "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "kind": {"enum": ["table", "view"]},
                                "columns": {"type": "array", "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "type": {"type": "string"},
                                        "notnull": {"type": "boolean"},
                                        "pk": {"type": "integer", "description": "1-based position in the primary key; 0 if not in it."},
                                        "default": {"type": ["string", "null"], "description": "The default as SQL text."},
                                    },
                                }},
                                "indexes": {"type": "array", "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "unique": {"type": "boolean"},
                                        "origin": {"type": "string", "description": "c: CREATE INDEX, u: UNIQUE constraint, pk: PRIMARY KEY"},
                                        "partial": {"type": "boolean"},
                                        "columns": {"type": "array", "items": {"type": ["string", "null"]}},
                                    },
                                }},
                            },
                        }},
                        "truncated": {"type": "boolean"},
                    },
                    "required": ["db", "tables", "truncated"],
                })),
                annotations: Annotations::READ_ONLY,
            },
        }
    }
}

impl Default for DbSchema {
    fn default() -> Self {
        Self::new()
    }
}

impl Tool for DbSchema {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    fn call<'a>(&'a self, cx: &'a CallContext<'a>, args: Map<String, Value>) -> ToolFuture<'a> {
        Box::pin(async move {
            let start = Instant::now();
            let parsed = (|| {
                no_unknown_args(&args, &["db", "table"])?;
                let table = opt_str(&args, "table")?.map(str::to_string);
                let db = cx
                    .shard
                    .storage
                    .dbs
                    .get(opt_str(&args, "db")?)
                    .map_err(ToolResult::error)?;
                Ok((db, table))
            })();
            let (db, table) = match parsed {
                Ok(p) => p,
                Err(e) => return e,
            };
            match db
                .run(&limits(cx), move |c| schema(c, table.as_deref()))
                .await
            {
                Ok((tables, truncated)) => {
                    let text = render(&db.name, &tables, truncated);
                    ToolResult::structured(
                        json!({"db": db.name, "tables": tables, "truncated": truncated}),
                        text,
                    )
                }
                Err(e) => db_error(e, cx, start),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::tools::common::testing::{assert_error, call, text};
    use crate::tools::query_db::tests::fixture;
    use serde_json::json;

    #[test]
    fn describes_tables_columns_and_indexes() {
        let (_d, s, path) = fixture();
        let before = std::fs::read(&path).unwrap();
        let r = call(&s, "db_schema", json!({}));
        assert!(!r.is_error, "{r:?}");
        let st = r.structured_content().cloned().unwrap();
        assert_eq!(st["db"], "main");
        let tables = st["tables"].as_array().unwrap();
        assert_eq!(tables.len(), 2);
        assert_eq!(tables[0]["name"], "t");
        assert_eq!(
            tables[1],
            json!({"name": "v", "kind": "view", "indexes": [],
            "columns": [{"name": "name", "type": "TEXT", "notnull": false, "pk": 0, "default": null}]})
        );
        assert_eq!(
            tables[0]["columns"][1],
            json!({"name": "name", "type": "TEXT", "notnull": true, "pk": 0, "default": "'anon'"})
        );
        assert_eq!(tables[0]["columns"][0]["pk"], 1);
        assert_eq!(
            tables[0]["indexes"],
            json!([{"name": "t_name", "unique": true, "origin": "c", "partial": false, "columns": ["name"]}])
        );
        assert!(text(&r)
            .contains("table t\n  id INTEGER PRIMARY KEY\n  name TEXT NOT NULL DEFAULT 'anon'\n"));
        assert!(text(&r).contains("unique index t_name (name)"));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn one_table_by_name_and_failures() {
        let (_d, s, _) = fixture();
        let r = call(&s, "db_schema", json!({"table": "t", "db": "other"}));
        assert_eq!(
            r.structured_content().unwrap()["tables"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        // A name that would break string-built SQL is just a name.
        assert_error(
            &call(&s, "db_schema", json!({"table": "t'); DROP TABLE t; --"})),
            "no table or view named",
        );
        assert_error(
            &call(&s, "db_schema", json!({"table": "nope"})),
            "the database has: t, v",
        );
        assert_error(
            &call(&s, "db_schema", json!({"db": "nope"})),
            "no database named `nope`",
        );
        assert_error(
            &call(&s, "db_schema", json!({"tables": "t"})),
            "unknown argument `tables`",
        );
    }
}
