//! Templates: the copies in `templates/` are built into the binary, and the
//! files in the configured templates folder override them by name, so a fresh
//! install works anywhere and a team can restyle without rebuilding.
//!
//! Layouts are `templates/NAME.mjml`; partials are `templates/partials/NAME.mjml`.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One template source and where it came from (for messages).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub origin: String,
    pub source: String,
}

/// The set of templates a `render::Renderer` is built from.
#[derive(Debug, Clone, Default)]
pub struct Templates {
    pub layouts: Vec<Source>,
    pub partials: Vec<Source>,
}

macro_rules! builtin {
    ($($kind:ident $name:literal => $path:literal),* $(,)?) => {
        &[$((Kind::$kind, $name, concat!("templates/", $path), include_str!(concat!("../templates/", $path)))),*]
    };
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Layout,
    Partial,
}

const BUILTIN: &[(Kind, &str, &str, &str)] = builtin! {
    Layout "ebulletin" => "ebulletin.mjml",
    Partial "header" => "partials/header.mjml",
    Partial "section-heading" => "partials/section-heading.mjml",
    Partial "article" => "partials/article.mjml",
    Partial "footer" => "partials/footer.mjml",
};

impl Templates {
    /// The templates built into the binary.
    pub fn builtin() -> Templates {
        let mut t = Templates::default();
        for (kind, name, origin, source) in BUILTIN {
            t.put(*kind, name, origin.to_string(), source.to_string());
        }
        t
    }

    fn put(&mut self, kind: Kind, name: &str, origin: String, source: String) {
        let list = match kind {
            Kind::Layout => &mut self.layouts,
            Kind::Partial => &mut self.partials,
        };
        let s = Source {
            name: name.to_string(),
            origin,
            source,
        };
        match list.iter_mut().find(|x| x.name == name) {
            Some(existing) => *existing = s,
            None => list.push(s),
        }
    }

    /// Built-in templates overridden by the `.mjml` files in `dir` (a missing
    /// folder means the built-ins alone).
    pub fn load(dir: &Path) -> std::io::Result<Templates> {
        let mut t = Templates::builtin();
        for (kind, sub) in [
            (Kind::Layout, dir.to_path_buf()),
            (Kind::Partial, dir.join("partials")),
        ] {
            for path in mjml_files(&sub)? {
                let name = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .unwrap_or_default()
                    .to_string();
                let source = std::fs::read_to_string(&path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?;
                t.put(kind, &name, path.display().to_string(), source);
            }
        }
        Ok(t)
    }
}

fn mjml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("{}: {e}", dir.display()),
            ));
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mjml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// The newest modification time among `paths` and the templates in `dir`;
/// the preview server re-renders when it changes.
pub fn newest_change(paths: &[&Path], dir: &Path) -> Option<SystemTime> {
    let mut all: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
    all.extend(mjml_files(dir).unwrap_or_default());
    all.extend(mjml_files(&dir.join("partials")).unwrap_or_default());
    all.iter()
        .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_overrides_builtin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("partials")).unwrap();
        std::fs::write(dir.path().join("partials/footer.mjml"), "X").unwrap();
        std::fs::write(dir.path().join("plain.mjml"), "<mjml></mjml>").unwrap();
        let t = Templates::load(dir.path()).unwrap();
        let footer = t.partials.iter().find(|s| s.name == "footer").unwrap();
        assert_eq!(footer.source, "X");
        assert!(t.layouts.iter().any(|s| s.name == "plain"));
        assert!(t.layouts.iter().any(|s| s.name == "ebulletin"));
    }

    #[test]
    fn missing_folder_gives_builtins() {
        let t = Templates::load(Path::new("/nonexistent/templates")).unwrap();
        assert_eq!(t.layouts.len(), 1);
        assert_eq!(t.partials.len(), 4);
    }
}
