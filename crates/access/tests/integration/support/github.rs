//! A fake of GitHub for the GitHub sign-in: the OAuth app endpoints (`/login/oauth/authorize`,
//! `/login/oauth/access_token`) and the REST API endpoints the gateway reads under `/api/v3`, as
//! a GitHub Enterprise Server serves them (`/user`, `/user/emails`, `/user/teams`).
//!
//! It answers as GitHub does: a refused code is `200` with `{"error": "bad_verification_code",
//! ...}` (and likewise `incorrect_client_credentials`, `redirect_uri_mismatch`), an unknown token
//! is `401 {"message": "Bad credentials", ...}`, a used-up rate limit is `403` with
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset`, an endpoint whose scope the token lacks
//! is `404 Not Found` (`/user/emails` needs `user:email`, `/user/teams` `read:org`), teams come in pages of `per_page` (at most
//! 100, default 30) linked by `Link: <...>; rel="next"`. The authorization approves at once as
//! the user the test chose:
//!
//! ```ignore
//! let github = FakeGitHub::new("gh-client", "gh-secret")
//!     .user(GitHubUser::new(1001, "ada").email("ada@example.com", true, true).team(7, "acme", "platform"));
//! let url = github.serve().await;
//! github.signs_in_as("ada");
//! github.rate_limit_api(true);
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::oauth_client::urlencode;

/// A GitHub account.
#[derive(Clone)]
pub struct GitHubUser {
    id: u64,
    login: String,
    name: Option<String>,
    /// (address, primary, verified)
    emails: Vec<(String, bool, bool)>,
    /// (team id, organization login, team slug)
    teams: Vec<(u64, String, String)>,
}

impl GitHubUser {
    /// An account with no name, no email address and no teams.
    pub fn new(id: u64, login: &str) -> Self {
        Self {
            id,
            login: login.into(),
            name: None,
            emails: Vec::new(),
            teams: Vec::new(),
        }
    }

    /// With a display name.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// With an email address.
    pub fn email(mut self, address: &str, primary: bool, verified: bool) -> Self {
        self.emails.push((address.into(), primary, verified));
        self
    }

    /// A member of team `slug` (id `id`) of organization `org`.
    pub fn team(mut self, id: u64, org: &str, slug: &str) -> Self {
        self.teams.push((id, org.into(), slug.into()));
        self
    }
}

/// The fake; clones share its state.
#[derive(Clone)]
pub struct FakeGitHub(Arc<Mutex<GitHub>>);

struct GitHub {
    client_id: String,
    client_secret: String,
    /// The OAuth app's authorization callback URL (set once the gateway's port is known).
    callback: String,
    base: String,
    users: HashMap<String, GitHubUser>,
    /// Who approves the next authorization.
    signing_in: String,
    /// Codes not yet exchanged: code -> (login, PKCE challenge, redirect URI, scope).
    codes: HashMap<String, (String, String, String, String)>,
    /// Access tokens -> (login, granted scopes).
    tokens: HashMap<String, (String, String)>,
    /// Every code ever handed out is refused as expired.
    codes_expire: bool,
    /// The API no longer knows tokens (the user revoked the app).
    tokens_revoked: bool,
    /// The API's rate limit is used up.
    rate_limited: bool,
    /// Scopes asked for by each authorization.
    scopes: Vec<String>,
    /// API requests, as `METHOD path?query`.
    api_requests: Vec<String>,
    issued: u64,
}

impl FakeGitHub {
    /// GitHub with one OAuth app (`client_id`, `client_secret`) and no users.
    pub fn new(client_id: &str, client_secret: &str) -> Self {
        Self(Arc::new(Mutex::new(GitHub {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            callback: String::new(),
            base: String::new(),
            users: HashMap::new(),
            signing_in: String::new(),
            codes: HashMap::new(),
            tokens: HashMap::new(),
            codes_expire: false,
            tokens_revoked: false,
            rate_limited: false,
            scopes: Vec::new(),
            api_requests: Vec::new(),
            issued: 0,
        })))
    }

    /// Knows `user`.
    pub fn user(self, user: GitHubUser) -> Self {
        self.0
            .lock()
            .unwrap()
            .users
            .insert(user.login.clone(), user);
        self
    }

    /// The OAuth app's authorization callback URL is `url`.
    pub fn callback(&self, url: &str) {
        self.0.lock().unwrap().callback = url.into();
    }

    /// The next authorizations are approved by `login`.
    pub fn signs_in_as(&self, login: &str) {
        self.0.lock().unwrap().signing_in = login.into();
    }

    /// From now on, every code is refused as expired (`bad_verification_code`).
    pub fn expire_codes(&self, expire: bool) {
        self.0.lock().unwrap().codes_expire = expire;
    }

    /// From now on, the API refuses every token (`401 Bad credentials`).
    pub fn revoke_tokens(&self, revoked: bool) {
        self.0.lock().unwrap().tokens_revoked = revoked;
    }

    /// From now on, the API's rate limit is used up.
    pub fn rate_limit_api(&self, limited: bool) {
        self.0.lock().unwrap().rate_limited = limited;
    }

    /// The `scope` of every authorization so far.
    pub fn scopes(&self) -> Vec<String> {
        self.0.lock().unwrap().scopes.clone()
    }

    /// Every API request so far (`GET /api/v3/user/teams?per_page=100`).
    pub fn api_requests(&self) -> Vec<String> {
        self.0.lock().unwrap().api_requests.clone()
    }

    /// Serves GitHub on a port of its own; its URL (`idp_provider_url`).
    pub async fn serve(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        self.0.lock().unwrap().base = url.clone();
        let app = axum::Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(access_token))
            .route("/api/v3/user", get(user))
            .route("/api/v3/user/emails", get(emails))
            .route("/api/v3/user/teams", get(teams))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }
}

/// `GET /login/oauth/authorize`: approves at once, as the user signing in.
async fn authorize(
    State(github): State<FakeGitHub>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| q.get(name).cloned().unwrap_or_default();
    let mut g = github.0.lock().unwrap();
    if field("client_id") != g.client_id {
        return (StatusCode::NOT_FOUND, "Not Found").into_response();
    }
    let redirect_uri = q.get("redirect_uri").cloned().unwrap_or(g.callback.clone());
    // GitHub redirects to the registered callback with the error when the one asked for is not
    // it (or a path below it).
    if !redirect_uri.starts_with(&g.callback) {
        let to = format!(
            "{}?error=redirect_uri_mismatch&error_description={}&state={}",
            g.callback,
            urlencode(
                "The redirect_uri MUST match the registered callback URL for this application."
            ),
            urlencode(&field("state"))
        );
        return Redirect::to(&to).into_response();
    }
    if q.contains_key("code_challenge") && field("code_challenge_method") != "S256" {
        return (
            StatusCode::BAD_REQUEST,
            "code_challenge_method must be S256",
        )
            .into_response();
    }
    g.scopes.push(field("scope"));
    g.issued += 1;
    let code = format!("code-{}", g.issued);
    let login = g.signing_in.clone();
    g.codes.insert(
        code.clone(),
        (
            login,
            field("code_challenge"),
            redirect_uri.clone(),
            field("scope"),
        ),
    );
    Redirect::to(&format!(
        "{redirect_uri}?code={code}&state={}",
        urlencode(&field("state"))
    ))
    .into_response()
}

/// `POST /login/oauth/access_token`: errors at 200, as GitHub sends them.
async fn access_token(
    State(github): State<FakeGitHub>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |name: &str| form.get(name).cloned().unwrap_or_default();
    let json_wanted = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let answer = |body: Value| -> Response {
        if json_wanted {
            axum::Json(body).into_response()
        } else {
            // Without `Accept: application/json`, GitHub answers form-encoded.
            let pairs: Vec<String> = body
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", urlencode(v.as_str().unwrap_or_default())))
                .collect();
            (
                [("content-type", "application/x-www-form-urlencoded")],
                pairs.join("&"),
            )
                .into_response()
        }
    };
    let error = |code: &str, description: &str| {
        answer(json!({"error": code, "error_description": description,
            "error_uri": format!("https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#{}", code.replace('_', "-"))}))
    };
    let mut g = github.0.lock().unwrap();
    if field("client_id") != g.client_id || field("client_secret") != g.client_secret {
        return error(
            "incorrect_client_credentials",
            "The client_id and/or client_secret passed are incorrect.",
        );
    }
    let Some((login, challenge, redirect_uri, scope)) = g.codes.remove(&field("code")) else {
        return error(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
        );
    };
    if g.codes_expire {
        return error(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
        );
    }
    if form.contains_key("redirect_uri") && field("redirect_uri") != redirect_uri {
        return error(
            "redirect_uri_mismatch",
            "The redirect_uri MUST match the registered callback URL for this application.",
        );
    }
    if !challenge.is_empty()
        && postern_oauth::pkce::challenge_of(&field("code_verifier")) != challenge
    {
        return error(
            "bad_verification_code",
            "The code passed is incorrect or expired.",
        );
    }
    g.issued += 1;
    let token = format!("gho_fake{}", g.issued);
    g.tokens.insert(token.clone(), (login, scope.clone()));
    let scope = scope.replace(' ', ",");
    answer(json!({"access_token": token, "token_type": "bearer", "scope": scope}))
}

/// The signed-in user of an API request, or GitHub's refusal; `needs`: the scopes any one of
/// which the endpoint requires (GitHub answers 404 without, so as not to reveal the resource).
fn authenticated(
    github: &FakeGitHub,
    headers: &HeaderMap,
    what: String,
    needs: &[&str],
) -> Result<GitHubUser, Box<Response>> {
    let mut g = github.0.lock().unwrap();
    g.api_requests.push(what);
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1800;
    if g.rate_limited {
        return Err(Box::new(
            (
            StatusCode::FORBIDDEN,
            [
                ("x-ratelimit-limit", "5000".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-used", "5000".to_owned()),
                ("x-ratelimit-reset", reset.to_string()),
                ("x-ratelimit-resource", "core".to_owned()),
            ],
            axum::Json(json!({
                "message": "API rate limit exceeded for user ID 1001. If you reach out to GitHub Support for help, please include the request ID.",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                "status": "403"
            })),
        )
            .into_response(),
        ));
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .unwrap_or_default();
    let granted = g.tokens.get(token).filter(|_| !g.tokens_revoked);
    if let Some((_, scopes)) = granted
        && !needs.is_empty()
        && !scopes.split(' ').any(|s| needs.contains(&s))
    {
        return Err(Box::new(
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"})),
            )
                .into_response(),
        ));
    }
    let user = granted.and_then(|(login, _)| g.users.get(login)).cloned();
    user.ok_or_else(|| {
        Box::new(
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401"})),
        )
            .into_response(),
        )
    })
}

async fn user(State(github): State<FakeGitHub>, headers: HeaderMap) -> Response {
    let user = match authenticated(&github, &headers, "GET /api/v3/user".into(), &[]) {
        Ok(user) => user,
        Err(refused) => return *refused,
    };
    axum::Json(json!({
        "login": user.login, "id": user.id, "node_id": format!("U_{}", user.id),
        "avatar_url": format!("https://avatars.githubusercontent.com/u/{}?v=4", user.id),
        "type": "User", "site_admin": false, "name": user.name, "company": null,
        "email": null, "public_repos": 2, "followers": 0, "following": 0,
        "created_at": "2011-01-25T18:44:36Z", "updated_at": "2026-01-01T00:00:00Z"
    }))
    .into_response()
}

async fn emails(State(github): State<FakeGitHub>, headers: HeaderMap) -> Response {
    let user = match authenticated(
        &github,
        &headers,
        "GET /api/v3/user/emails".into(),
        &["user", "user:email"],
    ) {
        Ok(user) => user,
        Err(refused) => return *refused,
    };
    let emails: Vec<Value> = user
        .emails
        .iter()
        .map(|(email, primary, verified)| {
            json!({"email": email, "primary": primary, "verified": verified,
                   "visibility": if *primary { json!("private") } else { Value::Null }})
        })
        .collect();
    axum::Json(emails).into_response()
}

async fn teams(
    State(github): State<FakeGitHub>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut query: Vec<_> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
    query.sort();
    let user = match authenticated(
        &github,
        &headers,
        format!("GET /api/v3/user/teams?{}", query.join("&")),
        &["user", "repo", "read:org"],
    ) {
        Ok(user) => user,
        Err(refused) => return *refused,
    };
    let base = github.0.lock().unwrap().base.clone();
    let per_page: usize = q
        .get("per_page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        .clamp(1, 100);
    let page: usize = q
        .get("page")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let last = user.teams.len().div_ceil(per_page).max(1);
    let items: Vec<Value> = user
        .teams
        .iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|(id, org, slug)| {
            json!({"id": id, "node_id": format!("T_{id}"), "name": slug.replace('-', " "),
                "slug": slug, "privacy": "closed", "permission": "pull", "parent": null,
                "url": format!("{base}/api/v3/teams/{id}"),
                "organization": {"login": org, "id": org.len() as u64 * 1000,
                    "url": format!("{base}/api/v3/orgs/{org}")}})
        })
        .collect();
    let link = |page: usize, rel: &str| {
        format!("<{base}/api/v3/user/teams?per_page={per_page}&page={page}>; rel=\"{rel}\"")
    };
    let mut links = Vec::new();
    if page > 1 {
        links.push(link(page - 1, "prev"));
    }
    if page < last {
        links.push(link(page + 1, "next"));
        links.push(link(last, "last"));
    }
    if page > 1 {
        links.push(link(1, "first"));
    }
    let mut response = axum::Json(items).into_response();
    if !links.is_empty() {
        response
            .headers_mut()
            .insert("link", links.join(", ").parse().unwrap());
    }
    response
}
