//! Route authorization policy: the subset of Pomerium Policy Language (PPL) that Postern
//! supports, plus the route shorthands (`allow_public_unauthenticated_access`,
//! `allow_any_authenticated_user`, `allowed_users`, `allowed_domains`). No I/O: a [`Policy`] is
//! compiled once from configuration and evaluated per request against an [`Input`].
//!
//! Semantics (as Pomerium documents them): a request is allowed when at least one `allow` rule
//! matches and no `deny` rule matches; no matching `allow` means denied. In a rule, `and` needs
//! every criterion, `or` any, `not` none (¬A ∧ ¬B), `nor` not all (¬A ∨ ¬B); several operators in
//! one rule are alternatives. Criteria: `accept`, `reject`, `authenticated_user`, `email`,
//! `domain`, `user`, `groups`, `claim/<name>`, `http_method`, `http_path`, `mcp_tool`,
//! `source_ip` (addresses or CIDR networks), `cors_preflight`, `client_certificate`
//! (`fingerprint`, `spki_hash`: the verified client certificate is one of these) and
//! `invalid_client_certificate` (no verified client certificate). String
//! matchers: `is`, `not`, `in`, `not_in`, `starts_with`, `ends_with`, `contains` (a bare value
//! means `is`); `groups` takes `has`, `is` (that one group and no other) and `exclude` (a bare
//! value means `has`); a rule body may carry Pomerium's `action` key (it must agree). `mcp_tool` matches only
//! `tools/call` requests, so put it under `deny`.
#![forbid(unsafe_code)]

use serde_json::{Map, Value};

/// A policy error: the path inside the policy document and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// e.g. `allow.or[1].mcp_tool.begins_with`.
    pub path: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

fn error(path: &str, message: impl Into<String>) -> PolicyError {
    PolicyError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// The signed-in user, as the policy sees them.
#[derive(Clone, Debug, Default)]
pub struct User {
    /// Stable id.
    pub id: String,
    /// Email address.
    pub email: String,
    /// Group names and ids.
    pub groups: Vec<String>,
    /// Other identity claims.
    pub claims: Map<String, Value>,
}

/// The MCP request, when the body of a request to an MCP server route was a JSON-RPC request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct McpRequest {
    /// The JSON-RPC method (`tools/call`, `initialize`, ...).
    pub method: String,
    /// For `tools/call`, the tool's name.
    pub tool: Option<String>,
}

/// What a decision is made about.
#[derive(Clone, Debug, Default)]
pub struct Input<'a> {
    /// The user (`None`: not signed in).
    pub user: Option<&'a User>,
    /// HTTP method.
    pub method: &'a str,
    /// HTTP path.
    pub path: &'a str,
    /// The MCP request, if any.
    pub mcp: Option<&'a McpRequest>,
    /// The client's address (`None`: not known; `source_ip` criteria do not match).
    pub source_ip: Option<std::net::IpAddr>,
    /// Whether the request is a CORS preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`).
    pub preflight: bool,
    /// The certificate the client presented in the TLS handshake (`None`: none, or no TLS).
    pub client_certificate: Option<&'a ClientCertificate>,
}

/// A client certificate, as the policy sees it: whether it verified against the configured CA
/// (`downstream_mtls`), and its hashes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCertificate {
    /// It chains to a trusted CA, is in date, not revoked, and passed `match_subject_alt_names`
    /// and `max_verify_depth`. Only a valid certificate matches `client_certificate`.
    pub valid: bool,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub fingerprint: String,
    /// SHA-256 of the DER SubjectPublicKeyInfo, standard base64 (as HPKP `pin-sha256`).
    pub spki_hash: String,
}

/// The outcome, with the rule that decided it (for the audit log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Which rule decided, e.g. `deny: policy.deny.or[0] (mcp_tool)`.
    pub reason: String,
    /// Denied because nobody is signed in and an allow rule needs a user: sign-in may help.
    pub needs_sign_in: bool,
    /// Denied by `invalid_client_certificate` (the client has no valid certificate): Pomerium
    /// answers 495, and signing in cannot help.
    pub invalid_client_certificate: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Allow,
    Deny,
}

#[derive(Clone, Debug)]
enum Expr {
    And(Vec<Expr>),
    Or(Vec<Expr>),
    /// None of them (¬A ∧ ¬B).
    Not(Vec<Expr>),
    /// Not all of them (¬A ∨ ¬B).
    Nor(Vec<Expr>),
    Criterion {
        path: String,
        name: String,
        test: Test,
    },
}

/// A list matcher's operator (Pomerium's list matchers): `has` the value, `is` exactly that one
/// value and no other, `exclude` the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ListOp {
    Has,
    Is,
    Exclude,
}

#[derive(Clone, Debug)]
enum Test {
    Accept,
    Reject,
    AuthenticatedUser,
    Email(StringMatcher),
    Domain(StringMatcher),
    User(StringMatcher),
    /// `has` / `is` / `exclude` each group; a bare list needs every group in it.
    Groups(Vec<(ListOp, String)>),
    /// A claim's values (one, or each element of a list) against a matcher.
    Claim(String, StringMatcher),
    HttpMethod(StringMatcher),
    HttpPath(StringMatcher),
    McpTool(StringMatcher),
    /// The client's address is in one of these networks.
    SourceIp(Vec<Network>),
    /// The request is (true) or is not (false) a CORS preflight.
    CorsPreflight(bool),
    /// A valid client certificate that passes every matcher.
    ClientCertificate(Vec<CertMatcher>),
    /// No valid client certificate (none, or one that did not verify).
    InvalidClientCertificate,
}

/// One condition of `client_certificate`: the certificate's hash is one of these.
#[derive(Clone, Debug)]
enum CertMatcher {
    /// SHA-256 of the certificate, lower-case hex.
    Fingerprint(Vec<String>),
    /// SHA-256 of the SubjectPublicKeyInfo, base64.
    SpkiHash(Vec<String>),
}

/// All operators of a string matcher must hold.
#[derive(Clone, Debug)]
struct StringMatcher(Vec<(Op, Value)>);

#[derive(Clone, Copy, Debug)]
enum Op {
    Is,
    Not,
    In,
    NotIn,
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Clone, Debug)]
struct Rule {
    action: Action,
    path: String,
    expr: Expr,
}

/// A compiled policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// `client_certificate_required`: every request without a valid certificate is denied,
    /// whoever asks.
    certificate_required: bool,
}

/// The route shorthands that add `allow` rules.
#[derive(Clone, Debug, Default)]
pub struct Shorthands {
    /// `allow_public_unauthenticated_access`.
    pub public: bool,
    /// `allow_any_authenticated_user`.
    pub any_authenticated_user: bool,
    /// `allowed_users` (ids or emails).
    pub users: Vec<String>,
    /// `allowed_domains`.
    pub domains: Vec<String>,
    /// `allowed_idp_claims`: claim name and the values any of which allows.
    pub claims: Vec<(String, Vec<String>)>,
    /// `cors_allow_preflight`: CORS preflights are allowed without sign-in.
    pub preflight: bool,
    /// `downstream_mtls` with `enforcement: policy_with_default_deny`: a deny rule
    /// `invalid_client_certificate` ahead of every other rule.
    pub client_certificate_required: bool,
}

impl Policy {
    /// Compiles a PPL document (`policy:` of a route) and the shorthands.
    pub fn compile(document: Option<&Value>, shorthands: &Shorthands) -> Result<Self, PolicyError> {
        let mut rules = shorthands.deny_rules();
        match document {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    rules.extend(parse_rule_object(item, &format!("policy[{i}]"))?);
                }
            }
            Some(object) => rules.extend(parse_rule_object(object, "policy")?),
        }
        rules.extend(shorthands.rules());
        Ok(Self {
            rules,
            certificate_required: shorthands.client_certificate_required,
        })
    }

    /// Whether any rule looks at MCP tool calls (the request body must then be inspected).
    pub fn uses_mcp_tool(&self) -> bool {
        fn uses(expr: &Expr) -> bool {
            match expr {
                Expr::And(v) | Expr::Or(v) | Expr::Not(v) | Expr::Nor(v) => v.iter().any(uses),
                Expr::Criterion { test, .. } => matches!(test, Test::McpTool(_)),
            }
        }
        self.rules.iter().any(|r| uses(&r.expr))
    }

    /// The groups the rules' `groups` criteria name (`jwt_groups_filter`'s `infer_from_ppl`).
    pub fn groups(&self) -> Vec<String> {
        fn collect(expr: &Expr, into: &mut Vec<String>) {
            match expr {
                Expr::And(v) | Expr::Or(v) | Expr::Not(v) | Expr::Nor(v) => {
                    v.iter().for_each(|e| collect(e, into));
                }
                Expr::Criterion {
                    test: Test::Groups(wanted),
                    ..
                } => {
                    for (_, group) in wanted {
                        if !into.contains(group) {
                            into.push(group.clone());
                        }
                    }
                }
                Expr::Criterion { .. } => {}
            }
        }
        let mut groups = Vec::new();
        self.rules
            .iter()
            .for_each(|r| collect(&r.expr, &mut groups));
        groups
    }

    /// Whether this client certificate (`None`: none presented) is refused before anything
    /// else about the request matters (`downstream_mtls` default deny): who asks, their token,
    /// their request body.
    pub fn refuses_certificate(&self, certificate: Option<&ClientCertificate>) -> bool {
        self.certificate_required && !certificate.is_some_and(|c| c.valid)
    }

    /// Whether any rule can allow without a signed-in user (`accept`).
    pub fn allows_anonymous(&self, method: &str, path: &str) -> bool {
        self.evaluate(&Input {
            user: None,
            method,
            path,
            mcp: None,
            ..Default::default()
        })
        .allowed
    }

    /// Decides about `input`.
    pub fn evaluate(&self, input: &Input<'_>) -> Decision {
        let mut allowed_by = None;
        for rule in &self.rules {
            let mut hit = None;
            if eval(&rule.expr, input, &mut hit) {
                let by_certificate = hit
                    .as_ref()
                    .is_some_and(|(_, name)| name == "invalid_client_certificate");
                let why = hit.map_or_else(
                    || rule.path.clone(),
                    |(path, name)| format!("{path} ({name})"),
                );
                match rule.action {
                    Action::Deny => {
                        return Decision {
                            allowed: false,
                            reason: format!("deny: {why}"),
                            needs_sign_in: false,
                            invalid_client_certificate: by_certificate,
                        };
                    }
                    Action::Allow if allowed_by.is_none() => allowed_by = Some(why),
                    Action::Allow => {}
                }
            }
        }
        match allowed_by {
            Some(why) => Decision {
                allowed: true,
                reason: format!("allow: {why}"),
                needs_sign_in: false,
                invalid_client_certificate: false,
            },
            None => Decision {
                allowed: false,
                reason: "deny: no allow rule matched".into(),
                needs_sign_in: input.user.is_none(),
                invalid_client_certificate: false,
            },
        }
    }
}

impl Shorthands {
    /// The `deny` rules the shorthands stand for; they come before the document's rules, so a
    /// missing client certificate is what a refusal names (Pomerium: 495).
    fn deny_rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        if self.client_certificate_required {
            let key = "downstream_mtls";
            let test = Test::InvalidClientCertificate;
            rules.push(Rule {
                action: Action::Deny,
                path: key.into(),
                expr: criterion(key, "invalid_client_certificate", test),
            });
        }
        rules
    }

    /// The `allow` rules the shorthands stand for, each named after its key.
    fn rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        if self.public {
            let key = "allow_public_unauthenticated_access";
            rules.push(allow(key, criterion(key, "accept", Test::Accept)));
        }
        if self.any_authenticated_user {
            let key = "allow_any_authenticated_user";
            let test = Test::AuthenticatedUser;
            rules.push(allow(key, criterion(key, "authenticated_user", test)));
        }
        if !self.users.is_empty() {
            let key = "allowed_users";
            let by_id = criterion(key, "user", Test::User(one_of(&self.users)));
            let by_email = criterion(key, "email", Test::Email(one_of(&self.users)));
            rules.push(allow(key, Expr::Or(vec![by_id, by_email])));
        }
        if !self.domains.is_empty() {
            let key = "allowed_domains";
            let test = Test::Domain(one_of(&self.domains));
            rules.push(allow(key, criterion(key, "domain", test)));
        }
        if self.preflight {
            let key = "cors_allow_preflight";
            let test = Test::CorsPreflight(true);
            rules.push(allow(key, criterion(key, "cors_preflight", test)));
        }
        if !self.claims.is_empty() {
            // As Pomerium: any listed value of any listed claim allows.
            let key = "allowed_idp_claims";
            let each = self
                .claims
                .iter()
                .map(|(name, values)| {
                    let test = Test::Claim(name.clone(), one_of(values));
                    criterion(key, &format!("claim/{name}"), test)
                })
                .collect();
            rules.push(allow(key, Expr::Or(each)));
        }
        rules
    }
}

/// A shorthand's `allow` rule.
fn allow(key: &str, expr: Expr) -> Rule {
    Rule {
        action: Action::Allow,
        path: key.into(),
        expr,
    }
}

fn criterion(path: &str, name: &str, test: Test) -> Expr {
    Expr::Criterion {
        path: path.into(),
        name: name.into(),
        test,
    }
}

/// `in` a shorthand's list.
fn one_of(values: &[String]) -> StringMatcher {
    let list = values.iter().map(|v| Value::String(v.clone())).collect();
    StringMatcher(vec![(Op::In, Value::Array(list))])
}

fn parse_rule_object(value: &Value, path: &str) -> Result<Vec<Rule>, PolicyError> {
    let Value::Object(object) = value else {
        return Err(error(
            path,
            "a rule is an object with `allow` and/or `deny`",
        ));
    };
    let mut rules = Vec::new();
    for (key, body) in object {
        let action = match key.as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            // Pomerium's parser refuses this form too; say what to write.
            operator @ ("and" | "or" | "not" | "nor") => {
                return Err(error(
                    &format!("{path}.{operator}"),
                    format!(
                        "`{operator}` is an operator, not an action: put it under `allow:` (or `deny:`), as in `allow: {{{operator}: [...]}}`"
                    ),
                ));
            }
            other => {
                return Err(error(
                    &format!("{path}.{other}"),
                    "unknown action: use allow or deny",
                ));
            }
        };
        let rule_path = format!("{path}.{key}");
        let Value::Object(operators) = body else {
            return Err(error(
                &rule_path,
                "expected operators (and, or, not, nor) with lists of criteria",
            ));
        };
        let mut alternatives = Vec::new();
        for (op, criteria) in operators {
            let op_path = format!("{rule_path}.{op}");
            // Pomerium tolerates an `action` inside a rule body; the enclosing key decides.
            // One that says the opposite is refused: the writer meant something else.
            if op == "action" {
                if criteria.as_str() != Some(key.as_str()) {
                    return Err(error(
                        &op_path,
                        format!("this rule is under `{key}`, so its action can only be `{key}`"),
                    ));
                }
                continue;
            }
            let Value::Array(criteria) = criteria else {
                return Err(error(&op_path, "expected a list of criteria"));
            };
            let parsed = criteria
                .iter()
                .enumerate()
                .map(|(i, c)| parse_criterion(c, &format!("{op_path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            alternatives.push(match op.as_str() {
                "and" => Expr::And(parsed),
                "or" => Expr::Or(parsed),
                "not" => Expr::Not(parsed),
                "nor" => Expr::Nor(parsed),
                other => {
                    return Err(error(
                        &format!("{rule_path}.{other}"),
                        "unknown operator: use and, or, not or nor",
                    ));
                }
            });
        }
        let expr = if alternatives.len() == 1 {
            alternatives.remove(0)
        } else {
            Expr::Or(alternatives)
        };
        rules.push(Rule {
            action,
            path: rule_path,
            expr,
        });
    }
    Ok(rules)
}

fn parse_criterion(value: &Value, path: &str) -> Result<Expr, PolicyError> {
    let Value::Object(object) = value else {
        return Err(error(
            path,
            "a criterion is an object with one key, e.g. `email: {is: ada@example.com}`",
        ));
    };
    if object.len() != 1 {
        return Err(error(
            path,
            "a criterion has exactly one key; put several in a list under and/or",
        ));
    }
    let (name, arg) = object.iter().next().expect("one entry");
    let at = format!("{path}.{name}");
    let test = match name.as_str() {
        "accept" => Test::Accept,
        "reject" => Test::Reject,
        "authenticated_user" => Test::AuthenticatedUser,
        // Addresses compare case-insensitively.
        "email" => Test::Email(string_matcher(&lowercase(arg), &at)?),
        "domain" => Test::Domain(string_matcher(&lowercase(arg), &at)?),
        "user" => Test::User(string_matcher(arg, &at)?),
        "http_method" => Test::HttpMethod(string_matcher(arg, &at)?),
        "http_path" => Test::HttpPath(string_matcher(arg, &at)?),
        "mcp_tool" => Test::McpTool(string_matcher(arg, &at)?),
        "groups" => Test::Groups(list_matcher(arg, &at)?),
        "source_ip" => Test::SourceIp(networks(arg, &at)?),
        "client_certificate" => Test::ClientCertificate(cert_matchers(arg, &at)?),
        "invalid_client_certificate" => match arg {
            Value::Bool(true) => Test::InvalidClientCertificate,
            _ => {
                return Err(error(
                    &at,
                    "expected `true` (to require a valid client certificate write `deny: {or: [{invalid_client_certificate: true}]}`)",
                ));
            }
        },
        "cors_preflight" => Test::CorsPreflight(
            arg.as_bool()
                .ok_or_else(|| error(&at, "expected true or false"))?,
        ),
        claim if claim.starts_with("claim/") && claim.len() > 6 => {
            Test::Claim(claim[6..].to_owned(), claim_matcher(arg, &at)?)
        }
        other => {
            return Err(error(
                &at,
                format!(
                    "unknown criterion `{other}`; supported: accept, reject, authenticated_user, email, domain, user, groups, claim/<name>, http_method, http_path, mcp_tool, source_ip, cors_preflight, client_certificate, invalid_client_certificate"
                ),
            ));
        }
    };
    Ok(Expr::Criterion {
        path: path.into(),
        name: name.clone(),
        test,
    })
}

fn lowercase(value: &Value) -> Value {
    match value {
        Value::String(s) => Value::String(s.to_ascii_lowercase()),
        Value::Array(items) => Value::Array(items.iter().map(lowercase).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), lowercase(v))).collect())
        }
        other => other.clone(),
    }
}

fn string_matcher(value: &Value, path: &str) -> Result<StringMatcher, PolicyError> {
    let Value::Object(ops) = value else {
        return match value {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => {
                Ok(StringMatcher(vec![(Op::Is, value.clone())]))
            }
            Value::Array(_) => Ok(StringMatcher(vec![(Op::In, value.clone())])),
            _ => Err(error(
                path,
                "expected a value or a matcher object (is, not, in, not_in, starts_with, ends_with, contains)",
            )),
        };
    };
    if ops.is_empty() {
        return Err(error(
            path,
            "an empty matcher matches nothing; give an operator",
        ));
    }
    let mut out = Vec::new();
    for (op, arg) in ops {
        let op_path = format!("{path}.{op}");
        let op = match op.as_str() {
            "is" => Op::Is,
            "not" => Op::Not,
            "in" => Op::In,
            "not_in" => Op::NotIn,
            "starts_with" => Op::StartsWith,
            "ends_with" => Op::EndsWith,
            "contains" => Op::Contains,
            other => {
                return Err(error(
                    &op_path,
                    format!(
                        "unknown operator `{other}`; use is, not, in, not_in, starts_with, ends_with or contains"
                    ),
                ));
            }
        };
        match (op, arg) {
            (Op::In | Op::NotIn, Value::Array(items)) if items.iter().all(Value::is_string) => {}
            (Op::In | Op::NotIn, _) => return Err(error(&op_path, "expected a list of strings")),
            (_, Value::String(_)) => {}
            _ => return Err(error(&op_path, "expected a string")),
        }
        out.push((op, arg.clone()));
    }
    Ok(StringMatcher(out))
}

/// A claim takes what a string criterion takes (a value, a list meaning `in`, or a matcher
/// object), and `has` as groups do (a list claim has the value).
fn claim_matcher(value: &Value, path: &str) -> Result<StringMatcher, PolicyError> {
    match value {
        Value::Object(ops) if ops.contains_key("has") => {
            let mut rest = ops.clone();
            let has = rest.remove("has").expect("checked above");
            let has = match has {
                Value::String(_) => has,
                Value::Number(_) | Value::Bool(_) => Value::String(has.to_string()),
                _ => return Err(error(&format!("{path}.has"), "expected a string")),
            };
            let mut matcher = if rest.is_empty() {
                StringMatcher(Vec::new())
            } else {
                string_matcher(&Value::Object(rest), path)?
            };
            matcher.0.push((Op::Is, has));
            Ok(matcher)
        }
        Value::Null => Err(error(
            path,
            "expected a value, a list of values or a matcher object (is, not, in, not_in, starts_with, ends_with, contains, has)",
        )),
        other => string_matcher(other, path),
    }
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a network of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Network(ipnet::IpNet);

impl Network {
    fn parse(text: &str) -> Option<Self> {
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
            .ok()
            .map(Network)
    }

    /// Whether `ip` is in the network (an IPv4-mapped IPv6 client counts as its IPv4 address).
    fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// `source_ip`: one network or a list of them.
fn networks(value: &Value, path: &str) -> Result<Vec<Network>, PolicyError> {
    let one = |v: &Value| {
        v.as_str().and_then(Network::parse).ok_or_else(|| {
            error(
                path,
                format!("{v} is not an IP address or network (e.g. 10.0.0.0/8, 2001:db8::/32)"),
            )
        })
    };
    match value {
        Value::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// `client_certificate`: an object of `fingerprint` and/or `spki_hash`, each one hash or a list.
fn cert_matchers(value: &Value, path: &str) -> Result<Vec<CertMatcher>, PolicyError> {
    let Value::Object(conditions) = value else {
        return Err(error(
            path,
            "expected an object with fingerprint and/or spki_hash, e.g. `client_certificate: {fingerprint: <sha-256 hex>}`",
        ));
    };
    if conditions.is_empty() {
        return Err(error(path, "give fingerprint and/or spki_hash"));
    }
    let mut out = Vec::new();
    for (name, arg) in conditions {
        let at = format!("{path}.{name}");
        let items: Vec<&Value> = match arg {
            Value::Array(items) if !items.is_empty() => items.iter().collect(),
            Value::Array(_) => return Err(error(&at, "an empty list matches no certificate")),
            one => vec![one],
        };
        let strings = items
            .into_iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| error(&at, "expected a string or a list of strings"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.push(match name.as_str() {
            "fingerprint" => CertMatcher::Fingerprint(
                strings
                    .into_iter()
                    .map(|f| canonical_fingerprint(f).ok_or_else(|| error(&at, format!("{f:?} is not a SHA-256 fingerprint: give 64 lower-case hex digits, or 32 upper-case hex bytes separated by colons (AB:CD:...)"))))
                    .collect::<Result<_, _>>()?,
            ),
            "spki_hash" => CertMatcher::SpkiHash(
                strings
                    .into_iter()
                    .map(|h| {
                        if is_sha256_base64(h) {
                            Ok(h.to_owned())
                        } else {
                            Err(error(&at, format!("{h:?} is not a base64-encoded SHA-256 hash (44 characters ending in `=`)")))
                        }
                    })
                    .collect::<Result<_, _>>()?,
            ),
            other => {
                return Err(error(
                    &at,
                    format!("unknown certificate condition `{other}`; use fingerprint or spki_hash"),
                ));
            }
        });
    }
    Ok(out)
}

/// A SHA-256 fingerprint as 64 lower-case hex digits, from that form or Pomerium's long form
/// (`AB:CD:...`, 32 upper-case bytes).
fn canonical_fingerprint(text: &str) -> Option<String> {
    let short =
        |s: &str| s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if short(text) {
        return Some(text.to_owned());
    }
    let bytes: Vec<&str> = text.split(':').collect();
    let long = bytes.len() == 32
        && bytes
            .iter()
            .all(|b| b.len() == 2 && b.bytes().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')));
    long.then(|| bytes.concat().to_ascii_lowercase())
}

/// Whether `text` is standard base64 of 32 bytes.
fn is_sha256_base64(text: &str) -> bool {
    let alphabet = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    text.len() == 44
        && text.ends_with('=')
        && !text[..43].contains('=')
        && text.bytes().take(43).all(alphabet)
        // The last character before the padding carries 2 unused bits that must be zero.
        && matches!(text.as_bytes()[42], b'A' | b'E' | b'I' | b'M' | b'Q' | b'U' | b'Y' | b'c' | b'g' | b'k' | b'o' | b's' | b'w' | b'0' | b'4' | b'8')
}

fn list_matcher(value: &Value, path: &str) -> Result<Vec<(ListOp, String)>, PolicyError> {
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        Value::Object(ops) => {
            let mut out = Vec::new();
            for (op, arg) in ops {
                let op_path = format!("{path}.{op}");
                let list_op = match op.as_str() {
                    "has" => ListOp::Has,
                    "is" => ListOp::Is,
                    "exclude" => ListOp::Exclude,
                    _ => {
                        return Err(error(
                            &op_path,
                            format!("unknown operator `{op}`; groups take has, is or exclude"),
                        ));
                    }
                };
                let group = scalar(arg).ok_or_else(|| error(&op_path, "expected a string"))?;
                out.push((list_op, group));
            }
            Ok(out)
        }
        Value::Array(items) => items
            .iter()
            .map(|v| {
                scalar(v)
                    .map(|g| (ListOp::Has, g))
                    .ok_or_else(|| error(path, "expected strings"))
            })
            .collect(),
        other => scalar(other)
            .map(|s| vec![(ListOp::Has, s)])
            .ok_or_else(|| error(path, "expected a group or `has: group`")),
    }
}

/// `claim/email`, `claim/groups` and `claim/sub` match the user's own fields when the identity
/// source sent no such claim (local users, providers that keep them out of the ID token):
/// built only when a rule asks, so requests pay nothing for it.
fn own_field(user: &User, name: &str) -> Option<Value> {
    match name {
        "email" if !user.email.is_empty() => Some(Value::String(user.email.clone())),
        "groups" => Some(Value::Array(
            user.groups.iter().cloned().map(Value::String).collect(),
        )),
        "sub" => Some(Value::String(user.id.clone())),
        _ => None,
    }
}

/// Whether a claim (absent, one value, or a list) satisfies every operator: a positive operator
/// (`is`, `in`, `starts_with`, ...) needs one value that matches, a negative one (`not`,
/// `not_in`) needs every value to (an absent claim has no values).
fn claim_matches(claim: Option<&Value>, matcher: &StringMatcher) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    };
    let values: Vec<String> = match claim {
        Some(Value::Array(items)) => items.iter().filter_map(text).collect(),
        Some(value) => text(value).into_iter().collect(),
        None => Vec::new(),
    };
    matcher.0.iter().all(|(op, arg)| {
        let one = StringMatcher(vec![(*op, arg.clone())]);
        match op {
            Op::Not | Op::NotIn => values.iter().all(|v| one.matches(v)),
            _ => values.iter().any(|v| one.matches(v)),
        }
    })
}

impl StringMatcher {
    fn matches(&self, subject: &str) -> bool {
        self.0.iter().all(|(op, arg)| {
            let text = match arg {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let list = || {
                arg.as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
            };
            match op {
                Op::Is => subject == text,
                Op::Not => subject != text,
                Op::In => list().any(|v| v == subject),
                Op::NotIn => !list().any(|v| v == subject),
                Op::StartsWith => subject.starts_with(&text),
                Op::EndsWith => subject.ends_with(&text),
                Op::Contains => subject.contains(&text),
            }
        })
    }
}

/// Evaluates `expr`; records in `hit` the first criterion that made it true.
fn eval(expr: &Expr, input: &Input<'_>, hit: &mut Option<(String, String)>) -> bool {
    match expr {
        Expr::And(items) => {
            let mut first = None;
            for item in items {
                let mut h = None;
                if !eval(item, input, &mut h) {
                    return false;
                }
                first = first.or(h);
            }
            *hit = first;
            true
        }
        Expr::Or(items) => items.iter().any(|item| eval(item, input, hit)),
        Expr::Not(items) => items.iter().all(|item| !eval(item, input, &mut None)),
        Expr::Nor(items) => items.iter().any(|item| !eval(item, input, &mut None)),
        Expr::Criterion { path, name, test } => {
            let result = test_criterion(test, input);
            if result {
                *hit = Some((path.clone(), name.clone()));
            }
            result
        }
    }
}

fn test_criterion(test: &Test, input: &Input<'_>) -> bool {
    let user = input.user;
    match test {
        Test::Accept => true,
        Test::Reject => false,
        Test::AuthenticatedUser => user.is_some(),
        Test::SourceIp(networks) => input
            .source_ip
            .is_some_and(|ip| networks.iter().any(|n| n.contains(ip))),
        Test::CorsPreflight(wanted) => input.preflight == *wanted,
        Test::ClientCertificate(matchers) => input
            .client_certificate
            .filter(|c| c.valid)
            .is_some_and(|cert| {
                matchers.iter().all(|m| match m {
                    CertMatcher::Fingerprint(list) => list.contains(&cert.fingerprint),
                    CertMatcher::SpkiHash(list) => list.contains(&cert.spki_hash),
                })
            }),
        Test::InvalidClientCertificate => !input.client_certificate.is_some_and(|c| c.valid),
        Test::Email(m) => {
            user.is_some_and(|u| !u.email.is_empty() && m.matches(&u.email.to_ascii_lowercase()))
        }
        Test::Domain(m) => user
            .and_then(|u| u.email.rsplit_once('@'))
            .is_some_and(|(_, domain)| m.matches(&domain.to_ascii_lowercase())),
        Test::User(m) => user.is_some_and(|u| m.matches(&u.id)),
        Test::Groups(wanted) => user.is_some_and(|u| {
            wanted.iter().all(|(op, group)| match op {
                ListOp::Has => u.groups.contains(group),
                ListOp::Is => u.groups.len() == 1 && u.groups[0] == *group,
                ListOp::Exclude => !u.groups.contains(group),
            })
        }),
        Test::Claim(name, matcher) => user.is_some_and(|u| match u.claims.get(name) {
            Some(claim) => claim_matches(Some(claim), matcher),
            None => claim_matches(own_field(u, name).as_ref(), matcher),
        }),
        Test::HttpMethod(m) => {
            m.matches(&input.method.to_ascii_uppercase()) || m.matches(input.method)
        }
        Test::HttpPath(m) => m.matches(input.path),
        // Only a tool call can match: other MCP requests (initialize, tools/list) and non-MCP
        // requests never do.
        Test::McpTool(m) => input
            .mcp
            .filter(|r| r.method == "tools/call")
            .and_then(|r| r.tool.as_deref())
            .is_some_and(|tool| m.matches(tool)),
    }
}

#[cfg(test)]
mod tests;
