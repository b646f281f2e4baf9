//! Sign-in, sessions, policy and MCP tool checks through a running gateway, in front of the real
//! reference servers (whoami verifies the gateway's assertion with the gateway's JWKS).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use postern_access::{Access, AccessSettings};
use serde_json::{Value, json};
use support::client;
use tokio_util::sync::CancellationToken;

mod support;

#[path = "integration/attacks.rs"]
mod attacks;

struct World {
    base: String,
    db: std::path::PathBuf,
    audit: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn world() -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    // The gateway listens first, so the servers can be pointed at its JWKS.
    let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = gateway_listener.local_addr().unwrap().port();

    let db = dir.path().join("people.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO people(name) VALUES ('Ada');")
        .unwrap();
    let env: HashMap<String, String> = [
        ("SQLITE_DB_FILE", db.display().to_string()),
        ("SQLITE_READ_WRITE", "true".into()),
        (
            "ASSERTION_JWKS_URL",
            format!("http://localhost:{port}/.well-known/pomerium/jwks.json"),
        ),
        ("ASSERTION_ISSUER", "localhost".into()),
        ("ASSERTION_AUDIENCE", "localhost".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let servers = postern_servers::build(
        &postern_servers::ServersConfig::from_env(&env).unwrap(),
        &stop,
    )
    .unwrap();
    let servers_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = servers_listener.local_addr().unwrap();
    tokio::spawn(postern_servers::serve(
        servers_listener,
        servers.router,
        stop.clone(),
    ));

    let yaml = format!(
        "insecure_server: true
pass_identity_headers: true
routes:
  - from: http://localhost
    prefix: /whoami
    to: http://{up}/whoami
    allow_any_authenticated_user: true
    mcp: {{}}
  - from: http://localhost
    prefix: /sqlite
    to: http://{up}/sqlite
    policy:
      allow:
        and:
          - authenticated_user: true
      deny:
        or:
          - mcp_tool: {{in: [write_query]}}
    mcp: {{server: {{max_request_bytes: 10000000}}}}
  - from: http://localhost
    prefix: /web
    to: http://{up}/healthz
    allowed_domains: [example.com]
"
    );
    let users = LocalUsers::new(vec![
        support::user(
            "ada@example.com",
            "Ada Lovelace",
            &["staff"],
            "correct horse",
        ),
        support::user("mallory@other.test", "Mallory", &[], "mallory pw"),
    ]);
    let audit = dir.path().join("audit.jsonl");
    let settings = AccessSettings {
        pass_identity_headers: true,
        audit_file: Some(audit.clone()),
        ..support::settings()
    };
    let access = Access::new(
        support::memory_store().await,
        users,
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        settings,
    );
    support::serve(gateway_listener, &yaml, access, &stop);
    World {
        base: format!("http://localhost:{port}"),
        db,
        audit,
        _dir: dir,
        stop,
    }
}

/// A fresh sign-in form: the anti-forgery cookie (`name=value`) and the form's field.
async fn sign_in_form(w: &World) -> (String, String) {
    let page = client()
        .get(format!("{}/.pomerium/sign_in", w.base))
        .send()
        .await
        .unwrap();
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("_postern_csrf="))
        .expect("the sign-in page sets the anti-forgery cookie");
    (cookie, support::csrf_field(&page.text().await.unwrap()))
}

/// Signs in through the form, as a browser would post it.
async fn sign_in(w: &World, email: &str, password: &str) -> reqwest::Response {
    sign_in_to(w, email, password, "/web").await
}

/// Signs in through the form, asking to be sent to `redirect` after.
async fn sign_in_to(w: &World, email: &str, password: &str, redirect: &str) -> reqwest::Response {
    let (csrf_cookie, csrf) = sign_in_form(w).await;
    client()
        .post(format!("{}/.pomerium/sign_in", w.base))
        .header("cookie", csrf_cookie)
        .form(&[
            ("email", email),
            ("password", password),
            ("redirect_uri", redirect),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap()
}

async fn cookie(w: &World) -> String {
    let response = sign_in(w, "ada@example.com", "correct horse").await;
    assert_eq!(response.status(), 303);
    let set = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    set.split(';').next().unwrap().to_owned()
}

async fn rpc(w: &World, path: &str, cookie: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = client()
        .post(format!("{}{path}", w.base))
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(body);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

fn people(w: &World) -> i64 {
    rusqlite::Connection::open(&w.db)
        .unwrap()
        .query_row("SELECT count(*) FROM people", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn sign_in_accepts_the_right_password_and_rate_limits_guessing() {
    let w = world().await;
    let form = client()
        .get(format!("{}/.pomerium/sign_in?redirect_uri=/web", w.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        form.contains("name=\"email\"")
            && form.contains("name=\"password\"")
            && form.contains("value=\"/web\"")
    );

    let wrong = sign_in(&w, "ada@example.com", "nope").await;
    assert_eq!(wrong.status(), 401);
    let wrong_page = wrong.text().await.unwrap();
    let unknown_page = sign_in(&w, "nobody@example.com", "nope")
        .await
        .text()
        .await
        .unwrap();
    assert!(wrong_page.contains("Wrong email or password."));
    // Each page carries a fresh anti-forgery value; everything else is the same.
    let without_csrf = |page: &str| page.replace(&support::csrf_field(page), "");
    assert_eq!(
        without_csrf(&wrong_page),
        without_csrf(&unknown_page),
        "a wrong password and an unknown user look the same"
    );

    let ok = sign_in(&w, "ada@example.com", "correct horse").await;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/web");

    for _ in 0..5 {
        sign_in(&w, "mallory@other.test", "guess").await;
    }
    let limited = sign_in(&w, "mallory@other.test", "mallory pw").await;
    assert_eq!(
        limited.status(),
        429,
        "this address may not try this account for a while, even with the right password"
    );
    assert!(limited.headers().contains_key("retry-after"));

    // Sign-in never redirects off this gateway.
    let response = sign_in_to(
        &w,
        "ada@example.com",
        "correct horse",
        "https://evil.test/steal",
    )
    .await;
    assert_eq!(response.headers()["location"], "/.pomerium/");
}

#[tokio::test]
async fn without_a_session_browsers_are_sent_to_sign_in_and_apis_get_401() {
    let w = world().await;
    let browser = client()
        .get(format!("{}/web", w.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(browser.status(), 303);
    assert_eq!(
        browser.headers()["location"],
        "/.pomerium/sign_in?redirect_uri=%2Fweb"
    );
    let api = client()
        .get(format!("{}/web", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), 401);
    let (status, _) = rpc(&w, "/whoami", None, &call(1, "whoami", json!({}))).await;
    assert_eq!(status, 401);
    // A forged cookie is just no cookie.
    let (status, _) = rpc(
        &w,
        "/whoami",
        Some("_postern=v1.forged.AAAA"),
        &call(1, "whoami", json!({})),
    )
    .await;
    assert_eq!(status, 401);

    // Signed in, but the route's policy doesn't include the user's domain.
    let response = sign_in(&w, "mallory@other.test", "mallory pw").await;
    let mallory = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let forbidden = client()
        .get(format!("{}/web", w.base))
        .header("cookie", &mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 403);
    let ada = cookie(&w).await;
    assert_eq!(
        client()
            .get(format!("{}/web", w.base))
            .header("cookie", &ada)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn a_signed_in_user_gets_their_own_identity_from_whoami_and_sign_out_ends_it() {
    let w = world().await;
    let jar = cookie(&w).await;
    let jwks: Value = client()
        .get(format!("{}/.well-known/pomerium/jwks.json", w.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["alg"], json!("ES256"));
    let (status, body) = rpc(&w, "/whoami", Some(&jar), &call(1, "whoami", json!({}))).await;
    assert_eq!(status, 200, "{body}");
    let identity = &body["result"]["structuredContent"];
    assert_eq!(identity["email"], json!("ada@example.com"), "{body}");
    assert_eq!(identity["name"], json!("Ada Lovelace"));
    assert_eq!(identity["groups"], json!(["staff"]));
    assert_eq!(identity["issuer"], json!("localhost"));

    let out = client()
        .get(format!("{}/.pomerium/sign_out", w.base))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert!(
        out.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    let (status, _) = rpc(&w, "/whoami", Some(&jar), &call(2, "whoami", json!({}))).await;
    assert_eq!(status, 401, "the old cookie no longer works anywhere");
}

#[tokio::test]
async fn denied_tool_calls_are_refused_however_they_are_dressed_up() {
    let w = world().await;
    let jar = cookie(&w).await;
    let delete = json!({"query": "DELETE FROM people"});

    let (status, body) = rpc(
        &w,
        "/sqlite",
        Some(&jar),
        &call(7, "write_query", delete.clone()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["id"], json!(7));
    assert_eq!(body["error"]["code"], json!(-32602));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`write_query`"),
        "{body}"
    );

    // Hidden in a batch among allowed calls.
    let batch = json!([
        call(1, "read_query", json!({"query": "SELECT 1"})),
        call(2, "write_query", delete.clone())
    ]);
    let (_, body) = rpc(&w, "/sqlite", Some(&jar), &batch).await;
    assert_eq!(body[0]["id"], json!(2), "{body}");
    assert_eq!(body[0]["error"]["code"], json!(-32602));

    // At the end of a 5 MB body.
    let padded = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"arguments":{{"query":"DELETE FROM people"}},"padding":"{}","name":"write_query"}}}}"#,
        "x".repeat(5_000_000)
    );
    let response = client()
        .post(format!("{}/sqlite", w.base))
        .header("cookie", &jar)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(padded)
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], json!(-32602), "{body}");

    // Not declared as JSON.
    let response = client()
        .post(format!("{}/sqlite", w.base))
        .header("cookie", &jar)
        .header("content-type", "text/plain")
        .body(call(4, "write_query", delete.clone()).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // The method name in odd case.
    let mut odd = call(5, "write_query", delete.clone());
    odd["method"] = json!("Tools/CALL");
    let (_, body) = rpc(&w, "/sqlite", Some(&jar), &odd).await;
    assert_eq!(body["error"]["code"], json!(-32602), "{body}");

    // Duplicate keys: the gateway might read one name and the server the other.
    let duplicate = r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"read_query","name":"write_query","arguments":{"query":"DELETE FROM people"}}}"#;
    let response = client()
        .post(format!("{}/sqlite", w.base))
        .header("cookie", &jar)
        .header("content-type", "application/json")
        .body(duplicate)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    // Without a token, a body the gateway cannot read still gets the sign-in challenge first.
    for (content_type, body) in [("text/plain", "hello"), ("application/json", "{not json")] {
        let response = client()
            .post(format!("{}/sqlite", w.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{content_type}");
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("resource_metadata="),
            "{content_type}"
        );
    }

    assert_eq!(people(&w), 1, "no attempt reached the database");
    let (_, body) = rpc(
        &w,
        "/sqlite",
        Some(&jar),
        &call(
            8,
            "read_query",
            json!({"query": "SELECT count(*) AS n FROM people"}),
        ),
    )
    .await;
    assert_eq!(
        body["result"]["structuredContent"]["rows"],
        json!([[1]]),
        "allowed calls go through: {body}"
    );
}

#[tokio::test]
async fn tool_lists_show_only_callable_tools_and_calls_are_audited() {
    let w = world().await;
    let jar = cookie(&w).await;
    let (_, body) = rpc(
        &w,
        "/sqlite",
        Some(&jar),
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    let names: Vec<&str> = body["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"read_query") && !names.contains(&"write_query"),
        "{names:?}"
    );

    rpc(
        &w,
        "/sqlite",
        Some(&jar),
        &call(2, "write_query", json!({"query": "DELETE FROM people"})),
    )
    .await;
    rpc(
        &w,
        "/sqlite",
        Some(&jar),
        &call(3, "read_query", json!({"query": "SELECT 1"})),
    )
    .await;
    // The allowed call is recorded when its response ends, by the log's writer thread.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = std::fs::read_to_string(&w.audit)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let has = |tool: &str| lines.iter().any(|l| l["tool"] == json!(tool));
        if (has("write_query") && has("read_query")) || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let denied = lines
        .iter()
        .find(|l| l["tool"] == json!("write_query"))
        .expect("the denial is audited");
    assert_eq!(denied["decision"], json!("deny"));
    assert_eq!(denied["rule"], json!("deny: policy.deny.or[0] (mcp_tool)"));
    assert_eq!(denied["user"], json!("ada@example.com"));
    let allowed = lines
        .iter()
        .find(|l| l["tool"] == json!("read_query"))
        .expect("the call is audited");
    assert_eq!(allowed["decision"], json!("allow"));
    assert_eq!(allowed["status"], json!(200));
    assert!(allowed["latency_ms"].as_f64().unwrap() > 0.0);
    assert!(allowed["route"].as_str().unwrap().contains("/sqlite"));
}

// ---------------------------------------------------------------------------------------------
// Sign-in with a real OpenID Provider (oidc-provider from npm, run with node)

struct Provider {
    child: std::process::Child,
    issuer: String,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts tests/oidc-provider; `None` (loudly) when it is not installed outside CI.
/// `conform`: claims requested by scope only from UserInfo (OpenID Connect Core §5.4).
async fn provider(callback: &str, conform: bool) -> Option<Provider> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/oidc-provider");
    if !dir.join("node_modules/oidc-provider").exists() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "tests/oidc-provider is not installed in CI: .ci/tools.sh must run npm ci there"
            );
        }
        eprintln!(
            "\n*** SKIPPED: OIDC test: run `npm ci` in tests/oidc-provider (bash .ci/run does) ***\n"
        );
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new("node")
        .arg(dir.join("provider.mjs"))
        .args([port.to_string(), callback.to_owned()])
        .args(conform.then_some("conform"))
        .stdout(std::process::Stdio::piped())
        .stderr(
            std::fs::File::create(std::env::temp_dir().join(format!("oidc-provider-{port}.log")))
                .unwrap(),
        )
        .spawn()
        .expect("node runs");
    let stdout = child.stdout.take().unwrap();
    // Keep reading stdout after READY: node dies of EPIPE if its stdout is closed.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("READY") {
                let _ = tx.send(());
            }
        }
    });
    let ready = tokio::task::spawn_blocking(move || {
        rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok()
    })
    .await
    .unwrap();
    assert!(ready, "the OIDC provider did not start");
    Some(Provider {
        child,
        issuer: format!("http://127.0.0.1:{port}"),
    })
}

/// The `action` of the first form in an HTML page, as an absolute URL.
fn form_action(issuer: &str, page: &str) -> String {
    let at = page
        .find("action=\"")
        .unwrap_or_else(|| panic!("a form in {page}"))
        + 8;
    let action = page[at..at + page[at..].find('"').unwrap()].replace("&amp;", "&");
    if action.starts_with("http") {
        action
    } else {
        format!("{issuer}{action}")
    }
}

#[tokio::test]
async fn oidc_sign_in_with_a_real_provider_creates_a_session() {
    oidc_sign_in(false).await;
}

#[tokio::test]
async fn oidc_claims_that_only_userinfo_returns_are_fetched_from_it() {
    oidc_sign_in(true).await;
}

/// Signs in through a real provider, then uses a route that needs the email's domain and a group.
async fn oidc_sign_in(conform: bool) {
    use postern_access::oidc::{Oidc, OidcSettings};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let base = format!("http://localhost:{port}");
    let Some(op) = provider(&format!("{base}/.pomerium/callback"), conform).await else {
        return;
    };

    let stop = CancellationToken::new();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "app" }));
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let yaml = format!(
        "insecure_server: true\nroutes:\n  - {{from: http://localhost, to: http://{up}, policy: {{allow: {{and: [{{domain: {{is: example.com}}}}, {{groups: {{has: oidc-users}}}}]}}}}}}\n"
    );
    let store = support::memory_store().await;
    let oidc = Oidc::new(OidcSettings {
        issuer: op.issuer.clone(),
        client_id: "postern".into(),
        client_secret: "postern-test-secret".into(),
        scopes: vec![
            "openid".into(),
            "email".into(),
            "profile".into(),
            "groups".into(),
        ],
        groups_claim: "groups".into(),
    });
    let access = Access::new(
        store.clone(),
        LocalUsers::default(),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        support::settings(),
    )
    .with_oidc(oidc);
    support::serve(listener, &yaml, access, &stop);

    // A browser keeping cookies; redirects are followed by hand (GET), up to the gateway's callback.
    let browser = support::browser;
    async fn follow(
        client: &reqwest::Client,
        mut response: reqwest::Response,
    ) -> reqwest::Response {
        while response.status().is_redirection() {
            let next = response
                .url()
                .join(response.headers()["location"].to_str().unwrap())
                .unwrap();
            if next.path() == "/.pomerium/callback" {
                break;
            }
            response = client.get(next).send().await.unwrap();
        }
        response
    }
    let alice = browser();
    let login = follow(
        &alice,
        alice
            .get(format!("{base}/.pomerium/sign_in?redirect_uri=/"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        login.url().as_str().starts_with(&op.issuer),
        "sent to the provider: {}",
        login.url()
    );
    let page = login.text().await.unwrap();
    let posted = alice
        .post(form_action(&op.issuer, &page))
        .form(&[
            ("prompt", "login"),
            ("login", "ada"),
            ("password", "anything"),
        ])
        .send()
        .await
        .unwrap();
    let consent = follow(&alice, posted).await;
    let page = consent.text().await.unwrap();
    let posted = alice
        .post(form_action(&op.issuer, &page))
        .form(&[("prompt", "consent")])
        .send()
        .await
        .unwrap();
    let back = follow(&alice, posted).await;
    assert!(
        back.status().is_redirection(),
        "stopped at the redirect to the gateway's callback"
    );
    let callback = back
        .url()
        .join(back.headers()["location"].to_str().unwrap())
        .unwrap()
        .to_string();
    assert!(
        callback.starts_with(&format!("{base}/.pomerium/callback?code=")),
        "{callback}"
    );

    // Another browser presenting Alice's code is refused, and does not burn her sign-in.
    let mallory = browser();
    let response = mallory.get(&callback).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("another browser"));

    let done = alice.get(&callback).send().await.unwrap();
    if done.status() != 303 {
        panic!(
            "callback answered {}: {}",
            done.status(),
            done.text().await.unwrap_or_default()
        );
    }
    let set = done
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(set.contains("_postern="), "{set}");
    let app = alice.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(app.status(), 200);
    assert_eq!(
        app.text().await.unwrap(),
        "app",
        "signed in through the provider, allowed by domain and group"
    );

    // The code is single use.
    assert_eq!(alice.get(&callback).send().await.unwrap().status(), 400);
    stop.cancel();
}

// ---------------------------------------------------------------------------------------------
// The authorization server: an MCP client's flow, and the attacks on it

const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
const CALLBACK: &str = "http://127.0.0.1:9999/callback";

async fn register(w: &World, method: &str) -> Value {
    let response = client()
        .post(format!("{}/.pomerium/mcp/register", w.base))
        .json(&json!({"redirect_uris": [CALLBACK], "client_name": "Test client", "token_endpoint_auth_method": method}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

fn authorize_url(w: &World, client_id: &str, redirect: &str, extra: &str) -> String {
    format!(
        "{}/.pomerium/mcp/authorize?response_type=code&client_id={client_id}&redirect_uri={}&state=st4te&code_challenge={CHALLENGE}&code_challenge_method=S256&resource={}{extra}",
        w.base,
        urlencode(redirect),
        urlencode(&format!("{}/sqlite", w.base)),
    )
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn query_of(location: &str) -> HashMap<String, String> {
    url::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

/// Runs /authorize as the signed-in user (approving consent when asked); returns the redirect.
async fn authorize(w: &World, jar: &str, url: &str) -> String {
    let response = client()
        .get(url)
        .header("cookie", jar)
        .send()
        .await
        .unwrap();
    if response.status() == 303 {
        return response.headers()["location"].to_str().unwrap().to_owned();
    }
    assert_eq!(response.status(), 200, "{url}");
    let page = response.text().await.unwrap();
    assert!(
        page.contains("<button type=\"submit\" name=\"decision\" value=\"allow\">"),
        "{page}"
    );
    assert!(page.contains("name=\"decision\" value=\"deny\""));
    // Post the form back with its hidden fields.
    let mut fields: Vec<(String, String)> = Vec::new();
    for input in page.split("<input type=\"hidden\" ").skip(1) {
        let attr = |name: &str| {
            let at = input.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            input[at..at + input[at..].find('"').unwrap()]
                .replace("&amp;", "&")
                .replace("&quot;", "\"")
        };
        fields.push((attr("name"), attr("value")));
    }
    fields.push(("decision".into(), "allow".into()));
    let response = client()
        .post(format!("{}/.pomerium/mcp/authorize", w.base))
        .header("cookie", jar)
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    response.headers()["location"].to_str().unwrap().to_owned()
}

/// A token endpoint request at `base`: status, body, `Cache-Control`.
async fn token(
    base: &str,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> (u16, Value, String) {
    let mut request = client()
        .post(format!("{base}/.pomerium/mcp/token"))
        .form(form);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let cache = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, response.json().await.unwrap(), cache)
}

async fn code_for(w: &World, jar: &str, client_id: &str) -> String {
    let location = authorize(w, jar, &authorize_url(w, client_id, CALLBACK, "")).await;
    let q = query_of(&location);
    assert_eq!(q["state"], "st4te");
    assert_eq!(q["iss"], w.base, "RFC 9207 iss");
    q["code"].clone()
}

async fn exchange(w: &World, client_id: &str, code: &str) -> (u16, Value) {
    let (status, body, _) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("client_id", client_id),
            ("code_verifier", VERIFIER),
        ],
        None,
    )
    .await;
    (status, body)
}

async fn bearer_call(w: &World, path: &str, token: &str) -> reqwest::Response {
    client()
        .post(format!("{}{path}", w.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&call(1, "read_query", json!({"query": "SELECT 1"})))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn discovery_points_clients_at_the_authorization_server() {
    let w = world().await;
    let response = client()
        .post(format!("{}/sqlite", w.base))
        .json(&call(1, "read_query", json!({"query": "SELECT 1"})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let prm_url = format!("{}/.well-known/oauth-protected-resource/sqlite", w.base);
    assert_eq!(challenge, format!("Bearer resource_metadata=\"{prm_url}\""));
    let prm: Value = client()
        .get(&prm_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(prm["resource"], json!(format!("{}/sqlite", w.base)));
    assert_eq!(prm["authorization_servers"], json!([w.base]));
    let asm: Value = client()
        .get(format!("{}/.well-known/oauth-authorization-server", w.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(asm["issuer"], json!(w.base));
    assert_eq!(asm["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        asm["token_endpoint"],
        json!(format!("{}/.pomerium/mcp/token", w.base))
    );
    let preflight = client()
        .request(reqwest::Method::OPTIONS, format!("{}/sqlite", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn an_mcp_client_authorizes_refreshes_and_revokes() {
    let w = world().await;
    let jar = cookie(&w).await;
    let public = register(&w, "none").await;
    let id = public["client_id"].as_str().unwrap().to_owned();
    assert!(public.get("client_secret").is_none());

    // Unauthenticated browsers are sent to sign in first.
    let response = client()
        .get(authorize_url(&w, &id, CALLBACK, ""))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/.pomerium/sign_in?redirect_uri=%2F.pomerium%2Fmcp%2Fauthorize")
    );

    let code = code_for(&w, &jar, &id).await;
    let (status, body, cache) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("client_id", &id),
            ("code_verifier", VERIFIER),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cache, "no-store");
    let access = body["access_token"].as_str().unwrap().to_owned();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert!(access.starts_with("pst_at_") && refresh.starts_with("pst_rt_"));
    assert_eq!(body["token_type"], json!("Bearer"));

    let response = bearer_call(&w, "/sqlite", &access).await;
    assert_eq!(response.status(), 200);
    let result: Value = response.json().await.unwrap();
    assert_eq!(result["result"]["structuredContent"]["rows"], json!([[1]]));

    // Consent is remembered: the next authorization goes straight back with a code.
    let location = authorize(
        &w,
        &jar,
        &authorize_url(&w, &id, "http://127.0.0.1:5555/callback", ""),
    )
    .await;
    assert!(
        location.starts_with("http://127.0.0.1:5555/callback?code="),
        "loopback redirect URIs may change port: {location}"
    );

    // Refresh rotates; presenting the old refresh token again revokes everything.
    let (status, rotated, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &id),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let newest = rotated["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(newest, refresh);
    let new_access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_eq!(bearer_call(&w, "/sqlite", &new_access).await.status(), 200);
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let (status, replay, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &id),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, replay["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, _, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &newest),
            ("client_id", &id),
        ],
        None,
    )
    .await;
    assert_eq!(status, 400, "the family died with the replay");
    assert_eq!(
        bearer_call(&w, "/sqlite", &new_access).await.status(),
        401,
        "and its access tokens"
    );

    // Revocation (RFC 7009).
    let code = code_for(&w, &jar, &id).await;
    let (_, fresh) = exchange(&w, &id, &code).await;
    let fresh_access = fresh["access_token"].as_str().unwrap();
    let response = client()
        .post(format!("{}/.pomerium/mcp/revoke", w.base))
        .form(&[
            ("token", fresh["refresh_token"].as_str().unwrap()),
            ("client_id", &id),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let refused = bearer_call(&w, "/sqlite", fresh_access).await;
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn the_authorization_server_refuses_each_attack() {
    let w = world().await;
    let jar = cookie(&w).await;
    let a = register(&w, "none").await["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = register(&w, "none").await["client_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // plain PKCE, and no PKCE: back to the client with invalid_request.
    let plain = authorize(
        &w,
        &jar,
        &authorize_url(&w, &a, CALLBACK, "")
            .replace("code_challenge_method=S256", "code_challenge_method=plain"),
    )
    .await;
    assert_eq!(query_of(&plain)["error"], "invalid_request");
    let none = authorize(
        &w,
        &jar,
        &authorize_url(&w, &a, CALLBACK, "").replace(
            &format!("&code_challenge={CHALLENGE}&code_challenge_method=S256"),
            "",
        ),
    )
    .await;
    assert_eq!(query_of(&none)["error"], "invalid_request");

    // A redirect URI that isn't registered is never redirected to.
    for evil in [
        "https://evil.test/callback",
        "http://127.0.0.1:9999/callback/other",
        "http://localhost:9999/callback",
    ] {
        let response = client()
            .get(authorize_url(&w, &a, evil, ""))
            .header("cookie", &jar)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{evil}");
        assert!(response.headers().get("location").is_none());
    }

    // Wrong verifier; the code is then spent.
    let code = code_for(&w, &jar, &a).await;
    let (status, body, _) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("client_id", &a),
            ("code_verifier", "x".repeat(43).as_str()),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // The plain challenge as verifier.
    let code = code_for(&w, &jar, &a).await;
    let (status, _, _) = token(
        &w.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("client_id", &a),
            ("code_verifier", CHALLENGE),
        ],
        None,
    )
    .await;
    assert_eq!(status, 400);

    // A code for client A presented by client B.
    let code = code_for(&w, &jar, &a).await;
    let (status, body) = exchange(&w, &b, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Code replay: refused, and the tokens of the first use revoked.
    let code = code_for(&w, &jar, &a).await;
    let (status, first) = exchange(&w, &a, &code).await;
    assert_eq!(status, 200);
    let (status, body) = exchange(&w, &a, &code).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert_eq!(
        bearer_call(&w, "/sqlite", first["access_token"].as_str().unwrap())
            .await
            .status(),
        401
    );

    // A TE for /sqlite is refused on /whoami; a forged one anywhere.
    let code = code_for(&w, &jar, &a).await;
    let (_, good) = exchange(&w, &a, &code).await;
    let access = good["access_token"].as_str().unwrap();
    assert_eq!(bearer_call(&w, "/sqlite", access).await.status(), 200);
    let wrong_route = client()
        .post(format!("{}/whoami", w.base))
        .bearer_auth(access)
        .json(&call(1, "whoami", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_route.status(), 401);
    assert!(
        wrong_route.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("another MCP server")
    );
    let mut forged = access.to_owned();
    forged.replace_range(20..24, "AAAA");
    assert_eq!(bearer_call(&w, "/sqlite", &forged).await.status(), 401);
    assert_eq!(
        bearer_call(&w, "/sqlite", "pst_at_v1.deadbeef.AAAA")
            .await
            .status(),
        401
    );

    // Confidential clients must present their secret.
    let confidential = register(&w, "client_secret_basic").await;
    let (cid, secret) = (
        confidential["client_id"].as_str().unwrap().to_owned(),
        confidential["client_secret"].as_str().unwrap().to_owned(),
    );
    let code = code_for(&w, &jar, &cid).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", VERIFIER),
    ];
    let (status, body, _) = token(&w.base, &form, Some((&cid, "wrong-secret"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // A failed client authentication doesn't spend the code: the real client can still use it.
    let (status, body, _) = token(&w.base, &form, Some((&cid, &secret))).await;
    assert_eq!(status, 200, "{body}");
}

// ---------------------------------------------------------------------------------------------
// Upstream tokens (TI): the gateway as the OAuth client of the MCP server's provider

/// A fake upstream authorization server (the provider, e.g. Notion's OAuth): approves at once,
/// checks HTTP Basic client authentication and PKCE, issues `ti-N` / `rt-N`.
/// What a fake provider answers to refresh requests (200 by default).
type RefreshStatus = Arc<std::sync::atomic::AtomicU16>;

async fn fake_provider() -> (String, Arc<std::sync::Mutex<Vec<String>>>, RefreshStatus) {
    let refresh_status: RefreshStatus = Arc::new(std::sync::atomic::AtomicU16::new(200));
    let status_handle = refresh_status.clone();
    use axum::extract::Query;
    use axum::http::HeaderMap;
    let challenges: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
    let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let (c1, c2, l) = (challenges.clone(), challenges, log.clone());
    let app = axum::Router::new()
        .route(
            "/authorize",
            axum::routing::get(move |Query(q): Query<HashMap<String, String>>| {
                let code = format!("code-{}", c1.lock().unwrap().len());
                c1.lock().unwrap().insert(code.clone(), q["code_challenge"].clone());
                let location = format!("{}?code={code}&state={}", q["redirect_uri"], urlencode(&q["state"]));
                async move { (axum::http::StatusCode::SEE_OTHER, [("location", location)]) }
            }),
        )
        .route(
            "/token",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let (c2, l, refresh_status) = (c2.clone(), l.clone(), refresh_status.clone());
                let f: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
                async move {
                    use base64::Engine as _;
                    let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("notion-client:notion-secret"));
                    l.lock().unwrap().push(format!("{} {}", f.get("grant_type").cloned().unwrap_or_default(), f.get("refresh_token").cloned().unwrap_or_default()));
                    if basic != expected {
                        return (axum::http::StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"})));
                    }
                    match f.get("grant_type").map(String::as_str) {
                        Some("authorization_code") => {
                            let challenge = c2.lock().unwrap().get(&f["code"]).cloned().unwrap_or_default();
                            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
                            use sha2_check::s256;
                            if s256(&verifier) != challenge {
                                return (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"})));
                            }
                            // Expires within the gateway's refresh skew: the first use refreshes it.
                            (axum::http::StatusCode::OK, axum::Json(json!({"access_token": "ti-1", "refresh_token": "rt-1", "expires_in": 30, "token_type": "bearer"})))
                        }
                        Some("refresh_token") if refresh_status.load(std::sync::atomic::Ordering::SeqCst) != 200 => {
                            let status = axum::http::StatusCode::from_u16(refresh_status.load(std::sync::atomic::Ordering::SeqCst)).unwrap();
                            (status, axum::Json(json!({"error": "invalid_grant"})))
                        }
                        Some("refresh_token") if f.get("refresh_token").map(String::as_str) == Some("rt-1") => {
                            // No new refresh token: the gateway must keep rt-1.
                            (axum::http::StatusCode::OK, axum::Json(json!({"access_token": "ti-2", "expires_in": 3600, "token_type": "bearer"})))
                        }
                        _ => (axum::http::StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"}))),
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, log, status_handle)
}

mod sha2_check {
    pub fn s256(verifier: &str) -> String {
        postern_oauth::pkce::challenge_of(verifier)
    }
}

struct NotionWorld {
    base: String,
    browser: reqwest::Client,
    provider: String,
    provider_log: Arc<std::sync::Mutex<Vec<String>>>,
    refresh_status: RefreshStatus,
    notion: postern_notion_fake::RunningNotion,
    stop: CancellationToken,
}

impl NotionWorld {
    /// Connects Ada's Notion account from the browser: `/connect`, the provider (which approves
    /// at once), Postern's callback, back to `/done`.
    async fn connect(&self) {
        let base = &self.base;
        let start = support::connect(
            &self.browser,
            base,
            &format!(
                "redirect_url=/done&resource={}",
                urlencode(&format!("{base}/notion"))
            ),
        )
        .await;
        let provider_url = start.headers()["location"].to_str().unwrap().to_owned();
        assert!(provider_url.starts_with(&self.provider), "{provider_url}");
        let back = self.browser.get(&provider_url).send().await.unwrap();
        let done = self
            .browser
            .get(back.headers()["location"].to_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(done.headers()["location"], "/done");
    }

    /// The user's server list from `/.pomerium/mcp/routes`.
    async fn routes(&self) -> Value {
        self.browser
            .get(format!("{}/.pomerium/mcp/routes", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Forgets the user's Notion TI; the new server list.
    async fn disconnect(&self) -> Value {
        self.browser
            .post(format!("{}/.pomerium/mcp/routes/disconnect", self.base))
            .json(&json!({"routes": [format!("{}/notion", self.base)]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The gateway in front of the notion server with Notion-style upstream OAuth, an MCP client
/// app route (`/app`, echoing what it receives), and Ada signed in in `browser`.
async fn notion_world() -> NotionWorld {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (provider, provider_log, refresh_status) = fake_provider().await;
    let notion = postern_notion_fake::FakeNotion::new()
        .token("ti-1")
        .token("ti-2")
        .page(postern_notion_fake::Page::new("Roadmap"))
        .start()
        .await;
    let stop = CancellationToken::new();
    let env: HashMap<String, String> = [("NOTION_API_BASE_URL".to_owned(), notion.url())].into();
    let servers = postern_servers::build(
        &postern_servers::ServersConfig::from_env(&env).unwrap(),
        &stop,
    )
    .unwrap();
    let servers_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = servers_listener.local_addr().unwrap();
    tokio::spawn(postern_servers::serve(
        servers_listener,
        servers.router,
        stop.clone(),
    ));

    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = app_listener.local_addr().unwrap();
    let echo = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    });
    tokio::spawn(async move { axum::serve(app_listener, echo).await });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let yaml = format!(
        "insecure_server: true
routes:
  - from: http://localhost
    prefix: /notion
    to: http://{up}/notion
    name: Notion
    allow_any_authenticated_user: true
    mcp:
      upstream_oauth2:
        client_id: notion-client
        client_secret: notion-secret
        endpoint: {{auth_url: '{provider}/authorize', token_url: '{provider}/token', auth_style: header}}
        authorization_url_params: {{owner: user}}
  - from: http://localhost
    prefix: /app
    to: http://{app}
    allow_any_authenticated_user: true
    mcp: {{client: {{}}}}
"
    );
    let access = Access::new(
        support::memory_store().await,
        LocalUsers::new(vec![support::user("ada@example.com", "Ada", &[], "pw")]),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        support::settings(),
    );
    support::serve(listener, &yaml, access, &stop);

    // The user's browser (cookies kept, redirects followed by hand).
    let browser = support::browser();
    support::sign_in(&browser, &base, "ada@example.com", "pw").await;
    NotionWorld {
        base,
        browser,
        provider,
        provider_log,
        refresh_status,
        notion,
        stop,
    }
}

#[tokio::test]
async fn the_notion_server_gets_the_users_upstream_token_and_the_client_only_the_te() {
    let w = notion_world().await;
    let NotionWorld {
        base,
        browser,
        provider,
        provider_log,
        notion,
        stop,
        ..
    } = &w;
    let registered: Value = client()
        .post(format!("{base}/.pomerium/mcp/register"))
        .json(&json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none", "client_name": "Claude"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = registered["client_id"].as_str().unwrap();
    let authorize_url = format!(
        "{base}/.pomerium/mcp/authorize?response_type=code&client_id={id}&redirect_uri={}&state=s1&code_challenge={CHALLENGE}&code_challenge_method=S256&resource={}",
        urlencode(CALLBACK),
        urlencode(&format!("{base}/notion"))
    );
    let consent = browser
        .get(&authorize_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut fields: Vec<(String, String)> = Vec::new();
    for input in consent.split("<input type=\"hidden\" ").skip(1) {
        let attr = |name: &str| {
            let at = input.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            input[at..at + input[at..].find('"').unwrap()].replace("&amp;", "&")
        };
        fields.push((attr("name"), attr("value")));
    }
    fields.push(("decision".into(), "allow".into()));
    let to_provider = browser
        .post(format!("{base}/.pomerium/mcp/authorize"))
        .form(&fields)
        .send()
        .await
        .unwrap();
    let provider_url = to_provider.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        provider_url.starts_with(&format!("{provider}/authorize?")),
        "after consent, the provider: {provider_url}"
    );
    let q = query_of(&provider_url);
    assert_eq!(
        (
            q["client_id"].as_str(),
            q["owner"].as_str(),
            q["code_challenge_method"].as_str()
        ),
        ("notion-client", "user", "S256")
    );
    assert_eq!(
        q["redirect_uri"],
        format!("{base}/.pomerium/mcp/client/oauth/callback")
    );

    let back = browser.get(&provider_url).send().await.unwrap();
    let callback = back.headers()["location"].to_str().unwrap().to_owned();
    // Someone else's browser can't land this callback.
    let stranger = client().get(&callback).send().await.unwrap();
    assert_ne!(stranger.status(), 303);
    let done = browser.get(&callback).send().await.unwrap();
    assert_eq!(done.status(), 303);
    let location = done.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("{CALLBACK}?code=")),
        "then back to the MCP client: {location}"
    );
    let code = query_of(&location)["code"].clone();
    let (status, tokens, _) = token(
        base,
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", CALLBACK),
            ("client_id", id),
            ("code_verifier", VERIFIER),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let te = tokens["access_token"].as_str().unwrap().to_owned();
    assert!(
        !tokens.to_string().contains("ti-"),
        "the client never sees the upstream token"
    );

    let search = client()
        .post(format!("{base}/notion"))
        .bearer_auth(&te)
        .header("accept", "application/json, text/event-stream")
        .json(&call(1, "search", json!({"query": "road"})))
        .send()
        .await
        .unwrap();
    assert_eq!(search.status(), 200);
    let result: Value = search.json().await.unwrap();
    assert_eq!(
        result["result"]["structuredContent"]["results"][0]["title"],
        json!("Roadmap"),
        "{result}"
    );
    let seen: Vec<String> = notion
        .received()
        .iter()
        .filter_map(|r| r.authorization.clone())
        .collect();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|a| a == "Bearer ti-2"),
        "the TI was refreshed before use (it expired within the skew): {seen:?}"
    );
    assert!(
        seen.iter().all(|a| !a.contains("pst_")),
        "the TE never reaches the server"
    );
    let log = provider_log.lock().unwrap().clone();
    assert_eq!(
        log,
        ["authorization_code ", "refresh_token rt-1"],
        "one code exchange, one refresh"
    );

    // A second call: the refreshed token is used as is (the old refresh token was kept, no new refresh).
    client()
        .post(format!("{base}/notion"))
        .bearer_auth(&te)
        .header("accept", "application/json, text/event-stream")
        .json(&call(2, "search", json!({"query": "road"})))
        .send()
        .await
        .unwrap();
    assert_eq!(provider_log.lock().unwrap().len(), 2);

    // Disconnected from Notion: refreshing would mint a TE that only gets 401, so the refresh
    // grant is refused (the client runs the authorization again), and the token is not spent.
    let refresh = |refresh_token: String| async move {
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.as_str()),
            ("client_id", id),
        ];
        let (status, body, _) = token(base, &form, None).await;
        (status, body)
    };
    let refresh_token = tokens["refresh_token"].as_str().unwrap().to_owned();
    let after = w.disconnect().await;
    assert_eq!(after["servers"][0]["connected"], json!(false), "{after}");
    let (status, body) = refresh(refresh_token.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("not connected"),
        "{body}"
    );
    // Connected again through the provider, the same refresh token works.
    w.connect().await;
    let (status, body) = refresh(refresh_token).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["access_token"]
            .as_str()
            .unwrap()
            .starts_with("pst_at_")
    );
    stop.cancel();
}

#[tokio::test]
async fn apps_list_servers_connect_and_disconnect_and_get_a_te_on_client_routes() {
    let w = notion_world().await;
    let base = &w.base;
    let list = w.routes().await;
    assert_eq!(list["servers"].as_array().unwrap().len(), 1, "{list}");
    let server = &list["servers"][0];
    assert_eq!(
        (server["name"].as_str(), server["url"].as_str()),
        (Some("Notion"), Some(format!("{base}/notion").as_str()))
    );
    assert_eq!(
        (
            server["connected"].as_bool(),
            server["needs_oauth"].as_bool()
        ),
        (Some(false), Some(true))
    );

    // Only this host (or an MCP client route's) may be returned to.
    let foreign = w
        .browser
        .get(format!(
            "{base}/.pomerium/mcp/connect?redirect_url=https://evil.test/x"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 400);

    w.connect().await;
    assert_eq!(w.routes().await["servers"][0]["connected"], json!(true));

    // The app behind the client route receives a TE for the user...
    let te = w
        .browser
        .get(format!("{base}/app/page"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(te.starts_with("Bearer pst_at_"), "{te}");
    let te = te.trim_start_matches("Bearer ").to_owned();
    // ...which works on the MCP server route (the TI is injected there).
    let call_notion = |te: String| {
        let url = format!("{base}/notion");
        async move {
            client()
                .post(url)
                .bearer_auth(te)
                .header("accept", "application/json, text/event-stream")
                .json(&call(1, "search", json!({"query": "road"})))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(call_notion(te.clone()).await.status(), 200);
    // ...and lists the user's servers.
    let listed: Value = client()
        .get(format!("{base}/.pomerium/mcp/routes"))
        .bearer_auth(&te)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["servers"][0]["connected"], json!(true));

    assert_eq!(
        w.disconnect().await["servers"][0]["connected"],
        json!(false)
    );
    let refused = call_notion(te).await;
    assert_eq!(
        refused.status(),
        401,
        "no TI any more: the client must authorize again"
    );
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], json!("upstream_not_connected"));
    let _ = (&w.provider_log, &w.notion);
    w.stop.cancel();
}

#[tokio::test]
async fn signing_out_stops_the_users_mcp_tokens() {
    let w = world().await;
    let jar = cookie(&w).await;
    let id = register(&w, "none").await["client_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let code = code_for(&w, &jar, &id).await;
    let (_, tokens) = exchange(&w, &id, &code).await;
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(bearer_call(&w, "/sqlite", &access).await.status(), 200);
    client()
        .get(format!("{}/.pomerium/sign_out", w.base))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    // Revocations reach every replica's cache within the poll interval.
    let deadline = std::time::Instant::now() + postern_access::oauth_server::REVOCATION_POLL * 3;
    while bearer_call(&w, "/sqlite", &access).await.status() == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the TE still works after sign-out"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
            ("client_id", &id),
        ],
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "the refresh token died with the session"
    );
}

#[tokio::test]
async fn clients_can_identify_with_a_metadata_document_but_not_with_a_lying_one() {
    let w = world().await;
    let jar = cookie(&w).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let docs = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let (good_id, bad_id) = (format!("{docs}/client.json"), format!("{docs}/lying.json"));
    let (good, bad) = (
        json!({"client_id": good_id, "client_name": "Doc client", "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}),
        json!({"client_id": "https://claude.ai/someone-else.json", "redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}),
    );
    let app = axum::Router::new()
        .route(
            "/client.json",
            axum::routing::get(move || {
                let d = good.clone();
                async move { axum::Json(d) }
            }),
        )
        .route(
            "/lying.json",
            axum::routing::get(move || {
                let d = bad.clone();
                async move { axum::Json(d) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let code = code_for(&w, &jar, &urlencode(&good_id)).await;
    let (status, tokens) = exchange(&w, &good_id, &code).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(
        bearer_call(&w, "/sqlite", tokens["access_token"].as_str().unwrap())
            .await
            .status(),
        200
    );

    let response = client()
        .get(authorize_url(&w, &urlencode(&bad_id), CALLBACK, ""))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("differs from its URL")
    );
    // A host outside mcp_allowed_client_id_domains.
    let response = client()
        .get(authorize_url(
            &w,
            &urlencode("https://unlisted.example/client.json"),
            CALLBACK,
            "",
        ))
        .header("cookie", &jar)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

#[tokio::test]
async fn private_key_jwt_clients_prove_their_key_once_per_assertion() {
    use jsonwebtoken::jwk::{Jwk, JwkSet, ThumbprintHash};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let w = world().await;
    let jar = cookie(&w).await;
    let new_key = || {
        let encoding = EncodingKey::from_ec_pem(Signer::generate_pem().as_bytes()).unwrap();
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
        (encoding, jwk)
    };
    let (key, jwk) = new_key();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let docs = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let client_id = format!("{docs}/chatgpt.json");
    let document = json!({"client_id": client_id, "client_name": "Confidential doc client", "redirect_uris": [CALLBACK],
        "token_endpoint_auth_method": "private_key_jwt", "jwks_uri": format!("{docs}/jwks.json")});
    let jwks = serde_json::to_value(JwkSet {
        keys: vec![jwk.clone()],
    })
    .unwrap();
    let app = axum::Router::new()
        .route(
            "/chatgpt.json",
            axum::routing::get(move || {
                let d = document.clone();
                async move { axum::Json(d) }
            }),
        )
        .route(
            "/jwks.json",
            axum::routing::get(move || {
                let d = jwks.clone();
                async move { axum::Json(d) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let assertion = |key: &EncodingKey, kid: &str, jti: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_owned());
        let claims = json!({"iss": client_id, "sub": client_id, "aud": format!("{}/.pomerium/mcp/token", w.base), "jti": jti, "iat": now, "exp": now + 60});
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    };
    let exchange_with = |code: String, assertion: Option<String>| {
        let (base, client_id) = (w.base.clone(), client_id.clone());
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", CALLBACK.to_owned()),
                ("code_verifier", VERIFIER.to_owned()),
                ("client_id", client_id),
            ];
            if let Some(a) = assertion {
                form.push((
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                ));
                form.push(("client_assertion", a));
            }
            let response = client()
                .post(format!("{base}/.pomerium/mcp/token"))
                .form(&form)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let kid = jwk.common.key_id.clone().unwrap();
    let code = code_for(&w, &jar, &urlencode(&client_id)).await;
    let (status, body) = exchange_with(code.clone(), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "no assertion, no tokens"
    );
    let (stranger, stranger_jwk) = new_key();
    let (status, _) = exchange_with(
        code.clone(),
        Some(assertion(
            &stranger,
            stranger_jwk.common.key_id.as_deref().unwrap(),
            "j0",
        )),
    )
    .await;
    assert_eq!(status, 401, "signed with a key the client doesn't publish");
    let (status, _) = exchange_with(code.clone(), Some(assertion(&stranger, &kid, "j0"))).await;
    assert_eq!(status, 401, "the client's kid, another key's signature");
    let good = assertion(&key, &kid, "j1");
    let (status, body) = exchange_with(code, Some(good.clone())).await;
    assert_eq!(status, 200, "{body}");
    let code = code_for(&w, &jar, &urlencode(&client_id)).await;
    let (status, body) = exchange_with(code, Some(good)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "an assertion works once"
    );
}

#[tokio::test]
async fn upstream_refresh_failures_are_502_then_401_when_the_provider_revokes() {
    let w = notion_world().await;
    let base = &w.base;
    // Connect, so a TI that needs a refresh exists.
    w.connect().await;
    let te = w
        .browser
        .get(format!("{base}/app/x"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    let call_notion = || {
        let (url, te) = (format!("{base}/notion"), te.clone());
        async move {
            client()
                .post(url)
                .bearer_auth(te)
                .header("accept", "application/json, text/event-stream")
                .json(&call(1, "search", json!({"query": "r"})))
                .send()
                .await
                .unwrap()
        }
    };
    w.refresh_status
        .store(503, std::sync::atomic::Ordering::SeqCst);
    let outage = call_notion().await;
    assert_eq!(outage.status(), 502);
    let body: Value = outage.json().await.unwrap();
    assert_eq!(
        body["error"],
        json!("upstream_token_refresh_failed"),
        "{body}"
    );
    assert_eq!(
        w.routes().await["servers"][0]["connected"],
        json!(true),
        "an outage keeps the TI"
    );

    w.refresh_status
        .store(400, std::sync::atomic::Ordering::SeqCst);
    let revoked = call_notion().await;
    assert_eq!(
        revoked.status(),
        401,
        "the provider refused the refresh token: the client must authorize again"
    );
    assert_eq!(
        w.routes().await["servers"][0]["connected"],
        json!(false),
        "the dead TI was forgotten"
    );
    w.refresh_status
        .store(200, std::sync::atomic::Ordering::SeqCst);
    w.stop.cancel();
}
