//! Every default of the configuration, in one place: a named constant per default, and an
//! accessor on [`Config`], [`Route`] or [`OAuthEndpoint`] that gives the value in effect. Code
//! that reads a setting which has a default calls the accessor, never the raw field, so a
//! default is written once and documented once.

use std::path::PathBuf;
use std::time::Duration;

use crate::types::{
    AuthStyle, Config, IssuerFormat, Mcp, OAuthEndpoint, Route, StorageType, UpstreamOAuth2,
};

/// `address` with TLS.
pub const LISTEN_ADDRESS: &str = ":443";
/// `address` with `insecure_server: true`.
pub const LISTEN_ADDRESS_INSECURE: &str = ":8080";
/// `http_redirect_address` (with TLS; an empty string turns the listener off).
pub const HTTP_REDIRECT_ADDRESS: &str = ":80";
/// `data_dir`.
pub const DATA_DIR: &str = "postern-data";
/// `autocert_dir`, inside the data directory.
pub const AUTOCERT_SUBDIR: &str = "autocert";
/// `autocert_ca`: Let's Encrypt's production directory.
pub const AUTOCERT_CA: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// The audit log, inside the data directory (not configurable).
pub const AUDIT_FILE: &str = "audit.jsonl";
/// `max_connections`.
pub const MAX_CONNECTIONS: usize = 10_000;
/// An `idp_provider` Postern signs in with over OpenID Connect, and what it implies.
#[derive(Clone, Copy, Debug)]
pub struct OidcPreset {
    /// The `idp_provider` value.
    pub name: &'static str,
    /// The issuer when `idp_provider_url` is left out (providers with one public issuer).
    pub issuer: Option<&'static str>,
    /// The ID-token claim with the user's groups, when `idp_groups_claim` is left out.
    pub groups_claim: &'static str,
    /// The scopes asked for when `idp_scopes` is left out.
    pub scopes: &'static [&'static str],
}

/// Every `idp_provider` Postern accepts: `oidc` and Pomerium's names of OpenID Connect
/// providers (each is OIDC discovery at its issuer; only the defaults differ).
pub const OIDC_PRESETS: [OidcPreset; 10] = [
    OidcPreset {
        name: "oidc",
        issuer: None,
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &IDP_SCOPES,
    },
    OidcPreset {
        name: "google",
        issuer: Some("https://accounts.google.com"),
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &IDP_SCOPES,
    },
    OidcPreset {
        name: "gitlab",
        issuer: Some("https://gitlab.com"),
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &IDP_SCOPES,
    },
    OidcPreset {
        name: "okta",
        issuer: None,
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &IDP_SCOPES,
    },
    OidcPreset {
        name: "auth0",
        issuer: None,
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &IDP_SCOPES,
    },
    OidcPreset {
        name: "azure",
        // Microsoft's multi-tenant endpoint, as Pomerium defaults to: any Microsoft account.
        issuer: Some("https://login.microsoftonline.com/common/v2.0"),
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &IDP_SCOPES,
    },
    OidcPreset {
        name: "cognito",
        issuer: None,
        groups_claim: "cognito:groups",
        scopes: &IDP_SCOPES,
    },
    OidcPreset {
        name: "onelogin",
        issuer: Some("https://openid-connect.onelogin.com/oidc"),
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &ONELOGIN_SCOPES,
    },
    OidcPreset {
        name: "ping",
        issuer: None,
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &IDP_SCOPES,
    },
    OidcPreset {
        name: "keycloak",
        issuer: None,
        groups_claim: IDP_GROUPS_CLAIM,
        scopes: &IDP_SCOPES,
    },
];

/// `set_response_headers` when it is absent: Pomerium's security headers (for its
/// configurations, byte for byte).
pub const RESPONSE_HEADERS: [(&str, &str); 3] = [
    ("x-frame-options", "SAMEORIGIN"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
];
/// Added to [`RESPONSE_HEADERS`] on responses over https.
pub const HSTS: &str = "max-age=31536000; includeSubDomains; preload";
/// The `set_response_headers` key that turns every default off.
pub const DISABLE_RESPONSE_HEADERS: &str = "disable";
/// `idp_provider_url` with `idp_provider: github`.
pub const GITHUB_URL: &str = "https://github.com";

/// `timeout_read`: a request head, or a stalled body, gets 408 after this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `timeout_idle`: an idle client connection is closed after this.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(75);
/// `default_upstream_timeout`, and a route's `timeout` when neither is set.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// `cookie_name`.
pub const COOKIE_NAME: &str = "_postern";
/// `cookie_expire`.
pub const COOKIE_EXPIRE: Duration = Duration::from_secs(14 * 3600);
/// `pass_identity_headers` (global, and a route's when it sets none).
pub const PASS_IDENTITY_HEADERS: bool = false;
/// `jwt_issuer_format`.
pub const JWT_ISSUER_FORMAT: IssuerFormat = IssuerFormat::HostOnly;
/// `mcp_access_token_ttl`.
pub const MCP_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// The shortest `mcp_access_token_ttl` accepted.
pub const MCP_ACCESS_TOKEN_TTL_MIN: Duration = Duration::from_secs(60);
/// The longest `mcp_access_token_ttl` accepted.
pub const MCP_ACCESS_TOKEN_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// `mcp_refresh_token_idle_ttl`.
pub const MCP_REFRESH_TOKEN_IDLE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// `mcp_refresh_token_max_ttl`.
pub const MCP_REFRESH_TOKEN_MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// `mcp_dynamic_client_registration`.
pub const MCP_DYNAMIC_CLIENT_REGISTRATION: bool = true;
/// `idp_scopes`.
pub const IDP_SCOPES: [&str; 3] = ["openid", "profile", "email"];
/// `idp_scopes` with `idp_provider: onelogin`: OneLogin sends groups only for the `groups` scope.
pub const ONELOGIN_SCOPES: [&str; 4] = ["openid", "profile", "email", "groups"];
/// `idp_groups_claim`.
pub const IDP_GROUPS_CLAIM: &str = "groups";
/// `databroker_storage_type`.
pub const STORAGE_TYPE: StorageType = StorageType::Sqlite;
/// `log_level`.
pub const LOG_LEVEL: &str = "info";
/// A route's `idle_timeout`, except on MCP server routes, whose streams (SSE) may be quiet for
/// a long time and have none.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// `mcp.server.max_request_bytes`; other routes have no limit.
pub const MAX_REQUEST_BYTES: u64 = 1024 * 1024;
/// `upstream_oauth2.callback_path`: the upstream provider's redirect URI path current Pomerium
/// sends.
pub const UPSTREAM_CALLBACK_PATH: &str = "/.pomerium/mcp/client/oauth/callback";
/// The other `upstream_oauth2.callback_path`: the seed's (and older Pomerium documentation's).
pub const SEED_UPSTREAM_CALLBACK_PATH: &str = "/.pomerium/mcp/oauth/callback";
/// `upstream_oauth2.endpoint.auth_style`: HTTP Basic, as RFC 6749 §2.3.1 recommends.
pub const AUTH_STYLE: AuthStyle = AuthStyle::Header;

/// Whether `host` is a loopback name browsers treat as a secure context over plain HTTP.
fn is_localhost(host: &str) -> bool {
    // RFC 6761 §6.3: `*.localhost` is loopback too.
    matches!(host, "localhost" | "127.0.0.1" | "::1") || host.ends_with(".localhost")
}

/// `authenticate_service_url`, parsed: the origin sign-in and the OAuth endpoints live on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticateService {
    /// `scheme://host[:port]`, as browsers and clients address it.
    pub origin: String,
    /// The host (lower-case, IPv6 without brackets).
    pub host: String,
    /// The port (the scheme's default when the URL names none).
    pub port: u16,
}

impl Config {
    /// The listen address in effect (`address`; [`LISTEN_ADDRESS`], or
    /// [`LISTEN_ADDRESS_INSECURE`] with `insecure_server`).
    pub fn listen_address(&self) -> String {
        self.address.clone().unwrap_or_else(|| {
            if self.insecure_server {
                LISTEN_ADDRESS_INSECURE.into()
            } else {
                LISTEN_ADDRESS.into()
            }
        })
    }

    /// Where plain HTTP is redirected to HTTPS and ACME challenges are answered
    /// (`http_redirect_address`, default [`HTTP_REDIRECT_ADDRESS`]); `None` when the gateway
    /// serves plain HTTP or the key is set to an empty string.
    pub fn http_redirect_address(&self) -> Option<&str> {
        if self.insecure_server {
            return None;
        }
        let address = self
            .http_redirect_address
            .as_deref()
            .unwrap_or(HTTP_REDIRECT_ADDRESS);
        (!address.is_empty()).then_some(address)
    }

    /// The data directory in effect (`data_dir`, default [`DATA_DIR`]; relative paths are
    /// relative to the configuration file's directory).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DATA_DIR))
    }

    /// Where ACME keeps its account and certificates (`autocert_dir`, default
    /// [`AUTOCERT_SUBDIR`] in the data directory).
    pub fn autocert_dir(&self) -> PathBuf {
        self.autocert_dir
            .clone()
            .unwrap_or_else(|| self.data_dir().join(AUTOCERT_SUBDIR))
    }

    /// The ACME directory URL (`autocert_ca`, default [`AUTOCERT_CA`]).
    pub fn autocert_ca(&self) -> &str {
        self.autocert_ca.as_deref().unwrap_or(AUTOCERT_CA)
    }

    /// Where the audit log is appended: [`AUDIT_FILE`] in the data directory.
    pub fn audit_file(&self) -> PathBuf {
        self.data_dir().join(AUDIT_FILE)
    }

    /// The connection limit in effect (`max_connections`, default [`MAX_CONNECTIONS`]).
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or(MAX_CONNECTIONS)
    }

    /// The default upstream timeout in effect (`default_upstream_timeout`, default
    /// [`UPSTREAM_TIMEOUT`]); see [`Route::timeout_in_effect`] for a route's.
    pub fn upstream_timeout(&self) -> Duration {
        self.default_upstream_timeout
            .map_or(UPSTREAM_TIMEOUT, |d| d.0)
    }

    /// How long a client may take to send a request head or leave its body stalled
    /// (`timeout_read`, default [`READ_TIMEOUT`]).
    pub fn read_timeout(&self) -> Duration {
        self.timeout_read.map_or(READ_TIMEOUT, |d| d.0)
    }

    /// The whole-request time limit (`timeout_write`; unset or zero: none).
    pub fn write_timeout(&self) -> Option<Duration> {
        self.timeout_write.map(|d| d.0).filter(|d| !d.is_zero())
    }

    /// How long an idle client connection stays open (`timeout_idle`, default
    /// [`IDLE_CONNECTION_TIMEOUT`]).
    pub fn idle_connection_timeout(&self) -> Duration {
        self.timeout_idle.map_or(IDLE_CONNECTION_TIMEOUT, |d| d.0)
    }

    /// The session cookie's name (`cookie_name`, default [`COOKIE_NAME`]).
    pub fn cookie_name(&self) -> &str {
        self.cookie_name.as_deref().unwrap_or(COOKIE_NAME)
    }

    /// The session lifetime (`cookie_expire`, default [`COOKIE_EXPIRE`]).
    pub fn cookie_expire(&self) -> Duration {
        self.cookie_expire.map_or(COOKIE_EXPIRE, |d| d.0)
    }

    /// Whether the gateway's cookies carry `Secure`: always, except on plain HTTP when every
    /// route is for localhost (browsers keep `Secure` cookies from plain-HTTP localhost, but
    /// not from other plain-HTTP hosts).
    pub fn cookie_secure(&self) -> bool {
        let localhost_only = self.routes.iter().all(|r| is_localhost(&r.from.host))
            && self
                .authenticate_service()
                .is_none_or(|a| is_localhost(&a.host));
        !(self.insecure_server && localhost_only)
    }

    /// Whether routes send the identity assertion upstream unless they say otherwise
    /// (`pass_identity_headers`, default [`PASS_IDENTITY_HEADERS`]); see
    /// [`Route::pass_identity_headers_in_effect`] for a route's.
    pub fn pass_identity_headers(&self) -> bool {
        self.pass_identity_headers.unwrap_or(PASS_IDENTITY_HEADERS)
    }

    /// `cookie_domain`, lower-case, without a leading dot; `None`: host-only cookies.
    pub fn cookie_domain(&self) -> Option<String> {
        self.cookie_domain
            .as_deref()
            .map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase())
    }

    /// `authenticate_service_url`, parsed (validated when the file was read).
    pub fn authenticate_service(&self) -> Option<AuthenticateService> {
        let url = url::Url::parse(self.authenticate_service_url.as_deref()?).ok()?;
        let host = match url.host()? {
            url::Host::Ipv6(ip) => ip.to_string(),
            host => host.to_string().to_ascii_lowercase(),
        };
        Some(AuthenticateService {
            origin: url.origin().ascii_serialization(),
            host,
            port: url.port_or_known_default()?,
        })
    }

    /// The assertion's issuer format (`jwt_issuer_format`, default [`JWT_ISSUER_FORMAT`]).
    pub fn jwt_issuer_format(&self) -> IssuerFormat {
        self.jwt_issuer_format.unwrap_or(JWT_ISSUER_FORMAT)
    }

    /// The lifetime of access tokens issued to MCP clients (`mcp_access_token_ttl`, default
    /// [`MCP_ACCESS_TOKEN_TTL`]; validated to lie within [`MCP_ACCESS_TOKEN_TTL_MIN`] and
    /// [`MCP_ACCESS_TOKEN_TTL_MAX`]).
    pub fn mcp_access_token_ttl(&self) -> Duration {
        self.mcp_access_token_ttl
            .map_or(MCP_ACCESS_TOKEN_TTL, |d| d.0)
    }

    /// How long a client grant's refresh token lasts unused (`mcp_refresh_token_idle_ttl`,
    /// default [`MCP_REFRESH_TOKEN_IDLE_TTL`]); each refresh starts it again.
    pub fn mcp_refresh_token_idle_ttl(&self) -> Duration {
        self.mcp_refresh_token_idle_ttl
            .map_or(MCP_REFRESH_TOKEN_IDLE_TTL, |d| d.0)
    }

    /// How long a client grant lasts from its authorization (`mcp_refresh_token_max_ttl`,
    /// default [`MCP_REFRESH_TOKEN_MAX_TTL`]).
    pub fn mcp_refresh_token_max_ttl(&self) -> Duration {
        self.mcp_refresh_token_max_ttl
            .map_or(MCP_REFRESH_TOKEN_MAX_TTL, |d| d.0)
    }

    /// Whether RFC 7591 dynamic client registration is accepted
    /// (`mcp_dynamic_client_registration`, default [`MCP_DYNAMIC_CLIENT_REGISTRATION`]).
    /// Pomerium's `runtime_flags: {mcp_dynamic_client_registration: ...}` says the same; the
    /// key wins when both are set.
    pub fn mcp_dynamic_client_registration(&self) -> bool {
        self.mcp_dynamic_client_registration
            .or_else(|| {
                self.runtime_flags
                    .get("mcp_dynamic_client_registration")
                    .copied()
            })
            .unwrap_or(MCP_DYNAMIC_CLIENT_REGISTRATION)
    }

    /// The OIDC scopes to request (`idp_scopes`, default the preset's: [`IDP_SCOPES`], for
    /// `onelogin` [`ONELOGIN_SCOPES`]).
    pub fn idp_scopes(&self) -> Vec<String> {
        if self.idp_scopes.is_empty() {
            let scopes = self.oidc_preset().map_or(&IDP_SCOPES[..], |p| p.scopes);
            scopes.iter().map(|s| (*s).to_owned()).collect()
        } else {
            self.idp_scopes.clone()
        }
    }

    /// The ID-token claim that lists the user's groups (`idp_groups_claim`, default
    /// [`IDP_GROUPS_CLAIM`]).
    pub fn idp_groups_claim(&self) -> &str {
        self.idp_groups_claim
            .as_deref()
            .or_else(|| self.oidc_preset().map(|p| p.groups_claim))
            .unwrap_or(IDP_GROUPS_CLAIM)
    }

    /// The `idp_provider`'s preset, when it is one Postern signs in with over OIDC.
    pub fn oidc_preset(&self) -> Option<&'static OidcPreset> {
        let name = self.idp_provider.as_deref()?;
        OIDC_PRESETS.iter().find(|p| p.name == name)
    }

    /// The OIDC issuer to sign in with: `idp_provider_url`, or the preset's own; `None` without
    /// an OIDC `idp_provider`.
    pub fn oidc_issuer(&self) -> Option<String> {
        let preset = self.oidc_preset()?;
        self.idp_provider_url
            .clone()
            .or_else(|| preset.issuer.map(str::to_owned))
    }

    /// With `idp_provider: github`, the GitHub to sign in with: `idp_provider_url` (a GitHub
    /// Enterprise Server) or [`GITHUB_URL`]; `None` otherwise.
    pub fn github_url(&self) -> Option<String> {
        (self.idp_provider.as_deref() == Some("github")).then(|| {
            self.idp_provider_url
                .as_deref()
                .unwrap_or(GITHUB_URL)
                .trim_end_matches('/')
                .to_owned()
        })
    }

    /// Where state is kept (`databroker_storage_type`, default [`STORAGE_TYPE`]).
    pub fn storage_type(&self) -> StorageType {
        self.databroker_storage_type.unwrap_or(STORAGE_TYPE)
    }

    /// The log level (`log_level`, default [`LOG_LEVEL`]).
    pub fn log_level(&self) -> &str {
        self.log_level.as_deref().unwrap_or(LOG_LEVEL)
    }
}

impl Route {
    /// Whether this is an MCP server route.
    fn is_mcp_server(&self) -> bool {
        matches!(self.mcp, Some(Mcp::Server(_)))
    }

    /// The time limit for the upstream's response headers: `timeout`, else the global
    /// [`Config::upstream_timeout`]. Zero means no limit.
    pub fn timeout_in_effect(&self, global: &Config) -> Duration {
        self.timeout
            .map_or_else(|| global.upstream_timeout(), |d| d.0)
    }

    /// How long a response stream may stay quiet before it is closed (`None`: forever):
    /// `idle_timeout` (`0` turns it off), else [`IDLE_TIMEOUT`], except on MCP server routes,
    /// which have none.
    pub fn idle_timeout_in_effect(&self) -> Option<Duration> {
        match self.idle_timeout {
            Some(d) if d.0.is_zero() => None,
            Some(d) => Some(d.0),
            None if self.is_mcp_server() => None,
            None => Some(IDLE_TIMEOUT),
        }
    }

    /// The largest request body accepted: on MCP server routes `mcp.server.max_request_bytes`
    /// (default [`MAX_REQUEST_BYTES`]); other routes have no limit (`u64::MAX`).
    pub fn max_request_bytes_in_effect(&self) -> u64 {
        match &self.mcp {
            Some(Mcp::Server(server)) => server.max_request_bytes.unwrap_or(MAX_REQUEST_BYTES),
            _ => u64::MAX,
        }
    }

    /// Whether the identity assertion is sent upstream: `pass_identity_headers`, else the
    /// global [`Config::pass_identity_headers`].
    pub fn pass_identity_headers_in_effect(&self, global: &Config) -> bool {
        self.pass_identity_headers
            .unwrap_or_else(|| global.pass_identity_headers())
    }
}

impl UpstreamOAuth2 {
    /// The path of the provider's redirect URI (`callback_path`, default
    /// [`UPSTREAM_CALLBACK_PATH`]).
    pub fn callback_path(&self) -> &str {
        self.callback_path
            .as_deref()
            .unwrap_or(UPSTREAM_CALLBACK_PATH)
    }
}

impl OAuthEndpoint {
    /// How the client authenticates at the token endpoint (`auth_style`, default
    /// [`AUTH_STYLE`]).
    pub fn auth_style(&self) -> AuthStyle {
        self.auth_style.unwrap_or(AUTH_STYLE)
    }
}

#[cfg(test)]
mod tests;
