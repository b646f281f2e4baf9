//! `mcp-fixture [PORT]`: serves the conformance fixture server at `http://127.0.0.1:PORT/mcp`
//! (default port 3210) until killed.

#[tokio::main]
async fn main() {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(3210);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the fixture port");
    eprintln!(
        "mcp-fixture listening on http://{}/mcp",
        listener.local_addr().unwrap()
    );
    axum::serve(listener, postern_testkit::fixture::router(&shutdown))
        .await
        .unwrap();
}
