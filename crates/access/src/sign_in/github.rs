//! Sign-in with GitHub (`idp_provider: github`), which speaks OAuth 2, not OpenID Connect: the
//! browser authorizes at `{url}/login/oauth/authorize` (scopes `user:email read:org`, `state`,
//! PKCE S256), the code is exchanged at `{url}/login/oauth/access_token`, and the identity comes
//! from the REST API: `GET /user` (the numeric id is the subject: logins can be renamed and
//! taken over), `GET /user/emails` (the primary address, only if GitHub verified it) and
//! `GET /user/teams` (every page, by `Link: rel="next"`) for groups.
//!
//! Groups are each team's numeric id (what Pomerium's GitHub directory recorded as the group id)
//! and `org/team-slug`, lowercased. A bare team slug is not a group: anyone can create an
//! organization with a team called `admins`, so only names that include the organization mean
//! anything.
//!
//! The API is `https://api.github.com` for github.com and `{url}/api/v3` for GitHub Enterprise
//! Server. Every answer is read within a size cap and every request within a time limit.

use std::time::Duration;

use postern_http::document::read_capped;
use postern_oauth::Secret;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sign_in::oidc::{OidcIdentity, check_email};
use crate::web::untrusted::Untrusted;

/// github.com; any other `idp_provider_url` is a GitHub Enterprise Server.
pub const GITHUB_URL: &str = "https://github.com";
/// github.com's REST API.
const GITHUB_API: &str = "https://api.github.com";
/// Scopes asked for when `idp_scopes` is empty: the email addresses (`user:email`) and team
/// memberships (`read:org`), as Pomerium asks.
pub const DEFAULT_SCOPES: [&str; 2] = ["user:email", "read:org"];

/// Largest token response accepted (a few hundred bytes in practice).
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;
/// Largest `/user` or `/user/emails` answer accepted.
const MAX_API_BYTES: usize = 256 * 1024;
/// Largest page of `/user/teams` accepted (100 teams with their organizations are ~200 KiB).
const MAX_TEAMS_PAGE_BYTES: usize = 1024 * 1024;
/// Teams asked for per page (GitHub's maximum).
const TEAMS_PER_PAGE: u32 = 100;
/// Pages of teams read at most (5,000 teams): a user in more is refused rather than given a
/// partial list (a policy with `not: groups` would read a missing team as "not a member").
const MAX_TEAMS_PAGES: usize = 50;

/// The GitHub sign-in's settings.
#[derive(Clone, Debug)]
pub struct GitHubSettings {
    /// `https://github.com`, or a GitHub Enterprise Server's URL (`idp_provider_url`).
    pub url: String,
    /// The OAuth app's client id.
    pub client_id: String,
    /// The OAuth app's client secret.
    pub client_secret: Secret,
    /// Scopes (empty: [`DEFAULT_SCOPES`]).
    pub scopes: Vec<String>,
}

impl GitHubSettings {
    /// The settings `config` gives; `None` unless `idp_provider` is `github`.
    pub fn from_config(config: &postern_config::Config) -> Option<Self> {
        Some(Self {
            url: config.github_url()?,
            // `check-config` requires it with every `idp_provider`.
            client_id: config.idp_client_id.clone().unwrap_or_default(),
            client_secret: config.idp_client_secret.clone().unwrap_or_default(),
            // Empty: GitHub's own defaults, not OpenID Connect's.
            scopes: config.idp_scopes.clone(),
        })
    }
}

/// Why sign-in with GitHub failed. Messages say what went wrong and what to do; GitHub's own
/// text goes to the log, escaped, never to the page.
#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// GitHub could not be reached, or answered something that is not its API.
    #[error("GitHub at {url} could not be used: {reason}")]
    Unavailable {
        /// What was requested.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The code exchange was refused (GitHub answers these with 200 and an `error` field).
    #[error("GitHub refused the sign-in ({code}): {advice}")]
    CodeRefused {
        /// GitHub's error code (`bad_verification_code`, ...).
        code: String,
        /// What to do about it.
        advice: String,
    },
    /// The API refused the access token it just issued.
    #[error("GitHub's API at {0} refused the access token (Bad credentials); sign in again")]
    BadCredentials(String),
    /// The API's rate limit is used up.
    #[error(
        "GitHub's API rate limit for the gateway is used up; try again in {} minute(s)",
        .0.div_ceil(60).max(1)
    )]
    RateLimited(u64),
    /// The account has no primary email address GitHub verified.
    #[error(
        "GitHub has no verified primary email address for {}: verify it at https://github.com/settings/emails (or make a verified address primary), then sign in again",
        Untrusted(.0)
    )]
    NoVerifiedEmail(String),
    /// The account is in more teams than are read.
    #[error(
        "the GitHub account is in more than {} teams, more than the gateway reads at sign-in",
        MAX_TEAMS_PAGES * TEAMS_PER_PAGE as usize
    )]
    TooManyTeams,
    /// The identity failed a check shared with OpenID Connect (an invalid email address).
    #[error(transparent)]
    Identity(#[from] crate::sign_in::oidc::OidcError),
}

/// `GET /user`.
#[derive(Deserialize)]
struct User {
    id: u64,
    login: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    avatar_url: Option<String>,
}

/// One entry of `GET /user/emails`.
#[derive(Deserialize)]
struct Email {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

/// One entry of `GET /user/teams`.
#[derive(Deserialize)]
struct Team {
    id: u64,
    slug: String,
    organization: Organization,
}

#[derive(Deserialize)]
struct Organization {
    login: String,
}

/// A GitHub OAuth app client.
pub struct GitHub {
    settings: GitHubSettings,
    api: String,
    http: reqwest::Client,
}

impl GitHub {
    /// A client for `settings`.
    pub fn new(mut settings: GitHubSettings) -> Self {
        settings.url = settings.url.trim_end_matches('/').to_owned();
        let api = api_base(&settings.url);
        let http = postern_http::build(
            postern_http::builder(Duration::from_secs(10))
                .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION"))),
        );
        Self {
            settings,
            api,
            http,
        }
    }

    /// Where to send the browser to sign in.
    pub fn authorization_url(
        &self,
        redirect_uri: &str,
        state: &str,
        verifier: &str,
    ) -> Result<String, GitHubError> {
        let endpoint = format!("{}/login/oauth/authorize", self.settings.url);
        let mut url = url::Url::parse(&endpoint).map_err(|e| GitHubError::Unavailable {
            url: endpoint.clone(),
            reason: e.to_string(),
        })?;
        let scopes = if self.settings.scopes.is_empty() {
            DEFAULT_SCOPES.join(" ")
        } else {
            self.settings.scopes.join(" ")
        };
        url.query_pairs_mut()
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", &scopes)
            .append_pair("state", state)
            .append_pair(
                "code_challenge",
                &postern_oauth::pkce::challenge_of(verifier),
            )
            .append_pair("code_challenge_method", "S256");
        Ok(url.to_string())
    }

    /// Exchanges the code and reads the user's identity from the API.
    pub async fn finish(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<OidcIdentity, GitHubError> {
        let token = self.exchange_code(code, redirect_uri, verifier).await?;
        let user: User = self.get_json(&format!("{}/user", self.api), &token).await?;
        let emails: Vec<Email> = self
            .get_json(&format!("{}/user/emails?per_page=100", self.api), &token)
            .await?;
        let Some(email) = emails
            .into_iter()
            .find(|e| e.primary && e.verified)
            .map(|e| e.email.to_ascii_lowercase())
        else {
            return Err(GitHubError::NoVerifiedEmail(user.login));
        };
        let groups = self.teams(&token).await?;
        let identity = identity(user, email, groups);
        check_email(&identity)?;
        Ok(identity)
    }

    /// The access token for `code` (GitHub's token endpoint answers JSON when asked, and
    /// reports a refused code with 200 and an `error` field).
    async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, GitHubError> {
        let url = format!("{}/login/oauth/access_token", self.settings.url);
        let fail = |reason: String| GitHubError::Unavailable {
            url: url.clone(),
            reason,
        };
        let response = self
            .http
            .post(&url)
            .header("accept", "application/json")
            .form(&[
                ("client_id", self.settings.client_id.as_str()),
                ("client_secret", self.settings.client_secret.expose()),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
            ])
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = response.status();
        let body = read_capped(response, MAX_TOKEN_RESPONSE_BYTES)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let body: Map<String, Value> = match serde_json::from_slice(&body) {
            Ok(body) if status.is_success() => body,
            _ => {
                tracing::warn!(%status, body = %Untrusted(&String::from_utf8_lossy(&body)), "GitHub's token endpoint answered something else than a token response");
                return Err(fail(format!(
                    "HTTP {status} without a JSON token response (details in the gateway's log)"
                )));
            }
        };
        if let Some(error) = body.get("error").and_then(Value::as_str) {
            let description = body
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default();
            tracing::warn!(error = %Untrusted(error), description = %Untrusted(description), "GitHub refused the code");
            return Err(code_refused(error, redirect_uri));
        }
        match body.get("access_token").and_then(Value::as_str) {
            Some(token) if !token.is_empty() => Ok(token.to_owned()),
            _ => Err(fail("no access_token in the token response".into())),
        }
    }

    /// Every team of the user, as groups, following `Link: rel="next"` on the API's origin.
    async fn teams(&self, token: &str) -> Result<Vec<String>, GitHubError> {
        let mut groups = Vec::new();
        let mut next = Some(format!("{}/user/teams?per_page={TEAMS_PER_PAGE}", self.api));
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_TEAMS_PAGES {
                return Err(GitHubError::TooManyTeams);
            }
            let response = self.get(&url, token).await?;
            let link = response
                .headers()
                .get_all("link")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(next_link);
            let teams: Vec<Team> = read_json(&url, response, MAX_TEAMS_PAGE_BYTES).await?;
            for team in teams {
                groups.push(team.id.to_string());
                groups.push(format!(
                    "{}/{}",
                    team.organization.login.to_ascii_lowercase(),
                    team.slug.to_ascii_lowercase()
                ));
            }
            next = match link {
                Some(link) if same_origin(&link, &self.api) => Some(link),
                Some(link) => {
                    return Err(GitHubError::Unavailable {
                        url,
                        reason: format!("its next page is on another site ({})", Untrusted(&link)),
                    });
                }
                None => None,
            };
        }
        groups.sort();
        groups.dedup();
        Ok(groups)
    }

    /// `GET url` with the user's token, the API's errors (401, the rate limit) made plain.
    async fn get(&self, url: &str, token: &str) -> Result<reqwest::Response, GitHubError> {
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .send()
            .await
            .map_err(|e| GitHubError::Unavailable {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let rate_limited = matches!(status.as_u16(), 403 | 429)
            && (header("x-ratelimit-remaining") == Some(0) || header("retry-after").is_some());
        if rate_limited {
            let wait = header("retry-after").unwrap_or_else(|| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                header("x-ratelimit-reset").map_or(60, |reset| reset.saturating_sub(now))
            });
            tracing::warn!(url, wait, "GitHub's API rate limit is used up");
            return Err(GitHubError::RateLimited(wait));
        }
        let body = read_capped(response, MAX_API_BYTES)
            .await
            .unwrap_or_default();
        tracing::warn!(url, %status, body = %Untrusted(&String::from_utf8_lossy(&body)), "GitHub's API refused a request");
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(GitHubError::BadCredentials(url.to_owned()));
        }
        // GitHub answers 404 (or 403) when the token lacks the scope an endpoint needs.
        let hint = if matches!(status.as_u16(), 403 | 404) {
            "; the sign-in needs the scopes user:email and read:org: keep them in idp_scopes"
        } else {
            ""
        };
        Err(GitHubError::Unavailable {
            url: url.to_owned(),
            reason: format!("HTTP {status} (details in the gateway's log){hint}"),
        })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        token: &str,
    ) -> Result<T, GitHubError> {
        let response = self.get(url, token).await?;
        read_json(url, response, MAX_API_BYTES).await
    }
}

/// The REST API's base URL for a GitHub at `url`.
fn api_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.eq_ignore_ascii_case(GITHUB_URL) || url.eq_ignore_ascii_case("https://www.github.com") {
        GITHUB_API.to_owned()
    } else {
        format!("{url}/api/v3")
    }
}

async fn read_json<T: serde::de::DeserializeOwned>(
    url: &str,
    response: reqwest::Response,
    max: usize,
) -> Result<T, GitHubError> {
    let fail = |reason: String| GitHubError::Unavailable {
        url: url.to_owned(),
        reason,
    };
    let body = read_capped(response, max)
        .await
        .map_err(|e| fail(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| fail(format!("not the API's JSON: {e}")))
}

/// What a refused code means, and what to do (GitHub's documented error codes).
fn code_refused(error: &str, redirect_uri: &str) -> GitHubError {
    let advice = match error {
        "bad_verification_code" => {
            "the code is wrong, expired or already used; sign in again".to_owned()
        }
        "incorrect_client_credentials" => {
            "the gateway's idp_client_id or idp_client_secret is wrong; the administrator must fix them".to_owned()
        }
        "redirect_uri_mismatch" => format!(
            "the OAuth app's authorization callback URL must be {redirect_uri}; the administrator must register it"
        ),
        "unverified_user_email" => {
            "verify your email address at https://github.com/settings/emails, then sign in again"
                .to_owned()
        }
        _ => "sign in again; if it keeps failing, the gateway's log has GitHub's description"
            .to_owned(),
    };
    // The code is GitHub's; shown only if it looks like one (the page must not carry HTML).
    let code = if !error.is_empty()
        && error.len() <= 64
        && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        error.to_owned()
    } else {
        "an unknown error".to_owned()
    };
    GitHubError::CodeRefused { code, advice }
}

/// The `rel="next"` target of a `Link` header value (RFC 8288), if it has one.
fn next_link(header: &str) -> Option<String> {
    let mut rest = header;
    loop {
        let start = rest.find('<')?;
        let end = start + rest[start..].find('>')?;
        let target = &rest[start + 1..end];
        rest = &rest[end + 1..];
        let params = rest.split(',').next().unwrap_or_default();
        let is_next = params.split(';').any(|param| {
            let Some((name, value)) = param.split_once('=') else {
                return false;
            };
            name.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_matches('"')
                    .split_ascii_whitespace()
                    .any(|rel| rel.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.to_owned());
        }
    }
}

/// Whether `url` is on the same origin (scheme, host, port) as `base`.
fn same_origin(url: &str, base: &str) -> bool {
    match (url::Url::parse(url), url::Url::parse(base)) {
        (Ok(a), Ok(b)) => a.origin() == b.origin(),
        _ => false,
    }
}

/// The identity of a GitHub user, in the shape an OpenID Connect sign-in gives (so policy, the
/// assertion and the sessions treat both alike): `sub` is the numeric id, `user` and `login`
/// the login (Pomerium's `user` claim), `email_verified` true (only a verified address is used).
fn identity(user: User, email: String, groups: Vec<String>) -> OidcIdentity {
    let subject = user.id.to_string();
    let name = user
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| user.login.clone());
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(subject));
    claims.insert("user".into(), json!(user.login));
    claims.insert("login".into(), json!(user.login));
    claims.insert("name".into(), json!(name));
    claims.insert("email".into(), json!(email));
    claims.insert("email_verified".into(), json!(true));
    claims.insert("groups".into(), json!(groups));
    if let Some(picture) = user.avatar_url {
        claims.insert("picture".into(), json!(picture));
    }
    OidcIdentity {
        subject,
        email,
        name,
        groups,
        claims,
        // GitHub's app tokens do not expire and come without a refresh token.
        refresh_token: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_link_is_found_among_the_others() {
        let header = r#"<https://api.github.com/user/teams?page=1>; rel="prev", <https://api.github.com/user/teams?page=3>; rel="next", <https://api.github.com/user/teams?page=5>; rel="last""#;
        assert_eq!(
            next_link(header).as_deref(),
            Some("https://api.github.com/user/teams?page=3")
        );
        let last = r#"<https://api.github.com/user/teams?page=1>; rel="first", <https://api.github.com/user/teams?page=4>; rel="prev""#;
        assert_eq!(next_link(last), None);
        assert_eq!(next_link(""), None);
        assert_eq!(next_link("<x>; rel=next"), Some("x".into()));
        assert_eq!(next_link(r#"<x>; title="a,b"; rel="next""#), None);
    }

    #[test]
    fn the_api_of_github_com_and_of_an_enterprise_server() {
        assert_eq!(api_base("https://github.com"), "https://api.github.com");
        assert_eq!(api_base("https://github.com/"), "https://api.github.com");
        assert_eq!(
            api_base("https://ghe.corp.example"),
            "https://ghe.corp.example/api/v3"
        );
    }

    #[test]
    fn a_next_page_elsewhere_is_not_followed() {
        assert!(same_origin(
            "https://api.github.com/user/teams?page=2",
            "https://api.github.com"
        ));
        assert!(!same_origin(
            "https://evil.example/user/teams?page=2",
            "https://api.github.com"
        ));
        assert!(!same_origin(
            "http://api.github.com/user/teams",
            "https://api.github.com"
        ));
    }

    #[test]
    fn refused_codes_say_what_to_do_and_never_carry_markup() {
        let message =
            code_refused("redirect_uri_mismatch", "https://gw/.pomerium/callback").to_string();
        assert!(
            message.contains("must be https://gw/.pomerium/callback"),
            "{message}"
        );
        let message = code_refused("<script>alert(1)</script>", "x").to_string();
        assert!(!message.contains('<'), "{message}");
        assert!(message.contains("an unknown error"), "{message}");
    }

    #[test]
    fn the_identity_has_the_numeric_id_as_subject_and_the_login_as_user() {
        let identity = identity(
            User {
                id: 583231,
                login: "octocat".into(),
                name: None,
                avatar_url: None,
            },
            "octocat@github.com".into(),
            vec!["1".into(), "acme/admins".into()],
        );
        assert_eq!(identity.subject, "583231");
        assert_eq!(identity.name, "octocat");
        assert_eq!(identity.claims["user"], "octocat");
        assert_eq!(identity.claims["groups"], json!(["1", "acme/admins"]));
    }
}
