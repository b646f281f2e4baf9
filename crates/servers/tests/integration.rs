//! The reference servers driven by a real MCP client (rmcp's Streamable HTTP client) over HTTP.

#[path = "support/harness.rs"]
mod harness;

use harness::{Servers, call, text_json};
use postern_assertion::testing::{JwksServer, TestKey, now};
use postern_notion_fake::{Block, DataSource, FakeNotion, Page};
use rmcp::model::ProtocolVersion;
use serde_json::json;

const TI: &str = "secret-notion-ti";

// ---------------------------------------------------------------------------------------------
// sqlite

#[tokio::test]
async fn sqlite_lists_read_tools_and_answers_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = harness::demo_db(dir.path());
    let servers = Servers::start(&[("SQLITE_DB_FILE", &db)]).await;
    let client = servers.client("/sqlite", &[]).await;

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["describe_table", "list_tables", "read_query"]);
    for tool in &tools {
        let hints = tool.annotations.as_ref().expect("annotations");
        assert_eq!(hints.read_only_hint, Some(true), "{}", tool.name);
    }

    let out = call(
        &client,
        "read_query",
        json!({"query": "SELECT id, name, score FROM people ORDER BY id"}),
    )
    .await;
    assert_eq!(out.is_error, Some(false));
    assert_eq!(
        text_json(&out)["rows"],
        json!([[1, "Ada", 9.5], [2, "Grace", null]])
    );
    assert_eq!(out.structured_content.as_ref(), Some(&text_json(&out)));

    let out = call(&client, "describe_table", json!({"table_name": "people"})).await;
    assert_eq!(text_json(&out)["columns"][1]["name"], json!("name"));

    // The attack reaches SQLite through the whole MCP stack and is refused as a tool error.
    let out = call(
        &client,
        "read_query",
        json!({"query": "SELECT 1; DELETE FROM people"}),
    )
    .await;
    assert_eq!(out.is_error, Some(true));
    assert!(
        harness::text(&out).contains("only one SQL statement"),
        "{}",
        harness::text(&out)
    );
    let out = call(
        &client,
        "read_query",
        json!({"query": "SELECT count(*) FROM people"}),
    )
    .await;
    assert_eq!(text_json(&out)["rows"], json!([[2]]));

    // write_query is not offered, and calling it anyway fails.
    let err = client
        .call_tool(
            rmcp::model::CallToolRequestParams::new("write_query").with_arguments(
                json!({"query": "DELETE FROM people"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await;
    assert!(err.is_err() || err.unwrap().is_error == Some(true));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn sqlite_write_mode_offers_a_destructive_write_query() {
    let dir = tempfile::tempdir().unwrap();
    let db = harness::demo_db(dir.path());
    let servers = Servers::start(&[("SQLITE_DB_FILE", &db), ("SQLITE_READ_WRITE", "true")]).await;
    let client = servers.client("/sqlite", &[]).await;
    let tools = client.list_all_tools().await.unwrap();
    let write = tools
        .iter()
        .find(|t| t.name == "write_query")
        .expect("write_query offered");
    let hints = write.annotations.as_ref().unwrap();
    assert_eq!(
        (hints.read_only_hint, hints.destructive_hint),
        (Some(false), Some(true))
    );

    let out = call(
        &client,
        "write_query",
        json!({"query": "INSERT INTO people(name) VALUES ('Linus')"}),
    )
    .await;
    assert_eq!(text_json(&out)["rows_affected"], json!(1));
    let out = call(
        &client,
        "read_query",
        json!({"query": "SELECT count(*) FROM people"}),
    )
    .await;
    assert_eq!(text_json(&out)["rows"], json!([[3]]));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn the_servers_listen_on_loopback_unless_bind_says_otherwise() {
    // The servers trust their callers to have passed the gateway: by default nothing off this
    // host can reach them.
    let config = postern_servers::ServersConfig::from_env(&[("PORT", "0")]).unwrap();
    let listener = postern_servers::listen(&config).await.unwrap();
    let local = listener.local_addr().unwrap();
    assert!(local.ip().is_loopback(), "listening on {local}");
    let config =
        postern_servers::ServersConfig::from_env(&[("PORT", "0"), ("BIND", "0.0.0.0")]).unwrap();
    let listener = postern_servers::listen(&config).await.unwrap();
    assert!(listener.local_addr().unwrap().ip().is_unspecified());
}

#[tokio::test]
async fn a_missing_database_stops_start_up_with_the_file_name() {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config =
        postern_servers::ServersConfig::from_env(&[("SQLITE_DB_FILE", "/nonexistent/x.db")])
            .unwrap();
    let Err(err) = postern_servers::build(&config, &shutdown) else {
        panic!("a missing database must not start");
    };
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/x.db") && message.contains("never creates"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------------------------
// whoami

#[tokio::test]
async fn whoami_returns_the_verified_identity_and_refuses_forgeries() {
    let key = TestKey::generate();
    let jwks = JwksServer::start(vec![key.public_jwk().clone()]).await;
    let servers = Servers::start(&[
        ("ASSERTION_JWKS_URL", &jwks.url),
        ("ASSERTION_ISSUER", "gw.example.com"),
        ("ASSERTION_AUDIENCE", "gw.example.com"),
    ])
    .await;

    let token = key.sign(&TestKey::claims(
        "gw.example.com",
        "gw.example.com",
        "ada@example.com",
    ));
    let client = servers
        .client("/whoami", &[("x-pomerium-jwt-assertion", &token)])
        .await;
    let tools = client.list_all_tools().await.unwrap();
    assert_eq!(tools.len(), 1);
    let out = call(&client, "whoami", json!({})).await;
    assert_eq!(out.is_error, Some(false), "{}", harness::text(&out));
    let id = text_json(&out);
    assert_eq!(id["email"], json!("ada@example.com"));
    assert_eq!(id["user"], json!("user-ada@example.com"));
    assert_eq!(id["groups"], json!(["staff"]));
    client.cancel().await.unwrap();

    // No header: the error says how to fix the route.
    let client = servers.client("/whoami", &[]).await;
    let out = call(&client, "whoami", json!({})).await;
    assert_eq!(out.is_error, Some(true));
    assert!(
        harness::text(&out).contains("pass_identity_headers"),
        "{}",
        harness::text(&out)
    );
    client.cancel().await.unwrap();

    // Someone who reaches the server directly and signs with their own key, naming the right
    // issuer, gets nowhere: keys come from the configured JWKS only.
    let attacker = TestKey::generate();
    let forged = attacker.sign(&TestKey::claims(
        "gw.example.com",
        "gw.example.com",
        "root@example.com",
    ));
    let client = servers
        .client("/whoami", &[("x-pomerium-jwt-assertion", &forged)])
        .await;
    let out = call(&client, "whoami", json!({})).await;
    assert_eq!(out.is_error, Some(true));
    assert!(
        harness::text(&out).contains("no key with kid"),
        "{}",
        harness::text(&out)
    );
    client.cancel().await.unwrap();

    // An expired assertion names the failed check.
    let mut claims = TestKey::claims("gw.example.com", "gw.example.com", "ada@example.com");
    claims["exp"] = json!(now() - 600);
    let client = servers
        .client(
            "/whoami",
            &[("x-pomerium-jwt-assertion", &key.sign(&claims))],
        )
        .await;
    let out = call(&client, "whoami", json!({})).await;
    assert!(
        harness::text(&out).contains("expired"),
        "{}",
        harness::text(&out)
    );
    client.cancel().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// notion

async fn workspace() -> (postern_notion_fake::RunningNotion, String, String) {
    let nested = Page::new("Launch plan")
        .edited("2026-03-02T10:00:00.000Z")
        .block(Block::heading(1, "Launch"))
        .block(
            Block::toggle("Details").child(
                Block::bullet("Step hidden in a toggle")
                    .child(Block::to_do("Deeply nested task", true)),
            ),
        )
        .block(Block::unsupported())
        .block(Block::code("rust", "fn main() {}"))
        .markdown_truncated();
    let nested_id = nested.id.clone();
    let row = Page::new("Fix the login bug").text_property("Status", "In progress");
    let row_id = row.id.clone();
    let notion = FakeNotion::new()
        .token(TI)
        .page(nested)
        .page(
            Page::new("Quarterly report")
                .edited("2026-02-01T00:00:00.000Z")
                .markdown("# Q1\n\nRevenue grew."),
        )
        .data_source(DataSource::new("Tasks", "Task").row(row))
        .start()
        .await;
    (notion, nested_id, row_id)
}

#[tokio::test]
async fn notion_search_follows_the_deep_research_contract() {
    let (notion, _, row_id) = workspace().await;
    let servers = Servers::start(&[("NOTION_API_BASE_URL", &notion.url())]).await;
    let client = servers
        .client("/notion", &[("authorization", &format!("Bearer {TI}"))])
        .await;

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<_> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["fetch", "search"], "exactly search and fetch");
    assert!(
        tools
            .iter()
            .all(|t| t.annotations.as_ref().unwrap().read_only_hint == Some(true))
    );

    let out = call(&client, "search", json!({"query": "bug"})).await;
    assert_eq!(out.content.len(), 1, "exactly one content item");
    let body = text_json(&out);
    assert_eq!(out.structured_content.as_ref(), Some(&body));
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1);
    // A database row whose title column is named "Task", not "title".
    assert_eq!(results[0]["title"], json!("Fix the login bug"));
    assert_eq!(results[0]["id"], json!(row_id));
    assert!(
        results[0]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://www.notion.so/")
    );
    assert!(
        results[0]["text"]
            .as_str()
            .unwrap()
            .contains("Status: In progress")
    );

    let out = call(&client, "search", json!({"query": "no such thing"})).await;
    assert_eq!(harness::text(&out), r#"{"results":[]}"#);

    // Empty query: recently edited pages, newest first.
    let out = call(&client, "search", json!({"query": ""})).await;
    let titles: Vec<_> = text_json(&out)["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["title"].clone())
        .collect();
    assert_eq!(titles[0], json!("Launch plan"));
    assert_eq!(titles[1], json!("Quarterly report"));

    // Data sources are found too, and fetch renders them.
    let out = call(&client, "search", json!({"query": "tasks"})).await;
    let hit = &text_json(&out)["results"][0];
    assert!(
        hit["id"].as_str().unwrap().starts_with("data_source:"),
        "{hit}"
    );
    let out = call(&client, "fetch", json!({"id": hit["id"]})).await;
    let doc = text_json(&out);
    assert!(
        doc["text"].as_str().unwrap().contains("Fix the login bug"),
        "{doc}"
    );
    assert_eq!(doc["metadata"]["object"], json!("data_source"));

    // Every request carried the caller's token and the pinned version.
    for r in notion.received() {
        assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {TI}")));
        assert_eq!(r.notion_version.as_deref(), Some("2026-03-11"));
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn notion_fetch_returns_nested_content_by_any_id_form() {
    let (notion, page_id, _) = workspace().await;
    let servers = Servers::start(&[("NOTION_API_BASE_URL", &notion.url())]).await;
    let client = servers
        .client("/notion", &[("authorization", &format!("Bearer {TI}"))])
        .await;

    let url = format!(
        "https://www.notion.so/acme/Launch-plan-{}",
        page_id.replace('-', "")
    );
    for id in [page_id.clone(), page_id.replace('-', ""), url] {
        let out = call(&client, "fetch", json!({"id": id})).await;
        assert_eq!(out.content.len(), 1);
        let doc = text_json(&out);
        assert_eq!(out.structured_content.as_ref(), Some(&doc));
        assert_eq!(doc["id"], json!(page_id));
        assert_eq!(doc["title"], json!("Launch plan"));
        let text = doc["text"].as_str().unwrap();
        // The markdown endpoint said `truncated`, so the page was walked block by block.
        assert_eq!(doc["metadata"]["content_source"], json!("blocks"));
        assert!(text.contains("# Launch"), "{text}");
        assert!(
            text.contains("- Details\n  - Step hidden in a toggle\n    - [x] Deeply nested task"),
            "{text}"
        );
        assert!(text.contains("[unsupported block]"), "{text}");
        assert!(text.contains("```rust\nfn main() {}\n```"), "{text}");
        assert_eq!(
            doc["metadata"]["last_edited_time"],
            json!("2026-03-02T10:00:00.000Z")
        );
    }

    // A complete markdown answer is used as it is.
    let out = call(&client, "search", json!({"query": "quarterly"})).await;
    let id = text_json(&out)["results"][0]["id"].clone();
    let out = call(&client, "fetch", json!({"id": id})).await;
    let doc = text_json(&out);
    assert_eq!(doc["text"], json!("# Q1\n\nRevenue grew."));
    assert_eq!(doc["metadata"]["content_source"], json!("markdown"));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn notion_fetch_rides_out_a_429_and_a_500_mid_walk() {
    let page = Page::new("Busy page")
        .block(Block::toggle("Outer").child(Block::paragraph("inner one")))
        .block(Block::toggle("Second").child(Block::paragraph("inner two")))
        .markdown_truncated();
    let id = page.id.clone();
    // Requests: 1 page, 2 markdown, 3 children(page), 4 children(Outer) → 429, then a 500 later.
    let notion = FakeNotion::new()
        .token(TI)
        .page(page)
        .rate_limit_request(4)
        .fail_request(6)
        .start()
        .await;
    let servers = Servers::start(&[("NOTION_API_BASE_URL", &notion.url())]).await;
    let client = servers
        .client("/notion", &[("authorization", &format!("Bearer {TI}"))])
        .await;
    let started = std::time::Instant::now();
    let out = call(&client, "fetch", json!({"id": id})).await;
    assert_eq!(out.is_error, Some(false), "{}", harness::text(&out));
    let text = text_json(&out)["text"].as_str().unwrap().to_owned();
    assert!(
        text.contains("inner one") && text.contains("inner two"),
        "{text}"
    );
    assert!(
        started.elapsed() >= postern_notion_fake::RETRY_AFTER,
        "Retry-After was honoured"
    );
    assert!(
        notion.received().len() >= 7,
        "the 429 and the 500 were retried"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn notion_errors_are_tool_errors_with_notions_code() {
    let (notion, _, _) = workspace().await;
    let servers = Servers::start(&[
        ("NOTION_API_BASE_URL", &notion.url()),
        ("NOTION_MAX_RETRIES", "1"),
    ])
    .await;

    let client = servers
        .client("/notion", &[("authorization", &format!("Bearer {TI}"))])
        .await;
    let out = call(
        &client,
        "fetch",
        json!({"id": "0123456789abcdef0123456789abcdef"}),
    )
    .await;
    assert_eq!(out.is_error, Some(true));
    let text = harness::text(&out);
    assert!(
        text.contains("404 object_not_found") && text.contains("Could not find"),
        "{text}"
    );
    let out = call(&client, "fetch", json!({"id": "not an id"})).await;
    assert!(harness::text(&out).contains("is not a Notion id"));
    client.cancel().await.unwrap();

    let client = servers
        .client("/notion", &[("authorization", "Bearer revoked")])
        .await;
    let out = call(&client, "search", json!({"query": "x"})).await;
    assert!(
        harness::text(&out).contains("401 unauthorized"),
        "{}",
        harness::text(&out)
    );
    client.cancel().await.unwrap();

    let client = servers.client("/notion", &[]).await;
    let out = call(&client, "search", json!({"query": "x"})).await;
    assert!(
        harness::text(&out).contains("no Notion access token"),
        "{}",
        harness::text(&out)
    );
    client.cancel().await.unwrap();

    // Rate limited on every attempt: the budget runs out and the model is told when to retry.
    let limited = FakeNotion::new()
        .token(TI)
        .rate_limit_request(1)
        .rate_limit_request(2)
        .start()
        .await;
    let servers = Servers::start(&[
        ("NOTION_API_BASE_URL", &limited.url()),
        ("NOTION_MAX_RETRIES", "1"),
    ])
    .await;
    let client = servers
        .client("/notion", &[("authorization", &format!("Bearer {TI}"))])
        .await;
    let out = call(&client, "search", json!({"query": "x"})).await;
    assert!(
        harness::text(&out).contains("rate_limited"),
        "{}",
        harness::text(&out)
    );
    client.cancel().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// transport

#[tokio::test]
async fn every_supported_protocol_revision_works() {
    let dir = tempfile::tempdir().unwrap();
    let db = harness::demo_db(dir.path());
    let servers = Servers::start(&[("SQLITE_DB_FILE", &db)]).await;
    for version in [ProtocolVersion::V_2025_06_18, ProtocolVersion::V_2025_11_25] {
        let client = servers
            .client_with_version("/sqlite", version.clone())
            .await;
        let info = client.peer_info().expect("initialized");
        assert_eq!(info.protocol_version, version);
        let out = call(&client, "list_tables", json!({})).await;
        assert_eq!(text_json(&out)["tables"][0]["name"], json!("people"));
        client.cancel().await.unwrap();
    }
    let client = servers.client_discover("/sqlite").await;
    let out = call(&client, "list_tables", json!({})).await;
    assert_eq!(text_json(&out)["tables"][0]["name"], json!("people"));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn dns_rebinding_is_refused_unless_the_host_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let db = harness::demo_db(dir.path());
    let servers = Servers::start(&[
        ("SQLITE_DB_FILE", &db),
        ("ALLOWED_HOSTS", "mcp-servers:8080"),
    ])
    .await;
    let post = |host: &'static str, origin: Option<&'static str>| {
        servers.raw_initialize("/sqlite", host, origin)
    };
    assert_eq!(post("evil.example.com", None).await, 403);
    assert_eq!(
        post("localhost", Some("http://evil.example.com")).await,
        403
    );
    assert_eq!(post("mcp-servers:8080", None).await, 200);
    assert_eq!(post("localhost", Some("http://localhost:6274")).await, 200);
    assert_eq!(post("127.0.0.1", None).await, 200);
}

#[tokio::test]
async fn unconfigured_servers_are_not_mounted() {
    let servers = Servers::start(&[]).await;
    let response = reqwest::get(format!("{}/sqlite", servers.base))
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["servers"], json!(["/notion"]));
    let health = reqwest::get(format!("{}/healthz", servers.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
