//! Opens a fresh store per test on each backend. PostgreSQL comes from
//! `POSTERN_TEST_POSTGRES_URL` (`.ci/run` starts a server and sets it); each test gets its own
//! schema. Without it the PostgreSQL tests say so loudly and pass as skipped, except in CI
//! (`CI` set), where they fail.

use std::path::PathBuf;

use postern_store::{Backend, Store};

pub const SECRET: &[u8] = b"test-shared-secret-0123456789abcdef";

/// A store under test, and how to open another instance on the same database.
pub struct TestStore {
    pub store: Store,
    pub backend: Backend,
    /// Keeps the SQLite directory alive.
    pub _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// Another, independent store instance on the same database (a second replica).
    pub async fn another(&self) -> Store {
        Store::open(&self.backend, SECRET, &[])
            .await
            .expect("second instance")
    }
}

pub async fn sqlite() -> Option<TestStore> {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::Sqlite(dir.path().join("postern.db"));
    let store = Store::open(&backend, SECRET, &[])
        .await
        .expect("open SQLite store");
    Some(TestStore {
        store,
        backend,
        _dir: Some(dir),
    })
}

pub fn postgres_url() -> Option<String> {
    match std::env::var("POSTERN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "POSTERN_TEST_POSTGRES_URL is not set in CI: .ci/run must start PostgreSQL and set it"
            )
        }
        _ => {
            eprintln!(
                "\n*** SKIPPED: PostgreSQL store test: POSTERN_TEST_POSTGRES_URL is not set (bash .ci/run starts PostgreSQL and sets it) ***\n"
            );
            None
        }
    }
}

pub async fn postgres() -> Option<TestStore> {
    let url = postgres_url()?;
    let schema = fresh_schema(&url).await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let backend = Backend::Postgres(format!("{url}{sep}options=-c%20search_path%3D{schema}"));
    let store = Store::open(&backend, SECRET, &[])
        .await
        .expect("open PostgreSQL store");
    Some(TestStore {
        store,
        backend,
        _dir: None,
    })
}

pub async fn memory() -> Option<TestStore> {
    let backend = Backend::Memory;
    let store = Store::open(&backend, SECRET, &[])
        .await
        .expect("open memory store");
    Some(TestStore {
        store,
        backend,
        _dir: None,
    })
}

/// Creates an empty schema for one test.
pub async fn fresh_schema(url: &str) -> String {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to test PostgreSQL");
    tokio::spawn(connection);
    let schema = format!("t_{}", std::process::id()) + &format!("_{}", rand_suffix());
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    schema
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}_{nanos}", N.fetch_add(1, Ordering::SeqCst))
}

/// Everything stored, as text, to check that no secret appears in it.
pub async fn dump(test: &TestStore) -> String {
    const TABLES: [&str; 11] = [
        "sessions",
        "oauth_clients",
        "authorization_codes",
        "token_families",
        "refresh_tokens",
        "revocations",
        "upstream_tokens",
        "pending_authorizations",
        "consents",
        "keys",
        "idp_tokens",
    ];
    let mut out = String::new();
    match &test.backend {
        Backend::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path).unwrap();
            for table in TABLES {
                let mut stmt = conn.prepare(&format!("SELECT * FROM {table}")).unwrap();
                let n = stmt.column_count();
                let mut rows = stmt.query([]).unwrap();
                while let Some(row) = rows.next().unwrap() {
                    for i in 0..n {
                        out.push_str(&format!("{:?} ", row.get_ref(i).unwrap()));
                    }
                }
            }
            // The WAL and the main file too, byte for byte.
            for file in [
                path.clone(),
                PathBuf::from(format!("{}-wal", path.display())),
            ] {
                if let Ok(bytes) = std::fs::read(file) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
        }
        Backend::Postgres(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            for table in TABLES {
                for row in client
                    .query(&format!("SELECT row_to_json(t)::text FROM {table} t"), &[])
                    .await
                    .unwrap()
                {
                    out.push_str(row.get::<_, &str>(0));
                }
            }
        }
        Backend::Memory => {}
    }
    out
}
