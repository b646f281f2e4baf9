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
        ("/100%", "/100%25"),
        ("/a%%41", "/a%25A"),
        ("/%25", "/%25"),
        ("/caf\u{e9}", "/caf\u{e9}"),
        // Found by the properties below: a stray `%` joined the decoded `61` into `%61`, so
        // `deny: http_path starts_with /admin` saw `/%61dmin` and the upstream read `/admin`.
        ("/%%361dmin", "/%2561dmin"),
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
        // A dot segment followed by an escape (`..%3B` is `..;`, `..%00` is `..` to C).
        "/pub/..%3b/admin",
        "/pub/..%00/admin",
        "/pub/.%20/admin",
        // Escaped twice: a server that decodes twice sees `/` or `..`.
        "/pub/%252e%252e/admin",
        "/pub/..%252Fadmin",
        "/pub/%255cadmin",
        // ... including when the second escape is put together by the first decode.
        "/pub/%25%32%66admin",
        "/pub/%%32%66admin",
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

/// Property-based tests (issue 17, hostile input): thousands of generated paths per run
/// (`PROPTEST_CASES` raises it).
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Pieces attackers put together: separators, dots, escapes of both cases, stray `%`s,
    /// hex digits that a decode may join to a stray `%`, `;`, NUL, non-ASCII.
    const PIECES: &[&str] = &[
        "/", "//", ".", "..", "...", "%", "%%", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%25",
        "%41", "%61", "%3b", "%3B", ";", "%00", "%e9", "%C3%A9", "\\", "a", "B", "2", "e", "f",
        "5", "c", "3", "~", "-", "_", "%7e", "%32", "%35", "%66", "%63", "\u{e9}", "?", "#",
    ];

    fn hostile_path() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(PIECES), 0..16)
            .prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    /// One percent-decode, as an upstream does (lossy: a path of bytes).
    fn decode(path: &str) -> String {
        let bytes = path.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let hex = (bytes[i] == b'%')
                .then(|| bytes.get(i + 1..i + 3))
                .flatten()
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(value) => {
                    out.push(value);
                    i += 3;
                }
                None => {
                    out.push(bytes[i]);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn has_escaped_separator_or_dot(path: &str) -> bool {
        let upper = path.to_ascii_uppercase();
        ["%2F", "%5C", "%2E"].iter().any(|e| upper.contains(e))
    }

    fn check(path: &str) -> Result<(), TestCaseError> {
        let Ok(out) = canonical(path) else {
            return Ok(());
        };
        // Idempotent: the canonical form is its own canonical form.
        let again = canonical(&out);
        prop_assert_eq!(again.as_deref(), Ok(&*out), "input {:?}", path);
        prop_assert!(out.starts_with('/'));
        prop_assert!(!out.contains("//"), "{:?} -> {:?}", path, out);
        prop_assert!(!out.contains('\\'), "{:?} -> {:?}", path, out);
        prop_assert!(
            !has_escaped_separator_or_dot(&out),
            "{:?} -> {:?}",
            path,
            out
        );
        for segment in out.split('/') {
            let dots = segment.split([';', '%']).next().unwrap_or("");
            prop_assert!(dots != "." && dots != "..", "{:?} -> {:?}", path, out);
        }
        // Every `%` starts a well-formed escape in upper case: nothing for a decode to join.
        let bytes = out.as_bytes();
        for (i, _) in out.match_indices('%') {
            let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
            prop_assert!(
                hex.len() == 2 && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
                "{:?} -> {:?}",
                path,
                out
            );
        }
        // The upstream's decode, and a second one by a server that decodes twice, find no
        // separator or dot segment the gateway did not route by.
        let once = decode(&out);
        prop_assert!(
            !has_escaped_separator_or_dot(&once),
            "{:?} -> {:?}",
            path,
            out
        );
        prop_assert_eq!(
            once.matches('/').count(),
            out.matches('/').count(),
            "{:?} -> {:?}",
            path,
            out
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(4000)
        ))]

        #[test]
        fn hostile_paths_canonicalise_safely(path in hostile_path()) {
            check(&path)?;
        }

        #[test]
        fn arbitrary_paths_never_panic(path in "/\\PC{0,40}") {
            check(&path)?;
        }
    }
}
