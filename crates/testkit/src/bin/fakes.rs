//! Stand-ins for services that can't run here, for the acceptance script:
//!
//! - `fakes notion PORT LOG_FILE`: the fake Notion API (crates/notion-fake) accepting the token
//!   `ti-acceptance`, with one page ("Roadmap"); every request's `Authorization` is appended to
//!   LOG_FILE;
//! - `fakes provider PORT`: an OAuth provider that approves at once (like a user clicking
//!   "Allow"), checks PKCE and HTTP Basic client authentication (`notion-client` /
//!   `notion-secret`), and issues `ti-acceptance`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::json;

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args.get(1).and_then(|p| p.parse().ok()).expect("PORT");
    match args.first().map(String::as_str) {
        Some("notion") => notion(port, args.get(2).expect("LOG_FILE").clone()).await,
        Some("provider") => provider(port).await,
        _ => eprintln!("usage: fakes notion PORT LOG_FILE | fakes provider PORT"),
    }
}

async fn notion(port: u16, log: String) {
    let notion = postern_notion_fake::FakeNotion::new()
        .token("ti-acceptance")
        .page(
            postern_notion_fake::Page::new("Roadmap")
                .block(postern_notion_fake::Block::paragraph("Ship the gateway")),
        )
        .start()
        .await;
    // Forward from the fixed port to the fake, logging what arrives.
    let target = notion.url();
    let http = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (target, http, log) = (target.clone(), http.clone(), log.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let auth = parts
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
            {
                let _ = writeln!(f, "{} {} {auth}", parts.method, parts.uri.path());
            }
            let mut forward = http.request(
                parts.method.clone(),
                format!(
                    "{target}{}",
                    parts.uri.path_and_query().map_or("", |p| p.as_str())
                ),
            );
            for (name, value) in &parts.headers {
                if name != "host" {
                    forward = forward.header(name, value);
                }
            }
            match forward.body(body).send().await {
                Ok(r) => {
                    let status = StatusCode::from_u16(r.status().as_u16())
                        .unwrap_or(StatusCode::BAD_GATEWAY);
                    (status, r.bytes().await.unwrap_or_default()).into_response()
                }
                Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
    });
    serve(port, app).await;
}

async fn provider(port: u16) {
    let challenges: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let c = challenges.clone();
    let app = axum::Router::new()
        .route(
            "/authorize",
            axum::routing::get(move |Query(q): Query<HashMap<String, String>>| {
                let code = format!("code-{}", c.lock().unwrap().len());
                c.lock().unwrap().insert(code.clone(), q.get("code_challenge").cloned().unwrap_or_default());
                let state: String = url::form_urlencoded::byte_serialize(q.get("state").map(String::as_bytes).unwrap_or_default()).collect();
                let location = format!("{}?code={code}&state={state}", q.get("redirect_uri").cloned().unwrap_or_default());
                async move { (StatusCode::SEE_OTHER, [("location", location)]) }
            }),
        )
        .route(
            "/token",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let challenges = challenges.clone();
                async move {
                    use base64::Engine as _;
                    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
                    let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("notion-client:notion-secret"));
                    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
                        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"})));
                    }
                    let challenge = challenges.lock().unwrap().get(form.get("code").map(String::as_str).unwrap_or("")).cloned();
                    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                    let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
                    match form.get("grant_type").map(String::as_str) {
                        Some("authorization_code") if challenge.as_deref() == Some(computed.as_str()) => (
                            StatusCode::OK,
                            axum::Json(json!({"access_token": "ti-acceptance", "refresh_token": "rt-acceptance", "expires_in": 3600, "token_type": "bearer"})),
                        ),
                        Some("refresh_token") => (
                            StatusCode::OK,
                            axum::Json(json!({"access_token": "ti-acceptance", "expires_in": 3600, "token_type": "bearer"})),
                        ),
                        _ => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": "invalid_grant"}))),
                    }
                }
            }),
        );
    serve(port, app).await;
}

async fn serve(port: u16, app: axum::Router) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    eprintln!("listening on {}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}
