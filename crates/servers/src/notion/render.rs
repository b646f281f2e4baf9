//! Notion objects to text: titles, rich text and block trees as Markdown.

use serde_json::Value;

/// A block and its (already fetched) children.
#[derive(Debug, Default)]
pub struct Node {
    /// The block object.
    pub block: Value,
    /// Its children, in order.
    pub children: Vec<Node>,
    /// Set when the children exist but could not be read.
    pub note: Option<String>,
}

/// The title of a page or data source: the property whose *type* is `title` (database rows name
/// it after their title column), or a data source's `title` array.
pub fn title(object: &Value) -> String {
    let from_properties = object
        .get("properties")
        .and_then(Value::as_object)
        .and_then(|props| {
            props
                .values()
                .find(|p| p.get("type").and_then(Value::as_str) == Some("title"))
        })
        .and_then(|p| p.get("title"))
        .filter(|t| t.is_array());
    let runs = from_properties.or_else(|| object.get("title").filter(|t| t.is_array()));
    let text = runs.map(plain_text).unwrap_or_default();
    if text.trim().is_empty() {
        "Untitled".into()
    } else {
        text
    }
}

/// Concatenated `plain_text` of a rich-text array (no separator: runs split words arbitrarily).
pub fn plain_text(runs: &Value) -> String {
    runs.as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("plain_text").and_then(Value::as_str))
        .collect()
}

/// A rich-text array as inline Markdown (code, bold, italic, strikethrough, links, equations).
pub fn rich_text(runs: &Value) -> String {
    let mut out = String::new();
    for run in runs.as_array().into_iter().flatten() {
        let text = run
            .get("plain_text")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if text.is_empty() {
            continue;
        }
        if run.get("type").and_then(Value::as_str) == Some("equation") {
            out.push_str(&format!("${text}$"));
            continue;
        }
        let flag = |name: &str| {
            run.pointer(&format!("/annotations/{name}"))
                .and_then(Value::as_bool)
                == Some(true)
        };
        let mut piece = text.to_owned();
        if flag("code") {
            piece = format!("`{piece}`");
        }
        // Markdown emphasis must hug the text: keep surrounding spaces outside the markers.
        let (lead, core, trail) = split_spaces(&piece);
        let mut core = core.to_owned();
        if !core.is_empty() {
            if flag("bold") {
                core = format!("**{core}**");
            }
            if flag("italic") {
                core = format!("*{core}*");
            }
            if flag("strikethrough") {
                core = format!("~~{core}~~");
            }
            if let Some(href) = run.get("href").and_then(Value::as_str) {
                core = format!("[{core}]({href})");
            }
        }
        out.push_str(lead);
        out.push_str(&core);
        out.push_str(trail);
    }
    out
}

fn split_spaces(s: &str) -> (&str, &str, &str) {
    let start = s.len() - s.trim_start().len();
    let end = s.trim_end().len().max(start);
    (&s[..start], &s[start..end], &s[end..])
}

/// A Notion page link for an id.
pub fn page_url(id: &str) -> String {
    format!("https://www.notion.so/{}", id.replace('-', ""))
}

/// Renders a block tree as Markdown.
pub fn blocks(nodes: &[Node]) -> String {
    let mut out = String::new();
    render(nodes, 0, &mut out);
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

fn render(nodes: &[Node], indent: usize, out: &mut String) {
    let mut number = 0;
    for node in nodes {
        let kind = node
            .block
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        number = if kind == "numbered_list_item" {
            number + 1
        } else {
            0
        };
        let pad = " ".repeat(indent);
        match kind {
            "table" => table(&node.children, &pad, out),
            "table_of_contents" | "breadcrumb" => {}
            _ => {
                let (line, child_indent, spaced) = layout(node, kind, number, indent);
                if let Some(line) = line {
                    for l in line.lines() {
                        out.push_str(&pad);
                        out.push_str(l);
                        out.push('\n');
                    }
                    if line.is_empty() {
                        out.push('\n');
                    }
                }
                if let Some(note) = &node.note {
                    out.push_str(&format!("{}[{note}]\n", " ".repeat(child_indent)));
                }
                render(&node.children, child_indent, out);
                if spaced && indent == 0 {
                    out.push('\n');
                }
            }
        }
    }
}

/// How a block of type `kind` renders at `indent`: its line (if any), the indent for its
/// children, and whether a blank line follows it at the top level. `number` is its place in a
/// run of numbered list items.
fn layout(node: &Node, kind: &str, number: usize, indent: usize) -> (Option<String>, usize, bool) {
    let body = node.block.get(kind).cloned().unwrap_or(Value::Null);
    let text = rich_text(body.get("rich_text").unwrap_or(&Value::Null));
    match kind {
        "paragraph" => (Some(text), indent + 2, true),
        "heading_1" | "heading_2" | "heading_3" | "heading_4" => {
            let level = kind[8..].parse::<usize>().unwrap_or(1);
            (Some(format!("{} {text}", "#".repeat(level))), indent, true)
        }
        "bulleted_list_item" => (Some(format!("- {text}")), indent + 2, false),
        "numbered_list_item" => (Some(format!("{number}. {text}")), indent + 3, false),
        "to_do" => (Some(to_do(&body, &text)), indent + 2, false),
        "toggle" => (Some(format!("- {text}")), indent + 2, false),
        "quote" => (Some(format!("> {text}")), indent + 2, true),
        "callout" => (Some(callout(&body, &text)), indent + 2, true),
        "code" => (Some(code(&body)), indent, true),
        "equation" => (Some(equation(&body)), indent, true),
        "divider" => (Some("---".into()), indent, true),
        "child_page" => (Some(child_page(node, &body)), indent, true),
        "child_database" => (Some(child_database(&body)), indent, true),
        "image" | "video" | "file" | "pdf" | "audio" => (Some(media(kind, &body)), indent, true),
        "bookmark" | "embed" | "link_preview" => (Some(bookmark(&body)), indent, true),
        "link_to_page" => (Some(link_to_page(&body)), indent, true),
        "column_list" | "column" | "synced_block" | "template" => (None, indent, false),
        "unsupported" => (Some("[unsupported block]".into()), indent, true),
        _ if !text.is_empty() => (Some(text), indent + 2, true),
        other => (Some(format!("[{other} block]")), indent, true),
    }
}

fn to_do(body: &Value, text: &str) -> String {
    let mark = if body.get("checked").and_then(Value::as_bool) == Some(true) {
        "x"
    } else {
        " "
    };
    format!("- [{mark}] {text}")
}

fn callout(body: &Value, text: &str) -> String {
    let icon = body
        .pointer("/icon/emoji")
        .and_then(Value::as_str)
        .map(|e| format!("{e} "))
        .unwrap_or_default();
    format!("> {icon}{text}")
}

fn code(body: &Value) -> String {
    let lang = body.get("language").and_then(Value::as_str).unwrap_or("");
    let code = plain_text(body.get("rich_text").unwrap_or(&Value::Null));
    format!("```{lang}\n{code}\n```")
}

fn equation(body: &Value) -> String {
    let expr = body.get("expression").and_then(Value::as_str).unwrap_or("");
    format!("$$\n{expr}\n$$")
}

fn child_page(node: &Node, body: &Value) -> String {
    let title = body
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("Untitled");
    let id = node.block.get("id").and_then(Value::as_str).unwrap_or("");
    format!("[Subpage: {title}]({})", page_url(id))
}

fn child_database(body: &Value) -> String {
    let title = body
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("Untitled");
    format!("[Database: {title}]")
}

/// An image, video, file, PDF or audio block: a link labelled with its kind and caption.
fn media(kind: &str, body: &Value) -> String {
    let url = body
        .pointer("/external/url")
        .or_else(|| body.pointer("/file/url"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let caption = plain_text(body.get("caption").unwrap_or(&Value::Null));
    let label = if caption.is_empty() {
        kind.to_owned()
    } else {
        format!("{kind}: {caption}")
    };
    format!("[{label}]({url})")
}

/// A bookmark, embed or link preview: a link labelled with its caption, or its URL.
fn bookmark(body: &Value) -> String {
    let url = body.get("url").and_then(Value::as_str).unwrap_or("");
    let caption = plain_text(body.get("caption").unwrap_or(&Value::Null));
    let label = if caption.is_empty() {
        url.to_owned()
    } else {
        caption
    };
    format!("[{label}]({url})")
}

fn link_to_page(body: &Value) -> String {
    let id = body
        .get("page_id")
        .or_else(|| body.get("database_id"))
        .and_then(Value::as_str)
        .unwrap_or("");
    format!("[Linked page]({})", page_url(id))
}

fn table(rows: &[Node], pad: &str, out: &mut String) {
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .block
            .pointer("/table_row/cells")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| rich_text(c).replace('|', "\\|"))
            .collect();
        out.push_str(&format!("{pad}| {} |\n", cells.join(" | ")));
        if i == 0 {
            out.push_str(&format!("{pad}|{}\n", " --- |".repeat(cells.len().max(1))));
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(text: &str, annotations: Value, href: Option<&str>) -> Value {
        json!({"type": "text", "plain_text": text, "annotations": annotations, "href": href})
    }

    fn block(kind: &str, text: &str) -> Value {
        json!({"type": kind, "id": "b", kind: {"rich_text": [run(text, json!({}), None)]}})
    }

    #[test]
    fn titles_come_from_the_property_of_type_title() {
        let row = json!({"properties": {
            "Status": {"type": "rich_text", "rich_text": []},
            "Task": {"id": "title", "type": "title", "title": [
                {"plain_text": "Fix the "}, {"plain_text": "bug"}]},
        }});
        assert_eq!(title(&row), "Fix the bug");
        assert_eq!(
            title(&json!({"title": [{"plain_text": "Tasks DB"}]})),
            "Tasks DB"
        );
        assert_eq!(title(&json!({"object": "page", "id": "x"})), "Untitled");
    }

    #[test]
    fn rich_text_keeps_emphasis_links_and_spacing() {
        let runs = json!([
            run("Read ", json!({}), None),
            run("the docs ", json!({"bold": true}), Some("https://x.test")),
            run("now", json!({"code": true}), None),
        ]);
        assert_eq!(
            rich_text(&runs),
            "Read [**the docs**](https://x.test) `now`"
        );
    }

    #[test]
    fn nested_blocks_are_indented_under_their_parents() {
        let tree = vec![
            Node {
                block: block("heading_1", "Plan"),
                ..Node::default()
            },
            Node {
                block: block("toggle", "Details"),
                children: vec![Node {
                    block: block("bulleted_list_item", "hidden step"),
                    children: vec![Node {
                        block: block("to_do", "deep task"),
                        ..Node::default()
                    }],
                    note: None,
                }],
                note: None,
            },
            Node {
                block: block("numbered_list_item", "one"),
                ..Node::default()
            },
            Node {
                block: block("numbered_list_item", "two"),
                ..Node::default()
            },
        ];
        assert_eq!(
            blocks(&tree),
            "# Plan\n\n- Details\n  - hidden step\n    - [ ] deep task\n1. one\n2. two\n"
        );
    }
}
