//! Postern's reference MCP servers, each a stateless Streamable HTTP endpoint on one listener:
//!
//! - [`whoami`] at `/whoami`: the signed-in user's identity, from the gateway's verified assertion;
//! - [`sqlite`] at `/sqlite`: queries over a SQLite file, read-only enforced by SQLite itself;
//! - [`notion`] at `/notion`: `search` and `fetch` over the user's Notion workspace, shaped for
//!   OpenAI deep research, using the upstream token (TI) the gateway passes as `Authorization`.
//!
//! Servers never depend on the gateway: they only read the headers it sends. Configuration comes
//! from environment variables ([`config`]); a server that isn't configured isn't mounted.
#![forbid(unsafe_code)]

pub mod config;
pub mod notion;
pub mod sqlite;
pub mod whoami;

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

pub use config::{ConfigError, Env, ProcessEnv, ServersConfig};

/// Hosts that are always accepted: the servers are reachable on loopback for development.
const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// The servers, ready to serve.
pub struct Servers {
    /// The HTTP routes (`/whoami`, `/sqlite`, `/notion`, `/healthz`).
    pub router: axum::Router,
    /// What was mounted, and why the others were not: `(name, Ok(()) | Err(reason))`.
    pub mounts: Vec<(&'static str, Result<(), String>)>,
}

/// Why the servers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configured server could not be set up (e.g. the SQLite file is missing).
    #[error("{server}: {reason}")]
    Server {
        /// Which server.
        server: &'static str,
        /// What went wrong and what to do.
        reason: String,
    },
}

/// Builds the router for `config`. `shutdown` ends open streams when cancelled.
pub fn build(config: &ServersConfig, shutdown: &CancellationToken) -> Result<Servers, StartError> {
    let mcp = mcp_transport_config(config, shutdown);
    let mut router = axum::Router::new();
    let mut mounts = Vec::new();

    match &config.whoami {
        Some(verifier) => {
            let server = whoami::Whoami::new(Arc::new(postern_assertion::Verifier::new(
                verifier.clone(),
            )));
            router = router.nest_service("/whoami", service(server, &mcp));
            mounts.push(("whoami", Ok(())));
        }
        None => mounts.push((
            "whoami",
            Err("ASSERTION_JWKS_URL is not set (set it and ASSERTION_ISSUER to the gateway's JWKS URL and route host)".into()),
        )),
    }

    match &config.sqlite {
        Some(sqlite) => {
            let server = sqlite::Sqlite::open(sqlite).map_err(|reason| StartError::Server {
                server: "sqlite",
                reason,
            })?;
            router = router.nest_service("/sqlite", service(server, &mcp));
            mounts.push(("sqlite", Ok(())));
        }
        None => mounts.push((
            "sqlite",
            Err("SQLITE_DB_FILE is not set (set it to an existing SQLite database file)".into()),
        )),
    }

    let server = notion::Notion::new(&config.notion);
    router = router.nest_service("/notion", service(server, &mcp));
    mounts.push(("notion", Ok(())));

    let mounted: Vec<&str> = mounts
        .iter()
        .filter(|(_, m)| m.is_ok())
        .map(|(n, _)| *n)
        .collect();
    let listing = json!({ "servers": mounted.iter().map(|n| format!("/{n}")).collect::<Vec<_>>() });
    router = router
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .fallback(move || {
            let listing = listing.clone();
            async move {
                let mut body =
                    json!({"error": "not_found", "message": "no MCP server at this path"});
                body["servers"] = listing["servers"].clone();
                (StatusCode::NOT_FOUND, Json(body))
            }
        });
    Ok(Servers { router, mounts })
}

fn service<S>(
    server: S,
    config: &StreamableHttpServerConfig,
) -> StreamableHttpService<S, LocalSessionManager>
where
    S: rmcp::ServerHandler + Clone + Send + Sync + 'static,
{
    StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        config.clone(),
    )
}

/// Stateless Streamable HTTP with JSON responses, and DNS-rebinding protection: `Host` must be
/// loopback or listed in `ALLOWED_HOSTS`; a browser `Origin` must be loopback, one of those hosts,
/// or listed in `ALLOWED_ORIGINS` (`*` turns the Origin check off, e.g. behind a gateway that
/// serves browser clients from other origins).
fn mcp_transport_config(
    config: &ServersConfig,
    shutdown: &CancellationToken,
) -> StreamableHttpServerConfig {
    let hosts: Vec<String> = LOOPBACK_HOSTS
        .iter()
        .map(|h| h.to_string())
        .chain(config.allowed_hosts.iter().cloned())
        .collect();
    let base = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(hosts)
        .with_cancellation_token(shutdown.child_token());
    if config.allowed_origins.iter().any(|o| o == "*") {
        return base.disable_allowed_origins();
    }
    let mut origins = Vec::new();
    for host in LOOPBACK_HOSTS
        .iter()
        .map(|h| h.to_string())
        .chain(config.allowed_hosts.iter().cloned())
    {
        let host = if host.contains(':') && !host.contains(']') && host.matches(':').count() > 1 {
            format!("[{host}]")
        } else {
            host
        };
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host
        } else {
            format!("{host}:*")
        };
        origins.push(format!("http://{with_port}"));
        origins.push(format!("https://{with_port}"));
    }
    origins.extend(config.allowed_origins.iter().cloned());
    base.with_allowed_origins(origins)
        .enforce_origin_validation()
}

/// The listener on `BIND:PORT` (loopback by default).
pub async fn listen(config: &ServersConfig) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind((config.bind, config.port)).await
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
        .await
}
