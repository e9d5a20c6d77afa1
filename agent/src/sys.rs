//! Linux system calls on x86_64, with nothing between: the agent links no
//! libc, so it runs in any x86_64 container, whatever its C library.

use core::arch::asm;

pub const AT_FDCWD: isize = -100;
pub const AT_SYMLINK_NOFOLLOW: usize = 0x100;
pub const O_RDONLY: usize = 0;
pub const O_WRONLY: usize = 1;
pub const O_CREAT: usize = 0o100;
pub const O_TRUNC: usize = 0o1000;
pub const O_CLOEXEC: usize = 0o2000000;
pub const EINTR: isize = 4;
pub const EEXIST: isize = 17;
pub const ENOENT: isize = 2;

const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_CLOSE: usize = 3;
const SYS_RT_SIGACTION: usize = 13;
const SYS_DUP2: usize = 33;
const SYS_FORK: usize = 57;
const SYS_EXECVE: usize = 59;
const SYS_WAIT4: usize = 61;
const SYS_FCHMOD: usize = 91;
const SYS_UMASK: usize = 95;
const SYS_EXIT_GROUP: usize = 231;
const SYS_OPENAT: usize = 257;
const SYS_MKDIRAT: usize = 258;
const SYS_NEWFSTATAT: usize = 262;
const SYS_UNLINKAT: usize = 263;
const SYS_RENAMEAT: usize = 264;
const SYS_PIPE2: usize = 293;

const SIGPIPE: usize = 13;
const SIG_IGN: usize = 1;

/// A failed call: the (positive) errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub isize);

pub type SysResult = Result<usize, Errno>;

unsafe fn raw(n: usize, a: usize, b: usize, c: usize, d: usize) -> isize {
    let ret: isize;
    // SAFETY (caller): the arguments are valid for system call `n`.
    asm!(
        "syscall",
        inlateout("rax") n as isize => ret,
        in("rdi") a,
        in("rsi") b,
        in("rdx") c,
        in("r10") d,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack)
    );
    ret
}

/// Retries on EINTR (a SIGCHLD may land while the agent waits on a pipe).
unsafe fn call(n: usize, a: usize, b: usize, c: usize, d: usize) -> SysResult {
    loop {
        let ret = raw(n, a, b, c, d);
        if ret >= 0 {
            return Ok(ret as usize);
        }
        if -ret != EINTR {
            return Err(Errno(-ret));
        }
    }
}

pub fn read(fd: usize, buf: &mut [u8]) -> SysResult {
    // SAFETY: `buf` is writable for its whole length.
    unsafe { call(SYS_READ, fd, buf.as_mut_ptr() as usize, buf.len(), 0) }
}

pub fn write(fd: usize, buf: &[u8]) -> SysResult {
    // SAFETY: `buf` is readable for its whole length.
    unsafe { call(SYS_WRITE, fd, buf.as_ptr() as usize, buf.len(), 0) }
}

pub fn write_all(fd: usize, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        let n = write(fd, buf)?;
        buf = &buf[n..];
    }
    Ok(())
}

pub fn close(fd: usize) {
    // SAFETY: closing a descriptor number has no memory effects.
    let _ = unsafe { call(SYS_CLOSE, fd, 0, 0, 0) };
}

/// `path` must end with a NUL byte (see `CPath`).
pub fn open(path: &[u8], flags: usize, mode: usize) -> SysResult {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: `path` is NUL-terminated.
    unsafe {
        call(
            SYS_OPENAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            flags,
            mode,
        )
    }
}

pub fn mkdir(path: &[u8], mode: usize) -> SysResult {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: `path` is NUL-terminated.
    unsafe {
        call(
            SYS_MKDIRAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            mode,
            0,
        )
    }
}

pub fn unlink(path: &[u8]) -> SysResult {
    debug_assert_eq!(path.last(), Some(&0));
    // SAFETY: `path` is NUL-terminated.
    unsafe {
        call(
            SYS_UNLINKAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            0,
            0,
        )
    }
}

pub fn rename(from: &[u8], to: &[u8]) -> SysResult {
    debug_assert_eq!(from.last(), Some(&0));
    debug_assert_eq!(to.last(), Some(&0));
    // SAFETY: both paths are NUL-terminated.
    unsafe {
        call(
            SYS_RENAMEAT,
            AT_FDCWD as usize,
            from.as_ptr() as usize,
            AT_FDCWD as usize,
            to.as_ptr() as usize,
        )
    }
}

pub fn fchmod(fd: usize, mode: usize) -> SysResult {
    // SAFETY: no memory arguments.
    unsafe { call(SYS_FCHMOD, fd, mode, 0, 0) }
}

/// Sets the file mode creation mask; returns the previous one.
pub fn umask(mask: usize) -> usize {
    // SAFETY: no memory arguments; umask cannot fail.
    unsafe { raw(SYS_UMASK, mask, 0, 0, 0) as usize }
}

/// What the agent needs of `struct stat` (x86_64 layout).
#[derive(Clone, Copy)]
pub struct Stat {
    pub mode: u32,
    pub size: u64,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;

/// `lstat` when `follow` is false, `stat` when true.
pub fn stat(path: &[u8], follow: bool) -> Result<Stat, Errno> {
    debug_assert_eq!(path.last(), Some(&0));
    let mut raw_stat = [0u64; 18]; // 144 bytes
    let flags = if follow { 0 } else { AT_SYMLINK_NOFOLLOW };
    // SAFETY: `path` is NUL-terminated; the buffer has the kernel's size.
    unsafe {
        call(
            SYS_NEWFSTATAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            raw_stat.as_mut_ptr() as usize,
            flags,
        )?;
    }
    Ok(Stat {
        // st_mode sits at byte 24, st_size at byte 48.
        mode: raw_stat[3] as u32,
        size: raw_stat[6],
    })
}

pub fn pipe() -> Result<(usize, usize), Errno> {
    let mut fds = [0i32; 2];
    // SAFETY: room for two descriptors.
    unsafe { call(SYS_PIPE2, fds.as_mut_ptr() as usize, O_CLOEXEC, 0, 0)? };
    Ok((fds[0] as usize, fds[1] as usize))
}

pub fn dup2(from: usize, to: usize) -> SysResult {
    // SAFETY: no memory arguments.
    unsafe { call(SYS_DUP2, from, to, 0, 0) }
}

/// Returns 0 in the child.
pub fn fork() -> SysResult {
    // SAFETY: the child only sets up descriptors and calls `execve`/`exit`.
    unsafe { call(SYS_FORK, 0, 0, 0, 0) }
}

/// `argv` and `envp` are NULL-terminated arrays of NUL-terminated strings.
pub fn execve(path: *const u8, argv: *const *const u8, envp: *const *const u8) -> Errno {
    // SAFETY (caller): pointers as documented.
    match unsafe { call(SYS_EXECVE, path as usize, argv as usize, envp as usize, 0) } {
        Ok(_) => Errno(0),
        Err(e) => e,
    }
}

/// The child's exit code the way a shell reports it (128 + signal).
pub fn wait(pid: usize) -> i32 {
    let mut status = 0i32;
    // SAFETY: room for the status word.
    match unsafe { call(SYS_WAIT4, pid, &mut status as *mut i32 as usize, 0, 0) } {
        Ok(_) if status & 0x7f == 0 => (status >> 8) & 0xff,
        Ok(_) => 128 + (status & 0x7f),
        Err(_) => 127,
    }
}

pub fn exit(code: i32) -> ! {
    loop {
        // SAFETY: ends the process.
        unsafe {
            raw(SYS_EXIT_GROUP, code as usize, 0, 0, 0);
        }
    }
}

/// A reader that went away must not kill the agent: writes to it fail with
/// EPIPE instead.
pub fn ignore_sigpipe() {
    // struct sigaction: handler, flags, restorer, mask (8 bytes).
    let action = [SIG_IGN, 0, 0, 0];
    // SAFETY: a valid sigaction for SIG_IGN (no handler runs, no restorer).
    let _ = unsafe { call(SYS_RT_SIGACTION, SIGPIPE, action.as_ptr() as usize, 0, 8) };
}

/// Children get SIGPIPE back as it was: an ignored signal stays ignored
/// across `execve`, and a reload command's pipelines rely on the default.
pub fn default_sigpipe() {
    let action = [0usize, 0, 0, 0];
    // SAFETY: a valid sigaction for SIG_DFL.
    let _ = unsafe { call(SYS_RT_SIGACTION, SIGPIPE, action.as_ptr() as usize, 0, 8) };
}

/// The C library's wording, for the errors a write into a container meets;
/// podloop reads some of them (`No space left on device`).
pub fn strerror(e: Errno) -> &'static str {
    match e.0 {
        1 => "Operation not permitted",
        2 => "No such file or directory",
        5 => "I/O error",
        13 => "Permission denied",
        16 => "Device or resource busy",
        17 => "File exists",
        18 => "Invalid cross-device link",
        20 => "Not a directory",
        21 => "Is a directory",
        22 => "Invalid argument",
        24 => "Too many open files",
        26 => "Text file busy",
        27 => "File too large",
        28 => "No space left on device",
        30 => "Read-only file system",
        31 => "Too many links",
        36 => "File name too long",
        39 => "Directory not empty",
        40 => "Too many levels of symbolic links",
        122 => "Disk quota exceeded",
        _ => "Unknown error",
    }
}
