//! `postern`: one binary for Postern's parts.
//!
//! - `postern servers`: the reference MCP servers (`whoami`, `sqlite`, `notion`) on one listener,
//!   configured from the environment (see the README).
#![forbid(unsafe_code)]

use std::net::{Ipv6Addr, SocketAddr};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// Postern: an identity-aware gateway for MCP servers, and reference MCP servers to put behind it.
#[derive(Parser)]
#[command(name = "postern", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the reference MCP servers (whoami, sqlite, notion), configured from environment
    /// variables: PORT, SQLITE_DB_FILE, SQLITE_READ_WRITE, NOTION_API_BASE_URL, NOTION_VERSION,
    /// ASSERTION_JWKS_URL, ASSERTION_ISSUER, ASSERTION_AUDIENCE, ALLOWED_HOSTS, ALLOWED_ORIGINS.
    Servers,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Servers => runtime.block_on(servers()),
    }
}

async fn servers() -> anyhow::Result<()> {
    let config = postern_servers::ServersConfig::from_env(&postern_servers::ProcessEnv)
        .context("invalid configuration")?;
    let shutdown = CancellationToken::new();
    let servers = postern_servers::build(&config, &shutdown)?;
    for (name, mount) in &servers.mounts {
        match mount {
            Ok(()) => tracing::info!(server = name, path = %format!("/{name}"), "mounted"),
            Err(why) => tracing::warn!(server = name, "not mounted: {why}"),
        }
    }
    // Dual-stack where the system allows it, else IPv4.
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, config.port));
    let listener = match tokio::net::TcpListener::bind(v6).await {
        Ok(listener) => listener,
        Err(_) => tokio::net::TcpListener::bind(("0.0.0.0", config.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on port {} (set PORT to a free port)",
                    config.port
                )
            })?,
    };
    tracing::info!(address = %listener.local_addr()?, "postern servers listening");
    tokio::spawn(stop_on_signal(shutdown.clone()));
    postern_servers::serve(listener, servers.router, shutdown).await?;
    tracing::info!("postern servers stopped");
    Ok(())
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    shutdown.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Logs to stderr; `RUST_LOG` sets the filter (default `info`), `LOG_FORMAT=json` gives one JSON
/// object per line.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}
