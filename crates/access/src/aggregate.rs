//! The aggregate MCP route (`mcp: {aggregate: {servers: [...]}}`): one URL that federates
//! several MCP server routes of the configuration (its members), each still called with the
//! user's own upstream account (TI), its own identity assertion and its own policy.
//!
//! # Design
//!
//! - **No upstream of its own.** An aggregate route is an MCP server route for clients
//!   (protected resource metadata, OAuth through the gateway's authorization server, a TE whose
//!   audience is the aggregate's resource, consent naming it), but [`Access`](crate::Access)
//!   answers its requests itself (`intercept`) instead of proxying them.
//! - **Authorized twice, with the same code as a direct call.** The client's request is first
//!   decided by the aggregate's own policy ([`Enforcement::authorize`]). Each member call is
//!   then built as the request the user would have sent to the member's own URL and goes
//!   through the same functions as the proxy path: [`Enforcement::authorize_member`] (the
//!   member's policy and `mcp_tool` rules, evaluated for the identity the aggregate's TE
//!   proved), [`Enforcement::upstream_headers`] (the member's TI and an identity assertion
//!   whose audience is the member's host), the gateway's own [`forward`](postern_gateway::proxy::forward)
//!   to the member's upstream, and [`Enforcement::filter_response`] (tool lists filtered by the
//!   member's rules, tool calls audited with `route` = the member and `aggregate` = this
//!   route). Each call's headers are built afresh for that member: one member's TI or
//!   assertion never reaches another.
//! - **Names.** A member's tools and prompts are listed as `prefix + name`, its resources and
//!   templates as `prefix + uri`; the configuration refuses prefixes of which one begins
//!   another, so a name has at most one owner. A name a member lists that is not a valid tool
//!   name (MCP 2025-11-25: 1-128 of `A-Za-z0-9_-.`) once prefixed is dropped, with a log line.
//!   A member's answer is only ever read for its own entries: it cannot add names to another;
//!   on a call's stream only the answer to that call passes (answers to other ids, and
//!   batches, are dropped), so a member cannot answer the client's requests to other members.
//!   Nothing of a member reaches the client unread: an answer or event the gateway cannot
//!   parse (a lone surrogate escape), of another `Content-Type` (`application/json-seq`, which
//!   a client looking for `application/json` in the header reads), or behind a byte order mark
//!   is refused or dropped, as is an event too large once written again. A member's HTTP
//!   status stays its own (the answer is a JSON-RPC message), except a 404 to a request with
//!   its own session, which ends the aggregate session as MCP says. A member's
//!   `notifications/cancelled` names its own request by the mapped id.
//! - **Bounded merges.** A merged list, `initialize` answer or report stays one message the
//!   gateway can read whole (the aggregate's own tool rules read it): a member whose list would
//!   not fit is left out and reported `unavailable`; its instructions, error text and
//!   oversized capabilities are cut.
//! - **Fan-out.** `initialize` (and `server/discover`), the lists and `notifications/*` go to
//!   every member in parallel, each under its own timeout (`timeout`, default 30 s); calls go to
//!   the owner only. A member that fails or is slow is reported, never waited on beyond its
//!   timeout: lists carry `_meta["dev.postern/members"]`, one entry per member the user may use
//!   with its `state` (`ok`; `not_connected`: the user's upstream account is not connected,
//!   with `connect_url`; `unavailable`: down, slow or broken, with `reason`, which never holds
//!   the member's address or an OS error, as on the member's own URL), `initialize`'s
//!   `instructions` name the members missing, and a log line is written. A member whose policy
//!   refuses the user is named nowhere: not in lists, reports, instructions or the portal. A call to a missing or unconnected member's tool is a tool error
//!   (`isError: true`) saying why and, for an unconnected account, where to connect it.
//! - **State without a store.** The aggregate session id (`Mcp-Session-Id`) and pagination
//!   cursors are sealed (AES-GCM, the store's keys, see `postern_store::Keyring`): the session
//!   holds each member's session id, bound to the user, the client and the route; a cursor holds
//!   each member's own cursor, bound the same way. Any replica with the same shared secret can
//!   serve the next request; a forged or altered value is refused, and a session sealed for one
//!   user is not accepted from another's token.
//! - **Streams.** A call's answer is streamed from the member to the client (SSE events are
//!   rewritten one by one, never buffered): server-to-client requests (sampling, elicitation,
//!   roots) get ids `"postern:<member>:<id>"`, so the client's answer goes back to that member
//!   (URL-mode elicitation ids are named the same way, so a member's
//!   `notifications/elicitation/complete` closes only its own elicitation)
//!   with its own id; a call's stream passes progress only for that call's own progress token (a
//!   member cannot report progress for another member's request; a merged `GET` stream of
//!   several members passes none); `notifications/cancelled` goes to every member of the session (only the one that
//!   has the request acts on it). `GET` merges the members' own server-to-client streams
//!   (`list_changed` and other notifications, requests) into one, event by event; with more
//!   than one member the members' event ids are left out (they would name nothing).
//! - **Members not connected.** A member whose upstream account the user has not connected is
//!   asked for its lists without the TI (many servers list to anyone and need the account only
//!   to run a tool); its items are listed with a note naming the connect URL. Its tool calls
//!   answer a tool error with that URL, or, for a client that declared URL-mode elicitation,
//!   the JSON-RPC error `-32042` whose elicitation opens it.
//! - **The aggregate's own rules.** Its policy decides every request before any member hears
//!   of it, with the prefixed names (`mcp_tool`), and its tool rules filter its merged lists.
//! - **Revisions.** 2025-06-18 and 2025-11-25 (`initialize`, sessions) and the stateless
//!   2026-07-28 (`server/discover` merged; each member request gets `Mcp-Method` and `Mcp-Name`
//!   with the member's own name, SEP-2243, and the client's `Mcp-Param-*`).

mod seal;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;
use postern_gateway::body::{Body, BoxError, full};
use postern_gateway::hooks::RequestContext;
use postern_gateway::routes::Route;
use postern_store::Session;
use serde_json::{Value, json};

use crate::enforcement::tool_filter::{EventSplitter, MAX_MESSAGE_BYTES, Media, event_data};
use crate::enforcement::{Delegated, Enforcement};
use crate::web::reply::{cors, json_error};

use self::seal::{Binding, Cursor, SessionState};

/// The `_meta` key of a list's per-member report.
pub const MEMBERS_META: &str = "dev.postern/members";

/// One member, resolved for this request.
#[derive(Clone)]
pub(crate) struct Member {
    /// Position in `mcp.aggregate.servers`.
    pub pos: usize,
    /// The member's route.
    pub route: Arc<Route>,
    /// Its name and URI prefix.
    pub prefix: String,
    /// How long each call may take.
    pub timeout: Duration,
}

impl Member {
    /// The member's name for people (its route's name, else id).
    fn name(&self) -> String {
        self.route
            .config
            .name
            .clone()
            .unwrap_or_else(|| self.route.id.clone())
    }
}

/// Whether `route` is an aggregate route.
pub(crate) fn is_aggregate(route: &Route) -> bool {
    matches!(&route.kind, postern_gateway::routes::Kind::McpServer(s) if s.aggregate.is_some())
}

/// The members of the aggregate `route`, in configuration order.
pub(crate) fn members(ctx: &RequestContext, route: &Route) -> Vec<Member> {
    let config = &ctx.runtime.config;
    let Ok(resolved) = postern_config::aggregate_members(config, route.index) else {
        // Checked when the configuration was read.
        return Vec::new();
    };
    let routes = ctx.runtime.routes.all();
    resolved
        .into_iter()
        .enumerate()
        .filter_map(|(pos, m)| {
            let member = routes.iter().find(|r| r.index == m.route)?.clone();
            Some(Member {
                pos,
                route: member,
                prefix: m.prefix,
                timeout: m.timeout,
            })
        })
        .collect()
}

/// What came of one call to a member.
pub(crate) enum Outcome {
    /// The member answered (already filtered and audited as a direct call is).
    Answered(Response<Body>),
    /// The member's policy refused the request (its answer: a JSON-RPC denial or a 403).
    Refused(Response<Body>),
    /// The user's upstream account for the member is not connected.
    NotConnected { connect_url: String },
    /// The member is down, slow or broken.
    Unavailable(String),
}

/// The aggregate route's request handler.
pub(crate) struct Aggregator<'a> {
    pub enforcement: &'a Enforcement,
    pub client: &'a postern_gateway::proxy::UpstreamClient,
}

/// The client request's facts the handler needs after the body was read.
struct Incoming {
    protocol: Option<HeaderValue>,
    /// The client accepts an event stream as the answer to a POST.
    accepts_sse: bool,
    /// The client's `Mcp-Param-*` headers (SEP-2243), passed to the member it calls.
    params: Vec<(header::HeaderName, HeaderValue)>,
    session: Option<String>,
    bearer: bool,
}

impl Aggregator<'_> {
    /// Answers a request to the aggregate `route`.
    pub(crate) async fn serve(
        &self,
        ctx: &RequestContext,
        route: &Arc<Route>,
        request: Request<Body>,
    ) -> Response<Body> {
        let incoming = Incoming {
            protocol: request.headers().get("mcp-protocol-version").cloned(),
            accepts_sse: request
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("text/event-stream")),
            params: request
                .headers()
                .iter()
                .filter(|(name, _)| name.as_str().starts_with("mcp-param-"))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            session: request
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            bearer: request.headers().contains_key(header::AUTHORIZATION),
        };
        let method = request.method().clone();
        let (request, grant) = match self.enforcement.authorize(ctx, route, request).await {
            Ok(allowed) => allowed,
            Err(refused) => return refused,
        };
        let (session, client_id) = match crate::enforcement::granted_identity(&grant) {
            Some(identity) => identity,
            None => {
                return json_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_token",
                    "an aggregate route calls its members as a signed-in user: present the access token the gateway issued for this URL",
                    &ctx.request_id,
                );
            }
        };
        let delegated = Delegated {
            session,
            client_id,
            aggregate: route.id.clone(),
        };
        let members = members(ctx, route);
        let mut response = match method {
            Method::POST => {
                let body = request.into_body();
                match postern_gateway::body::read_bounded(body, None, MAX_MESSAGE_BYTES, None).await
                {
                    Ok(bytes) => {
                        let response = self
                            .post(ctx, route, &members, &delegated, &incoming, &bytes)
                            .await;
                        // The aggregate's own tool rules apply to what it lists, as to what it
                        // calls.
                        self.enforcement
                            .filter_own_tool_lists(ctx, route, &grant, response)
                            .await
                    }
                    Err(_) => rpc_error(
                        Value::Null,
                        -32600,
                        &format!(
                            "the message could not be read, or is over the {} MiB an aggregate route takes: send one smaller JSON-RPC message",
                            MAX_MESSAGE_BYTES >> 20
                        ),
                    ),
                }
            }
            Method::DELETE => {
                self.delete(ctx, route, &members, &delegated, &incoming)
                    .await
            }
            Method::GET => {
                let response = self
                    .streams(ctx, route, &members, &delegated, &incoming)
                    .await;
                self.enforcement
                    .filter_own_tool_lists(ctx, route, &grant, response)
                    .await
            }
            _ => {
                let mut response = json_error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "an aggregate MCP route takes POST (JSON-RPC messages), GET (its members' event streams) and DELETE (end the session)",
                    &ctx.request_id,
                );
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
                response
            }
        };
        if incoming.bearer {
            cors(response.headers_mut());
        }
        response
    }

    /// `GET`: the members' server-to-client event streams, merged into one (each event mapped
    /// as on a call's stream). 405 when no member offers one.
    async fn streams(
        &self,
        ctx: &RequestContext,
        route: &Route,
        members: &[Member],
        delegated: &Delegated,
        incoming: &Incoming,
    ) -> Response<Body> {
        let state = match self.open_session(route, delegated, incoming) {
            Ok(state) => state,
            Err(response) => return *response,
        };
        let calls = members.iter().map(|member| {
            let sid = state.as_ref().and_then(|s| s.member(member));
            self.member_request(ctx, member, delegated, Method::GET, None, incoming, sid)
        });
        let outcomes = join_all(calls.collect()).await;
        let mut streams: Vec<MapEvents> = Vec::new();
        for (member, outcome) in members.iter().zip(outcomes) {
            if let Outcome::Answered(response) = outcome
                && response.status().is_success()
                && Media::of(response.headers()) == Media::EventStream
            {
                let mut stream = MapEvents::new(response.into_body(), member.clone());
                // Event ids (for `Last-Event-ID`) are each member's own: with several streams
                // merged they would name nothing, so they are left out.
                stream.drop_ids = members.len() > 1;
                streams.push(stream);
            }
        }
        if streams.is_empty() {
            let mut response = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "no member of this route offers a server-initiated stream: notifications arrive on the streams of requests",
                &ctx.request_id,
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            return response;
        }
        let mut response = Response::new(Merged { streams, next: 0 }.boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }

    async fn delete(
        &self,
        ctx: &RequestContext,
        route: &Route,
        members: &[Member],
        delegated: &Delegated,
        incoming: &Incoming,
    ) -> Response<Body> {
        let state = match self.open_session(route, delegated, incoming) {
            Ok(Some(state)) => state,
            Ok(None) => return status_only(StatusCode::METHOD_NOT_ALLOWED),
            Err(response) => return *response,
        };
        let calls = members.iter().filter_map(|member| {
            let sid = state.member(member)?;
            Some(self.member_request(
                ctx,
                member,
                delegated,
                Method::DELETE,
                None,
                incoming,
                Some(sid),
            ))
        });
        join_all(calls.collect()).await;
        status_only(StatusCode::OK)
    }

    /// The aggregate session the client named, checked: `Ok(None)` when it named none.
    fn open_session(
        &self,
        route: &Route,
        delegated: &Delegated,
        incoming: &Incoming,
    ) -> Result<Option<SessionState>, Box<Response<Body>>> {
        let Some(sealed) = &incoming.session else {
            return Ok(None);
        };
        let binding = Binding::new(route, delegated);
        match SessionState::open(self.enforcement.store.keyring(), &binding, sealed) {
            Some(state) => Ok(Some(state)),
            None => Err(Box::new(json_error(
                StatusCode::NOT_FOUND,
                "session_not_found",
                "this MCP session is unknown, expired or not yours: initialize a new one (send initialize without Mcp-Session-Id)",
                "",
            ))),
        }
    }

    /// A POSTed JSON-RPC message.
    async fn post(
        &self,
        ctx: &RequestContext,
        route: &Route,
        members: &[Member],
        delegated: &Delegated,
        incoming: &Incoming,
        bytes: &[u8],
    ) -> Response<Body> {
        let Ok(message) = serde_json::from_slice::<Value>(bytes) else {
            return rpc_error(Value::Null, -32700, "the body is not JSON");
        };
        if !message.is_object() {
            return rpc_error(
                Value::Null,
                -32600,
                "an aggregate MCP route takes one JSON-RPC message per POST (no batches)",
            );
        }
        let id = message.get("id").cloned();
        let method = message
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let Some(method) = method else {
            // The client's answer to a member's request.
            return self
                .answer_to_member(ctx, route, members, delegated, incoming, message)
                .await;
        };
        if method == "initialize" || method == "server/discover" {
            return self
                .initialize(ctx, route, members, delegated, incoming, &message)
                .await;
        }
        let state = match self.open_session(route, delegated, incoming) {
            Ok(state) => state,
            Err(response) => return *response,
        };
        let Some(id) = id else {
            // A notification: every member of the session hears it.
            let calls = members.iter().map(|member| {
                let sid = state.as_ref().and_then(|s| s.member(member));
                self.member_request(
                    ctx,
                    member,
                    delegated,
                    Method::POST,
                    Some(message.clone()),
                    incoming,
                    sid,
                )
            });
            join_all(calls.collect()).await;
            return status_only(StatusCode::ACCEPTED);
        };
        let scope = Scope {
            ctx,
            route,
            members,
            delegated,
            incoming,
            state: state.as_ref(),
        };
        match method.as_str() {
            "tools/list" => self.list(&scope, id, &message, LIST_TOOLS).await,
            "prompts/list" => self.list(&scope, id, &message, LIST_PROMPTS).await,
            "resources/list" => self.list(&scope, id, &message, LIST_RESOURCES).await,
            "resources/templates/list" => self.list(&scope, id, &message, LIST_TEMPLATES).await,
            "tools/call" | "prompts/get" => {
                self.call_named(&scope, id, message, "/params/name").await
            }
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.call_named(&scope, id, message, "/params/uri").await
            }
            "completion/complete" => {
                let pointer = if message.pointer("/params/ref/type").and_then(Value::as_str)
                    == Some("ref/prompt")
                {
                    "/params/ref/name"
                } else {
                    "/params/ref/uri"
                };
                self.call_named(&scope, id, message, pointer).await
            }
            "ping" => json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": {}})),
            "logging/setLevel" => {
                let calls = members.iter().map(|member| {
                    let sid = state.as_ref().and_then(|s| s.member(member));
                    self.member_request(
                        ctx,
                        member,
                        delegated,
                        Method::POST,
                        Some(message.clone()),
                        incoming,
                        sid,
                    )
                });
                join_all(calls.collect()).await;
                json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": {}}))
            }
            other => rpc_error(
                id,
                -32601,
                &format!("the aggregate route does not serve the method {other:?}"),
            ),
        }
    }

    /// `initialize` or `server/discover`: every member asked, capabilities merged, member
    /// sessions sealed into the aggregate's.
    async fn initialize(
        &self,
        ctx: &RequestContext,
        route: &Route,
        members: &[Member],
        delegated: &Delegated,
        incoming: &Incoming,
        message: &Value,
    ) -> Response<Body> {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let calls = members.iter().map(|member| {
            self.member_request(
                ctx,
                member,
                delegated,
                Method::POST,
                Some(message.clone()),
                incoming,
                None,
            )
        });
        let outcomes = join_all(calls.collect()).await;
        let mut capabilities = serde_json::Map::new();
        let mut versions: Vec<String> = Vec::new();
        let mut instructions: Vec<String> = Vec::new();
        let mut sessions: Vec<Option<String>> = vec![None; members.len()];
        let mut missing: Vec<String> = Vec::new();
        let mut single_info: Option<Value> = None;
        // `server/discover` (2026-07-28): the versions every member supports, the shortest
        // freshness, the first member's result type.
        let mut supported: Option<Vec<Value>> = None;
        let mut ttl_ms: Option<u64> = None;
        let mut result_type: Option<Value> = None;
        let mut answered = false;
        let mut first_error: Option<Value> = None;
        for (member, outcome) in members.iter().zip(outcomes) {
            let (answer, sid) = match outcome {
                Outcome::Answered(response) => {
                    let sid = response
                        .headers()
                        .get("mcp-session-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    match read_answer(response, &id, member.timeout).await {
                        Ok(answer) => (answer, sid),
                        Err(why) => {
                            missing.push(format!("{} ({why})", member.name()));
                            continue;
                        }
                    }
                }
                // A member the user may not use is not named to them at all.
                Outcome::Refused(_) => continue,
                other => {
                    missing.push(format!("{} ({})", member.name(), describe(&other)));
                    continue;
                }
            };
            let Some(result) = answer.get("result") else {
                if first_error.is_none() {
                    first_error = answer.get("error").cloned();
                }
                let why = bounded(
                    answer
                        .pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("no result"),
                    MAX_NOTE_CHARS,
                );
                missing.push(format!("{} (it answered: {why})", member.name()));
                continue;
            };
            answered = true;
            sessions[member.pos] = sid;
            if let Some(version) = result.get("protocolVersion").and_then(Value::as_str) {
                versions.push(version.to_owned());
            }
            if let Some(text) = result.get("instructions").and_then(Value::as_str) {
                // Bounded: every member's go into one answer, which must stay one message the
                // gateway (and the aggregate's own tool rules) can read whole.
                let text = bounded(text, MAX_INSTRUCTIONS_CHARS);
                instructions.push(if member.prefix.is_empty() {
                    text
                } else {
                    format!("{} (tools named {}*): {text}", member.name(), member.prefix)
                });
            }
            merge_capabilities(&mut capabilities, result.get("capabilities"));
            if members.len() == 1 {
                single_info = result.get("serverInfo").cloned().or_else(|| {
                    result
                        .pointer("/_meta/io.modelcontextprotocol~1serverInfo")
                        .cloned()
                });
            }
            if let Some(versions) = result.get("supportedVersions").and_then(Value::as_array) {
                supported = Some(match supported.take() {
                    None => versions.clone(),
                    Some(so_far) => so_far
                        .into_iter()
                        .filter(|v| versions.contains(v))
                        .collect(),
                });
            }
            if let Some(ttl) = result.get("ttlMs").and_then(Value::as_u64) {
                ttl_ms = Some(ttl_ms.map_or(ttl, |t| t.min(ttl)));
            }
            if result_type.is_none() {
                result_type = result.get("resultType").cloned();
            }
        }
        // No member could start, and one said why (a parameter the revision requires, say):
        // the client hears that, as it would from the member itself.
        if let (false, Some(error)) = (answered, first_error) {
            return json_answer(&json!({"jsonrpc": "2.0", "id": id, "error": error}));
        }
        for gone in &missing {
            tracing::warn!(request_id = %ctx.request_id, route = %route.id, member = %gone, "aggregate member unavailable at initialize");
        }
        if !missing.is_empty() {
            instructions.push(format!(
                "Not available now (their tools are missing from this session): {}.",
                missing.join(", ")
            ));
        }
        let requested = message
            .pointer("/params/protocolVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        // The revision every member answered, else the oldest one answered (which each member
        // of an older revision then speaks).
        let version = match (&requested, versions.first()) {
            (Some(asked), _) if !versions.is_empty() && versions.iter().all(|v| v == asked) => {
                asked.clone()
            }
            (_, Some(_)) => versions.iter().min().cloned().unwrap_or_default(),
            (Some(asked), None) => asked.clone(),
            (None, None) => "2025-06-18".to_owned(),
        };
        let server_info = single_info.unwrap_or_else(|| {
            json!({
                "name": route.config.name.clone().unwrap_or_else(|| route.id.clone()),
                "version": env!("CARGO_PKG_VERSION"),
            })
        });
        let mut result = json!({
            "protocolVersion": version,
            "capabilities": capabilities,
            "serverInfo": server_info,
        });
        if !instructions.is_empty() {
            result["instructions"] = Value::String(instructions.join("\n\n"));
        }
        if message.get("method").and_then(Value::as_str) == Some("server/discover") {
            // The discover result names the server in `_meta`, and is the user's own (its
            // members and their lists depend on who asks): private.
            let info = result
                .as_object_mut()
                .and_then(|r| r.remove("serverInfo"))
                .unwrap_or(Value::Null);
            if let Some(r) = result.as_object_mut() {
                r.remove("protocolVersion");
            }
            result["supportedVersions"] = Value::Array(supported.unwrap_or_default());
            result["ttlMs"] = json!(ttl_ms.unwrap_or(0));
            result["cacheScope"] = json!("private");
            if let Some(kind) = result_type {
                result["resultType"] = kind;
            }
            result["_meta"] = json!({"io.modelcontextprotocol/serverInfo": info});
        }
        let mut response = json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": result}));
        let url_elicitation = message
            .pointer("/params/capabilities/elicitation/url")
            .is_some();
        if sessions.iter().any(Option::is_some) || url_elicitation {
            let state = SessionState::new(members, sessions, url_elicitation);
            let binding = Binding::new(route, delegated);
            match state.seal(self.enforcement.store.keyring(), &binding) {
                Some(sealed) => {
                    if let Ok(value) = HeaderValue::from_str(&sealed) {
                        response.headers_mut().insert("mcp-session-id", value);
                    }
                }
                None => {
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "temporarily_unavailable",
                        "the gateway cannot seal the session now; try again",
                        &ctx.request_id,
                    );
                }
            }
        }
        response
    }

    /// The client's answer to a request a member made (its id `postern:<pos>:<member's id>`).
    async fn answer_to_member(
        &self,
        ctx: &RequestContext,
        route: &Route,
        members: &[Member],
        delegated: &Delegated,
        incoming: &Incoming,
        mut message: Value,
    ) -> Response<Body> {
        let Some((pos, original)) = message.get("id").and_then(Value::as_str).and_then(unmap_id)
        else {
            return rpc_error(
                Value::Null,
                -32600,
                "this answer's id is not one the aggregate route gave a request of a member",
            );
        };
        let Some(member) = members.iter().find(|m| m.pos == pos) else {
            return rpc_error(Value::Null, -32600, "no member has that request");
        };
        let state = match self.open_session(route, delegated, incoming) {
            Ok(state) => state,
            Err(response) => return *response,
        };
        message["id"] = original;
        let sid = state.as_ref().and_then(|s| s.member(member));
        match self
            .member_request(
                ctx,
                member,
                delegated,
                Method::POST,
                Some(message),
                incoming,
                sid,
            )
            .await
        {
            Outcome::Answered(_) => status_only(StatusCode::ACCEPTED),
            // A member the user may not use is not named to them at all.
            Outcome::Refused(_) => rpc_error(Value::Null, -32600, "no member has that request"),
            other => json_error(
                StatusCode::BAD_GATEWAY,
                "member_unavailable",
                &format!(
                    "the answer could not be passed to {}: {}",
                    member.name(),
                    describe(&other)
                ),
                &ctx.request_id,
            ),
        }
    }

    /// A list request: each member's page (from the cursor), merged with names mapped.
    async fn list(
        &self,
        scope: &Scope<'_>,
        id: Value,
        message: &Value,
        kind: ListKind,
    ) -> Response<Body> {
        let binding = Binding::new(scope.route, scope.delegated);
        let keyring = self.enforcement.store.keyring();
        let cursor = match message.pointer("/params/cursor").and_then(Value::as_str) {
            None => None,
            Some(sealed) => match Cursor::open(keyring, &binding, kind.method, sealed) {
                Some(cursor) => Some(cursor),
                None => {
                    return rpc_error(
                        id,
                        -32602,
                        "invalid cursor: it was not issued by this route for you for this list (or was altered); list again without a cursor",
                    );
                }
            },
        };
        let asked: Vec<(&Member, Option<String>)> = scope
            .members
            .iter()
            .filter_map(|m| match &cursor {
                None => Some((m, None)),
                Some(c) => c.get(m).map(|mc| (m, Some(mc))),
            })
            .collect();
        // Whether a member answered with an event stream: the merged answer then is one too
        // (for a client that takes one), so the aggregate answers as its members do.
        let streamed = std::sync::atomic::AtomicBool::new(false);
        let streamed = &streamed;
        let calls = asked.iter().map(|(member, member_cursor)| {
            let mut request = json!({"jsonrpc": "2.0", "id": id.clone(), "method": kind.method});
            let mut params = message.get("params").cloned().unwrap_or_else(|| json!({}));
            if let Some(params) = params.as_object_mut() {
                params.remove("cursor");
                if let Some(c) = member_cursor {
                    params.insert("cursor".into(), Value::String(c.clone()));
                }
            }
            request["params"] = params;
            let sid = scope.state.and_then(|s| s.member(member));
            let id = id.clone();
            let timeout = member.timeout;
            async move {
                let call = |with_ti| {
                    self.member_call(
                        scope.ctx,
                        member,
                        scope.delegated,
                        (Method::POST, Some(request.clone())),
                        scope.incoming,
                        sid.clone(),
                        with_ti,
                    )
                };
                match call(true).await {
                    Outcome::Answered(response) => {
                        if Media::of(response.headers()) == Media::EventStream {
                            streamed.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        match read_answer(response, &id, timeout).await {
                            Ok(answer) => (Ok(answer), None),
                            Err(why) => (Err(Outcome::Unavailable(why)), None),
                        }
                    }
                    // Not connected: what the member lists without the user's account (many
                    // list their tools to anyone and need the account only to run them), each
                    // item noted with where to connect; else only the report.
                    Outcome::NotConnected { connect_url } => match call(false).await {
                        Outcome::Answered(response) => {
                            match read_answer(response, &id, timeout).await {
                                Ok(answer) if answer.get("result").is_some() => {
                                    (Ok(answer), Some(connect_url))
                                }
                                _ => (Err(Outcome::NotConnected { connect_url }), None),
                            }
                        }
                        _ => (Err(Outcome::NotConnected { connect_url }), None),
                    },
                    other => (Err(other), None),
                }
            }
        });
        let answers = join_all(calls.collect()).await;
        let mut items: Vec<Value> = Vec::new();
        let mut next = Cursor::default();
        let mut report: Vec<Value> = Vec::new();
        // The merged list must stay one message the gateway (and the aggregate's own tool rules)
        // can read whole: a member whose items would not fit is left out and reported, and the
        // others are listed (its answer was bounded, but what the gateway writes may be longer:
        // `1e5` is written `100000.0`).
        let mut room = MAX_MESSAGE_BYTES - LIST_ENVELOPE_BYTES;
        for ((member, _), (answer, unconnected)) in asked.iter().zip(answers) {
            let mut entry =
                json!({"member": member.route.id, "name": member.name(), "prefix": member.prefix});
            match answer {
                Ok(answer) => {
                    if let Some(result) = answer.get("result") {
                        let listed = result.get(kind.key).and_then(Value::as_array);
                        let mut mapped = Vec::new();
                        for item in listed.into_iter().flatten() {
                            if let Some(mut item) = map_item(item, member, kind) {
                                if let Some(url) = &unconnected {
                                    note_unconnected(&mut item, member, url);
                                }
                                mapped.push(item);
                            }
                        }
                        let size: usize = mapped.iter().map(|i| written_len(i) + 1).sum();
                        if size > room {
                            tracing::warn!(request_id = %scope.ctx.request_id, route = %scope.route.id, member = %member.route.id, size, "aggregate member's list too large to merge; left out");
                            entry["state"] = json!("unavailable");
                            entry["reason"] = json!(format!(
                                "its list is too large to merge with the others ({size} bytes)"
                            ));
                            report.push(entry);
                            continue;
                        }
                        room -= size;
                        items.extend(mapped);
                        if let Some(c) = result.get("nextCursor").and_then(Value::as_str) {
                            next.set(member, c.to_owned());
                        }
                        entry["state"] = json!("ok");
                        if let Some(url) = unconnected {
                            entry["state"] = json!("not_connected");
                            entry["connect_url"] = json!(url);
                        }
                    } else {
                        // A JSON-RPC error: the member's policy refused, or it does not list
                        // this kind (no prompts, say).
                        let refused = answer.pointer("/error/code").and_then(Value::as_i64)
                            == Some(-32602)
                            && answer
                                .pointer("/error/message")
                                .and_then(Value::as_str)
                                .is_some_and(|m| m.starts_with("access denied"));
                        if refused {
                            continue;
                        }
                        entry["state"] = json!("ok");
                        if !refused {
                            // The member's words, bounded: they go into every merged list.
                            entry["note"] = answer
                                .pointer("/error/message")
                                .and_then(Value::as_str)
                                .map_or(Value::Null, |m| {
                                    Value::String(m.chars().take(MAX_NOTE_CHARS).collect())
                                });
                        }
                    }
                }
                // A member the user may not use is not named to them at all.
                Err(Outcome::Refused(_)) => continue,
                Err(Outcome::NotConnected { connect_url }) => {
                    entry["state"] = json!("not_connected");
                    entry["connect_url"] = json!(connect_url);
                }
                Err(other) => {
                    let reason = describe(&other);
                    tracing::warn!(request_id = %scope.ctx.request_id, route = %scope.route.id, member = %member.route.id, %reason, "aggregate member missing from a list");
                    entry["state"] = json!("unavailable");
                    entry["reason"] = json!(reason);
                }
            }
            report.push(entry);
        }
        let mut result = json!({ kind.key: items, "_meta": { MEMBERS_META: report } });
        if !next.is_empty() {
            match next.seal(keyring, &binding, kind.method) {
                Some(sealed) => result["nextCursor"] = Value::String(sealed),
                None => {
                    return rpc_error(
                        id,
                        -32603,
                        "the gateway cannot seal the cursor now; try again",
                    );
                }
            }
        }
        let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
        if scope.incoming.accepts_sse && streamed.load(std::sync::atomic::Ordering::Relaxed) {
            return sse_answer(&answer);
        }
        json_answer(&answer)
    }

    /// A request about one named tool, prompt or resource: sent to its owner, name unmapped,
    /// the answer streamed back.
    async fn call_named(
        &self,
        scope: &Scope<'_>,
        id: Value,
        mut message: Value,
        pointer: &str,
    ) -> Response<Body> {
        let Some(name) = message
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return rpc_error(id, -32602, &format!("{pointer} is required"));
        };
        let owner = scope
            .members
            .iter()
            .filter(|m| name.starts_with(&m.prefix))
            .max_by_key(|m| m.prefix.len());
        let is_tool = message.get("method").and_then(Value::as_str) == Some("tools/call");
        let Some(member) = owner else {
            return rpc_error(id, -32602, &format!("no member of this route has {name:?}"));
        };
        let own = name[member.prefix.len()..].to_owned();
        if let Some(slot) = message.pointer_mut(pointer) {
            *slot = Value::String(own.clone());
        }
        // Declared in `initialize` (kept in the session) or, without sessions (2026-07-28), in
        // the request's own `_meta`.
        let url_elicitation = scope.state.is_some_and(SessionState::url_elicitation)
            || message
                .pointer(
                    "/params/_meta/io.modelcontextprotocol~1clientCapabilities/elicitation/url",
                )
                .is_some();
        let sid = scope.state.and_then(|s| s.member(member));
        let in_session = sid.is_some();
        // The only progress the member may report on this call's stream.
        let progress = message.pointer("/params/_meta/progressToken").cloned();
        let outcome = self
            .member_request(
                scope.ctx,
                member,
                scope.delegated,
                Method::POST,
                Some(message),
                scope.incoming,
                sid,
            )
            .await;

        match outcome {
            // The member's own session is gone (it restarted, say): the client starts a new
            // aggregate session, which opens a new one with every member (MCP: 404 to a request
            // with a session). Only then does a member's status reach the client.
            Outcome::Answered(response)
                if in_session && response.status() == StatusCode::NOT_FOUND =>
            {
                json_error(
                    StatusCode::NOT_FOUND,
                    "session_not_found",
                    &format!(
                        "{}'s session has ended: initialize a new session (send initialize without Mcp-Session-Id)",
                        member.name()
                    ),
                    &scope.ctx.request_id,
                )
            }
            Outcome::Answered(response) | Outcome::Refused(response) => {
                map_answer(response, member.clone(), id.clone(), progress).await
            }
            // A client that declared URL-mode elicitation is sent to the connect page by the
            // client itself (MCP 2025-11-25, URLElicitationRequiredError).
            Outcome::NotConnected { connect_url } if url_elicitation => {
                let text = format!("Connect your {} account to use {name}", member.name());
                json_answer(&json!({"jsonrpc": "2.0", "id": id, "error": {
                    "code": -32042,
                    "message": format!("{text}: open {connect_url}"),
                    "data": {"elicitations": [{
                        "mode": "url",
                        "elicitationId": format!("postern-connect-{}-{}", member.route.id, scope.ctx.request_id),
                        "url": connect_url,
                        "message": text,
                    }]},
                }}))
            }
            Outcome::NotConnected { connect_url } if is_tool => tool_error(
                id,
                &format!(
                    "{} needs your account at its provider, which is not connected: open {connect_url} to connect it, then call {name} again",
                    member.name()
                ),
                Some(&connect_url),
            ),
            Outcome::Unavailable(why) if is_tool => tool_error(
                id,
                &format!(
                    "{} is not available now ({why}; request {})",
                    member.name(),
                    scope.ctx.request_id
                ),
                None,
            ),
            Outcome::NotConnected { connect_url } => rpc_error(
                id,
                -32603,
                &format!(
                    "{} needs your account at its provider, which is not connected: open {connect_url}",
                    member.name()
                ),
            ),
            Outcome::Unavailable(why) => rpc_error(
                id,
                -32603,
                &format!(
                    "{} is not available now ({why}; request {})",
                    member.name(),
                    scope.ctx.request_id
                ),
            ),
        }
    }

    /// Sends one request to `member` as the user would on its own URL, through the same
    /// enforcement functions as the proxy path (policy, TI and assertion, response filter and
    /// audit), within the member's timeout.
    #[allow(clippy::too_many_arguments)]
    async fn member_request(
        &self,
        ctx: &RequestContext,
        member: &Member,
        delegated: &Delegated,
        method: Method,
        message: Option<Value>,
        incoming: &Incoming,
        member_session: Option<String>,
    ) -> Outcome {
        let session = member_session;
        self.member_call(
            ctx,
            member,
            delegated,
            (method, message),
            incoming,
            session,
            true,
        )
        .await
    }

    /// [`Aggregator::member_request`], with the user's TI or (`with_ti: false`, to list what
    /// a member offers before the user connected it) without.
    #[allow(clippy::too_many_arguments)]
    async fn member_call(
        &self,
        ctx: &RequestContext,
        member: &Member,
        delegated: &Delegated,
        (method, message): (Method, Option<Value>),
        incoming: &Incoming,
        member_session: Option<String>,
        with_ti: bool,
    ) -> Outcome {
        let route = &member.route;
        // The member's own request context: its host is the assertion's audience.
        let mut member_ctx = ctx.clone();
        member_ctx.scheme = if route.config.from.scheme == "https" {
            "https"
        } else {
            "http"
        };
        member_ctx.host = route.config.from.host.clone();
        // A `from` without a port is served on every listener: the one this request came in on.
        member_ctx.port = route.config.from.port.unwrap_or(ctx.port);
        let resource = crate::oauth_server::route_resource(route, &member_ctx.origin());
        let path = url::Url::parse(&resource)
            .map(|u| u.path().to_owned())
            .unwrap_or_else(|_| "/".to_owned());
        let mut builder = Request::builder()
            .method(method)
            .uri(&path)
            .header(header::HOST, member_ctx.host.as_str())
            .header(header::ACCEPT, "application/json, text/event-stream");
        if let Some(protocol) = &incoming.protocol {
            builder = builder.header("mcp-protocol-version", protocol.clone());
        }
        if let Some(sid) = member_session.as_deref() {
            builder = builder.header("mcp-session-id", sid);
        }
        let body = match &message {
            Some(message) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                if let Some(method) = message.get("method").and_then(Value::as_str) {
                    builder = builder.header("mcp-method", method);
                    // SEP-2243 (2026-07-28): the member checks `Mcp-Name` against the body,
                    // which now holds its own name for the tool, prompt or resource.
                    let key = match method {
                        "tools/call" | "prompts/get" => Some("name"),
                        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                            Some("uri")
                        }
                        _ => None,
                    };
                    if let Some(name) = key
                        .and_then(|k| message.pointer(&format!("/params/{k}")))
                        .and_then(Value::as_str)
                    {
                        builder = builder.header("mcp-name", header_text(name));
                    }
                    if method == "tools/call" {
                        for (name, value) in &incoming.params {
                            builder = builder.header(name, value);
                        }
                    }
                }
                full(message.to_string())
            }
            None => postern_gateway::body::empty(),
        };
        let Ok(request) = builder.body(body) else {
            return Outcome::Unavailable("the request could not be built".into());
        };
        let work = async {
            let (request, grant) = match self
                .enforcement
                .authorize_member(&member_ctx, route, request, delegated)
                .await
            {
                Ok(allowed) => allowed,
                Err(refused) => return Outcome::Refused(refused),
            };
            let extra = match self
                .enforcement
                .headers_for(&member_ctx, route, &grant, with_ti)
                .await
            {
                Ok(extra) => extra,
                Err(refused) if refused.status() == StatusCode::UNAUTHORIZED => {
                    return Outcome::NotConnected {
                        connect_url: connect_url(&member_ctx, route),
                    };
                }
                Err(refused) => {
                    return Outcome::Unavailable(format!(
                        "its upstream account could not be used ({})",
                        refused.status()
                    ));
                }
            };
            let cookie = member_ctx.runtime.config.cookie_name();
            let forwarded_for = member_ctx.client_addr.ip().to_string();
            match postern_gateway::proxy::forward(
                self.client,
                &member_ctx,
                route,
                request,
                extra,
                cookie,
                &forwarded_for,
            )
            .await
            {
                Ok((response, _)) => {
                    let response = response.map(|b| b.map_err(BoxError::from).boxed());
                    let response = self
                        .enforcement
                        .filter_response(&member_ctx, route, &grant, response)
                        .await;
                    if response.status() == StatusCode::UNAUTHORIZED {
                        return Outcome::NotConnected {
                            connect_url: connect_url(&member_ctx, route),
                        };
                    }
                    if response.status().is_server_error() {
                        return Outcome::Unavailable(format!("it answered {}", response.status()));
                    }
                    Outcome::Answered(response)
                }
                Err((error, _, _)) => {
                    // The member's address and the OS error are for the log, as on the
                    // member's own URL.
                    tracing::warn!(request_id = %member_ctx.request_id, route = %route.id, %error, "aggregate member request failed");
                    Outcome::Unavailable(error.public_message())
                }
            }
        };
        match tokio::time::timeout(member.timeout, work).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::Unavailable(format!(
                "it did not answer within {}s",
                member.timeout.as_secs_f64()
            )),
        }
    }
}

/// What a request handler needs about the request.
struct Scope<'a> {
    ctx: &'a RequestContext,
    route: &'a Route,
    members: &'a [Member],
    delegated: &'a Delegated,
    incoming: &'a Incoming,
    state: Option<&'a SessionState>,
}

/// A list method: its name and the key of its items.
#[derive(Clone, Copy)]
struct ListKind {
    method: &'static str,
    key: &'static str,
    /// The item's field that is prefixed.
    field: &'static str,
}

const LIST_TOOLS: ListKind = ListKind {
    method: "tools/list",
    key: "tools",
    field: "name",
};
const LIST_PROMPTS: ListKind = ListKind {
    method: "prompts/list",
    key: "prompts",
    field: "name",
};
const LIST_RESOURCES: ListKind = ListKind {
    method: "resources/list",
    key: "resources",
    field: "uri",
};
const LIST_TEMPLATES: ListKind = ListKind {
    method: "resources/templates/list",
    key: "resourceTemplates",
    field: "uriTemplate",
};

/// Room kept in a merged list's message for its envelope and the members' report.
const LIST_ENVELOPE_BYTES: usize = 256 * 1024;

/// The longest member's error message a list's report repeats.
const MAX_NOTE_CHARS: usize = 500;

/// The largest capabilities of a member the merged answer takes whole.
const MAX_CAPABILITY_BYTES: usize = 64 * 1024;

/// The capabilities taken from a member whose capabilities are too large to merge whole.
const STANDARD_CAPABILITIES: &[&str] = &["tools", "prompts", "resources", "logging", "completions"];

/// The most of one member's `instructions` the merged `initialize` answer repeats.
const MAX_INSTRUCTIONS_CHARS: usize = 32 * 1024;

/// `text`, cut after `max` characters (and then saying so).
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{} [cut]", &text[..end]),
        None => text.to_owned(),
    }
}

/// The length of `value` as JSON, without writing it anywhere.
fn written_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// A member's list item with its name (or URI) prefixed; `None` (logged) when the name is
/// missing or, for a tool, not a valid tool name once prefixed.
fn map_item(item: &Value, member: &Member, kind: ListKind) -> Option<Value> {
    let name = item.get(kind.field).and_then(Value::as_str)?;
    let mapped = format!("{}{name}", member.prefix);
    if kind.key == "tools" && !valid_tool_name(&mapped) {
        tracing::warn!(member = %member.route.id, tool = %crate::web::untrusted::Untrusted(name), "aggregate: dropped a tool whose name is not a valid MCP tool name once prefixed");
        return None;
    }
    let mut item = item.clone();
    item[kind.field] = Value::String(mapped);
    Some(item)
}

/// Adds to a listed item's description that its member needs the user's upstream account,
/// and where to connect it.
fn note_unconnected(item: &mut Value, member: &Member, url: &str) {
    let note = format!(
        "[Needs your {} account, not connected yet: connect it at {url}]",
        member.name()
    );
    let described = match item.get("description").and_then(Value::as_str) {
        Some(text) if !text.is_empty() => format!("{text}\n\n{note}"),
        _ => note,
    };
    item["description"] = Value::String(described);
}

/// MCP 2025-11-25: a tool name is 1 to 128 of `A-Z a-z 0-9 _ - .`.
fn valid_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Capabilities of all members: each kind offered by one is offered, with its flags or-ed.
fn merge_capabilities(into: &mut serde_json::Map<String, Value>, from: Option<&Value>) {
    let Some(capabilities) = from.and_then(Value::as_object) else {
        return;
    };
    // Every member's go into one answer, which must stay one message the gateway can read
    // whole: of a member's capabilities too large to merge, only the standard kinds and flags
    // are taken.
    let oversized = from.is_some_and(|c| written_len(c) > MAX_CAPABILITY_BYTES);
    if oversized {
        tracing::warn!(
            "aggregate: a member's capabilities are too large to merge; only the standard ones taken"
        );
    }
    for (kind, flags) in capabilities {
        if oversized && !STANDARD_CAPABILITIES.contains(&kind.as_str()) {
            continue;
        }
        let slot = into
            .entry(kind.clone())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let (Some(slot), Some(flags)) = (slot.as_object_mut(), flags.as_object()) {
            for (flag, value) in flags {
                if oversized && !matches!(flag.as_str(), "listChanged" | "subscribe") {
                    continue;
                }
                let on = value.as_bool().unwrap_or(false);
                match slot.get(flag) {
                    Some(Value::Bool(true)) => {}
                    _ if value.is_boolean() => {
                        slot.insert(flag.clone(), Value::Bool(on));
                    }
                    _ => {
                        slot.entry(flag.clone()).or_insert_with(|| value.clone());
                    }
                }
            }
        }
    }
}

/// The JSON-RPC response with `id` in a member's answer (JSON, or the first such message of an
/// event stream), read within `timeout`.
async fn read_answer(
    response: Response<Body>,
    id: &Value,
    timeout: Duration,
) -> Result<Value, String> {
    let media = Media::of(response.headers());
    let status = response.status();
    let body = response.into_body();
    let read = async {
        match media {
            Media::Json => {
                let bytes =
                    postern_gateway::body::read_bounded(body, None, MAX_MESSAGE_BYTES, None)
                        .await
                        .map_err(|_| "its answer could not be read".to_owned())?;
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|_| "its answer is not JSON".to_owned())
            }
            Media::EventStream => {
                let mut body = body;
                let mut splitter = EventSplitter::default();
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| format!("its stream failed: {e}"))?;
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    for event in splitter.push(&data).map_err(str::to_owned)? {
                        if let Some(message) =
                            event_data(&event).and_then(|d| serde_json::from_str::<Value>(&d).ok())
                            && message.get("method").is_none()
                            && message.get("id") == Some(id)
                        {
                            return Ok(message);
                        }
                    }
                }
                Err("its stream ended without an answer".to_owned())
            }
            Media::Other => Err(format!("it answered {status} without an MCP message")),
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "it did not answer within {}s",
                timeout.as_secs_f64()
            ))
        })
}

/// A member's answer to a routed request, as the client gets it: JSON (one message) mapped
/// whole, an event stream mapped event by event as it arrives.
async fn map_answer(
    response: Response<Body>,
    member: Member,
    id: Value,
    progress: Option<Value>,
) -> Response<Body> {
    let media = Media::of(response.headers());
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    // The member's session is its own; the client keeps the aggregate's. Nor does a member
    // speak for the aggregate's CORS (the aggregate sets its own for bearer requests).
    parts.headers.remove("mcp-session-id");
    let cors: Vec<header::HeaderName> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in cors {
        parts.headers.remove(name);
    }
    // Only a JSON-RPC message reaches the client: a body of another type may still be read as
    // one by a client that looks for the words in `Content-Type` (the TypeScript SDK does), and
    // would pass unmapped and unchecked; an event stream with an error status is no answer.
    if media == Media::Other || (media == Media::EventStream && !parts.status.is_success()) {
        tracing::warn!(member = %member.route.id, status = %parts.status, "aggregate: a member answered without an MCP message; refused");
        return rpc_error(
            id,
            -32603,
            &format!(
                "{} answered {} without an MCP message",
                member.name(),
                parts.status
            ),
        );
    }
    match media {
        Media::EventStream => {
            let mut stream = MapEvents::new(body, member);
            stream.answers = Some(id);
            stream.progress = progress;
            Response::from_parts(parts, stream.boxed())
        }
        Media::Json => {
            // Within the member's timeout: an answer that starts and never ends is not waited
            // on forever.
            let Ok(bytes) = postern_gateway::body::read_bounded(
                body,
                None,
                MAX_MESSAGE_BYTES,
                Some(member.timeout),
            )
            .await
            else {
                return rpc_error(
                    id,
                    -32603,
                    &format!(
                        "{} is not available now (its answer could not be read whole within {}s)",
                        member.name(),
                        member.timeout.as_secs_f64()
                    ),
                );
            };
            // What the gateway cannot read is not passed on: the client's parser may read it
            // (a lone surrogate escape, say), as an answer to another request.
            let Ok(mut message) = serde_json::from_slice::<Value>(&bytes) else {
                tracing::warn!(member = %member.route.id, "aggregate: a member's answer is not JSON; refused");
                return rpc_error(
                    id,
                    -32603,
                    &format!("{} answered with something that is not JSON", member.name()),
                );
            };
            // The answer is to this request only: a member cannot answer the client's requests
            // to other members (nor send a batch that would).
            if !message.is_object() || message.get("id") != Some(&id) {
                tracing::warn!(member = %member.route.id, "aggregate: a member answered for another request; refused");
                return rpc_error(
                    id,
                    -32603,
                    &format!("{} answered for another request", member.name()),
                );
            }
            map_message(&mut message, &member);
            // The JSON-RPC message is the answer; the member's HTTP status is its own (a 404
            // without a session of its own would make the client drop the aggregate's, every
            // member's: see `call_named` for the 404 that does).
            parts.status = StatusCode::OK;
            Response::from_parts(parts, full(message.to_string()))
        }
        Media::Other => Response::from_parts(parts, body),
    }
}

/// A member's message on its way to the client: its requests' ids mapped (the client's answer
/// comes back to this member), resource URIs prefixed.
fn map_message(message: &mut Value, member: &Member) {
    let is_request = message.get("method").is_some() && message.get("id").is_some();
    if is_request && let Some(id) = message.get("id").cloned() {
        message["id"] = Value::String(map_id(member.pos, &id));
    }
    // A member cancels a request it made: the client knows it by its mapped id (and a member
    // cannot name another member's request).
    if message.get("method").and_then(Value::as_str) == Some("notifications/cancelled")
        && let Some(id) = message.pointer("/params/requestId").cloned()
    {
        message["params"]["requestId"] = Value::String(map_id(member.pos, &id));
    }
    // URL-mode elicitations (2025-11-25) are named by the member that opened them: a member's
    // `notifications/elicitation/complete` can then close only its own, not another member's
    // (nor the gateway's own `postern-connect-...`). The client never sends an id back.
    let elicitations: &[&str] = match message.get("method").and_then(Value::as_str) {
        Some("elicitation/create") | Some("notifications/elicitation/complete") => {
            &["/params/elicitationId"]
        }
        _ => &[],
    };
    for pointer in elicitations {
        if let Some(slot) = message.pointer_mut(pointer) {
            *slot = Value::String(map_id(member.pos, slot));
        }
    }
    // An answer's URLElicitationRequiredError (-32042) lists the elicitations it needs.
    if let Some(listed) = message
        .pointer_mut("/error/data/elicitations")
        .and_then(Value::as_array_mut)
    {
        for elicitation in listed {
            if let Some(slot) = elicitation.get_mut("elicitationId") {
                *slot = Value::String(map_id(member.pos, slot));
            }
        }
    }
    if member.prefix.is_empty() {
        return;
    }
    if let Some(contents) = message
        .pointer_mut("/result/contents")
        .and_then(Value::as_array_mut)
    {
        for content in contents {
            if let Some(uri) = content.get("uri").and_then(Value::as_str) {
                content["uri"] = Value::String(format!("{}{uri}", member.prefix));
            }
        }
    }
    if message.get("method").and_then(Value::as_str) == Some("notifications/resources/updated")
        && let Some(uri) = message.pointer("/params/uri").and_then(Value::as_str)
    {
        message["params"]["uri"] = Value::String(format!("{}{uri}", member.prefix));
    }
    // Resources a tool result or a prompt links or embeds are the member's: the client reads
    // them through the aggregate by their mapped URI, as it would a listed one.
    if let Some(content) = message
        .pointer_mut("/result/content")
        .and_then(Value::as_array_mut)
    {
        content
            .iter_mut()
            .for_each(|block| map_content_uri(block, member));
    }
    if let Some(messages) = message
        .pointer_mut("/result/messages")
        .and_then(Value::as_array_mut)
    {
        for message in messages {
            if let Some(block) = message.get_mut("content") {
                map_content_uri(block, member);
            }
        }
    }
}

/// Prefixes the URI of a `resource_link` or an embedded `resource` content block.
fn map_content_uri(block: &mut Value, member: &Member) {
    let at = match block.get("type").and_then(Value::as_str) {
        Some("resource_link") => "/uri",
        Some("resource") => "/resource/uri",
        _ => return,
    };
    if let Some(uri) = block.pointer_mut(at)
        && let Some(text) = uri.as_str()
    {
        *uri = Value::String(format!("{}{text}", member.prefix));
    }
}

/// `text` as a header value, in SEP-2243's form: as it is when printable ASCII without edge
/// blanks, else `=?base64?...?=`.
fn header_text(text: &str) -> String {
    use base64::Engine;
    let plain = !text.starts_with([' ', '\t'])
        && !text.ends_with([' ', '\t'])
        && text.chars().all(|c| (' '..='~').contains(&c));
    if plain {
        text.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(text)
        )
    }
}

/// The id a member's request gets toward the client.
fn map_id(pos: usize, id: &Value) -> String {
    format!("postern:{pos}:{id}")
}

/// The member and its own id, from a mapped id.
fn unmap_id(mapped: &str) -> Option<(usize, Value)> {
    let rest = mapped.strip_prefix("postern:")?;
    let (pos, id) = rest.split_once(':')?;
    Some((pos.parse().ok()?, serde_json::from_str(id).ok()?))
}

/// Why a member did not answer, for people.
fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Answered(_) => "it answered".into(),
        Outcome::Refused(_) => "your access to it is refused by its policy".into(),
        Outcome::NotConnected { connect_url } => {
            format!("your account at its provider is not connected: {connect_url}")
        }
        Outcome::Unavailable(why) => why.clone(),
    }
}

/// Where the user connects their upstream account for `route` (the gateway's connect page).
fn connect_url(ctx: &RequestContext, route: &Route) -> String {
    let origin = ctx.origin();
    let resource = crate::oauth_server::route_resource(route, &origin);
    format!(
        "{origin}/.pomerium/mcp/connect?resource={}&redirect_url={}",
        crate::web::reply::encode(&resource),
        crate::web::reply::encode(&format!("{origin}/.pomerium/"))
    )
}

fn json_answer(message: &Value) -> Response<Body> {
    let mut response = Response::new(full(message.to_string()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// One message as an event stream of one event.
fn sse_answer(message: &Value) -> Response<Body> {
    let mut response = Response::new(full(format!("event: message\ndata: {message}\n\n")));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn rpc_error(id: Value, code: i64, message: &str) -> Response<Body> {
    json_answer(&json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
}

/// A tool result that is an error (the model reads it), with the connect URL in `_meta`.
fn tool_error(id: Value, text: &str, connect_url: Option<&str>) -> Response<Body> {
    let mut result = json!({"content": [{"type": "text", "text": text}], "isError": true});
    if let Some(url) = connect_url {
        result["_meta"] = json!({"dev.postern/connect_url": url});
    }
    json_answer(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

fn status_only(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(postern_gateway::body::empty());
    *response.status_mut() = status;
    response
}

/// Runs `futures` concurrently; their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// A member's event stream, each event's message mapped ([`map_message`]) as it completes.
struct MapEvents {
    inner: Body,
    splitter: EventSplitter,
    member: Member,
    /// Leave out `id:` fields (streams merged).
    drop_ids: bool,
    /// The id of the one request whose answer may come on this stream (`None`: a GET stream,
    /// where no answer belongs). Answers to any other id are dropped: a member cannot answer
    /// the client's requests to other members.
    answers: Option<Value>,
    /// The progress token of that request (`None`: it asked for no progress).
    progress: Option<Value>,
}

impl MapEvents {
    fn new(inner: Body, member: Member) -> Self {
        Self {
            inner,
            splitter: EventSplitter::default(),
            member,
            drop_ids: false,
            answers: None,
            progress: None,
        }
    }
}

impl HttpBody for MapEvents {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    };
                    let events = match this.splitter.push(&data) {
                        Ok(events) => events,
                        Err(why) => return Poll::Ready(Some(Err(why.into()))),
                    };
                    let mut out = String::new();
                    for event in events {
                        let event = if this.drop_ids {
                            event
                                .split('\n')
                                .filter(|l| l.split_once(':').map_or(*l, |(f, _)| f) != "id")
                                .collect::<Vec<_>>()
                                .join("\n")
                        } else {
                            event
                        };
                        if event.is_empty() {
                            continue;
                        }
                        match map_event(
                            &event,
                            &this.member,
                            this.answers.as_ref(),
                            this.progress.as_ref(),
                            this.drop_ids,
                        ) {
                            Some(event) => {
                                out.push_str(&event);
                                out.push_str("\n\n");
                            }
                            None => {
                                tracing::warn!(member = %this.member.route.id, "aggregate: dropped a member's event (an answer to another request, a batch, unreadable or too large once mapped)")
                            }
                        }
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                    }
                }
                other => return other,
            }
        }
    }
}

/// Several members' event streams as one: whole events, from whichever has one; it ends
/// when all have ended.
struct Merged {
    streams: Vec<MapEvents>,
    next: usize,
}

impl HttpBody for Merged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut i = 0;
        while i < this.streams.len() {
            // Round-robin, so one busy member cannot starve the others.
            let at = (this.next + i) % this.streams.len();
            match Pin::new(&mut this.streams[at]).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.next = at + 1;
                    return Poll::Ready(Some(Ok(frame)));
                }
                // A member's stream that ended or failed leaves the others running.
                Poll::Ready(_) => {
                    this.streams.remove(at);
                    continue;
                }
                Poll::Pending => i += 1,
            }
        }
        if this.streams.is_empty() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// One SSE event of a member, its message mapped; other fields (`id`, `retry`, comments) kept.
fn map_event(
    event: &str,
    member: &Member,
    answers: Option<&Value>,
    progress: Option<&Value>,
    merged: bool,
) -> Option<String> {
    if event.starts_with('\u{feff}') {
        // A byte order mark hides the event's fields here, but a client drops one at the start
        // of what it reads: were this the first event passed on, it would read it unmapped.
        return None;
    }
    let Some(data) = event_data(event) else {
        // Comments, `retry:`, an id alone: no message.
        return Some(event.to_owned());
    };
    // Data the gateway cannot read is dropped: the client's parser may read it (a lone
    // surrogate escape, say), as an answer to another request.
    let mut message = serde_json::from_str::<Value>(&data).ok()?;
    let is_answer = message.get("method").is_none();
    if !message.is_object() || (is_answer && message.get("id") != answers) {
        return None;
    }
    // Progress names its request by a token the client chose (the TypeScript SDK's is the
    // request id): on a call's stream only that call's token passes, so a member cannot fake
    // another member's progress (nor keep the client waiting on it); on a merged `GET` stream
    // no member's progress can be told from another's, so none passes.
    if message.get("method").and_then(Value::as_str) == Some("notifications/progress") {
        let token = message.pointer("/params/progressToken");
        let own = match answers {
            Some(_) => progress.is_some() && token == progress,
            None => !merged,
        };
        if !own {
            tracing::debug!(member = %member.route.id, "aggregate: dropped progress for another request");
            return None;
        }
    }
    map_message(&mut message, member);
    let mut out = String::new();
    for line in event
        .split('\n')
        .filter(|l| l.split_once(':').map_or(*l, |(f, _)| f) != "data")
    {
        out.push_str(line);
        out.push('\n');
    }
    let data = message.to_string();
    // Written again, a message can be longer than the member sent it (`1e5` is written
    // `100000.0`): one over the limit on a message would break the stream for every reader
    // after it (the aggregate's tool rules, a merged `GET` stream), so it is dropped.
    if data.len() > MAX_MESSAGE_BYTES - 1024 {
        tracing::warn!(member = %member.route.id, "aggregate: dropped a member's event too large once mapped");
        return None;
    }
    out.push_str("data: ");
    out.push_str(&data);
    Some(out)
}

/// The user a delegated call is made for (for the binding of sealed values).
pub(crate) fn user_of(delegated: &Delegated) -> &Session {
    &delegated.session
}
