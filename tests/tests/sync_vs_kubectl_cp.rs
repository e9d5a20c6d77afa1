//! Differential test: the same local tree pushed by `podloop sync` into one
//! pod and by the real `kubectl cp` into another must leave the same regular
//! files, with the same bytes and modes. Both pods are read through kubesim's
//! view of their roots, never through either tool.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use kubesim::{Image, PodTemplate};
use podloop_e2e::{
    kubectl_command, pseudo_random_bytes, require_kubectl, run_with_deadline, workspace_binary,
    TestSim,
};

const DEADLINE: Duration = Duration::from_secs(120);

/// Relative path (as bytes) -> (content, permission bits), for every regular
/// file under `root`. Symlinks are left out: `kubectl cp` does not carry them
/// faithfully, and podloop's handling of them is tested elsewhere.
fn regular_files(root: &Path) -> BTreeMap<Vec<u8>, (Vec<u8>, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, (Vec<u8>, u32)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            if meta.is_dir() {
                walk(root, &entry.path(), out);
            } else if meta.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                let content = std::fs::read(entry.path()).unwrap();
                out.insert(rel, (content, meta.permissions().mode() & 0o7777));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podloop_sync_and_kubectl_cp_leave_the_same_files_and_modes() {
    let Some(kubectl) = require_kubectl("1.33") else {
        return;
    };
    let Some(sim) = TestSim::with_busybox_pods([]).await else {
        return;
    };
    for (name, app) in [("by-podloop", "podloop"), ("by-kubectl", "kubectl")] {
        sim.create_pod(
            PodTemplate::new(name)
                .label("app", app)
                .container("app", Image::Busybox),
        )
        .await
        .unwrap();
    }

    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("tree");
    write(&tree, "plain.txt", b"hello\n", 0o644);
    write(&tree, "with space.txt", b"spaces", 0o644);
    write(&tree, "ünïcødé/ファイル.txt", "unicode ✓".as_bytes(), 0o644);
    write(&tree, "$(touch pwned)", b"not a command", 0o644);
    write(&tree, "line\nbreak", b"a newline in the name", 0o644);
    write(&tree, "empty", b"", 0o644);
    write(&tree, "bin/run.sh", b"#!/bin/sh\necho run\n", 0o755);
    write(
        &tree,
        "a/b/c/deep.bin",
        &pseudo_random_bytes(1 << 20, 7),
        0o644,
    );
    write(&tree, "private.key", b"secret", 0o600);

    let podloop = tokio::task::spawn_blocking(|| workspace_binary("podloop"))
        .await
        .unwrap();
    let mapping = format!("{}:/data", tree.display());
    let synced = run_with_deadline(
        tokio::process::Command::new(&podloop)
            .args(["sync", "-n", "default", "-l", "app=podloop", &mapping])
            .arg("--kubeconfig")
            .arg(sim.kubeconfig_path())
            .env_remove("KUBECONFIG"),
        None,
        DEADLINE,
    )
    .await;
    assert!(
        synced.status.success(),
        "podloop sync failed:\n{}\n{}",
        String::from_utf8_lossy(&synced.stdout),
        String::from_utf8_lossy(&synced.stderr)
    );

    let copied = run_with_deadline(
        kubectl_command(&kubectl, &sim.kubeconfig_path())
            .args(["cp", "-c", "app"])
            .arg(&tree)
            .arg("by-kubectl:/data"),
        None,
        DEADLINE,
    )
    .await;
    assert!(
        copied.status.success(),
        "kubectl cp failed:\n{}",
        String::from_utf8_lossy(&copied.stderr)
    );

    let local_files = regular_files(&tree);
    let by_podloop = regular_files(
        &sim.container_root("default", "by-podloop", "app")
            .unwrap()
            .join("data"),
    );
    let by_kubectl = regular_files(
        &sim.container_root("default", "by-kubectl", "app")
            .unwrap()
            .join("data"),
    );

    let names = |m: &BTreeMap<Vec<u8>, (Vec<u8>, u32)>| {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&by_kubectl),
        names(&local_files),
        "kubectl cp copied a different set of files"
    );
    assert_eq!(
        names(&by_podloop),
        names(&by_kubectl),
        "podloop and kubectl cp disagree on the files"
    );
    for (rel, (content, mode)) in &by_kubectl {
        let (podloop_content, podloop_mode) = &by_podloop[rel];
        let name = String::from_utf8_lossy(rel);
        assert!(podloop_content == content, "`{name}`: contents differ");
        assert_eq!(
            format!("{podloop_mode:o}"),
            format!("{mode:o}"),
            "`{name}`: podloop wrote mode {podloop_mode:o}, kubectl cp wrote {mode:o}"
        );
    }
    for pod in ["by-podloop", "by-kubectl"] {
        let root = sim.container_root("default", pod, "app").unwrap();
        assert!(
            !root.join("pwned").exists(),
            "a file name ran as a command in {pod}"
        );
    }
    sim.shutdown().await;
}
