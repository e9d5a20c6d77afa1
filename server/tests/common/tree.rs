//! A folder's contents as the transport tests compare them: every file with
//! its bytes and permission bits, every link with its target, every folder.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    File { content: Vec<u8>, mode: u32 },
    Link(Vec<u8>),
    Dir,
}

pub fn file(content: &[u8], mode: u32) -> Node {
    Node::File {
        content: content.to_vec(),
        mode,
    }
}

/// Everything below `root` by path relative to it, without following links;
/// any unreadable entry fails the test.
pub fn tree(root: &Path) -> BTreeMap<Vec<u8>, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, Node>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, Node::Link(target.as_os_str().as_bytes().to_vec()));
            } else if meta.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &path, out);
            } else {
                let content = std::fs::read(&path).unwrap();
                let mode = meta.permissions().mode() & 0o777;
                out.insert(rel, Node::File { content, mode });
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The paths of a tree, shown lossily: a failed comparison of these names
/// the missing or extra entry before the full trees are compared.
pub fn paths(tree: &BTreeMap<Vec<u8>, Node>) -> Vec<String> {
    tree.keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}
