//! Attacks from the security reviews (issues 11 and 18), each performed against a running
//! gateway: path tricks, forged headers, odd methods and bodies, slow and idle connections,
//! metric-label growth, hostile upstream responses, the redirect listener.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use postern_gateway::body::{Body, full};
use postern_gateway::hooks::{Grant, Hooks, RequestContext};
use postern_gateway::routes::Route;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::gateway::Running;
use super::upstream::Upstream;

// ---------------------------------------------------------------------------------------------
// Raw clients: reqwest (the `url` crate) resolves `..` and `%2e` itself, so the attacks are sent
// as written, over a socket (HTTP/1.1) or hyper's own client (HTTP/2, which keeps the path).

/// A response as received: status, head (lower-cased), body (de-chunked).
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
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
enum Version {
    Http1,
    H2c,
}

async fn get(version: Version, addr: SocketAddr, path: &str) -> Raw {
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
        // The gateway's own endpoints are matched on the canonical path too.
        for path in ["/app/../.pomerium/x", "/%2epomerium/x", "//.pomerium//x"] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(response.text(), "intercepted /.pomerium/x", "{path}");
        }
    }
    let authorized = hooks.authorized.lock().unwrap().clone();
    assert!(
        authorized
            .iter()
            .all(|p| p == "/app/secret" || p == "/app/secret/" || p == "/app/open/~doc"),
        "{authorized:?}"
    );
    assert_eq!(up.seen.requests.load(Ordering::SeqCst), 2);
}
