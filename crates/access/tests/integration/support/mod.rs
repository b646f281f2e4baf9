//! What every gateway test sets up the same way: an in-memory store, test settings, local users,
//! a gateway serving a YAML config, and HTTP clients that do not follow redirects.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use postern_access::session::CookieSettings;
use postern_access::users::{LocalUser, hash_password};
use postern_access::{Access, AccessSettings};
use postern_config::IssuerFormat;
use postern_store::{Backend, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The shared secret of the test stores.
pub const SECRET: &[u8] = b"integration-test-shared-secret-0123456789";

/// Settings for a plain-HTTP localhost gateway: cookies without `Secure`, no identity headers,
/// no audit file, registration on, 1 h access tokens, no refresh grace, client metadata documents
/// accepted from 127.0.0.1 (where the tests serve them).
pub fn settings() -> AccessSettings {
    AccessSettings {
        cookie: CookieSettings {
            name: "_postern".into(),
            expire: Duration::from_secs(3600),
            secure: false,
            same_site: cookie::SameSite::Lax,
            domain: None,
        },
        pass_identity_headers: false,
        issuer_format: IssuerFormat::HostOnly,
        audit_file: None,
        authorize_log_fields: None,
        dynamic_registration: true,
        access_token_ttl: Duration::from_secs(3600),
        refresh_reuse_grace: Duration::ZERO,
        allowed_client_id_domains: vec!["127.0.0.1".into()],
        allowed_as_metadata_domains: vec![],
        registration: Default::default(),
        claim_headers: Vec::new(),
        authenticate: None,
        sign_in_email: None,
        refresh_idle_ttl: Duration::from_secs(30 * 24 * 3600),
        refresh_max_ttl: Duration::from_secs(90 * 24 * 3600),
    }
}

/// A local user with an argon2id hash of `password`.
pub fn user(email: &str, name: &str, groups: &[&str], password: &str) -> LocalUser {
    LocalUser {
        email: email.into(),
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        password_hash: hash_password(password).unwrap(),
        claims: Default::default(),
    }
}

pub async fn memory_store() -> Store {
    Store::open(&Backend::Memory, SECRET, &[]).await.unwrap()
}

/// Serves the routes of `yaml` on `listener` through `access` until `stop` is cancelled.
pub fn serve(listener: TcpListener, yaml: &str, access: Access, stop: &CancellationToken) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = postern_config::parse(yaml, Path::new("."), &HashMap::new())
        .unwrap_or_else(|e| panic!("test config: {e}"));
    let gateway = postern_gateway::Gateway::new(config, Arc::new(access));
    tokio::spawn(postern_gateway::server::serve(
        listener,
        None,
        gateway,
        stop.clone(),
    ));
}

/// A gateway on a free port serving `yaml` for `users` with `settings`, over an in-memory store
/// and a fresh signing key: its base URL (`http://localhost:PORT`) and the token that stops it.
pub async fn gateway(
    yaml: &str,
    users: Vec<LocalUser>,
    settings: AccessSettings,
) -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let signer = postern_access::assertion::Signer::from_pem(
        &postern_access::assertion::Signer::generate_pem(),
    )
    .unwrap();
    let access = Access::new(
        memory_store().await,
        postern_access::users::LocalUsers::new(users),
        signer,
        settings,
    );
    let stop = CancellationToken::new();
    serve(listener, yaml, access, &stop);
    (base, stop)
}

/// [`gateway`] with Ada (password `pw`) as its one user, and a browser signed in as her.
pub async fn gateway_with_ada(
    yaml: &str,
    settings: AccessSettings,
) -> (String, reqwest::Client, CancellationToken) {
    let ada = user("ada@example.com", "Ada", &["staff", "admins"], "pw");
    let (base, stop) = gateway(yaml, vec![ada], settings).await;
    let browser = browser();
    sign_in(&browser, &base, "ada@example.com", "pw").await;
    (base, browser, stop)
}

/// An API client: no cookies, redirects not followed.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A browser: cookies kept, redirects followed by hand.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The hidden fields of a page's forms, unescaped.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let unescape = |v: &str| {
        v.replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" name=\"")
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('"')?;
            let value = rest.strip_prefix(" value=\"")?.split_once('"')?.0;
            Some((unescape(name), unescape(value)))
        })
        .collect()
}

/// The anti-forgery field of a page's form.
pub fn csrf_field(html: &str) -> String {
    hidden_fields(html)
        .into_iter()
        .find(|(name, _)| name == "csrf_token")
        .map(|(_, value)| value)
        .unwrap_or_else(|| panic!("no csrf_token field in {html}"))
}

/// What a browser adds to a form post made by a click on a page of `base`.
pub fn clicked(request: reqwest::RequestBuilder, base: &str) -> reqwest::RequestBuilder {
    request
        .header("origin", base)
        .header("sec-fetch-site", "same-origin")
        .header("sec-fetch-mode", "navigate")
        .header("sec-fetch-user", "?1")
}

/// A fresh sign-in form at `base`: its anti-forgery cookie (`name=value`) and field.
pub async fn sign_in_form(base: &str) -> (String, String) {
    let page = client()
        .get(format!("{base}/.pomerium/sign_in"))
        .send()
        .await
        .unwrap();
    let cookie = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|c| c.starts_with("_postern_csrf="))
        .expect("the sign-in page sets the anti-forgery cookie");
    (cookie, csrf_field(&page.text().await.unwrap()))
}

/// Signs `browser` in through the form at `base`.
pub async fn sign_in(browser: &reqwest::Client, base: &str, email: &str, password: &str) {
    let page = browser
        .get(format!("{base}/.pomerium/sign_in"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let signed_in = clicked(browser.post(format!("{base}/.pomerium/sign_in")), base)
        .form(&[
            ("email", email),
            ("password", password),
            ("redirect_uri", "/"),
            ("csrf_token", &csrf_field(&page)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303, "sign-in as {email}");
}

/// Opens `/.pomerium/mcp/connect?{query}` in `browser` and clicks Connect on the confirmation
/// page (when the server needs connecting); the response to that (a redirect to the provider).
pub async fn connect(browser: &reqwest::Client, base: &str, query: &str) -> reqwest::Response {
    let page = browser
        .get(format!("{base}/.pomerium/mcp/connect?{query}"))
        .send()
        .await
        .unwrap();
    if page.status() != 200 {
        return page;
    }
    let html = page.text().await.unwrap();
    assert!(html.contains("Connect your"), "{html}");
    clicked(browser.post(format!("{base}/.pomerium/mcp/connect")), base)
        .form(&hidden_fields(&html))
        .send()
        .await
        .unwrap()
}

pub mod github;
pub mod notion_world;
pub mod oauth_client;
pub mod oauth_provider;
pub mod world;

/// The rules Pomerium's reference app (mcp-app-demo) applies to a `/.pomerium/mcp/routes` body
/// before it shows anything: `servers` a list; per server `name` and `url` strings,
/// `connected` and `needs_oauth` booleans, and `description` and `logo_url` absent or strings,
/// never `null` (a `null` makes it reject the whole list as "Invalid server data format").
pub fn assert_reference_app_accepts(body: &serde_json::Value) {
    let servers = body["servers"].as_array().expect("servers is a list");
    assert!(!servers.is_empty(), "{body}");
    for server in servers {
        for required in ["name", "url"] {
            assert!(server[required].is_string(), "{required} in {server}");
        }
        for flag in ["connected", "needs_oauth"] {
            assert!(server[flag].is_boolean(), "{flag} in {server}");
        }
        for optional in ["description", "logo_url"] {
            match server.get(optional) {
                None => {}
                Some(value) => assert!(value.is_string(), "{optional} in {server}"),
            }
        }
    }
}

/// Signs out as a click on the button of `/.pomerium/sign_out{query}` does (GET the page, POST
/// its form from this site), with `cookie` as the session when given (else the browser's jar).
pub async fn sign_out(
    browser: &reqwest::Client,
    base: &str,
    query: &str,
    cookie: Option<&str>,
) -> reqwest::Response {
    let with_cookie = |request: reqwest::RequestBuilder| match cookie {
        Some(cookie) => request.header("cookie", cookie),
        None => request,
    };
    let page = with_cookie(browser.get(format!("{base}/.pomerium/sign_out{query}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    with_cookie(clicked(
        browser.post(format!("{base}/.pomerium/sign_out")),
        base,
    ))
    .form(&hidden_fields(&page))
    .send()
    .await
    .unwrap()
}
