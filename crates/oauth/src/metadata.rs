//! Discovery documents: where an MCP client learns that a route is protected and by whom.

use serde_json::{Value, json};

/// The canonical resource URL of an MCP route (RFC 8707 / RFC 9728): scheme and host in lower
/// case, no default port, the path without a trailing slash (none at all for the root, as
/// Pomerium writes it: `https://mcp.example.com`), no query. Tokens issued for the older
/// root form (`https://mcp.example.com/`) still match: [`same_resource`] compares canonical
/// forms.
pub fn resource_url(origin: &str, path: &str) -> String {
    let origin = match url::Url::parse(origin) {
        Ok(url) => url.origin().ascii_serialization(),
        Err(_) => origin.trim_end_matches('/').to_ascii_lowercase(),
    };
    format!("{origin}{}", path.trim_end_matches('/'))
}

/// Whether two resource URLs name the same resource (after normalisation).
pub fn same_resource(a: &str, b: &str) -> bool {
    // Tokens carry the canonical form they were issued for: equal strings need no parsing (this
    // runs on every MCP request with a token).
    if a == b {
        return true;
    }
    let norm = |s: &str| match url::Url::parse(s) {
        Ok(url) => resource_url(&url.origin().ascii_serialization(), url.path()),
        Err(_) => s.to_owned(),
    };
    norm(a) == norm(b)
}

/// The URL of the protected resource metadata for `resource` (RFC 9728 §3.1: the well-known
/// path inserted before the resource's path).
pub fn protected_resource_metadata_url(resource: &str) -> String {
    match url::Url::parse(resource) {
        Ok(url) => {
            let path = url.path().trim_end_matches('/');
            format!(
                "{}/.well-known/oauth-protected-resource{path}",
                url.origin().ascii_serialization()
            )
        }
        Err(_) => format!("{resource}/.well-known/oauth-protected-resource"),
    }
}

/// RFC 9728 protected resource metadata.
pub fn protected_resource(
    resource: &str,
    issuer: &str,
    name: Option<&str>,
    scopes: &[&str],
) -> Value {
    let mut doc = json!({
        "resource": resource,
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "scopes_supported": scopes,
    });
    if let Some(name) = name {
        doc["resource_name"] = json!(name);
    }
    doc
}

/// RFC 8414 authorization server metadata for the issuer `issuer` (`https://host`).
pub fn authorization_server(issuer: &str, registration: bool, scopes: &[&str]) -> Value {
    let endpoint = |path: &str| format!("{}{path}", issuer.trim_end_matches('/'));
    let mut doc = json!({
        "issuer": issuer,
        "authorization_endpoint": endpoint("/.pomerium/mcp/authorize"),
        "token_endpoint": endpoint("/.pomerium/mcp/token"),
        "revocation_endpoint": endpoint("/.pomerium/mcp/revoke"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS256", "ES256"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
        "scopes_supported": scopes,
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
    });
    if registration {
        doc["registration_endpoint"] = json!(endpoint("/.pomerium/mcp/register"));
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_urls_are_normalised() {
        assert_eq!(
            resource_url("https://MCP.example.com:443", "/notion/"),
            "https://mcp.example.com/notion"
        );
        assert_eq!(
            resource_url("http://localhost:8080", ""),
            "http://localhost:8080"
        );
        assert_eq!(resource_url("https://a.test", "/"), "https://a.test");
        assert!(
            same_resource("https://a.test/", "https://a.test"),
            "a token for the older root form still matches"
        );
        assert!(same_resource("https://A.test:443/x/", "https://a.test/x"));
        assert!(!same_resource("https://a.test/x", "https://a.test/y"));
        assert!(!same_resource("https://a.test/x", "https://b.test/x"));
    }

    #[test]
    fn metadata_urls_insert_the_well_known_path() {
        assert_eq!(
            protected_resource_metadata_url("https://mcp.example.com/notion"),
            "https://mcp.example.com/.well-known/oauth-protected-resource/notion"
        );
        assert_eq!(
            protected_resource_metadata_url("https://mcp.example.com/"),
            "https://mcp.example.com/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn authorization_server_metadata_advertises_s256_only() {
        let doc = authorization_server("https://mcp.example.com", true, &["mcp"]);
        assert_eq!(doc["issuer"], json!("https://mcp.example.com"));
        assert_eq!(doc["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(
            doc["registration_endpoint"],
            json!("https://mcp.example.com/.pomerium/mcp/register")
        );
        assert!(
            authorization_server("https://a.test", false, &[])
                .get("registration_endpoint")
                .is_none()
        );
    }
}
