//! Browser round trips through another site (the identity provider, an upstream provider): what
//! to resume when the browser comes back ([`Resume`], kept server-side under the `state`), and
//! the cookie that binds the trip to the browser that started it ([`BindingCookie`]), so a
//! callback carried to another browser (login CSRF, a stolen link) is refused.

use std::collections::HashMap;
use std::time::Duration;

use cookie::SameSite;

use http::Response;
use http::header::HeaderMap;
use postern_gateway::body::Body;
use postern_store::hash_secret;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::web::cookies::CookieSpec;

/// How long a round trip may take (the pending record's and the cookie's lifetime).
pub const ROUND_TRIP_TTL_MS: i64 = 10 * 60 * 1000;

/// What a browser that comes back from a provider resumes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resume {
    /// An OpenID Connect sign-in.
    SignIn {
        /// The nonce the ID token must carry.
        nonce: String,
        /// Where the browser goes once signed in (already checked to be on this gateway).
        redirect: String,
        /// The gateway origin the provider was told to return to.
        origin: String,
    },
    /// An MCP client's authorization that needed the user's upstream account first.
    Authorize {
        /// The authorization request's parameters.
        query: HashMap<String, String>,
        /// The gateway origin the provider was told to return to.
        origin: String,
    },
    /// Connecting an upstream account from the portal or an app.
    Connect {
        /// Where the browser goes afterwards (already checked).
        redirect: String,
        /// The gateway origin the provider was told to return to.
        origin: String,
    },
    /// A session the sign-in origin hands to a route host (`authenticate_service_url`).
    Handoff {
        /// The page on the route host to return to (path and query, already checked).
        redirect: String,
        /// The route host's origin.
        origin: String,
        /// The hash of the `state` the route host bound to the browser.
        binding: String,
    },
}

impl Resume {
    /// As stored with the pending authorization.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// From the stored value; `None` for anything else (an older record: start again).
    pub fn from_value(value: &Value) -> Option<Self> {
        serde_json::from_value(value.clone()).ok()
    }

    /// The gateway origin the provider was told to return to.
    pub fn origin(&self) -> &str {
        match self {
            Resume::SignIn { origin, .. }
            | Resume::Authorize { origin, .. }
            | Resume::Connect { origin, .. }
            | Resume::Handoff { origin, .. } => origin,
        }
    }
}

/// A cookie that binds a round trip to the browser that started it: it carries the hash of the
/// trip's `state`, on the callback's path only, for the trip's lifetime.
pub struct BindingCookie {
    name: &'static str,
    path: &'static str,
}

/// The OIDC sign-in's binding.
pub const OIDC_SIGN_IN: BindingCookie = BindingCookie {
    name: "_postern_oidc",
    path: "/.pomerium/callback",
};

/// A route host's request for its session from the sign-in origin.
pub const HANDOFF: BindingCookie = BindingCookie {
    name: "_postern_handoff",
    path: "/.pomerium/handoff",
};

/// The upstream provider flow's binding.
pub const UPSTREAM: BindingCookie = BindingCookie {
    name: "_postern_upstream",
    path: "/.pomerium/",
};

impl BindingCookie {
    /// Binds the trip with `state` to the browser that gets `response`.
    pub fn set(&self, response: &mut Response<Body>, state: &str, secure: bool) {
        let lifetime = Duration::from_millis(ROUND_TRIP_TTL_MS.unsigned_abs());
        self.spec(secure)
            .set(response, &hash_secret(state), lifetime);
    }

    /// Whether this browser started the trip with `state`.
    pub fn matches(&self, headers: &HeaderMap, state: &str) -> bool {
        let expected = hash_secret(state);
        crate::web::cookies::values(headers, self.name).any(|value| value == expected)
    }

    /// Removes the binding (the trip is over, whichever way it ended).
    pub fn clear(&self, response: &mut Response<Body>, secure: bool) {
        self.spec(secure).clear(response);
    }

    /// `Lax`: the provider's redirect back is a top-level navigation from another site.
    fn spec(&self, secure: bool) -> CookieSpec {
        CookieSpec {
            name: self.name.into(),
            path: self.path,
            same_site: SameSite::Lax,
            secure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderValue};
    use serde_json::json;

    #[test]
    fn resume_states_round_trip_and_old_records_do_not_parse() {
        let states = [
            Resume::SignIn {
                nonce: "n".into(),
                redirect: "/x".into(),
                origin: "https://gw".into(),
            },
            Resume::Authorize {
                query: HashMap::from([("client_id".into(), "c".into())]),
                origin: "https://gw".into(),
            },
            Resume::Connect {
                redirect: "/".into(),
                origin: "https://gw".into(),
            },
        ];
        for state in states {
            assert_eq!(Resume::from_value(&state.to_value()), Some(state.clone()));
            assert_eq!(state.origin(), "https://gw");
        }
        assert_eq!(
            Resume::Connect {
                redirect: "/".into(),
                origin: "o".into()
            }
            .to_value(),
            json!({"kind": "connect", "redirect": "/", "origin": "o"})
        );
        assert_eq!(Resume::from_value(&json!({"nonce": "n"})), None);
    }

    #[test]
    fn a_binding_matches_only_its_own_state() {
        let mut response = Response::new(postern_gateway::body::empty());
        UPSTREAM.set(&mut response, "state-1", true);
        let set = response.headers()[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            set.contains("Path=/.pomerium/") && set.contains("Secure") && set.contains("HttpOnly")
        );
        let mut headers = HeaderMap::new();
        let pair = set.split(';').next().unwrap().to_owned();
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        assert!(UPSTREAM.matches(&headers, "state-1"));
        assert!(!UPSTREAM.matches(&headers, "state-2"));
        assert!(!OIDC_SIGN_IN.matches(&headers, "state-1"));
        let mut cleared = Response::new(postern_gateway::body::empty());
        UPSTREAM.clear(&mut cleared, false);
        assert!(
            cleared.headers()[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }
}
