//! `pods/exec` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`), framed as the kubelet
//! frames it: every binary message starts with its channel byte.
use std::os::fd::RawFd;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::faults::CutMode;
use crate::http::{forbidden, full, pod_not_found, status_error, Body, Query};
use crate::runtime;
use crate::server::ConnInfo;
use crate::sim::{exit_code_of, ExecRecord, Inner};
use crate::template::Image;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE: u8 = 255;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

pub fn success_status() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return success_status();
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

struct Target {
    container: String,
    host_pid: u32,
    image: Image,
}

fn find_target(
    inner: &Inner,
    namespace: &str,
    name: &str,
    requested: Option<&str>,
) -> Result<Target, Response<Body>> {
    let state = inner.state.lock().unwrap();
    let Some(pod) = state.pods.get(&(namespace.to_string(), name.to_string())) else {
        return Err(pod_not_found(name));
    };
    let container = match requested.filter(|c| !c.is_empty()) {
        Some(c) => pod.container(c).ok_or_else(|| {
            status_error(400, &format!("container {c} is not valid for pod {name}"))
        })?,
        None if pod.containers.len() == 1 => &pod.containers[0],
        None => {
            let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(status_error(
                400,
                &format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                ),
            ));
        }
    };
    if pod.deletion.is_some() && container.host_pid.is_none() {
        return Err(status_error(
            400,
            &format!(
                "cannot exec into a container in a completed pod; current phase is {}",
                "Succeeded"
            ),
        ));
    }
    let Some(host_pid) = container.host_pid else {
        return Err(status_error(
            500,
            &format!(
                "unable to upgrade connection: container not found (\"{}\")",
                container.name
            ),
        ));
    };
    Ok(Target {
        container: container.name.clone(),
        host_pid,
        image: container.image,
    })
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

fn offered_protocols(req: &Request<Incoming>) -> Vec<String> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .flat_map(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .map(|p| p.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub(crate) async fn exec(
    inner: Arc<Inner>,
    conn: ConnInfo,
    namespace: String,
    name: String,
    query: Query,
    req: Request<Incoming>,
) -> Response<Body> {
    if inner.faults.is_denied("create", "pods/exec") || inner.faults.is_denied("get", "pods/exec") {
        return forbidden("create", "pods/exec", Some(&name), Some(&namespace));
    }
    let command = query.all("command");
    if command.is_empty() {
        return status_error(400, "you must specify at least 1 command");
    }
    let target = match find_target(&inner, &namespace, &name, query.get("container")) {
        Ok(t) => t,
        Err(r) => return r,
    };
    if let Some(code) = inner.faults.take_handshake_failure() {
        return status_error(
            code,
            &format!("kubesim: exec handshake failed with {code} (fault injected)"),
        );
    }
    if header_has_token(&req, header::UPGRADE, "SPDY/3.1") {
        return status_error(
            400,
            "kubesim serves exec over WebSocket only (v5.channel.k8s.io, v4.channel.k8s.io), not SPDY: use kubectl 1.30 or newer, or KUBECTL_REMOTE_COMMAND_WEBSOCKETS=true",
        );
    }
    if !header_has_token(&req, header::UPGRADE, "websocket") {
        return status_error(400, "exec needs an upgrade to WebSocket (Upgrade: websocket) with subprotocol v5.channel.k8s.io or v4.channel.k8s.io");
    }
    let offered = offered_protocols(&req);
    let protocol = if offered.iter().any(|p| p == V5) {
        V5
    } else if offered.iter().any(|p| p == V4) {
        V4
    } else {
        return status_error(
            400,
            &format!("kubesim speaks exec subprotocols v5.channel.k8s.io and v4.channel.k8s.io; the client offered [{}]", offered.join(", ")),
        );
    };
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return status_error(400, "WebSocket upgrade without Sec-WebSocket-Key");
    };
    let stdin = query.flag("stdin");
    let stdout = query.flag("stdout");
    let stderr = query.flag("stderr") && !query.flag("tty");
    let record_index = {
        let mut log = inner.exec_log.lock().unwrap();
        log.push(ExecRecord {
            namespace: namespace.clone(),
            pod: name.clone(),
            container: target.container.clone(),
            command: command.clone(),
            protocol: protocol.to_string(),
            stdin_bytes: 0,
            exit_code: None,
        });
        log.len() - 1
    };
    let cut = inner.faults.take_cut();
    let upgrade = hyper::upgrade::on(req);
    let session_inner = inner.clone();
    let handle = tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::warn!("exec upgrade failed: {e}");
                return;
            }
        };
        // tungstenite zeroes its whole read buffer before every read; at the
        // default 128 KiB that was the simulation's largest cost per small
        // exec frame.
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        // The process starts once the client holds the upgraded connection,
        // as behind a real API server (which reaches the kubelet only then):
        // client-go registers its streams after the upgrade and drops frames
        // that arrive first, so a command that ended before the 101 was read
        // lost kubectl its exit code (`kubectl cp` then took a missing
        // folder for one).
        let child = match runtime::spawn_exec(
            target.host_pid,
            target.image,
            &command,
            stdin,
            stdout,
            stderr,
        ) {
            Ok(child) => child,
            Err(e) => {
                let failure = json!({
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("starting the exec in container {}: {e}", target.container),
                    "reason": "InternalError",
                });
                let body = serde_json::to_vec(&failure).unwrap_or_default();
                let _ = ws.send(framed(STATUS, &body)).await;
                let _ = ws.close(None).await;
                return;
            }
        };
        run_session(
            session_inner,
            ws,
            child,
            command,
            protocol,
            record_index,
            cut,
            conn.fd,
        )
        .await;
    });
    inner.track_task(handle.abort_handle());
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .header(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(protocol),
        )
        .body(full(Bytes::new()))
        .expect("static response parts are valid")
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(Bytes::from(v))
}

async fn pump(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    channel: u8,
    out: mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                // The client may be gone; keep draining so the process never blocks on a full pipe.
                let _ = out.send(framed(channel, &buf[..n])).await;
            }
        }
    }
}

/// The next client message; pending forever once the connection was dropped on purpose.
async fn next_message<S>(incoming: &mut Option<S>) -> Option<<S as futures::Stream>::Item>
where
    S: futures::Stream + Unpin,
{
    match incoming {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// Makes the kernel answer the peer with RST when the socket closes: a dropped connection.
fn arm_reset(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on the connection's own fd, still open (the upgraded stream owns it).
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_session<S>(
    inner: Arc<Inner>,
    ws: WebSocketStream<S>,
    mut child: tokio::process::Child,
    command: Vec<String>,
    protocol: &'static str,
    record_index: usize,
    cut: Option<(u64, CutMode)>,
    fd: RawFd,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, incoming) = ws.split();
    let mut incoming = Some(incoming);
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() {
                // Keep receiving so the pumps never block on a gone client.
                while out_rx.recv().await.is_some() {}
                return;
            }
            if closing {
                let _ = sink.close().await;
                while out_rx.recv().await.is_some() {}
                return;
            }
        }
    });
    let mut stdin = child.stdin.take();
    let stdout_pump = child
        .stdout
        .take()
        .map(|r| tokio::spawn(pump(r, STDOUT, out_tx.clone())));
    let stderr_pump = child
        .stderr
        .take()
        .map(|r| tokio::spawn(pump(r, STDERR, out_tx.clone())));
    let pgid = child.id();
    let finished = async {
        let status = child.wait().await;
        if let Some(p) = stdout_pump {
            let _ = p.await;
        }
        if let Some(p) = stderr_pump {
            let _ = p.await;
        }
        status
    };
    tokio::pin!(finished);

    let mut stdin_bytes: u64 = 0;
    let mut client_gone = false;
    let status = loop {
        tokio::select! {
            status = &mut finished => break status,
            message = next_message(&mut incoming), if !client_gone => {
                let data = match message {
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        // The kubelet closes the process's stdin when the stream goes away.
                        client_gone = true;
                        stdin = None;
                        continue;
                    }
                    Some(Ok(_)) => continue,
                };
                let Some((&channel, payload)) = data.split_first() else { continue };
                match channel {
                    STDIN => {
                        let mut payload = payload;
                        let mut cutting = None;
                        if let Some((limit, mode)) = cut {
                            let allowed = limit.saturating_sub(stdin_bytes);
                            if payload.len() as u64 >= allowed {
                                payload = &payload[..allowed as usize];
                                cutting = Some(mode);
                            }
                        }
                        stdin_bytes += payload.len() as u64;
                        if let Some(w) = stdin.as_mut() {
                            if w.write_all(payload).await.is_err() {
                                stdin = None;
                            }
                        }
                        inner.exec_log.lock().unwrap()[record_index].stdin_bytes = stdin_bytes;
                        if let Some(mode) = cutting {
                            tracing::info!(?mode, stdin_bytes, "cutting exec connection (fault injected)");
                            match mode {
                                CutMode::TcpDrop => {
                                    arm_reset(fd);
                                    writer.abort();
                                    incoming = None;
                                }
                                CutMode::CleanClose => {
                                    let _ = out_tx
                                        .send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })))
                                        .await;
                                }
                            }
                            client_gone = true;
                            stdin = None;
                        }
                    }
                    CLOSE if protocol == V5 && payload.first() == Some(&STDIN) => {
                        if let Some(mut w) = stdin.take() {
                            let _ = w.shutdown().await;
                        }
                    }
                    _ => {}
                }
            }
        }
    };
    drop(stdin);
    drop(incoming);
    let exit_code = match &status {
        Ok(s) => exit_code_of(s),
        Err(_) => {
            if let Some(p) = pgid {
                runtime::kill_process_group(p, libc::SIGKILL);
            }
            -1
        }
    };
    inner.exec_log.lock().unwrap()[record_index].exit_code = Some(exit_code);
    if !client_gone {
        let body = serde_json::to_vec(&exit_status(&command, exit_code)).unwrap_or_default();
        let _ = out_tx.send(framed(STATUS, &body)).await;
        let _ = out_tx
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
    }
    drop(out_tx);
    let _ = writer.await;
}
