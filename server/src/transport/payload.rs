//! What one batch sends on stdin: a tar of exactly known length, planned up
//! front (headers in memory, file content named by path) and streamed from
//! disk while it is written, so a 200 MB file never sits in memory.

use std::path::PathBuf;

use tokio::io::AsyncReadExt;

use super::error::TransportError;
use super::tarstream::{self, HeaderKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOp {
    Put { local: PathBuf, executable: bool },
    Symlink { target: Vec<u8> },
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadEntry {
    /// Relative to the remote root; checked by [`check_relative`].
    pub path: Vec<u8>,
    pub op: UploadOp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    /// Absolute folder in the container, never `/`.
    pub remote_root: Vec<u8>,
    pub entries: Vec<UploadEntry>,
    pub reload: Option<String>,
}

#[derive(Debug)]
pub enum Piece {
    Bytes(Vec<u8>),
    File { local: PathBuf, size: u64 },
}

#[derive(Debug, Default)]
pub struct Payload {
    pub pieces: Vec<Piece>,
    pub len: u64,
    /// Entries left out because the local file could not be read.
    pub local_failures: Vec<(Vec<u8>, String)>,
    pub files: usize,
    pub deletes: usize,
}

/// A path inside the mapping: relative, no empty, `.` or `..` segment, no NUL.
/// The engine already guarantees this; checking again here keeps the wall
/// honest, since this is what decides where the container writes.
pub fn check_relative(path: &[u8]) -> Result<(), TransportError> {
    let bad = |reason| {
        Err(TransportError::BadPath {
            path: path.to_vec(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("empty");
    }
    if path[0] == b'/' {
        return bad("absolute");
    }
    if path.contains(&0) {
        return bad("contains a NUL byte");
    }
    for segment in path.split(|b| *b == b'/') {
        match segment {
            b"" => return bad("empty segment"),
            b"." | b".." => return bad("`.` or `..` segment"),
            _ => {}
        }
    }
    Ok(())
}

pub fn check_root(root: &[u8]) -> Result<String, TransportError> {
    let text = std::str::from_utf8(root).map_err(|_| TransportError::BadPath {
        path: root.to_vec(),
        reason: "not UTF-8 (exec arguments must be text)",
    })?;
    if !text.starts_with('/') {
        return Err(TransportError::BadPath {
            path: root.to_vec(),
            reason: "not absolute",
        });
    }
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(TransportError::BadPath {
            path: root.to_vec(),
            reason: "the container's `/` cannot be a sync root",
        });
    }
    if trimmed[1..]
        .split('/')
        .any(|s| s == ".." || s == "." || s.is_empty())
    {
        return Err(TransportError::BadPath {
            path: root.to_vec(),
            reason: "`.`, `..` or empty segment",
        });
    }
    if text.contains('\0') {
        return Err(TransportError::BadPath {
            path: root.to_vec(),
            reason: "contains a NUL byte",
        });
    }
    Ok(trimmed.to_string())
}

/// Plan the tar: `d` (deletes), `f/<path>` members, `z` (completion marker).
/// Local files are stat'ed now; one that cannot be read is left out and
/// reported, the rest still go.
pub fn plan(entries: &[UploadEntry]) -> Result<Payload, TransportError> {
    let mut payload = Payload::default();
    let mut deletes = Vec::new();
    for entry in entries {
        check_relative(&entry.path)?;
        if entry.op == UploadOp::Delete {
            deletes.extend_from_slice(&entry.path);
            deletes.push(0);
            payload.deletes += 1;
        }
    }
    if !deletes.is_empty() {
        payload.push(Piece::Bytes(tarstream::small_file(b"d", &deletes)));
    }
    for entry in entries {
        let mut name = b"f/".to_vec();
        name.extend_from_slice(&entry.path);
        match &entry.op {
            UploadOp::Delete => {}
            UploadOp::Symlink { target } => {
                payload.push(Piece::Bytes(tarstream::member_header(
                    &name,
                    HeaderKind::Symlink,
                    0,
                    target,
                )));
                payload.files += 1;
            }
            UploadOp::Put { local, executable } => {
                let size = match readable_size(local) {
                    Ok(size) => size,
                    Err(reason) => {
                        payload.local_failures.push((entry.path.clone(), reason));
                        continue;
                    }
                };
                let mode = if *executable { 0o755 } else { 0o644 };
                payload.push(Piece::Bytes(tarstream::member_header(
                    &name,
                    HeaderKind::File { mode },
                    size,
                    b"",
                )));
                payload.push(Piece::File {
                    local: local.clone(),
                    size,
                });
                let pad = tarstream::padding(size);
                if pad > 0 {
                    payload.push(Piece::Bytes(vec![0; pad as usize]));
                }
                payload.files += 1;
            }
        }
    }
    payload.push(Piece::Bytes(tarstream::small_file(b"z", b"")));
    payload.push(Piece::Bytes(tarstream::END_OF_ARCHIVE.to_vec()));
    Ok(payload)
}

impl Payload {
    fn push(&mut self, piece: Piece) {
        self.len += match &piece {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { size, .. } => *size,
        };
        self.pieces.push(piece);
    }
}

fn readable_size(local: &std::path::Path) -> Result<u64, String> {
    let file =
        std::fs::File::open(local).map_err(|e| format!("cannot read the local file: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat the local file: {e}"))?;
    if !meta.is_file() {
        return Err("the local path is no longer a regular file".into());
    }
    Ok(meta.len())
}

/// Where the payload goes: an exec's stdin, or a buffer in tests.
pub trait ByteSink: Send {
    fn write(
        &mut self,
        data: &[u8],
    ) -> impl std::future::Future<Output = Result<(), TransportError>> + Send;
}

impl ByteSink for Vec<u8> {
    async fn write(&mut self, data: &[u8]) -> Result<(), TransportError> {
        self.extend_from_slice(data);
        Ok(())
    }
}

impl ByteSink for super::exec::Exec {
    async fn write(&mut self, data: &[u8]) -> Result<(), TransportError> {
        super::exec::Exec::write(self, data).await
    }
}

/// Write every piece. A file that is shorter or longer than when it was
/// planned is an error: the caller aborts the exec, so the container sees a
/// broken stream (and applies nothing), never a mix of old and new content.
pub async fn stream<S: ByteSink>(pieces: &[Piece], sink: &mut S) -> Result<(), TransportError> {
    let mut buffer = vec![0u8; 64 * 1024];
    for piece in pieces {
        match piece {
            Piece::Bytes(bytes) => sink.write(bytes).await?,
            Piece::File { local, size } => {
                let changed = |detail: String| TransportError::LocalChanged {
                    path: local.clone(),
                    detail,
                };
                let mut file = tokio::fs::File::open(local)
                    .await
                    .map_err(|e| changed(format!("cannot open it: {e}")))?;
                let mut left = *size;
                while left > 0 {
                    let want = buffer.len().min(left as usize);
                    let n = file
                        .read(&mut buffer[..want])
                        .await
                        .map_err(|e| changed(format!("read failed: {e}")))?;
                    if n == 0 {
                        return Err(changed(format!("it shrank by {left} bytes")));
                    }
                    sink.write(&buffer[..n]).await?;
                    left -= n as u64;
                }
                let extra = file
                    .read(&mut buffer[..1])
                    .await
                    .map_err(|e| changed(format!("read failed: {e}")))?;
                if extra != 0 {
                    return Err(changed("it grew".into()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_escape_the_root_are_refused() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"./a",
            b"a/.",
            b"a\0b",
        ] {
            assert!(check_relative(bad).is_err(), "{:?}", bad);
        }
        for good in [
            &b"a"[..],
            b"a b/c",
            b"$(touch x)",
            b"\xff\n",
            b"..a",
            b"a..",
        ] {
            assert!(check_relative(good).is_ok(), "{:?}", good);
        }
        assert!(check_root(b"/").is_err());
        assert!(check_root(b"//").is_err());
        assert!(check_root(b"app").is_err());
        assert!(check_root(b"/app/../etc").is_err());
        assert_eq!(check_root(b"/app/src/").unwrap(), "/app/src");
    }
}
