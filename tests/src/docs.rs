//! The project's Markdown pages as the docs tests read them: every page in the workspace
//! (outside `target/` and hidden directories), the relative links on it, the anchors it
//! offers, and its fenced YAML examples.
//!
//! Anchors are what GitHub makes of a page: a slug per heading (lowercase, punctuation
//! dropped, spaces as `-`, a repeated slug numbered `-1`, `-2`, ...) and every `id` or `name`
//! of an HTML element on it (the API reference's field anchors).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use pulldown_cmark::{CodeBlockKind, Event, Options, Parser, Tag, TagEnd};

use crate::testenv::workspace_root;

/// The HTML comment that exempts the YAML block after it from being applied: for examples
/// that are deliberately partial (a fragment of a spec). Keep such exemptions rare.
pub const NOT_A_FULL_EXAMPLE: &str = "<!-- not-a-full-example -->";

/// One Markdown page.
pub struct Page {
    /// The path relative to the workspace root.
    pub path: PathBuf,
    /// Links whose destination is inside the repository (no scheme), as written.
    pub links: Vec<Link>,
    /// The anchors a link's `#fragment` can name.
    pub anchors: BTreeSet<String>,
    /// The fenced ```yaml blocks not marked [`NOT_A_FULL_EXAMPLE`].
    pub yaml_examples: Vec<Example>,
}

pub struct Link {
    pub destination: String,
    /// 1-based line of the link.
    pub line: usize,
}

pub struct Example {
    pub yaml: String,
    /// 1-based line of the opening fence.
    pub line: usize,
}

/// Every Markdown page of the workspace, sorted by path.
pub fn pages() -> anyhow::Result<Vec<Page>> {
    let root = workspace_root();
    let mut paths = Vec::new();
    markdown_files(root, &mut paths)?;
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            Ok(parse(relative, &text))
        })
        .collect()
}

fn markdown_files(dir: &Path, found: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || (dir == workspace_root() && name == "target") {
            continue;
        }
        if entry.file_type()?.is_dir() {
            markdown_files(&path, found)?;
        } else if name.ends_with(".md") {
            found.push(path);
        }
    }
    Ok(())
}

/// The links, anchors and YAML examples of one page.
pub fn parse(path: PathBuf, text: &str) -> Page {
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    let mut links = Vec::new();
    let mut anchors = BTreeSet::new();
    let mut slugs = Slugs::default();
    let mut yaml_examples = Vec::new();
    let mut heading: Option<String> = None;
    let mut yaml: Option<(String, usize)> = None;
    let mut exempt_next_block = false;
    let options = Options::ENABLE_TABLES | Options::ENABLE_HEADING_ATTRIBUTES;
    for (event, range) in Parser::new_ext(text, options).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { id, .. }) => {
                if let Some(id) = id {
                    anchors.insert(id.to_string());
                }
                heading = Some(String::new());
            }
            Event::End(TagEnd::Heading(_)) => {
                if let Some(text) = heading.take() {
                    anchors.insert(slugs.next(&text));
                }
            }
            Event::Text(t) | Event::Code(t) => {
                if let Some(heading) = heading.as_mut() {
                    heading.push_str(&t);
                }
                if let Some((yaml, _)) = yaml.as_mut() {
                    yaml.push_str(&t);
                }
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. })
                if is_local(&dest_url) =>
            {
                links.push(Link {
                    destination: dest_url.to_string(),
                    line: line_of(range.start),
                });
            }
            Event::Html(html) | Event::InlineHtml(html) => {
                anchors.extend(html_ids(&html));
                if html.trim() == NOT_A_FULL_EXAMPLE {
                    exempt_next_block = true;
                }
            }
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(info))) => {
                let language = info.split_whitespace().next().unwrap_or_default();
                if matches!(language, "yaml" | "yml") && !exempt_next_block {
                    yaml = Some((String::new(), line_of(range.start)));
                }
                exempt_next_block = false;
            }
            Event::End(TagEnd::CodeBlock) => {
                if let Some((yaml, line)) = yaml.take() {
                    yaml_examples.push(Example { yaml, line });
                }
            }
            Event::Start(Tag::Paragraph | Tag::List(_) | Tag::Table(_) | Tag::BlockQuote(_)) => {
                // A marker applies to the block right after it, not to one further down.
                exempt_next_block = false;
            }
            _ => {}
        }
    }
    Page {
        path,
        links,
        anchors,
        yaml_examples,
    }
}

/// A link into the repository: no scheme (`https:`, `mailto:`) and not protocol-relative.
fn is_local(destination: &str) -> bool {
    let scheme = destination.split_once(':').is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    !scheme && !destination.starts_with("//")
}

/// The `id="..."` and `name="..."` values in a fragment of HTML.
fn html_ids(html: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for attribute in ["id=\"", "name=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            let preceded_by_space = start == 0
                || rest[..start]
                    .chars()
                    .next_back()
                    .is_some_and(char::is_whitespace);
            rest = &rest[start + attribute.len()..];
            let Some(end) = rest.find('"') else { break };
            if preceded_by_space {
                ids.push(rest[..end].to_string());
            }
            rest = &rest[end..];
        }
    }
    ids
}

/// GitHub's heading slugs on one page, numbering repeats as GitHub does.
#[derive(Default)]
struct Slugs {
    seen: BTreeSet<String>,
}

impl Slugs {
    fn next(&mut self, heading: &str) -> String {
        let base = slug(heading);
        let mut candidate = base.clone();
        let mut n = 0;
        while self.seen.contains(&candidate) {
            n += 1;
            candidate = format!("{base}-{n}");
        }
        self.seen.insert(candidate.clone());
        candidate
    }
}

/// GitHub's slug of a heading's text: lowercase, letters, digits, `-` and `_` kept, spaces
/// as `-`, everything else dropped.
pub fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            '-' | '_' => Some(c),
            c if c.is_alphanumeric() => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_follow_github() {
        assert_eq!(
            slug("Integrity: the operator's part"),
            "integrity-the-operators-part"
        );
        assert_eq!(
            slug("`spec.connection` (shared with AuditConsumer)"),
            "specconnection-shared-with-auditconsumer"
        );
        assert_eq!(
            slug("Exit status, health and metrics"),
            "exit-status-health-and-metrics"
        );
        assert_eq!(
            slug("The polls' cost, and the ratios without it"),
            "the-polls-cost-and-the-ratios-without-it"
        );
    }

    #[test]
    fn a_page_offers_numbered_repeats_and_html_ids() {
        let page = parse(
            "x.md".into(),
            "# Events\n\n## Events\n\n| a |\n|---|\n| <a id=\"kind-spec.x\"></a>`x` |\n",
        );
        let anchors: Vec<&str> = page.anchors.iter().map(String::as_str).collect();
        assert_eq!(anchors, ["events", "events-1", "kind-spec.x"]);
    }

    #[test]
    fn links_and_examples_are_found_and_exemptions_apply_to_the_next_block_only() {
        let page = parse(
            "x.md".into(),
            "See [a](other.md#b), [web](https://example.com), [here](#c).\n\n\
             ```yaml\nkind: A\n```\n\n<!-- not-a-full-example -->\n```yaml\nspec: {}\n```\n\n\
             ```yaml\nkind: B\n```\n",
        );
        let links: Vec<&str> = page.links.iter().map(|l| l.destination.as_str()).collect();
        assert_eq!(links, ["other.md#b", "#c"]);
        let examples: Vec<&str> = page.yaml_examples.iter().map(|e| e.yaml.as_str()).collect();
        assert_eq!(examples, ["kind: A\n", "kind: B\n"]);
        assert_eq!(page.yaml_examples[1].line, 12);
    }
}
