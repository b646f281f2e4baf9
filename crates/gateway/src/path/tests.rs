use super::*;

#[test]
fn canonical_paths() {
    let cases = [
        // Already canonical: returned as is.
        ("/", "/"),
        ("/mcp", "/mcp"),
        ("/app/secret/", "/app/secret/"),
        ("/file.js", "/file.js"),
        ("/a/...b/...", "/a/...b/..."),
        // Repeated slashes merge.
        ("//", "/"),
        ("/app//secret", "/app/secret"),
        ("///app///secret//", "/app/secret/"),
        // Dot segments (RFC 3986 §5.2.4), never above the root.
        ("/app/./secret", "/app/secret"),
        ("/app/x/../secret", "/app/secret"),
        ("/pub/../admin/panel", "/admin/panel"),
        ("/pub//../admin/panel", "/admin/panel"),
        ("/../../etc/passwd", "/etc/passwd"),
        ("/a/b/..", "/a/"),
        ("/a/b/.", "/a/b/"),
        ("/..", "/"),
        ("/.", "/"),
        // Unreserved escapes decoded, others kept in upper case.
        ("/app/%73ecret", "/app/secret"),
        ("/%41%7e%2D%5f%30", "/A~-_0"),
        ("/a%2eb", "/a.b"),
        ("/a%20b%3f", "/a%20b%3F"),
        ("/a%3a", "/a%3A"),
        ("/100%", "/100%"),
        ("/caf\u{e9}", "/caf\u{e9}"),
    ];
    for (input, expected) in cases {
        assert_eq!(canonical(input).as_deref(), Ok(expected), "{input}");
    }
}

#[test]
fn ambiguous_paths_are_refused() {
    for input in [
        "/pub/%2e%2e/admin/panel",
        "/pub/%2E%2E/admin",
        "/pub/.%2e/admin",
        "/pub/%2e/admin",
        "/pub/..%2fadmin/panel",
        "/pub/%2Fadmin",
        "/pub/..%5cadmin",
        "/pub/..\\admin",
        "/pub\\admin",
        "/pub/..;/admin",
        "/pub/.;x/admin",
    ] {
        assert_eq!(
            canonical(input),
            Err(PathError::AmbiguousSegment),
            "{input}"
        );
    }
    assert_eq!(canonical("*"), Err(PathError::NotAbsolute));
    assert_eq!(canonical(""), Err(PathError::NotAbsolute));
}

#[test]
fn the_common_case_does_not_allocate() {
    assert!(matches!(canonical("/mcp/x-y_z~"), Ok(Cow::Borrowed(_))));
}

#[test]
fn canonical_is_idempotent() {
    for input in ["/a//b/../c/./d/", "/x/%7euser/%41", "/a%20b", "/.."] {
        let once = canonical(input).unwrap().into_owned();
        assert_eq!(canonical(&once).unwrap(), once, "{input}");
    }
}
