//! The engine's main loop against an in-memory cluster that records every
//! batch and fails on demand. Every wait is on a condition (an output or a
//! quiescent status) with a deadline, never a fixed sleep.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use podloop::engine::{
    self, Batch, ChangeOrigin, Cluster, ClusterError, Delivery, EngineHandle, EngineOptions,
    EngineState, Health, Input, Level, Manifest, ManifestEntry, Op, Output, Overrides, Problem,
    RelPath, ReloadOutcome, RemoteChange, RemoteHolds, Status, SyncAllReport, Target, TargetList,
    TargetSpec, TargetState,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, Semaphore};

const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq)]
enum Remote {
    File(Vec<u8>, bool),
    Link(Vec<u8>),
}

#[derive(Debug, Clone)]
struct RecordedBatch {
    #[allow(dead_code)] // shown in assertion messages
    pod: String,
    entries: Vec<(String, Option<Vec<u8>>)>,
}

#[derive(Default)]
struct FakeState {
    targets: Vec<Target>,
    watchers: Vec<mpsc::Sender<Result<TargetList, ClusterError>>>,
    batches: Vec<RecordedBatch>,
    started: usize,
    /// pod -> path -> content
    files: BTreeMap<String, BTreeMap<Vec<u8>, Remote>>,
    fail_next: VecDeque<ClusterError>,
    reload: Option<ReloadOutcome>,
    manifests: usize,
}

#[derive(Clone)]
struct Fake {
    state: Arc<Mutex<FakeState>>,
    /// Deliveries wait for a permit: tests hold a batch in flight with it.
    gate: Arc<Semaphore>,
    started: Arc<tokio::sync::Notify>,
}

fn target(pod: &str) -> Target {
    Target {
        namespace: "default".into(),
        pod: pod.into(),
        pod_uid: format!("uid-{pod}"),
        container: "app".into(),
        restart_count: 0,
    }
}

impl Fake {
    fn new(pods: &[&str]) -> Fake {
        let fake = Fake {
            state: Arc::default(),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            started: Arc::default(),
        };
        fake.state.lock().unwrap().targets = pods.iter().map(|p| target(p)).collect();
        fake
    }

    fn hold(&self) {
        let n = self.gate.available_permits();
        self.gate.forget_permits(n);
    }

    fn release(&self) {
        self.gate
            .add_permits(Semaphore::MAX_PERMITS - self.gate.available_permits());
    }

    fn set_targets(&self, targets: Vec<Target>) {
        let watchers = {
            let mut s = self.state.lock().unwrap();
            s.targets = targets.clone();
            s.watchers.clone()
        };
        for w in watchers {
            let _ = w.try_send(Ok(targets.clone()));
        }
    }

    fn fail_next(&self, e: ClusterError) {
        self.state.lock().unwrap().fail_next.push_back(e);
    }

    fn batches(&self) -> Vec<RecordedBatch> {
        self.state.lock().unwrap().batches.clone()
    }

    fn file(&self, pod: &str, path: &str) -> Option<Remote> {
        self.state
            .lock()
            .unwrap()
            .files
            .get(pod)
            .and_then(|f| f.get(path.as_bytes()).cloned())
    }

    fn put_remote(&self, pod: &str, path: &str, content: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .files
            .entry(pod.into())
            .or_default()
            .insert(
                path.as_bytes().to_vec(),
                Remote::File(content.to_vec(), false),
            );
    }

    async fn wait_started(&self, n: usize) {
        tokio::time::timeout(DEADLINE, async {
            loop {
                let notified = self.started.notified();
                if self.state.lock().unwrap().started >= n {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("a batch never started");
    }
}

impl Cluster for Fake {
    async fn resolve(&self, _spec: &TargetSpec) -> Result<TargetList, ClusterError> {
        Ok(self.state.lock().unwrap().targets.clone())
    }

    async fn watch(
        &self,
        _spec: &TargetSpec,
        changes: mpsc::Sender<Result<TargetList, ClusterError>>,
    ) {
        self.state.lock().unwrap().watchers.push(changes.clone());
        changes.closed().await;
    }

    async fn deliver(&self, target: &Target, batch: Batch) -> Result<Delivery, ClusterError> {
        {
            self.state.lock().unwrap().started += 1;
            self.started.notify_waiters();
        }
        let _permit = self.gate.acquire().await.unwrap();
        let mut s = self.state.lock().unwrap();
        if let Some(e) = s.fail_next.pop_front() {
            return Err(e);
        }
        let mut recorded = RecordedBatch {
            pod: target.pod.clone(),
            entries: Vec::new(),
        };
        let mut bytes = 0;
        let mut conflicts = Vec::new();
        let files = s.files.entry(target.pod.clone()).or_default();
        for entry in &batch.entries {
            let path = entry.path.as_bytes().to_vec();
            let name = String::from_utf8_lossy(&path).into_owned();
            // What the container script does: compare what is there with
            // what podloop last wrote, before replacing or deleting it.
            let expect = match &entry.op {
                Op::Put { expect, .. } | Op::Delete { expect } => *expect,
                Op::Symlink { .. } => None,
            };
            if let Some(expected) = expect {
                let now = match files.get(&path) {
                    Some(Remote::File(content, _)) => {
                        RemoteHolds::File(Sha256::digest(content).into())
                    }
                    Some(Remote::Link(_)) => RemoteHolds::NotAFile,
                    None => RemoteHolds::Absent,
                };
                let state =
                    |sha: Option<[u8; 32]>| sha.map_or(RemoteHolds::Absent, RemoteHolds::File);
                if now != state(expected.held) && now != state(expected.new) {
                    let size = match files.get(&path) {
                        Some(Remote::File(content, _)) => Some(content.len() as u64),
                        _ => None,
                    };
                    conflicts.push(RemoteChange {
                        path: entry.path.clone(),
                        now,
                        size,
                        skipped: expected.skip_if_changed,
                    });
                    if expected.skip_if_changed {
                        continue;
                    }
                }
            }
            match &entry.op {
                Op::Put {
                    local,
                    mode,
                    content,
                    ..
                } => {
                    // As the transport does: the bytes planning read, else the disk.
                    let content = match content {
                        Some(bytes) => bytes.0.to_vec(),
                        None => std::fs::read(local).map_err(|e| {
                            ClusterError::Permanent(format!("cannot read {}: {e}", local.display()))
                        })?,
                    };
                    bytes += content.len() as u64;
                    recorded.entries.push((name, Some(content.clone())));
                    files.insert(path, Remote::File(content, mode & 0o111 != 0));
                }
                Op::Symlink { target } => {
                    recorded.entries.push((name, None));
                    files.insert(path, Remote::Link(target.clone()));
                }
                Op::Delete { .. } => {
                    recorded.entries.push((name, None));
                    files.retain(|p, _| {
                        !(p == &path || (p.starts_with(&path) && p.get(path.len()) == Some(&b'/')))
                    });
                }
            }
        }
        s.batches.push(recorded);
        let reload = batch.reload.as_ref().map(|_| {
            s.reload.clone().unwrap_or(ReloadOutcome {
                exit_code: 0,
                output_tail: String::new(),
            })
        });
        Ok(Delivery {
            bytes_sent: bytes,
            reload,
            conflicts,
        })
    }

    async fn manifest(&self, target: &Target, _root: &[u8]) -> Result<Manifest, ClusterError> {
        let mut s = self.state.lock().unwrap();
        s.manifests += 1;
        if let Some(e) = s.fail_next.pop_front() {
            return Err(e);
        }
        let mut m = Manifest::default();
        for (path, remote) in s.files.get(&target.pod).into_iter().flatten() {
            if let Remote::File(content, executable) = remote {
                m.files.insert(
                    RelPath::from_relative(Path::new(std::str::from_utf8(path).unwrap())).unwrap(),
                    ManifestEntry {
                        sha256: Sha256::digest(content).into(),
                        size: content.len() as u64,
                        executable: *executable,
                    },
                );
            }
        }
        Ok(m)
    }
}

struct Harness {
    dir: tempfile::TempDir,
    fake: Fake,
    engine: EngineHandle,
    outputs: mpsc::UnboundedReceiver<Output>,
    seen: Vec<Output>,
}

const CONFIG: &str = r#"
[[sync]]
name = "app"
local = "src"
remote = "/app"
selector = "app=api"
exclude = ["*.log"]
reload = "kill -HUP 1"
"#;

impl Harness {
    async fn new(pods: &[&str]) -> Harness {
        Harness::with_config(pods, CONFIG, false).await
    }

    async fn with_config(pods: &[&str], config: &str, own_file_watcher: bool) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(dir.path().join("podloop.toml"), config).unwrap();
        let fake = Fake::new(pods);
        let (engine, outputs) = engine::start(
            fake.clone(),
            EngineOptions {
                roots: vec![dir.path().to_path_buf()],
                overrides: Overrides::default(),
                own_file_watcher,
            },
        );
        Harness {
            dir,
            fake,
            engine,
            outputs,
            seen: Vec::new(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("src").join(rel)
    }

    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }

    fn changed(&self, paths: Vec<PathBuf>, origin: ChangeOrigin) {
        assert!(self.engine.send(Input::Changed { paths, origin }));
    }

    fn save(&self, rel: &str, content: &str) {
        let p = self.write(rel, content);
        self.changed(vec![p], ChangeOrigin::Save);
    }

    async fn next(&mut self) -> Output {
        let out = tokio::time::timeout(DEADLINE, self.outputs.recv())
            .await
            .expect("timed out waiting for engine output")
            .expect("engine stopped");
        self.seen.push(out.clone());
        out
    }

    /// Receive outputs until `pred` holds for one; returns it.
    async fn until(&mut self, mut pred: impl FnMut(&Output) -> bool) -> Output {
        loop {
            let out = self.next().await;
            if pred(&out) {
                return out;
            }
        }
    }

    async fn status(&self) -> Status {
        self.engine.status().await.expect("engine stopped")
    }

    /// Wait until the engine says nothing is pending or in flight.
    async fn quiescent(&mut self) -> Status {
        // Outputs queued before the query may be stale, so every status
        // change only prompts a fresh query; the query's answer decides.
        loop {
            let now = self.status().await;
            if now.quiescent {
                return now;
            }
            self.until(|o| matches!(o, Output::Status(_))).await;
        }
    }

    /// Drain what is already queued without waiting.
    fn drain(&mut self) {
        while let Ok(out) = self.outputs.try_recv() {
            self.seen.push(out);
        }
    }

    /// Every `podloop/status` received so far, in order.
    fn statuses_seen(&self) -> Vec<&Status> {
        self.seen
            .iter()
            .filter_map(|o| match o {
                Output::Status(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    fn problems_for(&self, path: &Path) -> Option<Vec<Problem>> {
        self.seen.iter().rev().find_map(|o| match o {
            Output::FileProblems { path: p, problems } if p == path => Some(problems.clone()),
            _ => None,
        })
    }
}

fn content(remote: Option<Remote>) -> String {
    match remote {
        Some(Remote::File(c, _)) => String::from_utf8(c).unwrap(),
        other => panic!("expected a file, found {other:?}"),
    }
}

#[tokio::test]
async fn save_lands_in_every_replica_and_status_says_ok() {
    let mut h = Harness::new(&["p1", "p2"]).await;
    h.save("main.rs", "fn main() {}");
    let status = h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "main.rs")), "fn main() {}");
    assert_eq!(content(h.fake.file("p2", "main.rs")), "fn main() {}");
    assert_eq!(status.health, Health::Ok, "{status:?}");
    assert_eq!(status.state, EngineState::Idle);
    assert_eq!(status.pending, 0);
    assert_eq!(status.targets.len(), 2);
    assert!(status
        .targets
        .iter()
        .all(|t| t.state == TargetState::Synced
            && t.last_sync.as_ref().is_some_and(|l| l.files == 1)));
    h.drain();
    assert!(h.seen.iter().any(
        |o| matches!(o, Output::Log { level: Level::Info, text } if text.contains("1 files") && text.contains("p1"))
    ));
}

#[tokio::test]
async fn burst_while_in_flight_coalesces_into_few_batches_with_every_file_right() {
    let mut h = Harness::new(&["p1"]).await;
    h.quiescent().await;
    h.fake.hold();
    h.save("f0.txt", "first");
    h.fake.wait_started(1).await;
    for i in 0..50 {
        h.save(&format!("f{i}.txt"), &format!("content {i}"));
    }
    // The same file saved again: only its latest content goes out.
    h.save("f7.txt", "latest seven");
    let during = h.status().await;
    assert_eq!(during.state, EngineState::Syncing);
    assert!(!during.quiescent);
    assert_eq!(
        during.pending, 50,
        "f0 is pending again behind the in-flight batch"
    );
    h.fake.release();
    h.quiescent().await;
    let batches = h.fake.batches();
    assert!(
        (2..=3).contains(&batches.len()),
        "{} batches",
        batches.len()
    );
    for i in 0..50 {
        let expected = if i == 7 {
            "latest seven".to_string()
        } else {
            format!("content {i}")
        };
        assert_eq!(content(h.fake.file("p1", &format!("f{i}.txt"))), expected);
    }
    let second = &batches[1];
    assert_eq!(
        second.entries.iter().filter(|(p, _)| p == "f7.txt").count(),
        1
    );
}

#[tokio::test]
async fn echo_from_watcher_and_unchanged_saves_are_not_sent_again() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("a.txt", "v1");
    h.quiescent().await;
    assert_eq!(h.fake.batches().len(), 1);
    // The watcher reports the editor's own write a moment later.
    h.changed(vec![h.path("a.txt")], ChangeOrigin::Watcher);
    h.quiescent().await;
    h.changed(vec![h.path("a.txt")], ChangeOrigin::Save);
    h.quiescent().await;
    assert_eq!(h.fake.batches().len(), 1, "nothing new to send");
    h.save("a.txt", "v2");
    h.quiescent().await;
    assert_eq!(h.fake.batches().len(), 2);
    assert_eq!(content(h.fake.file("p1", "a.txt")), "v2");
}

#[tokio::test]
async fn deletes_renames_and_folders() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("dir/a.txt", "a");
    h.save("dir/sub/b.txt", "b");
    h.save("old.txt", "o");
    h.quiescent().await;
    std::fs::rename(h.path("old.txt"), h.path("new.txt")).unwrap();
    std::fs::remove_dir_all(h.path("dir")).unwrap();
    h.changed(
        vec![h.path("old.txt"), h.path("new.txt"), h.path("dir")],
        ChangeOrigin::Watcher,
    );
    h.quiescent().await;
    assert_eq!(h.fake.file("p1", "old.txt"), None);
    assert_eq!(content(h.fake.file("p1", "new.txt")), "o");
    assert_eq!(h.fake.file("p1", "dir/a.txt"), None);
    assert_eq!(h.fake.file("p1", "dir/sub/b.txt"), None);
    // A folder that appears whole (moved in) is expanded.
    std::fs::create_dir_all(h.path("moved/deep")).unwrap();
    std::fs::write(h.path("moved/deep/x"), "x").unwrap();
    h.changed(vec![h.path("moved")], ChangeOrigin::Watcher);
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "moved/deep/x")), "x");
}

#[tokio::test]
async fn excluded_and_outside_paths_are_never_sent() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("debug.log", "noise");
    h.save(".git/config", "x");
    let outside = h.dir.path().join("elsewhere.txt");
    std::fs::write(&outside, "x").unwrap();
    h.changed(vec![outside], ChangeOrigin::Save);
    let status = h.quiescent().await;
    assert_eq!(status.pending, 0);
    assert!(h.fake.batches().is_empty());
}

#[tokio::test]
async fn transient_failures_retry_with_backoff_until_delivered_and_nothing_is_lost() {
    let mut h = Harness::new(&["p1"]).await;
    h.quiescent().await;
    for _ in 0..3 {
        h.fake.fail_next(ClusterError::Transient(
            "connection refused by the API server".into(),
        ));
    }
    h.save("a.txt", "a");
    let disconnected = h
        .until(|o| matches!(o, Output::Status(s) if s.state == EngineState::Disconnected))
        .await;
    let Output::Status(s) = disconnected else {
        unreachable!()
    };
    assert!(s.message.contains("connection refused"), "{}", s.message);
    assert!(s.message.contains("next try in"), "{}", s.message);
    assert_eq!(s.health, Health::Warning);
    assert!(!s.quiescent);
    // Saves made while disconnected coalesce and go out on recovery.
    h.save("b.txt", "b");
    h.save("a.txt", "a2");
    let s = h.quiescent().await;
    assert_eq!(s.state, EngineState::Idle);
    assert_eq!(s.health, Health::Ok, "{s:?}");
    assert_eq!(content(h.fake.file("p1", "a.txt")), "a2");
    assert_eq!(content(h.fake.file("p1", "b.txt")), "b");
    assert!(h.fake.batches().len() <= 2, "{:?}", h.fake.batches());
}

#[tokio::test]
async fn pause_keeps_changes_and_resume_sends_them() {
    let mut h = Harness::new(&["p1"]).await;
    h.quiescent().await;
    h.engine.send(Input::Pause);
    h.save("a.txt", "a");
    let s = h
        .until(
            |o| matches!(o, Output::Status(s) if s.state == EngineState::Paused && s.pending == 1),
        )
        .await;
    let Output::Status(s) = s else { unreachable!() };
    assert!(!s.quiescent);
    assert!(h.fake.batches().is_empty());
    h.engine.send(Input::Resume);
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "a.txt")), "a");
}

#[tokio::test]
async fn status_is_emitted_only_when_it_changes() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("a.txt", "a");
    h.quiescent().await;
    // Events that change nothing: an unchanged save, an excluded file, a
    // status query.
    h.changed(vec![h.path("a.txt")], ChangeOrigin::Save);
    h.save("x.log", "x");
    h.quiescent().await;
    h.status().await;
    h.drain();
    let statuses = h.statuses_seen();
    for pair in statuses.windows(2) {
        assert_ne!(pair[0], pair[1], "the same status was sent twice");
    }
    let last = statuses.last().unwrap();
    assert!(last.quiescent && last.pending == 0);
    // The unchanged save did go through the loop (a status came for it
    // only if something changed): the last status is still the synced one.
    assert_eq!(last.targets[0].state, TargetState::Synced);
}

#[tokio::test]
async fn permanent_failure_puts_a_diagnostic_and_a_later_success_clears_it() {
    let mut h = Harness::new(&["p1"]).await;
    h.quiescent().await;
    let why = "container `app` has no `tar`: install it in the image or set `transfer = \"cat\"`";
    h.fake.fail_next(ClusterError::Permanent(why.into()));
    h.save("a.txt", "a");
    let path = h.path("a.txt");
    let out = h
        .until(|o| matches!(o, Output::FileProblems { path: p, .. } if *p == path))
        .await;
    let Output::FileProblems { problems, .. } = out else {
        unreachable!()
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].severity, Level::Error);
    assert_eq!(problems[0].line, 0);
    assert!(problems[0]
        .message
        .starts_with("not delivered to pod p1: container `app` has no `tar`"));
    let s = h.quiescent().await;
    assert_eq!(s.health, Health::Error);
    assert_eq!(s.targets[0].state, TargetState::Error);
    h.drain();
    let messages = h
        .seen
        .iter()
        .filter(|o| matches!(o, Output::Message { text, .. } if text.contains("no `tar`")))
        .count();
    assert_eq!(messages, 1);
    // The failed file rides along with the next save and the error clears.
    h.save("b.txt", "b");
    let out = h
        .until(|o| matches!(o, Output::FileProblems { path: p, .. } if *p == path))
        .await;
    assert_eq!(
        out,
        Output::FileProblems {
            path: path.clone(),
            problems: vec![]
        }
    );
    let s = h.quiescent().await;
    assert_eq!(s.health, Health::Ok);
    assert_eq!(content(h.fake.file("p1", "a.txt")), "a");
}

#[tokio::test]
async fn failed_reload_is_a_warning_on_the_batch_files() {
    let mut h = Harness::new(&["p1"]).await;
    h.fake.state.lock().unwrap().reload = Some(ReloadOutcome {
        exit_code: 3,
        output_tail: "reload: config invalid\n".into(),
    });
    h.save("a.txt", "a");
    h.quiescent().await;
    h.drain();
    let problems = h.problems_for(&h.path("a.txt")).expect("a diagnostic");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].severity, Level::Warning);
    assert!(
        problems[0].message.contains("exited with code 3"),
        "{}",
        problems[0].message
    );
    assert!(problems[0].message.contains("reload: config invalid"));
    assert_eq!(h.status().await.health, Health::Warning);
    h.fake.state.lock().unwrap().reload = None;
    h.save("b.txt", "b");
    h.quiescent().await;
    h.drain();
    assert_eq!(h.problems_for(&h.path("a.txt")), Some(vec![]));
    assert_eq!(h.status().await.health, Health::Ok);
}

#[tokio::test]
async fn config_errors_are_problems_at_the_offending_line() {
    let config = "[[sync]]\nlocal = \"src\"\nremote = \"/app\"\nselectr = \"app=api\"\n";
    let mut h = Harness::with_config(&["p1"], config, false).await;
    let file = h.dir.path().join("podloop.toml");
    let out = h
        .until(|o| matches!(o, Output::FileProblems { path, .. } if *path == file))
        .await;
    let Output::FileProblems { problems, .. } = out else {
        unreachable!()
    };
    assert!(
        problems
            .iter()
            .any(|p| p.line == 3 && p.message.contains("did you mean `selector`")),
        "{problems:?}"
    );
    assert_eq!(h.status().await.health, Health::Error);
    // Fixing the file clears the problems and starts syncing.
    std::fs::write(&file, CONFIG).unwrap();
    h.engine
        .send(Input::ConfigChanged(h.dir.path().to_path_buf()));
    let out = h
        .until(|o| matches!(o, Output::FileProblems { path, .. } if *path == file))
        .await;
    assert_eq!(
        out,
        Output::FileProblems {
            path: file,
            problems: vec![]
        }
    );
    h.save("a.txt", "a");
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "a.txt")), "a");
}

#[tokio::test]
async fn no_matching_pod_keeps_changes_pending_until_one_appears() {
    let mut h = Harness::new(&[]).await;
    h.save("a.txt", "a");
    let out = h.until(|o| matches!(o, Output::Message { .. })).await;
    let Output::Message { text, .. } = out else {
        unreachable!()
    };
    assert!(text.contains("no Ready pod matches `app=api`"), "{text}");
    let s = h.status().await;
    assert_eq!(s.pending, 1);
    assert!(!s.quiescent);
    h.fake.set_targets(vec![target("p1")]);
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "a.txt")), "a");
    h.drain();
    let messages = h
        .seen
        .iter()
        .filter(|o| matches!(o, Output::Message { .. }))
        .count();
    assert_eq!(messages, 1, "one message per distinct problem");
}

#[tokio::test]
async fn replaced_pod_is_resynced_by_manifest_diff() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("a.txt", "a");
    h.save("b.txt", "b");
    h.quiescent().await;
    let mut p2 = target("p2");
    p2.pod_uid = "uid-p2".into();
    // The new pod starts with a stale copy of one file and the right copy
    // of the other: only the stale one is sent.
    h.fake.put_remote("p2", "b.txt", b"b");
    h.fake.put_remote("p2", "a.txt", b"old");
    h.fake.set_targets(vec![p2]);
    let log = h
        .until(|o| matches!(o, Output::Log { text, .. } if text.contains("resynced")))
        .await;
    let Output::Log { text, .. } = log else {
        unreachable!()
    };
    assert!(text.contains("resynced 1 files to p2"), "{text}");
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p2", "a.txt")), "a");
    let s = h.status().await;
    assert_eq!(s.targets.len(), 1);
    assert_eq!(s.targets[0].pod, "p2");
}

#[tokio::test]
async fn container_restart_triggers_a_resync() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("a.txt", "a");
    h.quiescent().await;
    // The restart lost the file (an emptyDir-less container).
    h.fake.state.lock().unwrap().files.clear();
    let mut restarted = target("p1");
    restarted.restart_count = 1;
    h.fake.set_targets(vec![restarted]);
    h.until(|o| matches!(o, Output::Log { text, .. } if text.contains("resynced 1 files to p1")))
        .await;
    assert_eq!(content(h.fake.file("p1", "a.txt")), "a");
}

async fn sync_all(h: &mut Harness, check: bool) -> SyncAllReport {
    let (reply, rx) = oneshot::channel();
    if check {
        h.engine.send(Input::Check { reply });
    } else {
        h.engine.send(Input::SyncAll { reply: Some(reply) });
    }
    tokio::time::timeout(DEADLINE, rx).await.unwrap().unwrap()
}

#[tokio::test]
async fn sync_all_sends_only_differences_and_never_deletes_excluded_files() {
    let mut h = Harness::new(&["p1"]).await;
    h.write("same.txt", "same");
    h.write("changed.txt", "new");
    h.write("new/deep.txt", "deep");
    h.fake.put_remote("p1", "same.txt", b"same");
    h.fake.put_remote("p1", "changed.txt", b"old");
    h.fake.put_remote("p1", "stale/gone.txt", b"x");
    h.fake.put_remote("p1", "server.log", b"keep me");
    let check = sync_all(&mut h, true).await;
    assert_eq!(check.drift.len(), 3, "{:?}", check.drift);
    assert!(check
        .drift
        .iter()
        .any(|d| d.contains("/app/changed.txt: content differs")));
    assert!(check
        .drift
        .iter()
        .any(|d| d.contains("/app/new/deep.txt: missing in the container")));
    assert!(check
        .drift
        .iter()
        .any(|d| d.contains("/app/stale: in the container, not in the local tree")));
    assert!(h.fake.batches().is_empty(), "check sends nothing");

    let report = sync_all(&mut h, false).await;
    assert_eq!(report.files_sent, 2, "{report:?}");
    assert_eq!(report.files_deleted, 1);
    assert_eq!(report.targets, 1);
    assert!(report.failures.is_empty());
    assert_eq!(content(h.fake.file("p1", "changed.txt")), "new");
    assert_eq!(content(h.fake.file("p1", "server.log")), "keep me");
    assert_eq!(h.fake.file("p1", "stale/gone.txt"), None);
    let sent: Vec<String> = h.fake.batches()[0]
        .entries
        .iter()
        .map(|(p, _)| p.clone())
        .collect();
    assert!(!sent.contains(&"same.txt".to_string()));
    assert!(sync_all(&mut h, true).await.drift.is_empty());
}

#[tokio::test]
async fn conflicting_remote_edit_is_reported() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("a.txt", "ours");
    h.quiescent().await;
    h.fake.put_remote("p1", "a.txt", b"edited in a shell");
    h.write("a.txt", "ours v2");
    sync_all(&mut h, false).await;
    h.drain();
    let problems = h.problems_for(&h.path("a.txt")).unwrap();
    assert!(
        problems[0]
            .message
            .contains("changed in the container since podloop wrote it"),
        "{problems:?}"
    );
    assert_eq!(
        content(h.fake.file("p1", "a.txt")),
        "ours v2",
        "default is overwrite"
    );
}

#[tokio::test]
async fn an_ordinary_save_checks_what_it_replaces_and_skip_keeps_the_pods_copy() {
    let config = CONFIG.replace("reload = \"kill -HUP 1\"", "on_conflict = \"skip\"");
    let mut h = Harness::with_config(&["p1", "p2"], &config, false).await;
    h.save("a.txt", "ours");
    h.quiescent().await;
    h.fake.put_remote("p1", "a.txt", b"edited in a shell");
    h.save("a.txt", "ours v2");
    h.quiescent().await;
    h.drain();
    let problems = h.problems_for(&h.path("a.txt")).unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].message.contains("conflict in default/p1")
            && problems[0].message.contains("container has 17 bytes")
            && problems[0]
                .message
                .ends_with("not overwritten (on_conflict = \"skip\")"),
        "{problems:?}"
    );
    assert_eq!(content(h.fake.file("p1", "a.txt")), "edited in a shell");
    assert_eq!(content(h.fake.file("p2", "a.txt")), "ours v2");
    // Still what podloop wrote as far as it knows: the next save is checked
    // (and skipped) again, never slipped through.
    h.save("a.txt", "ours v3");
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "a.txt")), "edited in a shell");
    assert_eq!(content(h.fake.file("p2", "a.txt")), "ours v3");
}

#[tokio::test]
async fn what_is_sent_is_what_was_hashed_so_a_file_changed_before_the_send_is_no_false_conflict() {
    let config = CONFIG.replace("reload = \"kill -HUP 1\"", "on_conflict = \"skip\"");
    let mut h = Harness::with_config(&["p1"], &config, false).await;
    h.save("a.txt", "v1");
    h.quiescent().await;
    // Planned (and hashed) as v2, then rewritten before the batch goes out.
    h.fake.hold();
    h.save("a.txt", "v2");
    h.fake.wait_started(2).await;
    h.write("a.txt", "v3 written while v2 was on its way");
    h.fake.release();
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "a.txt")), "v2");
    // podloop's record and the pod agree, so the next save is no conflict
    // (were v3 sent under v2's hash, this would be skipped as one).
    h.save("a.txt", "v4");
    h.quiescent().await;
    h.drain();
    assert_eq!(content(h.fake.file("p1", "a.txt")), "v4");
    assert_eq!(h.problems_for(&h.path("a.txt")).unwrap_or_default(), vec![]);
}

#[tokio::test]
async fn a_local_delete_of_a_file_changed_in_the_pod_is_reported_and_skip_keeps_it() {
    let config = CONFIG.replace("reload = \"kill -HUP 1\"", "on_conflict = \"skip\"");
    let mut h = Harness::with_config(&["p1", "p2"], &config, false).await;
    h.save("a.txt", "ours");
    h.quiescent().await;
    h.fake.put_remote("p1", "a.txt", b"edited in a shell");
    std::fs::remove_file(h.path("a.txt")).unwrap();
    h.changed(vec![h.path("a.txt")], ChangeOrigin::Watcher);
    h.quiescent().await;
    h.drain();
    let problems = h.problems_for(&h.path("a.txt")).unwrap();
    assert!(
        problems[0].message.contains("conflict in default/p1")
            && problems[0].message.contains("deleted locally")
            && problems[0]
                .message
                .ends_with("not overwritten (on_conflict = \"skip\")"),
        "{problems:?}"
    );
    assert_eq!(content(h.fake.file("p1", "a.txt")), "edited in a shell");
    assert!(
        h.fake.file("p2", "a.txt").is_none(),
        "the unchanged copy goes"
    );
}

#[tokio::test]
async fn sync_all_never_deletes_a_file_the_pod_changed_under_skip() {
    let config = CONFIG.replace("reload = \"kill -HUP 1\"", "on_conflict = \"skip\"");
    let mut h = Harness::with_config(&["p1"], &config, false).await;
    h.save("dir/a.txt", "ours");
    h.save("dir/b.txt", "ours");
    h.quiescent().await;
    h.fake.put_remote("p1", "dir/a.txt", b"edited in a shell");
    // Gone locally with no event: only the sync-all's manifest sees it.
    std::fs::remove_dir_all(h.path("dir")).unwrap();
    sync_all(&mut h, false).await;
    h.drain();
    let problems = h.problems_for(&h.path("dir/a.txt")).unwrap();
    assert!(
        problems[0].message.contains("deleted locally")
            && problems[0]
                .message
                .ends_with("not overwritten (on_conflict = \"skip\")"),
        "{problems:?}"
    );
    // Neither the file nor (by collapsing to `dir`) its folder went.
    assert_eq!(content(h.fake.file("p1", "dir/a.txt")), "edited in a shell");
    assert!(h.fake.file("p1", "dir/b.txt").is_none());
}

#[tokio::test]
async fn file_above_max_size_is_skipped_with_a_warning() {
    let config = format!("max_file_size = 10\n{CONFIG}");
    let mut h = Harness::with_config(&["p1"], &config, false).await;
    h.save("big.bin", "more than ten bytes");
    h.save("small", "ok");
    h.quiescent().await;
    h.drain();
    let problems = h.problems_for(&h.path("big.bin")).unwrap();
    assert_eq!(problems[0].severity, Level::Warning);
    assert!(problems[0].message.contains("above max_file_size"));
    assert_eq!(h.fake.file("p1", "big.bin"), None);
    assert_eq!(content(h.fake.file("p1", "small")), "ok");
}

#[tokio::test]
async fn symlinks_travel_as_links_and_escaping_ones_are_not_followed() {
    let mut h = Harness::new(&["p1"]).await;
    h.write("real.txt", "r");
    std::os::unix::fs::symlink("real.txt", h.path("inside")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", h.path("outside")).unwrap();
    h.changed(
        vec![h.path("real.txt"), h.path("inside"), h.path("outside")],
        ChangeOrigin::Save,
    );
    h.quiescent().await;
    h.drain();
    assert_eq!(
        h.fake.file("p1", "inside"),
        Some(Remote::Link(b"real.txt".to_vec()))
    );
    assert_eq!(h.fake.file("p1", "outside"), None);
    let problems = h.problems_for(&h.path("outside")).unwrap();
    assert!(problems[0].message.contains("points outside the mapping"));
}

#[tokio::test]
async fn batch_window_merges_a_burst() {
    let config = format!("batch_window_ms = 300\n{CONFIG}");
    let mut h = Harness::with_config(&["p1"], &config, false).await;
    h.quiescent().await;
    for i in 0..5 {
        h.save(&format!("f{i}"), "x");
    }
    h.quiescent().await;
    assert_eq!(h.fake.batches().len(), 1);
}

#[tokio::test]
async fn own_file_watcher_picks_up_changes_made_outside_the_editor() {
    let mut h = Harness::with_config(&["p1"], CONFIG, true).await;
    h.until(|o| matches!(o, Output::MappedFolders(f) if !f.is_empty()))
        .await;
    h.write("generated.rs", "// generated");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while h.fake.file("p1", "generated.rs").is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watcher never delivered"
        );
        h.until(|o| matches!(o, Output::Log { .. } | Output::Status(_)))
            .await;
    }
    std::fs::remove_file(h.path("generated.rs")).unwrap();
    while h.fake.file("p1", "generated.rs").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "watcher never deleted"
        );
        h.until(|o| matches!(o, Output::Log { .. } | Output::Status(_)))
            .await;
    }
}

#[tokio::test]
async fn large_batches_report_progress_that_always_ends() {
    let mut h = Harness::new(&["p1"]).await;
    let paths: Vec<PathBuf> = (0..60).map(|i| h.write(&format!("f{i}"), "x")).collect();
    h.changed(paths, ChangeOrigin::Watcher);
    h.quiescent().await;
    h.drain();
    let begins: Vec<u64> = h
        .seen
        .iter()
        .filter_map(|o| match o {
            Output::Progress(engine::Progress::Begin { id, .. }) => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(begins.len(), 1);
    assert!(h.seen.iter().any(
        |o| matches!(o, Output::Progress(engine::Progress::End { id, .. }) if *id == begins[0])
    ));
}

#[tokio::test]
async fn a_batch_that_finished_never_shows_the_slow_progress() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("fast.rs", "fast");
    h.quiescent().await;
    // A second batch held past SLOW_BATCH gets its progress; by then the
    // first batch's second had long passed, and it must not have shown one.
    h.fake.hold();
    h.save("slow.rs", "slow");
    let begun = h
        .until(|o| matches!(o, Output::Progress(engine::Progress::Begin { .. })))
        .await;
    let Output::Progress(engine::Progress::Begin { id, message, .. }) = begun else {
        unreachable!()
    };
    assert_eq!(message.as_deref(), Some("taking longer than usual"));
    h.fake.release();
    h.until(
        |o| matches!(o, Output::Progress(engine::Progress::End { id: ended, .. }) if *ended == id),
    )
    .await;
    h.quiescent().await;
    h.drain();
    let begins = h
        .seen
        .iter()
        .filter(|o| matches!(o, Output::Progress(engine::Progress::Begin { .. })))
        .count();
    assert_eq!(begins, 1, "{:?}", h.seen);
}

#[tokio::test]
async fn replicas_finishing_one_by_one_make_one_status_and_one_log_line() {
    let pods = ["p1", "p2", "p3"];
    let mut h = Harness::new(&pods).await;
    h.quiescent().await;
    h.drain();
    h.seen.clear();
    h.fake.hold();
    h.save("main.rs", "fn main() {}");
    h.fake.wait_started(pods.len()).await;
    // Let the batches finish one at a time, each seen by the loop (its
    // target synced in a fresh status) before the next.
    for done in 1..=pods.len() {
        h.fake.gate.add_permits(1);
        loop {
            let now = h.status().await;
            let synced = now
                .targets
                .iter()
                .filter(|t| t.state == TargetState::Synced && t.last_sync.is_some())
                .count();
            if synced >= done {
                break;
            }
            h.until(|o| matches!(o, Output::Status(_) | Output::Log { .. }))
                .await;
        }
    }
    h.fake.release();
    h.quiescent().await;
    h.drain();
    let statuses = h.statuses_seen();
    // "syncing" when the wave starts, "idle" when its last batch is done;
    // none for the replicas that finished in between.
    let partial = statuses.iter().filter(|s| {
        let synced = s
            .targets
            .iter()
            .filter(|t| t.state == TargetState::Synced)
            .count();
        s.state == EngineState::Syncing && synced > 0
    });
    assert_eq!(partial.count(), 0, "{statuses:#?}");
    assert_eq!(statuses.last().map(|s| s.state), Some(EngineState::Idle));
    let lines: Vec<&String> = h
        .seen
        .iter()
        .filter_map(|o| match o {
            Output::Log {
                level: Level::Info,
                text,
            } if text.contains("1 files") => Some(text),
            _ => None,
        })
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("3 pods in default (container app): p1, p2, p3: 1 files, 0 deleted"),
        "{}",
        lines[0]
    );
}

#[tokio::test]
async fn a_no_op_batch_keeps_the_last_real_sync() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("a.txt", "a");
    let first = h.quiescent().await;
    let real = first.targets[0]
        .last_sync
        .clone()
        .expect("a delivered batch sets lastSync");
    assert_eq!(real.files, 1);
    // The watcher's echo of that save plans a batch with nothing in it.
    h.changed(vec![h.path("a.txt")], ChangeOrigin::Watcher);
    h.until(|o| matches!(o, Output::Log { text, .. } if text.contains("nothing to send")))
        .await;
    let after = h.quiescent().await;
    assert_eq!(after.targets[0].last_sync.as_ref(), Some(&real));
    assert_eq!(h.fake.batches().len(), 1);
}

#[tokio::test]
async fn transient_failure_warns_on_the_waiting_file_retries_soon_and_clears_on_delivery() {
    let mut h = Harness::new(&["p1"]).await;
    h.quiescent().await;
    h.fake.fail_next(ClusterError::Transient(
        "cannot reach the API server at https://127.0.0.1:1: connection refused".into(),
    ));
    h.fake.fail_next(ClusterError::Transient(
        "the exec stream to p1 was cut mid-batch".into(),
    ));
    let started = std::time::Instant::now();
    h.save("a.txt", "a");
    let file = h.path("a.txt");
    let warned = h
        .until(|o| matches!(o, Output::FileProblems { path, problems } if *path == file && !problems.is_empty()))
        .await;
    let Output::FileProblems { problems, .. } = warned else {
        unreachable!()
    };
    assert_eq!(problems[0].severity, Level::Warning);
    assert!(
        problems[0]
            .message
            .starts_with("not yet delivered to pod p1: cannot reach the API server")
            && problems[0].message.contains("retrying in"),
        "{}",
        problems[0].message
    );
    let s = h.quiescent().await;
    // Two failures then success: backoff of ~150 ms then ~300 ms (±25%).
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "recovery took {:?}",
        started.elapsed()
    );
    assert_eq!(s.health, Health::Ok, "{s:?}");
    assert_eq!(content(h.fake.file("p1", "a.txt")), "a");
    h.drain();
    assert_eq!(
        h.problems_for(&file),
        Some(Vec::new()),
        "cleared on delivery"
    );
}

/// `dir/a.txt` and `dir/deep/b.txt` synced, `dir/a.txt` edited in pod p1,
/// then `dir` deleted locally with one watcher event naming only the
/// folder: the problems on `dir/a.txt`.
async fn delete_a_folder_edited_in_p1(h: &mut Harness) -> Vec<Problem> {
    h.save("dir/a.txt", "ours");
    h.save("dir/deep/b.txt", "ours");
    h.quiescent().await;
    h.fake.put_remote("p1", "dir/a.txt", b"edited in a shell");
    std::fs::remove_dir_all(h.path("dir")).unwrap();
    h.changed(vec![h.path("dir")], ChangeOrigin::Watcher);
    h.quiescent().await;
    h.drain();
    h.problems_for(&h.path("dir/a.txt")).unwrap()
}

/// Each file podloop wrote under a folder deleted locally is checked
/// before it goes.
#[tokio::test]
async fn a_folder_deleted_locally_reports_a_file_the_pod_changed_in_it() {
    let mut h = Harness::new(&["p1"]).await;
    let problems = delete_a_folder_edited_in_p1(&mut h).await;
    assert!(
        problems[0].message.contains("conflict in default/p1")
            && problems[0].message.contains("deleted locally"),
        "{problems:?}"
    );
    // Overwrite (the default): the local delete wins, the whole folder goes.
    assert_eq!(h.fake.file("p1", "dir/a.txt"), None);
    assert_eq!(h.fake.file("p1", "dir/deep/b.txt"), None);
    assert_eq!(
        h.problems_for(&h.path("dir/deep/b.txt"))
            .unwrap_or_default(),
        vec![]
    );
}

#[tokio::test]
async fn a_folder_deleted_locally_keeps_a_file_the_pod_changed_under_skip() {
    let config = CONFIG.replace("reload = \"kill -HUP 1\"", "on_conflict = \"skip\"");
    let mut h = Harness::with_config(&["p1", "p2"], &config, false).await;
    let problems = delete_a_folder_edited_in_p1(&mut h).await;
    assert!(
        problems[0].message.contains("conflict in default/p1")
            && problems[0]
                .message
                .ends_with("not overwritten (on_conflict = \"skip\")"),
        "{problems:?}"
    );
    assert_eq!(content(h.fake.file("p1", "dir/a.txt")), "edited in a shell");
    for pod in ["p1", "p2"] {
        assert_eq!(h.fake.file(pod, "dir/deep/b.txt"), None, "{pod}");
    }
    assert_eq!(
        h.fake.file("p2", "dir/a.txt"),
        None,
        "the unchanged copy goes"
    );
    // Deleted again (another event for the same folder): still kept.
    h.changed(vec![h.path("dir")], ChangeOrigin::Watcher);
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "dir/a.txt")), "edited in a shell");
}

#[tokio::test]
async fn a_folder_deleted_and_made_again_between_events_loses_its_old_files_in_the_pod() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("lib/a.txt", "a");
    h.save("lib/deep/b.txt", "b");
    h.quiescent().await;
    // git checkout of another branch: the folder goes and comes back with
    // other files; the watcher reports only the folder.
    std::fs::remove_dir_all(h.path("lib")).unwrap();
    h.write("lib/c.txt", "c");
    h.changed(vec![h.path("lib")], ChangeOrigin::Watcher);
    h.quiescent().await;
    assert_eq!(h.fake.file("p1", "lib/a.txt"), None);
    assert_eq!(h.fake.file("p1", "lib/deep/b.txt"), None);
    assert_eq!(content(h.fake.file("p1", "lib/c.txt")), "c");
}

#[tokio::test]
async fn a_folder_deleted_refilled_and_deleted_again_is_deleted_in_the_pod() {
    let mut h = Harness::new(&["p1"]).await;
    h.save("dir/a.txt", "a");
    h.quiescent().await;
    std::fs::remove_dir_all(h.path("dir")).unwrap();
    h.changed(vec![h.path("dir")], ChangeOrigin::Watcher);
    h.quiescent().await;
    assert_eq!(h.fake.file("p1", "dir/a.txt"), None);
    h.save("dir/b.txt", "b");
    h.quiescent().await;
    assert_eq!(content(h.fake.file("p1", "dir/b.txt")), "b");
    std::fs::remove_dir_all(h.path("dir")).unwrap();
    h.changed(vec![h.path("dir")], ChangeOrigin::Watcher);
    h.quiescent().await;
    assert_eq!(
        h.fake.file("p1", "dir/b.txt"),
        None,
        "the second delete was skipped"
    );
}

#[tokio::test]
async fn a_file_caught_mid_write_is_sent_again_without_a_warning_or_a_disconnect() {
    let mut h = Harness::new(&["p1"]).await;
    h.quiescent().await;
    h.fake.fail_next(ClusterError::LocalChanged(
        "`a.txt` changed while it was being sent (size 0, now 1)".into(),
    ));
    h.save("a.txt", "a");
    let s = h.quiescent().await;
    assert_eq!(s.health, Health::Ok, "{s:?}");
    assert_eq!(content(h.fake.file("p1", "a.txt")), "a");
    h.drain();
    for out in &h.seen {
        match out {
            Output::Status(s) => assert_ne!(s.state, EngineState::Disconnected, "{s:?}"),
            Output::FileProblems { problems, .. } => {
                assert!(
                    problems.is_empty(),
                    "an editor's own write is not a problem: {problems:?}"
                )
            }
            Output::Message { text, .. } => panic!("no pop-up for a local write: {text}"),
            _ => {}
        }
    }
}
