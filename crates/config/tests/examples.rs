//! Every configuration the project shows users must load: the files under `examples/`, and the
//! route examples of the seed's README (the system Postern keeps compatible with).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Secrets the examples take from the environment.
fn env() -> HashMap<String, String> {
    [
        (
            "SHARED_SECRET",
            "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==",
        ),
        ("IDP_CLIENT_SECRET", "idp-secret"),
        ("NOTION_CLIENT_SECRET", "notion-secret"),
        (
            "DATABROKER_STORAGE_CONNECTION_STRING",
            "postgres://postern:pw@postgres:5432/postern",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn every_example_file_loads() {
    let mut loaded = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            postern_config::load(&path, &env()).unwrap_or_else(|e| panic!("{e}"));
            loaded += 1;
        }
    }
    assert!(
        loaded >= 2,
        "expected the example configurations, found {loaded}"
    );
}

#[test]
fn the_seed_readme_route_examples_load() {
    let readme = root().join("../shared/seed/README.md");
    let Ok(text) = std::fs::read_to_string(&readme) else {
        panic!(
            "{} is missing: the seed README is part of the project's shared files",
            readme.display()
        );
    };
    let blocks: Vec<&str> = text
        .split("```yaml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("routes:"))
        .collect();
    assert!(blocks.len() >= 3, "the seed shows three route examples");
    for block in blocks {
        // The seed's snippets are route lists; give them a listener so they stand alone.
        let yaml = format!("insecure_server: true\n{block}");
        let config = postern_config::parse(&yaml, Path::new("."), &env())
            .unwrap_or_else(|e| panic!("{e}\n{block}"));
        assert!(config.routes.iter().any(|r| r.mcp.is_some()), "{block}");
    }
}
