//! The engine driven directly (no LSP) against kubesim: real TLS, exec over
//! WebSocket, tar into chrooted busybox containers. What a container holds
//! is read through kubesim's `container_root`, never through podloop.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubesim::{Image, PodTemplate, Sim, SimOptions};
use podloop::convert::kube::{KubeCluster, KubeOptions};
use podloop::engine::{
    self, ChangeOrigin, EngineHandle, EngineOptions, Input, Output, Overrides, Problem, Status,
    SyncAllReport,
};
use tokio::sync::{mpsc, oneshot};

pub const DEADLINE: Duration = Duration::from_secs(60);

/// `src` to `/app` in container `app` of the `app=api` pods. No namespace:
/// the context's ("default") is used, as most users write it.
pub const API_CONFIG: &str = r#"
[[sync]]
name = "api"
local = "src"
remote = "/app"
selector = "app=api"
container = "app"
"#;

/// `api-1`, labelled `app=api`, with one container `app`: the pod
/// `API_CONFIG` selects.
pub fn api_pod(image: Image) -> PodTemplate {
    PodTemplate::new("api-1")
        .label("app", "api")
        .container("app", image)
}

pub struct EngineSim {
    pub sim: Sim,
    pub engine: EngineHandle,
    pub outputs: mpsc::UnboundedReceiver<Output>,
    pub seen: Vec<Output>,
    pub workspace: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct Options {
    pub config: String,
    pub warm_sessions: bool,
    pub own_file_watcher: bool,
}

impl EngineSim {
    /// Starts kubesim (no pods yet: create them before `start_engine`).
    pub async fn sim() -> (Sim, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let sim = Sim::start(SimOptions::new(dir.path().join("sim")))
            .await
            .unwrap();
        (sim, dir)
    }

    /// kubesim holding `pod`, then the engine over `config` with warm
    /// sessions and no file watcher of its own, once a target has its pod.
    pub async fn with_pod(pod: PodTemplate, config: &str) -> EngineSim {
        let (sim, dir) = EngineSim::sim().await;
        sim.create_pod(pod).await.unwrap();
        let mut h = EngineSim::start(
            sim,
            dir,
            Options {
                config: config.into(),
                warm_sessions: true,
                own_file_watcher: false,
            },
        );
        h.settled(|s| s.targets.iter().any(|t| !t.pod.is_empty()))
            .await;
        h
    }

    /// Starts the engine over a workspace holding `config` as podloop.toml
    /// and an empty `src/`.
    pub fn start(sim: Sim, dir: tempfile::TempDir, options: Options) -> EngineSim {
        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(workspace.join("src")).unwrap();
        std::fs::write(workspace.join("podloop.toml"), &options.config).unwrap();
        let mut cluster = KubeCluster::new(KubeOptions {
            kubeconfig: Some(sim.kubeconfig_path()),
            context: None,
        })
        .unwrap();
        if !options.warm_sessions {
            cluster = cluster.without_warm_sessions();
        }
        let (engine, outputs) = engine::start(
            cluster,
            EngineOptions {
                roots: vec![workspace.clone()],
                overrides: Overrides::default(),
                own_file_watcher: options.own_file_watcher,
            },
        );
        EngineSim {
            sim,
            engine,
            outputs,
            seen: Vec::new(),
            workspace,
            _dir: dir,
        }
    }

    pub fn src(&self) -> PathBuf {
        self.workspace.join("src")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.src().join(rel)
    }

    /// Writes like an editor that saves atomically (temp file + rename).
    /// An in-place write shows the file empty for a moment on the local
    /// disk itself; podloop may copy that moment like any other reader (the
    /// write's own event then sends the whole file), and the reader loop in
    /// the pod would report it as partial although the transfer was whole.
    pub fn write(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let tmp = self.workspace.join(".write-in-progress");
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }

    pub fn changed(&self, paths: Vec<PathBuf>, origin: ChangeOrigin) {
        assert!(self.engine.send(Input::Changed { paths, origin }));
    }

    pub fn save(&self, rel: &str, content: &[u8]) -> PathBuf {
        let p = self.write(rel, content);
        self.changed(vec![p.clone()], ChangeOrigin::Save);
        p
    }

    pub async fn next(&mut self) -> Output {
        let out = tokio::time::timeout(DEADLINE, self.outputs.recv())
            .await
            .expect("timed out waiting for engine output")
            .expect("engine stopped");
        self.seen.push(out.clone());
        out
    }

    pub async fn until(&mut self, mut pred: impl FnMut(&Output) -> bool) -> Output {
        loop {
            let out = self.next().await;
            if pred(&out) {
                return out;
            }
        }
    }

    pub async fn status(&self) -> Status {
        self.engine.status().await.expect("engine stopped")
    }

    /// Waits until nothing is pending or in flight and `also` holds for the
    /// status (every status change prompts a fresh query).
    pub async fn settled(&mut self, also: impl Fn(&Status) -> bool) -> Status {
        loop {
            let now = self.status().await;
            if now.quiescent && also(&now) {
                return now;
            }
            self.until(|o| matches!(o, Output::Status(_))).await;
        }
    }

    pub async fn quiescent(&mut self) -> Status {
        self.settled(|_| true).await
    }

    pub fn drain(&mut self) {
        while let Ok(out) = self.outputs.try_recv() {
            self.seen.push(out);
        }
    }

    /// Waits for problems on `path` that satisfy `accept`.
    pub async fn problems_until(
        &mut self,
        path: &Path,
        accept: impl Fn(&[Problem]) -> bool,
    ) -> Vec<Problem> {
        let out = self
            .until(|o| matches!(o, Output::FileProblems { path: p, problems } if p == path && accept(problems)))
            .await;
        match out {
            Output::FileProblems { problems, .. } => problems,
            _ => unreachable!(),
        }
    }

    pub fn problems_for(&self, path: &Path) -> Option<Vec<Problem>> {
        self.seen.iter().rev().find_map(|o| match o {
            Output::FileProblems { path: p, problems } if p == path => Some(problems.clone()),
            _ => None,
        })
    }

    pub fn logs(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|o| match o {
                Output::Log { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn messages(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|o| match o {
                Output::Message { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    pub async fn sync_all(&mut self, check: bool) -> SyncAllReport {
        let (reply, rx) = oneshot::channel();
        if check {
            self.engine.send(Input::Check { reply });
        } else {
            self.engine.send(Input::SyncAll { reply: Some(reply) });
        }
        tokio::time::timeout(DEADLINE, rx)
            .await
            .expect("sync all timed out")
            .expect("engine dropped the reply")
    }

    pub fn root_of(&self, pod: &str, container: &str) -> PathBuf {
        self.sim.container_root("default", pod, container).unwrap()
    }

    /// Names of the Ready-or-not pods in `default` whose name starts with
    /// `prefix`.
    pub fn pods(&self, prefix: &str) -> Vec<String> {
        self.sim
            .pod_names("default")
            .into_iter()
            .filter(|n| n.starts_with(prefix))
            .collect()
    }
}

/// What a tree holds, as the test compares it: regular files (content and
/// executable bit) and symlinks (target), by path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File(Vec<u8>, bool),
    Link(Vec<u8>),
}

/// Walks `root` without following links. `skip` names top-level entries to
/// leave out (podloop's staging folders are accounted separately).
pub fn snapshot(root: &Path, skip: impl Fn(&[u8]) -> bool) -> BTreeMap<Vec<u8>, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &skip, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, skip: &impl Fn(&[u8]) -> bool, out: &mut BTreeMap<Vec<u8>, Node>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        if dir == root && skip(&rel) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            out.insert(rel, Node::Link(target.as_os_str().as_bytes().to_vec()));
        } else if meta.is_dir() {
            walk(root, &path, skip, out);
        } else if meta.is_file() {
            let content = std::fs::read(&path).unwrap_or_default();
            out.insert(
                rel,
                Node::File(content, meta.permissions().mode() & 0o111 != 0),
            );
        }
    }
}

pub fn is_staging(name: &[u8]) -> bool {
    name.starts_with(b".podloop-stage-")
}

/// One line per difference, with names shown lossily.
pub fn differences(
    local: &BTreeMap<Vec<u8>, Node>,
    remote: &BTreeMap<Vec<u8>, Node>,
) -> Vec<String> {
    let show = |p: &[u8]| format!("{:?}", OsStr::from_bytes(p));
    let describe = |n: &Node| match n {
        Node::File(c, x) => format!("{} bytes{}", c.len(), if *x { " +x" } else { "" }),
        Node::Link(t) => format!("link to {}", show(t)),
    };
    let mut out = Vec::new();
    for (path, node) in local {
        match remote.get(path) {
            None => out.push(format!("{}: missing in the container", show(path))),
            Some(r) if r != node => out.push(format!(
                "{}: local {}, container {}",
                show(path),
                describe(node),
                describe(r)
            )),
            Some(_) => {}
        }
    }
    for path in remote.keys() {
        if !local.contains_key(path) {
            out.push(format!("{}: only in the container", show(path)));
        }
    }
    out
}
