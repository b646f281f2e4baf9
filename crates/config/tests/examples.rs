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

/// The YAML blocks with routes in a Markdown text.
fn route_blocks(markdown: &str) -> Vec<String> {
    markdown
        .split("```yaml")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("routes:"))
        .map(|b| b.trim_start_matches('\n').to_owned())
        .collect()
}

#[test]
fn the_seed_readme_route_examples_load() {
    // A copy of the seed README's route examples lives beside this test, so it runs anywhere;
    // where the seed itself is present (../shared, as in CI) the copy must still match it.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/seed-routes");
    let mut copies: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    copies.sort();
    assert_eq!(copies.len(), 3, "the seed shows three route examples");
    if let Ok(seed) = std::fs::read_to_string(root().join("../shared/seed/README.md")) {
        let live = route_blocks(&seed);
        let copied: Vec<String> = copies.iter().map(|(_, text)| text.clone()).collect();
        assert_eq!(
            live, copied,
            "the seed's route examples changed: update tests/seed-routes"
        );
    }
    for (file, block) in copies {
        // The seed's snippets are route lists; give them a listener so they stand alone.
        let yaml = format!("insecure_server: true\n{block}");
        let config = postern_config::parse(&yaml, Path::new("."), &env())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(config.routes.iter().any(|r| r.mcp.is_some()), "{file}");
    }
}

#[test]
fn the_compose_file_mounts_an_example_that_loads_where_the_image_reads_it() {
    let compose = std::fs::read_to_string(root().join("docker-compose.yaml")).unwrap();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let mounts: Vec<_> = compose
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- ./examples/"))
        .collect();
    assert_eq!(mounts.len(), 1, "one configuration mounted: {mounts:?}");
    let (file, target) = mounts[0].split_once(':').unwrap();
    let target = target.trim_end_matches(":ro");
    postern_config::load(&root().join("examples").join(file), &env())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        dockerfile.contains(&format!("\"--config\", \"{target}\"")),
        "the image reads its configuration from {target}"
    );
    // Every secret comes from a Docker secret file, through its NAME_FILE variable.
    for (secret, file) in [
        ("SHARED_SECRET", "shared_secret"),
        ("IDP_CLIENT_SECRET", "idp_client_secret"),
        ("NOTION_CLIENT_SECRET", "notion_client_secret"),
        ("DATABROKER_STORAGE_CONNECTION_STRING", "database_url"),
    ] {
        assert!(
            compose.contains(&format!("{secret}_FILE: /run/secrets/{file}\n")),
            "compose passes {secret} as the Docker secret {file}"
        );
        assert!(
            compose.contains(&format!("  {file}:\n    file: ./secrets/{file}\n")),
            "compose declares the secret {file}"
        );
    }
    assert!(
        !compose.contains("${"),
        "no secret is interpolated into the environment"
    );
    // One image for both services, each with a healthcheck the slim image can run.
    assert_eq!(compose.matches("image: postern:latest").count(), 2);
    assert_eq!(
        compose
            .matches("test: [\"CMD\", \"postern\", \"healthcheck\"")
            .count(),
        2
    );
    // Secrets and local state stay out of the build context and out of git.
    let dockerignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let gitignore = std::fs::read_to_string(root().join(".gitignore")).unwrap();
    for entry in [".env", "secrets", "postern-data"] {
        assert!(
            dockerignore.lines().any(|l| l == entry),
            ".dockerignore lists {entry}"
        );
    }
    assert!(gitignore.lines().any(|l| l == ".env"));
    assert!(gitignore.lines().any(|l| l == "/secrets/"));
}

#[test]
fn the_configurations_in_the_docs_load() {
    let mut loaded = 0;
    for doc in ["README.md", "docs/guides.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for block in route_blocks(&text) {
            // Blocks inside list items are indented: dedent, and give them a listener.
            let indent = block
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            let body: String = block
                .lines()
                .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
                .collect();
            let block = format!("insecure_server: true\n{body}");
            postern_config::parse(&block, &root(), &env())
                .unwrap_or_else(|e| panic!("{doc}: {e}\n{block}"));
            loaded += 1;
        }
    }
    assert!(loaded >= 2, "the docs show configurations, found {loaded}");
}
