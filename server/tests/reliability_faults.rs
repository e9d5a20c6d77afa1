//! The randomized fault test: random saves, deletes and renames interleaved
//! with kubesim faults (failed exec handshakes, streams cut mid-batch,
//! latency, pod replacement new-first and old-first, container restarts).
//! After the faults stop and the engine is quiescent, every target
//! container must hold exactly the local tree (read through kubesim, not
//! podloop), and a reader loop in every pod must never have seen a partial
//! file.
//!
//! Seeded and reproducible as far as the op/fault sequence goes (timing is
//! the machine's): the seed is printed; `PODLOOP_FAULT_SEED=N` replays it,
//! `PODLOOP_FAULT_ROUNDS=N` changes the round count.

mod reliability_common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubesim::{CutMode, Image, PodTemplate, ReplaceOrder};
use podloop::engine::{ChangeOrigin, EngineState, Output, TargetState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reliability_common::{differences, is_staging, snapshot, EngineSim, Options, API_CONFIG};

/// PID 1 of every pod: a reader that checks every synced file ends with the
/// trailer each whole version carries. A file caught truncated or empty is
/// written to /state/bad. It stops on SIGTERM so replacements are quick.
const READER: &str = r#"
trap 'exit 0' TERM
mkdir -p /state
n=0
while :; do
  for f in /app/* /app/*/* /app/*/*/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    t=$(tail -c 4 "$f" 2>/dev/null) || continue
    [ "$t" = "END" ] || echo "partial: $f" >> /state/bad
  done
  n=$((n+1)); echo $n > /state/sweeps.new && mv /state/sweeps.new /state/sweeps
  usleep 20000
done
"#;

const DIRS: &[&str] = &["", "lib/", "lib/deep/", "with space/", "ünï/"];
const NAMES: &[&str] = &[
    "main.rs",
    "b c.txt",
    "$(touch pwned)",
    "ünïcødé.txt",
    "line\nbreak",
    "-n",
    "run.sh",
    "'quoted'",
];

#[derive(Default, Debug)]
struct Figures {
    writes: usize,
    deletes: usize,
    renames: usize,
    folder_deletes: usize,
    handshake_failures: u32,
    cuts: usize,
    latency_changes: usize,
    replacements_new_first: usize,
    replacements_old_first: usize,
    restarts: usize,
    restarts_with_loss: usize,
    settles: usize,
}

fn content(rng: &mut StdRng, round: usize) -> Vec<u8> {
    let size = if rng.random_bool(0.1) {
        rng.random_range(100_000..300_000)
    } else {
        rng.random_range(0..4_000)
    };
    let mut c = format!("BEGIN {round}\n").into_bytes();
    c.extend((0..size).map(|_| rng.random::<u8>()));
    c.extend_from_slice(b"\nEND\n");
    c
}

fn local_files(src: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn local_dirs(src: &std::path::Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = local_files(src)
        .iter()
        .filter_map(|p| p.parent().map(|d| d.to_path_buf()))
        .filter(|d| d != src)
        .collect();
    out.sort();
    out.dedup();
    out
}

fn pod_template(name: &str) -> PodTemplate {
    PodTemplate::new(name)
        .label("app", "api")
        .container("app", Image::Busybox)
        .command(READER)
}

fn reader_reports(h: &EngineSim, pod: &str) -> String {
    let root = h.root_of(pod, "app");
    std::fs::read_to_string(root.join("state/bad")).unwrap_or_default()
}

fn sweeps(h: &EngineSim, pod: &str) -> u64 {
    let root = h.root_of(pod, "app");
    std::fs::read_to_string(root.join("state/sweeps"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

async fn run(seed: u64, rounds: usize, warm_sessions: bool) {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let (sim, dir) = EngineSim::sim().await;
    for name in ["api-a", "api-b"] {
        sim.create_pod(pod_template(name)).await.unwrap();
    }
    let mut h = EngineSim::start(
        sim,
        dir,
        Options {
            config: API_CONFIG.into(),
            warm_sessions,
            own_file_watcher: false,
        },
    );
    h.settled(|s| s.targets.len() == 2 && s.targets.iter().all(|t| !t.pod.is_empty()))
        .await;

    let mut figures = Figures::default();
    let mut partial_reports: Vec<String> = Vec::new();
    let mut disconnected_seen = 0usize;
    let mut latency_on = false;
    // Engine log lines and faults, shown when the tree differs.
    let mut history: Vec<String> = Vec::new();
    let mut execs_before_replacements = 0usize;
    for round in 0..rounds {
        // 1–3 local changes, each announced the way an editor or a watcher
        // would.
        for _ in 0..rng.random_range(1..=3) {
            let files = local_files(&h.src());
            let roll = rng.random_range(0..100);
            let changed: Vec<PathBuf> = if roll < 60 || files.is_empty() {
                let rel = format!(
                    "{}{}",
                    DIRS[rng.random_range(0..DIRS.len())],
                    NAMES[rng.random_range(0..NAMES.len())]
                );
                let c = content(&mut rng, round);
                let p = h.write(&rel, &c);
                if rng.random_bool(0.15) {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = if rng.random_bool(0.5) { 0o755 } else { 0o644 };
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
                }
                figures.writes += 1;
                vec![p]
            } else if roll < 75 {
                let p = files[rng.random_range(0..files.len())].clone();
                std::fs::remove_file(&p).unwrap();
                figures.deletes += 1;
                vec![p]
            } else if roll < 93 {
                let from = files[rng.random_range(0..files.len())].clone();
                let to = h.path(&format!(
                    "{}{}",
                    DIRS[rng.random_range(0..DIRS.len())],
                    NAMES[rng.random_range(0..NAMES.len())]
                ));
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::rename(&from, &to).unwrap();
                figures.renames += 1;
                vec![from, to]
            } else {
                let dirs = local_dirs(&h.src());
                if dirs.is_empty() {
                    continue;
                }
                let d = dirs[rng.random_range(0..dirs.len())].clone();
                std::fs::remove_dir_all(&d).unwrap();
                figures.folder_deletes += 1;
                vec![d]
            };
            let origin = if rng.random_bool(0.5) {
                ChangeOrigin::Save
            } else {
                ChangeOrigin::Watcher
            };
            history.push(format!("round {round}: {origin:?} {changed:?}"));
            h.changed(changed, origin);
        }

        // Sometimes a fault.
        if rng.random_bool(0.3) {
            let pods = h.pods("api-");
            let pod = pods[rng.random_range(0..pods.len())].clone();
            match rng.random_range(0..100) {
                0..30 => {
                    let n = rng.random_range(1..=3);
                    h.sim.faults().fail_next_exec_handshakes(n, 500);
                    history.push(format!("round {round}: fault: {n} handshakes fail"));
                    figures.handshake_failures += n;
                }
                30..55 => {
                    let mode = if rng.random_bool(0.5) {
                        CutMode::TcpDrop
                    } else {
                        CutMode::CleanClose
                    };
                    let after = rng.random_range(0..150_000);
                    h.sim.faults().cut_next_exec_after(after, mode);
                    history.push(format!("round {round}: fault: cut {mode:?} after {after}"));
                    figures.cuts += 1;
                }
                55..70 => {
                    latency_on = !latency_on;
                    let ms = if latency_on {
                        rng.random_range(20..120)
                    } else {
                        0
                    };
                    h.sim.faults().set_latency(Duration::from_millis(ms));
                    figures.latency_changes += 1;
                }
                70..90 => {
                    partial_reports.push(reader_reports(&h, &pod));
                    execs_before_replacements = execs_before_replacements.max(1);
                    let order = if rng.random_bool(0.5) {
                        figures.replacements_new_first += 1;
                        ReplaceOrder::NewFirst
                    } else {
                        figures.replacements_old_first += 1;
                        ReplaceOrder::OldFirst
                    };
                    let new = h.sim.replace_pod("default", &pod, order).await.unwrap();
                    history.push(format!(
                        "round {round}: fault: {pod} replaced {order:?} by {}",
                        new.name
                    ));
                }
                _ => {
                    // A restart that lost the container's writable layer
                    // for one file: the resync must bring it back.
                    let root = h.root_of(&pod, "app");
                    let remote: Vec<PathBuf> = local_files(&root.join("app"));
                    if !remote.is_empty() && rng.random_bool(0.5) {
                        let victim = &remote[rng.random_range(0..remote.len())];
                        if !victim.to_string_lossy().contains(".podloop-stage-") {
                            let _ = std::fs::remove_file(victim);
                            figures.restarts_with_loss += 1;
                        }
                    }
                    h.sim
                        .restart_container("default", &pod, "app")
                        .await
                        .unwrap();
                    figures.restarts += 1;
                    history.push(format!("round {round}: fault: {pod} restarted"));
                }
            }
        }

        // Half the rounds let the engine catch up; the others pile the next
        // round's changes onto whatever is in flight.
        if rng.random_bool(0.5) {
            h.quiescent().await;
            figures.settles += 1;
        }
        h.drain();
        for o in h.seen.drain(..) {
            match o {
                Output::Status(s) if s.state == EngineState::Disconnected => disconnected_seen += 1,
                Output::Log { text, .. } => history.push(format!("round {round}: {text}")),
                _ => {}
            }
        }
    }

    // The faults stop. A last save proves the engine still moves, and gives
    // any watch event from the last fault time to arrive.
    h.sim.faults().clear();
    h.sim.faults().set_latency(Duration::ZERO);
    let marker = h.save("zz-final.txt", b"BEGIN final\nEND\n");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = h.status().await;
        let pods = h.pods("api-");
        let mut target_pods: Vec<String> = status.targets.iter().map(|t| t.pod.clone()).collect();
        target_pods.sort();
        let marker_everywhere = pods
            .iter()
            .all(|p| h.root_of(p, "app").join("app/zz-final.txt").exists());
        if status.quiescent
            && target_pods == pods
            && status
                .targets
                .iter()
                .all(|t| t.state == TargetState::Synced)
            && marker_everywhere
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the engine did not settle: {status:?}"
        );
        let _ = tokio::time::timeout(Duration::from_millis(500), h.outputs.recv()).await;
    }
    assert!(marker.exists());

    let local = snapshot(&h.src(), |_| false);
    let mut staging_leftovers = 0usize;
    let pods = h.pods("api-");
    for pod in &pods {
        let root = h.root_of(pod, "app");
        staging_leftovers += std::fs::read_dir(root.join("app"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| is_staging(e.file_name().as_encoded_bytes()))
            .count();
        let remote = snapshot(&root.join("app"), is_staging);
        let diff = differences(&local, &remote);
        h.drain();
        history.extend(h.logs());
        assert!(
            diff.is_empty(),
            "seed {seed}: {pod} differs from the local tree:\n{}\nhistory:\n{}",
            diff.join("\n"),
            history.join("\n")
        );
        assert!(
            !root.join("pwned").exists() && !root.join("app/pwned").exists(),
            "seed {seed}: a file name reached a shell in {pod}"
        );
        assert!(
            sweeps(&h, pod) > 0,
            "seed {seed}: the reader in {pod} never ran"
        );
        partial_reports.push(reader_reports(&h, pod));
    }
    let partial: Vec<&String> = partial_reports.iter().filter(|r| !r.is_empty()).collect();
    assert!(
        partial.is_empty(),
        "seed {seed}: a reader saw partial files: {partial:?}"
    );
    // Warm sessions may never open a new exec, leaving injected handshake
    // failures unused; with one exec per batch they always bite.
    if figures.handshake_failures > 0 && !warm_sessions {
        assert!(
            disconnected_seen > 0,
            "seed {seed}: exec handshakes failed but the status never said disconnected"
        );
    }
    let execs = h.sim.exec_log().len();
    let _ = execs_before_replacements;
    let files: BTreeMap<_, _> = local.into_iter().collect();
    println!(
        "seed {seed}, warm sessions {warm_sessions}: {rounds} rounds in {:.1} s; {figures:?}; \
         {execs} execs; {disconnected_seen} disconnected statuses; {} files in the final tree; \
         {staging_leftovers} staging folders left over",
        started.elapsed().as_secs_f64(),
        files.len(),
    );
}

fn seed() -> u64 {
    let seed = std::env::var("PODLOOP_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("fault test seed {seed} (replay with PODLOOP_FAULT_SEED={seed})");
    seed
}

fn rounds(default: usize) -> usize {
    std::env::var("PODLOOP_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// One exec per batch: every fault lands on a delivery or a manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_nothing_with_one_exec_per_batch() {
    run(seed(), rounds(200), false).await;
}

/// Warm sessions (the default): faults land on session starts and
/// manifests; replacements and restarts kill sessions mid-use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_nothing_with_warm_sessions() {
    run(seed().wrapping_add(1), rounds(200) / 2, true).await;
}
