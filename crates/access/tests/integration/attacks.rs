//! The attack review's findings, each performed against a running gateway: login CSRF, unbounded
//! bodies, parallel password guesses, redirects a browser resolves elsewhere, scripted consent,
//! fail-open tool-list filtering, claims the policy could not see, and tokens used beyond their
//! server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_access::Access;
use postern_access::assertion::Signer;
use postern_access::users::LocalUsers;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::support::{self, clicked, client, csrf_field, hidden_fields, oauth_client};

/// What the fake MCP server saw.
#[derive(Default)]
struct Seen {
    accept_encoding: Vec<String>,
    calls: usize,
}

/// A gateway with Ada (staff), Eve (staff, `team: red`) and Mallory, in front of a fake MCP
/// server that misbehaves on request: `/gz` answers gzip whatever it was asked, `/crlf` frames
/// SSE with CRLF, `GET` opens a stream that carries a tool list.
struct Target {
    base: String,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

const TOOLS: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"read_query","inputSchema":{"type":"object"}},{"name":"write_query","inputSchema":{"type":"object"}}]}}"#;

async fn fake_mcp_server(seen: Arc<Mutex<Seen>>, stop: &CancellationToken) -> String {
    use axum::body::Body;
    use axum::http::{Request, Response};
    let app = axum::Router::new().fallback(move |request: Request<Body>| {
        let seen = seen.clone();
        async move {
            {
                let mut seen = seen.lock().unwrap();
                seen.calls += 1;
                seen.accept_encoding.push(
                    request
                        .headers()
                        .get("accept-encoding")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default(),
                );
            }
            let path = request.uri().path().to_owned();
            let builder = Response::builder().status(200);
            if request.method() == "GET" {
                return builder
                    .header("content-type", "text/event-stream")
                    .body(Body::from(format!("id: 1\r\ndata: {TOOLS}\r\n\r\n")))
                    .unwrap();
            }
            if path.ends_with("/gz") {
                // A tool list, gzip-compressed (a stored deflate block: valid gzip).
                let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1];
                let len = TOOLS.len() as u16;
                gz.extend_from_slice(&len.to_le_bytes());
                gz.extend_from_slice(&(!len).to_le_bytes());
                gz.extend_from_slice(TOOLS.as_bytes());
                gz.extend_from_slice(&[0; 8]);
                return builder
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(Body::from(gz))
                    .unwrap();
            }
            if path.ends_with("/crlf") {
                return builder
                    .header("content-type", "text/event-stream")
                    .body(Body::from(format!(
                        "event: message\r\ndata: {TOOLS}\r\n\r\n"
                    )))
                    .unwrap();
            }
            builder
                .header("content-type", "application/json")
                .body(Body::from(
                    json!({"jsonrpc": "2.0", "id": 1, "result": {"content": []}}).to_string(),
                ))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

async fn target() -> Target {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let stop = CancellationToken::new();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let up = fake_mcp_server(seen.clone(), &stop).await;
    let yaml = format!(
        "insecure_server: true
routes:
  - from: http://localhost
    prefix: /tools
    to: {up}
    policy:
      allow:
        and:
          - authenticated_user: true
      deny:
        or:
          - mcp_tool: {{is: write_query}}
    mcp: {{}}
  - from: http://localhost
    prefix: /staff
    to: {up}
    policy:
      allow:
        and:
          - claim/groups: {{has: staff}}
      deny:
        or:
          - claim/team: {{is: red}}
          - claim/email: {{is: mallory@other.test}}
    mcp: {{}}
  - from: http://localhost
    prefix: /other
    to: {up}
    allow_any_authenticated_user: true
    mcp: {{}}
"
    );
    let mut eve = support::user("eve@example.com", "Eve", &["staff"], "eve pw");
    eve.claims.insert("team".into(), json!("red"));
    let users = LocalUsers::new(vec![
        support::user("ada@example.com", "Ada", &["staff"], "correct horse"),
        support::user("mallory@other.test", "Mallory", &["staff"], "mallory pw"),
        eve,
    ]);
    let access = Access::new(
        support::memory_store().await,
        users,
        Signer::from_pem(&Signer::generate_pem()).unwrap(),
        support::settings(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    support::serve(listener, &yaml, access, &stop);
    Target {
        base: format!("http://localhost:{port}"),
        seen,
        stop,
    }
}

/// A signed-in browser.
async fn browser_as(t: &Target, email: &str, password: &str) -> reqwest::Client {
    let browser = support::browser();
    support::sign_in(&browser, &t.base, email, password).await;
    browser
}

/// The session cookie a response sets, if any.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("_postern=") && !c.starts_with("_postern=;"))
        .map(|c| c.split(';').next().unwrap().to_owned())
}

/// Item 1: a page on another site auto-submits the sign-in form with the attacker's
/// credentials. Refused whichever way the forgery is dressed; no session is started.
#[tokio::test]
async fn a_forged_sign_in_signs_nobody_in() {
    let t = target().await;
    let url = format!("{}/.pomerium/sign_in", t.base);
    let creds = [
        ("email", "mallory@other.test"),
        ("password", "mallory pw"),
        ("redirect_uri", "/.pomerium/mcp/connect?resource=x"),
    ];
    // A cross-site form post, as a browser sends it (no anti-forgery pair: the attacker's page
    // cannot read the gateway's form or set its cookie).
    let forged = client()
        .post(&url)
        .header("origin", "https://evil.example")
        .header("sec-fetch-site", "cross-site")
        .form(&creds)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert!(session_cookie(&forged).is_none());
    // Even with a valid pair fetched by the attacker, the browser names the other site.
    let (cookie, field) = support::sign_in_form(&t.base).await;
    let mut with_pair = creds.to_vec();
    with_pair.push(("csrf_token", &field));
    for (origin, site) in [
        ("https://evil.example", "cross-site"),
        ("https://evil.localhost", "same-site"),
        ("null", "cross-site"),
    ] {
        let forged = client()
            .post(&url)
            .header("cookie", &cookie)
            .header("origin", origin)
            .header("sec-fetch-site", site)
            .form(&with_pair)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), 403, "{origin} {site}");
        assert!(session_cookie(&forged).is_none());
    }
    // A browser that sends no Origin (old, or a privacy setting): the pair decides.
    for form in [creds.to_vec(), with_pair.clone()] {
        let no_cookie = client().post(&url).form(&form).send().await.unwrap();
        assert_eq!(no_cookie.status(), 403, "the field without its cookie");
        assert!(session_cookie(&no_cookie).is_none());
    }
    let (other_cookie, _) = support::sign_in_form(&t.base).await;
    let mismatched = client()
        .post(&url)
        .header("cookie", &other_cookie)
        .form(&with_pair)
        .send()
        .await
        .unwrap();
    assert_eq!(mismatched.status(), 403, "a cookie of another form");
    let page = mismatched.text().await.unwrap();
    assert!(page.contains("Sign in again"), "{page}");
    // The real form, from the gateway's own page, works.
    let ok = client()
        .post(&url)
        .header("cookie", &cookie)
        .header("origin", &t.base)
        .header("sec-fetch-site", "same-origin")
        .form(&with_pair)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    assert!(session_cookie(&ok).is_some());
}

/// Item 1: a sign-in over another user's session is refused until they sign out; the first
/// user stays signed in.
#[tokio::test]
async fn a_sign_in_over_another_users_session_is_refused() {
    let t = target().await;
    let ada = browser_as(&t, "ada@example.com", "correct horse").await;
    let page = ada
        .get(format!("{}/.pomerium/sign_in", t.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let response = clicked(ada.post(format!("{}/.pomerium/sign_in", t.base)), &t.base)
        .form(&[
            ("email", "mallory@other.test"),
            ("password", "mallory pw"),
            ("redirect_uri", "/"),
            ("csrf_token", &csrf_field(&page)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    assert!(session_cookie(&response).is_none());
    assert!(response.text().await.unwrap().contains("ada@example.com"));
    let me: Value = ada
        .get(format!("{}/.pomerium/mcp/routes", t.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(me["servers"].is_array(), "Ada is still signed in: {me}");
}

/// Item 2: bodies the gateway reads itself are capped before they are read, and reading them
/// has a deadline; a 300 MB sign-in post is refused at once.
#[tokio::test]
async fn oversized_bodies_are_refused_before_they_are_read() {
    let t = target().await;
    let port = t.base.rsplit(':').next().unwrap().to_owned();
    for path in [
        "/.pomerium/sign_in",
        "/.pomerium/mcp/register",
        "/.pomerium/mcp/token",
        "/.pomerium/mcp/authorize",
    ] {
        let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 300000000\r\n\r\nemail=a"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0; 512];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer while the 300 MB body was pending"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
    }
    // Sent in chunks without a length: cut off at the cap, answered without reading the rest.
    let mut stream = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let head = format!(
        "POST /.pomerium/sign_in HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("4000\r\n{}\r\n", "a".repeat(0x4000));
    for _ in 0..64 {
        // The gateway may stop reading (and close) once it has refused.
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let mut answer = vec![0; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "chunked: {answer}");
    // Signed-in forms too.
    let ada = browser_as(&t, "ada@example.com", "correct horse").await;
    for path in ["/.pomerium/disconnect", "/.pomerium/mcp/routes/disconnect"] {
        let response = ada
            .post(format!("{}{path}", t.base))
            .header("origin", &t.base)
            // Not reused: the gateway closes a connection whose body it did not read.
            .header("connection", "close")
            // Just over the cap, so the whole body fits in the socket buffers and the early
            // answer is read rather than cut by the closing connection.
            .body("a".repeat(70_000))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "{path}");
    }
    // An email no one has: refused before it is hashed or stored.
    let (cookie, field) = support::sign_in_form(&t.base).await;
    let long = format!("{}@example.com", "a".repeat(400));
    let response = client()
        .post(format!("{}/.pomerium/sign_in", t.base))
        .header("cookie", cookie)
        .form(&[
            ("email", long.as_str()),
            ("password", "x"),
            ("csrf_token", &field),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}

/// Item 7: parallel guesses each reserve an attempt before the password is checked, so 16 at
/// once get at most 5 answers.
#[tokio::test]
async fn parallel_guesses_do_not_bypass_the_limit() {
    let t = target().await;
    let mut guesses = Vec::new();
    for i in 0..16 {
        let base = t.base.clone();
        let (cookie, field) = support::sign_in_form(&t.base).await;
        guesses.push(tokio::spawn(async move {
            client()
                .post(format!("{base}/.pomerium/sign_in"))
                .header("cookie", cookie)
                .form(&[
                    ("email", "ada@example.com"),
                    ("password", format!("guess {i}").as_str()),
                    ("csrf_token", &field),
                ])
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for guess in guesses {
        statuses.push(guess.await.unwrap());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(checked <= 5, "{checked} passwords checked: {statuses:?}");
    assert_eq!(checked + limited, 16, "{statuses:?}");
}

/// Item 5: redirect targets are resolved as a browser resolves them; tabs, newlines and
/// backslashes never lead off the gateway.
#[tokio::test]
async fn redirects_never_leave_the_gateway() {
    let t = target().await;
    for evil in [
        "/\t/evil.example/",
        "/\n/evil.example/",
        "/\r\n/evil.example/",
        "//evil.example/",
        "/\\evil.example/",
        "\\\\evil.example",
        " //evil.example",
        "https:evil.example",
        "https://evil.example/",
        "/%09/evil.example/",
        "javascript:alert(1)",
        // Dot segments that resolve to the path `//evil.example/` (issue 17's properties).
        ".//evil.example/",
        "/.//evil.example/",
        "/x/..//evil.example/",
    ] {
        let response = support::clicked(
            client().post(format!("{}/.pomerium/sign_out", t.base)),
            &t.base,
        )
        .form(&[("redirect_uri", evil)])
        .send()
        .await
        .unwrap();
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let resolved = url::Url::parse(&t.base).unwrap().join(&location).unwrap();
        assert_eq!(
            resolved.origin(),
            url::Url::parse(&t.base).unwrap().origin(),
            "sign_out?redirect_uri={evil:?} sent the browser to {location:?}"
        );
        assert!(
            !location.contains('\t') && !location.contains('\\'),
            "{location:?}"
        );

        let response = {
            let (cookie, field) = support::sign_in_form(&t.base).await;
            client()
                .post(format!("{}/.pomerium/sign_in", t.base))
                .header("cookie", cookie)
                .form(&[
                    ("email", "ada@example.com"),
                    ("password", "correct horse"),
                    ("redirect_uri", evil),
                    ("csrf_token", &field),
                ])
                .send()
                .await
                .unwrap()
        };
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let resolved = url::Url::parse(&t.base).unwrap().join(&location).unwrap();
        assert_eq!(
            resolved.origin(),
            url::Url::parse(&t.base).unwrap().origin(),
            "sign-in to {evil:?} sent the browser to {location:?}"
        );
    }
    let ada = browser_as(&t, "ada@example.com", "correct horse").await;
    let response = ada
        .get(format!("{}/.pomerium/mcp/connect", t.base))
        .query(&[
            ("redirect_url", "/\t/evil.example/"),
            ("resource", &format!("{}/tools", t.base)),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let plain = support::sign_out(&ada, &t.base, "?redirect_uri=/tools/a?b=1", None).await;
    assert_eq!(plain.headers()["location"], "/tools/a?b=1");
}

async fn register(t: &Target) -> String {
    let registered: Value = client()
        .post(format!("{}/.pomerium/mcp/register", t.base))
        .json(&json!({"redirect_uris": [crate::support::oauth_client::CALLBACK], "client_name": "Totally Claude", "token_endpoint_auth_method": "none"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    registered["client_id"].as_str().unwrap().to_owned()
}

fn authorize_url(t: &Target, client_id: &str, resource: &str) -> String {
    oauth_client::authorize_url(&t.base, client_id, oauth_client::CALLBACK, resource)
}

/// Item 6: the consent form is refused unless a person clicked it: a script on a page of the
/// same origin can read the form and submit it, but not with user activation.
#[tokio::test]
async fn consent_needs_a_click() {
    let t = target().await;
    let ada = browser_as(&t, "ada@example.com", "correct horse").await;
    let client_id = register(&t).await;
    let page = ada
        .get(authorize_url(&t, &client_id, &format!("{}/tools", t.base)))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().await.unwrap();
    // The page says who the client really is.
    assert!(
        html.contains("Unverified") && html.contains("127.0.0.1"),
        "{html}"
    );
    assert!(
        html.contains(&format!("{}/tools", t.base)),
        "the page names the server"
    );
    let mut fields = hidden_fields(&html);
    fields.push(("decision".into(), "allow".into()));
    let post = |extra: &[(&'static str, &'static str)]| {
        let mut request = ada
            .post(format!("{}/.pomerium/mcp/authorize", t.base))
            .header("origin", &t.base);
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        request.form(&fields).send()
    };
    // `form.submit()` from a script: a navigation, without user activation.
    let scripted = post(&[
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "navigate"),
    ])
    .await
    .unwrap();
    assert_eq!(scripted.status(), 400);
    assert!(scripted.headers().get("location").is_none(), "no code");
    // `fetch()` from a script.
    let fetched = post(&[
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "cors"),
    ])
    .await
    .unwrap();
    assert_eq!(fetched.status(), 400);
    // From another site, even "clicked".
    let cross = post(&[
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-user", "?1"),
    ])
    .await
    .unwrap();
    assert_eq!(cross.status(), 400);
    // A click.
    let clicked = post(&[
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-user", "?1"),
    ])
    .await
    .unwrap();
    assert_eq!(clicked.status(), 303);
    let location = clicked.headers()["location"].to_str().unwrap();
    assert!(location.contains("code="), "{location}");

    // Consent is per server: the same client on another server asks again.
    let other = ada
        .get(authorize_url(&t, &client_id, &format!("{}/other", t.base)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        other.status(),
        200,
        "consent for /tools is not consent for /other"
    );
    assert!(
        other
            .text()
            .await
            .unwrap()
            .contains("name=\"decision\" value=\"allow\"")
    );
    let again = ada
        .get(authorize_url(&t, &client_id, &format!("{}/tools", t.base)))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 303, "the consent for /tools is remembered");
}

/// Low: a resource on another origin is refused, not served by this origin's route of the
/// same path.
#[tokio::test]
async fn a_resource_on_another_origin_is_refused() {
    let t = target().await;
    let ada = browser_as(&t, "ada@example.com", "correct horse").await;
    let client_id = register(&t).await;
    let response = ada
        .get(authorize_url(&t, &client_id, "https://evil.example/tools"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let location = response.headers()["location"].to_str().unwrap();
    assert!(location.contains("error=invalid_target"), "{location}");
}

/// A TE for `resource`, through the whole OAuth flow as `browser`'s user.
async fn te_for(t: &Target, browser: &reqwest::Client, resource: &str) -> String {
    let client_id = register(t).await;
    let page = browser
        .get(authorize_url(t, &client_id, resource))
        .send()
        .await
        .unwrap();
    let location = if page.status() == 303 {
        page.headers()["location"].to_str().unwrap().to_owned()
    } else {
        let html = page.text().await.unwrap();
        let approved = clicked(
            browser.post(format!("{}/.pomerium/mcp/authorize", t.base)),
            &t.base,
        )
        .form(&oauth_client::allow_fields(&html))
        .send()
        .await
        .unwrap();
        approved.headers()["location"].to_str().unwrap().to_owned()
    };
    let code = crate::support::oauth_client::query_of(&location)["code"].clone();
    let (_, body, _) = crate::support::oauth_client::token(
        &t.base,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", crate::support::oauth_client::CALLBACK),
            ("client_id", &client_id),
            ("code_verifier", crate::support::oauth_client::VERIFIER),
        ],
        None,
    )
    .await;
    body["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

async fn mcp_post(t: &Target, path: &str, auth: Auth<'_>, body: &Value) -> reqwest::Response {
    let request = client()
        .post(format!("{}{path}", t.base))
        .header("accept", "application/json, text/event-stream")
        .json(body);
    let request = match auth {
        Auth::Bearer(te) => request.bearer_auth(te),
        Auth::Browser(browser) => {
            return browser
                .post(format!("{}{path}", t.base))
                .header("accept", "application/json, text/event-stream")
                .json(body)
                .send()
                .await
                .unwrap();
        }
    };
    request.send().await.unwrap()
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    Bearer(&'a str),
    Browser(&'a reqwest::Client),
}

/// Item 10: `claim/<name>` rules in matcher form, for local users' own fields and `claims`,
/// decide the same with the session cookie and with a TE (every MCP client).
#[tokio::test]
async fn claim_rules_see_the_same_identity_with_a_cookie_and_a_te() {
    let t = target().await;
    let staff = format!("{}/staff", t.base);
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    for (email, password, allowed) in [
        ("ada@example.com", "correct horse", true),
        // `claim/team: {is: red}` under deny.
        ("eve@example.com", "eve pw", false),
        // `claim/email: {is: ...}` under deny.
        ("mallory@other.test", "mallory pw", false),
    ] {
        let browser = browser_as(&t, email, password).await;
        let te = te_for(&t, &browser, &format!("{}/other", t.base)).await;
        let staff_te = if allowed {
            Some(te_for(&t, &browser, &staff).await)
        } else {
            None
        };
        // A denied MCP request gets a JSON-RPC error (HTTP 200); an allowed one the server's
        // result.
        let answer = |response: reqwest::Response| async move {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            (status, body)
        };
        let (status, body) =
            answer(mcp_post(&t, "/staff", Auth::Browser(&browser), &list).await).await;
        assert_eq!(status, 200);
        assert_eq!(
            body.get("result").is_some(),
            allowed,
            "{email} with a cookie: {body}"
        );
        if let Some(staff_te) = staff_te {
            let (status, body) =
                answer(mcp_post(&t, "/staff", Auth::Bearer(&staff_te), &list).await).await;
            assert_eq!(status, 200);
            assert!(body.get("result").is_some(), "{email} with a TE: {body}");
        } else {
            // The authorization server refuses a TE for a server the user may not use.
            let client_id = register(&t).await;
            let refused = browser
                .get(authorize_url(&t, &client_id, &staff))
                .send()
                .await
                .unwrap();
            let location = refused.headers()["location"].to_str().unwrap().to_owned();
            assert!(
                location.contains("error=access_denied"),
                "{email}: {location}"
            );
        }
        let _ = te;
    }
}

/// Item 9: tool lists are filtered on every stream of a route with tool rules, however the
/// server frames or encodes them; what cannot be read is not passed on.
#[tokio::test]
async fn tool_lists_are_filtered_however_they_arrive() {
    let t = target().await;
    let ada = browser_as(&t, "ada@example.com", "correct horse").await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    // SSE framed with CRLF.
    let crlf = mcp_post(&t, "/tools/crlf", Auth::Browser(&ada), &list).await;
    assert_eq!(crlf.status(), 200);
    let text = crlf.text().await.unwrap();
    assert!(
        text.contains("read_query") && !text.contains("write_query"),
        "{text}"
    );
    // A server that compresses although asked not to.
    let gz = ada
        .post(format!("{}/tools/gz", t.base))
        .header("accept", "application/json, text/event-stream")
        .header("accept-encoding", "gzip")
        .json(&list)
        .send()
        .await
        .unwrap();
    assert_eq!(gz.status(), 502);
    let body = gz.text().await.unwrap();
    assert!(
        !body.contains("write_query") && body.contains("compressed"),
        "{body}"
    );
    assert!(
        t.seen
            .lock()
            .unwrap()
            .accept_encoding
            .iter()
            .all(|e| e == "identity"),
        "the client's Accept-Encoding reached the server: {:?}",
        t.seen.lock().unwrap().accept_encoding
    );
    // A GET stream.
    let stream = ada
        .get(format!("{}/tools", t.base))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let text = stream.text().await.unwrap();
    assert!(
        text.contains("read_query") && !text.contains("write_query"),
        "{text}"
    );
}

/// Low: a TE a client got for one MCP server does not list or disconnect the user's servers.
#[tokio::test]
async fn a_server_te_cannot_use_the_app_endpoints() {
    let t = target().await;
    let ada = browser_as(&t, "ada@example.com", "correct horse").await;
    let te = te_for(&t, &ada, &format!("{}/other", t.base)).await;
    // The authorization probed the upstream for its own OAuth (one anonymous ping).
    let before = t.seen.lock().unwrap().calls;
    let listed = client()
        .get(format!("{}/.pomerium/mcp/routes", t.base))
        .bearer_auth(&te)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 401);
    let disconnect = client()
        .post(format!("{}/.pomerium/mcp/routes/disconnect", t.base))
        .bearer_auth(&te)
        .json(&json!({"routes": [format!("{}/tools", t.base)]}))
        .send()
        .await
        .unwrap();
    assert_eq!(disconnect.status(), 401);
    assert_eq!(t.seen.lock().unwrap().calls, before);
}

/// `jwt_claims_headers`: the upstream gets the user's claims in the configured headers, and a
/// client cannot supply them itself (signed in without the claim, or not signed in at all).
#[tokio::test]
async fn claim_headers_carry_the_users_claims_and_cannot_be_forged() {
    let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = echo_listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let pick = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().unwrap_or("?").to_owned())
        };
        axum::Json(json!({
            "email": pick("x-email"),
            "groups": pick("x-pomerium-claim-groups"),
            "team": pick("x-team"),
        }))
    });
    tokio::spawn(async move { axum::serve(echo_listener, app).await });
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, prefix: /private, to: 'http://{echo}', allow_any_authenticated_user: true}}
  - {{from: http://localhost, prefix: /public, to: 'http://{echo}', allow_public_unauthenticated_access: true}}
"
    );
    let settings = postern_access::AccessSettings {
        claim_headers: vec![
            ("x-email".parse().unwrap(), "email".into()),
            ("x-pomerium-claim-groups".parse().unwrap(), "groups".into()),
            ("x-team".parse().unwrap(), "team".into()),
        ],
        ..support::settings()
    };
    let (base, browser, stop) = support::gateway_with_ada(&yaml, settings).await;
    let forged = |client: &reqwest::Client, path: &str| {
        client
            .get(format!("{base}{path}"))
            .header("x-email", "admin@victim.example")
            .header("x-team", "finance")
            .header("x-pomerium-claim-groups", "admins")
            .send()
    };
    let seen: Value = forged(&browser, "/private")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["email"], json!("ada@example.com"));
    assert_eq!(seen["groups"], json!("staff,admins"));
    assert_eq!(
        seen["team"],
        json!(""),
        "Ada has no team claim: empty, not the client's"
    );
    let anonymous: Value = forged(&client(), "/public")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(anonymous, json!({"email": "", "groups": "", "team": ""}));
    stop.cancel();
}

/// `jwt_groups_filter` (global, per route, inferred from the route's policy) keeps the
/// assertion's `groups` and the `groups` claim header to the groups named; a route's
/// `jwt_issuer_format` sets its assertion's `iss`.
#[tokio::test]
async fn assertions_carry_only_the_allowed_groups_and_the_routes_issuer_format() {
    let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = echo_listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        use base64::Engine as _;
        let assertion = headers["x-pomerium-jwt-assertion"].to_str().unwrap();
        let payload = assertion.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        axum::Json(json!({
            "groups": claims["groups"],
            "iss": claims["iss"],
            "header": headers["x-pomerium-claim-groups"].to_str().unwrap(),
        }))
    });
    tokio::spawn(async move { axum::serve(echo_listener, app).await });
    let route = |prefix: &str, extra: &str| {
        format!(
            "  - {{from: http://localhost, prefix: {prefix}, to: 'http://{echo}', pass_identity_headers: true{extra}}}\n"
        )
    };
    let yaml = format!(
        "insecure_server: true\njwt_groups_filter: [staff]\nroutes:\n{}{}{}",
        route("/plain", ", allow_any_authenticated_user: true"),
        route(
            "/inferred",
            ", jwt_issuer_format: uri, jwt_groups_filter: {infer_from_ppl: true}, policy: {allow: {or: [{groups: {has: admins}}]}}"
        ),
        route(
            "/named",
            ", allow_any_authenticated_user: true, jwt_groups_filter: [nobody, admins]"
        ),
    );
    let settings = postern_access::AccessSettings {
        claim_headers: vec![("x-pomerium-claim-groups".parse().unwrap(), "groups".into())],
        ..support::settings()
    };
    // Ada is in staff and admins.
    let (base, browser, stop) = support::gateway_with_ada(&yaml, settings).await;
    let seen = |path: &'static str| {
        let browser = browser.clone();
        let url = format!("{base}{path}");
        async move {
            let response = browser.get(url).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
            response.json::<Value>().await.unwrap()
        }
    };
    assert_eq!(
        seen("/plain").await,
        json!({"groups": ["staff"], "iss": "localhost", "header": "staff"})
    );
    assert_eq!(
        seen("/inferred").await,
        json!({"groups": ["staff", "admins"], "iss": "https://localhost/", "header": "staff,admins"})
    );
    assert_eq!(
        seen("/named").await,
        json!({"groups": ["staff", "admins"], "iss": "localhost", "header": "staff,admins"})
    );
    // Again on the first route: still its own groups (nothing carried over between routes).
    assert_eq!(seen("/plain").await["groups"], json!(["staff"]));
    stop.cancel();
}

/// `cors_allow_preflight` lets only real CORS preflights through without sign-in, and a
/// `source_ip` policy admits only its networks.
#[tokio::test]
async fn preflights_and_source_networks_admit_only_what_they_name() {
    let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo = echo_listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            echo_listener,
            axum::Router::new().fallback(|| async { "upstream" }),
        )
        .await
    });
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, prefix: /api, to: 'http://{echo}', cors_allow_preflight: true, allow_any_authenticated_user: true}}
  - {{from: http://localhost, prefix: /office, to: 'http://{echo}', policy: {{allow: {{and: [{{source_ip: 10.0.0.0/8}}]}}}}}}
  - {{from: http://localhost, prefix: /here, to: 'http://{echo}', policy: {{allow: {{and: [{{source_ip: [127.0.0.0/8, '::1/128']}}]}}}}}}
"
    );
    let (base, stop) = support::gateway(&yaml, vec![], support::settings()).await;
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().status().as_u16()
    };
    let api = format!("{base}/api/items");
    let preflight = client()
        .request(reqwest::Method::OPTIONS, &api)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST");
    assert_eq!(status(preflight).await, 200, "a real preflight passes");
    let bare_options = client().request(reqwest::Method::OPTIONS, &api);
    assert_eq!(
        status(bare_options).await,
        401,
        "an OPTIONS that is no preflight"
    );
    let empty = client()
        .request(reqwest::Method::OPTIONS, &api)
        .header("origin", "")
        .header("access-control-request-method", "");
    assert_eq!(status(empty).await, 401, "empty preflight headers are none");
    let with_body = client()
        .request(reqwest::Method::OPTIONS, &api)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .body("{\"delete\": true}");
    assert_eq!(status(with_body).await, 401, "a preflight never has a body");
    let get = client().get(&api).header("origin", "https://app.example");
    assert_eq!(status(get).await, 401, "everything else still needs a user");

    assert_eq!(status(client().get(format!("{base}/here"))).await, 200);
    assert_ne!(status(client().get(format!("{base}/office"))).await, 200);
    stop.cancel();
}

/// Issue 14: browser-based MCP clients. A bearer-token request on an MCP server route gets the
/// upstream's answer with CORS headers any origin may read (`mcp-session-id` among the exposed
/// ones), never `Access-Control-Allow-Credentials`; a cookie-authenticated request gets none (any
/// site could otherwise read a signed-in user's answers); the preflight allows the headers of
/// the 2026-07-28 revision.
#[tokio::test]
async fn bearer_requests_on_mcp_routes_get_cors_and_cookie_requests_do_not() {
    let t = target().await;
    let ada = browser_as(&t, "ada@example.com", "correct horse").await;
    let resource = format!("{}/tools", t.base);
    let te = te_for(&t, &ada, &resource).await;
    let list = |request: reqwest::RequestBuilder| {
        request
            .header("origin", "https://inspector.example")
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
            .send()
    };
    let with_token = list(client().post(&resource).bearer_auth(&te))
        .await
        .unwrap();
    assert_eq!(with_token.status(), 200);
    let headers = with_token.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let exposed = headers["access-control-expose-headers"].to_str().unwrap();
    for name in ["mcp-session-id", "mcp-protocol-version", "www-authenticate"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert!(headers.get("access-control-allow-credentials").is_none());

    // A call the policy refuses: the client can read why.
    let refused = client()
        .post(&resource)
        .bearer_auth(&te)
        .header("origin", "https://inspector.example")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "write_query", "arguments": {}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.headers()["access-control-allow-origin"], "*");

    let with_cookie = list(ada.post(&resource)).await.unwrap();
    assert_eq!(with_cookie.status(), 200, "the cookie works on this route");
    assert!(
        with_cookie
            .headers()
            .get("access-control-allow-origin")
            .is_none(),
        "a cookie-authenticated answer must not be readable cross-origin"
    );

    let answer = preflight(
        &resource,
        "authorization, content-type, mcp-method, mcp-name, mcp-protocol-version",
    )
    .await;
    let allowed = allowed_headers(&answer);
    for name in ["authorization", "mcp-method", "mcp-name", "last-event-id"] {
        assert!(allowed.iter().any(|n| n == name), "{allowed:?}");
    }
    assert!(
        answer
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );

    // SEP-2243's `Mcp-Param-*` headers have names no fixed list holds: the ones the preflight
    // asks for are allowed, and nothing else it asks for (the answer is not an echo).
    let answer = preflight(
        &resource,
        "authorization, Mcp-Param-Region, x-evil, cookie, mcp-param-, mcp-param-a b",
    )
    .await;
    let allowed = allowed_headers(&answer);
    assert!(
        allowed.iter().any(|n| n == "mcp-param-region"),
        "{allowed:?}"
    );
    for refused in ["x-evil", "cookie", "mcp-param-", "mcp-param-a b"] {
        assert!(
            !allowed.iter().any(|n| n == refused),
            "{refused}: {allowed:?}"
        );
    }
    assert_eq!(answer.headers()["vary"], "access-control-request-headers");
    // A preflight asking for 200 of them gets at most 32 back.
    let many: Vec<String> = (0..200).map(|i| format!("mcp-param-p{i}")).collect();
    let allowed = allowed_headers(&preflight(&resource, &many.join(", ")).await);
    let echoed = allowed
        .iter()
        .filter(|n| n.starts_with("mcp-param-"))
        .count();
    assert_eq!(echoed, 32);
    // Repeats do not use up the 32.
    let mut repeated = vec!["mcp-param-a"; 31];
    repeated.extend(["mcp-param-b", "mcp-param-c"]);
    let allowed = allowed_headers(&preflight(&resource, &repeated.join(", ")).await);
    for name in ["mcp-param-a", "mcp-param-b", "mcp-param-c"] {
        assert!(allowed.iter().any(|n| n == name), "{allowed:?}");
    }
}

/// A browser's CORS preflight of a POST to `resource` asking for the `requested` headers.
async fn preflight(resource: &str, requested: &str) -> reqwest::Response {
    client()
        .request(reqwest::Method::OPTIONS, resource)
        .header("origin", "https://inspector.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", requested)
        .send()
        .await
        .unwrap()
}

/// The header names a preflight's answer allows.
fn allowed_headers(answer: &reqwest::Response) -> Vec<String> {
    answer.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .split(", ")
        .map(str::to_owned)
        .collect()
}
