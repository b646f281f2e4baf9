//! Listeners: the main one (TLS with ALPN for HTTP/2 and HTTP/1.1, or plain HTTP with HTTP/1.1
//! and h2c), the `:80` redirect listener that also answers ACME HTTP-01 challenges, and the
//! metrics listener. Shutdown stops accepting and drains requests in flight.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::body::{Body, full};
use crate::{Connection, Gateway};

/// How long shutdown waits for requests in flight (open streams are cut after this).
pub const DRAIN: Duration = Duration::from_secs(15);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 pings on a connection with streams open: a peer that stops answering is dropped
/// (an SSE stream through a dead NAT otherwise stays open forever).
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(20);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// When the gateway closes client connections that do nothing. HTTP/1.1 also has hyper's own
/// 30 s limit on reading a request head; these cover HTTP/2, where a connection that sent only
/// its preface, or half a header block, was otherwise kept forever.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionTimeouts {
    /// A new connection must have sent a whole request head by then (default 30 s).
    pub first_request: Duration,
    /// A connection with no request in flight is closed after this (default 75 s).
    pub idle: Duration,
    /// After an idle connection is asked to close (HTTP/2: GOAWAY), how long it gets to do so
    /// before it is cut (default 5 s).
    pub close_grace: Duration,
    /// A request whose body stalls this long gets 408 (default 30 s; time the upstream takes
    /// to read does not count).
    pub body_read: Duration,
}

impl Default for ConnectionTimeouts {
    fn default() -> Self {
        Self {
            first_request: Duration::from_secs(30),
            idle: Duration::from_secs(75),
            close_grace: Duration::from_secs(5),
            body_read: Duration::from_secs(30),
        }
    }
}

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
    serve_with(
        listener,
        tls,
        gateway,
        shutdown,
        ConnectionTimeouts::default(),
    )
    .await
}

/// [`serve`] with other connection timeouts (tests).
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    gateway: Gateway,
    shutdown: CancellationToken,
    timeouts: ConnectionTimeouts,
) {
    serve_mtls(listener, tls, None, gateway, shutdown, timeouts).await
}

/// [`serve_with`] on a TLS listener that asks for client certificates: `client_auth` is the
/// verifier in `tls` (from [`crate::tls::server_config_with_client_auth`]), and tells each
/// request's policy what the connection's certificate is worth.
pub async fn serve_mtls(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    client_auth: Option<Arc<crate::mtls::ClientAuth>>,
    gateway: Gateway,
    shutdown: CancellationToken,
    timeouts: ConnectionTimeouts,
) {
    let shared = Arc::new(Shared {
        local_port: listener.local_addr().map(|a| a.port()).unwrap_or(0),
        client_auth,
        acceptor: tls.map(tokio_rustls::TlsAcceptor::from),
        builder: connection_builder(),
        gateway,
        shutdown,
        timeouts,
    });
    let open = Arc::new(OpenConnections::default());
    let mut workers = Workers::start();
    while let Some((stream, remote)) = accept(&listener, &shared.shutdown).await {
        // Over the cap, the connection is closed at once: the client fails fast, and the
        // kernel's queue does not fill with connections that would wait anyway.
        let Some(slot) = open.enter(shared.gateway.runtime().config.max_connections()) else {
            drop(stream);
            continue;
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
        let shared = shared.clone();
        workers.run(Box::pin(async move {
            shared.serve_connection(stream, remote, slot).await;
        }));
    }
    drop(listener);
    tokio::select! {
        _ = open.all_closed() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(DRAIN) => tracing::warn!("drain timed out; closing the remaining connections"),
    }
    workers.stop().await;
}

/// The next connection, or `None` at shutdown. A failed accept (e.g. out of file
/// descriptors) is retried after a pause.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => return Some(accepted),
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// HTTP/1.1 and HTTP/2 settings of the main listener's connections.
fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// What every connection of the main listener shares.
struct Shared {
    gateway: Gateway,
    builder: auto::Builder<TokioExecutor>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    client_auth: Option<Arc<crate::mtls::ClientAuth>>,
    shutdown: CancellationToken,
    timeouts: ConnectionTimeouts,
    local_port: u16,
}

impl Shared {
    /// Serves one client connection (on a worker) until it closes, is idle too long, or
    /// shutdown has drained it.
    async fn serve_connection(
        self: Arc<Self>,
        stream: std::net::TcpStream,
        remote: SocketAddr,
        slot: Slot,
    ) {
        // Counted until the connection closes, or until a tunnel it was upgraded to does.
        let slot = Arc::new(slot);
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
            return;
        };
        let Some(stream) = self.handshake(stream, remote).await else {
            return;
        };
        let client_certificate = match (&self.client_auth, &stream) {
            (Some(auth), Either::Left(tls)) => tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| auth.describe(chain))
                .map(Arc::new),
            _ => None,
        };
        let conn = Connection {
            remote,
            tls: self.acceptor.is_some(),
            local_port: self.local_port,
            body_read_timeout: self.timeouts.body_read,
            client_certificate,
        };
        let activity = Arc::new(Activity::new());
        let service = service_fn({
            let activity = activity.clone();
            let gateway = self.gateway.clone();
            move |mut request: Request<hyper::body::Incoming>| {
                let gateway = gateway.clone();
                let in_flight = activity.request_started();
                let conn = conn.clone();
                if request.headers().contains_key(header::UPGRADE) {
                    request
                        .extensions_mut()
                        .insert(ConnectionHold(slot.clone()));
                }
                async move {
                    let response = gateway.handle(request, conn).await;
                    Ok::<_, Infallible>(response.map(|body| Tracked {
                        body,
                        _in_flight: in_flight,
                    }))
                }
            }
        });
        let connection = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let mut closing = false;
        let cut = tokio::time::sleep(Duration::MAX);
        let mut cut = std::pin::pin!(cut);
        loop {
            tokio::select! {
                _ = connection.as_mut() => break,
                _ = self.shutdown.cancelled(), if !closing => {
                    // Draining: requests in flight finish; `serve` cuts what is left.
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = activity.idle(&self.timeouts), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    cut.as_mut().reset(tokio::time::Instant::now() + self.timeouts.close_grace);
                }
                _ = cut.as_mut(), if closing => break,
            }
        }
    }

    /// The TLS handshake, when the listener has TLS (`None`: it failed or took too long).
    async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
        remote: SocketAddr,
    ) -> Option<Either<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, tokio::net::TcpStream>>
    {
        let Some(acceptor) = &self.acceptor else {
            return Some(Either::Right(stream));
        };
        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => Some(Either::Left(stream)),
            Ok(Err(error)) => {
                tracing::debug!(%remote, %error, "TLS handshake failed");
                None
            }
            Err(_) => None,
        }
    }
}

/// The client connections open now, against `max_connections`.
#[derive(Default)]
struct OpenConnections {
    count: AtomicUsize,
    /// Whether the last connection was refused (the log says so once per episode).
    full: AtomicBool,
    closed: tokio::sync::Notify,
}

/// One open connection; counted until dropped.
struct Slot(Arc<OpenConnections>);

/// An upgrade request's hold on its connection's place under `max_connections`: the tunnel
/// keeps it (`crate::upgrade`), so upgraded connections count as long as they are open.
#[derive(Clone)]
pub(crate) struct ConnectionHold(#[allow(dead_code)] Arc<Slot>);

impl OpenConnections {
    /// A slot for a new connection, or `None` when `max` are open.
    fn enter(self: &Arc<Self>, max: usize) -> Option<Slot> {
        if self.count.load(Ordering::Relaxed) >= max {
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_connections = max,
                    "connection limit reached: closing new connections until some end"
                );
            }
            return None;
        }
        if self.full.swap(false, Ordering::Relaxed) {
            tracing::info!("below the connection limit again");
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        Some(Slot(self.clone()))
    }

    async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            let mut closed = std::pin::pin!(closed);
            closed.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            closed.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// What a connection is doing, for its idle timeouts.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Whether a request arrived yet.
    used: AtomicBool,
    /// When the last request ended, in ms after `opened`.
    last_end_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            used: AtomicBool::new(false),
            last_end_ms: AtomicU64::new(0),
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.used.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Resolves once the connection has had no request in flight for its timeout.
    async fn idle(&self, timeouts: &ConnectionTimeouts) {
        loop {
            let now = Instant::now();
            let deadline = if self.in_flight.load(Ordering::Relaxed) > 0 {
                // Busy: look again later (a request's end moves the deadline on).
                now + timeouts.idle
            } else if !self.used.load(Ordering::Relaxed) {
                self.opened + timeouts.first_request
            } else {
                self.opened
                    + Duration::from_millis(self.last_end_ms.load(Ordering::Relaxed))
                    + timeouts.idle
            };
            if deadline <= now {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// A request in flight on a connection, until its response body is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let ms = u64::try_from(activity.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_end_ms.store(ms, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
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
/// redirect to HTTPS on `https_port`, for the hosts `gateway` has routes for.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    challenges: Arc<Challenges>,
    gateway: Gateway,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(SIDE_LISTENER_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let challenges = challenges.clone();
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let challenges = challenges.clone();
                let runtime = gateway.runtime();
                async move {
                    Ok::<_, Infallible>(redirect_or_challenge(
                        &request,
                        https_port,
                        &challenges,
                        &runtime.routes,
                    ))
                }
            });
            serve_side_connection(stream, service).await;
            drop(slot);
        });
    }
}

/// Most connections open at once on the redirect and metrics listeners (over it, new ones are
/// closed at once).
const SIDE_LISTENER_CONNECTIONS: usize = 1024;
/// How long a connection to the redirect or metrics listener may stay open: their answers are
/// tiny, so a connection that takes longer is trickling bytes to hold it.
const SIDE_CONNECTION_LIFETIME: Duration = Duration::from_secs(30);

/// Serves one connection of the redirect or metrics listener: HTTP/1.1 or HTTP/2, request
/// heads within 10 s, the whole connection within [`SIDE_CONNECTION_LIFETIME`].
async fn serve_side_connection<S>(stream: tokio::net::TcpStream, service: S)
where
    S: hyper::service::Service<
            Request<hyper::body::Incoming>,
            Response = Response<Body>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(SIDE_CONNECTION_LIFETIME, connection).await;
}

fn redirect_or_challenge<B>(
    request: &Request<B>,
    https_port: u16,
    challenges: &Challenges,
    routes: &crate::routes::RouteTable,
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
    if !routes.serves_host(&host) {
        // Reflecting any Host would make this listener an open redirect to any https site.
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this server has no route for that host\n".into(),
        );
    }
    let target = format!(
        "{}{}",
        postern_config::origin_of("https", &host, Some(https_port)),
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
    let slots = Arc::new(tokio::sync::Semaphore::new(SIDE_LISTENER_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted { Ok((s, _)) => s, Err(_) => continue },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
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
            serve_side_connection(stream, service).await;
            drop(slot);
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
