//! The documentation is current and its links hold, without any server: the API reference
//! is what the committed CRDs generate, and every relative link and `#anchor` on every
//! Markdown page of the repository (README.md, docs/, and any other) leads somewhere.

use std::path::{Component, Path, PathBuf};

use audit_tests::api_reference;
use audit_tests::docs::{self, Page};
use audit_tests::testenv::workspace_root;

#[test]
fn the_api_reference_is_generated_from_the_committed_crds() -> anyhow::Result<()> {
    let generated = api_reference::generate()?;
    let committed = api_reference::committed().unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from the CRDs in crds/ it is generated from: run `{}`",
        api_reference::PATH,
        api_reference::COMMAND
    );
    Ok(())
}

#[test]
fn every_relative_link_and_anchor_resolves() -> anyhow::Result<()> {
    let pages = docs::pages()?;
    assert!(
        pages.iter().any(|p| p.path == Path::new("README.md")),
        "the README is among the pages read"
    );
    let mut broken = Vec::new();
    for page in &pages {
        for link in &page.links {
            if let Err(why) = resolve(&pages, page, &link.destination) {
                broken.push(format!(
                    "{}:{}: ({}) {why}",
                    page.path.display(),
                    link.line,
                    link.destination
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} broken link(s):\n{}",
        broken.len(),
        broken.join("\n")
    );
    Ok(())
}

/// Whether `destination`, written on `page`, names a file or directory of the repository and,
/// with a `#fragment`, an anchor on that Markdown page.
fn resolve(pages: &[Page], page: &Page, destination: &str) -> Result<(), String> {
    let (target, fragment) = match destination.split_once('#') {
        Some((target, fragment)) => (target, Some(fragment)),
        None => (destination, None),
    };
    let target = target.split_once('?').map_or(target, |(t, _)| t);
    let target_path = if target.is_empty() {
        page.path.clone()
    } else {
        let joined = page.path.parent().unwrap_or(Path::new("")).join(target);
        normalize(&joined).ok_or("leads out of the repository")?
    };
    if !workspace_root().join(&target_path).exists() {
        return Err(format!("{} does not exist", target_path.display()));
    }
    let Some(fragment) = fragment.filter(|f| !f.is_empty()) else {
        return Ok(());
    };
    let target_page = pages
        .iter()
        .find(|p| p.path == target_path)
        .ok_or_else(|| {
            format!(
                "#{fragment} on {}, which is no Markdown page",
                target_path.display()
            )
        })?;
    if target_page.anchors.contains(fragment) {
        Ok(())
    } else {
        Err(format!(
            "{} has no heading or anchor #{fragment}",
            target_path.display()
        ))
    }
}

/// `path` with `.` and `..` resolved; `None` when it climbs above the workspace root.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !normal.pop() {
                    return None;
                }
            }
            Component::Normal(part) => normal.push(part),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(normal)
}
