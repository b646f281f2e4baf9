//! Prometheus metrics: requests, durations, upstream errors, open streams, reloads, and the
//! identity gateway's events (sign-ins, rate limits, tokens, policy denials, tool calls, store
//! operations, upstream-token refreshes). The identity series with closed label sets exist from
//! start, at zero, so a dashboard or alert sees 0 rather than no data.
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
    /// Sign-ins, by result (`ok`, `failed`).
    pub sign_ins: Family<ResultLabel, Counter>,
    /// Requests refused by a rate limit, by limit (`sign_in`, `registration`).
    pub rate_limited: Family<LimitLabel, Counter>,
    /// MCP client tokens, by event (`issued`, `refreshed`, `revoked`, `refused`).
    pub tokens: Family<EventLabel, Counter>,
    /// Policy denials, by where (`authorize`: the OAuth consent; `request`: a proxied request).
    pub policy_denials: Family<PlaceLabel, Counter>,
    /// MCP tool calls, by route, tool ([`Metrics::tool_label`]) and decision.
    pub tool_calls: Family<ToolCallLabels, Counter>,
    /// Store operations' time, by kind (`query`, `execute`).
    pub store_durations: Family<OpLabel, Histogram, fn() -> Histogram>,
    /// Store operations that failed, by kind.
    pub store_errors: Family<OpLabel, Counter>,
    /// Refreshes of users' upstream tokens, by result (`ok`, `failed`, `rejected`).
    pub upstream_token_refreshes: Family<ResultLabel, Counter>,
    /// The tool names that label `tool_calls` (the rest are `other`).
    tool_names: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A result label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The result.
    pub result: &'static str,
}

/// A rate limit's label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// The limit.
    pub limit: &'static str,
}

/// An event label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    /// The event.
    pub event: &'static str,
}

/// Where a policy decided.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlaceLabel {
    /// `authorize` or `request`.
    pub place: &'static str,
}

/// A store operation's kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// `query` or `execute`.
    pub op: &'static str,
}

/// Labels of a tool call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ToolCallLabels {
    /// The route id.
    pub route: String,
    /// The tool, or `other` ([`Metrics::tool_label`]).
    pub tool: String,
    /// `allow` or `deny`.
    pub decision: &'static str,
}

/// How many distinct tool names label `tool_calls`; later ones are `other`.
pub const TOOL_NAMES: usize = 200;

/// The label sets the identity series start with.
const SIGN_IN_RESULTS: [&str; 2] = ["ok", "failed"];
const LIMITS: [&str; 2] = ["sign_in", "registration"];
const TOKEN_EVENTS: [&str; 4] = ["issued", "refreshed", "revoked", "refused"];
const PLACES: [&str; 2] = ["authorize", "request"];
const STORE_OPS: [&str; 3] = ["query", "execute", "connect"];
const REFRESH_RESULTS: [&str; 3] = ["ok", "failed", "rejected"];

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
        let sign_ins = Family::<ResultLabel, Counter>::default();
        let rate_limited = Family::<LimitLabel, Counter>::default();
        let tokens = Family::<EventLabel, Counter>::default();
        let policy_denials = Family::<PlaceLabel, Counter>::default();
        let tool_calls = Family::<ToolCallLabels, Counter>::default();
        let store_durations = Family::<OpLabel, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let store_errors = Family::<OpLabel, Counter>::default();
        let upstream_token_refreshes = Family::<ResultLabel, Counter>::default();
        for result in SIGN_IN_RESULTS {
            let _ = sign_ins.get_or_create(&ResultLabel { result });
        }
        for limit in LIMITS {
            let _ = rate_limited.get_or_create(&LimitLabel { limit });
        }
        for event in TOKEN_EVENTS {
            let _ = tokens.get_or_create(&EventLabel { event });
        }
        for place in PLACES {
            let _ = policy_denials.get_or_create(&PlaceLabel { place });
        }
        for op in STORE_OPS {
            let _ = store_durations.get_or_create(&OpLabel { op });
            let _ = store_errors.get_or_create(&OpLabel { op });
        }
        for result in REFRESH_RESULTS {
            let _ = upstream_token_refreshes.get_or_create(&ResultLabel { result });
        }
        registry.register("sign_ins", "Sign-ins, by result", sign_ins.clone());
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit",
            rate_limited.clone(),
        );
        registry.register(
            "mcp_tokens",
            "MCP client tokens issued, refreshed, revoked, or refused at the token endpoint",
            tokens.clone(),
        );
        registry.register(
            "policy_denials",
            "Requests a route's policy denied, by where (authorize: OAuth consent; request: proxied)",
            policy_denials.clone(),
        );
        registry.register(
            "mcp_tool_calls",
            "MCP tool calls, by route, tool (the first 200 names seen allowed; the rest `other`) and decision",
            tool_calls.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Time of store operations, by kind",
            store_durations.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed, by kind",
            store_errors.clone(),
        );
        registry.register(
            "upstream_token_refreshes",
            "Refreshes of users' upstream tokens, by result (rejected: the provider revoked it)",
            upstream_token_refreshes.clone(),
        );
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
            sign_ins,
            rate_limited,
            tokens,
            policy_denials,
            tool_calls,
            store_durations,
            store_errors,
            upstream_token_refreshes,
            tool_names: Default::default(),
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
    /// Counts a sign-in (`ok` or `failed`).
    pub fn sign_in(&self, result: &'static str) {
        self.sign_ins.get_or_create(&ResultLabel { result }).inc();
    }

    /// Counts a request a rate limit refused.
    pub fn rate_limit_hit(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&LimitLabel { limit }).inc();
    }

    /// Counts a token event.
    pub fn token(&self, event: &'static str) {
        self.tokens.get_or_create(&EventLabel { event }).inc();
    }

    /// Counts a policy denial.
    pub fn policy_denied(&self, place: &'static str) {
        self.policy_denials
            .get_or_create(&PlaceLabel { place })
            .inc();
    }

    /// Counts an upstream-token refresh.
    pub fn upstream_token_refresh(&self, result: &'static str) {
        self.upstream_token_refreshes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts a store operation that took `elapsed`.
    pub fn store_operation(&self, op: &'static str, elapsed: std::time::Duration, ok: bool) {
        let label = OpLabel { op };
        self.store_durations
            .get_or_create(&label)
            .observe(elapsed.as_secs_f64());
        if !ok {
            self.store_errors.get_or_create(&label).inc();
        }
    }

    /// Counts a tool call on `route`.
    pub fn tool_call(&self, route: &str, tool: &str, allowed: bool) {
        let tool = self.tool_label(tool, allowed);
        self.tool_calls
            .get_or_create(&ToolCallLabels {
                route: route.to_owned(),
                tool,
                decision: if allowed { "allow" } else { "deny" },
            })
            .inc();
    }

    /// The `tool` label of a call. The client chooses the name and every label value is a
    /// series kept forever, so a name becomes a label only when a call to it was allowed (the
    /// caller signed in and passed the route's policy; an anonymous stranger cannot add one),
    /// it looks like an MCP tool name (1-64 of `A-Za-z0-9_-.`), and fewer than [`TOOL_NAMES`]
    /// names are labels already; anything else is `other`.
    pub fn tool_label(&self, tool: &str, allowed: bool) -> String {
        let valid = (1..=64).contains(&tool.len())
            && tool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !valid {
            return "other".into();
        }
        let mut names = self.tool_names.lock().unwrap_or_else(|e| e.into_inner());
        if names.contains(tool) || (allowed && names.len() < TOOL_NAMES) {
            names.insert(tool.to_owned());
            tool.to_owned()
        } else {
            "other".into()
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_series_exist_from_start_at_zero() {
        let text = Metrics::default().render();
        for series in [
            "postern_sign_ins_total{result=\"ok\"} 0",
            "postern_sign_ins_total{result=\"failed\"} 0",
            "postern_rate_limited_total{limit=\"sign_in\"} 0",
            "postern_mcp_tokens_total{event=\"issued\"} 0",
            "postern_mcp_tokens_total{event=\"revoked\"} 0",
            "postern_policy_denials_total{place=\"authorize\"} 0",
            "postern_store_errors_total{op=\"query\"} 0",
            "postern_store_operation_duration_seconds_count{op=\"execute\"} 0",
            "postern_upstream_token_refreshes_total{result=\"failed\"} 0",
        ] {
            assert!(text.contains(series), "no {series} in\n{text}");
        }
    }

    #[test]
    fn tool_names_are_labels_only_when_allowed_well_formed_and_under_the_cap() {
        let metrics = Metrics::default();
        // Denied first: a stranger's name never becomes a series.
        assert_eq!(metrics.tool_label("read_query", false), "other");
        assert_eq!(metrics.tool_label("read_query", true), "read_query");
        assert_eq!(metrics.tool_label("read_query", false), "read_query");
        assert_eq!(metrics.tool_label(&"x".repeat(65), true), "other");
        assert_eq!(metrics.tool_label("drop table; --", true), "other");
        let metrics = Metrics::default();
        for i in 0..(TOOL_NAMES * 2) {
            metrics.tool_call("sqlite", &format!("tool{i}"), true);
        }
        let series = metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("postern_mcp_tool_calls_total{"))
            .count();
        assert_eq!(series, TOOL_NAMES + 1, "the cap, and `other`");
        assert!(metrics.render().contains(
            "postern_mcp_tool_calls_total{route=\"sqlite\",tool=\"other\",decision=\"allow\"} 200"
        ));
    }
}
