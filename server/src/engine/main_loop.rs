//! The engine's main loop, in the style of rust-analyzer's `main_loop.rs`:
//! one struct owns all state, events arrive on channels, background work
//! (resolving pods, delivering batches, timers) is spawned and reports back
//! with a message. Nothing here awaits anything but the next event.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::api::*;
use super::config::{self, Config, ConfigErrors, PodsMode};
use super::local_reads::LocalReads;
use super::mapping::Mapping;
use super::plan::{run_batch, BatchKind, BatchOutcome, BatchRequest, Held, Note};
use super::EngineHandle;

/// A batch with at least this many paths gets a progress report at once;
/// smaller ones only when they run longer than [`SLOW_BATCH`].
const LARGE_BATCH: usize = 50;
const SLOW_BATCH: Duration = Duration::from_secs(1);
/// The first retry comes quickly (most transport faults are a single lost
/// connection); the cap keeps a long outage from pushing the next try out
/// of sight.
const RETRY_BASE: Duration = Duration::from_millis(150);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long to let a local write finish before re-sending a batch that
/// caught a file mid-write.
const LOCAL_WRITE_SETTLE: Duration = Duration::from_millis(20);
/// How long a status that only changes target lines may wait for the rest
/// of its wave (see `publish_status`).
const STATUS_HOLD: Duration = Duration::from_millis(100);

type MappingId = u64;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct TargetKey {
    mapping: MappingId,
    namespace: String,
    pod: String,
    container: String,
}

impl TargetKey {
    fn new(mapping: MappingId, t: &Target) -> Self {
        TargetKey {
            mapping,
            namespace: t.namespace.clone(),
            pod: t.pod.clone(),
            container: t.container.clone(),
        }
    }
    fn describe(&self) -> String {
        format!(
            "{}/{} (container {})",
            self.namespace, self.pod, self.container
        )
    }
}

enum Event {
    Targets {
        mapping: MappingId,
        result: Result<TargetList, ClusterError>,
    },
    BatchDone {
        key: TargetKey,
        batch: u64,
        outcome: Box<BatchOutcome>,
    },
    /// A retry or quiet-window deadline passed: re-evaluate dispatch.
    Wake,
}

/// Where a set of mappings comes from.
struct Source {
    /// The config file (for roots: `root/podloop.toml`, may not exist).
    file: PathBuf,
    root: Option<PathBuf>,
    /// A config given in memory (CLI `LOCAL:REMOTE`): never reloaded.
    fixed: Option<Config>,
    /// The last config that parsed; kept while the file has errors so a
    /// typo does not stop syncing.
    good: Option<Config>,
}

struct MappingState {
    info: Arc<Mapping>,
    spec: TargetSpec,
    pods_mode: PodsMode,
    batch_window: Duration,
    /// The identity used to keep state across config reloads.
    identity: String,
    resolved: bool,
    resolve_error: Option<ClusterError>,
    /// Changes with no target to carry them yet.
    orphans: BTreeSet<RelPath>,
    /// A full sync/check was asked before the first resolution.
    full_on_resolve: Vec<(BatchKind, u64)>,
    watch: JoinHandle<()>,
}

impl Drop for MappingState {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

struct Retry {
    attempt: u32,
    at: Instant,
    at_wall: SystemTime,
    reason: String,
    /// The container answered (`ClusterError::Blocked`): not `disconnected`.
    reachable: bool,
}

struct InFlight {
    id: u64,
    started: Instant,
    paths: BTreeSet<RelPath>,
    kind: BatchKind,
    waiters: Vec<u64>,
    reload: bool,
    progress: Option<ProgressGuard>,
}

/// A batch of changes delivered to one target, waiting to be logged with
/// the rest of its wave.
struct Delivered {
    what: DeliveredWhat,
    pod: String,
    ms: u128,
    at: Instant,
}

/// The part of a delivery that targets share to be reported together.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct DeliveredWhat {
    mapping: String,
    namespace: String,
    container: String,
    files: usize,
    deletes: usize,
    bytes: u64,
}

struct Tracked {
    target: Target,
    pending: BTreeSet<RelPath>,
    /// Paths that failed permanently: sent again with the next batch.
    failed: BTreeSet<RelPath>,
    /// Paths the user chose to overwrite whatever the container changed
    /// (`Input::Overwrite`): sent without the conflict check until a batch
    /// delivers them.
    overwrite: BTreeSet<RelPath>,
    full_sync: Option<Vec<u64>>,
    full_check: Option<Vec<u64>>,
    reload_requested: bool,
    in_flight: Option<InFlight>,
    held: HashMap<RelPath, Held>,
    last_change: Option<Instant>,
    retry: Option<Retry>,
    error: Option<String>,
    reload_warned: BTreeSet<PathBuf>,
    last_sync: Option<LastSync>,
}

impl Tracked {
    /// Puts an unfinished batch's work back, to coalesce with whatever
    /// arrived meanwhile: nothing is lost.
    fn requeue(&mut self, inflight: &mut InFlight) {
        self.pending.extend(inflight.paths.iter().cloned());
        self.reload_requested |= inflight.reload;
        match inflight.kind {
            BatchKind::FullSync => self
                .full_sync
                .get_or_insert_with(Vec::new)
                .append(&mut inflight.waiters),
            BatchKind::Check => self
                .full_check
                .get_or_insert_with(Vec::new)
                .append(&mut inflight.waiters),
            BatchKind::Changes => {}
        }
    }

    fn new(target: Target) -> Self {
        Tracked {
            target,
            pending: BTreeSet::new(),
            failed: BTreeSet::new(),
            overwrite: BTreeSet::new(),
            full_sync: None,
            full_check: None,
            reload_requested: false,
            in_flight: None,
            held: HashMap::new(),
            last_change: None,
            retry: None,
            error: None,
            reload_warned: BTreeSet::new(),
            last_sync: None,
        }
    }
}

struct Waiter {
    check: bool,
    remaining: BTreeSet<TargetKey>,
    unresolved: BTreeSet<MappingId>,
    report: SyncAllReport,
    reply: Option<oneshot::Sender<SyncAllReport>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum ProblemSource {
    Config,
    Local(MappingId),
    Delivery(TargetKey),
    Reload(TargetKey),
    Conflict(TargetKey),
}

/// Ends its progress report when dropped, so no code path can leak one.
struct ProgressGuard {
    id: u64,
    outputs: mpsc::UnboundedSender<Output>,
    end_message: Option<String>,
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        let _ = self.outputs.send(Output::Progress(Progress::End {
            id: self.id,
            message: self.end_message.take(),
        }));
    }
}

pub(crate) struct MainLoop<C: Cluster> {
    cluster: Arc<C>,
    outputs: mpsc::UnboundedSender<Output>,
    events_tx: mpsc::UnboundedSender<Event>,
    inputs_tx: mpsc::UnboundedSender<Input>,
    overrides: Overrides,
    paused: bool,
    own_file_watcher: bool,
    watcher: Option<crate::fswatch::FsWatcher>,
    sources: Vec<Source>,
    config_errors: BTreeMap<PathBuf, String>,
    mappings: BTreeMap<MappingId, MappingState>,
    targets: BTreeMap<TargetKey, Tracked>,
    waiters: BTreeMap<u64, Waiter>,
    problems: BTreeMap<PathBuf, BTreeMap<ProblemSource, Vec<Problem>>>,
    emitted_problems: HashMap<PathBuf, Vec<Problem>>,
    dirty_problems: BTreeSet<PathBuf>,
    messages: BTreeMap<String, String>,
    outside_reported: HashSet<PathBuf>,
    mapped_folders: Vec<PathBuf>,
    last_status: Option<Status>,
    /// Since when a changed status has not been published (`publish_status`).
    status_held_since: Option<Instant>,
    /// When the earliest running batch without a progress turns slow.
    slow_check: Option<Instant>,
    /// Deliveries not yet logged (`flush_deliveries`), oldest first.
    deliveries: Vec<Delivered>,
    deliveries_wake: bool,
    next_id: u64,
    /// Batches still running for targets that were removed (pod not Ready,
    /// replaced, mapping changed). A target that comes back under the same
    /// key waits for them: two batches to one container at once could land
    /// out of order and leave a stale file.
    draining: HashMap<TargetKey, u64>,
}

pub(crate) fn start<C: Cluster>(
    cluster: C,
    options: EngineOptions,
    fixed: Vec<Config>,
) -> (EngineHandle, mpsc::UnboundedReceiver<Output>) {
    let (inputs_tx, inputs_rx) = mpsc::unbounded_channel();
    let (outputs, outputs_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let mut main = MainLoop {
        cluster: Arc::new(cluster),
        outputs,
        events_tx,
        inputs_tx: inputs_tx.clone(),
        paused: options.overrides.paused.unwrap_or(false),
        overrides: options.overrides.clone(),
        own_file_watcher: options.own_file_watcher,
        watcher: None,
        sources: Vec::new(),
        config_errors: BTreeMap::new(),
        mappings: BTreeMap::new(),
        targets: BTreeMap::new(),
        waiters: BTreeMap::new(),
        problems: BTreeMap::new(),
        emitted_problems: HashMap::new(),
        dirty_problems: BTreeSet::new(),
        messages: BTreeMap::new(),
        outside_reported: HashSet::new(),
        mapped_folders: Vec::new(),
        last_status: None,
        status_held_since: None,
        slow_check: None,
        deliveries: Vec::new(),
        deliveries_wake: false,
        next_id: 1,
        draining: HashMap::new(),
    };
    for config in fixed {
        main.sources.push(Source {
            file: config.file.clone(),
            root: None,
            fixed: Some(config.clone()),
            good: Some(config),
        });
    }
    for root in options.roots {
        main.add_root(root);
    }
    tokio::spawn(main.run(inputs_rx, events_rx));
    (EngineHandle { inputs: inputs_tx }, outputs_rx)
}

impl<C: Cluster> MainLoop<C> {
    async fn run(
        mut self,
        mut inputs: mpsc::UnboundedReceiver<Input>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        self.rebuild_mappings();
        self.after_event();
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    None => break,
                    Some(Input::Shutdown) => {
                        self.shutdown();
                        break;
                    }
                    Some(input) => self.on_input(input),
                },
                Some(event) = events.recv() => self.on_event(event),
            }
            // Whatever else is already queued (the other replicas' results of
            // a fan-out, a burst of saves) joins this turn: one dispatch and
            // one status for all of it, as rust-analyzer's loop coalesces.
            while let Ok(event) = events.try_recv() {
                self.on_event(event);
            }
            self.after_event();
        }
    }

    fn after_event(&mut self) {
        self.report_slow_batches();
        self.dispatch();
        self.flush_deliveries(false);
        self.finish_waiters();
        self.flush_problems();
        self.publish_status();
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn emit(&self, output: Output) {
        let _ = self.outputs.send(output);
    }

    fn log(&self, level: Level, text: String) {
        match level {
            Level::Error => tracing::error!("{text}"),
            Level::Warning => tracing::warn!("{text}"),
            Level::Info => tracing::info!("{text}"),
            Level::Debug => tracing::debug!("{text}"),
        }
        self.emit(Output::Log { level, text });
    }

    /// Shows `text` under `topic` once; a new text replaces it, `None`
    /// forgets it so the same problem may be shown again if it comes back.
    fn message(&mut self, topic: &str, problem: Option<(Level, String)>) {
        match problem {
            Some((level, text)) => {
                if self.messages.get(topic) != Some(&text) {
                    self.messages.insert(topic.to_owned(), text.clone());
                    self.emit(Output::Message { level, text });
                }
            }
            None => {
                self.messages.remove(topic);
            }
        }
    }

    // -- inputs -------------------------------------------------------------

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Changed { paths, origin } => self.on_changed(paths, origin),
            Input::Overwrite { paths } => self.on_overwrite(paths),
            Input::AddRoot(root) => {
                self.add_root(root);
                self.rebuild_mappings();
            }
            Input::RemoveRoot(root) => {
                self.sources
                    .retain(|s| s.root.as_deref() != Some(root.as_path()));
                let file = root.join(config::FILE_NAME);
                self.set_config_problems(&file, Vec::new());
                self.config_errors.remove(&file);
                self.rebuild_mappings();
            }
            Input::ConfigChanged(path) => {
                let file = if path.file_name().is_some_and(|n| n == config::FILE_NAME) {
                    path
                } else {
                    path.join(config::FILE_NAME)
                };
                if !self.sources.iter().any(|s| s.file == file) {
                    if let Some(root) = file.parent() {
                        self.add_root(root.to_path_buf());
                    }
                } else {
                    self.reload_source(&file);
                }
                self.rebuild_mappings();
            }
            Input::SetOverrides(overrides) => {
                if let Some(paused) = overrides.paused {
                    self.set_paused(paused);
                }
                let changed = overrides.context != self.overrides.context
                    || overrides.namespace != self.overrides.namespace;
                self.overrides = overrides;
                if changed {
                    self.rebuild_mappings();
                }
            }
            Input::SyncAll { reply } => self.start_full(false, reply),
            Input::Check { reply } => self.start_full(true, Some(reply)),
            Input::Reload => {
                for t in self.targets.values_mut() {
                    t.reload_requested = true;
                }
            }
            Input::Pause => self.set_paused(true),
            Input::Resume => self.set_paused(false),
            Input::Status { reply } => {
                let _ = reply.send(self.compute_status());
            }
            Input::Shutdown => {}
        }
    }

    fn set_paused(&mut self, paused: bool) {
        if self.paused != paused {
            self.paused = paused;
            self.log(
                Level::Info,
                if paused {
                    "paused: saves are kept and sent on resume".into()
                } else {
                    "resumed".into()
                },
            );
        }
    }

    fn on_changed(&mut self, paths: Vec<PathBuf>, origin: ChangeOrigin) {
        for path in paths {
            if path.file_name().is_some_and(|n| n == config::FILE_NAME)
                && self
                    .sources
                    .iter()
                    .any(|s| s.file == path && s.fixed.is_none())
            {
                self.reload_source(&path);
                self.rebuild_mappings();
                continue;
            }
            let mut matched = false;
            let now = Instant::now();
            let ids: Vec<MappingId> = self.mappings.keys().copied().collect();
            for id in ids {
                let m = &self.mappings[&id];
                let Some(rel) = m.info.relative(&path) else {
                    continue;
                };
                matched = true;
                if m.info.is_excluded(&rel, path.is_dir()) {
                    continue;
                }
                self.add_pending(id, rel, now);
            }
            if !matched && self.outside_reported.insert(path.clone()) {
                self.log(
                    Level::Debug,
                    format!(
                        "ignored {} ({origin:?}): outside every mapping",
                        path.display()
                    ),
                );
            }
        }
    }

    fn on_overwrite(&mut self, paths: Vec<PathBuf>) {
        let now = Instant::now();
        for path in paths {
            let ids: Vec<MappingId> = self.mappings.keys().copied().collect();
            for id in ids {
                let Some(rel) = self.mappings[&id].info.relative(&path) else {
                    continue;
                };
                for (_, t) in self.targets.range_mut(range_of(id)) {
                    t.overwrite.insert(rel.clone());
                }
                self.add_pending(id, rel, now);
            }
        }
    }

    fn add_pending(&mut self, id: MappingId, rel: RelPath, now: Instant) {
        let mut any = false;
        for (key, t) in self.targets.range_mut(range_of(id)) {
            debug_assert_eq!(key.mapping, id);
            t.pending.insert(rel.clone());
            t.last_change = Some(now);
            any = true;
        }
        if !any {
            if let Some(m) = self.mappings.get_mut(&id) {
                m.orphans.insert(rel);
            }
        }
    }

    // -- config -------------------------------------------------------------

    fn add_root(&mut self, root: PathBuf) {
        let file = root.join(config::FILE_NAME);
        if self.sources.iter().any(|s| s.file == file) {
            return;
        }
        self.sources.push(Source {
            file: file.clone(),
            root: Some(root),
            fixed: None,
            good: None,
        });
        self.reload_source(&file);
    }

    fn reload_source(&mut self, file: &Path) {
        let Some(index) = self.sources.iter().position(|s| s.file == file) else {
            return;
        };
        if self.sources[index].fixed.is_some() {
            return;
        }
        if !file.exists() {
            // A root without podloop.toml is simply not synced.
            self.sources[index].good = None;
            self.config_errors.remove(file);
            self.set_config_problems(file, Vec::new());
            return;
        }
        match config::load(file) {
            Ok(cfg) => {
                self.sources[index].good = Some(cfg);
                if self.config_errors.remove(file).is_some() {
                    self.log(Level::Info, format!("{}: config fixed", file.display()));
                }
                self.set_config_problems(file, Vec::new());
            }
            Err(ConfigErrors(errors)) => {
                let problems = errors
                    .iter()
                    .map(|e| Problem {
                        kind: ProblemKind::Other,
                        severity: Level::Error,
                        line: e.line,
                        column: e.column,
                        message: match &e.key {
                            Some(k) => format!("`{k}`: {}", e.message),
                            None => e.message.clone(),
                        },
                    })
                    .collect();
                let text = errors.first().map(|e| e.to_string()).unwrap_or_default();
                self.log(Level::Error, format!("config error: {text}"));
                self.config_errors.insert(file.to_path_buf(), text);
                self.set_config_problems(file, problems);
            }
        }
    }

    fn set_config_problems(&mut self, file: &Path, problems: Vec<Problem>) {
        self.set_problems(file, ProblemSource::Config, problems);
    }

    /// Recomputes the mapping set from the sources; mappings whose identity
    /// did not change keep their targets and state.
    fn rebuild_mappings(&mut self) {
        let mut wanted: Vec<(String, Arc<Mapping>, TargetSpec, PodsMode, Duration)> = Vec::new();
        for source in &self.sources {
            let Some(cfg) = &source.good else { continue };
            for mc in &cfg.mappings {
                let namespace = mc
                    .namespace
                    .clone()
                    .or_else(|| self.overrides.namespace.clone())
                    .or_else(|| cfg.namespace.clone())
                    .unwrap_or_default();
                let spec = TargetSpec {
                    context: self
                        .overrides
                        .context
                        .clone()
                        .or_else(|| cfg.context.clone()),
                    namespace,
                    pods: mc.selector.clone(),
                    container: mc.container.clone(),
                    all_replicas: mc.pods == PodsMode::All,
                };
                let identity = format!(
                    "{}\0{:?}\0{:?}\0{}",
                    cfg.file.display(),
                    mc,
                    spec,
                    cfg.max_file_size
                );
                let info = Arc::new(Mapping::new(mc, &cfg.file, cfg.max_file_size));
                wanted.push((identity, info, spec, mc.pods, cfg.batch_window));
            }
        }
        let keep: HashSet<&String> = wanted.iter().map(|w| &w.0).collect();
        let removed: Vec<MappingId> = self
            .mappings
            .iter()
            .filter(|(_, m)| !keep.contains(&m.identity))
            .map(|(id, _)| *id)
            .collect();
        let mut refeed: Vec<PathBuf> = Vec::new();
        for id in removed {
            let keys: Vec<TargetKey> = self
                .targets
                .range(range_of(id))
                .map(|(k, _)| k.clone())
                .collect();
            let m = self.mappings.get(&id).map(|m| m.info.clone());
            for key in keys {
                if let (Some(t), Some(info)) = (self.remove_target(&key, "the mapping changed"), &m)
                {
                    refeed.extend(
                        t.pending
                            .iter()
                            .chain(&t.failed)
                            .map(|r| info.local_path(r)),
                    );
                }
            }
            if let Some(mut m) = self.mappings.remove(&id) {
                refeed.extend(m.orphans.iter().map(|r| m.info.local_path(r)));
                for (_, w) in std::mem::take(&mut m.full_on_resolve) {
                    if let Some(waiter) = self.waiters.get_mut(&w) {
                        waiter.unresolved.remove(&id);
                    }
                }
                self.clear_problem_source(|s| *s == ProblemSource::Local(id));
            }
        }
        let existing: HashSet<String> =
            self.mappings.values().map(|m| m.identity.clone()).collect();
        for (identity, info, spec, pods_mode, batch_window) in wanted {
            if existing.contains(&identity) {
                continue;
            }
            let id = self.id();
            let watch = self.spawn_watch(id, spec.clone());
            self.mappings.insert(
                id,
                MappingState {
                    info,
                    spec,
                    pods_mode,
                    batch_window,
                    identity,
                    resolved: false,
                    resolve_error: None,
                    orphans: BTreeSet::new(),
                    full_on_resolve: Vec::new(),
                    watch,
                },
            );
        }
        if !refeed.is_empty() {
            self.on_changed(refeed, ChangeOrigin::Watcher);
        }
        self.update_mapped_folders();
    }

    fn update_mapped_folders(&mut self) {
        let mut folders: Vec<PathBuf> = self
            .mappings
            .values()
            .map(|m| m.info.local.clone())
            .collect();
        folders.sort();
        folders.dedup();
        if folders == self.mapped_folders {
            return;
        }
        self.mapped_folders = folders.clone();
        if self.own_file_watcher {
            if self.watcher.is_none() {
                let handle = EngineHandle {
                    inputs: self.inputs_tx.clone(),
                };
                match crate::fswatch::FsWatcher::new(handle) {
                    Ok(w) => self.watcher = Some(w),
                    Err(e) => self.log(
                        Level::Warning,
                        format!("cannot start the file watcher: {e}"),
                    ),
                }
            }
            if let Some(w) = &mut self.watcher {
                let problems = w.set_folders(&folders);
                for p in problems {
                    self.log(Level::Warning, p);
                }
            }
        }
        self.emit(Output::MappedFolders(folders));
    }

    fn spawn_watch(&self, id: MappingId, spec: TargetSpec) -> JoinHandle<()> {
        let cluster = self.cluster.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let mut attempt = 0u32;
            loop {
                let result = cluster.resolve(&spec).await;
                let transient = matches!(result, Err(ClusterError::Transient(_)));
                if events
                    .send(Event::Targets {
                        mapping: id,
                        result,
                    })
                    .is_err()
                {
                    return;
                }
                if transient {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt = attempt.saturating_add(1);
                    continue;
                }
                attempt = 0;
                let (tx, mut rx) = mpsc::channel(16);
                let forward = async {
                    while let Some(result) = rx.recv().await {
                        if events
                            .send(Event::Targets {
                                mapping: id,
                                result,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                };
                // The watch ends only if the transport gives up; then list
                // again after a pause rather than spinning.
                tokio::join!(cluster.watch(&spec, tx), forward);
                if events.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff(2)).await;
            }
        })
    }

    // -- events -------------------------------------------------------------

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Targets { mapping, result } => self.on_targets(mapping, result),
            Event::BatchDone {
                key,
                batch,
                outcome,
            } => self.on_batch_done(key, batch, *outcome),
            Event::Wake => {}
        }
    }

    fn progress(&mut self, title: String, message: Option<String>) -> ProgressGuard {
        let id = self.id();
        self.emit(Output::Progress(Progress::Begin { id, title, message }));
        ProgressGuard {
            id,
            outputs: self.outputs.clone(),
            end_message: None,
        }
    }

    fn on_targets(&mut self, id: MappingId, result: Result<TargetList, ClusterError>) {
        let Some(m) = self.mappings.get_mut(&id) else {
            return;
        };
        let topic = format!("resolve:{}", m.info.name);
        let mut list = match result {
            Err(e) => {
                let text = format!("mapping `{}`: {e}", m.info.name);
                let level = if matches!(e, ClusterError::Transient(_)) {
                    Level::Warning
                } else {
                    Level::Error
                };
                m.resolve_error = Some(e);
                let first = !m.resolved;
                m.resolved = true;
                if first {
                    self.fail_unresolved_waiters(id, &text);
                }
                self.message(&topic, Some((level, text)));
                return;
            }
            Ok(list) => list,
        };
        m.resolve_error = None;
        let first_resolution = !m.resolved;
        m.resolved = true;
        if m.pods_mode == PodsMode::First && list.len() > 1 {
            // Stay on the pod we already write to while it lasts.
            let current: Option<usize> = list
                .iter()
                .position(|t| self.targets.contains_key(&TargetKey::new(id, t)));
            let keep = current.unwrap_or(0);
            list = vec![list.swap_remove(keep)];
        }
        let m = &self.mappings[&id];
        if list.is_empty() {
            let what = match &m.spec.pods {
                PodSelector::Labels(s) => format!("no Ready pod matches `{s}`"),
                PodSelector::Name(n) => format!("pod `{n}` is not Ready or does not exist"),
            };
            let ns = if m.spec.namespace.is_empty() {
                "the context's namespace".to_owned()
            } else {
                format!("namespace `{}`", m.spec.namespace)
            };
            let text = format!(
                "mapping `{}`: {what} in {ns}; changes stay pending until one is Ready",
                m.info.name
            );
            self.message(&topic, Some((Level::Warning, text)));
        } else {
            self.message(&topic, None);
        }

        let new_keys: BTreeMap<TargetKey, Target> = list
            .into_iter()
            .map(|t| (TargetKey::new(id, &t), t))
            .collect();
        let old_keys: Vec<TargetKey> = self
            .targets
            .range(range_of(id))
            .map(|(k, _)| k.clone())
            .collect();
        let mut carried: BTreeSet<RelPath> = BTreeSet::new();
        for key in &old_keys {
            let gone = match new_keys.get(key) {
                None => true,
                // Same name, new pod (StatefulSet): a fresh filesystem.
                Some(t) => t.pod_uid != self.targets[key].target.pod_uid,
            };
            if gone {
                if let Some(t) = self.remove_target(key, "the pod went away") {
                    carried.extend(t.pending);
                    carried.extend(t.failed);
                    if let Some(f) = t.in_flight {
                        carried.extend(f.paths);
                    }
                }
            }
        }
        let m = self.mappings.get_mut(&id).expect("checked above");
        let orphans = std::mem::take(&mut m.orphans);
        let on_resolve = std::mem::take(&mut m.full_on_resolve);
        let mut fresh = Vec::new();
        for (key, target) in new_keys {
            if let Some(t) = self.targets.get_mut(&key) {
                let restarted = target.restart_count > t.target.restart_count;
                if restarted {
                    t.full_sync.get_or_insert_with(Vec::new);
                }
                t.target = target;
                if restarted {
                    self.log(
                        Level::Info,
                        format!(
                            "container restarted in {}: checking its files",
                            key.describe()
                        ),
                    );
                }
                continue;
            }
            let mut t = Tracked::new(target);
            t.pending.extend(orphans.iter().cloned());
            if !t.pending.is_empty() {
                t.last_change = Some(Instant::now());
            }
            if !first_resolution {
                // A replacement or a new replica: bring it to the local state.
                t.full_sync = Some(Vec::new());
                t.pending.extend(carried.iter().cloned());
            }
            fresh.push(key.clone());
            self.targets.insert(key, t);
        }
        let has_targets = self.targets.range(range_of(id)).next().is_some();
        if !has_targets {
            let m = self.mappings.get_mut(&id).expect("checked above");
            m.orphans = orphans;
            m.orphans.extend(carried);
        }
        for (kind, waiter) in on_resolve {
            self.attach_waiter(id, kind, waiter);
        }
        for key in fresh {
            self.log(Level::Debug, format!("target {}", key.describe()));
        }
    }

    fn remove_target(&mut self, key: &TargetKey, why: &str) -> Option<Tracked> {
        let t = self.targets.remove(key)?;
        let mut waiters: Vec<u64> = Vec::new();
        if let Some(f) = &t.in_flight {
            waiters.extend(&f.waiters);
            self.draining.insert(key.clone(), f.id);
        }
        waiters.extend(t.full_sync.iter().flatten());
        waiters.extend(t.full_check.iter().flatten());
        for w in waiters {
            if let Some(waiter) = self.waiters.get_mut(&w) {
                if waiter.remaining.remove(key) {
                    waiter
                        .report
                        .failures
                        .push(format!("{}: {why}", key.describe()));
                }
            }
        }
        self.clear_problem_source(|s| {
            matches!(s, ProblemSource::Delivery(k) | ProblemSource::Reload(k) | ProblemSource::Conflict(k) if k == key)
        });
        self.message(&format!("target:{}", key.describe()), None);
        Some(t)
    }

    // -- full sync / check -------------------------------------------------

    fn start_full(&mut self, check: bool, reply: Option<oneshot::Sender<SyncAllReport>>) {
        let id = self.id();
        self.waiters.insert(
            id,
            Waiter {
                check,
                remaining: BTreeSet::new(),
                unresolved: BTreeSet::new(),
                report: SyncAllReport::default(),
                reply,
            },
        );
        let kind = if check {
            BatchKind::Check
        } else {
            BatchKind::FullSync
        };
        if self.mappings.is_empty() {
            if let Some(w) = self.waiters.get_mut(&id) {
                w.report.failures.push(if self.config_errors.is_empty() {
                    "no mappings: add a podloop.toml with a [[sync]] section".into()
                } else {
                    "the config has errors: fix podloop.toml".into()
                });
            }
        }
        let ids: Vec<MappingId> = self.mappings.keys().copied().collect();
        for mid in ids {
            let m = self.mappings.get_mut(&mid).expect("listed");
            if !m.resolved {
                m.full_on_resolve.push((kind, id));
                if let Some(w) = self.waiters.get_mut(&id) {
                    w.unresolved.insert(mid);
                }
            } else {
                self.attach_waiter(mid, kind, id);
            }
        }
    }

    fn attach_waiter(&mut self, mid: MappingId, kind: BatchKind, waiter: u64) {
        let keys: Vec<TargetKey> = self
            .targets
            .range(range_of(mid))
            .map(|(k, _)| k.clone())
            .collect();
        let Some(w) = self.waiters.get_mut(&waiter) else {
            return;
        };
        w.unresolved.remove(&mid);
        if keys.is_empty() {
            let m = &self.mappings[&mid];
            let why = match &m.resolve_error {
                Some(e) => e.to_string(),
                None => "no Ready pod matches".into(),
            };
            w.report
                .failures
                .push(format!("mapping `{}`: {why}", m.info.name));
            return;
        }
        for key in keys {
            w.remaining.insert(key.clone());
            let t = self.targets.get_mut(&key).expect("listed");
            let slot = if kind == BatchKind::Check {
                &mut t.full_check
            } else {
                &mut t.full_sync
            };
            slot.get_or_insert_with(Vec::new).push(waiter);
        }
    }

    fn fail_unresolved_waiters(&mut self, mid: MappingId, text: &str) {
        if let Some(m) = self.mappings.get_mut(&mid) {
            for (_, w) in std::mem::take(&mut m.full_on_resolve) {
                if let Some(waiter) = self.waiters.get_mut(&w) {
                    waiter.unresolved.remove(&mid);
                    waiter.report.failures.push(text.to_owned());
                }
            }
        }
    }

    fn finish_waiters(&mut self) {
        let done: Vec<u64> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.remaining.is_empty() && w.unresolved.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(mut w) = self.waiters.remove(&id) {
                let summary = if w.check {
                    format!(
                        "check: {} targets, {} differences",
                        w.report.targets,
                        w.report.drift.len()
                    )
                } else {
                    format!(
                        "sync all: {} files sent, {} deleted, {} targets",
                        w.report.files_sent, w.report.files_deleted, w.report.targets
                    )
                };
                self.log(Level::Info, summary);
                if let Some(reply) = w.reply.take() {
                    let _ = reply.send(w.report);
                }
            }
        }
    }

    // -- dispatch -----------------------------------------------------------

    fn dispatch(&mut self) {
        if self.paused {
            return;
        }
        let now = Instant::now();
        // The replicas of a mapping that start together plan the same saved
        // files: they read them once.
        let reads = Arc::new(LocalReads::shared());
        let keys: Vec<TargetKey> = self.targets.keys().cloned().collect();
        for key in keys {
            let Some(m) = self.mappings.get(&key.mapping) else {
                continue;
            };
            let window = m.batch_window;
            let info = m.info.clone();
            // Keyed by container, not mapping: a reloaded config gives the
            // same container a new mapping id.
            if self.draining.keys().any(|d| {
                (&d.namespace, &d.pod, &d.container) == (&key.namespace, &key.pod, &key.container)
            }) {
                continue;
            }
            let t = self.targets.get_mut(&key).expect("listed");
            if t.in_flight.is_some() {
                continue;
            }
            if let Some(r) = &t.retry {
                if r.at > now {
                    continue;
                }
            }
            let (kind, waiters) = if let Some(w) = t.full_check.take() {
                (BatchKind::Check, w)
            } else if let Some(w) = t.full_sync.take() {
                (BatchKind::FullSync, w)
            } else if !t.pending.is_empty() || t.reload_requested {
                (BatchKind::Changes, Vec::new())
            } else {
                continue;
            };
            if kind == BatchKind::Changes && !window.is_zero() && !t.pending.is_empty() {
                if let Some(last) = t.last_change {
                    let due = last + window;
                    if due > now {
                        self.wake_at(due);
                        continue;
                    }
                }
            }
            let paths: BTreeSet<RelPath> = if kind == BatchKind::Check {
                BTreeSet::new()
            } else {
                let mut p = std::mem::take(&mut t.pending);
                p.extend(std::mem::take(&mut t.failed));
                p
            };
            let reload = kind != BatchKind::Check && std::mem::take(&mut t.reload_requested);
            let held = if kind == BatchKind::Changes {
                // Whatever is held under a changed folder too: planning
                // deletes what vanished from it.
                t.held
                    .iter()
                    .filter(|(held_path, _)| {
                        paths.contains(*held_path)
                            || held_path.ancestors().any(|a| paths.contains(&a))
                    })
                    .map(|(p, h)| (p.clone(), h.clone()))
                    .collect()
            } else {
                t.held.clone()
            };
            let request = BatchRequest {
                mapping: info,
                target: t.target.clone(),
                paths: paths.iter().cloned().collect(),
                held,
                kind,
                force_reload: reload,
                overwrite: t.overwrite.clone(),
                reads: reads.clone(),
            };
            let batch_id = self.id();
            let progress = if kind != BatchKind::Changes || paths.len() >= LARGE_BATCH {
                let title = match kind {
                    BatchKind::Check => format!("podloop: checking {}", key.pod),
                    BatchKind::FullSync => format!("podloop: syncing all files to {}", key.pod),
                    BatchKind::Changes => {
                        format!("podloop: syncing {} files to {}", paths.len(), key.pod)
                    }
                };
                Some(self.progress(title, None))
            } else {
                self.watch_for_slow_batches(now + SLOW_BATCH);
                None
            };
            let t = self.targets.get_mut(&key).expect("listed");
            t.in_flight = Some(InFlight {
                id: batch_id,
                started: now,
                paths,
                kind,
                waiters,
                reload,
                progress,
            });
            let cluster = self.cluster.clone();
            let events = self.events_tx.clone();
            tokio::spawn(async move {
                let outcome = run_batch(cluster, request).await;
                let _ = events.send(Event::BatchDone {
                    key,
                    batch: batch_id,
                    outcome: Box::new(outcome),
                });
            });
        }
    }

    /// One timer for every batch that may turn slow, not one per batch: a
    /// save to ten replicas would otherwise wake the loop ten more times a
    /// second later.
    fn watch_for_slow_batches(&mut self, at: Instant) {
        if self.slow_check.is_none_or(|armed| armed > at) {
            self.slow_check = Some(at);
            self.wake_at(at);
        }
    }

    /// Gives each batch running longer than [`SLOW_BATCH`] its progress,
    /// and watches for the next one that may.
    fn report_slow_batches(&mut self) {
        let now = Instant::now();
        if self.slow_check.is_none_or(|at| at > now) {
            return;
        }
        self.slow_check = None;
        let mut next: Option<Instant> = None;
        let mut slow: Vec<TargetKey> = Vec::new();
        for (key, t) in &self.targets {
            let Some(inflight) = t.in_flight.as_ref().filter(|f| f.progress.is_none()) else {
                continue;
            };
            let due = inflight.started + SLOW_BATCH;
            if due <= now {
                slow.push(key.clone());
            } else if next.is_none_or(|n| due < n) {
                next = Some(due);
            }
        }
        for key in slow {
            let title = format!("podloop: syncing to {}", key.pod);
            let guard = self.progress(title, Some("taking longer than usual".into()));
            if let Some(inflight) = self
                .targets
                .get_mut(&key)
                .and_then(|t| t.in_flight.as_mut())
            {
                inflight.progress = Some(guard);
            }
        }
        if let Some(at) = next {
            self.watch_for_slow_batches(at);
        }
    }

    /// One log line for the targets a wave of batches delivered the same
    /// thing to, once the wave is over (nothing in flight) or has taken
    /// [`STATUS_HOLD`]: ten replicas make one line per save, not ten.
    fn flush_deliveries(&mut self, now_anyway: bool) {
        let Some(oldest) = self.deliveries.first().map(|d| d.at) else {
            return;
        };
        let running = self.targets.values().any(|t| t.in_flight.is_some());
        if running && !now_anyway && oldest.elapsed() < STATUS_HOLD {
            if !self.deliveries_wake {
                self.deliveries_wake = true;
                self.wake_at(oldest + STATUS_HOLD);
            }
            return;
        }
        self.deliveries_wake = false;
        let mut groups: BTreeMap<DeliveredWhat, Vec<(String, u128)>> = BTreeMap::new();
        for d in std::mem::take(&mut self.deliveries) {
            groups.entry(d.what).or_default().push((d.pod, d.ms));
        }
        for (what, group) in groups {
            let DeliveredWhat {
                mapping,
                namespace,
                container,
                files,
                deletes,
                bytes,
            } = what;
            let fastest = group.iter().map(|(_, ms)| *ms).min().unwrap_or_default();
            let slowest = group.iter().map(|(_, ms)| *ms).max().unwrap_or_default();
            let took = if fastest == slowest {
                format!("{fastest} ms")
            } else {
                format!("{fastest}–{slowest} ms")
            };
            let what = format!("{files} files, {deletes} deleted ({})", human_bytes(bytes));
            // A busy target may have had several batches of the same shape
            // in one wave.
            let mut batches_per_pod: BTreeMap<&str, usize> = BTreeMap::new();
            for (pod, _) in &group {
                *batches_per_pod.entry(pod.as_str()).or_default() += 1;
            }
            let line = match (batches_per_pod.len(), group.len()) {
                (1, 1) => format!(
                    "{mapping} → {namespace}/{} (container {container}): {what} in {took}",
                    group[0].0
                ),
                (1, times) => format!(
                    "{mapping} → {namespace}/{} (container {container}): {what}, {times} times in {took}",
                    group[0].0
                ),
                (pods, _) => {
                    const NAMED: usize = 5;
                    let mut names: Vec<String> = batches_per_pod
                        .iter()
                        .take(NAMED)
                        .map(|(pod, n)| match n {
                            1 => (*pod).to_owned(),
                            n => format!("{pod} ×{n}"),
                        })
                        .collect();
                    if pods > NAMED {
                        names.push(format!("and {} more", pods - NAMED));
                    }
                    format!(
                        "{mapping} → {pods} pods in {namespace} (container {container}): {}: {what} each in {took}",
                        names.join(", ")
                    )
                }
            };
            self.log(Level::Info, line);
        }
    }

    fn wake_at(&self, at: Instant) {
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let _ = events.send(Event::Wake);
        });
    }

    // -- results ------------------------------------------------------------

    fn on_batch_done(&mut self, key: TargetKey, batch: u64, outcome: BatchOutcome) {
        if self.draining.get(&key) == Some(&batch) {
            // Its paths were carried to the target's successor when it was
            // removed; that one may start now.
            self.draining.remove(&key);
            return;
        }
        let Some(info) = self.mappings.get(&key.mapping).map(|m| m.info.clone()) else {
            return;
        };
        let Some(t) = self.targets.get_mut(&key) else {
            // The pod went away while the batch ran; what it carried was
            // moved to the mapping when the target was removed.
            return;
        };
        if t.in_flight.as_ref().is_none_or(|f| f.id != batch) {
            return;
        }
        let Some(mut inflight) = t.in_flight.take() else {
            return;
        };
        let pod = key.describe();
        let ms = outcome.elapsed.as_millis();

        // Local notes hold whatever the target: a file too large is too large
        // everywhere. Paths that planned fine lose their local problems.
        let mut local_problems: BTreeMap<PathBuf, Vec<Problem>> = BTreeMap::new();
        let mut conflict_problems: BTreeMap<PathBuf, Vec<Problem>> = BTreeMap::new();
        for (rel, note) in &outcome.notes {
            let path = info.local_path(rel);
            let (severity, message) = match note {
                Note::TooLarge(size) => (
                    Level::Warning,
                    format!(
                        "not synced: {} is above max_file_size ({}); raise `max_file_size` in podloop.toml or exclude it",
                        human_bytes(*size),
                        human_bytes(info.max_file_size)
                    ),
                ),
                Note::Unreadable(e) => (Level::Error, format!("not synced: cannot read the file: {e}")),
                Note::EscapingLink(target) => (
                    Level::Warning,
                    format!(
                        "not synced: symlink to `{}` points outside the mapping",
                        String::from_utf8_lossy(target)
                    ),
                ),
                Note::ThroughLink => (
                    Level::Warning,
                    "not synced: the path goes through a symlink, which podloop does not follow".into(),
                ),
                Note::NotRegular => (
                    Level::Warning,
                    "not synced: not a regular file, folder or symlink".into(),
                ),
                Note::Conflict { skipped, detail } => {
                    let text = if *skipped {
                        format!("conflict in {pod}: {detail}; not overwritten (on_conflict = \"skip\")")
                    } else {
                        format!("conflict in {pod}: {detail}; overwritten with the local file")
                    };
                    conflict_problems.entry(path).or_default().push(Problem {
                        kind: ProblemKind::Conflict,
                        severity: Level::Warning,
                        line: 0,
                        column: 0,
                        message: text.clone(),
                    });
                    self.log(Level::Warning, text);
                    continue;
                }
            };
            local_problems.entry(path).or_default().push(Problem {
                kind: ProblemKind::Other,
                severity,
                line: 0,
                column: 0,
                message,
            });
        }
        let planned_ok: Vec<PathBuf> = outcome
            .sent
            .iter()
            .chain(outcome.unchanged.iter())
            .map(|(r, _)| info.local_path(r))
            .collect();
        for path in planned_ok.iter() {
            if !local_problems.contains_key(path) {
                self.set_problems(path, ProblemSource::Local(key.mapping), Vec::new());
            }
        }
        for (path, problems) in local_problems {
            self.set_problems(&path, ProblemSource::Local(key.mapping), problems);
        }
        // A conflict report stays until the file is delivered again without
        // one (or the target goes away).
        let delivered_clean: Vec<PathBuf> = match &outcome.result {
            Ok(Some(_)) | Err(ClusterError::Partial { .. }) => outcome
                .sent
                .iter()
                .map(|(r, _)| info.local_path(r))
                .filter(|p| !conflict_problems.contains_key(p))
                .collect(),
            _ => Vec::new(),
        };
        for path in delivered_clean {
            self.set_problems(&path, ProblemSource::Conflict(key.clone()), Vec::new());
        }
        for (path, problems) in conflict_problems {
            self.set_problems(&path, ProblemSource::Conflict(key.clone()), problems);
        }

        let t = self.targets.get_mut(&key).expect("present");
        for (rel, held) in &outcome.unchanged {
            record_held(&mut t.held, rel, held);
        }
        let mut report_failure: Option<String> = None;
        let mut succeeded: Vec<RelPath> =
            outcome.unchanged.iter().map(|(r, _)| r.clone()).collect();
        let mut failed_paths: Vec<(RelPath, String)> = Vec::new();
        let mut reload_warning: Option<String> = None;
        let mut delivered = false;
        match &outcome.result {
            Ok(delivery) => {
                t.retry = None;
                t.error = None;
                for (rel, held) in &outcome.sent {
                    record_held(&mut t.held, rel, held);
                    t.overwrite.remove(rel);
                    succeeded.push(rel.clone());
                }
                if let Some(d) = delivery {
                    delivered = true;
                    if let Some(r) = &d.reload {
                        if r.exit_code != 0 {
                            reload_warning = Some(format!(
                                "reload `{}` in {pod} exited with code {}: {}",
                                info.reload.as_deref().unwrap_or_default(),
                                r.exit_code,
                                r.output_tail.trim()
                            ));
                        }
                    }
                }
            }
            Err(ClusterError::Partial {
                message, failed, ..
            }) => {
                t.retry = None;
                t.error = Some(message.clone());
                let failed_set: HashMap<&RelPath, &String> =
                    failed.iter().map(|(r, w)| (r, w)).collect();
                for (rel, held) in &outcome.sent {
                    match failed_set.get(rel) {
                        Some(why) => failed_paths.push((rel.clone(), (*why).clone())),
                        None => {
                            record_held(&mut t.held, rel, held);
                            t.overwrite.remove(rel);
                            succeeded.push(rel.clone());
                        }
                    }
                }
                delivered = true;
                report_failure = Some(message.clone());
            }
            Err(ClusterError::LocalChanged(reason)) => {
                // The editor (or a generator) was still writing the file: no
                // fault of the cluster's, so no backoff, no warning, no
                // `disconnected`. Send again once the write has settled.
                t.requeue(&mut inflight);
                self.log(
                    Level::Debug,
                    format!("{} → {pod}: {reason}; sending again", info.name),
                );
                self.wake_at(Instant::now() + LOCAL_WRITE_SETTLE);
                return;
            }
            Err(error @ (ClusterError::Transient(reason) | ClusterError::Blocked(reason))) => {
                let attempt = t.retry.as_ref().map(|r| r.attempt + 1).unwrap_or(0);
                let delay = backoff(attempt);
                t.retry = Some(Retry {
                    attempt,
                    at: Instant::now() + delay,
                    at_wall: SystemTime::now() + delay,
                    reason: reason.clone(),
                    reachable: matches!(error, ClusterError::Blocked(_)),
                });
                t.error = Some(reason.clone());
                t.requeue(&mut inflight);
                let at = Instant::now() + delay;
                // The save is not lost, but the user must see it has not
                // landed yet: a warning on each waiting file, replaced by
                // nothing once a later batch delivers it.
                let waiting = Problem {
                    kind: ProblemKind::Other,
                    severity: Level::Warning,
                    line: 0,
                    column: 0,
                    message: format!(
                        "not yet delivered to pod {}: {reason}; retrying in {}",
                        key.pod,
                        human_duration(delay)
                    ),
                };
                for rel in &inflight.paths {
                    self.set_problems(
                        &info.local_path(rel),
                        ProblemSource::Delivery(key.clone()),
                        vec![waiting.clone()],
                    );
                }
                self.log(
                    Level::Warning,
                    format!(
                        "{} → {pod}: {reason}; retrying in {} ms (attempt {})",
                        info.name,
                        delay.as_millis(),
                        attempt + 1
                    ),
                );
                self.wake_at(at);
                if attempt >= 2 {
                    self.message(
                        &format!("target:{pod}"),
                        Some((
                            Level::Warning,
                            format!("not delivered to {pod} yet: {reason}; retrying"),
                        )),
                    );
                }
                return;
            }
            Err(ClusterError::Permanent(reason)) => {
                t.retry = None;
                t.error = Some(reason.clone());
                for (rel, _) in &outcome.sent {
                    failed_paths.push((rel.clone(), reason.clone()));
                }
                report_failure = Some(reason.clone());
            }
        }

        let t = self.targets.get_mut(&key).expect("present");
        for (rel, _) in &failed_paths {
            t.failed.insert(rel.clone());
        }
        if report_failure.is_none() {
            t.error = None;
        }
        // Only a batch that carried something replaces `lastSync`: editors
        // show its time, and a no-op (the watcher's echo of a save, a
        // resync that found nothing) would hide the last real delivery.
        if delivered && !outcome.sent.is_empty() {
            let files = outcome.sent.len() - failed_paths.len().min(outcome.sent.len());
            t.last_sync = Some(LastSync {
                files,
                bytes: outcome.bytes,
                duration: outcome.elapsed,
                at: SystemTime::now(),
            });
        }
        let previously_warned = if reload_warning.is_none() && delivered {
            std::mem::take(&mut t.reload_warned)
        } else {
            BTreeSet::new()
        };

        // Diagnostics: clear on success, set on failure. A path that was
        // not sent for a local reason (too large, unreadable) carries that
        // problem instead of a stale "not yet delivered".
        for rel in succeeded.iter().chain(outcome.notes.iter().map(|(r, _)| r)) {
            self.set_problems(
                &info.local_path(rel),
                ProblemSource::Delivery(key.clone()),
                Vec::new(),
            );
        }
        for (rel, why) in &failed_paths {
            self.set_problems(
                &info.local_path(rel),
                ProblemSource::Delivery(key.clone()),
                vec![Problem {
                    kind: ProblemKind::Other,
                    severity: Level::Error,
                    line: 0,
                    column: 0,
                    message: format!("not delivered to pod {}: {why}", key.pod),
                }],
            );
        }
        for path in previously_warned {
            self.set_problems(&path, ProblemSource::Reload(key.clone()), Vec::new());
        }
        if let Some(text) = &reload_warning {
            let paths: Vec<PathBuf> = outcome
                .sent
                .iter()
                .map(|(r, _)| info.local_path(r))
                .collect();
            for path in &paths {
                self.set_problems(
                    path,
                    ProblemSource::Reload(key.clone()),
                    vec![Problem {
                        kind: ProblemKind::Other,
                        severity: Level::Warning,
                        line: 0,
                        column: 0,
                        message: text.clone(),
                    }],
                );
            }
            let t = self.targets.get_mut(&key).expect("present");
            t.reload_warned.extend(paths);
            self.log(Level::Warning, text.clone());
        }
        match &report_failure {
            Some(reason) => self.message(
                &format!("target:{pod}"),
                Some((Level::Error, format!("{} → {pod}: {reason}", info.name))),
            ),
            None => self.message(&format!("target:{pod}"), None),
        }

        // One log line per batch.
        let sent = outcome.sent.len().saturating_sub(outcome.deletes);
        let line = match (&outcome.kind, &report_failure) {
            (BatchKind::Check, _) => format!(
                "{} → {pod}: checked in {ms} ms, {} differences",
                info.name,
                outcome.drift.len()
            ),
            (_, Some(reason)) => format!(
                "{} → {pod}: {} of {} files failed in {ms} ms: {reason}",
                info.name,
                failed_paths.len(),
                outcome.sent.len()
            ),
            (BatchKind::FullSync, None) => format!(
                "{} → {pod}: resynced {} files to {} ({} deleted, {}) in {ms} ms",
                info.name,
                sent,
                key.pod,
                outcome.deletes,
                human_bytes(outcome.bytes)
            ),
            (BatchKind::Changes, None) if !delivered => format!(
                "{} → {pod}: nothing to send ({} unchanged)",
                info.name,
                outcome.unchanged.len()
            ),
            (BatchKind::Changes, None) => {
                // Reported with the rest of its wave (`flush_deliveries`).
                self.deliveries.push(Delivered {
                    what: DeliveredWhat {
                        mapping: info.name.clone(),
                        namespace: key.namespace.clone(),
                        container: key.container.clone(),
                        files: sent,
                        deletes: outcome.deletes,
                        bytes: outcome.bytes,
                    },
                    pod: key.pod.clone(),
                    ms,
                    at: Instant::now(),
                });
                String::new()
            }
        };
        let level = if report_failure.is_some() {
            Level::Error
        } else if !delivered {
            Level::Debug
        } else {
            Level::Info
        };
        if !line.is_empty() {
            self.log(level, line);
        }

        for w in &inflight.waiters {
            if let Some(waiter) = self.waiters.get_mut(w) {
                if waiter.remaining.remove(&key) {
                    waiter.report.targets += 1;
                    waiter.report.files_sent += sent;
                    waiter.report.files_deleted += outcome.deletes;
                    waiter
                        .report
                        .drift
                        .extend(outcome.drift.iter().map(|d| format!("{pod}: {d}")));
                    if let Some(reason) = &report_failure {
                        waiter.report.failures.push(format!("{pod}: {reason}"));
                    }
                    for (rel, why) in &failed_paths {
                        waiter
                            .report
                            .failures
                            .push(format!("{pod}: {}: {why}", info.remote_display(rel)));
                    }
                }
            }
        }
        if let Some(mut guard) = inflight.progress.take() {
            guard.end_message = Some(match &report_failure {
                Some(r) => format!("failed: {r}"),
                None => format!("{sent} files in {ms} ms"),
            });
        }
    }

    // -- problems -----------------------------------------------------------

    fn set_problems(&mut self, path: &Path, source: ProblemSource, problems: Vec<Problem>) {
        let entry = self.problems.entry(path.to_path_buf()).or_default();
        let changed = if problems.is_empty() {
            entry.remove(&source).is_some()
        } else {
            entry.insert(source, problems.clone()).as_ref() != Some(&problems)
        };
        if entry.is_empty() {
            self.problems.remove(path);
        }
        if changed {
            self.dirty_problems.insert(path.to_path_buf());
        }
    }

    fn clear_problem_source(&mut self, matches: impl Fn(&ProblemSource) -> bool) {
        let mut dirty = Vec::new();
        self.problems.retain(|path, sources| {
            let before = sources.len();
            sources.retain(|s, _| !matches(s));
            if sources.len() != before {
                dirty.push(path.clone());
            }
            !sources.is_empty()
        });
        self.dirty_problems.extend(dirty);
    }

    fn flush_problems(&mut self) {
        for path in std::mem::take(&mut self.dirty_problems) {
            let all: Vec<Problem> = self
                .problems
                .get(&path)
                .map(|s| s.values().flatten().cloned().collect())
                .unwrap_or_default();
            let before = self
                .emitted_problems
                .get(&path)
                .cloned()
                .unwrap_or_default();
            if before == all {
                continue;
            }
            if all.is_empty() {
                self.emitted_problems.remove(&path);
            } else {
                self.emitted_problems.insert(path.clone(), all.clone());
            }
            self.emit(Output::FileProblems {
                path,
                problems: all,
            });
        }
    }

    // -- status -------------------------------------------------------------

    fn compute_status(&self) -> Status {
        let mut pending: BTreeSet<(MappingId, &RelPath)> = BTreeSet::new();
        let mut in_flight = !self.draining.is_empty();
        let mut retrying: Option<&Retry> = None;
        let mut targets = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        let mut warnings: Vec<String> = Vec::new();
        for (file, text) in &self.config_errors {
            let _ = file;
            errors.push(text.clone());
        }
        for (id, m) in &self.mappings {
            for rel in &m.orphans {
                pending.insert((*id, rel));
            }
            let mut any = false;
            for (key, t) in self.targets.range(range_of(*id)) {
                any = true;
                for rel in &t.pending {
                    pending.insert((*id, rel));
                }
                let has_work = !t.pending.is_empty()
                    || t.full_sync.is_some()
                    || t.full_check.is_some()
                    || t.reload_requested;
                if t.in_flight.is_some() {
                    in_flight = true;
                }
                if let Some(r) = &t.retry {
                    if r.reachable {
                        // The countdown stays in the target's `error`: a
                        // message that changed every millisecond would be
                        // a new status at every event.
                        errors.push(format!(
                            "{} → {}: {}; retrying",
                            m.info.name,
                            key.describe(),
                            r.reason
                        ));
                    } else if retrying.is_none_or(|cur| r.at < cur.at) {
                        retrying = Some(r);
                    }
                }
                let state = if t.in_flight.is_some() {
                    TargetState::Syncing
                } else if t.retry.is_some() || has_work {
                    TargetState::Waiting
                } else if t.error.is_some() {
                    TargetState::Error
                } else {
                    TargetState::Synced
                };
                let error = match (&t.retry, &t.error) {
                    (Some(r), _) => Some(format!(
                        "{} (next try in {} ms)",
                        r.reason,
                        r.at.saturating_duration_since(Instant::now()).as_millis()
                    )),
                    (None, e) => e.clone(),
                };
                if t.retry.is_none() {
                    if let Some(e) = &t.error {
                        errors.push(format!("{}: {e}", key.describe()));
                    }
                }
                if !t.reload_warned.is_empty() {
                    warnings.push(format!("reload failed in {}", key.describe()));
                }
                targets.push(TargetStatus {
                    mapping: m.info.name.clone(),
                    namespace: key.namespace.clone(),
                    pod: key.pod.clone(),
                    container: key.container.clone(),
                    state,
                    last_sync: t.last_sync.clone(),
                    error,
                });
            }
            if !any {
                let error = match (&m.resolve_error, m.resolved) {
                    (Some(e), _) => Some(e.to_string()),
                    (None, true) => Some(match &m.spec.pods {
                        PodSelector::Labels(s) => format!("no Ready pod matches `{s}`"),
                        PodSelector::Name(n) => format!("pod `{n}` is not Ready"),
                    }),
                    (None, false) => None,
                };
                if let Some(e) = &error {
                    match &m.resolve_error {
                        Some(ClusterError::Transient(_)) | None => {
                            warnings.push(format!("{}: {e}", m.info.name))
                        }
                        Some(_) => errors.push(format!("{}: {e}", m.info.name)),
                    }
                }
                targets.push(TargetStatus {
                    mapping: m.info.name.clone(),
                    namespace: m.spec.namespace.clone(),
                    pod: String::new(),
                    container: m.spec.container.clone().unwrap_or_default(),
                    state: TargetState::Waiting,
                    last_sync: None,
                    error,
                });
            } else if let Some(e) = &m.resolve_error {
                warnings.push(format!("{}: {e}", m.info.name));
            }
        }
        // A file that could not be sent for a local reason (unreadable) is
        // not pending, but it is not in the pod either: the status says so.
        let unsent = self
            .problems
            .values()
            .filter(|sources| {
                sources.iter().any(|(source, problems)| {
                    matches!(source, ProblemSource::Local(_))
                        && problems.iter().any(|p| p.severity == Level::Error)
                })
            })
            .count();
        if unsent > 0 {
            warnings.push(format!(
                "{unsent} file{} not synced (see the file's diagnostic)",
                if unsent == 1 { "" } else { "s" }
            ));
        }
        let transient_resolve = self
            .mappings
            .values()
            .any(|m| matches!(m.resolve_error, Some(ClusterError::Transient(_))));
        let pending_count = pending.len();
        let state = if self.paused {
            EngineState::Paused
        } else if retrying.is_some() || transient_resolve {
            EngineState::Disconnected
        } else if in_flight {
            EngineState::Syncing
        } else {
            EngineState::Idle
        };
        let quiescent = pending_count == 0
            && !in_flight
            && self
                .targets
                .values()
                .all(|t| t.full_sync.is_none() && t.full_check.is_none() && !t.reload_requested);
        let health = if !errors.is_empty() {
            Health::Error
        } else if !warnings.is_empty() || state == EngineState::Disconnected {
            Health::Warning
        } else {
            Health::Ok
        };
        let message = match (state, retrying) {
            (EngineState::Disconnected, Some(r)) => {
                let secs = r
                    .at_wall
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                format!(
                    "disconnected: {}; next try in {} ms (unix time {secs})",
                    r.reason,
                    r.at.saturating_duration_since(Instant::now()).as_millis()
                )
            }
            (EngineState::Paused, _) => format!("paused; {pending_count} changes pending"),
            _ => errors
                .first()
                .or(warnings.first())
                .cloned()
                .unwrap_or_else(|| match state {
                    EngineState::Syncing => "syncing".into(),
                    _ if pending_count > 0 => format!("{pending_count} changes pending"),
                    _ if self.mappings.is_empty() => "no mappings".into(),
                    _ => "in sync".into(),
                }),
        };
        Status {
            health,
            state,
            quiescent,
            message,
            pending: pending_count,
            targets,
        }
    }

    fn publish_status(&mut self) {
        let mut status = self.compute_status();
        // Countdown text changes every millisecond: compare without it so a
        // status goes out when something real changed.
        let comparable = |s: &Status| {
            let mut s = s.clone();
            if s.state == EngineState::Disconnected {
                s.message = s
                    .message
                    .split("; next try")
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                for t in &mut s.targets {
                    if let Some(e) = &mut t.error {
                        *e = e.split(" (next try").next().unwrap_or_default().to_owned();
                    }
                }
            }
            s
        };
        if let Some(last) = &self.last_status {
            if comparable(last) == comparable(&status) {
                self.status_held_since = None;
                return;
            }
            // A save to ten replicas would otherwise be eleven statuses of
            // ten target lines each, as each replica finishes: while batches
            // are still running and only target lines changed, the status
            // waits for the wave's last batch (the summary then changes), or
            // for STATUS_HOLD should one batch take long.
            let summary =
                |s: &Status| (s.health, s.state, s.quiescent, s.pending, s.message.clone());
            if status.state == EngineState::Syncing && summary(last) == summary(&status) {
                let now = Instant::now();
                let since = match self.status_held_since {
                    Some(since) => since,
                    None => {
                        self.status_held_since = Some(now);
                        self.wake_at(now + STATUS_HOLD);
                        now
                    }
                };
                if now.duration_since(since) < STATUS_HOLD {
                    return;
                }
            }
        }
        self.status_held_since = None;
        status.targets.sort_by(|a, b| {
            (&a.mapping, &a.pod, &a.container).cmp(&(&b.mapping, &b.pod, &b.container))
        });
        self.last_status = Some(status.clone());
        self.emit(Output::Status(status));
    }

    fn shutdown(&mut self) {
        self.flush_deliveries(true);
        let undelivered: BTreeSet<String> = self
            .targets
            .iter()
            .flat_map(|(k, t)| {
                let info = self.mappings.get(&k.mapping).map(|m| m.info.clone());
                t.pending
                    .iter()
                    .chain(t.in_flight.iter().flat_map(|f| f.paths.iter()))
                    .filter_map(move |r| {
                        info.as_ref().map(|i| i.local_path(r).display().to_string())
                    })
                    .collect::<Vec<_>>()
            })
            .chain(self.mappings.values().flat_map(|m| {
                m.orphans
                    .iter()
                    .map(|r| m.info.local_path(r).display().to_string())
                    .collect::<Vec<_>>()
            }))
            .collect();
        if !undelivered.is_empty() {
            let list: Vec<String> = undelivered.into_iter().collect();
            self.log(
                Level::Warning,
                format!(
                    "shutting down with {} undelivered changes: {}",
                    list.len(),
                    list.join(", ")
                ),
            );
        }
        self.mappings.clear();
        self.targets.clear();
    }
}

fn record_held(held: &mut HashMap<RelPath, Held>, rel: &RelPath, value: &Held) {
    if *value == Held::Absent {
        // A deleted folder takes everything under it along.
        held.retain(|p, _| !p.is_within(rel));
    } else {
        // A file in a folder podloop once deleted brings the folder back:
        // a later delete of that folder must be sent, not skipped.
        for ancestor in rel.ancestors() {
            if held.get(&ancestor) == Some(&Held::Absent) {
                held.remove(&ancestor);
            }
        }
    }
    held.insert(rel.clone(), value.clone());
}

fn range_of(id: MappingId) -> std::ops::Range<TargetKey> {
    let bound = |m| TargetKey {
        mapping: m,
        namespace: String::new(),
        pod: String::new(),
        container: String::new(),
    };
    bound(id)..bound(id + 1)
}

/// Exponential backoff with ±25% jitter, so many clients do not retry in
/// lockstep against a recovering API server.
fn backoff(attempt: u32) -> Duration {
    let base = RETRY_BASE
        .saturating_mul(1u32 << attempt.min(8))
        .min(RETRY_MAX);
    let jitter = rand::rng().random_range(0.75..1.25);
    base.mul_f64(jitter)
}

fn human_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
