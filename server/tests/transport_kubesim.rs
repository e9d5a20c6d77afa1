//! The kube transport against kubesim: real TLS, token, exec over WebSocket,
//! busybox and host images. What lands in a container is read through
//! kubesim (`container_root`), never through podloop.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::tree::{file, paths, tree, Node};
use kubesim::{CutMode, Image, PodTemplate, ReplaceOrder, Sim, SimOptions};
use podloop::convert::kube::{KubeCluster, KubeOptions};
use podloop::engine::{
    Batch, Cluster, ClusterError, Entry, Op, PodSelector, RelPath, Target, TargetSpec,
};
use podloop::transport::session::ContainerRefKey;
use podloop::transport::{
    ContainerRef, ContextClient, DeliverOutcome, SessionKey, SessionPool, TransportError, Upload,
};

struct Fixture {
    sim: Sim,
    cluster: KubeCluster,
    _dir: tempfile::TempDir,
    local: PathBuf,
}

async fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(dir.path().join("sim")))
        .await
        .unwrap();
    let cluster = KubeCluster::new(KubeOptions {
        kubeconfig: Some(sim.kubeconfig_path()),
        context: None,
    })
    .unwrap();
    let local = dir.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    Fixture {
        sim,
        cluster,
        _dir: dir,
        local,
    }
}

fn rel(bytes: &[u8]) -> RelPath {
    RelPath::from_relative(Path::new(OsStr::from_bytes(bytes))).expect("valid relative path")
}

fn spec(selector: &str) -> TargetSpec {
    TargetSpec {
        context: None,
        namespace: "default".into(),
        pods: PodSelector::Labels(selector.into()),
        container: None,
        all_replicas: true,
    }
}

async fn target_of(f: &Fixture, selector: &str) -> Target {
    let targets = f.cluster.resolve(&spec(selector)).await.unwrap();
    assert_eq!(targets.len(), 1, "{targets:?}");
    targets.into_iter().next().unwrap()
}

/// `api-0`, labelled `app=api`, with one container `api`: the pod most tests
/// deliver to (give it files or a command before creating it).
fn api_pod(image: Image) -> PodTemplate {
    PodTemplate::new("api-0")
        .label("app", "api")
        .container("api", image)
}

impl Fixture {
    async fn create(&self, pod: PodTemplate) {
        self.sim.create_pod(pod).await.unwrap();
    }

    /// Creates `pod` (an `api_pod`) and returns it as the one `app=api` target.
    async fn create_api_target(&self, pod: PodTemplate) -> Target {
        self.create(pod).await;
        target_of(self, "app=api").await
    }
}

/// The text of a permanent error; any other outcome fails the test.
fn permanent_text(err: ClusterError) -> String {
    match err {
        ClusterError::Permanent(text) => text,
        other => panic!("expected permanent: {other:?}"),
    }
}

struct BatchBuilder<'a> {
    local: &'a Path,
    entries: Vec<Entry>,
    counter: usize,
}

impl<'a> BatchBuilder<'a> {
    fn new(local: &'a Path) -> Self {
        BatchBuilder {
            local,
            entries: Vec::new(),
            counter: 0,
        }
    }
    fn put(&mut self, path: &[u8], content: &[u8], executable: bool) -> &mut Self {
        self.counter += 1;
        let file = self
            .local
            .join(format!("f{}-{}", self.entries.len(), self.counter));
        std::fs::write(&file, content).unwrap();
        self.entries.push(Entry {
            path: rel(path),
            op: Op::Put {
                local: file,
                size: content.len() as u64,
                mode: if executable { 0o755 } else { 0o644 },
                expect: None,
                content: None,
            },
        });
        self
    }
    fn link(&mut self, path: &[u8], target: &[u8]) -> &mut Self {
        self.entries.push(Entry {
            path: rel(path),
            op: Op::Symlink {
                target: target.to_vec(),
            },
        });
        self
    }
    fn delete(&mut self, path: &[u8]) -> &mut Self {
        self.entries.push(Entry {
            path: rel(path),
            op: Op::Delete { expect: None },
        });
        self
    }
    fn batch(&self, root: &str, reload: Option<&str>) -> Batch {
        Batch {
            remote_root: root.as_bytes().to_vec(),
            entries: self.entries.clone(),
            reload: reload.map(String::from),
            agent: true,
        }
    }
    /// The transport's form of [`Self::batch`], `agent` as given.
    fn upload(&self, root: &str, reload: Option<&str>, agent: bool) -> Upload {
        let mut upload = podloop::convert::kube::upload(self.batch(root, reload));
        upload.agent = agent;
        upload
    }
}

async fn hostile_tree_lands_exactly(image: Image) {
    let f = start().await;
    let target = f
        .create_api_target(
            api_pod(image)
                .file("/app/src/gone-file", "x")
                .file("/app/src/gone-dir/deep/f", "x")
                .file("/app/src/replaced", "old")
                .file("/app/src/kept", "kept")
                .file("/app/src/old name/renamed", "r"),
        )
        .await;
    assert_eq!(target.container, "api");

    let big: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut b = BatchBuilder::new(&f.local);
    let mut expected = BTreeMap::new();
    expected.insert(b"kept".to_vec(), file(b"kept", 0o644));
    let names: [&[u8]; 7] = [
        b"with space.txt",
        "unicod\u{e9}-\u{65e5}\u{672c}.txt".as_bytes(),
        b"new\nline",
        b"$(touch /pwned)",
        b"`touch /pwned`;x",
        b"-rf",
        b"\xff\xfe-not-utf8",
    ];
    // Two of the names hold a `/`: they are folders with a file inside.
    expected.insert(b"$(touch ".to_vec(), Node::Dir);
    expected.insert(b"`touch ".to_vec(), Node::Dir);
    for (i, name) in names.iter().enumerate() {
        let content = format!("content {i}").into_bytes();
        b.put(name, &content, false);
        expected.insert(name.to_vec(), file(&content, 0o644));
    }
    b.put(b"big.bin", &big, false);
    expected.insert(b"big.bin".to_vec(), file(&big, 0o644));
    b.put(b"empty", b"", false);
    expected.insert(b"empty".to_vec(), file(b"", 0o644));
    b.put(b"run.sh", b"#!/bin/sh\necho hi\n", true);
    expected.insert(b"run.sh".to_vec(), file(b"#!/bin/sh\necho hi\n", 0o755));
    b.put(b"replaced", b"new", false);
    expected.insert(b"replaced".to_vec(), file(b"new", 0o644));
    b.put(b"a/b c/new\ndir/leaf $(x)", b"deep", false);
    expected.insert(b"a".to_vec(), Node::Dir);
    expected.insert(b"a/b c".to_vec(), Node::Dir);
    expected.insert(b"a/b c/new\ndir".to_vec(), Node::Dir);
    expected.insert(b"a/b c/new\ndir/leaf $(x)".to_vec(), file(b"deep", 0o644));
    b.link(b"link", b"run.sh");
    expected.insert(b"link".to_vec(), Node::Link(b"run.sh".to_vec()));
    b.delete(b"gone-file")
        .delete(b"gone-dir")
        .delete(b"old name");
    b.put(b"new name/renamed", b"r", false);
    expected.insert(b"new name".to_vec(), Node::Dir);
    expected.insert(b"new name/renamed".to_vec(), file(b"r", 0o644));

    let delivery = f
        .cluster
        .deliver(&target, b.batch("/app/src", None))
        .await
        .unwrap();
    assert!(delivery.bytes_sent > big.len() as u64);
    assert!(delivery.reload.is_none());

    let root = f.sim.container_root("default", "api-0", "api").unwrap();
    let actual = tree(&root.join("app/src"));
    assert_eq!(paths(&actual), paths(&expected), "{image:?}");
    assert_eq!(actual, expected, "{image:?}");
    assert!(!root.join("pwned").exists(), "{image:?}: injection ran");

    // The manifest sees the same files, hashes and modes.
    let manifest = f.cluster.manifest(&target, b"/app/src").await.unwrap();
    let files: BTreeMap<Vec<u8>, (u64, bool)> = manifest
        .files
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), (v.size, v.executable)))
        .collect();
    let expected_files: BTreeMap<Vec<u8>, (u64, bool)> = expected
        .iter()
        .filter_map(|(k, v)| match v {
            Node::File { content, mode } => {
                Some((k.clone(), (content.len() as u64, mode & 0o111 != 0)))
            }
            _ => None,
        })
        .collect();
    assert_eq!(files, expected_files, "{image:?}");
    use sha2::Digest;
    let big_entry = &manifest.files[&rel(b"big.bin")];
    assert_eq!(
        big_entry.sha256.to_vec(),
        sha2::Sha256::digest(&big).to_vec()
    );
}

#[tokio::test]
async fn hostile_tree_lands_exactly_in_busybox() {
    hostile_tree_lands_exactly(Image::Busybox).await;
}

#[tokio::test]
async fn hostile_tree_lands_exactly_in_host_image() {
    hostile_tree_lands_exactly(Image::Host).await;
}

#[tokio::test]
async fn resolve_picks_ready_pods_and_the_right_container() {
    let f = start().await;
    for name in ["web-b", "web-a"] {
        f.create(
            PodTemplate::new(name)
                .label("app", "web")
                .container("sidecar", Image::Busybox)
                .container("main", Image::Busybox),
        )
        .await;
    }
    f.create(
        PodTemplate::new("web-c")
            .label("app", "web")
            .container("main", Image::Busybox)
            .ready(false),
    )
    .await;
    let mut annotated = PodTemplate::new("two-0")
        .label("app", "two")
        .container("first", Image::Busybox)
        .container("second", Image::Busybox);
    annotated = annotated.annotation("kubectl.kubernetes.io/default-container", "second");
    f.create(annotated).await;

    let targets = f.cluster.resolve(&spec("app=web")).await.unwrap();
    let pods: Vec<(&str, &str)> = targets
        .iter()
        .map(|t| (t.pod.as_str(), t.container.as_str()))
        .collect();
    assert_eq!(pods, [("web-a", "sidecar"), ("web-b", "sidecar")]);

    let mut first_only = spec("app=web");
    first_only.all_replicas = false;
    first_only.container = Some("main".into());
    let targets = f.cluster.resolve(&first_only).await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].container, "main");

    let targets = f.cluster.resolve(&spec("app=two")).await.unwrap();
    assert_eq!(targets[0].container, "second");

    let by_name = TargetSpec {
        pods: PodSelector::Name("web-b".into()),
        ..spec("")
    };
    let targets = f.cluster.resolve(&by_name).await.unwrap();
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].pod, "web-b");

    let Err(ClusterError::Permanent(text)) = f.cluster.resolve(&spec("app=api")).await else {
        panic!("expected a permanent error");
    };
    assert!(
        text.starts_with("no pods match `app=api` in `default`"),
        "{text}"
    );
    assert!(text.contains("web-a (app=web)"), "{text}");

    let mut missing = spec("app=two");
    missing.container = Some("nope".into());
    let Err(ClusterError::Permanent(text)) = f.cluster.resolve(&missing).await else {
        panic!("expected a permanent error");
    };
    assert!(text.contains("has no container `nope`"), "{text}");
}

async fn next_list(
    rx: &mut tokio::sync::mpsc::Receiver<Result<Vec<Target>, ClusterError>>,
    want: impl Fn(&[Target]) -> bool,
) -> Vec<Target> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = tokio::time::timeout(left, rx.recv())
            .await
            .expect("watch did not report the expected list in time")
            .expect("watch ended");
        if let Ok(list) = got {
            if want(&list) {
                return list;
            }
        }
    }
}

#[tokio::test]
async fn watch_follows_replacement_readiness_and_dropped_watches() {
    let f = start().await;
    f.create(
        PodTemplate::new("api-1")
            .label("app", "api")
            .container("api", Image::Busybox),
    )
    .await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let cluster = f.cluster.clone();
    let watch = tokio::spawn(async move { cluster.watch(&spec("app=api"), tx).await });
    next_list(&mut rx, |l| l.len() == 1 && l[0].pod == "api-1").await;

    let new = f
        .sim
        .replace_pod("default", "api-1", ReplaceOrder::NewFirst)
        .await
        .unwrap();
    next_list(&mut rx, |l| l.len() == 1 && l[0].pod == new.name).await;

    f.sim.set_ready("default", &new.name, false).unwrap();
    next_list(&mut rx, |l| l.is_empty()).await;

    f.sim.close_watches();
    f.sim.set_ready("default", &new.name, true).unwrap();
    next_list(&mut rx, |l| l.len() == 1 && l[0].pod == new.name).await;

    f.sim
        .restart_container("default", &new.name, "api")
        .await
        .unwrap();
    next_list(&mut rx, |l| l.len() == 1 && l[0].restart_count >= 1).await;

    drop(rx);
    // The watch ends on its own once nobody listens.
    tokio::time::timeout(Duration::from_secs(10), watch)
        .await
        .expect("watch did not stop after the receiver was dropped")
        .unwrap();
}

#[tokio::test]
async fn reload_failure_is_reported_with_exit_code_and_output() {
    let f = start().await;
    let target = f.create_api_target(api_pod(Image::Busybox)).await;
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"a.txt", b"a", false);
    let delivery = f
        .cluster
        .deliver(
            &target,
            b.batch(
                "/app",
                Some("echo reloading; echo 'compile error: x' >&2; exit 3"),
            ),
        )
        .await
        .unwrap();
    let reload = delivery.reload.expect("reload ran");
    assert_eq!(reload.exit_code, 3);
    assert!(
        reload.output_tail.contains("compile error: x"),
        "{reload:?}"
    );
    assert!(reload.output_tail.contains("reloading"), "{reload:?}");
    assert_eq!(
        f.sim
            .read_file("default", "api-0", "api", "/app/a.txt")
            .unwrap(),
        b"a"
    );
}

#[tokio::test]
async fn container_errors_are_specific() {
    let f = start().await;
    f.create(
        PodTemplate::new("notar")
            .label("app", "notar")
            .container("c", Image::BusyboxNotar),
    )
    .await;
    f.create(
        PodTemplate::new("ro")
            .label("app", "ro")
            .container("c", Image::BusyboxReadOnly),
    )
    .await;
    let mut b = BatchBuilder::new(&f.local);
    // Big enough that the container stops reading long before the end: the
    // error must still be the container's own report, not "broken pipe".
    b.put(b"x", &vec![b'x'; 4 * 1024 * 1024], false);

    let t = target_of(&f, "app=notar").await;
    let err = f
        .cluster
        .deliver(&t, b.batch("/app/src", None))
        .await
        .unwrap_err();
    let text = permanent_text(err);
    assert!(text.contains("has no `tar`"), "{text}");

    let t = target_of(&f, "app=ro").await;
    let err = f
        .cluster
        .deliver(&t, b.batch("/app/src", None))
        .await
        .unwrap_err();
    let text = permanent_text(err);
    assert!(text.contains("/app/src"), "{text}");
    assert!(text.contains("read-only"), "{text}");
}

#[tokio::test]
async fn api_faults_map_to_transient_or_permanent() {
    let f = start().await;
    let target = f.create_api_target(api_pod(Image::Busybox)).await;
    // One-shot execs: what a failed handshake or a cut does to one exec.
    let cluster = f.cluster.clone().without_warm_sessions();
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"x", b"x", false);

    f.sim.faults().fail_next_exec_handshakes(1, 500);
    let err = cluster
        .deliver(&target, b.batch("/app", None))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Transient(_)), "{err:?}");
    f.sim.faults().fail_next_exec_handshakes(1, 429);
    let err = cluster
        .deliver(&target, b.batch("/app", None))
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Transient(_)), "{err:?}");
    // The next one goes through.
    cluster
        .deliver(&target, b.batch("/app", None))
        .await
        .unwrap();

    f.sim.faults().deny("create", "pods/exec");
    let err = cluster
        .deliver(&target, b.batch("/app", None))
        .await
        .unwrap_err();
    let text = permanent_text(err);
    assert!(
        text.contains("forbidden (403)") && text.contains("pods/exec"),
        "{text}"
    );
    assert!(text.contains("verbs: [\"create\"]"), "{text}");
    f.sim.faults().clear();

    let gone = Target {
        pod: "does-not-exist".into(),
        ..target.clone()
    };
    let err = cluster
        .deliver(&gone, b.batch("/app", None))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ClusterError::Permanent(t) if t.contains("no longer exists")),
        "{err:?}"
    );

    assert!(!format!("{err:?}").contains(&f.sim.token()));
}

#[tokio::test]
async fn cut_streams_fail_and_leave_nothing_partial() {
    let f = start().await;
    let target = f
        .create_api_target(
            api_pod(Image::Busybox)
                .file("/app/big", "old")
                .file("/app/doomed", "still here"),
        )
        .await;
    // One-shot execs: what a failed handshake or a cut does to one exec.
    let cluster = f.cluster.clone().without_warm_sessions();
    let big = vec![b'n'; 2 * 1024 * 1024];
    let mut b = BatchBuilder::new(&f.local);
    b.delete(b"doomed")
        .put(b"big", &big, false)
        .put(b"small", b"s", false);
    let root = f.sim.container_root("default", "api-0", "api").unwrap();

    for mode in [CutMode::TcpDrop, CutMode::CleanClose] {
        f.sim.faults().cut_next_exec_after(300_000, mode);
        let err = cluster
            .deliver(&target, b.batch("/app", None))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClusterError::Transient(_)),
            "{mode:?}: {err:?}"
        );
        // The container may still be finishing; wait until its staging
        // folder is gone, then nothing of the batch may be visible.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let staging = std::fs::read_dir(root.join("app"))
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with(".podloop-stage")
                })
                .count();
            if staging == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode:?}: staging folder left behind"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            std::fs::read(root.join("app/big")).unwrap(),
            b"old",
            "{mode:?}"
        );
        assert_eq!(
            std::fs::read(root.join("app/doomed")).unwrap(),
            b"still here",
            "{mode:?}"
        );
        assert!(!root.join("app/small").exists(), "{mode:?}");
    }
    f.sim.faults().clear();
    cluster
        .deliver(&target, b.batch("/app", None))
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join("app/big")).unwrap(), big);
    assert!(!root.join("app/doomed").exists());
}

#[tokio::test]
async fn a_reader_in_the_pod_never_sees_a_partial_file() {
    let f = start().await;
    let valid = |i: usize| format!("begin {i} {} end", "x".repeat(200_000));
    // The reader compares what it reads with the pattern of a whole version.
    let reader = r#"
mkdir -p /state
i=0
while [ ! -e /state/stop ]; do
  c=$(cat /app/watched 2>/dev/null) || { echo missing >> /state/bad; continue; }
  case "$c" in "begin "*" end") ;; *) echo "partial ${#c}" >> /state/bad ;; esac
  i=$((i+1)); echo $i > /state/reads
done
sleep 100000
"#;
    let target = f
        .create_api_target(
            api_pod(Image::Busybox)
                .file("/app/watched", &valid(0))
                .command(reader),
        )
        .await;
    let root = f.sim.container_root("default", "api-0", "api").unwrap();
    // The reader rewrites its counter with `echo >`, so a read can catch it
    // empty: try again until it holds a number.
    let reads = || -> u64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(root.join("state/reads")).unwrap_or_default();
            if let Ok(n) = text.trim().parse() {
                return n;
            }
            if Instant::now() > deadline {
                return 0;
            }
            std::thread::yield_now();
        }
    };
    let wait_for_reads = |at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while reads() < at_least {
            assert!(Instant::now() < deadline, "the reader loop is not running");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for_reads(1);
    let before = reads();
    for i in 1..=30 {
        let mut b = BatchBuilder::new(&f.local);
        b.put(b"watched", valid(i).as_bytes(), false);
        f.cluster
            .deliver(&target, b.batch("/app", None))
            .await
            .unwrap();
    }
    let during = reads().saturating_sub(before);
    // A few more reads of the final state.
    wait_for_reads(reads() + 3);
    std::fs::write(root.join("state/stop"), b"").unwrap();
    assert!(
        during > 10,
        "the reader loop barely ran during the burst ({during} reads)"
    );
    let bad = std::fs::read_to_string(root.join("state/bad")).unwrap_or_default();
    assert!(bad.is_empty(), "reader saw: {bad}");
    assert_eq!(
        std::fs::read(root.join("app/watched")).unwrap(),
        valid(30).as_bytes()
    );
}

#[tokio::test]
async fn kubeconfig_problems_say_what_to_do() {
    let f = start().await;
    let Err(ClusterError::Permanent(text)) = KubeCluster::new(KubeOptions {
        kubeconfig: Some(f.local.join("missing")),
        context: None,
    }) else {
        panic!("expected an error");
    };
    assert!(text.contains("does not exist"), "{text}");

    let Err(ClusterError::Permanent(text)) = KubeCluster::new(KubeOptions {
        kubeconfig: Some(f.sim.kubeconfig_path()),
        context: Some("prod".into()),
    }) else {
        panic!("expected an error");
    };
    assert!(
        text.contains("context `prod` is not in kubeconfig"),
        "{text}"
    );
    assert!(text.contains("kubesim"), "{text}");

    // An expired token: the same kubeconfig with another token.
    let config = std::fs::read_to_string(f.sim.kubeconfig_path()).unwrap();
    let token = f.sim.token();
    let expired = f.local.join("expired-kubeconfig");
    std::fs::write(&expired, config.replace(&token, "expired-token-value")).unwrap();
    let cluster = KubeCluster::new(KubeOptions {
        kubeconfig: Some(expired),
        context: None,
    })
    .unwrap();
    let Err(ClusterError::Permanent(text)) = cluster.resolve(&spec("app=api")).await else {
        panic!("expected a permanent error");
    };
    assert!(text.contains("unauthorized (401)"), "{text}");
    assert!(!text.contains("expired-token-value") && !text.contains(&token));
}

#[tokio::test]
async fn unreachable_cluster_is_transient() {
    let f = start().await;
    let config = std::fs::read_to_string(f.sim.kubeconfig_path()).unwrap();
    let url = f.sim.url();
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dead = f.local.join("dead-kubeconfig");
    std::fs::write(
        &dead,
        config.replace(&url, &format!("https://127.0.0.1:{port}")),
    )
    .unwrap();
    let cluster = KubeCluster::new(KubeOptions {
        kubeconfig: Some(dead),
        context: None,
    })
    .unwrap();
    let err = cluster.resolve(&spec("app=api")).await.unwrap_err();
    let ClusterError::Transient(text) = &err else {
        panic!("expected transient: {err:?}");
    };
    assert!(text.starts_with("cluster unreachable"), "{text}");
}

#[tokio::test]
async fn warm_session_carries_many_batches_and_falls_back_when_it_dies() {
    let f = start().await;
    let target = f.create_api_target(api_pod(Image::Busybox)).await;
    let execs_before = f.sim.exec_log().len();
    let mut warm = Vec::new();
    for i in 0..40 {
        let mut b = BatchBuilder::new(&f.local);
        b.put(b"saved.txt", format!("version {i}").as_bytes(), false);
        let started = Instant::now();
        f.cluster
            .deliver(&target, b.batch("/app", Some("echo reloaded")))
            .await
            .unwrap();
        warm.push(started.elapsed());
        assert_eq!(
            f.sim
                .read_file("default", "api-0", "api", "/app/saved.txt")
                .unwrap(),
            format!("version {i}").as_bytes()
        );
    }
    let execs = f.sim.exec_log().len() - execs_before;
    assert_eq!(execs, 1, "40 batches must share one warm exec");

    let one_shot_cluster = f.cluster.clone().without_warm_sessions();
    let mut cold = Vec::new();
    for i in 0..20 {
        let mut b = BatchBuilder::new(&f.local);
        b.put(b"saved.txt", format!("cold {i}").as_bytes(), false);
        let started = Instant::now();
        one_shot_cluster
            .deliver(&target, b.batch("/app", None))
            .await
            .unwrap();
        cold.push(started.elapsed());
    }
    warm.sort();
    cold.sort();
    eprintln!(
        "deliver of one small file: warm session p50 {:?} p90 {:?}; one-shot exec p50 {:?} p90 {:?}",
        warm[warm.len() / 2],
        warm[warm.len() * 9 / 10],
        cold[cold.len() / 2],
        cold[cold.len() * 9 / 10]
    );

    // A partial failure keeps the session usable.
    let root = f.sim.container_root("default", "api-0", "api").unwrap();
    std::fs::create_dir_all(root.join("app/blocked/inner")).unwrap();
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"blocked", b"file", false)
        .put(b"fine", b"fine", false);
    let err = f
        .cluster
        .deliver(&target, b.batch("/app", None))
        .await
        .unwrap_err();
    let ClusterError::Partial {
        failed, message, ..
    } = err
    else {
        panic!("expected partial");
    };
    assert_eq!(failed.len(), 1, "{message}");
    assert_eq!(failed[0].0, rel(b"blocked"));
    assert_eq!(std::fs::read(root.join("app/fine")).unwrap(), b"fine");

    // The session dies with the container; the next batch still lands.
    f.sim
        .restart_container("default", "api-0", "api")
        .await
        .unwrap();
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"after-restart", b"yes", false);
    f.cluster
        .deliver(&target, b.batch("/app", None))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(root.join("app/after-restart")).unwrap(),
        b"yes"
    );

    // A cut in the middle of a session batch: the batch goes again through
    // a one-shot exec and lands whole.
    let big = vec![b'b'; 1024 * 1024];
    let fresh = target_of(&f, "app=api").await;
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"warmup", b"w", false);
    f.cluster
        .deliver(&fresh, b.batch("/app", None))
        .await
        .unwrap();
    f.sim.close_watches();
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"big", &big, false);
    // Kill the session's connection from the server side mid-stream.
    f.sim.faults().cut_next_exec_after(1, CutMode::TcpDrop);
    f.sim
        .restart_container("default", "api-0", "api")
        .await
        .unwrap();
    let fresh = target_of(&f, "app=api").await;
    f.cluster
        .deliver(&fresh, b.batch("/app", None))
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join("app/big")).unwrap(), big);
}

/// Host pids of the processes that run the container agent (its file is
/// deleted as soon as it starts: the exe link still names it) inside this
/// sim's pods, told apart from other tests' by their pid namespace.
fn agent_processes(sim: &Sim) -> Vec<u32> {
    let pid_namespace = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let pods: Vec<PathBuf> = sim
        .host_pids()
        .iter()
        .filter_map(|pid| pid_namespace(&pid.to_string()))
        // kubesim's own `unshare` processes live in the host's namespace.
        .filter(|ns| Some(ns) != pid_namespace("self").as_ref())
        .collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        let is_agent = std::fs::read_link(entry.path().join("exe"))
            .is_ok_and(|exe| exe.to_string_lossy().contains(".podloop-agent-"));
        if is_agent && pid_namespace(&name).is_some_and(|ns| pods.contains(&ns)) {
            found.push(pid);
        }
    }
    found
}

/// Polls until `sim` runs `count` agent processes; panics after 30 s.
async fn wait_for_agents(sim: &Sim, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let running = agent_processes(sim);
        if running.len() == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} agent processes, found {running:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sim_client(f: &Fixture) -> ContextClient {
    podloop::transport::Connector::new(KubeOptions {
        kubeconfig: Some(f.sim.kubeconfig_path()),
        context: None,
    })
    .unwrap()
    .client(None)
    .await
    .unwrap()
}

/// `target` as the transport names it, and its session's key.
fn session_of(client: &ContextClient, target: &Target) -> (ContainerRef, SessionKey) {
    let container = ContainerRef {
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        container: target.container.clone(),
    };
    let key = SessionKey {
        context: client.context.clone(),
        target: ContainerRefKey::from(&container),
        pod_uid: target.pod_uid.clone(),
        restart_count: target.restart_count,
    };
    (container, key)
}

async fn pool_deliver(
    pool: &SessionPool,
    client: &ContextClient,
    target: &Target,
    upload: Upload,
) -> DeliverOutcome {
    let (container, key) = session_of(client, target);
    pool.deliver(client, &key, &container, upload)
        .await
        .unwrap()
}

/// The same saves through a pool that offers the agent and one that does
/// not: a one-file save (the agent's own path), a hostile tar batch with a
/// link, an executable, a delete and a reload (the deliver script under
/// the agent), and a checked save over a file changed in the pod.
async fn same_saves(f: &Fixture, pool: &SessionPool, target: &Target, root: &str) -> Vec<String> {
    let client = sim_client(f).await;
    let mut reports = Vec::new();
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"it's $(x)\nodd dir/main.rs", b"first", false);
    let out = pool_deliver(pool, &client, target, b.upload(root, None, true)).await;
    reports.push(format!("{:?} {}", out.reload, out.files));
    let mut b = BatchBuilder::new(&f.local);
    for name in [
        &b"with space"[..],
        b"new\nline",
        b"$(touch PWNED)",
        b"back\\slash",
        b"q'\"uote",
    ] {
        b.put(name, name, false);
    }
    b.put(b"run.sh", b"#!/bin/sh\necho hi\n", true)
        .link(b"link", b"run.sh")
        .delete(b"it's $(x)\nodd dir");
    let out = pool_deliver(
        pool,
        &client,
        target,
        b.upload(root, Some("echo \"it's\"; exit 3"), true),
    )
    .await;
    reports.push(format!("{:?} {} {}", out.reload, out.files, out.deletes));
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"with space", b"again", false);
    let out = pool_deliver(pool, &client, target, b.upload(root, Some("true"), true)).await;
    reports.push(format!("{:?} {}", out.reload, out.files));
    reports
}

#[tokio::test]
async fn a_warm_session_to_a_busybox_pod_runs_the_agent_and_without_agent_stays_a_shell() {
    let f = start().await;
    let target = f.create_api_target(api_pod(Image::Busybox)).await;
    let container_root = f.sim.container_root("default", "api-0", "api").unwrap();
    let execs_before = f.sim.exec_log().len();

    let with_agent = SessionPool::default();
    let agent_reports = same_saves(&f, &with_agent, &target, "/app/agent").await;
    assert_eq!(with_agent.len(), 1);
    assert_eq!(
        with_agent.agent_sessions(),
        1,
        "the busybox session speaks the agent"
    );
    assert_eq!(agent_processes(&f.sim).len(), 1);
    // The agent deleted its own file from the pod's /tmp.
    let leftovers: Vec<_> = std::fs::read_dir(container_root.join("tmp"))
        .map(|dir| dir.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let shells = SessionPool::default().without_agent();
    let shell_reports = same_saves(&f, &shells, &target, "/app/shell").await;
    assert_eq!(shells.len(), 1);
    assert_eq!(shells.agent_sessions(), 0);
    assert_eq!(agent_processes(&f.sim).len(), 1, "no second agent");
    assert_eq!(
        f.sim.exec_log().len() - execs_before,
        2,
        "one warm exec per pool"
    );

    assert_eq!(agent_reports, shell_reports);
    assert!(agent_reports[1].contains("it's"), "{agent_reports:?}");
    let landed = tree(&container_root.join("app/agent"));
    assert_eq!(landed, tree(&container_root.join("app/shell")));
    assert_eq!(
        landed.get(b"with space".as_slice()),
        Some(&file(b"again", 0o644))
    );
    assert_eq!(
        landed.get(b"run.sh".as_slice()),
        Some(&file(b"#!/bin/sh\necho hi\n", 0o755))
    );
    assert_eq!(
        landed.get(b"link".as_slice()),
        Some(&Node::Link(b"run.sh".to_vec()))
    );
    assert_eq!(
        landed.get(b"new\nline".as_slice()),
        Some(&file(b"new\nline", 0o644))
    );
    assert!(
        !landed.contains_key(b"it's $(x)\nodd dir".as_slice()),
        "{:?}",
        paths(&landed)
    );
    assert!(!landed.contains_key(b"PWNED".as_slice()));
}

#[tokio::test]
async fn agent_false_never_copies_the_agent_in_and_retires_an_agent_session() {
    let f = start().await;
    let target = f.create_api_target(api_pod(Image::Busybox)).await;
    let client = sim_client(&f).await;
    let save = |content: &str, agent: bool| {
        let mut b = BatchBuilder::new(&f.local);
        b.put(b"main.rs", content.as_bytes(), false);
        b.upload("/app", None, agent)
    };
    let landed = || {
        f.sim
            .read_file("default", "api-0", "api", "/app/main.rs")
            .unwrap()
    };

    // `agent = false` from the first save: the session is a shell.
    let pool = SessionPool::default();
    pool_deliver(&pool, &client, &target, save("one", false)).await;
    assert_eq!(landed(), b"one");
    assert_eq!((pool.len(), pool.agent_sessions()), (1, 0));
    assert!(agent_processes(&f.sim).is_empty());

    // Allowed later: a fresh session upgrades, the next `agent = false`
    // ends it (its process exits) and the save lands through a shell.
    let pool = SessionPool::default();
    pool_deliver(&pool, &client, &target, save("two", true)).await;
    assert_eq!(pool.agent_sessions(), 1);
    wait_for_agents(&f.sim, 1).await;
    pool_deliver(&pool, &client, &target, save("three", false)).await;
    assert_eq!(landed(), b"three");
    assert_eq!((pool.len(), pool.agent_sessions()), (1, 0));
    wait_for_agents(&f.sim, 0).await;

    // Through the engine's Batch and KubeCluster: `agent` reaches the pool.
    let mut b = BatchBuilder::new(&f.local);
    b.put(b"main.rs", b"engine", false);
    let mut batch = b.batch("/app", None);
    batch.agent = false;
    f.cluster.deliver(&target, batch.clone()).await.unwrap();
    assert_eq!(landed(), b"engine");
    assert!(agent_processes(&f.sim).is_empty());
    let another = KubeCluster::new(KubeOptions {
        kubeconfig: Some(f.sim.kubeconfig_path()),
        context: None,
    })
    .unwrap();
    batch.agent = true;
    another.deliver(&target, batch).await.unwrap();
    wait_for_agents(&f.sim, 1).await;
}

/// A shell session stops reading when a write fails (a full disk) and ends
/// after its report, so the rest of a large file meets a closed connection:
/// the report that came back still names the cause.
#[tokio::test]
async fn a_shell_session_that_ends_on_a_full_disk_reports_no_space_not_a_cut_stream() {
    let f = start().await;
    let pod = api_pod(Image::Busybox).memory_volume("data", "64Ki", "/data");
    let target = f.create_api_target(pod).await;
    let client = sim_client(&f).await;
    let shells = SessionPool::default().without_agent();
    let (container, key) = session_of(&client, &target);
    // Far more than the volume and than every pipe and buffer on the way.
    let big = vec![b'x'; 8 << 20];
    for attempt in 0..3 {
        let mut b = BatchBuilder::new(&f.local);
        b.put(b"big.bin", &big, false);
        let err = shells
            .deliver(
                &client,
                &key,
                &container,
                b.upload("/data/app", None, false),
            )
            .await
            .expect_err("8 MiB cannot fit in 64 KiB");
        assert!(
            matches!(err, TransportError::NoSpace { .. }),
            "attempt {attempt}: {err}"
        );
    }
    // Each attempt is answered by its own session: no one-shot exec was
    // needed to learn why.
    let execs: Vec<_> = f.sim.exec_log().iter().map(|e| e.exit_code).collect();
    assert_eq!(execs, vec![Some(7); 3], "{execs:?}");
}
