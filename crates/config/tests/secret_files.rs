//! Secrets from files named by `NAME_FILE` environment variables (Docker secrets), for the
//! upper-case variable of a top-level key and for a `${NAME}` a value refers to.

use std::collections::HashMap;
use std::path::Path;

const ROUTE: &str = "routes:
  - from: https://notion.example.com
    to: http://servers:8080/notion
    allow_any_authenticated_user: true
    mcp:
      server:
        upstream_oauth2:
          client_id: abc
          client_secret: ${NOTION_CLIENT_SECRET}
          endpoint: {auth_url: 'https://api.notion.com/v1/oauth/authorize', token_url: 'https://api.notion.com/v1/oauth/token'}
";

#[test]
fn name_file_variables_give_secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    // A password with `/` and `+` (base64) survives: the key=value form needs no escaping.
    let database = "host=postgres user=postern dbname=postern password='a/b+c=='";
    let env: HashMap<String, String> = [
        (
            "SHARED_SECRET_FILE",
            write(
                "shared",
                "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA==\n",
            ),
        ),
        (
            "DATABROKER_STORAGE_CONNECTION_STRING_FILE",
            write("database", &format!("{database}\n")),
        ),
        (
            "NOTION_CLIENT_SECRET_FILE",
            write("notion", "notion-secret"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let yaml = format!("insecure_server: true\ndatabroker_storage_type: postgres\n{ROUTE}");
    let config = postern_config::parse(&yaml, Path::new("."), &env).unwrap();
    assert_eq!(
        config.shared_secret.as_ref().unwrap().expose(),
        "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="
    );
    assert_eq!(
        config
            .databroker_storage_connection_string
            .as_ref()
            .unwrap()
            .expose(),
        database
    );
    let text = format!("{config:?}");
    assert!(
        !text.contains("notion-secret") && !text.contains("a/b+c"),
        "secrets stay redacted"
    );

    // The variable itself wins over its file.
    let mut both = env.clone();
    both.insert("NOTION_CLIENT_SECRET".into(), "from-env".into());
    postern_config::parse(&yaml, Path::new("."), &both).unwrap();

    // A file that cannot be read is an error naming the variable, not a missing secret.
    let mut missing = env.clone();
    missing.insert(
        "NOTION_CLIENT_SECRET_FILE".into(),
        "/nonexistent/notion".into(),
    );
    let error = postern_config::parse(&yaml, Path::new("."), &missing)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("NOTION_CLIENT_SECRET_FILE names /nonexistent/notion"),
        "{error}"
    );
}
