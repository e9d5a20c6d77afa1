//! Transport failures, each with a message that says what happened, where,
//! and what to do about it.

use std::path::PathBuf;

use super::remote::RemoteConflict;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("{0}")]
    Kubeconfig(String),

    #[error("unauthorized (401) by {server}: the credentials of context `{context}` were rejected, probably an expired token; refresh them (e.g. re-run your cloud's get-credentials) and check with `kubectl --context {context} get pods`")]
    Unauthorized { context: String, server: String },

    #[error("forbidden (403): cannot `{verb} {resource}` in namespace `{namespace}`: {detail}; the role bound to your user needs a rule `apiGroups: [\"\"], resources: [\"{resource}\"], verbs: [\"{verb}\"]` (check with `kubectl auth can-i {verb} {resource} -n {namespace}`)")]
    Forbidden {
        verb: String,
        resource: String,
        namespace: String,
        detail: String,
    },

    #[error("cluster unreachable at {server}: {detail}; check that the cluster is running and that `kubectl cluster-info` works")]
    Unreachable { server: String, detail: String },

    #[error("the API server answered {code} to {what}: {detail}; retrying")]
    ServerBusy {
        code: u16,
        what: String,
        detail: String,
    },

    #[error("pod `{namespace}/{pod}` no longer exists: it was deleted or replaced")]
    PodGone { namespace: String, pod: String },

    #[error(
        "pod `{namespace}/{pod}` has no container `{container}`; its containers are: {available}"
    )]
    NoSuchContainer {
        namespace: String,
        pod: String,
        container: String,
        available: String,
    },

    #[error("{0}")]
    NoPodsMatch(String),

    #[error("container `{container}` in pod `{pod}` cannot start `sh` (exit {code}): podloop needs a shell and tar in the image; use an image with busybox or add a debug sidecar")]
    NoShell {
        pod: String,
        container: String,
        code: i32,
    },

    #[error("container `{container}` in pod `{pod}` has no `{tool}`: install it in the image (busybox provides it)")]
    MissingTool {
        pod: String,
        container: String,
        tool: String,
    },

    #[error(
        "cannot write under `{root}` in container `{container}` of pod `{pod}`: {detail}{hint}"
    )]
    RemoteWrite {
        pod: String,
        container: String,
        root: String,
        detail: String,
        hint: &'static str,
    },

    #[error("no space left under `{root}` in container `{container}` of pod `{pod}` ({detail}): nothing of the batch was applied; the container's disk is full: free space there or enlarge the volume (an emptyDir's `sizeLimit`)")]
    NoSpace {
        pod: String,
        container: String,
        root: String,
        detail: String,
    },

    #[error("the connection to pod `{pod}` ended before the command reported its status ({detail}); nothing was applied from the unfinished stream")]
    StreamCut { pod: String, detail: String },

    #[error("exec in pod `{pod}` container `{container}` failed: {detail}")]
    ExecFailed {
        pod: String,
        container: String,
        detail: String,
    },

    #[error("`{}` changed while it was being sent ({detail}); the batch was aborted and will be sent again", path.display())]
    LocalChanged { path: PathBuf, detail: String },

    #[error(
        "invalid path `{}` for a remote folder: {reason}",
        String::from_utf8_lossy(path)
    )]
    BadPath { path: Vec<u8>, reason: &'static str },

    #[error("{message}")]
    Partial {
        message: String,
        failed: Vec<(Vec<u8>, String)>,
        conflicts: Vec<RemoteConflict>,
    },

    #[error("unexpected answer from container `{container}` in pod `{pod}`: {detail}")]
    Protocol {
        pod: String,
        container: String,
        detail: String,
    },
}

impl TransportError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            TransportError::Unreachable { .. }
                | TransportError::ServerBusy { .. }
                | TransportError::StreamCut { .. }
                | TransportError::NoSpace { .. }
                | TransportError::LocalChanged { .. }
                | TransportError::Protocol { .. }
        )
    }
}

/// The hint for a write failure, from the text the container printed.
pub fn write_failure_hint(detail: &str) -> &'static str {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("read-only file system") {
        ": the folder is on a read-only filesystem; mount a writable volume (emptyDir) there or set `remote` to a writable path"
    } else if lower.contains("permission denied") {
        ": permission denied for the container's user; make the folder writable by it (fsGroup, chown in the image) or sync to a folder it owns"
    } else if lower.contains("no space left") {
        ": the container's disk is full; free space or enlarge the volume"
    } else {
        ""
    }
}
