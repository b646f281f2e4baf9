//! The one fake OAuth authorization server of the tests: an upstream provider (Notion's OAuth, an
//! MCP server's own authorization server) that approves every authorization at once.
//!
//! It serves `/{issuer}/authorize`, `/{issuer}/token` and `/{issuer}/register` for any issuer
//! path, checks what a real one checks (a known client or a valid client ID metadata document,
//! S256 PKCE, the secret of a confidential client by HTTP Basic, single-use codes, issued refresh
//! tokens) and records every token request. A test says what it issues and, while it runs, how it
//! misbehaves:
//!
//! ```ignore
//! let provider = FakeOAuthProvider::new()
//!     .confidential_client("notion-client", "notion-secret")
//!     .issues("ti-1")
//!     .code_tokens_expire_in(30)
//!     .refreshes_to("ti-2");
//! let url = provider.serve().await;
//! provider.answer_refreshes_with(503);
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

use super::oauth_client::urlencode;

/// The client id the provider gives every dynamic registration.
pub const REGISTERED_CLIENT_ID: &str = "postern-at-upstream";

/// A fake provider; clones share its state.
#[derive(Clone)]
pub struct FakeOAuthProvider(Arc<Mutex<Provider>>);

struct Provider {
    /// Confidential clients (id -> secret), which authenticate by HTTP Basic.
    confidential: HashMap<String, String>,
    /// Confidential clients that authenticate only with `client_id` and `client_secret` in the
    /// form (Basic is `invalid_client` for them), as some providers require.
    form_only: HashMap<String, String>,
    /// Clients that registered dynamically (public: `token_endpoint_auth_method: none`).
    registered: HashSet<String>,
    /// The access token of a code exchange, and the one issued instead when the authorization
    /// asked for the given scope.
    issues: String,
    issues_for_scope: Option<(String, String)>,
    /// The access token of a refresh (no new refresh token: the client must keep its own).
    refreshes_to: String,
    /// `expires_in` of the tokens from a code exchange.
    code_token_ttl: i64,
    /// The status refresh grants get (200: refreshed).
    refresh_status: u16,
    /// The token endpoint no longer knows any client (the provider lost its registrations).
    forgot_clients: bool,
    /// Codes not yet exchanged.
    codes: HashMap<String, Authorization>,
    /// Refresh tokens issued.
    refresh_tokens: HashSet<String>,
    /// Codes handed out, and code exchanges that issued tokens.
    authorizations: usize,
    issued: usize,
    token_requests: Vec<HashMap<String, String>>,
    registrations: u32,
    /// How long a refresh grant waits before it is answered (a slow or hanging provider).
    refresh_delay: std::time::Duration,
}

/// What a code stands for.
struct Authorization {
    challenge: String,
    scope: String,
    /// The token request must name the same redirect URI (RFC 6749 §4.1.3).
    redirect_uri: String,
}

impl FakeOAuthProvider {
    /// A provider with no clients, issuing `at-1` tokens for an hour and `at-refreshed` on
    /// refresh.
    pub fn new() -> Self {
        Self(Arc::new(Mutex::new(Provider {
            confidential: HashMap::new(),
            form_only: HashMap::new(),
            registered: HashSet::new(),
            issues: "at-1".into(),
            issues_for_scope: None,
            refreshes_to: "at-refreshed".into(),
            code_token_ttl: 3600,
            refresh_status: 200,
            forgot_clients: false,
            codes: HashMap::new(),
            refresh_tokens: HashSet::new(),
            authorizations: 0,
            issued: 0,
            token_requests: Vec::new(),
            registrations: 0,
            refresh_delay: std::time::Duration::ZERO,
        })))
    }

    /// Knows the confidential client `id`, which authenticates with `secret` by HTTP Basic.
    pub fn confidential_client(self, id: &str, secret: &str) -> Self {
        self.0
            .lock()
            .unwrap()
            .confidential
            .insert(id.into(), secret.into());
        self
    }

    /// Knows the confidential client `id`, which authenticates with `secret` in the form only.
    pub fn form_only_client(self, id: &str, secret: &str) -> Self {
        self.0
            .lock()
            .unwrap()
            .form_only
            .insert(id.into(), secret.into());
        self
    }

    /// Issues `access_token` for a code.
    pub fn issues(self, access_token: &str) -> Self {
        self.0.lock().unwrap().issues = access_token.into();
        self
    }

    /// Issues `access_token` for a code whose authorization asked for `scope`.
    pub fn issues_for_scope(self, scope: &str, access_token: &str) -> Self {
        self.0.lock().unwrap().issues_for_scope = Some((scope.into(), access_token.into()));
        self
    }

    /// Issues `access_token` for a refresh token.
    pub fn refreshes_to(self, access_token: &str) -> Self {
        self.0.lock().unwrap().refreshes_to = access_token.into();
        self
    }

    /// The tokens of a code exchange expire in `seconds`.
    pub fn code_tokens_expire_in(self, seconds: i64) -> Self {
        self.expire_code_tokens_in(seconds);
        self
    }

    /// From now on, the tokens of a code exchange expire in `seconds`.
    pub fn expire_code_tokens_in(&self, seconds: i64) {
        self.0.lock().unwrap().code_token_ttl = seconds;
    }

    /// From now on, refresh grants get `status` (200: refreshed; otherwise `invalid_grant`).
    pub fn answer_refreshes_with(&self, status: u16) {
        self.0.lock().unwrap().refresh_status = status;
    }

    /// From now on, refresh grants are answered only after `delay` (a slow provider; a long
    /// one is a provider that hangs).
    pub fn answer_refreshes_after(&self, delay: std::time::Duration) {
        self.0.lock().unwrap().refresh_delay = delay;
    }

    /// How many refresh grants reached the token endpoint.
    pub fn refreshes(&self) -> usize {
        self.grants()
            .iter()
            .filter(|g| g.starts_with("refresh_token "))
            .count()
    }

    /// From now on, the token endpoint knows no client (or again knows them).
    pub fn forget_clients(&self, forgotten: bool) {
        self.0.lock().unwrap().forgot_clients = forgotten;
    }

    /// Every token request so far, as form fields (with the `Authorization` header, if any, as
    /// `(authorization header)`).
    pub fn token_requests(&self) -> Vec<HashMap<String, String>> {
        self.0.lock().unwrap().token_requests.clone()
    }

    /// Every token request so far as `"{grant_type} {refresh_token}"`.
    pub fn grants(&self) -> Vec<String> {
        self.token_requests()
            .iter()
            .map(|f| {
                let field = |name: &str| f.get(name).cloned().unwrap_or_default();
                format!("{} {}", field("grant_type"), field("refresh_token"))
            })
            .collect()
    }

    /// How many clients registered.
    pub fn registrations(&self) -> u32 {
        self.0.lock().unwrap().registrations
    }

    /// The provider's endpoints, to serve alone or next to an upstream's own routes.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/{issuer}/authorize", get(authorize))
            .route("/{issuer}/token", post(token))
            .route("/{issuer}/register", post(register))
            .with_state(self.clone())
    }

    /// Serves the provider on a port of its own; its base URL (issuers are paths below it).
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let app = self.router();
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

fn oauth_error(status: StatusCode, error: &str, description: Option<&str>) -> Response {
    let mut body = json!({ "error": error });
    if let Some(description) = description {
        body["error_description"] = json!(description);
    }
    (status, axum::Json(body)).into_response()
}

/// Approves at once, after checking the client: a known one, or a client ID metadata document
/// fetched from the client id URL whose `client_id` is that URL and which lists the redirect URI.
async fn authorize(
    State(provider): State<FakeOAuthProvider>,
    Path(_issuer): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| q.get(name).cloned().unwrap_or_default();
    if field("code_challenge_method") != "S256" {
        return (StatusCode::BAD_REQUEST, "S256 PKCE required").into_response();
    }
    let client_id = field("client_id");
    if client_id.starts_with("http") {
        let document: Value = reqwest::get(&client_id)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let listed = document["redirect_uris"]
            .as_array()
            .is_some_and(|uris| uris.iter().any(|u| u == &field("redirect_uri")));
        if document["client_id"] != client_id || !listed {
            return (StatusCode::BAD_REQUEST, "invalid client metadata document").into_response();
        }
    } else {
        let p = provider.0.lock().unwrap();
        if !p.confidential.contains_key(&client_id)
            && !p.form_only.contains_key(&client_id)
            && !p.registered.contains(&client_id)
        {
            return (StatusCode::BAD_REQUEST, "unknown client").into_response();
        }
    }
    let code = {
        let mut p = provider.0.lock().unwrap();
        p.authorizations += 1;
        let code = format!("code-{}", p.authorizations);
        p.codes.insert(
            code.clone(),
            Authorization {
                challenge: field("code_challenge"),
                scope: field("scope"),
                redirect_uri: field("redirect_uri"),
            },
        );
        code
    };
    Redirect::to(&format!(
        "{}?code={code}&state={}",
        field("redirect_uri"),
        urlencode(&field("state"))
    ))
    .into_response()
}

async fn token(
    State(provider): State<FakeOAuthProvider>,
    Path(_issuer): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(basic) = &basic {
        form.insert("(authorization header)".into(), basic.clone());
    }
    if form.get("grant_type").is_some_and(|g| g == "refresh_token") {
        let delay = {
            let mut p = provider.0.lock().unwrap();
            p.token_requests.push(form.clone());
            p.refresh_delay
        };
        tokio::time::sleep(delay).await;
    }
    let mut p = provider.0.lock().unwrap();
    if form.get("grant_type").is_none_or(|g| g != "refresh_token") {
        p.token_requests.push(form.clone());
    }
    if p.forgot_clients {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            Some("unknown client <b>call +1 555 0100</b>"),
        );
    }
    if !p.authenticates(
        basic.as_deref(),
        form.get("client_id"),
        form.get("client_secret"),
    ) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", None);
    }
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    match field("grant_type").as_str() {
        "authorization_code" => {
            let Some(authorization) = p.codes.remove(&field("code")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", None);
            };
            let verifier = field("code_verifier");
            if postern_oauth::pkce::challenge_of(&verifier) != authorization.challenge
                || field("redirect_uri") != authorization.redirect_uri
            {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", None);
            }
            let access_token = match &p.issues_for_scope {
                Some((scope, token)) if authorization.scope.contains(scope.as_str()) => {
                    token.clone()
                }
                _ => p.issues.clone(),
            };
            p.issued += 1;
            let refresh_token = format!("rt-{}", p.issued);
            p.refresh_tokens.insert(refresh_token.clone());
            axum::Json(
                json!({"access_token": access_token, "refresh_token": refresh_token,
                "expires_in": p.code_token_ttl, "token_type": "Bearer"}),
            )
            .into_response()
        }
        "refresh_token" if p.refresh_status != 200 => oauth_error(
            StatusCode::from_u16(p.refresh_status).unwrap(),
            "invalid_grant",
            None,
        ),
        "refresh_token" if p.refresh_tokens.contains(&field("refresh_token")) => axum::Json(
            json!({"access_token": p.refreshes_to, "expires_in": 3600, "token_type": "Bearer"}),
        )
        .into_response(),
        _ => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", None),
    }
}

impl Provider {
    /// A confidential client by its Basic credentials; a public one (registered, or a metadata
    /// document URL) by its `client_id`.
    fn authenticates(
        &self,
        basic: Option<&str>,
        client_id: Option<&String>,
        client_secret: Option<&String>,
    ) -> bool {
        if let Some(basic) = basic {
            let decoded = basic
                .strip_prefix("Basic ")
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let Some((id, secret)) = decoded.split_once(':') else {
                return false;
            };
            return self.confidential.get(id).is_some_and(|s| s == secret);
        }
        if let Some(expected) = client_id.and_then(|id| self.form_only.get(id)) {
            return client_secret == Some(expected);
        }
        client_id.is_some_and(|id| self.registered.contains(id) || id.starts_with("http"))
    }
}

/// Dynamic client registration (RFC 7591) of a public client.
async fn register(
    State(provider): State<FakeOAuthProvider>,
    Path(_issuer): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    if body["token_endpoint_auth_method"] != "none" {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client_metadata", None);
    }
    let mut p = provider.0.lock().unwrap();
    p.registrations += 1;
    p.registered.insert(REGISTERED_CLIENT_ID.into());
    (
        StatusCode::CREATED,
        axum::Json(
            json!({"client_id": REGISTERED_CLIENT_ID, "redirect_uris": body["redirect_uris"],
            "token_endpoint_auth_method": "none"}),
        ),
    )
        .into_response()
}
