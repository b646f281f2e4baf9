//! Prometheus metrics: requests, durations, upstream errors, open streams, reloads.
//!
//! Every label value comes from a closed set (standard methods, status codes, configured route
//! ids, fixed kinds): a series is never evicted, so no client-chosen string may become one.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a proxied request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route id.
    pub route: String,
    /// HTTP method: a standard one or `other` ([`method_label`]).
    pub method: &'static str,
    /// Status code.
    pub status: u16,
}

/// Labels of an upstream failure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// The route id.
    pub route: String,
    /// `connect`, `timeout`, `body`, ...
    pub kind: String,
}

/// Labels of a reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `error`.
    pub result: String,
}

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route, method and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Time to response headers, by route.
    pub durations: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Upstream failures.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// Streaming (`text/event-stream`) responses open now.
    pub open_streams: Gauge<i64, AtomicI64>,
    /// Configuration reloads.
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 for each key whose change in the file is not in force until a restart.
    pub needs_restart: Family<KeyLabel, Gauge>,
}

/// A configuration key (from the fixed list of keys that need a restart).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabel {
    /// The key.
    pub key: &'static str,
}

/// A route label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route id.
    pub route: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("postern");
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        let open_streams = Gauge::<i64, AtomicI64>::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let needs_restart = Family::<KeyLabel, Gauge>::default();
        registry.register(
            "config_needs_restart",
            "1 for each configuration key changed in the file but not in force until a restart",
            needs_restart.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            durations.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures, by route and kind",
            upstream_errors.clone(),
        );
        registry.register(
            "open_streams",
            "Streaming (SSE) responses open now",
            open_streams.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result",
            reloads.clone(),
        );
        Self {
            registry,
            requests,
            durations,
            upstream_errors,
            open_streams,
            reloads,
            needs_restart,
        }
    }
}

/// The method as a label: one of the standard methods, else `other`. A client chooses the
/// method, and every label value is a series kept forever: a made-up 30 KB method per request
/// grew the process by 60 MB over 2,000 requests.
pub fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::CONNECT => "CONNECT",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
