//! The data path of `postern serve`: listeners and TLS (certificate files, SNI), routing by host
//! and path, the streaming reverse proxy, configuration reload, and observability (access log,
//! request ids, Prometheus metrics, health).
//!
//! Sign-in, policy, the OAuth endpoints and upstream tokens are not here: they plug in through
//! [`hooks::Hooks`] (see that module for the order of calls).
//!
//! ```text
//! listener ─► Gateway::handle ─► route ─► hooks.intercept ─► hooks.authorize ─► hooks.upstream_headers
//!                                                      └─► proxy::forward ─► hooks.filter_response ─► client
//! ```
#![forbid(unsafe_code)]

pub mod acme;
pub mod body;
pub mod errors;
pub mod hooks;
pub mod html;
pub mod metrics;
pub mod mtls;
pub mod path;
pub mod proxy;
pub mod reload;
mod request_log;
pub use request_log::millis;
pub mod routes;
pub mod server;
pub mod tls;
pub mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use postern_config::{Config, defaults};

use crate::body::{Body, ReadDeadline, WriteDeadline, full};
use crate::errors::{GatewayError, is_browser};
use crate::hooks::{Grant, Hooks, RequestContext};
use crate::metrics::{Metrics, UpstreamErrorLabels};
use crate::request_log::{Answer, RequestLog};
use crate::routes::{Kind, RouteTable, split_host};

/// What MCP server routes accept (Streamable HTTP, and CORS preflights).
const MCP_METHODS: &str = "POST, GET, DELETE, OPTIONS";

/// The configuration in force, compiled. Replaced whole on reload; requests in flight keep the
/// one they started with.
pub struct Runtime {
    /// The configuration.
    pub config: Arc<Config>,
    /// The routes.
    pub routes: RouteTable,
    /// The global `set_response_headers`, parsed.
    response_headers: ResponseHeaders,
}

impl Runtime {
    /// Compiles `config`.
    pub fn new(config: Config) -> Self {
        let routes = RouteTable::new(&config);
        Self {
            response_headers: ResponseHeaders::new(&config),
            config: Arc::new(config),
            routes,
        }
    }
}

/// The global `set_response_headers`: what every response gets, and what https ones add.
struct ResponseHeaders {
    always: Vec<(http::HeaderName, HeaderValue)>,
    https: Vec<(http::HeaderName, HeaderValue)>,
}

impl ResponseHeaders {
    fn new(config: &Config) -> Self {
        match &config.set_response_headers {
            Some(headers)
                if headers
                    .keys()
                    .any(|k| k.eq_ignore_ascii_case(defaults::DISABLE_RESPONSE_HEADERS)) =>
            {
                Self {
                    always: Vec::new(),
                    https: Vec::new(),
                }
            }
            Some(headers) => Self {
                always: routes::header_list(headers),
                https: Vec::new(),
            },
            None => Self {
                always: defaults::RESPONSE_HEADERS
                    .iter()
                    .map(|(n, v)| {
                        (
                            http::HeaderName::from_static(n),
                            HeaderValue::from_static(v),
                        )
                    })
                    .collect(),
                https: vec![(
                    http::header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static(defaults::HSTS),
                )],
            },
        }
    }
}

/// Sets the global and the route's `set_response_headers` on `response`. The upstream's own
/// values are replaced; the gateway's own pages keep theirs (they are stricter: `DENY`, CSP).
fn set_response_headers(ctx: &RequestContext, log: &RequestLog, response: &mut Response<Body>) {
    let replace = log.is_upstreams();
    let headers = response.headers_mut();
    let global = &ctx.runtime.response_headers;
    let https = if ctx.scheme == "https" {
        global.https.as_slice()
    } else {
        &[]
    };
    let route = log
        .route()
        .map_or(&[][..], |r| r.rewrites.response.as_slice());
    for (name, value) in global.always.iter().chain(https).chain(route) {
        if replace || !headers.contains_key(name) {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The gateway. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: ArcSwap<Runtime>,
    hooks: Arc<dyn Hooks>,
    metrics: Arc<Metrics>,
    client: proxy::UpstreamClient,
}

/// How a connection reached the gateway.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The peer address.
    pub remote: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The listener's port.
    pub local_port: u16,
    /// How long the gateway waits for more of a request body before answering 408.
    pub body_read_timeout: Duration,
    /// The client certificate of the TLS handshake (`downstream_mtls`), if one was presented.
    pub client_certificate: Option<Arc<postern_policy::ClientCertificate>>,
}

impl Gateway {
    /// A gateway serving `config`, with `hooks` for identity and upstream tokens.
    pub fn new(config: Config, hooks: Arc<dyn Hooks>) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime: ArcSwap::from_pointee(Runtime::new(config)),
                hooks,
                metrics: Arc::new(Metrics::default()),
                client: proxy::UpstreamClient::new(),
            }),
        }
    }

    /// The configuration in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.inner.runtime.load_full()
    }

    /// Puts a new configuration in force for the requests that start from now on.
    pub fn replace(&self, config: Config) {
        self.inner.runtime.store(Arc::new(Runtime::new(config)));
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Serves one request. Every response leaves through one [`RequestLog`], which counts and
    /// logs it.
    pub async fn handle(
        &self,
        request: Request<hyper::body::Incoming>,
        conn: Connection,
    ) -> Response<Body> {
        let mut log = RequestLog::new(request.method().clone(), Instant::now());
        let request_id = new_request_id();
        let browser = is_browser(&request);
        let default_port = if conn.tls { 443 } else { 80 };
        let (host, port) = match request_authority(&request, default_port) {
            Ok((host, 0)) => (host, conn.local_port),
            Ok(authority) => authority,
            Err(problem) => {
                let path = request.uri().path().to_owned();
                let response =
                    GatewayError::BadRequest(problem.into()).into_response(&request_id, browser);
                return log.finish(self.metrics(), request_id, "-".into(), path, response);
            }
        };
        let runtime = self.runtime();
        let (client_addr, forwarded_for, scheme) =
            client_identity(&request, &conn, runtime.config.xff_num_trusted_hops);
        let ctx = RequestContext {
            request_id,
            client_addr,
            scheme,
            host,
            port,
            started: log.started(),
            browser,
            runtime,
            client_certificate: conn.client_certificate.clone(),
            metrics: self.inner.metrics.clone(),
        };
        // One canonical path for routing, the hooks (policy, the gateway's own endpoints) and
        // the upstream.
        let (request, path) = match canonical_request(request) {
            Ok(canonical) => canonical,
            Err((error, raw_path)) => {
                let response = error.into_response(&ctx.request_id, browser);
                return log.finish(self.metrics(), ctx.request_id, ctx.host, raw_path, response);
            }
        };
        // Time spent waiting for the client's body is bounded, for the gateway's own endpoints
        // and proxied requests alike.
        let request = request.map(|b| ReadDeadline::new(b, conn.body_read_timeout).boxed());
        // Boxed: hyper keeps the space of this future for the connection's whole life (one
        // allocation, reused by each request), and `respond` is most of it; boxed, it is freed
        // as soon as the response head is ready, so an open SSE stream or an idle keep-alive
        // connection holds a few hundred bytes here instead of several KiB.
        let respond = Box::pin(self.respond(&ctx, &mut log, request, &path, &forwarded_for));
        let mut response = match ctx.runtime.config.write_timeout() {
            None => respond.await.unwrap_or_else(|response| response),
            // `timeout_write` (Envoy's `max_stream_duration`): the whole exchange, from the
            // request's arrival to the response's last byte.
            Some(limit) => {
                let deadline = tokio::time::Instant::from_std(ctx.started + limit);
                match tokio::time::timeout_at(deadline, respond).await {
                    Ok(response) => response
                        .unwrap_or_else(|response| response)
                        .map(|b| WriteDeadline::new(b, deadline, limit).boxed()),
                    Err(_) => GatewayError::WriteTimeout {
                        seconds: limit.as_secs_f64(),
                    }
                    .into_response(&ctx.request_id, browser),
                }
            }
        };
        set_response_headers(&ctx, &log, &mut response);
        log.finish(self.metrics(), ctx.request_id, ctx.host, path, response)
    }

    /// The answer to a request for a known host and canonical path: the gateway's own
    /// endpoint, a refusal, or the upstream's response. `Err` is an answer given before the
    /// request reached the upstream.
    async fn respond(
        &self,
        ctx: &RequestContext,
        log: &mut RequestLog,
        request: Request<Body>,
        path: &str,
        forwarded_for: &str,
    ) -> Result<Response<Body>, Response<Body>> {
        if path == "/.pomerium/ping" {
            return Ok(text_response(StatusCode::OK, "OK\n"));
        }
        let route = ctx.runtime.routes.find(&ctx.host, ctx.port, path);
        log.set_route(route.clone());
        let request = self.intercept(ctx, log, route.as_ref(), request).await?;
        let Some(route) = route else {
            let error = GatewayError::NoRoute {
                host: ctx.host.clone(),
                path: path.to_owned(),
            };
            return Err(error.into_response(&ctx.request_id, ctx.browser));
        };
        let request =
            admit(&route, request).map_err(|e| e.into_response(&ctx.request_id, ctx.browser))?;
        let (request, grant) = self.inner.hooks.authorize(ctx, &route, request).await?;
        self.proxy(ctx, log, &route, request, grant, forwarded_for)
            .await
    }

    /// Lets the hooks answer a request for one of the gateway's own endpoints (`Err`: the
    /// answer); `Ok` passes the request on.
    async fn intercept(
        &self,
        ctx: &RequestContext,
        log: &mut RequestLog,
        route: Option<&Arc<routes::Route>>,
        request: Request<Body>,
    ) -> Result<Request<Body>, Response<Body>> {
        if !self.inner.hooks.intercepts(ctx, route, &request) {
            return Ok(request);
        }
        match self.inner.hooks.intercept(ctx, route, request).await {
            Ok(response) => {
                log.answered_by(Answer::Endpoint);
                Err(response)
            }
            Err(request) => Ok(request),
        }
    }

    /// Sends an allowed request upstream (with the hooks' headers) and returns the upstream's
    /// response, filtered by the hooks, or the gateway's error when the upstream failed.
    async fn proxy(
        &self,
        ctx: &RequestContext,
        log: &mut RequestLog,
        route: &Arc<routes::Route>,
        request: Request<Body>,
        mut grant: Grant,
        forwarded_for: &str,
    ) -> Result<Response<Body>, Response<Body>> {
        let extra = self
            .inner
            .hooks
            .upstream_headers(ctx, route, &grant)
            .await?;
        let cookie = ctx.runtime.config.cookie_name();
        let client = proxy::UpstreamClient::for_this_thread(&self.inner.client);
        match proxy::forward(&client, ctx, route, request, extra, cookie, forwarded_for).await {
            Ok((response, outcome)) => {
                let response = response.map(|b| b.map_err(body::BoxError::from).boxed());
                let response = self
                    .inner
                    .hooks
                    .filter_response(ctx, route, &grant, response)
                    .await;
                log.answered_by(Answer::Upstream {
                    url: outcome.upstream,
                    user: grant.principal.take(),
                });
                Ok(response)
            }
            Err((error, outcome, kind)) => {
                self.inner
                    .metrics
                    .upstream_errors
                    .get_or_create(&UpstreamErrorLabels {
                        route: route.id.clone(),
                        kind: kind.into(),
                    })
                    .inc();
                tracing::warn!(request_id = %ctx.request_id, route = %route.id, upstream = %outcome.upstream, %error, "upstream request failed");
                let response = error.into_response(&ctx.request_id, ctx.browser);
                log.answered_by(Answer::UpstreamFailed(outcome.upstream));
                Ok(response)
            }
        }
    }
}

/// The host and port the request is for: the request target's authority (absolute form, or
/// HTTP/2's `:authority`), else the one `Host` header. Port 0: none given.
fn request_authority<B>(
    request: &Request<B>,
    default_port: u16,
) -> Result<(String, u16), &'static str> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        // RFC 9112 §3.2: the gateway and the upstream might each pick a different one.
        return Err("more than one Host header; send exactly one");
    }
    let host = match host {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| "the Host header is not a valid host name")?,
        ),
        None => None,
    };
    let split = |authority: &str| {
        let port = if authority.contains(':') {
            0
        } else {
            default_port
        };
        split_host(authority, port)
    };
    match (request.uri().authority(), host) {
        (Some(target), Some(host)) if split(target.as_str()) != split(host) => {
            Err("the Host header names another host than the request target; send one host")
        }
        (Some(target), _) => Ok(split(target.as_str())),
        (None, Some(host)) => Ok(split(host)),
        (None, None) => Err("no Host header"),
    }
}

/// The request with its path in canonical form ([`path::canonical`]) and that path; the query
/// is kept as sent.
fn canonical_request<B>(
    mut request: Request<B>,
) -> Result<(Request<B>, String), (GatewayError, String)> {
    let (path, changed) = match path::canonical(request.uri().path()) {
        Ok(path) => {
            let changed = matches!(path, std::borrow::Cow::Owned(_));
            (path.into_owned(), changed)
        }
        Err(error) => {
            let raw = request.uri().path().to_owned();
            return Err((GatewayError::BadRequest(error.to_string()), raw));
        }
    };
    if changed {
        let path_and_query = match request.uri().query() {
            Some(query) => format!("{path}?{query}"),
            None => path.clone(),
        };
        let mut parts = request.uri().clone().into_parts();
        let uri = path_and_query
            .parse()
            .ok()
            .and_then(|pq| {
                parts.path_and_query = Some(pq);
                Uri::from_parts(parts).ok()
            })
            .ok_or_else(|| {
                (
                    GatewayError::BadRequest("the request target is not a valid URI".into()),
                    path.clone(),
                )
            })?;
        *request.uri_mut() = uri;
    }
    Ok((request, path))
}

/// What the route accepts, checked before anything is read or sent: the method and, from a
/// declared length, the body's size. The body is then capped at the route's limit.
fn admit(route: &routes::Route, request: Request<Body>) -> Result<Request<Body>, GatewayError> {
    if let Some(protocol) = upgrade::requested(&request)
        && !protocol.allowed_by(route)
    {
        return Err(GatewayError::UpgradeRefused {
            protocol,
            key: protocol.key(),
        });
    }
    check_method(route, &request)?;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > route.max_request_bytes) {
        return Err(GatewayError::PayloadTooLarge {
            limit: route.max_request_bytes,
        });
    }
    Ok(request.map(|b| proxy::limit_body(b, route.max_request_bytes)))
}

/// MCP server routes speak Streamable HTTP: POST, GET and DELETE (and CORS preflights), the
/// GET (a stream) and DELETE (end the session) without a body.
fn check_method<B: http_body::Body>(
    route: &routes::Route,
    request: &Request<B>,
) -> Result<(), GatewayError> {
    if !matches!(route.kind, Kind::McpServer(_)) {
        return Ok(());
    }
    let method = request.method();
    if !matches!(
        *method,
        Method::POST | Method::GET | Method::DELETE | Method::OPTIONS
    ) {
        return Err(GatewayError::MethodNotAllowed {
            allowed: MCP_METHODS,
        });
    }
    let has_body = request.headers().contains_key(header::TRANSFER_ENCODING)
        || request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
        || !request.body().is_end_stream();
    if matches!(*method, Method::GET | Method::DELETE) && has_body {
        return Err(GatewayError::BadRequest(format!(
            "a {method} request to an MCP server has no body; send it without one"
        )));
    }
    Ok(())
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A random request id (16 hex digits).
fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The client's address, the `X-Forwarded-For` value to send upstream, and the scheme,
/// trusting `X-Forwarded-For`/`-Proto` only for the configured number of proxy hops in front of
/// the gateway.
fn client_identity<B>(
    request: &Request<B>,
    conn: &Connection,
    trusted_hops: u32,
) -> (SocketAddr, String, &'static str) {
    let own_scheme = if conn.tls { "https" } else { "http" };
    let peer = conn.remote.ip().to_string();
    if trusted_hops == 0 {
        // Untrusted: whatever the client claims is dropped.
        return (conn.remote, peer, own_scheme);
    }
    let mut chain: Vec<String> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    chain.push(peer);
    // The last `trusted_hops` entries (our peer included) are our proxies; the one before is the client.
    let client = chain
        .len()
        .checked_sub(trusted_hops as usize + 1)
        .and_then(|i| chain.get(i))
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map_or(conn.remote, |ip| SocketAddr::new(ip, 0));
    let scheme = match request
        .headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some("https") => "https",
        Some("http") => "http",
        _ => own_scheme,
    };
    (client, chain.join(", "), scheme)
}
