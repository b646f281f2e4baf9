//! Pomerium's regular-expression route keys: `regex` (which paths a route matches) and
//! `regex_rewrite_pattern` with `regex_rewrite_substitution` (the upstream path).
//!
//! Pomerium hands both to Envoy, which uses RE2: `regex` must match the *whole* path (Envoy's
//! `safe_regex` route matcher), and the rewrite replaces every match of its pattern, with `\1`
//! ... `\9` in the substitution for the pattern's groups (RE2's `GlobalReplace`). Here they are
//! compiled once, when the configuration is read, in RE2's ASCII semantics (`\d`, `\w`, `\s`
//! and `(?i)` are ASCII-only, as in RE2), and a pattern whose compiled form is larger than
//! [`SIZE_LIMIT`] is refused: a route table is not the place for a pattern that big, and a
//! reload must not be able to exhaust memory.

use serde::{Deserialize, Deserializer, de::Error as _};

/// Largest compiled program (and lazy DFA cache) one pattern may use, in bytes.
pub const SIZE_LIMIT: usize = 1 << 20;

/// `regex`: a pattern the whole request path must match.
#[derive(Clone, Debug)]
pub struct PathRegex {
    source: String,
    whole: regex::bytes::Regex,
}

impl PathRegex {
    /// Compiles `source`, anchored at both ends (as Envoy's `safe_regex` matches the whole path).
    pub fn new(source: &str) -> Result<Self, String> {
        // Checked alone first: `a)|(b` is invalid, though `^(?:a)|(b)$` would compile.
        compile(source)?;
        let whole = compile(&format!("^(?:{source})$"))?;
        Ok(Self {
            source: source.to_owned(),
            whole,
        })
    }

    /// Whether the whole of `path` matches.
    pub fn is_match(&self, path: &str) -> bool {
        self.whole.is_match(path.as_bytes())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl<'de> Deserialize<'de> for PathRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PathRegex::new(&text).map_err(D::Error::custom)
    }
}

/// `regex_rewrite_pattern`: matched anywhere in the path; every match is replaced.
#[derive(Clone, Debug)]
pub struct RewritePattern {
    regex: regex::bytes::Regex,
}

impl RewritePattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        self.regex.as_str()
    }
}

impl<'de> Deserialize<'de> for RewritePattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        compile(&text)
            .map(|regex| RewritePattern { regex })
            .map_err(D::Error::custom)
    }
}

/// `regex_rewrite_pattern` with its `regex_rewrite_substitution`, ready to apply.
#[derive(Clone, Debug)]
pub struct PathRewrite {
    regex: regex::bytes::Regex,
    template: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Group(usize),
}

impl PathRewrite {
    /// Parses `substitution` for `pattern`: `\0` ... `\9` name the match and its groups (each
    /// must exist in the pattern), `\\` is a backslash, anything else is literal. A `?` or `#`
    /// is refused: the result is a path, and the query is kept as the client sent it.
    pub fn new(pattern: &RewritePattern, substitution: &str) -> Result<Self, String> {
        if substitution.contains(['?', '#']) {
            return Err(format!(
                "{substitution:?} contains '?' or '#': the substitution makes the upstream path only (the request's query is kept as sent)"
            ));
        }
        let groups = pattern.regex.captures_len();
        let mut template = Vec::new();
        let mut text = String::new();
        let mut chars = substitution.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                text.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => text.push('\\'),
                Some(d @ '0'..='9') => {
                    let group = usize::from(d as u8 - b'0');
                    if group >= groups {
                        return Err(format!(
                            "\\{group} names a group the pattern {:?} does not have (it has {})",
                            pattern.as_str(),
                            groups - 1
                        ));
                    }
                    if !text.is_empty() {
                        template.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    template.push(Piece::Group(group));
                }
                other => {
                    return Err(format!(
                        "{substitution:?}: '\\{}' is not a substitution; write \\1 to \\9 for the pattern's groups, \\0 for the whole match, \\\\ for a backslash",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            }
        }
        if !text.is_empty() {
            template.push(Piece::Text(text));
        }
        Ok(Self {
            regex: pattern.regex.clone(),
            template,
        })
    }

    /// `path` with every match of the pattern replaced (unchanged when nothing matches). The
    /// result is not checked here: the gateway refuses one that is not a canonical absolute
    /// path, since groups copy whatever the client sent.
    pub fn apply(&self, path: &str) -> String {
        let replaced =
            self.regex
                .replace_all(path.as_bytes(), |caps: &regex::bytes::Captures<'_>| {
                    let mut out = Vec::new();
                    for piece in &self.template {
                        match piece {
                            Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                            Piece::Group(i) => out
                                .extend_from_slice(caps.get(*i).map_or(&b""[..], |m| m.as_bytes())),
                        }
                    }
                    out
                });
        String::from_utf8_lossy(&replaced).into_owned()
    }
}

/// One pattern, in RE2's ASCII semantics, within [`SIZE_LIMIT`].
fn compile(source: &str) -> Result<regex::bytes::Regex, String> {
    regex::bytes::RegexBuilder::new(source)
        .unicode(false)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(SIZE_LIMIT)
        .nest_limit(100)
        .build()
        .map_err(|error| match error {
            regex::Error::CompiledTooBig(limit) => format!(
                "the regular expression {source:?} is too large once compiled (over {limit} bytes): split the route or simplify the pattern"
            ),
            error => format!(
                "{source:?} is not a valid regular expression (RE2 syntax): {}",
                error.to_string().replace('\n', " ")
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(pattern: &str, substitution: &str) -> Result<PathRewrite, String> {
        PathRewrite::new(
            &RewritePattern {
                regex: compile(pattern)?,
            },
            substitution,
        )
    }

    #[test]
    fn a_path_regex_matches_the_whole_path() {
        let r = PathRegex::new("/api/v[0-9]+").unwrap();
        assert!(r.is_match("/api/v1"));
        assert!(!r.is_match("/api/v1/admin"), "anchored at the end");
        assert!(!r.is_match("/x/api/v1"), "anchored at the start");
        let r = PathRegex::new("a|/ab").unwrap();
        assert!(r.is_match("/ab"), "the anchors hold the whole alternation");
        assert!(!r.is_match("/abc"));
        assert!(
            PathRegex::new("^/(admin|superuser)/.*$")
                .unwrap()
                .is_match("/admin/x")
        );
    }

    #[test]
    fn invalid_and_huge_patterns_are_refused_with_the_reason() {
        let error = PathRegex::new("a)|(b").unwrap_err();
        assert!(error.contains("not a valid regular expression"), "{error}");
        let error = PathRegex::new("/(").unwrap_err();
        assert!(error.contains("not a valid regular expression"), "{error}");
        let error = PathRegex::new("/\\w{1000}{1000}").unwrap_err();
        assert!(error.contains("too large"), "{error}");
    }

    #[test]
    fn classes_are_ascii_as_in_re2() {
        let r = PathRegex::new("/\\w+").unwrap();
        assert!(r.is_match("/abc_1"));
        assert!(!r.is_match("/%C3%A9"));
    }

    #[test]
    fn substitutions_use_re2_group_references() {
        let r = rewrite("^/service/([^/]+)(/.*)$", "\\2/instance/\\1").unwrap();
        assert_eq!(r.apply("/service/foo/v1/api"), "/v1/api/instance/foo");
        assert_eq!(r.apply("/other"), "/other", "no match: unchanged");
        let r = rewrite("/old", "/new").unwrap();
        assert_eq!(
            r.apply("/old/a/old"),
            "/new/a/new",
            "every match is replaced"
        );
        let r = rewrite("x", "\\\\").unwrap();
        assert_eq!(r.apply("/x"), "/\\");
    }

    #[test]
    fn bad_substitutions_are_refused() {
        assert!(
            rewrite("^/(a)$", "/\\2")
                .unwrap_err()
                .contains("does not have")
        );
        assert!(
            rewrite("^/(a)$", "/\\x")
                .unwrap_err()
                .contains("not a substitution")
        );
        assert!(
            rewrite("^/(a)$", "/\\")
                .unwrap_err()
                .contains("not a substitution")
        );
        assert!(rewrite("^/(a)$", "/b?c=1").unwrap_err().contains("query"));
    }
}
