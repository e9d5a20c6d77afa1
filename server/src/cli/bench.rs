//! `podloop bench`: the save-to-pod loop measured side by side with
//! `kubectl cp`, against a kubesim the bench starts itself (issue 8).
//!
//! Every podloop figure goes through the real language server: this same
//! executable is spawned as `podloop lsp` and driven over stdio, and a save
//! counts as landed only when the new content is on disk in the pod's root
//! (watched with inotify, read back and compared). Each baseline runs the
//! real `kubectl cp` in the same run, against the same pods.

mod proxy;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use kubesim::{Image, PodTemplate, Sim, SimOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::lsp_client::{file_uri, LspClient};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Fewer iterations and smaller sizes: proves every scenario runs (CI);
    /// its figures are not the targets' conditions.
    #[arg(long)]
    pub quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The kubectl for the baselines (default: kubectl 1.33 of the Cloud SDK
    /// when installed, else `kubectl` on PATH).
    #[arg(long)]
    pub kubectl: Option<PathBuf>,
    /// Run only these scenarios (comma-separated JSON keys, e.g.
    /// `single_save,fan_out`); fan-out compares with single_save's p50 only
    /// when both run.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where the bench keeps its cluster (the pods' files) and workspaces
    /// (default: the system's temporary folder). A tmpfs such as `/dev/shm`
    /// keeps this machine's disk (journal commits, reclaimed metadata) out
    /// of the containers' share of the figures.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// How much each scenario does.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    saves: usize,
    warmup: usize,
    baseline_runs: usize,
    burst_files: usize,
    burst_sample: usize,
    tree_files: usize,
    changed_files: usize,
    replicas: usize,
    fan_saves: usize,
    remote_saves: usize,
    remote_baseline_runs: usize,
    big_bytes: u64,
}

const FULL: Sizes = Sizes {
    saves: 200,
    warmup: 5,
    baseline_runs: 20,
    burst_files: 1000,
    burst_sample: 50,
    tree_files: 10_000,
    changed_files: 20,
    replicas: 10,
    fan_saves: 100,
    remote_saves: 50,
    remote_baseline_runs: 5,
    big_bytes: 200 * 1024 * 1024,
};

const QUICK: Sizes = Sizes {
    saves: 20,
    warmup: 2,
    baseline_runs: 3,
    burst_files: 100,
    burst_sample: 5,
    tree_files: 500,
    changed_files: 20,
    replicas: 3,
    fan_saves: 10,
    remote_saves: 5,
    remote_baseline_runs: 1,
    big_bytes: 16 * 1024 * 1024,
};

/// (JSON key, title), in the order they run.
pub const SCENARIOS: [(&str, &str); 6] = [
    (
        "single_save",
        "1. single save (LSP didSave → file in the pod)",
    ),
    (
        "burst",
        "2. burst (files changed at once, as after a branch switch)",
    ),
    (
        "replacement",
        "3. replacement (fresh pod, a few files differ from the image)",
    ),
    ("fan_out", "4. fan-out (single save to every replica)"),
    ("remote", "5. remote (40 ms round trip to the cluster)"),
    ("big_file", "6. big file"),
];

const REMOTE_RTT: Duration = Duration::from_millis(40);
/// How long one save may take before the bench calls it lost.
const LAND_TIMEOUT: Duration = Duration::from_secs(30);
const CONTAINER: &str = "app";
const REMOTE_ROOT: &str = "/app";

pub fn run(args: BenchArgs) -> anyhow::Result<u8> {
    // kubesim's tasks share one worker thread: on two cores, a pool of two
    // workers handing each exec's frames back and forth (futex wake-ups)
    // made the simulated cluster's share per fan-out save a quarter larger,
    // CPU taken from the server and the containers being measured. The
    // scenarios themselves run on the main thread, where their blocking
    // checks (reading a thousand pod files) cannot stall the cluster.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(bench(args))
}

/// One scenario's results, as printed and as written to JSON.
#[derive(Debug, Default)]
struct Report {
    key: &'static str,
    title: String,
    /// (name, value, unit)
    figures: Vec<(String, f64, &'static str)>,
    baseline: Vec<(String, f64, &'static str)>,
    /// podloop is this many times faster than the baseline.
    ratio: Option<f64>,
    targets: Vec<(String, bool)>,
    notes: Vec<String>,
    error: Option<String>,
}

impl Report {
    fn new(key: &'static str, title: &str) -> Report {
        Report {
            key,
            title: title.into(),
            ..Report::default()
        }
    }
    fn figure(&mut self, name: &str, value: f64, unit: &'static str) {
        self.figures.push((name.into(), value, unit));
    }
    fn base(&mut self, name: &str, value: f64, unit: &'static str) {
        self.baseline.push((name.into(), value, unit));
    }
    fn target(&mut self, text: impl Into<String>, met: bool) {
        self.targets.push((text.into(), met));
    }
    fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }
    fn json(&self) -> Value {
        let map = |list: &[(String, f64, &str)]| {
            Value::Object(
                list.iter()
                    .map(|(n, v, _)| (n.clone(), json!(round3(*v))))
                    .collect(),
            )
        };
        json!({
            "title": self.title,
            "figures": map(&self.figures),
            "baseline": map(&self.baseline),
            "ratio": self.ratio.map(round3),
            "targets": self.targets.iter().map(|(t, met)| json!({"target": t, "met": met})).collect::<Vec<_>>(),
            "notes": self.notes,
            "error": self.error,
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Env {
    sim: Sim,
    dir: tempfile::TempDir,
    kubectl: PathBuf,
    sizes: Sizes,
}

async fn bench(args: BenchArgs) -> anyhow::Result<u8> {
    let sizes = if args.quick { QUICK } else { FULL };
    if let Some(unknown) = args
        .only
        .iter()
        .find(|o| !SCENARIOS.iter().any(|(key, _)| key == o))
    {
        bail!(
            "unknown scenario `{unknown}` in --only: choose from {}",
            SCENARIOS.map(|(key, _)| key).join(", ")
        );
    }
    let kubectl = args.kubectl.clone().unwrap_or_else(default_kubectl);
    let mut builder = tempfile::Builder::new();
    builder.prefix("podloop-bench-");
    let dir = match &args.dir {
        Some(parent) => builder.tempdir_in(parent),
        None => builder.tempdir(),
    }
    .context("creating the bench's temporary folder")?;
    let sim = Sim::start(SimOptions::new(dir.path().join("sim")))
        .await
        .context("starting the embedded kubesim")?;
    let env = Env {
        sim,
        dir,
        kubectl,
        sizes,
    };
    eprintln!(
        "podloop bench{}: kubesim at {} (files under {}), baseline {}",
        if args.quick { " --quick" } else { "" },
        env.sim.url(),
        env.dir.path().display(),
        env.kubectl.display()
    );
    let mut reports = Vec::new();
    let mut single_p50 = None;
    for (key, title) in SCENARIOS {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == key) {
            continue;
        }
        eprintln!("running {title} …");
        let mut report = Report::new(key, title);
        let result = match key {
            "single_save" => single_save(&env, &mut report).await.map(Some),
            "burst" => burst(&env, &mut report).await.map(|()| None),
            "replacement" => replacement(&env, &mut report).await.map(|()| None),
            "fan_out" => fan_out(&env, &mut report, single_p50).await.map(|()| None),
            "remote" => remote(&env, &mut report).await.map(|()| None),
            _ => big_file(&env, &mut report).await.map(|()| None),
        };
        match result {
            Ok(Some(p50)) => single_p50 = Some(p50),
            Ok(None) => {}
            Err(e) => {
                eprintln!("  failed: {e:#}");
                report.error = Some(format!("{e:#}"));
            }
        }
        reports.push(report);
    }
    let Env { sim, dir, .. } = env;
    sim.shutdown().await;
    drop(dir);

    print_table(&reports, args.quick);
    let document = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "quick": args.quick,
        "machine": machine(),
        "scenarios": Value::Object(reports.iter().map(|r| (r.key.to_string(), r.json())).collect()),
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&document)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if reports.iter().any(|r| r.error.is_some()) {
        1
    } else {
        0
    })
}

fn default_kubectl() -> PathBuf {
    let sdk = PathBuf::from("/usr/lib/google-cloud-sdk/bin/kubectl.1.33");
    if sdk.exists() {
        sdk
    } else {
        PathBuf::from("kubectl")
    }
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let memory_kib = proc_kib("/proc/meminfo", "MemTotal:").unwrap_or(0);
    json!({"cpus": cpus, "cpu": model, "kernel": kernel, "memory_mib": memory_kib / 1024})
}

fn proc_kib(file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn print_table(reports: &[Report], quick: bool) {
    println!();
    println!(
        "podloop bench{} — podloop through `podloop lsp` over stdio vs `kubectl cp`, same kubesim, same run",
        if quick {
            " --quick (reduced sizes: the targets are judged on a full run)"
        } else {
            ""
        }
    );
    for r in reports {
        println!();
        println!("{}", r.title);
        if let Some(e) = &r.error {
            println!("  FAILED: {e}");
            continue;
        }
        let line = |list: &[(String, f64, &str)]| {
            list.iter()
                .map(|(n, v, u)| format!("{n} {}", human(*v, u)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!("  podloop:    {}", line(&r.figures));
        if !r.baseline.is_empty() {
            println!("  kubectl cp: {}", line(&r.baseline));
        }
        match r.ratio {
            Some(ratio) if ratio >= 1.0 => {
                println!("  ratio:      podloop is {ratio:.1}× faster than kubectl cp")
            }
            Some(ratio) => println!(
                "  ratio:      podloop is {:.1}× SLOWER than kubectl cp",
                1.0 / ratio.max(1e-9)
            ),
            None => {}
        }
        for (t, met) in &r.targets {
            println!(
                "  target {:<48} {}",
                t,
                if *met { "MET" } else { "NOT MET" }
            );
        }
        for n in &r.notes {
            println!("  note: {n}");
        }
    }
    let total = reports.iter().map(|r| r.targets.len()).sum::<usize>();
    let met = reports
        .iter()
        .flat_map(|r| &r.targets)
        .filter(|(_, m)| *m)
        .count();
    println!();
    println!("targets met: {met} of {total}");
}

fn human(v: f64, unit: &str) -> String {
    match unit {
        "ms" => format!("{v:.2} ms"),
        "B" if v >= 1024.0 * 1024.0 => format!("{:.1} MiB", v / 1024.0 / 1024.0),
        "B" if v >= 1024.0 => format!("{:.1} KiB", v / 1024.0),
        "B" => format!("{v:.0} B"),
        "MB/s" => format!("{v:.1} MB/s"),
        "x" => format!("{v:.2}×"),
        "" => format!("{v}"),
        other => format!("{v:.2} {other}"),
    }
}

// ---------------------------------------------------------------------------
// Fixtures: pods, workspaces, the language server, the disk.
// ---------------------------------------------------------------------------

/// A workspace with a `podloop.toml` mapping `src/` to `/app` of the pods
/// labelled `app=LABEL`.
fn workspace(env: &Env, label: &str) -> anyhow::Result<PathBuf> {
    workspace_with(env, label, "")
}

/// [`workspace`] with extra top-level keys.
fn workspace_with(env: &Env, label: &str, top: &str) -> anyhow::Result<PathBuf> {
    let ws = env.dir.path().join(format!("ws-{label}"));
    std::fs::create_dir_all(ws.join("src"))?;
    std::fs::write(
        ws.join("podloop.toml"),
        format!(
            "namespace = \"default\"\n{top}\n[[sync]]\nname = \"{label}\"\nlocal = \"src\"\nremote = \"{REMOTE_ROOT}\"\nselector = \"app={label}\"\ncontainer = \"{CONTAINER}\"\n"
        ),
    )?;
    Ok(ws)
}

fn pod(name: &str, label: &str) -> PodTemplate {
    PodTemplate::new(name)
        .label("app", label)
        .container(CONTAINER, Image::Busybox)
}

/// The host path of `/app/<rel>` in a pod.
fn in_pod(env: &Env, pod: &str, rel: &str) -> anyhow::Result<PathBuf> {
    let root = env
        .sim
        .container_root("default", pod, CONTAINER)
        .with_context(|| format!("finding the root of pod {pod}"))?;
    Ok(root.join(REMOTE_ROOT.trim_start_matches('/')).join(rel))
}

/// Starts `podloop lsp` on `ws` and waits until it has `targets` synced
/// targets and a `podloop.syncAll` has brought them to the local state.
async fn start_server(ws: &Path, kubeconfig: &Path, targets: usize) -> anyhow::Result<LspClient> {
    let log = ws.join("server.log");
    let mut client = LspClient::spawn(ws, kubeconfig, &log)?;
    client.initialize(ws, "bench").await?;
    client
        .wait_for_status(Duration::from_secs(120), "every target synced", |s| {
            let list = s["targets"].as_array().cloned().unwrap_or_default();
            s["quiescent"] == true
                && list.len() == targets
                && list.iter().all(|t| {
                    t["state"] == "synced" && t["pod"].as_str().is_some_and(|p| !p.is_empty())
                })
        })
        .await
        .with_context(|| format!("server log: {}", log.display()))?;
    let reply = client
        .request(
            "workspace/executeCommand",
            json!({"command": "podloop.syncAll", "arguments": []}),
        )
        .await?;
    if reply["failures"].as_array().is_some_and(|f| !f.is_empty()) {
        bail!("the initial sync failed: {reply}");
    }
    Ok(client)
}

/// Wakes up when anything changes under the watched folders (inotify), so
/// waiting for a file costs no polling loop; a short timeout re-checks in
/// case an event was missed (a folder created after the watch began).
struct DiskWaiter {
    _watcher: notify::RecommendedWatcher,
    events: mpsc::UnboundedReceiver<()>,
}

impl DiskWaiter {
    fn new(dirs: &[PathBuf]) -> anyhow::Result<DiskWaiter> {
        use notify::Watcher;
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
            let _ = tx.send(());
        })?;
        for dir in dirs {
            std::fs::create_dir_all(dir)?;
            watcher
                .watch(dir, notify::RecursiveMode::Recursive)
                .with_context(|| format!("watching {}", dir.display()))?;
        }
        Ok(DiskWaiter {
            _watcher: watcher,
            events,
        })
    }

    fn clear(&mut self) {
        while self.events.try_recv().is_ok() {}
    }

    /// Until `done()` holds; an error after `timeout`.
    async fn wait(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(2), self.events.recv()).await;
            self.clear();
        }
    }
}

/// Waits for a save to land in the pods: one inotify watch per pod folder,
/// for renames into it and closed writes only, matched by name. With ten
/// replicas a save raises some fifty events of every kind; a general
/// watcher (recursive, path-building) and reading every file on each event
/// spent more of the two cores than the server and the containers did,
/// which is CPU the bench would then measure as podloop's latency.
///
/// It waits in `poll(2)` on the calling thread, not on the runtime's
/// reactor: the reactor runs on kubesim's worker thread, and every landing
/// would first wake that thread, which then wakes this one.
struct LandingWatch {
    inotify: inotify::Inotify,
    buffer: Vec<u8>,
    /// Per pod file: its folder's watch, its name, its path.
    files: Vec<(inotify::WatchDescriptor, std::ffi::OsString, PathBuf)>,
}

impl LandingWatch {
    fn new(files: &[PathBuf]) -> anyhow::Result<LandingWatch> {
        let inotify = inotify::Inotify::init().context("starting inotify")?;
        let mut watched = Vec::new();
        for file in files {
            let dir = file.parent().context("a pod file has a folder")?;
            std::fs::create_dir_all(dir)?;
            let watch = inotify
                .watches()
                .add(
                    dir,
                    inotify::WatchMask::MOVED_TO | inotify::WatchMask::CLOSE_WRITE,
                )
                .with_context(|| format!("watching {}", dir.display()))?;
            let name = file.file_name().context("a pod file has a name")?;
            watched.push((watch, name.to_os_string(), file.clone()));
        }
        Ok(LandingWatch {
            inotify,
            buffer: vec![0u8; 64 * 1024],
            files: watched,
        })
    }

    /// Until every file holds `content`, which must be new to all of them
    /// (each save's content is distinct): a file is read only when an event
    /// names it, or every `RECHECK` should an event be lost. Reading every
    /// pod's copy up front would put ten reads on the two cores just when
    /// the save is on its way.
    ///
    /// Blocks the calling thread: call it from the bench's own (main)
    /// thread, never from a task on the runtime's worker, where kubesim runs.
    fn wait_all_hold(&mut self, timeout: Duration, content: &[u8]) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd;
        const RECHECK: Duration = Duration::from_millis(50);
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<usize> = (0..self.files.len()).collect();
        while let Some(&first) = pending.first() {
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for a save to land in {} ({} pods still waiting)",
                    self.files[first].2.display(),
                    pending.len()
                );
            }
            let wait = RECHECK.min(deadline - now);
            let mut ready = libc::pollfd {
                fd: self.inotify.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, for the length given.
            let polled = unsafe { libc::poll(&mut ready, 1, wait.as_millis().max(1) as i32) };
            if polled < 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error).context("waiting for inotify events");
            }
            if polled == 0 {
                pending.retain(|i| !holds(&self.files[*i].2, content));
                continue;
            }
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e).context("reading inotify events"),
            };
            let files = &self.files;
            for event in events {
                pending.retain(|i| {
                    let (watch, name, path) = &files[*i];
                    !(event.wd == *watch
                        && event.name == Some(name.as_os_str())
                        && holds(path, content))
                });
            }
        }
        Ok(())
    }
}

/// Whether the file holds exactly `content`: open, read, close, without
/// the size query `std::fs::read` adds (ten of these per fan-out save fall
/// inside the timed window).
fn holds(path: &Path, content: &[u8]) -> bool {
    use std::io::Read;
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    // One byte more than expected tells a longer file apart.
    let mut buffer = vec![0u8; content.len() + 1];
    let mut got = 0;
    loop {
        match file.read(&mut buffer[got..]) {
            Ok(0) => return buffer[..got] == *content,
            Ok(n) => {
                got += n;
                if got == buffer.len() {
                    return false;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

/// A save's content: distinct every time, about 1 KiB like a source file.
fn save_content(i: usize) -> Vec<u8> {
    let mut c = format!("// save {i} {}\n", rand::random::<u64>()).into_bytes();
    while c.len() < 1024 {
        c.extend_from_slice(b"fn handler() { println!(\"hello from podloop\"); }\n");
    }
    c
}

/// Saves `file` `count` times through didSave; each time waits until every
/// one of `pod_files` holds the new content. Returns the sorted durations.
async fn timed_saves(
    client: &mut LspClient,
    file: &Path,
    pod_files: &[PathBuf],
    warmup: usize,
    count: usize,
) -> anyhow::Result<Vec<Duration>> {
    let uri = file_uri(file)?;
    let mut landing = LandingWatch::new(pod_files)?;
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let content = save_content(i);
        std::fs::write(file, &content)?;
        let started = Instant::now();
        client.notify(
            "textDocument/didSave",
            json!({"textDocument": {"uri": uri}}),
        )?;
        landing.wait_all_hold(LAND_TIMEOUT, &content)?;
        if i >= warmup {
            samples.push(started.elapsed());
        }
        // An editor handles the statuses and log lines as they come; left
        // queued here, thousands of them would grow this process's heap
        // (fresh pages, faults) on the cores the save is measured on.
        client.drain();
    }
    samples.sort();
    Ok(samples)
}

/// The server's CPU time per save since `before`.
fn cpu_used(client: &LspClient, before: Option<Duration>, saves: usize) -> Option<Duration> {
    let after = client.pid().and_then(cpu_time)?;
    Some(after.saturating_sub(before?) / saves.max(1) as u32)
}

/// Where the CPU of a run goes, beside the server's: kubesim runs inside
/// this process, and the containers' processes (the warm sessions' `sh`
/// with the `dd`, `mv`, `sha256sum` they reap) descend from it. On a real
/// cluster the containers' share is spent on the pods' own nodes.
#[derive(Clone, Copy)]
struct SideCpu {
    kubesim: Duration,
    containers: Duration,
}

impl SideCpu {
    fn now(server: Option<u32>) -> Option<SideCpu> {
        let own = std::process::id();
        let mut parents: HashMap<u32, u32> = HashMap::new();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            if let Some(ppid) = proc_stat_fields(pid).and_then(|f| f.get(1)?.parse().ok()) {
                parents.insert(pid, ppid);
            }
        }
        let descends = |mut pid: u32| {
            while let Some(&parent) = parents.get(&pid) {
                if Some(pid) == server {
                    return false;
                }
                if parent == own {
                    return true;
                }
                pid = parent;
            }
            false
        };
        let containers = parents
            .keys()
            .filter(|pid| descends(**pid))
            .filter_map(|pid| cpu_time_with_children(*pid))
            .sum();
        Some(SideCpu {
            kubesim: cpu_time(own)?,
            containers,
        })
    }

    fn per_save(before: Option<SideCpu>, after: Option<SideCpu>, saves: usize) -> Option<SideCpu> {
        let (before, after) = (before?, after?);
        let n = saves.max(1) as u32;
        Some(SideCpu {
            kubesim: after.kubesim.saturating_sub(before.kubesim) / n,
            containers: after.containers.saturating_sub(before.containers) / n,
        })
    }

    fn report(self, report: &mut Report) {
        report.figure("kubesim + bench CPU per save", ms(self.kubesim), "ms");
        report.figure("containers' CPU per save", ms(self.containers), "ms");
    }
}

fn latency_figures(report: &mut Report, samples: &[Duration]) {
    report.figure("saves", samples.len() as f64, "");
    report.figure("p50", ms(percentile(samples, 0.5)), "ms");
    report.figure("p90", ms(percentile(samples, 0.9)), "ms");
    report.figure("p99", ms(percentile(samples, 0.99)), "ms");
    report.figure("max", ms(*samples.last().unwrap_or(&Duration::ZERO)), "ms");
}

/// `kubectl cp LOCAL default/POD:REMOTE -c app`, timed as a tool would run
/// it (process start included); fails unless kubectl says success.
async fn kubectl_cp(
    env: &Env,
    kubeconfig: &Path,
    local: &Path,
    pod: &str,
    remote: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = tokio::process::Command::new(&env.kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["cp", "-c", CONTAINER])
        .arg(local)
        .arg(format!("default/{pod}:{remote}"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", env.kubectl.display()))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "`kubectl cp` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// p50 of `runs` copies of `local` to `pod`, each checked on disk.
async fn kubectl_p50(
    env: &Env,
    kubeconfig: &Path,
    local: &Path,
    pod: &str,
    rel: &str,
    runs: usize,
) -> anyhow::Result<Duration> {
    let mut samples = Vec::new();
    let target = in_pod(env, pod, rel)?;
    for i in 0..runs {
        let content = save_content(1_000_000 + i);
        std::fs::write(local, &content)?;
        samples
            .push(kubectl_cp(env, kubeconfig, local, pod, &format!("{REMOTE_ROOT}/{rel}")).await?);
        if !holds(&target, &content) {
            bail!(
                "`kubectl cp` reported success but {} does not hold the file",
                target.display()
            );
        }
    }
    samples.sort();
    Ok(percentile(&samples, 0.5))
}

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces, in parentheses): `[0]` is the state, `[1]` the parent pid.
fn proc_stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(String::from).collect())
}

fn ticks(fields: &[String], at: std::ops::Range<usize>) -> Option<Duration> {
    let mut total = 0u64;
    for i in at {
        total += fields.get(i)?.parse::<u64>().ok()?;
    }
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_secs_f64(total as f64 / per_second as f64))
}

/// CPU time the process has used so far, every thread, to the nanosecond
/// (`schedstat`): a container's agent spends some 30 µs a save, so the
/// 10 ms ticks of `/proc/PID/stat` would round each one to nothing.
fn cpu_time(pid: u32) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = stat.split_whitespace().next().and_then(|f| f.parse().ok()) {
            total += Duration::from_nanos(ns);
            threads += 1;
        }
    }
    if threads == 0 {
        // No schedstat in this kernel: user + system ticks.
        return ticks(&proc_stat_fields(pid)?, 11..13);
    }
    Some(total)
}

/// The same plus what its reaped children used (summed by the kernel,
/// reported in ticks).
fn cpu_time_with_children(pid: u32) -> Option<Duration> {
    Some(cpu_time(pid)? + ticks(&proc_stat_fields(pid)?, 13..15)?)
}

fn rss_kib(pid: u32, key: &str) -> Option<u64> {
    proc_kib(&format!("/proc/{pid}/status"), key)
}

// ---------------------------------------------------------------------------
// The scenarios.
// ---------------------------------------------------------------------------

async fn single_save(env: &Env, report: &mut Report) -> anyhow::Result<Duration> {
    let s = env.sizes;
    env.sim.create_pod(pod("single-0", "single")).await?;
    let ws = workspace(env, "single")?;
    let file = ws.join("src/main.rs");
    std::fs::write(&file, save_content(0))?;
    let kubeconfig = env.sim.kubeconfig_path();
    let mut client = start_server(&ws, &kubeconfig, 1).await?;
    let idle_rss = client.pid().and_then(|p| rss_kib(p, "VmRSS:"));
    let pod_file = in_pod(env, "single-0", "main.rs")?;
    let cpu_before = client.pid().and_then(cpu_time);
    let side_before = SideCpu::now(client.pid());
    let samples = timed_saves(&mut client, &file, &[pod_file], s.warmup, s.saves).await?;
    let cpu = cpu_used(&client, cpu_before, s.warmup + s.saves);
    let side = SideCpu::per_save(side_before, SideCpu::now(client.pid()), s.warmup + s.saves);
    client.stop().await?;
    latency_figures(report, &samples);
    if let Some(per_save) = cpu {
        report.figure("server CPU per save", ms(per_save), "ms");
    }
    if let Some(side) = side {
        side.report(report);
    }
    if let Some(kib) = idle_rss {
        report.figure("server idle RSS", kib as f64 * 1024.0, "B");
    }
    let scratch = env.dir.path().join("kubectl-single.rs");
    let baseline = kubectl_p50(
        env,
        &kubeconfig,
        &scratch,
        "single-0",
        "main.rs",
        s.baseline_runs,
    )
    .await?;
    report.base("p50", ms(baseline), "ms");
    report.base("runs", s.baseline_runs as f64, "");
    let p50 = percentile(&samples, 0.5);
    let p99 = percentile(&samples, 0.99);
    let ratio = baseline.as_secs_f64() / p50.as_secs_f64().max(1e-9);
    report.ratio = Some(ratio);
    report.target("p50 ≤ 5 ms", ms(p50) <= 5.0);
    report.target("p50 ≥ 20× faster than kubectl cp", ratio >= 20.0);
    report.target("p99 ≤ 20 ms", ms(p99) <= 20.0);
    if let Some(kib) = idle_rss {
        report.target("idle server RSS ≤ 40 MB", kib <= 40 * 1024);
    }
    Ok(p50)
}

async fn burst(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let s = env.sizes;
    let ws = workspace(env, "burst")?;
    let folders = (s.burst_files / 50).max(1);
    let rel = |i: usize| format!("burst/d{:02}/f{i:04}.txt", i % folders);
    let version = |i: usize, v: u32| -> String {
        let mut c = format!("file {i} version {v}\n");
        while c.len() < 4000 {
            c.push_str("lorem ipsum dolor sit amet, consectetur adipiscing elit\n");
        }
        c
    };
    let mut template = pod("burst-0", "burst");
    for i in 0..s.burst_files {
        let local = ws.join("src").join(rel(i));
        std::fs::create_dir_all(local.parent().unwrap())?;
        std::fs::write(&local, version(i, 1))?;
        template = template.file(&format!("{REMOTE_ROOT}/{}", rel(i)), &version(i, 1));
    }
    env.sim.create_pod(template).await?;
    let kubeconfig = env.sim.kubeconfig_path();
    let client = start_server(&ws, &kubeconfig, 1).await?;
    let pod_root = in_pod(env, "burst-0", "burst")?;
    let mut waiter = DiskWaiter::new(&[pod_root])?;

    // The branch switch: every file changes, the editor reports them all at once.
    let mut changes = Vec::new();
    let mut total_bytes = 0u64;
    for i in 0..s.burst_files {
        let local = ws.join("src").join(rel(i));
        let content = version(i, 2);
        total_bytes += content.len() as u64;
        std::fs::write(&local, &content)?;
        changes.push(json!({"uri": file_uri(&local)?, "type": 2}));
    }
    let mut pending: HashSet<usize> = (0..s.burst_files).collect();
    waiter.clear();
    let started = Instant::now();
    client.notify(
        "workspace/didChangeWatchedFiles",
        json!({"changes": changes}),
    )?;
    waiter
        .wait(LAND_TIMEOUT, "every burst file in the pod", || {
            pending.retain(|i| {
                in_pod(env, "burst-0", &rel(*i))
                    .map(|p| !holds(&p, version(*i, 2).as_bytes()))
                    .unwrap_or(true)
            });
            pending.is_empty()
        })
        .await?;
    let took = started.elapsed();
    client.stop().await?;
    report.figure("files", s.burst_files as f64, "");
    report.figure("bytes", total_bytes as f64, "B");
    report.figure("all in pod", ms(took), "ms");

    let sample = s.burst_sample.min(s.burst_files);
    let scratch = env.dir.path().join("kubectl-burst");
    std::fs::create_dir_all(&scratch)?;
    let started = Instant::now();
    for i in 0..sample {
        let local = scratch.join(format!("f{i:04}.txt"));
        std::fs::write(&local, version(i, 3))?;
        kubectl_cp(
            env,
            &kubeconfig,
            &local,
            "burst-0",
            &format!("{REMOTE_ROOT}/{}", rel(i)),
        )
        .await?;
    }
    let sample_time = started.elapsed();
    let extrapolated = sample_time.as_secs_f64() * s.burst_files as f64 / sample as f64;
    report.base("sample files", sample as f64, "");
    report.base("sample", ms(sample_time), "ms");
    report.base("extrapolated to all files", extrapolated * 1000.0, "ms");
    report.note(format!(
        "kubectl cp baseline: one `kubectl cp` per file as the seed's chokidar tool does, {sample} of {} files run, time extrapolated linearly",
        s.burst_files
    ));
    report.ratio = Some(extrapolated / took.as_secs_f64().max(1e-9));
    report.target(
        "all files in the pod ≤ 1.5 s",
        took <= Duration::from_millis(1500),
    );
    Ok(())
}

async fn replacement(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let s = env.sizes;
    let ws = workspace(env, "tree")?;
    let folders = (s.tree_files / 100).max(1);
    let rel = |i: usize| format!("tree/d{:03}/f{i:05}.txt", i % folders);
    let original = |i: usize| format!("original file {i}\n{}", "x".repeat(1000));
    let changed = |i: usize| format!("changed locally {i}\n{}", "y".repeat(4000));
    let is_changed = |i: usize| i.is_multiple_of((s.tree_files / s.changed_files).max(1));
    let mut template = pod("tree-0", "tree");
    let mut changed_rel = Vec::new();
    let mut changed_bytes = 0u64;
    let mut tree_bytes = 0u64;
    for i in 0..s.tree_files {
        let local = ws.join("src").join(rel(i));
        std::fs::create_dir_all(local.parent().unwrap())?;
        template = template.file(&format!("{REMOTE_ROOT}/{}", rel(i)), &original(i));
        if is_changed(i) && changed_rel.len() < s.changed_files {
            std::fs::write(&local, changed(i))?;
            changed_bytes += changed(i).len() as u64;
            tree_bytes += changed(i).len() as u64;
            changed_rel.push((i, rel(i)));
        } else {
            std::fs::write(&local, original(i))?;
            tree_bytes += original(i).len() as u64;
        }
    }
    env.sim.create_pod(template.clone()).await?;
    let kubeconfig = env.sim.kubeconfig_path();
    let client = start_server(&ws, &kubeconfig, 1).await?;

    // A rollout, new pod first: the fresh pod has the image's files, so the
    // locally changed ones differ again.
    let mut fresh = pod("tree-1", "tree");
    for i in 0..s.tree_files {
        fresh = fresh.file(&format!("{REMOTE_ROOT}/{}", rel(i)), &original(i));
    }
    let execs_before = env.sim.exec_log().len();
    let rollout = Instant::now();
    env.sim.create_pod(fresh).await?;
    let ready = Instant::now();
    let mut waiter = DiskWaiter::new(&[in_pod(env, "tree-1", "tree")?])?;
    let targets: Vec<(PathBuf, String)> = changed_rel
        .iter()
        .map(|(i, r)| Ok((in_pod(env, "tree-1", r)?, changed(*i))))
        .collect::<anyhow::Result<_>>()?;
    let matched = async {
        waiter
            .wait(LAND_TIMEOUT * 4, "the fresh pod to match", || {
                targets.iter().all(|(p, c)| holds(p, c.as_bytes()))
            })
            .await?;
        anyhow::Ok((ready.elapsed(), rollout.elapsed()))
    };
    // The old pod goes away meanwhile, as in a rollout; its end is not timed.
    let (deleted, matched) = tokio::join!(env.sim.delete_pod("default", "tree-0"), matched);
    deleted?;
    let (after_ready, total) = matched?;
    client.stop().await?;
    let bytes_sent: u64 = env.sim.exec_log()[execs_before..]
        .iter()
        .filter(|r| r.pod == "tree-1")
        .map(|r| r.stdin_bytes)
        .sum();
    report.figure("files in mapping", s.tree_files as f64, "");
    report.figure("changed files", changed_rel.len() as f64, "");
    report.figure("changed bytes", changed_bytes as f64, "B");
    report.figure("pod Ready → matches", ms(after_ready), "ms");
    report.figure("rollout start → matches", ms(total), "ms");
    report.figure("bytes sent to the fresh pod", bytes_sent as f64, "B");
    report.note("bytes sent = stdin bytes of every exec into the fresh pod, from kubesim's exec log; the manifest is computed in the pod, only its output travels back");

    // Baseline: without a manifest, a copy tool sends the whole tree.
    let started = Instant::now();
    kubectl_cp(
        env,
        &kubeconfig,
        &ws.join("src/tree"),
        "tree-1",
        "/tmp/kubectl-tree",
    )
    .await?;
    let whole = started.elapsed();
    report.base("whole tree", ms(whole), "ms");
    report.base("bytes (file content)", tree_bytes as f64, "B");
    report.ratio = Some(whole.as_secs_f64() / after_ready.as_secs_f64().max(1e-9));
    report.target(
        "fresh pod matches ≤ 3 s after Ready",
        after_ready <= Duration::from_secs(3),
    );
    report.target(
        "bytes sent ≤ 2× the changed files",
        bytes_sent <= 2 * changed_bytes,
    );
    Ok(())
}

async fn fan_out(
    env: &Env,
    report: &mut Report,
    single_p50: Option<Duration>,
) -> anyhow::Result<()> {
    let s = env.sizes;
    let kubeconfig = env.sim.kubeconfig_path();
    let Replicas {
        names,
        file,
        pod_files,
        mut client,
    } = Replicas::start(env, "fan", &kubeconfig).await?;
    let cpu_before = client.pid().and_then(cpu_time);
    let side_before = SideCpu::now(client.pid());
    let samples = timed_saves(&mut client, &file, &pod_files, s.warmup, s.fan_saves).await?;
    let cpu = cpu_used(&client, cpu_before, s.warmup + s.fan_saves);
    let side = SideCpu::per_save(
        side_before,
        SideCpu::now(client.pid()),
        s.warmup + s.fan_saves,
    );
    client.stop().await?;
    report.figure("replicas", s.replicas as f64, "");
    latency_figures(report, &samples);
    if let Some(per_save) = cpu {
        report.figure("server CPU per save", ms(per_save), "ms");
    }
    if let Some(side) = side {
        side.report(report);
    }
    let p50 = percentile(&samples, 0.5);
    // The floor: what the same saves cost with podloop's editor side and
    // engine taken away, to one replica and to all of them.
    let one = transport_floor(
        &kubeconfig,
        &names[..1],
        &pod_files[..1],
        s.warmup,
        s.fan_saves,
    )?;
    let all = transport_floor(&kubeconfig, &names, &pod_files, s.warmup, s.fan_saves)?;
    report.figure(
        "floor p50, one replica",
        ms(percentile(&one.samples, 0.5)),
        "ms",
    );
    report.figure(
        "floor p50, every replica",
        ms(percentile(&all.samples, 0.5)),
        "ms",
    );
    report.figure(
        "floor every replica vs single save",
        percentile(&all.samples, 0.5).as_secs_f64()
            / single_p50.unwrap_or(p50).as_secs_f64().max(1e-9),
        "x",
    );
    report.figure(
        "floor transport CPU per save, one replica",
        ms(one.transport_cpu),
        "ms",
    );
    report.figure(
        "floor transport CPU per save, every replica",
        ms(all.transport_cpu),
        "ms",
    );
    report.note("floor = the same saves handed by podloop's transport straight to warm sessions of its own, from a thread of this process: no editor, no LSP, no engine, no planning, contents and hashes made before the clock starts; what the cluster side (kubesim, the containers, the connections) costs on this machine");
    // Baseline: one `kubectl cp` per replica, one after the other.
    let scratch = env.dir.path().join("kubectl-fan.rs");
    let mut runs = Vec::new();
    for i in 0..s.baseline_runs.min(5) {
        let content = save_content(2_000_000 + i);
        std::fs::write(&scratch, &content)?;
        let started = Instant::now();
        for name in &names {
            kubectl_cp(
                env,
                &kubeconfig,
                &scratch,
                name,
                &format!("{REMOTE_ROOT}/main.rs"),
            )
            .await?;
        }
        runs.push(started.elapsed());
    }
    runs.sort();
    let baseline = percentile(&runs, 0.5);
    report.base("p50 (one cp per replica)", ms(baseline), "ms");
    report.ratio = Some(baseline.as_secs_f64() / p50.as_secs_f64().max(1e-9));
    match single_p50 {
        Some(one) => {
            let factor = p50.as_secs_f64() / one.as_secs_f64().max(1e-9);
            report.figure("p50 vs one replica", factor, "x");
            report.target(
                format!("p50 ≤ 2× one replica ({:.2} ms)", ms(one)),
                factor <= 2.0,
            );
        }
        None => report.note("no single-save p50 to compare with (scenario 1 failed)"),
    }
    Ok(())
}

/// Saves of `main.rs` to the fan-out's `pods` (their copies at
/// `pod_files`), each handed to every pod at once by podloop's transport
/// from a thread with a runtime of its own, as the server's; timed from the
/// hand-over to every pod file holding the save.
fn transport_floor(
    kubeconfig: &Path,
    pods: &[String],
    pod_files: &[PathBuf],
    warmup: usize,
    count: usize,
) -> anyhow::Result<Floor> {
    use crate::convert::kube::{KubeCluster, KubeOptions};
    use crate::engine::{
        Batch, Cluster, Entry, Expected, Op, PodSelector, RelPath, Target, TargetSpec,
    };
    use sha2::{Digest, Sha256};

    let pods = pods.to_vec();
    let local = pod_files[0].with_file_name("floor-local.rs");
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel::<Batch>();
    let (ready_tx, ready) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let (cpu_tx, cpu) = std::sync::mpsc::channel::<Duration>();
    let kubeconfig = kubeconfig.to_path_buf();
    let floor = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the floor");
        runtime.block_on(async move {
            let setup = async {
                let cluster = KubeCluster::new(KubeOptions {
                    kubeconfig: Some(kubeconfig),
                    context: None,
                })?;
                let spec = TargetSpec {
                    context: None,
                    namespace: "default".into(),
                    pods: PodSelector::Labels("app=fan".into()),
                    container: Some(CONTAINER.into()),
                    all_replicas: true,
                };
                let targets: Vec<Target> = cluster
                    .resolve(&spec)
                    .await?
                    .into_iter()
                    .filter(|t| pods.contains(&t.pod))
                    .collect();
                anyhow::ensure!(targets.len() == pods.len(), "the floor found {targets:?}");
                Ok((cluster, targets))
            };
            let (cluster, targets) = match setup.await {
                Ok(ready) => ready,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let cpu_before = thread_cpu();
            let mut saves = 0u32;
            while let Some(batch) = jobs.recv().await {
                saves += 1;
                let deliveries = targets.iter().map(|t| cluster.deliver(t, batch.clone()));
                for result in futures::future::join_all(deliveries).await {
                    if let Err(e) = result {
                        tracing::warn!("floor delivery failed: {e}");
                    }
                }
            }
            let _ = cpu_tx.send(thread_cpu().saturating_sub(cpu_before) / saves.max(1));
        });
    });
    ready.recv().context("the floor's thread ended")??;

    let mut landing = LandingWatch::new(pod_files)?;
    // What the first pod holds; another pod may hold an earlier run's save
    // and report a conflict on the first (warm-up) save, then agree.
    let mut held: Option<[u8; 32]> = Some(Sha256::digest(std::fs::read(&pod_files[0])?).into());
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let content = save_content(3_000_000 + i);
        std::fs::write(&local, &content)?;
        let new: [u8; 32] = Sha256::digest(&content).into();
        let batch = Batch {
            remote_root: REMOTE_ROOT.as_bytes().to_vec(),
            entries: vec![Entry {
                path: RelPath::from_relative(Path::new("main.rs")).context("a relative path")?,
                op: Op::Put {
                    local: local.clone(),
                    size: content.len() as u64,
                    mode: 0o644,
                    expect: Some(Expected {
                        held,
                        new: Some(new),
                        skip_if_changed: false,
                    }),
                    content: Some(crate::engine::Content(content.clone().into())),
                },
            }],
            reload: None,
            agent: true,
        };
        held = Some(new);
        let started = Instant::now();
        jobs_tx
            .send(batch)
            .ok()
            .context("the floor's thread ended")?;
        landing.wait_all_hold(LAND_TIMEOUT, &content)?;
        if i >= warmup {
            samples.push(started.elapsed());
        }
    }
    drop(jobs_tx);
    floor
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's thread panicked"))?;
    samples.sort();
    Ok(Floor {
        samples,
        transport_cpu: cpu.recv().context("the floor's thread ended")?,
    })
}

struct Floor {
    samples: Vec<Duration>,
    /// CPU the transport's thread spent per save (its sends and the
    /// containers' replies).
    transport_cpu: Duration,
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

async fn remote(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let s = env.sizes;
    let proxy = proxy::DelayProxy::start(env.sim.addr(), REMOTE_RTT).await?;
    let config = std::fs::read_to_string(env.sim.kubeconfig_path())?;
    let far = env.dir.path().join("kubeconfig-remote");
    let url = env.sim.url();
    if !config.contains(&url) {
        bail!("the kubeconfig does not name {url}");
    }
    std::fs::write(
        &far,
        config.replace(&url, &format!("https://{}", proxy.addr)),
    )?;
    env.sim.create_pod(pod("remote-0", "remote")).await?;
    let ws = workspace(env, "remote")?;
    let file = ws.join("src/main.rs");
    std::fs::write(&file, save_content(0))?;
    let mut client = start_server(&ws, &far, 1).await?;
    let pod_file = in_pod(env, "remote-0", "main.rs")?;
    // Warm-up opens the session; then count the execs the timed saves open.
    let _ = timed_saves(
        &mut client,
        &file,
        std::slice::from_ref(&pod_file),
        0,
        s.warmup,
    )
    .await?;
    let execs_before = env.sim.exec_log().len();
    let samples = timed_saves(&mut client, &file, &[pod_file], 0, s.remote_saves).await?;
    let new_execs = env.sim.exec_log().len() - execs_before;
    client.stop().await?;
    let fan_p50 = remote_fan_out(env, &far).await?;
    let p50 = percentile(&samples, 0.5);
    let rtt = proxy::measured_rtt(REMOTE_RTT, 20).await?;
    report.figure("RTT", ms(REMOTE_RTT), "ms");
    report.figure("RTT measured through the proxy", ms(rtt), "ms");
    latency_figures(report, &samples);
    let round_trips = p50.as_secs_f64() / rtt.as_secs_f64();
    report.figure("round trips per save (p50 / measured RTT)", round_trips, "");
    report.figure(
        "new exec connections per save",
        new_execs as f64 / s.remote_saves as f64,
        "",
    );
    report.figure("fan-out replicas", s.replicas as f64, "");
    report.figure("fan-out p50", ms(fan_p50), "ms");
    report.figure(
        "fan-out p50 vs one replica",
        fan_p50.as_secs_f64() / p50.as_secs_f64().max(1e-9),
        "x",
    );
    report.note(format!(
        "latency from a TCP proxy delaying every byte {} ms each way (kubesim's own latency fault delays only the start of a request)",
        REMOTE_RTT.as_millis() / 2
    ));
    report.note("fan-out: the single save to every replica behind the same proxy; the replicas are sent to at once, so at a real round trip they cost about one (on loopback, scenario 4, the two cores that run kubesim and every container bound the ratio instead)");
    let scratch = env.dir.path().join("kubectl-remote.rs");
    let baseline = kubectl_p50(
        env,
        &far,
        &scratch,
        "remote-0",
        "main.rs",
        s.remote_baseline_runs,
    )
    .await?;
    report.base("p50", ms(baseline), "ms");
    report.ratio = Some(baseline.as_secs_f64() / p50.as_secs_f64().max(1e-9));
    report.target(
        format!("p50 ≤ 1 × measured RTT + 5 ms ({:.2} ms)", ms(rtt) + 5.0),
        ms(p50) <= ms(rtt) + 5.0,
    );
    report.target("no new exec per save in steady state", new_execs == 0);
    drop(proxy);
    Ok(())
}

/// Scenario 4's saves to every replica, through the delaying proxy's
/// `kubeconfig`: the p50.
async fn remote_fan_out(env: &Env, kubeconfig: &Path) -> anyhow::Result<Duration> {
    let s = env.sizes;
    let mut replicas = Replicas::start(env, "remote-fan", kubeconfig).await?;
    let samples = timed_saves(
        &mut replicas.client,
        &replicas.file,
        &replicas.pod_files,
        s.warmup,
        s.remote_saves,
    )
    .await?;
    replicas.client.stop().await?;
    Ok(percentile(&samples, 0.5))
}

/// The fan-out's replicas, labelled `label`, and a server syncing
/// `src/main.rs` to every one of them through `kubeconfig`.
struct Replicas {
    names: Vec<String>,
    file: PathBuf,
    /// Each pod's copy of `file`.
    pod_files: Vec<PathBuf>,
    client: LspClient,
}

impl Replicas {
    async fn start(env: &Env, label: &str, kubeconfig: &Path) -> anyhow::Result<Replicas> {
        let names: Vec<String> = (0..env.sizes.replicas)
            .map(|i| format!("{label}-{i}"))
            .collect();
        for name in &names {
            env.sim.create_pod(pod(name, label)).await?;
        }
        let ws = workspace(env, label)?;
        let file = ws.join("src/main.rs");
        std::fs::write(&file, save_content(0))?;
        let client = start_server(&ws, kubeconfig, names.len()).await?;
        let pod_files = names
            .iter()
            .map(|n| in_pod(env, n, "main.rs"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Replicas {
            names,
            file,
            pod_files,
            client,
        })
    }
}

async fn big_file(env: &Env, report: &mut Report) -> anyhow::Result<()> {
    let s = env.sizes;
    env.sim.create_pod(pod("big-0", "big")).await?;
    // The default `max_file_size` (100 MiB) would skip the file.
    let ws = workspace_with(env, "big", "max_file_size = \"1GiB\"")?;
    std::fs::write(ws.join("src/small.txt"), b"small\n")?;
    let kubeconfig = env.sim.kubeconfig_path();
    let mut client = start_server(&ws, &kubeconfig, 1).await?;
    let pid = client.pid().context("the server has no pid")?;
    let rss_before = rss_kib(pid, "VmRSS:").unwrap_or(0);

    let file = ws.join("src/big.bin");
    let content = pseudo_random(s.big_bytes as usize);
    std::fs::write(&file, &content)?;
    let pod_file = in_pod(env, "big-0", "big.bin")?;
    let mut waiter = DiskWaiter::new(&[pod_file.parent().unwrap().to_path_buf()])?;
    let uri = file_uri(&file)?;
    client.drain();
    let started = Instant::now();
    client.notify(
        "textDocument/didSave",
        json!({"textDocument": {"uri": uri}}),
    )?;
    // The editor asks for something while the batch is in flight.
    client
        .wait_for_status(Duration::from_secs(60), "the big batch to start", |st| {
            st["state"] == "syncing"
        })
        .await?;
    let asked = Instant::now();
    client
        .request(
            "workspace/executeCommand",
            json!({"command": "podloop.status", "arguments": []}),
        )
        .await?;
    let answer = asked.elapsed();
    let in_flight = !std::fs::metadata(&pod_file).is_ok_and(|m| m.len() == s.big_bytes);
    let size = s.big_bytes;
    waiter
        .wait(Duration::from_secs(600), "the big file in the pod", || {
            std::fs::metadata(&pod_file).is_ok_and(|m| m.len() == size)
        })
        .await?;
    let took = started.elapsed();
    let peak = rss_kib(pid, "VmHWM:").unwrap_or(0);
    client.stop().await?;
    if std::fs::read(&pod_file)? != content {
        bail!("the big file in the pod differs from the local one");
    }
    let growth = peak.saturating_sub(rss_before);
    let mb = s.big_bytes as f64 / 1e6;
    report.figure("size", s.big_bytes as f64, "B");
    report.figure("save → in pod", ms(took), "ms");
    report.figure("throughput", mb / took.as_secs_f64(), "MB/s");
    report.figure("server RSS before", rss_before as f64 * 1024.0, "B");
    report.figure("server peak RSS", peak as f64 * 1024.0, "B");
    report.figure("RSS growth", growth as f64 * 1024.0, "B");
    report.figure(
        "podloop.status answered in (during the batch)",
        ms(answer),
        "ms",
    );
    if !in_flight {
        report.note("the status request was answered after the file had landed: responsiveness not measured in flight");
    }
    let started = Instant::now();
    kubectl_cp(env, &kubeconfig, &file, "big-0", "/tmp/kubectl-big.bin").await?;
    let baseline = started.elapsed();
    report.base("copy", ms(baseline), "ms");
    report.base("throughput", mb / baseline.as_secs_f64(), "MB/s");
    report.ratio = Some(baseline.as_secs_f64() / took.as_secs_f64().max(1e-9));
    report.target("RSS growth ≤ 64 MB", growth <= 64 * 1024);
    report.target(
        "request answered ≤ 10 ms during a batch",
        ms(answer) <= 10.0 && in_flight,
    );
    Ok(())
}

/// Incompressible content, fast to make (xorshift).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ rand::random::<u64>();
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
