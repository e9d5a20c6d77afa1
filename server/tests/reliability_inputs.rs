//! Bad input, conflicts, verification and pod lifecycle against kubesim:
//! each case asserts the specific message the user gets, and that the
//! engine keeps running afterwards.

mod reliability_common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use kubesim::{Image, ReplaceOrder};
use podloop::convert::kube::{KubeCluster, KubeOptions};
use podloop::engine::{
    ChangeOrigin, Cluster, Health, Input, Level, Output, PodSelector, Problem, TargetSpec,
    TargetState,
};
use reliability_common::{api_pod, EngineSim, Options, API_CONFIG};

async fn with_pod(image: Image, config: &str) -> EngineSim {
    EngineSim::with_pod(api_pod(image), config).await
}

/// `conf.txt` saved and synced as "local v1\n", then rewritten as "edited in
/// the pod\n" by someone in the container; returns the engine, the local
/// file and the container's root.
async fn conf_edited_in_the_pod(config: &str) -> (EngineSim, PathBuf, PathBuf) {
    let mut h = with_pod(Image::Busybox, config).await;
    let file = h.save("conf.txt", b"local v1\n");
    h.quiescent().await;
    let root = h.root_of("api-1", "app");
    std::fs::write(root.join("app/conf.txt"), b"edited in the pod\n").unwrap();
    (h, file, root)
}

/// The report on `conf.txt` (see `conf_edited_in_the_pod`) when the local
/// file replaced the container's edit.
fn assert_overwritten_conflict(problems: &[Problem]) {
    let m = &problems[0].message;
    assert_eq!(problems[0].severity, Level::Warning);
    assert!(
        m.contains("/app/conf.txt changed in the container since podloop wrote it")
            && m.contains("container has 18 bytes sha256 ")
            && m.contains("local is 9 bytes sha256 ")
            && m.ends_with("overwritten with the local file"),
        "{m}"
    );
}

fn assert_skipped_conflict(problems: &[Problem]) {
    assert!(
        problems[0]
            .message
            .ends_with("not overwritten (on_conflict = \"skip\")"),
        "{}",
        problems[0].message
    );
}

fn in_pod(h: &EngineSim, pod: &str, path: &[u8]) -> Option<Vec<u8>> {
    let root = h.root_of(pod, "app");
    std::fs::read(root.join(OsStr::from_bytes(&path[1..]))).ok()
}

#[tokio::test]
async fn an_empty_namespace_means_the_contexts_namespace() {
    let (sim, _dir) = EngineSim::sim().await;
    sim.create_pod(api_pod(Image::Busybox)).await.unwrap();
    let cluster = KubeCluster::new(KubeOptions {
        kubeconfig: Some(sim.kubeconfig_path()),
        context: None,
    })
    .unwrap();
    let spec = TargetSpec {
        context: None,
        namespace: String::new(),
        pods: PodSelector::Labels("app=api".into()),
        container: None,
        all_replicas: true,
    };
    let targets = cluster.resolve(&spec).await.unwrap();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert_eq!(targets[0].namespace, "default");
    assert_eq!(targets[0].pod, "api-1");
}

#[tokio::test]
async fn pod_replacement_new_first_and_old_first_and_restart_are_resynced() {
    let mut h = with_pod(Image::Busybox, API_CONFIG).await;
    h.save("a.txt", b"a");
    h.save("dir/b.txt", b"b");
    h.quiescent().await;
    for order in [ReplaceOrder::NewFirst, ReplaceOrder::OldFirst] {
        let old = h.pods("api-")[0].clone();
        let new = h
            .sim
            .replace_pod("default", &old, order)
            .await
            .unwrap()
            .name;
        let text = format!("resynced 2 files to {new}");
        h.until(|o| matches!(o, Output::Log { text: t, .. } if t.contains(&text)))
            .await;
        h.settled(|s| s.targets.len() == 1 && s.targets[0].pod == new)
            .await;
        assert_eq!(in_pod(&h, &new, b"/app/a.txt").as_deref(), Some(&b"a"[..]));
        assert_eq!(
            in_pod(&h, &new, b"/app/dir/b.txt").as_deref(),
            Some(&b"b"[..])
        );
    }
    // A restart that lost a file (no volume): the manifest diff restores
    // exactly that one.
    let pod = h.pods("api-")[0].clone();
    std::fs::remove_file(h.root_of(&pod, "app").join("app/a.txt")).unwrap();
    h.sim
        .restart_container("default", &pod, "app")
        .await
        .unwrap();
    let text = format!("resynced 1 files to {pod}");
    h.until(|o| matches!(o, Output::Log { text: t, .. } if t.contains(&text)))
        .await;
    h.quiescent().await;
    assert_eq!(in_pod(&h, &pod, b"/app/a.txt").as_deref(), Some(&b"a"[..]));
}

#[tokio::test]
async fn a_conflicting_edit_in_the_container_is_reported_with_both_hashes_then_overwritten() {
    // Someone edits the file in a shell in the pod, then the user saves.
    let (mut h, file, root) = conf_edited_in_the_pod(API_CONFIG).await;
    h.write("conf.txt", b"local v2\n");
    let report = h.sync_all(false).await;
    assert!(report.failures.is_empty(), "{report:?}");
    h.drain();
    let problems = h.problems_for(&file).expect("a conflict diagnostic");
    assert_overwritten_conflict(&problems);
    assert_eq!(
        std::fs::read(root.join("app/conf.txt")).unwrap(),
        b"local v2\n"
    );
}

#[tokio::test]
async fn on_conflict_skip_keeps_the_containers_copy() {
    let config = format!("{API_CONFIG}on_conflict = \"skip\"\n");
    let (mut h, file, root) = conf_edited_in_the_pod(&config).await;
    h.write("conf.txt", b"local v2\n");
    h.sync_all(false).await;
    h.drain();
    let problems = h.problems_for(&file).expect("a conflict diagnostic");
    assert_skipped_conflict(&problems);
    assert_eq!(
        std::fs::read(root.join("app/conf.txt")).unwrap(),
        b"edited in the pod\n"
    );
}

#[tokio::test]
async fn an_ordinary_save_over_a_file_edited_in_the_pod_reports_both_hashes_then_overwrites() {
    let (mut h, file, root) = conf_edited_in_the_pod(API_CONFIG).await;
    // No sync-all, no restart: the save itself checks what it replaces.
    h.save("conf.txt", b"local v2\n");
    h.quiescent().await;
    h.drain();
    let problems = h.problems_for(&file).expect("a conflict diagnostic");
    assert_overwritten_conflict(&problems);
    let m = &problems[0].message;
    assert!(m.contains("podloop wrote sha256 "), "{m}");
    assert_eq!(
        std::fs::read(root.join("app/conf.txt")).unwrap(),
        b"local v2\n"
    );
    // The next save finds what podloop wrote: the report goes away.
    h.save("conf.txt", b"local v3\n");
    h.quiescent().await;
    h.drain();
    assert!(h.problems_for(&file).unwrap_or_default().is_empty());
}

#[tokio::test]
async fn an_ordinary_save_with_on_conflict_skip_leaves_the_pods_copy_until_it_matches() {
    let config = format!("{API_CONFIG}on_conflict = \"skip\"\n");
    let mut h = with_pod(Image::Busybox, &config).await;
    let file = h.save("conf.txt", b"local v1\n");
    h.save("other.txt", b"other v1\n");
    h.quiescent().await;
    let root = h.root_of("api-1", "app");
    std::fs::write(root.join("app/conf.txt"), b"edited in the pod\n").unwrap();
    // One save of the file alone (the one-file path), one in a batch with
    // another file (the tar path): both skip it, the other file lands.
    h.save("conf.txt", b"local v2\n");
    h.quiescent().await;
    let both = vec![
        h.write("conf.txt", b"local v3\n"),
        h.write("other.txt", b"other v2\n"),
    ];
    h.changed(both, ChangeOrigin::Save);
    h.quiescent().await;
    h.drain();
    let problems = h.problems_for(&file).expect("a conflict diagnostic");
    assert_skipped_conflict(&problems);
    assert_eq!(
        std::fs::read(root.join("app/conf.txt")).unwrap(),
        b"edited in the pod\n"
    );
    assert_eq!(
        std::fs::read(root.join("app/other.txt")).unwrap(),
        b"other v2\n"
    );
    // Taking the pod's version locally resolves it.
    h.save("conf.txt", b"edited in the pod\n");
    h.quiescent().await;
    h.drain();
    assert!(h.problems_for(&file).unwrap_or_default().is_empty());
}

/// A folder deleted locally, named alone by the watcher: the container
/// checks each file podloop wrote under it before it goes.
#[tokio::test]
async fn a_folder_deleted_locally_checks_each_file_podloop_wrote_in_it() {
    let skip = format!("{API_CONFIG}on_conflict = \"skip\"\n");
    for (config, kept) in [(API_CONFIG, false), (skip.as_str(), true)] {
        let mut h = with_pod(Image::Busybox, config).await;
        let edited = h.save("lib/conf.txt", b"local v1\n");
        h.save("lib/deep/other.txt", b"other v1\n");
        h.quiescent().await;
        let root = h.root_of("api-1", "app");
        std::fs::write(root.join("app/lib/conf.txt"), b"edited in the pod\n").unwrap();
        let folder = edited.parent().unwrap().to_path_buf();
        std::fs::remove_dir_all(&folder).unwrap();
        h.changed(vec![folder], ChangeOrigin::Watcher);
        h.quiescent().await;
        h.drain();
        let problems = h.problems_for(&edited).expect("a conflict diagnostic");
        let m = &problems[0].message;
        assert!(
            m.contains("/app/lib/conf.txt changed in the container since podloop wrote it")
                && m.contains("deleted locally"),
            "{m}"
        );
        assert!(
            !root.join("app/lib/deep/other.txt").exists(),
            "skip: {kept}"
        );
        let left = std::fs::read(root.join("app/lib/conf.txt")).ok();
        if kept {
            assert_skipped_conflict(&problems);
            assert_eq!(left.as_deref(), Some(&b"edited in the pod\n"[..]));
        } else {
            assert!(!root.join("app/lib").exists(), "{left:?}");
        }
    }
}

#[tokio::test]
async fn check_reports_drift_in_either_direction_and_sends_nothing() {
    let mut h = with_pod(Image::Busybox, API_CONFIG).await;
    h.save("same.txt", b"same");
    h.save("changed.txt", b"mine");
    h.save("gone.txt", b"gone");
    h.quiescent().await;
    let root = h.root_of("api-1", "app");
    std::fs::write(root.join("app/changed.txt"), b"theirs!").unwrap();
    std::fs::remove_file(root.join("app/gone.txt")).unwrap();
    std::fs::write(root.join("app/extra.txt"), b"x").unwrap();
    let execs = h.sim.exec_log().len();
    let report = h.sync_all(true).await;
    let drift = report.drift.join("\n");
    assert_eq!(report.drift.len(), 3, "{drift}");
    assert!(drift.contains("/app/changed.txt: content differs (local 4 bytes sha256 "));
    assert!(drift.contains("container 7 bytes sha256 "));
    assert!(drift.contains("/app/gone.txt: missing in the container"));
    assert!(drift.contains("/app/extra.txt: in the container, not in the local tree"));
    assert_eq!(
        std::fs::read(root.join("app/changed.txt")).unwrap(),
        b"theirs!"
    );
    // One manifest exec, nothing delivered.
    assert_eq!(h.sim.exec_log().len(), execs + 1);
}

#[tokio::test]
async fn forbidden_exec_names_the_rbac_rule_and_recovers_when_allowed() {
    let mut h = with_pod(Image::Busybox, API_CONFIG).await;
    h.sim.faults().deny("create", "pods/exec");
    let file = h.save("a.txt", b"a");
    let problems = h.problems_until(&file, |p| !p.is_empty()).await;
    assert_eq!(problems[0].severity, Level::Error);
    let m = &problems[0].message;
    assert!(
        m.starts_with("not delivered to pod api-1: forbidden (403): cannot `create pods/exec`")
            && m.contains("verbs: [\"create\"]")
            && m.contains("kubectl auth can-i create pods/exec"),
        "{m}"
    );
    h.sim.faults().clear();
    h.save("a.txt", b"a2");
    h.problems_until(&file, |p| p.is_empty()).await;
    assert_eq!(
        in_pod(&h, "api-1", b"/app/a.txt").as_deref(),
        Some(&b"a2"[..])
    );
}

#[tokio::test]
async fn an_expired_token_is_reported_as_unauthorized() {
    let (sim, dir) = EngineSim::sim().await;
    let kubeconfig = std::fs::read_to_string(sim.kubeconfig_path()).unwrap();
    let expired = dir.path().join("expired-kubeconfig");
    std::fs::write(&expired, kubeconfig.replace(&sim.token(), "expired-token")).unwrap();
    let cluster = KubeCluster::new(KubeOptions {
        kubeconfig: Some(expired),
        context: None,
    })
    .unwrap();
    let spec = TargetSpec {
        context: None,
        namespace: "default".into(),
        pods: PodSelector::Labels("app=api".into()),
        container: None,
        all_replicas: true,
    };
    let e = cluster.resolve(&spec).await.unwrap_err().to_string();
    assert!(
        e.starts_with("unauthorized (401) by https://127.0.0.1:")
            && e.contains("probably an expired token"),
        "{e}"
    );
    assert!(!e.contains(&sim.token()));
}

#[tokio::test]
async fn missing_kubeconfig_and_unknown_context_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-kubeconfig");
    let e = KubeCluster::new(KubeOptions {
        kubeconfig: Some(missing.clone()),
        context: None,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    let (sim, _sim_dir) = EngineSim::sim().await;
    let e = KubeCluster::new(KubeOptions {
        kubeconfig: Some(sim.kubeconfig_path()),
        context: Some("nope".into()),
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("`nope`") && e.contains("kubesim"), "{e}");
}

#[tokio::test]
async fn a_read_only_container_filesystem_is_reported_with_the_fix() {
    let mut h = with_pod(Image::BusyboxReadOnly, API_CONFIG).await;
    let file = h.save("a.txt", b"a");
    let problems = h.problems_until(&file, |p| !p.is_empty()).await;
    let m = &problems[0].message;
    assert!(
        m.starts_with("not delivered to pod api-1: cannot write under `/app`")
            && m.contains("read-only filesystem; mount a writable volume"),
        "{m}"
    );
    let s = h.quiescent().await;
    assert_eq!(s.health, Health::Error);
    assert_eq!(s.targets[0].state, TargetState::Error);
}

#[tokio::test]
async fn local_bad_inputs_each_get_their_message_and_nothing_stops() {
    let config = format!("max_file_size = 1000\n{API_CONFIG}");
    let mut h = with_pod(Image::Busybox, &config).await;

    // Above max_file_size: skipped with a warning.
    let big = h.save("big.bin", &[7u8; 5000]);
    let p = h.problems_until(&big, |p| !p.is_empty()).await;
    assert_eq!(p[0].severity, Level::Warning);
    assert_eq!(
        p[0].message,
        "not synced: 5.0 kB is above max_file_size (1.0 kB); raise `max_file_size` in podloop.toml or exclude it"
    );

    // A symlink out of the workspace: not followed, not sent.
    let link = h.path("passwd");
    std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
    h.changed(vec![link.clone()], ChangeOrigin::Save);
    let p = h.problems_until(&link, |p| !p.is_empty()).await;
    assert_eq!(
        p[0].message,
        "not synced: symlink to `/etc/passwd` points outside the mapping"
    );

    // Outside every mapping: ignored, said once at debug level.
    let outside = h.workspace.join("notes.txt");
    std::fs::write(&outside, "x").unwrap();
    h.changed(vec![outside.clone()], ChangeOrigin::Save);
    h.changed(vec![outside.clone()], ChangeOrigin::Save);

    // Deleted between the save and the sync: nothing to send, no error.
    let vanished = h.save("vanished.txt", b"v");
    std::fs::remove_file(&vanished).unwrap();

    // A non-UTF-8 name travels as bytes.
    let latin1 = h.src().join(OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&latin1, b"bytes").unwrap();
    h.changed(vec![latin1.clone()], ChangeOrigin::Save);

    let s = h.quiescent().await;
    h.drain();
    assert_eq!(
        in_pod(&h, "api-1", b"/app/caf\xe9.txt").as_deref(),
        Some(&b"bytes"[..])
    );
    assert_eq!(in_pod(&h, "api-1", b"/app/big.bin"), None);
    assert_eq!(in_pod(&h, "api-1", b"/app/passwd"), None);
    assert_eq!(in_pod(&h, "api-1", b"/app/vanished.txt"), None);
    let root = h.root_of("api-1", "app");
    assert!(std::fs::symlink_metadata(root.join("app/passwd")).is_err());
    let ignored: Vec<&Output> = h
        .seen
        .iter()
        .filter(|o| matches!(o, Output::Log { level: Level::Debug, text } if text.contains("notes.txt") && text.ends_with("outside every mapping")))
        .collect();
    assert_eq!(ignored.len(), 1, "{ignored:?}");
    assert!(h.problems_for(&vanished).is_none_or(|p| p.is_empty()));
    // Warnings only: the server is fine and keeps syncing.
    assert_ne!(s.health, Health::Error, "{s:?}");
    h.save("after.txt", b"still here");
    h.quiescent().await;
    assert_eq!(
        in_pod(&h, "api-1", b"/app/after.txt").as_deref(),
        Some(&b"still here"[..])
    );
}

#[tokio::test]
async fn invalid_and_unreadable_config_files_are_problems_on_the_file() {
    let (sim, dir) = EngineSim::sim().await;
    let mut h = EngineSim::start(
        sim,
        dir,
        Options {
            config: "[[sync]]\nlocal = \"src\"\nremote = \"app\"\nselector = \"app=api\"\n".into(),
            warm_sessions: true,
            own_file_watcher: false,
        },
    );
    let config: PathBuf = h.workspace.join("podloop.toml");
    let p = h.problems_until(&config, |p| !p.is_empty()).await;
    assert_eq!(p[0].line, 2, "{p:?}");
    assert_eq!(
        p[0].message,
        "`sync[0].remote`: `app` is relative: `remote` must be an absolute folder in the container, e.g. \"/app/src\""
    );

    std::fs::write(&config, "namespace = \"dev\"\n[[sync]\n").unwrap();
    h.engine.send(Input::ConfigChanged(config.clone()));
    let p = h
        .problems_until(&config, |p| {
            p.first()
                .is_some_and(|p| p.message.contains("invalid TOML"))
        })
        .await;
    assert_eq!(p[0].line, 1);

    // Unreadable (root reads any mode, so make it a folder).
    std::fs::remove_file(&config).unwrap();
    std::fs::create_dir(&config).unwrap();
    h.engine.send(Input::ConfigChanged(config.clone()));
    let p = h
        .problems_until(&config, |p| {
            p.first()
                .is_some_and(|p| p.message.starts_with("cannot read the config file"))
        })
        .await;
    assert_eq!(p[0].severity, Level::Error);
    let s = h.status().await;
    assert_eq!(s.health, Health::Error);
}
