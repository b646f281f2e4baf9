//! What the gateway keeps. Times are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use postern_oauth::Secret;

/// A signed-in browser session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Random id (the cookie carries it, encrypted).
    pub id: String,
    /// Stable user id (`sub`).
    pub user_id: String,
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Other identity-provider claims (for `claim/<name>` policies).
    #[serde(default)]
    pub claims: serde_json::Map<String, Value>,
    /// Which identity source signed the user in (`local`, `oidc`).
    pub idp: String,
    /// When the session started.
    pub created_at: i64,
    /// When it ends.
    pub expires_at: i64,
}

/// A registered OAuth client (dynamic registration, or a cached client ID metadata document).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OAuthClient {
    /// `client_id`.
    pub client_id: String,
    /// The client metadata (RFC 7591): redirect URIs, name, auth method, ...
    pub metadata: Value,
    /// The client secret, for confidential clients. Stored sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// When it was registered.
    pub created_at: i64,
    /// When the registration lapses.
    pub expires_at: i64,
}

/// What an authorization code grants, fixed when the code is issued (RFC 6749 §4.1.2).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodeGrant {
    /// The client the code was issued to.
    pub client_id: String,
    /// The exact redirect URI of the request.
    pub redirect_uri: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// The resource (MCP route URL) the tokens are bound to (RFC 8707).
    pub resource: String,
    /// Granted scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// The signed-in user.
    pub user_id: String,
    /// The session the user authorized from.
    pub session_id: String,
    /// When the code lapses.
    pub expires_at: i64,
}

/// The outcome of redeeming a code.
#[derive(Clone, Debug, PartialEq)]
pub enum Redemption {
    /// First use: here is what it grants.
    Redeemed(CodeGrant),
    /// Already used: revoke what the first use issued (`family_id`, when it issued any).
    Replayed {
        /// The family the first redemption created.
        family_id: Option<String>,
    },
    /// Unknown or expired.
    Invalid,
}

/// A refresh-token family: every refresh token descended from one authorization.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenFamily {
    /// Random id.
    pub family_id: String,
    /// The client the tokens belong to.
    pub client_id: String,
    /// The user.
    pub user_id: String,
    /// The browser session the user authorized from. The grant outlives it: signing out of
    /// the browser does not end it.
    pub session_id: String,
    /// The resource the tokens are bound to.
    pub resource: String,
    /// Granted scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// When the family started.
    pub created_at: i64,
    /// When the whole family lapses, however often it is refreshed
    /// (`mcp_refresh_token_max_ttl` after `created_at`).
    pub expires_at: i64,
    /// Who the grant is for, as they were at the last authorization or refresh: what its TEs
    /// carry. `None` for grants issued before grants outlived browser sessions; those take it
    /// from their session at their next refresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<GrantIdentity>,
    /// The client's name when it was authorized (`client_name`, if it gave one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// The redirect URI the client was authorized with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_uri: Option<String>,
}

/// The user a grant is for, kept with the grant so it works without a browser session.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GrantIdentity {
    /// Email address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Other identity-provider claims.
    #[serde(default)]
    pub claims: serde_json::Map<String, Value>,
    /// Which identity source signed the user in (`local`, `oidc`, `github`).
    pub idp: String,
    /// The OpenID Connect provider's refresh token from the sign-in, sealed by the gateway
    /// (context `idp-refresh-grant`): refreshed at each grant refresh to learn whether the
    /// provider still vouches for the user. `None`: the provider gave none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_refresh_token: Option<String>,
}

impl GrantIdentity {
    /// The identity of a browser session (without any provider token).
    pub fn of(session: &Session) -> Self {
        Self {
            email: session.email.clone(),
            name: session.name.clone(),
            groups: session.groups.clone(),
            claims: session.claims.clone(),
            idp: session.idp.clone(),
            idp_refresh_token: None,
        }
    }
}

/// A live client grant, as "Connected apps" lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    /// The token family.
    pub family: TokenFamily,
    /// When a token was last issued from it (the authorization, or the last refresh).
    pub last_used_at: i64,
}

/// The outcome of rotating a refresh token.
#[derive(Clone, Debug, PartialEq)]
pub enum Rotation {
    /// This call won: the old token is spent, the new one is stored.
    Rotated(Box<TokenFamily>),
    /// Another rotation of the same token won moments ago (within the grace period): refused,
    /// but the family stays valid.
    Concurrent,
    /// A spent token was presented again: the family is now revoked.
    Reused {
        /// The revoked family.
        family_id: String,
    },
    /// Unknown, expired, or of a revoked family.
    Invalid,
}

/// What was revoked, for caches that validate tokens without the store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Revocation {
    /// A browser session (sign-out).
    Session(String),
    /// A refresh-token family (and the access tokens issued from it).
    Family(String),
}

/// An upstream provider's token (TI) held for one user and route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamToken {
    /// The access token.
    pub access_token: Secret,
    /// The refresh token, when the provider issued one.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// `token_type` (usually `Bearer`).
    #[serde(default)]
    pub token_type: Option<String>,
    /// When the access token expires, if the provider said.
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// Granted scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// Where to refresh it (discovered upstreams record their token endpoint).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// The client id used upstream (discovered upstreams register their own).
    #[serde(default)]
    pub client_id: Option<String>,
}

/// A stored upstream token with its version (for compare-and-swap).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredUpstreamToken {
    /// The token.
    pub token: UpstreamToken,
    /// Increases with every write.
    pub version: i64,
}

/// An upstream authorization in progress: what the callback needs to finish it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingAuthorization {
    /// The user who started it (the callback must come from the same browser session).
    pub user_id: String,
    /// The session it was started from.
    pub session_id: String,
    /// The route whose TI is being obtained.
    pub route_id: String,
    /// The PKCE verifier sent upstream. Stored sealed with the rest.
    pub pkce_verifier: String,
    /// Whatever the gateway needs to resume (the downstream authorization request, a return
    /// URL, the discovered endpoints).
    #[serde(default)]
    pub resume: Value,
    /// When it lapses.
    pub expires_at: i64,
}
