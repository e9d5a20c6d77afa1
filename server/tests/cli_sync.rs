//! `podloop sync` / `status` as a user runs them: the real binary against
//! kubesim (real TLS, exec over WebSocket, tar into a chrooted container).
//! What landed is read through kubesim's view of the container's root, never
//! through podloop.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kubesim::{Image, PodTemplate, Sim, SimOptions};

const CONFIG: &str = r#"[[sync]]
name = "api"
local = "src"
remote = "/app"
selector = "app=api"
exclude = ["*.log", "cache/**"]
"#;

struct Setup {
    sim: Sim,
    ws: tempfile::TempDir,
    _sim_dir: tempfile::TempDir,
}

async fn setup(image: Image, pods: &[&str]) -> Setup {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(sim_dir.path())).await.unwrap();
    for pod in pods {
        sim.create_pod(
            PodTemplate::new(pod)
                .label("app", "api")
                .container("app", image)
                .file("/app/cache/keep.bin", "excluded: must survive")
                .file("/app/stale.txt", "not in the local tree"),
        )
        .await
        .unwrap();
    }
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("podloop.toml"), CONFIG).unwrap();
    std::fs::create_dir_all(ws.path().join("src")).unwrap();
    Setup {
        sim,
        ws,
        _sim_dir: sim_dir,
    }
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Setup {
    fn src(&self) -> PathBuf {
        self.ws.path().join("src")
    }

    async fn podloop(&self, args: &[&str]) -> Outcome {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_podloop"))
            .args(args)
            .arg("--kubeconfig")
            .arg(self.sim.kubeconfig_path())
            .current_dir(self.ws.path())
            .env_remove("KUBECONFIG")
            .output()
            .await
            .unwrap();
        let o = Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!(
            "$ podloop {args:?} -> {}\n{}\n{}",
            o.code, o.stdout, o.stderr
        );
        o
    }

    fn app_root(&self, pod: &str) -> PathBuf {
        self.sim
            .container_root("default", pod, "app")
            .unwrap()
            .join("app")
    }
}

#[derive(Debug, PartialEq)]
enum Node {
    File(Vec<u8>, bool),
    Link(Vec<u8>),
}

/// Every file and link under `root`, by raw relative name, skipping what
/// `skip` says (excluded names locally; podloop's staging folders remotely).
fn tree(root: &Path, skip: &dyn Fn(&[u8]) -> bool) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in std::fs::read_dir(root.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let name = rel.as_os_str().as_bytes().to_vec();
            if skip(&name) {
                continue;
            }
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(entry.path()).unwrap();
                out.insert(name, Node::Link(target.as_os_str().as_bytes().to_vec()));
            } else if meta.is_dir() {
                stack.push(rel);
            } else {
                let exec = meta.permissions().mode() & 0o111 != 0;
                out.insert(name, Node::File(std::fs::read(entry.path()).unwrap(), exec));
            }
        }
    }
    out
}

fn local_skip(name: &[u8]) -> bool {
    name.ends_with(b".log")
}

fn remote_skip(name: &[u8]) -> bool {
    name.starts_with(b".podloop-stage") || name.starts_with(b"cache")
}

fn write(root: &Path, rel: &[u8], content: &[u8]) -> PathBuf {
    let p = root.join(OsStr::from_bytes(rel));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    p
}

fn hostile_tree(src: &Path) {
    write(src, b"with space.txt", b"spaces");
    write(src, "ünïcødé-文件.txt".as_bytes(), b"unicode");
    write(src, b"new\nline.txt", b"newline");
    write(src, b"$(touch pwned).txt", b"subst");
    write(src, b"$(touch /pwned)", b"subst with a slash");
    write(src, b"`touch pwned2`;rm -rf x", b"backticks");
    write(src, b"-rf", b"dash");
    write(src, b"empty", b"");
    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    write(src, b"big.bin", &big);
    let script = write(src, b"run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(src, b"a/b/c/deep.txt", b"deep");
    write(src, b"gone/one.txt", b"1");
    write(src, b"gone/sub/two.txt", b"2");
    write(src, b"old-name.txt", b"renamed content");
    write(src, b"debug.log", b"excluded");
    std::os::unix::fs::symlink("run.sh", src.join("link-to-script")).unwrap();
}

async fn hostile_round_trip(image: Image) {
    let s = setup(image, &["api-1"]).await;
    let src = s.src();
    hostile_tree(&src);
    let out = s.podloop(&["sync", "--all"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("api → default/api-1 (app): ok"),
        "{}",
        out.stdout
    );
    assert_eq!(
        tree(&s.app_root("api-1"), &remote_skip),
        tree(&src, &local_skip)
    );
    let root = s.sim.container_root("default", "api-1", "app").unwrap();
    assert!(!root.join("pwned").exists() && !root.join("app/pwned").exists());
    assert!(!root.join("app/pwned2").exists());
    assert!(!Path::new("/pwned").exists());
    assert!(!s.app_root("api-1").join("debug.log").exists());
    assert_eq!(
        std::fs::read(s.app_root("api-1").join("cache/keep.bin")).unwrap(),
        b"excluded: must survive"
    );
    assert!(
        !s.app_root("api-1").join("stale.txt").exists(),
        "extra files are deleted"
    );

    // Deletes of a file and a folder, a rename, an edit: a second sync --all.
    std::fs::remove_dir_all(src.join("gone")).unwrap();
    std::fs::remove_file(src.join("empty")).unwrap();
    std::fs::rename(src.join("old-name.txt"), src.join("new-name.txt")).unwrap();
    write(&src, b"with space.txt", b"edited");
    let out = s.podloop(&["sync", "--all"]).await;
    assert_eq!(out.code, 0);
    // Two changed files, plus the link: a manifest lists regular files only,
    // so a fresh process cannot tell that the link is already there.
    assert!(
        out.stdout.contains("sent 3 files, deleted 3"),
        "{}",
        out.stdout
    );
    assert_eq!(
        tree(&s.app_root("api-1"), &remote_skip),
        tree(&src, &local_skip)
    );
    assert!(
        !s.app_root("api-1").join("gone").exists(),
        "the folder itself is removed"
    );

    // Nothing differs now.
    let out = s.podloop(&["sync", "--all", "--check"]).await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stdout.contains("0 differences"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_all_of_a_hostile_tree_busybox() {
    hostile_round_trip(Image::Busybox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_all_of_a_hostile_tree_host_image() {
    hostile_round_trip(Image::Host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_paths_two_replicas_and_check_reports_drift() {
    let s = setup(Image::Busybox, &["api-1", "api-2"]).await;
    write(&s.src(), b"one.txt", b"one");
    write(&s.src(), b"two.txt", b"two");
    let out = s.podloop(&["sync", "src/one.txt"]).await;
    assert_eq!(out.code, 0);
    for pod in ["api-1", "api-2"] {
        assert_eq!(
            std::fs::read(s.app_root(pod).join("one.txt")).unwrap(),
            b"one"
        );
        assert!(
            !s.app_root(pod).join("two.txt").exists(),
            "only the named path is sent"
        );
    }
    // Someone edits a file in the container: --check reports it, exit 1.
    std::fs::write(s.app_root("api-2").join("one.txt"), b"edited in a shell").unwrap();
    let out = s.podloop(&["sync", "--all", "--check"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains("api-2") && out.stdout.contains("/app/one.txt: content differs"),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains("/app/two.txt: missing in the container"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_without_a_config_file() {
    let s = setup(Image::Busybox, &["api-1"]).await;
    write(&s.src(), b"x/y.txt", b"adhoc");
    let out = s
        .podloop(&[
            "sync",
            "-n",
            "default",
            "-l",
            "app=api",
            "-c",
            "app",
            "./src:/srv/code",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let root = s.sim.container_root("default", "api-1", "app").unwrap();
    assert_eq!(
        std::fs::read(root.join("srv/code/x/y.txt")).unwrap(),
        b"adhoc"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_cases_have_specific_messages() {
    let s = setup(Image::Busybox, &["api-1"]).await;
    write(&s.src(), b"a.txt", b"a");

    // No pod matches the selector.
    std::fs::write(
        s.ws.path().join("podloop.toml"),
        CONFIG.replace("app=api", "app=nothing"),
    )
    .unwrap();
    let out = s.podloop(&["sync", "--all"]).await;
    assert_eq!(out.code, 1);
    assert!(
        format!("{}{}", out.stdout, out.stderr).contains("no pods match `app=nothing`"),
        "{}{}",
        out.stdout,
        out.stderr
    );

    // A config error names file, line and key.
    std::fs::write(
        s.ws.path().join("podloop.toml"),
        format!("{CONFIG}selectr = \"x\"\n"),
    )
    .unwrap();
    let out = s.podloop(&["sync", "--all"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("podloop.toml:7:1: `sync[0].selectr`: unknown key: did you mean `selector`?"),
        "{}",
        out.stderr
    );

    // A relative remote.
    std::fs::write(
        s.ws.path().join("podloop.toml"),
        CONFIG.replace("/app", "app"),
    )
    .unwrap();
    let out = s.podloop(&["sync", "--all"]).await;
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("podloop.toml:4:1: `sync[0].remote`"),
        "{}",
        out.stderr
    );

    // Unknown context.
    std::fs::write(s.ws.path().join("podloop.toml"), CONFIG).unwrap();
    let out = s.podloop(&["sync", "--all", "--context", "nope"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("nope"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_without_tar_is_reported_with_the_fix() {
    let s = setup(Image::BusyboxNotar, &["api-1"]).await;
    write(&s.src(), b"a.txt", b"a");
    let out = s.podloop(&["sync", "src/a.txt"]).await;
    assert_eq!(out.code, 1);
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains("FAILED") && all.contains("tar"), "{all}");
    let out = s.podloop(&["status"]).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("default/api-1 container app: Ready; cannot sync")
            && out.stdout.contains("tar"),
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_mappings_and_targets() {
    let s = setup(Image::Busybox, &["api-1"]).await;
    let out = s.podloop(&["status"]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("api: "), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("default/api-1 container app: Ready; sh, tar: ok"),
        "{}",
        out.stdout
    );
}
