//! The gateway's data path, end to end over real sockets.

#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/upstream.rs"]
mod upstream;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gateway::Running;
use serde_json::{Value, json};
use upstream::Upstream;

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

fn public_routes(up: &Upstream) -> String {
    format!(
        "insecure_server: true
cookie_name: _postern
routes:
  - from: http://localhost
    prefix: /web
    to: {echo}
    allow_public_unauthenticated_access: true
  - from: http://localhost
    prefix: /mcp
    to: {mcp}
    allow_public_unauthenticated_access: true
    mcp: {{server: {{max_request_bytes: 1000}}}}
  - from: http://localhost
    prefix: /events
    to: {sse}
    allow_public_unauthenticated_access: true
    mcp: {{}}
  - from: http://localhost
    prefix: /forever
    to: {forever}
    allow_public_unauthenticated_access: true
    mcp: {{}}
  - from: http://localhost
    prefix: /slow
    to: {slow}
    timeout: 500ms
    allow_public_unauthenticated_access: true
  - from: http://localhost
    prefix: /private
    to: {echo}
",
        echo = up.url("/echo"),
        mcp = up.url("/echo"),
        sse = up.url("/sse"),
        forever = up.url("/sse-forever"),
        slow = up.url("/slow"),
    )
}

#[tokio::test]
async fn proxies_with_forwarding_headers_and_without_client_credentials() {
    let up = Upstream::start().await;
    let gw = Running::start(&public_routes(&up)).await;
    let response = client()
        .post(gw.url("/web/a/b?x=1"))
        .header("authorization", "Bearer app-token")
        .header("x-pomerium-jwt-assertion", "forged-identity")
        .header("cookie", "_postern=session-secret; app=1")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "must-not-pass")
        .header("mcp-protocol-version", "2025-06-18")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let seen: Value = response.json().await.unwrap();
    assert_eq!(
        seen["path"],
        json!("/echo/a/b"),
        "the path in `to` replaced the prefix"
    );
    assert_eq!(seen["query"], json!("x=1"));
    assert_eq!(seen["body_len"], json!(5));
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], json!("127.0.0.1"));
    assert_eq!(h["x-forwarded-proto"], json!("http"));
    assert_eq!(
        h["x-forwarded-host"],
        json!(format!("localhost:{}", gw.addr.port()))
    );
    assert_eq!(h["x-request-id"], json!(request_id));
    assert_eq!(
        h["host"],
        json!(up.addr.to_string()),
        "the upstream's host, not the client's"
    );
    assert_eq!(
        h["authorization"],
        json!("Bearer app-token"),
        "a web route keeps the app's credentials"
    );
    assert_eq!(
        h["cookie"],
        json!("app=1"),
        "the gateway's cookie never reaches an upstream"
    );
    assert!(
        h.get("x-pomerium-jwt-assertion").is_none(),
        "identity headers only come from the gateway"
    );
    assert!(
        h.get("x-hop").is_none(),
        "headers named by Connection are hop-by-hop"
    );
    assert_eq!(h["mcp-protocol-version"], json!("2025-06-18"));

    // On an MCP server route the client's bearer token (the TE) is never forwarded.
    let seen: Value = client()
        .post(gw.url("/mcp"))
        .header("authorization", "Bearer pst_at_secret")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(seen["headers"].get("authorization").is_none(), "{seen}");
}

#[tokio::test]
async fn routes_that_are_not_public_answer_401_until_sign_in_exists() {
    let up = Upstream::start().await;
    let gw = Running::start(&public_routes(&up)).await;
    let response = client().get(gw.url("/private")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        up.seen.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    let response = client().get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], json!("no_route"));
    assert!(body["request_id"].as_str().is_some_and(|id| id.len() == 16));
}

#[tokio::test]
async fn each_sse_event_arrives_as_soon_as_the_upstream_writes_it() {
    let up = Upstream::start().await;
    let gw = Running::start(&public_routes(&up)).await;
    let started = Instant::now();
    let response = client()
        .get(gw.url("/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut arrivals = Vec::new();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        arrivals.push((
            started.elapsed(),
            String::from_utf8_lossy(&chunk).into_owned(),
        ));
    }
    assert_eq!(
        text,
        "id: 0\ndata: event 0\n\nid: 1\ndata: event 1\n\nid: 2\ndata: event 2\n\n"
    );
    // The upstream writes at 0, 300 and 600 ms: each event must be seen in its own window, not
    // all at the end (buffering) and not early.
    let first = arrivals
        .iter()
        .find(|(_, t)| t.contains("event 0"))
        .unwrap()
        .0;
    let second = arrivals
        .iter()
        .find(|(_, t)| t.contains("event 1"))
        .unwrap()
        .0;
    let third = arrivals
        .iter()
        .find(|(_, t)| t.contains("event 2"))
        .unwrap()
        .0;
    assert!(
        first < Duration::from_millis(250),
        "first event after {first:?}"
    );
    assert!(
        second >= Duration::from_millis(250) && second < Duration::from_millis(550),
        "second after {second:?}"
    );
    assert!(third >= Duration::from_millis(550), "third after {third:?}");
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_upstream_stream() {
    let up = Upstream::start().await;
    let gw = Running::start(&public_routes(&up)).await;
    let response = client().get(gw.url("/forever")).send().await.unwrap();
    let mut stream = response.bytes_stream();
    assert!(stream.next().await.is_some());
    assert_eq!(gw.gateway.metrics().open_streams.get(), 1);
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.seen.disconnects.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        up.seen.disconnects.load(Ordering::SeqCst),
        1,
        "the upstream saw the client leave"
    );
    assert_eq!(gw.gateway.metrics().open_streams.get(), 0);
}

#[tokio::test]
async fn request_bodies_over_the_limit_get_413() {
    let up = Upstream::start().await;
    let gw = Running::start(&public_routes(&up)).await;
    let response = client()
        .post(gw.url("/mcp"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("1000 bytes"),
        "{body}"
    );
    // Without a declared length (chunked), the limit holds too.
    let chunks = futures::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 100])));
    let response = client()
        .post(gw.url("/mcp"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let response = client()
        .post(gw.url("/mcp"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "at the limit is fine");
}

#[tokio::test]
async fn upstream_failures_are_502_and_504_with_a_request_id() {
    let up = Upstream::start().await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "{}  - from: http://localhost\n    prefix: /dead\n    to: http://{dead}\n    allow_public_unauthenticated_access: true\n",
        public_routes(&up)
    );
    let gw = Running::start(&yaml).await;
    let response = client().get(gw.url("/dead")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], json!("bad_gateway"));
    assert_eq!(body["request_id"], json!(id));
    // The attack: probing internal addresses through the gateway. The caller learns neither
    // the upstream's address nor the OS error; the log has both.
    let text = body.to_string();
    let port = dead.port().to_string();
    assert!(
        text.contains("upstream unavailable")
            && !text.contains("127.0.0.1")
            && !text.contains(&port)
            && !text.to_lowercase().contains("refused"),
        "{text}"
    );

    let response = client()
        .get(gw.url("/dead"))
        .header("accept", "text/html,*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("<h1>502 Bad Gateway</h1>") && page.contains("Request id"),
        "{page}"
    );
    assert!(
        page.contains("upstream unavailable") && !page.contains(&port),
        "{page}"
    );

    let started = Instant::now();
    let response = client().get(gw.url("/slow")).send().await.unwrap();
    assert_eq!(response.status(), 504);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("upstream unavailable") && !text.contains(&up.url("/slow")),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_failing_upstream_is_skipped_for_a_while() {
    let up = Upstream::start().await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let yaml = format!(
        "insecure_server: true\nroutes:\n  - from: http://localhost\n    to: [http://{dead}/echo, {}]\n    allow_public_unauthenticated_access: true\n",
        up.url("/echo")
    );
    let gw = Running::start(&yaml).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(
            client()
                .get(gw.url("/"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(
        statuses.iter().filter(|s| **s == 502).count() <= 1,
        "{statuses:?}"
    );
    assert!(statuses[2..].iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn http2_cleartext_is_accepted() {
    let up = Upstream::start().await;
    let gw = Running::start(&public_routes(&up)).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = h2.get(gw.url("/web")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn metrics_count_requests() {
    let up = Upstream::start().await;
    let gw = Running::start(&public_routes(&up)).await;
    client().get(gw.url("/web")).send().await.unwrap();
    client().get(gw.url("/private")).send().await.unwrap();
    let text = gw.gateway.metrics().render();
    assert!(
        text.contains(
            "postern_requests_total{route=\"http://localhost/web\",method=\"GET\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("status=\"401\"} 1"), "{text}");
    assert!(text.contains("postern_open_streams 0"), "{text}");
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let up = Upstream::start().await;
    let yaml = format!(
        "insecure_server: true\nroutes:\n  - from: http://localhost\n    to: {}\n    timeout: 10s\n    allow_public_unauthenticated_access: true\n",
        up.url("/slow")
    );
    let mut gw = Running::start(&yaml).await;
    let request = tokio::spawn({
        let url = gw.url("/");
        async move {
            client()
                .get(url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.shutdown.cancel();
    // New connections are refused once shutdown started...
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(client().get(gw.url("/")).send().await.is_err());
    // ...while the request in flight completes, and then the server stops.
    assert_eq!(request.await.unwrap(), "slow");
    tokio::time::timeout(Duration::from_secs(5), &mut gw.done)
        .await
        .expect("serve returned")
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// TLS, redirect, reload

/// A CA and a leaf certificate for `host`, written as PEM files into `dir`.
fn certificate(
    dir: &std::path::Path,
    host: &str,
) -> (String, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("Test CA for {host}"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec![host.to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let cert = dir.join(format!("{host}.pem"));
    let key = dir.join(format!("{host}.key"));
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca.pem(), cert, key)
}

/// `set_response_headers`: Pomerium's security headers unless configured; a configured map
/// replaces them whole, a route's adds to it and wins, `disable` turns them off; the upstream's
/// own values are replaced, the gateway's own answers keep theirs.
#[tokio::test]
async fn response_headers_are_pomeriums_by_default_or_exactly_as_configured() {
    let up = Upstream::start().await;
    let headers_of = |yaml: String, path: &'static str| async move {
        let gw = Running::start(&yaml).await;
        let response = client().get(gw.url(path)).send().await.unwrap();
        response.headers().clone()
    };
    let route = |extra: &str| {
        format!(
            "  - {{from: http://localhost, prefix: /cookies, to: {}, allow_public_unauthenticated_access: true{extra}}}\n",
            up.url("")
        )
    };

    let defaults = headers_of(
        format!("insecure_server: true\nroutes:\n{}", route("")),
        "/cookies",
    )
    .await;
    assert_eq!(defaults["x-frame-options"], "SAMEORIGIN");
    assert_eq!(defaults["x-content-type-options"], "nosniff");
    assert_eq!(defaults["x-xss-protection"], "1; mode=block");
    assert!(
        defaults.get("strict-transport-security").is_none(),
        "no HSTS over plain http (and the upstream's is dropped)"
    );

    let configured = format!(
        "insecure_server: true\nset_response_headers: {{X-Global: g, X-Shared: global, X-Frame-Options: DENY}}\nroutes:\n{}",
        route(", set_response_headers: {X-Shared: route, X-Route: r}")
    );
    let got = headers_of(configured.clone(), "/cookies").await;
    assert_eq!(got["x-global"], "g");
    assert_eq!(got["x-shared"], "route", "the route's value wins");
    assert_eq!(got["x-route"], "r");
    assert_eq!(got["x-frame-options"], "DENY");
    assert!(
        got.get("x-content-type-options").is_none(),
        "a configured map replaces the defaults whole"
    );
    // The gateway's own answer (no route here) gets the global headers, not the route's.
    let own = headers_of(configured, "/nowhere").await;
    assert_eq!(own["x-global"], "g");
    assert!(own.get("x-route").is_none());

    let disabled = headers_of(
        format!(
            "insecure_server: true\nset_response_headers: {{disable: 'true'}}\nroutes:\n{}",
            route("")
        ),
        "/cookies",
    )
    .await;
    for name in [
        "x-frame-options",
        "x-content-type-options",
        "x-xss-protection",
        "disable",
    ] {
        assert!(disabled.get(name).is_none(), "{name}");
    }
}

#[tokio::test]
async fn tls_picks_the_certificate_by_sni_and_offers_http2() {
    use postern_gateway::tls::{CertMap, CertResolver, load_pair, server_config};
    let dir = tempfile::tempdir().unwrap();
    let (ca_a, cert_a, key_a) = certificate(dir.path(), "a.test");
    let (ca_b, cert_b, key_b) = certificate(dir.path(), "b.test");
    let up = Upstream::start().await;
    let yaml = format!(
        "certificates: [{{cert: {}, key: {}}}, {{cert: {}, key: {}}}]
routes:
  - {{from: https://a.test, to: {echo}, allow_public_unauthenticated_access: true}}
  - {{from: https://b.test, to: {echo}, allow_public_unauthenticated_access: true}}
",
        cert_a.display(),
        key_a.display(),
        cert_b.display(),
        key_b.display(),
        echo = up.url("/echo"),
    );
    let resolver = std::sync::Arc::new(CertResolver::default());
    let certs = vec![
        load_pair(&cert_a, &key_a).unwrap(),
        load_pair(&cert_b, &key_b).unwrap(),
    ];
    resolver.set(CertMap::new(&certs, &["a.test".into(), "b.test".into()]));
    let gw = Running::start_with_tls(&yaml, Some(server_config(resolver, false))).await;

    let trusting = |ca: &str| {
        reqwest::Client::builder()
            .resolve("a.test", gw.addr)
            .resolve("b.test", gw.addr)
            .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
            .build()
            .unwrap()
    };
    let port = gw.addr.port();
    let response = trusting(&ca_a)
        .get(format!("https://a.test:{port}/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.version(),
        reqwest::Version::HTTP_2,
        "h2 negotiated by ALPN"
    );
    // Pomerium's default security headers, HSTS included over https.
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains; preload"
    );
    assert_eq!(response.headers()["x-frame-options"], "SAMEORIGIN");
    let seen: Value = response.json().await.unwrap();
    assert_eq!(seen["headers"]["x-forwarded-proto"], json!("https"));
    assert_eq!(
        trusting(&ca_b)
            .get(format!("https://b.test:{port}/x"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // b.test is served b's certificate, which a client trusting only a's CA refuses.
    assert!(
        trusting(&ca_a)
            .get(format!("https://b.test:{port}/x"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn plain_http_is_redirected_to_https_except_acme_challenges() {
    use postern_gateway::server::{Challenges, serve_redirect};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let challenges = std::sync::Arc::new(Challenges::default());
    challenges.insert("token-123", "token-123.thumbprint");
    let stop = tokio_util::sync::CancellationToken::new();
    let gateway = postern_gateway::Gateway::new(
        gateway::config(
            "insecure_server: true\nroutes:\n  - {from: http://mcp.example.com, to: http://127.0.0.1:1}\n",
        ),
        std::sync::Arc::new(postern_gateway::hooks::PublicOnly),
    );
    tokio::spawn(serve_redirect(
        listener,
        8443,
        challenges,
        gateway,
        stop.clone(),
    ));
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .get(format!("http://{addr}/some/path?q=1"))
        .header("host", "mcp.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 308);
    assert_eq!(
        response.headers()["location"],
        "https://mcp.example.com:8443/some/path?q=1"
    );
    let response = no_redirects
        .get(format!(
            "http://{addr}/.well-known/acme-challenge/token-123"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "token-123.thumbprint");
    let response = no_redirects
        .get(format!("http://{addr}/.well-known/acme-challenge/other"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    stop.cancel();
}

#[tokio::test]
async fn a_changed_config_file_is_applied_without_dropping_open_streams() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("postern.yaml");
    let routes = |extra: &str| {
        format!(
            "insecure_server: true\nroutes:\n  - {{from: http://localhost, prefix: /forever, to: {}, allow_public_unauthenticated_access: true, mcp: {{}}}}\n{extra}",
            up.url("/sse-forever")
        )
    };
    std::fs::write(&path, routes("")).unwrap();
    let gw = Running::start(&routes("")).await;
    let apply = {
        let gateway = gw.gateway.clone();
        Box::new(
            move |config: postern_config::Config| -> Result<(), String> {
                gateway.replace(config);
                Ok(())
            },
        )
    };
    tokio::spawn(postern_gateway::reload::watch(
        path.clone(),
        Box::new(std::collections::HashMap::<String, String>::new()),
        gw.gateway.clone(),
        apply,
        gw.shutdown.clone(),
    ));
    let stream = client().get(gw.url("/forever")).send().await.unwrap();
    let mut stream = stream.bytes_stream();
    assert!(stream.next().await.is_some());
    assert_eq!(
        client().get(gw.url("/web")).send().await.unwrap().status(),
        404
    );

    std::fs::write(
        &path,
        routes(&format!("  - {{from: http://localhost, prefix: /web, to: {}, allow_public_unauthenticated_access: true}}\n", up.url("/echo"))),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client().get(gw.url("/web")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "the new route never appeared");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken file leaves the configuration in force.
    std::fs::write(
        &path,
        "insecure_server: true\nroutes:\n  - from: not a url\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        client().get(gw.url("/web")).send().await.unwrap().status(),
        200
    );
    let text = gw.gateway.metrics().render();
    assert!(
        text.contains("postern_config_reloads_total{result=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("postern_config_reloads_total{result=\"error\"} 1"),
        "{text}"
    );

    assert_eq!(
        up.seen.disconnects.load(Ordering::SeqCst),
        0,
        "the open stream survived both reloads"
    );
    drop(stream);
}

#[path = "support/pebble.rs"]
mod pebble;

#[path = "cases/hardening.rs"]
mod hardening;

#[path = "cases/upgrades.rs"]
mod upgrades;

#[path = "cases/regex_routes.rs"]
mod regex_routes;

#[tokio::test]
async fn autocert_obtains_caches_and_renews_certificates_from_a_real_acme_server() {
    use postern_gateway::acme::{Autocert, AutocertConfig};
    use postern_gateway::server::{Challenges, serve_redirect};
    use postern_gateway::tls::{CertResolver, server_config};
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    // The :80 listener first: pebble must know where to send HTTP-01 validation requests.
    let redirect = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_port = redirect.local_addr().unwrap().port();
    let Some(pebble) = pebble::Pebble::start(dir.path(), http_port, 3600).await else {
        return;
    };

    let up = Upstream::start().await;
    let challenges = Arc::new(Challenges::default());
    let resolver = Arc::new(CertResolver::default());
    let yaml = format!(
        "autocert: true\nroutes:\n  - {{from: https://postern.test, to: {}, allow_public_unauthenticated_access: true}}\n",
        up.url("/echo")
    );
    let gw = Running::start_with_tls(&yaml, Some(server_config(resolver.clone(), false))).await;
    tokio::spawn(serve_redirect(
        redirect,
        gw.addr.port(),
        challenges.clone(),
        gw.gateway.clone(),
        gw.shutdown.clone(),
    ));

    let mut settings = AutocertConfig::new(
        dir.path().join("autocert"),
        Some(pebble.directory_url.clone()),
    );
    settings.trusted_ca = Some(pebble.listener_ca.clone());
    settings.email = Some("admin@postern.test".into());
    // Renew almost at once, and look often, so the test sees a renewal.
    settings.renew_fraction = 0.9995;
    settings.check_interval = Duration::from_secs(1);
    let autocert = Arc::new(Autocert::new(
        settings.clone(),
        challenges.clone(),
        resolver.clone(),
    ));
    autocert
        .ensure(&["postern.test".into()])
        .await
        .expect("certificate issued by pebble");

    let client = reqwest::Client::builder()
        .resolve("postern.test", gw.addr)
        .add_root_certificate(
            reqwest::Certificate::from_pem(pebble.issuing_root_pem.as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let url = format!("https://postern.test:{}/", gw.addr.port());
    assert_eq!(
        client.get(&url).send().await.unwrap().status(),
        200,
        "served with the ACME certificate"
    );

    // Cached: a restart finds the certificate without asking the CA.
    let cert_file = dir.path().join("autocert/certs/postern.test.pem");
    let first = std::fs::read_to_string(&cert_file).unwrap();
    let mut keep = settings.clone();
    keep.renew_fraction = 0.1;
    let restarted = Autocert::new(keep, challenges.clone(), Arc::new(CertResolver::default()));
    assert!(
        restarted.load_cached(&["postern.test".into()]).is_empty(),
        "the cached certificate is reused"
    );
    let key_mode = std::fs::metadata(dir.path().join("autocert/certs/postern.test.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode.permissions()) & 0o777,
        0o600
    );

    // Renewal in the background replaces the certificate without a restart.
    tokio::spawn(
        autocert
            .clone()
            .run(|| vec!["postern.test".to_owned()], gw.shutdown.clone()),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&cert_file).unwrap() == first {
        assert!(
            Instant::now() < deadline,
            "the certificate was never renewed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fresh = reqwest::Client::builder()
        .resolve("postern.test", gw.addr)
        .add_root_certificate(
            reqwest::Certificate::from_pem(pebble.issuing_root_pem.as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(
        fresh.get(&url).send().await.unwrap().status(),
        200,
        "served with the renewed certificate"
    );
}

#[tokio::test]
async fn idle_streams_close_after_idle_timeout_and_host_is_preserved_on_request() {
    let up = Upstream::start().await;
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, prefix: /quiet, to: {forever}, idle_timeout: 300ms, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /keep, to: {forever}, allow_public_unauthenticated_access: true, mcp: {{}}}}
  - {{from: http://localhost, prefix: /host, to: {echo}, preserve_host_header: true, allow_public_unauthenticated_access: true}}
",
        forever = up.url("/sse-forever"),
        echo = up.url("/echo"),
    );
    let gw = Running::start(&yaml).await;
    // A web route with idle_timeout: the quiet stream is cut (the upstream ticks every 10 s).
    let started = Instant::now();
    let mut quiet = client()
        .get(gw.url("/quiet"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    assert!(
        quiet.next().await.unwrap().is_ok(),
        "the first tick arrives"
    );
    let end = quiet.next().await;
    assert!(end.is_none() || end.unwrap().is_err(), "the stream ended");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut by the idle timeout, not the next tick"
    );
    // An MCP route has no idle timeout unless configured: still open after the same wait.
    let mut keep = client()
        .get(gw.url("/keep"))
        .send()
        .await
        .unwrap()
        .bytes_stream();
    assert!(keep.next().await.unwrap().is_ok());
    assert!(
        tokio::time::timeout(Duration::from_millis(800), keep.next())
            .await
            .is_err(),
        "still open, waiting"
    );

    let seen: Value = client()
        .get(gw.url("/host"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        seen["headers"]["host"],
        json!(format!("localhost:{}", gw.addr.port()))
    );
}

#[tokio::test]
async fn routes_rewrite_the_upstream_path_host_and_headers_as_configured() {
    let up = Upstream::start().await;
    let yaml = format!(
        "insecure_server: true
routes:
  - from: http://localhost
    prefix: /admin
    to: {root}
    prefix_rewrite: /echo/v2
    host_rewrite: internal.example:8443
    set_request_headers: {{X-Tenant: acme, Authorization: Basic dXNlcjpwYXNz}}
    remove_request_headers: [X-Debug, Cookie]
    allow_public_unauthenticated_access: true
  - from: http://localhost
    prefix: /api
    to: {echo}
    prefix_rewrite: /
    allow_public_unauthenticated_access: true
",
        root = up.url(""),
        echo = up.url("/echo"),
    );
    let gw = Running::start(&yaml).await;
    let seen: Value = client()
        .get(gw.url("/admin/users?x=1"))
        .header("x-debug", "1")
        .header("x-tenant", "forged")
        .header("x_tenant", "forged by underscore")
        .header("x_debug", "smuggled by underscore")
        .header("cookie", "a=b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["path"], json!("/echo/v2/users"));
    assert_eq!(seen["query"], json!("x=1"));
    let headers = &seen["headers"];
    assert_eq!(headers["host"], json!("internal.example:8443"));
    assert_eq!(
        headers["x-tenant"],
        json!("acme"),
        "the configured value wins"
    );
    assert_eq!(headers["authorization"], json!("Basic dXNlcjpwYXNz"));
    assert!(
        headers.get("x-debug").is_none() && headers.get("cookie").is_none(),
        "{headers}"
    );
    assert!(
        headers.get("x_tenant").is_none() && headers.get("x_debug").is_none(),
        "an underscore spelling is the same variable to CGI-style servers: {headers}"
    );
    assert!(
        headers.get("x-forwarded-for").is_some(),
        "the gateway's own headers stay"
    );

    // `to` with a path, then the rewrite: /api/items -> /echo + / + items.
    let seen: Value = client()
        .get(gw.url("/api/items"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["path"], json!("/echo/items"));
}

#[tokio::test]
async fn a_route_trusts_its_own_ca_and_checks_the_name_it_is_told() {
    use postern_gateway::tls::{CertMap, CertResolver, load_pair, server_config};
    let dir = tempfile::tempdir().unwrap();
    // An internal upstream: TLS with a certificate for `internal.test` from a private CA, reached
    // by address.
    let (ca, cert, key) = certificate(dir.path(), "internal.test");
    let up = Upstream::start().await;
    let inner_yaml = format!(
        "certificates: [{{cert: {}, key: {}}}]
routes:
  - {{from: https://internal.test, to: {echo}, allow_public_unauthenticated_access: true, preserve_host_header: false}}
",
        cert.display(),
        key.display(),
        echo = up.url("/echo"),
    );
    let resolver = std::sync::Arc::new(CertResolver::default());
    resolver.set(CertMap::new(
        &[load_pair(&cert, &key).unwrap()],
        &["internal.test".into()],
    ));
    let inner = Running::start_with_tls(&inner_yaml, Some(server_config(resolver, true))).await;
    let ca_file = dir.path().join("internal-ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let upstream = format!("https://127.0.0.1:{}", inner.addr.port());
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, prefix: /trusted, to: '{upstream}', tls_custom_ca_file: '{ca}', tls_server_name: internal.test, host_rewrite: internal.test, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /no-name, to: '{upstream}', tls_custom_ca_file: '{ca}', host_rewrite: internal.test, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /no-ca, to: '{upstream}', tls_server_name: internal.test, host_rewrite: internal.test, allow_public_unauthenticated_access: true}}
",
        ca = ca_file.display(),
    );
    let gw = Running::start(&yaml).await;
    let status = |path: &str| {
        let url = gw.url(path);
        async move { client().get(url).send().await.unwrap().status().as_u16() }
    };
    let trusted = client().get(gw.url("/trusted")).send().await.unwrap();
    assert_eq!(
        trusted.status(),
        200,
        "its own CA and the right name: {}",
        trusted.text().await.unwrap()
    );
    assert_eq!(
        status("/no-name").await,
        502,
        "the certificate is not for 127.0.0.1"
    );
    assert_eq!(
        status("/no-ca").await,
        502,
        "the private CA is not trusted elsewhere"
    );
}

/// An aggregate MCP route has no upstream: without the access hooks (no identity configured)
/// a request that reaches the proxy is a 502 saying so, never a panic on an empty upstream list.
#[tokio::test]
async fn an_aggregate_route_without_access_hooks_answers_502() {
    let yaml = "insecure_server: true
routes:
  - {from: http://localhost, path: /tools, allow_public_unauthenticated_access: true, mcp: {aggregate: {servers: [member]}}}
  - {from: http://localhost, prefix: /member, id: member, to: 'http://127.0.0.1:9', allow_public_unauthenticated_access: true, mcp: {}}
";
    let gw = Running::start(yaml).await;
    let response = client().get(gw.url("/tools")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let again = client().get(gw.url("/tools")).send().await.unwrap();
    assert_eq!(again.status(), 502, "the gateway still answers");
}
