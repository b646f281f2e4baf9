//! Reading MCP (JSON-RPC) requests on their way to a server, strictly enough that the policy
//! can't be bypassed: the body must be `application/json`, parse completely, contain no
//! duplicate keys (parsers disagree on which duplicate wins, which would let a request show the
//! gateway one tool and the server another), and every request of a batch is checked. Method
//! names are compared without regard to case, for the same reason.
//!
//! Also: the JSON-RPC error for a denied call, and filtering `tools/list` results, in JSON and in
//! SSE responses.

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
            return Err(InspectError::Malformed(
                "a message is not a JSON object".into(),
            ));
        };
        match object.get("method") {
            Some(Value::String(method)) => {
                let is_tool_call = method.eq_ignore_ascii_case("tools/call");
                let tool = if is_tool_call {
                    match object.get("params").and_then(|p| p.get("name")) {
                        Some(Value::String(name)) => Some(name.clone()),
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
            Some(_) => return Err(InspectError::Malformed("`method` is not a string".into())),
            None if object.contains_key("result") || object.contains_key("error") => {}
            None => {
                return Err(InspectError::Malformed(
                    "neither a request nor a response".into(),
                ));
            }
        }
    }
    Ok(calls)
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
