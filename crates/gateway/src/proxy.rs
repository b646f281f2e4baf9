//! The streaming reverse proxy: one request to one upstream, bodies streamed frame by frame both
//! ways (Streamable HTTP and SSE pass untouched; each event reaches the client as soon as the
//! upstream writes it), hop-by-hop headers removed, `X-Forwarded-*` set, and the client's
//! credentials never forwarded.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, BoxError};
use crate::errors::GatewayError;
use crate::hooks::RequestContext;
use crate::routes::Route;

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The upstream HTTP client (HTTP/1.1, and HTTP/2 over TLS when the upstream offers it).
#[derive(Clone)]
pub struct UpstreamClient {
    verified: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    unverified: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    /// HTTP/1.1 only, for upgrades (which HTTP/2 cannot carry).
    verified_http1: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    unverified_http1: Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
}

/// A pooled upstream client over `tls`; with `server_name`, every upstream's certificate is
/// checked against that name (and it is the SNI) instead of the host in the URL. Without
/// `http2` it speaks HTTP/1.1 only: a route that sends its own `Host` needs that, since over
/// HTTP/2 the authority comes from the URL and must agree with `Host` (RFC 9113 §8.3.1).
pub(crate) fn https_client(
    tls: rustls::ClientConfig,
    server_name: Option<rustls_pki_types::ServerName<'static>>,
    http2: bool,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, Body> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let builder = match server_name {
        Some(name) => {
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let connector = if http2 {
        builder.enable_http1().enable_http2().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// The verifying TLS configuration: the system's trusted CAs, or `roots` when given.
pub(crate) fn verifying_tls(roots: Option<rustls::RootCertStore>) -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(roots) = roots {
        return rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
    }
    use rustls_platform_verifier::BuilderVerifierExt;
    rustls::ClientConfig::builder()
        .with_platform_verifier()
        .map(|b| b.with_no_client_auth())
        .unwrap_or_else(|_| {
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
}

/// The TLS configuration of `tls_skip_verify`: any certificate is accepted.
pub(crate) fn unverified_tls() -> rustls::ClientConfig {
    let _ = rustls::crypto::ring::default_provider().install_default();
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(danger::AcceptAnyCertificate::new()))
        .with_no_client_auth()
}

impl UpstreamClient {
    /// A client with connection pooling.
    pub fn new() -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let verified = verifying_tls(None);
        let unverified = unverified_tls();
        Self {
            verified: https_client(verified.clone(), None, true),
            unverified: https_client(unverified.clone(), None, true),
            verified_http1: https_client(verified, None, false),
            unverified_http1: https_client(unverified, None, false),
        }
    }
}

thread_local! {
    /// A connection worker's own client (see `server::Workers`).
    static THREAD_CLIENT: std::cell::OnceCell<UpstreamClient> = const { std::cell::OnceCell::new() };
}

impl UpstreamClient {
    /// Gives this thread a client of its own, whose pooled upstream connections live on this
    /// thread's runtime.
    pub(crate) fn install_for_this_thread() {
        THREAD_CLIENT.with(|client| {
            let _ = client.set(UpstreamClient::new());
        });
    }

    /// This thread's own client if it has one, else `shared`.
    pub(crate) fn for_this_thread(shared: &UpstreamClient) -> UpstreamClient {
        THREAD_CLIENT.with(|client| client.get().unwrap_or(shared).clone())
    }
}

impl Default for UpstreamClient {
    fn default() -> Self {
        Self::new()
    }
}

/// How a proxied request went, for logs and metrics.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The upstream URL used.
    pub upstream: String,
}

/// Sends `request` to one of the route's upstreams and returns its response.
pub async fn forward(
    client: &UpstreamClient,
    ctx: &RequestContext,
    route: &Arc<Route>,
    mut request: Request<Body>,
    extra_headers: HeaderMap,
    gateway_cookie: &str,
    forwarded_for: &str,
) -> Result<(Response<hyper::body::Incoming>, Outcome), (GatewayError, Outcome, &'static str)> {
    if route.upstreams.is_empty() {
        // An aggregate MCP route has no upstream: the access hooks answer it. Without them
        // (no identity configured) it has nothing to proxy to.
        return Err((
            GatewayError::BadGateway {
                upstream: "-".into(),
                reason: "this route has no upstream of its own (an aggregate MCP route needs sign-in configured)".into(),
            },
            Outcome {
                upstream: "-".into(),
            },
            "request",
        ));
    }
    let upstream = route.pick_upstream();
    let outcome = Outcome {
        upstream: upstream.url.to_string(),
    };
    let (uri, authority) = match upstream_target(route, &upstream.url, request.uri()) {
        Ok(target) => target,
        Err(error) => return Err((error, outcome, "request")),
    };
    let client_headers = ClientHeaders {
        gateway_cookie,
        forwarded_for,
        authority: &authority,
    };
    let upgrade = crate::upgrade::Pending::take(route, &mut request);
    client_headers.rewrite(request.headers_mut(), ctx, route, &extra_headers);
    if let Some(upgrade) = &upgrade {
        upgrade.ask_upstream(request.headers_mut());
    }
    *request.uri_mut() = uri;
    // HTTP/2 from the client, HTTP/1.1 or 2 to the upstream: let the connector decide.
    *request.version_mut() = http::Version::HTTP_11;

    let client = match (&route.tls_client, route.config.tls_skip_verify, &upgrade) {
        // A route that upgrades has an HTTP/1.1 client of its own (see `routes`).
        (Some(own), _, _) => own,
        (None, true, None) => &client.unverified,
        (None, false, None) => &client.verified,
        (None, true, Some(_)) => &client.unverified_http1,
        (None, false, Some(_)) => &client.verified_http1,
    };
    let deadline = ctx
        .runtime
        .config
        .write_timeout()
        .map(|limit| ctx.started + limit);
    // `timeout: 0s` is Pomerium's (Envoy's) "no limit", which its configurations give the
    // routes of long-lived streams; a zero deadline would fail every request instead.
    let answered = if route.timeout.is_zero() {
        Ok(client.request(request).await)
    } else {
        tokio::time::timeout(route.timeout, client.request(request)).await
    };
    match answered {
        Err(_) => Err((
            GatewayError::GatewayTimeout {
                upstream: outcome.upstream.clone(),
                seconds: route.timeout.as_secs_f64(),
            },
            outcome,
            "timeout",
        )),
        Ok(Err(error)) => {
            let (error, kind) = failure(&error, route, upstream, &outcome.upstream);
            Err((error, outcome, kind))
        }
        Ok(Ok(response)) => {
            upstream.mark_up();
            let upgrade = upgrade.map(|u| (u, deadline));
            match response_for_client(response, gateway_cookie, &ctx.request_id, upgrade) {
                Ok(response) => Ok((response, outcome)),
                Err(reason) => Err((
                    GatewayError::BadUpstreamResponse {
                        upstream: outcome.upstream.clone(),
                        reason,
                    },
                    outcome,
                    "upstream",
                )),
            }
        }
    }
}

/// The upstream request's URI, and its authority (`host[:port]`): the upstream's scheme and
/// authority, the route's upstream path for the request's path, the request's query.
fn upstream_target(
    route: &Route,
    upstream: &url::Url,
    request: &Uri,
) -> Result<(Uri, String), GatewayError> {
    let path = route.upstream_path(upstream, request.path())?;
    let path_and_query = match request.query() {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let authority = upstream[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
    let uri = Uri::builder()
        .scheme(upstream.scheme())
        .authority(authority.as_str())
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| GatewayError::BadRequest(format!("cannot build the upstream URI: {e}")))?;
    Ok((uri, authority))
}

/// What the upstream request's headers are rewritten with.
struct ClientHeaders<'a> {
    /// The gateway's session cookie, never forwarded.
    gateway_cookie: &'a str,
    /// The `X-Forwarded-For` value.
    forwarded_for: &'a str,
    /// The upstream's `host[:port]`.
    authority: &'a str,
}

impl ClientHeaders<'_> {
    /// Turns the client's request headers into the upstream's: hop-by-hop, forged and
    /// credential headers removed, `X-Forwarded-*`, `X-Request-Id` and `Host` set, then the
    /// hooks' `extra` headers.
    fn rewrite(
        &self,
        headers: &mut HeaderMap,
        ctx: &RequestContext,
        route: &Route,
        extra: &HeaderMap,
    ) {
        let original_host = headers.get(header::HOST).cloned();
        strip_hop_by_hop(headers);
        strip_forged(headers, extra, &route.rewrites);
        if route.is_mcp_server() {
            // The client's token (TE) is for the gateway only; the upstream gets the TI, if any.
            headers.remove(header::AUTHORIZATION);
        }
        strip_cookie(headers, self.gateway_cookie);
        for name in &route.rewrites.remove {
            headers.remove(name);
        }
        for (name, value) in &route.rewrites.set {
            headers.insert(name.clone(), value.clone());
        }
        set(headers, "x-forwarded-for", self.forwarded_for);
        set(headers, "x-forwarded-proto", ctx.scheme);
        if let Some(host) = original_host.as_ref().and_then(|h| h.to_str().ok()) {
            set(headers, "x-forwarded-host", host);
        }
        set(headers, "x-request-id", &ctx.request_id);
        if let Some(host) = &route.rewrites.host {
            headers.insert(header::HOST, host.clone());
        } else if route.config.preserve_host_header {
            if let Some(host) = original_host {
                headers.insert(header::HOST, host);
            }
        } else if let Ok(value) = HeaderValue::from_str(self.authority) {
            headers.insert(header::HOST, value);
        }
        for (name, value) in extra.iter() {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// The gateway's error, and its metric kind, for an upstream request that failed; a connection
/// failure marks the upstream down.
fn failure(
    error: &hyper_util::client::legacy::Error,
    route: &Route,
    upstream: &crate::routes::Upstream,
    upstream_url: &str,
) -> (GatewayError, &'static str) {
    if let Some(timeout) = crate::body::find_cause::<crate::body::BodyReadTimeout>(error) {
        let seconds = timeout.0.as_secs();
        return (GatewayError::RequestTimeout { seconds }, "request_timeout");
    }
    if crate::body::find_cause::<http_body_util::LengthLimitError>(error).is_some() {
        let limit = route.max_request_bytes;
        return (GatewayError::PayloadTooLarge { limit }, "request_too_large");
    }
    let kind = if error.is_connect() {
        upstream.mark_down();
        "connect"
    } else {
        "upstream"
    };
    let error = GatewayError::BadGateway {
        upstream: upstream_url.to_owned(),
        reason: describe(error),
    };
    (error, kind)
}

/// The upstream's response as the client gets it: framing normalised, hop-by-hop headers and
/// what the upstream may not decide for the gateway's origin removed. `Err`: why it cannot be
/// passed on.
fn response_for_client(
    mut response: Response<hyper::body::Incoming>,
    gateway_cookie: &str,
    request_id: &str,
    upgrade: Option<(crate::upgrade::Pending, Option<std::time::Instant>)>,
) -> Result<Response<hyper::body::Incoming>, &'static str> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Only an upgrade the route allowed was forwarded; passing on any other 101 would hand
        // the client's connection to whatever the upstream speaks next.
        let Some((upgrade, deadline)) = upgrade else {
            return Err("it switched protocols (101) though no upgrade was asked for");
        };
        let offered = response.headers().get(header::UPGRADE).cloned();
        let headers = response.headers_mut();
        strip_hop_by_hop(headers);
        strip_owned_response_headers(headers, gateway_cookie, request_id);
        if let Some(offered) = offered {
            headers.insert(header::UPGRADE, offered);
        }
        upgrade.switch(&mut response, deadline, request_id)?;
        return Ok(response);
    }
    let headers = response.headers_mut();
    if headers.contains_key(header::TRANSFER_ENCODING) {
        // RFC 9112 §6.3: the body was framed by Transfer-Encoding (and is re-framed for the
        // client); a Content-Length next to it is wrong, and passing it on would make the
        // client cut or wait for the body.
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
    strip_owned_response_headers(headers, gateway_cookie, request_id);
    Ok(response)
}

/// Wraps the client's body so at most `limit` bytes are forwarded.
pub fn limit_body(body: Body, limit: u64) -> Body {
    if limit == u64::MAX {
        return body;
    }
    http_body_util::Limited::new(body, limit as usize)
        .map_err(BoxError::from)
        .boxed()
}

/// Headers the gateway sets on every upstream request (besides `Host` and the hooks' own).
const GATEWAY_SET: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-request-id",
];

/// Removes client headers that pose as the gateway's: `x-pomerium-*` (identity comes only
/// from the gateway), and any header that is one the gateway sets once `_` reads as `-`
/// (`X_Pomerium_Jwt_Assertion`, `X_Forwarded_For`): CGI, WSGI, PHP and others turn both
/// spellings into the same variable, and may pick the client's.
fn strip_forged(
    headers: &mut HeaderMap,
    gateway_set: &HeaderMap,
    rewrites: &crate::routes::HeaderRewrites,
) {
    // The route's own set and removed headers count as the gateway's: a client's underscore
    // spelling of one must not stand in for the value the administrator set or removed.
    let route_owned = |normal: &str| {
        rewrites.set.iter().any(|(n, _)| n.as_str() == normal)
            || rewrites.remove.iter().any(|n| n.as_str() == normal)
    };
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            let normal = name.replace('_', "-");
            normal.starts_with("x-pomerium-")
                || (normal != name
                    && (GATEWAY_SET.contains(&normal.as_str())
                        || gateway_set.contains_key(normal.as_str())
                        || route_owned(&normal)))
        })
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
}

/// Removes what an upstream may not decide for the gateway's origin, which every route on the
/// host shares: cookies named like the gateway's own (its session, and every `<cookie_name>*`
/// it uses), and `Strict-Transport-Security` (one upstream could turn HSTS off for all).
fn strip_owned_response_headers(headers: &mut HeaderMap, gateway_cookie: &str, request_id: &str) {
    headers.remove(header::STRICT_TRANSPORT_SECURITY);
    if !headers.contains_key(header::SET_COOKIE) {
        return;
    }
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for cookie in cookies {
        let name = cookie
            .to_str()
            .ok()
            .and_then(|c| c.split([';', '=']).next())
            .map(str::trim);
        match name {
            Some(name) if !name.starts_with(gateway_cookie) => {
                headers.append(header::SET_COOKIE, cookie);
            }
            _ => {
                tracing::debug!(request_id, cookie = ?name, "dropped an upstream Set-Cookie for the gateway's own cookie");
            }
        }
    }
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Removes the gateway's own cookies (its name, and names starting with it) from `Cookie`,
/// keeping the application's.
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let values: Vec<String> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| {
            !pair.is_empty()
                && !pair
                    .split('=')
                    .next()
                    .is_some_and(|cookie| cookie.trim().starts_with(name))
        })
        .map(str::to_owned)
        .collect();
    headers.remove(header::COOKIE);
    if !values.is_empty()
        && let Ok(value) = HeaderValue::from_str(&values.join("; "))
    {
        headers.insert(header::COOKIE, value);
    }
}

fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

mod danger {
    //! `tls_skip_verify`: for internal upstreams with self-signed certificates only.

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    pub struct AcceptAnyCertificate(rustls::crypto::WebPkiSupportedAlgorithms);

    impl AcceptAnyCertificate {
        pub fn new() -> Self {
            Self(rustls::crypto::ring::default_provider().signature_verification_algorithms)
        }
    }

    impl ServerCertVerifier for AcceptAnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("mcp-session-id", HeaderValue::from_static("abc"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("mcp-session-id"));
    }

    #[test]
    fn only_the_gateway_cookie_is_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("_postern=secret; app=1; theme=dark"),
        );
        strip_cookie(&mut h, "_postern");
        assert_eq!(h.get(header::COOKIE).unwrap(), "app=1; theme=dark");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("_postern=secret"));
        strip_cookie(&mut h, "_postern");
        assert!(!h.contains_key(header::COOKIE));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("_postern_csrf=token; postern=app"),
        );
        strip_cookie(&mut h, "_postern");
        assert_eq!(h.get(header::COOKIE).unwrap(), "postern=app");
    }
}
