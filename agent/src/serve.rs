//! The agent's side of a warm session: the same batches and the same
//! NUL-separated records as the shell session (`server/src/transport/
//! remote.rs`), but a one-file save costs no process: the agent writes the
//! file, hashes what it replaces and renames it into place itself. A tar
//! batch, and the reload command, still run under `sh` (the deliver script
//! podloop sends once, at start).
//!
//! Requests, on stdin: a line `KIND SIZE NONCE HLEN`, then HLEN bytes of
//! netstrings (`LEN:BYTES,`, so a name is data of any byte but NUL), then
//! SIZE bytes of body:
//! - `I`: the body is the deliver script; no answer.
//! - `F` root, reload, path, old, new, skip: the body is one file's bytes,
//!   followed by the line `NONCE` (the completion marker).
//! - `T` root, reload: the body is a tar for the deliver script.
//!
//! Every answer but `I`'s ends with `E\0NONCE\0`; the agent exits when stdin
//! ends, or when it may no longer be in step with it.

use crate::sha256::Sha256;
use crate::sys::{self, Errno, Stat};

const INPUT_SIZE: usize = 64 * 1024;
const OUT_SIZE: usize = 96 * 1024;
const HEADER_SIZE: usize = 40 * 1024;
const SCRIPT_SIZE: usize = 32 * 1024;
/// The reload command's output kept (its tail); podloop shows 2,000 chars.
const RELOAD_OUTPUT_SIZE: usize = 16 * 1024;
/// PATH_MAX: the kernel takes no longer path (ENAMETOOLONG), so neither
/// does the agent. Kept at that: every path is built, zeroed and moved by
/// value, and that copying was a third of a save's CPU at 8 KiB.
const PATH_SIZE: usize = 4096;

/// Exit codes, as the shell session's: 5 = the stream ended inside a batch.
const CODE_CUT: i32 = 5;
const CODE_PROTOCOL: i32 = 8;

pub struct Input {
    buf: [u8; INPUT_SIZE],
    start: usize,
    end: usize,
}

impl Input {
    fn new() -> Input {
        Input {
            buf: [0; INPUT_SIZE],
            start: 0,
            end: 0,
        }
    }

    /// False at the end of stdin.
    fn fill(&mut self) -> bool {
        if self.start < self.end {
            return true;
        }
        match sys::read(0, &mut self.buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.start = 0;
                self.end = n;
                true
            }
        }
    }

    /// The next line without its newline, into `out`; None at the end of
    /// stdin or when the line does not fit.
    fn line<'a>(&mut self, out: &'a mut [u8]) -> Option<&'a [u8]> {
        let mut len = 0;
        loop {
            if !self.fill() {
                return None;
            }
            let byte = self.buf[self.start];
            self.start += 1;
            if byte == b'\n' {
                return Some(&out[..len]);
            }
            *out.get_mut(len)? = byte;
            len += 1;
        }
    }

    fn exact(&mut self, out: &mut [u8]) -> bool {
        let mut at = 0;
        self.pass(out.len() as u64, &mut |chunk: &[u8]| {
            out[at..at + chunk.len()].copy_from_slice(chunk);
            at += chunk.len();
        })
    }

    /// Hands the next `n` bytes to `sink` chunk by chunk; false when stdin
    /// ended first.
    fn pass(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> bool {
        while n > 0 {
            if !self.fill() {
                return false;
            }
            let take = ((self.end - self.start) as u64).min(n) as usize;
            sink(&self.buf[self.start..self.start + take]);
            self.start += take;
            n -= take as u64;
        }
        true
    }
}

/// What goes back on stdout for one request, written with one `write`.
pub struct Out {
    buf: [u8; OUT_SIZE],
    len: usize,
}

impl Out {
    fn new() -> Out {
        Out {
            buf: [0; OUT_SIZE],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let take = bytes.len().min(OUT_SIZE - self.len);
        self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
    }

    fn field(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.push(part);
        }
        self.push(&[0]);
    }

    fn flush(&mut self) {
        if sys::write_all(1, &self.buf[..self.len]).is_err() {
            // Nobody reads the answers any more: the session is over.
            sys::exit(0);
        }
        self.len = 0;
    }
}

/// A NUL-terminated path built from parts.
pub struct CPath {
    buf: [u8; PATH_SIZE],
    len: usize,
}

impl CPath {
    fn of(parts: &[&[u8]]) -> Option<CPath> {
        let mut path = CPath {
            buf: [0; PATH_SIZE],
            len: 0,
        };
        for part in parts {
            if path.len + part.len() >= PATH_SIZE || part.contains(&0) {
                return None;
            }
            path.buf[path.len..path.len + part.len()].copy_from_slice(part);
            path.len += part.len();
        }
        Some(path)
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn c(&self) -> &[u8] {
        &self.buf[..self.len + 1]
    }
}

/// Decimal digits of `n`.
fn decimal(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[at..];
        }
    }
}

fn parse_decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b - b'0') as u64;
    }
    Some(n)
}

/// A request's header fields. Each field's closing `,` is overwritten with
/// NUL, so every field is also a C string in place.
struct Fields<'a> {
    all: [&'a [u8]; 8],
    count: usize,
}

fn parse_fields(header: &mut [u8]) -> Option<Fields<'_>> {
    let mut ends = [(0usize, 0usize); 8];
    let mut count = 0;
    let mut at = 0;
    while at < header.len() {
        let colon = at + header[at..].iter().position(|b| *b == b':')?;
        let len = parse_decimal(&header[at..colon])? as usize;
        let start = colon + 1;
        let end = start.checked_add(len)?;
        if count == ends.len() || header.get(end) != Some(&b',') {
            return None;
        }
        header[end] = 0;
        ends[count] = (start, end);
        count += 1;
        at = end + 1;
    }
    let header: &[u8] = header;
    let mut all: [&[u8]; 8] = [&[]; 8];
    for (slot, (start, end)) in all.iter_mut().zip(ends.iter()).take(count) {
        *slot = &header[*start..*end];
    }
    Some(Fields { all, count })
}

enum State {
    Absent,
    NotAFile,
    File { sha: [u8; 64], size: u64 },
}

fn is_dir(path: &CPath) -> bool {
    sys::stat(path.c(), true).is_ok_and(|s| s.mode & sys::S_IFMT == sys::S_IFDIR)
}

fn lstat(path: &CPath) -> Result<Stat, Errno> {
    sys::stat(path.c(), false)
}

/// What the container holds at `path` (`state_of` in the shell script).
fn state_of(path: &CPath, chunk: &mut [u8]) -> State {
    let stat = match lstat(path) {
        Err(e) if e.0 == sys::ENOENT => return State::Absent,
        Err(_) => return State::NotAFile,
        Ok(s) => s,
    };
    if stat.mode & sys::S_IFMT != sys::S_IFREG {
        return State::NotAFile;
    }
    let Ok(fd) = sys::open(path.c(), sys::O_RDONLY | sys::O_CLOEXEC, 0) else {
        return State::NotAFile;
    };
    let mut sha = Sha256::new();
    let mut size = 0u64;
    // Up to the size `lstat` gave (no read just to meet the end): a file
    // that grows meanwhile hashes as neither copy, a conflict, as it is.
    let state = loop {
        if size == stat.size {
            break State::File {
                sha: sha.finish_hex(),
                size,
            };
        }
        let want = ((stat.size - size) as usize).min(chunk.len());
        match sys::read(fd, &mut chunk[..want]) {
            Ok(0) => {
                break State::File {
                    sha: sha.finish_hex(),
                    size,
                }
            }
            Ok(n) => {
                sha.update(&chunk[..n]);
                size += n as u64;
            }
            Err(_) => break State::NotAFile,
        }
    };
    sys::close(fd);
    state
}

/// A folder that could not be made, reported the way busybox `mkdir` words it.
struct MkdirFailure {
    at: CPath,
    errno: Errno,
}

impl MkdirFailure {
    fn write(&self, out: &mut Out) {
        out.field(&[
            b"mkdir: can't create directory '",
            self.at.bytes(),
            b"': ",
            sys::strerror(self.errno).as_bytes(),
        ]);
    }
}

/// `mkdir -p`.
// The failure carries its path by value: there is no allocator to box it,
// and it is returned once, on a path that is about to be reported anyway.
#[allow(clippy::result_large_err)]
fn make_dirs(path: &CPath) -> Result<(), MkdirFailure> {
    let bytes = path.bytes();
    let mut end = 1;
    while end <= bytes.len() {
        if end == bytes.len() || bytes[end] == b'/' {
            let prefix = CPath::of(&[&bytes[..end]]).expect("a prefix fits where the whole did");
            if let Err(errno) = sys::mkdir(prefix.c(), 0o777) {
                if !(errno.0 == sys::EEXIST && is_dir(&prefix)) {
                    return Err(MkdirFailure { at: prefix, errno });
                }
            }
        }
        end += 1;
    }
    Ok(())
}

/// What lies on the way from `root` down to `root/dir` (`link_in`).
enum Way<'a> {
    /// This folder, relative to `root`, is a symbolic link in the container.
    Link(&'a [u8]),
    /// Every step is a folder: `root/dir` exists.
    Folders,
    /// A step is missing (or not a folder): `mkdir -p` will say which.
    Missing,
}

fn way_down<'a>(root: &[u8], dir: &'a [u8]) -> Way<'a> {
    let mut end = 0;
    while end < dir.len() {
        end += dir[end..]
            .iter()
            .position(|b| *b == b'/')
            .unwrap_or(dir.len() - end);
        let Some(at) = CPath::of(&[root, b"/", &dir[..end]]) else {
            return Way::Missing;
        };
        match lstat(&at) {
            Ok(s) if s.mode & sys::S_IFMT == sys::S_IFLNK => return Way::Link(&dir[..end]),
            Ok(s) if s.mode & sys::S_IFMT == sys::S_IFDIR => {}
            _ => return Way::Missing,
        }
        end += 1;
    }
    Way::Folders
}

pub struct Agent {
    input: Input,
    out: Out,
    script: [u8; SCRIPT_SIZE],
    script_len: Option<usize>,
    /// A scratch buffer for hashing and for the reload command's output.
    chunk: [u8; RELOAD_OUTPUT_SIZE],
    sh: *const u8,
    envp: *const *const u8,
    umask: usize,
}

impl Agent {
    /// `sh` is the shell's path, NUL-terminated; `envp` the agent's own
    /// environment, handed on to every child.
    pub fn new(sh: *const u8, envp: *const *const u8) -> Agent {
        Agent {
            input: Input::new(),
            out: Out::new(),
            script: [0; SCRIPT_SIZE],
            script_len: None,
            chunk: [0; RELOAD_OUTPUT_SIZE],
            sh,
            envp,
            umask: {
                let mask = sys::umask(0o022);
                sys::umask(mask);
                mask
            },
        }
    }

    /// Serves requests until stdin ends; returns the exit code.
    pub fn serve(&mut self, start_nonce: &[u8]) -> i32 {
        self.out.field(&[b"A"]);
        self.end(start_nonce);
        let mut header = [0u8; HEADER_SIZE];
        loop {
            let mut line_buf = [0u8; 128];
            let Some(line) = self.input.line(&mut line_buf) else {
                return 0;
            };
            let mut words = line.split(|b| *b == b' ');
            let kind = words.next().unwrap_or(b"");
            let size = words.next().and_then(parse_decimal);
            let mut nonce_buf = [0u8; 64];
            let nonce_word = words.next().unwrap_or(b"");
            let header_len = words.next().and_then(parse_decimal);
            let (Some(size), Some(header_len)) = (size, header_len) else {
                return protocol_error(b"a request line without SIZE and HLEN");
            };
            let header_len = header_len as usize;
            if header_len > HEADER_SIZE || nonce_word.len() > nonce_buf.len() {
                return protocol_error(b"a request header too long");
            }
            nonce_buf[..nonce_word.len()].copy_from_slice(nonce_word);
            let nonce = &nonce_buf[..nonce_word.len()];
            if !self.input.exact(&mut header[..header_len]) {
                return CODE_CUT;
            }
            let Some(fields) = parse_fields(&mut header[..header_len]) else {
                return protocol_error(b"a request header that is not netstrings");
            };
            let code = match (kind, fields.count) {
                (b"I", 0) => {
                    self.take_script(size);
                    continue;
                }
                (b"F", 6) => {
                    let f = &fields.all;
                    self.put_one(size, nonce, f[0], f[1], f[2], f[3], f[4], f[5])
                }
                (b"T", 2) => self.apply(size, nonce, fields.all[0], fields.all[1]),
                _ => return protocol_error(b"an unknown request"),
            };
            self.end(nonce);
            if code == CODE_CUT {
                return code;
            }
        }
    }

    fn end(&mut self, nonce: &[u8]) {
        self.out.field(&[b"E"]);
        self.out.field(&[nonce]);
        self.out.flush();
    }

    fn take_script(&mut self, size: u64) {
        if size as usize >= SCRIPT_SIZE {
            self.script_len = None;
            self.input.pass(size, &mut |_| {});
            return;
        }
        let len = size as usize;
        if self.input.exact(&mut self.script[..len]) {
            self.script[len] = 0;
            self.script_len = Some(len);
        }
    }

    /// Reads past a body that will not be used, and its nonce line when
    /// there is one. False when stdin ended.
    fn skip_body(&mut self, size: u64, nonce_line: bool) -> bool {
        if !self.input.pass(size, &mut |_| {}) {
            return false;
        }
        let mut line = [0u8; 128];
        !nonce_line || self.input.line(&mut line).is_some()
    }

    /// One file refused before anything was written: its body is read past
    /// (stdin stays in step), an `F` record says why, and the batch is
    /// otherwise complete (the reload runs, as the shell session does).
    fn refuse(&mut self, size: u64, path: &[u8], reason: &[&[u8]], reload: &[u8]) -> i32 {
        if !self.skip_body(size, true) {
            return CODE_CUT;
        }
        self.out.field(&[b"F"]);
        self.out.field(&[path]);
        self.out.field(reason);
        self.run_reload(reload);
        self.out.field(&[b"K"]);
        0
    }

    /// `put_one` of the shell session: the file's bytes go to
    /// `.podloop-NONCE` beside the destination and are renamed into place
    /// once the nonce line proves the body whole. 0 = done (maybe with `F`
    /// or `C` records), 4 = nothing done and in step, 5 = cut.
    #[allow(clippy::too_many_arguments)]
    fn put_one(
        &mut self,
        size: u64,
        nonce: &[u8],
        root: &[u8],
        reload: &[u8],
        path: &[u8],
        old: &[u8],
        new: &[u8],
        skip: &[u8],
    ) -> i32 {
        let (Some(root_path), Some(dest)) = (CPath::of(&[root]), CPath::of(&[root, b"/", path]))
        else {
            return self.refuse(size, path, &[b"the path is too long (PATH_MAX)"], reload);
        };
        if !is_dir(&root_path) {
            if let Err(failure) = make_dirs(&root_path) {
                if !self.skip_body(size, true) {
                    return CODE_CUT;
                }
                self.out.field(&[b"S"]);
                failure.write(&mut self.out);
                return 4;
            }
        }
        let parent = path.iter().rposition(|b| *b == b'/').map(|at| &path[..at]);
        let mut dir = CPath::of(&[root]).expect("checked above");
        let mut refused = None;
        if let Some(parent) = parent {
            let way = way_down(root, parent);
            if let Way::Link(link) = way {
                let reason: [&[u8]; 3] = [
                    b"`",
                    link,
                    b"` is a symbolic link in the container; podloop does not write through links (make it a folder, or exclude the path)",
                ];
                return self.refuse(size, path, &reason, reload);
            }
            dir = CPath::of(&[root, b"/", parent]).expect("a prefix of dest");
            if matches!(way, Way::Missing) {
                if let Err(failure) = make_dirs(&dir) {
                    refused = Some(failure);
                    dir = CPath::of(&[root]).expect("checked above");
                }
            }
        }
        let Some(tmp) = CPath::of(&[dir.bytes(), b"/.podloop-", nonce]) else {
            let reason: [&[u8]; 1] =
                [b"the path is too long for a temporary file beside it (PATH_MAX)"];
            return self.refuse(size, path, &reason, reload);
        };
        let fd = match sys::open(
            tmp.c(),
            sys::O_WRONLY | sys::O_CREAT | sys::O_TRUNC | sys::O_CLOEXEC,
            0o644,
        ) {
            Ok(fd) => fd,
            Err(errno) => {
                if !self.skip_body(size, true) {
                    return CODE_CUT;
                }
                self.out.field(&[b"S"]);
                self.out.field(&[
                    b"can't create ",
                    tmp.bytes(),
                    b": ",
                    sys::strerror(errno).as_bytes(),
                ]);
                return 4;
            }
        };
        // Exactly 0644 whatever the umask, as the shell session makes it
        // (a system call spared when the umask leaves 0644 alone).
        if self.umask & 0o644 != 0 {
            let _ = sys::fchmod(fd, 0o644);
        }
        let mut write_error = None;
        let whole = self.input.pass(size, &mut |chunk: &[u8]| {
            if write_error.is_none() {
                if let Err(e) = sys::write_all(fd, chunk) {
                    write_error = Some(e);
                }
            }
        });
        sys::close(fd);
        let mut line = [0u8; 128];
        let marker = if whole {
            self.input.line(&mut line)
        } else {
            None
        };
        if marker != Some(nonce) {
            let _ = sys::unlink(tmp.c());
            self.out.field(&[b"T"]);
            self.out.field(&[b"the stream ended inside the file"]);
            return CODE_CUT;
        }
        if let Some(errno) = write_error {
            // The body was read to its end: still in step.
            let _ = sys::unlink(tmp.c());
            self.out.field(&[b"W"]);
            self.out.field(&[path]);
            self.out.field(&[sys::strerror(errno).as_bytes()]);
            return 4;
        }
        if let Some(failure) = refused {
            let _ = sys::unlink(tmp.c());
            self.out.field(&[b"F"]);
            self.out.field(&[path]);
            failure.write(&mut self.out);
        } else if self.changed(&dest, path, old, new, skip) && skip == b"1" {
            let _ = sys::unlink(tmp.c());
        } else if let Err(errno) = sys::rename(tmp.c(), dest.c()) {
            let _ = sys::unlink(tmp.c());
            self.out.field(&[b"F"]);
            self.out.field(&[path]);
            self.out.field(&[
                b"mv: can't rename '",
                tmp.bytes(),
                b"': ",
                sys::strerror(errno).as_bytes(),
            ]);
        }
        self.run_reload(reload);
        self.out.field(&[b"K"]);
        0
    }

    /// The conflict check (`changed` in the shell script): true, with a `C`
    /// record, when the container holds neither what podloop last wrote
    /// (`old`) nor what it writes now (`new`).
    fn changed(&mut self, abs: &CPath, rel: &[u8], old: &[u8], new: &[u8], skip: &[u8]) -> bool {
        if old == b"." {
            return false;
        }
        let state = state_of(abs, &mut self.chunk);
        let now: &[u8] = match &state {
            State::Absent => b"-",
            State::NotAFile => b"?",
            State::File { sha, .. } => sha,
        };
        if now == old || now == new {
            return false;
        }
        let mut digits = [0u8; 20];
        let size: &[u8] = match &state {
            State::File { size, .. } => decimal(*size, &mut digits),
            _ => b"",
        };
        self.out.field(&[b"C"]);
        self.out.field(&[rel]);
        self.out.field(&[now]);
        self.out.field(&[size]);
        self.out.field(&[skip]);
        true
    }

    /// A tar batch: the deliver script under `sh`, its stdin a pipe the
    /// agent fills with exactly SIZE bytes, so the agent's own stdin stays
    /// in step whatever the script does. The script prints its records
    /// (`K` included) straight to stdout.
    fn apply(&mut self, size: u64, nonce: &[u8], root: &[u8], reload: &[u8]) -> i32 {
        let Some(script_len) = self.script_len else {
            if !self.skip_body(size, false) {
                return CODE_CUT;
            }
            self.out.field(&[b"X"]);
            self.out
                .field(&[b"the podloop agent was given no deliver script"]);
            return 4;
        };
        let mut digits = [0u8; 20];
        let size_text = decimal(size, &mut digits);
        let mut size_c = [0u8; 21];
        size_c[..size_text.len()].copy_from_slice(size_text);
        let mut nonce_c = [0u8; 65];
        nonce_c[..nonce.len()].copy_from_slice(nonce);
        let argv: [*const u8; 9] = [
            self.sh,
            c"-c".as_ptr().cast(),
            self.script[..=script_len].as_ptr(),
            c"podloop".as_ptr().cast(),
            // Fields are NUL-terminated in place (see `parse_fields`).
            root.as_ptr(),
            size_c.as_ptr(),
            reload.as_ptr(),
            nonce_c.as_ptr(),
            core::ptr::null(),
        ];
        self.out.flush();
        let child = match self.spawn(&argv, None) {
            Ok(child) => child,
            Err(errno) => {
                if !self.skip_body(size, false) {
                    return CODE_CUT;
                }
                self.out.field(&[b"X"]);
                self.out
                    .field(&[b"cannot start sh: ", sys::strerror(errno).as_bytes()]);
                return 4;
            }
        };
        let mut open = true;
        let whole = self.input.pass(size, &mut |chunk: &[u8]| {
            // A script that stopped reading (tar failed) leaves the rest
            // unread; the agent reads on so its own stdin stays in step.
            if open && sys::write_all(child.stdin, chunk).is_err() {
                open = false;
            }
        });
        // Closing the pipe on a cut stream is safe: the script applies
        // nothing without the batch's end marker.
        sys::close(child.stdin);
        // The script's exit code is in its records already; whatever it
        // was, the agent read exactly the batch, so it goes on unless its
        // own stdin was cut.
        let _ = sys::wait(child.pid);
        if whole {
            0
        } else {
            CODE_CUT
        }
    }

    /// Starts `argv` with stdin a new pipe (returned) and stdout/stderr the
    /// agent's, or the write end of `output` for both.
    fn spawn(&self, argv: &[*const u8], output: Option<usize>) -> Result<Child, Errno> {
        let (read_end, write_end) = sys::pipe()?;
        let pid = match sys::fork() {
            Ok(pid) => pid,
            Err(e) => {
                sys::close(read_end);
                sys::close(write_end);
                return Err(e);
            }
        };
        if pid == 0 {
            sys::default_sigpipe();
            let _ = sys::dup2(read_end, 0);
            if let Some(fd) = output {
                let _ = sys::dup2(fd, 1);
                let _ = sys::dup2(fd, 2);
            }
            sys::execve(self.sh, argv.as_ptr(), self.envp);
            sys::exit(127);
        }
        sys::close(read_end);
        Ok(Child {
            pid,
            stdin: write_end,
        })
    }

    /// `run_reload`: `sh -c RELOAD`, stdin empty, stdout and stderr
    /// together; `O` and `R` records as `$(…)` would give them (NULs
    /// dropped, trailing newlines trimmed).
    fn run_reload(&mut self, reload: &[u8]) {
        if reload.is_empty() {
            return;
        }
        let argv: [*const u8; 4] = [
            self.sh,
            c"-c".as_ptr().cast(),
            reload.as_ptr(),
            core::ptr::null(),
        ];
        let (read_end, write_end) = match sys::pipe() {
            Ok(p) => p,
            Err(errno) => return self.reload_failed(errno),
        };
        self.out.flush();
        let child = match self.spawn(&argv, Some(write_end)) {
            Ok(child) => child,
            Err(errno) => {
                sys::close(read_end);
                sys::close(write_end);
                return self.reload_failed(errno);
            }
        };
        // An empty stdin, as `</dev/null`.
        sys::close(child.stdin);
        sys::close(write_end);
        let mut len = 0;
        let mut scratch = [0u8; 4096];
        while let Ok(n @ 1..) = sys::read(read_end, &mut scratch) {
            for &b in &scratch[..n] {
                if b == 0 {
                    continue;
                }
                if len == self.chunk.len() {
                    // Keep the tail: that is what podloop shows.
                    self.chunk.copy_within(len / 2.., 0);
                    len -= len / 2;
                }
                self.chunk[len] = b;
                len += 1;
            }
        }
        sys::close(read_end);
        let code = sys::wait(child.pid);
        while len > 0 && self.chunk[len - 1] == b'\n' {
            len -= 1;
        }
        let mut digits = [0u8; 20];
        self.out.field(&[b"O"]);
        let output = &self.chunk[..len];
        self.out.field(&[output]);
        self.out.field(&[b"R"]);
        self.out.field(&[decimal(code as u64, &mut digits)]);
    }

    fn reload_failed(&mut self, errno: Errno) {
        self.out.field(&[b"O"]);
        self.out
            .field(&[b"cannot start sh: ", sys::strerror(errno).as_bytes()]);
        self.out.field(&[b"R"]);
        self.out.field(&[b"127"]);
    }
}

struct Child {
    pid: usize,
    stdin: usize,
}

fn protocol_error(what: &[u8]) -> i32 {
    let _ = sys::write_all(2, b"podloop agent: protocol error: ");
    let _ = sys::write_all(2, what);
    let _ = sys::write_all(2, b"\n");
    CODE_PROTOCOL
}

/// The agent's `main`: `AGENT probe` answers whether it runs at all;
/// `AGENT serve NONCE SH` unlinks its own file (it was copied in for this
/// session only) and serves.
///
/// # Safety
/// `argv` holds `argc` NUL-terminated strings; `envp` is NULL-terminated.
pub unsafe fn main(argc: usize, argv: *const *const u8, envp: *const *const u8) -> i32 {
    sys::ignore_sigpipe();
    let arg = |i: usize| -> &[u8] {
        if i >= argc {
            return b"";
        }
        // SAFETY: argv[i] is a NUL-terminated string (caller).
        unsafe {
            let p = *argv.add(i);
            let mut len = 0;
            while *p.add(len) != 0 {
                len += 1;
            }
            core::slice::from_raw_parts(p, len + 1)
        }
    };
    match arg(1) {
        b"probe\0" => 0,
        b"serve\0" if argc == 4 => {
            let _ = sys::unlink(arg(0));
            let nonce = arg(2);
            // SAFETY: argv[3] is NUL-terminated and lives as long as the process.
            let sh = unsafe { *argv.add(3) };
            // Half a megabyte of buffers: the main thread's stack has room
            // (8 MiB by default), and nothing is allocated.
            let mut agent = Agent::new(sh, envp);
            agent.serve(&nonce[..nonce.len() - 1])
        }
        _ => {
            let _ = sys::write_all(2, b"usage: podloop-agent probe | serve NONCE SH\n");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_netstrings_and_become_c_strings() {
        let mut header = b"4:/app,0:,5:a\nb'c,1:.,".to_vec();
        let fields = parse_fields(&mut header).unwrap();
        assert_eq!(fields.count, 4);
        assert_eq!(fields.all[0], b"/app");
        assert_eq!(fields.all[1], b"");
        assert_eq!(fields.all[2], b"a\nb'c");
        assert_eq!(fields.all[3], b".");
        assert_eq!(header[6], 0, "the comma after /app is now a NUL");
    }

    #[test]
    fn malformed_headers_are_refused() {
        for bad in [
            &b"4:/ap,"[..],
            b"x:/app,",
            b"4:/app",
            b"4:/app;",
            b"99999999999999999999:",
        ] {
            assert!(parse_fields(&mut bad.to_vec()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn decimals_round_trip() {
        let mut digits = [0u8; 20];
        assert_eq!(decimal(0, &mut digits), b"0");
        assert_eq!(
            decimal(18446744073709551615, &mut digits),
            b"18446744073709551615"
        );
        assert_eq!(parse_decimal(b"1024"), Some(1024));
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"12a"), None);
    }
}
