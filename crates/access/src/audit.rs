//! The audit log of MCP traffic: one JSON object per line, for every denied request and every
//! tool call (time, user, session, route, tool, decision and the rule that made it, status,
//! latency). Written as `postern::audit` log events and appended to `data_dir/audit.jsonl`, which
//! an admin can read with `jq`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

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

/// The audit log. Lines go to a writer thread that appends them in batches (one `write` per
/// batch, flushed as soon as the queue is empty), so a tool call costs the request path no file
/// I/O or lock; when the queue is full (the disk is slower than the traffic) callers wait rather
/// than lose records. Dropping the last handle writes what is queued and joins the thread.
#[derive(Clone)]
pub struct Audit {
    writer: Option<Arc<Writer>>,
}

/// The queue into the writer thread; its drop writes what is queued and joins the thread.
struct Writer {
    sender: Option<SyncSender<String>>,
    thread: Option<JoinHandle<()>>,
}

/// Lines that may wait for the writer.
const QUEUE: usize = 16 * 1024;

impl Audit {
    /// Appends to `path` (created when first needed), and logs.
    pub fn new(path: Option<PathBuf>) -> Self {
        let writer = path.and_then(|path| {
            let (sender, lines) = sync_channel::<String>(QUEUE);
            std::thread::Builder::new()
                .name("postern-audit".into())
                .spawn(move || write_lines(&path, lines))
                .map_err(|error| tracing::error!(%error, "cannot start the audit log writer"))
                .ok()
                .map(|thread| {
                    Arc::new(Writer {
                        sender: Some(sender),
                        thread: Some(thread),
                    })
                })
        });
        Self { writer }
    }

    /// Records `event`.
    pub fn record(&self, event: AuditEvent) {
        tracing::info!(target: "postern::audit", user = event.user.as_deref().unwrap_or("-"), route = %event.route,
            tool = event.tool.as_deref().unwrap_or("-"), decision = event.decision, rule = %event.rule,
            status = event.status.unwrap_or(0), latency_ms = event.latency_ms.unwrap_or(0.0), request_id = %event.request_id, "mcp");
        if let Some(sender) = self.writer.as_ref().and_then(|w| w.sender.as_ref()) {
            let line = serde_json::to_string(&event).unwrap_or_default();
            if sender.send(line).is_err() {
                tracing::error!("the audit log writer has stopped; a record was not written");
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: waits for a line, writes it and everything queued behind it, flushes.
/// While lines keep coming it sleeps a little between batches instead of waiting on the queue,
/// so that under load a record costs its sender no wake-up of this thread (a futex call per
/// tool call was a tenth of the gateway's CPU time); when a batch finds the queue empty it waits
/// on the queue again. Ends when every sender is gone and the queue is empty.
fn write_lines(path: &Path, lines: Receiver<String>) {
    let mut file: Option<BufWriter<File>> = None;
    while let Ok(first) = lines.recv() {
        let mut pending = Some(first);
        while let Some(first) = pending.take() {
            if file.is_none() {
                file = open(path);
            }
            let Some(out) = file.as_mut() else {
                break;
            };
            let mut written = 1;
            let mut result = writeln!(out, "{first}");
            for line in lines.try_iter().take(4096) {
                if result.is_err() {
                    break;
                }
                result = writeln!(out, "{line}");
                written += 1;
            }
            if let Err(error) = result.and_then(|()| out.flush()) {
                tracing::error!(file = %path.display(), %error, "cannot write the audit log");
                // Reopened for the next line (the file may have been moved or the disk freed).
                file = None;
            }
            if written > 1 {
                std::thread::sleep(BATCH_PAUSE);
                pending = lines.try_recv().ok();
            }
        }
    }
}

/// How long the writer waits between batches while traffic lasts: records reach the file at
/// most this much later.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

fn open(path: &Path) -> Option<BufWriter<File>> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(f) => Some(BufWriter::with_capacity(64 * 1024, f)),
        Err(error) => {
            tracing::error!(file = %path.display(), %error, "cannot open the audit log");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> AuditEvent {
        AuditEvent {
            time_ms: 0,
            request_id: format!("r{n}"),
            user: Some("ada@example.com".into()),
            session: None,
            route: "sqlite".into(),
            method: Some("tools/call".into()),
            tool: Some("read_query".into()),
            decision: "allow",
            rule: "allow: policy.allow".into(),
            status: Some(200),
            latency_ms: Some(1.0),
            complete: Some(true),
        }
    }

    #[test]
    fn every_record_from_many_threads_is_written_in_full_by_the_time_the_log_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.jsonl");
        let audit = Audit::new(Some(path.clone()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let audit = audit.clone();
                std::thread::spawn(move || {
                    for i in 0..5000 {
                        audit.record(event(t * 5000 + i));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(audit);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut ids: Vec<usize> = text
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                value["request_id"].as_str().unwrap()[1..].parse().unwrap()
            })
            .collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..20_000).collect::<Vec<_>>());
    }
}
