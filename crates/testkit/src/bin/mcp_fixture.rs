//! `mcp-fixture [PORT] [--stateless]`: serves the conformance fixture server at
//! `http://127.0.0.1:PORT/mcp` (default port 3210) until killed. `--stateless` serves it without
//! sessions and with JSON responses (what the benchmark measures), and adds `/events`, an SSE
//! stream with a tick every 5 s (for the open-streams measurement).

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(3210);
    let stateless = args.iter().any(|a| a == "--stateless");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind the fixture port");
    eprintln!(
        "mcp-fixture listening on http://{}/mcp (stateless: {stateless})",
        listener.local_addr().unwrap()
    );
    let router = if stateless {
        postern_testkit::fixture::stateless_router(&shutdown)
    } else {
        postern_testkit::fixture::router(&shutdown)
    };
    axum::serve(listener, router).await.unwrap();
}
