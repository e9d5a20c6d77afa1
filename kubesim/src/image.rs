//! Building container root filesystems from kubesim's images.
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::template::{ContainerTemplate, Image};

/// The uid/gid that owns every file of `Image::BusyboxNonroot` and runs its processes.
pub const NONROOT_ID: u32 = 1000;

const BUSYBOX: &str = "/bin/busybox";

/// Host programs copied into `Image::Host`, with their shared libraries.
const HOST_PROGRAMS: &[&str] = &[
    "sh",
    "dash",
    "bash",
    "tar",
    "gzip",
    "cat",
    "ls",
    "mkdir",
    "rmdir",
    "rm",
    "mv",
    "cp",
    "ln",
    "chmod",
    "chown",
    "touch",
    "echo",
    "printf",
    "sleep",
    "head",
    "tail",
    "wc",
    "sha256sum",
    "md5sum",
    "stat",
    "test",
    "[",
    "true",
    "false",
    "env",
    "id",
    "pwd",
    "readlink",
    "realpath",
    "dirname",
    "basename",
    "sort",
    "uniq",
    "tr",
    "cut",
    "date",
    "tee",
    "du",
    "df",
    "nproc",
    "mktemp",
    "sync",
    "uname",
    "whoami",
    "yes",
    "seq",
    "od",
    "cmp",
    "diff",
    "find",
    "xargs",
    "grep",
    "sed",
    "kill",
    "ps",
    "sh",
    "which",
    "hostname",
    "dd",
];

fn io_context(err: io::Error, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(err.kind(), format!("{what}: {err}"))
}

/// Whether the busybox images can be built on this machine.
pub fn busybox_available() -> bool {
    Path::new(BUSYBOX).is_file()
}

/// For tests that need a busybox pod: whether they can run. Without
/// `/bin/busybox` a test is skipped (said on stderr), except under
/// `CI=true`, where a machine missing it is a broken CI setup: panic.
pub fn busybox_or_skip() -> bool {
    if busybox_available() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "/bin/busybox is missing: apt-get install -y busybox-static"
    );
    eprintln!("skipped: /bin/busybox is missing (apt-get install -y busybox-static)");
    false
}

fn base_layout(root: &Path) -> io::Result<()> {
    for dir in ["proc", "dev", "tmp", "etc", "root", "var/run", "home"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    // Device nodes are bind-mounted over these placeholders inside the pod's mount namespace.
    for dev in ["null", "zero", "random", "urandom", "full"] {
        fs::File::create(root.join("dev").join(dev))?;
    }
    fs::write(
        root.join("etc/passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/sh\napp:x:{NONROOT_ID}:{NONROOT_ID}:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        ),
    )?;
    fs::write(
        root.join("etc/group"),
        format!("root:x:0:\napp:x:{NONROOT_ID}:\nnogroup:x:65534:\n"),
    )?;
    fs::create_dir_all(root.join("home/app"))?;
    Ok(())
}

fn build_busybox(root: &Path, with_tar: bool) -> io::Result<()> {
    if !busybox_available() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "/bin/busybox is missing: install it with `apt-get install -y busybox-static`, or use the `host` image",
        ));
    }
    for dir in ["bin", "sbin", "usr/bin", "usr/sbin"] {
        fs::create_dir_all(root.join(dir))?;
    }
    fs::copy(BUSYBOX, root.join("bin/busybox"))
        .map_err(|e| io_context(e, "copying /bin/busybox into the image"))?;
    let list = Command::new(BUSYBOX).arg("--list-full").output()?;
    if !list.status.success() {
        return Err(io::Error::other("`busybox --list-full` failed"));
    }
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        if !with_tar && applet.rsplit('/').next() == Some("tar") {
            continue;
        }
        let link = root.join(applet);
        if link.symlink_metadata().is_err() {
            symlink("/bin/busybox", &link)?;
        }
    }
    Ok(())
}

fn find_on_host(program: &str) -> Option<PathBuf> {
    for dir in ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
        let candidate = Path::new(dir).join(program);
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    None
}

/// Libraries the dynamic loader maps for `binary`, as absolute paths (`ldd` output).
fn shared_libraries(binary: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output()?;
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

fn copy_host_file(root: &Path, host_path: &Path) -> io::Result<()> {
    let relative = host_path.strip_prefix("/").unwrap_or(host_path);
    let target = root.join(relative);
    if target.exists() {
        return Ok(());
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    // Copy the resolved file's bytes: symlinks such as `/bin/sh -> dash` become real files.
    fs::copy(host_path, &target).map_err(|e| io_context(e, host_path.display()))?;
    Ok(())
}

fn build_host(root: &Path) -> io::Result<()> {
    // Mirror merged /usr as Debian 12 has it, so the paths ldd prints resolve the same way.
    for dir in ["usr/bin", "usr/sbin", "usr/lib", "usr/lib64"] {
        fs::create_dir_all(root.join(dir))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        symlink(target, root.join(link))?;
    }
    let mut copied_any = false;
    for program in HOST_PROGRAMS {
        let Some(host_path) = find_on_host(program) else {
            continue;
        };
        let target = root.join("usr/bin").join(program);
        if target.exists() {
            continue;
        }
        fs::copy(&host_path, &target).map_err(|e| io_context(e, host_path.display()))?;
        copied_any = true;
        for lib in shared_libraries(&host_path)? {
            copy_host_file(root, &lib)?;
        }
    }
    if !copied_any || !root.join("usr/bin/sh").exists() {
        return Err(io::Error::other(
            "the host image needs the host's /bin/sh: none was found",
        ));
    }
    Ok(())
}

fn replace_shell_with_host_sh(root: &Path) -> io::Result<()> {
    let host_sh = find_on_host("sh")
        .ok_or_else(|| io::Error::other("busybox-notar needs the host's /bin/sh"))?;
    let target = root.join("bin/sh");
    let _ = fs::remove_file(&target);
    fs::copy(&host_sh, &target).map_err(|e| io_context(e, host_sh.display()))?;
    for lib in shared_libraries(&host_sh)? {
        copy_host_file(root, &lib)?;
    }
    Ok(())
}

fn chown_tree(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    let meta = path.symlink_metadata()?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Resolves `path` (as seen inside the container) under `root`, refusing to leave the root.
pub fn path_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut resolved = root.to_path_buf();
    for component in Path::new(path).components() {
        match component {
            std::path::Component::Normal(c) => resolved.push(c),
            std::path::Component::ParentDir if resolved != root => {
                resolved.pop();
            }
            _ => {}
        }
    }
    Ok(resolved)
}

/// Creates a fresh root for `container` at `root` (which must not exist yet).
pub fn build_root(root: &Path, container: &ContainerTemplate) -> io::Result<()> {
    fs::create_dir_all(root)?;
    base_layout(root)?;
    match container.image {
        Image::Host => build_host(root)?,
        Image::BusyboxNotar => {
            build_busybox(root, false)?;
            // busybox's own sh runs applets through /proc/self/exe even without their links,
            // so a busybox sh would still find `tar`: use the host's plain sh instead.
            replace_shell_with_host_sh(root)?;
        }
        Image::Busybox | Image::BusyboxReadOnly | Image::BusyboxNonroot => {
            build_busybox(root, true)?
        }
    }
    for (path, content) in &container.files {
        let target = path_in_root(root, path)?;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&target, content).map_err(|e| io_context(e, format!("writing `{path}`")))?;
    }
    if container.image == Image::BusyboxNonroot {
        chown_tree(root, NONROOT_ID, NONROOT_ID)?;
    }
    debug_assert!(container.image.is_busybox() || container.image == Image::Host);
    Ok(())
}
