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
pub mod metrics;
pub mod path;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use postern_config::Config;

use crate::body::{Body, Observed, ReadDeadline, full};
use crate::errors::{GatewayError, is_browser};
use crate::hooks::{Hooks, RequestContext};
use crate::metrics::{Metrics, RequestLabels, RouteLabel, UpstreamErrorLabels};
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
}

impl Runtime {
    /// Compiles `config`.
    pub fn new(config: Config) -> Self {
        let routes = RouteTable::new(&config);
        Self {
            config: Arc::new(config),
            routes,
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
#[derive(Clone, Copy, Debug)]
pub struct Connection {
    /// The peer address.
    pub remote: SocketAddr,
    /// Whether it came over TLS.
    pub tls: bool,
    /// The listener's port.
    pub local_port: u16,
    /// How long the gateway waits for more of a request body before answering 408.
    pub body_read_timeout: Duration,
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

    /// Serves one request.
    pub async fn handle(
        &self,
        request: Request<hyper::body::Incoming>,
        conn: Connection,
    ) -> Response<Body> {
        let runtime = self.runtime();
        let started = Instant::now();
        let request_id = new_request_id();
        let config = &runtime.config;
        let (client_addr, forwarded_for, scheme) =
            client_identity(&request, conn, config.xff_num_trusted_hops);
        let default_port = if conn.tls { 443 } else { 80 };
        let browser = is_browser(&request);
        let method = request.method().clone();
        let (host, port) = match request_authority(&request, default_port) {
            Ok((host, port)) => (host, if port == 0 { conn.local_port } else { port }),
            Err(problem) => {
                let path = request.uri().path().to_owned();
                let response =
                    GatewayError::BadRequest(problem.into()).into_response(&request_id, browser);
                access_log(
                    &request_id,
                    &method,
                    "-",
                    &path,
                    response.status(),
                    0,
                    started,
                    "-",
                    None,
                    "",
                );
                return response;
            }
        };
        let ctx = RequestContext {
            request_id,
            client_addr,
            scheme,
            host,
            port,
            started,
            browser,
            runtime: runtime.clone(),
        };

        // One canonical path for routing, the hooks (policy, the gateway's own endpoints) and
        // the upstream.
        let (request, path) = match canonical_request(request) {
            Ok(canonical) => canonical,
            Err((error, raw_path)) => {
                let response = error.into_response(&ctx.request_id, browser);
                return self.finish(&ctx, &method, &raw_path, None, response, "-");
            }
        };
        // Time spent waiting for the client's body is bounded, for the gateway's own endpoints
        // and proxied requests alike.
        let request = request.map(|b| ReadDeadline::new(b, conn.body_read_timeout).boxed());
        let route = runtime.routes.find(&ctx.host, ctx.port, &path);

        if path == "/.pomerium/ping" {
            return self.finish(
                &ctx,
                &method,
                &path,
                None,
                text_response(StatusCode::OK, "OK\n"),
                "-",
            );
        }
        let request = if self.inner.hooks.intercepts(&ctx, route.as_ref(), &request) {
            match self
                .inner
                .hooks
                .intercept(&ctx, route.as_ref(), request)
                .await
            {
                Ok(response) => {
                    return self.finish(&ctx, &method, &path, route.as_ref(), response, "gateway");
                }
                Err(request) => request,
            }
        } else {
            request
        };
        let Some(route) = route else {
            let error = GatewayError::NoRoute {
                host: ctx.host.clone(),
                path: path.clone(),
            };
            return self.finish(
                &ctx,
                &method,
                &path,
                None,
                error.into_response(&ctx.request_id, browser),
                "-",
            );
        };
        if let Err(error) = check_method(&route, &request) {
            return self.finish(
                &ctx,
                &method,
                &path,
                Some(&route),
                error.into_response(&ctx.request_id, browser),
                "-",
            );
        }

        // A declared length over the limit is refused before anything is read or sent.
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > route.max_request_bytes) {
            let error = GatewayError::PayloadTooLarge {
                limit: route.max_request_bytes,
            };
            return self.finish(
                &ctx,
                &method,
                &path,
                Some(&route),
                error.into_response(&ctx.request_id, browser),
                "-",
            );
        }
        let request = request.map(|b| proxy::limit_body(b, route.max_request_bytes));

        let (request, grant) = match self.inner.hooks.authorize(&ctx, &route, request).await {
            Ok(allowed) => allowed,
            Err(response) => return self.finish(&ctx, &method, &path, Some(&route), response, "-"),
        };
        let extra = match self
            .inner
            .hooks
            .upstream_headers(&ctx, &route, &grant)
            .await
        {
            Ok(headers) => headers,
            Err(response) => return self.finish(&ctx, &method, &path, Some(&route), response, "-"),
        };
        let cookie = config.cookie_name.as_deref().unwrap_or("_postern");
        let client = proxy::UpstreamClient::for_this_thread(&self.inner.client);
        match proxy::forward(
            &client,
            &ctx,
            &route,
            request,
            extra,
            cookie,
            &forwarded_for,
        )
        .await
        {
            Ok((response, outcome)) => {
                let response = response.map(|b| b.map_err(body::BoxError::from).boxed());
                let response = self
                    .inner
                    .hooks
                    .filter_response(&ctx, &route, &grant, response)
                    .await;
                self.finish_streaming(
                    &ctx,
                    &method,
                    &path,
                    &route,
                    response,
                    &outcome.upstream,
                    grant.principal.clone(),
                )
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
                let response = error.into_response(&ctx.request_id, browser);
                self.finish(
                    &ctx,
                    &method,
                    &path,
                    Some(&route),
                    response,
                    &outcome.upstream,
                )
            }
        }
    }

    /// Logs and counts a response the gateway produced itself (complete body).
    fn finish(
        &self,
        ctx: &RequestContext,
        method: &http::Method,
        path: &str,
        route: Option<&Arc<routes::Route>>,
        mut response: Response<Body>,
        upstream: &str,
    ) -> Response<Body> {
        set_request_id(&mut response, &ctx.request_id);
        let route_id = route.map_or("-", |r| r.id.as_str());
        self.count(route_id, method, response.status(), ctx.started);
        let bytes = http_body::Body::size_hint(response.body())
            .exact()
            .unwrap_or(0);
        access_log(
            &ctx.request_id,
            method,
            &ctx.host,
            path,
            response.status(),
            bytes,
            ctx.started,
            upstream,
            None,
            "",
        );
        response
    }

    /// Streams an upstream response; logs when it ends.
    #[allow(clippy::too_many_arguments)]
    fn finish_streaming(
        &self,
        ctx: &RequestContext,
        method: &http::Method,
        path: &str,
        route: &Arc<routes::Route>,
        mut response: Response<Body>,
        upstream: &str,
        principal: Option<String>,
    ) -> Response<Body> {
        set_request_id(&mut response, &ctx.request_id);
        let status = response.status();
        self.count(&route.id, method, status, ctx.started);
        let streaming = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let metrics = self.inner.metrics.clone();
        if streaming {
            metrics.open_streams.inc();
        }
        let (request_id, method, host, path, upstream, started) = (
            ctx.request_id.clone(),
            method.clone(),
            ctx.host.clone(),
            path.to_owned(),
            upstream.to_owned(),
            ctx.started,
        );
        let on_end = move |bytes: u64, complete: bool| {
            if streaming {
                metrics.open_streams.dec();
            }
            let note = if complete {
                ""
            } else {
                "response ended early (client gone or upstream failed)"
            };
            access_log(
                &request_id,
                &method,
                &host,
                &path,
                status,
                bytes,
                started,
                &upstream,
                principal.as_deref(),
                note,
            );
        };
        response.map(|b| Observed::new(b, route.idle_timeout, Box::new(on_end)).boxed())
    }

    fn count(&self, route: &str, method: &http::Method, status: StatusCode, started: Instant) {
        let metrics = &self.inner.metrics;
        metrics
            .requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: metrics::method_label(method),
                status: status.as_u16(),
            })
            .inc();
        metrics
            .durations
            .get_or_create(&RouteLabel {
                route: route.to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
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

/// One line per request: method, host, path, status, bytes, duration, upstream.
#[allow(clippy::too_many_arguments)]
fn access_log(
    request_id: &str,
    method: &http::Method,
    host: &str,
    path: &str,
    status: StatusCode,
    bytes: u64,
    started: Instant,
    upstream: &str,
    user: Option<&str>,
    note: &str,
) {
    // What the client chose is capped (a 30 KB method or path would otherwise be written on
    // every request); string fields are written escaped by the log formatter.
    tracing::info!(
        target: "postern::access",
        request_id,
        method = &*capped(method.as_str(), 24),
        host = &*capped(host, 256),
        path = &*capped(path, 2048),
        status = status.as_u16(),
        bytes,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        upstream,
        user = user.unwrap_or("-"),
        note,
        "request"
    );
}

/// At most `max` bytes of `text` (cut on a character boundary, `…` marking the cut).
fn capped(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}…(+{} bytes)", &text[..end], text.len() - end))
}

fn set_request_id(response: &mut Response<Body>, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-request-id", value);
    }
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
    conn: Connection,
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

#[cfg(test)]
mod log_tests {
    #[test]
    fn client_chosen_log_fields_are_capped() {
        assert_eq!(super::capped("GET", 24), "GET");
        let method = "M".repeat(30_000);
        let logged = super::capped(&method, 24);
        assert_eq!(logged, format!("{}…(+29976 bytes)", "M".repeat(24)));
        assert_eq!(
            super::capped("ééé", 3),
            "é…(+4 bytes)",
            "cut on a character boundary"
        );
    }
}
