//! The app-facing MCP endpoints of the seed (sections 3 to 5): the list of MCP servers a user
//! may use with their connection state, connecting an upstream account, disconnecting, and the
//! TE handed to MCP client apps.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use postern_gateway::body::Body;
use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::{Kind, Route};
use postern_oauth::registration::is_loopback;
use postern_policy::{Input, McpRequest};
use postern_store::{Session, StoreError};
use serde_json::{Value, json};

use crate::broker::UpstreamBroker;
use crate::broker::upstream;
use crate::dispatch::Endpoint;
use crate::oauth_server::{self, APP_AUDIENCE_PREFIX};
use crate::sign_in::session;
use crate::web::pages;
use crate::web::reply::{encode, html, json_error, json_response, redirect_to};

/// The sealing context of the connect confirmation's session binding.
const CONNECT_BINDING: &str = "connect";

impl UpstreamBroker {
    /// `/.pomerium/mcp/routes`, `/.pomerium/mcp/routes/disconnect`, `/.pomerium/mcp/connect`.
    pub(crate) async fn routes_api(
        &self,
        ctx: &RequestContext,
        endpoint: Endpoint,
        request: Request<Body>,
    ) -> Response<Body> {
        let session = self.caller(&request).await;
        let Some(session) = session else {
            // A person's browser goes to sign in and comes back (as in Pomerium); an app's
            // request (no HTML accepted, or a bearer token) keeps its 401.
            let browser = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|accept| accept.contains("text/html"))
                && !request.headers().contains_key(header::AUTHORIZATION);
            if endpoint == Endpoint::Connect
                || (endpoint == Endpoint::Routes && request.method() == Method::GET && browser)
            {
                let back = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                return redirect_to(&format!(
                    "/.pomerium/sign_in?redirect_uri={}",
                    encode(&back)
                ));
            }
            let response = json_error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "sign in, or send the TE as a bearer token",
                &ctx.request_id,
            );
            return response;
        };
        let mut response = match (endpoint, request.method()) {
            (Endpoint::Routes, &Method::GET) => {
                json_response(StatusCode::OK, &self.server_list(ctx, &session).await)
            }
            (Endpoint::RoutesDisconnect, &Method::POST) => {
                self.disconnect(ctx, &session, request).await
            }
            (Endpoint::Connect, &Method::GET) => self.connect(ctx, &session, &request).await,
            (Endpoint::Connect, &Method::POST) => {
                self.connect_confirmed(ctx, &session, request).await
            }
            _ => json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "wrong method for this endpoint",
                &ctx.request_id,
            ),
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// The portal (`GET /.pomerium/`) and its Disconnect form (`POST /.pomerium/disconnect`),
    /// for a browser session only.
    pub(crate) async fn portal(
        &self,
        ctx: &RequestContext,
        request: Request<Body>,
    ) -> Response<Body> {
        let Some(session) =
            session::current(request.headers(), &self.settings.get().cookie, &self.store).await
        else {
            return redirect_to("/.pomerium/sign_in?redirect_uri=%2F.pomerium%2F");
        };
        let mut response = match (request.uri().path(), request.method()) {
            ("/.pomerium/", &Method::GET | &Method::HEAD) => {
                let entries = self.servers(ctx, &session).await;
                let name = if session.name.is_empty() {
                    &session.email
                } else {
                    &session.name
                };
                html(
                    StatusCode::OK,
                    pages::portal(name, &session.email, &entries),
                )
            }
            ("/.pomerium/disconnect", &Method::POST) => {
                // A cross-site form must not disconnect anyone: the browser names the page that
                // sent the form, and it has to be this origin (the cookie is SameSite=Lax too).
                let origin = request
                    .headers()
                    .get(header::ORIGIN)
                    .and_then(|v| v.to_str().ok());
                if origin != Some(ctx.origin().as_str()) {
                    return html(
                        StatusCode::FORBIDDEN,
                        pages::message(
                            "Cannot disconnect",
                            "This form only works from the portal page of this site. Open /.pomerium/ and try again.",
                        ),
                    );
                }
                let body = match crate::web::forms::read_form(request).await {
                    Ok(body) => body,
                    Err(error) => {
                        return html(
                            error.status(),
                            pages::message("Cannot disconnect", &format!("{error}.")),
                        );
                    }
                };
                let form = oauth_server::form(&body);
                let Some(resource) = form.get("resource") else {
                    return html(
                        StatusCode::BAD_REQUEST,
                        pages::message("Cannot disconnect", "The form names no server."),
                    );
                };
                if self.forget_upstream(ctx, &session, resource).await.is_err() {
                    return html(
                        StatusCode::SERVICE_UNAVAILABLE,
                        pages::message(
                            "Cannot disconnect",
                            "The gateway's store is unavailable, so the account is still connected; try again.",
                        ),
                    );
                }
                redirect_to("/.pomerium/")
            }
            _ => html(
                StatusCode::METHOD_NOT_ALLOWED,
                pages::message("Wrong method", "Open /.pomerium/ in a browser."),
            ),
        };
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// Deletes `session`'s user's TI for the MCP server known by `url`, if any; a store
    /// failure is logged and returned (the account is still connected: the caller must not say
    /// otherwise).
    async fn forget_upstream(
        &self,
        ctx: &RequestContext,
        session: &Session,
        url: &str,
    ) -> Result<(), StoreError> {
        for route in Self::routes_named_by(ctx, url) {
            self.store
                .delete_upstream_token(&session.user_id, &upstream::route_key(&route))
                .await
                .inspect_err(|error| {
                    tracing::error!(%error, request_id = %ctx.request_id, user = %session.email, route = %route.id, "cannot disconnect an upstream account");
                })?;
            self.audit.event(
                crate::enforcement::audit::IdentityEvent::new("upstream_disconnected", ctx)
                    .user(&session.email)
                    .route(&route.id),
            );
        }
        Ok(())
    }

    /// The MCP server routes a URL from an app names: the one whose URL it is or, for a URL that
    /// is no server's, every server on its host (Pomerium's apps name servers by host).
    fn routes_named_by(ctx: &RequestContext, url: &str) -> Vec<Arc<Route>> {
        let servers = || {
            ctx.runtime
                .routes
                .all()
                .iter()
                .filter(|r| r.is_mcp_server())
        };
        let exact: Vec<_> = servers()
            .filter(|r| postern_oauth::metadata::same_resource(&Self::route_url(ctx, r), url))
            .cloned()
            .collect();
        if !exact.is_empty() {
            return exact;
        }
        let host = |u: &str| {
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
        };
        let Some(wanted) = host(url) else {
            return Vec::new();
        };
        servers()
            .filter(|r| host(&Self::route_url(ctx, r)).as_deref() == Some(wanted.as_str()))
            .cloned()
            .collect()
    }

    /// The server `/connect` is about: named by `resource`, the only MCP server of this host, or
    /// (Pomerium's apps name none) the one of this host's servers that needs connecting; `Err`
    /// with the answer when none needs it (back to the app) or several do (a chooser).
    async fn server_to_connect(
        &self,
        ctx: &RequestContext,
        session: &Session,
        resource: Option<&String>,
        redirect: &str,
    ) -> Result<Option<Arc<Route>>, Response<Body>> {
        if let Some(resource) = resource {
            return Ok(oauth_server::route_for_resource(ctx, resource));
        }
        if let Some(route) = oauth_server::only_mcp_route(ctx) {
            return Ok(Some(route));
        }
        match self.to_connect_here(ctx, session).await.as_slice() {
            [] => Err(found(redirect)),
            [(_, url)] => Ok(oauth_server::route_for_resource(ctx, url)),
            several => {
                let choices: Vec<(String, String)> = several
                    .iter()
                    .map(|(name, url)| {
                        let link = format!(
                            "/.pomerium/mcp/connect?resource={}&redirect_url={}",
                            encode(url),
                            encode(redirect)
                        );
                        (name.clone(), link)
                    })
                    .collect();
                Err(html(
                    StatusCode::OK,
                    pages::connect_chooser(&session.email, &choices),
                ))
            }
        }
    }

    /// This host's MCP servers the user may use that need their upstream account and do not
    /// have it yet, as (name, URL).
    async fn to_connect_here(
        &self,
        ctx: &RequestContext,
        session: &Session,
    ) -> Vec<(String, String)> {
        let here = ctx.origin();
        self.servers(ctx, session)
            .await
            .into_iter()
            .filter(|s| s.needs_oauth && !s.connected && s.url.starts_with(&format!("{here}/")))
            .map(|s| (s.name, s.url))
            .collect()
    }

    /// Who calls: the session cookie, or the TE of an MCP client app route.
    async fn caller(&self, request: &Request<Body>) -> Option<Session> {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_owned());
        match bearer {
            // Only a client-route (app) TE: a TE a client got for one MCP server must not list
            // or disconnect the user's other servers.
            Some(token) => {
                oauth_server::check_identity_token(self.store.keyring(), &self.revocations, &token)
                    .ok()
                    .filter(|c| c.aud.starts_with(APP_AUDIENCE_PREFIX))
                    .map(|c| c.session())
            }
            None => {
                session::current(request.headers(), &self.settings.get().cookie, &self.store).await
            }
        }
    }

    /// The URL a route is known by, as seen from this request.
    fn route_url(ctx: &RequestContext, route: &Route) -> String {
        oauth_server::route_resource(route, &Self::route_origin(ctx, route))
    }

    /// The origin clients reach `route` at: this request's for this host; for another host,
    /// its `from`, on this listener's port when `from` names none and the scheme is this one.
    fn route_origin(ctx: &RequestContext, route: &Route) -> String {
        let from = &route.config.from;
        // A loopback route answers every loopback name: list it at the one in use.
        let alias = postern_gateway::routes::is_loopback_name(&from.host)
            && postern_gateway::routes::is_loopback_name(&ctx.host)
            && from.port.is_none_or(|p| p == ctx.port);
        if from.host == ctx.host || alias {
            return ctx.origin();
        }
        let default = if from.scheme == "https" { 443 } else { 80 };
        match from.port {
            None if from.scheme == ctx.scheme && ctx.port != default => {
                postern_config::origin_of(&from.scheme, &from.host, Some(ctx.port))
            }
            _ => from.origin(),
        }
    }

    /// The MCP servers `session`'s user may use, with their connection state.
    pub(crate) async fn servers(
        &self,
        ctx: &RequestContext,
        session: &Session,
    ) -> Vec<pages::ServerEntry> {
        let user = crate::sign_in::session::user_of(session);
        let mut servers = Vec::new();
        let mut routes: Vec<_> = ctx.runtime.routes.all().to_vec();
        routes.sort_by_key(|r| r.index);
        for route in routes.iter().filter(|r| r.is_mcp_server()) {
            if !may_use(
                route,
                &user,
                ctx.client_addr.ip(),
                ctx.client_certificate.as_deref(),
            ) {
                continue;
            }
            let (needs_oauth, connected) = self.connection(ctx, session, route).await;
            let mut members = Vec::new();
            if crate::aggregate::is_aggregate(route) {
                for member in crate::aggregate::members(ctx, route) {
                    let member_route = &member.route;
                    let allowed = may_use(
                        member_route,
                        &user,
                        ctx.client_addr.ip(),
                        ctx.client_certificate.as_deref(),
                    );
                    if !allowed {
                        // Not named to a user who may not use it (as routes are not).
                        continue;
                    }
                    let (needs_oauth, connected) =
                        self.connection(ctx, session, member_route).await;
                    members.push(pages::MemberEntry {
                        name: member_route
                            .config
                            .name
                            .clone()
                            .unwrap_or_else(|| member_route.id.clone()),
                        url: Self::route_url(ctx, member_route),
                        prefix: member.prefix.clone(),
                        allowed,
                        connected,
                        needs_oauth,
                    });
                }
            }
            servers.push(pages::ServerEntry {
                name: route
                    .config
                    .name
                    .clone()
                    .unwrap_or_else(|| route.id.clone()),
                description: route.config.description.clone(),
                logo_url: route.config.logo_url.clone(),
                url: Self::route_url(ctx, route),
                connected,
                needs_oauth,
                members,
            });
        }
        servers
    }

    /// Whether `route` needs the user's upstream account, and whether it is connected.
    async fn connection(
        &self,
        ctx: &RequestContext,
        session: &Session,
        route: &Route,
    ) -> (bool, bool) {
        let needs_oauth = self
            .upstream_oauth(route, &Self::route_origin(ctx, route))
            .await
            .is_some();
        let connected = !needs_oauth
            || matches!(
                self.store
                    .get_upstream_token(&session.user_id, &upstream::route_key(route))
                    .await,
                Ok(Some(_))
            );
        (needs_oauth, connected)
    }

    /// `/.pomerium/mcp/routes`'s answer.
    pub(crate) async fn server_list(&self, ctx: &RequestContext, session: &Session) -> Value {
        json!({ "servers": self.servers(ctx, session).await })
    }

    async fn disconnect(
        &self,
        ctx: &RequestContext,
        session: &Session,
        request: Request<Body>,
    ) -> Response<Body> {
        // A browser's cookie rides along on a form from a sibling site (SameSite=Lax allows
        // same-site posts): a caller by cookie must post from this origin. Apps call with their
        // TE in the header, which no other page can attach.
        if !request.headers().contains_key(header::AUTHORIZATION)
            && let Err(why) = crate::web::forms::same_origin_post(request.headers(), &ctx.origin())
        {
            tracing::warn!(request_id = %ctx.request_id, user = %session.email, why, "cross-origin disconnect refused");
            return json_error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!("{why}: disconnect from a page of {}", ctx.origin()),
                &ctx.request_id,
            );
        }
        let body = match crate::web::forms::read_form(request).await {
            Ok(body) => body,
            Err(error) => {
                return json_error(
                    error.status(),
                    "invalid_request",
                    &error.to_string(),
                    &ctx.request_id,
                );
            }
        };
        let Some(urls) = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("routes").and_then(Value::as_array).cloned())
            .filter(|urls| !urls.is_empty())
        else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "send {\"routes\": [server URL, ...]} with at least one URL",
                &ctx.request_id,
            );
        };
        for url in urls.iter().filter_map(Value::as_str) {
            if self.forget_upstream(ctx, session, url).await.is_err() {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "temporarily_unavailable",
                    &format!(
                        "the gateway's store is unavailable, so {url} is still connected; try again"
                    ),
                    &ctx.request_id,
                );
            }
        }
        json_response(StatusCode::OK, &self.server_list(ctx, session).await)
    }

    async fn connect(
        &self,
        ctx: &RequestContext,
        session: &Session,
        request: &Request<Body>,
    ) -> Response<Body> {
        let query = oauth_server::form(request.uri().query().unwrap_or("").as_bytes());
        let redirect = match connect_return(ctx, &query) {
            Ok(redirect) => redirect,
            Err(why) => {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::message("Cannot connect", why),
                );
            }
        };
        let route = match self
            .server_to_connect(ctx, session, query.get("resource"), &redirect)
            .await
        {
            Ok(route) => route,
            Err(answer) => return answer,
        };
        let Some(route) = route else {
            return html(
                StatusCode::NOT_FOUND,
                pages::message(
                    "Cannot connect",
                    "No MCP server here; pass its URL as resource.",
                ),
            );
        };
        if self.upstream_oauth(&route, &ctx.origin()).await.is_none()
            || matches!(
                self.store
                    .get_upstream_token(&session.user_id, &upstream::route_key(&route))
                    .await,
                Ok(Some(_))
            )
        {
            return found(&redirect);
        }
        // Ask first: a link from anywhere must not start connecting an account.
        let Ok(binding) = self
            .store
            .keyring()
            .seal(CONNECT_BINDING, session.id.as_bytes())
        else {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::message(
                    "Cannot connect",
                    "The gateway cannot seal the form; try again.",
                ),
            );
        };
        let resource = oauth_server::route_resource(&route, &ctx.origin());
        let server = route
            .config
            .name
            .clone()
            .unwrap_or_else(|| resource.clone());
        html(
            StatusCode::OK,
            pages::connect(
                &server,
                &session.email,
                &[
                    ("resource", &resource),
                    ("redirect_url", &redirect),
                    ("session_binding", &binding),
                ],
            ),
        )
    }

    /// `POST /.pomerium/mcp/connect`: the user clicked Connect on the confirmation page.
    async fn connect_confirmed(
        &self,
        ctx: &RequestContext,
        session: &Session,
        request: Request<Body>,
    ) -> Response<Body> {
        let refused = |message: &str| {
            html(
                StatusCode::FORBIDDEN,
                pages::message("Cannot connect", message),
            )
        };
        if let Err(why) = crate::web::forms::user_activated_post(request.headers(), &ctx.origin()) {
            return refused(&format!(
                "The request was refused because {why}. Click Connect on the confirmation page."
            ));
        }
        if session.idp == "te" {
            return refused("Connecting an account needs a browser session, not a token.");
        }
        let body = match crate::web::forms::read_form(request).await {
            Ok(body) => body,
            Err(error) => {
                return html(
                    error.status(),
                    pages::message("Cannot connect", &format!("{error}.")),
                );
            }
        };
        let form = oauth_server::form(&body);
        let bound = form
            .get("session_binding")
            .and_then(|b| self.store.keyring().open(CONNECT_BINDING, b).ok())
            .is_some_and(|id| id == session.id.as_bytes());
        if !bound {
            return refused(
                "This confirmation is not valid for your session; open the Connect link again.",
            );
        }
        let redirect = form
            .get("redirect_url")
            .cloned()
            .unwrap_or_else(|| "/".into());
        if !allowed_return(ctx, &redirect) {
            return html(
                StatusCode::BAD_REQUEST,
                pages::message("Cannot connect", "redirect_url is not allowed."),
            );
        }
        let Some(route) = form
            .get("resource")
            .and_then(|r| oauth_server::route_for_resource(ctx, r))
        else {
            return html(
                StatusCode::NOT_FOUND,
                pages::message("Cannot connect", "No MCP server here by that URL."),
            );
        };
        self.start_upstream(
            &route,
            session,
            crate::web::round_trip::Resume::Connect {
                redirect,
                origin: ctx.origin(),
            },
        )
        .await
    }
}

/// Whether `user`, from `source_ip`, may use the MCP server behind `route` at all (its policy
/// for a request without a tool call): servers a user may not use are neither listed nor
/// authorized.
pub(crate) fn may_use(
    route: &Route,
    user: &postern_policy::User,
    source_ip: std::net::IpAddr,
    client_certificate: Option<&postern_policy::ClientCertificate>,
) -> bool {
    route
        .policy
        .evaluate(&Input {
            user: Some(user),
            method: "POST",
            path: "/",
            mcp: None::<&McpRequest>,
            source_ip: Some(source_ip),
            preflight: false,
            client_certificate,
        })
        .allowed
}

/// Where `/connect` may send the browser back to: a path, this host, or the host of an MCP
/// client route; plain http only on loopback hosts.
fn allowed_return(ctx: &RequestContext, target: &str) -> bool {
    if crate::web::reply::same_origin_target(target, &ctx.origin()).is_some() {
        return true;
    }
    // Resolved as a browser would, whitespace and backslashes refused first (see
    // `same_origin_target`); only absolute URLs may name another host.
    if crate::web::reply::has_ambiguous_chars(target) {
        return false;
    }
    let Ok(url) = url::Url::parse(target) else {
        return false;
    };
    let host = crate::web::safe_http::host_of(&url);
    let scheme_ok = url.scheme() == "https" || (url.scheme() == "http" && is_loopback(&host));
    let known = host == ctx.host
        || ctx
            .runtime
            .routes
            .all()
            .iter()
            .any(|r| matches!(r.kind, Kind::McpClient) && r.config.from.host == host);
    scheme_ok && known
}

/// Where `/connect` sends the browser back: `redirect_url`, required, and only to a place
/// [`allowed_return`] allows; `Err` says what is wrong.
fn connect_return(
    ctx: &RequestContext,
    query: &std::collections::HashMap<String, String>,
) -> Result<String, &'static str> {
    let redirect = query.get("redirect_url").cloned().ok_or(
        "redirect_url is required: the app must say where to come back to after connecting.",
    )?;
    if !allowed_return(ctx, &redirect) {
        return Err(
            "redirect_url must be this host or an MCP client route's host (http only for localhost).",
        );
    }
    Ok(redirect)
}

/// 302 to `target`: how Pomerium sends an app back from `/connect`.
fn found(target: &str) -> Response<Body> {
    let mut response = redirect_to(target);
    *response.status_mut() = StatusCode::FOUND;
    response
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Instant;

    use postern_gateway::Runtime;
    use postern_gateway::hooks::RequestContext;

    use super::*;

    fn ctx(yaml: &str) -> RequestContext {
        let config = postern_config::parse(yaml, Path::new("."), &HashMap::new()).unwrap();
        RequestContext {
            request_id: "r".into(),
            client_addr: "127.0.0.1:1".parse().unwrap(),
            scheme: "https",
            host: "gw.example".into(),
            port: 443,
            started: Instant::now(),
            browser: true,
            runtime: Arc::new(Runtime::new(config)),
            client_certificate: None,
            metrics: Default::default(),
        }
    }

    const ROUTES: &str = "insecure_server: true
routes:
  - from: https://gw.example
    prefix: /notes
    to: http://127.0.0.1:9
    allowed_domains: [example.com]
    mcp: {}
  - from: https://app.example
    to: http://127.0.0.1:9
    allow_any_authenticated_user: true
    mcp: {client: {}}
";

    #[test]
    fn connect_returns_only_to_this_host_or_a_client_app() {
        let ctx = ctx(ROUTES);
        for allowed in [
            "/",
            "/done?x=1",
            "https://gw.example/done",
            "https://app.example/callback",
        ] {
            assert!(allowed_return(&ctx, allowed), "{allowed}");
        }
        for refused in [
            "https://evil.example/",
            "//evil.example/",
            "/\t/evil.example/",
            "http://app.example/callback",
            "https://app.example.evil.example/",
            "javascript:alert(1)",
            "https://app.example\\@evil.example/",
        ] {
            assert!(!allowed_return(&ctx, refused), "{refused:?}");
        }
    }

    #[test]
    fn servers_are_usable_by_whom_their_policy_allows() {
        let ctx = ctx(ROUTES);
        let route = ctx.runtime.routes.all()[0].clone();
        let user = |email: &str| postern_policy::User {
            id: email.into(),
            email: email.into(),
            ..Default::default()
        };
        let here = std::net::IpAddr::from([127, 0, 0, 1]);
        assert!(may_use(&route, &user("ada@example.com"), here, None));
        assert!(!may_use(&route, &user("mallory@other.test"), here, None));
    }
}
