//! Attacks from the security reviews (issues 11 and 18), each performed against a running
//! gateway: path tricks, forged headers, odd methods and bodies, slow and idle connections,
//! metric-label growth, hostile upstream responses, the redirect listener.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use postern_gateway::body::{Body, full};
use postern_gateway::hooks::{Grant, Hooks, RequestContext};
use postern_gateway::routes::Route;
use postern_gateway::server::ConnectionTimeouts;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client;
use super::gateway::Running;
use super::upstream::Upstream;

// ---------------------------------------------------------------------------------------------
// Raw clients: reqwest (the `url` crate) resolves `..` and `%2e` itself, so the attacks are sent
// as written, over a socket (HTTP/1.1) or hyper's own client (HTTP/2, which keeps the path).

/// A response as received: status, head (lower-cased), body (de-chunked).
pub(super) struct Raw {
    pub(super) status: u16,
    pub(super) head: String,
    pub(super) body: Vec<u8>,
}

impl Raw {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub(super) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `head` (everything up to the blank line, which is added) and reads the response.
async fn http1(addr: SocketAddr, head: &str) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("{head}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(&mut stream).await
}

async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the gateway answered and closed")
        .unwrap();
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8_lossy(&bytes[..split]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    let mut body = bytes[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Raw { status, head, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line]).unwrap().trim(), 16).unwrap();
        data = &data[line + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// GET `path_and_query`, exactly as written, over HTTP/2 with prior knowledge.
async fn h2(addr: SocketAddr, path_and_query: &str) -> Raw {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Empty<Bytes>>();
    let uri: http::Uri = format!("http://localhost:{}{path_and_query}", addr.port())
        .parse()
        .unwrap();
    assert_eq!(uri.path_and_query().unwrap().as_str(), path_and_query);
    let response = client.get(uri).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let status = response.status().as_u16();
    let head = format!("{:?}", response.headers()).to_ascii_lowercase();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Raw {
        status,
        head,
        body: body.to_vec(),
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Version {
    Http1,
    H2c,
}

pub(super) async fn get(version: Version, addr: SocketAddr, path: &str) -> Raw {
    match version {
        Version::Http1 => {
            http1(
                addr,
                &format!("GET {path} HTTP/1.1\r\nHost: localhost:{}", addr.port()),
            )
            .await
        }
        Version::H2c => h2(addr, path).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 11 item 3: path normalisation

/// A public `/pub` and a private `/admin` on one upstream that serves both areas.
fn shared_upstream_routes(up: &Upstream) -> String {
    format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, prefix: /pub, to: {up}, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /admin, to: {up}}}
",
        up = up.url("")
    )
}

#[tokio::test]
async fn path_tricks_through_a_public_route_never_reach_the_private_area() {
    let up = Upstream::start().await;
    let gw = Running::start(&shared_upstream_routes(&up)).await;
    for version in [Version::Http1, Version::H2c] {
        // Resolved like the upstream would resolve it: the private route, under its own policy.
        for path in [
            "/pub/../admin/panel",
            "/pub//../admin/panel",
            "/pub/./../admin",
        ] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(
                response.status,
                401,
                "{version:?} {path}: {}",
                response.text()
            );
        }
        // Encoded separators and dot segments: refused, with what to do instead.
        for path in [
            "/pub/%2e%2e/admin/panel",
            "/pub/%2E%2E/admin/panel",
            "/pub/..%2fadmin/panel",
            "/pub/..%2Fadmin/panel",
            "/pub/..%5cadmin/panel",
            "/pub/..;/admin/panel",
            // Escaped twice (a server that decodes twice reads `..`), a dot segment followed by
            // an escape (`..%3B` is `..;`; C stops at the NUL).
            "/pub/%252e%252e/admin/panel",
            "/pub/%%32%65%%32%65/admin/panel",
            "/pub/..%3b/admin/panel",
            "/pub/..%00/admin/panel",
        ] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(
                response.status,
                400,
                "{version:?} {path}: {}",
                response.text()
            );
            assert!(
                response.head.contains("application/json"),
                "{}",
                response.head
            );
            assert!(
                response.text().contains(
                    "the path contains an encoded '/', '\\\\' or '.' segment; send the plain path"
                ),
                "{version:?} {path}: {}",
                response.text()
            );
        }
    }
    // A raw backslash (which http::Uri's HTTP/2 client would send too, but some servers read
    // as `/`).
    let response = http1(
        gw.addr,
        &format!(
            "GET /pub/..\\admin/panel HTTP/1.1\r\nHost: localhost:{}",
            gw.addr.port()
        ),
    )
    .await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert_eq!(
        up.seen.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    // The public area still works.
    let response = get(Version::H2c, gw.addr, "/pub/page").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["path"], json!("/pub/page"));
}

/// Hooks that record the path the policy and the gateway's own endpoints see.
#[derive(Default)]
struct RecordPaths {
    authorized: Mutex<Vec<String>>,
}

#[async_trait]
impl Hooks for RecordPaths {
    fn intercepts(
        &self,
        _ctx: &RequestContext,
        _route: Option<&Arc<Route>>,
        request: &Request<Body>,
    ) -> bool {
        request.uri().path().starts_with("/.pomerium/")
    }

    async fn intercept(
        &self,
        _ctx: &RequestContext,
        _route: Option<&Arc<Route>>,
        request: Request<Body>,
    ) -> Result<Response<Body>, Request<Body>> {
        Ok(Response::new(full(format!(
            "intercepted {}",
            request.uri().path()
        ))))
    }

    async fn authorize(
        &self,
        _ctx: &RequestContext,
        _route: &Arc<Route>,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Grant), Response<Body>> {
        self.authorized
            .lock()
            .unwrap()
            .push(request.uri().path().to_owned());
        if request.uri().path().starts_with("/app/secret") {
            // A `deny: http_path starts_with /app/secret` rule.
            let mut denied = Response::new(full("denied"));
            *denied.status_mut() = StatusCode::FORBIDDEN;
            return Err(denied);
        }
        Ok((request, Grant::default()))
    }
}

#[tokio::test]
async fn routing_policy_and_upstream_all_see_one_canonical_path() {
    let up = Upstream::start().await;
    let hooks = Arc::new(RecordPaths::default());
    let gw = Running::start_with_hooks(
        &format!(
            "insecure_server: true\nroutes:\n  - {{from: http://localhost, prefix: /app, to: {}}}\n",
            up.url("")
        ),
        hooks.clone(),
    )
    .await;
    let variants = [
        "/app//secret",
        "/app/./secret",
        "/app/x/../secret",
        "/app/%73ecret",
        "/app/%73%65cret/",
    ];
    for version in [Version::Http1, Version::H2c] {
        for path in variants {
            let response = get(version, gw.addr, path).await;
            assert_eq!(
                response.status, 403,
                "{version:?} {path}: the deny rule holds"
            );
        }
        // Allowed paths reach the upstream in the same canonical form, the query as sent.
        let response = get(version, gw.addr, "/app//open/./x/../%7Edoc?q=%2F..%2F&a=b").await;
        assert_eq!(response.status, 200, "{}", response.text());
        let seen = response.json();
        assert_eq!(seen["path"], json!("/app/open/~doc"));
        assert_eq!(seen["query"], json!("q=%2F..%2F&a=b"));
        // A stray `%` stays the literal `%` it is (`%25`): it used to join the decoded `73`
        // into `%73`, so the deny rule saw `/app/%73ecret` and the upstream read `/app/secret`.
        let response = get(version, gw.addr, "/app/%%373ecret").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["path"], json!("/app/%2573ecret"));
        // The gateway's own endpoints are matched on the canonical path too.
        for path in ["/app/../.pomerium/x", "/%2epomerium/x", "//.pomerium//x"] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(response.text(), "intercepted /.pomerium/x", "{path}");
        }
    }
    let authorized = hooks.authorized.lock().unwrap().clone();
    assert!(
        authorized.iter().all(|p| p == "/app/secret"
            || p == "/app/secret/"
            || p == "/app/open/~doc"
            || p == "/app/%2573ecret"),
        "{authorized:?}"
    );
    assert_eq!(up.seen.requests.load(Ordering::SeqCst), 4);
}

// ---------------------------------------------------------------------------------------------
// Issue 11, lows: Host, forged headers, MCP methods, slow bodies, the connection cap

#[tokio::test]
async fn two_hosts_in_one_request_are_refused() {
    let up = Upstream::start().await;
    let gw = Running::start(&super::public_routes(&up)).await;
    let port = gw.addr.port();
    let response = http1(
        gw.addr,
        &format!("GET /web HTTP/1.1\r\nHost: localhost:{port}\r\nHost: evil.example"),
    )
    .await;
    assert_eq!(response.status, 400);
    assert!(
        response.text().contains("more than one Host header"),
        "{}",
        response.text()
    );
    // The absolute form names one host, the Host header another.
    let response = http1(
        gw.addr,
        &format!("GET http://localhost:{port}/web HTTP/1.1\r\nHost: evil.example"),
    )
    .await;
    assert_eq!(response.status, 400);
    assert!(response.text().contains("Host header names another host"));
    assert_eq!(up.seen.requests.load(Ordering::SeqCst), 0);
    // Agreeing absolute form and Host: fine.
    let response = http1(
        gw.addr,
        &format!("GET http://localhost:{port}/web HTTP/1.1\r\nHost: LOCALHOST:{port}"),
    )
    .await;
    assert_eq!(response.status, 200);
}

#[tokio::test]
async fn headers_that_read_as_the_gateways_with_underscores_are_removed() {
    let up = Upstream::start().await;
    let gw = Running::start(&super::public_routes(&up)).await;
    let seen: Value = client()
        .get(gw.url("/web"))
        .header("X_Pomerium_Jwt_Assertion", "forged-identity")
        .header("x-pomerium_claim_email", "admin@example.com")
        .header("X_Forwarded_For", "10.0.0.1")
        .header("x_request_id", "forged")
        .header("x_app_header", "kept")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let headers = seen["headers"].as_object().unwrap();
    for forged in [
        "x_pomerium_jwt_assertion",
        "x-pomerium_claim_email",
        "x_forwarded_for",
        "x_request_id",
    ] {
        assert!(
            !headers.contains_key(forged),
            "{forged} reached the upstream"
        );
    }
    assert_eq!(
        headers["x_app_header"],
        json!("kept"),
        "other underscores pass"
    );
    assert_eq!(headers["x-forwarded-for"], json!("127.0.0.1"));
}

#[tokio::test]
async fn mcp_routes_take_only_streamable_http_methods_and_no_body_on_get_or_delete() {
    let up = Upstream::start().await;
    let gw = Running::start(&super::public_routes(&up)).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for client in [client(), h2] {
        for method in ["PUT", "PATCH", "TRACE", "PROPFIND"] {
            let response = client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    gw.url("/mcp"),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method}");
            assert_eq!(response.headers()["allow"], "POST, GET, DELETE, OPTIONS");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], json!("method_not_allowed"));
        }
        for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
            let response = client
                .request(method.clone(), gw.url("/mcp"))
                .body("{\"smuggled\": true}")
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 400, "{method} with a body");
            let body: Value = response.json().await.unwrap();
            assert!(
                body["message"].as_str().unwrap().contains("has no body"),
                "{body}"
            );
            let response = client
                .request(method.clone(), gw.url("/mcp"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{method} without a body");
        }
        // Web routes are not restricted.
        let response = client
            .request(reqwest::Method::PUT, gw.url("/web"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // A chunked body on GET, over HTTP/1.1.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(
            format!(
                "GET /mcp HTTP/1.1\r\nHost: localhost:{}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
                gw.addr.port()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.status, 400);
}

fn short_timeouts() -> ConnectionTimeouts {
    ConnectionTimeouts {
        first_request: Duration::from_millis(800),
        idle: Duration::from_millis(800),
        close_grace: Duration::from_millis(300),
        body_read: Duration::from_millis(800),
    }
}

#[tokio::test]
async fn a_stalled_request_body_gets_408() {
    let up = Upstream::start().await;
    let gw = Running::start_with_timeouts(&super::public_routes(&up), short_timeouts()).await;
    for path in ["/web", "/mcp"] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: localhost:{}\r\nContent-Length: 100\r\n\r\n{{\"js",
                    gw.addr.port()
                )
                .as_bytes(),
            )
            .await
            .unwrap();
        let started = Instant::now();
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, 408, "{path}: {}", response.text());
        assert!(
            response.text().contains("request body stalled"),
            "{}",
            response.text()
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_once() {
    let up = Upstream::start().await;
    let yaml = format!("max_connections: 2\n{}", super::public_routes(&up));
    let gw = Running::start(&yaml).await;
    let first = TcpStream::connect(gw.addr).await.unwrap();
    let _second = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(2), third.read(&mut buf))
        .await
        .expect("the third connection is closed, not left waiting");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // HTTP/2 counts the same: a request on a new connection fails while both are open.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    assert!(h2.get(gw.url("/web")).send().await.is_err());
    // A slot frees when a connection ends.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(response) = h2.get(gw.url("/web")).send().await {
            assert_eq!(response.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 18 item 2: HTTP/2 connections time out

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads until the gateway closes the connection; how long that took.
async fn time_to_close(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Err(_) => panic!("the connection is still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn http2_connections_that_never_finish_a_request_are_closed() {
    let up = Upstream::start().await;
    let gw = Running::start_with_timeouts(&super::public_routes(&up), short_timeouts()).await;
    // Only the preface.
    let mut preface_only = TcpStream::connect(gw.addr).await.unwrap();
    preface_only.write_all(H2_PREFACE).await.unwrap();
    preface_only.write_all(H2_SETTINGS).await.unwrap();
    // A header block that never ends: HEADERS without END_HEADERS, no CONTINUATION.
    let mut unfinished = TcpStream::connect(gw.addr).await.unwrap();
    unfinished.write_all(H2_PREFACE).await.unwrap();
    unfinished.write_all(H2_SETTINGS).await.unwrap();
    // HEADERS, 1 byte (`:method: GET`, HPACK static index 2), no flags, stream 1.
    unfinished
        .write_all(&[0, 0, 1, 1, 0, 0, 0, 0, 1, 0x82])
        .await
        .unwrap();
    // Nothing at all.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    for stream in [&mut preface_only, &mut unfinished, &mut silent] {
        let took = time_to_close(stream, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(3), "closed after {took:?}");
    }
}

#[tokio::test]
async fn idle_http2_connections_are_closed_but_busy_ones_are_not() {
    let up = Upstream::start().await;
    let gw = Running::start_with_timeouts(&super::public_routes(&up), short_timeouts()).await;
    // One request (GET /.pomerium/ping, END_STREAM | END_HEADERS), then nothing.
    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(H2_PREFACE).await.unwrap();
    idle.write_all(H2_SETTINGS).await.unwrap();
    let mut block = vec![0x82, 0x86, 0x41, 9]; // GET, http, :authority "localhost"
    block.extend_from_slice(b"localhost");
    block.extend_from_slice(&[0x44, 15]); // :path
    block.extend_from_slice(b"/.pomerium/ping");
    let mut frame = vec![0, 0, block.len() as u8, 1, 0x5, 0, 0, 0, 1];
    frame.extend_from_slice(&block);
    idle.write_all(&frame).await.unwrap();
    let took = time_to_close(&mut idle, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");

    // A stream in progress keeps its connection past the idle timeout.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(gw.url("/forever")).send().await.unwrap();
    let mut stream = futures::StreamExt::boxed(response.bytes_stream());
    assert!(futures::StreamExt::next(&mut stream).await.is_some());
    assert!(
        tokio::time::timeout(
            Duration::from_millis(2500),
            futures::StreamExt::next(&mut stream)
        )
        .await
        .is_err(),
        "the stream is still open, waiting for the next event"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 18 item 1: metric labels from a closed set

#[tokio::test]
async fn made_up_methods_do_not_become_metric_labels() {
    let up = Upstream::start().await;
    let gw = Running::start(&super::public_routes(&up)).await;
    for i in 0..20 {
        let method = format!("M{i:06}{}", "A".repeat(30_000));
        let response = http1(
            gw.addr,
            &format!(
                "{method} /nope HTTP/1.1\r\nHost: localhost:{}",
                gw.addr.port()
            ),
        )
        .await;
        assert_eq!(response.status, 404);
    }
    let text = gw.gateway.metrics().render();
    assert!(!text.contains("AAAA"), "a client's method became a label");
    assert!(
        text.contains("method=\"other\",status=\"404\"} 20"),
        "{text}"
    );
    assert!(text.len() < 10_000, "metrics grew to {} bytes", text.len());
}

// ---------------------------------------------------------------------------------------------
// Upstream response hygiene (issue 11 item 6, issue 18 item 6)

#[tokio::test]
async fn upstreams_cannot_set_the_gateways_cookies_or_turn_off_hsts() {
    let up = Upstream::start().await;
    let yaml = format!(
        "insecure_server: true\ncookie_name: _postern\nroutes:\n  - {{from: http://localhost, to: {}, allow_public_unauthenticated_access: true}}\n",
        up.url("")
    );
    let gw = Running::start(&yaml).await;
    let response = client().get(gw.url("/cookies")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let cookies: Vec<_> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|c| c.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cookies, ["app=1; Path=/"]);
    assert!(
        response
            .headers()
            .get("strict-transport-security")
            .is_none()
    );
}

#[tokio::test]
async fn upstream_framing_is_normalised_and_unasked_upgrades_refused() {
    let both = super::upstream::raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    let switching = super::upstream::raw(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nSSH-2.0-evil\r\n",
    )
    .await;
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, prefix: /both, to: http://{both}, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /switch, to: http://{switching}, allow_public_unauthenticated_access: true}}
"
    );
    let gw = Running::start(&yaml).await;
    for version in [Version::Http1, Version::H2c] {
        let response = get(version, gw.addr, "/both").await;
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.text(), "hello world", "{version:?}");
        assert!(
            !response.head.contains("content-length: 3"),
            "{}",
            response.head
        );

        let response = get(version, gw.addr, "/switch").await;
        assert_eq!(response.status, 502, "{version:?}");
        assert!(
            response.text().contains("switched protocols"),
            "{}",
            response.text()
        );
    }
    // Even when the client asks: a route without allow_websockets refuses the upgrade itself.
    let response = http1(
        gw.addr,
        &format!(
            "GET /switch HTTP/1.1\r\nHost: localhost:{}\r\nConnection: upgrade\r\nUpgrade: websocket",
            gw.addr.port()
        ),
    )
    .await;
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(
        response.text().contains("allow_websockets"),
        "{}",
        response.text()
    );
    // Other upgrade offers (curl's `h2c`) are ignored, as before: the upstream's 101 is not.
    let response = http1(
        gw.addr,
        &format!(
            "GET /switch HTTP/1.1\r\nHost: localhost:{}\r\nConnection: upgrade\r\nUpgrade: h2c",
            gw.addr.port()
        ),
    )
    .await;
    assert_eq!(response.status, 502);
}

// ---------------------------------------------------------------------------------------------
// Issue 18 item 7: the redirect listener

#[tokio::test]
async fn the_https_redirect_is_only_for_hosts_with_a_route() {
    use postern_gateway::server::{Challenges, serve_redirect};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = Running::start(
        "insecure_server: true\nroutes:\n  - {from: http://mcp.example.com, to: http://127.0.0.1:1}\n",
    )
    .await;
    tokio::spawn(serve_redirect(
        listener,
        443,
        Arc::new(Challenges::default()),
        gw.gateway.clone(),
        gw.shutdown.clone(),
    ));
    let response = http1(addr, "GET /x HTTP/1.1\r\nHost: evil.example").await;
    assert_eq!(response.status, 421);
    assert!(!response.head.contains("location"), "{}", response.head);
    assert!(response.text().contains("no route for that host"));
    let response = http1(addr, "GET /x?y=1 HTTP/1.1\r\nHost: MCP.example.com").await;
    assert_eq!(response.status, 308);
    assert!(
        response
            .head
            .contains("location: https://mcp.example.com/x?y=1"),
        "{}",
        response.head
    );
}

/// The redirect listener faces the internet too: a connection that trickles a request head is
/// closed (it held its socket forever before).
#[tokio::test]
async fn the_redirect_listener_closes_connections_that_never_finish_a_request() {
    use postern_gateway::server::{Challenges, serve_redirect};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gw = Running::start(
        "insecure_server: true\nroutes:\n  - {from: http://mcp.example.com, to: http://127.0.0.1:1}\n",
    )
    .await;
    tokio::spawn(serve_redirect(
        listener,
        443,
        Arc::new(Challenges::default()),
        gw.gateway.clone(),
        gw.shutdown.clone(),
    ));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: mcp.example.com\r\n")
        .await
        .unwrap();
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the unfinished request still holds its connection after 20 s"
    );
}
