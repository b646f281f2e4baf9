//! Where sign-in, policy, the OAuth endpoints and upstream tokens plug into the data path,
//! without reshaping the proxy. The proxy calls, for each request:
//!
//! 1. [`Hooks::intercept`]: answer requests the gateway serves itself (sign-in pages, OAuth and
//!    metadata endpoints), or pass;
//! 2. [`Hooks::authorize`]: decide who the user is and whether the route is theirs to use (it
//!    owns the request, so it may read and replace the body, e.g. to check MCP tool calls);
//! 3. [`Hooks::upstream_headers`]: headers for the upstream request (the user's upstream token,
//!    the identity assertion);
//! 4. [`Hooks::filter_response`]: adjust the upstream's response (e.g. filter `tools/list`).
//!
//! [`PublicOnly`] is the implementation used until identity is configured: public routes are
//! proxied, every other route answers 401.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{HeaderMap, Request, Response};

use crate::body::Body;
use crate::errors::GatewayError;
use crate::routes::Route;

/// Facts about the request the hooks may use.
#[derive(Clone)]
pub struct RequestContext {
    /// Unique id, in the response's `x-request-id` and every log line.
    pub request_id: String,
    /// The client's address (after trusted `X-Forwarded-For` hops).
    pub client_addr: SocketAddr,
    /// `http` or `https`, as the client sees the gateway.
    pub scheme: &'static str,
    /// The requested host (lower-case, no port).
    pub host: String,
    /// The requested port.
    pub port: u16,
    /// When the request arrived.
    pub started: Instant,
    /// Whether the client is a browser (prefers HTML).
    pub browser: bool,
    /// The configuration in force for this request (routes, settings).
    pub runtime: Arc<crate::Runtime>,
    /// The client certificate of the connection (`downstream_mtls`), if one was presented.
    pub client_certificate: Option<Arc<postern_policy::ClientCertificate>>,
    /// The gateway's metrics, for the hooks' events (sign-ins, tokens, denials, tool calls).
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl RequestContext {
    /// `scheme://host[:port]` as the client addressed the gateway.
    pub fn origin(&self) -> String {
        postern_config::origin_of(self.scheme, &self.host, Some(self.port))
    }
}

/// What [`Hooks::authorize`] decided about an allowed request.
#[derive(Debug, Default)]
pub struct Grant {
    /// Who the user is, for logs (`None`: anonymous).
    pub principal: Option<String>,
    /// Anything later hooks need (the session, the policy decision, ...).
    pub extensions: http::Extensions,
}

/// Who made a request the hooks refused (a response extension): the access log names them, as
/// it does the user of an allowed request.
#[derive(Clone, Debug)]
pub struct RefusedUser(pub String);

/// The extension points of the data path.
#[async_trait]
pub trait Hooks: Send + Sync + 'static {
    /// Whether [`Hooks::intercept`] may answer this request: a cheap check that spares the
    /// proxied requests the call (an `async_trait` call allocates its whole future).
    fn intercepts(
        &self,
        _ctx: &RequestContext,
        _route: Option<&Arc<Route>>,
        _request: &Request<Body>,
    ) -> bool {
        true
    }

    /// Answers a request the gateway serves itself; `Err(request)` passes it on.
    async fn intercept(
        &self,
        _ctx: &RequestContext,
        _route: Option<&Arc<Route>>,
        request: Request<Body>,
    ) -> Result<Response<Body>, Request<Body>> {
        Err(request)
    }

    /// Decides whether the request may use `route`.
    async fn authorize(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Grant), Response<Body>>;

    /// Headers to set on the upstream request (after the client's credentials were removed).
    async fn upstream_headers(
        &self,
        _ctx: &RequestContext,
        _route: &Arc<Route>,
        _grant: &Grant,
    ) -> Result<HeaderMap, Response<Body>> {
        Ok(HeaderMap::new())
    }

    /// Adjusts the upstream's response before it is streamed to the client.
    async fn filter_response(
        &self,
        _ctx: &RequestContext,
        _route: &Arc<Route>,
        _grant: &Grant,
        response: Response<Body>,
    ) -> Response<Body> {
        response
    }
}

/// Proxies routes marked `allow_public_unauthenticated_access`; refuses every other with 401.
pub struct PublicOnly;

#[async_trait]
impl Hooks for PublicOnly {
    fn intercepts(
        &self,
        _ctx: &RequestContext,
        _route: Option<&Arc<Route>>,
        _request: &Request<Body>,
    ) -> bool {
        false
    }

    async fn authorize(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Grant), Response<Body>> {
        if route.config.allow_public_unauthenticated_access {
            Ok((request, Grant::default()))
        } else {
            Err(GatewayError::Unauthenticated.into_response(&ctx.request_id, ctx.browser))
        }
    }
}
