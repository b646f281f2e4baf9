//! The SQLite store's disk fills up, or its filesystem turns read-only, while the gateway
//! serves: paths that must write answer 503 with `Retry-After` and a message that names the
//! cause, the log says what the operator must do, calls with a valid TE keep working, the
//! database is intact afterwards (`PRAGMA integrity_check`), and everything works again when
//! space returns (or the filesystem is writable again) without a restart.
//!
//! The data directory is a tmpfs of 1 MiB mounted for the test (root in CI). Outside CI a
//! refused mount skips the test loudly; in CI it fails.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{
    Replica, Storage, TokenOutcome, Upstream, authorize, browser, ping, redeem, refresh, register,
    sign_in,
};

/// A tmpfs mounted on a temporary directory; unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Self { dir }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(error) => error.to_string(),
                };
                assert!(
                    std::env::var_os("CI").is_none(),
                    "cannot mount a tmpfs in CI (the tests run as root): {why}"
                );
                eprintln!(
                    "\n*** SKIPPED: disk fault test: cannot mount a tmpfs (run as root): {why} ***\n"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `chattr +i` (or `-i`) on everything in `dir` and `dir` itself: nothing there can be
    /// written, created or deleted, even by root and through files already open (a remount
    /// read-only is refused while the gateway holds the database open for writing).
    fn immutable(dir: &Path, on: bool) {
        let flag = if on { "+i" } else { "-i" };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.push(dir.to_owned());
        let out = Command::new("chattr")
            .arg(flag)
            .args(&paths)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "chattr {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("chattr")
            .arg("-R")
            .arg("-i")
            .arg(self.dir.path())
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem of `dir` with a file; its path.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    let _ = file.sync_all();
    path
}

fn integrity_check(db: &Path) -> String {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap()
}

/// A sign-in attempt in a new browser: the status, `Retry-After` and the page.
async fn try_sign_in(base: &str) -> (u16, Option<String>, String) {
    let b = browser();
    let page = b
        .get(format!("{base}/.pomerium/sign_in"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no csrf_token in {page}"))
        .to_owned();
    let response = support::clicked(b.post(format!("{base}/.pomerium/sign_in")), base)
        .form(&[
            ("email", "ada@example.com"),
            ("password", support::PASSWORD),
            ("redirect_uri", "/.pomerium/"),
            ("csrf_token", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, response.text().await.unwrap())
}

/// A refresh grant's status, `Retry-After` and body.
async fn try_refresh(base: &str, client: &str, rt: &str) -> (u16, Option<String>, String) {
    let response = reqwest::Client::new()
        .post(format!("{base}/.pomerium/mcp/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt),
            ("client_id", client),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, response.text().await.unwrap())
}

/// Polls `check` until it is true, for up to 20 s.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not within 20 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `tools/call` of `tool` through the gateway with `te`: the status.
async fn call_tool(base: &str, te: &str, tool: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/mcp"))
        .bearer_auth(te)
        .header("accept", "application/json, text/event-stream")
        .json(
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {}}}),
        )
        .timeout(Duration::from_secs(90))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// The disk fills up while the gateway serves, then space returns.
async fn disk_full(names: &[&str]) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        return;
    };
    let data = tmpfs.path().join("data");
    let upstream = Upstream::default().serve(Duration::ZERO).await;
    let gateway = Replica::new(
        &Storage::Sqlite(data.clone()),
        &format!("  - {{from: http://localhost, prefix: /mcp, to: '{upstream}/open', allow_any_authenticated_user: true, mcp: {{}}}}\n"),
    )
    .await;
    let base = gateway.base();
    let b = browser();
    assert_eq!(sign_in(&b, &base).await, 303);
    let client = register(&base).await;
    let code = authorize(&b, &base, &client, &format!("{base}/mcp")).await;
    let TokenOutcome::Tokens {
        access: te,
        refresh: mut rt,
    } = redeem(&base, &client, &code).await
    else {
        panic!("tokens");
    };

    let filler = fill(tmpfs.path());

    // A sign-in must write its session: 503, when to retry, and why.
    let (status, retry, page) = try_sign_in(&base).await;
    assert_eq!(status, 503, "sign-in: {page}");
    assert!(retry.is_some(), "sign-in: Retry-After");
    assert!(
        names.iter().any(|n| page.contains(n)),
        "the page names the cause: {page}"
    );
    // A refresh grant must write: 503 temporarily_unavailable with Retry-After, and the
    // client's refresh token still works afterwards.
    let (status, retry, body) = try_refresh(&base, &client, &rt).await;
    assert_eq!(status, 503, "refresh: {body}");
    assert!(retry.is_some(), "refresh: Retry-After");
    assert!(body.contains("temporarily_unavailable"), "{body}");
    assert!(
        names.iter().any(|n| body.contains(n)),
        "the answer names the cause: {body}"
    );
    // A call with a valid TE reads nothing from the store: still served, tool calls too,
    // though their audit records cannot be written (the audit file is on the full disk).
    for _ in 0..20 {
        let (status, body) = ping(&base, "/mcp", &te).await;
        assert_eq!(status, 200, "TE call during the fault: {body}");
    }
    for i in 0..40 {
        let status = call_tool(&base, &te, &format!("during_the_fault_{i}")).await;
        assert_eq!(status, 200, "tool call during the fault");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The signed-in browser's pages still open (reads).
    let portal = b
        .get(format!("{base}/.pomerium/apps"))
        .send()
        .await
        .unwrap();
    assert_eq!(portal.status(), 200, "reads keep working");
    // The operator is told.
    let log = gateway.log();
    for line in log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
    {
        eprintln!("gateway log during the fault: {line}");
    }
    assert!(
        names.iter().any(|n| log.contains(n)),
        "the log names the cause:\n{log}"
    );
    // The audit file's fault is reported, not once per batch of records (every 5 ms).
    let audit_errors = log.matches("cannot write the audit log").count();
    assert!(
        (1..=3).contains(&audit_errors),
        "{audit_errors} audit errors logged:\n{log}"
    );

    // Space returns: everything works again, without a restart.
    std::fs::remove_file(filler).unwrap();
    eventually("sign-in after the fault", || async {
        try_sign_in(&base).await.0 == 303
    })
    .await;
    rt = match refresh(&base, &client, &rt).await {
        TokenOutcome::Tokens { refresh, .. } => refresh,
        other => panic!("the refresh token survived the fault: {other:?}"),
    };
    assert!(matches!(
        refresh(&base, &client, &rt).await,
        TokenOutcome::Tokens { .. }
    ));
    // Audit records are written again, each whole line one JSON object (a record the full
    // disk cut off stays alone on its line).
    assert_eq!(call_tool(&base, &te, "after_the_fault").await, 200);
    let audit = data.join("audit.jsonl");
    eventually("the audit record of a call after the fault", || async {
        std::fs::read_to_string(&audit).is_ok_and(|t| t.contains("after_the_fault"))
    })
    .await;
    let text = std::fs::read_to_string(&audit).unwrap();
    let after = text
        .lines()
        .find(|l| l.contains("after_the_fault"))
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(after).unwrap();
    assert_eq!(record["tool"], "after_the_fault");
    eventually("the log says the audit log is written again", || async {
        gateway.log().contains("the audit log is written again")
    })
    .await;

    drop(gateway);
    assert_eq!(integrity_check(&data.join("postern.db")), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_answers_503_with_the_cause_and_recovers_when_space_returns() {
    disk_full(&["disk is full"]).await;
}

/// A database that cannot be written (its directory and files immutable: even root cannot
/// write them) is refused at start with what to fix, and nothing is lost once it is writable.
/// (While the gateway runs, Linux refuses a read-only remount of a filesystem with files open
/// for writing, and permissions are checked only when a file is opened; the gateway's errors
/// for a database that turns read-only under it are the ones of `StoreError::ReadOnly`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_is_refused_at_start_with_what_to_fix() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        return;
    };
    let data = tmpfs.path().join("data");
    let upstream = Upstream::default().serve(Duration::ZERO).await;
    let mut gateway = Replica::new(
        &Storage::Sqlite(data.clone()),
        &format!("  - {{from: http://localhost, prefix: /mcp, to: '{upstream}/open', allow_any_authenticated_user: true, mcp: {{}}}}\n"),
    )
    .await;
    let base = gateway.base();
    let b = browser();
    assert_eq!(sign_in(&b, &base).await, 303);
    let client = register(&base).await;
    let code = authorize(&b, &base, &client, &format!("{base}/mcp")).await;
    let TokenOutcome::Tokens { refresh: rt, .. } = redeem(&base, &client, &code).await else {
        panic!("tokens");
    };
    gateway.kill9();

    Tmpfs::immutable(&data, true);
    let out = support::postern()
        .args(["serve", "--config"])
        .arg(gateway.path("postern.yaml"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        (stderr.contains("must be able to write the database")
            || stderr.contains("the database cannot be written"))
            && stderr.contains("data_dir")
            && !stderr.contains("panicked"),
        "{stderr}"
    );

    Tmpfs::immutable(&data, false);
    gateway.start().await;
    assert!(
        matches!(
            refresh(&base, &client, &rt).await,
            TokenOutcome::Tokens { .. }
        ),
        "the grant survived"
    );
    drop(gateway);
    assert_eq!(integrity_check(&data.join("postern.db")), "ok");
}
