//! The configuration reference (`docs/configuration.md`) lists exactly the keys the
//! configuration types accept, section by section. The accepted keys come from the types
//! themselves: an unknown key at each level makes serde name every key it expects.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

/// (section heading in the reference, a configuration with an unknown key at that level).
const LEVELS: [(&str, &str); 8] = [
    ("Top level", "zzz_unknown: 1\n"),
    (
        "Routes",
        "routes:\n  - {from: http://a, to: http://b, zzz_unknown: 1}\n",
    ),
    (
        "`mcp`",
        "routes:\n  - {from: http://a, to: http://b, mcp: {zzz_unknown: 1}}\n",
    ),
    (
        "`mcp.server`",
        "routes:\n  - {from: http://a, to: http://b, mcp: {server: {zzz_unknown: 1}}}\n",
    ),
    (
        "`upstream_oauth2`",
        "routes:\n  - {from: http://a, to: http://b, mcp: {server: {upstream_oauth2: {zzz_unknown: 1}}}}\n",
    ),
    (
        "`endpoint`",
        "routes:\n  - {from: http://a, to: http://b, mcp: {server: {upstream_oauth2: {client_id: a, endpoint: {zzz_unknown: 1}}}}}\n",
    ),
    ("`certificates`", "certificates:\n  - {zzz_unknown: 1}\n"),
    ("`downstream_mtls`", "downstream_mtls: {zzz_unknown: 1}\n"),
];

/// The keys serde lists in its "unknown field" error.
fn accepted_keys(yaml: &str) -> BTreeSet<String> {
    let env: HashMap<String, String> = HashMap::new();
    let error = postern_config::parse(yaml, Path::new("."), &env)
        .expect_err("an unknown key is an error")
        .to_string();
    let expected = error
        .split_once("expected ")
        .unwrap_or_else(|| panic!("no list of expected keys in: {error}"))
        .1;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The keys in the first column of the tables under `## heading`.
fn documented_keys(reference: &str, heading: &str) -> BTreeSet<String> {
    let section = reference
        .split("\n## ")
        .find(|s| s.starts_with(&format!("{heading}\n")))
        .unwrap_or_else(|| panic!("docs/configuration.md has no section `## {heading}`"));
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`'))
        .map(|(key, _)| key.to_owned())
        .collect()
}

#[test]
fn the_reference_lists_every_key_and_nothing_else() {
    let reference = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md"),
    )
    .expect("docs/configuration.md");
    for (heading, yaml) in LEVELS {
        let accepted = accepted_keys(yaml);
        assert!(
            accepted.len() >= 2,
            "{heading}: too few keys found: {accepted:?}"
        );
        let documented = documented_keys(&reference, heading);
        let missing: Vec<_> = accepted.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "docs/configuration.md, section {heading}: undocumented keys {missing:?}, documented keys that do not exist {stale:?}"
        );
    }
}
