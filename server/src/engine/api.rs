//! The engine's contract with the two other rooms.
//!
//! The LSP layer and the CLI drive the engine only through [`Input`] messages
//! and read it only through [`Output`] messages; the kube transport is reached
//! only through the [`Cluster`] trait, implemented in `crate::convert::kube`.
//! Nothing here names an LSP or a kube type: that is the wall.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

/// Who noticed a change. Lets the engine drop the echo of its own editor's
/// save when the file watcher reports the same write a moment later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOrigin {
    /// `textDocument/didSave` (or a CLI argument): the user asked for it.
    Save,
    /// `workspace/didChangeWatchedFiles`, `didCreate/Delete/RenameFiles`,
    /// or podloop's own `notify` watcher.
    Watcher,
}

/// Runtime overrides of what `podloop.toml` says (initializationOptions,
/// `workspace/didChangeConfiguration`, CLI flags).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub context: Option<String>,
    pub namespace: Option<String>,
    pub paused: Option<bool>,
}

/// Everything that can happen to the engine. Handlers send one of these and
/// return at once; the engine's loop is the only owner of state.
#[derive(Debug)]
pub enum Input {
    /// Absolute local paths that changed (written, created or deleted: the
    /// engine looks at the disk when it plans the batch, so one variant
    /// covers all three and the latest state always wins).
    Changed {
        paths: Vec<PathBuf>,
        origin: ChangeOrigin,
    },
    /// Send these files over the container's copy even where it changed
    /// since podloop wrote it (the user resolved a conflict for the local
    /// file: `on_conflict = "skip"` left it, or they want to be sure).
    Overwrite {
        paths: Vec<PathBuf>,
    },
    /// A workspace folder was opened (its `podloop.toml`, if any, is read).
    AddRoot(PathBuf),
    RemoveRoot(PathBuf),
    /// `podloop.toml` under this root changed on disk: reload it.
    ConfigChanged(PathBuf),
    SetOverrides(Overrides),
    /// Push every mapped file that differs from what each target holds.
    SyncAll {
        reply: Option<oneshot::Sender<SyncAllReport>>,
    },
    /// Compare every mapped file with what each target holds and report the
    /// differences in `SyncAllReport::drift`, sending nothing
    /// (`podloop sync --all --check`).
    Check {
        reply: oneshot::Sender<SyncAllReport>,
    },
    /// Run every mapping's `reload` command now.
    Reload,
    Pause,
    Resume,
    /// Answer with the current status.
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// Stop background work; pending saves are reported as undelivered.
    Shutdown,
}

/// What the engine tells the outside world. The LSP layer turns these into
/// notifications; the CLI prints them.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Sent only when it differs from the previous one.
    Status(Status),
    /// The complete set of problems for one local file (empty = clear).
    FileProblems {
        path: PathBuf,
        problems: Vec<Problem>,
    },
    /// A problem not tied to a file (no pod matches, unauthorized, ...).
    /// Sent once per distinct text until the problem changes.
    Message {
        level: Level,
        text: String,
    },
    /// One line per batch and other log-worthy facts.
    Log {
        level: Level,
        text: String,
    },
    Progress(Progress),
    /// The local folders that mappings cover, sent when the set changes, so
    /// the LSP layer can register `workspace/didChangeWatchedFiles` for them.
    MappedFolders(Vec<PathBuf>),
}

/// How the engine starts.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Workspace roots; each one's `podloop.toml` (if any) is read.
    pub roots: Vec<PathBuf>,
    pub overrides: Overrides,
    /// Run podloop's own `notify` watcher on the mapped folders, for clients
    /// that cannot send `workspace/didChangeWatchedFiles` (Neovim 0.7-0.11).
    pub own_file_watcher: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
    Info,
    Debug,
}

/// What a problem is about, when an editor can offer something for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    Other,
    /// The container's copy changed since podloop wrote it
    /// (`Input::Overwrite` resolves it for the local copy).
    Conflict,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub severity: Level,
    pub kind: ProblemKind,
    /// 0-based line in the local file (config errors point at their key).
    pub line: u32,
    pub column: u32,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    Begin {
        id: u64,
        title: String,
        message: Option<String>,
    },
    Report {
        id: u64,
        message: String,
        percentage: Option<u32>,
    },
    End {
        id: u64,
        message: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    Warning,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    Idle,
    Syncing,
    Paused,
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    Synced,
    Syncing,
    Error,
    Waiting,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub health: Health,
    pub state: EngineState,
    /// True exactly when nothing is pending or in flight.
    pub quiescent: bool,
    pub message: String,
    /// Changed paths not yet delivered to every target.
    pub pending: usize,
    pub targets: Vec<TargetStatus>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetStatus {
    pub mapping: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub state: TargetState,
    pub last_sync: Option<LastSync>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LastSync {
    pub files: usize,
    pub bytes: u64,
    pub duration: Duration,
    pub at: SystemTime,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncAllReport {
    pub files_sent: usize,
    pub files_deleted: usize,
    pub targets: usize,
    pub failures: Vec<String>,
    /// Differences found by `Input::Check` (one line each).
    pub drift: Vec<String>,
}

// ---------------------------------------------------------------------------
// The engine's view of a cluster. Implemented over kube in `convert::kube`;
// tests may implement it in memory.
// ---------------------------------------------------------------------------

/// Which containers a mapping writes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TargetSpec {
    pub context: Option<String>,
    /// Empty when neither the config nor an override names one: "the
    /// namespace of `context` in the kubeconfig, else `default`". The
    /// cluster resolves it; the engine never guesses it.
    pub namespace: String,
    pub pods: PodSelector,
    pub container: Option<String>,
    /// All matching Ready pods, or only the first (`pods = "first"`).
    pub all_replicas: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PodSelector {
    Labels(String),
    Name(String),
}

/// One container that a mapping writes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    /// Goes up when the container restarts in the same pod.
    pub restart_count: u32,
}

/// A path relative to a mapping's root, as raw bytes (file names need not be
/// UTF-8). Never empty, never absolute, never contains `.` or `..` segments:
/// the constructor in `engine::mapping` enforces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelPath(pub(crate) Vec<u8>);

impl RelPath {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Write a regular file; content is read from `local` while streaming.
    Put {
        local: PathBuf,
        size: u64,
        /// Permission bits (`0o7777`), carried as they are locally, as
        /// `kubectl cp` does: a 0600 key stays 0600 in the container.
        mode: u32,
        /// What the target should hold there now; the container checks it
        /// before replacing the file and reports a [`RemoteChange`] if not.
        expect: Option<Expected>,
        /// The bytes planning read and hashed, for a small file: sent as
        /// they are, so what podloop records as written is exactly what the
        /// container gets (the file may change again meanwhile: that is the
        /// next batch), and the file is read once, not once more per send.
        content: Option<Content>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// Remove a file or a whole folder. `expect` as for `Put`: a file the
    /// container changed since podloop wrote it is a conflict too.
    Delete {
        expect: Option<Expected>,
    },
}

/// A small file's bytes as planning read them (cheap to clone into a batch).
#[derive(Clone, PartialEq, Eq)]
pub struct Content(pub std::sync::Arc<[u8]>);

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Content({} bytes)", self.0.len())
    }
}

/// What the engine believes a target holds at a path a `Put` replaces or a
/// `Delete` removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The sha256 podloop last wrote (or a manifest showed); `None`: the
    /// path should not exist.
    pub held: Option<[u8; 32]>,
    /// The sha256 of the content being sent (`None`: the path is being
    /// deleted): a target that already holds it has no conflict.
    pub new: Option<[u8; 32]>,
    /// `on_conflict = "skip"`: leave a changed file as the container has it.
    pub skip_if_changed: bool,
}

/// A file the container changed since podloop wrote it, found while
/// delivering (an ordinary save checks what it replaces).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteChange {
    pub path: RelPath,
    pub now: RemoteHolds,
    /// Size of the container's copy, when it is a file.
    pub size: Option<u64>,
    /// Left as the container has it (`on_conflict = "skip"`).
    pub skipped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteHolds {
    File([u8; 32]),
    Absent,
    NotAFile,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: RelPath,
    pub op: Op,
}

/// Everything one exec carries to one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Absolute folder in the container; never `/`.
    pub remote_root: Vec<u8>,
    pub entries: Vec<Entry>,
    pub reload: Option<String>,
    /// The mapping's `agent`: false keeps the transport from copying its
    /// container agent in (sessions stay shells).
    pub agent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub bytes_sent: u64,
    /// `reload` exit code and the tail of its output, when it ran.
    pub reload: Option<ReloadOutcome>,
    pub conflicts: Vec<RemoteChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub exit_code: i32,
    pub output_tail: String,
}

/// Hash and size of every file under a remote root, for resync after a pod
/// replacement and for drift checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub files: std::collections::BTreeMap<RelPath, ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    pub sha256: [u8; 32],
    pub size: u64,
    pub executable: bool,
}

/// A change in which containers a spec resolves to.
pub type TargetList = Vec<Target>;

/// The cluster errors the engine must tell apart. Each carries its own
/// user-facing message (lowercase, with context and a hint) from the
/// transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Worth retrying with backoff: connection refused, 5xx, 429, a stream
    /// cut mid-batch, no status frame.
    #[error("{0}")]
    Transient(String),
    /// The cluster answered, but the container cannot take the batch yet
    /// (its disk is full): retried with backoff like `Transient`, and the
    /// status says what blocks it rather than `disconnected`.
    #[error("{0}")]
    Blocked(String),
    /// Will not get better by retrying the same thing (403, missing tar,
    /// permission denied, no such container): report and wait for a change.
    #[error("{0}")]
    Permanent(String),
    /// A local file changed while it was being streamed (the editor was
    /// still writing it); nothing was applied. Send again, without backoff.
    #[error("{0}")]
    LocalChanged(String),
    /// Some entries were refused by the container; the rest landed.
    #[error("{message}")]
    Partial {
        message: String,
        failed: Vec<(RelPath, String)>,
        conflicts: Vec<RemoteChange>,
    },
}

pub trait Cluster: Send + Sync + 'static {
    /// The containers `spec` resolves to right now (Ready, not terminating).
    fn resolve(
        &self,
        spec: &TargetSpec,
    ) -> impl Future<Output = Result<TargetList, ClusterError>> + Send;

    /// Follow `spec`: every time the resolved list changes, send it. Runs
    /// until the receiver is dropped; re-lists after a 410 or a dropped watch.
    fn watch(
        &self,
        spec: &TargetSpec,
        changes: tokio::sync::mpsc::Sender<Result<TargetList, ClusterError>>,
    ) -> impl Future<Output = ()> + Send;

    /// Apply one batch in one exec: deletes, then files written into a
    /// staging folder and renamed into place, then `reload`. Reported as
    /// delivered only after the exec's status frame says success.
    fn deliver(
        &self,
        target: &Target,
        batch: Batch,
    ) -> impl Future<Output = Result<Delivery, ClusterError>> + Send;

    /// Hash every file under `remote_root` in one exec.
    fn manifest(
        &self,
        target: &Target,
        remote_root: &[u8],
    ) -> impl Future<Output = Result<Manifest, ClusterError>> + Send;
}
