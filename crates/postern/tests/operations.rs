//! The `postern` binary as an operator runs it: `check-config` refuses what `serve` would,
//! reload puts users and settings in force (or says what needs a restart), logs are plain text
//! when stderr is not a terminal.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn postern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_postern"))
}

/// `postern hash-password` for `password`.
fn hash(password: &str) -> String {
    use std::io::Write as _;
    let mut child = postern()
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn users_yaml(users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(email, hash)| format!("- {{email: {email}, password_hash: '{hash}'}}\n"))
        .collect()
}

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

/// A running `postern serve`, its stderr collected.
struct Serve {
    child: Child,
    log: Arc<Mutex<String>>,
    dir: tempfile::TempDir,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(dir: tempfile::TempDir) -> Self {
        let mut child = postern()
            .args(["serve", "--config"])
            .arg(dir.path().join("postern.yaml"))
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self { child, log, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log has `text`.
    fn wait_for(&self, text: &str) -> String {
        let started = Instant::now();
        loop {
            let log = self.log();
            if log.contains(text) {
                return log;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no {text:?} in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn browser() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in through the form; the status of the form post (303: signed in).
async fn sign_in(base: &str, email: &str, password: &str) -> u16 {
    let browser = browser();
    let page = browser
        .get(format!("{base}/.pomerium/sign_in"))
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
    browser
        .post(format!("{base}/.pomerium/sign_in"))
        .header("origin", base)
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-user", "?1")
        .form(&[
            ("email", email),
            ("password", password),
            ("redirect_uri", "/"),
            ("csrf_token", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
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
