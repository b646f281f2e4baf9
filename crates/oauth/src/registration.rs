//! Dynamic client registration (RFC 7591) checks, and the redirect URI rules every client
//! (registered or described by a client ID metadata document) must follow: `https`, `http` only
//! on a loopback host, or a private-use scheme (`com.example.app:/callback`, RFC 8252 §7.1).

use serde_json::{Map, Value, json};

use crate::{ErrorCode, OAuthError};

/// How a client authenticates at the token endpoint.
pub const AUTH_METHODS: [&str; 4] = [
    "none",
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
];

/// Checks one redirect URI.
pub fn check_redirect_uri(uri: &str) -> Result<(), OAuthError> {
    let bad = |why: &str| OAuthError::new(ErrorCode::InvalidRedirectUri, format!("{uri:?}: {why}"));
    let url = url::Url::parse(uri).map_err(|e| bad(&format!("not an absolute URI ({e})")))?;
    if url.fragment().is_some() {
        return Err(bad("must not contain a fragment"));
    }
    match url.scheme() {
        "https" if url.host_str().is_some() => Ok(()),
        "http" if is_loopback(url.host_str().unwrap_or("")) => Ok(()),
        "http" => Err(bad(
            "http is only allowed for loopback hosts (localhost, 127.0.0.1, [::1]); use https",
        )),
        "javascript" | "data" | "file" | "vbscript" | "about" | "blob" | "ftp" | "ws" | "wss" => {
            Err(bad("this scheme cannot be a redirect URI"))
        }
        // Private-use schemes must look like a reversed domain (RFC 8252 §7.1).
        scheme if scheme.contains('.') => Ok(()),
        _ => Err(bad(
            "use https, http on a loopback host, or a private-use scheme like com.example.app:/callback",
        )),
    }
}

/// Whether `host` is a loopback host.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether a redirect URI presented in a request matches a registered one: exactly, except that
/// for loopback hosts the port may differ (RFC 8252 §7.3: native apps pick a free port).
pub fn redirect_uri_matches(registered: &str, presented: &str) -> bool {
    if registered == presented {
        return true;
    }
    let (Ok(a), Ok(b)) = (url::Url::parse(registered), url::Url::parse(presented)) else {
        return false;
    };
    a.scheme() == "http"
        && b.scheme() == "http"
        && is_loopback(a.host_str().unwrap_or(""))
        && a.host_str() == b.host_str()
        && a.path() == b.path()
        && a.query() == b.query()
        // Found by the property tests: `http://[::1]/cb#` matched (RFC 6749 §3.1.2: a
        // redirection endpoint has no fragment), and so did another userinfo.
        && b.fragment().is_none()
        && a.username() == b.username()
        && a.password() == b.password()
}

/// The client metadata fields kept (RFC 7591 §2), each string with its largest size in bytes.
/// Anything else a client sends is dropped, not stored: a registration is anonymous, so what it
/// may make the gateway keep is small and known.
pub const KEPT_STRINGS: [(&str, usize); 9] = [
    ("client_name", 200),
    ("client_uri", MAX_URI_BYTES),
    ("logo_uri", MAX_URI_BYTES),
    ("scope", 1024),
    ("software_id", 200),
    ("software_version", 200),
    ("token_endpoint_auth_method", 64),
    ("jwks_uri", MAX_URI_BYTES),
    // A client ID metadata document's own URL (registrations get theirs from the gateway).
    ("client_id", MAX_URI_BYTES),
];
/// Largest redirect URI (and other URI), in bytes.
pub const MAX_URI_BYTES: usize = 2048;
/// Most redirect URIs a client may register.
pub const MAX_REDIRECT_URIS: usize = 10;
/// Largest inline `jwks`, serialized, in bytes (a few public keys).
pub const MAX_JWKS_BYTES: usize = 8 * 1024;

/// Validates RFC 7591 client metadata and returns the metadata to store: only the fields in
/// [`KEPT_STRINGS`] plus `redirect_uris`, `grant_types`, `response_types` and `jwks`, each within
/// its size limit (`invalid_client_metadata` naming the field and the limit otherwise), with
/// defaults filled in: `token_endpoint_auth_method` `client_secret_basic`, grants
/// `authorization_code` and `refresh_token`, response type `code`.
pub fn validate_metadata(request: &Value) -> Result<Map<String, Value>, OAuthError> {
    let Value::Object(request) = request else {
        return Err(invalid(
            "the registration request must be a JSON object".into(),
        ));
    };
    check_redirect_uris(request)?;
    check_sizes(request)?;
    let method = auth_method(request)?;
    let grants = grant_types(request)?;
    if let Some(types) = request.get("response_types").and_then(Value::as_array)
        && types.iter().any(|t| t != "code")
    {
        return Err(invalid("response_types may only contain code".into()));
    }
    let mut metadata: Map<String, Value> = KEPT_STRINGS
        .iter()
        .map(|(key, _)| *key)
        .chain(["redirect_uris", "jwks"])
        .filter_map(|key| Some((key.to_owned(), request.get(key)?.clone())))
        .collect();
    metadata.insert("token_endpoint_auth_method".into(), json!(method));
    metadata.insert("grant_types".into(), json!(grants));
    metadata.insert("response_types".into(), json!(["code"]));
    Ok(metadata)
}

fn invalid(message: String) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidClientMetadata, message)
}

/// `redirect_uris`: present, not too many, each a string within [`MAX_URI_BYTES`] that
/// [`check_redirect_uri`] accepts.
fn check_redirect_uris(request: &Map<String, Value>) -> Result<(), OAuthError> {
    let redirect_uris = request
        .get("redirect_uris")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        // Missing metadata is invalid metadata (as Pomerium answers); invalid_redirect_uri is for
        // a URI that is there and wrong.
        .ok_or_else(|| invalid("redirect_uris is required: a non-empty list".into()))?;
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(invalid(format!(
            "redirect_uris has {} entries; at most {MAX_REDIRECT_URIS} are accepted",
            redirect_uris.len()
        )));
    }
    for uri in redirect_uris {
        let uri = uri.as_str().ok_or_else(|| {
            OAuthError::new(
                ErrorCode::InvalidRedirectUri,
                "redirect_uris must be strings",
            )
        })?;
        if uri.len() > MAX_URI_BYTES {
            return Err(invalid(format!(
                "a redirect_uris entry is {} bytes; at most {MAX_URI_BYTES} are accepted",
                uri.len()
            )));
        }
        check_redirect_uri(uri)?;
    }
    Ok(())
}

/// The kept strings and `jwks` are of the right type and within their limits.
fn check_sizes(request: &Map<String, Value>) -> Result<(), OAuthError> {
    for (key, max) in KEPT_STRINGS {
        match request.get(key) {
            Some(Value::String(value)) if value.len() > max => {
                return Err(invalid(format!(
                    "{key} is {} bytes; at most {max} are accepted",
                    value.len()
                )));
            }
            Some(Value::String(_)) | None => {}
            Some(_) => return Err(invalid(format!("{key} must be a string"))),
        }
    }
    if let Some(jwks) = request.get("jwks") {
        let size = jwks.to_string().len();
        if !jwks.is_object() || size > MAX_JWKS_BYTES {
            return Err(invalid(format!(
                "jwks must be a JWK set of at most {MAX_JWKS_BYTES} bytes (it is {size})"
            )));
        }
    }
    Ok(())
}

/// `token_endpoint_auth_method`, `client_secret_basic` by default; `private_key_jwt` needs
/// keys to check assertions with.
fn auth_method(request: &Map<String, Value>) -> Result<&str, OAuthError> {
    let method = request
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .unwrap_or("client_secret_basic");
    if !AUTH_METHODS.contains(&method) {
        return Err(invalid(format!(
            "token_endpoint_auth_method {method:?} is not supported; use one of {AUTH_METHODS:?}"
        )));
    }
    if method == "private_key_jwt"
        && request.get("jwks_uri").is_none()
        && request.get("jwks").is_none()
    {
        return Err(invalid("private_key_jwt needs jwks_uri or jwks".into()));
    }
    Ok(method)
}

/// `grant_types`, `authorization_code` and `refresh_token` by default; only those two are
/// supported, and a client must be able to get a code.
fn grant_types(request: &Map<String, Value>) -> Result<Vec<String>, OAuthError> {
    let grants: Vec<String> = match request.get("grant_types") {
        None => vec!["authorization_code".into(), "refresh_token".into()],
        Some(Value::Array(items)) if items.len() <= 4 => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            return Err(invalid(
                "grant_types must be a list of at most 4 entries".into(),
            ));
        }
    };
    if let Some(bad) = grants
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(invalid(format!(
            "grant type {bad:?} is not supported (authorization_code, refresh_token)"
        )));
    }
    if !grants.iter().any(|g| g == "authorization_code") {
        return Err(invalid(
            "grant_types must include authorization_code".into(),
        ));
    }
    Ok(grants)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_rules() {
        for ok in [
            "https://app.example.com/cb",
            "http://127.0.0.1:33418/callback",
            "http://localhost/cb",
            "http://[::1]:9/cb",
            "com.example.app:/oauth2redirect",
        ] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://app.example.com/cb",
            "javascript:alert(1)",
            "https://a.test/cb#frag",
            "myapp:/cb",
            "/relative",
            "data:text/html,x",
        ] {
            assert_eq!(
                check_redirect_uri(bad).unwrap_err().code,
                ErrorCode::InvalidRedirectUri,
                "{bad}"
            );
        }
    }

    #[test]
    fn redirect_matching_is_exact_except_the_loopback_port() {
        assert!(redirect_uri_matches(
            "https://a.test/cb",
            "https://a.test/cb"
        ));
        assert!(!redirect_uri_matches(
            "https://a.test/cb",
            "https://a.test/cb/"
        ));
        assert!(
            !redirect_uri_matches("https://a.test/cb", "https://a.test:8443/cb"),
            "no port rule off loopback"
        );
        assert!(!redirect_uri_matches(
            "https://a.test/cb",
            "https://a.test/cb?x=1"
        ));
        assert!(redirect_uri_matches(
            "http://127.0.0.1/callback",
            "http://127.0.0.1:51234/callback"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/callback",
            "http://127.0.0.1:51234/other"
        ));
        assert!(!redirect_uri_matches(
            "http://127.0.0.1/callback",
            "http://localhost:51234/callback"
        ));
        for other in [
            "http://127.0.0.1:51234/callback#",
            "http://127.0.0.1:51234/callback#x",
            "http://eve@127.0.0.1:51234/callback",
            "http://:pw@127.0.0.1/callback",
        ] {
            assert!(
                !redirect_uri_matches("http://127.0.0.1/callback", other),
                "{other}"
            );
        }
    }

    #[test]
    fn only_known_fields_within_their_limits_are_kept() {
        let junk = "x".repeat(60_000);
        let kept = validate_metadata(&json!({
            "redirect_uris": ["https://a.test/cb"],
            "client_name": "Test",
            "token_endpoint_auth_method": "none",
            "junk": junk,
            "contacts": ["a@a.test"],
        }))
        .unwrap();
        let mut keys: Vec<&str> = kept.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "client_name",
                "grant_types",
                "redirect_uris",
                "response_types",
                "token_endpoint_auth_method"
            ]
        );

        let refused = |request: Value, field: &str, limit: &str| {
            let error = validate_metadata(&request).unwrap_err();
            assert_eq!(error.code, ErrorCode::InvalidClientMetadata, "{request}");
            assert!(
                error.description.contains(field) && error.description.contains(limit),
                "{}",
                error.description
            );
        };
        let uri = |n: usize| format!("https://a.test/{}", "p".repeat(n));
        refused(
            json!({"redirect_uris": ["https://a.test/cb"], "client_name": "n".repeat(201)}),
            "client_name",
            "200",
        );
        refused(
            json!({"redirect_uris": (0..11).map(|i| format!("https://a.test/{i}")).collect::<Vec<_>>()}),
            "redirect_uris",
            "10",
        );
        refused(
            json!({"redirect_uris": [uri(2048)]}),
            "redirect_uris",
            "2048",
        );
        refused(
            json!({"redirect_uris": ["https://a.test/cb"], "logo_uri": uri(2048)}),
            "logo_uri",
            "2048",
        );
        refused(
            json!({"redirect_uris": ["https://a.test/cb"], "token_endpoint_auth_method": "private_key_jwt",
                   "jwks": {"keys": [{"kty": "x".repeat(9000)}]}}),
            "jwks",
            "8192",
        );
        assert!(
            validate_metadata(
                &json!({"redirect_uris": ["https://a.test/cb"], "client_name": "n".repeat(200)})
            )
            .is_ok()
        );
    }

    #[test]
    fn registration_metadata_is_validated() {
        let ok = validate_metadata(&json!({"redirect_uris": ["http://127.0.0.1/cb"], "client_name": "Test", "token_endpoint_auth_method": "none"})).unwrap();
        assert_eq!(
            ok["grant_types"],
            json!(["authorization_code", "refresh_token"])
        );
        for missing in [json!({}), json!({"redirect_uris": []})] {
            assert_eq!(
                validate_metadata(&missing).unwrap_err().code,
                ErrorCode::InvalidClientMetadata,
                "{missing}"
            );
        }
        assert_eq!(
            validate_metadata(&json!({"redirect_uris": ["http://evil.test/cb"]}))
                .unwrap_err()
                .code,
            ErrorCode::InvalidRedirectUri
        );
        assert_eq!(
            validate_metadata(&json!({"redirect_uris": ["https://a.test/cb"], "grant_types": ["client_credentials"]})).unwrap_err().code,
            ErrorCode::InvalidClientMetadata
        );
        assert!(validate_metadata(&json!({"redirect_uris": ["https://a.test/cb"], "token_endpoint_auth_method": "private_key_jwt"})).is_err());
        assert!(
            validate_metadata(
                &json!({"redirect_uris": ["https://a.test/cb"], "response_types": ["token"]})
            )
            .is_err()
        );
    }
}

/// Property-based tests (issue 17, hostile input): thousands of generated redirect URIs per
/// run (`PROPTEST_CASES` raises it).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    const REGISTERED: &[&str] = &[
        "https://app.example.com/cb",
        "http://127.0.0.1/callback",
        "http://localhost:8080/cb?x=1",
        "http://[::1]/cb",
        "com.example.app:/oauth2redirect",
    ];

    /// Pieces of redirect URIs an attacker presents: the registered one's parts and tricks
    /// (userinfo, backslashes, encoded separators, whitespace, IDNA, other ports and hosts).
    const PIECES: &[&str] = &[
        "http://",
        "https://",
        "HTTP://",
        "com.example.app:",
        "127.0.0.1",
        "localhost",
        "[::1]",
        "app.example.com",
        "evil.example",
        "@",
        "user:pw@",
        ":",
        ":8080",
        ":1",
        ":65536",
        "/",
        "//",
        "\\",
        "%2f",
        "%2F",
        "%40",
        "cb",
        "callback",
        "oauth2redirect",
        "?x=1",
        "?",
        "#",
        "#frag",
        " ",
        "\t",
        "\u{3002}",
        "\u{ff0e}",
        "app\u{3002}example\u{3002}com",
        "xn--",
        ".",
        "..",
        "%2e",
        "127.0.0.1.evil.example",
        "0x7f000001",
        "2130706433",
        "[::ffff:127.0.0.1]",
    ];

    fn presented() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(prop::sample::select(PIECES), 0..10).prop_map(|p| p.concat()),
            (
                prop::sample::select(REGISTERED),
                prop::collection::vec(prop::sample::select(PIECES), 0..3),
                any::<prop::sample::Index>()
            )
                .prop_map(|(r, p, at)| {
                    let at = at.index(r.len() + 1);
                    let at = (0..=at).rev().find(|&i| r.is_char_boundary(i)).unwrap_or(0);
                    format!("{}{}{}", &r[..at], p.concat(), &r[at..])
                }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(4000)
        ))]

        /// A presented redirect URI that matches a registered one sends the browser to the
        /// same place: same scheme, host, userinfo, path and query, no fragment; only the port
        /// of a loopback `http` URI may differ (RFC 8252 §7.3).
        #[test]
        fn a_matching_redirect_uri_goes_where_the_registered_one_goes(
            registered in prop::sample::select(REGISTERED),
            presented in presented(),
        ) {
            prop_assert!(check_redirect_uri(registered).is_ok());
            if !redirect_uri_matches(registered, &presented) || presented == registered {
                return Ok(());
            }
            let a = url::Url::parse(registered).unwrap();
            let b = url::Url::parse(&presented).unwrap();
            prop_assert_eq!(a.scheme(), b.scheme(), "{}", presented);
            prop_assert_eq!(a.host_str(), b.host_str(), "{}", presented);
            prop_assert!(is_loopback(b.host_str().unwrap_or("")), "{}", presented);
            prop_assert_eq!(a.username(), b.username(), "{}", presented);
            prop_assert_eq!(a.password(), b.password(), "{}", presented);
            prop_assert_eq!(a.path(), b.path(), "{}", presented);
            prop_assert_eq!(a.query(), b.query(), "{}", presented);
            prop_assert_eq!(b.fragment(), None, "{}", presented);
        }

        /// What `check_redirect_uri` accepts is an absolute URI without a fragment, `https`
        /// with a host, `http` on a loopback host, or a reversed-domain private-use scheme.
        #[test]
        fn only_safe_redirect_uris_are_accepted(uri in presented()) {
            if check_redirect_uri(&uri).is_err() {
                return Ok(());
            }
            let url = url::Url::parse(&uri).unwrap();
            prop_assert_eq!(url.fragment(), None);
            let ok = match url.scheme() {
                "https" => url.host_str().is_some_and(|h| !h.is_empty()),
                "http" => is_loopback(url.host_str().unwrap_or("")),
                scheme => scheme.contains('.'),
            };
            prop_assert!(ok, "{}", uri);
        }
    }
}
