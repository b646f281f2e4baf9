//! `tools/list` filtering: on a route with `mcp_tool` rules, the user sees only the tools they
//! may call, wherever a client would read a tool list: every event stream (the answer to a POST,
//! a GET stream, a replay after a reconnect), and a JSON answer to a request that asked for
//! `tools/list` (a JSON answer is matched by id to its request, so one to a `tools/call` is not
//! read as a list, and is passed through without being parsed).
//!
//! It fails closed: a body it cannot read is not passed on. Postern asks the server for
//! uncompressed bodies (`Accept-Encoding: identity`), so a compressed one is refused rather than
//! decoded; SSE is parsed as the spec says (lines end in CRLF, LF or CR; an event ends at a blank
//! line) and streamed event by event, so long-lived GET streams are filtered too; an event whose
//! data is not JSON is dropped.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use postern_gateway::body::{Body, BoxError, full};
use serde_json::{Value, json};

use crate::enforcement::mcp;

/// Largest JSON body, or SSE event, the filter holds at once.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Whether the user may call a tool.
pub type MayCall = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Filters the tool lists in `response`: in event streams always, in a JSON answer when
/// `json_too` (it answers a request that asked for one).
pub async fn filter_response(
    may_call: MayCall,
    response: Response<Body>,
    request_id: &str,
    json_too: bool,
) -> Response<Body> {
    let media = Media::of(response.headers());
    if !media.may_list_tools(json_too) {
        return response;
    }
    let encoded = response
        .headers()
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    if encoded {
        return unfilterable(
            "the MCP server compressed its response although Postern asked for none (Accept-Encoding: identity), so its tool list cannot be filtered",
            request_id,
        );
    }
    let (mut parts, body) = response.into_parts();
    match media {
        Media::EventStream => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, SseFilter::new(body, may_call).boxed())
        }
        Media::Json => {
            let declared = postern_gateway::body::declared_length(&parts.headers);
            // No deadline of its own: the upstream's body is already under the route's
            // `idle_timeout`, like any response the gateway streams.
            let read = postern_gateway::body::read_bounded(body, declared, MAX_MESSAGE_BYTES, None);
            let Ok(bytes) = read.await else {
                return unfilterable(
                    "the MCP server's response could not be read whole (too large or cut off), so its tool list cannot be filtered",
                    request_id,
                );
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Response::from_parts(parts, full(bytes));
            }
            if !might_list_tools(&bytes) {
                return Response::from_parts(parts, full(bytes));
            }
            // Strictly: with a key given twice, clients that take the first (the filter, like
            // serde_json, reads the last) would see a list the filter did not.
            let Ok(mut message) = mcp::parse_strict(&bytes) else {
                return unfilterable(
                    "the MCP server's response is not JSON (or gives a key twice), so its tool list cannot be filtered",
                    request_id,
                );
            };
            let bytes = if filter_message(&mut message, &*may_call) {
                Bytes::from(message.to_string())
            } else {
                bytes
            };
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, full(bytes))
        }
        // Not an MCP message body (an error page, 202 with nothing): no client reads tools there.
        Media::Other => Response::from_parts(parts, body),
    }
}

/// The kind of body a response carries, by its `Content-Type` (read without allocating: this
/// runs for every response of a route with tool rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// `application/json`.
    Json,
    /// `text/event-stream`.
    EventStream,
    /// Anything else (no MCP message a client would read).
    Other,
}

impl Media {
    /// The media type of a response with these headers.
    pub fn of(headers: &http::HeaderMap) -> Self {
        let essence = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map_or("", str::trim);
        if essence.eq_ignore_ascii_case("application/json") {
            Media::Json
        } else if essence.eq_ignore_ascii_case("text/event-stream") {
            Media::EventStream
        } else {
            Media::Other
        }
    }

    /// Whether a body of this kind can carry a tool list a client would read: an event stream
    /// always, a JSON answer when `json_too` (it answers a request that asked for one).
    pub fn may_list_tools(self, json_too: bool) -> bool {
        match self {
            Media::EventStream => true,
            Media::Json => json_too,
            Media::Other => false,
        }
    }
}

/// Whether JSON text can hold a `tools` key: it names it, or escapes characters (`\u0074ools`).
/// Most responses (tool results) hold neither and need no parsing.
fn might_list_tools(json: &[u8]) -> bool {
    json.windows(5).any(|w| w == b"tools") || json.windows(2).any(|w| w == b"\\u")
}

/// Filters one JSON-RPC message or batch; whether anything changed.
fn filter_message(message: &mut Value, may_call: &dyn Fn(&str) -> bool) -> bool {
    match message {
        Value::Array(batch) => batch
            .iter_mut()
            .fold(false, |changed, m| mcp::filter_tools(m, may_call) | changed),
        single => mcp::filter_tools(single, may_call),
    }
}

fn unfilterable(why: &str, request_id: &str) -> Response<Body> {
    tracing::warn!(request_id, why, "response dropped");
    let mut response = Response::new(full(
        json!({"error": "unfilterable_response", "message": why, "status": 502, "request_id": request_id})
            .to_string(),
    ));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The `data` of an SSE event (its `data:` lines joined with newlines, as a client reads them),
/// if it has any.
pub(crate) fn event_data(event: &str) -> Option<String> {
    let mut data: Option<String> = None;
    for line in event.split('\n') {
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            }
        }
    }
    data.filter(|d| !d.is_empty())
}

/// Filters one SSE event (its lines, without the blank line that ends it); `None` drops it.
pub fn filter_event(event: &str, may_call: &dyn Fn(&str) -> bool) -> Option<String> {
    if event.starts_with('\u{feff}') {
        // A byte order mark (other than the stream's first, which the splitter drops) makes the
        // first field no field here, but a client drops one at the start of what it reads: were
        // this event the first the filter sends on, the client would read its data unfiltered.
        return None;
    }
    let Some(data) = event_data(event) else {
        // Comments, `retry:`, an id with empty data (a resumption point): nothing to filter.
        return Some(event.to_owned());
    };
    let might_list = might_list_tools(data.as_bytes());
    // A message that may hold a tool list is read strictly: with a key given twice, clients
    // that take the first would see a list the filter (taking the last) did not.
    let mut message = if might_list {
        mcp::parse_strict(data.as_bytes()).ok()?
    } else {
        serde_json::from_str::<Value>(&data).ok()?
    };
    if !might_list || !filter_message(&mut message, may_call) {
        return Some(event.to_owned());
    }
    let mut out = String::new();
    for line in event
        .split('\n')
        .filter(|l| l.split_once(':').map_or(*l, |(f, _)| f) != "data")
    {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("data: ");
    out.push_str(&message.to_string());
    Some(out)
}

/// Splits an SSE byte stream into events, whatever its line endings.
#[derive(Default)]
pub struct EventSplitter {
    /// The current event's lines, line endings made `\n`.
    pending: Vec<u8>,
    /// The last byte seen was a CR (a following LF belongs to it).
    after_cr: bool,
    /// An event (or blank line) has been taken: a byte order mark is no longer the stream's.
    past_start: bool,
}

impl EventSplitter {
    /// Feeds `chunk`; returns the events it completed (without their blank line). `Err` when an
    /// event grows over [`MAX_MESSAGE_BYTES`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, &'static str> {
        let mut events = Vec::new();
        for &byte in chunk {
            let newline = match byte {
                b'\n' if self.after_cr => {
                    self.after_cr = false;
                    continue;
                }
                b'\r' => {
                    self.after_cr = true;
                    true
                }
                b'\n' => true,
                other => {
                    self.after_cr = false;
                    self.pending.push(other);
                    false
                }
            };
            if newline {
                if self.pending.last() == Some(&b'\n') || self.pending.is_empty() {
                    // A blank line: the event ends (an empty one is nothing).
                    if let Some(event) = self.take_event() {
                        events.push(event);
                    }
                } else {
                    self.pending.push(b'\n');
                }
            }
            if self.pending.len() > MAX_MESSAGE_BYTES {
                return Err("an SSE event is larger than the filter holds");
            }
        }
        Ok(events)
    }

    fn take_event(&mut self) -> Option<String> {
        let mut bytes = std::mem::take(&mut self.pending);
        if !std::mem::replace(&mut self.past_start, true) && bytes.starts_with(b"\xef\xbb\xbf") {
            // Clients decode the stream as UTF-8, which drops a leading byte order mark: left
            // on, it hid the first event's `data` field from the filter (`\u{feff}data`), and
            // the client read its tool list unfiltered.
            bytes.drain(..3);
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return None;
        }
        // Not UTF-8: not an MCP message; it is dropped as unparseable by `filter_event`.
        Some(String::from_utf8(bytes).unwrap_or_else(|_| "data: \u{fffd}".into()))
    }
}

/// A body that passes SSE events through [`filter_event`] as they complete. An event left
/// unfinished when the stream ends is dropped, as SSE clients drop it.
struct SseFilter {
    inner: Body,
    splitter: EventSplitter,
    ready: VecDeque<Bytes>,
    may_call: MayCall,
}

impl SseFilter {
    fn new(inner: Body, may_call: MayCall) -> Self {
        Self {
            inner,
            splitter: EventSplitter::default(),
            ready: VecDeque::new(),
            may_call,
        }
    }
}

impl HttpBody for SseFilter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(bytes) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(bytes))));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let frame = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    let events = match this.splitter.push(&frame) {
                        Ok(events) => events,
                        Err(why) => return Poll::Ready(Some(Err(why.into()))),
                    };
                    let mut out = String::new();
                    for event in events {
                        match filter_event(&event, &*this.may_call) {
                            Some(kept) => {
                                out.push_str(&kept);
                                out.push_str("\n\n");
                            }
                            None => tracing::warn!(
                                "dropped an SSE event whose data is not a JSON message, or gives a key twice (tool lists are filtered on this route)"
                            ),
                        }
                    }
                    if !out.is_empty() {
                        this.ready.push_back(Bytes::from(out));
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn may_call() -> MayCall {
        Arc::new(|name: &str| name != "write_query")
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"read_query"},{"name":"write_query"}]}}"#;

    async fn filtered(
        content_type: &str,
        encoding: Option<&str>,
        chunks: &[&[u8]],
    ) -> (u16, String) {
        let body = Chunks(chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect()).boxed();
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        if let Some(encoding) = encoding {
            response.headers_mut().insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_str(encoding).unwrap(),
            );
        }
        let response = filter_response(may_call(), response, "r1", true).await;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// An upstream body sent in these chunks.
    struct Chunks(VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    #[tokio::test]
    async fn json_and_every_sse_framing_are_filtered() {
        let (status, json) =
            filtered("application/json; charset=utf-8", None, &[LIST.as_bytes()]).await;
        assert_eq!(status, 200);
        assert!(
            json.contains("read_query") && !json.contains("write_query"),
            "{json}"
        );
        for ending in ["\n", "\r\n", "\r"] {
            let event = format!("id: 1{ending}event: message{ending}data: {LIST}{ending}{ending}");
            // Split anywhere, even between a CR and its LF.
            let bytes = event.as_bytes();
            for cut in [1, bytes.len() / 2, bytes.len() - 1] {
                let (status, sse) =
                    filtered("text/event-stream", None, &[&bytes[..cut], &bytes[cut..]]).await;
                assert_eq!(status, 200);
                assert!(
                    sse.contains("read_query") && !sse.contains("write_query"),
                    "line ending {ending:?}, cut at {cut}: {sse:?}"
                );
                assert!(sse.starts_with("id: 1\nevent: message\ndata: "), "{sse:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_byte_order_mark_hides_no_tool_list() {
        // Clients drop a BOM at the start of what they read: the filter must see the event the
        // client sees (issue 17's properties found both).
        for stream in [
            format!("\u{feff}data: {LIST}\n\n"),
            format!("\u{feff}\u{feff}data: {LIST}\n\n"),
            format!("data: not json\n\n\u{feff}data: {LIST}\n\n"),
        ] {
            let bytes = stream.as_bytes();
            for cut in [1, 2, 3, 4, bytes.len() - 1] {
                let (status, sse) =
                    filtered("text/event-stream", None, &[&bytes[..cut], &bytes[cut..]]).await;
                assert_eq!(status, 200);
                assert!(
                    !sse.contains("write_query"),
                    "{stream:?} cut at {cut}: {sse:?}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_tool_list_giving_a_key_twice_is_not_passed_on() {
        // serde_json (and the filter) read the last `tools`, a client taking the first would
        // read `write_query`.
        let twice = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"write_query"}],"tools":[{"name":"read_query"}]}}"#;
        let (status, json) = filtered("application/json", None, &[twice.as_bytes()]).await;
        assert_eq!(status, 502, "{json}");
        assert!(json.contains("gives a key twice"), "{json}");
        let event = format!("data: {twice}\n\n");
        let (status, sse) = filtered("text/event-stream", None, &[event.as_bytes()]).await;
        assert_eq!(status, 200);
        assert!(!sse.contains("write_query"), "{sse:?}");
    }

    #[tokio::test]
    async fn what_cannot_be_filtered_is_not_passed_on() {
        let (status, body) = filtered("application/json", Some("gzip"), &[b"\x1f\x8b..."]).await;
        assert_eq!(status, 502, "{body}");
        let (status, _) = filtered("text/event-stream", Some("br"), &[b"..."]).await;
        assert_eq!(status, 502);
        let (status, _) = filtered("application/json", None, &[b"{\"tools\": [oops"]).await;
        assert_eq!(status, 502);
        let (_, sse) = filtered(
            "text/event-stream",
            None,
            &[
                b"data: {\"result\":{\"tools\":[{\"name\":\"write_query\"}]\n\ndata: ",
                LIST.as_bytes(),
                b"\n\n: ping\n\n",
            ],
        )
        .await;
        assert!(!sse.contains("write_query"), "{sse}");
        assert!(
            sse.contains("read_query") && sse.contains(": ping"),
            "{sse}"
        );
        // A batch inside one event.
        let (_, sse) = filtered(
            "text/event-stream",
            None,
            &[format!("data: [{LIST}]\n\n").as_bytes()],
        )
        .await;
        assert!(
            !sse.contains("write_query") && sse.contains("read_query"),
            "{sse}"
        );
    }

    #[tokio::test]
    async fn a_json_answer_to_other_calls_is_not_parsed_but_streams_are_filtered() {
        let body = Chunks(VecDeque::from([Bytes::from_static(
            TOOLS_IN_A_RESULT.as_bytes(),
        )]))
        .boxed();
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let passed = filter_response(may_call(), response, "r1", false).await;
        let bytes = passed.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes, TOOLS_IN_A_RESULT.as_bytes(), "untouched");
        let body = Chunks(VecDeque::from([Bytes::from(format!("data: {LIST}\n\n"))])).boxed();
        let mut response = Response::new(body);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        let filtered = filter_response(may_call(), response, "r1", false).await;
        let bytes = filtered.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("read_query") && !text.contains("write_query"),
            "{text}"
        );
    }

    const TOOLS_IN_A_RESULT: &str = r#"{"jsonrpc":"2.0","id":2,"result":{"content":[{"type":"text","text":"write_query tools"}]}}"#;

    #[test]
    fn empty_data_and_comments_pass() {
        let allow_all = |_: &str| true;
        assert_eq!(
            filter_event("id: 5\ndata:", &allow_all).as_deref(),
            Some("id: 5\ndata:")
        );
        assert_eq!(
            filter_event(": keep-alive", &allow_all).as_deref(),
            Some(": keep-alive")
        );
        assert_eq!(filter_event("data: not json", &allow_all), None);
    }
}

/// Property-based tests (issue 17, hostile input): thousands of generated event streams per
/// run (`PROPTEST_CASES` raises it).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    fn cases() -> ProptestConfig {
        ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(3000),
        )
    }

    fn may_call(name: &str) -> bool {
        name != "write"
    }

    /// What the filter sends on for `stream` cut into chunks at `cuts`, as `SseFilter` does.
    fn filter(stream: &[u8], cuts: &[usize]) -> Result<Vec<u8>, &'static str> {
        let mut splitter = EventSplitter::default();
        let mut out = Vec::new();
        let mut start = 0;
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        ends.sort_unstable();
        ends.push(stream.len());
        for end in ends {
            for event in splitter.push(&stream[start..end])? {
                if let Some(kept) = filter_event(&event, &may_call) {
                    out.extend_from_slice(kept.as_bytes());
                    out.extend_from_slice(b"\n\n");
                }
            }
            start = end;
        }
        Ok(out)
    }

    /// The events' data a client reads from `stream`, as the HTML standard's SSE parser does
    /// (UTF-8 decode dropping a leading BOM; CRLF, LF or CR; an unfinished event is dropped).
    fn client_reads(stream: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(stream);
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        let mut events = Vec::new();
        let mut data = String::new();
        let mut rest = text;
        while let Some(end) = rest.find(['\r', '\n']) {
            let line = &rest[..end];
            let skip = if rest[end..].starts_with("\r\n") {
                2
            } else {
                1
            };
            rest = &rest[end + skip..];
            if line.is_empty() {
                if !data.is_empty() {
                    data.pop();
                    events.push(std::mem::take(&mut data));
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            if field == "data" {
                data.push_str(value);
                data.push('\n');
            }
        }
        events
    }

    /// The names of the tools a client finds in a message's `result.tools` (batches too).
    fn listed_tools(data: &str) -> Vec<String> {
        let Ok(message) = serde_json::from_str::<Value>(data) else {
            return Vec::new();
        };
        let messages = match message {
            Value::Array(batch) => batch,
            single => vec![single],
        };
        messages
            .iter()
            .filter_map(|m| m.pointer("/result/tools")?.as_array().cloned())
            .flatten()
            .filter_map(|t| t.get("name")?.as_str().map(str::to_owned))
            .collect()
    }

    const TOOLS_KEYS: &[&str] = &["tools", "\\u0074ools", "t\\u006fols"];
    const TOOLS: &[&str] = &[
        r#"{"name":"read"}"#,
        r#"{"name":"write"}"#,
        r#"{"name":"wr\u0069te"}"#,
        r#"{"name":"read","name":"write"}"#,
        r#"{"name":"write","name":"read"}"#,
        r#"{"title":"write"}"#,
    ];

    /// A `tools/list` answer, sometimes with its `tools` key twice or escaped.
    fn tool_list() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(
                (
                    prop::sample::select(TOOLS_KEYS),
                    prop::collection::vec(prop::sample::select(TOOLS), 0..4),
                ),
                1..3,
            ),
            any::<bool>(),
        )
            .prop_map(|(lists, batch)| {
                let result = lists
                    .iter()
                    .map(|(key, tools)| format!(r#""{key}":[{}]"#, tools.join(",")))
                    .collect::<Vec<_>>()
                    .join(",");
                let message = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{{result}}}}}"#);
                if batch {
                    format!("[{message}]")
                } else {
                    message
                }
            })
    }

    /// One line of an event.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (tool_list(), prop::sample::select(&["data: ", "data:", "data:  "][..]))
                .prop_map(|(list, field)| format!("{field}{list}")),
            // A list cut over several data lines (joined with a newline, JSON whitespace).
            2 => (tool_list(), any::<prop::sample::Index>()).prop_map(|(list, at)| {
                let cut = list.char_indices().map(|(i, _)| i).filter(|&i| list[..i].ends_with(',')).collect::<Vec<_>>();
                match cut.get(at.index(cut.len().max(1))) {
                    Some(&i) => format!("data: {}\ndata: {}", &list[..i], &list[i..]),
                    None => format!("data: {list}"),
                }
            }),
            1 => Just("data".to_owned()),
            1 => Just(": a comment".to_owned()),
            1 => Just("id: 42".to_owned()),
            1 => Just("event: message".to_owned()),
            1 => Just("retry: 100".to_owned()),
            1 => Just("\u{feff}data: {\"result\":{\"tools\":[{\"name\":\"write\"}]}}".to_owned()),
            1 => Just("DATA: x".to_owned()),
            1 => "\\PC{0,12}",
        ]
    }

    /// A stream: events of lines, with any line endings, an optional BOM.
    fn stream() -> impl Strategy<Value = Vec<u8>> {
        (
            any::<bool>(),
            prop::collection::vec(
                (
                    prop::collection::vec(line(), 1..4),
                    prop::sample::select(&["\n", "\r\n", "\r"][..]),
                ),
                0..5,
            ),
        )
            .prop_map(|(bom, events)| {
                let mut out = if bom {
                    "\u{feff}".to_owned()
                } else {
                    String::new()
                };
                for (lines, eol) in events {
                    for line in lines {
                        out.push_str(&line.replace('\n', eol));
                        out.push_str(eol);
                    }
                    out.push_str(eol);
                }
                out.into_bytes()
            })
    }

    proptest! {
        #![proptest_config(cases())]

        /// However the stream is written and cut, the client finds no tool it may not call.
        #[test]
        fn no_forbidden_tool_reaches_the_client(
            stream in stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let out = filter(&stream, &cuts).unwrap();
            for data in client_reads(&out) {
                for tool in listed_tools(&data) {
                    prop_assert!(may_call(&tool), "{:?} reached the client from {:?}", tool, String::from_utf8_lossy(&stream));
                }
                // No key given twice: a client taking the first of two reads the same list.
                if serde_json::from_str::<Value>(&data).is_ok() && might_list_tools(data.as_bytes()) {
                    prop_assert!(mcp::parse_strict(data.as_bytes()).is_ok(), "{:?} passed on", data);
                }
            }
            // Where the cuts fall changes nothing.
            prop_assert_eq!(&out, &filter(&stream, &[]).unwrap());
            // Every JSON event the client would have read still arrives (but for events with
            // a byte order mark inside, which are dropped: fail closed).
            let bom = stream.windows(3).any(|w| w == b"\xef\xbb\xbf");
            let before = client_reads(&stream)
                .iter()
                .filter(|d| if might_list_tools(d.as_bytes()) {
                    mcp::parse_strict(d.as_bytes()).is_ok()
                } else {
                    serde_json::from_str::<Value>(d).is_ok()
                })
                .count();
            let after = client_reads(&out).len();
            prop_assert!(bom || after >= before, "{} events became {}", before, after);
        }

        /// Arbitrary bytes, cut anywhere, never panic the splitter or the filter, and what
        /// comes out is the same wherever the cuts fall.
        #[test]
        fn arbitrary_bytes_never_panic(
            stream in prop::collection::vec(prop::sample::select(&b"data: {}[]\"tools\r\n:\xef\xbb\xbf\xff"[..]), 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let out = filter(&stream, &cuts).unwrap();
            prop_assert_eq!(&out, &filter(&stream, &[]).unwrap());
            for data in client_reads(&out) {
                for tool in listed_tools(&data) {
                    prop_assert!(may_call(&tool));
                }
            }
        }
    }

    #[test]
    fn a_byte_order_mark_does_not_hide_an_event() {
        // Found by the properties above: two BOMs (the filter dropped one, the client the
        // other), or one after a dropped event (the first the client reads).
        for stream in [
            &b"\xef\xbb\xbf\xef\xbb\xbfdata: {\"result\":{\"tools\":[{\"name\":\"write\"}]}}\n\n"[..],
            b"data: not json\n\n\xef\xbb\xbfdata: {\"result\":{\"tools\":[{\"name\":\"write\"}]}}\n\n",
        ] {
            let out = filter(stream, &[]).unwrap();
            assert_eq!(client_reads(&out), Vec::<String>::new());
        }
    }

    #[test]
    fn a_byte_order_mark_does_not_hide_the_first_event() {
        let stream = b"\xef\xbb\xbfdata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"read\"},{\"name\":\"write\"}]}}\n\n";
        // The BOM split from the rest, too.
        for cuts in [vec![], vec![1], vec![2], vec![3]] {
            let out = filter(stream, &cuts).unwrap();
            let read = client_reads(&out);
            assert_eq!(read.len(), 1, "{cuts:?}");
            assert_eq!(listed_tools(&read[0]), ["read"], "{cuts:?}");
        }
    }
}
