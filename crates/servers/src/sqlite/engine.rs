//! Runs one client-supplied SQL statement with read-only (or write) enforced by SQLite itself,
//! never by inspecting the SQL text (the reference's `SELECT`-prefix check is trivially
//! bypassed, see `shared/reference/servers.md` §5). The layers, each sufficient for something:
//!
//! 1. the file is opened with `SQLITE_OPEN_READ_ONLY` (never `CREATE`), so no write reaches it;
//! 2. `SQLITE_LIMIT_ATTACHED = 0`: no other database file can be attached (read or created);
//! 3. an authorizer that, in read mode, allows only reading and a small set of harmless
//!    functions and introspection pragmas; in both modes it refuses `ATTACH`, pragmas that set
//!    values, transactions, virtual tables and extension loading;
//! 4. exactly one statement (rusqlite refuses a non-empty tail) and `sqlite3_stmt_readonly`;
//! 5. `query_only`, `trusted_schema = OFF`, `SQLITE_DBCONFIG_DEFENSIVE`;
//! 6. budgets: a deadline enforced by a progress handler, `SQLITE_LIMIT_LENGTH`, a row cap and an
//!    output byte cap, with truncation stated in the result.
//!
//! Each call opens its own connection: SQLite opens in microseconds, and it keeps calls isolated.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::limits::Limit;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode, OpenFlags};
use serde_json::{Map, Value, json};

/// Budgets for one query.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most rows returned.
    pub max_rows: usize,
    /// Most bytes of row JSON returned.
    pub max_bytes: usize,
    /// Time limit.
    pub timeout: Duration,
}

/// Why a statement was refused or failed. Messages say what to do.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The database file could not be opened.
    #[error("cannot open the database: {0}")]
    Open(String),
    /// Empty or comment-only SQL.
    #[error("the query is empty: send one SQL statement")]
    Empty,
    /// More than one statement.
    #[error("only one SQL statement is allowed per call: remove everything after the first `;`")]
    MultipleStatements,
    /// A writing statement given to `read_query`.
    #[error(
        "read_query only runs statements that read (SELECT, WITH ... SELECT, VALUES); this one would change the database, and the server is read-only"
    )]
    NotReadOnly,
    /// A reading statement given to `write_query`.
    #[error("write_query runs statements that change the database; use read_query for this one")]
    NotAWrite,
    /// The authorizer refused part of the statement.
    #[error("not allowed: {0}")]
    Refused(String),
    /// The time limit was hit.
    #[error(
        "the query ran longer than the {0} ms limit and was stopped: add a WHERE or LIMIT clause"
    )]
    Timeout(u128),
    /// SQLite's own error (syntax, unknown table, ...).
    #[error("SQLite error: {0}")]
    Sql(String),
    /// The table named to `describe_table` does not exist.
    #[error("no table or view named {0:?}: call list_tables to see the names")]
    NoSuchTable(String),
}

/// What a connection may do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Client SQL, reads only.
    Read,
    /// Client SQL in write mode.
    Write,
    /// Postern's own fixed, parameterised introspection queries.
    Introspect,
}

/// Checks that `path` is an existing, readable SQLite database.
pub fn check(path: &Path) -> Result<(), QueryError> {
    let conn = open(path, Mode::Introspect)?;
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))
        .map_err(|e| QueryError::Open(e.to_string()))
}

/// Runs one reading statement.
pub fn read_query(path: &Path, sql: &str, limits: Limits) -> Result<Value, QueryError> {
    let mut conn = open(path, Mode::Read)?;
    run(&mut conn, Mode::Read, sql, limits)
}

/// Runs one writing statement (write mode only).
pub fn write_query(path: &Path, sql: &str, limits: Limits) -> Result<Value, QueryError> {
    let mut conn = open(path, Mode::Write)?;
    run(&mut conn, Mode::Write, sql, limits)
}

/// The user tables and views, by name.
pub fn list_tables(path: &Path) -> Result<Value, QueryError> {
    let conn = open(path, Mode::Introspect)?;
    let mut stmt = conn
        .prepare(
            "SELECT name, type FROM sqlite_schema WHERE type IN ('table', 'view') \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .map_err(sql_error)?;
    let tables = stmt
        .query_map([], |row| {
            Ok(json!({"name": row.get::<_, String>(0)?, "type": row.get::<_, String>(1)?}))
        })
        .map_err(sql_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_error)?;
    Ok(json!({ "tables": tables }))
}

/// The columns of one table or view.
pub fn describe_table(path: &Path, table: &str) -> Result<Value, QueryError> {
    let conn = open(path, Mode::Introspect)?;
    let kind: Option<String> = conn
        .query_row(
            "SELECT type FROM sqlite_schema WHERE name = ?1 AND type IN ('table', 'view')",
            [table],
            |row| row.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(sql_error(e)),
        })?;
    let Some(kind) = kind else {
        return Err(QueryError::NoSuchTable(table.to_owned()));
    };
    // The name is a bound parameter of the table-valued pragma, never spliced into SQL.
    let mut stmt = conn
        .prepare("SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?1) ORDER BY cid")
        .map_err(sql_error)?;
    let columns = stmt
        .query_map([table], |row| {
            Ok(json!({
                "name": row.get::<_, String>(0)?,
                "type": row.get::<_, String>(1)?,
                "not_null": row.get::<_, i64>(2)? != 0,
                "default": row.get::<_, Option<String>>(3)?,
                "primary_key": row.get::<_, i64>(4)? != 0,
            }))
        })
        .map_err(sql_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_error)?;
    Ok(json!({ "table": table, "type": kind, "columns": columns }))
}

fn open(path: &Path, mode: Mode) -> Result<Connection, QueryError> {
    let access = match mode {
        Mode::Write => OpenFlags::SQLITE_OPEN_READ_WRITE,
        Mode::Read | Mode::Introspect => OpenFlags::SQLITE_OPEN_READ_ONLY,
    };
    // No SQLITE_OPEN_CREATE (a missing file is an error) and no SQLITE_OPEN_URI (no `?mode=`
    // tricks in the file name).
    let flags = access | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| QueryError::Open(format!("{}: {e}", path.display())))?;
    let setup = || -> rusqlite::Result<()> {
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, 10_000_000)?;
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 100_000)?;
        conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA,
            false,
        )?;
        conn.busy_timeout(Duration::from_secs(2))?;
        if mode != Mode::Write {
            conn.pragma_update(None, "query_only", true)?;
        }
        Ok(())
    };
    setup().map_err(|e| QueryError::Open(e.to_string()))?;
    Ok(conn)
}

fn run(conn: &mut Connection, mode: Mode, sql: &str, limits: Limits) -> Result<Value, QueryError> {
    // First prepare without the authorizer, to tell "several statements" apart from "refused".
    match conn.prepare(sql) {
        Err(rusqlite::Error::MultipleStatement) => return Err(QueryError::MultipleStatements),
        Err(rusqlite::Error::Empty) => return Err(QueryError::Empty),
        Err(e) => return Err(sql_error(e)),
        Ok(_) => {}
    }
    let refused = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let record = refused.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        let verdict = authorize(mode, &ctx.action);
        if let Err(reason) = &verdict {
            *record.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.clone());
        }
        verdict.map_or(Authorization::Deny, |()| Authorization::Allow)
    }))
    .map_err(sql_error)?;
    let deadline = Instant::now() + limits.timeout;
    conn.progress_handler(1_000, Some(move || Instant::now() > deadline))
        .map_err(sql_error)?;

    let result = execute(conn, mode, sql, limits);
    let reason = refused.lock().unwrap_or_else(|e| e.into_inner()).take();
    result.map_err(|e| match (e, reason) {
        (QueryError::Sql(_), Some(reason)) => QueryError::Refused(reason),
        (QueryError::Sql(msg), None) if msg.contains("interrupted") => {
            QueryError::Timeout(limits.timeout.as_millis())
        }
        (e, _) => e,
    })
}

fn execute(conn: &Connection, mode: Mode, sql: &str, limits: Limits) -> Result<Value, QueryError> {
    let mut stmt = conn.prepare(sql).map_err(sql_error)?;
    match (mode, stmt.readonly()) {
        (Mode::Read, false) => return Err(QueryError::NotReadOnly),
        (Mode::Write, true) => return Err(QueryError::NotAWrite),
        _ => {}
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let cell_cap = (limits.max_bytes / 4).max(64);
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    let mut truncated: Option<String> = None;
    let mut cut_values = 0usize;
    let mut cursor = stmt.query([]).map_err(sql_error)?;
    while let Some(row) = cursor.next().map_err(sql_error)? {
        if rows.len() == limits.max_rows {
            truncated = Some(format!(
                "only the first {} rows are returned",
                limits.max_rows
            ));
            break;
        }
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            let (value, cut) = to_json(row.get_ref(i).map_err(sql_error)?, cell_cap);
            cut_values += usize::from(cut);
            values.push(value);
        }
        let size = serde_json::to_string(&values).map_or(0, |s| s.len());
        if bytes + size > limits.max_bytes {
            truncated = Some(format!(
                "only the first {} rows are returned: the result exceeds {} bytes",
                rows.len(),
                limits.max_bytes
            ));
            break;
        }
        bytes += size;
        rows.push(Value::Array(values));
    }
    drop(cursor);
    let mut out = Map::new();
    out.insert("columns".into(), json!(columns));
    out.insert("row_count".into(), json!(rows.len()));
    out.insert("rows".into(), Value::Array(rows));
    if mode == Mode::Write {
        out.insert("rows_affected".into(), json!(conn.changes()));
    }
    if cut_values > 0 && truncated.is_none() {
        truncated = Some(format!(
            "{cut_values} long values were cut to {cell_cap} bytes"
        ));
    } else if cut_values > 0 {
        truncated = truncated
            .map(|t| format!("{t}; {cut_values} long values were cut to {cell_cap} bytes"));
    }
    out.insert("truncated".into(), json!(truncated.is_some()));
    if let Some(reason) = truncated {
        out.insert("truncation".into(), json!(reason));
    }
    Ok(Value::Object(out))
}

/// A SQLite value as JSON, keeping its type; long text is cut on a character boundary and blobs
/// are summarised. Returns whether the value was cut.
fn to_json(value: ValueRef<'_>, cap: usize) -> (Value, bool) {
    match value {
        ValueRef::Null => (Value::Null, false),
        ValueRef::Integer(i) => (json!(i), false),
        ValueRef::Real(f) => (
            serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
            false,
        ),
        ValueRef::Text(bytes) => {
            let text = String::from_utf8_lossy(bytes);
            if text.len() <= cap {
                (Value::String(text.into_owned()), false)
            } else {
                let end = text.floor_char_boundary(cap);
                (Value::String(format!("{}…", &text[..end])), true)
            }
        }
        ValueRef::Blob(bytes) => (
            Value::String(format!("<BLOB, {} bytes>", bytes.len())),
            false,
        ),
    }
}

/// Functions that read files, load code or otherwise reach outside the database.
const DENIED_FUNCTIONS: [&str; 6] = [
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
    "sqlite_dbpage",
];

/// Pragmas that only describe the schema; allowed without a value (`PRAGMA table_info(t)`).
const INTROSPECTION_PRAGMAS: [&str; 6] = [
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
];

fn authorize(mode: Mode, action: &AuthAction<'_>) -> Result<(), String> {
    match action {
        AuthAction::Select | AuthAction::Read { .. } | AuthAction::Recursive => Ok(()),
        AuthAction::Function { function_name } => {
            if DENIED_FUNCTIONS.contains(&function_name.to_ascii_lowercase().as_str()) {
                Err(format!("the function {function_name}() is disabled"))
            } else {
                Ok(())
            }
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let introspection = INTROSPECTION_PRAGMAS.contains(&name.as_str());
            // Table-valued pragmas pass their argument as the value; only introspection ones.
            if introspection {
                Ok(())
            } else if pragma_value.is_some() {
                Err(format!(
                    "PRAGMA {pragma_name} cannot be changed through this server"
                ))
            } else {
                Err(format!(
                    "PRAGMA {pragma_name} is not available through this server"
                ))
            }
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            Err("ATTACH and DETACH are disabled: only the configured database can be used".into())
        }
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
            Err("transaction statements are disabled: each call runs as its own transaction".into())
        }
        AuthAction::CreateVtable { .. } | AuthAction::DropVtable { .. } => {
            Err("virtual tables cannot be created or dropped through this server".into())
        }
        _ if mode == Mode::Write => Ok(()),
        other => Err(format!(
            "read_query cannot {} (the server is read-only)",
            describe(other)
        )),
    }
}

fn describe(action: &AuthAction<'_>) -> String {
    match action {
        AuthAction::Insert { table_name } => format!("insert into {table_name}"),
        AuthAction::Update { table_name, .. } => format!("update {table_name}"),
        AuthAction::Delete { table_name } => format!("delete from {table_name}"),
        other => format!(
            "run {}",
            format!("{other:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or("this")
        ),
    }
}

fn sql_error(error: rusqlite::Error) -> QueryError {
    match &error {
        rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::OperationInterrupted => {
            QueryError::Sql("interrupted".into())
        }
        _ => QueryError::Sql(error.to_string()),
    }
}

#[cfg(test)]
mod tests;
