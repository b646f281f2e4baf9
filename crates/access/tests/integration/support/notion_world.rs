//! The Notion world: the gateway in front of the notion server, with Notion-style upstream OAuth
//! served by a fake provider, and an MCP client app route.

use std::collections::HashMap;

use postern_access::Access;
use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support;
use crate::support::oauth_client::urlencode;
use crate::support::oauth_provider::FakeOAuthProvider;

pub struct NotionWorld {
    pub base: String,
    pub browser: reqwest::Client,
    /// Notion's OAuth: approves at once, issues `ti-1` expiring within the gateway's refresh
    /// skew (so its first use refreshes it) and `ti-2` on refresh.
    pub provider: FakeOAuthProvider,
    /// The provider's issuer URL (`/authorize`, `/token` below it).
    pub issuer: String,
    pub notion: postern_notion_fake::RunningNotion,
    pub stop: CancellationToken,
    /// The `redirect_uri` of every trip to the provider `connect` made.
    pub redirect_uris: std::sync::Mutex<Vec<String>>,
    /// The provider's authorization URL of every trip `connect` made.
    pub authorizations: std::sync::Mutex<Vec<url::Url>>,
    /// The audit file (in a directory removed with the world).
    pub audit: std::path::PathBuf,
    pub _audit_dir: tempfile::TempDir,
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
        assert!(provider_url.starts_with(&self.issuer), "{provider_url}");
        self.redirect_uris.lock().unwrap().extend(
            url::Url::parse(&provider_url)
                .unwrap()
                .query_pairs()
                .filter_map(|(k, v)| (k == "redirect_uri").then(|| v.into_owned())),
        );
        self.authorizations
            .lock()
            .unwrap()
            .push(url::Url::parse(&provider_url).unwrap());
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
    notion_world_with("").await
}

/// [`notion_world`] with `extra` lines in the route's `upstream_oauth2` block (8-space indent).
pub async fn notion_world_with(extra: &str) -> NotionWorld {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = FakeOAuthProvider::new()
        .confidential_client("notion-client", "notion-secret")
        .issues("ti-1")
        .code_tokens_expire_in(30)
        .refreshes_to("ti-2");
    let issuer = format!("{}/notion", provider.serve().await);
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
        endpoint: {{auth_url: '{issuer}/authorize', token_url: '{issuer}/token', auth_style: header}}
        authorization_url_params: {{owner: user}}
{extra}
  - from: http://localhost
    prefix: /app
    to: http://{app}
    allow_any_authenticated_user: true
    mcp: {{client: {{}}}}
"
    );
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.jsonl");
    let access = Access::new(
        support::memory_store().await,
        LocalUsers::new(vec![support::user("ada@example.com", "Ada", &[], "pw")]),
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        postern_access::AccessSettings {
            audit_file: Some(audit.clone()),
            ..support::settings()
        },
    );
    support::serve(listener, &yaml, access, &stop);

    // The user's browser (cookies kept, redirects followed by hand).
    let browser = support::browser();
    support::sign_in(&browser, &base, "ada@example.com", "pw").await;
    NotionWorld {
        base,
        browser,
        provider,
        issuer,
        notion,
        stop,
        redirect_uris: Default::default(),
        authorizations: Default::default(),
        audit,
        _audit_dir: audit_dir,
    }
}
