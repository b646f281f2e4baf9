//! Listeners: the main one (TLS with ALPN for HTTP/2 and HTTP/1.1, or plain HTTP with HTTP/1.1
//! and h2c), the `:80` redirect listener that also answers ACME HTTP-01 challenges, and the
//! metrics listener. Shutdown stops accepting and drains requests in flight.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::body::{Body, full};
use crate::{Connection, Gateway};

/// How long shutdown waits for requests in flight (open streams are cut after this).
pub const DRAIN: Duration = Duration::from_secs(15);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `:443`, `0.0.0.0:443`, `[::]:8080`, `localhost:8080` into socket addresses.
pub async fn resolve_address(address: &str) -> std::io::Result<Vec<SocketAddr>> {
    if let Some(port) = address.strip_prefix(':') {
        let port: u16 = port
            .parse()
            .map_err(|_| std::io::Error::other(format!("{address:?}: bad port")))?;
        return Ok(vec![SocketAddr::from(([0, 0, 0, 0], port))]);
    }
    Ok(tokio::net::lookup_host(address).await?.collect())
}

/// Serves the gateway on `listener` until `shutdown`, then drains.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    gateway: Gateway,
    shutdown: CancellationToken,
) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut workers = Workers::start();
    let builder = {
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(Duration::from_secs(30));
        b.http2().timer(hyper_util::rt::TokioTimer::new());
        Arc::new(b)
    };
    loop {
        let (stream, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        // Handed to a worker as a plain socket, registered with the worker's own reactor.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot hand the connection to a worker");
                continue;
            }
        };
        let gateway = gateway.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        workers.run(Box::pin(async move {
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            let conn = Connection {
                remote,
                tls: acceptor.is_some(),
                local_port,
            };
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request, conn).await) }
            });
            match acceptor {
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%remote, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
                None => {
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
            }
        }));
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(DRAIN) => tracing::warn!("drain timed out; closing the remaining connections"),
    }
    workers.stop().await;
}

type ConnectionTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Connection workers, one per core: a thread with its own single-threaded runtime. A connection
/// lives on one worker from accept to close, with everything its requests do (the gateway's
/// hooks, the upstream request and the upstream connection, from the worker's own pool), so a
/// request wakes no other thread. On a shared work-stealing runtime, every request woke the idle
/// worker (a futex call per request): at one connection 76 µs of CPU per request against 57 µs
/// here, p50 159 µs against 141 µs (the benchmark's tools/call, `bench/run.sh`).
/// Tokio's I/O and timers work from any runtime, so the rest of the gateway (store, OAuth
/// clients, background tasks) is shared as before.
struct Workers {
    queues: Vec<tokio::sync::mpsc::UnboundedSender<ConnectionTask>>,
    next: usize,
    stop: CancellationToken,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start() -> Self {
        let count = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = CancellationToken::new();
        let mut queues = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let (queue, jobs) = tokio::sync::mpsc::unbounded_channel();
            let stop = stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("postern-conn-{i}"))
                .spawn(move || work(jobs, stop));
            match thread {
                Ok(thread) => {
                    queues.push(queue);
                    threads.push(thread);
                }
                Err(error) => tracing::error!(%error, "cannot start a connection worker"),
            }
        }
        Self {
            queues,
            next: 0,
            stop,
            threads,
        }
    }

    /// Runs `task` on the next worker (or here, if no worker could be started).
    fn run(&mut self, task: ConnectionTask) {
        if self.queues.is_empty() {
            tokio::spawn(task);
            return;
        }
        self.next = (self.next + 1) % self.queues.len();
        if let Err(task) = self.queues[self.next].send(task) {
            tokio::spawn(task.0);
        }
    }

    /// After draining: closes what is left and waits for the workers to end.
    async fn stop(mut self) {
        self.queues.clear();
        self.stop.cancel();
        let threads = std::mem::take(&mut self.threads);
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        // Serving was abandoned (its future dropped): end the workers too.
        self.stop.cancel();
    }
}

fn work(mut jobs: tokio::sync::mpsc::UnboundedReceiver<ConnectionTask>, stop: CancellationToken) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start a connection worker's runtime");
            return;
        }
    };
    crate::proxy::UpstreamClient::install_for_this_thread();
    runtime.block_on(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => {
                        connections.spawn(job);
                    }
                    None => break,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = stop.cancelled() => return,
            }
        }
        loop {
            tokio::select! {
                next = connections.join_next() => if next.is_none() { return },
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// Pending ACME HTTP-01 challenges: token → key authorization.
#[derive(Default)]
pub struct Challenges(RwLock<HashMap<String, String>>);

impl Challenges {
    /// Publishes a challenge response.
    pub fn insert(&self, token: &str, key_authorization: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Withdraws a challenge.
    pub fn remove(&self, token: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(token);
    }

    fn get(&self, token: &str) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
    }
}

/// The plain-HTTP listener next to a TLS one: ACME HTTP-01 answers, everything else a permanent
/// redirect to HTTPS on `https_port`.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    challenges: Arc<Challenges>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
        };
        let challenges = challenges.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let challenges = challenges.clone();
                async move {
                    Ok::<_, Infallible>(redirect_or_challenge(&request, https_port, &challenges))
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn redirect_or_challenge<B>(
    request: &Request<B>,
    https_port: u16,
    challenges: &Challenges,
) -> Response<Body> {
    let path = request.uri().path();
    if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
        return match challenges.get(token) {
            Some(answer) => text(StatusCode::OK, answer),
            None => text(StatusCode::NOT_FOUND, "unknown ACME challenge\n".into()),
        };
    }
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| crate::routes::split_host(h, 80).0)
        .unwrap_or_default();
    if host.is_empty() {
        return text(StatusCode::BAD_REQUEST, "no Host header\n".into());
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let target = format!(
        "https://{host}{port}{}",
        request.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut response = text(
        StatusCode::PERMANENT_REDIRECT,
        format!("moved to {target}\n"),
    );
    if let Ok(location) = HeaderValue::from_str(&target) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// Prometheus metrics at `/metrics` and a health check at `/healthz`.
pub async fn serve_metrics(listener: TcpListener, gateway: Gateway, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
        };
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let gateway = gateway.clone();
                async move {
                    Ok::<_, Infallible>(match request.uri().path() {
                        "/metrics" => {
                            let mut r = text(StatusCode::OK, gateway.metrics().render());
                            r.headers_mut().insert(
                                header::CONTENT_TYPE,
                                HeaderValue::from_static(
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                ),
                            );
                            r
                        }
                        "/healthz" => text(StatusCode::OK, "ok\n".into()),
                        _ => text(StatusCode::NOT_FOUND, "try /metrics or /healthz\n".into()),
                    })
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
