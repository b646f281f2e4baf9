//! The audit log of MCP traffic: one JSON object per line, for every denied request and every
//! tool call (time, user, session, route, tool, decision and the rule that made it, status,
//! latency). Written as `postern::audit` log events and appended to `data_dir/audit.jsonl`, which
//! an admin can read with `jq`. With `authorize_log_fields` a record carries its essentials and
//! exactly the selected fields instead ([`fields`]).

pub(crate) mod fields;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use postern_config::AuthorizeLogField;
use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::Route;
use postern_policy::McpRequest;
use postern_store::{Session, now_ms};
use serde::Serialize;

use crate::enforcement::audit::fields::{Bounded, LogFields, RequestFacts, Selected};
use crate::web::untrusted::{Untrusted, needs_escape, truncate};

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
    /// The MCP client whose token made the request; absent for a browser session or anonymous
    /// (so those records keep the shape they always had).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
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
    /// With `authorize_log_fields`: the request's selected fields, taken at authorize time.
    #[serde(skip)]
    pub facts: Option<Arc<RequestFacts>>,
    /// With `mcp-tool-parameters` selected: the `tools/call`'s arguments.
    #[serde(skip)]
    pub tool_arguments: Option<Bounded>,
    /// The aggregate route the call came through (`route` is then the member, `tool` the
    /// member's own name for the tool); absent for a call made on the member's own URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate: Option<String>,
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
            client_id: None,
            route: route.to_owned(),
            method: call.map(|c| c.method.clone()),
            tool: call.and_then(|c| c.tool.clone()),
            decision: if allowed { "allow" } else { "deny" },
            rule: rule.to_owned(),
            status: None,
            latency_ms: None,
            complete: None,
            facts: None,
            tool_arguments: None,
            aggregate: None,
        }
    }
}

/// An identity event: a sign-in (or a failed one), a sign-out, a token issued, refreshed,
/// refused or revoked, a grant revoked, an OAuth denial, an upstream account connected or
/// disconnected. One line of the audit file whose `"event"` names it (the MCP records have no
/// `event`), and one `postern::audit` line in the text log. Fields a client or user chose
/// (`user` on a failed sign-in is what was typed, `client_id`, `reason`) are cut to
/// [`FIELD_CAP`] bytes; the JSON escapes them and the text log quotes and escapes them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IdentityEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// What happened: `sign_in`, `sign_in_failed`, `sign_in_rate_limited`, `sign_out`,
    /// `authorize_denied`, `code_issued`, `token_issued`, `token_refreshed`, `token_refused`,
    /// `token_revoked`, `grant_revoked`, `upstream_connected`, `upstream_disconnected`,
    /// `upstream_token_refresh_failed`.
    pub event: &'static str,
    /// The gateway's request id.
    pub request_id: String,
    /// The user (email); on `sign_in_failed`, the email that was typed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The MCP client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Why (a refusal's error code, the rule that denied, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The client's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
}

impl IdentityEvent {
    /// `event` during the request `ctx`.
    pub fn new(event: &'static str, ctx: &RequestContext) -> Self {
        Self {
            time_ms: now_ms(),
            event,
            request_id: ctx.request_id.clone(),
            client_addr: Some(ctx.client_addr.ip().to_string()),
            ..Self::default()
        }
    }

    /// For `user`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(capped(user.into()));
        self
    }

    /// For the MCP client `client_id`.
    pub fn client(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(capped(client_id.into()));
        self
    }

    /// On `route`.
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(capped(route.into()));
        self
    }

    /// Because of `reason`.
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(capped(reason.into()));
        self
    }
}

/// At most [`FIELD_CAP`] bytes of `value`, `…` marking a cut.
fn capped(mut value: String) -> String {
    let (kept, cut) = truncate(&value, FIELD_CAP);
    if cut > 0 {
        let kept = kept.len();
        value.truncate(kept);
        value.push('…');
    }
    value
}

/// The audit log. Lines go to a writer thread that appends them in batches (one `write` per
/// batch, flushed as soon as the queue is empty), so a tool call costs the request path no file
/// I/O or lock; when the queue is full (the disk is slower than the traffic) callers wait rather
/// than lose records. Dropping the last handle writes what is queued and joins the thread.
#[derive(Clone)]
pub struct Audit {
    writer: Option<Arc<Writer>>,
    /// `authorize_log_fields`, compiled; `None`: the fixed record. Swapped on reload.
    fields: Arc<arc_swap::ArcSwapOption<LogFields>>,
}

/// The queue into the writer thread; its drop writes what is queued and joins the thread.
struct Writer {
    sender: Option<SyncSender<String>>,
    thread: Option<JoinHandle<()>>,
}

/// Lines that may wait for the writer.
const QUEUE: usize = 16 * 1024;

impl Audit {
    /// Appends to `path` (created when first needed), and logs; records carry the `selected`
    /// fields when the configuration names some (`authorize_log_fields`).
    pub fn new(path: Option<PathBuf>, selected: Option<&[AuthorizeLogField]>) -> Self {
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
        let fields = selected.map(|s| Arc::new(LogFields::compile(s)));
        Self {
            writer,
            fields: Arc::new(arc_swap::ArcSwapOption::new(fields)),
        }
    }

    /// The fields records carry besides their essentials, when `authorize_log_fields` is set.
    pub fn fields(&self) -> Option<Arc<LogFields>> {
        self.fields.load_full()
    }

    /// Puts a reloaded `authorize_log_fields` in force for the records made from now on.
    pub fn set_fields(&self, selected: Option<&[AuthorizeLogField]>) {
        self.fields
            .store(selected.map(|s| Arc::new(LogFields::compile(s))));
    }

    /// Records an identity event: the audit file and the text log.
    pub fn event(&self, event: IdentityEvent) {
        let text = |v: &Option<String>| Untrusted(v.as_deref().unwrap_or("-")).to_string();
        tracing::info!(target: "postern::audit", event = event.event, user = %text(&event.user),
            client_id = %text(&event.client_id), route = %text(&event.route), reason = %text(&event.reason),
            client = %text(&event.client_addr), request_id = %event.request_id, "identity");
        if let Some(sender) = self.writer.as_ref().and_then(|w| w.sender.as_ref()) {
            self.send(sender, serde_json::to_string(&event).unwrap_or_default());
        }
    }

    /// Records `event`, its client-chosen fields cut to [`FIELD_CAP`] bytes (see
    /// [`AuditEvent::cap_fields`]).
    pub fn record(&self, mut event: AuditEvent) {
        let truncated = event.cap_fields();
        if let Some(fields) = self.fields.load_full() {
            self.record_selected(&event, &fields, &truncated);
            return;
        }
        // logfmt: every value a user, client or configuration chose is quoted and escaped.
        tracing::info!(target: "postern::audit", user = %Untrusted(event.user.as_deref().unwrap_or("-")), route = %Untrusted(&event.route),
            client_id = %Untrusted(event.client_id.as_deref().unwrap_or("-")),
            tool = %Untrusted(event.tool.as_deref().unwrap_or("-")), decision = event.decision, rule = %Untrusted(&event.rule),
            status = event.status.unwrap_or(0), latency_ms = event.latency_ms.unwrap_or(0.0), request_id = %event.request_id, "mcp");
        if let Some(sender) = self.writer.as_ref().and_then(|w| w.sender.as_ref()) {
            let mut line = serde_json::to_string(&event).unwrap_or_default();
            if !truncated.is_empty() && line.ends_with('}') {
                // `"truncated":["tool"]` names the fields that were cut.
                line.pop();
                line.push_str(",\"truncated\":");
                line.push_str(&serde_json::to_string(&truncated).unwrap_or_default());
                line.push('}');
            }
            self.send(sender, line);
        }
    }

    /// A record with `authorize_log_fields`: its JSON goes to the file and, whole, to the log
    /// (the log line carries exactly what the file does).
    fn record_selected(&self, event: &AuditEvent, fields: &LogFields, truncated: &[&'static str]) {
        let line = serde_json::to_string(&Selected {
            event,
            fields,
            truncated,
        })
        .unwrap_or_default();
        tracing::info!(target: "postern::audit", route = %Untrusted(&event.route), decision = event.decision,
            record = %LogSafe(&line), "mcp");
        if let Some(sender) = self.writer.as_ref().and_then(|w| w.sender.as_ref()) {
            self.send(sender, line);
        }
    }

    fn send(&self, sender: &SyncSender<String>, line: String) {
        if sender.send(line).is_err() {
            tracing::error!("the audit log writer has stopped; a record was not written");
        }
    }
}

/// A JSON record on its way into the text log: the characters JSON leaves raw that move or hide
/// text on a terminal (DEL, C1 controls such as CSI, bidirectional overrides) written as `\uXXXX`
/// escapes, so the line stays one valid JSON object.
struct LogSafe<'a>(&'a str);

impl std::fmt::Display for LogSafe<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        for c in self.0.chars() {
            if needs_escape(c) {
                // Every such character is in the Basic Multilingual Plane: one escape each.
                write!(f, "\\u{:04x}", c as u32)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Largest client-chosen audit field, in bytes: a record stays small whatever a client sends
/// (a 900 KB tool name would otherwise write 900 KB to the file and the log per call).
pub const FIELD_CAP: usize = 256;

impl AuditEvent {
    /// Cuts the fields a client or user chooses (user, method, tool, rule, which may quote a
    /// tool) to [`FIELD_CAP`] bytes, ending each cut one with `…`; returns their names.
    pub fn cap_fields(&mut self) -> Vec<&'static str> {
        fn cap(value: &mut String) -> bool {
            let (kept, cut) = truncate(value, FIELD_CAP);
            if cut == 0 {
                return false;
            }
            let kept = kept.len();
            value.truncate(kept);
            value.push('…');
            true
        }
        let mut truncated = Vec::new();
        for (name, value) in [
            ("user", self.user.as_mut()),
            ("method", self.method.as_mut()),
            ("tool", self.tool.as_mut()),
            ("rule", Some(&mut self.rule)),
        ] {
            if value.is_some_and(cap) {
                truncated.push(name);
            }
        }
        truncated
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
    let mut fault = Fault::default();
    while let Ok(first) = lines.recv() {
        let mut pending = Some(first);
        while let Some(first) = pending.take() {
            let mut count = 1;
            let opened = match file.take() {
                Some(out) => Ok(out),
                None => open(path),
            };
            let result = opened.and_then(|mut out| {
                let mut result = writeln!(out, "{first}");
                for line in lines.try_iter().take(4096) {
                    count += 1;
                    if result.is_ok() {
                        result = writeln!(out, "{line}");
                    }
                }
                match result.and_then(|()| out.flush()) {
                    Ok(()) => {
                        file = Some(out);
                        Ok(())
                    }
                    Err(error) => {
                        // Reopened for the next batch (the file may have been moved or the
                        // disk freed); what is left in the buffer is dropped, not written
                        // later after records that came after it.
                        let _ = out.into_parts();
                        Err(error)
                    }
                }
            });
            match result {
                Ok(()) => fault.recovered(path),
                Err(error) => fault.failed(path, &error, count),
            }
            // Pausing after every write, a lone record included, lets the next records queue
            // while the writer sleeps: under steady traffic the request path then never wakes
            // this thread (a futex call and a context switch per record at one connection).
            std::thread::sleep(BATCH_PAUSE);
            pending = lines.try_recv().ok();
        }
    }
}

/// How long the writer waits between batches while traffic lasts: records reach the file at
/// most this much later.
const BATCH_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// How often a failing audit file is reported while it keeps failing.
const FAULT_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Records the file could not take while it fails (a full disk, a missing directory): reported
/// once, then every [`FAULT_REPORT_EVERY`] (not once per batch, every 5 ms, into a log that may
/// be on the same full disk), and once more when writing works again.
#[derive(Default)]
struct Fault {
    /// Records not written since the fault began.
    lost: u64,
    reported: Option<std::time::Instant>,
}

impl Fault {
    fn failed(&mut self, path: &Path, error: &std::io::Error, records: u64) {
        self.lost += records;
        if self
            .reported
            .is_none_or(|at| at.elapsed() >= FAULT_REPORT_EVERY)
        {
            self.reported = Some(std::time::Instant::now());
            tracing::error!(file = %path.display(), %error, records_not_written = self.lost,
                "cannot write the audit log (each record is also in the text log, target postern::audit); \
                 free space or fix the file's directory: writing resumes by itself");
        }
    }

    fn recovered(&mut self, path: &Path) {
        if self.lost > 0 {
            tracing::warn!(file = %path.display(), records_not_written = self.lost,
                "the audit log is written again; the records it could not take are in the text log");
        }
        *self = Self::default();
    }
}

/// The audit file, for appending. A record a failed write cut off (a full disk) is ended first:
/// the next record starts on a line of its own, so every whole line stays one JSON object.
fn open(path: &Path) -> std::io::Result<BufWriter<File>> {
    use std::io::{Read, Seek, SeekFrom};
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).read(true).append(true);
    // Only the gateway's user may read who called which tool.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    let torn = file.seek(SeekFrom::End(-1)).is_ok() && {
        let mut last = [0u8];
        file.read_exact(&mut last).is_ok() && last[0] != b'\n'
    };
    if torn {
        file.write_all(b"\n")?;
    }
    Ok(BufWriter::with_capacity(64 * 1024, file))
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
            client_id: Some("client-1".into()),
            route: "sqlite".into(),
            method: Some("tools/call".into()),
            tool: Some("read_query".into()),
            decision: "allow",
            rule: "allow: policy.allow".into(),
            status: Some(200),
            latency_ms: Some(1.0),
            complete: Some(true),
            facts: None,
            tool_arguments: None,
            aggregate: None,
        }
    }

    /// The `key=value` pairs of a logfmt line: a value is a bare word or a double-quoted string
    /// with backslash escapes; words without `=` (the level, the message) are skipped. Panics on
    /// anything else, e.g. an unquoted space inside a value.
    fn logfmt(line: &str) -> std::collections::HashMap<String, String> {
        let mut pairs = std::collections::HashMap::new();
        let mut rest = line.trim();
        while !rest.is_empty() {
            let word_end = rest.find([' ', '=']).unwrap_or(rest.len());
            let (key, after) = rest.split_at(word_end);
            let Some(after) = after.strip_prefix('=') else {
                rest = after.trim_start();
                continue;
            };
            let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => {
                            let (_, c) = chars.next().expect("an escape ends the line");
                            value.push('\\');
                            value.push(c);
                        }
                        Some((i, '"')) => break i + 1,
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated quote in {line}"),
                    }
                };
                (value, &quoted[end..])
            } else {
                let end = after.find(' ').unwrap_or(after.len());
                (after[..end].to_owned(), &after[end..])
            };
            assert!(
                after.is_empty() || after.starts_with(' '),
                "a value runs on after its end in {line}"
            );
            assert!(!key.is_empty(), "an empty key in {line}");
            pairs.insert(key.to_owned(), value);
            rest = after.trim_start();
        }
        pairs
    }

    /// What `f` logs, in the text format without colours, time or target.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buffer {
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
            .with_target(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    fn test_ctx() -> RequestContext {
        let env: std::collections::HashMap<String, String> = Default::default();
        let config =
            postern_config::parse("insecure_server: true\n", Path::new("."), &env).unwrap();
        RequestContext {
            request_id: "0123456789abcdef".into(),
            client_addr: "10.0.0.7:5000".parse().unwrap(),
            scheme: "http",
            host: "localhost".into(),
            port: 80,
            started: std::time::Instant::now(),
            browser: false,
            runtime: Arc::new(postern_gateway::Runtime::new(config)),
            client_certificate: None,
            metrics: Default::default(),
        }
    }

    #[test]
    fn audit_text_lines_are_logfmt_whatever_the_values() {
        let audit = Audit::new(None, None);
        let forged = "evil\" user=admin@corp\n2026 INFO postern::audit: x=y \u{1b}[2J";
        let long = "é".repeat(400);
        let text = logged(|| {
            let mut call = event(1);
            call.rule = "allow: policy.allow or[0] (mcp_tool)".into();
            call.tool = Some(forged.into());
            audit.record(call);
            audit.event(
                IdentityEvent::new("sign_in_failed", &test_ctx())
                    .user(forged)
                    .reason(long.as_str()),
            );
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines.len(),
            2,
            "one line each, a newline in a value forges none: {text}"
        );
        let mcp = logfmt(lines[0]);
        assert_eq!(mcp["rule"], "allow: policy.allow or[0] (mcp_tool)");
        assert_eq!(mcp["client_id"], "client-1");
        assert_eq!(mcp["decision"], "allow");
        assert!(mcp["tool"].starts_with("evil\\\""), "{}", mcp["tool"]);
        let identity = logfmt(lines[1]);
        assert_eq!(identity["event"], "sign_in_failed");
        assert_eq!(identity["client"], "10.0.0.7");
        assert_eq!(identity["request_id"], "0123456789abcdef");
        assert!(identity["user"].contains("\\n2026"), "{}", identity["user"]);
        assert!(
            identity["reason"].ends_with("bytes)"),
            "a cut value says so inside its quotes: {}",
            identity["reason"]
        );
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    /// A record a full disk cut off stays alone on its line: the records written after the
    /// fault each start a line of their own and read as JSON.
    #[test]
    fn a_record_cut_off_by_a_failed_write_does_not_swallow_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"tool\":\"whole\"}\n{\"tool\":\"cut of").unwrap();
        let audit = Audit::new(Some(path.clone()), None);
        audit.record(event(7));
        drop(audit);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[1], "{\"tool\":\"cut of");
        let record: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
        assert_eq!(record["request_id"], "r7");
    }

    #[test]
    fn client_chosen_fields_are_capped_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Audit::new(Some(path.clone()), None);
        let mut huge = event(1);
        huge.tool = Some(format!("abc{}", "x".repeat(900 * 1024)));
        huge.method = Some("tools/call\u{1b}[2J".into());
        audit.record(huge);
        audit.record(event(2));
        drop(audit);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 2048, "{} bytes", text.len());
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let tool = lines[0]["tool"].as_str().unwrap();
        assert!(tool.starts_with("abcxxx") && tool.ends_with('…'), "{tool}");
        assert_eq!(tool.len(), FIELD_CAP + '…'.len_utf8());
        assert_eq!(lines[0]["truncated"], serde_json::json!(["tool"]));
        assert_eq!(
            lines[0]["method"], "tools/call\u{1b}[2J",
            "short fields are kept as sent"
        );
        assert!(lines[1].get("truncated").is_none(), "{}", lines[1]);
    }

    #[test]
    fn every_record_from_many_threads_is_written_in_full_by_the_time_the_log_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/audit.jsonl");
        let audit = Audit::new(Some(path.clone()), None);
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
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
    }
}
