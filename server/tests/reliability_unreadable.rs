//! A local file the server cannot read, for real: the `podloop lsp` binary
//! runs as `nobody` (uid/gid 65534, through util-linux `setpriv`) against
//! kubesim, so a mode-0000 file is unreadable to it (root reads any mode).
//! The unreadable file gets an error naming why; the readable one saved with
//! it lands; after `chmod 0644` and a save, it lands and the error clears.

mod reliability_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kubesim::{Image, Sim, SimOptions};
use reliability_common::{api_pod, API_CONFIG};
use serde_json::{json, Value};

const NOBODY: u32 = 65534;
const SETPRIV: &str = "/usr/bin/setpriv";
const DEADLINE: Duration = Duration::from_secs(60);
fn tools_or_skip() -> bool {
    if !kubesim::image::busybox_or_skip() {
        return false;
    }
    if Path::new(SETPRIV).is_file() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{SETPRIV} is missing: apt-get install -y util-linux"
    );
    eprintln!("skipped: {SETPRIV} is missing (apt-get install -y util-linux)");
    false
}

/// `podloop lsp --stdio` as uid/gid 65534, speaking JSON-RPC over its pipes.
struct Server {
    child: Child,
    stdin: Arc<Mutex<ChildStdin>>,
    incoming: mpsc::Receiver<Value>,
    next_id: i64,
    /// Every notification so far, in order.
    seen: Vec<Value>,
}

fn write_message(stdin: &Mutex<ChildStdin>, message: &Value) {
    let body = message.to_string();
    let mut stdin = stdin.lock().unwrap();
    // The server may be gone at the end of a test; the deadline catches a hang.
    let _ = write!(stdin, "Content-Length: {}\r\n\r\n{body}", body.len());
    let _ = stdin.flush();
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
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().ok();
        }
    }
    let mut body = vec![0; length?];
    stdout.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

impl Server {
    fn spawn(workspace: &Path, kubeconfig: &Path, home: &Path, log: std::fs::File) -> Server {
        let mut child = Command::new(SETPRIV)
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
                "--",
                env!("CARGO_BIN_EXE_podloop"),
                "lsp",
                "--stdio",
            ])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", home)
            .env("KUBECONFIG", kubeconfig)
            .env("PODLOOP_LOG", "debug")
            .current_dir(workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting podloop through setpriv");
        let stdin = Arc::new(Mutex::new(child.stdin.take().unwrap()));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, incoming) = mpsc::channel();
        let replies = stdin.clone();
        std::thread::spawn(move || {
            while let Some(message) = read_message(&mut stdout) {
                // A request from the server (registerCapability, progress):
                // an editor accepts it, and so does this one.
                if message.get("method").is_some() && message.get("id").is_some() {
                    let reply = json!({"jsonrpc": "2.0", "id": message["id"], "result": null});
                    write_message(&replies, &reply);
                    continue;
                }
                if tx.send(message).is_err() {
                    return;
                }
            }
        });
        Server {
            child,
            stdin,
            incoming,
            next_id: 1,
            seen: Vec::new(),
        }
    }

    fn notify(&self, method: &str, params: Value) {
        write_message(
            &self.stdin,
            &json!({"jsonrpc": "2.0", "method": method, "params": params}),
        );
    }

    fn next(&mut self, deadline: Instant, what: &str) -> Value {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.incoming.recv_timeout(left) {
            Ok(message) => message,
            Err(_) => panic!(
                "timed out waiting for {what}; notifications so far:\n{}",
                self.seen
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        write_message(
            &self.stdin,
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            let message = self.next(deadline, method);
            if message["id"] == id {
                assert!(message.get("error").is_none(), "{message}");
                return message["result"].clone();
            }
            self.seen.push(message);
        }
    }

    /// Waits for a notification `method` whose params satisfy `accept`.
    fn wait_for(&mut self, method: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let message = self.next(deadline, method);
            self.seen.push(message.clone());
            if message["method"] == method && accept(&message["params"]) {
                return message["params"].clone();
            }
        }
    }

    /// Waits until nothing is pending or in flight, asking the server after
    /// every message it sends (a status change always sends one).
    fn quiescent(&mut self) -> Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let status = self.request(
                "workspace/executeCommand",
                json!({"command": "podloop.status", "arguments": []}),
            );
            if status["quiescent"] == true {
                return status;
            }
            let message = self.next(deadline, "quiescence");
            self.seen.push(message);
        }
    }

    fn diagnostics(&mut self, file: &Path, accept: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let uri = uri(file);
        let params = self.wait_for("textDocument/publishDiagnostics", |p| {
            p["uri"] == uri.as_str() && p["diagnostics"].as_array().is_some_and(|d| accept(d))
        });
        params["diagnostics"].as_array().unwrap().clone()
    }

    fn save(&self, file: &Path) {
        self.notify(
            "textDocument/didSave",
            json!({"textDocument": {"uri": uri(file)}}),
        );
    }

    fn stop(mut self) {
        let _ = self.request("shutdown", Value::Null);
        self.notify("exit", Value::Null);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            // Polling a child's exit: std offers no wait with a timeout.
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("podloop did not exit after shutdown and exit");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn uri(path: &Path) -> String {
    url::Url::from_file_path(path).unwrap().to_string()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn is_unreadable_error(diagnostics: &[Value]) -> bool {
    diagnostics.iter().any(|d| {
        let m = d["message"].as_str().unwrap_or_default().to_lowercase();
        m.contains("cannot read") && m.contains("permission denied")
    })
}

// The LSP exchange blocks its thread; kubesim keeps the other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_the_server_cannot_read_is_reported_and_lands_once_readable() {
    if !tools_or_skip() {
        return;
    }
    let sim_dir = tempfile::tempdir().unwrap();
    let sim = Sim::start(SimOptions::new(sim_dir.path())).await.unwrap();
    sim.create_pod(api_pod(Image::Busybox)).await.unwrap();

    // Everything the server needs, readable by nobody; its home writable.
    let base = tempfile::tempdir().unwrap();
    chmod(base.path(), 0o755);
    let workspace = base.path().join("ws");
    let src = workspace.join("src");
    std::fs::create_dir_all(&src).unwrap();
    chmod(&workspace, 0o755);
    chmod(&src, 0o755);
    std::fs::write(workspace.join("podloop.toml"), API_CONFIG).unwrap();
    chmod(&workspace.join("podloop.toml"), 0o644);
    let kubeconfig = base.path().join("kubeconfig");
    std::fs::copy(sim.kubeconfig_path(), &kubeconfig).unwrap();
    chmod(&kubeconfig, 0o644);
    let home = base.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let log_path = base.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();

    let readable: PathBuf = src.join("readable.txt");
    let secret: PathBuf = src.join("secret.txt");
    std::fs::write(&readable, b"anyone may read this\n").unwrap();
    std::fs::write(&secret, b"only root reads this\n").unwrap();
    chmod(&readable, 0o644);
    chmod(&secret, 0o000);
    // The point of the test: the server's user really cannot read it.
    let probe = Command::new(SETPRIV)
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--",
            "/bin/cat",
        ])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(!probe.status.success(), "nobody could read a 0000 file");

    let mut server = Server::spawn(&workspace, &kubeconfig, &home, log);
    let root_uri = uri(&workspace);
    server.request(
        "initialize",
        json!({
            "processId": std::process::id(),
            "rootUri": root_uri,
            "workspaceFolders": [{"uri": root_uri, "name": "ws"}],
            "capabilities": {
                "workspace": {"didChangeWatchedFiles": {"dynamicRegistration": true}},
                "window": {"workDoneProgress": false}
            },
            "initializationOptions": {"logLevel": "debug"}
        }),
    );
    server.notify("initialized", json!({}));
    server.wait_for("podloop/status", |s| {
        s["targets"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["pod"] == "api-1"))
    });

    // Both saved together: the unreadable one is left out and reported, the
    // readable one still goes.
    server.save(&secret);
    server.save(&readable);
    let diagnostics = server.diagnostics(&secret, is_unreadable_error);
    eprintln!("diagnostic on secret.txt: {diagnostics:?}");
    assert_eq!(diagnostics[0]["severity"], 1, "an Error: {diagnostics:?}");
    // Not pending (nothing to retry until it changes), but not in the pod
    // either: the status bar says so.
    let status = server.quiescent();
    assert_eq!(status["health"], "warning", "{status}");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 file not synced")),
        "{status}"
    );
    assert_eq!(
        sim.read_file("default", "api-1", "app", "/app/readable.txt")
            .unwrap(),
        b"anyone may read this\n"
    );
    assert!(
        sim.read_file("default", "api-1", "app", "/app/secret.txt")
            .is_err(),
        "nothing of the unreadable file may reach the container"
    );

    chmod(&secret, 0o644);
    server.save(&secret);
    server.diagnostics(&secret, |d| d.is_empty());
    let status = server.quiescent();
    assert_eq!(status["health"], "ok", "{status}");
    assert_eq!(
        sim.read_file("default", "api-1", "app", "/app/secret.txt")
            .unwrap(),
        b"only root reads this\n"
    );
    server.stop();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(!log.contains("panicked"), "{log}");
}
