//! `postern up` as a user runs it: the real binary in a fresh data directory on `--port 0`,
//! used at `http://127.0.0.1:PORT` (not only `localhost`) by a browser and an MCP client.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use support::{browser_with_timeout, clicked, free_port, hidden_fields, navigate, postern};

/// A running `postern up`: its banner and port; killed when dropped.
struct Up {
    child: Child,
    banner: String,
    port: u16,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `postern up --port 0` in `dir` and reads its banner up to "Stop with Ctrl-C".
fn up(dir: &Path) -> Up {
    let mut child = postern()
        .args(["up", "--port", "0", "--data-dir"])
        .arg(dir)
        .env("RUST_LOG", "warn")
        .env_remove("NOTION_CLIENT_ID")
        .env_remove("NOTION_CLIENT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("Stop with Ctrl-C") {
            break;
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let port = banner
        .lines()
        .find_map(|l| l.strip_prefix("Postern is running on http://localhost:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no port in the banner:\n{banner}"));
    assert_ne!(port, 0, "--port 0 prints the port it got");
    Up {
        child,
        banner,
        port,
    }
}

/// A browser whose requests give up after 20 s.
fn browser() -> reqwest::Client {
    browser_with_timeout(Duration::from_secs(20))
}

/// Signs `email` in with `password` (a failure unless signed in); the sign-in page.
async fn sign_in(browser: &reqwest::Client, base: &str, email: &str, password: &str) -> String {
    let (status, page) = support::sign_in_with(browser, base, email, password).await;
    assert_eq!(status, 303, "sign-in at {base}");
    page
}

/// An MCP JSON-RPC call; the result (from JSON or the one SSE event).
async fn mcp(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    session: Option<&str>,
    body: Value,
) -> (Option<String>, Value) {
    let mut request = client
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {text}");
    if text.is_empty() {
        return (session, Value::Null);
    }
    let json = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .unwrap_or(&text)
        .trim()
        .to_owned();
    (session, serde_json::from_str(&json).unwrap())
}

/// The generated user's email and password.
fn credentials(dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(dir.join("credentials.txt")).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    (field("email:"), field("password:"))
}

#[tokio::test]
async fn up_works_at_127_0_0_1_for_the_portal_browsers_and_mcp_clients() {
    let dir = tempfile::tempdir().unwrap();
    let up = up(dir.path());
    let port = up.port;
    let base = format!("http://127.0.0.1:{port}");
    let (email, password) = credentials(dir.path());
    assert!(
        up.banner
            .contains(&format!("password: {password} (shown once")),
        "{}",
        up.banner
    );
    assert!(
        up.banner
            .contains(&format!("http://localhost:{port}/sqlite"))
    );
    let client = browser();

    // A browser opening a server URL, signed out: a page about the URL, not the 401's JSON.
    let page = navigate(client.get(format!("{base}/sqlite")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("This is an MCP server"), "{html}");
    let site = format!("Postern · <span id=\"site\">127.0.0.1:{port}</span>");
    assert!(html.contains(&site), "{html}");
    assert!(html.contains(&format!("{base}/sqlite")), "{html}");
    assert!(html.contains("href=\"/.pomerium/\""), "{html}");
    // ... and MCP clients still get the 401 with the metadata at 127.0.0.1.
    for accept in ["application/json, text/event-stream", "text/event-stream"] {
        let method = if accept.starts_with("application") {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let mut request = client
            .request(method.clone(), format!("{base}/sqlite"))
            .header("accept", accept);
        if method == reqwest::Method::POST {
            request = request.json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}));
        }
        let refused = request.send().await.unwrap();
        assert_eq!(refused.status(), 401, "{accept}");
        let challenge = refused.headers()["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains(&format!(
                "{base}/.well-known/oauth-protected-resource/sqlite"
            )),
            "{challenge}"
        );
    }
    let metadata: Value = client
        .get(format!(
            "{base}/.well-known/oauth-protected-resource/sqlite"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], json!(format!("{base}/sqlite")));

    // The sign-in page names the product and the host, and starts with the generated email.
    let form = sign_in(&client, &base, &email, &password).await;
    assert!(
        form.contains(&format!(
            "Postern · <span id=\"site\">127.0.0.1:{port}</span>"
        )),
        "{form}"
    );
    assert!(form.contains(&format!("value=\"{email}\"")), "{form}");

    // The portal at 127.0.0.1 lists URLs that work from here: this host, with the port.
    let portal = navigate(client.get(format!("{base}/.pomerium/")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        portal.contains(&format!("data-url=\"{base}/sqlite\"")),
        "{portal}"
    );
    assert!(!portal.contains("http://localhost/"), "{portal}");
    assert!(
        portal.contains(&site),
        "every gateway page names the site: {portal}"
    );
    // Signed in, the server URL is still a page (not the upstream's 405).
    let page = navigate(client.get(format!("{base}/whoami")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("This is an MCP server"));

    // An MCP client at 127.0.0.1: register, authorize (PKCE, consent), token, tools/call.
    let redirect_uri = "http://127.0.0.1:1/callback";
    let registered: Value = client
        .post(format!("{base}/.pomerium/mcp/register"))
        .json(&json!({"redirect_uris": [redirect_uri], "token_endpoint_auth_method": "none", "client_name": "up test"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap().to_owned();
    let verifier = "a-code-verifier-of-at-least-forty-three-characters-long";
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    let resource = format!("{base}/sqlite");
    let consent = navigate(client.get(format!("{base}/.pomerium/mcp/authorize")))
        .query(&[
            ("response_type", "code"),
            ("client_id", &client_id),
            ("redirect_uri", redirect_uri),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("resource", &resource),
            ("state", "s"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(consent.status(), 200);
    let consent = consent.text().await.unwrap();
    assert!(consent.contains(&site), "{consent}");
    let mut fields = hidden_fields(&consent);
    fields.push(("decision".into(), "allow".into()));
    let allowed = clicked(browser_post(&client, &base), &base)
        .form(&fields)
        .send()
        .await
        .unwrap();
    let Some(location) = allowed.headers().get("location").cloned() else {
        panic!("{}: {}", allowed.status(), allowed.text().await.unwrap());
    };
    let location = location.to_str().unwrap().to_owned();
    let code = reqwest::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap_or_else(|| panic!("no code in {location}"))
        .1
        .into_owned();
    let token: Value = client
        .post(format!("{base}/.pomerium/mcp/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect_uri),
            ("client_id", &client_id),
            ("code_verifier", verifier),
            ("resource", &resource),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_owned();
    let mcp_client = reqwest::Client::new();
    let (session, init) = mcp(
        &mcp_client,
        &resource,
        &token,
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "up-test", "version": "1"}}}),
    )
    .await;
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    mcp(
        &mcp_client,
        &resource,
        &token,
        session.as_deref(),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    let (_, called) = mcp(
        &mcp_client,
        &resource,
        &token,
        session.as_deref(),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "read_query", "arguments": {"query": "SELECT name FROM customers ORDER BY id LIMIT 1"}}}),
    )
    .await;
    assert!(called.to_string().contains("Ada Lovelace"), "{called}");

    // The container healthcheck: 0 on a 2xx, an error that says why otherwise.
    let check = |url: &str| postern().args(["healthcheck", url]).output().unwrap();
    let healthy = check(&format!("{base}/.pomerium/ping"));
    assert!(healthy.status.success(), "{healthy:?}");
    let missing = check(&format!("{base}/nowhere"));
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("unhealthy, answered 404"),
        "{missing:?}"
    );
    let closed = check("http://127.0.0.1:1/healthz");
    assert!(!closed.status.success());
    assert!(
        String::from_utf8_lossy(&closed.stderr).contains("no answer"),
        "{closed:?}"
    );
    let not_url = check("localhost:9090");
    assert!(!not_url.status.success());
}

fn browser_post(client: &reqwest::Client, base: &str) -> reqwest::RequestBuilder {
    client.post(format!("{base}/.pomerium/mcp/authorize"))
}

#[test]
fn a_busy_port_fails_before_the_banner_and_names_port() {
    let dir = tempfile::tempdir().unwrap();
    let first = up(dir.path());
    let other = tempfile::tempdir().unwrap();
    let second = postern()
        .args(["up", "--port", &first.port.to_string(), "--data-dir"])
        .arg(other.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!second.status.success());
    let stdout = String::from_utf8_lossy(&second.stdout);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!stdout.contains("Postern is running"), "{stdout}");
    assert!(
        !stdout.contains("password"),
        "no password shown for a gateway that never ran: {stdout}"
    );
    assert!(
        stderr.contains("is in use") && stderr.contains("--port"),
        "{stderr}"
    );
    assert!(
        !other.path().join("credentials.txt").exists(),
        "a gateway that never ran made no user whose password nobody saw"
    );
}

#[test]
fn a_rerun_keeps_the_files_the_user_edited() {
    let dir = tempfile::tempdir().unwrap();
    let first = up(dir.path());
    drop(first);
    let users = dir.path().join("users.yaml");
    let config = dir.path().join("postern.yaml");
    let edited_users = format!("{}# my edit\n", std::fs::read_to_string(&users).unwrap());
    let edited_config = std::fs::read_to_string(&config)
        .unwrap()
        .replace("name: Demo database", "name: My edited database");
    assert!(edited_config.contains("My edited database"));
    std::fs::write(&users, &edited_users).unwrap();
    std::fs::write(&config, &edited_config).unwrap();

    let again = up(dir.path());
    assert_eq!(std::fs::read_to_string(&users).unwrap(), edited_users);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), edited_config);
    assert!(again.banner.contains("kept your"), "{}", again.banner);
    assert!(again.banner.contains("password: in "), "{}", again.banner);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ping = rt.block_on(async {
        reqwest::get(format!("http://127.0.0.1:{}/.pomerium/ping", again.port))
            .await
            .unwrap()
            .status()
    });
    assert_eq!(ping, 200);
}

/// Kills a child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `examples/postern.yaml` says how to run it: its `postern servers` and `postern serve` lines,
/// run here as written from the repository root (on free ports instead of 8080 and 8081, and
/// without the metrics port), then signed in as the demo user, whose identity `whoami` reads
/// from the gateway's assertion.
#[tokio::test]
async fn examples_postern_yaml_runs_as_its_comment_says() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let yaml = std::fs::read_to_string(root.join("examples/postern.yaml")).unwrap();
    let command = |ends: &str| {
        yaml.lines()
            .filter_map(|l| l.strip_prefix("#   "))
            .find(|l| l.ends_with(ends))
            .unwrap_or_else(|| panic!("no `{ends}` line in examples/postern.yaml"))
            .to_owned()
    };
    let servers_line = command("postern servers");
    assert_eq!(
        command("--config examples/postern.yaml"),
        "postern serve --config examples/postern.yaml"
    );
    let (gateway_port, servers_port) = (free_port(), free_port());
    let ports = |text: &str| {
        text.replace(":8080", &format!(":{gateway_port}"))
            .replace("=8081", &format!("={servers_port}"))
            .replace(":8081", &format!(":{servers_port}"))
    };
    // The servers, with the environment the line sets.
    let mut servers = postern();
    servers
        .arg("servers")
        .current_dir(&root)
        .env("RUST_LOG", "warn");
    let words: Vec<&str> = servers_line.split_whitespace().collect();
    assert_eq!(words[words.len() - 2..], ["postern", "servers"]);
    for assignment in &words[..words.len() - 2] {
        let (name, value) = assignment.split_once('=').unwrap();
        let value = if value == "8081" {
            servers_port.to_string()
        } else {
            ports(value)
        };
        servers.env(name, value);
    }
    let _servers = Killed(servers.spawn().unwrap());
    // The gateway, on a copy of the file with the ports changed.
    let dir = tempfile::tempdir().unwrap();
    let copy = ports(&yaml)
        .replace("metrics_address: 127.0.0.1:9090\n", "")
        .replace(
            "users_file: users/demo.yaml",
            &format!(
                "users_file: {}",
                root.join("examples/users/demo.yaml").display()
            ),
        );
    assert!(copy.contains(&format!("127.0.0.1:{servers_port}/sqlite")));
    std::fs::write(dir.path().join("postern.yaml"), copy).unwrap();
    let _gateway = Killed(
        postern()
            .args(["serve", "--config"])
            .arg(dir.path().join("postern.yaml"))
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    let base = format!("http://localhost:{gateway_port}");
    let client = browser();
    for _ in 0..100 {
        let up = |port: u16, path: &str| {
            let client = client.clone();
            let url = format!("http://127.0.0.1:{port}{path}");
            async move {
                client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        };
        if up(gateway_port, "/.pomerium/ping").await && up(servers_port, "/healthz").await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sign_in(&client, &base, "demo@example.com", "postern-demo").await;
    // A signed-in browser session reaches the servers through the gateway: `whoami` verified
    // the assertion with the line's JWKS URL and issuers; `sqlite` serves the demo database.
    let call = |path: &str, body: Value| {
        client
            .post(format!("{base}{path}"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body)
            .send()
    };
    let whoami = call(
        "/whoami",
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}),
    )
    .await
    .unwrap();
    let status = whoami.status();
    let text = whoami.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("demo@example.com"), "{text}");
    assert!(!text.contains("isError\":true"), "{text}");
    let sqlite = call(
        "/sqlite",
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "read_query", "arguments": {"query": "SELECT name FROM customers ORDER BY id LIMIT 1"}}}),
    )
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(sqlite.contains("Ada Lovelace"), "{sqlite}");
}
