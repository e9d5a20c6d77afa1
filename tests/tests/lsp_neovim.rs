//! A real editor against the real binary: headless Neovim 0.7 starts
//! `podloop lsp` with `vim.lsp.start_client`, edits a mapped file and `:w`.
//! The file must arrive in the kubesim pod, and Neovim's handler must have
//! received the `podloop/status` that reports it.

mod neovim_support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kubesim::{Image, PodTemplate, Sim, SimOptions};
use neovim_support::{isolate, nvim_or_skip, podloop_binary, run_with_deadline, wait_for};
use serde_json::Value;

const NEW_TEXT: &str = "print('edited in neovim')";

fn fixture() -> std::path::PathBuf {
    neovim_support::repo_root().join("tests/fixtures/lsp_neovim/save_and_report.lua")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neovim_saves_a_file_into_the_pod_and_sees_the_status() {
    let Some(nvim) = nvim_or_skip("neovim_saves_a_file_into_the_pod_and_sees_the_status") else {
        return;
    };
    let podloop = tokio::task::spawn_blocking(podloop_binary).await.unwrap();

    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(sim_dir.path())).await.unwrap();
    let image = if podloop_e2e::require_busybox() {
        Image::Busybox
    } else {
        Image::Host
    };
    sim.create_pod(
        PodTemplate::new("api-1")
            .label("app", "api")
            .container("app", image),
    )
    .await
    .unwrap();

    let workspace = tempfile::tempdir().unwrap();
    let root = workspace.path();
    std::fs::write(
        root.join("podloop.toml"),
        "namespace = \"default\"\n\n[[sync]]\nname = \"api\"\nlocal = \"src\"\nremote = \"/app\"\nselector = \"app=api\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    let file = root.join("src/main.py");
    std::fs::write(&file, "print('before')\n").unwrap();
    let out = root.join("neovim-saw.json");
    let home = tempfile::tempdir().unwrap();

    let mut command = Command::new(&nvim);
    command
        .args(["--headless", "-u", "NONE", "-i", "NONE", "-n", "-c"])
        .arg(format!("luafile {}", fixture().display()))
        .current_dir(root)
        .env("PODLOOP_BIN", &podloop)
        .env("PODLOOP_ROOT", root)
        .env("PODLOOP_FILE", &file)
        .env("PODLOOP_OUT", &out)
        .env("PODLOOP_NEW_TEXT", NEW_TEXT)
        .env("KUBECONFIG", sim.kubeconfig_path())
        .env("PODLOOP_LOG", "debug");
    isolate(&mut command, home.path());
    let finished =
        tokio::task::spawn_blocking(move || run_with_deadline(command, Duration::from_secs(90)))
            .await
            .unwrap();

    let saw: Value = match std::fs::read(&out) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(error) => panic!(
            "Neovim wrote no report ({error}); exit {:?}\nstderr:\n{}\nnvim log:\n{}",
            finished.status,
            finished.stderr,
            std::fs::read_to_string(home.path().join("nvim.log")).unwrap_or_default()
        ),
    };
    assert!(
        saw["error"].is_null(),
        "the Lua side failed: {}\nsaw: {saw:#}\nlsp log: {}",
        saw["error"],
        lsp_log(home.path())
    );
    assert!(finished.status.success(), "nvim exit {:?}", finished.status);

    let expected = format!("{NEW_TEXT}\n");
    let content = wait_for("the edit in the pod", Duration::from_secs(10), || {
        let content = sim
            .read_file("default", "api-1", "app", "/app/main.py")
            .map_err(|error| error.to_string())?;
        if content == expected.as_bytes() {
            Ok(content)
        } else {
            Err(String::from_utf8_lossy(&content).into_owned())
        }
    });
    assert_eq!(content, expected.as_bytes());

    let statuses = saw["statuses"].as_array().expect("statuses");
    let delivery = statuses
        .iter()
        .find(|status| status["targets"][0]["lastSync"]["files"].as_u64() >= Some(1))
        .unwrap_or_else(|| panic!("no status reported the delivery: {statuses:#?}"));
    assert_eq!(delivery["targets"][0]["pod"], "api-1");
    assert_eq!(delivery["targets"][0]["mapping"], "api");
    let last = statuses.last().unwrap();
    assert_eq!(last["health"], "ok", "{last}");
    assert_eq!(last["quiescent"], true);
    assert_eq!(saw["diagnostics"], serde_json::json!([]), "{saw:#}");
    sim.shutdown().await;
}

/// Neovim 0.7 keeps the server's stderr in its LSP log.
fn lsp_log(home: &Path) -> String {
    let candidates = [
        home.join("cache/nvim/lsp.log"),
        home.join("state/nvim/lsp.log"),
    ];
    candidates
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect::<Vec<_>>()
        .join("\n")
}
