//! What one batch sends on stdin: a tar of exactly known length, planned up
//! front (headers in memory, file content named by path) and streamed from
//! disk while it is written, so a 200 MB file never sits in memory.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use super::error::TransportError;
use super::remote;
use super::tarstream::{self, HeaderKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOp {
    /// `mode`: permission bits (`0o7777`) for the tar header.
    Put {
        local: PathBuf,
        mode: u32,
        /// Check the container's copy before replacing it (conflicts).
        expect: Option<Expect>,
        /// The bytes to send, when the caller already read them (the
        /// engine does for small files: they are what it hashed); `None`:
        /// read `local` now.
        content: Option<Arc<[u8]>>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// `expect`: a file podloop wrote; checked like a `Put`'s.
    Delete {
        expect: Option<Expect>,
    },
}

/// What podloop believes the container holds at a path it is about to
/// replace. A container holding something else changed it behind podloop's
/// back: the scripts report it, and leave it when `skip_if_changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The sha256 podloop last wrote there; `None`: nothing should be there.
    pub held: Option<[u8; 32]>,
    /// The sha256 about to be written (`None`: the path is being deleted):
    /// a container that already holds it has no conflict.
    pub new: Option<[u8; 32]>,
    pub skip_if_changed: bool,
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
    /// Whether a new warm session may be upgraded to the container agent
    /// (`agent` in podloop.toml); false also retires an agent session.
    pub agent: bool,
}

#[derive(Debug)]
pub enum Piece {
    Bytes(Vec<u8>),
    /// A file's bytes read while planning: sent as they are, not read again.
    Shared(Arc<[u8]>),
    File {
        local: PathBuf,
        size: u64,
    },
}

#[derive(Debug, Default)]
pub struct Payload {
    /// Written into the completion marker `z`; the remote script applies the
    /// batch only when `z` holds exactly this.
    pub nonce: String,
    /// When set, the pieces are this one file's raw bytes, no tar: the
    /// session's one-file fast path (`remote::PUT_ONE`).
    pub single_file: Option<Vec<u8>>,
    /// The conflict check of that one file.
    pub single_expect: Option<Expect>,
    /// The files of a tar batch whose container copy is checked, in the
    /// order of the `n` list.
    pub checks: Vec<(Vec<u8>, Expect)>,
    pub pieces: Vec<Piece>,
    pub len: u64,
    /// Entries left out because the local file could not be read.
    pub local_failures: Vec<(Vec<u8>, String)>,
    pub files: usize,
    pub deletes: usize,
}

/// 16 random hex digits: marks the end of one batch (or request) so that no
/// file name or content can forge it.
pub fn new_nonce() -> String {
    format!("{:016x}", rand::random::<u64>())
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

/// Records of the list file longer than this are split (same letter, same
/// folder), so one `mv` or `rm` never meets the kernel's argument limit.
const RECORD_LIMIT: usize = 32 * 1024;

/// Files up to this size are read while planning and sent from memory: one
/// read instead of three blocking-pool round trips per file while streaming.
const INLINE_FILE: u64 = 64 * 1024;

/// At most this much file content is held in memory per batch.
const INLINE_BUDGET: u64 = 16 * 1024 * 1024;

/// Plan the tar (see `remote::APPLY`): under `.podloop-stage-NONCE/`, `l`
/// (the list: deletes, then one `mv` per folder), `f/<path>` members, and
/// `z` holding the fresh nonce (the completion marker). Local files are stat'ed now (small ones read now); one
/// that cannot be read is left out and reported, the rest still go.
pub fn plan(entries: &[UploadEntry]) -> Result<Payload, TransportError> {
    let mut payload = Payload {
        nonce: new_nonce(),
        ..Payload::default()
    };
    // Under `on_conflict = "skip"` the container's `v` loop deletes the
    // files it checks itself (it may have to keep one); otherwise deletes go
    // in the list `l` and are only reported.
    let skip_mode = entries.iter().any(|e| match &e.op {
        UploadOp::Put { expect, .. } | UploadOp::Delete { expect } => {
            expect.is_some_and(|x| x.skip_if_changed)
        }
        UploadOp::Symlink { .. } => false,
    });
    let mut deletes: Vec<&[u8]> = Vec::new();
    for entry in entries {
        check_relative(&entry.path)?;
        if let UploadOp::Delete { expect } = &entry.op {
            payload.deletes += 1;
            if let Some(expect) = expect {
                payload.checks.push((entry.path.clone(), *expect));
                if skip_mode {
                    continue;
                }
            }
            deletes.push(&entry.path);
        }
    }
    let mut members = Vec::new();
    // Folder -> names moved into it, in first-seen order of folders.
    let mut moves: Vec<(&[u8], Vec<&[u8]>)> = Vec::new();
    let mut folder_index: std::collections::HashMap<&[u8], usize> = Default::default();
    let mut inline_left = INLINE_BUDGET;
    let stage = format!(".podloop-stage-{}/", payload.nonce).into_bytes();
    let member = |name: &[u8]| -> Vec<u8> { [&stage[..], name].concat() };
    for entry in entries {
        let name = member(&[&b"f/"[..], &entry.path].concat());
        match &entry.op {
            UploadOp::Delete { .. } => continue,
            UploadOp::Symlink { target } => {
                members.push(Piece::Bytes(tarstream::member_header(
                    &name,
                    HeaderKind::Symlink,
                    0,
                    target,
                )));
            }
            UploadOp::Put {
                local,
                mode,
                expect,
                content,
            } => {
                if let Some(expect) = expect {
                    payload.checks.push((entry.path.clone(), *expect));
                }
                let mode = *mode;
                let content = match local_piece(local, content, &mut inline_left) {
                    Ok(content) => content,
                    Err(reason) => {
                        payload.local_failures.push((entry.path.clone(), reason));
                        continue;
                    }
                };
                let size = content.len();
                let mut header =
                    tarstream::member_header(&name, HeaderKind::File { mode }, size, b"");
                let pad = tarstream::padding(size) as usize;
                if let Some(bytes) = content.in_memory() {
                    header.extend_from_slice(bytes);
                    header.resize(header.len() + pad, 0);
                    members.push(Piece::Bytes(header));
                } else {
                    members.push(Piece::Bytes(header));
                    members.push(content);
                    if pad > 0 {
                        members.push(Piece::Bytes(vec![0; pad]));
                    }
                }
            }
        }
        payload.files += 1;
        let (folder, base) = match entry.path.iter().rposition(|b| *b == b'/') {
            Some(at) => (&entry.path[..at], &entry.path[at + 1..]),
            None => (&b""[..], &entry.path[..]),
        };
        let index = *folder_index.entry(folder).or_insert_with(|| {
            moves.push((folder, Vec::new()));
            moves.len() - 1
        });
        moves[index].1.push(base);
    }
    let mut list = Vec::new();
    push_records(&mut list, b'D', None, &deletes);
    for (folder, names) in &moves {
        push_records(&mut list, b'M', Some(folder), names);
    }
    payload.push(Piece::Bytes(tarstream::small_file(&member(b"l"), &list)));
    if let Some((name, list)) = check_list(&payload.checks) {
        payload.push(Piece::Bytes(tarstream::small_file(&member(name), &list)));
    }
    for member in members {
        payload.push(member);
    }
    let marker = format!("{}\n", payload.nonce);
    payload.push(Piece::Bytes(tarstream::small_file(
        &member(b"z"),
        marker.as_bytes(),
    )));
    payload.push(Piece::Bytes(tarstream::END_OF_ARCHIVE.to_vec()));
    Ok(payload)
}

/// The conflict check of a tar batch (see `remote::APPLY`). With
/// `on_conflict = "skip"` the container decides, so it gets `v`: one
/// `OLD NEW SKIP 'PATH'` line per file. Otherwise podloop decides from the
/// hashes alone, so it gets `n`, the names NUL-separated, for one
/// `xargs sha256sum` that reports back: no shell loop reading a line a byte
/// at a time, whatever the batch's size.
fn check_list(checks: &[(Vec<u8>, Expect)]) -> Option<(&'static [u8], Vec<u8>)> {
    if checks.is_empty() {
        return None;
    }
    let mut list = Vec::new();
    if checks.iter().any(|(_, e)| e.skip_if_changed) {
        for (path, expect) in checks {
            list.extend_from_slice(&remote::expect_words(Some(expect)));
            list.push(b' ');
            list.extend_from_slice(&remote::sh_word(path));
            list.push(b'\n');
        }
        Some((b"v", list))
    } else {
        for (path, _) in checks {
            list.extend_from_slice(path);
            list.push(0);
        }
        Some((b"n", list))
    }
}

/// The fast path of a warm session: a batch of exactly one regular,
/// readable file of mode 0644 travels as its raw bytes. `None` for any
/// other batch (it goes as a tar, see [`plan`]).
pub fn plan_single(entries: &[UploadEntry]) -> Result<Option<Payload>, TransportError> {
    let [entry] = entries else {
        return Ok(None);
    };
    // The raw-bytes path creates the file under umask 022: only a 0644 file
    // keeps its mode that way.
    let UploadOp::Put {
        local,
        mode: 0o644,
        expect,
        content,
    } = &entry.op
    else {
        return Ok(None);
    };
    check_relative(&entry.path)?;
    let mut budget = INLINE_BUDGET;
    let Ok(content) = local_piece(local, content, &mut budget) else {
        // The tar path reports the unreadable file.
        return Ok(None);
    };
    let mut payload = Payload {
        nonce: new_nonce(),
        single_file: Some(entry.path.clone()),
        single_expect: *expect,
        files: 1,
        ..Payload::default()
    };
    payload.push(content);
    Ok(Some(payload))
}

/// Lines `LETTER [FOLDER] WORD…`, split so that none grows past
/// [`RECORD_LIMIT`].
fn push_records(out: &mut Vec<u8>, letter: u8, folder: Option<&[u8]>, words: &[&[u8]]) {
    let mut line: Vec<u8> = Vec::new();
    let start = |line: &mut Vec<u8>| {
        line.clear();
        line.push(letter);
        if let Some(folder) = folder {
            line.push(b' ');
            line.extend_from_slice(&remote::sh_word(folder));
        }
    };
    start(&mut line);
    let empty_len = line.len();
    for word in words {
        let quoted = remote::sh_word(word);
        if line.len() > empty_len && line.len() + quoted.len() > RECORD_LIMIT {
            out.extend_from_slice(&line);
            out.push(b'\n');
            start(&mut line);
        }
        line.push(b' ');
        line.extend_from_slice(&quoted);
    }
    if line.len() > empty_len {
        out.extend_from_slice(&line);
        out.push(b'\n');
    }
}

impl Payload {
    fn push(&mut self, piece: Piece) {
        self.len += piece.len();
        self.pieces.push(piece);
    }
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::Shared(b) => b.len() as u64,
            Piece::File { size, .. } => *size,
        }
    }

    fn in_memory(&self) -> Option<&[u8]> {
        match self {
            Piece::Bytes(b) => Some(b),
            Piece::Shared(b) => Some(b),
            Piece::File { .. } => None,
        }
    }
}

/// A file's bytes: the ones already read, else from disk now.
fn local_piece(
    local: &std::path::Path,
    content: &Option<Arc<[u8]>>,
    inline_left: &mut u64,
) -> Result<Piece, String> {
    match content {
        Some(bytes) => Ok(Piece::Shared(bytes.clone())),
        None => read_local(local, inline_left),
    }
}

/// A small file's content, or a big one's size (streamed later).
fn read_local(local: &std::path::Path, inline_left: &mut u64) -> Result<Piece, String> {
    let mut file =
        std::fs::File::open(local).map_err(|e| format!("cannot read the local file: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat the local file: {e}"))?;
    if !meta.is_file() {
        return Err("the local path is no longer a regular file".into());
    }
    let size = meta.len();
    if size > INLINE_FILE || size > *inline_left {
        return Ok(Piece::File {
            local: local.to_path_buf(),
            size,
        });
    }
    let mut content = Vec::with_capacity(size as usize + 1);
    std::io::Read::read_to_end(&mut file, &mut content)
        .map_err(|e| format!("cannot read the local file: {e}"))?;
    *inline_left -= content.len() as u64;
    Ok(Piece::Bytes(content))
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
    // Only a file streamed from disk needs it: a small save is all bytes.
    let mut buffer = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Bytes(bytes) => sink.write(bytes).await?,
            Piece::Shared(bytes) => sink.write(bytes).await?,
            Piece::File { local, size } => {
                let changed = |detail: String| TransportError::LocalChanged {
                    path: local.clone(),
                    detail,
                };
                let mut file = tokio::fs::File::open(local)
                    .await
                    .map_err(|e| changed(format!("cannot open it: {e}")))?;
                buffer.resize(64 * 1024, 0);
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
