//! `podloop doctor` as a user runs it: the real binary against kubesim in a
//! good state, then with one failure injected at a time. Each case checks
//! the exit code, the ✗ line that names the problem, and its fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubesim::{Image, PodTemplate, Sim, SimOptions};

const DEADLINE: Duration = Duration::from_secs(90);

struct Cluster {
    sim: Sim,
    _dir: tempfile::TempDir,
}

async fn cluster(pods: Vec<PodTemplate>) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(dir.path())).await.unwrap();
    for pod in pods {
        sim.create_pod(pod).await.unwrap();
    }
    Cluster { sim, _dir: dir }
}

fn api_pod(name: &str, image: Image) -> PodTemplate {
    PodTemplate::new(name)
        .label("app", "api")
        .container("app", image)
        .file("/app/.keep", "")
}

fn workspace(selector: &str, remote: &str, reload: Option<&str>) -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    let reload = reload
        .map(|r| format!("reload = {r:?}\n"))
        .unwrap_or_default();
    std::fs::write(
        ws.path().join("podloop.toml"),
        format!(
            "namespace = \"default\"\n\n[[sync]]\nname = \"api\"\nlocal = \"src\"\nremote = {remote:?}\nselector = {selector:?}\ncontainer = \"app\"\n{reload}"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(ws.path().join("src")).unwrap();
    ws
}

struct Outcome {
    code: i32,
    stdout: String,
}

impl Outcome {
    fn failures(&self) -> Vec<&str> {
        self.stdout.lines().filter(|l| l.starts_with('✗')).collect()
    }

    /// The `fix:` line printed right under the first ✗ line containing `needle`.
    fn fix_for(&self, needle: &str) -> String {
        let lines: Vec<&str> = self.stdout.lines().collect();
        let at = lines
            .iter()
            .position(|l| l.starts_with('✗') && l.contains(needle))
            .unwrap_or_else(|| panic!("no ✗ line with {needle:?}:\n{}", self.stdout));
        let fix = lines.get(at + 1).copied().unwrap_or("");
        assert!(fix.trim_start().starts_with("fix: "), "{}", self.stdout);
        fix.to_string()
    }
}

async fn doctor(ws: &Path, kubeconfig: &Path) -> Outcome {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_podloop"))
        .arg("doctor")
        .arg("--config")
        .arg(ws.join("podloop.toml"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["--timeout", "20"])
        .current_dir(ws)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(DEADLINE, run)
        .await
        .expect("doctor finished in time")
        .unwrap();
    let outcome = Outcome {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    };
    eprintln!(
        "$ podloop doctor -> {}\n{}{}",
        outcome.code,
        outcome.stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_setup_passes_every_check_in_order() {
    let c = cluster(vec![
        api_pod("api-1", Image::Busybox),
        api_pod("api-2", Image::Host),
    ])
    .await;
    let ws = workspace("app=api", "/app", Some("kill -HUP 1"));
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.failures().is_empty(), "{}", out.stdout);
    let expected_in_order = [
        "✓ config ",
        "✓ kubeconfig: context `kubesim` exists",
        "✓ cluster reachable: Kubernetes v1.33",
        "✓ RBAC in `default`: list and watch pods, create pods/exec",
        "✓ mapping `api`: selector `app=api` matches 2 Ready pod(s) in `default`: api-1/app, api-2/app",
        "✓ api-1/app: has sh and tar",
        "✓ api-1/app: `/app` exists and is writable",
        "✓ api-1/app: reload command found (`kill`",
        "✓ api-1/app: podloop's agent runs in the container: a save starts no process there",
        "✓ api-2/app: has sh and tar",
        "✓ api-2/app: `/app` exists and is writable",
        // busybox `df` answers nothing for `/app` in kubesim's chroot (its
        // root is not a mount of its own), so only the host image says this.
        "✓ api-2/app: ",
        " free under `/app`",
        "✓ api-2/app: reload command found (`kill`",
        "✓ api-2/app: podloop's agent runs in the container",
        "all checks passed",
    ];
    let mut from = 0;
    for needle in expected_in_order {
        let found = out.stdout[from..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing or out of order:\n{}", out.stdout));
        from += found + needle.len();
    }
    // Read-only: the probe left nothing behind in the container.
    let root = c.sim.container_root("default", "api-1", "app").unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(root.join("app"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != ".keep")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The agent tried out by the doctor deleted its own file.
    let tmp: Vec<_> = std::fs::read_dir(root.join("tmp"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_false_is_a_note_not_a_failure() {
    let c = cluster(vec![api_pod("api-1", Image::Busybox)]).await;
    let ws = workspace("app=api", "/app", None);
    let config = ws.path().join("podloop.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("agent = false\n{text}")).unwrap();
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("· api-1/app: `agent = false`: saves go through `sh`"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("agent runs"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_remote_folder_passes_when_its_parent_is_writable() {
    let c = cluster(vec![api_pod("api-1", Image::Busybox)]).await;
    let ws = workspace("app=api", "/srv/new/site", None);
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout.contains(
            "✓ api-1/app: `/srv/new/site` does not exist yet; podloop creates it under `/`, which is writable"
        ),
        "{}",
        out.stdout
    );
    assert!(out
        .stdout
        .contains("✓ api-1/app: no `reload` command configured"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_pods_fails_with_the_selector_fix() {
    let c = cluster(vec![api_pod("api-1", Image::Busybox)]).await;
    let ws = workspace("app=nothing", "/app", None);
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let failures = out.failures();
    assert_eq!(failures.len(), 1, "{}", out.stdout);
    assert!(
        failures[0].starts_with("✗ mapping `api`: no pods match `app=nothing` in `default`"),
        "{}",
        out.stdout
    );
    let fix = out.fix_for("no pods match");
    assert!(fix.contains("--show-labels"), "{fix}");
    assert!(
        out.stdout
            .contains("- mapping `api`: container tools, remote folder, reload (skipped)"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("1 check(s) failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_without_tar_fails_with_an_install_fix() {
    let c = cluster(vec![api_pod("api-1", Image::BusyboxNotar)]).await;
    let ws = workspace("app=api", "/app", None);
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(
        out.failures(),
        ["✗ api-1/app: container has sh but no `tar`"],
        "{}",
        out.stdout
    );
    let fix = out.fix_for("no `tar`");
    assert!(fix.contains("apk add tar"), "{fix}");
    // The other container checks still ran.
    assert!(out
        .stdout
        .contains("✓ api-1/app: `/app` exists and is writable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_exec_fails_the_rbac_check_and_skips_the_container() {
    let c = cluster(vec![api_pod("api-1", Image::Busybox)]).await;
    c.sim.faults().deny("create", "pods/exec");
    let ws = workspace("app=api", "/app", None);
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(out.failures().len(), 1, "{}", out.stdout);
    assert!(
        out.failures()[0].starts_with("✗ RBAC in `default`: not allowed to `create pods/exec`"),
        "{}",
        out.stdout
    );
    let fix = out.fix_for("RBAC");
    assert!(
        fix.contains("resources: [\"pods/exec\"], verbs: [\"create\"]"),
        "{fix}"
    );
    assert!(
        fix.contains("kubectl auth can-i create pods/exec -n default"),
        "{fix}"
    );
    // Pods can still be listed: that check passes, the exec checks are skipped.
    assert!(out
        .stdout
        .contains("✓ mapping `api`: selector `app=api` matches 1 Ready pod(s)"));
    assert!(
        out.stdout.contains("(exec is not allowed) (skipped)"),
        "{}",
        out.stdout
    );
    assert!(
        !c.sim
            .exec_log()
            .iter()
            .any(|e| e.pod == "api-1" && e.exit_code.is_some()),
        "no exec may run when it is forbidden"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_remote_and_a_missing_reload_program_are_reported() {
    let c = cluster(vec![api_pod("api-1", Image::BusyboxReadOnly)]).await;
    let ws = workspace("app=api", "/app", Some("nginx -s reload"));
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(out.failures().len(), 2, "{}", out.stdout);
    assert!(
        out.fix_for("`/app` exists but is not writable")
            .contains("read-only filesystem"),
        "{}",
        out.stdout
    );
    assert!(out
        .fix_for("the reload command `nginx` is not in the container's PATH")
        .contains("install `nginx` in the image"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_under_the_remote_folder_is_reported() {
    let c = cluster(vec![
        api_pod("api-1", Image::Busybox).memory_volume("data", "64Ki", "/data")
    ])
    .await;
    // Filled from outside, as another process in the pod would.
    let root = c.sim.container_root("default", "api-1", "app").unwrap();
    let filler = root.join("data/filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 * 1024]);
    let ws = workspace("app=api", "/data", None);
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(out.failures().len(), 1, "{}", out.stdout);
    assert!(
        out.fix_for("KiB free under `/data`")
            .contains("enlarge the volume"),
        "{}",
        out.stdout
    );
}

/// A kubeconfig like the sim's, pointing at a port where nothing listens.
fn unreachable_kubeconfig(sim: &Sim, dir: &Path) -> (PathBuf, String) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let text = std::fs::read_to_string(sim.kubeconfig_path()).unwrap();
    let url = sim.url();
    let dead = format!("https://127.0.0.1:{port}");
    let path = dir.join("kubeconfig-unreachable");
    std::fs::write(&path, text.replace(&url, &dead)).unwrap();
    (path, dead)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_and_skips_the_rest() {
    let c = cluster(Vec::new()).await;
    let ws = workspace("app=api", "/app", None);
    let (kubeconfig, dead) = unreachable_kubeconfig(&c.sim, ws.path());
    let out = doctor(ws.path(), &kubeconfig).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert_eq!(out.failures().len(), 1, "{}", out.stdout);
    assert!(
        out.failures()[0].starts_with(&format!("✗ cluster unreachable at {dead}")),
        "{}",
        out.stdout
    );
    assert!(out.fix_for("unreachable").contains("kubectl cluster-info"));
    assert!(out.stdout.contains("- RBAC, pods and containers (skipped)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kubeconfig_or_unknown_context_is_the_first_failure() {
    let c = cluster(Vec::new()).await;
    let ws = workspace("app=api", "/app", None);
    let out = doctor(ws.path(), &ws.path().join("no-such-kubeconfig")).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.failures()[0].contains("kubeconfig `") && out.failures()[0].contains("does not exist"),
        "{}",
        out.stdout
    );
    assert!(out.fix_for("does not exist").contains("--kubeconfig FILE"));

    std::fs::write(
        ws.path().join("podloop.toml"),
        "context = \"prod\"\n\n[[sync]]\nlocal = \"src\"\nremote = \"/app\"\nselector = \"app=api\"\n",
    )
    .unwrap();
    let out = doctor(ws.path(), &c.sim.kubeconfig_path()).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.failures()[0].contains("context `prod` is not in kubeconfig")
            && out.failures()[0].contains("known contexts: kubesim"),
        "{}",
        out.stdout
    );
}

/// The same checks through the language server: `podloop.doctor` over
/// stdio, as an editor's command palette runs it.
mod through_the_language_server {
    use super::*;
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::process::{ChildStdin, ChildStdout};

    async fn send(stdin: &mut ChildStdin, message: Value) {
        let body = message.to_string();
        let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        stdin.write_all(frame.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    async fn read(stdout: &mut BufReader<ChildStdout>) -> Value {
        let mut length = 0;
        loop {
            let mut line = String::new();
            assert!(
                stdout.read_line(&mut line).await.unwrap() > 0,
                "server exited"
            );
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.strip_prefix("Content-Length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        stdout.read_exact(&mut body).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Runs `podloop.doctor`; returns its result and every notification
    /// that arrived before it.
    async fn run_doctor_command(ws: &Path, kubeconfig: &Path) -> (Value, Vec<Value>) {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_podloop"))
            .args(["lsp", "--stdio"])
            .env("KUBECONFIG", kubeconfig)
            .current_dir(ws)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let uri = url::Url::from_file_path(ws).unwrap().to_string();
        send(
            &mut stdin,
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "processId": null, "rootUri": uri, "capabilities": {},
                "workspaceFolders": [{"uri": uri, "name": "ws"}]}}),
        )
        .await;
        while read(&mut stdout).await["id"] != 1 {}
        send(
            &mut stdin,
            json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
        )
        .await;
        send(
            &mut stdin,
            json!({"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand",
                   "params": {"command": "podloop.doctor", "arguments": []}}),
        )
        .await;
        let mut seen = Vec::new();
        let is_summary = |m: &Value| {
            m["method"] == "window/showMessage"
                && m["params"]["message"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("podloop doctor:"))
        };
        // The response and the summary notification may come in either order.
        let result = tokio::time::timeout(DEADLINE, async {
            let mut result = None;
            loop {
                let message = read(&mut stdout).await;
                if message["id"] == 2 {
                    result = Some(message);
                } else {
                    if message.get("id").is_some() && message.get("method").is_some() {
                        let reply = json!({"jsonrpc": "2.0", "id": message["id"], "result": null});
                        send(&mut stdin, reply).await;
                    }
                    seen.push(message);
                }
                if let Some(result) = &result {
                    if seen.iter().any(is_summary) {
                        return result.clone();
                    }
                }
            }
        })
        .await
        .expect("podloop.doctor answered and showed its summary in time");
        drop(stdin);
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        (result, seen)
    }

    fn messages<'a>(seen: &'a [Value], method: &str) -> Vec<&'a Value> {
        seen.iter().filter(|m| m["method"] == method).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_doctor_command_logs_every_check_and_shows_a_summary() {
        let c = cluster(vec![api_pod("api-1", Image::Busybox)]).await;
        let ws = workspace("app=api", "/app", None);
        let (response, seen) = run_doctor_command(ws.path(), &c.sim.kubeconfig_path()).await;
        let result = &response["result"];
        assert_eq!(result["failures"], 0, "{response}");
        let lines: Vec<&str> = result["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("✓ api-1/app: has sh and tar")),
            "{lines:?}"
        );
        let logged: Vec<&str> = messages(&seen, "window/logMessage")
            .iter()
            .filter_map(|m| m["params"]["message"].as_str())
            .collect();
        for line in &lines {
            assert!(
                logged.contains(&format!("doctor: {line}").as_str()),
                "{line} not logged"
            );
        }
        let shown = messages(&seen, "window/showMessage");
        assert_eq!(shown.len(), 1, "{seen:?}");
        assert_eq!(shown[0]["params"]["type"], 3, "info");
        assert_eq!(
            shown[0]["params"]["message"],
            "podloop doctor: all checks passed"
        );

        // The same server answers the failure case with an error message.
        c.sim.faults().deny("create", "pods/exec");
        let (response, seen) = run_doctor_command(ws.path(), &c.sim.kubeconfig_path()).await;
        assert_eq!(response["result"]["failures"], 1, "{response}");
        let shown: Vec<&Value> = messages(&seen, "window/showMessage")
            .into_iter()
            .filter(|m| {
                m["params"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("podloop doctor:")
            })
            .collect();
        assert_eq!(shown.len(), 1, "{seen:?}");
        assert_eq!(shown[0]["params"]["type"], 1, "error");
        let text = shown[0]["params"]["message"].as_str().unwrap();
        assert!(
            text.contains(
                "1 check(s) failed; first: ✗ RBAC in `default`: not allowed to `create pods/exec`"
            ),
            "{text}"
        );
    }
}
