//! The audit log of MCP traffic: one JSON object per line, for every denied request and every
//! tool call (time, user, session, route, tool, decision and the rule that made it, status,
//! latency). Written as `postern::audit` log events and appended to `data_dir/audit.jsonl`, which
//! an admin can read with `jq`.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::Route;
use postern_policy::McpRequest;
use postern_store::{Session, now_ms};
use serde::Serialize;

/// One audit record.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The gateway's request id.
    pub request_id: String,
    /// The user (email), or `null` when not signed in.
    pub user: Option<String>,
    /// The session.
    pub session: Option<String>,
    /// The route.
    pub route: String,
    /// The JSON-RPC method.
    pub method: Option<String>,
    /// The tool, for `tools/call`.
    pub tool: Option<String>,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The rule that decided.
    pub rule: String,
    /// The upstream's status, for allowed calls.
    pub status: Option<u16>,
    /// Time to the end of the response.
    pub latency_ms: Option<f64>,
    /// Whether the response was sent completely.
    pub complete: Option<bool>,
}

impl AuditEvent {
    /// A decision about `call` on `route`.
    pub fn decision(
        ctx: &RequestContext,
        route: &Route,
        session: Option<&Session>,
        call: Option<&McpRequest>,
        rule: &str,
        allowed: bool,
    ) -> Self {
        Self::decision_for(ctx, &route.id, session, call, rule, allowed)
    }

    /// A decision about `call` on the route named `route`.
    pub fn decision_for(
        ctx: &RequestContext,
        route: &str,
        session: Option<&Session>,
        call: Option<&McpRequest>,
        rule: &str,
        allowed: bool,
    ) -> Self {
        Self {
            time_ms: now_ms(),
            request_id: ctx.request_id.clone(),
            user: session.map(|s| s.email.clone()),
            session: session.map(|s| s.id.clone()),
            route: route.to_owned(),
            method: call.map(|c| c.method.clone()),
            tool: call.and_then(|c| c.tool.clone()),
            decision: if allowed { "allow" } else { "deny" },
            rule: rule.to_owned(),
            status: None,
            latency_ms: None,
            complete: None,
        }
    }
}

/// Where audit records go.
#[derive(Clone)]
pub struct Audit {
    file: Option<Arc<Mutex<Option<std::fs::File>>>>,
    path: Option<PathBuf>,
}

impl Audit {
    /// Appends to `path` (created when first needed), and logs.
    pub fn new(path: Option<PathBuf>) -> Self {
        Self {
            file: path.as_ref().map(|_| Arc::new(Mutex::new(None))),
            path,
        }
    }

    /// Records `event`.
    pub fn record(&self, event: AuditEvent) {
        let line = serde_json::to_string(&event).unwrap_or_default();
        tracing::info!(target: "postern::audit", user = event.user.as_deref().unwrap_or("-"), route = %event.route,
            tool = event.tool.as_deref().unwrap_or("-"), decision = event.decision, rule = %event.rule,
            status = event.status.unwrap_or(0), latency_ms = event.latency_ms.unwrap_or(0.0), request_id = %event.request_id, "mcp");
        let (Some(file), Some(path)) = (&self.file, &self.path) else {
            return;
        };
        let mut guard = file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                Ok(f) => *guard = Some(f),
                Err(error) => {
                    tracing::error!(file = %path.display(), %error, "cannot open the audit log");
                    return;
                }
            }
        }
        if let Some(f) = guard.as_mut()
            && let Err(error) = writeln!(f, "{line}")
        {
            tracing::error!(file = %path.display(), %error, "cannot write the audit log");
        }
    }
}
