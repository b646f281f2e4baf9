//! The aggregate's state in the client's hands, sealed with the store's keys (AES-GCM, see
//! `postern_store::Keyring`): the session id holds the members' session ids, a cursor the
//! members' cursors. Each is bound to the route, the user and the client (the sealing context
//! and a copy inside), so a value made for one of them is refused for another, and an altered
//! one is refused.

use std::collections::BTreeMap;

use postern_gateway::routes::Route;
use postern_store::Keyring;
use serde::{Deserialize, Serialize};

use super::Member;
use crate::enforcement::Delegated;

/// Who and where a sealed value is for.
pub(crate) struct Binding {
    context: String,
}

impl Binding {
    pub(crate) fn new(route: &Route, delegated: &Delegated) -> Self {
        // Each part is JSON-quoted: no value can pass for another by holding the separator.
        let context = serde_json::json!([
            route.id,
            super::user_of(delegated).user_id,
            delegated.client_id
        ])
        .to_string();
        Self { context }
    }

    fn context(&self, kind: &str) -> String {
        format!("mcp-aggregate-{kind}|{}", self.context)
    }
}

/// The aggregate session: each member's session id, by the member's route id.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct SessionState {
    /// Member route id -> its session id.
    m: BTreeMap<String, String>,
    /// The client declared URL-mode elicitation (MCP 2025-11-25) in `initialize`.
    #[serde(default)]
    e: bool,
}

impl SessionState {
    pub(crate) fn new(
        members: &[Member],
        sessions: Vec<Option<String>>,
        url_elicitation: bool,
    ) -> Self {
        let m = members
            .iter()
            .zip(sessions)
            .filter_map(|(member, sid)| Some((member.route.id.clone(), sid?)))
            .collect();
        Self {
            m,
            e: url_elicitation,
        }
    }

    /// Whether the client can be sent to a URL (URL-mode elicitation).
    pub(crate) fn url_elicitation(&self) -> bool {
        self.e
    }

    /// The member's session id, if it has one.
    pub(crate) fn member(&self, member: &Member) -> Option<String> {
        self.m.get(&member.route.id).cloned()
    }

    pub(crate) fn seal(&self, keys: &Keyring, binding: &Binding) -> Option<String> {
        let json = serde_json::to_vec(self).ok()?;
        keys.seal(&binding.context("session"), &json).ok()
    }

    /// The session, when `sealed` was made for this binding and not altered.
    pub(crate) fn open(keys: &Keyring, binding: &Binding, sealed: &str) -> Option<Self> {
        let json = keys.open(&binding.context("session"), sealed).ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// A list's cursor: the cursor of each member that has more, by route id.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Cursor {
    c: BTreeMap<String, String>,
}

impl Cursor {
    pub(crate) fn get(&self, member: &Member) -> Option<String> {
        self.c.get(&member.route.id).cloned()
    }

    pub(crate) fn set(&mut self, member: &Member, cursor: String) {
        self.c.insert(member.route.id.clone(), cursor);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.c.is_empty()
    }

    /// Sealed for one list method (`tools/list`, ...): a cursor of one list is no cursor of
    /// another (each member would be handed a cursor of a list it did not issue).
    pub(crate) fn seal(&self, keys: &Keyring, binding: &Binding, list: &str) -> Option<String> {
        let json = serde_json::to_vec(self).ok()?;
        keys.seal(&binding.context(&format!("cursor|{list}")), &json)
            .ok()
    }

    pub(crate) fn open(
        keys: &Keyring,
        binding: &Binding,
        list: &str,
        sealed: &str,
    ) -> Option<Self> {
        let json = keys
            .open(&binding.context(&format!("cursor|{list}")), sealed)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}
