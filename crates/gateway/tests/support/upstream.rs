//! A test upstream that reads like a sentence: `Upstream::start().await` serves
//! - `/echo/...`: the request it received (method, path, query, headers, body) as JSON;
//! - `/sse`: three SSE events, 300 ms apart;
//! - `/sse-forever`: an event now, then one every 10 s, noting when the client went away;
//! - `/slow`: answers after 3 s;
//! - `/mcp`: a stand-in MCP endpoint answering JSON-RPC with JSON;
//! - `/cookies`: a response setting cookies (the gateway's names among them) and HSTS;
//! - any other path: like `/echo`.
//!
//! `raw(bytes)` is an upstream that answers every request with exactly these bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::{Value, json};

#[derive(Default)]
pub struct Seen {
    pub requests: AtomicUsize,
    pub disconnects: AtomicUsize,
    pub last_headers: Mutex<Option<HeaderMap>>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Seen>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    pub async fn start_on(listener: tokio::net::TcpListener) -> Self {
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new()
            .route("/echo", any(echo))
            .route("/echo/{*rest}", any(echo))
            .route("/sse", get(sse))
            .route("/sse-forever", get(sse_forever))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    "slow"
                }),
            )
            .route("/mcp", any(mcp))
            .route("/cookies", get(cookies))
            .fallback(echo)
            .with_state(seen.clone());
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn echo(State(seen): State<Arc<Seen>>, request: Request) -> impl IntoResponse {
    seen.requests.fetch_add(1, Ordering::SeqCst);
    *seen.last_headers.lock().unwrap() = Some(request.headers().clone());
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
        .collect();
    axum::Json(json!({
        "method": parts.method.as_str(), "path": parts.uri.path(), "query": parts.uri.query(),
        "headers": headers, "body_len": body.len(),
    }))
}

type Events = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

fn event_stream() -> (Events, Response) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let response = Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from_stream(stream))
        .unwrap();
    (tx, response)
}

async fn sse() -> Response {
    let (tx, response) = event_stream();
    tokio::spawn(async move {
        for i in 0..3 {
            if tx
                .send(Ok(Bytes::from(format!("id: {i}\ndata: event {i}\n\n"))))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    response
}

async fn sse_forever(State(seen): State<Arc<Seen>>) -> Response {
    let (tx, response) = event_stream();
    tokio::spawn(async move {
        loop {
            if tx
                .send(Ok(Bytes::from_static(b"data: tick\n\n")))
                .await
                .is_err()
            {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = tx.closed() => break,
            }
        }
        seen.disconnects.fetch_add(1, Ordering::SeqCst);
    });
    response
}

async fn mcp(body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    if request.is_null() {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    }
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "ok"}]}})).into_response()
}

async fn cookies() -> Response {
    Response::builder()
        .header("set-cookie", "_postern=forged; Path=/; HttpOnly")
        .header("set-cookie", "_postern_csrf=forged; Path=/")
        .header("set-cookie", "app=1; Path=/")
        .header("strict-transport-security", "max-age=0")
        .body(Body::from("cookies"))
        .unwrap()
}

/// An upstream that answers each request (read up to its blank line; no body) with `response`,
/// as is.
pub async fn raw(response: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
