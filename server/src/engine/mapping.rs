//! Local path -> (mapping, [`RelPath`]), excludes, and walking a mapping.
//!
//! The one rule that matters: nothing produced here can name a place
//! outside the mapping's `remote` folder. A [`RelPath`] has no `..`, `.`,
//! empty or absolute segment, and links that would escape the mapping
//! locally are never followed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};
use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::api::RelPath;
use super::config::{MappingConfig, OnConflict};

/// Folders of version-control systems: never synced, never deleted.
const VCS_FOLDERS: &[&[u8]] = &[b".git", b".hg", b".svn", b".jj", b".bzr", b"_darcs"];

impl RelPath {
    /// Builds a RelPath from path components; `None` for anything that is
    /// empty, absolute, or steps outside with `..`.
    pub fn from_relative(path: &Path) -> Option<RelPath> {
        let mut out = Vec::new();
        for component in path.components() {
            match component {
                Component::Normal(name) => {
                    let bytes = name.as_bytes();
                    if bytes.is_empty() || bytes.contains(&0) || bytes.contains(&b'/') {
                        return None;
                    }
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(bytes);
                }
                Component::CurDir => {}
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
            }
        }
        (!out.is_empty()).then_some(RelPath(out))
    }

    pub fn segments(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|b| *b == b'/')
    }

    /// Every proper ancestor, shallowest first (`a`, `a/b` for `a/b/c`).
    pub fn ancestors(&self) -> impl Iterator<Item = RelPath> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'/')
            .map(|(i, _)| RelPath(self.0[..i].to_vec()))
    }

    pub fn join(&self, name: &[u8]) -> Option<RelPath> {
        let mut p = self.0.clone();
        p.push(b'/');
        p.extend_from_slice(name);
        RelPath::from_relative(Path::new(OsStr::from_bytes(&p)))
    }

    pub fn is_within(&self, ancestor: &RelPath) -> bool {
        self.0 == ancestor.0
            || (self.0.starts_with(&ancestor.0) && self.0.get(ancestor.0.len()) == Some(&b'/'))
    }

    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    pub fn display(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// What is on the local disk at a mapped path, without following links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalKind {
    File {
        size: u64,
        /// Permission bits (`0o7777`).
        mode: u32,
    },
    Symlink(Vec<u8>),
    Dir,
    Missing,
    /// FIFOs, sockets, devices: never synced.
    Other,
}

#[derive(Debug)]
pub struct Mapping {
    pub name: String,
    pub local: PathBuf,
    pub remote: Vec<u8>,
    pub reload: Option<String>,
    pub on_conflict: OnConflict,
    /// Whether warm sessions may run the container agent (`agent` in
    /// podloop.toml).
    pub agent: bool,
    pub max_file_size: u64,
    pub config_file: PathBuf,
    pub config_line: u32,
    excludes: GlobSet,
    /// Deepest first: the first that has an opinion decides.
    gitignores: Vec<Gitignore>,
}

impl Mapping {
    pub fn new(cfg: &MappingConfig, config_file: &Path, max_file_size: u64) -> Mapping {
        let mut builder = GlobSetBuilder::new();
        for pattern in &cfg.exclude {
            // `dist/**` should also cover the folder `dist` itself, or a
            // delete of the folder would remove excluded files remotely.
            let bases = [pattern.as_str(), pattern.trim_end_matches("/**")];
            for p in bases {
                if let Ok(glob) = Glob::new(p.trim_start_matches('/')) {
                    builder.add(glob);
                }
            }
        }
        let excludes = builder.build().unwrap_or_else(|_| GlobSet::empty());
        Mapping {
            name: cfg.name.clone(),
            local: cfg.local.clone(),
            remote: cfg.remote.as_bytes().to_vec(),
            reload: cfg.reload.clone(),
            on_conflict: cfg.on_conflict,
            agent: cfg.agent,
            max_file_size,
            config_file: config_file.to_path_buf(),
            config_line: cfg.line,
            excludes,
            gitignores: load_gitignores(&cfg.local),
        }
    }

    /// `None` when `path` is not inside this mapping (or is its root).
    pub fn relative(&self, path: &Path) -> Option<RelPath> {
        let rest = path.strip_prefix(&self.local).ok()?;
        RelPath::from_relative(rest)
    }

    pub fn local_path(&self, rel: &RelPath) -> PathBuf {
        self.local.join(rel.as_path())
    }

    pub fn remote_display(&self, rel: &RelPath) -> String {
        format!(
            "{}/{}",
            String::from_utf8_lossy(&self.remote),
            rel.display()
        )
    }

    /// Excluded by VCS folder, `exclude` globs or `.gitignore`, for the path
    /// itself or any of its ancestors.
    pub fn is_excluded(&self, rel: &RelPath, is_dir: bool) -> bool {
        if rel.segments().any(|s| VCS_FOLDERS.contains(&s)) {
            return true;
        }
        if self.excludes.is_match(rel.as_path())
            || rel.ancestors().any(|a| self.excludes.is_match(a.as_path()))
        {
            return true;
        }
        let full = self.local_path(rel);
        for gi in &self.gitignores {
            // A nested .gitignore only speaks for its own folder (and the
            // matcher panics on paths outside it).
            if !full.starts_with(gi.path()) {
                continue;
            }
            let m = gi.matched_path_or_any_parents(&full, is_dir);
            if m.is_ignore() {
                return true;
            }
            if m.is_whitelist() {
                return false;
            }
        }
        false
    }

    /// Every file and link under `under` (or the whole mapping), excluded
    /// paths pruned, links not followed, empty folders omitted.
    pub fn walk(&self, under: Option<&RelPath>) -> Vec<(RelPath, LocalKind)> {
        let mut out = Vec::new();
        let mut stack: Vec<Option<RelPath>> = vec![under.cloned()];
        while let Some(dir) = stack.pop() {
            let folder = match &dir {
                Some(rel) => self.local_path(rel),
                None => self.local.clone(),
            };
            let Ok(read) = std::fs::read_dir(&folder) else {
                continue;
            };
            for entry in read.flatten() {
                let name = entry.file_name();
                let rel = match &dir {
                    Some(parent) => parent.join(name.as_bytes()),
                    None => RelPath::from_relative(Path::new(&name)),
                };
                let Some(rel) = rel else { continue };
                let Ok(kind) = inspect(&entry.path()) else {
                    continue;
                };
                let is_dir = kind == LocalKind::Dir;
                if self.is_excluded(&rel, is_dir) {
                    continue;
                }
                match kind {
                    LocalKind::Dir => stack.push(Some(rel)),
                    LocalKind::File { .. } | LocalKind::Symlink(_) => out.push((rel, kind)),
                    LocalKind::Missing | LocalKind::Other => {}
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

pub fn inspect(path: &Path) -> std::io::Result<LocalKind> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LocalKind::Missing),
        // A path whose parent became a file: as good as gone.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(LocalKind::Missing),
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    Ok(if ft.is_symlink() {
        LocalKind::Symlink(std::fs::read_link(path)?.as_os_str().as_bytes().to_vec())
    } else if ft.is_dir() {
        LocalKind::Dir
    } else if ft.is_file() {
        LocalKind::File {
            size: meta.len(),
            mode: meta.permissions().mode() & 0o7777,
        }
    } else {
        LocalKind::Other
    })
}

/// A link at `link` pointing to `target` escapes the mapping when it is
/// absolute or climbs above the mapping's root.
pub fn link_escapes(link: &RelPath, target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") || target.contains(&0) {
        return true;
    }
    let mut depth = link.segments().count() as i64 - 1;
    for seg in target.split(|b| *b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn load_gitignores(local: &Path) -> Vec<Gitignore> {
    let mut found = Vec::new();
    // Nested .gitignore files inside the mapping, deepest first...
    let walker = ignore::WalkBuilder::new(local)
        .hidden(false)
        .follow_links(false)
        .filter_entry(|e| !VCS_FOLDERS.contains(&e.file_name().as_bytes()))
        .build();
    let mut nested: Vec<PathBuf> = walker
        .flatten()
        .filter(|e| e.file_name() == ".gitignore")
        .map(|e| e.into_path())
        .collect();
    nested.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    // ...then those of enclosing folders up to the repository root.
    let mut ancestors = Vec::new();
    for dir in local.ancestors().skip(1) {
        let candidate = dir.join(".gitignore");
        if candidate.is_file() {
            ancestors.push(candidate);
        }
        if dir.join(".git").exists() {
            break;
        }
    }
    for file in nested.into_iter().chain(ancestors) {
        let Some(dir) = file.parent() else { continue };
        let mut builder = GitignoreBuilder::new(dir);
        if builder.add(&file).is_none() {
            if let Ok(gi) = builder.build() {
                found.push(gi);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::config::{OnConflict, PodsMode};
    use crate::engine::PodSelector;
    use proptest::prelude::*;

    fn mapping(local: &Path, exclude: &[&str]) -> Mapping {
        let cfg = MappingConfig {
            name: "m".into(),
            local: local.to_path_buf(),
            remote: "/app".into(),
            selector: PodSelector::Labels("a=b".into()),
            container: None,
            namespace: None,
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            reload: None,
            on_conflict: OnConflict::Overwrite,
            pods: PodsMode::All,
            agent: true,
            line: 0,
        };
        Mapping::new(&cfg, &local.join("podloop.toml"), 100)
    }

    fn rel(s: &str) -> RelPath {
        RelPath::from_relative(Path::new(s)).unwrap()
    }

    #[test]
    fn relative_rejects_escapes() {
        let m = mapping(Path::new("/w/src"), &[]);
        assert_eq!(m.relative(Path::new("/w/src/a/b.rs")), Some(rel("a/b.rs")));
        assert_eq!(m.relative(Path::new("/w/src")), None);
        assert_eq!(m.relative(Path::new("/w/srcx/a")), None);
        assert_eq!(m.relative(Path::new("/w/src/../etc/passwd")), None);
        assert_eq!(m.relative(Path::new("/w/src/./a")), Some(rel("a")));
    }

    #[test]
    fn excludes_vcs_globs_and_gitignore() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".gitignore"), "target/\n*.tmp\n!keep.tmp\n").unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/.gitignore"), "secret.txt\n").unwrap();
        let m = mapping(dir.path(), &["node_modules/**", "*.log", "dist/**"]);
        assert!(m.is_excluded(&rel(".git/config"), false));
        assert!(m.is_excluded(&rel("a/.hg/x"), false));
        assert!(m.is_excluded(&rel("node_modules/x/y.js"), false));
        assert!(m.is_excluded(&rel("deep/a.log"), false));
        assert!(m.is_excluded(&rel("dist"), true));
        assert!(m.is_excluded(&rel("target/debug/x"), false));
        assert!(m.is_excluded(&rel("x.tmp"), false));
        assert!(!m.is_excluded(&rel("keep.tmp"), false));
        assert!(m.is_excluded(&rel("sub/secret.txt"), false));
        assert!(!m.is_excluded(&rel("secret.txt"), false));
        assert!(!m.is_excluded(&rel("src/main.rs"), false));
    }

    #[test]
    fn escaping_links_detected() {
        assert!(link_escapes(&rel("a"), b"/etc/passwd"));
        assert!(link_escapes(&rel("a"), b"../x"));
        assert!(link_escapes(&rel("d/a"), b"../../x"));
        assert!(!link_escapes(&rel("d/a"), b"../x"));
        assert!(!link_escapes(&rel("a"), b"b/c"));
        assert!(link_escapes(&rel("a"), b"b/../../c"));
    }

    #[test]
    fn walk_prunes_excluded_and_does_not_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("node_modules/x")).unwrap();
        std::fs::write(root.join("a/b/c.txt"), "c").unwrap();
        std::fs::write(root.join("node_modules/x/i.js"), "i").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        let m = mapping(root, &["node_modules/**"]);
        let names: Vec<String> = m.walk(None).iter().map(|(r, _)| r.display()).collect();
        assert_eq!(names, vec!["a/b/c.txt", "etc-link"]);
        let reads = crate::engine::local_reads::LocalReads::direct();
        assert!(reads.through_symlink(&m, &rel("etc-link/passwd")));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("..".to_string()),
            Just(".".to_string()),
            Just("".to_string()),
            Just("/".to_string()),
            "[a-z. \\n$()]{1,6}",
        ]
    }

    proptest! {
        #[test]
        fn relpaths_never_escape(segments in proptest::collection::vec(segment(), 0..8), raw in proptest::collection::vec(any::<u8>(), 0..24)) {
            let joined = segments.join("/");
            let m = mapping(Path::new("/w/src"), &[]);
            for candidate in [PathBuf::from(&joined), PathBuf::from("/w/src").join(&joined), PathBuf::from(OsStr::from_bytes(&raw))] {
                let results = [RelPath::from_relative(&candidate), m.relative(&candidate)];
                for r in results.into_iter().flatten() {
                    prop_assert!(!r.as_bytes().is_empty());
                    prop_assert!(!r.as_bytes().starts_with(b"/"));
                    prop_assert!(!r.as_bytes().contains(&0));
                    for s in r.segments() {
                        prop_assert!(!s.is_empty() && s != b"." && s != b"..", "bad segment in {:?}", r);
                    }
                }
            }
        }
    }
}
