//! The scripted editor of `podloop demo` and `podloop bench`: a minimal LSP client that drives the real
//! `podloop lsp` binary over stdio, exactly as VS Code or Neovim would.
//!
//! It lives outside `lsp/` on purpose: it is a client of the server, and
//! touches it only through the protocol bytes on the child's pipes.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot};

type Pending = Arc<Mutex<HashMap<i64, oneshot::Sender<Value>>>>;

pub struct LspClient {
    child: Child,
    outgoing: mpsc::UnboundedSender<Value>,
    notifications: mpsc::UnboundedReceiver<Value>,
    pending: Pending,
    next_id: i64,
}

impl LspClient {
    /// Starts `podloop lsp --stdio` (this same executable), with the server's
    /// log in `log_file`.
    pub fn spawn(workspace: &Path, kubeconfig: &Path, log_file: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding the podloop executable")?;
        let log = std::fs::File::create(log_file)
            .with_context(|| format!("creating the server log {}", log_file.display()))?;
        let mut child = Command::new(exe)
            .args(["lsp", "--stdio"])
            .env("KUBECONFIG", kubeconfig)
            .current_dir(workspace)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting `podloop lsp`")?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (outgoing, to_write) = mpsc::unbounded_channel();
        let (notify, notifications) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        tokio::spawn(write_messages(stdin, to_write));
        tokio::spawn(read_messages(
            BufReader::new(stdout),
            pending.clone(),
            notify,
            outgoing.clone(),
        ));
        Ok(LspClient {
            child,
            outgoing,
            notifications,
            pending,
            next_id: 1,
        })
    }

    /// Forgets the notifications received so far.
    pub fn drain(&mut self) {
        while self.notifications.try_recv().is_ok() {}
    }

    /// The server's process id (for its memory in /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub fn notify(&self, method: &str, params: Value) -> anyhow::Result<()> {
        self.outgoing
            .send(json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .map_err(|_| anyhow!("the language server's stdin is closed"))
    }

    pub async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let (reply, answer) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, reply);
        self.outgoing
            .send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .map_err(|_| anyhow!("the language server's stdin is closed"))?;
        let response = answer
            .await
            .map_err(|_| anyhow!("the language server exited before answering `{method}`"))?;
        if let Some(error) = response.get("error") {
            bail!("`{method}` failed: {error}");
        }
        Ok(response["result"].clone())
    }

    /// `client` names the caller ("demo", "bench") in the server's log.
    pub async fn initialize(&mut self, root: &Path, client: &str) -> anyhow::Result<()> {
        let uri = file_uri(root)?;
        self.request(
            "initialize",
            json!({
                "processId": std::process::id(),
                "clientInfo": {"name": format!("podloop {client}")},
                "rootUri": uri,
                "workspaceFolders": [{"uri": uri, "name": client}],
                // Like VS Code: the client watches files, so the server
                // does not start its own watcher and the save is what syncs.
                "capabilities": {
                    "workspace": {"didChangeWatchedFiles": {"dynamicRegistration": true}},
                    "window": {"workDoneProgress": false}
                },
                "initializationOptions": {"logLevel": "info"}
            }),
        )
        .await?;
        self.notify("initialized", json!({}))
    }

    /// Waits for a `podloop/status` for which `accept` holds; returns it.
    pub async fn wait_for_status(
        &mut self,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.notifications.recv()).await;
            match next {
                Err(_) => {
                    bail!("timed out after {timeout:?} waiting for {what}; last status: {last}")
                }
                Ok(None) => bail!("the language server exited while waiting for {what}"),
                Ok(Some(message)) => {
                    if message["method"] == "podloop/status" {
                        last = message["params"].clone();
                        if accept(&last) {
                            return Ok(last);
                        }
                    }
                }
            }
        }
    }

    /// `shutdown` then `exit`, and wait for the process to end.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let polite = async {
            self.request("shutdown", Value::Null).await?;
            self.notify("exit", Value::Null)?;
            anyhow::Ok(())
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), polite).await;
        match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(status) => {
                status.context("waiting for the language server")?;
            }
            Err(_) => {
                self.child.start_kill()?;
                self.child.wait().await?;
            }
        }
        Ok(())
    }
}

pub fn file_uri(path: &Path) -> anyhow::Result<String> {
    url::Url::from_file_path(path)
        .map(|u| u.to_string())
        .map_err(|()| anyhow!("{} is not an absolute path", path.display()))
}

async fn write_messages(mut stdin: ChildStdin, mut messages: mpsc::UnboundedReceiver<Value>) {
    while let Some(message) = messages.recv().await {
        let body = message.to_string();
        let frame = format!("Content-Length: {}\r\n\r\n{body}", body.len());
        if stdin.write_all(frame.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
            return;
        }
    }
}

async fn read_message(stdout: &mut BufReader<ChildStdout>) -> Option<Value> {
    let mut length = None;
    loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok();
            }
        }
    }
    let mut body = vec![0; length?];
    stdout.read_exact(&mut body).await.ok()?;
    serde_json::from_slice(&body).ok()
}

async fn read_messages(
    mut stdout: BufReader<ChildStdout>,
    pending: Pending,
    notifications: mpsc::UnboundedSender<Value>,
    outgoing: mpsc::UnboundedSender<Value>,
) {
    while let Some(message) = read_message(&mut stdout).await {
        let id = message.get("id").cloned();
        let is_request = message.get("method").is_some();
        match (id, is_request) {
            // A request from the server (registerCapability, ...): an editor
            // accepts them; so does this client.
            (Some(id), true) => {
                let _ = outgoing.send(json!({"jsonrpc": "2.0", "id": id, "result": null}));
            }
            (Some(id), false) => {
                let waiter = id
                    .as_i64()
                    .and_then(|id| pending.lock().unwrap().remove(&id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(message);
                }
            }
            (None, _) => {
                let _ = notifications.send(message);
            }
        }
    }
}
