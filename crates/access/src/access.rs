//! [`Access`]: the gateway's [`Hooks`], composed of the four services that own their state —
//! [`SignIn`] (local users, OIDC, sessions), [`AuthorizationServer`] (OAuth for MCP clients),
//! [`UpstreamBroker`] (users' upstream tokens) and [`Enforcement`] (policy on every request) —
//! and the one table of the gateway's own endpoints ([`dispatch`](crate::dispatch)).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use postern_gateway::body::Body;
use postern_gateway::hooks::{Grant, Hooks, RequestContext};
use postern_gateway::routes::Route;
use postern_store::Store;
use serde_json::json;

use crate::authorization_server::AuthorizationServer;
use crate::broker::{Callback, UpstreamBroker};
use crate::dispatch::{self, Endpoint, Place};
use crate::enforcement::Enforcement;
use crate::enforcement::assertion::Signer;
use crate::enforcement::audit::Audit;
use crate::oauth_server::RevocationCache;
use crate::settings::{AccessSettings, Live};
use crate::sign_in::SignIn;
use crate::sign_in::oidc::Oidc;
use crate::sign_in::users::LocalUsers;
use crate::web::reply::{cors, json_error, json_response, preflight, redirect_to};

/// The gateway hooks.
pub struct Access {
    sign_in: SignIn,
    server: AuthorizationServer,
    broker: Arc<UpstreamBroker>,
    enforcement: Enforcement,
    /// Aggregate routes' connections to their members' upstreams.
    members: postern_gateway::proxy::UpstreamClient,
}

impl Access {
    /// Hooks over `store` with `users` signing in and `signer` making assertions.
    pub fn new(store: Store, users: LocalUsers, signer: Signer, settings: AccessSettings) -> Self {
        let audit = Audit::new(
            settings.audit_file.clone(),
            settings.authorize_log_fields.as_deref(),
        );
        let authenticate = settings.authenticate.clone();
        let email_hint = settings.sign_in_email.clone();
        let settings = Live::new(settings);
        let revocations = Arc::new(RevocationCache::default());
        RevocationCache::spawn_sync(&revocations, store.clone());
        let http = postern_http::client(Duration::from_secs(15));
        let mut broker =
            UpstreamBroker::new(store.clone(), settings.clone(), http, revocations.clone());
        broker.audit = audit.clone();
        let broker = Arc::new(broker);
        let mut sign_in = SignIn::new(store.clone(), users, settings.clone())
            .with_authenticate(authenticate)
            .with_email_hint(email_hint);
        sign_in.audit = audit.clone();
        let mut server = AuthorizationServer::new(
            store.clone(),
            settings.clone(),
            revocations.clone(),
            broker.clone(),
        );
        server.audit = audit.clone();
        server.users = sign_in.users();
        Self {
            sign_in,
            server,
            enforcement: Enforcement {
                audit,
                store,
                settings,
                signer,
                revocations,
                broker: broker.clone(),
            },
            broker,
            members: postern_gateway::proxy::UpstreamClient::new(),
        }
    }

    /// Puts a reloaded configuration in force for the requests that start from now on: its
    /// per-request `settings` (token lifetimes, cookie, claim headers, `authorize_log_fields`,
    /// ...) and the local `users` read again from `users_file`. The audit file stays where it
    /// was opened; what is built once at start (identity provider, signing key, sign-in origin,
    /// client-ID and discovery domain lists) the caller reports as needing a restart.
    pub fn reload(&self, mut settings: AccessSettings, users: LocalUsers) {
        settings.audit_file = self.enforcement.settings.get().audit_file.clone();
        self.enforcement
            .audit
            .set_fields(settings.authorize_log_fields.as_deref());
        self.enforcement.settings.set(settings);
        self.sign_in.set_users(users);
    }

    /// Signs users in with an OpenID Connect provider (local users may still post the form).
    pub fn with_oidc(mut self, oidc: Oidc) -> Self {
        self.sign_in = self.sign_in.with_oidc(oidc);
        self.server.idp = self.sign_in.identity_provider();
        self
    }

    /// Signs users in with GitHub (local users may still post the form).
    pub fn with_github(mut self, github: crate::sign_in::github::GitHub) -> Self {
        self.sign_in = self.sign_in.with_github(github);
        self.server.idp = self.sign_in.identity_provider();
        self
    }

    /// Answers one of the gateway's own endpoints.
    async fn answer(
        &self,
        ctx: &RequestContext,
        endpoint: Endpoint,
        request: Request<Body>,
    ) -> Response<Body> {
        match endpoint {
            Endpoint::ProtectedResource => {
                let suffix = request
                    .uri()
                    .path()
                    .strip_prefix("/.well-known/oauth-protected-resource")
                    .unwrap_or("");
                self.server.protected_resource(ctx, suffix)
            }
            Endpoint::AuthorizationServerMetadata => self.server.metadata(ctx),
            Endpoint::Jwks => self.jwks(request.headers()),
            Endpoint::PomeriumWellKnown => {
                let origin = ctx.origin();
                let sign_in = self.enforcement.settings.get().issuer(ctx);
                cached(
                    json_response(
                        StatusCode::OK,
                        &json!({
                            "issuer": format!("{origin}/"),
                            "authentication_callback_endpoint": format!("{sign_in}/.pomerium/callback"),
                            "jwks_uri": format!("{origin}/.well-known/pomerium/jwks.json"),
                            "frontchannel_logout_uri": format!("{origin}/.pomerium/sign_out"),
                        }),
                    ),
                    "public, max-age=300",
                )
            }
            // Postern's own client ID metadata document, for upstream authorization servers
            // that accept one instead of dynamic registration.
            Endpoint::ClientMetadata => cached(
                json_response(
                    StatusCode::OK,
                    &crate::broker::discovery::client_metadata_document(&ctx.origin()),
                ),
                "public, max-age=3600",
            ),
            Endpoint::Register => self.server.register(ctx, request).await,
            Endpoint::Authorize => self.server.authorize_endpoint(ctx, request).await,
            Endpoint::Token => self.server.token(ctx, request).await,
            Endpoint::Revoke => self.server.revoke(ctx, request).await,
            Endpoint::UpstreamCallback => {
                if let Some(relayed) = self.relay_upstream_callback(ctx, &request) {
                    return relayed;
                }
                let mut response = match self.broker.upstream_callback(ctx, &request).await {
                    Callback::Done(response) => response,
                    Callback::ResumeAuthorization(query) => {
                        self.server
                            .authorize_with(ctx, &ctx.origin(), query, None, request.headers())
                            .await
                    }
                };
                // The trip is over, whichever way it ended.
                crate::web::round_trip::UPSTREAM
                    .clear(&mut response, self.broker.settings.get().cookie.secure);
                response
            }
            Endpoint::SignIn => self.sign_in.sign_in_form(ctx, request).await,
            Endpoint::SignOut => self.sign_in.sign_out(ctx, request).await,
            Endpoint::Handoff => self.sign_in.handoff(ctx, &request).await,
            Endpoint::OidcCallback => self.sign_in.oidc_callback(ctx, &request).await,
            Endpoint::Portal | Endpoint::PortalDisconnect => self.broker.portal(ctx, request).await,
            Endpoint::ConnectedApps => self.server.connected_apps(ctx, request).await,
            Endpoint::Routes | Endpoint::RoutesDisconnect | Endpoint::Connect => {
                self.broker.routes_api(ctx, endpoint, request).await
            }
        }
    }
}

impl Access {
    /// With a dedicated sign-in origin (`authenticate_service_url`), the answer for an endpoint
    /// asked for on the wrong side: a page of the sign-in origin asked for on a route host is
    /// sent there (GET); its APIs and forms are not served on route hosts (404 saying where
    /// they are), and route hosts' endpoints are not served on the sign-in origin.
    fn elsewhere(
        &self,
        ctx: &RequestContext,
        endpoint: Endpoint,
        request: &Request<Body>,
    ) -> Option<Response<Body>> {
        let settings = self.enforcement.settings.get();
        let service = settings.authenticate.as_ref()?;
        let on_sign_in_origin = self.enforcement.settings.get().on_authenticate(ctx);
        match endpoint.place() {
            Place::SignInOrigin if !on_sign_in_origin => {
                let there = format!(
                    "{}{}",
                    service.origin,
                    request.uri().path_and_query().map_or("/", |p| p.as_str())
                );
                let page = matches!(
                    endpoint,
                    Endpoint::Authorize | Endpoint::Portal | Endpoint::ConnectedApps
                );
                if page && matches!(*request.method(), Method::GET | Method::HEAD) {
                    return Some(redirect_to(&there));
                }
                Some(not_here(
                    ctx,
                    &format!(
                        "this is served by the sign-in origin {}: use {}{}",
                        service.origin,
                        service.origin,
                        request.uri().path()
                    ),
                ))
            }
            Place::RouteHosts if on_sign_in_origin => Some(not_here(
                ctx,
                &format!(
                    "{} is the sign-in origin; this is served on the MCP server's or app's own host",
                    service.origin
                ),
            )),
            _ => None,
        }
    }

    /// An upstream provider's redirect to a route host for an authorization that ran on the
    /// sign-in origin (the `/authorize` detour): that browser's binding cookie is there, so the
    /// code and state go there (it exchanges the code with this host's redirect URI, the one
    /// registered at the provider).
    fn relay_upstream_callback(
        &self,
        ctx: &RequestContext,
        request: &Request<Body>,
    ) -> Option<Response<Body>> {
        let settings = self.enforcement.settings.get();
        let service = settings.authenticate.as_ref()?;
        if self.enforcement.settings.get().on_authenticate(ctx) {
            return None;
        }
        let query = request.uri().query().unwrap_or("");
        let state = crate::web::reply::form_value(query, "state").unwrap_or_default();
        if crate::web::round_trip::UPSTREAM.matches(request.headers(), &state) {
            return None;
        }
        Some(redirect_to(&format!(
            "{}{}?{query}",
            service.origin,
            request.uri().path()
        )))
    }

    /// The assertion's public keys, with an `ETag` (the keys' hash) so verifiers revalidate with
    /// `If-None-Match` and get 304 until the keys change.
    fn jwks(&self, headers: &HeaderMap) -> Response<Body> {
        let jwks = self.enforcement.signer.jwks();
        let etag = format!(
            "\"{}\"",
            postern_store::hash_secret(&jwks.to_string())
                .get(..32)
                .unwrap_or_default()
        );
        let unchanged = headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| {
                let tag = tag.trim();
                tag == "*" || tag.trim_start_matches("W/") == etag
            });
        let mut response = if unchanged {
            let mut response = Response::new(postern_gateway::body::empty());
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            response
        } else {
            json_response(StatusCode::OK, jwks)
        };
        if let Ok(value) = HeaderValue::from_str(&etag) {
            response.headers_mut().insert(header::ETAG, value);
        }
        cached(response, "public, max-age=300")
    }
}

/// 404 for an endpoint on the wrong side of the sign-in origin, saying where it is.
fn not_here(ctx: &RequestContext, message: &str) -> Response<Body> {
    json_error(StatusCode::NOT_FOUND, "not_found", message, &ctx.request_id)
}

fn cached(mut response: Response<Body>, policy: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(policy));
    response
}

#[async_trait]
impl Hooks for Access {
    fn intercepts(
        &self,
        _ctx: &RequestContext,
        route: Option<&Arc<Route>>,
        request: &Request<Body>,
    ) -> bool {
        // Everything `intercept` answers: its own paths, and CORS preflights on MCP routes.
        let path = request.uri().path();
        path.starts_with("/.pomerium/")
            || path.starts_with("/.well-known/")
            || (request.method() == Method::OPTIONS && route.is_some_and(|r| r.is_mcp_server()))
            || (route.is_some_and(|r| r.is_mcp_server()) && is_page_navigation(request))
            || route.is_some_and(|r| crate::aggregate::is_aggregate(r))
    }

    async fn intercept(
        &self,
        ctx: &RequestContext,
        route: Option<&Arc<Route>>,
        request: Request<Body>,
    ) -> Result<Response<Body>, Request<Body>> {
        let path = request.uri().path();
        if request.method() == Method::OPTIONS
            && (dispatch::preflights(path) || route.is_some_and(|r| r.is_mcp_server()))
        {
            return Ok(preflight(
                request
                    .headers()
                    .get(header::ACCESS_CONTROL_REQUEST_HEADERS),
            ));
        }
        let Some(endpoint) = dispatch::endpoint(path) else {
            if let Some(route) = route.filter(|r| r.is_mcp_server())
                && is_page_navigation(&request)
            {
                return Ok(mcp_server_page(ctx, route));
            }
            // An aggregate route has no upstream: its MCP requests are answered here.
            if let Some(route) = route.filter(|r| crate::aggregate::is_aggregate(r)) {
                let aggregator = crate::aggregate::Aggregator {
                    enforcement: &self.enforcement,
                    client: &self.members,
                };
                return Ok(Box::pin(aggregator.serve(ctx, route, request)).await);
            }
            return Err(request);
        };
        if let Some(elsewhere) = self.elsewhere(ctx, endpoint, &request) {
            return Ok(elsewhere);
        }
        let mut response = self.answer(ctx, endpoint, request).await;
        if endpoint.is_api() {
            cors(response.headers_mut());
        } else {
            response = name_the_site(ctx, response).await;
        }
        Ok(response)
    }

    async fn authorize(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Grant), Response<Body>> {
        self.enforcement.authorize(ctx, route, request).await
    }

    async fn upstream_headers(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
    ) -> Result<HeaderMap, Response<Body>> {
        self.enforcement.upstream_headers(ctx, route, grant).await
    }

    async fn filter_response(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
        response: Response<Body>,
    ) -> Response<Body> {
        self.enforcement
            .filter_response(ctx, route, grant, response)
            .await
    }
}

/// Whether `request` is a person's browser loading a page (an address typed or a link
/// followed), not an MCP client: a GET that asks for HTML and no event stream, carries no
/// token and no MCP headers, and (where the browser says so) is a navigation. MCP clients
/// POST JSON-RPC, or GET with `Accept: text/event-stream`, so they never match.
fn is_page_navigation(request: &Request<Body>) -> bool {
    let headers = request.headers();
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let fetch_mode = headers.get("sec-fetch-mode").and_then(|v| v.to_str().ok());
    matches!(*request.method(), Method::GET | Method::HEAD)
        && accept.contains("text/html")
        && !accept.contains("text/event-stream")
        && !headers.contains_key(header::AUTHORIZATION)
        && !headers.contains_key("mcp-session-id")
        && !headers.contains_key("mcp-protocol-version")
        && fetch_mode.is_none_or(|mode| mode == "navigate")
}

/// The page a browser gets on an MCP server's URL ([`pages::mcp_server_url`]).
fn mcp_server_page(ctx: &RequestContext, route: &Route) -> Response<Body> {
    let url = crate::oauth_server::route_resource(route, &ctx.origin());
    let portal = match ctx.runtime.config.authenticate_service() {
        Some(service) => format!("{}/.pomerium/", service.origin),
        None => "/.pomerium/".to_owned(),
    };
    let mut response = crate::web::reply::html(
        StatusCode::OK,
        crate::web::pages::mcp_server_url(&url, &portal),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Puts "Postern · HOST" at the top of a page the gateway answers itself, so a person can tell
/// which gateway (and host) a sign-in, consent or portal page belongs to. Pages that name the
/// site themselves (`class="site"`, the sign-in form) are left as they are.
async fn name_the_site(ctx: &RequestContext, response: Response<Body>) -> Response<Body> {
    use http_body_util::BodyExt;
    let is_html = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if !is_html {
        return response;
    }
    let (parts, body) = response.into_parts();
    // The gateway's pages are whole strings in memory: collecting them waits for nothing.
    let Ok(collected) = body.collect().await else {
        return Response::from_parts(parts, postern_gateway::body::full(bytes::Bytes::new()));
    };
    let page = collected.to_bytes();
    let text = String::from_utf8_lossy(&page);
    if text.contains("class=\"site\"") || !text.contains("<body>") {
        return Response::from_parts(parts, postern_gateway::body::full(page));
    }
    let origin = ctx.origin();
    let host = origin.split_once("://").map_or(origin.as_str(), |(_, h)| h);
    let banner = format!(
        "<body><p class=\"site\" style=\"color:#6b7280;margin:0 0 .5rem\">Postern · <span id=\"site\">{}</span></p>",
        crate::web::pages::escape(host)
    );
    let named = text.replacen("<body>", &banner, 1);
    let mut parts = parts;
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(
        parts,
        postern_gateway::body::full(bytes::Bytes::from(named)),
    )
}

#[cfg(test)]
mod page_navigation_tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request<Body> {
        let mut builder = Request::builder().method(method).uri("/sqlite");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(postern_gateway::body::full(bytes::Bytes::new()))
            .unwrap()
    }

    #[test]
    fn only_a_browser_loading_a_page_gets_the_server_url_page() {
        let html = "text/html,application/xhtml+xml,*/*;q=0.8";
        let page = [
            (Method::GET, vec![("accept", html)]),
            (
                Method::GET,
                vec![("accept", html), ("sec-fetch-mode", "navigate")],
            ),
            (Method::HEAD, vec![("accept", html)]),
        ];
        for (method, headers) in page {
            assert!(
                is_page_navigation(&request(method.clone(), &headers)),
                "{method} {headers:?}"
            );
        }
        let not_page = [
            // MCP clients: JSON-RPC posts and event streams.
            (
                Method::POST,
                vec![("accept", "application/json, text/event-stream")],
            ),
            (Method::POST, vec![("accept", html)]),
            (Method::GET, vec![("accept", "text/event-stream")]),
            (
                Method::GET,
                vec![("accept", "text/html, text/event-stream")],
            ),
            (Method::GET, vec![("accept", "application/json")]),
            (Method::GET, vec![]),
            (Method::DELETE, vec![("accept", html)]),
            // Anything carrying a token or an MCP session is a client, whatever it accepts.
            (
                Method::GET,
                vec![("accept", html), ("authorization", "Bearer x")],
            ),
            (Method::GET, vec![("accept", html), ("mcp-session-id", "s")]),
            (
                Method::GET,
                vec![("accept", html), ("mcp-protocol-version", "2025-06-18")],
            ),
            // A script's fetch from a page is not a navigation.
            (
                Method::GET,
                vec![("accept", html), ("sec-fetch-mode", "cors")],
            ),
            (
                Method::GET,
                vec![("accept", html), ("sec-fetch-mode", "no-cors")],
            ),
        ];
        for (method, headers) in not_page {
            assert!(
                !is_page_navigation(&request(method.clone(), &headers)),
                "{method} {headers:?}"
            );
        }
    }
}
