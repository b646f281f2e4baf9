//! `authorize_log_fields`: which optional fields an audit record carries (Pomerium's names,
//! compiled once into [`LogFields`]), what a request contributes to them (taken at authorize
//! time into [`RequestFacts`], since the request is gone when the response ends), and the record
//! they make ([`Selected`]).
//!
//! Every value a client, user or identity provider chose is bounded: text fields to
//! [`FIELD_CAP`] bytes, structured ones (tool arguments, headers, claims) to
//! [`STRUCTURED_CAP`] bytes of JSON, so a record stays small whatever a request carries.
//! Credentials never reach the record: the headers that carry them are written `[redacted]`.

use std::io;
use std::sync::Arc;

use http::HeaderName;
use http::header::HeaderMap;
use postern_config::AuthorizeLogField;
use postern_gateway::hooks::RequestContext;
use postern_store::Session;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use super::{AuditEvent, FIELD_CAP};
use crate::web::untrusted::truncate;

/// Largest structured field (tool arguments, headers, claims), in bytes of its JSON.
pub const STRUCTURED_CAP: usize = 4096;

/// What a credential-carrying header's value is written as.
pub const REDACTED: &str = "[redacted]";

/// Request headers that carry credentials: their values are never recorded.
const CREDENTIALS: [&str; 5] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-pomerium-authorization",
    "x-pomerium-jwt-assertion",
];

/// The selected fields, compiled from the configuration once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogFields {
    request_id: bool,
    email: bool,
    user_id: bool,
    session: bool,
    host: bool,
    ip: bool,
    http_method: bool,
    path: bool,
    query: bool,
    method: bool,
    tool: bool,
    /// Whether `tools/call` arguments are kept when the request is read.
    pub tool_arguments: bool,
    headers: Headers,
    claims: bool,
    removed_groups_count: bool,
}

/// Which request headers are recorded.
#[derive(Clone, Debug, Default, PartialEq)]
enum Headers {
    #[default]
    None,
    All,
    /// These (lower-case, as `http` names them).
    Only(Vec<HeaderName>),
}

impl LogFields {
    /// From `authorize_log_fields` (the fields Postern cannot provide are left out; loading
    /// the configuration warned about them).
    pub fn compile(selected: &[AuthorizeLogField]) -> Self {
        let mut fields = Self::default();
        for field in selected {
            match field {
                AuthorizeLogField::RequestId => fields.request_id = true,
                AuthorizeLogField::Email => fields.email = true,
                AuthorizeLogField::User => fields.user_id = true,
                AuthorizeLogField::SessionId => fields.session = true,
                AuthorizeLogField::Host => fields.host = true,
                AuthorizeLogField::Ip => fields.ip = true,
                AuthorizeLogField::Method => fields.http_method = true,
                AuthorizeLogField::Path => fields.path = true,
                AuthorizeLogField::Query => fields.query = true,
                AuthorizeLogField::McpMethod => fields.method = true,
                AuthorizeLogField::McpTool => fields.tool = true,
                AuthorizeLogField::McpToolParameters => fields.tool_arguments = true,
                AuthorizeLogField::Headers => fields.headers = Headers::All,
                AuthorizeLogField::Header(name) => {
                    // The configuration checked the name; one `http` refuses is skipped.
                    let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                        continue;
                    };
                    match &mut fields.headers {
                        Headers::All => {}
                        Headers::Only(names) if names.contains(&name) => {}
                        Headers::Only(names) => names.push(name),
                        Headers::None => fields.headers = Headers::Only(vec![name]),
                    }
                }
                AuthorizeLogField::IdTokenClaims => fields.claims = true,
                AuthorizeLogField::RemovedGroupsCount => fields.removed_groups_count = true,
                AuthorizeLogField::Unavailable { .. } => {}
            }
        }
        fields
    }

    /// The selected facts of a request, taken when it is authorized. `removed_groups` is how
    /// many of the user's groups the route's assertion leaves out.
    pub fn capture<B>(
        &self,
        ctx: &RequestContext,
        request: &http::Request<B>,
        session: Option<&Session>,
        removed_groups: usize,
    ) -> Arc<RequestFacts> {
        let mut facts = RequestFacts::default();
        let text = |facts: &mut RequestFacts, name: &'static str, value: Option<&str>| {
            let value = value.map_or(Value::Null, |v| {
                let (kept, cut) = truncate(v, FIELD_CAP);
                if cut == 0 {
                    Value::String(v.to_owned())
                } else {
                    facts.cut.push(name);
                    Value::String(format!("{kept}…"))
                }
            });
            facts.entries.push((name, value));
        };
        if self.email {
            text(&mut facts, "email", session.map(|s| s.email.as_str()));
        }
        if self.user_id {
            text(&mut facts, "user_id", session.map(|s| s.user_id.as_str()));
        }
        if self.session {
            text(&mut facts, "session", session.map(|s| s.id.as_str()));
        }
        if self.host {
            let default = if ctx.scheme == "https" { 443 } else { 80 };
            let host = if ctx.port == default {
                ctx.host.clone()
            } else {
                format!("{}:{}", ctx.host, ctx.port)
            };
            text(&mut facts, "host", Some(&host));
        }
        if self.ip {
            let ip = ctx.client_addr.ip().to_string();
            text(&mut facts, "ip", Some(&ip));
        }
        if self.http_method {
            text(&mut facts, "http_method", Some(request.method().as_str()));
        }
        if self.path {
            text(&mut facts, "path", Some(request.uri().path()));
        }
        if self.query {
            text(&mut facts, "query", request.uri().query());
        }
        if self.headers != Headers::None {
            let (headers, cut) = self.headers.of(request.headers());
            if cut {
                facts.cut.push("headers");
            }
            facts.entries.push(("headers", Value::Object(headers)));
        }
        if self.claims {
            let claims = session.map_or(Bounded::whole(Value::Null), |s| Bounded::of(&s.claims));
            if claims.cut {
                facts.cut.push("claims");
            }
            facts.entries.push(("claims", claims.value));
        }
        if self.removed_groups_count {
            facts
                .entries
                .push(("removed_groups_count", Value::from(removed_groups)));
        }
        Arc::new(facts)
    }
}

impl Headers {
    /// The selected headers of `headers`, name to value (several values joined with `, `),
    /// credentials redacted; each name and value cut to [`FIELD_CAP`] bytes, and headers left
    /// out once [`STRUCTURED_CAP`] bytes are used. Also whether anything was cut or left out.
    fn of(&self, headers: &HeaderMap) -> (Map<String, Value>, bool) {
        let mut selected = Map::new();
        let mut used = 0;
        let mut cut = false;
        let names: Box<dyn Iterator<Item = &HeaderName>> = match self {
            Headers::None => return (selected, false),
            Headers::All => Box::new(headers.keys()),
            Headers::Only(names) => Box::new(names.iter()),
        };
        for name in names {
            let mut values = headers.get_all(name).iter().peekable();
            if values.peek().is_none() {
                continue;
            }
            let value = if CREDENTIALS.contains(&name.as_str()) {
                REDACTED.to_owned()
            } else {
                let mut joined = String::new();
                for value in values {
                    if !joined.is_empty() {
                        joined.push_str(", ");
                    }
                    joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
                    if joined.len() > FIELD_CAP {
                        break;
                    }
                }
                joined
            };
            let (name, name_cut) = truncate(name.as_str(), FIELD_CAP);
            let (kept, value_cut) = truncate(&value, FIELD_CAP);
            let mut kept = kept.to_owned();
            if value_cut > 0 {
                kept.push('…');
            }
            // The member as JSON (`"name":"value",`, escapes included), inside `{}`.
            let json_len = |text: &str| serde_json::to_string(text).map_or(0, |t| t.len());
            let size = json_len(name) + json_len(&kept) + 2;
            if used + size > STRUCTURED_CAP - 2 {
                cut = true;
                break;
            }
            used += size;
            cut |= name_cut > 0 || value_cut > 0;
            selected.insert(name.to_owned(), Value::String(kept));
        }
        (selected, cut)
    }
}

/// What a request contributes to its records, in record order: only the selected fields.
#[derive(Debug, Default)]
pub struct RequestFacts {
    entries: Vec<(&'static str, Value)>,
    /// The fields that were cut to their cap.
    cut: Vec<&'static str>,
}

/// A JSON value someone else chose, bounded: whole when its JSON fits in [`STRUCTURED_CAP`]
/// bytes, else the start of its JSON text ending with `…`.
#[derive(Clone, Debug, PartialEq)]
pub struct Bounded {
    /// The value, or the start of its JSON text.
    pub value: Value,
    /// Whether it was cut.
    pub cut: bool,
}

impl Bounded {
    fn whole(value: Value) -> Self {
        Self { value, cut: false }
    }

    /// `value`, bounded. Serializing stops at the cap: a huge value costs no more than a small
    /// one.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> Self {
        let mut text = Capped(Vec::with_capacity(256));
        if serde_json::to_writer(&mut text, value).is_ok() {
            return Self::whole(serde_json::to_value(value).unwrap_or(Value::Null));
        }
        let kept = match std::str::from_utf8(&text.0) {
            Ok(text) => text,
            // Cut inside a character: keep the whole ones.
            Err(e) => std::str::from_utf8(&text.0[..e.valid_up_to()]).unwrap_or_default(),
        };
        Self {
            value: Value::String(format!("{kept}…")),
            cut: true,
        }
    }
}

/// A writer that takes [`STRUCTURED_CAP`] bytes and then fails.
struct Capped(Vec<u8>);

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = STRUCTURED_CAP - self.0.len();
        if data.len() > room {
            self.0.extend_from_slice(&data[..room]);
            return Err(io::Error::other("the value is larger than the cap"));
        }
        self.0.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An audit record with `authorize_log_fields`: the essentials (`time_ms`, `route`,
/// `decision`, `rule`, `status`, `latency_ms`, `complete`, and `truncated` when something was
/// cut) and exactly the selected fields.
pub struct Selected<'a> {
    /// The record.
    pub event: &'a AuditEvent,
    /// What is selected.
    pub fields: &'a LogFields,
    /// The event's own fields that were cut ([`AuditEvent::cap_fields`]).
    pub truncated: &'a [&'static str],
}

impl Serialize for Selected<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (event, fields) = (self.event, self.fields);
        let mut record = serializer.serialize_map(None)?;
        record.serialize_entry("time_ms", &event.time_ms)?;
        if fields.request_id {
            record.serialize_entry("request_id", &event.request_id)?;
        }
        record.serialize_entry("route", &event.route)?;
        let facts = event.facts.as_deref();
        for (name, value) in facts.map(|f| &f.entries[..]).unwrap_or_default() {
            record.serialize_entry(name, value)?;
        }
        if fields.method {
            record.serialize_entry("method", &event.method)?;
        }
        if fields.tool {
            record.serialize_entry("tool", &event.tool)?;
        }
        if fields.tool_arguments {
            let arguments = event.tool_arguments.as_ref().map(|a| &a.value);
            record.serialize_entry("tool_arguments", &arguments)?;
        }
        record.serialize_entry("decision", event.decision)?;
        record.serialize_entry("rule", &event.rule)?;
        record.serialize_entry("status", &event.status)?;
        record.serialize_entry("latency_ms", &event.latency_ms)?;
        record.serialize_entry("complete", &event.complete)?;
        let mut truncated: Vec<&str> = self
            .truncated
            .iter()
            .copied()
            .filter(|name| match *name {
                "method" => fields.method,
                "tool" => fields.tool,
                "rule" => true,
                _ => false,
            })
            .collect();
        truncated.extend(facts.map(|f| &f.cut[..]).unwrap_or_default());
        if fields.tool_arguments && event.tool_arguments.as_ref().is_some_and(|a| a.cut) {
            truncated.push("tool_arguments");
        }
        if !truncated.is_empty() {
            record.serialize_entry("truncated", &truncated)?;
        }
        record.end()
    }
}

#[cfg(test)]
mod tests;
