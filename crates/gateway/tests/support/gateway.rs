//! Starts the gateway from a YAML string on an ephemeral port: `Running::start(yaml).await`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use postern_gateway::hooks::{Hooks, PublicOnly};
use postern_gateway::server::ConnectionTimeouts;
use postern_gateway::{Gateway, server};
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub addr: SocketAddr,
    pub gateway: Gateway,
    pub shutdown: CancellationToken,
    pub done: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn config(yaml: &str) -> postern_config::Config {
    postern_config::parse(yaml, Path::new("."), &HashMap::new())
        .unwrap_or_else(|e| panic!("test config: {e}"))
}

impl Running {
    /// Plain HTTP (`insecure_server`).
    pub async fn start(yaml: &str) -> Self {
        Self::start_with_tls(yaml, None).await
    }

    pub async fn start_with_tls(yaml: &str, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        Self::start_with(
            yaml,
            tls,
            Arc::new(PublicOnly),
            ConnectionTimeouts::default(),
        )
        .await
    }

    /// Plain HTTP with other hooks than [`PublicOnly`].
    pub async fn start_with_hooks(yaml: &str, hooks: Arc<dyn Hooks>) -> Self {
        Self::start_with(yaml, None, hooks, ConnectionTimeouts::default()).await
    }

    /// Plain HTTP with short connection timeouts.
    pub async fn start_with_timeouts(yaml: &str, timeouts: ConnectionTimeouts) -> Self {
        Self::start_with(yaml, None, Arc::new(PublicOnly), timeouts).await
    }

    pub async fn start_with(
        yaml: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        hooks: Arc<dyn Hooks>,
        timeouts: ConnectionTimeouts,
    ) -> Self {
        let gateway = Gateway::new(config(yaml), hooks);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let done = tokio::spawn(server::serve_with(
            listener,
            tls,
            gateway.clone(),
            shutdown.clone(),
            timeouts,
        ));
        Self {
            addr,
            gateway,
            shutdown,
            done,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.addr.port())
    }
}
