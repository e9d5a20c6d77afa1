//! Pod volumes (`emptyDir`): a folder per volume under the pod's directory, a tmpfs of
//! `sizeLimit` when `medium: Memory`, bind-mounted at each container's `mountPath`.
//!
//! The mounts live in kubesim's own mount namespace, so the host (and a test reading
//! `container_root`) sees what the container sees; each pod's namespace gets its copy when PID 1
//! starts. kubesim unmounts them when the pod is removed and when the sim stops: nothing may
//! outlive the sim, or removing its folder fails with "device or resource busy".
use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::bail;

use crate::image::path_in_root;
use crate::template::PodTemplate;

pub const MEMORY_MEDIUM: &str = "Memory";

/// Bytes in a Kubernetes quantity such as `64Ki`, `1Mi`, `100k`, `1G` or `65536`.
pub fn parse_quantity(text: &str) -> Option<u64> {
    const SUFFIXES: &[(&str, u64)] = &[
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (digits, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| text.strip_suffix(suffix).map(|d| (d, *factor)))
        .unwrap_or((text, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(factor)
}

fn valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Rejects what the apiserver would reject, and what kubesim cannot honour, before anything
/// is built.
pub fn validate(template: &PodTemplate) -> anyhow::Result<()> {
    let mut names = HashSet::new();
    for volume in &template.volumes {
        if !valid_volume_name(&volume.name) || !names.insert(volume.name.as_str()) {
            bail!(
                "volume name `{}` is invalid or repeated: use unique lowercase DNS labels",
                volume.name
            );
        }
        let empty_dir = &volume.empty_dir;
        match (empty_dir.medium.as_str(), &empty_dir.size_limit) {
            (MEMORY_MEDIUM, Some(limit)) if parse_quantity(limit).is_none_or(|n| n == 0) => bail!(
                "volume `{}`: sizeLimit `{limit}` is not a positive quantity: write e.g. 64Ki, 1Mi or 65536",
                volume.name
            ),
            (MEMORY_MEDIUM, _) | ("", None) => {}
            ("", Some(_)) => bail!(
                "volume `{}`: a disk emptyDir's sizeLimit is enforced by eviction, which kubesim does not simulate; use `medium: Memory` for a volume that fills up",
                volume.name
            ),
            (other, _) => bail!(
                "volume `{}`: emptyDir medium `{other}` is not supported: use \"\" or \"Memory\"",
                volume.name
            ),
        }
    }
    for container in &template.containers {
        let mut paths = HashSet::new();
        for mount in &container.volume_mounts {
            if !names.contains(mount.name.as_str()) {
                bail!(
                    "container `{}` mounts volume `{}`, which the pod does not declare in `volumes`",
                    container.name,
                    mount.name
                );
            }
            let clean = Path::new(&mount.mount_path);
            if !clean.is_absolute()
                || clean.parent().is_none()
                || clean
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                bail!(
                    "container `{}`: mountPath `{}` must be an absolute folder other than `/`, without `..`",
                    container.name,
                    mount.mount_path
                );
            }
            if !paths.insert(clean.components().collect::<PathBuf>()) {
                bail!(
                    "container `{}`: two volumes are mounted at `{}`",
                    container.name,
                    mount.mount_path
                );
            }
        }
    }
    Ok(())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other(format!("{} contains a NUL byte", path.display())))
}

fn mount(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> io::Result<()> {
    let source_c = c_path(source)?;
    let target_c = c_path(target)?;
    let fstype_c = fstype
        .map(CString::new)
        .transpose()
        .map_err(io::Error::other)?;
    let data_c = data
        .map(CString::new)
        .transpose()
        .map_err(io::Error::other)?;
    // SAFETY: every pointer is a NUL-terminated string alive for the call, or null.
    let rc = unsafe {
        libc::mount(
            source_c.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags as libc::c_ulong,
            data_c
                .as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "mounting {} at {}: {e} (kubesim needs root to mount volumes)",
                source.display(),
                target.display()
            ),
        ));
    }
    Ok(())
}

/// Unmounts `target`; a busy mount (a shell's cwd inside it) is detached instead, so that it
/// disappears from the mount table at once.
pub fn unmount(target: &Path) {
    let Ok(target_c) = c_path(target) else {
        return;
    };
    // SAFETY: a NUL-terminated path alive for the call.
    let mut rc = unsafe { libc::umount2(target_c.as_ptr(), 0) };
    if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
        // SAFETY: as above.
        rc = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) };
    }
    if rc != 0 {
        let e = io::Error::last_os_error();
        // Already gone (the folder was removed, or never became a mount point): nothing to do.
        if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            tracing::warn!("unmounting {}: {e}", target.display());
        }
    }
}

/// Creates and mounts the pod's volumes, then mounts them into each container's root (built
/// already). `record` gets every mount point as soon as it is mounted, so that whoever cleans
/// up finds it even if a later step fails.
pub fn mount_all(
    pod_dir: &Path,
    template: &PodTemplate,
    mut record: impl FnMut(PathBuf),
) -> io::Result<()> {
    for volume in &template.volumes {
        let dir = pod_dir.join("volumes").join(&volume.name);
        fs::create_dir_all(&dir)?;
        if volume.empty_dir.medium == MEMORY_MEDIUM {
            let mut options = String::from("mode=0777");
            if let Some(bytes) = volume
                .empty_dir
                .size_limit
                .as_deref()
                .and_then(parse_quantity)
            {
                options.push_str(&format!(",size={bytes}"));
            }
            mount(Path::new("tmpfs"), &dir, Some("tmpfs"), 0, Some(&options))?;
            record(dir);
        } else {
            // The kubelet makes emptyDir folders world-writable: any container user can write.
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o777))?;
        }
    }
    for container in &template.containers {
        let root = pod_dir
            .join("containers")
            .join(&container.name)
            .join("root");
        for volume_mount in &container.volume_mounts {
            let source = pod_dir.join("volumes").join(&volume_mount.name);
            let target = path_in_root(&root, &volume_mount.mount_path)?;
            fs::create_dir_all(&target)?;
            mount(&source, &target, None, libc::MS_BIND, None)?;
            record(target);
        }
    }
    Ok(())
}

/// Unmounts in reverse order of mounting: container binds before the volumes under them.
pub fn unmount_all(mounts: &[PathBuf]) {
    for target in mounts.iter().rev() {
        unmount(target);
    }
}

/// Names the process that owns a sim folder's mounts: `PID STARTTIME`, the start time (from
/// `/proc/PID/stat`) telling a live owner from a reused pid.
pub const OWNER_FILE: &str = "kubesim.owner";

fn process_start_time(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the parenthesised command name (which may hold spaces).
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)
        .map(String::from)
}

pub fn owner_line() -> String {
    let pid = std::process::id();
    format!("{pid} {}", process_start_time(pid).unwrap_or_default())
}

fn owner_alive(line: &str) -> bool {
    let mut parts = line.split_whitespace();
    let (Some(pid), Some(start)) = (parts.next(), parts.next()) else {
        return false;
    };
    pid.parse()
        .ok()
        .and_then(process_start_time)
        .is_some_and(|now| now == start)
}

/// A mount point as `/proc/self/mountinfo` writes it: space, tab, newline and backslash as
/// `\ooo` octal escapes.
fn unescape_mount_point(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Unmounts volumes that a killed kubesim left behind (a killed process runs no `Drop`):
/// mounts under some `SIMDIR/pods/` whose `SIMDIR/kubesim.owner` names a process that is gone.
/// Returns how many it unmounted.
pub fn sweep_stale_mounts() -> usize {
    let Ok(table) = fs::read_to_string("/proc/self/mountinfo") else {
        return 0;
    };
    let points: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mount_point)
        .collect();
    let mut swept = 0;
    // Newest first: a container's bind goes before the volume under it.
    for point in points.iter().rev() {
        let Some(sim_dir) = point
            .ancestors()
            .find(|a| a.file_name().is_some_and(|n| n == "pods"))
            .and_then(Path::parent)
        else {
            continue;
        };
        let Ok(owner) = fs::read_to_string(sim_dir.join(OWNER_FILE)) else {
            continue;
        };
        if !owner_alive(&owner) {
            tracing::info!(
                "unmounting {} left by a kubesim that is gone",
                point.display()
            );
            unmount(point);
            swept += 1;
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_unescaped_and_owners_checked() {
        assert_eq!(
            unescape_mount_point("/tmp/a\\040b/c\\134d"),
            PathBuf::from("/tmp/a b/c\\d")
        );
        assert!(owner_alive(&owner_line()));
        assert!(!owner_alive("1 not-its-start-time"));
        assert!(!owner_alive(""));
    }

    #[test]
    fn quantities_in_binary_and_decimal_units() {
        assert_eq!(parse_quantity("64Ki"), Some(65_536));
        assert_eq!(parse_quantity("1Mi"), Some(1_048_576));
        assert_eq!(parse_quantity("100k"), Some(100_000));
        assert_eq!(parse_quantity("2G"), Some(2_000_000_000));
        assert_eq!(parse_quantity("65536"), Some(65_536));
        for bad in ["", "Ki", "64KiB", "-1", "1.5Mi", "64 Ki"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }
}
