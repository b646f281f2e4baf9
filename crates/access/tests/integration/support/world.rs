//! The main world: a gateway in front of the real reference servers (whoami verifies the
//! gateway's assertion with the gateway's JWKS; sqlite holds a `people` table; `/web` is a plain
//! web route for example.com users), with Ada (staff) and Mallory as local users.

use std::collections::HashMap;

use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use postern_access::{Access, AccessSettings};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::oauth_client::{self, CALLBACK, allow_fields, exchange_at, query_of};
use crate::support::{self, client};

pub struct World {
    pub base: String,
    pub db: std::path::PathBuf,
    pub audit: std::path::PathBuf,
    pub _dir: tempfile::TempDir,
    pub stop: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn world() -> World {
    world_with(support::settings()).await
}

/// [`world`] with `settings` (its audit file and identity headers set as in every world).
pub async fn world_with(settings: AccessSettings) -> World {
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
        ..settings
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

/// Signs in through the form, as a browser would post it.
pub async fn sign_in(w: &World, email: &str, password: &str) -> reqwest::Response {
    sign_in_to(w, email, password, "/web").await
}

/// Signs in through the form, asking to be sent to `redirect` after.
pub async fn sign_in_to(
    w: &World,
    email: &str,
    password: &str,
    redirect: &str,
) -> reqwest::Response {
    let (csrf_cookie, csrf) = support::sign_in_form(&w.base).await;
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

pub async fn cookie(w: &World) -> String {
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

pub async fn rpc(w: &World, path: &str, cookie: Option<&str>, body: &Value) -> (u16, Value) {
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

pub fn call(id: u64, tool: &str, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

pub fn people(w: &World) -> i64 {
    rusqlite::Connection::open(&w.db)
        .unwrap()
        .query_row("SELECT count(*) FROM people", [], |r| r.get(0))
        .unwrap()
}

pub async fn register(w: &World, method: &str) -> Value {
    let response = client()
        .post(format!("{}/.pomerium/mcp/register", w.base))
        .json(&json!({"redirect_uris": [CALLBACK], "client_name": "Test client", "token_endpoint_auth_method": method}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

/// An authorization request by `client_id` for the sqlite server, back to `redirect`, plus
/// `extra` query parameters.
pub fn authorize_url(w: &World, client_id: &str, redirect: &str, extra: &str) -> String {
    let resource = format!("{}/sqlite", w.base);
    oauth_client::authorize_url(&w.base, client_id, redirect, &resource) + extra
}

/// Runs /authorize as the signed-in user (approving consent when asked); returns the redirect.
pub async fn authorize(w: &World, jar: &str, url: &str) -> String {
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
    let response = client()
        .post(format!("{}/.pomerium/mcp/authorize", w.base))
        .header("cookie", jar)
        .form(&allow_fields(&page))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    response.headers()["location"].to_str().unwrap().to_owned()
}

pub async fn code_for(w: &World, jar: &str, client_id: &str) -> String {
    let location = authorize(w, jar, &authorize_url(w, client_id, CALLBACK, "")).await;
    let q = query_of(&location);
    assert_eq!(q["state"], "st4te");
    assert_eq!(q["iss"], w.base, "RFC 9207 iss");
    q["code"].clone()
}

pub async fn exchange(w: &World, client_id: &str, code: &str) -> (u16, Value) {
    exchange_at(&w.base, client_id, code).await
}

pub async fn bearer_call(w: &World, path: &str, token: &str) -> reqwest::Response {
    client()
        .post(format!("{}{path}", w.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&call(1, "read_query", json!({"query": "SELECT 1"})))
        .send()
        .await
        .unwrap()
}
