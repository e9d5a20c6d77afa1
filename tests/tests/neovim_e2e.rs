//! End to end with a real headless Neovim (0.7.2 on our machines), the real
//! `podloop` binary over stdio, and kubesim: the Neovim plugin's setup(),
//! save-to-pod, statusline, :PodloopSyncAll and :checkhealth podloop.
//!
//! Neovim is driven from outside the way a second terminal would drive it
//! (`nvim --server SOCK --remote-send/--remote-expr`); the pod's files are read
//! through kubesim's own API, never through podloop.

mod neovim_support;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kubesim::{Image, PodTemplate, Sim, SimOptions};
use neovim_support::{nvim_or_skip, podloop_binary, wait_for, Nvim};
use serde_json::Value;

const NAMESPACE: &str = "default";
const POD: &str = "web-1";
const CONTAINER: &str = "app";
const PATIENCE: Duration = Duration::from_secs(30);

struct World {
    // Field order is drop order: Neovim (and with it the server) goes before
    // the cluster it talks to.
    nvim: Option<Nvim>,
    sim: Option<Sim>,
    runtime: tokio::runtime::Runtime,
    workspace: PathBuf,
    _dir: tempfile::TempDir,
}

impl World {
    /// kubesim with one Ready pod labelled app=web, and a workspace whose
    /// podloop.toml maps `src` to `/app/src` in it.
    fn start() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let sim = runtime
            .block_on(Sim::start(SimOptions::new(dir.path().join("sim"))))
            .expect("start kubesim");
        // Busybox when it is installed, else the image made of the host's own
        // sh/tar, so the test runs on either kind of machine.
        let image = if kubesim::image::busybox_available() {
            Image::Busybox
        } else {
            Image::Host
        };
        runtime
            .block_on(
                sim.create_pod(
                    PodTemplate::new(POD)
                        .label("app", "web")
                        .container(CONTAINER, image)
                        .file("/app/src/app.txt", "old content in the pod\n"),
                ),
            )
            .expect("create pod");

        let workspace = dir.path().join("workspace");
        std::fs::create_dir_all(workspace.join("src")).expect("mkdir src");
        std::fs::write(
            workspace.join("podloop.toml"),
            // The namespace is spelled out: these tests are about the editor,
            // not about kubeconfig defaults.
            "namespace = \"default\"\n\n[[sync]]\nname = \"web\"\nlocal = \"src\"\nremote = \"/app/src\"\nselector = \"app=web\"\ncontainer = \"app\"\n",
        )
        .expect("write podloop.toml");
        std::fs::write(workspace.join("src/app.txt"), "old content in the pod\n")
            .expect("write app.txt");
        World {
            nvim: None,
            sim: Some(sim),
            runtime,
            workspace,
            _dir: dir,
        }
    }

    fn sim(&self) -> &Sim {
        self.sim.as_ref().expect("sim running")
    }

    fn nvim(&self) -> &Nvim {
        self.nvim.as_ref().expect("nvim started")
    }

    /// Start Neovim with the plugin set up to run `cmd`.
    fn start_nvim(&mut self, nvim: &Path, cmd: &[&OsStr]) {
        let cmd_json = serde_json::to_string(
            &cmd.iter()
                .map(|part| part.to_str().expect("utf-8 command"))
                .collect::<Vec<_>>(),
        )
        .expect("json");
        let home = self._dir.path().join("home");
        std::fs::create_dir_all(&home).expect("mkdir home");
        let kubeconfig = self.sim().kubeconfig_path();
        let started = Nvim::start(
            nvim,
            &home,
            &self.workspace,
            &[
                ("PODLOOP_E2E_CMD", OsStr::new(&cmd_json)),
                ("PODLOOP_E2E_WORKSPACE", self.workspace.as_os_str()),
                ("KUBECONFIG", kubeconfig.as_os_str()),
                ("RUST_LOG", OsStr::new("podloop=debug")),
            ],
        );
        self.nvim = Some(started);
    }

    fn start_nvim_with_podloop(&mut self, nvim: &Path) {
        let binary = podloop_binary();
        self.start_nvim(nvim, &[binary.as_os_str(), OsStr::new("lsp")]);
    }

    fn open(&self, relative: &str) {
        assert!(
            relative
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)),
            "keep fixture paths plain: they are spliced into a Vim string literal"
        );
        let opened = self.nvim().call("open", Some(relative));
        assert_eq!(opened["ok"], Value::Bool(true), "open {relative}: {opened}");
    }

    /// The text of `:checkhealth podloop`.
    fn checkhealth(&self) -> String {
        self.nvim().call("checkhealth", None)["report"]
            .as_str()
            .expect("report")
            .to_string()
    }

    fn snapshot(&self) -> Value {
        self.nvim().call("snapshot", None)
    }

    fn pod_file(&self, path: &str) -> Result<String, String> {
        self.sim()
            .read_file(NAMESPACE, POD, CONTAINER, path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .map_err(|e| format!("reading {path} in the pod: {e}"))
    }

    /// Wait until the pod's `path` holds exactly `expected`.
    fn wait_pod_file(&self, path: &str, expected: &str) {
        wait_for(
            &format!("{path} in the pod to be {expected:?}"),
            PATIENCE,
            || {
                let actual = self.pod_file(path)?;
                if actual == expected {
                    Ok(())
                } else {
                    Err(format!("{actual:?}; nvim stderr: {}", self.nvim().stderr()))
                }
            },
        );
    }

    /// Wait until the current buffer has a podloop client attached.
    fn wait_attached(&self) -> Value {
        wait_for("a podloop client attached to the buffer", PATIENCE, || {
            let snap = self.snapshot();
            let buffer = &snap["current_buffer"];
            let attached = snap["clients"].as_array().is_some_and(|clients| {
                clients.iter().any(|c| {
                    c["buffers"]
                        .as_array()
                        .is_some_and(|buffers| buffers.contains(buffer))
                })
            });
            if attached {
                Ok(snap)
            } else {
                Err(snap.to_string())
            }
        })
    }

    /// Wait for a `podloop/status` that is healthy and quiescent with a
    /// target in our pod, and return the snapshot holding it.
    fn wait_healthy(&self, what: &str, extra: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, PATIENCE, || {
            let snap = self.snapshot();
            let status = &snap["status"];
            let healthy = status["health"] == "ok"
                && status["quiescent"] == Value::Bool(true)
                && status["targets"]
                    .as_array()
                    .is_some_and(|targets| targets.iter().any(|t| t["pod"] == POD));
            if healthy && extra(&snap) {
                Ok(snap)
            } else {
                Err(snap.to_string())
            }
        })
    }
}

impl World {
    /// Neovim running podloop on `src/app.txt`, attached, with a healthy
    /// status (waited for as `healthy_before`); `None` when the test is
    /// skipped for want of Neovim.
    fn editing_app_txt(test: &str, healthy_before: &str) -> Option<World> {
        let nvim = nvim_or_skip(test)?;
        let mut world = World::start();
        world.start_nvim_with_podloop(&nvim);
        world.open("src/app.txt");
        world.wait_attached();
        world.wait_healthy(healthy_before, |_| true);
        Some(world)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(nvim) = self.nvim.take() {
            nvim.quit();
        }
        if let Some(sim) = self.sim.take() {
            self.runtime.block_on(sim.shutdown());
        }
    }
}

/// A :checkhealth line with `level` ("OK", "ERROR") and `text`. Neovim 0.7
/// writes "- OK: text", 0.10+ "- ✅ OK text": match either.
fn assert_report_line(report: &str, level: &str, text: &str) {
    let found = report.lines().any(|line| {
        line.trim_start().starts_with('-')
            && line.contains(level)
            && line
                .find(level)
                .zip(line.find(text))
                .is_some_and(|(l, t)| l < t)
    });
    assert!(found, "no {level} line with {text:?} in:\n{report}");
}

fn last_sync_files(snap: &Value) -> u64 {
    snap["status"]["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["lastSync"]["files"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn neovim_save_reaches_the_pod_and_the_statusline() {
    let Some(nvim) = nvim_or_skip("neovim_save_reaches_the_pod_and_the_statusline") else {
        return;
    };
    let mut world = World::start();
    world.start_nvim_with_podloop(&nvim);
    world.open("src/app.txt");
    let attached = world.wait_attached();
    assert_eq!(
        attached["clients"].as_array().map(Vec::len),
        Some(1),
        "one client for the root: {attached}"
    );

    let before = world.wait_healthy("a healthy status before the save", |_| true);
    let seen_before = before["history"].as_array().map_or(0, Vec::len);

    // Typed like a user: replace the buffer's text, then :w.
    world.nvim().send_keys("ggdGihello from neovim<Esc>:w<CR>");
    world.wait_pod_file("/app/src/app.txt", "hello from neovim\n");
    assert_eq!(
        std::fs::read_to_string(world.workspace.join("src/app.txt")).expect("local file"),
        "hello from neovim\n"
    );

    // While the batch is in flight the statusline spins; once it is done it
    // shows the pod, the batch's duration and its time.
    let settled = wait_for(
        "a quiescent status after the save's batch",
        PATIENCE,
        || {
            let snap = world.snapshot();
            let history = snap["history"].as_array().cloned().unwrap_or_default();
            let after_save = &history[seen_before.min(history.len())..];
            let carried = after_save.iter().any(|entry| last_sync_files(entry) >= 1);
            let quiescent = snap["status"]["quiescent"] == Value::Bool(true);
            if carried && quiescent {
                Ok((snap, after_save.to_vec()))
            } else {
                Err(serde_json::to_string_pretty(&after_save).unwrap_or_default())
            }
        },
    );
    let (snap, after_save) = settled;
    let history_text = serde_json::to_string_pretty(&after_save).unwrap_or_default();
    assert!(
        after_save.iter().any(|entry| entry["statusline"]
            .as_str()
            .is_some_and(|s| s.starts_with("podloop ") && s.contains(" web-1 syncing"))),
        "the statusline should have shown the batch in flight: {history_text}"
    );
    assert_eq!(snap["status"]["health"], "ok", "{snap}");
    let statusline = snap["statusline"].as_str().expect("statusline string");
    // "podloop ✓ web-1 <duration> <HH:MM:SS>"
    let words: Vec<&str> = statusline.split_whitespace().collect();
    assert_eq!(
        &words[..3],
        &["podloop", "✓", "web-1"],
        "statusline should show health and pod: {statusline:?}"
    );
    assert_eq!(words.len(), 5, "statusline: {statusline:?}");
    assert!(
        words[3].starts_with(|c: char| c.is_ascii_digit())
            && (words[3].ends_with("ms") || words[3].ends_with('s')),
        "statusline should show the last batch's duration: {statusline:?}"
    );
    assert!(
        words[4].len() == 8 && words[4].chars().filter(|&c| c == ':').count() == 2,
        "statusline should show the last batch's time: {statusline:?}"
    );

    // :PodloopLog shows the server's per-batch log lines.
    let ran = world.nvim().call("run", Some("PodloopLog"));
    assert_eq!(ran["ok"], Value::Bool(true), "{ran}");
    let log = world.nvim().call("current_lines", None);
    let lines: Vec<&str> = log["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.starts_with("# podloop (client ")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[INFO]") || l.contains("[LOG]")),
        "the server's log lines are listed: {log}"
    );
    world.nvim().call("run", Some("close"));

    // A second file in the same root reuses the same client.
    std::fs::write(world.workspace.join("src/second.txt"), "second\n").expect("write");
    world.open("src/second.txt");
    let snap = world.wait_attached();
    assert_eq!(
        snap["clients"].as_array().map(Vec::len),
        Some(1),
        "the second buffer must reuse the root's client: {snap}"
    );
    world.nvim().send_keys("ggdGisecond, edited<Esc>:w<CR>");
    world.wait_pod_file("/app/src/second.txt", "second, edited\n");

    let notifications = &world.snapshot()["notifications"];
    let errors: Vec<_> = notifications
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["level"].as_u64() >= Some(4))
        .collect();
    assert!(
        errors.is_empty(),
        "plain saves must not pop up errors: {errors:?}"
    );
    // Warnings are the server's call (it reports a file that changed while
    // being sent as a retried, degraded batch); show them, do not fail.
    eprintln!("notifications during the test: {notifications}");
}

#[test]
fn neovim_sync_all_repairs_pod_drift_and_outside_changes() {
    let Some(world) = World::editing_app_txt(
        "neovim_sync_all_repairs_pod_drift_and_outside_changes",
        "a healthy status before the change",
    ) else {
        return;
    };

    // Someone edited the file inside the pod: no local event will ever
    // mention it, so only the sync-all's comparison can put it right.
    let in_pod = world
        .sim()
        .container_root(NAMESPACE, POD, CONTAINER)
        .expect("container root")
        .join("app/src/app.txt");
    std::fs::write(&in_pod, "drifted inside the pod\n").expect("write in the pod");
    // Like `git checkout` or a code generator: the editor has no buffer for it.
    std::fs::create_dir_all(world.workspace.join("src/gen")).expect("mkdir");
    std::fs::write(world.workspace.join("src/gen/api.txt"), "generated v2\n").expect("write");
    world.nvim().send_keys(":PodloopSyncAll<CR>");

    world.wait_pod_file("/app/src/gen/api.txt", "generated v2\n");
    world.wait_pod_file("/app/src/app.txt", "old content in the pod\n");
    let snap = wait_for("the syncAll reply", PATIENCE, || {
        let snap = world.snapshot();
        if snap["sync_all"].is_object() {
            Ok(snap)
        } else {
            Err(snap.to_string())
        }
    });
    assert_eq!(
        snap["sync_all"]["ok"],
        Value::Bool(true),
        "podloop.syncAll failed: {snap}"
    );
    eprintln!("podloop.syncAll answered {}", snap["sync_all"]["result"]);
    let shown: Vec<&str> = snap["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["message"].as_str())
        .collect();
    assert!(
        shown.iter().any(|m| m.starts_with("podloop: sync all:")),
        "the user sees the sync-all summary: {shown:?}"
    );
}

#[test]
fn neovim_pause_holds_saves_and_resume_delivers_them() {
    let Some(world) = World::editing_app_txt(
        "neovim_pause_holds_saves_and_resume_delivers_them",
        "a healthy status before pausing",
    ) else {
        return;
    };

    world.nvim().send_keys(":PodloopPause<CR>");
    wait_for("the paused statusline", PATIENCE, || {
        let snap = world.snapshot();
        if snap["statusline"] == "podloop ⏸ web-1 paused" {
            Ok(())
        } else {
            Err(snap.to_string())
        }
    });
    world
        .nvim()
        .send_keys("ggdGiwritten while paused<Esc>:w<CR>");
    // The server counts the save as pending: only then is "not delivered"
    // a fact rather than a race.
    wait_for("the save to be pending", PATIENCE, || {
        let snap = world.snapshot();
        if snap["statusline"] == "podloop ⏸ web-1 paused, 1 pending" {
            Ok(())
        } else {
            Err(snap.to_string())
        }
    });
    assert_eq!(
        world.pod_file("/app/src/app.txt").as_deref(),
        Ok("old content in the pod\n"),
        "nothing is sent while paused"
    );

    // :PodloopStatus lists the target and the paused state.
    let ran = world.nvim().call("run", Some("PodloopStatus"));
    assert_eq!(ran["ok"], Value::Bool(true), "{ran}");
    let floats = wait_for("the :PodloopStatus window", PATIENCE, || {
        let floats = world.nvim().call("floats", None);
        let texts: Vec<String> = floats["floats"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str().map(str::to_owned))
            .collect();
        if texts.iter().any(|t| t.contains("state: paused")) {
            Ok(texts.join("\n---\n"))
        } else {
            Err(floats.to_string())
        }
    });
    assert!(
        floats.contains("[web] default/web-1:app"),
        "every target is listed: {floats}"
    );
    world.nvim().send_keys("q");

    world.nvim().send_keys(":PodloopResume<CR>");
    world.wait_pod_file("/app/src/app.txt", "written while paused\n");
    world.wait_healthy("a healthy status after resuming", |snap| {
        snap["status"]["state"] == "idle"
    });
}

#[test]
fn neovim_without_watch_events_still_delivers_outside_changes() {
    // Neovim 0.7 never sends workspace/didChangeWatchedFiles: only the
    // server's own watcher can notice this write.
    let Some(world) = World::editing_app_txt(
        "neovim_without_watch_events_still_delivers_outside_changes",
        "a healthy status before the change",
    ) else {
        return;
    };

    std::fs::write(
        world.workspace.join("src/outside.txt"),
        "written by another tool\n",
    )
    .expect("write");
    world.wait_pod_file("/app/src/outside.txt", "written by another tool\n");
}

#[test]
fn neovim_checkhealth_reports_ok_when_everything_is_in_place() {
    let Some(world) = World::editing_app_txt(
        "neovim_checkhealth_reports_ok_when_everything_is_in_place",
        "a healthy status before :checkhealth",
    ) else {
        return;
    };

    let report = world.checkhealth();
    for expected in [
        "Neovim 0.",
        "setup() was called",
        "binary: ",
        "config file: ",
        "config file accepted by the running server",
        "cluster reachable; 1 target(s): default/web-1:app",
    ] {
        assert_report_line(&report, "OK", expected);
    }
    assert!(!report.contains("ERROR"), "no errors expected:\n{report}");
    assert!(
        !report.contains("WARNING"),
        "no warnings expected:\n{report}"
    );
}

#[test]
fn neovim_checkhealth_asks_podloop_doctor_when_no_server_runs() {
    let Some(nvim) = nvim_or_skip("neovim_checkhealth_asks_podloop_doctor_when_no_server_runs")
    else {
        return;
    };
    let mut world = World::start();
    // Started in the workspace, no file opened: no language server yet.
    world.start_nvim_with_podloop(&nvim);
    let report = world.checkhealth();
    let snap = world.snapshot();
    assert_eq!(snap["clients"].as_array().map(Vec::len), Some(0), "{snap}");
    assert!(
        report.contains("asking `podloop doctor` instead"),
        "{report}"
    );
    let section = report
        .split("project and cluster")
        .nth(1)
        .unwrap_or_else(|| panic!("no project section in:\n{report}"));
    let oks = section.lines().filter(|l| l.contains("OK")).count();
    assert!(
        oks >= 3,
        "the doctor's passing checks are listed as OK:\n{report}"
    );
    assert_report_line(&report, "OK", "cluster reachable");
    assert!(!report.contains("ERROR"), "no errors expected:\n{report}");
}

#[test]
fn neovim_checkhealth_names_the_missing_binary_and_the_fix() {
    let Some(nvim) = nvim_or_skip("neovim_checkhealth_names_the_missing_binary_and_the_fix") else {
        return;
    };
    let mut world = World::start();
    let missing = world.workspace.join("no-such-dir/podloop");
    world.start_nvim(&nvim, &[missing.as_os_str(), OsStr::new("lsp")]);
    world.open("src/app.txt");

    let report = world.checkhealth();
    assert_report_line(
        &report,
        "ERROR",
        &format!("binary `{}` not found or not executable", missing.display()),
    );
    assert!(
        report.contains("cargo install --path server"),
        "the report says how to install it:\n{report}"
    );
    assert!(
        report.contains("cmd = { '/path/to/podloop', 'lsp' }"),
        "the report says how to point setup() at it:\n{report}"
    );
    assert_report_line(&report, "OK", "setup() was called");

    // Opening files told the user once, and started nothing.
    std::fs::write(world.workspace.join("src/second.txt"), "second\n").expect("write");
    world.open("src/second.txt");
    let snap = world.snapshot();
    assert_eq!(snap["clients"].as_array().map(Vec::len), Some(0), "{snap}");
    let complaints = snap["notifications"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| {
            n["message"]
                .as_str()
                .is_some_and(|m| m.contains("is not an executable program"))
        })
        .count();
    assert_eq!(complaints, 1, "exactly one notification: {snap}");
}
