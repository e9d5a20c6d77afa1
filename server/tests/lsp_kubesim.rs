//! The language server against kubesim: real TLS, real exec over WebSocket,
//! real tar into a chrooted busybox container. Driven in process through
//! the `TestServer` JSON-RPC client.

mod common;

use std::path::Path;

use common::{kube_starter, write_file, TestServer};
use kubesim::{Image, PodTemplate, Sim, SimOptions};
use serde_json::Value;

// The namespace is explicit: an empty one reaches the transport as a
// literal "" (engine/transport contract gap, reported).
const CONFIG: &str = r#"namespace = "default"

[[sync]]
name = "api"
local = "src"
remote = "/app"
selector = "app=api"
container = "app"
"#;

struct Setup {
    sim: Sim,
    workspace: tempfile::TempDir,
    _sim_dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(sim_dir.path())).await.unwrap();
    sim.create_pod(
        PodTemplate::new("api-1")
            .label("app", "api")
            .container("app", Image::Busybox)
            .file("/app/.keep", ""),
    )
    .await
    .unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("podloop.toml"), CONFIG).unwrap();
    std::fs::create_dir_all(workspace.path().join("src")).unwrap();
    Setup {
        sim,
        workspace,
        _sim_dir: sim_dir,
    }
}

async fn server_for(setup: &Setup) -> TestServer {
    TestServer::builder()
        .workspace(setup.workspace.path())
        .engine(kube_starter(&setup.sim))
        .build()
        .await
}

fn settled_ok(status: &Value) -> bool {
    status["quiescent"] == true
        && status["health"] == "ok"
        && status["targets"][0]["pod"] == "api-1"
}

fn in_pod(sim: &Sim, path: &str) -> Option<Vec<u8>> {
    sim.read_file("default", "api-1", "app", path).ok()
}

async fn wait_for_content(server: &TestServer, sim: &Sim, path: &str, expected: &str) {
    let what = format!("{path} = {expected:?} in the pod");
    server
        .eventually(&what, || {
            in_pod(sim, path).filter(|content| content == expected.as_bytes())
        })
        .await;
}

fn execs_into_api(sim: &Sim) -> usize {
    sim.exec_log()
        .iter()
        .filter(|record| record.pod == "api-1")
        .count()
}

#[tokio::test]
async fn a_save_reaches_the_kubesim_pod_and_status_says_ok() {
    let setup = setup().await;
    let server = server_for(&setup).await;
    server.wait_for_status(settled_ok).await;

    let file = write_file(
        setup.workspace.path(),
        "src/main.py",
        "print('hello pod')\n",
    );
    server.save(&file).await;
    wait_for_content(&server, &setup.sim, "/app/main.py", "print('hello pod')\n").await;
    let status = server.wait_for_status(settled_ok).await;
    assert_eq!(status["targets"][0]["namespace"], "default");
    assert_eq!(status["targets"][0]["container"], "app");
    assert_eq!(status["targets"][0]["state"], "synced");
    assert!(status["targets"][0]["error"].is_null(), "{status}");

    // Edit and save again: the latest content wins.
    std::fs::write(&file, "print('second')\n").unwrap();
    server.save(&file).await;
    wait_for_content(&server, &setup.sim, "/app/main.py", "print('second')\n").await;
    server.shutdown().await;
}

#[tokio::test]
async fn fifty_saves_in_a_burst_need_fewer_execs_and_all_arrive() {
    let setup = setup().await;
    let server = server_for(&setup).await;
    server.wait_for_status(settled_ok).await;
    let execs_before = execs_into_api(&setup.sim);

    let files: Vec<_> = (0..50)
        .map(|index| {
            write_file(
                setup.workspace.path(),
                &format!("src/pkg/file_{index:02}.txt"),
                &format!("content {index}\n"),
            )
        })
        .collect();
    for file in &files {
        server.save_only(file).await;
    }
    for index in 0..50 {
        let path = format!("/app/pkg/file_{index:02}.txt");
        wait_for_content(&server, &setup.sim, &path, &format!("content {index}\n")).await;
    }
    server.wait_for_status(settled_ok).await;
    let execs = execs_into_api(&setup.sim) - execs_before;
    eprintln!("50 saves cost {execs} execs");
    assert!(execs < 50, "50 saves cost {execs} execs");
}

#[tokio::test]
async fn a_refused_exec_is_an_error_on_the_file_until_a_save_succeeds() {
    let setup = setup().await;
    let server = server_for(&setup).await;
    server.wait_for_status(settled_ok).await;

    setup.sim.faults().deny("create", "pods/exec");
    let file = write_file(setup.workspace.path(), "src/denied.txt", "v1\n");
    server.save(&file).await;
    let diagnostics = server
        .wait_for_diagnostics(&file, |diagnostics| !diagnostics.is_empty())
        .await;
    assert_eq!(diagnostics[0]["severity"], 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0]["source"], "podloop");
    let message = diagnostics[0]["message"].as_str().unwrap();
    assert!(
        message.contains("api-1"),
        "does not name the pod: {message}"
    );
    assert_eq!(in_pod(&setup.sim, "/app/denied.txt"), None);

    setup.sim.faults().clear();
    server.save(&file).await;
    server
        .wait_for_diagnostics(&file, |diagnostics| diagnostics.is_empty())
        .await;
    wait_for_content(&server, &setup.sim, "/app/denied.txt", "v1\n").await;
}

#[tokio::test]
async fn a_save_while_the_pod_is_gone_is_delivered_to_its_replacement() {
    let setup = setup().await;
    let server = server_for(&setup).await;
    server.wait_for_status(settled_ok).await;

    setup.sim.delete_pod("default", "api-1").await.unwrap();
    server
        .wait_for_status(|status| status["health"] != "ok")
        .await;
    let file = write_file(setup.workspace.path(), "src/late.txt", "waited\n");
    server.save(&file).await;
    server
        .wait_for_status(|status| status["pending"].as_u64() >= Some(1))
        .await;

    setup
        .sim
        .create_pod(
            PodTemplate::new("api-2")
                .label("app", "api")
                .container("app", Image::Busybox),
        )
        .await
        .unwrap();
    let what = "late.txt in the replacement pod";
    server
        .eventually(what, || {
            setup
                .sim
                .read_file("default", "api-2", "app", "/app/late.txt")
                .ok()
                .filter(|content| content == b"waited\n")
        })
        .await;
    server
        .wait_for_status(|status| {
            status["quiescent"] == true && status["targets"][0]["pod"] == "api-2"
        })
        .await;
}

#[tokio::test]
async fn a_config_error_points_at_its_line_in_podloop_toml() {
    let setup = setup().await;
    let config = setup.workspace.path().join("podloop.toml");
    std::fs::write(
        &config,
        "namespace = \"default\"\n[[sync]]\nname = \"api\"\nlocal = \"src\"\nremote = \"/app\"\nselector = \"app=api\"\npods = \"some\"\n",
    )
    .unwrap();
    let server = server_for(&setup).await;
    let diagnostics = server
        .wait_for_diagnostics(Path::new(&config), |diagnostics| !diagnostics.is_empty())
        .await;
    assert_eq!(
        diagnostics[0]["range"]["start"]["line"], 6,
        "{diagnostics:?}"
    );
}
