//! `authorize_log_fields`: the audit record carries its essentials and exactly the selected
//! fields (Pomerium's names, Postern's keys), never a client's credentials, and nothing
//! unbounded; without the key the record is as it always was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postern_access::AccessSettings;
use serde_json::{Value, json};

use crate::support::world::*;
use crate::support::{self, client};

/// `authorize_log_fields` as the configuration file would give it.
fn selection(names: &str) -> AccessSettings {
    let yaml = format!("insecure_server: true\nauthorize_log_fields: [{names}]\n");
    let config = postern_config::parse(&yaml, Path::new("."), &HashMap::new()).unwrap();
    AccessSettings {
        authorize_log_fields: config.authorize_log_fields,
        ..support::settings()
    }
}

/// The audit file's MCP records once `done` holds for them (the writer thread appends them,
/// allowed calls when their response has ended), and the file's text. Identity events (sign-in,
/// codes, tokens: `"event"`) share the file and are left out.
async fn records(path: &PathBuf, done: impl Fn(&[Value]) -> bool) -> (Vec<Value>, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|record| record.get("event").is_none())
            .collect();
        if done(&lines) || Instant::now() > deadline {
            return (lines, text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn keys(record: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = record
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

fn sorted(mut keys: Vec<&str>) -> Vec<&str> {
    keys.sort_unstable();
    keys
}

const ESSENTIALS: [&str; 7] = [
    "time_ms",
    "route",
    "decision",
    "rule",
    "status",
    "latency_ms",
    "complete",
];

/// A TE for the sqlite server, issued to a client Ada authorized.
async fn access_token(w: &World, jar: &str) -> String {
    let registered = register(w, "none").await;
    let client_id = registered["client_id"].as_str().unwrap();
    let code = code_for(w, jar, client_id).await;
    let (status, body) = exchange(w, client_id, &code).await;
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// A tools/call with the TE, a session cookie and a header of the client's own.
async fn call_with_credentials(w: &World, token: &str, jar: &str, body: &Value) -> u16 {
    client()
        .post(format!("{}/sqlite", w.base))
        .bearer_auth(token)
        .header("cookie", jar)
        .header("x-client", "audit-test")
        .header("accept", "application/json, text/event-stream")
        .json(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The attack: a client sends its bearer TE and a session cookie with its tool calls; with
/// `headers` selected, neither may reach the audit log. And a huge argument stays a bounded
/// piece of the record.
#[tokio::test]
async fn selected_fields_make_the_record_and_credentials_never_do() {
    let w = world_with(selection(
        "request-id, email, user, mcp-tool, mcp-tool-parameters, headers, ip, id-token",
    ))
    .await;
    let jar = cookie(&w).await;
    let token = access_token(&w, &jar).await;

    let small = call(1, "read_query", json!({"query": "SELECT 1"}));
    assert_eq!(call_with_credentials(&w, &token, &jar, &small).await, 200);
    let huge = call(
        2,
        "read_query",
        json!({"query": "SELECT 2", "padding": "x".repeat(2_000_000)}),
    );
    call_with_credentials(&w, &token, &jar, &huge).await;
    let denied = call(3, "write_query", json!({"query": "DELETE FROM people"}));
    assert_eq!(call_with_credentials(&w, &token, &jar, &denied).await, 200);

    let (lines, text) = records(&w.audit, |lines| lines.len() >= 3).await;
    assert_eq!(lines.len(), 3, "{text}");
    let mut expected = ESSENTIALS.to_vec();
    expected.extend([
        "request_id",
        "email",
        "user_id",
        "tool",
        "tool_arguments",
        "headers",
        "ip",
    ]);
    let expected = sorted(expected);
    for record in &lines {
        let mut keys = keys(record);
        keys.retain(|k| *k != "truncated");
        assert_eq!(keys, expected, "exactly the selected fields: {record}");
        assert_eq!(record["email"], "ada@example.com");
        assert!(!record["user_id"].as_str().unwrap().is_empty());
        assert_eq!(record["ip"], "127.0.0.1");
        assert_eq!(record["headers"]["authorization"], "[redacted]", "{record}");
        assert_eq!(record["headers"]["cookie"], "[redacted]");
        assert_eq!(record["headers"]["x-client"], "audit-test");
        assert!(record.get("user").is_none() && record.get("method").is_none());
    }
    let session_cookie = jar.split_once('=').unwrap().1;
    // A piece past the token's fixed prefix: a record that kept the first bytes of a
    // credential would leak them too.
    assert!(!text.contains(&token[20..60]), "the TE is in the audit log");
    assert!(
        !text.contains(session_cookie),
        "the session cookie is in the audit log"
    );

    let find = |what: &str, matches: &dyn Fn(&Value) -> bool| {
        lines
            .iter()
            .find(|l| matches(l))
            .unwrap_or_else(|| panic!("{what} not audited: {text}"))
    };
    let small = find("the small call", &|l| {
        l["tool_arguments"] == json!({"query": "SELECT 1"})
    });
    assert_eq!(small["decision"], "allow");
    assert_eq!(small["tool_arguments"], json!({"query": "SELECT 1"}));
    assert!(small.get("truncated").is_none(), "{small}");
    let huge = find("the huge call", &|l| l["tool_arguments"].is_string());
    let cut = huge["tool_arguments"].as_str().unwrap();
    assert!(
        cut.ends_with('…') && cut.len() <= 4096 + 3,
        "{} bytes",
        cut.len()
    );
    assert_eq!(huge["truncated"], json!(["tool_arguments"]));
    assert!(
        serde_json::to_string(huge).unwrap().len() < 8192,
        "a 2 MB argument makes a small record"
    );
    let denied = find("the denied call", &|l| l["tool"] == "write_query");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["rule"], "deny: policy.deny.or[0] (mcp_tool)");
    assert_eq!(
        denied["tool_arguments"],
        json!({"query": "DELETE FROM people"})
    );
    assert_eq!(denied["status"], Value::Null);
}

/// Without `authorize_log_fields` the record keeps the fields it always had, and no others.
#[tokio::test]
async fn without_the_key_the_record_is_unchanged() {
    let w = world().await;
    let jar = cookie(&w).await;
    rpc(
        &w,
        "/sqlite",
        Some(&jar),
        &call(1, "read_query", json!({"query": "SELECT 1"})),
    )
    .await;
    rpc(
        &w,
        "/sqlite",
        Some(&jar),
        &call(2, "write_query", json!({"query": "DELETE FROM people"})),
    )
    .await;
    let (lines, text) = records(&w.audit, |lines| lines.len() >= 2).await;
    assert_eq!(lines.len(), 2, "{text}");
    let fixed = sorted(vec![
        "time_ms",
        "request_id",
        "user",
        "session",
        "route",
        "method",
        "tool",
        "decision",
        "rule",
        "status",
        "latency_ms",
        "complete",
    ]);
    for record in &lines {
        assert_eq!(keys(record), fixed, "{record}");
        assert_eq!(record["user"], "ada@example.com");
        assert_eq!(record["method"], "tools/call");
    }
}

/// The request's own fields (host, path, query, HTTP method, one header), the user's claims and
/// what `jwt_groups_filter` kept out of the assertion, on an allowed MCP call and on a denied
/// web request.
#[tokio::test]
async fn request_fields_and_removed_groups_are_recorded() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = upstream.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}))
    });
    tokio::spawn(async move { axum::serve(upstream, app).await });
    let yaml = format!(
        "insecure_server: true
jwt_groups_filter: [staff]
routes:
  - {{from: http://localhost, prefix: /mcp, to: 'http://{up}', allow_any_authenticated_user: true, mcp: {{}}}}
  - {{from: http://localhost, prefix: /admin, to: 'http://{up}', allowed_users: [root@example.com]}}
"
    );
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let settings = AccessSettings {
        audit_file: Some(audit.clone()),
        ..selection(
            "host, path, query, method, headers.User-Agent, id-token-claims, removed-groups-count, session-id",
        )
    };
    let (base, browser, stop) = support::gateway_with_ada(&yaml, settings).await;
    let response = browser
        .post(format!("{base}/mcp?trace=on"))
        .header("user-agent", "audit-agent/1")
        .header("authorization", "Basic c2VjcmV0")
        .header("accept", "application/json, text/event-stream")
        .json(&call(1, "anything", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap();
    let response = browser
        .get(format!("{base}/admin/users"))
        .header("user-agent", "audit-agent/2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let (lines, text) = records(&audit, |lines| lines.len() >= 2).await;
    stop.cancel();
    assert_eq!(lines.len(), 2, "{text}");
    let mut expected = ESSENTIALS.to_vec();
    expected.extend([
        "host",
        "path",
        "query",
        "http_method",
        "headers",
        "claims",
        "removed_groups_count",
        "session",
    ]);
    let expected = sorted(expected);
    let port = base.rsplit(':').next().unwrap();
    let call = lines.iter().find(|l| l["decision"] == "allow").unwrap();
    assert_eq!(keys(call), expected, "{call}");
    assert_eq!(call["host"], format!("localhost:{port}"));
    assert_eq!(call["path"], "/mcp");
    assert_eq!(call["query"], "trace=on");
    assert_eq!(call["http_method"], "POST");
    assert_eq!(
        call["headers"],
        json!({"user-agent": "audit-agent/1"}),
        "only the selected header"
    );
    assert_eq!(call["claims"]["name"], "Ada", "a local user's claims");
    assert_eq!(
        call["removed_groups_count"], 1,
        "Ada's `admins` is filtered"
    );
    assert!(call["session"].as_str().is_some_and(|s| !s.is_empty()));
    let denied = lines.iter().find(|l| l["decision"] == "deny").unwrap();
    assert_eq!(keys(denied), expected, "{denied}");
    assert_eq!(denied["path"], "/admin/users");
    assert_eq!(denied["query"], Value::Null);
    assert_eq!(denied["http_method"], "GET");
    assert_eq!(denied["headers"], json!({"user-agent": "audit-agent/2"}));
    assert_eq!(denied["removed_groups_count"], 1);
}
