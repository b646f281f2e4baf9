//! Upstream tokens (TI): the gateway as the OAuth client of the MCP server's provider (Notion
//! style), connect/disconnect/routes for apps, and refresh failures.

use serde_json::{Value, json};

use crate::support;
use crate::support::client;
use crate::support::notion_world::{NotionWorld, notion_world, notion_world_with};
use crate::support::oauth_client::{
    CALLBACK, VERIFIER, allow_fields, authorize_url, query_of, token, urlencode,
};
use crate::support::oauth_provider::FakeOAuthProvider;
use crate::support::world::call;

#[tokio::test]
async fn the_notion_server_gets_the_users_upstream_token_and_the_client_only_the_te() {
    let w = notion_world().await;
    let NotionWorld {
        base,
        browser,
        provider,
        issuer,
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
    let authorize_url = authorize_url(base, id, CALLBACK, &format!("{base}/notion"));
    let consent = browser
        .get(&authorize_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let to_provider = browser
        .post(format!("{base}/.pomerium/mcp/authorize"))
        .form(&allow_fields(&consent))
        .send()
        .await
        .unwrap();
    let provider_url = to_provider.headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        provider_url.starts_with(&format!("{issuer}/authorize?")),
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
    let log = provider.grants();
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
    assert_eq!(provider.grants().len(), 2);

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

    // Issue 11 item 1: a link from anywhere only shows a confirmation page; the provider flow
    // starts on a clicked, session-bound POST from that page, never from another site's form.
    let page = w
        .browser
        .get(format!(
            "{base}/.pomerium/mcp/connect?redirect_url=/done&resource={}",
            url::form_urlencoded::byte_serialize(format!("{base}/notion").as_bytes())
                .collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "a GET does not go to the provider");
    assert!(page.headers().get("location").is_none());
    let fields = crate::support::hidden_fields(&page.text().await.unwrap());
    let connect = format!("{base}/.pomerium/mcp/connect");
    let cross_site = w
        .browser
        .post(&connect)
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-user", "?1")
        .form(&fields)
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    assert!(cross_site.headers().get("location").is_none());
    let unbound: Vec<(String, String)> = fields
        .iter()
        .filter(|(name, _)| name != "session_binding")
        .cloned()
        .collect();
    let forged = crate::support::clicked(w.browser.post(&connect), base)
        .form(&unbound)
        .send()
        .await
        .unwrap();
    assert_eq!(
        forged.status(),
        403,
        "a form without this session's binding"
    );
    assert!(forged.headers().get("location").is_none());
    assert_eq!(w.routes().await["servers"][0]["connected"], json!(false));

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
    crate::support::assert_reference_app_accepts(&listed);

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
    let _ = (&w.provider, &w.notion);
    w.stop.cancel();
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
    w.provider.answer_refreshes_with(503);
    let outage = call_notion().await;
    assert_eq!(outage.status(), 502);
    let body: Value = outage.json().await.unwrap();
    assert_eq!(
        body["error"],
        json!("upstream_token_refresh_failed"),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("upstream unavailable") && !m.contains("127.0.0.1")),
        "the provider's address and error stay in the log: {body}"
    );
    // ... and in the audit file, with the connection before it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let audit = loop {
        let text = std::fs::read_to_string(&w.audit).unwrap_or_default();
        if text.contains("upstream_token_refresh_failed") || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let events: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let event = |name: &str| events.iter().find(|e| e["event"] == json!(name)).cloned();
    let failed = event("upstream_token_refresh_failed").unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(failed["user"], json!("ada@example.com"), "{failed}");
    assert!(
        failed["route"].is_string() && failed["reason"].is_string(),
        "{failed}"
    );
    let connected = event("upstream_connected").unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(connected["user"], json!("ada@example.com"));
    assert_eq!(
        w.routes().await["servers"][0]["connected"],
        json!(true),
        "an outage keeps the TI"
    );

    w.provider.answer_refreshes_with(400);
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
    w.provider.answer_refreshes_with(200);
    w.stop.cancel();
}

#[tokio::test]
async fn apps_disconnect_by_server_url_or_by_host_as_pomeriums_apps_do_and_an_empty_list_is_refused()
 {
    let w = notion_world().await;
    let disconnect = |routes: Value| {
        w.browser
            .post(format!("{}/.pomerium/mcp/routes/disconnect", w.base))
            .json(&json!({ "routes": routes }))
            .send()
    };
    let empty = disconnect(json!([])).await.unwrap();
    assert_eq!(empty.status(), 400);

    // By host: what Pomerium's reference app sends.
    w.connect().await;
    let host_only = w.base.clone();
    let listed: Value = disconnect(json!([host_only]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["servers"][0]["connected"], json!(false), "{listed}");

    // Another host disconnects nothing.
    w.connect().await;
    let listed: Value = disconnect(json!(["https://elsewhere.example"]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["servers"][0]["connected"], json!(true), "{listed}");
    assert_eq!(
        w.disconnect().await["servers"][0]["connected"],
        json!(false)
    );
    w.stop.cancel();
}

#[tokio::test]
async fn the_provider_gets_current_pomeriums_callback_or_the_seeds_when_it_was_registered_so() {
    // The default: what current Pomerium sends, and what the docs and `postern up` say.
    let w = notion_world().await;
    w.connect().await;
    assert_eq!(
        *w.redirect_uris.lock().unwrap(),
        [format!("{}/.pomerium/mcp/client/oauth/callback", w.base)]
    );
    w.stop.cancel();

    // A provider registered with the seed's path keeps working: the authorization and the code
    // exchange both name it (the fake provider refuses a code exchanged for another one).
    let seed = notion_world_with("        callback_path: /.pomerium/mcp/oauth/callback").await;
    seed.connect().await;
    assert_eq!(
        *seed.redirect_uris.lock().unwrap(),
        [format!("{}/.pomerium/mcp/oauth/callback", seed.base)]
    );
    assert_eq!(seed.routes().await["servers"][0]["connected"], json!(true));
    seed.stop.cancel();
}

/// RFC 8707: a statically configured provider is asked for a TI for the route's upstream (in
/// the authorization request, the code exchange and every refresh), or for the `resource` the
/// file names, or, with `resource: ""`, for none.
#[tokio::test]
async fn static_providers_are_asked_for_the_upstream_resource_unless_told_otherwise() {
    let resource_of = |w: &NotionWorld| {
        let authorized: Vec<Option<String>> = w
            .authorizations
            .lock()
            .unwrap()
            .iter()
            .map(|url| {
                url.query_pairs()
                    .find(|(k, _)| k == "resource")
                    .map(|(_, v)| v.into_owned())
            })
            .collect();
        let exchanged: Vec<Option<String>> = w
            .provider
            .token_requests()
            .iter()
            .map(|r| r.get("resource").cloned())
            .collect();
        assert!(!exchanged.is_empty());
        for sent in exchanged.iter().chain(&authorized) {
            assert_eq!(sent, &authorized[0], "{authorized:?} {exchanged:?}");
        }
        authorized[0].clone()
    };
    let w = notion_world().await;
    w.connect().await;
    let upstream = resource_of(&w).expect("the upstream is the default resource");
    let upstream = url::Url::parse(&upstream).unwrap();
    assert_eq!(
        (upstream.host_str(), upstream.path()),
        (Some("127.0.0.1"), "/notion")
    );
    w.stop.cancel();

    let named = notion_world_with("        resource: https://mcp.notion.test/mcp").await;
    named.connect().await;
    assert_eq!(
        resource_of(&named).as_deref(),
        Some("https://mcp.notion.test/mcp")
    );
    named.stop.cancel();

    let none = notion_world_with("        resource: ''").await;
    none.connect().await;
    assert_eq!(resource_of(&none), None);
    none.stop.cancel();
}

#[tokio::test]
async fn connect_without_a_resource_offers_this_hosts_servers_that_need_connecting() {
    // Pomerium's reference app sends no `resource`: with two servers on this host that need an
    // upstream account, the user chooses; with one left, that one is asked for; with none, the
    // app gets its redirect back (302, as from Pomerium).
    let provider = FakeOAuthProvider::new()
        .confidential_client("c", "s")
        .issues("ti-1");
    let issuer = format!("{}/docs", provider.serve().await);
    let upstream = |prefix: &str, name: &str| {
        format!(
            "  - from: http://localhost
    prefix: /{prefix}
    to: http://127.0.0.1:9/{prefix}
    name: {name}
    allow_any_authenticated_user: true
    mcp:
      upstream_oauth2:
        client_id: c
        client_secret: s
        endpoint: {{auth_url: '{issuer}/authorize', token_url: '{issuer}/token'}}
"
        )
    };
    let yaml = format!(
        "insecure_server: true\nroutes:\n{}{}",
        upstream("docs", "Docs"),
        upstream("wiki", "Wiki")
    );
    let (base, browser, stop) = support::gateway_with_ada(&yaml, support::settings()).await;
    let open = |query: &str| {
        browser
            .get(format!("{base}/.pomerium/mcp/connect?{query}"))
            .send()
    };

    let missing = open("").await.unwrap();
    assert_eq!(missing.status(), 400);
    assert!(
        missing
            .text()
            .await
            .unwrap()
            .contains("redirect_url is required")
    );

    let chooser = open("redirect_url=/done").await.unwrap();
    assert_eq!(chooser.status(), 200);
    let page = chooser.text().await.unwrap();
    assert!(
        page.contains("Which account") && page.contains("Docs") && page.contains("Wiki"),
        "{page}"
    );
    let docs_link = format!(
        "/.pomerium/mcp/connect?resource={}&amp;redirect_url=%2Fdone",
        urlencode(&format!("{base}/docs"))
    );
    assert!(page.contains(&docs_link), "{page}");

    // Connect Docs: the provider approves at once.
    let start = support::connect(
        &browser,
        &base,
        &format!(
            "redirect_url=/done&resource={}",
            urlencode(&format!("{base}/docs"))
        ),
    )
    .await;
    let back = browser
        .get(start.headers()["location"].to_str().unwrap())
        .send()
        .await
        .unwrap();
    let done = browser
        .get(back.headers()["location"].to_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(done.headers()["location"], "/done");

    // Only Wiki is left: its confirmation page, no chooser.
    let next = open("redirect_url=/done")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(next.contains("Connect your Wiki account"), "{next}");
    stop.cancel();
}

/// Without `auth_style`, a provider that wants the client's credentials in the form (as Pomerium
/// sends them) works: Basic first, `invalid_client`, the form, and the form from then on.
#[tokio::test]
async fn without_auth_style_the_client_authentication_the_provider_takes_is_found_and_kept() {
    let provider = FakeOAuthProvider::new()
        .form_only_client("formy", "s3cret")
        .issues("ti-1");
    let issuer = format!("{}/forms", provider.serve().await);
    let yaml = format!(
        "insecure_server: true
routes:
  - from: http://localhost
    prefix: /docs
    to: http://127.0.0.1:9/docs
    allow_any_authenticated_user: true
    mcp:
      upstream_oauth2:
        client_id: formy
        client_secret: s3cret
        endpoint: {{auth_url: '{issuer}/authorize', token_url: '{issuer}/token'}}
"
    );
    let (base, browser, stop) = support::gateway_with_ada(&yaml, support::settings()).await;
    let connect = || async {
        let query = format!(
            "redirect_url=/done&resource={}",
            urlencode(&format!("{base}/docs"))
        );
        let start = support::connect(&browser, &base, &query).await;
        let back = browser
            .get(start.headers()["location"].to_str().unwrap())
            .send()
            .await
            .unwrap();
        let done = browser
            .get(back.headers()["location"].to_str().unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(done.headers()["location"], "/done", "connected");
    };
    connect().await;
    let requests = provider.token_requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert!(requests[0].contains_key("(authorization header)"));
    assert_eq!(
        requests[1].get("client_secret").map(String::as_str),
        Some("s3cret")
    );
    assert!(!requests[1].contains_key("(authorization header)"));

    // Learned: the next exchange sends the form at once.
    browser
        .post(format!("{base}/.pomerium/mcp/routes/disconnect"))
        .json(&json!({"routes": [format!("{base}/docs")]}))
        .send()
        .await
        .unwrap();
    connect().await;
    let requests = provider.token_requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(
        requests[2].get("client_id").map(String::as_str),
        Some("formy")
    );
    stop.cancel();
}

/// A sibling site's form (same-site, so the Lax session cookie rides along) cannot disconnect
/// the user's upstream accounts: a caller by cookie must post from this origin.
#[tokio::test]
async fn a_disconnect_posted_from_another_origin_with_the_cookie_is_refused() {
    let w = notion_world().await;
    w.connect().await;
    let forged = w
        .browser
        .post(format!("{}/.pomerium/mcp/routes/disconnect", w.base))
        .header("origin", "http://evil.localhost")
        .header("sec-fetch-site", "same-site")
        .header("content-type", "text/plain")
        .body(json!({"routes": [w.base.clone()]}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(
        w.routes().await["servers"][0]["connected"],
        json!(true),
        "still connected"
    );
    // From this origin it works.
    let own = w
        .browser
        .post(format!("{}/.pomerium/mcp/routes/disconnect", w.base))
        .header("origin", w.base.as_str())
        .json(&json!({"routes": [format!("{}/notion", w.base)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
    assert_eq!(w.routes().await["servers"][0]["connected"], json!(false));
    w.stop.cancel();
}

/// Ada's TE for the app route of a Notion world, with her Notion account connected (its TI
/// expires within the refresh skew: the next call refreshes it); and a function that calls
/// Notion's `search` with it.
async fn connected_te(w: &NotionWorld) -> String {
    w.connect().await;
    w.browser
        .get(format!("{}/app/x", w.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned()
}

async fn search_notion(base: &str, te: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/notion"))
        .bearer_auth(te)
        .header("accept", "application/json, text/event-stream")
        .json(&call(1, "search", json!({"query": "r"})))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn after_a_provider_outage_the_kept_ti_is_refreshed_on_the_next_call() {
    let w = notion_world().await;
    let te = connected_te(&w).await;
    w.provider.answer_refreshes_with(503);
    for _ in 0..3 {
        let outage = search_notion(&w.base, &te).await;
        assert_eq!(outage.status(), 502);
        let body: Value = outage.json().await.unwrap();
        assert_eq!(
            body["error"],
            json!("upstream_token_refresh_failed"),
            "{body}"
        );
    }
    assert_eq!(w.routes().await["servers"][0]["connected"], json!(true));

    // The provider is back: the next call refreshes the kept TI and reaches Notion with the new
    // one, without the user reconnecting.
    w.provider.answer_refreshes_with(200);
    let back = search_notion(&w.base, &te).await;
    assert_eq!(back.status(), 200);
    let text = back.text().await.unwrap();
    assert!(text.contains("Roadmap"), "{text}");
    assert_eq!(
        w.provider.grants().last().map(String::as_str),
        Some("refresh_token rt-1"),
        "the refresh token from before the outage was used"
    );
    let refreshes = w.provider.refreshes();
    // Refreshed: the next call needs no refresh.
    assert_eq!(search_notion(&w.base, &te).await.status(), 200);
    assert_eq!(w.provider.refreshes(), refreshes);
    w.stop.cancel();
}

#[tokio::test]
async fn concurrent_calls_on_a_slow_provider_share_one_refresh() {
    let w = notion_world().await;
    let te = connected_te(&w).await;
    w.provider
        .answer_refreshes_after(std::time::Duration::from_secs(2));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (base, te) = (w.base.clone(), te.clone());
            tokio::spawn(async move {
                let response = search_notion(&base, &te).await;
                (response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    for call in calls {
        let (status, text) = call.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("Roadmap"), "{text}");
    }
    assert_eq!(
        w.provider.refreshes(),
        1,
        "eight calls, one refresh at the provider: {:?}",
        w.provider.grants()
    );
    w.stop.cancel();
}

/// The upstream token endpoint gets 15 s (the broker's HTTP client limit, not configurable); a
/// provider that never answers costs every waiting caller that once, not once per caller
/// queued behind it.
#[tokio::test]
async fn a_provider_that_hangs_is_cut_off_and_every_waiting_caller_gets_502_at_once() {
    let w = notion_world().await;
    let te = connected_te(&w).await;
    w.provider
        .answer_refreshes_after(std::time::Duration::from_secs(3600));
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (base, te) = (w.base.clone(), te.clone());
            tokio::spawn(async move {
                let response = tokio::time::timeout(
                    std::time::Duration::from_secs(45),
                    search_notion(&base, &te),
                )
                .await
                .expect("a caller still waiting after 45 s: the hang reached the client");
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                (status, body, started.elapsed())
            })
        })
        .collect();
    for call in calls {
        let (status, body, took) = call.await.unwrap();
        assert_eq!(status, 502, "{body}");
        assert_eq!(
            body["error"],
            json!("upstream_token_refresh_failed"),
            "{body}"
        );
        // 15 s, and room for a loaded machine; a second 15 s (a caller that queued behind the
        // first and then asked the hanging provider again) is 30 s.
        assert!(
            took < std::time::Duration::from_secs(25),
            "a caller waited {took:?}"
        );
    }
    assert_eq!(w.provider.refreshes(), 1, "{:?}", w.provider.grants());
    assert_eq!(
        w.routes().await["servers"][0]["connected"],
        json!(true),
        "a hang keeps the TI"
    );
    // And when the provider answers again, so does the gateway.
    w.provider.answer_refreshes_after(std::time::Duration::ZERO);
    assert_eq!(search_notion(&w.base, &te).await.status(), 200);
    w.stop.cancel();
}
