//! Container processes: PID 1 in fresh pid+mount namespaces chrooted into the root, and execs
//! that join those namespaces.
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::image::NONROOT_ID;
use crate::template::Image;

pub const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs inside the new namespaces, before `chroot`: mounts what a container runtime would.
/// Paths and the command arrive as positional arguments so that no path is ever parsed as shell.
const INIT_SCRIPT: &str = r#"set -e
root="$1"; command="$2"; readonly_root="$3"; userspec="$4"
if [ "$readonly_root" = 1 ]; then
  # --rbind carries the volumes mounted under the root along, writable, as a
  # readOnlyRootFilesystem pod keeps its emptyDirs writable.
  mount --rbind "$root" "$root"
  mount -o remount,bind,ro "$root"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
fi
mount -t proc proc "$root/proc"
for dev in null zero random urandom full; do
  mount --bind "/dev/$dev" "$root/dev/$dev"
done
if [ -n "$userspec" ]; then
  exec chroot --userspec="$userspec" "$root" /bin/sh -c "$command"
fi
exec chroot "$root" /bin/sh -c "$command"
"#;

/// PID 1's command when the template gives none: sleep until told to stop, and stop at once.
pub const DEFAULT_COMMAND: &str =
    "trap 'exit 0' TERM INT; while true; do sleep 3600 & wait $!; done";

fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe; it only changes this child's death signal.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

pub struct MainProcess {
    /// The `unshare` process; its exit status is PID 1's.
    pub child: Child,
    /// PID 1 of the container, as the host sees it.
    pub host_pid: u32,
}

fn first_child_of(pid: u32) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

fn has_entered_root(pid: u32, root: &Path) -> bool {
    fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == root)
}

/// Starts PID 1 for a container and returns once it runs inside its root.
pub async fn spawn_main(
    root: &Path,
    image: Image,
    command: &str,
    hostname: &str,
    log_file: &Path,
) -> io::Result<MainProcess> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)?;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--mount",
        "--fork",
        "--kill-child",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        INIT_SCRIPT,
        "kubesim-init",
    ])
    .arg(root)
    .arg(command)
    .arg(if image == Image::BusyboxReadOnly {
        "1"
    } else {
        "0"
    })
    .arg(if image == Image::BusyboxNonroot {
        format!("{NONROOT_ID}:{NONROOT_ID}")
    } else {
        String::new()
    })
    .env_clear()
    .env("PATH", CONTAINER_PATH)
    .env("HOSTNAME", hostname)
    .env(
        "HOME",
        if image == Image::BusyboxNonroot {
            "/home/app"
        } else {
            "/root"
        },
    )
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log)
    .kill_on_drop(true);
    set_parent_death_signal(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "starting `unshare` for a pod: {e} (kubesim needs util-linux `unshare` and root)"
            ),
        )
    })?;
    let unshare_pid = child
        .id()
        .ok_or_else(|| io::Error::other("unshare exited at once"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = first_child_of(unshare_pid) {
            if has_entered_root(pid, root) {
                return Ok(MainProcess {
                    child,
                    host_pid: pid,
                });
            }
        }
        if let Some(status) = child.try_wait()? {
            // A command that exits at once is still a start; the supervisor sees the exit.
            if status.success() || status.code().is_some() {
                return Ok(MainProcess { child, host_pid: 0 });
            }
            return Err(io::Error::other(format!(
                "pod init exited with {status} before entering {}; see its log {}",
                root.display(),
                log_file.display()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "pod init did not enter {} within 10s; see its log {}",
                root.display(),
                log_file.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A process started inside a running container, as `kubectl exec` starts it.
pub fn spawn_exec(
    host_pid: u32,
    image: Image,
    command: &[String],
    stdin: bool,
    stdout: bool,
    stderr: bool,
) -> io::Result<Child> {
    let mut cmd = Command::new("nsenter");
    cmd.arg("-t")
        .arg(host_pid.to_string())
        .args(["-p", "-m", "-r", "-w"]);
    let home = if image == Image::BusyboxNonroot {
        cmd.arg(format!("--setuid={NONROOT_ID}"))
            .arg(format!("--setgid={NONROOT_ID}"));
        "/home/app"
    } else {
        "/root"
    };
    cmd.arg("--")
        .args(command)
        .env_clear()
        .env("PATH", CONTAINER_PATH)
        .env("HOME", home)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(if stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        // Own process group: aborting an exec kills nsenter and the process it forked.
        .process_group(0)
        .kill_on_drop(false);
    set_parent_death_signal(&mut cmd);
    cmd.spawn()
}

pub fn kill_process_group(pgid: u32, signal: i32) {
    // SAFETY: plain syscall on a pid we started.
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

pub fn kill_pid(pid: u32, signal: i32) {
    if pid == 0 {
        return;
    }
    // SAFETY: plain syscall on a pid we started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

pub fn log_path(dir: &Path, container: &str, run: u32) -> PathBuf {
    dir.join(format!("{container}.{run}.log"))
}
