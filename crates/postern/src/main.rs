//! `postern`: one binary for Postern's parts.
//!
//! - `postern up`: the gateway and the reference servers on localhost, ready to use;
//! - `postern serve --config FILE`: the gateway;
//! - `postern check-config FILE`: validate a gateway configuration;
//! - `postern healthcheck URL`: a container healthcheck;
//! - `postern revoke-user EMAIL`: end a user's browser sessions and client grants;
//! - `postern servers`: the reference MCP servers (`whoami`, `sqlite`, `notion`) on one listener,
//!   configured from the environment (see the README).
// One audited `unsafe` call: `return_large_allocations` (allocator tuning).
#![deny(unsafe_code)]

mod serve;
mod up;

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
    /// Start everything on localhost: the gateway on http://localhost:PORT with the reference
    /// servers behind it (/whoami, /sqlite over a demo database, /notion when NOTION_CLIENT_ID and
    /// NOTION_CLIENT_SECRET are set), a generated user, and state kept in the data directory.
    Up {
        /// Where users, keys, tokens and the demo database are kept.
        #[arg(long, default_value = "postern-data")]
        data_dir: std::path::PathBuf,
        /// The gateway's port (0: any free port; the banner shows the one it got).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The IP address to listen on: 127.0.0.1 (and ::1) by default, this machine only;
        /// 0.0.0.0 (with --host) to serve other machines.
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        /// The name clients use to reach this machine (a LAN or public name, e.g.
        /// mybox.local); by default localhost, 127.0.0.1 and [::1] all work.
        #[arg(long)]
        host: Option<String>,
    },
    /// Serve the reference MCP servers (whoami, sqlite, notion), configured from environment
    /// variables: PORT, BIND (default 127.0.0.1), SQLITE_DB_FILE, SQLITE_READ_WRITE, NOTION_API_BASE_URL, NOTION_VERSION,
    /// ASSERTION_JWKS_URL, ASSERTION_ISSUER, ASSERTION_AUDIENCE, ALLOWED_HOSTS, ALLOWED_ORIGINS.
    Servers,
    /// Run the gateway.
    Serve {
        /// The configuration file (YAML).
        #[arg(long, short = 'c', default_value = "postern.yaml")]
        config: std::path::PathBuf,
    },
    /// Read a password from standard input and print its argon2id hash for `users_file`.
    HashPassword,
    /// Exit 0 when URL answers 2xx within 5 s, non-zero otherwise (a container healthcheck:
    /// the image has no curl).
    Healthcheck {
        /// What to check: the gateway's metrics_address (/healthz) or `postern servers`
        /// (/healthz).
        #[arg(default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Check a gateway configuration file and exit (non-zero when it is invalid).
    CheckConfig {
        /// The configuration file (YAML).
        file: std::path::PathBuf,
    },
    /// End everything of a user in the gateway's store: every browser session and every client
    /// grant (their refresh tokens stop at once, their access tokens within 2 s on every
    /// running gateway). The user can still sign in again unless removed from `users_file` or
    /// the identity provider.
    RevokeUser {
        /// The user's email (or their user id, the identity provider's `sub`).
        user: String,
        /// The gateway's configuration file (YAML), for its store.
        #[arg(long, short = 'c', default_value = "postern.yaml")]
        config: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    return_large_allocations();
    let cli = Cli::parse();
    if let Command::CheckConfig { file } = &cli.command {
        return serve::check_config(file);
    }
    if let Command::HashPassword = &cli.command {
        let mut password = String::new();
        std::io::stdin()
            .read_line(&mut password)
            .context("reading the password from standard input")?;
        let password = password.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(
            !password.is_empty(),
            "no password on standard input (try: echo -n 'secret' | postern hash-password)"
        );
        println!("{}", postern_access::users::hash_password(password)?);
        return Ok(());
    }
    if let Command::Healthcheck { url } = &cli.command {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        return runtime.block_on(serve::healthcheck(url));
    }
    // The gateway's configuration names its own log level (RUST_LOG still wins).
    let serve_config = match &cli.command {
        Command::Serve { config } | Command::RevokeUser { config, .. } => {
            Some(postern_config::load(config, &postern_config::ProcessEnv)?)
        }
        _ => None,
    };
    init_logging(
        serve_config
            .as_ref()
            .map_or(postern_config::defaults::LOG_LEVEL, |c| c.log_level()),
    );
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Servers => runtime.block_on(servers()),
        Command::Up {
            data_dir,
            port,
            address,
            host,
        } => runtime.block_on(up::up(up::Options {
            data_dir,
            port,
            address,
            host,
        })),
        Command::Serve { config: path } => {
            let config = serve_config.expect("loaded above");
            runtime.block_on(serve::serve(path, config))
        }
        Command::RevokeUser { user, config: path } => {
            let config = serve_config.expect("loaded above");
            let (sessions, grants) = runtime.block_on(serve::revoke_user(&path, &config, &user))?;
            println!(
                "{user}: ended {sessions} browser session(s) and revoked {grants} client grant(s)"
            );
            Ok(())
        }
        Command::CheckConfig { .. } | Command::HashPassword | Command::Healthcheck { .. } => {
            unreachable!("handled before the runtime starts")
        }
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
    let listener = postern_servers::listen(&config).await.with_context(|| {
        format!(
            "cannot listen on {}:{} (set PORT to a free port, BIND to an address of this host)",
            config.bind, config.port
        )
    })?;
    tracing::info!(address = %listener.local_addr()?, "postern servers listening");
    tokio::spawn(stop_on_signal(shutdown.clone()));
    postern_servers::serve(listener, servers.router, shutdown).await?;
    tracing::info!("postern servers stopped");
    Ok(())
}

/// glibc's malloc raises its mmap threshold each time it frees a large mmapped block, after which
/// blocks of that size come from per-thread heaps that it keeps: every password check (argon2id,
/// 19 MiB of working memory) left 19 MiB resident per worker thread, 14 MiB idle growing to
/// 74 MiB after three sign-ins. A fixed threshold keeps large blocks in mmap, returned to the
/// system when freed (15.7 MiB after four sign-ins). `bench/run.sh` prints the RSS after sign-ins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn return_large_allocations() {
    // SAFETY: `mallopt` only tunes the allocator; it is called first thing in `main`, before
    // any other thread exists or allocates concurrently.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_allocations() {}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
pub(crate) async fn stop_on_signal(shutdown: CancellationToken) {
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

/// Logs to stderr; `RUST_LOG` sets the filter (default `default_level`), `LOG_FORMAT=json` gives one JSON
/// object per line.
/// Colours only on a terminal (a file, journald or `docker logs` would get escape codes) and
/// never with `NO_COLOR` set.
fn init_logging(default_level: &str) {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(default_filter(default_level)));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The log filter for `level` when `RUST_LOG` is not set. rmcp logs each MCP session's start
/// at INFO with the client's whole `peer_info` (138 lines per 163 requests of `postern up`):
/// below `debug` only its warnings show.
fn default_filter(level: &str) -> String {
    let verbose = ["debug", "trace"]
        .iter()
        .any(|l| level.eq_ignore_ascii_case(l));
    if verbose {
        level.to_owned()
    } else {
        format!("{level},rmcp=warn")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rmcp_session_dumps_show_only_when_debugging() {
        assert_eq!(super::default_filter("info"), "info,rmcp=warn");
        assert_eq!(super::default_filter("warn"), "warn,rmcp=warn");
        assert_eq!(super::default_filter("debug"), "debug");
        for level in ["info", "error", "debug", "trace"] {
            let filter = super::default_filter(level);
            assert!(
                tracing_subscriber::EnvFilter::try_new(&filter).is_ok(),
                "{filter}"
            );
        }
    }
}
