use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use super::*;

const LIMITS: Limits = Limits {
    max_rows: 1000,
    max_bytes: 256 * 1024,
    timeout: Duration::from_millis(500),
};

fn demo_db(dir: &Path) -> PathBuf {
    let path = dir.join("demo.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, score REAL, data BLOB, doc TEXT);
         INSERT INTO t VALUES (1, 'ada', 9.5, x'00010203', '{\"a\":1}');
         INSERT INTO t VALUES (2, 'grace', NULL, NULL, NULL);
         CREATE VIEW v AS SELECT name FROM t;",
    )
    .unwrap();
    path
}

fn count(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn reads_keep_json_types_and_summarise_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let out = read_query(
        &db,
        "SELECT id, name, score, data, doc FROM t ORDER BY id",
        LIMITS,
    )
    .unwrap();
    assert_eq!(
        out["columns"],
        json!(["id", "name", "score", "data", "doc"])
    );
    assert_eq!(
        out["rows"][0],
        json!([1, "ada", 9.5, "<BLOB, 4 bytes>", "{\"a\":1}"])
    );
    assert_eq!(out["rows"][1], json!([2, "grace", null, null, null]));
    assert_eq!(out["truncated"], json!(false));
    // Statements that read but don't start with SELECT work too.
    read_query(&db, "WITH x AS (SELECT 1 AS a) SELECT a FROM x", LIMITS).unwrap();
    read_query(&db, "/* hi */ VALUES (1), (2)", LIMITS).unwrap();
    read_query(&db, "PRAGMA table_info(t)", LIMITS).unwrap();
}

/// Every attack from the reference's list, refused with a clear error and the database unchanged.
#[test]
fn read_only_attacks_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let attached = dir.path().join("other.db");
    let attacks: Vec<(String, &str)> = vec![
        ("SELECT 1; DELETE FROM t".into(), "only one SQL statement"),
        ("SELECT 1; DROP TABLE t".into(), "only one SQL statement"),
        (format!("ATTACH '{}' AS x", attached.display()), "ATTACH"),
        (
            "PRAGMA query_only=OFF".into(),
            "query_only cannot be changed",
        ),
        ("PRAGMA writable_schema=ON".into(), "cannot be changed"),
        (
            "SELECT load_extension('/tmp/evil.so')".into(),
            "load_extension() is disabled",
        ),
        ("WITH x AS (SELECT 1) DELETE FROM t".into(), "read-only"),
        ("DELETE FROM t".into(), "read-only"),
        ("INSERT INTO t(name) VALUES ('x')".into(), "read-only"),
        ("CREATE TEMP TABLE z(a)".into(), "read-only"),
        ("BEGIN".into(), "transaction statements are disabled"),
        (format!("VACUUM INTO '{}'", attached.display()), "read-only"),
        ("   ".into(), "empty"),
    ];
    for (sql, expected) in attacks {
        let err = read_query(&db, &sql, LIMITS).expect_err(&sql);
        assert!(err.to_string().contains(expected), "{sql}: {err}");
        assert_eq!(count(&db), 2, "{sql} changed the database");
    }
    assert!(
        !attached.exists(),
        "no file may be created by ATTACH or VACUUM INTO"
    );
}

#[test]
fn runaway_queries_hit_the_time_limit() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let sql =
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c";
    let started = std::time::Instant::now();
    let err = read_query(&db, sql, LIMITS).unwrap_err();
    assert!(matches!(err, QueryError::Timeout(500)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = read_query(&db, "SELECT randomblob(2000000000)", LIMITS).unwrap_err();
    assert!(err.to_string().contains("too big"), "{err}");
}

#[test]
fn row_and_byte_caps_are_stated_and_never_split_characters() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let few = Limits {
        max_rows: 1,
        ..LIMITS
    };
    let out = read_query(&db, "SELECT name FROM t", few).unwrap();
    assert_eq!(out["row_count"], json!(1));
    assert_eq!(out["truncated"], json!(true));
    assert!(out["truncation"].as_str().unwrap().contains("first 1 rows"));

    let small = Limits {
        max_bytes: 400,
        ..LIMITS
    };
    // 300 three-byte characters: the cut must land on a character boundary.
    let out = read_query(
        &db,
        "SELECT replace(hex(zeroblob(300)), '00', 'é€') AS s",
        small,
    )
    .unwrap();
    let s = out["rows"][0][0].as_str().unwrap();
    assert!(s.ends_with('…') && s.len() < 400, "{}", s.len());
    assert_eq!(out["truncated"], json!(true));

    let out = read_query(
        &db,
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 500) SELECT x, 'padding padding' FROM c",
        small,
    )
    .unwrap();
    assert!(out["row_count"].as_u64().unwrap() < 500);
    assert!(
        out["truncation"]
            .as_str()
            .unwrap()
            .contains("exceeds 400 bytes")
    );
}

#[test]
fn write_mode_writes_but_still_refuses_attach_and_pragmas() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    let out = write_query(
        &db,
        "INSERT INTO t(name) VALUES ('linus') RETURNING id",
        LIMITS,
    )
    .unwrap();
    assert_eq!(out["rows_affected"], json!(1));
    assert_eq!(out["rows"][0], json!([3]));
    assert_eq!(count(&db), 3);
    let err = write_query(&db, "SELECT * FROM t", LIMITS).unwrap_err();
    assert!(matches!(err, QueryError::NotAWrite), "{err}");
    let err = write_query(&db, "ATTACH 'x.db' AS x", LIMITS).unwrap_err();
    assert!(err.to_string().contains("ATTACH"), "{err}");
    let err = write_query(&db, "PRAGMA journal_mode=DELETE", LIMITS).unwrap_err();
    assert!(err.to_string().contains("cannot be changed"), "{err}");
    let err = write_query(&db, "DELETE FROM t; DELETE FROM t", LIMITS).unwrap_err();
    assert!(matches!(err, QueryError::MultipleStatements), "{err}");
    assert_eq!(count(&db), 3);
}

#[test]
fn introspection_uses_bound_names() {
    let dir = tempfile::tempdir().unwrap();
    let db = demo_db(dir.path());
    assert_eq!(
        list_tables(&db).unwrap(),
        json!({"tables": [{"name": "t", "type": "table"}, {"name": "v", "type": "view"}]})
    );
    let out = describe_table(&db, "t").unwrap();
    assert_eq!(
        out["columns"][0],
        json!({"name": "id", "type": "INTEGER", "not_null": false, "default": null, "primary_key": true})
    );
    assert_eq!(out["columns"][1]["not_null"], json!(true));
    let err = describe_table(&db, "t'); DROP TABLE t; --").unwrap_err();
    assert!(matches!(err, QueryError::NoSuchTable(_)), "{err}");
    assert_eq!(count(&db), 2);
}

#[test]
fn a_missing_or_corrupt_file_is_a_clear_error_and_is_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    let err = check(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.db"), "{err}");
    assert!(!missing.exists());
    let junk = dir.path().join("junk.db");
    std::fs::write(
        &junk,
        b"this is not a database, just some text padding it out ok",
    )
    .unwrap();
    let err = check(&junk).unwrap_err();
    assert!(err.to_string().contains("not a database"), "{err}");
}
