//! The gateway's own endpoints: the one table of the `/.pomerium/*` and `/.well-known/*` paths
//! Postern answers, and which of them are APIs (CORS for browser-based MCP clients) rather than
//! pages.

/// An endpoint of the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// RFC 9728 protected resource metadata (`/.well-known/oauth-protected-resource[/path]`).
    ProtectedResource,
    /// RFC 8414 authorization server metadata, and the same as OpenID configuration.
    AuthorizationServerMetadata,
    /// The assertion's signing keys.
    Jwks,
    /// `/.well-known/pomerium`: where the issuer's keys, callback and sign-out are (Pomerium's
    /// document; MCP servers and SDKs find the JWKS from it).
    PomeriumWellKnown,
    /// Postern's own client ID metadata document (for upstream authorization servers).
    ClientMetadata,
    /// RFC 7591 dynamic client registration.
    Register,
    /// `/authorize`, with sign-in and consent.
    Authorize,
    /// `/token`.
    Token,
    /// RFC 7009 revocation.
    Revoke,
    /// The upstream provider's redirect back with the code for the user's TI.
    UpstreamCallback,
    /// The local sign-in form (GET shows it, POST signs in; with OIDC, GET goes to the provider).
    SignIn,
    /// Sign-out.
    SignOut,
    /// The identity provider's redirect back.
    OidcCallback,
    /// The portal page.
    Portal,
    /// The portal's Disconnect form.
    PortalDisconnect,
    /// The Connected apps page (the user's client grants), its Revoke and "Sign out everywhere"
    /// forms.
    ConnectedApps,
    /// The user's MCP servers and their connection state (apps).
    Routes,
    /// Disconnect upstream accounts (apps).
    RoutesDisconnect,
    /// Connect an upstream account (the confirmation page and its POST).
    Connect,
    /// A route host takes the session the sign-in origin hands back (`authenticate_service_url`).
    Handoff,
}

/// Where an endpoint is served when `authenticate_service_url` gives sign-in its own origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// On every host.
    Anywhere,
    /// Only on the sign-in origin: sign-in's identity provider return, consent, the portal and
    /// the authorization server (no route's content shares an origin with them).
    SignInOrigin,
    /// Only on route hosts: what belongs to a route's host (its resource metadata, the apps'
    /// API, the session handoff).
    RouteHosts,
}

/// How a table entry matches a path.
#[derive(Clone, Copy)]
enum Match {
    Exact(&'static str),
    /// The path, or the path followed by `/...` (RFC 9728 and RFC 8414 path suffixes).
    WithSuffix(&'static str),
}

/// Every endpoint, by path.
const TABLE: &[(Match, Endpoint)] = &[
    (
        Match::WithSuffix("/.well-known/oauth-protected-resource"),
        Endpoint::ProtectedResource,
    ),
    (
        Match::WithSuffix("/.well-known/oauth-authorization-server"),
        Endpoint::AuthorizationServerMetadata,
    ),
    (
        Match::Exact("/.well-known/openid-configuration"),
        Endpoint::AuthorizationServerMetadata,
    ),
    (
        Match::Exact("/.well-known/pomerium/jwks.json"),
        Endpoint::Jwks,
    ),
    (
        Match::Exact("/.well-known/pomerium"),
        Endpoint::PomeriumWellKnown,
    ),
    (
        Match::Exact("/.well-known/pomerium/"),
        Endpoint::PomeriumWellKnown,
    ),
    (
        Match::Exact("/.pomerium/mcp/client/metadata.json"),
        Endpoint::ClientMetadata,
    ),
    (Match::Exact("/.pomerium/mcp/register"), Endpoint::Register),
    (
        Match::Exact("/.pomerium/mcp/authorize"),
        Endpoint::Authorize,
    ),
    (Match::Exact("/.pomerium/mcp/token"), Endpoint::Token),
    (Match::Exact("/.pomerium/mcp/revoke"), Endpoint::Revoke),
    (
        Match::Exact("/.pomerium/mcp/client/oauth/callback"),
        Endpoint::UpstreamCallback,
    ),
    (
        Match::Exact("/.pomerium/mcp/oauth/callback"),
        Endpoint::UpstreamCallback,
    ),
    (Match::Exact("/.pomerium/mcp/routes"), Endpoint::Routes),
    (
        Match::Exact("/.pomerium/mcp/routes/disconnect"),
        Endpoint::RoutesDisconnect,
    ),
    (Match::Exact("/.pomerium/mcp/connect"), Endpoint::Connect),
    (Match::Exact("/.pomerium/sign_in"), Endpoint::SignIn),
    (Match::Exact("/.pomerium/sign_out"), Endpoint::SignOut),
    (Match::Exact("/.pomerium/callback"), Endpoint::OidcCallback),
    (Match::Exact("/.pomerium/handoff"), Endpoint::Handoff),
    (Match::Exact("/.pomerium/"), Endpoint::Portal),
    (
        Match::Exact("/.pomerium/disconnect"),
        Endpoint::PortalDisconnect,
    ),
    (
        Match::WithSuffix("/.pomerium/apps"),
        Endpoint::ConnectedApps,
    ),
];

/// The endpoint at `path`, if the gateway answers it itself.
pub(crate) fn endpoint(path: &str) -> Option<Endpoint> {
    TABLE.iter().find_map(|(how, endpoint)| {
        let matches = match how {
            Match::Exact(p) => path == *p,
            Match::WithSuffix(p) => path
                .strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        };
        matches.then_some(*endpoint)
    })
}

/// Whether a CORS preflight to `path` is answered (the OAuth endpoints and metadata, for
/// browser-based MCP clients; MCP server routes are handled by the caller).
pub(crate) fn preflights(path: &str) -> bool {
    path.starts_with("/.well-known/oauth-")
        || path == "/.well-known/openid-configuration"
        || path.starts_with("/.well-known/pomerium")
        || path.starts_with("/.pomerium/mcp/")
}

impl Endpoint {
    /// Where the endpoint is served when sign-in has its own origin.
    pub(crate) fn place(self) -> Place {
        match self {
            Endpoint::AuthorizationServerMetadata
            | Endpoint::Register
            | Endpoint::Authorize
            | Endpoint::Token
            | Endpoint::Revoke
            | Endpoint::OidcCallback
            | Endpoint::Portal
            | Endpoint::PortalDisconnect
            | Endpoint::ConnectedApps => Place::SignInOrigin,
            Endpoint::ProtectedResource
            | Endpoint::Routes
            | Endpoint::RoutesDisconnect
            | Endpoint::Connect
            | Endpoint::Handoff => Place::RouteHosts,
            Endpoint::Jwks
            | Endpoint::PomeriumWellKnown
            | Endpoint::ClientMetadata
            | Endpoint::UpstreamCallback
            | Endpoint::SignIn
            | Endpoint::SignOut => Place::Anywhere,
        }
    }

    /// An API for browser-based MCP clients (any origin, bearer tokens, no cookies): answered
    /// with CORS headers. Pages and the flows that set cookies are not.
    pub(crate) fn is_api(self) -> bool {
        matches!(
            self,
            Endpoint::ProtectedResource
                | Endpoint::AuthorizationServerMetadata
                | Endpoint::Jwks
                | Endpoint::PomeriumWellKnown
                | Endpoint::Register
                | Endpoint::Token
                | Endpoint::Revoke
                | Endpoint::Routes
                | Endpoint::RoutesDisconnect
                | Endpoint::Connect
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_one_endpoint() {
        for (path, expected) in [
            (
                "/.well-known/oauth-protected-resource",
                Some(Endpoint::ProtectedResource),
            ),
            (
                "/.well-known/oauth-protected-resource/sqlite",
                Some(Endpoint::ProtectedResource),
            ),
            ("/.well-known/oauth-protected-resourcex", None),
            (
                "/.well-known/oauth-authorization-server",
                Some(Endpoint::AuthorizationServerMetadata),
            ),
            (
                "/.well-known/openid-configuration",
                Some(Endpoint::AuthorizationServerMetadata),
            ),
            ("/.pomerium/mcp/token", Some(Endpoint::Token)),
            ("/.well-known/pomerium", Some(Endpoint::PomeriumWellKnown)),
            ("/.well-known/pomerium/", Some(Endpoint::PomeriumWellKnown)),
            ("/.well-known/pomerium/jwks.json", Some(Endpoint::Jwks)),
            ("/.pomerium/mcp/token/x", None),
            ("/.pomerium/", Some(Endpoint::Portal)),
            ("/.pomerium", None),
            ("/.pomerium/apps", Some(Endpoint::ConnectedApps)),
            ("/.pomerium/apps/revoke", Some(Endpoint::ConnectedApps)),
            ("/.pomerium/appsx", None),
            ("/.pomerium/unknown", None),
        ] {
            assert_eq!(endpoint(path), expected, "{path}");
        }
        assert!(preflights("/.pomerium/mcp/anything"));
        assert!(!preflights("/.pomerium/sign_in"));
    }
}
