//! Policy and MCP inspection: denied tool calls however they are dressed up, filtered tool
//! lists, and the audit log.

use serde_json::{Value, json};

use crate::support::client;
use crate::support::world::*;

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
