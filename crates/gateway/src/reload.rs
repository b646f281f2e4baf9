//! Configuration reload: when the file's contents or its `users_file`'s change (checked every
//! second) or on SIGHUP,
//! the new configuration is parsed and, if valid, put in force without dropping connections. A
//! broken file is logged and the configuration in force stays.

use std::path::PathBuf;
use std::time::Duration;

use postern_config::{Config, Env};
use tokio_util::sync::CancellationToken;

use crate::Gateway;
use crate::metrics::ReloadLabels;

/// Watches `path` until `shutdown`; `apply` puts a valid new configuration in force (it may
/// refuse it, e.g. when a certificate file is missing).
pub async fn watch(
    path: PathBuf,
    env: Box<dyn Env + Send + Sync>,
    gateway: Gateway,
    apply: Box<dyn Fn(Config) -> Result<(), String> + Send + Sync>,
    shutdown: CancellationToken,
) {
    let mut last = contents(&path, &gateway);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let signal = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let signal = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = signal => true,
            _ = tokio::time::sleep(Duration::from_secs(1)) => false,
        };
        let current = contents(&path, &gateway);
        if !forced && current == last {
            continue;
        }
        last = current;
        let result = postern_config::load(&path, env.as_ref())
            .map_err(|e| e.to_string())
            .and_then(&apply);
        let outcome = match &result {
            Ok(()) => {
                tracing::info!(file = %path.display(), "configuration reloaded");
                "ok"
            }
            Err(error) => {
                tracing::error!(file = %path.display(), %error, "configuration NOT reloaded: the previous one stays in force");
                "error"
            }
        };
        gateway
            .metrics()
            .reloads
            .get_or_create(&ReloadLabels {
                result: outcome.into(),
            })
            .inc();
    }
}

/// The bytes of the configuration file and of the `users_file` of the configuration in force
/// (relative to the configuration file): a new user is a reload, without touching the config.
fn contents(path: &std::path::Path, gateway: &Gateway) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let users = gateway.runtime().config.users_file.clone().map(|file| {
        path.parent()
            .unwrap_or(std::path::Path::new("."))
            .join(file)
    });
    (
        std::fs::read(path).ok(),
        users.and_then(|file| std::fs::read(file).ok()),
    )
}
