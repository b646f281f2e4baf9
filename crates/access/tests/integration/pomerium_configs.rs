//! A gateway on a configuration written the way Pomerium's MCP documentation writes one
//! (`runtime_flags`, `mcp: server` / `mcp: client`, `name`, PPL with `domain`, `groups` and
//! `mcp_tool` deny rules, `upstream_oauth2` on a host of its own, a public widget route,
//! `jwt_claims_headers`, route `pass_identity_headers`, `timeout: 0s`, `authorize_log_fields`),
//! doing what a user of those pages relies on. The configuration is parsed as a file would be,
//! and the gateway's settings come from it (`AccessSettings::from_config`).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use postern_access::{Access, AccessSettings};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::oauth_client::urlencode;
use crate::support::oauth_provider::FakeOAuthProvider;
use crate::support::world::*;
use crate::support::{self, client};

/// The documented deployment: a chat app (`mcp: client`) and the database server on
/// `localhost`, a code host server with static upstream OAuth on `127.0.0.1` (its own host, as
/// in the docs), widgets open to anyone, and an identity-echo route.
struct Deployment {
    world: World,
    /// `http://127.0.0.1:PORT`: the code host server's origin.
    code_host: String,
    provider: FakeOAuthProvider,
    issuer: String,
}

async fn deployment() -> Deployment {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let gateway = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = gateway.local_addr().unwrap().port();

    let db = dir.path().join("people.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO people(name) VALUES ('Ada');")
        .unwrap();
    let env: HashMap<String, String> = [
        ("SQLITE_DB_FILE".to_owned(), db.display().to_string()),
        ("SQLITE_READ_WRITE".to_owned(), "true".to_owned()),
    ]
    .into();
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

    // The app, the widgets and the code host server: each answers with the headers it got.
    let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = app_listener.local_addr().unwrap();
    let echo = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let seen: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
            .collect();
        axum::Json(Value::Object(seen))
    });
    tokio::spawn(async move { axum::serve(app_listener, echo).await });

    let provider = FakeOAuthProvider::new()
        .confidential_client("code-client", "code-secret")
        .issues("ti-code");
    let issuer = format!("{}/code", provider.serve().await);

    let yaml = format!(
        "insecure_server: true
runtime_flags:
  mcp: true
mcp_allowed_client_id_domains:
  - '127.0.0.1'
jwt_claims_headers:
  X-Pomerium-Claim-Email: email
  X-Pomerium-Claim-Groups: groups
authorize_log_fields:
  - request-id
  - user
  - email
  - mcp-method
  - mcp-tool
  - mcp-tool-parameters
routes:
  # the chat app (MCP client)
  - from: http://localhost
    prefix: /chat
    to: http://{app}
    mcp:
      client: {{}}
    policy:
      allow:
        and:
          - domain:
              is: example.com
  # an MCP server the app's LLM calls
  - from: http://localhost
    prefix: /sqlite
    to: http://{up}/sqlite
    name: Database Server
    mcp:
      server:
        max_request_bytes: 1048576
    policy:
      allow:
        and:
          - domain:
              is: example.com
          - groups:
              has: staff
      deny:
        or:
          - mcp_tool:
              in: ['write_query', 'drop_table']
          - mcp_tool:
              starts_with: 'admin_'
  # widget assets: public
  - from: http://localhost
    prefix: /widgets
    to: http://{app}
    name: Widgets
    allow_public_unauthenticated_access: true
  # identity for a plain app, as the acceptance configuration passes it
  - from: http://localhost
    prefix: /identity
    to: http://{app}
    pass_identity_headers: true
    timeout: 0s
    policy:
      - allow:
          or:
            - authenticated_user: true
  # the acceptance configuration's other way of passing it
  - from: http://localhost
    prefix: /jwt
    to: http://{app}
    set_request_headers:
      x-pomerium-jwt-assertion: ${{pomerium.jwt}}
    policy:
      - allow:
          or:
            - authenticated_user: true
  # an MCP server with upstream OAuth, on a host of its own
  - from: http://127.0.0.1
    to: http://{app}/code
    name: Code host
    mcp:
      server:
        upstream_oauth2:
          client_id: code-client
          client_secret: code-secret
          scopes: ['read:user', 'repo']
          endpoint:
            auth_url: '{issuer}/authorize'
            token_url: '{issuer}/token'
    policy:
      allow:
        and:
          - domain:
              is: example.com
"
    );
    let config = postern_config::parse(&yaml, Path::new("."), &HashMap::new())
        .unwrap_or_else(|e| panic!("the documented configuration: {e}"));
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let audit = dir.path().join("audit.jsonl");
    let settings = AccessSettings {
        audit_file: Some(audit.clone()),
        ..AccessSettings::from_config(&config)
    };
    let users = LocalUsers::new(vec![
        support::user("ada@example.com", "Ada", &["staff"], "correct horse"),
        support::user("mallory@other.test", "Mallory", &["staff"], "mallory pw"),
    ]);
    let access = Access::new(
        support::memory_store().await,
        users,
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        settings,
    );
    support::serve(gateway, &yaml, access, &stop);
    Deployment {
        world: World {
            base: format!("http://localhost:{port}"),
            db,
            audit,
            _dir: dir,
            stop,
        },
        code_host: format!("http://127.0.0.1:{port}"),
        provider,
        issuer,
    }
}

/// A TE for the database server, issued to an MCP client Ada authorized.
async fn access_token(w: &World, jar: &str) -> String {
    let registered = register(w, "none").await;
    let client_id = registered["client_id"].as_str().unwrap();
    let code = code_for(w, jar, client_id).await;
    let (status, body) = exchange(w, client_id, &code).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn bearer_rpc(w: &World, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}{path}", w.base))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn tool_names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Protect an MCP Server, Limit MCP Tool Calling, and the reference's observability: the server
/// route challenges a client without a token, a TE works, the denied tool is refused as a
/// JSON-RPC error without reaching the server and is hidden from `tools/list`, and the audit
/// record carries the MCP fields `authorize_log_fields` selects.
#[tokio::test]
async fn an_mcp_server_route_as_the_docs_configure_it() {
    let d = deployment().await;
    let w = &d.world;

    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "docs-client", "version": "1"}}});
    let challenge = client()
        .post(format!("{}/sqlite", w.base))
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 401);
    let header = challenge.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let metadata_url = header
        .split("resource_metadata=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no resource_metadata in {header}"));
    let metadata: Value = client()
        .get(metadata_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], format!("{}/sqlite", w.base));
    assert!(
        !metadata["authorization_servers"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{metadata}"
    );

    let jar = cookie(w).await;
    let token = access_token(w, &jar).await;
    let (status, list) = bearer_rpc(
        w,
        "/sqlite",
        &token,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let names = tool_names(&list);
    assert!(names.contains(&"read_query".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"write_query".to_owned()),
        "the denied tool is listed: {names:?}"
    );

    let (status, read) = bearer_rpc(
        w,
        "/sqlite",
        &token,
        &call(
            3,
            "read_query",
            json!({"query": "SELECT count(*) AS n FROM people"}),
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert!(read.get("result").is_some(), "{read}");
    let (status, denied) = bearer_rpc(
        w,
        "/sqlite",
        &token,
        &call(4, "write_query", json!({"query": "DELETE FROM people"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(denied["id"], json!(4));
    assert_eq!(denied["error"]["code"], json!(-32602), "{denied}");
    assert_eq!(people(w), 1, "the denied call reached the server");

    // Mallory is staff, but not at example.com.
    let (csrf_cookie, csrf) = support::sign_in_form(&w.base).await;
    let signed_in = client()
        .post(format!("{}/.pomerium/sign_in", w.base))
        .header("cookie", csrf_cookie)
        .form(&[
            ("email", "mallory@other.test"),
            ("password", "mallory pw"),
            ("redirect_uri", "/"),
            ("csrf_token", &csrf),
        ])
        .send()
        .await
        .unwrap();
    let mallory = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let (status, body) = rpc(
        w,
        "/sqlite",
        Some(&mallory),
        &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("access denied")),
        "domain is example.com: {body}"
    );
    assert!(body.get("result").is_none());

    // The audit record of each call, with the fields the reference's example selects.
    let deadline = Instant::now() + Duration::from_secs(5);
    let records = loop {
        let text = std::fs::read_to_string(&w.audit).unwrap_or_default();
        let records: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        // Records are written after the answers, so wait for all three.
        let done = records.iter().any(|r| r["tool"] == "write_query")
            && records.iter().any(|r| r["tool"] == "read_query")
            && records.iter().any(|r| r["method"] == "tools/list");
        if done || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let record = |tool: &str| {
        records
            .iter()
            .find(|r| r["tool"] == tool)
            .unwrap_or_else(|| panic!("no record of {tool}: {records:?}"))
    };
    let allowed = record("read_query");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["method"], "tools/call");
    assert_eq!(allowed["email"], "ada@example.com");
    assert!(allowed["user_id"].as_str().is_some_and(|u| !u.is_empty()));
    assert!(
        allowed["request_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    assert_eq!(
        allowed["tool_arguments"],
        json!({"query": "SELECT count(*) AS n FROM people"})
    );
    let refused = record("write_query");
    assert_eq!(refused["decision"], "deny");
    assert_eq!(
        refused["tool_arguments"],
        json!({"query": "DELETE FROM people"})
    );
    assert!(
        records.iter().any(|r| r["method"] == "tools/list"),
        "{records:?}"
    );
}

/// Delegate MCP Access to an LLM: the `mcp: client` route's app gets the user's TE (never the
/// browser's own `Authorization`), the TE works against the MCP servers, the server list
/// follows the reference app's rules, and `/connect` on the code host's own origin with the
/// app's `redirect_url` runs the upstream OAuth and comes back to the app.
#[tokio::test]
async fn an_mcp_client_app_as_the_docs_configure_it() {
    let d = deployment().await;
    let w = &d.world;
    let browser = support::browser();
    support::sign_in(&browser, &w.base, "ada@example.com", "correct horse").await;

    let seen: Value = browser
        .get(format!("{}/chat/", w.base))
        .header("authorization", "Bearer forged-by-the-browser")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let te = seen["authorization"]
        .as_str()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_else(|| panic!("the app got no TE: {seen}"));
    assert_ne!(te, "forged-by-the-browser");
    let (status, list) = bearer_rpc(
        w,
        "/sqlite",
        te,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200, "the app's TE at the MCP server: {list}");
    assert!(!tool_names(&list).contains(&"write_query".to_owned()));

    let servers = |browser: reqwest::Client| {
        let base = w.base.clone();
        async move {
            let body: Value = browser
                .get(format!("{base}/.pomerium/mcp/routes"))
                .header("accept", "application/json")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            support::assert_reference_app_accepts(&body);
            body
        }
    };
    let connected = |body: &Value, name: &str| {
        body["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {body}"))["connected"]
            .as_bool()
            .unwrap()
    };
    let before = servers(browser.clone()).await;
    let database = before["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Database Server")
        .unwrap();
    assert_eq!(database["url"], format!("{}/sqlite", w.base));
    assert!(connected(&before, "Database Server"), "no upstream OAuth");
    assert!(!connected(&before, "Code host"), "{before}");

    // The code host is an origin of its own: the user signs in there too, then the app sends
    // them to its /connect with the app's callback.
    support::sign_in(&browser, &d.code_host, "ada@example.com", "correct horse").await;
    let callback = format!("{}/chat/callback", w.base);
    let elsewhere = browser
        .get(format!(
            "{}/.pomerium/mcp/connect?redirect_url={}",
            d.code_host,
            urlencode("https://attacker.test/chat/callback")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        elsewhere.status(),
        400,
        "redirect_url off the client routes"
    );
    let to_provider = support::connect(
        &browser,
        &d.code_host,
        &format!("redirect_url={}", urlencode(&callback)),
    )
    .await;
    let provider_url = to_provider.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(provider_url.starts_with(&d.issuer), "{provider_url}");
    let authorize = url::Url::parse(&provider_url).unwrap();
    let query: HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(query["client_id"], "code-client");
    assert_eq!(query["scope"], "read:user repo");
    assert_eq!(
        query["redirect_uri"],
        format!("{}/.pomerium/mcp/client/oauth/callback", d.code_host),
        "the callback the upstream OAuth page says to register"
    );
    let back = browser.get(&provider_url).send().await.unwrap();
    let done = browser
        .get(back.headers()["location"].to_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(done.headers()["location"], callback.as_str());
    assert!(
        d.provider
            .grants()
            .iter()
            .any(|g| g.starts_with("authorization_code")),
        "{:?}",
        d.provider.grants()
    );
    assert!(connected(&servers(browser.clone()).await, "Code host"));
}

/// `jwt_claims_headers` on every route, the assertion where `pass_identity_headers: true`
/// (or `X-Pomerium-Jwt-Assertion: ${pomerium.jwt}`) says so and nowhere else, a public route without sign-in, and `timeout: 0s` as no limit
/// (a zero deadline used to answer every request with 504).
#[tokio::test]
async fn identity_headers_and_public_routes_as_the_docs_configure_them() {
    let d = deployment().await;
    let w = &d.world;
    let browser = support::browser();
    support::sign_in(&browser, &w.base, "ada@example.com", "correct horse").await;

    let identity = browser
        .get(format!("{}/identity/", w.base))
        .header("x-pomerium-claim-email", "forged@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(identity.status(), 200, "timeout: 0s is no limit");
    let seen: Value = identity.json().await.unwrap();
    assert_eq!(seen["x-pomerium-claim-email"], "ada@example.com", "{seen}");
    assert_eq!(seen["x-pomerium-claim-groups"], "staff");
    assert!(
        seen["x-pomerium-jwt-assertion"]
            .as_str()
            .is_some_and(|a| a.split('.').count() == 3),
        "{seen}"
    );

    let placeholder: Value = browser
        .get(format!("{}/jwt/", w.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        placeholder["x-pomerium-jwt-assertion"]
            .as_str()
            .is_some_and(|a| a.split('.').count() == 3 && !a.contains("pomerium.jwt")),
        "${{pomerium.jwt}} is the assertion: {placeholder}"
    );

    let chat: Value = browser
        .get(format!("{}/chat/", w.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        chat.get("x-pomerium-jwt-assertion").is_none(),
        "pass_identity_headers is off by default: {chat}"
    );
    assert_eq!(chat["x-pomerium-claim-email"], "ada@example.com");

    let widgets = client()
        .get(format!("{}/widgets/app.js", w.base))
        .send()
        .await
        .unwrap();
    assert_eq!(widgets.status(), 200, "public widget route");
    let anonymous: Value = widgets.json().await.unwrap();
    assert_eq!(anonymous["x-pomerium-claim-email"], "", "{anonymous}");
    let gated = client()
        .get(format!("{}/identity/", w.base))
        .send()
        .await
        .unwrap();
    assert_ne!(gated.status(), 200, "the identity route needs sign-in");
}
