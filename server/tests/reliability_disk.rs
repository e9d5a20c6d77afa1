//! A full disk in the container: the mapping's `remote` lives on a 64 KiB
//! memory emptyDir (a real tmpfs, kubesim mounts it), filled from outside
//! through kubesim's view of the container root. A save that does not fit
//! must leave the previous file intact, leave no temporary file or staging
//! folder behind, say `no space left` with the hint `disk is full`, stay
//! pending, and land by itself once space is freed.

mod reliability_common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubesim::{Image, PodTemplate};
use podloop::engine::{ChangeOrigin, EngineState, Health, Problem, Status, TargetState};
use reliability_common::{api_pod, EngineSim, DEADLINE};

const VOLUME: &str = "/data";
const CONFIG: &str = r#"
[[sync]]
name = "api"
local = "src"
remote = "/data/app"
selector = "app=api"
container = "app"
"#;

/// Long enough for a test to look at the container between two retries
/// without racing the next attempt.
const QUIET_GAP_MS: u128 = 1000;

fn pod() -> PodTemplate {
    api_pod(Image::Busybox).memory_volume("data", "64Ki", VOLUME)
}

async fn with_volume_pod() -> EngineSim {
    EngineSim::with_pod(pod(), CONFIG).await
}

/// The volume as the host sees it (kubesim mounts it in its own namespace).
fn volume(h: &EngineSim) -> PathBuf {
    h.root_of("api-1", "app").join(&VOLUME[1..])
}

fn in_pod(h: &EngineSim, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(volume(h).join("app").join(rel)).ok()
}

/// Fills the volume with `filler` until the disk refuses a byte, then frees
/// one page: a few bytes still fit, a few kilobytes do not.
fn fill_leaving_one_page(volume: &Path) -> PathBuf {
    let filler = volume.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = [0x5au8; 4096];
    loop {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    drop(file);
    let len = std::fs::metadata(&filler).unwrap().len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    file.set_len(len.saturating_sub(4096) / 4096 * 4096)
        .unwrap();
    filler
}

/// Every name under `dir` that podloop uses for its temporary files and
/// staging folders.
fn podloop_leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if entry
                .file_name()
                .as_encoded_bytes()
                .starts_with(b".podloop-")
            {
                found.push(path.clone());
            }
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    found
}

fn says_disk_full(problems: &[Problem]) -> bool {
    problems.iter().any(|p| {
        let m = p.message.to_lowercase();
        m.contains("no space left") && m.contains("disk is full")
    })
}

/// Milliseconds until the target's next attempt, from its error text
/// ("… (next try in N ms)").
fn next_try_ms(status: &Status) -> Option<u128> {
    let error = status.targets.first()?.error.as_deref()?;
    let rest = error.rsplit_once("(next try in ")?.1;
    rest.split_once(" ms)")?.0.parse().ok()
}

/// Waits until the failed save waits for a retry that is at least
/// `QUIET_GAP_MS` away, so that what the container holds is what the failed
/// attempts left, not an attempt in progress.
async fn between_retries(h: &mut EngineSim) -> Status {
    loop {
        let status = h.status().await;
        let waiting = status
            .targets
            .first()
            .is_some_and(|t| t.state == TargetState::Waiting);
        if waiting && next_try_ms(&status).is_some_and(|ms| ms >= QUIET_GAP_MS) {
            return status;
        }
        h.next().await;
    }
}

fn assert_still_pending(status: &Status) {
    assert!(
        !status.quiescent && status.pending >= 1,
        "a save that did not land must stay pending: {status:?}"
    );
}

#[tokio::test]
async fn one_file_that_does_not_fit_keeps_the_old_copy_and_lands_once_space_is_freed() {
    if !kubesim::image::busybox_or_skip() {
        return;
    }
    let mut h = with_volume_pod().await;
    let old = vec![b'o'; 8 * 1024];
    let file = h.save("big.txt", &old);
    h.quiescent().await;
    assert_eq!(in_pod(&h, "big.txt").as_deref(), Some(&old[..]));

    let filler = fill_leaving_one_page(&volume(&h));
    // One file on a warm session: the single-file path, not tar.
    let new: Vec<u8> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
    h.save("big.txt", &new);
    let problems = h.problems_until(&file, says_disk_full).await;
    eprintln!("diagnostic: {problems:?}");
    let status = between_retries(&mut h).await;
    assert_still_pending(&status);
    let error = status.targets[0].error.clone().unwrap_or_default();
    assert!(
        error.to_lowercase().contains("no space left"),
        "the target's error: {error}"
    );
    // The pod answered: it is full, not unreachable.
    assert_ne!(status.state, EngineState::Disconnected, "{status:?}");
    assert_eq!(status.health, Health::Error, "{status:?}");
    assert!(status.message.contains("no space left"), "{status:?}");
    assert_eq!(
        in_pod(&h, "big.txt").as_deref(),
        Some(&old[..]),
        "the previous content must stay, whole"
    );
    assert_eq!(podloop_leftovers(&volume(&h)), Vec::<PathBuf>::new());

    // Space comes back: the backoff retries the save without another edit.
    std::fs::remove_file(&filler).unwrap();
    h.problems_until(&file, |p| p.is_empty()).await;
    let status = h.quiescent().await;
    assert_eq!(status.targets[0].error, None, "{status:?}");
    assert_eq!(in_pod(&h, "big.txt").as_deref(), Some(&new[..]));
    assert_eq!(podloop_leftovers(&volume(&h)), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn a_batch_that_does_not_fit_is_applied_whole_or_not_at_all() {
    if !kubesim::image::busybox_or_skip() {
        return;
    }
    let mut h = with_volume_pod().await;
    let names = ["a.txt", "dir/b.txt", "dir/c.txt"];
    let olds: Vec<Vec<u8>> = names
        .iter()
        .map(|n| format!("old {n}\n").into_bytes())
        .collect();
    let paths: Vec<PathBuf> = names
        .iter()
        .zip(&olds)
        .map(|(n, c)| h.write(n, c))
        .collect();
    h.changed(paths.clone(), ChangeOrigin::Save);
    h.quiescent().await;

    let filler = fill_leaving_one_page(&volume(&h));
    // The first file alone would fit in the page left; a batch applied file
    // by file would land it and fail on the next ones.
    let news: Vec<Vec<u8>> = vec![
        b"new a\n".to_vec(),
        vec![b'b'; 12 * 1024],
        vec![b'c'; 12 * 1024],
    ];
    for (n, c) in names.iter().zip(&news) {
        h.write(n, c);
    }
    h.changed(paths.clone(), ChangeOrigin::Save);
    for path in &paths {
        h.problems_until(path, says_disk_full).await;
    }
    let status = between_retries(&mut h).await;
    assert_still_pending(&status);
    for (n, old) in names.iter().zip(&olds) {
        assert_eq!(
            in_pod(&h, n).as_deref(),
            Some(&old[..]),
            "{n} must keep its previous content while the batch cannot land"
        );
    }
    assert_eq!(podloop_leftovers(&volume(&h)), Vec::<PathBuf>::new());

    std::fs::remove_file(&filler).unwrap();
    for path in &paths {
        h.problems_until(path, |p| p.is_empty()).await;
    }
    h.quiescent().await;
    for (n, new) in names.iter().zip(&news) {
        assert_eq!(in_pod(&h, n).as_deref(), Some(&new[..]), "{n}");
    }
    assert_eq!(podloop_leftovers(&volume(&h)), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn podloop_sync_into_a_full_volume_exits_non_zero_with_the_reason() {
    if !kubesim::image::busybox_or_skip() {
        return;
    }
    let (sim, _sim_dir) = EngineSim::sim().await;
    sim.create_pod(pod()).await.unwrap();
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("podloop.toml"), CONFIG).unwrap();
    std::fs::create_dir_all(ws.path().join("src")).unwrap();
    std::fs::write(ws.path().join("src/big.txt"), vec![b'x'; 16 * 1024]).unwrap();
    let root = sim.container_root("default", "api-1", "app").unwrap();
    let volume = root.join(&VOLUME[1..]);
    fill_leaving_one_page(&volume);

    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_podloop"))
        .args(["sync", "--timeout", "5", "src/big.txt", "--kubeconfig"])
        .arg(sim.kubeconfig_path())
        .current_dir(ws.path())
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE + Duration::from_secs(5), run)
        .await
        .expect("podloop sync did not exit")
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("podloop sync -> {:?}\n{text}", out.status);
    assert!(!out.status.success(), "{text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("no space left") && lower.contains("disk is full"),
        "{text}"
    );
    assert!(!volume.join("app/big.txt").exists());
    assert_eq!(podloop_leftovers(&volume), Vec::<PathBuf>::new());
}
