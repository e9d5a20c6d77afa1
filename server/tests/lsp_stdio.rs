//! The real `podloop lsp` binary over stdio: how it starts, what it writes
//! where, and how it ends.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

fn spawn_server(workspace: &std::path::Path, kubeconfig: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_podloop"))
        .args(["lsp", "--stdio"])
        .env("KUBECONFIG", kubeconfig)
        .env("PODLOOP_LOG", "debug")
        .current_dir(workspace)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("podloop binary")
}

fn send(stdin: &mut impl Write, message: Value) {
    let body = message.to_string();
    write!(stdin, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    stdin.flush().unwrap();
}

fn read_message(stdout: &mut BufReader<ChildStdout>) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let (name, value) = line.split_once(':')?;
        assert_eq!(
            name, "Content-Length",
            "stdout carries something other than the protocol: {line:?}"
        );
        length = value.trim().parse().ok();
    }
    let mut body = vec![0; length?];
    stdout.read_exact(&mut body).ok()?;
    Some(serde_json::from_slice(&body).expect("stdout carries only JSON-RPC"))
}

fn initialize(stdin: &mut impl Write, stdout: &mut BufReader<ChildStdout>, root: &std::path::Path) {
    let uri = url::Url::from_file_path(root).unwrap().to_string();
    send(
        stdin,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "processId": null, "rootUri": uri, "capabilities": {},
            "workspaceFolders": [{"uri": uri, "name": "ws"}],
            "initializationOptions": {"logLevel": "debug"}
        }}),
    );
    loop {
        let message = read_message(stdout).expect("no initialize response");
        if message["id"] == 1 {
            assert!(message["result"]["capabilities"].is_object(), "{message}");
            break;
        }
    }
    send(
        stdin,
        json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}),
    );
}

/// Keeps reading stdout on another thread, so the server never blocks on a
/// full pipe while the test waits for it to exit.
fn drain(mut stdout: BufReader<ChildStdout>) {
    std::thread::spawn(move || while read_message(&mut stdout).is_some() {});
}

/// Waits for the process to end, polling so a hang fails the test.
fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > DEADLINE {
            child.kill().unwrap();
            panic!("podloop lsp did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn workspace() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    // A kubeconfig that points nowhere: these tests are about the process,
    // not the cluster.
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: none\nclusters:\n- name: none\n  cluster:\n    server: https://127.0.0.1:9\ncontexts:\n- name: none\n  context:\n    cluster: none\n    user: none\nusers:\n- name: none\n  user:\n    token: x\n",
    )
    .unwrap();
    (dir, kubeconfig)
}

#[test]
fn closing_stdin_without_shutdown_exits_cleanly() {
    let (dir, kubeconfig) = workspace();
    let mut child = spawn_server(dir.path(), &kubeconfig);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    initialize(&mut stdin, &mut stdout, dir.path());
    drop(stdin);
    drain(stdout);
    let status = wait_for_exit(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("initialize"),
        "the log goes to stderr: {stderr}"
    );
}

#[test]
fn shutdown_then_exit_ends_with_code_zero_and_exit_alone_with_one() {
    let (dir, kubeconfig) = workspace();

    let mut child = spawn_server(dir.path(), &kubeconfig);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    initialize(&mut stdin, &mut stdout, dir.path());
    send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown"}),
    );
    loop {
        let message = read_message(&mut stdout).expect("no shutdown response");
        if message["id"] == 2 {
            assert!(message.get("error").is_none(), "{message}");
            break;
        }
    }
    send(&mut stdin, json!({"jsonrpc": "2.0", "method": "exit"}));
    // stdin stays open: `exit` alone must end the process.
    let status = wait_for_exit(&mut child);
    assert_eq!(status.code(), Some(0));
    drop(stdin);

    let mut child = spawn_server(dir.path(), &kubeconfig);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    initialize(&mut stdin, &mut stdout, dir.path());
    send(&mut stdin, json!({"jsonrpc": "2.0", "method": "exit"}));
    let status = wait_for_exit(&mut child);
    assert_eq!(status.code(), Some(1), "exit without shutdown is an error");
}

#[test]
fn a_missing_kubeconfig_is_reported_to_the_user_not_a_crash() {
    let (dir, _) = workspace();
    let mut child = spawn_server(dir.path(), &dir.path().join("no-such-kubeconfig"));
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    initialize(&mut stdin, &mut stdout, dir.path());
    let message = loop {
        let message = read_message(&mut stdout).expect("no showMessage");
        if message["method"] == "window/showMessage" {
            break message;
        }
    };
    assert_eq!(message["params"]["type"], 1);
    let text = message["params"]["message"].as_str().unwrap();
    assert!(text.contains("kubeconfig"), "{text}");
    drop(stdin);
    drain(stdout);
    assert_eq!(wait_for_exit(&mut child).code(), Some(0));
}
