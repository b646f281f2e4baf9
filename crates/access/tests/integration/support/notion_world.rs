//! The Notion world: the gateway in front of the notion server, with Notion-style upstream OAuth
//! served by a fake provider, and an MCP client app route.

use std::collections::HashMap;
use std::sync::Arc;

use postern_access::Access;
use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::support::oauth_client::urlencode;

/// A fake upstream authorization server (the provider, e.g. Notion's OAuth): approves at once,
/// checks HTTP Basic client authentication and PKCE, issues `ti-N` / `rt-N`.
/// What a fake provider answers to refresh requests (200 by default).
pub type RefreshStatus = Arc<std::sync::atomic::AtomicU16>;

pub async fn fake_provider() -> (String, Arc<std::sync::Mutex<Vec<String>>>, RefreshStatus) {
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

pub struct NotionWorld {
    pub base: String,
    pub browser: reqwest::Client,
    pub provider: String,
    pub provider_log: Arc<std::sync::Mutex<Vec<String>>>,
    pub refresh_status: RefreshStatus,
    pub notion: postern_notion_fake::RunningNotion,
    pub stop: CancellationToken,
}

impl NotionWorld {
    /// Connects Ada's Notion account from the browser: `/connect`, the provider (which approves
    /// at once), Postern's callback, back to `/done`.
    pub async fn connect(&self) {
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
    pub async fn routes(&self) -> Value {
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
    pub async fn disconnect(&self) -> Value {
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
pub async fn notion_world() -> NotionWorld {
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
