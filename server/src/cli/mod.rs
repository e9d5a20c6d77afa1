//! Command-line subcommands other than `lsp`: `sync`, `watch`, `status`.
//!
//! Every one of them drives the same engine loop as the language server;
//! the CLI only chooses the inputs and prints the outputs.

pub mod bench;
pub mod demo;
pub mod doctor;
mod lsp_client;
mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::{mpsc, oneshot};

use crate::engine::config::{self, Config, MappingConfig, OnConflict, PodsMode};
use crate::engine::{
    self, Batch, ChangeOrigin, Cluster, EngineHandle, EngineOptions, EngineState, Health, Input,
    Output, PodSelector, Problem, Status, SyncAllReport, Target, TargetState,
};

pub use render::Printer;

/// Flags shared by every subcommand that talks to a cluster.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Path to the kubeconfig file (default: $KUBECONFIG, else ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (overrides the config file's top-level `namespace`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The config file (default: podloop.toml in this folder or a parent).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Push every mapped file that differs from what each container holds.
    #[arg(long)]
    pub all: bool,
    /// With --all: only report differences, send nothing; exit 1 on drift.
    #[arg(long)]
    pub check: bool,
    /// Label selector (no config file): `podloop sync -l app=api LOCAL:REMOTE`.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Exact pod name (no config file), instead of -l.
    #[arg(long)]
    pub pod: Option<String>,
    /// Container (default: the default-container annotation, else the first).
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    /// Shell command run in the container after the files land (no config file).
    #[arg(long)]
    pub reload: Option<String>,
    /// Give up waiting for an unreachable cluster after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Files or folders to push (with a config), or one LOCAL:REMOTE (with -l/--pod).
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Do not bring the containers to the local state before watching.
    #[arg(long)]
    pub no_initial_sync: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Give up waiting for the cluster after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// An error the CLI reports and exits 2 on (bad usage or config).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Finds the config: `--config`, else `podloop.toml` in the current folder
/// or the nearest parent.
pub fn find_config(explicit: Option<&Path>) -> Result<PathBuf, UsageError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()
        .map_err(|e| UsageError(format!("cannot read the current folder: {e}")))?;
    for dir in cwd.ancestors() {
        let candidate = dir.join(config::FILE_NAME);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(UsageError(format!(
        "no {} in {} or its parents: pass --config FILE, or use `podloop sync -l SELECTOR LOCAL:REMOTE`",
        config::FILE_NAME,
        cwd.display()
    )))
}

pub fn load_config(args: &ClusterArgs) -> Result<Config, UsageError> {
    let file = find_config(args.config.as_deref())?;
    let mut cfg = config::load(&file).map_err(|e| UsageError(e.to_string()))?;
    apply_flags(&mut cfg, args);
    Ok(cfg)
}

fn apply_flags(cfg: &mut Config, args: &ClusterArgs) {
    if args.context.is_some() {
        cfg.context = args.context.clone();
    }
    if let Some(ns) = &args.namespace {
        cfg.namespace = Some(ns.clone());
        for m in &mut cfg.mappings {
            m.namespace = None;
        }
    }
}

/// The config for `podloop sync -l SEL LOCAL:REMOTE` (no file).
pub fn adhoc_config(args: &SyncArgs) -> Result<Config, UsageError> {
    let [spec] = args.paths.as_slice() else {
        return Err(UsageError(
            "with -l/--pod give exactly one LOCAL:REMOTE, e.g. `podloop sync -l app=api ./src:/app/src`".into(),
        ));
    };
    let (local, remote) = spec
        .split_once(":/")
        .map(|(l, r)| (l, format!("/{r}")))
        .ok_or_else(|| {
            UsageError(format!(
                "`{spec}` is not LOCAL:REMOTE with an absolute REMOTE, e.g. ./src:/app/src"
            ))
        })?;
    let remote = config::validate_remote(&remote).map_err(|e| UsageError(format!("REMOTE {e}")))?;
    let selector = match (&args.selector, &args.pod) {
        (Some(_), Some(_)) => return Err(UsageError("give -l or --pod, not both".into())),
        (Some(s), None) => {
            config::validate_selector(s)
                .map_err(|e| UsageError(format!("bad label selector `{s}`: {e}")))?;
            PodSelector::Labels(s.clone())
        }
        (None, Some(p)) => PodSelector::Name(p.clone()),
        (None, None) => return Err(UsageError("give -l SELECTOR or --pod NAME".into())),
    };
    let cwd = std::env::current_dir()
        .map_err(|e| UsageError(format!("cannot read the current folder: {e}")))?;
    let local = if local.is_empty() {
        cwd.clone()
    } else {
        cwd.join(local)
    };
    if !local.is_dir() {
        return Err(UsageError(format!(
            "LOCAL {} is not a folder",
            local.display()
        )));
    }
    let local = local.canonicalize().unwrap_or(local);
    let mut cfg = Config {
        file: cwd.join("<command line>"),
        root: cwd,
        context: None,
        namespace: None,
        batch_window: Duration::ZERO,
        max_file_size: config::DEFAULT_MAX_FILE_SIZE,
        mappings: vec![MappingConfig {
            name: local
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sync".into()),
            local,
            remote,
            selector,
            container: args.container.clone(),
            namespace: None,
            exclude: Vec::new(),
            reload: args.reload.clone(),
            on_conflict: OnConflict::Overwrite,
            pods: PodsMode::All,
            agent: true,
            line: 0,
        }],
    };
    apply_flags(&mut cfg, &args.cluster);
    Ok(cfg)
}

/// What the engine left behind, for the summary and the exit code.
struct Run {
    printer: Printer,
    problems: BTreeMap<PathBuf, Vec<Problem>>,
}

impl Run {
    fn new() -> Run {
        Run {
            printer: Printer::new(),
            problems: BTreeMap::new(),
        }
    }

    fn take(&mut self, output: Output) {
        if let Output::FileProblems { path, problems } = &output {
            if problems.is_empty() {
                self.problems.remove(path);
            } else {
                self.problems.insert(path.clone(), problems.clone());
            }
        }
        self.printer.output(&output);
    }

    fn drain(&mut self, outputs: &mut mpsc::UnboundedReceiver<Output>) {
        while let Ok(o) = outputs.try_recv() {
            self.take(o);
        }
    }
}

/// `podloop sync`: returns the process exit code.
pub async fn sync<C: Cluster>(cluster: C, args: SyncArgs, config: Config) -> i32 {
    let adhoc = args.selector.is_some() || args.pod.is_some();
    let whole = adhoc || args.all || args.check;
    if !whole && args.paths.is_empty() {
        eprintln!("error: name files or folders to push, or pass --all");
        return 2;
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let (engine, mut outputs) =
        engine::start_with_configs(cluster, EngineOptions::default(), vec![config]);
    let mut run = Run::new();
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let report = if whole {
        let (reply, rx) = oneshot::channel();
        engine.send(if args.check {
            Input::Check { reply }
        } else {
            Input::SyncAll { reply: Some(reply) }
        });
        wait_reply(&mut run, &mut outputs, rx, deadline).await
    } else {
        let paths = args
            .paths
            .iter()
            .map(|p| absolute(&cwd, Path::new(p)))
            .collect();
        engine.send(Input::Changed {
            paths,
            origin: ChangeOrigin::Save,
        });
        wait_settled(&engine, &mut run, &mut outputs, deadline).await;
        None
    };
    let status = engine.status().await;
    engine.send(Input::Shutdown);
    run.drain(&mut outputs);
    run.printer.finish();
    summarize(
        &run,
        status.as_ref(),
        report.as_ref(),
        args.check,
        Instant::now() >= deadline,
    )
}

async fn wait_reply(
    run: &mut Run,
    outputs: &mut mpsc::UnboundedReceiver<Output>,
    mut rx: oneshot::Receiver<SyncAllReport>,
    deadline: Instant,
) -> Option<SyncAllReport> {
    loop {
        tokio::select! {
            report = &mut rx => return report.ok(),
            Some(o) = outputs.recv() => run.take(o),
            _ = tokio::time::sleep_until(deadline.into()) => return None,
        }
    }
}

/// Waits until nothing more will happen without outside help: everything
/// delivered, or what is left is blocked (no pod, a permanent error), or a
/// disconnection outlasted the deadline.
async fn wait_settled(
    engine: &EngineHandle,
    run: &mut Run,
    outputs: &mut mpsc::UnboundedReceiver<Output>,
    deadline: Instant,
) {
    loop {
        let Some(status) = engine.status().await else {
            return;
        };
        if settled(&status) {
            return;
        }
        // Wait for the next status change, then ask again: outputs queued
        // before the query may be stale.
        loop {
            tokio::select! {
                o = outputs.recv() => match o {
                    None => return,
                    Some(o) => {
                        let is_status = matches!(o, Output::Status(_));
                        run.take(o);
                        if is_status { break; }
                    }
                },
                _ = tokio::time::sleep_until(deadline.into()) => return,
            }
        }
    }
}

fn settled(status: &Status) -> bool {
    if status.quiescent {
        return true;
    }
    let resolving = status
        .targets
        .iter()
        .any(|t| t.pod.is_empty() && t.error.is_none());
    let busy = status
        .targets
        .iter()
        .any(|t| t.state == TargetState::Syncing);
    !resolving
        && !busy
        && !matches!(
            status.state,
            EngineState::Syncing | EngineState::Disconnected
        )
}

fn summarize(
    run: &Run,
    status: Option<&Status>,
    report: Option<&SyncAllReport>,
    check: bool,
    timed_out: bool,
) -> i32 {
    let mut failed = false;
    if let Some(status) = status {
        for t in &status.targets {
            let line = if t.pod.is_empty() {
                failed = true;
                format!(
                    "{}: no target: {}",
                    t.mapping,
                    t.error.as_deref().unwrap_or("pods not resolved yet")
                )
            } else {
                let what = match (&t.error, &t.last_sync) {
                    (Some(e), _) => {
                        failed = true;
                        format!("FAILED: {e}")
                    }
                    (None, Some(l)) => format!(
                        "ok: {} files, {} in {} ms",
                        l.files,
                        crate::engine::human_bytes(l.bytes),
                        l.duration.as_millis()
                    ),
                    (None, None) => "ok: nothing to send".into(),
                };
                format!(
                    "{} → {}/{} ({}): {what}",
                    t.mapping, t.namespace, t.pod, t.container
                )
            };
            println!("{line}");
        }
        if status.pending > 0 {
            failed = true;
            println!("{} changes not delivered", status.pending);
        }
        if status.health == Health::Error {
            failed = true;
        }
    }
    if let Some(r) = report {
        if check {
            for d in &r.drift {
                println!("drift: {d}");
            }
            if !r.drift.is_empty() {
                failed = true;
            }
            println!(
                "checked {} targets: {} differences",
                r.targets,
                r.drift.len()
            );
        } else {
            println!(
                "sent {} files, deleted {}, to {} targets",
                r.files_sent, r.files_deleted, r.targets
            );
        }
        for f in &r.failures {
            failed = true;
            eprintln!("error: {f}");
        }
    }
    for (path, problems) in &run.problems {
        for p in problems {
            failed = true;
            eprintln!("{}: {}", path.display(), p.message);
        }
    }
    if timed_out {
        failed = true;
        eprintln!(
            "error: gave up waiting{}",
            status
                .map(|s| format!(": {}", s.message))
                .unwrap_or_default()
        );
    }
    i32::from(failed)
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    // Lexical cleanup only: a symlinked folder must not be resolved away,
    // or a path could be mapped through a link.
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `podloop watch`: push every change until interrupted.
pub async fn watch<C: Cluster>(cluster: C, args: WatchArgs, config: Config) -> i32 {
    let options = EngineOptions {
        own_file_watcher: true,
        ..EngineOptions::default()
    };
    let (engine, mut outputs) = engine::start_with_configs(cluster, options, vec![config]);
    let mut run = Run::new();
    if !args.no_initial_sync {
        let (reply, rx) = oneshot::channel();
        engine.send(Input::SyncAll { reply: Some(reply) });
        let far = Instant::now() + Duration::from_secs(24 * 3600);
        if let Some(r) = wait_reply(&mut run, &mut outputs, rx, far).await {
            run.printer.line(&format!(
                "initial sync: sent {} files, deleted {}, to {} targets",
                r.files_sent, r.files_deleted, r.targets
            ));
            for f in &r.failures {
                run.printer.error(f);
            }
        }
    }
    run.printer.line("watching for changes; Ctrl-C to stop");
    loop {
        tokio::select! {
            o = outputs.recv() => match o {
                Some(o) => run.take(o),
                None => return 1,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    engine.send(Input::Shutdown);
    run.drain(&mut outputs);
    run.printer.finish();
    0
}

/// `podloop status`: each mapping, the containers it resolves to, and
/// whether those containers have what a sync needs.
pub async fn status<C: Cluster + Clone>(cluster: C, args: StatusArgs, config: Config) -> i32 {
    let remotes: BTreeMap<String, Vec<u8>> = config
        .mappings
        .iter()
        .map(|m| (m.name.clone(), m.remote.as_bytes().to_vec()))
        .collect();
    let specs: BTreeMap<String, String> = config
        .mappings
        .iter()
        .map(|m| {
            let sel = match &m.selector {
                PodSelector::Labels(s) => format!("-l {s}"),
                PodSelector::Name(n) => format!("pod {n}"),
            };
            (
                m.name.clone(),
                format!("{} → {} ({sel})", m.local.display(), m.remote),
            )
        })
        .collect();
    let (engine, mut outputs) =
        engine::start_with_configs(cluster.clone(), EngineOptions::default(), vec![config]);
    let mut run = Run::new();
    run.printer.quiet = true;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let status = loop {
        let Some(s) = engine.status().await else {
            return 1;
        };
        if !s
            .targets
            .iter()
            .any(|t| t.pod.is_empty() && t.error.is_none())
            || Instant::now() >= deadline
        {
            break s;
        }
        tokio::select! {
            Some(o) = outputs.recv() => run.take(o),
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    };
    engine.send(Input::Shutdown);
    let mut failed = false;
    let mut current = String::new();
    for t in &status.targets {
        if t.mapping != current {
            current = t.mapping.clone();
            println!(
                "{}: {}",
                t.mapping,
                specs.get(&t.mapping).cloned().unwrap_or_default()
            );
        }
        if t.pod.is_empty() {
            failed = true;
            println!(
                "  no target: {}",
                t.error.as_deref().unwrap_or("timed out resolving pods")
            );
            continue;
        }
        let target = Target {
            namespace: t.namespace.clone(),
            pod: t.pod.clone(),
            pod_uid: String::new(),
            container: t.container.clone(),
            restart_count: 0,
        };
        // An empty batch runs the delivery script's tool checks and nothing
        // else: the honest answer to "can podloop sync into this container".
        let probe = Batch {
            remote_root: remotes.get(&t.mapping).cloned().unwrap_or_default(),
            entries: Vec::new(),
            reload: None,
            // A tool check needs no agent: nothing is copied in.
            agent: false,
        };
        let tools = match cluster.deliver(&target, probe).await {
            Ok(_) => "sh, tar: ok".to_string(),
            Err(e) => {
                failed = true;
                format!("cannot sync: {e}")
            }
        };
        println!(
            "  {}/{} container {}: Ready; {tools}",
            t.namespace, t.pod, t.container
        );
    }
    i32::from(failed)
}
