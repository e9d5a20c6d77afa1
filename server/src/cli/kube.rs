//! The CLI's cluster: [`KubeCluster`] plus the one rule the engine cannot
//! apply itself: a mapping without a namespace uses its context's.

use crate::convert::kube::KubeCluster;
use crate::engine::{
    Batch, Cluster, ClusterError, Delivery, Manifest, Target, TargetList, TargetSpec,
};

#[derive(Clone, Debug)]
pub struct ContextNamespace {
    inner: KubeCluster,
}

impl ContextNamespace {
    pub fn new(inner: KubeCluster) -> Self {
        ContextNamespace { inner }
    }

    async fn fill(&self, spec: &TargetSpec) -> Result<TargetSpec, ClusterError> {
        let mut spec = spec.clone();
        if spec.namespace.is_empty() {
            spec.namespace = self
                .inner
                .default_namespace(spec.context.as_deref())
                .await?;
        }
        Ok(spec)
    }
}

impl Cluster for ContextNamespace {
    async fn resolve(&self, spec: &TargetSpec) -> Result<TargetList, ClusterError> {
        let spec = self.fill(spec).await?;
        self.inner.resolve(&spec).await
    }

    async fn watch(
        &self,
        spec: &TargetSpec,
        changes: tokio::sync::mpsc::Sender<Result<TargetList, ClusterError>>,
    ) {
        match self.fill(spec).await {
            Ok(spec) => self.inner.watch(&spec, changes).await,
            Err(e) => {
                let _ = changes.send(Err(e)).await;
            }
        }
    }

    async fn deliver(&self, target: &Target, batch: Batch) -> Result<Delivery, ClusterError> {
        self.inner.deliver(target, batch).await
    }

    async fn manifest(
        &self,
        target: &Target,
        remote_root: &[u8],
    ) -> Result<Manifest, ClusterError> {
        self.inner.manifest(target, remote_root).await
    }
}
