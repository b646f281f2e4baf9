//! The access log and the request metrics. Every response [`crate::Gateway::handle`] returns
//! leaves through one [`RequestLog`]: it gets its `x-request-id`, is counted, and is written to
//! the access log, at once when the gateway produced it, when its body ends when it is the
//! upstream's (an SSE stream may last hours; it is counted in the open-streams gauge meanwhile).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::BodyExt;

use crate::body::{Body, Observed};
use crate::metrics::{self, Metrics, RequestLabels, RouteLabel};
use crate::routes::Route;

/// What the access log and the metrics learn about one request while it is served.
pub(crate) struct RequestLog {
    method: Method,
    started: Instant,
    route: Option<Arc<Route>>,
    answer: Answer,
}

/// Who produced the response: the access log's `upstream` field, and whether the body is the
/// upstream's stream.
pub(crate) enum Answer {
    /// The gateway refused the request, or answered it without a route: `-`.
    Refused,
    /// One of the gateway's own endpoints (the hooks' `intercept`): `gateway`.
    Endpoint,
    /// The upstream failed and the gateway answered with an error: the upstream's URL.
    UpstreamFailed(String),
    /// The upstream's response, streamed through; logged when it ends, with the user.
    Upstream {
        /// The upstream's URL.
        url: String,
        /// Who the user is (`None`: anonymous).
        user: Option<String>,
    },
}

impl RequestLog {
    /// The log of a request with this method that arrived at `started`; until told otherwise,
    /// the gateway refused it without a route.
    pub(crate) fn new(method: Method, started: Instant) -> Self {
        Self {
            method,
            started,
            route: None,
            answer: Answer::Refused,
        }
    }

    /// When the request arrived.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The route the request is for (its id labels the metrics).
    pub(crate) fn set_route(&mut self, route: Option<Arc<Route>>) {
        self.route = route;
    }

    /// Who produced the response.
    pub(crate) fn answered_by(&mut self, answer: Answer) {
        self.answer = answer;
    }

    /// The route the request is for, if any.
    pub(crate) fn route(&self) -> Option<&Arc<Route>> {
        self.route.as_ref()
    }

    /// Whether the response is the upstream's (not one the gateway wrote).
    pub(crate) fn is_upstreams(&self) -> bool {
        matches!(self.answer, Answer::Upstream { .. })
    }

    /// Sets the request id on `response`, counts it, and logs it (a streamed upstream body when
    /// it ends). `host` and `path` are as the gateway understood them (`-` for no host).
    pub(crate) fn finish(
        self,
        metrics: &Arc<Metrics>,
        request_id: String,
        host: String,
        path: String,
        mut response: Response<Body>,
    ) -> Response<Body> {
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        let route_id = self.route.as_ref().map_or("-", |r| r.id.as_str());
        count(
            metrics,
            route_id,
            &self.method,
            response.status(),
            self.started,
        );
        let mut line = Line {
            request_id,
            method: self.method,
            host,
            path,
            started: self.started,
            upstream: Cow::Borrowed("-"),
            user: None,
        };
        match self.answer {
            Answer::Upstream { url, user } => {
                line.upstream = Cow::Owned(url);
                line.user = user;
                let idle_timeout = self.route.and_then(|r| r.idle_timeout);
                stream(line, metrics, idle_timeout, response)
            }
            answer => {
                line.user = response
                    .extensions()
                    .get::<crate::hooks::RefusedUser>()
                    .map(|u| u.0.clone());
                line.upstream = match answer {
                    Answer::Endpoint => Cow::Borrowed("gateway"),
                    Answer::UpstreamFailed(url) => Cow::Owned(url),
                    _ => Cow::Borrowed("-"),
                };
                let bytes = http_body::Body::size_hint(response.body())
                    .exact()
                    .unwrap_or(0);
                line.write(response.status(), bytes, "");
                response
            }
        }
    }
}

/// Streams an upstream response through; logs it, and leaves the open-streams gauge, when it ends.
fn stream(
    line: Line,
    metrics: &Arc<Metrics>,
    idle_timeout: Option<std::time::Duration>,
    response: Response<Body>,
) -> Response<Body> {
    let status = response.status();
    let event_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let open_streams = event_stream.then(|| metrics.clone());
    if let Some(metrics) = &open_streams {
        metrics.open_streams.inc();
    }
    let on_end = move |bytes: u64, complete: bool| {
        if let Some(metrics) = &open_streams {
            metrics.open_streams.dec();
        }
        let note = if complete {
            ""
        } else {
            "response ended early (client gone or upstream failed)"
        };
        line.write(status, bytes, note);
    };
    response.map(|b| Observed::new(b, idle_timeout, Box::new(on_end)).boxed())
}

/// Counts a response and the time to its headers, by route.
fn count(metrics: &Metrics, route: &str, method: &Method, status: StatusCode, started: Instant) {
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.to_owned(),
            method: metrics::method_label(method),
            status: status.as_u16(),
        })
        .inc();
    metrics
        .durations
        .get_or_create(&RouteLabel {
            route: route.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
}

/// The fields of a request's access-log line that are known before its response ends.
struct Line {
    request_id: String,
    method: Method,
    host: String,
    path: String,
    started: Instant,
    upstream: Cow<'static, str>,
    user: Option<String>,
}

impl Line {
    /// One line per request: method, host, path, status, bytes, duration, upstream, user.
    fn write(&self, status: StatusCode, bytes: u64, note: &str) {
        // What the client chose is capped (a 30 KB method or path would otherwise be written
        // on every request); string fields are written escaped by the log formatter.
        tracing::info!(
            target: "postern::access",
            request_id = self.request_id.as_str(),
            method = &*capped(self.method.as_str(), 24),
            host = &*capped(&self.host, 256),
            path = &*capped(&self.path, 2048),
            status = status.as_u16(),
            bytes,
            duration_ms = millis(self.started.elapsed()),
            upstream = &*self.upstream,
            user = &*capped(self.user.as_deref().unwrap_or("-"), 256),
            note,
            "request"
        );
    }
}

/// A duration in milliseconds, rounded to 10 µs: `duration_ms=1.23`, not `1.2345678910000001`.
pub fn millis(elapsed: std::time::Duration) -> f64 {
    (elapsed.as_secs_f64() * 100_000.0).round() / 100.0
}

/// At most `max` bytes of `text` (cut on a character boundary, `…` marking the cut).
fn capped(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…(+{} bytes)", &text[..end], text.len() - end))
}

#[cfg(test)]
mod tests {
    /// What `f` logs, as the text format writes it without colours, time, level or target.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Buffer {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .without_time()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_access_log_names_the_user_of_a_refused_request() {
        use std::sync::Arc;
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let mut refused = http::Response::new(crate::body::full("denied"));
        *refused.status_mut() = http::StatusCode::FORBIDDEN;
        refused
            .extensions_mut()
            .insert(crate::hooks::RefusedUser("mallory@example.com".into()));
        let anonymous = http::Response::new(crate::body::full("no"));
        let line = logged(|| {
            for response in [refused, anonymous] {
                let log = super::RequestLog::new(http::Method::POST, std::time::Instant::now());
                log.finish(&metrics, "r1".into(), "h".into(), "/mcp".into(), response);
            }
        });
        let lines: Vec<&str> = line.lines().collect();
        assert!(
            lines[0].contains("status=403") && lines[0].contains("user=\"mallory@example.com\""),
            "{line}"
        );
        assert!(lines[1].contains("user=\"-\""), "{line}");
    }

    #[test]
    fn durations_are_rounded_to_ten_microseconds() {
        use std::time::Duration;
        assert_eq!(super::millis(Duration::from_nanos(1_234_567_891)), 1234.57);
        assert_eq!(super::millis(Duration::from_nanos(4_999)), 0.0);
        assert_eq!(super::millis(Duration::from_micros(15)), 0.02);
        assert_eq!(
            format!("{}", super::millis(Duration::from_nanos(2_345_678))),
            "2.35"
        );
    }

    #[test]
    fn client_chosen_log_fields_are_capped() {
        assert_eq!(super::capped("GET", 24), "GET");
        let method = "M".repeat(30_000);
        let logged = super::capped(&method, 24);
        assert_eq!(logged, format!("{}…(+29976 bytes)", "M".repeat(24)));
        assert_eq!(
            super::capped("ééé", 3),
            "é…(+4 bytes)",
            "cut on a character boundary"
        );
    }
}
