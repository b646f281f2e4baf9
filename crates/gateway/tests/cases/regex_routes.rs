//! `regex` routes and `regex_rewrite_*` under attack: they match and rewrite the canonical
//! path, so no spelling of a path reaches another route's upstream or another upstream path
//! than the one the gateway authorized.

use std::sync::atomic::Ordering;

use serde_json::json;

use super::gateway::Running;
use super::hardening::{Version, get};
use super::upstream::Upstream;

#[tokio::test]
async fn a_private_regex_route_cannot_be_bypassed_through_path_spellings() {
    let up = Upstream::start().await;
    // A private area carved out of a public application by a regex, as Pomerium users write
    // it; the upstream serves both and resolves paths itself.
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, prefix: /app, to: {up}, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, regex: '/app/(secret|admin)(/.*)?', to: {up}}}
",
        up = up.url("")
    );
    let gw = Running::start(&yaml).await;
    for version in [Version::Http1, Version::H2c] {
        // Each of these is /app/secret/... to the upstream: they must meet the private route.
        for path in [
            "/app/secret/keys",
            "/app//secret/keys",
            "/app/./secret/keys",
            "/app/x/../secret/keys",
            "/app/%73ecret/keys",
            "/app/%73%65cret",
            "/app/admin",
        ] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(
                response.status,
                401,
                "{version:?} {path}: {}",
                response.text()
            );
        }
        // Encoded separators and dot segments: refused before routing.
        for path in [
            "/app/%2e%2e/app/secret",
            "/app/.%2e/app/secret",
            "/app/x%2f..%2fsecret",
            "/app/x%5c..%5csecret",
        ] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(
                response.status,
                400,
                "{version:?} {path}: {}",
                response.text()
            );
        }
    }
    assert_eq!(
        up.seen.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    // Case matters, as in Pomerium: /app/Secret is the public application's (it is another
    // path to the upstream too).
    let response = get(Version::Http1, gw.addr, "/app/page").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["path"], json!("/app/page"));
}

#[tokio::test]
async fn a_public_regex_route_cannot_reach_a_private_path_upstream() {
    let up = Upstream::start().await;
    let yaml = format!(
        "insecure_server: true
routes:
  - {{from: http://localhost, regex: '/pub/.*', to: {up}, allow_public_unauthenticated_access: true}}
  - {{from: http://localhost, prefix: /admin, to: {up}}}
",
        up = up.url("")
    );
    let gw = Running::start(&yaml).await;
    for version in [Version::Http1, Version::H2c] {
        for path in [
            "/pub/../admin/panel",
            "/pub//../admin/panel",
            "/pub/./../admin",
        ] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(
                response.status,
                401,
                "{version:?} {path}: {}",
                response.text()
            );
        }
        for path in [
            "/pub/%2e%2e/admin/panel",
            "/pub/..%2fadmin/panel",
            "/pub/..;/admin/panel",
        ] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(
                response.status,
                400,
                "{version:?} {path}: {}",
                response.text()
            );
        }
    }
    assert_eq!(
        up.seen.requests.load(Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    let response = get(Version::H2c, gw.addr, "/pub/a//b").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json()["path"],
        json!("/pub/a/b"),
        "the canonical path goes upstream"
    );
}

#[tokio::test]
async fn regex_rewrites_reach_the_rewritten_path_and_refuse_what_groups_put_together() {
    let up = Upstream::start().await;
    let yaml = format!(
        r#"insecure_server: true
routes:
  - {{from: http://localhost, regex: '/service/.*', to: {up}, allow_public_unauthenticated_access: true, regex_rewrite_pattern: '^/service/([^/]+)(/.*)$', regex_rewrite_substitution: '\2/instance/\1'}}
  - {{from: http://localhost, prefix: /p, to: {up}, allow_public_unauthenticated_access: true, regex_rewrite_pattern: '^/p/(.)x(.)$', regex_rewrite_substitution: '/\1\2/public'}}
  - {{from: http://localhost, prefix: /q, to: {up}, allow_public_unauthenticated_access: true, regex_rewrite_pattern: '^/q/([a-z]*)-([a-z]*)$', regex_rewrite_substitution: '/files/\1/\2'}}
"#,
        up = up.url("")
    );
    let gw = Running::start(&yaml).await;
    let response = get(Version::Http1, gw.addr, "/service/foo/v1/api?x=1").await;
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["path"], json!("/v1/api/instance/foo"));
    assert_eq!(response.json()["query"], json!("x=1"), "the query is kept");
    let response = get(Version::Http1, gw.addr, "/p/axb").await;
    assert_eq!(response.json()["path"], json!("/ab/public"));
    let response = get(Version::Http1, gw.addr, "/q/a-b").await;
    assert_eq!(response.json()["path"], json!("/files/a/b"));

    let before = up.seen.requests.load(Ordering::SeqCst);
    for version in [Version::Http1, Version::H2c] {
        // `/p/.x.` is a plain name segment, but its groups make `/../public`, which the
        // upstream would resolve to `/public`; `/q/-a` makes `/files//a`.
        for path in ["/p/.x.", "/q/-", "/q/-a"] {
            let response = get(version, gw.addr, path).await;
            assert_eq!(
                response.status,
                400,
                "{version:?} {path}: {}",
                response.text()
            );
            assert!(
                response.text().contains("regex_rewrite"),
                "{version:?} {path}: {}",
                response.text()
            );
        }
    }
    assert_eq!(
        up.seen.requests.load(Ordering::SeqCst),
        before,
        "nothing reached the upstream"
    );
}
