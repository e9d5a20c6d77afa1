//! The engine's [`Cluster`] over the kube transport: the only place where
//! engine types and transport types meet.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::{
    Batch, Cluster, ClusterError, Delivery, Entry, Expected, Manifest, ManifestEntry, Op,
    PodSelector, RelPath, ReloadOutcome, RemoteChange, RemoteHolds, Target, TargetList, TargetSpec,
};
use crate::transport::payload::{check_relative, Expect};
use crate::transport::remote::{RemoteConflict, RemoteState};
use crate::transport::{
    ops, pods, Connector, ContainerRef, ContextClient, PodMatch, PodQuery, ResolvedContainer,
    SessionKey, SessionPool, TransportError, Upload, UploadEntry, UploadOp,
};

pub use crate::transport::KubeOptions;

/// A kube cluster reached through the contexts of one kubeconfig.
///
/// [`Target`] carries no context, so the context each pod was resolved
/// through is remembered by pod uid (uids are unique per cluster).
#[derive(Clone)]
pub struct KubeCluster {
    connector: Arc<Connector>,
    context_of_pod: Arc<Mutex<HashMap<String, Option<String>>>>,
    sessions: SessionPool,
    warm_sessions: bool,
}

impl KubeCluster {
    /// Reads the kubeconfig now: a missing file or an unknown context is an
    /// error that says what to do.
    pub fn new(options: KubeOptions) -> Result<KubeCluster, ClusterError> {
        let connector = Connector::new(options).map_err(cluster_error)?;
        Ok(KubeCluster {
            connector: Arc::new(connector),
            context_of_pod: Arc::default(),
            sessions: SessionPool::default(),
            warm_sessions: true,
        })
    }

    /// Deliver every batch with a fresh exec instead of a warm session per
    /// target (slower; for comparisons and for clusters that cut idle
    /// connections aggressively).
    pub fn without_warm_sessions(mut self) -> Self {
        self.warm_sessions = false;
        self
    }

    /// The context used when a spec names none.
    pub fn default_context(&self) -> &str {
        self.connector.default_context()
    }

    /// The namespace of `context` in the kubeconfig, else "default"; what
    /// an empty [`TargetSpec::namespace`] stands for.
    pub async fn default_namespace(&self, context: Option<&str>) -> Result<String, ClusterError> {
        Ok(self.client(context).await?.namespace)
    }

    fn remember(
        context: &Arc<Mutex<HashMap<String, Option<String>>>>,
        spec: &TargetSpec,
        list: &TargetList,
    ) {
        let mut map = context
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for t in list {
            map.insert(t.pod_uid.clone(), spec.context.clone());
        }
    }

    async fn client_for(&self, target: &Target) -> Result<ContextClient, ClusterError> {
        let context = self
            .context_of_pod
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&target.pod_uid)
            .cloned()
            .flatten();
        self.client(context.as_deref()).await
    }

    async fn client(&self, context: Option<&str>) -> Result<ContextClient, ClusterError> {
        self.connector.client(context).await.map_err(cluster_error)
    }
}

impl std::fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeCluster")
            .field("default_context", &self.default_context())
            .finish()
    }
}

pub fn cluster_error(error: TransportError) -> ClusterError {
    match error {
        TransportError::Partial {
            message,
            failed,
            conflicts,
        } => ClusterError::Partial {
            message,
            failed: failed
                .into_iter()
                .filter(|(path, _)| check_relative(path).is_ok())
                .map(|(path, reason)| (RelPath(path), reason))
                .collect(),
            conflicts: remote_changes(conflicts),
        },
        e @ TransportError::LocalChanged { .. } => ClusterError::LocalChanged(e.to_string()),
        e @ TransportError::NoSpace { .. } => ClusterError::Blocked(e.to_string()),
        e if e.is_transient() => ClusterError::Transient(e.to_string()),
        e => ClusterError::Permanent(e.to_string()),
    }
}

/// The transport's query for `spec`, with the engine's empty namespace
/// ("the context's namespace") resolved through the context's client: the
/// one place that rule lives, so the LSP and the CLI cannot disagree.
fn query(spec: &TargetSpec, client: &ContextClient) -> PodQuery {
    PodQuery {
        namespace: if spec.namespace.is_empty() {
            client.namespace.clone()
        } else {
            spec.namespace.clone()
        },
        pods: match &spec.pods {
            PodSelector::Labels(s) => PodMatch::Labels(s.clone()),
            PodSelector::Name(n) => PodMatch::Name(n.clone()),
        },
        container: spec.container.clone(),
        all_replicas: spec.all_replicas,
    }
}

fn target(resolved: ResolvedContainer) -> Target {
    Target {
        namespace: resolved.namespace,
        pod: resolved.pod,
        pod_uid: resolved.uid,
        container: resolved.container,
        restart_count: resolved.restart_count,
    }
}

fn container_ref(target: &Target) -> ContainerRef {
    ContainerRef {
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        container: target.container.clone(),
    }
}

pub fn upload(batch: Batch) -> Upload {
    Upload {
        remote_root: batch.remote_root,
        entries: batch.entries.into_iter().map(upload_entry).collect(),
        reload: batch.reload.filter(|r| !r.trim().is_empty()),
        agent: batch.agent,
    }
}

/// The container's conflict reports, keeping only paths that are valid
/// relative paths (what the engine's `RelPath` promises).
fn remote_changes(conflicts: Vec<RemoteConflict>) -> Vec<RemoteChange> {
    conflicts
        .into_iter()
        .filter(|c| check_relative(&c.path).is_ok())
        .map(|c| RemoteChange {
            path: RelPath(c.path),
            now: match c.now {
                RemoteState::File(sha) => RemoteHolds::File(sha),
                RemoteState::Absent => RemoteHolds::Absent,
                RemoteState::NotAFile => RemoteHolds::NotAFile,
            },
            size: c.size,
            skipped: c.skipped,
        })
        .collect()
}

fn expectation(e: Expected) -> Expect {
    Expect {
        held: e.held,
        new: e.new,
        skip_if_changed: e.skip_if_changed,
    }
}

fn upload_entry(entry: Entry) -> UploadEntry {
    UploadEntry {
        path: entry.path.0,
        op: match entry.op {
            Op::Put {
                local,
                mode,
                expect,
                content,
                ..
            } => UploadOp::Put {
                local,
                mode,
                expect: expect.map(expectation),
                content: content.map(|c| c.0),
            },
            Op::Symlink { target } => UploadOp::Symlink { target },
            Op::Delete { expect } => UploadOp::Delete {
                expect: expect.map(expectation),
            },
        },
    }
}

fn to_targets(
    result: Result<Vec<ResolvedContainer>, TransportError>,
) -> Result<TargetList, ClusterError> {
    result
        .map(|list| list.into_iter().map(target).collect())
        .map_err(cluster_error)
}

impl Cluster for KubeCluster {
    async fn resolve(&self, spec: &TargetSpec) -> Result<TargetList, ClusterError> {
        let client = self.client(spec.context.as_deref()).await?;
        let list = to_targets(pods::resolve(&client, &query(spec, &client)).await)?;
        Self::remember(&self.context_of_pod, spec, &list);
        Ok(list)
    }

    async fn watch(
        &self,
        spec: &TargetSpec,
        changes: tokio::sync::mpsc::Sender<Result<TargetList, ClusterError>>,
    ) {
        let client = match self.client(spec.context.as_deref()).await {
            Ok(c) => c,
            Err(e) => {
                let _ = changes.send(Err(e)).await;
                return;
            }
        };
        let contexts = self.context_of_pod.clone();
        let remembered_spec = spec.clone();
        pods::watch(&client, &query(spec, &client), changes, move |result| {
            let list = to_targets(result)?;
            Self::remember(&contexts, &remembered_spec, &list);
            Ok(list)
        })
        .await;
    }

    async fn deliver(&self, target: &Target, batch: Batch) -> Result<Delivery, ClusterError> {
        let client = self.client_for(target).await?;
        let container = container_ref(target);
        let outcome = if self.warm_sessions {
            let key = SessionKey {
                context: client.context.clone(),
                target: (&container).into(),
                pod_uid: target.pod_uid.clone(),
                restart_count: target.restart_count,
            };
            self.sessions
                .deliver(&client, &key, &container, upload(batch))
                .await
        } else {
            ops::deliver(&client, &container, upload(batch)).await
        }
        .map_err(cluster_error)?;
        Ok(Delivery {
            bytes_sent: outcome.bytes_sent,
            reload: outcome
                .reload
                .map(|(exit_code, output_tail)| ReloadOutcome {
                    exit_code,
                    output_tail,
                }),
            conflicts: remote_changes(outcome.conflicts),
        })
    }

    async fn manifest(
        &self,
        target: &Target,
        remote_root: &[u8],
    ) -> Result<Manifest, ClusterError> {
        let client = self.client_for(target).await?;
        let files = ops::manifest(&client, &container_ref(target), remote_root)
            .await
            .map_err(cluster_error)?;
        Ok(Manifest {
            files: files
                .into_iter()
                .filter(|f| check_relative(&f.path).is_ok())
                .map(|f| {
                    (
                        RelPath(f.path),
                        ManifestEntry {
                            sha256: f.sha256,
                            size: f.size,
                            executable: f.mode & 0o111 != 0,
                        },
                    )
                })
                .collect(),
        })
    }
}
