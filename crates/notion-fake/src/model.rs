//! The fake workspace's objects and their Notion JSON shapes (API version 2026-03-11).

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh UUID-shaped id, unique within the process.
fn new_id() -> String {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{n:08x}-0000-4000-8000-{:012x}", n * 7919)
}

/// A plain rich-text array with one text run.
fn rich_text(text: &str) -> Value {
    json!([{
        "type": "text", "text": {"content": text, "link": null},
        "annotations": {"bold": false, "italic": false, "strikethrough": false,
                        "underline": false, "code": false, "color": "default"},
        "plain_text": text, "href": null,
    }])
}

/// A page: standalone (title property named `title`) or a data-source row (title property named
/// after the schema's title column).
#[derive(Clone, Debug)]
pub struct Page {
    /// The page id (dashed UUID).
    pub id: String,
    /// The title text.
    pub title: String,
    /// The name of the title property.
    pub title_property: String,
    /// Extra properties (name → property value JSON).
    pub properties: Vec<(String, Value)>,
    /// The parent object.
    pub parent: Value,
    /// ISO 8601 time of the last edit; search sorts on it.
    pub last_edited_time: String,
    /// The page's blocks.
    pub blocks: Vec<Block>,
    /// What the markdown endpoint returns, when set; otherwise it renders the blocks.
    pub markdown: Option<String>,
    /// Whether the markdown endpoint reports `truncated: true` (and returns only the top level).
    pub markdown_truncated: bool,
}

impl Page {
    /// A standalone page in the workspace.
    pub fn new(title: &str) -> Self {
        Self {
            id: new_id(),
            title: title.to_owned(),
            title_property: "title".into(),
            properties: Vec::new(),
            parent: json!({"type": "workspace", "workspace": true}),
            last_edited_time: "2026-01-01T00:00:00.000Z".into(),
            blocks: Vec::new(),
            markdown: None,
            markdown_truncated: false,
        }
    }

    /// Sets the id.
    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_owned();
        self
    }

    /// Names the title property (database rows: `Name`, `Task`, ...).
    pub fn title_property(mut self, name: &str) -> Self {
        self.title_property = name.to_owned();
        self
    }

    /// Adds a rich-text property.
    pub fn text_property(mut self, name: &str, text: &str) -> Self {
        self.properties.push((
            name.to_owned(),
            json!({"id": format!("p{}", self.properties.len()), "type": "rich_text", "rich_text": rich_text(text)}),
        ));
        self
    }

    /// Sets the last-edited time (ISO 8601).
    pub fn edited(mut self, time: &str) -> Self {
        self.last_edited_time = time.to_owned();
        self
    }

    /// Appends a top-level block.
    pub fn block(mut self, block: Block) -> Self {
        self.blocks.push(block);
        self
    }

    /// Makes the markdown endpoint report `truncated: true` and return only the top level.
    pub fn markdown_truncated(mut self) -> Self {
        self.markdown_truncated = true;
        self
    }

    /// Sets the markdown endpoint's answer.
    pub fn markdown(mut self, markdown: &str) -> Self {
        self.markdown = Some(markdown.to_owned());
        self
    }

    /// The page object as `GET /v1/pages/{id}` returns it.
    pub fn to_json(&self) -> Value {
        let mut properties = serde_json::Map::new();
        properties.insert(
            self.title_property.clone(),
            json!({"id": "title", "type": "title", "title": rich_text(&self.title)}),
        );
        for (name, value) in &self.properties {
            properties.insert(name.clone(), value.clone());
        }
        let slug: String = self.title.split_whitespace().collect::<Vec<_>>().join("-");
        json!({
            "object": "page", "id": self.id,
            "created_time": "2025-12-01T00:00:00.000Z", "last_edited_time": self.last_edited_time,
            "created_by": {"object": "user", "id": "u1"}, "last_edited_by": {"object": "user", "id": "u1"},
            "cover": null, "icon": null, "parent": self.parent, "in_trash": false, "is_locked": false,
            "properties": properties,
            "url": format!("https://www.notion.so/{slug}-{}", self.id.replace('-', "")),
            "public_url": null,
        })
    }

    /// The markdown endpoint's `(markdown, truncated)`.
    pub fn markdown_response(&self) -> (String, bool) {
        if let Some(markdown) = &self.markdown {
            return (markdown.clone(), self.markdown_truncated);
        }
        let mut out = String::new();
        let depth_limit = if self.markdown_truncated {
            0
        } else {
            usize::MAX
        };
        render(&self.blocks, 0, depth_limit, &mut out);
        (out, self.markdown_truncated)
    }
}

fn render(blocks: &[Block], depth: usize, depth_limit: usize, out: &mut String) {
    for block in blocks {
        let indent = "  ".repeat(depth);
        let line = match block.kind.as_str() {
            "heading_1" => format!("# {}", block.text),
            "heading_2" => format!("## {}", block.text),
            "heading_3" => format!("### {}", block.text),
            "bulleted_list_item" => format!("- {}", block.text),
            "toggle" => format!("<details><summary>{}</summary>", block.text),
            _ => block.text.clone(),
        };
        out.push_str(&indent);
        out.push_str(&line);
        out.push('\n');
        if depth < depth_limit {
            render(&block.children, depth + 1, depth_limit, out);
        }
        if block.kind == "toggle" {
            out.push_str(&indent);
            out.push_str("</details>\n");
        }
    }
}

/// A block with optional children (which the API only reveals through `has_children`).
#[derive(Clone, Debug)]
pub struct Block {
    /// The block id.
    pub id: String,
    /// The block type (`paragraph`, `toggle`, ...).
    pub kind: String,
    /// Its text.
    pub text: String,
    /// Nested blocks.
    pub children: Vec<Block>,
    /// Extra fields of the type object (`checked`, `language`, `url`, ...).
    pub extra: Value,
}

impl Block {
    /// A block of type `kind` with `text`.
    pub fn new(kind: &str, text: &str) -> Self {
        Self {
            id: new_id(),
            kind: kind.to_owned(),
            text: text.to_owned(),
            children: Vec::new(),
            extra: json!({}),
        }
    }

    /// A paragraph.
    pub fn paragraph(text: &str) -> Self {
        Self::new("paragraph", text)
    }

    /// A toggle.
    pub fn toggle(text: &str) -> Self {
        Self::new("toggle", text)
    }

    /// A heading of level 1 to 3.
    pub fn heading(level: u8, text: &str) -> Self {
        Self::new(&format!("heading_{level}"), text)
    }

    /// A bulleted list item.
    pub fn bullet(text: &str) -> Self {
        Self::new("bulleted_list_item", text)
    }

    /// A to-do.
    pub fn to_do(text: &str, checked: bool) -> Self {
        let mut block = Self::new("to_do", text);
        block.extra = json!({"checked": checked});
        block
    }

    /// A code block.
    pub fn code(language: &str, text: &str) -> Self {
        let mut block = Self::new("code", text);
        block.extra = json!({"language": language});
        block
    }

    /// A block the API can't represent (e.g. a meeting transcription); its children can't be read.
    pub fn unsupported() -> Self {
        Self::new("unsupported", "")
    }

    /// Appends a child.
    pub fn child(mut self, child: Block) -> Self {
        self.children.push(child);
        self
    }

    /// The block object as `GET /v1/blocks/{id}/children` lists it (children not included).
    pub fn to_json(&self) -> Value {
        let mut body = match self.kind.as_str() {
            "unsupported" | "divider" => json!({}),
            "child_page" => json!({"title": self.text}),
            _ => json!({"rich_text": rich_text(&self.text), "color": "default"}),
        };
        if let (Some(body), Some(extra)) = (body.as_object_mut(), self.extra.as_object()) {
            for (k, v) in extra {
                body.insert(k.clone(), v.clone());
            }
        }
        let has_children = !self.children.is_empty() || self.kind == "unsupported";
        json!({
            "object": "block", "id": self.id, "type": self.kind, self.kind.clone(): body,
            "has_children": has_children, "in_trash": false,
            "created_time": "2025-12-01T00:00:00.000Z", "last_edited_time": "2025-12-01T00:00:00.000Z",
        })
    }
}

/// The children of the block with `id`, searching the tree.
pub(crate) fn find_block<'a>(blocks: &'a [Block], id: &str) -> Option<&'a Vec<Block>> {
    blocks.iter().find_map(|b| {
        if crate::same_id(&b.id, id) && b.kind != "unsupported" {
            Some(&b.children)
        } else {
            find_block(&b.children, id)
        }
    })
}

/// The type of the block with `id`, searching the tree.
pub(crate) fn find_block_kind<'a>(blocks: &'a [Block], id: &str) -> Option<&'a str> {
    blocks.iter().find_map(|b| {
        if crate::same_id(&b.id, id) {
            Some(b.kind.as_str())
        } else {
            find_block_kind(&b.children, id)
        }
    })
}

/// A data source (a database's table) with a schema and rows.
#[derive(Clone, Debug)]
pub struct DataSource {
    /// The data source id.
    pub id: String,
    /// The id of the database that contains it.
    pub database_id: String,
    /// Its title.
    pub title: String,
    /// The name of the schema's title column.
    pub title_column: String,
    /// ISO 8601 time of the last edit.
    pub last_edited_time: String,
    /// The rows (pages).
    pub rows: Vec<Page>,
}

impl DataSource {
    /// A data source whose title column is named `title_column`.
    pub fn new(title: &str, title_column: &str) -> Self {
        Self {
            id: new_id(),
            database_id: new_id(),
            title: title.to_owned(),
            title_column: title_column.to_owned(),
            last_edited_time: "2026-01-01T00:00:00.000Z".into(),
            rows: Vec::new(),
        }
    }

    /// Adds a row titled `title` (its title property named after the title column).
    pub fn row(mut self, row: Page) -> Self {
        self.rows
            .push(row.title_property(&self.title_column.clone()));
        self
    }

    /// The data source object as `GET /v1/data_sources/{id}` and search return it.
    pub fn to_json(&self) -> Value {
        json!({
            "object": "data_source", "id": self.id,
            "title": rich_text(&self.title), "description": [],
            "parent": {"type": "database_id", "database_id": self.database_id},
            "database_parent": {"type": "workspace", "workspace": true},
            "created_time": "2025-12-01T00:00:00.000Z", "last_edited_time": self.last_edited_time,
            "in_trash": false,
            "properties": {
                self.title_column.clone(): {"id": "title", "name": self.title_column, "type": "title", "title": {}},
                "Status": {"id": "s1", "name": "Status", "type": "rich_text", "rich_text": {}},
            },
            "url": format!("https://www.notion.so/{}", self.database_id.replace('-', "")),
        })
    }
}
