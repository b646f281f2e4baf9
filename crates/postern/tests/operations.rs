//! The `postern` binary as an operator runs it: `check-config` refuses what `serve` would,
//! reload puts users and settings in force (or says what needs a restart), logs are plain text
//! when stderr is not a terminal.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Process, browser, free_port, hash, postern, sign_in_with, users_yaml};

/// `check-config` on `yaml` written in `dir`: (success, stdout + stderr).
fn check(dir: &Path, yaml: &str) -> (bool, String) {
    let file = dir.join("postern.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = postern().arg("check-config").arg(&file).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn check_config_refuses_what_serve_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let base = "insecure_server: true\naddress: 127.0.0.1:0\nroutes:\n  - {from: http://localhost, to: http://127.0.0.1:9, allow_public_unauthenticated_access: true}\n";
    let (ok, text) = check(dir.path(), base);
    assert!(ok, "{text}");

    let refused = [
        (
            format!("{base}users_file: missing-users.yaml\n"),
            "missing-users.yaml",
        ),
        (
            base.replace("127.0.0.1:0", "127.0.0.1:99999"),
            "the port \"99999\" is not a number from 0 to 65535",
        ),
        (
            base.replace("127.0.0.1:0", "localhost"),
            "has no port",
        ),
        (format!("{base}metrics_address: ':http'\n"), "metrics_address"),
        (
            format!("{base}signing_key: bm90IGEga2V5\n"),
            "signing_key",
        ),
        (
            base.replace(
                "allow_public_unauthenticated_access: true}",
                "allow_public_unauthenticated_access: true, allowed_users: [ada@example.com]}",
            ),
            "contradicts allow_public_unauthenticated_access",
        ),
        (
            "address: 127.0.0.1:0\ncertificate_file: no-cert.pem\ncertificate_key_file: no-key.pem\nroutes: []\n"
                .to_owned(),
            "no-cert.pem",
        ),
        (
            format!("{base}autocert_trusted_ca_file: no-ca.pem\n"),
            "autocert_trusted_ca_file",
        ),
    ];
    for (yaml, says) in refused {
        let (ok, text) = check(dir.path(), &yaml);
        assert!(
            !ok && text.contains(says),
            "expected {says:?} for\n{yaml}\ngot: {text}"
        );
    }

    std::fs::write(dir.path().join("users.yaml"), "- {email: a@b.c}\n").unwrap();
    let (ok, text) = check(dir.path(), &format!("{base}users_file: users.yaml\n"));
    assert!(!ok && text.contains("password_hash"), "{text}");
    std::fs::write(
        dir.path().join("users.yaml"),
        "- {email: a@b.c, password_hash: plain}\n",
    )
    .unwrap();
    let (ok, text) = check(dir.path(), &format!("{base}users_file: users.yaml\n"));
    assert!(!ok && text.contains("postern hash-password"), "{text}");
}

/// A running `postern serve` (plain logs: no `RUST_LOG`, no `NO_COLOR`) in its own directory.
struct Serve {
    process: Process,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start(dir: tempfile::TempDir) -> Self {
        let mut serve = postern();
        serve
            .args(["serve", "--config"])
            .arg(dir.path().join("postern.yaml"))
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR");
        Self {
            process: Process::spawn(serve),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// Waits until the log has `text`.
    fn wait_for(&self, text: &str) -> String {
        self.process.wait_for(text, Duration::from_secs(20))
    }
}

/// Signs in through the form in a new browser; the status of the form post (303: signed in).
async fn sign_in(base: &str, email: &str, password: &str) -> u16 {
    sign_in_with(&browser(), base, email, password).await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_puts_new_users_in_force_and_names_the_keys_that_need_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let ada = hash("ada-password");
    std::fs::write(
        dir.path().join("users.yaml"),
        users_yaml(&[("ada@example.com", &ada)]),
    )
    .unwrap();
    let config = format!(
        "insecure_server: true\naddress: 127.0.0.1:{port}\nmetrics_address: 127.0.0.1:{metrics}\nusers_file: users.yaml\ndatabroker_storage_type: memory\nroutes:\n  - {{from: http://localhost, to: http://127.0.0.1:9, allowed_users: [ada@example.com, bob@example.com]}}\n"
    );
    std::fs::write(dir.path().join("postern.yaml"), &config).unwrap();
    let serve = Serve::start(dir);
    let started = serve.wait_for("postern gateway listening");
    let base = format!("http://localhost:{port}");

    assert!(
        !started.contains('\u{1b}'),
        "stderr is a pipe: no colour codes\n{started}"
    );
    assert_eq!(sign_in(&base, "ada@example.com", "ada-password").await, 303);
    assert_ne!(sign_in(&base, "bob@example.com", "bob-password").await, 303);

    // A new user in users_file, the configuration untouched: in force within seconds.
    let bob = hash("bob-password");
    std::fs::write(
        serve.path("users.yaml"),
        users_yaml(&[("ada@example.com", &ada), ("bob@example.com", &bob)]),
    )
    .unwrap();
    serve.wait_for("configuration reloaded");
    assert_eq!(sign_in(&base, "bob@example.com", "bob-password").await, 303);

    let scrape = || async {
        reqwest::get(format!("http://127.0.0.1:{metrics}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    assert!(
        before.contains("postern_config_needs_restart{key=\"address\"} 0"),
        "{before}"
    );
    // The identity metrics, scraped: two sign-ins, one failure, the store at work.
    for series in [
        "postern_sign_ins_total{result=\"ok\"} 2",
        "postern_sign_ins_total{result=\"failed\"} 1",
        "postern_mcp_tokens_total{event=\"issued\"} 0",
        "postern_rate_limited_total{limit=\"sign_in\"} 0",
    ] {
        assert!(before.contains(series), "no {series} in\n{before}");
    }
    let store_ops = before
        .lines()
        .find_map(|l| {
            l.strip_prefix("postern_store_operation_duration_seconds_count{op=\"execute\"} ")
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(store_ops.is_some_and(|n| n > 0), "{before}");
    // And the audit file has the failed sign-in, with the email that was typed.
    let audit = std::fs::read_to_string(serve.path("postern-data/audit.jsonl")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"event\":\"sign_in_failed\"")
                && l.contains("\"user\":\"bob@example.com\"")),
        "{audit}"
    );
    // A key that needs a restart: said in the log and the gauge; the rest applies.
    let moved = free_port();
    std::fs::write(
        serve.path("postern.yaml"),
        config
            .replace(
                &format!("127.0.0.1:{port}\n"),
                &format!("127.0.0.1:{moved}\n"),
            )
            .replace("bob@example.com]", "bob@example.com, cy@example.com]"),
    )
    .unwrap();
    let log = serve.wait_for("needs restart: address");
    assert!(
        !log.contains("needs restart: address, "),
        "only address: {log}"
    );
    let after = scrape().await;
    assert!(
        after.contains("postern_config_needs_restart{key=\"address\"} 1")
            && after.contains("postern_config_needs_restart{key=\"data_dir\"} 0"),
        "{after}"
    );
    // Still listening where it was.
    assert_eq!(sign_in(&base, "ada@example.com", "ada-password").await, 303);

    // A broken users_file is refused whole; the users in force stay.
    std::fs::write(serve.path("users.yaml"), "- {email: x}\n").unwrap();
    serve.wait_for("configuration NOT reloaded");
    assert_eq!(sign_in(&base, "bob@example.com", "bob-password").await, 303);
}

/// An upstream for the reload test, on raw TCP: `/slow` answers `ok` once released; `/events` is
/// an SSE stream with a tick every 100 ms that ends 1 s after the release; anything else is `ok`.
struct HeldUpstream {
    port: u16,
    /// How many `/slow` requests arrived (and are being held).
    held: Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HeldUpstream {
    async fn start() -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counter = held.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (counter, mut released) = (counter.clone(), released.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    if line.contains("/slow") {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                    } else if !line.contains("/events") {
                        let _ = socket
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                    } else {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n";
                        if socket.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let mut until: Option<Instant> = None;
                        for n in 0u64.. {
                            if socket
                                .write_all(format!("data: tick {n}\n\n").as_bytes())
                                .await
                                .is_err()
                            {
                                return;
                            }
                            if until.is_none() && *released.borrow() {
                                until = Some(Instant::now() + Duration::from_secs(1));
                            }
                            if until.is_some_and(|u| Instant::now() > u) {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                    let _ = socket.shutdown().await;
                });
            }
        });
        Self {
            port,
            held,
            release,
        }
    }
}

/// What one request of the load saw.
enum Seen {
    /// A `/slow` request: its status and body.
    Answer(u16, String),
    /// An SSE stream: its status, when each tick arrived, and whether it ended cleanly.
    Stream(u16, Vec<Instant>, Result<(), String>),
}

/// Starts 100 held requests and 100 SSE streams through the gateway at `base`; returns once all
/// are in flight (the upstream holds the 100 requests and every stream has had a tick).
async fn load_in_flight(base: &str, upstream: &HeldUpstream) -> Vec<tokio::task::JoinHandle<Seen>> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let before = upstream.held.load(std::sync::atomic::Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (held, url) = (client.clone(), format!("{base}/up/slow"));
        tasks.push(tokio::spawn(async move {
            match held.get(url).send().await {
                Ok(r) => {
                    let status = r.status().as_u16();
                    Seen::Answer(status, r.text().await.unwrap_or_else(|e| e.to_string()))
                }
                Err(e) => Seen::Answer(0, e.to_string()),
            }
        }));
        let (streaming, url, started) =
            (client.clone(), format!("{base}/up/events"), started.clone());
        tasks.push(tokio::spawn(async move {
            let mut response = match streaming
                .get(url)
                .header("accept", "text/event-stream")
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => return Seen::Stream(0, Vec::new(), Err(e.to_string())),
            };
            let status = response.status().as_u16();
            let mut ticks = Vec::new();
            let end = loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        let n = String::from_utf8_lossy(&chunk)
                            .matches("data: tick")
                            .count();
                        if ticks.is_empty() && n > 0 {
                            started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        ticks.extend(std::iter::repeat_n(Instant::now(), n));
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.to_string()),
                }
            };
            Seen::Stream(status, ticks, end)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while upstream.held.load(std::sync::atomic::Ordering::SeqCst) < before + 100
        || started.load(std::sync::atomic::Ordering::SeqCst) < 100
    {
        assert!(
            Instant::now() < deadline,
            "not in flight after 30 s: {} requests held, {} streams ticking",
            upstream.held.load(std::sync::atomic::Ordering::SeqCst) - before,
            started.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks
}

/// Every request of the load answered `ok` and every stream ticked after `reloaded` and ended
/// cleanly.
async fn all_served(tasks: Vec<tokio::task::JoinHandle<Seen>>, reloaded: Instant) {
    let (mut answers, mut streams) = (0, 0);
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a request of the load still open 30 s after the release")
            .unwrap()
        {
            Seen::Answer(status, body) => {
                assert_eq!(
                    (status, body.as_str()),
                    (200, "ok"),
                    "a held request failed"
                );
                answers += 1;
            }
            Seen::Stream(status, ticks, end) => {
                assert_eq!(status, 200);
                assert_eq!(end, Ok(()), "a stream broke");
                assert!(
                    ticks.iter().any(|t| *t > reloaded),
                    "a stream had no tick after the reload ({} ticks)",
                    ticks.len()
                );
                streams += 1;
            }
        }
    }
    assert_eq!((answers, streams), (100, 100));
}

/// A reload with 100 requests and 100 SSE streams in flight: none fails, the streams keep
/// flowing, the new configuration is in force for new requests; a broken configuration under
/// the same load is refused with a log line that names the file and the error, and the one in
/// force keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_under_load_drops_no_request_or_stream_and_a_broken_one_changes_nothing() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let upstream = HeldUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let route = |prefix: &str| {
        format!(
            "  - {{from: http://localhost, prefix: /{prefix}, to: 'http://127.0.0.1:{}', allow_public_unauthenticated_access: true}}\n",
            upstream.port
        )
    };
    let config = format!(
        "insecure_server: true\naddress: 127.0.0.1:{port}\ndatabroker_storage_type: memory\nroutes:\n{}",
        route("up")
    );
    std::fs::write(dir.path().join("postern.yaml"), &config).unwrap();
    let serve = Serve::start(dir);
    serve.wait_for("postern gateway listening");
    let base = format!("http://localhost:{port}");
    let status = |path: &'static str| {
        let url = format!("{base}{path}");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/new/ping").await, 404, "no /new route yet");
    let reloads = |log: &str| log.matches("configuration reloaded").count();

    // A new route by the file watcher, then SIGHUP, with the load in flight.
    let tasks = load_in_flight(&base, &upstream).await;
    let config = format!("{config}{}", route("new"));
    std::fs::write(serve.path("postern.yaml"), &config).unwrap();
    serve.wait_for("configuration reloaded");
    let hangup = Command::new("kill")
        .args(["-HUP", &serve.process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    let started = Instant::now();
    while reloads(&serve.log()) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "SIGHUP did not reload:\n{}",
            serve.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reloaded = Instant::now();
    assert_eq!(status("/new/ping").await, 200, "the new route is in force");
    // The streams tick on after the reload: then the held requests are answered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    upstream.release.send_replace(true);
    all_served(tasks, reloaded).await;

    // A broken file under the same load: refused, the configuration in force keeps serving.
    upstream.release.send_replace(false);
    let tasks = load_in_flight(&base, &upstream).await;
    std::fs::write(
        serve.path("postern.yaml"),
        format!("{config}  - {{from: http://localhost, to: 'not a url'}}\n"),
    )
    .unwrap();
    let log = serve.wait_for("configuration NOT reloaded");
    let refusal = log
        .lines()
        .find(|l| l.contains("configuration NOT reloaded"))
        .unwrap();
    assert!(
        refusal.contains("ERROR")
            && refusal.contains("postern.yaml")
            && refusal.contains("routes[2].to")
            && refusal.contains("the previous one stays in force"),
        "the refusal says which file, where and that the old configuration stays: {refusal}"
    );
    let refused = Instant::now();
    assert_eq!(status("/new/ping").await, 200, "the routes in force stay");
    tokio::time::sleep(Duration::from_millis(500)).await;
    upstream.release.send_replace(true);
    all_served(tasks, refused).await;
    assert_eq!(reloads(&serve.log()), 2);
    assert!(!serve.log().contains("panicked"), "{}", serve.log());
}
