//! What an operator reads: identity events in the audit file (sign-ins and failed ones, codes,
//! tokens issued, refreshed, refused and revoked, OAuth denials), the client id on tool-call
//! records, the user on refused requests, and the identity metrics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_access::AccessSettings;
use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::oauth_client::{self, CALLBACK, allow_fields, query_of, token};
use crate::support::world::*;
use crate::support::{self, client};

/// Every record of the audit file once `done` holds (the writer thread appends them).
async fn audit_records(path: &PathBuf, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<Value> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        if done(&lines) || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn events<'a>(lines: &'a [Value], event: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["event"] == json!(event))
        .collect()
}

#[tokio::test]
async fn sign_ins_tokens_and_revocations_are_audited_and_tool_calls_name_their_client() {
    let w = world().await;
    // The attack on the record: a typed "email" that forges a log line, as long as the form
    // takes (320 bytes).
    let forged = format!(
        "evil\n2026 INFO postern::audit: event=\"sign_in\" user=admin@corp\u{1b}[2J{}",
        "x".repeat(250)
    );
    assert!(forged.len() <= 320);
    assert_eq!(sign_in(&w, &forged, "guess").await.status(), 401);
    let jar = cookie(&w).await;
    let registered = register(&w, "none").await;
    let client_id = registered["client_id"].as_str().unwrap().to_owned();
    let code = code_for(&w, &jar, &client_id).await;
    let (status, body) = exchange(&w, &client_id, &code).await;
    assert_eq!(status, 200, "{body}");
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
        ],
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    let te = rotated["access_token"].as_str().unwrap().to_owned();
    let (status, _, _) = token(
        &w.base,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "pmr_not-a-token"),
            ("client_id", &client_id),
        ],
        None,
    )
    .await;
    assert_eq!(status, 400);

    for (id, tool) in [(1, "read_query"), (2, "write_query")] {
        let response = client()
            .post(format!("{}/sqlite", w.base))
            .bearer_auth(&te)
            .header("accept", "application/json, text/event-stream")
            .json(&call(id, tool, json!({"query": "SELECT 1"})))
            .send()
            .await
            .unwrap();
        response.bytes().await.unwrap();
    }
    let revoked = client()
        .post(format!("{}/.pomerium/mcp/revoke", w.base))
        .form(&[("token", te.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);

    let lines = audit_records(&w.audit, |lines| {
        !events(lines, "token_revoked").is_empty()
            && lines.iter().filter(|l| l.get("tool").is_some()).count() >= 2
    })
    .await;
    let dump = || {
        lines
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let failed = events(&lines, "sign_in_failed");
    assert_eq!(failed.len(), 1, "{}", dump());
    let typed = failed[0]["user"].as_str().unwrap();
    assert!(
        typed.starts_with("evil\n2026 INFO") && typed.ends_with('…') && typed.len() <= 256 + 3,
        "the typed email, capped (the JSON escapes it): {typed:?}"
    );
    assert_eq!(failed[0]["client_addr"], json!("127.0.0.1"));
    let signed_in = events(&lines, "sign_in");
    assert!(
        signed_in
            .iter()
            .any(|e| e["user"] == json!("ada@example.com")),
        "{}",
        dump()
    );
    for event in [
        "code_issued",
        "token_issued",
        "token_refreshed",
        "token_revoked",
    ] {
        let found = events(&lines, event);
        assert_eq!(found.len(), 1, "{event}: {}", dump());
        assert_eq!(found[0]["client_id"], json!(client_id), "{event}");
        assert_eq!(found[0]["user"], json!("ada@example.com"), "{event}");
        assert!(
            found[0]["request_id"]
                .as_str()
                .is_some_and(|r| r.len() == 16)
        );
    }
    let refused = events(&lines, "token_refused");
    assert_eq!(refused.len(), 1, "{}", dump());
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid_grant"),
        "{}",
        refused[0]
    );
    // Tool-call records, allowed and denied, carry the client whose token made them.
    for tool in ["read_query", "write_query"] {
        let record = lines
            .iter()
            .find(|l| l["tool"] == json!(tool))
            .unwrap_or_else(|| panic!("no {tool} record: {}", dump()));
        assert_eq!(record["client_id"], json!(client_id), "{record}");
        assert!(
            record.get("event").is_none(),
            "MCP records keep their shape"
        );
    }
}

#[tokio::test]
async fn an_oauth_denial_is_audited_and_counted() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let yaml = "insecure_server: true
routes:
  - {from: http://localhost, prefix: /mcp, to: 'http://127.0.0.1:9', allowed_users: [ada@example.com], mcp: {}}
";
    let config = postern_config::parse(yaml, Path::new("."), &HashMap::new()).unwrap();
    let access = postern_access::Access::new(
        support::memory_store().await,
        LocalUsers::new(vec![support::user("mallory@example.com", "M", &[], "pw")]),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        AccessSettings {
            audit_file: Some(audit.clone()),
            ..support::settings()
        },
    );
    let gateway = postern_gateway::Gateway::new(config, Arc::new(access));
    let stop = CancellationToken::new();
    tokio::spawn(postern_gateway::server::serve(
        listener,
        None,
        gateway.clone(),
        stop.clone(),
    ));

    let browser = support::browser();
    support::sign_in(&browser, &base, "mallory@example.com", "pw").await;
    let registered: Value = client()
        .post(format!("{base}/.pomerium/mcp/register"))
        .json(&json!({"redirect_uris": [CALLBACK], "client_name": "Test", "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap();
    let url = oauth_client::authorize_url(&base, client_id, CALLBACK, &format!("{base}/mcp"));
    let response = browser.get(&url).send().await.unwrap();
    let location = match response.status().as_u16() {
        303 | 302 => response.headers()["location"].to_str().unwrap().to_owned(),
        _ => {
            // A consent page first: allow, then the policy says no.
            let page = response.text().await.unwrap();
            let response = browser
                .post(format!("{base}/.pomerium/mcp/authorize"))
                .form(&allow_fields(&page))
                .send()
                .await
                .unwrap();
            response.headers()["location"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(query_of(&location)["error"], "access_denied", "{location}");

    let lines = audit_records(&audit, |l| !events(l, "authorize_denied").is_empty()).await;
    let denied = events(&lines, "authorize_denied");
    assert_eq!(denied.len(), 1, "{lines:?}");
    assert_eq!(denied[0]["user"], json!("mallory@example.com"));
    assert_eq!(denied[0]["client_id"], json!(client_id));
    assert_eq!(
        denied[0]["route"],
        json!("http://localhost/mcp"),
        "{}",
        denied[0]
    );

    // A proxied call the policy refuses counts too; its tool was never allowed, so `other`.
    let refused = browser
        .post(format!("{base}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&call(7, "read_query", json!({})))
        .send()
        .await
        .unwrap();
    // An MCP call refused is a JSON-RPC error (200).
    let answer = refused.text().await.unwrap();
    assert!(answer.contains("\"error\""), "{answer}");

    let metrics = gateway.metrics().render();
    for series in [
        "postern_policy_denials_total{place=\"request\"} 1",
        "postern_mcp_tool_calls_total{route=\"http://localhost/mcp\",tool=\"other\",decision=\"deny\"} 1",
        "postern_policy_denials_total{place=\"authorize\"} 1",
        "postern_sign_ins_total{result=\"ok\"} 1",
        "postern_sign_ins_total{result=\"failed\"} 0",
        "postern_mcp_tokens_total{event=\"issued\"} 0",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
    stop.cancel();
}

/// Reload: the per-request settings and the users swapped in with `Access::reload` are what the
/// next requests get: a new access-token lifetime, a new user, a removed user refused.
#[tokio::test]
async fn a_reload_puts_the_token_lifetime_and_the_users_in_force() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let yaml = "insecure_server: true
routes:
  - {from: http://localhost, prefix: /mcp, to: 'http://127.0.0.1:9', allow_any_authenticated_user: true, mcp: {}}
";
    let config = postern_config::parse(yaml, Path::new("."), &HashMap::new()).unwrap();
    let ada = support::user("ada@example.com", "Ada", &[], "pw");
    let access = Arc::new(postern_access::Access::new(
        support::memory_store().await,
        LocalUsers::new(vec![ada.clone()]),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        support::settings(),
    ));
    let gateway = postern_gateway::Gateway::new(config, access.clone());
    let stop = CancellationToken::new();
    tokio::spawn(postern_gateway::server::serve(
        listener,
        None,
        gateway,
        stop.clone(),
    ));

    let browser = support::browser();
    support::sign_in(&browser, &base, "ada@example.com", "pw").await;
    let registered: Value = client()
        .post(format!("{base}/.pomerium/mcp/register"))
        .json(&json!({"redirect_uris": [CALLBACK], "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap();
    let url = oauth_client::authorize_url(&base, client_id, CALLBACK, &format!("{base}/mcp"));
    let page = browser
        .get(&url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = browser
        .post(format!("{base}/.pomerium/mcp/authorize"))
        .form(&allow_fields(&page))
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let (status, body) =
        oauth_client::exchange_at(&base, client_id, &query_of(&location)["code"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], json!(3600), "{body}");

    // The file now says 5 minutes, and Bob replaces Ada.
    let reloaded = postern_config::parse(
        &format!("{yaml}mcp_access_token_ttl: 5m\n"),
        Path::new("."),
        &HashMap::new(),
    )
    .unwrap();
    let bob = support::user("bob@example.com", "Bob", &[], "pw");
    let settings = || AccessSettings {
        access_token_ttl: reloaded.mcp_access_token_ttl(),
        ..support::settings()
    };
    access.reload(settings(), LocalUsers::new(vec![ada.clone(), bob.clone()]));
    let refresh = |refresh_token: String| {
        let base = base.clone();
        let client_id = client_id.to_owned();
        async move {
            token(
                &base,
                &[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh_token.as_str()),
                    ("client_id", client_id.as_str()),
                ],
                None,
            )
            .await
        }
    };
    let (status, rotated, _) = refresh(body["refresh_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["expires_in"], json!(300), "{rotated}");
    support::sign_in(&support::browser(), &base, "bob@example.com", "pw").await;

    // Ada leaves the file: her client's next refresh is refused, and so is her sign-in.
    access.reload(settings(), LocalUsers::new(vec![bob]));
    let (status, refused, _) = refresh(rotated["refresh_token"].as_str().unwrap().to_owned()).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"], json!("invalid_grant"), "{refused}");
    let (cookie, csrf) = support::sign_in_form(&base).await;
    let refused = support::clicked(client().post(format!("{base}/.pomerium/sign_in")), &base)
        .header("cookie", cookie)
        .form(&[
            ("email", "ada@example.com"),
            ("password", "pw"),
            ("redirect_uri", "/"),
            ("csrf_token", csrf.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "a user removed from the file");
    stop.cancel();
}
