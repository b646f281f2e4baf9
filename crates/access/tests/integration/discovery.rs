//! Upstream OAuth auto-discovery against a fake upstream MCP server that runs its own OAuth
//! (protected resource metadata, authorization server metadata, registration, authorize, token),
//! through a running gateway: the happy path (hint, DCR, `resource` sent, TI injected, expiry and
//! refresh), the root well-known fallback, scope step-up on 403, the refusals (issuer mismatch,
//! resource mismatch), a revoked refresh token, and a plain 401 passed through.
//! The end-to-end run with real parts (the TypeScript SDK's example server with its own
//! authorization server, and the SDK as the client) is `tests/mcp-client/discovery.sh`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use postern_access::Access;
use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::support::oauth_provider::FakeOAuthProvider;

/// What the fake upstream saw and how it behaves.
#[derive(Default)]
struct Upstream {
    base: String,
    /// Serve protected resource metadata at the root well-known URL (for the `root` server).
    serve_root: bool,
    /// Bearer tokens the MCP endpoint saw.
    bearers: Vec<String>,
    /// An "internal admin" service on another port of the same machine, which the `ssrf*`
    /// servers' metadata names as an endpoint.
    admin_base: String,
    /// Requests the internal admin service received (path and body).
    admin_requests: Vec<String>,
    /// The `resource` of the root protected resource metadata, when not `{base}/root/mcp`.
    root_resource: Option<String>,
    /// Unauthenticated requests the MCP endpoints received (the gateway's probes among them).
    anonymous: usize,
}

type Shared = Arc<Mutex<Upstream>>;

fn challenge(base: &str, server: &str, hint: bool) -> String {
    if hint {
        format!(
            "Bearer error=\"invalid_token\", resource_metadata=\"{base}/.well-known/oauth-protected-resource/{server}/mcp\""
        )
    } else {
        "Bearer realm=\"upstream\"".into()
    }
}

/// The MCP endpoint: its tokens work, except that `stepup` wants `files:write` (`narrow-*`
/// tokens lack it).
async fn mcp(
    State(up): State<Shared>,
    UrlPath(server): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let mut up = up.lock().unwrap();
    let base = up.base.clone();
    match bearer {
        // `greedy` wants a scope no authorization gets.
        Some(token) if server == "greedy" => {
            up.bearers.push(token);
            (
                StatusCode::FORBIDDEN,
                [(
                    "www-authenticate",
                    "Bearer error=\"insufficient_scope\", scope=\"files:read files:admin\"",
                )],
                "",
            )
                .into_response()
        }
        Some(token)
            if token.starts_with("good-")
                || (token.starts_with("narrow-") && server != "stepup") =>
        {
            up.bearers.push(token);
            axum::Json(json!({"jsonrpc": "2.0", "id": 1, "result": {}})).into_response()
        }
        Some(token) if token.starts_with("narrow-") => {
            up.bearers.push(token);
            (
                StatusCode::FORBIDDEN,
                [(
                    "www-authenticate",
                    "Bearer error=\"insufficient_scope\", scope=\"files:read files:write\"",
                )],
                "",
            )
                .into_response()
        }
        _ => {
            if bearer.is_none() {
                up.anonymous += 1;
            }
            (
                StatusCode::UNAUTHORIZED,
                [(
                    "www-authenticate",
                    challenge(&base, &server, server != "root" && server != "plain"),
                )],
                "",
            )
                .into_response()
        }
    }
}

async fn resource_metadata(State(up): State<Shared>, UrlPath(server): UrlPath<String>) -> Response {
    let base = up.lock().unwrap().base.clone();
    if server == "plain" || server == "root" {
        return StatusCode::NOT_FOUND.into_response();
    }
    let resource = if server == "badresource" {
        "https://elsewhere.example/mcp".to_owned()
    } else {
        format!("{base}/{server}/mcp")
    };
    // `untrusted`: the authorization server is on a host that is neither the route's upstream
    // host nor listed (the same machine under another name), over plain http.
    // `otherport`: on another port of the upstream's host (the internal admin service).
    let admin = up.lock().unwrap().admin_base.clone();
    let authorization_server = if server == "untrusted" {
        format!("{}/{server}", base.replace("127.0.0.1", "localhost"))
    } else if server == "otherport" {
        format!("{admin}/{server}")
    } else {
        format!("{base}/{server}")
    };
    axum::Json(json!({
        "resource": resource,
        "authorization_servers": [authorization_server],
        "scopes_supported": ["files:read"],
    }))
    .into_response()
}

async fn root_metadata(State(up): State<Shared>) -> Response {
    let up = up.lock().unwrap();
    if !up.serve_root {
        return StatusCode::NOT_FOUND.into_response();
    }
    let resource = up
        .root_resource
        .clone()
        .unwrap_or_else(|| format!("{}/root/mcp", up.base));
    axum::Json(json!({
        "resource": resource,
        "authorization_servers": [format!("{}/root", up.base)],
    }))
    .into_response()
}

async fn as_metadata(State(up): State<Shared>, UrlPath(server): UrlPath<String>) -> Response {
    let base = up.lock().unwrap().base.clone();
    let issuer = if server == "badissuer" {
        "https://impostor.example".to_owned()
    } else {
        format!("{base}/{server}")
    };
    // `ssrf`: the token endpoint is an internal service on another port of the same host;
    // `ssrfreg`: the registration endpoint is.
    let admin = up.lock().unwrap().admin_base.clone();
    let token_endpoint = if server == "ssrf" {
        format!("{admin}/internal-admin/token")
    } else {
        format!("{base}/{server}/token")
    };
    let registration_endpoint = if server == "ssrfreg" {
        format!("{admin}/internal-admin/register")
    } else {
        format!("{base}/{server}/register")
    };
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}/{server}/authorize"),
        "token_endpoint": token_endpoint,
        "registration_endpoint": registration_endpoint,
        "code_challenge_methods_supported": ["S256"],
        "response_types_supported": ["code"],
        "client_id_metadata_document_supported": server == "cimd",
        "scopes_supported": if server == "offline" { json!(["files:read", "offline_access"]) } else { json!(["files:read"]) },
    }))
    .into_response()
}

/// An MCP server whose own authorization server is the shared fake provider, at
/// `{base}/{server}` for each server name; approves at once, and a code for an authorization
/// that asked for `files:write` gets `good-1` (else `narrow-1`).
async fn fake_upstream(serve_root: bool) -> (String, Shared, FakeOAuthProvider) {
    let provider = FakeOAuthProvider::new()
        .confidential_client("my-client", "s3cret")
        .issues("narrow-1")
        .issues_for_scope("files:write", "good-1")
        .refreshes_to("good-refreshed");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let shared: Shared = Arc::new(Mutex::new(Upstream {
        base: base.clone(),
        serve_root,
        ..Default::default()
    }));
    let app = axum::Router::new()
        .route("/{server}/mcp", post(mcp))
        .route(
            "/.well-known/oauth-protected-resource/{server}/mcp",
            get(resource_metadata),
        )
        .route("/.well-known/oauth-protected-resource", get(root_metadata))
        .route(
            "/.well-known/oauth-authorization-server/{server}",
            get(as_metadata),
        )
        .with_state(shared.clone())
        .merge(provider.router());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    // The internal admin service records whatever reaches it.
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    shared.lock().unwrap().admin_base = format!(
        "http://127.0.0.1:{}",
        admin_listener.local_addr().unwrap().port()
    );
    let seen = shared.clone();
    let admin = axum::Router::new().fallback(move |uri: axum::http::Uri, body: String| {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .admin_requests
                .push(format!("{uri} {body}"));
            axum::Json(json!({"access_token": "stolen", "client_id": "stolen"}))
        }
    });
    tokio::spawn(async move { axum::serve(admin_listener, admin).await.unwrap() });
    (base, shared, provider)
}

struct World {
    base: String,
    browser: reqwest::Client,
    upstream: Shared,
    /// The upstream's authorization server.
    provider: FakeOAuthProvider,
    /// The authorization server of the upstream with no OAuth metadata (never reached).
    plain_provider: FakeOAuthProvider,
    _stop: CancellationToken,
}

async fn world() -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (up, upstream, provider) = fake_upstream(true).await;
    let (plain_base, _, plain_provider) = fake_upstream(false).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut yaml = String::from("insecure_server: true\nroutes:\n");
    for server in [
        "hint",
        "stepup",
        "cimd",
        "root",
        "badissuer",
        "badresource",
        "untrusted",
        "ssrf",
        "ssrfreg",
        "greedy",
        "offline",
        "otherport",
    ] {
        yaml.push_str(&format!(
            "  - {{from: http://localhost, prefix: /{server}, to: {up}/{server}/mcp, allow_any_authenticated_user: true, mcp: {{}}}}\n"
        ));
    }
    // A client the administrator registered by hand: discovery finds the endpoints only.
    yaml.push_str(&format!(
        "  - {{from: http://localhost, prefix: /configured, to: {up}/configured/mcp, allow_any_authenticated_user: true, mcp: {{server: {{upstream_oauth2: {{client_id: my-client, client_secret: s3cret, scopes: [files:read, files:write]}}}}}}}}\n"
    ));
    // Only the scopes configured (as Pomerium allows): Postern registers its own client.
    yaml.push_str(&format!(
        "  - {{from: http://localhost, prefix: /scoped, to: {up}/scoped/mcp, allow_any_authenticated_user: true, mcp: {{server: {{upstream_oauth2: {{scopes: [files:read]}}}}}}}}\n"
    ));
    yaml.push_str(&format!(
        "  - {{from: http://localhost, prefix: /plain, to: {plain_base}/plain/mcp, allow_any_authenticated_user: true, mcp: {{}}}}\n"
    ));
    let access = Access::new(
        support::memory_store().await,
        LocalUsers::new(vec![support::user("ada@example.com", "Ada", &[], "pw")]),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        support::settings(),
    );
    let stop = CancellationToken::new();
    support::serve(listener, &yaml, access, &stop);
    let base = format!("http://localhost:{port}");
    let browser = support::browser();
    support::sign_in(&browser, &base, "ada@example.com", "pw").await;
    World {
        base,
        browser,
        upstream,
        provider,
        plain_provider,
        _stop: stop,
    }
}

impl World {
    async fn call(&self, server: &str) -> (u16, Value) {
        let response = self
            .browser
            .post(format!("{}/{server}", self.base))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Connects the upstream account from the browser: `/connect`, the upstream's authorize
    /// (which approves at once), Postern's callback. Returns the authorize URL.
    async fn connect(&self, server: &str) -> url::Url {
        let start = support::connect(
            &self.browser,
            &self.base,
            &format!(
                "redirect_url=/done&resource={}",
                url::form_urlencoded::byte_serialize(format!("{}/{server}", self.base).as_bytes())
                    .collect::<String>()
            ),
        )
        .await;
        assert_eq!(start.status(), 303, "{}", start.text().await.unwrap());
        let authorize = url::Url::parse(start.headers()["location"].to_str().unwrap()).unwrap();
        let back = self.browser.get(authorize.clone()).send().await.unwrap();
        let done = self
            .browser
            .get(back.headers()["location"].to_str().unwrap())
            .send()
            .await
            .unwrap();
        let location = done
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            location.as_deref(),
            Some("/done"),
            "{}",
            done.text().await.unwrap()
        );
        authorize
    }

    async fn server_state(&self, server: &str) -> (bool, bool) {
        let list: Value = self
            .browser
            .get(format!("{}/.pomerium/mcp/routes", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let entry = list["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["url"] == format!("{}/{server}", self.base))
            .unwrap_or_else(|| panic!("{server} not listed: {list}"))
            .clone();
        (
            entry["needs_oauth"].as_bool().unwrap(),
            entry["connected"].as_bool().unwrap(),
        )
    }
}

#[tokio::test]
async fn an_upstream_with_its_own_oauth_is_discovered_connected_and_refreshed() {
    let w = world().await;
    assert_eq!(
        w.server_state("hint").await,
        (false, true),
        "before discovery the server needs nothing, so it counts as connected"
    );

    // The upstream's 401 makes the gateway discover its OAuth; the client is told to authorize.
    let (status, body) = w.call("hint").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("upstream_not_connected")),
        "{body}"
    );
    assert_eq!(w.server_state("hint").await, (true, false));
    assert_eq!(w.provider.registrations(), 1, "registered once");

    // Connecting: PKCE, the discovered client id, `resource`, the scopes the resource lists.
    w.provider.expire_code_tokens_in(1);
    let authorize = w.connect("hint").await;
    let query: HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    let upstream_base = w.upstream.lock().unwrap().base.clone();
    assert_eq!(query["resource"], format!("{upstream_base}/hint/mcp"));
    assert_eq!(query["scope"], "files:read");
    let exchange = w.provider.token_requests()[0].clone();
    assert_eq!(exchange["grant_type"], "authorization_code");
    assert_eq!(exchange["resource"], format!("{upstream_base}/hint/mcp"));
    assert_eq!(exchange["client_id"], "postern-at-upstream");
    assert!(exchange.contains_key("code_verifier"));
    assert_eq!(w.server_state("hint").await, (true, true));

    // The TI expires at once: it is refreshed at the stored token endpoint (with `resource`)
    // and the new one is sent.
    let (status, body) = w.call("hint").await;
    assert_eq!(status, 200, "{body}");
    let refresh = w.provider.token_requests()[1].clone();
    assert_eq!(refresh["grant_type"], "refresh_token");
    assert_eq!(refresh["resource"], format!("{upstream_base}/hint/mcp"));
    assert_eq!(
        w.upstream
            .lock()
            .unwrap()
            .bearers
            .last()
            .map(String::as_str),
        Some("good-refreshed")
    );

    // The user revokes Postern at the upstream: the refresh is refused, the TI forgotten, and
    // the client told to authorize again (which reconnects the account).
    let response = w
        .browser
        .post(format!("{}/.pomerium/mcp/routes/disconnect", w.base))
        .json(&json!({"routes": [format!("{}/hint", w.base)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    w.connect("hint").await;
    w.provider.answer_refreshes_with(400);
    let (status, body) = w.call("hint").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("upstream_not_connected")),
        "{body}"
    );
    assert_eq!(w.server_state("hint").await, (true, false));
    assert_eq!(
        w.provider.registrations(),
        1,
        "the registration is kept and reused"
    );
}

#[tokio::test]
async fn insufficient_scope_widens_the_scopes_of_the_next_authorization() {
    let w = world().await;
    assert_eq!(w.call("stepup").await.0, 401);
    let authorize = w.connect("stepup").await;
    assert_eq!(
        authorize
            .query_pairs()
            .find(|(k, _)| k == "scope")
            .unwrap()
            .1,
        "files:read"
    );
    // The upstream answers 403 insufficient_scope: the TI is forgotten, the client told to
    // authorize again, and that authorization asks for the wider scope.
    let (status, body) = w.call("stepup").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("upstream_not_connected")),
        "{body}"
    );
    assert_eq!(w.server_state("stepup").await, (true, false));
    let authorize = w.connect("stepup").await;
    assert_eq!(
        authorize
            .query_pairs()
            .find(|(k, _)| k == "scope")
            .unwrap()
            .1,
        "files:read files:write"
    );
    let (status, body) = w.call("stepup").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        w.upstream
            .lock()
            .unwrap()
            .bearers
            .last()
            .map(String::as_str),
        Some("good-1")
    );
}

#[tokio::test]
async fn discovery_uses_the_root_well_known_when_there_is_no_hint() {
    let w = world().await;
    let (status, body) = w.call("root").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("upstream_not_connected")),
        "{body}"
    );
    assert_eq!(w.server_state("root").await, (true, false));
}

#[tokio::test]
async fn discovery_refuses_a_mismatched_issuer_or_resource_and_passes_plain_401s_through() {
    let w = world().await;
    let (status, body) = w.call("badissuer").await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("authorization server metadata") && message.contains("impostor.example"),
        "{message}"
    );
    assert_eq!(
        w.server_state("badissuer").await,
        (false, true),
        "nothing stored"
    );

    let (status, body) = w.call("badresource").await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("protected resource metadata") && message.contains("elsewhere.example"),
        "{message}"
    );

    // No metadata anywhere: the upstream's own 401 reaches the client unchanged.
    let response = w
        .browser
        .post(format!("{}/plain", w.base))
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"upstream\""
    );
    assert_eq!(w.plain_provider.registrations(), 0);
}

#[tokio::test]
async fn an_upstream_that_forgot_postern_s_registration_gets_a_new_one() {
    let w = world().await;
    assert_eq!(w.call("hint").await.0, 401);
    assert_eq!(w.provider.registrations(), 1);
    w.provider.forget_clients(true);
    // The code exchange is refused with invalid_client: the user sees why.
    let start = support::connect(
        &w.browser,
        &w.base,
        &format!(
            "redirect_url=/done&resource={}",
            url::form_urlencoded::byte_serialize(format!("{}/hint", w.base).as_bytes())
                .collect::<String>()
        ),
    )
    .await;
    let back = w
        .browser
        .get(start.headers()["location"].to_str().unwrap())
        .send()
        .await
        .unwrap();
    let failed = w
        .browser
        .get(back.headers()["location"].to_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 502);
    // The user learns the provider, the status and the OAuth error; the provider's own text
    // (here with markup and a phone number) stays in the log.
    let page = failed.text().await.unwrap();
    let upstream_host = "127.0.0.1";
    assert!(
        page.contains("invalid_client")
            && page.contains("HTTP 401")
            && page.contains(upstream_host),
        "{page}"
    );
    assert!(
        !page.contains("unknown client") && !page.contains("555"),
        "{page}"
    );
    // The next upstream 401 discovers and registers again; connecting then works.
    w.provider.forget_clients(false);
    assert_eq!(w.call("hint").await.0, 401);
    assert_eq!(w.provider.registrations(), 2, "registered again");
    w.connect("hint").await;
    assert_eq!(w.call("hint").await.0, 200);
}

#[tokio::test]
async fn an_upstream_that_accepts_client_metadata_documents_needs_no_registration() {
    let w = world().await;
    assert_eq!(w.call("cimd").await.0, 401);
    let authorize = w.connect("cimd").await;
    let client_id = authorize
        .query_pairs()
        .find(|(k, _)| k == "client_id")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(
        client_id,
        format!("{}/.pomerium/mcp/client/metadata.json", w.base)
    );
    assert_eq!(w.provider.registrations(), 0);
    assert_eq!(w.call("cimd").await.0, 200);
}

#[tokio::test]
async fn discovery_only_talks_to_the_upstream_host_and_listed_hosts() {
    let w = world().await;
    let (status, body) = w.call("untrusted").await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("authorization server metadata") && message.contains("https"),
        "an unlisted host over plain http is refused: {message}"
    );
}

#[tokio::test]
async fn a_configured_client_is_used_with_discovered_endpoints() {
    let w = world().await;
    assert_eq!(w.call("configured").await.0, 401);
    let authorize = w.connect("configured").await;
    assert_eq!(
        authorize
            .query_pairs()
            .find(|(k, _)| k == "scope")
            .unwrap()
            .1,
        "files:read files:write",
        "the configured scopes"
    );
    assert_eq!(w.provider.registrations(), 0);
    let exchange = w.provider.token_requests()[0].clone();
    assert_eq!(
        exchange["(authorization header)"],
        format!(
            "Basic {}",
            base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                "my-client:s3cret"
            )
        ),
        "the configured secret, by HTTP Basic"
    );
    assert_eq!(w.call("configured").await.0, 200);
}

/// Issue 11 item 4: the metadata of a discovered authorization server names an internal service
/// (another port of the same machine) as its token or registration endpoint. The gateway must
/// refuse the metadata before it sends that service anything: no code, no PKCE verifier, no
/// registration. (Before the fix, the code and verifier were POSTed there.)
#[tokio::test]
async fn discovered_endpoints_off_the_issuer_s_origin_get_nothing() {
    let w = world().await;
    for (server, endpoint) in [
        ("ssrf", "token_endpoint"),
        ("ssrfreg", "registration_endpoint"),
    ] {
        let (status, body) = w.call(server).await;
        // Try to connect the account anyway, following the redirects as a browser would.
        let mut next = format!(
            "{}/.pomerium/mcp/connect?redirect_url=/done&resource={}",
            w.base,
            url::form_urlencoded::byte_serialize(format!("{}/{server}", w.base).as_bytes())
                .collect::<String>()
        );
        for _ in 0..4 {
            let response = w.browser.get(&next).send().await.unwrap();
            match response.headers().get("location") {
                Some(location) if location.to_str().unwrap().starts_with("http") => {
                    next = location.to_str().unwrap().to_owned();
                }
                _ => break,
            }
        }
        assert_eq!(
            w.upstream.lock().unwrap().admin_requests,
            Vec::<String>::new(),
            "{server}: the internal service received requests"
        );
        assert_eq!(status, 502, "{server}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(endpoint)
                && message.contains("issuer's origin")
                && message.contains("mcp_allowed_as_metadata_domains"),
            "{server}: {message}"
        );
        assert_eq!(
            w.server_state(server).await,
            (false, true),
            "{server}: nothing stored"
        );
    }
}

#[tokio::test]
async fn upstream_oauth2_with_only_scopes_registers_postern_and_asks_for_those_scopes() {
    let w = world().await;
    assert_eq!(w.call("scoped").await.0, 401);
    let authorize = w.connect("scoped").await;
    assert_eq!(
        authorize
            .query_pairs()
            .find(|(k, _)| k == "scope")
            .unwrap()
            .1,
        "files:read",
        "the configured scopes"
    );
    assert_eq!(
        w.provider.registrations(),
        1,
        "no client configured: registered"
    );
    assert_eq!(w.call("scoped").await.0, 200);
}

/// Issue 14: a server whose root protected resource metadata names its origin (RFC 9728 clients
/// accept a same-origin path prefix of the server URL) is discovered, with that `resource` sent
/// upstream; one naming another origin (the same host on another port) or a look-alike prefix
/// is refused.
#[tokio::test]
async fn root_metadata_for_the_upstream_s_origin_is_accepted_and_another_origin_refused() {
    let w = world().await;
    let upstream_base = w.upstream.lock().unwrap().base.clone();
    let other_port = w.upstream.lock().unwrap().admin_base.clone();
    for refused in [
        other_port.clone(),
        upstream_base.replace("127.0.0.1", "localhost"),
        format!("{upstream_base}/ro"),
    ] {
        w.upstream.lock().unwrap().root_resource = Some(refused.clone());
        let (status, body) = w.call("root").await;
        assert_eq!(status, 502, "{refused}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("protected resource metadata")
                && message.contains(&refused)
                && message.contains("same origin"),
            "{message}"
        );
        assert_eq!(w.server_state("root").await, (false, true), "{refused}");
    }
    drop(w);
    for accepted in ["", "/", "/root"] {
        let w = world().await;
        let upstream_base = w.upstream.lock().unwrap().base.clone();
        let accepted = format!("{upstream_base}{accepted}");
        w.upstream.lock().unwrap().root_resource = Some(accepted.clone());
        let (status, body) = w.call("root").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("upstream_not_connected")),
            "{accepted}: {body}"
        );
        let authorize = w.connect("root").await;
        let resource = authorize
            .query_pairs()
            .find(|(k, _)| k == "resource")
            .unwrap()
            .1
            .into_owned();
        assert_eq!(resource, accepted, "the resource the metadata names");
        assert_eq!(w.call("root").await.0, 200, "{accepted}");
    }
}

/// Issue 14: a server that answers `insufficient_scope` whatever it is given sends the user
/// through a fresh authorization a few times, then the client gets a clear error instead of
/// another 401 (a reconnecting client would otherwise loop forever).
#[tokio::test]
async fn repeated_insufficient_scope_stops_after_a_few_step_ups() {
    let w = world().await;
    assert_eq!(w.call("greedy").await.0, 401, "discovered");
    for step_up in 1..=3 {
        w.connect("greedy").await;
        let (status, body) = w.call("greedy").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("upstream_not_connected")),
            "step-up {step_up}: {body}"
        );
    }
    let authorizations = w.provider.token_requests().len();
    w.connect("greedy").await;
    let (status, body) = w.call("greedy").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("upstream_step_up_limit")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("files:admin")
            && message.contains("3 new authorizations")
            && message.contains("try again in"),
        "{message}"
    );
    // The TI is kept (other calls may not need the scope): no new authorization is asked for.
    assert_eq!(w.server_state("greedy").await, (true, true));
    let (status, _) = w.call("greedy").await;
    assert_eq!(status, 403);
    assert_eq!(w.provider.token_requests().len(), authorizations + 1);
}

/// Issue 14: `offline_access` is requested when the upstream's authorization server lists it,
/// so the TI comes with a refresh token.
#[tokio::test]
async fn offline_access_is_requested_when_the_authorization_server_offers_it() {
    let w = world().await;
    for (server, scope) in [
        ("offline", "files:read offline_access"),
        ("hint", "files:read"),
    ] {
        assert_eq!(w.call(server).await.0, 401);
        let authorize = w.connect(server).await;
        assert_eq!(
            authorize
                .query_pairs()
                .find(|(k, _)| k == "scope")
                .unwrap()
                .1,
            scope,
            "{server}"
        );
    }
}

/// Issue 14: trusting the upstream's host means its host and port. A resource whose metadata
/// names an authorization server on another port of the same machine (an internal service)
/// gets no request: it is an untrusted host there (http and a private address are refused).
/// (Before, every port of the upstream's host was trusted and the service was asked for its
/// metadata.)
#[tokio::test]
async fn another_port_of_the_upstream_s_host_is_not_trusted() {
    let w = world().await;
    let (status, body) = w.call("otherport").await;
    assert_eq!(status, 502, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    let admin_base = w.upstream.lock().unwrap().admin_base.clone();
    let admin = url::Url::parse(&admin_base).unwrap();
    assert!(
        message.contains("authorization server metadata")
            && message.contains("https")
            && message.contains(&format!(
                "list 127.0.0.1:{} in mcp_allowed_as_metadata_domains",
                admin.port().unwrap()
            )),
        "{message}"
    );
    assert_eq!(
        w.upstream.lock().unwrap().admin_requests,
        Vec::<String>::new(),
        "the internal service received requests"
    );
}

/// Issue 14: the first connection of an MCP client to a server with its own OAuth. `/authorize`
/// probes the upstream, discovers its OAuth and takes the user through its consent in the same
/// browser trip, so the client's first MCP request carries the TI and succeeds. (Before, the
/// first request was answered 401 `upstream_not_connected` and the client had to authorize a
/// second time.)
#[tokio::test]
async fn the_first_authorization_discovers_the_upstream_and_the_first_request_works() {
    use crate::support::oauth_client::{self, CALLBACK};
    let w = world().await;
    let registered: Value = support::client()
        .post(format!("{}/.pomerium/mcp/register", w.base))
        .json(&json!({"redirect_uris": [CALLBACK], "client_name": "First", "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = registered["client_id"].as_str().unwrap();
    let resource = format!("{}/hint", w.base);
    let page = w
        .browser
        .get(oauth_client::authorize_url(
            &w.base, client_id, CALLBACK, &resource,
        ))
        .send()
        .await
        .unwrap();
    let html = page.text().await.unwrap();
    let mut next = support::clicked(
        w.browser
            .post(format!("{}/.pomerium/mcp/authorize", w.base)),
        &w.base,
    )
    .form(&oauth_client::allow_fields(&html))
    .send()
    .await
    .unwrap()
    .headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    let mut visits = Vec::new();
    while !next.starts_with(CALLBACK) {
        assert!(visits.len() < 6, "too many redirects: {visits:?}");
        visits.push(next.clone());
        let url = url::Url::parse(&w.base).unwrap().join(&next).unwrap();
        let response = w.browser.get(url).send().await.unwrap();
        let Some(location) = response.headers().get("location") else {
            panic!(
                "no redirect at {next}: {}",
                response.text().await.unwrap_or_default()
            );
        };
        next = location.to_str().unwrap().to_owned();
    }
    let upstream_base = w.upstream.lock().unwrap().base.clone();
    assert!(
        visits
            .iter()
            .any(|v| v.starts_with(&format!("{upstream_base}/hint/authorize"))),
        "the upstream's consent in the same trip: {visits:?}"
    );
    assert_eq!(w.upstream.lock().unwrap().anonymous, 1, "one probe");
    let code = oauth_client::query_of(&next)["code"].clone();
    let (status, tokens) = oauth_client::exchange_at(&w.base, client_id, &code).await;
    assert_eq!(status, 200, "{tokens}");
    let response = support::client()
        .post(&resource)
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "the first request works");
    assert_eq!(
        w.upstream
            .lock()
            .unwrap()
            .bearers
            .last()
            .map(String::as_str),
        Some("narrow-1")
    );
}
