//! Enforcement: for every proxied request, who the user is (a TE on MCP server routes, else the
//! session cookie), whether the route's policy lets them (each MCP call checked on its own),
//! what the upstream gets (the identity assertion, the TI, a client route's TE), and what comes
//! back (tool lists filtered, tool calls audited).

pub mod assertion;
pub(crate) mod audit;
pub(crate) mod mcp;
pub(crate) mod tool_filter;

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use postern_config::IssuerFormat;
use postern_gateway::body::{Body, Observed, ReadError, full};
use postern_gateway::errors::GatewayError;
use postern_gateway::hooks::{Grant, RequestContext};
use postern_gateway::routes::Route;
use postern_policy::{Input, McpRequest};
use postern_store::{Session, Store};
use serde_json::Value;

use crate::broker::UpstreamBroker;
use crate::enforcement::assertion::{AssertionFor, Signer};
use crate::enforcement::audit::fields::RequestFacts;
use crate::enforcement::audit::{Audit, AuditEvent};
use crate::enforcement::mcp::Call;
use crate::oauth_server::{self, RevocationCache, TokenError};
use crate::settings::Live;
use crate::sign_in::session;
use crate::web::reply::{cors, encode, json_error, json_response, redirect_to};

/// The enforcement service: owns the assertion signer and the audit log.
pub struct Enforcement {
    pub(crate) store: Store,
    pub(crate) settings: Live,
    pub(crate) signer: Signer,
    pub(crate) audit: Audit,
    pub(crate) revocations: Arc<RevocationCache>,
    pub(crate) broker: Arc<UpstreamBroker>,
}

/// Facts about an allowed request that later hooks use.
struct Allowed {
    session: Option<Session>,
    /// The MCP client whose token made the request.
    client_id: Option<String>,
    calls: Vec<Call>,
    decision: String,
    filter_tools: Option<ToolLists>,
    /// With `authorize_log_fields`: what the request contributes to its audit records.
    facts: Option<Arc<RequestFacts>>,
    /// A bearer-token request on an MCP server route: its answer carries CORS headers.
    bearer: bool,
    /// The aggregate route the request came through, for a member call (audit records).
    via: Option<String>,
}

/// Who made a refused request, for its audit records: the session, the request's
/// `authorize_log_fields` facts, the MCP client and the aggregate route it came through.
type Asker<'a> = (
    Option<&'a Session>,
    Option<&'a Arc<RequestFacts>>,
    Option<&'a str>,
    Option<&'a str>,
);

/// A member call made by an aggregate route for the user its TE identified: the member's
/// policy is checked with this identity, as if the user had called the member's own URL.
pub(crate) struct Delegated {
    /// The user's session, from the aggregate's TE.
    pub session: Session,
    /// The MCP client that holds the aggregate's TE.
    pub client_id: Option<String>,
    /// The aggregate route's id.
    pub aggregate: String,
}

/// What an allowed request's grant says about who is asking (for an aggregate route, which
/// calls its members for that user).
pub(crate) fn granted_identity(grant: &Grant) -> Option<(Session, Option<String>)> {
    let allowed = grant.extensions.get::<Arc<Allowed>>()?;
    Some((allowed.session.clone()?, allowed.client_id.clone()))
}

/// Which responses of a route with tool rules may carry a tool list a client would read.
#[derive(Clone, Copy)]
enum ToolLists {
    /// Event streams only: a JSON answer is matched by id to requests that listed no tools.
    InStreams,
    /// JSON answers too (the request asked for `tools/list`, or is not a POST of calls).
    Everywhere,
}

impl Enforcement {
    fn unauthenticated(
        &self,
        ctx: &RequestContext,
        route: &Route,
        original: &str,
    ) -> Response<Body> {
        if ctx.browser && !route.is_mcp_server() {
            let target = format!("/.pomerium/sign_in?redirect_uri={}", encode(original));
            return redirect_to(&target);
        }
        let mut response = GatewayError::Unauthenticated.into_response(&ctx.request_id, false);
        let challenge = if route.is_mcp_server() {
            // The URL the client used, whose metadata names the same server.
            let path = original.split('?').next().unwrap_or("/");
            let resource = postern_oauth::metadata::resource_url(&ctx.origin(), path);
            oauth_server::challenge(&resource, None)
        } else {
            "Bearer".to_owned()
        };
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        cors(response.headers_mut());
        response
    }

    /// 401 for a bad TE: the client should run its authorization again.
    fn invalid_token(
        &self,
        ctx: &RequestContext,
        resource: &str,
        error: &TokenError,
    ) -> Response<Body> {
        tracing::info!(request_id = %ctx.request_id, %error, "access token refused");
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            &error.to_string(),
            &ctx.request_id,
        );
        if let Ok(value) = HeaderValue::from_str(&oauth_server::challenge(resource, Some(error))) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        cors(response.headers_mut());
        response
    }

    /// Decides whether the request may use `route`: who asks, what they ask (each MCP call on
    /// its own), and the route's policy on each. A refusal of a bearer-token request on an MCP
    /// server route carries CORS headers, so a browser-based client can read why.
    pub(crate) async fn authorize(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Grant), Response<Body>> {
        let bearer = bearer_cors(route, request.headers());
        Box::pin(self.decide(ctx, route, request, bearer, None))
            .await
            .map_err(|mut refused| {
                if bearer {
                    cors(refused.headers_mut());
                }
                refused
            })
    }

    /// [`Enforcement::authorize`] for a member of an aggregate route: the same decision (the
    /// member's policy and tool rules on each call), for the user the aggregate identified.
    pub(crate) async fn authorize_member(
        &self,
        ctx: &RequestContext,
        member: &Arc<Route>,
        request: Request<Body>,
        delegated: &Delegated,
    ) -> Result<(Request<Body>, Grant), Response<Body>> {
        Box::pin(self.decide(ctx, member, request, false, Some(delegated))).await
    }

    /// [`Enforcement::authorize`], the decision.
    async fn decide(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        request: Request<Body>,
        bearer: bool,
        delegated: Option<&Delegated>,
    ) -> Result<(Request<Body>, Grant), Response<Body>> {
        // downstream_mtls default deny: no valid certificate, no other question (as Pomerium,
        // 495 before a sign-in, a token check or a body read).
        if route
            .policy
            .refuses_certificate(ctx.client_certificate.as_deref())
        {
            self.audit.record(AuditEvent::decision(
                ctx,
                route,
                None,
                None,
                "deny: downstream_mtls (invalid_client_certificate)",
                false,
            ));
            let presented = ctx.client_certificate.is_some();
            return Err(GatewayError::ClientCertificateRequired { presented }
                .into_response(&ctx.request_id, ctx.browser));
        }
        let (session, client_id) = match delegated {
            Some(d) => (Some(d.session.clone()), d.client_id.clone()),
            None => self.identify(ctx, route, &request).await?,
        };
        let via = delegated.map(|d| d.aggregate.clone());
        // Taken now: the request's parts are gone by the time its response ends.
        let facts = self.audit.fields().map(|fields| {
            let removed = session.as_ref().map_or(0, |s| removed_groups(s, route));
            fields.capture(ctx, &request, session.as_ref(), removed)
        });
        let user = session.as_ref().map(session::user_of);
        let method = request.method().as_str().to_owned();
        let path = request.uri().path().to_owned();
        let preflight = is_preflight(&request);
        let (request, calls) = if route.is_mcp_server() && request.method() == Method::POST {
            self.read_calls(ctx, route, request, user.as_ref()).await?
        } else {
            (request, Vec::new())
        };
        let evaluate = |mcp: Option<&McpRequest>| {
            route.policy.evaluate(&Input {
                user: user.as_ref(),
                method: &method,
                path: &path,
                mcp,
                source_ip: Some(ctx.client_addr.ip()),
                preflight,
                client_certificate: ctx.client_certificate.as_deref(),
            })
        };
        let decisions: Vec<_> = if calls.is_empty() {
            vec![(None, evaluate(None))]
        } else {
            calls
                .iter()
                .map(|c| (Some(c), evaluate(Some(&c.request))))
                .collect()
        };
        let denied: Vec<_> = decisions.iter().filter(|(_, d)| !d.allowed).collect();
        if !denied.is_empty() {
            let mut refused = self.refuse(
                ctx,
                route,
                (
                    session.as_ref(),
                    facts.as_ref(),
                    client_id.as_deref(),
                    via.as_deref(),
                ),
                &denied,
                &calls,
                request.uri(),
            );
            if let Some(session) = &session {
                // The access log names who was refused.
                refused
                    .extensions_mut()
                    .insert(postern_gateway::hooks::RefusedUser(session.email.clone()));
            }
            return Err(refused);
        }
        let decision = decisions
            .first()
            .map(|(_, d)| d.reason.clone())
            .unwrap_or_default();
        // On a route with tool rules, a tool list can come on any event stream (a GET stream, a
        // replay after a reconnect) and in the JSON answer to a request that asked for one.
        let filter_tools = (route.is_mcp_server() && route.policy.uses_mcp_tool()).then(|| {
            if calls.is_empty() || calls.iter().any(|c| c.request.method == "tools/list") {
                ToolLists::Everywhere
            } else {
                ToolLists::InStreams
            }
        });
        let mut grant = Grant {
            principal: session.as_ref().map(|s| s.email.clone()),
            extensions: http::Extensions::new(),
        };
        // Shared, not copied, by the hooks after this one and the audit of the answer.
        grant.extensions.insert(Arc::new(Allowed {
            session,
            client_id,
            calls,
            decision,
            filter_tools,
            facts,
            bearer,
            via,
        }));
        Ok((request, grant))
    }

    /// Who asks: MCP clients present a TE on MCP server routes; browsers (and apps signed in
    /// through them) a session cookie. A TE that is not valid here is refused (401).
    async fn identify(
        &self,
        ctx: &RequestContext,
        route: &Route,
        request: &Request<Body>,
    ) -> Result<(Option<Session>, Option<String>), Response<Body>> {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        match (bearer, route.is_mcp_server()) {
            (Some(token), true) => {
                let resource = oauth_server::route_resource(route, &ctx.origin());
                match oauth_server::check_access_token(
                    self.store.keyring(),
                    &self.revocations,
                    token,
                    &resource,
                ) {
                    // The client id goes into the audit records of the request's calls.
                    Ok(claims) => {
                        let (session, client_id) = claims.into_session();
                        Ok((Some(session), Some(client_id)))
                    }
                    Err(error) => {
                        let used = postern_oauth::metadata::resource_url(
                            &ctx.origin(),
                            request.uri().path(),
                        );
                        Err(self.invalid_token(ctx, &used, &error))
                    }
                }
            }
            _ if request.headers().contains_key(header::COOKIE) => {
                let looked_up = Box::pin(session::lookup(
                    request.headers(),
                    &self.settings.get().cookie,
                    &self.store,
                ))
                .await;
                match looked_up {
                    Ok(session) => Ok((session, None)),
                    Err(error) => Err(session_unavailable(ctx, request, &error)),
                }
            }
            _ => Ok((None, None)),
        }
    }

    /// An MCP POST, read whole (within the route's limit) and split into its calls; nothing
    /// unreadable goes through.
    async fn read_calls(
        &self,
        ctx: &RequestContext,
        route: &Route,
        request: Request<Body>,
        user: Option<&postern_policy::User>,
    ) -> Result<(Request<Body>, Vec<Call>), Response<Body>> {
        let (parts, body) = request.into_parts();
        // The gateway already wrapped the body in the route's limit and read deadline; they are
        // read back from the error here so the client hears which one it hit.
        let limit = usize::try_from(route.max_request_bytes).unwrap_or(usize::MAX);
        let declared = postern_gateway::body::declared_length(&parts.headers);
        let bytes = match postern_gateway::body::read_bounded(body, declared, limit, None).await {
            Ok(bytes) => bytes,
            Err(error) => {
                let error = match error {
                    ReadError::TooSlow(waited) => GatewayError::RequestTimeout {
                        seconds: waited.as_secs(),
                    },
                    ReadError::TooLarge(_) => GatewayError::PayloadTooLarge {
                        limit: route.max_request_bytes,
                    },
                    ReadError::Unreadable => GatewayError::BadRequest(
                        "the request body could not be read (the connection failed)".into(),
                    ),
                };
                return Err(error.into_response(&ctx.request_id, false));
            }
        };
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let arguments = self.audit.fields().is_some_and(|f| f.tool_arguments);
        match mcp::inspect(content_type, &bytes, arguments) {
            Ok(calls) => Ok((Request::from_parts(parts, full(bytes)), calls)),
            Err(error) => {
                // Nobody signed in on a route that needs a user: the client learns to sign in
                // first (401), not what is wrong with a body nobody may send yet.
                let anonymous = route.policy.evaluate(&Input {
                    user: None,
                    method: parts.method.as_str(),
                    path: parts.uri.path(),
                    mcp: None,
                    source_ip: Some(ctx.client_addr.ip()),
                    preflight: false,
                    client_certificate: ctx.client_certificate.as_deref(),
                });
                if user.is_none() && anonymous.needs_sign_in {
                    return Err(self.unauthenticated(ctx, route, &original(&parts.uri)));
                }
                let status = match error {
                    mcp::InspectError::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    mcp::InspectError::Malformed(_) => StatusCode::BAD_REQUEST,
                };
                Err(json_error(
                    status,
                    "invalid_mcp_request",
                    &error.to_string(),
                    &ctx.request_id,
                ))
            }
        }
    }

    /// The answer to a refused request: sign in first (401 or the sign-in page), a JSON-RPC
    /// error per refused MCP call (a batch gets a batch), or 403; every refusal audited (with
    /// the request's `authorize_log_fields` facts, when selected).
    fn refuse(
        &self,
        ctx: &RequestContext,
        route: &Route,
        (session, facts, client_id, via): Asker<'_>,
        denied: &[&(Option<&Call>, postern_policy::Decision)],
        calls: &[Call],
        uri: &http::Uri,
    ) -> Response<Body> {
        let first = &denied[0].1;
        if first.invalid_client_certificate {
            self.audit.record(AuditEvent::decision(
                ctx,
                route,
                session,
                None,
                &first.reason,
                false,
            ));
            let presented = ctx.client_certificate.is_some();
            return GatewayError::ClientCertificateRequired { presented }
                .into_response(&ctx.request_id, ctx.browser);
        }
        if first.needs_sign_in {
            return self.unauthenticated(ctx, route, &original(uri));
        }
        for (call, decision) in denied {
            let mut event = AuditEvent::decision(
                ctx,
                route,
                session,
                call.map(|c| &c.request),
                &decision.reason,
                false,
            );
            event.facts = facts.cloned();
            event.tool_arguments = call.and_then(|c| c.arguments.clone());
            event.client_id = client_id.map(str::to_owned);
            event.aggregate = via.map(str::to_owned);
            if let Some(call) = call.filter(|c| c.request.method == "tools/call") {
                let tool = call.request.tool.as_deref().unwrap_or("");
                ctx.metrics.tool_call(&route.id, tool, false);
            }
            self.audit.record(event);
        }
        ctx.metrics.policy_denied("request");
        if !calls.is_empty() {
            let errors: Vec<Value> = denied
                .iter()
                .filter_map(|(call, _)| *call)
                .map(|call| {
                    mcp::denial(
                        call.id.as_ref(),
                        call.request.tool.as_deref(),
                        &ctx.request_id,
                    )
                })
                .collect();
            let body = match (calls.len(), errors.first()) {
                (1, Some(error)) => error.clone(),
                _ => Value::Array(errors),
            };
            return json_response(StatusCode::OK, &body);
        }
        json_error(
            StatusCode::FORBIDDEN,
            "forbidden",
            &format!(
                "the route's policy does not allow this request ({})",
                first.reason
            ),
            &ctx.request_id,
        )
    }

    pub(crate) async fn upstream_headers(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
    ) -> Result<HeaderMap, Response<Body>> {
        self.headers_for(ctx, route, grant, true).await
    }

    /// [`Enforcement::upstream_headers`] without the user's TI (`with_ti: false`): how an
    /// aggregate route lists the tools of a member whose upstream account the user has not
    /// connected yet (the member sees who asks, with no account of theirs).
    pub(crate) async fn headers_for(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
        with_ti: bool,
    ) -> Result<HeaderMap, Response<Body>> {
        let mut headers = HeaderMap::new();
        let session = grant
            .extensions
            .get::<Arc<Allowed>>()
            .and_then(|a| a.session.as_ref());
        if route.is_mcp_server() {
            // Bodies the gateway can read (tool lists are filtered): no compression.
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
        }
        if let (Some(session), true) = (session, route.is_mcp_server() && with_ti) {
            // Boxed: the TI path (discovery, store, provider refresh) is a large future that
            // requests without a session never need.
            if let Some(value) =
                Box::pin(self.broker.upstream_token_header(ctx, route, session)).await?
            {
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        if let (postern_gateway::routes::Kind::McpClient, Some(session)) = (&route.kind, session) {
            let token = oauth_server::app_token(self.store.keyring(), ctx, session)
                .map_err(|e| app_token_unavailable(ctx, &e))?;
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                headers.insert(header::AUTHORIZATION, value);
            }
        }
        let format = route
            .config
            .jwt_issuer_format
            .unwrap_or(self.settings.get().issuer_format);
        let groups = session.map(|s| assertion_groups(s, route));
        let groups = groups.as_deref().unwrap_or_default();
        self.claim_headers(ctx, session, groups, format, &mut headers);
        let pass = route
            .config
            .pass_identity_headers
            .unwrap_or(self.settings.get().pass_identity_headers);
        if let (true, Some(session)) = (pass, session) {
            let issuer = match format {
                IssuerFormat::HostOnly => ctx.host.clone(),
                IssuerFormat::Uri => format!("https://{}/", ctx.host),
            };
            // Never forwarded without the identity the route promises its server.
            let value = self
                .signer
                .assertion_for(
                    session,
                    &AssertionFor {
                        audience: &ctx.host,
                        issuer: &issuer,
                        groups,
                        route: &route.id,
                    },
                )
                .and_then(|token| HeaderValue::from_str(&token).ok())
                .ok_or_else(|| {
                    json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the gateway cannot sign the identity assertion now; try again",
                        &ctx.request_id,
                    )
                })?;
            headers.insert("x-pomerium-jwt-assertion", value);
        }
        Ok(headers)
    }

    /// `jwt_claims_headers`: each header carries the user's claim, and is set (empty without
    /// a user or the claim) on every request, so a client can never supply it.
    fn claim_headers(
        &self,
        ctx: &RequestContext,
        session: Option<&Session>,
        groups: &[String],
        format: IssuerFormat,
        headers: &mut HeaderMap,
    ) {
        for (header, claim) in &self.settings.get().claim_headers {
            let text = session
                .map(|s| claim_text(s, claim, groups, ctx, format))
                .unwrap_or_default();
            // A header value is one line: controls become spaces.
            let line: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            let value = HeaderValue::from_str(&line).unwrap_or(HeaderValue::from_static(""));
            headers.insert(header.clone(), value);
        }
    }

    /// What the client gets back: the upstream's challenges handled, tool lists filtered, tool
    /// calls audited; and, for a bearer-token request on an MCP server route, CORS headers
    /// (browser-based MCP clients read the answer and its `mcp-session-id`).
    pub(crate) async fn filter_response(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
        response: Response<Body>,
    ) -> Response<Body> {
        let bearer = grant
            .extensions
            .get::<Arc<Allowed>>()
            .is_some_and(|allowed| allowed.bearer);
        let mut response = Box::pin(self.answer(ctx, route, grant, response)).await;
        if bearer {
            cors(response.headers_mut());
        }
        response
    }

    /// The tool lists in a response the gateway made itself for `route` (an aggregate's merged
    /// list, or a member's answer it passes on) filtered by `route`'s own `mcp_tool` rules, as
    /// [`Enforcement::filter_response`] filters an upstream's.
    pub(crate) async fn filter_own_tool_lists(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
        response: Response<Body>,
    ) -> Response<Body> {
        match grant.extensions.get::<Arc<Allowed>>() {
            Some(allowed) if route.policy.uses_mcp_tool() => {
                Box::pin(filter_tool_lists(
                    ctx,
                    route,
                    allowed,
                    ToolLists::Everywhere,
                    response,
                ))
                .await
            }
            _ => response,
        }
    }

    /// [`Enforcement::filter_response`] but CORS.
    async fn answer(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        grant: &Grant,
        response: Response<Body>,
    ) -> Response<Body> {
        let Some(allowed) = grant.extensions.get::<Arc<Allowed>>().cloned() else {
            return response;
        };
        // The rare paths are boxed: their futures are large, and every response would pay for
        // them otherwise.
        let response = if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            match Box::pin(self.broker.upstream_challenge(
                ctx,
                route,
                allowed.session.as_ref(),
                response,
            ))
            .await
            {
                Ok(response) => response,
                Err(replaced) => return replaced,
            }
        } else {
            response
        };
        // Checked here, before the filter's closure and boxed future are built: most responses
        // (a JSON answer to a tool call) carry no list a client would read.
        let response = if let Some(lists) = allowed.filter_tools.filter(|lists| {
            crate::enforcement::tool_filter::Media::of(response.headers())
                .may_list_tools(matches!(lists, ToolLists::Everywhere))
        }) {
            Box::pin(filter_tool_lists(ctx, route, &allowed, lists, response)).await
        } else {
            response
        };
        if tool_calls(&allowed.calls).next().is_none() {
            return response;
        }
        // The audit line is written when the response has been sent.
        let (audit, ctx, route_id, status) = (
            self.audit.clone(),
            ctx.clone(),
            route.id.clone(),
            response.status(),
        );
        for call in tool_calls(&allowed.calls) {
            let tool = call.request.tool.as_deref().unwrap_or("");
            ctx.metrics.tool_call(&route_id, tool, true);
        }
        let started = ctx.started;
        response.map(move |body| {
            let on_end = move |_bytes: u64, complete: bool| {
                for call in tool_calls(&allowed.calls) {
                    let mut event = AuditEvent::decision_for(
                        &ctx,
                        &route_id,
                        allowed.session.as_ref(),
                        Some(&call.request),
                        &allowed.decision,
                        true,
                    );
                    event.facts = allowed.facts.clone();
                    event.tool_arguments = call.arguments.clone();
                    event.status = Some(status.as_u16());
                    event.latency_ms = Some(postern_gateway::millis(started.elapsed()));
                    event.complete = Some(complete);
                    event.client_id = allowed.client_id.clone();
                    event.aggregate = allowed.via.clone();
                    audit.record(event);
                }
            };
            Observed::new(body, None, Box::new(on_end)).boxed()
        })
    }
}
/// The `tools/call`s among a request's calls (each gets an audit record).
fn tool_calls(calls: &[Call]) -> impl Iterator<Item = &Call> {
    calls.iter().filter(|c| c.request.method == "tools/call")
}

/// Where to return after sign-in.
/// Whether a request is a CORS preflight: `OPTIONS` with a non-empty `Origin` and
/// `Access-Control-Request-Method`, and no body (a browser's preflight never has one; an
/// OPTIONS that carries one is something else and gets no pass without sign-in).
fn is_preflight(request: &Request<Body>) -> bool {
    let headers = request.headers();
    let present = |name: header::HeaderName| headers.get(name).is_some_and(|v| !v.is_empty());
    let body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    request.method() == Method::OPTIONS
        && present(header::ORIGIN)
        && present(header::ACCESS_CONTROL_REQUEST_METHOD)
        && !body
}

/// Whether a request's answer gets CORS headers: a bearer token on an MCP server route (what
/// browser-based MCP clients send). Never a cookie-authenticated request: the headers allow any
/// origin to read the answer, which is safe only when the caller had to hold the token.
fn bearer_cors(route: &Route, headers: &HeaderMap) -> bool {
    route.is_mcp_server()
        && headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
}

fn original(uri: &http::Uri) -> String {
    uri.path_and_query().map_or("/", |p| p.as_str()).to_owned()
}

/// Removes the tools the user may not call from every tool list in the response.
async fn filter_tool_lists(
    ctx: &RequestContext,
    route: &Route,
    allowed: &Allowed,
    lists: ToolLists,
    response: Response<Body>,
) -> Response<Body> {
    let user = allowed.session.as_ref().map(session::user_of);
    let policy = route.policy.clone();
    let source_ip = ctx.client_addr.ip();
    let certificate = ctx.client_certificate.clone();
    let may_call = move |tool: &str| {
        let request = McpRequest {
            method: "tools/call".into(),
            tool: Some(tool.to_owned()),
        };
        policy
            .evaluate(&Input {
                user: user.as_ref(),
                method: "POST",
                path: "",
                mcp: Some(&request),
                source_ip: Some(source_ip),
                preflight: false,
                client_certificate: certificate.as_deref(),
            })
            .allowed
    };
    let json_too = matches!(lists, ToolLists::Everywhere);
    crate::enforcement::tool_filter::filter_response(
        Arc::new(may_call),
        response,
        &ctx.request_id,
        json_too,
    )
    .await
}

/// 503 for a request of an MCP client app route whose TE could not be minted: logged, and the
/// app asked to try again (never passed on without its token).
pub(crate) fn app_token_unavailable(
    ctx: &RequestContext,
    error: &crate::oauth_server::MintError,
) -> Response<Body> {
    tracing::error!(%error, request_id = %ctx.request_id, "cannot mint the app's access token");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the gateway cannot issue the app's access token now; try again",
        &ctx.request_id,
    )
}
/// A claim of the user as header text: lists joined with commas (as Pomerium sends groups).
/// The user's groups the route's assertion may carry (`jwt_groups_filter`).
fn assertion_groups<'s>(session: &'s Session, route: &Route) -> std::borrow::Cow<'s, [String]> {
    match &route.assertion_groups {
        None => std::borrow::Cow::Borrowed(&session.groups),
        Some(allowed) => session
            .groups
            .iter()
            .filter(|g| allowed.binary_search(g).is_ok())
            .cloned()
            .collect(),
    }
}

/// How many of the user's groups the route's assertion leaves out (`jwt_groups_filter`), by
/// the rule of [`assertion_groups`].
fn removed_groups(session: &Session, route: &Route) -> usize {
    route.assertion_groups.as_ref().map_or(0, |allowed| {
        session
            .groups
            .iter()
            .filter(|g| allowed.binary_search(g).is_err())
            .count()
    })
}

fn claim_text(
    session: &Session,
    claim: &str,
    groups: &[String],
    ctx: &RequestContext,
    format: IssuerFormat,
) -> String {
    let joined = |values: &[Value]| {
        values
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    match claim {
        "email" => session.email.clone(),
        "groups" => groups.join(","),
        "user" | "sub" => session.user_id.clone(),
        "name" => session.name.clone(),
        "sid" => session.id.clone(),
        "aud" => ctx.host.clone(),
        "iss" => match format {
            IssuerFormat::HostOnly => ctx.host.clone(),
            IssuerFormat::Uri => format!("https://{}/", ctx.host),
        },
        other => match session.claims.get(other) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(values)) => joined(values),
            Some(Value::Null) | None => String::new(),
            Some(value) => value.to_string(),
        },
    }
}

/// The store could not say whether the browser's session is valid: 503 (with Retry-After), not
/// a trip to a sign-in page that cannot work while the store is down. The session is kept.
fn session_unavailable<B>(
    ctx: &RequestContext,
    request: &Request<B>,
    error: &postern_store::StoreError,
) -> Response<Body> {
    tracing::error!(request_id = %ctx.request_id, %error, "cannot read the session; answering 503");
    let text = format!(
        "{}; try again in a few seconds: you are still signed in",
        error.public_reason()
    );
    if postern_gateway::errors::is_browser(request) {
        crate::web::reply::html(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::web::pages::message("Unavailable right now", &text),
        )
    } else {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            &text,
            &ctx.request_id,
        )
    }
}
