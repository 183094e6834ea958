//! Read-only SQLite access, shard by shard.
//!
//! # Read-only, four times over
//!
//! Each connection is opened `SQLITE_OPEN_READ_ONLY`, runs with `PRAGMA
//! query_only=1` and `trusted_schema=0`, and carries an authorizer that allows only
//! reads (SELECT, reads of tables, CTEs, functions other than `load_extension`, and
//! a list of introspection pragmas) and records why anything else was denied. The
//! tools also refuse any statement for which `sqlite3_stmt_readonly` is false, and
//! rusqlite's `prepare` refuses a second statement after the first. The database
//! file is never written.
//!
//! # Never stalling the shard
//!
//! A query first runs on the shard under a small VM-time budget
//! ([`INLINE_QUERY_BUDGET`]), enforced by a progress handler; most queries finish
//! well inside it and pay no thread hop. One that runs out of budget (or finds the
//! database locked) is interrupted and run again from scratch on glommio's blocking
//! pool, with its real deadline; it is read-only, so running it twice is harmless.
//! Meanwhile the shard serves other calls. The progress handler on the pool stops the
//! query at the deadline, when the client cancels, or when the awaiting future is
//! dropped, so no abandoned query keeps a thread busy.
//!
//! Connections live in a per-database idle list; a call takes one out and puts it
//! back, so the inline and pooled paths never share a connection. Each keeps a
//! prepared-statement cache. Answers themselves are kept by `query_cache.rs`,
//! for statements the authorizer saw call only deterministic functions.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, ErrorCode, OpenFlags};

use super::query_cache::QueryCache;
use crate::config::Database;

/// VM time a query may use on the shard before it moves to the blocking pool.
pub const INLINE_QUERY_BUDGET: Duration = Duration::from_millis(2);
/// VM instructions between progress-handler checks (~tens of µs each).
pub const PROGRESS_OPS: i32 = 1000;
/// Prepared statements cached per connection by default (`cache.db_statements`).
pub const STATEMENT_CACHE_CAPACITY: usize = 64;
/// Idle connections kept per database per shard by default
/// (`cache.db_idle_connections`).
pub const MAX_IDLE_CONNECTIONS: usize = 4;
/// Longest a query on the pool waits for a writer's lock to clear.
pub const MAX_BUSY_WAIT: Duration = Duration::from_secs(5);

/// Pragmas a query may use, as statements or table-valued functions: all of them
/// only describe the schema or the build.
pub const INTROSPECTION_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "database_list",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "compile_options",
];
/// Pragmas a query may read but never set.
pub const READABLE_PRAGMAS: &[&str] = &[
    "user_version",
    "application_id",
    "schema_version",
    "page_count",
    "page_size",
    "freelist_count",
    "encoding",
    "journal_mode",
];

/// The tables whose change is a schema change.
const SCHEMA_TABLES: &[&str] = &[
    "sqlite_master",
    "sqlite_schema",
    "sqlite_temp_master",
    "sqlite_temp_schema",
];

/// Why a query did not produce an answer.
#[derive(Debug, PartialEq, Eq)]
pub enum DbError {
    /// A write or other forbidden statement; the message says what and why.
    Refused(String),
    /// SQLite rejected the query (syntax, missing table, bad parameter…).
    Sql(String),
    /// A writer held the database locked for longer than the call could wait.
    Busy,
    TimedOut,
    Cancelled,
}

/// Functions SQLite flags deterministic that still read the clock: given
/// `'now'` (or nothing), they answer differently each time.
const CLOCK_FUNCTIONS: &[&str] = &[
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
];

/// One connection and the authorizer's notes: what it last denied, and whether a
/// statement it authorized since the flag was cleared calls a function whose
/// answer can change between two calls.
pub struct Conn {
    pub conn: Connection,
    denied: Arc<Mutex<Option<String>>>,
    volatile: Arc<AtomicBool>,
}

impl Conn {
    /// Whether `sql` calls only functions that answer the same given the same
    /// database: then its answer may be kept until the database changes.
    /// Prepares the statement afresh (the statement cache skips the authorizer).
    pub fn is_deterministic(&self, sql: &str) -> Result<bool, DbError> {
        self.volatile.store(false, Ordering::Relaxed);
        drop(self.conn.prepare(sql).map_err(|e| self.error(e))?);
        Ok(!self.volatile.load(Ordering::Relaxed))
    }

    /// Maps a rusqlite error to a [`DbError`], naming what the authorizer refused.
    pub fn error(&self, e: rusqlite::Error) -> DbError {
        // A denial surfaces as SQLITE_AUTH, or as SQLITE_ERROR for functions; the
        // authorizer's note says which and why either way.
        if let Some(why) = self.denied.lock().unwrap().take() {
            return DbError::Refused(why);
        }
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::AuthorizationForStatementDenied => {
                DbError::Refused(format!("refused by the read-only policy: {e}"))
            }
            rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::DatabaseBusy => DbError::Busy,
            rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::OperationInterrupted => DbError::Cancelled,
            rusqlite::Error::MultipleStatement => DbError::Refused(
                "only one SQL statement per call is allowed; send each statement in its own query_db call".into(),
            ),
            rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ReadOnly => {
                DbError::Refused(format!("the database is read-only: {e}"))
            }
            _ => DbError::Sql(e.to_string()),
        }
    }
}

/// A call's stop conditions, shared with whatever thread runs its query.
#[derive(Clone)]
pub struct Limits {
    pub deadline: Instant,
    pub cancel: Arc<AtomicBool>,
}

/// Why the progress handler interrupted a query.
const STOP_NONE: u8 = 0;
const STOP_BUDGET: u8 = 1;
const STOP_DEADLINE: u8 = 2;
const STOP_CANCEL: u8 = 3;

/// Sets a flag when dropped: the awaiting future is gone, so the query should stop.
struct AbandonOnDrop(Arc<AtomicBool>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// One configured database on one shard.
pub struct Db {
    pub name: String,
    path: PathBuf,
    /// The directory inotify watches for changes to the database, its journal and
    /// its WAL; `None` when it is not on a local filesystem (no answers kept).
    pub watch_dir: Option<PathBuf>,
    idle: RefCell<Vec<Conn>>,
    max_idle: usize,
    statements: usize,
}

impl Db {
    fn open(&self) -> Result<Conn, String> {
        open(&self.path, self.statements)
            .map_err(|e| format!("cannot open database `{}`: {e}", self.name))
    }

    fn take(&self) -> Result<Conn, DbError> {
        let idle = self.idle.borrow_mut().pop();
        match idle {
            Some(c) => Ok(c),
            None => self.open().map_err(DbError::Sql),
        }
    }

    fn put(&self, c: Conn) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    /// Runs `work` on a connection: on the shard within [`INLINE_QUERY_BUDGET`],
    /// else again on the blocking pool until the deadline. `work` must only read.
    pub async fn run<T, F>(&self, limits: &Limits, work: F) -> Result<T, DbError>
    where
        F: Fn(&Conn) -> Result<T, DbError> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let abandoned = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
        let mut conn = self.take()?;
        let budget_end = Instant::now() + INLINE_QUERY_BUDGET;
        let (outcome, stop) = watched(&mut conn, limits, Some(budget_end), &abandoned.0, &work);
        // Out of budget, or locked by a writer: worth waiting for, off the shard.
        let retry =
            matches!(&outcome, Err(DbError::Busy)) || (outcome.is_err() && stop == STOP_BUDGET);
        if !retry {
            self.put(conn);
            return outcome;
        }
        self.pooled(conn, limits, &abandoned, work).await
    }

    /// Runs `work` on the blocking pool only, until the deadline: for work that must
    /// not run twice because it hands out what it reads as it goes (streaming).
    pub async fn run_off_shard<T, F>(&self, limits: &Limits, work: F) -> Result<T, DbError>
    where
        F: Fn(&Conn) -> Result<T, DbError> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let abandoned = AbandonOnDrop(Arc::new(AtomicBool::new(false)));
        let conn = self.take()?;
        self.pooled(conn, limits, &abandoned, work).await
    }

    async fn pooled<T, F>(
        &self,
        mut conn: Conn,
        limits: &Limits,
        abandoned: &AbandonOnDrop,
        work: F,
    ) -> Result<T, DbError>
    where
        F: Fn(&Conn) -> Result<T, DbError> + Send + Sync + 'static,
        T: Send + 'static,
    {
        let limits = limits.clone();
        let flag = abandoned.0.clone();
        let (conn, outcome) = crate::shard::offload(move || {
            let wait = limits
                .deadline
                .saturating_duration_since(Instant::now())
                .min(MAX_BUSY_WAIT);
            let _ = conn.conn.busy_timeout(wait);
            let (outcome, _) = watched(&mut conn, &limits, None, &flag, &work);
            let _ = conn.conn.busy_timeout(Duration::ZERO);
            (conn, outcome)
        })
        .await;
        self.put(conn);
        outcome
    }
}

/// Runs `work` under a progress handler that stops it at the budget, the deadline,
/// a cancellation or abandonment; returns the outcome and why it was stopped.
fn watched<T>(
    conn: &mut Conn,
    limits: &Limits,
    budget_end: Option<Instant>,
    abandoned: &Arc<AtomicBool>,
    work: &dyn Fn(&Conn) -> Result<T, DbError>,
) -> (Result<T, DbError>, u8) {
    *conn.denied.lock().unwrap() = None;
    let stop = Arc::new(AtomicU8::new(STOP_NONE));
    let (deadline, cancel, abandoned, why) = (
        limits.deadline,
        limits.cancel.clone(),
        abandoned.clone(),
        stop.clone(),
    );
    let handler = move || {
        let reason = if cancel.load(Ordering::Acquire) || abandoned.load(Ordering::Acquire) {
            STOP_CANCEL
        } else {
            let now = Instant::now();
            if now >= deadline {
                STOP_DEADLINE
            } else if budget_end.is_some_and(|b| now >= b) {
                STOP_BUDGET
            } else {
                return false;
            }
        };
        why.store(reason, Ordering::Release);
        true
    };
    conn.conn
        .progress_handler(PROGRESS_OPS, Some(handler))
        .expect("installing a progress handler cannot fail");
    let outcome = work(conn);
    conn.conn
        .progress_handler(0, None::<fn() -> bool>)
        .expect("removing a progress handler cannot fail");
    let stop = stop.load(Ordering::Acquire);
    let outcome = match (outcome, stop) {
        (Err(DbError::Cancelled), STOP_DEADLINE) => Err(DbError::TimedOut),
        (other, _) => other,
    };
    (outcome, stop)
}

/// Opens a connection that cannot write, with its authorizer installed.
pub fn open(path: &std::path::Path, statements: usize) -> rusqlite::Result<Conn> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.execute_batch("PRAGMA query_only = 1; PRAGMA trusted_schema = 0;")?;
    conn.busy_timeout(Duration::ZERO)?;
    conn.set_prepared_statement_cache_capacity(statements);
    let stable = stable_functions(&conn);
    let denied = Arc::new(Mutex::new(None));
    let note = denied.clone();
    let volatile = Arc::new(AtomicBool::new(false));
    let seen = volatile.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| match authorize(&ctx) {
        Ok(()) => {
            if let AuthAction::Function { function_name } = ctx.action {
                if !stable.contains(&function_name.to_ascii_lowercase()) {
                    seen.store(true, Ordering::Relaxed);
                }
            }
            Authorization::Allow
        }
        Err(why) => {
            // The first denial names the statement (CREATE TABLE); later ones name
            // its parts (the INSERT into sqlite_schema).
            note.lock().unwrap().get_or_insert(why);
            Authorization::Deny
        }
    }))?;
    Ok(Conn {
        conn,
        denied,
        volatile,
    })
}

/// The functions whose answer depends only on their arguments and the database:
/// SQLite's scalars flagged `SQLITE_DETERMINISTIC` except [`CLOCK_FUNCTIONS`],
/// and its aggregate and window functions. Read once, from the first connection,
/// before its authorizer is installed. Empty if this SQLite cannot list its
/// functions: then no statement that calls one is ever cached.
fn stable_functions(conn: &Connection) -> &'static hashbrown::HashSet<String> {
    static STABLE: OnceLock<hashbrown::HashSet<String>> = OnceLock::new();
    STABLE.get_or_init(|| {
        const SQLITE_DETERMINISTIC: i64 = 0x800;
        let list = || -> rusqlite::Result<hashbrown::HashSet<String>> {
            let mut stmt = conn.prepare("SELECT name, type, flags FROM pragma_function_list")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            let mut set = hashbrown::HashSet::new();
            let mut volatile = hashbrown::HashSet::new();
            for row in rows {
                let (name, kind, flags) = row?;
                let name = name.to_ascii_lowercase();
                // One name can have several entries (by argument count); one
                // volatile entry makes the name volatile.
                if kind == "s"
                    && (flags & SQLITE_DETERMINISTIC == 0
                        || CLOCK_FUNCTIONS.contains(&name.as_str()))
                {
                    volatile.insert(name);
                } else {
                    set.insert(name);
                }
            }
            set.retain(|n| !volatile.contains(n));
            Ok(set)
        };
        list().unwrap_or_default()
    })
}

/// The read-only policy: `Err` says what was refused and why.
fn authorize(ctx: &AuthContext<'_>) -> Result<(), String> {
    match ctx.action {
        AuthAction::Select | AuthAction::Read { .. } | AuthAction::Recursive => Ok(()),
        AuthAction::Function { function_name } if function_name.eq_ignore_ascii_case("load_extension") => {
            Err("load_extension is refused: this server never loads SQLite extensions".into())
        }
        AuthAction::Function { .. } => Ok(()),
        AuthAction::Pragma { pragma_name, pragma_value } => {
            let name = pragma_name.to_ascii_lowercase();
            if INTROSPECTION_PRAGMAS.contains(&name.as_str())
                || (pragma_value.is_none() && READABLE_PRAGMAS.contains(&name.as_str()))
            {
                Ok(())
            } else {
                Err(format!(
                    "PRAGMA {pragma_name}{} is refused: only schema-describing pragmas ({}) and reading ({}) are allowed; use db_schema for the schema",
                    pragma_value.map(|v| format!(" = {v}")).unwrap_or_default(),
                    INTROSPECTION_PRAGMAS.join(", "),
                    READABLE_PRAGMAS.join(", ")
                ))
            }
        }
        AuthAction::Insert { table_name } | AuthAction::Update { table_name, .. } | AuthAction::Delete { table_name }
            if SCHEMA_TABLES.contains(&table_name) =>
        {
            Err("schema changes (CREATE, DROP, ALTER) are refused: databases are served read-only".into())
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            Err("ATTACH and DETACH are refused: only the configured databases are served; pick one with `db`".into())
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Err(
            "transaction statements are refused: each query runs on its own read snapshot; send a single SELECT".into(),
        ),
        other => Err(format!(
            "{} is refused: databases are served read-only (SELECT, WITH … SELECT and schema pragmas only)",
            describe(&other)
        )),
    }
}

fn describe(a: &AuthAction<'_>) -> String {
    let s = format!("{a:?}");
    let verb = s.split([' ', '{', '(']).next().unwrap_or("this statement");
    let mut out = String::new();
    for (i, ch) in verb.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push(' ');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// The databases one shard serves, in configuration order, and the answers kept.
pub struct Databases {
    dbs: Vec<Db>,
    pub results: QueryCache,
}

impl Databases {
    /// Opens one connection to each database now, so that a missing or unreadable
    /// file stops start-up rather than the first query.
    pub fn new(
        config: &[Database],
        cache: &crate::config::CacheConfig,
    ) -> Result<Databases, String> {
        let mut dbs = Vec::with_capacity(config.len());
        for d in config {
            let db = Db {
                name: d.name.clone(),
                path: d.path.clone(),
                watch_dir: d
                    .path
                    .parent()
                    .filter(|dir| super::watch::is_local_filesystem(dir))
                    .map(Path::to_path_buf),
                idle: RefCell::new(Vec::new()),
                max_idle: cache.db_idle_connections,
                statements: cache.db_statements,
            };
            let first = db.open()?;
            db.idle.borrow_mut().push(first);
            dbs.push(db);
        }
        let results = if dbs.is_empty() {
            QueryCache::new(0, 0)
        } else {
            QueryCache::new(cache.query_results, cache.query_result_bytes)
        };
        Ok(Databases { dbs, results })
    }

    /// The database named `name`, or the first when `None`; an error message that
    /// lists the choices otherwise.
    pub fn get(&self, name: Option<&str>) -> Result<&Db, String> {
        let names = || {
            self.dbs
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match name {
            None => self
                .dbs
                .first()
                .ok_or_else(|| "no databases are configured on this server".to_string()),
            Some(n) => self.dbs.iter().find(|d| d.name == n).ok_or_else(|| {
                format!("no database named `{n}`; configured databases: {}", names())
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_actions_for_messages() {
        assert_eq!(describe(&AuthAction::Insert { table_name: "t" }), "INSERT");
        assert_eq!(
            describe(&AuthAction::CreateTable { table_name: "t" }),
            "CREATE TABLE"
        );
    }
}
