//! WebSockets (`allow_websockets`) behind real sign-in and policy: the upgrade request is
//! authorized like any request, and the upstream's handshake carries the signed identity.

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::{gateway, settings, sign_in, user};

/// A WebSocket echo server that notes each handshake's headers.
async fn echo_server() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handshakes = Arc::new(Mutex::new(Vec::new()));
    let seen = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
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
                    if message.is_text() && ws.send(message).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, handshakes)
}

/// A WebSocket handshake at `base` + `path` with `cookie`: the socket, or the HTTP status.
async fn open(
    base: &str,
    path: &str,
    cookie: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, StatusCode> {
    let mut request = format!("{}{path}", base.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    if let Some(cookie) = cookie {
        request
            .headers_mut()
            .insert("cookie", HeaderValue::from_str(cookie).unwrap());
    }
    let port = base.rsplit(':').next().unwrap();
    let stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(response.status()),
        Err(other) => panic!("{other}"),
    }
}

#[tokio::test]
async fn a_websocket_needs_a_session_and_the_policy_and_carries_the_identity() {
    let (upstream, handshakes) = echo_server().await;
    let yaml = format!(
        "insecure_server: true
routes:
  - from: http://localhost
    prefix: /ws
    to: {upstream}
    allow_websockets: true
    pass_identity_headers: true
    allowed_users: [ada@example.com]
  - from: http://localhost
    prefix: /admins-ws
    to: {upstream}
    allow_websockets: true
    allowed_users: [grace@example.com]
  - from: http://localhost
    prefix: /plain
    to: {upstream}
    allowed_users: [ada@example.com]
"
    );
    let ada = user("ada@example.com", "Ada", &["staff"], "pw");
    let (base, _stop) = gateway(&yaml, vec![ada], settings()).await;
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let browser = reqwest::Client::builder()
        .cookie_provider(jar.clone())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    sign_in(&browser, &base, "ada@example.com", "pw").await;
    use reqwest::cookie::CookieStore;
    let cookie = jar
        .cookies(&base.parse().unwrap())
        .expect("signed in")
        .to_str()
        .unwrap()
        .to_owned();

    // Without a session: refused before the upstream hears of it.
    let status = open(&base, "/ws", None).await.unwrap_err();
    assert!(
        matches!(status.as_u16(), 401 | 302 | 303),
        "not upgraded without a session: {status}"
    );
    // A session the policy refuses.
    let status = open(&base, "/admins-ws", Some(&cookie)).await.unwrap_err();
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A route without allow_websockets.
    let status = open(&base, "/plain", Some(&cookie)).await.unwrap_err();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        handshakes.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );

    // Ada's session: upgraded, echoing, with her signed identity and without the session cookie.
    let mut socket = open(&base, "/ws/chat", Some(&cookie))
        .await
        .expect("upgraded");
    socket.send(Message::text("hello")).await.unwrap();
    let reply = socket.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), "hello");
    let handshake = handshakes.lock().unwrap()[0].clone();
    let assertion = handshake["x-pomerium-jwt-assertion"].to_str().unwrap();
    let claims: serde_json::Value = {
        use base64::Engine;
        let payload = assertion.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    };
    assert_eq!(claims["email"], "ada@example.com");
    assert!(
        !handshake
            .get("cookie")
            .is_some_and(|c| c.to_str().unwrap().contains("_postern=")),
        "the session cookie stays at the gateway"
    );
}
