//! WebSockets through the gateway (`allow_websockets`), and `timeout_write`: a real WebSocket
//! client and echo server (tokio-tungstenite) on either side of a running gateway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use postern_gateway::body::{Body, full};
use postern_gateway::hooks::{Grant, Hooks, RequestContext};
use postern_gateway::routes::Route;
use tokio_tungstenite::tungstenite::{self, Message};

use super::gateway::Running;
use super::upstream::Upstream;

/// A WebSocket echo server that notes each handshake's headers.
struct EchoServer {
    addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<HeaderMap>>>,
    connections: Arc<AtomicUsize>,
}

impl EchoServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (seen, count) = (handshakes.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    // tungstenite's callback type: its `Err` is a whole response.
                    #[allow(clippy::result_large_err)]
                    let note = |request: &tungstenite::handshake::server::Request, response| {
                        seen.lock().unwrap().push(request.headers().clone());
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, note).await else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        if (message.is_text() || message.is_binary())
                            && ws.send(message).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            handshakes,
            connections,
        }
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens a WebSocket to `path` on the gateway, with `headers`; `Err`: the HTTP answer instead.
async fn connect(
    gw: &Running,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, (StatusCode, String)> {
    use tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://localhost:{}{path}", gw.addr.port())
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    let stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, response)) => {
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            Ok(socket)
        }
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((response.status(), body))
        }
        Err(other) => panic!("{path}: {other}"),
    }
}

async fn echo(socket: &mut Socket, text: &str) -> String {
    socket.send(Message::text(text)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("an echo")
        .expect("open")
        .expect("a message");
    reply.into_text().unwrap().to_string()
}

/// Hooks standing in for sign-in: a request with `x-test-user` is that user's (anything else
/// is 401), and the upstream gets an identity header for them.
struct TestSignIn;

#[async_trait]
impl Hooks for TestSignIn {
    fn intercepts(&self, _: &RequestContext, _: Option<&Arc<Route>>, _: &Request<Body>) -> bool {
        false
    }

    async fn authorize(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        request: Request<Body>,
    ) -> Result<(Request<Body>, Grant), Response<Body>> {
        if route.config.allow_public_unauthenticated_access {
            return Ok((request, Grant::default()));
        }
        let Some(user) = request.headers().get("x-test-user") else {
            return Err(postern_gateway::errors::GatewayError::Unauthenticated
                .into_response(&ctx.request_id, false));
        };
        if user == "mallory" {
            let mut denied = Response::new(full("denied by policy"));
            *denied.status_mut() = StatusCode::FORBIDDEN;
            return Err(denied);
        }
        let grant = Grant {
            principal: Some(user.to_str().unwrap().to_owned()),
            ..Grant::default()
        };
        Ok((request, grant))
    }

    async fn upstream_headers(
        &self,
        _: &RequestContext,
        _: &Arc<Route>,
        grant: &Grant,
    ) -> Result<HeaderMap, Response<Body>> {
        let mut headers = HeaderMap::new();
        if let Some(user) = &grant.principal {
            headers.insert(
                "x-pomerium-jwt-assertion",
                HeaderValue::from_str(&format!("assertion-for-{user}")).unwrap(),
            );
        }
        Ok(headers)
    }
}

fn websocket_routes(ws: &EchoServer, extra: &str) -> String {
    format!(
        "insecure_server: true
{extra}routes:
  - {{from: http://localhost, prefix: /ws, to: http://{ws}, allow_websockets: true, allow_public_unauthenticated_access: true, timeout: 300ms}}
  - {{from: http://localhost, prefix: /private-ws, to: http://{ws}, allow_websockets: true}}
  - {{from: http://localhost, prefix: /plain, to: http://{ws}, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /mcp, to: http://{ws}, allow_public_unauthenticated_access: true, allow_websockets: true, mcp: {{}}}}
",
        ws = ws.addr
    )
}

#[tokio::test]
async fn websockets_echo_on_routes_that_allow_them_and_outlive_the_request_timeout() {
    let ws = EchoServer::start().await;
    let gw = Running::start_with_hooks(&websocket_routes(&ws, ""), Arc::new(TestSignIn)).await;
    let mut socket = connect(&gw, "/ws/chat", &[]).await.expect("upgraded");
    assert_eq!(echo(&mut socket, "hello").await, "hello");
    // The route's `timeout` (300 ms) bounds the upstream's 101, not the tunnel.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(echo(&mut socket, "still there").await, "still there");
    // Large frames pass whole, both ways.
    let big = "x".repeat(200_000);
    assert_eq!(echo(&mut socket, &big).await, big);
    socket.close(None).await.unwrap();

    // Signed in: the upgrade gets the identity like any request.
    let mut socket = connect(&gw, "/private-ws", &[("x-test-user", "ada")])
        .await
        .expect("upgraded");
    assert_eq!(echo(&mut socket, "hi ada").await, "hi ada");
    let handshakes = ws.handshakes.lock().unwrap().clone();
    let last = handshakes.last().unwrap();
    assert_eq!(last["x-pomerium-jwt-assertion"], "assertion-for-ada");
    assert_eq!(last["upgrade"], "websocket");
    assert!(last.contains_key("sec-websocket-key"));
    assert!(last.contains_key("x-forwarded-for"));
}

#[tokio::test]
async fn websocket_upgrades_are_refused_without_allow_websockets_a_session_or_the_policy() {
    let ws = EchoServer::start().await;
    let gw = Running::start_with_hooks(&websocket_routes(&ws, ""), Arc::new(TestSignIn)).await;
    // A route without allow_websockets: 400, saying which key allows it.
    let (status, body) = connect(&gw, "/plain", &[]).await.unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body.contains("does not accept WebSocket upgrades") && body.contains("allow_websockets"),
        "{body}"
    );
    // MCP server routes never upgrade, whatever the file says.
    let (status, body) = connect(&gw, "/mcp", &[]).await.unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // No session on a protected route: 401, and the upstream never sees the handshake.
    let (status, _) = connect(&gw, "/private-ws", &[]).await.unwrap_err();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Signed in, but the policy says no.
    let (status, _) = connect(&gw, "/private-ws", &[("x-test-user", "mallory")])
        .await
        .unwrap_err();
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        ws.connections.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn an_upstream_that_switches_to_another_protocol_than_asked_is_refused() {
    let switching = super::upstream::raw(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\nSSH-2.0-evil\r\n",
    )
    .await;
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, to: http://{switching}, allow_websockets: true, allow_public_unauthenticated_access: true}}
"
    );
    let gw = Running::start(&yaml).await;
    let (status, body) = connect(&gw, "/", &[]).await.unwrap_err();
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(body.contains("another protocol"), "{body}");
}

#[tokio::test]
async fn timeout_write_limits_whole_requests_streams_and_tunnels() {
    let ws = EchoServer::start().await;
    let up = Upstream::start().await;
    let yaml = format!(
        "insecure_server: true
timeout_write: 1s
routes:
  - {{from: http://localhost, prefix: /ws, to: http://{ws}, allow_websockets: true, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /slow, to: {slow}, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /events, to: {forever}, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /echo, to: {echo}, allow_public_unauthenticated_access: true}}
",
        ws = ws.addr,
        slow = up.url("/slow"),
        forever = up.url("/sse-forever"),
        echo = up.url("/echo"),
    );
    let gw = Running::start(&yaml).await;
    let client = super::client();

    // Within the limit: as usual.
    let response = client.get(gw.url("/echo/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // The upstream takes 3 s to answer: 504 at 1 s, saying which setting.
    let started = Instant::now();
    let response = client.get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));
    let body = response.text().await.unwrap();
    assert!(body.contains("timeout_write"), "{body}");

    // A stream that would go on forever is cut at 1 s.
    let started = Instant::now();
    let response = client.get(gw.url("/events")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: tick"));
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends at timeout_write, not at the next tick (10 s)");
    assert!(matches!(end, None | Some(Err(_))), "{end:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );

    // A WebSocket is closed at 1 s too.
    let started = Instant::now();
    let mut socket = connect(&gw, "/ws", &[]).await.expect("upgraded");
    assert_eq!(echo(&mut socket, "hello").await, "hello");
    let end = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("the tunnel is closed at timeout_write");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn spdy_upgrades_pass_on_routes_with_allow_spdy_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let spdy = super::upstream::raw(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\nspdy-frames",
    )
    .await;
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, prefix: /exec, to: http://{spdy}, allow_spdy: true, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /ws-only, to: http://{spdy}, allow_websockets: true, allow_public_unauthenticated_access: true}}
"
    );
    let gw = Running::start(&yaml).await;
    let exchange = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n",
            gw.addr.port()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while !received.windows(11).any(|w| w == b"spdy-frames") && !received.ends_with(b"}") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        String::from_utf8_lossy(&received).to_ascii_lowercase()
    };
    let received = exchange("/exec").await;
    assert!(received.starts_with("http/1.1 101"), "{received}");
    assert!(received.contains("upgrade: spdy/3.1"), "{received}");
    assert!(
        received.ends_with("spdy-frames"),
        "the tunnel carries the upstream's bytes: {received}"
    );
    let received = exchange("/ws-only").await;
    assert!(received.starts_with("http/1.1 400"), "{received}");
    assert!(received.contains("allow_spdy"), "{received}");
}

#[tokio::test]
async fn an_open_websocket_keeps_its_place_under_max_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ws = EchoServer::start().await;
    let up = Upstream::start().await;
    let yaml = format!(
        "insecure_server: true
max_connections: 1
routes:
  - {{from: http://localhost, prefix: /ws, to: http://{ws}, allow_websockets: true, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /echo, to: {echo}, allow_public_unauthenticated_access: true}}
",
        ws = ws.addr,
        echo = up.url("/echo"),
    );
    let gw = Running::start(&yaml).await;
    let refused = || async {
        let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "GET /echo HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            gw.addr.port()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut answer)).await;
        answer.is_empty()
    };
    let mut socket = connect(&gw, "/ws", &[]).await.expect("upgraded");
    assert_eq!(echo(&mut socket, "hello").await, "hello");
    // Upgraded, the client's connection left hyper, but it is still open: it still counts.
    assert!(
        refused().await,
        "over max_connections while the WebSocket is open"
    );
    assert_eq!(echo(&mut socket, "still here").await, "still here");
    socket.close(None).await.unwrap();
    drop(socket);
    let started = Instant::now();
    while refused().await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the place is given back when the WebSocket closes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
