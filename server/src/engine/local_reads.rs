//! The local disk as the targets of one dispatch see it. A save that goes
//! to ten replicas is looked at, read and hashed once, not ten times, and
//! every replica receives the same bytes even if the file is rewritten
//! while they plan.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::api::{Content, RelPath};
use super::mapping::{self, LocalKind, Mapping};

/// Files up to this size are kept in memory from planning to sending.
const KEPT_CONTENT: u64 = 64 * 1024;

/// A file's sha256, and its bytes when it is small.
pub(crate) type FileRead = ([u8; 32], Option<Content>);

/// An `io::Error` remembered for the other targets (`io::Error` is not
/// `Clone`): its kind and text are what planning looks at.
type Remembered<T> = Result<T, (ErrorKind, String)>;

/// Either remembers what it looked at (`shared`: a few saved files planned
/// for every target of a mapping) or looks every time (`direct`: a full
/// sync or a folder, whose thousands of files' bytes must not stay alive
/// until the last target has planned).
pub(crate) struct LocalReads {
    memo: Option<Mutex<Memo>>,
}

#[derive(Default)]
struct Memo {
    kinds: HashMap<PathBuf, Remembered<LocalKind>>,
    links: HashMap<PathBuf, Remembered<bool>>,
    files: HashMap<PathBuf, Remembered<FileRead>>,
}

impl LocalReads {
    pub(crate) fn shared() -> LocalReads {
        LocalReads {
            memo: Some(Mutex::default()),
        }
    }

    pub(crate) fn direct() -> LocalReads {
        LocalReads { memo: None }
    }

    /// What is at `path`, links not followed ([`mapping::inspect`]).
    pub(crate) fn inspect(&self, path: &Path) -> std::io::Result<LocalKind> {
        self.remember(|m| &mut m.kinds, path, || mapping::inspect(path))
    }

    /// True when some ancestor of `rel` is a symlink locally: the path would
    /// be reached by following a link, which podloop never does.
    pub(crate) fn through_symlink(&self, m: &Mapping, rel: &RelPath) -> bool {
        rel.ancestors().any(|a| {
            let path = m.local_path(&a);
            let is_link =
                || {
                    Ok(std::fs::symlink_metadata(&path)
                        .is_ok_and(|meta| meta.file_type().is_symlink()))
                };
            self.remember(|m| &mut m.links, &path, is_link)
                .unwrap_or(false)
        })
    }

    /// The file's sha256, and its bytes when it is small (`size` is what
    /// the walk saw; the bytes are what is there now).
    pub(crate) fn read_and_hash(&self, path: &Path, size: u64) -> std::io::Result<FileRead> {
        self.remember(|m| &mut m.files, path, || read_and_hash(path, size))
    }

    /// Looks (outside the lock: a read may take a while) unless another
    /// target already did; the first answer stored is the one all get.
    fn remember<T: Clone>(
        &self,
        table: impl Fn(&mut Memo) -> &mut HashMap<PathBuf, Remembered<T>>,
        path: &Path,
        look: impl FnOnce() -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let unshare = |r: &Remembered<T>| {
            r.clone()
                .map_err(|(kind, text)| std::io::Error::new(kind, text))
        };
        let Some(memo) = &self.memo else {
            return look();
        };
        if let Some(seen) = table(&mut lock(memo)).get(path) {
            return unshare(seen);
        }
        let fresh = look().map_err(|e| (e.kind(), e.to_string()));
        let mut memo = lock(memo);
        unshare(table(&mut memo).entry(path.to_path_buf()).or_insert(fresh))
    }
}

fn lock(memo: &Mutex<Memo>) -> std::sync::MutexGuard<'_, Memo> {
    // A target that panicked while holding it left whole entries or none.
    memo.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read_and_hash(path: &Path, size: u64) -> std::io::Result<FileRead> {
    if size <= KEPT_CONTENT {
        let bytes = std::fs::read(path)?;
        if bytes.len() as u64 <= KEPT_CONTENT {
            let sha = Sha256::digest(&bytes).into();
            return Ok((sha, Some(Content(bytes.into()))));
        }
    }
    Ok((hash_file(path)?, None))
}

fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_reads_answer_every_target_with_the_first_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("main.rs");
        std::fs::write(&file, b"first").unwrap();
        let shared = LocalReads::shared();
        let (first_hash, first) = shared.read_and_hash(&file, 5).unwrap();
        std::fs::write(&file, b"second").unwrap();
        let (again_hash, again) = shared.read_and_hash(&file, 6).unwrap();
        assert_eq!(first_hash, again_hash);
        assert_eq!(&*again.unwrap().0, b"first");
        assert_eq!(&*first.unwrap().0, b"first");
        let (_, direct) = LocalReads::direct().read_and_hash(&file, 6).unwrap();
        assert_eq!(&*direct.unwrap().0, b"second");
    }

    #[test]
    fn a_remembered_error_keeps_its_kind_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone.rs");
        let shared = LocalReads::shared();
        let first = shared.read_and_hash(&gone, 3).unwrap_err();
        std::fs::write(&gone, b"new").unwrap();
        let second = shared.read_and_hash(&gone, 3).unwrap_err();
        assert_eq!(first.kind(), ErrorKind::NotFound);
        assert_eq!(second.kind(), ErrorKind::NotFound);
        assert_eq!(first.to_string(), second.to_string());
    }
}
