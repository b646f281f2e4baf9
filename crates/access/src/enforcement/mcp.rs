//! Reading MCP (JSON-RPC) requests on their way to a server, strictly enough that the policy
//! can't be bypassed: the body must be `application/json`, parse completely, contain no
//! duplicate keys (parsers disagree on which duplicate wins, which would let a request show the
//! gateway one tool and the server another), and every request of a batch is checked. Method
//! names are compared without regard to case, for the same reason.
//!
//! Also: the JSON-RPC error for a denied call, and filtering `tools/list` results, in JSON and in
//! SSE responses.

use std::borrow::Cow;
use std::fmt;

use postern_policy::McpRequest;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::enforcement::audit::fields::Bounded;

/// One JSON-RPC request (or notification) of a message.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// The id (`None` for notifications).
    pub id: Option<Value>,
    /// What the policy sees.
    pub request: McpRequest,
    /// A `tools/call`'s `params.arguments`, bounded, when the audit records them
    /// (`mcp-tool-parameters`); `None` otherwise.
    pub arguments: Option<Bounded>,
}

/// Why a body was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    /// Not `application/json`.
    #[error("MCP requests must be sent as application/json (got {0:?})")]
    ContentType(String),
    /// Not JSON, or not JSON-RPC.
    #[error("the request body is not a valid JSON-RPC message: {0}")]
    Malformed(String),
}

/// The most messages one batch may hold. Each is checked against the policy and each
/// `tools/call` gets an audit record: without a bound, one request of `max_request_bytes`
/// (tens of thousands of tiny calls) would cost that much work and fill the audit queue, and
/// clients send batches of a few (MCP has had none since 2025-06-18).
pub const MAX_BATCH: usize = 100;

/// The JSON-RPC messages in a POST body to an MCP endpoint. Responses (a client answering a
/// server's request) carry no method and are returned as nothing to check.
/// Each `tools/call`'s arguments are kept (bounded) when `arguments` is set.
pub fn inspect(
    content_type: Option<&str>,
    body: &[u8],
    arguments: bool,
) -> Result<Vec<Call>, InspectError> {
    let media = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media != "application/json" {
        return Err(InspectError::ContentType(
            content_type.unwrap_or("none").to_owned(),
        ));
    }
    let messages = parse_messages(body, arguments).map_err(InspectError::Malformed)?;
    if messages.is_empty() {
        return Err(InspectError::Malformed("an empty batch".into()));
    }
    let mut calls = Vec::new();
    for message in messages {
        let Some(message) = message else {
            return Err(InspectError::Malformed(
                "a message is not a JSON object".into(),
            ));
        };
        match message.method {
            Some(Value::String(method)) => {
                let is_tool_call = method.eq_ignore_ascii_case("tools/call");
                let tool = if is_tool_call {
                    match message.name {
                        Some(Value::String(name)) => Some(name),
                        _ => {
                            return Err(InspectError::Malformed(
                                "tools/call without a string params.name".into(),
                            ));
                        }
                    }
                } else {
                    None
                };
                let method = if is_tool_call {
                    "tools/call".to_owned()
                } else {
                    method
                };
                let arguments = (arguments && is_tool_call)
                    .then(|| Bounded::of(message.arguments.as_ref().unwrap_or(&Value::Null)));
                calls.push(Call {
                    id: message.id,
                    request: McpRequest { method, tool },
                    arguments,
                });
            }
            Some(_) => return Err(InspectError::Malformed("`method` is not a string".into())),
            None if message.response => {}
            None => {
                return Err(InspectError::Malformed(
                    "neither a request nor a response".into(),
                ));
            }
        }
    }
    Ok(calls)
}

/// What the policy reads of one JSON-RPC message (a JSON object); the rest of the message is
/// parsed as strictly (every key at every depth unique) and dropped, so a large `arguments` is
/// scanned once and never copied. Fields given as other JSON types keep their value, for the
/// checks in [`inspect`].
#[derive(Default)]
struct Message {
    method: Option<Value>,
    id: Option<Value>,
    /// `params.name`, when `params` is an object that has it.
    name: Option<Value>,
    /// `params.arguments`, only when asked for.
    arguments: Option<Value>,
    /// It has `result` or `error`.
    response: bool,
}

/// The messages of a body: a batch's, or the one message; `None` for one that is not an
/// object. Every byte is parsed (the body must be one JSON value, no key given twice anywhere).
fn parse_messages(body: &[u8], arguments: bool) -> Result<Vec<Option<Message>>, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let messages = Messages { arguments }
        .deserialize(&mut deserializer)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(messages)
}

/// Visits a JSON scalar as `$value` (the scalar itself is checked by serde_json).
macro_rules! scalars_are {
    ($value:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// The whole body: a batch (array) of messages, or one message.
struct Messages {
    arguments: bool,
}

impl<'de> DeserializeSeed<'de> for Messages {
    type Value = Vec<Option<Message>>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Messages {
    type Value = Vec<Option<Message>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message or batch")
    }
    scalars_are!(vec![None]);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut messages = Vec::new();
        while let Some(message) = seq.next_element_seed(MessageSeed(self.arguments))? {
            if messages.len() == MAX_BATCH {
                return Err(de::Error::custom(format!(
                    "a batch holds more than {MAX_BATCH} messages; send at most {MAX_BATCH} in one request"
                )));
            }
            messages.push(message);
        }
        Ok(messages)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(vec![MessageSeed(self.arguments).visit_map(map)?])
    }
}

/// One message of a body (`.0`: keep `params.arguments`).
struct MessageSeed(bool);

impl<'de> DeserializeSeed<'de> for MessageSeed {
    type Value = Option<Message>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MessageSeed {
    type Value = Option<Message>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON-RPC message")
    }
    scalars_are!(None);
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut message = Message::default();
        let mut keys = Keys::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            keys.insert(key.clone())?;
            match key.as_ref() {
                "method" => message.method = Some(map.next_value_seed(StrictValue)?),
                "id" => message.id = Some(map.next_value_seed(StrictValue)?),
                "params" => {
                    (message.name, message.arguments) = map.next_value_seed(ParamsSeed(self.0))?;
                }
                "result" | "error" => {
                    message.response = true;
                    map.next_value_seed(Strict)?;
                }
                _ => map.next_value_seed(Strict)?,
            }
        }
        Ok(Some(message))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Strict.visit_seq(seq).map(|()| None)
    }
}

/// A message's `params`: its `name` and (when kept) `arguments`, if it is an object.
struct ParamsSeed(bool);

impl<'de> DeserializeSeed<'de> for ParamsSeed {
    type Value = (Option<Value>, Option<Value>);
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ParamsSeed {
    type Value = (Option<Value>, Option<Value>);
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON-RPC params")
    }
    scalars_are!((None, None));
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut name, mut arguments) = (None, None);
        let mut keys = Keys::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            keys.insert(key.clone())?;
            match key.as_ref() {
                "name" => name = Some(map.next_value_seed(StrictValue)?),
                "arguments" if self.0 => arguments = Some(map.next_value_seed(StrictValue)?),
                _ => map.next_value_seed(Strict)?,
            }
        }
        Ok((name, arguments))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Strict.visit_seq(seq).map(|()| (None, None))
    }
}

/// Any JSON value, checked as strictly as [`parse_strict`] checks it, and dropped.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    scalars_are!(());
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Strict)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = Keys::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            keys.insert(key.clone())?;
            map.next_value_seed(Strict)?;
        }
        Ok(())
    }
}

/// An object's keys so far, decoded (`"a"` and `"\u0061"` are the same key), to refuse one
/// given twice. Borrowed from the body when it spells them without escapes.
#[derive(Default)]
struct Keys<'de>(std::collections::HashSet<Cow<'de, str>>);

impl<'de> Keys<'de> {
    fn insert<E: de::Error>(&mut self, key: Cow<'de, str>) -> Result<(), E> {
        if self.0.contains(&key) {
            return Err(E::custom(format!("duplicate key {:?}", key.as_ref())));
        }
        self.0.insert(key);
        Ok(())
    }
}

/// An object key, borrowed when the body spells it without escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

/// Parses JSON, refusing duplicate object keys.
pub fn parse_strict(body: &[u8]) -> Result<Value, String> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value = StrictValue
        .deserialize(&mut deserializer)
        .map_err(|e| e.to_string())?;
    deserializer.end().map_err(|e| e.to_string())?;
    Ok(value)
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!("duplicate key {key:?}")));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The JSON-RPC error for a denied request (`-32602`, as Pomerium answers), naming the tool and
/// the request id to look up in the audit log.
pub fn denial(id: Option<&Value>, tool: Option<&str>, request_id: &str) -> Value {
    let what = tool.map_or_else(|| "this request".to_owned(), |t| format!("the tool `{t}`"));
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": {
            "code": -32602,
            "message": format!("access denied: policy does not allow {what} for you (request {request_id})"),
            "data": {"request_id": request_id, "tool": tool},
        },
    })
}

/// Removes from a `tools/list` result the tools `allowed` refuses. Returns whether anything
/// changed.
pub fn filter_tools(message: &mut Value, allowed: &dyn Fn(&str) -> bool) -> bool {
    let Some(tools) = message
        .pointer_mut("/result/tools")
        .and_then(Value::as_array_mut)
    else {
        return false;
    };
    let before = tools.len();
    tools.retain(|tool| {
        tool.get("name")
            .and_then(Value::as_str)
            .is_some_and(allowed)
    });
    tools.len() != before
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const JSON: Option<&str> = Some("application/json");

    fn inspect(content_type: Option<&str>, body: &[u8]) -> Result<Vec<Call>, InspectError> {
        super::inspect(content_type, body, false)
    }

    fn tool_names(calls: &[Call]) -> Vec<Option<String>> {
        calls.iter().map(|c| c.request.tool.clone()).collect()
    }

    /// The inspector before it skipped what the policy does not read: the whole body parsed
    /// into a value, then read. The reference the streaming inspector must agree with.
    fn inspect_by_value(body: &[u8], arguments: bool) -> Result<Vec<Call>, InspectError> {
        let value = parse_strict(body).map_err(InspectError::Malformed)?;
        let messages = match value {
            Value::Array(items) if items.is_empty() => {
                return Err(InspectError::Malformed("an empty batch".into()));
            }
            Value::Array(items) => items,
            other => vec![other],
        };
        let mut calls = Vec::new();
        for message in messages {
            let Value::Object(object) = message else {
                return Err(InspectError::Malformed("not an object".into()));
            };
            match object.get("method") {
                Some(Value::String(method)) => {
                    let is_tool_call = method.eq_ignore_ascii_case("tools/call");
                    let tool = if is_tool_call {
                        match object.get("params").and_then(|p| p.get("name")) {
                            Some(Value::String(name)) => Some(name.clone()),
                            _ => return Err(InspectError::Malformed("no name".into())),
                        }
                    } else {
                        None
                    };
                    let method = if is_tool_call {
                        "tools/call".to_owned()
                    } else {
                        method.clone()
                    };
                    let arguments = (arguments && is_tool_call).then(|| {
                        let given = object.get("params").and_then(|p| p.get("arguments"));
                        Bounded::of(given.unwrap_or(&Value::Null))
                    });
                    calls.push(Call {
                        id: object.get("id").cloned(),
                        request: McpRequest { method, tool },
                        arguments,
                    });
                }
                Some(_) => return Err(InspectError::Malformed("method".into())),
                None if object.contains_key("result") || object.contains_key("error") => {}
                None => return Err(InspectError::Malformed("neither".into())),
            }
        }
        Ok(calls)
    }

    /// Both inspectors accept the same bodies and find the same calls; a refusal is a refusal
    /// in both (the message may differ: serde's position in the text).
    pub(super) fn agrees_with_the_reference(body: &[u8]) {
        for arguments in [false, true] {
            match (
                super::inspect(JSON, body, arguments),
                inspect_by_value(body, arguments),
            ) {
                (Ok(fast), Ok(reference)) => {
                    assert_eq!(fast, reference, "{}", String::from_utf8_lossy(body))
                }
                (Err(_), Err(_)) => {}
                (fast, reference) => panic!(
                    "{}: {fast:?} but the reference {reference:?}",
                    String::from_utf8_lossy(body)
                ),
            }
        }
    }

    #[test]
    fn the_streaming_inspector_agrees_with_the_whole_value_one() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":[1,{"b":null}]}}}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t"}},{"id":2,"result":{}}]"#,
            r#"{"id":1,"method":"TOOLS/CALL","params":{"arguments":1,"name":"t"}}"#,
            r#"{"id":1,"method":"tools/call","params":[{"name":"t"}]}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":7}}"#,
            r#"{"id":1,"method":"tools/call","params":"x"}"#,
            r#"{"method":"ping","params":{"name":"t","name":"u"}}"#,
            r#"{"method":"ping","params":{"x":{"a":1,"\u0061":2}}}"#,
            r#"{"m\u0065thod":"tools/call","params":{"n\u0061me":"t"},"id":{"deep":[1,2]}}"#,
            r#"{"method":7}"#,
            r#"{"error":{}}"#,
            r#"{"jsonrpc":"2.0"}"#,
            r#"[]"#,
            r#"[1]"#,
            r#"[[{"method":"ping"}]]"#,
            r#""x""#,
            r#"null"#,
            r#"{"method":"ping"} x"#,
            r#"{"method":"ping",}"#,
            r#"{"id":1,"method":"tools/call","params":{"name":"t","arguments":{"q":"\ud800"}}}"#,
            r#"{"id":1.5e3,"method":"tools/call","params":{"name":"t","arguments":{"n":1e999}}}"#,
        ] {
            agrees_with_the_reference(body.as_bytes());
        }
    }

    /// One request cannot carry more than [`MAX_BATCH`] messages (each is a policy decision
    /// and, for a tool call, an audit record); a batch of that many is read.
    #[test]
    fn a_batch_of_more_than_max_batch_messages_is_refused() {
        let batch = |n: usize| {
            let calls: Vec<Value> = (0..n)
                .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "x"}}))
                .collect();
            serde_json::to_vec(&calls).unwrap()
        };
        assert_eq!(inspect(JSON, &batch(MAX_BATCH)).unwrap().len(), MAX_BATCH);
        let error = inspect(JSON, &batch(MAX_BATCH + 1))
            .unwrap_err()
            .to_string();
        assert!(error.contains("at most 100 in one request"), "{error}");
        assert!(inspect(JSON, &batch(14_500)).is_err());
    }

    #[test]
    fn finds_every_call_of_a_batch() {
        let body = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "read_query", "arguments": {}}},
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "write_query"}},
            {"jsonrpc": "2.0", "id": 9, "result": {}}
        ]);
        let calls = inspect(JSON, body.to_string().as_bytes()).unwrap();
        assert_eq!(
            tool_names(&calls),
            [Some("read_query".into()), None, Some("write_query".into())]
        );
    }

    #[test]
    fn refuses_what_could_hide_a_call() {
        let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_query","name":"write_query"}}"#;
        assert!(
            matches!(inspect(JSON, call.as_bytes()), Err(InspectError::Malformed(m)) if m.contains("duplicate key"))
        );
        let dup_method = r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call","params":{"name":"x"}}"#;
        assert!(inspect(JSON, dup_method.as_bytes()).is_err());
        let ok = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#;
        assert_eq!(
            inspect(Some("text/plain"), ok.as_bytes()),
            Err(InspectError::ContentType("text/plain".into()))
        );
        assert!(inspect(None, ok.as_bytes()).is_err());
        assert!(inspect(Some("Application/JSON; charset=utf-8"), ok.as_bytes()).is_ok());
        assert!(inspect(JSON, format!("{ok} trailing").as_bytes()).is_err());
        assert!(inspect(JSON, b"[]").is_err());
        assert!(inspect(JSON, b"\"just a string\"").is_err());
        assert!(
            inspect(
                JSON,
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#
            )
            .is_err()
        );
        // Method names are compared without regard to case.
        let odd =
            r#"{"jsonrpc":"2.0","id":1,"method":"Tools/CALL","params":{"name":"write_query"}}"#;
        let calls = inspect(JSON, odd.as_bytes()).unwrap();
        assert_eq!(calls[0].request.method, "tools/call");
        assert_eq!(calls[0].request.tool.as_deref(), Some("write_query"));
    }

    #[test]
    fn filters_tool_lists() {
        let allowed = |name: &str| name != "write_query";
        let mut message = json!({"jsonrpc": "2.0", "id": 1, "result": {"tools": [{"name": "read_query"}, {"name": "write_query"}]}});
        assert!(filter_tools(&mut message, &allowed));
        assert_eq!(message["result"]["tools"], json!([{"name": "read_query"}]));
    }
}

/// Property-based tests (issue 17, hostile input): thousands of generated bodies per run
/// (`PROPTEST_CASES` raises it).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::tests::agrees_with_the_reference;
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    fn cases() -> ProptestConfig {
        ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(3000),
        )
    }

    /// JSON text for `value` with every character of every string (keys too) written as a
    /// `\uXXXX` escape where `escape` says so: what the server's parser decodes the same way.
    fn write(value: &Value, escape: &dyn Fn(usize) -> bool, at: &mut usize, out: &mut String) {
        let string = |s: &str, at: &mut usize, out: &mut String| {
            out.push('"');
            for c in s.chars() {
                *at += 1;
                if escape(*at) || c == '"' || c == '\\' || c.is_control() {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                } else {
                    out.push(c);
                }
            }
            out.push('"');
        };
        match value {
            Value::Object(map) => {
                out.push('{');
                for (i, (k, v)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    string(k, at, out);
                    out.push(':');
                    write(v, escape, at, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, escape, at, out);
                }
                out.push(']');
            }
            Value::String(s) => string(s, at, out),
            other => out.push_str(&other.to_string()),
        }
    }

    fn method() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("tools/call".to_owned()),
            Just("TOOLS/Call".to_owned()),
            Just("tools/list".to_owned()),
            Just("initialize".to_owned()),
            Just("notifications/initialized".to_owned()),
            "[a-zA-Z/_]{0,12}",
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            // Exactly representable: serde_json's default float parsing does not round-trip
            // every f64 (that is not what is tested here).
            (-4000i32..4000).prop_map(|n| Value::from(f64::from(n) / 8.0)),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// One JSON-RPC message: a request (sometimes without params or name), a notification or
    /// a response.
    fn message() -> impl Strategy<Value = Value> {
        (
            method(),
            prop::option::of("\\PC{0,10}"),
            json_value(),
            0..4u8,
        )
            .prop_map(|(method, name, arguments, kind)| match kind {
                0 => json!({"jsonrpc": "2.0", "id": 7, "result": arguments}),
                1 => json!({"jsonrpc": "2.0", "method": method}),
                _ => {
                    let mut params = json!({"arguments": arguments});
                    if let Some(name) = name {
                        params["name"] = Value::String(name);
                    }
                    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
                }
            })
    }

    /// What a server reads from `messages`: each request's method and, for a tool call, the
    /// tool it runs.
    fn server_reads(messages: &[Value]) -> Vec<(String, Option<String>)> {
        messages
            .iter()
            .filter_map(|m| {
                let method = m.get("method")?.as_str()?;
                let tool = m
                    .pointer("/params/name")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let call = method.eq_ignore_ascii_case("tools/call");
                Some((method.to_owned(), if call { tool } else { None }))
            })
            .collect()
    }

    proptest! {
        #![proptest_config(cases())]

        /// Whatever the spelling (escapes anywhere, batches), the inspector either refuses the
        /// body or sees every request, and for every tool call the tool the server runs.
        #[test]
        fn sees_what_the_server_runs(
            messages in prop::collection::vec(message(), 1..5),
            batch in any::<bool>(),
            escapes in any::<u64>(),
        ) {
            let value = if batch || messages.len() > 1 {
                Value::Array(messages.clone())
            } else {
                messages[0].clone()
            };
            let mut body = String::new();
            write(&value, &|i| escapes >> (i % 64) & 1 == 1, &mut 0, &mut body);
            // The text decodes to the value a server reads.
            prop_assert_eq!(&serde_json::from_str::<Value>(&body).unwrap(), &value);
            let expected = server_reads(&messages);
            match inspect(JSON, body.as_bytes(), false) {
                Ok(calls) => {
                    let seen: Vec<_> = calls
                        .iter()
                        .map(|c| (c.request.method.clone(), c.request.tool.clone()))
                        .collect();
                    prop_assert_eq!(seen.len(), expected.len());
                    for ((method, tool), (server_method, server_tool)) in seen.iter().zip(&expected) {
                        prop_assert!(method.eq_ignore_ascii_case(server_method));
                        prop_assert_eq!(tool, server_tool);
                    }
                }
                // Only a tool call without a string name is refused here.
                Err(e) => {
                    prop_assert!(
                        messages.iter().any(|m| {
                            m.get("method").and_then(Value::as_str).is_some_and(|x| x.eq_ignore_ascii_case("tools/call"))
                                && m.pointer("/params/name").and_then(Value::as_str).is_none()
                        }),
                        "refused {}: {}", body, e
                    );
                }
            }
        }

        /// A key given twice, at any depth and however it is spelled, is refused: parsers
        /// disagree on which one wins (serde_json and JavaScript take the last, others the
        /// first), so the gateway could check one tool and the server run another.
        #[test]
        fn duplicate_keys_are_refused_at_any_depth(
            key in prop_oneof![Just("method"), Just("name"), Just("params"), Just("id"), Just("arguments")],
            depth in 0..3usize,
            escapes in any::<u64>(),
            first in "[a-z/]{1,10}",
            second in "[a-z/]{1,10}",
        ) {
            let mut escape_key = String::new();
            for (i, c) in key.chars().enumerate() {
                if escapes >> i & 1 == 1 {
                    escape_key.push_str(&format!("\\u{:04x}", c as u32));
                } else {
                    escape_key.push(c);
                }
            }
            let mut inner = format!(r#"{{"{key}":"{first}","{escape_key}":"{second}"}}"#);
            for _ in 0..depth {
                inner = format!(r#"{{"x":{inner}}}"#);
            }
            let body = format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{{}},"nested":{inner}}}}}"#
            );
            prop_assert!(inspect(JSON, body.as_bytes(), false).is_err(), "{}", body);
            let top = format!(r#"{{"jsonrpc":"2.0","{key}":"a","id":1,"method":"tools/call","params":{{"name":"t"}},"{escape_key}":"b"}}"#);
            prop_assert!(inspect(JSON, top.as_bytes(), true).is_err(), "{}", top);
            let batched = format!(r#"[{{"jsonrpc":"2.0","method":"ping"}},{body}]"#);
            prop_assert!(inspect(JSON, batched.as_bytes(), false).is_err(), "{}", batched);
        }

        /// Anything the inspector accepts parses to the same value under serde_json's
        /// (last-key-wins) reading: the strict parser and a lenient server agree.
        #[test]
        fn what_is_accepted_reads_the_same_everywhere(body in prop::collection::vec(any::<u8>(), 0..200)) {
            agrees_with_the_reference(&body);
            if let Ok(strict) = parse_strict(&body) {
                prop_assert_eq!(Some(strict), serde_json::from_slice::<Value>(&body).ok());
            }
            let _ = inspect(JSON, &body, true);
        }

        /// Bytes that are nearly JSON-RPC (pieces of it, non-UTF-8, lone surrogates, huge
        /// numbers, deep nesting) never panic the inspector.
        #[test]
        fn hostile_bodies_never_panic(pieces in prop::collection::vec(prop::sample::select(PIECES), 0..40)) {
            let body: Vec<u8> = pieces.concat();
            agrees_with_the_reference(&body);
            if let Ok(strict) = parse_strict(&body) {
                prop_assert_eq!(Some(strict), serde_json::from_slice::<Value>(&body).ok());
            }
            let _ = inspect(JSON, &body, true);
        }

        /// Numbers of any size, as ids and arguments, never panic and never hide the tool.
        #[test]
        fn huge_numbers(digits in "-?[0-9]{1,400}(\\.[0-9]{1,50})?([eE][-+]?[0-9]{1,5})?") {
            let body = format!(r#"{{"jsonrpc":"2.0","id":{digits},"method":"tools/call","params":{{"name":"t","arguments":{{"n":{digits}}}}}}}"#);
            if let Ok(calls) = inspect(JSON, body.as_bytes(), true) {
                prop_assert_eq!(calls[0].request.tool.as_deref(), Some("t"));
            }
        }
    }

    const PIECES: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\"",
        b"\"method\"",
        b"\"m\\u0065thod\"",
        b"\"tools/call\"",
        b"\"\\u0074ools/call\"",
        b"\"params\"",
        b"\"name\"",
        b"\"x\"",
        b"\\",
        b"\\u",
        b"\\ud800",
        b"\\udc00",
        b"\\u0000",
        b"1e999999",
        b"-0",
        b"1e-400",
        b"18446744073709551616",
        b"null",
        b"true",
        b" ",
        b"\xff",
        b"\xc3",
        b"\xef\xbb\xbf",
        b"\x00",
    ];

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        for depth in [127, 128, 129, 1_000, 100_000] {
            for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
                let nested = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{nested}}}}}"#
                );
                // serde_json's recursion limit (128) refuses the deep ones with an error.
                let result = inspect(JSON, body.as_bytes(), true);
                assert_eq!(result.is_ok(), depth < 126, "depth {depth}: {result:?}");
            }
        }
    }
}
