//! No bearer token in any log line, status or message: a whole language
//! server run against kubesim (saves, a 403, failed handshakes, commands)
//! with every crate logging at TRACE into a buffer, then both the log and
//! every message the client received are searched for the kubeconfig's
//! token.

mod common;
mod reliability_common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{kube_starter, write_file, TestServer};
use kubesim::{Image, Sim, SimOptions};
use reliability_common::api_pod;
use serde_json::Value;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const METHODS: &[&str] = &[
    "podloop/status",
    "textDocument/publishDiagnostics",
    "window/showMessage",
    "window/logMessage",
    "$/progress",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_in_any_log_line_status_or_message() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(sim_dir.path())).await.unwrap();
    let token = sim.token();
    assert!(token.len() >= 16, "a token worth searching for");
    sim.create_pod(api_pod(Image::Busybox)).await.unwrap();
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(
        workspace.path().join("podloop.toml"),
        "[[sync]]\nname = \"api\"\nlocal = \"src\"\nremote = \"/app\"\nselector = \"app=api\"\n",
    )
    .unwrap();
    let server = TestServer::builder()
        .workspace(workspace.path())
        .engine(kube_starter(&sim))
        .build()
        .await;
    let settled = |s: &Value| s["quiescent"] == true && s["targets"][0]["pod"] == "api-1";
    server.wait_for_status(settled).await;

    // A 403 before the first exec (error diagnostic, message), recovery,
    // then failed handshakes on the session a restart forces open
    // (retries, disconnected status), then recovery.
    sim.faults().deny("create", "pods/exec");
    let file = write_file(workspace.path(), "src/a.txt", "one\n");
    server.save(&file).await;
    server.wait_for_diagnostics(&file, |d| !d.is_empty()).await;
    sim.faults().clear();
    write_file(workspace.path(), "src/a.txt", "two\n");
    server.save(&file).await;
    server
        .wait_for_status(|s| settled(s) && s["health"] == "ok")
        .await;
    sim.restart_container("default", "api-1", "app")
        .await
        .unwrap();
    sim.faults().fail_next_exec_handshakes(2, 500);
    let other = write_file(workspace.path(), "src/b.txt", "b\n");
    server.save(&other).await;
    server
        .wait_for_status(|s| s["state"] == "disconnected")
        .await;
    server
        .wait_for_status(|s| settled(s) && s["health"] == "ok")
        .await;
    server.execute_command("podloop.syncAll").await;
    let status = server.execute_command("podloop.status").await;
    assert_eq!(
        sim.read_file("default", "api-1", "app", "/app/a.txt")
            .unwrap(),
        b"two\n"
    );

    let captured = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    let lines = captured.lines().count();
    assert!(
        lines > 50 && captured.contains("podloop"),
        "the log capture did not work ({lines} lines)"
    );
    // Search a prefix too: a truncated token in a debug dump is still a leak.
    let prefix = &token[..12];
    for (n, line) in captured.lines().enumerate() {
        assert!(
            !line.contains(prefix),
            "log line {n} holds the token: {line}"
        );
    }
    let mut messages: Vec<Value> = METHODS
        .iter()
        .flat_map(|m| server.notifications(m))
        .collect();
    messages.push(status);
    assert!(messages.len() > 5);
    for message in &messages {
        let text = message.to_string();
        assert!(!text.contains(prefix), "a message holds the token: {text}");
    }
    println!(
        "searched {lines} log lines and {} messages for the token",
        messages.len()
    );
}
