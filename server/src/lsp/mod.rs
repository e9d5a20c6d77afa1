//! The LSP layer: the only code that knows LSP types and JSON.
//!
//! `server` implements tower-lsp-server's `LanguageServer` by forwarding each
//! method to its module in `handlers`; `forward` carries the engine's
//! outputs back to the client; `ext` holds every podloop-specific method,
//! notification and command (documented in `docs/lsp-extensions.md`).

pub mod ext;
mod forward;
pub mod handlers;
mod logging;
pub mod progress;
pub mod server;
mod watchers;

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower_lsp_server::{LspService, Server};

pub use server::{EngineStarter, LogLevelSetter, PodloopServer, ServerOptions, Session};

use crate::convert::kube::{KubeCluster, KubeOptions};
use crate::engine::Input;

/// How long the engine gets to stop its background work once the client has
/// gone: enough to abort in-flight execs, short enough that an editor
/// closing is not held up.
const ENGINE_STOP_GRACE: Duration = Duration::from_secs(3);

/// How a served session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOutcome {
    pub shutdown_requested: bool,
    pub input_closed: bool,
}

impl ServeOutcome {
    /// The LSP spec's exit code: 1 for `exit` without `shutdown`. A client
    /// that just closes stdin (ALE does) gets a clean 0.
    pub fn exit_code(self) -> i32 {
        if self.shutdown_requested || self.input_closed {
            0
        } else {
            1
        }
    }
}

/// Serve one client over any byte streams (stdio in the binary, in-memory
/// pipes in tests) until `exit` or until `input` closes, then stop the
/// engine.
pub async fn serve<I, O>(input: I, output: O, options: ServerOptions) -> ServeOutcome
where
    I: AsyncRead + Unpin,
    O: AsyncWrite,
{
    let session_slot: Arc<OnceLock<Arc<Session>>> = Arc::new(OnceLock::new());
    let (service, socket) = {
        let session_slot = session_slot.clone();
        LspService::new(move |client| {
            let server = PodloopServer::new(client, options);
            let _ = session_slot.set(server.session());
            server
        })
    };
    let input_closed = Arc::new(AtomicBool::new(false));
    let input = EofAware {
        inner: input,
        closed: input_closed.clone(),
    };
    // Saves are notifications and must not queue behind a few slow
    // `executeCommand` requests, hence more slots than the default 4.
    Server::new(input, output, socket)
        .concurrency_level(64)
        .serve(service)
        .await;

    let session = session_slot.get().cloned();
    let shutdown_requested = session
        .as_ref()
        .is_some_and(|session| session.shutdown_requested());
    if let Some(session) = session {
        if session.engine_started() {
            session.send(Input::Shutdown);
            let mut stopped = session.engine_stopped();
            let wait = stopped.wait_for(|stopped| *stopped);
            if tokio::time::timeout(ENGINE_STOP_GRACE, wait).await.is_err() {
                tracing::warn!("the engine did not stop within {ENGINE_STOP_GRACE:?}");
            }
        }
    }
    ServeOutcome {
        shutdown_requested,
        input_closed: input_closed.load(Ordering::SeqCst),
    }
}

type ClientInput = Box<dyn AsyncRead + Unpin + Send>;
type ClientOutput = Box<dyn AsyncWrite + Unpin + Send>;

/// stdin and stdout on the runtime's own poller when they are pipes or
/// sockets (what editors give a language server: Rust and Python spawn with
/// pipes, libuv, under VS Code and Neovim, with socket pairs). tokio's
/// `stdin()`/`stdout()` hand every read and write to a blocking thread: two
/// thread wake-ups per message, 0.1 of the 0.24 ms of server CPU a save took.
/// Nothing else in the server touches fd 0 or 1, so making them
/// non-blocking surprises no one; anything else (a file, a terminal) keeps
/// tokio's threads.
fn stdio_streams() -> (ClientInput, ClientOutput) {
    use std::os::fd::AsFd;
    let input: ClientInput = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => match polled_stream(fd) {
            Some(Polled::Pipe(_, Some(rx))) => Box::new(rx),
            Some(Polled::Socket(stream)) => Box::new(stream),
            _ => Box::new(tokio::io::stdin()),
        },
        Err(_) => Box::new(tokio::io::stdin()),
    };
    let output: ClientOutput = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => match polled_stream(fd) {
            Some(Polled::Pipe(Some(tx), _)) => Box::new(tx),
            Some(Polled::Socket(stream)) => Box::new(stream),
            _ => Box::new(tokio::io::stdout()),
        },
        Err(_) => Box::new(tokio::io::stdout()),
    };
    (input, output)
}

enum Polled {
    /// The write end, or the read end, whichever the FIFO is.
    Pipe(
        Option<tokio::net::unix::pipe::Sender>,
        Option<tokio::net::unix::pipe::Receiver>,
    ),
    Socket(tokio::net::UnixStream),
}

fn polled_stream(fd: std::os::fd::OwnedFd) -> Option<Polled> {
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::File::from(fd.try_clone().ok()?)
        .metadata()
        .ok()?
        .file_type();
    if kind.is_fifo() {
        let writable = tokio::net::unix::pipe::Sender::from_owned_fd(fd.try_clone().ok()?);
        let readable = tokio::net::unix::pipe::Receiver::from_owned_fd(fd);
        return Some(Polled::Pipe(writable.ok(), readable.ok()));
    }
    if kind.is_socket() {
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true).ok()?;
        return tokio::net::UnixStream::from_std(stream)
            .ok()
            .map(Polled::Socket);
    }
    None
}

/// Serve LSP over stdin/stdout until `exit` or until stdin closes.
pub fn run_stdio() -> anyhow::Result<()> {
    let set_log_level = logging::init_stderr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = ServerOptions {
        start_engine: kube_engine_starter(),
        set_log_level,
    };
    let outcome = runtime.block_on(async {
        let (input, output) = stdio_streams();
        serve(input, output, options).await
    });
    tracing::info!(?outcome, "language server stopped");
    // A blocking stdin read can outlive `exit`; do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match outcome.exit_code() {
        0 => Ok(()),
        code => std::process::exit(code),
    }
}

fn kube_engine_starter() -> EngineStarter {
    Box::new(|options| {
        Box::pin(async move {
            // The kubeconfig comes from `$KUBECONFIG` or `~/.kube/config`,
            // as for kubectl; a `context` override picks the default context.
            let cluster = KubeCluster::new(KubeOptions {
                kubeconfig: None,
                context: options.overrides.context.clone(),
            })
            .map_err(|error| error.to_string())?;
            Ok(crate::engine::start(cluster, options))
        })
    })
}

/// Remembers whether the reader reached end of input, to tell a client that
/// closed stdin from one that sent `exit`.
struct EofAware<R> {
    inner: R,
    closed: Arc<AtomicBool>,
}

impl<R: AsyncRead + Unpin> AsyncRead for EofAware<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            if buf.filled().len() == before && buf.remaining() > 0 {
                self.closed.store(true, Ordering::SeqCst);
            }
        }
        polled
    }
}
