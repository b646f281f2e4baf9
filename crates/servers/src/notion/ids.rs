//! Notion ids as users and models give them: with or without dashes, inside a Notion URL, or
//! prefixed `data_source:` as our search results give data sources.

/// What to fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// A page (or something to try as a page first).
    Page(String),
    /// A data source.
    DataSource(String),
}

/// The prefix that marks a data source id in search results.
pub const DATA_SOURCE_PREFIX: &str = "data_source:";

/// Parses an id, a dashed UUID, or a Notion URL (`https://www.notion.so/Title-<32 hex>`,
/// `...?p=<32 hex>`, `https://notion.so/workspace/<32 hex>`).
pub fn parse(input: &str) -> Result<Target, String> {
    let input = input.trim();
    if let Some(rest) = input.strip_prefix(DATA_SOURCE_PREFIX) {
        return uuid_in(rest).map(Target::DataSource);
    }
    let candidate = if input.starts_with("http://") || input.starts_with("https://") {
        let url =
            url::Url::parse(input).map_err(|e| format!("{input:?} is not a valid URL: {e}"))?;
        // `?p=<id>` (a page opened as a peek) wins over the path.
        url.query_pairs()
            .find(|(k, _)| k == "p")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| {
                url.path()
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
    } else {
        input.to_owned()
    };
    uuid_in(&candidate).map(Target::Page)
}

/// The dashed UUID at the end of `s` (the last 32 hex digits, dashes ignored).
fn uuid_in(s: &str) -> Result<String, String> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let tail: String = hex
        .chars()
        .rev()
        .take(32)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if tail.len() != 32 || !tail.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{s:?} is not a Notion id: pass an id from search results, a 32-digit page id (dashes optional) or a Notion page URL"
        ));
    }
    let t = tail.to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &t[0..8],
        &t[8..12],
        &t[12..16],
        &t[16..20],
        &t[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "be633bf1-dfa0-436d-b259-571129a590e5";

    #[test]
    fn accepts_ids_with_or_without_dashes_and_urls() {
        for input in [
            ID,
            "be633bf1dfa0436db259571129a590e5",
            "BE633BF1DFA0436DB259571129A590E5",
            "https://www.notion.so/Bug-bash-be633bf1dfa0436db259571129a590e5",
            "https://www.notion.so/acme/Bug-bash-be633bf1dfa0436db259571129a590e5/",
            "https://www.notion.so/acme/0123456789abcdef0123456789abcdef?p=be633bf1dfa0436db259571129a590e5&pm=s",
            "  be633bf1dfa0436db259571129a590e5\n",
        ] {
            assert_eq!(parse(input), Ok(Target::Page(ID.into())), "{input}");
        }
        assert_eq!(
            parse(&format!("data_source:{ID}")),
            Ok(Target::DataSource(ID.into()))
        );
    }

    #[test]
    fn refuses_what_is_not_an_id() {
        for input in [
            "",
            "hello",
            "https://www.notion.so/Bug-bash",
            "be633bf1dfa0436db259571129a590eZ",
        ] {
            let err = parse(input).unwrap_err();
            assert!(err.contains("Notion"), "{input}: {err}");
        }
    }
}
