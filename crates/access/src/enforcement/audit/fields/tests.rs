use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use postern_gateway::Runtime;
use postern_gateway::hooks::RequestContext;
use serde_json::json;

use super::*;
use crate::enforcement::audit::LogSafe;

fn selection(names: &[&str]) -> Vec<AuthorizeLogField> {
    names
        .iter()
        .map(|n| AuthorizeLogField::try_from(n.to_string()).unwrap())
        .collect()
}

fn ctx() -> RequestContext {
    let config =
        postern_config::parse("insecure_server: true\n", Path::new("."), &HashMap::new()).unwrap();
    RequestContext {
        request_id: "req-1".into(),
        client_addr: "203.0.113.7:4711".parse().unwrap(),
        scheme: "https",
        host: "db.example.com".into(),
        port: 8443,
        started: Instant::now(),
        browser: false,
        runtime: Arc::new(Runtime::new(config)),
        client_certificate: None,
        metrics: Default::default(),
    }
}

fn session() -> Session {
    Session {
        id: "sess-1".into(),
        user_id: "user-1".into(),
        email: "ada@example.com".into(),
        name: "Ada".into(),
        groups: vec!["admins".into(), "staff".into()],
        claims: json!({"department": "engineering"})
            .as_object()
            .unwrap()
            .clone(),
        idp: "local".into(),
        created_at: 0,
        expires_at: 0,
    }
}

fn request() -> http::Request<()> {
    http::Request::post("/sqlite/mcp?debug=1")
        .header("authorization", "Bearer te-secret")
        .header("cookie", "_postern=cookie-secret")
        .header("proxy-authorization", "Basic cHJveHk6c2VjcmV0")
        .header("user-agent", "claude-code/1.0")
        .header("x-client", "one")
        .header("x-client", "two")
        .body(())
        .unwrap()
}

/// The record `fields` makes of `event` with `facts`, as JSON.
fn record_of(fields: &LogFields, event: &AuditEvent, truncated: &[&'static str]) -> Value {
    let line = serde_json::to_string(&Selected {
        event,
        fields,
        truncated,
    })
    .unwrap();
    serde_json::from_str(&line).unwrap()
}

fn event(facts: Option<Arc<RequestFacts>>) -> AuditEvent {
    AuditEvent {
        time_ms: 1,
        request_id: "req-1".into(),
        user: Some("ada@example.com".into()),
        session: Some("sess-1".into()),
        client_id: None,
        route: "sqlite".into(),
        method: Some("tools/call".into()),
        tool: Some("read_query".into()),
        decision: "allow",
        rule: "allow: policy.allow".into(),
        status: Some(200),
        latency_ms: Some(1.5),
        complete: Some(true),
        facts,
        tool_arguments: Some(Bounded::of(&json!({"query": "SELECT 1"}))),
        aggregate: None,
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

const ESSENTIALS: [&str; 7] = [
    "complete",
    "decision",
    "latency_ms",
    "route",
    "rule",
    "status",
    "time_ms",
];

#[test]
fn a_record_carries_its_essentials_and_exactly_the_selected_fields() {
    let names = [
        "request-id",
        "email",
        "user",
        "session-id",
        "host",
        "ip",
        "method",
        "path",
        "query",
        "mcp-method",
        "mcp-tool",
        "mcp-tool-parameters",
        "headers.User-Agent",
        "id-token-claims",
        "removed-groups-count",
        "id-token",
    ];
    let fields = LogFields::compile(&selection(&names));
    let facts = fields.capture(&ctx(), &request(), Some(&session()), 1);
    let record = record_of(&fields, &event(Some(facts)), &[]);
    let mut expected: Vec<&str> = ESSENTIALS.to_vec();
    expected.extend([
        "request_id",
        "email",
        "user_id",
        "session",
        "host",
        "ip",
        "http_method",
        "path",
        "query",
        "method",
        "tool",
        "tool_arguments",
        "headers",
        "claims",
        "removed_groups_count",
    ]);
    expected.sort_unstable();
    assert_eq!(keys(&record), expected, "{record}");
    assert_eq!(record["request_id"], "req-1");
    assert_eq!(record["email"], "ada@example.com");
    assert_eq!(record["user_id"], "user-1");
    assert_eq!(record["session"], "sess-1");
    assert_eq!(record["host"], "db.example.com:8443");
    assert_eq!(record["ip"], "203.0.113.7");
    assert_eq!(record["http_method"], "POST");
    assert_eq!(record["path"], "/sqlite/mcp");
    assert_eq!(record["query"], "debug=1");
    assert_eq!(record["method"], "tools/call");
    assert_eq!(record["tool"], "read_query");
    assert_eq!(record["tool_arguments"], json!({"query": "SELECT 1"}));
    assert_eq!(record["headers"], json!({"user-agent": "claude-code/1.0"}));
    assert_eq!(record["claims"], json!({"department": "engineering"}));
    assert_eq!(record["removed_groups_count"], 1);
    assert!(record.get("truncated").is_none());

    let only = LogFields::compile(&[]);
    let facts = only.capture(&ctx(), &request(), Some(&session()), 1);
    let essentials = record_of(&only, &event(Some(facts)), &[]);
    assert_eq!(keys(&essentials), ESSENTIALS, "{essentials}");
}

#[test]
fn without_a_user_the_selected_user_fields_are_null() {
    let fields = LogFields::compile(&selection(&[
        "email",
        "user",
        "session-id",
        "id-token-claims",
        "removed-groups-count",
    ]));
    let facts = fields.capture(&ctx(), &request(), None, 0);
    let record = record_of(&fields, &event(Some(facts)), &[]);
    for key in ["email", "user_id", "session", "claims"] {
        assert_eq!(record[key], Value::Null, "{key}: {record}");
    }
    assert_eq!(record["removed_groups_count"], 0);
}

/// The attack: a client's credentials (its TE, its session cookie) would be written to a log
/// that many more people read than may use the credentials.
#[test]
fn credentials_in_headers_are_never_recorded() {
    for names in [
        &["headers"][..],
        &[
            "headers.Authorization",
            "headers.cookie",
            "headers.Proxy-Authorization",
        ][..],
    ] {
        let fields = LogFields::compile(&selection(names));
        let facts = fields.capture(&ctx(), &request(), None, 0);
        let record = record_of(&fields, &event(Some(facts)), &[]);
        let text = record.to_string();
        for secret in ["te-secret", "cookie-secret", "cHJveHk6c2VjcmV0"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        let headers = &record["headers"];
        assert_eq!(headers["authorization"], REDACTED, "{record}");
        assert_eq!(headers["cookie"], REDACTED);
        assert_eq!(headers["proxy-authorization"], REDACTED);
    }
    let fields = LogFields::compile(&selection(&["headers"]));
    let facts = fields.capture(&ctx(), &request(), None, 0);
    let record = record_of(&fields, &event(Some(facts)), &[]);
    assert_eq!(record["headers"]["x-client"], "one, two", "{record}");
    assert_eq!(record["headers"]["user-agent"], "claude-code/1.0");
}

#[test]
fn headers_are_bounded_however_many_a_client_sends() {
    let mut request = http::Request::get("/").body(()).unwrap();
    for i in 0..200 {
        request.headers_mut().insert(
            HeaderName::from_bytes(format!("x-pad-{i:03}").as_bytes()).unwrap(),
            "v".repeat(2000).parse().unwrap(),
        );
    }
    let fields = LogFields::compile(&selection(&["headers"]));
    let facts = fields.capture(&ctx(), &request, None, 0);
    let record = record_of(&fields, &event(Some(facts)), &[]);
    let headers = record["headers"].to_string();
    assert!(headers.len() <= STRUCTURED_CAP, "{} bytes", headers.len());
    let first = record["headers"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    assert_eq!(first.as_str().unwrap().len(), FIELD_CAP + '…'.len_utf8());
    assert_eq!(record["truncated"], json!(["headers"]));
}

#[test]
fn large_values_are_cut_and_named_in_truncated() {
    let huge = json!({"query": "x".repeat(1_000_000)});
    let arguments = Bounded::of(&huge);
    assert!(arguments.cut);
    let text = arguments.value.as_str().unwrap();
    assert!(
        text.starts_with(r#"{"query":"xxx"#) && text.ends_with('…'),
        "{text}"
    );
    assert_eq!(text.len(), STRUCTURED_CAP + '…'.len_utf8());
    // Cut inside a character: only whole characters are kept.
    let wide = Bounded::of(&json!("é".repeat(STRUCTURED_CAP)));
    assert!(wide.value.as_str().unwrap().len() <= STRUCTURED_CAP + '…'.len_utf8());

    let fields = LogFields::compile(&selection(&["path", "mcp-tool", "mcp-tool-parameters"]));
    let request = http::Request::get(format!("/{}", "p".repeat(5000)))
        .body(())
        .unwrap();
    let facts = fields.capture(&ctx(), &request, None, 0);
    let mut event = event(Some(facts));
    event.tool_arguments = Some(arguments);
    let record = record_of(&fields, &event, &["user", "tool"]);
    assert_eq!(
        record["truncated"],
        json!(["tool", "path", "tool_arguments"]),
        "only fields in the record are named: {record}"
    );
    assert_eq!(
        record["path"].as_str().unwrap().len(),
        FIELD_CAP + '…'.len_utf8()
    );
    assert!(record.to_string().len() < 2 * STRUCTURED_CAP);
}

#[test]
fn a_selection_compiles_once_into_what_to_capture() {
    let fields = LogFields::compile(&selection(&["headers.X-A", "headers.x-a", "headers.X-B"]));
    assert_eq!(
        fields.headers,
        Headers::Only(vec![
            HeaderName::from_static("x-a"),
            HeaderName::from_static("x-b")
        ])
    );
    let fields = LogFields::compile(&selection(&["headers.X-A", "headers", "headers.X-B"]));
    assert_eq!(fields.headers, Headers::All);
    let unavailable = LogFields::compile(&selection(&["body", "id-token", "route-id"]));
    assert_eq!(unavailable, LogFields::default());
    assert!(!unavailable.tool_arguments);
}

#[test]
fn the_log_line_escapes_what_would_drive_a_terminal_and_stays_json() {
    let line = serde_json::to_string(&json!({"tool": "a\u{9b}2J\u{7f}\u{202e}b\u{1b}"})).unwrap();
    let shown = LogSafe(&line).to_string();
    assert!(
        !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{shown:?}"
    );
    let back: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(back["tool"], "a\u{9b}2J\u{7f}\u{202e}b\u{1b}");
}
