//! The two SQL backends behind one small interface, so every store operation is written once:
//! statements use SQLite's `?1` placeholders (rewritten to `$1` for PostgreSQL), only `TEXT` and
//! `BIGINT` columns, and SQL both engines share (`ON CONFLICT`, `RETURNING`).
//!
//! SQLite: one connection (WAL) behind an async mutex; operations take microseconds, and a single
//! writer is what SQLite allows anyway. PostgreSQL: a connection pool; atomic operations rely on
//! row locks taken by `UPDATE ... WHERE <condition>` under READ COMMITTED, which re-checks the
//! condition after waiting for a concurrent writer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::{ToSql, Type};

use crate::StoreError;
use crate::schema::MIGRATIONS;

/// A statement parameter.
#[derive(Clone, Debug)]
pub(crate) enum P {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<&str> for P {
    fn from(v: &str) -> Self {
        P::Text(Some(v.to_owned()))
    }
}
impl From<&String> for P {
    fn from(v: &String) -> Self {
        P::Text(Some(v.clone()))
    }
}
impl From<String> for P {
    fn from(v: String) -> Self {
        P::Text(Some(v))
    }
}
impl From<Option<&str>> for P {
    fn from(v: Option<&str>) -> Self {
        P::Text(v.map(str::to_owned))
    }
}
impl From<i64> for P {
    fn from(v: i64) -> Self {
        P::Int(Some(v))
    }
}
impl From<Option<i64>> for P {
    fn from(v: Option<i64>) -> Self {
        P::Int(v)
    }
}

/// Builds a parameter list: `params![a, b]`.
macro_rules! params {
    ($($p:expr),* $(,)?) => { &[$($crate::db::P::from($p)),*][..] };
}
pub(crate) use params;

/// A result cell.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Cell {
    Text(String),
    Int(i64),
    Null,
}

/// A result row.
#[derive(Clone, Debug)]
pub(crate) struct Row(Vec<Cell>);

impl Row {
    pub(crate) fn text(&self, i: usize) -> Result<String, StoreError> {
        match self.0.get(i) {
            Some(Cell::Text(s)) => Ok(s.clone()),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: expected text, found {other:?}"
            ))),
        }
    }
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        match self.0.get(i) {
            Some(Cell::Null) => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
    pub(crate) fn int(&self, i: usize) -> Result<i64, StoreError> {
        match self.0.get(i) {
            Some(Cell::Int(v)) => Ok(*v),
            other => Err(StoreError::Corrupt(format!(
                "column {i}: expected integer, found {other:?}"
            ))),
        }
    }
    pub(crate) fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        match self.0.get(i) {
            Some(Cell::Null) => Ok(None),
            _ => self.int(i).map(Some),
        }
    }
}

/// Time limit of one TCP connection attempt to one PostgreSQL host, unless the connection string
/// sets `connect_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Time limit of one statement (or BEGIN, COMMIT, ROLLBACK) on PostgreSQL: the store's
/// statements take milliseconds, and the pool's own limits (waiting for a connection, making
/// one) are 10 s too.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// An open database.
pub(crate) enum Db {
    Sqlite(tokio::sync::Mutex<rusqlite::Connection>),
    Postgres(Pool),
}

/// A connection (or, after [`Db::begin`], a transaction) to run statements on. Lives for one
/// operation on the stack, so the variants' size difference doesn't matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conn<'a> {
    Sqlite {
        conn: tokio::sync::MutexGuard<'a, rusqlite::Connection>,
        open_tx: bool,
    },
    Postgres {
        client: Option<deadpool_postgres::Object>,
        open_tx: bool,
    },
}

impl Db {
    /// Opens (creating if needed) a SQLite database file in WAL mode.
    pub(crate) fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let fail = |e: rusqlite::Error| StoreError::Open {
            target: format!("SQLite database {}", path.display()),
            // SQLite says only "unable to open database file" for a read-only file, directory
            // or filesystem (WAL needs to write its -wal and -shm files beside the database).
            reason: format!(
                "{e}: the gateway's user must be able to write the database, its -wal and -shm files and their directory (data_dir), on a filesystem that is read-write and not full"
            ),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                target: format!("SQLite database {}", path.display()),
                reason: format!("cannot create the directory {}: {e}", dir.display()),
            })?;
        }
        create_private(path).map_err(|e| StoreError::Open {
            target: format!("SQLite database {}", path.display()),
            reason: format!("cannot create the file: {e}"),
        })?;
        let conn = rusqlite::Connection::open(path).map_err(fail)?;
        Self::configure_sqlite(&conn, true).map_err(fail)?;
        Ok(Db::Sqlite(tokio::sync::Mutex::new(conn)))
    }

    /// An in-memory SQLite database (tests).
    pub(crate) fn open_memory() -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open_in_memory().map_err(|e| StoreError::Open {
            target: "in-memory SQLite database".into(),
            reason: e.to_string(),
        })?;
        Self::configure_sqlite(&conn, false).map_err(|e| StoreError::Open {
            target: "in-memory SQLite database".into(),
            reason: e.to_string(),
        })?;
        Ok(Db::Sqlite(tokio::sync::Mutex::new(conn)))
    }

    fn configure_sqlite(conn: &rusqlite::Connection, file: bool) -> rusqlite::Result<()> {
        conn.busy_timeout(Duration::from_secs(5))?;
        if file {
            // WAL: readers never block the writer; NORMAL sync: a committed transaction survives
            // a crash of the process (kill -9), though not necessarily of the machine.
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        conn.pragma_update(None, "foreign_keys", true)?;
        // Reading the schema fails now, with a clear error, if the file is not a database.
        conn.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        Ok(())
    }

    /// Connects to PostgreSQL and checks the connection.
    pub(crate) async fn open_postgres(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let target = format!("PostgreSQL database {}", redact_url(url));
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| StoreError::Open {
            target: target.clone(),
            reason: format!("invalid connection string: {e}"),
        })?;
        if config.get_connect_timeout().is_none() {
            // Per host: a host that is gone without a trace (no refusal) must not hold the
            // connection attempt until the pool's own limit, so the next listed host is tried.
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Open {
                target: target.clone(),
                reason: e.to_string(),
            })?;
        let client = pool.get().await.map_err(|e| StoreError::Open {
            target: target.clone(),
            reason: describe_pool_error(&e),
        })?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| StoreError::Open {
                target,
                reason: e.to_string(),
            })?;
        drop(client);
        Ok(Db::Postgres(pool))
    }

    /// A connection for single statements.
    pub(crate) async fn conn(&self) -> Result<Conn<'_>, StoreError> {
        match self {
            Db::Sqlite(m) => Ok(Conn::Sqlite {
                conn: m.lock().await,
                open_tx: false,
            }),
            Db::Postgres(pool) => {
                // Observed as `connect`: an unreachable server fails here, before any
                // statement, and must show in the store error metric all the same.
                let started = std::time::Instant::now();
                let got = pool.get().await.map_err(|e| {
                    StoreError::Backend(format!("PostgreSQL: {}", describe_pool_error(&e)))
                });
                observed("connect", started, &got);
                let client = got?;
                Ok(Conn::Postgres {
                    client: Some(client),
                    open_tx: false,
                })
            }
        }
    }

    /// A transaction; rolled back unless [`Conn::commit`] is called.
    pub(crate) async fn begin(&self) -> Result<Conn<'_>, StoreError> {
        let mut conn = self.conn().await?;
        match &mut conn {
            Conn::Sqlite { conn, open_tx } => {
                // IMMEDIATE: take the write lock now, so read-then-write steps can't interleave.
                conn.execute_batch("BEGIN IMMEDIATE")
                    .map_err(sqlite_error)?;
                *open_tx = true;
            }
            Conn::Postgres { client, open_tx } => {
                bounded(client, async |c| {
                    c.batch_execute("BEGIN").await.map_err(pg_error)
                })
                .await?;
                *open_tx = true;
            }
        }
        Ok(conn)
    }

    /// Applies the migrations this version knows and the database lacks, in order, each in its
    /// own transaction; several processes starting at once are serialised by a lock.
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        if let Conn::Postgres { .. } = tx {
            // One migrator at a time across replicas; released at commit.
            tx.execute("SELECT pg_advisory_xact_lock(7438291)", &[])
                .await?;
        }
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            &[],
        )
        .await?;
        let rows = tx
            .query("SELECT max(version) FROM schema_migrations", &[])
            .await?;
        let current = rows
            .first()
            .map(|r| r.opt_int(0))
            .transpose()?
            .flatten()
            .unwrap_or(0);
        let latest = MIGRATIONS.last().map_or(0, |m| m.0);
        if current > latest {
            return Err(StoreError::Open {
                target: "the store".into(),
                reason: format!(
                    "the database schema is at version {current}, newer than this Postern knows ({latest}): upgrade Postern"
                ),
            });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                tx.execute(statement, &[]).await?;
            }
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                params![*version, crate::now_ms()],
            )
            .await?;
            tracing::info!(version, "store: applied migration");
        }
        tx.commit().await
    }
}

/// What is told of every statement: its kind (`query`, `execute`; `connect` for taking a
/// PostgreSQL connection from the pool), its time, and whether it succeeded (the gateway's
/// store latency and error metrics).
pub type Observer = Box<dyn Fn(&'static str, std::time::Duration, bool) + Send + Sync>;

static OBSERVER: std::sync::OnceLock<Observer> = std::sync::OnceLock::new();

/// Tells `observer` about every statement of every store of this process from now on (a
/// process has one store; the first observer set stays).
pub fn observe_operations(observer: Observer) {
    let _ = OBSERVER.set(observer);
}

fn observed<T>(kind: &'static str, started: std::time::Instant, result: &Result<T, StoreError>) {
    if let Some(observer) = OBSERVER.get() {
        observer(kind, started.elapsed(), result.is_ok());
    }
}

impl Conn<'_> {
    /// Runs a statement; returns the number of rows changed.
    pub(crate) async fn execute(&mut self, sql: &str, params: &[P]) -> Result<u64, StoreError> {
        let started = std::time::Instant::now();
        let result = self.execute_unobserved(sql, params).await;
        observed("execute", started, &result);
        result
    }

    /// Runs a query; returns its rows.
    pub(crate) async fn query(&mut self, sql: &str, params: &[P]) -> Result<Vec<Row>, StoreError> {
        let started = std::time::Instant::now();
        let result = self.query_unobserved(sql, params).await;
        observed("query", started, &result);
        result
    }

    async fn execute_unobserved(&mut self, sql: &str, params: &[P]) -> Result<u64, StoreError> {
        match self {
            Conn::Sqlite { conn, .. } => {
                let mut stmt = conn.prepare_cached(sql).map_err(sqlite_error)?;
                let changed = stmt
                    .execute(rusqlite::params_from_iter(params.iter().map(sqlite_param)))
                    .map_err(sqlite_error)?;
                Ok(changed as u64)
            }
            Conn::Postgres { client, .. } => {
                let sql = pg_sql(sql);
                bounded(client, async |client| {
                    let stmt = client.prepare_cached(&sql).await.map_err(pg_error)?;
                    let values: Vec<Box<dyn ToSql + Sync + Send>> =
                        params.iter().map(pg_param).collect();
                    let refs: Vec<&(dyn ToSql + Sync)> = values
                        .iter()
                        .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                        .collect();
                    client.execute(&stmt, &refs).await.map_err(pg_error)
                })
                .await
            }
        }
    }

    async fn query_unobserved(&mut self, sql: &str, params: &[P]) -> Result<Vec<Row>, StoreError> {
        match self {
            Conn::Sqlite { conn, .. } => {
                let mut stmt = conn.prepare_cached(sql).map_err(sqlite_error)?;
                let width = stmt.column_count();
                let mut rows = stmt
                    .query(rusqlite::params_from_iter(params.iter().map(sqlite_param)))
                    .map_err(sqlite_error)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(sqlite_error)? {
                    let mut cells = Vec::with_capacity(width);
                    for i in 0..width {
                        cells.push(match row.get_ref(i).map_err(sqlite_error)? {
                            rusqlite::types::ValueRef::Null => Cell::Null,
                            rusqlite::types::ValueRef::Integer(v) => Cell::Int(v),
                            rusqlite::types::ValueRef::Text(t) => {
                                Cell::Text(String::from_utf8_lossy(t).into_owned())
                            }
                            other => {
                                return Err(StoreError::Corrupt(format!(
                                    "unexpected SQLite value {other:?}"
                                )));
                            }
                        });
                    }
                    out.push(Row(cells));
                }
                Ok(out)
            }
            Conn::Postgres { client, .. } => {
                let sql = pg_sql(sql);
                let rows = bounded(client, async |client| {
                    let stmt = client.prepare_cached(&sql).await.map_err(pg_error)?;
                    let values: Vec<Box<dyn ToSql + Sync + Send>> =
                        params.iter().map(pg_param).collect();
                    let refs: Vec<&(dyn ToSql + Sync)> = values
                        .iter()
                        .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                        .collect();
                    client.query(&stmt, &refs).await.map_err(pg_error)
                })
                .await?;
                rows.iter()
                    .map(|row| {
                        (0..row.len())
                            .map(|i| {
                                let ty = row.columns()[i].type_().clone();
                                if ty == Type::INT8 {
                                    Ok(row
                                        .try_get::<_, Option<i64>>(i)
                                        .map_err(pg_error)?
                                        .map_or(Cell::Null, Cell::Int))
                                } else if ty == Type::INT4 {
                                    Ok(row
                                        .try_get::<_, Option<i32>>(i)
                                        .map_err(pg_error)?
                                        .map_or(Cell::Null, |v| Cell::Int(v.into())))
                                } else {
                                    Ok(row
                                        .try_get::<_, Option<String>>(i)
                                        .map_err(pg_error)?
                                        .map_or(Cell::Null, Cell::Text))
                                }
                            })
                            .collect::<Result<Vec<_>, StoreError>>()
                            .map(Row)
                    })
                    .collect()
            }
        }
    }

    /// Commits the transaction.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        match &mut self {
            Conn::Sqlite { conn, open_tx } => {
                conn.execute_batch("COMMIT").map_err(sqlite_error)?;
                *open_tx = false;
            }
            Conn::Postgres { client, open_tx } => {
                bounded(client, async |c| {
                    c.batch_execute("COMMIT").await.map_err(pg_error)
                })
                .await?;
                *open_tx = false;
            }
        }
        Ok(())
    }
}

impl Drop for Conn<'_> {
    /// An uncommitted transaction is rolled back before the connection is reused.
    fn drop(&mut self) {
        match self {
            Conn::Sqlite {
                conn,
                open_tx: true,
            } => {
                let _ = conn.execute_batch("ROLLBACK");
            }
            Conn::Postgres {
                client,
                open_tx: true,
            } => {
                if let Some(client) = client.take() {
                    // The pooled connection goes back only after the rollback finished.
                    tokio::spawn(async move {
                        let rolled_back = tokio::time::timeout(
                            STATEMENT_TIMEOUT,
                            client.batch_execute("ROLLBACK"),
                        )
                        .await;
                        if !matches!(rolled_back, Ok(Ok(()))) {
                            let _ = deadpool_postgres::Object::take(client);
                        }
                    });
                }
            }
            _ => {}
        }
    }
}

/// Runs `work` on the PostgreSQL connection in `slot`, within [`STATEMENT_TIMEOUT`]. A
/// connection that does not answer in time (a frozen server, a network path that silently
/// drops packets) is closed, never handed out again, and the operation fails instead of
/// hanging the request that waits on it.
async fn bounded<T>(
    slot: &mut Option<deadpool_postgres::Object>,
    work: impl AsyncFnOnce(&deadpool_postgres::Object) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let outcome = {
        let client = slot.as_ref().ok_or_else(|| {
            StoreError::Backend("PostgreSQL: the connection was closed after a timeout".into())
        })?;
        tokio::time::timeout(STATEMENT_TIMEOUT, work(client)).await
    };
    match outcome {
        Ok(result) => result,
        Err(_) => {
            if let Some(client) = slot.take() {
                let _ = deadpool_postgres::Object::take(client);
            }
            Err(StoreError::Backend(format!(
                "PostgreSQL did not answer within {} s (server frozen or unreachable); the connection was closed",
                STATEMENT_TIMEOUT.as_secs()
            )))
        }
    }
}

fn sqlite_param(p: &P) -> rusqlite::types::Value {
    match p {
        P::Text(Some(s)) => rusqlite::types::Value::Text(s.clone()),
        P::Int(Some(i)) => rusqlite::types::Value::Integer(*i),
        P::Text(None) | P::Int(None) => rusqlite::types::Value::Null,
    }
}

fn pg_param(p: &P) -> Box<dyn ToSql + Sync + Send> {
    match p {
        P::Text(v) => Box::new(v.clone()),
        P::Int(v) => Box::new(*v),
    }
}

/// `?1` → `$1`: the statements are written once, in SQLite's numbered-placeholder form.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn sqlite_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => StoreError::DiskFull(format!(
            "SQLite: the disk holding the database is full ({e}): free space in data_dir's filesystem; once there is, writes work again (a running gateway needs no restart)"
        )),
        Some(rusqlite::ErrorCode::ReadOnly) => StoreError::ReadOnly(format!(
            "SQLite: the database cannot be written ({e}): make data_dir and postern.db* writable by the gateway's user (and the filesystem read-write); once it is, writes work again (a running gateway needs no restart)"
        )),
        _ => StoreError::Backend(format!("SQLite: {e}")),
    }
}

fn pg_error(e: tokio_postgres::Error) -> StoreError {
    use tokio_postgres::error::SqlState;
    match e.as_db_error() {
        Some(db) if *db.code() == SqlState::DISK_FULL => StoreError::DiskFull(format!(
            "PostgreSQL: the database server's disk is full ({}): free space on it; once there is, writes work again (the gateway needs no restart)",
            db.message()
        )),
        // A standby (the connection string reached a replica, e.g. after a failover) or a
        // database set read-only.
        Some(db) if *db.code() == SqlState::READ_ONLY_SQL_TRANSACTION => {
            StoreError::ReadOnly(format!(
                "PostgreSQL: the database refuses writes ({}): point databroker_storage_connection_string at the primary (list every host and add target_session_attrs=read-write to follow a failover); once it accepts writes, writes work again (a running gateway needs no restart)",
                db.message()
            ))
        }
        Some(db) => StoreError::Backend(format!(
            "PostgreSQL: {}: {}",
            db.code().code(),
            db.message()
        )),
        None => StoreError::Backend(format!("PostgreSQL: {e}")),
    }
}

fn describe_pool_error(e: &deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => {
                let mut message = e.to_string();
                let mut source = std::error::Error::source(e);
                while let Some(s) = source {
                    message.push_str(&format!(": {s}"));
                    source = s.source();
                }
                message
            }
        },
        deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Create) => {
            "no connection accepted within 10 s (server frozen or unreachable)".into()
        }
        deadpool_postgres::PoolError::Timeout(_) => {
            "no connection free within 10 s (all busy, or the server frozen or unreachable)".into()
        }
        other => other.to_string(),
    }
}

/// A connection string as messages and logs show it: user, hosts, ports, database and the
/// required session kind, never a password (whatever form or place the password was given in:
/// URL user info, a `password=` query parameter or key=value pair, quoted or not).
pub(crate) fn redact_url(url: &str) -> String {
    let Ok(config) = url.parse::<tokio_postgres::Config>() else {
        return "(a connection string that does not parse; not shown, it may hold a password)"
            .into();
    };
    let ports = config.get_ports();
    let hosts = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                tokio_postgres::config::Host::Tcp(name) if name.contains(':') => {
                    format!("[{name}]")
                }
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let dbname = config.get_dbname().unwrap_or_default();
    let session = match config.get_target_session_attrs() {
        tokio_postgres::config::TargetSessionAttrs::ReadWrite => "?target_session_attrs=read-write",
        _ => "",
    };
    format!("postgres://{user}{hosts}/{dbname}{session}")
}

/// Creates the database file, if it does not exist yet, readable by the gateway's user only
/// (0600): it holds sessions and sealed secrets. SQLite gives its `-wal` and `-shm` files the
/// database file's permissions. An existing file keeps the permissions an administrator gave it.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Where a SQLite store lives under a data directory.
pub(crate) fn sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("postern.db")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write the database refuses names the cause and what to do, and tells users why.
    #[test]
    fn a_read_only_database_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ro.db");
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let ro = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let error = sqlite_error(ro.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert!(matches!(error, StoreError::ReadOnly(_)), "{error}");
        assert!(error.to_string().contains("data_dir"), "{error}");
        assert_eq!(error.public_reason(), "the gateway's database is read-only");
    }

    #[test]
    fn placeholders_are_rewritten_for_postgres() {
        assert_eq!(pg_sql("SELECT ?1, '?', ?12"), "SELECT $1, '?', $12");
    }

    #[test]
    fn passwords_never_appear_in_messages() {
        let r = redact_url("postgres://postern:hunter2@db.internal:5432/postern");
        assert!(!r.contains("hunter2") && r.contains("db.internal"), "{r}");
        let r = redact_url("host=db user=postern password=hunter2 dbname=p");
        assert!(!r.contains("hunter2") && r.contains("@db/p"), "{r}");
    }

    /// Every way a password can be written, including the multi-host URL form (which
    /// `url::Url` cannot parse: the password used to be printed whole) and a quoted key=value
    /// password with spaces.
    #[test]
    fn no_form_of_connection_string_shows_its_password() {
        let cases = [
            (
                "postgres://postern:hunter2@db1:5432,db2:5433/postern?target_session_attrs=read-write",
                "postgres://postern@db1:5432,db2:5433/postern?target_session_attrs=read-write",
            ),
            (
                "postgresql://postern@db1,db2/postern?password=hunter2",
                "postgres://postern@db1:5432,db2:5432/postern",
            ),
            (
                "host=db1,db2 port=5432,5433 user=postern password='hunter2 with spaces' dbname=postern target_session_attrs=read-write",
                "postgres://postern@db1:5432,db2:5433/postern?target_session_attrs=read-write",
            ),
            (
                "host = db1 password = hunter2 user = postern",
                "postgres://postern@db1/",
            ),
            (
                "postgres://postern:hunter2@[::1]:5432/postern",
                "postgres://postern@[::1]:5432/postern",
            ),
            (
                "postgres://postern:hunter2@db1:notaport/postern",
                "(a connection string that does not parse; not shown, it may hold a password)",
            ),
        ];
        for (given, shown) in cases {
            assert_eq!(redact_url(given), shown, "{given}");
        }
    }

    /// docker-compose.yaml's connection string: the key=value form, where a base64 password
    /// (with `/`, `+`, `=`) needs no percent-encoding.
    #[test]
    fn a_password_with_slash_and_plus_survives_the_key_value_form() {
        let password = "p/ss+w0rd==";
        let url =
            format!("host=postgres port=5432 user=postern dbname=postern password='{password}'");
        let config: tokio_postgres::Config = url.parse().unwrap();
        assert_eq!(config.get_password(), Some(password.as_bytes()));
        assert_eq!(config.get_dbname(), Some("postern"));
        let r = redact_url(&url);
        assert!(!r.contains("p/ss"), "{r}");
    }
}
