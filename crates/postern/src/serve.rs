//! `postern serve` and `postern check-config`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use postern_config::{Config, ProcessEnv};
use postern_gateway::acme::{Autocert, AutocertConfig};
use postern_gateway::hooks::PublicOnly;
use postern_gateway::tls::{CertMap, CertResolver, load_pair};
use postern_gateway::{Gateway, routes::RouteTable, server};
use tokio_util::sync::CancellationToken;

/// Loads and checks `path`, including the certificate files; prints a summary.
pub fn check_config(path: &Path) -> anyhow::Result<()> {
    let config = postern_config::load(path, &ProcessEnv)?;
    if !config.insecure_server {
        certificates(&config, path)?;
    }
    let mcp = config.routes.iter().filter(|r| r.mcp.is_some()).count();
    println!(
        "{}: OK ({} routes, {} of them MCP; listening on {})",
        path.display(),
        config.routes.len(),
        mcp,
        config.listen_address()
    );
    Ok(())
}

/// Loads the configured certificate files into an SNI map for the route hosts.
fn certificates(config: &Config, config_path: &Path) -> anyhow::Result<CertMap> {
    let base = config_path.parent().unwrap_or(Path::new("."));
    let mut pairs: Vec<(PathBuf, PathBuf)> = Vec::new();
    if let (Some(cert), Some(key)) = (&config.certificate_file, &config.certificate_key_file) {
        pairs.push((base.join(cert), base.join(key)));
    }
    pairs.extend(
        config
            .certificates
            .iter()
            .map(|c| (base.join(&c.cert), base.join(&c.key))),
    );
    let certs = pairs
        .iter()
        .map(|(cert, key)| load_pair(cert, key))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CertMap::new(&certs, &RouteTable::new(config).hosts()))
}

/// Runs the gateway until Ctrl-C or SIGTERM.
pub async fn serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let gateway = Gateway::new(config.clone(), Arc::new(PublicOnly));

    let resolver = Arc::new(CertResolver::default());
    let challenges = Arc::new(server::Challenges::default());
    let tls = if config.insecure_server {
        None
    } else {
        resolver.set(certificates(&config, &path)?);
        Some(postern_gateway::tls::server_config(resolver.clone(), false))
    };
    let autocert = (config.autocert && tls.is_some()).then(|| {
        let base = path.parent().unwrap_or(Path::new("."));
        let dir = config
            .autocert_dir
            .clone()
            .unwrap_or_else(|| config.data_dir().join("autocert"));
        let mut settings = AutocertConfig::new(base.join(dir), config.autocert_ca.clone());
        settings.email = config.autocert_email.clone();
        settings.trusted_ca = config
            .autocert_trusted_ca_file
            .as_ref()
            .map(|f| base.join(f));
        Arc::new(Autocert::new(
            settings,
            challenges.clone(),
            resolver.clone(),
        ))
    });

    let address = config.listen_address();
    let addrs = server::resolve_address(&address)
        .await
        .with_context(|| format!("address {address:?}"))?;
    let listener = tokio::net::TcpListener::bind(&addrs[..])
        .await
        .with_context(|| format!("cannot listen on {address} (set `address` to a free port)"))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, tls = tls.is_some(), routes = config.routes.len(), "postern gateway listening");

    let mut tasks = tokio::task::JoinSet::new();
    if tls.is_some() {
        let redirect = config
            .http_redirect_address
            .clone()
            .unwrap_or_else(|| ":80".into());
        if !redirect.is_empty() {
            // ACME HTTP-01 challenges arrive here: with autocert this listener is required.
            let explicit = config.http_redirect_address.is_some() || autocert.is_some();
            match bind(&redirect).await {
                Ok(l) => {
                    tracing::info!(address = %l.local_addr()?, "redirecting plain HTTP to HTTPS");
                    tasks.spawn(server::serve_redirect(
                        l,
                        local.port(),
                        Arc::default(),
                        shutdown.clone(),
                    ));
                }
                Err(e) if explicit => {
                    return Err(e).context(format!("http_redirect_address {redirect}"));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "not redirecting plain HTTP: cannot listen on :80 (set http_redirect_address)")
                }
            }
        }
    }
    if let Some(metrics) = &config.metrics_address {
        let l = bind(metrics)
            .await
            .with_context(|| format!("metrics_address {metrics}"))?;
        tracing::info!(address = %l.local_addr()?, "metrics on /metrics, health on /healthz");
        tasks.spawn(server::serve_metrics(l, gateway.clone(), shutdown.clone()));
    }
    if let Some(autocert) = &autocert {
        let missing = autocert.load_cached(&acme_hosts(&gateway));
        tracing::info!(
            missing = missing.len(),
            "autocert: cached certificates loaded"
        );
        let hosts_gateway = gateway.clone();
        tasks.spawn(
            autocert
                .clone()
                .run(move || acme_hosts(&hosts_gateway), shutdown.clone()),
        );
    }
    {
        let autocert = autocert.clone();
        let gateway_for_apply = gateway.clone();
        let resolver = resolver.clone();
        let tls_on = tls.is_some();
        let config_path = path.clone();
        let apply = Box::new(move |new: Config| -> Result<(), String> {
            if new.insecure_server == tls_on {
                return Err(
                    "insecure_server changed: restart to switch between TLS and plain HTTP".into(),
                );
            }
            if tls_on {
                resolver.set(certificates(&new, &config_path).map_err(|e| e.to_string())?);
            }
            gateway_for_apply.replace(new);
            if let Some(autocert) = &autocert {
                // Certificate files were reloaded: put the ACME ones back and look for new hosts.
                autocert.load_cached(&acme_hosts(&gateway_for_apply));
                autocert.wake();
            }
            Ok(())
        });
        tasks.spawn(postern_gateway::reload::watch(
            path.clone(),
            Box::new(ProcessEnv),
            gateway.clone(),
            apply,
            shutdown.clone(),
        ));
    }
    tokio::spawn(crate::stop_on_signal(shutdown.clone()));
    server::serve(listener, tls, gateway, shutdown.clone()).await;
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    tracing::info!("postern gateway stopped");
    Ok(())
}

/// The route hosts that get ACME certificates: https routes, except wildcards (HTTP-01 can't
/// validate them).
fn acme_hosts(gateway: &Gateway) -> Vec<String> {
    let runtime = gateway.runtime();
    let mut hosts: Vec<String> = runtime
        .config
        .routes
        .iter()
        .filter(|r| r.from.scheme == "https" && !r.from.host.starts_with("*."))
        .map(|r| r.from.host.clone())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

async fn bind(address: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let addrs = server::resolve_address(address).await?;
    Ok(tokio::net::TcpListener::bind(&addrs[..]).await?)
}
