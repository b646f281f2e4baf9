use serde_json::json;

use super::*;

fn user(id: &str, email: &str, groups: &[&str]) -> User {
    let mut claims = Map::new();
    claims.insert("department".into(), json!("engineering"));
    claims.insert("roles".into(), json!(["reader", "writer"]));
    User {
        id: id.into(),
        email: email.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        claims,
    }
}

fn policy(doc: Value) -> Policy {
    Policy::compile(Some(&doc), &Shorthands::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn tool(name: &str) -> McpRequest {
    McpRequest {
        method: "tools/call".into(),
        tool: Some(name.into()),
    }
}

/// (policy, user, method, path, mcp, expected)
type Case<'a> = (
    Value,
    Option<&'a User>,
    &'a str,
    &'a str,
    Option<McpRequest>,
    bool,
);

#[test]
fn every_criterion_and_operator() {
    let ada = user("u-ada", "Ada@Example.com", &["admins", "staff"]);
    let eve = user("u-eve", "eve@evil.test", &[]);
    let list = McpRequest {
        method: "tools/list".into(),
        tool: None,
    };
    let cases: Vec<Case> = vec![
        (
            json!({"allow": {"and": [{"accept": true}]}}),
            None,
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"reject": true}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"authenticated_user": true}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"authenticated_user": true}]}}),
            None,
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"email": {"is": "ada@example.com"}}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"email": "ADA@example.com"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"email": {"is": "ada@example.com"}}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"email": {"starts_with": "ada@"}}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"email": {"ends_with": "@example.com"}}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"email": {"contains": "evil"}}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"email": {"in": ["x@y.z", "eve@evil.test"]}}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"email": {"not_in": ["eve@evil.test"]}}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"email": {"not": "eve@evil.test"}}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"domain": {"is": "example.com"}}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"domain": {"is": "example.com"}}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"user": {"is": "u-eve"}}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"groups": {"has": "admins"}}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"groups": "admins"}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"claim/department": "engineering"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"claim/roles": "writer"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"claim/roles": "owner"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"claim/missing": "x"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"and": [{"http_method": {"in": ["GET", "HEAD"]}}]}}),
            None,
            "get",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"http_path": {"starts_with": "/public/"}}]}}),
            None,
            "GET",
            "/public/a",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"http_path": {"starts_with": "/public/"}}]}}),
            None,
            "GET",
            "/private",
            None,
            false,
        ),
        // Logical operators.
        (
            json!({"allow": {"or": [{"reject": true}, {"accept": true}]}}),
            None,
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"accept": true}, {"reject": true}]}}),
            None,
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"not": [{"domain": "evil.test"}, {"groups": "banned"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"not": [{"domain": "evil.test"}, {"groups": "banned"}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"nor": [{"domain": "example.com"}, {"groups": "admins"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"allow": {"nor": [{"domain": "example.com"}, {"groups": "nobody"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        (
            json!({"allow": {"and": [{"claim/department": "sales"}], "or": [{"domain": "example.com"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            true,
        ),
        // Deny wins; no allow means denied.
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"email": "eve@evil.test"}]}}),
            Some(&eve),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!({"deny": {"or": [{"email": "eve@evil.test"}]}}),
            Some(&ada),
            "GET",
            "/",
            None,
            false,
        ),
        (
            json!([{"allow": {"and": [{"domain": "example.com"}]}}, {"allow": {"and": [{"domain": "evil.test"}]}}]),
            Some(&eve),
            "GET",
            "/",
            None,
            true,
        ),
        // mcp_tool: only tool calls match.
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"mcp_tool": {"in": ["write_query"]}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("write_query")),
            false,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"mcp_tool": {"in": ["write_query"]}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("read_query")),
            true,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"mcp_tool": "write_query"}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(list.clone()),
            true,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"and": [{"mcp_tool": {"not_in": ["read_query", "list_tables"]}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("drop_all")),
            false,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"and": [{"mcp_tool": {"not_in": ["read_query", "list_tables"]}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("list_tables")),
            true,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"mcp_tool": {"starts_with": "admin_"}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("admin_reset")),
            false,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"mcp_tool": {"ends_with": "_delete"}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("row_delete")),
            false,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"mcp_tool": {"contains": "drop"}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("x_drop_y")),
            false,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"mcp_tool": {"not": "echo"}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("echo")),
            true,
        ),
        (
            json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [{"mcp_tool": {"not": "echo"}}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(tool("other")),
            false,
        ),
        (
            json!({"allow": {"and": [{"mcp_tool": "echo"}]}}),
            Some(&ada),
            "POST",
            "/",
            Some(list),
            false,
        ),
    ];
    for (i, (doc, user, method, path, mcp, expected)) in cases.into_iter().enumerate() {
        let p = policy(doc.clone());
        let d = p.evaluate(&Input {
            user,
            method,
            path,
            mcp: mcp.as_ref(),
            ..Default::default()
        });
        assert_eq!(d.allowed, expected, "case {i}: {doc} → {d:?}");
    }
}

#[test]
fn decisions_name_the_rule() {
    let p = policy(
        json!({"allow": {"and": [{"authenticated_user": true}]}, "deny": {"or": [{"mcp_tool": {"in": ["write_query"]}}]}}),
    );
    let ada = user("u", "a@b.c", &[]);
    let d = p.evaluate(&Input {
        user: Some(&ada),
        method: "POST",
        path: "/",
        mcp: Some(&tool("write_query")),
        ..Default::default()
    });
    assert_eq!(d.reason, "deny: policy.deny.or[0] (mcp_tool)");
    let d = p.evaluate(&Input {
        user: Some(&ada),
        method: "POST",
        path: "/",
        mcp: Some(&tool("read_query")),
        ..Default::default()
    });
    assert_eq!(d.reason, "allow: policy.allow.and[0] (authenticated_user)");
    let d = p.evaluate(&Input {
        user: None,
        method: "GET",
        path: "/",
        mcp: None,
        ..Default::default()
    });
    assert!(!d.allowed && d.needs_sign_in);
    assert!(p.uses_mcp_tool());
}

#[test]
fn shorthands_add_allow_rules() {
    let shorthands = Shorthands {
        users: vec!["ada@example.com".into(), "u-grace".into()],
        domains: vec!["corp.test".into()],
        ..Default::default()
    };
    let p = Policy::compile(None, &shorthands).unwrap();
    let allowed = |u: &User| {
        p.evaluate(&Input {
            user: Some(u),
            method: "GET",
            path: "/",
            mcp: None,
            ..Default::default()
        })
        .allowed
    };
    assert!(allowed(&user("u-ada", "ada@example.com", &[])));
    assert!(allowed(&user("u-grace", "grace@else.test", &[])));
    assert!(allowed(&user("x", "bob@corp.test", &[])));
    assert!(!allowed(&user("x", "bob@other.test", &[])));
    let open = Policy::compile(
        None,
        &Shorthands {
            public: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(open.allows_anonymous("GET", "/"));
    let any = Policy::compile(
        None,
        &Shorthands {
            any_authenticated_user: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!any.allows_anonymous("GET", "/"));
    assert!(
        any.evaluate(&Input {
            user: Some(&user("x", "x@y.z", &[])),
            method: "GET",
            path: "/",
            mcp: None,
            ..Default::default()
        })
        .allowed
    );
    let nothing = Policy::compile(None, &Shorthands::default()).unwrap();
    assert!(
        !nothing
            .evaluate(&Input {
                user: Some(&user("x", "x@y.z", &[])),
                method: "GET",
                path: "/",
                mcp: None,
                ..Default::default()
            })
            .allowed,
        "no rule, no access"
    );
}

#[test]
fn errors_name_the_path() {
    let err = |doc: Value| Policy::compile(Some(&doc), &Shorthands::default()).unwrap_err();
    assert_eq!(
        err(json!({"allow": {"or": [{"mcp_tol": "x"}]}})).path,
        "policy.allow.or[0].mcp_tol"
    );
    let e = err(json!({"deny": {"or": [{"mcp_tool": {"begins_with": "x"}}]}}));
    assert_eq!(e.path, "policy.deny.or[0].mcp_tool.begins_with");
    assert!(e.message.contains("starts_with"), "{e}");
    assert_eq!(err(json!({"allow": {"xor": []}})).path, "policy.allow.xor");
    assert_eq!(err(json!({"permit": {}})).path, "policy.permit");
    // Pomerium's landing page writes a rule without its action; the error says where it goes.
    let bare = err(json!({"and": [{"domain": {"is": "corp.test"}}]}));
    assert_eq!(bare.path, "policy.and");
    assert!(bare.message.contains("put it under `allow:`"), "{bare}");
    assert_eq!(
        err(json!([{"allow": {"and": [{"groups": {"within": "x"}}]}}])).path,
        "policy[0].allow.and[0].groups.within"
    );
    assert_eq!(
        err(json!({"allow": {"and": [{"email": {"in": "x"}}]}})).path,
        "policy.allow.and[0].email.in"
    );
    assert_eq!(
        err(json!({"allow": {"and": [{"email": "a", "domain": "b"}]}})).path,
        "policy.allow.and[0]"
    );
}

/// `claim/<name>` in matcher-object form used to never match, so inside `deny` it failed open.
#[test]
fn claims_take_every_matcher_form_and_deny_on_them_holds() {
    let ada = user("u-ada", "ada@example.com", &["staff"]);
    let allows = |rule: Value| {
        policy(json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [rule]}}))
            .evaluate(&Input {
                user: Some(&ada),
                method: "GET",
                path: "/",
                mcp: None,
                ..Default::default()
            })
            .allowed
    };
    // Each of these matches Ada, so the deny fires.
    for rule in [
        json!({"claim/roles": {"has": "writer"}}),
        json!({"claim/roles": {"is": "writer"}}),
        json!({"claim/roles": ["owner", "writer"]}),
        json!({"claim/roles": {"in": ["owner", "writer"]}}),
        json!({"claim/roles": {"starts_with": "wri"}}),
        json!({"claim/department": {"is": "engineering"}}),
        json!({"claim/department": {"ends_with": "ing"}}),
        json!({"claim/department": {"not": "sales"}}),
        json!({"claim/roles": {"not_in": ["owner"]}}),
        json!({"claim/missing": {"not": "x"}}),
    ] {
        assert!(!allows(rule.clone()), "deny on {rule} must fire");
    }
    // These do not match Ada.
    for rule in [
        json!({"claim/roles": {"has": "owner"}}),
        json!({"claim/roles": {"not": "writer"}}),
        json!({"claim/department": {"in": ["sales"]}}),
        json!({"claim/missing": {"is": "x"}}),
    ] {
        assert!(allows(rule.clone()), "deny on {rule} must not fire");
    }
    // A form the engine cannot evaluate is refused when the policy is read.
    for bad in [
        json!({"claim/roles": {"begins_with": "w"}}),
        json!({"claim/roles": {"has": ["a"]}}),
        json!({"claim/roles": null}),
        json!({"claim/roles": {}}),
    ] {
        let doc = json!({"allow": {"and": [{"accept": true}]}, "deny": {"or": [bad]}});
        assert!(
            Policy::compile(Some(&doc), &Shorthands::default()).is_err(),
            "{doc} must be a configuration error"
        );
    }
}

#[test]
fn groups_take_pomeriums_list_matchers_and_rules_may_carry_their_action() {
    let allowed = |doc: Value, groups: &[&str]| {
        let u = user("u", "u@example.com", groups);
        policy(doc)
            .evaluate(&Input {
                user: Some(&u),
                method: "GET",
                path: "/",
                mcp: None,
                ..Default::default()
            })
            .allowed
    };
    let has = json!({"allow": {"and": [{"groups": {"has": "admins"}}]}});
    assert!(allowed(has.clone(), &["staff", "admins"]));
    assert!(!allowed(has, &["staff"]));
    let is = json!({"allow": {"and": [{"groups": {"is": "admins"}}]}});
    assert!(allowed(is.clone(), &["admins"]));
    assert!(
        !allowed(is.clone(), &["admins", "staff"]),
        "is: that one group and no other"
    );
    assert!(!allowed(is, &[]));
    let exclude = json!({"allow": {"and": [{"groups": {"exclude": "contractors"}}]}});
    assert!(allowed(exclude.clone(), &["staff"]));
    assert!(allowed(exclude.clone(), &[]));
    assert!(!allowed(exclude.clone(), &["staff", "contractors"]));
    let nobody = policy(exclude).evaluate(&Input {
        user: None,
        method: "GET",
        path: "/",
        mcp: None,
        ..Default::default()
    });
    assert!(!nobody.allowed, "exclude still needs a signed-in user");
    let both = json!({"allow": {"and": [{"groups": {"has": "staff", "exclude": "contractors"}}]}});
    assert!(allowed(both.clone(), &["staff"]));
    assert!(!allowed(both, &["staff", "contractors"]));

    let with_action = json!({"allow": {"action": "allow", "and": [{"groups": "staff"}]}});
    assert!(allowed(with_action, &["staff"]));
    let contradicting = json!({"deny": {"action": "allow", "and": [{"groups": "staff"}]}});
    let e = Policy::compile(Some(&contradicting), &Shorthands::default()).unwrap_err();
    assert_eq!(e.path, "policy.deny.action");
}

#[test]
fn allowed_idp_claims_allow_any_listed_value_of_any_listed_claim() {
    // `user()` gives everyone department: engineering and roles: [reader, writer].
    let p = |claims: Vec<(&str, Vec<&str>)>| {
        let shorthands = Shorthands {
            claims: claims
                .into_iter()
                .map(|(n, vs)| (n.to_owned(), vs.into_iter().map(str::to_owned).collect()))
                .collect(),
            ..Default::default()
        };
        let policy = Policy::compile(None, &shorthands).unwrap();
        let u = user("u", "u@example.com", &[]);
        let decision = policy.evaluate(&Input {
            user: Some(&u),
            method: "GET",
            path: "/",
            mcp: None,
            ..Default::default()
        });
        (decision.allowed, policy.allows_anonymous("GET", "/"))
    };
    assert_eq!(
        p(vec![("department", vec!["sales", "engineering"])]),
        (true, false)
    );
    assert_eq!(
        p(vec![("roles", vec!["writer"])]),
        (true, false),
        "a list claim holds it"
    );
    assert_eq!(p(vec![("department", vec!["sales"])]), (false, false));
    assert_eq!(
        p(vec![
            ("department", vec!["sales"]),
            ("roles", vec!["reader"])
        ]),
        (true, false),
        "any claim"
    );
    assert_eq!(p(vec![("missing", vec!["x"])]), (false, false));
}

#[test]
fn source_ip_and_cors_preflight_criteria() {
    let from = |doc: Value, ip: &str, preflight: bool| {
        policy(doc)
            .evaluate(&Input {
                user: None,
                method: if preflight { "OPTIONS" } else { "GET" },
                path: "/",
                mcp: None,
                source_ip: Some(ip.parse().unwrap()),
                preflight,
                client_certificate: None,
            })
            .allowed
    };
    let office =
        json!({"allow": {"and": [{"source_ip": ["10.1.0.0/16", "2001:db8:5::/48", "192.0.2.7"]}]}});
    assert!(from(office.clone(), "10.1.200.3", false));
    assert!(!from(office.clone(), "10.2.0.1", false));
    assert!(
        from(office.clone(), "::ffff:10.1.0.9", false),
        "IPv4-mapped"
    );
    assert!(from(office.clone(), "2001:db8:5:ffff::1", false));
    assert!(!from(office.clone(), "2001:db8:6::1", false));
    assert!(from(office.clone(), "192.0.2.7", false));
    assert!(!from(office.clone(), "192.0.2.8", false));
    let anywhere = json!({"allow": {"and": [{"source_ip": "0.0.0.0/0"}]}});
    assert!(from(anywhere, "203.0.113.9", false));
    let unknown =
        policy(json!({"allow": {"and": [{"source_ip": "10.0.0.0/8"}]}})).evaluate(&Input {
            method: "GET",
            path: "/",
            ..Default::default()
        });
    assert!(!unknown.allowed, "no known address matches no network");

    let preflights = json!({"allow": {"and": [{"cors_preflight": true}]}});
    assert!(from(preflights.clone(), "10.0.0.1", true));
    assert!(!from(preflights, "10.0.0.1", false));

    let err = |doc: Value| Policy::compile(Some(&doc), &Shorthands::default()).unwrap_err();
    for bad in ["10.0.0.0/33", "not-an-ip", "10.0.0.0/x"] {
        let e = err(json!({"allow": {"and": [{"source_ip": bad}]}}));
        assert_eq!(e.path, "policy.allow.and[0].source_ip", "{bad}");
    }
    assert_eq!(
        err(json!({"allow": {"and": [{"cors_preflight": "yes"}]}})).path,
        "policy.allow.and[0].cors_preflight"
    );
}

#[test]
fn the_groups_a_policy_names_are_listed_once_each() {
    let p = policy(json!([
        {"allow": {"or": [{"groups": {"has": "eng"}}, {"email": {"is": "a@x"}}]}},
        {"allow": {"and": [{"groups": {"is": "ops"}}, {"email": {"is": "a@x"}}]}},
        {"deny": {"not": [{"groups": {"exclude": "eng"}}]}}
    ]));
    assert_eq!(p.groups(), ["eng", "ops"]);
    assert!(
        policy(json!({"allow": {"and": [{"email": {"is": "a@x"}}]}}))
            .groups()
            .is_empty()
    );
}

const FP: &str = "3bdf2e5eee6e4a124664cee8c7b910ef20dc6d625075113017dfaa011950fe44";
const SPKI: &str = "FsDbM0rUYIiL3V339deEMzt6gqSsdoOIPiJ3XrRyW+4=";

fn cert(valid: bool, fingerprint: &str) -> ClientCertificate {
    ClientCertificate {
        valid,
        fingerprint: fingerprint.into(),
        spki_hash: SPKI.into(),
    }
}

fn with_cert(policy: &Policy, cert: Option<&ClientCertificate>) -> Decision {
    policy.evaluate(&Input {
        method: "GET",
        path: "/",
        client_certificate: cert,
        ..Default::default()
    })
}

#[test]
fn client_certificate_matches_only_a_valid_certificate_with_a_listed_hash() {
    let by_fingerprint =
        policy(json!({"allow": {"or": [{"client_certificate": {"fingerprint": [FP]}}]}}));
    assert!(with_cert(&by_fingerprint, Some(&cert(true, FP))).allowed);
    let other = "00".repeat(32);
    assert!(
        !with_cert(&by_fingerprint, Some(&cert(true, &other))).allowed,
        "another certificate"
    );
    assert!(
        !with_cert(&by_fingerprint, Some(&cert(false, FP))).allowed,
        "the pinned certificate, but it did not verify against the CA"
    );
    assert!(!with_cert(&by_fingerprint, None).allowed, "no certificate");

    // Pomerium's long form is the same fingerprint.
    let long: Vec<String> = (0..32)
        .map(|i| FP[2 * i..2 * i + 2].to_ascii_uppercase())
        .collect();
    let long =
        policy(json!({"allow": {"or": [{"client_certificate": {"fingerprint": long.join(":")}}]}}));
    assert!(with_cert(&long, Some(&cert(true, FP))).allowed);

    let by_key = policy(json!({"allow": {"or": [{"client_certificate": {"spki_hash": SPKI}}]}}));
    assert!(with_cert(&by_key, Some(&cert(true, FP))).allowed);
    let both = policy(
        json!({"allow": {"or": [{"client_certificate": {"spki_hash": SPKI, "fingerprint": other}}]}}),
    );
    assert!(
        !with_cert(&both, Some(&cert(true, FP))).allowed,
        "every condition must hold"
    );
}

#[test]
fn invalid_client_certificate_denies_without_a_valid_certificate_and_says_so() {
    let p = policy(json!([
        {"allow": {"or": [{"accept": true}]}},
        {"deny": {"or": [{"invalid_client_certificate": true}]}}
    ]));
    assert!(with_cert(&p, Some(&cert(true, FP))).allowed);
    for cert in [None, Some(cert(false, FP))] {
        let d = with_cert(&p, cert.as_ref());
        assert!(!d.allowed);
        assert!(d.invalid_client_certificate, "{d:?}");
        assert!(!d.needs_sign_in);
    }
}

#[test]
fn default_deny_puts_the_client_certificate_before_every_rule() {
    let shorthands = Shorthands {
        public: true,
        client_certificate_required: true,
        ..Default::default()
    };
    let doc = json!({"deny": {"or": [{"http_path": "/admin"}]}});
    let p = Policy::compile(Some(&doc), &shorthands).unwrap();
    let anonymous = p.evaluate(&Input {
        method: "GET",
        path: "/admin",
        ..Default::default()
    });
    assert!(!anonymous.allowed);
    assert!(anonymous.invalid_client_certificate, "{anonymous:?}");
    assert_eq!(
        anonymous.reason,
        "deny: downstream_mtls (invalid_client_certificate)"
    );
    assert!(
        with_cert(&p, Some(&cert(true, FP))).allowed,
        "a public route, with a certificate"
    );
    assert!(!p.allows_anonymous("GET", "/"));
    assert!(p.refuses_certificate(None));
    assert!(p.refuses_certificate(Some(&cert(false, FP))));
    assert!(!p.refuses_certificate(Some(&cert(true, FP))));
    assert!(
        !policy(doc).refuses_certificate(None),
        "without downstream_mtls"
    );
}

#[test]
fn client_certificate_criteria_are_checked_when_compiled() {
    let err = |doc: Value| Policy::compile(Some(&doc), &Shorthands::default()).unwrap_err();
    let at = |arg: Value| err(json!({"allow": {"or": [{"client_certificate": arg}]}}));
    for (arg, wants) in [
        (json!({"fingerprint": "abc"}), "not a SHA-256 fingerprint"),
        (
            json!({"fingerprint": FP.to_ascii_uppercase()}),
            "not a SHA-256 fingerprint",
        ),
        (json!({"fingerprint": []}), "empty list"),
        (json!({"spki_hash": "not base64"}), "base64-encoded SHA-256"),
        (json!({"spki_hash": "AAAA"}), "base64-encoded SHA-256"),
        (json!({"certificate": "x"}), "unknown certificate condition"),
        (json!({}), "fingerprint and/or spki_hash"),
        (json!(FP), "expected an object"),
    ] {
        let e = at(arg.clone());
        assert!(e.message.contains(wants), "{arg}: {e}");
        assert!(
            e.path.starts_with("policy.allow.or[0].client_certificate"),
            "{e}"
        );
    }
    let e = err(json!({"deny": {"or": [{"invalid_client_certificate": false}]}}));
    assert!(e.message.contains("expected `true`"), "{e}");
}

/// Property-based tests (issue 17, hostile input): thousands of generated policies per run
/// (`PROPTEST_CASES` raises it).
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_generated_criteria_mostly_compile() {
        // The properties below are only as good as the policies that compile: most must.
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let compiled = (0..1000)
            .filter(|_| {
                let allow = criterion().new_tree(&mut runner).unwrap().current();
                let document = serde_json::json!({"allow": {"and": [allow]}});
                Policy::compile(Some(&document), &Shorthands::default()).is_ok()
            })
            .count();
        assert!(compiled > 300, "only {compiled} of 1000 compiled");
    }

    const WORDS: &[&str] = &[
        "allow",
        "deny",
        "and",
        "or",
        "not",
        "nor",
        "accept",
        "reject",
        "authenticated_user",
        "email",
        "user",
        "domain",
        "groups",
        "claim/department",
        "claim/",
        "claim",
        "mcp_tool",
        "http_path",
        "http_method",
        "source_ip",
        "client_certificate",
        "cors_preflight",
        "invalid_client_certificate",
        "is",
        "in",
        "not_in",
        "has",
        "contains",
        "starts_with",
        "ends_with",
        "exclude",
        "fingerprint",
        "spki_hash",
        "sub",
        "10.0.0.0/8",
        "::1/200",
        "300.1.1.1",
        "",
        "*",
        "/",
        "GET",
        "ada@example.com",
        "tools/call",
    ];

    fn ppl() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(WORDS).prop_map(|w| Value::String(w.into())),
        ];
        leaf.prop_recursive(6, 48, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(WORDS), inner), 0..3).prop_map(
                    |pairs| Value::Object(
                        pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
                    )
                ),
            ]
        })
    }

    fn evaluate_everywhere(policy: &Policy) {
        let ada = user("u-ada", "ada@example.com", &["admins"]);
        let call = tool("write");
        let certificate = ClientCertificate {
            valid: true,
            fingerprint: "ab".into(),
            spki_hash: "cd".into(),
        };
        for signed_in in [None, Some(&ada)] {
            for mcp in [None, Some(&call)] {
                let _ = policy.evaluate(&Input {
                    user: signed_in,
                    method: "GET",
                    path: "/x",
                    mcp,
                    source_ip: Some("10.1.2.3".parse().unwrap()),
                    preflight: mcp.is_none(),
                    client_certificate: signed_in.map(|_| &certificate),
                });
                let _ = policy.allows_anonymous("POST", "/");
            }
        }
    }

    /// Criteria as the docs write them (each right for its criterion), some of them wrong.
    const CRITERIA: &[&str] = &[
        r#"{"accept": true}"#,
        r#"{"reject": true}"#,
        r#"{"authenticated_user": true}"#,
        r#"{"cors_preflight": true}"#,
        r#"{"email": "ada@example.com"}"#,
        r#"{"email": {"is": "ada@example.com"}}"#,
        r#"{"email": {"starts_with": "ada@"}}"#,
        r#"{"email": {"ends_with": "@example.com"}}"#,
        r#"{"email": {"contains": "a"}}"#,
        r#"{"email": {"in": ["ada@example.com", "x@y.z"]}}"#,
        r#"{"user": {"is": "u-ada"}}"#,
        r#"{"domain": {"is": "example.com"}}"#,
        r#"{"groups": {"has": "admins"}}"#,
        r#"{"claim/department": "engineering"}"#,
        r#"{"mcp_tool": {"is": "write"}}"#,
        r#"{"mcp_tool": {"in": ["read", "write"]}}"#,
        r#"{"mcp_tool": {"not_in": ["write"]}}"#,
        r#"{"mcp_tool": {"starts_with": "wr"}}"#,
        r#"{"http_path": {"starts_with": "/x"}}"#,
        r#"{"http_path": {"is": "/x"}}"#,
        r#"{"http_method": {"is": "GET"}}"#,
        r#"{"source_ip": "10.0.0.0/8"}"#,
        r#"{"source_ip": "::1/200"}"#,
        r#"{"email": {"is": 1}}"#,
        r#"{"nonsense": true}"#,
    ];

    /// A criterion (PPL does not nest `and`/`or` inside a rule's list).
    fn criterion() -> impl Strategy<Value = Value> {
        prop::sample::select(CRITERIA).prop_map(|c| serde_json::from_str(c).unwrap())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(4000)
        ))]

        /// Whatever an allow rule says, a `deny` that matches everything wins, for every input.
        #[test]
        fn a_matching_deny_always_wins(allow in prop::collection::vec(criterion(), 0..4)) {
            let document = serde_json::json!([
                {"allow": {"or": allow}},
                {"deny": {"or": [{"accept": true}]}},
            ]);
            let Ok(policy) = Policy::compile(Some(&document), &Shorthands::default()) else {
                return Ok(());
            };
            let ada = user("u-ada", "ada@example.com", &["admins"]);
            let call = tool("write");
            for signed_in in [None, Some(&ada)] {
                for mcp in [None, Some(&call)] {
                    let decision = policy.evaluate(&Input {
                        user: signed_in,
                        method: "GET",
                        path: "/x",
                        mcp,
                        source_ip: Some("10.1.2.3".parse().unwrap()),
                        ..Input::default()
                    });
                    prop_assert!(!decision.allowed, "{} allowed {:?}", document, decision);
                }
            }
        }

        /// Well-formed criteria, nested: compiled or refused, evaluated without a panic.
        #[test]
        fn well_formed_rules_evaluate(
            rules in prop::collection::vec(
                (
                    prop::sample::select(&["allow", "deny"][..]),
                    prop::sample::select(&["and", "or", "not", "nor"][..]),
                    prop::collection::vec(criterion(), 0..4),
                ),
                1..4,
            ),
        ) {
            let document: Vec<Value> = rules
                .into_iter()
                .map(|(action, op, criteria)| serde_json::json!({action: {op: criteria}}))
                .collect();
            let document = Value::Array(document);
            if let Ok(policy) = Policy::compile(Some(&document), &Shorthands::default()) {
                evaluate_everywhere(&policy);
            }
        }

        /// Any JSON made of PPL's words compiles or is refused with an error, never a panic,
        /// and what compiles evaluates without one.
        #[test]
        fn any_document_compiles_or_is_refused(document in ppl()) {
            if let Ok(policy) = Policy::compile(Some(&document), &Shorthands::default()) {
                evaluate_everywhere(&policy);
            }
        }

        /// The same for the policy wrapped as a rule (`allow:`/`deny:` at the top).
        #[test]
        fn any_rule_compiles_or_is_refused(
            action in prop::sample::select(&["allow", "deny"][..]),
            operator in prop::sample::select(&["and", "or", "not", "nor"][..]),
            criteria in prop::collection::vec(ppl(), 0..4),
        ) {
            let document = serde_json::json!({action: {operator: criteria}});
            if let Ok(policy) = Policy::compile(Some(&document), &Shorthands::default()) {
                evaluate_everywhere(&policy);
            }
        }
    }
}
