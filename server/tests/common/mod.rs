//! An in-process LSP client for podloop's language server: JSON-RPC over
//! `tokio::io::duplex` pipes, with helpers that wait on conditions (never on
//! the clock) for what the server sends back.
#![allow(dead_code)] // each test binary uses a different subset

pub mod fake_cluster;
pub mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubesim::Sim;
use podloop::convert::kube::{KubeCluster, KubeOptions};
use podloop::lsp::{EngineStarter, ServeOutcome, ServerOptions};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, WriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Generous: CI machines are slow, and every wait ends as soon as its
/// condition holds.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Everything the server sent, in arrival order.
#[derive(Default)]
struct Transcript {
    notifications: Vec<Value>,
    /// Server → client requests (registrations, progress creation).
    requests: Vec<Value>,
    responses: HashMap<i64, Value>,
}

pub struct TestServerBuilder {
    workspaces: Vec<PathBuf>,
    init_options: Option<Value>,
    capabilities: Value,
    start_engine: Option<EngineStarter>,
}

impl TestServerBuilder {
    pub fn workspace(mut self, dir: impl Into<PathBuf>) -> Self {
        self.workspaces.push(dir.into());
        self
    }

    pub fn init_options(mut self, options: Value) -> Self {
        self.init_options = Some(options);
        self
    }

    /// Replaces the client capabilities sent in `initialize`.
    pub fn capabilities(mut self, capabilities: Value) -> Self {
        self.capabilities = capabilities;
        self
    }

    pub fn engine(mut self, start_engine: EngineStarter) -> Self {
        self.start_engine = Some(start_engine);
        self
    }

    /// Starts the server, and completes `initialize` + `initialized`.
    pub async fn build(self) -> TestServer {
        let start_engine = self
            .start_engine
            .expect("TestServer needs an engine: call .engine(...)");
        let (client_side, server_side) = tokio::io::duplex(1 << 20);
        let (server_input, server_output) = tokio::io::split(server_side);
        let server = tokio::spawn(podloop::lsp::serve(
            server_input,
            server_output,
            ServerOptions {
                start_engine,
                set_log_level: None,
            },
        ));
        let (client_input, client_output) = tokio::io::split(client_side);
        let writer = Arc::new(tokio::sync::Mutex::new(Some(client_output)));
        let transcript = Arc::new(Mutex::new(Transcript::default()));
        let (changed, changes) = watch::channel(0u64);
        let reader = tokio::spawn(read_messages(
            client_input,
            writer.clone(),
            transcript.clone(),
            changed,
        ));
        let mut test_server = TestServer {
            initialize_result: Value::Null,
            writer,
            transcript,
            changes,
            next_id: AtomicI64::new(1),
            server: Some(server),
            reader,
            workspaces: self.workspaces.clone(),
        };
        let folders: Vec<Value> = self
            .workspaces
            .iter()
            .map(|dir| {
                json!({"uri": file_uri(dir), "name": dir.file_name().unwrap().to_string_lossy()})
            })
            .collect();
        let response = test_server
            .request(
                "initialize",
                json!({
                    "processId": null,
                    "rootUri": self.workspaces.first().map(|dir| file_uri(dir)),
                    "capabilities": self.capabilities,
                    "workspaceFolders": folders,
                    "initializationOptions": self.init_options,
                    "clientInfo": {"name": "podloop-test-server"},
                }),
            )
            .await;
        let Some(result) = response.get("result") else {
            panic!("initialize failed: {response}");
        };
        test_server.initialize_result = result.clone();
        test_server.notify("initialized", json!({})).await;
        test_server
    }
}

pub struct TestServer {
    writer: Arc<tokio::sync::Mutex<Option<WriteHalf<DuplexStream>>>>,
    transcript: Arc<Mutex<Transcript>>,
    changes: watch::Receiver<u64>,
    next_id: AtomicI64,
    server: Option<JoinHandle<ServeOutcome>>,
    reader: JoinHandle<()>,
    workspaces: Vec<PathBuf>,
    initialize_result: Value,
}

/// Starts the real engine over a kube cluster that talks to `sim`.
pub fn kube_starter(sim: &Sim) -> EngineStarter {
    let kubeconfig = sim.kubeconfig_path();
    Box::new(move |options| {
        Box::pin(async move {
            let cluster = KubeCluster::new(KubeOptions {
                kubeconfig: Some(kubeconfig),
                context: None,
            })
            .map_err(|error| error.to_string())?;
            Ok(podloop::engine::start(cluster, options))
        })
    })
}

/// What a typical editor advertises: progress, no file-watch registration
/// (so the server runs its own watcher, as with Neovim).
pub fn default_capabilities() -> Value {
    json!({
        "window": {"workDoneProgress": true},
        "workspace": {
            "workspaceFolders": true,
            "didChangeWatchedFiles": {"dynamicRegistration": false}
        },
        "textDocument": {"synchronization": {"didSave": true}}
    })
}

impl TestServer {
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            workspaces: Vec::new(),
            init_options: None,
            capabilities: default_capabilities(),
            start_engine: None,
        }
    }

    pub async fn request(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let what = format!("a response to {method} (id {id})");
        self.wait_for(&what, |transcript| transcript.responses.get(&id).cloned())
            .await
    }

    pub async fn notify(&self, method: &str, params: Value) {
        self.write(json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await;
    }

    async fn write(&self, message: Value) {
        let body = serde_json::to_vec(&message).unwrap();
        let mut writer = self.writer.lock().await;
        let writer = writer.as_mut().expect("the client side is already closed");
        write_frame(writer, &body).await;
    }

    /// `didOpen` (clients only save documents they opened) then `didSave`.
    pub async fn save(&self, path: &Path) {
        let uri = file_uri(path);
        let text = std::fs::read_to_string(path).unwrap_or_default();
        self.notify(
            "textDocument/didOpen",
            json!({"textDocument": {"uri": uri, "languageId": "plaintext", "version": 1, "text": text}}),
        )
        .await;
        self.notify(
            "textDocument/didSave",
            json!({"textDocument": {"uri": uri}}),
        )
        .await;
    }

    /// Saves without the `didOpen`, for bursts (the server does not care).
    pub async fn save_only(&self, path: &Path) {
        self.notify(
            "textDocument/didSave",
            json!({"textDocument": {"uri": file_uri(path)}}),
        )
        .await;
    }

    pub async fn execute_command(&self, command: &str) -> Value {
        let response = self
            .request(
                "workspace/executeCommand",
                json!({"command": command, "arguments": []}),
            )
            .await;
        match response.get("result") {
            Some(result) => result.clone(),
            None => panic!("{command} failed: {response}"),
        }
    }

    /// Waits until the latest `podloop/status` satisfies `accept`.
    pub async fn wait_for_status(&self, accept: impl Fn(&Value) -> bool) -> Value {
        self.wait_for("a podloop/status that matches", |transcript| {
            latest(&transcript.notifications, "podloop/status")
                .filter(|status| accept(status))
                .cloned()
        })
        .await
    }

    pub fn statuses(&self) -> Vec<Value> {
        self.notifications("podloop/status")
    }

    pub fn notifications(&self, method: &str) -> Vec<Value> {
        let transcript = self.transcript.lock().unwrap();
        transcript
            .notifications
            .iter()
            .filter(|message| message["method"] == method)
            .map(|message| message["params"].clone())
            .collect()
    }

    pub fn server_requests(&self, method: &str) -> Vec<Value> {
        let transcript = self.transcript.lock().unwrap();
        transcript
            .requests
            .iter()
            .filter(|message| message["method"] == method)
            .map(|message| message["params"].clone())
            .collect()
    }

    /// The latest diagnostics published for `path` (empty when none yet).
    pub fn diagnostics_for(&self, path: &Path) -> Vec<Value> {
        let transcript = self.transcript.lock().unwrap();
        latest_diagnostics(&transcript.notifications, path).unwrap_or_default()
    }

    /// Waits until the diagnostics published for `path` satisfy `accept`.
    pub async fn wait_for_diagnostics(
        &self,
        path: &Path,
        accept: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let what = format!("diagnostics for {} that match", path.display());
        self.wait_for(&what, |transcript| {
            latest_diagnostics(&transcript.notifications, path).filter(|found| accept(found))
        })
        .await
    }

    /// Waits until some notification of `method` satisfies `accept`.
    pub async fn wait_for_notification(
        &self,
        method: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        let what = format!("a {method} notification that matches");
        self.wait_for(&what, |transcript| {
            transcript
                .notifications
                .iter()
                .filter(|message| message["method"] == method)
                .map(|message| &message["params"])
                .find(|params| accept(params))
                .cloned()
        })
        .await
    }

    async fn wait_for<T>(&self, what: &str, mut found: impl FnMut(&Transcript) -> Option<T>) -> T {
        let mut changes = self.changes.clone();
        let waiting = async {
            loop {
                if let Some(value) = found(&self.transcript.lock().unwrap()) {
                    return value;
                }
                if changes.changed().await.is_err() {
                    // The server hung up: one last look, then give up.
                    if let Some(value) = found(&self.transcript.lock().unwrap()) {
                        return value;
                    }
                    panic!("the server closed its output before sending {what}");
                }
            }
        };
        match tokio::time::timeout(DEADLINE, waiting).await {
            Ok(value) => value,
            Err(_) => panic!(
                "no {what} within {DEADLINE:?}; last status: {}",
                self.statuses()
                    .last()
                    .map(Value::to_string)
                    .unwrap_or_else(|| "none".into())
            ),
        }
    }

    /// `shutdown` + `exit`, then waits for the server task to end.
    pub async fn shutdown(mut self) -> ServeOutcome {
        let response = self.request("shutdown", Value::Null).await;
        assert!(
            response.get("error").is_none(),
            "shutdown failed: {response}"
        );
        self.notify("exit", Value::Null).await;
        self.join().await
    }

    /// Closes the client → server pipe without `shutdown`/`exit`.
    pub async fn close_input(mut self) -> ServeOutcome {
        if let Some(mut writer) = self.writer.lock().await.take() {
            writer.shutdown().await.unwrap();
        }
        self.join().await
    }

    async fn join(&mut self) -> ServeOutcome {
        let server = self.server.take().expect("joined twice");
        tokio::time::timeout(DEADLINE, server)
            .await
            .expect("the server did not stop")
            .expect("the server task panicked")
    }

    /// Polls `found` until it returns `Some`, for state outside the
    /// protocol (a fake cluster, a pod's file system) that sends no event.
    pub async fn eventually<T>(&self, what: &str, mut found: impl FnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(value) = found() {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} did not happen within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn initialize_result(&self) -> &Value {
        &self.initialize_result
    }

    pub fn workspace(&self) -> &Path {
        &self.workspaces[0]
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn latest<'a>(notifications: &'a [Value], method: &str) -> Option<&'a Value> {
    notifications
        .iter()
        .rev()
        .find(|message| message["method"] == method)
        .map(|message| &message["params"])
}

fn latest_diagnostics(notifications: &[Value], path: &Path) -> Option<Vec<Value>> {
    let uri = file_uri(path);
    notifications
        .iter()
        .rev()
        .filter(|message| message["method"] == "textDocument/publishDiagnostics")
        .find(|message| message["params"]["uri"] == uri)
        .map(|message| {
            message["params"]["diagnostics"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
}

pub fn file_uri(path: &Path) -> String {
    url::Url::from_file_path(path)
        .expect("absolute path")
        .to_string()
}

async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(writer: &mut W, body: &[u8]) {
    let header = format!("Content-Length: {}\r\n\r\n", body.len());
    writer.write_all(header.as_bytes()).await.unwrap();
    writer.write_all(body).await.unwrap();
    writer.flush().await.unwrap();
}

async fn read_messages(
    input: tokio::io::ReadHalf<DuplexStream>,
    writer: Arc<tokio::sync::Mutex<Option<WriteHalf<DuplexStream>>>>,
    transcript: Arc<Mutex<Transcript>>,
    changed: watch::Sender<u64>,
) {
    let mut input = BufReader::new(input);
    while let Some(message) = read_frame(&mut input).await {
        let is_request = message.get("method").is_some() && message.get("id").is_some();
        if is_request {
            // Accept every registration and progress token, as editors do.
            let reply = json!({"jsonrpc": "2.0", "id": message["id"], "result": null});
            if let Some(writer) = writer.lock().await.as_mut() {
                write_frame(writer, &serde_json::to_vec(&reply).unwrap()).await;
            }
        }
        {
            let mut transcript = transcript.lock().unwrap();
            if is_request {
                transcript.requests.push(message);
            } else if message.get("method").is_some() {
                transcript.notifications.push(message);
            } else if let Some(id) = message["id"].as_i64() {
                transcript.responses.insert(id, message);
            }
        }
        changed.send_modify(|version| *version += 1);
    }
}

async fn read_frame<R: tokio::io::AsyncBufRead + Unpin>(input: &mut R) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if input.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(value) = line.strip_prefix("Content-Length:") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let mut body = vec![0; length?];
    input.read_exact(&mut body).await.ok()?;
    serde_json::from_slice(&body).ok()
}

/// Writes `relative` under `root` (creating folders) and returns its path.
pub fn write_file(root: &Path, relative: &str, content: &str) -> PathBuf {
    let path = root.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, content).unwrap();
    path
}
