//! An in-memory `Cluster`: pods are maps from remote path to bytes. Lets the
//! LSP tests run the real engine without a Kubernetes API server, and makes
//! failures one method call away.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex};

use podloop::engine::{
    Batch, Cluster, ClusterError, Delivery, Manifest, ManifestEntry, Op, PodSelector, RelPath,
    Target, TargetList, TargetSpec,
};
use podloop::lsp::EngineStarter;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

#[derive(Clone, Default)]
pub struct FakeCluster {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Bumped on every change of the pod set, so watches re-resolve.
    generation: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    pods: Vec<FakePod>,
    /// `Some(error)`: every delivery fails with it.
    failing: Option<ClusterError>,
    deliveries: Vec<(String, usize)>,
}

struct FakePod {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    container: String,
    files: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl FakeCluster {
    pub fn new() -> FakeCluster {
        FakeCluster::default()
    }

    pub fn add_pod(&self, namespace: &str, name: &str, labels: &[(&str, &str)], container: &str) {
        self.inner.state.lock().unwrap().pods.push(FakePod {
            namespace: namespace.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            container: container.into(),
            files: BTreeMap::new(),
        });
        self.inner
            .generation
            .send_modify(|generation| *generation += 1);
    }

    /// Makes every delivery fail with `error` (`Some`) or succeed again
    /// (`None`).
    pub fn set_failing(&self, error: Option<ClusterError>) {
        self.inner.state.lock().unwrap().failing = error;
    }

    /// A file as the container sees it, by absolute remote path.
    pub fn file(&self, pod: &str, remote_path: &str) -> Option<Vec<u8>> {
        let state = self.inner.state.lock().unwrap();
        let pod = state.pods.iter().find(|candidate| candidate.name == pod)?;
        pod.files.get(remote_path.as_bytes()).cloned()
    }

    /// One entry per `deliver` call that succeeded: (pod, entries).
    pub fn deliveries(&self) -> Vec<(String, usize)> {
        self.inner.state.lock().unwrap().deliveries.clone()
    }

    pub fn starter(&self) -> EngineStarter {
        let cluster = self.clone();
        Box::new(move |options| {
            Box::pin(async move { Ok(podloop::engine::start(cluster, options)) })
        })
    }

    fn targets(&self, spec: &TargetSpec) -> TargetList {
        let state = self.inner.state.lock().unwrap();
        let mut targets: TargetList = state
            .pods
            .iter()
            // An empty namespace means "the context's default", as with kube.
            .filter(|pod| {
                let namespace = if spec.namespace.is_empty() {
                    "default"
                } else {
                    &spec.namespace
                };
                pod.namespace == namespace && selects(&spec.pods, pod)
            })
            .filter(|pod| {
                spec.container
                    .as_deref()
                    .is_none_or(|name| name == pod.container)
            })
            .map(|pod| Target {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                pod_uid: format!("uid-{}", pod.name),
                container: pod.container.clone(),
                restart_count: 0,
            })
            .collect();
        if !spec.all_replicas {
            targets.truncate(1);
        }
        targets
    }
}

fn selects(selector: &PodSelector, pod: &FakePod) -> bool {
    match selector {
        PodSelector::Name(name) => *name == pod.name,
        PodSelector::Labels(labels) => {
            labels
                .split(',')
                .all(|requirement| match requirement.split_once('=') {
                    Some((key, value)) => {
                        pod.labels.get(key.trim()).map(String::as_str) == Some(value.trim())
                    }
                    None => pod.labels.contains_key(requirement.trim()),
                })
        }
    }
}

fn join_remote(root: &[u8], path: &RelPath) -> Vec<u8> {
    let mut full = root.to_vec();
    while full.last() == Some(&b'/') {
        full.pop();
    }
    full.push(b'/');
    full.extend_from_slice(path.as_bytes());
    full
}

impl Cluster for FakeCluster {
    async fn resolve(&self, spec: &TargetSpec) -> Result<TargetList, ClusterError> {
        Ok(self.targets(spec))
    }

    async fn watch(
        &self,
        spec: &TargetSpec,
        changes: mpsc::Sender<Result<TargetList, ClusterError>>,
    ) {
        let mut generations = self.inner.generation.subscribe();
        loop {
            if changes.send(Ok(self.targets(spec))).await.is_err() {
                return;
            }
            tokio::select! {
                changed = generations.changed() => if changed.is_err() { return },
                () = changes.closed() => return,
            }
        }
    }

    async fn deliver(&self, target: &Target, batch: Batch) -> Result<Delivery, ClusterError> {
        // Read outside the lock: the engine streams from disk the same way.
        let mut writes = Vec::new();
        let mut bytes_sent = 0;
        for entry in &batch.entries {
            if let Op::Put { local, .. } = &entry.op {
                let content = std::fs::read(local).map_err(|error| {
                    ClusterError::Transient(format!(
                        "fake: cannot read {}: {error}",
                        local.display()
                    ))
                })?;
                bytes_sent += content.len() as u64;
                writes.push((join_remote(&batch.remote_root, &entry.path), content));
            }
        }
        let mut state = self.inner.state.lock().unwrap();
        if let Some(error) = &state.failing {
            return Err(error.clone());
        }
        let entries = batch.entries.len();
        let pod = state
            .pods
            .iter_mut()
            .find(|pod| pod.name == target.pod)
            .ok_or_else(|| ClusterError::Transient(format!("pod `{}` is gone", target.pod)))?;
        for entry in &batch.entries {
            if matches!(entry.op, Op::Delete { .. }) {
                let gone = join_remote(&batch.remote_root, &entry.path);
                let mut under = gone.clone();
                under.push(b'/');
                pod.files
                    .retain(|path, _| *path != gone && !path.starts_with(&under));
            }
        }
        pod.files.extend(writes);
        state.deliveries.push((target.pod.clone(), entries));
        Ok(Delivery {
            bytes_sent,
            reload: None,
            conflicts: Vec::new(),
        })
    }

    async fn manifest(
        &self,
        target: &Target,
        remote_root: &[u8],
    ) -> Result<Manifest, ClusterError> {
        let state = self.inner.state.lock().unwrap();
        let mut manifest = Manifest::default();
        let Some(pod) = state.pods.iter().find(|pod| pod.name == target.pod) else {
            return Err(ClusterError::Transient(format!(
                "pod `{}` is gone",
                target.pod
            )));
        };
        let mut prefix = remote_root.to_vec();
        while prefix.last() == Some(&b'/') {
            prefix.pop();
        }
        prefix.push(b'/');
        for (path, content) in &pod.files {
            let Some(relative) = path.strip_prefix(prefix.as_slice()) else {
                continue;
            };
            let relative = std::path::Path::new(std::ffi::OsStr::from_bytes(relative));
            let Some(relative) = RelPath::from_relative(relative) else {
                continue;
            };
            manifest.files.insert(
                relative,
                ManifestEntry {
                    sha256: Sha256::digest(content).into(),
                    size: content.len() as u64,
                    executable: false,
                },
            );
        }
        Ok(manifest)
    }
}
