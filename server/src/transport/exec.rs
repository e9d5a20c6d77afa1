//! One exec over the Kubernetes WebSocket protocol (v5, else v4), driven by
//! podloop itself rather than `AttachedProcess`: we need to know whether the
//! protocol can half-close stdin (v4 cannot: closing it closes the socket and
//! loses the status), to send large stdin frames, to drain stdout and stderr
//! on a task of their own so the container never stalls on a full pipe, and
//! to abort without ever signalling a clean end of stdin.

use bytes::Bytes;
use std::pin::Pin;

use futures::{Sink, SinkExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::AttachParams;
use kube::Resource;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::client::ContextClient;
use super::error::TransportError;

type WsError = tokio_tungstenite::tungstenite::Error;
type FrameSink = Pin<Box<dyn Sink<Message, Error = WsError> + Send>>;
type FrameStream = Pin<Box<dyn Stream<Item = Result<Message, WsError>> + Send>>;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE: u8 = 255;

/// Stdin is sent in frames of this size: large enough that a 200 MB file is
/// a few thousand frames, small enough to keep memory flat.
const FRAME: usize = 64 * 1024;

/// How much of stderr is kept (the tail is what reports show).
const STDERR_TAIL: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

/// How the command ended, from the status frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    /// The command did not run (e.g. the executable was not found).
    Failure {
        reason: String,
        message: String,
    },
}

#[derive(Debug)]
pub enum ExecEvent {
    Stdout(Bytes),
    Stderr(Bytes),
    Status(ExitStatus),
    /// The connection ended without a status frame.
    Ended(String),
}

#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr_tail: Vec<u8>,
}

pub struct Exec {
    target: ContainerRef,
    sink: FrameSink,
    events: mpsc::UnboundedReceiver<ExecEvent>,
    reader: JoinHandle<()>,
    can_close_stdin: bool,
    frame: Vec<u8>,
    stdin_bytes: u64,
}

impl Drop for Exec {
    fn drop(&mut self) {
        // Without this the reader task would keep the socket half alive.
        self.reader.abort();
    }
}

impl Exec {
    pub async fn open(
        client: &ContextClient,
        target: &ContainerRef,
        argv: Vec<String>,
    ) -> Result<Exec, TransportError> {
        let params = AttachParams::default()
            .container(target.container.clone())
            .stdin(true)
            .stdout(true)
            .stderr(true);
        let mut request = kube::core::Request::new(Pod::url_path(&(), Some(&target.namespace)))
            .exec(&target.pod, argv, &params)
            .map_err(|e| TransportError::ExecFailed {
                pod: target.pod.clone(),
                container: target.container.clone(),
                detail: format!("cannot build the exec request: {e}"),
            })?;
        request.extensions_mut().insert("exec");
        let connection = client.client.connect(request).await.map_err(|e| {
            client.map_error(e, "create", "pods/exec", &target.namespace, Some(target))
        })?;
        let can_close_stdin = connection.supports_stream_close();
        let (sink, stream) = connection.into_stream().split();
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_frames(Box::pin(stream), tx));
        let sink: FrameSink = Box::pin(sink);
        Ok(Exec {
            target: target.clone(),
            sink,
            events,
            reader,
            can_close_stdin,
            frame: Vec::new(),
            stdin_bytes: 0,
        })
    }

    pub fn target(&self) -> &ContainerRef {
        &self.target
    }

    /// False once the connection ended or the command exited.
    pub fn is_alive(&self) -> bool {
        !self.reader.is_finished()
    }

    pub fn stdin_bytes(&self) -> u64 {
        self.stdin_bytes
    }

    /// Queue bytes for stdin; full frames are sent as they fill up.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), TransportError> {
        while !data.is_empty() {
            if self.frame.is_empty() {
                // Sized to what is written, not to a whole frame: freeing a
                // 64 KiB buffer after every small save made glibc
                // consolidate its free lists each time.
                self.frame.reserve_exact(1 + data.len().min(FRAME));
                self.frame.push(STDIN);
            }
            let room = FRAME + 1 - self.frame.len();
            let n = room.min(data.len());
            self.frame.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.frame.len() == FRAME + 1 {
                self.send_frame().await?;
            }
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), TransportError> {
        if self.frame.len() > 1 {
            self.send_frame().await?;
        }
        Ok(())
    }

    async fn send_frame(&mut self) -> Result<(), TransportError> {
        let frame = std::mem::take(&mut self.frame);
        let len = frame.len() as u64 - 1;
        self.sink
            .send(Message::Binary(Bytes::from(frame)))
            .await
            .map_err(|e| self.cut(format!("sending stdin failed: {e}")))?;
        self.stdin_bytes += len;
        Ok(())
    }

    fn cut(&self, detail: String) -> TransportError {
        TransportError::StreamCut {
            pod: self.target.pod.clone(),
            detail,
        }
    }

    /// The next thing the container said; `None` once the status arrived.
    pub async fn next_event(&mut self) -> Option<ExecEvent> {
        self.events.recv().await
    }

    /// Send what is buffered, close stdin where the protocol allows it (the
    /// payload is complete, so EOF is the truth), and collect the output
    /// until the status frame. No status frame is an error, never success.
    pub async fn finish(mut self) -> Result<ExecOutput, TransportError> {
        self.flush().await?;
        if self.can_close_stdin {
            self.sink
                .send(Message::Binary(Bytes::from_static(&[CLOSE, STDIN])))
                .await
                .map_err(|e| self.cut(format!("closing stdin failed: {e}")))?;
        }
        let mut stdout = Vec::new();
        let mut stderr_tail = Vec::new();
        loop {
            match self.events.recv().await {
                Some(ExecEvent::Stdout(b)) => stdout.extend_from_slice(&b),
                Some(ExecEvent::Stderr(b)) => {
                    stderr_tail.extend_from_slice(&b);
                    if stderr_tail.len() > 2 * STDERR_TAIL {
                        stderr_tail.drain(..stderr_tail.len() - STDERR_TAIL);
                    }
                }
                Some(ExecEvent::Status(status)) => {
                    if stderr_tail.len() > STDERR_TAIL {
                        stderr_tail.drain(..stderr_tail.len() - STDERR_TAIL);
                    }
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_millis(200),
                        self.sink.close(),
                    )
                    .await;
                    return Ok(ExecOutput {
                        status,
                        stdout,
                        stderr_tail,
                    });
                }
                Some(ExecEvent::Ended(detail)) => return Err(self.cut(detail)),
                None => return Err(self.cut("the reader stopped".into())),
            }
        }
    }

    /// After a failed write: the container may have stopped reading because
    /// the command ended early (a missing tool, an unwritable folder). Its
    /// status and output, if they arrive within `wait`, explain the failure
    /// better than "broken pipe".
    pub async fn output_after_failure(mut self, wait: std::time::Duration) -> Option<ExecOutput> {
        let mut stdout = Vec::new();
        let mut stderr_tail = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(ExecEvent::Stdout(b))) => stdout.extend_from_slice(&b),
                Ok(Some(ExecEvent::Stderr(b))) => {
                    stderr_tail.extend_from_slice(&b);
                    if stderr_tail.len() > STDERR_TAIL {
                        stderr_tail.drain(..stderr_tail.len() - STDERR_TAIL);
                    }
                }
                Ok(Some(ExecEvent::Status(status))) => {
                    return Some(ExecOutput {
                        status,
                        stdout,
                        stderr_tail,
                    })
                }
                _ => {
                    self.abort();
                    return None;
                }
            }
        }
    }

    /// Drop the connection without ending stdin: the container sees a broken
    /// stream, never a clean end of a truncated payload.
    pub fn abort(self) {
        self.reader.abort();
        drop(self);
    }
}

async fn read_frames(mut stream: FrameStream, tx: mpsc::UnboundedSender<ExecEvent>) {
    loop {
        let event = match stream.next().await {
            Some(Ok(Message::Binary(bin))) if bin.len() > 1 => {
                let payload = bin.slice(1..);
                match bin[0] {
                    STDOUT => ExecEvent::Stdout(payload),
                    STDERR => ExecEvent::Stderr(payload),
                    STATUS => {
                        let status = parse_status(&payload);
                        let _ = tx.send(ExecEvent::Status(status));
                        return;
                    }
                    _ => continue,
                }
            }
            Some(Ok(Message::Close(frame))) => ExecEvent::Ended(match frame {
                Some(f) if !f.reason.is_empty() => format!("closed by the server: {}", f.reason),
                _ => "closed by the server without a status".into(),
            }),
            Some(Ok(_)) => continue,
            Some(Err(e)) => ExecEvent::Ended(format!("connection error: {e}")),
            None => ExecEvent::Ended("connection closed without a status".into()),
        };
        let ended = matches!(event, ExecEvent::Ended(_));
        if tx.send(event).is_err() || ended {
            return;
        }
    }
}

fn parse_status(payload: &[u8]) -> ExitStatus {
    let status: Status = match serde_json::from_slice(payload) {
        Ok(s) => s,
        Err(e) => {
            return ExitStatus::Failure {
                reason: "BadStatus".into(),
                message: format!("unreadable status frame: {e}"),
            }
        }
    };
    if status.status.as_deref() == Some("Success") {
        return ExitStatus::Code(0);
    }
    let reason = status.reason.clone().unwrap_or_default();
    if reason == "NonZeroExitCode" {
        let code = status
            .details
            .as_ref()
            .and_then(|d| d.causes.as_ref())
            .and_then(|causes| {
                causes
                    .iter()
                    .find(|c| c.reason.as_deref() == Some("ExitCode"))
                    .and_then(|c| c.message.as_deref())
                    .and_then(|m| m.trim().parse().ok())
            });
        if let Some(code) = code {
            return ExitStatus::Code(code);
        }
    }
    ExitStatus::Failure {
        reason,
        message: status.message.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_frames_map_to_exit_codes() {
        assert_eq!(
            parse_status(br#"{"metadata":{},"status":"Success"}"#),
            ExitStatus::Code(0)
        );
        let failed = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh], exit code 127","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"127"}]}}"#;
        assert_eq!(parse_status(failed), ExitStatus::Code(127));
        let internal = br#"{"status":"Failure","message":"exec: \"sh\": executable file not found in $PATH","reason":"InternalError"}"#;
        assert!(matches!(
            parse_status(internal),
            ExitStatus::Failure { ref reason, .. } if reason == "InternalError"
        ));
    }
}
